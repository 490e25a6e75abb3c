//! What every provider connector shares: checking input against the action's manifest schema,
//! reading the credential, sending one request through [`GuardedClient`] with the same bounds as
//! `http.request` (30 s, 10 MiB), and the pieces of response classification (Retry-After, error
//! outputs, masking of the credential's secrets).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, SET_COOKIE};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use url::Url;
use weft_vault::Redactor;

use crate::catalog::Credential;
use crate::error::ActionError;
use crate::http::{DEFAULT_TIMEOUT, GuardedClient, MAX_RESPONSE_BYTES, NetError};
use crate::manifest::ActionSpec;

/// Longest excerpt of a response body quoted in a message, in characters.
const EXCERPT_CHARS: usize = 300;

/// One run of one provider action: its name for messages, its credential, and the masking of
/// that credential's secrets in whatever the action returns.
pub(crate) struct Call<'c> {
    /// `connector.action`, the prefix of every message.
    pub name: String,
    /// The provider's display name (the manifest's `title`), e.g. `GitHub`.
    pub provider: &'c str,
    /// The credential the step uses.
    pub credential: Credential<'c>,
    redactor: Redactor,
}

impl<'c> Call<'c> {
    /// A call of `action` with `credential` (whose manifest is the connector's).
    pub fn new(action: &str, credential: Credential<'c>) -> Self {
        let mut redactor = Redactor::default();
        // Mask the fields the manifest marks secret, and any field it does not know.
        for field in credential.values.names() {
            let secret = credential
                .manifest
                .field(&field)
                .is_none_or(|spec| spec.secret);
            if secret && let Some(value) = credential.values.get(&field) {
                redactor.add(value);
            }
        }
        Call {
            name: format!("{}.{action}", credential.manifest.name),
            provider: &credential.manifest.title,
            credential,
            redactor,
        }
    }

