"""The names the describer gives numbers: link types, IP protocols, EtherTypes, ports, ICMP types and
codes, the tunnels' own tables (GRE bits, GUE variants, ESP, PPTP, ERSPAN, NHRP); one table per numbering.
"""

from __future__ import annotations

import ipaddress

from ...core import ecn, fou
from ...core.drops import Drop

# --- link types (tcpdump.org/linktypes.html) --------------------------------------------------------------

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPES = {
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}

# --- names ------------------------------------------------------------------------------------------------

IP_PROTOCOLS = {
    0: "IPv6 hop-by-hop options",
    1: "ICMP",
    2: "IGMP",
    4: "IPv4 (IP in IP)",
    6: "TCP",
    17: "UDP",
    41: "IPv6",
    43: "IPv6 routing header",
    44: "IPv6 fragment header",
    47: "GRE",
    50: "ESP (IPsec)",
    51: "AH (IPsec)",
    58: "ICMPv6",
    59: "no next header",
    60: "IPv6 destination options",
    89: "OSPF",
    103: "PIM",
    112: "VRRP",
    132: "SCTP",
    137: "MPLS in IP",
}
ETHERTYPES = {
    0x0000: "none (a Cisco GRE keepalive)",
    0x0800: "IPv4",
    0x0806: "ARP",
    0x2001: "NHRP (RFC 2332)",
    0x22EB: "ERSPAN type III",
    0x6558: "Ethernet (transparent bridging, gretap)",
    0x8100: "802.1Q VLAN tag",
    0x86DD: "IPv6",
    0x8847: "MPLS unicast",
    0x8848: "MPLS multicast",
    0x880B: "PPP (enhanced GRE, PPTP)",
    0x88A8: "802.1ad VLAN tag",
    0x883E: "WCCP redirect",
    0x88BE: "ERSPAN type I or II",
}
ECN_NAMES = {
    ecn.NOT_ECT: "Not-ECT: the transport does not use ECN",
    ecn.ECT_1: "ECT(1): ECN-capable transport",
    ecn.ECT_0: "ECT(0): ECN-capable transport",
    ecn.CE: "CE: congestion experienced",
}
ECN_SHORT = {ecn.NOT_ECT: "Not-ECT", ecn.ECT_1: "ECT(1)", ecn.ECT_0: "ECT(0)", ecn.CE: "CE"}
ICMP_TYPES = {
    0: "echo reply",
    3: "destination unreachable",
    4: "source quench (deprecated)",
    5: "redirect",
    8: "echo request",
    9: "router advertisement",
    10: "router solicitation",
    11: "time exceeded",
    12: "parameter problem",
    13: "timestamp",
    14: "timestamp reply",
}
ICMP_CODES = {
    3: {
        0: "network unreachable",
        1: "host unreachable",
        2: "protocol unreachable",
        3: "port unreachable",
        4: "fragmentation needed and DF set (path MTU discovery, RFC 1191)",
        5: "source route failed",
        6: "destination network unknown",
        7: "destination host unknown",
        9: "network administratively prohibited",
        10: "host administratively prohibited",
        13: "communication administratively prohibited (RFC 1812)",
    },
    5: {0: "for the network", 1: "for the host", 2: "for the network and TOS", 3: "for the host and TOS"},
    11: {0: "TTL exceeded in transit", 1: "fragment reassembly time exceeded"},
    12: {0: "the pointer shows the error", 1: "a required option is missing", 2: "bad length"},
}
ICMP_ERRORS = {3, 4, 5, 11, 12}  # these quote the packet that caused them (RFC 792)
ICMPV6_TYPES = {
    1: ("destination unreachable", "RFC 4443 3.1"),
    2: ("packet too big", "RFC 4443 3.2"),
    3: ("time exceeded", "RFC 4443 3.3"),
    4: ("parameter problem", "RFC 4443 3.4"),
    128: ("echo request", "RFC 4443 4.1"),
    129: ("echo reply", "RFC 4443 4.2"),
    133: ("router solicitation", "RFC 4861 4.1"),
    134: ("router advertisement", "RFC 4861 4.2"),
    135: ("neighbor solicitation", "RFC 4861 4.3"),
    136: ("neighbor advertisement", "RFC 4861 4.4"),
    137: ("redirect", "RFC 4861 4.5"),
    143: ("multicast listener report v2", "RFC 3810 5.2"),
}
ICMPV6_CODES = {
    1: {
        0: "no route to destination",
        1: "administratively prohibited",
        2: "beyond scope of source address",
        3: "address unreachable",
        4: "port unreachable",
        5: "source address failed ingress/egress policy",
        6: "reject route to destination",
    },
    3: {0: "hop limit exceeded in transit", 1: "fragment reassembly time exceeded"},
    4: {0: "erroneous header field", 1: "unrecognized next header", 2: "unrecognized IPv6 option"},
}
TCP_FLAGS = ("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN")  # bits 0..7 of byte 13 (RFC 9293 3.1)
TCP_OPTIONS = {
    0: "end of options",
    1: "no-operation",
    2: "MSS",
    3: "window scale",
    4: "SACK permitted",
    5: "SACK",
    8: "timestamps",
    30: "MPTCP",
    34: "TCP Fast Open",
}
PORTS = {
    22: "SSH",
    53: "DNS",
    67: "DHCP server",
    68: "DHCP client",
    80: "HTTP",
    123: "NTP",
    179: "BGP",
    443: "HTTPS",
    500: "IKE",
    4500: "IPsec NAT traversal",
    4754: "GRE in UDP (RFC 8086)",
    6080: "GUE (no IANA port: the one usertunnel's examples use)",
    4789: "VXLAN (RFC 7348)",
    5201: "iperf3",
    5353: "mDNS",
    6081: "Geneve (RFC 8926)",
}
GRE_IGNORED = "; RFC 2784 2.3 lets an RFC 1701 receiver ignore it, as Linux and usertunnel do"
GRE_BITS = (  # bits 0-4 of the GRE header: name, meaning when set, meaning when clear, RFC section
    ("C", "checksum present: checksum and reserved1 follow", "no checksum", "RFC 2784 2.2"),
    ("R", "routing present (RFC 1701 source routing)", "no routing (RFC 1701's bit, now reserved)", "RFC 2784 2.3"),
    ("K", "key present", "no key", "RFC 2890 2"),
    ("S", "sequence number present", "no sequence number", "RFC 2890 2"),
    ("s", "strict source route (RFC 1701)" + GRE_IGNORED, "strict source route (RFC 1701): clear", "RFC 2784 2.3"),
)
# What a UDP port carries (`ip fou add port N ipproto 47|4|41` or `... gue`; --udp-port PORT=WHAT): the
# UDP header is then a tunnel's, and its payload is dissected as that tunnel's header.
GUE_RFC = "draft-ietf-intarea-gue-09"
UDP_CARRIERS = {  # what: (the UDP header's title, what its port means)
    "fou:47": ("FOU: GRE in UDP, RFC 8086", "FOU carrying GRE (ip fou add port N ipproto 47; RFC 8086)"),
    "fou:4": ("FOU: IPIP in UDP", "FOU carrying IPv4 (ip fou add port N ipproto 4)"),
    "fou:41": ("FOU: SIT in UDP", "FOU carrying IPv6 (ip fou add port N ipproto 41)"),
    "gue": ("GUE", "GUE, Generic UDP Encapsulation (ip fou add port N gue; draft-ietf-intarea-gue)"),
    "none": ("", "plain UDP: its payload is not dissected"),
}
GUE_PORT = 6080  # GUE has no IANA port (ip-fou(8)'s example takes 9999); usertunnel's README and labs use 6080
DEFAULT_UDP_PORTS = {fou.GRE_IN_UDP_PORT: "fou:47", GUE_PORT: "gue"}  # RFC 8086 3.2: 4754 is GRE-in-UDP
GUE_VARIANTS = {
    0: "variant 0: a GUE header (this 4-byte word and Hlen words of extensions) comes first",
    1: "variant 1: no GUE header; the payload is an IPv4 (first bits 0100) or IPv6 (0110) packet itself",
}
IPV4_OPTIONS = {
    0: "end of options",
    1: "no-operation",
    7: "record route",
    68: "timestamp",
    130: "security",
    131: "loose source route",
    137: "strict source route",
    148: "router alert (RFC 2113)",
}
IPV6_OPTIONS = {
    0x00: ("Pad1", "RFC 8200 4.2"),
    0x01: ("PadN", "RFC 8200 4.2"),
    0x04: ("tunnel encapsulation limit", "RFC 2473 4.1.1"),
    0x05: ("router alert", "RFC 2711"),
    0xC2: ("jumbo payload", "RFC 2675"),
}
IPV6_EXTENSIONS = {
    0: ("IPv6 hop-by-hop options header", "RFC 8200 4.3"),
    43: ("IPv6 routing header", "RFC 8200 4.4"),
    44: ("IPv6 fragment header", "RFC 8200 4.5"),
    60: ("IPv6 destination options header", "RFC 8200 4.6"),
}
ARPHRD = {1: "Ethernet", 768: "IPIP tunnel", 772: "loopback", 776: "SIT tunnel", 778: "GRE tunnel", 65534: "none (TUN)"}
SLL_PACKET_TYPES = {
    0: "to us",
    1: "broadcast",
    2: "multicast",
    3: "to another host",
    4: "sent by us",
}
SPECIAL_NETWORKS: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [
    (ipaddress.ip_network("192.0.2.0/24"), "documentation address (TEST-NET-1, RFC 5737)"),
    (ipaddress.ip_network("198.51.100.0/24"), "documentation address (TEST-NET-2, RFC 5737)"),
    (ipaddress.ip_network("203.0.113.0/24"), "documentation address (TEST-NET-3, RFC 5737)"),
    (ipaddress.ip_network("100.64.0.0/10"), "shared address space, carrier-grade NAT (RFC 6598)"),
    (ipaddress.ip_network("2001:db8::/32"), "documentation address (RFC 3849)"),
    (ipaddress.ip_network("2002::/16"), "6to4 address (RFC 3056)"),
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped address"),
    (ipaddress.ip_network("fc00::/7"), "unique local address (RFC 4193)"),
]


