//! Instance migration on a real secure 3-node cluster (DESIGN §2, §5): an actor holding the
//! policy's migrate_instances permission moves instances to a new definition version through
//! gRPC; one without it is refused and recorded in the security log; the audit chains still
//! verify on every node and the replicas agree.

mod common;

use common::{Cluster, PO, Settings};
use lockstep_client::model::{AuditKind, TimerKind};
use lockstep_client::{Error, Identity, Instance, RefusalKind, by_key, pb, request_id};
use lockstep_core::{ActorKind, RefusalCode, Timestamp};

/// Only actors with the role `release` may migrate; the other permissions keep their defaults.
const POLICY: &str = "[migrate_instances]\nroles = [\"release\"]\n";

fn who(actor: &str, roles: &[&str]) -> Identity {
    Identity::new(actor, ActorKind::Human, roles)
}

/// Version B of the purchase order: `submitted` is called `in_review`, and approval has 8
/// business hours instead of 16.
fn po_v2() -> String {
    PO.replace("submitted", "in_review")
        .replace("within: 16h", "within: 8h")
}

async fn apply(cluster: &Cluster, source: &str) -> String {
    cluster
        .admin()
        .apply_definition(
            &request_id(),
            source,
            lockstep_client::Provenance::default(),
        )
        .await
        .unwrap()
        .version
}

fn request(from: &str, to: &str) -> pb::MigrateInstancesRequest {
    pb::MigrateInstancesRequest {
        request_id: request_id(),
        workflow: "purchase-order".into(),
        // Prefixes, as `lockstep apply` prints them.
        from_version: from[..12].into(),
        to_version: to[..12].into(),
        state_mapping: [("submitted".to_string(), "in_review".to_string())].into(),
        timer_policy: pb::TimerPolicy::KeepDeadline as i32,
        instances: Vec::new(),
        all: true,
        page_token: String::new(),
    }
}

