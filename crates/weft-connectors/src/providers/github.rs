//! The GitHub connector's actions, over the REST API (version 2022-11-28): create an issue,
//! comment on an issue or pull request, add labels.
//!
//! GitHub has no idempotency keys, so a step retried after an ambiguous failure (a timeout after
//! the request was sent) may act twice; every answer GitHub gives is classified exactly.

use std::time::{Duration, SystemTime};

use http::Method;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use serde_json::{Map, Value, json};

use super::common::{Call, Reply, header, until_epoch};
use crate::catalog::Credential;
use crate::error::ActionError;
use crate::http::GuardedClient;

/// The REST API version requested (`X-GitHub-Api-Version`).
pub const API_VERSION: &str = "2022-11-28";
/// The media type requested (`Accept`).
pub const MEDIA_TYPE: &str = "application/vnd.github+json";
/// What GitHub's docs ask clients to wait after a secondary rate limit that gives no delay.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Longest owner or repository name GitHub allows.
const MAX_NAME: usize = 100;

/// Runs one github action.
pub async fn run(
    client: &GuardedClient,
    action: &str,
    input: &Value,
    credential: Credential<'_>,
    _idempotency_key: &str,
) -> Result<Value, ActionError> {
    let call = Call::new(action, credential);
    let result = run_inner(&call, client, action, input).await;
    call.finish(result)
}

/// What the request is about, for messages.
struct Target<'a> {
    owner: &'a str,
    repo: &'a str,
    issue: Option<u64>,
}

async fn run_inner(
    call: &Call<'_>,
    client: &GuardedClient,
    action: &str,
    input: &Value,
) -> Result<Value, ActionError> {
    let spec = call.spec(action)?;
    let obj = call.input(spec, input)?;
    let owner = name_field(call, obj, "owner")?;
    let repo = name_field(call, obj, "repo")?;
    let (issue, path_tail, body) = match action {
        "create_issue" => {
            call.required_str(obj, "title")?;
            (
                None,
                vec!["issues".to_owned()],
                rest(obj, &["owner", "repo"]),
            )
        }
        "create_comment" => {
            let n = call.positive_int(obj, "issue_number")?;
            call.required_str(obj, "body")?;
            let body = rest(obj, &["owner", "repo", "issue_number"]);
            (
                Some(n),
                vec!["issues".into(), n.to_string(), "comments".into()],
                body,
            )
        }
        "add_labels" => {
            let n = call.positive_int(obj, "issue_number")?;
            check_labels(call, obj)?;
            let body = rest(obj, &["owner", "repo", "issue_number"]);
            (
                Some(n),
                vec!["issues".into(), n.to_string(), "labels".into()],
                body,
            )
        }
        // `spec` knows the manifest's actions; this only fires if the manifest gains one.
        _ => {
            return Err(ActionError::permanent(format!(
                "`{}` has no implementation in this build of Weft",
                call.name
            )));
        }
    };
    let token = call.secret("token")?;
    let mut segments = vec!["repos", owner, repo];
    segments.extend(path_tail.iter().map(String::as_str));
    let url = call.endpoint(&segments)?;

    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, call.bearer("token", token)?);
    headers.insert(ACCEPT, HeaderValue::from_static(MEDIA_TYPE));
    headers.insert(
        header("x-github-api-version"),
        HeaderValue::from_static(API_VERSION),
    );
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("weft/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let bytes = serde_json::to_vec(&Value::Object(body)).map_err(|e| {
        ActionError::permanent(format!(
            "{}: input could not be encoded as JSON ({e})",
            call.name
        ))
    })?;
    let mut request = reqwest::Request::new(Method::POST, url);
    *request.headers_mut() = headers;
    *request.body_mut() = Some(bytes.into());

    let reply = call.send(client, request).await?;
    let target = Target { owner, repo, issue };
    classify(call, action, &target, reply, SystemTime::now())
}

/// The input without the path fields and without `null`s (which mean "not given").
fn rest(obj: &Map<String, Value>, path_fields: &[&str]) -> Map<String, Value> {
    obj.iter()
        .filter(|(k, v)| !path_fields.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// An owner or repository name: GitHub's rules, so nothing can be smuggled into the path.
fn name_field<'v>(
    call: &Call<'_>,
    obj: &'v Map<String, Value>,
    field: &str,
) -> Result<&'v str, ActionError> {
    let name = call.required_str(obj, field)?;
    let ok = name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(name)
    } else {
        Err(call.bad_input(
            field,
            format!(
                "'{}' is not a GitHub {field} name: use at most {MAX_NAME} letters, digits, '-', '_' or '.' (e.g. `octocat` / `hello-world`)",
                name.chars().take(MAX_NAME + 1).collect::<String>()
            ),
        ))
    }
}

fn check_labels(call: &Call<'_>, obj: &Map<String, Value>) -> Result<(), ActionError> {
    let labels = obj.get("labels").and_then(Value::as_array);
    match labels {
        Some(l) if !l.is_empty() => {
            for (i, label) in l.iter().enumerate() {
                if label.as_str().is_none_or(|s| s.trim().is_empty()) {
                    return Err(
                        call.bad_input(&format!("labels[{i}]"), "must be a non-empty label name")
                    );
                }
            }
            Ok(())
        }
        _ => Err(call.bad_input("labels", "must name at least one label")),
    }
}

