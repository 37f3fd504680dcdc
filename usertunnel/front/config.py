"""The daemon's configuration file: TOML tables of tunnels in, checked `UpOptions` out, and what a reload changes.

Rules for this file: it reads text and builds values; it never touches the
system (no device, socket or signal), so every rule here is testable with a
string. A file is taken whole or not at all: `parse_config` builds and checks
every tunnel before it returns anything, and a refusal is a `ConfigError`
whose lines read `PATH:LINE: reason`, one per mistake. The converters are the
command line's (core.params, core.neighbors, core.keepalive, core.sequence,
core.sit, and cli's own), so a setting means here what its `usertunnel up`
flag means, and the same settings build the same `TunnelParams`.

Theory of operation:

  text --tomllib--> dict --canonical()--> one table per tunnel, in the canonical
  vocabulary (aliases folded: key -> ikey + okey, seq -> iseq + oseq, csum ->
  icsum + ocsum, hoplimit -> ttl, tclass/dsfield -> tos) --check_tunnel()-->
  TunnelConfig (UpOptions, routes, up) --whole-file checks (collisions)-->
  DaemonConfig.

  `check_tunnel` finds every mistake of a key on its own (unknown, given twice,
  of the wrong type, a value its converter refuses) in one pass, then, if each
  key is right, the first mistake between settings while it builds the tunnel.

  tomllib gives no positions for values, so `_Lines` reads the text once more
  (it is valid TOML by then) and notes the line where each key path is first
  written: a `[tunnel.NAME]` header, a `key = value` line (dotted keys and
  inline tables too), an array's element. An error names the key as written
  and, for a list, the element; its line is that path's, or its nearest
  enclosing one's (the tunnel's header at worst).

  A reload is `plan(running, wanted)`: tunnels only in the file are added, those
  only running are removed, those whose built configuration differs are
  restarted, the rest are left alone. Two spellings of one setting (`key =
  1234`, `key = "0.0.4.210"`) build the same configuration, so they restart nothing.
"""

from __future__ import annotations

import bisect
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core import options
from ..core.errors import ConfigError
from ..core.esp import EspKeys
from ..core.fou import Encap
from ..core.neighbors import DEFAULT_TIMEOUT, HubParams, parse_neighbor, parse_spoke
from ..core.options import CSUM_VERIFY
from ..core.params import IFNAMSIZ, VTI_OUTER, Mode, ModeSpec, TunnelParams, check_address_families
from ..core.sequence import SeqPolicy
from ..core.sit import SixRd
from ..core.values import (
    parse_address,
    parse_interface,
    parse_port,
)
from ..io.keyfile import read_esp_keys
from ..io.resolve import is_host_name, resolve
from .request import UpOptions

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

IPV6_MIN_MTU = 1280  # RFC 8200 section 5, as service.prepare checks it
IPV6_OUTER_TTL = 64  # ip6_tunnel's default hop limit, as `usertunnel up` picks it
DEFAULT_TOS: int | None = 0  # as Linux: a fixed TOS of 0 (None: inherit)


