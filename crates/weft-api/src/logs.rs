//! Workspace-wide log search: `GET /api/v1/workspaces/{ws}/logs`.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use weft_store::{LogHit, LogQuery, RunEvent};
use weft_types::{RunId, RunStatus};

use crate::auth::{Read, Ws};
use crate::body::{FlowFilter, flow_filter, parse_id, parse_query};
use crate::dto::{Page, ProblemDoc};
use crate::flows::WsParam;
use crate::{AppState, Problem};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// A log line found by a search.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogHitOut {
    /// Sequence number.
    pub seq: i64,
    /// Time.
    pub ts: String,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// Step, if any.
    pub step: Option<String>,
    /// Text (secrets were redacted before it was stored).
    pub message: String,
    /// What the line records (see a run's logs).
    pub event: String,
    /// The run it belongs to.
    pub run_id: String,
    /// The run's flow.
    pub flow: String,
}

impl From<LogHit> for LogHitOut {
    fn from(h: LogHit) -> Self {
        LogHitOut {
            seq: h.line.seq,
            ts: weft_types::rfc3339(h.line.ts),
            level: h.line.level,
            step: h.line.step_id,
            message: h.line.message,
            event: h.line.event,
            run_id: h.run_id.to_string(),
            flow: h.flow,
        }
    }
}

fn time(field: &str, v: Option<&str>) -> Result<Option<i64>, Problem> {
    v.filter(|x| !x.is_empty())
        .map(|x| {
            weft_types::parse_rfc3339(x).ok_or_else(|| {
                Problem::invalid(field, "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")
            })
        })
        .transpose()
}

/// Search the log lines of every run of the workspace, newest first: by text
/// (case-insensitive), flow, run, step (a loop's step includes its items), level, event, the
/// run's status and a time range.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/logs", tag = "runs",
    params(WsParam,
        ("q" = Option<String>, Query, description = "text the line contains (case-insensitive, at most 200 characters)"),
        ("flow" = Option<String>, Query, description = "flow id or name"),
        ("run" = Option<String>, Query, description = "run id"),
        ("step" = Option<String>, Query, description = "step id (a loop's includes its items' lines)"),
        ("level" = Option<String>, Query, description = "info, warn or error"),
        ("event" = Option<String>, Query, description = "what the line records: RunStarted, StepStarted, StepSucceeded, StepRetrying, StepFailed, StepSkipped, StepWaiting, SignalReceived, RunSucceeded, RunFailed, RunCancelled, RunRetried or Log"),
        ("status" = Option<String>, Query, description = "the run's status"),
        ("since" = Option<String>, Query, description = "RFC 3339: lines at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339: lines before"),
        ("limit" = Option<u32>, Query, description = "page size, 1-500 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<LogHitOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn search(
    State(s): State<AppState>,
    auth: Ws<Read>,
    RawQuery(q): RawQuery,
) -> Result<Json<Page<LogHitOut>>, Problem> {
    let q: SearchQuery = parse_query(q.as_deref())?;
    let nonempty = |v: Option<String>| v.filter(|x| !x.is_empty());
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=500).contains(&n) => n,
        Some(_) => return Err(Problem::invalid("limit", "must be between 1 and 500")),
    };
    let text = nonempty(q.q);
    if text.as_ref().is_some_and(|t| t.chars().count() > 200) {
        return Err(Problem::invalid("q", "search for at most 200 characters"));
    }
    let level = nonempty(q.level);
    if level
        .as_deref()
        .is_some_and(|l| !matches!(l, "info" | "warn" | "error"))
    {
        return Err(Problem::invalid("level", "must be info, warn or error"));
    }
    let event = nonempty(q.event)
        .map(|e| {
            RunEvent::parse(&e).ok_or_else(|| {
                let names: Vec<&str> = RunEvent::ALL.iter().map(|e| e.as_str()).collect();
                Problem::invalid("event", format!("must be one of {}", names.join(", ")))
            })
        })
        .transpose()?;
    let status = nonempty(q.status)
        .map(|x| {
            RunStatus::parse(&x).ok_or_else(|| {
                Problem::invalid(
                    "status",
                    "must be one of queued, running, waiting, succeeded, failed, cancelled",
                )
            })
        })
        .transpose()?;
    let run = nonempty(q.run)
        .map(|r| parse_id::<RunId>("run", &r))
        .transpose()?;
    let before = nonempty(q.cursor)
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Problem::invalid("cursor", "must be the next_cursor of a page"))
        })
        .transpose()?;
    let since = time("since", q.since.as_deref())?;
    let until = time("until", q.until.as_deref())?;
    let flow_id = match flow_filter(&s, auth.scope, q.flow.as_deref()).await? {
        FlowFilter::Any => None,
        FlowFilter::Flow(f) => Some(f),
        FlowFilter::Unknown => {
            return Ok(Json(Page {
                items: vec![],
                next_cursor: None,
            }));
        }
    };
    let mut hits = s
        .engine
        .store()
        .search_logs(
            auth.scope,
            LogQuery {
                text,
                run,
                flow_id,
                step: nonempty(q.step),
                level,
                event,
                status,
                since,
                until,
                before,
                limit: limit + 1,
            },
        )
        .await?;
    let next = crate::body::cut_page(&mut hits, limit, |h| h.line.seq.to_string());
    Ok(Json(Page {
        items: hits.into_iter().map(LogHitOut::from).collect(),
        next_cursor: next,
    }))
}
