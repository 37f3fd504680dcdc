"""The command line: `usertunnel up` runs one tunnel, `usertunnel lab` shows one working.

Every error a person can cause prints one line saying what was wrong and what
would be accepted, and exits 2. No traceback reaches a user.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import json
import logging
import os
import stat
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import __version__
from .core import options
from .core.errors import ConfigError
from .core.fou import Encap
from .core.neighbors import HubParams
from .core.params import VTI_OUTER, Mode, ModeSpec, TunnelParams, check_address_families
from .core.sit import SixRd
from .core.values import (
    parse_address,
    parse_key,
)
from .io import resolve
from .io.keyfile import read_esp_keys
from .run import control, down
from .teach import explain

if TYPE_CHECKING:
    from .front.request import UpOptions
from .io.metrics import parse_listen

EXIT_USAGE = 2

MODES = ", ".join(mode.value.name for mode in Mode)  # every mode, in the table's order (core/params.py)

UP_DESCRIPTION = f"""\
Create a TUN device (a TAP device for gretap and ip6gretap) and carry its
packets to REMOTE inside the outer header of --mode, exactly as Linux's
`ip tunnel add NAME mode MODE ...` (`ip -6 tunnel` over IPv6) would put them on
the wire: GRE (IP protocol 47, RFC 2784 with the key and sequence number of
RFC 2890), IPIP (protocol 4, RFC 2003) or SIT (protocol 41, RFC 4213: 6to4,
6rd, ISATAP) over IPv4, and their IPv6 counterparts (RFC 2473; GRE: RFC 7676).
Runs in the foreground until SIGINT/SIGTERM, then removes the device it created.
modes: {MODES}.

What each end must agree on: the mode; each side's --remote is the other's
--local; a key sent (okey) must be the key the peer expects (ikey); a side that
requires sequence numbers (iseq) or checksums (icsum) needs a peer that sends
them (oseq, ocsum).
"""

UP_EPILOG = """\
examples:
  # the seed's GRE tunnel, key 1234, with an inner address
  usertunnel up --mode gre --local 198.51.100.1 --remote 198.51.100.2 \\
      --key 1234 --address 203.0.113.1/30
  # IPIP with a fixed outer TTL
  usertunnel up --mode ipip --local 198.51.100.1 --remote 198.51.100.2 --ttl 64
  # every GRE option: different keys each way, sequence numbers, checksums
  usertunnel up --local 198.51.100.1 --remote 198.51.100.2 \\
      --ikey 1 --okey 2 --seq --csum --name gre-lab
  # a point-to-multipoint hub (the seed's "POP" with local and key only): spokes
  # point at 198.51.100.1 with key 1234 and are learned, even behind NAT
  usertunnel up --local 198.51.100.1 --remote any --key 1234 --address 203.0.113.1/24

