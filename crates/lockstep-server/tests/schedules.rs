//! Schedules on a real 3-node cluster: ticks fire exactly once across a leader kill (no tick
//! twice, none lost), the overlap policy skips while the previous instance is open, pause
//! and resume, and every bad schedule is refused with what to write instead.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use lockstep_client::{Client, Error, pb, request_id};
use lockstep_core::{RefusalCode, Timestamp};

/// A workflow a schedule creates: open until closed.
const REVIEWS: &str = r#"
workflow: reviews
data: { type: object }
states:
  open: { initial: true }
  done: { terminal: true }
transitions:
  close: { from: open, to: done, allow: "true" }
calendars:
  weekdays:
    timezone: Europe/Berlin
    weekly: { "mon-fri": "09:00-17:00" }
"#;

fn every_second(name: &str) -> pb::CreateScheduleRequest {
    pb::CreateScheduleRequest {
        request_id: request_id(),
        name: name.into(),
        cron: "* * * * * *".into(),
        time_zone: "Europe/Berlin".into(),
        workflow: "reviews".into(),
        data_json: r#"{"tick": "{tick_utc}", "schedule": "{schedule}"}"#.into(),
        overlap: "allow".into(),
        catch_up: "all".into(),
        catch_up_max: 100,
        catch_up_window_ms: 60_000,
        ..Default::default()
    }
}

