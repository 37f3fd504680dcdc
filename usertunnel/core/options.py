"""The tunnel options: each described once, and every front end's own vocabulary derived from here.

Rules for this file: data and small pure helpers only. It is sans-I/O and
imports nothing outside core; core.params imports it (so the modes are seen
through `ModeFacts`, the facts of core.params.ModeSpec, and never imported).

Theory of operation. `OPTIONS` lists every setting of one tunnel, in the
configuration file's canonical order; `ALIASES` the spellings that set others
(`key` sets ikey and okey, `hoplimit` sets ttl). Each `Option` says:

  name     the canonical name: the TOML key, and TunnelParams' field where it has one
  place    which modes take it (`Place`: a predicate over the mode's facts, and what
           the option is, in a refusal's words); None: every mode
  parse    the parser of its text (core.values & co); None: a flag, or a front's own
           (the mode table, a host name resolver, a file reader live above core)
  default  the value when it is not given (`BY_MODE`: the mode decides)
  toml     the TOML types a file may give and what its error says is accepted
  flags    `usertunnel up`'s argparse options for it, with their help
  words    the `ip tunnel` / `ip -6 tunnel` words that set it
  show     its field in `usertunnel show -j` / `stats -j`

From it: cli.py adds `up`'s tunnel options group by group (`UP_GROUPS`) and
refuses the IPv6-outer, vti and 6rd options by their places; front/config.py
takes its keys, aliases, per-key converters and the "belongs to mode"
refusals (`PLACES`, in the file's own words); core/params.py asks `takes`
before it refuses an option for a mode (`CORE_PLACES` only there, so one
sentence from every front); front/iptunnel.py derives its GRE and prl words
and its "Keys are not allowed" check; run/control.py names the plain show -j
fields (`SHOWN_AS_IS`, `SHOWN_OUTER6`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError
from .fou import GRE_IN_UDP_PORT
from .ipv6 import DEFAULT_ENCAP_LIMIT
from .keepalive import parse_keepalive
from .neighbors import parse_neighbor, parse_spoke, parse_timeout
from .sequence import SeqPolicy, parse_seq_policy
from .sit import PrlEntry
from .values import (
    parse_encap,
    parse_encaplimit,
    parse_flowlabel,
    parse_interface,
    parse_key,
    parse_port,
    parse_sport,
    parse_tos,
    parse_ttl,
)

Parse = Callable[[str], object]


class ModeFacts(Protocol):
    """What a mode is, as core.params.ModeSpec says it (a protocol: core.params imports this module)."""

    @property
    def name(self) -> str: ...
    @property
    def ip_protocol(self) -> int: ...
    @property
    def outer(self) -> int: ...
    @property
    def is_gre(self) -> bool: ...
    @property
    def isatap(self) -> bool: ...
    @property
    def ethernet(self) -> bool: ...
    @property
    def esp(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Place:
    """The modes an option means something for, and what the option is (a refusal says it)."""

    what: str
    takes: Callable[[ModeFacts], bool]


GRE = Place("a GRE option", lambda m: m.is_gre)
KEYED = Place("a GRE option (on vti, the key that selects its security associations)", lambda m: m.is_gre or m.esp)
OUTER = Place("an outer header setting (vti's are xfrm's)", lambda m: not m.esp)
IPV6_OUTER = Place("an IPv6 outer header's option", lambda m: m.outer == 6 and not m.esp)
SIX_RD = Place("a 6rd setting", lambda m: m.ip_protocol == 41 and m.outer == 4 and not m.isatap)
ISATAP = Place("an ISATAP potential router list", lambda m: m.isatap)
KEEPALIVE = Place("a keepalive (GRE over IPv4)", lambda m: m.is_gre and m.outer == 4 and not m.ethernet)
# Every place the fronts refuse in their own words, in the order a configuration file's misplaced keys are
# found (and so reported).
PLACES = (GRE, KEYED, OUTER, IPV6_OUTER, SIX_RD, ISATAP, KEEPALIVE)
# Places core.params alone refuses, in one sentence whichever front the option came from (`up`, the file,
# `ip tunnel` through the daemon): what this version carries in UDP, and ESP's outer headers.
IN_UDP = Place("FOU or GUE encapsulation", lambda m: not m.ethernet and not m.isatap)
ESP_OUTER = Place("ESP with manual keys (over IPv4, or vti6)", lambda m: m.outer == 4 or m.esp)
CORE_PLACES = (IN_UDP, ESP_OUTER)


class _Marker:
    """A default that is no value: `NOT_GIVEN`, `BY_MODE`, `UNSET`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NOT_GIVEN = _Marker("NOT_GIVEN")  # an `up` flag not given, where the mode decides what that means
