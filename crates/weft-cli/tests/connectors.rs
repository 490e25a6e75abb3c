//! Issue 4's acceptance, driven from outside through the real binary: a GitHub-signed
//! `issues.opened` delivery → jq transform → Slack `chat.postMessage` on a local Slack stand-in,
//! once; redelivery absorbed; bad, missing and stale signatures refused; and a canary secret
//! found nowhere in plaintext (database files, logs, API answers, run data).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, post_hook};
use serde_json::{Value, json};
use weft_connectors::webhook::{Scheme, sign};

const HOOK_SECRET: &str = "canary-hook-secret-7f3a9c";
const BOT_TOKEN: &str = "xoxb-canary-bot-token-51d2e8";

/// What the Slack stand-in received: (authorization header, content type, JSON body).
type Posts = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A local Slack Web API: `chat.postMessage` with bearer auth and Slack's answers.
fn slack_standin() -> (String, Posts) {
    let posts: Posts = Arc::default();
    let rec = posts.clone();
    let app = axum::Router::new().route(
        "/api/chat.postMessage",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let rec = rec.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let auth = h("authorization");
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                rec.lock()
                    .unwrap()
                    .push((auth.clone(), h("content-type"), v.clone()));
                // Slack answers 200 with ok:false for auth and channel errors.
                if auth != format!("Bearer {BOT_TOKEN}") {
                    return axum::Json(json!({"ok": false, "error": "invalid_auth"}));
                }
                axum::Json(json!({
                    "ok": true,
                    "channel": "C0123",
                    "ts": "1700000000.000100",
                    "message": {"type": "message", "text": v["text"], "bot_id": "B1"}
                }))
            }
        }),
    );
    let addr = common::serve_app(app);
    (format!("http://{addr}/api"), posts)
}

fn flow() -> &'static str {
    r##"name: github-issue-to-slack
trigger:
  webhook:
    connector: github
    credential: gh-hook-secret
    events: [issues.opened]
steps:
  - id: shape
    transform: '{title: .trigger.body.issue.title, who: .trigger.body.sender.login}'
  - id: notify
    action: slack.post_message
    credential: slack-bot
    input:
      channel: "#eng"
      text: "New issue {{ .steps.shape.output.title }} by {{ .steps.shape.output.who }}"
    retry: { max_attempts: 3, initial: 100ms }
"##
}

fn github_headers(body: &[u8], event: &str, delivery: &str) -> Vec<(String, String)> {
    let mut h = sign(&Scheme::GitHub, HOOK_SECRET, body, 0, "").unwrap();
    h.push(("x-github-event".into(), event.into()));
    h.push(("x-github-delivery".into(), delivery.into()));
    h
}

fn post(url: &str, body: &str, headers: &[(String, String)]) -> (u16, Value) {
    let hs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    post_hook(url, body, &hs).unwrap()
}

