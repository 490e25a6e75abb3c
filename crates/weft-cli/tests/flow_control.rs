//! Flow control through the real binary, on the real clock: approvals and events resumed by
//! signals over HTTP and the CLI, on_error handlers, a durable wait and a for_each loop that
//! survive kill -9, retry in place and replay, switch and joins.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Server, Sink, SinkBehavior};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const WS: &str = "/api/v1/workspaces/default";

/// One answer of the API.
#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    body: Value,
}

/// A request to the API with the server's key; `body` is sent as JSON when given.
fn call(srv: &Server, method: &str, path: &str, body: Option<&str>) -> Resp {
    call_as(srv, &srv.key, method, path, body)
}

/// A request to the API with `key`.
fn call_as(srv: &Server, key: &str, method: &str, path: &str, body: Option<&str>) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = reqwest::Client::new()
            .request(m, format!("{}{path}", srv.url))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = r.text().await.unwrap();
        Resp {
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    })
}

/// Asserts a problem+json answer with this status and code.
fn assert_problem(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.content_type.starts_with("application/problem+json"),
        "{r:?}"
    );
    assert_eq!(r.body["code"], code, "{r:?}");
    assert_eq!(r.body["status"], status, "{r:?}");
    assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

/// Starts a manual run through the API; its id.
fn start(srv: &Server, flow: &str, input: Value) -> String {
    let r = call(
        srv,
        "POST",
        &format!("{WS}/flows/{flow}/runs"),
        Some(&json!({ "input": input }).to_string()),
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["duplicate"], false);
    r.body["run_id"].as_str().unwrap().to_string()
}

/// `GET /runs/{run}`.
fn get_run(srv: &Server, run: &str) -> Value {
    let (st, v) = srv.api_get(&format!("{WS}/runs/{run}"));
    assert_eq!(st, 200, "{v}");
    v
}

