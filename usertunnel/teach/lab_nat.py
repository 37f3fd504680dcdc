"""`usertunnel lab nat` and `usertunnel lab p2mp`: the seed's NAT and point-to-multipoint scenarios, running.

`lab nat` is the seed's figure: a CPE behind a NAT router, a POP on the public
side. The CPE's tunnel points at the POP; the question is what the POP's
tunnel must point at. Three attempts, one after another, with the same CPE:

  1. remote = the CPE's own address (private, behind the NAT): fails. The
     CPE's packets arrive from the NAT's public address, which no tunnel
     expects (the POP counts them as no_tunnel), as the seed warns;
  2. remote = the NAT's public address: works (the seed's configuration;
     it needs that address known in advance);
  3. remote = any (usertunnel's hub): works with nothing known in advance;
     the POP learns the CPE behind the NAT's address.

`lab nat --encap fou` (or `--encap gue`) is the case the seed says GRE cannot
do: TWO CPEs behind ONE NAT reach the POP at the same time. GRE has no ports,
so the NAT can keep one inner host's GRE per public address; in UDP it maps
each CPE to its own port, and the POP (a hub) learns each by address and
port. Both CPEs send from UDP port 6000: the NAT keeps 6000 for the first and
picks another port for the second. The lab prints the NAT's mappings, the
hub's neighbor table (one public address, two ports) and the UDP flows on the
public segment; then lets the NAT forget (its UDP conntrack timeout, which
the lab sets and reports, passes with nothing sent: keepalives do not run
over UDP yet), and the next packets get new mappings, CPE 2 first this time,
so both ports change: the hub follows each CPE to its new port.

`lab p2mp` is the seed's "not implemented" point-to-multipoint hub: one hub
(local and key only) and three spokes, two of them behind NATs. Each spoke
pings the hub and the other spokes through it; the hub's neighbor table is
shown. Spokes run keepalives, which keep their NAT mappings open.

With --html FILE, a page draws the topology, the CPE's (or the hub's) --trace
of one packet out and one in, and every GRE packet captured on the POP's (the
hub's) public interface.

Topology (usertunnel.teach.topology): a public segment 198.51.100.0/26 on a bridge,
NAT routers masquerading 198.51.100.64/28, 198.51.100.80/28. Everything is
removed at the end, Ctrl-C included.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..io import netns, privilege
from . import compact
from .describe import describe, summary
from .lab import READY_TIMEOUT, Transcript, _Stop, check_report, guarded, write_report
from .picture import network
from .topology import Host, Mapping, Nat, Topology

KEY = 1234
HUB_PUBLIC = "198.51.100.1"
ENCAP_PORTS = {"fou": 4754, "gue": 6080}  # RFC 8086's GRE-in-UDP port; GUE's usual one (explain reads both)
CPE_PORT = 6000  # both CPEs send from it: only the NAT's mapping tells them apart
UDP_TIMEOUT = 5  # seconds: the NAT forgets an idle UDP mapping (Linux: 30 unreplied, 120 both ways)
NAT_CHOICE = "(the NAT's choice)"  # said after every port the NAT picked (it picks at random)


def _start(stop: _Stop, procs: list[netns.UpProcess], host: Host, args: list[str], out: TextIO) -> netns.UpProcess:
    proc = netns.UpProcess(host.namespace, args)
    procs.append(proc)
    line = proc.wait_ready(READY_TIMEOUT).removeprefix("usertunnel: ")
    print(f"   {host.namespace}: usertunnel up {' '.join(args)}\n      -> {line}", file=out)
    stop.check()
    return proc


def _ping(stop: _Stop, host: Host, target: str, count: int, out: TextIO) -> bool:
    status, text = stop.run(host.namespace, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", target], 30 + count)
    summary = next((line for line in text.splitlines() if "packets transmitted" in line), "no answer")
    print(f"   {host.namespace}: ping {target}: {summary}", file=out)
    return status == 0


def _wait_answered(stop: _Stop, host: Host, timeout: float) -> None:
    """Wait (bounded) until `host`'s keepalives are answered: line protocol up, none unanswered.

    Attempts 1 and 2 cannot answer the CPE's keepalives (their inner packet is addressed to the CPE's private
    address, which the POP cannot reach), and the fourth unanswered one takes the CPE's line protocol down, some
    six seconds in: when the hub of attempt 3 starts. The hub answers the next one; until then the CPE's pings
    would not enter its tunnel, and the attempt would fail or lose a ping by timing alone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, text = stop.run(host.namespace, [sys.executable, "-m", "usertunnel", "stats", "-j"], 10)
        states = [t.get("keepalive") or {} for t in json.loads(text)] if status == 0 else []
        if states and all(k.get("state") == "up" and k.get("unanswered") == 0 for k in states):
            return
        time.sleep(0.2)


