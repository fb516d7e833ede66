//! The key schema of the replicated state: the keys of each family's entries and the meta
//! keys, shared by apply (which writes them) and the readers (queries, backups, checkers).
//! Changing a key's layout is a log-format change: every replica must write the same bytes.

/// Meta keys (family `Meta`, replicated).
pub mod meta {
    pub const APPLIED: &[u8] = b"applied";
    pub const MEMBERSHIP: &[u8] = b"membership";
    pub const TIME: &[u8] = b"time";
    pub const AUDIT_HEAD: &[u8] = b"audit_head";
    pub const OUTBOX_SEQ: &[u8] = b"outbox_seq";
    /// The last outbox sequence the leader dispatched and acknowledged.
    pub const OUTBOX_ACKED: &[u8] = b"outbox_acked";
    /// The replicated log format (`lockstep_raft::format`); absent means format 1.
    pub const LOG_FORMAT: &[u8] = b"log_format";

    /// The meta values that only apply writes, which apply's cache (`lockstep_raft::apply::ApplyCache`) keeps between
    /// apply runs so that a run reads none of them from the store. (The applied id and the
    /// membership are written by every run and read only by openraft at start-up.)
    pub const CACHED: [&[u8]; 5] = [TIME, AUDIT_HEAD, OUTBOX_SEQ, OUTBOX_ACKED, LOG_FORMAT];

    /// `key` as one of [`CACHED`], if it is one.
    pub fn cached(key: &[u8]) -> Option<&'static [u8]> {
        CACHED.iter().copied().find(|c| *c == key)
    }
}

/// Key builders for the state families.
pub mod key {
    use crate::keys;

    pub fn definition(workflow: &str, version: &str) -> Vec<u8> {
        let mut k = b"v\0".to_vec();
        keys::push_str(&mut k, workflow);
        keys::push_str(&mut k, version);
        k
    }
    pub fn latest_definition(workflow: &str) -> Vec<u8> {
        let mut k = b"l\0".to_vec();
        keys::push_str(&mut k, workflow);
        k
    }
    pub fn workflow_state(workflow: &str, state: &str, id: &str) -> Vec<u8> {
        keys::strs(&[workflow, state, id])
    }
    pub fn business_key(workflow: &str, key: &str) -> Vec<u8> {
        keys::strs(&[workflow, key])
    }
    pub fn audit_by_instance(id: &str, seq: u64) -> Vec<u8> {
        let mut k = keys::strs(&[id]);
        keys::push_u64(&mut k, seq);
        k
    }
    /// The command behind record `seq` of an instance's chain (family `Journal`): the same
    /// layout as [`audit_by_instance`], so an instance's journal reads in record order.
    pub fn journal(id: &str, seq: u64) -> Vec<u8> {
        audit_by_instance(id, seq)
    }
    /// A webhook subscription (family `Subscriptions`).
    pub fn subscription(name: &str) -> Vec<u8> {
        keys::strs(&[name])
    }
    /// The entries of one indexed data field of a workflow (family `IndexData`): the prefix
    /// of [`data_index`].
    pub fn data_index_prefix(workflow: &str, field: &str) -> Vec<u8> {
        keys::strs(&[workflow, field])
    }
    /// An instance's entry for an indexed data field: the field's prefix, the value's
    /// order-preserving encoding (`lockstep_core::search::IndexValue::encode`), the id.
    pub fn data_index(workflow: &str, field: &str, encoded: &[u8], id: &str) -> Vec<u8> {
        let mut k = data_index_prefix(workflow, field);
        k.extend_from_slice(encoded);
        k.extend_from_slice(id.as_bytes());
        k
    }
    /// A schedule (family `Schedules`).
    pub fn schedule(name: &str) -> Vec<u8> {
        keys::strs(&[name])
    }
    /// The events emitted with the audit record `global_seq` (family `Emitted`).
    pub fn emitted(global_seq: u64) -> Vec<u8> {
        keys::u64_key(global_seq)
    }
    /// The trace a task was created in (family `TaskTraces`).
    pub fn task_trace(instance_id: &str, task_id: &str) -> Vec<u8> {
        keys::strs(&[instance_id, task_id])
    }
    pub fn timer_due(due_at_micros: i64, timer_id: &str) -> Vec<u8> {
        let mut k = Vec::new();
        keys::push_i64(&mut k, due_at_micros);
        keys::push_str(&mut k, timer_id);
        k
    }
    pub fn timer_owner(instance_id: &str, timer_id: &str) -> Vec<u8> {
        keys::strs(&[instance_id, timer_id])
    }
    pub fn task(queue: &str, task_id: &str) -> Vec<u8> {
        keys::strs(&[queue, task_id])
    }
    /// The number of tasks a worker holds leased (family `Meta`).
    pub fn worker_leases(worker: &str) -> Vec<u8> {
        let mut k = b"leases\0".to_vec();
        keys::push_str(&mut k, worker);
        k
    }
    /// An instance with `flag` (an SLA status or an open incident; family `IndexFlags`).
    pub fn flag(workflow: &str, flag: &str, id: &str) -> Vec<u8> {
        keys::strs(&[workflow, flag, id])
    }
    /// How many instances of `workflow` are in state `state` (`what` = `state:<name>`) or
    /// carry a flag (`what` = the flag), family `Meta`.
    pub fn count(workflow: &str, what: &str) -> Vec<u8> {
        let mut k = COUNT_PREFIX.to_vec();
        keys::push_str(&mut k, workflow);
        keys::push_str(&mut k, what);
        k
    }
    /// The prefix of `workflow`'s counts.
    pub fn counts_of(workflow: &str) -> Vec<u8> {
        let mut k = COUNT_PREFIX.to_vec();
        keys::push_str(&mut k, workflow);
        k
    }
    pub const COUNT_PREFIX: &[u8] = b"count\0";
    pub fn dedup_by_time(at_micros: i64, request_id: &str) -> Vec<u8> {
        let mut k = Vec::new();
        keys::push_i64(&mut k, at_micros);
        keys::push_str(&mut k, request_id);
        k
    }
}
