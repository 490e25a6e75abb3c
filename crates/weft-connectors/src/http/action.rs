//! The `http.request` action.

use std::time::{Duration, SystemTime};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use url::Url;

use super::guard::{GuardedClient, NetError, describe_chain, redact_url};
use crate::error::ActionError;

/// Request timeout used when the input gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request timeout the input may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest response body that is read; bigger responses fail instead of being buffered.
pub const MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;

/// Longest body excerpt quoted in error messages, in characters.
const EXCERPT_CHARS: usize = 300;
const ACTION: &str = "http.request";
const FIELDS: &[&str] = &["method", "url", "headers", "query", "body", "timeout"];
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Validated `http.request` input.
struct Prepared {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

/// Sends one HTTP request described by `input` and returns `{status, headers, body}`.
///
/// 1xx–3xx responses succeed; 408, 429 and 5xx are retryable (honouring
/// `Retry-After`); other 4xx and every input or network-policy problem are
/// permanent. `idempotency_key` is sent as `Idempotency-Key` unless the input
/// sets that header itself.
pub async fn http_request(
    client: &GuardedClient,
    input: &Value,
    idempotency_key: &str,
) -> Result<Value, ActionError> {
    http_request_with_auth(client, input, idempotency_key, Vec::new()).await
}

/// [`http_request`] with headers from a credential, which replace any the input sets (so a
/// flow cannot send a credential's request with some other identity by accident).
pub async fn http_request_with_auth(
    client: &GuardedClient,
    input: &Value,
    idempotency_key: &str,
    auth: Vec<(HeaderName, HeaderValue)>,
) -> Result<Value, ActionError> {
    let mut prepared = prepare(input, idempotency_key)?;
    for (name, value) in auth {
        prepared.headers.insert(name, value);
    }
    let shown_url = redact_url(&prepared.url);
    let method = prepared.method.clone();
    let timeout = prepared.timeout;

    let mut request = reqwest::Request::new(prepared.method, prepared.url);
    *request.headers_mut() = prepared.headers;
    *request.timeout_mut() = Some(timeout);
    if let Some(body) = prepared.body {
        *request.body_mut() = Some(body.into());
    }

    let timed_out = || {
        ActionError::retryable(format!(
            "{ACTION}: {method} {shown_url} timed out after {}; the server did not answer in time (the request can be retried, or raise `timeout`, max 300s)",
            human_duration(timeout)
        ))
    };
    // reqwest enforces the timeout too; this outer bound also covers body reading in every case.
    let work = async {
        let response = client.execute(request).await.map_err(|err| match err {
            NetError::Transport { timeout: true, .. } => timed_out(),
            other => net_error(&method, other),
        })?;
        finish(&method, &shown_url, response).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(timed_out()),
    }
}

fn net_error(method: &Method, err: NetError) -> ActionError {
    match err {
        NetError::Refused(policy) => ActionError::permanent(format!("{ACTION}: {policy}")),
        NetError::Build(_) => ActionError::permanent(format!("{ACTION}: {err}")),
        NetError::Transport { .. } => ActionError::retryable(format!("{ACTION}: {method} {err}")),
    }
}

/// Reads the response (bounded) and classifies it by status.
async fn finish(
    method: &Method,
    shown_url: &str,
    mut response: reqwest::Response,
) -> Result<Value, ActionError> {
    let status = response.status();
    let headers = headers_to_json(response.headers());
    let retry_after = parse_retry_after(response.headers(), SystemTime::now());
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_content_type);

