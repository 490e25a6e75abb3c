//! An in-process API over a real SQLite store: requests go through the real router with
//! `tower::ServiceExt::oneshot`.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use weft_connectors::{GuardedClient, NetPolicy};
use weft_engine::{Engine, EngineOptions};
use weft_sandbox::{SandboxOptions, SandboxPool};
use weft_store::{SqliteOptions, Store};
use weft_types::{ManualClock, Scope};

/// 2026-01-01T00:00:30Z
pub const T0: i64 = 1_767_225_630_000;
pub const ADMIN: &str = "wfa_test-admin-token";

pub struct App {
    pub router: Router,
    pub store: Store,
    pub engine: Engine,
    pub clock: ManualClock,
    pub scope: Scope,
    pub owner_key: String,
    pub dir: tempfile::TempDir,
}

pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl App {
    /// A store with the default tenant, an engine that does not execute (runs stay queued).
    pub async fn new() -> App {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(SqliteOptions {
            path: dir.path().join("weft.db"),
            readers: 2,
        })
        .unwrap();
        let clock = ManualClock::new(T0);
        let boot = store.bootstrap_if_empty(T0).await.unwrap().unwrap();
        let scope = Scope {
            tenant: boot.tenant,
            workspace: boot.workspace,
        };
        let engine = Engine::new(EngineOptions {
            store: store.clone(),
            clock: Arc::new(clock.clone()),
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
            max_in_flight: 4,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            dedupe_window: Duration::from_secs(3600),
            execute: false,
            public_url: "http://weft.test".into(),
            vault: Some(Arc::new(weft_vault::Vault::new(
                weft_vault::KeySource::Env(String::new()),
                weft_vault::Keyring::generate().unwrap(),
            ))),
        });
        let router = weft_api::router(
            engine.clone(),
            weft_api::ApiOptions {
                public_url: "http://weft.test".into(),
                max_body_bytes: 1 << 20,
                admin_token_hash: Some(weft_store::hash_secret(ADMIN)),
            },
        );
        App {
            router,
            store,
            engine,
            clock,
            scope,
            owner_key: boot.owner_key,
            dir,
        }
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        self.call_with(method, path, key, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        // A live stream (Server-Sent Events) does not end by itself: its status and headers
        // are the answer; the body is not read.
        let streaming = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let bytes = if streaming {
            bytes::Bytes::new()
        } else {
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes()
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Resp {
            status,
            body,
            headers,
        }
    }
}
