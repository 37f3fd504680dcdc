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

`lab p2mp` is the seed's "not implemented" point-to-multipoint hub: one hub
(local and key only) and three spokes, two of them behind NATs. Each spoke
pings the hub and the other spokes through it; the hub's neighbor table is
shown. Spokes run keepalives, which keep their NAT mappings open.

Topology (usertunnel.topology): a public segment 198.51.100.0/26 on a bridge,
NAT routers masquerading 198.51.100.64/28, 198.51.100.80/28. Everything is
removed at the end, Ctrl-C included.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

from . import netns
from .io import privilege
from .lab import READY_TIMEOUT, _Stop, guarded
from .topology import Host, Topology

KEY = 1234
HUB_PUBLIC = "198.51.100.1"


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


def _guarded(body: Callable[[_Stop, list[netns.UpProcess], list[Topology], TextIO], int]) -> int:
    """Run a lab's `body` under lab.guarded: however it ends, its tunnels stop and its namespaces go.
    `body` appends what it creates to the lists it is given."""
    out = sys.stdout
    procs: list[netns.UpProcess] = []
    topos: list[Topology] = []
    return guarded(
        lambda stop: body(stop, procs, topos, out), lambda: _cleanup(procs, topos[0] if topos else None, out)
    )


def run_nat_lab(count: int = 3) -> int:
    privilege.require(privilege.LAB)
    return _guarded(lambda stop, procs, topos, out: _nat_lab(stop, procs, topos, out, count))


def run_p2mp_lab(count: int = 2) -> int:
    privilege.require(privilege.LAB)
    return _guarded(lambda stop, procs, topos, out: _p2mp_lab(stop, procs, topos, out, count))


def _nat_lab(stop: _Stop, procs: list[netns.UpProcess], topos: list[Topology], out: TextIO, count: int) -> int:
    results: list[bool] = []
    print("== building the seed's NAT scenario: CPE -> NAT -> POP", file=out)
    topo = Topology("ut-nat")
    topos.append(topo)
    pop = topo.public_host("pop", HUB_PUBLIC)
    nat = topo.nat("nat", "198.51.100.12")
    cpe = topo.private_host("cpe", nat)
    print(
        f"   {pop.namespace} {pop.address} (public); {nat.namespace} {nat.public} masquerading {nat.inside};"
        f" {cpe.namespace} {cpe.address} behind it",
        file=out,
    )
    stop.check()
    print(f"== the CPE points at the POP's public address (keepalives every 2 s, key {KEY})", file=out)
    cpe_args = ["--local", cpe.address, "--remote", HUB_PUBLIC, "--key", str(KEY)]
    cpe_args += ["--address", "203.0.113.2/30", "--keepalive", "2", "--name", "tun0"]
    _start(stop, procs, cpe, cpe_args, out)
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
    return 0 if results == expected else 1


def _p2mp_lab(stop: _Stop, procs: list[netns.UpProcess], topos: list[Topology], out: TextIO, count: int) -> int:
    print("== building a hub and three spokes, two of them behind NAT", file=out)
    topo = Topology("ut-p2mp")
    topos.append(topo)
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
    hub_proc = _start(stop, procs, hub, [*hub_args, "--address", "203.0.113.1/24", "--name", "hub0"], out)
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
    print(f"== summary: {'every ping answered' if ok else 'PINGS FAILED'}", file=out)
    return 0 if ok else 1


def _cleanup(procs: list[netns.UpProcess], topo: Topology | None, out: TextIO) -> None:
    for proc in procs:
        proc.kill()
    if topo is not None:
        names = list(topo.namespaces)
        topo.remove()
        print(f"== removed {', '.join(names)}", file=out)
