//! The store's operations on SQLite. Each public method is one read or one group-committed write.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};
use weft_types::{FlowId, HookId, Millis, RunId, RunStatus, Scope, StepStatus};

use super::SqliteStore;
use super::audit::append;
use crate::model::*;
use crate::{StoreError, scope_strs};

pub(super) fn parse<T: std::str::FromStr>(s: String, what: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad {what}: {s}")))
}

pub(super) fn json(s: Option<String>) -> Result<Option<Value>, StoreError> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
    })
    .transpose()
}

fn to_json(v: &Value) -> String {
    v.to_string()
}

const FLOW_COLS: &str = "tenant_id, workspace_id, id, name, hook_id, latest_version, published_version, created_at, updated_at";

fn flow_row(r: &Row<'_>) -> rusqlite::Result<[Option<String>; 5]> {
    Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?])
}

fn read_flow(r: &Row<'_>) -> Result<FlowRecord, StoreError> {
    let [t, w, id, name, hook] = flow_row(r)?;
    Ok(FlowRecord {
        scope: Scope {
            tenant: parse(t.unwrap_or_default(), "tenant id")?,
            workspace: parse(w.unwrap_or_default(), "workspace id")?,
        },
        id: parse(id.unwrap_or_default(), "flow id")?,
        name: name.unwrap_or_default(),
        hook_id: parse(hook.unwrap_or_default(), "hook id")?,
        latest_version: r.get(5)?,
        published_version: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

pub(super) const RUN_COLS: &str = "tenant_id, workspace_id, id, flow_id, flow_name, flow_version, status, trigger, output, error, created_at, started_at, finished_at, claims, parent_run, traceparent";

/// A run row whose JSON columns are still text, so the writer thread never parses JSON.
struct RawRun {
    rec: RunRecord,
    trigger: Option<String>,
    output: Option<String>,
    claims: i64,
}

impl RawRun {
    fn parse(self) -> Result<(RunRecord, i64), StoreError> {
        let mut rec = self.rec;
        rec.trigger = json(self.trigger)?.unwrap_or(Value::Null);
        rec.output = json(self.output)?;
        Ok((rec, self.claims))
    }
}

fn read_run_raw(r: &Row<'_>) -> Result<RawRun, StoreError> {
    let status: String = r.get(6)?;
    let parent: Option<String> = r.get(14)?;
    Ok(RawRun {
        rec: RunRecord {
            scope: Scope {
                tenant: parse(r.get(0)?, "tenant id")?,
                workspace: parse(r.get(1)?, "workspace id")?,
            },
            id: parse(r.get(2)?, "run id")?,
            flow_id: parse(r.get(3)?, "flow id")?,
            flow_name: r.get(4)?,
            flow_version: r.get(5)?,
            status: RunStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?,
            trigger: Value::Null,
            output: None,
            error: r.get(9)?,
            created_at: r.get(10)?,
            started_at: r.get(11)?,
            finished_at: r.get(12)?,
            parent: parent.map(|p| parse(p, "parent run id")).transpose()?,
            traceparent: r.get(15)?,
        },
        trigger: r.get(7)?,
        output: r.get(8)?,
        claims: r.get(13)?,
    })
}

pub(super) fn read_run(r: &Row<'_>) -> Result<(RunRecord, i64), StoreError> {
    read_run_raw(r)?.parse()
}

fn read_step(r: &Row<'_>) -> Result<StepRecord, StoreError> {
    let status: String = r.get(2)?;
    Ok(StepRecord {
        step_id: r.get(0)?,
        idx: r.get(1)?,
        status: StepStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("bad step status {status}")))?,
        attempts: r.get(3)?,
        output: json(r.get(4)?)?,
        error: r.get(5)?,
        started_at: r.get(6)?,
        finished_at: r.get(7)?,
    })
}

fn steps_of(c: &Connection, t: &str, w: &str, run: &str) -> Result<Vec<StepRecord>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT step_id, idx, status, attempts, output, error, started_at, finished_at FROM run_steps
         WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 ORDER BY idx",
    )?;
    let mut rows = st.query(params![t, w, run])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(read_step(r)?);
    }
    Ok(out)
}

/// One run of a workspace; `NotFound` when there is none.
fn run_in(c: &Connection, t: &str, w: &str, rid: &str) -> Result<RunRecord, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLS} FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3"
    );
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(params![t, w, rid])?;
    match rows.next()? {
        Some(r) => Ok(read_run(r)?.0),
        None => Err(StoreError::NotFound),
    }
}

/// The checkpoints a resumed run needs: a loop item's record without its output (a loop that
/// collects reads them in pages), and nested steps only of items not finished yet, so resuming
/// a 100,000-item loop does not load 100,000 outputs.
fn resume_steps_of(
    c: &Connection,
    t: &str,
    w: &str,
    run: &str,
) -> Result<Vec<StepRecord>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT s.step_id, s.idx, s.status, s.attempts,
                CASE WHEN s.step_id LIKE '%]' THEN NULL ELSE s.output END,
                s.error, s.started_at, s.finished_at
         FROM run_steps s
         WHERE s.tenant_id = ?1 AND s.workspace_id = ?2 AND s.run_id = ?3
           AND NOT (instr(s.step_id, '].') > 0 AND EXISTS (
               SELECT 1 FROM run_steps i
               WHERE i.tenant_id = s.tenant_id AND i.workspace_id = s.workspace_id
                 AND i.run_id = s.run_id
                 AND i.step_id = substr(s.step_id, 1, instr(s.step_id, '].'))
                 AND i.status IN ('succeeded', 'failed')))
         ORDER BY s.idx",
    )?;
    let mut rows = st.query(params![t, w, run])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(read_step(r)?);
    }
    Ok(out)
}

