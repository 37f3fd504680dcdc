"""GRE sequence numbers (RFC 2890 section 2.2) the way Linux's ip_tunnel_rcv checks them.

32-bit serial arithmetic: a sequence number is acceptable when it is at most
2**31 ahead of the next one expected, wrapping around 2**32. Linux keeps the
next expected number and treats 0 as "nothing received yet", so after
accepting 0xFFFFFFFF it accepts anything once; we keep "nothing yet" apart
from 0, so a replay just after the wrap is dropped like any other.
"""

from __future__ import annotations

MOD = 1 << 32
HALF = 1 << 31


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
