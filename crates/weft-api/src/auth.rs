//! Authentication and authorization in one place.
//!
//! A workspace route takes a [`Ws<P>`] extractor whose type parameter names the permission it
//! needs. The extractor authenticates the caller (API key or session cookie), resolves the
//! workspace in the path — answering 404, exactly like a missing workspace, when the caller
//! has no access to it — checks CSRF on cookie-authenticated writes, and asks the one
//! permission matrix ([`Role::allows`]) whether the caller's role holds `P`. Handlers never
//! check roles themselves.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use weft_store::{Actor, KeyIdentity, SessionRecord, hash_secret};
use weft_types::{Permission, Role, Scope, UserId};

use crate::{AppState, Problem};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "weft_session";
/// Header a cookie-authenticated write must carry, equal to the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY_MS: i64 = 60_000;

/// A permission named at the type level, so a route's need is part of its signature.
pub trait Perm: Send + Sync + 'static {
    /// The permission.
    const P: Permission;
}

macro_rules! perms {
    ($($name:ident => $p:ident),* $(,)?) => {$(
        /// Marker for [`Permission::$p`].
        #[derive(Debug)]
        pub struct $name;
        impl Perm for $name {
            const P: Permission = Permission::$p;
        }
    )*};
}

perms! {
    Read => Read,
    FlowsWrite => FlowsWrite,
    RunsWrite => RunsWrite,
    KeysManage => KeysManage,
    MembersManage => MembersManage,
    AuditRead => AuditRead,
    WorkspaceManage => WorkspaceManage,
    CredentialsWrite => CredentialsWrite,
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    /// An API key (scoped to one workspace).
    Key(KeyIdentity),
    /// A browser session (a user, in the workspaces they are a member of).
    Session {
        /// The session.
        session: SessionRecord,
        /// A short, non-secret reference to the session for the audit trail.
        reference: String,
    },
}

impl Principal {
    /// The user behind the call, if known.
    pub(crate) fn user(&self) -> Option<UserId> {
        match self {
            Principal::Key(k) => k.user,
            Principal::Session { session, .. } => Some(session.user_id),
        }
    }

    /// The audit actor for this caller.
    pub(crate) fn actor(&self, request_id: Option<String>) -> Actor {
        match self {
            Principal::Key(k) => Actor {
                kind: "key",
                id: k.key_id.to_string(),
                via: Some(format!("key:{}", k.key_id)),
                request_id,
            },
            Principal::Session { session, reference } => Actor {
                kind: "user",
                id: session.user_id.to_string(),
                via: Some(format!("session:{reference}")),
                request_id,
            },
        }
    }
}

fn unauthenticated(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
}

/// The bearer token of the request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The session cookie's secret, if sent.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// The request id set by the request-id layer.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect())
}

/// The client's address (from the connection; absent in in-process tests).
pub(crate) fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Authenticates the request: a bearer API key wins over a session cookie.
pub(crate) async fn authenticate(parts: &Parts, s: &AppState) -> Result<Principal, Problem> {
    let now = s.engine.clock().now_ms();
    if let Some(token) = bearer(&parts.headers) {
        if !token.starts_with("wft_") || token.len() > 200 {
            return Err(unauthenticated(
                "the API key is malformed; keys look like `wft_…`",
            ));
        }
        let ident = s
            .engine
            .store()
            .resolve_key(token, now)
            .await?
            .ok_or_else(|| unauthenticated("the API key is not valid, was revoked or expired"))?;
        if ident.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY_MS) {
            // Best effort and off the request path: a lost touch only delays `last_used_at`.
            let (store, scope, key) = (s.engine.store().clone(), ident.scope, ident.key_id);
            tokio::spawn(async move {
                let _ = store.touch_key(scope, key, now).await;
            });
        }
        return Ok(Principal::Key(ident));
    }
    if let Some(secret) = session_cookie(&parts.headers) {
        let hash = hash_secret(&secret);
        let reference: String = hash.chars().take(12).collect();
        let session = s
            .engine
            .store()
            .resolve_session(hash, now)
            .await?
            .ok_or_else(|| unauthenticated("the session expired or was ended; log in again"))?;
        if is_write(&parts.method) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), session.csrf_token.as_bytes()) {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "csrf_failed",
                    "a write with a session cookie must send the session's CSRF token in X-CSRF-Token",
                ));
            }
        }
        return Ok(Principal::Session { session, reference });
    }
    Err(unauthenticated(
        "send an API key as `Authorization: Bearer wft_…`, or log in for a session cookie",
    ))
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Compares secrets without leaking where they differ through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request authenticated for the workspace named in its path and allowed to do `P`.
#[derive(Debug)]
pub struct Ws<P: Perm> {
    /// Tenant and workspace every store call of this request is scoped to.
    pub scope: Scope,
    /// The workspace's slug.
    pub slug: String,
    /// The caller's role in the workspace.
    pub role: Role,
    /// The caller, for the audit trail.
    pub actor: Actor,
    /// The user behind the caller, if known.
    pub user: Option<UserId>,
    _p: PhantomData<P>,
}

