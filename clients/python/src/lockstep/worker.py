"""A task worker: handlers registered per queue and task type, run with bounded concurrency,
heartbeats while a handler runs, and a graceful stop.

::

    from lockstep import Identity, LeasedTask
    from lockstep.worker import NonRetryable, Worker

    worker = Worker(concurrency=4)

    @worker.task("erp", "create-purchase-order")
    def place_order(task: LeasedTask) -> dict:
        if task.input["data"].get("supplier") == "blocked":
            raise NonRetryable("the ERP refuses orders from a blocked supplier")
        return {"data": {"po_number": erp.create_order(task.input)}}

    worker.run(["127.0.0.1:7101"], identity=Identity("erp-worker-1", kind="worker"))

A handler takes the :class:`~lockstep.models.LeasedTask` and returns the result (a JSON
object, or ``None`` for ``{}``): the task is completed with it, so its ``on_complete``
transition is taken with the result as payload. A handler may be a plain function (run in a
thread of the worker's own pool) or a coroutine function (run on the event loop).

When a handler raises, the attempt fails: :class:`NonRetryable` fails it for good (the retry
policy is treated as exhausted: ``on_exhausted`` or an incident), :class:`Retryable` and any
other exception fail it retryably (retried per the task's policy, until it is exhausted).

While a handler runs, the worker extends the lease (every third of the lease time, or
``heartbeat_every``). Should the lease be lost anyway (it expired and another worker leased
the task), the handler's result is dropped: the cluster would refuse it.

Stopping (:meth:`Worker.stop`, or SIGTERM / SIGINT under :meth:`Worker.run`) stops polling
at once and lets the tasks in hand finish, completing or failing them as usual. With
``drain`` (seconds), the tasks still running when it has passed are abandoned and handed back
with ``Tasks/Release``: ready again at once for another worker, the attempt not counted
against the retry policy (a plain-function handler's thread cannot be interrupted: it runs
on, and its result is dropped). Tasks a poll returns after the stop began are released at
once. A long poll cut short by the stop may have leased a task in the same instant: that
task is ready again when its lease expires (the task's timeout).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar, Union

from ._transport import Credentials, Identity, Options
from .aio import AsyncClient
from .errors import (
    Forbidden,
    InvalidArgument,
    LockstepError,
    PermissionDenied,
    StaleLease,
    TaskNotFound,
    Unauthenticated,
)
from .models import LeasedTask

log = logging.getLogger("lockstep.worker")

# Most tasks one worker holds at once, whatever its settings say.
WORKER_CONCURRENCY_MAX = 256
# Most tasks asked for in one poll, and the longest a poll waits (the server's limits).
POLL_TASKS_MAX = 32
POLL_WAIT_MAX = 30.0
# The pause after a failed poll before the next, so that a down cluster is not hammered (the
# client has already retried the poll itself for Options.total_timeout).
POLL_ERROR_PAUSE = 0.5
# Heartbeats: a third of the lease time by default, never more often than this.
HEARTBEAT_EVERY_MIN = 0.05
HEARTBEAT_EVERY_DEFAULT = 5.0
# The longest error text a failed attempt may send, in UTF-8 bytes (the server's
# TASK_ERROR_BYTES_MAX, crates/lockstep-server/src/tasks.rs); a longer one is cut.
ERROR_BYTES_MAX = 4096

# What a handler returns: the result, or None for an empty one.
Result = Optional[Mapping[str, Any]]
Handler = Callable[[LeasedTask], Union[Result, Awaitable[Result]]]
_H = TypeVar("_H", bound=Callable[..., Any])


def bounded(error: str) -> str:
    """The error text cut to ERROR_BYTES_MAX bytes of UTF-8, marked with an ellipsis."""
    encoded = error.encode("utf-8")
    if len(encoded) <= ERROR_BYTES_MAX:
        return error
    ellipsis = "…"
    room = ERROR_BYTES_MAX - len(ellipsis.encode("utf-8"))
    return encoded[:room].decode("utf-8", "ignore") + ellipsis


class TaskError(Exception):
    """Raised by a handler to fail the attempt with this message; ``retryable`` says whether
    the task's retry policy may retry it."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: Optional[bool] = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class Retryable(TaskError):
    """A failure that a later attempt may not have (the ERP timed out)."""

    retryable = True


