//! The console's page frame and the small pieces every page uses. maud escapes every value
//! spliced into markup; only SVG the console generates itself goes in as `PreEscaped`.

use lockstep_core::Timestamp;
use lockstep_core::duration::Duration;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{Caller, Refused};

/// The page frame: navigation, who is signed in, and the live region the script refreshes
/// when the feed at `live` (an `/events` URL) reports a change.
pub(crate) fn layout(title: &str, caller: &Caller, live: Option<String>, body: Markup) -> Markup {
    let actor = caller.actor();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lockstep" }
                link rel="stylesheet" href="/assets/console.css";
                link rel="icon" type="image/svg+xml" href="/assets/favicon.svg";
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/inbox" { "Lockstep" }
                    nav {
                        a href="/inbox" { "Inbox" }
                        a href="/workflows" { "Workflows" }
                        a href="/instances" { "Instances" }
                        a href="/audit" { "Audit" }
                        a href="/subscriptions" { "Webhooks" }
                        a href="/cluster" { "Cluster" }
                    }
                    div.who {
                        @if let Some(a) = actor {
                            span title=(format!("authenticated by {}", a.authn)) {
                                (a.id)
                                @if !a.roles.is_empty() { " · " (a.roles.join(", ")) }
                            }
                            form method="post" action="/signout" {
                                input type="hidden" name="csrf" value=(caller.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        } @else {
                            a href="/signin" { "Sign in" }
                        }
                    }
                }
                main data-live=[live] {
                    h1 { (title) }
                    (body)
                }
                p id="live-status" class="live-status" hidden {}
            }
        }
    }
}

/// A page as an HTTP response.
pub(crate) fn page(markup: Markup) -> axum::response::Response {
    axum::response::IntoResponse::into_response(axum::response::Html(markup.into_string()))
}

/// A refusal as a person reads it: the code, the reason, and when a gate opens.
pub(crate) fn refusal(r: &Refused) -> Markup {
    html! {
        div.refusal role="alert" {
            strong.code { (r.code) }
            " "
            span.reason { (r.message) }
            @if let Some(at) = &r.earliest_at {
                p { "Opens at " (when(at)) "." }
            }
        }
    }
}

/// An RFC 3339 time as `<time>`, with how long ago or until (from the server's clock).
pub(crate) fn when(text: &str) -> Markup {
    let relative = Timestamp::parse_rfc3339(text).ok().map(|t| {
        let now = crate::cluster::wall_clock().as_millis();
        relative(t.as_millis() - now)
    });
    html! {
        time datetime=(text) title=(text) {
            (short_time(text))
            @if let Some(r) = relative { " (" (r) ")" }
        }
    }
}

/// `2026-12-07T05:30:12.345Z` as `2026-12-07 05:30:12Z`.
fn short_time(text: &str) -> String {
    match text.split_once('.') {
        Some((head, _)) => format!("{}Z", head.replacen('T', " ", 1)),
        None => text.replacen('T', " ", 1),
    }
}

/// A span from now: `in 3h`, `5m ago`.
pub(crate) fn relative(ms: i64) -> String {
    if ms.abs() < 1000 {
        return "now".into();
    }
    let span = people(ms.unsigned_abs());
    if ms >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// Milliseconds for people, in whole seconds: `16h`, `2m30s`.
pub(crate) fn people(ms: u64) -> String {
    Duration::for_people(ms).to_string()
}

/// JSON, pretty-printed, as escaped preformatted text.
pub(crate) fn json_block(text: &str) -> Markup {
    let pretty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string());
    html! { pre.json { (pretty) } }
}

/// SVG the console generated itself (graphs, bars): never holds unescaped outside text.
pub(crate) fn svg(svg: String) -> Markup {
    PreEscaped(svg)
}

/// A hidden CSRF field for a form.
pub(crate) fn csrf(caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(caller.csrf); }
}

/// A short hash or version for tables (the full one in the title).
pub(crate) fn short(text: &str) -> Markup {
    let cut: String = text.chars().take(12).collect();
    html! { code title=(text) { (cut) } }
}

/// Everything but RFC 3986's unreserved characters, percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A query-string (or cookie) value: everything but unreserved characters as `%XX`.
pub(crate) fn query_value(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The text of a [`query_value`].
pub(crate) fn query_text(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_for_people() {
        assert_eq!(people(57_600_000), "16h");
        assert_eq!(relative(-120_000), "2m ago");
        assert_eq!(relative(3_600_000), "in 1h");
        assert_eq!(relative(-400), "now");
        assert_eq!(
            short_time("2026-12-07T05:30:12.345Z"),
            "2026-12-07 05:30:12Z"
        );
    }

    #[test]
    fn values_are_escaped() {
        let markup = json_block(r#"{"note":"<script>alert(1)</script>"}"#).into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"), "{markup}");
    }
}
