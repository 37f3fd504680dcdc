"""The TUN device: where inner packets enter and leave the host's IP stack.

Opened through python-pytun with IFF_TUN | IFF_NO_PI, so each read is exactly
one IP packet (IPv4 or IPv6, told apart by the version nibble) and each write
hands one IP packet to the stack. The device is not persistent: closing the
file descriptor removes it, so even a killed process leaves nothing behind.

With `vnet_hdr` (IFF_VNET_HDR, header size 10 set by TUNSETVNETHDRSZ) every
packet in either direction is preceded by a struct virtio_net_hdr. That lets
the receive path write one large TCP packet made of many segments
(core.gro), which the kernel takes as a GSO packet: one trip through its
stack instead of one per segment. No offloads are enabled (no TUNSETOFFLOAD),
so what we read is always one complete packet with its checksums done; the
header we read is skipped (`complete_checksum` completes a checksum should
the kernel ever leave one partial).

With `multi_queue` (IFF_MULTI_QUEUE, for `usertunnel up --queues N`) the
device can have several queues, each a file descriptor of its own: `queue()`
attaches another one (TUNSETIFF with the same name and flags on a new
descriptor). The kernel spreads what the host sends into the device over the
queues by flow: a flow goes to the queue that last wrote a packet of that flow
into the device (the tun driver's flow table, kept a few seconds), else to one
picked by the flow's hash; so each flow is read from one queue, in order. The
device lasts until its last queue is closed.
"""

from __future__ import annotations

import fcntl
import os
import struct

import pytun

from ..core.checksum import fold, ones_complement_sum
from ..core.errors import ConfigError

TUNSETCARRIER = 0x400454E2  # _IOW('T', 226, int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
VNET_HDR_LEN = 10
VNET_NONE = bytes(VNET_HDR_LEN)  # no GSO, no checksum offload: a plain packet
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1


class Tun:
    def __init__(self, name: str, vnet_hdr: bool = False, tap: bool = False, multi_queue: bool = False) -> None:
        # A TAP device (gretap) reads and writes Ethernet frames instead of IP packets.
        kind = pytun.IFF_TAP if tap else pytun.IFF_TUN
        flags = kind | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
        flags |= pytun.IFF_MULTI_QUEUE if multi_queue else 0
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as exc:
            text = str(exc)
            if "Operation not permitted" in text or "Permission denied" in text:
                raise ConfigError(
                    f"cannot create TUN device {name!r}: {text}; run as root or with CAP_NET_ADMIN"
                ) from None
            raise ConfigError(f"cannot create TUN device {name!r}: {text}") from None
        self.tap = tap
        self.multi_queue = multi_queue
        self.name: str = self._dev.name
        self.fd: int = self._dev.fileno()
        os.set_blocking(self.fd, False)
        self.vnet_hdr = vnet_hdr
        if vnet_hdr:
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))

    def queue(self) -> Tun:
        """Another queue of this multi-queue device, on a descriptor of its own, with the same flags."""
        if not self.multi_queue:
            raise ConfigError(f"TUN device {self.name!r} has one queue only: it was created without IFF_MULTI_QUEUE")
        return Tun(self.name, vnet_hdr=self.vnet_hdr, tap=self.tap, multi_queue=True)

    def write(self, packet: bytes | bytearray | memoryview) -> None:
        """One plain IP packet into the stack (behind an empty virtio_net_hdr with `vnet_hdr`)."""
        if self.vnet_hdr:
            os.writev(self.fd, (VNET_NONE, packet))
        else:
            os.write(self.fd, packet)

    def set_carrier(self, on: bool) -> None:
        """Carrier on or off (TUNSETCARRIER, Linux 5.0+): off, routes over the device stop being used."""
        fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))

    def close(self) -> None:
        """Close the device; the kernel removes the interface with it."""
        if self.fd >= 0:
            self._dev.close()
            self.fd = -1


def complete_checksum(vnet: bytes | bytearray | memoryview, packet: memoryview) -> None:
    """Complete, in place in `packet`, a partial checksum that `vnet` (the virtio_net_hdr read with it) marks
    VIRTIO_NET_HDR_F_NEEDS_CSUM: the field holds the pseudo-header sum, and the sum from csum_start to the
    end goes in its place. Not expected without offloads; handled should one come."""
    start, offset = struct.unpack_from("=HH", vnet, 6)
    where = start + offset
    if where + 2 <= len(packet):
        total = fold(ones_complement_sum(packet[start:]))
        packet[where : where + 2] = (~total & 0xFFFF).to_bytes(2, "big")