class NonRetryable(TaskError):
    """A failure no retry can fix (the order is invalid): the retry policy is treated as
    exhausted."""

    retryable = False


@dataclass
class WorkerStats:
    """What a worker did, counted when it stops."""

    completed: int = 0
    failed: int = 0
    # Tasks whose lease was lost (expired and leased again) or whose result was refused.
    lost: int = 0
    # Tasks handed back with Tasks/Release on stopping (still running when ``drain`` passed).
    released: int = 0


class _Slots:
    """The concurrency limit: how many tasks may be in hand, shared by the queues' pollers."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._changed = asyncio.Condition()

    async def take(self, most: int) -> int:
        """Waits for a free slot, then takes up to ``most`` of the free ones."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.free > 0)
            taken = min(most, self.free)
            self.free -= taken
            return taken

    async def give_back(self, count: int) -> None:
        if count <= 0:
            return
        async with self._changed:
            self.free += count
            self._changed.notify_all()


class Worker:
    """Runs the handlers registered with :meth:`task` on the tasks of their queues.

    ``concurrency`` bounds the tasks in hand (at most 256); ``poll_wait`` is how long a poll
    waits for a task (seconds, at most 30); ``heartbeat_every`` overrides the heartbeat
    interval (default: a third of the lease time); ``drain`` is how long the tasks in hand may
    run on after a stop before they are released (seconds; ``None``: until they finish).
    """

    def __init__(
        self,
        *,
        concurrency: int = 4,
        poll_wait: float = 10.0,
        heartbeat_every: Optional[float] = None,
        drain: Optional[float] = None,
    ) -> None:
        if not 1 <= concurrency <= WORKER_CONCURRENCY_MAX:
            raise ValueError(f"concurrency is {concurrency}: it must be between 1 and {WORKER_CONCURRENCY_MAX}")
        if not 0 <= poll_wait <= POLL_WAIT_MAX:
            raise ValueError(f"poll_wait is {poll_wait}: it must be between 0 and {POLL_WAIT_MAX:g} seconds")
        if heartbeat_every is not None and heartbeat_every < HEARTBEAT_EVERY_MIN:
            raise ValueError(f"heartbeat_every must be at least {HEARTBEAT_EVERY_MIN} seconds")
        if drain is not None and drain < 0:
            raise ValueError(f"drain is {drain}: it must be at least 0 seconds (or None: wait for every task)")
        self.drain = drain
        self.concurrency = concurrency
        self.poll_wait = poll_wait
        self.heartbeat_every = heartbeat_every
        self._handlers: Dict[Tuple[str, str], Handler] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopping: Optional[asyncio.Event] = None
        self._stop_requested = threading.Event()

    def task(self, queue: str, task_type: str) -> Callable[[_H], _H]:
        """Registers the decorated function as the handler of ``task_type`` tasks on
        ``queue``."""

        def register(handler: _H) -> _H:
            if (queue, task_type) in self._handlers:
                raise ValueError(f"a handler for {task_type!r} tasks on queue {queue!r} is registered already")
            self._handlers[(queue, task_type)] = handler
            return handler

        return register

    @property
    def queues(self) -> List[str]:
        return sorted({queue for queue, _ in self._handlers})

    def stop(self) -> None:
        """Stops polling and lets the tasks in hand finish; :meth:`serve` then returns. Safe to
        call from any thread or a signal handler."""
        self._stop_requested.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)

    def run(
        self,
        endpoints: Sequence[str],
        *,
        identity: Optional[Identity] = None,
        credentials: Optional[Credentials] = None,
        options: Optional[Options] = None,
    ) -> WorkerStats:
        """Runs the worker in a new event loop until SIGTERM or SIGINT (or :meth:`stop`), then
        finishes the tasks in hand and returns what it did. From the main thread."""

        async def main() -> WorkerStats:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                async with AsyncClient(
                    endpoints, identity=identity, credentials=credentials, options=options
                ) as client:
                    return await self.serve(client)
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

        return asyncio.run(main())

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s: stopping; finishing the tasks in hand", sig.name)
        self.stop()

    async def serve(self, client: AsyncClient) -> WorkerStats:
        """Polls the handlers' queues through ``client`` until :meth:`stop`, then finishes the
        tasks in hand and returns. Raises when polling cannot work at all (the caller is not
        authenticated or not allowed to poll)."""
        if not self._handlers:
            raise ValueError("no handlers: register one with @worker.task(queue, task_type)")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested.is_set():
            self._stopping.set()
        run = _Run(self, client)
        try:
            return await run.serve(self._stopping)
        finally:
            self._loop, self._stopping = None, None
            self._stop_requested.clear()


