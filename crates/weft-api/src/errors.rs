//! Error analytics: `GET /api/v1/workspaces/{ws}/errors`, failed steps grouped by fingerprint.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use weft_store::ErrorGroup;

use crate::auth::{Read, Ws};
use crate::body::{FlowFilter, flow_filter, parse_query};
use crate::dto::{Page, ProblemDoc};
use crate::flows::WsParam;
use crate::{AppState, Problem};

const DAY_MS: i64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorsQuery {
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    days: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// Failures on one day.
#[derive(Debug, Serialize, ToSchema)]
pub struct DayCount {
    /// The day (UTC), `YYYY-MM-DD`.
    pub day: String,
    /// Failures that day.
    pub count: i64,
}

/// A group of failed steps with one fingerprint.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorGroupOut {
    /// The group's id: a digest of flow, step, connector and class.
    pub fingerprint: String,
    /// Flow name.
    pub flow: String,
    /// Flow id.
    pub flow_id: String,
    /// Step id (a loop's nested step as `loop.step`).
    pub step: String,
    /// The action's connector, or `none`.
    pub connector: String,
    /// `auth`, `rate_limited`, `timeout`, `transient` (5xx, connection), `permanent`,
    /// `validation`, `expression` or `code`.
    pub class: String,
    /// The latest error message.
    pub message: String,
    /// Failures in the group.
    pub count: i64,
    /// First failure.
    pub first_seen: String,
    /// Latest failure.
    pub last_seen: String,
    /// A run that failed this way (the latest).
    pub sample_run: String,
    /// Failures per day over the last `days` days, oldest first (days without any left out).
    pub trend: Vec<DayCount>,
}

impl From<ErrorGroup> for ErrorGroupOut {
    fn from(g: ErrorGroup) -> Self {
        ErrorGroupOut {
            fingerprint: g.fingerprint,
            flow: g.flow_name,
            flow_id: g.flow_id.to_string(),
            step: g.step_id,
            connector: g.connector,
            class: g.class,
            message: g.message,
            count: g.count,
            first_seen: weft_types::rfc3339(g.first_seen),
            last_seen: weft_types::rfc3339(g.last_seen),
            sample_run: g.sample_run.to_string(),
            trend: g
                .trend
                .into_iter()
                .map(|(day, count)| DayCount {
                    day: weft_types::rfc3339(day * DAY_MS)
                        .get(..10)
                        .unwrap_or_default()
                        .to_string(),
                    count,
                })
                .collect(),
        }
    }
}

/// Failed steps grouped by fingerprint (flow, step, connector, error class), the most
/// recently seen first: each group's count, first and last seen, latest message, a sample run
/// and its per-day trend.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/errors", tag = "runs",
    params(WsParam,
        ("flow" = Option<String>, Query, description = "flow id or name"),
        ("since" = Option<String>, Query, description = "RFC 3339: groups seen at or after"),
        ("days" = Option<u32>, Query, description = "days of trend, 1-90 (default 7)"),
        ("limit" = Option<u32>, Query, description = "page size, 1-200 (default 50)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<ErrorGroupOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: Ws<Read>,
    RawQuery(q): RawQuery,
) -> Result<Json<Page<ErrorGroupOut>>, Problem> {
    let q: ErrorsQuery = parse_query(q.as_deref())?;
    let limit = match q.limit {
        None => 50,
        Some(n) if (1..=200).contains(&n) => n,
        Some(_) => return Err(Problem::invalid("limit", "must be between 1 and 200")),
    };
    let days = match q.days {
        None => 7,
        Some(n) if (1..=90).contains(&n) => n,
        Some(_) => return Err(Problem::invalid("days", "must be between 1 and 90")),
    };
    let since = match q.since.as_deref().filter(|x| !x.is_empty()) {
        None => 0,
        Some(x) => weft_types::parse_rfc3339(x).ok_or_else(|| {
            Problem::invalid(
                "since",
                "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
            )
        })?,
    };
    let before = match q.cursor.as_deref().filter(|x| !x.is_empty()) {
        None => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(at, fp)| Some((at.parse::<i64>().ok()?, fp.to_string())))
                .filter(|(_, fp)| !fp.is_empty() && fp.len() <= 64)
                .ok_or_else(|| Problem::invalid("cursor", "must be the next_cursor of a page"))?,
        ),
    };
    let flow = match flow_filter(&s, auth.scope, q.flow.as_deref()).await? {
        FlowFilter::Any => None,
        FlowFilter::Flow(f) => Some(f),
        FlowFilter::Unknown => {
            return Ok(Json(Page {
                items: vec![],
                next_cursor: None,
            }));
        }
    };
    let now = s.engine.clock().now_ms();
    let trend_from = (now.div_euclid(DAY_MS) - (days - 1)) * DAY_MS;
    let mut groups = s
        .engine
        .store()
        .list_errors(auth.scope, flow, since, trend_from, before, limit + 1)
        .await?;
    let next = crate::body::cut_page(&mut groups, limit, |g| {
        format!("{}:{}", g.last_seen, g.fingerprint)
    });
    Ok(Json(Page {
        items: groups.into_iter().map(ErrorGroupOut::from).collect(),
        next_cursor: next,
    }))
}
