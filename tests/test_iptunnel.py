"""The `ip tunnel` grammar (usertunnel.front.iptunnel): the seed's commands, iproute2's refusals word for word,
`ip tunnel show` lines, show's filter, and a round trip from table to words and back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usertunnel.front.iptunnel import (
    HELP,
    HELP6,
    MODES4,
    MODES6,
    IpTunnelError,
    TunnelCommand,
    matches,
    parse,
    show_lines,
)


def words(line: str) -> list[str]:
    """What follows `usertunnel [-6] tunnel` in a command line."""
    return line.split()


def error(line: str, ipv6: bool = False) -> str:
    with pytest.raises(IpTunnelError) as caught:
        parse(words(line), ipv6=ipv6)
    return str(caught.value)


# --- the seed's commands (000_6bc956dddf8a7c7b.txt), placeholders filled with documentation addresses ---------

SEED = [
    # 3.2 SIT
    (
        "add sit1 mode sit local 198.51.100.1 remote 203.0.113.1",
        False,
        TunnelCommand("add", "sit1", {"mode": "sit", "local": "198.51.100.1", "remote": "203.0.113.1"}, False),
    ),
    # 3.3 IPIP6, given with -6 as in the seed
    (
        "add ip6tnl1 mode ipip6 local 2001:db8::1 remote 2001:db8::2",
        True,
        TunnelCommand("add", "ip6tnl1", {"mode": "ipip6", "local": "2001:db8::1", "remote": "2001:db8::2"}, True),
    ),
    # 3.4 GRE with a key
    (
        "add gre1 mode gre local 198.51.100.1 remote 203.0.113.1 key 1234",
        False,
        TunnelCommand(
            "add",
            "gre1",
            {"mode": "gre", "local": "198.51.100.1", "remote": "203.0.113.1", "ikey": 1234, "okey": 1234},
            False,
        ),
    ),
    # 3.4.3 NAT: the CPE end, then the POP end
    (
        "add tunnel0 mode gre local 10.0.0.1 remote 172.16.0.2",
        False,
        TunnelCommand("add", "tunnel0", {"mode": "gre", "local": "10.0.0.1", "remote": "172.16.0.2"}, False),
    ),
    (
        "add tunnel0 mode gre local 172.16.0.2 remote 172.16.0.1",
        False,
        TunnelCommand("add", "tunnel0", {"mode": "gre", "local": "172.16.0.2", "remote": "172.16.0.1"}, False),
    ),
    # 3.4.4 point to multipoint: the CPE end with a key, the POP end with a key and no remote
    (
        "add tunnel0 mode gre local 10.0.0.1 remote 172.16.0.2 key 1234",
        False,
        TunnelCommand(
            "add",
            "tunnel0",
            {"mode": "gre", "local": "10.0.0.1", "remote": "172.16.0.2", "ikey": 1234, "okey": 1234},
            False,
        ),
    ),
    (
        "add tunnel0 mode gre local 172.16.0.2 key 1234",
        False,
        TunnelCommand("add", "tunnel0", {"mode": "gre", "local": "172.16.0.2", "ikey": 1234, "okey": 1234}, False),
    ),
    # `ip tunnel help` at the top of the seed
    ("help", False, TunnelCommand("help", None, {}, False)),
]


@pytest.mark.parametrize(("line", "ipv6", "expected"), SEED, ids=[s[0] for s in SEED])
def test_each_seed_command_parses_into_its_table(line: str, ipv6: bool, expected: TunnelCommand) -> None:
    assert parse(words(line), ipv6=ipv6) == expected


def test_the_seeds_ipip_line_without_add_is_an_unknown_command_as_in_iproute2() -> None:
    # Seed 3.1: `ip tunnel ${interface name} mode ipip local ... remote ... ttl ...` has no `add`.
    line = "ipip0 mode ipip local 198.51.100.1 remote 203.0.113.1 ttl 64"
    assert error(line) == 'Command "ipip0" is unknown, try "usertunnel tunnel help"'
    # ... and with the word it means, the tunnel it describes
    assert parse(["add", *words(line)]).table == {
        "mode": "ipip",
        "local": "198.51.100.1",
        "remote": "203.0.113.1",
        "ttl": 64,
    }


def test_an_ipv6_mode_hands_the_words_to_the_ip6_grammar_without_minus_6() -> None:
    # do_iptunnel(): tunnel_mode_is_ipv6() of the first `mode` word switches to do_ip6tunnel().
    command = parse(words("add ip6tnl1 mode ipip6 local 2001:db8::1 remote 2001:db8::2"))
    assert command.ipv6
    assert command.table["mode"] == "ipip6"


def test_help_texts_name_usertunnel_and_its_modes() -> None:
    assert HELP.startswith("Usage: usertunnel tunnel { add | change | del | show | prl | 6rd } [ NAME ]\n")
    assert "gretap" in HELP and "ip6gre" in HELP and "KEY  := { DOTTED_QUAD | NUMBER }" in HELP
    assert HELP6.startswith("Usage: usertunnel -6 tunnel { add | change | del | show } [ NAME ]\n")
    assert "ELIM      := { none | 0..255 }(default=4)" in HELP6 and "(default=64)" in HELP6
    assert parse(["help"], ipv6=True) == TunnelCommand("help", None, {}, True)
    assert parse(words("add tun0 mode gre h")).action == "help"  # a name word that is a prefix of help
    assert parse(words("add name help mode gre")).name == "help"  # `name` takes any word


# --- commands by prefix (matches()), names, and values read as iproute2 reads them ------------------------------


@pytest.mark.parametrize(
    ("word", "action"),
    [("a", "add"), ("c", "change"), ("chg", None), ("d", "del"), ("del", "del"), ("delete", "del")]
    + [("s", "show"), ("l", "show"), ("ls", "show"), ("list", "show"), ("p", "prl"), ("6", "6rd"), ("h", "help")]
    + [("", None), ("adds", None)],
)
def test_commands_are_accepted_by_unambiguous_prefix_in_iproute2s_order(word: str, action: str | None) -> None:
    if action is None:
        with pytest.raises(IpTunnelError, match=f'Command "{word}" is unknown'):
            parse([word, "dev", "sit1"])
    else:
        argv = {"prl": [word, "dev", "sit1"], "6rd": [word, "dev", "sit1"], "add": [word, "gre1"]}.get(action, [word])
        assert parse(argv).action == action


def test_no_words_is_show() -> None:
    assert parse([]) == TunnelCommand("show", None, {}, False)
    assert parse([], ipv6=True) == TunnelCommand("show", None, {}, True)


def test_the_ip6_grammar_has_no_prl_or_6rd() -> None:
    assert error("prl dev sit1", ipv6=True) == 'Command "prl" is unknown, try "usertunnel -6 tunnel help".'


def test_name_is_a_bare_word_or_name_word_and_mode_comes_from_it_when_not_given() -> None:
    assert parse(words("add name gre7 remote 203.0.113.1")).table == {"mode": "gre", "remote": "203.0.113.1"}
    assert parse(words("add ipip3")).table == {"mode": "ipip"}
    assert parse(words("add sit2")).table == {"mode": "sit"}
    assert parse(words("add isatap0")).table == {"mode": "isatap"}
    assert parse(words("add gretap0")).table == {"mode": "gre"}  # memcmp(name, "gre", 3): gre, as iproute2
    assert parse(words("add mode gre")) == TunnelCommand("add", None, {"mode": "gre"}, False)


def test_ttl_and_hoplimit_read_inherit_or_a_number_and_ttl_0_is_inherit() -> None:
    assert parse(words("add gre1 ttl 0x40")).table["ttl"] == 64
    assert parse(words("add gre1 hoplimit 010")).table["ttl"] == 8  # strtoul base 0: octal
    assert parse(words("add gre1 ttl 0")).table["ttl"] == "inherit"
    assert parse(words("add gre1 hlim inherit")).table["ttl"] == "inherit"
    assert parse(words("add gre1 ttl 9 ttl inherit")).table["ttl"] == 9  # inherit leaves the number
    assert parse(words("add t mode ipip6 hoplimit 0"), ipv6=True).table["ttl"] == "inherit"


@pytest.mark.parametrize(
    ("value", "tos"),
    [("10", 0x10), ("0x28", 0x28), ("lowdelay", 0x10), ("inherit", "inherit"), ("inherit/0x10", "inherit")]
    + [("11", "inherit"), ("0", 0), ("network", 0xE0), ("10/whatever", 0x10)],
)
def test_tos_is_hex_a_dsfield_name_or_inherit(value: str, tos: Any) -> None:
    # rtnl_dsfield_a2n reads hex; an odd TOS byte means inherit in the kernel (ip_tunnel_xmit).
    assert parse(["add", "gre1", "tos", value]).table["tos"] == tos


def test_tclass_and_dsfield_by_prefix_are_tos() -> None:
    assert parse(words("add gre1 tclass 20")).table["tos"] == 0x20
    assert parse(words("add gre1 dsf 20")).table["tos"] == 0x20
    assert parse(words("add gre1 d 20")).table["tos"] == 0x20


def test_keys_are_numbers_or_dotted_quads() -> None:
    table = parse(words("add gre1 ikey 1.2.3.4 okey 0x10")).table
    assert (table["ikey"], table["okey"]) == (0x01020304, 16)
    assert parse(words("add gre1 key 4294967295")).table["ikey"] == 4294967295


def test_flags_and_pmtudisc() -> None:
    table = parse(words("add gre1 seq icsum ocsum nopmtudisc")).table
    assert table == {"mode": "gre", "iseq": True, "oseq": True, "icsum": True, "ocsum": True, "pmtudisc": False}
    assert parse(words("add gre1 nopmtudisc pmtudisc ttl 3")).table["pmtudisc"] is True


def test_addresses_read_the_legacy_way_and_any_all_default_are_no_address() -> None:
    table = parse(words("add gre1 remote 10.8 local any")).table
    assert (table["remote"], table["local"]) == ("10.8.0.0", "any")
    assert parse(words("add gre1 remote 0.0.0.0")).table["remote"] == "any"
    assert parse(words("add gre1 remote 0x0a.010.0.1")).table["remote"] == "10.8.0.1"
    assert parse(words("add t mode ip6gre local default remote 2001:DB8:0::5"), ipv6=True).table == {
        "mode": "ip6gre",
        "local": "any",
        "remote": "2001:db8::5",
    }


def test_gretap_is_usertunnels_extra_mode_and_takes_gre_keys() -> None:
    assert parse(words("add tap0 mode gretap key 5")).table == {"mode": "gretap", "ikey": 5, "okey": 5}
    assert parse(words("add tap0 mode sit mode isatap")).table["mode"] == "isatap"  # isatap++ sticks


def test_a_multicast_gre_remote_keys_the_tunnel_by_its_group() -> None:
    table = parse(words("add gre1 remote 239.1.2.3 local 198.51.100.1")).table
    assert table["ikey"] == table["okey"] == 0xEF010203


def test_ip6_grammar_values() -> None:
    line = "add t mode ip6gre encaplimit none tclass b8 flowlabel fffff dscp inherit allow-localremote seq key 7"
    assert parse(words(line), ipv6=True).table == {
        "mode": "ip6gre",
        "encaplimit": "none",
        "tos": 0xB8,
        "flowlabel": 0xFFFFF,
        "dscp_inherit": True,
        "allow_localremote": True,
        "iseq": True,
        "oseq": True,
        "ikey": 7,
        "okey": 7,
    }
    assert parse(words("add t encaplimit 0 tc inherit fl inherit"), ipv6=True).table == {
        "mode": "ip6ip6",  # ip6_tnl_parm_init(): the default proto
        "encaplimit": 0,
        "tos": "inherit",
        "flowlabel": "inherit",
    }


def test_show_and_del_keep_only_what_was_given() -> None:
    assert parse(words("show remote 203.0.113.1")) == TunnelCommand("show", None, {"remote": "203.0.113.1"}, False)
    assert parse(words("del gre1")) == TunnelCommand("del", "gre1", {}, False)
    assert parse(words("show mode any"), ipv6=False) == TunnelCommand("show", None, {}, True)
    assert parse(words("change gre1 ttl 5")) == TunnelCommand("change", "gre1", {"ttl": 5}, False)


def test_prl_and_6rd() -> None:
    assert parse(words("prl prl-default 198.51.100.9 dev isatap0")) == TunnelCommand(
        "prl", "isatap0", {"prl_default": ["198.51.100.9"]}, False
    )
    assert parse(words("prl dev isatap0 prl-delete 10.1")).table == {"prl_delete": ["10.1.0.0"]}
    assert parse(words("prl dev isatap0 prl-nodefault 198.51.100.10")).table == {"prl_nodefault": ["198.51.100.10"]}
    command = parse(words("6rd dev sit1 6rd-prefix 2001:db8::/32 6rd-relay_prefix 192.0.2.0/255.255.255.0"))
    assert command == TunnelCommand(
        "6rd", "sit1", {"6rd_prefix": "2001:db8::/32", "6rd_relay_prefix": "192.0.2.0/24"}, False
    )
    assert parse(words("6rd dev sit1 6rd-prefix 2001:db8::/32 6rd-reset")).table == {"6rd_reset": True}
    assert parse(words("6rd 6rd-reset 6rd-prefix 2001:db8::/32 dev sit1")).table == {"6rd_prefix": "2001:db8::/32"}
    assert parse(words("6rd dev sit1 6rd-prefix 2001:db8::")).table == {"6rd_prefix": "2001:db8::/128"}


# --- every refusal, in iproute2's words --------------------------------------------------------------------------

ERRORS = [
    # do_iptunnel / do_ip6tunnel
    ("frob", False, 'Command "frob" is unknown, try "usertunnel tunnel help"'),
    ("frob", True, 'Command "frob" is unknown, try "usertunnel -6 tunnel help".'),
    # NEXT_ARG() -> incomplete_command()
    ("add gre1 mode", False, 'Command line is not complete. Try option "help"'),
    ("add gre1 name", False, 'Command line is not complete. Try option "help"'),
    ("add t hoplimit", True, 'Command line is not complete. Try option "help"'),
    ("prl dev", False, 'Command line is not complete. Try option "help"'),
    # modes
    ("add t mode vti mode gre", False, "You managed to ask for more than one tunnel mode."),
    ("add t mode gre mode ipip6", False, 'Unknown tunnel mode "ipip6"'),
    ("add t mode gre6", True, 'Unknown tunnel mode "gre6"'),
    ("add t mode vti7", False, 'Unknown tunnel mode "vti7"'),
    ("add t mode gre mode ipip", False, "You managed to ask for more than one tunnel mode."),
    ("add t mode gretap mode sit", False, "You managed to ask for more than one tunnel mode."),
    ("add t remote 203.0.113.1", False, "cannot determine tunnel mode (ipip, gre, gretap, sit or isatap)"),
    (
        "add t mode any",
        True,
        'mode "any" (one ip6tnl for IPv4 and IPv6 inside) is not in usertunnel: use ip6ip6, ipip6 or ip6gre',
    ),
    # values (invarg, get_addr32, get_addr, tnl_parse_key)
    ("add gre1 ttl 256", False, 'Error: argument "256" is wrong: invalid TTL'),
    ("add gre1 ttl -1", False, 'Error: argument "-1" is wrong: invalid TTL'),
    ("add gre1 hoplimit 64x", False, 'Error: argument "64x" is wrong: invalid TTL'),
    ("add gre1 tos 100", False, 'Error: argument "100" is wrong: bad TOS value'),
    ("add gre1 tos inherit/zz", False, 'Error: argument "inherit" is wrong: bad TOS value'),
    ("add gre1 tos zz/10", False, 'Error: argument "zz" is wrong: bad TOS value'),
    ("add gre1 key abc", False, 'invalid value for "key": "abc"; it should be an unsigned integer'),
    ("add gre1 okey 4294967296", False, 'invalid value for "okey": "4294967296"; it should be an unsigned integer'),
    ("add gre1 ikey 1.2.3.256", False, 'Error: an IP address is expected rather than "1.2.3.256"'),
    ("add gre1 remote 2001:db8::1", False, 'Error: an IP address is expected rather than "2001:db8::1"'),
    ("add gre1 local 1.2.3.4.5", False, 'Error: an IP address is expected rather than "1.2.3.4.5"'),
    ("add t remote 203.0.113.1", True, 'Error: inet6 address is expected rather than "203.0.113.1".'),
    ("add t local 2001:db8::1%eth0", True, 'Error: inet6 address is expected rather than "2001:db8::1%eth0".'),
    ("add t tclass 100", True, 'Error: argument "100" is wrong: invalid TClass'),
    ("add t flowlabel 100000", True, 'Error: argument "100000" is wrong: invalid Flowlabel'),
    ("add t dscp copy", True, 'Error: argument "copy" is wrong: not inherit'),
    ("add t encaplimit 256", True, 'Error: argument "256" is wrong: invalid ELIM'),
    # names (duparg2, get_ifname)
    ("add gre1 gre2", False, 'Error: either "name" is duplicate, or "gre2" is a garbage.'),
    ("add gre1 mode gre nopmtu", False, 'Error: either "name" is duplicate, or "nopmtu" is a garbage.'),
    ("add t mode ipip6 pmtudisc", True, 'Error: either "name" is duplicate, or "pmtudisc" is a garbage.'),
    ("add gre1 prl-default 198.51.100.9", False, 'Error: either "name" is duplicate, or "prl-default" is a garbage.'),
    ("add name gre1 name gre2", False, 'Error: either "name" is duplicate, or "gre2" is a garbage.'),
    ("add gre0123456789012", False, 'Error: argument "gre0123456789012" is wrong: "name" not a valid ifname'),
    ("add gre/1", False, 'Error: argument "gre/1" is wrong: "name" not a valid ifname'),
    # after the loop: parse_args, then do_add
    ("add t mode ipip key 1", False, "Keys are not allowed with ipip and sit tunnels"),
    ("add sit1 ikey 1", False, "Keys are not allowed with ipip and sit tunnels"),
    ("show key 5", False, "Keys are not allowed with ipip and sit tunnels"),
    ("add gre1 remote 239.0.0.1", False, "A broadcast tunnel requires a source address"),
    ("add ipip1 remote 224.0.0.9 local any", False, "A broadcast tunnel requires a source address"),
    ("add gre1 ttl 64 nopmtudisc", False, "ttl != 0 and nopmtudisc are incompatible"),
    ("change gre1 nopmtudisc ttl 1", False, "ttl != 0 and nopmtudisc are incompatible"),
    # prl
    ("prl dev isatap0 prl-frob 1.2.3.4", False, 'Invalid PRL parameter "prl-frob"'),
    ("prl prl-default 1.2.3.4 prl-delete 1.2.3.5 dev isatap0", False, "One PRL entry at a time"),
    ("prl prl-default 1.2.3.4", False, "Must specify device"),
    ("prl prl-default any1 dev isatap0", False, 'Error: an IP address is expected rather than "any1"'),
    ("prl dev a/b", False, 'Error: argument "a/b" is wrong: "dev" not a valid ifname'),
    # 6rd
    ("6rd dev sit1 6rd-frob", False, 'Invalid 6RD parameter "6rd-frob"'),
    ("6rd 6rd-reset", False, "Must specify device"),
    ("6rd dev sit1 6rd-prefix 2001:db8::/129", False, 'Error: inet6 prefix is expected rather than "2001:db8::/129".'),
    ("6rd dev sit1 6rd-prefix 10.0.0.0/8", False, 'Error: inet6 prefix is expected rather than "10.0.0.0/8".'),
    ("6rd dev sit1 6rd-relay_prefix 10.0.0.0/33", False, 'Error: inet prefix is expected rather than "10.0.0.0/33".'),
    (
        "6rd dev sit1 6rd-relay_prefix 10.0.0.0/255.0.255.0",
        False,
        'Error: inet prefix is expected rather than "10.0.0.0/255.0.255.0".',
    ),
    ("6rd dev sit1 6rd-relay_prefix any/8", False, 'Error: inet prefix is expected rather than "any/8".'),
]


@pytest.mark.parametrize(("line", "ipv6", "message"), ERRORS, ids=[f"{e[0]}{' -6' if e[1] else ''}" for e in ERRORS])
def test_each_refusal_reads_as_iproute2s(line: str, ipv6: bool, message: str) -> None:
    assert error(line, ipv6=ipv6) == message


def test_change_leaves_checks_that_need_the_running_tunnel_to_the_daemon() -> None:
    # iproute2 starts `change NAME` from the running tunnel; its mode and keys are unknown here.
    assert parse(words("change tun0 key 5")).table == {"ikey": 5, "okey": 5}
    assert parse(words("change tun0 remote 239.1.1.1")).table == {"remote": "239.1.1.1"}


# --- show: print_tunnel() of iptunnel.c and ip6tunnel.c ------------------------------------------------------------


def tunnel(name: str, mode: str, **fields: Any) -> dict[str, Any]:
    """A control socket JSON tunnel object with Linux's defaults for what is not given."""
    t: dict[str, Any] = {
        "name": name,
        "mode": mode,
        "local": None,
        "remote": None,
        "dev": None,
        "ikey": None,
        "okey": None,
        "iseq": False,
        "oseq": False,
        "icsum": False,
        "ocsum": False,
        "ttl": None,
        "tos": 0,
        "pmtudisc": True,
        "encaplimit": 4,
        "flowlabel": 0,
        "sixrd": None,
        "prl": [],
        "mtu": 1476,
        "pid": 1,
    }
    t.update(fields)
    return t


