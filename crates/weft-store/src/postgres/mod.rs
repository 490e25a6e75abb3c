//! PostgreSQL backend: migrations with forced row-level security, the grants that let a
//! non-owner application role use them, and [`PgStore`], which implements every store
//! operation (behind `Store::Postgres`; `tests/conformance.rs` runs each case on both backends).

mod alerts;
mod batch;
mod credentials;
mod errors;
mod identity;
mod members;
mod polls;
mod runs;
mod store;
mod system;
mod waits;

pub use store::PgStore;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::StoreError;

/// The PostgreSQL migrations, in order.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_scale.sql")),
    (3, include_str!("migrations/0003_vacuum.sql")),
    (4, include_str!("migrations/0004_credentials.sql")),
    (5, include_str!("migrations/0005_connectors.sql")),
    (6, include_str!("migrations/0006_oauth.sql")),
    (7, include_str!("migrations/0007_polls.sql")),
    (8, include_str!("migrations/0008_waits.sql")),
    (9, include_str!("migrations/0009_events.sql")),
    (10, include_str!("migrations/0010_log_search.sql")),
    (11, include_str!("migrations/0011_errors.sql")),
    (12, include_str!("migrations/0012_retention.sql")),
    (13, include_str!("migrations/0013_run_events.sql")),
    (14, include_str!("migrations/0014_alerts.sql")),
    (15, include_str!("migrations/0015_auth_failures.sql")),
    (16, include_str!("migrations/0016_run_trace.sql")),
    (17, include_str!("migrations/0017_log_rows.sql")),
];

/// Tables of tenant data: each has `tenant_id` (or, for `tenants`, `id`) and forced row-level
/// security. A test checks this list against the live schema.
pub const TENANT_TABLES: &[&str] = &[
    "tenants",
    "workspaces",
    "members",
    "tenant_owners",
    "api_keys",
    "credentials",
    "connectors",
    "oauth_states",
    "flows",
    "flow_versions",
    "runs",
    "run_steps",
    "run_logs",
    "run_signals",
    "event_watches",
    "error_groups",
    "error_group_days",
    "alert_rules",
    "alert_incidents",
    "alert_outbox",
    "schedules",
    "polls",
    "poll_seen",
    "tenant_usage",
    "audit_log",
    "run_queue",
];

/// Tables only the PostgreSQL schema has (the schema parity test skips them). `run_queue`
/// keeps the MVCC churn of claiming out of `runs`, and `rate_limits` shares limits between
/// processes; SQLite updates in place and has one process, which keeps its limits in memory.
pub const PG_ONLY_TABLES: &[&str] = &["run_queue", "rate_limits"];

/// Text for a PostgreSQL `text` column: PostgreSQL cannot store U+0000, so it becomes U+FFFD
/// (SQLite keeps it). Without this, one NUL in a log line or error failed its whole batch.
pub(super) fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// JSON text for a `jsonb` column, with U+0000 in strings and keys replaced as in [`pg_text`]
/// (jsonb rejects `\u0000`; a webhook body may well contain it).
pub(super) fn pg_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    // serde_json writes U+0000 as the escape `\u0000`; only then walk the value.
    if !text.contains("\\u0000") {
        return text;
    }
    fn clean(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) => Value::String(pg_text(s).into_owned()),
            Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (pg_text(k).into_owned(), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    clean(v).to_string()
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Applies pending migrations as the schema owner (`owner_url`), each in its own transaction,
/// then grants `app_role` the row access it needs (never ownership: table owners could bypass
/// row-level security were it not forced, and `FORCE` is one more thing to get right).
pub async fn migrate(owner_url: &str, app_role: &str) -> Result<(), StoreError> {
    if app_role.is_empty()
        || !app_role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::Db(format!(
            "the application role name '{app_role}' must be letters, digits and '_'"
        )));
    }
    let mut c = PgConnection::connect(owner_url).await.map_err(db)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .execute(&mut c)
        .await
        .map_err(db)?;
    // One migrator at a time across processes.
    sqlx::query("SELECT pg_advisory_lock(7265767401)")
        .execute(&mut c)
        .await
        .map_err(db)?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&mut c)
            .await
            .map_err(db)?;
    if let Some((latest, _)) = MIGRATIONS.last()
        && current > *latest
    {
        return Err(StoreError::Db(format!(
            "the database schema is version {current}, newer than this Weft ({latest}); upgrade Weft"
        )));
    }
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let mut tx = c.begin().await.map_err(db)?;
        // Row security is forced on the owner too: a migration that moves data must see
        // every tenant's rows.
        sqlx::query("SELECT set_config('weft.system', 'on', true)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(v)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
    }
    let grants = format!(
        "GRANT USAGE ON SCHEMA public TO {app_role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app_role};
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app_role};
         REVOKE ALL ON schema_migrations FROM {app_role};
         GRANT SELECT ON schema_migrations TO {app_role};"
    );
    // The role name was checked above: letters, digits and `_` only.
    sqlx::raw_sql(sqlx::AssertSqlSafe(grants))
        .execute(&mut c)
        .await
        .map_err(db)?;
    sqlx::query("SELECT pg_advisory_unlock(7265767401)")
        .execute(&mut c)
        .await
        .map_err(db)?;
    Ok(())
}

/// The schema version the database is at (0 when it has none yet).
pub async fn schema_version(url: &str) -> Result<i64, StoreError> {
    let mut c = PgConnection::connect(url).await.map_err(db)?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public.schema_migrations')::text")
            .fetch_one(&mut c)
            .await
            .map_err(db)?;
    if exists.is_none() {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut c)
        .await
        .map_err(db)
}

/// The newest schema version this Weft knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
