//! One storage contract, two backends: each case below runs against SQLite and against a real
//! PostgreSQL (started by `scripts/pg.sh`, as `scripts/test.sh` and CI do). The PostgreSQL store
//! is being filled in operation by operation; every operation it has is covered here.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use weft_store::postgres::{PgStore, migrate};
use weft_store::{Actor, Limits, SqliteOptions, SqliteStore, StoreError};
use weft_types::Scope;

/// Keeps a backend's storage alive for the test.
#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    Db(String),
}

async fn sqlite() -> (SqliteStore, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(SqliteOptions {
        path: dir.path().join("w.db"),
        readers: 2,
    })
    .unwrap();
    (s, Guard::Dir(dir))
}

async fn postgres() -> (PgStore, Guard) {
    use sqlx::Connection;
    let var = |n: &str| {
        std::env::var(n).unwrap_or_else(|_| {
            panic!("{n} is not set: start PostgreSQL with `eval \"$(scripts/pg.sh start)\"` (scripts/test.sh does this)")
        })
    };
    let (owner, app) = (
        var("WEFT_TEST_DATABASE_URL"),
        var("WEFT_TEST_APP_DATABASE_URL"),
    );
    let name = format!("weft_c_{}", &weft_types::random_secret()[..16]);
    let mut c = sqlx::postgres::PgConnection::connect(&owner).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .unwrap();
    let swap = |url: &str| format!("{}/{name}", url.rsplit_once('/').unwrap().0);
    migrate(&swap(&owner), "weft_app").await.unwrap();
    let s = PgStore::connect(&swap(&app), 4).await.unwrap();
    (s, Guard::Db(name))
}

/// Runs `$body` with `$s` bound to each backend in turn.
macro_rules! conformance {
    ($name:ident, |$s:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let ($s, _g) = super::sqlite().await;
                $body
            }
            #[tokio::test]
            async fn postgres() {
                let ($s, _g) = super::postgres().await;
                $body
            }
        }
    };
}

fn op() -> Actor {
    Actor::operator()
}

conformance!(bootstrap_once_and_keys_resolve, |s| {
    let b = s.bootstrap_if_empty(1_000).await.unwrap().unwrap();
    assert!(b.owner_key.starts_with("wft_"));
    assert!(s.bootstrap_if_empty(1_000).await.unwrap().is_none());
    let k = s.resolve_key(&b.owner_key, 2_000).await.unwrap().unwrap();
    assert_eq!(k.scope.tenant, b.tenant);
    assert_eq!(k.workspace_slug, "default");
    assert_eq!(k.user, Some(b.owner));
    assert!(s.resolve_key("wft_nope", 2_000).await.unwrap().is_none());
});

