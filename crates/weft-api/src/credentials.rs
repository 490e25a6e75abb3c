//! Credentials (`/api/v1/workspaces/{ws}/credentials`) and the connector catalog's detail
//! (`/api/v1/connectors/{name}`). Values go in once and never come out.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::{CredentialsWrite, FlowsWrite, Read, Ws};
use crate::body::json_body;
use crate::dto::{CredentialOut, Page, ProblemDoc};
use crate::flows::WsParam;
use crate::{AppState, Problem};

/// Largest credential request body.
const CREDENTIAL_BODY: usize = 64 * 1024;

/// A credential to create or replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialIn {
    /// Name, unique in the workspace; flows refer to it.
    pub name: String,
    /// Connector whose auth fields `values` holds (`GET /api/v1/connectors/{name}` lists them).
    pub connector: String,
    /// Field values (strings). They are encrypted at once and never returned.
    #[schema(value_type = Object)]
    pub values: Map<String, Value>,
}

/// The `{name}` path parameter of a credential.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct CredentialParam {
    /// Credential name.
    #[allow(dead_code)]
    name: String,
}

/// The workspace's credentials: names, connectors and field names, never values.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/credentials", tag = "credentials", params(WsParam),
    responses((status = 200, body = Page<CredentialOut>), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    auth: Ws<Read>,
) -> Result<Json<Page<CredentialOut>>, Problem> {
    let items = s.engine.list_credentials(auth.scope).await?;
    Ok(Json(Page {
        items: items.iter().map(CredentialOut::from).collect(),
        next_cursor: None,
    }))
}

/// Create a credential, or replace the values of the one with this name (201 or 200).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/credentials", tag = "credentials", params(WsParam),
    request_body(content = CredentialIn, content_type = "application/json"),
    responses((status = 201, body = CredentialOut), (status = 200, body = CredentialOut),
        (status = "4XX", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["credentials:write"]), ("session" = ["credentials:write"])))]
pub(crate) async fn put(
    State(s): State<AppState>,
    auth: Ws<CredentialsWrite>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CredentialOut>), Problem> {
    let b: CredentialIn = json_body(&headers, body, CREDENTIAL_BODY).await?;
    let (rec, created) = s
        .engine
        .set_credential(auth.scope, &b.name, &b.connector, b.values, auth.actor)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(CredentialOut::from(&rec))))
}

