//! The server side of the internal `Raft` service: openraft messages and forwarded requests.

use std::sync::Arc;

use lockstep_proto::v1::internal::RaftMessage;
use lockstep_proto::v1::internal::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};

use crate::cluster::ForwardRequest;
use crate::node::Node;
use crate::security_log::RefusalKind;
use crate::{trust, wire};

#[derive(Debug, Clone)]
pub struct RaftService {
    pub node: Arc<Node>,
}

impl RaftService {
    /// Admits a message only from a member node that proves who it is: outside development
    /// mode the TLS client certificate (already verified against the cluster CA by the
    /// handshake) must have CN `node-<from_node>`. Refusals are logged and go to the security
    /// log.
    fn check_sender(&self, request: &Request<RaftMessage>, method: &str) -> Result<(), Status> {
        let from = request.get_ref().from_node;
        let refuse = |reason: String| {
            let remote = request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            self.node.security.record(
                RefusalKind::Peer,
                method,
                &format!("node {from}"),
                &remote,
                "PERMISSION_DENIED",
                &reason,
            );
            Err(Status::permission_denied(reason))
        };
        if !self.node.config.dev {
            let Some(cert) = request.peer_certs().and_then(|c| c.first().cloned()) else {
                return refuse(format!(
                    "a message claiming to come from node {from} came without a node certificate: peers authenticate with mTLS"
                ));
            };
            let subject = match trust::subject(cert.as_ref()) {
                Ok(s) => s,
                Err(e) => return refuse(e.to_string()),
            };
            match trust::node_id_of(&subject) {
                Some(id) if id == from => {}
                Some(id) => {
                    return refuse(format!(
                        "the caller's certificate names node {id}, but the message claims to come from node {from}"
                    ));
                }
                None => {
                    return refuse(format!(
                        "the caller's certificate (CN={}) is not a node certificate (CN=node-<id>)",
                        subject.cn.as_deref().unwrap_or("none")
                    ));
                }
            }
        }
        let members = self.node.member_list();
        if members.is_empty()
            || members.iter().any(|(id, _, _)| *id == from)
            || self.node.config.initial_members.contains_key(&from)
        {
            Ok(())
        } else {
            refuse(format!("node {from} is not a member of this cluster"))
        }
    }
}

fn reply<T: serde::Serialize>(value: &T, node: u64) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        payload: wire::encode(value),
        from_node: node,
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(&request, "/lockstep.v1.internal.Raft/AppendEntries")?;
        let msg = request.into_inner();
        let result = self
            .node
            .raft
            .append_entries(wire::decode(&msg.payload)?)
            .await;
        reply(&result, self.node.id)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(&request, "/lockstep.v1.internal.Raft/Vote")?;
        let msg = request.into_inner();
        let result = self.node.raft.vote(wire::decode(&msg.payload)?).await;
        reply(&result, self.node.id)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(&request, "/lockstep.v1.internal.Raft/InstallSnapshot")?;
        let msg = request.into_inner();
        let result = self
            .node
            .raft
            .install_snapshot(wire::decode(&msg.payload)?)
            .await;
        reply(&result, self.node.id)
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(&request, "/lockstep.v1.internal.Raft/Forward")?;
        let msg = request.into_inner();
        let forwarded: ForwardRequest = wire::decode(&msg.payload)?;
        let result = self.node.serve_forwarded(forwarded).await;
        reply(&result, self.node.id)
    }
}