    /// The action's manifest entry; an unknown action is a permanent error listing the known ones.
    pub fn spec(&self, action: &str) -> Result<&'c ActionSpec, ActionError> {
        let m = self.credential.manifest;
        m.action(action).ok_or_else(|| {
            let known: Vec<String> = m
                .actions
                .iter()
                .map(|a| format!("{}.{}", m.name, a.name))
                .collect();
            ActionError::permanent(format!(
                "unknown action `{}`; use one of: {}",
                self.name,
                known.join(", ")
            ))
        })
    }

    /// Masks the credential's secrets in the message and output of whatever the action returns.
    pub fn finish(&self, result: Result<Value, ActionError>) -> Result<Value, ActionError> {
        if self.redactor.is_empty() {
            return result;
        }
        match result {
            Ok(mut v) => {
                self.redactor.value(&mut v);
                Ok(v)
            }
            Err(ActionError::Retryable {
                message,
                retry_after,
                mut output,
            }) => {
                if let Some(o) = output.as_mut() {
                    self.redactor.value(o);
                }
                Err(ActionError::Retryable {
                    message: self.redactor.text(&message),
                    retry_after,
                    output,
                })
            }
            Err(ActionError::Permanent {
                message,
                mut output,
            }) => {
                if let Some(o) = output.as_mut() {
                    self.redactor.value(o);
                }
                Err(ActionError::Permanent {
                    message: self.redactor.text(&message),
                    output,
                })
            }
        }
    }

    /// A permanent error about one input field.
    pub fn bad_input(&self, field: &str, problem: impl std::fmt::Display) -> ActionError {
        ActionError::permanent(format!("{}: input `{field}` {problem}", self.name))
    }

    /// Checks `input` against the action's input schema (see [`check_value`]) and returns its
    /// fields. `null` counts as absent, as everywhere in flows.
    pub fn input<'v>(
        &self,
        spec: &ActionSpec,
        input: &'v Value,
    ) -> Result<&'v Map<String, Value>, ActionError> {
        let Some(obj) = input.as_object() else {
            let fields = schema_fields(&spec.input_schema);
            return Err(ActionError::permanent(format!(
                "{}: input must be an object with the fields {}, got {}",
                self.name,
                fields.join(", "),
                kind(input)
            )));
        };
        check_value(self, "", &spec.input_schema, input)?;
        Ok(obj)
    }

    /// A string field that must be present and non-empty (already type-checked by the schema).
    pub fn required_str<'v>(
        &self,
        obj: &'v Map<String, Value>,
        field: &str,
    ) -> Result<&'v str, ActionError> {
        match obj.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
            Some(Value::String(_)) => Err(self.bad_input(field, "must not be empty")),
            None | Some(Value::Null) => Err(self.bad_input(field, "is required (a string)")),
            Some(other) => {
                Err(self.bad_input(field, format!("must be a string, got {}", kind(other))))
            }
        }
    }

    /// An optional string field; empty counts as absent.
    pub fn optional_str<'v>(
        &self,
        obj: &'v Map<String, Value>,
        field: &str,
    ) -> Result<Option<&'v str>, ActionError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(self.bad_input(field, format!("must be a string, got {}", kind(other))))
            }
        }
    }

    /// An integer field that must be present and at least 1.
    pub fn positive_int(&self, obj: &Map<String, Value>, field: &str) -> Result<u64, ActionError> {
        match obj.get(field) {
            None | Some(Value::Null) => Err(self.bad_input(field, "is required (an integer)")),
            Some(v) => match as_integer(v) {
                Some(n) if n >= 1 => Ok(n.unsigned_abs()),
                _ => Err(self.bad_input(field, format!("must be a positive integer, got {v}"))),
            },
        }
    }

    /// A credential field that must be set.
    pub fn secret(&self, field: &str) -> Result<&'c str, ActionError> {
        self.credential.require(field)
    }

    /// `Bearer TOKEN` as a sensitive header value.
    pub fn bearer(&self, field: &str, token: &str) -> Result<HeaderValue, ActionError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ActionError::permanent(format!(
                "{}: credential '{}': `{field}` holds characters an HTTP header cannot carry (e.g. a newline); set it again",
                self.name, self.credential.name
            ))
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The credential's `api_url` with `segments` appended (each percent-encoded as one path
    /// segment, so input can never change the path's shape).
    pub fn endpoint(&self, segments: &[&str]) -> Result<Url, ActionError> {
        let raw = self.credential.require("api_url")?;
        let bad = |why: &str| {
            ActionError::permanent(format!(
                "{}: credential '{}': `api_url` {why}; set it to the API's base URL, e.g. {}",
                self.name,
                self.credential.name,
                self.credential
                    .manifest
                    .field("api_url")
                    .and_then(|f| f.default.as_deref())
                    .unwrap_or("https://api.example.com")
            ))
        };
        let mut url = Url::parse(raw.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(bad("must be an http:// or https:// URL"));
        }
        if url.host().is_none() {
            return Err(bad("has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain a user name or password"));
        }
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| bad("cannot be a base URL"))?;
            path.pop_if_empty();
            path.extend(segments);
        }
        Ok(url)
    }

    /// Sends `request` with the default timeout and reads the answer (bounded). Transport
    /// failures and timeouts are retryable; policy refusals are permanent.
    pub async fn send(
        &self,
        client: &GuardedClient,
        mut request: reqwest::Request,
    ) -> Result<Reply, ActionError> {
        let method = request.method().clone();
        let shown = shown_url(request.url());
        *request.timeout_mut() = Some(DEFAULT_TIMEOUT);
        let timed_out = || {
            ActionError::retryable(format!(
                "{}: {method} {shown} timed out after {}s; {} did not answer in time (the step can be retried)",
                self.name,
                DEFAULT_TIMEOUT.as_secs(),
                self.provider
            ))
        };
        let work = async {
            let response = client.execute(request).await.map_err(|err| match err {
                NetError::Transport { timeout: true, .. } => timed_out(),
                NetError::Transport { .. } => {
                    ActionError::retryable(format!("{}: {method} {err}", self.name))
                }
                NetError::Refused(policy) => {
                    ActionError::permanent(format!("{}: {policy}", self.name))
                }
                NetError::Build(_) => ActionError::permanent(format!("{}: {err}", self.name)),
            })?;
            self.read(&method, &shown, response).await
        };
        match tokio::time::timeout(DEFAULT_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }

    async fn read(
        &self,
        method: &Method,
        shown: &str,
        mut response: reqwest::Response,
    ) -> Result<Reply, ActionError> {
        let status = response.status();
        let headers = response.headers().clone();
        let too_large = || ActionError::Permanent {
            message: format!(
                "{}: {method} {shown} returned HTTP {} with a body larger than the {} MiB limit; check the credential's `api_url`",
                self.name,
                status.as_u16(),
                MAX_RESPONSE_BYTES / (1024 * 1024)
            ),
            output: Some(json!({
                "status": status.as_u16(),
                "headers": headers_json(&headers),
                "body": Value::Null,
            })),
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut raw: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if raw.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(too_large());
                    }
                    raw.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(err) => {
                    return Err(ActionError::retryable(format!(
                        "{}: {method} {shown} returned HTTP {} but reading the body failed: {}; the step can be retried",
                        self.name,
                        status.as_u16(),
                        error_chain(&err.without_url())
                    )));
                }
            }
        }
        let body = serde_json::from_slice::<Value>(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// A 2xx answer whose body is not what the provider sends: most likely `api_url` points
    /// somewhere else. Permanent, since the request may have had its effect.
    pub fn unexpected(&self, reply: &Reply, expected: &str) -> ActionError {
        ActionError::Permanent {
            message: format!(
                "{}: the server at `api_url` answered HTTP {} without {expected} ({}); check that credential '{}' points `api_url` at {}'s API",
                self.name,
                reply.status.as_u16(),
                reply.excerpt_or("an empty body"),
                self.credential.name,
                self.provider
            ),
            output: Some(reply.output()),
        }
    }
}

