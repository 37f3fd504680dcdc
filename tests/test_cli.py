"""The command line: every bad argument is one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import require_netns

from usertunnel.cli import build_parser, params_from_args
from usertunnel.core.params import Mode


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "usertunnel", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["up", "--remote", "198.51.100"], "invalid remote address"),
        (["up", "--remote", "198.51.100.2", "--local", "198.51.100.300"], "invalid local address"),
        (["up", "--remote", "198.51.100.2", "--local", "no host"], "invalid local address"),
        (["up", "--remote", "2001:db8::2"], "runs over IPv4: remote must be an IPv4 address"),
        (["up", "--remote", "198.51.100.2", "--key", "4294967296"], 'invalid key "4294967296"'),
        (["up", "--remote", "198.51.100.2", "--key", "-1"], "invalid key"),
        (["up", "--remote", "198.51.100.2", "--mode", "vxlan"], "unknown mode 'vxlan'; accepted: gre, ipip"),
        (["up", "--remote", "198.51.100.2", "--ttl", "256"], 'invalid ttl "256"'),
        (["up", "--remote", "198.51.100.2", "--tos", "zz"], 'invalid tos "zz"'),
        (["up", "--remote", "198.51.100.2", "--ttl", "64", "--nopmtudisc"], "ttl != 0 and nopmtudisc are incompatible"),
        (["up", "--remote", "198.51.100.2", "--mode", "ipip", "--key", "1"], "GRE options"),
        (["up", "--remote", "198.51.100.2", "--key", "1", "--ikey", "2"], "--key sets both keys"),
        (["up", "--remote", "198.51.100.2", "--mode", "ipip", "--address", "2001:db8::1/64"], "cannot carry"),
        (["up", "--remote", "198.51.100.2", "--address", "203.0.113.1/33"], "invalid address"),
        (["up", "--remote", "198.51.100.2", "--name", "a-name-far-too-long"], "invalid interface name"),
        (["up", "--remote", "198.51.100.2", "--mtu", "big"], "invalid mtu"),
        (["up", "--mode", "ip6gre", "--remote", "198.51.100.2"], "runs over IPv6: remote must be an IPv6 address"),
        (["up", "--remote", "198.51.100.2", "--encaplimit", "2"], "belong to IPv6 outer headers"),
        (["up", "--mode", "ip6ip6", "--remote", "2001:db8:1::2", "--encaplimit", "256"], 'invalid encaplimit "256"'),
        (["up", "--mode", "ip6ip6", "--remote", "2001:db8:1::2", "--flowlabel", "fffff1"], "invalid flowlabel"),
        (["up", "--mode", "isatap", "--remote", "any", "--prl", "2001:db8::1"], "a potential router is an IPv4"),
        (["up", "--mode", "gre", "--remote", "198.51.100.2", "--6rd-prefix", "2001:db8::/32"], "belongs to --mode sit"),
        (
            [
                "up",
                "--mode",
                "sit",
                "--remote",
                "any",
                "--6rd-prefix",
                "2001:db8::/32",
                "--6rd-relay-prefix",
                "198.51.100.0/24x",
            ],
            "6rd",
        ),
        (["up"], "--remote"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_argument_is_one_line_exit_2_no_traceback(args: list[str], expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_help_teaches_the_options_and_their_defaults() -> None:
    result = run_cli("up", "--help")
    assert result.returncode == 0
    for words in ("RFC 2890", "inherit", "dotted quad", "pmtudisc", "overhead", "examples:"):
        assert words in result.stdout


def test_key_in_both_forms_and_split_flags_build_the_same_params() -> None:
    parser = build_parser()
    a = params_from_args(parser.parse_args(["up", "--remote", "198.51.100.2", "--key", "1234", "--seq", "--csum"]))
    b = params_from_args(
        parser.parse_args(
            [
                "up",
                "--remote",
                "198.51.100.2",
                "--ikey",
                "0.0.4.210",
                "--okey",
                "1234",
                "--iseq",
                "--oseq",
                "--icsum",
                "--ocsum",
            ]
        )
    )
    assert a.mode is Mode.GRE
    assert (a.ikey, a.okey, a.iseq, a.oseq, a.icsum, a.ocsum) == (1234, 1234, True, True, True, True)
    assert (a.ikey, a.okey, a.iseq, a.oseq, a.icsum, a.ocsum) == (b.ikey, b.okey, b.iseq, b.oseq, b.icsum, b.ocsum)


def test_ipv6_outer_defaults_are_iproute2_defaults() -> None:
    p = params_from_args(build_parser().parse_args(["up", "--mode", "ip6gre", "--remote", "2001:db8:1::2"]))
    assert p.ttl == 64 and p.encaplimit == 4 and p.flowlabel == 0 and p.tos == 0
    assert p.header_length == 40 + 8 + 4
    q = params_from_args(
        build_parser().parse_args(
            [
                "up",
                "--mode",
                "ip6ip6",
                "--remote",
                "2001:db8:1::2",
                "--hoplimit",
                "inherit",
                "--encaplimit",
                "none",
                "--flowlabel",
                "inherit",
                "--tclass",
                "inherit",
            ]  # fmt: skip
        )
    )
    assert (q.ttl, q.encaplimit, q.flowlabel, q.tos) == (None, None, None, None)


@pytest.mark.netns
def test_an_ipv6_tunnel_below_1280_bytes_is_refused_with_the_figure_to_use() -> None:
    require_netns()
    from usertunnel.io import netns

    name = f"ut-cli-{os.getpid() % 100000}"
    netns.create(name)
    try:
        done = netns.run(name, [sys.executable, "-m", "usertunnel", "up", "--mode", "ip6ip6", "--local", "::1",
                                "--remote", "2001:db8::2", "--mtu", "1200"], timeout=30)  # fmt: skip
        err = done.stderr.decode()
        assert done.returncode == 2 and "below IPv6's minimum of 1280" in err and "--mtu 1280" in err, err
    finally:
        netns.remove(name)


def test_defaults_are_linux_defaults() -> None:
    p = params_from_args(build_parser().parse_args(["up", "--remote", "198.51.100.2"]))
    assert p.ttl is None  # inherit
    assert p.tos == 0
    assert p.pmtudisc is True
    assert p.ikey is None and p.okey is None
