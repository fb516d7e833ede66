//! Tells clients where the leader is, so their writes stop taking the follower's detour.
//!
//! When a follower forwarded a write to the leader, the write's answer names the leader
//! (`cluster::Written::forwarded_to`), and the API puts it in the answer's `x-lockstep-leader`
//! header ([`name_leader`]), whether the write was applied or refused. A client that has that
//! address among its endpoints sends its next requests there directly (`lockstep_client`
//! does), which saves the follower a proposal attempt, a forwarding round trip and the
//! re-encoding of request and answer. Forwarding itself stays: a client that can only reach
//! one node (behind a load balancer) keeps working through it.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Response, Status};

/// The response header naming the leader's address, on writes a follower forwarded.
pub const LEADER_HEADER: &str = lockstep_proto::names::LEADER_HEADER;

/// `answer`, with the leader's address in its metadata when the write was forwarded to the
/// leader at `forwarded_to` (an address that is not a valid header value is left out: the
/// hint is an optimisation, never needed for correctness).
pub fn name_leader<T>(
    forwarded_to: Option<&str>,
    mut answer: Result<Response<T>, Status>,
) -> Result<Response<T>, Status> {
    if let Some(value) = forwarded_to.and_then(|a| MetadataValue::try_from(a).ok()) {
        let metadata: &mut MetadataMap = match &mut answer {
            Ok(response) => response.metadata_mut(),
            Err(status) => status.metadata_mut(),
        };
        metadata.insert(LEADER_HEADER, value);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_answer_names_the_leader_applied_or_refused() {
        let applied = name_leader(Some("10.0.0.1:7001"), Ok(Response::new(())));
        let header = applied
            .expect("applied")
            .metadata()
            .get(LEADER_HEADER)
            .cloned();
        assert_eq!(
            header.as_ref().and_then(|v| v.to_str().ok()),
            Some("10.0.0.1:7001")
        );
        let refused = name_leader::<()>(Some("10.0.0.1:7001"), Err(Status::not_found("x")));
        let status = refused.expect_err("refused");
        assert_eq!(
            status
                .metadata()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("10.0.0.1:7001")
        );
    }

    #[test]
    fn an_answer_the_node_wrote_itself_names_no_leader() {
        let answer = name_leader(None, Ok(Response::new(()))).expect("applied");
        assert!(answer.metadata().get(LEADER_HEADER).is_none());
        // An address that cannot be a header value is left out rather than failing the call.
        let answer = name_leader(Some("bad\naddress"), Ok(Response::new(()))).expect("applied");
        assert!(answer.metadata().get(LEADER_HEADER).is_none());
    }
}
