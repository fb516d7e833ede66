"""The Temporal side of `lockstep-bench --baseline temporal`: one unit of work is the one the
`transitions` scenario runs against Lockstep, a purchase order created and then submitted, in
Temporal's terms a workflow started and its first step taken through a validated update (an
update whose validator can refuse it at attempt time, as Lockstep refuses a transition the
state does not allow). Each of the two is one operation.

A closed loop of ``--concurrency`` clients runs for ``--warmup`` then ``--duration`` seconds
against a Temporal server at ``--address``; the worker that runs the workflows lives in this
process (it shares the machine's cores with the server and the clients). Prints one JSON
object: the latency in microseconds of every operation that ended in the measured window,
and the count of failed operations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import timedelta
from typing import List

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker


@workflow.defn
class PurchaseOrder:
    def __init__(self) -> None:
        self.state = "draft"

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.state != "draft")
        return self.state

    @workflow.update
    def submit(self) -> str:
        self.state = "submitted"
        return self.state

    @submit.validator
    def allowed(self) -> None:
        if self.state != "draft":
            raise ValueError(f"submit is not allowed from {self.state}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--task-queue", default="lockstep-bench")
    args = parser.parse_args()

    # The server listens a little before it serves: try for up to 30 s.
    deadline = time.monotonic() + 30
    while True:
        try:
            client = await Client.connect(args.address)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    latencies: List[int] = []
    errors = 0
    start = time.monotonic()
    measured_from = start + args.warmup
    end = measured_from + args.duration

    def note(began: float, ended: float) -> None:
        if measured_from <= ended <= end:
            latencies.append(max(1, int((ended - began) * 1_000_000)))

    async def one_client() -> None:
        nonlocal errors
        while time.monotonic() < end:
            began = time.monotonic()
            try:
                handle = await client.start_workflow(
                    PurchaseOrder.run,
                    id=f"order-{uuid.uuid4()}",
                    task_queue=args.task_queue,
                    execution_timeout=timedelta(minutes=10),
                )
            except Exception:
                errors += 1
                continue
            started = time.monotonic()
            note(began, started)
            try:
                await handle.execute_update(PurchaseOrder.submit)
            except Exception:
                errors += 1
                continue
            note(started, time.monotonic())

    async with Worker(client, task_queue=args.task_queue, workflows=[PurchaseOrder]):
        await asyncio.gather(*(one_client() for _ in range(args.concurrency)))
    print(json.dumps({"latencies_us": latencies, "errors": errors, "seconds": args.duration}))


if __name__ == "__main__":
    asyncio.run(main())