/// An answer, read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body: parsed JSON when it is JSON, else text.
    pub body: Value,
}

impl Reply {
    /// `{status, headers, body}` for an error's output, as `http.request` reports responses.
    pub fn output(&self) -> Value {
        json!({
            "status": self.status.as_u16(),
            "headers": headers_json(&self.headers),
            "body": self.body,
        })
    }

    /// [`Reply::output`] marked as a rate limit, whatever the status code says.
    pub fn rate_limited_output(&self) -> Value {
        let mut out = self.output();
        if let Some(o) = out.as_object_mut() {
            o.insert("rate_limited".into(), Value::Bool(true));
        }
        out
    }

    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// The `Retry-After` delay, if the answer has one.
    pub fn retry_after(&self) -> Option<Duration> {
        parse_retry_after(&self.headers, SystemTime::now())
    }

    /// A string field of the JSON body.
    pub fn body_str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }

    /// A short one-line excerpt of the body, or `empty` when there is none.
    pub fn excerpt_or<'a>(&'a self, empty: &'a str) -> String {
        let e = excerpt(&self.body);
        if e.is_empty() { empty.to_owned() } else { e }
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (a date in the past means "now").
pub(crate) fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait until `reset` (Unix seconds, as in GitHub's `x-ratelimit-reset`), at least one
/// second so a clock slightly ahead of the provider's does not retry into the same limit.
pub(crate) fn until_epoch(reset: &str, now: SystemTime) -> Option<Duration> {
    let reset: u64 = reset.trim().parse().ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

/// Response headers as a JSON object (repeated headers joined with `, `); cookies are left out.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        if name == SET_COOKIE {
            continue;
        }
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(name.as_str().to_owned(), Value::String(joined));
    }
    Value::Object(out)
}