pub(super) fn insert_logs(
    c: &Connection,
    t: &str,
    w: &str,
    run: &str,
    now: Millis,
    logs: &[NewLog],
) -> Result<(), StoreError> {
    if logs.is_empty() {
        return Ok(());
    }
    // Up to LOG_ROWS lines per statement: each statement costs a run of the VDBE, a reset and
    // a statement journal, more than the row it adds.
    for chunk in logs.chunks(LOG_ROWS) {
        let mut st = c.prepare_cached(insert_logs_sql(chunk.len()))?;
        let mut i = 1;
        for l in chunk {
            let ts = l.at.unwrap_or(now);
            let values: [&dyn rusqlite::ToSql; 8] = [
                &t,
                &w,
                &run,
                &ts,
                &l.level,
                &l.step_id,
                &l.message,
                &l.event.as_str(),
            ];
            for v in values {
                st.raw_bind_parameter(i, v)?;
                i += 1;
            }
        }
        st.raw_execute()?;
    }
    Ok(())
}

/// Most log lines inserted by one statement.
const LOG_ROWS: usize = 8;

/// `INSERT INTO run_logs` of `n` rows (1 ≤ n ≤ [`LOG_ROWS`]), built once per size.
fn insert_logs_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (1..=LOG_ROWS)
            .map(|n| {
                let rows: Vec<String> = (0..n)
                    .map(|r| {
                        let b = r * 8;
                        format!(
                            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4,
                            b + 5,
                            b + 6,
                            b + 7,
                            b + 8
                        )
                    })
                    .collect();
                format!(
                    "INSERT INTO run_logs (tenant_id, workspace_id, run_id, ts, level, step_id, message, event) VALUES {}",
                    rows.join(", ")
                )
            })
            .collect()
    });
    &all[n.clamp(1, LOG_ROWS) - 1]
}

/// The columns a [`LogRecord`] is read from, in [`log_record`]'s order, for table alias `l`.
const LOG_COLS: &str = "l.seq, l.ts, l.level, l.step_id, l.message, l.event";

/// A log line from a row that starts with [`LOG_COLS`].
fn log_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRecord> {
    Ok(LogRecord {
        seq: r.get(0)?,
        ts: r.get(1)?,
        level: r.get(2)?,
        step_id: r.get(3)?,
        message: r.get(4)?,
        event: r.get(5)?,
    })
}

