//! The connector conformance check. Every connector's tests call [`check_connector`] with an
//! [`Adapter`] for their stand-in server; the check walks every action of the connector's
//! manifest and asserts the contract of `docs/connectors.md`:
//!
//! - the manifest validates, and every input schema refuses unknown fields;
//! - input that is not an object, lacks a required field, has an unknown field or a field of the
//!   wrong type is a permanent error naming the field, and sends nothing;
//! - a credential without its secret is a permanent error naming the field, and sends nothing;
//! - success is an object with every property of `output_schema`, of the declared type;
//! - the provider's "bad credentials" answer is permanent;
//! - its rate-limit answer is retryable, with the provider's delay, and marked as a rate limit
//!   (`status` 429 or `rate_limited: true` in the output) so it does not use up attempts;
//! - its 5xx answer is retryable;
//! - no message or output ever contains the credential's secret.
//!
//! A new connector plugs in by implementing [`Adapter`] (a dozen lines over its stand-in).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use weft_connectors::manifest::{self, ActionSpec};
use weft_connectors::{ActionError, Credential, NetPolicy, run_action};
use weft_vault::{Secret, SecretValues};

use crate::support::{Server, bounded, client, spawn_app};

/// How the stand-in answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// As the provider does for a valid request.
    Success,
    /// The provider's answer to bad credentials (HTTP 401, Slack's `invalid_auth`, …).
    Unauthorized,
    /// The provider's rate-limit answer (HTTP 429 and its delay header, if it sends one).
    RateLimited,
    /// A 5xx.
    ServerError,
}

/// What the conformance check needs to know about one connector and its stand-in server.
pub trait Adapter {
    /// The connector's name in the catalog.
    fn connector(&self) -> &'static str;
    /// Credential values that work against the stand-in (with `api_url` pointing at it).
    fn credential(&self) -> SecretValues;
    /// The credential field holding the secret sent to the provider.
    fn secret_field(&self) -> &'static str;
    /// An input for `action` that succeeds while the stand-in answers [`Answer::Success`].
    fn valid_input(&self, action: &str) -> Value;
    /// Makes the stand-in give `answer` from now on.
    fn answer(&self, answer: Answer);
    /// The delay the stand-in's rate-limit answer asks for (`None` if the provider sends none).
    fn rate_limit_delay(&self) -> Option<Duration>;
    /// Requests the stand-in has received so far.
    fn hits(&self) -> usize;
}

