//! Instance-admin routes (`/api/v1/admin/*`): tenants and their plans.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use weft_store::{Limits, StoreError};
use weft_types::TenantId;

use crate::auth::InstanceAdmin;
use crate::body::{cut_page, json_body, parse_id, parse_query};
use crate::dto::*;
use crate::identity::check_email;
use crate::{AppState, Problem};

fn store_err(e: StoreError) -> Problem {
    Problem::store(e, "tenant")
}

fn limits(l: LimitsIo) -> Result<Limits, Problem> {
    for (name, v) in [
        ("runs_per_month", l.runs_per_month),
        ("active_flows", l.active_flows),
        ("concurrent_runs", l.concurrent_runs),
        ("webhook_rps", l.webhook_rps),
        ("stored_bytes", l.stored_bytes),
    ] {
        if v.is_some_and(|v| v < 0) {
            return Err(Problem::invalid(
                &format!("limits.{name}"),
                "must be 0 or more, or null for unlimited",
            ));
        }
    }
    Ok(Limits {
        runs_per_month: l.runs_per_month,
        active_flows: l.active_flows,
        concurrent_runs: l.concurrent_runs,
        webhook_rps: l.webhook_rps,
        stored_bytes: l.stored_bytes,
    })
}

/// The `{tenant}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TenantParam {
    /// Tenant id (`ten_…`).
    #[allow(dead_code)]
    tenant: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// Every tenant.
#[utoipa::path(get, path = "/api/v1/admin/tenants", tag = "admin",
    params(("limit" = Option<u32>, Query, description = "page size, 1-200"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<TenantOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = [])))]
pub(crate) async fn list_tenants(
    State(s): State<AppState>,
    _admin: InstanceAdmin,
    RawQuery(q): RawQuery,
) -> Result<Json<Page<TenantOut>>, Problem> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let mut ts = s
        .engine
        .store()
        .list_tenants(q.cursor, limit + 1)
        .await
        .map_err(store_err)?;
    let next = cut_page(&mut ts, limit, |t| t.id.to_string());
    Ok(Json(Page {
        items: ts.iter().map(TenantOut::from).collect(),
        next_cursor: next,
    }))
}

/// Create a tenant with its `default` workspace and owner; the owner key is in this answer only.
#[utoipa::path(post, path = "/api/v1/admin/tenants", tag = "admin",
    request_body(content = NewTenant, content_type = "application/json"),
    responses((status = 201, body = TenantCreated), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = [])))]
pub(crate) async fn create_tenant(
    State(s): State<AppState>,
    admin: InstanceAdmin,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<TenantCreated>), Problem> {
    let b: NewTenant = json_body(&headers, body, 16 * 1024).await?;
    if b.name.trim().is_empty() || b.name.len() > 200 || b.name.chars().any(char::is_control) {
        return Err(Problem::invalid(
            "name",
            "must be 1-200 printable characters",
        ));
    }
    let email = check_email("owner_email", &b.owner_email)?;
    let plan = b.limits.map(limits).transpose()?;
    let store = s.engine.store();
    let now = s.engine.clock().now_ms();
    let boot = store
        .create_tenant(&b.name, &email, plan.unwrap_or_default(), admin.actor, now)
        .await
        .map_err(store_err)?;
    let rec = store.get_tenant(boot.tenant).await.map_err(store_err)?;
    Ok((
        StatusCode::CREATED,
        Json(TenantCreated {
            tenant: TenantOut::from(&rec),
            workspace_id: boot.workspace.to_string(),
            owner_user_id: boot.owner.to_string(),
            owner_key: boot.owner_key,
        }),
    ))
}

async fn tenant_out(s: &AppState, id: TenantId) -> Result<TenantOut, Problem> {
    let store = s.engine.store();
    let rec = store.get_tenant(id).await.map_err(store_err)?;
    let u = store
        .usage(id, s.engine.clock().now_ms())
        .await
        .map_err(store_err)?;
    let mut out = TenantOut::from(&rec);
    out.usage = Some(UsageOut {
        month: u.month,
        runs_in_month: u.runs_in_month,
        stored_bytes: u.stored_bytes,
        active_flows: u.active_flows,
        running: u.running,
    });
    Ok(out)
}

/// A tenant, with its plan and usage.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant}", tag = "admin", params(TenantParam),
    responses((status = 200, body = TenantOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = [])))]
pub(crate) async fn show_tenant(
    State(s): State<AppState>,
    _admin: InstanceAdmin,
    Path(tenant): Path<String>,
) -> Result<Json<TenantOut>, Problem> {
    let id: TenantId = parse_id("tenant", &tenant)?;
    Ok(Json(tenant_out(&s, id).await?))
}

/// Change a tenant's plan limits or fair-share weight.
#[utoipa::path(patch, path = "/api/v1/admin/tenants/{tenant}", tag = "admin", params(TenantParam),
    request_body(content = TenantPatch, content_type = "application/json"),
    responses((status = 200, body = TenantOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = [])))]
pub(crate) async fn update_tenant(
    State(s): State<AppState>,
    admin: InstanceAdmin,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TenantOut>, Problem> {
    let id: TenantId = parse_id("tenant", &tenant)?;
    let b: TenantPatch = json_body(&headers, body, 16 * 1024).await?;
    if b.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
        return Err(Problem::invalid("weight", "must be 1-1000"));
    }
    let l = b.limits.map(limits).transpose()?;
    s.engine
        .store()
        .patch_tenant_plan(id, l, b.weight, admin.actor, s.engine.clock().now_ms())
        .await
        .map_err(store_err)?;
    s.engine.forget_plan(id);
    Ok(Json(tenant_out(&s, id).await?))
}
