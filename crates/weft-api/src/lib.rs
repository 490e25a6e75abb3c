//! The HTTP face of Weft: the v1 JSON API, webhook intake and health checks. Thin: every
//! decision is the engine's; this crate parses, authenticates and renders.
//!
//! Routes are registered through `utoipa_axum`'s router, so a route cannot exist without its
//! OpenAPI description: `openapi()` and the served router come from the same table.

// Problems are built on the cold path only; boxing them would buy nothing measurable.
#![allow(clippy::result_large_err)]

mod admin;
mod alerts;
mod audit;
pub mod auth;
mod body;
mod credentials;
pub mod dto;
mod errors;
mod events;
mod flows;
mod hooks;
mod identity;
mod live;
mod logs;
pub mod metrics;
pub mod password;
pub mod problem;
mod resume;
mod retention;
mod runs;
mod server;
mod trace;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weft_engine::Engine;

pub use auth::ADMIN_TOKEN_SETTING;
pub use problem::Problem;
pub use server::serve;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Base URL printed in `hook_url`s, e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Hash of the instance admin token given by the operator (`WEFT_ADMIN_TOKEN`); when
    /// `None`, the hash stored in the instance settings is used.
    pub admin_token_hash: Option<String>,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub(crate) engine: Engine,
    pub(crate) opts: Arc<ApiOptions>,
    pub(crate) metrics: metrics::SharedMetrics,
}

/// Every route with its OpenAPI description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            identity::list_workspaces,
            identity::create_workspace
        ))
        .routes(routes!(
            identity::show_workspace,
            identity::update_workspace
        ))
        .routes(routes!(flows::list, flows::create))
        .routes(routes!(flows::show, flows::delete))
        .routes(routes!(flows::versions))
        .routes(routes!(flows::publish))
        .routes(routes!(flows::poll))
        .routes(routes!(flows::backfill))
        .routes(routes!(runs::start))
        .routes(routes!(runs::list))
        .routes(routes!(runs::show, runs::delete))
        .routes(routes!(runs::logs))
        .routes(routes!(live::run_events))
        .routes(routes!(live::workspace_feed))
        .routes(routes!(logs::search))
        .routes(routes!(errors::list))
        .routes(routes!(retention::get, retention::put))
        .routes(routes!(alerts::list, alerts::create))
        .routes(routes!(alerts::delete))
        .routes(routes!(alerts::deliveries))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::signal))
        .routes(routes!(runs::retry))
        .routes(routes!(runs::replay))
        .routes(routes!(runs::replay_many))
        .routes(routes!(events::publish))
        .routes(routes!(resume::show, resume::answer))
        .routes(routes!(identity::list_keys, identity::create_key))
        .routes(routes!(identity::revoke_key))
        .routes(routes!(identity::list_members, identity::add_member))
        .routes(routes!(identity::update_member, identity::remove_member))
        .routes(routes!(flows::ws_connectors, credentials::install))
        .routes(routes!(credentials::ws_connector))
        .routes(routes!(credentials::list, credentials::put))
        .routes(routes!(credentials::get, credentials::delete))
        .routes(routes!(credentials::authorize))
        .routes(routes!(credentials::callback))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(flows::connectors))
        .routes(routes!(credentials::connector))
        .routes(routes!(admin::list_tenants, admin::create_tenant))
        .routes(routes!(admin::show_tenant, admin::update_tenant))
        .routes(routes!(identity::login))
        .routes(routes!(identity::logout))
        .routes(routes!(identity::me))
        .routes(routes!(identity::accept_invitation))
        .routes(routes!(hooks::intake))
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// The OpenAPI description of the API (what `/api/v1/openapi.json` serves).
pub fn openapi() -> OpenApi {
    let (_, mut api) = routes().split_for_parts();
    api.info = InfoBuilder::new()
        .title("Weft API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Weft's v1 API. Errors are RFC 9457 problem+json with a stable `code`. Security scopes name the permission a route needs: `read` (viewer), `flows:write` and `runs:write` (editor), `keys:manage`, `members:manage`, `audit:read` and `credentials:write` (admin), `workspace:manage` and `tenant:manage` (owner).",
        ))
        .build();
    let comps = api.components.get_or_insert_with(Default::default);
    comps.add_security_scheme(
        "api_key",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("wft_…")
                .description(Some("a workspace API key"))
                .build(),
        ),
    );
    comps.add_security_scheme(
        "session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            auth::SESSION_COOKIE,
            "the UI's session cookie; writes also need X-CSRF-Token",
        ))),
    );
    comps.add_security_scheme(
        "admin",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("wfa_…")
                .description(Some("the instance admin token"))
                .build(),
        ),
    );
    api
}

/// Builds the router.
pub fn router(engine: Engine, opts: ApiOptions) -> Router {
    let state = AppState {
        metrics: Arc::new(metrics::Metrics::new(&engine)),
        engine,
        opts: Arc::new(opts),
    };
    let spec = Arc::new(openapi());
    let (router, _) = routes().split_for_parts();
    let request_id = HeaderName::from_static("x-request-id");
    router
        .route_layer(axum::middleware::from_fn(trace::traced))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .route("/metrics", axum::routing::get(metrics::scrape))
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move { axum::Json(spec.as_ref().clone()) }
            }),
        )
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /api/v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        // Bodies are read with our own limit (see body.rs) so that oversize answers are problem+json.
        .layer(DefaultBodyLimit::disable())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Request ids are ours: a client-sent one would let callers forge audit entries' ids.
        .layer(axum::middleware::map_request(
            |mut req: axum::extract::Request| async move {
                req.headers_mut().remove("x-request-id");
                req
            },
        ))
        .with_state(state)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = dto::StatusOut)))]
async fn health() -> axum::Json<dto::StatusOut> {
    axum::Json(dto::StatusOut {
        status: "ok".into(),
    })
}

/// Readiness: the store answers, its schema is this build's, and the sandbox evaluates.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = dto::StatusOut), (status = 503, body = dto::ProblemDoc, content_type = "application/problem+json")))]
async fn ready(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> Result<axum::Json<dto::StatusOut>, Problem> {
    let not_ready =
        |detail: String| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", detail);
    let store = s.engine.store();
    let version = store
        .ping()
        .await
        .map_err(|e| not_ready(format!("the store does not answer: {e}")))?;
    let latest = store.latest_schema_version();
    if version < latest {
        return Err(not_ready(format!(
            "the database schema is at version {version}, this Weft needs {latest}; run `weft admin migrate`"
        )));
    }
    s.engine
        .sandbox()
        .probe()
        .await
        .map_err(|e| not_ready(format!("the expression sandbox is not up: {e}")))?;
    Ok(axum::Json(dto::StatusOut {
        status: "ready".into(),
    }))
}