SHOWN = [
    # iptunnel.c print_tunnel(): "%s: %s/ip remote %s local %s", dev, ttl, tos, nopmtudisc, keys;
    # tnl_print_gre_flags(): the flag lines, GRE only, iseq icsum oseq ocsum.
    (
        tunnel(
            "gre1",
            "gre",
            local="198.51.100.1",
            remote="203.0.113.1",
            ikey=1234,
            okey=1234,
            iseq=True,
            oseq=True,
            ocsum=True,
            ttl=64,
            tos=None,
        ),
        [
            "gre1: gre/ip remote 203.0.113.1 local 198.51.100.1 ttl 64 tos inherit key 1234",
            "  Drop packets out of sequence.",
            "  Sequence packets on output.",
            "  Checksum output packets.",
        ],
    ),
    (
        tunnel("gre2", "gre", local="198.51.100.1", ikey=1, okey=2, icsum=True),
        [
            "gre2: gre/ip remote any local 198.51.100.1 ttl inherit ikey 1 okey 2",
            "  Checksum in received packet is required.",
        ],
    ),
    (
        tunnel("ipip1", "ipip", local="198.51.100.1", dev="eth0", tos=0x10, pmtudisc=False),
        ["ipip1: ip/ip remote any local 198.51.100.1 dev eth0 ttl inherit tos 0x10 nopmtudisc"],
    ),
    # Linux's gretap has no `ip tunnel` line at all; usertunnel prints its outer protocol, GRE.
    (
        tunnel("tap0", "gretap", local="198.51.100.1", remote="203.0.113.1", okey=9, oseq=True),
        ["tap0: gre/ip remote 203.0.113.1 local 198.51.100.1 ttl inherit okey 9", "  Sequence packets on output."],
    ),
    # sit: tnl_strproto(IPPROTO_IPV6) is "ipv6"; SIOCGET6RD answers 2002::/16 until a `6rd` command
    # (ipip6_tunnel_clone_6rd in sit.c), and the relay prefix only when its address is not 0.
    (
        tunnel("sit1", "sit", local="198.51.100.1", remote="203.0.113.1", ttl=64),
        ["sit1: ipv6/ip remote 203.0.113.1 local 198.51.100.1 ttl 64 6rd-prefix 2002::/16"],
    ),
    (
        tunnel("6rd0", "sit", local="198.51.100.1", sixrd={"prefix": "2001:db8::/32", "relay_prefix": "10.0.0.0/8"}),
        [
            "6rd0: ipv6/ip remote any local 198.51.100.1 ttl inherit 6rd-prefix 2001:db8::/32"
            " 6rd-relay_prefix 10.0.0.0/8"
        ],
    ),
    (
        tunnel("6rd1", "sit", sixrd={"prefix": "2001:db8::/32", "relay_prefix": "0.0.0.0/0"}),
        ["6rd1: ipv6/ip remote any local any ttl inherit 6rd-prefix 2001:db8::/32"],
    ),
    # isatap: the potential router list right after local, " pdr A" or " pr A" (SIOCGETPRL)
    (
        tunnel(
            "isatap0",
            "isatap",
            local="198.51.100.1",
            ttl=64,
            prl=[{"address": "198.51.100.9", "default": True}, {"address": "198.51.100.10", "default": False}],
        ),
        [
            "isatap0: ipv6/ip remote any local 198.51.100.1 pdr 198.51.100.9 pr 198.51.100.10 ttl 64"
            " 6rd-prefix 2002::/16"
        ],
    ),
    # ip6tunnel.c print_tunnel(): "%s: %s/ipv6 remote %s local %s" (inet_ntop: "::", never "any"),
    # dev, encaplimit, hoplimit, tclass 0x%02x, flowlabel 0x%05x, (flowinfo 0x%08x), keys, GRE flags.
    (
        tunnel("ip6tnl1", "ipip6", local="2001:db8::1", remote="2001:db8::2", ttl=64),
        [
            "ip6tnl1: ip/ipv6 remote 2001:db8::2 local 2001:db8::1 encaplimit 4 hoplimit 64 tclass 0x00"
            " flowlabel 0x00000 (flowinfo 0x00000000)"
        ],
    ),
    (
        tunnel("ip6tnl2", "ip6ip6", dev="eth0", encaplimit=None, tos=None, flowlabel=0x12345),
        [
            "ip6tnl2: ipv6/ipv6 remote :: local :: dev eth0 encaplimit none hoplimit inherit tclass inherit"
            " flowlabel 0x12345 (flowinfo 0x00012345)"
        ],
    ),
    (
        tunnel(
            "ip6gre1",
            "ip6gre",
            local="2001:db8::1",
            remote="::ffff:192.0.2.1",
            ttl=255,
            tos=0xB8,
            flowlabel=None,
            ikey=5,
            okey=5,
            icsum=True,
            ocsum=True,
        ),
        [
            "ip6gre1: gre/ipv6 remote ::ffff:192.0.2.1 local 2001:db8::1 encaplimit 4 hoplimit 255 tclass 0xb8"
            " flowlabel inherit (flowinfo 0x0b800000) key 5",
            "  Checksum in received packet is required.",
            "  Checksum output packets.",
        ],
    ),
]


