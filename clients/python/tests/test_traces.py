"""A leased task's trace: the poll hands the task's ``traceparent`` to the worker, and the
clients send it back as gRPC metadata with the task's completion, heartbeats, failure and
release (against a fake Tasks service that records the metadata it got)."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Tuple

import grpc
import pytest

from lockstep import AsyncClient, Client, Identity
from lockstep.v1 import lockstep_pb2 as pb

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class FakeTasks:
    """Polls answer one task created in a trace (or none); every other call records the
    ``traceparent`` metadata it came with (``""``: none)."""

    traced: bool = True
    seen: List[Tuple[str, str]] = field(default_factory=list)

    def Poll(self, request: pb.PollTasksRequest, context: grpc.ServicerContext) -> pb.PollTasksResponse:
        task = pb.LeasedTask(
            lease=pb.TaskLease(instance_id="i-1-0", task_id="t1", token=pb.LeaseToken(term=2, attempt=1)),
            workflow="jobs",
            queue=request.queue,
            task_type="bill",
            input_json="{}",
            lease_expires_at="2026-12-07T12:00:00Z",
            origin="bill",
            traceparent=TRACEPARENT if self.traced else "",
        )
        return pb.PollTasksResponse(tasks=[task])

    def record(self, rpc: str, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.seen.append((rpc, str(metadata.get("traceparent", ""))))

    def Complete(self, request: pb.CompleteTaskRequest, context: grpc.ServicerContext) -> pb.InstanceChange:
        self.record("Complete", context)
        return pb.InstanceChange(instance_id="i-1-0", version=3, state="billed", audit_seq=9)

    def Release(self, request: pb.ReleaseTaskRequest, context: grpc.ServicerContext) -> pb.InstanceChange:
        self.record("Release", context)
        return pb.InstanceChange(instance_id="i-1-0", version=3, state="billing", audit_seq=9)


@pytest.fixture
def fake() -> Iterator[Tuple[FakeTasks, str]]:
    servicer = FakeTasks()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers: Dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Poll": grpc.unary_unary_rpc_method_handler(
            servicer.Poll,
            request_deserializer=pb.PollTasksRequest.FromString,
            response_serializer=pb.PollTasksResponse.SerializeToString,
        ),
        "Complete": grpc.unary_unary_rpc_method_handler(
            servicer.Complete,
            request_deserializer=pb.CompleteTaskRequest.FromString,
            response_serializer=pb.InstanceChange.SerializeToString,
        ),
        "Release": grpc.unary_unary_rpc_method_handler(
            servicer.Release,
            request_deserializer=pb.ReleaseTaskRequest.FromString,
            response_serializer=pb.InstanceChange.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("lockstep.v1.Tasks", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def worker() -> Identity:
    return Identity("billing-worker", kind="worker")


def test_the_sync_client_sends_a_tasks_trace_back_and_none_without_one(fake: Tuple[FakeTasks, str]) -> None:
    servicer, endpoint = fake
    with Client([endpoint], identity=worker()) as client:
        (task,) = client.poll_tasks("billing")
        assert task.lease.traceparent == TRACEPARENT
        client.complete_task(task.lease, {"data": {}})
        servicer.traced = False
        (untraced,) = client.poll_tasks("billing")
        assert untraced.lease.traceparent is None
        client.release_task(untraced.lease)
    assert servicer.seen == [("Complete", TRACEPARENT), ("Release", "")]


@pytest.mark.asyncio
async def test_the_asyncio_client_sends_a_tasks_trace_back(fake: Tuple[FakeTasks, str]) -> None:
    servicer, endpoint = fake
    async with AsyncClient([endpoint], identity=worker()) as client:
        (task,) = await client.poll_tasks("billing")
        await client.release_task(task.lease)
    assert servicer.seen == [("Release", TRACEPARENT)]
