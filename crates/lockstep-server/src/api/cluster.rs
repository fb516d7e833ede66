//! The `Cluster` service: status, membership, snapshots and backups.

use super::*;

fn members_pb(members: Vec<(u64, String, bool)>) -> pb::MembershipResponse {
    pb::MembershipResponse {
        members: members
            .into_iter()
            .map(|(id, addr, voter)| pb::Member { id, addr, voter })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let req = request.into_inner();
        let m = self.node.raft.metrics().borrow().clone();
        let (leader_id, leader_addr) = self.node.leader();
        let digest = if req.include_digest {
            read::digest(&*self.node.store).map_err(status::store_error)?
        } else {
            String::new()
        };
        let cluster_time = read::cluster_time(&*self.node.store)
            .map_err(status::store_error)?
            .map(|t| t.to_string())
            .unwrap_or_default();
        let log_format = read::log_format(&*self.node.store).map_err(status::store_error)?;
        Ok(Response::new(pb::ClusterStatus {
            node_id: self.node.id,
            leader_id: leader_id.unwrap_or(0),
            leader_addr: leader_addr.unwrap_or_default(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            digest,
            members: members_pb(self.node.member_list()).members,
            role: format!("{:?}", m.state),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            cluster_time,
            space_alarm: self.node.space.refusal().unwrap_or_default(),
            data_dir_free_bytes: self.node.space.last().free_bytes,
            store_bytes: self.node.space.last().store_bytes,
            log_format: log_format.0,
            log_format_readable: lockstep_raft::format::LOG_FORMAT_CURRENT,
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.actor(request.extensions())?;
        let forward = Self::forward(request.metadata());
        let req = request.into_inner();
        if req.node_id == 0 || !req.addr.contains(':') {
            return Err(status::bad_request(
                "give a positive node_id and its host:port address",
            ));
        }
        let members = self
            .node
            .add_learner(req.node_id, req.addr, forward)
            .await
            .map_err(status::write_error)?;
        Ok(Response::new(members_pb(members)))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.actor(request.extensions())?;
        let forward = Self::forward(request.metadata());
        let req = request.into_inner();
        let known: Vec<u64> = self.node.member_list().iter().map(|m| m.0).collect();
        if let Some(missing) = req.node_ids.iter().find(|id| !known.contains(id)) {
            return Err(Status::not_found(format!(
                "node {missing} is not a member; add it as a learner first"
            )));
        }
        let members = self
            .node
            .promote(req.node_ids, forward)
            .await
            .map_err(status::write_error)?;
        Ok(Response::new(members_pb(members)))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.actor(request.extensions())?;
        let forward = Self::forward(request.metadata());
        let req = request.into_inner();
        if !self.node.member_list().iter().any(|m| m.0 == req.node_id) {
            return Err(Status::not_found(format!(
                "node {} is not a member",
                req.node_id
            )));
        }
        let members = self
            .node
            .remove(req.node_id, forward)
            .await
            .map_err(status::write_error)?;
        Ok(Response::new(members_pb(members)))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.actor(request.extensions())?;
        let applied = self
            .node
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index);
        self.node
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let waited = self
            .node
            .raft
            .wait(Some(std::time::Duration::from_secs(30)))
            .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot built")
            .await
            .map_err(|e| Status::deadline_exceeded(format!("snapshot not finished: {e}")))?;
        Ok(Response::new(pb::SnapshotResponse {
            last_index: waited.snapshot.map(|s| s.index).unwrap_or(0),
        }))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        self.actor(request.extensions())?;
        let info = crate::backup::online(&self.node, &request.into_inner().name).await?;
        Ok(Response::new(pb::BackupResponse {
            node_id: self.node.id,
            path: info.path.display().to_string(),
            applied_index: info.applied.map(|l| l.index).unwrap_or(0),
            applied_term: info.applied.map(|l| l.leader_id.term).unwrap_or(0),
            bytes: info.bytes,
        }))
    }
}
