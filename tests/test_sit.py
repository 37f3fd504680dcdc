"""sit address logic: 6to4, 6rd, ISATAP, the PRL and the receive-side spoofing checks, as net/ipv6/sit.c does them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usertunnel.core import sit
from usertunnel.core.errors import ConfigError
from usertunnel.core.sit import (
    SIX_TO_FOUR,
    DeviceAddress,
    PotentialRouterList,
    PrlEntry,
    SixRd,
    Verdict,
    check_source,
    ipv4_destination,
)

SETTINGS = settings(max_examples=300, deadline=None)


def a6(text: str) -> bytes:
    return IPv6Address(text).packed


def a4(text: str) -> bytes:
    return IPv4Address(text).packed


def kernel_check_6rd(c: SixRd, address: bytes) -> bytes | None:
    """check_6rd's 32-bit word arithmetic, transcribed as an independent oracle for SixRd.embedded_ipv4."""
    if not sit._prefix_equal(address, c.prefix, c.prefixlen):
        return None
    words = [int.from_bytes(address[i : i + 4], "big") for i in range(0, 16, 4)]
    pbw0, pbi0 = c.prefixlen >> 5, c.prefixlen & 0x1F
    d = ((words[pbw0] << pbi0) & 0xFFFFFFFF) >> c.relay_prefixlen if c.relay_prefixlen < 32 else 0
    pbi1 = pbi0 - c.relay_prefixlen
    if pbi1 > 0:
        d |= words[pbw0 + 1] >> (32 - pbi1)
    return (int.from_bytes(c.relay_prefix, "big") | d).to_bytes(4, "big")


@st.composite
def sixrd_configs(draw: st.DrawFn) -> SixRd:
    relay_len = draw(st.integers(0, 32))
    prefix_len = draw(st.integers(0, 64 - (32 - relay_len)))
    prefix = sit._masked6(draw(st.binary(min_size=16, max_size=16)), prefix_len)
    relay = sit._masked4(draw(st.binary(min_size=4, max_size=4)), relay_len)
    return SixRd(prefix, prefix_len, relay, relay_len)


def within_relay_prefix(config: SixRd, v4: bytes) -> bytes:
    """`v4` with its high-order bits replaced by the 6rd domain's common IPv4 prefix."""
    mask = sit._masked4(b"\xff" * 4, config.relay_prefixlen)
    return bytes(r | (b & ~m & 0xFF) for r, b, m in zip(config.relay_prefix, v4, mask, strict=True))


ipv4s = st.binary(min_size=4, max_size=4)
ipv6s = st.binary(min_size=16, max_size=16)


# --- 6to4 (RFC 3056) -------------------------------------------------------------------------


def test_6to4_destination_gives_the_embedded_ipv4_address() -> None:
    assert ipv4_destination(a6("2002:c000:0201:7::1")) == a4("192.0.2.1")
    assert SIX_TO_FOUR.embedded_ipv4(a6("2002:c633:6401::")) == a4("198.51.100.1")


def test_6to4_prefix_is_2002_v4addr_over_48_bits() -> None:
    assert sit.six_to_four_prefix(a4("192.0.2.1")) == a6("2002:c000:201::")
    assert SIX_TO_FOUR.delegated_prefixlen == 48


@SETTINGS
@given(ipv4s, st.binary(min_size=10, max_size=10))
def test_6to4_encode_then_derive_returns_the_ipv4_address(v4: bytes, rest: bytes) -> None:
    address = sit.six_to_four_prefix(v4)[:6] + rest
    assert SIX_TO_FOUR.embedded_ipv4(address) == v4
    assert ipv4_destination(address) == (v4 if v4 != sit.ZERO4 else None)


def test_a_6to4_address_embedding_0_0_0_0_is_no_destination_without_a_next_hop() -> None:
    # try_6rd returns 0, which ipip6_tunnel_xmit reads as "not found".
    assert ipv4_destination(a6("2002::1")) is None
    assert ipv4_destination(a6("2002::1"), next_hop=a6("::192.0.2.9")) == a4("192.0.2.9")


