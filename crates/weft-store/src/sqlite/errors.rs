//! SQLite: error groups (mirrors `postgres/errors.rs`; the conformance suite checks they agree).

use rusqlite::params;
use weft_types::{FlowId, Millis, Scope};

use super::SqliteStore;
use super::ops::parse;
use crate::model::*;
use crate::{StoreError, scope_strs};

const DAY_MS: i64 = 86_400_000;

impl SqliteStore {
    /// Counts one failed step in its group (created on the first) and in today's count; true
    /// when this failure opened the group.
    pub async fn record_error(&self, scope: Scope, e: NewError) -> Result<bool, StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let count: i64 = c.prepare_cached(
                "INSERT INTO error_groups (tenant_id, workspace_id, fingerprint, flow_id, flow_name, step_id,
                    connector, class, message, count, first_seen, last_seen, sample_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?10, ?11)
                 ON CONFLICT (tenant_id, workspace_id, fingerprint) DO UPDATE SET
                    count = error_groups.count + 1,
                    flow_name = excluded.flow_name,
                    message = excluded.message,
                    last_seen = max(error_groups.last_seen, excluded.last_seen),
                    first_seen = min(error_groups.first_seen, excluded.first_seen),
                    sample_run = excluded.sample_run
                 RETURNING count",
            )?
            .query_row(params![
                t,
                w,
                e.fingerprint,
                e.flow_id.to_string(),
                e.flow_name,
                e.step_id,
                e.connector,
                e.class,
                e.message,
                e.at,
                e.run.to_string()
            ], |r| r.get(0))?;
            c.prepare_cached(
                "INSERT INTO error_group_days (tenant_id, workspace_id, fingerprint, day, count)
                 VALUES (?1, ?2, ?3, ?4, 1)
                 ON CONFLICT (tenant_id, workspace_id, fingerprint, day) DO UPDATE SET count = error_group_days.count + 1",
            )?
            .execute(params![t, w, e.fingerprint, e.at.div_euclid(DAY_MS)])?;
            Ok(count == 1)
        })
        .await
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
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT fingerprint, flow_id, flow_name, step_id, connector, class, message, count,
                        first_seen, last_seen, sample_run
                 FROM error_groups
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND last_seen >= ?3
                   AND (?4 IS NULL OR flow_id = ?4)
                   AND (?5 IS NULL OR last_seen < ?5 OR (last_seen = ?5 AND fingerprint < ?6))
                 ORDER BY last_seen DESC, fingerprint DESC LIMIT ?7",
            )?;
            let (b_at, b_fp) = match &before {
                Some((a, f)) => (Some(*a), Some(f.clone())),
                None => (None, None),
            };
            let mut rows = st.query(params![
                t,
                w,
                since,
                flow.map(|f| f.to_string()),
                b_at,
                b_fp,
                limit as i64
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(ErrorGroup {
                    fingerprint: r.get(0)?,
                    flow_id: parse(r.get(1)?, "flow id")?,
                    flow_name: r.get(2)?,
                    step_id: r.get(3)?,
                    connector: r.get(4)?,
                    class: r.get(5)?,
                    message: r.get(6)?,
                    count: r.get(7)?,
                    first_seen: r.get(8)?,
                    last_seen: r.get(9)?,
                    sample_run: parse(r.get(10)?, "run id")?,
                    trend: Vec::new(),
                });
            }
            let mut st = c.prepare_cached(
                "SELECT day, count FROM error_group_days
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND fingerprint = ?3 AND day >= ?4
                 ORDER BY day",
            )?;
            for g in &mut out {
                let mut rows =
                    st.query(params![t, w, g.fingerprint, trend_from.div_euclid(DAY_MS)])?;
                while let Some(r) = rows.next()? {
                    g.trend.push((r.get(0)?, r.get(1)?));
                }
            }
            Ok(out)
        })
        .await
    }
}
