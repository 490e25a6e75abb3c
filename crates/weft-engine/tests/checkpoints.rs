//! Which step results wait for the run's next write: a pure transform's goes with the next
//! step's checkpoint (after a crash it is evaluated again, to the same output); the last step's
//! goes with the run's end. Nothing else waits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::json;
use weft_engine::{Engine, EngineEvent};
use weft_types::{RunStatus, StepStatus};

use common::*;

fn flow(url: &str) -> String {
    format!(
        "name: shaped\ntrigger:\n  manual: {{}}\nsteps:\n  - id: shape\n    transform: '{{n: (.trigger.body.x * 2), who: (.trigger.body.name | ascii_upcase)}}'\n  - id: call\n    action: http.request\n    input: {{ url: '{url}/x', method: POST, body: '{{{{ .steps.shape.output }}}}', timeout: 300s }}\n"
    )
}

/// The first request the sink receives; fails with the run's state if none comes.
async fn first_request(
    h: &Harness,
    run: weft_types::RunId,
    reqs: &mut tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) -> (String, serde_json::Value) {
    match tokio::time::timeout(Duration::from_secs(20), reqs.recv()).await {
        Ok(Some(r)) => r,
        _ => {
            let state = h.engine.store().get_run(h.scope, run).await;
            panic!("no request reached the sink; the run: {state:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_transform_is_written_with_the_next_step_and_redone_identically_after_a_crash() {
    let mut h = harness().await;
    let (url, mut reqs, gate) = gated_sink().await;
    h.apply(&flow(&url)).await;
    let run = h.start("shaped", json!({"x": 21, "name": "ada"})).await;
    let (key, body) = first_request(&h, run, &mut reqs).await;
    assert_eq!(body, json!({"n": 42, "who": "ADA"}));
    // The call is in flight: the transform's result is not written yet, nor anything else.
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.status, RunStatus::Running);
    assert!(
        steps.is_empty(),
        "nothing written before the call ends: {steps:?}"
    );
    // The process stops with the call in flight; the next one evaluates the transform again
    // and re-sends the call with the same key and the same body.
    tokio::time::timeout(
        Duration::from_secs(20),
        h.engine.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("shutdown returns after its deadline");
    gate.add_permits(16);
    h.engine = Engine::new(h.opts.clone());
    h.events = h.engine.subscribe();
    h.engine.start(true).await.unwrap();
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    assert_eq!(reqs.recv().await.unwrap(), (key, body));
    let (_, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    let got: Vec<_> = steps
        .iter()
        .map(|s| (s.step_id.as_str(), s.status, s.attempts))
        .collect();
    assert_eq!(
        got,
        [
            ("shape", StepStatus::Succeeded, 1),
            ("call", StepStatus::Succeeded, 1)
        ]
    );
    assert_eq!(steps[0].output, Some(json!({"n": 42, "who": "ADA"})));
    // One start and one success per step in the log, in the order they happened.
    let events: Vec<(String, Option<String>)> = h
        .engine
        .store()
        .run_logs(h.scope, run, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.event, l.step_id))
        .collect();
    let want = [
        ("RunStarted", None),
        ("StepStarted", Some("shape")),
        ("StepSucceeded", Some("shape")),
        ("StepStarted", Some("call")),
        ("StepSucceeded", Some("call")),
        ("RunSucceeded", None),
    ];
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(e, s)| (e.to_string(), s.map(str::to_string)))
        .collect();
    assert_eq!(events, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_steps_result_is_written_with_the_runs_end() {
    let mut h = harness().await;
    let (url, mut reqs, gate) = gated_sink().await;
    h.apply(&flow(&url)).await;
    let run = h.start("shaped", json!({"x": 1, "name": "b"})).await;
    first_request(&h, run, &mut reqs).await;
    gate.add_permits(1);
    // By the time the last step is reported finished, the run's end is on record with it.
    loop {
        match h.next_event().await {
            EngineEvent::StepFinished { run: r, step, .. } if r == run && step == "call" => break,
            EngineEvent::RunFinished { run: r, .. } if r == run => {
                panic!("the run finished before its last step was reported")
            }
            _ => {}
        }
    }
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(steps.len(), 2);
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
}