/// Runs every check on every action of `adapter`'s connector; returns the number of actions.
pub async fn check_connector(adapter: &dyn Adapter) -> usize {
    let name = adapter.connector();
    let m = manifest::find(name, None).unwrap_or_else(|| panic!("no manifest for `{name}`"));
    m.validate()
        .unwrap_or_else(|e| panic!("manifest of `{name}` is invalid: {e:?}"));
    assert!(!m.actions.is_empty(), "`{name}` has no actions");
    let values = adapter.credential();
    let secret_field = adapter.secret_field();
    assert!(
        m.field(secret_field).is_some_and(|f| f.secret),
        "`{name}`: credential field `{secret_field}` must be declared secret in the manifest"
    );
    let secret = values
        .get(secret_field)
        .expect("the adapter's credential sets the secret field")
        .expose()
        .to_owned();
    let keys = AtomicUsize::new(0);
    let run = |action: &str, vals: &SecretValues, input: &Value| {
        // A fresh idempotency key per call, so providers that replay by key answer afresh.
        let key = format!(
            "conformance:{name}.{action}:{}",
            keys.fetch_add(1, Ordering::SeqCst)
        );
        run_one(name, action.to_owned(), vals.clone(), input.clone(), key)
    };

    for spec in &m.actions {
        let what = format!("{name}.{}", spec.name);
        assert_eq!(
            spec.input_schema.get("additionalProperties"),
            Some(&Value::Bool(false)),
            "{what}: the input schema must refuse unknown fields"
        );
        adapter.answer(Answer::Success);
        let valid = adapter.valid_input(&spec.name);
        assert!(valid.is_object(), "{what}: valid_input must be an object");

        // Invalid input and missing secrets never reach the network.
        let before = adapter.hits();
        let mut bad_inputs: Vec<(Value, String)> = vec![(json!("not an object"), String::new())];
        for field in required(spec) {
            let mut input = valid.clone();
            input.as_object_mut().map(|o| o.remove(&field));
            bad_inputs.push((input, format!("`{field}`")));
        }
        let mut input = valid.clone();
        input["weft_conformance_unknown"] = json!(1);
        bad_inputs.push((input, "`weft_conformance_unknown`".into()));
        for (field, schema) in properties(spec) {
            if let Some(wrong) = wrong_value(&schema) {
                let mut input = valid.clone();
                input[&field] = wrong;
                bad_inputs.push((input, format!("`{field}`")));
            }
        }
        for (input, needle) in bad_inputs {
            let r = run(&spec.name, &values, &input).await;
            assert_clean(&r, &secret, &what);
            let e = r.expect_err(&format!("{what}: input {input} must be refused"));
            assert!(!e.is_retryable(), "{what}: {input}: {e}");
            assert!(
                e.message().contains(&needle),
                "{what}: {input}: `{e}` should name {needle}"
            );
        }
        if spec.credential == "required" {
            let mut without = SecretValues::new();
            for n in values.names() {
                if n != secret_field
                    && let Some(v) = values.get(&n)
                {
                    without.insert(n, Secret::new(v.expose()));
                }
            }
            let e = run(&spec.name, &without, &valid).await.unwrap_err();
            assert!(!e.is_retryable(), "{what}: {e}");
            assert!(
                e.message().contains(&format!("`{secret_field}`")),
                "{what}: {e}"
            );
        }
        assert_eq!(
            adapter.hits(),
            before,
            "{what}: refused input reached the network"
        );

        // Success.
        let r = run(&spec.name, &values, &valid).await;
        assert_clean(&r, &secret, &what);
        let out = r.unwrap_or_else(|e| panic!("{what}: valid input failed: {e}"));
        check_output(spec, &out, &what);
        assert!(
            adapter.hits() > before,
            "{what}: success did not reach the stand-in"
        );

        // Bad credentials: permanent.
        adapter.answer(Answer::Unauthorized);
        let r = run(&spec.name, &values, &adapter.valid_input(&spec.name)).await;
        assert_clean(&r, &secret, &what);
        let e = r.expect_err(&format!("{what}: unauthorized must fail"));
        assert!(
            !e.is_retryable(),
            "{what}: unauthorized must be permanent: {e}"
        );

        // Rate limit: retryable, with the provider's delay, and recognisable as a rate limit.
        adapter.answer(Answer::RateLimited);
        let r = run(&spec.name, &values, &adapter.valid_input(&spec.name)).await;
        assert_clean(&r, &secret, &what);
        let e = r.expect_err(&format!("{what}: rate limit must fail"));
        assert!(
            e.is_retryable(),
            "{what}: rate limit must be retryable: {e}"
        );
        assert_eq!(e.retry_after(), adapter.rate_limit_delay(), "{what}: {e}");
        let o = e.output().unwrap_or(&Value::Null);
        assert!(
            o["status"] == 429 || o["rate_limited"] == true,
            "{what}: a rate limit's output must say so (status 429 or rate_limited): {o}"
        );

        // 5xx: retryable.
        adapter.answer(Answer::ServerError);
        let r = run(&spec.name, &values, &adapter.valid_input(&spec.name)).await;
        assert_clean(&r, &secret, &what);
        let e = r.expect_err(&format!("{what}: 5xx must fail"));
        assert!(e.is_retryable(), "{what}: 5xx must be retryable: {e}");

        adapter.answer(Answer::Success);
    }
    m.actions.len()
}