def _show(stop: _Stop, host: Host, out: TextIO) -> None:
    status, text = stop.run(host.namespace, [sys.executable, "-m", "usertunnel", "show"], 10)
    for line in text.splitlines():
        print(f"   {line}", file=out)


def _drops(stats: dict[str, dict[str, object]]) -> str:
    found: dict[str, int] = {}
    for entry in stats.values():
        drops = entry.get("drops")
        if isinstance(drops, dict):
            for reason, n in drops.items():
                found[reason] = found.get(reason, 0) + int(n)
    return ", ".join(f"{reason} {n}" for reason, n in sorted(found.items())) or "none"


class _Run:
    """What a lab creates, for its cleanup, and what its report needs."""

    def __init__(self, html: str | None) -> None:
        self.html = html
        self.out: TextIO = sys.stdout if html is None else Transcript(sys.stdout)
        self.procs: list[netns.UpProcess] = []
        self.topos: list[Topology] = []
        self.captures: list[netns.Capture] = []

    def capture(self, host: Host) -> netns.Capture | None:
        """With a report to write, capture on `host`'s public interface."""
        if self.html is None:
            return None
        capture = netns.Capture(host.namespace, "pub")
        self.captures.append(capture)
        return capture

    def report(
        self,
        title: str,
        verdict: str,
        net: network.Network,
        traced: netns.UpProcess | None,
        who: str,
        protocol: int = 47,
    ) -> None:
        """With --html, the page: the topology, `traced`'s journeys, every `protocol` packet captured."""
        if self.html is None or not isinstance(self.out, Transcript):
            return
        packets: list[tuple[str, bytes]] = []
        for capture in self.captures:
            capture.stop()
            for _, outgoing, pkt in capture.packets:
                if len(pkt) > 20 and pkt[9] == protocol:
                    direction = f"sent by the {who}" if outgoing else f"received by the {who}"
                    e = describe(pkt)
                    said = compact.summary(e) if protocol == 47 else summary(e)
                    packets.append((f"{len(packets) + 1}. {direction}: {said}", pkt))
        lines = traced.lines if traced is not None else []
        write_report(self.html, title, verdict, net, traced.namespace if traced else "", lines, packets, self.out)


def _guarded(html: str | None, body: Callable[[_Stop, _Run], int]) -> int:
    """Run a lab's `body` under lab.guarded: however it ends, its captures and tunnels stop and its
    namespaces go. `body` records what it creates in the `_Run` it is given."""
    check_report(html)
    privilege.require(privilege.LAB)
    run = _Run(html)
    return guarded(lambda stop: body(stop, run), lambda: _cleanup(run))


def run_nat_lab(count: int = 3, html: str | None = None, encap: str | None = None) -> int:
    """`usertunnel lab nat`: the seed's three attempts over GRE; with `encap` (fou, gue), two CPEs behind one
    NAT over UDP, and the NAT's rebinding followed."""
    if encap is not None:
        return _guarded(html, lambda stop, run: _udp_nat_lab(stop, run, count, encap))
    return _guarded(html, lambda stop, run: _nat_lab(stop, run, count))


def run_p2mp_lab(count: int = 2, html: str | None = None) -> int:
    return _guarded(html, lambda stop, run: _p2mp_lab(stop, run, count))


def _public(host: Host, label: str, *lines: str, col: float, row: float) -> network.Node:
    return network.Node(host.namespace, label, (f"pub {host.address}/26", *lines), col, row)


def _nat_node(nat: Nat, label: str, col: float, row: float) -> network.Node:
    inside = f"lan {nat.inside.network_address + 1}/{nat.inside.prefixlen}"
    return network.Node(nat.namespace, label, (f"pub {nat.public}/26", inside, "masquerade"), col, row, "nat")