@pytest.mark.parametrize(("t", "lines"), SHOWN, ids=[s[0]["name"] for s in SHOWN])
def test_show_lines_are_iproute2s_for_each_mode(t: dict[str, Any], lines: list[str]) -> None:
    assert show_lines(t) == lines


def test_show_lines_of_ipv6_addresses_are_written_as_inet_ntop_writes_them() -> None:
    t = tunnel("ip6tnl3", "ip6ip6", local="::c000:201", remote="2001:0db8:0:0:1:0:0:1")
    assert show_lines(t)[0].startswith("ip6tnl3: ipv6/ipv6 remote 2001:db8::1:0:0:1 local ::192.0.2.1 ")


ipv4s = st.one_of(st.none(), st.ip_addresses(v=4).map(str))


# --- show's filter ---------------------------------------------------------------------------------------------------

TUNNELS = [
    tunnel("gre1", "gre", local="198.51.100.1", remote="203.0.113.1", ikey=5, okey=5),
    tunnel("tun2", "ipip", local="198.51.100.1", remote="203.0.113.2", dev="eth0"),
    tunnel("tap0", "gretap", local="198.51.100.2", remote="203.0.113.1"),
    tunnel("ip6a", "ipip6", local="2001:db8::1", remote="2001:db8::2", ttl=64),
    tunnel("ip6b", "ip6gre", local="2001:db8::1", remote="2001:db8::3", encaplimit=None, tos=0x20),
]


