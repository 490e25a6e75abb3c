//! Connector manifests: what a connector offers (auth fields, triggers, actions with JSON
//! Schemas, rate limits), and the registry of the built-in ones. The connector spec is
//! `docs/connectors.md`.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// A connector's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Lowercase name, used in `connector.action`.
    pub name: String,
    /// Semantic version of the connector's contract.
    pub version: String,
    /// Display name.
    pub title: String,
    /// One paragraph for the catalog.
    pub description: String,
    /// The credential fields it reads.
    pub auth: AuthSpec,
    /// Ways it starts runs.
    #[serde(default)]
    pub triggers: Vec<TriggerSpec>,
    /// Actions steps can call.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// Provider limits, applied per credential.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Declarative connectors: the API's base URL (a `{{ }}` template over `{credential}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// How a connector authenticates, and the fields a credential for it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// `none`, `api_key`, `bearer`, `basic`, `oauth2`, `webhook_secret` or `custom`.
    pub scheme: String,
    /// The fields, in display order.
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
    /// Declarative connectors: how the credential goes into each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<InjectSpec>,
}

/// Headers and query parameters added to every request of a declarative connector; values
/// are `{{ }}` templates over `{credential}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSpec {
    /// Header name → template, e.g. `Authorization: "Bearer {{ .credential.token }}"`.
    #[serde(default)]
    pub headers: serde_json::Map<String, Value>,
    /// Query parameter → template.
    #[serde(default)]
    pub query: serde_json::Map<String, Value>,
}

/// The HTTP request of a declarative action; strings are `{{ }}` templates over
/// `{input, credential}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// HTTP method.
    #[serde(default = "get")]
    pub method: String,
    /// Path appended to `base_url`, e.g. `/items/{{ .input.id }}`.
    pub path: String,
    /// Headers.
    #[serde(default)]
    pub headers: serde_json::Map<String, Value>,
    /// Query parameters.
    #[serde(default)]
    pub query: serde_json::Map<String, Value>,
    /// JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

fn get() -> String {
    "GET".into()
}

/// Cursor pagination of a declarative action: jq over each response `{status, headers, body}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaginationSpec {
    /// jq yielding the page's items (a list).
    pub items: String,
    /// jq yielding the next page's cursor; `null` or `""` ends.
    pub next: String,
    /// Query parameter that carries the cursor.
    pub param: String,
    /// Most pages fetched per step (default 10, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pages: Option<u32>,
}

/// One credential field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Key in `values`.
    pub name: String,
    /// Whether the value is a secret (all values are encrypted; secrets are also masked).
    #[serde(default)]
    pub secret: bool,
    /// What uses it: `actions`, `triggers` or `both`.
    #[serde(rename = "for", default = "both")]
    pub used_for: String,
    /// Value used when the credential does not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What to put there.
    #[serde(default)]
    pub description: String,
}

fn both() -> String {
    "both".into()
}

/// A trigger a connector offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Signature scheme of webhook deliveries (`github`, `stripe`, `slack`, `configurable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The credential field holding the signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_field: Option<String>,
    /// Well-known event names, for documentation and UI hints (others are accepted too).
    #[serde(default)]
    pub events: Vec<String>,
    /// With `signature: hmac` (installed connectors): how the HMAC is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacSpec>,
    /// Installed connectors: the header naming the event (default: the body's `type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_header: Option<String>,
    /// Installed connectors: the header carrying the delivery id that dedupes redeliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_header: Option<String>,
}

/// A plain HMAC-of-the-body signature, as an installed connector's webhooks send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSpec {
    /// Header carrying the signature.
    pub header: String,
    /// `sha256` (default), `sha1` or `sha512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Text before the signature, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// What a poll trigger calling a listing action takes unless the flow says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollHints {
    /// jq selecting the list of items from the action's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<String>,
    /// jq giving an item's unique id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// jq over `{output, items, cursor}` giving the next cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// An action a connector offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// Name, used in `connector.action`.
    pub name: String,
    /// One line for listings.
    pub description: String,
    /// `required`, `optional` or `none`.
    #[serde(default = "required")]
    pub credential: String,
    /// JSON Schema of the input.
    pub input_schema: Value,
    /// JSON Schema of the output.
    pub output_schema: Value,
    /// Declarative connectors: the request to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestSpec>,
    /// Declarative connectors: jq from `{status, headers, body, items}` to the output
    /// (default: the body, or `{items}` with pagination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Declarative connectors: cursor pagination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<PaginationSpec>,
    /// For a listing action: how poll triggers find its items, their ids and the cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollHints>,
}

fn required() -> String {
    "required".into()
}

