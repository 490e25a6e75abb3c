//! The `http.request` action against real loopback servers.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use weft_connectors::{ActionError, GuardedClient, NetPolicy, http_request, run_action};

use crate::support::{bounded, client, spawn_app, spawn_flood, spawn_silent};

fn open() -> GuardedClient {
    client(NetPolicy::allow_all())
}

async fn call(input: Value) -> Result<Value, ActionError> {
    bounded(http_request(&open(), &input, "idem-1")).await
}

#[tokio::test]
async fn json_request_arrives_as_sent() {
    let server = spawn_app("127.0.0.1:0").await;
    let out = call(json!({
        "method": "post",
        "url": server.url("/things/42?keep=yes"),
        "headers": {"X-Custom": "v1", "X-Count": 3, "X-Flag": true},
        "query": {"a": 1, "b": "x y", "tag": ["one", "two"], "skip": null},
        "body": {"name": "widget", "n": [1, 2]},
    }))
    .await
    .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["headers"]["content-type"], "application/json");
    let echo = &out["body"];
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/things/42");
    assert_eq!(echo["query"], "keep=yes&a=1&b=x+y&tag=one&tag=two");
    assert_eq!(echo["headers"]["x-custom"], "v1");
    assert_eq!(echo["headers"]["x-count"], "3");
    assert_eq!(echo["headers"]["x-flag"], "true");
    assert_eq!(echo["headers"]["content-type"], "application/json");
    assert_eq!(echo["headers"]["idempotency-key"], "idem-1");
    let sent: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({"name": "widget", "n": [1, 2]}));
}

#[tokio::test]
async fn default_method_is_get_and_custom_tokens_work() {
    let server = spawn_app("127.0.0.1:0").await;
    let out = call(json!({"url": server.url("/")})).await.unwrap();
    assert_eq!(out["body"]["method"], "GET");
    assert_eq!(out["body"]["body"], "");
    let out = call(json!({"url": server.url("/"), "method": "purge"}))
        .await
        .unwrap();
    assert_eq!(out["body"]["method"], "PURGE");
}

#[tokio::test]
async fn string_body_is_text_unless_content_type_given() {
    let server = spawn_app("127.0.0.1:0").await;
    let out = call(json!({"url": server.url("/"), "method": "PUT", "body": "plain words"}))
        .await
        .unwrap();
    let echo = &out["body"];
    assert_eq!(echo["body"], "plain words");
    assert_eq!(echo["headers"]["content-type"], "text/plain; charset=utf-8");

    let out = call(json!({
        "url": server.url("/"), "method": "PUT", "body": "<a/>",
        "headers": {"Content-Type": "application/xml"},
    }))
    .await
    .unwrap();
    assert_eq!(out["body"]["body"], "<a/>");
    assert_eq!(out["body"]["headers"]["content-type"], "application/xml");

    // A JSON string under an explicit JSON content type is sent verbatim, not re-quoted.
    let out = call(json!({
        "url": server.url("/"), "method": "POST", "body": "{\"raw\":true}",
        "headers": {"content-type": "application/json"},
    }))
    .await
    .unwrap();
    assert_eq!(out["body"]["body"], "{\"raw\":true}");
}

#[tokio::test]
async fn form_body_is_urlencoded() {
    let server = spawn_app("127.0.0.1:0").await;
    let out = call(json!({
        "url": server.url("/form"), "method": "POST",
        "headers": {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        "body": {"a": 1, "b": "hello world & more", "c": [true, "x"]},
    }))
    .await
    .unwrap();
    let echo = &out["body"];
    assert_eq!(echo["body"], "a=1&b=hello+world+%26+more&c=true&c=x");
    assert_eq!(
        echo["headers"]["content-type"],
        "application/x-www-form-urlencoded; charset=utf-8"
    );
}

#[tokio::test]
async fn idempotency_key_is_stable_and_user_header_wins() {
    let server = spawn_app("127.0.0.1:0").await;
    let c = open();
    let input = json!({"url": server.url("/pay"), "method": "POST", "body": {"amount": 5}});
    let first = bounded(http_request(&c, &input, "run-7/step-2"))
        .await
        .unwrap();
    let second = bounded(http_request(&c, &input, "run-7/step-2"))
        .await
        .unwrap();
    assert_eq!(first["body"]["headers"]["idempotency-key"], "run-7/step-2");
    assert_eq!(
        first["body"]["headers"]["idempotency-key"],
        second["body"]["headers"]["idempotency-key"]
    );

    let own = json!({"url": server.url("/pay"), "headers": {"IDEMPOTENCY-key": "mine"}});
    let out = bounded(http_request(&c, &own, "run-7/step-2"))
        .await
        .unwrap();
    assert_eq!(out["body"]["headers"]["idempotency-key"], "mine");
}

#[tokio::test]
async fn service_unavailable_with_retry_after_seconds_is_retryable() {
    let server = spawn_app("127.0.0.1:0").await;
    let err = call(json!({"url": server.url("/status/503?retry_after=7")}))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.message().contains("503"), "{err}");
    let output = err.output().unwrap();
    assert_eq!(output["status"], 503);
    assert_eq!(output["headers"]["retry-after"], "7");
    assert_eq!(output["body"], "status body 503");
}

