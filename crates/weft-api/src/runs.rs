//! Run routes: manual start, list with filters and cursor, show with steps, logs, cancel.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use weft_store::{RunFilter, RunRecord, StepRecord};
use weft_types::{RunId, RunStatus};

use crate::auth::WsAuth;
use crate::body::{parse_id, parse_json, parse_query, read_limited, require_json};
use crate::{AppState, Problem};

fn ts(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(weft_types::rfc3339(m)))
        .unwrap_or(Value::Null)
}

/// The run shape of PRODUCT.md (`steps` only when given).
pub(crate) fn run_json(r: &RunRecord, steps: Option<&[StepRecord]>) -> Value {
    let mut v = json!({
        "id": r.id.to_string(),
        "flow": r.flow_name,
        "flow_id": r.flow_id.to_string(),
        "flow_version": r.flow_version,
        "status": r.status.as_str(),
        "trigger": r.trigger,
        "output": r.output,
        "error": r.error,
        "created_at": weft_types::rfc3339(r.created_at),
        "started_at": ts(r.started_at),
        "finished_at": ts(r.finished_at),
    });
    if let (Some(steps), Some(obj)) = (steps, v.as_object_mut()) {
        let s: Vec<Value> = steps
            .iter()
            .map(|s| {
                json!({
                    "id": s.step_id,
                    "status": s.status.as_str(),
                    "attempts": s.attempts,
                    "output": s.output,
                    "error": s.error,
                    "started_at": ts(s.started_at),
                    "finished_at": ts(s.finished_at),
                })
            })
            .collect();
        obj.insert("steps".into(), Value::Array(s));
    }
    v
}

/// `POST /flows/{flow}/runs`: body `{input}` (or any JSON, used as the input); `Idempotency-Key` dedupes.
pub(crate) async fn start(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, flow)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let bytes = read_limited(body, s.opts.max_body_bytes).await?;
    require_json(&headers, &bytes)?;
    let v: Value = if bytes.is_empty() {
        json!({})
    } else {
        parse_json(&bytes)?
    };
    let input = match v {
        Value::Object(mut m) if m.len() == 1 && m.contains_key("input") => {
            m.remove("input").unwrap_or(Value::Null)
        }
        other => other,
    };
    let key = crate::hooks::idempotency_key(&headers)?;
    let ins = s.engine.start_run(auth.scope, &flow, input, key).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": ins.run_id.to_string(), "duplicate": ins.duplicate})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// `GET /runs?flow=&status=&since=&limit=&cursor=`.
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: WsAuth,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, Problem> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let flow_id = match q.flow.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => match s.engine.get_flow(auth.scope, f).await {
            Ok(rec) => Some(rec.id),
            // An unknown flow has no runs.
            Err(weft_engine::EngineError::NotFound(_)) => {
                return Ok(Json(json!({"items": [], "next_cursor": null})));
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let status = q
        .status
        .as_deref()
        .filter(|x| !x.is_empty())
        .map(|x| {
            RunStatus::parse(x).ok_or_else(|| {
                Problem::invalid(
                    "status",
                    "must be one of queued, running, waiting, succeeded, failed, cancelled",
                )
            })
        })
        .transpose()?;
    let since = q
        .since
        .as_deref()
        .filter(|x| !x.is_empty())
        .map(|x| {
            weft_types::parse_rfc3339(x).ok_or_else(|| {
                Problem::invalid(
                    "since",
                    "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
                )
            })
        })
        .transpose()?;
    let before = q
        .cursor
        .as_deref()
        .filter(|x| !x.is_empty())
        .map(|c| parse_id::<RunId>("cursor", c))
        .transpose()?;
    let mut runs = s
        .engine
        .store()
        .list_runs(
            auth.scope,
            RunFilter {
                flow_id,
                status,
                since,
                before,
                limit: limit + 1,
            },
        )
        .await
        .map_err(|e| Problem::from(weft_engine::EngineError::from(e)))?;
    let next = crate::body::cut_page(&mut runs, limit, |r| r.id.to_string());
    let items: Vec<Value> = runs.iter().map(|r| run_json(r, None)).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

/// `GET /runs/{run}` with steps.
pub(crate) async fn show(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, run)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let id: RunId = parse_id("run", &run)?;
    let (r, steps) = s
        .engine
        .store()
        .get_run(auth.scope, id)
        .await
        .map_err(|e| match e {
            weft_store::StoreError::NotFound => Problem::not_found("run"),
            other => Problem::from(weft_engine::EngineError::from(other)),
        })?;
    Ok(Json(run_json(&r, Some(&steps))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /runs/{run}/logs?after=SEQ&limit=`.
pub(crate) async fn logs(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, run)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, Problem> {
    let q: LogsQuery = parse_query(q.as_deref())?;
    let id: RunId = parse_id("run", &run)?;
    let store = s.engine.store();
    let (r, _) = store.get_run(auth.scope, id).await.map_err(|e| match e {
        weft_store::StoreError::NotFound => Problem::not_found("run"),
        other => Problem::from(weft_engine::EngineError::from(other)),
    })?;
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    let lines = store
        .run_logs(auth.scope, id, q.after.unwrap_or(0), limit)
        .await
        .map_err(|e| Problem::from(weft_engine::EngineError::from(e)))?;
    let next = lines.last().map(|l| l.seq);
    let items: Vec<Value> = lines
        .into_iter()
        .map(|l| json!({"seq": l.seq, "ts": weft_types::rfc3339(l.ts), "level": l.level, "step": l.step_id, "message": l.message}))
        .collect();
    Ok(Json(
        json!({"items": items, "next_cursor": next, "run_status": r.status.as_str()}),
    ))
}

/// `POST /runs/{run}/cancel`.
pub(crate) async fn cancel(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, run)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let id: RunId = parse_id("run", &run)?;
    let status = s.engine.cancel_run(auth.scope, id).await?;
    Ok(Json(
        json!({"id": id.to_string(), "status": status.as_str()}),
    ))
}
