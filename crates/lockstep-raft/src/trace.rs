//! The W3C trace context a proposal carries through the log ([`crate::Body::Traced`], log
//! format 9), so that a caller's trace goes on past the leader: every replica's apply opens a
//! span inside it, and the tasks that apply creates keep it (family `TaskTraces`) for the
//! worker that leases them.
//!
//! Only a `traceparent` travels (55 bytes, [`TRACEPARENT_LEN`]): `tracestate` is vendor data of
//! unbounded use, and a log entry is replicated and kept.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// The span context a version-00 `traceparent` names, if it is one: lowercase hex, trace and
/// parent ids not all zero (the W3C rules a receiver must check).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if traceparent.len() != TRACEPARENT_LEN {
        return None;
    }
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || ![trace, span, flags].into_iter().all(lower_hex) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` of the current span, when it is exported (a node started with
/// `--otlp-endpoint`, in a sampled trace); `None` otherwise, so nothing is carried.
pub fn current() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the remote span `traceparent` names (nothing when it names none).
pub fn continue_in(span: &tracing::Span, traceparent: &str) {
    if let Some(sc) = parse(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_00_traceparent_is_parsed_and_anything_else_is_not() {
        let sc = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{:016x}", sc.span_id()), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00+4bf92f3577b34da6a3ce929d0e0e4736+00f067aa0ba902b7+01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_an_exporting_subscriber_there_is_no_current_context() {
        let span = tracing::info_span!("propose");
        let _entered = span.enter();
        assert_eq!(current(), None);
    }
}
