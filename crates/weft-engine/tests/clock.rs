//! Engine behaviour in time — backoff, Retry-After, timeouts, schedules, cancellation — driven by
//! an injected manual clock: no test sleeps to wait for work; each awaits the engine's events.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;
use weft_engine::EngineEvent;
use weft_store::Actor;
use weft_types::RunStatus;

mod common;
use common::*;

/// A sink on loopback answering from a script of (status, retry-after); reports each request.
async fn sink(
    script: Vec<(u16, Option<&'static str>)>,
    hang: bool,
) -> (String, mpsc::UnboundedReceiver<Option<String>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(script));
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let tx = tx.clone();
        let script = script.clone();
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let _ = tx.send(key);
            if hang {
                std::future::pending::<()>().await;
            }
            let (st, ra) = {
                let mut s = script.lock().unwrap();
                if s.is_empty() {
                    (200, None)
                } else {
                    s.remove(0)
                }
            };
            let mut h = HeaderMap::new();
            if let Some(ra) = ra {
                h.insert("retry-after", ra.parse().unwrap());
            }
            (StatusCode::from_u16(st).unwrap(), h, "{}")
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, rx)
}

fn action_flow(url: &str, extra: &str) -> String {
    format!(
        "name: act\ntrigger:\n  manual: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{ url: '{url}/x', timeout: 60s }}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_waits_on_the_injected_clock_and_keeps_the_key() {
    let mut h = harness().await;
    let (url, mut reqs) = sink(vec![(503, None)], false).await;
    h.apply(&action_flow(
        &url,
        "    retry: { max_attempts: 3, initial: 10s, max: 10s }\n",
    ))
    .await;
    let run = h
        .engine
        .start_run(
            h.scope,
            "act",
            serde_json::json!({}),
            None,
            Actor::system("test"),
        )
        .await
        .unwrap()
        .run_id;
    let delay = h.retrying().await;
    assert!(delay <= Duration::from_secs(10), "{delay:?}");
    let k1 = reqs.recv().await.unwrap();
    // Nothing happens until the clock moves.
    assert!(reqs.try_recv().is_err());
    h.clock.advance(delay + Duration::from_millis(1));
    let (done, status) = h.run_finished().await;
    assert_eq!((done, status), (run, RunStatus::Succeeded));
    let k2 = reqs.recv().await.unwrap();
    assert_eq!(k1, k2);
    assert_eq!(k1, Some(format!("{run}:call:0")));
    let (_, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(steps[0].attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_a_floor_on_the_delay() {
    let mut h = harness().await;
    let (url, _reqs) = sink(vec![(503, Some("45"))], false).await;
    h.apply(&action_flow(
        &url,
        "    retry: { max_attempts: 2, initial: 1s, max: 2s }\n",
    ))
    .await;
    h.engine
        .start_run(
            h.scope,
            "act",
            serde_json::json!({}),
            None,
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(h.retrying().await, Duration::from_secs(45));
    h.clock.advance(Duration::from_secs(44));
    tokio::task::yield_now().await;
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(h.run_finished().await.1, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeout_is_measured_on_the_clock() {
    let mut h = harness().await;
    let (url, mut reqs) = sink(vec![], true).await;
    h.apply(&action_flow(
        &url,
        "    timeout: 5s\n    retry: { max_attempts: 1 }\n",
    ))
    .await;
    let run = h
        .engine
        .start_run(
            h.scope,
            "act",
            serde_json::json!({}),
            None,
            Actor::system("test"),
        )
        .await
        .unwrap()
        .run_id;
    reqs.recv().await.unwrap();
    h.clock.advance(Duration::from_secs(5));
    assert_eq!(h.run_finished().await, (run, RunStatus::Failed));
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert!(r.error.unwrap().contains("timed out after 5.0s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_run() {
    let mut h = harness().await;
    let (url, mut reqs) = sink(vec![], true).await;
    h.apply(&action_flow(&url, "")).await;
    let run = h
        .engine
        .start_run(
            h.scope,
            "act",
            serde_json::json!({}),
            None,
            Actor::system("test"),
        )
        .await
        .unwrap()
        .run_id;
    reqs.recv().await.unwrap();
    assert_eq!(
        h.engine
            .cancel_run(h.scope, run, Actor::system("test"))
            .await
            .unwrap(),
        RunStatus::Cancelled
    );
    // The executing task lets go of the run (its HTTP call is dropped) instead of finishing it.
    loop {
        match h.next_event().await {
            EngineEvent::RunStopped { run: r } if r == run => break,
            EngineEvent::RunFinished { .. } => {
                panic!("a cancelled run must not be finished by its worker")
            }
            _ => {}
        }
    }
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    // A finished run cannot be cancelled again; it keeps its status.
    assert_eq!(
        h.engine
            .cancel_run(h.scope, run, Actor::system("test"))
            .await
            .unwrap(),
        RunStatus::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_schedule_ticks_fire_once_then_the_schedule_continues() {
    let mut h = harness().await;
    h.apply("name: tick\ntrigger:\n  schedule: { cron: '* * * * *', timezone: UTC }\nsteps:\n  - id: t\n    transform: '.trigger.scheduled_at'\n").await;
    // Ten minutes of "downtime" pass at once.
    h.clock.advance(Duration::from_secs(600));
    let (first, st) = h.run_finished().await;
    assert_eq!(st, RunStatus::Succeeded);
    let (r, _) = h.engine.store().get_run(h.scope, first).await.unwrap();
    assert_eq!(
        r.output.unwrap(),
        serde_json::json!("2026-01-01T00:01:00.000Z")
    );
    // The next tick is the first one after "now" (00:10:30), i.e. 00:11:00.
    h.clock.advance(Duration::from_secs(30));
    let (second, _) = h.run_finished().await;
    let (r2, _) = h.engine.store().get_run(h.scope, second).await.unwrap();
    assert_eq!(
        r2.output.unwrap(),
        serde_json::json!("2026-01-01T00:11:00.000Z")
    );
    let total: i64 = h
        .engine
        .store()
        .count_runs()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, 2, "ten missed ticks fired once, not ten times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_timeout_fails_the_run_on_the_clock() {
    let mut h = harness().await;
    let (url, mut reqs) = sink(vec![], true).await;
    h.apply(&format!(
        "name: slow\ntimeout: 1m\ntrigger:\n  manual: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{ url: '{url}/x', timeout: 300s }}\n"
    ))
    .await;
    let run = h
        .engine
        .start_run(
            h.scope,
            "slow",
            serde_json::json!({}),
            None,
            Actor::system("test"),
        )
        .await
        .unwrap()
        .run_id;
    reqs.recv().await.unwrap();
    h.clock.advance(Duration::from_secs(61));
    assert_eq!(h.run_finished().await, (run, RunStatus::Failed));
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert!(r.error.unwrap().contains("exceeded its 60.0s timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_run_compensates_the_steps_it_completed() {
    let mut h = harness().await;
    let (url, mut reqs) = sink(vec![], true).await;
    h.apply(&format!(
        "name: saga-slow\ntimeout: 1m\ntrigger:\n  manual: {{}}\nsteps:\n  - id: book\n    transform: '\"bk_1\"'\n    compensate:\n      - id: cancel\n        transform: '{{undo: .compensating.output}}'\n  - id: call\n    action: http.request\n    input: {{ url: '{url}/x', timeout: 300s }}\n    compensate:\n      - id: never\n        transform: '1'\n"
    ))
    .await;
    let run = h
        .engine
        .start_run(
            h.scope,
            "saga-slow",
            serde_json::json!({}),
            None,
            Actor::system("test"),
        )
        .await
        .unwrap()
        .run_id;
    reqs.recv().await.unwrap();
    h.clock.advance(Duration::from_secs(61));
    assert_eq!(h.run_finished().await, (run, RunStatus::Failed));
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert!(r.error.unwrap().contains("exceeded its 60.0s timeout"));
    let cancel = steps
        .iter()
        .find(|s| s.step_id == "book.compensate.cancel")
        .expect("the completed step was undone");
    assert_eq!(cancel.output, Some(serde_json::json!({"undo": "bk_1"})));
    assert!(
        !steps
            .iter()
            .any(|s| s.step_id.starts_with("call.compensate")),
        "a step cut off by the timeout did not complete and is not undone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_with_continue_on_error_lets_dependents_run() {
    let mut h = harness().await;
    let (url, _reqs) = sink(vec![(400, None)], false).await;
    h.apply(&format!(
        "name: soft\ntrigger:\n  manual: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{ url: '{url}/x' }}\n    continue_on_error: true\n  - id: after\n    transform: '.steps.call.status'\n"
    ))
    .await;
    let run = h
        .engine
        .start_run(
            h.scope,
            "soft",
            serde_json::json!({}),
            None,
            Actor::system("test"),
        )
        .await
        .unwrap()
        .run_id;
    assert_eq!(h.run_finished().await, (run, RunStatus::Succeeded));
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.output, Some(serde_json::json!("failed")));
    assert!(steps[0].error.as_deref().unwrap().contains("400"));
}

/// A listing API on loopback: `GET /items` answers `{items: [...]}` from `items` (or with
/// `status` when it is not 200) and reports each request's query string.
struct Source {
    url: String,
    items: Arc<Mutex<Vec<serde_json::Value>>>,
    status: Arc<Mutex<u16>>,
    queries: mpsc::UnboundedReceiver<String>,
}

async fn source() -> Source {
    let (tx, queries) = mpsc::unbounded_channel();
    let items = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(Mutex::new(200u16));
    let (i2, s2) = (items.clone(), status.clone());
    let app = axum::Router::new().route(
        "/items",
        axum::routing::get(move |uri: axum::http::Uri| {
            let (items, status, tx) = (i2.clone(), s2.clone(), tx.clone());
            async move {
                let _ = tx.send(uri.query().unwrap_or_default().to_string());
                let st = *status.lock().unwrap();
                let body = serde_json::json!({"items": *items.lock().unwrap()});
                (StatusCode::from_u16(st).unwrap(), axum::Json(body))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Source {
        url,
        items,
        status,
        queries,
    }
}

fn poll_flow(url: &str, extra: &str, step: &str) -> String {
    format!(
        "name: poller\ntrigger:\n  poll:\n    every: 1m\n    input: {{ url: '{url}/items', query: {{ since: '{{{{ .cursor }}}}' }} }}\n    items: '.body.items'\n    cursor: '[.items[].n] | max'\n{extra}steps:\n  - id: t\n    transform: '{step}'\n"
    )
}

impl Harness {
    async fn polled(&mut self) -> (usize, Option<String>) {
        loop {
            if let EngineEvent::Polled { started, error, .. } = self.next_event().await {
                return (started, error);
            }
        }
    }
    async fn outputs(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for _ in 0..n {
            let (run, st) = self.run_finished().await;
            assert_eq!(st, RunStatus::Succeeded);
            out.push(
                self.engine
                    .store()
                    .get_run(self.scope, run)
                    .await
                    .unwrap()
                    .0
                    .output
                    .unwrap(),
            );
        }
        out.sort_by_key(|v| v.to_string());
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_starts_one_run_per_new_item_and_its_cursor_outlives_versions() {
    use serde_json::json;
    let mut h = harness().await;
    let mut src = source().await;
    *src.items.lock().unwrap() = vec![json!({"id": "a", "n": 1}), json!({"id": "b", "n": 2})];
    h.apply(&poll_flow(&src.url, "", ".trigger.item.id")).await;
    // Publishing polls at once; without `since`, the first poll only learns what exists.
    assert_eq!(h.polled().await, (0, None));
    // A null cursor leaves the parameter out.
    assert_eq!(src.queries.recv().await.unwrap(), "");
    let st = h.engine.poll_state(h.scope, "poller").await.unwrap();
    assert_eq!((st.cursor, st.seen, st.primed), (Some(json!(2)), 2, true));
    assert_eq!(st.next_at, Some(T0 + 60_000));

    // New items appear; the next poll, a minute later on the clock, starts one run each.
    src.items
        .lock()
        .unwrap()
        .extend([json!({"id": "c", "n": 3}), json!({"id": "d", "n": 4})]);
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(h.polled().await, (2, None));
    assert_eq!(src.queries.recv().await.unwrap(), "since=2");
    assert_eq!(h.outputs(2).await, vec![json!("c"), json!("d")]);

    // Listed again: nothing new starts.
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(h.polled().await, (0, None));
    assert_eq!(src.queries.recv().await.unwrap(), "since=4");

    // A provider failure keeps the cursor and is reported on the trigger.
    *src.status.lock().unwrap() = 503;
    h.clock.advance(Duration::from_secs(60));
    let (started, error) = h.polled().await;
    assert_eq!(started, 0);
    assert!(error.unwrap().contains("503"));
    *src.status.lock().unwrap() = 200;
    let st = h.engine.poll_state(h.scope, "poller").await.unwrap();
    assert_eq!(st.cursor, Some(json!(4)));
    assert!(st.last_error.unwrap().contains("http.request"));

    // A new version keeps cursor and seen ids: it polls at once and starts nothing old.
    src.items.lock().unwrap().push(json!({"id": "e", "n": 5}));
    h.apply(&poll_flow(&src.url, "", "\"v2:\" + .trigger.item.id"))
        .await;
    assert_eq!(h.polled().await, (1, None));
    assert_eq!(h.outputs(1).await, vec![json!("v2:e")]);
    let _ = src.queries.recv().await;

    // Backfill from an older cursor: listed items already seen still start nothing.
    let st = h
        .engine
        .backfill_poll(h.scope, "poller", Some(json!(0)), Actor::system("test"))
        .await
        .unwrap();
    assert_eq!(st.cursor, Some(json!(0)));
    assert_eq!(h.polled().await, (0, None));
    let total: i64 = h
        .engine
        .store()
        .count_runs()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        total, 3,
        "a, b were there before; c, d, e started one run each"
    );

    // A manual trigger turns polling off; backfilling it then is refused.
    h.apply("name: poller\ntrigger:\n  manual: {}\nsteps:\n  - id: t\n    transform: '.'\n")
        .await;
    assert!(
        h.engine
            .poll_state(h.scope, "poller")
            .await
            .unwrap()
            .next_at
            .is_none()
    );
    let err = h
        .engine
        .backfill_poll(h.scope, "poller", None, Actor::system("test"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no published poll trigger"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_with_since_backfills_and_bad_listings_fail_clearly() {
    use serde_json::json;
    let mut h = harness().await;
    let mut src = source().await;
    *src.items.lock().unwrap() = vec![json!({"id": 1, "n": 1}), json!({"id": 2, "n": 2})];
    h.apply(&poll_flow(&src.url, "    since: 0\n", ".trigger.item_id"))
        .await;
    assert_eq!(h.polled().await, (2, None));
    assert_eq!(src.queries.recv().await.unwrap(), "since=0");
    assert_eq!(h.outputs(2).await, vec![json!("1"), json!("2")]);

    // An item without an id fails the whole poll: nothing is half-recorded.
    src.items
        .lock()
        .unwrap()
        .extend([json!({"id": 3, "n": 3}), json!({"n": 4})]);
    h.clock.advance(Duration::from_secs(60));
    let (started, error) = h.polled().await;
    assert_eq!(started, 0);
    let error = error.unwrap();
    assert!(
        error.contains("id of item 3") && error.contains("null"),
        "{error}"
    );
    let st = h.engine.poll_state(h.scope, "poller").await.unwrap();
    assert_eq!((st.cursor, st.seen), (Some(json!(2)), 2));

    // A listing that is not a list says how to select one.
    let url = src.url.clone();
    h.apply(&format!(
        "name: poller\ntrigger:\n  poll:\n    every: 1m\n    input: {{ url: '{url}/items' }}\nsteps:\n  - id: t\n    transform: '.'\n"
    ))
    .await;
    let (_, error) = h.polled().await;
    assert!(error.unwrap().contains("not a list; set `items:`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_log_records_typed_events_in_the_order_they_happened() {
    let mut h = harness().await;
    let (url, _reqs) = sink(vec![(503, None), (200, None), (400, None)], false).await;
    let call = format!(
        "  - id: call\n    action: http.request\n    input: {{ url: '{url}/x', timeout: 60s }}\n    retry: {{ max_attempts: 3, initial: 10s, max: 10s }}\n"
    );
    h.apply(&format!(
        "name: typed\ntrigger:\n  manual: {{}}\nsteps:\n  - id: prep\n    transform: '1'\n{call}  - id: skipme\n    if: 'false'\n    transform: '2'\n"
    ))
    .await;
    h.apply(&format!(
        "name: fails\ntrigger:\n  manual: {{}}\nsteps:\n{call}"
    ))
    .await;
    let events = |lines: &[weft_store::LogRecord]| -> Vec<(String, Option<String>)> {
        lines
            .iter()
            .map(|l| (l.event.clone(), l.step_id.clone()))
            .collect()
    };
    let want = |w: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
        w.iter()
            .map(|(e, s)| (e.to_string(), s.map(str::to_string)))
            .collect()
    };

    let t_start = weft_types::Clock::now_ms(&h.clock);
    let run = h.start("typed", serde_json::json!({})).await;
    let delay = h.retrying().await;
    h.clock.advance(delay + Duration::from_millis(1));
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let lines = h
        .engine
        .store()
        .run_logs(h.scope, run, 0, 100)
        .await
        .unwrap();
    assert_eq!(
        events(&lines),
        want(&[
            ("RunStarted", None),
            ("StepStarted", Some("prep")),
            ("StepSucceeded", Some("prep")),
            ("StepStarted", Some("call")),
            ("StepRetrying", Some("call")),
            ("StepSucceeded", Some("call")),
            ("StepSkipped", Some("skipme")),
            ("RunSucceeded", None),
        ]),
        "{lines:#?}"
    );
    // A start is stamped with when it happened, not with the checkpoint that carried it: the
    // retried step started before the clock moved past its backoff.
    let started = &lines[3];
    let succeeded = &lines[5];
    assert!(
        lines[0].ts >= t_start && started.ts < t_start + delay.as_millis() as i64,
        "{lines:#?}"
    );
    assert!(
        succeeded.ts > t_start + delay.as_millis() as i64,
        "{lines:#?}"
    );

    let run = h.start("fails", serde_json::json!({})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let lines = h
        .engine
        .store()
        .run_logs(h.scope, run, 0, 100)
        .await
        .unwrap();
    assert_eq!(
        events(&lines),
        want(&[
            ("RunStarted", None),
            ("StepStarted", Some("call")),
            ("StepFailed", Some("call")),
            ("RunFailed", None),
        ]),
        "{lines:#?}"
    );
    assert_eq!(lines[2].level, "error");
}