ESP_SPI_MEANING = (
    "Security Parameters Index: with the destination address, which security association (key, algorithm, "
    "replay window) the receiver opens this packet with; the number `ip xfrm state ... spi` gives"
)
ESP_SEQ_MEANING = (
    "counts the packets sent with this security association, from 1 (RFC 4303 3.3.3); the receiver's "
    "anti-replay window refuses a number it has accepted before or one too far behind the highest (RFC 4303 "
    "3.4.3); with extended sequence numbers only the low 32 bits travel"
)
ESP_REFUSED: dict[
    Drop, tuple[str, str | None]
] = {  # why an SA of --esp-keys did not open a packet: the sentence, and the problem it is
    Drop.ESP_ICV: (
        "the ICV does not verify: the packet was changed on the way, or these are not the keys it was sealed "
        "with (RFC 4303 3.4.4)",
        "ESP ICV does not verify",
    ),
    Drop.ESP_TRUNCATED: ("too short for the IV, pad length, next header and ICV of this SA", "ESP too short"),
    Drop.ESP_REPLAY: ("sequence number 0 is never sent without extended sequence numbers", "ESP sequence number 0"),
    Drop.ESP_PADDING: ("the ICV verifies but the padding is not 1, 2, 3... (RFC 4303 2.4)", "ESP bad padding"),
    Drop.ESP_DUMMY: ("a dummy packet (next header 59, RFC 4303 2.6): there is nothing inside", None),
}
ESP_ENCRYPTED = (
    "the IV, the encrypted inner packet, padding, pad length, next header and the ICV: nothing more can be "
    "read without the key"
)
ERSPAN_II_PROTO, ERSPAN_III_PROTO, NHRP_PROTO, WCCP_PROTO, PPP_PROTO = 0x88BE, 0x22EB, 0x2001, 0x883E, 0x880B
PPTP_RFC = "RFC 2637 4.1"
PPTP_BITS = (  # the flag bits of the enhanced GRE header: name, bit, (meaning when clear, when set), required value
    ("C", 0, ("no checksum", "checksum present: enhanced GRE has none"), 0),
    ("R", 1, ("no routing", "routing present: enhanced GRE has none"), 0),
    ("K", 2, ("key absent: enhanced GRE always has it", "key present: payload length and call ID"), 1),
    ("S", 3, ("no sequence number: an acknowledgment only", "sequence number present: it carries a payload"), None),
    ("s", 4, ("strict source route: clear", "strict source route: enhanced GRE has none"), 0),
    ("A", 8, ("no acknowledgment number", "acknowledgment number present"), None),
)
PPP_PROTOCOLS = {
    0x0021: "IPv4",
    0x0057: "IPv6",
    0x00FD: "compressed datagram (CCP: MPPE/MPPC, RFC 1962)",
    0x8021: "IPCP, IPv4 control (RFC 1332)",
    0x8057: "IPV6CP, IPv6 control (RFC 5072)",
    0x80FD: "CCP, compression control (RFC 1962)",
    0xC021: "LCP, link control (RFC 1661)",
    0xC023: "PAP (RFC 1334)",
    0xC223: "CHAP (RFC 1994)",
}
ERSPAN_VERSIONS = {1: "type II", 2: "type III"}
ERSPAN_ENCAP = (
    "the frame came without a VLAN tag",
    "the frame came ISL-encapsulated",
    "the frame came 802.1Q-encapsulated",
    "the VLAN tag is preserved in the frame",
)
ERSPAN_BSO = ("good frame, or integrity unknown", "short frame", "oversized frame", "bad frame (CRC or alignment)")
ERSPAN_FRAME_TYPES = {0: "Ethernet: the mirrored Ethernet frame follows", 2: "IP: an IP packet follows"}
ERSPAN_GRANULARITY = ("timestamp in 100 microseconds", "timestamp in 100 nanoseconds", "IEEE 1588 timestamp",
                      "platform-specific timestamp")  # fmt: skip
