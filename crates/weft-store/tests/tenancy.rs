//! Tenancy in the store: fair claims across tenants (decided by queue state, never by wall
//! time), per-tenant concurrency caps, and the tamper-evident audit chain.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use weft_store::{Actor, Limits, NewRun, SqliteOptions, Store};
use weft_types::{FlowId, RunId, Scope};

async fn open() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(SqliteOptions {
        path: dir.path().join("w.db"),
        readers: 2,
    })
    .unwrap();
    (s, dir)
}

async fn tenant(s: &Store, name: &str) -> (Scope, FlowId) {
    let b = s
        .create_tenant(
            name,
            &format!("owner@{name}.example"),
            Limits::default(),
            Actor::operator(),
            1,
        )
        .await
        .unwrap();
    let scope = Scope {
        tenant: b.tenant,
        workspace: b.workspace,
    };
    let f = s
        .save_flow(scope, "f", json!({}), true, Actor::operator(), 1)
        .await
        .unwrap();
    (scope, f.id)
}

fn run(scope: Scope, flow: FlowId, now: i64) -> NewRun {
    NewRun {
        scope,
        id: RunId::new(),
        flow_id: flow,
        flow_name: "f".into(),
        flow_version: 1,
        trigger: json!({}),
        dedupe_key: None,
        dedupe_window_ms: 0,
        now,
        audit: None,
        parent: None,
        traceparent: None,
    }
}

async fn enqueue(s: &Store, scope: Scope, flow: FlowId, n: usize, now: i64) {
    let mut pending = Vec::new();
    for _ in 0..n {
        let s = s.clone();
        pending.push(tokio::spawn(async move {
            s.insert_run(run(scope, flow, now)).await
        }));
        if pending.len() >= 4096 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_100k_runs_does_not_queue_another_tenants_run_behind_it() {
    let (s, _d) = open().await;
    let (a, fa) = tenant(&s, "a").await;
    let (b, fb) = tenant(&s, "b").await;
    enqueue(&s, a, fa, 100_000, 10).await;
    // A's worker pool is busy with 64 of A's runs.
    let first = s.claim_runs("w1", 20, 30_000, 64).await.unwrap();
    assert_eq!(first.len(), 64);
    assert!(first.iter().all(|c| c.run.scope == a));
    // B's one run arrives after all of A's, then one slot frees up: B's run takes it.
    let rb = s.insert_run(run(b, fb, 30)).await.unwrap();
    let next = s.claim_runs("w1", 40, 30_000, 1).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].run.id, rb.run_id,
        "B's run is first in line, not 99,937th"
    );
    // With B served, A gets every further slot.
    let more = s.claim_runs("w1", 50, 30_000, 8).await.unwrap();
    assert_eq!(more.len(), 8);
    assert!(more.iter().all(|c| c.run.scope == a));
}

#[tokio::test]
async fn weights_split_a_contended_batch_and_caps_hold_across_claims() {
    let (s, _d) = open().await;
    let (a, fa) = tenant(&s, "a").await;
    let (b, fb) = tenant(&s, "b").await;
    enqueue(&s, a, fa, 200, 10).await;
    enqueue(&s, b, fb, 200, 10).await;
    s.set_tenant_plan(a.tenant, Limits::default(), 3, Actor::operator(), 11)
        .await
        .unwrap();
    let got = s.claim_runs("w1", 20, 30_000, 40).await.unwrap();
    let from_a = got.iter().filter(|c| c.run.scope == a).count();
    assert_eq!((from_a, got.len() - from_a), (30, 10));
    // B may run at most 12 at once, however many slots are free.
    let cap = Limits {
        concurrent_runs: Some(12),
        ..Limits::default()
    };
    s.set_tenant_plan(b.tenant, cap, 1, Actor::operator(), 21)
        .await
        .unwrap();
    let got = s.claim_runs("w1", 30, 30_000, 100).await.unwrap();
    let from_b = got.iter().filter(|c| c.run.scope == b).count();
    assert_eq!(from_b, 2, "10 running + 2 = the cap of 12");
    assert_eq!(got.len() - from_b, 98);
    // Runs not yet due are not claimed for anyone.
    let (c, fc) = tenant(&s, "c").await;
    enqueue(&s, c, fc, 3, 1_000_000).await;
    let got = s.claim_runs("w1", 40, 30_000, 500).await.unwrap();
    assert!(got.iter().all(|x| x.run.scope != c));
}

