"""The daemon's configuration file: the same tunnels as `usertunnel up`, every mistake on its line, reload plans."""

from __future__ import annotations

import ipaddress
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usertunnel import cli
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import TunnelParams
from usertunnel.front.config import (
    ACCEPTED_KEYS,
    ConfigFileError,
    DaemonConfig,
    TableError,
    canonical,
    load_config,
    merge,
    parse_config,
    plan,
    tunnel_from_table,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def up_params(*flags: str) -> tuple[TunnelParams, Any]:
    """What `usertunnel up FLAGS` builds: its TunnelParams and its parsed arguments."""
    args = cli.build_parser().parse_args(["up", *flags])
    return cli.params_from_args(args), args


FULL = """\
# every mode, every option
[daemon]
coalesce = false
batch = true

[tunnel.gre1]
mode = "gre"
local = "198.51.100.1"
remote = "198.51.100.2"
ikey = 1
okey = "0.0.0.2"
seq = true
csum = true
seq_policy = "rfc2890"
ttl = 64
tos = "0x10"
dev = "eth0"
mtu = 1400
keepalive = "5,4"
reflect_keepalives = false
addresses = ["203.0.113.1/30", "2001:db8:1::1/64"]
routes = ["203.0.113.128/25", "2001:db8:2::/48"]

[tunnel.pop]
mode = "gre"
local = "198.51.100.1"
key = 1234
neighbors = ["203.0.113.8/29=198.51.100.8"]
spokes = ["1001=203.0.113.16/28,2001:db8:16::/48"]
neighbor_timeout = 60
addresses = ["203.0.113.1/24"]

[tunnel.v4in4]
mode = "ipip"
local = "198.51.100.1"
remote = "198.51.100.3"
hoplimit = "inherit"
pmtudisc = false
tclass = "inherit"

[tunnel.six]
mode = "sit"
local = "198.51.100.1"
remote = "any"
6rd_prefix = "2001:db8::/32"
6rd_relay_prefix = "198.51.100.0/24"
addresses = ["2001:db8:6364:100::1/64"]

[tunnel.isa]
mode = "isatap"
local = "198.51.100.9"
prl = ["192.0.2.1", "192.0.2.2=nodefault"]

[tunnel.v6gre]
mode = "ip6gre"
local = "2001:db8::1"
remote = "2001:db8::2"
key = 7
encaplimit = "none"
flowlabel = 0x12345
dsfield = 0x20

[tunnel.v6v6]
mode = "ip6ip6"
local = "2001:db8::1"
remote = "2001:db8::3"
encaplimit = 2
flowlabel = "inherit"
ttl = 32

[tunnel.v4v6]
mode = "ipip6"
remote = "2001:db8::4"

[tunnel.tap]
mode = "gretap"
local = "198.51.100.1"
remote = "198.51.100.4"
key = 9
up = false
"""

# The same tunnels as `usertunnel up` flags.
FULL_AS_FLAGS = {
    "gre1": "--mode gre --local 198.51.100.1 --remote 198.51.100.2 --ikey 1 --okey 0.0.0.2 --seq --csum "
    "--seq-policy rfc2890 --ttl 64 --tos 10 --dev eth0 --mtu 1400 --keepalive 5,4 --no-reflect-keepalives "
    "--address 203.0.113.1/30 --address 2001:db8:1::1/64",
    "pop": "--local 198.51.100.1 --remote any --key 1234 --neighbor 203.0.113.8/29=198.51.100.8 "
    "--spoke 1001=203.0.113.16/28,2001:db8:16::/48 --neighbor-timeout 60 --address 203.0.113.1/24",
    "v4in4": "--mode ipip --local 198.51.100.1 --remote 198.51.100.3 --ttl inherit --nopmtudisc --tos inherit",
    "six": "--mode sit --local 198.51.100.1 --remote any --6rd-prefix 2001:db8::/32 "
    "--6rd-relay-prefix 198.51.100.0/24 --address 2001:db8:6364:100::1/64",
    "isa": "--mode isatap --local 198.51.100.9 --remote any --prl 192.0.2.1 --prl 192.0.2.2=nodefault",
    "v6gre": "--mode ip6gre --local 2001:db8::1 --remote 2001:db8::2 --key 7 --encaplimit none "
    "--flowlabel 12345 --tclass 20",
    "v6v6": "--mode ip6ip6 --local 2001:db8::1 --remote 2001:db8::3 --encaplimit 2 --flowlabel inherit --hoplimit 32",
    "v4v6": "--mode ipip6 --remote 2001:db8::4",
    "tap": "--mode gretap --local 198.51.100.1 --remote 198.51.100.4 --key 9",
}


def refusal(text: str) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, "t.toml")
    return caught.value


