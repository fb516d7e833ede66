//! `Instances/Actions` and `Instances/Inbox` on a real 3-node cluster: what each actor may do
//! now, decided by the rules that enforce it — allowed transitions listed, a gate with the
//! time it opens, forbidden and system transitions absent — and the inbox paging through the
//! instances with something to do, in development and in secure mode.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, Settings, alice, bob};
use lockstep_client::{Action, Availability, Client, Identity, by_id, pb, request_id};
use lockstep_core::{ActorKind, RefusalCode, Timestamp};

const WORKFLOW: &str = "purchase-order";

fn po(requester: &str) -> serde_json::Value {
    serde_json::json!({"amount": 120, "requester": requester})
}

/// A purchase order by alice, submitted when `submit`; returns its id.
async fn order(alice: &Client, submit: bool) -> String {
    let created = alice
        .create(&request_id(), WORKFLOW, None, &po("alice"))
        .await
        .expect("alice creates a purchase order");
    if submit {
        alice
            .transition(
                &request_id(),
                by_id(&created.instance_id),
                "submit",
                &serde_json::json!({}),
                None,
            )
            .await
            .expect("alice submits it");
    }
    created.instance_id
}

async fn actions_of(client: &Client, id: &str) -> Vec<Action> {
    client
        .actions(by_id(id), pb::ReadConsistency::Linearizable)
        .await
        .expect("actions")
        .actions
}

fn names(actions: &[Action]) -> Vec<&str> {
    actions.iter().map(|a| a.transition.as_str()).collect()
}