#[tokio::test]
async fn the_audit_chain_names_an_edited_or_deleted_entry() {
    let (s, d) = open().await;
    let (a, _) = tenant(&s, "a").await;
    let (b, _) = tenant(&s, "b").await;
    for i in 0..5 {
        s.save_flow(
            a,
            &format!("g{i}"),
            json!({}),
            false,
            Actor::operator(),
            100 + i,
        )
        .await
        .unwrap();
    }
    let ok = s.verify_audit(a.tenant).await.unwrap();
    assert_eq!(ok.broken, None);
    assert_eq!(ok.entries, 4 + 5, "tenant, workspace, key, flow f, 5 flows");
    let path = d.path().join("w.db");
    let raw = rusqlite::Connection::open(&path).unwrap();
    // Edit entry 6 (as someone with the database file might).
    raw.execute(
        "UPDATE audit_log SET actor_id = 'someone-else' WHERE tenant_id = ?1 AND seq = 6",
        [a.tenant.to_string()],
    )
    .unwrap();
    let bad = s.verify_audit(a.tenant).await.unwrap();
    assert_eq!(bad.broken.as_ref().map(|b| b.0), Some(6), "{bad:?}");
    assert!(bad.broken.unwrap().1.contains("edited"));
    // Another tenant's chain is untouched.
    assert_eq!(s.verify_audit(b.tenant).await.unwrap().broken, None);
    // Deleting the newest entry is caught by the chain head kept with the tenant.
    let (s2, d2) = open().await;
    let (x, _) = tenant(&s2, "x").await;
    let raw = rusqlite::Connection::open(d2.path().join("w.db")).unwrap();
    raw.execute(
        "DELETE FROM audit_log WHERE tenant_id = ?1 AND seq = 4",
        [x.tenant.to_string()],
    )
    .unwrap();
    let bad = s2.verify_audit(x.tenant).await.unwrap();
    assert_eq!(bad.broken.map(|b| b.0), Some(4));
}

#[tokio::test]
async fn a_refused_change_writes_no_audit_entry() {
    let (s, _d) = open().await;
    let (a, f) = tenant(&s, "a").await;
    let before = s.verify_audit(a.tenant).await.unwrap().entries;
    s.set_tenant_plan(
        a.tenant,
        Limits {
            runs_per_month: Some(0),
            ..Limits::default()
        },
        1,
        Actor::operator(),
        5,
    )
    .await
    .unwrap();
    let mut r = run(a, f, 6);
    r.audit = Some(Actor::operator());
    assert!(matches!(
        s.insert_run(r).await,
        Err(weft_store::StoreError::Quota {
            limit: "runs_per_month",
            ..
        })
    ));
    let after = s.verify_audit(a.tenant).await.unwrap();
    assert_eq!(after.entries, before + 1, "only the plan change");
    assert_eq!(after.broken, None);
}

#[tokio::test]
async fn stored_data_quota_counts_triggers_and_refuses_past_the_limit() {
    let (s, _d) = open().await;
    let (a, f) = tenant(&s, "a").await;
    let plan = Limits {
        stored_bytes: Some(1_000),
        ..Limits::default()
    };
    s.set_tenant_plan(a.tenant, plan, 1, Actor::operator(), 2)
        .await
        .unwrap();
    let mut big = run(a, f, 3);
    big.trigger = json!({"blob": "x".repeat(600)});
    s.insert_run(big.clone()).await.unwrap();
    assert!(s.usage(a.tenant, 3).await.unwrap().stored_bytes > 600);
    big.id = RunId::new();
    let err = s.insert_run(big).await.unwrap_err();
    assert!(
        matches!(
            err,
            weft_store::StoreError::Quota {
                limit: "stored_bytes",
                ..
            }
        ),
        "{err:?}"
    );
    // Small events still fit.
    s.insert_run(run(a, f, 4)).await.unwrap();
    assert_eq!(s.usage(a.tenant, 4).await.unwrap().runs_in_month, 2);
}