/// The due time of the approval SLA's breach timer, found by its typed kind (the timer id
/// says the same).
fn breach_due(instance: &Instance) -> Timestamp {
    let timer = instance
        .timers
        .iter()
        .find(|t| matches!(&t.kind, TimerKind::SlaBreach { sla } if sla == "approval"))
        .unwrap_or_else(|| panic!("no breach timer: {:?}", instance.timers));
    assert!(timer.id.ends_with(":sla:approval:breach"), "{timer:?}");
    let warnings: Vec<u8> = instance
        .timers
        .iter()
        .filter_map(|t| match &t.kind {
            TimerKind::SlaWarning { sla, percent } if sla == "approval" => Some(*percent),
            _ => None,
        })
        .collect();
    assert!(
        warnings.iter().all(|p| [50, 75].contains(p)),
        "warning timers name their percent: {:?}",
        instance.timers
    );
    timer.due_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorised_actor_migrates_through_grpc_and_others_are_refused_and_logged() {
    let cluster = Cluster::start_secure(Settings::default(), Some(POLICY));
    cluster.leader().await;
    let v1 = apply(&cluster, PO).await;
    let on = |i: usize, identity: Identity| cluster.client_for(&[cluster.endpoint(i)], identity);
    let alice = who("alice", &["requester"]);
    let po = serde_json::json!({"amount": 500, "requester": "alice"});
    for key in ["PO-1", "PO-2"] {
        on(0, alice.clone())
            .create(&request_id(), "purchase-order", Some(key), &po)
            .await
            .unwrap();
    }
    on(0, alice.clone())
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "submit",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    let v2 = apply(&cluster, &po_v2()).await;
    assert_ne!(v1, v2);
    let auditor = who("ada", &["auditor"]);
    let before = on(0, auditor.clone())
        .get(
            by_key("purchase-order", "PO-1"),
            pb::ReadConsistency::Linearizable,
        )
        .await
        .unwrap()
        .instance;
    assert_eq!(
        before.definition_version, v1,
        "a running instance stays on its version"
    );

    // Without the permission (alice; and admin, whom this policy does not name): refused
    // before anything is proposed, and recorded in the security log of the node asked.
    for (i, identity) in [(1, alice.clone()), (2, who("admin", &["admin"]))] {
        match on(i, identity)
            .migrate(request(&v1, &v2))
            .await
            .unwrap_err()
        {
            Error::PermissionDenied(m) => assert!(m.contains("migrate_instances"), "{m}"),
            other => panic!("expected PERMISSION_DENIED, got {other}"),
        }
    }
    for (i, actor) in [(1, "alice"), (2, "admin")] {
        let log = on(i, auditor.clone())
            .security_log_of(0, 0, 0)
            .await
            .unwrap();
        assert!(
            log.events
                .iter()
                .any(|e| e.kind == RefusalKind::Authorization
                    && e.code == "PERMISSION_DENIED"
                    && e.actor.as_deref() == Some(actor)
                    && e.method == "/lockstep.v1.Instances/Migrate"
                    && e.reason.contains("migrate_instances")),
            "node {}: {:#?}",
            i + 1,
            log.events
        );
    }

    // With it: every instance at v1 moves to v2 in one batch, through a follower or the
    // leader alike.
    let rita = who("rita", &["release"]);
    let migrated = on(1, rita.clone())
        .migrate(request(&v1, &v2))
        .await
        .unwrap();
    assert_eq!(migrated.migrated, 2, "{migrated:?}");
    assert!(!migrated.more && migrated.next_page_token.is_none());
    assert_eq!(
        (migrated.from_version.as_str(), migrated.to_version.as_str()),
        (v1.as_str(), v2.as_str())
    );
    let mut moves: Vec<(String, String)> = migrated
        .instances
        .iter()
        .map(|m| (m.from_state.clone(), m.to_state.clone()))
        .collect();
    moves.sort();
    assert_eq!(
        moves,
        vec![
            ("draft".to_string(), "draft".to_string()),
            ("submitted".to_string(), "in_review".to_string())
        ]
    );
    let after = on(2, auditor.clone())
        .get(
            by_key("purchase-order", "PO-1"),
            pb::ReadConsistency::Linearizable,
        )
        .await
        .unwrap()
        .instance;
    assert_eq!(after.definition_version, v2);
    assert_eq!(after.state, "in_review");
    assert_eq!(after.version, before.version + 1);
    assert_eq!(
        breach_due(&after),
        breach_due(&before),
        "keep-deadline keeps the SLA breach where it was, whatever v2's budget"
    );
    let history = on(0, auditor.clone())
        .history(by_key("purchase-order", "PO-1"), 0)
        .await
        .unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.record.kind, AuditKind::Migration);
    assert_eq!(last.record.actor.id, "rita");
    assert_eq!(last.record.actor.authn, "jwt");
    assert_eq!(
        (last.record.from.as_deref(), last.record.to.as_deref()),
        (Some("submitted"), Some("in_review"))
    );
    assert_eq!(last.record.definition_version, v2);
    for needle in [v1.as_str(), "submitted -> in_review", "keep-deadline"] {
        assert!(
            last.record_json.contains(needle),
            "`{needle}` not in {}",
            last.record_json
        );
    }

    // A business refusal by an authorised actor changes nothing: PO-1 is not at v1 any more.
    let mut again = request(&v1, &v2);
    again.all = false;
    again.instances = vec![by_key("purchase-order", "PO-1")];
    let refused = on(0, rita).migrate(again).await.unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::WrongWorkflow),
        "{refused}"
    );

    // The replicas agree, and every node's audit chains verify with the same head.
    let digests = cluster.converged_digests().await;
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let mut heads = Vec::new();
    for i in 0..3 {
        let verified = on(i, auditor.clone()).verify_audit().await.unwrap();
        assert!(verified.ok(), "node {}: {verified:?}", i + 1);
        heads.push((verified.head_seq, verified.head_hash));
    }
    assert!(heads.iter().all(|h| *h == heads[0]), "{heads:?}");
}
