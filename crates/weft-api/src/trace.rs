//! Request tracing: every routed request is a server span (a child of the caller's W3C
//! `traceparent` when it sends one) carrying its request id; the handler runs inside it, so a
//! run it starts records the span as its parent and joins the trace. JSON logs of the request
//! carry the same request and trace ids.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::KeyValue;
use opentelemetry::trace::{FutureExt as _, SpanKind, TraceContextExt as _};
use tracing::Instrument as _;

/// The middleware.
pub(crate) async fn traced(req: Request, next: Next) -> Response {
    let (cx, logs) = {
        // Borrowed until the spans are made: a request whose span is not recorded allocates
        // nothing here.
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let request_id = header("x-request-id").unwrap_or_default();
        let parent = header("traceparent")
            .and_then(weft_engine::trace::parent)
            .unwrap_or_default();
        let name: &'static str = if route.is_some_and(|r| r.starts_with("/hooks/")) {
            "intake"
        } else {
            "api"
        };
        let cx = weft_engine::trace::start(&parent, name, SpanKind::Server, || {
            vec![
                KeyValue::new("http.request.method", req.method().as_str().to_string()),
                KeyValue::new("http.route", route.unwrap_or("unmatched").to_string()),
                KeyValue::new("weft.request_id", request_id.to_string()),
            ]
        });
        let trace_id = cx.span().span_context().trace_id();
        let logs = tracing::info_span!("request", request_id = %request_id, trace_id = %trace_id);
        (cx, logs)
    };
    let resp = next
        .run(req)
        .with_context(cx.clone())
        .instrument(logs)
        .await;
    let code = resp.status().as_u16();
    {
        let span = cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
        }
    }
    weft_engine::trace::end(&cx, (code >= 500).then_some("server error"));
    resp
}
