//! Indexed search on a real 3-node cluster: data fields a definition declares under `index:`
//! are filtered on (equality, ranges, prefixes, with state filters and pages) with the same
//! answer as a scan would give, kept current when data changes, refused with a hint when not
//! indexed, and a version that drops an index is named as not covered.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use lockstep_client::{Client, Error, pb, request_id};

const ORDERS: &str = r#"
workflow: orders
data:
  type: object
  properties:
    customer_id: { type: string }
    amount: { type: number }
    note: { type: string }
index: { customer_id: string, amount: number }
states:
  open: { initial: true }
  done: { terminal: true }
transitions:
  close: { from: open, to: done, allow: "true" }
"#;

async fn apply(client: &Client, source: &str) -> String {
    client
        .apply_definition(
            &request_id(),
            source,
            lockstep_client::Provenance::default(),
        )
        .await
        .unwrap()
        .version
}

/// Applies [`ORDERS`] once the cluster's log format takes `index:` (it is refused before).
async fn setup(cluster: &Cluster) -> Client {
    let admin = cluster.admin();
    let started = Instant::now();
    loop {
        match admin
            .apply_definition(
                &request_id(),
                ORDERS,
                lockstep_client::Provenance::default(),
            )
            .await
        {
            Ok(_) => return admin,
            Err(e) => {
                assert!(e.to_string().contains("log format 11"), "{e}");
                assert!(started.elapsed() < Duration::from_secs(30), "{e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn filter(field: &str, op: &str, value: &str) -> pb::DataFilter {
    pb::DataFilter {
        field: field.into(),
        op: op.into(),
        value_json: value.into(),
    }
}

/// Every instance the filters select, through all pages of `page_size`; with the
/// uncovered versions of the last page.
async fn select(
    client: &Client,
    filters: &[pb::DataFilter],
    state: &str,
    page_size: u32,
) -> Result<(Vec<String>, Vec<String>), Error> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListInstancesRequest {
                workflow: "orders".into(),
                state: state.into(),
                page_size,
                page_token: token.clone(),
                r#where: filters.to_vec(),
                ..Default::default()
            })
            .await?;
        assert!(page.instances.len() <= page_size as usize);
        ids.extend(page.instances.into_iter().map(|i| i.id));
        match page.next_page_token {
            Some(next) => token = next,
            None => return Ok((ids, page.uncovered_versions)),
        }
    }
}

fn sorted(ids: Vec<String>) -> BTreeSet<String> {
    let n = ids.len();
    let set: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(set.len(), n, "an instance was listed twice");
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_filters_answer_from_the_index_as_a_scan_would() {
    let cluster = Cluster::start(Settings::default());
    let admin = setup(&cluster).await;
    // 60 orders of 5 customers, amounts 0..29,500; every fourth one closed.
    let mut orders = Vec::new();
    for n in 0..60u32 {
        let data = serde_json::json!({
            "customer_id": format!("C-{}", n % 5),
            "amount": f64::from(n) * 500.0,
            "note": "n",
        });
        let id = admin
            .create(&request_id(), "orders", None, &data)
            .await
            .unwrap()
            .instance_id;
        let closed = n % 4 == 0;
        if closed {
            admin
                .transition(
                    &request_id(),
                    lockstep_client::by_id(&id),
                    "close",
                    &serde_json::json!({}),
                    None,
                )
                .await
                .unwrap();
        }
        orders.push((id, n % 5, f64::from(n) * 500.0, closed));
    }
    let expect = |pick: &dyn Fn(u32, f64, bool) -> bool| -> BTreeSet<String> {
        orders
            .iter()
            .filter(|(_, c, a, closed)| pick(*c, *a, *closed))
            .map(|(id, ..)| id.clone())
            .collect()
    };

    let (c1, uncovered) = select(&admin, &[filter("customer_id", "eq", "\"C-1\"")], "", 100)
        .await
        .unwrap();
    assert!(uncovered.is_empty(), "{uncovered:?}");
    assert_eq!(sorted(c1), expect(&|c, _, _| c == 1));
    // A range and an equality, with a state filter, in pages of 3.
    let (big_open, _) = select(
        &admin,
        &[
            filter("amount", ">=", "10000"),
            filter("customer_id", "=", "C-2"),
        ],
        "open",
        3,
    )
    .await
    .unwrap();
    assert_eq!(
        sorted(big_open),
        expect(&|c, a, closed| c == 2 && a >= 10_000.0 && !closed)
    );
    let (small, _) = select(&admin, &[filter("amount", "lt", "2000")], "", 100)
        .await
        .unwrap();
    assert_eq!(sorted(small), expect(&|_, a, _| a < 2000.0));
    // A prefix, walked in pages of 7: every order once.
    let (all, _) = select(&admin, &[filter("customer_id", "prefix", "C-")], "", 7)
        .await
        .unwrap();
    assert_eq!(sorted(all).len(), 60);
    let (none, _) = select(&admin, &[filter("amount", "<", "-1")], "", 10)
        .await
        .unwrap();
    assert!(none.is_empty());

    // Data that changes moves the instance in the index.
    let (id, ..) = orders
        .iter()
        .find(|(_, _, a, closed)| *a >= 20_000.0 && !closed)
        .unwrap();
    admin
        .transition(
            &request_id(),
            lockstep_client::by_id(id),
            "close",
            &serde_json::json!({"data": {"amount": 7.5}}),
            None,
        )
        .await
        .unwrap();
    let (moved, _) = select(&admin, &[filter("amount", "=", "7.5")], "", 10)
        .await
        .unwrap();
    assert_eq!(moved, std::slice::from_ref(id));
    let (big, _) = select(&admin, &[filter("amount", ">=", "20000")], "", 100)
        .await
        .unwrap();
    assert!(!big.contains(id));

    // Not indexed, or the wrong type: refused, saying what to write.
    let e = select(&admin, &[filter("note", "=", "n")], "", 10)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("declare it under `index:`"), "{e}");
    assert!(e.to_string().contains("amount (number)"), "{e}");
    let e = select(&admin, &[filter("amount", "=", "lots")], "", 10)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("indexed as a number"), "{e}");
    let e = select(&admin, &[filter("amount", "~", "1")], "", 10)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("prefix"), "{e}");

    // A new version drops `amount` from the index: its instances are not covered by an
    // amount filter (and the answer says so), but are by a customer filter.
    let v2 = apply(
        &admin,
        &ORDERS.replace(
            "index: { customer_id: string, amount: number }",
            "index: { customer_id: string }",
        ),
    )
    .await;
    let newer = admin
        .create(
            &request_id(),
            "orders",
            None,
            &serde_json::json!({"customer_id": "C-9", "amount": 99_999}),
        )
        .await
        .unwrap()
        .instance_id;
    let (big, uncovered) = select(&admin, &[filter("amount", ">=", "90000")], "", 10)
        .await
        .unwrap();
    assert!(big.is_empty(), "{big:?}");
    assert_eq!(uncovered, std::slice::from_ref(&v2));
    let (c9, uncovered) = select(&admin, &[filter("customer_id", "=", "C-9")], "", 10)
        .await
        .unwrap();
    assert_eq!(c9, [newer]);
    assert!(uncovered.is_empty(), "{uncovered:?}");
    cluster.converged_digests().await;
}
