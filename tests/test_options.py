"""The one option table (core/options.py): every front end's tunnel options come from it, and agree.

`usertunnel up`'s tunnel flags, the configuration file's keys and the `ip tunnel` GRE words are derived
from the table; whether a mode takes an option is one predicate, and `up`, the file and `ip tunnel`
refuse an option for exactly the modes the predicate says have no use for it.
"""

from __future__ import annotations

import argparse
import ast
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from usertunnel import cli
from usertunnel.core import options
from usertunnel.core.encap import Counters
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.front import config, iptunnel
from usertunnel.run import control

TITLES = {group.title for group in options.UP_GROUPS}


def _up_parser() -> argparse.ArgumentParser:
    for action in cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parser: argparse.ArgumentParser = action.choices["up"]
            return parser
    raise AssertionError("no up command")


def _table_flags() -> dict[str, options.Flag]:
    names = [o.name for o in options.OPTIONS] + [a.name for a in options.ALIASES]
    return {spelling: flag for name in names for flag in options.flags_of(name) for spelling in flag.names}


def test_every_tunnel_flag_of_up_comes_from_the_table_with_its_help() -> None:
    """The sections of up's tunnel options hold exactly the table's flags, each with the table's help text
    and metavar; no other section of up has one of them."""
    table = _table_flags()
    seen: dict[str, argparse.Action] = {}
    for group in _up_parser()._action_groups:
        for action in group._group_actions:
            for spelling in action.option_strings:
                if group.title in TITLES:
                    seen[spelling] = action
                else:
                    assert spelling not in table, f"{spelling} is a tunnel option outside the table's sections"
    assert set(seen) == set(table)
    for spelling, action in seen.items():
        assert action.help == table[spelling].help, spelling
        assert action.metavar == table[spelling].metavar, spelling


def test_the_help_sections_list_every_option_with_flags_once() -> None:
    members = [name for group in options.UP_GROUPS for name in group.members]
    assert len(members) == len(set(members))
    assert set(members) <= set(options.BY_NAME) | set(options.ALIAS_BY_NAME)
    with_flags = {o.name for o in options.OPTIONS if o.flags} | {a.name for a in options.ALIASES if a.flags}
    assert with_flags == set(members)


def test_every_configuration_key_comes_from_the_table() -> None:
    """The file's keys are the table's TOML keys then its aliases, in order, each with the table's types and
    words (the mode's accepted names are spelled from core.params.Mode)."""
    keys = tuple(o.name for o in options.OPTIONS if o.toml is not None)
    assert keys + tuple(a.name for a in options.ALIASES) == config.ACCEPTED_KEYS
    for name in keys:
        toml = options.option(name).toml
        assert toml is not None
        assert config._KEYS[name].types == toml.types
        if name != "mode":
            assert config._KEYS[name].expect == toml.expect
    assert config._KEYS["mode"].expect == ", ".join(f'"{m.value.name}"' for m in Mode)


def test_every_file_key_with_a_parser_is_checked_on_its_own_with_it() -> None:
    """A key the table gives a parser (and does not mark as checked in the build) is checked alone."""
    for o in options.OPTIONS:
        if o.toml is not None and o.toml.alone and o.parse is not None:
            assert o.name in config._ALONE, o.name
    assert set(config._ALONE) <= set(options.BY_NAME)


# A value for a handler of `ip tunnel` to read, whatever the word: the first it accepts.
_VALUES = ("1", "inherit", "fou", "198.51.100.1", "2001:db8::1", "gre", "ip6gre", "eth0")


def _keys_set_by(handler: iptunnel.Handler) -> set[str]:
    for value in _VALUES:
        state = iptunnel._State()
        try:
            handler(iptunnel._Words([value]), state)
        except iptunnel.IpTunnelError:
            continue
        return set(state.table) or ({"mode"} if state.proto else set())
    raise AssertionError("no value accepted")


