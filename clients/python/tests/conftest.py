"""A real 3-node development cluster for the SDK's tests, started once per test session from the
built ``lockstepd`` (``$LOCKSTEP_BIN_DIR``, else ``${CARGO_TARGET_DIR:-target}/debug``), with
the flags of crates/lockstep-server/tests/common/mod.rs: ``--dev``, ids, members, a data
directory each, loopback ports, and fast elections.

Tests that need no cluster (tests/test_names.py, test_stubs.py, test_transport.py,
test_models.py) do not start it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import pytest

from lockstep import Client, Identity, LockstepError, Options

REPO = Path(__file__).resolve().parents[3]
PURCHASE_ORDER = (REPO / "examples" / "workflows" / "purchase-order.yaml").read_text()
# How long the cluster may take to elect a leader (a debug build on a loaded machine).
START_SECONDS = 60.0
# How long to wait for a lockstepd that is being rebuilt to appear.
BINARY_WAIT_SECONDS = 120.0
# What a node logs once the replicated log format allows group commit and request digests
# (crates/lockstep-server/src/format_gate.rs): before that, a reused request id is answered
# with the first outcome instead of REQUEST_ID_REUSED.
LOG_FORMAT_RAISED = "log format allows group commit"
# The signing secret every node of the test cluster holds as ``sdk`` (a Standard Webhooks one).
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# Client settings for tests: fail within seconds rather than the default 30.
TEST_OPTIONS = Options(attempt_timeout=10.0, total_timeout=20.0)


def bin_dir() -> Path:
    explicit = os.environ.get("LOCKSTEP_BIN_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))) / "debug"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against the same cluster) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Cluster:
    """Three lockstepd processes on loopback."""

    binary: Path
    directory: Path
    ports: List[int]
    processes: List[Optional["subprocess.Popen[bytes]"]] = field(default_factory=list)

    @property
    def endpoints(self) -> List[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def log(self, i: int) -> Path:
        return self.directory / f"node{i + 1}.log"

    def webhooks_file(self) -> Path:
        """Every node's webhook settings: loopback allowed, the secret ``sdk`` (WEBHOOK_SECRET)."""
        path = self.directory / "webhooks.toml"
        if not path.exists():
            path.write_text(f'allow = ["127.0.0.1/32"]\ntimeout = "2s"\n[secrets]\nsdk = "{WEBHOOK_SECRET}"\n')
        return path

    def start(self) -> None:
        members = ",".join(f"{i + 1}={e}" for i, e in enumerate(self.endpoints))
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, RUST_LOG="info,openraft=warn")
        for i, endpoint in enumerate(self.endpoints):
            command = [
                str(self.binary),
                "--dev",
                "--id", str(i + 1),
                "--listen", endpoint,
                "--initial-members", members,
                "--data-dir", str(self.directory / f"node{i + 1}"),
                "--heartbeat-ms", "100",
                "--election-timeout-ms", "500",
                "--webhooks", str(self.webhooks_file()),
            ]  # fmt: skip
            with open(self.log(i), "ab") as log:
                self.processes.append(
                    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
                )

    def wait_for_leader(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        with self.client("probe") as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if all(client.status(node=i).leader_id for i in range(len(self.ports))) and all(
                        LOG_FORMAT_RAISED in self.log(i).read_text(errors="replace") for i in range(len(self.ports))
                    ):
                        return
                except LockstepError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"no leader (or the log format was not raised) within {START_SECONDS:.0f} s\n{self.logs()}")

    def check_alive(self) -> None:
        for i, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"node {i + 1} exited ({process.returncode})\n{self.logs()}")

    def logs(self) -> str:
        tails = []
        for i in range(len(self.ports)):
            lines = self.log(i).read_text(errors="replace").splitlines()[-15:] if self.log(i).exists() else []
            tails.append(f"--- node {i + 1} ({self.log(i)})\n" + "\n".join(lines))
        return "\n".join(tails)

    def stop(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            if process is None:
                continue
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def leader(self) -> int:
        """The index of the leader's endpoint."""
        with self.client("probe") as client:
            status = client.status(node=0)
        assert status.leader_addr in self.endpoints, status
        return self.endpoints.index(status.leader_addr)

    def follower(self) -> int:
        leader = self.leader()
        return next(i for i in range(len(self.ports)) if i != leader)

    def client(
        self,
        actor: str,
        roles: Sequence[str] = (),
        *,
        kind: str = "human",
        endpoints: Optional[Sequence[str]] = None,
        options: Options = TEST_OPTIONS,
    ) -> Client:
        return Client(
            list(endpoints or self.endpoints), identity=Identity(actor, kind, tuple(roles)), options=options
        )


def _start_cluster(directory: Path) -> Cluster:
    binary = bin_dir() / "lockstepd"
    deadline = time.monotonic() + BINARY_WAIT_SECONDS
    while not binary.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {binary}: build it (cargo build) or set LOCKSTEP_BIN_DIR")
        time.sleep(2)
    cluster = Cluster(binary, directory, [free_port() for _ in range(3)])
    cluster.start()
    try:
        cluster.wait_for_leader()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """The secure one-node cluster's tests (test_secure.py) first: their node stops before the
    session's dev cluster starts, so that one cluster runs at a time."""
    items.sort(key=lambda item: item.path.name != "test_secure.py")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="lockstep-sdk-") as directory:
        try:
            started = _start_cluster(Path(directory) / "try1")
        except RuntimeError as first:
            # The binary may have been replaced mid-start by a rebuild: one more try.
            print(f"cluster did not start, trying again: {first}")
            started = _start_cluster(Path(directory) / "try2")
        try:
            yield started
        finally:
            started.stop()


@pytest.fixture(scope="session")
def admin(cluster: Cluster) -> Iterator[Client]:
    with cluster.client("admin", ["admin"]) as client:
        yield client


@pytest.fixture(scope="session")
def purchase_order(admin: Client) -> str:
    """The purchase-order workflow applied; its version."""
    return admin.apply_definition(PURCHASE_ORDER).version


def derived_workflow(workflow: str, queue: str, *, retry: Optional[str] = None, on_exhausted: bool = True) -> str:
    """purchase-order.yaml under another workflow name and task queue, so that a test's tasks
    are its own; ``retry`` replaces the task's retry policy, and without ``on_exhausted`` an
    exhausted task opens an incident."""
    source = PURCHASE_ORDER.replace("workflow: purchase-order", f"workflow: {workflow}")
    source = source.replace("queue: erp", f"queue: {queue}")
    if retry is not None:
        source = source.replace(
            "retry: { max_attempts: 6, backoff: exponential, initial: 2s, max: 5m, jitter: full }", f"retry: {retry}"
        )
    if not on_exhausted:
        source = source.replace("          on_exhausted: fail\n", "")
    assert f"workflow: {workflow}" in source and f"queue: {queue}" in source
    return source
