//! The storage contract, case by case, against a real SQLite file.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use weft_store::{
    Actor, NewLog, NewRun, RunFilter, SqliteOptions, SqliteStore, StepCheckpoint, StepRecord,
    StoreError,
};
use weft_types::{FlowId, RunId, RunStatus, Scope, StepStatus};

async fn open() -> (SqliteStore, Scope, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(SqliteOptions {
        path: dir.path().join("w.db"),
        readers: 2,
    })
    .unwrap();
    let b = s.bootstrap_if_empty(1_000).await.unwrap().unwrap();
    assert!(b.owner_key.starts_with("wft_"));
    assert!(
        s.bootstrap_if_empty(1_000).await.unwrap().is_none(),
        "bootstrap happens once"
    );
    let scope = Scope {
        tenant: b.tenant,
        workspace: b.workspace,
    };
    (s, scope, dir)
}

fn new_run(scope: Scope, flow: FlowId, key: Option<&str>, now: i64) -> NewRun {
    NewRun {
        scope,
        id: RunId::new(),
        flow_id: flow,
        flow_name: "f".into(),
        flow_version: 1,
        trigger: json!({"n": now}),
        dedupe_key: key.map(str::to_string),
        dedupe_window_ms: 10_000,
        now,
        audit: None,
        parent: None,
        traceparent: None,
    }
}

fn op() -> Actor {
    Actor::operator()
}

