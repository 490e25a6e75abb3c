//! The engine test harness: a SQLite store in a temp dir, a manual clock, the engine's events.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use weft_connectors::{GuardedClient, NetPolicy};
use weft_engine::{Engine, EngineEvent, EngineOptions};
use weft_sandbox::{SandboxOptions, SandboxPool};
use weft_store::Actor;
use weft_store::{SqliteOptions, Store};
use weft_types::{ManualClock, RunId, RunStatus, Scope};

/// 2026-01-01T00:00:30Z
pub const T0: i64 = 1_767_225_630_000;

pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    pub scope: Scope,
    pub events: tokio::sync::broadcast::Receiver<EngineEvent>,
    pub opts: EngineOptions,
    _dir: tempfile::TempDir,
}

pub async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(SqliteOptions {
        path: dir.path().join("weft.db"),
        readers: 2,
    })
    .unwrap();
    let clock = ManualClock::new(T0);
    store.bootstrap_if_empty(T0).await.unwrap();
    let scope = store.default_scope().await.unwrap().unwrap();
    let opts = EngineOptions {
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
        public_url: "http://weft.test".into(),
        vault: Some(Arc::new(weft_vault::Vault::new(
            weft_vault::KeySource::Env(String::new()),
            weft_vault::Keyring::generate().unwrap(),
        ))),
    };
    let engine = Engine::new(opts.clone());
    let events = engine.subscribe();
    engine.start(true).await.unwrap();
    Harness {
        engine,
        clock,
        scope,
        events,
        opts,
        _dir: dir,
    }
}

impl Harness {
    /// Stops the engine and starts a new one on the same store and clock (a process restart).
    pub async fn restart(&mut self) {
        self.engine.shutdown(Duration::from_secs(5)).await;
        self.engine = Engine::new(self.opts.clone());
        self.events = self.engine.subscribe();
        self.engine.start(true).await.unwrap();
    }
    /// Starts a manual run of `flow` with `input`.
    pub async fn start(&self, flow: &str, input: serde_json::Value) -> RunId {
        self.engine
            .start_run(self.scope, flow, input, None, Actor::system("test"))
            .await
            .unwrap()
            .run_id
    }
    /// Waits until `run` parks; returns its wake time.
    pub async fn parked(&mut self, run: RunId) -> Option<i64> {
        loop {
            match self.next_event().await {
                EngineEvent::RunParked { run: r, until } if r == run => return until,
                EngineEvent::RunFinished { run: r, status } if r == run => {
                    panic!("run finished ({status}) instead of waiting")
                }
                _ => {}
            }
        }
    }
    /// Waits until `run` finishes; returns its status.
    pub async fn finished(&mut self, run: RunId) -> RunStatus {
        loop {
            if let EngineEvent::RunFinished { run: r, status } = self.next_event().await
                && r == run
            {
                return status;
            }
        }
    }

    pub async fn apply(&self, yaml: &str) {
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
    pub async fn next_event(&mut self) -> EngineEvent {
        tokio::time::timeout(Duration::from_secs(20), self.events.recv())
            .await
            .expect("engine event")
            .unwrap()
    }
    pub async fn run_finished(&mut self) -> (RunId, RunStatus) {
        loop {
            if let EngineEvent::RunFinished { run, status } = self.next_event().await {
                return (run, status);
            }
        }
    }
    pub async fn retrying(&mut self) -> Duration {
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

/// A sink on loopback that reports each request's idempotency key and JSON body, then answers
/// 200 only once the test adds a permit to the returned semaphore.
pub async fn gated_sink() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    Arc<tokio::sync::Semaphore>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (tx, g) = (tx.clone(), g.clone());
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let _ = tx.send((key, body));
                if let Ok(p) = g.acquire().await {
                    p.forget();
                }
                "{}"
            }
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, rx, gate)
}