BY_MODE = _Marker("BY_MODE")  # an option's default is the mode's (ttl: inherit over IPv4, 64 over IPv6)
UNSET = _Marker("UNSET")  # a Flag field left to argparse


@dataclass(frozen=True, slots=True)
class Flag:
    """One `usertunnel up` option, in the words of argparse's add_argument (UNSET/None: argparse's own; the
    help is argparse's text, `%` doubled)."""

    names: tuple[str, ...]
    help: str
    metavar: str | None = None
    action: str | None = None  # None: store the value, converted by the option's parser
    dest: str | None = None
    default: object = UNSET
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TomlKey:
    """A configuration file key: the TOML types it takes (a bool is never an integer; list: of strings), what
    its error says is accepted, and how its value is read (a string as the command line reads it; an integer
    as its decimal text, or with `hex_max` as the number it is, up to hex_max)."""

    types: tuple[type, ...]
    expect: str
    hex_max: int | None = None
    alone: bool = True  # checked on its own before the build (not mtu, whose bounds depend on the mode)


@dataclass(frozen=True, slots=True)
class Option:
    """One tunnel option (see the module docstring)."""

    name: str
    toml: TomlKey | None
    place: Place | None = None
    parse: Parse | None = None
    default: object = None
    flags: tuple[Flag, ...] = ()
    words: tuple[str, ...] = ()
    show: str | None = None
    exclusive: bool = False  # its flags are mutually exclusive (--pmtudisc, --nopmtudisc)

    def takes(self, mode: ModeFacts) -> bool:
        """Whether `mode` has this option (every mode, without a place)."""
        return self.place is None or self.place.takes(mode)


@dataclass(frozen=True, slots=True)
class Alias:
    """A spelling that sets other options (`key`: ikey and okey), as iproute2 has them."""

    name: str
    sets: tuple[str, ...]
    flags: tuple[Flag, ...] = ()
    words: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Group:
    """A section of `usertunnel up --help`: its title, what it says, and its options and aliases in order."""

    title: str
    description: str | None
    members: tuple[str, ...]


CSUM_VERIFY = ("full", "derived")


def parse_mtu(text: str) -> int:
    """`--mtu N`: a number of bytes (its bounds depend on the mode: checked when the tunnel is built)."""
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigError(f"invalid mtu {text!r}: a number of bytes such as 1476") from None


def parse_dport(text: str) -> int:
    """`--encap-dport PORT`."""
    return parse_port(text, "encap-dport")


_ADDRESS = 'an address such as "198.51.100.1" or "2001:db8::1", or "any"'
_GRE_KEY = 'an integer 0..4294967295 or a dotted quad such as "0.0.4.210"'
_BOOL = "true or false"
_STRINGS = "an array of strings such as "


def _bool(expect: str = _BOOL) -> TomlKey:
    return TomlKey((bool,), expect)


def _key(name: str, help: str) -> Option:
    """ikey or okey: a GRE key (on vti, the key that selects the security associations)."""
    toml = TomlKey((int, str), _GRE_KEY)
    flag = Flag((f"--{name}",), help, metavar="KEY")
    return Option(name, toml, KEYED, parse_key, flags=(flag,), words=(name,), show=name)