/// A short single-line excerpt of a body.
pub(crate) fn excerpt(body: &Value) -> String {
    let text = match body {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
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

/// A URL without query or fragment, for messages.
fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// A header name known at compile time.
pub(crate) const fn header(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// What a JSON value is, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An integer, also when written with a zero fraction (`3.0`), as JSON Schema counts it.
pub(crate) fn as_integer(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // Beyond 2^53 a float no longer names one integer.
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
}

fn schema_fields(schema: &Value) -> Vec<String> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.keys()
                .map(|k| {
                    if required.contains(&k.as_str()) {
                        format!("{k} (required)")
                    } else {
                        k.clone()
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a schema accepts, in words: "a string", "an array of strings", "one of \"a\", \"b\"".
fn describe(schema: &Value) -> String {
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        return format!("one of {}", list.join(", "));
    }
    if let Some(c) = schema.get("const") {
        return format!("{c}");
    }
    let one = |t: &str| -> String {
        match t {
            "string" => "a string".into(),
            "integer" => match schema.get("minimum").and_then(Value::as_f64) {
                Some(min) => format!("an integer of at least {min}"),
                None => "an integer".into(),
            },
            "number" => "a number".into(),
            "boolean" => "true or false".into(),
            "null" => "null".into(),
            "array" => match schema
                .get("items")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
            {
                Some(item) => format!("an array of {item}s"),
                None => "an array".into(),
            },
            "object" => match schema
                .get("additionalProperties")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
            {
                Some(item) => format!("an object of {item}s"),
                None => "an object".into(),
            },
            other => other.into(),
        }
    };
    match schema.get("type") {
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(one)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any value".into(),
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => as_integer(v).is_some(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Checks `value` against the subset of JSON Schema the manifests use: `type`, `enum`,
/// `const`, `minimum`, `required`, `properties`, `additionalProperties` and `items`. Optional
/// properties that are `null` count as absent. Errors are permanent and name the field.
pub(crate) fn check_value(
    call: &Call<'_>,
    path: &str,
    schema: &Value,
    value: &Value,
) -> Result<(), ActionError> {
    let field = if path.is_empty() { "(input)" } else { path };
    let schema = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(call.bad_input(field, "is not allowed")),
        Value::Object(_) => schema,
        _ => return Ok(()),
    };
    let wrong = || {
        call.bad_input(
            field,
            format!("must be {}, got {}", describe(schema), kind(value)),
        )
    };
    match schema.get("type") {
        Some(Value::String(t)) if !type_matches(t, value) => return Err(wrong()),
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, value)) =>
        {
            return Err(wrong());
        }
        _ => {}
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(wrong());
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        return Err(wrong());
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n < min
    {
        return Err(call.bad_input(field, format!("must be at least {min}, got {value}")));
    }
    match value {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if obj.get(name).is_none_or(Value::is_null) {
                        let what = props
                            .and_then(|p| p.get(name))
                            .map_or_else(|| "any value".into(), describe);
                        return Err(
                            call.bad_input(&join_path(path, name), format!("is required ({what})"))
                        );
                    }
                }
            }
            let extra = schema.get("additionalProperties");
            for (key, item) in obj {
                let sub = join_path(path, key);
                if let Some(s) = props.and_then(|p| p.get(key)) {
                    if !item.is_null() {
                        check_value(call, &sub, s, item)?;
                    }
                    continue;
                }
                match extra {
                    Some(Value::Bool(false)) => {
                        let known: Vec<&str> = props
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        let hint = if known.is_empty() {
                            "this object takes no fields".to_owned()
                        } else {
                            format!("use only: {}", known.join(", "))
                        };
                        return Err(call.bad_input(
                            &sub,
                            format!("is not a field of `{}`; {hint}", call.name),
                        ));
                    }
                    Some(s) => check_value(call, &sub, s, item)?,
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_value(call, &format!("{field}[{i}]"), s, item)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks a declarative action's input against its manifest schema, with the same messages as
/// the built-in actions.
pub fn check_input(
    manifest: &crate::manifest::Manifest,
    spec: &ActionSpec,
    input: &Value,
) -> Result<(), ActionError> {
    let none = weft_vault::SecretValues::new();
    let call = Call::new(
        &spec.name,
        Credential {
            name: "",
            values: &none,
            manifest,
        },
    );
    call.input(spec, input).map(|_| ())
}

/// Resolves `host` and keeps the addresses the network policy permits, in order and without
/// repeats: the refusals HTTP makes, for connectors that open their own sockets (PostgreSQL,
/// SMTP), which then connect to these addresses only. `Err(None)` when resolving took longer
/// than `budget` (the caller words that).
pub(crate) async fn permitted_addresses(
    call: &Call<'_>,
    policy: &crate::http::NetPolicy,
    host: &str,
    port: u16,
    budget: Duration,
) -> Result<Vec<std::net::IpAddr>, Option<ActionError>> {
    use crate::http::PolicyError;
    use std::net::IpAddr;
    let literal = host.parse::<IpAddr>().ok();
    let resolved: Vec<IpAddr> = match literal {
        Some(ip) => vec![ip],
        None => match tokio::time::timeout(budget, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            Ok(Err(e)) => {
                return Err(Some(ActionError::retryable(format!(
                    "{}: could not resolve host `{host}`: {e}; check `host` (the step can be retried)",
                    call.name
                ))));
            }
            Err(_) => return Err(None),
        },
    };
    let (allowed, mut refused): (Vec<IpAddr>, Vec<IpAddr>) =
        resolved.into_iter().partition(|ip| policy.permits(*ip));
    let mut unique: Vec<IpAddr> = Vec::with_capacity(allowed.len());
    for ip in allowed {
        if !unique.contains(&ip) {
            unique.push(ip);
        }
    }
    if !unique.is_empty() {
        return Ok(unique);
    }
    let err = match literal {
        Some(ip) => PolicyError::ForbiddenAddress {
            host: host.to_string(),
            ip,
        },
        None if refused.is_empty() => {
            return Err(Some(ActionError::retryable(format!(
                "{}: host `{host}` has no addresses; check `host` (the step can be retried)",
                call.name
            ))));
        }
        None => {
            refused.sort();
            refused.dedup();
            PolicyError::NoPublicAddress {
                host: host.to_string(),
                refused,
            }
        }
    };
    Err(Some(ActionError::permanent(format!(
        "{}: {err}",
        call.name
    ))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::manifest;
    use weft_vault::{Secret, SecretValues};

    fn with_call<R>(connector: &str, action: &str, f: impl FnOnce(&Call<'_>) -> R) -> R {
        let mut values = SecretValues::new();
        values.insert("token", Secret::new("tok_secret_value"));
        let m = manifest::find(connector, None).unwrap();
        let c = Credential {
            name: "c",
            values: &values,
            manifest: m,
        };
        f(&Call::new(action, c))
    }

    #[test]
    fn schema_subset_names_the_field() {
        let schema = json!({
            "type": "object",
            "required": ["a", "n"],
            "properties": {
                "a": {"type": "string"},
                "n": {"type": "integer", "minimum": 1},
                "tags": {"type": "array", "items": {"type": "string"}},
                "meta": {"type": "object", "additionalProperties": {"type": "string"}},
                "why": {"enum": ["x", "y"]},
                "t": {"type": ["string", "number"]}
            },
            "additionalProperties": false
        });
        with_call("github", "create_issue", |call| {
            let check = |v: Value| check_value(call, "", &schema, &v);
            check(json!({"a": "s", "n": 1})).unwrap();
            check(json!({"a": "s", "n": 2.0, "tags": null, "t": 4})).unwrap();
            let cases = [
                (json!({"n": 1}), "`a` is required (a string)"),
                (json!({"a": null, "n": 1}), "`a` is required"),
                (
                    json!({"a": 1, "n": 1}),
                    "`a` must be a string, got an integer",
                ),
                (json!({"a": "s", "n": 0}), "`n` must be at least 1"),
                (
                    json!({"a": "s", "n": 1.5}),
                    "`n` must be an integer of at least 1",
                ),
                (
                    json!({"a": "s", "n": 1, "tags": ["x", 2]}),
                    "`tags[1]` must be a string",
                ),
                (
                    json!({"a": "s", "n": 1, "meta": {"k": 1}}),
                    "`meta.k` must be a string",
                ),
                (
                    json!({"a": "s", "n": 1, "why": "z"}),
                    "`why` must be one of \"x\", \"y\"",
                ),
                (
                    json!({"a": "s", "n": 1, "t": true}),
                    "`t` must be a string or a number",
                ),
                (
                    json!({"a": "s", "n": 1, "zz": 1}),
                    "`zz` is not a field of `github.create_issue`; use only:",
                ),
            ];
            for (v, needle) in cases {
                let e = check(v.clone()).unwrap_err();
                assert!(!e.is_retryable());
                assert!(e.message().contains(needle), "{v}: {e}");
                assert!(
                    e.message().starts_with("github.create_issue: input `"),
                    "{e}"
                );
            }
        });
    }

    #[test]
    fn endpoint_appends_encoded_segments() {
        with_call("github", "create_issue", |call| {
            let u = call.endpoint(&["repos", "a b", "x/y", "issues"]).unwrap();
            assert_eq!(
                u.as_str(),
                "https://api.github.com/repos/a%20b/x%2Fy/issues"
            );
        });
        let mut values = SecretValues::new();
        values.insert("api_url", Secret::new("https://ghe.example/api/v3/?q=1#f"));
        let m = manifest::find("github", None).unwrap();
        let call = Call::new(
            "create_issue",
            Credential {
                name: "c",
                values: &values,
                manifest: m,
            },
        );
        let u = call.endpoint(&["repos", "o"]).unwrap();
        assert_eq!(u.as_str(), "https://ghe.example/api/v3/repos/o");
        for bad in ["ftp://x/", "not a url", "https://u:p@x/", "mailto:a@b"] {
            let mut values = SecretValues::new();
            values.insert("api_url", Secret::new(bad));
            let call = Call::new(
                "create_issue",
                Credential {
                    name: "c",
                    values: &values,
                    manifest: m,
                },
            );
            let e = call.endpoint(&["x"]).unwrap_err();
            assert!(e.message().contains("`api_url`"), "{bad}: {e}");
            assert!(!e.message().contains("u:p"), "{e}");
        }
    }

    #[test]
    fn finish_masks_secret_fields_only() {
        let mut values = SecretValues::new();
        values.insert("token", Secret::new("ghp_supersecret"));
        values.insert("api_url", Secret::new("https://ghe.example/api/v3"));
        let m = manifest::find("github", None).unwrap();
        let call = Call::new(
            "create_issue",
            Credential {
                name: "c",
                values: &values,
                manifest: m,
            },
        );
        let out = call
            .finish(Ok(
                json!({"url": "https://ghe.example/api/v3/x", "echo": "ghp_supersecret"}),
            ))
            .unwrap();
        assert_eq!(out["url"], "https://ghe.example/api/v3/x");
        assert_eq!(out["echo"], "[redacted]");
        let e = call
            .finish(Err(ActionError::Retryable {
                message: "saw ghp_supersecret".into(),
                retry_after: Some(Duration::from_secs(1)),
                output: Some(json!({"ghp_supersecret": 1})),
            }))
            .unwrap_err();
        assert_eq!(e.message(), "saw [redacted]");
        assert_eq!(e.output().unwrap(), &json!({"[redacted]": 1}));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn retry_hints() {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("99999999999999999999999"),
        );
        assert_eq!(parse_retry_after(&h, now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(60));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let got = parse_retry_after(&h, now).unwrap();
        assert!(got <= Duration::from_secs(60) && got >= Duration::from_secs(59));

        let epoch = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            until_epoch(&(epoch + 42).to_string(), now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            until_epoch(&(epoch - 5).to_string(), now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(until_epoch("soon", now), None);
        assert_eq!(until_epoch("-1", now), None);
    }

    #[test]
    fn integers_and_kinds() {
        assert_eq!(as_integer(&json!(3)), Some(3));
        assert_eq!(as_integer(&json!(3.0)), Some(3));
        assert_eq!(as_integer(&json!(3.5)), None);
        assert_eq!(as_integer(&json!(1e300)), None);
        assert_eq!(as_integer(&json!(u64::MAX)), None);
        assert_eq!(as_integer(&json!("3")), None);
        assert_eq!(kind(&json!(1.5)), "a number");
        assert_eq!(excerpt(&Value::Null), "");
    }
}
