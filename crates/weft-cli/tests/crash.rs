//! Crash tests: kill -9 (or abort at a failpoint) at the worst moments, restart, and check that
//! no accepted event is lost, no completed step re-runs, and re-sent actions keep their key.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Server, Sink, SinkBehavior, post_hook};

const T: Duration = Duration::from_secs(60);

fn two_actions(sink: &str) -> String {
    format!(
        "name: twice\ntrigger:\n  webhook: {{}}\nsteps:\n  - id: first\n    action: http.request\n    input: {{ method: POST, url: '{sink}/first', body: '{{{{ .trigger.body }}}}' }}\n  - id: second\n    action: http.request\n    input: {{ method: POST, url: '{sink}/second', body: '{{{{ .steps.first.output.status }}}}' }}\n"
    )
}

#[test]
fn crash_after_intake_commit_before_the_ack_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    let key = srv.key.clone();
    let hook = srv.apply(&two_actions(&sink.url))["hook_url"]
        .as_str()
        .unwrap()
        .to_string();
    drop(srv);

    let mut srv = Server::start(
        dir.path(),
        Some(&key),
        &[("WEFT_FAILPOINTS", "intake.after_commit")],
        &["--max-in-flight", "1"],
    );
    let hook = hook.replace(hook.split("/hooks/").next().unwrap(), &srv.url);
    let res = post_hook(&hook, r#"{"n": 1}"#, &[("idempotency-key", "evt-1")]);
    assert!(res.is_none(), "the process died before answering: {res:?}");
    assert!(srv.wait_exit(Duration::from_secs(10)));

    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    let runs = srv.cli_json(&["runs", "list", "--flow", "twice"]);
    let items = runs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the committed event survived the crash");
    let run = items[0]["id"].as_str().unwrap().to_string();
    assert_eq!(srv.wait_run(&run, T)["status"], "succeeded");
    // The sender retries its delivery (it never got an answer): absorbed as a duplicate.
    let hook = hook.replace(hook.split("/hooks/").next().unwrap(), &srv.url);
    let (st, ack) = post_hook(&hook, r#"{"n": 1}"#, &[("idempotency-key", "evt-1")]).unwrap();
    assert_eq!(st, 202);
    assert_eq!(ack["duplicate"], true);
    assert_eq!(ack["run_id"], run.as_str());
}

#[test]
fn crash_after_a_side_effect_before_its_checkpoint_resends_with_the_same_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    let key = srv.key.clone();
    srv.apply(&two_actions(&sink.url));
    drop(srv);

    let mut srv = Server::start(
        dir.path(),
        Some(&key),
        &[("WEFT_FAILPOINTS", "action.after_effect:second")],
        &[],
    );
    let flow = srv.cli_json(&["flow", "show", "twice"]);
    let (st, ack) = post_hook(flow["hook_url"].as_str().unwrap(), r#"{"n": 2}"#, &[]).unwrap();
    assert_eq!(st, 202);
    let run = ack["run_id"].as_str().unwrap().to_string();
    assert!(
        srv.wait_exit(Duration::from_secs(20)),
        "failpoint after the second action's side effect"
    );

    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    let got = sink.all();
    let first: Vec<_> = got.iter().filter(|x| x.path == "/first").collect();
    let second: Vec<_> = got.iter().filter(|x| x.path == "/second").collect();
    assert_eq!(first.len(), 1, "a checkpointed step never runs again");
    assert_eq!(
        second.len(),
        2,
        "the step in flight at the crash is re-sent once"
    );
    assert_eq!(second[0].idempotency_key, second[1].idempotency_key);
    assert_eq!(
        second[0].idempotency_key.as_deref(),
        Some(format!("{run}:second:0").as_str())
    );
    assert_eq!(r["steps"][0]["attempts"], 1);
}

#[test]
fn kill_9_while_runs_are_queued_and_running_loses_no_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior {
        delay: Duration::from_millis(150),
        ..Default::default()
    });
    let srv = Server::start(dir.path(), None, &[], &[]);
    let key = srv.key.clone();
    srv.apply(&two_actions(&sink.url));
    drop(srv);

    let mut srv = Server::start(dir.path(), Some(&key), &[], &["--max-in-flight", "2"]);
    let hook = srv.cli_json(&["flow", "show", "twice"])["hook_url"]
        .as_str()
        .unwrap()
        .to_string();
    let mut accepted = Vec::new();
    for i in 0..30 {
        let (st, ack) = post_hook(&hook, &format!("{{\"n\": {i}}}"), &[]).unwrap();
        assert_eq!(st, 202);
        accepted.push(ack["run_id"].as_str().unwrap().to_string());
    }
    srv.kill9();
    let before = sink.count();
    assert!(
        before < 60,
        "the kill happened while work was pending ({before} requests done)"
    );

    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    for run in &accepted {
        assert_eq!(srv.wait_run(run, T)["status"], "succeeded", "run {run}");
    }
    // Every run's side effects happened; any repeat carries the original key.
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for r in sink.all() {
        *by_key.entry(r.idempotency_key.unwrap()).or_default() += 1;
    }
    for run in &accepted {
        for step in ["first", "second"] {
            let n = by_key.get(&format!("{run}:{step}:0")).copied().unwrap_or(0);
            assert!((1..=2).contains(&n), "{run}:{step} sent {n} times");
        }
    }
    assert_eq!(by_key.len(), accepted.len() * 2);
}

