"""The TUN device: where inner packets enter and leave the host's IP stack.

Opened through python-pytun with IFF_TUN | IFF_NO_PI, so each read is exactly
one IP packet (IPv4 or IPv6, told apart by the version nibble) and each write
hands one IP packet to the stack. The device is not persistent: closing the
file descriptor removes it, so even a killed process leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import os
import struct

import pytun

from ..core.params import ConfigError

TUNSETCARRIER = 0x400454E2  # _IOW('T', 226, int)


class Tun:
    def __init__(self, name: str) -> None:
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            text = str(exc)
            if "Operation not permitted" in text or "Permission denied" in text:
                raise ConfigError(
                    f"cannot create TUN device {name!r}: {text}; run as root or with CAP_NET_ADMIN"
                ) from None
            raise ConfigError(f"cannot create TUN device {name!r}: {text}") from None
        self.name: str = self._dev.name
        self.fd: int = self._dev.fileno()
        os.set_blocking(self.fd, False)

    def set_carrier(self, on: bool) -> None:
        """Carrier on or off (TUNSETCARRIER, Linux 5.0+): off, routes over the device stop being used."""
        fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))

    def close(self) -> None:
        """Close the device; the kernel removes the interface with it."""
        if self.fd >= 0:
            self._dev.close()
            self.fd = -1
