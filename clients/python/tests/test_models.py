"""Conversions from the wire and request building, without a cluster: webhook subscriptions
(the Subscription message to its dataclass, the requests of Subscriptions/*), and both clients'
Subscriptions calls against an in-process server that answers canned messages."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, List, Tuple

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from lockstep import AsyncClient, Client, Identity, Subscription, UnknownSubscription, models, names
from lockstep import _requests as rq
from lockstep.errors import MalformedAnswer, Refused
from lockstep.v1 import lockstep_pb2 as pb

CREATED_AT = "2026-03-01T10:00:00Z"
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def wire_subscription(**fields: Any) -> pb.Subscription:
    defaults: Dict[str, Any] = dict(
        name="erp-incidents",
        url="https://hooks.example.com/lockstep",
        filter=pb.SubscriptionFilter(workflows=["purchase-order"], kinds=["incident", "sla_breach"], events=[]),
        secret="erp",
        cursor=40,
        audit_head=52,
        created_by="admin",
        created_at=CREATED_AT,
    )
    defaults.update(fields)
    return pb.Subscription(**defaults)


def test_an_active_subscription_converts_with_its_lag_and_no_pause() -> None:
    s = models.subscription(wire_subscription())
    assert s == Subscription(
        name="erp-incidents",
        url="https://hooks.example.com/lockstep",
        workflows=("purchase-order",),
        kinds=("incident", "sla_breach"),
        events=(),
        secret="erp",
        cursor=40,
        audit_head=52,
        lag=12,
        paused=False,
        paused_by=None,
        paused_reason=None,
        paused_at=None,
        last_error=None,
        created_by="admin",
        created_at=datetime(2026, 3, 1, 10, tzinfo=timezone.utc),
    )


def test_the_lag_is_never_negative() -> None:
    # A node whose audit head trails the cursor it read (a lagging replica) answers lag 0.
    assert models.subscription(wire_subscription(cursor=60, audit_head=52)).lag == 0
    assert models.subscription(wire_subscription(cursor=52, audit_head=52)).lag == 0
    # uint64 on the wire: no overflow at the top of the range.
    top = 2**64 - 1
    assert models.subscription(wire_subscription(cursor=0, audit_head=top)).lag == top


def test_a_paused_subscription_carries_who_why_when_and_the_last_error() -> None:
    s = models.subscription(
        wire_subscription(
            paused=True,
            paused_by="lockstep",
            paused_reason="6 failed attempts in a row",
            paused_at="2026-03-01T11:00:00.5+01:00",
            last_error="POST https://hooks.example.com/lockstep: 503 Service Unavailable",
        )
    )
    assert s.paused
    assert (s.paused_by, s.paused_reason) == ("lockstep", "6 failed attempts in a row")
    assert s.paused_at == datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)
    assert s.last_error == "POST https://hooks.example.com/lockstep: 503 Service Unavailable"


def test_a_subscription_without_a_filter_matches_everything() -> None:
    s = models.subscription(pb.Subscription(name="all", url="http://127.0.0.1:9/", secret="s", created_at=CREATED_AT))
    assert (s.workflows, s.kinds, s.events) == ((), (), ())


def test_a_malformed_time_is_a_malformed_answer() -> None:
    with pytest.raises(MalformedAnswer):
        models.subscription(wire_subscription(created_at="yesterday"))
    with pytest.raises(MalformedAnswer):
        models.subscription(wire_subscription(paused=True, paused_at="noon"))


def test_create_sends_start_after_only_when_given() -> None:
    def create(start_after: int | None) -> pb.CreateSubscriptionRequest:
        return rq.create_subscription(
            "rid-1", "n", "https://h/", secret="s", workflows=["w"], kinds=(), events=["e"], start_after=start_after
        )

    request = create(None)
    assert not request.HasField("start_after")
    assert (request.request_id, request.name, request.url, request.secret) == ("rid-1", "n", "https://h/", "s")
    assert (list(request.filter.workflows), list(request.filter.kinds), list(request.filter.events)) == (["w"], [], ["e"])
    # 0 is "every record", not "from now on".
    assert create(0).HasField("start_after") and create(0).start_after == 0
    assert create(17).start_after == 17
    with pytest.raises(ValueError):
        create(-1)


def test_a_filter_is_a_list_of_names_not_one_string() -> None:
    with pytest.raises(TypeError, match="kinds"):
        rq.create_subscription(
            "rid", "n", "https://h/", secret="s", workflows=(), kinds="incident", events=(), start_after=None
        )


@dataclass
class FakeSubscriptions:
    """The Subscriptions service over canned answers, recording the requests it got."""

    seen: List[Tuple[str, object]] = field(default_factory=list)

    def Get(self, request: pb.GetSubscriptionRequest, context: grpc.ServicerContext) -> pb.Subscription:
        self.seen.append(("Get", request))
        if request.name != "erp-incidents":
            # A refusal as the server sends it: its code in the ErrorInfo of the status details.
            info = any_pb2.Any()
            info.Pack(error_details_pb2.ErrorInfo(reason="UNKNOWN_SUBSCRIPTION", domain=names.ERROR_DOMAIN))
            status = status_pb2.Status(code=NOT_FOUND.value[0], message="no subscription", details=[info])
            context.set_trailing_metadata(((names.STATUS_DETAILS_HEADER, status.SerializeToString()),))
            context.abort(NOT_FOUND, "no subscription")
        return wire_subscription()

    def List(self, request: pb.ListSubscriptionsRequest, context: grpc.ServicerContext) -> pb.ListSubscriptionsResponse:
        self.seen.append(("List", request))
        return pb.ListSubscriptionsResponse(subscriptions=[wire_subscription(), wire_subscription(name="b")])

    def Pause(self, request: pb.PauseSubscriptionRequest, context: grpc.ServicerContext) -> pb.Subscription:
        self.seen.append(("Pause", request))
        return wire_subscription(paused=True, paused_by="admin", paused_reason=request.reason, paused_at=CREATED_AT)


@pytest.fixture
def fake() -> Iterator[Tuple[FakeSubscriptions, str]]:
    servicer = FakeSubscriptions()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers: Dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Get": grpc.unary_unary_rpc_method_handler(
            servicer.Get,
            request_deserializer=pb.GetSubscriptionRequest.FromString,
            response_serializer=pb.Subscription.SerializeToString,
        ),
        "List": grpc.unary_unary_rpc_method_handler(
            servicer.List,
            request_deserializer=pb.ListSubscriptionsRequest.FromString,
            response_serializer=pb.ListSubscriptionsResponse.SerializeToString,
        ),
        "Pause": grpc.unary_unary_rpc_method_handler(
            servicer.Pause,
            request_deserializer=pb.PauseSubscriptionRequest.FromString,
            response_serializer=pb.Subscription.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("lockstep.v1.Subscriptions", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_the_sync_client_calls_the_subscriptions_service(fake: Tuple[FakeSubscriptions, str]) -> None:
    servicer, endpoint = fake
    with Client([endpoint], identity=Identity("admin", roles=["admin"])) as client:
        assert client.subscription("erp-incidents").lag == 12
        assert [s.name for s in client.subscriptions()] == ["erp-incidents", "b"]
        paused = client.pause_subscription("erp-incidents", "maintenance", request_id="rid-7")
        assert (paused.paused, paused.paused_reason) == (True, "maintenance")
        with pytest.raises(UnknownSubscription) as refused:
            client.subscription("nope")
        assert isinstance(refused.value, Refused)
    (_, pause) = servicer.seen[2]
    assert isinstance(pause, pb.PauseSubscriptionRequest)
    assert (pause.request_id, pause.name, pause.reason) == ("rid-7", "erp-incidents", "maintenance")


@pytest.mark.asyncio
async def test_the_asyncio_client_calls_the_subscriptions_service(fake: Tuple[FakeSubscriptions, str]) -> None:
    servicer, endpoint = fake
    async with AsyncClient([endpoint], identity=Identity("admin", roles=["admin"])) as client:
        assert (await client.subscription("erp-incidents")).cursor == 40
        assert len(await client.subscriptions()) == 2
        paused = await client.pause_subscription("erp-incidents")
        assert paused.paused and paused.paused_reason is None
        with pytest.raises(UnknownSubscription):
            await client.subscription("nope")
    (_, pause) = servicer.seen[2]
    assert isinstance(pause, pb.PauseSubscriptionRequest) and pause.request_id