async fn run_one(
    connector: &'static str,
    action: String,
    values: SecretValues,
    input: Value,
    key: String,
) -> Result<Value, ActionError> {
    let m = manifest::find(connector, None).unwrap();
    let cred = Credential {
        name: "conformance",
        values: &values,
        manifest: m,
    };
    let c = client(NetPolicy::allow_all());
    bounded(run_action(&c, connector, &action, &input, Some(cred), &key)).await
}

/// Fails if the secret appears in the result's message or output.
pub fn assert_clean(r: &Result<Value, ActionError>, secret: &str, what: &str) {
    let (message, output) = match r {
        Ok(v) => (String::new(), v.to_string()),
        Err(e) => (
            e.message().to_owned(),
            e.output().map(Value::to_string).unwrap_or_default(),
        ),
    };
    assert!(
        !message.contains(secret),
        "{what}: the secret leaked into: {message}"
    );
    assert!(
        !output.contains(secret),
        "{what}: the secret leaked into: {output}"
    );
}

fn required(spec: &ActionSpec) -> Vec<String> {
    spec.input_schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn properties(spec: &ActionSpec) -> Vec<(String, Value)> {
    spec.input_schema["properties"]
        .as_object()
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn types(schema: &Value) -> Vec<String> {
    match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// A value the property's schema refuses, if it restricts values at all.
fn wrong_value(schema: &Value) -> Option<Value> {
    if schema.get("enum").is_some() {
        return Some(json!("weft_conformance_not_an_option"));
    }
    let ts = types(schema);
    if ts.is_empty() {
        return None;
    }
    [
        json!(true),
        json!("weft"),
        json!(12345),
        json!([]),
        json!({}),
    ]
    .into_iter()
    .find(|c| !ts.iter().any(|t| type_ok(t, c)))
}

/// Success is an object carrying every property of `output_schema`, each of its declared type.
fn check_output(spec: &ActionSpec, out: &Value, what: &str) {
    assert!(out.is_object(), "{what}: output must be an object: {out}");
    let props = spec.output_schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (name, schema) in props {
        let v = out
            .get(&name)
            .unwrap_or_else(|| panic!("{what}: output lacks `{name}`: {out}"));
        let ts = types(&schema);
        assert!(
            ts.is_empty() || ts.iter().any(|t| type_ok(t, v)),
            "{what}: output `{name}` should be {ts:?}: {v}"
        );
        if let Some(c) = schema.get("const") {
            assert_eq!(v, c, "{what}: output `{name}`");
        }
    }
}

/// `http.request` against the generic loopback app: the adapter picks the URL that gives each
/// answer.
struct HttpAdapter {
    server: Server,
    answer: Mutex<Answer>,
}

impl Adapter for HttpAdapter {
    fn connector(&self) -> &'static str {
        "http"
    }

    fn credential(&self) -> SecretValues {
        let mut v = SecretValues::new();
        v.insert("token", Secret::new("http-bearer-secret-0123456789"));
        v
    }

    fn secret_field(&self) -> &'static str {
        "token"
    }

    fn valid_input(&self, _action: &str) -> Value {
        let path = match *self.answer.lock().unwrap() {
            // Not the echo route: it would (rightly) return the Authorization header it got.
            Answer::Success => "/status/200",
            Answer::Unauthorized => "/status/401",
            Answer::RateLimited => "/status/429?retry_after=5",
            Answer::ServerError => "/status/503",
        };
        json!({"url": self.server.url(path), "method": "GET"})
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn rate_limit_delay(&self) -> Option<Duration> {
        Some(Duration::from_secs(5))
    }

    fn hits(&self) -> usize {
        self.server.hits()
    }
}

#[tokio::test]
async fn http_request_conforms() {
    let adapter = HttpAdapter {
        server: spawn_app("127.0.0.1:0").await,
        answer: Mutex::new(Answer::Success),
    };
    assert_eq!(check_connector(&adapter).await, 1);
}
