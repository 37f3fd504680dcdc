"""`usertunnel down NAME`: stop the `usertunnel up` that runs tunnel NAME in this network namespace.

The `wg-quick down` habit. Every `usertunnel up` listens on its control socket
(DIR/NAME.sock, see usertunnel.run.control); `down` asks it to stop, and it stops as
on SIGTERM: counters printed to its log, TUN device removed. `down` then waits,
bounded, until the process is gone, so that when it returns the device is too.
Tunnels of `usertunnel daemon` are removed with `usertunnel tunnel del NAME`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from .control import (
    TIMEOUT,
    ControlError,
    Denied,
    Refused,
    _Stale,
    daemon_path,
    request,
    run_directory,
    socket_path,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
DEFAULT_WAIT = 10.0


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    down = subparsers.add_parser(
        "down",
        help="stop the `usertunnel up` running tunnel NAME in this namespace",
        description="Stop the `usertunnel up` that runs tunnel NAME in this network namespace, as SIGTERM would "
        "(its counters go to its log, its device is removed), and wait until it has exited. Tunnels of "
        "`usertunnel daemon` are removed with `usertunnel tunnel del NAME` instead.",
        epilog="exit status: 0 stopped; 1 no such tunnel, or it did not stop in time; 2 bad NAME.",
    )
    down.add_argument("name", metavar="NAME", help="the tunnel's device name, as `usertunnel show` lists it")
    down.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for it to exit (default {DEFAULT_WAIT:g})",
    )
    down.add_argument("--dir", type=Path, help="the exact directory of the control sockets (as for show)")


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir if args.dir is not None else run_directory()
    try:
        path = socket_path(directory, args.name)
    except ControlError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        answer = request(path, {"cmd": "down"}, TIMEOUT)
    except _Stale:
        return _fail(_not_running(directory, args.name, path), EXIT_ERROR)
    except Refused as exc:  # an instance that does not know `down` (an older version)
        return _fail(f"{args.name}: {exc.reason}: stop it with SIGTERM instead", EXIT_ERROR)
    except ControlError as exc:  # Denied (the sockets are root's): a missing privilege, exit 2 as elsewhere
        return _fail(str(exc), EXIT_USAGE if isinstance(exc, Denied) else EXIT_ERROR)
    pid = answer.get("pid")
    if not _gone(path, pid if isinstance(pid, int) else None, args.wait):
        return _fail(f"{args.name} (pid {pid}) was asked to stop and is still running after {args.wait:g} s", 1)
    print(f"{args.name}: stopped (pid {pid})")
    return EXIT_OK


def _not_running(directory: Path, name: str, path: Path) -> str:
    """Why there is nobody to stop, with what to do instead."""
    with contextlib.suppress(ControlError, _Stale):
        tunnels = request(daemon_path(directory), {"cmd": "show"}).get("tunnels", [])
        if any(isinstance(t, dict) and t.get("name") == name for t in tunnels):
            return f"{name} is run by usertunnel daemon: remove it with `usertunnel tunnel del {name}`"
    return f"no usertunnel up runs tunnel {name} in this network namespace (no {path}); `usertunnel show` lists them"


def _gone(path: Path, pid: int | None, wait: float) -> bool:
    """Wait until the control socket is removed and the process has exited; False if `wait` ran out first."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not path.exists() and (pid is None or not _alive(pid)):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited; its parent reaps it
    return True


def _fail(message: str, status: int) -> int:
    print(f"usertunnel down: error: {message}", file=sys.stderr)
    return status
