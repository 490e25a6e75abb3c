//! The PostgreSQL schema against a real server (started by `scripts/pg.sh`, which
//! `scripts/test.sh` and `.ci/run` do): forced row-level security on every tenant table, an
//! application role that cannot bypass it, no tenant carried over on a pooled connection, and
//! the same tables and columns as the SQLite schema.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use weft_store::postgres::{TENANT_TABLES, migrate};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start PostgreSQL with `eval \"$(scripts/pg.sh start)\"` (scripts/test.sh does this)")
    })
}

/// An empty database for one test, named `{prefix}_…`: (owner URL, app URL).
async fn empty_db(prefix: &str) -> (String, String) {
    let owner = env("WEFT_TEST_DATABASE_URL");
    let app = env("WEFT_TEST_APP_DATABASE_URL");
    let name = format!("{prefix}_{}", &weft_types::random_secret()[..16]);
    let mut c = PgConnection::connect(&owner).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .unwrap();
    let swap = |url: &str| format!("{}/{name}", url.rsplit_once('/').unwrap().0);
    (swap(&owner), swap(&app))
}

/// A fresh, migrated database for one test: (owner URL, app URL).
async fn fresh_db() -> (String, String) {
    let (owner, app) = empty_db("weft_t").await;
    migrate(&owner, "weft_app").await.unwrap();
    (owner, app)
}

