"""The worker API against the cluster: handlers registered per queue and task type complete
tasks with bounded concurrency and heartbeats; failing handlers fail attempts; an incident is
resolved; the example worker stops gracefully on SIGTERM.

Each test applies purchase-order.yaml under its own workflow name and queue, so that tasks
left by other tests are never its business."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest
from conftest import REPO, TEST_OPTIONS, Cluster, derived_workflow, unique

from lockstep import AsyncClient, Client, Identity, LeasedTask
from lockstep.models import Instance
from lockstep.worker import NonRetryable, Retryable, Worker, WorkerStats

TASK_TYPE = "create-purchase-order"
WORKER = Identity("worker-1", "worker")


def define(admin: Client, *, retry: Optional[str] = None, on_exhausted: bool = True) -> tuple[str, str]:
    workflow, queue = unique("po"), unique("erp")
    admin.apply_definition(derived_workflow(workflow, queue, retry=retry, on_exhausted=on_exhausted))
    return workflow, queue


async def approved_order(cluster: Cluster, workflow: str, **data: Any) -> str:
    """An approved order of ``workflow`` (so its task is ready); its instance id."""
    async with AsyncClient(cluster.endpoints, identity=Identity("alice"), options=TEST_OPTIONS) as alice:
        created = await alice.create_instance(workflow, {"amount": 10, "requester": "alice", **data})
        await alice.transition(created.instance_id, "submit")
    async with AsyncClient(cluster.endpoints, identity=Identity("bob", "human", ("approver",))) as bob:
        await bob.transition(created.instance_id, "approve")
    return created.instance_id


async def wait_for(
    client: AsyncClient, instance_id: str, done: Callable[[Instance], bool], seconds: float = 15.0
) -> Instance:
    deadline = time.monotonic() + seconds
    while True:
        instance = await client.get_instance(instance_id)
        if done(instance):
            return instance
        assert time.monotonic() < deadline, f"{instance_id} never got there: {instance}"
        await asyncio.sleep(0.05)


async def serving(worker: Worker, cluster: Cluster, body: Callable[[AsyncClient], Awaitable[None]]) -> WorkerStats:
    """Runs ``worker`` while ``body`` runs, then stops it and returns its stats."""
    async with AsyncClient(cluster.endpoints, identity=WORKER, options=TEST_OPTIONS) as client:
        serve = asyncio.create_task(worker.serve(client))
        try:
            await body(client)
        finally:
            worker.stop()
            stats = await asyncio.wait_for(serve, 20)
    return stats


@pytest.mark.asyncio
async def test_handlers_complete_tasks_within_the_concurrency_limit(cluster: Cluster, admin: Client) -> None:
    workflow, queue = define(admin)
    worker = Worker(concurrency=2, poll_wait=1.0, heartbeat_every=0.1)
    running, most = [0], [0]
    lock = threading.Lock()

    @worker.task(queue, TASK_TYPE)
    def place(task: LeasedTask) -> Dict[str, Any]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.35)  # long enough for heartbeats
        with lock:
            running[0] -= 1
        return {"data": {"po_number": f"PO-{task.lease.instance_id}"}}

    ids = [await approved_order(cluster, workflow) for _ in range(4)]

    async def body(client: AsyncClient) -> None:
        for instance_id in ids:
            done = await wait_for(client, instance_id, lambda i: i.state == "ordered")
            assert done.data["po_number"] == f"PO-{instance_id}"
            assert done.tasks[0].status == "completed" and done.tasks[0].result == {"data": {"po_number": f"PO-{instance_id}"}}

    stats = await serving(worker, cluster, body)
    assert (stats.completed, stats.failed, stats.lost) == (4, 0, 0)
    assert most[0] == 2
    history = admin.history(ids[0])
    kinds = [r.kind for r in history]
    assert kinds.count("task_heartbeat") >= 1 and kinds[-1] == "task_completed", kinds
    placed = next(r for r in history if r.transition == "place")
    assert (placed.actor.id, placed.actor.kind, placed.to_state) == ("worker-1", "worker", "ordered")
    # The order ships: an event from a service takes `deliver`.
    with cluster.client("shipping", kind="service") as shipping:
        assert shipping.send_event(ids[0], "shipment.delivered").state == "delivered"


@pytest.mark.asyncio
async def test_a_failing_handler_fails_the_attempt(cluster: Cluster, admin: Client) -> None:
    # A long first backoff: the failed attempt stays visible for the whole test.
    workflow, queue = define(admin, retry="{ max_attempts: 3, backoff: fixed, initial: 5m }")
    worker = Worker(concurrency=4, poll_wait=1.0)

    @worker.task(queue, TASK_TYPE)
    async def place(task: LeasedTask) -> Dict[str, Any]:
        supplier = task.input["data"]["supplier"]
        if supplier == "flaky":
            raise Retryable("the ERP timed out")
        if supplier == "buggy":
            raise KeyError("po_number")
        raise NonRetryable("the ERP refuses orders from a blocked supplier")

    flaky = await approved_order(cluster, workflow, supplier="flaky")
    buggy = await approved_order(cluster, workflow, supplier="buggy")
    blocked = await approved_order(cluster, workflow, supplier="blocked")

    async def body(client: AsyncClient) -> None:
        retried = await wait_for(client, flaky, lambda i: i.tasks[0].status == "backoff")
        assert (retried.state, retried.tasks[0].attempt, retried.tasks[0].last_error) == ("approved", 1, "the ERP timed out")
        retried = await wait_for(client, buggy, lambda i: i.tasks[0].status == "backoff")
        assert retried.tasks[0].last_error == "KeyError: 'po_number'"
        # Not retryable: the policy is exhausted and on_exhausted (fail) is taken.
        exhausted = await wait_for(client, blocked, lambda i: i.state == "rejected")
        assert exhausted.tasks[0].status == "exhausted"

    stats = await serving(worker, cluster, body)
    assert (stats.completed, stats.failed) == (0, 3)
    assert "task_failed" in [r.kind for r in admin.history(flaky)]


@pytest.mark.asyncio
async def test_an_exhausted_task_opens_an_incident_an_operator_resolves(cluster: Cluster, admin: Client) -> None:
    workflow, queue = define(admin, on_exhausted=False)
    worker = Worker(concurrency=1, poll_wait=1.0)
    attempts: List[int] = []

    @worker.task(queue, TASK_TYPE)
    def place(task: LeasedTask) -> Dict[str, Any]:
        attempts.append(task.lease.token.attempt)
        if len(attempts) == 1:
            raise NonRetryable("the supplier is unknown to the ERP")
        return {"data": {"po_number": "PO-7"}}

    instance_id = await approved_order(cluster, workflow)

    async def body(client: AsyncClient) -> None:
        stuck = await wait_for(client, instance_id, lambda i: any(i.open_incidents()))
        (incident,) = stuck.open_incidents()
        assert incident.task_id == stuck.tasks[0].id and stuck.state == "approved"
        async with AsyncClient(cluster.endpoints, identity=Identity("ops", "human", ("operator",))) as ops:
            await ops.resolve_incident(instance_id, incident.id, retry_task=True)
        done = await wait_for(client, instance_id, lambda i: i.state == "ordered")
        assert not any(done.open_incidents())

    await serving(worker, cluster, body)
    assert len(attempts) == 2


@pytest.mark.asyncio
async def test_a_stop_releases_the_tasks_still_running_after_the_drain(cluster: Cluster, admin: Client) -> None:
    workflow, queue = define(admin)
    worker = Worker(concurrency=1, poll_wait=1.0, drain=0.3)
    started = asyncio.Event()

    @worker.task(queue, TASK_TYPE)
    async def stuck(task: LeasedTask) -> Dict[str, Any]:
        started.set()
        await asyncio.sleep(3600)
        return {}

    ids: List[str] = []

    async def body(client: AsyncClient) -> None:
        ids.append(await approved_order(cluster, workflow))
        await asyncio.wait_for(started.wait(), 15)

    stats = await serving(worker, cluster, body)
    assert (stats.released, stats.completed, stats.lost) == (1, 0, 0), stats
    task = admin.get_instance(ids[0]).tasks[0]
    assert (task.status, task.worker) == ("ready", None), task
    # Ready at once for another worker, with a new lease; the released one is stale.
    async with AsyncClient(cluster.endpoints, identity=Identity("worker-2", "worker"), options=TEST_OPTIONS) as other:
        leased = await other.poll_tasks(queue, max_tasks=1, wait=2.0)
        assert [t.lease.instance_id for t in leased] == ids
        assert leased[0].lease.token.attempt == 2
        await other.complete_task(leased[0].lease, {"data": {"po_number": "PO-R"}})
    history = [r.kind for r in admin.history(ids[0])]
    assert "task_released" in history, history


def test_the_example_worker_finishes_its_task_on_sigterm(cluster: Cluster, admin: Client) -> None:
    workflow, queue = define(admin)
    example = REPO / "clients" / "python" / "examples" / "erp_worker.py"
    command = [sys.executable, str(example), "--endpoints", ",".join(cluster.endpoints), "--queue", queue,
               "--work-ms", "1500", "--worker", "erp-example"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        instance_id = asyncio.run(approved_order(cluster, workflow, supplier="ACME"))
        deadline = time.monotonic() + 15
        while admin.get_instance(instance_id).tasks[0].status != "leased":
            assert time.monotonic() < deadline and process.poll() is None, "the example never leased the task"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "completed 1, failed 0, lost 0" in output, output
    # The task in hand was finished after the signal; no new task is taken after it.
    done = admin.get_instance(instance_id)
    assert (done.state, done.data["po_number"]) == ("ordered", f"PO-{instance_id}")
    later = asyncio.run(approved_order(cluster, workflow))
    time.sleep(0.3)
    assert admin.get_instance(later).tasks[0].status == "ready"