/// Polls the run until its status is `want`; returns it.
fn wait_status(srv: &Server, run: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = get_run(srv, run);
        if r["status"] == want {
            return r;
        }
        assert!(
            !matches!(
                r["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ),
            "run {run} ended instead of being {want}: {r}"
        );
        assert!(
            Instant::now() < deadline,
            "run {run} not {want} after {within:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The step `id` of a run as shown by the API.
fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {run}"))
}

/// `POST /runs/{run}/signals/{name}` with `body` as the payload.
fn signal(srv: &Server, run: &str, name: &str, body: Option<&str>) -> Resp {
    call(
        srv,
        "POST",
        &format!("{WS}/runs/{run}/signals/{name}"),
        body,
    )
}

/// Wall-clock time in epoch milliseconds (the server's clock too).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Asserts a failed CLI call: non-zero exit, one line on stderr containing `needle`.
fn assert_cli_error(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn an_approval_and_an_event_resume_by_signal_over_http_and_the_cli_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        r#"name: ask
trigger:
  manual: {}
steps:
  - id: approve
    approval: {message: 'refund {{ .trigger.body.amount }}?'}
  - id: hear
    wait_for_event: {event: order.paid}
  - id: after
    transform: '{approval: .steps.approve.output, event: .steps.hear.output}'
"#,
    );
    let run = start(&srv, "ask", json!({"amount": 30}));

    // Parked on the approval, which shows what the approver is asked.
    let r = wait_status(&srv, &run, "waiting", T);
    let approve = step(&r, "approve");
    assert_eq!(approve["status"], "waiting", "{r}");
    assert_eq!(approve["output"]["message"], "refund 30?", "{r}");
    assert_eq!(approve["output"]["waiting_for"], json!(["approve"]), "{r}");
    assert!(r["finished_at"].is_null(), "{r}");

    // The signal resumes it with its payload; the run parks again on the event.
    let ok = signal(
        &srv,
        &run,
        "approve",
        Some(r#"{"by": "ann", "note": "fine"}"#),
    );
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(ok.body["id"], run.as_str());
    assert!(
        ["queued", "running", "waiting"].contains(&ok.body["status"].as_str().unwrap()),
        "{ok:?}"
    );
    let deadline = Instant::now() + T;
    let r = loop {
        let r = get_run(&srv, &run);
        if r["status"] == "waiting" && step(&r, "approve")["status"] == "succeeded" {
            break r;
        }
        assert!(Instant::now() < deadline, "never parked on the event: {r}");
        std::thread::sleep(Duration::from_millis(25));
    };
    let approved = &step(&r, "approve")["output"];
    assert_eq!(approved["approved"], true, "{r}");
    assert_eq!(approved["by"], "ann", "{r}");
    assert_eq!(approved["note"], "fine", "{r}");
    assert!(approved["decided_at"].is_string(), "{r}");
    assert_eq!(step(&r, "hear")["status"], "waiting", "{r}");
    assert_eq!(
        step(&r, "hear")["output"]["waiting_for"],
        json!(["hear", "order.paid"])
    );

    // Single-use: the same name again is a conflict while the run is still unfinished.
    let again = signal(&srv, &run, "approve", Some(r#"{"by": "bob"}"#));
    assert_problem(&again, 409, "conflict");
    // Unknown run, and a run of another workspace: 404 in the same words.
    let unknown = weft_types::RunId::new().to_string();
    let missing = signal(&srv, &unknown, "approve", None);
    assert_problem(&missing, 404, "not_found");
    let out = std::process::Command::new(common::weft_bin())
        .args(["admin", "tenant", "create", "--name", "acme"])
        .args(["--owner-email", "ops@acme.example", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acme: Value = serde_json::from_slice(&out.stdout).unwrap();
    let elsewhere = call_as(
        &srv,
        acme["api_key"].as_str().unwrap(),
        "POST",
        &format!("{WS}/runs/{run}/signals/hear"),
        None,
    );
    assert_problem(&elsewhere, 404, "not_found");
    assert_eq!(elsewhere.body["detail"], missing.body["detail"]);
    // A malformed run id is named.
    let bad_id = signal(&srv, "run_nope", "approve", None);
    assert_problem(&bad_id, 400, "invalid_request");
    // The payload must be JSON.
    let not_json = call(
        &srv,
        "POST",
        &format!("{WS}/runs/{run}/signals/hear"),
        Some("{not json"),
    );
    assert_eq!(not_json.status, 400, "{not_json:?}");
    assert!(
        not_json
            .content_type
            .starts_with("application/problem+json")
    );

    // The CLI: a payload that is not JSON is refused before sending (one line, exit != 0).
    let out = srv.cli(&["runs", "signal", &run, "order.paid", "--payload", "{nope"]);
    assert_cli_error(&out, "--payload is not valid JSON");
    // The event arrives under its event name through the CLI.
    let out = srv.cli(&[
        "runs",
        "signal",
        &run,
        "order.paid",
        "--payload",
        r#"{"order": 7}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("signal 'order.paid' delivered") && text.contains(&run),
        "{text}"
    );

    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(step(&r, "hear")["output"], json!({"order": 7}), "{r}");
    assert_eq!(r["output"]["event"], json!({"order": 7}), "{r}");
    assert_eq!(r["output"]["approval"]["by"], "ann", "{r}");
    // Only the first approval counted.
    assert_eq!(step(&r, "approve")["output"]["by"], "ann", "{r}");

    // A finished run takes no signal, even under a name never used; the CLI says so in one
    // line and exits non-zero.
    let late = signal(&srv, &run, "approve2", Some("{}"));
    assert_problem(&late, 409, "conflict");
    let out = srv.cli(&["runs", "signal", &run, "hear"]);
    assert_cli_error(&out, "409");

    // Logs tell the story.
    let logs = String::from_utf8_lossy(&srv.cli(&["runs", "logs", &run]).stdout).to_string();
    assert!(logs.contains("waiting for signal 'approve'"), "{logs}");
    assert!(logs.contains("approved by signal 'approve'"), "{logs}");
    assert!(logs.contains("resumed by signal 'order.paid'"), "{logs}");
}

#[test]
fn a_malformed_signal_name_is_a_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply("name: ask\ntrigger:\n  manual: {}\nsteps:\n  - id: approve\n    approval: {}\n");
    let run = start(&srv, "ask", json!({}));
    wait_status(&srv, &run, "waiting", T);
    // docs/api.md: a wrong field, query parameter or id is `400 invalid_request`.
    let bad = signal(&srv, &run, "a%20b", None);
    assert_problem(&bad, 400, "invalid_request");
    assert_eq!(bad.body["errors"][0]["path"], "name", "{bad:?}");
    let long = "x".repeat(101);
    let bad = signal(&srv, &run, &long, None);
    assert_problem(&bad, 400, "invalid_request");
    // Nothing was stored: the run still waits and takes the right signal.
    assert_eq!(get_run(&srv, &run)["status"], "waiting");
    assert_eq!(signal(&srv, &run, "approve", None).status, 202);
    assert_eq!(srv.wait_run(&run, T)["status"], "succeeded");
}

#[test]
fn a_rejection_fails_the_step_and_its_on_error_handler_lets_the_run_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        r#"name: gate
trigger:
  manual: {}
steps:
  - id: approve
    approval: {message: ship it?}
    on_error: [notify]
  - id: ship
    transform: '"shipped"'
  - id: notify
    transform: '"handled: " + .steps.approve.error'
"#,
    );
    let run = start(&srv, "gate", json!({}));
    wait_status(&srv, &run, "waiting", T);
    let r = signal(
        &srv,
        &run,
        "approve",
        Some(r#"{"approved": false, "reason": "too big"}"#),
    );
    assert_eq!(r.status, 202, "{r:?}");

    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "a handled failure: {r}");
    let approve = step(&r, "approve");
    assert_eq!(approve["status"], "failed", "{r}");
    assert_eq!(approve["error"], "rejected: too big", "{r}");
    assert_eq!(step(&r, "ship")["status"], "skipped", "{r}");
    let notify = step(&r, "notify");
    assert_eq!(notify["status"], "succeeded", "{r}");
    assert_eq!(notify["output"], "handled: rejected: too big", "{r}");

    // Without a handler, a rejection (here through the CLI) fails the run.
    srv.apply(
        "name: strict\ntrigger:\n  manual: {}\nsteps:\n  - id: approve\n    approval: {}\n  - id: ship\n    transform: '1'\n",
    );
    let run = start(&srv, "strict", json!({}));
    wait_status(&srv, &run, "waiting", T);
    let v = srv.cli_json(&[
        "runs",
        "signal",
        &run,
        "approve",
        "--payload",
        r#"{"decision": "reject", "reason": "no"}"#,
    ]);
    assert_eq!(v["id"], run.as_str());
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("rejected: no"), "{r}");
    // `ship` never started: it is skipped or not listed at all.
    let ship = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "ship");
    assert!(ship.is_none_or(|s| s["status"] == "skipped"), "{r}");
}

#[test]
fn a_durable_wait_survives_kill_9_and_fires_once_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let mut srv = Server::start(dir.path(), None, &[], &[]);
    let key = srv.key.clone();
    srv.apply(&format!(
        r#"name: nap
trigger:
  manual: {{}}
steps:
  - id: pause
    wait: 3s
  - id: ping
    action: http.request
    input: {{ method: POST, url: '{}/ping', body: '{{{{ .steps.pause.output }}}}' }}
"#,
        sink.url
    ));
    let run = start(&srv, "nap", json!({}));
    let r = wait_status(&srv, &run, "waiting", T);
    let pause = step(&r, "pause");
    assert_eq!(pause["status"], "waiting", "{r}");
    let until = pause["output"]["until"].as_str().unwrap().to_string();
    let until_ms = weft_types::parse_rfc3339(&until).unwrap();
    assert_eq!(pause["output"]["until_ms"], until_ms);
    let started_at = pause["started_at"].clone();
    let began = weft_types::parse_rfc3339(started_at.as_str().unwrap()).unwrap();
    assert_eq!(until_ms - began, 3000, "{r}");

    srv.kill9();
    assert_eq!(sink.count(), 0);
    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    if now_ms() < until_ms - 300 {
        // Still before its time: still parked, nothing sent.
        let r = get_run(&srv, &run);
        assert_eq!(r["status"], "waiting", "{r}");
        assert_eq!(sink.count(), 0);
    }
    let r = srv.wait_run(&run, T);
    assert!(now_ms() >= until_ms);
    assert_eq!(r["status"], "succeeded", "{r}");
    // The deadline set before the crash is the one that fired.
    let pause = step(&r, "pause");
    assert_eq!(pause["output"], json!({"waited_until": until}), "{r}");
    assert_eq!(pause["started_at"], started_at, "{r}");
    let finished = weft_types::parse_rfc3339(pause["finished_at"].as_str().unwrap()).unwrap();
    assert!(finished >= until_ms, "{r}");
    let got = sink.all();
    assert_eq!(got.len(), 1, "the timer fired once: {got:?}");
    assert_eq!(got[0].path, "/ping");
    assert_eq!(got[0].body, json!({"waited_until": until}));
    assert_eq!(
        got[0].idempotency_key.as_deref(),
        Some(format!("{run}:ping:0").as_str())
    );
    // Nothing else fires later.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.count(), 1);
}

#[test]
fn a_for_each_killed_between_items_resumes_without_resending_finished_items() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let mut srv = Server::start(
        dir.path(),
        None,
        &[("WEFT_FAILPOINTS", "for_each.item_done:loop[19]")],
        &[],
    );
    let key = srv.key.clone();
    srv.apply(&format!(
        r#"name: fan
trigger:
  manual: {{}}
steps:
  - id: loop
    for_each: .trigger.body.items
    concurrency: 1
    steps:
      - id: send
        action: http.request
        input:
          method: POST
          url: '{}/item'
          body: {{ item: '{{{{ .item }}}}', index: '{{{{ .index }}}}' }}
      - id: status
        transform: '.steps.send.output.status'
  - id: count
    transform: '[.steps.loop.output[] | select(. == 200)] | length'
"#,
        sink.url
    ));
    let items: Vec<String> = (0..N).map(|i| format!("it-{i}")).collect();
    let run = start(&srv, "fan", json!({ "items": items }));
    assert!(
        srv.wait_exit(Duration::from_secs(20)),
        "the failpoint after item 19 aborts the process"
    );
    assert_eq!(sink.count(), 20, "items 0..=19 were sent before the crash");

    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["output"], N);

    // Each item's request went out exactly once, with its own key.
    let mut per_item: HashMap<String, Vec<Option<String>>> = HashMap::new();
    for got in sink.all() {
        assert_eq!(got.path, "/item");
        let item = got.body["item"].as_str().unwrap().to_string();
        let index = got.body["index"].as_u64().unwrap() as usize;
        assert_eq!(item, format!("it-{index}"));
        per_item.entry(item).or_default().push(got.idempotency_key);
    }
    assert_eq!(per_item.len(), N);
    for (i, name) in items.iter().enumerate() {
        let keys = &per_item[name];
        assert_eq!(keys.len(), 1, "{name} was sent {} times", keys.len());
        assert_eq!(
            keys[0].as_deref(),
            Some(format!("{run}:send:{i}").as_str()),
            "{name}"
        );
    }

    // The run shows the loop with its progress; item checkpoints are folded away.
    let ids: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["loop", "count"], "{r}");
    let lp = step(&r, "loop");
    assert_eq!(lp["status"], "succeeded");
    assert_eq!(
        lp["progress"],
        json!({"total": N, "done": N, "failed": 0}),
        "{r}"
    );
    let out = lp["output"].as_array().unwrap();
    assert_eq!(out.len(), N);
    assert!(out.iter().all(|v| v == 200), "{r}");
    assert!(step(&r, "count").get("progress").is_none());
    // The same through the CLI.
    let shown = srv.cli_json(&["runs", "show", &run]);
    assert_eq!(shown["steps"][0]["progress"], lp["progress"]);
}