impl<P: Perm> FromRequestParts<AppState> for Ws<P> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Problem> {
        let params = RawPathParams::from_request_parts(parts, s)
            .await
            .map_err(|_| Problem::not_found("workspace"))?;
        let ws = params
            .iter()
            .find(|(k, _)| *k == "ws")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let principal = authenticate(parts, s).await?;
        let (scope, slug, role) = match &principal {
            Principal::Key(k) => {
                if ws != k.workspace_slug && ws != k.scope.workspace.to_string() {
                    return Err(Problem::not_found("workspace"));
                }
                (k.scope, k.workspace_slug.clone(), k.role)
            }
            Principal::Session { session, .. } => {
                let mine = s.engine.store().user_workspaces(session.user_id).await?;
                let mut hits = mine
                    .iter()
                    .filter(|(w, _)| w.slug == ws || w.scope.workspace.to_string() == ws);
                let Some((w, role)) = hits.next() else {
                    return Err(Problem::not_found("workspace"));
                };
                if hits.next().is_some() {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "ambiguous_workspace",
                        format!(
                            "you are a member of several workspaces named '{ws}' (in different tenants); address it by its id (wsp_…)"
                        ),
                    ));
                }
                (w.scope, w.slug.clone(), *role)
            }
        };
        if !role.allows(P::P) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "the role '{role}' may not do this; it needs '{}' or higher",
                    P::P.least_role()
                ),
            ));
        }
        Ok(Ws {
            scope,
            slug,
            role,
            actor: principal.actor(request_id(&parts.headers)),
            user: principal.user(),
            _p: PhantomData,
        })
    }
}

/// Any authenticated caller (for routes outside a workspace, e.g. listing one's workspaces).
#[derive(Debug)]
pub(crate) struct Caller {
    /// Who.
    pub principal: Principal,
    /// Request id.
    pub request_id: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Problem> {
        Ok(Caller {
            principal: authenticate(parts, s).await?,
            request_id: request_id(&parts.headers),
        })
    }
}

/// The instance administrator (`Authorization: Bearer wfa_…`), for `/api/v1/admin/*`.
#[derive(Debug)]
pub(crate) struct InstanceAdmin {
    /// The audit actor.
    pub actor: Actor,
}

/// Instance setting holding the hash of the admin token.
pub const ADMIN_TOKEN_SETTING: &str = "admin_token_hash";

impl FromRequestParts<AppState> for InstanceAdmin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Problem> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            unauthenticated("send the instance admin token as `Authorization: Bearer wfa_…`")
        })?;
        if !token.starts_with("wfa_") || token.len() > 200 {
            // A workspace key is not an admin credential; say so without revealing anything.
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs the instance admin token (wfa_…)",
            ));
        }
        let expected = match &s.opts.admin_token_hash {
            Some(h) => Some(h.clone()),
            None => s.engine.store().setting(ADMIN_TOKEN_SETTING).await?,
        };
        let Some(expected) = expected else {
            return Err(unauthenticated(
                "no instance admin token is configured; set WEFT_ADMIN_TOKEN or run `weft admin token`",
            ));
        };
        let got = hash_secret(token);
        if !constant_time_eq(got.as_bytes(), expected.as_bytes()) {
            return Err(unauthenticated("the instance admin token is not valid"));
        }
        Ok(InstanceAdmin {
            actor: Actor {
                kind: "admin",
                id: "instance-admin".into(),
                via: Some("admin-token".into()),
                request_id: request_id(&parts.headers),
            },
        })
    }
}