The packets: an outer IPv4 header (TTL, TOS, DF as below) or IPv6 header (hop
limit, traffic class, flow label, the encapsulation limit option) + for the GRE
modes a GRE header (flags C/K/S, protocol type 0x0800, 0x86DD, or 0x6558 for
Ethernet frames, then checksum, key, sequence number when enabled) + the inner
packet unchanged. The other modes put nothing between the two.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(convert: Callable[[str], object]) -> Callable[[str], object]:
    """Turn a ConfigError from a converter into the argparse error argparse reports in one line."""

    def wrapper(text: str) -> object:
        try:
            return convert(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapper.__name__ = convert.__name__
    return wrapper


_DEFAULT = options.NOT_GIVEN  # an option not given: the mode decides


def _endpoint(what: str) -> Callable[[str], bytes | str]:
    """--local / --remote: an address (packed), or a host name kept as text and resolved once the mode
    says which family (params_from_args)."""

    def convert(text: str) -> bytes | str:
        return text if resolve.is_host_name(text) else parse_address(text, what)

    convert.__name__ = what
    return convert


def _remote(text: str) -> bytes | str | None:
    """The peer's outer address or host name, or None for `any` (a point-to-multipoint hub)."""
    return None if text == "any" else _endpoint("remote")(text)


def _resolved(value: bytes | str | None, outer: int, what: str) -> bytes | None:
    """An endpoint given as a host name, resolved in the outer family (logged: the name and what it gave)."""
    if not isinstance(value, str):
        return value
    address = resolve.resolve(value, outer, what)
    shown = ipaddress.ip_address(address)
    logging.getLogger("usertunnel").info("%s %s is %s (resolved once, at start)", what, value, shown)
    return address


def _queues(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise ConfigError(f"invalid queues {text!r}: a number of worker processes, 1..64")
    return n


def version() -> str:
    """The installed distribution's version (pyproject.toml's), or the package's own when usertunnel runs
    from a checkout that was never installed."""
    try:
        return importlib.metadata.version("usertunnel")
    except importlib.metadata.PackageNotFoundError:
        return __version__


# What the exit status of any usertunnel command means (README's table says what to do about each).
EXIT_STATUS = (
    ("0", "done; or stopped by SIGINT or SIGTERM, with everything it created removed"),
    (
        "1",
        "failed while running (its TUN device removed from outside, a tunnel of the daemon's file that cannot be "
        "created), the daemon refused a command or is not running, the tunnel named is not running, a lab step "
        "failed, or an internal error (a bug: see USERTUNNEL_DEBUG)",
    ),
    (
        "2",
        "bad input, nothing created: an option or value, a configuration file (every mistake is listed), missing "
        "privileges (root, or CAP_NET_ADMIN and CAP_NET_RAW), a device name or port already taken",
    ),
    ("130", "`usertunnel lab` interrupted (Ctrl-C, SIGTERM, SIGHUP), with everything it created removed"),
)

ENVIRONMENT = (
    ("USERTUNNEL_DEBUG=1", "an internal error prints its traceback too (for the bug report it asks for)"),
    (
        "USERTUNNEL_RUN_DIR=DIR",
        "the control sockets' directory instead of /run/usertunnel (instances and clients alike)",
    ),
    ("JOURNAL_STREAM", "set by systemd: when stderr is the journal, log lines carry no timestamp (it adds its own)"),
    ("NOTIFY_SOCKET", "set by systemd: `usertunnel daemon` reports readiness and reloads (Type=notify)"),
)


def _table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A help section: each name, then its meaning wrapped beside it."""
    width = max(len(name) for name, _ in rows) + 4
    lines = [f"{title}:"]
    for name, meaning in rows:
        wrapped = textwrap.wrap(meaning, 79 - width)
        lines.append(f"  {name:<{width - 2}}{wrapped[0]}")
        lines += [" " * width + more for more in wrapped[1:]]
    return "\n".join(lines)


TOP_EPILOG = f"""\
Run `usertunnel lab` to see a tunnel work between two network namespaces, and
`usertunnel COMMAND --help` for what a command takes.

{_table("exit status", EXIT_STATUS)}

{_table("environment", ENVIRONMENT)}
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global options, then each command's parser in `usertunnel --help`'s order."""
    parser = _top_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_up_parser(sub)
    _add_lab_parser(sub)
    control.add_parsers(sub)
    explain.add_parser(sub)
    _add_daemon_parsers(sub)
    _add_completion_parser(sub)
    down.add_parser(sub)
    return parser


def _top_parser() -> argparse.ArgumentParser:
    """`usertunnel` itself: --version, the log level, and iproute2's global options for `tunnel`."""
    parser = _Parser(
        prog="usertunnel",
        description=textwrap.fill(
            f"GRE, IPIP, SIT and IPv6 tunnels in userspace, over a Linux TUN device: {MODES}.", 79
        ),
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"usertunnel {version()}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="the least severe log lines shown (default info); timestamped on a terminal or in a file, not in "
        "systemd's journal (it adds its own)",
    )
    parser.add_argument(
        "-q", "--quiet", dest="log_level", action="store_const", const="warning", help="--log-level warning"
    )
    # iproute2's global options, for `usertunnel [-6] [-j] [-s] tunnel ...` as `ip [-6] [-j] [-s] tunnel ...`
    parser.add_argument("-6", dest="ipv6", action="store_true", help="`tunnel`: the ip -6 tunnel grammar and tunnels")
    parser.add_argument("-4", dest="ipv6", action="store_false", help="`tunnel`: IPv4 tunnels (the default)")
    parser.add_argument("-j", dest="global_json", action="store_true", help="`tunnel show`: JSON, as ip -j")
    parser.add_argument("-s", dest="global_stats", action="store_true", help="`tunnel show`: counters, as ip -s")
    return parser


def _add_up_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """`usertunnel up`: the tunnel's options (from core/options.py's table), then how the process runs."""
    up = sub.add_parser(
        "up",
        help="run one tunnel in the foreground",
        description=UP_DESCRIPTION,
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_tunnel_options(up)
    _add_process_options(up)


# `up`'s parsers that core/options.py cannot hold: they need the mode table or the resolver.
_UP_PARSERS: dict[str, Callable[[str], object]] = {
    "mode": Mode.from_name,
    "local": _endpoint("local"),
    "remote": _remote,
}


def _add_tunnel_options(up: argparse.ArgumentParser) -> None:
    """Every tunnel option of `up`, section by section, as core/options.py's table describes it."""
    for group in options.UP_GROUPS:
        section = up.add_argument_group(group.title, group.description)
        for name in group.members:
            option = options.BY_NAME.get(name)
            exclusive = option is not None and option.exclusive
            target = section.add_mutually_exclusive_group() if exclusive else section
            parse = _UP_PARSERS.get(name) or options.parse_of(name)
            for flag in options.flags_of(name):
                _add_flag(target, flag, parse)


def _add_flag(group: argparse._ActionsContainer, flag: options.Flag, parse: Callable[[str], object] | None) -> None:
    """One add_argument call, with only the words the table gives (argparse's own defaults otherwise)."""
    words: dict[str, Any] = {"help": flag.help}
    if flag.action is not None:
        words["action"] = flag.action
    if parse is not None and flag.action in (None, "append"):
        words["type"] = _checked(parse)
    if flag.dest is not None:
        words["dest"] = flag.dest
    if flag.default is not options.UNSET:
        default = flag.default
        words["default"] = list(default) if isinstance(default, list) else default  # a list: each parser's own
    if flag.metavar is not None:
        words["metavar"] = flag.metavar
    if flag.choices is not None:
        words["choices"] = flag.choices
    group.add_argument(*flag.names, **words)


def _add_process_options(up: argparse.ArgumentParser) -> None:
    """`up`'s options that say how the process runs, not what the tunnel is (they combine with --config)."""
    up.add_argument(
        "--user",
        metavar="USER",
        help="after creating the device and opening the raw socket, drop to USER (e.g. nobody) with no "
        "capabilities; the tunnel keeps forwarding. Without it usertunnel keeps the privileges it started with",
    )
    up.add_argument(
        "--no-coalesce",
        dest="coalesce",
        action="store_false",
        default=True,
        help="write each received packet into TUN on its own. By default in-order TCP segments of a flow "
        "received together are written as one large packet with a virtio_net_hdr (GSO), one trip through "
        "the kernel's stack instead of many; when the host forwards, each segment's checksum is checked first",
    )
    up.add_argument(
        "--config",
        metavar="FILE",
        help="take the tunnel from FILE, the TOML file `usertunnel daemon` reads (docs/config.md): its only "
        "[tunnel.NAME], or the one --name names. The tunnel's options then all come from the file: give no "
        "other tunnel option (--trace, --pcap, --user, --queues and --metrics still apply)",
    )
    up.add_argument(
        "--show-plan",
        action="store_true",
        help="print the code compiled for this tunnel (its transmit and receive plans, core/plan.py: what runs "
        "for each ordinary packet, with this tunnel's options folded in) and exit; creates nothing, needs no "
        "privileges",
    )
    up.add_argument(
        "--no-batch",
        dest="batch",
        action="store_false",
        default=True,
        help="one system call per packet instead of recvmmsg/sendmmsg batches (for measurements)",
    )
    up.add_argument(
        "--queues",
        type=_checked(_queues),
        default=1,
        metavar="N",
        help="N worker processes, each with its own queue of a multi-queue TUN device and its own raw socket; "
        "received packets are shared out by flow, so each flow stays in order (default 1: one process)",
    )
    up.add_argument(
        "--metrics",
        type=_checked(parse_listen),
        metavar="ADDR:PORT",
        help="serve Prometheus metrics over HTTP at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9477 or [::1]:9477: "
        "the counters of `usertunnel stats`, drops by reason, keepalive state, MTU and path MTU (with --queues, "
        "every worker's counters summed)",
    )
    _add_seeing_options(up)


def _add_seeing_options(up: argparse.ArgumentParser) -> None:
    """`up`'s section "seeing inside the tunnel": the log level, --trace, --pcap."""
    see = up.add_argument_group("seeing inside the tunnel")
    see.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="as `usertunnel --log-level`")
    see.add_argument(
        "--trace",
        action="store_true",
        help="print each packet's journey on stderr: what was read, the headers built or found, the tunnel "
        "the lookup chose and by which rule, the key, sequence and checksum checks, and every drop with its reason",
    )
    see.add_argument(
        "--pcap",
        metavar="FILE",
        help="write every packet to a pcapng file: interface 0 'underlay' (outer packets), interface 1 'tun' "
        "(inner packets); open it with wireshark or tshark",
    )


def _add_lab_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """`usertunnel lab`: a ready tunnel between two namespaces."""
    lab = sub.add_parser(
        "lab",
        help="build two namespaces, run a GRE tunnel between them, ping through it and show the packets",
        description="A ready lab: namespaces ut-lab-a and ut-lab-b joined by a veth pair on 198.51.100.0/24, "
        "a GRE tunnel with key 1234 between them carrying 203.0.113.0/30, a few pings through it, and every "
        "packet dissected field by field. Everything it creates is removed at the end, Ctrl-C included.",
    )
    lab.add_argument(
        "scenario",
        nargs="?",
        default="basic",
        choices=["basic", "nat", "p2mp"],
        help="basic (default): two hosts and one tunnel, every packet dissected; nat: the seed's CPE behind "
        "NAT and a POP, with the failing and the working configurations (with --encap fou|gue: two CPEs behind "
        "one NAT, in UDP); p2mp: a hub and three spokes, two behind NAT",
    )
    lab.add_argument(
        "--mode",
        default="gre",
        choices=["gre", "ipip"],
        help="the basic lab's tunnel mode: gre (default) or ipip (`usertunnel up` runs every mode)",
    )
    lab.add_argument(
        "--encap",
        choices=["fou", "gue"],
        help="the nat lab in UDP: two CPEs behind ONE NAT reach the POP at once (GRE cannot), FOU on RFC 8086's "
        "port 4754 or GUE on 6080; the NAT's mappings, the hub's neighbors by address and port, the UDP flows, and "
        "the hub following both CPEs when the NAT forgets and maps them anew",
    )
    lab.add_argument("--count", type=int, default=3, help="pings to send (default 3)")
    lab.add_argument("--key", type=_checked(parse_key), default=1234, help="GRE key (default 1234, the seed's)")
    lab.add_argument("--seq", action="store_true", help="both ends number their packets and require numbers")
    lab.add_argument("--csum", action="store_true", help="both ends checksum their packets and require checksums")
    lab.add_argument("--trace", action="store_true", help="host A runs with --trace; its lines are shown at the end")
    lab.add_argument(
        "--html",
        metavar="FILE",
        help="also write a page to FILE that draws the lab: its topology, one packet's journey through usertunnel "
        "out and one's in (as --trace reports them), and every captured packet as explain --html draws it",
    )


def _add_completion_parser(sub: argparse._SubParsersAction[Any]) -> None:
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash)",
        description="Print a bash completion script for usertunnel, generated from this command line (every "
        "command and option) and from ip tunnel's grammar (the words of `usertunnel tunnel`). Install it with "
        "`usertunnel completion bash > /etc/bash_completion.d/usertunnel`, or source it from ~/.bashrc.",
    )
    completion.add_argument("shell", choices=["bash"], help="the shell: bash")


