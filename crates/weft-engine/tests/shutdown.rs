//! Graceful shutdown: a step in flight either finishes within the deadline and its run is
//! recorded, or is handed back and re-sent by the next process with the same idempotency key.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use weft_engine::Engine;
use weft_types::RunStatus;

use common::*;

fn flow(url: &str) -> String {
    format!(
        "name: slow\ntrigger:\n  manual: {{}}\nsteps:\n  - id: call\n    action: http.request\n    input: {{ url: '{url}/x', method: POST, body: {{a: 1}}, timeout: 300s }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_still_in_flight_at_the_deadline_is_handed_back_and_resent_with_its_key() {
    let mut h = harness().await;
    let (url, mut reqs, gate) = gated_sink().await;
    h.apply(&flow(&url)).await;
    let run = h.start("slow", serde_json::json!({})).await;
    let (first, _) = reqs.recv().await.unwrap();
    assert!(!first.is_empty(), "the request carries an idempotency key");
    // The answer never comes while this process lives: shutdown waits its deadline, then hands
    // the run back instead of waiting for the step.
    tokio::time::timeout(
        Duration::from_secs(20),
        h.engine.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("shutdown returns after its deadline");
    let (r, _) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.status, RunStatus::Queued, "handed back, not left leased");
    // The next process claims it at once and re-sends the step with the same key.
    gate.add_permits(16);
    h.engine = Engine::new(h.opts.clone());
    h.events = h.engine.subscribe();
    h.engine.start(true).await.unwrap();
    assert_eq!(h.finished(run).await, RunStatus::Succeeded);
    assert_eq!(reqs.recv().await.unwrap().0, first);
    assert!(
        reqs.try_recv().is_err(),
        "sent twice in all: before and after the hand-back"
    );
    // The stopped step did not write after its run was handed back: one record, succeeded.
    let (_, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].attempts, 1, "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_answers_before_the_deadline_finishes_its_run_during_shutdown() {
    let h = harness().await;
    let (url, mut reqs, gate) = gated_sink().await;
    h.apply(&flow(&url)).await;
    let run = h.start("slow", serde_json::json!({})).await;
    reqs.recv().await.unwrap();
    // Shutdown starts first (join! polls in order: claims stop), then the answer arrives.
    let engine = h.engine.clone();
    tokio::join!(engine.shutdown(Duration::from_secs(30)), async {
        tokio::task::yield_now().await;
        gate.add_permits(1);
    });
    let (r, steps) = h.engine.store().get_run(h.scope, run).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(steps.len(), 1);
    assert!(reqs.try_recv().is_err(), "the step was sent once");
}
