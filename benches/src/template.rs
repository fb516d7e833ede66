//! Templates of a load spec's keys, data, payloads and results.
//!
//! Any string in them may hold placeholders, replaced per unit of work:
//!
//! | placeholder | value |
//! |---|---|
//! | `{counter}` | the unit's number in the run, unique across agents |
//! | `{n}` | a pool instance's number in its pool (elsewhere: `{counter}`) |
//! | `{random:LO..HI}` | an integer from LO to HI, both included |
//! | `{choice:a\|b\|c}` | one of the texts |
//! | `{now}`, `{now+2h}`, `{now-1d}` | the current time (RFC 3339, UTC), optionally moved |
//! | `{actor}` | the acting actor's id |
//! | `{run}` | the run's id (8 hex digits, the same on every agent) |
//!
//! `{{` and `}}` are literal braces. A string that is exactly one `{counter}`, `{n}` or
//! `{random:..}` becomes a JSON number. Random draws come from the unit's counter, so a run
//! is reproducible.

use std::fmt;

use crate::load::mix;

/// Longest template string, and most choices in one `{choice:..}`.
const TEMPLATE_TEXT_MAX: usize = 4_096;
const CHOICES_MAX: usize = 256;

/// What a unit renders a template with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context<'a> {
    pub(crate) counter: u64,
    pub(crate) n: u64,
    pub(crate) actor: &'a str,
    pub(crate) run: &'a str,
    /// Where the unit's random draws start.
    pub(crate) seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Counter,
    N,
    Random(i64, i64),
    Choice(Vec<String>),
    /// Now, moved by this many milliseconds.
    Now(i64),
    Actor,
    Run,
}

