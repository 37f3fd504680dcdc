"""GRE sequence numbers on receive (RFC 2890 section 2.2): Linux's rule, the RFC's reorder buffer, and resync.

Serial arithmetic, everywhere in this file: sequence numbers live modulo 2**32
and `s` is newer than `n` when `(s - n) mod 2**32` is below 2**31, as Linux's
`(s32)(seq - i_seqno) < 0` test reads it. The window is the next number
expected; None means nothing was received yet, and then the first packet is
accepted whatever its number. Linux keeps "nothing yet" as a 0 in i_seqno, so
after accepting 0xFFFFFFFF it accepts anything once; we keep it apart from 0,
so a replay just after the wrap is dropped like any other.

Three policies (`--seq-policy`), each a small state object behind one protocol:

  kernel   Linux's ip_tunnel_rcv: a packet not newer than the last one accepted
           is dropped, anything newer is delivered at once and moves the window
           past it (a gap is given up immediately). `SequenceWindow` is the same
           rule and stays for callers that only need a yes or no.
  rfc2890  RFC 2890 section 2.2 in full. The packet numbered next expected is
           delivered; a packet ahead of it waits in a per-flow buffer sorted by
           number; after each in-order delivery the buffer is walked and packets
           now in order follow. Two things end a wait for a missing packet:
           - OUTOFORDER_TIMER: no packet waits longer than the timer. When one
             has, the buffer is walked in sorted order, delivering and ignoring
             gaps, until no packet left has waited that long; the last number
             so delivered becomes the last one decapsulated (packets numbered in
             order right after it follow too: they are in order now).
           - MAX_PERFLOW_BUFFER: when a packet would make the buffer hold more,
             the packet at its head (the lowest number, the new one included)
             is delivered regardless of the gap before it, becomes the last
             decapsulated, and packets now in order follow.
           Numbers in a gap that was given up are old from then on.
  resync   kernel's rule, plus a way back for a peer that restarted and numbers
           from 0 again (its packets all look old): RESYNC_AFTER consecutive
           old packets, each one more than the one before with no accepted
           packet in between, prove a new stream and the last of them is
           accepted and moves the window there. A single stray or replayed old
           packet, a duplicate, or a broken run proves nothing. `restart()`,
           called when a keepalive shows the peer is back, forgets the window so
           its next packet is accepted at once.

Rules for this file: no clock and no I/O. Time is the `now` the caller passes
(time.monotonic() in the shell, a fake clock in tests), in seconds, and it never
goes backwards. Drops are verdicts, not exceptions; counting them as
Drop.SEQ_OLD is the caller's. The kernel policy's `check` is on the hot path and
does what `SequenceWindow.accept` does, no more. Held packets are copied to
`bytes` (the caller reuses its buffer) and never number more than
max_perflow_buffer once `hold` returns.

Theory of operation (the caller's side):
    v = state.check(seq, now)
    OLD    -> drop, count Drop.SEQ_OLD
    ACCEPT -> deliver this packet, then deliver state.release() (now in order)
    HOLD   -> validate the inner packet, then deliver state.hold(seq, inner, now)
              (the buffer overflowed: those must go now)
    and a timer that calls state.expire(now) at state.deadline() when not None.
Only rfc2890 ever answers HOLD; for the others hold/release/expire return []
and deadline() is None.

Choice where the RFC leaves room: the RFC sets the last decapsulated number to
0 when the tunnel comes up, which read literally drops the sender's first
packet (numbered 0) and drops a peer already running in the upper half of the
number space for 2**31 packets. rfc2890 starts like Linux instead: the first
packet received opens the window. The RFC names MAX_PERFLOW_BUFFER and
OUTOFORDER_TIMER without values; ours are below, with why.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

MOD = 1 << 32
HALF = 1 << 31
_MASK = MOD - 1

# 64 packets: reordering on real paths (ECMP, LAG members, multi-queue NICs) is a
# few packets deep; 64 covers that with room, and bounds what one tunnel can pin
# to about 64 x 64 KB in the worst case, 96 KB at a 1500-byte MTU.
DEFAULT_MAX_PERFLOW_BUFFER = 64
# 30 ms: after a loss, every packet behind the gap waits this long, so it must
# stay small: well under TCP's 200 ms minimum retransmission timeout (a held
# segment must not look lost) and under what interactive traffic notices, yet
# above the few milliseconds path reordering takes and the event loop's timer
# granularity.
DEFAULT_OUTOFORDER_TIMER = 0.030
# 8: a restarted peer loses its first 7 packets (the 8th is delivered), while a
# stray run of old packets must be 8 long, consecutive and uninterrupted by the
# live stream to be mistaken for a restart.
DEFAULT_RESYNC_AFTER = 8

MAX_PERFLOW_BUFFER_RANGE = (0, 4096)
OUTOFORDER_TIMER_RANGE = (0.001, 10.0)
RESYNC_AFTER_RANGE = (2, 65535)


def is_acceptable(sequence: int, next_expected: int | None) -> bool:
    """True when `sequence` is not older than `next_expected` (None: nothing accepted yet)."""
    if next_expected is None:
        return True
    return (sequence - next_expected) % MOD < HALF


class SequenceWindow:
    """Receive-side state: the next sequence number expected, after the last one accepted."""

    __slots__ = ("next_expected",)

    def __init__(self) -> None:
        self.next_expected: int | None = None

    def accept(self, sequence: int) -> bool:
        """Accept `sequence` and advance, or refuse it and leave the window unchanged."""
        if not is_acceptable(sequence, self.next_expected):
            return False
        self.next_expected = (sequence + 1) % MOD
        return True

    @property
    def last_accepted(self) -> int | None:
        return None if self.next_expected is None else (self.next_expected - 1) % MOD


class SeqPolicy(enum.Enum):
    """How received sequence numbers are enforced (`--seq-policy`)."""

    KERNEL = "kernel"  # Linux ip_tunnel_rcv: drop what is not newer than the last accepted
    RFC2890 = "rfc2890"  # RFC 2890 2.2: reorder buffer, MAX_PERFLOW_BUFFER, OUTOFORDER_TIMER
    RESYNC = "resync"  # kernel's rule, and a restarted peer is taken back


def parse_seq_policy(text: str) -> SeqPolicy:
    """`kernel`, `rfc2890` or `resync`."""
    try:
        return SeqPolicy(text)
    except ValueError:
        accepted = ", ".join(p.value for p in SeqPolicy)
        raise _config_error(f'invalid sequence policy "{text}": one of {accepted}') from None


class Verdict(enum.Enum):
    """What `check` says about a received sequence number."""

    ACCEPT = "accept"  # deliver now; the window moved past it
    OLD = "old"  # drop: a duplicate, or older than the window (the caller counts Drop.SEQ_OLD)
    HOLD = "hold"  # rfc2890 only: ahead of the next expected; validate the packet, then hold() it


# Module globals: reading one is cheaper than an attribute of the enum class, on the hot path.
_ACCEPT = Verdict.ACCEPT
_OLD = Verdict.OLD
_HOLD = Verdict.HOLD


class SequenceState(Protocol):
    """One tunnel's receive sequence state under a policy; see the module docstring for the caller's side."""

    @property
    def policy(self) -> SeqPolicy: ...

    @property
    def next_expected(self) -> int | None: ...

    def check(self, sequence: int, now: float) -> Verdict:
        """ACCEPT (the window moved past it), OLD (drop it) or HOLD (rfc2890: hold() it once validated)."""
        ...

    def hold(self, sequence: int, packet: bytes | bytearray | memoryview, now: float) -> list[bytes]:
        """Buffer a copy of a packet `check` said HOLD for; return the packets an overflow releases, in order."""
        ...

    def release(self) -> list[bytes]:
        """Right after an ACCEPT: the held packets now in order, in order; the window moves past them."""
        ...

    def expire(self, now: float) -> list[bytes]:
        """OUTOFORDER_TIMER: the held packets whose wait is over, and any before them, in order."""
        ...

    def deadline(self) -> float | None:
        """The `now` from which `expire` has work; None while nothing is held."""
        ...

    def restart(self) -> None:
        """A keepalive showed the peer is back: resync forgets its window; the others do nothing."""
        ...

    def as_dict(self) -> dict[str, object]:
        """The state for `show`: the policy, the window, and counters."""
        ...


class _InOrderOnly:
    """The part of `SequenceState` a policy without a reorder buffer shares: nothing is ever held."""

    __slots__ = ()
    policy: SeqPolicy

    def hold(self, sequence: int, packet: bytes | bytearray | memoryview, now: float) -> list[bytes]:
        raise ValueError(f"hold({sequence}): the {self.policy.value} policy never answers HOLD")

    def release(self) -> list[bytes]:
        return []

    def expire(self, now: float) -> list[bytes]:
        return []

    def deadline(self) -> float | None:
        return None


class KernelSequence(_InOrderOnly, SequenceWindow):
    """Linux's ip_tunnel_rcv rule: a `SequenceWindow` that answers in verdicts."""

    __slots__ = ()
    policy = SeqPolicy.KERNEL

    def check(self, sequence: int, now: float) -> Verdict:
        expected = self.next_expected
        # ip_tunnel_rcv: drop when i_seqno is set and (s32)(seq - i_seqno) < 0.
        if expected is not None and (sequence - expected) & _MASK >= HALF:
            return _OLD
        self.next_expected = (sequence + 1) & _MASK
        return _ACCEPT

    def restart(self) -> None:
        pass

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.policy.value, "next_expected": self.next_expected}


