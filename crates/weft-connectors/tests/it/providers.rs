//! The GitHub, Slack and Stripe actions against loopback stand-ins that check the providers'
//! real wire formats and answer the way the providers do.

// Stand-in handlers return early with a ready `Response` as their error; size is no concern here.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};
use weft_connectors::{ActionError, Credential, NetPolicy, manifest, run_action};
use weft_vault::{Secret, SecretValues};

use crate::conformance::{Adapter, Answer, assert_clean, check_connector};
use crate::support::{
    Server, bounded, client, spawn_answer_losing_proxy, spawn_app, spawn_flood, spawn_router,
};

const GH_TOKEN: &str = "ghp_WeftTestToken0123456789abcdefABCDEF";
const SLACK_TOKEN: &str = "xoxb-1111-2222-WeftTestBotToken3333";
const STRIPE_KEY: &str = "sk_test_51WeftTestSecretKeyAbCdEfGhwxyz";
const WEBHOOK_SECRET: &str = "whsec_WeftTriggerSecretNotForActions";

// ---------------------------------------------------------------------------------------------
// Stand-in plumbing

/// How a stand-in answers; each stand-in handles the scenarios its provider has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Scenario {
    #[default]
    Normal,
    Unauthorized,
    RateLimited,
    ServerError,
    // GitHub
    Forbidden,
    PrimaryRateLimit,
    SecondaryRetryAfter,
    SecondaryNoHeader,
    BadGateway,
    Gone,
    EchoToken,
    NotJson,
    // Slack
    MissingScope,
    InternalError,
    // Stripe
    CardDeclined,
    Conflict,
    NoRetry500,
    RetryableBadRequest,
}

impl From<Answer> for Scenario {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Success => Scenario::Normal,
            Answer::Unauthorized => Scenario::Unauthorized,
            Answer::RateLimited => Scenario::RateLimited,
            Answer::ServerError => Scenario::ServerError,
        }
    }
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A stored Stripe result, replayed for a repeated idempotency key.
#[derive(Debug, Clone)]
struct Stored {
    path: String,
    params: Value,
    status: StatusCode,
    body: Value,
}

#[derive(Default)]
struct Inner {
    scenario: Mutex<Scenario>,
    hits: Arc<AtomicUsize>,
    seen: Mutex<Vec<Seen>>,
    ids: AtomicU64,
    replays: Mutex<HashMap<String, Stored>>,
    customers: AtomicUsize,
}

#[derive(Clone, Default)]
struct Stand(Arc<Inner>);

impl Stand {
    fn set(&self, s: Scenario) {
        *self.0.scenario.lock().unwrap() = s;
    }

    fn scenario(&self) -> Scenario {
        *self.0.scenario.lock().unwrap()
    }

    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) {
        self.0.hits.fetch_add(1, Ordering::SeqCst);
        self.0.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: uri.path().to_owned(),
            headers: headers.clone(),
            body: body.clone(),
        });
    }

    fn last(&self) -> Seen {
        self.0.seen.lock().unwrap().last().cloned().unwrap()
    }

    fn hits(&self) -> usize {
        self.0.hits.load(Ordering::SeqCst)
    }

    fn next_id(&self) -> u64 {
        self.0.ids.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn customers(&self) -> usize {
        self.0.customers.load(Ordering::SeqCst)
    }
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn json_response(status: StatusCode, headers: &[(&str, String)], body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    for (k, v) in headers {
        r.headers_mut().insert(
            header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

fn epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `connector.action` like the executor does, with a loopback-permitting client.
async fn run(
    connector: &str,
    values: &SecretValues,
    action: &str,
    input: Value,
    key: &str,
) -> Result<Value, ActionError> {
    run_with(
        NetPolicy::allow_all(),
        connector,
        values,
        action,
        input,
        key,
    )
    .await
}

async fn run_with(
    policy: NetPolicy,
    connector: &str,
    values: &SecretValues,
    action: &str,
    input: Value,
    key: &str,
) -> Result<Value, ActionError> {
    let m = manifest::find(connector, None).unwrap();
    let cred = Credential {
        name: "prod-creds",
        values,
        manifest: m,
    };
    bounded(run_action(
        &client(policy),
        connector,
        action,
        &input,
        Some(cred),
        key,
    ))
    .await
}

fn values(pairs: &[(&str, &str)]) -> SecretValues {
    let mut v = SecretValues::new();
    for (k, val) in pairs {
        v.insert(*k, Secret::new(*val));
    }
    v
}

/// Asserts a permanent error whose message contains every needle.
fn permanent(r: &Result<Value, ActionError>, needles: &[&str]) -> ActionError {
    let e = r.clone().unwrap_err();
    assert!(!e.is_retryable(), "should be permanent: {e}");
    for n in needles {
        assert!(e.message().contains(n), "`{e}` should contain `{n}`");
    }
    e
}

/// Asserts a retryable error with `retry_after` and needles in the message.
fn retryable(
    r: &Result<Value, ActionError>,
    after: Option<Duration>,
    needles: &[&str],
) -> ActionError {
    let e = r.clone().unwrap_err();
    assert!(e.is_retryable(), "should be retryable: {e}");
    assert_eq!(e.retry_after(), after, "{e}");
    for n in needles {
        assert!(e.message().contains(n), "`{e}` should contain `{n}`");
    }
    e
}

// ---------------------------------------------------------------------------------------------
// GitHub stand-in: REST API v3 under /api/v3 (as on GitHub Enterprise Server).

fn gh_headers(remaining: u32) -> Vec<(&'static str, String)> {
    vec![
        ("x-ratelimit-limit", "5000".into()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", (epoch() + 1800).to_string()),
        ("x-ratelimit-used", (5000 - remaining).to_string()),
        ("x-ratelimit-resource", "core".into()),
        ("x-github-request-id", "ABCD:1234:5678".into()),
    ]
}

fn gh_error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        &gh_headers(4999),
        json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            "status": status.as_u16().to_string(),
        }),
    )
}

fn gh_validation(errors: Value) -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &gh_headers(4999),
        json!({
            "message": "Validation Failed",
            "errors": errors,
            "documentation_url": "https://docs.github.com/rest/issues/issues#create-an-issue",
            "status": "422",
        }),
    )
}

