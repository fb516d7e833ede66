//! Request ids: the dedup table that answers a retried request with its first response, and
//! its expiry in cluster time.

use super::*;

/// A request id's entry in the dedup table (envelope version 2; version 1 stored the
/// `(Response, Timestamp)` pair alone, which still reads, with no digest to compare).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupEntry {
    pub response: Response,
    pub at: Timestamp,
    /// SHA-256 of the request (kind, target, transition or event, payload or data, actor):
    /// the same id with another request is refused with REQUEST_ID_REUSED. `None` only for
    /// an entry read from version 1, which stored none.
    pub digest: Option<[u8; 32]>,
    /// The first request's kind and target, for that refusal's message.
    pub request: String,
}

/// The digest of what a request asks: its body without cluster time. Deterministic: bincode
/// of our own types, whose JSON values are encoded as canonical text.
pub(super) fn request_digest(body: &Body) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let bytes = bincode::serialize(body).expect("in-memory bincode encoding cannot fail");
    Sha256::digest(&bytes).into()
}

pub(super) fn show_target(target: &Target) -> String {
    match target {
        Target::Id(id) => id.clone(),
        Target::Key { workflow, key } => format!("{workflow}/{key}"),
    }
}

/// A request's kind and target in words, for REQUEST_ID_REUSED.
pub(super) fn describe_request(body: &Body) -> String {
    match body {
        Body::Create { workflow, key, .. } => match key {
            Some(key) => format!("create of {workflow}/{key}"),
            None => format!("create of a {workflow} instance"),
        },
        Body::Transition {
            target, transition, ..
        } => format!("transition `{transition}` of {}", show_target(target)),
        Body::Event { target, event, .. } => {
            format!("event `{event}` to {}", show_target(target))
        }
        Body::Task {
            instance_id,
            task_id,
            ..
        } => format!("task operation on {instance_id} task {task_id}"),
        Body::ResolveIncident {
            instance_id,
            incident_id,
            ..
        } => format!("resolution of incident {incident_id} of {instance_id}"),
        Body::Redact { target, fields, .. } => {
            format!(
                "redaction of {} of {}",
                fields.join(", "),
                show_target(target)
            )
        }
        Body::ApplyDefinition { provenance, .. } => {
            format!("definition apply of {}", provenance.path)
        }
        other => other.name().replace('_', " "),
    }
}

impl<S: Store> Applier<'_, S> {
    /// A request id's dedup entry, in either stored version (a version-1 entry has no digest).
    pub(super) fn dedup_entry(&self, request_id: &str) -> StoreResult<Option<DedupEntry>> {
        let Some(bytes) = self.get_raw(Family::Dedup, request_id.as_bytes())? else {
            return Ok(None);
        };
        let key = request_id.as_bytes();
        Ok(Some(match envelope::version_of(&bytes) {
            Some(1) => {
                let (response, at) =
                    envelope::decode::<(Response, Timestamp)>(Family::Dedup, key, &bytes)?;
                DedupEntry {
                    response,
                    at,
                    digest: None,
                    request: String::new(),
                }
            }
            _ => envelope::decode::<DedupEntry>(Family::Dedup, key, &bytes)?,
        }))
    }

    pub(super) fn expire_dedup(&mut self, at: Timestamp) -> StoreResult<()> {
        let horizon = at
            .as_micros()
            .saturating_sub(i64::try_from(DEDUP_RETENTION_MS * 1000).unwrap_or(i64::MAX));
        let mut end = Vec::new();
        keys::push_i64(&mut end, horizon);
        for (k, _) in self.range(Family::DedupByTime, &[], Some(&end), DEDUP_EXPIRE_BATCH_MAX)? {
            if let Some(request_id) = keys::split_strs(&k[8..]).into_iter().next() {
                self.delete(Family::Dedup, request_id.into_bytes());
            }
            self.delete(Family::DedupByTime, k);
        }
        Ok(())
    }
}