def _gre_flag(name: str, help: str) -> Option:
    """iseq, oseq, icsum or ocsum: a GRE flag, off by default."""
    flag = Flag((f"--{name}",), help, action="store_true")
    return Option(name, _bool(), GRE, default=False, flags=(flag,), words=(name,), show=name)


OPTIONS: tuple[Option, ...] = (
    Option(
        "mode",
        TomlKey((str,), ""),  # what is accepted: core.params.Mode's names, which front/config.py spells
        default="gre",
        flags=(
            Flag(
                ("--mode",),
                "over IPv4: gre (default; carries IPv4 and IPv6), ipip (IPv4 in IPv4), sit (IPv6 in IPv4), "
                "isatap (sit with RFC 5214's rules); over IPv6: ipip6 (IPv4 in IPv6), ip6ip6 (IPv6 in IPv6), "
                "ip6gre (GRE over IPv6); gretap (Ethernet frames over GRE, through a TAP device: one L2 segment "
                "across the tunnel) and ip6gretap (the same over IPv6); vti (IPv4 in IPsec ESP tunnel mode, as "
                "Linux's ip_vti: needs --esp-keys) and vti6 (IPv6 in ESP over IPv6, Linux's ip6_vti). --local and "
                "--remote are of the outer family",
                metavar="MODE",
                default="gre",
            ),
        ),
        words=("mode",),
        show="mode",
    ),
    Option(
        "local",
        TomlKey((str,), _ADDRESS),
        flags=(
            Flag(
                ("--local",),
                "our outer address (or a host name, resolved once at start): the source of what we send, the "
                "destination of what we accept; it must be an address of this host (default: any address of this "
                "host)",
                metavar="ADDR|NAME",
            ),
        ),
        words=("local",),
        show="local",
    ),
    Option(
        "remote",
        TomlKey((str,), _ADDRESS),
        flags=(
            Flag(
                ("--remote",),
                "the peer's outer address (or a host name, resolved once at start): where we send, and the only "
                "sender we accept; 'any' makes a "
                "point-to-multipoint hub (gre, ipip: see below), or with sit derives each IPv4 destination from "
                "the IPv6 one (6to4, 6rd; isatap always)",
                metavar="ADDR|NAME|any",
                default=NOT_GIVEN,  # None is `any`
            ),
        ),
        words=("remote",),
        show="remote",
    ),
    _key("ikey", "key required on received packets"),
    _key("okey", "key put on sent packets"),
    _gre_flag(
        "iseq", "require sequence numbers and drop packets not newer than the last accepted (reordered or replayed)"
    ),
    _gre_flag("oseq", "number sent packets 0, 1, 2, ... (as Linux does)"),
    _gre_flag("icsum", "require a GRE checksum (one present is always verified)"),
    _gre_flag("ocsum", "send a checksum over the GRE header and inner packet"),
    Option(
        "ttl",
        TomlKey((int, str), 'an integer 1..255 or "inherit"'),
        OUTER,
        parse_ttl,
        BY_MODE,
        flags=(
            Flag(
                ("--ttl", "--hoplimit"),
                "outer TTL (IPv6: hop limit); inherit copies the inner TTL or hop limit. Default as in Linux: "
                "inherit over IPv4, 64 over IPv6",
                metavar="1..255|inherit",
                default=NOT_GIVEN,
            ),
        ),
        words=("ttl", "hoplimit", "hlim"),
        show="ttl",
    ),
    Option(
        "tos",
        TomlKey((int, str), 'an integer 0..255, a hex string such as "0x10", or "inherit"', hex_max=0xFF),
        OUTER,
        parse_tos,
        0,
        flags=(
            Flag(
                ("--tos", "--tclass"),
                "outer TOS (IPv6: traffic class) in hex (default 00); inherit copies the inner DSCP. ECN always "
                "follows RFC 6040: the inner ECN field is copied, CE sent as ECT(0)",
                metavar="00..ff|inherit",
                default=0,
            ),
        ),
        words=("tos", "tclass", "tc", "dsfield"),
        show="tos",
    ),
    Option(
        "pmtudisc",
        _bool(),
        OUTER,
        default=True,
        flags=(
            Flag(
                ("--pmtudisc",),
                "always set DF on the outer header (the default)",
                action="store_true",
                dest="pmtudisc",
                default=True,
            ),
            Flag(
                ("--nopmtudisc",),
                "copy DF from the inner IPv4 header instead (not with a fixed --ttl, as in iproute2)",
                action="store_false",
                dest="pmtudisc",
            ),
        ),
        words=("pmtudisc", "nopmtudisc"),
        show="pmtudisc",
        exclusive=True,
    ),
    Option(
        "dev",
        TomlKey((str,), 'a device name such as "eth0"'),
        flags=(
            Flag(
                ("--dev",),
                "send through this device only; its MTU sets the default MTU",
                metavar="PHYS_DEV",
            ),
        ),
        words=("dev",),
        show="dev",
    ),
    Option(
        "mtu",
        TomlKey((int,), "an integer number of bytes such as 1476", alone=False),
        parse=parse_mtu,
        default=BY_MODE,
        flags=(
            Flag(
                ("--mtu",),
                "default: the underlay MTU minus the overhead (outer IPv4 20, or IPv6 40 + 8 for the encapsulation "
                "limit option; GRE 4 + 4 per key/seq/csum; gretap's Ethernet header 14)",
                metavar="N",
            ),
        ),
        show="mtu",
    ),
    Option(
        "encaplimit",
        TomlKey((int, str), 'an integer 0..255 or "none"'),
        IPV6_OUTER,
        parse_encaplimit,
        DEFAULT_ENCAP_LIMIT,
        flags=(
            Flag(
                ("--encaplimit",),
                "IPv6 outer only: the RFC 2473 tunnel encapsulation limit sent in a destination option "
                "(default 4, as Linux; none: no option, 8 bytes less per packet)",
                metavar="0..255|none",
                default=NOT_GIVEN,
            ),
        ),
        words=("encaplimit",),
        show="encaplimit",
    ),
    Option(
        "flowlabel",
        TomlKey((int, str), 'an integer 0..0xfffff, a hex string such as "0x12345", or "inherit"', hex_max=0xFFFFF),
        IPV6_OUTER,
        parse_flowlabel,
        0,
        flags=(
            Flag(
                ("--flowlabel",),
                "IPv6 outer only: the flow label in hex (default 0, which becomes a hash of the inner flow, as "
                "Linux's auto_flowlabels); inherit copies an IPv6 inner packet's label",
                metavar="0..fffff|inherit",
                default=NOT_GIVEN,
            ),
        ),
        words=("flowlabel", "fl"),
        show="flowlabel",
    ),
    Option(
        "6rd_prefix",
        TomlKey((str,), 'an IPv6 prefix such as "2001:db8::/32"', alone=False),
        SIX_RD,
        flags=(Flag(("--6rd-prefix",), "e.g. 2001:db8::/32", metavar="PREFIX", dest="sixrd_prefix"),),
        words=("6rd-prefix",),
        show="sixrd",
    ),
    Option(
        "6rd_relay_prefix",
        TomlKey((str,), 'an IPv4 prefix such as "198.51.100.0/24"', alone=False),
        SIX_RD,
        default="0.0.0.0/0",
        flags=(
            Flag(
                ("--6rd-relay-prefix",),
                "the IPv4 bits common to all 6rd relays, e.g. 198.51.100.0/24 (default 0.0.0.0/0)",
                metavar="PREFIX",
                dest="sixrd_relay_prefix",
                default="0.0.0.0/0",
            ),
        ),
        words=("6rd-relay_prefix",),
        show="sixrd",
    ),
    Option(
        "prl",
        TomlKey((list,), _STRINGS + '["192.0.2.1", "192.0.2.2=nodefault"]'),
        ISATAP,
        PrlEntry.from_text,
        (),
        flags=(
            Flag(
                ("--prl",),
                "an ISATAP potential router (repeatable; default: a default router)",
                metavar="ADDR[=default|nodefault]",
                action="append",
                default=[],
            ),
        ),
        words=("prl-default", "prl-nodefault", "prl-delete"),
        show="prl",
    ),
    Option(
        "keepalive",
        TomlKey((str, int, float), 'a number of seconds, or a string "PERIOD[,RETRIES]" such as "10,3"'),
        KEEPALIVE,
        parse_keepalive,
        flags=(
            Flag(
                ("--keepalive",),
                "send keepalives (Cisco's defaults: 10,3); needs --local and --remote",
                metavar="PERIOD[,RETRIES]",
            ),
        ),
        show="keepalive",
    ),
    Option(
        "reflect_keepalives",
        _bool(),
        default=True,
        flags=(
            Flag(
                ("--no-reflect-keepalives",),
                "do not send a peer's keepalives back. By default they are reflected at once, as a Cisco router "
                "does (Linux needs accept_local=1 and forwarding for it): only a packet from our local address to "
                "the configured remote carrying a bare GRE header of type 0 is reflected, so no loop can form "
                "(RFC 2784 section 3 asks decapsulators to guard against loops)",
                action="store_false",
                dest="reflect_keepalives",
                default=True,
            ),
        ),
    ),
    Option(
        "seq_policy",
        TomlKey((str,), '"kernel", "rfc2890" or "resync"'),
        GRE,
        parse_seq_policy,
        SeqPolicy.KERNEL,
        flags=(
            Flag(
                ("--seq-policy",),
                "how --iseq enforces order. kernel (default, Linux's): drop what is not newer than the last "
                "accepted. rfc2890: hold early packets in a reorder buffer (64 packets, 30 ms) and deliver in "
                "order, giving up on a gap when the timer expires (RFC 2890 section 2.2). resync: as kernel, but a "
                "peer that restarted its numbering is taken back after 8 consecutive packets or when keepalives "
                "return, where Linux drops it until its numbers catch up",
                metavar="kernel|rfc2890|resync",
                default=SeqPolicy.KERNEL,
            ),
        ),
        show="seq_policy",
    ),
    Option(
        "csum_verify",
        TomlKey((str,), '"full" or "derived"'),
        GRE,
        default="full",
        flags=(
            Flag(
                ("--csum-verify",),
                "how a received checksum is verified. full (default, Linux's): every byte is summed. derived: "
                "the GRE and inner IPv4 headers are summed and the rest is derived from the TCP/UDP headers, in "
                "O(1); damage inside a TCP/UDP segment then passes into TUN and is caught and counted by the "
                "receiving host's own TCP/UDP checksum, not by usertunnel (README: what is verified where)",
                default="full",
                choices=CSUM_VERIFY,
            ),
        ),
    ),
    Option(
        "neighbors",
        TomlKey((list,), _STRINGS + '["203.0.113.8/29=198.51.100.8"]'),
        parse=parse_neighbor,
        default=(),
        flags=(
            Flag(
                ("--neighbor",),
                "send inner destinations in PREFIX to OUTER_ADDR, e.g. 203.0.113.8/29=198.51.100.8 (repeatable)",
                metavar="PREFIX=OUTER_ADDR",
                action="append",
                default=[],
            ),
        ),
    ),
    Option(
        "spokes",
        TomlKey((list,), _STRINGS + '["1001=203.0.113.16/28"]'),
        GRE,
        parse_spoke,
        (),
        flags=(
            Flag(
                ("--spoke",),
                "a spoke with its own key: packets with KEY are accepted only from inner sources in the "
                "prefixes, which route to wherever KEY was last seen from (repeatable)",
                metavar="KEY=PREFIX[,PREFIX]",
                action="append",
                default=[],
            ),
        ),
    ),
    Option(
        "neighbor_timeout",
        TomlKey((int, float), "a number of seconds 1..604800"),
        parse=parse_timeout,
        default=300.0,
        flags=(
            Flag(
                ("--neighbor-timeout",),
                "forget a spoke silent this long (default 300); its keepalives count as traffic",
                metavar="SECONDS",
                default=300.0,
            ),
        ),
    ),
    Option(
        "addresses",
        TomlKey((list,), _STRINGS + '["203.0.113.1/30"]'),
        parse=parse_interface,
        default=(),
        flags=(
            Flag(
                ("--address",),
                "inner address to put on the device, e.g. 203.0.113.1/30 (repeatable; IPv4, IPv6 or both, as the "
                "mode carries)",
                metavar="CIDR",
                action="append",
                default=[],
            ),
        ),
    ),
    Option("routes", TomlKey((list,), _STRINGS + '["203.0.113.128/25"]'), default=()),
    Option("up", _bool(), default=True),
    Option(
        "encap",
        TomlKey((str,), '"fou", "gue" or "none"'),
        IN_UDP,
        parse_encap,
        flags=(
            Flag(
                ("--encap",),
                "carry the tunnel in UDP: fou (the port says the protocol) or gue (a 4-byte header says it); none "
                "(default): straight over IP",
                metavar="fou|gue|none",
                default=None,
            ),
        ),
        words=("encap", "noencap"),
        show="encap",
    ),
    Option(
        "encap_sport",
        TomlKey((int, str), 'a UDP port 1..65535 or "auto"'),
        parse=parse_sport,
        flags=(
            Flag(
                ("--encap-sport",),
                "the UDP source port: auto (default) spreads inner flows over a few ports, each flow keeping one "
                "(for ECMP and receive-side scaling), or a fixed PORT",
                metavar="auto|PORT",
                default=None,
            ),
        ),
        words=("encap-sport",),
        show="encap",
    ),
    Option(
        "encap_dport",
        TomlKey((int,), "a UDP port 1..65535"),
        parse=parse_dport,
        flags=(
            Flag(
                ("--encap-dport",),
                f"the UDP port the peer receives on (required with --encap; GRE-in-UDP's own is {GRE_IN_UDP_PORT}); "
                "we receive on the same number",
                metavar="PORT",
            ),
        ),
        words=("encap-dport",),
        show="encap",
    ),
    Option(
        "encap_csum",
        _bool(),
        default=BY_MODE,  # iproute2's: none over IPv4, on over IPv6
        flags=(
            Flag(
                ("--encap-csum",),
                "compute the UDP checksum (iproute2's defaults: none over IPv4, on over IPv6)",
                action="store_true",
                dest="encap_csum",
                default=None,
            ),
            Flag(
                ("--no-encap-csum",),
                "send UDP checksum 0 (over IPv6 only when asked: RFC 6935, 6936)",
                action="store_false",
                dest="encap_csum",
            ),
        ),
        words=("encap-csum", "noencap-csum"),
        show="encap",
    ),
    Option(
        "esp_keys",
        TomlKey((str,), 'the path of an ESP key file (TOML, readable by its owner only; README, "IPsec")'),
        ESP_OUTER,
        flags=(
            Flag(
                ("--esp-keys",),
                'TOML with [out] and [in], each: spi = 0x100..0xffffffff, aead = "rfc4106(gcm(aes))" or '
                '"rfc7539esp(chacha20,poly1305)", key = "0x..." (the cipher key and its 4-byte salt, as ip xfrm '
                "takes it), icv = 128; optional replay_window (default 64)",
                metavar="FILE",
            ),
        ),
        show="esp",
    ),
    Option(
        "name",
        None,
        flags=(Flag(("--name",), "device name (default: MODE%%d, e.g. gre0)", metavar="IFNAME"),),
        words=("name",),
        show="name",
    ),
)

