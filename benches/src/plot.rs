//! The sweep as an SVG plot: throughput and p99 latency against concurrency (closed loop) or
//! offered rate (open loop), one line per system. Hand-written SVG: two line charts need no
//! plotting library.

use std::fmt::Write;

use crate::load::Level;

/// One system's sweep.
#[derive(Debug)]
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) levels: &'a [Level],
}

/// What a panel plots of each level.
type Metric = fn(&Level) -> f64;

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
const PANEL_WIDTH: f64 = 420.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_TOP: f64 = 50.0;
const MARGIN_BOTTOM: f64 = 60.0;
const GAP: f64 = 90.0;
const Y_TICKS: usize = 5;

/// The x value of a level: concurrency, or the offered rate in open loop.
fn x_of(level: &Level) -> f64 {
    if level.concurrency > 0 {
        level.concurrency as f64
    } else {
        level.offered_per_second
    }
}

/// The smallest "round" number (1, 2, 2.5 or 5 times a power of ten) at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|v| *v >= value)
        .unwrap_or(10.0 * power)
}

fn format_number(value: f64) -> String {
    if value >= 100.0 || value == value.round() {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders the plot. `title` names the scenario and setup; `x_label` the sweep variable.
pub(crate) fn svg(title: &str, x_label: &str, series: &[Series<'_>]) -> String {
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.levels.iter().map(x_of))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let width = MARGIN_LEFT + 2.0 * PANEL_WIDTH + GAP + 30.0;
    let height = MARGIN_TOP + PANEL_HEIGHT + MARGIN_BOTTOM + 20.0 * series.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{MARGIN_LEFT}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let panels: [(&str, Metric); 2] = [
        ("throughput (operations/s)", |l| l.ops_per_second),
        ("p99 latency (ms)", |l| l.p99_us as f64 / 1000.0),
    ];
    for (p, (y_label, y_of)) in panels.iter().enumerate() {
        let left = MARGIN_LEFT + p as f64 * (PANEL_WIDTH + GAP);
        panel(&mut out, left, &xs, x_label, y_label, *y_of, series);
    }
    for (i, s) in series.iter().enumerate() {
        let y = MARGIN_TOP + PANEL_HEIGHT + 45.0 + 20.0 * i as f64;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            out,
            r#"<line x1="{MARGIN_LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            MARGIN_LEFT + 24.0,
            MARGIN_LEFT + 30.0,
            y + 4.0,
            escape(s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    left: f64,
    xs: &[f64],
    x_label: &str,
    y_label: &str,
    y_of: Metric,
    series: &[Series<'_>],
) {
    let bottom = MARGIN_TOP + PANEL_HEIGHT;
    let y_max = nice_ceiling(
        series
            .iter()
            .flat_map(|s| s.levels.iter().map(y_of))
            .fold(0.0, f64::max),
    );
    // Levels are spaced evenly (sweeps are usually geometric: 1, 16, 64, 256).
    let x_at = |x: f64| {
        let i = xs.iter().position(|v| *v == x).unwrap_or(0);
        let step = PANEL_WIDTH / xs.len().max(1) as f64;
        left + step * (i as f64 + 0.5)
    };
    let y_at = |y: f64| bottom - PANEL_HEIGHT * (y / y_max);
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{MARGIN_TOP}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
    );
    for t in 0..=Y_TICKS {
        let value = y_max * t as f64 / Y_TICKS as f64;
        let y = y_at(value);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + PANEL_WIDTH,
            left - 6.0,
            y + 4.0,
            format_number(value)
        );
    }
    for x in xs {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x_at(*x),
            bottom + 16.0,
            format_number(*x)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text><text x="{left}" y="{}" font-weight="bold">{}</text>"#,
        left + PANEL_WIDTH / 2.0,
        bottom + 34.0,
        escape(x_label),
        MARGIN_TOP - 8.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .levels
            .iter()
            .map(|l| format!("{:.1},{:.1}", x_at(x_of(l)), y_at(y_of(l))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for point in &points {
            let (x, y) = point.split_once(',').expect("formatted above");
            let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(862.0), 1000.0);
        assert_eq!(nice_ceiling(1246.0), 2000.0);
        assert_eq!(nice_ceiling(220.41), 250.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
    }
}