def _segment(topo: Topology, col: float, row: float) -> network.Node:
    return network.Node(topo.ix, "public segment", ("bridge br0", "198.51.100.0/26"), col, row, "switch")


def _private(host: Host, label: str, *lines: str, col: float, row: float) -> network.Node:
    assert host.nat is not None
    return network.Node(host.namespace, label, (f"lan {host.address}/{host.nat.inside.prefixlen}", *lines), col, row)


def _nat_lab(stop: _Stop, run: _Run, count: int) -> int:
    out, procs = run.out, run.procs
    results: list[bool] = []
    print("== building the seed's NAT scenario: CPE -> NAT -> POP", file=out)
    topo = Topology("ut-nat")
    run.topos.append(topo)
    pop = topo.public_host("pop", HUB_PUBLIC)
    nat = topo.nat("nat", "198.51.100.12")
    cpe = topo.private_host("cpe", nat)
    print(
        f"   {pop.namespace} {pop.address} (public); {nat.namespace} {nat.public} masquerading {nat.inside};"
        f" {cpe.namespace} {cpe.address} behind it",
        file=out,
    )
    run.capture(pop)
    stop.check()
    print(f"== the CPE points at the POP's public address (keepalives every 2 s, key {KEY})", file=out)
    cpe_args = ["--local", cpe.address, "--remote", HUB_PUBLIC, "--key", str(KEY)]
    cpe_args += ["--address", "203.0.113.2/30", "--keepalive", "2", "--name", "tun0"]
    if run.html is not None:
        cpe_args.append("--trace")
    cpe_proc = _start(stop, procs, cpe, cpe_args, out)
    attempts = [
        (f"remote {cpe.address}: the CPE's own, private address (the seed: does not work)", cpe.address),
        (f"remote {nat.public}: the NAT's public address (the seed's working setup)", nat.public),
        ("remote any: usertunnel's hub, nothing known in advance", "any"),
    ]
    for number, (title, remote) in enumerate(attempts, 1):
        print(f"== {number}. POP with {title}", file=out)
        pop_args = ["--local", HUB_PUBLIC, "--remote", remote, "--key", str(KEY)]
        pop_args += ["--address", "203.0.113.1/30", "--name", "tun0"]
        pop_proc = _start(stop, procs, pop, pop_args, out)
        if remote == "any":
            _wait_answered(stop, cpe, 3 * 2 + 1)  # a keepalive period is 2 s
        ok = _ping(stop, cpe, "203.0.113.1", count, out)
        if ok:
            _ping(stop, pop, "203.0.113.2", count, out)  # and back, through the NAT's mapping
        if remote == "any":
            _show(stop, pop, out)
        stats = pop_proc.stop()
        procs.remove(pop_proc)
        print(f"   the POP's drops: {_drops(stats)}", file=out)
        results.append(ok)
    expected = [False, True, True]
    verdict = "as the seed says, and fixed" if results == expected else "UNEXPECTED"
    marks = ", ".join(f"{n}. {'works' if r else 'fails'}" for n, r in enumerate(results, 1))
    print(f"== summary: {marks} ({verdict})", file=out)
    net = network.Network(
        "usertunnel lab nat: a CPE behind NAT, a POP on the public side",
        [
            _private(cpe, "CPE", "tun0 203.0.113.2/30", col=0, row=0),
            _nat_node(nat, "NAT router", col=1, row=0),
            _segment(topo, col=2, row=0),
            _public(pop, "POP", "tun0 203.0.113.1/30", col=3, row=0),
        ],
        [
            network.Link(cpe.namespace, nat.namespace, "private"),
            network.Link(nat.namespace, topo.ix, "public"),
            network.Link(topo.ix, pop.namespace, "public"),
        ],
        [network.Link(cpe.namespace, pop.namespace, f"GRE key {KEY}, CPE keepalives every 2 s")],
        capture=(pop.namespace, "packets captured on pub"),
        grid=(240, 150),
    )
    run.report("usertunnel lab nat", f"summary: {marks} ({verdict})", net, cpe_proc, "POP")
    return 0 if results == expected else 1