#[derive(Clone, Debug)]
enum Node {
    /// A value without placeholders.
    Fixed(serde_json::Value),
    Text(Vec<Part>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// A compiled template.
#[derive(Clone, Debug)]
pub(crate) struct Template(Node);

/// Why a template does not compile.
#[derive(Debug, PartialEq)]
pub(crate) struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Template {
    pub(crate) fn compile(value: &serde_json::Value) -> Result<Template, TemplateError> {
        node(value).map(Template)
    }

    /// The value for one unit.
    pub(crate) fn render(&self, ctx: &Context<'_>) -> serde_json::Value {
        let mut draws = 0u64;
        render(&self.0, ctx, &mut draws)
    }

    /// The value as text (a key): a string as is, anything else as JSON.
    pub(crate) fn render_string(&self, ctx: &Context<'_>) -> String {
        match self.render(ctx) {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

fn node(value: &serde_json::Value) -> Result<Node, TemplateError> {
    Ok(match value {
        serde_json::Value::String(s) => {
            let parts = parse(s)?;
            match parts.as_slice() {
                [] => Node::Fixed(serde_json::Value::String(String::new())),
                [Part::Text(t)] => Node::Fixed(serde_json::Value::String(t.clone())),
                _ => Node::Text(parts),
            }
        }
        serde_json::Value::Array(items) => {
            let nodes = items.iter().map(node).collect::<Result<Vec<_>, _>>()?;
            if nodes.iter().all(|n| matches!(n, Node::Fixed(_))) {
                Node::Fixed(value.clone())
            } else {
                Node::Array(nodes)
            }
        }
        serde_json::Value::Object(map) => {
            let nodes = map
                .iter()
                .map(|(k, v)| node(v).map(|n| (k.clone(), n)))
                .collect::<Result<Vec<_>, _>>()?;
            if nodes.iter().all(|(_, n)| matches!(n, Node::Fixed(_))) {
                Node::Fixed(value.clone())
            } else {
                Node::Object(nodes)
            }
        }
        other => Node::Fixed(other.clone()),
    })
}

fn parse(text: &str) -> Result<Vec<Part>, TemplateError> {
    if text.len() > TEMPLATE_TEXT_MAX {
        return Err(TemplateError(format!(
            "a template string of {} bytes is longer than {TEMPLATE_TEXT_MAX}",
            text.len()
        )));
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        literal.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            literal.push('{');
            rest = after;
            continue;
        }
        if let Some(after) = tail.strip_prefix("}}") {
            literal.push('}');
            rest = after;
            continue;
        }
        if tail.starts_with('}') {
            return Err(TemplateError(format!(
                "a `}}` without its `{{` in `{text}`"
            )));
        }
        let Some(close) = tail.find('}') else {
            return Err(TemplateError(format!(
                "a `{{` without its `}}` in `{text}`"
            )));
        };
        if !literal.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut literal)));
        }
        parts.push(placeholder(&tail[1..close])?);
        rest = &tail[close + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(parts)
}

fn placeholder(inner: &str) -> Result<Part, TemplateError> {
    let bad = |why: &str| TemplateError(format!("`{{{inner}}}`: {why}"));
    Ok(match inner {
        "counter" => Part::Counter,
        "n" => Part::N,
        "now" => Part::Now(0),
        "actor" => Part::Actor,
        "run" => Part::Run,
        _ if inner.starts_with("now+") || inner.starts_with("now-") => {
            let d = crate::parse_duration(&inner[4..])
                .map_err(|e| bad(&format!("not a duration after `now`: {e}")))?;
            let ms = i64::try_from(d.as_millis()).map_err(|_| bad("too long a duration"))?;
            Part::Now(if inner.as_bytes()[3] == b'-' { -ms } else { ms })
        }
        _ => {
            if let Some(range) = inner.strip_prefix("random:") {
                let (lo, hi) = range
                    .split_once("..")
                    .ok_or_else(|| bad("write the range as LO..HI, e.g. {random:1..100}"))?;
                let parse = |t: &str| {
                    t.trim()
                        .parse::<i64>()
                        .map_err(|_| bad(&format!("`{t}` is not an integer")))
                };
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi {
                    return Err(bad("the range's low end is above its high end"));
                }
                Part::Random(lo, hi)
            } else if let Some(list) = inner.strip_prefix("choice:") {
                let choices: Vec<String> = list.split('|').map(str::to_string).collect();
                if choices.len() > CHOICES_MAX {
                    return Err(bad(&format!("more than {CHOICES_MAX} choices")));
                }
                Part::Choice(choices)
            } else {
                return Err(bad("unknown placeholder"));
            }
        }
    })
}

fn render(node: &Node, ctx: &Context<'_>, draws: &mut u64) -> serde_json::Value {
    match node {
        Node::Fixed(v) => v.clone(),
        Node::Array(items) => items.iter().map(|n| render(n, ctx, draws)).collect(),
        Node::Object(fields) => fields
            .iter()
            .map(|(k, n)| (k.clone(), render(n, ctx, draws)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Node::Text(parts) => {
            // One numeric placeholder alone is a number.
            if let [part @ (Part::Counter | Part::N | Part::Random(..))] = parts.as_slice() {
                return serde_json::json!(number(part, ctx, draws));
            }
            let mut out = String::new();
            for part in parts {
                match part {
                    Part::Text(t) => out.push_str(t),
                    Part::Counter | Part::N | Part::Random(..) => {
                        out.push_str(&number(part, ctx, draws).to_string());
                    }
                    Part::Choice(choices) => {
                        let i = (draw(ctx, draws) % choices.len() as u64) as usize;
                        out.push_str(&choices[i]);
                    }
                    Part::Now(offset_ms) => {
                        let at = lockstep_core::Timestamp::from_micros(
                            crate::load::micros_now()
                                .saturating_add(offset_ms.saturating_mul(1_000)),
                        );
                        out.push_str(&at.to_jiff().to_string());
                    }
                    Part::Actor => out.push_str(ctx.actor),
                    Part::Run => out.push_str(ctx.run),
                }
            }
            serde_json::Value::String(out)
        }
    }
}

fn draw(ctx: &Context<'_>, draws: &mut u64) -> u64 {
    *draws += 1;
    mix(ctx.seed.wrapping_add(draws.wrapping_mul(0x9E37_79B9)))
}

fn number(part: &Part, ctx: &Context<'_>, draws: &mut u64) -> i64 {
    match part {
        Part::Counter => ctx.counter as i64,
        Part::N => ctx.n as i64,
        Part::Random(lo, hi) => {
            let span = (*hi as i128 - *lo as i128 + 1) as u128;
            (*lo as i128 + (draw(ctx, draws) as u128 % span) as i128) as i64
        }
        _ => unreachable!("only numeric parts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(counter: u64) -> Context<'static> {
        Context {
            counter,
            n: counter,
            actor: "alice",
            run: "0badcafe",
            seed: mix(counter),
        }
    }

    #[test]
    fn placeholders_render() {
        let t = Template::compile(&serde_json::json!({
            "id": "{counter}",
            "key": "po-{run}-{counter}",
            "amount": "{random:10..20}",
            "tier": "{choice:gold|silver}",
            "who": "{actor}",
            "fixed": [1, "two"],
            "braces": "{{literal}}",
        }))
        .unwrap();
        let v = t.render(&ctx(42));
        assert_eq!(v["id"], 42);
        assert_eq!(v["key"], "po-0badcafe-42");
        assert!((10..=20).contains(&v["amount"].as_i64().unwrap()), "{v}");
        assert!(["gold", "silver"].contains(&v["tier"].as_str().unwrap()));
        assert_eq!(v["who"], "alice");
        assert_eq!(v["fixed"], serde_json::json!([1, "two"]));
        assert_eq!(v["braces"], "{literal}");
        // The same unit renders the same draws.
        assert_eq!(t.render(&ctx(42)), v);
    }

    #[test]
    fn random_draws_cover_the_range() {
        let t = Template::compile(&serde_json::json!("{random:1..4}")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for c in 0..200 {
            seen.insert(t.render(&ctx(c)).as_i64().unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn now_moves_by_its_offset() {
        let t = Template::compile(&serde_json::json!("{now+1d}")).unwrap();
        let text = t.render_string(&ctx(0));
        let at = lockstep_core::Timestamp::parse_rfc3339(&text).unwrap();
        let now = lockstep_core::Timestamp::from_micros(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64,
        );
        let ahead = at.as_millis() - now.as_millis();
        assert!((86_390_000..=86_400_000).contains(&ahead), "{ahead}");
    }

    #[test]
    fn mistakes_are_refused() {
        for bad in [
            "{unknown}",
            "{random:5}",
            "{random:9..1}",
            "{random:a..b}",
            "open {",
            "close }",
            "{now+soon}",
        ] {
            assert!(Template::compile(&serde_json::json!(bad)).is_err(), "{bad}");
        }
    }
}
