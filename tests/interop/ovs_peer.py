"""Open vSwitch's userspace GRE as a tunnel peer: a private ovsdb-server and ovs-vswitchd in a namespace.

Topology (all in namespaces created here and always removed):

    ut-ovs-h: usertunnel runs here               ut-ovs-o: ovsdb-server + ovs-vswitchd (datapath_type=netdev)
    ut-ovs-h0 198.51.100.1/24  <---veth--->  ut-ovs-o0 (no address), a port of br-phy
                                             br-phy  198.51.100.2/24   internal port: the tunnel endpoint
                                             br-int  203.0.113.2/30    internal port: the inner IP stack
                                             gre<n>  type=gre, packet_type=legacy_l3, a port of br-int

Theory of operation. The userspace datapath does not hand GRE to the kernel:
it receives the underlay through the veth (an AF_PACKET port of br-phy), and
when br-phy's NORMAL action would deliver a GRE packet to br-phy's own address
it pops the tunnel header itself (tnl_pop) and hands the inner packet to the
GRE port on br-int. To send, it looks up the remote in its own routing table
(copied from the kernel's routes in this namespace, hence the underlay address
on the br-phy internal port) and its own neighbour cache (learnt by snooping
ARP on br-phy), and pushes the outer headers itself (tnl_push). So the
underlay address must sit on br-phy, not on the veth.

With packet_type=legacy_l3 the GRE port carries bare IPv4 (GRE protocol
0x0800); OpenFlow still sees Ethernet frames: OVS adds a dummy Ethernet header
to what the port receives and strips the Ethernet header from what is output
to it. The flows on br-int only have to give received packets br-int's MAC as
destination; the route back to 203.0.113.1 uses a permanent neighbour entry on
br-int, so no ARP responder is needed.

Each test replaces the GRE port (`gre`): a new port name gives OVS a new
netdev, so its GRE sequence numbers start again from 0 (reconfiguring a port
in place keeps counting). Every external command and every wait is bounded.

OvsSwitch is one such OVS end, in a namespace and on an uplink device given
to it (its addresses and MACs as parameters); OvsPeer is the interop tests'
topology around one of them. benchmarks/bench.py runs two OvsSwitches, one
per end of its own veth, to measure OVS's userspace GRE against itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from pyroute2 import NetNS
from pyroute2.netlink.exceptions import NetlinkError

from usertunnel.io import netns

NS_HOST, NS_OVS = "ut-ovs-h", "ut-ovs-o"
VETH_HOST, VETH_OVS = "ut-ovs-h0", "ut-ovs-o0"
HOST_ADDR, OVS_ADDR = "198.51.100.1", "198.51.100.2"
OURS, THEIRS = "203.0.113.1", "203.0.113.2"  # inner: usertunnel's tunnel device, br-int
BR_PHY, BR_INT = "br-phy", "br-int"
BR_PHY_MAC, BR_INT_MAC = "02:00:00:00:01:02", "02:00:00:00:00:02"
OURS_MAC = "02:00:00:00:00:01"  # what br-int believes 203.0.113.1's MAC is; OVS strips it anyway
UNDERLAY_MTU = 1500
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl")
START_TIMEOUT = 15.0
COMMAND_TIMEOUT = 15.0


class PeerError(RuntimeError):
    """The OVS peer could not be set up or configured; the message says what and shows OVS's log."""