ALIASES: tuple[Alias, ...] = (
    Alias("key", ("ikey", "okey"), (Flag(("--key",), "same key both ways (ikey and okey)", metavar="KEY"),), ("key",)),
    Alias("seq", ("iseq", "oseq"), (Flag(("--seq",), "--iseq and --oseq", action="store_true"),), ("seq",)),
    Alias("csum", ("icsum", "ocsum"), (Flag(("--csum",), "--icsum and --ocsum", action="store_true"),), ("csum",)),
    Alias("hoplimit", ("ttl",)),
    Alias("tclass", ("tos",)),
    Alias("dsfield", ("tos",)),
)

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
ALIAS_BY_NAME: dict[str, Alias] = {alias.name: alias for alias in ALIASES}


def option(name: str) -> Option:
    """The option called `name` (KeyError for a name the table does not have: a programming error)."""
    return BY_NAME[name]


def takes(name: str, mode: ModeFacts) -> bool:
    """Whether `mode` has option `name`; an alias, if the mode has every option it sets."""
    alias = ALIAS_BY_NAME.get(name)
    if alias is not None:
        return all(BY_NAME[target].takes(mode) for target in alias.sets)
    return BY_NAME[name].takes(mode)


def place_of(name: str) -> Place | None:
    """An option's place, or an alias's (that of the options it sets)."""
    alias = ALIAS_BY_NAME.get(name)
    return BY_NAME[alias.sets[0] if alias is not None else name].place


