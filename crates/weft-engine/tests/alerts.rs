//! Alerting on the manual clock: 1,000 identical failures page once, signed with Standard
//! Webhooks; after the quiet time the next page says how many were held back; a new kind of
//! failure is its own incident; a receiver that fails is tried again later.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use weft_store::Actor;
use weft_types::RunStatus;

mod common;
use common::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A receiver on loopback that records each delivery (headers, body) and answers `status`.
async fn receiver(status: Arc<Mutex<u16>>) -> (String, Arc<Mutex<Vec<(HeaderMap, String)>>>) {
    let got: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
        let g = g.clone();
        let status = status.clone();
        async move {
            g.lock().unwrap().push((headers, body));
            StatusCode::from_u16(*status.lock().unwrap()).unwrap()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

/// The newest notification of `rule` once it has been tried `attempts` times. The engine's own
/// delivery task may take it first, so this delivers too and reads until it is so.
async fn tried(h: &Harness, rule: &str, attempts: i64) -> weft_store::AlertDelivery {
    for _ in 0..100_000 {
        h.engine.deliver_alerts().await.unwrap();
        let d = h
            .engine
            .store()
            .alert_deliveries(h.scope, rule, 1)
            .await
            .unwrap();
        if let Some(d) = d.into_iter().next()
            && d.attempts >= attempts
        {
            return d;
        }
        tokio::task::yield_now().await;
    }
    panic!("the notification of {rule} was never tried {attempts} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_failures_page_once_and_the_next_page_counts_them() {
    let mut h = harness().await;
    let status = Arc::new(Mutex::new(200u16));
    let (url, got) = receiver(status.clone()).await;
    h.apply("name: orders\ntrigger:\n  manual: {}\nsteps:\n  - id: check\n    fail: 'order {{ .trigger.body.n }} is bad'\n")
        .await;
    let mut values = serde_json::Map::new();
    values.insert("secret".into(), json!(SECRET));
    h.engine
        .set_credential(
            h.scope,
            "pager-signing",
            "webhook",
            values,
            Actor::system("test"),
        )
        .await
        .unwrap();
    let rule = |on: &str| {
        json!({"on": on, "flow": "orders", "quiet": "1h",
               "notify": {"webhook": {"url": url, "credential": "pager-signing"}}})
    };
    h.engine
        .create_alert_rule(
            h.scope,
            "failures",
            rule("run_failed"),
            Actor::system("test"),
        )
        .await
        .unwrap();
    h.engine
        .create_alert_rule(
            h.scope,
            "new-errors",
            rule("error_new"),
            Actor::system("test"),
        )
        .await
        .unwrap();

    let mut runs = Vec::new();
    for n in 0..1_000 {
        runs.push(h.start("orders", json!({"n": n})).await);
    }
    let mut left: std::collections::HashSet<_> = runs.into_iter().collect();
    while !left.is_empty() {
        let (run, status) = h.run_finished().await;
        if left.remove(&run) {
            assert_eq!(status, RunStatus::Failed);
        }
    }
    tried(&h, "failures", 1).await;
    tried(&h, "new-errors", 1).await;
    let pages = got.lock().unwrap().clone();
    let bodies: Vec<Value> = pages
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    let mut types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    types.sort();
    assert_eq!(
        types,
        ["alert.error_new", "alert.run_failed"],
        "{bodies:#?}"
    );
    for (headers, body) in &pages {
        let scheme = weft_connectors::webhook::signature::Scheme::StandardWebhooks {
            tolerance_secs: 300,
        };
        let now = weft_types::Clock::now_ms(&h.clock) / 1000;
        weft_connectors::webhook::signature::verify(&scheme, SECRET, headers, body.as_bytes(), now)
            .unwrap();
    }
    let failed = bodies
        .iter()
        .find(|b| b["type"] == "alert.run_failed")
        .unwrap();
    assert_eq!(failed["rule"], "failures");
    assert_eq!(failed["flow"], "orders");
    assert_eq!(failed["suppressed"], 0);
    assert!(
        failed["summary"]
            .as_str()
            .unwrap()
            .contains("failed: order"),
        "{failed}"
    );
    // Nothing more is due: 999 were counted, not queued.
    h.engine.deliver_alerts().await.unwrap();
    assert_eq!(got.lock().unwrap().len(), 2);
    let deliveries = h
        .engine
        .store()
        .alert_deliveries(h.scope, "failures", 10)
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);

    // After the quiet time, the next failure pages again and says how many were held back; a
    // receiver that fails gets it again later.
    h.clock.advance(Duration::from_secs(3_601));
    *status.lock().unwrap() = 503;
    let run = h.start("orders", json!({"n": 1_000})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let d = tried(&h, "failures", 1).await;
    assert_eq!(
        (d.delivered_at, d.error.as_deref()),
        (None, Some("webhook answered HTTP 503"))
    );
    *status.lock().unwrap() = 200;
    h.clock.advance(Duration::from_secs(61));
    let d = tried(&h, "failures", 2).await;
    assert!(d.delivered_at.is_some() && d.error.is_none(), "{d:?}");
    assert_eq!(
        got.lock().unwrap().len(),
        4,
        "two pages to the failing receiver, one each"
    );
    let last: Value = serde_json::from_str(&got.lock().unwrap().last().unwrap().1).unwrap();
    assert_eq!(last["suppressed"], 999, "{last}");
    assert_eq!(last["run_id"], run.to_string());
    // The same kind of failure is no new error group: no second error_new page.
    assert_eq!(
        h.engine
            .store()
            .alert_deliveries(h.scope, "new-errors", 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_is_refused_naming_its_fields() {
    let h = harness().await;
    let bad = |spec: Value| {
        let e = h.engine.clone();
        let scope = h.scope;
        async move {
            match e
                .create_alert_rule(scope, "r", spec, Actor::system("test"))
                .await
            {
                Err(weft_engine::EngineError::BadInput(errs)) => {
                    errs.into_iter().map(|e| e.path).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let hook = json!({"webhook": {"url": "http://127.0.0.1:9/x"}});
    assert_eq!(
        bad(json!({"on": "run_stuck", "notify": hook})).await,
        ["stuck_after"]
    );
    assert_eq!(
        bad(json!({"on": "run_failed", "quiet": "soon", "notify": hook})).await,
        ["quiet"]
    );
    assert_eq!(
        bad(json!({"on": "run_failed", "flow": "nope", "notify": hook})).await,
        ["flow"]
    );
    assert_eq!(
        bad(json!({"on": "run_failed", "notify": {"webhook": {"url": "ftp://x"}}})).await,
        ["notify.webhook.url"]
    );
    assert_eq!(
        bad(json!({"on": "sometimes", "notify": hook})).await,
        ["spec"]
    );
    assert_eq!(bad(json!([1])).await, ["spec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_that_keeps_failing_auth_is_paused_with_its_reason_and_alerts() {
    let mut h = harness().await;
    let api_status = Arc::new(Mutex::new(401u16));
    let (api_url, api_calls) = receiver(api_status.clone()).await;
    let (pager_url, pages) = receiver(Arc::new(Mutex::new(200))).await;
    let token = |t: &str| {
        let mut v = serde_json::Map::new();
        v.insert("token".into(), json!(t));
        v
    };
    h.engine
        .set_credential(
            h.scope,
            "api",
            "http",
            token("tok-1"),
            Actor::system("test"),
        )
        .await
        .unwrap();
    h.engine
        .create_alert_rule(
            h.scope,
            "creds",
            json!({"on": "credential_reauth", "notify": {"webhook": {"url": pager_url}}}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    h.apply(&format!(
        "name: call\ntrigger:\n  manual: {{}}\nsteps:\n  - id: get\n    action: http.request\n    credential: api\n    input: {{ url: '{api_url}' }}\n"
    ))
    .await;
    let run = |h: &mut Harness| {
        let engine = h.engine.clone();
        let scope = h.scope;
        async move {
            engine
                .start_run(scope, "call", json!({}), None, Actor::system("test"))
                .await
                .unwrap()
                .run_id
        }
    };
    let failures = |h: &Harness| {
        let store = h.engine.store().clone();
        let scope = h.scope;
        async move {
            let (rec, _) = store.credential(scope, "api").await.unwrap().unwrap();
            (rec.status, rec.auth_failures)
        }
    };
    // Four 401s in a row are counted; a success ends the run of failures.
    for _ in 0..4 {
        let r = run(&mut h).await;
        assert_eq!(h.finished(r).await, RunStatus::Failed);
    }
    assert_eq!(failures(&h).await, ("ok".to_string(), 4));
    *api_status.lock().unwrap() = 200;
    let r = run(&mut h).await;
    assert_eq!(h.finished(r).await, RunStatus::Succeeded);
    assert_eq!(failures(&h).await, ("ok".to_string(), 0));
    // Five in a row pause it, with the reason; the next use fails at once without a call.
    *api_status.lock().unwrap() = 401;
    for _ in 0..5 {
        let r = run(&mut h).await;
        assert_eq!(h.finished(r).await, RunStatus::Failed);
    }
    let (rec, _) = h
        .engine
        .store()
        .credential(h.scope, "api")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, "needs_reauth");
    assert!(rec.status_reason.unwrap().contains("5 times in a row"));
    let calls = api_calls.lock().unwrap().len();
    assert_eq!(calls, 10);
    let r = run(&mut h).await;
    assert_eq!(h.finished(r).await, RunStatus::Failed);
    let (_, steps) = h.engine.store().get_run(h.scope, r).await.unwrap();
    let error = steps[0].error.clone().unwrap();
    assert!(
        error.contains("credential 'api' is paused") && error.contains("weft credentials set api"),
        "{error}"
    );
    assert_eq!(
        api_calls.lock().unwrap().len(),
        calls,
        "a paused credential is not sent"
    );
    // One page for the pause.
    let d = tried(&h, "creds", 1).await;
    assert!(d.delivered_at.is_some(), "{d:?}");
    let page: Value = serde_json::from_str(&pages.lock().unwrap()[0].1).unwrap();
    assert_eq!(page["type"], "alert.credential_reauth");
    assert_eq!(page["credential"], "api");
    assert!(!page.to_string().contains("tok-1"), "{page}");
    // New values put it back in service.
    *api_status.lock().unwrap() = 200;
    h.engine
        .set_credential(
            h.scope,
            "api",
            "http",
            token("tok-2"),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(failures(&h).await, ("ok".to_string(), 0));
    let r = run(&mut h).await;
    assert_eq!(h.finished(r).await, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_spike_pages_at_its_threshold_within_the_window() {
    let mut h = harness().await;
    let (url, got) = receiver(Arc::new(Mutex::new(200))).await;
    h.apply("name: orders\ntrigger:\n  manual: {}\nsteps:\n  - id: check\n    fail: 'order {{ .trigger.body.n }} is bad'\n")
        .await;
    h.engine
        .create_alert_rule(
            h.scope,
            "spike",
            json!({"on": "error_spike", "threshold": 3, "window": "10m",
                   "notify": {"webhook": {"url": url}}}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    let fail = |h: &mut Harness, n: i64| {
        let engine = h.engine.clone();
        let scope = h.scope;
        async move {
            engine
                .start_run(
                    scope,
                    "orders",
                    json!({"n": n}),
                    None,
                    Actor::system("test"),
                )
                .await
                .unwrap()
                .run_id
        }
    };
    // Two failures, then the window passes: no spike.
    for n in 0..2 {
        let r = fail(&mut h, n).await;
        assert_eq!(h.finished(r).await, RunStatus::Failed);
    }
    h.clock.advance(Duration::from_secs(601));
    for n in 2..4 {
        let r = fail(&mut h, n).await;
        assert_eq!(h.finished(r).await, RunStatus::Failed);
    }
    h.engine.deliver_alerts().await.unwrap();
    assert!(
        h.engine
            .store()
            .alert_deliveries(h.scope, "spike", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The third within ten minutes pages.
    let r = fail(&mut h, 4).await;
    assert_eq!(h.finished(r).await, RunStatus::Failed);
    let d = tried(&h, "spike", 1).await;
    assert!(d.delivered_at.is_some(), "{d:?}");
    assert_eq!(d.payload["type"], "alert.error_spike");
    assert_eq!(d.payload["step"], "check");
    assert_eq!(got.lock().unwrap().len(), 1);
    let bad = h
        .engine
        .create_alert_rule(
            h.scope,
            "bad",
            json!({"on": "error_spike", "notify": {"webhook": {"url": url}}}),
            Actor::system("test"),
        )
        .await;
    assert!(
        matches!(&bad, Err(weft_engine::EngineError::BadInput(e)) if e[0].path == "threshold"),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_rule_posts_the_alert_with_the_bot_token() {
    let mut h = harness().await;
    // A stand-in for Slack's Web API: records chat.postMessage calls and answers ok.
    let calls: Arc<Mutex<Vec<(String, HeaderMap, Value)>>> = Arc::default();
    let c = calls.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
            let c = c.clone();
            async move {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                c.lock().unwrap().push((uri.path().to_string(), headers, v));
                axum::Json(json!({"ok": true, "channel": "C1", "ts": "1.2"}))
            }
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let mut values = serde_json::Map::new();
    values.insert("bot_token".into(), json!("xoxb-canary-1"));
    values.insert("api_url".into(), json!(api));
    h.engine
        .set_credential(h.scope, "ops-slack", "slack", values, Actor::system("test"))
        .await
        .unwrap();
    h.apply(
        "name: orders\ntrigger:\n  manual: {}\nsteps:\n  - id: check\n    fail: 'order is bad'\n",
    )
    .await;
    h.engine
        .create_alert_rule(
            h.scope,
            "to-slack",
            json!({"on": "run_failed", "notify": {"slack": {"credential": "ops-slack", "channel": "#ops"}}}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    let r = h.start("orders", json!({})).await;
    assert_eq!(h.finished(r).await, RunStatus::Failed);
    let d = tried(&h, "to-slack", 1).await;
    assert!(d.delivered_at.is_some(), "{d:?}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (path, headers, body) = &calls[0];
    assert_eq!(path, "/api/chat.postMessage");
    assert_eq!(headers["authorization"], "Bearer xoxb-canary-1");
    assert_eq!(body["channel"], "#ops");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("[weft] run ") && text.contains("failed: order is bad"),
        "{text}"
    );
    assert!(!d.payload.to_string().contains("xoxb-canary-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_limit_near_its_end_pages_once_a_month() {
    let mut h = harness().await;
    let (url, got) = receiver(Arc::new(Mutex::new(200))).await;
    h.apply("name: quick\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    transform: '1'\n")
        .await;
    let limits = weft_store::Limits {
        runs_per_month: Some(5),
        ..Default::default()
    };
    h.engine
        .store()
        .patch_tenant_plan(
            h.scope.tenant,
            Some(limits),
            None,
            Actor::system("test"),
            T0,
        )
        .await
        .unwrap();
    h.engine
        .create_alert_rule(
            h.scope,
            "quota",
            json!({"on": "quota_near", "percent": 60, "notify": {"webhook": {"url": url}}}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let r = h.start("quick", json!({})).await;
        assert_eq!(h.finished(r).await, RunStatus::Succeeded);
    }
    h.engine.scan_alerts().await.unwrap();
    h.engine.deliver_alerts().await.unwrap();
    assert!(got.lock().unwrap().is_empty(), "2 of 5 is 40 %");
    let r = h.start("quick", json!({})).await;
    assert_eq!(h.finished(r).await, RunStatus::Succeeded);
    h.engine.scan_alerts().await.unwrap();
    let d = tried(&h, "quota", 1).await;
    assert_eq!(d.payload["type"], "alert.quota_near");
    assert_eq!(
        (d.payload["used"].as_i64(), d.payload["of"].as_i64()),
        (Some(3), Some(5))
    );
    assert!(
        d.incident.starts_with("quota:runs_per_month:"),
        "{}",
        d.incident
    );
    // Still near the limit a minute later: counted, not paged again.
    h.engine.scan_alerts().await.unwrap();
    h.engine.deliver_alerts().await.unwrap();
    assert_eq!(got.lock().unwrap().len(), 1);
}