# --- the same tunnels as `usertunnel up` ------------------------------------------------------------------------


def test_full_example_builds_the_tunnels_usertunnel_up_builds_for_the_same_flags() -> None:
    config = parse_config(FULL, "full.toml")
    assert list(config.tunnels) == list(FULL_AS_FLAGS)  # file order
    for name, flags in FULL_AS_FLAGS.items():
        params, args = up_params(*flags.split(), "--name", name)
        tunnel = config.tunnels[name]
        assert tunnel.options.params == params, name
        assert tunnel.options.addresses == args.address, name
        assert tunnel.options.device == args.dev, name
        assert tunnel.options.mtu == args.mtu, name
        assert (tunnel.options.coalesce, tunnel.options.batch) == (False, True), name
    assert (config.coalesce, config.batch) == (False, True)
    gre1 = config.tunnels["gre1"]
    assert gre1.routes == (ipaddress.ip_network("203.0.113.128/25"), ipaddress.ip_network("2001:db8:2::/48"))
    assert gre1.up and not config.tunnels["tap"].up


def test_ipv6_outer_modes_default_to_hop_limit_64_and_ipv4_ones_to_inherit_as_up_does() -> None:
    config = parse_config('[tunnel.a]\nmode = "ip6ip6"\nremote = "2001:db8::2"\n[tunnel.b]\nmode = "ipip"\n')
    assert config.tunnels["a"].options.params.ttl == 64
    assert config.tunnels["b"].options.params.ttl is None
    assert config.tunnels["b"].options.params.hub is not None  # remote any (the default): a hub, as `--remote any`


def test_an_empty_file_is_a_daemon_with_no_tunnels() -> None:
    assert parse_config("# nothing yet\n") == DaemonConfig({}, True, True)


def test_tunnels_written_as_headers_dotted_keys_or_inline_tables_are_the_same() -> None:
    headers = '[tunnel.gre1]\nmode = "gre"\nremote = "198.51.100.2"\nkey = 5\n'
    dotted = '[tunnel]\ngre1.mode = "gre"\ngre1.remote = "198.51.100.2"\ngre1.key = 5\n'
    root = 'tunnel.gre1.mode = "gre"\ntunnel.gre1.remote = "198.51.100.2"\ntunnel.gre1.key = 5\n'
    inline = '[tunnel]\ngre1 = { mode = "gre", remote = "198.51.100.2", key = 5 }\n'
    assert parse_config(headers) == parse_config(dotted) == parse_config(root) == parse_config(inline)


# --- every mistake, on its line ---------------------------------------------------------------------------------