/// Checks what GitHub checks before routing, and answers the configured scenario.
fn gh_gate(
    s: &Stand,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, Response> {
    s.record(method, uri, headers, body);
    if header_str(headers, "user-agent").is_empty() {
        return Err((
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header.",
        )
            .into_response());
    }
    if s.scenario() == Scenario::Unauthorized
        || header_str(headers, "authorization") != format!("Bearer {GH_TOKEN}")
    {
        return Err(gh_error(StatusCode::UNAUTHORIZED, "Bad credentials"));
    }
    if header_str(headers, "accept") != "application/vnd.github+json" {
        return Err(gh_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported 'Accept' header",
        ));
    }
    if header_str(headers, "x-github-api-version") != "2022-11-28" {
        return Err(gh_error(
            StatusCode::BAD_REQUEST,
            "Unsupported 'X-GitHub-Api-Version' header",
        ));
    }
    let secondary =
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
    match s.scenario() {
        Scenario::RateLimited => {
            let mut r = gh_error(StatusCode::TOO_MANY_REQUESTS, secondary);
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("7"));
            return Err(r);
        }
        Scenario::ServerError => {
            return Err(gh_error(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"));
        }
        Scenario::BadGateway => {
            return Err((
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response());
        }
        Scenario::Forbidden => {
            return Err(gh_error(
                StatusCode::FORBIDDEN,
                "Resource not accessible by personal access token",
            ));
        }
        Scenario::PrimaryRateLimit => {
            let mut h = gh_headers(0);
            h[2].1 = (epoch() + 120).to_string();
            return Err(json_response(
                StatusCode::FORBIDDEN,
                &h,
                json!({"message": "API rate limit exceeded for user ID 1.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}),
            ));
        }
        Scenario::SecondaryRetryAfter => {
            let mut r = gh_error(StatusCode::FORBIDDEN, secondary);
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("60"));
            return Err(r);
        }
        Scenario::SecondaryNoHeader => return Err(gh_error(StatusCode::FORBIDDEN, secondary)),
        Scenario::Gone => {
            return Err(gh_error(
                StatusCode::GONE,
                "Issues are disabled for this repo",
            ));
        }
        Scenario::EchoToken => {
            // A misbehaving proxy that quotes the request's credentials back.
            let auth = header_str(headers, "authorization").to_owned();
            return Err(gh_validation(
                json!([{"message": format!("bad header {auth}"), "field": "authorization"}]),
            ));
        }
        Scenario::NotJson => {
            return Err((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>Sign in</html>",
            )
                .into_response());
        }
        _ => {}
    }
    if !header_str(headers, "content-type").starts_with("application/json") {
        return Err(gh_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(gh_error(StatusCode::BAD_REQUEST, "Problems parsing JSON")),
    }
}

fn gh_label(name: &str, id: u64) -> Value {
    json!({
        "id": 208045946 + id,
        "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=",
        "url": format!("https://api.github.com/repos/octo-org/hello-world/labels/{name}"),
        "name": name,
        "description": null,
        "color": "ededed",
        "default": false,
    })
}

async fn gh_issue(
    State(s): State<Stand>,
    Path((owner, repo)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let input = match gh_gate(&s, &method, &uri, &headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if repo == "private-repo" {
        return gh_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let Some(title) = input["title"].as_str() else {
        return gh_validation(
            json!([{"resource": "Issue", "code": "missing_field", "field": "title"}]),
        );
    };
    let assignees: Vec<&str> = input["assignees"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(bad) = assignees.iter().find(|a| **a == "ghost") {
        return gh_validation(
            json!([{"value": bad, "resource": "Issue", "field": "assignees", "code": "invalid"}]),
        );
    }
    let n = s.next_id();
    let labels: Vec<Value> = input["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .enumerate()
                .map(|(i, l)| gh_label(l, i as u64))
                .collect()
        })
        .unwrap_or_default();
    let issue = json!({
        "id": 1_296_269_000 + n,
        "node_id": "MDU6SXNzdWUx",
        "url": format!("https://api.github.com/repos/{owner}/{repo}/issues/{n}"),
        "repository_url": format!("https://api.github.com/repos/{owner}/{repo}"),
        "html_url": format!("https://github.com/{owner}/{repo}/issues/{n}"),
        "number": n,
        "state": "open",
        "title": title,
        "body": input["body"],
        "user": {"login": "weft-bot", "id": 1, "type": "Bot"},
        "labels": labels,
        "assignees": assignees.iter().map(|a| json!({"login": a})).collect::<Vec<_>>(),
        "comments": 0,
        "locked": false,
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
    });
    let mut h = gh_headers(4998);
    h.push((
        "location",
        format!("https://api.github.com/repos/{owner}/{repo}/issues/{n}"),
    ));
    json_response(StatusCode::CREATED, &h, issue)
}

async fn gh_comment(
    State(s): State<Stand>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let input = match gh_gate(&s, &method, &uri, &headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if number == 999 || repo == "private-repo" {
        return gh_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let Some(text) = input["body"].as_str() else {
        return gh_validation(
            json!([{"resource": "IssueComment", "code": "missing_field", "field": "body"}]),
        );
    };
    let id = 1_000_000 + s.next_id();
    json_response(
        StatusCode::CREATED,
        &gh_headers(4998),
        json!({
            "id": id,
            "node_id": "MDEyOklzc3VlQ29tbWVudDE=",
            "url": format!("https://api.github.com/repos/{owner}/{repo}/issues/comments/{id}"),
            "html_url": format!("https://github.com/{owner}/{repo}/issues/{number}#issuecomment-{id}"),
            "issue_url": format!("https://api.github.com/repos/{owner}/{repo}/issues/{number}"),
            "body": text,
            "user": {"login": "weft-bot", "id": 1, "type": "Bot"},
            "author_association": "NONE",
            "created_at": "2024-05-01T12:00:00Z",
            "updated_at": "2024-05-01T12:00:00Z",
        }),
    )
}

async fn gh_labels(
    State(s): State<Stand>,
    Path((_owner, repo, number)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let input = match gh_gate(&s, &method, &uri, &headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if number == 999 || repo == "private-repo" {
        return gh_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let Some(names) = input["labels"]
        .as_array()
        .filter(|l| l.iter().all(Value::is_string))
    else {
        return gh_validation(json!([{"resource": "Label", "code": "invalid", "field": "labels"}]));
    };
    // GitHub answers with every label the issue now has: the existing `triage` plus the new ones.
    let mut all = vec![gh_label("triage", 0)];
    for (i, n) in names.iter().enumerate() {
        all.push(gh_label(n.as_str().unwrap(), i as u64 + 1));
    }
    json_response(StatusCode::OK, &gh_headers(4997), Value::Array(all))
}

async fn gh_fallback(
    State(s): State<Stand>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record(&method, &uri, &headers, &body);
    gh_error(StatusCode::NOT_FOUND, "Not Found")
}

async fn github_standin() -> (Server, Stand) {
    let stand = Stand::default();
    let app = Router::new()
        .route("/api/v3/repos/{owner}/{repo}/issues", post(gh_issue))
        .route(
            "/api/v3/repos/{owner}/{repo}/issues/{number}/comments",
            post(gh_comment),
        )
        .route(
            "/api/v3/repos/{owner}/{repo}/issues/{number}/labels",
            post(gh_labels),
        )
        .fallback(gh_fallback)
        .with_state(stand.clone());
    (spawn_router(app, Arc::clone(&stand.0.hits)).await, stand)
}

fn gh_values(server: &Server) -> SecretValues {
    values(&[
        ("token", GH_TOKEN),
        ("webhook_secret", WEBHOOK_SECRET),
        ("api_url", &server.url("/api/v3")),
    ])
}

struct GithubAdapter {
    server: Server,
    stand: Stand,
}

impl Adapter for GithubAdapter {
    fn connector(&self) -> &'static str {
        "github"
    }
    fn credential(&self) -> SecretValues {
        gh_values(&self.server)
    }
    fn secret_field(&self) -> &'static str {
        "token"
    }
    fn valid_input(&self, action: &str) -> Value {
        match action {
            "create_issue" => {
                json!({"owner": "octo-org", "repo": "hello-world", "title": "Found a bug"})
            }
            "create_comment" => {
                json!({"owner": "octo-org", "repo": "hello-world", "issue_number": 1347, "body": "Me too"})
            }
            "add_labels" => {
                json!({"owner": "octo-org", "repo": "hello-world", "issue_number": 1347, "labels": ["bug"]})
            }
            other => panic!("no input for github.{other}"),
        }
    }
    fn answer(&self, answer: Answer) {
        self.stand.set(answer.into());
    }
    fn rate_limit_delay(&self) -> Option<Duration> {
        Some(Duration::from_secs(7))
    }
    fn hits(&self) -> usize {
        self.stand.hits()
    }
}

#[tokio::test]
async fn github_conforms() {
    let (server, stand) = github_standin().await;
    let adapter = GithubAdapter { server, stand };
    assert_eq!(check_connector(&adapter).await, 3);
}

#[tokio::test]
async fn github_create_issue_speaks_the_rest_api() {
    let (server, stand) = github_standin().await;
    let vals = gh_values(&server);
    let out = run(
        "github",
        &vals,
        "create_issue",
        json!({
            "owner": "octo-org", "repo": "hello-world", "title": "Found a bug",
            "body": "It crashes", "labels": ["bug", "p1"], "assignees": ["octocat"],
        }),
        "run-1:open:0",
    )
    .await
    .unwrap();
    let seen = stand.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/api/v3/repos/octo-org/hello-world/issues");
    assert_eq!(seen.header("authorization"), format!("Bearer {GH_TOKEN}"));
    assert_eq!(seen.header("accept"), "application/vnd.github+json");
    assert_eq!(seen.header("x-github-api-version"), "2022-11-28");
    assert!(
        seen.header("user-agent").starts_with("weft/"),
        "{}",
        seen.header("user-agent")
    );
    assert_eq!(seen.header("content-type"), "application/json");
    assert_eq!(
        seen.json(),
        json!({"title": "Found a bug", "body": "It crashes", "labels": ["bug", "p1"], "assignees": ["octocat"]})
    );
    assert_eq!(out["number"], 1);
    assert_eq!(
        out["html_url"],
        "https://github.com/octo-org/hello-world/issues/1"
    );
    assert_eq!(out["title"], "Found a bug");
    assert_eq!(out["labels"][1]["name"], "p1");
    assert_eq!(out["assignees"][0]["login"], "octocat");
    assert!(out["id"].is_u64());

    // Optional fields given as null are left out, as if not given.
    run(
        "github",
        &vals,
        "create_issue",
        json!({"owner": "o", "repo": "r.js", "title": "t", "body": null}),
        "k",
    )
    .await
    .unwrap();
    assert_eq!(stand.last().json(), json!({"title": "t"}));
    assert_eq!(stand.last().path, "/api/v3/repos/o/r.js/issues");
}

#[tokio::test]
async fn github_comment_and_labels() {
    let (server, stand) = github_standin().await;
    let vals = gh_values(&server);
    let out = run(
        "github",
        &vals,
        "create_comment",
        json!({"owner": "octo-org", "repo": "hello-world", "issue_number": 1347, "body": "Thanks!"}),
        "k",
    )
    .await
    .unwrap();
    assert_eq!(
        stand.last().path,
        "/api/v3/repos/octo-org/hello-world/issues/1347/comments"
    );
    assert_eq!(stand.last().json(), json!({"body": "Thanks!"}));
    assert_eq!(out["body"], "Thanks!");
    assert!(
        out["html_url"]
            .as_str()
            .unwrap()
            .contains("/issues/1347#issuecomment-")
    );

    // An integral float from an expression is still an issue number.
    let out = run(
        "github",
        &vals,
        "add_labels",
        json!({"owner": "octo-org", "repo": "hello-world", "issue_number": 1347.0, "labels": ["bug", "ui"]}),
        "k",
    )
    .await
    .unwrap();
    assert_eq!(
        stand.last().path,
        "/api/v3/repos/octo-org/hello-world/issues/1347/labels"
    );
    assert_eq!(stand.last().json(), json!({"labels": ["bug", "ui"]}));
    let names: Vec<&str> = out["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["triage", "bug", "ui"]);
}

#[tokio::test]
async fn github_errors_are_classified() {
    let (server, stand) = github_standin().await;
    let vals = gh_values(&server);
    let issue = json!({"owner": "octo-org", "repo": "hello-world", "title": "t"});
    let go = |input: Value| {
        let vals = vals.clone();
        async move { run("github", &vals, "create_issue", input, "k").await }
    };

    stand.set(Scenario::Unauthorized);
    let r = go(issue.clone()).await;
    let e = permanent(
        &r,
        &[
            "GitHub rejected the token",
            "Bad credentials",
            "credential 'prod-creds'",
        ],
    );
    assert_eq!(e.output().unwrap()["status"], 401);
    assert_eq!(e.output().unwrap()["body"]["message"], "Bad credentials");
    assert_clean(&r, GH_TOKEN, "401");

    let wrong = values(&[
        ("token", "ghp_wrong_token_value_000"),
        ("api_url", &server.url("/api/v3")),
    ]);
    stand.set(Scenario::Normal);
    let r = run("github", &wrong, "create_issue", issue.clone(), "k").await;
    permanent(&r, &["HTTP 401"]);

    let r = go(json!({"owner": "octo-org", "repo": "private-repo", "title": "t"})).await;
    permanent(
        &r,
        &[
            "repository octo-org/private-repo was not found, or the token cannot see it",
            "HTTP 404",
        ],
    );
    let r = run(
        "github",
        &vals,
        "create_comment",
        json!({"owner": "octo-org", "repo": "hello-world", "issue_number": 999, "body": "x"}),
        "k",
    )
    .await;
    permanent(&r, &["issue #999 was not found"]);

    let r = go(
        json!({"owner": "octo-org", "repo": "hello-world", "title": "t", "assignees": ["ghost"]}),
    )
    .await;
    let e = permanent(
        &r,
        &["HTTP 422", "Validation Failed", "`assignees`: invalid"],
    );
    assert_eq!(e.output().unwrap()["body"]["errors"][0]["value"], "ghost");

    let cases: Vec<(Scenario, Option<Duration>, &str)> = vec![
        (
            Scenario::RateLimited,
            Some(Duration::from_secs(7)),
            "rate-limited",
        ),
        (
            Scenario::SecondaryRetryAfter,
            Some(Duration::from_secs(60)),
            "secondary rate limit",
        ),
        (
            Scenario::SecondaryNoHeader,
            Some(Duration::from_secs(60)),
            "secondary rate limit",
        ),
        (Scenario::ServerError, None, "HTTP 500"),
        (Scenario::BadGateway, None, "HTTP 502"),
    ];
    for (scenario, after, needle) in cases {
        stand.set(scenario);
        let r = go(issue.clone()).await;
        retryable(&r, after, &[needle]);
        assert_clean(&r, GH_TOKEN, needle);
    }

    // Primary rate limit: 403 with x-ratelimit-remaining 0; wait until x-ratelimit-reset.
    stand.set(Scenario::PrimaryRateLimit);
    let e = go(issue.clone()).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let wait = e.retry_after().unwrap();
    assert!(
        wait >= Duration::from_secs(115) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
    let out = e.output().unwrap();
    assert_eq!(out["status"], 403);
    assert_eq!(out["rate_limited"], true);
    assert_eq!(out["headers"]["x-ratelimit-remaining"], "0");

    // Any other 403 is a permission problem.
    stand.set(Scenario::Forbidden);
    let r = go(issue.clone()).await;
    let e = permanent(
        &r,
        &[
            "HTTP 403",
            "Resource not accessible by personal access token",
            "'prod-creds'",
        ],
    );
    assert!(e.output().unwrap().get("rate_limited").is_none());

    stand.set(Scenario::Gone);
    permanent(
        &go(issue.clone()).await,
        &["HTTP 410", "Issues are disabled"],
    );

    stand.set(Scenario::NotJson);
    permanent(&go(issue.clone()).await, &["HTTP 200", "`api_url`"]);
}

#[tokio::test]
async fn github_masks_a_token_echoed_back() {
    let (server, stand) = github_standin().await;
    let vals = gh_values(&server);
    stand.set(Scenario::EchoToken);
    let r = run(
        "github",
        &vals,
        "create_issue",
        json!({"owner": "o", "repo": "r", "title": "t"}),
        "k",
    )
    .await;
    let e = permanent(&r, &["bad header Bearer [redacted]"]);
    assert_clean(&r, GH_TOKEN, "echo");
    assert!(e.output().unwrap().to_string().contains("[redacted]"));
}

#[tokio::test]
async fn github_names_cannot_change_the_path() {
    let (server, stand) = github_standin().await;
    let vals = gh_values(&server);
    let cases = [
        (
            json!({"owner": "../admin", "repo": "r", "title": "t"}),
            "`owner`",
        ),
        (json!({"owner": "o", "repo": "a/b", "title": "t"}), "`repo`"),
        (json!({"owner": "o", "repo": "..", "title": "t"}), "`repo`"),
        (json!({"owner": ".", "repo": "r", "title": "t"}), "`owner`"),
        (
            json!({"owner": "o", "repo": "r?x=1", "title": "t"}),
            "`repo`",
        ),
        (
            json!({"owner": "o", "repo": "r%2F", "title": "t"}),
            "`repo`",
        ),
        (json!({"owner": "ö", "repo": "r", "title": "t"}), "`owner`"),
        (
            json!({"owner": "o", "repo": "r".repeat(101), "title": "t"}),
            "`repo`",
        ),
        (json!({"owner": "", "repo": "r", "title": "t"}), "`owner`"),
        (json!({"owner": "o", "repo": "r", "title": "  "}), "`title`"),
        (
            json!({"owner": "o", "repo": "r", "title": "t", "labels": "bug"}),
            "`labels`",
        ),
        (
            json!({"owner": "o", "repo": "r", "title": "t", "assignees": [1]}),
            "`assignees[0]`",
        ),
    ];
    for (input, field) in cases {
        let r = run("github", &vals, "create_issue", input.clone(), "k").await;
        let e = permanent(&r, &[field]);
        assert!(
            e.message().starts_with("github.create_issue: input "),
            "{e}"
        );
    }
    for n in [json!(0), json!(-3), json!(1.5), json!("12"), json!(null)] {
        let input = json!({"owner": "o", "repo": "r", "issue_number": n, "body": "x"});
        permanent(
            &run("github", &vals, "create_comment", input, "k").await,
            &["`issue_number`"],
        );
    }
    let input = json!({"owner": "o", "repo": "r", "issue_number": 1, "labels": []});
    permanent(
        &run("github", &vals, "add_labels", input, "k").await,
        &["`labels` must name at least one label"],
    );
    let input = json!({"owner": "o", "repo": "r", "issue_number": 1, "labels": [""]});
    permanent(
        &run("github", &vals, "add_labels", input, "k").await,
        &["`labels[0]`"],
    );
    assert_eq!(stand.hits(), 0, "refused input never reaches GitHub");
    // The repository names GitHub allows go through untouched.
    run(
        "github",
        &vals,
        "create_issue",
        json!({"owner": "A-b_c", "repo": "x.y-z_1", "title": "t"}),
        "k",
    )
    .await
    .unwrap();
    assert_eq!(stand.last().path, "/api/v3/repos/A-b_c/x.y-z_1/issues");
}

// ---------------------------------------------------------------------------------------------
// Slack stand-in: Web API under /api.

fn slack(status: StatusCode, body: Value) -> Response {
    json_response(status, &[("x-slack-req-id", "req-0001".into())], body)
}

async fn slack_post(
    State(s): State<Stand>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record(&method, &uri, &headers, &body);
    let auth = header_str(&headers, "authorization");
    if auth.is_empty() {
        return slack(StatusCode::OK, json!({"ok": false, "error": "not_authed"}));
    }
    if s.scenario() == Scenario::Unauthorized || auth != format!("Bearer {SLACK_TOKEN}") {
        return slack(
            StatusCode::OK,
            json!({"ok": false, "error": "invalid_auth"}),
        );
    }
    match s.scenario() {
        Scenario::RateLimited => {
            let mut r = slack(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"ok": false, "error": "ratelimited"}),
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("3"));
            return r;
        }
        Scenario::ServerError => {
            return (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error").into_response();
        }
        Scenario::InternalError => {
            return slack(
                StatusCode::OK,
                json!({"ok": false, "error": "internal_error"}),
            );
        }
        Scenario::MissingScope => {
            return slack(
                StatusCode::OK,
                json!({"ok": false, "error": "missing_scope", "needed": "chat:write", "provided": "channels:read"}),
            );
        }
        _ => {}
    }
    let ct = header_str(&headers, "content-type");
    if !ct.starts_with("application/json") {
        // Slack would read the body as a form and find nothing useful in it.
        return slack(
            StatusCode::OK,
            json!({"ok": false, "error": "invalid_form_data"}),
        );
    }
    let Ok(Value::Object(msg)) = serde_json::from_slice::<Value>(&body) else {
        return slack(
            StatusCode::OK,
            json!({"ok": false, "error": "invalid_json"}),
        );
    };
    let channel = msg.get("channel").and_then(Value::as_str).unwrap_or("");
    let err = match channel {
        "" | "C404" => Some("channel_not_found"),
        "CNOTIN" => Some("not_in_channel"),
        "CARCHIVED" => Some("is_archived"),
        _ => None,
    };
    if let Some(err) = err {
        return slack(StatusCode::OK, json!({"ok": false, "error": err}));
    }
    let text = msg.get("text").and_then(Value::as_str);
    let blocks = msg.get("blocks").and_then(Value::as_array);
    if text.is_none_or(str::is_empty) && blocks.is_none_or(Vec::is_empty) {
        return slack(StatusCode::OK, json!({"ok": false, "error": "no_text"}));
    }
    if text.is_some_and(|t| t.chars().count() > 40_000) {
        return slack(
            StatusCode::OK,
            json!({"ok": false, "error": "msg_too_long"}),
        );
    }
    if blocks.is_some_and(|b| b.iter().any(|b| b.get("type").is_none())) {
        return slack(
            StatusCode::OK,
            json!({"ok": false, "error": "invalid_blocks", "response_metadata": {"messages": ["[ERROR] missing required field: type [json-pointer:/blocks/0]"]}}),
        );
    }
    let ts = format!("1714567890.{:06}", s.next_id());
    let mut message = json!({
        "type": "message", "user": "U0WEFTBOT", "bot_id": "B0WEFT", "app_id": "A0WEFT",
        "team": "T0TEAM", "ts": ts, "text": text.unwrap_or(""),
    });
    if let Some(b) = blocks {
        message["blocks"] = Value::Array(b.clone());
    }
    if let Some(t) = msg.get("thread_ts") {
        message["thread_ts"] = t.clone();
    }
    let mut out = json!({"ok": true, "channel": channel, "ts": ts, "message": message});
    if !ct.to_ascii_lowercase().contains("charset=utf-8") {
        out["warning"] = json!("missing_charset");
        out["response_metadata"] = json!({"warnings": ["missing_charset"]});
    }
    slack(StatusCode::OK, out)
}

async fn slack_standin() -> (Server, Stand) {
    let stand = Stand::default();
    let app = Router::new()
        .route("/api/chat.postMessage", post(slack_post))
        .with_state(stand.clone());
    (spawn_router(app, Arc::clone(&stand.0.hits)).await, stand)
}

fn slack_values(server: &Server) -> SecretValues {
    values(&[
        ("bot_token", SLACK_TOKEN),
        ("signing_secret", WEBHOOK_SECRET),
        ("api_url", &server.url("/api")),
    ])
}

struct SlackAdapter {
    server: Server,
    stand: Stand,
}

impl Adapter for SlackAdapter {
    fn connector(&self) -> &'static str {
        "slack"
    }
    fn credential(&self) -> SecretValues {
        slack_values(&self.server)
    }
    fn secret_field(&self) -> &'static str {
        "bot_token"
    }
    fn valid_input(&self, _action: &str) -> Value {
        json!({"channel": "C0123456", "text": "Deploy finished"})
    }
    fn answer(&self, answer: Answer) {
        self.stand.set(answer.into());
    }
    fn rate_limit_delay(&self) -> Option<Duration> {
        Some(Duration::from_secs(3))
    }
    fn hits(&self) -> usize {
        self.stand.hits()
    }
}

#[tokio::test]
async fn slack_conforms() {
    let (server, stand) = slack_standin().await;
    assert_eq!(check_connector(&SlackAdapter { server, stand }).await, 1);
}

#[tokio::test]
async fn slack_post_message_speaks_the_web_api() {
    let (server, stand) = slack_standin().await;
    let vals = slack_values(&server);
    let blocks = json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*Deployed*"}}]);
    let out = run(
        "slack",
        &vals,
        "post_message",
        json!({"channel": "C0123456", "text": "Deployed", "blocks": blocks, "thread_ts": "1714567000.000100", "unfurl_links": false, "mrkdwn": null}),
        "k",
    )
    .await
    .unwrap();
    let seen = stand.last();
    assert_eq!(seen.path, "/api/chat.postMessage");
    assert_eq!(
        seen.header("authorization"),
        format!("Bearer {SLACK_TOKEN}")
    );
    assert_eq!(
        seen.header("content-type"),
        "application/json; charset=utf-8"
    );
    assert_eq!(
        seen.json(),
        json!({"channel": "C0123456", "text": "Deployed", "blocks": blocks, "thread_ts": "1714567000.000100", "unfurl_links": false})
    );
    assert_eq!(out["ok"], true);
    assert_eq!(out["channel"], "C0123456");
    assert_eq!(out["ts"], out["message"]["ts"]);
    assert_eq!(out["message"]["blocks"], blocks);
    assert_eq!(out["message"]["thread_ts"], "1714567000.000100");
    assert!(
        out.get("warning").is_none(),
        "the charset is declared: {out}"
    );

    // Blocks alone are a message too.
    run(
        "slack",
        &vals,
        "post_message",
        json!({"channel": "C1", "blocks": blocks}),
        "k",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn slack_errors_are_classified() {
    let (server, stand) = slack_standin().await;
    let vals = slack_values(&server);
    let post = |channel: &str| {
        let vals = vals.clone();
        let input = json!({"channel": channel, "text": "hi"});
        async move { run("slack", &vals, "post_message", input, "k").await }
    };

    // Failures arrive as HTTP 200 with ok: false.
    let r = post("C404").await;
    let e = permanent(&r, &["`channel_not_found`", "channel `C404`"]);
    assert_eq!(e.output().unwrap()["status"], 200);
    assert_eq!(e.output().unwrap()["body"]["error"], "channel_not_found");
    permanent(&post("CNOTIN").await, &["`not_in_channel`", "invite"]);
    permanent(&post("CARCHIVED").await, &["`is_archived`"]);

    stand.set(Scenario::Unauthorized);
    let r = post("C1").await;
    permanent(
        &r,
        &[
            "Slack rejected the bot token (`invalid_auth`)",
            "credential 'prod-creds'",
        ],
    );
    assert_clean(&r, SLACK_TOKEN, "invalid_auth");
    stand.set(Scenario::Normal);
    let wrong = values(&[
        ("bot_token", "xoxb-not-the-right-one"),
        ("api_url", &server.url("/api")),
    ]);
    let r = run(
        "slack",
        &wrong,
        "post_message",
        json!({"channel": "C1", "text": "x"}),
        "k",
    )
    .await;
    permanent(&r, &["`invalid_auth`"]);

    stand.set(Scenario::MissingScope);
    permanent(&post("C1").await, &["lacks the `chat:write` scope"]);

    stand.set(Scenario::RateLimited);
    let r = post("C1").await;
    let e = retryable(&r, Some(Duration::from_secs(3)), &["HTTP 429"]);
    assert_eq!(e.output().unwrap()["status"], 429);
    assert_eq!(e.output().unwrap()["body"]["error"], "ratelimited");

    stand.set(Scenario::InternalError);
    let r = post("C1").await;
    let e = retryable(&r, None, &["`internal_error`"]);
    assert_eq!(e.output().unwrap()["status"], 200);

    stand.set(Scenario::ServerError);
    retryable(
        &post("C1").await,
        None,
        &["HTTP 503", "upstream connect error"],
    );

    // Text that Slack refuses, and blocks it cannot read.
    stand.set(Scenario::Normal);
    let long = "x".repeat(40_001);
    let r = run(
        "slack",
        &vals,
        "post_message",
        json!({"channel": "C1", "text": long}),
        "k",
    )
    .await;
    permanent(&r, &["`msg_too_long`"]);
    let r = run(
        "slack",
        &vals,
        "post_message",
        json!({"channel": "C1", "blocks": [{"text": "no type"}]}),
        "k",
    )
    .await;
    permanent(&r, &["`invalid_blocks`", "missing required field: type"]);
}

#[tokio::test]
async fn slack_refuses_empty_messages_before_sending() {
    let (server, stand) = slack_standin().await;
    let vals = slack_values(&server);
    let cases = [
        (json!({"channel": "C1"}), "`text` or `blocks`"),
        (json!({"channel": "C1", "text": ""}), "`text` or `blocks`"),
        (json!({"channel": "C1", "blocks": []}), "`text` or `blocks`"),
        (
            json!({"channel": "C1", "blocks": ["section"]}),
            "`blocks[0]`",
        ),
        (json!({"channel": "", "text": "x"}), "`channel`"),
        (
            json!({"channel": "C1", "text": "x", "as_user": true}),
            "`as_user`",
        ),
        (
            json!({"channel": "C1", "text": "x", "unfurl_links": "no"}),
            "`unfurl_links`",
        ),
    ];
    for (input, needle) in cases {
        permanent(
            &run("slack", &vals, "post_message", input, "k").await,
            &[needle],
        );
    }
    assert_eq!(stand.hits(), 0);
}

#[tokio::test]
async fn slack_answer_without_ok_is_not_success() {
    // `api_url` pointing at some other JSON service.
    let other = spawn_app("127.0.0.1:0").await;
    let vals = values(&[("bot_token", SLACK_TOKEN), ("api_url", &other.url("/api"))]);
    let r = run(
        "slack",
        &vals,
        "post_message",
        json!({"channel": "C1", "text": "x"}),
        "k",
    )
    .await;
    let e = permanent(&r, &["without Slack's `ok` field", "`api_url`"]);
    // The echo service quoted the Authorization header back; it is masked.
    assert_clean(&r, SLACK_TOKEN, "echo");
    assert!(
        e.output()
            .unwrap()
            .to_string()
            .contains("Bearer [redacted]")
    );
}

// ---------------------------------------------------------------------------------------------
// Stripe stand-in: form-encoded API under /v1 with idempotent replays.

/// Parses a form body with Stripe's bracket notation into nested JSON
/// (`a[b]=1&l[0]=x` → `{"a": {"b": "1"}, "l": ["x"]}`).
fn parse_stripe_form(body: &[u8]) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in url::form_urlencoded::parse(body) {
        let (head, rest) = key
            .split_once('[')
            .map_or((key.as_ref(), ""), |(h, r)| (h, r));
        let mut path = vec![head.to_owned()];
        for part in rest.split('[').filter(|p| !p.is_empty()) {
            path.push(part.trim_end_matches(']').to_owned());
        }
        let mut node = &mut root;
        for (i, seg) in path.iter().enumerate() {
            let map = node.as_object_mut().unwrap();
            if i + 1 == path.len() {
                map.insert(seg.clone(), Value::String(value.to_string()));
                break;
            }
            node = map
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    arrays(root)
}

/// Objects keyed `0..n` become arrays.
fn arrays(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let is_list = !m.is_empty() && (0..m.len()).all(|i| m.contains_key(&i.to_string()));
            if is_list {
                let mut m = m;
                Value::Array(
                    (0..m.len())
                        .map(|i| arrays(m.remove(&i.to_string()).unwrap()))
                        .collect(),
                )
            } else {
                Value::Object(m.into_iter().map(|(k, v)| (k, arrays(v))).collect())
            }
        }
        other => other,
    }
}

fn stripe_error(status: StatusCode, error: Value) -> Response {
    json_response(
        status,
        &[("request-id", "req_weft0001".into())],
        json!({ "error": error }),
    )
}

fn masked(key: &str) -> String {
    format!("{}****{}", &key[..8], &key[key.len() - 4..])
}

async fn stripe_post(
    State(s): State<Stand>,
    Path(resource): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record(&method, &uri, &headers, &body);
    let auth = header_str(&headers, "authorization");
    let Some(key) = auth.strip_prefix("Bearer ") else {
        return stripe_error(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error", "message": "You did not provide an API key."}),
        );
    };
    if s.scenario() == Scenario::Unauthorized || key != STRIPE_KEY {
        return stripe_error(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error", "message": format!("Invalid API Key provided: {}", masked(key))}),
        );
    }
    if !header_str(&headers, "content-type").starts_with("application/x-www-form-urlencoded") {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "message": "Invalid request: unsupported Content-Type"}),
        );
    }
    let idem = header_str(&headers, "idempotency-key").to_owned();
    if idem.is_empty() {
        // Real Stripe makes the key optional; this stand-in insists, as Weft always sends one.
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "message": "stand-in: Idempotency-Key is required"}),
        );
    }
    match s.scenario() {
        Scenario::RateLimited => {
            return stripe_error(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests hit the API too quickly."}),
            );
        }
        Scenario::Conflict => {
            return stripe_error(
                StatusCode::CONFLICT,
                json!({"type": "idempotency_error", "message": "There is currently another in-progress request using this Stripe API Idempotency Key."}),
            );
        }
        Scenario::ServerError => {
            return stripe_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"type": "api_error", "message": "Something went wrong on Stripe's end."}),
            );
        }
        Scenario::RetryableBadRequest => {
            let mut r = stripe_error(
                StatusCode::BAD_REQUEST,
                json!({"type": "invalid_request_error", "code": "lock_timeout", "message": "This object cannot be accessed right now because another API request is modifying it."}),
            );
            r.headers_mut()
                .insert("stripe-should-retry", HeaderValue::from_static("true"));
            return r;
        }
        _ => {}
    }
    let params = parse_stripe_form(&body);
    let path = uri.path().to_owned();
    if let Some(stored) = s.0.replays.lock().unwrap().get(&idem).cloned() {
        if stored.path != path || stored.params != params {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                json!({"type": "idempotency_error", "message": format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{idem}' if you meant to execute a different request.")}),
            );
        }
        let mut r = json_response(
            stored.status,
            &[("request-id", "req_replay".into())],
            stored.body,
        );
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return r;
    }
    let (status, out, should_retry) = match s.scenario() {
        Scenario::CardDeclined => (
            StatusCode::PAYMENT_REQUIRED,
            json!({"error": {
                "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.", "param": "",
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
            }}),
            None,
        ),
        Scenario::NoRetry500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"type": "api_error", "message": "An unknown error occurred."}}),
            Some("false"),
        ),
        _ => match stripe_create(&s, &resource, &params) {
            Ok(v) => (StatusCode::OK, v, None),
            // Validation failures are not stored, so the key can be used again.
            Err(r) => return r,
        },
    };
    s.0.replays.lock().unwrap().insert(
        idem.clone(),
        Stored {
            path,
            params,
            status,
            body: out.clone(),
        },
    );
    let mut h = vec![
        ("request-id", "req_weft0002".to_owned()),
        ("idempotency-key", idem),
    ];
    if let Some(v) = should_retry {
        h.push(("stripe-should-retry", v.to_owned()));
    }
    json_response(status, &h, out)
}