def listed(line: str, ipv6: bool = False) -> list[str]:
    command = parse(words(line), ipv6=ipv6)
    return [t["name"] for t in TUNNELS if matches(command, t)]


@pytest.mark.parametrize(
    ("line", "ipv6", "names"),
    [
        ("show", False, ["gre1", "tun2", "tap0"]),  # `ip tunnel show`: tunnels over IPv4 only
        ("show", True, ["ip6a", "ip6b"]),  # `ip -6 tunnel show`: over IPv6 only
        ("show remote 203.0.113.1", False, ["gre1", "tap0"]),
        ("show local 198.51.100.1 remote any", False, ["gre1", "tun2"]),
        ("show dev eth0", False, ["tun2"]),
        ("show tun2", False, ["tun2"]),
        ("show gre1 remote 192.0.2.99", False, ["gre1"]),  # a mode read from the name: that device alone
        ("show tun2 remote 192.0.2.99", False, []),  # no mode: the list, filtered
        ("show mode gre", False, ["gre1"]),
        ("show mode gretap remote 203.0.113.1", False, ["tap0"]),
        ("show mode gre key 5", False, ["gre1"]),
        ("show mode gre key 6", False, []),
        ("show remote 2001:db8::3", True, ["ip6b"]),
        ("show mode ip6gre", False, ["ip6b"]),  # handed to the -6 grammar
        ("show mode any", True, ["ip6a", "ip6b"]),
        ("show hoplimit 64", True, ["ip6a"]),
        ("show tclass 20", True, ["ip6b"]),
        ("show encaplimit none", True, ["ip6b"]),  # a flag given: the tunnel must share it
        ("show tclass inherit", True, []),
        ("show ip6a remote 2001:db8::9", True, ["ip6a"]),  # a name asks that device alone
        ("show local ::", True, ["ip6a", "ip6b"]),
    ],
)
def test_show_filters_as_iproute2s_tunnel_lists_do(line: str, ipv6: bool, names: list[str]) -> None:
    assert listed(line, ipv6) == names