def _port(port: int, chosen: bool) -> str:
    """A port as the NAT lab prints it: one the NAT picked (at random) says so, for the reader and so that
    a comparison of two runs (tests/test_tutorial.py) can set it aside by name."""
    return f"port {port} {NAT_CHOICE}" if chosen else f"port {port}"


def _mappings(stop: _Stop, topo: Topology, nat: Nat, cpes: list[Host], out: TextIO) -> dict[str, int]:
    """Print the NAT's UDP mappings for the CPEs (its conntrack table); their public ports by CPE address."""
    stop.check()
    found = {m.inside[0]: m for m in topo.nat_mappings(nat) if m.inside[0] in {c.address for c in cpes}}
    print(f"   the NAT's mappings ({nat.namespace}'s conntrack table, /proc/net/nf_conntrack):", file=out)
    for cpe in cpes:
        m: Mapping | None = found.get(cpe.address)
        if m is None:
            print(f"     {cpe.address}: none", file=out)
            continue
        chosen = m.public[1] != m.inside[1]
        print(f"     {cpe.address} {_port(m.inside[1], False)} -> {m.public[0]} {_port(m.public[1], chosen)}", file=out)
    return {address: m.public[1] for address, m in found.items()}


def _n(count: int, what: str) -> str:
    return f"{count} {what}" + ("" if count == 1 else "es" if what.endswith("ss") else "s")


def _neighbors(stop: _Stop, pop: Host, inner: dict[str, str], out: TextIO) -> dict[str, tuple[str, int]]:
    """Print the hub's neighbor table (from `usertunnel stats -j`: outer address, UDP port, key, hosts), each
    spoke with the hosts learned behind it; return where each inner host is, by CPE label."""
    status, text = stop.run(pop.namespace, [sys.executable, "-m", "usertunnel", "stats", "-j"], 10)
    tunnels = json.loads(text) if status == 0 else []
    hub = tunnels[0] if tunnels else {}
    peers = hub.get("neighbors", [])
    counters = hub.get("hub", {})
    outers = len({str(p["outer"]) for p in peers})
    ports = len({int(p.get("port", 0)) for p in peers if p["hosts"]})
    what = f"{_n(len(peers), 'neighbor')}: {_n(outers, 'public address')}, {_n(ports, 'port')} with hosts behind"
    print(f"   the hub's neighbor table (usertunnel stats -j on {pop.namespace}), {what} (learned"
          f" {counters.get('learned')}, moved {counters.get('moved')}, expired {counters.get('expired')}):",
          file=out)  # fmt: skip
    label = {address: name for name, address in inner.items()}
    where: dict[str, tuple[str, int]] = {}
    for peer in sorted(peers, key=lambda p: (not p["hosts"], sorted(p["hosts"]))):
        port = int(peer.get("port", 0))
        hosts = " ".join(f"{h} ({label.get(h, '?')})" for h in sorted(peer["hosts"])) or "- (its host moved away)"
        print(f"     {peer['outer']} {_port(port, port != CPE_PORT)} key {peer['key']}: {hosts}", file=out)
        for h in peer["hosts"]:
            where[label.get(h, h)] = (str(peer["outer"]), port)
    return where


def _carried(pkt: bytes) -> str:
    """What a captured tunnel datagram carries, in explain's words: GUE's protocol, GRE's key, the inner
    addresses."""
    words = []
    e = describe(pkt)
    for layer in e.layers[2:]:
        values = {f.name: f.value for f in layer.fields}
        if layer.kind == "GUE" and "Proto/ctype" in values:
            words.append(f"GUE proto {values['Proto/ctype']}")
        elif layer.kind == "GRE":
            words.append(f"GRE key {values['key']}" if "key" in values else "GRE")
        elif layer.kind in ("IPv4", "IPv6"):
            words.append(f"inside {values.get('source address')} > {values.get('destination address')}")
            break
    return ", ".join(words) or summary(e)


