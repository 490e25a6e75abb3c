//! Identity routes: workspaces, API keys, members, and browser sessions (login/logout).

use std::net::IpAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use weft_store::{NewKey, hash_secret};
use weft_types::{KeyId, Permission, Role, UserId, random_secret};

use crate::auth::{
    Caller, KeysManage, MembersManage, Principal, Read, SESSION_COOKIE, WorkspaceManage, Ws,
    client_ip, session_cookie,
};
use crate::body::{json_body, parse_id};
use crate::dto::*;
use crate::flows::WsParam;
use crate::{AppState, Problem};

/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
const SMALL_BODY: usize = 16 * 1024;

fn parse_role(field: &str, s: &str) -> Result<Role, Problem> {
    Role::parse(s).ok_or_else(|| Problem::invalid(field, "must be viewer, editor, admin or owner"))
}

fn may_grant(mine: Role, other: Role) -> Result<(), Problem> {
    if mine.may_grant(other) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the role '{mine}' may not grant or change the role '{other}'"),
        ))
    }
}

/// Checks a slug: 1-64 of `a-z 0-9 -`, starting with a letter or digit.
fn check_slug(slug: &str) -> Result<(), Problem> {
    let ok = !slug.is_empty()
        && slug.len() <= 64
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Problem::invalid(
            "slug",
            "must be 1-64 characters of a-z, 0-9 and '-', not starting with '-'",
        ))
    }
}

/// Checks an email address enough to refuse garbage (delivery is not our job).
pub(crate) fn check_email(field: &str, email: &str) -> Result<String, Problem> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split('@').count() == 2
        && e.split('@').all(|p| !p.is_empty())
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(Problem::invalid(
            field,
            "must be an email address like name@example.com",
        ))
    }
}

fn check_name(field: &str, name: &str) -> Result<(), Problem> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Problem::invalid(
            field,
            "must be 1-200 printable characters",
        ));
    }
    Ok(())
}

// ---- workspaces ------------------------------------------------------------------------------