ERRORS = [
    pytest.param('[tunnel.a]\nmode = "gre"\nkey = \n', 3, "invalid TOML: Invalid value (column 7)", id="toml-syntax"),
    pytest.param('[tunnel.a]\nmode = "gre"\n[tunnel.a]\n', 3, "invalid TOML: Cannot declare", id="toml-twice"),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\n\nkeepalives = "10"\n',
        4,
        "tunnel a: unknown key 'keepalives' (did you mean 'keepalive'?); accepted: mode, local, remote",
        id="unknown-key",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\nttl = true\n',
        4,
        'tunnel a: ttl: expected an integer 1..255 or "inherit", got true (a boolean)',
        id="wrong-type",
    ),
    pytest.param('[tunnel.a]\nmode = "gre"\nseq = 1\n', 3, "seq: expected true or false, got 1 (an integer)", id="int"),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\nttl = 300\n',
        4,
        'tunnel a: ttl: invalid ttl "300": a number 1..255 or "inherit"',
        id="bad-value",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "ip6gre"\nremote = "2001:db8::2"\nhoplimit = 0x100\n',
        4,
        'tunnel a: hoplimit: invalid ttl "256"',
        id="alias-named-as-written",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\ntos = 256\n',
        4,
        "tunnel a: tos: invalid tos 256: 0..255",
        id="tos-int",
    ),
    pytest.param('# header\n\n[tunnel.a]\nlocal = "198.51.100.1"\n', 3, "tunnel a: mode: missing", id="no-mode"),
    pytest.param('[tunnel.a]\nmode = "vxlan"\n', 2, "tunnel a: mode: unknown mode 'vxlan'; accepted: gre", id="mode"),
    pytest.param(
        '[tunnel.gre-far-too-long]\nmode = "gre"\n',
        1,
        "invalid tunnel name 'gre-far-too-long' (16 bytes): a device name is 1..15 bytes",
        id="name-too-long",
    ),
    pytest.param('[tunnel."a b"]\nmode = "gre"\n', 1, "invalid tunnel name 'a b'", id="name-space"),
    pytest.param('[tunnel.".."]\nmode = "gre"\n', 1, "invalid tunnel name '..'", id="name-dotdot"),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nkey = 1\nikey = 2\n',
        4,
        "tunnel a: ikey: key sets both ikey and okey: give either key, or ikey and/or okey",
        id="key-and-ikey",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\ntclass = 1\ndsfield = 2\n',
        4,
        "dsfield: tclass and dsfield are the same setting (tos): give one",
        id="two-aliases",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "ipip"\nremote = "198.51.100.2"\nseq = true\n',
        4,
        "tunnel a: seq: is a GRE option, for mode gre or ip6gre or gretap or ip6gretap: not mode ipip",
        id="gre-option-on-ipip",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\nencaplimit = 4\n',
        4,
        "encaplimit: is an IPv6 outer header's option, for mode ipip6 or ip6ip6 or ip6gre or ip6gretap: not mode gre",
        id="ipv6-only",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "ip6ip6"\nlocal = "2001:db8::1"\n',
        1,
        'remote: mode ip6ip6 needs a fixed remote address: "any" (the default) makes a point-to-multipoint hub',
        id="remote-any-over-ipv6",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\nneighbors = ["203.0.113.8/29=198.51.100.8"]\n',
        4,
        'neighbors: belongs to a hub: mode gre or ipip with remote "any"',
        id="neighbors-without-hub",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "ipip"\nremote = "198.51.100.2"\npmtudisc = false\nttl = 9\n',
        4,
        'pmtudisc: false needs ttl = "inherit" (ttl is 9)',
        id="pmtudisc",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\naddresses = [\n  "203.0.113.1/30",\n'
        '  "2001:db8::1/64",\n  "203.0.113.300/30",\n]\n',
        7,
        "tunnel a: addresses: invalid address '203.0.113.300/30'",
        id="list-element-line",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "ipip"\nremote = "198.51.100.2"\naddresses = ["203.0.113.1/30",\n  "2001:db8::1/64"]\n',
        5,
        "addresses: address 2001:db8::1/64 is IPv6, which mode ipip cannot carry",
        id="address-family",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "sit"\nremote = "198.51.100.2"\nroutes = ["203.0.113.0/24"]\n',
        4,
        "routes: route 203.0.113.0/24 is IPv4, which mode sit cannot carry",
        id="route-family",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\nroutes = ["203.0.113.1/24"]\n',
        4,
        "routes: invalid route '203.0.113.1/24' (203.0.113.1/24 has host bits set)",
        id="route-host-bits",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\naddresses = ["2001:db8::1/64"]\nmtu = 1000\n',
        5,
        "mtu: 1000 is below IPv6's minimum of 1280",
        id="mtu",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\nkeepalive = "10,x"\n',
        4,
        'keepalive: invalid keepalive "10,x"',
        id="keepalive",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nkeepalive = 10\n',
        3,
        "keepalive: keepalives go to the remote and come back to local",
        id="keepalive-needs-ends",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "sit"\n6rd_relay_prefix = "198.51.100.0/24"\n',
        3,
        "6rd_relay_prefix: needs 6rd_prefix",
        id="relay-alone",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "sit"\n6rd_prefix = "2001:db8::/32"\n6rd_relay_prefix = "198.51.100.1/24"\n',
        4,
        "6rd_relay_prefix: 6rd-prefix 2002::/16 6rd-relay_prefix 198.51.100.1/24: the relay prefix has bits set",
        id="relay-bits",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nspokes = ["1=203.0.113.0/28"]\nneighbors = ["203.0.113.0/28=198.51.100.8"]\n',
        3,
        "spokes: prefix 203.0.113.0/28 is given twice",
        id="hub-prefix-twice",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\nseq_policy = "resync"\n',
        4,
        "tunnel a: seq_policy: resync says how received sequence numbers are enforced: needs iseq",
        id="seq-policy-without-iseq",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "ipip6"\nlocal = "2001:db8::1"\n\nremote = "198.51.100.2"\n',
        5,
        "tunnel a: remote: mode ipip6 runs over IPv6: give an IPv6 address, not '198.51.100.2'",
        id="outer-family",
    ),
    pytest.param(
        '[tunnel.a]\nmode = "gretap"\nremote = "198.51.100.2"\nseq = true\nseq_policy = "rfc2890"\n',
        1,
        "tunnel a: mode gretap carries Ethernet frames: no hub (--remote any), keepalives or rfc2890",
        id="cross-field-on-header",
    ),
    pytest.param('[tunnel]\ngre1 = { mode = "gre", ttl = 0.5 }\n', 2, "ttl: expected an integer", id="inline"),
    pytest.param('[tunnel]\ngre1.mode = "gre"\ngre1.mtu = "big"\n', 3, "mtu: expected an integer", id="dotted"),
    pytest.param('[[tunnel]]\nmode = "gre"\n', 1, "write [tunnel.NAME], not [[tunnel]]", id="array-of-tables"),
    pytest.param('[tunnel]\ngre1 = "gre"\n', 2, "tunnel gre1: expected a table of settings, got a string", id="flat"),
    pytest.param('[tunnels.a]\nmode = "gre"\n', 1, "unknown key 'tunnels' (did you mean 'tunnel'?)", id="top"),
    pytest.param("[daemon]\ncoalesce = true\nbatched = false\n", 3, "did you mean 'batch'?", id="daemon-key"),
    pytest.param('[daemon]\ncoalesce = "yes"\n', 2, "daemon: coalesce: expected true or false, got 'yes'", id="dtype"),
    pytest.param(
        '[tunnel.a]\nmode = "gre"\nlocal = "198.51.100.1"\nremote = "198.51.100.2"\nkey = 7\n\n'
        '[tunnel.b]\nmode = "gre"\nlocal = "198.51.100.1"\nremote = "198.51.100.2"\nikey = "0.0.0.7"\nokey = 8\n',
        7,
        "tunnels a (line 1) and b have the same mode family, local, remote and ikey",
        id="collision",
    ),
]


