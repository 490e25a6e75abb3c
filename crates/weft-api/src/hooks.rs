//! Webhook intake: `POST /hooks/{hook_id}`. Answers `202 {run_id, duplicate}` only after the
//! event is committed, or the flow's `respond` step's answer when it comes in time.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use weft_engine::{Delivery, EngineError, Intake, WebhookResponse};
use weft_types::HookId;

use crate::body::{is_json, media_type, read_limited};
use crate::{AppState, Problem};

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// Headers never stored with an event: they carry the sender's own credentials.
const DROPPED_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The `Idempotency-Key` header, validated.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| Problem::invalid("Idempotency-Key", "must be visible ASCII"))?
        .trim();
    if s.is_empty() || s.len() > MAX_KEY_LEN {
        return Err(Problem::invalid(
            "Idempotency-Key",
            format!("must be 1-{MAX_KEY_LEN} characters"),
        ));
    }
    Ok(Some(s.to_string()))
}

fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, Problem> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let mt = media_type(headers).unwrap_or_default();
    if is_json(&mt) {
        return serde_json::from_slice(bytes).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
            .with_errors(vec![weft_flow::FieldError::new("body", e.to_string())])
        });
    }
    if mt == "application/x-www-form-urlencoded" {
        let mut m = Map::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            m.insert(k.into_owned(), Value::String(v.into_owned()));
        }
        return Ok(Value::Object(m));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Value::String(s.to_string())),
        Err(_) => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_body",
            "the body is not UTF-8 text; send JSON, form data or text",
        )),
    }
}

/// Webhook intake: stores the event durably, then answers.
///
/// `202 {run_id, duplicate}` once the event is committed, or the answer of the flow's `respond`
/// step when it comes within the trigger's `respond_timeout`.
#[utoipa::path(post, path = "/hooks/{hook_id}", tag = "intake",
    params(("hook_id" = String, Path, description = "the flow trigger's hook id (`hk_…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "the same key within the dedupe window starts no second run")),
    request_body(content = Object, description = "any JSON, form or text body", content_type = "application/json"),
    responses((status = 202, body = crate::dto::Started),
        (status = 200, description = "a verified delivery answered at once (Slack's url_verification `{challenge}`), or an event the trigger does not listen for (`{run_id: null, ignored: true, event}`)"),
        (status = 401, body = crate::dto::ProblemDoc, content_type = "application/problem+json", description = "missing, bad or stale signature of a connector-verified webhook; nothing was stored"),
        (status = "4XX", body = crate::dto::ProblemDoc, content_type = "application/problem+json"),
        (status = 503, body = crate::dto::ProblemDoc, content_type = "application/problem+json"),
        (status = "default", description = "the answer of the flow's respond step")))]
pub(crate) async fn intake(
    State(s): State<AppState>,
    Path(hook): Path<String>,
    RawQuery(q): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let r = accept(&s, hook, q, method, headers, body).await;
    if let Err(p) = &r {
        s.metrics.api.intake(p.code);
    }
    r
}

async fn accept(
    s: &AppState,
    hook: String,
    q: Option<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let Ok(hook) = hook.parse::<HookId>() else {
        return Err(Problem::not_found("hook"));
    };
    let key = idempotency_key(&headers)?;
    let bytes = read_limited(body, s.opts.max_body_bytes).await?;
    let parsed = parse_body(&headers, &bytes)?;
    let mut hs = Map::new();
    for (k, v) in &headers {
        let name = k.as_str();
        if DROPPED_HEADERS.contains(&name) {
            continue;
        }
        let val = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match hs.get_mut(name) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&val);
            }
            _ => {
                hs.insert(name.to_string(), Value::String(val));
            }
        }
    }
    let mut query = Map::new();
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        query.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    let event = json!({
        "kind": "webhook",
        "method": method.as_str(),
        "headers": hs,
        "query": query,
        "body": parsed,
        "received_at": weft_types::rfc3339(s.engine.clock().now_ms()),
    });
    let intake = s
        .engine
        .accept_webhook(
            hook,
            Delivery {
                event,
                headers: &headers,
                raw_body: &bytes,
                dedupe_key: key,
            },
        )
        .await
        .map_err(|e| match e {
            EngineError::NotFound(_) => Problem::not_found("hook"),
            other => Problem::from(other),
        })?;
    let accepted = match intake {
        Intake::Accepted(a) => a,
        Intake::Answered(body) => {
            s.metrics.api.intake("answered");
            return Ok((StatusCode::OK, Json(body)).into_response());
        }
        // 200, not an error: the sender did nothing wrong, this flow just does not listen.
        Intake::Ignored { event } => {
            s.metrics.api.intake("ignored");
            return Ok((
                StatusCode::OK,
                Json(json!({"run_id": null, "duplicate": false, "ignored": true, "event": event})),
            )
                .into_response());
        }
    };
    s.metrics.api.intake(if accepted.duplicate {
        "duplicate"
    } else {
        "accepted"
    });
    weft_types::failpoint("intake.after_commit");
    let ack = (
        StatusCode::ACCEPTED,
        Json(json!({"run_id": accepted.run_id.to_string(), "duplicate": accepted.duplicate})),
    );
    if let Some((rx, wait)) = accepted.respond {
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(resp)) => return Ok(render(resp, accepted.run_id)),
            _ => s.engine.forget_responder(accepted.run_id),
        }
    }
    Ok(ack.into_response())
}

fn render(r: WebhookResponse, run: weft_types::RunId) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let mut resp = match r.body {
        Value::String(s) => (status, s).into_response(),
        Value::Null => status.into_response(),
        other => (status, Json(other)).into_response(),
    };
    for (k, v) in r.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(&v)) {
            resp.headers_mut().insert(n, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&run.to_string()) {
        resp.headers_mut().insert("x-weft-run-id", v);
    }
    resp
}
