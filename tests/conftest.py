"""Shared fixtures: namespace labs for end-to-end tests.

A test that needs root and network namespaces asks for the `lab` fixture. Where
they are unavailable it is skipped with the reason, except under
USERTUNNEL_REQUIRE_NETNS=1 (set by .ci/run), where it fails instead: in CI a
skipped end-to-end test would hide a broken data path. The same holds for every
other skip (`skip_or_fail`, and `pytest_runtest_makereport` below for any skip that
does not go through it), and CI runs hypothesis under the `ci` profile (below).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import HealthCheck, settings

from usertunnel.io import netns
from usertunnel.io.netns import UpProcess

UNDER_A, UNDER_B = "198.51.100.1", "198.51.100.2"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"
_counter = itertools.count()


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN, raw sockets)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ping") is None:
        return "needs ping (Debian iputils-ping)"
    return None


def ci_requires_every_test() -> bool:
    """USERTUNNEL_REQUIRE_NETNS=1 (set by .ci/run): every test must run; a skip is a failure."""
    return os.environ.get("USERTUNNEL_REQUIRE_NETNS") == "1"


def skip_or_fail(reason: str, what: str = "this test") -> NoReturn:
    """Skip a test that cannot run on this machine, saying why; under USERTUNNEL_REQUIRE_NETNS=1 fail it
    instead: in CI what it needs (root, a Debian package, a Python package) must be there."""
    if ci_requires_every_test():
        pytest.fail(f"USERTUNNEL_REQUIRE_NETNS=1 but {what} cannot run: {reason}")
    pytest.skip(reason)


def require_netns() -> None:
    reason = _netns_unavailable()
    if reason is not None:
        skip_or_fail(reason)


# --- hypothesis: the budgets, and CI's profile ----------------------------------------------------------------
# Each property test names its own budget (max_examples) beside it: 100 unless it says otherwise, 150 to 600
# for most, USERTUNNEL_FUZZ_EXAMPLES for the decapsulate fuzz target (2000 by default, 6000 in CI: .ci/run) and
# USERTUNNEL_PLAN_EXAMPLES for the plan proofs (400). Under USERTUNNEL_REQUIRE_NETNS=1 (.ci/run), or with
# HYPOTHESIS_PROFILE=ci, the `ci` profile runs them derandomised: the examples follow from each test's name,
# so a CI run is repeatable and never fails on an example no other run has seen; a local run explores anew
# each time (and keeps what fails in .hypothesis/, as usual). No deadline: the machines running CI are shared.
# Loaded here, before any test module builds its settings, so that every settings(...) inherits from it.
settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
_profile = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if ci_requires_every_test() else None)
if _profile is not None:
    settings.load_profile(_profile)


_SKIP_IN_CI = "USERTUNNEL_REQUIRE_NETNS=1 but this test was skipped (in CI every test runs): "


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under USERTUNNEL_REQUIRE_NETNS=1 a skip that did not go through `skip_or_fail` (a `skipif` marker,
    `pytest.importorskip`, a bare `pytest.skip`) is reported as a failure all the same."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and ci_requires_every_test() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = _SKIP_IN_CI + _skip_reason(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped while it is imported (`pytest.importorskip` at its top)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and ci_requires_every_test():
        report.outcome = "failed"
        report.longrepr = _SKIP_IN_CI + _skip_reason(report.longrepr)


def _skip_reason(longrepr: object) -> str:
    """The reason out of a skip report's (path, line, reason)."""
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


