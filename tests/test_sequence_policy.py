"""Receive sequence policies (`sequence.new_sequence_state`): kernel, rfc2890 and resync, on a fake clock.

Every test drives a state the way decapsulate does (`Receiver` below): check,
then deliver and release, or hold, and a timer that calls expire at the
deadline. Packets carry their own sequence number in their first four bytes, so
what comes out says which packets were delivered and in which order.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usertunnel.core.errors import ConfigError
from usertunnel.core.sequence import (
    DEFAULT_MAX_PERFLOW_BUFFER,
    DEFAULT_OUTOFORDER_TIMER,
    DEFAULT_RESYNC_AFTER,
    HALF,
    MOD,
    KernelSequence,
    ResyncSequence,
    Rfc2890Sequence,
    SeqPolicy,
    SequenceState,
    SequenceWindow,
    Verdict,
    new_sequence_state,
    parse_seq_policy,
)

SETTINGS = settings(max_examples=300, deadline=None)
TIMER = 0.030
LAST = MOD - 1


def packet(sequence: int) -> bytes:
    return sequence.to_bytes(4, "big") + b"inner"


def number(delivered: bytes) -> int:
    return int.from_bytes(delivered[:4], "big")


class Receiver:
    """The caller's side of a SequenceState, with a fake clock and a timer that fires at each deadline."""

    def __init__(self, state: SequenceState) -> None:
        self.state = state
        self.now = 0.0
        self.delivered: list[int] = []
        self.verdicts: list[Verdict] = []
        self.held = 0  # packets handed to hold()

    def receive(self, *sequences: int) -> list[Verdict]:
        verdicts = []
        for sequence in sequences:
            verdict = self.state.check(sequence, self.now)
            if verdict is Verdict.ACCEPT:
                self.delivered.append(sequence)
                self._take(self.state.release())
            elif verdict is Verdict.HOLD:
                self.held += 1
                self._take(self.state.hold(sequence, packet(sequence), self.now))
            verdicts.append(verdict)
        self.verdicts += verdicts
        return verdicts

    def advance(self, seconds: float) -> None:
        """Move the clock, firing the OUTOFORDER_TIMER at each deadline on the way, as the shell's timer does."""
        target = self.now + seconds
        deadline = self.state.deadline()
        while deadline is not None and deadline <= target:
            self.now = max(self.now, deadline)
            released = self.state.expire(self.now)
            assert released, "expire() at deadline() must have work"
            self._take(released)
            deadline = self.state.deadline()
        self.now = target

    def _take(self, packets: list[bytes]) -> None:
        self.delivered += [number(p) for p in packets]


def rfc2890(max_perflow_buffer: int = DEFAULT_MAX_PERFLOW_BUFFER, timer: float = TIMER) -> Receiver:
    return Receiver(
        new_sequence_state(SeqPolicy.RFC2890, max_perflow_buffer=max_perflow_buffer, outoforder_timer=timer)
    )


def held(receiver: Receiver) -> int:
    count = receiver.state.as_dict()["held"]
    assert isinstance(count, int)
    return count


def serially_increasing(numbers: list[int]) -> bool:
    return all(0 < (b - a) % MOD < HALF for a, b in zip(numbers, numbers[1:], strict=False))


# --- every policy on the same streams -------------------------------------------------------------------------

RESTARTED = [100, 101, 102, *range(10)]  # the peer restarted after 102 and numbers from 0 again
STREAMS: dict[str, tuple[list[int], dict[SeqPolicy, list[int]]]] = {
    "in order": ([0, 1, 2, 3, 4], dict.fromkeys(SeqPolicy, [0, 1, 2, 3, 4])),
    "reordered": (
        [0, 2, 1, 3, 5, 4],
        {SeqPolicy.KERNEL: [0, 2, 3, 5], SeqPolicy.RESYNC: [0, 2, 3, 5], SeqPolicy.RFC2890: [0, 1, 2, 3, 4, 5]},
    ),
    "duplicated": ([0, 1, 1, 2, 0, 2, 3, 3], dict.fromkeys(SeqPolicy, [0, 1, 2, 3])),
    "lost": ([0, 1, 3, 4, 6], dict.fromkeys(SeqPolicy, [0, 1, 3, 4, 6])),
    "restarted": (
        RESTARTED,
        {
            SeqPolicy.KERNEL: [100, 101, 102],
            SeqPolicy.RFC2890: [100, 101, 102],
            SeqPolicy.RESYNC: [100, 101, 102, 7, 8, 9],
        },
    ),
}


