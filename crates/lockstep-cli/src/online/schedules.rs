//! `lockstep schedules`: recurring instance creation (create, list, get, pause, resume, delete).

use lockstep_core::Timestamp;
use lockstep_core::duration::Duration;

use super::*;

/// What `schedules create` asks for.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub name: String,
    pub workflow: String,
    pub cron: String,
    pub time_zone: String,
    pub calendar: Option<String>,
    pub data: String,
    pub key: Option<String>,
    pub overlap: String,
    pub catch_up: String,
    pub catch_up_max: u32,
    pub catch_up_window: String,
}

/// How soon a tick comes, for people: `in 16h`, or `now (overdue)`.
fn soon(at: &str, now: Timestamp) -> String {
    Timestamp::parse_rfc3339(at)
        .map(|t| super::forecast::in_people(now, t))
        .unwrap_or_default()
}

fn state(s: &pb::Schedule) -> &'static str {
    if s.paused {
        "paused"
    } else if s.next.is_none() {
        "ended"
    } else {
        "active"
    }
}

fn schedule_json(s: &pb::Schedule) -> serde_json::Value {
    let tick = |t: &Option<pb::ScheduleTick>| {
        t.as_ref()
            .map(|t| serde_json::json!({"at": t.at, "local": t.local}))
    };
    serde_json::json!({
        "name": s.name,
        "state": state(s),
        "cron": s.cron,
        "description": s.description,
        "time_zone": s.time_zone,
        "calendar": (!s.calendar.is_empty()).then_some(&s.calendar),
        "workflow": s.workflow,
        "data": serde_json::from_str::<serde_json::Value>(&s.data_json).unwrap_or_default(),
        "key": (!s.key.is_empty()).then_some(&s.key),
        "overlap": s.overlap,
        "catch_up": s.catch_up,
        "catch_up_max": s.catch_up_max,
        "catch_up_window_ms": s.catch_up_window_ms,
        "next": tick(&s.next),
        "last": tick(&s.last),
        "last_acted_at": s.last_acted_at,
        "last_outcome": s.last_outcome,
        "last_detail": s.last_detail,
        "fired": s.fired,
        "skipped": s.skipped,
        "refused": s.refused,
        "paused": s.paused,
        "paused_by": s.paused_by,
        "paused_reason": s.paused_reason,
        "paused_at": s.paused_at,
        "created_by": s.created_by,
        "created_at": s.created_at,
    })
}

fn last_text(s: &pb::Schedule) -> String {
    match &s.last {
        None => "no tick yet".into(),
        Some(t) => format!("{} {}: {}", t.local, s.last_outcome, s.last_detail),
    }
}

fn print_one(output: Output, s: &pb::Schedule) {
    match output {
        Output::Json => println!("{}", schedule_json(s)),
        Output::Table => {
            let now = Timestamp::from_jiff(jiff::Timestamp::now());
            println!("{}  {}  creates {}", s.name, state(s), s.workflow);
            println!(
                "  cron:     {} in {} ({})",
                s.cron, s.time_zone, s.description
            );
            if !s.calendar.is_empty() {
                println!("  calendar: {} (closed days skipped)", s.calendar);
            }
            match &s.next {
                Some(t) => println!(
                    "  next:     {} {} ({})",
                    t.local,
                    s.time_zone,
                    soon(&t.at, now)
                ),
                None => println!("  next:     none (the expression matches no later time)"),
            }
            println!("  last:     {}", last_text(s));
            println!(
                "  ticks:    {} fired, {} skipped, {} refused",
                s.fired, s.skipped, s.refused
            );
            println!("  data:     {}", s.data_json);
            if !s.key.is_empty() {
                println!("  key:      {}", s.key);
            }
            println!(
                "  policies: overlap {}, catch-up {} (max {}, window {})",
                s.overlap,
                s.catch_up,
                s.catch_up_max,
                Duration::from_ms(s.catch_up_window_ms)
            );
            if s.paused {
                println!(
                    "  paused:   {} by {}: {}",
                    s.paused_at, s.paused_by, s.paused_reason
                );
            }
            println!("  created:  {} by {}", s.created_at, s.created_by);
        }
    }
}

pub async fn schedule_create(
    conn: &Connection,
    output: Output,
    new: NewSchedule,
) -> anyhow::Result<()> {
    let window = Duration::parse(&new.catch_up_window)
        .map_err(|e| anyhow::anyhow!("--catch-up-window: {e}"))?;
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&new.data) {
        anyhow::bail!(
            "--data is not JSON ({e}); write an object, e.g. '{{\"period\": \"{{year}}-Q{{quarter}}\"}}'"
        );
    }
    let request = pb::CreateScheduleRequest {
        request_id: conn.request_id(),
        name: new.name,
        cron: new.cron,
        time_zone: new.time_zone,
        calendar: new.calendar.unwrap_or_default(),
        workflow: new.workflow,
        data_json: new.data,
        key: new.key.unwrap_or_default(),
        overlap: new.overlap,
        catch_up: new.catch_up,
        catch_up_max: new.catch_up_max,
        catch_up_window_ms: window.as_ms(),
    };
    let s = conn.client()?.create_schedule(request).await?;
    print_one(output, &s);
    Ok(())
}

pub async fn schedule_list(conn: &Connection, output: Output) -> anyhow::Result<()> {
    let all = conn.client()?.schedules().await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::Value::Array(all.iter().map(schedule_json).collect())
        ),
        Output::Table => {
            if all.is_empty() {
                println!(
                    "no schedules; create one with `lockstep schedules create NAME --workflow W --cron '0 9 * * MON'`"
                );
                return Ok(());
            }
            let now = Timestamp::from_jiff(jiff::Timestamp::now());
            println!(
                "{:<20} {:<7} {:<22} {:<30} {:<20} LAST",
                "NAME", "STATE", "CRON", "NEXT (LOCAL)", "WORKFLOW"
            );
            for s in &all {
                let next = s.next.as_ref().map_or_else(
                    || "-".to_string(),
                    |t| format!("{} ({})", t.local.replace('T', " "), soon(&t.at, now)),
                );
                println!(
                    "{:<20} {:<7} {:<22} {:<30} {:<20} {}",
                    s.name,
                    state(s),
                    format!("{} {}", s.cron, s.time_zone),
                    next,
                    s.workflow,
                    last_text(s)
                );
            }
        }
    }
    Ok(())
}

pub async fn schedule_get(conn: &Connection, output: Output, name: &str) -> anyhow::Result<()> {
    let s = conn.client()?.schedule(name).await?;
    print_one(output, &s);
    Ok(())
}

pub async fn schedule_pause(
    conn: &Connection,
    output: Output,
    name: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let s = conn
        .client()?
        .pause_schedule(&conn.request_id(), name, reason)
        .await?;
    print_one(output, &s);
    Ok(())
}

pub async fn schedule_resume(conn: &Connection, output: Output, name: &str) -> anyhow::Result<()> {
    let s = conn
        .client()?
        .resume_schedule(&conn.request_id(), name)
        .await?;
    print_one(output, &s);
    Ok(())
}

pub async fn schedule_delete(conn: &Connection, output: Output, name: &str) -> anyhow::Result<()> {
    let s = conn
        .client()?
        .delete_schedule(&conn.request_id(), name)
        .await?;
    match output {
        Output::Json => println!("{}", schedule_json(&s)),
        Output::Table => println!(
            "deleted {} ({} ticks fired; the instances it created stay)",
            s.name, s.fired
        ),
    }
    Ok(())
}
