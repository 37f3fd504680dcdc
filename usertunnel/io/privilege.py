"""Least privilege: once the TUN device and raw sockets are open, become an ordinary user.

Creating a TUN device and configuring it needs CAP_NET_ADMIN; opening raw
sockets needs CAP_NET_RAW. Moving packets through descriptors that are already
open needs neither. So `usertunnel up --user USER` does every privileged thing
first, then drops to USER's uid and gid with no supplementary groups. A
process that changes all its uids from 0 to non-zero loses every capability
(capabilities(7), "Effect of user ID changes on capabilities"), which we check
rather than assume.
"""

from __future__ import annotations

import grp
import os
import pwd

from ..core.params import ConfigError


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