    let too_large = |headers: Value| ActionError::Permanent {
        message: format!(
            "{ACTION}: {method} {shown_url} returned HTTP {} with a body larger than the {} MiB limit; request less data (filter or paginate)",
            status.as_u16(),
            MAX_RESPONSE_BYTES / (1024 * 1024)
        ),
        output: Some(json!({ "status": status.as_u16(), "headers": headers, "body": Value::Null })),
    };
    // Fail fast on a declared length, but still count bytes: the header may lie or be absent.
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large(headers));
    }
    let mut raw: Vec<u8> = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if raw.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(too_large(headers));
                }
                raw.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(err) => {
                return Err(ActionError::retryable(format!(
                    "{ACTION}: {method} {shown_url} returned HTTP {} but reading the body failed: {}; the request can be retried",
                    status.as_u16(),
                    describe_chain(&err)
                )));
            }
        }
    }

    let body = decode_body(&raw, is_json);
    let excerpt = excerpt(&body);
    let output = json!({ "status": status.as_u16(), "headers": headers, "body": body });
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("");
    let quoted = if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    };
    if code < 400 {
        Ok(output)
    } else if is_retryable_status(status) {
        Err(ActionError::Retryable {
            message: format!(
                "{ACTION}: {method} {shown_url} returned HTTP {code} {reason}{quoted}; the server is overloaded or temporarily failing, the request can be retried"
            ),
            retry_after,
            output: Some(output),
        })
    } else {
        Err(ActionError::Permanent {
            message: format!(
                "{ACTION}: {method} {shown_url} returned HTTP {code} {reason}{quoted}; check the URL, method, credentials and request body"
            ),
            output: Some(output),
        })
    }
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429) || status.is_server_error()
}

fn headers_to_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        // `HeaderName` is already lowercase.
        out.insert(name.as_str().to_owned(), Value::String(joined));
    }
    Value::Object(out)
}

fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.contains('/') && essence.ends_with("+json"))
}

fn decode_body(raw: &[u8], is_json: bool) -> Value {
    if is_json && let Ok(value) = serde_json::from_slice::<Value>(raw) {
        return value;
    }
    Value::String(String::from_utf8_lossy(raw).into_owned())
}

/// A short single-line excerpt of a response body for error messages.
fn excerpt(body: &Value) -> String {
    let text = match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = collapsed.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// `Retry-After` as delta-seconds or an HTTP-date (a date in the past means "now").
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn input_error(field: &str, problem: impl std::fmt::Display) -> ActionError {
    ActionError::permanent(format!("{ACTION}: input field `{field}` {problem}"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates the input and builds the request parts.
fn prepare(input: &Value, idempotency_key: &str) -> Result<Prepared, ActionError> {
    let Some(obj) = input.as_object() else {
        return Err(ActionError::permanent(format!(
            "{ACTION}: input must be an object with at least a `url` field, got {}",
            kind(input)
        )));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(input_error(
            unknown,
            format!("is not supported; use only: {}", FIELDS.join(", ")),
        ));
    }

    let method = match obj.get("method") {
        None | Some(Value::Null) => Method::GET,
        Some(Value::String(m)) => parse_method(m)?,
        Some(other) => {
            return Err(input_error(
                "method",
                format!(
                    "must be a string such as \"GET\" or \"POST\", got {}",
                    kind(other)
                ),
            ));
        }
    };

    let mut url = match obj.get("url") {
        Some(Value::String(u)) => parse_url(u)?,
        None | Some(Value::Null) => {
            return Err(input_error(
                "url",
                "is required; give an absolute URL such as https://example.com/path",
            ));
        }
        Some(other) => {
            return Err(input_error(
                "url",
                format!("must be a string, got {}", kind(other)),
            ));
        }
    };

    match obj.get("query") {
        None | Some(Value::Null) => {}
        Some(Value::Object(params)) => {
            let mut pairs: Vec<(&str, String)> = Vec::new();
            for (name, value) in params {
                for v in scalar_values(value, &format!("query.{name}"))? {
                    pairs.push((name, v));
                }
            }
            // Only touch the URL when there is something to add, so no stray `?` appears.
            if !pairs.is_empty() {
                let mut query = url.query_pairs_mut();
                for (name, value) in pairs {
                    query.append_pair(name, &value);
                }
            }
        }
        Some(other) => {
            return Err(input_error(
                "query",
                format!(
                    "must be an object of parameter name to value, got {}",
                    kind(other)
                ),
            ));
        }
    }

    let mut headers = HeaderMap::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let field = format!("headers.{name}");
                let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    input_error(
                        &field,
                        "is not a valid HTTP header name; use letters, digits and `-`",
                    )
                })?;
                if header_name == CONTENT_LENGTH || header_name == http::header::TRANSFER_ENCODING {
                    return Err(input_error(
                        &field,
                        "cannot be set; it is computed from `body`",
                    ));
                }
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(input_error(
                            &field,
                            format!("must be a string, number or boolean, got {}", kind(other)),
                        ));
                    }
                };
                let header_value = HeaderValue::from_str(&text).map_err(|_| {
                    input_error(
                        &field,
                        "contains characters not allowed in a header value (e.g. newlines); remove them",
                    )
                })?;
                headers.append(header_name, header_value);
            }
        }
        Some(other) => {
            return Err(input_error(
                "headers",
                format!(
                    "must be an object of header name to value, got {}",
                    kind(other)
                ),
            ));
        }
    }
    if !headers.contains_key(IDEMPOTENCY_KEY) {
        let value = HeaderValue::from_str(idempotency_key).map_err(|_| {
            ActionError::permanent(format!(
                "{ACTION}: the idempotency key contains characters not allowed in an HTTP header; this is a bug in the caller, report it"
            ))
        })?;
        headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY), value);
    }

    let body = match obj.get("body") {
        None | Some(Value::Null) => None,
        Some(value) => Some(encode_body(value, &mut headers)?),
    };

    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(value) => parse_timeout(value)?,
    };

    Ok(Prepared {
        method,
        url,
        headers,
        body,
        timeout,
    })
}