@pytest.mark.parametrize(("text", "line", "reason"), ERRORS)
def test_every_mistake_is_reported_on_its_line_with_the_reason(text: str, line: int, reason: str) -> None:
    error = refusal(text)
    assert len(error.problems) == 1, str(error)
    assert error.problems[0].line == line, str(error)
    assert reason in error.problems[0].reason
    assert str(error).startswith(f"t.toml:{line}: ")


def test_tunnels_of_different_mode_families_or_keys_do_not_collide() -> None:
    text = (
        '[tunnel.a]\nmode = "gre"\nremote = "198.51.100.2"\n'
        '[tunnel.b]\nmode = "gretap"\nremote = "198.51.100.2"\n'  # Linux keeps gretap apart from gre
        '[tunnel.c]\nmode = "ipip"\nremote = "198.51.100.2"\n'
        '[tunnel.d]\nmode = "gre"\nremote = "198.51.100.2"\nkey = 1\n'
    )
    assert list(parse_config(text).tunnels) == ["a", "b", "c", "d"]


def test_a_hub_collides_through_its_spoke_keys_too() -> None:
    error = refusal(
        '[tunnel.hub]\nmode = "gre"\nspokes = ["5=203.0.113.0/28"]\n[tunnel.other]\nmode = "gre"\nkey = 5\n'
    )
    assert error.problems[0].line == 4 and "hub (line 1) and other" in error.problems[0].reason


