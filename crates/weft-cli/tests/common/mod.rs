//! Test harness: the real `weft` binary on a temp data dir, a recording HTTP sink, CLI calls.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Serves `app` on a loopback port from its own thread (the tests are synchronous); its address.
pub fn serve_app(app: axum::Router) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The `weft` binary under test.
pub fn weft_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weft")
}

/// A running `weft serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub key: String,
    pub data: PathBuf,
    pub hello_curl: Option<String>,
    /// The instance admin token, when this start printed one.
    pub admin_token: Option<String>,
    /// Every line the process printed on stdout so far.
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server on a fresh port; `key` is reused across restarts of the same data dir.
    pub fn start(data: &Path, key: Option<&str>, env: &[(&str, &str)], extra: &[&str]) -> Server {
        let mut args = vec!["--allow-private-network"];
        args.extend_from_slice(extra);
        Self::start_raw(data, key, env, &args)
    }

    /// Starts a server with exactly these extra flags (no `--allow-private-network`).
    pub fn start_raw(
        data: &Path,
        key: Option<&str>,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Server {
        Self::spawn(data, key, env, extra, Stdio::inherit())
    }

    /// Starts a server (with `--allow-private-network`) whose stderr goes to `stderr`.
    pub fn start_logged(
        data: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
        stderr: std::fs::File,
    ) -> Server {
        let mut args = vec!["--allow-private-network"];
        args.extend_from_slice(extra);
        Self::spawn(data, None, env, &args, Stdio::from(stderr))
    }

    fn spawn(
        data: &Path,
        key: Option<&str>,
        env: &[(&str, &str)],
        extra: &[&str],
        stderr: Stdio,
    ) -> Server {
        let mut cmd = Command::new(weft_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("WEFT_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                out.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    // keep draining so the child never blocks on a full pipe
                }
            }
        });
        let mut url = None;
        let mut found_key = key.map(str::to_string);
        let mut hello_curl = None;
        let mut admin_token = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while url.is_none() || hello_curl.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                break;
            };
            if let Some(rest) = line.strip_prefix("Weft is serving on ") {
                url = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if let Some(k) = line.strip_prefix("Owner API key (shown once, keep it): ") {
                found_key = Some(k.trim().to_string());
            }
            if let Some(t) =
                line.strip_prefix("Instance admin token for /api/v1/admin (shown once): ")
            {
                admin_token = Some(t.trim().to_string());
            }
            if line.trim_start().starts_with("curl ") {
                hello_curl = Some(line.trim().to_string());
            }
        }
        let url = url.unwrap_or_else(|| panic!("weft serve did not print its URL"));
        Server {
            child,
            url,
            key: found_key.expect("no API key"),
            data: data.to_path_buf(),
            hello_curl,
            admin_token,
            output,
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself (e.g. at a failpoint).
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(weft_bin())
            .args(args)
            .env("WEFT_URL", &self.url)
            .env("WEFT_API_KEY", &self.key)
            .output()
            .unwrap()
    }

    /// Runs the CLI with `--json` and parses stdout; panics with stderr on failure.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "weft {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "weft {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Applies a flow given as YAML text.
    pub fn apply(&self, yaml: &str) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("flow.yaml");
        std::fs::write(&f, yaml).unwrap();
        self.cli_json(&["flow", "apply", f.to_str().unwrap()])
    }

    /// Polls the API until the run is terminal; returns it.
    pub fn wait_run(&self, run: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self.cli_json(&["runs", "show", run]);
            let st = r["status"].as_str().unwrap_or("").to_string();
            if matches!(st.as_str(), "succeeded" | "failed" | "cancelled") {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "run {run} still {st} after {within:?}: {r}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `n` runs of `flow` with input `{"n": i}` and waits for each to fail; their ids.
    pub fn failed_runs(&self, flow: &str, n: usize) -> Vec<String> {
        let runs: Vec<String> = (0..n)
            .map(|i| {
                let input = serde_json::json!({ "n": i }).to_string();
                self.cli_json(&["run", "start", flow, "--input", &input])["run_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        for r in &runs {
            let done = self.wait_run(r, Duration::from_secs(30));
            assert_eq!(done["status"], "failed", "{done}");
        }
        runs
    }

    /// Waits until alert rule `rule` has a delivered notification; returns its deliveries.
    pub fn wait_alert_delivered(&self, rule: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let d = self.cli_json(&["alerts", "deliveries", rule]);
            if d["items"][0]["delivered_at"].is_string() {
                return d;
            }
            assert!(Instant::now() < deadline, "not delivered: {d}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /metrics` (no key needed), checked to be OpenMetrics text.
    pub fn metrics_text(&self) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::get(format!("{}/metrics", self.url)).await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
            r.text().await.unwrap()
        })
    }

    /// The value of one sample of `GET /metrics` (`name{labels}` as printed), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics_text(), series)
    }

    /// GET on the API with the key.
    pub fn api_get(&self, path: &str) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{}{path}", self.url))
                .bearer_auth(&self.key)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.json().await.unwrap_or(Value::Null))
        })
    }
}

