"""What the sync and asyncio clients share: settings, credentials, endpoints, request
metadata, reading a failed call's status, and the retry policy.

The retry policy is a small state machine (:class:`Attempts`) that does no I/O: a client asks
it which endpoint to call, tells it how the call went, and sleeps for as long as it says. So
both clients retry in exactly the same way, and the policy is tested without a network.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import grpc
from google.rpc import error_details_pb2, status_pb2

from . import names
from .errors import LockstepError, Unavailable, WireStatus, from_status, is_refusal

# Request metadata as grpc takes it.
Metadata = Tuple[Tuple[str, str], ...]
# Metadata as grpc hands it back (sync: tuples; aio: a Metadata collection of pairs).
MetadataPairs = Iterable[Tuple[str, Union[str, bytes]]]

# The largest answer the SDK accepts (a page of 500 instances with their data, a history).
MESSAGE_BYTES_MAX = 64 * 1024 * 1024
# How fast a channel reconnects to a node that was down: gRPC's own default backs off to
# two minutes, which would keep a restarted node out of rotation long after it is back.
RECONNECT_BACKOFF_INITIAL_MS = 100
RECONNECT_BACKOFF_MAX_MS = 2_000
# Most endpoints one client talks to.
ENDPOINTS_MAX = 64

ACTOR_KINDS = ("human", "service", "worker")


def request_id() -> str:
    """A new request id (a UUID v4). Keep it to retry the same request: the cluster applies a
    request id at most once and answers a retry with the first outcome."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Options:
    """How a client retries. Times are in seconds."""

    # Deadline of one attempt.
    attempt_timeout: float = 12.0
    # Give up retrying after this long (Unavailable: the outcome of a write is unknown).
    total_timeout: float = 30.0
    # Backoff between attempts: doubles from the initial value up to the max, with jitter.
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    # Let followers forward writes to the leader (default). When False, the client itself
    # goes to the leader a follower names in its NOT_LEADER answer.
    forward: bool = True
    # Retry OVERLOADED, QUOTA_EXCEEDED and NO_SPACE refusals (nothing was done) after the
    # server's hint, with the same request id, until total_timeout. When False they raise
    # Overloaded at once.
    retry_overloaded: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.attempt_timeout <= self.total_timeout:
            raise ValueError("Options: need 0 < attempt_timeout <= total_timeout")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("Options: need 0 < backoff_initial <= backoff_max")


@dataclass(frozen=True)
class Identity:
    """Who the client says it acts as, in the ``x-lockstep-actor*`` headers. Only a
    development-mode node (``lockstepd --dev``) believes them; a secure node takes the actor
    from the bearer token or the client certificate and ignores the headers."""

    actor: str
    kind: str = "human"
    roles: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise ValueError(f"Identity: kind {self.kind!r} is not one of {', '.join(ACTOR_KINDS)}")
        if not self.actor:
            raise ValueError("Identity: the actor id is empty")
        # Accept a list for roles, keep a tuple (the dataclass is frozen and hashable).
        object.__setattr__(self, "roles", tuple(self.roles))

    def metadata(self) -> Metadata:
        return (
            (names.ACTOR_HEADER, self.actor),
            (names.ACTOR_KIND_HEADER, self.kind),
            (names.ROLES_HEADER, ",".join(self.roles)),
        )