@pytest.mark.parametrize("grammar", [iptunnel._WORDS4, iptunnel._WORDS6], ids=["ip tunnel", "ip -6 tunnel"])
def test_every_grammar_word_is_a_word_of_the_option_it_sets(grammar: dict[str, iptunnel.Handler]) -> None:
    words = {name: set(options.words_of(name)) for name in [*options.BY_NAME, *options.ALIAS_BY_NAME]}
    for word, handler in grammar.items():
        for key in _keys_set_by(handler) - set(iptunnel.EXTRA_KEYS):
            setters = {key} | {a.name for a in options.ALIASES if key in a.sets}
            assert any(word in words[name] for name in setters), f"{word!r} sets {key}, whose table has no such word"


def test_every_word_of_the_table_is_a_word_of_ip_tunnel() -> None:
    """The other way round: a word the table gives an option is a keyword of one of the grammars (or of the
    prl and 6rd commands, whose usage names them)."""
    keywords = {*iptunnel._WORDS4, *iptunnel._WORDS6, *iptunnel._PRL_WORDS, "name", "dsfield"}  # dsfield: by prefix
    assert iptunnel.parse(["add", "t0", "mode", "gre", "dsfield", "10"]).table["tos"] == 0x10
    for name in [*options.BY_NAME, *options.ALIAS_BY_NAME]:
        for word in options.words_of(name):
            assert word in keywords or f"[ {word} ADDR ]" in iptunnel.HELP, (name, word)


def test_the_gre_words_are_the_tables_gre_options() -> None:
    gre = [word for name in options.GRE_GROUP.members for word in options.words_of(name)]
    assert list(iptunnel._GRE_WORDS) == gre == ["key", "ikey", "okey", "seq", "iseq", "oseq", "csum", "icsum", "ocsum"]


# --- one predicate, three front ends ---------------------------------------------------------------------------

KEYS = """
[out]
spi = 0x1001
aead = "rfc4106(gcm(aes))"
key = "0x{key}"
icv = 128
[in]
spi = 0x1002
aead = "rfc4106(gcm(aes))"
key = "0x{key}"
icv = 128
""".format(key="11" * 20)

# For each option that only some modes take: a value other than its default, as `up` flags, as a file's
# keys, and as `ip tunnel` words (None: ip tunnel sets it with another command, or not at all).
SAMPLES: dict[str, tuple[list[str], dict[str, Any], list[str] | None]] = {
    "ikey": (["--ikey", "5"], {"ikey": 5}, ["ikey", "5"]),
    "okey": (["--okey", "5"], {"okey": 5}, ["okey", "5"]),
    "iseq": (["--iseq"], {"iseq": True}, ["iseq"]),
    "oseq": (["--oseq"], {"oseq": True}, ["oseq"]),
    "icsum": (["--icsum"], {"icsum": True}, ["icsum"]),
    "ocsum": (["--ocsum"], {"ocsum": True}, ["ocsum"]),
    "ttl": (["--ttl", "30"], {"ttl": 30}, ["ttl", "30"]),
    "tos": (["--tos", "10"], {"tos": 16}, ["tos", "10"]),
    "pmtudisc": (["--nopmtudisc"], {"pmtudisc": False}, ["nopmtudisc"]),
    "encaplimit": (["--encaplimit", "3"], {"encaplimit": 3}, ["encaplimit", "3"]),
    "flowlabel": (["--flowlabel", "5"], {"flowlabel": 5}, ["flowlabel", "5"]),
    "6rd_prefix": (["--6rd-prefix", "2001:db8::/32"], {"6rd_prefix": "2001:db8::/32"}, None),
    "6rd_relay_prefix": (
        ["--6rd-prefix", "2001:db8::/32", "--6rd-relay-prefix", "198.51.100.0/24"],
        {"6rd_prefix": "2001:db8::/32", "6rd_relay_prefix": "198.51.100.0/24"},
        None,
    ),
    "prl": (["--prl", "192.0.2.1"], {"prl": ["192.0.2.1"]}, None),
    "keepalive": (["--keepalive", "10"], {"keepalive": 10}, None),
    "seq_policy": (["--iseq", "--seq-policy", "resync"], {"iseq": True, "seq_policy": "resync"}, None),
    "csum_verify": (["--icsum", "--csum-verify", "derived"], {"icsum": True, "csum_verify": "derived"}, None),
    "spokes": (["--spoke", "1001=203.0.113.16/28"], {"spokes": ["1001=203.0.113.16/28"]}, None),
    # core.params refuses these (CORE_PLACES); {keys} is the path of a key file
    "encap": (
        ["--encap", "fou", "--encap-dport", "5555"],
        {"encap": "fou", "encap_dport": 5555},
        ["encap", "fou", "encap-dport", "5555"],
    ),
    "esp_keys": (["--esp-keys", "{keys}"], {"esp_keys": "{keys}"}, None),
}