#[test]
fn a_failed_run_retries_in_place_and_replays_as_a_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior {
        statuses: vec![400],
        ..Default::default()
    });
    let srv = Server::start(dir.path(), None, &[], &[]);
    let flow = |tag: &str| {
        format!(
            r#"name: fragile
trigger:
  manual: {{}}
steps:
  - id: first
    transform: '{{n: .trigger.body.n, tag: "{tag}"}}'
  - id: call
    action: http.request
    input: {{ method: POST, url: '{}/x', body: '{{{{ .steps.first.output }}}}' }}
"#,
            sink.url
        )
    };
    srv.apply(&flow("v1"));
    let run = start(&srv, "fragile", json!({"n": 5}));
    let failed = srv.wait_run(&run, T);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(step(&failed, "first")["status"], "succeeded");
    assert_eq!(step(&failed, "call")["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("400"),
        "{failed}"
    );
    let first_before = step(&failed, "first").clone();

    // Retry in place through the CLI.
    let out = srv.cli(&["runs", "retry", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&run) && text.contains("again"), "{text}");
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["error"].is_null(), "{r}");
    let first_after = step(&r, "first");
    assert_eq!(first_after["finished_at"], first_before["finished_at"]);
    assert_eq!(first_after["started_at"], first_before["started_at"]);
    assert_eq!(first_after["output"], json!({"n": 5, "tag": "v1"}));
    assert_eq!(step(&r, "call")["status"], "succeeded");
    assert_eq!(step(&r, "call")["output"]["status"], 200);
    let got = sink.all();
    assert_eq!(got.len(), 2, "{got:?}");
    let key = format!("{run}:call:0");
    assert!(
        got.iter()
            .all(|g| g.idempotency_key.as_deref() == Some(key.as_str())),
        "the retried step keeps its key: {got:?}"
    );

    // Only a failed run retries: a succeeded one is a conflict, over HTTP and the CLI.
    let again = call(&srv, "POST", &format!("{WS}/runs/{run}/retry"), None);
    assert_problem(&again, 409, "conflict");
    let out = srv.cli(&["runs", "retry", &run]);
    assert_cli_error(&out, "409");
    let missing = call(
        &srv,
        "POST",
        &format!("{WS}/runs/{}/retry", weft_types::RunId::new()),
        None,
    );
    assert_problem(&missing, 404, "not_found");
    assert_eq!(sink.count(), 2, "refused retries sent nothing");

    // Replay on the pinned version through the CLI: a new run, same trigger, new keys.
    srv.apply(&flow("v2"));
    let out = srv.cli(&["runs", "replay", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let replayed = text
        .trim()
        .strip_prefix("replayed as run ")
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    assert_ne!(replayed, run);
    let orig = get_run(&srv, &run);
    let p = srv.wait_run(&replayed, T);
    assert_eq!(p["status"], "succeeded", "{p}");
    assert_eq!(p["trigger"], orig["trigger"]);
    assert_eq!(p["flow_version"], 1);
    assert_eq!(step(&p, "first")["output"], json!({"n": 5, "tag": "v1"}));
    let got = sink.all();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2].idempotency_key.as_deref(),
        Some(format!("{replayed}:call:0").as_str())
    );

    // On the latest version (CLI --latest), and over HTTP.
    let v = srv.cli_json(&["runs", "replay", &run, "--latest"]);
    assert_eq!(v["duplicate"], false);
    let latest = v["run_id"].as_str().unwrap().to_string();
    let l = srv.wait_run(&latest, T);
    assert_eq!(l["status"], "succeeded", "{l}");
    assert_eq!(l["flow_version"], 2);
    assert_eq!(step(&l, "first")["output"], json!({"n": 5, "tag": "v2"}));
    let h = call(
        &srv,
        "POST",
        &format!("{WS}/runs/{run}/replay"),
        Some(r#"{"version": "pinned"}"#),
    );
    assert_eq!(h.status, 202, "{h:?}");
    assert_eq!(h.body["duplicate"], false);
    let hr = srv.wait_run(h.body["run_id"].as_str().unwrap(), T);
    assert_eq!(hr["flow_version"], 1);
    assert_eq!(hr["trigger"], orig["trigger"]);
    let bad = call(
        &srv,
        "POST",
        &format!("{WS}/runs/{run}/replay"),
        Some(r#"{"version": "newest"}"#),
    );
    assert_problem(&bad, 400, "invalid_request");
    // A replay leaves the original alone.
    let orig2 = get_run(&srv, &run);
    assert_eq!(orig2["status"], "succeeded");
    assert_eq!(orig2["finished_at"], orig["finished_at"]);
}

#[test]
fn switch_routes_by_input_and_joins_after_the_chosen_case() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        r#"name: route
trigger:
  manual: {}
steps:
  - id: pick
    switch: .trigger.body.size
    cases:
      big: [b1, b2]
      small: s1
      default: []
  - id: b1
    transform: '"b1"'
  - id: b2
    transform: '.steps.b1.output + "b2"'
  - id: s1
    transform: '"s1"'
  - id: after
    transform: '[.steps.b2.status, .steps.s1.status]'
  - id: either
    needs: [b2, s1]
    join: any
    transform: '"either"'
  - id: both
    needs: [b2, s1]
    transform: '"both"'
"#,
    );
    let cases = [
        ("big", ["succeeded", "succeeded", "skipped"], "succeeded"),
        ("small", ["skipped", "skipped", "succeeded"], "succeeded"),
        ("other", ["skipped", "skipped", "skipped"], "skipped"),
    ];
    let runs: Vec<String> = cases
        .iter()
        .map(|(size, _, _)| start(&srv, "route", json!({ "size": size })))
        .collect();
    for ((size, want, either), run) in cases.iter().zip(&runs) {
        let r = srv.wait_run(run, T);
        assert_eq!(r["status"], "succeeded", "{size}: {r}");
        let case = if *size == "other" { "default" } else { size };
        assert_eq!(
            step(&r, "pick")["output"],
            json!({"value": size, "case": case}),
            "{size}: {r}"
        );
        for (id, st) in ["b1", "b2", "s1"].iter().zip(want) {
            assert_eq!(step(&r, id)["status"], *st, "{size} {id}: {r}");
        }
        // The step after the cases always runs (it joins them with `any`, and the switch).
        let after = step(&r, "after");
        assert_eq!(after["status"], "succeeded", "{size}: {r}");
        assert_eq!(after["output"], json!([want[1], want[2]]), "{size}: {r}");
        // `join: any` runs when one of its needs ran; the default `all` is skipped when one
        // was skipped (here always one of b2 / s1).
        assert_eq!(step(&r, "either")["status"], *either, "{size}: {r}");
        if *either == "succeeded" {
            assert_eq!(step(&r, "either")["output"], "either");
        }
        assert_eq!(step(&r, "both")["status"], "skipped", "{size}: {r}");
    }
}

