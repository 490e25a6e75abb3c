//! Error analytics on the manual clock: failed steps are counted in one group per flow, step,
//! connector and class, whatever their messages say; a loop's failing item step is grouped as
//! `loop.step`; the trend counts per day.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use weft_types::RunStatus;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_grouped_by_fingerprint_with_a_daily_trend() {
    let mut h = harness().await;
    h.apply(
        "name: orders\ntrigger:\n  manual: {}\nsteps:\n  - id: check\n    fail: 'order {{ .trigger.body.n }} is bad'\n",
    )
    .await;
    h.apply(
        "name: batch\ntrigger:\n  manual: {}\nsteps:\n  - id: each\n    for_each: .trigger.body.items\n    steps:\n      - id: bad\n        if: '.item > 1'\n        fail: 'item {{ .item }} is bad'\n",
    )
    .await;
    let mut last = None;
    for n in 0..3 {
        let r = h.start("orders", json!({"n": n})).await;
        assert_eq!(h.finished(r).await, RunStatus::Failed);
        last = Some(r);
    }
    let r = h.start("batch", json!({"items": [1, 2, 3]})).await;
    assert_eq!(h.finished(r).await, RunStatus::Failed);
    // A day later, once more.
    h.clock.advance(Duration::from_secs(86_400));
    let r4 = h.start("orders", json!({"n": 9})).await;
    assert_eq!(h.finished(r4).await, RunStatus::Failed);

    let groups = h
        .engine
        .store()
        .list_errors(h.scope, None, 0, 0, None, 10)
        .await
        .unwrap();
    assert_eq!(groups.len(), 2, "{groups:#?}");
    let orders = groups.iter().find(|g| g.flow_name == "orders").unwrap();
    assert_eq!(orders.count, 4);
    assert_eq!(orders.step_id, "check");
    assert_eq!(orders.connector, "none");
    assert_eq!(orders.message, "order 9 is bad", "the latest message");
    assert_eq!(orders.sample_run, r4);
    assert_ne!(Some(orders.sample_run), last);
    let day0 = T0.div_euclid(86_400_000);
    assert_eq!(orders.trend, vec![(day0, 3), (day0 + 1, 1)]);
    assert_eq!(orders.last_seen - orders.first_seen, 86_400_000);
    // The loop's failure is its item step's, once; the loop itself is not a second group.
    let batch = groups.iter().find(|g| g.flow_name == "batch").unwrap();
    assert_eq!(batch.step_id, "each.bad");
    assert_eq!(batch.count, 1);
    assert_eq!(batch.message, "item 2 is bad");
    assert_eq!(
        batch.fingerprint,
        weft_engine::errors::fingerprint(batch.flow_id, "each.bad", "none", &batch.class)
    );
}
