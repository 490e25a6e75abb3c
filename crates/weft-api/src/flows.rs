//! Flow routes: create / new version, list, show, versions, publish, delete, poll state and
//! backfill; the connector catalog.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;
use weft_store::FlowRecord;
use weft_types::Scope;

use crate::auth::{FlowsWrite, Read, Ws};
use crate::body::{media_type, parse_json, parse_query, read_limited, require_json};
use crate::dto::{
    BackfillIn, ConnectorOut, FlowOut, FlowVersionOut, Page, PollOut, ProblemDoc, PublishIn,
};
use crate::{AppState, Problem};

/// The flow shape of PRODUCT.md.
pub(crate) async fn flow_json(
    s: &AppState,
    scope: Scope,
    role: weft_types::Role,
    f: &FlowRecord,
) -> Result<FlowOut, Problem> {
    let v = s
        .engine
        .store()
        .flow_version(scope, f.id, f.latest_version)
        .await?;
    // A hook URL lets its holder start runs: it is shown to those who may change the flow.
    let is_webhook = v.definition.pointer("/trigger/webhook").is_some()
        && role.allows(weft_types::Permission::FlowsWrite);
    Ok(FlowOut {
        id: f.id.to_string(),
        name: f.name.clone(),
        version: f.latest_version,
        published_version: f.published_version,
        hook_id: is_webhook.then(|| f.hook_id.to_string()),
        hook_url: is_webhook.then(|| format!("{}/hooks/{}", s.opts.public_url, f.hook_id)),
        definition: v.definition,
        created_at: weft_types::rfc3339(f.created_at),
        updated_at: weft_types::rfc3339(f.updated_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    #[serde(default)]
    draft: Option<bool>,
}

/// Create a flow or save a new version of it.
///
/// The body is the flow definition (JSON, or YAML with a YAML content type), or
/// `{definition, draft}`. Publishes the new version unless `draft`.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/flows", tag = "flows",
    params(WsParam, ("draft" = Option<bool>, Query, description = "save without publishing")),
    request_body(content = Object, description = "a flow definition (see `weft flow schema`)", content_type = "application/json"),
    responses((status = 201, body = FlowOut, description = "created"), (status = 200, body = FlowOut, description = "new version saved"),
        (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["flows:write"]), ("session" = ["flows:write"])))]
pub(crate) async fn create(
    State(s): State<AppState>,
    auth: Ws<FlowsWrite>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let q: CreateQuery = parse_query(q.as_deref())?;
    let bytes = read_limited(body, s.opts.max_body_bytes.min(weft_flow::MAX_FLOW_BYTES)).await?;
    let mt = media_type(&headers).unwrap_or_else(|| "application/json".into());
    let mut draft = q.draft.unwrap_or(false);
    let def = if mt.contains("yaml") || mt == "text/plain" {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Problem::invalid("", "the flow file is not valid UTF-8"))?;
        weft_flow::parse_text(text)
            .map_err(|e| Problem::from(weft_engine::EngineError::Invalid(e)))?
    } else {
        require_json(&headers, &bytes)?;
        let mut v: Value = parse_json(&bytes)?;
        if let Some(obj) = v.as_object_mut()
            && obj.contains_key("definition")
        {
            if let Some(d) = obj.remove("draft") {
                draft = d
                    .as_bool()
                    .ok_or_else(|| Problem::invalid("draft", "must be true or false"))?;
            }
            if let Some(k) = obj.keys().find(|k| *k != "definition") {
                return Err(Problem::invalid(
                    k,
                    "unknown field; send the definition itself, or {definition, draft}",
                ));
            }
            v = obj.remove("definition").unwrap_or(Value::Null);
        }
        weft_flow::from_value(v).map_err(|e| Problem::from(weft_engine::EngineError::Invalid(e)))?
    };
    let rec = s
        .engine
        .apply_flow(auth.scope, def, draft, auth.actor)
        .await?;
    let status = if rec.latest_version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(flow_json(&s, auth.scope, auth.role, &rec).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// List flows, by name.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/flows", tag = "flows",
    params(WsParam, ("limit" = Option<u32>, Query, description = "page size, 1-200"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<FlowOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: Ws<Read>,
    RawQuery(q): RawQuery,
) -> Result<Json<Page<FlowOut>>, Problem> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let mut flows = s
        .engine
        .store()
        .list_flows(auth.scope, q.cursor, limit + 1)
        .await?;
    let next = crate::body::cut_page(&mut flows, limit, |f| f.name.clone());
    let mut items = Vec::new();
    for f in &flows {
        items.push(flow_json(&s, auth.scope, auth.role, f).await?);
    }
    Ok(Json(Page {
        items,
        next_cursor: next,
    }))
}

/// A flow, by id or name.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/flows/{flow}", tag = "flows",
    params(WsParam, FlowParam),
    responses((status = 200, body = FlowOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn show(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
) -> Result<Json<FlowOut>, Problem> {
    let (_, flow) = path;
    let rec = s.engine.get_flow(auth.scope, &flow).await?;
    Ok(Json(flow_json(&s, auth.scope, auth.role, &rec).await?))
}

/// Delete a flow (its runs stay in history).
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/flows/{flow}", tag = "flows",
    params(WsParam, FlowParam),
    responses((status = 204, description = "deleted"), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["flows:write"]), ("session" = ["flows:write"])))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    auth: Ws<FlowsWrite>,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let (_, flow) = path;
    s.engine.delete_flow(auth.scope, &flow, auth.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every saved version of a flow, newest first.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/flows/{flow}/versions", tag = "flows",
    params(WsParam, FlowParam),
    responses((status = 200, body = Page<FlowVersionOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn versions(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
) -> Result<Json<Page<FlowVersionOut>>, Problem> {
    let (_, flow) = path;
    let rec = s.engine.get_flow(auth.scope, &flow).await?;
    let vs = s.engine.store().list_versions(auth.scope, rec.id).await?;
    let items = vs
        .into_iter()
        .map(|v| FlowVersionOut {
            version: v.version,
            published: Some(v.version) == rec.published_version,
            definition: v.definition,
            created_at: weft_types::rfc3339(v.created_at),
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Publish a version (default: the newest); new webhook deliveries and runs use it.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/flows/{flow}/publish", tag = "flows",
    params(WsParam, FlowParam),
    request_body(content = Option<PublishIn>, content_type = "application/json"),
    responses((status = 200, body = FlowOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["flows:write"]), ("session" = ["flows:write"])))]
pub(crate) async fn publish(
    State(s): State<AppState>,
    auth: Ws<FlowsWrite>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FlowOut>, Problem> {
    let (_, flow) = path;
    let bytes = read_limited(body, 64 * 1024).await?;
    require_json(&headers, &bytes)?;
    let b: PublishIn = if bytes.is_empty() {
        PublishIn::default()
    } else {
        parse_json(&bytes)?
    };
    let rec = s
        .engine
        .publish(auth.scope, &flow, b.version, auth.actor)
        .await?;
    Ok(Json(flow_json(&s, auth.scope, auth.role, &rec).await?))
}

/// A flow's poll trigger: cursor, next poll, last error, counts.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/flows/{flow}/poll", tag = "flows",
    params(WsParam, FlowParam),
    responses((status = 200, body = PollOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn poll(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
) -> Result<Json<PollOut>, Problem> {
    let (_, flow) = path;
    Ok(Json(s.engine.poll_state(auth.scope, &flow).await?.into()))
}

/// Restart a poll trigger from `since`: it polls now, and the items it lists start runs
/// unless they were seen before.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/flows/{flow}/poll/backfill", tag = "flows",
    params(WsParam, FlowParam),
    request_body(content = Option<BackfillIn>, content_type = "application/json"),
    responses((status = 200, body = PollOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["flows:write"]), ("session" = ["flows:write"])))]
pub(crate) async fn backfill(
    State(s): State<AppState>,
    auth: Ws<FlowsWrite>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PollOut>, Problem> {
    let (_, flow) = path;
    let bytes = read_limited(body, 64 * 1024).await?;
    require_json(&headers, &bytes)?;
    let b: BackfillIn = if bytes.is_empty() {
        BackfillIn::default()
    } else {
        parse_json(&bytes)?
    };
    let st = s
        .engine
        .backfill_poll(auth.scope, &flow, b.since, auth.actor)
        .await?;
    Ok(Json(st.into()))
}

fn catalog() -> Page<ConnectorOut> {
    let items = weft_connectors::builtin_actions()
        .into_iter()
        .map(|a| ConnectorOut {
            connector: a.connector,
            action: a.action,
            version: a.version,
            description: a.description,
            credential: a.credential,
        })
        .collect();
    Page {
        items,
        next_cursor: None,
    }
}

/// The connector catalog (public: it holds no tenant data).
#[utoipa::path(get, path = "/api/v1/connectors", tag = "connectors",
    responses((status = 200, body = Page<ConnectorOut>)))]
pub(crate) async fn connectors() -> Json<Page<ConnectorOut>> {
    Json(catalog())
}

/// Actions usable in this workspace: the built-in connectors' and every installed version's.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/connectors", tag = "connectors",
    params(WsParam),
    responses((status = 200, body = Page<ConnectorOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn ws_connectors(
    State(s): State<AppState>,
    auth: Ws<Read>,
) -> Result<Json<Page<ConnectorOut>>, Problem> {
    let mut page = catalog();
    let installed = s.engine.catalog(auth.scope).await?;
    for m in installed.all_installed() {
        for a in &m.actions {
            page.items.push(ConnectorOut {
                connector: m.name.clone(),
                action: a.name.clone(),
                version: m.version.clone(),
                description: a.description.clone(),
                credential: a.credential.clone(),
            });
        }
    }
    Ok(Json(page))
}

/// The `{ws}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct WsParam {
    /// Workspace slug or id (`wsp_…`).
    #[allow(dead_code)]
    ws: String,
}

/// The `{flow}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct FlowParam {
    /// Flow id (`flw_…`) or name.
    #[allow(dead_code)]
    flow: String,
}
