"""The sync client against a real 3-node cluster: the purchase-order workflow end to end,
refusals as exceptions, request ids, followers, and the audit and cluster calls."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import List

import pytest
from conftest import PURCHASE_ORDER, Cluster, unique

from lockstep import (
    AlreadyExists,
    Client,
    Forbidden,
    GateNotYetOpen,
    NotAllowedFromState,
    NotFound,
    Options,
    Provenance,
    Refused,
    RequestIdReused,
    TimerPolicy,
    UnknownInstance,
    VersionConflict,
    by_key,
    request_id,
)
from lockstep.models import AuditRecord

APPROVE_ALLOW = "'approver' in actor.roles && actor.id != instance.data.requester"


def new_order(cluster: Cluster, amount: int = 500) -> str:
    """A submitted purchase order of alice's; its business key."""
    key = unique("PO")
    with cluster.client("alice", ["requester"]) as alice:
        alice.create_instance("purchase-order", {"amount": amount, "requester": "alice"}, key=key)
        alice.transition(by_key("purchase-order", key), "submit")
    return key


def test_apply_is_idempotent_and_the_definition_reads_back(admin: Client, purchase_order: str) -> None:
    again = admin.apply_definition(PURCHASE_ORDER, provenance=Provenance("lockstep", "sdk-test", "purchase-order.yaml"))
    assert (again.workflow, again.version, again.created) == ("purchase-order", purchase_order, False)
    latest = admin.get_definition("purchase-order")
    assert (latest.version, latest.source) == (purchase_order, PURCHASE_ORDER)
    assert latest.applied_by == "admin" and latest.applied_at.tzinfo is not None
    assert admin.get_definition("purchase-order", purchase_order).version == purchase_order
    assert [d.version for d in admin.list_definition_versions("purchase-order")] == [purchase_order]
    page = admin.list_workflows()
    summary = next(w for w in page.workflows if w.workflow == "purchase-order")
    assert (summary.latest.version, summary.versions, summary.latest.source) == (purchase_order, 1, "")
    assert summary.latest.applied_by == latest.applied_by
    assert page.next_page_token is None


def test_purchase_order_create_transition_get_list_history(cluster: Cluster, admin: Client, purchase_order: str) -> None:
    key = unique("PO")
    data = {"amount": 500, "requester": "alice", "supplier": "Python Ltd"}
    with cluster.client("alice", ["requester"]) as alice, cluster.client("bob", ["approver"]) as bob:
        created = alice.create_instance("purchase-order", data, key=key)
        assert (created.state, created.version) == ("draft", 1)
        submitted = alice.transition(created.instance_id, "submit")
        assert (submitted.state, submitted.version) == ("submitted", 2)
        approved = bob.transition(by_key("purchase-order", key), "approve", expected_version=2)
        assert (approved.state, approved.version) == ("approved", 3)
    instance = admin.get_instance(by_key("purchase-order", key))
    assert (instance.id, instance.key, instance.state, instance.version) == (created.instance_id, key, "approved", 3)
    assert instance.data == data and instance.definition_version == purchase_order
    assert instance.created_by == "alice" and instance.read is not None and not instance.read.stale
    # The approval's task effect: a typed task, ready, with the instance data as input.
    (task,) = instance.tasks
    assert (task.queue, task.task_type, task.status, task.attempt) == ("erp", "create-purchase-order", "ready", 0)
    assert (task.on_complete, task.on_exhausted, task.lease) == ("place", "fail", None)
    assert task.input["data"] == data and list(instance.open_incidents()) == []
    assert instance.slas["approval"].status == "stopped"
    page = admin.list_instances("purchase-order", state="approved", page_size=500)
    assert created.instance_id in {i.id for i in page.instances}
    approved_ids = {i.id for i in admin.iter_instances("purchase-order", state="approved", page_size=2)}
    assert created.instance_id in approved_ids
    # The count the cluster keeps (log format 4, raised before the fixture hands it over).
    assert page.total == len(approved_ids)
    history = admin.history(created.instance_id)
    assert [(r.kind, r.transition, r.from_state, r.to_state, r.actor.id) for r in history] == [
        ("created", None, None, "draft", "alice"),
        ("transition", "submit", "draft", "submitted", "alice"),
        ("transition", "approve", "submitted", "approved", "bob"),
    ]
    assert [r.global_seq for r in history] == [created.audit_seq, submitted.audit_seq, approved.audit_seq]
    assert {p.role: p.result for p in history[2].predicates} == {"allow": True, "guard": True}
    assert history[2].record["instance_hash"] and history[2].actor.roles == ("approver",)
    # The command journal: what each record was decided on, creation data included.
    assert all(r.journal is None for r in history)
    journaled = admin.history(created.instance_id, commands=True)
    create = journaled[0].journal
    assert create is not None and create["step"]["command"]["command"]["create"]["data"] == data, create
    assert [r.journal["state"] for r in journaled if r.journal] == ["draft", "submitted", "approved"]


