"""FOU and GUE end to end (issue 16): two `usertunnel up --encap ...` in namespaces, real UDP on the veth."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from conftest import INNER_B, UNDER_A, UNDER_B, Lab
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from traffic import tcp_transfer

TRANSFER = 2 * 1024 * 1024


def _capture(lab: Lab, ns: str, device: str) -> socket.socket:
    sock = lab.socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind((device, 0))
    sock.settimeout(0.2)
    return sock


def _udp_frames(sock: socket.socket, seconds: float = 1.0) -> list[IP]:
    found = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        packet = Ether(frame)
        if IP in packet and packet[IP].proto == 17:
            found.append(packet[IP])
    return found


@pytest.mark.netns
@pytest.mark.parametrize(
    ("args", "first_bytes"),
    [
        (["--encap", "fou", "--encap-dport", "5555", "--key", "7"], bytes((0x20, 0x00, 0x08, 0x00))),  # GRE, K
        (["--encap", "gue", "--encap-dport", "6080", "--key", "7"], bytes((0x00, 47, 0x00, 0x00))),  # GUE: 47
        (["--mode", "ipip", "--encap", "fou", "--encap-dport", "5555"], bytes((0x45,))),  # the inner IPv4 itself
        (
            ["--encap", "fou", "--encap-dport", "4754", "--encap-sport", "4754", "--encap-csum", "--seq", "--csum"],
            bytes((0x90, 0x00, 0x08, 0x00)),
        ),  # GRE-in-UDP (RFC 8086) with C and S  # fmt: skip
    ],
)
def test_ping_and_tcp_cross_the_tunnel_in_udp(lab: Lab, args: list[str], first_bytes: bytes) -> None:
    end_a, end_b = lab.pair(args)
    if "--encap-csum" in args:  # a veth passes a checksum left to offload on as partial: have it computed now
        assert lab.run(lab.a, ["ethtool", "-K", lab.veth_a, "tx", "off"]).returncode == 0
    capture = _capture(lab, lab.b, lab.veth_b)
    try:
        ping = lab.ping(lab.a, INNER_B)
        assert ping.returncode == 0, ping.stdout.decode() + "\n".join(end_a.lines + end_b.lines)
        frames = _udp_frames(capture, 0.3)
    finally:
        capture.close()
    sent, received = tcp_transfer(lab.a, lab.b, INNER_B, 5201, TRANSFER)
    assert sent == received
    dport = int(args[args.index("--encap-dport") + 1])
    ours = [f for f in frames if f[UDP].dport == dport and f.src == UNDER_A]
    assert ours, [f.summary() for f in frames]
    for packet in ours:
        payload = bytes(packet[UDP].payload)
        assert payload.startswith(first_bytes), payload[:8].hex()
        assert packet.flags.DF  # pmtudisc, the default
        if "--encap-sport" in args:
            assert packet[UDP].sport == 4754
        if "--encap-csum" in args:
            assert packet[UDP].chksum != 0
            copy = packet.copy()
            del copy[UDP].chksum
            assert IP(bytes(copy))[UDP].chksum == packet[UDP].chksum  # the kernel's checksum, right
        else:
            assert packet[UDP].chksum == 0  # RFC 768: none computed (iproute2's default over IPv4)
    stats_a, stats_b = end_a.stop(), end_b.stop()
    assert stats_a["tun0"]["tx_packets"] >= 3 and stats_b["tun0"]["rx_packets"] >= 3
    for stats in (stats_a, stats_b):
        assert not stats["tun0"]["drops"], stats


@pytest.mark.netns
def test_a_wrong_key_in_udp_is_dropped_and_counted(lab: Lab) -> None:
    udp = ["--encap", "gue", "--encap-dport", "6080"]
    _, end_b = lab.pair([*udp, "--key", "1"], [*udp, "--key", "2"])
    assert lab.ping(lab.a, INNER_B, count=3).returncode != 0
    stats = end_b.stop()["tun0"]
    assert stats["rx_packets"] == 0 and stats["drops"].get("key_mismatch", 0) >= 3


@pytest.mark.netns
def test_fou_needs_no_cap_net_raw(lab: Lab) -> None:
    udp = ["--encap", "fou", "--encap-dport", "5555", "--key", "9"]
    lab.start(lab.b, ["--local", UNDER_B, "--remote", UNDER_A, "--name", "tun0", "--address", f"{INNER_B}/30", *udp])
    argv = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-m", "usertunnel", "up",
            "--local", UNDER_A, "--remote", UNDER_B, "--name", "tun0", "--address", "203.0.113.1/30", *udp]  # fmt: skip
    from usertunnel.io import netns

    proc = netns.popen(lab.a, argv, stdout=None, stderr=None)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and lab.run(lab.a, ["ip", "link", "show", "tun0"]).returncode != 0:
            time.sleep(0.1)
        with open(f"/proc/{proc.pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        assert not int(status["CapEff"], 16) & (1 << 13)  # CAP_NET_RAW is not in effect
        ping = lab.ping(lab.a, INNER_B)
        assert ping.returncode == 0, ping.stdout.decode()
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.netns
def test_a_port_in_use_is_one_line_exit_2_and_nothing_left(lab: Lab) -> None:
    taken = lab.socket(lab.a, socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("0.0.0.0", 5555))
    try:
        result = lab.run(lab.a, [sys.executable, "-m", "usertunnel", "up", "--local", UNDER_A, "--remote", UNDER_B,
                                 "--name", "tun3", "--encap", "fou", "--encap-dport", "5555"])  # fmt: skip
    finally:
        taken.close()
    err = result.stderr.decode()
    assert result.returncode == 2 and "UDP 198.51.100.1:5555 is in use" in err, err
    assert len(err.strip().splitlines()) == 1
    assert lab.run(lab.a, ["ip", "link", "show", "tun3"]).returncode != 0


@pytest.mark.netns
def test_show_and_the_ready_line_say_the_encapsulation_in_iproute2s_words(lab: Lab) -> None:
    import json

    end_a, _ = lab.pair(["--encap", "gue", "--encap-dport", "6080", "--encap-sport", "7000"])
    assert "encap gue encap-sport 7000 encap-dport 6080 noencap-csum" in end_a.wait_ready()
    shown = lab.run(lab.a, [sys.executable, "-m", "usertunnel", "show", "-j"])
    assert shown.returncode == 0, shown.stderr.decode()
    (tunnel,) = json.loads(shown.stdout)
    assert tunnel["encap"] == {"type": "gue", "sport": 7000, "dport": 6080, "csum": False}


@pytest.mark.netns
def test_the_daemon_runs_a_fou_tunnel_from_its_configuration_file(lab: Lab, tmp_path: object) -> None:
    import json
    from pathlib import Path

    from usertunnel.io.netns import UpProcess

    path = Path(str(tmp_path)) / "t.toml"
    path.write_text(f'[tunnel.f1]\nmode = "gre"\nlocal = "{UNDER_A}"\nremote = "{UNDER_B}"\n'
                    'encap = "fou"\nencap_dport = 5555\n')  # fmt: skip
    daemon = UpProcess(lab.a, ["--config", str(path)], command="daemon")
    lab.ends.append(daemon)
    daemon.wait_ready()
    shown = lab.run(lab.a, [sys.executable, "-m", "usertunnel", "show", "-j"])
    (tunnel,) = json.loads(shown.stdout)
    assert tunnel["name"] == "f1" and tunnel["encap"] == {"type": "fou", "sport": None, "dport": 5555, "csum": False}
    taken = lab.socket(lab.a, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError):  # the daemon holds the port
            taken.bind((UNDER_A, 5555))
    finally:
        taken.close()


@pytest.mark.netns
@pytest.mark.parametrize("kind", ["fou", "gue"])
def test_bulk_tcp_through_udp_segmentation_arrives_intact_and_nothing_is_dropped(lab: Lab, kind: str) -> None:
    # With the UDP checksum on, a busy wakeup sends runs of equal-sized datagrams with UDP_SEGMENT.
    args = ["--encap", kind, "--encap-dport", "5555", "--encap-csum", "--key", "3", "--seq", "--csum"]
    end_a, end_b = lab.pair(args)
    sent, received = tcp_transfer(lab.a, lab.b, INNER_B, 5202, 16 * 1024 * 1024)
    assert sent == received
    stats_a, stats_b = end_a.stop(), end_b.stop()
    for stats in (stats_a, stats_b):
        assert not stats["tun0"]["drops"], stats  # seq_old would show datagrams out of order or twice
    assert stats_b["tun0"]["rx_bytes"] >= 16 * 1024 * 1024


# --- the seed's NAT case: two CPEs behind one NAT reach the POP at the same time --------------------------------


def _two_behind_one_nat(topo: object) -> tuple[object, list[object]]:
    """The NAT of `topo` with two hosts behind it, on a bridge on its inside (Topology.private_hosts)."""
    from usertunnel.teach.topology import Topology

    assert isinstance(topo, Topology)
    nat = topo.nat("n", "198.51.100.12")
    return nat, list(topo.private_hosts(["c1", "c2"], nat))


@pytest.mark.netns
def test_two_cpes_behind_one_nat_reach_the_pop_at_once_and_each_other_through_it() -> None:
    import json
    import os

    from conftest import require_netns

    from usertunnel.io import netns
    from usertunnel.io.netns import UpProcess
    from usertunnel.teach.topology import Topology

    require_netns()
    topo = Topology(f"utf{os.getpid() % 10000}")
    procs: list[UpProcess] = []
    try:
        pop = topo.public_host("pop", "198.51.100.1")
        netns.run(pop.namespace, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], check=True)
        _, cpes = _two_behind_one_nat(topo)
        udp = ["--key", "1234", "--encap", "fou", "--encap-dport", "5555"]
        procs.append(UpProcess(pop.namespace, ["--local", "198.51.100.1", "--remote", "any", "--address",
                                               "203.0.113.1/24", *udp]))  # fmt: skip
        procs[-1].wait_ready()
        for n, cpe in enumerate(cpes, 1):
            # Both CPEs send from the same port: only the NAT's port mapping tells them apart at the POP.
            args = ["--local", cpe.address, "--remote", "198.51.100.1", "--address", f"203.0.113.2{n}/24",  # type: ignore[attr-defined]
                    "--encap-sport", "6000", "--keepalive", "0.5,3", *udp]  # fmt: skip
            procs.append(UpProcess(cpe.namespace, args))  # type: ignore[attr-defined]
            procs[-1].wait_ready()

        def ping(host: object, target: str) -> bool:
            run = netns.run(host.namespace, ["ping", "-c", "2", "-i", "0.2", "-W", "2", target], timeout=30)  # type: ignore[attr-defined]
            return run.returncode == 0

        assert ping(cpes[0], "203.0.113.1") and ping(cpes[1], "203.0.113.1")
        assert ping(cpes[0], "203.0.113.22") and ping(cpes[1], "203.0.113.21")  # spoke to spoke, through the POP
        shown = netns.run(pop.namespace, [sys.executable, "-m", "usertunnel", "stats", "-j"], timeout=10, check=True)
        (hub,) = json.loads(shown.stdout)
        peers = hub["neighbors"]
        assert {p["outer"] for p in peers} == {"198.51.100.12"}  # one public address...
        assert len({p["port"] for p in peers}) == 2  # ...two UDP ports: two CPEs at once
        assert sorted(h for p in peers for h in p["hosts"]) == ["203.0.113.21", "203.0.113.22"]
        text = netns.run(pop.namespace, [sys.executable, "-m", "usertunnel", "show"], timeout=10).stdout.decode()
        assert text.count("198.51.100.12 port ") == 2, text  # `show` tells the two apart too
        for cpe in cpes:  # their keepalives come back through the NAT: the POP answers at the port it saw
            state = json.loads(netns.run(cpe.namespace, [sys.executable, "-m", "usertunnel", "stats", "-j"],  # type: ignore[attr-defined]
                                         timeout=10, check=True).stdout)[0]["keepalive"]  # fmt: skip
            assert state["state"] == "up" and state["replies"] >= 1, state
    finally:
        for proc in procs:
            proc.kill()
        topo.remove()


@pytest.mark.netns
def test_the_daemon_runs_fou_and_gue_tunnels_sharing_a_port_from_ip_tunnel_words(lab: Lab) -> None:
    import json

    from usertunnel.io.netns import UpProcess

    def usertunnel(ns: str, *words: str) -> subprocess.CompletedProcess[bytes]:
        return lab.run(ns, [sys.executable, "-m", "usertunnel", *words])

    daemons = []
    for ns in (lab.a, lab.b):
        daemon = UpProcess(ns, [], command="daemon")
        lab.ends.append(daemon)
        daemon.wait_ready()
        daemons.append(daemon)
    ends = (
        (lab.a, UNDER_A, UNDER_B, "203.0.113.1", "203.0.113.5"),
        (lab.b, UNDER_B, UNDER_A, "203.0.113.2", "203.0.113.6"),
    )
    for ns, local, remote, first, second in ends:
        # Two tunnels on one GUE port (keys 1 and 2), as `ip link add ... encap gue encap-dport 6080` would say.
        for name, key, address in (("g1", "1", first), ("g2", "2", second)):
            added = usertunnel(ns, "tunnel", "add", name, "mode", "gre", "local", local, "remote", remote, "key", key,
                               "encap", "gue", "encap-dport", "6080", "encap-sport", "auto", "encap-csum")  # fmt: skip
            assert added.returncode == 0, added.stderr.decode()
            assert lab.run(ns, ["ip", "addr", "add", f"{address}/30", "dev", name]).returncode == 0
            assert lab.run(ns, ["ip", "link", "set", name, "up"]).returncode == 0
        refused = usertunnel(ns, "tunnel", "add", "f3", "mode", "ipip", "local", local, "remote", remote,
                             "encap", "fou", "encap-dport", "6080")  # fmt: skip
        assert refused.returncode != 0 and "UDP port 6080 is another tunnel's" in refused.stderr.decode()
    assert lab.ping(lab.a, "203.0.113.2").returncode == 0
    assert lab.ping(lab.a, "203.0.113.6").returncode == 0
    shown = usertunnel(lab.b, "stats", "-j")
    tunnels = {t["name"]: t for t in json.loads(shown.stdout)}
    assert tunnels["g1"]["encap"] == {"type": "gue", "sport": None, "dport": 6080, "csum": True}
    assert tunnels["g1"]["stats"]["rx_packets"] >= 3 and tunnels["g2"]["stats"]["rx_packets"] >= 3
    assert usertunnel(lab.b, "tunnel", "del", "g1").returncode == 0
    assert lab.ping(lab.a, "203.0.113.6").returncode == 0  # the port stays open for g2


@pytest.mark.netns
@pytest.mark.parametrize(
    ("mode", "extra", "limit"),
    [("ip6gre", ["--key", "4"], []), ("ipip6", [], ["--encaplimit", "none"]), ("ip6ip6", [], [])],
)
def test_ipv6_outer_tunnels_in_udp_carry_ping_and_tcp(lab: Lab, mode: str, extra: list[str], limit: list[str]) -> None:
    under6_a, under6_b = "2001:db8:1::1", "2001:db8:1::2"
    for ns, veth, address in ((lab.a, lab.veth_a, under6_a), (lab.b, lab.veth_b, under6_b)):
        added = lab.run(ns, ["ip", "-6", "addr", "add", f"{address}/64", "dev", veth, "nodad"])
        assert added.returncode == 0, added.stderr.decode()
    inner_b = "2001:db8:100::2" if mode == "ip6ip6" else INNER_B
    for ns, local, remote, inner in ((lab.a, under6_a, under6_b, "1"), (lab.b, under6_b, under6_a, "2")):
        address = f"2001:db8:100::{inner}/64" if mode == "ip6ip6" else f"203.0.113.{inner}/30"
        lab.start(ns, ["--mode", mode, "--local", local, "--remote", remote, "--name", "tun0", "--address", address,
                       "--encap", "gue", "--encap-dport", "6080", *extra, *limit])  # fmt: skip
    capture = _capture(lab, lab.b, lab.veth_b)
    try:
        ping = lab.run(lab.a, ["ping", "-c", "3", "-i", "0.2", "-W", "2", inner_b])
        assert ping.returncode == 0, ping.stdout.decode() + "\n".join(lab.ends[0].lines + lab.ends[1].lines)
        frames = []
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            try:
                frames.append(Ether(capture.recv(65535)))
            except TimeoutError:
                continue
    finally:
        capture.close()
    sent, received = tcp_transfer(lab.a, lab.b, inner_b, 5204, TRANSFER)
    assert sent == received
    from scapy.layers.inet6 import IPv6

    ours = [f[IPv6] for f in frames if IPv6 in f and UDP in f and f[UDP].dport == 6080]
    assert ours
    for packet in ours:
        assert packet[UDP].chksum != 0  # over IPv6 the checksum is on unless asked (RFC 6935)
        assert (packet.nh == 60) == (not limit)  # the encapsulation limit option, unless encaplimit none


def _keepalive(lab: Lab, ns: str) -> dict[str, object]:
    import json

    shown = lab.run(ns, [sys.executable, "-m", "usertunnel", "stats", "-j"])
    (tunnel,) = json.loads(shown.stdout)
    return tunnel["keepalive"]  # type: ignore[no-any-return]


@pytest.mark.netns
@pytest.mark.parametrize("kind", ["fou", "gue"])
def test_keepalives_in_udp_are_answered_and_the_line_goes_down_when_the_peer_does(lab: Lab, kind: str) -> None:
    udp = ["--encap", kind, "--encap-dport", "5555", "--key", "8", "--keepalive", "0.5,2"]
    _, end_b = lab.pair(udp)
    deadline = time.monotonic() + 10
    state = _keepalive(lab, lab.a)
    while time.monotonic() < deadline and not (state["replies"] >= 2 and state["state"] == "up"):  # type: ignore[operator]
        time.sleep(0.2)
        state = _keepalive(lab, lab.a)
    assert state["state"] == "up" and state["replies"] >= 2, state  # type: ignore[operator]
    end_b.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _keepalive(lab, lab.a)["state"] != "down":
        time.sleep(0.2)
    assert _keepalive(lab, lab.a)["state"] == "down"
