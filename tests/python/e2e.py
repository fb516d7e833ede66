#!/usr/bin/env python3
"""Lockstep from another language: a Python client built from the .proto files alone.

This script is the proof that a service written in something other than Rust can use
Lockstep with nothing but `proto/lockstep/v1/lockstep.proto` and the standard gRPC tools.
It generates its stubs at start-up with `python -m grpc_tools.protoc` (nothing generated is
checked in), then drives the purchase-order workflow against one node:

  1. applies examples/workflows/purchase-order.yaml (twice: the second apply is a no-op);
  2. creates an instance as alice, retries the create with the same request id (applied once);
  3. submits it as alice;
  4. provokes three refusals and reads each one's `reason` from the google.rpc.ErrorInfo in
     the status details (grpc_status.rpc_status.from_call): FORBIDDEN (alice approving her
     own order), NOT_ALLOWED_FROM_STATE (submitting twice) and VERSION_CONFLICT (a stale
     expected_version);
  5. approves it as bob;
  6. reads the instance and its history and checks every record, including the per-instance
     hash chain carried in `record_json`; then asks the node to verify the audit chains.

Usage:
    python tests/python/e2e.py HOST:PORT [--expect-follower] [--key KEY]

The endpoint must be a node started with `--dev` (callers name themselves with the
x-lockstep-actor / x-lockstep-roles / x-lockstep-actor-kind headers). With
--expect-follower the script first checks that the node is a follower, and that reads were
served by that node, so writes are known to have been forwarded to the leader.

Run it with the venv made by scripts/python-env:
    scripts/python-env
    ${LOCKSTEP_PY_VENV:-/var/tmp/lockstep-pyenv}/bin/python tests/python/e2e.py 127.0.0.1:7102

It runs in CI from crates/lockstep-server/tests/python_client.rs against a 3-node cluster.
Exit status: 0 when everything matched; 1 on any mismatch or unexpected error, with a
message saying what differed.
"""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

try:
    import grpc
    import grpc_tools
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
except ImportError as missing:
    sys.exit(
        f"e2e.py: {missing}: run it with the venv's python after scripts/python-env "
        "(${LOCKSTEP_PY_VENV:-/var/tmp/lockstep-pyenv}/bin/python)"
    )

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The top-level package of the stubs this script generates (not `lockstep`: see generate_stubs).
STUB_PACKAGE = "lockstep_e2e"
# The ErrorInfo domain of every Lockstep error.
DOMAIN = "lockstep.dev"
# How long to keep retrying a call answered UNAVAILABLE (e.g. no leader known yet).
RETRY_SECONDS = 30.0
# Deadline of one call.
CALL_TIMEOUT = 10.0
# The purchase-order definition's permission predicate for `approve`.
APPROVE_ALLOW = "'approver' in actor.roles && actor.id != instance.data.requester"


class Mismatch(Exception):
    """Something the server said is not what the API promises."""


def expect(what, got, want):
    """Fails the run unless got == want."""
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")
    print(f"  ok: {what} = {got!r}")


def generate_stubs(proto_root):
    """Runs protoc on lockstep.proto and imports the generated modules.

    Returns (messages, services): the `lockstep_pb2` and `lockstep_pb2_grpc` modules.
    """
    proto = os.path.join(proto_root, "lockstep", "v1", "lockstep.proto")
    if not os.path.isfile(proto):
        raise Mismatch(f"no {proto}: pass --proto-root with the repository's proto/ directory")
    # grpc_tools ships the well-known types (google/protobuf/*.proto) in its _proto directory.
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    # The generated code is only needed until it is imported.
    with tempfile.TemporaryDirectory(prefix="lockstep-py-stubs-") as out:
        # The Python SDK (clients/python), installed in the same venv, owns the `lockstep`
        # package with stubs of its own: generating under another top-level name makes sure
        # that this script uses the stubs it made from the .proto. Only Python module names
        # change; the proto package, and so every gRPC method path, stays lockstep.v1.
        root = os.path.join(out, "proto")
        copy = os.path.join(root, STUB_PACKAGE, "v1", "lockstep.proto")
        os.makedirs(os.path.dirname(copy))
        shutil.copyfile(proto, copy)
        command = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{root}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}",
            copy,
        ]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise Mismatch(f"protoc failed ({run.returncode}): {run.stderr.strip()}")
        # protoc writes lockstep_e2e/v1/lockstep_pb2.py and lockstep_pb2_grpc.py, which import
        # each other as `lockstep_e2e.v1.*` (implicit namespace packages: no __init__.py needed).
        sys.path.insert(0, out)
        messages = importlib.import_module(f"{STUB_PACKAGE}.v1.lockstep_pb2")
        services = importlib.import_module(f"{STUB_PACKAGE}.v1.lockstep_pb2_grpc")
        sys.path.remove(out)
    print(f"generated stubs from {proto} with grpc_tools.protoc")
    return messages, services


