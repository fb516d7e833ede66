//! `lockstep sla forecast WORKFLOW --until TIME`: the SLA warnings and breaches that will
//! happen before TIME if nothing moves, read from the instances' armed SLA timers (their due
//! times are already in each SLA's business calendar and time zone).

use lockstep_client::model::TimerKind;

use super::*;

/// Most instances one forecast reads, so a forecast over a huge workflow stays bounded; the
/// output says when it stopped there.
pub const FORECAST_SCAN_MAX: usize = 100_000;
/// Instances asked for per listing page.
const FORECAST_PAGE: u32 = 500;

/// One SLA event that will happen before the horizon.
struct Due {
    instance_id: String,
    key: Option<String>,
    state: String,
    sla: String,
    /// `warning 50%` or `breach`.
    event: String,
    due_at: Timestamp,
}

/// `--until`: an RFC 3339 time, or a duration from now (`8h`, `2d`).
pub fn parse_until(text: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    if let Ok(at) = Timestamp::parse_rfc3339(text) {
        return Ok(at);
    }
    match lockstep_core::duration::Duration::parse(text) {
        Ok(d) => Ok(now.add_ms(d.as_ms())),
        Err(_) => bail!(
            "--until `{text}` is neither a time (RFC 3339, e.g. 2026-12-24T17:00:00Z) nor a duration from now (e.g. 8h, 2d)"
        ),
    }
}

/// How soon `to` comes after `from`, for people: `in 16h`, or `now (overdue)`.
pub(super) fn in_people(from: Timestamp, to: Timestamp) -> String {
    let ms = u64::try_from(to.as_millis().saturating_sub(from.as_millis())).unwrap_or(0);
    if ms == 0 {
        "now (overdue)".into()
    } else {
        format!("in {}", lockstep_core::duration::Duration::for_people(ms))
    }
}

pub async fn sla_forecast(
    conn: &Connection,
    output: Output,
    workflow: &str,
    until: &str,
) -> anyhow::Result<()> {
    let now = Timestamp::from_jiff(jiff::Timestamp::now());
    let until = parse_until(until, now)?;
    let client = conn.client()?;
    let (mut due, mut scanned, mut token) = (Vec::new(), 0usize, None::<String>);
    let complete = loop {
        let page = client
            .list(pb::ListInstancesRequest {
                workflow: workflow.into(),
                page_size: FORECAST_PAGE,
                page_token: token.clone().unwrap_or_default(),
                ..Default::default()
            })
            .await?;
        for i in page.instances {
            scanned += 1;
            for t in &i.timers {
                let event = match &t.kind {
                    TimerKind::SlaWarning { percent, .. } => format!("warning {percent}%"),
                    TimerKind::SlaBreach { .. } => "breach".to_string(),
                    _ => continue,
                };
                if t.due_at <= until {
                    due.push(Due {
                        instance_id: i.id.clone(),
                        key: i.key.clone(),
                        state: i.state.clone(),
                        sla: t.sla().unwrap_or_default().to_string(),
                        event,
                        due_at: t.due_at,
                    });
                }
            }
        }
        match page.next_page_token {
            Some(next) if scanned < FORECAST_SCAN_MAX => token = Some(next),
            Some(_) => break false,
            None => break true,
        }
    };
    due.sort_by(|a, b| (a.due_at, &a.instance_id).cmp(&(b.due_at, &b.instance_id)));
    match output {
        Output::Json => {
            let events: Vec<serde_json::Value> = due
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "instance_id": d.instance_id,
                        "key": d.key,
                        "state": d.state,
                        "sla": d.sla,
                        "event": d.event,
                        "due_at": d.due_at.to_string(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "workflow": workflow,
                    "now": now.to_string(),
                    "until": until.to_string(),
                    "events": events,
                    "scanned": scanned,
                    "complete": complete,
                })
            );
        }
        Output::Table => {
            println!(
                "SLA events of {workflow} before {until} ({}), if nothing moves:",
                in_people(now, until)
            );
            if due.is_empty() {
                println!("  none");
            }
            for d in &due {
                println!(
                    "  {:<30} {:<12} {:<14} {:<12} {:<12} {}  ({})",
                    d.due_at.to_string(),
                    d.event,
                    d.instance_id,
                    d.key.as_deref().unwrap_or("-"),
                    d.sla,
                    d.state,
                    in_people(now, d.due_at)
                );
            }
            if !complete {
                println!(
                    "stopped after reading {scanned} instances ({FORECAST_SCAN_MAX} at most): the forecast is partial"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_is_a_time_or_a_duration_from_now() {
        let now = Timestamp::parse_rfc3339("2026-12-07T08:00:00Z").unwrap();
        assert_eq!(
            parse_until("8h", now).unwrap(),
            Timestamp::parse_rfc3339("2026-12-07T16:00:00Z").unwrap()
        );
        assert_eq!(
            parse_until("2026-12-24T17:00:00Z", now).unwrap(),
            Timestamp::parse_rfc3339("2026-12-24T17:00:00Z").unwrap()
        );
        let err = parse_until("soon", now).unwrap_err().to_string();
        assert!(err.contains("neither a time"), "{err}");
        assert_eq!(in_people(now, parse_until("90m", now).unwrap()), "in 1h30m");
    }
}
