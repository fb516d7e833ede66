//! The server side of the internal `Raft` service: openraft messages and forwarded requests.

use std::sync::Arc;

use lockstep_proto::v1::internal::RaftMessage;
use lockstep_proto::v1::internal::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};

use crate::node::{ForwardRequest, Node};
use crate::wire;

#[derive(Debug, Clone)]
pub struct RaftService {
    pub node: Arc<Node>,
}

impl RaftService {
    /// Refuses messages from ids that are not members (the trust issue adds certificates).
    fn check_sender(&self, from: u64) -> Result<(), Status> {
        let members = self.node.member_list();
        if members.is_empty()
            || members.iter().any(|(id, _, _)| *id == from)
            || self.node.config.initial_members.contains_key(&from)
        {
            Ok(())
        } else {
            tracing::warn!(
                from,
                "refused a Raft message from a node that is not a member"
            );
            Err(Status::permission_denied(format!(
                "node {from} is not a member of this cluster"
            )))
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
        let msg = request.into_inner();
        self.check_sender(msg.from_node)?;
        let result = self
            .node
            .raft
            .append_entries(wire::decode(&msg.payload)?)
            .await;
        reply(&result, self.node.id)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let msg = request.into_inner();
        self.check_sender(msg.from_node)?;
        let result = self.node.raft.vote(wire::decode(&msg.payload)?).await;
        reply(&result, self.node.id)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg = request.into_inner();
        self.check_sender(msg.from_node)?;
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
        let msg = request.into_inner();
        self.check_sender(msg.from_node)?;
        let forwarded: ForwardRequest = wire::decode(&msg.payload)?;
        let result = self.node.serve_forwarded(forwarded).await;
        reply(&result, self.node.id)
    }
}