#[test]
fn a_failed_loop_item_retries_in_place_from_that_item() {
    let dir = tempfile::tempdir().unwrap();
    // Items 0 and 1 pass, item 2 gets a permanent 400, everything after passes.
    let sink = Sink::start(SinkBehavior {
        statuses: vec![200, 200, 400],
        ..Default::default()
    });
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(&format!(
        r#"name: items
trigger:
  manual: {{}}
steps:
  - id: loop
    for_each: .trigger.body.items
    steps:
      - id: send
        action: http.request
        input: {{ method: POST, url: '{}/item', body: {{ item: '{{{{ .item }}}}' }} }}
"#,
        sink.url
    ));
    let run = start(&srv, "items", json!({"items": [0, 1, 2, 3, 4]}));
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "failed", "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("item 2 failed"), "{e}");
    assert_eq!(
        sink.count(),
        3,
        "a concurrency-1 loop stops at its failed item"
    );
    let lp = step(&r, "loop");
    assert_eq!(lp["status"], "failed", "{r}");
    assert_eq!(lp["progress"]["done"], 3, "{r}");
    assert_eq!(lp["progress"]["failed"], 1, "{r}");

    let v = srv.cli_json(&["runs", "retry", &run]);
    assert_eq!(v["id"], run.as_str());
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    let lp = step(&r, "loop");
    assert_eq!(lp["progress"], json!({"total": 5, "done": 5, "failed": 0}));
    assert_eq!(lp["output"].as_array().unwrap().len(), 5);
    // Items that succeeded are not sent again; the failed one keeps its key.
    let got = sink.all();
    let items: Vec<i64> = got
        .iter()
        .map(|g| g.body["item"].as_i64().unwrap())
        .collect();
    assert_eq!(items, [0, 1, 2, 2, 3, 4], "{got:?}");
    assert_eq!(got[2].idempotency_key, got[3].idempotency_key);
    assert_eq!(
        got[3].idempotency_key.as_deref(),
        Some(format!("{run}:send:2").as_str())
    );
}

