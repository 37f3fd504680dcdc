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


_FRAGMENT_BITS = 0x2000 | 0x1FFF  # an IPv4 fragment: more fragments (MF), or a fragment offset


def inner_sum(inner: bytes | bytearray | memoryview) -> int:
    """The one's-complement sum of an inner packet, in O(1) for TCP and UDP (what the GRE checksum needs).

    A packet whose checksums are right sums to a known value: its IPv4 header sums to 0xFFFF (which
    counts as zero), and its TCP or UDP segment sums to the complement of the pseudo-header's sum
    (RFC 1071; RFC 1624 for the arithmetic). So the sum of 1,500 bytes follows from some 40 of them.
    Packets read from TUN have their checksums done by the kernel (no offloads are enabled); should one
    arrive with a wrong transport checksum, the GRE checksum it gets disagrees with its bytes and the
    peer drops it (csum_bad), where otherwise the destination host would have. Anything else (other
    protocols, fragments, UDP without a checksum, IPv6 extension headers) is summed byte by byte.
    """
    n = len(inner)
    if n >= 40:
        if inner[0] >> 4 == 4:
            proto = inner[9]
            ihl = (inner[0] & 0x0F) << 2
            if (proto == 6 or proto == 17) and not ((inner[6] << 8 | inner[7]) & _FRAGMENT_BITS) and ihl + 20 <= n:
                where = ihl + (16 if proto == 6 else 6)
                if (proto == 6 or inner[where] or inner[where + 1]) and (inner[2] << 8 | inner[3]) == n:
                    pseudo = int.from_bytes(inner[12:20], "big") % 0xFFFF + proto + n - ihl
                    return 0xFFFF - pseudo % 0xFFFF  # the header's 0xFFFF adds nothing
        elif n >= 60:
            proto = inner[6]
            if proto == 6 or proto == 17:
                where = 40 + (16 if proto == 6 else 6)
                if (
                    where + 2 <= n
                    and (proto == 6 or inner[where] or inner[where + 1])
                    and (inner[4] << 8 | inner[5]) == n - 40
                ):
                    # The addresses are in both the header and the pseudo-header: they cancel out.
                    rest = int.from_bytes(inner[:8], "big") % 0xFFFF + 0xFFFF - (proto + n - 40) % 0xFFFF
                    return rest % 0xFFFF or 0xFFFF
    return ones_complement_sum(inner)


def csum_derived_is_valid(payload: bytes | bytearray | memoryview, hlen: int) -> bool:
    """A received GRE checksum checked in O(1) for TCP and UDP (`--csum-verify derived`).

    The GRE header's bytes and an inner IPv4 header's are summed; the rest of the inner packet's sum is
    derived as `inner_sum` derives it when sending: what it is if the TCP/UDP checksum is right. So a
    wrong GRE checksum field, key or sequence number is caught here as by a full sum, and so is most
    damage to an inner IPv4 header (TTL, TOS, identification...). What is not caught is what the inner
    packet's own checksums show: damage inside the TCP/UDP segment, and to the IPv4 addresses and
    protocol, which the header and the pseudo-header both hold so that their changes cancel here. It
    passes into TUN, where the receiving host verifies the IPv4 header checksum and the TCP/UDP checksum
    (nothing marks them verified: a plain packet, or a coalesced one with flags 0, see core.gro) and drops
    it, counted by the kernel (`nstat TcpInCsumErrors`, `IpInHdrErrors`) instead of as our csum_bad. A
    host that forwards the inner packet passes such damage on, as any router does. Other inner packets (other
    protocols, fragments, UDP without checksum) are summed in full, so nothing is weaker for them. One
    difference the other way: an inner IPv4 header whose own checksum is wrong is refused here even when
    the GRE checksum over it is right (its sum is counted twice); its host would have dropped it.
    """
    inner = payload[hlen:]
    total = ones_complement_sum(payload[:hlen]) + inner_sum(inner)
    if len(inner) >= 20 and inner[0] >> 4 == 4:
        total += ones_complement_sum(inner[: (inner[0] & 0x0F) << 2])  # 0xFFFF, adding nothing, when right
    return fold(total) == 0xFFFF