pub(super) fn insert_run_tx(
    c: &Connection,
    r: &NewRun,
    trigger: &str,
) -> Result<Inserted, StoreError> {
    let (t, w) = scope_strs(&r.scope);
    let flow = r.flow_id.to_string();
    if let Some(key) = &r.dedupe_key {
        let existing: Option<(String, Millis)> = c
            .prepare_cached(
                "SELECT id, created_at FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND dedupe_key = ?4",
            )?
            .query_row(params![t, w, flow, key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if let Some((id, created)) = existing {
            if r.now - created < r.dedupe_window_ms {
                return Ok(Inserted {
                    run_id: parse(id, "run id")?,
                    duplicate: true,
                });
            }
            // Outside the window: the old run keeps its data but gives up the key.
            c.prepare_cached("UPDATE runs SET dedupe_key = NULL WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3")?
                .execute(params![t, w, id])?;
        }
    }
    charge_run(
        c,
        &t,
        crate::payloads::charged_len(&r.trigger, trigger.len()),
        r.now,
    )?;
    if let Some(actor) = &r.audit {
        append(
            c,
            &t,
            r.now,
            &Audit {
                actor: actor.clone(),
                action: "run.start",
                object_kind: "run",
                object_id: r.id.to_string(),
                workspace: Some(r.scope.workspace),
                detail: json!({"flow": r.flow_name, "flow_version": r.flow_version}),
            },
        )?;
    }
    c.prepare_cached(
        "INSERT INTO runs (tenant_id, workspace_id, id, flow_id, flow_name, flow_version, status, trigger, dedupe_key, not_before, created_at, parent_run, traceparent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?9, ?9, ?10, ?11)",
    )?
    .execute(params![t, w, r.id.to_string(), flow, r.flow_name, r.flow_version, trigger, r.dedupe_key, r.now, r.parent.map(|p| p.to_string()), r.traceparent])?;
    Ok(Inserted {
        run_id: r.id,
        duplicate: false,
    })
}

/// The bytes a run's step outputs are charged: an offloaded output's recorded size, else its
/// JSON text (see `crate::payloads`).
pub(super) const STEP_BYTES: &str = "SELECT COALESCE(SUM(COALESCE(json_extract(output, '$.\"$weft_payload\".blob.size'), LENGTH(output))), 0)
     FROM run_steps WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3";

/// Counts a new run against the tenant's monthly and storage limits, or refuses it.
fn charge_run(c: &Connection, tenant: &str, bytes: i64, now: Millis) -> Result<(), StoreError> {
    let (runs_limit, bytes_limit): (Option<i64>, Option<i64>) = c
        .prepare_cached("SELECT max_runs_per_month, max_stored_bytes FROM tenants WHERE id = ?1")?
        .query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let month = crate::quota::month_of(now);
    if runs_limit.is_some() || bytes_limit.is_some() {
        let (m, runs, stored): (String, i64, i64) = c
            .prepare_cached(
                "SELECT month, runs_in_month, stored_bytes FROM tenant_usage WHERE tenant_id = ?1",
            )?
            .query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .unwrap_or_default();
        let runs = if m == month { runs } else { 0 };
        if let Some(limit) = runs_limit
            && runs >= limit
        {
            return Err(crate::quota::runs_exceeded(runs, now));
        }
        if let Some(limit) = bytes_limit
            && stored + bytes > limit
        {
            return Err(crate::quota::bytes_exceeded(stored, limit));
        }
    }
    c.prepare_cached(
        "INSERT INTO tenant_usage (tenant_id, month, runs_in_month, stored_bytes) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT (tenant_id) DO UPDATE SET runs_in_month = CASE WHEN month = ?2 THEN runs_in_month + 1 ELSE 1 END, month = ?2, stored_bytes = stored_bytes + ?3",
    )?
    .execute(params![tenant, month, bytes])?;
    Ok(())
}

/// Adds stored bytes (a finished run's step and run outputs) to the tenant's usage; never refuses
/// (the work is done).
fn charge_bytes(c: &Connection, tenant: &str, bytes: i64) -> Result<(), StoreError> {
    if bytes > 0 {
        c.prepare_cached(
            "UPDATE tenant_usage SET stored_bytes = stored_bytes + ?2 WHERE tenant_id = ?1",
        )?
        .execute(params![tenant, bytes])?;
    }
    Ok(())
}

/// Refuses to publish a flow (not yet active) when the tenant is at its active-flow limit.
fn check_active_flows(c: &Connection, tenant: &str, w: &str, flow: &str) -> Result<(), StoreError> {
    let limit: Option<i64> = c
        .prepare_cached("SELECT max_active_flows FROM tenants WHERE id = ?1")?
        .query_row([tenant], |r| r.get(0))?;
    let Some(limit) = limit else { return Ok(()) };
    let (active, this): (i64, i64) = c
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(workspace_id = ?2 AND id = ?3), 0) FROM flows WHERE tenant_id = ?1 AND published_version IS NOT NULL",
        )?
        .query_row(params![tenant, w, flow], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if this == 0 && active >= limit {
        return Err(crate::quota::flows_exceeded(active));
    }
    Ok(())
}

/// Claims up to `limit` ready runs, shared across tenants by [`crate::fair::shares`]: each
/// tenant's running count, weight and concurrency cap decide its slots.
fn claim_fair(
    c: &Connection,
    owner: &str,
    now: Millis,
    lease_ms: Millis,
    limit: usize,
) -> Result<Vec<RawRun>, StoreError> {
    // Distinct tenants with queued work, by skip-scan over the partial index (one probe per tenant,
    // however deep each tenant's queue is).
    let mut st = c.prepare_cached(
        "WITH RECURSIVE t(id) AS (
           SELECT MIN(tenant_id) FROM runs WHERE status = 'queued'
           UNION ALL
           SELECT (SELECT MIN(tenant_id) FROM runs WHERE status = 'queued' AND tenant_id > t.id) FROM t WHERE t.id IS NOT NULL)
         SELECT t.id, tn.weight, tn.max_concurrent_runs FROM t JOIN tenants tn ON tn.id = t.id WHERE t.id IS NOT NULL",
    )?;
    let found: Vec<(String, i64, Option<i64>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    drop(st);
    let mut tenants = Vec::new();
    let mut demands = Vec::new();
    if let [(only, _, None)] = found.as_slice() {
        // One tenant with work and no cap: it gets every slot; nothing to count.
        tenants.push(only.clone());
        demands.push(crate::fair::Demand {
            running: 0,
            ready: limit as i64,
            weight: 1,
            cap: None,
        });
    } else {
        let mut counts = c.prepare_cached(
            "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE status = 'queued' AND tenant_id = ?1 AND not_before <= ?2 LIMIT ?3)),
                    (SELECT COUNT(*) FROM runs WHERE status = 'running' AND tenant_id = ?1)",
        )?;
        for (tenant, weight, cap) in found {
            let (ready, running): (i64, i64) = counts
                .query_row(params![tenant, now, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            if ready == 0 {
                continue;
            }
            tenants.push(tenant);
            demands.push(crate::fair::Demand {
                running,
                ready,
                weight,
                cap,
            });
        }
    }
    let shares = crate::fair::shares(&demands, limit);
    let mut claim = c.prepare_cached(&format!(
        "UPDATE runs SET status = 'running', lease_owner = ?1, lease_expires = ?2, claims = claims + 1, started_at = COALESCE(started_at, ?3)
         WHERE rowid IN (SELECT rowid FROM runs WHERE status = 'queued' AND tenant_id = ?5 AND not_before <= ?3 ORDER BY not_before, id LIMIT ?4)
         RETURNING {RUN_COLS}"
    ))?;
    let mut claimed = Vec::new();
    for (tenant, n) in tenants.iter().zip(shares) {
        if n == 0 {
            continue;
        }
        let mut rows = claim.query(params![owner, now + lease_ms, now, n as i64, tenant])?;
        while let Some(r) = rows.next()? {
            claimed.push(read_run_raw(r)?);
        }
    }
    Ok(claimed)
}

fn flow_audit(
    actor: Actor,
    action: &'static str,
    scope: &Scope,
    flow: &str,
    detail: Value,
) -> Audit {
    Audit {
        actor,
        action,
        object_kind: "flow",
        object_id: flow.to_string(),
        workspace: Some(scope.workspace),
        detail,
    }
}

impl SqliteStore {
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
        let name = name.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let existing: Option<(String, i64)> = c
                .prepare_cached("SELECT id, latest_version FROM flows WHERE tenant_id = ?1 AND workspace_id = ?2 AND name = ?3")?
                .query_row(params![t, w, name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if publish {
                let id = existing.as_ref().map(|e| e.0.as_str()).unwrap_or("");
                check_active_flows(c, &t, &w, id)?;
            }
            let created = existing.is_none();
            let (id, version) = match existing {
                Some((id, v)) => {
                    c.execute(
                        "UPDATE flows SET latest_version = ?4, updated_at = ?5, published_version = CASE WHEN ?6 THEN ?4 ELSE published_version END
                         WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                        params![t, w, id, v + 1, now, publish],
                    )?;
                    (id, v + 1)
                }
                None => {
                    let id = FlowId::new().to_string();
                    c.execute(
                        "INSERT INTO flows (tenant_id, workspace_id, id, name, hook_id, latest_version, published_version, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 1, CASE WHEN ?6 THEN 1 ELSE NULL END, ?7, ?7)",
                        params![t, w, id, name, HookId::new().to_string(), publish, now],
                    )?;
                    (id, 1)
                }
            };
            c.execute(
                "INSERT INTO flow_versions (tenant_id, workspace_id, flow_id, version, definition, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t, w, id, version, to_json(&definition), now],
            )?;
            let action = if created { "flow.create" } else { "flow.update" };
            append(c, &t, now, &flow_audit(actor.clone(), action, &scope, &id, json!({"name": name, "version": version, "published": publish})))?;
            get_flow_tx(c, &scope, &id)
        })
        .await
    }

    /// A flow by id (`flw_…`) or by name.
    pub async fn get_flow(&self, scope: Scope, id_or_name: &str) -> Result<FlowRecord, StoreError> {
        let key = id_or_name.to_string();
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let sql = format!("SELECT {FLOW_COLS} FROM flows WHERE tenant_id = ?1 AND workspace_id = ?2 AND (id = ?3 OR name = ?3)");
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![t, w, key])?;
            match rows.next()? {
                Some(r) => read_flow(r),
                None => Err(StoreError::NotFound),
            }
        })
        .await
    }

    /// Flows of a workspace ordered by name, after the `after` name (cursor).
    pub async fn list_flows(
        &self,
        scope: Scope,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<FlowRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let sql = format!("SELECT {FLOW_COLS} FROM flows WHERE tenant_id = ?1 AND workspace_id = ?2 AND name > ?3 ORDER BY name LIMIT ?4");
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![t, w, after.unwrap_or_default(), limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read_flow(r)?);
            }
            Ok(out)
        })
        .await
    }

    /// One version of a flow.
    pub async fn flow_version(
        &self,
        scope: Scope,
        flow: FlowId,
        version: i64,
    ) -> Result<FlowVersion, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let (def, created_at): (String, Millis) = c
                .prepare_cached("SELECT definition, created_at FROM flow_versions WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND version = ?4")?
                .query_row(params![t, w, flow.to_string(), version], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(FlowVersion { version, definition: json(Some(def))?.unwrap_or(Value::Null), created_at })
        })
        .await
    }

    /// Every version of a flow, newest first.
    pub async fn list_versions(
        &self,
        scope: Scope,
        flow: FlowId,
    ) -> Result<Vec<FlowVersion>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT version, definition, created_at FROM flow_versions WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 ORDER BY version DESC",
            )?;
            let mut rows = st.query(params![t, w, flow.to_string()])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(FlowVersion { version: r.get(0)?, definition: json(r.get(1)?)?.unwrap_or(Value::Null), created_at: r.get(2)? });
            }
            Ok(out)
        })
        .await
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
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let id = flow.to_string();
            let exists: Option<i64> = c
                .prepare_cached("SELECT version FROM flow_versions WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND version = ?4")?
                .query_row(params![t, w, id, version], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound);
            }
            check_active_flows(c, &t, &w, &id)?;
            c.execute(
                "UPDATE flows SET published_version = ?4, updated_at = ?5 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                params![t, w, id, version, now],
            )?;
            append(c, &t, now, &flow_audit(actor.clone(), "flow.publish", &scope, &id, json!({"version": version})))?;
            get_flow_tx(c, &scope, &id)
        })
        .await
    }

    /// Deletes a flow, its versions and its schedule (runs stay in history).
    pub async fn delete_flow(
        &self,
        scope: Scope,
        flow: FlowId,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let id = flow.to_string();
            c.execute("DELETE FROM schedules WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3", params![t, w, id])?;
            c.execute("DELETE FROM polls WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3", params![t, w, id])?;
            c.execute("DELETE FROM poll_seen WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3", params![t, w, id])?;
            c.execute("DELETE FROM flow_versions WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3", params![t, w, id])?;
            let n = c.execute("DELETE FROM flows WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3", params![t, w, id])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            append(c, &t, now, &flow_audit(actor.clone(), "flow.delete", &scope, &id, json!({})))
        })
        .await
    }

    /// System: where an (unguessable) hook id leads.
    pub async fn lookup_hook(&self, hook: HookId) -> Result<Option<HookTarget>, StoreError> {
        self.read(move |c| {
            c.prepare_cached("SELECT tenant_id, workspace_id, id, name, published_version FROM flows WHERE hook_id = ?1")?
                .query_row([hook.to_string()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get(4)?))
                })
                .optional()?
                .map(|(t, w, f, name, published_version)| {
                    Ok(HookTarget {
                        scope: Scope { tenant: parse(t, "tenant id")?, workspace: parse(w, "workspace id")? },
                        flow_id: parse(f, "flow id")?,
                        flow_name: name,
                        published_version,
                    })
                })
                .transpose()
        })
        .await
    }

    // ---- schedules ----------------------------------------------------------------------

    /// Sets (or with `None`, removes) a flow's next schedule tick.
    pub async fn set_schedule(
        &self,
        scope: Scope,
        flow: FlowId,
        next_tick: Option<Millis>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            match next_tick {
                Some(at) => c.execute(
                    "INSERT INTO schedules (tenant_id, workspace_id, flow_id, next_tick_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tenant_id, workspace_id, flow_id) DO UPDATE SET next_tick_at = excluded.next_tick_at",
                    params![t, w, flow.to_string(), at],
                )?,
                None => c.execute("DELETE FROM schedules WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3", params![t, w, flow.to_string()])?,
            };
            Ok(())
        })
        .await
    }

    /// System: schedules whose tick is at or before `now`.
    pub async fn due_schedules(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<DueSchedule>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT tenant_id, workspace_id, flow_id, next_tick_at FROM schedules WHERE next_tick_at <= ?1 ORDER BY next_tick_at LIMIT ?2")?;
            let mut rows = st.query(params![now, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(DueSchedule {
                    scope: Scope { tenant: parse(r.get(0)?, "tenant id")?, workspace: parse(r.get(1)?, "workspace id")? },
                    flow_id: parse(r.get(2)?, "flow id")?,
                    tick_at: r.get(3)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// System: the earliest pending schedule tick.
    pub async fn next_schedule_at(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|c| Ok(c.query_row("SELECT MIN(next_tick_at) FROM schedules", [], |r| r.get(0))?))
            .await
    }

    /// Starts the run of a due tick (deduplicated on the tick) and moves the schedule to `next_tick`,
    /// in one transaction, only if the schedule still points at `tick_at` (another process may have fired it).
    pub async fn fire_schedule(
        &self,
        run: NewRun,
        tick_at: Millis,
        next_tick: Option<Millis>,
    ) -> Result<Option<Inserted>, StoreError> {
        let trigger = to_json(&run.trigger);
        self.write(move |c| {
            let (t, w) = scope_strs(&run.scope);
            let flow = run.flow_id.to_string();
            let n = match next_tick {
                Some(next) => c.execute(
                    "UPDATE schedules SET next_tick_at = ?5 WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND next_tick_at = ?4",
                    params![t, w, flow, tick_at, next],
                )?,
                None => c.execute(
                    "DELETE FROM schedules WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND next_tick_at = ?4",
                    params![t, w, flow, tick_at],
                )?,
            };
            if n == 0 {
                return Ok(None);
            }
            insert_run_tx(c, &run, &trigger).map(Some)
        })
        .await
    }

    // ---- runs -----------------------------------------------------------------------------

    /// Durably inserts a queued run, or reports the run that already holds its dedupe key.
    pub async fn insert_run(&self, run: NewRun) -> Result<Inserted, StoreError> {
        let trigger = to_json(&run.trigger);
        self.write(move |c| insert_run_tx(c, &run, &trigger)).await
    }

    /// System: claims up to `limit` ready runs for `owner` with a lease until `now + lease_ms`.
    pub async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: Millis,
        limit: usize,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let owner = owner.to_string();
        let raw = self
            .write(move |c| {
                let claimed = claim_fair(c, &owner, now, lease_ms, limit)?;
                let mut out = Vec::with_capacity(claimed.len());
                for run in claimed {
                    // Only a resumed run can have checkpoints; skip the lookup on the hot path.
                    let steps = if run.claims > 1 {
                        let (t, w) = scope_strs(&run.rec.scope);
                        resume_steps_of(c, &t, &w, &run.rec.id.to_string())?
                    } else {
                        Vec::new()
                    };
                    out.push((run, steps));
                }
                Ok(out)
            })
            .await?;
        // JSON is parsed here, off the writer thread.
        let mut out = Vec::with_capacity(raw.len());
        for (run, steps) in raw {
            out.push(ClaimedRun {
                run: run.parse()?.0,
                steps,
            });
        }
        out.sort_by_key(|c| c.run.id);
        Ok(out)
    }

    /// System: extends the leases of every run `owner` is running.
    pub async fn renew_leases(&self, owner: &str, until: Millis) -> Result<usize, StoreError> {
        let owner = owner.to_string();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE runs SET lease_expires = ?2 WHERE status = 'running' AND lease_owner = ?1",
                params![owner, until],
            )?)
        })
        .await
    }

    /// System: returns runs whose lease expired (their worker died) to the queue.
    pub async fn reclaim_expired(&self, now: Millis) -> Result<usize, StoreError> {
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires = NULL WHERE status = 'running' AND lease_expires < ?1",
                [now],
            )?)
        })
        .await
    }

    /// System: returns every running run not owned by `owner` to the queue (embedded mode at start:
    /// the data-dir lock proves no other process is alive).
    pub async fn reclaim_all_except(&self, owner: &str) -> Result<usize, StoreError> {
        let owner = owner.to_string();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires = NULL WHERE status = 'running' AND lease_owner IS NOT ?1",
                [owner.clone()],
            )?)
        })
        .await
    }

    /// Hands `owner`'s running runs back to the queue (graceful shutdown).
    pub async fn release_leases(&self, owner: &str) -> Result<usize, StoreError> {
        let owner = owner.to_string();
        self.write(move |c| {
            Ok(c.execute("UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires = NULL WHERE status = 'running' AND lease_owner = ?1", [owner.clone()])?)
        })
        .await
    }

    /// Hands one run `owner` holds back to the queue, ready again at `not_before`; false when it
    /// does not hold it.
    pub async fn release_run(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        not_before: Millis,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let n = c.prepare_cached(
                "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires = NULL, not_before = ?5
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND status = 'running' AND lease_owner = ?4",
            )?
            .execute(params![t, w, run.to_string(), owner, not_before])?;
            Ok(n > 0)
        })
        .await
    }

    /// Checkpoints a step of a run `owner` holds; false (nothing written) when it no longer holds it.
    pub async fn checkpoint_step(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        cp: StepCheckpoint,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.checkpoint_steps(scope, run, owner, vec![cp], now)
            .await
    }

    /// Finishes a run `owner` holds, waking its parent if that waits; false when it is no longer
    /// held (e.g. cancelled meanwhile).
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        logs: Vec<NewLog>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.finish_run_with(
            scope,
            run,
            owner,
            Vec::new(),
            status,
            output,
            error,
            logs,
            now,
        )
        .await
    }

    /// Checkpoints steps of a run `owner` holds, in order. Returns false (and writes nothing) when
    /// the run is no longer running under this owner (cancelled, or reclaimed after a lost lease).
    pub async fn checkpoint_steps(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        cps: Vec<StepCheckpoint>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let held = c
                .prepare_cached(
                    "SELECT 1 FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND status = 'running' AND lease_owner = ?4",
                )?
                .exists(params![t, w, rid, owner])?;
            if !held {
                return Ok(false);
            }
            write_steps(c, &t, &w, &rid, now, &cps)?;
            Ok(true)
        })
        .await
    }

    /// [`SqliteStore::finish_run`] after checkpointing `steps` in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run_with(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        steps: Vec<StepCheckpoint>,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        logs: Vec<NewLog>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        let output_bytes = output
            .as_ref()
            .map_or(0, |o| crate::payloads::charged_len(o, to_json(o).len()));
        let output = output.as_ref().map(to_json);
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let finished: Option<Option<String>> = c
                .prepare_cached(
                    "UPDATE runs SET status = ?5, output = ?6, error = ?7, finished_at = ?8, lease_owner = NULL, lease_expires = NULL
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND status = 'running' AND lease_owner = ?4
                     RETURNING parent_run",
                )?
                .query_row(params![t, w, rid, owner, status.as_str(), output, error, now], |r| r.get(0))
                .optional()?;
            let Some(parent) = finished else {
                return Ok(false);
            };
            // The steps that ended with the run, before their bytes are counted.
            write_steps(c, &t, &w, &rid, now, &steps)?;
            // A sub-flow's end wakes the run waiting for it, in the same transaction.
            if let Some(parent) = parent {
                super::waits::wake_if_waiting(c, &t, &w, &parent, now)?;
            }
            // Stored data is charged once per run, when it ends: one write instead of one per step.
            let steps: i64 = c
                .prepare_cached(STEP_BYTES)?
                .query_row(params![t, w, rid], |r| r.get(0))?;
            charge_bytes(c, &t, steps + output_bytes)?;
            insert_logs(c, &t, &w, &rid, now, &logs)?;
            Ok(true)
        })
        .await
    }

    /// Cancels a run that has not finished, and every unfinished run below it (sub-flows, theirs,
    /// …); wakes its parent if that waits. Returns its status afterwards.
    pub async fn cancel_run(
        &self,
        scope: Scope,
        run: RunId,
        actor: Actor,
        now: Millis,
    ) -> Result<RunStatus, StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let status: String = c
                .prepare_cached("SELECT status FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3")?
                .query_row(params![t, w, rid], |r| r.get(0))?;
            let status = RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?;
            if status.is_terminal() {
                return Ok(status);
            }
            let parent: Option<String> = c.query_row(
                "UPDATE runs SET status = 'cancelled', finished_at = ?4, error = 'cancelled on request', lease_owner = NULL, lease_expires = NULL
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 RETURNING parent_run",
                params![t, w, rid, now],
                |r| r.get(0),
            )?;
            insert_logs(c, &t, &w, &rid, now, &[NewLog::new("warn", None, RunEvent::RunCancelled, "run cancelled on request")])?;
            super::waits::cancel_open_steps(c, &t, &w, &rid, now)?;
            let descendants = super::waits::cancel_descendants(c, &t, &w, &rid, now)?;
            if let Some(parent) = parent {
                super::waits::wake_if_waiting(c, &t, &w, &parent, now)?;
            }
            let mut detail = json!({"previous_status": status.as_str()});
            if descendants > 0 {
                detail["cancelled_descendants"] = json!(descendants);
            }
            append(c, &t, now, &Audit {
                actor: actor.clone(), action: "run.cancel", object_kind: "run", object_id: rid.clone(),
                workspace: Some(scope.workspace), detail,
            })?;
            Ok(RunStatus::Cancelled)
        })
        .await
    }

    /// Deletes a finished run with its steps, logs, signals and event watches and gives its
    /// stored bytes back to the tenant; a queued or running run must be cancelled first.
    pub async fn delete_run(
        &self,
        scope: Scope,
        run: RunId,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let (status, bytes): (String, i64) = c
                .prepare_cached(
                    "SELECT status, COALESCE(json_extract(trigger, '$.\"$weft_payload\".blob.size'), LENGTH(trigger))
                            + CASE WHEN status = 'cancelled' THEN 0 ELSE
                                COALESCE(json_extract(output, '$.\"$weft_payload\".blob.size'), LENGTH(output), 0)
                                + (SELECT COALESCE(SUM(COALESCE(json_extract(s.output, '$.\"$weft_payload\".blob.size'), LENGTH(s.output))), 0)
                                   FROM run_steps s WHERE s.tenant_id = ?1 AND s.workspace_id = ?2 AND s.run_id = ?3) END
                     FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                )?
                .query_row(params![t, w, rid], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let status = RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?;
            if !status.is_terminal() {
                return Err(crate::run_not_finished(run, status));
            }
            for sql in [
                "DELETE FROM run_logs WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3",
                "DELETE FROM run_steps WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3",
                "DELETE FROM run_signals WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3",
                "DELETE FROM event_watches WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3",
                "DELETE FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
            ] {
                c.prepare_cached(sql)?.execute(params![t, w, rid])?;
            }
            c.prepare_cached("UPDATE tenant_usage SET stored_bytes = MAX(0, stored_bytes - ?2) WHERE tenant_id = ?1")?
                .execute(params![t, bytes])?;
            append(c, &t, now, &Audit {
                actor: actor.clone(), action: "run.delete", object_kind: "run", object_id: rid,
                workspace: Some(scope.workspace), detail: json!({"status": status.as_str(), "stored_bytes": bytes}),
            })?;
            Ok(())
        })
        .await
    }

    /// Appends log lines to a run.
    pub async fn append_logs(
        &self,
        scope: Scope,
        run: RunId,
        logs: Vec<NewLog>,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            insert_logs(c, &t, &w, &run.to_string(), now, &logs)
        })
        .await
    }

    /// The records of some steps of a run, by step id (ids with no record are left out).
    pub async fn get_steps(
        &self,
        scope: Scope,
        run: RunId,
        ids: &[String],
    ) -> Result<Vec<StepRecord>, StoreError> {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT step_id, idx, status, attempts, output, error, started_at, finished_at FROM run_steps
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3
                   AND step_id IN (SELECT value FROM json_each(?4))",
            )?;
            let mut rows = st.query(params![t, w, run.to_string(), ids])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read_step(r)?);
            }
            Ok(out)
        })
        .await
    }

    /// A run with its steps.
    pub async fn get_run(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<(RunRecord, Vec<StepRecord>), StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let run = run_in(c, &t, &w, &rid)?;
            let steps = steps_of(c, &t, &w, &rid)?;
            Ok((run, steps))
        })
        .await
    }

    /// A run with its top-level steps and, per loop, how many items finished: what a person
    /// looks at, without reading a large loop's item checkpoints.
    pub async fn get_run_summary(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<(RunRecord, Vec<StepRecord>, Vec<LoopCount>), StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let run = run_in(c, &t, &w, &rid)?;
            let mut st = c.prepare_cached(
                "SELECT step_id, idx, status, attempts, output, error, started_at, finished_at FROM run_steps
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 AND instr(step_id, '[') = 0
                 ORDER BY idx",
            )?;
            let mut rows = st.query(params![t, w, rid])?;
            let mut steps = Vec::new();
            while let Some(r) = rows.next()? {
                steps.push(read_step(r)?);
            }
            let mut st = c.prepare_cached(
                "SELECT substr(step_id, 1, instr(step_id, '[') - 1) AS loop_id, count(*),
                        sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END)
                 FROM run_steps
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3
                   AND step_id LIKE '%]' AND instr(step_id, '].') = 0
                   AND status IN ('succeeded', 'failed')
                 GROUP BY loop_id",
            )?;
            let counts = st
                .query_map(params![t, w, rid], |r| {
                    Ok(LoopCount {
                        step_id: r.get(0)?,
                        done: r.get(1)?,
                        failed: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((run, steps, counts))
        })
        .await
    }

    /// Runs of a workspace, newest first, filtered.
    pub async fn list_runs(
        &self,
        scope: Scope,
        f: RunFilter,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let sql = format!(
                "SELECT {RUN_COLS} FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2
                 AND (?3 IS NULL OR flow_id = ?3) AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR created_at >= ?5)
                 AND (?6 IS NULL OR id < ?6) ORDER BY id DESC LIMIT ?7"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![
                t,
                w,
                f.flow_id.map(|x| x.to_string()),
                f.status.map(|s| s.as_str()),
                f.since,
                f.before.map(|x| x.to_string()),
                f.limit as i64
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read_run(r)?.0);
            }
            Ok(out)
        })
        .await
    }

    /// Log lines of a run after sequence `after`.
    pub async fn run_logs(
        &self,
        scope: Scope,
        run: RunId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(&format!(
                "SELECT {LOG_COLS} FROM run_logs l WHERE l.tenant_id = ?1 AND l.workspace_id = ?2 AND l.run_id = ?3 AND l.seq > ?4 ORDER BY l.seq LIMIT ?5"
            ))?;
            let mut rows = st.query(params![t, w, run.to_string(), after, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(log_record(r)?);
            }
            Ok(out)
        })
        .await
    }

    /// Log lines of every run of a workspace after seq `after`, oldest first (the live feed).
    pub async fn workspace_logs(
        &self,
        scope: Scope,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogHit>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(&format!(
                "SELECT {LOG_COLS}, l.run_id, r.flow_name
                 FROM run_logs l
                 JOIN runs r ON r.tenant_id = l.tenant_id AND r.workspace_id = l.workspace_id AND r.id = l.run_id
                 WHERE l.tenant_id = ?1 AND l.workspace_id = ?2 AND l.seq > ?3
                 ORDER BY l.seq LIMIT ?4"
            ))?;
            let mut rows = st.query(params![t, w, after, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(LogHit {
                    line: log_record(r)?,
                    run_id: parse(r.get(6)?, "run id")?,
                    flow: r.get(7)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Log lines of a workspace matching `q`, newest first.
    pub async fn search_logs(&self, scope: Scope, q: LogQuery) -> Result<Vec<LogHit>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(&format!(
                "SELECT {LOG_COLS}, l.run_id, r.flow_name
                 FROM run_logs l
                 JOIN runs r ON r.tenant_id = l.tenant_id AND r.workspace_id = l.workspace_id AND r.id = l.run_id
                 WHERE l.tenant_id = ?1 AND l.workspace_id = ?2
                   AND (?3 IS NULL OR l.run_id = ?3)
                   AND (?4 IS NULL OR r.flow_id = ?4)
                   AND (?5 IS NULL OR l.step_id = ?5 OR substr(l.step_id, 1, length(?5) + 1) = ?5 || '[')
                   AND (?6 IS NULL OR l.level = ?6)
                   AND (?7 IS NULL OR r.status = ?7)
                   AND (?8 IS NULL OR l.ts >= ?8)
                   AND (?9 IS NULL OR l.ts < ?9)
                   AND (?10 IS NULL OR instr(lower(l.message), lower(?10)) > 0)
                   AND (?11 IS NULL OR l.seq < ?11)
                   AND (?13 IS NULL OR l.event = ?13)
                 ORDER BY l.seq DESC LIMIT ?12"
            ))?;
            let mut rows = st.query(params![
                t,
                w,
                q.run.map(|r| r.to_string()),
                q.flow_id.map(|f| f.to_string()),
                q.step,
                q.level,
                q.status.map(|s| s.as_str()),
                q.since,
                q.until,
                q.text,
                q.before,
                q.limit as i64,
                q.event.map(|e| e.as_str())
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let run: String = r.get(6)?;
                out.push(LogHit {
                    line: log_record(r)?,
                    run_id: parse(run, "run id")?,
                    flow: r.get(7)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// System: runs queued or running since before `before`, oldest first.
    pub async fn stuck_runs(
        &self,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {RUN_COLS} FROM runs WHERE status IN ('queued', 'running')
                   AND COALESCE(started_at, created_at) < ?1
                 ORDER BY COALESCE(started_at, created_at), id LIMIT ?2"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![before, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read_run(r)?.0);
            }
            Ok(out)
        })
        .await
    }

    /// System: how many runs are in each status (for metrics, benchmarks and tests).
    pub async fn count_runs(&self) -> Result<Vec<(RunStatus, i64)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT status, COUNT(*) FROM runs GROUP BY status")?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let s: String = r.get(0)?;
                if let Some(s) = RunStatus::parse(&s) {
                    out.push((s, r.get(1)?));
                }
            }
            Ok(out)
        })
        .await
    }
}

fn get_flow_tx(c: &Connection, scope: &Scope, id: &str) -> Result<FlowRecord, StoreError> {
    let (t, w) = scope_strs(scope);
    let sql = format!(
        "SELECT {FLOW_COLS} FROM flows WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3"
    );
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(params![t, w, id])?;
    match rows.next()? {
        Some(r) => read_flow(r),
        None => Err(StoreError::NotFound),
    }
}

impl SqliteStore {
    /// System: the first tenant's `default` workspace (where `--flows` and the example flow go).
    pub async fn default_scope(&self) -> Result<Option<Scope>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT w.tenant_id, w.id FROM workspaces w JOIN tenants t ON t.id = w.tenant_id
                 WHERE w.slug = 'default' ORDER BY t.created_at, t.id LIMIT 1",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(t, w)| {
                Ok(Scope {
                    tenant: parse(t, "tenant id")?,
                    workspace: parse(w, "workspace id")?,
                })
            })
            .transpose()
        })
        .await
    }
}