# --- round trip: a table, written as words, reads back as the same table ------------------------------------------

names = st.integers(0, 999).map(lambda n: f"tun{n}")
addresses4 = st.ip_addresses(v=4).filter(lambda a: not a.is_multicast and int(a) != 0).map(str)
addresses6 = st.ip_addresses(v=6).filter(lambda a: int(a) != 0).map(lambda a: a.compressed)


def _argv(action: str, name: str, table: dict[str, Any], ipv6: bool, named: bool, order: list[int]) -> list[str]:
    """The words a person would type for `table` (the inverse of parse)."""
    groups: list[list[str]] = [["mode", table["mode"]]]
    for key, value in table.items():
        if key in ("local", "remote", "dev"):
            groups.append([key, value])
        elif key in ("ikey", "okey"):
            groups.append([key, str(value)])
        elif key in ("iseq", "oseq", "icsum", "ocsum", "dscp_inherit") and value:
            groups.append(["dscp", "inherit"] if key == "dscp_inherit" else [key])
        elif key == "pmtudisc":
            groups.append(["pmtudisc" if value else "nopmtudisc"])
        elif key == "allow_localremote":
            groups.append(["allow-localremote" if value else "noallow-localremote"])
        elif key == "ttl":
            groups.append(["hoplimit" if ipv6 else "ttl", "0" if ipv6 and value == "inherit" else str(value)])
        elif key == "tos":
            groups.append(["tclass" if ipv6 else "tos", value if value == "inherit" else f"{value:x}"])
        elif key == "flowlabel":
            groups.append(["flowlabel", value if value == "inherit" else f"0x{value:x}"])
        elif key == "encaplimit":
            groups.append(["encaplimit", str(value)])
    groups.append(["name", name] if named else [name])
    ranked = sorted(range(len(groups)), key=lambda i: order[i])  # `order`: a permutation, at least as long
    return [action] + [word for i in ranked for word in groups[i]]


