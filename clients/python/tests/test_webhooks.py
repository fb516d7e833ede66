"""Webhook subscriptions through the SDK against a real 3-node cluster, delivering to a real
HTTP receiver in this process: the signed POST arrives and verifies, and the subscription is
listed, paused, resumed and deleted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List, Tuple

import pytest
from conftest import WEBHOOK_SECRET, Cluster, unique

from lockstep import Client, InvalidArgument, UnknownSubscription

NOTES = """
workflow: sdk-notes
data: { type: object }
states:
  open: { initial: true }
  done: { terminal: true }
transitions:
  finish: { from: open, to: done, allow: "true", effects: [{ emit: { event: notes.finished } }] }
"""


class _Receiver(BaseHTTPRequestHandler):
    got: List[Tuple[Dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        _Receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()


def verified(headers: Dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    mine = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(mine, s.split(",", 1)[1]) for s in headers["webhook-signature"].split())


def test_a_subscription_delivers_signed_records_and_is_managed(cluster: Cluster, admin: Client, receiver: str) -> None:
    admin.apply_definition(NOTES)
    name = unique("notes").lower()
    created = admin.create_subscription(name, receiver, secret="sdk", events=["notes.finished"])
    assert created.name == name and not created.paused and created.events == ("notes.finished",)

    note = admin.create_instance("sdk-notes", {})
    change = admin.transition(note.instance_id, "finish")
    deadline = time.monotonic() + 30
    while not _Receiver.got and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _Receiver.got, "nothing was delivered"
    headers, body = _Receiver.got[0]
    assert verified(headers, body)
    assert int(headers["webhook-id"]) == change.audit_seq
    sent = json.loads(body)
    assert sent["type"] == "lockstep.transition"
    assert sent["data"]["emitted"] == ["notes.finished"]
    assert [h["webhook-id"] for h, _ in _Receiver.got] == [str(change.audit_seq)], "only the change that emitted"

    assert name in [s.name for s in admin.subscriptions()]
    paused = admin.pause_subscription(name, "maintenance")
    assert paused.paused and paused.paused_reason == "maintenance" and paused.paused_by == "admin"
    resumed = admin.resume_subscription(name)
    assert not resumed.paused
    deleted = admin.delete_subscription(name)
    assert deleted.name == name
    with pytest.raises(UnknownSubscription):
        admin.subscription(name)

    # A secret the nodes do not hold, and a target off their allow-list, are refused.
    with pytest.raises(InvalidArgument, match="no signing secret"):
        admin.create_subscription(unique("x").lower(), receiver, secret="missing")
    with pytest.raises(InvalidArgument, match="allow-list"):
        admin.create_subscription(unique("x").lower(), "http://127.0.0.2:9/hook", secret="sdk")