DAEMON_DESCRIPTION = """\
Run many tunnels in one process. They share one raw socket per outer protocol
and are demultiplexed by the kernel's lookup order, as `ip tunnel` devices are
in one kernel. Tunnels come from --config FILE (TOML, see docs/config.md) and
from `usertunnel tunnel add|change|del`, while the daemon runs; SIGHUP or
`usertunnel reload` applies the file's changes (only changed tunnels restart;
an invalid file changes nothing). Runs in the foreground until SIGINT/SIGTERM,
then removes every device it created. Under systemd it reports readiness
(Type=notify); see docs/systemd.md.
"""

DAEMON_EPILOG = """\
examples:
  usertunnel daemon --config /etc/usertunnel/usertunnel.toml
  usertunnel daemon &      # then, as with ip:
  usertunnel tunnel add tunnel0 mode gre local 198.51.100.1 remote 198.51.100.2 key 1234
  ip addr add 203.0.113.1/30 dev tunnel0 && ip link set tunnel0 up
"""


def _add_daemon_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    daemon = sub.add_parser(
        "daemon",
        help="run many tunnels in one process, changed while it runs",
        description=DAEMON_DESCRIPTION,
        epilog=DAEMON_EPILOG,
        formatter_class=formatter,
    )
    daemon.add_argument("--config", metavar="FILE", help="TOML file declaring tunnels (docs/config.md)")
    daemon.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="as `usertunnel --log-level`")  # fmt: skip
    daemon.add_argument("--no-coalesce", dest="coalesce", action="store_false", default=True,
                        help="as `up --no-coalesce`, for every tunnel")  # fmt: skip
    daemon.add_argument("--no-batch", dest="batch", action="store_false", default=True,
                        help="as `up --no-batch`, for every tunnel")  # fmt: skip
    daemon.add_argument("--metrics", type=_checked(parse_listen), metavar="ADDR:PORT",
                        help="as `up --metrics`: every tunnel of the daemon, as they come and go")  # fmt: skip
    daemon.add_argument("--esp-keys-dir", default="/etc/usertunnel/esp", metavar="DIR",
                        help="where `tunnel add NAME mode vti|vti6 ... ikey K okey K` finds its keys: DIR/K.toml "
                        "(the key selects the keys file as Linux's mark selects xfrm states; default "
                        "%(default)s); a configuration file's tunnel names its own (esp_keys)")  # fmt: skip
    tunnel = sub.add_parser(
        "tunnel",
        help="ip tunnel's grammar against the daemon: add, change, del, show, prl, 6rd",
        description="`usertunnel [-6] tunnel ...` takes the words of `ip [-6] tunnel ...` (run "
        "`usertunnel tunnel help`). add, change, del, prl and 6rd go to the running `usertunnel daemon`; "
        "show lists every usertunnel tunnel of this network namespace (daemon and `up` alike) as "
        "`ip tunnel show` does; with -j as JSON (the fields of `usertunnel stats -h`).",
        formatter_class=formatter,
        add_help=False,  # `help` and any word belong to the ip tunnel grammar
    )
    # -h and --help as every other command takes them (first, or anywhere among the words: no tunnel is
    # named so); the words belong to the grammar
    tunnel.add_argument("-h", "--help", dest="tunnel_help", action="store_true", help="the same as `tunnel help`")
    tunnel.add_argument("words", nargs=argparse.REMAINDER, metavar="ARGS")
    reload = sub.add_parser(
        "reload",
        help="make the daemon apply its config file again (as SIGHUP)",
        description="Ask the running `usertunnel daemon` to re-read its --config file. A file with an error "
        "changes nothing and the error is printed with its line; otherwise tunnels it no longer declares are "
        "removed, new ones added, changed ones restarted, and the others left alone.",
    )
    reload.add_argument("--dir", type=Path, metavar="DIR", help="the control sockets' directory (as `show --dir`)")


