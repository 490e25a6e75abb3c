//! Resume links: `GET /resume/{token}` shows what a waiting step asks, with Approve / Reject
//! (or Resume) buttons; `POST /resume/{token}` delivers the signal. The token is signed by the
//! instance and names one run and one signal, so it needs no key; it works once (a signal is
//! single-use). GET changes nothing, so mail scanners that open links approve nothing.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use weft_engine::ResumeTarget;
use weft_store::Actor;
use weft_types::StepStatus;

use crate::body::{is_json, media_type, read_limited};
use crate::{AppState, Problem};

/// The `{token}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TokenParam {
    /// The signed token of a resume link (`.run.resume.<step>` in expressions).
    #[allow(dead_code)]
    token: String,
}

fn target(s: &AppState, token: &str) -> Result<ResumeTarget, Problem> {
    s.engine
        .open_resume_token(token)
        .ok_or_else(|| Problem::not_found("resume link"))
}

/// Show what the waiting step asks, with the buttons that answer it (HTML).
#[utoipa::path(get, path = "/resume/{token}", tag = "runs", params(TokenParam),
    responses((status = 200, description = "a page with the step's question and buttons", content_type = "text/html"),
        (status = "4XX", body = crate::dto::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn show(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, Problem> {
    let t = target(&s, &token)?;
    let store = s.engine.store();
    let (run, steps, _) = store
        .get_run_summary(t.scope, t.run)
        .await
        .map_err(|e| Problem::store(e, "resume link"))?;
    if run.status.is_terminal() {
        return Err(used(format!("run {} is already {}", run.id, run.status)));
    }
    let signals = store
        .run_signals(t.scope, t.run)
        .await
        .map_err(|e| Problem::store(e, "resume link"))?;
    if signals.iter().any(|x| x.name == t.name) {
        return Err(used(format!("'{}' was already answered", t.name)));
    }
    let step = steps.iter().find(|x| x.step_id == t.name);
    let message = step
        .filter(|x| x.status == StepStatus::Waiting)
        .and_then(|x| x.output.as_ref())
        .and_then(|o| o.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let approval = is_approval(&s, &t, &run).await;
    let buttons = if approval {
        r#"<p><label>Reason (optional) <input name="reason" maxlength="500"></label></p>
<p><button name="decision" value="approve">Approve</button> <button name="decision" value="reject">Reject</button></p>"#
    } else {
        r#"<p><button name="decision" value="resume">Resume</button></p>"#
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\
<h1>{title}</h1><p>Flow <b>{flow}</b>, run <code>{run}</code>, step <code>{step}</code>.</p>{msg}\
<form method=\"post\">{buttons}</form></body></html>",
        title = if approval {
            "Approval requested"
        } else {
            "Waiting for you"
        },
        flow = escape(&run.flow_name),
        run = run.id,
        step = escape(&t.name),
        msg = message
            .map(|m| format!("<p>{}</p>", escape(&m)))
            .unwrap_or_default(),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response())
}

/// Answer a waiting step through its resume link: a form (`decision=approve|reject`,
/// `reason`) or JSON (the signal's payload). Works once; 409 afterwards.
#[utoipa::path(post, path = "/resume/{token}", tag = "runs", params(TokenParam),
    request_body(content = Option<Object>, content_type = "application/json"),
    responses((status = 200, description = "recorded (JSON when asked for, else a page)"),
        (status = "4XX", body = crate::dto::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn answer(
    State(s): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let t = target(&s, &token)?;
    let bytes = read_limited(body, s.opts.max_body_bytes).await?;
    let mt = media_type(&headers).unwrap_or_default();
    let fields: Map<String, Value> = if bytes.is_empty() {
        Map::new()
    } else if is_json(&mt) {
        match crate::body::parse_json::<Value>(&bytes)? {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("payload".into(), other);
                m
            }
        }
    } else if mt == "application/x-www-form-urlencoded" {
        form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect()
    } else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send a form (decision=approve|reject) or JSON",
        ));
    };
    let (run, _, _) = s
        .engine
        .store()
        .get_run_summary(t.scope, t.run)
        .await
        .map_err(|e| Problem::store(e, "resume link"))?;
    let approval = is_approval(&s, &t, &run).await;
    let mut payload = fields;
    if approval {
        let decision = payload
            .remove("decision")
            .and_then(|d| d.as_str().map(str::to_string));
        let approved = match decision.as_deref() {
            None | Some("approve") | Some("approved") => payload
                .get("approved")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            Some("reject") | Some("rejected") => false,
            Some(_) => {
                return Err(Problem::invalid(
                    "decision",
                    "must be `approve` or `reject`",
                ));
            }
        };
        payload.insert("approved".into(), Value::Bool(approved));
        if payload.get("reason").and_then(Value::as_str) == Some("") {
            payload.remove("reason");
        }
    } else {
        payload.remove("decision");
    }
    payload.insert("via".into(), json!("resume_link"));
    let status = s
        .engine
        .signal_run(
            t.scope,
            t.run,
            &t.name,
            Value::Object(payload.clone()),
            Actor::system("resume-link"),
        )
        .await
        .map_err(|e| match e {
            weft_engine::EngineError::Conflict(m) => used(m),
            other => Problem::from(other),
        })?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("json"))
        || is_json(&mt);
    if wants_json {
        return Ok(axum::Json(json!({
            "id": t.run.to_string(),
            "status": status.as_str(),
            "signal": t.name,
        }))
        .into_response());
    }
    let what = match payload.get("approved").and_then(Value::as_bool) {
        Some(true) => "Approved",
        Some(false) => "Rejected",
        None => "Sent",
    };
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{what}</title></head><body><h1>{what}</h1><p>Recorded for run <code>{}</code>. You can close this page.</p></body></html>",
            t.run
        ),
    )
        .into_response())
}

/// A link that was used (or whose run finished): 409 with what happened.
fn used(detail: String) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "link_used",
        format!("this link can no longer be used: {detail}"),
    )
}

/// Whether the link's step is an `approval` (its version's definition says so).
async fn is_approval(s: &AppState, t: &ResumeTarget, run: &weft_store::RunRecord) -> bool {
    let Ok(v) = s
        .engine
        .store()
        .flow_version(t.scope, run.flow_id, run.flow_version)
        .await
    else {
        return false;
    };
    v.definition
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|st| {
            st.get("id").and_then(Value::as_str) == Some(t.name.as_str())
                && st.get("approval").is_some()
        })
}

/// Text safe inside HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