class ResyncSequence(_InOrderOnly):
    """Kernel's rule, and a peer that restarted is taken back after a run of consecutive old packets."""

    __slots__ = ("next_expected", "resync_after", "resyncs", "restarts", "_run", "_run_next")
    policy = SeqPolicy.RESYNC

    def __init__(self, resync_after: int = DEFAULT_RESYNC_AFTER) -> None:
        _check_int("resync_after", resync_after, RESYNC_AFTER_RANGE, "consecutive packets")
        self.next_expected: int | None = None
        self.resync_after = resync_after
        self.resyncs = 0  # windows moved back by a run of consecutive old packets
        self.restarts = 0  # windows forgotten by restart()
        self._run = 0  # length of the current run of consecutive old packets
        self._run_next = 0  # the number that would extend it

    def check(self, sequence: int, now: float) -> Verdict:
        expected = self.next_expected
        if expected is None or (sequence - expected) & _MASK < HALF:
            self.next_expected = (sequence + 1) & _MASK
            self._run = 0  # the live stream goes on: whatever old run there was is not a restart
            return _ACCEPT
        # Old by the kernel's rule: a stray, or the first packets of a peer numbering from 0 again.
        self._run = self._run + 1 if self._run and sequence == self._run_next else 1
        self._run_next = (sequence + 1) & _MASK
        if self._run < self.resync_after:
            return _OLD
        self.resyncs += 1
        self._run = 0
        self.next_expected = self._run_next
        return _ACCEPT

    def restart(self) -> None:
        self.next_expected = None
        self._run = 0
        self.restarts += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy.value,
            "next_expected": self.next_expected,
            "resync_after": self.resync_after,
            "resyncs": self.resyncs,
            "restarts": self.restarts,
            "old_run": self._run,
        }