@dataclass(frozen=True)
class Tls:
    """TLS settings: the cluster CA that the nodes' certificates are verified against, and
    optionally a client certificate and key from that CA (mTLS: the caller is the
    certificate's CN). ``server_name`` is the name to verify when it is not the endpoint's
    host. All PEM bytes."""

    ca_pem: bytes
    cert_pem: Optional[bytes] = None
    key_pem: Optional[bytes] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ValueError("Tls: give both the client certificate and its key, or neither")

    @staticmethod
    def from_files(
        ca: Union[str, Path],
        cert: Union[str, Path, None] = None,
        key: Union[str, Path, None] = None,
        server_name: Optional[str] = None,
    ) -> Tls:
        """Reads the CA and, optionally, a client certificate and key from PEM files."""
        return Tls(
            ca_pem=Path(ca).read_bytes(),
            cert_pem=Path(cert).read_bytes() if cert is not None else None,
            key_pem=Path(key).read_bytes() if key is not None else None,
            server_name=server_name,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


@dataclass(frozen=True)
class Credentials:
    """How a client proves who it is to a secure cluster: TLS (with an optional client
    certificate) and/or a JWT sent as ``authorization: Bearer <token>``. The default, neither,
    suits a development-mode cluster."""

    tls: Optional[Tls] = None
    token: Optional[str] = None

    def __post_init__(self) -> None:
        if self.token is not None and not _printable_ascii(self.token.strip()):
            raise ValueError("Credentials: the token is not printable ASCII text")

    def metadata(self) -> Metadata:
        if self.token is None:
            return ()
        return ((names.AUTHORIZATION_HEADER, f"Bearer {self.token.strip()}"),)


def request_metadata(identity: Optional[Identity], credentials: Credentials, forward: bool) -> Metadata:
    """The metadata every request carries: the identity headers, the no-forward header when
    forwarding is off, and the bearer token."""
    metadata = identity.metadata() if identity is not None else ()
    if not forward:
        metadata += ((names.NO_FORWARD_HEADER, "1"),)
    return metadata + credentials.metadata()


def traced(metadata: Metadata, traceparent: Optional[str]) -> Metadata:
    """``metadata`` and, when given, the W3C ``traceparent`` a leased task carries (the trace
    of the change that created it), so a worker's answer joins that trace."""
    return metadata + (("traceparent", traceparent),) if traceparent else metadata


def _printable_ascii(text: str) -> bool:
    return bool(text) and all(" " < c <= "~" for c in text)


@dataclass(frozen=True)
class Endpoint:
    """One node: ``address`` is host:port, as the cluster names its members."""

    address: str
    secure: bool


def parse_endpoints(endpoints: Sequence[str], tls: Optional[Tls]) -> Tuple[Endpoint, ...]:
    """host:port, http://host:port or https://host:port; bare host:port is https with TLS
    settings and plaintext without."""
    if isinstance(endpoints, str):
        raise TypeError("endpoints is a list of host:port strings, not one string")
    if not endpoints:
        raise ValueError("no endpoints: give at least one host:port")
    if len(endpoints) > ENDPOINTS_MAX:
        raise ValueError(f"{len(endpoints)} endpoints: at most {ENDPOINTS_MAX}")
    parsed = []
    for text in endpoints:
        secure = tls is not None
        address = text.strip()
        for scheme, is_secure in (("http://", False), ("https://", True)):
            if address.startswith(scheme):
                address, secure = address[len(scheme) :], is_secure
        address = address.rstrip("/")
        if ":" not in address or address.rsplit(":", 1)[1].isdigit() is False:
            raise ValueError(f"bad endpoint {text!r}: expected host:port")
        if secure and tls is None:
            raise ValueError(f"endpoint {text!r} is https but no TLS settings were given (the cluster CA)")
        parsed.append(Endpoint(address, secure))
    return tuple(parsed)


def channel_options(tls: Optional[Tls]) -> List[Tuple[str, Union[str, int]]]:
    options: List[Tuple[str, Union[str, int]]] = [
        ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


@dataclass
class Endpoints:
    """The endpoint list and the one calls go to first: the leader, once learned."""

    endpoints: Tuple[Endpoint, ...]
    current: int = 0

    def addresses(self) -> Tuple[str, ...]:
        return tuple(e.address for e in self.endpoints)

    def index_of(self, address: Optional[str]) -> Optional[int]:
        if not address:
            return None
        for i, e in enumerate(self.endpoints):
            if e.address == address:
                return i
        return None


def wire_status(error: BaseException) -> WireStatus:
    """Reads a failed call: its gRPC code and message, and the ErrorInfo, RetryInfo and leader
    header it carries (sync ``grpc.RpcError`` and ``grpc.aio.AioRpcError`` alike)."""
    code = _call(error, "code")
    message = _call(error, "details")
    trailing = _call(error, "trailing_metadata") or ()
    initial = _call(error, "initial_metadata") or ()
    reason: Optional[str] = None
    metadata: dict[str, str] = {}
    retry_after: Optional[float] = None
    details = header(trailing, names.STATUS_DETAILS_HEADER, text=False)
    if isinstance(details, bytes):
        status = status_pb2.Status.FromString(details)
        for detail in status.details:
            # Unpack says whether the detail is of the message's type.
            info = error_details_pb2.ErrorInfo()
            hint = error_details_pb2.RetryInfo()
            if detail.Unpack(info) and info.domain == names.ERROR_DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(hint):
                retry_after = hint.retry_delay.seconds + hint.retry_delay.nanos / 1e9
    if retry_after is None and metadata.get(names.RETRY_AFTER_MS, "").isdigit():
        retry_after = int(metadata[names.RETRY_AFTER_MS]) / 1000
    leader = header(initial, names.LEADER_HEADER) or header(trailing, names.LEADER_HEADER)
    return WireStatus(
        code=code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
        message=message if isinstance(message, str) else str(error),
        reason=reason,
        metadata=metadata,
        retry_after=retry_after,
        leader=leader if isinstance(leader, str) else None,
    )


def _call(obj: object, method: str) -> object:
    """``obj.method()`` when it has one (an RpcError that is not a Call has few)."""
    function = getattr(obj, method, None)
    if not callable(function):
        return None
    try:
        result: object = function()
    except Exception:  # a call object that cannot tell: treat as absent
        return None
    return result


def header(pairs: object, name: str, *, text: bool = True) -> Union[str, bytes, None]:
    """The first value of ``name`` in gRPC metadata (None when absent)."""
    if not isinstance(pairs, Iterable):
        return None
    for pair in pairs:
        if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == name:
            value: object = pair[1]
            if text and isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            if isinstance(value, (str, bytes)):
                return value
    return None


def retryable(status: WireStatus) -> bool:
    """Whether a failed attempt may be retried safely with the same request id: the call may
    not have happened, or no leader was known, and it is no refusal by the engine."""
    transient = status.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    )
    return transient and not is_refusal(status)


def overloaded(status: WireStatus) -> bool:
    return status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and status.reason in names.RESOURCE_REASONS


@dataclass
class Attempts:
    """The retry policy of one call, as a state machine without I/O.

    Loop: ``node()`` names the endpoint to call; after a success call ``succeeded`` with the
    leader header of the answer; after a failure ``failed`` either raises the error to give
    the caller or returns how many seconds to sleep before the next attempt.

    Retryable failures (UNAVAILABLE, deadlines, lost connections, NOT_LEADER, BUSY) move to the
    leader the answer names, else to the next endpoint, after a capped, jittered exponential
    backoff. OVERLOADED-style refusals stay on the node and wait at least its hint. Either way
    the request (and its request id) is the same on every attempt, so a write is applied at
    most once.
    """

    endpoints: Endpoints
    options: Options
    request_id: Optional[str] = None
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = random.random
    started: float = field(default=0.0)
    backoff: float = field(default=0.0)
    # An earlier attempt failed in a way that may have taken effect (a timeout, a lost
    # connection): a later OVERLOADED refusal then says nothing about the request.
    maybe_applied: bool = False
    last_error: str = ""

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.backoff = self.options.backoff_initial

    def node(self) -> int:
        return self.endpoints.current % len(self.endpoints.endpoints)

    def succeeded(self, index: int, leader: Optional[str]) -> None:
        self.follow_leader(index, leader)

    def follow_leader(self, index: int, leader: Optional[str]) -> None:
        """A follower that forwarded the write names the leader: when that address is one of
        the endpoints, later calls go there directly (one hop fewer)."""
        at = self.endpoints.index_of(leader)
        if at is not None and at != index:
            self.endpoints.current = at

    def failed(self, index: int, status: WireStatus) -> float:
        self.follow_leader(index, status.leader)
        address = self.endpoints.endpoints[index].address
        self.last_error = f"{address}: {status.code.name}: {status.message}"
        out_of_time = self.clock() - self.started >= self.options.total_timeout
        if overloaded(status):
            if not self.options.retry_overloaded or out_of_time:
                if self.maybe_applied:
                    raise self.unavailable("refused now, but an earlier attempt may have been applied")
                raise from_status(status)
            return max(status.retry_after or 0.0, self._next_backoff())
        if not retryable(status):
            raise from_status(status)
        self.maybe_applied = True
        if out_of_time:
            raise self.unavailable("no node answered")
        hinted = self.endpoints.index_of(status.metadata.get(names.LEADER_ADDR))
        self.endpoints.current = hinted if hinted is not None else (index + 1) % len(self.endpoints.endpoints)
        return self._next_backoff()

    def _next_backoff(self) -> float:
        wait = self.backoff / 2 + self.jitter() * self.backoff / 2
        self.backoff = min(self.backoff * 2, self.options.backoff_max)
        return wait

    def unavailable(self, what: str) -> LockstepError:
        retry = (
            f"; a write may or may not have been applied: retry it with the same request id {self.request_id}"
            if self.request_id
            else ""
        )
        return Unavailable(
            f"{what} within {self.options.total_timeout:g} s (last error: {self.last_error}){retry}",
            request_id=self.request_id,
        )