def test_every_option_of_some_modes_has_a_sample() -> None:
    assert set(SAMPLES) == {o.name for o in options.OPTIONS if o.place is not None}


def _ends(mode: Mode) -> tuple[str, str | None]:
    """local and remote for a mode: of its outer family; isatap has no fixed remote."""
    spec = mode.value
    local, remote = ("2001:db8::1", "2001:db8::2") if spec.outer == 6 else ("198.51.100.1", "198.51.100.2")
    return local, None if spec.isatap else remote


def _up(mode: Mode, keys: str, extra: list[str]) -> TunnelParams:
    local, remote = _ends(mode)
    argv = ["up", "--mode", mode.value.name, "--local", local, "--remote", remote or "any"]
    argv += ["--esp-keys", keys] if mode.value.esp else []
    return cli.params_from_args(cli.build_parser().parse_args(argv + extra))


def _file(mode: Mode, keys: str, extra: dict[str, Any]) -> list[str]:
    local, remote = _ends(mode)
    table: dict[str, Any] = {"mode": mode.value.name, "local": local, **extra}
    table.update({"remote": remote} if remote else {})
    table.update({"esp_keys": keys} if mode.value.esp else {})
    return [str(e) for e in config.check_tunnel("t0", table)[1]]


def _ip_tunnel(mode: Mode, keys: str, words: list[str]) -> list[str]:
    """What `usertunnel tunnel add` refuses: in the grammar, or (as the daemon) in the file's checks."""
    local, remote = _ends(mode)
    argv = ["add", "t0", "mode", mode.value.name, "local", local, *(["remote", remote] if remote else []), *words]
    try:
        command = iptunnel.parse(argv, ipv6=mode.value.outer == 6)
    except iptunnel.IpTunnelError as exc:
        return [str(exc)]
    table = {**command.table, **({"esp_keys": keys} if mode.value.esp else {})}
    return [str(e) for e in config.check_tunnel("t0", table)[1]]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("esp") / "keys.toml"
    path.write_text(KEYS)
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value.name for m in Mode])
def test_each_mode_runs_with_no_option_from_every_front(mode: Mode, keys: str) -> None:
    """The control for the property below: each mode's bare tunnel is accepted by up, the file and ip tunnel."""
    _up(mode, keys, [])
    assert _file(mode, keys, {}) == []
    assert _ip_tunnel(mode, keys, []) == []


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value.name for m in Mode])
def test_a_mode_refuses_exactly_the_options_the_table_says_it_has_no_use_for(mode: Mode, keys: str) -> None:
    """For every mode and option: where the table's predicate says no, up refuses it, the file refuses it
    as misplaced (naming what the table says the option is), and ip tunnel refuses it; where it says yes,
    the file does not call it misplaced."""
    for name, (flags, file_keys, words) in SAMPLES.items():
        option = options.option(name)
        assert option.place is not None
        if option.place in options.CORE_PLACES:
            continue  # the test below
        misplaced = f"{name}: is {option.place.what}, for mode "
        refusals = _file(mode, keys, file_keys)
        if option.takes(mode.value):
            assert not any(misplaced in r for r in refusals), (mode, name, refusals)
            continue
        with pytest.raises(ConfigError):
            _up(mode, keys, flags)
        assert any(misplaced in r for r in refusals), (mode, name, refusals)
        if words is not None:
            assert _ip_tunnel(mode, keys, words), (mode, name)


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value.name for m in Mode])
def test_an_option_core_refuses_for_a_mode_is_refused_in_one_sentence_by_every_front(mode: Mode, keys: str) -> None:
    """The places core.params refuses (FOU/GUE, ESP's outer header): for every mode, `up` and the file give
    the same answer (both accept, or both refuse in the same sentence); where the table says the mode has no
    use for the option they refuse it, and so does `ip tunnel` (in that sentence where its grammar has the
    words, through the daemon's file checks)."""
    for place in options.CORE_PLACES:
        for option in options.placed(place):
            flags, file_keys, words = SAMPLES[option.name]
            flags = [keys if flag == "{keys}" else flag for flag in flags]
            file_keys = {k: keys if v == "{keys}" else v for k, v in file_keys.items()}
            try:
                _up(mode, keys, flags)
                from_up = None
            except ConfigError as exc:
                from_up = str(exc)
            assert _file(mode, keys, file_keys) == ([] if from_up is None else [from_up]), (mode, option.name)
            if option.takes(mode.value):
                continue
            assert from_up is not None, (mode, option.name)
            if words is not None:
                from_ip = _ip_tunnel(mode, keys, words)
                assert from_ip and (from_ip == [from_up] or mode.value.outer == 6), (mode, option.name, from_ip)


