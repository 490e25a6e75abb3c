//! Flow control on the manual clock: durable waits, signals (approval, wait_for_event) with
//! timeouts, switch and joins, on_error handlers, for_each, retry in place and replay. No test
//! sleeps: each advances the clock and awaits the engine's events.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use weft_engine::{EngineError, ReplayVersion};
use weft_store::Actor;
use weft_types::{RunStatus, StepStatus};

mod common;
use common::*;

fn flow(name: &str, steps: &str) -> String {
    format!("name: {name}\ntrigger:\n  manual: {{}}\nsteps:\n{steps}")
}

async fn step_of(h: &Harness, run: weft_types::RunId, id: &str) -> weft_store::StepRecord {
    let (_, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    steps
        .into_iter()
        .find(|s| s.step_id == id)
        .unwrap_or_else(|| panic!("no step {id}"))
}

async fn status_of(h: &Harness, run: weft_types::RunId) -> RunStatus {
    h.engine
        .store()
        .get_run(h.scope, run)
        .await
        .unwrap()
        .0
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_parks_the_run_and_fires_once_at_its_time_even_across_a_restart() {
    let mut h = harness().await;
    h.apply(&flow(
        "nap",
        "  - id: pause\n    wait: 1h\n  - id: after\n    transform: '.steps.pause.output'\n",
    ))
    .await;
    let run = h.start("nap", json!({})).await;
    let until = h.parked(run).await;
    assert_eq!(until, Some(T0 + 3_600_000));
    assert_eq!(status_of(&h, run).await, RunStatus::Waiting);
    assert_eq!(step_of(&h, run, "pause").await.status, StepStatus::Waiting);

    // A restart while waiting keeps the deadline set when the step began.
    h.clock.advance(Duration::from_secs(1800));
    h.restart().await;
    assert_eq!(status_of(&h, run).await, RunStatus::Waiting);
    h.clock.advance(Duration::from_secs(1800));
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(
        r.output,
        Some(json!({"waited_until": weft_types::rfc3339(T0 + 3_600_000)}))
    );
    // Fired once: one checkpoint per step, the wait's started when the run began.
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].started_at, Some(T0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_resumes_on_its_signal_once() {
    let mut h = harness().await;
    h.apply(&flow(
        "ask",
        "  - id: approve\n    approval: {message: 'refund {{ .trigger.body.amount }}?'}\n  - id: after\n    transform: '.steps.approve.output'\n",
    ))
    .await;
    let run = h.start("ask", json!({"amount": 30})).await;
    assert_eq!(h.parked(run).await, None);
    let waiting = step_of(&h, run, "approve").await;
    assert_eq!(waiting.output.unwrap()["message"], json!("refund 30?"));

    let st = h
        .engine
        .signal_run(
            h.scope,
            run,
            "approve",
            json!({"by": "ann"}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert!(matches!(
        st,
        RunStatus::Queued | RunStatus::Running | RunStatus::Succeeded
    ));
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    let out = r.output.unwrap();
    assert_eq!(out["approved"], json!(true));
    assert_eq!(out["by"], json!("ann"));
    // The log tells the story in typed events.
    let events: Vec<String> = h
        .engine
        .store()
        .run_logs(h.scope, run, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| {
            format!(
                "{}{}",
                l.event,
                l.step_id.map(|s| format!(":{s}")).unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            "RunStarted",
            "StepStarted:approve",
            "StepWaiting:approve",
            "SignalReceived",
            "StepSucceeded:approve",
            "StepStarted:after",
            "StepSucceeded:after",
            "RunSucceeded"
        ]
    );

    // Signals are single-use and reach only unfinished runs.
    let again = h
        .engine
        .signal_run(h.scope, run, "approve", json!({}), Actor::system("test"))
        .await;
    assert!(matches!(again, Err(EngineError::Conflict(_))), "{again:?}");
    let unknown = h
        .engine
        .signal_run(
            h.scope,
            weft_types::RunId::new(),
            "approve",
            json!({}),
            Actor::system("test"),
        )
        .await;
    assert!(
        matches!(unknown, Err(EngineError::NotFound(_))),
        "{unknown:?}"
    );
    let bad = h
        .engine
        .signal_run(h.scope, run, "no spaces", json!({}), Actor::system("test"))
        .await;
    assert!(matches!(bad, Err(EngineError::BadInput(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_fails_the_step_and_on_error_handles_it() {
    let mut h = harness().await;
    h.apply(&flow(
        "gate",
        "  - id: approve\n    approval: {}\n    on_error: [notify]\n  - id: ship\n    transform: '\"shipped\"'\n  - id: notify\n    transform: '.steps.approve.error'\n",
    ))
    .await;
    let run = h.start("gate", json!({})).await;
    h.parked(run).await;
    h.engine
        .signal_run(
            h.scope,
            run,
            "approve",
            json!({"approved": false, "reason": "too big"}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    // The handled failure does not fail the run; what needed the step is skipped.
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    assert_eq!(step_of(&h, run, "approve").await.status, StepStatus::Failed);
    assert_eq!(step_of(&h, run, "ship").await.status, StepStatus::Skipped);
    let notify = step_of(&h, run, "notify").await;
    assert_eq!(notify.output, Some(json!("rejected: too big")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_timeout_takes_the_on_timeout_path_and_without_one_fails() {
    let mut h = harness().await;
    h.apply(&flow(
        "expiring",
        "  - id: approve\n    approval: {timeout: 2d, on_timeout: [expire]}\n  - id: ship\n    transform: '1'\n  - id: expire\n    transform: '\"expired\"'\n",
    ))
    .await;
    h.apply(&flow(
        "strict",
        "  - id: hear\n    wait_for_event: {event: paid, timeout: 10m}\n",
    ))
    .await;
    let a = h.start("expiring", json!({})).await;
    assert_eq!(h.parked(a).await, Some(T0 + 2 * 86_400_000));
    let b = h.start("strict", json!({})).await;
    assert_eq!(h.parked(b).await, Some(T0 + 600_000));

    h.clock.advance(Duration::from_secs(600));
    assert_eq!(h.finished(b).await, RunStatus::Failed);
    let (rb, _) = h.engine.store().get_run(h.scope, b).await.unwrap();
    assert!(rb.error.unwrap().contains("no signal 'hear' arrived"));

    h.clock.advance(Duration::from_secs(2 * 86_400));
    assert_eq!(h.finished(a).await, RunStatus::Succeeded);
    assert_eq!(step_of(&h, a, "ship").await.status, StepStatus::Skipped);
    assert_eq!(
        step_of(&h, a, "expire").await.output,
        Some(json!("expired"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_that_arrives_early_is_kept_for_its_step() {
    let mut h = harness().await;
    h.apply(&flow(
        "early",
        "  - id: pause\n    wait: 1m\n  - id: hear\n    wait_for_event: {event: 'order.paid'}\n",
    ))
    .await;
    let run = h.start("early", json!({})).await;
    h.parked(run).await;
    // Sent under the event name while the run still waits on its timer.
    h.engine
        .signal_run(
            h.scope,
            run,
            "order.paid",
            json!({"order": 7}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    // The signal wakes the run, which parks again on its timer (the clock must not jump
    // while a claim is in flight: its lease would look expired).
    h.parked(run).await;
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.output, Some(json!({"order": 7})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_runs_the_chosen_case_and_the_join_after_it() {
    let mut h = harness().await;
    h.apply(&flow(
        "route",
        "  - id: pick\n    switch: .trigger.body.size\n    cases:\n      big: [b1, b2]\n      small: s1\n      default: []\n  - id: b1\n    transform: '\"b1\"'\n  - id: b2\n    transform: '.steps.b1.output + \"b2\"'\n  - id: s1\n    transform: '\"s1\"'\n  - id: after\n    transform: '[.steps.b2.status, .steps.s1.status]'\n",
    ))
    .await;
    for (size, want) in [
        ("big", json!(["succeeded", "skipped"])),
        ("small", json!(["skipped", "succeeded"])),
        ("other", json!(["skipped", "skipped"])),
    ] {
        let run = h.start("route", json!({"size": size})).await;
        assert_eq!(h.finished(run).await, RunStatus::Succeeded, "{size}");
        let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
        assert_eq!(r.output, Some(want), "{size}");
        let pick = step_of(&h, run, "pick").await.output.unwrap();
        let case = if size == "other" { "default" } else { size };
        assert_eq!(pick, json!({"value": size, "case": case}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_runs_nested_steps_per_item_and_collects() {
    let mut h = harness().await;
    h.apply(&flow(
        "loop",
        "  - id: each\n    for_each: .trigger.body.items\n    concurrency: 4\n    steps:\n      - id: double\n        transform: '.item * 2'\n      - id: tag\n        transform: '{i: .index, v: .steps.double.output}'\n  - id: sum\n    transform: '[.steps.each.output[].v] | add'\n",
    ))
    .await;
    let items: Vec<i64> = (1..=50).collect();
    let run = h.start("loop", json!({"items": items})).await;
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.output, Some(json!(2 * (1..=50).sum::<i64>())));
    let each = steps.iter().find(|s| s.step_id == "each").unwrap();
    let out = each.output.as_ref().unwrap().as_array().unwrap();
    assert_eq!(out.len(), 50);
    assert_eq!(out[7], json!({"i": 7, "v": 16}));
    // Per-item checkpoints: one per item, one per nested step of each.
    let items = steps.iter().filter(|s| s.step_id.ends_with(']')).count();
    let nested = steps.iter().filter(|s| s.step_id.contains("].")).count();
    assert_eq!((items, nested), (50, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_streams_another_loops_item_outputs_from_the_store() {
    let mut h = harness().await;
    // `first` keeps no outputs in memory or in its own output; `second` reads them a page at
    // a time (more items than one page).
    h.apply(&flow(
        "stream",
        "  - id: first\n    for_each: .trigger.body.items\n    collect: false\n    concurrency: 8\n    steps:\n      - id: sq\n        transform: '{i: .item, sq: (.item * .item)}'\n  - id: second\n    for_each: {outputs_of: first}\n    concurrency: 4\n    steps:\n      - id: plus\n        transform: '.item.sq + 1'\n  - id: total\n    transform: '[.steps.second.output[]] | add'\n",
    ))
    .await;
    let n: i64 = 600;
    let run = h
        .start("stream", json!({"items": (0..n).collect::<Vec<_>>()}))
        .await;
    let end = h.finished(run).await;
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(end, RunStatus::Succeeded, "{:?}", r.error);
    let first = step_of(&h, run, "first").await;
    assert_eq!(
        first.output,
        Some(json!({"total": n, "succeeded": n, "failed": 0}))
    );
    let second = step_of(&h, run, "second").await;
    let out = second.output.unwrap();
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), n as usize);
    assert_eq!(out[3], json!(10));
    assert_eq!(out[599], json!(599 * 599 + 1));
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    let want: i64 = (0..n).map(|i| i * i + 1).sum();
    assert_eq!(r.output, Some(json!(want)));

    // A source loop that failed (and let the run go on) leaves the items it did not finish as
    // null for the loop that reads it.
    h.apply(&flow(
        "partial",
        "  - id: first\n    for_each: .trigger.body.items\n    collect: false\n    continue_on_error: true\n    steps:\n      - id: ok\n        transform: '.item'\n      - id: check\n        needs: []\n        if: '.item == 2'\n        fail: 'no 2'\n  - id: second\n    for_each: {outputs_of: first}\n    steps:\n      - id: echo\n        transform: '.item'\n",
    ))
    .await;
    let run = h.start("partial", json!({"items": [0, 1, 2, 3, 4]})).await;
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let second = step_of(&h, run, "second").await;
    assert_eq!(second.output, Some(json!([0, 1, null, null, null])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_over_a_non_list_or_with_a_failing_item_fails_clearly() {
    let mut h = harness().await;
    h.apply(&flow(
        "bad",
        "  - id: each\n    for_each: .trigger.body.items\n    steps:\n      - id: check\n        if: '.item == 3'\n        fail: 'item {{ .item }} is bad'\n",
    ))
    .await;
    let run = h.start("bad", json!({"items": {"not": "a list"}})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("needs a list; its expression gave an object"),
        "{:?}",
        r.error
    );

    let run = h.start("bad", json!({"items": [1, 2, 3, 4, 5]})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    let e = r.error.unwrap();
    assert!(
        e.contains("item 2 failed") && e.contains("item 3 is bad"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_keeps_completed_steps_and_replay_starts_anew() {
    let mut h = harness().await;
    // A counter outside the engine: the step fails until the test flips it.
    let ok = Arc::new(Mutex::new(false));
    let hits = Arc::new(Mutex::new(Vec::<String>::new()));
    let app = {
        let ok = ok.clone();
        let hits = hits.clone();
        axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let ok = ok.clone();
            let hits = hits.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                hits.lock().unwrap().push(key);
                if *ok.lock().unwrap() {
                    (axum::http::StatusCode::OK, "{\"done\":true}")
                } else {
                    (axum::http::StatusCode::BAD_REQUEST, "{}")
                }
            }
        })
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    h.apply(&flow(
        "fragile",
        &format!("  - id: first\n    transform: '.run.id'\n  - id: call\n    action: http.request\n    input: {{ url: '{url}/x' }}\n"),
    ))
    .await;
    let run = h.start("fragile", json!({"n": 1})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let first = step_of(&h, run, "first").await;

    // Only a failed run retries; a running or finished-ok one is a conflict.
    *ok.lock().unwrap() = true;
    h.engine
        .retry_run(h.scope, run, Actor::system("test"))
        .await
        .unwrap();
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let again = step_of(&h, run, "first").await;
    assert_eq!(
        again.finished_at, first.finished_at,
        "completed step re-ran"
    );
    let keys = hits.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "a retried step keeps its idempotency key");
    let twice = h
        .engine
        .retry_run(h.scope, run, Actor::system("test"))
        .await;
    assert!(matches!(twice, Err(EngineError::Conflict(_))), "{twice:?}");

    let replayed = h
        .engine
        .replay_run(h.scope, run, ReplayVersion::Pinned, Actor::system("test"))
        .await
        .unwrap()
        .run_id;
    assert_ne!(replayed, run);
    assert_eq!(h.finished(replayed).await, RunStatus::Succeeded);
    let (a, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    let (b, _) = h.engine.store().get_run(h.scope, replayed).await.unwrap();
    assert_eq!(a.trigger, b.trigger);
    let keys = hits.lock().unwrap().clone();
    assert_ne!(keys[2], keys[0], "a replay is a new run with new keys");
    let _: Value = b.output.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subflow_runs_as_a_linked_child_and_its_result_is_the_steps_output() {
    let mut h = harness().await;
    h.apply(&flow(
        "child",
        "  - id: double\n    transform: '.trigger.body.n * 2'\n",
    ))
    .await;
    h.apply(&flow(
        "parent",
        "  - id: call\n    subflow: child\n    input: {n: '{{ .trigger.body.n }}'}\n  - id: fire\n    subflow: child\n    detach: true\n    input: {n: 1}\n  - id: after\n    transform: '.steps.call.output + 1'\n",
    ))
    .await;
    let run = h.start("parent", json!({"n": 20})).await;
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.output, Some(json!(41)));
    let children = h.engine.store().child_runs(h.scope, run).await.unwrap();
    assert_eq!(
        children.len(),
        1,
        "the detached child is not awaited or linked"
    );
    let child = &children[0];
    assert_eq!(child.parent, Some(run));
    assert_eq!(child.trigger["parent"]["run"], json!(run.to_string()));
    assert_eq!(child.output, Some(json!(40)));
    let fire = step_of(&h, run, "fire").await.output.unwrap();
    let detached: weft_types::RunId = fire["run_id"].as_str().unwrap().parse().unwrap();
    let (d, _) = h.engine.store().get_run(h.scope, detached).await.unwrap();
    assert_eq!(d.parent, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subflow_cycle_fails_clearly_instead_of_recursing() {
    let mut h = harness().await;
    h.apply(&flow("ping", "  - id: call\n    subflow: pong\n"))
        .await;
    h.apply(&flow("pong", "  - id: call\n    subflow: ping\n"))
        .await;
    let run = h.start("ping", json!({})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    let e = r.error.unwrap();
    assert!(e.contains("sub-flow cycle: ping → pong → ping"), "{e}");
    // Exactly one child was started (pong), and it failed on the cycle.
    let children = h.engine.store().child_runs(h.scope, run).await.unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].status, RunStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_cancels_its_waiting_child() {
    let mut h = harness().await;
    h.apply(&flow("slow", "  - id: approve\n    approval: {}\n"))
        .await;
    h.apply(&flow("boss", "  - id: call\n    subflow: slow\n"))
        .await;
    let run = h.start("boss", json!({})).await;
    // Both park: the child on its approval, the parent on the child.
    let mut parked = 0;
    while parked < 2 {
        if let weft_engine::EngineEvent::RunParked { .. } = h.next_event().await {
            parked += 1;
        }
    }
    let child = h.engine.store().child_runs(h.scope, run).await.unwrap()[0].id;
    assert_eq!(status_of(&h, child).await, RunStatus::Waiting);
    h.engine
        .cancel_run(h.scope, run, Actor::system("test"))
        .await
        .unwrap();
    assert_eq!(status_of(&h, run).await, RunStatus::Cancelled);
    assert_eq!(status_of(&h, child).await, RunStatus::Cancelled);
    let late = h
        .engine
        .signal_run(h.scope, child, "approve", json!({}), Actor::system("test"))
        .await;
    assert!(matches!(late, Err(EngineError::Conflict(_))), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_compensates_its_completed_steps_last_first() {
    let mut h = harness().await;
    h.apply(&flow(
        "saga",
        "  - id: charge
    transform: '\"ch_1\"'
    compensate:
      - id: refund
        transform: '{refunded: .compensating.output, step: .compensating.step}'
  - id: reserve
    transform: '\"res_9\"'
    compensate:
      - id: release
        if: '.trigger.body.release_fails'
        fail: 'the warehouse is down'
  - id: ship
    fail: 'out of stock'
    compensate:
      - id: never
        transform: '1'
",
    ))
    .await;
    let run = h.start("saga", json!({})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.error.as_deref(), Some("step 'ship' failed: out of stock"));
    let refund = steps
        .iter()
        .find(|s| s.step_id == "charge.compensate.refund")
        .unwrap();
    assert_eq!(
        refund.output,
        Some(json!({"refunded": "ch_1", "step": "charge"}))
    );
    let release = steps
        .iter()
        .find(|s| s.step_id == "reserve.compensate.release")
        .unwrap();
    assert_eq!(release.status, StepStatus::Skipped);
    // The step that failed did nothing to undo.
    assert!(
        !steps
            .iter()
            .any(|s| s.step_id.starts_with("ship.compensate"))
    );
    // A compensated run does not resume in place.
    let retry = h
        .engine
        .retry_run(h.scope, run, Actor::system("test"))
        .await;
    assert!(matches!(retry, Err(EngineError::Conflict(_))), "{retry:?}");

    // A compensation that fails is recorded, the others still run, and the run says so.
    let run = h.start("saga", json!({"release_fails": true})).await;
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    let e = r.error.unwrap();
    assert!(
        e.contains("compensation failed: undoing 'reserve'") && e.contains("the warehouse is down"),
        "{e}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.step_id == "charge.compensate.refund" && s.status == StepStatus::Succeeded)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_starts_its_error_flow_once() {
    let mut h = harness().await;
    h.apply(&flow(
        "alert",
        "  - id: say\n    transform: '\"\\(.trigger.body.flow) failed: \\(.trigger.body.error)\"'\n",
    ))
    .await;
    h.apply(
        "name: brittle\nerror_flow: alert\ntrigger:\n  manual: {}\nsteps:\n  - id: boom\n    fail: 'no luck'\n",
    )
    .await;
    let run = h.start("brittle", json!({"x": 1})).await;
    let mut finished = Vec::new();
    while finished.len() < 2 {
        if let weft_engine::EngineEvent::RunFinished { run: r, status } = h.next_event().await {
            finished.push((r, status));
        }
    }
    assert!(finished.contains(&(run, RunStatus::Failed)));
    let (alert_run, st) = *finished.iter().find(|(r, _)| *r != run).unwrap();
    assert_eq!(st, RunStatus::Succeeded);
    let (a, _) = h.engine.store().get_run(h.scope, alert_run).await.unwrap();
    assert_eq!(
        a.output,
        Some(json!("brittle failed: step 'boom' failed: no luck"))
    );
    assert_eq!(a.trigger["body"]["run_id"], json!(run.to_string()));
    assert_eq!(a.trigger["body"]["trigger"]["body"], json!({"x": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_approval_is_asked_again_on_retry_and_unknown_signals_are_refused() {
    let mut h = harness().await;
    h.apply(&flow(
        "again",
        "  - id: approve\n    approval: {}\n  - id: done\n    transform: '.steps.approve.output.approved'\n",
    ))
    .await;
    let run = h.start("again", json!({})).await;
    h.parked(run).await;
    let nobody = h
        .engine
        .signal_run(h.scope, run, "made-up", json!({}), Actor::system("test"))
        .await;
    assert!(
        matches!(nobody, Err(EngineError::Conflict(_))),
        "{nobody:?}"
    );
    let huge = h
        .engine
        .signal_run(
            h.scope,
            run,
            "approve",
            json!({"x": "y".repeat(300 * 1024)}),
            Actor::system("test"),
        )
        .await;
    assert!(matches!(huge, Err(EngineError::BadInput(_))), "{huge:?}");
    h.engine
        .signal_run(
            h.scope,
            run,
            "approve",
            json!({"approved": false}),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(h.finished(run).await, RunStatus::Failed);
    h.engine
        .retry_run(h.scope, run, Actor::system("test"))
        .await
        .unwrap();
    h.parked(run).await;
    h.engine
        .signal_run(h.scope, run, "approve", json!({}), Actor::system("test"))
        .await
        .unwrap();
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
}