def _tool(name: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def missing() -> str | None:
    """Why the OVS peer cannot run here, or None."""
    absent = [name for name in TOOLS if _tool(name) is None]
    if absent:
        return f"Open vSwitch is not installed ({', '.join(absent)} not found; Debian package openvswitch-switch)"
    if not SCHEMA.exists():
        return f"the Open vSwitch database schema {SCHEMA} is missing (Debian package openvswitch-common)"
    return None


def _wait_for(what: str, check: Callable[[], bool], timeout: float, diagnose: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise PeerError(f"OVS peer: {what} did not happen within {timeout:.0f} s; {diagnose()}")
        time.sleep(0.05)


class OvsSwitch:
    """ovsdb-server and ovs-vswitchd (datapath_type=netdev) in `namespace`, with `uplink` (a device already there,
    up, without address) as a port of br-phy; the underlay address (a /24) on br-phy, the inner one (a /30) on
    br-int. `start` boots it, `close` stops the daemons and removes the work directory (not the namespace)."""

    def __init__(
        self,
        namespace: str,
        uplink: str,
        underlay: str,
        inner: str,
        remote: str,
        remote_inner: str,
        phy_mac: str = BR_PHY_MAC,
        int_mac: str = BR_INT_MAC,
        remote_inner_mac: str = OURS_MAC,
    ) -> None:
        """`remote`: the GRE remote_ip (the far end's underlay address); `remote_inner`: the far end's inner
        address, reached through the GRE port (a permanent neighbour entry on br-int with `remote_inner_mac`)."""
        self.namespace, self.uplink = namespace, uplink
        self.underlay, self.inner, self.remote, self.remote_inner = underlay, inner, remote, remote_inner
        self.phy_mac, self.int_mac, self.remote_inner_mac = phy_mac, int_mac, remote_inner_mac
        self.workdir = Path(tempfile.mkdtemp(prefix="ut-ovs-"))
        self.env = {
            **os.environ,
            "OVS_RUNDIR": str(self.workdir),
            "OVS_DBDIR": str(self.workdir),
            "OVS_LOGDIR": str(self.workdir),
            "OVS_SYSCONFDIR": str(self.workdir),
        }
        self.db = f"unix:{self.workdir / 'db.sock'}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gre_port: str | None = None
        self._ports_made = 0

    @property
    def vswitchd_pid(self) -> int | None:
        proc = self.procs.get("ovs-vswitchd")
        return None if proc is None else proc.pid

    def start(self) -> None:
        self._start_daemons()
        self._build_bridges()
        self._wait_for_underlay_route()

    def close(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL), remove the work directory."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _start_daemons(self) -> None:
        db_file = self.workdir / "conf.db"
        self._run(["ovsdb-tool", "create", str(db_file), str(SCHEMA)], in_ns=False)
        self._daemon(
            "ovsdb-server",
            [
                str(db_file),
                f"--remote=p{self.db}",
                f"--unixctl={self.workdir / 'ovsdb-server.ctl'}",
                f"--pidfile={self.workdir / 'ovsdb-server.pid'}",
                f"--log-file={self.workdir / 'ovsdb-server.log'}",
            ],
        )
        _wait_for(
            "ovsdb-server listening on its socket",
            lambda: (self.workdir / "db.sock").exists(),
            START_TIMEOUT,
            self.diagnose,
        )
        self.vsctl("--no-wait", "init")
        self._daemon(
            "ovs-vswitchd",
            [
                self.db,
                f"--unixctl={self.workdir / 'ovs-vswitchd.ctl'}",
                f"--pidfile={self.workdir / 'ovs-vswitchd.pid'}",
                f"--log-file={self.workdir / 'ovs-vswitchd.log'}",
            ],
        )

    def _daemon(self, name: str, args: Sequence[str]) -> None:
        """Start an OVS daemon in the foreground (no --detach), inside the namespace, logging to the work directory."""
        tool = _tool(name)
        assert tool is not None
        with open(self.workdir / f"{name}.stderr", "wb") as stderr:
            self.procs[name] = netns.popen(
                self.namespace,
                [tool, "-vconsole:off", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self.env,
                cwd=self.workdir,
            )

    def _build_bridges(self) -> None:
        # ovs-vsctl waits (bounded by --timeout) until ovs-vswitchd has applied each change.
        self.vsctl(
            "add-br", BR_PHY,
            "--", "set", "Bridge", BR_PHY, "datapath_type=netdev", f"other-config:hwaddr={self.phy_mac}",
            "--", "add-port", BR_PHY, self.uplink,
            "--", "add-br", BR_INT,
            "--", "set", "Bridge", BR_INT, "datapath_type=netdev", f"other-config:hwaddr={self.int_mac}",
            "fail-mode=secure",
        )  # fmt: skip
        with NetNS(self.namespace) as ns:
            _wait_for(
                f"{BR_PHY} and {BR_INT} appearing as devices",
                lambda: bool(ns.link_lookup(ifname=BR_PHY) and ns.link_lookup(ifname=BR_INT)),
                START_TIMEOUT,
                self.diagnose,
            )
            phy = ns.link_lookup(ifname=BR_PHY)[0]
            ns.addr("add", index=phy, address=self.underlay, prefixlen=24)
            ns.link("set", index=phy, state="up")
            inner = ns.link_lookup(ifname=BR_INT)[0]
            ns.addr("add", index=inner, address=self.inner, prefixlen=30)
            ns.link("set", index=inner, state="up")
            ns.neigh("add", dst=self.remote_inner, lladdr=self.remote_inner_mac, ifindex=inner, state=0x80)  # PERMANENT

    def _wait_for_underlay_route(self) -> None:
        network = ipaddress.ip_network(f"{self.underlay}/24", strict=False)
        _wait_for(
            "OVS copying the underlay route from the kernel",
            lambda: f"{network} dev {BR_PHY}" in self.appctl("ovs/route/show"),
            START_TIMEOUT,
            self.diagnose,
        )

    def _learn_remote_mac(self) -> None:
        """Have OVS's neighbour cache (tnl/neigh) learn the remote's MAC, as it would in service.

        OVS snoops ARP replies crossing a bridge, but only once a tunnel port exists; without the entry
        the first packet OVS tunnels would be lost to its own ARP request. So, with the GRE port in
        place, make the kernel behind br-phy ARP for the remote's address.
        """
        if self.remote in self.appctl("tnl/neigh/show"):
            return
        with NetNS(self.namespace) as ns, contextlib.suppress(NetlinkError):
            ns.neigh("del", dst=self.remote, ifindex=ns.link_lookup(ifname=BR_PHY)[0])
        ping = netns.run(self.namespace, ["ping", "-c", "1", "-W", "2", self.remote], timeout=COMMAND_TIMEOUT)
        if ping.returncode != 0:
            raise PeerError(
                f"OVS peer: {self.namespace} cannot ping {self.remote} over {BR_PHY}: {ping.stdout.decode()}"
            )
        _wait_for(
            f"OVS learning {self.remote}'s MAC (tnl/neigh/show)",
            lambda: self.remote in self.appctl("tnl/neigh/show"),
            START_TIMEOUT,
            self.diagnose,
        )

    # --- the GRE port -----------------------------------------------------------------------------------------

    def gre(self, options: Mapping[str, str], inner_mtu: int) -> str:
        """Replace the GRE port by a new one with `options` (besides remote_ip and packet_type); its name.

        `inner_mtu` becomes br-int's MTU, so that OVS's encapsulated packets fit the underlay.
        """
        self._ports_made += 1
        port = f"gre{self._ports_made}"
        if self.gre_port is not None:
            # A transaction of its own: OVS refuses a second port with the same tunnel identity (type,
            # remote_ip, local_ip, in_key) while the first exists, even if the same transaction deletes it.
            self.vsctl("del-port", BR_INT, self.gre_port)
            self.gre_port = None
        settings = {"remote_ip": self.remote, "packet_type": "legacy_l3", **options}
        args = [
            "add-port", BR_INT, port,
            "--", "set", "Interface", port, "type=gre", *(f"options:{k}={v}" for k, v in settings.items()),
            "--", "set", "Interface", BR_INT, f"mtu_request={inner_mtu}",
        ]  # fmt: skip
        self.vsctl(*args)
        self.gre_port = port
        error = self.vsctl("get", "Interface", port, "error").strip()
        if error not in ("[]", ""):
            raise PeerError(f"OVS refused GRE port {port} with options {settings}: {error}")
        flows = self.workdir / "br-int.flows"
        flows.write_text(
            f"priority=10,in_port={port},ip,actions=mod_dl_src:{self.remote_inner_mac},mod_dl_dst:{self.int_mac},"
            "LOCAL\n"
            f"priority=10,in_port=LOCAL,ip,nw_dst={self.remote_inner},actions=output:{port}\n"
            "priority=0,actions=drop\n"
        )
        self.ofctl("replace-flows", BR_INT, str(flows))
        self._learn_remote_mac()
        return port

    # --- commands -------------------------------------------------------------------------------------------

    def vsctl(self, *args: str) -> str:
        return self._run(["ovs-vsctl", f"--db={self.db}", f"--timeout={COMMAND_TIMEOUT:.0f}", *args])

    def ofctl(self, *args: str) -> str:
        return self._run(["ovs-ofctl", *args])

    def appctl(self, *args: str) -> str:
        return self._run(["ovs-appctl", "-t", str(self.workdir / "ovs-vswitchd.ctl"), *args])

    def _run(self, argv: list[str], in_ns: bool = True) -> str:
        """Run an OVS tool (in the namespace unless `in_ns` is False) with the private directories; its stdout."""
        tool = _tool(argv[0])
        assert tool is not None
        full = [tool, *argv[1:]]
        if in_ns:
            proc = netns.popen(self.namespace, full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        else:
            proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        try:
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise PeerError(f"OVS peer: `{' '.join(argv)}` did not finish; {self.diagnose()}") from None
        if proc.returncode != 0:
            raise PeerError(
                f"OVS peer: `{' '.join(argv)}` exited {proc.returncode}: {err.decode(errors='replace').strip()}; "
                f"{self.diagnose()}"
            )
        return out.decode(errors="replace")

    def diagnose(self) -> str:
        """Which daemons died, and the end of ovs-vswitchd's log."""
        dead = [f"{name} exited {proc.returncode}" for name, proc in self.procs.items() if proc.poll() is not None]
        log = self.workdir / "ovs-vswitchd.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no ovs-vswitchd.log)"
        return f"{'; '.join(dead) or 'daemons running'}; ovs-vswitchd.log ends: {tail}"


class OvsPeer:
    """OVS (an OvsSwitch) in NS_OVS, usertunnel's side in NS_HOST; a context manager that always removes both."""

    def __init__(self) -> None:
        self.switch = OvsSwitch(NS_OVS, VETH_OVS, OVS_ADDR, THEIRS, HOST_ADDR, OURS)
        self.workdir = self.switch.workdir

    # --- life cycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> OvsPeer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        for name in (NS_HOST, NS_OVS):
            netns.remove(name)  # leftovers of an interrupted run, OVS daemons included
            netns.create(name)
        # IPv6 off on OVS's side: br-phy and br-int would otherwise chatter (RS, MLD) onto the wires we capture.
        self._in_ovs_ns(
            "for k in ('all', 'default'): open(f'/proc/sys/net/ipv6/conf/{k}/disable_ipv6', 'w').write('1')"
        )
        self._veth()
        self.switch.start()

    def close(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL), remove both namespaces and the work directory."""
        self.switch.close()
        for name in (NS_HOST, NS_OVS):
            netns.remove(name)

    def _in_ovs_ns(self, python: str) -> None:
        result = netns.run(NS_OVS, [sys.executable, "-c", python], timeout=COMMAND_TIMEOUT)
        if result.returncode != 0:
            raise PeerError(f"OVS peer: setting up {NS_OVS} failed: {result.stderr.decode(errors='replace')}")

    def _veth(self) -> None:
        with NetNS(NS_HOST) as host:
            host.link("add", ifname=VETH_HOST, kind="veth", peer={"ifname": VETH_OVS, "net_ns_fd": NS_OVS})
            index = host.link_lookup(ifname=VETH_HOST)[0]
            host.link("set", index=index, mtu=UNDERLAY_MTU)
            host.addr("add", index=index, address=HOST_ADDR, prefixlen=24)
            host.link("set", index=index, state="up")
        with NetNS(NS_OVS) as ovs:
            index = ovs.link_lookup(ifname=VETH_OVS)[0]
            ovs.link("set", index=index, mtu=UNDERLAY_MTU, state="up")  # no address: br-phy carries it

    # --- the GRE port under test and the commands: the switch's -----------------------------------------------

    def gre(self, options: Mapping[str, str], inner_mtu: int) -> str:
        """Replace the GRE port by a new one with `options` (besides remote_ip and packet_type); its name.

        `inner_mtu` becomes br-int's MTU, so that OVS's encapsulated packets fit the underlay as usertunnel's do.
        """
        return self.switch.gre(options, inner_mtu)

    def vsctl(self, *args: str) -> str:
        return self.switch.vsctl(*args)

    def ofctl(self, *args: str) -> str:
        return self.switch.ofctl(*args)

    def appctl(self, *args: str) -> str:
        return self.switch.appctl(*args)

    def diagnose(self) -> str:
        return self.switch.diagnose()