WCCP_RFC = "draft-mclaggan-wccp-v2rev1 (redirect header)"
ADDRESS_FAMILIES = {1: "IPv4", 2: "IPv6", 8: "E.164", 3: "NSAP"}
NHRP_TYPES = {
    1: ("resolution request", "RFC 2332 5.2.1"),
    2: ("resolution reply", "RFC 2332 5.2.2"),
    3: ("registration request", "RFC 2332 5.2.3"),
    4: ("registration reply", "RFC 2332 5.2.4"),
    5: ("purge request", "RFC 2332 5.2.5"),
    6: ("purge reply", "RFC 2332 5.2.6"),
    7: ("error indication", "RFC 2332 5.2.7"),
}
_NAT = {0x0002: "N: NAT supported (Cisco)"}
_RESOLUTION = {
    0x8000: "Q: the requester is a router",
    0x4000: "A: authoritative",
    0x2000: "D: stable association",
    0x1000: "U: unique",
    0x0800: "S: stable binding",
    **_NAT,
}
NHRP_FLAGS = {
    1: _RESOLUTION,
    2: _RESOLUTION,
    3: {0x8000: "U: unique", **_NAT},
    4: {0x8000: "U: unique", **_NAT},
    5: {0x8000: "N: no reply expected", **_NAT},
    6: {0x8000: "N: no reply expected", **_NAT},
}
NHRP_CIE_CODES = {
    0: "success",
    4: "administratively prohibited",
    5: "insufficient resources",
    12: "no binding exists",
    13: "binding exists but is not unique",
    14: "unique internetworking layer address already registered",
}
NHRP_ERRORS = {
    1: "unrecognized extension",
    3: "NHRP loop detected",
    6: "protocol address unreachable",
    7: "protocol error",
    8: "NHRP SDU size exceeded",
    9: "invalid extension",
    10: "invalid NHRP resolution reply received",
    11: "authentication failure",
    15: "hop count exceeded",
}
NHRP_EXTENSIONS = {
    0: ("end of extensions", "RFC 2332 5.3.0"),
    3: ("responder address", "RFC 2332 5.3.1"),
    4: ("forward transit NHS record", "RFC 2332 5.3.2"),
    5: ("reverse transit NHS record", "RFC 2332 5.3.3"),
    7: ("authentication", "RFC 2332 5.3.4"),
    8: ("vendor-private", "RFC 2332 5.3.5"),
    9: ("NAT address (Cisco)", "RFC 2332 5.3"),
}


def protocol_meaning(proto: int, v6: bool) -> str:
    name = IP_PROTOCOLS.get(proto, "not one explain knows")
    if v6:
        extra = {
            4: ": the payload is an IPv4 packet (IPv4 in IPv6, RFC 2473 3.1)",
            41: ": the payload is an IPv6 packet (IPv6 in IPv6, RFC 2473 3.1)",
            47: ": the payload starts with a GRE header (GRE over IPv6, RFC 7676)",
            50: ": the payload is encrypted, after ESP's SPI and sequence number (RFC 4303)",
        }
    else:
        extra = {
            4: ": IPIP, the payload is an IPv4 packet (RFC 2003 3.1)",
            41: ": the payload is an IPv6 packet (SIT, RFC 4213 3.5)",
            47: ": the payload starts with a GRE header (RFC 2784 2)",
            50: ": the payload is encrypted, after ESP's SPI and sequence number (RFC 4303)",
        }
    return f"{name}{extra.get(proto, '')}"