def test_the_whole_file_is_refused_and_every_problem_listed_in_line_order() -> None:
    text = (
        '[tunnel.good]\nmode = "gre"\nremote = "198.51.100.2"\n'
        '[tunnel.bad1]\nmode = "gre"\nttl = 999\n'
        '[tunnel.bad2]\nmode = "gre"\ncolour = "blue"\n'
        "[nonsense]\n"
    )
    error = refusal(text)
    assert [p.line for p in error.problems] == [6, 9, 10]
    assert str(error).splitlines()[0].startswith("t.toml:6: tunnel bad1: ttl:")


def test_toml_error_at_the_end_of_the_file_names_the_last_line() -> None:
    error = refusal('[tunnel.a]\nmode = "gre')
    assert error.problems[0].line == 2 and "invalid TOML" in error.problems[0].reason


def test_tunnel_from_table_names_the_key_in_its_error() -> None:
    with pytest.raises(TableError, match=r'^ttl: invalid ttl "300"') as caught:
        tunnel_from_table("gre1", {"mode": "gre", "remote": "198.51.100.2", "ttl": 300})
    assert caught.value.key == "ttl"
    assert isinstance(caught.value, ConfigError)


def test_load_config_reads_a_file_and_refuses_missing_and_non_utf8_files(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[tunnel.gre1]\nmode = "gre"\nremote = "198.51.100.2"\n')
    assert list(load_config(good).tunnels) == ["gre1"]
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*missing.toml: No such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[tunnel.gre1]\nmode = "gr\xe9"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: not UTF-8 text"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[tunnel.gre1]\nmode = "gre"\nttl = 0x1ff\n')
    with pytest.raises(ConfigError, match=r"^.*wrong.toml:3: tunnel gre1: ttl: invalid ttl"):
        load_config(wrong)


# --- aliases and merge ------------------------------------------------------------------------------------------


def test_aliases_fold_into_the_canonical_keys() -> None:
    written = {"mode": "gre", "key": 5, "seq": True, "csum": False, "hoplimit": 9, "tclass": "0x10"}
    assert canonical(written) == {
        "mode": "gre",
        "ikey": 5,
        "okey": 5,
        "iseq": True,
        "oseq": True,
        "icsum": False,
        "ocsum": False,
        "ttl": 9,
        "tos": "0x10",
    }
    assert canonical({"dsfield": 1}) == {"tos": 1}
    explicit = {"mode": "gre", "ikey": 5, "okey": 5, "iseq": True, "oseq": True, "ttl": 9, "tos": "0x10"}
    built = tunnel_from_table("a", written)
    assert built.same_as(tunnel_from_table("a", explicit))
    assert built.table == canonical(written)


@pytest.mark.parametrize(
    "table",
    [{"key": 1, "okey": 2}, {"seq": True, "iseq": False}, {"csum": True, "ocsum": True}, {"ttl": 1, "hoplimit": 1}],
)
def test_canonical_refuses_two_keys_for_one_setting(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="give"):
        canonical(table)


def test_canonical_refuses_an_unknown_key_and_suggests_the_nearest() -> None:
    with pytest.raises(TableError, match=r"unknown key 'seq-policy' \(did you mean 'seq_policy'\?\)") as caught:
        canonical({"seq-policy": "kernel"})
    assert caught.value.key == "seq-policy"


def test_merge_updates_the_old_table_with_the_new_through_aliases() -> None:
    old = {"mode": "gre", "remote": "198.51.100.2", "key": 1, "seq": True, "ttl": 9}
    assert merge(old, {"okey": 2, "hoplimit": 10, "seq": False}) == {
        "mode": "gre",
        "remote": "198.51.100.2",
        "ikey": 1,
        "okey": 2,
        "iseq": False,
        "oseq": False,
        "ttl": 10,
    }
    assert merge(old, {"key": 3}) == canonical({**old, "key": 3})


def test_merge_with_none_returns_a_setting_to_its_default() -> None:
    old = {"mode": "gre", "remote": "198.51.100.2", "key": 1, "ttl": 9}
    merged = merge(old, {"mode": "ipip", "key": None, "ttl": None})
    assert merged == {"mode": "ipip", "remote": "198.51.100.2"}
    assert tunnel_from_table("t", merged).options.params.ttl is None


def test_merge_refuses_what_canonical_refuses() -> None:
    with pytest.raises(ConfigError, match="key sets both"):
        merge({"mode": "gre"}, {"key": 1, "ikey": 2})


# --- reload plans -----------------------------------------------------------------------------------------------

RUNNING = """\
[tunnel.keep]
mode = "gre"
remote = "198.51.100.2"
key = 1234
[tunnel.respell]
mode = "gre"
remote = "198.51.100.3"
key = 1234
[tunnel.change]
mode = "gre"
remote = "198.51.100.4"
[tunnel.reroute]
mode = "gre"
remote = "198.51.100.5"
routes = ["203.0.113.0/24"]
[tunnel.gone]
mode = "ipip"
remote = "198.51.100.6"
"""

WANTED = """\
[tunnel.new]
mode = "ipip"
remote = "198.51.100.7"
[tunnel.keep]
mode = "gre"
remote = "198.51.100.2"
key = 1234
[tunnel.respell]
mode = "gre"
remote = "198.51.100.3"
ikey = "0.0.4.210"
okey = 1234
pmtudisc = true
[tunnel.change]
mode = "gre"
remote = "198.51.100.4"
ttl = 64
[tunnel.reroute]
mode = "gre"
remote = "198.51.100.5"
routes = ["203.0.113.0/25"]
"""


def test_a_reload_adds_removes_and_restarts_only_the_changed_tunnels() -> None:
    running = parse_config(RUNNING).tunnels
    wanted = parse_config(WANTED)
    result = plan(running, wanted)
    assert result.add == ("new",)
    assert result.remove == ("gone",)
    assert result.restart == ("change", "reroute")
    assert result.unchanged == ("keep", "respell")


def test_reloading_the_same_file_changes_nothing() -> None:
    config = parse_config(FULL)
    result = plan(config.tunnels, parse_config(FULL))
    assert (result.add, result.remove, result.restart) == ((), (), ())
    assert result.unchanged == tuple(config.tunnels)


def test_a_change_of_the_daemon_settings_restarts_every_tunnel() -> None:
    config = parse_config(RUNNING)
    result = plan(config.tunnels, parse_config("[daemon]\nbatch = false\n" + RUNNING))
    assert result.restart == tuple(config.tunnels) and result.unchanged == ()


def test_bringing_a_device_down_restarts_it() -> None:
    config = parse_config(RUNNING)
    result = plan(
        config.tunnels,
        parse_config(RUNNING.replace("key = 1234\n[tunnel.respell]", "key = 1234\nup = false\n[tunnel.respell]")),
    )
    assert result.restart == ("keep",)


# --- property: a table written out as TOML reads back as the same canonical table -----------------------------

V4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0x0A000001, 0x0AFFFFFE))
V6 = st.builds(lambda n: str(ipaddress.IPv6Address((0x20010DB8 << 96) | n)), st.integers(1, 2**32))
NAMES = st.text("abcdefgh0123456789-_.@", min_size=1, max_size=15).filter(lambda n: n not in (".", ".."))
MODES = ["gre", "ipip", "sit", "isatap", "ipip6", "ip6ip6", "ip6gre", "gretap"]