/// Applies [`REVIEWS`] and waits until the cluster's log format takes schedules (the
/// cluster-version gate raises it shortly after start).
async fn setup(cluster: &Cluster) -> Client {
    let admin = cluster.admin();
    admin
        .apply_definition(
            &request_id(),
            REVIEWS,
            lockstep_client::Provenance::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        match admin.schedules().await {
            Ok(_) => {
                // Reads work at any format; a write tells whether the gate is raised.
                let probe = admin.pause_schedule(&request_id(), "probe", "").await;
                match probe {
                    Err(e) if e.refusal_code() == Some(RefusalCode::UnknownSchedule) => {
                        return admin;
                    }
                    Err(e) => assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "schedules were not accepted within 30 s: {e}"
                    ),
                    Ok(s) => panic!("no schedule `probe` was created, yet it answered {s:?}"),
                }
            }
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "schedules were not readable within 30 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every instance of `reviews`, through all pages.
async fn reviews(client: &Client) -> Vec<lockstep_client::Instance> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListInstancesRequest {
                workflow: "reviews".into(),
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        all.extend(page.instances);
        match page.next_page_token {
            Some(next) => token = next,
            None => return all,
        }
    }
}

async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tick_creates_one_instance_across_a_leader_kill() {
    let mut cluster = Cluster::start(Settings::default());
    let admin = setup(&cluster).await;
    let created = admin.create_schedule(every_second("pulse")).await.unwrap();
    assert_eq!(created.workflow, "reviews");
    assert!(created.next.is_some(), "{created:?}");
    assert!(
        created.description.contains("second"),
        "{}",
        created.description
    );

    until("three ticks fired", Duration::from_secs(15), async || {
        admin.schedule("pulse").await.unwrap().fired >= 3
    })
    .await;
    // The leader dies between ticks or in the middle of one; the next leader goes on from
    // the replicated next tick.
    let leader = cluster.leader().await;
    cluster.kill9(leader);
    let survivors: Vec<String> = cluster
        .running()
        .into_iter()
        .map(|i| cluster.endpoint(i))
        .collect();
    let admin = cluster.client_for(&survivors, admin_identity());
    let before = admin.schedule("pulse").await.unwrap().fired;
    until(
        "three more ticks after the kill",
        Duration::from_secs(30),
        async || admin.schedule("pulse").await.unwrap().fired >= before + 3,
    )
    .await;
    let paused = admin
        .pause_schedule(&request_id(), "pulse", "test over")
        .await
        .unwrap();
    assert!(paused.paused);
    assert_eq!(paused.paused_reason, "test over");

    // One instance per fired tick, each tick once, and no tick lost between the first and the
    // last (the failover took less than the catch-up window, so every tick fired on time or
    // was caught up).
    let s = admin.schedule("pulse").await.unwrap();
    let instances = reviews(&admin).await;
    assert_eq!(instances.len() as u64, s.fired, "{s:?}");
    assert_eq!(s.refused, 0, "{s:?}");
    assert_eq!(s.skipped, 0, "{s:?}");
    let ticks: BTreeSet<i64> = instances
        .iter()
        .map(|i| {
            assert_eq!(i.created_by, "system:schedule");
            assert_eq!(i.data["schedule"], "pulse");
            Timestamp::parse_rfc3339(i.data["tick"].as_str().unwrap())
                .unwrap()
                .as_micros()
        })
        .collect();
    assert_eq!(ticks.len(), instances.len(), "a tick created two instances");
    let (first, last) = (ticks.first().unwrap(), ticks.last().unwrap());
    assert_eq!(
        (last - first) / 1_000_000 + 1,
        ticks.len() as i64,
        "a tick between the first and the last was lost: {ticks:?}"
    );
    // The created record says which schedule and tick.
    let history = admin
        .history(lockstep_client::by_id(&instances[0].id), 10)
        .await
        .unwrap();
    let note = history[0].record.note.clone().unwrap_or_default();
    assert!(note.contains("created by schedule pulse"), "{note}");

    // Paused: nothing more fires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(admin.schedule("pulse").await.unwrap().fired, s.fired);
    assert_eq!(reviews(&admin).await.len(), instances.len());

    cluster.restart(leader);
    cluster.converged_digests().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_pause_resume_delete_and_bad_schedules() {
    let cluster = Cluster::start(Settings::default());
    let admin = setup(&cluster).await;

    // Overlap `skip`: while the first tick's instance is open, later ticks are skipped.
    let one = pb::CreateScheduleRequest {
        overlap: "skip".into(),
        key: "once-{date}-{time}".into(),
        ..every_second("one-at-a-time")
    };
    admin.create_schedule(one).await.unwrap();
    until(
        "a tick skipped for overlap",
        Duration::from_secs(15),
        async || {
            let s = admin.schedule("one-at-a-time").await.unwrap();
            s.fired == 1 && s.skipped >= 2
        },
    )
    .await;
    let s = admin.schedule("one-at-a-time").await.unwrap();
    assert_eq!(s.last_outcome, "skipped");
    assert!(s.last_detail.contains("still open"), "{}", s.last_detail);
    let open = reviews(&admin).await;
    assert_eq!(open.len(), 1);
    assert!(
        open[0].key.as_deref().unwrap().starts_with("once-"),
        "{:?}",
        open[0].key
    );
    // Closing it lets the next tick fire.
    admin
        .transition(
            &request_id(),
            lockstep_client::by_id(&open[0].id),
            "close",
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
    until("the next tick fired", Duration::from_secs(15), async || {
        admin.schedule("one-at-a-time").await.unwrap().fired == 2
    })
    .await;

    // Pause, then resume: ticks that fell while paused are not caught up.
    let paused = admin
        .pause_schedule(&request_id(), "one-at-a-time", "")
        .await
        .unwrap();
    assert!(paused.paused_reason.contains("paused by"), "{paused:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resumed = admin
        .resume_schedule(&request_id(), "one-at-a-time")
        .await
        .unwrap();
    assert!(!resumed.paused);
    let next = Timestamp::parse_rfc3339(&resumed.next.unwrap().at).unwrap();
    let paused_at = Timestamp::parse_rfc3339(&paused.paused_at).unwrap();
    assert!(
        next.as_micros() > paused_at.as_micros() + 2_000_000,
        "the next tick after a resume is after the pause"
    );

    // A tick whose create the engine refuses (the key an earlier tick took) is spent,
    // counted, and audited as a `schedule_changed` record naming the refusal.
    admin
        .create_schedule(pb::CreateScheduleRequest {
            key: "always-the-same".into(),
            ..every_second("same-key")
        })
        .await
        .unwrap();
    until("a tick refused", Duration::from_secs(15), async || {
        admin.schedule("same-key").await.unwrap().refused >= 1
    })
    .await;
    let s = admin
        .pause_schedule(&request_id(), "same-key", "")
        .await
        .unwrap();
    assert!(s.fired >= 1, "{s:?}");
    let mut stream = admin.tail(1, false).await.unwrap();
    let mut feed = Vec::new();
    while let Some(r) = stream.next().await.unwrap() {
        feed.push(r);
    }
    let refused = feed
        .iter()
        .find(|r| r.record.transition.as_deref() == Some("refused"))
        .expect("a schedule_changed record of the refused tick");
    let note = refused.record.note.clone().unwrap_or_default();
    assert!(
        note.contains("schedule same-key") && note.contains("ALREADY_EXISTS"),
        "{note}"
    );
    admin
        .delete_schedule(&request_id(), "same-key")
        .await
        .unwrap();

    // Delete: gone, and named as unknown afterwards.
    let deleted = admin
        .delete_schedule(&request_id(), "one-at-a-time")
        .await
        .unwrap();
    assert_eq!(deleted.name, "one-at-a-time");
    let gone = admin.schedule("one-at-a-time").await.unwrap_err();
    assert_eq!(
        gone.refusal_code(),
        Some(RefusalCode::UnknownSchedule),
        "{gone}"
    );

    // Bad schedules are refused with what to write, and create nothing.
    let bad = |change: fn(&mut pb::CreateScheduleRequest)| {
        let mut r = every_second("bad");
        change(&mut r);
        r
    };
    let cases: Vec<(pb::CreateScheduleRequest, &str)> = vec![
        (bad(|r| r.cron = "61 * * * *".into()), "five fields"),
        (
            bad(|r| r.time_zone = "Mars/Olympus".into()),
            "IANA time zone",
        ),
        (
            bad(|r| r.key = "review-{yr}".into()),
            "`{yr}` is not a placeholder",
        ),
        (bad(|r| r.data_json = "[1]".into()), "must be a JSON object"),
        (bad(|r| r.overlap = "sometimes".into()), "not a policy"),
        (bad(|r| r.catch_up_max = 1000), "catch_up_max"),
        (bad(|r| r.name = "Bad Name".into()), "a-z"),
        (
            bad(|r| r.calendar = "holidays".into()),
            "declares no calendar `holidays`",
        ),
    ];
    for (request, says) in cases {
        let e = admin.create_schedule(request).await.unwrap_err();
        assert!(e.to_string().contains(says), "expected `{says}` in: {e}");
    }
    let e = admin
        .create_schedule(bad(|r| r.workflow = "nope".into()))
        .await
        .unwrap_err();
    assert_eq!(e.refusal_code(), Some(RefusalCode::UnknownWorkflow), "{e}");
    // A calendar the workflow declares is accepted; ticks on its closed days are skipped.
    let weekly = admin
        .create_schedule(pb::CreateScheduleRequest {
            cron: "0 9 * * *".into(),
            calendar: "weekdays".into(),
            ..every_second("weekday-mornings")
        })
        .await
        .unwrap();
    let next = Timestamp::parse_rfc3339(&weekly.next.unwrap().at).unwrap();
    let local = next
        .to_jiff()
        .to_zoned_datetime(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    assert!(local.weekday().to_monday_one_offset() <= 5, "{local}");
    assert_eq!((local.hour(), local.minute()), (9, 0), "{local}");
    let dup = admin
        .create_schedule(every_second("weekday-mornings"))
        .await
        .unwrap_err();
    assert_eq!(
        dup.refusal_code(),
        Some(RefusalCode::AlreadyExists),
        "{dup}"
    );
    assert!(matches!(
        admin.schedule("bad").await.unwrap_err(),
        Error::Refused(_)
    ));
    let names: Vec<String> = admin
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["weekday-mornings"]);
    cluster.converged_digests().await;
}
