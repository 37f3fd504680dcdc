"""RFC 1071 Internet checksum.

The one's-complement sum of 16-bit words equals the big-endian integer value of
the data modulo 0xFFFF (because 2**16 = 1 mod 0xFFFF), except that a sum that
is a non-zero multiple of 0xFFFF is 0xFFFF rather than 0. Python's big integers
do that reduction in C, which is far faster than a loop over words.
"""

from __future__ import annotations


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's-complement sum of `data` (odd length: padded with a zero byte)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    if value == 0:
        return 0
    folded = value % 0xFFFF
    return folded if folded else 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The checksum to put in a header whose checksum field is zero in `data` (RFC 1071)."""
    return ~ones_complement_sum(data) & 0xFFFF


def checksum_is_valid(data: bytes | bytearray | memoryview) -> bool:
    """True when `data`, checksum field included, sums to 0xFFFF (RFC 1071 section 1)."""
    return ones_complement_sum(data) == 0xFFFF


def fold(total: int) -> int:
    """Reduce a sum of 16-bit words to 16 bits with end-around carry."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
