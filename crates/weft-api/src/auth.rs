//! Authentication and authorization in one place: the [`WsAuth`] extractor resolves the API key,
//! checks it belongs to the workspace in the path (404 otherwise, exactly like a missing one),
//! and checks the role allows the request's method.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use weft_types::Scope;

use crate::{AppState, Problem};

/// Roles from weakest to strongest.
const ROLES: [&str; 4] = ["viewer", "editor", "admin", "owner"];

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap_or(0)
}

/// A request authenticated for the workspace named in its path.
#[derive(Debug, Clone)]
pub struct WsAuth {
    /// Tenant and workspace every store call of this request is scoped to.
    pub scope: Scope,
    /// The caller's role (for handlers that need more than the method-level check).
    #[allow(dead_code)]
    pub role: String,
}

impl FromRequestParts<AppState> for WsAuth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Problem::not_found("workspace"))?;
        let ws = params
            .iter()
            .find(|(k, _)| *k == "ws")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "send an API key as `Authorization: Bearer wft_…`",
                )
            })?;
        if !token.starts_with("wft_") || token.len() > 200 {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the API key is not valid",
            ));
        }
        let ident = state
            .engine
            .store()
            .resolve_key(token)
            .await
            .map_err(|e| Problem::from(weft_engine::EngineError::Store(e)))?
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "the API key is not valid or was revoked",
                )
            })?;
        if ws != ident.workspace_slug && ws != ident.scope.workspace.to_string() {
            return Err(Problem::not_found("workspace"));
        }
        let needed = if parts.method == Method::GET || parts.method == Method::HEAD {
            "viewer"
        } else {
            "editor"
        };
        if rank(&ident.role) < rank(needed) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "the role '{}' may not do this; it needs '{needed}' or higher",
                    ident.role
                ),
            ));
        }
        Ok(WsAuth {
            scope: ident.scope,
            role: ident.role,
        })
    }
}
