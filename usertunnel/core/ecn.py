"""ECN across the tunnel: what Linux's INET_ECN_encapsulate / __INET_ECN_decapsulate do.

Encapsulation (RFC 6040 section 4.1, normal mode): the outer ECN field copies
the inner one, except that CE is sent as ECT(0).
Decapsulation (RFC 6040 section 4.2, Linux's table): outer CE over a Not-ECT
inner packet is dropped; outer CE otherwise marks the inner packet CE; any
other combination leaves the inner packet unchanged.
"""

from __future__ import annotations

import enum

ECN_MASK = 0x03
NOT_ECT = 0x00
ECT_1 = 0x01
ECT_0 = 0x02
CE = 0x03


class Decap(enum.Enum):
    KEEP = "keep"
    SET_CE = "set_ce"
    DROP = "drop"


def encapsulate(outer_tos: int, inner_tos: int) -> int:
    """The outer TOS byte: DSCP bits from `outer_tos`, ECN from the inner packet (CE -> ECT(0))."""
    inner_ecn = inner_tos & ECN_MASK
    return (outer_tos & ~ECN_MASK & 0xFF) | (ECT_0 if inner_ecn == CE else inner_ecn)


def decapsulate(outer_tos: int, inner_tos: int) -> Decap:
    """What to do with the inner packet given both ECN fields (RFC 6040 section 4.2)."""
    outer_ecn = outer_tos & ECN_MASK
    if outer_ecn != CE:
        return Decap.KEEP
    if inner_tos & ECN_MASK == NOT_ECT:
        return Decap.DROP
    return Decap.SET_CE