/// Classifies GitHub's answer; `now` is the clock for `x-ratelimit-reset`.
fn classify(
    call: &Call<'_>,
    action: &str,
    target: &Target<'_>,
    reply: Reply,
    now: SystemTime,
) -> Result<Value, ActionError> {
    let code = reply.status.as_u16();
    let name = &call.name;
    if reply.status.is_success() {
        return match (action, &reply.body) {
            ("add_labels", Value::Array(labels)) => Ok(json!({ "labels": labels })),
            ("add_labels", _) => Err(call.unexpected(&reply, "GitHub's list of labels")),
            (_, Value::Object(_)) => Ok(reply.body),
            _ => Err(call.unexpected(&reply, "a GitHub JSON object")),
        };
    }
    let detail = detail(&reply.body);
    let repo = format!("{}/{}", target.owner, target.repo);
    let permanent = |message: String| ActionError::Permanent {
        message,
        output: Some(reply.output()),
    };
    if code == 403 || code == 429 {
        if let Some(wait) = rate_limit_wait(&reply, &detail, now) {
            return Err(ActionError::Retryable {
                message: format!(
                    "{name}: GitHub rate-limited the request (HTTP {code}: {detail}); retry in {}s",
                    wait.as_secs()
                ),
                retry_after: Some(wait),
                output: Some(reply.rate_limited_output()),
            });
        }
        if code == 429 {
            return Err(ActionError::Retryable {
                message: format!(
                    "{name}: GitHub rate-limited the request (HTTP 429: {detail}); the step can be retried"
                ),
                retry_after: None,
                output: Some(reply.rate_limited_output()),
            });
        }
        return Err(permanent(format!(
            "{name}: GitHub refused access to {repo} (HTTP 403: {detail}); check that the token in credential '{}' has permission for this (issues: write)",
            call.credential.name
        )));
    }
    match code {
        401 => Err(permanent(format!(
            "{name}: GitHub rejected the token (HTTP 401: {detail}); check credential '{}' (the token may be expired or revoked)",
            call.credential.name
        ))),
        404 => {
            let what = match target.issue {
                Some(n) => format!("repository {repo} or its issue #{n} was not found"),
                None => format!("repository {repo} was not found"),
            };
            Err(permanent(format!(
                "{name}: {what}, or the token cannot see it (HTTP 404: {detail}); check the names and the token's repository access"
            )))
        }
        410 | 422 => Err(permanent(format!(
            "{name}: GitHub refused the request for {repo} (HTTP {code}: {detail})"
        ))),
        500..=599 => Err(ActionError::Retryable {
            message: format!(
                "{name}: GitHub failed with HTTP {code} ({detail}); the step can be retried"
            ),
            retry_after: reply.retry_after(),
            output: Some(reply.output()),
        }),
        _ => Err(permanent(format!(
            "{name}: GitHub answered HTTP {code} ({detail}); check the input and the credential's `api_url`"
        ))),
    }
}

/// The wait a 403/429 asks for, if it is a rate limit: the primary limit is exhausted
/// (`x-ratelimit-remaining: 0`, wait until `x-ratelimit-reset`), or a secondary limit says
/// `retry-after`, or says so in its message (wait a minute, as GitHub's docs ask).
fn rate_limit_wait(reply: &Reply, detail: &str, now: SystemTime) -> Option<Duration> {
    if reply.header("x-ratelimit-remaining") == Some("0")
        && let Some(wait) = reply
            .header("x-ratelimit-reset")
            .and_then(|r| until_epoch(r, now))
    {
        return Some(wait);
    }
    if let Some(wait) = reply.retry_after() {
        return Some(wait);
    }
    detail
        .to_ascii_lowercase()
        .contains("rate limit")
        .then_some(SECONDARY_LIMIT_WAIT)
}

/// GitHub's `message` and its `errors` (`field` `code` or `message` each), or a body excerpt.
fn detail(body: &Value) -> String {
    let Some(message) = body.get("message").and_then(Value::as_str) else {
        let e = super::common::excerpt(body);
        return if e.is_empty() { "empty body".into() } else { e };
    };
    let mut out = message.to_owned();
    let errors: Vec<String> = body
        .get("errors")
        .and_then(Value::as_array)
        .map(|errs| {
            errs.iter()
                .take(10)
                .map(|e| match e {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => {
                        let field = o.get("field").and_then(Value::as_str);
                        let text = o
                            .get("message")
                            .and_then(Value::as_str)
                            .or_else(|| o.get("code").and_then(Value::as_str));
                        match (field, text) {
                            (Some(f), Some(t)) => format!("`{f}`: {t}"),
                            (Some(f), None) => format!("`{f}` is invalid"),
                            (None, Some(t)) => t.to_owned(),
                            (None, None) => Value::Object(o.clone()).to_string(),
                        }
                    }
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if !errors.is_empty() {
        out.push_str(": ");
        out.push_str(&errors.join("; "));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn details_quote_message_and_errors() {
        let body = json!({
            "message": "Validation Failed",
            "errors": [
                {"resource": "Issue", "code": "missing_field", "field": "title"},
                {"resource": "Issue", "field": "assignees", "code": "invalid", "message": "ghost is not assignable"},
                {"message": "plain"},
                "just a string"
            ],
            "documentation_url": "https://docs.github.com/rest"
        });
        assert_eq!(
            detail(&body),
            "Validation Failed: `title`: missing_field; `assignees`: ghost is not assignable; plain; just a string"
        );
        assert_eq!(detail(&json!({"message": "Not Found"})), "Not Found");
        assert_eq!(
            detail(&json!("<html>bad gateway</html>")),
            "<html>bad gateway</html>"
        );
        assert_eq!(detail(&Value::Null), "empty body");
    }
}