conformance!(flows_save_version_publish_and_delete, |s| {
    let b = s.bootstrap_if_empty(1).await.unwrap().unwrap();
    let scope = Scope {
        tenant: b.tenant,
        workspace: b.workspace,
    };
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
        (f2.id, f2.latest_version, f2.published_version),
        (f.id, 2, Some(1))
    );
    assert_eq!(
        f2.hook_id, f.hook_id,
        "the hook id is stable across versions"
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
    let vs = s.list_versions(scope, f.id).await.unwrap();
    assert_eq!(vs.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(s.get_flow(scope, "f").await.unwrap().id, f.id);
    assert_eq!(
        s.get_flow(scope, &f.id.to_string()).await.unwrap().name,
        "f"
    );
    s.save_flow(scope, "a", json!({}), false, op(), 9)
        .await
        .unwrap();
    let page = s.list_flows(scope, None, 1).await.unwrap();
    assert_eq!(page[0].name, "a");
    let rest = s.list_flows(scope, Some("a".into()), 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        vec!["f"]
    );
    s.delete_flow(scope, f.id, op(), 10).await.unwrap();
    assert!(matches!(
        s.get_flow(scope, "f").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_flow(scope, f.id, op(), 11).await,
        Err(StoreError::NotFound)
    ));
    let chain = s.verify_audit(b.tenant).await.unwrap();
    assert_eq!(chain.broken, None);
    assert_eq!(
        chain.entries,
        3 + 5,
        "bootstrap 3; create, update, publish, create, delete"
    );
});

conformance!(another_tenants_flows_are_not_found, |s| {
    let a = s.bootstrap_if_empty(1).await.unwrap().unwrap();
    let b = s
        .create_tenant("b", "b@example.com", Limits::default(), op(), 2)
        .await
        .unwrap();
    let (sa, sb) = (
        Scope {
            tenant: a.tenant,
            workspace: a.workspace,
        },
        Scope {
            tenant: b.tenant,
            workspace: b.workspace,
        },
    );
    let f = s
        .save_flow(sa, "secret", json!({}), true, op(), 3)
        .await
        .unwrap();
    assert!(matches!(
        s.get_flow(sb, "secret").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.get_flow(sb, &f.id.to_string()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.flow_version(sb, f.id, 1).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.list_versions(sb, f.id).await.unwrap().is_empty());
    assert!(s.list_flows(sb, None, 10).await.unwrap().is_empty());
    assert!(matches!(
        s.publish(sb, f.id, 1, op(), 4).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_flow(sb, f.id, op(), 5).await,
        Err(StoreError::NotFound)
    ));
    // Both tenants may use the same flow name.
    s.save_flow(sb, "secret", json!({}), true, op(), 6)
        .await
        .unwrap();
    assert_eq!(s.get_flow(sa, "secret").await.unwrap().id, f.id);
    assert_eq!(s.verify_audit(b.tenant).await.unwrap().broken, None);
});

conformance!(the_active_flow_quota_refuses_and_writes_nothing, |s| {
    let plan = Limits {
        active_flows: Some(1),
        ..Limits::default()
    };
    let b = s
        .create_tenant("q", "q@example.com", plan, op(), 1)
        .await
        .unwrap();
    let scope = Scope {
        tenant: b.tenant,
        workspace: b.workspace,
    };
    s.save_flow(scope, "one", json!({}), true, op(), 2)
        .await
        .unwrap();
    let before = s.verify_audit(b.tenant).await.unwrap().entries;
    assert!(matches!(
        s.save_flow(scope, "two", json!({}), true, op(), 3).await,
        Err(StoreError::Quota {
            limit: "active_flows",
            ..
        })
    ));
    assert!(matches!(
        s.get_flow(scope, "two").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.verify_audit(b.tenant).await.unwrap().entries, before);
    // Republishing the active flow is fine; a draft is fine.
    s.save_flow(scope, "one", json!({"v": 2}), true, op(), 4)
        .await
        .unwrap();
    s.save_flow(scope, "two", json!({}), false, op(), 5)
        .await
        .unwrap();
});

conformance!(
    keys_create_list_revoke_expire_and_act_for_their_creator,
    |s| {
        let b = s.bootstrap_if_empty(1).await.unwrap().unwrap();
        let scope = Scope {
            tenant: b.tenant,
            workspace: b.workspace,
        };
        let new = |role, expires_at| weft_store::NewKey {
            name: "k".into(),
            role,
            created_by: Some(b.owner),
            expires_at,
        };
        let (k, secret) = s
            .create_key(scope, new(weft_types::Role::Editor, None), op(), 2)
            .await
            .unwrap();
        assert!(secret.starts_with(&k.prefix));
        let id = s.resolve_key(&secret, 3).await.unwrap().unwrap();
        assert_eq!((id.key_id, id.role), (k.id, weft_types::Role::Editor));
        let (_, short) = s
            .create_key(scope, new(weft_types::Role::Viewer, Some(10)), op(), 4)
            .await
            .unwrap();
        assert!(s.resolve_key(&short, 9).await.unwrap().is_some());
        assert!(
            s.resolve_key(&short, 10).await.unwrap().is_none(),
            "expired"
        );
        s.touch_key(scope, k.id, 50).await.unwrap();
        let listed = s.list_keys(scope).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(
            listed.iter().find(|x| x.id == k.id).unwrap().last_used_at,
            Some(50)
        );
        let r = s.revoke_key(scope, k.id, op(), 60).await.unwrap();
        assert_eq!(r.revoked_at, Some(60));
        assert!(s.resolve_key(&secret, 61).await.unwrap().is_none());
        // Revoking again changes nothing and writes no second audit entry.
        let before = s.verify_audit(b.tenant).await.unwrap().entries;
        assert_eq!(
            s.revoke_key(scope, k.id, op(), 70)
                .await
                .unwrap()
                .revoked_at,
            Some(60)
        );
        assert_eq!(s.verify_audit(b.tenant).await.unwrap().entries, before);
        // Another tenant's scope neither lists nor revokes it.
        let other = s
            .create_tenant("o", "o@example.com", Limits::default(), op(), 80)
            .await
            .unwrap();
        let os = Scope {
            tenant: other.tenant,
            workspace: other.workspace,
        };
        assert!(s.list_keys(os).await.unwrap().iter().all(|x| x.id != k.id));
        assert!(matches!(
            s.revoke_key(os, k.id, op(), 81).await,
            Err(StoreError::NotFound)
        ));
    }
);

conformance!(tenant_plans_patch_and_list, |s| {
    let b = s.bootstrap_if_empty(1).await.unwrap().unwrap();
    let t = s.get_tenant(b.tenant).await.unwrap();
    assert_eq!(
        (t.name.as_str(), t.weight, t.limits.clone()),
        ("default", 1, Limits::default())
    );
    let plan = Limits {
        runs_per_month: Some(10),
        ..Limits::default()
    };
    let t = s
        .patch_tenant_plan(b.tenant, Some(plan.clone()), None, op(), 2)
        .await
        .unwrap();
    assert_eq!((t.limits.clone(), t.weight), (plan.clone(), 1));
    let t = s
        .patch_tenant_plan(b.tenant, None, Some(5), op(), 3)
        .await
        .unwrap();
    assert_eq!(
        (t.limits, t.weight),
        (plan, 5),
        "a patch keeps what it does not name"
    );
    s.create_tenant("x", "x@example.com", Limits::default(), op(), 4)
        .await
        .unwrap();
    let all = s.list_tenants(None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    let page = s
        .list_tenants(Some(all[0].id.to_string()), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert!(matches!(
        s.get_tenant(weft_types::TenantId::new()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.verify_audit(b.tenant).await.unwrap().broken, None);
});

conformance!(sessions_expire_and_end_and_settings_persist, |s| {
    let b = s.bootstrap_if_empty(1).await.unwrap().unwrap();
    s.create_session(b.owner, "h1".into(), "csrf".into(), 100, 10)
        .await
        .unwrap();
    let got = s.resolve_session("h1".into(), 50).await.unwrap().unwrap();
    assert_eq!(
        (got.user_id, got.email.as_str(), got.csrf_token.as_str()),
        (b.owner, "owner@localhost", "csrf")
    );
    assert!(
        s.resolve_session("h1".into(), 100).await.unwrap().is_none(),
        "expired"
    );
    assert!(
        s.resolve_session("nope".into(), 50)
            .await
            .unwrap()
            .is_none()
    );
    s.create_session(b.owner, "h2".into(), "c2".into(), 1_000, 20)
        .await
        .unwrap();
    s.delete_session("h2".into()).await.unwrap();
    assert!(s.resolve_session("h2".into(), 30).await.unwrap().is_none());
    assert_eq!(s.setting("k").await.unwrap(), None);
    s.set_setting("k", "v1").await.unwrap();
    s.set_setting("k", "v2").await.unwrap();
    assert_eq!(s.setting("k").await.unwrap().as_deref(), Some("v2"));
});

conformance!(workspaces_members_owners_and_invitations, |s| {
    use weft_types::Role;
    let a = s.bootstrap_if_empty(1).await.unwrap().unwrap();
    let sa = Scope {
        tenant: a.tenant,
        workspace: a.workspace,
    };
    assert!(s.is_tenant_owner(a.tenant, a.owner).await.unwrap());
    assert_eq!(s.owned_tenants(a.owner).await.unwrap(), vec![a.tenant]);
    // Workspaces: unique slugs per tenant, found by id or slug.
    let ops = s
        .create_workspace(a.tenant, "ops", "Ops", Some(a.owner), op(), 2)
        .await
        .unwrap();
    assert!(matches!(
        s.create_workspace(a.tenant, "ops", "Again", None, op(), 3)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get_workspace(a.tenant, "ops").await.unwrap().scope,
        ops.scope
    );
    assert_eq!(
        s.get_workspace(a.tenant, &ops.scope.workspace.to_string())
            .await
            .unwrap()
            .slug,
        "ops"
    );
    s.rename_workspace(ops.scope, "Operations", op(), 4)
        .await
        .unwrap();
    assert_eq!(
        s.get_workspace(a.tenant, "ops").await.unwrap().name,
        "Operations"
    );
    assert_eq!(s.user_workspaces(a.owner).await.unwrap().len(), 2);
    // Members: add, duplicate, change role, last owner, remove.
    let ann = s
        .add_member(sa, "Ann@A.example", Role::Editor, op(), 5)
        .await
        .unwrap();
    assert_eq!(
        (ann.email.as_str(), ann.role, ann.pending),
        ("ann@a.example", Role::Editor, false)
    );
    assert!(matches!(
        s.add_member(sa, "ann@a.example", Role::Viewer, op(), 6)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.member_role(sa, ann.user_id).await.unwrap(),
        Some(Role::Editor)
    );
    assert!(matches!(
        s.remove_member(sa, a.owner, op(), 7).await,
        Err(StoreError::Rule(_))
    ));
    assert!(matches!(
        s.set_member_role(sa, a.owner, Role::Admin, op(), 7).await,
        Err(StoreError::Rule(_))
    ));
    s.set_member_role(sa, ann.user_id, Role::Owner, op(), 8)
        .await
        .unwrap();
    s.set_member_role(sa, a.owner, Role::Admin, op(), 9)
        .await
        .unwrap();
    assert_eq!(s.list_members(sa).await.unwrap().len(), 2);
    s.remove_member(sa, a.owner, op(), 10).await.unwrap();
    assert_eq!(s.member_role(sa, a.owner).await.unwrap(), None);
    // Someone from another tenant is invited, not added, until they accept.
    let b = s
        .create_tenant("b", "bob@b.example", Limits::default(), op(), 11)
        .await
        .unwrap();
    let sb = Scope {
        tenant: b.tenant,
        workspace: b.workspace,
    };
    let inv = s
        .add_member(sb, "ann@a.example", Role::Admin, op(), 12)
        .await
        .unwrap();
    assert!(inv.pending);
    assert_eq!(s.member_role(sb, ann.user_id).await.unwrap(), None);
    assert_eq!(s.pending_invitations(ann.user_id).await.unwrap().len(), 1);
    let (w, r) = s
        .accept_invitation(ann.user_id, sb.workspace, op(), 13)
        .await
        .unwrap();
    assert_eq!((w.scope, r), (sb, Role::Admin));
    assert!(matches!(
        s.accept_invitation(ann.user_id, sb.workspace, op(), 14)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.member_role(sb, ann.user_id).await.unwrap(),
        Some(Role::Admin)
    );
    // Users and passwords.
    let id = s.set_password("new@x.example", "hash", 15).await.unwrap();
    let u = s.user_by_email("NEW@x.example").await.unwrap().unwrap();
    assert_eq!((u.id, u.password_hash.as_deref()), (id, Some("hash")));
    // The audit trails list newest first, per workspace or whole, and verify.
    let all = s.list_audit(a.tenant, None, None, 100).await.unwrap();
    assert!(all.windows(2).all(|p| p[0].seq > p[1].seq));
    let only_ops = s
        .list_audit(a.tenant, Some(ops.scope.workspace), None, 100)
        .await
        .unwrap();
    assert!(
        !only_ops.is_empty()
            && only_ops.iter().all(
                |e| e.workspace_id.as_deref() == Some(ops.scope.workspace.to_string().as_str())
            )
    );
    let older = s
        .list_audit(a.tenant, None, Some(all[1].seq), 100)
        .await
        .unwrap();
    assert_eq!(older[0].seq, all[2].seq);
    assert_eq!(s.verify_audit(a.tenant).await.unwrap().broken, None);
    assert_eq!(s.verify_audit(b.tenant).await.unwrap().broken, None);
    assert!(
        s.list_audit(b.tenant, None, None, 100)
            .await
            .unwrap()
            .iter()
            .all(|e| e.workspace_id.as_deref() != Some(sa.workspace.to_string().as_str()))
    );
});

fn run(scope: Scope, flow: weft_types::FlowId, key: Option<&str>, now: i64) -> weft_store::NewRun {
    weft_store::NewRun {
        scope,
        id: weft_types::RunId::new(),
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

async fn scope_of<S>(s: &S) -> Scope
where
    S: Bootstrapper,
{
    s.boot().await
}

/// Both stores bootstrap the same way; this names it for the run cases.
trait Bootstrapper {
    async fn boot(&self) -> Scope;
}
impl Bootstrapper for SqliteStore {
    async fn boot(&self) -> Scope {
        let b = self.bootstrap_if_empty(1).await.unwrap().unwrap();
        Scope {
            tenant: b.tenant,
            workspace: b.workspace,
        }
    }
}
impl Bootstrapper for PgStore {
    async fn boot(&self) -> Scope {
        let b = self.bootstrap_if_empty(1).await.unwrap().unwrap();
        Scope {
            tenant: b.tenant,
            workspace: b.workspace,
        }
    }
}

conformance!(
    runs_dedupe_within_the_window_only_even_when_concurrent,
    |s| {
        let scope = scope_of(&s).await;
        let f = weft_types::FlowId::new();
        let a = s.insert_run(run(scope, f, Some("k"), 1_000)).await.unwrap();
        let b = s.insert_run(run(scope, f, Some("k"), 5_000)).await.unwrap();
        assert!(!a.duplicate);
        assert_eq!((b.run_id, b.duplicate), (a.run_id, true));
        let c = s
            .insert_run(run(scope, f, Some("k"), 20_000))
            .await
            .unwrap();
        assert!(
            !c.duplicate && c.run_id != a.run_id,
            "outside the window the key starts a new run"
        );
        let other = s
            .insert_run(run(scope, weft_types::FlowId::new(), Some("k"), 20_000))
            .await
            .unwrap();
        assert!(!other.duplicate, "keys are per flow");
        // 200 concurrent deliveries of 50 keys: 50 runs, 150 duplicates (a lost race may be retried).
        let g = weft_types::FlowId::new();
        let mut hs = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            hs.push(tokio::spawn(async move {
                loop {
                    match s
                        .insert_run(run(scope, g, Some(&format!("d{}", i % 50)), 30_000))
                        .await
                    {
                        Err(StoreError::Conflict(_)) => continue,
                        other => return other.unwrap(),
                    }
                }
            }));
        }
        let mut dups = 0;
        for h in hs {
            dups += usize::from(h.await.unwrap().duplicate);
        }
        assert_eq!(dups, 150);
        let queued: i64 = s.count_runs().await.unwrap().iter().map(|(_, n)| n).sum();
        assert_eq!(queued, 3 + 50);
    }
);

conformance!(claims_checkpoints_leases_finish_and_resume, |s| {
    let scope = scope_of(&s).await;
    let r = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
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
    let step = weft_store::StepRecord {
        step_id: "a".into(),
        idx: 0,
        status: weft_types::StepStatus::Succeeded,
        attempts: 1,
        output: Some(json!({"x": 1})),
        error: None,
        started_at: Some(200),
        finished_at: Some(210),
    };
    let cp = weft_store::StepCheckpoint {
        step: step.clone(),
        logs: vec![
            weft_store::NewLog {
                at: Some(200),
                ..weft_store::NewLog::new(
                    "info",
                    Some("a".into()),
                    weft_store::RunEvent::StepStarted,
                    "started",
                )
            },
            weft_store::NewLog::new(
                "info",
                Some("a".into()),
                weft_store::RunEvent::StepSucceeded,
                "ok",
            ),
        ],
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
    assert_eq!(s.renew_leases("w1", 60_000).await.unwrap(), 1);
    assert_eq!(
        s.reclaim_expired(50_000).await.unwrap(),
        0,
        "a renewed lease holds"
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
            weft_types::RunStatus::Succeeded,
            Some(json!(1)),
            None,
            vec![],
            100_002
        )
        .await
        .unwrap()
    );
    let (got, steps) = s.get_run(scope, r).await.unwrap();
    assert_eq!(
        (got.status, got.output, steps.len()),
        (weft_types::RunStatus::Succeeded, Some(json!(1)), 1)
    );
    // A line stamped with when it happened keeps that time; the others get the write's.
    let lines: Vec<_> = s
        .run_logs(scope, r, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.ts, l.event, l.message))
        .collect();
    assert_eq!(
        lines,
        [
            (200, "StepStarted".to_string(), "started".to_string()),
            (210, "StepSucceeded".to_string(), "ok".to_string())
        ]
    );
    assert_eq!(
        s.cancel_run(scope, r, op(), 100_003).await.unwrap(),
        weft_types::RunStatus::Succeeded,
        "finished runs stay finished"
    );
    // Graceful shutdown hands runs back; a restarted single process reclaims foreign runs.
    let r2 = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 200_000))
        .await
        .unwrap()
        .run_id;
    s.claim_runs("w3", 200_001, 30_000, 10).await.unwrap();
    assert_eq!(s.release_leases("w3").await.unwrap(), 1);
    s.claim_runs("w4", 200_002, 30_000, 10).await.unwrap();
    assert_eq!(s.reclaim_all_except("w5").await.unwrap(), 1);
    assert_eq!(
        s.get_run(scope, r2).await.unwrap().0.status,
        weft_types::RunStatus::Queued
    );
});

conformance!(
    a_resumed_run_gets_loop_items_without_outputs_and_open_items_steps,
    |s| {
        let scope = scope_of(&s).await;
        let r = s
            .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
            .await
            .unwrap()
            .run_id;
        s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
        let mut failed = step("l[2]", 1, json!(null), 210);
        failed.step.status = weft_types::StepStatus::Failed;
        failed.step.output = None;
        failed.step.error = Some("boom".into());
        for cp in [
            step("a", 0, json!({"top": 1}), 210),
            step("l[0].x", 1, json!("x0"), 210),
            step("l[0]", 1, json!("item0"), 210),
            step("l[1].x", 1, json!("x1"), 210),
            step("l[2].x", 1, json!("x2"), 210),
            failed,
            step("undo.compensate.y", 2, json!("y"), 210),
        ] {
            assert!(s.checkpoint_step(scope, r, "w1", cp, 210).await.unwrap());
        }
        assert_eq!(s.reclaim_expired(100_000).await.unwrap(), 1);
        let again = s.claim_runs("w2", 100_001, 30_000, 10).await.unwrap();
        let mut got: Vec<(String, Option<serde_json::Value>)> = again[0]
            .steps
            .iter()
            .map(|x| (x.step_id.clone(), x.output.clone()))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("a".to_string(), Some(json!({"top": 1}))),
                ("l[0]".to_string(), None),
                ("l[1].x".to_string(), Some(json!("x1"))),
                ("l[2]".to_string(), None),
                ("undo.compensate.y".to_string(), Some(json!("y"))),
            ],
            "finished items come without outputs and without their nested steps"
        );
        // What a person looks at: top-level steps and per-loop counts.
        let (sr, top, counts) = s.get_run_summary(scope, r).await.unwrap();
        assert_eq!(sr.id, r);
        assert_eq!(
            top.iter().map(|x| x.step_id.as_str()).collect::<Vec<_>>(),
            ["a", "undo.compensate.y"]
        );
        assert_eq!(top[0].output, Some(json!({"top": 1})));
        assert_eq!(
            counts,
            vec![weft_store::LoopCount {
                step_id: "l".into(),
                done: 2,
                failed: 1
            }]
        );
        // The whole record is still there for whoever asks for it.
        let items = s.get_steps(scope, r, &["l[0]".into()]).await.unwrap();
        assert_eq!(items[0].output, Some(json!("item0")));
        assert_eq!(s.get_run(scope, r).await.unwrap().1.len(), 7);
    }
);

conformance!(log_search_filters_pages_and_stays_in_the_workspace, |s| {
    let scope = scope_of(&s).await;
    let (fa, fb) = (weft_types::FlowId::new(), weft_types::FlowId::new());
    let mut new_a = run(scope, fa, None, 100);
    new_a.flow_name = "orders".into();
    let a = s.insert_run(new_a).await.unwrap().run_id;
    let mut new_b = run(scope, fb, None, 100);
    new_b.flow_name = "billing".into();
    let b = s.insert_run(new_b).await.unwrap().run_id;
    s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
    use weft_store::RunEvent;
    let log = |level: &'static str, step: &str, msg: &str| {
        weft_store::NewLog::new(level, Some(step.into()), RunEvent::Log, msg)
    };
    let typed = |level: &'static str, step: &str, event: RunEvent, msg: &str| {
        weft_store::NewLog::new(level, Some(step.into()), event, msg)
    };
    let mut at = 1_000;
    for (r, step_id, logs) in [
        (a, "fetch", vec![log("info", "fetch", "fetched 3 Orders")]),
        (
            a,
            "loop[1].post",
            vec![typed(
                "warn",
                "loop[1].post",
                RunEvent::StepRetrying,
                "HTTP 503 from erp; retrying",
            )],
        ),
        (
            b,
            "charge",
            vec![typed(
                "error",
                "charge",
                RunEvent::StepFailed,
                "card declined (HTTP 402)",
            )],
        ),
        (a, "loopy", vec![log("info", "loopy", "not the loop")]),
    ] {
        let mut cp = step(step_id, 0, json!(1), at);
        cp.logs = logs;
        assert!(s.checkpoint_step(scope, r, "w1", cp, at).await.unwrap());
        at += 1_000;
    }
    let q = |f: &dyn Fn(&mut weft_store::LogQuery)| {
        let mut q = weft_store::LogQuery {
            limit: 50,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let msgs = |hits: Vec<weft_store::LogHit>| {
        hits.into_iter().map(|h| h.line.message).collect::<Vec<_>>()
    };
    let all = s.search_logs(scope, q(&|_| {})).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(
        all.windows(2).all(|w| w[0].line.seq > w[1].line.seq),
        "newest first"
    );
    assert_eq!(all[1].flow, "billing");
    assert_eq!(all[1].run_id, b);
    // Text, case-insensitive.
    assert_eq!(
        msgs(
            s.search_logs(scope, q(&|q| q.text = Some("http".into())))
                .await
                .unwrap()
        ),
        ["card declined (HTTP 402)", "HTTP 503 from erp; retrying"]
    );
    assert_eq!(
        msgs(
            s.search_logs(scope, q(&|q| q.text = Some("orders".into())))
                .await
                .unwrap()
        ),
        ["fetched 3 Orders"]
    );
    // Typed events: stored by name, filtered by event.
    assert_eq!(all[0].line.event, "Log");
    assert_eq!(all[1].line.event, "StepFailed");
    assert_eq!(all[2].line.event, "StepRetrying");
    assert_eq!(
        msgs(
            s.search_logs(scope, q(&|q| q.event = Some(RunEvent::StepRetrying)))
                .await
                .unwrap()
        ),
        ["HTTP 503 from erp; retrying"]
    );
    // Level, flow, run, status.
    assert_eq!(
        msgs(
            s.search_logs(scope, q(&|q| q.level = Some("error".into())))
                .await
                .unwrap()
        ),
        ["card declined (HTTP 402)"]
    );
    assert_eq!(
        s.search_logs(scope, q(&|q| q.flow_id = Some(fa)))
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        s.search_logs(scope, q(&|q| q.run = Some(b)))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.search_logs(
            scope,
            q(&|q| q.status = Some(weft_types::RunStatus::Running))
        )
        .await
        .unwrap()
        .len(),
        4
    );
    assert!(
        s.search_logs(
            scope,
            q(&|q| q.status = Some(weft_types::RunStatus::Failed))
        )
        .await
        .unwrap()
        .is_empty()
    );
    // A step's lines include its loop items', not another step's that starts alike.
    assert_eq!(
        msgs(
            s.search_logs(scope, q(&|q| q.step = Some("loop".into())))
                .await
                .unwrap()
        ),
        ["HTTP 503 from erp; retrying"]
    );
    // Time range [since, until).
    assert_eq!(
        msgs(
            s.search_logs(
                scope,
                q(&|q| {
                    q.since = Some(2_000);
                    q.until = Some(4_000);
                })
            )
            .await
            .unwrap()
        ),
        ["card declined (HTTP 402)", "HTTP 503 from erp; retrying"]
    );
    // Pages by seq.
    let first = s.search_logs(scope, q(&|q| q.limit = 3)).await.unwrap();
    let before = first.last().unwrap().line.seq;
    let rest = s
        .search_logs(scope, q(&|q| q.before = Some(before)))
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), 4);
    assert_eq!(rest[0].line.message, "fetched 3 Orders");
    // The live feed: oldest first after a seq.
    let feed = s.workspace_logs(scope, 0, 10).await.unwrap();
    assert_eq!(feed.len(), 4);
    assert!(feed.windows(2).all(|w| w[0].line.seq < w[1].line.seq));
    let after = s.workspace_logs(scope, feed[1].line.seq, 10).await.unwrap();
    assert_eq!(after, feed[2..].to_vec());
    assert_eq!(s.workspace_logs(scope, 0, 1).await.unwrap().len(), 1);
    // Another tenant finds nothing, even searching for the text.
    let other = s
        .create_tenant("o", "o@example.com", Limits::default(), op(), 500)
        .await
        .unwrap();
    let os = Scope {
        tenant: other.tenant,
        workspace: other.workspace,
    };
    assert!(
        s.search_logs(os, q(&|q| q.text = Some("HTTP".into())))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.workspace_logs(os, 0, 10).await.unwrap().is_empty());
});

conformance!(error_groups_count_trend_and_page, |s| {
    let scope = scope_of(&s).await;
    let day = 86_400_000i64;
    let (fa, fb) = (weft_types::FlowId::new(), weft_types::FlowId::new());
    let (r1, r2) = (weft_types::RunId::new(), weft_types::RunId::new());
    let e = |fp: &str, flow, run, at: i64, msg: &str| weft_store::NewError {
        fingerprint: fp.into(),
        flow_id: flow,
        flow_name: "orders".into(),
        step_id: "post".into(),
        connector: "http".into(),
        class: "5xx".into(),
        message: msg.into(),
        run,
        at,
    };
    let t0 = 20_000 * day;
    s.record_error(scope, e("aaa", fa, r1, t0 + 5, "HTTP 502"))
        .await
        .unwrap();
    s.record_error(scope, e("aaa", fa, r1, t0 + 9, "HTTP 503"))
        .await
        .unwrap();
    s.record_error(scope, e("bbb", fb, r2, t0 + day + 1, "timeout"))
        .await
        .unwrap();
    s.record_error(scope, e("aaa", fa, r2, t0 + day + 7, "HTTP 504"))
        .await
        .unwrap();
    let all = s.list_errors(scope, None, 0, t0, None, 10).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|g| g.fingerprint.as_str())
            .collect::<Vec<_>>(),
        ["aaa", "bbb"],
        "latest first"
    );
    let a = &all[0];
    assert_eq!(
        (a.count, a.first_seen, a.last_seen),
        (3, t0 + 5, t0 + day + 7)
    );
    assert_eq!(a.message, "HTTP 504", "the latest message");
    assert_eq!(a.sample_run, r2);
    assert_eq!(a.trend, vec![(20_000, 2), (20_001, 1)]);
    assert_eq!(
        (a.flow_id, a.class.as_str(), a.connector.as_str()),
        (fa, "5xx", "http")
    );
    // The trend window and `since`.
    let recent = s
        .list_errors(scope, None, 0, t0 + day, None, 10)
        .await
        .unwrap();
    assert_eq!(recent[0].trend, vec![(20_001, 1)]);
    assert!(
        s.list_errors(scope, None, t0 + day + 8, t0, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // One flow; pages.
    let b_only = s
        .list_errors(scope, Some(fb), 0, t0, None, 10)
        .await
        .unwrap();
    assert_eq!(b_only.len(), 1);
    assert_eq!(b_only[0].fingerprint, "bbb");
    let p1 = s.list_errors(scope, None, 0, t0, None, 1).await.unwrap();
    let cur = (p1[0].last_seen, p1[0].fingerprint.clone());
    let p2 = s
        .list_errors(scope, None, 0, t0, Some(cur), 1)
        .await
        .unwrap();
    assert_eq!(p2[0].fingerprint, "bbb");
    // Another tenant sees none.
    let other = s
        .create_tenant("o", "o@example.com", Limits::default(), op(), 500)
        .await
        .unwrap();
    let os = Scope {
        tenant: other.tenant,
        workspace: other.workspace,
    };
    assert!(
        s.list_errors(os, None, 0, 0, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
});

conformance!(stuck_runs_are_the_old_queued_and_running_ones, |s| {
    let scope = scope_of(&s).await;
    let f = weft_types::FlowId::new();
    let r1 = s.insert_run(run(scope, f, None, 100)).await.unwrap().run_id;
    let r2 = s.insert_run(run(scope, f, None, 200)).await.unwrap().run_id;
    let r3 = s.insert_run(run(scope, f, None, 300)).await.unwrap().run_id;
    let claimed = s.claim_runs("w1", 400, 30_000, 1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let started = claimed[0].run.id;
    let ids = |v: Vec<weft_store::RunRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    // Queued runs count from their creation, running ones from their start.
    assert!([r1, r2, r3].contains(&started));
    let early = ids(s.stuck_runs(350, 10).await.unwrap());
    assert!(!early.contains(&started), "started at 400");
    assert_eq!(early.len(), 2);
    let all = ids(s.stuck_runs(500, 10).await.unwrap());
    assert_eq!(all.len(), 3);
    assert_eq!(
        all.last(),
        Some(&started),
        "oldest first; the running one since 400"
    );
    assert_eq!(ids(s.stuck_runs(500, 1).await.unwrap()).len(), 1);
    // A finished run is not stuck.
    assert!(
        s.finish_run(
            scope,
            started,
            "w1",
            weft_types::RunStatus::Succeeded,
            None,
            None,
            vec![],
            450
        )
        .await
        .unwrap()
    );
    assert_eq!(ids(s.stuck_runs(500, 10).await.unwrap()).len(), 2);
    assert!(s.stuck_runs(50, 10).await.unwrap().is_empty());
});

conformance!(
    retention_expires_only_finished_runs_of_workspaces_that_set_it,
    |s| {
        let scope = scope_of(&s).await;
        let day = 86_400_000i64;
        assert_eq!(
            s.retention(scope).await.unwrap(),
            None,
            "kept for ever by default"
        );
        let f = weft_types::FlowId::new();
        let old_done = s.insert_run(run(scope, f, None, 100)).await.unwrap().run_id;
        let old_running = s.insert_run(run(scope, f, None, 101)).await.unwrap().run_id;
        s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
        assert!(
            s.finish_run(
                scope,
                old_done,
                "w1",
                weft_types::RunStatus::Succeeded,
                None,
                None,
                vec![],
                300
            )
            .await
            .unwrap()
        );
        let fresh = s
            .insert_run(run(scope, f, None, 2 * day))
            .await
            .unwrap()
            .run_id;
        s.claim_runs("w2", 2 * day, 30_000, 10).await.unwrap();
        assert!(
            s.finish_run(
                scope,
                fresh,
                "w2",
                weft_types::RunStatus::Failed,
                None,
                None,
                vec![],
                2 * day + 1
            )
            .await
            .unwrap()
        );
        // Another tenant's old finished run, in a workspace without retention.
        let other = s
            .create_tenant("o", "o@example.com", Limits::default(), op(), 500)
            .await
            .unwrap();
        let os = Scope {
            tenant: other.tenant,
            workspace: other.workspace,
        };
        let theirs = s.insert_run(run(os, f, None, 100)).await.unwrap().run_id;
        s.claim_runs("w3", 200, 30_000, 10).await.unwrap();
        assert!(
            s.finish_run(
                os,
                theirs,
                "w3",
                weft_types::RunStatus::Succeeded,
                None,
                None,
                vec![],
                300
            )
            .await
            .unwrap()
        );
        let now = 3 * day;
        assert!(
            s.expired_runs(now, 10).await.unwrap().is_empty(),
            "no retention set"
        );
        s.set_retention(scope, Some(2), op(), 400).await.unwrap();
        assert_eq!(s.retention(scope).await.unwrap(), Some(2));
        // Finished more than 2 days before `now`: only the old finished run of this workspace.
        assert_eq!(
            s.expired_runs(now, 10).await.unwrap(),
            vec![(scope, old_done)]
        );
        assert!(
            s.expired_runs(2 * day, 10).await.unwrap().is_empty(),
            "not yet"
        );
        let _ = old_running;
        s.set_retention(scope, None, op(), 500).await.unwrap();
        assert!(s.expired_runs(now, 10).await.unwrap().is_empty());
        let audit = s
            .list_audit(scope.tenant, Some(scope.workspace), None, 50)
            .await
            .unwrap();
        assert!(audit.iter().any(|a| a.action == "workspace.retention"));
    }
);

conformance!(cancel_takes_the_run_from_its_worker, |s| {
    let scope = scope_of(&s).await;
    let r = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
    assert_eq!(
        s.cancel_run(scope, r, op(), 300).await.unwrap(),
        weft_types::RunStatus::Cancelled
    );
    assert!(
        !s.finish_run(
            scope,
            r,
            "w1",
            weft_types::RunStatus::Succeeded,
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
        weft_types::RunStatus::Cancelled
    );
    let other = s
        .create_tenant("o", "o@example.com", Limits::default(), op(), 500)
        .await
        .unwrap();
    let os = Scope {
        tenant: other.tenant,
        workspace: other.workspace,
    };
    assert!(matches!(s.get_run(os, r).await, Err(StoreError::NotFound)));
    assert!(matches!(
        s.cancel_run(os, r, op(), 600).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.run_logs(os, r, 0, 10).await.unwrap().is_empty());
});

conformance!(run_lists_filter_and_page, |s| {
    let scope = scope_of(&s).await;
    let f = weft_types::FlowId::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            s.insert_run(run(scope, f, None, 100 + i))
                .await
                .unwrap()
                .run_id,
        );
    }
    s.insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap();
    let page = |before| weft_store::RunFilter {
        flow_id: Some(f),
        limit: 4,
        before,
        ..Default::default()
    };
    let p1 = s.list_runs(scope, page(None)).await.unwrap();
    let p2 = s.list_runs(scope, page(Some(p1[3].id))).await.unwrap();
    let got: Vec<_> = p1.iter().chain(p2.iter()).map(|r| r.id).collect();
    ids.reverse();
    assert_eq!(got, ids);
    let since = s
        .list_runs(
            scope,
            weft_store::RunFilter {
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
            weft_store::RunFilter {
                status: Some(weft_types::RunStatus::Queued),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(queued.len(), 8);
});

conformance!(claims_are_fair_across_tenants_and_honour_caps, |s| {
    let a = scope_of(&s).await;
    let bt = s
        .create_tenant("b", "b@example.com", Limits::default(), op(), 2)
        .await
        .unwrap();
    let b = Scope {
        tenant: bt.tenant,
        workspace: bt.workspace,
    };
    let (fa, fb) = (weft_types::FlowId::new(), weft_types::FlowId::new());
    for _ in 0..300 {
        s.insert_run(run(a, fa, None, 10)).await.unwrap();
    }
    let first = s.claim_runs("w", 20, 30_000, 64).await.unwrap();
    assert!(first.len() == 64 && first.iter().all(|c| c.run.scope == a));
    let rb = s.insert_run(run(b, fb, None, 30)).await.unwrap();
    let next = s.claim_runs("w", 40, 30_000, 1).await.unwrap();
    assert_eq!(
        next[0].run.id, rb.run_id,
        "B's run goes first, ahead of A's backlog"
    );
    for _ in 0..50 {
        s.insert_run(run(b, fb, None, 50)).await.unwrap();
    }
    s.set_tenant_plan(
        b.tenant,
        Limits {
            concurrent_runs: Some(5),
            ..Limits::default()
        },
        1,
        op(),
        60,
    )
    .await
    .unwrap();
    let got = s.claim_runs("w", 70, 30_000, 100).await.unwrap();
    assert_eq!(
        got.iter().filter(|c| c.run.scope == b).count(),
        4,
        "1 running + 4 = B's cap of 5"
    );
    // Concurrent claimers never take the same run.
    let (s1, s2) = (s.clone(), s.clone());
    let (x, y) = tokio::join!(
        s1.claim_runs("x", 80, 30_000, 100),
        s2.claim_runs("y", 80, 30_000, 100)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<_> = x.iter().chain(y.iter()).map(|c| c.run.id).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a run was claimed twice");
});

conformance!(a_tenant_alone_with_ready_work_keeps_its_cap, |s| {
    // PostgreSQL claims for a tenant found alone with ready work without listing tenants
    // again; a cap set since, and another tenant's work, must still be seen.
    let t = s
        .create_tenant("solo", "solo@example.com", Limits::default(), op(), 1)
        .await
        .unwrap();
    let a = Scope {
        tenant: t.tenant,
        workspace: t.workspace,
    };
    let f = weft_types::FlowId::new();
    for _ in 0..60 {
        s.insert_run(run(a, f, None, 10)).await.unwrap();
    }
    assert_eq!(s.claim_runs("w", 20, 30_000, 10).await.unwrap().len(), 10);
    assert_eq!(s.claim_runs("w", 21, 30_000, 10).await.unwrap().len(), 10);
    s.set_tenant_plan(
        a.tenant,
        Limits {
            concurrent_runs: Some(25),
            ..Limits::default()
        },
        1,
        op(),
        30,
    )
    .await
    .unwrap();
    let got = s.claim_runs("w", 40, 30_000, 100).await.unwrap();
    assert_eq!(got.len(), 5, "20 running + 5 = the cap of 25");
    let bt = s
        .create_tenant("other", "other@example.com", Limits::default(), op(), 50)
        .await
        .unwrap();
    let b = Scope {
        tenant: bt.tenant,
        workspace: bt.workspace,
    };
    let rb = s.insert_run(run(b, f, None, 60)).await.unwrap();
    let got = s.claim_runs("w", 70, 30_000, 100).await.unwrap();
    assert_eq!(got.len(), 1, "A is at its cap; B's run is claimed");
    assert_eq!(got[0].run.id, rb.run_id);
});

conformance!(monthly_run_quota_counts_and_refuses, |s| {
    let plan = Limits {
        runs_per_month: Some(2),
        ..Limits::default()
    };
    let t = s
        .create_tenant("q", "q@example.com", plan, op(), 1)
        .await
        .unwrap();
    let scope = Scope {
        tenant: t.tenant,
        workspace: t.workspace,
    };
    let f = weft_types::FlowId::new();
    // 2026-01-15
    let jan = 1_768_435_200_000;
    s.insert_run(run(scope, f, None, jan)).await.unwrap();
    s.insert_run(run(scope, f, Some("d"), jan)).await.unwrap();
    assert!(
        s.insert_run(run(scope, f, Some("d"), jan + 1))
            .await
            .unwrap()
            .duplicate,
        "duplicates are free"
    );
    let err = s
        .insert_run(run(scope, f, None, jan + 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Quota {
                limit: "runs_per_month",
                retry_after: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    // February starts a new count.
    s.insert_run(run(scope, f, None, jan + 20 * 86_400_000))
        .await
        .unwrap();
});

/// PostgreSQL only: work inserted through one connection pool wakes listeners on another
/// (LISTEN/NOTIFY), and a duplicate delivery announces nothing.
#[tokio::test]
async fn postgres_announces_new_work_to_other_processes() {
    let (s, _g) = postgres().await;
    let scope = s.boot().await;
    let store = weft_store::Store::from(s.clone());
    let mut signals = store
        .work_signals()
        .await
        .unwrap()
        .expect("PostgreSQL has work signals");
    let f = weft_types::FlowId::new();
    s.insert_run(run(scope, f, Some("once"), 10)).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), signals.recv())
        .await
        .expect("a signal within 10 s")
        .expect("the listener is alive");
    let sqlite = sqlite().await.0;
    assert!(
        weft_store::Store::from(sqlite)
            .work_signals()
            .await
            .unwrap()
            .is_none()
    );
}

conformance!(rate_limits_allow_the_burst_refuse_then_refill, |s| {
    use weft_store::rate::{Rate, RateDecision};
    let r = Rate::per_second(3);
    let t0 = 1_000_000_000;
    for _ in 0..3 {
        assert_eq!(
            s.rate_take("k1", r, t0).await.unwrap(),
            RateDecision::Allowed
        );
    }
    match s.rate_take("k1", r, t0).await.unwrap() {
        RateDecision::Limited { retry_after_ms } => assert_eq!(retry_after_ms, 334),
        RateDecision::Allowed => panic!("the fourth request in the same instant is over the limit"),
    }
    // Another key has its own bucket; a third of a second later one more fits.
    assert_eq!(
        s.rate_take("k2", r, t0).await.unwrap(),
        RateDecision::Allowed
    );
    assert_eq!(
        s.rate_take("k1", r, t0 + 333_334).await.unwrap(),
        RateDecision::Allowed
    );
    assert_ne!(
        s.rate_take("k1", r, t0 + 333_334).await.unwrap(),
        RateDecision::Allowed
    );
});

conformance!(
    concurrent_inserts_refused_by_a_quota_leave_nothing_behind,
    |s| {
        // Many inserts at once, for a limited and an unlimited tenant, with repeated delivery keys:
        // on PostgreSQL they share group-commit transactions, so a refused insert must not leave a
        // charge, a cleared key or a queue row in the batch it shared.
        let open = scope_of(&s).await;
        let plan = Limits {
            runs_per_month: Some(30),
            ..Limits::default()
        };
        let t = s
            .create_tenant("q", "q@example.com", plan, op(), 1)
            .await
            .unwrap();
        let limited = Scope {
            tenant: t.tenant,
            workspace: t.workspace,
        };
        let (fo, fl) = (weft_types::FlowId::new(), weft_types::FlowId::new());
        let jan = 1_768_435_200_000;
        let mut hs = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            let (scope, f) = if i % 2 == 0 {
                (open, fo)
            } else {
                (limited, fl)
            };
            let key = format!("k{}", i % 160);
            hs.push(tokio::spawn(async move {
                loop {
                    match s.insert_run(run(scope, f, Some(&key), jan)).await {
                        Err(StoreError::Conflict(_)) => continue,
                        other => return (scope, other),
                    }
                }
            }));
        }
        let (mut ok, mut dup, mut refused) = (0, 0, 0);
        for h in hs {
            match h.await.unwrap() {
                (_, Ok(i)) if i.duplicate => dup += 1,
                (_, Ok(_)) => ok += 1,
                (sc, Err(StoreError::Quota { .. })) => {
                    assert_eq!(sc, limited);
                    refused += 1
                }
                (_, Err(e)) => panic!("{e:?}"),
            }
        }
        // 100 open inserts with 80 distinct keys; 100 limited ones with 80 distinct keys, of which
        // only 30 may start a run.
        assert_eq!(s.usage(open.tenant, jan).await.unwrap().runs_in_month, 80);
        assert_eq!(
            s.usage(limited.tenant, jan).await.unwrap().runs_in_month,
            30
        );
        assert_eq!(ok, 80 + 30);
        assert_eq!(ok + dup + refused, 200);
        let total: i64 = s.count_runs().await.unwrap().iter().map(|(_, n)| n).sum();
        assert_eq!(total, 110);
        let listed = s
            .list_runs(
                limited,
                weft_store::RunFilter {
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(listed.len(), 30);
    }
);

conformance!(
    steps_written_together_or_with_the_end_land_in_order_and_are_charged_once,
    |s| {
        let scope = scope_of(&s).await;
        let jan = 1_768_435_200_000;
        let before = s.usage(scope.tenant, jan).await.unwrap().stored_bytes;
        let mut ids = Vec::new();
        let mut trigger_len = 0;
        for _ in 0..3 {
            let new = run(scope, weft_types::FlowId::new(), None, jan);
            trigger_len += new.trigger.to_string().len() as i64;
            ids.push(s.insert_run(new).await.unwrap().run_id);
        }
        assert_eq!(s.claim_runs("w1", jan, 30_000, 10).await.unwrap().len(), 3);
        let (r, r2, r3) = (ids[0], ids[1], ids[2]);
        let log = |m: &str, step: &str| {
            weft_store::NewLog::new("info", Some(step.to_string()), weft_store::RunEvent::Log, m)
        };
        let cp = |id: &str,
                  idx: i64,
                  status: weft_types::StepStatus,
                  output: Option<serde_json::Value>,
                  lines: &[&str]| {
            weft_store::StepCheckpoint {
                step: weft_store::StepRecord {
                    step_id: id.into(),
                    idx,
                    status,
                    attempts: 1,
                    output,
                    error: None,
                    started_at: Some(jan),
                    finished_at: Some(jan + 1),
                },
                logs: lines.iter().map(|m| log(m, id)).collect(),
            }
        };
        use weft_types::StepStatus::{Retrying, Succeeded};
        let (out_a, out_b, done) = (
            json!({"a": "x".repeat(50)}),
            json!([1, 2, 3]),
            json!({"ok": 1}),
        );
        // A retry is on record before the step's success arrives with the end.
        assert!(
            s.checkpoint_step(
                scope,
                r,
                "w1",
                cp("a", 0, Retrying, None, &["retrying"]),
                jan + 1
            )
            .await
            .unwrap()
        );
        assert!(
            s.finish_run_with(
                scope,
                r,
                "w1",
                vec![
                    cp("a", 0, Succeeded, Some(out_a.clone()), &["a ok"]),
                    cp(
                        "b",
                        1,
                        Succeeded,
                        Some(out_b.clone()),
                        &["b started", "b ok"]
                    ),
                ],
                weft_types::RunStatus::Succeeded,
                Some(done.clone()),
                None,
                vec![weft_store::NewLog::new(
                    "info",
                    None,
                    weft_store::RunEvent::RunSucceeded,
                    "end"
                )],
                jan + 2,
            )
            .await
            .unwrap()
        );
        let (rec, steps) = s.get_run(scope, r).await.unwrap();
        assert_eq!(rec.status, weft_types::RunStatus::Succeeded);
        let got: Vec<_> = steps
            .iter()
            .map(|x| (x.step_id.as_str(), x.status, x.output.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Succeeded, Some(out_a.clone())),
                ("b", Succeeded, Some(out_b.clone()))
            ]
        );
        let lines: Vec<String> = s
            .run_logs(scope, r, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(lines, ["retrying", "a ok", "b started", "b ok", "end"]);

        // Several steps in one checkpoint: all, in order.
        assert!(
            s.checkpoint_steps(
                scope,
                r3,
                "w1",
                vec![
                    cp("x", 0, Succeeded, Some(json!("x")), &["x1"]),
                    cp("y", 1, Succeeded, None, &["y1", "y2"])
                ],
                jan + 1
            )
            .await
            .unwrap()
        );
        let (_, steps) = s.get_run(scope, r3).await.unwrap();
        assert_eq!(
            steps.iter().map(|x| x.step_id.as_str()).collect::<Vec<_>>(),
            ["x", "y"]
        );
        let lines: Vec<String> = s
            .run_logs(scope, r3, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(lines, ["x1", "y1", "y2"]);

        // Not the holder: neither writes anything.
        assert!(
            !s.checkpoint_steps(
                scope,
                r2,
                "w2",
                vec![cp("p", 0, Succeeded, Some(json!(1)), &["p1"])],
                jan + 1
            )
            .await
            .unwrap()
        );
        assert!(
            !s.finish_run_with(
                scope,
                r2,
                "w2",
                vec![cp("q", 0, Succeeded, Some(json!(2)), &["q1"])],
                weft_types::RunStatus::Succeeded,
                None,
                None,
                vec![],
                jan + 2,
            )
            .await
            .unwrap()
        );
        let (rec2, steps2) = s.get_run(scope, r2).await.unwrap();
        assert_eq!(rec2.status, weft_types::RunStatus::Running);
        assert!(steps2.is_empty(), "{steps2:?}");
        assert!(s.run_logs(scope, r2, 0, 100).await.unwrap().is_empty());

        // Charged once each: the triggers, both carried outputs (the retry record they replaced
        // had none) and the run's output; r3 is not finished, so not charged yet. PostgreSQL's
        // jsonb text adds a space after each ':' and ','.
        let charged = s.usage(scope.tenant, jan).await.unwrap().stored_bytes - before;
        let compact = trigger_len
            + (out_a.to_string().len() + out_b.to_string().len() + done.to_string().len()) as i64;
        assert!(
            (compact..=compact + 8).contains(&charged),
            "charged {charged} bytes for {compact} bytes of compact JSON"
        );
    }
);

conformance!(finishing_charges_stored_bytes_and_keeps_log_order, |s| {
    let scope = scope_of(&s).await;
    let jan = 1_768_435_200_000;
    let before = s.usage(scope.tenant, jan).await.unwrap().stored_bytes;
    let new = run(scope, weft_types::FlowId::new(), None, jan);
    let trigger_len = new.trigger.to_string().len() as i64;
    let r = s.insert_run(new).await.unwrap().run_id;
    s.claim_runs("w1", jan, 30_000, 10).await.unwrap();
    let log = |m: &str, step: Option<&str>| {
        weft_store::NewLog::new(
            "info",
            step.map(str::to_string),
            weft_store::RunEvent::Log,
            m,
        )
    };
    let out = json!({"big": "x".repeat(100)});
    let cp = weft_store::StepCheckpoint {
        step: weft_store::StepRecord {
            step_id: "a".into(),
            idx: 0,
            status: weft_types::StepStatus::Succeeded,
            attempts: 1,
            output: Some(out.clone()),
            error: None,
            started_at: Some(jan),
            finished_at: Some(jan + 1),
        },
        logs: vec![
            log("one", Some("a")),
            log("two", Some("a")),
            log("three", None),
        ],
    };
    assert!(
        s.checkpoint_step(scope, r, "w1", cp, jan + 1)
            .await
            .unwrap()
    );
    let done = json!({"ok": true});
    assert!(
        s.finish_run(
            scope,
            r,
            "w1",
            weft_types::RunStatus::Succeeded,
            Some(done.clone()),
            None,
            vec![log("four", None), log("five", None)],
            jan + 2,
        )
        .await
        .unwrap()
    );
    // A second finish by anyone changes nothing and charges nothing.
    assert!(
        !s.finish_run(
            scope,
            r,
            "w1",
            weft_types::RunStatus::Failed,
            None,
            None,
            vec![log("six", None)],
            jan + 3,
        )
        .await
        .unwrap()
    );
    // Stored bytes are the database's text size of the JSON: compact on SQLite; PostgreSQL's
    // jsonb text puts a space after each ':' and ','.
    let u = s.usage(scope.tenant, jan).await.unwrap();
    let compact = trigger_len + out.to_string().len() as i64 + done.to_string().len() as i64;
    let charged = u.stored_bytes - before;
    assert!(
        (compact..=compact + 4).contains(&charged),
        "charged {charged} bytes for {compact} bytes of compact JSON"
    );
    let lines: Vec<String> = s
        .run_logs(scope, r, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(lines, ["one", "two", "three", "four", "five"]);
    // More lines at once than one insert statement carries keep their order and fields.
    let many: Vec<_> = (0..21)
        .map(|i| log(&format!("m{i}"), (i % 2 == 0).then_some("a")))
        .collect();
    s.append_logs(scope, r, many, jan + 4).await.unwrap();
    let got: Vec<(String, Option<String>, i64)> = s
        .run_logs(scope, r, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .skip(5)
        .map(|l| (l.message, l.step_id, l.ts))
        .collect();
    let want: Vec<(String, Option<String>, i64)> = (0..21)
        .map(|i| {
            (
                format!("m{i}"),
                (i % 2 == 0).then(|| "a".to_string()),
                jan + 4,
            )
        })
        .collect();
    assert_eq!(got, want);
    let (got, _) = s.get_run(scope, r).await.unwrap();
    assert_eq!(got.status, weft_types::RunStatus::Succeeded);
    assert_eq!(got.output, Some(done));
});

conformance!(
    a_write_of_many_lines_pages_in_order_by_run_and_workspace,
    |s| {
        // PostgreSQL keeps a write's lines together, up to 1,024 to a row: 2,500 lines span three
        // rows, and pages by run and by workspace must cross their boundaries without a gap.
        let scope = scope_of(&s).await;
        let r = s
            .insert_run(run(scope, weft_types::FlowId::new(), None, 1_000))
            .await
            .unwrap()
            .run_id;
        let line = |i: usize| {
            weft_store::NewLog::new("info", None, weft_store::RunEvent::Log, format!("line {i}"))
        };
        s.append_logs(scope, r, (0..2_500).map(line).collect(), 1_001)
            .await
            .unwrap();
        s.append_logs(scope, r, vec![line(2_500)], 1_002)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = s.run_logs(scope, r, after, 700).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            seen.extend(page);
        }
        let messages: Vec<String> = seen.iter().map(|l| l.message.clone()).collect();
        let want: Vec<String> = (0..=2_500).map(|i| format!("line {i}")).collect();
        assert_eq!(messages, want);
        assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
        // The live feed reads forward by seq, search backward; both see every line once.
        let mut feed = Vec::new();
        let mut after = 0;
        loop {
            let page = s.workspace_logs(scope, after, 900).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.line.seq;
            feed.extend(page.into_iter().map(|h| h.line.message));
        }
        assert_eq!(feed, want);
        let mut back = Vec::new();
        let mut before = None;
        loop {
            let q = weft_store::LogQuery {
                text: Some("line".into()),
                run: Some(r),
                before,
                limit: 800,
                ..Default::default()
            };
            let page = s.search_logs(scope, q).await.unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.line.seq);
            back.extend(page.into_iter().map(|h| h.line.message));
        }
        back.reverse();
        assert_eq!(back, want);
    }
);

conformance!(nul_characters_are_stored_and_fail_nothing_else, |s| {
    // PostgreSQL text and jsonb cannot hold U+0000; a webhook body, an HTTP answer or an error
    // text may. It must not fail the write, nor the other writes committed with it.
    let scope = scope_of(&s).await;
    let f = weft_types::FlowId::new();
    let mut nul = run(scope, f, None, 100);
    nul.trigger = json!({"body": "a\u{0}b", "k\u{0}": ["\u{0}"], "literal": "\\u0000"});
    let plain = run(scope, f, None, 100);
    let (a, b) = tokio::join!(s.insert_run(nul), s.insert_run(plain));
    let (a, _b) = (a.unwrap().run_id, b.unwrap().run_id);
    let (got, _) = s.get_run(scope, a).await.unwrap();
    let body = got.trigger["body"].as_str().unwrap();
    assert!(body == "a\u{0}b" || body == "a\u{FFFD}b", "{body:?}");
    assert_eq!(
        got.trigger["literal"], "\\u0000",
        "an escaped backslash is not a NUL"
    );
    let claimed = s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let cp = weft_store::StepCheckpoint {
        step: weft_store::StepRecord {
            step_id: "a".into(),
            idx: 0,
            status: weft_types::StepStatus::Failed,
            attempts: 1,
            output: Some(json!({"text": "x\u{0}y"})),
            error: Some("bad \u{0} byte".into()),
            started_at: Some(200),
            finished_at: Some(210),
        },
        logs: vec![weft_store::NewLog::new(
            "error",
            Some("a".into()),
            weft_store::RunEvent::Log,
            "got \u{0}",
        )],
    };
    assert!(s.checkpoint_step(scope, a, "w1", cp, 210).await.unwrap());
    assert!(
        s.finish_run(
            scope,
            a,
            "w1",
            weft_types::RunStatus::Failed,
            Some(json!("\u{0}")),
            Some("step a failed: \u{0}".into()),
            vec![],
            220,
        )
        .await
        .unwrap()
    );
    let (got, steps) = s.get_run(scope, a).await.unwrap();
    assert_eq!(got.status, weft_types::RunStatus::Failed);
    assert!(steps[0].error.as_deref().unwrap().starts_with("bad "));
    assert_eq!(s.run_logs(scope, a, 0, 10).await.unwrap().len(), 1);
});

conformance!(a_schedule_tick_fires_once_however_many_workers_try, |s| {
    let scope = scope_of(&s).await;
    let f = s
        .save_flow(scope, "cron", json!({}), true, op(), 5)
        .await
        .unwrap();
    s.set_schedule(scope, f.id, Some(1_000)).await.unwrap();
    let due = s.due_schedules(1_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    // Eight workers saw the same due tick and all try to fire it.
    let mut hs = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        hs.push(tokio::spawn(async move {
            let mut r = run(scope, f.id, None, 1_000);
            r.flow_name = "cron".into();
            s.fire_schedule(r, 1_000, Some(61_000)).await.unwrap()
        }));
    }
    let mut fired = 0;
    for h in hs {
        fired += usize::from(h.await.unwrap().is_some());
    }
    assert_eq!(
        fired, 1,
        "one worker fires the tick, the others find it moved on"
    );
    let total: i64 = s.count_runs().await.unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(total, 1);
    assert!(s.due_schedules(60_999, 10).await.unwrap().is_empty());
    assert_eq!(s.next_schedule_at().await.unwrap(), Some(61_000));
});

fn poll_done(
    scope: Scope,
    flow: weft_types::FlowId,
    owner: &str,
    now: i64,
    outcome: weft_store::PollOutcome,
) -> weft_store::PollDone {
    weft_store::PollDone {
        scope,
        flow_id: flow,
        owner: owner.into(),
        now,
        next_at: now + 60_000,
        outcome,
    }
}

fn listed(
    scope: Scope,
    flow: weft_types::FlowId,
    ids: &[&str],
    now: i64,
    cursor: i64,
) -> weft_store::PollOutcome {
    weft_store::PollOutcome::Listed {
        items: ids
            .iter()
            .map(|id| {
                let mut r = run(scope, flow, Some(&format!("poll:{id}")), now);
                r.dedupe_window_ms = i64::MAX / 4;
                r.trigger = json!({"kind": "poll", "item": {"id": id}});
                (id.to_string(), r)
            })
            .collect(),
        cursor: Some(json!(cursor)),
    }
}

conformance!(
    a_poll_starts_one_run_per_new_item_and_keeps_its_cursor,
    |s| {
        use weft_store::PollOutcome;
        let scope = scope_of(&s).await;
        let f = s
            .save_flow(scope, "poller", json!({}), true, op(), 5)
            .await
            .unwrap();
        assert!(s.poll_state(scope, f.id).await.unwrap().is_none());
        s.set_poll(scope, f.id, Some(1_000), None).await.unwrap();
        assert_eq!(s.next_poll_at().await.unwrap(), Some(1_000));
        assert!(
            s.claim_polls("w1", 999, 30_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "not due yet"
        );

        // Two workers race for the due poll: one gets the lease.
        let a = s.claim_polls("w1", 1_000, 30_000, 10).await.unwrap();
        let b = s.claim_polls("w2", 1_000, 30_000, 10).await.unwrap();
        assert_eq!((a.len(), b.len()), (1, 0));
        assert!(!a[0].primed && a[0].cursor.is_none());
        // A worker without the lease records nothing.
        let stale = s
            .complete_poll(poll_done(
                scope,
                f.id,
                "w2",
                1_100,
                listed(scope, f.id, &["x"], 1_100, 9),
            ))
            .await
            .unwrap();
        assert!(stale.is_none());

        // The first poll of a trigger without `since` learns what exists and starts nothing.
        let rec = s
            .complete_poll(poll_done(
                scope,
                f.id,
                "w1",
                1_200,
                listed(scope, f.id, &["a", "b"], 1_200, 2),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((rec.started.len(), rec.learned, rec.known), (0, 2, 0));
        let st = s.poll_state(scope, f.id).await.unwrap().unwrap();
        assert_eq!(
            (st.primed, st.cursor.clone(), st.next_at, st.seen, st.polls),
            (true, Some(json!(2)), Some(61_200), 2, 1)
        );
        assert!(
            s.claim_polls("w1", 61_199, 30_000, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Later polls start one run per item not seen before, even when listed twice in one poll.
        let c = s.claim_polls("w2", 61_200, 30_000, 10).await.unwrap();
        assert_eq!(c[0].cursor, Some(json!(2)));
        assert!(c[0].primed);
        let rec = s
            .complete_poll(poll_done(
                scope,
                f.id,
                "w2",
                61_300,
                listed(scope, f.id, &["b", "c", "d", "c"], 61_300, 4),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((rec.started.len(), rec.known, rec.learned), (2, 2, 0));
        let total: i64 = s.count_runs().await.unwrap().iter().map(|(_, n)| n).sum();
        assert_eq!(total, 2);

        // A failed poll keeps the cursor and says why; republishing keeps cursor and seen set.
        s.claim_polls("w1", 121_300, 30_000, 10).await.unwrap();
        s.complete_poll(poll_done(
            scope,
            f.id,
            "w1",
            121_300,
            PollOutcome::Failed("HTTP 500".into()),
        ))
        .await
        .unwrap()
        .unwrap();
        s.set_poll(scope, f.id, Some(200_000), Some(json!(0)))
            .await
            .unwrap();
        let st = s.poll_state(scope, f.id).await.unwrap().unwrap();
        assert_eq!(
            (
                st.cursor,
                st.last_error.as_deref(),
                st.started,
                st.seen,
                st.next_at
            ),
            (Some(json!(4)), Some("HTTP 500"), 2, 4, Some(200_000))
        );

        // An expired lease (a dead worker) lets another worker take the poll over.
        let held = s.claim_polls("w1", 200_000, 30_000, 10).await.unwrap();
        assert_eq!(held.len(), 1);
        assert!(
            s.claim_polls("w2", 229_999, 30_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            s.claim_polls("w2", 230_000, 30_000, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            s.complete_poll(poll_done(
                scope,
                f.id,
                "w1",
                230_001,
                listed(scope, f.id, &["e"], 230_001, 5)
            ))
            .await
            .unwrap()
            .is_none(),
            "the dead worker's late answer is dropped"
        );

        // Paused (a credential needs re-authorization): not claimed until resumed.
        s.complete_poll(poll_done(
            scope,
            f.id,
            "w2",
            230_002,
            PollOutcome::Paused("credential 'x' needs re-authorization".into()),
        ))
        .await
        .unwrap()
        .unwrap();
        assert!(
            s.claim_polls("w1", 900_000, 30_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.next_poll_at().await.unwrap(), None);
        assert_eq!(s.resume_polls(scope, 300_000).await.unwrap(), 1);
        assert_eq!(s.next_poll_at().await.unwrap(), Some(290_002));
        assert!(
            s.poll_state(scope, f.id)
                .await
                .unwrap()
                .unwrap()
                .paused
                .is_none()
        );

        // Backfill: a new cursor, due now; items already seen still start nothing.
        s.backfill_poll(scope, f.id, Some(json!("2026-01-01")), op(), 250_000)
            .await
            .unwrap();
        let c = s.claim_polls("w1", 250_000, 30_000, 10).await.unwrap();
        assert_eq!(c[0].cursor, Some(json!("2026-01-01")));
        let rec = s
            .complete_poll(poll_done(
                scope,
                f.id,
                "w1",
                250_001,
                listed(scope, f.id, &["a", "z"], 250_001, 6),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((rec.started.len(), rec.known), (1, 1));

        // Off: not due, cannot be backfilled, keeps its state for when it comes back.
        s.set_poll(scope, f.id, None, None).await.unwrap();
        assert_eq!(s.next_poll_at().await.unwrap(), None);
        assert!(matches!(
            s.backfill_poll(scope, f.id, None, op(), 1).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(s.poll_state(scope, f.id).await.unwrap().unwrap().seen, 5);

        // Another tenant sees none of it; deleting the flow deletes it.
        let other = s
            .create_tenant("other", "o@example.com", Limits::default(), op(), 1)
            .await
            .unwrap();
        let other = Scope {
            tenant: other.tenant,
            workspace: other.workspace,
        };
        assert!(s.poll_state(other, f.id).await.unwrap().is_none());
        assert!(matches!(
            s.backfill_poll(other, f.id, None, op(), 1).await,
            Err(StoreError::NotFound)
        ));
        s.delete_flow(scope, f.id, op(), 2).await.unwrap();
        assert!(s.poll_state(scope, f.id).await.unwrap().is_none());
    }
);

conformance!(
    a_poll_listing_in_flight_loses_to_a_backfill_or_a_new_trigger,
    |s| {
        let scope = scope_of(&s).await;
        let f = s
            .save_flow(scope, "poller", json!({}), true, op(), 5)
            .await
            .unwrap();
        s.set_poll(scope, f.id, Some(0), None).await.unwrap();
        // A learn-only first poll is in flight when someone backfills: its listing is dropped, so
        // it can neither start runs as if primed nor overwrite the backfill's cursor.
        assert_eq!(s.claim_polls("w1", 0, 60_000, 1).await.unwrap().len(), 1);
        assert_eq!(
            s.next_poll_at().await.unwrap(),
            Some(60_000),
            "leased: not due before the lease ends"
        );
        s.backfill_poll(scope, f.id, Some(json!("T")), op(), 10)
            .await
            .unwrap();
        assert!(
            s.complete_poll(poll_done(
                scope,
                f.id,
                "w1",
                20,
                listed(scope, f.id, &["a", "b"], 20, 9)
            ))
            .await
            .unwrap()
            .is_none()
        );
        let st = s.poll_state(scope, f.id).await.unwrap().unwrap();
        assert_eq!(
            (st.cursor, st.seen, st.next_at),
            (Some(json!("T")), 0, Some(10))
        );
        let trail = s.list_audit(scope.tenant, None, None, 10).await.unwrap();
        assert_eq!(trail[0].action, "flow.backfill");
        assert!(
            trail[0].detail.contains("\"since\":\"T\""),
            "{}",
            trail[0].detail
        );
        // The backfilled poll starts the runs.
        s.claim_polls("w2", 10, 60_000, 1).await.unwrap();
        let rec = s
            .complete_poll(poll_done(
                scope,
                f.id,
                "w2",
                30,
                listed(scope, f.id, &["a", "b"], 30, 9),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.started.len(), 2);
        assert_eq!(
            s.poll_known(scope, f.id, vec!["a".into(), "x".into(), "b".into()])
                .await
                .unwrap()
                .len(),
            2
        );

        // A new trigger (the poll turned off) drops the listing in flight too.
        s.claim_polls("w1", 60_030, 60_000, 1).await.unwrap();
        s.set_poll(scope, f.id, None, None).await.unwrap();
        assert!(
            s.complete_poll(poll_done(
                scope,
                f.id,
                "w1",
                60_040,
                listed(scope, f.id, &["c"], 60_040, 9)
            ))
            .await
            .unwrap()
            .is_none()
        );
        let total: i64 = s.count_runs().await.unwrap().iter().map(|(_, n)| n).sum();
        assert_eq!(total, 2);

        // Leases go back at shutdown (own) or at an embedded start (everyone else's).
        s.set_poll(scope, f.id, Some(70_000), None).await.unwrap();
        s.claim_polls("w1", 70_000, 60_000, 1).await.unwrap();
        assert_eq!(s.release_polls("w2", false).await.unwrap(), 0);
        assert_eq!(s.release_polls("w2", true).await.unwrap(), 1);
        s.claim_polls("w2", 70_000, 60_000, 1).await.unwrap();
        assert_eq!(s.release_polls("w2", false).await.unwrap(), 1);
        assert_eq!(s.next_poll_at().await.unwrap(), Some(70_000));
    }
);

conformance!(a_poll_forgets_items_unseen_for_thirty_days, |s| {
    let scope = scope_of(&s).await;
    let f = s
        .save_flow(scope, "poller", json!({}), true, op(), 5)
        .await
        .unwrap();
    s.set_poll(scope, f.id, Some(0), Some(json!(null)))
        .await
        .unwrap();
    s.claim_polls("w", 0, 1_000, 1).await.unwrap();
    s.complete_poll(poll_done(
        scope,
        f.id,
        "w",
        0,
        listed(scope, f.id, &["old", "kept"], 0, 1),
    ))
    .await
    .unwrap()
    .unwrap();
    // "kept" is still listed two days later (its age refreshes), "old" is not.
    let day = 24 * 3600 * 1000;
    s.backfill_poll(scope, f.id, None, op(), 2 * day)
        .await
        .unwrap();
    s.claim_polls("w", 2 * day, 1_000, 1).await.unwrap();
    s.complete_poll(poll_done(
        scope,
        f.id,
        "w",
        2 * day,
        listed(scope, f.id, &["kept"], 2 * day, 1),
    ))
    .await
    .unwrap()
    .unwrap();
    let later = weft_store::POLL_SEEN_TTL_MS + day;
    s.backfill_poll(scope, f.id, None, op(), later)
        .await
        .unwrap();
    s.claim_polls("w", later, 1_000, 1).await.unwrap();
    s.complete_poll(poll_done(
        scope,
        f.id,
        "w",
        later,
        listed(scope, f.id, &[], later, 1),
    ))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(s.poll_state(scope, f.id).await.unwrap().unwrap().seen, 1);
});

/// Runs `$body` with `$s` a [`weft_store::Store`] over each backend whose payload store is a
/// local directory `$dir` with a 1 KiB threshold.
macro_rules! payload_conformance {
    ($name:ident, |$s:ident, $dir:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let (b, _g) = super::sqlite().await;
                let $dir = tempfile::tempdir().unwrap();
                let $s = super::with_payloads(weft_store::Store::from(b), $dir.path());
                $body
            }
            #[tokio::test]
            async fn postgres() {
                let (b, _g) = super::postgres().await;
                let $dir = tempfile::tempdir().unwrap();
                let $s = super::with_payloads(weft_store::Store::from(b), $dir.path());
                $body
            }
        }
    };
}

fn with_payloads(s: weft_store::Store, dir: &std::path::Path) -> weft_store::Store {
    s.with_payloads(weft_store::payloads::Payloads::local(dir, 1024).unwrap())
}

impl Bootstrapper for weft_store::Store {
    async fn boot(&self) -> Scope {
        let b = self.bootstrap_if_empty(1).await.unwrap().unwrap();
        Scope {
            tenant: b.tenant,
            workspace: b.workspace,
        }
    }
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, d: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// What the database itself holds for a run (references are not resolved).
async fn raw_run(
    s: &weft_store::Store,
    scope: Scope,
    r: weft_types::RunId,
) -> (weft_store::RunRecord, Vec<weft_store::StepRecord>) {
    match (s.as_sqlite(), s.as_postgres()) {
        (Some(b), _) => b.get_run(scope, r).await.unwrap(),
        (_, Some(b)) => b.get_run(scope, r).await.unwrap(),
        _ => unreachable!(),
    }
}

fn is_reference(v: &serde_json::Value) -> bool {
    matches!(
        weft_store::payloads::decode(v.clone()),
        Ok(weft_store::payloads::Decoded::Blob(_))
    )
}

fn step(id: &str, idx: i64, output: serde_json::Value, at: i64) -> weft_store::StepCheckpoint {
    weft_store::StepCheckpoint {
        step: weft_store::StepRecord {
            step_id: id.into(),
            idx,
            status: weft_types::StepStatus::Succeeded,
            attempts: 1,
            output: Some(output),
            error: None,
            started_at: Some(at),
            finished_at: Some(at),
        },
        logs: vec![],
    }
}

payload_conformance!(
    large_values_live_in_object_storage_and_read_back_whole,
    |s, dir| {
        let scope = scope_of(&s).await;
        let jan = 1_768_435_200_000;
        let before = s.usage(scope.tenant, jan).await.unwrap().stored_bytes;
        let f = weft_types::FlowId::new();
        let body = json!({"body": {"text": "t".repeat(5000), "nested": [1, {"a": "\u{e9}"}]}});
        let mut new = run(scope, f, Some("big"), jan);
        new.trigger = body.clone();
        let r = s.insert_run(new).await.unwrap().run_id;
        let files = files_under(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(
            files[0].starts_with(&format!(
                "{}/{}/{r}/trigger-",
                scope.tenant, scope.workspace
            )),
            "{files:?}"
        );
        assert!(is_reference(&raw_run(&s, scope, r).await.0.trigger));
        // The same delivery again is absorbed and writes no second object.
        let mut again = run(scope, f, Some("big"), jan + 1);
        again.trigger = body.clone();
        assert!(s.insert_run(again).await.unwrap().duplicate);
        assert_eq!(files_under(dir.path()).len(), 1);

        let claimed = s.claim_runs("w1", jan, 30_000, 10).await.unwrap();
        assert_eq!(
            claimed[0].run.trigger, body,
            "the worker sees the whole event"
        );
        let big =
            json!({"rows": (0..400).map(|i| json!({"i": i, "s": "row"})).collect::<Vec<_>>()});
        // A step whose output merely looks like a reference (to another run's object) is data.
        let forged =
            json!({"$weft_payload": {"blob": {"key": files[0], "size": 1, "sha256": "00"}}});
        assert!(
            s.checkpoint_step(scope, r, "w1", step("a", 0, big.clone(), jan), jan)
                .await
                .unwrap()
        );
        assert!(
            s.checkpoint_step(scope, r, "w1", step("b", 1, forged.clone(), jan), jan)
                .await
                .unwrap()
        );
        // Some steps by id, offloaded outputs read back whole; unknown ids are left out.
        let mut some = s
            .get_steps(scope, r, &["b".into(), "a".into(), "zz".into()])
            .await
            .unwrap();
        some.sort_by_key(|x| x.idx);
        assert_eq!(
            some.iter().map(|x| x.step_id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(some[0].output.as_ref(), Some(&big));
        assert_eq!(some[1].output.as_ref(), Some(&forged));
        assert!(s.get_steps(scope, r, &[]).await.unwrap().is_empty());
        assert!(
            !s.checkpoint_step(scope, r, "w2", step("c", 2, big.clone(), jan), jan)
                .await
                .unwrap(),
            "only the lease owner checkpoints"
        );
        assert_eq!(
            files_under(dir.path()).len(),
            2,
            "the refused checkpoint's object is removed"
        );
        let err = s.delete_run(scope, r, op(), jan).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Rule(_)),
            "a running run is not deleted: {err:?}"
        );

        let out = json!({"summary": "s".repeat(3000)});
        assert!(
            s.finish_run(
                scope,
                r,
                "w1",
                weft_types::RunStatus::Succeeded,
                Some(out.clone()),
                None,
                vec![],
                jan + 2
            )
            .await
            .unwrap()
        );
        let (raw, raw_steps) = raw_run(&s, scope, r).await;
        assert!(is_reference(raw.output.as_ref().unwrap()));
        assert!(is_reference(raw_steps[0].output.as_ref().unwrap()));
        assert!(!is_reference(raw_steps[1].output.as_ref().unwrap()));

        let (got, steps) = s.get_run(scope, r).await.unwrap();
        assert_eq!(got.trigger, body);
        assert_eq!(got.output.as_ref(), Some(&out));
        assert_eq!(steps[0].output.as_ref(), Some(&big));
        assert_eq!(steps[1].output.as_ref(), Some(&forged));
        let listed = s
            .list_runs(
                scope,
                weft_store::RunFilter {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(listed[0].trigger, body);
        assert_eq!(listed[0].output.as_ref(), Some(&out));

        // The tenant is charged for what it stores, wherever it is stored.
        let charged = s.usage(scope.tenant, jan).await.unwrap().stored_bytes - before;
        let logical = [&body, &big, &out]
            .iter()
            .map(|v| v.to_string().len() as i64)
            .sum::<i64>();
        assert!(
            charged >= logical,
            "charged {charged} for {logical} bytes of payloads"
        );

        // A process without the payload store says so instead of serving a reference.
        let bare = match (s.as_sqlite(), s.as_postgres()) {
            (Some(b), _) => weft_store::Store::from(b.clone()),
            (_, Some(b)) => weft_store::Store::from(b.clone()),
            _ => unreachable!(),
        };
        let err = bare.get_run(scope, r).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(ref m) if m.contains("--payload-store")),
            "{err:?}"
        );

        // Deleting the run deletes its objects and gives its bytes back.
        s.delete_run(scope, r, op(), jan + 3).await.unwrap();
        assert_eq!(files_under(dir.path()), Vec::<String>::new());
        assert!(matches!(
            s.get_run(scope, r).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.delete_run(scope, r, op(), jan + 3).await,
            Err(StoreError::NotFound)
        ));
        let left = s.usage(scope.tenant, jan).await.unwrap().stored_bytes - before;
        assert!(
            left.abs() <= 16,
            "{left} bytes still charged after the delete"
        );
        let trail = s.list_audit(scope.tenant, None, None, 10).await.unwrap();
        assert_eq!(trail[0].action, "run.delete");
    }
);

payload_conformance!(
    a_tampered_or_missing_payload_is_reported_not_served,
    |s, dir| {
        let scope = scope_of(&s).await;
        let mut new = run(scope, weft_types::FlowId::new(), None, 5);
        new.trigger = json!({"x": "y".repeat(2000)});
        let r = s.insert_run(new).await.unwrap().run_id;
        let file = dir.path().join(&files_under(dir.path())[0]);
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("yyy", "yyz")).unwrap();
        let err = s.get_run(scope, r).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt(ref m) if m.contains("hash")),
            "{err:?}"
        );
        std::fs::remove_file(&file).unwrap();
        let err = s.get_run(scope, r).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt(ref m) if m.contains("missing")),
            "{err:?}"
        );
        // Another tenant's scope does not find the run at all.
        let other = s
            .create_tenant("o", "o@example.com", Limits::default(), op(), 6)
            .await
            .unwrap();
        let other = Scope {
            tenant: other.tenant,
            workspace: other.workspace,
        };
        assert!(matches!(
            s.get_run(other, r).await,
            Err(StoreError::NotFound)
        ));
    }
);

payload_conformance!(the_sweep_removes_orphans_and_nothing_else, |s, dir| {
    let scope = scope_of(&s).await;
    let mut new = run(scope, weft_types::FlowId::new(), None, 5);
    new.trigger = json!({"x": "y".repeat(2000)});
    let r = s.insert_run(new).await.unwrap().run_id;
    // An object written for a run that never committed (the process died in between).
    let orphan = weft_types::RunId::new();
    let odir = dir
        .path()
        .join(format!("{}/{}/{orphan}", scope.tenant, scope.workspace));
    std::fs::create_dir_all(&odir).unwrap();
    std::fs::write(odir.join("trigger-0.json"), "{}").unwrap();
    // Something that is not Weft's is left alone.
    std::fs::write(dir.path().join("README"), "mine").unwrap();
    assert_eq!(
        s.sweep_payloads(0).await.unwrap(),
        0,
        "nothing is old enough"
    );
    assert_eq!(s.sweep_payloads(i64::MAX).await.unwrap(), 1);
    let left = files_under(dir.path());
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|f| f.contains(&r.to_string())));
    assert!(s.get_run(scope, r).await.is_ok());
});

payload_conformance!(
    a_run_whose_payload_cannot_be_read_fails_or_waits,
    |s, dir| {
        let scope = scope_of(&s).await;
        let big = |n: i64| {
            let mut r = run(scope, weft_types::FlowId::new(), None, n);
            r.trigger = json!({"x": "y".repeat(2000), "n": n});
            r
        };
        let lost = s.insert_run(big(1)).await.unwrap().run_id;
        for f in files_under(dir.path()) {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        // A payload that is gone cannot come back: the run fails with the reason, once.
        assert!(s.claim_runs("w1", 10, 30_000, 10).await.unwrap().is_empty());
        let (r, _) = raw_run(&s, scope, lost).await;
        assert_eq!(r.status, weft_types::RunStatus::Failed);
        assert!(
            r.error.as_deref().unwrap_or("").contains("missing"),
            "{:?}",
            r.error
        );

        // A payload store that does not answer: the run goes back to the queue for a while.
        let waits = s.insert_run(big(20)).await.unwrap().run_id;
        let dead = object_store::aws::AmazonS3Builder::new()
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_bucket_name("b")
            .with_region("us-east-1")
            .with_access_key_id("k")
            .with_secret_access_key("s")
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .unwrap();
        let backend = match (s.as_sqlite(), s.as_postgres()) {
            (Some(b), _) => weft_store::Store::from(b.clone()),
            (_, Some(b)) => weft_store::Store::from(b.clone()),
            _ => unreachable!(),
        };
        let unreachable = backend.with_payloads(weft_store::payloads::Payloads::new(
            std::sync::Arc::new(dead),
            1024,
            "dead".into(),
        ));
        assert!(
            unreachable
                .claim_runs("w1", 30, 30_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let (r, _) = raw_run(&s, scope, waits).await;
        assert_eq!(r.status, weft_types::RunStatus::Queued, "{:?}", r.error);
        assert!(
            s.claim_runs("w1", 31, 30_000, 10).await.unwrap().is_empty(),
            "not yet"
        );
        let back = s.claim_runs("w1", 30 + 10_001, 30_000, 10).await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].run.trigger["n"], 20);
    }
);

conformance!(concurrent_checkpoints_each_get_their_own_answer, |s| {
    // On PostgreSQL, checkpoints queued together are written by one statement: each must
    // still be refused or written on its own, with its own log lines in order.
    let scope = scope_of(&s).await;
    let f = weft_types::FlowId::new();
    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(s.insert_run(run(scope, f, None, i)).await.unwrap().run_id);
    }
    assert_eq!(s.claim_runs("w1", 100, 30_000, 50).await.unwrap().len(), 20);
    let mut hs = Vec::new();
    for (n, r) in runs.iter().enumerate() {
        for (idx, step) in ["a", "b"].into_iter().enumerate() {
            let s = s.clone();
            let r = *r;
            // Every fifth run's checkpoints come from a worker that does not hold it.
            let owner = if n % 5 == 0 { "w2" } else { "w1" };
            hs.push(tokio::spawn(async move {
                let mut cp = super::step(step, idx as i64, json!({"run": n, "step": step}), 150);
                cp.logs = (0..3)
                    .map(|k| {
                        weft_store::NewLog::new(
                            "info",
                            Some(step.into()),
                            weft_store::RunEvent::Log,
                            format!("{step}{k}"),
                        )
                    })
                    .collect();
                (
                    n,
                    s.checkpoint_step(scope, r, owner, cp, 200).await.unwrap(),
                )
            }));
        }
    }
    for h in hs {
        let (n, held) = h.await.unwrap();
        assert_eq!(held, n % 5 != 0, "run {n}");
    }
    for (n, r) in runs.iter().enumerate() {
        let (_, steps) = s.get_run(scope, *r).await.unwrap();
        let logs: Vec<String> = s
            .run_logs(scope, *r, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        if n % 5 == 0 {
            assert!(
                steps.is_empty() && logs.is_empty(),
                "run {n}: {steps:?} {logs:?}"
            );
            continue;
        }
        assert_eq!(steps.len(), 2, "run {n}");
        for st in &steps {
            assert_eq!(st.output, Some(json!({"run": n, "step": st.step_id})));
        }
        // Each step's lines stay in their order (the two steps may interleave).
        for step in ["a", "b"] {
            let mine: Vec<&String> = logs.iter().filter(|l| l.starts_with(step)).collect();
            assert_eq!(
                mine,
                [
                    &format!("{step}0"),
                    &format!("{step}1"),
                    &format!("{step}2")
                ]
            );
        }
    }
});

conformance!(concurrent_finishes_each_get_their_own_answer, |s| {
    // On PostgreSQL, finishes queued together are written by one statement, with one charge.
    let scope = scope_of(&s).await;
    let jan = 1_768_435_200_000;
    let f = weft_types::FlowId::new();
    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(
            s.insert_run(run(scope, f, None, jan + i))
                .await
                .unwrap()
                .run_id,
        );
    }
    assert_eq!(
        s.claim_runs("w1", jan + 100, 30_000, 50)
            .await
            .unwrap()
            .len(),
        20
    );
    for r in &runs {
        let cp = step("a", 0, json!({"v": "x".repeat(50)}), 150);
        assert!(
            s.checkpoint_step(scope, *r, "w1", cp, jan + 150)
                .await
                .unwrap()
        );
    }
    let before = s.usage(scope.tenant, jan).await.unwrap().stored_bytes;
    let mut hs = Vec::new();
    for (n, r) in runs.iter().enumerate() {
        let (s, r) = (s.clone(), *r);
        let owner = if n % 5 == 0 { "w2" } else { "w1" };
        hs.push(tokio::spawn(async move {
            let logs = (0..3)
                .map(|k| {
                    weft_store::NewLog::new(
                        "info",
                        None,
                        weft_store::RunEvent::Log,
                        format!("end{k}"),
                    )
                })
                .collect();
            let status = if n % 2 == 0 {
                weft_types::RunStatus::Succeeded
            } else {
                weft_types::RunStatus::Failed
            };
            let done = s
                .finish_run(
                    scope,
                    r,
                    owner,
                    status,
                    Some(json!({"n": n})),
                    None,
                    logs,
                    jan + 200,
                )
                .await
                .unwrap();
            (n, done)
        }));
    }
    for h in hs {
        let (n, done) = h.await.unwrap();
        assert_eq!(done, n % 5 != 0, "run {n}");
    }
    for (n, r) in runs.iter().enumerate() {
        let (got, _) = s.get_run(scope, *r).await.unwrap();
        let logs: Vec<String> = s
            .run_logs(scope, *r, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        if n % 5 == 0 {
            assert_eq!(got.status, weft_types::RunStatus::Running, "run {n}");
            assert!(logs.is_empty());
            continue;
        }
        let want = if n % 2 == 0 { "succeeded" } else { "failed" };
        assert_eq!(got.status.as_str(), want, "run {n}");
        assert_eq!(got.output, Some(json!({"n": n})));
        assert_eq!(got.finished_at, Some(jan + 200));
        assert_eq!(logs, ["end0", "end1", "end2"]);
    }
    // Sixteen runs were charged for their step and run outputs, the four refused ones nothing.
    let charged = s.usage(scope.tenant, jan).await.unwrap().stored_bytes - before;
    let step_len = json!({"v": "x".repeat(50)}).to_string().len() as i64;
    let compact: i64 = (0..20)
        .filter(|n| n % 5 != 0)
        .map(|n| step_len + json!({"n": n}).to_string().len() as i64)
        .sum();
    // PostgreSQL's jsonb text adds a space after each ':' of the step outputs.
    assert!(
        (compact..=compact + 16).contains(&charged),
        "charged {charged}, expected about {compact}"
    );
    // The held runs are still leased to w1 and finish normally.
    assert!(
        s.finish_run(
            scope,
            runs[0],
            "w1",
            weft_types::RunStatus::Succeeded,
            None,
            None,
            vec![],
            jan + 300
        )
        .await
        .unwrap()
    );
});

conformance!(concurrent_plain_inserts_are_all_queued_and_counted, |s| {
    // On PostgreSQL, plain inserts (no delivery key) of an unlimited tenant queued together are
    // written by one statement; a limited tenant's still go one by one through its checks.
    let open = scope_of(&s).await;
    let plan = Limits {
        runs_per_month: Some(25),
        ..Limits::default()
    };
    let t = s
        .create_tenant("q", "q@example.com", plan, op(), 1)
        .await
        .unwrap();
    let limited = Scope {
        tenant: t.tenant,
        workspace: t.workspace,
    };
    let jan = 1_768_435_200_000;
    let f = weft_types::FlowId::new();
    let mut hs = Vec::new();
    for i in 0..120 {
        let s = s.clone();
        let scope = if i % 3 == 0 { limited } else { open };
        hs.push(tokio::spawn(async move {
            (scope, s.insert_run(run(scope, f, None, jan + i)).await)
        }));
    }
    let (mut ok_open, mut ok_limited, mut refused) = (0, 0, 0);
    for h in hs {
        match h.await.unwrap() {
            (sc, Ok(ins)) if sc == open => {
                assert!(!ins.duplicate);
                ok_open += 1
            }
            (_, Ok(_)) => ok_limited += 1,
            (_, Err(StoreError::Quota { .. })) => refused += 1,
            (_, Err(e)) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok_open, ok_limited, refused), (80, 25, 15));
    let u = s.usage(open.tenant, jan).await.unwrap();
    assert_eq!(u.runs_in_month, 80);
    let claimed = s.claim_runs("w1", jan + 1_000, 30_000, 500).await.unwrap();
    assert_eq!(
        claimed.len(),
        105,
        "every accepted run is queued, and only those"
    );
});

fn sealed(key: &str, tag: u8) -> weft_store::SealedValues {
    weft_store::SealedValues {
        key_id: key.into(),
        wrapped_key: vec![tag; 61],
        ciphertext: vec![tag, 0, 255, tag],
    }
}

conformance!(
    credentials_are_stored_sealed_replaced_listed_rewrapped_and_walled,
    |s| {
        use weft_store::NewCredential;
        use weft_types::CredentialId;
        let a = s.bootstrap_if_empty(1).await.unwrap().unwrap();
        let b = s
            .create_tenant("b", "b@example.com", Limits::default(), op(), 2)
            .await
            .unwrap();
        let sa = Scope {
            tenant: a.tenant,
            workspace: a.workspace,
        };
        let sb = Scope {
            tenant: b.tenant,
            workspace: b.workspace,
        };
        let id = CredentialId::new();
        let new = |id: CredentialId, tag: u8| NewCredential {
            id,
            name: "gh".into(),
            connector: "github".into(),
            fields: vec!["token".into(), "webhook_secret".into()],
            sealed: sealed("mk_old", tag),
        };
        let (rec, created) = s.put_credential(sa, new(id, 1), op(), 3).await.unwrap();
        assert!(created);
        assert_eq!(
            (rec.id, rec.name.as_str(), rec.status.as_str()),
            (id, "gh", "ok")
        );
        assert_eq!(rec.fields, vec!["token", "webhook_secret"]);
        // Replacing keeps the id; a different id for the same name is a race and changes nothing.
        let (rec2, created) = s.put_credential(sa, new(id, 2), op(), 4).await.unwrap();
        assert!(!created);
        assert_eq!((rec2.id, rec2.created_at, rec2.updated_at), (id, 3, 4));
        assert!(matches!(
            s.put_credential(sa, new(CredentialId::new(), 9), op(), 5)
                .await,
            Err(StoreError::Conflict(_))
        ));
        let (_, got) = s.credential(sa, "gh").await.unwrap().unwrap();
        assert_eq!(got, sealed("mk_old", 2));
        // Authentication failures in a row: counted, cleared by a success, and the one that
        // reaches the threshold pauses it (once); another tenant's count changes nothing.
        let fail = |at: i64| s.note_auth_failure(sa, id, 3, "refused 3 times".into(), at);
        assert!(!fail(10).await.unwrap());
        assert!(!fail(11).await.unwrap());
        assert!(
            !s.note_auth_failure(sb, id, 3, "x".into(), 11)
                .await
                .unwrap()
        );
        s.clear_auth_failures(sa, id).await.unwrap();
        let st = &s;
        let status = |sc| async move {
            let (r, _) = st.credential(sc, "gh").await.unwrap().unwrap();
            (r.status, r.status_reason, r.auth_failures)
        };
        assert_eq!(status(sa).await, ("ok".to_string(), None, 0));
        assert!(!fail(12).await.unwrap());
        assert!(!fail(13).await.unwrap());
        assert!(fail(14).await.unwrap());
        assert!(
            !fail(15).await.unwrap(),
            "a paused credential is not counted again"
        );
        assert_eq!(
            status(sa).await,
            (
                "needs_reauth".to_string(),
                Some("refused 3 times".to_string()),
                3
            )
        );
        // New values put it back in service.
        s.put_credential(sa, new(id, 2), op(), 16).await.unwrap();
        assert_eq!(status(sa).await, ("ok".to_string(), None, 0));
        // Another tenant sees nothing and cannot delete it; it may use the same name.
        assert!(s.credential(sb, "gh").await.unwrap().is_none());
        assert!(s.list_credentials(sb).await.unwrap().is_empty());
        assert!(matches!(
            s.delete_credential(sb, "gh", op(), 6).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.set_credential_status(sb, id, Some("x".into()), 6).await,
            Err(StoreError::NotFound)
        ));
        let idb = CredentialId::new();
        s.put_credential(sb, new(idb, 7), op(), 6).await.unwrap();

        // Status.
        s.set_credential_status(sa, id, Some("invalid_grant".into()), 7)
            .await
            .unwrap();
        let l = s.list_credentials(sa).await.unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].status, "needs_reauth");
        assert_eq!(l[0].status_reason.as_deref(), Some("invalid_grant"));

        // Rotation walks every tenant's credentials not yet under the new key, in pages.
        let page = s.credentials_to_rewrap("mk_new", None, 1).await.unwrap();
        assert_eq!(page.len(), 1);
        let rest = s
            .credentials_to_rewrap("mk_new", Some((page[0].scope, page[0].id)), 10)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        let mut seen: Vec<_> = page.iter().chain(&rest).map(|c| c.id).collect();
        seen.sort();
        let mut want = vec![id, idb];
        want.sort();
        assert_eq!(seen, want);
        let mut moved = sealed("mk_new", 2);
        moved.ciphertext = got.ciphertext.clone();
        // A stale read (the values changed since) is not rewrapped.
        let mut stale = moved.clone();
        stale.ciphertext = vec![0];
        assert!(!s.rewrap_credential(sa, id, "mk_old", stale).await.unwrap());
        assert!(
            s.rewrap_credential(sa, id, "mk_old", moved.clone())
                .await
                .unwrap()
        );
        assert!(
            !s.rewrap_credential(sa, id, "mk_old", moved.clone())
                .await
                .unwrap()
        );
        let (_, now) = s.credential(sa, "gh").await.unwrap().unwrap();
        assert_eq!(now, moved);
        let left = s.credentials_to_rewrap("mk_new", None, 10).await.unwrap();
        assert_eq!(left.iter().map(|c| c.id).collect::<Vec<_>>(), vec![idb]);

        s.delete_credential(sa, "gh", op(), 8).await.unwrap();
        assert!(s.credential(sa, "gh").await.unwrap().is_none());
        assert!(s.credential(sb, "gh").await.unwrap().is_some());
        // Every change is audited, without values.
        let trail = s.list_audit(a.tenant, None, None, 50).await.unwrap();
        let actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
        for want in [
            "credential.create",
            "credential.update",
            "credential.delete",
        ] {
            assert!(actions.contains(&want), "{actions:?}");
        }
        assert_eq!(s.verify_audit(a.tenant).await.unwrap().broken, None);
    }
);

conformance!(installed_connector_versions_are_immutable_and_walled, |s| {
    let a = s.bootstrap_if_empty(1).await.unwrap().unwrap();
    let b = s
        .create_tenant("b", "b@example.com", Limits::default(), op(), 2)
        .await
        .unwrap();
    let sa = Scope {
        tenant: a.tenant,
        workspace: a.workspace,
    };
    let sb = Scope {
        tenant: b.tenant,
        workspace: b.workspace,
    };
    let m1 = json!({"name": "acme", "version": "1.0.0", "x": 1});
    assert!(
        s.install_connector(sa, "acme", "1.0.0", m1.clone(), op(), 3)
            .await
            .unwrap()
    );
    // The same manifest again changes nothing; another one under that version is refused.
    assert!(
        !s.install_connector(sa, "acme", "1.0.0", m1.clone(), op(), 4)
            .await
            .unwrap()
    );
    assert!(matches!(
        s.install_connector(sa, "acme", "1.0.0", json!({"other": true}), op(), 5)
            .await,
        Err(StoreError::Conflict(_))
    ));
    s.install_connector(sa, "acme", "1.1.0", json!({"v": 2}), op(), 6)
        .await
        .unwrap();
    let l = s.installed_connectors(sa).await.unwrap();
    assert_eq!(
        l.iter().map(|c| c.version.as_str()).collect::<Vec<_>>(),
        vec!["1.0.0", "1.1.0"]
    );
    assert_eq!(l[0].manifest, m1);
    assert!(s.installed_connectors(sb).await.unwrap().is_empty());
    let trail = s.list_audit(a.tenant, None, None, 50).await.unwrap();
    assert_eq!(
        trail
            .iter()
            .filter(|e| e.action == "connector.install")
            .count(),
        2
    );
});

conformance!(
    oauth_states_work_once_and_refresh_leases_are_exclusive,
    |s| {
        use weft_store::{NewCredential, OAuthState};
        use weft_types::CredentialId;
        let a = s.bootstrap_if_empty(1).await.unwrap().unwrap();
        let sa = Scope {
            tenant: a.tenant,
            workspace: a.workspace,
        };
        let id = CredentialId::new();
        s.put_credential(
            sa,
            NewCredential {
                id,
                name: "o".into(),
                connector: "oauth2".into(),
                fields: vec!["client_id".into()],
                sealed: sealed("mk_a", 1),
            },
            op(),
            2,
        )
        .await
        .unwrap();
        let st = OAuthState {
            scope: sa,
            credential: id,
            verifier: "v".repeat(43),
            redirect_uri: "http://x/oauth/callback".into(),
            expires_at: 1_000,
        };
        s.save_oauth_state("h1", st.clone()).await.unwrap();
        s.save_oauth_state("h2", st.clone()).await.unwrap();
        assert_eq!(
            s.take_oauth_state("h1", 500).await.unwrap(),
            Some(st.clone())
        );
        assert_eq!(
            s.take_oauth_state("h1", 500).await.unwrap(),
            None,
            "a state works once"
        );
        assert_eq!(s.take_oauth_state("nope", 500).await.unwrap(), None);
        assert_eq!(
            s.take_oauth_state("h2", 1_001).await.unwrap(),
            None,
            "expired"
        );

        // One refresher at a time; the lease ends with new values, a status change, or by time.
        assert!(s.lease_credential_refresh(sa, id, 100, 10).await.unwrap());
        assert!(!s.lease_credential_refresh(sa, id, 100, 20).await.unwrap());
        assert!(
            s.lease_credential_refresh(sa, id, 300, 150).await.unwrap(),
            "an expired lease is taken over"
        );
        s.replace_credential_values(
            sa,
            id,
            sealed("mk_a", 7),
            vec!["access_token".into()],
            None,
            op(),
            160,
        )
        .await
        .unwrap();
        let (rec, got) = s.credential(sa, "o").await.unwrap().unwrap();
        assert_eq!(
            (rec.status.as_str(), rec.fields.clone(), got),
            ("ok", vec!["access_token".to_string()], sealed("mk_a", 7))
        );
        assert!(s.lease_credential_refresh(sa, id, 400, 170).await.unwrap());
        s.set_credential_status(sa, id, Some("invalid_grant".into()), 180)
            .await
            .unwrap();
        assert!(s.lease_credential_refresh(sa, id, 400, 190).await.unwrap());
        let trail = s.list_audit(a.tenant, None, None, 50).await.unwrap();
        assert!(
            !trail.iter().any(|e| e.action == "credential.authorize"),
            "refreshes are not audited"
        );
    }
);

/// A run started by `parent` as a sub-flow.
fn child(scope: Scope, parent: weft_types::RunId, now: i64) -> weft_store::NewRun {
    weft_store::NewRun {
        parent: Some(parent),
        ..run(scope, weft_types::FlowId::new(), None, now)
    }
}

fn failed_step(id: &str, idx: i64, at: i64) -> weft_store::StepCheckpoint {
    let mut cp = step(id, idx, json!(null), at);
    cp.step.status = weft_types::StepStatus::Failed;
    cp.step.output = None;
    cp.step.error = Some("boom".into());
    cp
}

conformance!(
    a_parked_run_waits_for_its_time_then_resumes_with_its_steps,
    |s| {
        use weft_types::RunStatus;
        let scope = scope_of(&s).await;
        let r = s
            .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
            .await
            .unwrap()
            .run_id;
        s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
        let cp = step("a", 0, json!({"x": 1}), 210);
        assert!(
            s.checkpoint_step(scope, r, "w1", cp.clone(), 210)
                .await
                .unwrap()
        );
        assert!(
            !s.park_run(scope, r, "w2", Some(10_000), vec![], 220)
                .await
                .unwrap(),
            "only the lease owner parks a run"
        );
        assert_eq!(
            s.get_run(scope, r).await.unwrap().0.status,
            RunStatus::Running
        );
        assert!(
            s.park_run(scope, r, "w1", Some(10_000), vec![], 220)
                .await
                .unwrap()
        );
        assert_eq!(
            s.get_run(scope, r).await.unwrap().0.status,
            RunStatus::Waiting
        );
        assert_eq!(s.next_wake_at().await.unwrap(), Some(10_000));
        assert!(
            s.claim_runs("w2", 5_000, 30_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "a waiting run is not claimed before its time"
        );
        assert_eq!(
            s.reclaim_expired(100_000).await.unwrap(),
            0,
            "a parked run holds no lease"
        );
        assert_eq!(s.wake_runs(9_999, 100).await.unwrap(), 0);
        assert_eq!(s.wake_runs(10_000, 100).await.unwrap(), 1);
        assert_eq!(s.next_wake_at().await.unwrap(), None);
        assert_eq!(
            s.get_run(scope, r).await.unwrap().0.status,
            RunStatus::Queued
        );
        let again = s.claim_runs("w2", 10_000, 30_000, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].run.id, r);
        assert_eq!(
            again[0].steps,
            vec![cp.step],
            "checkpoints come back with the claim"
        );
        assert!(
            s.finish_run(
                scope,
                r,
                "w2",
                RunStatus::Succeeded,
                None,
                None,
                vec![],
                10_001
            )
            .await
            .unwrap()
        );
    }
);

conformance!(a_run_parked_without_a_timer_waits_for_its_signal, |s| {
    use weft_types::RunStatus;
    let scope = scope_of(&s).await;
    let r = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
    assert!(
        s.park_run(scope, r, "w1", None, vec!["approve".into()], 300)
            .await
            .unwrap()
    );
    assert_eq!(
        s.next_wake_at().await.unwrap(),
        None,
        "a wait without a timer has no wake time"
    );
    let far = 4_000_000_000_000;
    assert_eq!(s.wake_runs(far, 100).await.unwrap(), 0);
    assert!(
        s.claim_runs("w2", far, 30_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Another signal is stored; the run keeps waiting for its own.
    assert_eq!(
        s.signal_run(scope, r, "note", json!(1), op(), 400)
            .await
            .unwrap(),
        RunStatus::Queued,
        "any signal makes a waiting run ready (the worker decides whether to park again)"
    );
    assert!(matches!(
        s.signal_run(scope, r, "note", json!(2), op(), 410).await,
        Err(StoreError::Conflict(m)) if m.contains("single-use")
    ));
    let claimed = s.claim_runs("w2", 420, 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        s.park_run(scope, r, "w2", None, vec!["approve".into()], 430)
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_run(scope, r).await.unwrap().0.status,
        RunStatus::Waiting,
        "a signal it does not await leaves the park alone"
    );
    assert_eq!(
        s.signal_run(scope, r, "approve", json!({"by": "ann"}), op(), 500)
            .await
            .unwrap(),
        RunStatus::Queued
    );
    let claimed = s.claim_runs("w3", 500, 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "a signalled run is ready at once");
    let sigs = s.run_signals(scope, r).await.unwrap();
    assert_eq!(
        sigs.iter()
            .map(|x| (x.name.as_str(), x.payload.clone(), x.created_at))
            .collect::<Vec<_>>(),
        vec![
            ("note", json!(1), 400),
            ("approve", json!({"by": "ann"}), 500)
        ]
    );
    // Signals to a running run are stored; it stays running.
    assert_eq!(
        s.signal_run(scope, r, "later", json!(null), op(), 510)
            .await
            .unwrap(),
        RunStatus::Running
    );
    assert!(
        s.finish_run(
            scope,
            r,
            "w3",
            RunStatus::Succeeded,
            None,
            None,
            vec![],
            600
        )
        .await
        .unwrap()
    );
    assert!(matches!(
        s.signal_run(scope, r, "late", json!(1), op(), 700).await,
        Err(StoreError::Conflict(m)) if m.contains("already succeeded")
    ));
    assert!(matches!(
        s.signal_run(scope, weft_types::RunId::new(), "x", json!(1), op(), 700)
            .await,
        Err(StoreError::NotFound)
    ));
    let other = s
        .create_workspace(scope.tenant, "ops", "Ops", None, op(), 700)
        .await
        .unwrap();
    assert!(matches!(
        s.signal_run(other.scope, r, "x", json!(1), op(), 700).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.run_signals(other.scope, r).await.unwrap().is_empty());
    // Audited by name, never with the payload.
    let trail = s.list_audit(scope.tenant, None, None, 100).await.unwrap();
    let signals: Vec<_> = trail
        .iter()
        .filter(|e| e.action == "run.signal")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(
        signals,
        vec![
            r#"{"name":"later"}"#,
            r#"{"name":"approve"}"#,
            r#"{"name":"note"}"#
        ]
    );
    assert_eq!(s.verify_audit(scope.tenant).await.unwrap().broken, None);
    // Deleting the run deletes its signals.
    s.delete_run(scope, r, op(), 800).await.unwrap();
    assert!(s.run_signals(scope, r).await.unwrap().is_empty());
});

conformance!(a_park_whose_signal_already_arrived_is_ready_at_once, |s| {
    use weft_types::RunStatus;
    let scope = scope_of(&s).await;
    let r = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    s.claim_runs("w1", 200, 30_000, 10).await.unwrap();
    assert_eq!(
        s.signal_run(scope, r, "go", json!(true), op(), 250)
            .await
            .unwrap(),
        RunStatus::Running
    );
    assert!(
        s.park_run(
            scope,
            r,
            "w1",
            Some(90_000),
            vec!["other".into(), "go".into()],
            300
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.get_run(scope, r).await.unwrap().0.status,
        RunStatus::Queued
    );
    assert_eq!(s.next_wake_at().await.unwrap(), None);
    let claimed = s.claim_runs("w2", 300, 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "the signal is not missed");
});

conformance!(
    retry_in_place_keeps_succeeded_steps_and_drops_the_rest,
    |s| {
        use weft_types::RunStatus;
        let scope = scope_of(&s).await;
        let jan = 1_768_435_200_000;
        let r = s
            .insert_run(run(scope, weft_types::FlowId::new(), None, jan))
            .await
            .unwrap()
            .run_id;
        let u0 = s.usage(scope.tenant, jan).await.unwrap();
        s.claim_runs("w1", jan, 30_000, 10).await.unwrap();
        let a = step("a", 0, json!("kept"), jan);
        for cp in [a.clone(), failed_step("b", 1, jan)] {
            assert!(s.checkpoint_step(scope, r, "w1", cp, jan).await.unwrap());
        }
        assert!(
            s.finish_run(
                scope,
                r,
                "w1",
                RunStatus::Failed,
                None,
                Some("step b failed".into()),
                vec![],
                jan + 1
            )
            .await
            .unwrap()
        );
        let u1 = s.usage(scope.tenant, jan).await.unwrap();
        assert!(u1.stored_bytes > u0.stored_bytes);
        s.retry_run(scope, r, op(), jan + 2).await.unwrap();
        let (got, steps) = s.get_run(scope, r).await.unwrap();
        assert_eq!(
            (got.status, got.error, got.finished_at, got.output),
            (RunStatus::Queued, None, None, None)
        );
        assert_eq!(steps, vec![a.step.clone()], "the failed step is dropped");
        let u2 = s.usage(scope.tenant, jan).await.unwrap();
        assert_eq!(
            (u2.runs_in_month, u2.stored_bytes),
            (u0.runs_in_month, u0.stored_bytes),
            "not a new run; the bytes charged at the failure come back until it ends again"
        );
        assert!(
            s.run_logs(scope, r, 0, 100)
                .await
                .unwrap()
                .iter()
                .any(|l| l.message == "retry requested: resuming from the failed step")
        );
        let claimed = s.claim_runs("w2", jan + 3, 30_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "a retried run is claimable again");
        assert_eq!(claimed[0].steps, vec![a.step]);
        assert!(matches!(
            s.retry_run(scope, r, op(), jan + 4).await,
            Err(StoreError::Conflict(m)) if m.contains("this one is running")
        ));
        assert!(
            s.finish_run(
                scope,
                r,
                "w2",
                RunStatus::Succeeded,
                None,
                None,
                vec![],
                jan + 5
            )
            .await
            .unwrap()
        );
        assert_eq!(
            s.usage(scope.tenant, jan).await.unwrap().stored_bytes,
            u0.stored_bytes + r#""kept""#.len() as i64,
            "the kept step's output is charged again when the run ends"
        );
        assert!(matches!(
            s.retry_run(scope, r, op(), jan + 6).await,
            Err(StoreError::Conflict(m)) if m.contains("this one is succeeded")
        ));
        assert!(matches!(
            s.retry_run(scope, weft_types::RunId::new(), op(), jan + 6)
                .await,
            Err(StoreError::NotFound)
        ));
        let trail = s.list_audit(scope.tenant, None, None, 100).await.unwrap();
        assert_eq!(trail.iter().filter(|e| e.action == "run.retry").count(), 1);
        assert_eq!(s.verify_audit(scope.tenant).await.unwrap().broken, None);
    }
);

conformance!(a_finished_child_run_wakes_its_waiting_parent, |s| {
    use weft_types::RunStatus;
    let scope = scope_of(&s).await;
    let p = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    s.claim_runs("w1", 100, 30_000, 10).await.unwrap();
    let c = s.insert_run(child(scope, p, 110)).await.unwrap().run_id;
    assert!(
        s.park_run(scope, p, "w1", None, vec![c.to_string()], 120)
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_run(scope, p).await.unwrap().0.status,
        RunStatus::Waiting
    );
    assert_eq!(s.get_run(scope, c).await.unwrap().0.parent, Some(p));
    assert_eq!(s.get_run(scope, p).await.unwrap().0.parent, None);
    let kids = s.child_runs(scope, p).await.unwrap();
    assert_eq!(kids.iter().map(|k| k.id).collect::<Vec<_>>(), vec![c]);
    let claimed = s.claim_runs("w2", 130, 30_000, 10).await.unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|x| (x.run.id, x.run.parent))
            .collect::<Vec<_>>(),
        vec![(c, Some(p))],
        "only the child is ready"
    );
    assert!(
        s.finish_run(
            scope,
            c,
            "w2",
            RunStatus::Succeeded,
            Some(json!({"done": 1})),
            None,
            vec![],
            140
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.get_run(scope, p).await.unwrap().0.status,
        RunStatus::Queued,
        "the child's end woke its parent"
    );
    let claimed = s.claim_runs("w1", 140, 30_000, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|x| x.run.id).collect::<Vec<_>>(),
        vec![p]
    );
    // A child that ended before its parent parked: the park does not wait for it.
    let c2 = s.insert_run(child(scope, p, 150)).await.unwrap().run_id;
    s.claim_runs("w2", 150, 30_000, 10).await.unwrap();
    assert!(
        s.finish_run(
            scope,
            c2,
            "w2",
            RunStatus::Failed,
            None,
            Some("no".into()),
            vec![],
            160
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.get_run(scope, p).await.unwrap().0.status,
        RunStatus::Running,
        "a running parent is left alone"
    );
    assert!(
        s.park_run(scope, p, "w1", None, vec![c2.to_string()], 170)
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_run(scope, p).await.unwrap().0.status,
        RunStatus::Queued
    );
    // A cancelled child wakes its waiting parent too.
    s.claim_runs("w1", 180, 30_000, 10).await.unwrap();
    let c3 = s.insert_run(child(scope, p, 185)).await.unwrap().run_id;
    assert!(
        s.park_run(scope, p, "w1", Some(50_000), vec![], 190)
            .await
            .unwrap()
    );
    assert_eq!(
        s.cancel_run(scope, c3, op(), 200).await.unwrap(),
        RunStatus::Cancelled
    );
    assert_eq!(
        s.get_run(scope, p).await.unwrap().0.status,
        RunStatus::Queued
    );
    let kids = s.child_runs(scope, p).await.unwrap();
    assert_eq!(
        kids.iter().map(|k| k.id).collect::<Vec<_>>(),
        vec![c, c2, c3],
        "oldest first"
    );
});

conformance!(cancelling_a_run_cancels_its_unfinished_descendants, |s| {
    use weft_types::RunStatus;
    let scope = scope_of(&s).await;
    let p = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    s.claim_runs("w1", 100, 30_000, 10).await.unwrap();
    // A finished child, a waiting child and a queued child, with grandchildren under two.
    let done = s.insert_run(child(scope, p, 110)).await.unwrap().run_id;
    s.claim_runs("w2", 110, 30_000, 10).await.unwrap();
    assert!(
        s.finish_run(
            scope,
            done,
            "w2",
            RunStatus::Succeeded,
            None,
            None,
            vec![],
            115
        )
        .await
        .unwrap()
    );
    let waiting = s.insert_run(child(scope, p, 120)).await.unwrap().run_id;
    s.claim_runs("w3", 120, 30_000, 10).await.unwrap();
    assert!(
        s.park_run(scope, waiting, "w3", Some(99_000), vec![], 125)
            .await
            .unwrap()
    );
    let queued = s.insert_run(child(scope, p, 130)).await.unwrap().run_id;
    let grand_q = s
        .insert_run(child(scope, queued, 131))
        .await
        .unwrap()
        .run_id;
    let grand_d = s.insert_run(child(scope, done, 132)).await.unwrap().run_id;
    let great = s
        .insert_run(child(scope, grand_q, 133))
        .await
        .unwrap()
        .run_id;
    let unrelated = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 134))
        .await
        .unwrap()
        .run_id;
    assert_eq!(
        s.cancel_run(scope, p, op(), 200).await.unwrap(),
        RunStatus::Cancelled
    );
    let status = |r| {
        let s = &s;
        async move { s.get_run(scope, r).await.unwrap().0.status }
    };
    assert_eq!(
        status(done).await,
        RunStatus::Succeeded,
        "finished runs stay"
    );
    for r in [waiting, queued, grand_q, grand_d, great] {
        assert_eq!(status(r).await, RunStatus::Cancelled, "{r}");
    }
    assert_eq!(status(unrelated).await, RunStatus::Queued);
    let logs = s.run_logs(scope, grand_q, 0, 10).await.unwrap();
    assert_eq!(
        logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        vec![format!("cancelled with its parent run {queued}")]
    );
    assert_eq!(
        s.run_logs(scope, waiting, 0, 10).await.unwrap()[0].message,
        format!("cancelled with its parent run {p}")
    );
    assert_eq!(s.next_wake_at().await.unwrap(), None);
    let claimed = s.claim_runs("w4", 300_000, 30_000, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|x| x.run.id).collect::<Vec<_>>(),
        vec![unrelated],
        "nothing of the cancelled tree is claimed"
    );
    assert!(
        !s.finish_run(
            scope,
            p,
            "w1",
            RunStatus::Succeeded,
            None,
            None,
            vec![],
            300_001
        )
        .await
        .unwrap()
    );
    // Cancelled descendants can be deleted like any finished run.
    s.delete_run(scope, great, op(), 300_002).await.unwrap();
    let trail = s.list_audit(scope.tenant, None, None, 100).await.unwrap();
    let cancel = trail.iter().find(|e| e.action == "run.cancel").unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&cancel.detail).unwrap(),
        json!({"previous_status": "running", "cancelled_descendants": 5})
    );
});

payload_conformance!(large_signal_payloads_live_in_object_storage, |s, dir| {
    let scope = scope_of(&s).await;
    let r = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    let big = json!({"text": "s".repeat(5000)});
    s.signal_run(scope, r, "big", big.clone(), op(), 200)
        .await
        .unwrap();
    let files = files_under(dir.path());
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(&format!("{}/{}/{r}/signal-", scope.tenant, scope.workspace))),
        "{files:?}"
    );
    assert!(matches!(
        s.signal_run(scope, r, "big", big.clone(), op(), 201).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        files_under(dir.path()).len(),
        files.len(),
        "the refused signal's object is removed"
    );
    let sigs = s.run_signals(scope, r).await.unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].payload, big);
});

conformance!(a_signal_or_a_child_end_racing_a_park_is_never_missed, |s| {
    use weft_types::RunStatus;
    let scope = scope_of(&s).await;
    let mut parents = Vec::new();
    for i in 0..24 {
        let p = s
            .insert_run(run(scope, weft_types::FlowId::new(), None, 100 + i))
            .await
            .unwrap()
            .run_id;
        parents.push(p);
    }
    assert_eq!(
        s.claim_runs("wp", 200, 60_000, 100).await.unwrap().len(),
        24
    );
    let mut kids = Vec::new();
    for p in &parents[12..] {
        kids.push(s.insert_run(child(scope, *p, 210)).await.unwrap().run_id);
    }
    assert_eq!(
        s.claim_runs("wc", 220, 60_000, 100).await.unwrap().len(),
        12
    );
    let mut hs = Vec::new();
    for (i, p) in parents.iter().copied().enumerate() {
        // Half race a signal, half the end of their child, against their park.
        let (s1, s2) = (s.clone(), s.clone());
        let kid = i.checked_sub(12).map(|k| kids[k]);
        let awaited = kid.map_or("go".to_string(), |k| k.to_string());
        hs.push(tokio::spawn(async move {
            s1.park_run(scope, p, "wp", None, vec![awaited], 300)
                .await
                .unwrap()
        }));
        hs.push(tokio::spawn(async move {
            match kid {
                Some(k) => s2
                    .finish_run(
                        scope,
                        k,
                        "wc",
                        RunStatus::Succeeded,
                        None,
                        None,
                        vec![],
                        300,
                    )
                    .await
                    .unwrap(),
                None => {
                    s2.signal_run(scope, p, "go", json!(1), op(), 300)
                        .await
                        .unwrap();
                    true
                }
            }
        }));
    }
    for h in hs {
        assert!(h.await.unwrap());
    }
    for p in parents {
        assert_eq!(
            s.get_run(scope, p).await.unwrap().0.status,
            RunStatus::Queued,
            "{p} missed what it awaited"
        );
    }
});

conformance!(event_watches_match_by_event_and_key, |s| {
    use weft_types::RunId;
    let scope = scope_of(&s).await;
    let (keyed, any, shipped) = (RunId::new(), RunId::new(), RunId::new());
    s.watch_event(scope, keyed, "order.paid", Some("a"), 10)
        .await
        .unwrap();
    s.watch_event(scope, any, "order.paid", None, 20)
        .await
        .unwrap();
    s.watch_event(scope, shipped, "order.shipped", Some("a"), 5)
        .await
        .unwrap();
    let watchers = |event: &'static str, key: Option<&'static str>| {
        let s = s.clone();
        async move { s.event_watchers(scope, event, key, 100).await.unwrap() }
    };
    assert_eq!(
        watchers("order.paid", Some("a")).await,
        vec![keyed, any],
        "a keyed watch matches its key; an unkeyed one matches any key"
    );
    assert_eq!(
        watchers("order.paid", Some("b")).await,
        vec![any],
        "a keyed watch does not match another key"
    );
    assert_eq!(
        watchers("order.paid", None).await,
        vec![any],
        "an event without a key matches unkeyed watches only"
    );
    assert_eq!(
        watchers("order.paid", Some("")).await,
        vec![any],
        "an empty key is a key, not the absence of one"
    );
    assert_eq!(watchers("order.shipped", Some("a")).await, vec![shipped]);
    assert!(watchers("order.shipped", None).await.is_empty());
    assert!(watchers("order.refunded", Some("a")).await.is_empty());
    assert!(
        watchers("order", Some("a")).await.is_empty(),
        "names match exactly"
    );

    // Watching again replaces the key and the time (the watch is now the newest).
    s.watch_event(scope, keyed, "order.paid", Some("b"), 30)
        .await
        .unwrap();
    assert_eq!(watchers("order.paid", Some("a")).await, vec![any]);
    assert_eq!(watchers("order.paid", Some("b")).await, vec![any, keyed]);
    s.watch_event(scope, keyed, "order.paid", None, 35)
        .await
        .unwrap();
    assert_eq!(
        watchers("order.paid", None).await,
        vec![any, keyed],
        "a key can be dropped"
    );
    s.watch_event(scope, keyed, "order.paid", Some("b"), 36)
        .await
        .unwrap();
    // One run may watch several events.
    s.watch_event(scope, keyed, "order.shipped", None, 40)
        .await
        .unwrap();
    assert_eq!(
        watchers("order.shipped", Some("a")).await,
        vec![shipped, keyed]
    );

    // Unwatching forgets one watch and nothing else; unwatching again is no error.
    s.unwatch_event(scope, keyed, "order.paid").await.unwrap();
    assert_eq!(watchers("order.paid", Some("b")).await, vec![any]);
    assert_eq!(
        watchers("order.shipped", Some("a")).await,
        vec![shipped, keyed]
    );
    s.unwatch_event(scope, keyed, "order.paid").await.unwrap();
    s.unwatch_event(scope, RunId::new(), "order.paid")
        .await
        .unwrap();
    s.unwatch_event(scope, any, "never.watched").await.unwrap();
    assert_eq!(watchers("order.paid", None).await, vec![any]);
    s.unwatch_event(scope, any, "order.paid").await.unwrap();
    assert!(watchers("order.paid", Some("b")).await.is_empty());

    // Names and keys with a NUL character match themselves on both backends.
    let nul = RunId::new();
    s.watch_event(scope, nul, "odd\0event", Some("k\0"), 50)
        .await
        .unwrap();
    assert_eq!(watchers("odd\0event", Some("k\0")).await, vec![nul]);
    s.unwatch_event(scope, nul, "odd\0event").await.unwrap();
    assert!(watchers("odd\0event", Some("k\0")).await.is_empty());
});

conformance!(event_watchers_come_oldest_first_up_to_the_limit, |s| {
    use weft_types::RunId;
    let scope = scope_of(&s).await;
    let runs: Vec<(RunId, i64)> = [50, 10, 40, 20, 30]
        .into_iter()
        .map(|at| (RunId::new(), at))
        .collect();
    for (i, (r, at)) in runs.iter().enumerate() {
        let key = (i % 2 == 0).then_some("k");
        s.watch_event(scope, *r, "tick", key, *at).await.unwrap();
    }
    let mut oldest_first = runs.clone();
    oldest_first.sort_by_key(|(_, at)| *at);
    let oldest_first: Vec<RunId> = oldest_first.into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        s.event_watchers(scope, "tick", Some("k"), 100)
            .await
            .unwrap(),
        oldest_first
    );
    assert_eq!(
        s.event_watchers(scope, "tick", Some("k"), 2).await.unwrap(),
        oldest_first[..2].to_vec()
    );
    assert!(
        s.event_watchers(scope, "tick", Some("k"), 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.event_watchers(scope, "tick", Some("k"), usize::MAX)
            .await
            .unwrap(),
        oldest_first,
        "a huge limit is no limit"
    );
    // Without a key, only the unkeyed watches (at 10 and 20), still oldest first.
    assert_eq!(
        s.event_watchers(scope, "tick", None, 100).await.unwrap(),
        vec![runs[1].0, runs[3].0]
    );
    assert_eq!(
        s.event_watchers(scope, "tick", None, 1).await.unwrap(),
        vec![runs[1].0]
    );
});

conformance!(event_watches_are_walled_by_workspace_and_tenant, |s| {
    use weft_types::RunId;
    let a = scope_of(&s).await;
    let ops = s
        .create_workspace(a.tenant, "ops", "Ops", None, op(), 2)
        .await
        .unwrap()
        .scope;
    let b = s
        .create_tenant("b", "b@example.com", Limits::default(), op(), 3)
        .await
        .unwrap();
    let b = Scope {
        tenant: b.tenant,
        workspace: b.workspace,
    };
    let (ra, rops, rb) = (RunId::new(), RunId::new(), RunId::new());
    s.watch_event(a, ra, "deploy", None, 10).await.unwrap();
    s.watch_event(ops, rops, "deploy", None, 11).await.unwrap();
    s.watch_event(b, rb, "deploy", None, 12).await.unwrap();
    for (scope, mine) in [(a, ra), (ops, rops), (b, rb)] {
        for key in [None, Some("x")] {
            assert_eq!(
                s.event_watchers(scope, "deploy", key, 100).await.unwrap(),
                vec![mine],
                "another workspace's watch is never returned"
            );
        }
    }
    // Another workspace cannot forget or change a watch, even naming its run.
    s.unwatch_event(ops, ra, "deploy").await.unwrap();
    s.unwatch_event(b, ra, "deploy").await.unwrap();
    s.watch_event(ops, ra, "deploy", Some("other"), 20)
        .await
        .unwrap();
    assert_eq!(
        s.event_watchers(a, "deploy", None, 100).await.unwrap(),
        vec![ra]
    );
    assert_eq!(
        s.event_watchers(ops, "deploy", Some("other"), 100)
            .await
            .unwrap(),
        vec![rops, ra]
    );
    s.unwatch_event(ops, ra, "deploy").await.unwrap();
    assert_eq!(
        s.event_watchers(a, "deploy", None, 100).await.unwrap(),
        vec![ra]
    );
    assert_eq!(
        s.event_watchers(ops, "deploy", None, 100).await.unwrap(),
        vec![rops]
    );
});

conformance!(deleting_a_run_deletes_its_event_watches, |s| {
    use weft_types::RunStatus;
    let scope = scope_of(&s).await;
    let gone = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 100))
        .await
        .unwrap()
        .run_id;
    let kept = s
        .insert_run(run(scope, weft_types::FlowId::new(), None, 101))
        .await
        .unwrap()
        .run_id;
    s.watch_event(scope, gone, "paid", None, 110).await.unwrap();
    s.watch_event(scope, gone, "shipped", Some("a"), 111)
        .await
        .unwrap();
    s.watch_event(scope, kept, "paid", None, 112).await.unwrap();
    assert_eq!(
        s.event_watchers(scope, "paid", None, 100).await.unwrap(),
        vec![gone, kept]
    );
    assert_eq!(
        s.cancel_run(scope, gone, op(), 120).await.unwrap(),
        RunStatus::Cancelled
    );
    s.delete_run(scope, gone, op(), 130).await.unwrap();
    assert_eq!(
        s.event_watchers(scope, "paid", None, 100).await.unwrap(),
        vec![kept]
    );
    assert!(
        s.event_watchers(scope, "shipped", Some("a"), 100)
            .await
            .unwrap()
            .is_empty()
    );
});

conformance!(
    alerts_notify_once_per_quiet_time_and_deliver_from_the_outbox,
    |s| {
        use weft_store::Raised;
        let a = s.bootstrap_if_empty(1).await.unwrap().unwrap();
        let b = s
            .create_tenant("b", "b@example.com", Limits::default(), op(), 2)
            .await
            .unwrap();
        let (sa, sb) = (
            Scope {
                tenant: a.tenant,
                workspace: a.workspace,
            },
            Scope {
                tenant: b.tenant,
                workspace: b.workspace,
            },
        );
        let spec = json!({"on": "run_failed", "notify": {"webhook": {"url": "http://x"}}});
        let rule = s
            .create_alert_rule(sa, "pager", spec.clone(), op(), 10)
            .await
            .unwrap();
        assert_eq!((rule.name.as_str(), &rule.spec), ("pager", &spec));
        assert!(matches!(
            s.create_alert_rule(sa, "pager", spec.clone(), op(), 11)
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(s.list_alert_rules(sb).await.unwrap().is_empty());
        assert!(matches!(
            s.raise_alert(sb, "pager", "f1", 1_000, None, json!({}), 12)
                .await,
            Err(StoreError::NotFound)
        ));
        // The first occurrence notifies; the next ones within the quiet time are only counted.
        let raise = |at: i64| s.raise_alert(sa, "pager", "f1", 1_000, None, json!({"n": at}), at);
        assert_eq!(raise(100).await.unwrap(), Raised::Notify { suppressed: 0 });
        for at in 101..=110 {
            assert_eq!(raise(at).await.unwrap(), Raised::Suppressed);
        }
        // Another incident of the same rule is its own.
        assert_eq!(
            s.raise_alert(sa, "pager", "f2", 1_000, None, json!({}), 111)
                .await
                .unwrap(),
            Raised::Notify { suppressed: 0 }
        );
        // After the quiet time, one notification says how many were held back.
        assert_eq!(
            raise(1_100).await.unwrap(),
            Raised::Notify { suppressed: 10 }
        );
        assert_eq!(raise(1_101).await.unwrap(), Raised::Suppressed);

        // The outbox: three due, held while claimed; a failure comes back at its retry time.
        let due = s.claim_alert_deliveries(2_000, 60_000, 10).await.unwrap();
        assert_eq!(due.len(), 3);
        assert_eq!(due[0].scope, sa);
        assert_eq!(due[2].payload, json!({"n": 1_100, "suppressed": 10}));
        assert!(
            s.claim_alert_deliveries(2_001, 60_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        s.finish_alert_delivery(due[0].seq, Ok(()), 2_002)
            .await
            .unwrap();
        s.finish_alert_delivery(due[1].seq, Err(("HTTP 503".into(), Some(3_000))), 2_002)
            .await
            .unwrap();
        s.finish_alert_delivery(due[2].seq, Err(("HTTP 404".into(), None)), 2_002)
            .await
            .unwrap();
        let again = s.claim_alert_deliveries(3_000, 60_000, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].seq, again[0].attempts), (due[1].seq, 1));
        let listed = s.alert_deliveries(sa, "pager", 10).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].error.as_deref(), Some("HTTP 404"));
        assert_eq!(listed[2].delivered_at, Some(2_002));
        assert!(
            s.alert_deliveries(sb, "pager", 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Deleting the rule takes its incidents and notifications with it.
        assert!(matches!(
            s.delete_alert_rule(sb, "pager", op(), 4_000).await,
            Err(StoreError::NotFound)
        ));
        s.delete_alert_rule(sa, "pager", op(), 4_000).await.unwrap();
        assert!(
            s.alert_deliveries(sa, "pager", 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            s.claim_alert_deliveries(i64::MAX - 1, 1, 10)
                .await
                .unwrap()
                .is_empty()
        );
        s.create_alert_rule(sa, "pager", spec, op(), 5_000)
            .await
            .unwrap();
        assert_eq!(
            raise(5_001).await.unwrap(),
            Raised::Notify { suppressed: 0 }
        );
        // A spike rule notifies only at the third occurrence within 100 ms.
        let spike =
            |at: i64| s.raise_alert(sa, "pager", "spike", 1_000, Some((3, 100)), json!({}), at);
        assert_eq!(spike(6_000).await.unwrap(), Raised::Suppressed);
        assert_eq!(spike(6_050).await.unwrap(), Raised::Suppressed);
        assert_eq!(
            spike(6_200).await.unwrap(),
            Raised::Suppressed,
            "the window ran out"
        );
        assert_eq!(spike(6_210).await.unwrap(), Raised::Suppressed);
        assert_eq!(
            spike(6_220).await.unwrap(),
            Raised::Notify { suppressed: 0 }
        );
        assert_eq!(spike(6_230).await.unwrap(), Raised::Suppressed);
    }
);
