//! Workspace events: `POST /api/v1/workspaces/{ws}/events` publishes one, which resumes the
//! runs whose `wait_for_event` step waits for it and starts the flows it triggers.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{RunsWrite, Ws};
use crate::body::{parse_json, read_limited, require_json};
use crate::dto::ProblemDoc;
use crate::flows::WsParam;
use crate::{AppState, Problem};

/// Body of an event.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventIn {
    /// Event name, e.g. `order.paid`.
    name: String,
    /// Correlation key: only waits with this key (or with none) are resumed.
    #[serde(default)]
    key: Option<String>,
    /// What the event carries (any JSON).
    #[serde(default)]
    data: Option<Value>,
    /// The event's id: publishing the same id again resumes and starts nothing more (the
    /// `Idempotency-Key` header does the same).
    #[serde(default)]
    id: Option<String>,
}

/// What publishing did.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EventOut {
    /// The event id.
    id: String,
    /// Runs that waited for the event and were resumed.
    resumed: Vec<String>,
    /// Runs started by flows with an `event` trigger for it.
    started: Vec<String>,
}

/// Publish an event in the workspace: every run whose `wait_for_event` step waits for this name
/// (and key, when the step has one) resumes with the event as its output, and each flow whose
/// `event` trigger names it starts a run with `data` as `.trigger.body`. Idempotent by `id`.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/events", tag = "runs",
    params(WsParam, ("Idempotency-Key" = Option<String>, Header, description = "the event id, when the body has none")),
    request_body(content = EventIn, content_type = "application/json"),
    responses((status = 202, body = EventOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["runs:write"]), ("session" = ["runs:write"])))]
pub(crate) async fn publish(
    State(s): State<AppState>,
    auth: Ws<RunsWrite>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<EventOut>), Problem> {
    let bytes = read_limited(body, s.opts.max_body_bytes).await?;
    require_json(&headers, &bytes)?;
    let ev: EventIn = parse_json(&bytes)?;
    let id = match ev.id {
        Some(id) => Some(id),
        None => match headers.get("idempotency-key") {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| {
                        Problem::invalid("Idempotency-Key", "must be visible ASCII characters")
                    })?
                    .to_string(),
            ),
            None => None,
        },
    };
    let out = s
        .engine
        .publish_event(
            auth.scope,
            weft_engine::NewEvent {
                id,
                name: ev.name,
                key: ev.key,
                data: ev.data.unwrap_or(Value::Null),
                source: json!({"api": true}),
                depth: 0,
            },
            auth.actor,
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(EventOut {
            id: out.id,
            resumed: out.resumed.iter().map(|r| r.to_string()).collect(),
            started: out.started.iter().map(|r| r.to_string()).collect(),
        }),
    ))
}
