//! Alert rules: `GET|POST /api/v1/workspaces/{ws}/alerts`, `DELETE …/alerts/{name}`, and a
//! rule's notifications, `GET …/alerts/{name}/deliveries`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::{Read, WorkspaceManage, Ws};
use crate::body::json_body;
use crate::dto::{Page, ProblemDoc};
use crate::flows::WsParam;
use crate::{AppState, Problem};

/// An alert rule.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertRuleOut {
    /// Name, unique in the workspace.
    pub name: String,
    /// `run_failed`, `error_new`, `error_spike`, `run_stuck`, `credential_reauth` or
    /// `quota_near`.
    pub on: String,
    /// The rule as written: `{on, flow, stuck_after, quiet, notify}`.
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Created.
    pub created_at: String,
}

impl From<weft_store::AlertRuleRecord> for AlertRuleOut {
    fn from(r: weft_store::AlertRuleRecord) -> Self {
        AlertRuleOut {
            name: r.name,
            on: r.spec["on"].as_str().unwrap_or_default().to_string(),
            spec: r.spec,
            created_at: weft_types::rfc3339(r.created_at),
        }
    }
}

/// A notification of a rule.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDeliveryOut {
    /// Its id (also the signed webhook's `webhook-id` suffix).
    pub id: i64,
    /// What makes occurrences one incident (`flow:NAME`, `error:FINGERPRINT`, a run id,
    /// `credential:NAME`).
    pub incident: String,
    /// What was (or will be) sent.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Queued.
    pub created_at: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Delivered, if it was.
    pub delivered_at: Option<String>,
    /// The last failed attempt's reason.
    pub error: Option<String>,
}

/// The `{name}` path parameter of an alert rule.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RuleParam {
    /// Rule name.
    #[allow(dead_code)]
    name: String,
}

/// The workspace's alert rules, by name.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/alerts", tag = "workspaces", params(WsParam),
    responses((status = 200, body = Page<AlertRuleOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: Ws<Read>,
) -> Result<Json<Page<AlertRuleOut>>, Problem> {
    let rules = s
        .engine
        .store()
        .list_alert_rules(auth.scope)
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    Ok(Json(Page {
        items: rules.into_iter().map(AlertRuleOut::from).collect(),
        next_cursor: None,
    }))
}

/// Create an alert rule: `{name, on, flow?, stuck_after?, threshold?, window?, percent?, quiet?,
/// notify}`
/// where `notify` is
/// `{webhook: {url, credential?}}` (signed with Standard Webhooks by a `webhook` credential's
/// secret), `{slack: {credential, channel}}` or `{email: {credential, to}}`.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/alerts", tag = "workspaces", params(WsParam),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 201, body = AlertRuleOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["workspace:manage"]), ("session" = ["workspace:manage"])))]
pub(crate) async fn create(
    State(s): State<AppState>,
    auth: Ws<WorkspaceManage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<AlertRuleOut>), Problem> {
    let b: serde_json::Map<String, Value> = json_body(&headers, body, 16 * 1024).await?;
    let mut spec = b;
    let name = match spec.remove("name") {
        Some(Value::String(n)) => n,
        _ => return Err(Problem::invalid("name", "give the rule a name (a string)")),
    };
    let rule = s
        .engine
        .create_alert_rule(auth.scope, &name, Value::Object(spec), auth.actor)
        .await?;
    Ok((StatusCode::CREATED, Json(AlertRuleOut::from(rule))))
}

/// Delete an alert rule with its open incidents and undelivered notifications.
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/alerts/{name}", tag = "workspaces", params(WsParam, RuleParam),
    responses((status = 204, description = "deleted"), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["workspace:manage"]), ("session" = ["workspace:manage"])))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    auth: Ws<WorkspaceManage>,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let (_, name) = path;
    s.engine
        .store()
        .delete_alert_rule(auth.scope, &name, auth.actor, s.engine.clock().now_ms())
        .await
        .map_err(|e| Problem::store(e, "alert rule"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A rule's notifications, newest first (the last 100): delivered, waiting for a retry, or
/// given up with their error.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/alerts/{name}/deliveries", tag = "workspaces", params(WsParam, RuleParam),
    responses((status = 200, body = Page<AlertDeliveryOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn deliveries(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
) -> Result<Json<Page<AlertDeliveryOut>>, Problem> {
    let (_, name) = path;
    let store = s.engine.store();
    let rules = store
        .list_alert_rules(auth.scope)
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    if !rules.iter().any(|r| r.name == name) {
        return Err(Problem::store(
            weft_store::StoreError::NotFound,
            "alert rule",
        ));
    }
    let items = store
        .alert_deliveries(auth.scope, &name, 100)
        .await
        .map_err(|e| Problem::store(e, "alert rule"))?;
    Ok(Json(Page {
        items: items
            .into_iter()
            .map(|d| AlertDeliveryOut {
                id: d.seq,
                incident: d.incident,
                payload: d.payload,
                created_at: weft_types::rfc3339(d.created_at),
                attempts: d.attempts,
                delivered_at: d.delivered_at.map(weft_types::rfc3339),
                error: d.error,
            })
            .collect(),
        next_cursor: None,
    }))
}