class TableError(ConfigError):
    """A tunnel table is wrong at `key` (as written; None: the table as a whole), element `index` of a list."""

    def __init__(self, message: str, key: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.index = index


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a configuration file: its line (1-based) and what was wrong."""

    line: int
    reason: str


class ConfigFileError(ConfigError):
    """A configuration file refused as a whole; the message has one `PATH:LINE: reason` line per problem."""

    def __init__(self, path: str, problems: Sequence[Problem]) -> None:
        self.path = path
        self.problems = tuple(sorted(problems, key=lambda p: p.line))
        super().__init__("\n".join(f"{path}:{p.line}: {p.reason}" for p in self.problems))


# --- the vocabulary -------------------------------------------------------------------------------------------


_BOOL = "true or false"

# Canonical keys, in the order a canonical table lists them: core/options.py's, with the mode names spelled.
_KEYS: dict[str, options.TomlKey] = {o.name: o.toml for o in options.OPTIONS if o.toml is not None}
_KEYS["mode"] = options.TomlKey((str,), '"' + '", "'.join(m.value.name for m in Mode) + '"')

# Aliases, as iproute2 has them: each sets the canonical keys it names.
_ALIASES: dict[str, tuple[str, ...]] = {alias.name: alias.sets for alias in options.ALIASES}

ACCEPTED_KEYS: tuple[str, ...] = tuple(_KEYS) + tuple(_ALIASES)

_DAEMON_KEYS: dict[str, options.TomlKey] = {
    "coalesce": options.TomlKey((bool,), _BOOL),
    "batch": options.TomlKey((bool,), _BOOL),
}
_TOP_KEYS = ("daemon", "tunnel")


_HUB_KEYS = options.HUB.members  # what only a hub takes


# --- canonical tables -----------------------------------------------------------------------------------------


def _unknown(key: str, accepted: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; accepted: {', '.join(accepted)}"


def _fold(table: Mapping[str, Any], errors: list[TableError] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The canonical table, and for each of its keys the key as written (to name it in errors).

    An unknown key, or a second key for a setting already given, raises TableError; with `errors`, it is
    appended there instead and left out (an unknown key changes nothing), so that the other keys are
    still checked."""
    folded: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in table.items():
        targets = _ALIASES.get(key, (key,))
        problem = None
        if key not in _ALIASES and key not in _KEYS:
            problem = TableError(_unknown(key, ACCEPTED_KEYS), key)
        else:
            clash = next((target for target in targets if target in origin), None)
            if clash is not None:
                problem = TableError(f"{key}: {_conflict(origin[clash], key, clash)}", key)
        if problem is not None:
            if errors is None:
                raise problem
            errors.append(problem)
            continue
        for target in targets:
            folded[target] = list(value) if isinstance(value, list) else value
            origin[target] = key
    return {k: folded[k] for k in _KEYS if k in folded}, origin


def _conflict(first: str, second: str, target: str) -> str:
    for alias in (first, second):
        both = _ALIASES.get(alias, ())
        if len(both) == 2:
            a, b = both
            return f"{alias} sets both {a} and {b}: give either {alias}, or {a} and/or {b}"
    return f"{first} and {second} are the same setting ({target}): give one"


def canonical(table: Mapping[str, Any]) -> dict[str, Any]:
    """`table` in the canonical vocabulary: aliases folded, keys in a fixed order. Refuses unknown keys and
    two keys for one setting (key with ikey, ttl with hoplimit). Values are kept as given; `None` is kept
    (for `merge`: back to the default)."""
    return _fold(table)[0]


def merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`tunnel change`: canonical(old) updated by canonical(new); a key set to None in `new` is removed."""
    merged = canonical(old)
    merged.update(canonical(new))
    return {k: v for k, v in merged.items() if v is not None}


# --- one tunnel -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelConfig:
    """One tunnel of the file: its canonical table (what was written) and what it builds."""

    name: str
    table: Mapping[str, Any]
    options: UpOptions
    routes: tuple[Network, ...]
    up: bool

    def same_as(self, other: TunnelConfig) -> bool:
        """True if running `other` instead of this changes nothing (the tables may spell it differently)."""
        return self.options == other.options and self.routes == other.routes and self.up == other.up


_ANY: Any = object()  # get()'s "no default: the key must be there"


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else "a date or time")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


@contextmanager
def _at(key: str | None, index: int | None = None) -> Iterator[None]:
    """A converter's ConfigError, named by the key (as written) it came from."""
    try:
        yield
    except TableError:
        raise
    except ConfigError as exc:
        raise TableError(f"{key}: {exc}" if key else str(exc), key, index) from None


class _Reader:
    """Typed access to a canonical table; every refusal names the key as written.

    A value of the wrong type raises TableError; with `errors`, each is appended there and its key left
    out of `table` instead."""

    def __init__(self, table: dict[str, Any], origin: dict[str, str], errors: list[TableError] | None = None) -> None:
        self.table = table
        self.origin = origin
        for key, value in list(table.items()):
            try:
                self._check_type(key, value)
            except TableError as exc:
                if errors is None:
                    raise
                errors.append(exc)
                del table[key]

    def named(self, key: str) -> str:
        return self.origin.get(key, key)

    def _check_type(self, key: str, value: object) -> None:
        spec = _KEYS[key]
        ok = isinstance(value, bool) == (bool in spec.types) and isinstance(value, spec.types)
        if not ok:
            named = self.named(key)
            raise TableError(f"{named}: expected {spec.expect}, got {_show(value)} ({_toml_type(value)})", named)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise TableError(
                        f"{self.named(key)}: expected {spec.expect}, got {_show(item)} ({_toml_type(item)}) "
                        f"as element {i + 1}",
                        self.named(key),
                        i,
                    )

    def get(self, key: str, convert: Callable[[Any], T], default: T = _ANY) -> T:
        if key not in self.table:
            if default is _ANY:
                raise TableError(f"{key}: missing", key)
            return default
        with _at(self.named(key)):
            return convert(self.table[key])

    def each(self, key: str, convert: Callable[[str], T]) -> list[T]:
        out: list[T] = []
        for i, item in enumerate(self.table.get(key, [])):
            with _at(self.named(key), i):
                out.append(convert(item))
        return out

    def refuse(self, key: str, reason: str) -> TableError:
        return TableError(f"{self.named(key)}: {reason}", self.named(key))


def _check_name(name: str) -> None:
    """A Linux device name (dev_valid_name): 1..15 bytes, no whitespace, '/' or ':', not '.' or '..'."""
    size = len(name.encode())
    if not 1 <= size < IFNAMSIZ or name in (".", "..") or re.search(r"[\s/:]", name):
        raise TableError(
            f"invalid tunnel name {name!r} ({size} bytes): a device name is 1..{IFNAMSIZ - 1} bytes, "
            "without whitespace, '/' or ':', and not '.' or '..'"
        )


def _endpoint(what: str, spec: ModeSpec) -> Callable[[str], bytes | None]:
    """`any` -> None; otherwise an address of the mode's outer family, packed: given as such, or a host
    name resolved in that family (io.resolve; at each load, so a reload resolves it again)."""

    def read(text: str) -> bytes | None:
        if text == "any":
            return None
        packed = resolve(text, spec.outer, what) if is_host_name(text) else parse_address(text, what)
        if len(packed) != (4 if spec.outer == 4 else 16):
            raise ConfigError(
                f"mode {spec.name} runs over IPv{spec.outer}: give an IPv{spec.outer} address, not {text!r}"
            )
        return packed

    return read


def _decimal(convert: Callable[[str], T]) -> Callable[[int | str], T]:
    """A converter of iproute2 text, also given TOML integers (read as the decimal they are)."""
    return lambda value: convert(str(value))


def _hex_or_int(convert: Callable[[str], object], maximum: int, what: str) -> Callable[[int | str], object]:
    """A string is read as the command line reads it (hex: "10" is 16); an integer is the number it is."""

    def read(value: int | str) -> object:
        if isinstance(value, str):
            return convert(value)
        if not 0 <= value <= maximum:
            raise ConfigError(f"invalid {what} {value}: 0..{maximum} ({maximum:#x}), or a hex string, or 'inherit'")
        return value

    return read


def _csum_verify(text: str) -> str:
    if text not in CSUM_VERIFY:
        raise ConfigError(f"invalid csum_verify {text!r}: {' or '.join(repr(v) for v in CSUM_VERIFY)}")
    return text


def _route(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(
            f"invalid route {text!r} ({exc}): a network such as 203.0.113.128/25 or 2001:db8:1::/48"
        ) from None


def _device(text: str) -> str:
    if not 1 <= len(text.encode()) < IFNAMSIZ or re.search(r"[\s/:]", text):
        raise ConfigError(f"invalid device name {text!r}: 1..{IFNAMSIZ - 1} bytes, no whitespace, '/' or ':'")
    return text


def tunnel_from_table(
    name: str, table: Mapping[str, Any], *, coalesce: bool = True, batch: bool = True
) -> TunnelConfig:
    """The tunnel `table` describes, built as `usertunnel up` builds it from the same settings.

    Raises TableError (a ConfigError) whose message starts with the key as written
    ("ttl: invalid ttl ..."); `key` None means the table as a whole: the first
    mistake `check_tunnel` finds. `coalesce` and `batch` are the daemon's
    settings, carried into the UpOptions.
    """
    config, errors = check_tunnel(name, table, coalesce=coalesce, batch=batch)
    if config is None:
        raise errors[0]
    return config


def check_tunnel(
    name: str, table: Mapping[str, Any], *, coalesce: bool = True, batch: bool = True
) -> tuple[TunnelConfig | None, list[TableError]]:
    """Every mistake of one tunnel's `table` (TableErrors, in the order found), and the tunnel when there is none.

    Mistakes of a key on its own are all found: an unknown key, a setting given
    twice, the name, each value's type, and each value that its converter
    refuses, whatever the mode (`_ALONE`). The checks between settings (the
    mode's keys, the outer family, pmtudisc with a ttl, ...) are made once every
    key is right on its own: a wrong value would only make them report
    consequences of it. An unknown key, the name or a setting given twice do
    not stop them.
    """
    errors: list[TableError] = []
    folded, origin = _fold(table, errors)
    folded = {k: v for k, v in folded.items() if v is not None}
    built_name = name
    try:
        _check_name(name)
    except TableError as exc:
        errors.append(exc)
        built_name = "invalid"  # the tunnel is refused anyway; its other settings are still checked
    ignorable = len(errors)
    if "mode" not in origin:
        errors.append(TableError(f"mode: missing: every tunnel needs one of {_KEYS['mode'].expect}"))
    r = _Reader(folded, origin, errors)
    for key, convert in _ALONE.items():
        if key not in r.table:
            continue
        values: list[tuple[int | None, Any]] = (
            list(enumerate(r.table[key])) if key in _LISTS else [(None, r.table[key])]
        )
        for index, value in values:
            try:
                with _at(r.named(key), index):
                    convert(value)
            except TableError as exc:
                errors.append(exc)
    if len(errors) == ignorable and "mode" in r.table:
        errors += _misplaced(r, Mode.from_name(r.table["mode"]).value)
    if len(errors) > ignorable:
        # An alias names two settings (key: ikey and okey): its mistake is found twice, and said once.
        unique = {(str(e), e.key, e.index): e for e in errors}
        return None, list(unique.values())
    try:
        config = _build(built_name, r, coalesce=coalesce, batch=batch)
    except TableError as exc:
        errors.append(exc)
    return (None, errors) if errors else (config, errors)


def _misplaced(r: _Reader, spec: ModeSpec) -> list[TableError]:
    """A refusal for each key that mode `spec` has no use for (a GRE option on ipip, ...)."""
    found: dict[str, TableError] = {}  # by the key as written: `seq` is refused once, not for iseq and oseq
    for place in options.PLACES:
        for key in r.table:
            if options.option(key).place is place and not place.takes(spec) and r.named(key) not in found:
                modes = " or ".join(m.value.name for m in Mode if place.takes(m.value))
                found[r.named(key)] = r.refuse(key, f"is {place.what}, for mode {modes}: not mode {spec.name}")
    return list(found.values())


def _build(name: str, r: _Reader, *, coalesce: bool, batch: bool) -> TunnelConfig:
    """The tunnel of a table whose keys are each right on their own; TableError for the first mistake
    between settings (in this order: the addresses and hub, the outer header, GRE's, keepalive, 6rd, encap)."""
    mode = r.get("mode", Mode.from_name)
    spec = mode.value
    local = r.get("local", _endpoint("local", spec), None)
    remote = r.get("remote", _endpoint("remote", spec), None)
    hub = _hub(r, mode, remote)
    outer = _outer(r, spec)
    gre = _gre(r)
    keepalive = _read(r, "keepalive", None)
    if keepalive is not None and (local is None or remote is None):
        raise r.refuse("keepalive", "keepalives go to the remote and come back to local: give both addresses")
    sixrd = _sixrd(r)
    encap = _encap(r, spec.outer)
    esp = _read(r, "esp_keys", None)
    with _at(None):
        params = TunnelParams(
            name=name,
            mode=mode,
            local=local,
            remote=remote,
            keepalive=keepalive,
            reflect_keepalives=r.get("reflect_keepalives", bool, True),
            hub=hub,
            sixrd=sixrd,
            prl=tuple(r.each("prl", _ALONE["prl"])),
            encap=encap,
            esp=esp,
            **gre,
            **outer,
        )
    addresses: list[Interface] = r.each("addresses", parse_interface)
    for i, iface in enumerate(addresses):
        with _at(r.named("addresses"), i):
            check_address_families(params, [iface])
    routes = r.each("routes", _route)
    for i, net in enumerate(routes):
        if net.version not in spec.families:
            raise TableError(
                f"routes: route {net} is IPv{net.version}, which mode {spec.name} cannot carry", "routes", i
            )
    mtu = r.get("mtu", int, None)
    if mtu is not None:
        _check_mtu(r, params, mtu, addresses)
    request = UpOptions(
        params=params,
        device=_read(r, "dev", None),
        mtu=mtu,
        addresses=addresses,
        coalesce=coalesce,
        batch=batch,
    )
    return TunnelConfig(name, r.table, request, tuple(routes), r.get("up", bool, True))


def _read(r: _Reader, key: str, default: Any = _ANY) -> Any:
    """A key's value through its converter (`_ALONE`), or `default` when it is not given."""
    return r.get(key, _ALONE[key], default)


def _hub(r: _Reader, mode: Mode, remote: bytes | None) -> HubParams | None:
    """remote = "any" on gre or ipip: a hub, with its neighbors and spokes; elsewhere the hub keys are refused."""
    spec = mode.value
    sit_family = spec.ip_protocol == 41 and spec.outer == 4
    if remote is None and not sit_family and mode not in (Mode.GRE, Mode.IPIP):
        raise r.refuse(
            "remote",
            f'mode {spec.name} needs a fixed remote address: "any" (the default) makes a point-to-multipoint hub, '
            "which only modes gre and ipip can be",
        )
    if spec.isatap and remote is not None:
        raise r.refuse("remote", 'mode isatap has no fixed remote: leave remote out, or give "any"')
    if remote is None and not sit_family:
        neighbors = tuple(r.each("neighbors", parse_neighbor))
        spokes = tuple(r.each("spokes", parse_spoke))
        timeout = _read(r, "neighbor_timeout", DEFAULT_TIMEOUT)
        with _at(r.named("spokes" if "spokes" in r.table else "neighbors")):
            return HubParams(neighbors, spokes, timeout)
    for key in _HUB_KEYS:
        if key in r.table:
            raise r.refuse(key, 'belongs to a hub: mode gre or ipip with remote "any"')
    return None


def _outer(r: _Reader, spec: ModeSpec) -> dict[str, Any]:
    """ttl, tos, pmtudisc and (over IPv6) flowlabel and encaplimit, as TunnelParams takes them; vti's are
    xfrm's (what it refuses was refused in `_misplaced`)."""
    default_ttl: int | None = IPV6_OUTER_TTL if spec.outer == 6 else None  # as Linux: inherit over IPv4
    ttl: int | None = _read(r, "ttl", default_ttl)
    pmtudisc: bool = r.get("pmtudisc", bool, True)
    tos: int | None = _read(r, "tos", VTI_OUTER[1] if spec.esp else DEFAULT_TOS)
    if spec.esp:  # vti: TTL 64, the inner TOS, the inner DF, as xfrm writes them
        ttl, _, pmtudisc = VTI_OUTER
    if ttl is not None and not pmtudisc and not spec.esp:
        # iproute2's words; the default ttl over IPv6 is 64, so say how to get inherit
        given = "" if "ttl" in r.table else f", the default over IPv{spec.outer}"
        raise r.refuse(
            "pmtudisc", f'false needs ttl = "inherit" (ttl is {ttl}{given}): ttl != 0 and nopmtudisc are incompatible'
        )
    outer6 = {o.name: _read(r, o.name) for o in options.placed(options.IPV6_OUTER) if o.name in r.table}
    if spec.esp and spec.outer == 6:  # vti6: xfrm's IPv6 header
        outer6 = {"flowlabel": None, "encaplimit": None}
    return {"ttl": ttl, "tos": tos, "pmtudisc": pmtudisc, **outer6}


def _gre(r: _Reader) -> dict[str, Any]:
    """The keys, sequence numbers and checksums, and how received ones are enforced."""
    flags = {key: r.get(key, bool, False) for key in ("iseq", "oseq", "icsum", "ocsum")}
    seq_policy = _read(r, "seq_policy", SeqPolicy.KERNEL)
    if seq_policy is not SeqPolicy.KERNEL and not flags["iseq"]:
        raise r.refuse("seq_policy", f"{seq_policy.value} says how received sequence numbers are enforced: needs iseq")
    csum_verify = _read(r, "csum_verify", "full")
    if csum_verify != "full" and not flags["icsum"]:
        raise r.refuse("csum_verify", f"{csum_verify} says how received GRE checksums are verified: needs icsum")
    keys = {key: _read(r, key, None) for key in ("ikey", "okey")}
    return {**keys, **flags, "seq_policy": seq_policy, "csum_verify": csum_verify}


def _sixrd(r: _Reader) -> SixRd | None:
    """6rd_prefix and 6rd_relay_prefix (`ip tunnel 6rd`); the relay prefix alone changes nothing, and is refused."""
    if "6rd_prefix" in r.table:
        relay = r.get("6rd_relay_prefix", str, "0.0.0.0/0")
        r.get("6rd_relay_prefix", lambda text: SixRd.from_text("2002::/16", text), None)  # the relay prefix alone
        return r.get("6rd_prefix", lambda text: SixRd.from_text(text, relay))
    if "6rd_relay_prefix" in r.table:
        raise r.refuse("6rd_relay_prefix", "needs 6rd_prefix (alone, it changes nothing)")
    return None


def _esp_keys(path: str) -> EspKeys:
    """esp_keys: the file read (and its permissions checked) now, at every load and reload."""
    return read_esp_keys(path, "esp_keys")


_ENCAP_COMPANIONS = tuple(o.name for o in options.OPTIONS if o.name in options.UDP.members and o.name != "encap")


def _encap(r: _Reader, outer: int) -> Encap | None:
    """encap, encap_sport, encap_dport and encap_csum (FOU / GUE): as `usertunnel up --encap ...`."""
    kind = _read(r, "encap", None)
    if kind is None:
        for key in _ENCAP_COMPANIONS:
            if key in r.table:
                raise r.refuse(key, 'belongs to encap = "fou" or "gue"')
        return None
    if "encap_dport" not in r.table:
        raise r.refuse("encap", f'"{kind.value}" needs encap_dport, the UDP port the peer receives on')
    return Encap(
        kind,
        dport=_read(r, "encap_dport"),
        sport=_read(r, "encap_sport", None),
        csum=r.get("encap_csum", bool, outer == 6),  # iproute2's defaults: none over IPv4, on over IPv6
    )


def _address_or_any(what: str) -> Callable[[str], bytes | None]:
    """An outer address of either family, "any", or a host name (resolved by `_endpoint` once the mode is
    known): what `_endpoint` accepts before it knows the mode."""
    return lambda text: None if text == "any" or is_host_name(text) else parse_address(text, what)


# The converters core/options.py cannot hold (they need the mode table, the resolver, a file, or this file's
# own words), by key.
_OWN: dict[str, Callable[[Any], object]] = {
    "mode": Mode.from_name,
    "local": _address_or_any("local"),
    "remote": _address_or_any("remote"),
    "dev": _device,
    "csum_verify": _csum_verify,
    "routes": _route,
    "encap_dport": _decimal(lambda text: parse_port(text, "encap_dport")),
    "esp_keys": lambda path: _esp_keys(path),
}


def _converter(option: options.Option) -> Callable[[Any], Any] | None:
    """How a key's TOML value is read: this file's own converter, or the table's parser of the text (an
    integer read as its decimal text, or with `hex_max` as the number it is)."""
    if option.name in _OWN:
        return _OWN[option.name]
    parse, toml = option.parse, option.toml
    if parse is None or toml is None:
        return None
    return _hex_or_int(parse, toml.hex_max, option.name) if toml.hex_max is not None else _decimal(parse)


# The keys whose values can be checked on their own, whatever the mode and the other keys say: each with
# the converter the build uses (for a list, of each element). mtu and the 6rd prefixes are checked in the
# build only: their bounds depend on the mode or on each other.
_ALONE: dict[str, Callable[[Any], Any]] = {
    o.name: convert
    for o in options.OPTIONS
    if o.toml is not None and o.toml.alone and (convert := _converter(o)) is not None
}
_LISTS = frozenset(key for key, spec in _KEYS.items() if spec.types == (list,))


def _check_mtu(r: _Reader, params: TunnelParams, mtu: int, addresses: Sequence[Interface]) -> None:
    """service.prepare's checks of a given MTU, made here so that a reload refuses it before touching anything."""
    top = 65535 - params.header_length
    if not 68 <= mtu <= top:
        raise r.refuse("mtu", f"{mtu} out of range: 68..{top}")
    carries_ipv6 = params.mode.value.families == {6} or any(a.version == 6 for a in addresses)
    if carries_ipv6 and mtu < IPV6_MIN_MTU:
        raise r.refuse("mtu", f"{mtu} is below IPv6's minimum of {IPV6_MIN_MTU}, and this tunnel carries IPv6")


# --- the file -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    tunnels: dict[str, TunnelConfig] = field(default_factory=dict)  # in file order
    coalesce: bool = True
    batch: bool = True


_TOML_ERROR = re.compile(r"^(?P<reason>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$")


def parse_config(text: str, path: str = "<config>") -> DaemonConfig:
    """The whole file, checked, or ConfigFileError with a `PATH:LINE: reason` line for each problem found."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_ERROR.match(str(exc))
        if match is None:
            raise ConfigFileError(path, [Problem(1, f"invalid TOML: {exc}")]) from None
        line = int(match["line"]) if match["line"] else text.count("\n") + 1
        column = f" (column {match['column']})" if match["column"] else " (at the end of the file)"
        raise ConfigFileError(path, [Problem(line, f"invalid TOML: {match['reason']}{column}")]) from None
    lines = _Lines(text)
    problems: list[Problem] = []

    def problem(where: tuple[str | int, ...], reason: str) -> None:
        problems.append(Problem(lines.line(where), reason))

    for key in document:
        if key not in _TOP_KEYS:
            problem((key,), _unknown(key, _TOP_KEYS) + " (tunnels are tables [tunnel.NAME])")
    settings = {"coalesce": True, "batch": True}
    daemon = document.get("daemon", {})
    if not isinstance(daemon, dict):
        problem(("daemon",), f"daemon: expected a table [daemon], got {_toml_type(daemon)}")
        daemon = {}
    for key, value in daemon.items():
        if key not in _DAEMON_KEYS:
            problem(("daemon", key), f"daemon: {_unknown(key, tuple(_DAEMON_KEYS))}")
        elif not isinstance(value, bool):
            problem(("daemon", key), f"daemon: {key}: expected {_BOOL}, got {_show(value)} ({_toml_type(value)})")
        else:
            settings[key] = value

    tunnels: dict[str, TunnelConfig] = {}
    declared = document.get("tunnel", {})
    if not isinstance(declared, dict):
        problem(
            ("tunnel",),
            f"tunnel: expected tables such as [tunnel.gre1], one per tunnel, got {_toml_type(declared)}"
            + (" (write [tunnel.NAME], not [[tunnel]])" if isinstance(declared, list) else ""),
        )
        declared = {}
    for name, table in declared.items():
        if not isinstance(table, dict):
            problem(("tunnel", name), f"tunnel {name}: expected a table of settings, got {_toml_type(table)}")
            continue
        config, errors = check_tunnel(name, table, coalesce=settings["coalesce"], batch=settings["batch"])
        if config is not None:
            tunnels[name] = config
        for mistake in errors:
            where: tuple[str | int, ...] = ("tunnel", name)
            if mistake.key is not None:
                where += (mistake.key,) if mistake.index is None else (mistake.key, mistake.index)
            problem(where, f"tunnel {name}: {mistake}")
    for name, other in _collisions(tunnels):
        problem(
            ("tunnel", name),
            f"tunnels {other} (line {lines.line(('tunnel', other))}) and {name} have the same mode family, local, "
            "remote and ikey: received packets could not tell them apart (the kernel says File exists); "
            "give one another local, remote or key",
        )
    if problems:
        raise ConfigFileError(path, problems)
    return DaemonConfig(tunnels, coalesce=settings["coalesce"], batch=settings["batch"])


def _collisions(tunnels: Mapping[str, TunnelConfig]) -> Iterator[tuple[str, str]]:
    """(name, earlier name) for each tunnel that core.lookup's TunnelTable.add would refuse after an earlier one."""
    owner: dict[tuple[int, bytes | None, bytes | None, int | None], str] = {}
    for name, tunnel in tunnels.items():
        p = tunnel.options.params
        keys = [(p.mode.value.table, p.local, p.remote, ikey) for ikey in p.ikeys]
        clash = next((owner[k] for k in keys if k in owner), None)
        if clash is not None:
            yield name, clash
            continue
        owner.update(dict.fromkeys(keys, name))


def load_config(path: str | os.PathLike[str]) -> DaemonConfig:
    """parse_config of a file; a file that cannot be read, or is not UTF-8, is a ConfigError too."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {shown}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigFileError(shown, [Problem(line, f"not UTF-8 text (byte {exc.start}: {exc.reason})")]) from None
    return parse_config(text, shown)


# --- reload ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a reload does: each tuple in file order (`remove`: in running order)."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


def plan(running: Mapping[str, TunnelConfig], wanted: DaemonConfig) -> Plan:
    """Tunnels to add, remove and restart so that `running` becomes `wanted`; the rest are left alone.

    A tunnel restarts when what it builds differs (options, addresses, routes, up,
    and the daemon's coalesce and batch): a new spelling of the same setting does not.
    """
    return Plan(
        add=tuple(n for n in wanted.tunnels if n not in running),
        remove=tuple(n for n in running if n not in wanted.tunnels),
        restart=tuple(n for n, t in wanted.tunnels.items() if n in running and not running[n].same_as(t)),
        unchanged=tuple(n for n, t in wanted.tunnels.items() if n in running and running[n].same_as(t)),
    )


# --- where things are written ---------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\r\n]*")


class _Lines:
    """The line where each key path is first written, read from a text tomllib has accepted.

    A path is a table's keys and, inside arrays, element indexes: ("tunnel", "gre1",
    "addresses", 1). A small reader of valid TOML; were it ever to stumble, it keeps
    what it found so far, and every other path falls back to line 1.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._i = 0
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.first: dict[tuple[str | int, ...], int] = {}
        with suppress(IndexError, ValueError, AttributeError, tomllib.TOMLDecodeError):
            self._document()

    def line(self, path: tuple[str | int, ...]) -> int:
        """The line of `path`, or of the nearest enclosing path written; 1 if none is."""
        for n in range(len(path), 0, -1):
            found = self.first.get(path[:n])
            if found is not None:
                return found
        return 1

    def _note(self, path: tuple[str | int, ...], at: int) -> None:
        line = bisect.bisect_right(self._starts, at)
        for n in range(1, len(path) + 1):
            self.first.setdefault(path[:n], line)

    def _skip(self, newlines: bool = False) -> None:
        text = self._text
        while self._i < len(text):
            c = text[self._i]
            if c in " \t" or (newlines and c in "\r\n"):
                self._i += 1
            elif c == "#":
                end = text.find("\n", self._i)
                self._i = len(text) if end < 0 else end
            else:
                return

    def _document(self) -> None:
        text = self._text
        table: tuple[str | int, ...] = ()
        while True:
            self._skip(newlines=True)
            if self._i >= len(text):
                return
            if text[self._i] == "[":
                start = self._i
                brackets = 2 if text.startswith("[[", start) else 1
                self._i += brackets
                table = self._key()
                self._i += brackets
                self._note(table, start)
            else:
                self._keyval(table)

    def _keyval(self, prefix: tuple[str | int, ...]) -> None:
        self._skip()
        start = self._i
        path = prefix + self._key()
        self._note(path, start)
        self._i += 1  # '='
        self._value(path)

    def _key(self) -> tuple[str, ...]:
        text = self._text
        parts: list[str] = []
        while True:
            self._skip()
            c = text[self._i]
            if c == '"':
                end = self._basic_end(self._i)
                parts.append(tomllib.loads("k = " + text[self._i : end])["k"])
                self._i = end
            elif c == "'":
                end = text.index("'", self._i + 1)
                parts.append(text[self._i + 1 : end])
                self._i = end + 1
            else:
                match = _BARE.match(text, self._i)
                if match is None:
                    raise ValueError(f"no key at {self._i}")
                parts.append(match.group())
                self._i = match.end()
            self._skip()
            if text[self._i] != ".":
                return tuple(parts)
            self._i += 1

    def _basic_end(self, i: int) -> int:
        """The index after a basic string opened at `i`."""
        text = self._text
        i += 1
        while text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1

    def _value(self, path: tuple[str | int, ...]) -> None:
        text = self._text
        self._skip()
        i = self._i
        if text.startswith('"""', i) or text.startswith("'''", i):
            quote = text[i]
            i += 3
            while not text.startswith(quote * 3, i):
                i += 2 if quote == '"' and text[i] == "\\" else 1
            i += 3
            while i < len(text) and text[i] == quote:  # up to two quotes may end the content
                i += 1
            self._i = i
        elif text[i] == '"':
            self._i = self._basic_end(i)
        elif text[i] == "'":
            self._i = text.index("'", i + 1) + 1
        elif text[i] == "[":
            self._i += 1
            n = 0
            while True:
                self._skip(newlines=True)
                if text[self._i] == "]":
                    self._i += 1
                    return
                self._note(path + (n,), self._i)
                self._value(path + (n,))
                n += 1
                self._skip(newlines=True)
                if text[self._i] == ",":
                    self._i += 1
        elif text[i] == "{":
            self._i += 1
            while True:
                self._skip()
                if text[self._i] == "}":
                    self._i += 1
                    return
                self._keyval(path)
                self._skip()
                if text[self._i] == ",":
                    self._i += 1
        else:
            match = _SCALAR.match(text, i)
            assert match is not None  # the pattern matches the empty string
            self._i = match.end()