@pytest.mark.parametrize("policy", list(SeqPolicy), ids=lambda p: p.value)
@pytest.mark.parametrize("stream", list(STREAMS))
def test_each_policy_delivers_what_its_rule_says_on_in_order_reordered_duplicated_lost_and_restarted_streams(
    policy: SeqPolicy, stream: str
) -> None:
    arrivals, expected = STREAMS[stream]
    receiver = Receiver(new_sequence_state(policy, outoforder_timer=TIMER))
    receiver.receive(*arrivals)
    receiver.advance(1.0)  # lets rfc2890 give up on any gap
    assert receiver.delivered == expected[policy]
    assert receiver.state.deadline() is None


def test_rfc2890_waits_for_a_lost_packet_until_the_timer_then_skips_the_gap() -> None:
    receiver = rfc2890()
    assert receiver.receive(0, 1, 3, 4) == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.HOLD, Verdict.HOLD]
    receiver.advance(TIMER / 2)
    assert receiver.delivered == [0, 1]
    receiver.advance(TIMER / 2)
    assert receiver.delivered == [0, 1, 3, 4]
    state = receiver.state.as_dict()
    assert (state["next_expected"], state["skipped"], state["released_by_timer"], state["held"]) == (5, 1, 2, 0)
    assert receiver.receive(2) == [Verdict.OLD]  # the gap was given up: its late packet is old


# --- kernel ---------------------------------------------------------------------------------------------------


def test_kernel_accepts_the_first_packet_whatever_its_number_then_only_newer_ones() -> None:
    receiver = Receiver(new_sequence_state(SeqPolicy.KERNEL))
    assert receiver.receive(0xDEADBEEF, 0xDEADBEEF, 0xDEADBEEE, 0xDEADBEF5, 0xDEADBEF0) == [
        Verdict.ACCEPT,
        Verdict.OLD,
        Verdict.OLD,
        Verdict.ACCEPT,
        Verdict.OLD,
    ]
    assert receiver.state.next_expected == 0xDEADBEF6


def test_kernel_wraps_around_at_2_to_the_32_and_a_replay_from_before_the_wrap_is_old() -> None:
    receiver = Receiver(new_sequence_state(SeqPolicy.KERNEL))
    assert receiver.receive(LAST - 1, LAST, 0, 1, LAST) == [Verdict.ACCEPT] * 4 + [Verdict.OLD]


def test_kernel_takes_a_jump_of_less_than_2_to_the_31_and_drops_one_of_exactly_2_to_the_31() -> None:
    receiver = Receiver(new_sequence_state(SeqPolicy.KERNEL))
    assert receiver.receive(0, HALF + 1) == [Verdict.ACCEPT, Verdict.OLD]  # 2**31 past the next expected (1)
    assert receiver.receive(HALF) == [Verdict.ACCEPT]  # 2**31 - 1 past it: newer


@pytest.mark.parametrize("policy", [SeqPolicy.KERNEL, SeqPolicy.RFC2890], ids=lambda p: p.value)
def test_restart_does_nothing_for_kernel_and_rfc2890(policy: SeqPolicy) -> None:
    receiver = Receiver(new_sequence_state(policy))
    receiver.receive(500)
    receiver.state.restart()
    assert receiver.receive(0, 1, 2) == [Verdict.OLD] * 3
    assert receiver.state.next_expected == 501


_NEAR_EDGES = st.one_of(
    st.integers(0, LAST),
    st.integers(0, 8),
    st.integers(LAST - 8, LAST),
    st.integers(HALF - 8, HALF + 8),
)


@SETTINGS
@given(st.lists(_NEAR_EDGES, max_size=60))
def test_kernel_policy_equals_sequence_window_on_any_input(sequences: list[int]) -> None:
    kernel = new_sequence_state(SeqPolicy.KERNEL)
    window = SequenceWindow()
    for sequence in sequences:
        assert (kernel.check(sequence, 0.0) is Verdict.ACCEPT) == window.accept(sequence)
        assert kernel.next_expected == window.next_expected
        assert kernel.release() == [] and kernel.deadline() is None


def test_kernel_never_holds() -> None:
    kernel = KernelSequence()
    with pytest.raises(ValueError, match="never answers HOLD"):
        kernel.hold(5, b"x", 0.0)
    assert kernel.expire(1e9) == [] and kernel.as_dict() == {"policy": "kernel", "next_expected": None}


# --- rfc2890: gap filled, timer, overflow -------------------------------------------------------------------


