"""The asyncio client against the cluster, and the change feed resuming after its connection
is cut (through a TCP proxy the test controls)."""

from __future__ import annotations

import asyncio
from typing import List, Optional, Tuple

import pytest
from conftest import TEST_OPTIONS, Cluster, unique

from lockstep import AsyncClient, Forbidden, Identity, by_key
from lockstep.models import AuditRecord

ALICE = Identity("alice", "human", ("requester",))


def client(cluster: Cluster, identity: Identity, endpoints: Optional[List[str]] = None) -> AsyncClient:
    return AsyncClient(endpoints or cluster.endpoints, identity=identity, options=TEST_OPTIONS)


@pytest.mark.asyncio
async def test_the_asyncio_client_drives_an_order(cluster: Cluster, purchase_order: str) -> None:
    async with client(cluster, ALICE) as alice, client(cluster, Identity("bob", "human", ("approver",))) as bob:
        keys = [unique("PO") for _ in range(4)]
        created = await asyncio.gather(
            *(alice.create_instance("purchase-order", {"amount": 50, "requester": "alice"}, key=k) for k in keys)
        )
        assert {c.state for c in created} == {"draft"} and len({c.instance_id for c in created}) == 4
        await alice.transition(by_key("purchase-order", keys[0]), "submit")
        with pytest.raises(Forbidden) as refused:
            await alice.transition(created[0].instance_id, "approve")
        assert refused.value.predicate
        approved = await bob.transition(created[0].instance_id, "approve", expected_version=2)
        assert approved.state == "approved"
        instance = await alice.get_instance(by_key("purchase-order", keys[0]))
        assert (instance.state, instance.version, instance.tasks[0].status) == ("approved", 3, "ready")
        history = await alice.history(created[0].instance_id)
        assert [r.kind for r in history] == ["created", "transition", "transition"]
        listed = [i.id async for i in alice.iter_instances("purchase-order", page_size=2)]
        assert {c.instance_id for c in created} <= set(listed)
        status = await alice.status()
        assert status.leader_addr in cluster.endpoints


class Proxy:
    """A TCP proxy to one node whose connections the test can cut."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.connections: List[Tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: Optional[asyncio.AbstractServer] = None
        self.endpoint = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.endpoint = f"127.0.0.1:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.connections.append((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut(self) -> int:
        """Breaks every open connection (as a crashed node or a network fault would)."""
        cut = 0
        for a, b in self.connections:
            for writer in (a, b):
                if not writer.transport.is_closing():
                    writer.transport.abort()
                    cut += 1
        self.connections.clear()
        return cut

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.asyncio
async def test_the_feed_resumes_after_a_broken_connection(cluster: Cluster, purchase_order: str) -> None:
    proxy = Proxy(cluster.endpoints[cluster.follower()])
    await proxy.start()
    auditor = Identity("auditor", "human", ("auditor",))
    try:
        async with client(cluster, ALICE) as alice, client(cluster, auditor, [proxy.endpoint, *cluster.endpoints]) as reader:
            head = (await alice.verify_audit()).head_seq
            feed = reader.tail(head + 1, follow=True)
            seen: List[AuditRecord] = []

            async def read_through(seq: int) -> None:
                async for record in feed:
                    seen.append(record)
                    if record.global_seq >= seq:
                        return

            first = await alice.create_instance("purchase-order", {"amount": 1, "requester": "alice"})
            await asyncio.wait_for(read_through(first.audit_seq), 10)
            assert proxy.cut() > 0
            later = [await alice.create_instance("purchase-order", {"amount": n, "requester": "alice"}) for n in range(3)]
            await asyncio.wait_for(read_through(later[-1].audit_seq), 15)
            await feed.aclose()
        seqs = [r.global_seq for r in seen]
        assert seqs == list(range(head + 1, seqs[-1] + 1)), "no record lost or repeated across the reconnect"
        assert {first.audit_seq, *(c.audit_seq for c in later)} <= set(seqs)
        assert feed.next_seq == seqs[-1] + 1 and feed.reconnects >= 1
    finally:
        await proxy.stop()
