"""The retry policy, status reading, endpoints and settings, without a cluster; and the retry
loop over a real gRPC connection to an in-process server that fails on purpose."""

from __future__ import annotations

import time
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from lockstep import (
    Client,
    Credentials,
    Forbidden,
    GateNotYetOpen,
    Identity,
    InvalidArgument,
    Options,
    Overloaded,
    Tls,
    Unavailable,
    VersionConflict,
    names,
)
from lockstep._time import format_time, parse_time
from lockstep._transport import Attempts, Endpoints, parse_endpoints, wire_status
from lockstep.errors import LockstepError, WireStatus
from lockstep.v1 import lockstep_pb2 as pb

U = grpc.StatusCode.UNAVAILABLE
# Response metadata as grpc hands it over.
Metadata = Tuple[Tuple[str, Union[str, bytes]], ...]
OPTIONS = Options(attempt_timeout=1.0, total_timeout=10.0, backoff_initial=0.1, backoff_max=0.4)


def status(code: grpc.StatusCode, reason: Optional[str] = None, **metadata: str) -> WireStatus:
    retry_after = int(metadata["retry_after_ms"]) / 1000 if "retry_after_ms" in metadata else None
    return WireStatus(code, "message", reason, metadata, retry_after)


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Step:
    """One failed attempt: the status, then either the next endpoint and the wait, or the
    exception raised. ``advance`` moves the clock before the failure is reported."""

    answer: WireStatus
    node: int = 0
    wait: float = 0.0
    raises: Optional[type[LockstepError]] = None
    advance: float = 0.0


def check(steps: Sequence[Step], options: Options = OPTIONS, start: int = 0) -> Attempts:
    clock = FakeClock()
    endpoints = Endpoints(parse_endpoints(["a:1", "b:2", "c:3"], None), current=start)
    attempts = Attempts(endpoints, options, "rid-1", clock=clock, jitter=lambda: 1.0)
    for n, step in enumerate(steps):
        clock.now += step.advance
        index = attempts.node()
        if step.raises is not None:
            with pytest.raises(step.raises):
                attempts.failed(index, step.answer)
            return attempts
        wait = attempts.failed(index, step.answer)
        assert attempts.node() == step.node, f"step {n}"
        assert wait == pytest.approx(step.wait), f"step {n}"
    return attempts


def test_unavailable_moves_to_the_next_endpoint_with_doubling_capped_backoff() -> None:
    check([Step(status(U), 1, 0.1), Step(status(U), 2, 0.2), Step(status(U), 0, 0.4), Step(status(U), 1, 0.4)])


def test_not_leader_goes_to_the_named_leader() -> None:
    check([Step(status(U, names.NOT_LEADER, leader_addr="c:3"), 2, 0.1)])
    # A leader that is not an endpoint: the next endpoint.
    check([Step(status(U, names.NOT_LEADER, leader_addr="elsewhere:9"), 1, 0.1)])