#[tokio::test]
async fn flows_version_and_publish() {
    let (s, scope, _d) = open().await;
    let f = s
        .save_flow(scope, "f", json!({"v": 1}), true, op(), 5)
        .await
        .unwrap();
    assert_eq!((f.latest_version, f.published_version), (1, Some(1)));
    let f2 = s
        .save_flow(scope, "f", json!({"v": 2}), false, op(), 6)
        .await
        .unwrap();
    assert_eq!(
        (f2.id, f2.hook_id, f2.latest_version, f2.published_version),
        (f.id, f.hook_id, 2, Some(1))
    );
    let f3 = s.publish(scope, f.id, 2, op(), 7).await.unwrap();
    assert_eq!(f3.published_version, Some(2));
    assert!(matches!(
        s.publish(scope, f.id, 9, op(), 8).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.flow_version(scope, f.id, 1).await.unwrap().definition,
        json!({"v": 1})
    );
    assert_eq!(s.list_versions(scope, f.id).await.unwrap().len(), 2);
    assert_eq!(s.get_flow(scope, "f").await.unwrap().id, f.id);
    assert_eq!(
        s.get_flow(scope, &f.id.to_string()).await.unwrap().name,
        "f"
    );
    let hook = s.lookup_hook(f.hook_id).await.unwrap().unwrap();
    assert_eq!(
        (hook.scope, hook.flow_id, hook.published_version),
        (scope, f.id, Some(2))
    );
}

#[tokio::test]
async fn another_tenant_sees_nothing() {
    let (s, scope, _d) = open().await;
    let other = s
        .create_tenant("other", "o@example.com", Default::default(), op(), 2)
        .await
        .unwrap();
    let other = Scope {
        tenant: other.tenant,
        workspace: other.workspace,
    };
    let f = s
        .save_flow(scope, "f", json!({}), true, op(), 5)
        .await
        .unwrap();
    let r = s.insert_run(new_run(scope, f.id, None, 10)).await.unwrap();
    assert!(matches!(
        s.get_flow(other, "f").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.get_run(other, r.run_id).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        s.list_runs(
            other,
            RunFilter {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert!(s.list_flows(other, None, 10).await.unwrap().is_empty());
    assert!(matches!(
        s.cancel_run(other, r.run_id, op(), 11).await,
        Err(StoreError::NotFound)
    ));
    // The same flow name is free in the other tenant.
    s.save_flow(other, "f", json!({}), true, op(), 5)
        .await
        .unwrap();
}

#[tokio::test]
async fn dedupe_within_the_window_only() {
    let (s, scope, _d) = open().await;
    let f = FlowId::new();
    let a = s
        .insert_run(new_run(scope, f, Some("k"), 1_000))
        .await
        .unwrap();
    let b = s
        .insert_run(new_run(scope, f, Some("k"), 5_000))
        .await
        .unwrap();
    assert!(!a.duplicate);
    assert_eq!((b.run_id, b.duplicate), (a.run_id, true));
    let c = s
        .insert_run(new_run(scope, f, Some("k"), 20_000))
        .await
        .unwrap();
    assert!(!c.duplicate, "outside the window the key starts a new run");
    assert_ne!(c.run_id, a.run_id);
    let other_flow = s
        .insert_run(new_run(scope, FlowId::new(), Some("k"), 20_000))
        .await
        .unwrap();
    assert!(!other_flow.duplicate, "keys are per flow");
}

#[tokio::test]
async fn concurrent_writes_group_commit_and_all_land() {
    let (s, scope, _d) = open().await;
    let f = FlowId::new();
    let mut hs = Vec::new();
    for i in 0..2000 {
        let s = s.clone();
        hs.push(tokio::spawn(async move {
            s.insert_run(new_run(scope, f, Some(&format!("k{}", i % 1000)), 100))
                .await
                .unwrap()
        }));
    }
    let mut dups = 0;
    for h in hs {
        if h.await.unwrap().duplicate {
            dups += 1;
        }
    }
    assert_eq!(dups, 1000);
    let counts = s.count_runs().await.unwrap();
    assert_eq!(counts, vec![(RunStatus::Queued, 1000)]);
    // Group commit: 2000 concurrent writes shared far fewer transactions (fsyncs) than writes.
    let commits = s.commits();
    assert!(
        commits < 1000,
        "{commits} commits for 2000 concurrent writes"
    );
}

#[tokio::test]
async fn claim_checkpoint_finish_and_resume() {
    let (s, scope, _d) = open().await;
    let f = FlowId::new();
    let r = s
        .insert_run(new_run(scope, f, None, 100))
        .await
        .unwrap()
        .run_id;
    let claimed = s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].steps.is_empty());
    assert!(
        s.claim_runs("w2", 200, 30_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "a claimed run is not claimed twice"
    );
    let step = StepRecord {
        step_id: "a".into(),
        idx: 0,
        status: StepStatus::Succeeded,
        attempts: 1,
        output: Some(json!({"x": 1})),
        error: None,
        started_at: Some(200),
        finished_at: Some(210),
    };
    let cp = StepCheckpoint {
        step: step.clone(),
        logs: vec![NewLog::new(
            "info",
            Some("a".into()),
            weft_store::RunEvent::Log,
            "ok",
        )],
    };
    assert!(
        s.checkpoint_step(scope, r, "w1", cp.clone(), 210)
            .await
            .unwrap()
    );
    assert!(
        !s.checkpoint_step(scope, r, "w2", cp, 210).await.unwrap(),
        "only the lease owner checkpoints"
    );
    // The worker dies; its lease expires; the run is reclaimed with its checkpoint.
    assert_eq!(s.reclaim_expired(100_000).await.unwrap(), 1);
    let again = s.claim_runs("w2", 100_001, 30_000, 10).await.unwrap();
    assert_eq!(again[0].steps, vec![step]);
    assert!(
        s.finish_run(
            scope,
            r,
            "w2",
            RunStatus::Succeeded,
            Some(json!(1)),
            None,
            vec![],
            100_002
        )
        .await
        .unwrap()
    );
    let (run, steps) = s.get_run(scope, r).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.output, Some(json!(1)));
    assert_eq!(steps.len(), 1);
    let logs = s.run_logs(scope, r, 0, 100).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        s.cancel_run(scope, r, op(), 100_003).await.unwrap(),
        RunStatus::Succeeded,
        "finished runs stay finished"
    );
}

#[tokio::test]
async fn cancel_takes_the_run_from_its_worker() {
    let (s, scope, _d) = open().await;
    let r = s
        .insert_run(new_run(scope, FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
    assert_eq!(
        s.cancel_run(scope, r, op(), 300).await.unwrap(),
        RunStatus::Cancelled
    );
    assert!(
        !s.finish_run(
            scope,
            r,
            "w1",
            RunStatus::Succeeded,
            None,
            None,
            vec![],
            400
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.get_run(scope, r).await.unwrap().0.status,
        RunStatus::Cancelled
    );
}

#[tokio::test]
async fn list_filters_and_cursor() {
    let (s, scope, _d) = open().await;
    let f = FlowId::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            s.insert_run(new_run(scope, f, None, 100 + i))
                .await
                .unwrap()
                .run_id,
        );
    }
    s.insert_run(new_run(scope, FlowId::new(), None, 100))
        .await
        .unwrap();
    let page1 = s
        .list_runs(
            scope,
            RunFilter {
                flow_id: Some(f),
                limit: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let page2 = s
        .list_runs(
            scope,
            RunFilter {
                flow_id: Some(f),
                limit: 4,
                before: Some(page1[3].id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got: Vec<RunId> = page1.iter().chain(page2.iter()).map(|r| r.id).collect();
    ids.reverse();
    assert_eq!(got, ids);
    let since = s
        .list_runs(
            scope,
            RunFilter {
                flow_id: Some(f),
                since: Some(105),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
    let queued = s
        .list_runs(
            scope,
            RunFilter {
                status: Some(RunStatus::Queued),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(queued.len(), 8);
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let (scope, run) = {
        let s = SqliteStore::open(SqliteOptions {
            path: path.clone(),
            readers: 1,
        })
        .unwrap();
        let b = s.bootstrap_if_empty(1).await.unwrap().unwrap();
        let scope = Scope {
            tenant: b.tenant,
            workspace: b.workspace,
        };
        (
            scope,
            s.insert_run(new_run(scope, FlowId::new(), None, 5))
                .await
                .unwrap()
                .run_id,
        )
    };
    let s = SqliteStore::open(SqliteOptions { path, readers: 1 }).unwrap();
    assert_eq!(
        s.get_run(scope, run).await.unwrap().0.status,
        RunStatus::Queued
    );
    let mode: String = s.journal_mode().await.unwrap();
    assert_eq!(mode, "wal");
}
