//! Code steps and resume links through the real binary: JavaScript in the sandbox workers
//! (output, console lines in the run's logs, runaway code stopped while other runs go on), and
//! the signed single-use links that answer an approval from an email or a chat message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

fn wait_status(srv: &Server, run: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = srv.cli_json(&["runs", "show", run]);
        if r["status"] == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} never became {want}: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {run}"))
}

/// (status, content-type, body) of a request without a key.
fn call(method: &str, url: &str, ctype: Option<&str>, body: &str) -> (u16, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let mut req = match method {
            "GET" => c.get(url),
            _ => c.post(url).body(body.to_string()),
        };
        if let Some(t) = ctype {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (st, ct, r.text().await.unwrap())
    })
}

#[test]
fn code_steps_return_json_log_to_the_run_and_runaways_stop_alone() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: js\ntrigger:\n  manual: {}\nsteps:\n  - id: total\n    code: |\n      const items = trigger.body.items;\n      console.log('adding', items.length, 'items');\n      return {sum: items.reduce((a, b) => a + b, 0), first: ctx.trigger.body.items[0]};\n  - id: after\n    transform: '.steps.total.output.sum * 10'\n",
    );
    srv.apply(
        "name: spin\ntrigger:\n  manual: {}\nsteps:\n  - id: loop\n    timeout: 1s\n    code: 'while (true) {}'\n",
    );
    let spin = srv.cli_json(&["run", "start", "spin"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = srv.cli_json(&["run", "start", "js", "--input", r#"{"items": [1, 2, 3]}"#])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = srv.wait_run(&run, Duration::from_secs(30));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["output"], json!(60));
    assert_eq!(step(&r, "total")["output"], json!({"sum": 6, "first": 1}));
    let out = srv.cli(&["runs", "logs", &run, "--json"]);
    assert!(out.status.success());
    // One JSON line per log line.
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        lines.iter().any(|l| l == "console: adding 3 items"),
        "{lines:?}"
    );

    let s = srv.wait_run(&spin, Duration::from_secs(30));
    assert_eq!(s["status"], "failed");
    let e = step(&s, "loop")["error"].as_str().unwrap().to_string();
    assert!(e.contains("time limit"), "{e}");
}

#[test]
fn a_resume_link_shows_the_question_answers_once_and_cannot_be_forged() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: refund\ntrigger:\n  manual: {}\nsteps:\n  - id: mail\n    transform: '.run.resume.approve'\n  - id: approve\n    approval:\n      message: 'Refund {{ .trigger.body.amount }} EUR to <b>Ann</b>?'\n  - id: pay\n    transform: '.steps.approve.output'\n",
    );
    let start = |amount: u32| {
        srv.cli_json(&[
            "run",
            "start",
            "refund",
            "--input",
            &json!({"amount": amount}).to_string(),
        ])["run_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let run = start(30);
    let r = wait_status(&srv, &run, "waiting");
    let link = step(&r, "mail")["output"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{}/resume/", srv.url)), "{link}");
    assert_eq!(step(&r, "approve")["output"]["resume_url"], json!(link));

    // GET shows the question (escaped) and changes nothing.
    let (st, ct, page) = call("GET", &link, None, "");
    assert_eq!(st, 200, "{page}");
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        page.contains("Refund 30 EUR to &lt;b&gt;Ann&lt;/b&gt;?"),
        "{page}"
    );
    assert!(page.contains("value=\"reject\""));
    assert_eq!(srv.cli_json(&["runs", "show", &run])["status"], "waiting");

    // A forged or altered token leads nowhere.
    let mut forged = link.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [forged.as_str(), &format!("{}/resume/nope", srv.url)] {
        let (st, ct, _) = call(
            "POST",
            bad,
            Some("application/x-www-form-urlencoded"),
            "decision=approve",
        );
        assert_eq!(st, 404, "{bad}");
        assert!(ct.starts_with("application/problem+json"));
    }

    // The form rejects with a reason; the run fails on it.
    let (st, _, page) = call(
        "POST",
        &link,
        Some("application/x-www-form-urlencoded"),
        "decision=reject&reason=too+much",
    );
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("Rejected"));
    let done = srv.wait_run(&run, Duration::from_secs(30));
    assert_eq!(done["status"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("rejected: too much"),
        "{done}"
    );
    // Used once: a second answer, or a look at the page, is a 409.
    let (st, ct, body) = call(
        "POST",
        &link,
        Some("application/x-www-form-urlencoded"),
        "decision=approve",
    );
    assert_eq!(st, 409, "{body}");
    assert!(ct.starts_with("application/problem+json"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "link_used"
    );
    assert_eq!(call("GET", &link, None, "").0, 409);

    // JSON approves; the payload reaches the step's output.
    let run = start(5);
    let r = wait_status(&srv, &run, "waiting");
    let link = step(&r, "mail")["output"].as_str().unwrap().to_string();
    let (st, ct, body) = call("POST", &link, Some("application/json"), r#"{"by": "ann"}"#);
    assert_eq!(st, 200, "{body}");
    assert!(ct.starts_with("application/json"));
    let done = srv.wait_run(&run, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["approved"], json!(true));
    assert_eq!(done["output"]["by"], json!("ann"));
    assert_eq!(done["output"]["via"], json!("resume_link"));
    // Another run's link does not open this run, and a link of a finished run is used up.
    let (st, _, _) = call("POST", &link, Some("application/json"), "{}");
    assert_eq!(st, 409);
}

#[test]
fn dead_letters_replay_in_batches_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply("name: doomed\ntrigger:\n  manual: {}\nsteps:\n  - id: boom\n    fail: 'no {{ .trigger.body.n }}'\n");
    srv.apply("name: fine\ntrigger:\n  manual: {}\nsteps:\n  - id: ok\n    transform: '1'\n");
    let mut failed = Vec::new();
    for n in 0..3 {
        let id = srv.cli_json(&[
            "run",
            "start",
            "doomed",
            "--input",
            &json!({"n": n}).to_string(),
        ])["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        failed.push(id);
    }
    let ok = srv.cli_json(&["run", "start", "fine"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    for r in failed.iter().chain([&ok]) {
        srv.wait_run(r, Duration::from_secs(30));
    }
    // The dead-letter view is the failed runs.
    let (st, dead) = srv.api_get("/api/v1/workspaces/default/runs?status=failed");
    assert_eq!(st, 200);
    assert_eq!(dead["items"].as_array().unwrap().len(), 3);

    // Batches of 2 through the API: a cursor until nothing is left.
    let post = |body: Value| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{}/api/v1/workspaces/default/runs/replay", srv.url))
                .bearer_auth(&srv.key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let (st, first) = post(json!({"flow": "doomed", "limit": 2}));
    assert_eq!(st, 202, "{first}");
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (_, second) = post(json!({"flow": "doomed", "limit": 2, "cursor": cursor}));
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    let from: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|r| r["from"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = failed.iter().map(String::as_str).collect();
    want.reverse();
    assert_eq!(from, want, "newest first, each once");
    let (st, bad) = post(json!({"limit": 0}));
    assert_eq!(st, 400, "{bad}");

    // The CLI replays all of them (now 6 failed: the replays failed too) and reports progress.
    let out = srv.cli(&["runs", "replay", "--failed", "--flow", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("replayed 6 failed runs"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("replayed 6 runs so far"));
    let bad = srv.cli(&["runs", "replay"]);
    assert!(!bad.status.success());

    // A run that cannot be replayed (its flow was deleted, and the latest version is asked
    // for) is reported with the reason; the rest of the batch is still replayed.
    srv.apply("name: gone\ntrigger:\n  manual: {}\nsteps:\n  - id: boom\n    fail: 'x'\n");
    let lost = srv.cli_json(&["run", "start", "gone"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.wait_run(&lost, Duration::from_secs(30));
    let del = srv.cli(&["flow", "delete", "gone"]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    let out = srv.cli(&["runs", "replay", "--failed", "--latest"]);
    assert!(!out.status.success(), "one run could not be replayed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "{lost} not replayed: flow 'gone' of this run was deleted"
        )),
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.contains(" -> ")).count() >= 6,
        "the doomed runs were still replayed: {text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 run(s) could not be replayed"), "{err}");
}

/// POST on the API with the key and a raw body; (status, content-type, JSON body).
fn api_post(
    srv: &Server,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", srv.url))
            .bearer_auth(&srv.key)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (st, ct, r.json().await.unwrap_or(Value::Null))
    })
}

#[test]
fn events_resume_matching_waits_and_start_listening_flows_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: shipping\ntrigger:\n  manual: {}\nsteps:\n  - id: paid\n    wait_for_event: {event: order.paid, key: '{{ .trigger.body.order }}', timeout: 30d}\n  - id: ship\n    transform: '\"ship \" + .trigger.body.order + \" for \" + (.steps.paid.output.data.amount | tostring)'\n",
    );
    srv.apply(
        "name: receipts\ntrigger:\n  event: {name: order.paid}\nsteps:\n  - id: mail\n    transform: '\"receipt \" + .trigger.event.key'\n",
    );
    srv.apply(
        "name: after-shipping\ntrigger:\n  event: {flow: shipping}\nsteps:\n  - id: note\n    transform: '.trigger.body.output'\n",
    );
    let a = srv.cli_json(&["run", "start", "shipping", "--input", r#"{"order": "A1"}"#])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = srv.cli_json(&["run", "start", "shipping", "--input", r#"{"order": "B2"}"#])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&srv, &a, "waiting");
    wait_status(&srv, &b, "waiting");

    // The CLI publishes; only A's wait matches the key, and the listening flow starts.
    let p = srv.cli_json(&[
        "events",
        "publish",
        "order.paid",
        "--event-key",
        "A1",
        "--data",
        r#"{"amount": 30}"#,
        "--id",
        "pay-A1",
    ]);
    assert_eq!(p["id"], "pay-A1");
    assert_eq!(p["resumed"], json!([a]));
    assert_eq!(p["started"].as_array().unwrap().len(), 1, "{p}");
    let receipt = srv.wait_run(p["started"][0].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(receipt["status"], "succeeded");
    let ra = srv.wait_run(&a, Duration::from_secs(30));
    assert_eq!(ra["status"], "succeeded", "{ra}");
    assert_eq!(step(&ra, "ship")["output"], "ship A1 for 30");
    // A's end started the flow that listens for shipping's ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let list = srv.cli_json(&["runs", "list", "--flow", "after-shipping"]);
        if let Some(r) = list["items"].as_array().and_then(|v| v.first()) {
            break r["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "after-shipping never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        srv.wait_run(&after, Duration::from_secs(30))["steps"][0]["output"],
        "ship A1 for 30"
    );

    // The same event id again (over HTTP, as the header): nothing more happens.
    let (st, _, again) = api_post(
        &srv,
        "/api/v1/workspaces/default/events",
        r#"{"name": "order.paid", "key": "A1", "data": {"amount": 30}}"#,
        &[("idempotency-key", "pay-A1")],
    );
    assert_eq!(st, 202, "{again}");
    assert_eq!(again["resumed"], json!([]));
    assert_eq!(again["started"], p["started"]);
    let rb = srv.cli_json(&["runs", "show", &b]);
    assert_eq!(rb["status"], "waiting");

    // Bad input: a problem naming the field, nothing published.
    for (body, want, field) in [
        (r#"{"name": "no spaces allowed"}"#, 422, "name"),
        (r#"{"name": "ok", "key": ""}"#, 422, "key"),
        (r#"{"name": "ok", "extra": 1}"#, 400, ""),
        (r#"{"key": "k"}"#, 400, ""),
        (r#"not json"#, 400, ""),
    ] {
        let (st, ct, prob) = api_post(&srv, "/api/v1/workspaces/default/events", body, &[]);
        assert_eq!(st, want, "{body}: {prob}");
        assert!(ct.starts_with("application/problem+json"), "{ct}");
        if !field.is_empty() {
            assert_eq!(prob["errors"][0]["path"], field, "{prob}");
        }
    }
    let big = format!(r#"{{"name": "ok", "data": "{}"}}"#, "x".repeat(300 * 1024));
    let (st, _, prob) = api_post(&srv, "/api/v1/workspaces/default/events", &big, &[]);
    assert_eq!(st, 422, "{prob}");
    assert_eq!(prob["errors"][0]["path"], "data", "{prob}");
    let out = srv.cli(&["events", "publish", "ok", "--data", "{nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--data"), "{err}");
}
