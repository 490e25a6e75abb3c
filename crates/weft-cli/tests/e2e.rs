//! End-to-end: the real `weft` binary, a real SQLite file, real HTTP servers on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, Sink, SinkBehavior, post_hook};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn order_flow(sink: &str, retry: &str) -> String {
    format!(
        r#"name: orders
trigger:
  webhook: {{}}
steps:
  - id: shape
    transform: '{{id: .trigger.body.id, total: (.trigger.body.price * .trigger.body.qty), customer: (.trigger.body.name | ascii_upcase)}}'
  - id: send
    action: http.request
    input:
      method: POST
      url: "{sink}/orders"
      body: "{{{{ .steps.shape.output }}}}"
      headers:
        x-order: "order-{{{{ .steps.shape.output.id }}}}"
    retry: {retry}
"#
    )
}

#[test]
fn newcomer_path_example_flow_answers_the_printed_curl() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    assert!(srv.key.starts_with("wft_"));
    let curl = srv
        .hello_curl
        .clone()
        .expect("serve prints a curl line for the example flow");
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http"))
        .unwrap()
        .to_string();
    let (status, body) = post_hook(&url, r#"{"name":"Ada"}"#, &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["greeting"], "Hello, Ada!");

    let runs = srv.cli_json(&["runs", "list", "--flow", "hello"]);
    let run = runs["items"][0]["id"].as_str().unwrap().to_string();
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded");
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(steps, vec!["greet", "reply"]);
    let logs = srv.cli(&["runs", "logs", &run]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("[greet] succeeded"), "{text}");
    assert!(text.contains("run succeeded"), "{text}");

    // A second start on the same data dir prints no new key and keeps the data.
    let key = srv.key.clone();
    drop(srv);
    let srv2 = Server::start(dir.path(), Some(&key), &[], &[]);
    assert_eq!(
        srv2.cli_json(&["runs", "show", &run])["status"],
        "succeeded"
    );
}

#[test]
fn webhook_transform_http_action_with_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    let flow = srv.apply(&order_flow(&sink.url, "{ max_attempts: 3, initial: 10ms }"));
    assert_eq!(flow["name"], "orders");
    assert_eq!(flow["version"], 1);
    assert_eq!(flow["published_version"], 1);
    let hook = flow["hook_url"].as_str().unwrap().to_string();
    assert!(hook.ends_with(flow["hook_id"].as_str().unwrap()));

    let body = r#"{"id": 7, "price": 2.5, "qty": 4, "name": "ada"}"#;
    let (st, ack) = post_hook(&hook, body, &[("idempotency-key", "delivery-1")]).unwrap();
    assert_eq!(st, 202, "{ack}");
    assert_eq!(ack["duplicate"], false);
    let run = ack["run_id"].as_str().unwrap().to_string();
    let (st2, ack2) = post_hook(&hook, body, &[("idempotency-key", "delivery-1")]).unwrap();
    assert_eq!(st2, 202);
    assert_eq!(ack2["duplicate"], true);
    assert_eq!(ack2["run_id"], run.as_str());

    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["flow"], "orders");
    assert_eq!(r["flow_version"], 1);
    assert_eq!(
        r["steps"][0]["output"],
        json!({"id": 7, "total": 10.0, "customer": "ADA"})
    );
    assert_eq!(r["steps"][1]["output"]["status"], 200);
    let got = sink.all();
    assert_eq!(got.len(), 1, "the duplicate delivery started no second run");
    assert_eq!(got[0].path, "/orders");
    assert_eq!(
        got[0].body,
        json!({"id": 7, "total": 10.0, "customer": "ADA"})
    );
    assert_eq!(
        got[0].idempotency_key.as_deref(),
        Some(format!("{run}:send:0").as_str())
    );

    // A new version does not change the pinned version of finished runs, and is listed.
    let v2 = srv.apply(&order_flow(&sink.url, "{ max_attempts: 2 }"));
    assert_eq!(v2["version"], 2);
    let versions = srv
        .api_get("/api/v1/workspaces/default/flows/orders/versions")
        .1;
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);
    assert_eq!(srv.cli_json(&["runs", "show", &run])["flow_version"], 1);
}

