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
