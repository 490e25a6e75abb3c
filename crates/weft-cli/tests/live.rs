//! The live view of a run through the real binary: `GET …/runs/{run}/events` as Server-Sent
//! Events while the run waits and finishes, and a reconnect with `Last-Event-ID` that gets
//! every log line after the last one seen and no earlier one.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

/// One SSE event: (event name, id, data).
type Ev = (String, Option<String>, String);

fn parse_sse(text: &str) -> Vec<Ev> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut event, mut id, mut data) = (String::from("message"), None, Vec::new());
        let mut any = false;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
                any = true;
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
                any = true;
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                any = true;
            }
        }
        if any {
            out.push((event, id, data.join("\n")));
        }
    }
    out
}

/// GETs the stream to its end; (status, content type, events).
fn read_stream(srv: &Server, path: &str, last_id: Option<&str>) -> (u16, String, Vec<Ev>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .get(format!("{}{path}", srv.url))
            .bearer_auth(&srv.key)
            .timeout(Duration::from_secs(60));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        (st, ct, parse_sse(&text))
    })
}

fn wait_status(srv: &Server, run: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = srv.cli_json(&["runs", "show", run]);
        if r["status"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} never became {want}: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_run_streams_live_and_a_reconnect_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: live\ntrigger:\n  manual: {}\nsteps:\n  - id: first\n    code: 'console.log(\"one\"); console.log(\"two\"); return 1'\n  - id: ok\n    approval: {message: 'go?'}\n  - id: last\n    code: 'console.log(\"three\"); return 3'\n",
    );
    let run = srv.cli_json(&["run", "start", "live"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&srv, &run, "waiting");
    let path = format!("/api/v1/workspaces/default/runs/{run}/events");

    // Follow while it waits; the approval arrives while the stream is open.
    let signal = {
        let url = srv.url.clone();
        let key = srv.key.clone();
        let run = run.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                reqwest::Client::new()
                    .post(format!(
                        "{url}/api/v1/workspaces/default/runs/{run}/signals/ok"
                    ))
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"approved": true}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
    };
    let (st, ct, events) = read_stream(&srv, &path, None);
    assert_eq!(signal.join().unwrap(), 202);
    assert_eq!(st, 200);
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names.last(), Some(&"end"), "{events:?}");
    let end: Value = serde_json::from_str(&events.last().unwrap().2).unwrap();
    assert_eq!(end["status"], "succeeded");
    // The run's status went by: waiting first, succeeded last.
    let statuses: Vec<String> = events
        .iter()
        .filter(|e| e.0 == "run")
        .map(|e| {
            serde_json::from_str::<Value>(&e.2).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("waiting"),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{statuses:?}"
    );
    // Steps as snapshots: `ok` went from waiting to succeeded.
    let ok: Vec<String> = events
        .iter()
        .filter(|e| e.0 == "step")
        .map(|e| serde_json::from_str::<Value>(&e.2).unwrap())
        .filter(|s| s["id"] == "ok")
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ok, ["waiting", "succeeded"]);
    // Every log line, in order, with its seq as the event id; the console lines among them.
    let logs: Vec<(i64, Value)> = events
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| {
            let v: Value = serde_json::from_str(&e.2).unwrap();
            let id: i64 = e.1.as_deref().unwrap().parse().unwrap();
            assert_eq!(v["seq"], id);
            (id, v)
        })
        .collect();
    assert!(logs.windows(2).all(|w| w[0].0 < w[1].0), "{logs:?}");
    let (_, all) = srv.api_get(&format!("/api/v1/workspaces/default/runs/{run}/logs"));
    assert_eq!(
        logs.len(),
        all["items"].as_array().unwrap().len(),
        "every line came"
    );
    let text: Vec<&str> = logs
        .iter()
        .map(|(_, v)| v["message"].as_str().unwrap())
        .collect();
    for want in ["one", "two", "three"] {
        assert!(text.iter().any(|m| m.contains(want)), "{text:?}");
    }

    // A client that saw up to the second line reconnects: it gets the lines after it (and the
    // snapshots), none before.
    let mid = logs[1].0.to_string();
    let (st, _, again) = read_stream(&srv, &path, Some(&mid));
    assert_eq!(st, 200);
    let again_ids: Vec<i64> = again
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| e.1.as_deref().unwrap().parse().unwrap())
        .collect();
    let want: Vec<i64> = logs
        .iter()
        .map(|l| l.0)
        .filter(|&s| s > logs[1].0)
        .collect();
    assert_eq!(again_ids, want);
    assert_eq!(again.last().unwrap().0, "end");
    // `?after=` does the same for clients that cannot set headers.
    let by_query = read_stream(&srv, &format!("{path}?after={mid}"), None).2;
    assert_eq!(by_query.iter().filter(|e| e.0 == "log").count(), want.len());

    // Bad input: a problem, no stream.
    let (st, ct, _) = read_stream(&srv, &path, Some("not-a-number"));
    assert_eq!(st, 400);
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    let (st, _, _) = read_stream(
        &srv,
        "/api/v1/workspaces/default/runs/run_01a23a8c9f7a75b38d231ce85b769f9a/events",
        None,
    );
    assert_eq!(st, 404);
    let (st, _, _) = read_stream(&srv, &format!("{path}?after=-4"), None);
    assert_eq!(st, 400);
}