def test_refusals_raise_the_exception_of_their_code(cluster: Cluster, purchase_order: str) -> None:
    key = new_order(cluster)
    target = by_key("purchase-order", key)
    with cluster.client("alice", ["approver"]) as alice:
        with pytest.raises(Forbidden) as forbidden:
            alice.transition(target, "approve")
        assert forbidden.value.code == "FORBIDDEN" and forbidden.value.predicate == APPROVE_ALLOW
        assert "allow" in forbidden.value.reason and isinstance(forbidden.value, Refused)
        with pytest.raises(NotAllowedFromState):
            alice.transition(target, "submit")
        with pytest.raises(AlreadyExists):
            alice.create_instance("purchase-order", {"amount": 1, "requester": "alice"}, key=key)
        with pytest.raises(UnknownInstance):
            alice.transition(by_key("purchase-order", unique("none")), "submit")
        with pytest.raises(NotFound):
            alice.get_instance(by_key("purchase-order", unique("none")))
    with cluster.client("bob", ["approver"]) as bob:
        with pytest.raises(VersionConflict):
            bob.transition(target, "approve", expected_version=1)


def test_a_closed_gate_says_when_it_opens(cluster: Cluster, admin: Client, purchase_order: str) -> None:
    key = new_order(cluster)
    entered = admin.get_instance(by_key("purchase-order", key)).entered_at
    with cluster.client("alice", ["requester"]) as alice:
        with pytest.raises(GateNotYetOpen) as closed:
            alice.transition(by_key("purchase-order", key), "withdraw")
    # withdraw: not_before 1h after entering `submitted`.
    assert closed.value.earliest_at == entered + timedelta(hours=1)


def test_the_same_request_id_gets_the_same_answer(cluster: Cluster, purchase_order: str) -> None:
    rid = request_id()
    key = unique("PO")
    data = {"amount": 10, "requester": "alice"}
    with cluster.client("alice", ["requester"]) as alice:
        first = alice.create_instance("purchase-order", data, key=key, request_id=rid)
        again = alice.create_instance("purchase-order", data, key=key, request_id=rid)
        assert again == first
        # The same id for another request is refused, not applied.
        with pytest.raises(RequestIdReused):
            alice.transition(first.instance_id, "submit", request_id=rid)
    with cluster.client("admin", ["admin"]) as admin:
        assert [r.kind for r in admin.history(first.instance_id)] == ["created"]


def test_a_follower_forwards_writes_and_names_the_leader(cluster: Cluster, purchase_order: str) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    endpoints = [cluster.endpoints[follower], cluster.endpoints[leader]]
    with cluster.client("alice", ["requester"], endpoints=endpoints) as alice:
        assert alice.current_endpoint == cluster.endpoints[follower]
        created = alice.create_instance("purchase-order", {"amount": 5, "requester": "alice"})
        # Forwarded by the follower, whose answer named the leader: the client goes there now.
        assert alice.current_endpoint == cluster.endpoints[leader]
        alice.transition(created.instance_id, "submit")
    # A client that knows only the follower keeps working through it.
    with cluster.client("alice", ["requester"], endpoints=[cluster.endpoints[follower]]) as alice:
        created = alice.create_instance("purchase-order", {"amount": 5, "requester": "alice"})
        instance = alice.get_instance(created.instance_id)
        assert alice.current_endpoint == cluster.endpoints[follower]
        assert instance.read is not None and instance.read.node_id == follower + 1
    # Without forwarding, the follower's NOT_LEADER answer sends the client to the leader.
    options = Options(attempt_timeout=10.0, total_timeout=20.0, forward=False)
    with cluster.client("alice", ["requester"], endpoints=endpoints, options=options) as alice:
        alice.create_instance("purchase-order", {"amount": 5, "requester": "alice"})
        assert alice.current_endpoint == cluster.endpoints[leader]