fn parse_method(raw: &str) -> Result<Method, ActionError> {
    let upper = raw.trim().to_ascii_uppercase();
    let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
        input_error(
            "method",
            format!("`{raw}` is not a valid HTTP method; use e.g. GET, POST, PUT, PATCH or DELETE"),
        )
    })?;
    // CONNECT asks for a tunnel, which this action does not provide.
    if method == Method::CONNECT {
        return Err(input_error(
            "method",
            "CONNECT is not supported; use e.g. GET, POST, PUT, PATCH or DELETE",
        ));
    }
    Ok(method)
}

fn parse_url(raw: &str) -> Result<Url, ActionError> {
    let url = Url::parse(raw.trim()).map_err(|e| {
        input_error(
            "url",
            format!(
                "is not a valid URL ({e}); give an absolute URL such as https://example.com/path"
            ),
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(input_error(
            "url",
            format!(
                "has scheme `{}`; only http:// and https:// URLs are supported",
                url.scheme()
            ),
        ));
    }
    if url.host().is_none() {
        return Err(input_error(
            "url",
            "has no host; give an absolute URL such as https://example.com/path",
        ));
    }
    Ok(url)
}

/// Values of a query or form parameter: a scalar, or an array of scalars
/// (repeated parameter). `null` means "omit".
fn scalar_values(value: &Value, field: &str) -> Result<Vec<String>, ActionError> {
    fn scalar(value: &Value) -> Option<Option<String>> {
        match value {
            Value::Null => Some(None),
            Value::String(s) => Some(Some(s.clone())),
            Value::Number(n) => Some(Some(n.to_string())),
            Value::Bool(b) => Some(Some(b.to_string())),
            Value::Array(_) | Value::Object(_) => None,
        }
    }
    let bad = |got: &Value| {
        input_error(
            field,
            format!(
                "must be a string, number, boolean or an array of those, got {}",
                kind(got)
            ),
        )
    };
    match value {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match scalar(item) {
                    Some(Some(s)) => out.push(s),
                    Some(None) => {}
                    None => return Err(bad(item)),
                }
            }
            Ok(out)
        }
        other => match scalar(other) {
            Some(v) => Ok(v.into_iter().collect()),
            None => Err(bad(other)),
        },
    }
}

