//! PostgreSQL: error groups (mirrors `sqlite/errors.rs`; the conformance suite checks they
//! agree).

use sqlx::Row;
use weft_types::{FlowId, Millis, Scope};

use super::PgStore;
use super::pg_text;
use super::store::{db, parse};
use crate::model::*;
use crate::{StoreError, scope_strs};

const DAY_MS: i64 = 86_400_000;

impl PgStore {
    /// Counts one failed step in its group (created on the first) and in today's count; true
    /// when this failure opened the group.
    pub async fn record_error(&self, scope: Scope, e: NewError) -> Result<bool, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let count = sqlx::query(
            "INSERT INTO error_groups (tenant_id, workspace_id, fingerprint, flow_id, flow_name, step_id,
                connector, class, message, count, first_seen, last_seen, sample_run)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10, $11)
             ON CONFLICT (tenant_id, workspace_id, fingerprint) DO UPDATE SET
                count = error_groups.count + 1,
                flow_name = excluded.flow_name,
                message = excluded.message,
                last_seen = greatest(error_groups.last_seen, excluded.last_seen),
                first_seen = least(error_groups.first_seen, excluded.first_seen),
                sample_run = excluded.sample_run
             RETURNING count",
        )
        .bind(&t)
        .bind(&w)
        .bind(&e.fingerprint)
        .bind(e.flow_id.to_string())
        .bind(pg_text(&e.flow_name).as_ref())
        .bind(pg_text(&e.step_id).as_ref())
        .bind(pg_text(&e.connector).as_ref())
        .bind(pg_text(&e.class).as_ref())
        .bind(pg_text(&e.message).as_ref())
        .bind(e.at)
        .bind(e.run.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?
        .get::<i64, _>(0);
        sqlx::query(
            "INSERT INTO error_group_days (tenant_id, workspace_id, fingerprint, day, count)
             VALUES ($1, $2, $3, $4, 1)
             ON CONFLICT (tenant_id, workspace_id, fingerprint, day) DO UPDATE SET count = error_group_days.count + 1",
        )
        .bind(&t)
        .bind(&w)
        .bind(&e.fingerprint)
        .bind(e.at.div_euclid(DAY_MS))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(count == 1)
    }

    /// Error groups seen at or after `since`, latest first, optionally of one flow; each with
    /// its per-day counts from `trend_from` on.
    pub async fn list_errors(
        &self,
        scope: Scope,
        flow: Option<FlowId>,
        since: Millis,
        trend_from: Millis,
        before: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<ErrorGroup>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let (b_at, b_fp) = match before {
            Some((a, f)) => (Some(a), Some(f)),
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT fingerprint, flow_id, flow_name, step_id, connector, class, message, count,
                    first_seen, last_seen, sample_run
             FROM error_groups
             WHERE tenant_id = $1 AND workspace_id = $2 AND last_seen >= $3
               AND ($4::text IS NULL OR flow_id = $4)
               AND ($5::bigint IS NULL OR last_seen < $5 OR (last_seen = $5 AND fingerprint < $6::text))
             ORDER BY last_seen DESC, fingerprint DESC LIMIT $7",
        )
        .bind(&t)
        .bind(&w)
        .bind(since)
        .bind(flow.map(|f| f.to_string()))
        .bind(b_at)
        .bind(b_fp)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(ErrorGroup {
                fingerprint: r.get(0),
                flow_id: parse(r.get(1), "flow id")?,
                flow_name: r.get(2),
                step_id: r.get(3),
                connector: r.get(4),
                class: r.get(5),
                message: r.get(6),
                count: r.get(7),
                first_seen: r.get(8),
                last_seen: r.get(9),
                sample_run: parse(r.get(10), "run id")?,
                trend: Vec::new(),
            });
        }
        let fps: Vec<String> = out.iter().map(|g| g.fingerprint.clone()).collect();
        let days = sqlx::query(
            "SELECT fingerprint, day, count FROM error_group_days
             WHERE tenant_id = $1 AND workspace_id = $2 AND fingerprint = ANY($3) AND day >= $4
             ORDER BY day",
        )
        .bind(&t)
        .bind(&w)
        .bind(&fps)
        .bind(trend_from.div_euclid(DAY_MS))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        for d in &days {
            let fp: String = d.get(0);
            if let Some(g) = out.iter_mut().find(|g| g.fingerprint == fp) {
                g.trend.push((d.get(1), d.get(2)));
            }
        }
        Ok(out)
    }
}