def test_the_predicates_are_the_modes_each_option_is_documented_for() -> None:
    """Pinned: which modes take what (a change to the table shows here, and in the refusals above)."""
    takes = {
        name: {m.value.name for m in Mode if options.takes(name, m.value)}
        for name in ("key", "seq", "ttl", "encaplimit", "6rd_prefix", "prl", "keepalive", "encap", "esp_keys")
    }
    assert takes == {
        "key": {"gre", "ip6gre", "gretap", "ip6gretap", "vti", "vti6"},
        "seq": {"gre", "ip6gre", "gretap", "ip6gretap"},
        "ttl": {m.value.name for m in Mode} - {"vti", "vti6"},
        "encaplimit": {"ipip6", "ip6ip6", "ip6gre", "ip6gretap"},
        "6rd_prefix": {"sit"},
        "prl": {"isatap"},
        "keepalive": {"gre"},
        "encap": {m.value.name for m in Mode} - {"gretap", "ip6gretap", "isatap"},
        "esp_keys": {"gre", "ipip", "sit", "isatap", "gretap", "vti", "vti6"},
    }


# --- show -j ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.GRE, Mode.IP6GRE], ids=["gre", "ip6gre"])
def test_show_json_fields_of_the_options_come_from_the_table(mode: Mode) -> None:
    local, remote = _ends(mode)
    params = TunnelParams(
        "t0", mode, ipaddress.ip_address(local).packed, ipaddress.ip_address(remote or "::").packed, ikey=7
    )
    shown = control.snapshot_of(params, Counters(), Counters(), 1400, 1)
    fields = list(shown)
    start = fields.index("dev") + 1
    expected = list(options.SHOWN_AS_IS) + (list(options.SHOWN_OUTER6) if mode.value.outer == 6 else [])
    assert fields[start : start + len(expected)] == expected
    assert all(shown[name] == getattr(params, name) for name in expected)
    assert all(options.option(name).show == name for name in expected)


# --- the table's own rules -------------------------------------------------------------------------------------


def test_the_table_imports_only_core() -> None:
    """core/options.py is sans-I/O: besides the standard library's typing and dataclasses, only core."""
    allowed = {"__future__", "collections.abc", "dataclasses", "typing"}
    for node in ast.walk(ast.parse(Path(options.__file__).read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1 or node.module in allowed, node.module
        assert not isinstance(node, ast.Import), "no plain imports: nothing outside core"
