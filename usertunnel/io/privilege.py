"""Privileges: say at once which ones a command lacks; once the TUN device and raw sockets are open, drop them.

Creating a TUN device and configuring it needs CAP_NET_ADMIN; opening raw
sockets needs CAP_NET_RAW; creating network namespaces (`ip netns add`, the
labs) needs CAP_SYS_ADMIN as well. A command checks what it needs before it
creates anything (`require`), so that a person without them reads one line
naming what is missing, not the error of whichever step failed first.

Moving packets through descriptors that are already open needs no
privilege. So `usertunnel up --user USER` does every privileged thing
first, then drops to USER's uid and gid with no supplementary groups. A
process that changes all its uids from 0 to non-zero loses every capability
(capabilities(7), "Effect of user ID changes on capabilities"), which we check
rather than assume.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Collection

from ..core.errors import ConfigError

# capabilities(7): the bit of each capability in the CapEff mask of /proc/PID/status.
CAPABILITY_BITS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21}
NET_ADMIN, NET_RAW, SYS_ADMIN = "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"
TUNNEL = (NET_ADMIN, NET_RAW)  # `up` and `daemon`: a TUN device, netlink, raw sockets
LAB = (NET_ADMIN, NET_RAW, SYS_ADMIN)  # the labs: network namespaces too


class PrivilegeError(ConfigError):
    """A command was run without capabilities it needs (exit 2, as any ConfigError)."""

    def __init__(self, needed: Collection[str], missing: Collection[str]) -> None:
        if len(needed) > 1 and set(missing) == set(needed):
            lacks = "both" if len(needed) == 2 else "all of them"
        else:
            lacks = _and(missing)
        super().__init__(
            f"needs root, or the capabilities {_and(needed)}, and this process lacks {lacks}: run it with sudo"
        )
        self.needed = tuple(needed)
        self.missing = tuple(missing)


def _and(names: Collection[str]) -> str:
    """("A", "B", "C") -> "A, B and C"."""
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def lookup_user(name: str) -> tuple[int, int]:
    """USER's uid and primary gid; ConfigError if there is no such user."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"no such user {name!r}: give an existing user, e.g. nobody") from None
    return entry.pw_uid, entry.pw_gid


def effective_capabilities() -> int:
    """The CapEff mask of this process (from /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(needed: Collection[str]) -> list[str]:
    """The capabilities of `needed` (names from CAPABILITY_BITS) this process does not have in effect."""
    unknown = [name for name in needed if name not in CAPABILITY_BITS]
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}: known are {', '.join(CAPABILITY_BITS)}")
    effective = effective_capabilities()
    return [name for name in needed if not effective >> CAPABILITY_BITS[name] & 1]


def require(needed: Collection[str]) -> None:
    """Refuse (PrivilegeError, one line naming what is missing) unless this process has every capability
    of `needed`, e.g. `require(privilege.LAB)`. Call it before creating anything."""
    missing = missing_capabilities(needed)
    if missing:
        raise PrivilegeError(needed, missing)


def drop_to(name: str) -> str:
    """Become user `name` for good; return a sentence saying what we became."""
    uid, gid = lookup_user(name)
    if os.getuid() != 0 and os.geteuid() != 0:
        if os.getuid() == uid:
            return f"already running as {name} (uid {uid})"
        raise ConfigError(f"cannot switch to user {name!r}: not running as root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - would mean the kernel let us back
            raise ConfigError("dropping privileges failed: could regain uid 0")
        if effective_capabilities():
            raise ConfigError(f"dropping privileges left capabilities {effective_capabilities():#x}")
    group = grp.getgrgid(gid).gr_name
    return f"running as {name}:{group} (uid {uid}, gid {gid}) with no capabilities"