def test_a_dead_endpoint_is_skipped(cluster: Cluster, purchase_order: str) -> None:
    from conftest import free_port

    dead = f"127.0.0.1:{free_port()}"
    with cluster.client("alice", ["requester"], endpoints=[dead, *cluster.endpoints]) as alice:
        created = alice.create_instance("purchase-order", {"amount": 5, "requester": "alice"})
        assert created.state == "draft" and alice.current_endpoint != dead


def test_the_feed_delivers_in_order_and_resumes_from_a_cursor(cluster: Cluster, admin: Client, purchase_order: str) -> None:
    key = new_order(cluster)
    head = admin.verify_audit().head_seq
    records: List[AuditRecord] = list(admin.tail(head - 1))
    assert [r.global_seq for r in records] == [head - 1, head]
    assert records[-1].transition == "submit"
    # Followed: a record applied after the feed opened arrives.
    feed = admin.tail(head + 1, follow=True)
    got: List[AuditRecord] = []
    reader = threading.Thread(target=lambda: got.append(next(feed)))
    reader.start()
    with cluster.client("bob", ["approver"]) as bob:
        approved = bob.transition(by_key("purchase-order", key), "approve")
    reader.join(timeout=10)
    feed.close()
    assert [r.global_seq for r in got] == [approved.audit_seq]


def test_status_verify_and_security_log(cluster: Cluster, admin: Client, purchase_order: str) -> None:
    status = admin.status(include_digest=True)
    assert status.leader_addr in cluster.endpoints and status.digest and len(status.members) == 3
    assert {admin.status(node=i).node_id for i in range(3)} == {1, 2, 3}
    verified = admin.verify_audit(node=1)
    assert verified.ok and verified.records_checked > 0 and verified.broken_seq is None
    at = admin.verify_audit(at_seq=1)
    assert at.at_seq == 1 and at.at_hash
    # A refusal is in the security log of the node that answered it.
    leader = cluster.leader()
    with cluster.client("mallory", endpoints=[cluster.endpoints[leader]]) as mallory:
        with pytest.raises(Refused):
            mallory.transition(by_key("purchase-order", new_order(cluster)), "approve")
    log = admin.security_log(node=leader)
    assert log.node_id == leader + 1 and any(e.actor == "mallory" and e.code == "FORBIDDEN" for e in log.events)


def test_migrate_between_versions(cluster: Cluster, admin: Client) -> None:
    workflow = unique("po-migrate")
    v1 = admin.apply_definition(PURCHASE_ORDER.replace("workflow: purchase-order", f"workflow: {workflow}"))
    with cluster.client("alice", ["requester"]) as alice:
        created = alice.create_instance(workflow, {"amount": 5, "requester": "alice"})
    source = PURCHASE_ORDER.replace("workflow: purchase-order", f"workflow: {workflow}")
    v2 = admin.apply_definition(source.replace("Orders above", "Orders, v2, above"))
    assert v2.version != v1.version
    batch = admin.migrate(workflow, v1.version, v2.version, timer_policy=TimerPolicy.KEEP_DEADLINE)
    assert (batch.migrated, batch.more, batch.to_version) == (1, False, v2.version)
    assert batch.instances[0].instance_id == created.instance_id
    assert admin.get_instance(created.instance_id).definition_version == v2.version
    assert admin.history(created.instance_id)[-1].kind == "migration"


def test_actions_and_the_inbox_say_what_the_caller_may_do(cluster: Cluster, admin: Client, purchase_order: str) -> None:
    key = new_order(cluster)
    target = by_key("purchase-order", key)
    entered = admin.get_instance(target).entered_at
    with cluster.client("bob", ["approver"]) as bob:
        answer = bob.actions(target)
        actions = {a.transition: a for a in answer.actions}
        assert (answer.state, answer.version) == ("submitted", 2)
        assert {"approve", "reject", "ask"} <= set(actions) and "withdraw" not in actions
        assert actions["approve"].to_state == "approved" and actions["approve"].available_now
        # The inbox lists the order among those bob can act on.
        token, found = None, None
        for _ in range(100):
            page = bob.inbox(["purchase-order"], states=["submitted"], page_size=100, page_token=token)
            found = next((i for i in page.items if i.key == key), None)
            if found is not None or page.next_page_token is None:
                break
            token = page.next_page_token
        assert found is not None and found.instance_id == answer.instance_id
        assert "approve" in {a.transition for a in found.actions}
    with cluster.client("alice", ["requester"]) as alice:
        withdraw = {a.transition: a for a in alice.actions(target).actions}["withdraw"]
        assert not withdraw.available_now and withdraw.opens_at == entered + timedelta(hours=1)
