//! Workspace events on the manual clock: `wait_for_event` steps resumed by a matching event
//! (by name and key) from the API or another flow's `emit` step, `event` triggers (by name and
//! by another flow's end), idempotent publishing, and the chain limit that stops a flow which
//! emits the event that starts it.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use weft_engine::{EngineError, NewEvent};
use weft_store::Actor;
use weft_types::{RunStatus, StepStatus};

mod common;
use common::*;

fn flow(name: &str, trigger: &str, steps: &str) -> String {
    format!("name: {name}\ntrigger:\n  {trigger}\nsteps:\n{steps}")
}

fn event(name: &str, key: Option<&str>, data: Value, id: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.map(str::to_string),
        name: name.into(),
        key: key.map(str::to_string),
        data,
        source: json!({"api": true}),
        depth: 0,
    }
}

async fn runs_of(h: &Harness, flow: &str) -> Vec<weft_store::RunRecord> {
    let f = h.engine.store().get_flow(h.scope, flow).await.unwrap();
    h.engine
        .store()
        .list_runs(
            h.scope,
            weft_store::RunFilter {
                flow_id: Some(f.id),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_resumes_only_the_runs_waiting_for_its_name_and_key() {
    let mut h = harness().await;
    h.apply(&flow(
        "orders",
        "manual: {}",
        "  - id: paid\n    wait_for_event: {event: order.paid, key: '{{ .trigger.body.order }}', timeout: 1d}\n  - id: done\n    transform: '.steps.paid.output.data.amount'\n",
    ))
    .await;
    let a = h.start("orders", json!({"order": "A-1"})).await;
    h.parked(a).await;
    let b = h.start("orders", json!({"order": "B-2"})).await;
    h.parked(b).await;

    // Another key, and no key: neither resumes a keyed wait.
    for key in [Some("C-3"), None] {
        let p = h
            .engine
            .publish_event(
                h.scope,
                event("order.paid", key, json!({}), None),
                Actor::system("test"),
            )
            .await
            .unwrap();
        assert!(p.resumed.is_empty(), "{key:?} resumed {:?}", p.resumed);
    }
    let p = h
        .engine
        .publish_event(
            h.scope,
            event(
                "order.paid",
                Some("A-1"),
                json!({"amount": 42}),
                Some("evt-1"),
            ),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(p.id, "evt-1");
    assert_eq!(p.resumed, vec![a]);
    assert_eq!(h.finished(a).await, RunStatus::Succeeded);
    let (r, steps) = h.engine.store().get_run(h.scope, a).await.unwrap();
    assert_eq!(r.output, Some(json!(42)));
    let paid = steps.iter().find(|s| s.step_id == "paid").unwrap();
    let out = paid.output.clone().unwrap();
    assert_eq!(out["name"], "order.paid");
    assert_eq!(out["key"], "A-1");
    assert_eq!(out["id"], "evt-1");
    // The same event again resumes nothing more; B still waits.
    let again = h
        .engine
        .publish_event(
            h.scope,
            event(
                "order.paid",
                Some("A-1"),
                json!({"amount": 42}),
                Some("evt-1"),
            ),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert!(again.resumed.is_empty());
    let (rb, _) = h.engine.store().get_run(h.scope, b).await.unwrap();
    assert_eq!(rb.status, RunStatus::Waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_step_of_another_flow_resumes_the_waiting_run() {
    let mut h = harness().await;
    h.apply(&flow(
        "approval-flow",
        "manual: {}",
        "  - id: verdict\n    wait_for_event: {event: review.done, key: '{{ .trigger.body.doc }}'}\n",
    ))
    .await;
    h.apply(&flow(
        "reviewer",
        "manual: {}",
        "  - id: tell\n    emit: {event: review.done, key: '{{ .trigger.body.doc }}', data: {ok: '{{ .trigger.body.ok }}'}}\n",
    ))
    .await;
    let waiting = h.start("approval-flow", json!({"doc": "d7"})).await;
    h.parked(waiting).await;
    let rev = h.start("reviewer", json!({"doc": "d7", "ok": true})).await;
    assert_eq!(h.finished(rev).await, RunStatus::Succeeded);
    assert_eq!(h.finished(waiting).await, RunStatus::Succeeded);
    let (r, steps) = h.engine.store().get_run(h.scope, rev).await.unwrap();
    let tell = steps.iter().find(|s| s.step_id == "tell").unwrap();
    assert_eq!(
        tell.output.as_ref().unwrap()["resumed"],
        json!([waiting.to_string()])
    );
    assert_eq!(r.status, RunStatus::Succeeded);
    let (w, _) = h.engine.store().get_run(h.scope, waiting).await.unwrap();
    let out = w.output.unwrap();
    assert_eq!(out["data"], json!({"ok": true}));
    assert_eq!(out["source"]["flow"], "reviewer");
    assert_eq!(out["source"]["run_id"], rev.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_trigger_starts_one_run_per_event_id() {
    let mut h = harness().await;
    h.apply(&flow(
        "on-signup",
        "event: {name: user.signed_up}",
        "  - id: greet\n    transform: '\"hi \" + .trigger.body.name'\n",
    ))
    .await;
    let p = h
        .engine
        .publish_event(
            h.scope,
            event(
                "user.signed_up",
                None,
                json!({"name": "ada"}),
                Some("signup-1"),
            ),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(p.started.len(), 1);
    let run = p.started[0];
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.output, Some(json!("hi ada")));
    assert_eq!(r.trigger["kind"], "event");
    assert_eq!(r.trigger["event"]["id"], "signup-1");
    // Published again (a client retrying): the same run, no second one.
    let again = h
        .engine
        .publish_event(
            h.scope,
            event(
                "user.signed_up",
                None,
                json!({"name": "ada"}),
                Some("signup-1"),
            ),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(again.started, vec![run]);
    assert_eq!(runs_of(&h, "on-signup").await.len(), 1);
    // Another name starts nothing.
    let other = h
        .engine
        .publish_event(
            h.scope,
            event("user.left", None, json!({}), None),
            Actor::system("test"),
        )
        .await
        .unwrap();
    assert!(other.started.is_empty() && other.resumed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_flows_end_starts_the_flow_that_listens_for_it() {
    let mut h = harness().await;
    h.apply(&flow(
        "upstream",
        "manual: {}",
        "  - id: work\n    transform: '.trigger.body.n + 1'\n",
    ))
    .await;
    h.apply(&flow(
        "downstream",
        "event: {flow: upstream}",
        "  - id: next\n    transform: '.trigger.body.output * 10'\n",
    ))
    .await;
    h.apply(&flow(
        "on-failure",
        "event: {flow: upstream, status: failed}",
        "  - id: note\n    transform: '.trigger.body.error'\n",
    ))
    .await;
    let up = h.start("upstream", json!({"n": 4})).await;
    assert_eq!(h.finished(up).await, RunStatus::Succeeded);
    let down = loop {
        let runs = runs_of(&h, "downstream").await;
        if let Some(r) = runs.first() {
            break r.id;
        }
        h.run_finished().await;
    };
    let status = match h
        .engine
        .store()
        .get_run(h.scope, down)
        .await
        .unwrap()
        .0
        .status
    {
        RunStatus::Succeeded => RunStatus::Succeeded,
        _ => h.finished(down).await,
    };
    assert_eq!(status, RunStatus::Succeeded);
    let (r, _) = h.engine.store().get_run(h.scope, down).await.unwrap();
    assert_eq!(r.output, Some(json!(50)));
    assert_eq!(r.trigger["body"]["run_id"], up.to_string());
    assert_eq!(r.trigger["event"]["name"], "flow.upstream.succeeded");
    assert!(
        runs_of(&h, "on-failure").await.is_empty(),
        "a success does not start the failure listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_that_emits_its_own_trigger_stops_at_the_chain_limit() {
    let mut h = harness().await;
    h.apply(&flow(
        "echo",
        "event: {name: ping}",
        "  - id: again\n    emit: {event: ping, data: '{{ .trigger.body }}'}\n",
    ))
    .await;
    h.engine
        .publish_event(
            h.scope,
            event("ping", None, json!(1), None),
            Actor::system("test"),
        )
        .await
        .unwrap();
    // The outside event starts a run at depth 0; runs at depth 0..=9 emit events that start
    // the next; the one at depth 10 fails its emit step instead of looping.
    let mut failed = None;
    while failed.is_none() {
        let (run, status) = h.run_finished().await;
        if status == RunStatus::Failed {
            failed = Some(run);
        }
    }
    let (r, steps) = h
        .engine
        .store()
        .get_run(h.scope, failed.unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.trigger["event"]["depth"],
        json!(weft_engine::MAX_EVENT_DEPTH)
    );
    let again = steps.iter().find(|s| s.step_id == "again").unwrap();
    assert_eq!(again.status, StepStatus::Failed);
    assert!(
        again.error.as_deref().unwrap().contains("chain"),
        "{:?}",
        again.error
    );
    assert_eq!(
        runs_of(&h, "echo").await.len() as u64,
        weft_engine::MAX_EVENT_DEPTH + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_refused_with_the_field_named() {
    let h = harness().await;
    for (ev, field) in [
        (event("", None, json!(null), None), "name"),
        (event("has space", None, json!(null), None), "name"),
        (event("ok", Some(""), json!(null), None), "key"),
        (
            event("ok", None, json!("x".repeat(300 * 1024)), None),
            "data",
        ),
        (event("ok", None, json!(null), Some("bad id!")), "id"),
    ] {
        match h
            .engine
            .publish_event(h.scope, ev, Actor::system("test"))
            .await
        {
            Err(EngineError::BadInput(errs)) => assert_eq!(errs[0].path, field),
            other => panic!("expected a bad-input error for {field}, got {other:?}"),
        }
    }
}