impl SqliteStore {
    /// The database's journal mode (`wal`), for checks.
    pub async fn journal_mode(&self) -> Result<String, StoreError> {
        self.read(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .await
    }
}

/// Writes step checkpoints of a held run (the caller checked the lease), then their lines in
/// order.
fn write_steps(
    c: &Connection,
    t: &str,
    w: &str,
    rid: &str,
    now: Millis,
    cps: &[StepCheckpoint],
) -> Result<(), StoreError> {
    let mut st = c.prepare_cached(
        "INSERT INTO run_steps (tenant_id, workspace_id, run_id, step_id, idx, status, attempts, output, error, started_at, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (tenant_id, workspace_id, run_id, step_id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
           output = excluded.output, error = excluded.error, started_at = COALESCE(run_steps.started_at, excluded.started_at), finished_at = excluded.finished_at",
    )?;
    for cp in cps {
        let s = &cp.step;
        let output = s.output.as_ref().map(to_json);
        st.execute(params![
            t,
            w,
            rid,
            s.step_id,
            s.idx,
            s.status.as_str(),
            s.attempts,
            output,
            s.error,
            s.started_at,
            s.finished_at
        ])?;
    }
    for cp in cps {
        insert_logs(c, t, w, rid, now, &cp.logs)?;
    }
    Ok(())
}