def test_rfc2890_delivers_an_in_order_stream_at_once_and_holds_nothing() -> None:
    receiver = rfc2890()
    assert receiver.receive(*range(10)) == [Verdict.ACCEPT] * 10
    assert receiver.delivered == list(range(10)) and held(receiver) == 0 and receiver.state.deadline() is None


def test_rfc2890_releases_held_packets_in_order_when_the_gap_fills() -> None:
    receiver = rfc2890()
    assert receiver.receive(0, 3, 2, 5) == [Verdict.ACCEPT, Verdict.HOLD, Verdict.HOLD, Verdict.HOLD]
    assert receiver.delivered == [0] and held(receiver) == 3
    assert receiver.receive(1) == [Verdict.ACCEPT]
    assert receiver.delivered == [0, 1, 2, 3]  # 5 still waits for 4
    assert receiver.receive(4) == [Verdict.ACCEPT]
    assert receiver.delivered == [0, 1, 2, 3, 4, 5]
    state = receiver.state.as_dict()
    assert (state["released_in_order"], state["skipped"], state["held"], state["held_peak"]) == (3, 0, 0, 3)


def test_rfc2890_drops_a_duplicate_of_a_held_packet_and_of_a_delivered_one() -> None:
    receiver = rfc2890()
    assert receiver.receive(0, 2, 2, 0) == [Verdict.ACCEPT, Verdict.HOLD, Verdict.OLD, Verdict.OLD]
    assert receiver.receive(1, 2, 1) == [Verdict.ACCEPT, Verdict.OLD, Verdict.OLD]
    assert receiver.delivered == [0, 1, 2]


def test_rfc2890_drops_a_packet_older_than_the_window_while_others_are_held_and_keeps_them() -> None:
    receiver = rfc2890()
    receiver.receive(10, 11, 14, 15)
    assert receiver.receive(9, 3, 10) == [Verdict.OLD] * 3
    assert held(receiver) == 2
    receiver.receive(12, 13)
    assert receiver.delivered == [10, 11, 12, 13, 14, 15]


def test_rfc2890_timer_releases_only_packets_that_waited_and_keeps_the_others_waiting() -> None:
    receiver = rfc2890()
    receiver.receive(0)
    receiver.receive(3)  # held at t=0
    receiver.advance(0.010)
    receiver.receive(5)  # held at t=0.010
    assert receiver.state.deadline() == pytest.approx(TIMER)
    assert receiver.state.expire(TIMER - 0.001) == []
    receiver.advance(TIMER - 0.010)  # t = TIMER: 3 has waited long enough, 5 has not
    assert receiver.delivered == [0, 3]
    assert receiver.state.next_expected == 4
    assert receiver.state.deadline() == pytest.approx(0.010 + TIMER)
    assert receiver.receive(4) == [Verdict.ACCEPT]  # 4 arrives in time: 5 follows it without waiting
    assert receiver.delivered == [0, 3, 4, 5] and receiver.state.deadline() is None


def test_rfc2890_timer_also_releases_lower_numbers_before_the_packet_that_waited_too_long() -> None:
    receiver = rfc2890()
    receiver.receive(0, 9)  # 9 held at t=0
    receiver.advance(0.020)
    receiver.receive(5)  # 5 held at t=0.020: it has not waited, but it comes before 9
    receiver.advance(0.010)
    assert receiver.delivered == [0, 5, 9]
    state = receiver.state.as_dict()
    assert (state["next_expected"], state["skipped"], state["released_by_timer"]) == (10, 7, 2)


def test_rfc2890_timer_release_continues_with_held_packets_in_order_after_the_gap() -> None:
    receiver = rfc2890()
    receiver.receive(0, 3)
    receiver.advance(0.020)
    receiver.receive(4, 5, 7)
    receiver.advance(0.010)  # 3 waited TIMER; 4 and 5 are in order after it; 7 is behind a new gap
    assert receiver.delivered == [0, 3, 4, 5]
    assert held(receiver) == 1 and receiver.state.next_expected == 6


def test_rfc2890_overflow_releases_the_head_regardless_of_the_gap_and_what_is_in_order_after_it() -> None:
    receiver = rfc2890(max_perflow_buffer=3)
    receiver.receive(0, 2, 3, 4)
    assert receiver.delivered == [0] and held(receiver) == 3
    receiver.receive(6)  # a fourth would exceed the buffer: 2 goes regardless of 1, then 3 and 4 follow
    assert receiver.delivered == [0, 2, 3, 4]
    state = receiver.state.as_dict()
    assert (state["next_expected"], state["held"], state["released_by_overflow"], state["skipped"]) == (5, 1, 3, 1)
    assert receiver.receive(1) == [Verdict.OLD]