#[test]
fn retryable_errors_are_retried_with_the_same_key_and_permanent_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior {
        statuses: vec![503, 429],
        ..Default::default()
    });
    let srv = Server::start(dir.path(), None, &[], &[]);
    let flow = srv.apply(&order_flow(
        &sink.url,
        "{ max_attempts: 3, initial: 10ms, max: 50ms }",
    ));
    let hook = flow["hook_url"].as_str().unwrap().to_string();
    let (_, ack) = post_hook(&hook, r#"{"id":1,"price":1,"qty":1,"name":"x"}"#, &[]).unwrap();
    let r = srv.wait_run(ack["run_id"].as_str().unwrap(), T);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(
        r["steps"][1]["attempts"], 2,
        "429 waits without using an attempt: {r}"
    );
    let keys: Vec<_> = sink.all().into_iter().map(|x| x.idempotency_key).collect();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k == &keys[0]));

    let sink404 = Sink::start(SinkBehavior {
        statuses: vec![404],
        ..Default::default()
    });
    srv.apply(&order_flow(
        &sink404.url,
        "{ max_attempts: 5, initial: 10ms }",
    ));
    let (_, ack) = post_hook(&hook, r#"{"id":2,"price":1,"qty":1,"name":"y"}"#, &[]).unwrap();
    let r = srv.wait_run(ack["run_id"].as_str().unwrap(), T);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["steps"][1]["attempts"], 1, "a 404 is permanent");
    assert!(r["error"].as_str().unwrap().contains("404"), "{r}");
    assert_eq!(sink404.count(), 1);
}