@st.composite
def tables4(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(st.sampled_from(MODES4))
    table: dict[str, Any] = {"mode": mode}
    for key, values in (
        ("local", st.one_of(st.just("any"), addresses4)),
        ("remote", st.one_of(st.just("any"), addresses4)),
        ("dev", st.sampled_from(["eth0", "ens3", "bond0.7"])),
        ("ttl", st.one_of(st.just("inherit"), st.integers(1, 255))),
        ("tos", st.one_of(st.just("inherit"), st.integers(0, 127).map(lambda n: n * 2))),
        ("pmtudisc", st.booleans()),
        ("iseq", st.just(True)),
        ("oseq", st.just(True)),
        ("icsum", st.just(True)),
        ("ocsum", st.just(True)),
    ):
        if draw(st.booleans()):
            table[key] = draw(values)
    if mode in ("gre", "gretap"):
        for key in ("ikey", "okey"):
            if draw(st.booleans()):
                table[key] = draw(st.integers(1, 2**32 - 1))
    if isinstance(table.get("ttl"), int) and table.get("pmtudisc") is False:
        table["pmtudisc"] = True  # iproute2 refuses the pair
    return table


@st.composite
def tables6(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(st.sampled_from(MODES6))
    table: dict[str, Any] = {"mode": mode}
    for key, values in (
        ("local", st.one_of(st.just("any"), addresses6)),
        ("remote", st.one_of(st.just("any"), addresses6)),
        ("dev", st.sampled_from(["eth0", "ens3"])),
        ("ttl", st.one_of(st.just("inherit"), st.integers(1, 255))),
        ("tos", st.one_of(st.just("inherit"), st.integers(0, 255))),
        ("flowlabel", st.one_of(st.just("inherit"), st.integers(0, 0xFFFFF))),
        ("encaplimit", st.one_of(st.just("none"), st.integers(0, 255))),
        ("dscp_inherit", st.just(True)),
        ("allow_localremote", st.booleans()),
    ):
        if draw(st.booleans()):
            table[key] = draw(values)
    if mode == "ip6gre":
        for key, values in (
            ("ikey", st.integers(0, 2**32 - 1)),
            ("okey", st.integers(0, 2**32 - 1)),
            ("iseq", st.just(True)),
            ("ocsum", st.just(True)),
        ):
            if draw(st.booleans()):
                table[key] = draw(values)
    return table


@given(
    table=tables4(),
    name=names,
    named=st.booleans(),
    order=st.permutations(list(range(16))),
    action=st.sampled_from(["add", "change", "a", "chan"]),
)
def test_an_ip_tunnel_table_written_as_words_parses_back_to_itself(
    table: dict[str, Any], name: str, named: bool, order: list[int], action: str
) -> None:
    command = parse(_argv(action, name, table, False, named, order))
    assert command == TunnelCommand("change" if action.startswith("c") else "add", name, table, False)


@given(table=tables6(), name=names, named=st.booleans(), order=st.permutations(list(range(16))), dash6=st.booleans())
def test_an_ip6_tunnel_table_written_as_words_parses_back_to_itself(
    table: dict[str, Any], name: str, named: bool, order: list[int], dash6: bool
) -> None:
    # Without -6, the IPv6 mode word itself hands the words to the -6 grammar.
    command = parse(_argv("add", name, table, True, named, order), ipv6=dash6)
    assert command == TunnelCommand("add", name, table, True)
