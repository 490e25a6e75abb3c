//! Retention per workspace: `GET|PUT /api/v1/workspaces/{ws}/retention`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Read, WorkspaceManage, Ws};
use crate::body::json_body;
use crate::dto::ProblemDoc;
use crate::flows::WsParam;
use crate::{AppState, Problem};

/// Longest retention, in days (ten years).
const MAX_DAYS: i64 = 3650;

/// How long a workspace keeps finished runs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetentionDoc {
    /// Days a finished run (with its steps, logs and payloads) is kept, 1-3650; null keeps
    /// runs for ever.
    days: Option<i64>,
}

/// How long this workspace keeps finished runs.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/retention", tag = "workspaces", params(WsParam),
    responses((status = 200, body = RetentionDoc), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn get(
    State(s): State<AppState>,
    auth: Ws<Read>,
) -> Result<Json<RetentionDoc>, Problem> {
    let days = s
        .engine
        .store()
        .retention(auth.scope)
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    Ok(Json(RetentionDoc { days }))
}

/// Set how long this workspace keeps finished runs: older ones are deleted with their steps,
/// logs and payloads within ten minutes, and from then on as they expire.
#[utoipa::path(put, path = "/api/v1/workspaces/{ws}/retention", tag = "workspaces", params(WsParam),
    request_body(content = RetentionDoc, content_type = "application/json"),
    responses((status = 200, body = RetentionDoc), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["workspace:manage"]), ("session" = ["workspace:manage"])))]
pub(crate) async fn put(
    State(s): State<AppState>,
    auth: Ws<WorkspaceManage>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RetentionDoc>, Problem> {
    let b: RetentionDoc = json_body(&headers, body, 4096).await?;
    if b.days.is_some_and(|d| !(1..=MAX_DAYS).contains(&d)) {
        return Err(Problem::invalid(
            "days",
            format!("must be between 1 and {MAX_DAYS}, or null to keep runs for ever"),
        ));
    }
    s.engine
        .store()
        .set_retention(auth.scope, b.days, auth.actor, s.engine.clock().now_ms())
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    Ok(Json(RetentionDoc { days: b.days }))
}
