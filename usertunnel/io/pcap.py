"""`--pcap FILE`: the outer and the inner packets, in one pcapng file that Wireshark and tshark open.

Two interfaces, so that a reader can filter each side of the tunnel
(`tshark -r FILE -Y 'frame.interface_id == 0'`):

  interface 0 "underlay"  what crossed the raw socket (outer IPv4 + GRE/IPIP + inner)
  interface 1 "tun"       what crossed the TUN device (the inner packet alone)

both with link type RAW (101: the packet starts at its IP header), and each
packet marked inbound or outbound (epb_flags). pcapng is written here in a
few lines because scapy's writer has no public way to put packets on more
than one interface (the format: draft-ietf-opsawg-pcapng, sections 4.1-4.3).
"""

from __future__ import annotations

import struct
import time
from typing import BinaryIO

LINKTYPE_RAW = 101
UNDERLAY, TUN = 0, 1
INBOUND, OUTBOUND = 1, 2

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_SHB_USERAPPL, _OPT_IF_NAME, _OPT_EPB_FLAGS = 0, 4, 2, 2


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


class PcapNgWriter:
    """Appends packets to a pcapng file; `close()` flushes it."""

    def __init__(self, path: str) -> None:
        # Unbuffered: one write per packet, so the file can be read (tail -f | wireshark -k -i -) while it runs.
        self._file: BinaryIO = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        end = _option(_OPT_END, b"")
        shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _option(_OPT_SHB_USERAPPL, b"usertunnel") + end
        self._file.write(_block(_SHB, shb))
        for name in (b"underlay", b"tun"):
            idb = struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + _option(_OPT_IF_NAME, name) + end
            self._file.write(_block(_IDB, idb))

    def write(self, interface: int, packet: bytes | bytearray | memoryview, direction: int) -> None:
        micros = time.time_ns() // 1000
        data = bytes(packet)
        body = struct.pack("<IIIII", interface, micros >> 32, micros & 0xFFFFFFFF, len(data), len(data))
        body += data + b"\x00" * (-len(data) % 4)
        body += _option(_OPT_EPB_FLAGS, struct.pack("<I", direction)) + _option(_OPT_END, b"")
        self._file.write(_block(_EPB, body))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
