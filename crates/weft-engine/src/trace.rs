//! Trace context: a run carries the W3C `traceparent` of the span that started it (intake, a
//! manual start, a parent run's step), and its execution's spans — the run, each step, each
//! outbound request — join that trace, in whichever process executes it. Spans go through the
//! OpenTelemetry API; the binary installs the SDK and its OTLP exporter (or nothing, and the
//! spans cost next to nothing).

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};

/// The `traceparent` of `cx`'s span, when it is part of a trace.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| weft_connectors::http::traceparent(sc))
}

/// The `traceparent` of the current span, when there is one: what a new run records.
pub(crate) fn current() -> Option<String> {
    traceparent_of(&Context::current())
}

/// A context whose (remote) parent span is the one `traceparent` names; `None` when the text
/// is not a version-00 `traceparent` with non-zero ids.
pub fn parent(traceparent: &str) -> Option<Context> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if version != "00"
        || parts.next().is_some()
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| Context::new().with_remote_span_context(sc))
}

/// Whether spans may be recorded: the binary turns it on when it exports them.
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets spans be recorded (when an exporter is installed). Off, and for traces a caller sent
/// unsampled, a span costs only its ids: nothing is built for a sampler to throw away.
pub fn set_recording(on: bool) {
    RECORDING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Starts a span named `name` as a child of `parent`'s span (a new trace when it has none)
/// and returns the context that holds it; `attributes` are built only for a recorded span.
pub fn start(
    parent: &Context,
    name: &'static str,
    kind: SpanKind,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> Context {
    let recording = RECORDING.load(std::sync::atomic::Ordering::Relaxed);
    let (valid, sampled) = {
        let span = parent.span();
        let sc = span.span_context();
        (sc.is_valid(), sc.is_sampled())
    };
    if !recording || (valid && !sampled) {
        if valid {
            // An unsampled trace: its children share the parent's ids (nothing is recorded).
            return parent.clone();
        }
        let trace = rand::random::<u128>().max(1);
        let span = rand::random::<u64>().max(1);
        let sc = SpanContext::new(
            TraceId::from_bytes(trace.to_be_bytes()),
            SpanId::from_bytes(span.to_be_bytes()),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        return parent.with_remote_span_context(sc);
    }
    let tracer = opentelemetry::global::tracer("weft");
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes())
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Ends `cx`'s span, marked failed with `error` when there is one.
pub fn end(cx: &Context, error: Option<&str>) {
    let span = cx.span();
    if let Some(e) = error {
        span.set_status(opentelemetry::trace::Status::error(e.to_string()));
    }
    span.end();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_strictly_and_written_back_the_same() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parent(tp).unwrap();
        assert_eq!(traceparent_of(&cx).as_deref(), Some(tp));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert!(parent(bad).is_none(), "{bad}");
        }
        assert_eq!(traceparent_of(&Context::new()), None);
    }
}