/// Workspaces the caller can see.
#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces",
    responses((status = 200, body = Page<WorkspaceOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn list_workspaces(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Page<WorkspaceOut>>, Problem> {
    let store = s.engine.store();
    let items = match &caller.principal {
        Principal::Key(k) => {
            let w = store
                .get_workspace(k.scope.tenant, &k.scope.workspace.to_string())
                .await
                .map_err(|e| Problem::store(e, "workspace"))?;
            vec![WorkspaceOut::new(&w, k.role)]
        }
        Principal::Session { session, .. } => store
            .user_workspaces(session.user_id)
            .await
            .map_err(|e| Problem::store(e, "workspace"))?
            .iter()
            .map(|(w, r)| WorkspaceOut::new(w, *r))
            .collect(),
    };
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Create a workspace in the caller's tenant (owners only); the caller's user owns it.
#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces",
    request_body(content = NewWorkspace, content_type = "application/json"),
    responses((status = 201, body = WorkspaceOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["workspace:manage"]), ("session" = ["workspace:manage"])))]
pub(crate) async fn create_workspace(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<WorkspaceOut>), Problem> {
    let b: NewWorkspace = json_body(&headers, body, SMALL_BODY).await?;
    check_slug(&b.slug)?;
    let name = b.name.clone().unwrap_or_else(|| b.slug.clone());
    check_name("name", &name)?;
    let forbidden = || {
        Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "creating a workspace is for the tenant's owners (an owner key or session of one)",
        )
    };
    let store = s.engine.store();
    let owned = match caller.principal.user() {
        Some(u) => store
            .owned_tenants(u)
            .await
            .map_err(|e| Problem::store(e, "tenant"))?,
        None => Vec::new(),
    };
    let tenant = match &caller.principal {
        Principal::Key(k) => {
            if b.tenant_id
                .as_deref()
                .is_some_and(|t| t != k.scope.tenant.to_string())
            {
                return Err(Problem::not_found("tenant"));
            }
            if !k.role.allows(Permission::WorkspaceManage) || !owned.contains(&k.scope.tenant) {
                return Err(forbidden());
            }
            k.scope.tenant
        }
        Principal::Session { .. } => match b.tenant_id.as_deref() {
            Some(t) => *owned
                .iter()
                .find(|x| x.to_string() == t)
                .ok_or_else(|| Problem::not_found("tenant"))?,
            None => match owned.as_slice() {
                [one] => *one,
                [] => return Err(forbidden()),
                _ => {
                    return Err(Problem::invalid(
                        "tenant_id",
                        "you own several tenants; say which one",
                    ));
                }
            },
        },
    };
    let user = caller.principal.user();
    let w = store
        .create_workspace(
            tenant,
            &b.slug,
            &name,
            user,
            caller.principal.actor(caller.request_id.clone()),
            s.engine.clock().now_ms(),
        )
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    Ok((
        StatusCode::CREATED,
        Json(WorkspaceOut::new(&w, Role::Owner)),
    ))
}

/// A workspace.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}", tag = "workspaces", params(WsParam),
    responses((status = 200, body = WorkspaceOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn show_workspace(
    State(s): State<AppState>,
    auth: Ws<Read>,
) -> Result<Json<WorkspaceOut>, Problem> {
    let w = s
        .engine
        .store()
        .get_workspace(auth.scope.tenant, &auth.scope.workspace.to_string())
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    Ok(Json(WorkspaceOut::new(&w, auth.role)))
}

/// Rename a workspace.
#[utoipa::path(patch, path = "/api/v1/workspaces/{ws}", tag = "workspaces", params(WsParam),
    request_body(content = WorkspacePatch, content_type = "application/json"),
    responses((status = 200, body = WorkspaceOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["workspace:manage"]), ("session" = ["workspace:manage"])))]
pub(crate) async fn update_workspace(
    State(s): State<AppState>,
    auth: Ws<WorkspaceManage>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WorkspaceOut>, Problem> {
    let b: WorkspacePatch = json_body(&headers, body, SMALL_BODY).await?;
    check_name("name", &b.name)?;
    let store = s.engine.store();
    store
        .rename_workspace(auth.scope, &b.name, auth.actor, s.engine.clock().now_ms())
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    let w = store
        .get_workspace(auth.scope.tenant, &auth.scope.workspace.to_string())
        .await
        .map_err(|e| Problem::store(e, "workspace"))?;
    Ok(Json(WorkspaceOut::new(&w, auth.role)))
}

// ---- API keys --------------------------------------------------------------------------------

/// The `{key}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct KeyParam {
    /// Key id (`key_…`).
    #[allow(dead_code)]
    key: String,
}

/// The `{user}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct UserParam {
    /// User id (`usr_…`).
    #[allow(dead_code)]
    user: String,
}

/// The workspace's API keys (never their secrets).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/api-keys", tag = "api-keys", params(WsParam),
    responses((status = 200, body = Page<KeyOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["keys:manage"]), ("session" = ["keys:manage"])))]
pub(crate) async fn list_keys(
    State(s): State<AppState>,
    auth: Ws<KeysManage>,
) -> Result<Json<Page<KeyOut>>, Problem> {
    let keys = s
        .engine
        .store()
        .list_keys(auth.scope)
        .await
        .map_err(|e| Problem::store(e, "API key"))?;
    Ok(Json(Page {
        items: keys.iter().map(KeyOut::from).collect(),
        next_cursor: None,
    }))
}

/// Create an API key; its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/api-keys", tag = "api-keys", params(WsParam),
    request_body(content = NewKeyIn, content_type = "application/json"),
    responses((status = 201, body = KeyCreated), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["keys:manage"]), ("session" = ["keys:manage"])))]
