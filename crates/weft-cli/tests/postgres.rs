//! `weft serve --database-url`: the real binary on a real PostgreSQL (started by
//! `scripts/pg.sh`, as `scripts/test.sh` and CI do), one process and two sharing the store.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Server, Sink, SinkBehavior, fresh_pg_db, post_hook};

const T: Duration = Duration::from_secs(30);

fn flow(sink: &str) -> String {
    format!(
        "name: orders\ntrigger:\n  webhook: {{}}\nsteps:\n  - id: shape\n    transform: '{{id: .trigger.body.id}}'\n  - id: send\n    action: http.request\n    input:\n      method: POST\n      url: \"{sink}/orders\"\n      body: \"{{{{ .steps.shape.output }}}}\"\n"
    )
}

#[test]
fn serve_on_postgres_runs_the_example_and_survives_a_restart() {
    let url = fresh_pg_db();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &["--database-url", &url]);
    // The newcomer path works on PostgreSQL too: the printed curl runs the example flow.
    let curl = srv.hello_curl.clone().expect("the example's curl line");
    let hook = curl
        .split_whitespace()
        .find(|w| w.contains("/hooks/"))
        .unwrap()
        .to_string();
    let (st, ack) = post_hook(&hook, r#"{"name":"Ada"}"#, &[]).unwrap();
    assert!(st == 200 || st == 202, "{st} {ack}");
    let (_, runs) = srv.api_get("/api/v1/workspaces/default/runs");
    let run = runs["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(srv.wait_run(&run, T)["status"], "succeeded");
    let key = srv.key.clone();
    drop(srv);
    // A restart finds the same tenant, key, flows and runs; it does not bootstrap again.
    let srv = Server::start(dir.path(), Some(&key), &[], &["--database-url", &url]);
    let (st, runs) = srv.api_get("/api/v1/workspaces/default/runs");
    assert_eq!(st, 200);
    let items = runs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "succeeded", "{runs}");
    assert!(srv.admin_token.is_none(), "no second bootstrap");
}