def _cmd_completion(args: argparse.Namespace) -> int:
    from .front import completion

    sys.stdout.write(completion.script(build_parser(), args.shell))
    return 0


def _cmd_daemon(args: argparse.Namespace) -> int:
    from .run.daemon import daemon

    return daemon(
        args.config, coalesce=args.coalesce, batch=args.batch, metrics_address=args.metrics, esp_dir=args.esp_keys_dir
    )


def _cmd_tunnel(args: argparse.Namespace) -> int:
    """`usertunnel [-6] [-j] [-s] tunnel ...`: errors in iproute2's words on stderr; exit 2 for a command
    that does not parse, 1 when the daemon refuses it."""
    from .front import iptunnel

    if args.tunnel_help or "-h" in args.words or "--help" in args.words:
        sys.stdout.write(iptunnel.HELP6 if args.ipv6 else iptunnel.HELP)
        return 0
    try:
        command = iptunnel.parse(args.words, ipv6=args.ipv6)
    except iptunnel.IpTunnelError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    if command.action == "help":
        sys.stdout.write(iptunnel.HELP6 if args.ipv6 else iptunnel.HELP)
        return 0
    if command.action == "show":
        problems: list[str] = []
        try:
            found = control.query(control.run_directory(), None, "stats", problems=problems)
        except control.ControlError as exc:
            print(f"usertunnel tunnel: error: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, control.Denied) else 1
        outer = 6 if args.ipv6 else 4
        chosen = [t for t in found if _outer_version(t) == outer and iptunnel.matches(command, t)]
        if args.global_json:
            text = (
                json.dumps(chosen if args.global_stats else [control.without_counters(t) for t in chosen], indent=2)
                + "\n"
            )
        elif args.global_stats:
            text = control.format_stats(chosen)
        else:
            text = "".join(f"{line}\n" for t in chosen for line in iptunnel.show_lines(t))
        sys.stdout.write(text)
        for problem in problems:
            print(f"usertunnel tunnel: error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    unsupported = [key for key in iptunnel.EXTRA_KEYS if key in command.table]
    if unsupported:
        words = {"dscp_inherit": "dscp inherit (tclass inherit copies the inner DSCP)",
                 "allow_localremote": "[no]allow-localremote"}  # fmt: skip
        print(f"usertunnel tunnel: error: {', '.join(words[k] for k in unsupported)}: not in usertunnel",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    message = {"cmd": "tunnel", "action": command.action, "name": command.name, "table": command.table}
    try:
        control.ask_daemon(message)
    except control.Refused as exc:
        print(exc.reason, file=sys.stderr)
        return 1
    except control.ControlError as exc:
        print(f"usertunnel tunnel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, control.Denied) else 1
    return 0


def _outer_version(t: dict[str, Any]) -> int:
    try:
        return Mode.from_name(str(t.get("mode"))).value.outer
    except ConfigError:
        return 4


def _cmd_reload(args: argparse.Namespace) -> int:
    try:
        answer = control.ask_daemon({"cmd": "reload"}, args.dir)
    except control.Refused as exc:
        print(f"usertunnel reload: refused, nothing changed: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE if exc.bad_configuration else 1
    except control.ControlError as exc:
        print(f"usertunnel reload: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, control.Denied) else 1
    for what in ("added", "removed", "restarted", "rekeyed", "unchanged"):
        names = answer.get(what) or []
        print(f"{what}: {' '.join(names) if names else '-'}")
    errors = answer.get("errors") or []
    for error in errors:
        print(f"usertunnel reload: error: {error}", file=sys.stderr)
    return 1 if errors else 0


def params_from_args(args: argparse.Namespace) -> TunnelParams:
    mode: Mode = args.mode
    if args.key is not None and (args.ikey is not None or args.okey is not None):
        raise ConfigError("--key sets both keys: give either --key, or --ikey and/or --okey")
    ikey = args.key if args.key is not None else args.ikey
    okey = args.key if args.key is not None else args.okey
    hub = None
    spec = mode.value
    sit_family = spec.ip_protocol == 41 and spec.outer == 4
    if args.remote is None and not sit_family:
        hub = HubParams(tuple(args.neighbor), tuple(args.spoke), args.neighbor_timeout)
    elif args.neighbor or args.spoke:
        raise ConfigError("--neighbor and --spoke belong to a hub: use them with --remote any (gre, ipip)")
    sixrd = None
    if args.sixrd_prefix is not None:
        if not options.takes("6rd_prefix", spec):
            raise ConfigError("--6rd-prefix belongs to --mode sit")
        sixrd = SixRd.from_text(args.sixrd_prefix, args.sixrd_relay_prefix)
    ttl, tos, pmtudisc, outer6 = _outer_from_args(args, spec)
    encap = _encap_from_args(args)
    esp = None
    if args.esp_keys is not None:
        process = (("--trace", args.trace), ("--pcap", args.pcap), ("--queues", args.queues > 1))
        unable = [name for name, on in process if on]
        if unable:
            raise ConfigError(f"{' and '.join(unable)} cannot be used with --esp-keys in this version")
        esp = read_esp_keys(args.esp_keys)
    return TunnelParams(
        name=args.name or f"{mode.value.name}%d",
        mode=mode,
        local=_resolved(args.local, spec.outer, "local"),
        remote=_resolved(args.remote, spec.outer, "remote"),
        ikey=ikey,
        okey=okey,
        iseq=args.seq or args.iseq,
        oseq=args.seq or args.oseq,
        icsum=args.csum or args.icsum,
        ocsum=args.csum or args.ocsum,
        ttl=ttl,
        tos=tos,
        pmtudisc=pmtudisc,
        keepalive=args.keepalive,
        reflect_keepalives=args.reflect_keepalives,
        hub=hub,
        seq_policy=args.seq_policy,
        csum_verify=args.csum_verify,
        sixrd=sixrd,
        prl=tuple(args.prl),
        encap=encap,
        esp=esp,
        **outer6,
    )


def _outer_from_args(args: argparse.Namespace, spec: ModeSpec) -> tuple[int | None, int | None, bool, dict[str, Any]]:
    """ttl, tos, pmtudisc and the IPv6 outer options (as TunnelParams' keywords) from the command line; those
    the mode has no use for refused (vti's outer header is xfrm's)."""
    ipv6_given = _given(args, options.IPV6_OUTER)
    if spec.outer == 4 and ipv6_given:
        raise ConfigError(f"{' and '.join(ipv6_given)} belong to IPv6 outer headers; mode {spec.name} runs over IPv4")
    outer6: dict[str, Any] = {
        o.name: getattr(args, o.name)
        for o in options.placed(options.IPV6_OUTER)
        if getattr(args, o.name) is not _DEFAULT
    }
    ttl = args.ttl if args.ttl is not _DEFAULT else (64 if spec.outer == 6 else None)
    tos, pmtudisc = args.tos, args.pmtudisc
    if spec.esp:
        if _given(args, options.OUTER):
            raise ConfigError(
                f"mode {spec.name}: the outer TTL, TOS and DF are xfrm's (TTL 64, TOS inherited, DF copied from "
                "the inner packet), as on Linux: no --ttl, --tos or --nopmtudisc"
            )
        ttl, tos, pmtudisc = VTI_OUTER
        if spec.outer == 6:  # vti6: xfrm's IPv6 header, no encapsulation limit option
            if ipv6_given:
                raise ConfigError(
                    f"mode {spec.name}: the outer IPv6 header is xfrm's (the inner traffic class and flow label, no "
                    f"encapsulation limit option): no {' or '.join(ipv6_given)}"
                )
            outer6 = {"flowlabel": None, "encaplimit": None}
    return ttl, tos, pmtudisc, outer6


def _given(args: argparse.Namespace, place: options.Place) -> list[str]:
    """The first flag of each option of `place` that this command line sets to other than its default."""
    return [
        o.flags[0].names[0]
        for o in options.placed(place)
        if getattr(args, options.flag_dest(o.flags[0])) != o.flags[0].default
    ]


def _encap_from_args(args: argparse.Namespace) -> Encap | None:
    """--encap and its companions, or None; each companion without --encap is refused, as is what this
    version cannot do over UDP (--trace, --pcap, --queues)."""
    if args.encap is None:
        given = [f"--{n}" for n in ("encap-dport", "encap-sport") if getattr(args, n.replace("-", "_")) is not None]
        given += ["--[no-]encap-csum"] if args.encap_csum is not None else []
        if given:
            raise ConfigError(f"{' and '.join(given)} belong to --encap fou|gue")
        return None
    if args.encap_dport is None:
        raise ConfigError(f"--encap {args.encap.value} needs --encap-dport PORT: the UDP port the peer receives on")
    process = (("--trace", args.trace), ("--pcap", args.pcap), ("--queues", args.queues > 1))
    unable = [name for name, on in process if on]
    if unable:
        raise ConfigError(f"{' and '.join(unable)} cannot be used with --encap in this version")
    csum = args.encap_csum if args.encap_csum is not None else args.mode.value.outer == 6  # iproute2's defaults
    return Encap(args.encap, dport=args.encap_dport, sport=args.encap_sport, csum=csum)


# `up` options that say how the process runs, not what the tunnel is: they combine with --config.
_PROCESS_OPTIONS = frozenset({"command", "config", "name", "trace", "pcap", "user", "queues", "metrics",
                              "show_plan", "quiet", "log_level"})  # fmt: skip


def _options_from_file(args: argparse.Namespace) -> UpOptions:
    """`up --config FILE`: the tunnel of FILE (its only one, or --name's), with this command's process options."""
    from dataclasses import replace

    from .front.config import load_config

    defaults = build_parser().parse_args(["up", "--config", args.config])
    given = sorted(
        f"--{key.replace('_', '-')}"
        for key, value in vars(args).items()
        if key not in _PROCESS_OPTIONS and value != getattr(defaults, key, value)
    )
    if given:
        raise ConfigError(
            f"--config {args.config} takes the tunnel's options from the file; {', '.join(given)} given too: "
            "put them in the file"
        )
    tunnels = load_config(args.config).tunnels
    if args.name is not None:
        cfg = tunnels.get(args.name)
        if cfg is None:
            have = ", ".join(tunnels) or "none"
            raise ConfigError(f"{args.config} has no [tunnel.{args.name}] (its tunnels: {have})")
    elif len(tunnels) == 1:
        (cfg,) = tunnels.values()
    else:
        have = ", ".join(tunnels) or "none"
        raise ConfigError(f"{args.config} has {len(tunnels)} tunnels ({have}): say which with --name")
    chosen = replace(
        cfg.options, trace=args.trace, pcap=args.pcap, user=args.user, queues=args.queues,
        routes=cfg.routes, link_up=cfg.up,
    )  # fmt: skip
    if getattr(args, "metrics", None) is not None:
        chosen = replace(chosen, metrics=args.metrics)
    return chosen


def _cmd_up(args: argparse.Namespace) -> int:
    from .front.request import UpOptions
    from .run.service import up as up_one
    from .run.workers import up_queues

    def up(request: UpOptions) -> int:
        return up_queues(request) if request.queues > 1 else up_one(request)

    if args.config is not None:
        request = _options_from_file(args)
        if args.show_plan:
            from .core.encap import Tunnel
            from .core.plan import describe_plans

            print(describe_plans(Tunnel(request.params)))
            return 0
        return up(request)
    if args.remote is _DEFAULT:
        raise ConfigError("--remote is required (an address, a host name or 'any'), or --config FILE")
    params = params_from_args(args)
    check_address_families(params, args.address)
    if args.show_plan:
        from .core.encap import Tunnel
        from .core.plan import describe_plans

        print(describe_plans(Tunnel(params)))
        return 0
    return up(
        UpOptions(
            params=params,
            device=args.dev,
            mtu=args.mtu,
            addresses=args.address,
            trace=args.trace,
            pcap=args.pcap,
            user=args.user,
            coalesce=args.coalesce,
            batch=args.batch,
            queues=args.queues,
            metrics=args.metrics,
        )
    )


def _cmd_lab(args: argparse.Namespace) -> int:
    from .teach.lab import run_lab

    if args.scenario != "basic":
        from .teach.lab_nat import run_nat_lab, run_p2mp_lab

        if args.mode != "gre" or args.seq or args.csum or args.trace:
            raise ConfigError(
                f"the {args.scenario} lab runs GRE with key 1234; --mode/--seq/--csum/--trace are for the basic lab"
            )
        if args.scenario == "nat":
            return run_nat_lab(args.count, html=args.html, encap=args.encap)
        if args.encap is not None:
            raise ConfigError(f"--encap {args.encap} is for the nat lab (usertunnel lab nat --encap {args.encap})")
        return run_p2mp_lab(args.count, html=args.html)

    if args.encap is not None:
        raise ConfigError(f"--encap {args.encap} is for the nat lab (usertunnel lab nat --encap {args.encap})")

    if args.mode != "gre" and (args.seq or args.csum):
        raise ConfigError("--seq and --csum are GRE options; the ipip lab has none")
    flags = [flag for flag, on in (("--seq", args.seq), ("--csum", args.csum)) if on]
    return run_lab(mode=args.mode, count=args.count, key=args.key, options=flags, trace=args.trace, html=args.html)


LOG_LEVELS = ("debug", "info", "warning", "error")


def log_destination(stream: TextIO) -> str:
    """Where log lines written to `stream` end up: "journal" (systemd's: JOURNAL_STREAM names this very
    stream's device and inode), "terminal", "file", or "other" (a pipe or socket to some other program)."""
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no descriptor (a test's StringIO), or a closed one
        return "other"
    if os.environ.get("JOURNAL_STREAM") == f"{status.st_dev}:{status.st_ino}":
        return "journal"
    if stream.isatty():
        return "terminal"
    return "file" if stat.S_ISREG(status.st_mode) else "other"


class LogFormatter(logging.Formatter):
    """`usertunnel: MESSAGE`, after a timestamp on a terminal or in a file (where nothing else dates the line);
    in the journal, which dates each line itself, after the syslog priority journald reads (`<4>` a warning)."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, destination: str) -> None:
        timestamps = destination in ("terminal", "file")
        stamp = "%(asctime)s.%(msecs)03d " if timestamps else ""
        super().__init__(f"{stamp}usertunnel: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        self.journal = destination == "journal"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"<{self.PRIORITIES.get(record.levelno, 6)}>{line}" if self.journal else line


def setup_logging(level: str, stream: TextIO | None = None) -> None:
    """Log usertunnel's lines of `level` and above to `stream` (stderr); other libraries' from info up."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogFormatter(log_destination(stream)))
    chosen = getattr(logging, level.upper())
    logging.basicConfig(level=max(chosen, logging.INFO), handlers=[handler], force=True)
    logging.getLogger("usertunnel").setLevel(chosen)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    commands = {
        "up": _cmd_up,
        "lab": _cmd_lab,
        "show": control.run,
        "stats": control.run,
        "explain": explain.run,
        "daemon": _cmd_daemon,
        "tunnel": _cmd_tunnel,
        "reload": _cmd_reload,
        "completion": _cmd_completion,
        "down": down.run,
    }
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"usertunnel {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`usertunnel explain ... | head`): stop quietly, as other tools do; stdout is
        # pointed at /dev/null so that flushing it at exit raises nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        if os.environ.get("USERTUNNEL_DEBUG"):
            traceback.print_exc()
        print(
            f"usertunnel {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set USERTUNNEL_DEBUG=1 for a traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