#[tokio::test]
async fn too_many_requests_with_http_date_is_retryable() {
    let server = spawn_app("127.0.0.1:0").await;
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let url = format!(
        "{}?retry_after={}",
        server.url("/status/429"),
        at.replace(' ', "%20")
    );
    let err = call(json!({"url": url})).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let wait = err.retry_after().unwrap();
    // HTTP-dates have one-second resolution.
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
}

#[tokio::test]
async fn request_timeout_status_and_5xx_are_retryable() {
    let server = spawn_app("127.0.0.1:0").await;
    for code in [408, 500, 502, 504] {
        let err = call(json!({"url": server.url(&format!("/status/{code}"))}))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{code}: {err}");
        assert_eq!(err.retry_after(), None);
    }
}

#[tokio::test]
async fn client_errors_are_permanent_with_excerpt() {
    let server = spawn_app("127.0.0.1:0").await;
    for code in [400, 401, 403, 404, 422] {
        let err = call(json!({"url": server.url(&format!("/status/{code}"))}))
            .await
            .unwrap_err();
        assert!(!err.is_retryable(), "{code}: {err}");
        assert!(err.message().contains(&code.to_string()), "{err}");
        assert!(
            err.message().contains(&format!("status body {code}")),
            "{err}"
        );
        assert_eq!(err.output().unwrap()["status"], code);
    }
}

#[tokio::test]
async fn redirect_status_without_follow_is_success() {
    let server = spawn_app("127.0.0.1:0").await;
    let out = call(json!({"url": server.url("/status/304")}))
        .await
        .unwrap();
    assert_eq!(out["status"], 304);
}

#[tokio::test]
async fn silent_server_times_out_within_input_timeout() {
    let server = spawn_silent().await;
    let started = Instant::now();
    let err = call(json!({"url": server.url("/"), "timeout": "300ms"}))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    assert!(err.message().contains("timed out after 300ms"), "{err}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = call(json!({"url": format!("http://127.0.0.1:{port}/")}))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.retry_after(), None);
    assert!(err.message().contains("connect"), "{err}");
}

#[tokio::test]
async fn oversized_response_with_length_fails() {
    let server = spawn_app("127.0.0.1:0").await;
    let err = call(json!({"url": server.url("/big")})).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("10 MiB"), "{err}");
    assert_eq!(err.output().unwrap()["body"], Value::Null);
}

#[tokio::test]
async fn oversized_chunked_response_fails_without_buffering_it_all() {
    let server = spawn_flood().await;
    let err = call(json!({"url": server.url("/")})).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("10 MiB"), "{err}");
    assert_eq!(err.output().unwrap()["status"], 200);
}

#[tokio::test]
async fn response_bodies_are_decoded_by_content_type() {
    let server = spawn_app("127.0.0.1:0").await;
    let out = call(json!({"url": server.url("/text")})).await.unwrap();
    assert_eq!(out["body"], "hello, plain text");
    assert!(
        out["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let out = call(json!({"url": server.url("/problem")})).await.unwrap();
    assert_eq!(out["body"], json!({"title": "nope", "n": 1}));

    let out = call(json!({"url": server.url("/bad-json")})).await.unwrap();
    assert_eq!(out["body"], "{not json");

    let out = call(json!({"url": server.url("/invalid-utf8")}))
        .await
        .unwrap();
    assert_eq!(out["body"], "f\u{fffd}o");

    let out = call(json!({"url": server.url("/multi-header")}))
        .await
        .unwrap();
    assert_eq!(out["headers"]["x-multi"], "one, two");
    assert_eq!(out["headers"]["x-single"], "solo");
}

#[tokio::test]
async fn invalid_input_is_permanent_and_names_the_field() {
    let server = spawn_app("127.0.0.1:0").await;
    let url = server.url("/");
    let cases = [
        (json!({"url": url, "method": 7}), "`method`"),
        (json!({"url": 7}), "`url`"),
        (json!({"url": url, "headers": "x"}), "`headers`"),
        (json!({"url": url, "headers": {"x": null}}), "`headers.x`"),
        (json!({"url": url, "query": [1]}), "`query`"),
        (
            json!({"url": url, "query": {"q": {"deep": 1}}}),
            "`query.q`",
        ),
        (json!({"url": url, "timeout": "soon"}), "`timeout`"),
        (json!({"url": url, "timeout": 301}), "`timeout`"),
        (json!({"url": url, "retries": 3}), "`retries`"),
    ];
    for (input, field) in cases {
        let err = call(input.clone()).await.unwrap_err();
        assert!(!err.is_retryable(), "{input}: {err}");
        assert!(err.message().contains(field), "{input}: {err}");
    }
    assert_eq!(server.hits(), 0, "invalid input never reaches the network");
}

#[tokio::test]
async fn run_action_dispatches_http_request() {
    let server = spawn_app("127.0.0.1:0").await;
    let c = open();
    let input = json!({"url": server.url("/dispatched")});
    let out = bounded(run_action(&c, "http", "request", &input, None, "k-1"))
        .await
        .unwrap();
    assert_eq!(out["body"]["path"], "/dispatched");
    assert_eq!(out["body"]["headers"]["idempotency-key"], "k-1");
    let err = bounded(run_action(&c, "http", "download", &input, None, "k-1"))
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(server.hits(), 1);
}