#[test]
fn two_processes_on_one_database_run_every_event_once() {
    let url = fresh_pg_db();
    let sink = Sink::start(SinkBehavior::default());
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(d1.path(), None, &[], &["--database-url", &url]);
    let b = Server::start(d2.path(), Some(&a.key), &[], &["--database-url", &url]);
    let f = a.apply(&flow(&sink.url));
    let hook_a = f["hook_url"].as_str().unwrap().to_string();
    let hook_b = hook_a.replace(&a.url, &b.url);
    let mut runs = Vec::new();
    for i in 0..60 {
        let hook = if i % 2 == 0 { &hook_a } else { &hook_b };
        let (st, ack) = post_hook(hook, &format!(r#"{{"id": {i}}}"#), &[]).unwrap();
        assert_eq!(st, 202, "{ack}");
        runs.push(ack["run_id"].as_str().unwrap().to_string());
    }
    for r in &runs {
        let got = a.wait_run(r, T);
        assert_eq!(got["status"], "succeeded", "{got}");
    }
    // Every event reached the sink exactly once, whichever process ran it.
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in sink.all() {
        *seen.entry(r.body["id"].as_i64().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 60);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

#[test]
fn an_api_process_takes_webhooks_and_a_worker_process_runs_them() {
    let url = fresh_pg_db();
    let sink = Sink::start(SinkBehavior::default());
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let api = Server::start(
        d1.path(),
        None,
        &[],
        &["--database-url", &url, "--role", "api"],
    );
    let f = api.apply(&flow(&sink.url));
    let hook = f["hook_url"].as_str().unwrap().to_string();
    // Accepted while no worker runs: the events wait, durably queued.
    let mut runs = Vec::new();
    for i in 0..10 {
        let (st, ack) = post_hook(&hook, &format!(r#"{{"id": {i}}}"#), &[]).unwrap();
        assert_eq!(st, 202, "{ack}");
        runs.push(ack["run_id"].as_str().unwrap().to_string());
    }
    let (_, queued) = api.api_get("/api/v1/workspaces/default/runs?status=queued");
    assert_eq!(
        queued["items"].as_array().unwrap().len(),
        10,
        "the api role executes nothing"
    );
    // A worker process on the same database picks them up.
    let _worker = Server::start(
        d2.path(),
        Some(&api.key),
        &[],
        &["--database-url", &url, "--role", "worker"],
    );
    for r in &runs {
        assert_eq!(api.wait_run(r, T)["status"], "succeeded");
    }
    assert_eq!(sink.all().len(), 10);
}

/// An HTTP call with an optional bearer token; (status, JSON body).
fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(serde_json::Value::Null))
    })
}

#[test]
fn rate_limits_are_shared_by_every_process() {
    let url = fresh_pg_db();
    let sink = Sink::start(SinkBehavior::default());
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(d1.path(), None, &[], &["--database-url", &url]);
    let b = Server::start(d2.path(), Some(&a.key), &[], &["--database-url", &url]);
    let admin = a.admin_token.clone().unwrap();
    let (st, tenants) = http(
        "GET",
        &format!("{}/api/v1/admin/tenants", a.url),
        Some(&admin),
        None,
    );
    assert_eq!(st, 200, "{tenants}");
    let tenant = tenants["items"][0]["id"].as_str().unwrap().to_string();
    let (st, v) = http(
        "PATCH",
        &format!("{}/api/v1/admin/tenants/{tenant}", a.url),
        Some(&admin),
        Some(serde_json::json!({"limits": {"webhook_rps": 3}})),
    );
    assert_eq!(st, 200, "{v}");
    let f = a.apply(&flow(&sink.url));
    let hook_a = f["hook_url"].as_str().unwrap().to_string();
    let hook_b = hook_a.replace(&a.url, &b.url);
    // Process b may have cached the plan before the change: its cache lives 2 s.
    std::thread::sleep(Duration::from_millis(2100));
    // Alternate between the processes: with a bucket each, about twice the plan would pass.
    let t0 = std::time::Instant::now();
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..12 {
        let hook = if i % 2 == 0 { &hook_a } else { &hook_b };
        let (st, ack) = post_hook(hook, &format!(r#"{{"id": {i}}}"#), &[]).unwrap();
        match st {
            202 => accepted += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}: {ack}"),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let allowed = 3 + (elapsed * 3.0).ceil() as i32;
    assert!(accepted >= 3, "the burst passes: {accepted}");
    assert!(
        accepted <= allowed,
        "{accepted} accepted in {elapsed:.2} s across two processes; one shared limit allows {allowed}"
    );
    assert_eq!(accepted + limited, 12);

    // Login attempts too: 5 a minute per account from one address, wherever they land.
    let mut codes = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 { &a.url } else { &b.url };
        let (st, _) = http(
            "POST",
            &format!("{base}/api/v1/auth/login"),
            None,
            Some(serde_json::json!({"email": "nobody@example.com", "password": "wrong password"})),
        );
        codes.push(st);
    }
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");
}

#[test]
fn credentials_sealed_by_one_process_are_used_by_another_and_stored_encrypted() {
    use weft_connectors::webhook::{Scheme, sign};
    let url = fresh_pg_db();
    let sink = Sink::start(SinkBehavior::default());
    // Every process of a deployment shares the master key through WEFT_MASTER_KEY.
    let key = "S0lJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUk=";
    let env = [("WEFT_MASTER_KEY", key)];
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let api = Server::start(
        d1.path(),
        None,
        &env,
        &["--database-url", &url, "--role", "api"],
    );
    let _worker = Server::start(
        d2.path(),
        Some(&api.key),
        &env,
        &["--database-url", &url, "--role", "worker"],
    );
    api.cli_json(&[
        "credentials",
        "set",
        "hook",
        "--connector",
        "github",
        "--value",
        "webhook_secret=pg-canary-hook",
    ]);
    api.cli_json(&[
        "credentials",
        "set",
        "sink",
        "--connector",
        "http",
        "--value",
        "token=pg-canary-token",
    ]);
    let f = api.apply(&format!(
        "name: gh\ntrigger:\n  webhook:\n    connector: github\n    credential: hook\nsteps:\n  - id: send\n    action: http.request\n    credential: sink\n    input:\n      method: POST\n      url: \"{}/x\"\n      body: {{n: 1}}\n",
        sink.url
    ));
    let hook = f["hook_url"].as_str().unwrap();
    let body = r#"{"zen":"Keep it logically awesome."}"#;
    let mut hs = sign(&Scheme::GitHub, "pg-canary-hook", body.as_bytes(), 0, "").unwrap();
    hs.push(("x-github-event".into(), "ping".into()));
    hs.push(("x-github-delivery".into(), "d-pg-1".into()));
    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (st, ack) = post_hook(hook, body, &hs).unwrap();
    assert_eq!(st, 202, "{ack}");
    let run = api.wait_run(ack["run_id"].as_str().unwrap(), T);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(sink.count(), 1);

    // In the database: sealed bytes only, no plaintext, and field names for listings.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::{Connection, Row};
        let mut c = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
        // Row-level security is forced even for the owner: read as the system.
        sqlx::query("SELECT set_config('weft.system', 'on', false)")
            .execute(&mut c)
            .await
            .unwrap();
        let rows = sqlx::query(
            "SELECT name, fields, key_id, wrapped_key, ciphertext FROM credentials ORDER BY name",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert_eq!(rows.len(), 2);
        for r in rows {
            let ct: Vec<u8> = r.get(4);
            let wk: Vec<u8> = r.get(3);
            for canary in ["pg-canary-hook", "pg-canary-token"] {
                assert!(!ct.windows(canary.len()).any(|w| w == canary.as_bytes()));
                assert!(!wk.windows(canary.len()).any(|w| w == canary.as_bytes()));
            }
            assert!(r.get::<String, _>(2).starts_with("mk_"));
        }
    });
}
