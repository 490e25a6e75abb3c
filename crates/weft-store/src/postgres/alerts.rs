//! PostgreSQL: alert rules, incidents (de-duplication) and the notification outbox (mirrors
//! `sqlite/alerts.rs`; the conformance suite checks they agree).

use serde_json::{Value, json};
use sqlx::Row;
use weft_types::{Millis, Scope};

use super::PgStore;
use super::store::{append, db, parse};
use super::{pg_json, pg_text};
use crate::alerting::{rule_audit, spec_of};
use crate::model::*;
use crate::{StoreError, scope_strs};

const DELIVERY_COLS: &str = "seq, tenant_id, workspace_id, rule, incident, payload, created_at, attempts, delivered_at, error";

fn delivery(r: &sqlx::postgres::PgRow) -> Result<AlertDelivery, StoreError> {
    Ok(AlertDelivery {
        seq: r.get(0),
        scope: Scope {
            tenant: parse(r.get(1), "tenant id")?,
            workspace: parse(r.get(2), "workspace id")?,
        },
        rule: r.get(3),
        incident: r.get(4),
        payload: spec_of(r.get(5))?,
        created_at: r.get(6),
        attempts: r.get(7),
        delivered_at: r.get(8),
        error: r.get(9),
    })
}

impl PgStore {
    /// Creates an alert rule; a conflict when the workspace has one of that name.
    pub async fn create_alert_rule(
        &self,
        scope: Scope,
        name: &str,
        spec: Value,
        actor: Actor,
        now: Millis,
    ) -> Result<AlertRuleRecord, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "INSERT INTO alert_rules (tenant_id, workspace_id, name, spec, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&t)
        .bind(&w)
        .bind(pg_text(name).as_ref())
        .bind(pg_json(&spec))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            tx.rollback().await.map_err(db)?;
            return Err(StoreError::Conflict(format!(
                "an alert rule named '{name}' exists; delete it first or pick another name"
            )));
        }
        append(
            &mut tx,
            &t,
            now,
            &rule_audit(actor, "alert.create", &scope, name),
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(AlertRuleRecord {
            name: name.to_string(),
            spec,
            created_at: now,
        })
    }

    /// The workspace's alert rules, by name.
    pub async fn list_alert_rules(&self, scope: Scope) -> Result<Vec<AlertRuleRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(
            "SELECT name, spec, created_at FROM alert_rules
             WHERE tenant_id = $1 AND workspace_id = $2 ORDER BY name",
        )
        .bind(&t)
        .bind(&w)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(AlertRuleRecord {
                    name: r.get(0),
                    spec: spec_of(r.get(1))?,
                    created_at: r.get(2),
                })
            })
            .collect()
    }

    /// System: every workspace's alert rules watching `on` (for the periodic checks).
    pub async fn alert_rules_on(
        &self,
        on: &str,
    ) -> Result<Vec<(Scope, AlertRuleRecord)>, StoreError> {
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query(
            "SELECT tenant_id, workspace_id, name, spec, created_at FROM alert_rules
             WHERE spec::jsonb ->> 'on' = $1 ORDER BY tenant_id, workspace_id, name",
        )
        .bind(on)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    Scope {
                        tenant: parse(r.get(0), "tenant id")?,
                        workspace: parse(r.get(1), "workspace id")?,
                    },
                    AlertRuleRecord {
                        name: r.get(2),
                        spec: spec_of(r.get(3))?,
                        created_at: r.get(4),
                    },
                ))
            })
            .collect()
    }

    /// Deletes an alert rule with its incidents and undelivered notifications.
    pub async fn delete_alert_rule(
        &self,
        scope: Scope,
        name: &str,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "DELETE FROM alert_rules WHERE tenant_id = $1 AND workspace_id = $2 AND name = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(pg_text(name).as_ref())
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            tx.rollback().await.map_err(db)?;
            return Err(StoreError::NotFound);
        }
        for sql in [
            "DELETE FROM alert_incidents WHERE tenant_id = $1 AND workspace_id = $2 AND rule = $3",
            "DELETE FROM alert_outbox WHERE tenant_id = $1 AND workspace_id = $2 AND rule = $3",
        ] {
            sqlx::query(sql)
                .bind(&t)
                .bind(&w)
                .bind(pg_text(name).as_ref())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        append(
            &mut tx,
            &t,
            now,
            &rule_audit(actor, "alert.delete", &scope, name),
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// One occurrence of `incident` for `rule`: queues `payload` (with `suppressed` set) when
    /// [`crate::alerting::occur`] says it notifies, else only counts it. The rule's row is
    /// locked first, so concurrent occurrences decide one after another and notify once.
    #[allow(clippy::too_many_arguments)]
    pub async fn raise_alert(
        &self,
        scope: Scope,
        rule: &str,
        incident: &str,
        quiet_ms: i64,
        at_least: Option<(i64, i64)>,
        payload: Value,
        now: Millis,
    ) -> Result<Raised, StoreError> {
        let (t, w) = scope_strs(&scope);
        let (rule, incident) = (pg_text(rule).into_owned(), pg_text(incident).into_owned());
        let mut tx = self.tenant_tx(&t).await?;
        let exists = sqlx::query(
            "SELECT 1 FROM alert_rules WHERE tenant_id = $1 AND workspace_id = $2 AND name = $3 FOR UPDATE",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rule)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .is_some();
        if !exists {
            tx.rollback().await.map_err(db)?;
            return Err(StoreError::NotFound);
        }
        let prev: Option<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT notified_at, suppressed, window_start, window_count FROM alert_incidents
             WHERE tenant_id = $1 AND workspace_id = $2 AND rule = $3 AND incident = $4",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rule)
        .bind(&incident)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let prev = prev.map(|(notified_at, suppressed, window_start, window_count)| {
            crate::alerting::Incident {
                notified_at,
                suppressed,
                window_start,
                window_count,
            }
        });
        let (st, notify) = crate::alerting::occur(prev, quiet_ms, at_least, now);
        sqlx::query(
            "INSERT INTO alert_incidents (tenant_id, workspace_id, rule, incident, first_at, last_at, notified_at, suppressed, window_start, window_count)
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant_id, workspace_id, rule, incident) DO UPDATE SET
                last_at = excluded.last_at, notified_at = excluded.notified_at, suppressed = excluded.suppressed,
                window_start = excluded.window_start, window_count = excluded.window_count",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rule)
        .bind(&incident)
        .bind(now)
        .bind(st.notified_at)
        .bind(st.suppressed)
        .bind(st.window_start)
        .bind(st.window_count)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let Some(suppressed) = notify else {
            tx.commit().await.map_err(db)?;
            return Ok(Raised::Suppressed);
        };
        let mut payload = payload;
        if let Some(o) = payload.as_object_mut() {
            o.insert("suppressed".into(), json!(suppressed));
        }
        sqlx::query(
            "INSERT INTO alert_outbox (tenant_id, workspace_id, rule, incident, payload, created_at, next_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rule)
        .bind(&incident)
        .bind(pg_json(&payload))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Raised::Notify { suppressed })
    }

    /// System: up to `limit` notifications due at `now`, each held for `lease_ms` (another
    /// process does not take it meanwhile; one that dies holding it lets it go due again).
    pub async fn claim_alert_deliveries(
        &self,
        now: Millis,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<AlertDelivery>, StoreError> {
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE alert_outbox SET next_at = $1 + $2
             WHERE seq IN (SELECT seq FROM alert_outbox WHERE delivered_at IS NULL AND next_at <= $1
                           ORDER BY next_at, seq LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING {DELIVERY_COLS}"
        )))
        .bind(now)
        .bind(lease_ms)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut out = rows.iter().map(delivery).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|d| d.seq);
        Ok(out)
    }

    /// Records a delivery's attempt: delivered, or failed with `error` and tried again at
    /// `retry_at` (`None`: given up).
    pub async fn finish_alert_delivery(
        &self,
        seq: i64,
        outcome: Result<(), (String, Option<Millis>)>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.system_tx().await?;
        match outcome {
            Ok(()) => sqlx::query(
                "UPDATE alert_outbox SET delivered_at = $2, attempts = attempts + 1, error = NULL WHERE seq = $1",
            )
            .bind(seq)
            .bind(now),
            // Given up: it stays undelivered with its error, never due again.
            Err((error, retry_at)) => sqlx::query(
                "UPDATE alert_outbox SET attempts = attempts + 1, error = $2, next_at = $3 WHERE seq = $1",
            )
            .bind(seq)
            .bind(pg_text(&error).into_owned())
            .bind(retry_at.unwrap_or(i64::MAX)),
        }
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// A rule's notifications, newest first.
    pub async fn alert_deliveries(
        &self,
        scope: Scope,
        rule: &str,
        limit: usize,
    ) -> Result<Vec<AlertDelivery>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLS} FROM alert_outbox
             WHERE tenant_id = $1 AND workspace_id = $2 AND rule = $3 ORDER BY seq DESC LIMIT $4"
        )))
        .bind(&t)
        .bind(&w)
        .bind(pg_text(rule).as_ref())
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(delivery).collect()
    }
}
