//! PostgreSQL store operations, written against the same method set as `SqliteStore` and run by
//! the same conformance tests. Every tenant operation runs in a transaction that first sets
//! `weft.tenant_id` (so row-level security backs up each query's own tenant filter); the few
//! cross-tenant system operations set `weft.system` instead and say so in their docs.

use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use weft_types::{
    FlowId, HookId, KeyId, Millis, Role, Scope, TenantId, UserId, WorkspaceId, random_secret,
};

use crate::audit::{check_chain, entry_hash};
use crate::*;

pub(super) fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(d) if d.is_unique_violation() || d.is_foreign_key_violation() => {
            StoreError::Conflict(d.message().to_string())
        }
        // connection_exception, admin/crash shutdown, cannot_connect_now, too_many_connections
        sqlx::Error::Database(d)
            if d.code().is_some_and(|c| {
                c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
            }) =>
        {
            StoreError::Unavailable(d.message().to_string())
        }
        e @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed) => StoreError::Unavailable(e.to_string()),
        // deadlock_detected, serialization_failure
        sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")) => {
            StoreError::Busy(d.message().to_string())
        }
        other => StoreError::Db(other.to_string()),
    }
}

pub(super) fn parse<T: std::str::FromStr>(s: String, what: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad {what}: {s}")))
}

pub(super) fn role(s: String) -> Result<Role, StoreError> {
    Role::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("bad role {s}")))
}

fn json_text(s: Option<String>) -> Result<Value, StoreError> {
    match s {
        Some(s) => serde_json::from_str(&s)
            .map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}"))),
        None => Ok(Value::Null),
    }
}

pub(super) type Tx = Transaction<'static, Postgres>;