def _flows(packets: list[tuple[float, bool, bytes]], where: str, cpe_ports: set[int], out: TextIO) -> None:
    """The UDP datagrams captured on the POP's public interface, by flow (addresses and ports), in order of
    their first datagram: how many, and what they carry."""
    flows: dict[tuple[str, int, str, int], list[bytes]] = {}
    for _, _, pkt in packets:
        if len(pkt) >= 28 and pkt[9] == 17:
            ihl = (pkt[0] & 0x0F) * 4
            sport, dport = int.from_bytes(pkt[ihl : ihl + 2], "big"), int.from_bytes(pkt[ihl + 2 : ihl + 4], "big")
            key = (str(ipaddress.IPv4Address(pkt[12:16])), sport, str(ipaddress.IPv4Address(pkt[16:20])), dport)
            flows.setdefault(key, []).append(pkt)
    print(f"   the UDP datagrams on the public segment (captured on {where}), by flow:", file=out)
    for (src, sport, dst, dport), pkts in flows.items():
        a = _port(sport, src != HUB_PUBLIC and sport not in cpe_ports)
        b = _port(dport, dst != HUB_PUBLIC and dport not in cpe_ports)
        print(f"     {src} {a} > {dst} {b}: {len(pkts)} datagrams ({_carried(pkts[0])})", file=out)
    if not flows:
        print("     none", file=out)


def _wait_forgotten(stop: _Stop, topo: Topology, nat: Nat, hosts: list[Host], timeout: float) -> bool:
    """Wait (bounded) until the NAT holds no mapping for `hosts`: its conntrack table lists no live entry of
    theirs (an expired entry is gone for the next packet even before the kernel's collector frees it)."""
    addresses = {h.address for h in hosts}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stop.check()
        if not any(m.inside[0] in addresses for m in topo.nat_mappings(nat)):
            return True
        time.sleep(0.25)
    return False


