"""IPsec on the tunnel (issue 17): `--mode vti` and `--esp-keys` on other modes, in the core and end to end.

core.esp is tested on its own in test_esp.py (scapy's ESP as the oracle, the replay window against a model).
Here: what the tunnel does with it. The outer packet is ESP and nothing else; what ESP carries is what the
same tunnel sends in the clear (vti: an ipip-shaped packet, as Linux's ESP tunnel mode); a protected tunnel
never accepts a packet in the clear; replays and forgeries are dropped and counted; keys come from a private
file and never appear in any output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import INNER_B, UNDER_A, UNDER_B, Lab
from scapy.layers.inet import ICMP, IP, TCP
from traffic import tcp_transfer

from usertunnel.core import esp
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import VTI_OUTER, Mode, TunnelParams
from usertunnel.io import netns
from usertunnel.io.keyfile import read_esp_keys

A, B = bytes((198, 51, 100, 1)), bytes((198, 51, 100, 2))
KEY_AB = bytes(range(1, 21))  # AES-128 key and 4-byte salt, A -> B
KEY_BA = bytes(range(101, 121))
SA_AB = esp.SecurityAssociation(0x1001, esp.GCM, KEY_AB)
SA_BA = esp.SecurityAssociation(0x1002, esp.GCM, KEY_BA)


def pair(mode: Mode, key: int | None = None) -> tuple[Tunnel, Tunnel]:
    outer = dict(zip(("ttl", "tos", "pmtudisc"), VTI_OUTER, strict=True)) if mode.value.esp else {}
    a = TunnelParams("a", mode, A, B, ikey=key, okey=key, esp=esp.EspKeys(SA_AB, SA_BA), **outer)  # type: ignore[arg-type]
    b = TunnelParams("b", mode, B, A, ikey=key, okey=key, esp=esp.EspKeys(SA_BA, SA_AB), **outer)  # type: ignore[arg-type]
    return Tunnel(a), Tunnel(b)


def inner_packet(tos: int = 0, df: bool = True) -> bytes:
    return bytes(IP(src="203.0.113.1", dst="203.0.113.2", tos=tos, ttl=33, flags="DF" if df else 0) / ICMP())


@pytest.mark.parametrize(("mode", "key", "carried"), [(Mode.VTI, None, 4), (Mode.GRE, 1234, 47), (Mode.IPIP, None, 4)])
def test_the_outer_packet_is_esp_carrying_what_the_tunnel_sends_in_the_clear(mode: Mode, key: int | None,
                                                                             carried: int) -> None:  # fmt: skip
    a, b = pair(mode, key)
    inner = inner_packet(tos=0x2B)
    packet = a.encapsulate(inner)
    assert isinstance(packet, bytes)
    outer = IP(packet)
    assert outer.proto == 50 and outer.src == "198.51.100.1" and outer.dst == "198.51.100.2"
    assert IP(bytes(outer)).chksum == outer.chksum  # the header checksum was recomputed for protocol 50
    assert esp.spi_of(packet[20:]) == SA_AB.spi
    opened = esp.Opener(SA_AB).open(packet[20:])
    assert not isinstance(opened, Drop)
    next_header, payload = opened
    assert next_header == carried
    if mode is Mode.VTI:
        assert payload == inner  # ESP tunnel mode: the inner packet itself, next header 4 (RFC 4303 2.6)
    else:
        clear = Tunnel(TunnelParams("c", mode, A, B, ikey=key, okey=key)).encapsulate(inner)
        assert isinstance(clear, bytes)
        assert payload == clear[20:]  # ESP carries exactly what the same tunnel sends in the clear
    if mode is Mode.VTI:  # xfrm's outer header: TTL 64, the inner TOS (ECN as RFC 6040), the inner DF
        assert (outer.ttl, outer.tos, outer.flags.DF) == (64, 0x2A, True)  # CE is sent as ECT(0)
        no_df = IP(a.encapsulate(inner_packet(df=False)))
        assert not no_df.flags.DF
    # Linux's MTU arithmetic: the worst-case ESP overhead is in the header length the device MTU comes from.
    assert len(packet) - len(inner) <= a.params.header_length


@pytest.mark.parametrize(("mode", "key"), [(Mode.VTI, None), (Mode.GRE, 1234), (Mode.SIT, None)])
def test_the_peer_opens_it_and_refuses_replays_forgeries_and_packets_in_the_clear(mode: Mode, key: int | None) -> None:
    a, b = pair(mode, key)
    demux = Demux()
    demux.add(b)
    inner = (
        bytes.fromhex("6000000000083a40" + "20010db8" + "00" * 11 + "01" + "20010db8" + "00" * 11 + "02")
        + bytes.fromhex("8000f7ff00000000")
        if mode is Mode.SIT
        else inner_packet()
    )
    packet = a.encapsulate(inner)
    assert isinstance(packet, bytes)
    got = demux.decapsulate_esp(packet)
    assert isinstance(got, Received) and got.tunnel is b and bytes(got.inner) == inner
    assert demux.decapsulate_esp(packet) is Drop.ESP_REPLAY
    flipped = bytearray(packet)
    flipped[40] ^= 1
    forged = a.encapsulate(inner)
    assert isinstance(forged, bytes)
    forged = forged[:40] + bytes((forged[40] ^ 0x80,)) + forged[41:]
    assert demux.decapsulate_esp(forged) is Drop.ESP_ICV
    twin_mode = Mode.IPIP if mode is Mode.VTI else mode  # vti in the clear: an ipip packet
    clear = Tunnel(TunnelParams("c", twin_mode, A, B, ikey=key, okey=key)).encapsulate(inner)
    assert isinstance(clear, bytes)
    assert demux.decapsulate(clear) is Drop.NO_TUNNEL  # the same packet in the clear finds no protected tunnel
    stranger = esp.Sealer(esp.SecurityAssociation(0x7777, esp.GCM, KEY_AB))
    other = esp.protect_ipv4(stranger, clear)
    assert isinstance(other, bytes)
    assert demux.decapsulate_esp(other) is Drop.ESP_NO_SA
    assert b.counters.rx_packets == 1
    assert b.counters.drops == {Drop.ESP_REPLAY: 1, Drop.ESP_ICV: 1}
    assert demux.unmatched.drops == {Drop.NO_TUNNEL: 1, Drop.ESP_NO_SA: 1}


def test_two_protected_tunnels_may_not_share_an_inbound_spi() -> None:
    a, b = pair(Mode.GRE, 1)
    demux = Demux()
    demux.add(b)
    twin = Tunnel(TunnelParams("b2", Mode.GRE, B, A, ikey=2, okey=2, esp=esp.EspKeys(SA_BA, SA_AB)))
    with pytest.raises(ConfigError, match="SPI 0x1001"):
        demux.add(twin)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": Mode.VTI, "esp": None}, "mode vti carries packets in ESP: give --esp-keys FILE"),
        ({"remote": None}, "between two fixed addresses"),
        ({"mode": Mode.IP6GRE}, "IPv4 outer headers"),
        ({"mode": Mode.VTI, "iseq": True}, "no GRE sequence numbers or checksums"),
        ({"mode": Mode.VTI, "ttl": 9}, "no --ttl, --tos or --nopmtudisc"),
    ],
)
def test_configurations_this_version_cannot_protect_are_refused_in_one_line(
    change: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {
        "name": "t",
        "mode": Mode.GRE,
        "local": A,
        "remote": B,
        "esp": esp.EspKeys(SA_AB, SA_BA),
    }
    if change.get("mode") is Mode.VTI:
        fields.update(zip(("ttl", "tos", "pmtudisc"), VTI_OUTER, strict=True))
    if change.get("mode") is Mode.IP6GRE:
        fields.update(local=bytes(15) + b"\1", remote=bytes(15) + b"\2")
    fields.update(change)
    with pytest.raises(ConfigError, match=message):
        TunnelParams(**fields)  # type: ignore[arg-type]


KEYS_A = f"""
[out]
spi = 0x1001
aead = "rfc4106(gcm(aes))"
key = "0x{KEY_AB.hex()}"
icv = 128
[in]
spi = 0x1002
aead = "rfc4106(gcm(aes))"
key = "0x{KEY_BA.hex()}"
icv = 128
"""
KEYS_B = KEYS_A.replace("0x1001", "0xSPI_A").replace("0x1002", "0x1001").replace("0xSPI_A", "0x1002")
KEYS_B = KEYS_B.replace(KEY_AB.hex(), "KEY_A").replace(KEY_BA.hex(), KEY_AB.hex()).replace("KEY_A", KEY_BA.hex())


def write_keys(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_a_key_file_others_can_read_is_refused_without_showing_the_key(tmp_path: Path) -> None:
    good = read_esp_keys(write_keys(tmp_path / "a.toml", KEYS_A))
    assert good.outbound.spi == 0x1001 and good.inbound.key == KEY_BA
    loose = write_keys(tmp_path / "loose.toml", KEYS_A, 0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_esp_keys(loose)
    assert KEY_AB.hex() not in str(info.value)
    broken = write_keys(tmp_path / "broken.toml", KEYS_A.replace(f'"0x{KEY_AB.hex()}"', f'"0x{KEY_AB.hex()[:-2]}"'))
    with pytest.raises(ConfigError) as info:
        read_esp_keys(broken)
    assert KEY_AB.hex()[:-2] not in str(info.value) and "19 bytes" in str(info.value)


def test_the_command_line_refuses_loose_keys_and_vti_without_keys_in_one_line(tmp_path: Path) -> None:
    loose = write_keys(tmp_path / "k.toml", KEYS_A, 0o640)
    for argv, expected in (
        (["--mode", "vti"], "give --esp-keys FILE"),
        (["--mode", "vti", "--esp-keys", loose], "chmod 600"),
        (["--mode", "vti", "--ttl", "9", "--esp-keys", loose], "no --ttl"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "usertunnel", "up", "--local", UNDER_A, "--remote", UNDER_B, "--show-plan", *argv],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2, done
        assert expected in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.netns
@pytest.mark.parametrize("args", [["--mode", "vti", "--key", "1"], ["--mode", "gre", "--key", "1234"]])
def test_ping_and_tcp_cross_a_protected_tunnel_and_the_wire_shows_only_esp(
    lab: Lab, tmp_path: Path, args: list[str]
) -> None:
    keys_a = write_keys(tmp_path / "a.toml", KEYS_A)
    keys_b = write_keys(tmp_path / "b.toml", KEYS_B)
    end_a, end_b = lab.pair([*args, "--esp-keys", keys_a], [*args, "--esp-keys", keys_b])
    capture = netns.Capture(lab.b, lab.veth_b)
    try:
        ping = lab.ping(lab.a, INNER_B)
        assert ping.returncode == 0, ping.stdout.decode() + "\n".join(end_a.lines + end_b.lines)
        sent, received = tcp_transfer(lab.a, lab.b, INNER_B, 5201, 1024 * 1024)
        assert sent == received
    finally:
        capture.stop()
    tunnel_packets = [p for _, _, p in capture.packets if p[9] not in (1,) or p[12:16] != p[16:20]]
    protocols = {IP(p).proto for p in tunnel_packets if IP(p).src in (UNDER_A, UNDER_B)}
    assert protocols == {50}, protocols  # nothing in the clear: no GRE (47), no IPIP (4)
    spis = {esp.spi_of(p[20:]) for p in tunnel_packets if IP(p).src == UNDER_A}
    assert spis == {0x1001}
    assert not any(TCP in IP(p) for p in tunnel_packets)  # the inner TCP is encrypted
    stats_a, stats_b = end_a.stop(), end_b.stop()
    rx_b, tx_a = stats_b["tun0"]["rx_packets"], stats_a["tun0"]["tx_packets"]
    # A few packets A sent before B's socket existed (IPv6 neighbour discovery over gre) are lost unseen.
    assert tx_a - 5 <= rx_b <= tx_a and rx_b > 100, (tx_a, rx_b)
    assert not stats_b["tun0"]["drops"], stats_b
    outputs = "\n".join(end_a.lines + end_b.lines)
    for secret in (KEY_AB.hex(), KEY_BA.hex()):
        assert secret not in outputs and secret.upper() not in outputs
    assert os.stat(keys_a).st_mode & 0o077 == 0


def _daemon_config(local: str, remote: str, inner: str, keys: str) -> str:
    return (
        f'[tunnel.v]\nmode = "vti"\nlocal = "{local}"\nremote = "{remote}"\nkey = 1\n'
        f'addresses = ["{inner}/30"]\nesp_keys = "{keys}"\n'
    )


def _ifindex(lab: Lab, ns: str, name: str) -> int:
    import json

    out = lab.run(ns, ["ip", "-j", "link", "show", "dev", name])
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)[0]["ifindex"])


@pytest.mark.netns
def test_the_daemon_runs_vti_from_its_file_and_a_reload_with_new_keys_keeps_the_device(
    lab: Lab, tmp_path: Path
) -> None:
    usertunnel = [sys.executable, "-m", "usertunnel"]
    keys_a = write_keys(tmp_path / "a.toml", KEYS_A)
    keys_b = write_keys(tmp_path / "b.toml", KEYS_B)
    ends = {}
    for ns, local, remote, inner, keys in (
        (lab.a, UNDER_A, UNDER_B, "203.0.113.1", keys_a),
        (lab.b, UNDER_B, UNDER_A, INNER_B, keys_b),
    ):
        config = tmp_path / f"{ns}.toml"
        config.write_text(_daemon_config(local, remote, inner, keys))
        end = netns.UpProcess(ns, ["--config", str(config)], command="daemon")
        lab.ends.append(end)
        end.wait_ready()
        ends[ns] = end
    ping = lab.ping(lab.a, INNER_B)
    assert ping.returncode == 0, ping.stdout.decode() + "\n".join(ends[lab.a].lines + ends[lab.b].lines)
    before = _ifindex(lab, lab.a, "v")

    # New keys and SPIs on both sides (in place: the files change, their names do not).
    new_ab, new_ba = bytes(range(31, 51)), bytes(range(61, 81))
    rotated_a = KEYS_A.replace("0x1001", "0x2001").replace("0x1002", "0x2002")
    rotated_a = rotated_a.replace(KEY_AB.hex(), new_ab.hex()).replace(KEY_BA.hex(), new_ba.hex())
    rotated_b = KEYS_B.replace("0x1001", "0x2001").replace("0x1002", "0x2002")
    rotated_b = rotated_b.replace(KEY_AB.hex(), new_ab.hex()).replace(KEY_BA.hex(), new_ba.hex())
    write_keys(Path(keys_a), rotated_a)
    write_keys(Path(keys_b), rotated_b)
    for ns in (lab.a, lab.b):
        out = lab.run(ns, [*usertunnel, "reload"])
        assert out.returncode == 0, out.stderr.decode()
        assert "rekeyed: v" in out.stdout.decode().splitlines(), out.stdout.decode()
    assert _ifindex(lab, lab.a, "v") == before  # the same device: rekeyed in place, not restarted
    capture = netns.Capture(lab.b, lab.veth_b)
    try:
        ping = lab.ping(lab.a, INNER_B)
    finally:
        capture.stop()
    assert ping.returncode == 0, ping.stdout.decode()
    spis = {esp.spi_of(p[20:]) for _, _, p in capture.packets if p[9] == 50 and IP(p).src == UNDER_A}
    assert spis == {0x2001}  # the new security association

    shown = lab.run(lab.a, [*usertunnel, "-j", "tunnel", "show"])
    stats = lab.run(lab.a, [*usertunnel, "stats", "-j"])
    everything = "\n".join(
        [shown.stdout.decode(), stats.stdout.decode(), *ends[lab.a].lines, *ends[lab.b].lines]
    ).lower()
    assert '"vti"' in shown.stdout.decode()
    import json

    (tunnel,) = json.loads(stats.stdout)
    assert tunnel["esp"]["out"]["spi"] == 0x2001 and tunnel["esp"]["in"]["spi"] == 0x2002
    assert tunnel["esp"]["out"]["seq"] >= 3 and tunnel["esp"]["in"]["highest"] >= 3  # the ping after the rekey
    assert tunnel["esp"]["in"]["replay_window"] == 64 and tunnel["esp"]["out"]["aead"] == esp.GCM
    for secret in (KEY_AB, KEY_BA, new_ab, new_ba):
        assert secret.hex() not in everything


# --- vti6: IPv6 in ESP over IPv6 (Linux's ip6_vti) -----------------------------------------------------------

A6, B6 = bytes.fromhex("20010db8000100000000000000000001"), bytes.fromhex("20010db8000100000000000000000002")
VTI6 = {"ttl": 64, "tos": None, "pmtudisc": False, "flowlabel": None, "encaplimit": None}


def test_vti6_sends_esp_over_ipv6_carrying_the_inner_packet_and_the_peer_opens_it() -> None:
    a = Tunnel(TunnelParams("a", Mode.VTI6, A6, B6, esp=esp.EspKeys(SA_AB, SA_BA), **VTI6))  # type: ignore[arg-type]
    b = Tunnel(TunnelParams("b", Mode.VTI6, B6, A6, esp=esp.EspKeys(SA_BA, SA_AB), **VTI6))  # type: ignore[arg-type]
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    inner = bytes(IPv6(src="2001:db8:100::1", dst="2001:db8:100::2", tc=0x2B, fl=0x12345) / ICMPv6EchoRequest())
    packet = a.encapsulate(inner)
    assert isinstance(packet, bytes)
    outer = IPv6(packet)
    # xfrm6_tunnel_encap_add: hop limit 64, the inner traffic class (CE sent as ECT(0)), the inner flow label.
    assert (outer.nh, outer.hlim, outer.tc, outer.fl) == (50, 64, 0x2A, 0x12345)
    assert outer.plen == len(packet) - 40 and len(packet) - len(inner) <= a.params.header_length
    opened = esp.Opener(SA_AB).open(packet[40:])
    assert opened == (41, inner)  # ESP tunnel mode: the inner IPv6 packet, next header 41
    demux = Demux()
    demux.add(b)
    got = demux.decapsulate6(50, A6, B6, outer.tc, packet[40:])
    assert isinstance(got, Received) and got.tunnel is b and bytes(got.inner) == inner
    assert demux.decapsulate6(50, A6, B6, outer.tc, packet[40:]) is Drop.ESP_REPLAY
    assert demux.decapsulate6(50, A6, A6, 0, packet[40:]) is Drop.ESP_NO_SA  # not to our address
    clear = Tunnel(TunnelParams("c", Mode.IP6IP6, A6, B6, encaplimit=None)).encapsulate(inner)
    assert isinstance(clear, bytes)
    assert demux.decapsulate6(41, A6, B6, 0, clear[40:]) is Drop.NO_TUNNEL  # in the clear: no protected tunnel


@pytest.mark.netns
def test_vti6_carries_ping_and_tcp_between_namespaces_over_ipv6(lab: Lab, tmp_path: Path) -> None:
    from pyroute2 import NetNS

    under = ("2001:db8:1::1", "2001:db8:1::2")
    for ns, veth, address in ((lab.a, lab.veth_a, under[0]), (lab.b, lab.veth_b, under[1])):
        lab.run(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", f"net.ipv6.conf.{veth}.accept_dad=0"])
        with NetNS(ns) as handle:
            handle.addr("add", index=handle.link_lookup(ifname=veth)[0], address=address, prefixlen=64)
    keys_a = write_keys(tmp_path / "a.toml", KEYS_A)
    keys_b = write_keys(tmp_path / "b.toml", KEYS_B)
    inner = ("2001:db8:100::1", "2001:db8:100::2")
    ends = []
    for i, (ns, keys) in enumerate(((lab.a, keys_a), (lab.b, keys_b))):
        args = ["--mode", "vti6", "--local", under[i], "--remote", under[1 - i], "--name", "tun0", "--key", "1"]
        ends.append(lab.start(ns, [*args, "--address", f"{inner[i]}/64", "--esp-keys", keys]))
    ping = lab.run(lab.a, ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", inner[1]])
    assert ping.returncode == 0, ping.stdout.decode() + "\n".join(ends[0].lines + ends[1].lines)
    sent, received = tcp_transfer(lab.a, lab.b, inner[1], 5202, 512 * 1024)
    assert sent == received
    stats_a, stats_b = ends[0].stop(), ends[1].stop()
    assert stats_b["tun0"]["rx_packets"] > 50 and not stats_b["tun0"]["drops"], stats_b
    assert stats_a["tun0"]["rx_packets"] > 20 and not stats_a["tun0"]["drops"], stats_a


def test_when_the_sequence_numbers_run_out_the_tunnel_stops_sending_counts_it_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging

    from usertunnel.io.loop import Dataplane

    a, _ = pair(Mode.GRE, 1234)
    assert a.sealer is not None
    a.sealer.seq = 0xFFFFFFFE  # one number left (no ESN: 2**32 - 1 is the last, RFC 4303 3.3.3)
    assert isinstance(a.encapsulate(inner_packet()), bytes)
    for _ in range(3):
        assert a.encapsulate(inner_packet()) is Drop.ESP_SEQ_EXHAUSTED
    assert a.counters.tx_packets == 1 and a.counters.drops == {Drop.ESP_SEQ_EXHAUSTED: 3}
    loop = asyncio.new_event_loop()
    try:
        dataplane = Dataplane(loop, Demux())
        with caplog.at_level(logging.ERROR, logger="usertunnel"):
            for _ in range(3):
                dataplane._exhausted(a)
    finally:
        loop.close()
    said = [r.getMessage() for r in caplog.records if "exhausted" in r.getMessage()]
    assert len(said) == 1 and "give new keys" in said[0]


@pytest.mark.netns
def test_ip_tunnel_add_mode_vti_with_ikey_and_okey_finds_its_keys_as_the_kernels_mark_finds_xfrm_states(
    lab: Lab, tmp_path: Path
) -> None:
    usertunnel = [sys.executable, "-m", "usertunnel"]
    keys_dir = tmp_path / "esp"
    keys_dir.mkdir()
    write_keys(keys_dir / "1.toml", KEYS_A)
    daemon = netns.UpProcess(lab.a, ["--esp-keys-dir", str(keys_dir)], command="daemon")
    lab.ends.append(daemon)
    daemon.wait_ready()
    # The seed's vti line, in usertunnel's words.
    words = ["tunnel", "add", "vti1", "mode", "vti", "local", UNDER_A, "remote", UNDER_B, "ikey", "1", "okey", "1"]
    added = lab.run(lab.a, [*usertunnel, *words])
    assert added.returncode == 0, added.stderr.decode()
    lab.run(lab.a, ["ip", "addr", "add", "203.0.113.1/30", "dev", "vti1"])
    lab.run(lab.a, ["ip", "link", "set", "vti1", "up"])
    keys_b = write_keys(tmp_path / "b.toml", KEYS_B)
    lab.start(lab.b, ["--mode", "vti", "--local", UNDER_B, "--remote", UNDER_A, "--key", "1", "--name", "tun0",
                      "--address", f"{INNER_B}/30", "--esp-keys", keys_b])  # fmt: skip
    ping = lab.ping(lab.a, INNER_B)
    assert ping.returncode == 0, ping.stdout.decode() + "\n".join(daemon.lines)
    # No keys file for key 2: refused in one line, naming the file it looked for.
    words[2], words[-3], words[-1] = "vti2", "2", "2"
    refused = lab.run(lab.a, [*usertunnel, *words])
    assert refused.returncode != 0
    message = refused.stderr.decode()
    assert f"{keys_dir}/2.toml" in message and "Traceback" not in message and len(message.strip().splitlines()) == 1


def test_a_packet_opened_with_one_tunnels_keys_is_not_delivered_to_another_protected_tunnel() -> None:
    sa3 = esp.SecurityAssociation(0x3003, esp.GCM, bytes(range(40, 60)))
    one = Tunnel(TunnelParams("one", Mode.GRE, B, A, ikey=1, okey=1, esp=esp.EspKeys(SA_BA, SA_AB)))
    two = Tunnel(TunnelParams("two", Mode.GRE, B, A, ikey=2, okey=2, esp=esp.EspKeys(sa3, sa3)))
    demux = Demux()
    demux.add(one)
    demux.add(two)
    # Sealed with one's inbound keys, but the GRE packet inside carries two's key.
    forged = Tunnel(TunnelParams("x", Mode.GRE, A, B, ikey=2, okey=2, esp=esp.EspKeys(SA_AB, SA_BA)))
    packet = forged.encapsulate(inner_packet())
    assert isinstance(packet, bytes)
    assert demux.decapsulate_esp(packet) is Drop.NO_TUNNEL
    assert one.counters.drops == {Drop.NO_TUNNEL: 1} and one.counters.rx_packets == 0
    assert two.counters.rx_packets == 0 and two.counters.rx_bytes == 0 and not two.counters.drops