impl Server {
    /// GET with the key; the body as text (an event stream is read to its end).
    pub fn api_get_text(&self, path: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{}{path}", self.url))
                .bearer_auth(&self.key)
                .timeout(std::time::Duration::from_secs(60))
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.text().await.unwrap_or_default())
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `series` (`name{labels}` as Prometheus prints it) in `text`, 0 if
/// absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The W3C trace context the request carried.
    pub traceparent: Option<String>,
    pub body: Value,
}

/// How the sink answers.
#[derive(Clone, Default)]
pub struct SinkBehavior {
    /// Statuses to answer with, in order; 200 once exhausted.
    pub statuses: Vec<u16>,
    /// Delay before answering.
    pub delay: Duration,
}

/// A recording HTTP server on 127.0.0.1, run on its own thread.
pub struct Sink {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Most requests it was answering at once (one whose client went away stays counted).
    pub peak: Arc<std::sync::atomic::AtomicUsize>,
    _rt: std::thread::JoinHandle<()>,
}

impl Sink {
    pub fn start(behavior: SinkBehavior) -> Sink {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let rec = received.clone();
        let peak: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let peak_seen = peak.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let statuses = Arc::new(Mutex::new(behavior.statuses.clone()));
                let delay = behavior.delay;
                let in_flight: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let rec = rec.clone();
                    let statuses = statuses.clone();
                    let in_flight = in_flight.clone();
                    let peak = peak_seen.clone();
                    async move {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = in_flight.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(now, SeqCst);
                        let path = req.uri().path().to_string();
                        let (key, traceparent) = {
                            let h = req.headers();
                            let get = |n: &str| {
                                h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string)
                            };
                            (get("idempotency-key"), get("traceparent"))
                        };
                        let bytes = axum::body::to_bytes(req.into_body(), 1 << 24)
                            .await
                            .unwrap_or_default();
                        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        rec.lock().unwrap().push(Received {
                            path,
                            idempotency_key: key,
                            traceparent,
                            body,
                        });
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        in_flight.fetch_sub(1, SeqCst);
                        let st = {
                            let mut s = statuses.lock().unwrap();
                            if s.is_empty() { 200 } else { s.remove(0) }
                        };
                        (
                            axum::http::StatusCode::from_u16(st).unwrap(),
                            axum::Json(serde_json::json!({"ok": st < 400})),
                        )
                    }
                });
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        Sink {
            url: format!("http://{addr}"),
            received,
            peak,
            _rt: h,
        }
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// POSTs JSON to a webhook; returns (status, body) or None if the connection dropped.
pub fn post_hook(url: &str, body: &str, headers: &[(&str, &str)]) -> Option<(u16, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.ok()?;
        let st = r.status().as_u16();
        let text = r.text().await.ok()?;
        Some((
            st,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    })
}

/// A fresh database on the shared PostgreSQL test cluster (`scripts/pg.sh`); its owner URL.
pub fn fresh_pg_db() -> String {
    let owner = std::env::var("WEFT_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("WEFT_TEST_DATABASE_URL is not set: start PostgreSQL with `eval \"$(scripts/pg.sh start)\"` (scripts/test.sh does this)")
    });
    let name = format!("weft_e_{}", &weft_types::random_secret()[..16]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::postgres::PgConnection::connect(&owner).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
    });
    format!("{}/{name}", owner.rsplit_once('/').unwrap().0)
}