/// Encodes the body and sets a default content type when the user gave none.
fn encode_body(body: &Value, headers: &mut HeaderMap) -> Result<Vec<u8>, ActionError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
    let is_form = content_type.as_deref().is_some_and(|ct| {
        ct.split(';').next().unwrap_or("").trim() == "application/x-www-form-urlencoded"
    });
    let set_default = |headers: &mut HeaderMap, value: &'static str| {
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        }
    };
    match body {
        // A string is sent verbatim (also for form bodies that are already encoded).
        Value::String(text) => {
            set_default(headers, "text/plain; charset=utf-8");
            Ok(text.clone().into_bytes())
        }
        Value::Object(fields) if is_form => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in fields {
                for v in scalar_values(value, &format!("body.{name}"))? {
                    form.append_pair(name, &v);
                }
            }
            Ok(form.finish().into_bytes())
        }
        other if is_form => Err(input_error(
            "body",
            format!(
                "must be an object (or a pre-encoded string) when content-type is application/x-www-form-urlencoded, got {}",
                kind(other)
            ),
        )),
        other => {
            set_default(headers, "application/json");
            serde_json::to_vec(other)
                .map_err(|e| input_error("body", format!("could not be encoded as JSON ({e})")))
        }
    }
}

fn parse_timeout(value: &Value) -> Result<Duration, ActionError> {
    const HINT: &str =
        "a number of seconds or a duration string such as \"500ms\", \"10s\" or \"2m\"";
    let secs = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_duration_secs(s),
        other => {
            return Err(input_error(
                "timeout",
                format!("must be {HINT}, got {}", kind(other)),
            ));
        }
    };
    let Some(secs) = secs else {
        return Err(input_error(
            "timeout",
            format!("must be {HINT}, got {value}"),
        ));
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(input_error(
            "timeout",
            format!("must be greater than zero, got {value}"),
        ));
    }
    if secs > MAX_TIMEOUT.as_secs_f64() {
        return Err(input_error(
            "timeout",
            format!(
                "must be at most {} seconds, got {value}",
                MAX_TIMEOUT.as_secs()
            ),
        ));
    }
    let duration = Duration::try_from_secs_f64(secs)
        .map_err(|_| input_error("timeout", format!("must be {HINT}, got {value}")))?;
    if duration.is_zero() {
        return Err(input_error(
            "timeout",
            format!("must be greater than zero, got {value}"),
        ));
    }
    Ok(duration)
}

/// Parses "500ms", "1.5s", "2m", "1h" or a bare number of seconds.
fn parse_duration_secs(raw: &str) -> Option<f64> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(number * scale)
}