@st.composite
def tables(draw: st.DrawFn) -> dict[str, Any]:
    """A valid tunnel table of any mode, with options drawn from what that mode accepts, aliases included."""
    mode = draw(st.sampled_from(MODES))
    outer6 = mode in ("ipip6", "ip6ip6", "ip6gre")
    gre = mode in ("gre", "ip6gre", "gretap")
    families = {"gre": {4, 6}, "ip6gre": {4, 6}, "gretap": {4, 6}, "ipip": {4}, "ipip6": {4}}.get(mode, {6})
    address = V6 if outer6 else V4
    t: dict[str, Any] = {"mode": mode}
    if draw(st.booleans()):
        t["local"] = draw(address)
    if mode == "isatap":
        remote_any = True
    elif mode in ("gre", "ipip", "sit"):
        remote_any = draw(st.booleans())
    else:
        remote_any = False
    if remote_any:
        if draw(st.booleans()):
            t["remote"] = "any"
    else:
        t["remote"] = draw(address)
    if gre:
        if draw(st.booleans()):
            t["key"] = draw(st.one_of(st.integers(0, 2**32 - 1), V4))
        else:
            for k in ("ikey", "okey"):
                if draw(st.booleans()):
                    t[k] = draw(st.integers(0, 2**32 - 1))
        for both, one, other in (("seq", "iseq", "oseq"), ("csum", "icsum", "ocsum")):
            choice = draw(st.sampled_from(["both", "each", "none"]))
            if choice == "both":
                t[both] = draw(st.booleans())
            elif choice == "each":
                t[one], t[other] = draw(st.booleans()), draw(st.booleans())
        if t.get("seq") or t.get("iseq"):
            policies = ["kernel", "resync"] if mode == "gretap" else ["kernel", "rfc2890", "resync"]
            t["seq_policy"] = draw(st.sampled_from(policies))
    ttl_key = draw(st.sampled_from(["ttl", "hoplimit", None]))
    if ttl_key:
        t[ttl_key] = draw(st.one_of(st.integers(1, 255), st.just("inherit")))
    fixed_ttl = (t.get(ttl_key or "ttl", "inherit") != "inherit") if ttl_key else outer6
    if not fixed_ttl and draw(st.booleans()):
        t["pmtudisc"] = draw(st.booleans())
    tos_key = draw(st.sampled_from(["tos", "tclass", "dsfield", None]))
    if tos_key:
        t[tos_key] = draw(st.one_of(st.integers(0, 255), st.just("inherit"), st.builds(hex, st.integers(0, 255))))
    if outer6:
        if draw(st.booleans()):
            t["encaplimit"] = draw(st.one_of(st.integers(0, 255), st.just("none")))
        if draw(st.booleans()):
            t["flowlabel"] = draw(st.one_of(st.integers(0, 0xFFFFF), st.just("inherit")))
    if mode == "gre" and "local" in t and t.get("remote", "any") != "any" and draw(st.booleans()):
        t["keepalive"] = draw(st.one_of(st.integers(1, 60), st.just("10,3"), st.just(0.5)))
    if mode in ("gre", "ipip") and remote_any:
        prefixes = draw(st.lists(st.integers(0, 255), unique=True, max_size=3))
        if prefixes:
            t["neighbors"] = [f"203.0.{p}.0/24=198.51.100.{p}" for p in prefixes]
        if draw(st.booleans()):
            t["neighbor_timeout"] = draw(st.one_of(st.integers(1, 3600), st.floats(1.0, 3600.0)))
    if mode == "isatap" and draw(st.booleans()):
        t["prl"] = [draw(V4) + draw(st.sampled_from(["", "=default", "=nodefault"]))]
    if mode == "sit" and remote_any and draw(st.booleans()):
        t["6rd_prefix"] = "2001:db8::/32"
        t["6rd_relay_prefix"] = "198.51.100.0/24"
    if draw(st.booleans()):
        t["reflect_keepalives"] = draw(st.booleans())
    if draw(st.booleans()):
        t["dev"] = draw(st.sampled_from(["eth0", "ens3", "bond0.100"]))
    if draw(st.booleans()):
        t["mtu"] = draw(st.integers(1280, 9000))
    if 4 in families and draw(st.booleans()):
        t["addresses"] = [f"203.0.113.{draw(st.integers(1, 254))}/24"]
    if 6 in families and draw(st.booleans()):
        t.setdefault("addresses", []).append("2001:db8:ffff::1/64")
        t["routes"] = ["2001:db8:fffe::/48"]
    if draw(st.booleans()):
        t["up"] = draw(st.booleans())
    order = draw(st.permutations(list(t)))
    return {k: t[k] for k in order}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def render(tunnels: dict[str, dict[str, Any]], layout: str) -> str:
    """TOML for `tunnels`, as [tunnel.NAME] headers, dotted keys under [tunnel], or inline tables."""
    out = ["# rendered by the test", "[daemon]", "coalesce = true", ""]
    if layout != "headers":
        out.append("[tunnel]")
    for name, table in tunnels.items():
        n = toml_key(name)
        if layout == "headers":
            out.append(f"[tunnel.{n}]  # a comment")
            out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        elif layout == "dotted":
            out += [f"{n}.{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        else:
            out.append(f"{n} = {{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()) + " }")
        out.append("")
    return "\n".join(out)


LAYOUTS = st.sampled_from(["headers", "dotted", "inline"])
DECKS = st.dictionaries(NAMES, tables(), min_size=1, max_size=3)


def distinct_endpoints(tunnels: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Give each tunnel its own local address so that no two collide (collisions have their own test)."""
    out = {}
    for i, (name, table) in enumerate(tunnels.items()):
        table = dict(table)
        outer6 = table["mode"] in ("ipip6", "ip6ip6", "ip6gre")
        table["local"] = f"2001:db8:abcd::{i + 1}" if outer6 else f"192.0.2.{i + 1}"
        out[name] = table
    return out


@settings(max_examples=150, deadline=None)
@given(DECKS, LAYOUTS)
def test_any_valid_table_written_as_toml_reads_back_to_the_same_canonical_table(
    deck: dict[str, dict[str, Any]], layout: str
) -> None:
    deck = distinct_endpoints(deck)
    config = parse_config(render(deck, layout))
    assert list(config.tunnels) == list(deck)
    for name, table in deck.items():
        assert config.tunnels[name].table == canonical(table)
        assert config.tunnels[name].same_as(tunnel_from_table(name, table))


@settings(max_examples=150, deadline=None)
@given(DECKS, LAYOUTS, st.data())
def test_an_unknown_key_anywhere_is_reported_on_the_line_it_is_written(
    deck: dict[str, dict[str, Any]], layout: str, data: st.DataObject
) -> None:
    deck = distinct_endpoints(deck)
    name = data.draw(st.sampled_from(list(deck)))
    table = deck[name]
    position = data.draw(st.integers(0, len(table)))
    items = list(table.items())
    items.insert(position, ("colour", "blue"))
    deck[name] = dict(items)
    text = render(deck, layout)
    error = refusal(text)
    assert len(error.problems) == 1
    line = text.splitlines()[error.problems[0].line - 1]
    assert "colour" in line and "unknown key 'colour'" in error.problems[0].reason


# --- the documentation ------------------------------------------------------------------------------------------


def test_the_documentation_describes_every_key() -> None:
    doc = DOCS.read_text()
    for key in (*ACCEPTED_KEYS, "coalesce", "batch"):
        assert f"`{key}`" in doc, key


def test_every_toml_example_in_the_documentation_parses() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        parse_config(textwrap.dedent(block), "docs/config.md")


def test_csum_verify_derived_builds_what_up_builds_and_needs_icsum() -> None:
    table = {"mode": "gre", "local": "198.51.100.1", "remote": "198.51.100.2", "csum": True, "csum_verify": "derived"}
    built = tunnel_from_table("gre1", table).options.params
    flags = ["up", "--name", "gre1", "--local", "198.51.100.1", "--remote", "198.51.100.2", "--csum"]
    assert built == cli.params_from_args(cli.build_parser().parse_args([*flags, "--csum-verify", "derived"]))
    with pytest.raises(ConfigError, match="csum_verify: derived says how received GRE checksums are verified"):
        tunnel_from_table("gre1", table | {"csum": False})
    with pytest.raises(ConfigError, match="invalid csum_verify 'sometimes'"):
        tunnel_from_table("gre1", table | {"csum_verify": "sometimes"})
