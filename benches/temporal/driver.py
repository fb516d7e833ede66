"""The Temporal side of `lockstep-bench --baseline temporal`: one unit of work is the one the
`transitions` scenario runs against Lockstep, a purchase order created and then submitted, in
Temporal's terms a workflow started and its first step taken through a validated update (an
update whose validator can refuse it at attempt time, as Lockstep refuses a transition the
state does not allow). Each of the two is one operation.

A closed loop of ``--concurrency`` clients, or an open loop of ``--rate`` units per second,
runs for ``--warmup`` then ``--duration`` seconds against a Temporal server at ``--address``;
the worker that runs the workflows lives in this process (it shares the machine's cores with
the server and the clients). Prints one JSON object: the latency in microseconds of every
operation measured, and the count of failed operations (open loop: also the arrivals that
waited for a slot, ``late``, and those never sent, ``dropped``).

The open loop is lockstep-bench's (benches/src/load.rs): units arrive on a fixed schedule
whatever the answers; a unit's first operation is measured from its intended start, so a
stall counts against every unit it delayed; units that arrived in the window count even when
they finish after it; at most ``IN_FLIGHT_MAX`` units run at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import timedelta
from typing import List, Optional, Tuple

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker


# As lockstep-bench's load::IN_FLIGHT_MAX.
IN_FLIGHT_MAX = 4096


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
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int)
    load.add_argument("--rate", type=float, help="open loop: units of work per second")
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--task-queue", default="lockstep-bench")
    parser.add_argument(
        "--server-pid", type=int, help="the dev server's process, whose CPU time is reported"
    )
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
    late = 0
    dropped = 0
    start = time.monotonic()
    measured_from = start + args.warmup
    end = measured_from + args.duration

    def server_cpu_us() -> Optional[float]:
        """The server's user + system CPU time from /proc, in µs (None without a pid)."""
        if args.server_pid is None:
            return None
        try:
            with open(f"/proc/{args.server_pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000 / os.sysconf("SC_CLK_TCK")

    cpu: dict = {}

    async def sample_cpu() -> None:
        """CPU of the server and of this process (clients and worker) over the window."""
        await asyncio.sleep(max(0.0, measured_from - time.monotonic()))
        server_before, driver_before = server_cpu_us(), time.process_time()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        server_after, driver_after = server_cpu_us(), time.process_time()
        if server_before is not None and server_after is not None:
            cpu["server_cpu_us"] = server_after - server_before
        cpu["driver_cpu_us"] = (driver_after - driver_before) * 1_000_000

    async def unit(began: float) -> Tuple[List[int], int]:
        """A workflow started, then its first step as a validated update; `began` is when
        the unit started (closed loop) or was meant to (open loop). Answers the latencies of
        its operations and how many failed."""
        measured: List[int] = []

        def note(since: float, ended: float) -> None:
            measured.append(max(1, int((ended - since) * 1_000_000)))

        try:
            handle = await client.start_workflow(
                PurchaseOrder.run,
                id=f"order-{uuid.uuid4()}",
                task_queue=args.task_queue,
                execution_timeout=timedelta(minutes=10),
            )
        except Exception:
            return measured, 1
        started = time.monotonic()
        note(began, started)
        try:
            await handle.execute_update(PurchaseOrder.submit)
        except Exception:
            return measured, 1
        note(started, time.monotonic())
        return measured, 0

    def count(measured: List[int], failed: int) -> None:
        nonlocal errors
        latencies.extend(measured)
        errors += failed

    async def one_client() -> None:
        while time.monotonic() < end:
            began = time.monotonic()
            measured, failed = await unit(began)
            # A closed-loop unit counts when it started after the warm-up and ended in the
            # window, as in lockstep-bench.
            if began >= measured_from and time.monotonic() <= end:
                count(measured, failed)

    async def open_loop(rate: float) -> None:
        nonlocal late, dropped
        interval = 1.0 / rate
        slots = asyncio.Semaphore(IN_FLIGHT_MAX)
        running: set[asyncio.Task[None]] = set()

        async def run_unit(intended: float) -> None:
            try:
                measured, failed = await unit(intended)
                if intended >= measured_from:
                    count(measured, failed)
            finally:
                slots.release()

        sequence = 0
        while True:
            intended = start + sequence * interval
            if intended >= end:
                break
            delay = intended - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots.locked():
                if intended >= measured_from:
                    late += 1
                try:
                    await asyncio.wait_for(slots.acquire(), timeout=max(0.0, end - time.monotonic()))
                except asyncio.TimeoutError:
                    dropped += int((end - intended) * rate + 0.999)
                    break
            else:
                await slots.acquire()
            task = asyncio.create_task(run_unit(intended))
            running.add(task)
            task.add_done_callback(running.discard)
            sequence += 1
        # Units that arrived in the window count even when they finish after it.
        if running:
            await asyncio.gather(*running)

    rate: Optional[float] = args.rate
    async with Worker(client, task_queue=args.task_queue, workflows=[PurchaseOrder]):
        sampler = asyncio.create_task(sample_cpu())
        if rate is not None:
            await open_loop(rate)
        else:
            await asyncio.gather(*(one_client() for _ in range(args.concurrency)))
        await sampler
    print(
        json.dumps(
            {
                "latencies_us": latencies,
                "errors": errors,
                "late": late,
                "dropped": dropped,
                "seconds": args.duration,
                **cpu,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
    # The report is printed. Leave without interpreter finalization: temporalio's native
    # core can abort there (PyGILState_Release during shutdown, SIGABRT), which would fail a
    # run that measured everything.
    sys.stdout.flush()
    os._exit(0)
