//! The recorded history of a run: every client operation with its invocation and completion
//! time and outcome, and every fault window. Written as JSON lines (`history.jsonl`).

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Create the instance with the op's key (data `{"op": tag}`).
    Create,
    /// A named transition (payload `{"op": tag}`).
    Transition,
    /// A linearizable read of the instance.
    Read,
    /// A worker completing a leased task (result `{"op": tag}`).
    Complete,
    /// A worker extending its lease (found in the audit log by the sequence the answer names).
    Heartbeat,
    /// A worker reporting a retryable failure of its task (found by the sequence too).
    Fail,
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: it happened.
    Ok,
    /// Definitely did not happen (a refusal, a malformed or not-found answer).
    Fail,
    /// May or may not have happened (timeouts, unavailable cluster).
    Unknown,
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    /// The client (process) that issued it; a process has at most one operation in flight.
    pub process: u32,
    pub kind: OpKind,
    /// The instance's business key.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<String>,
    /// A unique tag carried in the payload, data or result: `{"op": tag}`, found again in the
    /// audit record's payload digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The lease token a task operation (Complete, Heartbeat, Fail) presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Token>,
    /// The instance id, when the client knew it (workers know only the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Microseconds since the start of the run.
    pub invoke_us: u64,
    pub complete_us: u64,
    pub outcome: Outcome,
    /// What an acknowledged write or read returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The global sequence of the audit record an acknowledged heartbeat or failure wrote,
    /// as its answer named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Refusal code (`NOT_ALLOWED_FROM_STATE`, …) or `NOT_FOUND`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A lease token: the Raft term the lease was granted in and its attempt (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub term: u64,
    pub attempt: u32,
}

impl Op {
    pub fn latency_us(&self) -> u64 {
        self.complete_us.saturating_sub(self.invoke_us)
    }

    /// Whether the operation asks for a change (create, transition, or a task operation).
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, OpKind::Read)
    }
}

/// A fault that was active between two instants of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub name: String,
    pub detail: String,
    pub start_us: u64,
    pub end_us: u64,
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Op(Box<Op>),
    Fault(FaultWindow),
}

/// The payload (or data, or task result) that carries an operation's tag.
pub fn tag_payload(tag: &str) -> serde_json::Value {
    serde_json::json!({ "op": tag })
}

/// The audit record's `payload_digest` of a tagged payload.
pub fn tag_digest(tag: &str) -> String {
    use lockstep_core::canonical::{canonical_json, sha256_hex};
    sha256_hex(&canonical_json(&tag_payload(tag)))
}

/// Serializes a history as JSON lines.
pub fn to_jsonl(ops: &[Op], faults: &[FaultWindow]) -> String {
    let mut out = String::new();
    for f in faults {
        out.push_str(&serde_json::to_string(&Event::Fault(f.clone())).expect("serializable"));
        out.push('\n');
    }
    for o in ops {
        out.push_str(
            &serde_json::to_string(&Event::Op(Box::new(o.clone()))).expect("serializable"),
        );
        out.push('\n');
    }
    out
}

/// Parses `history.jsonl`.
pub fn from_jsonl(text: &str) -> anyhow::Result<(Vec<Op>, Vec<FaultWindow>)> {
    let mut ops = Vec::new();
    let mut faults = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(line)
            .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?
        {
            Event::Op(o) => ops.push(*o),
            Event::Fault(f) => faults.push(f),
        }
    }
    Ok((ops, faults))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips() {
        let op = Op {
            id: 1,
            process: 2,
            kind: OpKind::Transition,
            key: "k".into(),
            transition: Some("start".into()),
            tag: Some("t1".into()),
            task_id: None,
            token: None,
            instance: None,
            invoke_us: 10,
            complete_us: 20,
            outcome: Outcome::Unknown,
            state: None,
            version: None,
            seq: None,
            code: None,
            error: Some("deadline".into()),
        };
        let fault = FaultWindow {
            name: "kill-leader".into(),
            detail: "node 2".into(),
            start_us: 5,
            end_us: 15,
        };
        let text = to_jsonl(std::slice::from_ref(&op), std::slice::from_ref(&fault));
        assert_eq!(text.lines().count(), 2);
        let (ops, faults) = from_jsonl(&text).unwrap();
        assert_eq!(ops, vec![op]);
        assert_eq!(faults, vec![fault]);
    }

    #[test]
    fn tag_digest_is_the_engine_digest_of_the_payload() {
        // canonical JSON of {"op":"x"} is exactly these bytes.
        assert_eq!(
            tag_digest("x"),
            lockstep_core::canonical::sha256_hex(br#"{"op":"x"}"#)
        );
        assert_ne!(tag_digest("x"), tag_digest("y"));
    }
}
