//! The `Audit` service: the change feed (`Tail`), chain verification and the security log;
//! and the wire form of an audit record.

use super::*;

/// The stream `Audit/Tail` answers with.
type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

pub fn audit_pb(r: &ChainedRecord) -> pb::AuditRecord {
    let rec = &r.record;
    pb::AuditRecord {
        global_seq: r.global_seq,
        instance_seq: r.instance_seq,
        raft_term: r.raft_term,
        raft_index: r.raft_index,
        kind: name_of(&rec.kind),
        workflow: rec.workflow.clone(),
        instance_id: rec.instance_id.clone(),
        definition_version: rec.definition_version.clone(),
        transition: rec.transition.clone().unwrap_or_default(),
        from: rec.from.clone().unwrap_or_default(),
        to: rec.to.clone().unwrap_or_default(),
        actor_id: rec.actor.id.clone(),
        actor_kind: rec.actor.kind.clone(),
        actor_roles: rec.actor.roles.clone(),
        actor_authn: rec.actor.authn.clone(),
        at: rec.at.to_string(),
        payload_digest: rec.payload_digest.clone().unwrap_or_default(),
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
        record_json: serde_json::to_string(r).unwrap_or_default(),
        instance_version: rec.instance_version,
        predicates: rec
            .predicates
            .iter()
            .map(|p| pb::PredicateTrace {
                role: p.role.clone(),
                expression: p.expression.clone(),
                result: p.result,
            })
            .collect(),
        timer: rec.timer.as_ref().map(|t| pb::TimerFiring {
            timer_id: t.timer_id.clone(),
            due_at: t.due_at.to_string(),
            fired_at: t.fired_at.to_string(),
            lateness_ms: t.lateness_ms,
        }),
        task_id: rec.task_id.clone().unwrap_or_default(),
        sla: rec.sla.clone().unwrap_or_default(),
        note: rec.note.clone().unwrap_or_default(),
        // Only History answers the journal, and only when asked (it holds payloads).
        journal_json: String::new(),
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for Api {
    type TailStream = AuditStream;

    async fn tail(
        &self,
        request: Request<pb::TailAuditRequest>,
    ) -> Result<Response<AuditStream>, Status> {
        let req = request.into_inner();
        // The feed starts linearizable: it holds everything committed before the call, on
        // whichever node serves it, so a consumer resuming elsewhere sees no gap.
        self.read_info(pb::ReadConsistency::Linearizable as i32)
            .await?;
        let node = Arc::clone(&self.node);
        let mut next = req.from_seq.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_BATCH);
        tokio::spawn(async move {
            let mut metrics = node.raft.metrics();
            loop {
                let batch = match read::audit_from(&*node.store, next, TAIL_BATCH) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status::store_error(e))).await;
                        return;
                    }
                };
                for r in &batch {
                    if tx.send(Ok(audit_pb(r))).await.is_err() {
                        return;
                    }
                    next = r.global_seq + 1;
                }
                if batch.len() < TAIL_BATCH {
                    if !req.follow {
                        return;
                    }
                    tokio::select! {
                        changed = metrics.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let at_seq = request.into_inner().at_seq;
        let head = read::audit_head(&*self.node.store).map_err(status::store_error)?;
        let (result, at_hash) =
            read::verify_audit_at(&*self.node.store, at_seq).map_err(status::store_error)?;
        let (ok, records_checked, broken_seq, reason) = match result {
            Ok(n) => (true, n, 0, String::new()),
            Err(b) => (
                false,
                b.global_seq.saturating_sub(1),
                b.global_seq,
                b.reason,
            ),
        };
        Ok(Response::new(pb::VerifyAuditResponse {
            ok,
            records_checked,
            broken_seq,
            reason,
            head_seq: head.seq,
            head_hash: hex_hash(&head.hash),
            at_seq,
            at_hash: at_hash.map(|h| hex_hash(&h)).unwrap_or_default(),
        }))
    }

    async fn security_log(
        &self,
        request: Request<pb::SecurityLogRequest>,
    ) -> Result<Response<pb::SecurityLogResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        let page = self.node.security.read(req.after_seq, limit);
        Ok(Response::new(pb::SecurityLogResponse {
            events: page.entries.into_iter().map(security_event_pb).collect(),
            total: page.total,
            node_id: self.node.id,
            capacity: SECURITY_LOG_ENTRIES_MAX as u32,
        }))
    }
}

fn security_event_pb(e: SecurityEvent) -> pb::SecurityEvent {
    pb::SecurityEvent {
        seq: e.seq,
        at: e.at,
        kind: e.kind.as_str().to_string(),
        method: e.method,
        actor: e.actor,
        remote: e.remote,
        code: e.code,
        reason: e.reason,
    }
}

fn hex_hash(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
