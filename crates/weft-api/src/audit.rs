//! The audit trail: list a workspace's (or, for owners, the tenant's) entries, and verify the chain.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use serde::Deserialize;
use weft_types::Permission;

use crate::auth::{AuditRead, Ws};
use crate::body::parse_query;
use crate::dto::{AuditOut, AuditVerifyOut, Page, ProblemDoc};
use crate::flows::WsParam;
use crate::{AppState, Problem};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// Audit entries, newest first: this workspace's, or with `scope=tenant` (owners) the tenant's.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/audit", tag = "audit",
    params(WsParam,
        ("scope" = Option<String>, Query, description = "`workspace` (default) or `tenant` (owners only)"),
        ("limit" = Option<u32>, Query, description = "page size, 1-1000"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = Page<AuditOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["audit:read"]), ("session" = ["audit:read"])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: Ws<AuditRead>,
    RawQuery(q): RawQuery,
) -> Result<Json<Page<AuditOut>>, Problem> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let tenant_owner = match auth.user {
        Some(u) if auth.role.allows(Permission::TenantManage) => {
            s.engine
                .store()
                .is_tenant_owner(auth.scope.tenant, u)
                .await?
        }
        _ => false,
    };
    let workspace = match q.scope.as_deref().unwrap_or("workspace") {
        "workspace" => Some(auth.scope.workspace),
        "tenant" if tenant_owner => None,
        "tenant" => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the tenant-wide audit trail is for the tenant's owners (an owner key or session of one)",
            ));
        }
        _ => return Err(Problem::invalid("scope", "must be workspace or tenant")),
    };
    let before = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            Problem::invalid("cursor", "must be a next_cursor from a previous page")
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut entries = s
        .engine
        .store()
        .list_audit(auth.scope.tenant, workspace, before, limit + 1)
        .await?;
    let next = crate::body::cut_page(&mut entries, limit, |e| e.seq.to_string());
    Ok(Json(Page {
        items: entries.into_iter().map(AuditOut::from).collect(),
        next_cursor: next,
    }))
}

/// Checks the tenant's whole audit chain and names the first edited, removed or inserted entry.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/audit/verify", tag = "audit", params(WsParam),
    responses((status = 200, body = AuditVerifyOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["audit:read"]), ("session" = ["audit:read"])))]
pub(crate) async fn verify(
    State(s): State<AppState>,
    auth: Ws<AuditRead>,
) -> Result<Json<AuditVerifyOut>, Problem> {
    let c = s.engine.store().verify_audit(auth.scope.tenant).await?;
    Ok(Json(AuditVerifyOut {
        ok: c.broken.is_none(),
        entries: c.entries,
        broken_seq: c.broken.as_ref().map(|b| b.0),
        reason: c.broken.map(|b| b.1),
    }))
}
