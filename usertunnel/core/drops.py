"""Why a packet was dropped: one value per reason, counted, never raised.

On the data path a drop is a return value, not an exception: the loop counts
it and moves on. Each reason says in its description what a reader of the
counters should look at.
"""

from __future__ import annotations

import enum


class Drop(enum.Enum):
    """A drop reason. The value is the counter's name in `stats` output."""

    # Outer packet (what arrived on the raw socket).
    OUTER_MALFORMED = "outer_malformed"
    OUTER_FRAGMENT = "outer_fragment"
    # GRE header (RFC 2784 / RFC 2890).
    GRE_TRUNCATED = "gre_truncated"
    GRE_VERSION = "gre_version"
    GRE_ROUTING = "gre_routing"
    GRE_PROTOCOL = "gre_protocol"
    GUE_VERSION = "gue_version"
    GUE_MALFORMED = "gue_malformed"
    # Tunnel lookup and receive rules (the kernel's ip_tunnel_lookup / ip_tunnel_rcv).
    NO_TUNNEL = "no_tunnel"
    KEY_MISMATCH = "key_mismatch"
    CSUM_MISSING = "csum_missing"
    CSUM_BAD = "csum_bad"
    CSUM_UNEXPECTED = "csum_unexpected"
    SEQ_MISSING = "seq_missing"
    SEQ_OLD = "seq_old"
    ECN_CE_NOT_ECT = "ecn_ce_not_ect"
    # Point-to-multipoint hub (core.neighbors).
    NO_NEIGHBOR = "no_neighbor"
    SPOKE_SOURCE = "spoke_source"
    HUB_FULL = "hub_full"
    # IPv6 tunnels: sit's address rules (core.sit), RFC 2473's encapsulation limit.
    NO_IPV4_DESTINATION = "no_ipv4_destination"
    SIT_SPOOFED = "sit_spoofed"
    ENCAP_LIMIT = "encap_limit"
    # Inner packet (either direction).
    INNER_MALFORMED = "inner_malformed"
    FAMILY = "family"
    OVERSIZE = "oversize"
    FRAG_NEEDED = "frag_needed"
    # I/O shell.
    SEND_ERROR = "send_error"
    SEND_NOBUFS = "send_nobufs"
    SEND_MSGSIZE = "send_msgsize"
    ICMP_ERROR = "icmp_error"
    TUN_WRITE_ERROR = "tun_write_error"
    TUN_DOWN = "tun_down"
    TUN_READ_ERROR = "tun_read_error"
    # IPsec ESP (RFC 4303).
    ESP_TRUNCATED = "esp_truncated"
    ESP_NO_SA = "esp_no_sa"
    ESP_REPLAY = "esp_replay"
    ESP_ICV = "esp_icv"
    ESP_PADDING = "esp_padding"
    ESP_DUMMY = "esp_dummy"
    ESP_SEQ_EXHAUSTED = "esp_seq_exhausted"
    ESP_NEXT_HEADER = "esp_next_header"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[Drop, str] = {
    Drop.OUTER_MALFORMED: "outer IP header truncated, lying about its length, or of the wrong version",
    Drop.OUTER_FRAGMENT: "outer packet is a fragment (the kernel reassembles before raw delivery)",
    Drop.GRE_TRUNCATED: "GRE header shorter than its flags announce",
    Drop.GRE_VERSION: "GRE version is not 0 (RFC 2784 section 2.3.1)",
    Drop.GRE_ROUTING: "GRE routing bit set (RFC 1701 source routing; Linux drops it too)",
    Drop.GRE_PROTOCOL: "GRE protocol type is neither IPv4 (0x0800) nor IPv6 (0x86DD)",
    Drop.GUE_VERSION: "GUE variant is neither 0 nor 1 (draft-ietf-intarea-gue section 3)",
    Drop.GUE_MALFORMED: "GUE header truncated, a control message, or with flags and options we do not implement",
    Drop.NO_TUNNEL: "no tunnel matches the outer addresses",
    Drop.KEY_MISMATCH: "outer addresses match a tunnel but the GRE key (or its absence) does not",
    Drop.CSUM_MISSING: "tunnel requires a GRE checksum (icsum) and the packet has none",
    Drop.CSUM_BAD: "GRE checksum present and wrong",
    Drop.CSUM_UNEXPECTED: "GRE checksum present but the tunnel has no icsum (Linux's ip_tunnel_rcv drops these too)",
    Drop.SEQ_MISSING: "tunnel requires sequence numbers (iseq) and the packet has none",
    Drop.SEQ_OLD: "sequence number not newer than the last one accepted (replayed or reordered)",
    Drop.ECN_CE_NOT_ECT: "outer header marked CE over an inner packet that is not ECN-capable (RFC 6040)",
    Drop.NO_NEIGHBOR: "hub: no spoke learned or configured for the inner destination (--remote any)",
    Drop.SPOKE_SOURCE: "hub: inner source outside the prefixes of the spoke key it carries (--spoke)",
    Drop.HUB_FULL: "hub: neighbor table full (max peers), a new spoke was refused",
    Drop.NO_IPV4_DESTINATION: "sit: no IPv4 address follows from the IPv6 destination (6to4, 6rd, ISATAP)",
    Drop.SIT_SPOOFED: "sit: the inner IPv6 address does not match the outer IPv4 one (the kernel's packet_is_spoofed)",
    Drop.ENCAP_LIMIT: "inner IPv6 packet's tunnel encapsulation limit is 0: no more tunnels (RFC 2473 4.1.1)",
    Drop.INNER_MALFORMED: "inner IP header truncated, with a bad checksum, or lying about its length",
    Drop.FAMILY: "inner address family this mode cannot carry (e.g. IPv6 into ipip)",
    Drop.OVERSIZE: "inner packet too large: with the outer headers it would exceed 65535 bytes",
    Drop.FRAG_NEEDED: "inner packet (DF, or IPv6) larger than the path MTU to the remote: ICMP sent to its source",
    Drop.SEND_ERROR: "sending on the raw socket failed",
    Drop.SEND_NOBUFS: "raw socket send buffer full (ENOBUFS)",
    Drop.SEND_MSGSIZE: "outer packet larger than the path MTU (EMSGSIZE)",
    Drop.ICMP_ERROR: "an ICMP error from the underlay surfaced on the raw socket",
    Drop.TUN_WRITE_ERROR: "writing the inner packet into the TUN device failed",
    Drop.TUN_DOWN: "the TUN device is down (ip link set NAME up): the kernel refuses what is written into it",
    Drop.TUN_READ_ERROR: "reading from the TUN device failed",
    Drop.ESP_TRUNCATED: "ESP packet shorter than its header, IV, pad length, next header and ICV",
    Drop.ESP_NO_SA: "ESP packet whose SPI is not the inbound SA's (unknown or mis-keyed peer)",
    Drop.ESP_REPLAY: "ESP sequence number already received or below the anti-replay window (RFC 4303 3.4.3)",
    Drop.ESP_ICV: "ESP integrity check failed: forged, corrupted, or sealed with another key",
    Drop.ESP_PADDING: "ESP padding not 1, 2, 3 ... or longer than the packet (RFC 4303 2.4)",
    Drop.ESP_DUMMY: "ESP dummy packet (next header 59, RFC 4303 2.6): dropped as the RFC says",
    Drop.ESP_SEQ_EXHAUSTED: "ESP sequence numbers used up: manual keys cannot be rekeyed, nothing more is sent",
    Drop.ESP_NEXT_HEADER: "ESP next header is not a protocol this tunnel carries",
}