#[test]
fn loop_and_flow_concurrency_cap_what_runs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let slow = || {
        Sink::start(SinkBehavior {
            delay: Duration::from_millis(150),
            ..Default::default()
        })
    };
    let (looped, flat) = (slow(), slow());
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(&format!(
        r#"name: wide
trigger:
  manual: {{}}
steps:
  - id: loop
    for_each: .trigger.body.items
    concurrency: 3
    collect: false
    steps:
      - id: send
        action: http.request
        input: {{ method: POST, url: '{}/item', body: {{ item: '{{{{ .item }}}}' }} }}
"#,
        looped.url
    ));
    let mut parallel =
        String::from("name: capped\ntrigger:\n  manual: {}\nconcurrency: 2\nsteps:\n");
    for i in 0..5 {
        parallel.push_str(&format!(
            "  - id: s{i}\n    needs: []\n    action: http.request\n    input: {{ method: POST, url: '{}/s{i}' }}\n",
            flat.url
        ));
    }
    srv.apply(&parallel);

    let run = start(&srv, "wide", json!({"items": (0..12).collect::<Vec<_>>()}));
    // While items run, the loop shows its size and what is done so far.
    let deadline = Instant::now() + T;
    loop {
        let r = get_run(&srv, &run);
        let lp = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "loop");
        if let Some(lp) = lp
            && lp["status"] == "running"
        {
            assert_eq!(lp["progress"]["total"], 12, "{r}");
            assert!(lp["progress"]["done"].as_i64().unwrap() < 12, "{r}");
            break;
        }
        assert_ne!(r["status"], "succeeded", "never saw the loop running: {r}");
        assert!(Instant::now() < deadline, "{r}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    let lp = step(&r, "loop");
    assert_eq!(
        lp["output"],
        json!({"total": 12, "succeeded": 12, "failed": 0})
    );
    assert_eq!(
        lp["progress"],
        json!({"total": 12, "done": 12, "failed": 0})
    );
    assert_eq!(looped.count(), 12);
    let peak = looped.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&peak), "loop concurrency 3, peak {peak}");

    let run = start(&srv, "capped", json!({}));
    assert_eq!(srv.wait_run(&run, T)["status"], "succeeded");
    assert_eq!(flat.count(), 5);
    let peak = flat.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "flow concurrency 2, peak {peak}");
}