/// Every file under `dir`, as bytes.
fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn github_signed_issue_reaches_slack_once_and_secrets_stay_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log_path = tmp.path().join("stderr.log");
    let srv = Server::start_logged(
        &data,
        &[("WEFT_LOG", "debug")],
        &[],
        std::fs::File::create(&log_path).unwrap(),
    );
    let (slack_url, posts) = slack_standin();

    // Credentials, with the secrets given through a file (kept out of argv) and a flag.
    let secret_file = tmp.path().join("hook-secret");
    std::fs::write(&secret_file, format!("{HOOK_SECRET}\n")).unwrap();
    let c = srv.cli_json(&[
        "credentials",
        "set",
        "gh-hook-secret",
        "--connector",
        "github",
        "--value",
        &format!("webhook_secret=@{}", secret_file.display()),
    ]);
    assert_eq!(c["fields"], json!(["webhook_secret"]));
    let c = srv.cli_json(&[
        "credentials",
        "set",
        "slack-bot",
        "--connector",
        "slack",
        "--value",
        &format!("bot_token={BOT_TOKEN}"),
        "--value",
        &format!("api_url={slack_url}"),
    ]);
    assert_eq!(c["connector"], "slack");
    let f = srv.apply(flow());
    let hook = f["hook_url"].as_str().unwrap().to_string();

    // The real GitHub payload, signed as GitHub signs it.
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github-issues-opened.json"),
    )
    .unwrap();
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let hs = github_headers(body.as_bytes(), "issues", delivery);
    let (st, ack) = post(&hook, &body, &hs);
    assert_eq!(st, 202, "{ack}");
    assert_eq!(ack["duplicate"], false);
    let run_id = ack["run_id"].as_str().unwrap().to_string();
    let run = srv.wait_run(&run_id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"]["event"], "issues.opened");
    assert_eq!(run["trigger"]["delivery_id"], delivery);
    {
        let p = posts.lock().unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        let (auth, ctype, msg) = &p[0];
        assert_eq!(auth, &format!("Bearer {BOT_TOKEN}"));
        assert!(ctype.starts_with("application/json"), "{ctype}");
        assert_eq!(msg["channel"], "#eng");
        assert_eq!(
            msg["text"],
            "New issue Spelling error in the README file by Codertocat"
        );
    }

    // GitHub redelivers with the same X-GitHub-Delivery: absorbed, no second message.
    let (st, again) = post(&hook, &body, &hs);
    assert_eq!((st, &again["duplicate"]), (202, &json!(true)), "{again}");
    assert_eq!(again["run_id"], run_id.as_str());

    // Bad signature, missing signature, tampered body, sha1 only: 401 and nothing stored.
    let before = srv.cli_json(&["runs", "list"])["items"]
        .as_array()
        .unwrap()
        .len();
    let mut bad = github_headers(body.as_bytes(), "issues", "d-bad");
    bad[0].1 = format!("sha256={}", "0".repeat(64));
    let missing: Vec<(String, String)> = github_headers(body.as_bytes(), "issues", "d-missing")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("x-hub-signature"))
        .collect();
    let tampered_body = body.replace("Spelling", "Spilling");
    let legacy = vec![
        (
            "x-hub-signature".to_string(),
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59".to_string(),
        ),
        ("x-github-event".to_string(), "issues".to_string()),
    ];
    for (name, b, h) in [
        ("bad", body.as_str(), &bad),
        ("missing", body.as_str(), &missing),
        ("tampered", tampered_body.as_str(), &hs),
        ("sha1 only", body.as_str(), &legacy),
    ] {
        let (st, p) = post(&hook, b, h);
        assert_eq!(st, 401, "{name}: {p}");
        assert_eq!(p["code"], "invalid_signature", "{name}: {p}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("X-Hub-Signature-256"),
            "{name}: {p}"
        );
        assert!(!p.to_string().contains(HOOK_SECRET));
    }
    // An event the flow does not listen for: verified, answered 200, no run.
    let closed = body.replace("\"action\": \"opened\"", "\"action\": \"closed\"");
    let (st, ign) = post(
        &hook,
        &closed,
        &github_headers(closed.as_bytes(), "issues", "d-closed"),
    );
    assert_eq!((st, &ign["ignored"]), (200, &json!(true)), "{ign}");
    assert_eq!(ign["event"], "issues.closed");
    let after = srv.cli_json(&["runs", "list"])["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        before, after,
        "refused and ignored deliveries start nothing"
    );
    assert_eq!(posts.lock().unwrap().len(), 1);

    // The canary: every API answer that could carry it, then the files and the logs.
    let mut answers = vec![
        srv.cli_json(&["credentials", "list"]),
        srv.cli_json(&["credentials", "show", "slack-bot"]),
        srv.cli_json(&["runs", "show", &run_id]),
        srv.cli_json(&["audit", "list"]),
    ];
    answers.push(
        srv.api_get(&format!("/api/v1/workspaces/default/runs/{run_id}/logs"))
            .1,
    );
    answers.push(srv.api_get("/api/v1/workspaces/default/credentials").1);
    // Observability: log search, error groups and the run's live stream.
    for q in ["canary", "xoxb", "secret"] {
        answers.push(
            srv.api_get(&format!("/api/v1/workspaces/default/logs?q={q}"))
                .1,
        );
    }
    answers.push(srv.api_get("/api/v1/workspaces/default/logs?limit=500").1);
    answers.push(srv.api_get("/api/v1/workspaces/default/errors").1);
    let (st, stream) =
        srv.api_get_text(&format!("/api/v1/workspaces/default/runs/{run_id}/events"));
    assert_eq!(st, 200);
    assert!(stream.contains("event: end"), "{stream}");
    answers.push(Value::String(stream));
    for a in &answers {
        let s = a.to_string();
        for canary in [HOOK_SECRET, BOT_TOKEN] {
            assert!(!s.contains(canary), "API answer holds a secret: {s}");
        }
    }
    let out = srv.output.lock().unwrap().join("\n");
    drop(srv);
    let log = std::fs::read(&log_path).unwrap();
    assert!(!log.is_empty(), "debug logging produced nothing to check");
    for canary in [HOOK_SECRET, BOT_TOKEN] {
        assert!(!out.contains(canary), "stdout holds a secret");
        assert!(!contains(&log, canary), "the log holds a secret");
        for (path, bytes) in all_bytes(&data) {
            assert!(
                !contains(&bytes, canary),
                "{path} holds a secret in plaintext"
            );
        }
    }
}