#[test]
fn manual_runs_dag_and_pagination_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    srv.apply(
        "name: calc\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    transform: '.trigger.body.x + 1'\n  - id: b\n    needs: []\n    transform: '.trigger.body.x * 10'\n  - id: skipme\n    if: '.trigger.body.x > 100'\n    needs: [a]\n    transform: '1'\n  - id: sum\n    needs: [a, b]\n    transform: '.steps.a.output + .steps.b.output'\n",
    );
    let mut ids = Vec::new();
    for x in 0..5 {
        let v = srv.cli_json(&[
            "run",
            "start",
            "calc",
            "--input",
            &format!("{{\"x\": {x}}}"),
        ]);
        ids.push(v["run_id"].as_str().unwrap().to_string());
    }
    let r = srv.wait_run(&ids[2], T);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["output"], json!(23));
    let skip = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "skipme")
        .unwrap();
    assert_eq!(skip["status"], "skipped");
    for id in &ids {
        srv.wait_run(id, T);
    }
    // Cursor pagination visits every run once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["runs", "list", "--flow", "calc", "--limit", "2"];
        let c;
        if let Some(cur) = &cursor {
            c = cur.clone();
            args.push("--cursor");
            args.push(&c);
        }
        let page = srv.cli_json(&args);
        for it in page["items"].as_array().unwrap() {
            seen.push(it["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let ok = srv.cli_json(&["runs", "list", "--status", "succeeded", "--flow", "calc"]);
    assert_eq!(ok["items"].as_array().unwrap().len(), 5);
}

#[test]
fn hostile_expressions_fail_their_step_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(
        dir.path(),
        None,
        &[],
        &["--expr-timeout-ms", "2000", "--sandbox-memory-mib", "256"],
    );
    let cases = [
        "def f: 1+f; f",
        "[range(1e9)]",
        "\"x\" * 1000000000",
        "[repeat(1)]",
        "last(range(1e12))",
    ];
    let mut runs = Vec::new();
    for (i, src) in cases.iter().enumerate() {
        let yaml = format!(
            "name: evil{i}\ntrigger:\n  manual: {{}}\nsteps:\n  - id: t\n    transform: '{}'\n",
            src.replace('\'', "''")
        );
        srv.apply(&yaml);
        runs.push(
            srv.cli_json(&["run", "start", &format!("evil{i}")])["run_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    srv.apply("name: fine\ntrigger:\n  manual: {}\nsteps:\n  - id: t\n    transform: '[range(5)] | add'\n");
    let fine = srv.cli_json(&["run", "start", "fine"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(srv.wait_run(&fine, T)["output"], json!(10));
    for (run, src) in runs.iter().zip(cases) {
        let r = srv.wait_run(run, T);
        assert_eq!(r["status"], "failed", "{src}: {r}");
        let err = r["error"].as_str().unwrap();
        assert!(err.contains("expression"), "{src}: {err}");
    }
    assert_eq!(srv.api_get("/healthz").0, 200);
    assert_eq!(
        srv.metric(r#"weft_steps_total{kind="transform",connector="none",outcome="failed",error_class="expression"}"#),
        cases.len() as f64
    );
    assert!(
        srv.metric("weft_sandbox_kills_total") >= 1.0,
        "runaway filters kill their worker"
    );
}

#[test]
fn bad_input_gets_problem_json_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &["--max-body-bytes", "1048576"]);
    let flow = srv.apply(
        "name: sink\ntrigger:\n  webhook: {}\nsteps:\n  - id: t\n    transform: '.trigger.body'\n",
    );
    let hook = flow["hook_url"].as_str().unwrap().to_string();
    let base = srv.url.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = reqwest::Client::new();
    let key = srv.key.clone();
    let check = |resp: reqwest::Response, status: u16| {
        let rt_status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value = rt.block_on(resp.json()).unwrap();
        assert_eq!(rt_status, status, "{body}");
        assert_eq!(ct, "application/problem+json", "{body}");
        for f in ["type", "title", "status", "detail", "code", "errors"] {
            assert!(body.get(f).is_some(), "missing {f}: {body}");
        }
        body
    };
    let send = |req: reqwest::RequestBuilder| rt.block_on(req.send()).unwrap();

    check(
        send(
            c.post(format!("{base}/hooks/hk_00000000000000000000000000000000"))
                .body("{}"),
        ),
        404,
    );
    check(
        send(c.post(format!("{base}/hooks/not-an-id")).body("{}")),
        404,
    );
    check(
        send(
            c.post(&hook)
                .header("content-type", "application/json")
                .body("{\"a\":"),
        ),
        400,
    );
    check(
        send(
            c.post(&hook)
                .header("content-type", "application/json")
                .body(vec![b'a'; 20 * 1024 * 1024]),
        ),
        413,
    );
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    check(
        send(
            c.post(&hook)
                .header("content-type", "application/json")
                .body(deep),
        ),
        400,
    );
    check(
        send(
            c.post(&hook)
                .header("content-type", "text/plain")
                .body(vec![0xff, 0xfe, 0x80]),
        ),
        415,
    );
    check(
        send(
            c.post(&hook)
                .header("idempotency-key", "x".repeat(300))
                .body("{}"),
        ),
        400,
    );

    let ws = format!("{base}/api/v1/workspaces/default");
    check(send(c.get(format!("{ws}/runs"))), 401);
    check(
        send(c.get(format!("{ws}/runs")).bearer_auth("wft_nope")),
        401,
    );
    check(
        send(
            c.get(format!("{base}/api/v1/workspaces/other/runs"))
                .bearer_auth(&key),
        ),
        404,
    );
    let b = check(
        send(c.get(format!("{ws}/runs/run_123")).bearer_auth(&key)),
        400,
    );
    assert_eq!(b["errors"][0]["path"], "run");
    check(
        send(
            c.get(format!("{ws}/runs/run_0123456789abcdef0123456789abcdef"))
                .bearer_auth(&key),
        ),
        404,
    );
    check(
        send(c.get(format!("{ws}/runs?status=bogus")).bearer_auth(&key)),
        400,
    );
    check(
        send(c.get(format!("{ws}/runs?limit=abc")).bearer_auth(&key)),
        400,
    );
    check(
        send(c.get(format!("{ws}/runs?bogus=1")).bearer_auth(&key)),
        400,
    );
    check(
        send(c.get(format!("{ws}/flows/missing")).bearer_auth(&key)),
        404,
    );
    check(
        send(c.get(format!("{base}/api/v1/nothing")).bearer_auth(&key)),
        404,
    );
    let b = check(
        send(c.post(format!("{ws}/flows")).bearer_auth(&key).json(&json!({"name": "x", "trigger": {"manual": {}}, "steps": [{"id": "a", "transform": "."}], "extra": 1}))),
        422,
    );
    assert_eq!(b["errors"][0]["path"], "extra");
    let b = check(
        send(c.post(format!("{ws}/flows")).bearer_auth(&key).json(&json!({"name": "x", "trigger": {"manual": {}}, "steps": [{"id": "a", "needs": ["zz"], "transform": "."}]}))),
        422,
    );
    assert_eq!(b["errors"][0]["path"], "steps[0].needs[0]");
    check(
        send(
            c.post(format!("{ws}/flows"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body("{nope"),
        ),
        400,
    );
    check(
        send(
            c.post(format!("{ws}/flows"))
                .bearer_auth(&key)
                .header("content-type", "application/xml")
                .body("<a/>"),
        ),
        415,
    );
    check(send(c.delete(format!("{ws}/runs")).bearer_auth(&key)), 405);

    // A draft-only flow's hook is not live.
    let dir2 = tempfile::tempdir().unwrap();
    let f = dir2.path().join("d.yaml");
    std::fs::write(
        &f,
        "name: drafty\ntrigger:\n  webhook: {}\nsteps:\n  - id: t\n    transform: '.'\n",
    )
    .unwrap();
    let d = srv.cli_json(&["flow", "apply", f.to_str().unwrap(), "--draft"]);
    assert_eq!(d["published_version"], Value::Null);
    check(
        send(c.post(d["hook_url"].as_str().unwrap()).body("{}")),
        404,
    );

    // Nothing above created a run or a flow.
    assert_eq!(
        srv.cli_json(&["runs", "list"])["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let names: Vec<String> = srv.cli_json(&["flow", "list"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["drafty", "hello", "sink"]);

    // The CLI gives one line and a non-zero exit.
    std::fs::write(&f, "name: bad\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    needs: [a]\n    transform: '.'\n").unwrap();
    for cmd in [
        vec!["flow", "validate", f.to_str().unwrap()],
        vec!["flow", "apply", f.to_str().unwrap()],
    ] {
        let out = srv.cli(&cmd);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("steps[0].needs[0]"), "{err}");
    }
    let out = srv.cli(&["runs", "show", "run_0123456789abcdef0123456789abcdef"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: run not found"));
}

#[test]
fn form_and_text_bodies_reach_the_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), None, &[], &[]);
    let flow = srv.apply("name: echo\ntrigger:\n  webhook: {}\nsteps:\n  - id: t\n    transform: '{b: .trigger.body, q: .trigger.query.x}'\n");
    let hook = flow["hook_url"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = reqwest::Client::new();
    let post = |ct: &str, body: &str| -> String {
        let r = rt
            .block_on(
                c.post(format!("{hook}?x=1"))
                    .header("content-type", ct)
                    .body(body.to_string())
                    .send(),
            )
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let v: Value = rt.block_on(r.json()).unwrap();
        v["run_id"].as_str().unwrap().to_string()
    };
    let form = post("application/x-www-form-urlencoded", "a=1&b=hello+world");
    let text = post("text/plain", "just text");
    assert_eq!(
        srv.wait_run(&form, T)["output"],
        json!({"b": {"a": "1", "b": "hello world"}, "q": "1"})
    );
    assert_eq!(
        srv.wait_run(&text, T)["output"],
        json!({"b": "just text", "q": "1"})
    );
}

#[test]
fn respond_falls_back_to_202_and_drafts_publish_later() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior {
        delay: Duration::from_millis(1500),
        ..Default::default()
    });
    let srv = Server::start(dir.path(), None, &[], &[]);
    let yaml = format!(
        "name: slow\ntrigger:\n  webhook: {{ respond_timeout: 300ms }}\nsteps:\n  - id: call\n    action: http.request\n    input: {{ url: '{}/slow' }}\n  - id: answer\n    respond: {{ status: 201, body: done }}\n",
        sink.url
    );
    let flow = srv.apply(&yaml);
    let (st, ack) = post_hook(flow["hook_url"].as_str().unwrap(), "{}", &[]).unwrap();
    assert_eq!(
        st, 202,
        "the respond step came too late: intake acknowledged instead ({ack})"
    );
    let run = ack["run_id"].as_str().unwrap().to_string();
    assert_eq!(srv.wait_run(&run, T)["status"], "succeeded");

    // A draft version is not live until published; publishing it makes it the one that runs.
    let dir2 = tempfile::tempdir().unwrap();
    let f = dir2.path().join("v2.yaml");
    std::fs::write(&f, "name: slow\ntrigger:\n  webhook: {}\nsteps:\n  - id: answer\n    respond: { status: 200, body: v2 }\n").unwrap();
    let d = srv.cli_json(&["flow", "apply", f.to_str().unwrap(), "--draft"]);
    assert_eq!(
        (d["version"].as_i64(), d["published_version"].as_i64()),
        (Some(2), Some(1))
    );
    let p = srv.cli_json(&["flow", "publish", "slow", "--version", "2"]);
    assert_eq!(p["published_version"], 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resp = rt
        .block_on(
            reqwest::Client::new()
                .post(flow["hook_url"].as_str().unwrap())
                .body("{}")
                .send(),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(rt.block_on(resp.text()).unwrap(), "v2");
    let out = srv.cli(&["flow", "publish", "slow", "--version", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // schema and readiness
    let schema = srv.cli_json(&["flow", "schema"]);
    assert!(schema["properties"]["steps"].is_object(), "{schema}");
    assert_eq!(srv.api_get("/readyz").0, 200);
}

#[test]
fn actions_cannot_reach_private_addresses_unless_the_operator_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start_raw(dir.path(), None, &[], &[]);
    let flow = srv.apply(&order_flow(&sink.url, "{ max_attempts: 3, initial: 10ms }"));
    let (_, ack) = post_hook(
        flow["hook_url"].as_str().unwrap(),
        r#"{"id":1,"price":1,"qty":1,"name":"x"}"#,
        &[],
    )
    .unwrap();
    let r = srv.wait_run(ack["run_id"].as_str().unwrap(), T);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(
        r["steps"][1]["attempts"], 1,
        "a refused address is a permanent error: {r}"
    );
    assert_eq!(sink.count(), 0, "nothing reached the loopback sink");
    let key = srv.key.clone();
    drop(srv);
    // An operator allowlist for loopback lets the same flow through.
    let srv = Server::start_raw(
        dir.path(),
        Some(&key),
        &[],
        &["--allow-network", "127.0.0.0/8"],
    );
    let hook = srv.cli_json(&["flow", "show", "orders"])["hook_url"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, ack) = post_hook(&hook, r#"{"id":2,"price":1,"qty":1,"name":"x"}"#, &[]).unwrap();
    assert_eq!(
        srv.wait_run(ack["run_id"].as_str().unwrap(), T)["status"],
        "succeeded"
    );
    assert_eq!(sink.count(), 1);
}
