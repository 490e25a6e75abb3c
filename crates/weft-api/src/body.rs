//! Reading request bodies, queries and ids with limits, every failure as problem+json.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::Problem;

/// Most bytes drained (and discarded) from an oversized body so the client can read our 413
/// instead of seeing its upload cut off; beyond this the connection is simply dropped.
const MAX_DRAIN: usize = 64 * 1024 * 1024;

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<Bytes, Problem> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > limit {
            if seen > MAX_DRAIN {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if seen > limit {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(buf.freeze())
}

/// The media type of the request, lowercased, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// Whether a media type is JSON.
pub(crate) fn is_json(mt: &str) -> bool {
    mt == "application/json" || (mt.starts_with("application/") && mt.ends_with("+json"))
}

/// Parses a JSON body into `T`, naming the failing field.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let path = if path == "." { String::new() } else { path };
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not valid: {inner}"),
        )
        .with_errors(vec![weft_flow::FieldError::new(path, inner.to_string())])
    })
}

/// Requires a JSON content type (or none) on a body that is not empty.
pub(crate) fn require_json(headers: &HeaderMap, bytes: &[u8]) -> Result<(), Problem> {
    match media_type(headers) {
        Some(mt) if !is_json(&mt) && !bytes.is_empty() => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected Content-Type: application/json, got '{mt}'"),
        )),
        _ => Ok(()),
    }
}

/// Parses a query string into `T`, naming the failing parameter.
pub(crate) fn parse_query<T: DeserializeOwned>(q: Option<&str>) -> Result<T, Problem> {
    let de =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.unwrap_or("").as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        Problem::invalid(if path == "." { "query" } else { &path }, inner)
    })
}

/// Parses a typed id from a path segment.
pub(crate) fn parse_id<T: std::str::FromStr<Err = weft_types::IdError>>(
    field: &str,
    s: &str,
) -> Result<T, Problem> {
    s.parse::<T>()
        .map_err(|e| Problem::invalid(field, e.to_string()))
}

/// Trims a page fetched with `limit + 1` rows to `limit` and returns the next cursor, if any.
pub(crate) fn cut_page<T>(
    items: &mut Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    if items.len() <= limit {
        return None;
    }
    items.truncate(limit);
    items.last().map(cursor)
}

/// Reads and parses a required JSON body of at most `limit` bytes.
pub(crate) async fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, Problem> {
    let bytes = read_limited(body, limit).await?;
    if bytes.is_empty() {
        return Err(Problem::invalid("", "a JSON body is required"));
    }
    match media_type(headers) {
        Some(mt) if is_json(&mt) => {}
        other => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "expected Content-Type: application/json, got '{}'",
                    other.unwrap_or_default()
                ),
            ));
        }
    }
    parse_json(&bytes)
}

/// A `flow` filter of a list: none, one flow, or a flow that does not exist (an empty list,
/// as for a flow with no runs, not a 404).
pub(crate) enum FlowFilter {
    Any,
    Flow(weft_types::FlowId),
    Unknown,
}

/// Resolves a `flow` query parameter (id or name) in the caller's workspace.
pub(crate) async fn flow_filter(
    s: &crate::AppState,
    scope: weft_types::Scope,
    flow: Option<&str>,
) -> Result<FlowFilter, crate::Problem> {
    match flow.filter(|f| !f.is_empty()) {
        None => Ok(FlowFilter::Any),
        Some(f) => match s.engine.get_flow(scope, f).await {
            Ok(rec) => Ok(FlowFilter::Flow(rec.id)),
            Err(weft_engine::EngineError::NotFound(_)) => Ok(FlowFilter::Unknown),
            Err(e) => Err(e.into()),
        },
    }
}