def test_busy_and_deadlines_are_retried_refusals_are_not() -> None:
    check([Step(status(grpc.StatusCode.ABORTED, names.BUSY), 1, 0.1)])
    check([Step(status(grpc.StatusCode.DEADLINE_EXCEEDED), 1, 0.1)])
    check([Step(status(grpc.StatusCode.ABORTED, "VERSION_CONFLICT"), raises=VersionConflict)])
    check([Step(status(grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN"), raises=Forbidden)])
    check([Step(status(grpc.StatusCode.INVALID_ARGUMENT, names.BAD_REQUEST), raises=InvalidArgument)])


def test_overloaded_waits_the_hint_on_the_same_node() -> None:
    overloaded = status(grpc.StatusCode.RESOURCE_EXHAUSTED, names.OVERLOADED, retry_after_ms="300")
    check([Step(overloaded, 0, 0.3), Step(overloaded, 0, 0.3)], start=0)
    # A hint shorter than the backoff: the backoff.
    short = status(grpc.StatusCode.RESOURCE_EXHAUSTED, names.OVERLOADED, retry_after_ms="10")
    check([Step(short, 1, 0.1)], start=1)


def test_overloaded_raises_when_retries_are_off_or_time_is_up() -> None:
    overloaded = status(grpc.StatusCode.RESOURCE_EXHAUSTED, names.QUOTA_EXCEEDED, retry_after_ms="250", quota="q1")
    off = Options(retry_overloaded=False)
    attempts = check([Step(overloaded, raises=Overloaded)], options=off)
    assert attempts.node() == 0
    try:
        check([], options=off).failed(0, overloaded)
    except Overloaded as error:
        assert (error.reason, error.retry_after, error.quota) == (names.QUOTA_EXCEEDED, 0.25, "q1")
    check([Step(overloaded, raises=Overloaded, advance=11.0)])


def test_an_overload_after_an_attempt_that_may_have_applied_is_an_unknown_outcome() -> None:
    overloaded = status(grpc.StatusCode.RESOURCE_EXHAUSTED, names.OVERLOADED, retry_after_ms="300")
    check([Step(status(U), 1, 0.1), Step(overloaded, raises=Unavailable, advance=11.0)])


def test_running_out_of_time_is_unavailable_naming_the_request_id() -> None:
    attempts = check([Step(status(U), 1, 0.1)])
    attempts.clock = lambda: 10.5
    with pytest.raises(Unavailable) as raised:
        attempts.failed(1, status(U))
    assert raised.value.request_id == "rid-1" and "rid-1" in str(raised.value)


def test_a_forwarded_answer_moves_the_client_to_the_leader() -> None:
    attempts = check([])
    attempts.succeeded(0, "b:2")
    assert attempts.node() == 1
    attempts.succeeded(1, "not-an-endpoint:1")
    assert attempts.node() == 1


class FakeError(Exception):
    """What a failed sync call raises: a status with metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: Metadata) -> None:
        self._code, self._message, self._trailing = code, message, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Metadata:
        return self._trailing


def details(
    code: grpc.StatusCode, reason: str, metadata: Dict[str, str], retry_ms: Optional[int] = None
) -> Metadata:
    """The trailing metadata of a status with an ErrorInfo (and a RetryInfo), as the server's."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=names.ERROR_DOMAIN, metadata=metadata))
    packed = [info]
    if retry_ms is not None:
        hint = any_pb2.Any()
        delay = duration_pb2.Duration(seconds=retry_ms // 1000, nanos=retry_ms % 1000 * 1_000_000)
        hint.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        packed.append(hint)
    status = status_pb2.Status(code=code.value[0], message="m", details=packed)
    return ((names.STATUS_DETAILS_HEADER, status.SerializeToString()),)


def test_wire_status_reads_error_info_retry_info_and_the_leader() -> None:
    trailing = details(grpc.StatusCode.RESOURCE_EXHAUSTED, names.OVERLOADED, {"retry_after_ms": "900"}, retry_ms=1500)
    read = wire_status(FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", trailing + ((names.LEADER_HEADER, "b:2"),)))
    assert (read.reason, read.retry_after, read.leader, read.message) == (names.OVERLOADED, 1.5, "b:2", "busy")
    at = "2026-03-01T10:00:00.5Z"
    gate = wire_status(FakeError(grpc.StatusCode.FAILED_PRECONDITION, "closed", details(
        grpc.StatusCode.FAILED_PRECONDITION, "GATE_NOT_YET_OPEN", {"earliest_at": at})))  # fmt: skip
    assert gate.reason == "GATE_NOT_YET_OPEN" and gate.metadata == {"earliest_at": at}
    # Without details: the code alone.
    bare = wire_status(FakeError(U, "down", ()))
    assert (bare.code, bare.reason, bare.retry_after) == (U, None, None)


def test_endpoints_and_settings_are_checked() -> None:
    tls = Tls(ca_pem=b"ca")
    assert [e.address for e in parse_endpoints(["http://a:1", "https://b:2/", "c:3"], tls)] == ["a:1", "b:2", "c:3"]
    assert [e.secure for e in parse_endpoints(["http://a:1", "https://b:2/", "c:3"], tls)] == [False, True, True]
    for bad, tls_settings in ((["https://a:1"], None), ([], None), (["a"], None), (["a:x"], None)):
        with pytest.raises(ValueError):
            parse_endpoints(bad, tls_settings)
    with pytest.raises(TypeError):
        parse_endpoints("a:1", None)
    with pytest.raises(ValueError):
        Identity("alice", "robot")
    with pytest.raises(ValueError):
        Tls(ca_pem=b"ca", cert_pem=b"cert")
    with pytest.raises(ValueError):
        Credentials(token="two\nlines")
    assert Credentials(token=" t0k3n ").metadata() == (("authorization", "Bearer t0k3n"),)
    assert Identity("w1", "worker", ["a", "b"]).metadata() == (
        ("x-lockstep-actor", "w1"),
        ("x-lockstep-actor-kind", "worker"),
        ("x-lockstep-roles", "a,b"),
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=timezone.utc)),
        ("2026-03-01T10:00:00.123456789Z", datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)),
        ("2026-03-01T11:00:00.5+01:00", datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)),
    ],
)
def test_times(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected
    assert parse_time(format_time(expected)) == expected


@dataclass
class FlakyInstances:
    """Instances/Create that fails the first attempts as told, recording each request id."""

    failures: List[Tuple[grpc.StatusCode, Metadata]]
    leader: Optional[str] = None
    seen: List[str] = field(default_factory=list)

    def Create(self, request: pb.CreateInstanceRequest, context: grpc.ServicerContext) -> pb.InstanceChange:
        self.seen.append(request.request_id)
        if self.failures:
            code, trailing = self.failures.pop(0)
            context.set_trailing_metadata(trailing)
            context.abort(code, "failing on purpose")
        if self.leader:
            context.send_initial_metadata(((names.LEADER_HEADER, self.leader),))
        return pb.InstanceChange(instance_id="i-1", version=1, state="draft", audit_seq=7)


@pytest.fixture
def flaky() -> Iterator[Tuple[FlakyInstances, str]]:
    servicer = FlakyInstances(failures=[])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    create = grpc.unary_unary_rpc_method_handler(
        servicer.Create,
        request_deserializer=pb.CreateInstanceRequest.FromString,
        response_serializer=pb.InstanceChange.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("lockstep.v1.Instances", {"Create": create}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_a_retried_call_reuses_its_request_id(flaky: Tuple[FlakyInstances, str]) -> None:
    servicer, endpoint = flaky
    servicer.failures = [(U, ()), (grpc.StatusCode.ABORTED, details(grpc.StatusCode.ABORTED, names.BUSY, {}))]
    with Client([endpoint], options=OPTIONS) as client:
        change = client.create_instance("w", {"a": 1})
    assert change.audit_seq == 7
    assert len(servicer.seen) == 3 and len(set(servicer.seen)) == 1, servicer.seen


def test_an_overloaded_answer_is_retried_after_its_hint(flaky: Tuple[FlakyInstances, str]) -> None:
    servicer, endpoint = flaky
    trailing = details(grpc.StatusCode.RESOURCE_EXHAUSTED, names.OVERLOADED, {"retry_after_ms": "300"}, retry_ms=300)
    servicer.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, trailing)]
    started = time.monotonic()
    with Client([endpoint], options=OPTIONS) as client:
        client.create_instance("w", {}, request_id="mine")
    assert time.monotonic() - started >= 0.3
    assert servicer.seen == ["mine", "mine"]
    servicer.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, trailing)]
    with Client([endpoint], options=Options(retry_overloaded=False)) as client:
        with pytest.raises(Overloaded) as raised:
            client.create_instance("w", {})
    assert raised.value.retry_after == pytest.approx(0.3)