#[test]
fn log_search_finds_lines_across_runs_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: pay\ntrigger:\n  manual: {}\nsteps:\n  - id: charge\n    code: 'console.log(\"charging order \" + trigger.body.order); return 1'\n  - id: check\n    if: '.trigger.body.order == \"B\"'\n    fail: 'card declined for order {{ .trigger.body.order }}'\n",
    );
    srv.apply(
        "name: other\ntrigger:\n  manual: {}\nsteps:\n  - id: hello\n    code: 'console.log(\"nothing to do with ORDERS\"); return 1'\n",
    );
    let mut runs = Vec::new();
    for (flow, input) in [
        ("pay", r#"{"order": "A"}"#),
        ("pay", r#"{"order": "B"}"#),
        ("other", "{}"),
    ] {
        let id = srv.cli_json(&["run", "start", flow, "--input", input])["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            srv.cli_json(&["runs", "show", &id])["status"].as_str(),
            Some("succeeded" | "failed")
        ) {
            assert!(Instant::now() < deadline, "run {id} did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        runs.push(id);
    }
    let search = |query: &str| {
        let (st, v) = srv.api_get(&format!("/api/v1/workspaces/default/logs?{query}"));
        assert_eq!(st, 200, "{query}: {v}");
        v["items"].as_array().unwrap().clone()
    };
    // Text, case-insensitive, across flows; newest first.
    let hits = search("q=order");
    let flows: Vec<&str> = hits.iter().map(|h| h["flow"].as_str().unwrap()).collect();
    assert!(
        flows.contains(&"pay") && flows.contains(&"other"),
        "{hits:?}"
    );
    assert!(
        hits.windows(2)
            .all(|w| w[0]["seq"].as_i64() > w[1]["seq"].as_i64())
    );
    // Filters: flow, run, step, level, status.
    assert!(
        search("q=order&flow=pay")
            .iter()
            .all(|h| h["flow"] == "pay")
    );
    let b = search(&format!("run={}", runs[1]));
    assert!(!b.is_empty() && b.iter().all(|h| h["run_id"] == runs[1].as_str()));
    let errors = search("level=error&flow=pay");
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|h| h["run_id"] == runs[1].as_str()),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|h| h["message"].as_str().unwrap().contains("card declined"))
    );
    let charge = search("step=charge");
    assert_eq!(
        charge
            .iter()
            .filter(|h| h["message"].as_str().unwrap().contains("charging order"))
            .count(),
        2
    );
    assert!(
        search("status=failed")
            .iter()
            .all(|h| h["run_id"] == runs[1].as_str())
    );
    assert!(search("flow=no-such-flow").is_empty());
    // Pages.
    let (_, p1) = srv.api_get("/api/v1/workspaces/default/logs?limit=2");
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = srv.api_get(&format!(
        "/api/v1/workspaces/default/logs?limit=2&cursor={cursor}"
    ));
    assert!(p2["items"][0]["seq"].as_i64() < p1["items"][1]["seq"].as_i64());
    // Bad input: a problem naming the field.
    for (query, field) in [
        ("level=loud", "level"),
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("cursor=abc", "cursor"),
        ("run=nope", "run"),
        ("status=sleeping", "status"),
    ] {
        let (st, v) = srv.api_get(&format!("/api/v1/workspaces/default/logs?{query}"));
        assert!(st == 400 || st == 422, "{query}: {st} {v}");
        assert_eq!(v["errors"][0]["path"], field, "{query}: {v}");
    }
    let (st, _) = srv.api_get("/api/v1/workspaces/default/logs?nope=1");
    assert_eq!(st, 400);
    // The CLI prints the same lines.
    let out = srv.cli(&["logs", "search", "declined", "--flow", "pay"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("card declined for order B"), "{text}");
    assert!(text.contains(&runs[1]), "{text}");
    let bad = srv.cli(&["logs", "search", "--level", "loud"]);
    assert!(!bad.status.success());
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).trim().lines().count(),
        1
    );

    // The failure is an error group: flow, step, class, count, sample run, today's trend.
    let (st, groups) = srv.api_get("/api/v1/workspaces/default/errors");
    assert_eq!(st, 200, "{groups}");
    let items = groups["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{groups}");
    let g = &items[0];
    assert_eq!(
        (g["flow"].as_str(), g["step"].as_str(), g["count"].as_i64()),
        (Some("pay"), Some("check"), Some(1))
    );
    assert_eq!(g["sample_run"], runs[1].as_str());
    assert_eq!(g["message"], "card declined for order B");
    assert_eq!(g["trend"].as_array().unwrap().len(), 1);
    assert_eq!(g["trend"][0]["count"], 1);
    let (_, none) = srv.api_get("/api/v1/workspaces/default/errors?flow=other");
    assert!(none["items"].as_array().unwrap().is_empty());
    for (query, field) in [
        ("days=0", "days"),
        ("limit=500", "limit"),
        ("since=soon", "since"),
        ("cursor=zzz", "cursor"),
    ] {
        let (st, v) = srv.api_get(&format!("/api/v1/workspaces/default/errors?{query}"));
        assert!(st == 400 || st == 422, "{query}: {st} {v}");
        assert_eq!(v["errors"][0]["path"], field, "{query}: {v}");
    }
    // Retention: set, read back, bad values refused.
    let put = |body: &str| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::Client::new()
                .put(format!("{}/api/v1/workspaces/default/retention", srv.url))
                .bearer_auth(&srv.key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    assert_eq!(
        srv.api_get("/api/v1/workspaces/default/retention").1["days"],
        Value::Null
    );
    assert_eq!(
        put(r#"{"days": 30}"#),
        (200, serde_json::json!({"days": 30}))
    );
    assert_eq!(
        srv.api_get("/api/v1/workspaces/default/retention").1["days"],
        30
    );
    for bad in [
        r#"{"days": 0}"#,
        r#"{"days": 4000}"#,
        r#"{"days": "x"}"#,
        r#"{"days": 1, "x": 1}"#,
    ] {
        let (st, v) = put(bad);
        assert!(st == 400 || st == 422, "{bad}: {st} {v}");
    }
    assert_eq!(
        srv.api_get("/api/v1/workspaces/default/retention").1["days"],
        30
    );
    assert_eq!(put(r#"{"days": null}"#).0, 200);

    // The operator's view of the queue, read from the store directly.
    let out = std::process::Command::new(common::weft_bin())
        .args(["admin", "queue", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["runs_by_status"]["failed"], 1, "{q}");
    assert_eq!(q["runs_by_status"]["succeeded"], 2, "{q}");
    assert_eq!(
        q["stuck"],
        serde_json::json!([]),
        "finished runs are not stuck"
    );
    let out = srv.cli(&["errors", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pay/check") && text.contains(&runs[1]),
        "{text}"
    );
}

/// Reads a stream that does not end until `done` says the events so far are enough.
fn read_until(
    srv: &Server,
    path: &str,
    last_id: Option<&str>,
    done: impl Fn(&[Ev]) -> bool,
) -> Vec<Ev> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .get(format!("{}{path}", srv.url))
            .bearer_auth(&srv.key);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let mut r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut text = String::new();
        loop {
            let events = parse_sse(&text);
            if done(&events) {
                return events;
            }
            let chunk = tokio::time::timeout_at(deadline, r.chunk())
                .await
                .unwrap_or_else(|_| panic!("the feed did not deliver in time: {text}"))
                .unwrap();
            let Some(c) = chunk else {
                panic!("the feed ended: {text}")
            };
            text.push_str(&String::from_utf8_lossy(&c));
        }
    })
}

#[test]
fn the_workspace_feed_streams_every_runs_lines_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: chatty\ntrigger:\n  manual: {}\nsteps:\n  - id: talk\n    code: 'console.log(\"hello \" + trigger.body.n); return 1'\n",
    );
    let path = "/api/v1/workspaces/default/runs/feed?after=0";
    let runs: Vec<String> = (0..2)
        .map(|n| {
            srv.cli_json(&[
                "run",
                "start",
                "chatty",
                "--input",
                &format!("{{\"n\": {n}}}"),
            ])["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let finished = |evs: &[Ev], run: &str| {
        evs.iter().any(|e| {
            e.0 == "run" && {
                let v: Value = serde_json::from_str(&e.2).unwrap();
                v["id"] == run && v["status"] == "succeeded"
            }
        })
    };
    let events = read_until(&srv, path, None, |evs| {
        runs.iter().all(|r| finished(evs, r))
            && evs
                .iter()
                .filter(|e| e.0 == "log" && e.2.contains("hello"))
                .count()
                == 2
    });
    let logs: Vec<(i64, Value)> = events
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| {
            (
                e.1.as_deref().unwrap().parse().unwrap(),
                serde_json::from_str(&e.2).unwrap(),
            )
        })
        .collect();
    assert!(logs.windows(2).all(|w| w[0].0 < w[1].0), "{logs:?}");
    assert!(logs.iter().all(|(_, v)| v["flow"] == "chatty"));
    for r in &runs {
        assert!(
            logs.iter().any(|(_, v)| v["run_id"] == r.as_str()),
            "{r}: {logs:?}"
        );
    }
    // Resuming after the first line gives every later line, none before.
    let first = logs[0].0.to_string();
    let want: Vec<i64> = logs.iter().skip(1).map(|l| l.0).collect();
    let again = read_until(
        &srv,
        "/api/v1/workspaces/default/runs/feed",
        Some(&first),
        |evs| evs.iter().filter(|e| e.0 == "log").count() >= want.len(),
    );
    let got: Vec<i64> = again
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| e.1.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got[..want.len()], want[..]);
    let (st, ct, _) = read_stream(&srv, "/api/v1/workspaces/default/runs/feed?after=x", None);
    assert_eq!(st, 400);
    assert!(ct.starts_with("application/problem+json"));
}
