//! The network guard, exercised through real requests.

use serde_json::{Value, json};
use weft_connectors::{ActionError, NetError, NetPolicy, PolicyError, http_request};

use crate::support::{allow_only, bounded, client, spawn_app};

async fn get(policy: NetPolicy, url: &str) -> Result<Value, ActionError> {
    let c = client(policy);
    bounded(http_request(
        &c,
        &json!({"url": url, "timeout": "5s"}),
        "key",
    ))
    .await
}

fn loopback_forms(port: u16) -> Vec<String> {
    vec![
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ]
}

#[tokio::test]
async fn loopback_refused_when_policy_is_off() {
    let server = spawn_app("127.0.0.1:0").await;
    let mut forms = loopback_forms(server.port());
    forms.push(format!("http://[::1]:{}/", server.port()));
    for url in forms {
        let err = get(NetPolicy::public_only(), &url).await.unwrap_err();
        assert!(!err.is_retryable(), "{url}: {err}");
        assert!(err.message().contains("refused"), "{url}: {err}");
        assert!(
            err.message().contains("--allow-private-network"),
            "{url}: {err}"
        );
    }
    assert_eq!(server.hits(), 0, "no request may reach the server");
}

#[tokio::test]
async fn localhost_refusal_names_the_resolved_addresses() {
    let server = spawn_app("127.0.0.1:0").await;
    let err = get(
        NetPolicy::public_only(),
        &format!("http://localhost:{}/", server.port()),
    )
    .await
    .unwrap_err();
    assert!(err.message().contains("`localhost`"), "{err}");
    assert!(err.message().contains("127.0.0.1"), "{err}");
}

#[tokio::test]
async fn loopback_allowed_when_policy_is_on() {
    let server = spawn_app("127.0.0.1:0").await;
    let forms = loopback_forms(server.port());
    for url in &forms {
        let out = get(NetPolicy::allow_all(), url).await.unwrap();
        assert_eq!(out["status"], 200, "{url}");
        assert_eq!(out["body"]["path"], "/", "{url}");
    }
    assert_eq!(server.hits(), forms.len());
}

#[tokio::test]
async fn ipv6_loopback_allowed_when_policy_is_on() {
    let server = spawn_app("[::1]:0").await;
    let url = format!("http://[::1]:{}/v6", server.port());
    let err = get(NetPolicy::public_only(), &url).await.unwrap_err();
    assert!(err.message().contains("refused"), "{err}");
    let out = get(NetPolicy::allow_all(), &url).await.unwrap();
    assert_eq!(out["body"]["path"], "/v6");
}

#[tokio::test]
async fn allowlist_admits_only_listed_networks() {
    let server = spawn_app("127.0.0.1:0").await;
    let url = server.url("/listed");
    let out = get(allow_only("127.0.0.1/32"), &url).await.unwrap();
    assert_eq!(out["status"], 200);
    // The mapped IPv6 spelling of an allowlisted v4 address is allowed too.
    let mapped = format!("http://[::ffff:127.0.0.1]:{}/", server.port());
    assert_eq!(
        get(allow_only("127.0.0.0/8"), &mapped).await.unwrap()["status"],
        200
    );
    let err = get(allow_only("10.0.0.0/8"), &url).await.unwrap_err();
    assert!(err.message().contains("refused"), "{err}");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn redirect_to_forbidden_literal_is_refused() {
    let server = spawn_app("127.0.0.1:0").await;
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.255.255.1/",
        "http://[64:ff9b::a9fe:a9fe]/",
    ] {
        let url = format!("{}?to={}", server.url("/redirect"), target);
        // The first hop is allowlisted; only the redirect target is not.
        let err = get(allow_only("127.0.0.1/32"), &url).await.unwrap_err();
        assert!(!err.is_retryable(), "{target}: {err}");
        assert!(
            err.message().contains("refused redirect target"),
            "{target}: {err}"
        );
    }
    assert_eq!(server.hits(), 3, "each first hop was served");
}

#[tokio::test]
async fn redirect_to_name_resolving_to_loopback_is_refused() {
    // Linux routes all of 127/8 to lo, so 127.0.0.2 can be allowlisted while
    // `localhost` (127.0.0.1 / ::1) is not: only the resolver can catch this hop.
    let server = spawn_app("127.0.0.2:0").await;
    let target = format!("http://localhost:{}/next", server.port());
    let url = format!("{}?to={}", server.url("/redirect"), target);
    let err = get(allow_only("127.0.0.2/32"), &url).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("redirect"), "{err}");
    assert!(err.message().contains("localhost"), "{err}");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn allowed_redirect_is_followed() {
    let server = spawn_app("127.0.0.1:0").await;
    let url = format!("{}?to=/landed", server.url("/redirect"));
    let out = get(allow_only("127.0.0.1/32"), &url).await.unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"]["path"], "/landed");
}

#[tokio::test]
async fn redirect_to_other_scheme_is_not_followed() {
    let server = spawn_app("127.0.0.1:0").await;
    let url = format!("{}?to=file:///etc/passwd", server.url("/redirect"));
    // reqwest never follows non-http(s) locations; the 3xx comes back as-is.
    let out = get(NetPolicy::allow_all(), &url).await.unwrap();
    assert_eq!(out["status"], 302);
    assert_eq!(out["headers"]["location"], "file:///etc/passwd");
}

#[tokio::test]
async fn redirect_loops_stop_after_five_hops() {
    let server = spawn_app("127.0.0.1:0").await;
    let err = get(NetPolicy::allow_all(), &server.url("/loop"))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("after 5 redirects"), "{err}");
    assert_eq!(
        server.hits(),
        1 + 5,
        "the original request plus five redirects"
    );
}

#[tokio::test]
async fn execute_reports_policy_errors_as_refused() {
    let server = spawn_app("127.0.0.1:0").await;
    let c = client(NetPolicy::public_only());
    let request =
        reqwest::Request::new(reqwest::Method::GET, server.url("/direct").parse().unwrap());
    let err = bounded(c.execute(request)).await.unwrap_err();
    assert!(
        matches!(err, NetError::Refused(PolicyError::ForbiddenAddress { .. })),
        "{err:?}"
    );
    let request = reqwest::Request::new(
        reqwest::Method::GET,
        format!("http://localhost:{}/", server.port())
            .parse()
            .unwrap(),
    );
    let err = bounded(c.execute(request)).await.unwrap_err();
    assert!(
        matches!(err, NetError::Refused(PolicyError::NoPublicAddress { .. })),
        "{err:?}"
    );
    assert_eq!(server.hits(), 0);
}
