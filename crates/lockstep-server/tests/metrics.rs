//! `GET /metrics` on a real `lockstepd`: gRPC calls by method and status, Raft state, apply
//! batches, RocksDB sizes and timer lateness, read over a plain HTTP socket.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, PO, Settings, alice};
use lockstep_client::{Error, by_id, by_key, pb, request_id};
use lockstep_core::RefusalCode;

/// `lit` expires after one second, so the leader's timer service fires it.
const BLINK: &str = r#"
workflow: blink
data: { type: object }
states:
  lit: { initial: true, expires: { after: 1s, transition: fade } }
  dark: { terminal: true }
transitions:
  fade: { from: lit, to: dark, system: true }
"#;

/// One sample of the exposition: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (the subset lockstepd writes: label values without
/// commas, quotes or escapes).
fn parse(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in `{line}`"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in `{line}`")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in `{line}`"));
                    let labels = inner
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair
                                .split_once('=')
                                .unwrap_or_else(|| panic!("bad label `{pair}` in `{line}`"));
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match found.as_slice() {
        [one] => one.value,
        [] => panic!(
            "no sample {name}{labels:?}; the {name} samples are {:?}",
            samples
                .iter()
                .filter(|s| s.name == name)
                .collect::<Vec<_>>()
        ),
        many => panic!("{} samples match {name}{labels:?}: {many:?}", many.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_prometheus_metrics() {
    // Webhooks to a loopback port nothing listens on: their metrics have series to show.
    let settings = tempfile::tempdir().unwrap();
    let webhooks = settings.path().join("webhooks.toml");
    std::fs::write(
        &webhooks,
        "allow = [\"127.0.0.1/32\"]\ntimeout = \"1s\"\nattempts = 1000\nbackoff_max = \"200ms\"\n[secrets]\nm = \"metrics-secret-of-enough-bytes\"\n",
    )
    .unwrap();
    let cluster = Cluster::start(Settings {
        nodes: 1,
        node_args: vec!["--webhooks".into(), webhooks.display().to_string()],
        ..Settings::default()
    });
    cluster.leader().await;
    let dead = format!(
        "http://127.0.0.1:{}/hook",
        lockstep_client::loopback::free_port().unwrap()
    );
    let subscribed = Instant::now();
    while let Err(e) = cluster
        .admin()
        .create_subscription(&request_id(), "m", &dead, "m", Default::default(), None)
        .await
    {
        assert!(
            e.to_string().contains("log format") && subscribed.elapsed() < Duration::from_secs(30),
            "{e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Two definitions applied (OK), an instance created and submitted (OK), a forbidden
    // approval (a refusal: PERMISSION_DENIED), a missing instance (NOT_FOUND), and a timer.
    let admin = cluster.admin();
    for source in [PO, BLINK] {
        admin
            .apply_definition(
                &request_id(),
                source,
                lockstep_client::Provenance::default(),
            )
            .await
            .unwrap();
    }
    let alice = cluster.client(alice());
    let po = alice
        .create(
            &request_id(),
            "purchase-order",
            Some("PO-1"),
            &serde_json::json!({"amount": 500, "requester": "alice"}),
        )
        .await
        .unwrap();
    alice
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "submit",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    let refused = alice
        .transition(
            &request_id(),
            by_id(&po.instance_id),
            "approve",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.refusal_code(), Some(RefusalCode::Forbidden));
    let missing = alice
        .get(by_id("no-such-instance"), pb::ReadConsistency::Linearizable)
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound(_)), "{missing}");
    let blink = alice
        .create(&request_id(), "blink", None, &serde_json::json!({}))
        .await
        .unwrap()
        .instance_id;
    let mut faded = false;
    for _ in 0..300 {
        let instance = alice
            .get(by_id(&blink), pb::ReadConsistency::Linearizable)
            .await
            .unwrap()
            .instance;
        if instance.state == "dark" {
            faded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(faded, "the blink timer did not fire within 30 s");

    // The subscription's first attempts failed by now (connection refused at once).
    let (head, body) = loop {
        let (head, body) = cluster.scrape(0).await;
        if body.contains("lockstep_webhook_deliveries_total{")
            || subscribed.elapsed() > Duration::from_secs(30)
        {
            break (head, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("lockstep_webhook_deliveries_total{subscription=\"m\",outcome=\"failed\"}"),
        "{body}"
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("# TYPE lockstep_grpc_requests_total counter"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE lockstep_grpc_request_duration_seconds histogram"),
        "{body}"
    );
    let s = parse(&body);

    // gRPC calls, by full method path and status code, from the one layer around the server.
    let apply = "/lockstep.v1.Definitions/Apply";
    let transition = "/lockstep.v1.Instances/Transition";
    let get = "/lockstep.v1.Instances/Get";
    let requests = "lockstep_grpc_requests_total";
    assert_eq!(value(&s, requests, &[("rpc", apply), ("code", "OK")]), 2.0);
    assert!(
        value(
            &s,
            requests,
            &[("rpc", "/lockstep.v1.Instances/Create"), ("code", "OK")]
        ) >= 2.0
    );
    assert_eq!(
        value(&s, requests, &[("rpc", transition), ("code", "OK")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            requests,
            &[("rpc", transition), ("code", "PERMISSION_DENIED")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, requests, &[("rpc", get), ("code", "NOT_FOUND")]),
        1.0
    );
    assert!(value(&s, requests, &[("rpc", get), ("code", "OK")]) >= 1.0);
    let duration = "lockstep_grpc_request_duration_seconds";
    assert_eq!(
        value(&s, &format!("{duration}_count"), &[("rpc", apply)]),
        2.0
    );
    let sum = value(&s, &format!("{duration}_sum"), &[("rpc", apply)]);
    assert!(sum > 0.0 && sum < 60.0, "{sum}");
    assert_eq!(
        value(
            &s,
            &format!("{duration}_bucket"),
            &[("rpc", apply), ("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(value(&s, "lockstep_grpc_requests_in_flight", &[]), 0.0);

    // Raft, read at scrape time: a single node leads its own cluster.
    assert!(value(&s, "lockstep_raft_term", &[]) >= 1.0);
    assert_eq!(value(&s, "lockstep_raft_leader_id", &[]), 1.0);
    assert_eq!(value(&s, "lockstep_raft_is_leader", &[]), 1.0);
    let applied = value(&s, "lockstep_raft_applied_index", &[]);
    let committed = value(&s, "lockstep_raft_committed_index", &[]);
    let last_log = value(&s, "lockstep_raft_last_log_index", &[]);
    // Two definitions, two creates, a submit, a timer fire: at least six entries.
    assert!(applied >= 6.0, "applied index {applied}");
    assert!(
        committed >= applied && last_log >= committed,
        "{applied} {committed} {last_log}"
    );

    // Every entry since start went through an apply call (index 0 included).
    let batches = value(&s, "lockstep_raft_apply_batch_entries_count", &[]);
    let entries = value(&s, "lockstep_raft_apply_batch_entries_sum", &[]);
    assert!(
        batches >= 1.0 && entries >= applied + 1.0,
        "{batches} {entries} {applied}"
    );

    // RocksDB's estimates per column family: the writes are still in the memtables.
    for (family, keys_at_least) in [("definitions", 2.0), ("instances", 2.0), ("raft_log", 6.0)] {
        let keys = value(&s, "lockstep_store_keys_estimate", &[("family", family)]);
        assert!(keys >= keys_at_least, "{family}: {keys} keys");
        assert!(value(&s, "lockstep_store_memtables_bytes", &[("family", family)]) > 0.0);
        for name in [
            "lockstep_store_sst_files_bytes",
            "lockstep_store_live_data_bytes",
        ] {
            assert!(
                value(&s, name, &[("family", family)]) >= 0.0,
                "{name} {family}"
            );
        }
    }

    // The blink timer fired, late by less than the time this test waited for it.
    assert!(value(&s, "lockstep_timers_fired_total", &[]) >= 1.0);
    let late_count = value(&s, "lockstep_timer_lateness_seconds_count", &[]);
    let late_sum = value(&s, "lockstep_timer_lateness_seconds_sum", &[]);
    assert!(late_count >= 1.0, "{late_count}");
    assert!((0.0..30.0).contains(&late_sum), "{late_sum}");
    assert!(value(&s, "lockstep_timers_due", &[]) <= 256.0);

    // Every query of the Grafana dashboard in deploy/ names a metric this node exports.
    dashboard_names_exported_metrics(&body);
}

/// Checks deploy/grafana/lockstep-dashboard.json against an exposition: each `lockstep_*`
/// name in a panel query is a declared family or one of its samples (`_bucket`, `_sum`,
/// `_count` of a histogram), and every panel has a title and a query.
fn dashboard_names_exported_metrics(body: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/lockstep-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .expect("the dashboard is JSON");
    let mut exported = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split(' ').next().unwrap().to_string();
            for suffix in ["", "_bucket", "_sum", "_count"] {
                exported.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            exported.insert(line.split(['{', ' ']).next().unwrap().to_string());
        }
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 10,
        "the dashboard has {} panels",
        panels.len()
    );
    let mut used = std::collections::BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel `{title}` has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("lockstep_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                assert!(
                    exported.contains(&name),
                    "panel `{title}` queries {name}, which the node does not export"
                );
                used.insert(name.clone());
                rest = &rest[at + name.len()..];
            }
        }
    }
    assert!(
        used.len() >= 15,
        "the dashboard uses only {} metrics",
        used.len()
    );
}

#[test]
fn metrics_on_the_grpc_port_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(["--id", "1", "--listen", "127.0.0.1:7199"])
        .args(["--metrics-listen", "127.0.0.1:7199", "--dev"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-listen (127.0.0.1:7199) is the gRPC --listen address"),
        "{stderr}"
    );
}
