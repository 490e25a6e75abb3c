//! PostgreSQL: hook lookup, schedules, usage and the default scope (mirrors `sqlite/ops.rs`).
//! Schedules fire once across many workers: the tick is moved by a conditional update in the
//! same transaction as the run's insert, so only one worker's update matches.

use sqlx::Row;
use weft_types::{FlowId, HookId, Millis, Scope, TenantId};

use super::PgStore;
use super::runs::insert_run_tx;
use super::store::{db, parse};
use crate::*;

impl PgStore {
    /// System: where an (unguessable) hook id leads.
    pub async fn lookup_hook(&self, hook: HookId) -> Result<Option<HookTarget>, StoreError> {
        let mut tx = self.system_tx().await?;
        let r = sqlx::query("SELECT tenant_id, workspace_id, id, name, published_version FROM flows WHERE hook_id = $1")
            .bind(hook.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        r.map(|r| {
            Ok(HookTarget {
                scope: Scope {
                    tenant: parse(r.get(0), "tenant id")?,
                    workspace: parse(r.get(1), "workspace id")?,
                },
                flow_id: parse(r.get(2), "flow id")?,
                flow_name: r.get(3),
                published_version: r.get(4),
            })
        })
        .transpose()
    }

    /// Sets (or with `None`, removes) a flow's next schedule tick.
    pub async fn set_schedule(
        &self,
        scope: Scope,
        flow: FlowId,
        next_tick: Option<Millis>,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let q = match next_tick {
            Some(at) => sqlx::query(
                "INSERT INTO schedules (tenant_id, workspace_id, flow_id, next_tick_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, workspace_id, flow_id) DO UPDATE SET next_tick_at = excluded.next_tick_at",
            )
            .bind(&t)
            .bind(&w)
            .bind(flow.to_string())
            .bind(at),
            None => sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3")
                .bind(&t)
                .bind(&w)
                .bind(flow.to_string()),
        };
        q.execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// System: schedules whose tick is at or before `now`.
    pub async fn due_schedules(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<DueSchedule>, StoreError> {
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query("SELECT tenant_id, workspace_id, flow_id, next_tick_at FROM schedules WHERE next_tick_at <= $1 ORDER BY next_tick_at LIMIT $2")
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(DueSchedule {
                    scope: Scope {
                        tenant: parse(r.get(0), "tenant id")?,
                        workspace: parse(r.get(1), "workspace id")?,
                    },
                    flow_id: parse(r.get(2), "flow id")?,
                    tick_at: r.get(3),
                })
            })
            .collect()
    }

    /// System: the earliest pending schedule tick.
    pub async fn next_schedule_at(&self) -> Result<Option<Millis>, StoreError> {
        let mut tx = self.system_tx().await?;
        let at: Option<Millis> = sqlx::query_scalar("SELECT MIN(next_tick_at) FROM schedules")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(at)
    }

    /// Starts the run of a due tick and moves the schedule on, in one transaction, only if the
    /// schedule still points at `tick_at` (another worker may have fired it).
    pub async fn fire_schedule(
        &self,
        run: NewRun,
        tick_at: Millis,
        next_tick: Option<Millis>,
    ) -> Result<Option<Inserted>, StoreError> {
        let (t, w) = scope_strs(&run.scope);
        let flow = run.flow_id.to_string();
        let trigger = super::pg_json(&run.trigger);
        let mut tx = self.tenant_tx(&t).await?;
        let q = match next_tick {
            Some(next) => sqlx::query("UPDATE schedules SET next_tick_at = $5 WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND next_tick_at = $4")
                .bind(&t)
                .bind(&w)
                .bind(&flow)
                .bind(tick_at)
                .bind(next),
            None => sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND next_tick_at = $4")
                .bind(&t)
                .bind(&w)
                .bind(&flow)
                .bind(tick_at),
        };
        if q.execute(&mut *tx).await.map_err(db)?.rows_affected() == 0 {
            return Ok(None);
        }
        let ins = insert_run_tx(&mut tx, &run, &trigger, &mut Default::default()).await?;
        tx.commit().await.map_err(db)?;
        self.announce();
        Ok(Some(ins))
    }

    /// A tenant's consumption.
    pub async fn usage(&self, tenant: TenantId, now: Millis) -> Result<Usage, StoreError> {
        let t = tenant.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let current = crate::quota::month_of(now);
        let r = sqlx::query(
            "SELECT COALESCE((SELECT SUM(runs_in_month) FILTER (WHERE month = $2) FROM tenant_usage WHERE tenant_id = $1), 0)::bigint,
                    COALESCE((SELECT SUM(stored_bytes) FROM tenant_usage WHERE tenant_id = $1), 0)::bigint,
                    (SELECT COUNT(*) FROM flows WHERE tenant_id = $1 AND published_version IS NOT NULL),
                    (SELECT COUNT(*) FROM run_queue WHERE tenant_id = $1 AND lease_owner IS NOT NULL)",
        )
        .bind(&t)
        .bind(&current)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Usage {
            runs_in_month: r.get(0),
            month: current,
            stored_bytes: r.get(1),
            active_flows: r.get(2),
            running: r.get(3),
        })
    }

    /// System: the first tenant's `default` workspace (where `--flows` and the example flow go).
    pub async fn default_scope(&self) -> Result<Option<Scope>, StoreError> {
        let mut tx = self.system_tx().await?;
        let r = sqlx::query(
            "SELECT w.tenant_id, w.id FROM workspaces w JOIN tenants t ON t.id = w.tenant_id
             WHERE w.slug = 'default' ORDER BY t.created_at, t.id LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        r.map(|r| {
            Ok(Scope {
                tenant: parse(r.get(0), "tenant id")?,
                workspace: parse(r.get(1), "workspace id")?,
            })
        })
        .transpose()
    }
}
