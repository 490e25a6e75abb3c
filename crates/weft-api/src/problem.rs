//! RFC 9457 problem details: the one error shape of the HTTP API.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use weft_engine::EngineError;
use weft_flow::FieldError;

/// An API error, rendered as `application/problem+json`.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// URI naming the error kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened and what to do.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Field-level errors.
    pub errors: Vec<FieldError>,
    /// Seconds to wait (sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem with no field errors.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://weft.dev/errors/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            errors: Vec::new(),
            retry_after: None,
        }
    }
    /// Adds field errors.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }
    /// 404 in the same words whether the object is missing or belongs to someone else.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    /// 400 for a bad field.
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{path}: {message}"),
        )
        .with_errors(vec![FieldError::new(path, message)])
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl Problem {
    /// A store failure, naming the missing object as `what` when it is a not-found.
    pub fn store(e: weft_store::StoreError, what: &str) -> Self {
        match e {
            weft_store::StoreError::NotFound => Problem::not_found(what),
            other => Problem::from(EngineError::from(other)),
        }
    }
}

impl From<weft_store::StoreError> for Problem {
    fn from(e: weft_store::StoreError) -> Self {
        Problem::from(EngineError::from(e))
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(what) => Problem::not_found(what),
            EngineError::Invalid(f) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_flow",
                f.to_string(),
            )
            .with_errors(f.field_errors()),
            EngineError::Conflict(m) => Problem::new(StatusCode::CONFLICT, "conflict", m),
            EngineError::Rule(m) => Problem::new(StatusCode::CONFLICT, "rule_violated", m),
            EngineError::Quota {
                limit,
                detail,
                retry_after,
            } => {
                let code = if limit == "webhook_rps" {
                    "rate_limited"
                } else {
                    "quota_exceeded"
                };
                // 429 when waiting helps (the limit resets by itself); 403 when it does not.
                let status = if retry_after.is_some() {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::FORBIDDEN
                };
                let mut p = Problem::new(status, code, detail);
                p.retry_after = retry_after;
                p
            }
            EngineError::BadInput(errors) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                EngineError::BadInput(errors.clone()).to_string(),
            )
            .with_errors(errors),
            EngineError::Unavailable(m) => {
                let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m);
                p.retry_after = Some(5);
                p
            }
            EngineError::Unauthorized(m) => {
                Problem::new(StatusCode::UNAUTHORIZED, "invalid_signature", m)
            }
            EngineError::Store(s) => {
                tracing::error!(error = %s, "store failure");
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable; nothing was changed. Retry shortly",
                );
                p.retry_after = Some(1);
                p
            }
        }
    }
}
