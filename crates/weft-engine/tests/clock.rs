//! Engine behaviour in time — backoff, Retry-After, timeouts, schedules, cancellation — driven by
//! an injected manual clock: no test sleeps to wait for work; each awaits the engine's events.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;
use weft_connectors::{GuardedClient, NetPolicy};
use weft_engine::{Engine, EngineEvent, EngineOptions};
use weft_sandbox::{SandboxOptions, SandboxPool};
use weft_store::Actor;
use weft_store::{SqliteOptions, Store};
use weft_types::{ManualClock, RunId, RunStatus, Scope};

/// 2026-01-01T00:00:30Z
const T0: i64 = 1_767_225_630_000;

struct Harness {
    engine: Engine,
    clock: ManualClock,
    scope: Scope,
    events: tokio::sync::broadcast::Receiver<EngineEvent>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(SqliteOptions {
        path: dir.path().join("weft.db"),
        readers: 2,
    })
    .unwrap();
    let clock = ManualClock::new(T0);
    store.bootstrap_if_empty(T0).await.unwrap();
    let scope = store.default_scope().await.unwrap().unwrap();
    let engine = Engine::new(EngineOptions {
        store,
        clock: Arc::new(clock.clone()),
        // Only fast-path expressions run here; the sandbox is exercised in weft-sandbox and e2e tests.
        sandbox: SandboxPool::new(SandboxOptions {
            program: "/bin/false".into(),
            args: vec![],
            workers: 1,
            timeout: Duration::from_secs(1),
            memory_bytes: 1 << 28,
        }),
        http: GuardedClient::new(NetPolicy {
            allow_private: true,
            allow: vec![],
        })
        .unwrap(),
        owner: "test".into(),
        max_in_flight: 16,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_secs(1),
        dedupe_window: Duration::from_secs(3600),
        execute: true,
        vault: None,
    });
    let events = engine.subscribe();
    engine.start(true).await.unwrap();
    Harness {
        engine,
        clock,
        scope,
        events,
        _dir: dir,
    }
}

impl Harness {
    async fn apply(&self, yaml: &str) {
        self.engine
            .apply_flow(
                self.scope,
                weft_flow::parse_text(yaml).unwrap(),
                false,
                Actor::system("test"),
            )
            .await
            .unwrap();
    }
    async fn next_event(&mut self) -> EngineEvent {
        tokio::time::timeout(Duration::from_secs(20), self.events.recv())
            .await
            .expect("engine event")
            .unwrap()
    }
    async fn run_finished(&mut self) -> (RunId, RunStatus) {
        loop {
            if let EngineEvent::RunFinished { run, status } = self.next_event().await {
                return (run, status);
            }
        }
    }
    async fn retrying(&mut self) -> Duration {
        loop {
            match self.next_event().await {
                EngineEvent::StepRetrying { delay, .. } => return delay,
                EngineEvent::RunFinished { status, .. } => {
                    panic!("run finished ({status}) instead of retrying")
                }
                _ => {}
            }
        }
    }
}

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