def test_rfc2890_overflow_delivers_the_arriving_packet_when_it_is_the_lowest_instead_of_losing_it() -> None:
    receiver = rfc2890(max_perflow_buffer=2)
    receiver.receive(0, 5, 6)
    receiver.receive(3)
    assert receiver.delivered == [0, 3]
    assert held(receiver) == 2 and receiver.state.next_expected == 4


def test_rfc2890_with_a_zero_buffer_delivers_what_is_ahead_at_once_like_the_kernel() -> None:
    receiver = rfc2890(max_perflow_buffer=0)
    receiver.receive(0, 2, 1, 5, 3)
    assert receiver.delivered == [0, 2, 5] and held(receiver) == 0


def test_rfc2890_reorders_across_the_wrap_at_2_to_the_32() -> None:
    receiver = rfc2890()
    assert receiver.receive(LAST - 2, 1, 0, LAST, LAST - 1) == [
        Verdict.ACCEPT,
        Verdict.HOLD,
        Verdict.HOLD,
        Verdict.HOLD,
        Verdict.ACCEPT,
    ]
    assert receiver.delivered == [LAST - 2, LAST - 1, LAST, 0, 1]
    assert receiver.state.next_expected == 2


def test_rfc2890_timer_sorts_across_the_wrap_at_2_to_the_32() -> None:
    receiver = rfc2890()
    receiver.receive(LAST - 3, 1, LAST, 0)
    receiver.advance(TIMER)
    assert receiver.delivered == [LAST - 3, LAST, 0, 1]
    assert receiver.state.as_dict()["skipped"] == 2


def test_rfc2890_stores_a_copy_so_the_callers_reused_buffer_does_not_change_a_held_packet() -> None:
    state = Rfc2890Sequence()
    state.check(0, 0.0)
    buffer = bytearray(packet(2))
    assert state.check(2, 0.0) is Verdict.HOLD
    assert state.hold(2, memoryview(buffer), 0.0) == []
    buffer[:] = b"\xff" * len(buffer)
    assert state.check(1, 0.0) is Verdict.ACCEPT
    assert state.release() == [packet(2)]


def test_rfc2890_refuses_to_hold_a_packet_check_did_not_answer_hold_for() -> None:
    state = Rfc2890Sequence()
    with pytest.raises(ValueError, match="did not answer HOLD"):
        state.hold(7, b"x", 0.0)  # nothing received yet
    state.check(10, 0.0)
    state.check(12, 0.0)
    state.hold(12, b"x", 0.0)
    for sequence in (10, 11, 12, 9):  # old, the next expected, already held, old
        with pytest.raises(ValueError, match="did not answer HOLD"):
            state.hold(sequence, b"x", 0.0)


@SETTINGS
@given(since=st.floats(0, 1e7), timer=st.floats(0.001, 10.0))
def test_rfc2890_expire_at_the_deadline_always_has_work_whatever_the_float_rounding(since: float, timer: float) -> None:
    state = Rfc2890Sequence(outoforder_timer=timer)
    state.check(0, since)
    state.check(2, since)
    state.hold(2, b"p", since)
    deadline = state.deadline()
    assert deadline is not None
    assert state.expire(math.nextafter(deadline, -math.inf)) == []
    assert state.expire(deadline) == [b"p"]


def test_rfc2890_never_delivers_a_packet_twice_when_its_duplicate_arrives_before_release() -> None:
    state = Rfc2890Sequence()
    state.check(0, 0.0)
    state.check(2, 0.0)
    state.hold(2, packet(2), 0.0)
    assert state.check(1, 0.0) is Verdict.ACCEPT
    assert state.check(2, 0.0) is Verdict.OLD  # the caller has not called release() yet: 2 is still held
    assert state.release() == [packet(2)]