class Rfc2890Sequence:
    """RFC 2890 section 2.2: in-order delivery through a bounded reorder buffer with a timer."""

    __slots__ = (
        "next_expected",
        "max_perflow_buffer",
        "outoforder_timer",
        "released_in_order",
        "released_by_timer",
        "released_by_overflow",
        "skipped",
        "held_peak",
        "_held",
    )
    policy = SeqPolicy.RFC2890

    def __init__(
        self,
        max_perflow_buffer: int = DEFAULT_MAX_PERFLOW_BUFFER,
        outoforder_timer: float = DEFAULT_OUTOFORDER_TIMER,
    ) -> None:
        _check_int("max_perflow_buffer", max_perflow_buffer, MAX_PERFLOW_BUFFER_RANGE, "packets")
        _check_timer(outoforder_timer)
        self.next_expected: int | None = None
        self.max_perflow_buffer = max_perflow_buffer
        self.outoforder_timer = outoforder_timer
        self.released_in_order = 0  # held packets delivered because the gap before them filled
        self.released_by_timer = 0  # ... because OUTOFORDER_TIMER expired
        self.released_by_overflow = 0  # ... because the buffer would exceed MAX_PERFLOW_BUFFER
        self.skipped = 0  # sequence numbers given up (gaps skipped by the timer or an overflow)
        self.held_peak = 0
        # sequence -> (time held, packet). Every key is ahead of next_expected. Insertion order is
        # arrival order (`now` never goes backwards), so the first entry is the one waiting longest.
        self._held: dict[int, tuple[float, bytes]] = {}

    def check(self, sequence: int, now: float) -> Verdict:
        expected = self.next_expected
        if expected is None:  # the first packet opens the window (see the module docstring)
            self.next_expected = (sequence + 1) & _MASK
            return _ACCEPT
        ahead = (sequence - expected) & _MASK
        # RFC 2890 2.2: not newer than the last decapsulated -> discard; a duplicate of a held one too.
        if ahead >= HALF or sequence in self._held:
            return _OLD
        if ahead == 0:
            self.next_expected = (sequence + 1) & _MASK
            return _ACCEPT
        return _HOLD

    def hold(self, sequence: int, packet: bytes | bytearray | memoryview, now: float) -> list[bytes]:
        held = self._held
        expected = self.next_expected
        if expected is None or not 0 < (sequence - expected) & _MASK < HALF or sequence in held:
            raise ValueError(f"hold({sequence}): check() did not answer HOLD for it (next expected {expected})")
        held[sequence] = (now, bytes(packet))
        if len(held) > self.held_peak:
            self.held_peak = len(held)
        if len(held) <= self.max_perflow_buffer:
            return []
        # RFC 2890 2.2: more than MAX_PERFLOW_BUFFER -> the head is decapsulated regardless of its number.
        head = min(held, key=self._ahead())
        out = self._release_through(head)
        self.released_by_overflow += len(out)
        return out

    def release(self) -> list[bytes]:
        held = self._held
        expected = self.next_expected
        if not held or expected not in held:
            return []
        # RFC 2890 2.2: after an in-order packet, the buffered packets now in sequence follow it.
        out = self._release_through(expected)
        self.released_in_order += len(out)
        return out

    def expire(self, now: float) -> list[bytes]:
        held = self._held
        if not held:
            return []
        timer = self.outoforder_timer
        ahead = self._ahead()
        furthest = None
        distance = -1
        for sequence, (since, _) in held.items():
            if since + timer > now:  # the same sum as deadline(), so expire(deadline()) always has work
                break
            d = ahead(sequence)
            if d > distance:
                furthest, distance = sequence, d
        if furthest is None:
            return []
        # RFC 2890 2.2: traverse in sorted order, ignoring gaps, until no packet left has waited that long.
        out = self._release_through(furthest)
        self.released_by_timer += len(out)
        return out

    def deadline(self) -> float | None:
        if not self._held:
            return None
        since, _ = next(iter(self._held.values()))
        return since + self.outoforder_timer

    def restart(self) -> None:
        pass

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy.value,
            "next_expected": self.next_expected,
            "held": len(self._held),
            "held_peak": self.held_peak,
            "max_perflow_buffer": self.max_perflow_buffer,
            "outoforder_timer": self.outoforder_timer,
            "released_in_order": self.released_in_order,
            "released_by_timer": self.released_by_timer,
            "released_by_overflow": self.released_by_overflow,
            "skipped": self.skipped,
        }

    def _ahead(self) -> Callable[[int], int]:
        expected = self.next_expected or 0  # only called while packets are held, so never None
        return lambda sequence: (sequence - expected) & _MASK

    def _release_through(self, last: int) -> list[bytes]:
        """Deliver every held packet up to `last` in order, gaps skipped; then those in order after it."""
        held = self._held
        ahead = self._ahead()
        limit = ahead(last)
        expected = self.next_expected or 0
        out: list[bytes] = []
        for sequence in sorted((s for s in held if ahead(s) <= limit), key=ahead):
            self.skipped += (sequence - expected) & _MASK
            out.append(held.pop(sequence)[1])
            expected = (sequence + 1) & _MASK
        while expected in held:
            out.append(held.pop(expected)[1])
            expected = (expected + 1) & _MASK
        self.next_expected = expected
        return out


