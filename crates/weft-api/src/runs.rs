//! Run routes: manual start, list with filters and cursor, show with steps, logs, cancel,
//! delete, signals, retry in place and replay.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use weft_store::RunFilter;
use weft_types::{RunId, RunStatus};

use crate::auth::{Read, RunsWrite, Ws};
use crate::body::{parse_id, parse_json, parse_query, read_limited, require_json};
use crate::dto::{LogOut, LogPage, Page, ProblemDoc, RunOut, RunStatusOut, Started};
use crate::flows::{FlowParam, WsParam};
use crate::{AppState, Problem};

/// The `{run}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RunParam {
    /// Run id (`run_…`).
    #[allow(dead_code)]
    run: String,
}

/// Start a run of the published version by hand.
///
/// The body is `{input}` (or any JSON, used as the input); an `Idempotency-Key` header dedupes.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/flows/{flow}/runs", tag = "runs",
    params(WsParam, FlowParam, ("Idempotency-Key" = Option<String>, Header, description = "the same key within the dedupe window starts no second run")),
    request_body(content = Option<Object>, content_type = "application/json"),
    responses((status = 202, body = Started), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn start(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Started>), Problem> {
    let (_, flow) = path;
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
    let ins = s
        .engine
        .start_run(auth.scope, &flow, input, key, auth.actor)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Started {
            run_id: ins.run_id.to_string(),
            duplicate: ins.duplicate,
        }),
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

/// The store filter for run lists; `None` when the flow does not exist (no runs match).
async fn run_filter(
    s: &AppState,
    scope: weft_types::Scope,
    flow: Option<&str>,
    status: Option<&str>,
    since: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Option<RunFilter>, Problem> {
    let flow_id = match crate::body::flow_filter(s, scope, flow).await? {
        crate::body::FlowFilter::Any => None,
        crate::body::FlowFilter::Flow(f) => Some(f),
        crate::body::FlowFilter::Unknown => return Ok(None),
    };
    let status = status
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
    let since = since
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
    let before = cursor
        .filter(|x| !x.is_empty())
        .map(|c| parse_id::<RunId>("cursor", c))
        .transpose()?;
    Ok(Some(RunFilter {
        flow_id,
        status,
        since,
        before,
        limit,
    }))
}

/// List runs, newest first. `status=failed` is the dead-letter view: runs whose steps
/// exhausted their retries (or failed for good); `POST …/runs/replay` replays them in bulk.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/runs", tag = "runs",
    params(WsParam,
        ("flow" = Option<String>, Query, description = "flow id or name"),
        ("status" = Option<String>, Query, description = "queued, running, waiting, succeeded, failed or cancelled"),
        ("since" = Option<String>, Query, description = "RFC 3339: runs created at or after"),
        ("limit" = Option<u32>, Query, description = "page size, 1-500"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<RunOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: Ws<Read>,
    RawQuery(q): RawQuery,
) -> Result<Json<Page<RunOut>>, Problem> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let Some(filter) = run_filter(
        &s,
        auth.scope,
        q.flow.as_deref(),
        q.status.as_deref(),
        q.since.as_deref(),
        q.cursor.as_deref(),
        limit + 1,
    )
    .await?
    else {
        return Ok(Json(Page {
            items: vec![],
            next_cursor: None,
        }));
    };
    let mut runs = s.engine.store().list_runs(auth.scope, filter).await?;
    let next = crate::body::cut_page(&mut runs, limit, |r| r.id.to_string());
    let items = runs.iter().map(|r| RunOut::new(r, None)).collect();
    Ok(Json(Page {
        items,
        next_cursor: next,
    }))
}

/// A run with its steps.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/runs/{run}", tag = "runs",
    params(WsParam, RunParam),
    responses((status = 200, body = RunOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn show(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
) -> Result<Json<RunOut>, Problem> {
    let (_, run) = path;
    let id: RunId = parse_id("run", &run)?;
    let (r, steps, counts) = s
        .engine
        .store()
        .get_run_summary(auth.scope, id)
        .await
        .map_err(|e| Problem::store(e, "run"))?;
    Ok(Json(RunOut::new(&r, Some((&steps, &counts)))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// A run's log lines after sequence `after`.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/runs/{run}/logs", tag = "runs",
    params(WsParam, RunParam,
        ("after" = Option<i64>, Query, description = "only lines after this seq"),
        ("limit" = Option<u32>, Query, description = "most lines, 1-5000")),
    responses((status = 200, body = LogPage), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn logs(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Json<LogPage>, Problem> {
    let (_, run) = path;
    let q: LogsQuery = parse_query(q.as_deref())?;
    let id: RunId = parse_id("run", &run)?;
    let store = s.engine.store();
    let (r, _, _) = store
        .get_run_summary(auth.scope, id)
        .await
        .map_err(|e| Problem::store(e, "run"))?;
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    let lines = store
        .run_logs(auth.scope, id, q.after.unwrap_or(0), limit)
        .await?;
    let next = lines.last().map(|l| l.seq);
    let items = lines.into_iter().map(LogOut::from).collect();
    Ok(Json(LogPage {
        items,
        next_cursor: next,
        run_status: r.status.as_str().into(),
    }))
}

/// Delete a finished run with its steps, logs and stored payloads; a run that has not finished
/// must be cancelled first (409).
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/runs/{run}", tag = "runs",
    params(WsParam, RunParam),
    responses((status = 204, description = "deleted"), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let (_, run) = path;
    let id: RunId = parse_id("run", &run)?;
    s.engine.delete_run(auth.scope, id, auth.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel a run that has not finished (a finished run is left as it is).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/runs/{run}/cancel", tag = "runs",
    params(WsParam, RunParam),
    responses((status = 200, body = RunStatusOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn cancel(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    Path(path): Path<(String, String)>,
) -> Result<Json<RunStatusOut>, Problem> {
    let (_, run) = path;
    let id: RunId = parse_id("run", &run)?;
    let status = s.engine.cancel_run(auth.scope, id, auth.actor).await?;
    Ok(Json(RunStatusOut {
        id: id.to_string(),
        status: status.as_str().into(),
    }))
}

/// The `{name}` path parameter of a signal.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct SignalParam {
    /// Signal name: the id of the `approval` / `wait_for_event` step it resumes (or its `event`).
    #[allow(dead_code)]
    name: String,
}

/// Send a signal to a run: resumes the `approval` or `wait_for_event` step waiting for this
/// name, with the body (any JSON, or nothing) as the signal's payload. For an approval,
/// `{approved: false, reason}` rejects. Single-use: the same name twice is a 409, and so is a
/// signal to a finished run. A signal that arrives before its step waits is kept for it.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/runs/{run}/signals/{name}", tag = "runs",
    params(WsParam, RunParam, SignalParam),
    request_body(content = Option<Object>, content_type = "application/json"),
    responses((status = 202, body = RunStatusOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn signal(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RunStatusOut>), Problem> {
    let (_, run, name) = path;
    let id: RunId = parse_id("run", &run)?;
    if !weft_engine::valid_signal_name(&name) {
        return Err(Problem::invalid(
            "name",
            "a signal name is 1-100 characters: letters, digits, '-', '_', '.' or ':' (the id of the step it resumes)",
        ));
    }
    let bytes = read_limited(body, s.opts.max_body_bytes).await?;
    let payload = if bytes.is_empty() {
        Value::Null
    } else {
        require_json(&headers, &bytes)?;
        parse_json(&bytes)?
    };
    let status = s
        .engine
        .signal_run(auth.scope, id, &name, payload, auth.actor)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RunStatusOut {
            id: id.to_string(),
            status: status.as_str().into(),
        }),
    ))
}

/// Retry a failed run in place: steps that succeeded keep their outputs; the failed step and
/// everything after it run again, with the same idempotency keys. 409 unless the run failed.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/runs/{run}/retry", tag = "runs",
    params(WsParam, RunParam),
    responses((status = 202, body = RunStatusOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn retry(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    Path(path): Path<(String, String)>,
) -> Result<(StatusCode, Json<RunStatusOut>), Problem> {
    let (_, run) = path;
    let id: RunId = parse_id("run", &run)?;
    s.engine.retry_run(auth.scope, id, auth.actor).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RunStatusOut {
            id: id.to_string(),
            status: RunStatus::Queued.as_str().into(),
        }),
    ))
}

/// Body of a replay.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayIn {
    /// `pinned` (default: the version the run ran on) or `latest` (the published one).
    #[serde(default)]
    version: Option<String>,
}

/// Replay a run: a new run with the same trigger event, on the pinned version or the latest
/// published one. Answers the new run's id.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/runs/{run}/replay", tag = "runs",
    params(WsParam, RunParam),
    request_body(content = Option<ReplayIn>, content_type = "application/json"),
    responses((status = 202, body = Started), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn replay(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Started>), Problem> {
    let (_, run) = path;
    let id: RunId = parse_id("run", &run)?;
    let bytes = read_limited(body, s.opts.max_body_bytes).await?;
    let input: ReplayIn = if bytes.is_empty() {
        ReplayIn { version: None }
    } else {
        require_json(&headers, &bytes)?;
        parse_json(&bytes)?
    };
    let version = match input.version.as_deref() {
        None | Some("pinned") => weft_engine::ReplayVersion::Pinned,
        Some("latest") => weft_engine::ReplayVersion::Latest,
        Some(_) => {
            return Err(Problem::invalid("version", "must be `pinned` or `latest`"));
        }
    };
    let ins = s
        .engine
        .replay_run(auth.scope, id, version, auth.actor)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Started {
            run_id: ins.run_id.to_string(),
            duplicate: false,
        }),
    ))
}

/// Body of a bulk replay.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkReplayIn {
    /// Only runs of this flow (id or name).
    #[serde(default)]
    flow: Option<String>,
    /// Only runs with this status (default `failed`: the dead letters).
    #[serde(default)]
    status: Option<String>,
    /// Only runs created at or after this RFC 3339 time.
    #[serde(default)]
    since: Option<String>,
    /// `next_cursor` of the previous batch.
    #[serde(default)]
    cursor: Option<String>,
    /// Runs replayed in this batch, 1-100 (default 50).
    #[serde(default)]
    limit: Option<usize>,
    /// `pinned` (default) or `latest`.
    #[serde(default)]
    version: Option<String>,
}

/// One run of a bulk replay: replayed, or why not.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Replayed {
    /// The original run.
    from: String,
    /// The new run (absent when this one could not be replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    /// Why this run could not be replayed (the others in the batch still were).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Replay matching runs (by default the failed ones: the dead letters) in batches, newest
/// first: each becomes a new run with the same trigger event. Call again with `next_cursor`
/// until it is null; each batch reports what it replayed, and for a run it could not replay,
/// why (the CLI prints the progress).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/runs/replay", tag = "runs",
    params(WsParam),
    request_body(content = Option<BulkReplayIn>, content_type = "application/json"),
    responses((status = 202, body = Page<Replayed>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn replay_many(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Page<Replayed>>), Problem> {
    let bytes = read_limited(body, s.opts.max_body_bytes).await?;
    let q: BulkReplayIn = if bytes.is_empty() {
        parse_json(b"{}")?
    } else {
        require_json(&headers, &bytes)?;
        parse_json(&bytes)?
    };
    let limit = match q.limit {
        None => 50,
        Some(n) if (1..=100).contains(&n) => n,
        Some(_) => return Err(Problem::invalid("limit", "must be between 1 and 100")),
    };
    let version = match q.version.as_deref() {
        None | Some("pinned") => weft_engine::ReplayVersion::Pinned,
        Some("latest") => weft_engine::ReplayVersion::Latest,
        Some(_) => return Err(Problem::invalid("version", "must be `pinned` or `latest`")),
    };
    let Some(filter) = run_filter(
        &s,
        auth.scope,
        q.flow.as_deref(),
        Some(q.status.as_deref().unwrap_or("failed")),
        q.since.as_deref(),
        q.cursor.as_deref(),
        limit + 1,
    )
    .await?
    else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(Page {
                items: vec![],
                next_cursor: None,
            }),
        ));
    };
    let mut runs = s.engine.store().list_runs(auth.scope, filter).await?;
    let next = crate::body::cut_page(&mut runs, limit, |r| r.id.to_string());
    let mut items = Vec::with_capacity(runs.len());
    // One run that cannot be replayed (its flow was deleted, the plan's quota is reached)
    // is reported in its place; the batch goes on, so what was replayed is never hidden
    // behind an error.
    for r in runs {
        let res = s
            .engine
            .replay_run(auth.scope, r.id, version, auth.actor.clone())
            .await;
        items.push(match res {
            Ok(ins) => Replayed {
                from: r.id.to_string(),
                run_id: Some(ins.run_id.to_string()),
                error: None,
            },
            Err(e) => Replayed {
                from: r.id.to_string(),
                run_id: None,
                error: Some(Problem::from(e).detail),
            },
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Page {
            items,
            next_cursor: next,
        }),
    ))
}
