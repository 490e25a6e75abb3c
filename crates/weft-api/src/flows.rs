//! Flow routes: create / new version, list, show, versions, publish, delete; the connector catalog.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_store::FlowRecord;
use weft_types::Scope;

use crate::auth::WsAuth;
use crate::body::{media_type, parse_json, parse_query, read_limited, require_json};
use crate::{AppState, Problem};

/// The flow shape of PRODUCT.md.
pub(crate) async fn flow_json(
    s: &AppState,
    scope: Scope,
    f: &FlowRecord,
) -> Result<Value, Problem> {
    let v = s
        .engine
        .store()
        .flow_version(scope, f.id, f.latest_version)
        .await
        .map_err(|e| Problem::from(weft_engine::EngineError::from(e)))?;
    let is_webhook = v.definition.pointer("/trigger/webhook").is_some();
    Ok(json!({
        "id": f.id.to_string(),
        "name": f.name,
        "version": f.latest_version,
        "published_version": f.published_version,
        "hook_id": is_webhook.then(|| f.hook_id.to_string()),
        "hook_url": is_webhook.then(|| format!("{}/hooks/{}", s.opts.public_url, f.hook_id)),
        "definition": v.definition,
        "created_at": weft_types::rfc3339(f.created_at),
        "updated_at": weft_types::rfc3339(f.updated_at),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    #[serde(default)]
    draft: Option<bool>,
}

/// `POST /flows`: the body is the flow definition (JSON, or YAML with a YAML content type), or
/// `{definition, draft}`. Creates the flow or saves a new version; publishes unless draft.
pub(crate) async fn create(
    State(s): State<AppState>,
    auth: WsAuth,
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
    let rec = s.engine.apply_flow(auth.scope, def, draft).await?;
    let status = if rec.latest_version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(flow_json(&s, auth.scope, &rec).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// `GET /flows`.
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: WsAuth,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, Problem> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let mut flows = s
        .engine
        .store()
        .list_flows(auth.scope, q.cursor, limit + 1)
        .await
        .map_err(|e| Problem::from(weft_engine::EngineError::from(e)))?;
    let next = crate::body::cut_page(&mut flows, limit, |f| f.name.clone());
    let mut items = Vec::new();
    for f in &flows {
        items.push(flow_json(&s, auth.scope, f).await?);
    }
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

/// `GET /flows/{flow}` (id or name).
pub(crate) async fn show(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, flow)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let rec = s.engine.get_flow(auth.scope, &flow).await?;
    Ok(Json(flow_json(&s, auth.scope, &rec).await?))
}

/// `DELETE /flows/{flow}`.
pub(crate) async fn delete(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, flow)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    s.engine.delete_flow(auth.scope, &flow).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /flows/{flow}/versions`.
pub(crate) async fn versions(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, flow)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let rec = s.engine.get_flow(auth.scope, &flow).await?;
    let vs = s
        .engine
        .store()
        .list_versions(auth.scope, rec.id)
        .await
        .map_err(|e| Problem::from(weft_engine::EngineError::from(e)))?;
    let items: Vec<Value> = vs
        .into_iter()
        .map(|v| {
            json!({
                "version": v.version,
                "published": Some(v.version) == rec.published_version,
                "definition": v.definition,
                "created_at": weft_types::rfc3339(v.created_at),
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(default)]
    version: Option<i64>,
}

/// `POST /flows/{flow}/publish` with optional `{version}` (default: the latest).
pub(crate) async fn publish(
    State(s): State<AppState>,
    auth: WsAuth,
    Path((_, flow)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let bytes = read_limited(body, 64 * 1024).await?;
    require_json(&headers, &bytes)?;
    let b: PublishBody = if bytes.is_empty() {
        PublishBody::default()
    } else {
        parse_json(&bytes)?
    };
    let rec = s.engine.publish(auth.scope, &flow, b.version).await?;
    Ok(Json(flow_json(&s, auth.scope, &rec).await?))
}

/// `GET /api/v1/connectors`: the catalog.
pub(crate) async fn connectors() -> Json<Value> {
    let items: Vec<Value> = weft_connectors::builtin_actions()
        .iter()
        .map(|a| json!({"connector": a.connector, "action": a.action, "version": a.version, "description": a.description}))
        .collect();
    Json(json!({"items": items, "next_cursor": null}))
}