def new_sequence_state(
    policy: SeqPolicy,
    *,
    max_perflow_buffer: int = DEFAULT_MAX_PERFLOW_BUFFER,
    outoforder_timer: float = DEFAULT_OUTOFORDER_TIMER,
    resync_after: int = DEFAULT_RESYNC_AFTER,
) -> SequenceState:
    """A fresh receive state for `policy`. Every parameter is checked, used by the policy or not."""
    _check_int("max_perflow_buffer", max_perflow_buffer, MAX_PERFLOW_BUFFER_RANGE, "packets")
    _check_timer(outoforder_timer)
    _check_int("resync_after", resync_after, RESYNC_AFTER_RANGE, "consecutive packets")
    if policy is SeqPolicy.KERNEL:
        return KernelSequence()
    if policy is SeqPolicy.RFC2890:
        return Rfc2890Sequence(max_perflow_buffer, outoforder_timer)
    if policy is SeqPolicy.RESYNC:
        return ResyncSequence(resync_after)
    raise _config_error(f"invalid sequence policy {policy!r}: one of {', '.join(p.value for p in SeqPolicy)}")


def _check_int(name: str, value: int, bounds: tuple[int, int], unit: str) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _config_error(f"{name} {value!r} out of range: an integer {low}..{high} ({unit})")


def _check_timer(value: float) -> None:
    low, high = OUTOFORDER_TIMER_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _config_error(f"outoforder_timer {value!r} out of range: {low:g}..{high:g} seconds")


def _config_error(message: str) -> Exception:
    # Imported here, not at the top: params.py is where a TunnelParams would name a SeqPolicy,
    # and a top-level import both ways would be a cycle.
    from .errors import ConfigError

    return ConfigError(message)
