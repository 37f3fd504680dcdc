"""What `usertunnel up` is asked to do: one tunnel's parameters and the process's own options.

The command line (`usertunnel.cli`) and a configuration file (`front.config`) both end here;
`run.service` and `run.workers` carry an `UpOptions` out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..core.params import TunnelParams

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class UpOptions:
    params: TunnelParams
    device: str | None = None
    mtu: int | None = None
    addresses: list[Address] = field(default_factory=list)
    trace: bool = False
    pcap: str | None = None
    user: str | None = None
    coalesce: bool = True  # receive coalescing into a TUN with a vnet header (core.gro)
    batch: bool = True  # recvmmsg / sendmmsg on raw IPv4 sockets (io.batch)
    queues: int = 1  # worker processes over a multi-queue TUN (usertunnel.run.workers)
    metrics: tuple[str, int] | None = None  # --metrics ADDR:PORT: Prometheus metrics served there (io.metrics)
    routes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # `up --config`: the file's routes
    link_up: bool = True  # `up --config` with `up = false`: the device is created down, as `ip tunnel add`
