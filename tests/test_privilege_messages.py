"""Commands run without the privileges they need say which, in one line, and exit 2 (issue 18, item 2).

The commands run as user nobody with no capabilities (setpriv), as a newcomer
without sudo would run them: nothing may be created first ("== removed ..."),
no "internal error", no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_netns

from usertunnel.io import netns, privilege

ROOT = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--inh-caps=-all"]
ROOT_WITHOUT_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


def _as(identity: list[str], *words: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    require_netns()  # root, to become someone else
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop privileges"
    argv = [*identity, sys.executable, "-m", "usertunnel", *words]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


def _one_line_naming(result: subprocess.CompletedProcess[str], command: str, capabilities: tuple[str, ...]) -> str:
    err = result.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"usertunnel {command}: error: needs root"), err
    for capability in capabilities:
        assert capability in lines[0], err
    assert "internal error" not in err and "Traceback" not in err
    assert "removed" not in result.stdout and "building" not in result.stdout, result.stdout
    return lines[0]


# --- the helper ---------------------------------------------------------------------------------------------


def test_missing_capabilities_reads_the_effective_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privilege, "effective_capabilities", lambda: 1 << 12 | 1 << 21)
    assert privilege.missing_capabilities(privilege.LAB) == ["CAP_NET_RAW"]
    assert privilege.missing_capabilities(privilege.TUNNEL) == ["CAP_NET_RAW"]
    monkeypatch.setattr(privilege, "effective_capabilities", lambda: (1 << 41) - 1)
    assert privilege.missing_capabilities(privilege.LAB) == []
    privilege.require(privilege.LAB)
    with pytest.raises(ValueError, match="CAP_BOGUS"):
        privilege.missing_capabilities(["CAP_BOGUS"])


def test_require_names_what_is_needed_and_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privilege, "effective_capabilities", lambda: 1 << 13)  # CAP_NET_RAW only
    with pytest.raises(privilege.PrivilegeError) as caught:
        privilege.require(privilege.TUNNEL)
    assert str(caught.value) == (
        "needs root, or the capabilities CAP_NET_ADMIN and CAP_NET_RAW, and this process lacks CAP_NET_ADMIN: "
        "run it with sudo"
    )
    monkeypatch.setattr(privilege, "effective_capabilities", lambda: 0)
    with pytest.raises(privilege.PrivilegeError, match="lacks all of them: run it with sudo"):
        privilege.require(privilege.LAB)
    with pytest.raises(privilege.PrivilegeError, match="lacks both: run it with sudo"):
        privilege.require(privilege.TUNNEL)


# --- the commands, as user nobody ---------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("scenario", [[], ["nat"], ["p2mp"]], ids=["basic", "nat", "p2mp"])
def test_lab_without_root_says_which_capabilities_in_one_line_and_creates_nothing(scenario: list[str]) -> None:
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    line = _one_line_naming(_as(NOBODY, "lab", *scenario), "lab", privilege.LAB)
    assert "run it with sudo" in line
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after - before if n.startswith(("ut-lab", "ut-nat", "ut-p2mp"))}


@pytest.mark.netns
def test_lab_as_root_without_capabilities_is_refused_the_same_way() -> None:
    _one_line_naming(_as(ROOT_WITHOUT_CAPABILITIES, "lab"), "lab", privilege.LAB)


@pytest.mark.netns
def test_daemon_without_root_says_which_capabilities_in_one_line() -> None:
    line = _one_line_naming(_as(NOBODY, "daemon"), "daemon", privilege.TUNNEL)
    assert "control socket" not in line


@pytest.mark.netns
def test_daemon_with_the_capabilities_but_not_root_says_how_to_place_its_control_socket() -> None:
    """Capabilities enough for tunnels, but /run/usertunnel is root's: the error says what to do."""
    require_netns()
    name = f"uhb-priv{os.getpid()}"
    netns.create(name)
    try:
        caps = "+net_admin,+net_raw"
        argv = [*NOBODY[:-1], f"--inh-caps={caps}", f"--ambient-caps={caps}", sys.executable, "-m", "usertunnel",
                "daemon"]  # fmt: skip
        result = netns.run(name, argv, timeout=30)
        err = result.stderr.decode()
        lines = [line for line in err.splitlines() if line.strip()]
        assert result.returncode == 2, err
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "Permission denied" in lines[0] and "USERTUNNEL_RUN_DIR" in lines[0], err
    finally:
        netns.remove(name)
