"""The receive tables: which tunnels compete for a received packet, and the number that names each table.

Linux keeps the tunnels of each kind in a table of their own (ipgre_net, ipip_net, sit_net, ip6gre_net,
ip6_tnl_net, ...), gretap's apart from gre's (gre_tap_net), and looks a packet up only among the tunnels
of its table (core.lookup gives the order within one). Here a table is named by one small int, so that
the receive path's probe (`encap.Demux.tables`) is a dictionary probe on an int, and the same number keys
a process's claims (io.claim), its BPF filters' labels (io.raw) and its raw sockets (io.loop):

    bits 0-7   the outer IP protocol (over IPv6: the next header): 47 GRE, 4 IPIP, 41 sit, 50 ESP
    OVER_IPV6  (256) the outer header is IPv6: ip6gre, ip6ip6, ipip6, ip6gretap, vti6
    ETHERNET   (512) Ethernet frames in GRE: gretap, ip6gretap (told from gre by the GRE protocol type)

`core.params.ModeSpec.table` is a mode's table. A raw socket receives one outer protocol in one family,
so it serves the tables that differ only by ETHERNET (`socket_table`): gre's socket reads gretap's packets
too, and the demultiplexer tells them apart.

ESP is a table of sockets, not of tunnels: every --esp-keys tunnel reads ESP's raw socket (`ESP`, `ESP6`),
the SPI finds the tunnel, and what ESP carried is then looked up in the table of the protocol inside it.
"""

from __future__ import annotations

from typing import Final

from .esp import IPPROTO_ESP

OVER_IPV6: Final = 256
ETHERNET: Final = 512
PROTOCOL: Final = 0xFF  # the bits of a table that are its IP protocol
_SOCKET: Final = PROTOCOL | OVER_IPV6  # the bits that pick a raw socket (protocol and family)


def table_of(protocol: int, outer: int = 4, ethernet: bool = False) -> int:
    """The table of packets of IP `protocol` over IPv`outer`; `ethernet`: gretap's (Ethernet frames in GRE)."""
    return protocol + (OVER_IPV6 if outer == 6 else 0) + (ETHERNET if ethernet else 0)


def protocol_of(table: int) -> int:
    """The outer IP protocol (IPv6: next header) of `table`'s packets."""
    return table & PROTOCOL


def over_ipv6(table: int) -> bool:
    """True if `table`'s packets come over IPv6 (read from a raw IPv6 socket, without their IPv6 header)."""
    return bool(table & OVER_IPV6)


def socket_table(table: int) -> int:
    """The table of the raw socket that receives `table`'s packets: gretap's is gre's (one protocol, one
    family, one socket)."""
    return table & _SOCKET


ESP: Final = table_of(IPPROTO_ESP)  # ESP's raw IPv4 socket, which every --esp-keys tunnel (and vti) reads
ESP6: Final = table_of(IPPROTO_ESP, outer=6)  # ESP's raw IPv6 socket (vti6)
