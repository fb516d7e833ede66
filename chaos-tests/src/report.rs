//! What a run leaves for people: a timeline (text) and a latency picture (SVG) with the fault
//! windows, and the checkers' report.

use std::fmt::Write as _;

use crate::checks::CheckReport;
use crate::history::{FaultWindow, Op, OpKind, Outcome};

fn secs(us: u64) -> String {
    format!("{:>8.3}s", us as f64 / 1e6)
}

fn describe(op: &Op) -> String {
    let what = match op.kind {
        OpKind::Create => format!("create {}", op.key),
        OpKind::Transition => format!("{} {}", op.transition.as_deref().unwrap_or("?"), op.key),
        OpKind::Read => format!("read {}", op.key),
        OpKind::Complete | OpKind::Heartbeat | OpKind::Fail => format!(
            "{} task {} of {}",
            match op.kind {
                OpKind::Complete => "complete",
                OpKind::Heartbeat => "heartbeat",
                _ => "fail",
            },
            op.task_id.as_deref().unwrap_or("?"),
            if op.key.is_empty() {
                op.instance.as_deref().unwrap_or("?")
            } else {
                &op.key
            }
        ),
    };
    let result = match op.outcome {
        Outcome::Ok => match (&op.state, op.version) {
            (Some(s), Some(v)) => format!("ok {s} v{v}"),
            _ => "ok".into(),
        },
        Outcome::Fail => format!(
            "fail {}",
            op.code.as_deref().or(op.error.as_deref()).unwrap_or("")
        ),
        Outcome::Unknown => format!("unknown ({})", op.error.as_deref().unwrap_or("")),
    };
    format!(
        "p{:<2} #{:<5} {what} → {result} [{} ms]",
        op.process,
        op.id,
        op.latency_us() / 1000
    )
}

/// A merged, time-ordered account of faults and operations.
pub fn timeline(
    header: &str,
    ops: &[Op],
    faults: &[FaultWindow],
    reports: &[CheckReport],
) -> String {
    let mut lines: Vec<(u64, u8, String)> = Vec::new();
    for f in faults {
        lines.push((
            f.start_us,
            0,
            format!("== FAULT {} begins: {}", f.name, f.detail),
        ));
        lines.push((f.end_us, 0, format!("== FAULT {} healed", f.name)));
    }
    for op in ops {
        lines.push((op.invoke_us, 1, describe(op)));
    }
    lines.sort_by_key(|l| (l.0, l.1));
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(out, "Checks:");
    for r in reports {
        let _ = writeln!(
            out,
            "  {:<13} {} ({} checked){}",
            r.name,
            if r.ok() { "ok" } else { "FAILED" },
            r.checked,
            if r.notes.is_empty() {
                String::new()
            } else {
                format!("; {}", r.notes.join("; "))
            }
        );
        for p in &r.problems {
            let _ = writeln!(out, "    - {}", p.replace('\n', "\n      "));
        }
    }
    let _ = writeln!(
        out,
        "\nTimeline (seconds since the workload started; operations at their invocation):"
    );
    for (t, _, text) in lines {
        let _ = writeln!(out, "{} {text}", secs(t));
    }
    out
}

/// Operation latency over time (log scale), coloured by outcome, over shaded fault windows.
pub fn latency_svg(title: &str, ops: &[Op], faults: &[FaultWindow]) -> String {
    let (w, h) = (1200.0, 420.0);
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 40.0);
    let end_us = ops
        .iter()
        .map(|o| o.complete_us.max(o.invoke_us))
        .chain(faults.iter().map(|f| f.end_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |us: u64| left + (us as f64 / end_us) * (w - left - right);
    // 1 ms .. 10 s, log10.
    let y = |ms: f64| {
        let v = ms.clamp(1.0, 10_000.0).log10() / 4.0;
        h - bottom - v * (h - top - bottom)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="16" font-size="13">{}</text>"#,
        xml(title)
    );
    for (i, f) in faults.iter().enumerate() {
        let (x0, x1) = (x(f.start_us), x(f.end_us));
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="{}" opacity="0.35"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            h - top - bottom,
            if i % 2 == 0 { "#f4b6b6" } else { "#f6d7a7" },
            xml(&format!("{}: {}", f.name, f.detail))
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" fill="#933">{}</text>"##,
            x0 + 2.0,
            top - 4.0 + if i % 2 == 0 { 0.0 } else { 12.0 },
            xml(&f.name)
        );
    }
    for ms in [1.0, 10.0, 100.0, 1_000.0, 10_000.0] {
        let yy = y(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{}</text>"##,
            w - right,
            yy + 4.0,
            if ms >= 1_000.0 {
                format!("{} s", ms / 1_000.0)
            } else {
                format!("{ms} ms")
            }
        );
    }
    let step = (end_us / 1e6 / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t * 1e6 <= end_us {
        let xx = x((t * 1e6) as u64);
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"#,
            h - bottom + 16.0
        );
        t += step;
    }
    for op in ops {
        let colour = match op.outcome {
            Outcome::Ok => "#2a7",
            Outcome::Fail => "#e90",
            Outcome::Unknown => "#d22",
        };
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{colour}"/>"#,
            x(op.invoke_us),
            y(op.latency_us() as f64 / 1000.0)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}"><tspan fill="#2a7">● ok</tspan>  <tspan fill="#e90">● fail</tspan>  <tspan fill="#d22">● unknown</tspan>  (latency, log scale; shaded: faults)</text>"##,
        w - 420.0,
        h - 6.0
    );
    s.push_str("</svg>\n");
    s
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;

    #[test]
    fn timeline_and_svg_show_faults_ops_and_problems() {
        let obs = good();
        let faults = vec![FaultWindow {
            name: "kill-leader".into(),
            detail: "kill -9 node 2 (leader)".into(),
            start_us: 12,
            end_us: 30,
        }];
        let mut bad = CheckReport::new("writes");
        bad.problems.push("op 2 lost".into());
        let text = timeline("seed 7", &obs.ops, &faults, &[bad]);
        assert!(text.contains("FAULT kill-leader begins: kill -9 node 2"));
        assert!(text.contains("start k1 → ok working v2"));
        assert!(text.contains("writes        FAILED"));
        assert!(text.contains("op 2 lost"));
        let svg = latency_svg("seed <7>", &obs.ops, &faults);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), obs.ops.len());
        assert!(svg.contains("seed &lt;7&gt;"));
        assert!(svg.contains("kill-leader"));
    }
}
