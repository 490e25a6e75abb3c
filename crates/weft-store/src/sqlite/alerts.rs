//! SQLite: alert rules, incidents (de-duplication) and the notification outbox (mirrors
//! `postgres/alerts.rs`; the conformance suite checks they agree).

use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};
use weft_types::{Millis, Scope};

use super::SqliteStore;
use super::audit::append;
use super::ops::parse;
use crate::alerting::{rule_audit, spec_of};
use crate::model::*;
use crate::{StoreError, scope_strs};

impl SqliteStore {
    /// Creates an alert rule; a conflict when the workspace has one of that name.
    pub async fn create_alert_rule(
        &self,
        scope: Scope,
        name: &str,
        spec: Value,
        actor: Actor,
        now: Millis,
    ) -> Result<AlertRuleRecord, StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c
                .prepare_cached(
                    "INSERT INTO alert_rules (tenant_id, workspace_id, name, spec, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![t, w, name, spec.to_string(), now])?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "an alert rule named '{name}' exists; delete it first or pick another name"
                )));
            }
            append(
                c,
                &t,
                now,
                &rule_audit(actor.clone(), "alert.create", &scope, &name),
            )?;
            Ok(AlertRuleRecord {
                name: name.clone(),
                spec: spec.clone(),
                created_at: now,
            })
        })
        .await
    }

    /// The workspace's alert rules, by name.
    pub async fn list_alert_rules(&self, scope: Scope) -> Result<Vec<AlertRuleRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT name, spec, created_at FROM alert_rules
                 WHERE tenant_id = ?1 AND workspace_id = ?2 ORDER BY name",
            )?;
            let mut rows = st.query(params![t, w])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(AlertRuleRecord {
                    name: r.get(0)?,
                    spec: spec_of(r.get(1)?)?,
                    created_at: r.get(2)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// System: every workspace's alert rules watching `on` (for the periodic checks).
    pub async fn alert_rules_on(
        &self,
        on: &str,
    ) -> Result<Vec<(Scope, AlertRuleRecord)>, StoreError> {
        let on = on.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT tenant_id, workspace_id, name, spec, created_at FROM alert_rules
                 WHERE json_extract(spec, '$.on') = ?1 ORDER BY tenant_id, workspace_id, name",
            )?;
            let mut rows = st.query(params![on])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((
                    Scope {
                        tenant: parse(r.get(0)?, "tenant id")?,
                        workspace: parse(r.get(1)?, "workspace id")?,
                    },
                    AlertRuleRecord {
                        name: r.get(2)?,
                        spec: spec_of(r.get(3)?)?,
                        created_at: r.get(4)?,
                    },
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Deletes an alert rule with its incidents and undelivered notifications.
    pub async fn delete_alert_rule(
        &self,
        scope: Scope,
        name: &str,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c
                .prepare_cached(
                    "DELETE FROM alert_rules WHERE tenant_id = ?1 AND workspace_id = ?2 AND name = ?3",
                )?
                .execute(params![t, w, name])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            for table in ["alert_incidents", "alert_outbox"] {
                c.prepare_cached(&format!(
                    "DELETE FROM {table} WHERE tenant_id = ?1 AND workspace_id = ?2 AND rule = ?3"
                ))?
                .execute(params![t, w, name])?;
            }
            append(c, &t, now, &rule_audit(actor.clone(), "alert.delete", &scope, &name))?;
            Ok(())
        })
        .await
    }

    /// One occurrence of `incident` for `rule`: queues `payload` (with `suppressed` set) when
    /// [`crate::alerting::occur`] says it notifies, else only counts it. Decided and queued in
    /// one transaction, so concurrent occurrences notify once.
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
        let (rule, incident) = (rule.to_string(), incident.to_string());
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let exists = c
                .prepare_cached(
                    "SELECT 1 FROM alert_rules WHERE tenant_id = ?1 AND workspace_id = ?2 AND name = ?3",
                )?
                .query_row(params![t, w, rule], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound);
            }
            let prev = c
                .prepare_cached(
                    "SELECT notified_at, suppressed, window_start, window_count FROM alert_incidents
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND rule = ?3 AND incident = ?4",
                )?
                .query_row(params![t, w, rule, incident], |r| {
                    Ok(crate::alerting::Incident {
                        notified_at: r.get(0)?,
                        suppressed: r.get(1)?,
                        window_start: r.get(2)?,
                        window_count: r.get(3)?,
                    })
                })
                .optional()?;
            let (st, notify) = crate::alerting::occur(prev, quiet_ms, at_least, now);
            c.prepare_cached(
                "INSERT INTO alert_incidents (tenant_id, workspace_id, rule, incident, first_at, last_at, notified_at, suppressed, window_start, window_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (tenant_id, workspace_id, rule, incident) DO UPDATE SET
                    last_at = excluded.last_at, notified_at = excluded.notified_at, suppressed = excluded.suppressed,
                    window_start = excluded.window_start, window_count = excluded.window_count",
            )?
            .execute(params![t, w, rule, incident, now, st.notified_at, st.suppressed, st.window_start, st.window_count])?;
            let Some(suppressed) = notify else {
                return Ok(Raised::Suppressed);
            };
            let mut payload = payload.clone();
            if let Some(o) = payload.as_object_mut() {
                o.insert("suppressed".into(), json!(suppressed));
            }
            c.prepare_cached(
                "INSERT INTO alert_outbox (tenant_id, workspace_id, rule, incident, payload, created_at, next_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )?
            .execute(params![t, w, rule, incident, payload.to_string(), now])?;
            Ok(Raised::Notify { suppressed })
        })
        .await
    }

    /// System: up to `limit` notifications due at `now`, each held for `lease_ms` (another
    /// process does not take it meanwhile; one that dies holding it lets it go due again).
    pub async fn claim_alert_deliveries(
        &self,
        now: Millis,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<AlertDelivery>, StoreError> {
        self.write(move |c| {
            let mut st = c.prepare_cached(
                "UPDATE alert_outbox SET next_at = ?1 + ?2
                 WHERE seq IN (SELECT seq FROM alert_outbox WHERE delivered_at IS NULL AND next_at <= ?1
                               ORDER BY next_at, seq LIMIT ?3)
                 RETURNING seq, tenant_id, workspace_id, rule, incident, payload, created_at, attempts, delivered_at, error",
            )?;
            let mut rows = st.query(params![now, lease_ms, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(delivery(r)?);
            }
            out.sort_by_key(|d| d.seq);
            Ok(out)
        })
        .await
    }

    /// Records a delivery's attempt: delivered, or failed with `error` and tried again at
    /// `retry_at` (`None`: given up).
    pub async fn finish_alert_delivery(
        &self,
        seq: i64,
        outcome: Result<(), (String, Option<Millis>)>,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            match &outcome {
                Ok(()) => c
                    .prepare_cached(
                        "UPDATE alert_outbox SET delivered_at = ?2, attempts = attempts + 1, error = NULL WHERE seq = ?1",
                    )?
                    .execute(params![seq, now])?,
                // Given up: it stays undelivered with its error, never due again.
                Err((error, retry_at)) => c
                    .prepare_cached(
                        "UPDATE alert_outbox SET attempts = attempts + 1, error = ?2, next_at = ?3 WHERE seq = ?1",
                    )?
                    .execute(params![seq, error, retry_at.unwrap_or(i64::MAX)])?,
            };
            Ok(())
        })
        .await
    }

    /// A rule's notifications, newest first.
    pub async fn alert_deliveries(
        &self,
        scope: Scope,
        rule: &str,
        limit: usize,
    ) -> Result<Vec<AlertDelivery>, StoreError> {
        let rule = rule.to_string();
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT seq, tenant_id, workspace_id, rule, incident, payload, created_at, attempts, delivered_at, error
                 FROM alert_outbox WHERE tenant_id = ?1 AND workspace_id = ?2 AND rule = ?3
                 ORDER BY seq DESC LIMIT ?4",
            )?;
            let mut rows = st.query(params![t, w, rule, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(delivery(r)?);
            }
            Ok(out)
        })
        .await
    }
}

fn delivery(r: &rusqlite::Row<'_>) -> Result<AlertDelivery, StoreError> {
    Ok(AlertDelivery {
        seq: r.get(0)?,
        scope: Scope {
            tenant: parse(r.get(1)?, "tenant id")?,
            workspace: parse(r.get(2)?, "workspace id")?,
        },
        rule: r.get(3)?,
        incident: r.get(4)?,
        payload: spec_of(r.get(5)?)?,
        created_at: r.get(6)?,
        attempts: r.get(7)?,
        delivered_at: r.get(8)?,
        error: r.get(9)?,
    })
}
