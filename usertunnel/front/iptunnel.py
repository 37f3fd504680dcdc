"""The `ip tunnel` grammar: `usertunnel [-6] tunnel {add|change|del|show|prl|6rd} ...` words in, a command out.

Rules for this file: it is pure. It reads words and tunnel objects, and returns a
`TunnelCommand`, lines of text, or a boolean; it never opens a socket, reads a
file or looks up a device. Every refusal is an `IpTunnelError` whose message is
what iproute2 prints for the same words (its "ip" spelled "usertunnel"). The
reference is iproute2's ip/iptunnel.c (`ip tunnel`), ip/ip6tunnel.c
(`ip -6 tunnel`), ip/tunnel.c and lib/utils.c; the names below are theirs.

Theory of operation. `parse` does what `do_iptunnel` does: if the first `mode`
word names an IPv6-outer mode (ip6ip6, ipip6, ip6gre, any, ...), the words go
to the `ip -6 tunnel` grammar even without -6; then the first word picks the
command by unambiguous prefix (`matches()`: "a" is add, "d" delete, "s" show,
"l" list); then a loop reads keyword after keyword, exactly (`strcmp`), except
`dsfield` and `help`, which iproute2 accepts by prefix. A word that is no
keyword is the tunnel's NAME (or `name NAME`); a second one is refused with
iproute2's duparg2 message. Checks iproute2 makes after the loop come after
ours, in its order: keys only for GRE, a multicast remote needs a local, ttl
with nopmtudisc, and (add) a mode, taken from the name's first letters when
no `mode` is given ("gre1" is gre) as `parse_args` does.

Values are read the way iproute2 reads them, because a person copying an `ip`
command expects the same answer: numbers as C `strtoul` does (0x hex, leading
0 octal; TOS, tclass and flow label always hex), IPv4 addresses the legacy way
(`10.8` is 10.8.0.0), `any`/`all`/`default` for the unspecified address, keys
as numbers or dotted quads, TOS names from rt_dsfield. The result is the
canonical table the config file also uses (see `TunnelCommand`).

`show_lines` prints one tunnel as `print_tunnel` in iptunnel.c / ip6tunnel.c
does (TOS as a number, as `ip -N`); `matches` is the filter of
`ip_tunnel_parm_match` / `ip6_tnl_parm_match` for `show`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core import options
from ..core.params import Mode
from ..core.values import parse_key

# The words usertunnel prints where iproute2 prints "ip tunnel" and "ip -f inet6 tunnel".
PROGRAM = "usertunnel tunnel"
PROGRAM6 = "usertunnel -6 tunnel"

HELP = f"""\
Usage: {PROGRAM} {{ add | change | del | show | prl | 6rd }} [ NAME ]
          [ mode {{ ipip | gre | gretap | sit | isatap | vti |
                   ipip6 | ip6ip6 | ip6gre | ip6gretap | vti6 }} ]
          [ remote ADDR ] [ local ADDR ]
          [ [i|o]seq ] [ [i|o]key KEY ] [ [i|o]csum ]
          [ prl-default ADDR ] [ prl-nodefault ADDR ] [ prl-delete ADDR ]
          [ 6rd-prefix ADDR ] [ 6rd-relay_prefix ADDR ] [ 6rd-reset ]
          [ ttl TTL ] [ tos TOS ] [ [no]pmtudisc ] [ dev PHYS_DEV ]

Where: NAME := STRING
       ADDR := {{ IP_ADDRESS | any }}
       TOS  := {{ STRING | 00..ff | inherit | inherit/STRING | inherit/00..ff }}
       TTL  := {{ 1..255 | inherit }}
       KEY  := {{ DOTTED_QUAD | NUMBER }}
"""

DEFAULT_ENCAP_LIMIT = 4  # IPV6_DEFAULT_TNL_ENCAP_LIMIT
DEFAULT_HOP_LIMIT = 64  # DEFAULT_TNL_HOP_LIMIT in ip6tunnel.c

HELP6 = f"""\
Usage: {PROGRAM6} {{ add | change | del | show }} [ NAME ]
          [ mode {{ ip6ip6 | ipip6 | ip6gre | ip6gretap | vti6 | any }} ]
          [ remote ADDR local ADDR ] [ dev PHYS_DEV ]
          [ encaplimit ELIM ]
          [ hoplimit TTL ] [ tclass TCLASS ] [ flowlabel FLOWLABEL ]
          [ [i|o]seq ] [ [i|o]key KEY ] [ [i|o]csum ]

Where: NAME      := STRING
       ADDR      := IPV6_ADDRESS
       ELIM      := {{ none | 0..255 }}(default={DEFAULT_ENCAP_LIMIT})
       TTL       := 0..255 (default={DEFAULT_HOP_LIMIT})
       TCLASS    := {{ 0x0..0xff | inherit }}
       FLOWLABEL := {{ 0x0..0xfffff | inherit }}
       KEY       := {{ DOTTED_QUAD | NUMBER }}