/// Checks each actor's actions on a submitted order and on a draft.
async fn check_actions(alice: &Client, bob: &Client, mallory: &Client) {
    let submitted = order(alice, true).await;
    let draft = order(alice, false).await;

    // The approver: approve, ask and reject, all now.
    let approver = actions_of(bob, &submitted).await;
    assert_eq!(names(&approver), ["approve", "ask", "reject"]);
    assert!(approver.iter().all(|a| a.availability == Availability::Now));

    // The requester: only withdraw, gated for an hour after submitting.
    let read = alice
        .actions(by_id(&submitted), pb::ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(read.state, "submitted");
    assert_eq!(names(&read.actions), ["withdraw"]);
    let Availability::Gated { opens_at } = read.actions[0].availability else {
        panic!("withdraw is gated: {:?}", read.actions[0]);
    };
    let hour = Timestamp::from_millis(read.at.as_millis() + 3_600_000);
    assert!(
        opens_at > read.at && opens_at <= hour,
        "withdraw opens an hour after submit: at {} opens {opens_at}",
        read.at
    );

    // Nobody else; and the engine's transitions (escalate) are listed for no caller.
    assert_eq!(actions_of(mallory, &submitted).await, Vec::new());
    assert_eq!(names(&actions_of(alice, &draft).await), ["submit"]);
    assert_eq!(actions_of(bob, &draft).await, Vec::new());

    // What is listed is what the engine takes: bob approves, and then has nothing left.
    bob.transition(
        &request_id(),
        by_id(&submitted),
        "approve",
        &serde_json::json!({}),
        None,
    )
    .await
    .expect("an action listed now is taken");
    assert_eq!(actions_of(bob, &submitted).await, Vec::new());

    // Alice's inbox holds the draft (submit, now); bob's holds neither.
    let inbox = alice
        .inbox(&[WORKFLOW.to_string()], &[], 0, None)
        .await
        .unwrap();
    let ids: BTreeSet<&str> = inbox.items.iter().map(|i| i.instance_id.as_str()).collect();
    assert!(ids.contains(draft.as_str()), "{inbox:?}");
    assert!(!ids.contains(submitted.as_str()), "{inbox:?}");
    let bobs = bob
        .inbox(&[WORKFLOW.to_string()], &[], 0, None)
        .await
        .unwrap();
    assert!(
        bobs.items
            .iter()
            .all(|i| i.instance_id != draft && i.instance_id != submitted),
        "{bobs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_actor_sees_what_it_may_do_now_and_its_inbox_pages() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    let (alice, bob) = (cluster.client(alice()), cluster.client(bob()));
    let mallory = cluster.client(Identity::new("mallory", ActorKind::Human, &[]));
    check_actions(&alice, &bob, &mallory).await;

    // Paging: nine submitted orders in bob's inbox, three to a page, each once, and the last
    // full page ends the listing (no token for an empty page after it).
    let mut submitted = BTreeSet::new();
    for _ in 0..9 {
        submitted.insert(order(&alice, true).await);
    }
    let (mut seen, mut token, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = bob
            .inbox(
                &[WORKFLOW.to_string()],
                &["submitted".to_string()],
                3,
                token.as_deref(),
            )
            .await
            .unwrap();
        pages += 1;
        assert_eq!(page.items.len(), 3, "page {pages} is not full");
        assert!(
            !page.truncated,
            "nine instances are far below the scan limit"
        );
        for item in &page.items {
            assert_eq!(item.state, "submitted");
            assert_eq!(names(&item.actions), ["approve", "ask", "reject"]);
        }
        seen.extend(page.items.into_iter().map(|i| i.instance_id));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
        assert!(pages < 10, "the inbox pages end");
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no instance twice: {seen:?}");
    assert_eq!(unique, submitted);
    assert_eq!(pages, 3);

    // Bad requests say what to do, and a stale token is refused.
    let err = bob.inbox(&[], &[], 0, None).await.unwrap_err();
    assert!(err.to_string().contains("workflows is empty"), "{err}");
    let err = bob
        .inbox(&[WORKFLOW.to_string()], &[], 500, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("page_size 500 is more than 100"),
        "{err}"
    );
    let err = bob
        .inbox(&[WORKFLOW.to_string()], &[], 0, Some("not-a-token"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("page_token"), "{err}");
    // An unknown instance is not found; the refusal code is not an engine one.
    let err = bob
        .actions(by_id("i-999999"), pb::ReadConsistency::Linearizable)
        .await
        .unwrap_err();
    assert_ne!(err.refusal_code(), Some(RefusalCode::Forbidden), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_secure_mode_the_actor_is_the_authenticated_caller() {
    let cluster = Cluster::start_secure(Settings::default(), None);
    cluster.leader().await;
    cluster.define_po().await;
    let (alice, bob) = (cluster.client(alice()), cluster.client(bob()));
    let mallory = cluster.client(Identity::new("mallory", ActorKind::Human, &[]));
    tokio::time::timeout(
        Duration::from_secs(60),
        check_actions(&alice, &bob, &mallory),
    )
    .await
    .expect("the checks finish");
}

/// Only requesters and approvers may read purchase orders; other workflows stay open.
const READ_POLICY: &str = r#"
[read_instances.purchase-order]
roles = ["requester", "approver"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_rules_limit_who_reads_a_workflows_instances() {
    let cluster = Cluster::start_secure(Settings::default(), Some(READ_POLICY));
    cluster.leader().await;
    cluster.define_po().await;
    let (alice, bob) = (cluster.client(alice()), cluster.client(bob()));
    let mallory = cluster.client(Identity::new("mallory", ActorKind::Human, &["intern"]));
    let id = order(&alice, true).await;

    // Readers named by the rule read as before.
    let read = bob
        .get(by_id(&id), pb::ReadConsistency::Linearizable)
        .await
        .expect("an approver reads the order");
    assert_eq!(read.instance.state, "submitted");
    assert_eq!(
        names(&actions_of(&bob, &id).await),
        ["approve", "ask", "reject"]
    );

    // Anyone else is refused every read of the workflow, with who may read it.
    let denied = |e: lockstep_client::Error| {
        let text = e.to_string();
        assert!(
            text.contains("does not give actor `mallory` (roles: intern) the permission read_instances of workflow `purchase-order`")
                && text.contains("role requester or approver"),
            "{text}"
        );
    };
    denied(
        mallory
            .get(by_id(&id), pb::ReadConsistency::Linearizable)
            .await
            .unwrap_err(),
    );
    denied(
        mallory
            .list(pb::ListInstancesRequest {
                workflow: WORKFLOW.into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    denied(mallory.history(by_id(&id), 10).await.unwrap_err());
    denied(
        mallory
            .actions(by_id(&id), pb::ReadConsistency::Linearizable)
            .await
            .unwrap_err(),
    );
    denied(
        mallory
            .inbox(&[WORKFLOW.to_string()], &[], 0, None)
            .await
            .unwrap_err(),
    );

    // Each refused read is in the security log of the node that served it.
    let admin = cluster.admin();
    let mut refused = BTreeSet::new();
    for endpoint in 0..3 {
        let log = admin.security_log_of(endpoint, 0, 1000).await.unwrap();
        for event in log.events {
            if event.actor.as_deref() == Some("mallory") && event.code == "PERMISSION_DENIED" {
                assert!(
                    event
                        .reason
                        .contains("read_instances of workflow `purchase-order`")
                );
                refused.insert(event.method);
            }
        }
    }
    let want: BTreeSet<String> = ["Get", "List", "History", "Actions", "Inbox"]
        .iter()
        .map(|m| format!("/lockstep.v1.Instances/{m}"))
        .collect();
    assert_eq!(refused, want);
}