class _Run:
    """One :meth:`Worker.serve`: its pollers, the tasks in hand and their counts."""

    def __init__(self, worker: Worker, client: AsyncClient) -> None:
        self.worker = worker
        self.client = client
        self.slots = _Slots(worker.concurrency)
        self.stats = WorkerStats()
        self.in_hand: Set[asyncio.Task[None]] = set()
        # Set when the drain time has passed: the tasks still running are released.
        self.releasing = asyncio.Event()
        self.stopping: Optional[asyncio.Event] = None
        self.fatal: Optional[LockstepError] = None
        self.threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=worker.concurrency, thread_name_prefix="lockstep-task"
        )

    async def serve(self, stopping: asyncio.Event) -> WorkerStats:
        self.stopping = stopping
        queues = self.worker.queues
        # Each queue's poll asks for its share of the slots, so that a long poll on an idle
        # queue does not hold every slot while another queue has work.
        share = max(1, min(POLL_TASKS_MAX, self.worker.concurrency // len(queues)))
        pollers = [asyncio.create_task(self.poll(queue, share, stopping)) for queue in queues]
        try:
            await stopping.wait()
        finally:
            # Stopping abandons the polls in flight: a task one of them leased in the same
            # instant is ready again when its lease expires.
            for poller in pollers:
                poller.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            if self.in_hand and self.worker.drain is not None:
                _, running = await asyncio.wait(set(self.in_hand), timeout=self.worker.drain)
                if running:
                    log.info("the drain time ran out: releasing %d task(s) still running", len(running))
                    self.releasing.set()
            while self.in_hand:
                await asyncio.gather(*list(self.in_hand), return_exceptions=True)
            self.threads.shutdown(wait=False)
        if self.fatal is not None:
            raise self.fatal
        return self.stats

    async def poll(self, queue: str, share: int, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            taken = await self.slots.take(share)
            try:
                tasks = await self.client.poll_tasks(queue, max_tasks=taken, wait=self.worker.poll_wait)
            except (Unauthenticated, PermissionDenied, InvalidArgument) as error:
                await self.slots.give_back(taken)
                log.error("polling %s cannot work: %s", queue, error)
                self.fatal = error
                stopping.set()
                return
            except LockstepError as error:
                await self.slots.give_back(taken)
                log.warning("poll of %s failed: %s; polling again", queue, error)
                await asyncio.sleep(POLL_ERROR_PAUSE)
                continue
            except BaseException:
                await self.slots.give_back(taken)
                raise
            assert len(tasks) <= taken, "the server leases no more tasks than asked for"
            await self.slots.give_back(taken - len(tasks))
            for leased in tasks:
                # Leased as the stop began: hand it back rather than start it.
                job = self.hand_back(leased) if stopping.is_set() else self.work(leased)
                work = asyncio.create_task(job)
                self.in_hand.add(work)
                work.add_done_callback(self.in_hand.discard)

    async def hand_back(self, task: LeasedTask) -> None:
        try:
            outcome = await self.release(task)
        finally:
            await self.slots.give_back(1)
        if outcome == "released":
            self.stats.released += 1
        else:
            self.stats.lost += 1

    async def work(self, task: LeasedTask) -> None:
        try:
            outcome = await self.attempt(task)
        except Exception:  # a bug here must not leak the slot or stop the worker
            log.exception("task %s: unexpected error", task.lease.task_id)
            outcome = "lost"
        finally:
            await self.slots.give_back(1)
        if outcome == "completed":
            self.stats.completed += 1
        elif outcome == "failed":
            self.stats.failed += 1
        elif outcome == "released":
            self.stats.released += 1
        else:
            self.stats.lost += 1

    async def attempt(self, task: LeasedTask) -> str:
        """Runs the handler with heartbeats; completes, fails or releases the task. Returns
        completed, failed, released or lost."""
        lease = task.lease
        if self.releasing.is_set():
            return await self.release(task)
        handler = self.worker._handlers.get((task.queue, task.task_type))
        if handler is None:
            error = f"this worker has no handler for {task.task_type!r} tasks on queue {task.queue!r}"
            log.warning("task %s: %s; failing the attempt (retryable)", lease.task_id, error)
            return await self.fail(task, error, retryable=True)
        running = asyncio.ensure_future(self.invoke(handler, task))
        releasing = asyncio.ensure_future(self.releasing.wait())
        every = self.heartbeat_every(task)
        while True:
            done, _ = await asyncio.wait({running, releasing}, timeout=every, return_when=asyncio.FIRST_COMPLETED)
            if running in done:
                releasing.cancel()
                break
            if releasing in done:
                running.cancel()
                return await self.release(task)
            try:
                await self.client.heartbeat_task(lease)
            except (StaleLease, Forbidden, TaskNotFound) as error:
                log.warning("task %s: lease lost (%s); dropping its result", lease.task_id, error.reason)
                running.cancel()
                releasing.cancel()
                return "lost"
            except LockstepError as error:
                log.warning("task %s: heartbeat failed: %s; trying again", lease.task_id, error)
        try:
            result = running.result()
        except TaskError as error:
            return await self.fail(task, str(error), retryable=error.retryable)
        except Exception as error:
            return await self.fail(task, f"{type(error).__name__}: {error}", retryable=True)
        try:
            await self.client.complete_task(lease, result)
        except (TypeError, ValueError) as error:
            # The result is no JSON object: a bug of the handler that no retry fixes.
            return await self.fail(task, f"the handler's result is not a JSON object: {error}", retryable=False)
        except LockstepError as error:
            log.warning("task %s: the result was not accepted: %s", lease.task_id, error)
            return "lost"
        return "completed"

    async def invoke(self, handler: Handler, task: LeasedTask) -> Result:
        if inspect.iscoroutinefunction(handler):
            result: Result = await handler(task)
            return result
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.threads, functools.partial(handler, task))
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def release(self, task: LeasedTask) -> str:
        try:
            await self.client.release_task(task.lease)
        except LockstepError as refused:
            log.warning(
                "task %s: the release was not accepted: %s; it is ready again when its lease expires",
                task.lease.task_id,
                refused,
            )
            return "lost"
        return "released"

    async def fail(self, task: LeasedTask, error: str, *, retryable: bool) -> str:
        text = bounded(error)
        try:
            await self.client.fail_task(task.lease, text, retryable=retryable)
        except LockstepError as refused:
            log.warning("task %s: the failure was not accepted: %s", task.lease.task_id, refused)
            return "lost"
        return "failed"

    def heartbeat_every(self, task: LeasedTask) -> float:
        if self.worker.heartbeat_every is not None:
            return self.worker.heartbeat_every
        # Cluster time is the leader's; this machine's clock is close enough for a third.
        left = (task.lease_expires_at - datetime.now(timezone.utc)).total_seconds()
        every = left / 3 if left > 0 else HEARTBEAT_EVERY_DEFAULT
        return max(every, HEARTBEAT_EVERY_MIN)
