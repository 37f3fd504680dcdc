"""A tiny command agent that runs inside the user-mode-linux guest (the kernel peer).

The guest boots with the host's filesystem read-only (hostfs), so it can run
this file with the host's Python. The tests talk to it over TCP on the
underlay: one JSON request per line, one JSON answer per line.

Requests:
  {"sh": "ip -j -s link show gre1", "timeout": 20}  -> {"rc": 0, "out": "...", "err": "..."}
  {"sink": [addr, port], "rcvbuf": B}   start accepting one TCP connection and hashing what it sends
                              (with "rcvbuf", SO_RCVBUF B: a bounded receive window)
  {"sink_result": [addr, port], "timeout": 60}    -> {"sha256": "...", "bytes": N} when it ends
  {"source": [addr, port], "bytes": N, "seed": S}  -> {"sha256": "..."}: send N pseudo-random bytes
  {"inject": ifname, "packets": [hex, ...], "gap": s}  -> {"sent": N}: write each IP packet into device
      ifname with a packet socket (its own bytes: no routing, no header field filled in), `gap` s apart
  {"send_ip": [hex, ...], "gap": s}  -> {"sent": N}: send each whole IPv4 packet (its own header on) with a
      raw socket (IP_HDRINCL): routed by the guest to its destination, onto the underlay as it is

This file is test equipment, not part of usertunnel; it uses only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time
from typing import Any

_sinks: dict[tuple[str, int], dict[str, Any]] = {}


def _sink(address: tuple[str, int], rcvbuf: int | None) -> dict[str, Any]:
    state: dict[str, Any] = {"done": threading.Event()}
    server = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf is not None:  # before listen(): the accepted connection inherits it, and its window scale
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    server.bind(address)
    server.listen()
    server.settimeout(120)

    def run() -> None:
        digest, total = hashlib.sha256(), 0
        try:
            conn, _ = server.accept()
            conn.settimeout(120)
            with conn:
                while chunk := conn.recv(1 << 16):
                    digest.update(chunk)
                    total += len(chunk)
            state.update(sha256=digest.hexdigest(), bytes=total)
        except OSError as exc:
            state.update(error=str(exc))
        finally:
            server.close()
            state["done"].set()

    threading.Thread(target=run, daemon=True).start()
    return state


def handle(request: dict[str, Any]) -> dict[str, Any]:
    if "sh" in request:
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", request["sh"]], capture_output=True, text=True, timeout=request.get("timeout", 20)
            )
        except subprocess.TimeoutExpired as exc:
            return {"rc": -1, "out": "", "err": f"timeout: {exc}"}
        return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
    if "sink" in request:
        address = (request["sink"][0], int(request["sink"][1]))
        _sinks[address] = _sink(address, request.get("rcvbuf"))
        return {"ok": True}
    if "sink_result" in request:
        address = (request["sink_result"][0], int(request["sink_result"][1]))
        state = _sinks.pop(address)
        if not state["done"].wait(request.get("timeout", 60)):
            return {"error": "timeout waiting for the sender"}
        return {k: v for k, v in state.items() if k != "done"}
    if "source" in request:
        address = (request["source"][0], int(request["source"][1]))
        data = random.Random(request.get("seed", 0)).randbytes(int(request["bytes"]))
        with socket.create_connection(address, timeout=60) as conn:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # wait for the receiver to close
        return {"sha256": hashlib.sha256(data).hexdigest()}
    if "inject" in request:
        packets = [bytes.fromhex(text) for text in request["packets"]]
        with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM) as sock:
            for packet in packets:
                sock.sendto(packet, (request["inject"], 0x86DD if packet[0] >> 4 == 6 else 0x0800))
                time.sleep(float(request.get("gap", 0)))
        return {"sent": len(packets)}
    if "send_ip" in request:
        packets = [bytes.fromhex(text) for text in request["send_ip"]]
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            for packet in packets:
                sock.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
                time.sleep(float(request.get("gap", 0)))
        return {"sent": len(packets)}
    return {"error": f"unknown request {sorted(request)}"}


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            try:
                answer = handle(json.loads(line))
            except Exception as exc:  # report, never die: the guest has no other way to talk
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(answer).encode() + b"\n")
            self.wfile.flush()


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer((address, port), Handler) as server:
        print("GUEST-AGENT-READY", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