@st.composite
def shuffled_streams(draw: st.DrawFn, max_len: int = 40) -> tuple[int, list[int]]:
    """A stream base, base+1, ... permuted, with some packets lost and some duplicated anywhere."""
    base = draw(st.one_of(st.integers(0, LAST), st.integers(LAST - 50, LAST)))
    n = draw(st.integers(1, max_len))
    order = list(draw(st.permutations(range(n))))
    lost = draw(st.sets(st.integers(0, n - 1), max_size=n // 3))
    order = [o for o in order if o not in lost] or [0]
    for duplicate in draw(st.lists(st.integers(0, n - 1), max_size=n // 2)):
        order.insert(draw(st.integers(0, len(order))), duplicate)
    return base, [(base + o) % MOD for o in order]


@SETTINGS
@given(
    stream=shuffled_streams(),
    steps=st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.004, 0.012, 0.031, 0.2]), min_size=1),
    max_perflow_buffer=st.integers(0, 10),
)
def test_rfc2890_delivers_each_number_at_most_once_in_increasing_order_within_its_bound_and_loses_none_silently(
    stream: tuple[int, list[int]], steps: list[float], max_perflow_buffer: int
) -> None:
    _, arrivals = stream
    receiver = rfc2890(max_perflow_buffer)
    for i, sequence in enumerate(arrivals):
        receiver.advance(steps[i % len(steps)])
        receiver.receive(sequence)
        assert held(receiver) <= max_perflow_buffer
    receiver.advance(10.0)
    delivered = receiver.delivered
    assert len(delivered) == len(set(delivered))
    assert serially_increasing(delivered)
    assert held(receiver) == 0 and receiver.state.deadline() is None
    old = {s for s, v in zip(arrivals, receiver.verdicts, strict=True) if v is Verdict.OLD}
    assert set(arrivals) == set(delivered) | old  # every number was delivered or dropped as old
    state = receiver.state.as_dict()
    released = [state[k] for k in ("released_in_order", "released_by_timer", "released_by_overflow")]
    assert receiver.held == sum(n for n in released if isinstance(n, int))


@SETTINGS
@given(n=st.integers(1, DEFAULT_MAX_PERFLOW_BUFFER), data=st.data())
def test_rfc2890_restores_the_order_of_any_shuffle_that_fits_the_buffer_without_waiting(
    n: int, data: st.DataObject
) -> None:
    base = data.draw(st.integers(0, LAST))
    rest = data.draw(st.permutations(range(1, n)))
    receiver = rfc2890()
    receiver.receive(*((base + o) % MOD for o in [0, *rest]))  # the window opens at the lowest
    assert receiver.delivered == [(base + o) % MOD for o in range(n)]
    assert receiver.state.deadline() is None


# --- resync ---------------------------------------------------------------------------------------------------


def resync(after: int = DEFAULT_RESYNC_AFTER) -> Receiver:
    return Receiver(new_sequence_state(SeqPolicy.RESYNC, resync_after=after))


@pytest.mark.parametrize("after", [2, 3, DEFAULT_RESYNC_AFTER])
def test_resync_takes_back_a_restarted_peer_on_exactly_the_nth_consecutive_packet(after: int) -> None:
    receiver = resync(after)
    receiver.receive(1000, 1001)
    assert receiver.receive(*range(after - 1)) == [Verdict.OLD] * (after - 1)
    assert receiver.state.next_expected == 1002  # N-1 prove nothing
    assert receiver.receive(after - 1, after, after + 1) == [Verdict.ACCEPT] * 3
    assert receiver.delivered == [1000, 1001, after - 1, after, after + 1]
    assert receiver.state.as_dict()["resyncs"] == 1
    assert receiver.receive(1002) == [Verdict.ACCEPT]  # the kernel's rule from the new window: 1002 is newer


@pytest.mark.parametrize(
    "run",
    [
        [0, 1, 2, 4, 5, 6, 7, 8],  # a gap
        [0, 1, 2, 3, 3, 4, 5, 6],  # a duplicate
        [0, 1, 2, 3, 5, 4, 6, 7],  # a swap
        [7, 6, 5, 4, 3, 2, 1, 0],  # backwards
    ],
)
def test_resync_does_not_take_back_a_run_that_is_not_consecutive(run: list[int]) -> None:
    receiver = resync(8)
    receiver.receive(1000)
    assert receiver.receive(*run) == [Verdict.OLD] * 8
    assert receiver.state.next_expected == 1001 and receiver.state.as_dict()["resyncs"] == 0


def test_resync_does_not_count_a_run_interrupted_by_the_live_stream() -> None:
    receiver = resync(4)
    receiver.receive(1000)
    assert receiver.receive(10, 11, 12, 1001, 13, 14, 15) == [Verdict.OLD] * 3 + [Verdict.ACCEPT] + [Verdict.OLD] * 3
    assert receiver.receive(16) == [Verdict.ACCEPT]  # 13, 14, 15, 16: four uninterrupted
    assert receiver.state.next_expected == 17


def test_resync_ignores_stray_old_packets_in_a_live_stream() -> None:
    receiver = resync(2)
    for live in range(100, 200):
        receiver.receive(live)
        if live % 7 == 0:
            receiver.receive(live - 50)  # a stray old packet every so often, never two in a row
    assert receiver.delivered == list(range(100, 200)) and receiver.state.as_dict()["resyncs"] == 0


def test_resync_restart_accepts_the_next_packet_at_once_then_applies_the_kernel_rule() -> None:
    receiver = resync()
    receiver.receive(1000)
    receiver.state.restart()
    assert receiver.receive(0, 1, 0) == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.OLD]
    state = receiver.state.as_dict()
    assert (state["restarts"], state["resyncs"], state["next_expected"]) == (1, 0, 2)