pub(crate) async fn create_key(
    State(s): State<AppState>,
    auth: Ws<KeysManage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<KeyCreated>), Problem> {
    let b: NewKeyIn = json_body(&headers, body, SMALL_BODY).await?;
    let role = parse_role("role", &b.role)?;
    may_grant(auth.role, role)?;
    let name = b.name.unwrap_or_else(|| role.as_str().to_string());
    check_name("name", &name)?;
    let now = s.engine.clock().now_ms();
    let expires_at = match b.expires_in_secs {
        Some(0) => return Err(Problem::invalid("expires_in_secs", "must be at least 1")),
        Some(secs) if secs > 10 * 365 * 86_400 => {
            return Err(Problem::invalid(
                "expires_in_secs",
                "must be at most ten years",
            ));
        }
        Some(secs) => Some(now + secs as i64 * 1000),
        None => None,
    };
    let (rec, secret) = s
        .engine
        .store()
        .create_key(
            auth.scope,
            NewKey {
                name,
                role,
                created_by: auth.user,
                expires_at,
            },
            auth.actor,
            now,
        )
        .await
        .map_err(|e| Problem::store(e, "API key"))?;
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            key: KeyOut::from(&rec),
            secret,
        }),
    ))
}

/// Revoke an API key (at once, everywhere).
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/api-keys/{key}", tag = "api-keys", params(WsParam, KeyParam),
    responses((status = 200, body = KeyOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["keys:manage"]), ("session" = ["keys:manage"])))]
pub(crate) async fn revoke_key(
    State(s): State<AppState>,
    auth: Ws<KeysManage>,
    Path(path): Path<(String, String)>,
) -> Result<Json<KeyOut>, Problem> {
    let (_, key) = path;
    let id: KeyId = parse_id("key", &key)?;
    let store = s.engine.store();
    let target = store
        .list_keys(auth.scope)
        .await
        .map_err(|e| Problem::store(e, "API key"))?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| Problem::not_found("API key"))?;
    may_grant(auth.role, target.role)?;
    let rec = store
        .revoke_key(auth.scope, id, auth.actor, s.engine.clock().now_ms())
        .await
        .map_err(|e| Problem::store(e, "API key"))?;
    Ok(Json(KeyOut::from(&rec)))
}

// ---- members ---------------------------------------------------------------------------------

/// The workspace's members.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/members", tag = "members", params(WsParam),
    responses((status = 200, body = Page<MemberOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn list_members(
    State(s): State<AppState>,
    auth: Ws<Read>,
) -> Result<Json<Page<MemberOut>>, Problem> {
    let ms = s
        .engine
        .store()
        .list_members(auth.scope)
        .await
        .map_err(|e| Problem::store(e, "member"))?;
    Ok(Json(Page {
        items: ms.iter().map(MemberOut::from).collect(),
        next_cursor: None,
    }))
}

/// Add a person (by email; a user is created if new) with a role.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/members", tag = "members", params(WsParam),
    request_body(content = NewMember, content_type = "application/json"),
    responses((status = 201, body = MemberOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["members:manage"]), ("session" = ["members:manage"])))]
pub(crate) async fn add_member(
    State(s): State<AppState>,
    auth: Ws<MembersManage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<MemberOut>), Problem> {
    let b: NewMember = json_body(&headers, body, SMALL_BODY).await?;
    let email = check_email("email", &b.email)?;
    let role = parse_role("role", &b.role)?;
    may_grant(auth.role, role)?;
    let m = s
        .engine
        .store()
        .add_member(
            auth.scope,
            &email,
            role,
            auth.actor,
            s.engine.clock().now_ms(),
        )
        .await
        .map_err(|e| Problem::store(e, "member"))?;
    Ok((StatusCode::CREATED, Json(MemberOut::from(&m))))
}

async fn current_role(
    s: &AppState,
    auth_scope: weft_types::Scope,
    user: UserId,
) -> Result<Role, Problem> {
    s.engine
        .store()
        .member_role(auth_scope, user)
        .await
        .map_err(|e| Problem::store(e, "member"))?
        .ok_or_else(|| Problem::not_found("member"))
}

/// Change a member's role (the last owner cannot be demoted).
#[utoipa::path(patch, path = "/api/v1/workspaces/{ws}/members/{user}", tag = "members", params(WsParam, UserParam),
    request_body(content = MemberPatch, content_type = "application/json"),
    responses((status = 200, body = MemberOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["members:manage"]), ("session" = ["members:manage"])))]