/// The PostgreSQL store (used through `Store::Postgres`).
#[derive(Clone, Debug)]
pub struct PgStore {
    pub(super) pool: PgPool,
    /// Asks the announcer task to NOTIFY other processes of new work (see [`PgStore::announce`]).
    announce: tokio::sync::mpsc::Sender<()>,
    /// Rate-limit calls so far (every 4096th also prunes idle keys).
    rate_calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The group-commit writers' queue (see `batch.rs`).
    writes: tokio::sync::mpsc::Sender<super::batch::Job>,
    /// The tenant the last claim found alone with ready work (see `claim_runs`).
    pub(super) sole_tenant: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

const FLOW_COLS: &str = "tenant_id, workspace_id, id, name, hook_id, latest_version, published_version, created_at, updated_at";

fn read_flow(r: &PgRow) -> Result<FlowRecord, StoreError> {
    Ok(FlowRecord {
        scope: Scope {
            tenant: parse(r.try_get(0).map_err(db)?, "tenant id")?,
            workspace: parse(r.try_get(1).map_err(db)?, "workspace id")?,
        },
        id: parse(r.try_get(2).map_err(db)?, "flow id")?,
        name: r.try_get(3).map_err(db)?,
        hook_id: parse(r.try_get(4).map_err(db)?, "hook id")?,
        latest_version: r.try_get(5).map_err(db)?,
        published_version: r.try_get(6).map_err(db)?,
        created_at: r.try_get(7).map_err(db)?,
        updated_at: r.try_get(8).map_err(db)?,
    })
}

pub(super) async fn append(
    tx: &mut Tx,
    tenant: &str,
    now: Millis,
    a: &Audit,
) -> Result<(), StoreError> {
    // The row lock serializes appends per tenant across processes.
    let row = sqlx::query("SELECT audit_seq, audit_head FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    let (seq, head): (i64, String) = (row.get(0), row.get(1));
    let mut e = AuditEntry {
        seq: seq + 1,
        ts: now,
        workspace_id: a.workspace.map(|w| w.to_string()),
        actor_kind: a.actor.kind.to_string(),
        actor_id: a.actor.id.clone(),
        via: a.actor.via.clone(),
        request_id: a.actor.request_id.clone(),
        action: a.action.to_string(),
        object_kind: a.object_kind.to_string(),
        object_id: a.object_id.clone(),
        detail: a.detail.to_string(),
        prev_hash: head,
        hash: String::new(),
    };
    e.hash = entry_hash(tenant, &e);
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, seq, ts, workspace_id, actor_kind, actor_id, via, request_id, action, object_kind, object_id, detail, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(tenant)
    .bind(e.seq)
    .bind(e.ts)
    .bind(&e.workspace_id)
    .bind(&e.actor_kind)
    .bind(&e.actor_id)
    .bind(&e.via)
    .bind(&e.request_id)
    .bind(&e.action)
    .bind(&e.object_kind)
    .bind(&e.object_id)
    .bind(&e.detail)
    .bind(&e.prev_hash)
    .bind(&e.hash)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    sqlx::query("UPDATE tenants SET audit_seq = $2, audit_head = $3 WHERE id = $1")
        .bind(tenant)
        .bind(e.seq)
        .bind(&e.hash)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// An `audit_log` row selected as `seq, ts, workspace_id, …, prev_hash, hash` (column order).
pub(super) fn read_audit(r: &PgRow) -> AuditEntry {
    AuditEntry {
        seq: r.get(0),
        ts: r.get(1),
        workspace_id: r.get(2),
        actor_kind: r.get(3),
        actor_id: r.get(4),
        via: r.get(5),
        request_id: r.get(6),
        action: r.get(7),
        object_kind: r.get(8),
        object_id: r.get(9),
        detail: r.get(10),
        prev_hash: r.get(11),
        hash: r.get(12),
    }
}

pub(super) async fn user_for_email(
    tx: &mut Tx,
    email: &str,
    now: Millis,
) -> Result<UserId, StoreError> {
    let email = email.trim().to_lowercase();
    let id = UserId::new().to_string();
    // Insert-or-get in one statement: concurrent creators of the same email agree on one user.
    let got: String = sqlx::query_scalar(
        "WITH ins AS (INSERT INTO users (id, email, created_at) VALUES ($1, $2, $3) ON CONFLICT (email) DO NOTHING RETURNING id)
         SELECT id FROM ins UNION ALL SELECT id FROM users WHERE email = $2 LIMIT 1",
    )
    .bind(&id)
    .bind(&email)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    parse(got, "user id")
}

async fn check_active_flows(tx: &mut Tx, t: &str, w: &str, flow: &str) -> Result<(), StoreError> {
    let limit: Option<i64> =
        sqlx::query_scalar("SELECT max_active_flows FROM tenants WHERE id = $1")
            .bind(t)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?;
    let Some(limit) = limit else { return Ok(()) };
    let row = sqlx::query(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE workspace_id = $2 AND id = $3) FROM flows WHERE tenant_id = $1 AND published_version IS NOT NULL",
    )
    .bind(t)
    .bind(w)
    .bind(flow)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    let (active, this): (i64, i64) = (row.get(0), row.get(1));
    if this == 0 && active >= limit {
        return Err(crate::quota::flows_exceeded(active));
    }
    Ok(())
}

async fn get_flow_tx(tx: &mut Tx, scope: &Scope, key: &str) -> Result<FlowRecord, StoreError> {
    let (t, w) = scope_strs(scope);
    let sql = format!(
        "SELECT {FLOW_COLS} FROM flows WHERE tenant_id = $1 AND workspace_id = $2 AND (id = $3 OR name = $3) LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(t)
        .bind(w)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
    read_flow(&row)
}

impl PgStore {
    /// Connects a pool as the application role.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: sqlx::postgres::PgConnectOptions = url.parse().map_err(db)?;
        // No JIT: Weft's statements touch a few rows each, but the recursive claim query's
        // estimate crosses `jit_above_cost`, and compiling it took 20 ms of a 30 ms claim.
        let options = options.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // While PostgreSQL is down, callers fail fast (intake answers 503) instead of
            // queueing for sqlx's default 30 s.
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect_with(options)
            .await
            .map_err(db)?;
        let (announce, mut wants) = tokio::sync::mpsc::channel::<()>(1);
        let p = pool.clone();
        tokio::spawn(async move {
            // Ends when the last store clone is dropped.
            while wants.recv().await.is_some() {
                if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(WORK_CHANNEL)
                    .execute(&p)
                    .await
                {
                    tracing::debug!(error = %e, "could not announce new work; workers will poll");
                }
                // Announcements asked for meanwhile are folded into the next one.
                tokio::time::sleep(ANNOUNCE_EVERY).await;
            }
        });
        let writes = super::batch::start(pool.clone(), announce.clone());
        Ok(Self {
            pool,
            announce,
            rate_calls: Default::default(),
            sole_tenant: Default::default(),
            writes,
        })
    }

    /// Queues a write for the group-commit writers and waits for its committed answer.
    pub(super) async fn batch<T>(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> super::batch::Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writes
            .send(job(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Counts one request against the limit `rate` of `key`, shared by every process (GCRA:
    /// one atomic upsert that only moves the key's TAT when the request is allowed).
    pub async fn rate_take(
        &self,
        key: &str,
        rate: crate::rate::Rate,
        now_us: i64,
    ) -> Result<crate::rate::RateDecision, StoreError> {
        let n = self
            .rate_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 4096 == 4095 {
            // Keys whose bucket is full again carry no state worth keeping; pruned off the
            // request's path.
            let pool = self.pool.clone();
            tokio::spawn(async move {
                if let Err(e) = sqlx::query("DELETE FROM rate_limits WHERE tat <= $1")
                    .bind(now_us)
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(error = %e, "could not prune rate-limit keys");
                }
            });
        }
        let cap = rate.interval_us.saturating_mul(rate.burst.max(1));
        let allowed = sqlx::query_scalar::<_, i64>(
            "INSERT INTO rate_limits AS r (key, tat) VALUES ($1, $2 + $3)
             ON CONFLICT (key) DO UPDATE SET tat = GREATEST(r.tat, $2) + $3
               WHERE GREATEST(r.tat, $2) + $3 - $2 <= $4
             RETURNING tat",
        )
        .bind(key)
        .bind(now_us)
        .bind(rate.interval_us)
        .bind(cap)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        if allowed.is_some() {
            return Ok(crate::rate::RateDecision::Allowed);
        }
        let tat: Option<i64> = sqlx::query_scalar("SELECT tat FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        // Decided again from the row just read: the same rule as the upsert, for the wait.
        Ok(match crate::rate::gcra(tat, now_us, rate).0 {
            crate::rate::RateDecision::Allowed => {
                crate::rate::RateDecision::Limited { retry_after_ms: 1 }
            }
            limited => limited,
        })
    }

    /// Tells workers in other processes (after the caller committed) that there is new work:
    /// at most one NOTIFY per [`ANNOUNCE_EVERY`] per process. A NOTIFY inside each inserting
    /// transaction made every such commit queue on PostgreSQL's notification lock, so intake
    /// commits were flushed one at a time instead of group-committed.
    pub(super) fn announce(&self) {
        // A full channel already holds a pending announcement.
        let _ = self.announce.try_send(());
    }

    /// A transaction that sees one tenant's rows.
    pub(super) async fn tenant_tx(&self, tenant: &str) -> Result<Tx, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT set_config('weft.tenant_id', $1, true)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Ok(tx)
    }

    /// A transaction for cross-tenant system work.
    pub(super) async fn system_tx(&self) -> Result<Tx, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT set_config('weft.system', 'on', true)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Ok(tx)
    }

    /// The schema version the database is at; an error when it does not answer.
    pub async fn ping(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    // ---- tenants --------------------------------------------------------------------------

    async fn create_tenant_tx(
        tx: &mut Tx,
        name: &str,
        email: &str,
        limits: &Limits,
        actor: &Actor,
        now: Millis,
    ) -> Result<Bootstrap, StoreError> {
        let tenant = TenantId::new();
        let t = tenant.to_string();
        // The new rows belong to this tenant: scope the rest of the transaction to it.
        sqlx::query("SELECT set_config('weft.tenant_id', $1, true)")
            .bind(&t)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO tenants (id, name, created_at, max_runs_per_month, max_active_flows, max_concurrent_runs, max_webhook_rps, max_stored_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t)
        .bind(name)
        .bind(now)
        .bind(limits.runs_per_month)
        .bind(limits.active_flows)
        .bind(limits.concurrent_runs)
        .bind(limits.webhook_rps)
        .bind(limits.stored_bytes)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        sqlx::query("INSERT INTO tenant_usage (tenant_id, month, runs_in_month, stored_bytes) VALUES ($1, '', 0, 0)")
            .bind(&t)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        let owner = user_for_email(tx, email, now).await?;
        sqlx::query(
            "INSERT INTO tenant_owners (tenant_id, user_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&t)
        .bind(owner.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        let ws = WorkspaceId::new();
        sqlx::query("INSERT INTO workspaces (tenant_id, id, slug, name, created_at) VALUES ($1, $2, 'default', 'Default', $3)")
            .bind(&t)
            .bind(ws.to_string())
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO members (tenant_id, workspace_id, user_id, role, created_at, accepted_at) VALUES ($1, $2, $3, 'owner', $4, $4)")
            .bind(&t)
            .bind(ws.to_string())
            .bind(owner.to_string())
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        let secret = format!("wft_{}", random_secret());
        let key = KeyId::new();
        sqlx::query(
            "INSERT INTO api_keys (tenant_id, workspace_id, id, name, role, secret_hash, created_at, created_by, prefix)
             VALUES ($1, $2, $3, 'owner', 'owner', $4, $5, $6, $7)",
        )
        .bind(&t)
        .bind(ws.to_string())
        .bind(key.to_string())
        .bind(hash_secret(&secret))
        .bind(now)
        .bind(owner.to_string())
        .bind(secret.chars().take(12).collect::<String>())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        let audit = |action, kind, id: String, ws: Option<WorkspaceId>, detail| Audit {
            actor: actor.clone(),
            action,
            object_kind: kind,
            object_id: id,
            workspace: ws,
            detail,
        };
        append(
            tx,
            &t,
            now,
            &audit(
                "tenant.create",
                "tenant",
                t.clone(),
                None,
                json!({"name": name, "owner": owner.to_string(), "limits": limits}),
            ),
        )
        .await?;
        append(
            tx,
            &t,
            now,
            &audit(
                "workspace.create",
                "workspace",
                ws.to_string(),
                Some(ws),
                json!({"slug": "default"}),
            ),
        )
        .await?;
        append(
            tx,
            &t,
            now,
            &audit(
                "api_key.create",
                "api_key",
                key.to_string(),
                Some(ws),
                json!({"name": "owner", "role": "owner"}),
            ),
        )
        .await?;
        Ok(Bootstrap {
            tenant,
            workspace: ws,
            owner,
            owner_key: secret,
        })
    }

    /// On an empty store, creates the default tenant, its `default` workspace and owner, and returns the owner key (once).
    pub async fn bootstrap_if_empty(&self, now: Millis) -> Result<Option<Bootstrap>, StoreError> {
        let mut tx = self.system_tx().await?;
        // One bootstrapper at a time across processes.
        sqlx::query("SELECT pg_advisory_xact_lock(7265767402)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if n > 0 {
            return Ok(None);
        }
        let b = Self::create_tenant_tx(
            &mut tx,
            "default",
            "owner@localhost",
            &Limits::default(),
            &Actor::system("bootstrap"),
            now,
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(b))
    }

    /// Creates a tenant with its `default` workspace and owner; returns the owner key (once).
    pub async fn create_tenant(
        &self,
        name: &str,
        owner_email: &str,
        limits: Limits,
        actor: Actor,
        now: Millis,
    ) -> Result<Bootstrap, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let b = Self::create_tenant_tx(&mut tx, name, owner_email, &limits, &actor, now).await?;
        tx.commit().await.map_err(db)?;
        Ok(b)
    }

    /// System: resolves an API key secret to its identity (see `SqliteStore::resolve_key`).
    pub async fn resolve_key(
        &self,
        secret: &str,
        now: Millis,
    ) -> Result<Option<KeyIdentity>, StoreError> {
        let mut tx = self.system_tx().await?;
        let row = sqlx::query(
            "SELECT k.tenant_id, k.workspace_id, w.slug, k.role, k.id, k.created_by, k.last_used_at, m.role FROM api_keys k
             JOIN workspaces w ON w.tenant_id = k.tenant_id AND w.id = k.workspace_id
             LEFT JOIN members m ON m.tenant_id = k.tenant_id AND m.workspace_id = k.workspace_id AND m.user_id = k.created_by AND m.accepted_at IS NOT NULL
             WHERE k.secret_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
        )
        .bind(hash_secret(secret))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let Some(r) = row else { return Ok(None) };
        let by: Option<String> = r.get(5);
        let member: Option<String> = r.get(7);
        if by.is_some() && member.is_none() {
            return Ok(None);
        }
        let key_role = role(r.get(3))?;
        let effective = match member {
            Some(m) => key_role.min(role(m)?),
            None => key_role,
        };
        Ok(Some(KeyIdentity {
            scope: Scope {
                tenant: parse(r.get(0), "tenant id")?,
                workspace: parse(r.get(1), "workspace id")?,
            },
            workspace_slug: r.get(2),
            role: effective,
            key_id: parse(r.get(4), "key id")?,
            user: by.map(|u| parse(u, "user id")).transpose()?,
            last_used_at: r.get(6),
        }))
    }

    // ---- flows ----------------------------------------------------------------------------

    /// Creates the flow or saves a new version of it; publishes the new version when `publish`.
    pub async fn save_flow(
        &self,
        scope: Scope,
        name: &str,
        definition: Value,
        publish: bool,
        actor: Actor,
        now: Millis,
    ) -> Result<FlowRecord, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let existing = sqlx::query(
            "SELECT id, latest_version FROM flows WHERE tenant_id = $1 AND workspace_id = $2 AND name = $3 FOR UPDATE",
        )
        .bind(&t)
        .bind(&w)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)));
        if publish {
            let id = existing.as_ref().map(|e| e.0.as_str()).unwrap_or("");
            check_active_flows(&mut tx, &t, &w, id).await?;
        }
        let created = existing.is_none();
        let (id, version) = match existing {
            Some((id, v)) => {
                sqlx::query(
                    "UPDATE flows SET latest_version = $4, updated_at = $5, published_version = CASE WHEN $6 THEN $4 ELSE published_version END
                     WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
                )
                .bind(&t)
                .bind(&w)
                .bind(&id)
                .bind(v + 1)
                .bind(now)
                .bind(publish)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                (id, v + 1)
            }
            None => {
                let id = FlowId::new().to_string();
                sqlx::query(
                    "INSERT INTO flows (tenant_id, workspace_id, id, name, hook_id, latest_version, published_version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, 1, CASE WHEN $6 THEN 1 ELSE NULL END, $7, $7)",
                )
                .bind(&t)
                .bind(&w)
                .bind(&id)
                .bind(name)
                .bind(HookId::new().to_string())
                .bind(publish)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                (id, 1)
            }
        };
        sqlx::query(
            "INSERT INTO flow_versions (tenant_id, workspace_id, flow_id, version, definition, created_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
        )
        .bind(&t)
        .bind(&w)
        .bind(&id)
        .bind(version)
        .bind(definition.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let action = if created {
            "flow.create"
        } else {
            "flow.update"
        };
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action,
                object_kind: "flow",
                object_id: id.clone(),
                workspace: Some(scope.workspace),
                detail: json!({"name": name, "version": version, "published": publish}),
            },
        )
        .await?;
        let rec = get_flow_tx(&mut tx, &scope, &id).await?;
        tx.commit().await.map_err(db)?;
        Ok(rec)
    }

    /// A flow by id (`flw_…`) or by name.
    pub async fn get_flow(&self, scope: Scope, id_or_name: &str) -> Result<FlowRecord, StoreError> {
        let mut tx = self.tenant_tx(&scope.tenant.to_string()).await?;
        let rec = get_flow_tx(&mut tx, &scope, id_or_name).await;
        tx.commit().await.map_err(db)?;
        rec
    }

    /// Flows of a workspace ordered by name, after the `after` name (cursor).
    pub async fn list_flows(
        &self,
        scope: Scope,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<FlowRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let sql = format!(
            "SELECT {FLOW_COLS} FROM flows WHERE tenant_id = $1 AND workspace_id = $2 AND name > $3 ORDER BY name LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .bind(&w)
            .bind(after.unwrap_or_default())
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(read_flow).collect()
    }

    /// One version of a flow.
    pub async fn flow_version(
        &self,
        scope: Scope,
        flow: FlowId,
        version: i64,
    ) -> Result<FlowVersion, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let r = sqlx::query("SELECT definition::text, created_at FROM flow_versions WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND version = $4")
            .bind(&t)
            .bind(&w)
            .bind(flow.to_string())
            .bind(version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(db)?;
        Ok(FlowVersion {
            version,
            definition: json_text(r.get(0))?,
            created_at: r.get(1),
        })
    }

    /// Every version of a flow, newest first.
    pub async fn list_versions(
        &self,
        scope: Scope,
        flow: FlowId,
    ) -> Result<Vec<FlowVersion>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query("SELECT version, definition::text, created_at FROM flow_versions WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 ORDER BY version DESC")
            .bind(&t)
            .bind(&w)
            .bind(flow.to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(FlowVersion {
                    version: r.get(0),
                    definition: json_text(r.get(1))?,
                    created_at: r.get(2),
                })
            })
            .collect()
    }

