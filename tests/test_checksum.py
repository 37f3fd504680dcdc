"""RFC 1071 Internet checksum: the fast big-integer implementation against the textbook word loop."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usertunnel.core.checksum import checksum_is_valid, fold, internet_checksum, ones_complement_sum

SETTINGS = settings(max_examples=300, deadline=None)


def naive_ones_complement_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word: add 16-bit words with end-around carry; pad odd data with a zero."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def swap_bytes(data: bytes) -> bytes:
    return bytes(b for i in range(0, len(data), 2) for b in (data[i + 1], data[i]))


even_bytes = st.binary(max_size=300).map(lambda b: b if len(b) % 2 == 0 else b[:-1])


@SETTINGS
@given(st.binary(max_size=1500))
def test_ones_complement_sum_equals_the_word_loop_for_any_bytes(data: bytes) -> None:
    assert ones_complement_sum(data) == naive_ones_complement_sum(data)


@SETTINGS
@given(st.binary(min_size=1, max_size=301).filter(lambda b: len(b) % 2 == 1))
def test_odd_length_data_is_summed_as_if_padded_with_a_zero_byte(data: bytes) -> None:
    assert ones_complement_sum(data) == naive_ones_complement_sum(data) == ones_complement_sum(data + b"\x00")


@SETTINGS
@given(st.binary(max_size=600))
def test_ones_complement_sum_accepts_bytearray_and_memoryview_alike(data: bytes) -> None:
    expected = naive_ones_complement_sum(data)
    assert ones_complement_sum(bytearray(data)) == expected
    assert ones_complement_sum(memoryview(data)) == expected
    padded = b"\xaa\xbb" + data + b"\xcc"
    assert ones_complement_sum(memoryview(padded)[2 : 2 + len(data)]) == expected


@SETTINGS
@given(st.binary(max_size=600))
def test_internet_checksum_is_the_complement_of_the_word_loop_sum(data: bytes) -> None:
    assert internet_checksum(data) == ~naive_ones_complement_sum(data) & 0xFFFF


@SETTINGS
@given(st.binary(max_size=600))
def test_checksum_is_valid_iff_the_word_loop_sum_is_all_ones(data: bytes) -> None:
    assert checksum_is_valid(data) == (naive_ones_complement_sum(data) == 0xFFFF)


@SETTINGS
@given(st.binary(max_size=600).filter(lambda b: any(b)))
def test_sum_of_data_that_is_not_all_zero_is_never_zero(data: bytes) -> None:
    # One's complement has two zeros; a non-zero sum of words folds to 0xFFFF ("-0"), never to 0.
    assert 1 <= ones_complement_sum(data) <= 0xFFFF


@SETTINGS
@given(even_bytes, st.integers(0, 150))
def test_data_with_its_checksum_inserted_anywhere_word_aligned_is_valid(data: bytes, where: int) -> None:
    at = min(where * 2, len(data))
    zeroed = data[:at] + b"\x00\x00" + data[at:]
    csum = internet_checksum(zeroed)
    filled = data[:at] + csum.to_bytes(2, "big") + data[at:]
    assert checksum_is_valid(filled)


@SETTINGS
@given(even_bytes, st.binary(max_size=300))
def test_sum_of_a_concatenation_is_the_folded_sum_of_the_parts_when_the_first_is_even(a: bytes, b: bytes) -> None:
    # RFC 1071 section 2 (A), (C): associative and computable piecewise; encap relies on it.
    assert ones_complement_sum(a + b) == fold(ones_complement_sum(a) + ones_complement_sum(b))


@SETTINGS
@given(even_bytes)
def test_sum_is_byte_order_independent(data: bytes) -> None:
    # RFC 1071 section 2 (B): summing byte-swapped words gives the byte-swapped sum.
    s = ones_complement_sum(data)
    assert ones_complement_sum(swap_bytes(data)) == ((s & 0xFF) << 8) | (s >> 8)


@SETTINGS
@given(st.lists(st.integers(0, 0xFFFF), max_size=200))
def test_fold_of_a_plain_sum_of_words_equals_the_word_loop(words: list[int]) -> None:
    data = b"".join(w.to_bytes(2, "big") for w in words)
    assert fold(sum(words)) == naive_ones_complement_sum(data)


@pytest.mark.parametrize("length", [0, 1, 2, 3, 20, 21, 1500])
def test_all_zero_data_sums_to_zero_and_checksums_to_all_ones(length: int) -> None:
    data = bytes(length)
    assert ones_complement_sum(data) == 0
    assert internet_checksum(data) == 0xFFFF
    assert not checksum_is_valid(data)


def test_all_zero_header_with_its_checksum_filled_in_is_valid() -> None:
    assert checksum_is_valid(bytes(10) + b"\xff\xff" + bytes(8))


def test_rfc1071_worked_example() -> None:
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (2ddf0 with carries, folded).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D
    assert checksum_is_valid(data + bytes.fromhex("220d"))
    # The same example summed with the bytes swapped (section 3, "byte order independence").
    assert ones_complement_sum(swap_bytes(data)) == 0xF2DD


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x01", 0x0100),
        (b"\x00\x01\xf2", 0xF201),
        (b"\xff\xff", 0xFFFF),
        (b"\xff\xff\xff\xff", 0xFFFF),
        (b"\xff\xff\x00\x01", 0x0001),
        (b"\x80\x00\x80\x00", 0x0001),
    ],
)
def test_small_sums_fold_the_carry_back_in(data: bytes, expected: int) -> None:
    assert ones_complement_sum(data) == expected == naive_ones_complement_sum(data)


def test_well_known_ipv4_header_example_checksums_to_b861() -> None:
    # A well-known IPv4 header (Wikipedia's "IPv4 header checksum" example): checksum b861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    assert checksum_is_valid(header[:10] + b"\xb8\x61" + header[12:])


@given(st.binary(max_size=9000))
def test_checksum_is_valid_says_whether_the_sum_is_0xffff_for_any_length(data: bytes) -> None:
    # The folding shortcut (little-endian, cut at multiples of 16 bits) against the word loop, with the data
    # made valid by its own checksum where it can be, and left as it is.
    assert checksum_is_valid(data) == (naive_ones_complement_sum(data) == 0xFFFF)
    fixed = data + internet_checksum(data + (b"\x00" if len(data) % 2 else b"")).to_bytes(2, "big")
    if len(data) % 2 == 0:
        assert checksum_is_valid(fixed)