pub(crate) async fn update_member(
    State(s): State<AppState>,
    auth: Ws<MembersManage>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<MemberOut>, Problem> {
    let (_, user) = path;
    let user: UserId = parse_id("user", &user)?;
    let b: MemberPatch = json_body(&headers, body, SMALL_BODY).await?;
    let role = parse_role("role", &b.role)?;
    may_grant(auth.role, current_role(&s, auth.scope, user).await?)?;
    may_grant(auth.role, role)?;
    let m = s
        .engine
        .store()
        .set_member_role(
            auth.scope,
            user,
            role,
            auth.actor,
            s.engine.clock().now_ms(),
        )
        .await
        .map_err(|e| Problem::store(e, "member"))?;
    Ok(Json(MemberOut::from(&m)))
}

/// Remove a member (the last owner cannot be removed).
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/members/{user}", tag = "members", params(WsParam, UserParam),
    responses((status = 204, description = "removed"), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["members:manage"]), ("session" = ["members:manage"])))]
pub(crate) async fn remove_member(
    State(s): State<AppState>,
    auth: Ws<MembersManage>,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let (_, user) = path;
    let user: UserId = parse_id("user", &user)?;
    may_grant(auth.role, current_role(&s, auth.scope, user).await?)?;
    s.engine
        .store()
        .remove_member(auth.scope, user, auth.actor, s.engine.clock().now_ms())
        .await
        .map_err(|e| Problem::store(e, "member"))?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- sessions --------------------------------------------------------------------------------

/// The network an address belongs to for throttling: the address for IPv4, its /64 for IPv6
/// (one host usually owns a whole /64).
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Login throttles, counted in the store so every API process shares them: 20 attempts a
/// minute per network; 5 a minute per account from one network; 100 an hour per account from
/// everywhere. Guessing from one place stops quickly, and locking a user out takes many
/// networks.
async fn check_login_limits(
    s: &AppState,
    ip: Option<IpAddr>,
    account: &str,
) -> Result<(), Problem> {
    use weft_store::rate::{Rate, RateDecision};
    let store = s.engine.store();
    let now_us = s.engine.clock().now_ms().saturating_mul(1000);
    // Keys hold a hash of the email: bounded size, and no addresses in the table.
    let acct = hash_secret(account);
    let net = ip.map(network);
    let mut checks = Vec::with_capacity(3);
    if let Some(n) = net {
        checks.push((format!("login:net:{n}"), Rate::per_minute(20)));
    }
    let net_s = net.map_or_else(|| "-".to_string(), |n| n.to_string());
    checks.push((
        format!("login:acct-net:{acct}:{net_s}"),
        Rate::per_minute(5),
    ));
    checks.push((format!("login:acct:{acct}"), Rate::per_hour(100)));
    for (key, rate) in checks {
        if let RateDecision::Limited { retry_after_ms } =
            store.rate_take(&key, rate, now_us).await?
        {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                format!(
                    "too many login attempts for this account or from this address; try again in {secs} s"
                ),
            );
            p.retry_after = Some(secs);
            return Err(p);
        }
    }
    Ok(())
}

/// The client address, as an extractor.
pub(crate) struct ClientIp(Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Problem> {
        Ok(ClientIp(client_ip(parts)))
    }
}

fn cookie(s: &AppState, value: &str, max_age_secs: i64) -> Result<HeaderValue, Problem> {
    let secure = if s.opts.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}"
    ))
    .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "cannot build the cookie"))
}

async fn me_for(
    s: &AppState,
    user: UserId,
    email: String,
    csrf: Option<String>,
    expires_at: Option<i64>,
) -> Result<MeOut, Problem> {
    let ws = s
        .engine
        .store()
        .user_workspaces(user)
        .await
        .map_err(|e| Problem::store(e, "user"))?;
    let inv = s
        .engine
        .store()
        .pending_invitations(user)
        .await
        .map_err(|e| Problem::store(e, "user"))?;
    Ok(MeOut {
        user_id: Some(user.to_string()),
        email: Some(email),
        csrf_token: csrf,
        expires_at: expires_at.map(weft_types::rfc3339),
        workspaces: ws.iter().map(|(w, r)| WorkspaceOut::new(w, *r)).collect(),
        invitations: inv.iter().map(|(w, r)| WorkspaceOut::new(w, *r)).collect(),
    })
}