def test_resync_restart_forgets_a_partial_run() -> None:
    receiver = resync(3)
    receiver.receive(1000, 0, 1)
    receiver.state.restart()
    receiver.receive(500)
    assert receiver.receive(2) == [Verdict.OLD]  # 0, 1 were before the restart: 2 starts a new run
    assert receiver.state.as_dict()["old_run"] == 1


def test_resync_run_is_consecutive_across_the_wrap_at_2_to_the_32() -> None:
    receiver = resync(8)
    receiver.receive(0x10)
    run = [(LAST - 5 + i) % MOD for i in range(8)]  # 0xFFFFFFFA .. 0x1
    assert receiver.receive(*run) == [Verdict.OLD] * 7 + [Verdict.ACCEPT]
    assert receiver.state.next_expected == 2


@SETTINGS
@given(st.lists(_NEAR_EDGES, max_size=60), st.integers(2, 4))
def test_resync_answers_like_the_kernel_until_it_resyncs(sequences: list[int], after: int) -> None:
    kernel, resyncing = KernelSequence(), ResyncSequence(after)
    for sequence in sequences:
        expected = kernel.check(sequence, 0.0)
        answer = resyncing.check(sequence, 0.0)
        if resyncing.resyncs:
            break
        assert answer is expected and resyncing.next_expected == kernel.next_expected


# --- configuration --------------------------------------------------------------------------------------------


def test_new_sequence_state_builds_each_policy_with_documented_defaults() -> None:
    states = {policy: new_sequence_state(policy) for policy in SeqPolicy}
    assert {policy: state.policy for policy, state in states.items()} == {p: p for p in SeqPolicy}
    assert isinstance(states[SeqPolicy.KERNEL], KernelSequence)
    assert states[SeqPolicy.RFC2890].as_dict()["max_perflow_buffer"] == DEFAULT_MAX_PERFLOW_BUFFER == 64
    assert states[SeqPolicy.RFC2890].as_dict()["outoforder_timer"] == DEFAULT_OUTOFORDER_TIMER
    assert states[SeqPolicy.RESYNC].as_dict()["resync_after"] == DEFAULT_RESYNC_AFTER
    assert all(state.next_expected is None for state in states.values())


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_perflow_buffer", -1, "max_perflow_buffer -1 out of range: an integer 0..4096"),
        ("max_perflow_buffer", 4097, "max_perflow_buffer 4097 out of range: an integer 0..4096"),
        ("max_perflow_buffer", 2.5, "max_perflow_buffer 2.5 out of range"),
        ("max_perflow_buffer", True, "max_perflow_buffer True out of range"),
        ("outoforder_timer", 0, "outoforder_timer 0 out of range: 0.001..10 seconds"),
        ("outoforder_timer", float("nan"), "outoforder_timer nan out of range: 0.001..10 seconds"),
        ("outoforder_timer", 11.0, "outoforder_timer 11.0 out of range"),
        ("resync_after", 1, "resync_after 1 out of range: an integer 2..65535"),
        ("resync_after", 0, "resync_after 0 out of range"),
    ],
)
@pytest.mark.parametrize("policy", list(SeqPolicy), ids=lambda p: p.value)
def test_a_bad_parameter_is_a_config_error_naming_the_value_and_the_range(
    policy: SeqPolicy, option: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        new_sequence_state(policy, **{option: value})  # type: ignore[arg-type]


def test_parse_seq_policy_reads_the_three_names_and_lists_them_on_anything_else() -> None:
    assert [parse_seq_policy(p) for p in ("kernel", "rfc2890", "resync")] == list(SeqPolicy)
    with pytest.raises(ConfigError, match='invalid sequence policy "linux": one of kernel, rfc2890, resync'):
        parse_seq_policy("linux")
