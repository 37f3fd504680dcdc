"""Issue 18 (a newcomer's first hour), the daemon's part: every mistake of a configuration file at once,
`usertunnel reload` logged and exiting as documented, JSON without IPv6-only fields on IPv4 tunnels, and no
control directory left behind in a namespace nobody uses any more."""

from __future__ import annotations

import pytest

from usertunnel.config import ConfigFileError, check_tunnel, parse_config, tunnel_from_table
from usertunnel.core.params import ConfigError


def refusal(text: str) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, "t.toml")
    return caught.value


def reasons(error: ConfigFileError) -> list[tuple[int, str]]:
    return [(p.line, p.reason) for p in error.problems]


# --- item 4: an unknown key hides nothing ------------------------------------------------------------------------


def test_an_unknown_key_and_a_bad_value_of_the_same_tunnel_are_both_reported() -> None:
    error = refusal('[tunnel.gre1]\nmode = "gre"\nremote = "198.51.100.2"\nkeepalives = "10"\nttl = 300\n')
    assert [line for line, _ in reasons(error)] == [4, 5], str(error)
    assert "unknown key 'keepalives' (did you mean 'keepalive'?)" in error.problems[0].reason
    assert error.problems[1].reason == 'tunnel gre1: ttl: invalid ttl "300": a number 1..255 or "inherit"'


def test_an_unknown_key_does_not_hide_a_mistake_between_settings() -> None:
    error = refusal('[tunnel.gre1]\nmode = "gre"\nkeepalive = 10\ncolour = "blue"\n')
    assert [line for line, _ in reasons(error)] == [3, 4], str(error)
    assert "keepalives go to the remote and come back to local" in error.problems[0].reason
    assert "unknown key 'colour'" in error.problems[1].reason


def test_every_bad_value_type_and_list_element_of_a_tunnel_is_reported_once() -> None:
    text = (
        "[tunnel.gre-far-too-long]\n"  # 1: the name
        'mode = "gre"\n'
        'tos = "zz"\n'  # 3
        'key = "nine"\n'  # 4: an alias of two settings, said once
        "seq = 1\n"  # 5: the wrong type, said once too
        'addresses = ["x", "203.0.113.1/30", "y"]\n'  # 6: two bad elements
        "ikey = 2\n"  # 7: with key
        "colour = 1\n"  # 8
    )
    error = refusal(text)
    lines = [line for line, _ in reasons(error)]
    assert lines == [1, 3, 4, 5, 6, 6, 7, 8], str(error)
    text_of = [reason for _, reason in reasons(error)]
    assert "invalid tunnel name 'gre-far-too-long'" in text_of[0]
    assert "tos: invalid tos" in text_of[1]
    assert "key: invalid key" in text_of[2]
    assert "seq: expected true or false, got 1" in text_of[3]
    assert "'x'" in text_of[4] and "'y'" in text_of[5]
    assert "key sets both ikey and okey" in text_of[6]
    assert "unknown key 'colour'" in text_of[7]


def test_a_missing_mode_and_a_bad_value_are_both_reported() -> None:
    error = refusal('[tunnel.a]\nlocal = "198.51.100.1"\nttl = 300\n')
    assert [line for line, _ in reasons(error)] == [1, 3], str(error)
    assert "mode: missing" in error.problems[0].reason


def test_every_key_a_mode_has_no_use_for_is_named() -> None:
    error = refusal('[tunnel.a]\nmode = "ipip"\nremote = "198.51.100.2"\nseq = true\ncsum = true\nkey = 3\n')
    assert [line for line, _ in reasons(error)] == [4, 5, 6], str(error)
    assert all("is a GRE option" in reason for _, reason in reasons(error))


def test_a_wrong_value_does_not_bring_its_consequences_along() -> None:
    """pmtudisc = false needs ttl inherit; with ttl itself wrong, only ttl is reported (not 'ttl is 64')."""
    error = refusal('[tunnel.a]\nmode = "ip6ip6"\nremote = "2001:db8::2"\nttl = "x"\npmtudisc = false\n')
    assert [line for line, _ in reasons(error)] == [4], str(error)


def test_tunnel_from_table_still_raises_the_first_mistake_and_check_tunnel_lists_them_all() -> None:
    table = {"mode": "gre", "remote": "198.51.100.2", "colour": 1, "ttl": 300}
    config, errors = check_tunnel("gre1", table)
    assert config is None and [e.key for e in errors] == ["colour", "ttl"]
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        tunnel_from_table("gre1", table)
    config, errors = check_tunnel("gre1", {"mode": "gre", "remote": "198.51.100.2"})
    assert config is not None and errors == []