fn human_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let t = |v: Value| parse_timeout(&v);
        assert_eq!(t(json!("500ms")).unwrap(), Duration::from_millis(500));
        assert_eq!(t(json!("10s")).unwrap(), Duration::from_secs(10));
        assert_eq!(t(json!("2m")).unwrap(), Duration::from_secs(120));
        assert_eq!(t(json!("1.5s")).unwrap(), Duration::from_millis(1500));
        assert_eq!(t(json!(" 7 ")).unwrap(), Duration::from_secs(7));
        assert_eq!(t(json!(2.5)).unwrap(), Duration::from_millis(2500));
        assert_eq!(t(json!(300)).unwrap(), MAX_TIMEOUT);
        for bad in [
            json!("6m"),
            json!(301),
            json!(0),
            json!(-1),
            json!("0s"),
            json!("abc"),
            json!("10 parsecs"),
            json!(""),
            json!("1.2.3s"),
            json!("1h"),
            json!(true),
            json!([1]),
            json!(1e300),
            json!("0.0000000001ms"),
        ] {
            let err = t(bad.clone()).unwrap_err();
            assert!(!err.is_retryable());
            assert!(err.message().contains("`timeout`"), "{bad}: {err}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = now + Duration::from_secs(90);
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let got = parse_retry_after(&h, now).unwrap();
        assert!(got <= Duration::from_secs(90) && got >= Duration::from_secs(89));
        let past = now - Duration::from_secs(90);
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(past)).unwrap(),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::ZERO));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("99999999999999999999999"),
        );
        assert_eq!(parse_retry_after(&h, now), None);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/problem+json"));
        assert!(is_json_content_type("application/vnd.api+json;v=1"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonp"));
        assert!(!is_json_content_type("+json"));
    }

    #[test]
    fn excerpt_is_bounded() {
        let long = Value::String("x ".repeat(1000));
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(&json!({"a": 1})), r#"{"a":1}"#);
        // Multi-byte characters are not split.
        let wide = Value::String("é".repeat(400));
        assert_eq!(excerpt(&wide).chars().count(), EXCERPT_CHARS + 1);
    }

    #[test]
    fn input_validation() {
        let err = |v: Value| prepare(&v, "k").err().unwrap();
        let cases = [
            (json!("https://x"), "input must be an object"),
            (json!({}), "`url`"),
            (json!({"url": 5}), "`url`"),
            (json!({"url": "not a url"}), "`url`"),
            (json!({"url": "ftp://example.com/"}), "`url`"),
            (json!({"url": "https://x", "extra": 1}), "`extra`"),
            (json!({"url": "https://x", "method": 1}), "`method`"),
            (json!({"url": "https://x", "method": "GE T"}), "`method`"),
            (json!({"url": "https://x", "method": "connect"}), "`method`"),
            (json!({"url": "https://x", "headers": []}), "`headers`"),
            (
                json!({"url": "https://x", "headers": {"a": {}}}),
                "`headers.a`",
            ),
            (
                json!({"url": "https://x", "headers": {"bad name": "v"}}),
                "`headers.bad name`",
            ),
            (
                json!({"url": "https://x", "headers": {"x": "a\r\nb"}}),
                "`headers.x`",
            ),
            (
                json!({"url": "https://x", "headers": {"Content-Length": "5"}}),
                "`headers.Content-Length`",
            ),
            (json!({"url": "https://x", "query": "a=b"}), "`query`"),
            (
                json!({"url": "https://x", "query": {"a": {"b": 1}}}),
                "`query.a`",
            ),
            (
                json!({"url": "https://x", "query": {"a": [1, [2]]}}),
                "`query.a`",
            ),
            (
                json!({"url": "https://x", "timeout": "forever"}),
                "`timeout`",
            ),
            (
                json!({"url": "https://x", "body": [1], "headers": {"content-type": "application/x-www-form-urlencoded"}}),
                "`body`",
            ),
            (
                json!({"url": "https://x", "body": {"a": {"n": 1}}, "headers": {"content-type": "application/x-www-form-urlencoded"}}),
                "`body.a`",
            ),
        ];
        for (input, needle) in cases {
            let e = err(input.clone());
            assert!(!e.is_retryable(), "{input}");
            assert!(e.message().contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn idempotency_key_defaults_and_user_override() {
        let p = prepare(&json!({"url": "https://example.com"}), "run-1").unwrap();
        assert_eq!(p.headers.get("idempotency-key").unwrap(), "run-1");
        let p = prepare(
            &json!({"url": "https://example.com", "headers": {"IDEMPOTENCY-KEY": "mine"}}),
            "run-1",
        )
        .unwrap();
        let all: Vec<_> = p.headers.get_all("idempotency-key").iter().collect();
        assert_eq!(all, vec!["mine"]);
        assert!(prepare(&json!({"url": "https://example.com"}), "bad\nkey").is_err());
    }

    #[test]
    fn query_appends_and_keeps_existing() {
        let p = prepare(
            &json!({"url": "https://example.com/p?x=1", "query": {"a": "b c", "n": [1, true, null], "skip": null}}),
            "k",
        )
        .unwrap();
        assert_eq!(p.url.query(), Some("x=1&a=b+c&n=1&n=true"));
        let p = prepare(&json!({"url": "https://example.com/p", "query": {}}), "k").unwrap();
        assert_eq!(p.url.as_str(), "https://example.com/p");
    }
}
