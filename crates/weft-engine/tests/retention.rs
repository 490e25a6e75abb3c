//! Retention on the manual clock: finished runs older than their workspace's retention are
//! deleted with their steps and logs; newer runs, waiting runs and workspaces without
//! retention keep theirs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use weft_store::{Actor, StoreError};
use weft_types::RunStatus;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_runs_are_deleted_and_nothing_else() {
    let mut h = harness().await;
    h.apply("name: quick\ntrigger:\n  manual: {}\nsteps:\n  - id: a\n    transform: '1'\n")
        .await;
    h.apply("name: patient\ntrigger:\n  manual: {}\nsteps:\n  - id: ok\n    approval: {}\n")
        .await;
    let old = h.start("quick", json!({})).await;
    assert_eq!(h.finished(old).await, RunStatus::Succeeded);
    let waiting = h.start("patient", json!({})).await;
    assert_eq!(h.parked(waiting).await, None);
    // Nothing is deleted while the workspace keeps runs for ever.
    h.clock.advance(Duration::from_secs(3 * 86_400));
    assert_eq!(h.engine.enforce_retention().await.unwrap(), 0);
    let store = h.engine.store().clone();
    store
        .set_retention(h.scope, Some(2), Actor::system("test"), T0)
        .await
        .unwrap();
    let young = h.start("quick", json!({})).await;
    assert_eq!(h.finished(young).await, RunStatus::Succeeded);
    // (The cleanup task, woken by the clock above, may be running a pass too.)
    assert!(h.engine.enforce_retention().await.unwrap() <= 1);
    assert!(matches!(
        store.get_run(h.scope, old).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        store
            .run_logs(h.scope, old, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_run(h.scope, young).await.unwrap().0.status,
        RunStatus::Succeeded
    );
    let (w, _) = store.get_run(h.scope, waiting).await.unwrap();
    assert_eq!(
        w.status,
        RunStatus::Waiting,
        "an unfinished run is never expired"
    );
    // Two more days: the young run expires too (the cleanup task, woken by the clock, may be
    // the one that deletes it); then nothing is left to delete.
    h.clock.advance(Duration::from_secs(2 * 86_400 + 1));
    h.engine.enforce_retention().await.unwrap();
    assert!(matches!(
        store.get_run(h.scope, young).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(h.engine.enforce_retention().await.unwrap(), 0);
    assert!(store.get_run(h.scope, waiting).await.is_ok());
}