    /// Makes `version` the active one.
    pub async fn publish(
        &self,
        scope: Scope,
        flow: FlowId,
        version: i64,
        actor: Actor,
        now: Millis,
    ) -> Result<FlowRecord, StoreError> {
        let (t, w) = scope_strs(&scope);
        let id = flow.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM flow_versions WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND version = $4")
            .bind(&t)
            .bind(&w)
            .bind(&id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        check_active_flows(&mut tx, &t, &w, &id).await?;
        sqlx::query("UPDATE flows SET published_version = $4, updated_at = $5 WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3")
            .bind(&t)
            .bind(&w)
            .bind(&id)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "flow.publish",
                object_kind: "flow",
                object_id: id.clone(),
                workspace: Some(scope.workspace),
                detail: json!({"version": version}),
            },
        )
        .await?;
        let rec = get_flow_tx(&mut tx, &scope, &id).await?;
        tx.commit().await.map_err(db)?;
        Ok(rec)
    }

    /// Deletes a flow, its versions and its schedule (runs stay in history).
    pub async fn delete_flow(
        &self,
        scope: Scope,
        flow: FlowId,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let id = flow.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        for sql in [
            "DELETE FROM schedules WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3",
            "DELETE FROM polls WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3",
            "DELETE FROM poll_seen WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3",
            "DELETE FROM flow_versions WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3",
        ] {
            sqlx::query(sql)
                .bind(&t)
                .bind(&w)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let n =
            sqlx::query("DELETE FROM flows WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3")
                .bind(&t)
                .bind(&w)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "flow.delete",
                object_kind: "flow",
                object_id: id,
                workspace: Some(scope.workspace),
                detail: json!({}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    // ---- audit ------------------------------------------------------------------------------

    /// Walks a tenant's whole audit chain and names the first entry that does not check.
    pub async fn verify_audit(&self, tenant: TenantId) -> Result<ChainCheck, StoreError> {
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let head = sqlx::query("SELECT audit_seq, audit_head FROM tenants WHERE id = $1")
            .bind(&t)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let rows = sqlx::query(
            "SELECT seq, ts, workspace_id, actor_kind, actor_id, via, request_id, action, object_kind, object_id, detail, prev_hash, hash
             FROM audit_log WHERE tenant_id = $1 ORDER BY seq",
        )
        .bind(&t)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let entries: Vec<AuditEntry> = rows.iter().map(read_audit).collect();
        Ok(check_chain(
            &t,
            &entries,
            head.get(0),
            &head.get::<String, _>(1),
        ))
    }
}

/// The channel on which PostgreSQL announces new ready work to every worker process.
pub(super) const WORK_CHANNEL: &str = "weft_work";

/// Announces new ready work when the transaction commits (notifications are transactional).
/// How often a process may NOTIFY other processes of new work.
const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

impl PgStore {
    /// A stream of "there may be new work" signals from every process (LISTEN/NOTIFY). The
    /// listener reconnects by itself; notifications sent while it reconnects are lost, which is
    /// why workers also poll.
    pub async fn work_signals(&self) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(db)?;
        listener.listen(WORK_CHANNEL).await.map_err(db)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => {
                        // A full channel already holds a wake-up: dropping this one loses nothing.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(())
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "work listener lost its connection; retrying");
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(rx)
    }
}
