//! Raft messages to other nodes over gRPC (the internal `Raft` service).
//!
//! One lazily connected channel per peer; openraft calls go out as envelope-encoded bincode
//! and come back as the peer's `Result`, so a remote Raft error stays a remote error. Outside
//! development mode [`PeerConnector`] dials peers over TLS with the cluster CA as the only root
//! and the node's own certificate as client identity (mTLS); the receiving side checks that
//! the certificate names the sending node (`raft_service`).

use std::time::Duration;

use lockstep_proto::v1::internal::RaftMessage;
use lockstep_proto::v1::internal::raft_client::RaftClient;
use lockstep_raft::{Member, NodeId, TypeConfig};
use std::future::Future;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::wire;

/// AppendEntries RPCs this process sent (heartbeats included), for `GET /metrics`: with the
/// entries proposed, it shows how many requests one replication round carries.
pub static APPEND_ENTRIES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Builds channels to peers: https with the node's certificate as client identity, or plain
/// http in development mode (`tls: None`).
#[derive(Clone, Debug)]
pub struct PeerConnector {
    pub connect_timeout: Duration,
    /// The CA and this node's identity; `None` in development mode.
    pub tls: Option<ClientTlsConfig>,
    /// `--peer-via`: peers dialled at another address (a fault-injection proxy) than their
    /// member address.
    pub via: std::collections::BTreeMap<NodeId, String>,
}

/// A peer address no channel can be made for.
#[derive(Debug, thiserror::Error)]
#[error("bad peer address {addr}: {reason}")]
pub struct PeerAddressError {
    pub addr: String,
    pub reason: String,
}

impl PeerConnector {
    /// The address to dial peer `id`, whose member address is `addr`.
    pub fn dial_addr<'a>(&'a self, id: NodeId, addr: &'a str) -> &'a str {
        self.via.get(&id).map_or(addr, String::as_str)
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, PeerAddressError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let bad = |reason: String| PeerAddressError {
            addr: addr.to_string(),
            reason,
        };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| bad(e.to_string()))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| bad(format!("TLS settings: {e}")))?;
        }
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy())
    }
}

#[derive(Clone, Debug)]
pub struct Network {
    pub my_id: NodeId,
    pub connector: PeerConnector,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            my_id: self.my_id,
            target,
            addr: node.addr.clone(),
            client: self
                .connector
                .channel(self.connector.dial_addr(target, &node.addr))
                .ok()
                .map(RaftClient::new),
        }
    }
}

#[derive(Debug)]
pub struct Peer {
    my_id: NodeId,
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("bad address {}", self.addr)),
            )));
        };
        let mut request = tonic::Request::new(RaftMessage {
            payload: wire::encode(req),
            from_node: self.my_id,
        });
        request.set_timeout(option.hard_ttl());
        let result = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = result
            .map_err(|status| self.status_error(&which, option, &status))?
            .into_inner();
        let decoded: Result<Resp, E> = wire::decode(&reply.payload).map_err(|e| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(
                e.message().to_string(),
            )))
        })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// What a failed call means to openraft.
    fn status_error<E: std::error::Error>(
        &self,
        which: &Rpc,
        option: &RPCOption,
        status: &tonic::Status,
    ) -> RPCError<NodeId, Member, E> {
        match status.code() {
            // The deadline passed (here, or at the peer, whose tonic cancels the call with
            // "Timeout expired"): the peer is slow, not gone. Reported as `Unreachable` this
            // put openraft's replication to it into a 500 ms backoff, so a loaded follower
            // that once took longer than the heartbeat interval to append stalled commits
            // (issue 8's tail latencies); a `Timeout` is simply sent again.
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                action: which.rpc_type(),
                id: self.my_id,
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            tonic::Code::Unavailable => {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                    "node {} at {}: {}",
                    self.target,
                    self.addr,
                    status.message()
                ))))
            }
            _ => RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "node {}: {status}",
                self.target
            )))),
        }
    }
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Rpc {
    fn rpc_type(&self) -> RPCTypes {
        match self {
            Rpc::Append => RPCTypes::AppendEntries,
            Rpc::Vote => RPCTypes::Vote,
            Rpc::Snapshot => RPCTypes::InstallSnapshot,
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        APPEND_ENTRIES_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    /// Exports the snapshot if it is still a checkpoint (on a blocking thread, once per
    /// snapshot), then sends it in chunks as openraft's default does.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        mut snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        if let Err(e) = snapshot.snapshot.ready().await {
            // Not a storage error: openraft treats that as fatal and stops the leader. The
            // follower is tried again after a back-off, with the then current snapshot.
            tracing::warn!(target = self.target, error = %e, "cannot export the snapshot a follower needs");
            return Err(StreamingError::Unreachable(Unreachable::new(&e)));
        }
        Chunked::send_snapshot(self, vote, snapshot, cancel, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            my_id: 1,
            target: 2,
            addr: "127.0.0.1:1".into(),
            client: None,
        }
    }

    fn error(code: tonic::Code) -> RPCError<NodeId, Member, RaftError<NodeId>> {
        let option = RPCOption::new(Duration::from_millis(100));
        peer().status_error(&Rpc::Append, &option, &tonic::Status::new(code, "x"))
    }

    /// A slow peer is a timeout (sent again at once), not an unreachable one (which openraft
    /// backs off from for 500 ms); a refused connection is unreachable.
    #[test]
    fn a_deadline_is_a_timeout_and_a_refused_connection_is_unreachable() {
        for code in [tonic::Code::DeadlineExceeded, tonic::Code::Cancelled] {
            match error(code) {
                RPCError::Timeout(t) => {
                    assert_eq!((t.action, t.id, t.target), (RPCTypes::AppendEntries, 1, 2));
                    assert_eq!(t.timeout, Duration::from_millis(100));
                }
                other => panic!("{code:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            error(tonic::Code::Unavailable),
            RPCError::Unreachable(_)
        ));
        assert!(matches!(error(tonic::Code::Internal), RPCError::Network(_)));
    }
}
