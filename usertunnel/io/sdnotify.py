"""Tell systemd how the daemon is doing: the sd_notify(3) protocol, over the socket module alone.

Rules for this file: it is part of the I/O shell and never decides anything. A
notification is advice to the service manager; failing to deliver one must
never take the daemon down, so `notify` reports failure as False and never
raises an OSError.

Theory of operation (sd_notify(3), NOTES). A service started with Type=notify
finds the manager's socket in $NOTIFY_SOCKET: an absolute path, or, when the
value starts with "@", a name in Linux's abstract namespace (the "@" stands
for the leading NUL byte of the address). A notification is ONE datagram on an
AF_UNIX SOCK_DGRAM socket whose payload is newline-separated VARIABLE=VALUE
assignments, e.g. "READY=1\\nSTATUS=3 tunnels up". The manager sets SO_PASSCRED
on its socket, so the kernel attaches our pid to every datagram; with the
default NotifyAccess=main only the unit's main process (MAINPID) is heard, so
the daemon must send from the process systemd started, not from a child.

What the daemon sends, and when:
  READY=1       once the control socket listens and every configured tunnel is up
  RELOADING=1   when a SIGHUP starts a reload (`reloading()` adds MONOTONIC_USEC, which
                systemd >= 253's Type=notify-reload requires), then READY=1 when done
  STOPPING=1    when shutdown begins
  STATUS=...    one short line for `systemctl status`
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"
TIMEOUT = 1.0  # seconds: the manager reads at once; this bounds a send to a full, stuck socket


def _address(value: str) -> str | None:
    """The AF_UNIX address $NOTIFY_SOCKET names, or None if it names none we can send to.

    sd_notify accepts an absolute path or "@name"; anything else (a relative
    path, systemd >= 254's "vsock:CID:PORT") is refused as it refuses it.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` ("READY=1", or several assignments joined by newlines) as one datagram to $NOTIFY_SOCKET.

    True if it was sent. False, with nothing sent, when NOTIFY_SOCKET is unset
    or empty (not started by systemd as Type=notify) or is no address sd_notify
    would accept; False too when the socket cannot be reached (it vanished,
    refuses, or its queue stayed full for TIMEOUT). `environ` defaults to
    os.environ.
    """
    value = (os.environ if environ is None else environ).get(ENV_NOTIFY_SOCKET, "")
    address = _address(value)
    if address is None:
        return False
    payload = state.encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(TIMEOUT)
            sent = sock.sendto(payload, address)
    except OSError:  # ENOENT, ECONNREFUSED, EACCES, timeout, AF_UNIX path too long: advice lost
        return False
    return sent == len(payload)  # a datagram goes whole or not at all; this only guards the contract


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    """Say a reload has begun: RELOADING=1 with the CLOCK_MONOTONIC time in microseconds, as sd_notify(3) asks."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", environ)