#[test]
fn a_for_each_with_items_in_flight_at_kill_9_resends_only_those_with_their_keys() {
    const N: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior {
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    let mut srv = Server::start(
        dir.path(),
        None,
        &[("WEFT_FAILPOINTS", "for_each.item_done:loop[9]")],
        &[],
    );
    let key = srv.key.clone();
    srv.apply(&format!(
        r#"name: fan4
trigger:
  manual: {{}}
steps:
  - id: loop
    for_each: .trigger.body.items
    concurrency: 4
    steps:
      - id: send
        action: http.request
        input: {{ method: POST, url: '{}/item', body: {{ index: '{{{{ .index }}}}' }} }}
"#,
        sink.url
    ));
    let run = start(&srv, "fan4", json!({"items": vec![0; N]}));
    assert!(srv.wait_exit(Duration::from_secs(20)));
    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(
        step(&r, "loop")["progress"],
        json!({"total": N, "done": N, "failed": 0})
    );
    let mut per: HashMap<usize, Vec<Option<String>>> = HashMap::new();
    for g in sink.all() {
        per.entry(g.body["index"].as_u64().unwrap() as usize)
            .or_default()
            .push(g.idempotency_key);
    }
    assert_eq!(per.len(), N);
    let mut resent = 0;
    for (i, keys) in &per {
        assert!(keys.len() <= 2, "item {i} sent {} times", keys.len());
        resent += keys.len() - 1;
        let want = format!("{run}:send:{i}");
        assert!(
            keys.iter().all(|k| k.as_deref() == Some(want.as_str())),
            "item {i}: {keys:?}"
        );
    }
    assert_eq!(per[&9].len(), 1, "the checkpointed item is not re-sent");
    assert!(resent <= 3, "only items in flight at the crash: {resent}");
}

#[test]
fn an_early_signal_is_kept_an_event_times_out_to_its_handler_and_cancel_stops_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(&format!(
        r#"name: later
trigger:
  manual: {{}}
steps:
  - id: pause
    wait: 1s
  - id: hear
    wait_for_event: {{event: paid, timeout: 1s, on_timeout: [expire]}}
  - id: ship
    action: http.request
    input: {{ method: POST, url: '{0}/ship', body: '{{{{ .steps.hear.output }}}}' }}
  - id: expire
    action: http.request
    input: {{ method: POST, url: '{0}/expire', body: {{ why: '{{{{ .steps.hear.error }}}}' }} }}
"#,
        sink.url
    ));
    let early = start(&srv, "later", json!({}));
    let lapsed = start(&srv, "later", json!({}));
    let cancelled = start(&srv, "later", json!({}));
    for r in [&early, &lapsed, &cancelled] {
        let w = wait_status(&srv, r, "waiting", T);
        assert_eq!(step(&w, "pause")["status"], "waiting", "{w}");
    }
    // Sent while the run still waits on its timer: kept for the step that takes it.
    let s = signal(&srv, &early, "paid", Some(r#"{"order": 7}"#));
    assert_eq!(s.status, 202, "{s:?}");
    let c = srv.cli_json(&["runs", "cancel", &cancelled]);
    assert_eq!(c["status"], "cancelled", "{c}");
    let late = signal(&srv, &cancelled, "paid", None);
    assert_problem(&late, 409, "conflict");

    let r = srv.wait_run(&early, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(step(&r, "hear")["output"], json!({"order": 7}));
    assert_eq!(step(&r, "expire")["status"], "skipped", "{r}");
    let r = srv.wait_run(&lapsed, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    let hear = step(&r, "hear");
    assert_eq!(hear["status"], "failed", "{r}");
    assert_eq!(hear["output"], json!({"timed_out": true}), "{r}");
    assert!(
        hear["error"]
            .as_str()
            .unwrap()
            .contains("no signal 'hear' arrived"),
        "{r}"
    );
    assert_eq!(step(&r, "ship")["status"], "skipped", "{r}");
    assert_eq!(step(&r, "expire")["status"], "succeeded", "{r}");
    // A signal after the timeout finds the run finished.
    assert_problem(&signal(&srv, &lapsed, "paid", None), 409, "conflict");

    // The cancelled run's timer never fires: nothing of it is sent.
    std::thread::sleep(Duration::from_millis(500));
    let r = get_run(&srv, &cancelled);
    assert_eq!(r["status"], "cancelled", "{r}");
    let got = sink.all();
    let paths: Vec<&str> = got.iter().map(|g| g.path.as_str()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths.contains(&"/ship") && paths.contains(&"/expire"),
        "{paths:?}"
    );
    let keys: Vec<String> = got
        .iter()
        .filter_map(|g| g.idempotency_key.clone())
        .collect();
    assert!(keys.iter().all(|k| !k.starts_with(&cancelled)), "{keys:?}");
}

#[test]
fn a_run_timeout_bounds_its_waits() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(&format!(
        r#"name: bounded
trigger:
  manual: {{}}
timeout: 1s
steps:
  - id: pause
    wait: 3s
  - id: ping
    action: http.request
    input: {{ method: POST, url: '{}/ping' }}
"#,
        sink.url
    ));
    srv.apply(
        "name: unanswered\ntrigger:\n  manual: {}\ntimeout: 1s\nsteps:\n  - id: approve\n    approval: {}\n  - id: after\n    transform: '1'\n",
    );
    let began = Instant::now();
    let wait = start(&srv, "bounded", json!({}));
    let ask = start(&srv, "unanswered", json!({}));
    // Both must end by their 1s run timeout (with slack), not when (or if) the wait ends.
    let within = Duration::from_millis(2500);
    for run in [&wait, &ask] {
        let left = within.saturating_sub(began.elapsed());
        let deadline = Instant::now() + left;
        let r = loop {
            let r = get_run(&srv, run);
            if matches!(
                r["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "run {run} is still {} {:?} after its 1s timeout: {r}",
                r["status"],
                began.elapsed()
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        assert_eq!(r["status"], "failed", "{r}");
        assert!(r["error"].as_str().unwrap().contains("exceeded its"), "{r}");
    }
    // Nothing after the deadline ran.
    std::thread::sleep(Duration::from_millis(
        2500u64.saturating_sub(began.elapsed().as_millis() as u64) + 1000,
    ));
    assert_eq!(sink.count(), 0, "a timed-out run sent a request");
    let r = get_run(&srv, &wait);
    assert_eq!(r["status"], "failed", "{r}");
    let ping = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "ping");
    assert!(ping.is_none(), "a step ran after the run timed out: {r}");
}

#[test]
fn a_failed_loop_still_shows_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: bad\ntrigger:\n  manual: {}\nsteps:\n  - id: loop\n    for_each: .trigger.body.items\n    steps:\n      - id: check\n        if: '.item == 2'\n        fail: 'item {{ .item }} is bad'\n",
    );
    let run = start(&srv, "bad", json!({"items": [0, 1, 2, 3, 4]}));
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(
        step(&r, "loop")["progress"],
        json!({"total": 5, "done": 3, "failed": 1}),
        "{r}"
    );
}