def placed(place: Place) -> tuple[Option, ...]:
    """The options of one place, in the table's order."""
    return tuple(o for o in OPTIONS if o.place is place)


def sets(name: str) -> tuple[str, ...]:
    """The options an option or alias sets: itself, or the alias's."""
    alias = ALIAS_BY_NAME.get(name)
    return alias.sets if alias is not None else (BY_NAME[name].name,)


def parse_of(name: str) -> Parse | None:
    """The parser of an option's text, or of what an alias sets."""
    return BY_NAME[sets(name)[0]].parse


def flags_of(name: str) -> tuple[Flag, ...]:
    """The `up` flags of an option or alias."""
    alias = ALIAS_BY_NAME.get(name)
    return alias.flags if alias is not None else BY_NAME[name].flags


def words_of(name: str) -> tuple[str, ...]:
    """The `ip tunnel` words of an option or alias."""
    alias = ALIAS_BY_NAME.get(name)
    return alias.words if alias is not None else BY_NAME[name].words


def flag_dest(flag: Flag) -> str:
    """The argparse attribute a flag sets: its dest, or argparse's own from its first name."""
    return flag.dest or flag.names[0].lstrip("-").replace("-", "_")


# `usertunnel up --help`'s sections of tunnel options, in order; the process options (--user, --queues,
# --trace, ...) are cli.py's own.
ENDPOINTS = Group(
    "endpoints (the outer header's addresses: IPv4 or IPv6, as the mode runs)",
    None,
    ("mode", "local", "remote", "dev"),
)
GRE_GROUP = Group(
    "GRE options (RFC 2890)",
    "KEY is a number 0..4294967295 or a dotted quad (1234 = 0.0.4.210). A tunnel with an input key "
    "accepts only packets carrying exactly that key; one without accepts only packets without a key. "
    "Each option adds 4 bytes to every packet.",
    ("key", "ikey", "okey", "seq", "iseq", "oseq", "seq_policy", "csum", "icsum", "ocsum", "csum_verify"),
)
KEEPALIVES = Group(
    "keepalives (Cisco IOS's; Linux has none)",
    "Every PERIOD seconds a GRE packet goes to the remote carrying an IPv4 packet addressed back to us; "
    "any peer that decapsulates and routes returns it. After RETRIES keepalives in a row go unanswered "
    "the line protocol goes down and the device's carrier is turned off (routes over it fail over); the "
    "first answer brings it up. Keepalives also keep a NAT's GRE mapping alive.",
    ("keepalive", "reflect_keepalives"),
)
HUB = Group(
    "point-to-multipoint hub (--remote any; Linux has none)",
    "A hub accepts packets carrying its key from any outer address and learns each spoke: the inner "
    "source address of what it sends -> its outer source address as seen here (after any NAT) and its key. "
    "Each inner packet goes to the spoke learned or configured for its destination, longest prefix first; "
    "one with no neighbor is dropped and counted (no_neighbor). A spoke needs nothing special: "
    "--remote HUB_ADDR and the key. A GRE key is no password: anyone who can send to the hub and guesses "
    "the key is accepted; per-spoke keys keep honest spokes from claiming each other's addresses.",
    ("neighbors", "spokes", "neighbor_timeout"),
)
UDP = Group(
    "FOU and GUE: the tunnel's packets in UDP (Linux's `encap fou|gue`; RFC 8086, draft-ietf-intarea-gue)",
    "Outer IPv4, UDP, then what the mode sends (a GRE header, or the inner packet itself). Through NAT, "
    "UDP works where GRE cannot, and ordinary UDP sockets need no CAP_NET_RAW. The peer receives on "
    "--encap-dport: on Linux, `ip fou add port DPORT ipproto 47|4|41` (FOU) or `ip fou add port DPORT gue`; "
    "we receive on the same port number. This version: gre, ipip and sit over IPv4, a fixed --remote.",
    ("encap", "encap_dport", "encap_sport", "encap_csum"),
)
IPSEC = Group(
    "IPsec: ESP with manual keys (RFC 4303; Linux's `ip xfrm state` and `ip xfrm policy`)",
    "ESP encrypts and authenticates every outer packet: with --mode vti, IPv4 in ESP tunnel mode (Linux's "
    "ip_vti); with any other IPv4 mode, ESP transport mode around its GRE, IPIP or SIT packet (Linux: an xfrm "
    "transport policy for that protocol). Keys come from a file readable by its owner only, never from the "
    "command line; they are never shown, logged or traced. The outer addresses stay visible, and so does "
    "each packet's SPI and ESP sequence number.",
    ("esp_keys",),
)
OUTER_HEADER = Group(
    "outer IPv4 or IPv6 header (as Linux's ip_tunnel_xmit and ip6_tnl_xmit set it)",
    None,
    ("ttl", "tos", "encaplimit", "flowlabel", "pmtudisc"),
)
SIT_GROUP = Group(
    "sit without a fixed remote (`ip tunnel 6rd`, `ip tunnel prl`)",
    "With --mode sit --remote any the IPv4 destination of each packet is read from its IPv6 destination: "
    "6to4 (RFC 3056: 2002:V4ADDR::/48) by default, or 6rd (RFC 5969) with --6rd-prefix. --mode isatap "
    "(RFC 5214) sends to the IPv4 address in an ISATAP interface identifier (::5efe:a.b.c.d) and the rest "
    "to a default router of the potential router list. Received packets whose IPv6 addresses do not match "
    "the IPv4 ones are dropped (sit_spoofed), as Linux's sit does.",
    ("6rd_prefix", "6rd_relay_prefix", "prl"),
)
DEVICE = Group("the TUN device", None, ("name", "mtu", "addresses"))
UP_GROUPS = (ENDPOINTS, GRE_GROUP, KEEPALIVES, HUB, UDP, IPSEC, OUTER_HEADER, SIT_GROUP, DEVICE)

# The fields of `show -j` that are a TunnelParams field as it is, in show's order (run/control.py), and those
# shown only for tunnels over IPv6 (an IPv4 header has neither: no field rather than a value meaning nothing).
SHOWN_AS_IS = ("ikey", "okey", "iseq", "oseq", "icsum", "ocsum", "ttl", "tos", "pmtudisc")
SHOWN_OUTER6 = tuple(o.name for o in OPTIONS if o.place is IPV6_OUTER)