/// One credential (never its values).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/credentials/{name}", tag = "credentials", params(WsParam, CredentialParam),
    responses((status = 200, body = CredentialOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn get(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
) -> Result<Json<CredentialOut>, Problem> {
    let (_, name) = path;
    let rec = s.engine.get_credential(auth.scope, &name).await?;
    Ok(Json(CredentialOut::from(&rec)))
}

/// Delete a credential. Steps and triggers that name it fail until it is set again.
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/credentials/{name}", tag = "credentials", params(WsParam, CredentialParam),
    responses((status = 204, description = "deleted"), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["credentials:write"]), ("session" = ["credentials:write"])))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    auth: Ws<CredentialsWrite>,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let (_, name) = path;
    s.engine
        .delete_credential(auth.scope, &name, auth.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `{name}` path parameter of a connector.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ConnectorParam {
    /// Connector name, e.g. `github`.
    #[allow(dead_code)]
    name: String,
}

/// One connector's manifest: auth fields, triggers, actions with their JSON Schemas.
#[utoipa::path(get, path = "/api/v1/connectors/{name}", tag = "connectors", params(ConnectorParam),
    responses((status = 200, body = Object, description = "the connector's manifest"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn connector(Path(name): Path<String>) -> Result<Json<Value>, Problem> {
    let m = weft_connectors::manifest::find(&name, None)
        .ok_or_else(|| Problem::not_found("connector"))?;
    serde_json::to_value(m)
        .map(Json)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Install a declarative connector version into this workspace (201; 200 when this exact
/// manifest is installed already; 409 when the version is taken by another manifest).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/connectors", tag = "connectors", params(WsParam),
    request_body(content = Object, description = "the connector manifest (docs/connectors.md)", content_type = "application/json"),
    responses((status = 201, body = Object, description = "the installed manifest"), (status = 200, body = Object, description = "already installed"),
        (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["flows:write"]), ("session" = ["flows:write"])))]
pub(crate) async fn install(
    State(s): State<AppState>,
    auth: Ws<FlowsWrite>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let v: Value = json_body(&headers, body, weft_engine::MAX_MANIFEST_BYTES).await?;
    let (m, created) = s
        .engine
        .install_connector(auth.scope, v, auth.actor)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let out = serde_json::to_value(&m)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((status, Json(out)))
}

/// One connector usable in this workspace (installed: its newest version; or built in).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/connectors/{name}", tag = "connectors", params(WsParam, ConnectorParam),
    responses((status = 200, body = Object, description = "the connector's manifest"),
        (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["read"]), ("session" = ["read"])))]
pub(crate) async fn ws_connector(
    State(s): State<AppState>,
    auth: Ws<Read>,
    Path(path): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let (_, name) = path;
    let catalog = s.engine.catalog(auth.scope).await?;
    let m = catalog
        .connector(&name)
        .ok_or_else(|| Problem::not_found("connector"))?;
    serde_json::to_value(m.as_ref())
        .map(Json)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Where an authorization starts: the URL to open in a browser.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct AuthorizeOut {
    /// The provider's authorization URL with Weft's state and PKCE challenge.
    pub authorize_url: String,
    /// RFC 3339: when the request stops being accepted at the callback.
    pub expires_at: String,
    /// Where the provider sends the browser back (register it with the provider).
    pub redirect_uri: String,
}

/// Start the OAuth2 authorization of a credential (authorization code with PKCE). Open the
/// returned URL in a browser; the provider sends it back to `/oauth/callback`.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/credentials/{name}/authorize", tag = "credentials", params(WsParam, CredentialParam),
    responses((status = 200, body = AuthorizeOut), (status = "4XX", body = ProblemDoc, content_type = "application/problem+json")),
    security(("api_key" = ["credentials:write"]), ("session" = ["credentials:write"])))]
pub(crate) async fn authorize(
    State(s): State<AppState>,
    auth: Ws<CredentialsWrite>,
    Path(path): Path<(String, String)>,
) -> Result<Json<AuthorizeOut>, Problem> {
    let (_, name) = path;
    let redirect_uri = format!("{}/oauth/callback", s.opts.public_url.trim_end_matches('/'));
    let (authorize_url, expires) = s
        .engine
        .start_authorization(auth.scope, &name, &redirect_uri)
        .await?;
    Ok(Json(AuthorizeOut {
        authorize_url,
        expires_at: weft_types::rfc3339(expires),
        redirect_uri,
    }))
}

/// The callback's query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CallbackQuery {
    /// The authorization code.
    code: Option<String>,
    /// The state Weft sent.
    state: Option<String>,
    /// The provider's refusal, e.g. `access_denied`.
    error: Option<String>,
}

/// Where the provider sends the browser back: exchanges the code for tokens (public: the
/// single-use state authenticates it).
#[utoipa::path(get, path = "/oauth/callback", tag = "credentials", params(CallbackQuery),
    responses((status = 200, body = Object, description = "`{credential, status: \"ok\"}`"),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, body = ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn callback(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<CallbackQuery>,
) -> Result<Json<Value>, Problem> {
    let Some(state) = q.state.filter(|st| !st.is_empty() && st.len() <= 256) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_state",
            "the callback has no valid `state`; start the authorization again",
        ));
    };
    match s
        .engine
        .complete_authorization(&state, q.code.as_deref(), q.error.as_deref())
        .await
    {
        Ok((_, name)) => Ok(Json(
            serde_json::json!({"credential": name, "status": "ok"}),
        )),
        Err(weft_engine::OAuthError::InvalidState) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_state",
            "this authorization is unknown, used already or expired; start it again with `weft credentials authorize NAME`",
        )),
        Err(weft_engine::OAuthError::Denied(e)) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "oauth_denied",
            format!("the provider did not authorize the credential ({e}); nothing was changed"),
        )),
        Err(weft_engine::OAuthError::Token { message, .. }) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "oauth_token_error",
            format!("{message}; nothing was changed. Start the authorization again"),
        )),
        Err(weft_engine::OAuthError::Engine(e)) => Err(Problem::from(e)),
    }
}
