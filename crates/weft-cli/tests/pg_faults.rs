//! Fault tests on PostgreSQL with real processes: kill -9 one of two workers under 10,000
//! webhook runs, and restart PostgreSQL itself under load.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, Sink, SinkBehavior, fresh_pg_db};
use serde_json::Value;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// A PostgreSQL cluster of this test's own (the shared one must not be restarted under the
/// other tests), stopped and removed on drop.
struct OwnCluster {
    dir: String,
    owner_url: String,
}

impl OwnCluster {
    fn start() -> Self {
        let out = Command::new(script("pg.sh")).arg("start").output().unwrap();
        assert!(
            out.status.success(),
            "scripts/pg.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("pg.sh printed no {name}: {text}"))
                .to_string()
        };
        OwnCluster {
            dir: var("WEFT_TEST_PG_DIR"),
            owner_url: var("WEFT_TEST_DATABASE_URL"),
        }
    }

    fn pg(&self, verb: &str) {
        let st = Command::new(script("pg.sh"))
            .args([verb, &self.dir])
            .status()
            .unwrap();
        assert!(st.success(), "scripts/pg.sh {verb} failed");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(script("pg.sh"))
            .args(["stop", &self.dir])
            .status();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs by status, read as the schema owner with the system flag (row security is forced).
fn statuses(url: &str) -> HashMap<String, i64> {
    rt().block_on(async {
        use sqlx::{Connection, Row};
        let Ok(mut c) = sqlx::postgres::PgConnection::connect(url).await else {
            return HashMap::new();
        };
        let mut tx = c.begin().await.unwrap();
        sqlx::query("SELECT set_config('weft.system', 'on', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let rows = sqlx::query("SELECT status, COUNT(*) FROM runs GROUP BY status")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect()
    })
}

fn flow(sink: &str) -> String {
    format!(
        "name: orders\ntrigger:\n  webhook: {{}}\nsteps:\n  - id: shape\n    transform: '{{id: .trigger.body.id}}'\n  - id: send\n    action: http.request\n    input:\n      method: POST\n      url: \"{sink}/orders\"\n      body: \"{{{{ .steps.shape.output }}}}\"\n"
    )
}

/// What one webhook POST got back.
#[derive(Debug, Clone)]
struct Ack {
    id: u64,
    status: u16,
    run: Option<String>,
}

/// Sends webhooks `ids` with `conc` connections; stops early when `stop` is set.
async fn send_all(
    hook: String,
    ids: std::ops::Range<u64>,
    conc: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Ack> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let next = Arc::new(Mutex::new(ids));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, hook, next, acks, stop) = (
            client.clone(),
            hook.clone(),
            next.clone(),
            acks.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Some(id) = next.lock().unwrap().next() else {
                    return;
                };
                let r = client
                    .post(&hook)
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("evt-{id}"))
                    .body(format!(r#"{{"id": {id}}}"#))
                    .send()
                    .await;
                let ack = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        Ack {
                            id,
                            status,
                            run: v["run_id"].as_str().map(str::to_string),
                        }
                    }
                    Err(_) => Ack {
                        id,
                        status: 0,
                        run: None,
                    },
                };
                acks.lock().unwrap().push(ack);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    std::mem::take(&mut *acks.lock().unwrap())
}

/// Waits until `want` runs have succeeded (none failed), or panics after `within`.
fn wait_succeeded(url: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = statuses(url);
        let ok = s.get("succeeded").copied().unwrap_or(0);
        if ok >= want {
            assert_eq!(ok, want, "{s:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {ok} of {want} runs succeeded within {within:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Side effects by idempotency key: every run's `send` step reached the sink at least once,
/// repeats carry the same key, and nothing arrived that no run sent.
fn effects(sink: &Sink) -> HashMap<String, usize> {
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for r in sink.all() {
        let key = r.idempotency_key.expect("every action carries its key");
        *by_key.entry(key).or_default() += 1;
    }
    by_key
}

#[test]
fn kill_9_of_one_of_two_workers_under_10k_runs_loses_nothing_and_repeats_only_in_flight_steps() {
    const RUNS: u64 = 10_000;
    const IN_FLIGHT: usize = 64;
    let url = fresh_pg_db();
    let sink = Sink::start(SinkBehavior::default());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let api = Server::start(
        dirs[0].path(),
        None,
        &[],
        &["--database-url", &url, "--role", "api"],
    );
    let hook = api.apply(&flow(&sink.url))["hook_url"]
        .as_str()
        .unwrap()
        .to_string();
    let worker = |d: &std::path::Path| {
        let n = IN_FLIGHT.to_string();
        Server::start(
            d,
            Some(&api.key),
            &[],
            &[
                "--database-url",
                &url,
                "--role",
                "worker",
                "--lease-secs",
                "3",
                "--max-in-flight",
                &n,
            ],
        )
    };
    let mut a = worker(dirs[1].path());
    let _b = worker(dirs[2].path());

    let rt = rt();
    let sending = rt.spawn(send_all(
        hook,
        0..RUNS,
        32,
        Arc::new(AtomicBool::new(false)),
    ));
    // Kill worker A once a few thousand runs are done, while both workers are busy.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.count() < 3000 {
        assert!(Instant::now() < deadline, "no progress: {}", sink.count());
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill9();
    let done_at_kill = sink.count();
    let acks = rt.block_on(sending).unwrap();
    assert_eq!(acks.len() as u64, RUNS);
    let bad: Vec<_> = acks.iter().filter(|a| a.status != 202).collect();
    assert!(
        bad.is_empty(),
        "intake (api process) is unaffected: {:?}",
        &bad[..bad.len().min(5)]
    );

    wait_succeeded(&url, RUNS as i64, Duration::from_secs(240));
    let by_key = effects(&sink);
    let mut repeats = 0;
    for ack in &acks {
        let run = ack.run.as_deref().unwrap();
        let n = by_key.get(&format!("{run}:send:0")).copied().unwrap_or(0);
        assert!((1..=2).contains(&n), "run {run} sent {n} times");
        repeats += n - 1;
    }
    assert_eq!(by_key.len() as u64, RUNS, "no side effect without a run");
    // Only steps in flight on the killed worker are sent again, and at most its in-flight cap.
    assert!(
        repeats <= IN_FLIGHT,
        "{repeats} steps were sent twice; worker A had at most {IN_FLIGHT} in flight"
    );
    assert!(done_at_kill < RUNS as usize, "the kill happened mid-load");
    eprintln!(
        "killed worker A after {done_at_kill} deliveries; {repeats} in-flight steps were re-sent with their key"
    );
}

#[test]
fn restarting_postgresql_under_load_answers_503_while_down_and_loses_nothing_acknowledged() {
    let pg = OwnCluster::start();
    let url = pg.owner_url.clone();
    let sink = Sink::start(SinkBehavior::default());
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &["--database-url", &url]);
    let hook = srv.apply(&flow(&sink.url))["hook_url"]
        .as_str()
        .unwrap()
        .to_string();

    let rt = rt();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = rt.spawn(send_all(hook.clone(), 0..u64::MAX, 8, stop.clone()));
    std::thread::sleep(Duration::from_secs(2));
    pg.pg("down");
    // While it is down, intake answers 503 with a problem, quickly (not a hang, never 2xx).
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let (status, content_type) = probe(&rt, &hook, "probe");
    let waited = t0.elapsed();
    assert_eq!(status, 503);
    assert_eq!(content_type, "application/problem+json");
    assert!(waited < Duration::from_secs(10), "answered in {waited:?}");
    std::thread::sleep(Duration::from_secs(2));
    pg.pg("up");
    // The same process reconnects by itself and takes webhooks again.
    let back = Instant::now();
    loop {
        let (st, _) = probe(&rt, &hook, "after");
        if st == 202 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "intake did not recover within 60 s of PostgreSQL coming back (last answer {st})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let acks = rt.block_on(sending).unwrap();

    let accepted: Vec<&Ack> = acks.iter().filter(|a| a.status == 202).collect();
    let refused = acks
        .iter()
        .filter(|a| a.status == 503 || a.status == 0)
        .count();
    let other: Vec<_> = acks
        .iter()
        .filter(|a| ![0, 202, 503].contains(&a.status))
        .collect();
    assert!(other.is_empty(), "only 202 or 503: {other:?}");
    assert!(refused > 0, "some requests met the outage");

    // Every acknowledged event has its run, and each run's side effect happened.
    wait_succeeded(
        &url,
        accepted.len() as i64 + count_extra(&url, &accepted),
        Duration::from_secs(120),
    );
    let by_key = effects(&sink);
    for a in &accepted {
        let run = a.run.as_deref().unwrap();
        assert!(
            by_key.contains_key(&format!("{run}:send:0")),
            "acknowledged event {} (run {run}) was lost",
            a.id
        );
    }
    eprintln!(
        "{} accepted, {refused} refused during the outage",
        accepted.len()
    );
}

/// One webhook POST: (status, content type); status 0 when no answer came.
fn probe(rt: &tokio::runtime::Runtime, hook: &str, id: &str) -> (u16, String) {
    rt.block_on(async {
        match reqwest::Client::new()
            .post(hook)
            .header("content-type", "application/json")
            .body(format!(r#"{{"id": "{id}"}}"#))
            .send()
            .await
        {
            Ok(r) => (
                r.status().as_u16(),
                r.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            ),
            Err(_) => (0, String::new()),
        }
    })
}

/// Runs committed for requests whose answer was lost or 503 (the commit landed, the answer did
/// not): they exist and run too, and are allowed (the sender retries with its key).
fn count_extra(url: &str, accepted: &[&Ack]) -> i64 {
    let total: i64 = statuses(url).values().sum();
    total - accepted.len() as i64
}
