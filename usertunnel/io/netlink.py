"""Link configuration through netlink (pyroute2): MTU, addresses, link state, underlay MTU.

This is what `ip link set` and `ip addr add` would do, without shelling out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..core.errors import ConfigError

DEFAULT_UNDERLAY_MTU = 1500  # Linux's ETH_DATA_LEN fallback when no route or device is known


def _ifindex(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _ifindex(ipr, name) is not None


def underlay_mtu(remote: bytes | None, device: str | None) -> int:
    """MTU of `device`, else of the device the route to `remote` leaves by, else 1500 (as Linux)."""
    with IPRoute() as ipr:
        index: int | None = None
        if device is not None:
            index = _ifindex(ipr, device)
            if index is None:
                raise ConfigError(f"cannot find device {device!r}: give an existing interface name with --dev")
        elif remote is not None:
            try:
                family = socket.AF_INET if len(remote) == 4 else socket.AF_INET6
                routes = ipr.route("get", dst=socket.inet_ntop(family, remote), family=family)
            except NetlinkError:
                routes = []
            if routes:
                index = routes[0].get("RTA_OIF")
        if index is None:
            return DEFAULT_UNDERLAY_MTU
        links = ipr.link("get", index=index)
        return int(links[0].get("IFLA_MTU"))


def is_local_address(address: bytes) -> bool:
    """Whether `address` (4 or 16 bytes) is assigned to an interface of this network namespace, as
    `ip addr` lists it (tentative IPv6 addresses included)."""
    family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
    text = socket.inet_ntop(family, address)
    with IPRoute() as ipr:
        for message in ipr.addr("dump", family=family):
            if text in (message.get("IFA_LOCAL"), message.get("IFA_ADDRESS")):
                return True
    return False


def configure(
    name: str,
    mtu: int,
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    ipv6: bool = True,
    routes: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    up: bool = True,
) -> None:
    """Set the MTU, add the addresses, bring the link up (unless `up` is False, as `ip tunnel add` leaves
    a new device down), and route `routes` through it.

    With `ipv6=False` (a mode that cannot carry IPv6, such as ipip) IPv6 is
    disabled on the device first, so the host does not send it router
    solicitations and MLD reports that the tunnel could only drop.
    """
    if not ipv6:
        sysctl = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
        with contextlib.suppress(FileNotFoundError), open(sysctl, "w") as knob:  # no such file: no IPv6
            knob.write("1")
    with IPRoute() as ipr:
        index = _set_mtu(ipr, name, mtu)
        for iface in addresses:
            try:
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except NetlinkError as exc:
                raise ConfigError(f"cannot add address {iface} to {name}: {exc.args[-1]}") from None
        if routes and not up:
            raise ConfigError(f"routes via {name} need the device up (up = true)")
        if up:
            ipr.link("set", index=index, state="up")
        for network in routes:
            family = socket.AF_INET if network.version == 4 else socket.AF_INET6
            try:
                ipr.route("add", dst=str(network), oif=index, family=family)
            except NetlinkError as exc:
                raise ConfigError(f"cannot route {network} via {name}: {exc.args[-1]}") from None


def set_mtu(name: str, mtu: int) -> None:
    """`ip link set NAME mtu MTU`."""
    with IPRoute() as ipr:
        _set_mtu(ipr, name, mtu)


def _set_mtu(ipr: IPRoute, name: str, mtu: int) -> int:
    """Set `name`'s MTU; its interface index."""
    index = _ifindex(ipr, name)
    if index is None:
        raise ConfigError(f"device {name!r} vanished while being configured")
    try:
        ipr.link("set", index=index, mtu=mtu)
    except NetlinkError as exc:
        raise ConfigError(f"cannot set MTU {mtu} on {name}: {exc.args[-1]}") from None
    return index