#[tokio::test]
async fn every_tenant_table_has_forced_row_level_security() {
    let (owner, _) = fresh_db().await;
    // Migrating again changes nothing and does not fail.
    migrate(&owner, "weft_app").await.unwrap();
    let mut c = PgConnection::connect(&owner).await.unwrap();
    let rows = sqlx::query(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                EXISTS (SELECT 1 FROM information_schema.columns k WHERE k.table_schema = 'public' AND k.table_name = c.relname AND k.column_name = 'tenant_id')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut seen = BTreeSet::new();
    for r in rows {
        let (name, rls, forced, has_tenant): (String, bool, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if has_tenant || name == "tenants" {
            assert!(
                TENANT_TABLES.contains(&name.as_str()),
                "{name} holds tenant data but is not in TENANT_TABLES"
            );
            assert!(
                rls && forced,
                "{name}: row-level security must be enabled and forced"
            );
            seen.insert(name);
        }
    }
    let expected: BTreeSet<String> = TENANT_TABLES.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn the_app_role_is_neither_owner_superuser_nor_bypassrls() {
    let (_, app) = fresh_db().await;
    let mut c = PgConnection::connect(&app).await.unwrap();
    let r = sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(!r.get::<bool, _>(0) && !r.get::<bool, _>(1));
    let owned: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(owned, 0, "the application role must own no table");
    // It can read the schema version (servers check it) but not change it.
    assert!(
        sqlx::query("SELECT * FROM schema_migrations")
            .execute(&mut c)
            .await
            .is_ok()
    );
    assert!(
        sqlx::query("DELETE FROM schema_migrations")
            .execute(&mut c)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("ALTER TABLE runs DISABLE ROW LEVEL SECURITY")
            .execute(&mut c)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_unscoped_query_sees_only_the_transactions_tenant_and_nothing_carries_over() {
    let (owner, app) = fresh_db().await;
    let mut o = PgConnection::connect(&owner).await.unwrap();
    // Seed two tenants as system work (even the owner is bound by the forced policies).
    let mut tx = o.begin().await.unwrap();
    sqlx::query("SELECT set_config('weft.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    for t in ["ten_a", "ten_b"] {
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $1, 0)")
            .bind(t)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO workspaces (tenant_id, id, slug, name, created_at) VALUES ($1, 'wsp', 'default', 'D', 0)")
            .bind(t)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO flows (tenant_id, workspace_id, id, name, hook_id, latest_version, created_at, updated_at) VALUES ($1, 'wsp', 'flw', 'f', $1 || '_hook', 1, 0, 0)")
            .bind(t)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    // One application connection, reused like a pooled one.
    let mut c = PgConnection::connect(&app).await.unwrap();
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT set_config('weft.tenant_id', 'ten_a', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    // A deliberately unscoped query (no WHERE tenant_id) sees tenant A only.
    let seen: Vec<String> = sqlx::query_scalar("SELECT tenant_id FROM flows")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, vec!["ten_a".to_string()]);
    // Writing another tenant's row is refused by the policy's check.
    let err = sqlx::query("UPDATE flows SET tenant_id = 'ten_b' WHERE id = 'flw'")
        .execute(&mut *tx)
        .await;
    assert!(err.is_err(), "moving a row to another tenant must fail");
    tx.rollback().await.unwrap();
    // The next transaction on the same connection carries nothing over: it sees no tenant
    // ('' after the setting's transaction ended) and does not fail.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM flows")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let setting: String = sqlx::query_scalar("SELECT current_setting('weft.tenant_id', true)")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(setting, "");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0, "the tenants table is walled too");
}

#[tokio::test]
async fn the_postgres_schema_has_the_same_tables_and_columns_as_sqlite() {
    let (owner, _) = fresh_db().await;
    let mut c = PgConnection::connect(&owner).await.unwrap();
    let pg: BTreeSet<(String, String)> = sqlx::query(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> 'schema_migrations'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .filter(|(t, _): &(String, String)| !weft_store::postgres::PG_ONLY_TABLES.contains(&t.as_str()))
    .collect();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    drop(
        weft_store::SqliteStore::open(weft_store::SqliteOptions {
            path: path.clone(),
            readers: 1,
        })
        .unwrap(),
    );
    let lite = rusqlite::Connection::open(&path).unwrap();
    let mut st = lite
        .prepare(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> 'schema_migrations'",
        )
        .unwrap();
    let sqlite: BTreeSet<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let only_pg: Vec<_> = pg.difference(&sqlite).collect();
    let only_sqlite: Vec<_> = sqlite.difference(&pg).collect();
    assert!(
        only_pg.is_empty() && only_sqlite.is_empty(),
        "schemas differ: only in PostgreSQL {only_pg:?}; only in SQLite {only_sqlite:?}"
    );
}

#[tokio::test]
async fn upgrading_from_version_1_moves_queued_and_running_runs_into_the_queue() {
    let (owner, _) = empty_db("weft_u").await;
    // A database at schema version 1 with runs in every state.
    let mut c = PgConnection::connect(&owner).await.unwrap();
    let (v1, sql) = weft_store::postgres::MIGRATIONS[0];
    assert_eq!(v1, 1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
         {sql}
         INSERT INTO schema_migrations (version) VALUES (1);"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let mut tx = c.begin().await.unwrap();
    sqlx::raw_sql(
        "SELECT set_config('weft.system', 'on', true);
         INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', 0);
         INSERT INTO tenant_usage (tenant_id, month, runs_in_month, stored_bytes) VALUES ('ten_a', '2026-12', 3, 10);
         INSERT INTO runs (tenant_id, workspace_id, id, flow_id, flow_name, flow_version, status, trigger, not_before, created_at, lease_owner, lease_expires)
         VALUES ('ten_a', 'wsp_a', 'run_q', 'flw_a', 'f', 1, 'queued', '{}', 5, 5, NULL, NULL),
                ('ten_a', 'wsp_a', 'run_r', 'flw_a', 'f', 1, 'running', '{}', 6, 6, 'proc-1', 99),
                ('ten_a', 'wsp_a', 'run_s', 'flw_a', 'f', 1, 'succeeded', '{}', 7, 7, NULL, NULL);",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    drop(c);

    migrate(&owner, "weft_app").await.unwrap();
    let mut c = PgConnection::connect(&owner).await.unwrap();
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT set_config('weft.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let queue: Vec<(String, Option<String>, Option<i64>)> =
        sqlx::query_as("SELECT run_id, lease_owner, lease_expires FROM run_queue ORDER BY run_id")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(
        queue,
        vec![
            ("run_q".to_string(), None, None),
            ("run_r".to_string(), Some("proc-1".to_string()), Some(99)),
        ],
        "unfinished runs are in the queue, with their leases; finished ones are not"
    );
    let runs_in_month: i64 = sqlx::query_scalar(
        "SELECT SUM(runs_in_month)::bigint FROM tenant_usage WHERE tenant_id = 'ten_a'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(runs_in_month, 3, "usage survives the sharding");
}

#[tokio::test]
async fn upgrading_to_log_rows_keeps_every_old_line_in_order_before_new_ones() {
    let (owner, app) = empty_db("weft_l").await;
    // A database at schema version 16: one row per log line.
    let mut c = PgConnection::connect(&owner).await.unwrap();
    sqlx::raw_sql("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .execute(&mut c)
        .await
        .unwrap();
    for (v, sql) in weft_store::postgres::MIGRATIONS
        .iter()
        .filter(|m| m.0 <= 16)
    {
        let mut tx = c.begin().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT set_config('weft.system', 'on', true); {sql} INSERT INTO schema_migrations (version) VALUES ({v});"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let scope = weft_types::Scope {
        tenant: weft_types::TenantId::new(),
        workspace: weft_types::WorkspaceId::new(),
    };
    let run = weft_types::RunId::new();
    let (t, w, r) = (
        scope.tenant.to_string(),
        scope.workspace.to_string(),
        run.to_string(),
    );
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT set_config('weft.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO runs (tenant_id, workspace_id, id, flow_id, flow_name, flow_version, status, trigger, not_before, created_at)
         VALUES ($1, $2, $3, 'flw_a', 'f', 1, 'succeeded', '{}', 5, 5)",
    )
    .bind(&t)
    .bind(&w)
    .bind(&r)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO run_logs (tenant_id, workspace_id, run_id, ts, level, step_id, message, event)
         VALUES ($1, $2, $3, 10, 'info', NULL, 'run started', 'RunStarted'),
                ($1, $2, $3, 11, 'info', 'a', 'started', 'StepStarted'),
                ($1, $2, $3, 12, 'warn', 'a', 'old warning', 'Log')",
    )
    .bind(&t)
    .bind(&w)
    .bind(&r)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    drop(c);

    migrate(&owner, "weft_app").await.unwrap();
    let s = weft_store::postgres::PgStore::connect(&app, 2)
        .await
        .unwrap();
    s.append_logs(
        scope,
        run,
        vec![weft_store::NewLog::new(
            "info",
            None,
            weft_store::RunEvent::Log,
            "after the upgrade",
        )],
        20,
    )
    .await
    .unwrap();
    let lines = s.run_logs(scope, run, 0, 10).await.unwrap();
    let got: Vec<(i64, &str, Option<&str>, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l.ts,
                l.level.as_str(),
                l.step_id.as_deref(),
                l.message.as_str(),
                l.event.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (10, "info", None, "run started", "RunStarted"),
            (11, "info", Some("a"), "started", "StepStarted"),
            (12, "warn", Some("a"), "old warning", "Log"),
            (20, "info", None, "after the upgrade", "Log"),
        ]
    );
    assert!(lines.windows(2).all(|p| p[0].seq < p[1].seq));
    // Paging from an old line's id goes on from there.
    let rest = s.run_logs(scope, run, lines[1].seq, 10).await.unwrap();
    assert_eq!(rest.len(), 2);
}
