"""GRE keepalives as Cisco IOS sends them, and the line protocol they drive.

Format (Cisco, "How GRE Keepalives Work"): every PERIOD seconds the tunnel
sends an ordinary GRE packet (protocol type 0x0800) to its remote whose
payload is an IPv4 packet *from the remote back to us*, carrying a bare GRE
header with protocol type 0. Any peer that decapsulates and routes the inner
packet (Cisco, Linux with accept_local, usertunnel) sends that inner packet
back: it reaches us as a GRE packet of protocol type 0 with nothing after the
header, the keepalive reply. The peer needs no keepalive configuration.

Line protocol (Cisco's rule): each keepalive sent increments a counter, each
reply resets it to 0; when the counter exceeds RETRIES the line protocol goes
down, and the next reply brings it up. This file holds that state and builds
the packets; the I/O shell runs the timer and turns the TUN carrier off and on.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from . import gre, ipv4
from .errors import ConfigError

DEFAULT_PERIOD = 10.0  # Cisco's default, seconds
DEFAULT_RETRIES = 3  # Cisco's default


@dataclass(frozen=True, slots=True)
class KeepaliveParams:
    period: float = DEFAULT_PERIOD
    retries: int = DEFAULT_RETRIES

    def __post_init__(self) -> None:
        if not 0.05 <= self.period <= 32767:
            raise ConfigError(f"keepalive period {self.period:g} out of range: 0.05..32767 seconds")
        if not 1 <= self.retries <= 255:
            raise ConfigError(f"keepalive retries {self.retries} out of range: 1..255")


def parse_keepalive(text: str) -> KeepaliveParams:
    """`PERIOD[,RETRIES]`, as Cisco's `keepalive 10 3` (defaults 10 s and 3)."""
    period_text, _, retries_text = text.partition(",")
    try:
        period = float(period_text)
        retries = int(retries_text) if retries_text else DEFAULT_RETRIES
    except ValueError:
        raise ConfigError(f'invalid keepalive "{text}": PERIOD[,RETRIES] such as 10,3 (seconds, count)') from None
    return KeepaliveParams(period, retries)


class Change(enum.Enum):
    UP = "up"
    DOWN = "down"


class LineProtocol:
    """The keepalive state of one tunnel: up or down, and what was sent and answered."""

    __slots__ = ("params", "up", "missed", "sent", "replies", "changes")

    def __init__(self, params: KeepaliveParams) -> None:
        self.params = params
        self.up = True  # as Cisco: up until RETRIES keepalives in a row go unanswered
        self.missed = 0
        self.sent = 0
        self.replies = 0
        self.changes = 0

    def sending(self) -> Change | None:
        """A keepalive is being sent (each PERIOD); DOWN when this one exceeds RETRIES unanswered."""
        self.sent += 1
        self.missed += 1
        if self.up and self.missed > self.params.retries:
            self.up = False
            self.changes += 1
            return Change.DOWN
        return None

    def reply(self) -> Change | None:
        """A keepalive reply arrived; UP if the line protocol was down."""
        self.replies += 1
        self.missed = 0
        if not self.up:
            self.up = True
            self.changes += 1
            return Change.UP
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "state": "up" if self.up else "down",
            "period": self.params.period,
            "retries": self.params.retries,
            "unanswered": self.missed,
            "sent": self.sent,
            "replies": self.replies,
            "changes": self.changes,
        }


_INNER = struct.Struct("!BBHHHBBH4s4s")


def inner_request(local: bytes, remote: bytes, ikey: int | None, icsum: bool) -> bytes:
    """The inner packet of a keepalive: IPv4 from `remote` to `local`, a bare GRE header (type 0).

    The GRE header is what will come back to us, so it carries what our own receive
    rules want: our input key, and a checksum if we require one (icsum).
    """
    header = gre.GREHeader(gre.PROTO_KEEPALIVE, key=ikey, checksum=0 if icsum else None)
    if icsum:
        header = header.with_checksum(b"")
    body = header.pack()
    ip = ipv4.IPv4Header(0, 20 + len(body), 0, ipv4.FLAG_DF, 255, 47, 0, remote, local).with_checksum()
    return ip.pack() + body


def is_request_to_reflect(inner: bytes | bytearray | memoryview, local: bytes | None, remote: bytes | None) -> bool:
    """True for a peer's keepalive: an IPv4 packet from us (`local`) to the peer (`remote`) carrying a bare
    GRE header of protocol type 0, i.e. exactly what the peer expects to see come back."""
    if len(inner) < 24 or inner[9] != 47 or remote is None or bytes(inner[16:20]) != remote:
        return False
    if local is not None and bytes(inner[12:16]) != local:
        return False
    ihl = (inner[0] & 0x0F) << 2
    if len(inner) < ihl + gre.BASE_LEN:
        return False
    flags = (inner[ihl] << 8) | inner[ihl + 1]
    proto = (inner[ihl + 2] << 8) | inner[ihl + 3]
    return proto == gre.PROTO_KEEPALIVE and not flags & gre.VERSION_MASK