def _udp_nat_lab(stop: _Stop, run: _Run, count: int, kind: str) -> int:
    out, procs = run.out, run.procs
    port = ENCAP_PORTS[kind]
    name = {"fou": "FOU: GRE in UDP, RFC 8086's port", "gue": "GUE, UDP port"}[kind]
    print(f"== building the seed's NAT case in UDP ({name} {port}): TWO CPEs behind ONE NAT, and a POP", file=out)
    topo = Topology("ut-nat")
    run.topos.append(topo)
    pop = topo.public_host("pop", HUB_PUBLIC)
    nat = topo.nat("nat", "198.51.100.12")
    cpes = topo.private_hosts(["cpe1", "cpe2"], nat)
    behind = " and ".join(f"{c.namespace} {c.address}" for c in cpes)
    print(f"   {pop.namespace} {pop.address} (public); {nat.namespace} {nat.public} masquerading {nat.inside} for"
          f" {behind} (a bridge on its inside)", file=out)  # fmt: skip
    # Routes spoke to spoke traffic back into the tunnel, as the p2mp lab's hub.
    for key in ("ip_forward", "conf.all.send_redirects", "conf.default.send_redirects"):
        netns.run(pop.namespace, ["sysctl", "-q", "-w", f"net.ipv4.{key}={'1' if key == 'ip_forward' else '0'}"],
                  check=True)  # fmt: skip
    topo.set_conntrack_udp_timeout(nat, UDP_TIMEOUT)
    timeouts = topo.conntrack_timeouts(nat, "udp")
    said = " and ".join(f"{k} {v} s" for k, v in timeouts.items())
    print(f"   the NAT forgets an idle UDP mapping: {said} (set by the lab; Linux's defaults are 30 s, for a flow"
          " seen one way, and 120 s, both ways)", file=out)  # fmt: skip
    capture = netns.Capture(pop.namespace, "pub")
    run.captures.append(capture)
    stop.check()
    encap = ["--encap", kind, "--encap-dport", str(port)]
    print(f"== the POP: a hub (remote any, key {KEY}) receiving {kind.upper()} on UDP port {port}", file=out)
    hub_args = ["--local", HUB_PUBLIC, "--remote", "any", "--key", str(KEY), *encap]
    _start(stop, procs, pop, [*hub_args, "--address", "203.0.113.1/24", "--name", "tun0"], out)
    print(f"== the CPEs: remote = the POP's public address, both sending from UDP port {CPE_PORT}", file=out)
    inner = {}
    for number, cpe in enumerate(cpes, 1):
        inner[f"CPE {number}"] = f"203.0.113.2{number}"
        args = ["--local", cpe.address, "--remote", HUB_PUBLIC, "--key", str(KEY), *encap]
        args += ["--encap-sport", str(CPE_PORT), "--address", f"{inner[f'CPE {number}']}/24", "--name", "tun0"]
        _start(stop, procs, cpe, args, out)
    results = []
    phases = (
        ("1. both CPEs reach the POP through the one NAT, at once: each pings it, and it pings each", cpes),
        (None, list(reversed(cpes))),
    )
    where_before: dict[str, tuple[str, int]] = {}
    first = 0
    for title, order in phases:
        if title is None:
            print(f"== 2. the NAT forgets: nothing crosses it for {UDP_TIMEOUT} s "
                  "(the CPEs run without --keepalive here)", file=out)  # fmt: skip
            forgotten = _wait_forgotten(stop, topo, nat, cpes, UDP_TIMEOUT + 15)
            print(f"   the NAT's conntrack table is {'empty' if forgotten else 'STILL NOT EMPTY'}; now CPE 2 speaks"
                  f" first, and gets port {CPE_PORT}; CPE 1 gets another", file=out)  # fmt: skip
            results.append(forgotten)
        else:
            print(f"== {title}", file=out)
        first = len(capture.packets)
        ok = all([_ping(stop, cpe, "203.0.113.1", count, out) for cpe in order])
        ok = all([_ping(stop, pop, inner[f"CPE {cpes.index(cpe) + 1}"], count, out) for cpe in cpes]) and ok
        ok = _ping(stop, cpes[0], inner["CPE 2"], count, out) and ok  # CPE to CPE, through the hub
        mapped = _mappings(stop, topo, nat, cpes, out)
        where = _neighbors(stop, pop, inner, out)
        _flows(capture.packets[first:], f"{pop.namespace}'s pub", {CPE_PORT}, out)
        # The hub sends to each CPE where the NAT maps it now: one public address, a port each.
        expected = {f"CPE {n}": (nat.public, mapped.get(c.address, -1)) for n, c in enumerate(cpes, 1)}
        ok = ok and where == expected and len({p for _, p in where.values()}) == 2
        if where_before:
            ok = ok and all(where[k][1] != where_before[k][1] for k in where)  # both CPEs moved, and were followed
        where_before = where
        results.append(ok)
    good = all(results)
    verdict = (
        "two CPEs behind one NAT reached the POP at once (one public address, two ports), and the hub followed "
        "both to their new ports"
        if good
        else "UNEXPECTED: see above"
    )
    print(f"== summary: {verdict}", file=out)
    net = network.Network(
        f"usertunnel lab nat --encap {kind}: two CPEs behind one NAT, a POP on the public side",
        [
            _private(cpes[0], "CPE 1", f"tun0 {inner['CPE 1']}/24", f"sport {CPE_PORT}", col=0, row=0),
            _private(cpes[1], "CPE 2", f"tun0 {inner['CPE 2']}/24", f"sport {CPE_PORT}", col=0, row=1),
            _nat_node(nat, "NAT router", col=1, row=0.5),
            _segment(topo, col=2, row=0.5),
            _public(pop, "POP (hub)", "tun0 203.0.113.1/24", f"{kind} port {port}", col=3, row=0.5),
        ],
        [
            network.Link(cpes[0].namespace, nat.namespace, "private"),
            network.Link(cpes[1].namespace, nat.namespace, "private"),
            network.Link(nat.namespace, topo.ix, "public"),
            network.Link(topo.ix, pop.namespace, "public"),
        ],
        [network.Link(c.namespace, pop.namespace, f"{kind.upper()} key {KEY}") for c in cpes],
        capture=(pop.namespace, "packets captured on pub"),
        grid=(240, 150),
    )
    run.report(f"usertunnel lab nat --encap {kind}", f"summary: {verdict}", net, None, "POP", protocol=17)
    return 0 if good else 1