fn missing(param: &str) -> Response {
    stripe_error(
        StatusCode::BAD_REQUEST,
        json!({"type": "invalid_request_error", "code": "parameter_missing", "param": param, "message": format!("Missing required param: {param}.")}),
    )
}

fn stripe_create(s: &Stand, resource: &str, p: &Value) -> Result<Value, Response> {
    let n = s.next_id();
    let metadata = p.get("metadata").cloned().unwrap_or(json!({}));
    match resource {
        "customers" => {
            s.0.customers.fetch_add(1, Ordering::SeqCst);
            Ok(json!({
                "id": format!("cus_Weft{n:08}"), "object": "customer", "created": 1714567890,
                "email": p.get("email"), "name": p.get("name"), "description": p.get("description"),
                "metadata": metadata, "livemode": false, "balance": 0, "currency": null,
            }))
        }
        "payment_intents" => {
            let Some(amount) = p.get("amount").and_then(Value::as_str) else {
                return Err(missing("amount"));
            };
            let Ok(amount) = amount.parse::<i64>() else {
                return Err(stripe_error(
                    StatusCode::BAD_REQUEST,
                    json!({"type": "invalid_request_error", "code": "parameter_invalid_integer", "param": "amount", "message": "Invalid integer: amount"}),
                ));
            };
            let Some(currency) = p.get("currency").and_then(Value::as_str) else {
                return Err(missing("currency"));
            };
            Ok(json!({
                "id": format!("pi_Weft{n:08}"), "object": "payment_intent", "amount": amount,
                "currency": currency, "customer": p.get("customer"), "description": p.get("description"),
                "status": "requires_payment_method",
                "payment_method_types": p.get("payment_method_types").cloned().unwrap_or(json!(["card"])),
                "client_secret": format!("pi_Weft{n:08}_secret_abc"), "metadata": metadata, "livemode": false,
            }))
        }
        "refunds" => {
            let pi = p.get("payment_intent").and_then(Value::as_str);
            let ch = p.get("charge").and_then(Value::as_str);
            if pi.is_none() && ch.is_none() {
                return Err(missing("charge"));
            }
            if pi == Some("pi_missing") {
                return Err(stripe_error(
                    StatusCode::NOT_FOUND,
                    json!({"type": "invalid_request_error", "code": "resource_missing", "param": "payment_intent", "message": "No such payment_intent: 'pi_missing'"}),
                ));
            }
            Ok(json!({
                "id": format!("re_Weft{n:08}"), "object": "refund",
                "amount": p.get("amount").and_then(Value::as_str).and_then(|a| a.parse::<i64>().ok()).unwrap_or(2000),
                "charge": ch.map_or_else(|| format!("ch_Weft{n:08}"), String::from),
                "payment_intent": pi, "currency": "usd", "reason": p.get("reason"),
                "status": "succeeded", "metadata": metadata,
            }))
        }
        other => Err(stripe_error(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error", "message": format!("Unrecognized request URL (POST: /v1/{other}).")}),
        )),
    }
}