#[test]
fn credential_bad_input_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    for (args, want) in [
        (
            vec![
                "credentials",
                "set",
                "x",
                "--connector",
                "gitlab",
                "--value",
                "token=a",
            ],
            "unknown connector",
        ),
        (
            vec![
                "credentials",
                "set",
                "x",
                "--connector",
                "github",
                "--value",
                "tokn=a",
            ],
            "no such field",
        ),
        (
            vec![
                "credentials",
                "set",
                "bad name",
                "--connector",
                "github",
                "--value",
                "token=a",
            ],
            "name",
        ),
        (
            vec![
                "credentials",
                "set",
                "x",
                "--connector",
                "github",
                "--value",
                "token",
            ],
            "FIELD=VALUE",
        ),
        (vec!["credentials", "show", "nope"], "not found"),
        (vec!["credentials", "delete", "nope"], "not found"),
    ] {
        let out = srv.cli(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(srv.cli_json(&["credentials", "list"])["items"], json!([]));

    // A flow naming a credential of the wrong connector fails its step with a clear error.
    srv.cli_json(&[
        "credentials",
        "set",
        "gh",
        "--connector",
        "github",
        "--value",
        "token=ghp_canary_x",
    ]);
    let f = srv.apply(
        "name: wrong-cred\ntrigger:\n  manual: {}\nsteps:\n  - id: post\n    action: slack.post_message\n    credential: gh\n    input: {channel: x, text: y}\n",
    );
    assert_eq!(f["name"], "wrong-cred");
    let started = srv.cli_json(&["run", "start", "wrong-cred", "--input", "{}"]);
    let run = srv.wait_run(
        started["run_id"]
            .as_str()
            .or(started["id"].as_str())
            .unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(run["status"], "failed");
    let err = run["steps"][0]["error"].as_str().unwrap();
    assert!(err.contains("is a github credential"), "{err}");
    assert!(!run.to_string().contains("ghp_canary_x"));

    // Deleting works once; the catalog lists the connector's fields.
    let out = srv.cli(&["credentials", "delete", "gh"]);
    assert!(out.status.success());
    let gh = srv.cli_json(&["connectors", "show", "github"]);
    let fields: Vec<&str> = gh["auth"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["token", "webhook_secret", "api_url"]);
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn signed(scheme: &Scheme, secret: &str, body: &str, ts: i64, id: &str) -> Vec<(String, String)> {
    sign(scheme, secret, body.as_bytes(), ts, id).unwrap()
}

#[test]
fn stripe_slack_and_standard_webhooks_triggers_verify_dedupe_and_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let set = |name: &str, connector: &str, field: &str, value: &str| {
        srv.cli_json(&[
            "credentials",
            "set",
            name,
            "--connector",
            connector,
            "--value",
            &format!("{field}={value}"),
        ]);
    };
    set(
        "stripe-hook",
        "stripe",
        "webhook_secret",
        "whsec_canary_stripe",
    );
    set(
        "slack-app",
        "slack",
        "signing_secret",
        "canary-slack-signing",
    );
    set(
        "svix",
        "webhook",
        "secret",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );
    let hook = |yaml: &str| srv.apply(yaml)["hook_url"].as_str().unwrap().to_string();
    let stripe = hook(
        "name: s\ntrigger:\n  webhook:\n    connector: stripe\n    credential: stripe-hook\n    events: [payment_intent.succeeded]\nsteps:\n  - id: a\n    transform: '.trigger.event'\n",
    );
    let slack = hook(
        "name: k\ntrigger:\n  webhook:\n    connector: slack\n    credential: slack-app\nsteps:\n  - id: a\n    transform: '.trigger.body.event.text'\n",
    );
    let std = hook(
        "name: w\ntrigger:\n  webhook:\n    connector: webhook\n    credential: svix\n    signature: standard-webhooks\nsteps:\n  - id: a\n    transform: '.trigger.delivery_id'\n",
    );

    // Stripe: a current signature is accepted once per event id; a stale one is refused.
    let now = now_unix();
    let evt = r#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1"}}}"#;
    let sig = signed(
        &Scheme::Stripe {
            tolerance_secs: 300,
        },
        "whsec_canary_stripe",
        evt,
        now,
        "",
    );
    let (st, a) = post(&stripe, evt, &sig);
    assert_eq!(st, 202, "{a}");
    let run = srv.wait_run(a["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(run["steps"][0]["output"], "payment_intent.succeeded");
    let resent = signed(
        &Scheme::Stripe {
            tolerance_secs: 300,
        },
        "whsec_canary_stripe",
        evt,
        now + 60,
        "",
    );
    let (st, d) = post(&stripe, evt, &resent);
    assert_eq!(
        (st, &d["duplicate"]),
        (202, &json!(true)),
        "a retried event id is absorbed: {d}"
    );
    let stale = signed(
        &Scheme::Stripe {
            tolerance_secs: 300,
        },
        "whsec_canary_stripe",
        evt,
        now - 400,
        "",
    );
    let (st, p) = post(&stripe, evt, &stale);
    assert_eq!(st, 401, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("300"), "{p}");

    // Slack: url_verification is answered with its challenge, and starts nothing.
    let challenge = r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let sig = signed(
        &Scheme::Slack {
            tolerance_secs: 300,
        },
        "canary-slack-signing",
        challenge,
        now,
        "",
    );
    let (st, c) = post(&slack, challenge, &sig);
    assert_eq!(
        (st, &c["challenge"]),
        (
            200,
            &json!("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
        ),
        "{c}"
    );
    let ev = r#"{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention","text":"hi weft"}}"#;
    let sig = signed(
        &Scheme::Slack {
            tolerance_secs: 300,
        },
        "canary-slack-signing",
        ev,
        now,
        "",
    );
    let (st, a) = post(&slack, ev, &sig);
    assert_eq!(st, 202, "{a}");
    let run = srv.wait_run(a["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(run["steps"][0]["output"], "hi weft");
    assert_eq!(run["trigger"]["event"], "app_mention");
    let (st, _) = post(
        &slack,
        ev,
        &signed(
            &Scheme::Slack {
                tolerance_secs: 300,
            },
            "wrong",
            ev,
            now,
            "",
        ),
    );
    assert_eq!(st, 401);

    // Standard Webhooks: webhook-id dedupes.
    let body = r#"{"type":"user.created","data":{"id":1}}"#;
    let sw = Scheme::StandardWebhooks {
        tolerance_secs: 300,
    };
    let sig = signed(
        &sw,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        body,
        now,
        "msg_canary1",
    );
    let (st, a) = post(&std, body, &sig);
    assert_eq!(st, 202, "{a}");
    let run = srv.wait_run(a["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(run["steps"][0]["output"], "msg_canary1");
    let (st, d) = post(&std, body, &sig);
    assert_eq!((st, &d["duplicate"]), (202, &json!(true)));
    let no_ts: Vec<(String, String)> = sig
        .into_iter()
        .filter(|(k, _)| k != "webhook-timestamp")
        .collect();
    let (st, p) = post(&std, body, &no_ts);
    assert_eq!(st, 401, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("webhook-timestamp"),
        "{p}"
    );

    // A trigger whose credential was deleted cannot verify: 503, nothing stored, no detail leaked.
    assert!(
        srv.cli(&["credentials", "delete", "stripe-hook"])
            .status
            .success()
    );
    let sig = signed(
        &Scheme::Stripe {
            tolerance_secs: 300,
        },
        "whsec_canary_stripe",
        evt,
        now,
        "",
    );
    let (st, p) = post(&stripe, evt.replace("evt_1", "evt_2").as_str(), &sig);
    assert_eq!(st, 503, "{p}");
    assert!(!p.to_string().contains("stripe-hook"), "{p}");
}

#[test]
fn rotating_the_master_key_keeps_credentials_usable_while_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, None, &[], &[]);
    let (slack_url, posts) = slack_standin();
    srv.cli_json(&[
        "credentials",
        "set",
        "slack-bot",
        "--connector",
        "slack",
        "--value",
        &format!("bot_token={BOT_TOKEN}"),
        "--value",
        &format!("api_url={slack_url}"),
    ]);
    srv.apply("name: say\ntrigger:\n  manual: {}\nsteps:\n  - id: post\n    action: slack.post_message\n    credential: slack-bot\n    input: {channel: c, text: hello}\n");
    let key_file = data.join("master.key");
    let before = std::fs::read_to_string(&key_file).unwrap();

    let out = std::process::Command::new(common::weft_bin())
        .args(["admin", "rotate-key", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rewrapped"], 1, "{r}");
    assert_eq!(r["retired"].as_array().unwrap().len(), 1, "{r}");
    let after = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(before, after);
    assert!(after.contains(r["primary"].as_str().unwrap()));
    let old_id = r["retired"][0].as_str().unwrap();
    assert!(!after.contains(old_id), "the old key is gone from the file");

    // The running server never restarted: it reads the new key when it meets it.
    let run = srv.cli_json(&["run", "start", "say", "--input", "{}"]);
    let run = srv.wait_run(run["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(posts.lock().unwrap().len(), 1);
    // And it seals new values under the new key, which the CLI can rotate away again.
    srv.cli_json(&[
        "credentials",
        "set",
        "other",
        "--connector",
        "github",
        "--value",
        "token=ghp_x",
    ]);
    let out = std::process::Command::new(common::weft_bin())
        .args(["admin", "rotate-key", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rewrapped"], 2, "{r}");
}

/// A small third-party API for declarative connectors: bearer auth, items, cursor pages.
fn acme_standin() -> String {
    use axum::extract::{Path, Query};
    use axum::http::{HeaderMap, StatusCode};
    use std::collections::HashMap;
    let authed = |h: &HeaderMap| {
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer acme-canary-token")
    };
    let app = axum::Router::new()
        .route(
            "/v1/items/{id}",
            axum::routing::get(move |Path(id): Path<String>, h: HeaderMap| async move {
                if !authed(&h) {
                    return (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"error": "bad token"})),
                    );
                }
                (
                    StatusCode::OK,
                    axum::Json(json!({"item": {"id": id, "name": format!("item {id}")}})),
                )
            }),
        )
        .route(
            "/v1/list",
            axum::routing::get(
                move |Query(q): Query<HashMap<String, String>>, h: HeaderMap| async move {
                    if !authed(&h) {
                        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
                    }
                    let page: u32 = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
                    let next = if page < 2 {
                        json!((page + 1).to_string())
                    } else {
                        Value::Null
                    };
                    (
                        StatusCode::OK,
                        axum::Json(json!({"data": [page * 10, page * 10 + 1], "next": next})),
                    )
                },
            ),
        );
    format!("http://{}", common::serve_app(app))
}

fn acme_manifest(base: &str, version: &str, output: &str) -> String {
    format!(
        r#"name: acme
version: {version}
title: Acme
description: The Acme API
base_url: "{{{{ .credential.api_url }}}}/v1"
auth:
  scheme: bearer
  fields:
    - {{name: token, secret: true, for: actions}}
    - {{name: api_url, for: actions, default: "{base}"}}
  inject:
    headers: {{Authorization: "Bearer {{{{ .credential.token }}}}"}}
actions:
  - name: get_item
    description: One item
    input_schema: {{type: object, required: [id], properties: {{id: {{type: string}}}}, additionalProperties: false}}
    output_schema: {{type: object}}
    request: {{method: GET, path: "/items/{{{{ .input.id }}}}"}}
    output: '{output}'
  - name: list
    description: Every item, page by page
    input_schema: {{type: object}}
    output_schema: {{type: object}}
    request: {{method: GET, path: /list}}
    pagination: {{items: .body.data, next: .body.next, param: cursor}}
"#
    )
}

#[test]
fn declarative_connectors_install_run_paginate_and_pin_their_version() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let base = acme_standin();
    let install = |text: &str| {
        let f = tmp.path().join("acme.yaml");
        std::fs::write(&f, text).unwrap();
        srv.cli(&["connectors", "install", f.to_str().unwrap(), "--json"])
    };
    let out = install(&acme_manifest(&base, "1.0.0", "{name: .body.item.name}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.cli_json(&[
        "credentials",
        "set",
        "acme",
        "--connector",
        "acme",
        "--value",
        "token=acme-canary-token",
    ]);
    let f = srv.apply(
        "name: fetch\ntrigger:\n  manual: {}\nsteps:\n  - id: get\n    action: acme.get_item\n    credential: acme\n    input: {id: '{{ .trigger.body.id }}'}\n  - id: all\n    action: acme.list\n    credential: acme\n",
    );
    // Saved with the version it was applied against.
    assert_eq!(
        f["definition"]["steps"][0]["action"], "acme.get_item@1.0.0",
        "{f}"
    );
    let run = |id: &str| {
        let r = srv.cli_json(&[
            "run",
            "start",
            "fetch",
            "--input",
            &format!(r#"{{"id":"{id}"}}"#),
        ]);
        srv.wait_run(r["run_id"].as_str().unwrap(), Duration::from_secs(20))
    };
    let r = run("7");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["steps"][0]["output"], json!({"name": "item 7"}));
    assert_eq!(
        r["steps"][1]["output"],
        json!({"items": [0, 1, 10, 11, 20, 21]})
    );
    assert!(!r.to_string().contains("acme-canary-token"));

    // A new version changes nothing for the saved flow version until the flow is applied again.
    let out = install(&acme_manifest(&base, "1.1.0", "{id: .body.item.id}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run("8")["steps"][0]["output"], json!({"name": "item 8"}));
    let f = srv.apply(
        "name: fetch\ntrigger:\n  manual: {}\nsteps:\n  - id: get\n    action: acme.get_item\n    credential: acme\n    input: {id: '{{ .trigger.body.id }}'}\n",
    );
    assert_eq!(f["definition"]["steps"][0]["action"], "acme.get_item@1.1.0");
    assert_eq!(run("9")["steps"][0]["output"], json!({"id": "9"}));
    let listed = srv.cli_json(&["connectors", "list"]);
    let versions: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["connector"] == "acme" && a["action"] == "get_item")
        .map(|a| a["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["1.0.0", "1.1.0"]);

    // Bad input: a clear one-line error, nothing installed or changed.
    let one_line_err = |out: std::process::Output, want: &str| {
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.contains(want), "want {want}: {e}");
    };
    one_line_err(
        install(&acme_manifest(&base, "1.0.0", "{other: 1}")),
        "immutable",
    );
    one_line_err(
        install(&acme_manifest(&base, "2.0.0", ".body | ][")),
        "actions[0].output",
    );
    one_line_err(
        install(&acme_manifest(&base, "2.0.0", ".").replace("type: string", "type: strnig")),
        "actions[0].input_schema",
    );
    one_line_err(
        install(
            &acme_manifest(&base, "2.0.0", ".")
                .replace("/items/{{ .input.id }}", "/items/{{ .input. }}"),
        ),
        "actions[0].request.path",
    );
    one_line_err(
        install(&acme_manifest(&base, "2.0.0", ".").replace("name: acme", "name: github")),
        "built-in",
    );
    one_line_err(
        install(&format!(
            "{}\n# {}",
            acme_manifest(&base, "2.0.0", "."),
            "x".repeat(300 * 1024)
        )),
        "at most",
    );
    one_line_err(install("name: [unclosed"), "YAML");
    let f = tmp.path().join("pinned.yaml");
    std::fs::write(
        &f,
        "name: pinned\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    action: acme.get_item@9\n    credential: acme\n",
    )
    .unwrap();
    one_line_err(
        srv.cli(&["flow", "apply", f.to_str().unwrap()]),
        "unknown action",
    );
    let after: Vec<String> = srv.cli_json(&["connectors", "list"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["connector"] == "acme")
        .map(|a| {
            format!(
                "{}@{}",
                a["action"].as_str().unwrap(),
                a["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        after,
        vec![
            "get_item@1.0.0",
            "list@1.0.0",
            "get_item@1.1.0",
            "list@1.1.0"
        ],
        "refused installs left nothing behind"
    );
}

/// Requests a stand-in received: path and arrival time.
type Hits = Arc<Mutex<Vec<(String, std::time::Instant)>>>;

/// A provider that records when each request arrived and answers `/ok` 200, `/down` 503 and
/// `/limited` 429 with `Retry-After: 30`.
fn timed_standin() -> (String, Hits) {
    let hits: Hits = Arc::default();
    let rec = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let rec = rec.clone();
        async move {
            rec.lock()
                .unwrap()
                .push((uri.path().to_string(), std::time::Instant::now()));
            let st = if uri.path().ends_with("/down") {
                503
            } else if uri.path().ends_with("/limited") {
                429
            } else {
                200
            };
            use axum::response::IntoResponse;
            let status = axum::http::StatusCode::from_u16(st).unwrap();
            let body = axum::Json(json!({"ok": st == 200}));
            if st == 429 {
                (status, [("retry-after", "30")], body).into_response()
            } else {
                (status, body).into_response()
            }
        }
    });
    (format!("http://{}", common::serve_app(app)), hits)
}

fn limited_manifest(base: &str) -> String {
    format!(
        r#"{{"name": "slowapi", "version": "1.0.0", "title": "Slow API", "description": "d",
  "base_url": "{base}",
  "auth": {{"scheme": "none", "fields": []}},
  "rate_limits": [{{"endpoint": "*", "per_second": 4, "burst": 1}}],
  "actions": [
    {{"name": "ok", "description": "d", "credential": "none", "input_schema": {{"type": "object"}}, "output_schema": {{"type": "object"}},
      "request": {{"method": "POST", "path": "/ok"}}}},
    {{"name": "down", "description": "d", "credential": "none", "input_schema": {{"type": "object"}}, "output_schema": {{"type": "object"}},
      "request": {{"method": "POST", "path": "/down"}}}}
  ]}}"#
    )
}

#[test]
fn manifest_rate_limits_space_calls_and_a_failing_provider_opens_its_breaker() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let (base, hits) = timed_standin();
    let f = tmp.path().join("slow.json");
    std::fs::write(&f, limited_manifest(&base)).unwrap();
    let out = srv.cli(&["connectors", "install", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Four parallel calls under 4/s with a burst of 1: they go out about 250 ms apart, and the
    // waiting steps do not fail or use up attempts.
    let steps: String = (0..4)
        .map(|i| format!("  - id: s{i}\n    needs: []\n    action: slowapi.ok\n    retry: {{max_attempts: 1}}\n"))
        .collect();
    srv.apply(&format!(
        "name: burst\ntrigger:\n  manual: {{}}\nsteps:\n{steps}"
    ));
    let r = srv.cli_json(&["run", "start", "burst", "--input", "{}"]);
    let run = srv.wait_run(r["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run}");
    let mut at: Vec<std::time::Instant> = hits.lock().unwrap().iter().map(|(_, t)| *t).collect();
    at.sort();
    assert_eq!(at.len(), 4);
    for w in at.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(200),
            "calls {gap:?} apart under a 4/s limit"
        );
    }

    // A provider that keeps answering 503: after 5 failures in a row the breaker opens, and the
    // step waits instead of hammering it (the run stays running, the provider sees no more calls).
    hits.lock().unwrap().clear();
    srv.apply("name: broken\ntrigger:\n  manual: {}\nsteps:\n  - id: d\n    action: slowapi.down\n    retry: {max_attempts: 20, initial: 10ms, max: 20ms}\n");
    let r = srv.cli_json(&["run", "start", "broken", "--input", "{}"]);
    let run_id = r["run_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while hits.lock().unwrap().len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the provider never saw 5 calls"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Time for several more attempts at 10-20 ms backoff if nothing held them back.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        hits.lock().unwrap().len(),
        5,
        "the open breaker lets no call through"
    );
    let run = srv.cli_json(&["runs", "show", &run_id]);
    assert_eq!(run["status"], "running", "{run}");
    assert_eq!(
        srv.metric(r#"weft_breakers_opened_total{connector="slowapi"}"#),
        1.0
    );
    assert_eq!(srv.metric("weft_breakers_open"), 1.0);
    assert!(srv.metric(r#"weft_rate_limit_waits_total{connector="slowapi"}"#) >= 1.0);
    let logs = srv
        .api_get(&format!("/api/v1/workspaces/default/runs/{run_id}/logs"))
        .1;
    assert!(
        logs.to_string().contains("failed 5 times in a row"),
        "{logs}"
    );
    assert!(srv.cli(&["runs", "cancel", &run_id]).status.success());
}

#[test]
fn a_steps_own_rate_limit_spaces_its_calls_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let (base, hits) = timed_standin();
    srv.apply(&format!(
        "name: paced\ntrigger:\n  manual: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{method: POST, url: '{base}/ok'}}\n    rate_limit: {{per_second: 5}}\n"
    ));
    // Three runs at once: the step's bucket is shared by its runs, so calls are ~200 ms apart.
    let runs: Vec<String> = (0..3)
        .map(|_| {
            srv.cli_json(&["run", "start", "paced", "--input", "{}"])["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for r in &runs {
        let run = srv.wait_run(r, Duration::from_secs(20));
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(
            run["steps"][0]["attempts"], 1,
            "waiting for the limit is not an attempt: {run}"
        );
    }
    let mut at: Vec<std::time::Instant> = hits.lock().unwrap().iter().map(|(_, t)| *t).collect();
    at.sort();
    assert_eq!(at.len(), 3);
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(150),
            "{:?} apart",
            w[1] - w[0]
        );
    }
}

#[test]
fn one_rate_limited_url_does_not_pause_a_tenants_other_http_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let (base, hits) = timed_standin();
    srv.apply(&format!(
        "name: limited\ntrigger:\n  manual: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{method: POST, url: '{base}/limited'}}\n"
    ));
    srv.apply(&format!(
        "name: fine\ntrigger:\n  manual: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{method: POST, url: '{base}/ok'}}\n"
    ));
    let limited = srv.cli_json(&["run", "start", "limited", "--input", "{}"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hits.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the limited URL was never called"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The 429 asked that URL's caller to wait 30 s; another URL's request goes out at once.
    let started = std::time::Instant::now();
    let fine = srv.cli_json(&["run", "start", "fine", "--input", "{}"]);
    let run = srv.wait_run(fine["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        srv.cli_json(&["runs", "show", &limited])["status"],
        "running"
    );
    assert!(srv.cli(&["runs", "cancel", &limited]).status.success());
}

/// The Acme manifest with a signed webhook trigger and poll hints on its listing action.
fn acme_with_triggers(base: &str) -> String {
    format!(
        r#"name: acme
version: 2.0.0
title: Acme
description: The Acme API, with webhooks and polling
base_url: "{{{{ .credential.api_url }}}}/v1"
auth:
  scheme: bearer
  fields:
    - {{name: token, secret: true, for: actions}}
    - {{name: webhook_secret, secret: true, for: triggers}}
    - {{name: api_url, for: actions, default: "{base}"}}
  inject:
    headers: {{Authorization: "Bearer {{{{ .credential.token }}}}"}}
triggers:
  - name: webhook
    description: Acme event deliveries
    signature: hmac
    hmac: {{header: X-Acme-Signature, algorithm: sha256, encoding: hex, prefix: "sha256="}}
    secret_field: webhook_secret
    event_header: X-Acme-Event
    delivery_header: X-Acme-Delivery
actions:
  - name: list
    description: Every item, page by page
    input_schema: {{type: object}}
    output_schema: {{type: object}}
    request: {{method: GET, path: /list}}
    pagination: {{items: .body.data, next: .body.next, param: cursor}}
    poll: {{items: .items, id: '"acme-" + (. | tostring)'}}
"#
    )
}

#[test]
fn declarative_connectors_declare_signed_webhooks_and_poll_hints() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    let base = acme_standin();
    let install = |text: &str| {
        let f = tmp.path().join("acme.yaml");
        std::fs::write(&f, text).unwrap();
        srv.cli(&["connectors", "install", f.to_str().unwrap(), "--json"])
    };
    let out = install(&acme_with_triggers(&base));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.cli_json(&[
        "credentials",
        "set",
        "acme",
        "--connector",
        "acme",
        "--value",
        "token=acme-canary-token",
        "--value",
        &format!("webhook_secret={HOOK_SECRET}"),
    ]);

    // Webhooks: the manifest's HMAC, event and delivery headers.
    let f = srv.apply(
        "name: acme-events\ntrigger:\n  webhook:\n    connector: acme\n    credential: acme\n    events: [item.created]\nsteps:\n  - id: t\n    transform: '{event: .trigger.event, delivery: .trigger.delivery_id}'\n",
    );
    let hook = f["hook_url"].as_str().unwrap().to_string();
    let scheme = Scheme::Hmac(weft_connectors::webhook::HmacScheme {
        header: "X-Acme-Signature".into(),
        algorithm: weft_connectors::webhook::HmacAlgorithm::Sha256,
        encoding: weft_connectors::webhook::SigEncoding::Hex,
        prefix: Some("sha256=".into()),
    });
    let body = r#"{"item": {"id": 7}}"#;
    let signed = |event: &str, delivery: &str| {
        let mut h = sign(&scheme, HOOK_SECRET, body.as_bytes(), 0, "").unwrap();
        h.push(("X-Acme-Event".into(), event.into()));
        h.push(("X-Acme-Delivery".into(), delivery.into()));
        h
    };
    let (st, ack) = post(&hook, body, &signed("item.created", "d-1"));
    assert_eq!(st, 202, "{ack}");
    let run = srv.wait_run(ack["run_id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(
        run["output"],
        json!({"event": "item.created", "delivery": "d-1"}),
        "{run}"
    );
    let (st, ack) = post(&hook, body, &signed("item.created", "d-1"));
    assert_eq!((st, ack["duplicate"].clone()), (202, json!(true)), "{ack}");
    let (st, ack) = post(&hook, body, &signed("item.deleted", "d-2"));
    assert_eq!((st, ack["ignored"].clone()), (200, json!(true)), "{ack}");
    let mut bad = signed("item.created", "d-3");
    bad[0].1 = format!("sha256={}", "0".repeat(64));
    let (st, ack) = post(&hook, body, &bad);
    assert_eq!(st, 401, "{ack}");

    // Polling: `poll: {action: acme.list}` takes the action's items and id hints.
    srv.apply(
        "name: acme-poll\ntrigger:\n  poll:\n    every: 1s\n    action: acme.list\n    credential: acme\n    since: start\nsteps:\n  - id: t\n    transform: '.trigger.item_id'\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outputs = loop {
        let runs = srv.cli_json(&["runs", "list", "--flow", "acme-poll"]);
        let items = runs["items"].as_array().cloned().unwrap_or_default();
        let done: Vec<String> = items
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        if done.len() >= 6 {
            break done;
        }
        assert!(std::time::Instant::now() < deadline, "{runs}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut ids: Vec<String> = outputs
        .iter()
        .map(|r| {
            srv.cli_json(&["runs", "show", r])["output"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "acme-0", "acme-1", "acme-10", "acme-11", "acme-20", "acme-21"
        ]
    );
    let st = srv.cli_json(&["flow", "poll", "acme-poll"]);
    assert_eq!(st["runs_started"], 6, "{st}");

    // Bad manifests: each names the field, and nothing is installed.
    let bad = |from: &str, to: &str, want: &str| {
        let text = acme_with_triggers(&base)
            .replace("version: 2.0.0", "version: 3.0.0")
            .replace(from, to);
        let out = install(&text);
        assert!(!out.status.success(), "installed with {to}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "want {want}: {e}");
    };
    bad(
        "signature: hmac",
        "signature: github",
        "triggers[0].signature",
    );
    bad(
        "algorithm: sha256",
        "algorithm: md5",
        "triggers[0].hmac.algorithm",
    );
    bad(
        "secret_field: webhook_secret",
        "secret_field: api_url",
        "triggers[0].secret_field",
    );
    bad(
        "event_header: X-Acme-Event",
        "event_header: 'X Acme'",
        "triggers[0].event_header",
    );
    bad(
        "id: '\"acme-\" + (. | tostring)'",
        "id: '.['",
        "actions[0].poll.id",
    );
    let listed = srv.cli_json(&["connectors", "show", "acme"]);
    assert!(!listed.to_string().contains("3.0.0"), "{listed}");
}