fn post_json(url: &str, key: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        let st = r.status().as_u16();
        Some((st, r.json().await.unwrap_or(serde_json::Value::Null)))
    })
}

#[test]
fn crash_while_a_signal_is_delivered_keeps_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    let key = srv.key.clone();
    srv.apply(&format!(
        "name: gated\ntrigger:\n  manual: {{}}\nsteps:\n  - id: approve\n    approval: {{}}\n  - id: go\n    action: http.request\n    input: {{ method: POST, url: '{}/go', body: '{{{{ .steps.approve.output }}}}' }}\n",
        sink.url
    ));
    let run = srv.cli_json(&["run", "start", "gated"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + T;
    while srv.cli_json(&["runs", "show", &run])["status"] != "waiting" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(srv);

    // The process dies after the signal committed, before it answered.
    let mut srv = Server::start(
        dir.path(),
        Some(&key),
        &[("WEFT_FAILPOINTS", "signal.after_commit")],
        &[],
    );
    let url = format!(
        "{}/api/v1/workspaces/default/runs/{run}/signals/approve",
        srv.url
    );
    assert!(post_json(&url, &key, r#"{"by": "ann"}"#).is_none());
    assert!(srv.wait_exit(Duration::from_secs(10)));

    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "succeeded", "{r}");
    let got = sink.all();
    assert_eq!(got.len(), 1, "the resumed step ran once");
    assert_eq!(got[0].body["by"], "ann");
    // The sender, never answered, tries again: the signal is already there.
    let url = format!(
        "{}/api/v1/workspaces/default/runs/{run}/signals/approve",
        srv.url
    );
    let (st, p) = post_json(&url, &key, r#"{"by": "ann"}"#).unwrap();
    assert_eq!(st, 409, "{p}");
    assert_eq!(sink.count(), 1);
}

#[test]
fn crash_during_compensation_runs_each_compensation_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior::default());
    let srv = Server::start(dir.path(), None, &[], &[]);
    let key = srv.key.clone();
    let call = |id: &str| {
        format!(
            "action: http.request\n    input: {{ method: POST, url: '{}/{id}', body: {{ step: {id} }} }}",
            sink.url
        )
    };
    let nested = |id: &str| call(id).replace("\n    input", "\n        input");
    srv.apply(&format!(
        "name: saga\ntrigger:\n  manual: {{}}\nsteps:\n  - id: charge\n    {}\n    compensate:\n      - id: refund\n        {}\n  - id: reserve\n    {}\n    compensate:\n      - id: release\n        {}\n  - id: ship\n    fail: 'out of stock'\n",
        call("charge"),
        nested("refund"),
        call("reserve"),
        nested("release"),
    ));
    drop(srv);

    // `reserve` is undone first (last first); the process dies as `charge`'s undoing starts.
    let mut srv = Server::start(
        dir.path(),
        Some(&key),
        &[("WEFT_FAILPOINTS", "compensation.start:charge")],
        &[],
    );
    let run = srv.cli_json(&["run", "start", "saga"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(srv.wait_exit(Duration::from_secs(20)));

    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"], "step 'ship' failed: out of stock");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for x in sink.all() {
        *counts.entry(x.path.clone()).or_default() += 1;
    }
    for path in ["/charge", "/reserve", "/release", "/refund"] {
        assert_eq!(counts.get(path), Some(&1), "{path}: {counts:?}");
    }
    let order: Vec<String> = sink.all().into_iter().map(|x| x.path).collect();
    assert_eq!(order, ["/charge", "/reserve", "/release", "/refund"]);
}

#[test]
fn the_last_step_to_end_is_on_record_before_its_compensation_starts() {
    // `fail` fails the run at once; `book` (in parallel) ends last, so its success is held for
    // the run's next write. That write must happen before its undoing starts: otherwise the
    // resumed run does not know it booked, and nothing undoes it.
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkBehavior {
        delay: Duration::from_millis(150),
        ..Default::default()
    });
    let srv = Server::start(dir.path(), None, &[], &[]);
    let key = srv.key.clone();
    srv.apply(&format!(
        "name: booking\ntrigger:\n  manual: {{}}\nsteps:\n  - id: book\n    action: http.request\n    input: {{ method: POST, url: '{0}/book', body: {{ a: 1 }} }}\n    compensate:\n      - id: unbook\n        action: http.request\n        input: {{ method: POST, url: '{0}/unbook', body: {{ a: 1 }} }}\n  - id: fail\n    needs: []\n    fail: 'no seats'\n",
        sink.url
    ));
    drop(srv);

    let mut srv = Server::start(
        dir.path(),
        Some(&key),
        &[("WEFT_FAILPOINTS", "compensation.start:book")],
        &[],
    );
    let run = srv.cli_json(&["run", "start", "booking"])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        srv.wait_exit(Duration::from_secs(20)),
        "failpoint as book's compensation starts"
    );

    let srv = Server::start(dir.path(), Some(&key), &[], &[]);
    let r = srv.wait_run(&run, T);
    assert_eq!(r["status"], "failed", "{r}");
    let paths: Vec<String> = sink.all().into_iter().map(|x| x.path).collect();
    assert_eq!(
        paths,
        ["/book", "/unbook"],
        "book ran once, then its undoing once"
    );
}