/// Log in with email and password; sets the session cookie and returns the CSRF token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body(content = LoginIn, content_type = "application/json"),
    responses((status = 200, body = MeOut, headers(("set-cookie" = String, description = "the HttpOnly session cookie"))),
        (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn login(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let b: LoginIn = json_body(&headers, body, SMALL_BODY).await?;
    let email = check_email("email", &b.email)?;
    if b.password.len() > 1024 {
        return Err(Problem::invalid("password", "must be at most 1024 bytes"));
    }
    check_login_limits(&s, ip, &email).await?;
    let user = s
        .engine
        .store()
        .user_by_email(&email)
        .await
        .map_err(|e| Problem::store(e, "user"))?;
    // Verify against a fixed hash for unknown users too, so timing does not reveal who exists.
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let ok = crate::password::verify(b.password, stored).await;
    let Some(user) = user.filter(|_| ok) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the email or password is wrong",
        ));
    };
    let now = s.engine.clock().now_ms();
    let secret = random_secret();
    let csrf = random_secret();
    let expires_at = now + SESSION_TTL_MS;
    s.engine
        .store()
        .create_session(user.id, hash_secret(&secret), csrf.clone(), expires_at, now)
        .await
        .map_err(|e| Problem::store(e, "session"))?;
    let me = me_for(&s, user.id, user.email, Some(csrf), Some(expires_at)).await?;
    let mut resp = Json(me).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&s, &secret, SESSION_TTL_MS / 1000)?,
    );
    Ok(resp)
}

/// End the session.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "logged out"), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("session" = [])))]
pub(crate) async fn logout(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if let (Principal::Session { .. }, Some(secret)) = (&caller.principal, session_cookie(&headers))
    {
        s.engine
            .store()
            .delete_session(hash_secret(&secret))
            .await
            .map_err(|e| Problem::store(e, "session"))?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&s, "", 0)?);
    Ok(resp)
}

/// Who the caller is and which workspaces they can use.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = MeOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn me(State(s): State<AppState>, caller: Caller) -> Result<Json<MeOut>, Problem> {
    match caller.principal {
        Principal::Session { session, .. } => Ok(Json(
            me_for(
                &s,
                session.user_id,
                session.email,
                Some(session.csrf_token),
                Some(session.expires_at),
            )
            .await?,
        )),
        Principal::Key(k) => {
            let w = s
                .engine
                .store()
                .get_workspace(k.scope.tenant, &k.scope.workspace.to_string())
                .await
                .map_err(|e| Problem::store(e, "workspace"))?;
            Ok(Json(MeOut {
                user_id: k.user.map(|u| u.to_string()),
                email: None,
                csrf_token: None,
                expires_at: None,
                workspaces: vec![WorkspaceOut::new(&w, k.role)],
                invitations: vec![],
            }))
        }
    }
}

/// Accept an invitation to a workspace of another tenant (session only).
#[utoipa::path(post, path = "/api/v1/auth/invitations/{ws}/accept", tag = "auth",
    params(("ws" = String, Path, description = "the invited workspace's id (`wsp_…`)")),
    responses((status = 200, body = WorkspaceOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("session" = [])))]
pub(crate) async fn accept_invitation(
    State(s): State<AppState>,
    caller: Caller,
    Path(ws): Path<String>,
) -> Result<Json<WorkspaceOut>, Problem> {
    let Principal::Session { session, .. } = &caller.principal else {
        return Err(Problem::not_found("invitation"));
    };
    let Ok(ws) = ws.parse::<weft_types::WorkspaceId>() else {
        return Err(Problem::not_found("invitation"));
    };
    let (w, role) = s
        .engine
        .store()
        .accept_invitation(
            session.user_id,
            ws,
            caller.principal.actor(caller.request_id.clone()),
            s.engine.clock().now_ms(),
        )
        .await
        .map_err(|e| Problem::store(e, "invitation"))?;
    Ok(Json(WorkspaceOut::new(&w, role)))
}