def _p2mp_lab(stop: _Stop, run: _Run, count: int) -> int:
    out, procs = run.out, run.procs
    print("== building a hub and three spokes, two of them behind NAT", file=out)
    topo = Topology("ut-p2mp")
    run.topos.append(topo)
    hub = topo.public_host("hub", HUB_PUBLIC)
    spokes = [
        topo.public_host("spoke1", "198.51.100.11"),
        topo.private_host("spoke2", topo.nat("nat2", "198.51.100.12")),
        topo.private_host("spoke3", topo.nat("nat3", "198.51.100.13")),
    ]
    for s in spokes:
        behind = f" behind {s.nat.namespace} ({s.nat.public})" if s.nat else " (public)"
        print(f"   {s.namespace} {s.address}{behind}", file=out)
    # The hub routes spoke-to-spoke traffic back into the tunnel: forwarding on, no ICMP redirects.
    for key in ("ip_forward", "conf.all.send_redirects", "conf.default.send_redirects"):
        value = "1" if key == "ip_forward" else "0"
        netns.run(hub.namespace, ["sysctl", "-q", "-w", f"net.ipv4.{key}={value}"], check=True)
    stop.check()
    print(f"== the hub: local and key only, as in the seed's point-to-multipoint example (key {KEY})", file=out)
    hub_args = ["--local", HUB_PUBLIC, "--remote", "any", "--key", str(KEY)]
    hub_args += ["--address", "203.0.113.1/24", "--name", "hub0"]
    if run.capture(hub) is not None:
        hub_args.append("--trace")
    hub_proc = _start(stop, procs, hub, hub_args, out)
    print("== the spokes: remote = the hub, nothing else to know", file=out)
    inner = {}
    for number, s in enumerate(spokes, 1):
        inner[s.namespace] = f"203.0.113.1{number}"
        args = ["--local", s.address, "--remote", HUB_PUBLIC, "--key", str(KEY), "--keepalive", "2"]
        _start(stop, procs, s, [*args, "--address", f"{inner[s.namespace]}/24", "--name", "tun0"], out)
    print("== each spoke pings the hub", file=out)
    ok = all([_ping(stop, s, "203.0.113.1", count, out) for s in spokes])
    print("== spokes ping each other through the hub", file=out)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        ok = _ping(stop, spokes[a], inner[spokes[b].namespace], count, out) and ok
    print("== the hub's neighbor table (usertunnel show)", file=out)
    _show(stop, hub, out)
    stats = hub_proc.stop()
    procs.remove(hub_proc)
    hub_stats = stats.get("hub0", {})
    print(f"== the hub's counters: {json.dumps(hub_stats.get('hub', {}), sort_keys=True)}", file=out)
    print(f"   drops: {_drops(stats)}", file=out)
    verdict = f"summary: {'every ping answered' if ok else 'PINGS FAILED'}"
    print(f"== {verdict}", file=out)
    nodes = [
        _public(hub, "hub", "hub0 203.0.113.1/24", "remote any", col=1.5, row=0),
        _segment(topo, col=1.5, row=1),
        _public(spokes[0], "spoke 1", f"tun0 {inner[spokes[0].namespace]}/24", col=0, row=1),
    ]
    links = [network.Link(hub.namespace, topo.ix, "public"), network.Link(spokes[0].namespace, topo.ix, "public")]
    for number, (s, col) in enumerate(((spokes[1], 0.75), (spokes[2], 2.25)), 2):
        assert s.nat is not None
        nodes.append(_nat_node(s.nat, f"NAT {number}", col=col, row=2))
        nodes.append(_private(s, f"spoke {number}", f"tun0 {inner[s.namespace]}/24", col=col, row=3))
        links.append(network.Link(s.nat.namespace, topo.ix, "public"))
        links.append(network.Link(s.namespace, s.nat.namespace, "private"))
    tunnels = [network.Link(hub.namespace, s.namespace, f"key {KEY}") for s in spokes]
    net = network.Network(
        "usertunnel lab p2mp: a hub and three spokes", nodes, links, tunnels, (hub.namespace, "captured on pub")
    )
    run.report("usertunnel lab p2mp", verdict, net, hub_proc, "hub")
    return 0 if ok else 1


def _cleanup(run: _Run) -> None:
    for capture in run.captures:
        capture.stop()
    for proc in run.procs:
        proc.kill()
    if run.topos:
        topo = run.topos[0]
        names = list(topo.namespaces)
        topo.remove()
        print(f"== removed {', '.join(names)}", file=run.out)
