"""The committed stubs are what clients/python/regenerate makes from proto/, every RPC the SDK
covers has a method in both clients, and the package builds into a wheel that carries the
stubs and its type information (so it installs outside the repository)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

from lockstep import AsyncClient, Client
from lockstep import _requests as rq
from lockstep.v1 import lockstep_pb2 as pb

PACKAGE = REPO / "clients" / "python"
GENERATED = ("lockstep_pb2.py", "lockstep_pb2.pyi", "lockstep_pb2_grpc.py", "lockstep_pb2_grpc.pyi")


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(PACKAGE / "regenerate"), str(tmp_path)],
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "lockstep" / "v1" / name).read_bytes()
        != (PACKAGE / "src" / "lockstep" / "v1" / name).read_bytes()
    ]
    assert not stale, (
        f"{', '.join(stale)} differ from what proto/lockstep/v1/lockstep.proto generates: "
        "run clients/python/regenerate and commit the result"
    )


def covered_rpcs() -> set[str]:
    rpcs = {
        f"{service.name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        if service.name in rq.SERVICES
        for method in service.methods
    }
    return rpcs | set(rq.SINGLE_RPCS)


def test_every_rpc_of_the_covered_services_has_a_method_in_both_clients() -> None:
    missing = covered_rpcs() - set(rq.RPCS)
    assert not missing, f"RPCs the SDK does not wrap yet: {sorted(missing)} (add them to both clients)"
    unknown = set(rq.RPCS) - {
        f"{s.name}/{m.name}" for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods
    }
    assert not unknown, f"RPCS names RPCs lockstep.proto does not have: {sorted(unknown)}"
    for rpc, method in rq.RPCS.items():
        assert callable(getattr(Client, method, None)), f"Client.{method} ({rpc})"
        assert callable(getattr(AsyncClient, method, None)), f"AsyncClient.{method} ({rpc})"


def test_both_clients_have_the_same_calls_with_the_same_parameters() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name != "close"
        }

    sync, asynchronous = public(Client), public(AsyncClient)
    assert sync.keys() == asynchronous.keys()
    for name in sync:
        assert list(sync[name].parameters.values()) == list(asynchronous[name].parameters.values()), name
        expect_coroutine = name not in ("tail", "iter_instances")
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)) == expect_coroutine, name


def test_the_wheel_carries_the_stubs_and_py_typed(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(tmp_path), str(PACKAGE)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (wheel,) = tmp_path.glob("lockstep-*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"lockstep/v1/{name}" for name in GENERATED} | {"lockstep/py.typed", "lockstep/worker.py"}
    assert expected <= files, sorted(expected - files)