add and change refuse ip -6 tunnel's `dscp inherit` and `[no]allow-localremote`:
usertunnel has no counterpart (tclass inherit copies the inner DSCP).
"""

MODES4 = ("gre", "ipip", "sit", "isatap", "gretap")  # outer IPv4: `ip tunnel`
MODES6 = ("ipip6", "ip6ip6", "ip6gre", "ip6gretap", "vti6")  # outer IPv6: `ip -6 tunnel`

# Table keys beyond the config file's vocabulary: `ip -6 tunnel` words usertunnel's core has no
# counterpart for yet. They are kept (never dropped silently) so that the daemon can refuse them.
EXTRA_KEYS = ("dscp_inherit", "allow_localremote")


class IpTunnelError(Exception):
    """Words iproute2 refuses; the message is what it prints (no trailing newline)."""


@dataclass(frozen=True)
class TunnelCommand:
    """One `usertunnel [-6] tunnel ...` command line, understood.

    `table` holds only what the words gave, in the config file's vocabulary:
    mode; local, remote (compressed text or "any"); ikey, okey (0..4294967295);
    iseq, oseq, icsum, ocsum, pmtudisc (bool); ttl (1..255 or "inherit"; the
    hop limit under -6); tos (0..255 or "inherit"; the traffic class under -6);
    dev; encaplimit (0..255 or "none"), flowlabel (0..0xfffff or "inherit"),
    and `EXTRA_KEYS` (-6 only); 6rd_prefix, 6rd_relay_prefix ("ADDR/LEN"),
    6rd_reset (action 6rd); prl_default, prl_nodefault, prl_delete (lists of
    IPv4 addresses, action prl). For add, the mode is always there (given,
    read from the name, or -6's default ip6ip6); for prl and 6rd, `name` is
    the tunnel named by `dev`.
    """

    action: str  # "add" | "change" | "del" | "show" | "prl" | "6rd" | "help"
    name: str | None
    table: dict[str, Any] = field(default_factory=dict)
    ipv6: bool = False  # the `ip -6 tunnel` grammar (given -6, or an IPv6 mode handed it over)


# --- errors, in lib/utils.c's words ---------------------------------------------------------------------------


def _invarg(msg: str, arg: str) -> IpTunnelError:
    return IpTunnelError(f'Error: argument "{arg}" is wrong: {msg}')


def _duparg2(key: str, arg: str) -> IpTunnelError:
    return IpTunnelError(f'Error: either "{key}" is duplicate, or "{arg}" is a garbage.')


INCOMPLETE = 'Command line is not complete. Try option "help"'


# --- reading values as iproute2 does ---------------------------------------------------------------------------

_ULONG_MAX = (1 << 64) - 1
_HEX = "0123456789abcdefABCDEF"


def _strtoul(text: str, base: int) -> tuple[int, int] | None:
    """C strtoul: (value, characters consumed), or None when there is no digit.

    Leading white space and a sign are skipped; base 0 reads 0x hex, 0 octal or
    decimal; base 16 allows a 0x prefix. A minus wraps modulo 2**64, as in C.
    """
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    negative = i < n and text[i] == "-"
    if i < n and text[i] in "+-":
        i += 1
    if base in (0, 16) and text[i : i + 2] in ("0x", "0X") and i + 2 < n and text[i + 2] in _HEX:
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if text[i : i + 1] == "0" else 10
    digits = "0123456789abcdef"[:base]
    start = i
    while i < n and text[i].lower() in digits:
        i += 1
    if i == start:
        return None
    value = min(int(text[start:i], base), _ULONG_MAX)
    return ((-value) % (1 << 64) if negative else value), i


def _number(text: str, base: int, limit: int) -> int | None:
    """get_u8 / get_u32 / get_unsigned: the whole word is one number no larger than `limit`."""
    parsed = _strtoul(text, base)
    if parsed is None or parsed[1] != len(text) or parsed[0] > limit:
        return None
    return parsed[0]


_UNSPECIFIED = ("default", "any", "all")  # __get_addr_1: the address of no address


def _ipv4(text: str) -> int | None:
    """get_addr_1(AF_INET): the legacy reading (get_addr_ipv4), so "10.8" is 10.8.0.0; None if not one."""
    if text in _UNSPECIFIED:
        return 0
    if ":" in text:
        return None
    octets = [0, 0, 0, 0]
    rest = text
    for i in range(4):
        parsed = _strtoul(rest, 0)
        if parsed is None or parsed[0] > 255:
            return None
        octets[i], used = parsed
        if used == len(rest):
            break
        if i == 3 or rest[used] != ".":
            return None
        rest = rest[used + 1 :]
    return int.from_bytes(bytes(octets), "big")


def _ipv6(text: str) -> int | None:
    """get_addr_1(AF_INET6): inet_pton, or the unspecified address; None if not one."""
    if text in _UNSPECIFIED:
        return 0
    if ":" not in text or "%" in text:  # no colon: an IPv4 word, the wrong family; inet_pton has no scope
        return None
    try:
        return int(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _get_addr32(text: str) -> int:
    address = _ipv4(text)
    if address is None:
        raise IpTunnelError(f'Error: an IP address is expected rather than "{text}"')
    return address


def _endpoint4(text: str) -> str:
    address = _get_addr32(text)
    return str(ipaddress.IPv4Address(address)) if address else "any"


def _endpoint6(text: str) -> str:
    address = _ipv6(text)
    if address is None:
        raise IpTunnelError(f'Error: inet6 address is expected rather than "{text}".')
    return ipaddress.IPv6Address(address).compressed if address else "any"


def _netmask(text: str) -> int | None:
    """get_netmask: a prefix length, or a dotted IPv4 netmask (255.255.0.0 is 16)."""
    length = _number(text, 0, 0xFFFFFFFF)
    if length is not None:
        return length
    mask = _ipv4(text)
    if mask is None:
        return None
    host = ~mask & 0xFFFFFFFF
    return 32 - host.bit_length() if host & ((host + 1) & 0xFFFFFFFF) == 0 else None  # mask2bits


def _prefix(text: str, family: int) -> str:
    """get_prefix: ADDR[/LEN] of the family; "ADDR/LEN" back. `any` alone is the prefix of length 0."""
    bits = 128 if family == 6 else 32
    word, slash, length = text.partition("/")
    address = _ipv6(word) if family == 6 else _ipv4(word)
    plen: int | None = None
    if address is not None and not slash:
        plen = 0 if word in _UNSPECIFIED else bits
    elif address is not None and word not in _UNSPECIFIED:  # `any/LEN` is refused, as iproute2 does
        plen = _netmask(length)
    if address is None or plen is None or plen > bits:
        name = "inet6" if family == 6 else "inet"
        raise IpTunnelError(f'Error: {name} prefix is expected rather than "{text}".')
    shown = ipaddress.IPv6Address(address).compressed if family == 6 else str(ipaddress.IPv4Address(address))
    return f"{shown}/{plen}"


def _key(keyword: str, text: str) -> int:
    """tnl_parse_key: a dotted quad (read as an address) or an unsigned number."""
    if "." in text:
        return _get_addr32(text)
    value = _number(text, 0, 0xFFFFFFFF)
    if value is None:
        raise IpTunnelError(f'invalid value for "{keyword}": "{text}"; it should be an unsigned integer')
    return value


def _check_ifname(name: str) -> bool:
    """check_ifname (iproute2), plus what the kernel's dev_valid_name also refuses (':', '.', '..')."""
    return 0 < len(name) < 16 and name not in (".", "..") and not any(c.isspace() or c in "/:" for c in name)


# rt_dsfield as iproute2 ships it: TOS names `tos` accepts besides hex.
DSFIELD_NAMES = {
    "default": 0x00,
    "lowdelay": 0x10,
    "throughput": 0x08,
    "reliability": 0x04,
    "mincost": 0x02,
    "priority": 0x20,
    "immediate": 0x40,
    "flash": 0x60,
    "flash-override": 0x80,
    "critical": 0xA0,
    "internet": 0xC0,
    "network": 0xE0,
}


def _dsfield(text: str) -> int | None:
    """rtnl_dsfield_a2n: a name from rt_dsfield, else hex 00..ff."""
    if text in DSFIELD_NAMES:
        return DSFIELD_NAMES[text]
    return _number(text, 16, 0xFF)


# --- the grammar ------------------------------------------------------------------------------------------------


def _matches(word: str, keyword: str) -> bool:
    """iproute2's matches(): `word` is a non-empty prefix of `keyword`."""
    return bool(word) and keyword.startswith(word)


class _Words:
    """The words after the command, read one at a time; NEXT_ARG's complaint when a value is missing."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._argv = list(argv)
        self._at = 0

    def __bool__(self) -> bool:
        return self._at < len(self._argv)

    def take(self) -> str:
        if self._at >= len(self._argv):
            raise IpTunnelError(INCOMPLETE)
        self._at += 1
        return self._argv[self._at - 1]


class _Help(Exception):
    """A `help` word: usage() instead of a command."""


@dataclass
class _State:
    """What parse_args builds: the table, the name, and (IPv4) the mode's parts."""

    table: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    proto: str | None = None  # iph.protocol: "gre" | "ipip" | "sit"
    isatap: bool = False
    ethernet: bool = False  # usertunnel's gretap: GRE carrying Ethernet


Handler = Callable[[_Words, _State], None]


def _both(*keys: str, value: Any = True) -> Handler:
    def handle(words: _Words, state: _State) -> None:
        for key in keys:
            state.table[key] = value

    return handle


def _keyed(*keys: str) -> Handler:
    def handle(words: _Words, state: _State) -> None:
        value = _key(keys[0] if len(keys) == 1 else "key", words.take())
        for key in keys:
            state.table[key] = value

    return handle


def _gre_word(name: str) -> Handler:
    """The handler of a GRE option's word (core/options.py): a key it reads, or flags it sets."""
    return (_keyed if options.parse_of(name) is parse_key else _both)(*options.sets(name))


# Flags and keys read the same in both grammars: the GRE options' words, in `up --help`'s order.
_GRE_WORDS: dict[str, Handler] = {
    word: _gre_word(name) for name in options.GRE_GROUP.members for word in options.words_of(name)
}

# `ip tunnel` mode words: (iph.protocol, isatap, ethernet). gretap is usertunnel's own.
_MODE_WORDS4: dict[str, tuple[str, bool, bool]] = {
    "ipip": ("ipip", False, False),
    "ip/ip": ("ipip", False, False),
    "gre": ("gre", False, False),
    "gre/ip": ("gre", False, False),
    "gretap": ("gre", False, True),
    "sit": ("sit", False, False),
    "ipv6/ip": ("sit", False, False),
    "isatap": ("sit", True, False),
    "vti": ("vti", False, False),  # ip_vti: IPv4 in ESP tunnel mode; its keys select the security associations
}

# `ip -6 tunnel` mode words; "any" is the ip6tnl taking both inner families (show's default).
_MODE_WORDS6 = {
    "ipv6/ipv6": "ip6ip6",
    "ip6ip6": "ip6ip6",
    "ip/ipv6": "ipip6",
    "ipv4/ipv6": "ipip6",
    "ipip6": "ipip6",
    "ip4ip6": "ipip6",
    "ip6gre": "ip6gre",
    "gre/ipv6": "ip6gre",
    "ip6gretap": "ip6gretap",  # usertunnel's own, as gretap in the IPv4 grammar
    "any/ipv6": "any",
    "any": "any",
    "vti6": "vti6",  # ip6_vti: IPv6 in ESP tunnel mode over IPv6
}
# tunnel_mode_is_ipv6(): a first `mode` word that sends `ip tunnel` to `ip -6 tunnel`.
_HANDED_TO_IPV6 = frozenset(_MODE_WORDS6)


def _mode4(words: _Words, state: _State) -> None:
    word = words.take()
    if word not in _MODE_WORDS4:
        raise IpTunnelError(f'Unknown tunnel mode "{word}"')
    proto, isatap, ethernet = _MODE_WORDS4[word]
    if state.proto is not None and state.proto != proto:  # set_tunnel_proto()
        raise IpTunnelError("You managed to ask for more than one tunnel mode.")
    state.proto = proto
    state.isatap |= isatap  # as iproute2's isatap++: sit after isatap stays isatap
    state.ethernet |= ethernet


def _ttl4(words: _Words, state: _State) -> None:
    word = words.take()
    if word == "inherit":  # leaves an earlier number in place, as iproute2 does
        state.table.setdefault("ttl", "inherit")
        return
    value = _number(word, 0, 0xFF)
    if value is None:
        raise _invarg("invalid TTL", word)
    state.table["ttl"] = value or "inherit"  # ttl 0 is inherit


def _tos4(words: _Words, state: _State) -> None:
    """inherit, inherit/DSFIELD or DSFIELD; the low bit of iph.tos means inherit (ip_tunnel_xmit)."""
    word = words.take()
    head, slash, tail = word.partition("/")
    inherit = head == "inherit"
    dsfield: str | None = (tail if slash else None) if inherit else head
    tos = 1 if inherit else 0
    if dsfield is not None:
        value = _dsfield(dsfield)
        if value is None:
            raise _invarg("bad TOS value", head)
        tos |= value
    state.table["tos"] = "inherit" if tos & 1 else tos


def _endpoint(key: str, read: Callable[[str], str]) -> Handler:
    def handle(words: _Words, state: _State) -> None:
        state.table[key] = read(words.take())

    return handle


def _dev(words: _Words, state: _State) -> None:
    state.table["dev"] = words.take()


def _encap_kind(words: _Words, state: _State) -> None:
    """`encap fou|gue|none` (iproute2 spells it on `ip link`; the same words here)."""
    word = words.take()
    if word not in ("fou", "gue", "none"):
        raise _invarg('"encap" must be "fou", "gue" or "none"', word)
    state.table["encap"] = word


def _encap_port(key: str, auto: bool) -> Handler:
    def handle(words: _Words, state: _State) -> None:
        word = words.take()
        if auto and word == "auto":
            state.table[key] = "auto"
            return
        value = _number(word, 0, 0xFFFF)
        if not value:  # not a number, or port 0
            raise _invarg(f"invalid {key.replace('_', '-')}: a UDP port 1..65535{' or auto' if auto else ''}", word)
        state.table[key] = value

    return handle


# FOU / GUE (README "FOU and GUE"): the words of `ip link add ... type gre|ipip|sit`.
_ENCAP_WORDS: dict[str, Handler] = {
    "encap": _encap_kind,
    "noencap": _both("encap", value="none"),
    "encap-sport": _encap_port("encap_sport", auto=True),
    "encap-dport": _encap_port("encap_dport", auto=False),
    "encap-csum": _both("encap_csum", value=True),
    "noencap-csum": _both("encap_csum", value=False),
}


_WORDS4: dict[str, Handler] = {
    "mode": _mode4,
    **_ENCAP_WORDS,
    **_GRE_WORDS,
    "nopmtudisc": _both("pmtudisc", value=False),
    "pmtudisc": _both("pmtudisc", value=True),
    "remote": _endpoint("remote", _endpoint4),
    "local": _endpoint("local", _endpoint4),
    "dev": _dev,
    "ttl": _ttl4,
    "hoplimit": _ttl4,
    "hlim": _ttl4,
    "tos": _tos4,
    "tclass": _tos4,
}


def _mode6(words: _Words, state: _State) -> None:
    word = words.take()
    if word not in _MODE_WORDS6:
        raise IpTunnelError(f'Unknown tunnel mode "{word}"')
    state.table["mode"] = _MODE_WORDS6[word]


def _encaplimit(words: _Words, state: _State) -> None:
    word = words.take()
    value = "none" if word == "none" else _number(word, 0, 0xFF)
    if value is None:  # iproute2's test here can never fail and keeps an undefined value; we refuse
        raise _invarg("invalid ELIM", word)
    state.table["encaplimit"] = value


def _hoplimit(words: _Words, state: _State) -> None:
    word = words.take()
    value = _number(word, 0, 0xFF)
    if value is None:
        raise _invarg("invalid TTL", word)
    state.table["ttl"] = value or "inherit"  # hoplimit 0: ip -6 tunnel show prints "hoplimit inherit"


def _hex_or_inherit(words: _Words, state: _State, key: str, maximum: int, refusal: str) -> None:
    """`inherit`, or a hex value up to `maximum` (ip -6 tunnel's tclass and flowlabel)."""
    word = words.take()
    value = "inherit" if word == "inherit" else _number(word, 16, maximum)
    if value is None:
        raise _invarg(refusal, word)
    state.table[key] = value


def _tclass(words: _Words, state: _State) -> None:
    _hex_or_inherit(words, state, "tos", 0xFF, "invalid TClass")


def _flowlabel(words: _Words, state: _State) -> None:
    _hex_or_inherit(words, state, "flowlabel", 0xFFFFF, "invalid Flowlabel")


def _dscp(words: _Words, state: _State) -> None:
    word = words.take()
    if word != "inherit":
        raise _invarg("not inherit", word)
    state.table["dscp_inherit"] = True


_WORDS6: dict[str, Handler] = {
    "mode": _mode6,
    "remote": _endpoint("remote", _endpoint6),
    "local": _endpoint("local", _endpoint6),
    "dev": _dev,
    "encaplimit": _encaplimit,
    "hoplimit": _hoplimit,
    "ttl": _hoplimit,
    "hlim": _hoplimit,
    "tclass": _tclass,
    "tc": _tclass,
    "tos": _tclass,
    "flowlabel": _flowlabel,
    "fl": _flowlabel,
    "dscp": _dscp,
    "allow-localremote": _both("allow_localremote", value=True),
    "noallow-localremote": _both("allow_localremote", value=False),
    **_GRE_WORDS,
}


def _parse_args(words: _Words, words_table: Mapping[str, Handler], tos: Handler) -> _State:
    """parse_args(): keywords exactly, `dsfield` by prefix, anything else the name (`help` by prefix)."""
    state = _State()
    while words:
        word = words.take()
        handler: Handler | None = words_table.get(word)
        if handler is None and _matches(word, "dsfield"):
            handler = tos
        if handler is not None:
            handler(words, state)
        else:
            if word == "name":
                word = words.take()
            elif _matches(word, "help"):
                raise _Help
            if state.name is not None:
                raise _duparg2("name", word)
            if not _check_ifname(word):
                raise _invarg('"name" not a valid ifname', word)
            state.name = word
    return state


def infer_mode(name: str) -> str | None:
    """The mode `ip tunnel` reads from a name when no `mode` is given (parse_args): gre*, ipip*, sit*, isatap*."""
    for prefix in ("gre", "ipip", "sit", "isatap"):
        if name.startswith(prefix):
            return prefix
    return None


def _mode_of(state: _State) -> str | None:
    if state.proto is None:
        return None
    if state.proto == "gre":
        return "gretap" if state.ethernet else "gre"
    if state.proto == "sit":
        return "isatap" if state.isatap else "sit"
    return state.proto


def _is_multicast4(text: str | None) -> bool:
    return text not in (None, "any") and ipaddress.IPv4Address(text).is_multicast


def _tunnel4(action: str, words: _Words) -> TunnelCommand:
    """do_add / do_del / do_show of iptunnel.c, without the ioctls."""
    state = _parse_args(words, _WORDS4, _tos4)
    table = state.table
    explicit = _mode_of(state)
    inferred = infer_mode(state.name) if state.name is not None and explicit is None else None
    mode = explicit or inferred
    # `change NAME ...` starts from the running tunnel in iproute2: what it holds is unknown here,
    # so the checks that need it are left to the daemon.
    known = action != "change" or explicit is not None
    keyed = mode is not None and options.takes("key", Mode.from_name(mode).value)  # gre, gretap, vti (VTI_ISVTI)
    if ("ikey" in table or "okey" in table) and not keyed and known:
        raise IpTunnelError("Keys are not allowed with ipip and sit tunnels")
    remote = table.get("remote")
    if _is_multicast4(remote) and mode in ("gre", "gretap"):
        group = int(ipaddress.IPv4Address(remote))
        for key in ("ikey", "okey"):  # a multicast GRE tunnel is keyed by its group when no key is given
            if not table.get(key):
                table[key] = group
    if _is_multicast4(remote) and table.get("local", "any") == "any" and (action != "change" or "local" in table):
        raise IpTunnelError("A broadcast tunnel requires a source address")
    if action in ("add", "change") and isinstance(table.get("ttl"), int) and table.get("pmtudisc") is False:
        raise IpTunnelError("ttl != 0 and nopmtudisc are incompatible")
    if action == "add":
        if mode is None:
            raise IpTunnelError("cannot determine tunnel mode (ipip, gre, gretap, sit or isatap)")
        table["mode"] = mode
    elif explicit is not None:
        table["mode"] = explicit
    return TunnelCommand(action, state.name, table, ipv6=False)


def _tunnel6(action: str, words: _Words) -> TunnelCommand:
    """do_add / do_del / do_show of ip6tunnel.c, without the ioctls."""
    state = _parse_args(words, _WORDS6, _tclass)
    table = state.table
    if table.get("mode") == "any":
        if action in ("add", "change"):
            raise IpTunnelError(
                'mode "any" (one ip6tnl for IPv4 and IPv6 inside) is not in usertunnel: use ip6ip6, ipip6 or ip6gre'
            )
        del table["mode"]  # show, del: any mode
    if action == "add":
        table.setdefault("mode", "ip6ip6")  # ip6_tnl_parm_init(): proto IPPROTO_IPV6
    return TunnelCommand(action, state.name, table, ipv6=True)


_PRL_WORDS = {word: word.replace("-", "_") for word in options.words_of("prl")}  # prl-default: prl_default


def _prl(words: _Words) -> TunnelCommand:
    """do_prl: one potential router of an isatap tunnel added or deleted."""
    table: dict[str, Any] = {}
    dev: str | None = None
    count = 0
    while words:
        word = words.take()
        key = _PRL_WORDS.get(word)
        if key is not None:
            table[key] = [str(ipaddress.IPv4Address(_get_addr32(words.take())))]
            count += 1
        elif word == "dev":
            dev = words.take()
            if not _check_ifname(dev):
                raise _invarg('"dev" not a valid ifname', dev)
        else:
            raise IpTunnelError(f'Invalid PRL parameter "{word}"')
        if count > 1:
            raise IpTunnelError("One PRL entry at a time")
    if dev is None:
        raise IpTunnelError("Must specify device")
    return TunnelCommand("prl", dev, table, ipv6=False)


def _6rd(words: _Words) -> TunnelCommand:
    """do_6rd: set a sit tunnel's 6rd prefixes, or reset them; the last of the two asked wins, as the ioctl."""
    table: dict[str, Any] = {}
    dev: str | None = None
    reset = False
    while words:
        word = words.take()
        if word == "6rd-prefix":
            table["6rd_prefix"] = _prefix(words.take(), 6)
            reset = False
        elif word == "6rd-relay_prefix":
            table["6rd_relay_prefix"] = _prefix(words.take(), 4)
            reset = False
        elif word == "6rd-reset":
            reset = True
        elif word == "dev":
            dev = words.take()
            if not _check_ifname(dev):
                raise _invarg('"dev" not a valid ifname', dev)
        else:
            raise IpTunnelError(f'Invalid 6RD parameter "{word}"')
    if dev is None:
        raise IpTunnelError("Must specify device")
    return TunnelCommand("6rd", dev, {"6rd_reset": True} if reset else table, ipv6=False)


# do_iptunnel / do_ip6tunnel: the command by prefix, in iproute2's order ("d" is delete, "l" is lst).
_COMMANDS4 = (
    ("add", "add"),
    ("change", "change"),
    ("delete", "del"),
    ("show", "show"),
    ("lst", "show"),
    ("list", "show"),
    ("prl", "prl"),
    ("6rd", "6rd"),
    ("help", "help"),
)
_COMMANDS6 = tuple(c for c in _COMMANDS4 if c[1] not in ("prl", "6rd"))


def parse(argv: Sequence[str], ipv6: bool = False) -> TunnelCommand:
    """The command `usertunnel [-6] tunnel ARGV...` asks for; IpTunnelError with iproute2's words if none.

    No words at all is `show`. A `help` command (or word where a name would be) is action "help":
    print HELP (HELP6 if the command's `ipv6`).
    """
    words = list(argv)
    for i, word in enumerate(words[:-1]):  # do_iptunnel: only the first `mode` word counts
        if word == "mode":
            ipv6 = ipv6 or words[i + 1] in _HANDED_TO_IPV6
            break
    if not words:
        return TunnelCommand("show", None, {}, ipv6)
    action = next((a for keyword, a in (_COMMANDS6 if ipv6 else _COMMANDS4) if _matches(words[0], keyword)), None)
    try:
        if action is None:
            if ipv6:
                raise IpTunnelError(f'Command "{words[0]}" is unknown, try "{PROGRAM6} help".')
            raise IpTunnelError(f'Command "{words[0]}" is unknown, try "{PROGRAM} help"')
        if action == "help":
            raise _Help
        rest = _Words(words[1:])
        if action == "prl":
            return _prl(rest)
        if action == "6rd":
            return _6rd(rest)
        return _tunnel6(action, rest) if ipv6 else _tunnel4(action, rest)
    except _Help:
        return TunnelCommand("help", None, {}, ipv6)


# --- show: print_tunnel() of iptunnel.c and ip6tunnel.c -----------------------------------------------------------

# tnl_strproto() of each mode's outer protocol, and the family word after the slash.
_STRPROTO = {
    "gre": "gre/ip",
    "gretap": "gre/ip",  # Linux's gretap is an Ethernet device `ip tunnel` cannot see; its protocol is GRE
    "ipip": "ip/ip",
    "sit": "ipv6/ip",
    "isatap": "ipv6/ip",
    "ipip6": "ip/ipv6",
    "ip6ip6": "ipv6/ipv6",
    "ip6gre": "gre/ipv6",
    "ip6gretap": "gre/ipv6",
    "vti": "ip/ip",  # as Linux prints a vti device: its inner and outer are IPv4
    "vti6": "ipv6/ipv6",
}
# A sit device's 6rd prefix before any `6rd` command: the 6to4 prefix (ipip6_tunnel_clone_6rd in sit.c).
DEFAULT_6RD = {"prefix": "2002::/16", "relay_prefix": "0.0.0.0/0"}


def _ntop6(text: str | None) -> str:
    """inet_ntop(AF_INET6) as glibc writes it: Python's compressed form, but IPv4-mapped and
    IPv4-compatible addresses end in a dotted quad (::ffff:192.0.2.1)."""
    address = ipaddress.IPv6Address(text or "::")
    value = int(address)
    high, low = value >> 32, value & 0xFFFFFFFF
    if high == 0xFFFF or (high == 0 and value > 1):
        return f"::{'ffff:' if high else ''}{ipaddress.IPv4Address(low)}"
    return address.compressed


def _gre_flags(t: Mapping[str, Any], gre: bool) -> tuple[str, list[str]]:
    """tnl_print_gre_flags(): the key words on the line, then (GRE only) one line per flag, in its order."""
    ikey, okey = t.get("ikey"), t.get("okey")
    if ikey is not None and ikey == okey:
        words = f" key {ikey}"
    else:
        words = (f" ikey {ikey}" if ikey is not None else "") + (f" okey {okey}" if okey is not None else "")
    lines = []
    if gre:
        for flag, sentence in (
            ("iseq", "Drop packets out of sequence."),
            ("icsum", "Checksum in received packet is required."),
            ("oseq", "Sequence packets on output."),
            ("ocsum", "Checksum output packets."),
        ):
            if t.get(flag):
                lines.append(f"  {sentence}")
    return words, lines


def _lines4(t: Mapping[str, Any]) -> list[str]:
    """print_tunnel() of iptunnel.c."""
    mode = t["mode"]
    line = f"{t['name']}: {_STRPROTO[mode]} remote {t.get('remote') or 'any'} local {t.get('local') or 'any'}"
    if mode == "isatap":
        for router in t.get("prl") or ():
            line += f" {'pdr' if router.get('default') else 'pr'} {router['address']}"
    if t.get("dev"):
        line += f" dev {t['dev']}"
    line += f" ttl {t['ttl']}" if t.get("ttl") else " ttl inherit"
    tos = t.get("tos", 0)
    if tos is None:
        line += " tos inherit"
    elif tos:
        line += f" tos 0x{tos:02x}"
    if not t.get("pmtudisc", True):
        line += " nopmtudisc"
    if mode in ("sit", "isatap"):
        sixrd = t.get("sixrd") or DEFAULT_6RD
        prefix, _, plen = sixrd["prefix"].partition("/")
        relay, _, rlen = sixrd.get("relay_prefix", "0.0.0.0/0").partition("/")
        if int(plen or 0):
            line += f" 6rd-prefix {_ntop6(prefix)}/{plen}"
            if int(ipaddress.IPv4Address(relay)):
                line += f" 6rd-relay_prefix {relay}/{rlen}"
    keys, flags = _gre_flags(t, gre=mode in ("gre", "gretap"))
    return [line + keys, *flags]


def _lines6(t: Mapping[str, Any]) -> list[str]:
    """print_tunnel() of ip6tunnel.c: the unspecified address is "::", never "any"."""
    line = f"{t['name']}: {_STRPROTO[t['mode']]} remote {_ntop6(t.get('remote'))} local {_ntop6(t.get('local'))}"
    if t.get("dev"):
        line += f" dev {t['dev']}"
    encaplimit = t.get("encaplimit", DEFAULT_ENCAP_LIMIT)
    line += " encaplimit none" if encaplimit is None else f" encaplimit {encaplimit}"
    line += f" hoplimit {t['ttl']}" if t.get("ttl") else " hoplimit inherit"
    tclass, flowlabel = t.get("tos", 0), t.get("flowlabel", 0)
    line += " tclass inherit" if tclass is None else f" tclass 0x{tclass:02x}"
    line += " flowlabel inherit" if flowlabel is None else f" flowlabel 0x{flowlabel:05x}"
    line += f" (flowinfo 0x{(tclass or 0) << 20 | (flowlabel or 0):08x})"
    keys, flags = _gre_flags(t, gre=t["mode"] in ("ip6gre", "ip6gretap"))
    return [line + keys, *flags]


def show_lines(t: Mapping[str, Any]) -> list[str]:
    """The lines `ip tunnel show` (IPv4 outer) or `ip -6 tunnel show` (IPv6 outer) prints for one tunnel,
    given the control socket's JSON object (null ttl/tos/flowlabel: inherit; null encaplimit: none)."""
    return _lines6(t) if t["mode"] in MODES6 else _lines4(t)


# --- show's filter ------------------------------------------------------------------------------------------------


def _same_address(wanted: Any, have: Any) -> bool:
    """A filter address: "any" (or none given) matches everything, as a zero address does in iproute2."""
    if wanted in (None, "any"):
        return True
    return have not in (None, "any") and ipaddress.ip_address(wanted) == ipaddress.ip_address(have)


def _flags6(settings: Mapping[str, Any], *, given: bool) -> set[str]:
    """The ip6_tnl_parm2 flags of a filter (`given`: what the words said) or of a tunnel."""
    if given:
        on = {
            "ign_encap_limit": settings.get("encaplimit") == "none",
            "use_orig_tclass": settings.get("tos") == "inherit",
            "use_orig_flowlabel": settings.get("flowlabel") == "inherit",
            "rcv_dscp_copy": bool(settings.get("dscp_inherit")),
            "allow_local_remote": bool(settings.get("allow_localremote")),
        }
    else:
        on = {
            "ign_encap_limit": "encaplimit" in settings and settings["encaplimit"] is None,
            "use_orig_tclass": "tos" in settings and settings["tos"] is None,
            "use_orig_flowlabel": "flowlabel" in settings and settings["flowlabel"] is None,
        }
    return {flag for flag, value in on.items() if value}


def _matches4(command: TunnelCommand, t: Mapping[str, Any]) -> bool:
    """do_show of iptunnel.c. With a mode known (given, or read from the name) iproute2 asks one device:
    the named one, else the mode's fallback device (gre0, tunl0, sit0); usertunnel has no fallback
    devices, so there every tunnel of that mode is filtered instead. Otherwise ip_tunnel_parm_match."""
    table, name = command.table, command.name
    if name is not None and ("mode" in table or infer_mode(name)):
        return bool(t["name"] == name)
    if "mode" in table and t["mode"] != table["mode"]:
        return False
    return (
        (name is None or t["name"] == name)
        and ("dev" not in table or t.get("dev") == table["dev"])
        and _same_address(table.get("remote"), t.get("remote"))
        and _same_address(table.get("local"), t.get("local"))
        and (not table.get("ikey") or t.get("ikey") == table["ikey"])
    )


def _matches6(command: TunnelCommand, t: Mapping[str, Any]) -> bool:
    """do_show / ip6_tnl_parm_match of ip6tunnel.c: a name asks that device alone; otherwise every
    setting given (a number other than 0, an address other than ::) must be the tunnel's, and of the
    inherit/none flags given, one at least."""
    table = command.table
    if command.name is not None:
        return bool(t["name"] == command.name)

    def same(key: str) -> bool:
        wanted = table.get(key)
        return not isinstance(wanted, int) or not wanted or t.get(key) == wanted

    wanted_flags = _flags6(table, given=True)
    return (
        ("dev" not in table or t.get("dev") == table["dev"])
        and _same_address(table.get("local"), t.get("local"))
        and _same_address(table.get("remote"), t.get("remote"))
        and ("mode" not in table or t["mode"] == table["mode"])
        and all(same(key) for key in ("encaplimit", "ttl", "tos", "flowlabel"))
        and (not wanted_flags or bool(wanted_flags & _flags6(t, given=False)))
    )


def matches(command: TunnelCommand, t: Mapping[str, Any]) -> bool:
    """Whether `show` (the `command`) lists tunnel `t` (a control socket JSON object): `ip tunnel show`
    lists tunnels over IPv4 only, `ip -6 tunnel show` over IPv6 only, each with its own filter."""
    if (t["mode"] in MODES6) != command.ipv6:
        return False
    return _matches6(command, t) if command.ipv6 else _matches4(command, t)
