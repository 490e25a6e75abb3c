//! The HTTP face of Weft: the v1 JSON API, webhook intake and health checks. Thin: every
//! decision is the engine's; this crate parses, authenticates and renders.

// Problems are built on the cold path only; boxing them would buy nothing measurable.
#![allow(clippy::result_large_err)]

mod auth;
mod body;
mod flows;
mod hooks;
pub mod problem;
mod runs;
mod server;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use weft_engine::Engine;

pub use problem::Problem;
pub use server::serve;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Base URL printed in `hook_url`s, e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub(crate) engine: Engine,
    pub(crate) opts: Arc<ApiOptions>,
}

/// Builds the router.
pub fn router(engine: Engine, opts: ApiOptions) -> Router {
    let state = AppState {
        engine,
        opts: Arc::new(opts),
    };
    let ws = Router::new()
        .route("/flows", get(flows::list).post(flows::create))
        .route("/flows/{flow}", get(flows::show).delete(flows::delete))
        .route("/flows/{flow}/versions", get(flows::versions))
        .route("/flows/{flow}/publish", post(flows::publish))
        .route("/flows/{flow}/runs", post(runs::start))
        .route("/runs", get(runs::list))
        .route("/runs/{run}", get(runs::show))
        .route("/runs/{run}/logs", get(runs::logs))
        .route("/runs/{run}/cancel", post(runs::cancel));
    Router::new()
        .nest("/api/v1/workspaces/{ws}", ws)
        .route("/api/v1/connectors", get(flows::connectors))
        .route("/hooks/{hook_id}", post(hooks::intake))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
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
        .with_state(state)
}

async fn ready(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> Result<axum::Json<serde_json::Value>, Problem> {
    s.engine.store().ping().await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store does not answer: {e}"),
        )
    })?;
    Ok(axum::Json(serde_json::json!({"status": "ready"})))
}