async fn stripe_standin() -> (Server, Stand) {
    let stand = Stand::default();
    let app = Router::new()
        .route("/v1/{resource}", post(stripe_post))
        .with_state(stand.clone());
    (spawn_router(app, Arc::clone(&stand.0.hits)).await, stand)
}

fn stripe_values(server: &Server) -> SecretValues {
    values(&[
        ("secret_key", STRIPE_KEY),
        ("webhook_secret", WEBHOOK_SECRET),
        ("api_url", &server.url("")),
    ])
}

struct StripeAdapter {
    server: Server,
    stand: Stand,
}

impl Adapter for StripeAdapter {
    fn connector(&self) -> &'static str {
        "stripe"
    }
    fn credential(&self) -> SecretValues {
        stripe_values(&self.server)
    }
    fn secret_field(&self) -> &'static str {
        "secret_key"
    }
    fn valid_input(&self, action: &str) -> Value {
        match action {
            "create_customer" => json!({"email": "jenny@example.com", "name": "Jenny Rosen"}),
            "create_payment_intent" => json!({"amount": 2000, "currency": "usd"}),
            "refund" => json!({"payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "amount": 500}),
            other => panic!("no input for stripe.{other}"),
        }
    }
    fn answer(&self, answer: Answer) {
        self.stand.set(answer.into());
    }
    fn rate_limit_delay(&self) -> Option<Duration> {
        // Stripe's 429 carries no delay; the engine's backoff decides.
        None
    }
    fn hits(&self) -> usize {
        self.stand.hits()
    }
}

#[tokio::test]
async fn stripe_conforms() {
    let (server, stand) = stripe_standin().await;
    assert_eq!(check_connector(&StripeAdapter { server, stand }).await, 3);
}

#[tokio::test]
async fn stripe_sends_bracketed_forms_and_the_idempotency_key() {
    let (server, stand) = stripe_standin().await;
    let vals = stripe_values(&server);
    let out = run(
        "stripe",
        &vals,
        "create_payment_intent",
        json!({
            "amount": 2000, "currency": "eur", "customer": "cus_123",
            "payment_method_types": ["card", "sepa_debit"],
            "metadata": {"order_id": "42", "note": "a&b=c"},
            "description": null,
        }),
        "run-9:charge:0",
    )
    .await
    .unwrap();
    let seen = stand.last();
    assert_eq!(seen.path, "/v1/payment_intents");
    assert_eq!(seen.header("authorization"), format!("Bearer {STRIPE_KEY}"));
    assert_eq!(
        seen.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(seen.header("idempotency-key"), "run-9:charge:0");
    let raw = String::from_utf8(seen.body.to_vec()).unwrap();
    assert!(raw.contains("metadata[order_id]=42"), "{raw}");
    assert!(raw.contains("payment_method_types[0]=card"), "{raw}");
    assert!(raw.contains("metadata[note]=a%26b%3Dc"), "{raw}");
    assert!(!raw.contains("description"), "{raw}");
    assert_eq!(
        parse_stripe_form(&seen.body),
        json!({
            "amount": "2000", "currency": "eur", "customer": "cus_123",
            "payment_method_types": ["card", "sepa_debit"],
            "metadata": {"order_id": "42", "note": "a&b=c"},
        })
    );
    assert_eq!(out["object"], "payment_intent");
    assert_eq!(out["amount"], 2000);
    assert_eq!(out["status"], "requires_payment_method");
    assert_eq!(out["metadata"]["order_id"], "42");

    let out = run(
        "stripe",
        &vals,
        "refund",
        json!({"charge": "ch_1", "amount": 300, "reason": "requested_by_customer", "metadata": {"ticket": "T-7"}}),
        "run-9:refund:0",
    )
    .await
    .unwrap();
    assert_eq!(stand.last().path, "/v1/refunds");
    assert_eq!(
        parse_stripe_form(&stand.last().body),
        json!({"charge": "ch_1", "amount": "300", "reason": "requested_by_customer", "metadata": {"ticket": "T-7"}})
    );
    assert_eq!(out["status"], "succeeded");
    assert_eq!(out["amount"], 300);

    // Keys beyond Stripe's 255 characters become a stable digest, identical on every retry.
    let long = format!("run-9:{}:0", "s".repeat(300));
    let a = run("stripe", &vals, "create_customer", json!({}), &long)
        .await
        .unwrap();
    let sent = stand.last().header("idempotency-key").to_owned();
    assert!(
        sent.len() <= 255 && sent.starts_with("weft-sha256-"),
        "{sent}"
    );
    let b = run("stripe", &vals, "create_customer", json!({}), &long)
        .await
        .unwrap();
    assert_eq!(stand.last().header("idempotency-key"), sent);
    assert_eq!(a["id"], b["id"]);
}

#[tokio::test]
async fn stripe_retried_step_creates_one_customer() {
    let (server, stand) = stripe_standin().await;
    let vals = stripe_values(&server);
    let input = json!({"email": "jenny@example.com", "metadata": {"crm_id": "7"}});

    // The first attempt is processed but its answer is lost in transit: retryable.
    let proxy = spawn_answer_losing_proxy(server.addr).await;
    let via_proxy = values(&[("secret_key", STRIPE_KEY), ("api_url", &proxy.url(""))]);
    let r = run(
        "stripe",
        &via_proxy,
        "create_customer",
        input.clone(),
        "run-1:customer:0",
    )
    .await;
    retryable(
        &r,
        None,
        &["stripe.create_customer: POST", "the request can be retried"],
    );
    assert_eq!(proxy.hits(), 1);
    assert_eq!(stand.customers(), 1);

    // The engine retries the step with the same key: Stripe replays the first result.
    let first = run(
        "stripe",
        &vals,
        "create_customer",
        input.clone(),
        "run-1:customer:0",
    )
    .await
    .unwrap();
    let again = run(
        "stripe",
        &vals,
        "create_customer",
        input.clone(),
        "run-1:customer:0",
    )
    .await
    .unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["object"], "customer");
    assert_eq!(first["metadata"]["crm_id"], "7");
    assert_eq!(
        stand.customers(),
        1,
        "a retried step creates one customer, not two"
    );

    // Another step (another key) creates another customer.
    let other = run(
        "stripe",
        &vals,
        "create_customer",
        input.clone(),
        "run-1:customer-2:0",
    )
    .await
    .unwrap();
    assert_ne!(other["id"], first["id"]);
    assert_eq!(stand.customers(), 2);

    // Reusing a key with other parameters is refused, as Stripe does.
    let r = run(
        "stripe",
        &vals,
        "create_customer",
        json!({"email": "x@example.com"}),
        "run-1:customer:0",
    )
    .await;
    permanent(&r, &["HTTP 400", "idempotency_error"]);
}

#[tokio::test]
async fn stripe_errors_are_classified() {
    let (server, stand) = stripe_standin().await;
    let vals = stripe_values(&server);
    let pay = |key: &str| {
        let vals = vals.clone();
        let key = key.to_owned();
        async move {
            run(
                "stripe",
                &vals,
                "create_payment_intent",
                json!({"amount": 2000, "currency": "usd"}),
                &key,
            )
            .await
        }
    };

    stand.set(Scenario::CardDeclined);
    let r = pay("k-declined").await;
    let e = permanent(
        &r,
        &[
            "Stripe declined the request (HTTP 402 card_error, code card_declined, decline_code insufficient_funds: Your card has insufficient funds.)",
        ],
    );
    assert_eq!(
        e.output().unwrap()["body"]["error"]["code"],
        "card_declined"
    );
    // Stripe stored that answer: retrying with the same key gives the same decline.
    stand.set(Scenario::Normal);
    permanent(&pay("k-declined").await, &["card_declined"]);

    stand.set(Scenario::Unauthorized);
    let r = pay("k-401").await;
    permanent(
        &r,
        &[
            "Stripe rejected the secret key (HTTP 401",
            "credential 'prod-creds'",
        ],
    );
    assert_clean(&r, STRIPE_KEY, "401");
    stand.set(Scenario::Normal);
    let wrong = values(&[
        ("secret_key", "sk_test_wrongwrongwrong1234"),
        ("api_url", &server.url("")),
    ]);
    let r = run("stripe", &wrong, "create_customer", json!({}), "k").await;
    permanent(&r, &["Invalid API Key provided: sk_test_****1234"]);
    assert_clean(&r, "sk_test_wrongwrongwrong1234", "401");

    stand.set(Scenario::Conflict);
    let e = retryable(
        &pay("k-409").await,
        None,
        &["HTTP 409", "same idempotency key"],
    );
    assert!(e.output().unwrap().get("rate_limited").is_none());

    stand.set(Scenario::RateLimited);
    let e = retryable(
        &pay("k-429").await,
        None,
        &["rate-limited", "code rate_limit"],
    );
    assert_eq!(e.output().unwrap()["status"], 429);

    stand.set(Scenario::ServerError);
    retryable(&pay("k-500").await, None, &["HTTP 500 api_error"]);

    // Stripe-Should-Retry overrides the status rule, both ways.
    stand.set(Scenario::NoRetry500);
    let r = pay("k-500-final").await;
    permanent(&r, &["HTTP 500", "Stripe-Should-Retry: false"]);
    stand.set(Scenario::RetryableBadRequest);
    retryable(
        &pay("k-lock").await,
        None,
        &["HTTP 400", "lock_timeout", "Stripe-Should-Retry: true"],
    );

    stand.set(Scenario::Normal);
    let r = run(
        "stripe",
        &vals,
        "refund",
        json!({"payment_intent": "pi_missing"}),
        "k-404",
    )
    .await;
    permanent(
        &r,
        &[
            "HTTP 404",
            "resource_missing",
            "param payment_intent",
            "No such payment_intent",
        ],
    );
}

#[tokio::test]
async fn stripe_refuses_bad_input_before_sending() {
    let (server, stand) = stripe_standin().await;
    let vals = stripe_values(&server);
    let cases = [
        ("refund", json!({}), "exactly one of `payment_intent`"),
        (
            "refund",
            json!({"payment_intent": "pi_1", "charge": "ch_1"}),
            "not both",
        ),
        (
            "refund",
            json!({"charge": "ch_1", "reason": "because"}),
            "`reason` must be one of",
        ),
        (
            "refund",
            json!({"charge": "ch_1", "amount": 0}),
            "`amount` must be at least 1",
        ),
        (
            "create_payment_intent",
            json!({"amount": 10, "currency": ""}),
            "`currency` must not be empty",
        ),
        (
            "create_payment_intent",
            json!({"amount": "10", "currency": "usd"}),
            "`amount` must be an integer",
        ),
        (
            "create_payment_intent",
            json!({"amount": 10, "currency": "usd", "metadata": {"n": 1}}),
            "`metadata.n` must be a string",
        ),
        (
            "create_payment_intent",
            json!({"amount": 10, "currency": "usd", "metadata": {"a[b]": "1"}}),
            "`metadata.a[b]`",
        ),
        (
            "create_customer",
            json!({"emails": "x"}),
            "`emails` is not a field of `stripe.create_customer`",
        ),
    ];
    for (action, input, needle) in cases {
        let r = run("stripe", &vals, action, input.clone(), "k").await;
        let e = permanent(&r, &[needle]);
        assert!(
            e.message().starts_with(&format!("stripe.{action}: ")),
            "{e}"
        );
    }
    assert_eq!(stand.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// All three: the network guard, transport failures, limits, credentials.

#[tokio::test]
async fn providers_go_through_the_network_guard() {
    let (gh, gh_stand) = github_standin().await;
    let (sl, sl_stand) = slack_standin().await;
    let (st, st_stand) = stripe_standin().await;
    let cases = [
        (
            "github",
            gh_values(&gh),
            "create_issue",
            json!({"owner": "o", "repo": "r", "title": "t"}),
        ),
        (
            "slack",
            slack_values(&sl),
            "post_message",
            json!({"channel": "C1", "text": "x"}),
        ),
        ("stripe", stripe_values(&st), "create_customer", json!({})),
    ];
    for (connector, vals, action, input) in cases {
        let r = run_with(
            NetPolicy::public_only(),
            connector,
            &vals,
            action,
            input,
            "k",
        )
        .await;
        permanent(&r, &["refused to connect to 127.0.0.1"]);
    }
    assert_eq!(gh_stand.hits() + sl_stand.hits() + st_stand.hits(), 0);
}

#[tokio::test]
async fn transport_failures_and_oversized_answers() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = format!("http://127.0.0.1:{port}");
    let vals = values(&[("token", GH_TOKEN), ("api_url", &closed)]);
    let r = run(
        "github",
        &vals,
        "create_issue",
        json!({"owner": "o", "repo": "r", "title": "t"}),
        "k",
    )
    .await;
    retryable(&r, None, &["github.create_issue: POST", "connect"]);

    let flood = spawn_flood().await;
    let vals = values(&[("bot_token", SLACK_TOKEN), ("api_url", &flood.url(""))]);
    let r = run(
        "slack",
        &vals,
        "post_message",
        json!({"channel": "C1", "text": "x"}),
        "k",
    )
    .await;
    permanent(&r, &["10 MiB"]);
}

#[tokio::test]
async fn credentials_are_checked_and_never_quoted() {
    let (server, stand) = github_standin().await;
    let input = json!({"owner": "o", "repo": "r", "title": "t"});
    let bad_token = "ghp_line\nbreak_secret_value";
    let vals = values(&[("token", bad_token), ("api_url", &server.url("/api/v3"))]);
    let r = run("github", &vals, "create_issue", input.clone(), "k").await;
    permanent(
        &r,
        &["`token` holds characters an HTTP header cannot carry"],
    );
    assert_clean(&r, bad_token, "newline");

    for api_url in [
        "ftp://example.com",
        "not a url",
        "https://user:pw-secret@example.com",
    ] {
        let vals = values(&[("token", GH_TOKEN), ("api_url", api_url)]);
        let r = run("github", &vals, "create_issue", input.clone(), "k").await;
        let e = permanent(&r, &["`api_url`"]);
        assert!(!e.message().contains("pw-secret"), "{e}");
    }
    assert_eq!(stand.hits(), 0);

    // A credential of another connector is refused by the catalog.
    let slack_vals = slack_values(&server);
    let m = manifest::find("slack", None).unwrap();
    let cred = Credential {
        name: "s",
        values: &slack_vals,
        manifest: m,
    };
    let e = bounded(run_action(
        &client(NetPolicy::allow_all()),
        "github",
        "create_issue",
        &input,
        Some(cred),
        "k",
    ))
    .await
    .unwrap_err();
    assert!(e.message().contains("is a slack credential"), "{e}");
}