def test_a_configured_remote_wins_over_the_6to4_address() -> None:
    assert ipv4_destination(a6("2002:c000:201::1"), remote=a4("203.0.113.5")) == a4("203.0.113.5")


# --- 6rd (RFC 5969) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "relay", "destination", "expected"),
    [
        # RFC 5969 section 4's layout: /32 prefix, full 32 bits embedded (delegated /64).
        ("2001:db8::/32", "0.0.0.0/0", "2001:db8:c000:201::1", "192.0.2.1"),
        # Common 8 bits left out: 24 bits follow the /32, delegated /56.
        ("2001:db8::/32", "10.0.0.0/8", "2001:db8:0102:0300::1", "10.1.2.3"),
        # A prefix not on a word boundary, bits spanning two 32-bit words (pbi1 > 0).
        ("2001:db8:8000::/33", "192.0.0.0/8", "2001:db8:8001:80::", "192.0.2.1"),
        ("2001:db0::/28", "172.16.0.0/12", "2001:db0:abcd::", "172.16.171.205"),
        # 16 bits embedded, delegated /64.
        ("2001:db8:1200::/48", "198.51.0.0/16", "2001:db8:1200:6401::7", "198.51.100.1"),
        # relay_prefixlen 32: nothing embedded, every address maps to the relay prefix.
        ("2001:db8:aa00::/64", "192.0.2.77/32", "2001:db8:aa00:0:1:2:3:4", "192.0.2.77"),
        # prefixlen 0: the first 32 bits of any address.
        ("::/0", "0.0.0.0/0", "c000:0201::", "192.0.2.1"),
    ],
)
def test_6rd_destination_is_derived_from_the_embedded_bits(
    prefix: str, relay: str, destination: str, expected: str
) -> None:
    config = SixRd.from_text(prefix, relay)
    assert config.embedded_ipv4(a6(destination)) == a4(expected) == kernel_check_6rd(config, a6(destination))
    assert ipv4_destination(a6(destination), sixrd=config) == a4(expected)


def test_6rd_destination_outside_the_prefix_needs_a_next_hop() -> None:
    config = SixRd.from_text("2001:db8::/32")
    assert config.embedded_ipv4(a6("2002:c000:201::1")) is None  # 6to4 is no longer tried
    assert ipv4_destination(a6("2001:db9::1"), sixrd=config) is None


@SETTINGS
@given(sixrd_configs(), ipv6s)
def test_6rd_derivation_equals_the_kernels_word_arithmetic(config: SixRd, address: bytes) -> None:
    inside = sit._masked6(config.prefix, config.prefixlen)
    mask = (1 << (128 - config.prefixlen)) - 1 if config.prefixlen < 128 else 0
    address_in_prefix = (int.from_bytes(inside, "big") | (int.from_bytes(address, "big") & mask)).to_bytes(16, "big")
    for candidate in (address, address_in_prefix):
        assert config.embedded_ipv4(candidate) == kernel_check_6rd(config, candidate)


@SETTINGS
@given(sixrd_configs(), ipv4s, ipv6s)
def test_6rd_encode_then_derive_returns_the_ipv4_address(config: SixRd, v4: bytes, host: bytes) -> None:
    v4 = within_relay_prefix(config, v4)
    prefix = config.delegated_prefix(v4)
    plen = config.delegated_prefixlen
    host_bits = int.from_bytes(host, "big") & ((1 << (128 - plen)) - 1)
    address = (int.from_bytes(prefix, "big") | host_bits).to_bytes(16, "big")
    assert config.embedded_ipv4(address) == v4


def test_delegated_prefix_refuses_an_ipv4_address_outside_the_relay_prefix() -> None:
    with pytest.raises(ValueError, match="outside the 6rd relay prefix 10.0.0.0/8"):
        SixRd.from_text("2001:db8::/32", "10.0.0.0/8").delegated_prefix(a4("192.0.2.1"))


