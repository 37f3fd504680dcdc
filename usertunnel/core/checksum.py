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
    """True when `data`, checksum field included, sums to 0xFFFF (RFC 1071 section 1).

    That is: its value is a non-zero multiple of 0xFFFF. Read little-endian (the sum is the same in either
    byte order, RFC 1071 section 2(B), and Python converts that order faster), then folded: since 2**16 is
    1 modulo 0xFFFF, adding the high part of a number to its low part (cut at a multiple of 16 bits) keeps
    it modulo 0xFFFF, and a few cheap shifts and adds leave a short number for the one costly division.
    """
    value = int.from_bytes(data, "little")
    if len(data) < 512:
        return value % 0xFFFF == 0 and value != 0
    # Fold points for packets up to about 1,500 bytes (longer ones are folded less, but still right).
    value = (value >> 6016) + (value & _M6016)
    value = (value >> 3008) + (value & _M3008)
    value = (value >> 1504) + (value & _M1504)
    value = (value >> 752) + (value & _M752)
    return value % 0xFFFF == 0 and value != 0


_M6016, _M3008, _M1504, _M752 = ((1 << bits) - 1 for bits in (6016, 3008, 1504, 752))


def fold(total: int) -> int:
    """Reduce a sum of 16-bit words to 16 bits with end-around carry."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