class Lab:
    """Two namespaces joined by a veth pair on 198.51.100.0/24; tunnels are started on demand."""

    def __init__(self, prefix: str = "t", ipv6: bool = True) -> None:
        """Namespaces ut-PREFIX<pid>-<n>-a/b; `ipv6=False` keeps IPv6 off in them (nothing but our traffic)."""
        n = next(_counter)
        tag = f"{os.getpid() % 100000}-{n}"
        self.a = f"ut-{prefix}{tag}-a"
        self.b = f"ut-{prefix}{tag}-b"
        self.veth_a = f"v{prefix}{tag}a"[:15]
        self.veth_b = f"v{prefix}{tag}b"[:15]
        self.ends: list[UpProcess] = []
        for name in (self.a, self.b):
            netns.create(name, ipv6=ipv6)
        netns.veth(self.a, self.veth_a, self.b, self.veth_b, UNDER_A, UNDER_B, 24)

    def start(self, namespace: str, args: list[str], wait: bool = True) -> UpProcess:
        end = UpProcess(namespace, args)
        self.ends.append(end)
        if wait:
            end.wait_ready()
        return end

    def pair(
        self, args_a: list[str], args_b: list[str] | None = None, name: str = "tun0"
    ) -> tuple[UpProcess, UpProcess]:
        """Both ends, A at 203.0.113.1/30 and B at 203.0.113.2/30, each pointing at the other."""
        args_b = args_a if args_b is None else args_b
        end_a = self.start(
            self.a, ["--local", UNDER_A, "--remote", UNDER_B, "--name", name, "--address", f"{INNER_A}/30", *args_a]
        )
        end_b = self.start(
            self.b, ["--local", UNDER_B, "--remote", UNDER_A, "--name", name, "--address", f"{INNER_B}/30", *args_b]
        )
        return end_a, end_b

    def run(self, namespace: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return netns.run(namespace, argv, timeout=timeout)

    def ping(self, namespace: str, target: str, count: int = 3) -> subprocess.CompletedProcess[bytes]:
        return self.run(namespace, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", target])

    def socket(self, namespace: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        return netns.open_socket(namespace, family, kind, proto)

    def close(self) -> None:
        for end in self.ends:
            end.kill()
        for name in (self.a, self.b):
            netns.remove(name)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_netns()
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# --- interop peers (tests/interop) -------------------------------------------------------------------------


def require_peer(reason: str | None) -> None:
    """Skip an interop test whose peer cannot run here, or fail under USERTUNNEL_REQUIRE_NETNS=1."""
    if reason is not None:
        skip_or_fail(reason, "this interop test")


@pytest.fixture(scope="session")
def kernel() -> Iterator[Any]:
    """A Linux kernel peer (user-mode-linux), booted once per test session."""
    require_netns()
    sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))
    import kernel_peer

    require_peer(kernel_peer.missing())
    peer = kernel_peer.KernelPeer()
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def pair_factory(kernel: Any) -> Iterator[Any]:
    """`pair_factory(Pair, variant)`: a kernel tunnel and a usertunnel pointing at each other (the module's
    `Pair` class builds both); each is closed at the end of the test if its usertunnel still runs."""
    made: list[Any] = []

    def make(pair_type: Any, variant: Any) -> Any:
        made.append(pair_type(kernel, variant))
        return made[-1]

    yield make
    for pair in made:
        if pair.ours.returncode is None:
            pair.close()


# --- the interoperability matrix, written by the suite --------------------------------------------------------

MATRIX_FILE = Path(__file__).resolve().parent / "interop" / "MATRIX.md"
README = Path(__file__).resolve().parent.parent / "README.md"
MATRIX_START, MATRIX_END = "<!-- interop-matrix:start -->", "<!-- interop-matrix:end -->"
PEERS = {
    "test_kernel": "Linux 6.1 (user-mode-linux): ip_gre, ipip",
    "test_kernel_ipv6": "Linux 6.1 (user-mode-linux): sit, ip6_tunnel, ip6_gre",
    "test_kernel_gretap": "Linux 6.1 (user-mode-linux): gretap",
    "test_kernel_refusals": "Linux 6.1 (user-mode-linux): refusals, both directions",
    "test_kernel_keepalive": "Linux 6.1 (user-mode-linux): Cisco-style keepalives",
    "test_kernel_fou": "Linux 6.1 (user-mode-linux): our FOU and GUE into its gre, ipip, sit (ip fou add)",
    "test_kernel_esp": "Linux 6.1 (user-mode-linux): ESP (IPsec) with ip_vti and GRE over xfrm transport",
    "test_ovs": "Open vSwitch 3.1, userspace datapath",
}
GRID_MODULES = {
    "test_kernel",
    "test_kernel_ipv6",
    "test_kernel_fou",
    "test_kernel_esp",
}  # a row per configuration, a column per check; elsewhere a row per check
_interop_results: dict[str, str] = {}
_interop_collected: list[str] = []
_interop_deselected: list[str] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    _interop_deselected.extend(item.nodeid for item in items if "/interop/" in item.nodeid)


def pytest_collection_finish(session: pytest.Session) -> None:
    _interop_collected.extend(item.nodeid for item in session.items if "/interop/" in item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "/interop/" not in report.nodeid:
        return
    if report.when == "call" or report.outcome != "passed":
        previous = _interop_results.get(report.nodeid)
        if previous in (None, "passed"):
            _interop_results[report.nodeid] = report.outcome


def _matrix_label(item: pytest.Item) -> str:
    """A test's name in the matrix: its `matrix` marker, else its function name in words."""
    marker = item.get_closest_marker("matrix")
    if marker is not None:
        return str(marker.args[0])
    name = getattr(item, "originalname", item.name)
    return name.removeprefix("test_").replace("_", " ")


def _matrix_markdown(session: pytest.Session) -> str:
    """Tables per peer: a row per configuration and a column per check, or a row per check."""
    docs = {item.nodeid: _matrix_label(item) for item in session.items}
    tables: dict[str, dict[str, dict[str, str]]] = {}
    for nodeid, outcome in _interop_results.items():
        module = nodeid.split("/")[-1].split(".py")[0]
        name = nodeid.split("::")[-1]
        doc = docs.get(nodeid, name.split("[")[0])
        param = name[name.index("[") + 1 : -1] if "[" in name else ""
        row, column = (param, doc) if module in GRID_MODULES else (f"{doc} [{param}]" if param else doc, "result")
        mark = {"passed": "pass", "failed": "FAIL", "skipped": "skipped"}[outcome]
        tables.setdefault(PEERS.get(module, module), {}).setdefault(row, {})[column] = mark
    lines = []
    for peer, rows in sorted(tables.items()):
        columns = sorted({c for cells in rows.values() for c in cells})
        first = "configuration" if columns != ["result"] else "check"
        lines += [f"**{peer}**", "", f"| {first} | " + " | ".join(columns) + " |"]
        lines.append("|---" * (len(columns) + 1) + "|")
        for row, cells in sorted(rows.items()):
            lines.append(f"| {row} | " + " | ".join(cells.get(c, "") for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After a run of the whole interop suite, rewrite the matrix and the README's copy of it."""
    if _interop_deselected or not _interop_collected or set(_interop_collected) != set(_interop_results):
        return
    modules = {nodeid.split("/")[-1].split(".py")[0] for nodeid in _interop_collected}
    if not set(PEERS) <= modules:  # a run of only some interop files writes nothing
        return
    if any(outcome == "skipped" for outcome in _interop_results.values()):
        return
    write_matrix(_matrix_markdown(session), MATRIX_FILE, README)


def write_matrix(body: str, matrix: Path, readme: Path, force: bool | None = None) -> bool:
    """Write the matrix (and the README's copy of it) only when a result changed, or when asked
    (USERTUNNEL_WRITE_MATRIX=1): a run that changes nothing leaves the work tree clean. True if written."""
    if force is None:
        force = os.environ.get("USERTUNNEL_WRITE_MATRIX") == "1"
    old = matrix.read_text() if matrix.exists() else ""
    if not force and _matrix_body(old) == body.strip():
        return False
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stamp = f"_Written by the interop suite (`pytest tests/interop`) on {when}._\n"
    matrix.write_text("# Interoperability matrix\n\n" + stamp + "\n" + body)
    text = readme.read_text()
    if MATRIX_START in text and MATRIX_END in text:
        head, _, rest = text.partition(MATRIX_START)
        _, _, tail = rest.partition(MATRIX_END)
        readme.write_text(f"{head}{MATRIX_START}\n{stamp}\n{body}\n{MATRIX_END}{tail}")
    return True


def _matrix_body(text: str) -> str:
    """The matrix file's table, without its title and date line."""
    lines = text.splitlines()
    return "\n".join(line for line in lines[1:] if not line.startswith("_Written by")).strip()