def test_a_refusal_carries_its_code_reason_and_metadata(flaky: Tuple[FlakyInstances, str]) -> None:
    servicer, endpoint = flaky
    at = "2026-03-01T10:00:00Z"
    metadata = {"earliest_at": at, "predicate": "true"}
    code = grpc.StatusCode.FAILED_PRECONDITION
    servicer.failures = [(code, details(code, "GATE_NOT_YET_OPEN", metadata))]
    with Client([endpoint], options=OPTIONS) as client:
        with pytest.raises(GateNotYetOpen) as raised:
            client.create_instance("w", {})
    refusal = raised.value
    assert (refusal.code, refusal.reason, refusal.predicate) == ("GATE_NOT_YET_OPEN", "failing on purpose", "true")
    assert refusal.earliest_at == parse_time(at) and refusal.status_code == code
    assert len(servicer.seen) == 1, "a refusal is not retried"


def test_the_leader_header_is_followed_when_the_leader_is_an_endpoint(flaky: Tuple[FlakyInstances, str]) -> None:
    servicer, endpoint = flaky
    servicer.leader = "127.0.0.1:1"
    with Client([endpoint, "127.0.0.1:1"], options=OPTIONS) as client:
        client.create_instance("w", {})
        assert client.current_endpoint == "127.0.0.1:1"
    with Client([endpoint], options=OPTIONS) as client:
        client.create_instance("w", {})
        assert client.current_endpoint == endpoint


def test_a_failure_text_is_cut_to_the_servers_bound() -> None:
    from lockstep.worker import ERROR_BYTES_MAX, bounded

    assert bounded("short") == "short"
    cut = bounded("é" * ERROR_BYTES_MAX)
    assert len(cut.encode("utf-8")) <= ERROR_BYTES_MAX and cut.endswith("…")
