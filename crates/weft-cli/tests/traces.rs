//! Traces through the real binary, exported over OTLP/HTTP to a local receiver: a webhook
//! delivery carrying a caller's `traceparent` becomes an `intake` span of the caller's trace;
//! the run it starts, the run's step and the step's outbound request are its descendants; the
//! outbound request carries the request span's `traceparent`; no credential value reaches a
//! span.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, Sink, SinkBehavior, post_hook};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const CANARY: &str = "canary-token-5f1c0e9b";

/// An OTLP/HTTP trace receiver on loopback: decodes each protobuf export into its spans.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

fn receiver() -> Receiver {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let raw: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (s, r) = (spans.clone(), raw.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                r.lock().unwrap().extend_from_slice(&body);
                let req = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        s.lock().unwrap().extend(ss.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let addr = common::serve_app(app);
    Receiver {
        url: format!("http://{addr}"),
        spans,
        raw,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    s.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            V::StringValue(v) => Some(v.clone()),
            V::IntValue(v) => Some(v.to_string()),
            _ => None,
        }
    })
}

#[test]
fn a_delivery_is_one_trace_from_intake_to_the_outbound_request() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = receiver();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(
        dir.path(),
        None,
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        &["--otlp-endpoint", &otlp.url],
    );
    srv.cli_json(&[
        "credentials",
        "set",
        "api",
        "--connector",
        "http",
        "--value",
        &format!("token={CANARY}"),
    ]);
    let flow = srv.apply(&format!(
        "name: traced\ntrigger:\n  webhook: {{}}\nsteps:\n  - id: call\n    action: http.request\n    credential: api\n    input: {{ url: '{}/orders', method: POST, body: {{ n: 1 }} }}\n",
        sink.url
    ));
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (st, ack) = post_hook(
        flow["hook_url"].as_str().unwrap(),
        "{}",
        &[("traceparent", &caller)],
    )
    .unwrap();
    assert_eq!(st, 202, "{ack}");
    let run = ack["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        srv.wait_run(&run, Duration::from_secs(30))["status"],
        "succeeded"
    );

    // All four spans reach the receiver (the batch exporter sends every 100 ms here).
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_name = loop {
        let spans = otlp.spans.lock().unwrap().clone();
        let mut m: HashMap<String, Span> = HashMap::new();
        for s in spans {
            if hex(&s.trace_id) == CALLER_TRACE {
                m.insert(s.name.clone(), s);
            }
        }
        if ["intake", "run", "step", "HTTP POST"]
            .iter()
            .all(|n| m.contains_key(*n))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "spans so far: {:?}", m.keys());
        std::thread::sleep(Duration::from_millis(50));
    };
    let (intake, run_span, step, http) = (
        &by_name["intake"],
        &by_name["run"],
        &by_name["step"],
        &by_name["HTTP POST"],
    );
    // Parent/child links: caller → intake → run → step → outbound request.
    assert_eq!(hex(&intake.parent_span_id), CALLER_SPAN);
    assert_eq!(run_span.parent_span_id, intake.span_id);
    assert_eq!(step.parent_span_id, run_span.span_id);
    assert_eq!(http.parent_span_id, step.span_id);
    assert_eq!(
        attr(intake, "http.route").as_deref(),
        Some("/hooks/{hook_id}")
    );
    assert!(attr(intake, "weft.request_id").is_some_and(|r| !r.is_empty()));
    assert_eq!(attr(run_span, "weft.run_id").as_deref(), Some(run.as_str()));
    assert_eq!(attr(step, "weft.step").as_deref(), Some("call"));
    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("200")
    );
    // The receiver of the outbound request can join the trace.
    let got = sink.all();
    assert_eq!(
        got[0].traceparent.as_deref(),
        Some(format!("00-{CALLER_TRACE}-{}-01", hex(&http.span_id)).as_str())
    );
    // No credential value in anything exported.
    let raw = otlp.raw.lock().unwrap().clone();
    assert!(
        !raw.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
        "a credential reached a span"
    );
}

#[test]
fn without_an_exporter_the_trace_context_still_reaches_the_outbound_request() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    let flow = srv.apply(&format!(
        "name: plain\ntrigger:\n  webhook: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{ url: '{}/x', method: POST, body: {{}} }}\n",
        sink.url
    ));
    let hook = flow["hook_url"].as_str().unwrap();
    // A caller's trace is carried through (nothing is recorded: the flags say so).
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (_, ack) = post_hook(hook, "{}", &[("traceparent", &caller)]).unwrap();
    srv.wait_run(ack["run_id"].as_str().unwrap(), Duration::from_secs(30));
    // Without one, the run gets a trace of its own.
    let (_, ack) = post_hook(hook, "{}", &[]).unwrap();
    srv.wait_run(ack["run_id"].as_str().unwrap(), Duration::from_secs(30));
    let got = sink.all();
    assert_eq!(got.len(), 2);
    let parts: Vec<Vec<String>> = got
        .iter()
        .map(|r| {
            r.traceparent
                .as_deref()
                .unwrap()
                .split('-')
                .map(str::to_string)
                .collect()
        })
        .collect();
    assert_eq!(parts[0][1], CALLER_TRACE);
    assert_ne!(parts[1][1], CALLER_TRACE);
    for p in &parts {
        assert_eq!(
            (p.len(), p[0].as_str(), p[1].len(), p[2].len()),
            (4, "00", 32, 16),
            "{p:?}"
        );
        assert_ne!(p[1], "0".repeat(32));
    }
}