@pytest.mark.parametrize(
    ("prefix", "relay", "message"),
    [
        ("2001:db8::/33", "0.0.0.0/0", "= 65 is over 64"),
        ("2001:db8::/64", "10.0.0.0/8", "= 88 is over 64"),
        ("2001:db8::1/32", "0.0.0.0/0", "bits set beyond /32.*use 2001:db8::/32"),
        ("2001:db8::", "0.0.0.0/0", "= 160 is over 64"),  # no /len: a /128, as iproute2's get_prefix reads it
        ("2001:db8::/32", "10.1.0.0/8", "relay prefix has bits set beyond /8.*use 10.0.0.0/8"),
        ("not-a-prefix", "0.0.0.0/0", "not an IPv6 prefix"),
        ("2001:db8::/32", "10.0.0.0/33", "not an IPv4 prefix"),
    ],
)
def test_invalid_6rd_configurations_are_refused_as_the_kernel_refuses_them(
    prefix: str, relay: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SixRd.from_text(prefix, relay)


def test_relay_prefix_length_over_32_is_refused() -> None:
    with pytest.raises(ConfigError, match="relay prefix length must be 0..32"):
        SixRd(a6("2001:db8::"), 32, bytes(4), 33)


def test_the_default_6rd_configuration_is_6to4() -> None:
    assert SixRd() == SixRd.from_text("2002::/16") == SIX_TO_FOUR


# --- the next-hop fallback (NBMA sit) --------------------------------------------------------


@pytest.mark.parametrize(
    ("next_hop", "expected"),
    [
        ("::192.88.99.1", "192.88.99.1"),  # IPv4-compatible: its last 32 bits
        ("::", None),  # "::" means the destination itself, here native: no destination
        ("::1", None),  # loopback is not IPv4-compatible
        ("::ffff:192.0.2.1", None),  # IPv4-mapped is not IPv4-compatible
        ("2002:c058:6301::", None),  # a 6to4 next hop is not used
        ("fe80::5efe:c000:201", None),  # nor an ISATAP one, outside mode isatap
        ("2001:db8::1", None),
    ],
)
def test_next_hop_fallback_takes_only_ipv4_compatible_addresses(next_hop: str, expected: str | None) -> None:
    got = ipv4_destination(a6("2001:db8:1::5"), next_hop=a6(next_hop))
    assert got == (a4(expected) if expected else None)


def test_an_on_link_ipv4_compatible_destination_is_its_own_next_hop() -> None:
    destination = a6("::198.51.100.7")
    assert ipv4_destination(destination, next_hop=destination) == a4("198.51.100.7")
    assert ipv4_destination(destination, next_hop=a6("::")) == a4("198.51.100.7")
    assert ipv4_destination(destination) is None  # no route, no neighbour


# --- ISATAP (RFC 5214) -----------------------------------------------------------------------


@pytest.mark.parametrize("universal", [False, True], ids=["0000:5efe", "0200:5efe"])
def test_isatap_identifiers_of_both_forms_embed_the_ipv4_address(universal: bool) -> None:
    address = sit.isatap_address(a6("fe80::"), a4("192.0.2.1"), universal)
    assert address == a6("fe80::200:5efe:c000:201" if universal else "fe80::5efe:c000:201")
    assert sit.is_isatap(address)
    assert sit.isatap_ipv4(address) == a4("192.0.2.1")


@pytest.mark.parametrize(
    "text", ["fe80::100:5efe:c000:201", "fe80::300:5efe:c000:201", "fe80::5eff:c000:201", "fe80::1"]
)
def test_other_interface_identifiers_are_not_isatap(text: str) -> None:
    assert not sit.is_isatap(a6(text))
    assert sit.isatap_ipv4(a6(text)) is None


def test_isatap_sends_to_the_ipv4_address_of_an_isatap_next_hop() -> None:
    hop = a6("fe80::200:5efe:c000:263")
    assert ipv4_destination(a6("2001:db8::1"), isatap=True, next_hop=hop) == a4("192.0.2.99")


def test_isatap_without_a_usable_next_hop_drops() -> None:
    assert ipv4_destination(a6("2001:db8::1"), isatap=True) is None
    assert ipv4_destination(a6("2001:db8::1"), isatap=True, next_hop=a6("fe80::1")) is None
    assert ipv4_destination(a6("2001:db8::1"), isatap=True, next_hop=a6("ff02::5efe:c000:201")) is None  # multicast


def test_isatap_next_hop_embedding_0_0_0_0_falls_through_to_6to4() -> None:
    hop = a6("fe80::5efe:0:0")
    assert ipv4_destination(a6("2002:c000:201::1"), isatap=True, next_hop=hop) == a4("192.0.2.1")


# --- the potential router list ---------------------------------------------------------------


def test_prl_commands_add_and_delete_as_iproute2_and_the_kernel_do() -> None:
    prl = PotentialRouterList().apply("prl-default", "192.0.2.1").apply("prl-nodefault", "192.0.2.2")
    assert prl.entries == (PrlEntry(a4("192.0.2.2"), False), PrlEntry(a4("192.0.2.1"), True))  # newest first
    entry = prl.lookup(a4("192.0.2.1"))
    assert entry == PrlEntry(a4("192.0.2.1"), True) and entry.flags == sit.PRL_DEFAULT
    assert prl.change(a4("192.0.2.1"), False).lookup(a4("192.0.2.1")) == PrlEntry(a4("192.0.2.1"), False)
    assert prl.apply("prl-delete", "192.0.2.2").entries == (PrlEntry(a4("192.0.2.1"), True),)
    assert prl.apply("prl-delete", "any").entries == ()


@pytest.mark.parametrize(
    ("command", "address", "message"),
    [
        ("prl-default", "192.0.2.1", "already listed.*EEXIST"),
        ("prl-nodefault", "0.0.0.0", "cannot be 0.0.0.0.*EINVAL"),
        ("prl-delete", "192.0.2.9", "not listed.*ENXIO"),
        ("prl-default", "300.1.1.1", "not an IPv4 address"),
        ("prl-everything", "192.0.2.1", "accepted: prl-default, prl-nodefault, prl-delete"),
    ],
)
def test_prl_errors_say_what_the_kernel_would(command: str, address: str, message: str) -> None:
    prl = PotentialRouterList().apply("prl-default", "192.0.2.1")
    with pytest.raises(ConfigError, match=message):
        prl.apply(command, address)


def test_changing_an_unlisted_router_is_refused() -> None:
    with pytest.raises(ConfigError, match="ENXIO"):
        PotentialRouterList().change(a4("192.0.2.1"), True)


# --- receive: the spoofing checks ------------------------------------------------------------

ISATAP_DEVICE = (DeviceAddress(a6("2001:db8:5::5efe:c000:201"), 64),)
PRL = PotentialRouterList().apply("prl-default", "192.0.2.1").apply("prl-nodefault", "192.0.2.2")
ANY6 = a6("2001:db8:5::1")


@pytest.mark.parametrize(
    ("outer_src", "inner_src", "verdict"),
    [
        ("192.0.2.1", "2001:db8:ffff::1", Verdict.ROUTER_DEFAULT),  # a listed router may use any source
        ("192.0.2.2", "2001:db8:ffff::1", Verdict.ROUTER_NODEFAULT),
        ("192.0.2.50", "2001:db8:5::5efe:c000:232", Verdict.HOST),  # embeds 192.0.2.50, prefix on-link
        ("192.0.2.50", "2001:db8:5::200:5efe:c000:232", Verdict.HOST),
        ("192.0.2.51", "2001:db8:5::5efe:c000:232", Verdict.ISATAP_REFUSED),  # embeds another address
        ("192.0.2.50", "2001:db8:6::5efe:c000:232", Verdict.ISATAP_REFUSED),  # prefix not on-link
        ("192.0.2.50", "2001:db8:5::c000:232", Verdict.ISATAP_REFUSED),  # not an ISATAP address
    ],
)
def test_isatap_source_check(outer_src: str, inner_src: str, verdict: Verdict) -> None:
    got = check_source(
        a4(outer_src), a4("192.0.2.201"), a6(inner_src), ANY6, isatap=True, prl=PRL, device=ISATAP_DEVICE
    )
    assert got is verdict
    assert got.accepted == (verdict is not Verdict.ISATAP_REFUSED)


def test_a_point_to_point_sit_tunnel_does_not_check_addresses() -> None:
    got = check_source(a4("192.0.2.1"), a4("192.0.2.2"), a6("2002:0808:0808::1"), ANY6, point_to_point=True)
    assert got is Verdict.POINT_TO_POINT and got.accepted


SIXTOFOUR_DEVICE = (DeviceAddress(a6("2002:c000:202::1"), 16),)


@pytest.mark.parametrize(
    ("outer", "inner", "verdict"),
    [
        # source 6to4 address embeds the outer source, destination embeds the outer destination
        (("192.0.2.1", "192.0.2.2"), ("2002:c000:201::1", "2002:c000:202::1"), Verdict.NOT_SPOOFED),
        # native source (relayed from the IPv6 Internet) and native destination: nothing to check
        (("192.88.99.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2"), Verdict.NOT_SPOOFED),
        # a 6to4 source that lies about its IPv4 address
        (("192.0.2.66", "192.0.2.2"), ("2002:c000:201::1", "2002:c000:202::1"), Verdict.SPOOFED_SOURCE),
        # a 6to4 destination that is not ours, and not in a prefix of the device
        (("192.0.2.1", "192.0.2.2"), ("2002:c000:201::1", "2002:c000:209::1"), Verdict.SPOOFED_DESTINATION),
        # our 6to4 prefix, but the outer destination was rewritten by a NAT (10.0.0.2 is our private address)
        (("192.0.2.1", "10.0.0.2"), ("2002:c000:201::1", "2002:c000:202:7::1"), Verdict.DNATTED),
    ],
)
def test_6to4_spoofing_checks(outer: tuple[str, str], inner: tuple[str, str], verdict: Verdict) -> None:
    got = check_source(a4(outer[0]), a4(outer[1]), a6(inner[0]), a6(inner[1]), device=SIXTOFOUR_DEVICE)
    assert got is verdict
    assert got.accepted == (verdict in (Verdict.NOT_SPOOFED, Verdict.DNATTED))


def test_6rd_spoofing_checks_use_the_relay_prefix_and_the_delegated_length() -> None:
    config = SixRd.from_text("2001:db8::/32", "10.0.0.0/8")  # delegated prefixes are /56
    ours = config.delegated_prefix(a4("10.1.2.3"))
    peer = config.delegated_prefix(a4("10.9.9.9"))
    device = (DeviceAddress(ours[:15] + b"\x01", 64),)
    ok = check_source(a4("10.9.9.9"), a4("10.1.2.3"), peer, ours, sixrd=config, device=device)
    assert ok is Verdict.NOT_SPOOFED
    assert check_source(a4("10.9.9.8"), a4("10.1.2.3"), peer, ours, sixrd=config) is Verdict.SPOOFED_SOURCE
    natted = check_source(a4("10.9.9.9"), a4("10.200.0.1"), peer, ours, sixrd=config, device=device)
    assert natted is Verdict.DNATTED
    assert sit.only_dnatted(config, ours, device) and not sit.only_dnatted(config, peer, device)


@SETTINGS
@given(sixrd_configs(), ipv4s, ipv4s)
def test_a_6rd_packet_whose_addresses_embed_the_outer_ones_is_never_spoofed(
    config: SixRd, src4: bytes, dst4: bytes
) -> None:
    src4, dst4 = within_relay_prefix(config, src4), within_relay_prefix(config, dst4)
    got = check_source(src4, dst4, config.delegated_prefix(src4), config.delegated_prefix(dst4), sixrd=config)
    assert got is Verdict.NOT_SPOOFED


# --- address classes as __ipv6_addr_type sees them ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "compat", "unicast"),
    [
        ("::", False, False),
        ("::1", False, True),
        ("::192.0.2.1", True, True),
        ("::0.0.0.2", True, True),
        ("::ffff:192.0.2.1", False, False),
        ("ff02::1", False, False),
        ("fe80::1", False, True),
        ("2001:db8::1", False, True),
        ("::5efe:c000:201", False, True),
    ],
)
def test_address_classes(text: str, compat: bool, unicast: bool) -> None:
    assert sit.is_ipv4_compatible(a6(text)) == compat
    assert sit.is_unicast(a6(text)) == unicast