def actor(name, roles=(), kind="human"):
    """The metadata naming the caller in development mode."""
    return (
        ("x-lockstep-actor", name),
        ("x-lockstep-roles", ",".join(roles)),
        ("x-lockstep-actor-kind", kind),
    )


ADMIN = actor("admin", ["admin"])
ALICE = actor("alice", ["requester"])
BOB = actor("bob", ["approver"])


def request_id():
    """A fresh client-chosen id for a mutating request."""
    return str(uuid.uuid4())


def call(method, request, metadata):
    """Calls a unary method, retrying while the node answers UNAVAILABLE.

    UNAVAILABLE means the outcome is unknown or no leader is known yet (say, just after an
    election). Retrying the *same* request, with the same request_id, is safe: the cluster
    applies a request id at most once and answers a retry with the first outcome.
    """
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            return method(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise


def error_info(error):
    """The google.rpc.ErrorInfo in a failed call's status details, or None."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def describe(error):
    """A one-line account of a failed call: gRPC code, message and ErrorInfo."""
    text = f"{error.code().name}: {error.details()}"
    info = error_info(error)
    if info is not None:
        text += f" [ErrorInfo domain={info.domain} reason={info.reason} metadata={dict(info.metadata)}]"
    return text


def refused(what, method, request, metadata, code, reason):
    """Makes a call that must be refused; checks its gRPC code and ErrorInfo reason.

    Returns the ErrorInfo so the caller can check its metadata.
    """
    print(f"{what}: expecting {code.name} / {reason}")
    try:
        response = call(method, request, metadata)
    except grpc.RpcError as error:
        expect("gRPC code", error.code(), code)
        info = error_info(error)
        if info is None:
            raise Mismatch(f"{what}: the status has no google.rpc.ErrorInfo detail: {describe(error)}")
        expect("ErrorInfo domain", info.domain, DOMAIN)
        expect("ErrorInfo reason", info.reason, reason)
        return info
    raise Mismatch(f"{what}: expected a {reason} refusal, but the call succeeded: {response}")


def wait_for_role(cluster, pb):
    """Waits until the node knows a leader; returns its ClusterStatus."""
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        status = call(cluster.Status, pb.ClusterStatusRequest(), ADMIN)
        if status.leader_id != 0:
            return status
        if time.monotonic() > deadline:
            raise Mismatch(f"node {status.node_id} knows no leader after {RETRY_SECONDS:.0f} s")
        time.sleep(0.2)


def run(args):
    pb, pb_grpc = generate_stubs(args.proto_root)
    channel = grpc.insecure_channel(args.endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=RETRY_SECONDS)
    except grpc.FutureTimeoutError:
        raise Mismatch(f"could not connect to {args.endpoint} within {RETRY_SECONDS:.0f} s")
    definitions = pb_grpc.DefinitionsStub(channel)
    instances = pb_grpc.InstancesStub(channel)
    audit = pb_grpc.AuditStub(channel)
    cluster = pb_grpc.ClusterStub(channel)

    # 0. Who are we talking to?
    node = wait_for_role(cluster, pb)
    print(f"node {node.node_id} at {args.endpoint} is {node.role}; leader is node {node.leader_id}")
    if args.expect_follower:
        expect("role of the node under test", node.role, "Follower")
        if node.leader_id == node.node_id:
            raise Mismatch(f"node {node.node_id} says it is its own leader")

    # 1. Apply the definition. Its version is the SHA-256 of its canonical form, so applying
    #    the same content again is a no-op that returns the same version.
    with open(args.workflow, encoding="utf-8") as f:
        source = f.read()
    print("apply the purchase-order definition")
    provenance = pb.Provenance(repository="lockstep", commit="python-e2e", path="purchase-order.yaml")
    applied = call(
        definitions.Apply,
        pb.ApplyDefinitionRequest(request_id=request_id(), source=source, provenance=provenance),
        ADMIN,
    )
    expect("applied workflow", applied.workflow, "purchase-order")
    if len(applied.version) != 64 or any(c not in "0123456789abcdef" for c in applied.version):
        raise Mismatch(f"definition version {applied.version!r} is not a hex SHA-256")
    again = call(
        definitions.Apply,
        pb.ApplyDefinitionRequest(request_id=request_id(), source=source, provenance=provenance),
        ADMIN,
    )
    expect("second apply created a version", again.created, False)
    expect("second apply version", again.version, applied.version)
    latest = call(definitions.Get, pb.GetDefinitionRequest(workflow="purchase-order"), ADMIN)
    expect("latest definition version", latest.version, applied.version)
    if applied.created:
        expect("definition applied_by", latest.applied_by, "admin")
        expect("stored definition source is what was sent", latest.source == source, True)

    # 2. Create an instance as alice; retry the same create (same request id).
    key = args.key or f"PY-{uuid.uuid4().hex[:12]}"
    data = {"amount": 500, "requester": "alice", "supplier": "Python Ltd"}
    print(f"create purchase-order/{key} as alice")
    create = pb.CreateInstanceRequest(
        request_id=request_id(), workflow="purchase-order", key=key, data_json=json.dumps(data)
    )
    created = call(instances.Create, create, ALICE)
    expect("state after create", created.state, "draft")
    expect("version after create", created.version, 1)
    if not created.instance_id:
        raise Mismatch("create returned an empty instance_id")
    retried = call(instances.Create, create, ALICE)
    expect(
        "a retried create (same request_id) answers the first outcome",
        (retried.instance_id, retried.version, retried.audit_seq),
        (created.instance_id, created.version, created.audit_seq),
    )
    by_id = pb.InstanceRef(id=created.instance_id)
    by_key = pb.InstanceRef(key=pb.BusinessKey(workflow="purchase-order", key=key))

    # 3. Alice submits it (addressed by business key this time).
    print("submit as alice")
    submitted = call(
        instances.Transition,
        pb.TransitionRequest(request_id=request_id(), instance=by_key, transition="submit"),
        ALICE,
    )
    expect("submit: instance", submitted.instance_id, created.instance_id)
    expect("state after submit", submitted.state, "submitted")
    expect("version after submit", submitted.version, 2)

    # 4. Refusals. Each changes nothing; the reason is machine-readable in ErrorInfo.
    info = refused(
        "alice approves her own order (separation of duties)",
        instances.Transition,
        pb.TransitionRequest(request_id=request_id(), instance=by_id, transition="approve"),
        actor("alice", ["approver"]),
        grpc.StatusCode.PERMISSION_DENIED,
        "FORBIDDEN",
    )
    expect("FORBIDDEN names the predicate", info.metadata.get("predicate"), APPROVE_ALLOW)
    refused(
        "alice submits again",
        instances.Transition,
        pb.TransitionRequest(request_id=request_id(), instance=by_id, transition="submit"),
        ALICE,
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_ALLOWED_FROM_STATE",
    )
    refused(
        "bob approves with a stale expected_version",
        instances.Transition,
        pb.TransitionRequest(
            request_id=request_id(), instance=by_id, transition="approve", expected_version=1
        ),
        BOB,
        grpc.StatusCode.ABORTED,
        "VERSION_CONFLICT",
    )

    # 5. Bob approves, at the version he read.
    print("approve as bob")
    approved = call(
        instances.Transition,
        pb.TransitionRequest(
            request_id=request_id(), instance=by_id, transition="approve", expected_version=2
        ),
        BOB,
    )
    expect("state after approve", approved.state, "approved")
    expect("version after approve", approved.version, 3)

    # 6. Read it back: the refusals left no trace.
    print("get the instance")
    got = call(instances.Get, pb.GetInstanceRequest(instance=by_key), ADMIN)
    instance = got.instance
    expect("instance id", instance.id, created.instance_id)
    expect("instance workflow", instance.workflow, "purchase-order")
    expect("instance key", instance.key, key)
    expect("instance state", instance.state, "approved")
    expect("instance version", instance.version, 3)
    expect("instance definition_version", instance.definition_version, applied.version)
    expect("instance created_by", instance.created_by, "alice")
    expect("instance data", json.loads(instance.data_json), data)
    # Tasks and incidents are typed messages: the approval made the ERP task, ready.
    expect("number of tasks", len(instance.tasks), 1)
    task = instance.tasks[0]
    expect("task queue", task.queue, "erp")
    expect("task type", task.task_type, "create-purchase-order")
    expect("task origin", task.origin, "approve")
    expect("task status", task.status, "ready")
    expect("task attempt", task.attempt, 0)
    expect("task on_complete", task.on_complete, "place")
    expect("task on_exhausted", task.on_exhausted, "fail")
    expect("task input carries the instance data", json.loads(task.input_json)["data"], data)
    expect("number of incidents", len(instance.incidents), 0)
    expect("read is stale", got.read.stale, False)
    if args.expect_follower:
        # A default (linearizable) read is served by the node asked, not the leader.
        expect("read served by node", got.read.node_id, node.node_id)

    print("read the history")
    history = call(instances.History, pb.HistoryRequest(instance=by_id), ADMIN)
    records = list(history.records)
    expect("number of history records", len(records), 3)
    # (kind, transition, from, to, actor, roles, the change that wrote it)
    want = [
        ("created", "", "", "draft", "alice", ["requester"], created),
        ("transition", "submit", "draft", "submitted", "alice", ["requester"], submitted),
        ("transition", "approve", "submitted", "approved", "bob", ["approver"], approved),
    ]
    previous_instance_hash = "0" * 64
    for n, (record, (kind, transition, from_, to, who, roles, change)) in enumerate(zip(records, want), 1):
        label = f"history[{n}]"
        expect(f"{label}.kind", record.kind, kind)
        expect(f"{label}.transition", record.transition, transition)
        # `from` is a Python keyword, so the field is read with getattr.
        expect(f"{label}.from", getattr(record, "from"), from_)
        expect(f"{label}.to", record.to, to)
        expect(f"{label}.actor_id", record.actor_id, who)
        expect(f"{label}.actor_kind", record.actor_kind, "human")
        expect(f"{label}.actor_roles", list(record.actor_roles), roles)
        expect(f"{label}.actor_authn", record.actor_authn, "dev-header")
        expect(f"{label}.workflow", record.workflow, "purchase-order")
        expect(f"{label}.instance_id", record.instance_id, created.instance_id)
        expect(f"{label}.definition_version", record.definition_version, applied.version)
        expect(f"{label}.instance_seq", record.instance_seq, n)
        expect(f"{label}.global_seq (the change's audit_seq)", record.global_seq, change.audit_seq)
        expect(f"{label}.instance_version", record.instance_version, n)
        if transition == "approve":
            # Every predicate evaluated, typed: who may approve, and the amount guard.
            results = {p.role: p.result for p in record.predicates}
            expect(f"{label}.predicates", results, {"allow": True, "guard": True})
        # record_json is the complete stored record: check it agrees with the fields and
        # that the instance's hash chain links each record to the one before.
        full = json.loads(record.record_json)
        expect(f"{label} record_json hash", full["hash"], record.hash)
        expect(f"{label} record_json instance_version", full["record"]["instance_version"], n)
        expect(f"{label} instance_prev_hash", full["instance_prev_hash"], previous_instance_hash)
        previous_instance_hash = full["instance_hash"]

    # The node recomputes both hash chains over everything it stores.
    verified = call(audit.Verify, pb.VerifyAuditRequest(), ADMIN)
    expect("audit verify ok", verified.ok, True)
    if verified.head_seq < approved.audit_seq:
        raise Mismatch(f"audit head {verified.head_seq} is behind our last change {approved.audit_seq}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("endpoint", help="HOST:PORT of a lockstepd node started with --dev")
    parser.add_argument(
        "--expect-follower",
        action="store_true",
        help="check that the node is a follower (so writes are forwarded) and served the reads",
    )
    parser.add_argument("--key", help="business key of the instance (default: a fresh PY-… key)")
    parser.add_argument(
        "--proto-root",
        default=os.path.join(REPO, "proto"),
        help="directory holding lockstep/v1/lockstep.proto (default: the repository's proto/)",
    )
    parser.add_argument(
        "--workflow",
        default=os.path.join(REPO, "examples", "workflows", "purchase-order.yaml"),
        help="the purchase-order definition to apply",
    )
    args = parser.parse_args()
    try:
        run(args)
    except Mismatch as mismatch:
        print(f"FAIL: {mismatch}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"FAIL: unexpected gRPC error: {describe(error)}", file=sys.stderr)
        return 1
    print("PASS: the Python client built from lockstep.proto drove purchase-order end to end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