/// A provider rate limit, applied per (tenant, credential, endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Endpoint or action it covers (`*` for all).
    pub endpoint: String,
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u32,
}

/// Why a manifest was refused; `path` names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ManifestError {
    /// Field path, e.g. `actions[0].input_schema`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError {
        path: path.into(),
        message: message.into(),
    }
}

fn valid_ident(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `v` is `MAJOR.MINOR.PATCH` with plain numbers.
pub fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Manifest {
    /// Checks everything a registry relies on; every problem is reported with its path.
    pub fn validate(&self) -> Result<(), Vec<ManifestError>> {
        let mut errors = Vec::new();
        if !valid_ident(&self.name) {
            errors.push(err("name", "must be 1-64 characters: lowercase letters, digits, '_' or '-', starting with a letter"));
        }
        if !valid_version(&self.version) {
            errors.push(err(
                "version",
                format!(
                    "'{}' is not a version: use MAJOR.MINOR.PATCH, e.g. 1.0.0",
                    self.version
                ),
            ));
        }
        const SCHEMES: [&str; 7] = [
            "none",
            "api_key",
            "bearer",
            "basic",
            "oauth2",
            "webhook_secret",
            "custom",
        ];
        if !SCHEMES.contains(&self.auth.scheme.as_str()) {
            errors.push(err(
                "auth.scheme",
                format!("must be one of {}", SCHEMES.join(", ")),
            ));
        }
        let mut seen = Vec::new();
        for (i, f) in self.auth.fields.iter().enumerate() {
            let p = format!("auth.fields[{i}]");
            if !valid_ident(&f.name) {
                errors.push(err(format!("{p}.name"), "must be a lowercase identifier"));
            }
            if seen.contains(&f.name) {
                errors.push(err(
                    format!("{p}.name"),
                    format!("'{}' is listed twice", f.name),
                ));
            }
            seen.push(f.name.clone());
            if !["actions", "triggers", "both"].contains(&f.used_for.as_str()) {
                errors.push(err(format!("{p}.for"), "must be actions, triggers or both"));
            }
        }
        let mut names = Vec::new();
        for (i, a) in self.actions.iter().enumerate() {
            let p = format!("actions[{i}]");
            if !valid_ident(&a.name) {
                errors.push(err(format!("{p}.name"), "must be a lowercase identifier"));
            }
            if names.contains(&a.name) {
                errors.push(err(
                    format!("{p}.name"),
                    format!("'{}' is listed twice", a.name),
                ));
            }
            names.push(a.name.clone());
            if !["required", "optional", "none"].contains(&a.credential.as_str()) {
                errors.push(err(
                    format!("{p}.credential"),
                    "must be required, optional or none",
                ));
            }
            for (field, schema) in [
                ("input_schema", &a.input_schema),
                ("output_schema", &a.output_schema),
            ] {
                if let Err(m) = check_schema(schema, 0) {
                    errors.push(err(format!("{p}.{field}"), m));
                }
            }
        }
        for (i, t) in self.triggers.iter().enumerate() {
            if !valid_ident(&t.name) {
                errors.push(err(
                    format!("triggers[{i}].name"),
                    "must be a lowercase identifier",
                ));
            }
            match (&t.signature, &t.secret_field) {
                (Some(_), None) => errors.push(err(
                    format!("triggers[{i}].secret_field"),
                    "a signed trigger must name the auth field holding its secret",
                )),
                (_, Some(f)) if self.field(f).is_none() => errors.push(err(
                    format!("triggers[{i}].secret_field"),
                    format!("'{f}' is not one of auth.fields"),
                )),
                _ => {}
            }
        }
        for (i, r) in self.rate_limits.iter().enumerate() {
            if !(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0 {
                errors.push(err(
                    format!("rate_limits[{i}]"),
                    "per_second must be a positive number and burst at least 1",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The extra rules for a connector installed into a workspace: it is declarative (every
    /// action has a `request`, there is a `base_url`), and it does not take a built-in's name.
    pub fn validate_declarative(&self) -> Result<(), Vec<ManifestError>> {
        let mut errors = Vec::new();
        if builtin().iter().any(|b| b.name == self.name) {
            errors.push(err(
                "name",
                format!(
                    "'{}' is a built-in connector; choose another name",
                    self.name
                ),
            ));
        }
        if self.base_url.as_deref().is_none_or(str::is_empty) {
            errors.push(err(
                "base_url",
                "an installed connector needs the API's base URL, e.g. https://api.example.com/v1",
            ));
        }
        if self.actions.is_empty() {
            errors.push(err("actions", "list at least one action"));
        }
        for (i, t) in self.triggers.iter().enumerate() {
            check_declarative_trigger(self, &format!("triggers[{i}]"), t, &mut errors);
        }
        if self
            .triggers
            .iter()
            .filter(|t| t.signature.is_some())
            .count()
            > 1
        {
            errors.push(err(
                "triggers",
                "declare at most one signed webhook trigger",
            ));
        }
        const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
        for (i, a) in self.actions.iter().enumerate() {
            let p = format!("actions[{i}]");
            let Some(r) = &a.request else {
                errors.push(err(
                    format!("{p}.request"),
                    "an installed connector's action needs `request: {method, path, …}`",
                ));
                continue;
            };
            if !METHODS.contains(&r.method.as_str()) {
                errors.push(err(
                    format!("{p}.request.method"),
                    format!("must be one of {}", METHODS.join(", ")),
                ));
            }
            if !r.path.starts_with('/') {
                errors.push(err(format!("{p}.request.path"), "must start with '/'"));
            }
            if let Some(pg) = &a.pagination {
                if pg.param.is_empty() {
                    errors.push(err(
                        format!("{p}.pagination.param"),
                        "name the cursor's query parameter",
                    ));
                }
                if pg.max_pages.is_some_and(|n| n == 0 || n > 100) {
                    errors.push(err(format!("{p}.pagination.max_pages"), "must be 1-100"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// An action by name.
    pub fn action(&self, name: &str) -> Option<&ActionSpec> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// A credential field by name.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.auth.fields.iter().find(|f| f.name == name)
    }

    /// The signature scheme of its webhook trigger, if it has one.
    pub fn webhook_signature(&self) -> Option<&str> {
        self.triggers.iter().find_map(|t| t.signature.as_deref())
    }

    /// The credential field holding its webhook signing secret.
    pub fn webhook_secret_field(&self) -> Option<&str> {
        self.webhook_trigger()?.secret_field.as_deref()
    }

    /// Its signed webhook trigger, if it has one.
    pub fn webhook_trigger(&self) -> Option<&TriggerSpec> {
        self.triggers.iter().find(|t| t.signature.is_some())
    }
}

/// An HTTP header name as a manifest may name one.
fn header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An installed connector's webhook trigger: a scheme Weft can verify without code, the
/// secret's field, and valid header names.
fn check_declarative_trigger(
    m: &Manifest,
    p: &str,
    t: &TriggerSpec,
    errors: &mut Vec<ManifestError>,
) {
    const SCHEMES: [&str; 3] = ["hmac", "standard-webhooks", "shopify"];
    let Some(sig) = &t.signature else {
        if t.hmac.is_some() || t.event_header.is_some() || t.delivery_header.is_some() {
            errors.push(err(
                format!("{p}.signature"),
                "name the signature scheme: hmac, standard-webhooks or shopify",
            ));
        }
        return;
    };
    if !SCHEMES.contains(&sig.as_str()) {
        errors.push(err(
            format!("{p}.signature"),
            format!(
                "'{sig}' cannot be verified by an installed connector; use one of {}",
                SCHEMES.join(", ")
            ),
        ));
    }
    match (sig.as_str(), &t.hmac) {
        ("hmac", None) => errors.push(err(
            format!("{p}.hmac"),
            "describe the signature: {header, algorithm: sha256|sha1|sha512, encoding: hex|base64, prefix}",
        )),
        ("hmac", Some(h)) => {
            if !header_name(&h.header) {
                errors.push(err(format!("{p}.hmac.header"), "must be an HTTP header name"));
            }
            if h
                .algorithm
                .as_deref()
                .is_some_and(|a| !["sha256", "sha1", "sha512"].contains(&a))
            {
                errors.push(err(
                    format!("{p}.hmac.algorithm"),
                    "must be sha256, sha1 or sha512",
                ));
            }
            if h
                .encoding
                .as_deref()
                .is_some_and(|e| !["hex", "base64"].contains(&e))
            {
                errors.push(err(format!("{p}.hmac.encoding"), "must be hex or base64"));
            }
            if h.prefix.as_ref().is_some_and(|x| x.len() > 50) {
                errors.push(err(
                    format!("{p}.hmac.prefix"),
                    "must be at most 50 characters",
                ));
            }
        }
        (_, Some(_)) => errors.push(err(
            format!("{p}.hmac"),
            format!("only `signature: hmac` takes `hmac`; {sig} has fixed headers"),
        )),
        _ => {}
    }
    match t.secret_field.as_deref() {
        None => errors.push(err(
            format!("{p}.secret_field"),
            "name the auth field holding the signing secret",
        )),
        Some(f) if !m.field(f).is_some_and(|f| f.secret) => errors.push(err(
            format!("{p}.secret_field"),
            format!("'{f}' must be one of `auth.fields`, declared `secret: true`"),
        )),
        _ => {}
    }
    for (field, v) in [
        ("event_header", &t.event_header),
        ("delivery_header", &t.delivery_header),
    ] {
        if v.as_deref().is_some_and(|h| !header_name(h)) {
            errors.push(err(format!("{p}.{field}"), "must be an HTTP header name"));
        }
    }
}

/// A JSON Schema must be an object (or a boolean) whose `type`, if any, names JSON types;
/// nested schemas are checked to a bounded depth. Full validation of values against schemas
/// happens where values are known.
fn check_schema(s: &Value, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("is nested more than 32 levels deep".into());
    }
    let obj = match s {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        _ => return Err("must be a JSON Schema: an object or a boolean".into()),
    };
    const TYPES: [&str; 7] = [
        "object", "array", "string", "number", "integer", "boolean", "null",
    ];
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts))
            if !ts.is_empty()
                && ts
                    .iter()
                    .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        Some(other) => {
            return Err(format!(
                "`type` {other} is not a JSON type (use one of {})",
                TYPES.join(", ")
            ));
        }
    }
    if let Some(req) = obj.get("required")
        && !req
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
    {
        return Err("`required` must be a list of property names".into());
    }
    if let Some(props) = obj.get("properties") {
        let Some(props) = props.as_object() else {
            return Err("`properties` must be an object".into());
        };
        for (k, v) in props {
            check_schema(v, depth + 1).map_err(|m| format!("properties.{k}: {m}"))?;
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = obj.get(key) {
            check_schema(v, depth + 1).map_err(|m| format!("{key}: {m}"))?;
        }
    }
    Ok(())
}

const BUILTIN_SOURCES: [&str; 8] = [
    include_str!("../manifests/http.json"),
    include_str!("../manifests/github.json"),
    include_str!("../manifests/stripe.json"),
    include_str!("../manifests/slack.json"),
    include_str!("../manifests/webhook.json"),
    include_str!("../manifests/oauth2.json"),
    include_str!("../manifests/postgres.json"),
    include_str!("../manifests/email.json"),
];

/// The built-in connectors' manifests, parsed once.
pub fn builtin() -> &'static [Manifest] {
    static CELL: OnceLock<Vec<Manifest>> = OnceLock::new();
    CELL.get_or_init(|| {
        BUILTIN_SOURCES
            .iter()
            // The sources are compiled in and checked by a unit test.
            .filter_map(|s| serde_json::from_str::<Manifest>(s).ok())
            .collect()
    })
}

/// A built-in connector by name, at `version` if given (`1`, `1.2` and `1.2.3` match as
/// prefixes of the version).
pub fn find(name: &str, version: Option<&str>) -> Option<&'static Manifest> {
    builtin()
        .iter()
        .find(|m| m.name == name && version.is_none_or(|v| version_matches(&m.version, v)))
}

/// Whether `have` satisfies the pin `want` (`1` matches `1.x.y`, `1.2` matches `1.2.y`).
pub fn version_matches(have: &str, want: &str) -> bool {
    let h: Vec<&str> = have.split('.').collect();
    let w: Vec<&str> = want.split('.').collect();
    !w.is_empty() && w.len() <= h.len() && h.iter().zip(&w).all(|(a, b)| a == b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_builtin_manifest_parses_and_validates() {
        assert_eq!(builtin().len(), BUILTIN_SOURCES.len());
        for m in builtin() {
            m.validate().unwrap();
        }
        let gh = find("github", Some("1")).unwrap();
        assert!(gh.action("create_issue").is_some());
        assert_eq!(gh.webhook_signature(), Some("github"));
        assert!(find("github", Some("2")).is_none());
        assert!(find("nope", None).is_none());
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let mut m = find("github", None).unwrap().clone();
        m.version = "one".into();
        m.actions[0].input_schema = json!({"type": "strnig"});
        m.actions[1].name = "Create".into();
        m.auth.fields.push(m.auth.fields[0].clone());
        let errs = m.validate().unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "version",
                "auth.fields[3].name",
                "actions[0].input_schema",
                "actions[1].name"
            ]
        );
    }

    #[test]
    fn version_pins() {
        assert!(version_matches("1.2.3", "1"));
        assert!(version_matches("1.2.3", "1.2"));
        assert!(version_matches("1.2.3", "1.2.3"));
        assert!(!version_matches("1.2.3", "1.3"));
        assert!(!version_matches("1.2.3", "1.2.3.4"));
        assert!(valid_version("10.0.1"));
        assert!(!valid_version("1.0"));
        assert!(!valid_version("1.0.x"));
    }
}
