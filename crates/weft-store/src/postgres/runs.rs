//! PostgreSQL: runs, their steps and logs, claims and leases (mirrors `sqlite/ops.rs`; the
//! conformance suite checks they agree). Claims use `FOR UPDATE SKIP LOCKED`, so workers in
//! many processes take disjoint runs, with the same weighted-fair shares as SQLite.
//!
//! The queue is `run_queue` (a row per queued or running run, with its lease), not `runs`:
//! see migration 0002 for why. Locks are always taken queue row first, then run row.

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use weft_types::{Millis, RunId, RunStatus, Scope, StepStatus};

use super::PgStore;
use super::store::{Tx, append, db, parse};
use super::{pg_json, pg_text};
use crate::*;

pub(super) const RUN_COLS: &str = "tenant_id, workspace_id, id, flow_id, flow_name, flow_version, status, trigger::text, output::text, error, created_at, started_at, finished_at, claims, parent_run, traceparent";

/// Binds a [`JobLogs`]'s eight arrays to a query, in the order [`JobLogs::insert_sql`] reads
/// them (after the statement's other parameters).
macro_rules! bind_logs {
    ($q:expr, $l:expr) => {{
        let l = $l;
        $q.bind(l.ord)
            .bind(l.lo)
            .bind(l.hi)
            .bind(l.ts)
            .bind(l.level)
            .bind(l.step)
            .bind(l.message)
            .bind(l.event)
    }};
}

/// [`RUN_COLS`] of `runs r` in a statement that joins other tables.
const R_RUN_COLS: &str = "r.tenant_id, r.workspace_id, r.id, r.flow_id, r.flow_name, r.flow_version, r.status, r.trigger::text, r.output::text, r.error, r.created_at, r.started_at, r.finished_at, r.claims, r.parent_run, r.traceparent";

/// Puts the runs leaving `run_queue` in the CTE `back` (tenant_id, workspace_id, run_id) back
/// to `queued` in `runs`.
const REQUEUE_RUNS: &str = "UPDATE runs r SET status = 'queued' FROM back b
     WHERE r.tenant_id = b.tenant_id AND r.workspace_id = b.workspace_id AND r.id = b.run_id";

fn json_opt(s: Option<String>) -> Result<Option<Value>, StoreError> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
    })
    .transpose()
}

pub(super) fn read_run(r: &PgRow) -> Result<(RunRecord, i64), StoreError> {
    let status: String = r.try_get(6).map_err(db)?;
    let parent: Option<String> = r.try_get(14).map_err(db)?;
    Ok((
        RunRecord {
            scope: Scope {
                tenant: parse(r.try_get(0).map_err(db)?, "tenant id")?,
                workspace: parse(r.try_get(1).map_err(db)?, "workspace id")?,
            },
            id: parse(r.try_get(2).map_err(db)?, "run id")?,
            flow_id: parse(r.try_get(3).map_err(db)?, "flow id")?,
            flow_name: r.try_get(4).map_err(db)?,
            flow_version: r.try_get(5).map_err(db)?,
            status: RunStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?,
            trigger: json_opt(r.try_get(7).map_err(db)?)?.unwrap_or(Value::Null),
            output: json_opt(r.try_get(8).map_err(db)?)?,
            error: r.try_get(9).map_err(db)?,
            created_at: r.try_get(10).map_err(db)?,
            started_at: r.try_get(11).map_err(db)?,
            finished_at: r.try_get(12).map_err(db)?,
            parent: parent.map(|p| parse(p, "parent run id")).transpose()?,
            traceparent: r.try_get(15).map_err(db)?,
        },
        r.try_get(13).map_err(db)?,
    ))
}

async fn steps_of(tx: &mut Tx, t: &str, w: &str, run: &str) -> Result<Vec<StepRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT step_id, idx, status, attempts, output::text, error, started_at, finished_at FROM run_steps
         WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 ORDER BY idx",
    )
    .bind(t)
    .bind(w)
    .bind(run)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    rows.iter().map(read_step_row).collect()
}

/// One run of a workspace, in `tx`; `NotFound` when there is none.
async fn run_in(tx: &mut Tx, t: &str, w: &str, rid: &str) -> Result<RunRecord, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(t)
        .bind(w)
        .bind(rid)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
    Ok(read_run(&row)?.0)
}

/// A step record from `step_id, idx, status, attempts, output::text, error, started_at,
/// finished_at`.
fn read_step_row(r: &sqlx::postgres::PgRow) -> Result<StepRecord, StoreError> {
    let status: String = r.get(2);
    Ok(StepRecord {
        step_id: r.get(0),
        idx: r.get(1),
        status: StepStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("bad step status {status}")))?,
        attempts: r.get(3),
        output: json_opt(r.get(4))?,
        error: r.get(5),
        started_at: r.get(6),
        finished_at: r.get(7),
    })
}

/// The checkpoints a resumed run needs: a loop item's record without its output (a loop that
/// collects reads them in pages), and nested steps only of items not finished yet, so resuming
/// a 100,000-item loop does not load 100,000 outputs.
async fn resume_steps_of(
    tx: &mut Tx,
    t: &str,
    w: &str,
    run: &str,
) -> Result<Vec<StepRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.step_id, s.idx, s.status, s.attempts,
                CASE WHEN s.step_id LIKE '%]' THEN NULL ELSE s.output::text END,
                s.error, s.started_at, s.finished_at
         FROM run_steps s
         WHERE s.tenant_id = $1 AND s.workspace_id = $2 AND s.run_id = $3
           AND NOT (strpos(s.step_id, '].') > 0 AND EXISTS (
               SELECT 1 FROM run_steps i
               WHERE i.tenant_id = s.tenant_id AND i.workspace_id = s.workspace_id
                 AND i.run_id = s.run_id
                 AND i.step_id = substr(s.step_id, 1, strpos(s.step_id, '].'))
                 AND i.status IN ('succeeded', 'failed')))
         ORDER BY s.idx",
    )
    .bind(t)
    .bind(w)
    .bind(run)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    rows.iter().map(read_step_row).collect()
}

pub(super) async fn insert_logs(
    tx: &mut Tx,
    t: &str,
    w: &str,
    run: &str,
    now: Millis,
    logs: &[NewLog],
) -> Result<(), StoreError> {
    if logs.is_empty() {
        return Ok(());
    }
    // One statement for all lines, in order.
    let mut lines = JobLogs::default();
    lines.push(0, now, logs);
    let sql = format!(
        "WITH j AS (SELECT 1::bigint AS ord, $2::text AS workspace_id, $3::text AS run_id) {}",
        JobLogs::insert_sql("j", 4)
    );
    bind_logs!(
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(t)
            .bind(w)
            .bind(run),
        lines
    )
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Tenants' run and stored-byte limits as read earlier in the same transaction: a batch reads
/// each tenant's plan once, not once per insert.
pub(super) type PlanCache = std::collections::HashMap<String, (Option<i64>, Option<i64>)>;

/// A tenant's (runs per month, stored bytes) limits, read once per transaction.
pub(super) async fn plan_limits(
    tx: &mut Tx,
    t: &str,
    plans: &mut PlanCache,
) -> Result<(Option<i64>, Option<i64>), StoreError> {
    if let Some(l) = plans.get(t) {
        return Ok(*l);
    }
    let l: (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT max_runs_per_month, max_stored_bytes FROM tenants WHERE id = $1")
            .bind(t)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?;
    plans.insert(t.to_string(), l);
    Ok(l)
}

/// Inserts many queued runs of one tenant whose plan has no run or byte limit, none with a
/// delivery key, an audit entry or a parent run (the common webhook), with one statement; for
/// each, the result [`insert_run_tx`] would give.
pub(super) async fn insert_many_tx(
    tx: &mut Tx,
    tenant: &str,
    rows: &[(&NewRun, String)],
) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
    let n = rows.len();
    let mut ws = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut flows = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut triggers = Vec::with_capacity(n);
    let mut nows = Vec::with_capacity(n);
    let mut bytes = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    for (r, trigger) in rows {
        ws.push(r.scope.workspace.to_string());
        ids.push(r.id.to_string());
        flows.push(r.flow_id.to_string());
        names.push(r.flow_name.as_str());
        versions.push(r.flow_version);
        bytes.push(crate::payloads::charged_len(&r.trigger, trigger.len()));
        triggers.push(trigger.as_str());
        nows.push(r.now);
        traces.push(r.traceparent.as_deref());
    }
    let month = crate::quota::month_of(nows.iter().copied().max().unwrap_or(0));
    let inserted: Vec<String> = sqlx::query_scalar(
        "WITH inp AS (
           SELECT * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $11::text[])
             WITH ORDINALITY AS i(workspace_id, id, flow_id, flow_name, flow_version, trigger, now, bytes, traceparent, ord)),
         ins AS (
           INSERT INTO runs (tenant_id, workspace_id, id, flow_id, flow_name, flow_version, status, trigger, not_before, created_at, traceparent)
           SELECT $1, workspace_id, id, flow_id, flow_name, flow_version, 'queued', trigger::jsonb, now, now, traceparent FROM inp ORDER BY ord
           ON CONFLICT DO NOTHING
           RETURNING workspace_id, id, not_before),
         q AS (
           INSERT INTO run_queue (tenant_id, workspace_id, run_id, not_before)
           SELECT $1, workspace_id, id, not_before FROM ins
           RETURNING run_id),
         charge AS (
           INSERT INTO tenant_usage AS u (tenant_id, shard, month, runs_in_month, stored_bytes)
           SELECT $1, pg_backend_pid() % 256, $10, COUNT(*), SUM(i.bytes)::bigint
           FROM ins JOIN inp i ON i.id = ins.id AND i.workspace_id = ins.workspace_id
           HAVING COUNT(*) > 0
           ON CONFLICT (tenant_id, shard) DO UPDATE SET
             runs_in_month = CASE WHEN u.month = $10 THEN u.runs_in_month + excluded.runs_in_month WHEN u.month > $10 THEN u.runs_in_month ELSE excluded.runs_in_month END,
             month = GREATEST(u.month, $10), stored_bytes = u.stored_bytes + excluded.stored_bytes
           RETURNING 1)
         SELECT run_id FROM q",
    )
    .bind(tenant)
    .bind(ws)
    .bind(ids)
    .bind(flows)
    .bind(names)
    .bind(versions)
    .bind(triggers)
    .bind(nows)
    .bind(bytes)
    .bind(month)
    .bind(traces)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    Ok(rows
        .iter()
        .map(|(r, _)| {
            if inserted.contains(&r.id.to_string()) {
                Ok(Inserted {
                    run_id: r.id,
                    duplicate: false,
                })
            } else {
                Err(StoreError::Conflict(
                    "a run with this id already exists; retry".into(),
                ))
            }
        })
        .collect())
}

/// Refuses a new run the tenant's plan does not allow (same rules as SQLite); writes nothing.
/// The insert statement charges the run once it is in.
async fn check_quota(
    tx: &mut Tx,
    t: &str,
    bytes: i64,
    now: Millis,
    plans: &mut PlanCache,
) -> Result<(), StoreError> {
    let month = crate::quota::month_of(now);
    let (runs_limit, bytes_limit) = plan_limits(tx, t, plans).await?;
    if runs_limit.is_some() || bytes_limit.is_some() {
        // A limited tenant's inserts take turns (the lock lasts until commit, so each one sees
        // the previous one's charge): a limit is never overshot. Unlimited tenants skip this.
        sqlx::query("SELECT pg_advisory_xact_lock(7265767, hashtext($1))")
            .bind(t)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        let (runs, stored): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(runs_in_month) FILTER (WHERE month = $2), 0)::bigint, COALESCE(SUM(stored_bytes), 0)::bigint
             FROM tenant_usage WHERE tenant_id = $1",
        )
        .bind(t)
        .bind(&month)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
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
    Ok(())
}

/// Inserts a queued run in `tx`. Every check comes before any write that could be wrong to
/// keep, so a refusal leaves nothing behind even inside a batch of other writes.
pub(super) async fn insert_run_tx(
    tx: &mut Tx,
    r: &NewRun,
    trigger: &str,
    plans: &mut PlanCache,
) -> Result<Inserted, StoreError> {
    let (t, w) = scope_strs(&r.scope);
    let flow = r.flow_id.to_string();
    let mut expired_key_holder = None;
    if let Some(key) = &r.dedupe_key {
        // No lock: a duplicate answer needs none, and the key's unique index settles races
        // (locking the run here, without its queue row first, could deadlock with a claim).
        let existing = sqlx::query("SELECT id, created_at FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND dedupe_key = $4")
            .bind(&t)
            .bind(&w)
            .bind(&flow)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
        if let Some(row) = existing {
            let (id, created): (String, Millis) = (row.get(0), row.get(1));
            if r.now - created < r.dedupe_window_ms {
                return Ok(Inserted {
                    run_id: parse(id, "run id")?,
                    duplicate: true,
                });
            }
            expired_key_holder = Some(id);
        }
    }
    let bytes = crate::payloads::charged_len(&r.trigger, trigger.len());
    check_quota(tx, &t, bytes, r.now, plans).await?;
    if let Some(id) = expired_key_holder {
        // The old run keeps its history but gives up the expired key.
        sqlx::query("UPDATE runs SET dedupe_key = NULL WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3")
            .bind(&t)
            .bind(&w)
            .bind(&id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    // A concurrent insert of the same dedupe key loses on the unique index and reports the
    // winner. One statement: the run, its queue row and the tenant's charge.
    let n: i64 = sqlx::query_scalar(
        "WITH ins AS (
           INSERT INTO runs (tenant_id, workspace_id, id, flow_id, flow_name, flow_version, status, trigger, dedupe_key, not_before, created_at, parent_run, traceparent)
           VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7::jsonb, $8, $9, $9, $12, $13) ON CONFLICT DO NOTHING
           RETURNING tenant_id, workspace_id, id, not_before),
         q AS (
           INSERT INTO run_queue (tenant_id, workspace_id, run_id, not_before)
           SELECT tenant_id, workspace_id, id, not_before FROM ins
           RETURNING 1),
         charge AS (
           INSERT INTO tenant_usage AS u (tenant_id, shard, month, runs_in_month, stored_bytes)
           SELECT tenant_id, pg_backend_pid() % 256, $10, 1, $11 FROM ins
           ON CONFLICT (tenant_id, shard) DO UPDATE SET
             runs_in_month = CASE WHEN u.month = $10 THEN u.runs_in_month + 1 WHEN u.month > $10 THEN u.runs_in_month ELSE 1 END,
             month = GREATEST(u.month, $10), stored_bytes = u.stored_bytes + excluded.stored_bytes
           RETURNING 1)
         SELECT COUNT(*) FROM q",
    )
    .bind(&t)
    .bind(&w)
    .bind(r.id.to_string())
    .bind(&flow)
    .bind(&r.flow_name)
    .bind(r.flow_version)
    .bind(trigger)
    .bind(&r.dedupe_key)
    .bind(r.now)
    .bind(crate::quota::month_of(r.now))
    .bind(bytes)
    .bind(r.parent.map(|p| p.to_string()))
    .bind(r.traceparent.as_deref())
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    if n == 0 {
        return Err(StoreError::Conflict(
            "a run with this delivery key was accepted at the same moment; retry to get its id"
                .into(),
        ));
    }
    if let Some(actor) = &r.audit {
        append(
            tx,
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
        )
        .await?;
    }
    Ok(Inserted {
        run_id: r.id,
        duplicate: false,
    })
}

/// The columns a [`LogRecord`] is read from, in [`log_record`]'s order, over [`LOG_FROM`].
const LOG_COLS: &str = "c.seq * 1024 + l.n - 1, l.ts, l.level, l.step_id, l.message, l.event";
/// `run_logs` rows `c` with their lines `l`, in order (see [`LINES_PER_ROW`]).
const LOG_FROM: &str = "run_logs c CROSS JOIN LATERAL unnest(c.ts, c.level, c.step_id, c.message, c.event) WITH ORDINALITY AS l(ts, level, step_id, message, event, n)";

/// A log line from a row that starts with [`LOG_COLS`].
fn log_record(r: &sqlx::postgres::PgRow) -> LogRecord {
    LogRecord {
        seq: r.get(0),
        ts: r.get(1),
        level: r.get(2),
        step_id: r.get(3),
        message: r.get(4),
        event: r.get(5),
    }
}

/// Most log lines in one `run_logs` row; a line's id is `seq * LINES_PER_ROW + position`. The
/// readers' SQL in this file writes the number out (a unit test checks [`LOG_COLS`]).
const LINES_PER_ROW: i64 = 1024;

/// The log lines of many jobs for `run_logs`: one row per job (or per [`LINES_PER_ROW`] of
/// its lines), each row a slice `lo..=hi` (1-based) of the parallel per-line arrays.
#[derive(Default)]
struct JobLogs {
    ord: Vec<i64>,
    lo: Vec<i32>,
    hi: Vec<i32>,
    ts: Vec<i64>,
    level: Vec<&'static str>,
    step: Vec<Option<String>>,
    message: Vec<String>,
    event: Vec<&'static str>,
}

impl JobLogs {
    /// Adds the lines of job `job` (0-based position in its statement), stamped `now` unless
    /// a line carries its own time.
    fn push<'l>(&mut self, job: usize, now: Millis, logs: impl IntoIterator<Item = &'l NewLog>) {
        let mut lo = self.ts.len() + 1;
        for l in logs {
            if self.ts.len() + 1 - lo == LINES_PER_ROW as usize {
                self.row(job, lo);
                lo = self.ts.len() + 1;
            }
            self.ts.push(l.at.unwrap_or(now));
            self.level.push(l.level);
            self.step
                .push(l.step_id.as_deref().map(|x| pg_text(x).into_owned()));
            self.message.push(pg_text(&l.message).into_owned());
            self.event.push(l.event.as_str());
        }
        if self.ts.len() + 1 > lo {
            self.row(job, lo);
        }
    }

    /// Closes a row of job `job`: lines `lo..` to the last one pushed.
    fn row(&mut self, job: usize, lo: usize) {
        self.ord.push(job as i64);
        self.lo.push(lo as i32);
        self.hi.push(self.ts.len() as i32);
    }

    /// SQL inserting the rows of the jobs in `jobs` (a relation with `ord` (1-based),
    /// `workspace_id` and `run_id`), in job order, with this value's arrays bound from
    /// parameter `$first` on by `bind_logs!`; the tenant is `$1`.
    fn insert_sql(jobs: &str, first: usize) -> String {
        let p = |i: usize| first + i;
        format!(
            "INSERT INTO run_logs (tenant_id, workspace_id, run_id, ts, level, step_id, message, event)
             SELECT $1, j.workspace_id, j.run_id, (${ts}::bigint[])[c.lo:c.hi], (${level}::text[])[c.lo:c.hi],
                    (${step}::text[])[c.lo:c.hi], (${message}::text[])[c.lo:c.hi], (${event}::text[])[c.lo:c.hi]
             FROM UNNEST(${o}::bigint[], ${lo}::int[], ${hi}::int[]) WITH ORDINALITY AS c(ord, lo, hi, n)
             JOIN {jobs} j ON j.ord = c.ord + 1
             ORDER BY c.n",
            o = p(0),
            lo = p(1),
            hi = p(2),
            ts = p(3),
            level = p(4),
            step = p(5),
            message = p(6),
            event = p(7),
        )
    }
}

/// For `n` jobs, which ones a statement reported (by 0-based position) as written.
fn flags(n: usize, written: Vec<i64>) -> Vec<bool> {
    let mut out = vec![false; n];
    for i in written {
        if let Some(slot) = out.get_mut(i as usize) {
            *slot = true;
        }
    }
    out
}

/// The step records of many jobs for `run_steps`, as parallel arrays (one entry per record).
#[derive(Default)]
struct StepRows {
    job: Vec<i64>,
    step: Vec<String>,
    idx: Vec<i64>,
    status: Vec<&'static str>,
    attempts: Vec<i64>,
    output: Vec<Option<String>>,
    error: Vec<Option<String>>,
    started: Vec<Option<Millis>>,
    finished: Vec<Option<Millis>>,
}

impl StepRows {
    /// Adds the records of job `job` (0-based position in its statement).
    fn push(&mut self, job: usize, cps: &[StepCheckpoint]) {
        for cp in cps {
            let s = &cp.step;
            self.job.push(job as i64);
            self.step.push(pg_text(&s.step_id).into_owned());
            self.idx.push(s.idx);
            self.status.push(s.status.as_str());
            self.attempts.push(s.attempts);
            self.output.push(s.output.as_ref().map(pg_json));
            self.error
                .push(s.error.as_deref().map(|e| pg_text(e).into_owned()));
            self.started.push(s.started_at);
            self.finished.push(s.finished_at);
        }
    }

    /// SQL upserting the records of the jobs in `jobs` (a relation with `ord` (1-based),
    /// `workspace_id` and `run_id`; a job not in it writes nothing), with this value's arrays
    /// bound from parameter `$first` on by `bind_steps!`; the tenant is `$1`. Returns each
    /// written record's run and stored size, as the usage charge counts it.
    fn upsert_sql(jobs: &str, first: usize) -> String {
        let p = |i: usize| first + i;
        format!(
            "INSERT INTO run_steps (tenant_id, workspace_id, run_id, step_id, idx, status, attempts, output, error, started_at, finished_at)
             SELECT $1, j.workspace_id, j.run_id, s.step_id, s.idx, s.status, s.attempts, s.output::jsonb, s.error, s.started_at, s.finished_at
             FROM UNNEST(${a}::bigint[], ${b}::text[], ${c}::bigint[], ${d}::text[], ${e}::bigint[], ${f}::text[], ${g}::text[], ${h}::bigint[], ${i}::bigint[])
               WITH ORDINALITY AS s(job, step_id, idx, status, attempts, output, error, started_at, finished_at, n)
             JOIN {jobs} j ON j.ord = s.job + 1
             ORDER BY s.n
             ON CONFLICT (tenant_id, workspace_id, run_id, step_id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
               output = excluded.output, error = excluded.error, started_at = COALESCE(run_steps.started_at, excluded.started_at), finished_at = excluded.finished_at
             RETURNING workspace_id, run_id, step_id, {STEP_SIZE} AS bytes",
            a = p(0),
            b = p(1),
            c = p(2),
            d = p(3),
            e = p(4),
            f = p(5),
            g = p(6),
            h = p(7),
            i = p(8),
        )
    }
}

/// A stored step's size as the usage charge counts it (its blob's size when offloaded), over
/// a row with an `output` column.
const STEP_SIZE: &str =
    "COALESCE((output->'$weft_payload'->'blob'->>'size')::bigint, LENGTH(output::text))";

/// Binds a [`StepRows`]' arrays in [`StepRows::upsert_sql`]'s order.
macro_rules! bind_steps {
    ($q:expr, $s:expr) => {{
        let s = $s;
        $q.bind(s.job)
            .bind(s.step)
            .bind(s.idx)
            .bind(s.status)
            .bind(s.attempts)
            .bind(s.output)
            .bind(s.error)
            .bind(s.started)
            .bind(s.finished)
    }};
}

/// One step checkpoint of a batch (see [`checkpoint_many_tx`]).
pub(super) struct CheckpointRow<'a> {
    pub scope: &'a Scope,
    pub run: RunId,
    pub owner: &'a str,
    pub cps: &'a [StepCheckpoint],
    pub now: Millis,
}

/// Checkpoints many steps of one tenant's runs in `tx` (tenant set) with one statement; for
/// each, whether it was written (false: its run is no longer held by its owner, and nothing of
/// it was written). A batch's statements, not its rows, are most of
/// PostgreSQL's cost per run, so even one checkpoint goes this way.
pub(super) async fn checkpoint_many_tx(
    tx: &mut Tx,
    tenant: &str,
    rows: &[CheckpointRow<'_>],
) -> Result<Vec<bool>, StoreError> {
    let n = rows.len();
    let (mut ws, mut runs, mut owners) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut steps = StepRows::default();
    let mut lines = JobLogs::default();
    for (i, r) in rows.iter().enumerate() {
        ws.push(r.scope.workspace.to_string());
        runs.push(r.run.to_string());
        owners.push(r.owner);
        steps.push(i, r.cps);
        lines.push(i, r.now, r.cps.iter().flat_map(|cp| &cp.logs));
    }
    // The lease check is a scalar subquery, one primary-key lookup per job. As a join, the
    // planner trusted run_queue's statistics, which are always stale (the table swings between
    // empty and the whole backlog), and compared every row of the tenant's queue with every
    // checkpoint: 25 ms per statement at a backlog of 1,000 runs.
    let sql = format!(
        "WITH inp AS (
           SELECT * FROM UNNEST($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS i(workspace_id, run_id, owner, ord)),
         ok AS (
           SELECT i.* FROM inp i
           WHERE (SELECT q.lease_owner FROM run_queue q WHERE q.tenant_id = $1 AND q.workspace_id = i.workspace_id AND q.run_id = i.run_id) = i.owner),
         st AS ({}),
         lg AS ({} RETURNING 1)
         SELECT ord - 1 FROM ok ORDER BY ord",
        StepRows::upsert_sql("ok", 5),
        JobLogs::insert_sql("ok", 14)
    );
    let q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(ws)
        .bind(runs)
        .bind(owners);
    let q = bind_steps!(q, steps);
    let held: Vec<i64> = bind_logs!(q, lines)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
    Ok(flags(n, held))
}

/// One finish of a batch (see [`finish_many_tx`]).
pub(super) struct FinishRow<'a> {
    pub scope: &'a Scope,
    pub run: RunId,
    pub owner: &'a str,
    /// Steps checkpointed with the finish, before it.
    pub steps: &'a [StepCheckpoint],
    pub status: RunStatus,
    pub output: Option<&'a Value>,
    pub error: Option<&'a str>,
    pub logs: &'a [NewLog],
    pub now: Millis,
}

/// Finishes many runs of one tenant in `tx` (tenant set) with one statement; for each, whether
/// it was finished (false: `owner` no longer holds it, and nothing of it was written). One usage
/// charge covers them all. The waiting parents of finished sub-flow runs are made ready by a
/// second statement, only when there are any; the second result says whether one was.
pub(super) async fn finish_many_tx(
    tx: &mut Tx,
    tenant: &str,
    rows: &[FinishRow<'_>],
) -> Result<(Vec<bool>, bool), StoreError> {
    let n = rows.len();
    let mut ws = Vec::with_capacity(n);
    let mut runs = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    let mut output_bytes = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut nows = Vec::with_capacity(n);
    let mut steps = StepRows::default();
    let mut lines = JobLogs::default();
    for (i, r) in rows.iter().enumerate() {
        steps.push(i, r.steps);
        ws.push(r.scope.workspace.to_string());
        runs.push(r.run.to_string());
        owners.push(r.owner);
        statuses.push(r.status.as_str());
        let text = r.output.map(pg_json);
        output_bytes.push(match (&text, r.output) {
            (Some(t), Some(v)) => crate::payloads::charged_len(v, t.len()),
            _ => 0,
        });
        outputs.push(text);
        errors.push(r.error.map(|e| pg_text(e).into_owned()));
        nows.push(r.now);
        lines.push(
            i,
            r.now,
            r.steps.iter().flat_map(|cp| &cp.logs).chain(r.logs),
        );
    }
    let month = crate::quota::month_of(nows.iter().copied().max().unwrap_or(0));
    // Which rows are held is found by primary-key lookups (see `checkpoint_many_tx`); the
    // delete then finds them through the same index and checks the owner again, since a
    // lease can change hands between the two.
    let sql = format!(
        "WITH inp AS (
           SELECT * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[])
             WITH ORDINALITY AS i(workspace_id, run_id, owner, status, output, error, now, output_bytes, ord)),
         mine AS (
           SELECT i.workspace_id, i.run_id, i.owner FROM inp i
           WHERE (SELECT q.lease_owner FROM run_queue q WHERE q.tenant_id = $1 AND q.workspace_id = i.workspace_id AND q.run_id = i.run_id) = i.owner),
         held AS (
           DELETE FROM run_queue q
           WHERE q.tenant_id = $1
             AND q.workspace_id = ANY (ARRAY(SELECT workspace_id FROM mine))
             AND q.run_id = ANY (ARRAY(SELECT run_id FROM mine))
             AND EXISTS (SELECT 1 FROM mine m WHERE m.workspace_id = q.workspace_id AND m.run_id = q.run_id AND m.owner = q.lease_owner)
           RETURNING q.workspace_id, q.run_id),
         upd AS (
           UPDATE runs r SET status = i.status, output = i.output::jsonb, error = i.error, finished_at = i.now
           FROM inp i JOIN held h ON h.workspace_id = i.workspace_id AND h.run_id = i.run_id
           WHERE r.tenant_id = $1 AND r.workspace_id = i.workspace_id AND r.id = i.run_id
           RETURNING i.ord, i.workspace_id, i.run_id, i.now, i.output_bytes, r.parent_run),
         st AS ({steps}),
         charge AS (
           INSERT INTO tenant_usage AS u (tenant_id, shard, month, runs_in_month, stored_bytes)
           SELECT $1, pg_backend_pid() % 256, $10, 0,
                  SUM(d.output_bytes
                      + COALESCE((SELECT SUM({STEP_SIZE}) FROM run_steps s
                          WHERE s.tenant_id = $1 AND s.workspace_id = d.workspace_id AND s.run_id = d.run_id
                            AND NOT EXISTS (SELECT 1 FROM st c WHERE c.workspace_id = s.workspace_id AND c.run_id = s.run_id AND c.step_id = s.step_id)), 0)
                      + COALESCE((SELECT SUM(c.bytes) FROM st c WHERE c.workspace_id = d.workspace_id AND c.run_id = d.run_id), 0))::bigint
           FROM upd d
           HAVING COUNT(*) > 0
           ON CONFLICT (tenant_id, shard) DO UPDATE SET
             runs_in_month = CASE WHEN u.month >= $10 THEN u.runs_in_month ELSE 0 END,
             month = GREATEST(u.month, $10), stored_bytes = u.stored_bytes + excluded.stored_bytes
           RETURNING 1),
         lg AS ({logs} RETURNING 1)
         SELECT ord - 1, parent_run FROM upd ORDER BY ord",
        steps = StepRows::upsert_sql("upd", 19),
        logs = JobLogs::insert_sql("upd", 11)
    );
    let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(ws)
        .bind(runs)
        .bind(owners)
        .bind(statuses)
        .bind(outputs)
        .bind(errors)
        .bind(nows)
        .bind(output_bytes)
        .bind(month);
    let q = bind_logs!(q, lines);
    let done: Vec<(i64, Option<String>)> = bind_steps!(q, steps)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
    // Sub-flow runs wake their waiting parents in the same transaction.
    let parents: Vec<(String, String, Millis)> = done
        .iter()
        .filter_map(|(ord, parent)| {
            let row = rows.get(usize::try_from(*ord).ok()?)?;
            Some((row.scope.workspace.to_string(), parent.clone()?, row.now))
        })
        .collect();
    let woke = !parents.is_empty() && super::waits::wake_waiting(tx, tenant, &parents).await? > 0;
    Ok((flags(n, done.into_iter().map(|d| d.0).collect()), woke))
}

/// Leases up to `n` of `tenant`'s ready runs to `owner` (in `tx`, which has the system flag and
/// custom plans set) and marks them running; a run claimed before comes with its steps.
async fn claim_for(
    tx: &mut Tx,
    tenant: &str,
    owner: &str,
    now: Millis,
    lease_ms: Millis,
    n: usize,
) -> Result<Vec<ClaimedRun>, StoreError> {
    let sql = format!(
        "WITH picked AS (
           SELECT tenant_id, workspace_id, run_id FROM run_queue
           WHERE lease_owner IS NULL AND tenant_id = $5 AND not_before <= $3
           ORDER BY not_before, run_id LIMIT $4 FOR UPDATE SKIP LOCKED),
         leased AS (
           UPDATE run_queue q SET lease_owner = $1, lease_expires = $2, waiting = false FROM picked p
           WHERE q.tenant_id = p.tenant_id AND q.workspace_id = p.workspace_id AND q.run_id = p.run_id
           RETURNING q.tenant_id, q.workspace_id, q.run_id)
         UPDATE runs r SET status = 'running', claims = r.claims + 1, started_at = COALESCE(r.started_at, $3)
         FROM leased l WHERE r.tenant_id = l.tenant_id AND r.workspace_id = l.workspace_id AND r.id = l.run_id
         RETURNING {R_RUN_COLS}"
    );
    sqlx::query("SELECT set_config('weft.tenant_id', $1, true)")
        .bind(tenant)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(n as i64)
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (run, claims) = read_run(r)?;
        let steps = if claims > 1 {
            let (t, w) = scope_strs(&run.scope);
            resume_steps_of(tx, &t, &w, &run.id.to_string()).await?
        } else {
            Vec::new()
        };
        out.push(ClaimedRun { run, steps });
    }
    Ok(out)
}

/// Claimed runs in id order.
fn sorted(mut out: Vec<ClaimedRun>) -> Vec<ClaimedRun> {
    out.sort_by_key(|c| c.run.id);
    out
}

impl PgStore {
    /// Durably inserts a queued run, or reports the run that already holds its dedupe key.
    pub async fn insert_run(&self, run: NewRun) -> Result<Inserted, StoreError> {
        self.batch(|reply| super::batch::Job::Insert { run, reply })
            .await
    }

    /// System: claims up to `limit` ready runs for `owner`, shared fairly across tenants.
    pub async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: Millis,
        limit: usize,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Custom plans, and the tenant set as well as the system flag: the planner estimates the
        // row-security predicate from the current settings, and with only the system flag it
        // guessed 0.5 % of the ready runs and sorted them all instead of walking `runs_ready`
        // (a claim grew from 5 ms to seconds with a 50k backlog). No sequential scans either:
        // `run_queue`'s statistics are always stale (it swings between empty and the whole
        // backlog, and is mostly dead rows between vacuums), and with them the planner often
        // scanned all of it, twice per claim, instead of walking its indexes.
        sqlx::query(
            "SELECT set_config('weft.system', 'on', true), set_config('plan_cache_mode', 'force_custom_plan', true),
                    set_config('enable_seqscan', 'off', true)",
        )
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let sole = self.sole_tenant.lock().ok().and_then(|s| s.clone());
        if let Some(tenant) = sole {
            // Fast path: the last claim found one tenant with ready work and no cap. Listing
            // the tenants walks the ready index from its start, over every entry a recent claim
            // left dead (half the claim's time at thousands of runs a second); probing either
            // side of this tenant's range does not. Another tenant with ready work, or a cap
            // since, sends the claim down the fair path.
            let probe = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM run_queue WHERE lease_owner IS NULL AND tenant_id < $1)
                          OR EXISTS (SELECT 1 FROM run_queue WHERE lease_owner IS NULL AND tenant_id > $1),
                        (SELECT max_concurrent_runs FROM tenants WHERE id = $1) IS NOT NULL",
            )
            .bind(&tenant)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            let (others, capped): (bool, bool) = (probe.get(0), probe.get(1));
            if !others && !capped {
                let out = claim_for(&mut tx, &tenant, owner, now, lease_ms, limit).await?;
                tx.commit().await.map_err(db)?;
                return Ok(sorted(out));
            }
        }
        let found = sqlx::query(
            "WITH RECURSIVE t(id) AS (
               SELECT MIN(tenant_id) FROM run_queue WHERE lease_owner IS NULL
               UNION ALL
               SELECT (SELECT MIN(tenant_id) FROM run_queue WHERE lease_owner IS NULL AND tenant_id > t.id) FROM t WHERE t.id IS NOT NULL)
             SELECT t.id, tn.weight, tn.max_concurrent_runs FROM t JOIN tenants tn ON tn.id = t.id WHERE t.id IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let capped = found.iter().any(|r| r.get::<Option<i64>, _>(2).is_some());
        if let Ok(mut sole) = self.sole_tenant.lock() {
            *sole = match found.as_slice() {
                [only] if !capped => Some(only.get::<String, _>(0)),
                _ => None,
            };
        }
        if capped {
            // Caps count running runs on every worker: claims that could overshoot one take turns.
            sqlx::query("SELECT pg_advisory_xact_lock(7265767403)")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let mut tenants = Vec::new();
        let mut demands = Vec::new();
        if let [only] = found.as_slice()
            && only.get::<Option<i64>, _>(2).is_none()
        {
            tenants.push(only.get::<String, _>(0));
            demands.push(crate::fair::Demand {
                running: 0,
                ready: limit as i64,
                weight: 1,
                cap: None,
            });
        } else {
            for r in &found {
                let tenant: String = r.get(0);
                let c = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM run_queue WHERE lease_owner IS NULL AND tenant_id = $1 AND not_before <= $2 LIMIT $3) q),
                            (SELECT COUNT(*) FROM run_queue WHERE lease_owner IS NOT NULL AND tenant_id = $1)",
                )
                .bind(&tenant)
                .bind(now)
                .bind(limit as i64)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
                let (ready, running): (i64, i64) = (c.get(0), c.get(1));
                if ready == 0 {
                    continue;
                }
                tenants.push(tenant);
                demands.push(crate::fair::Demand {
                    running,
                    ready,
                    weight: r.get(1),
                    cap: r.get(2),
                });
            }
        }
        let shares = crate::fair::shares(&demands, limit);
        let mut out = Vec::new();
        for (tenant, n) in tenants.iter().zip(shares) {
            if n == 0 {
                continue;
            }
            out.extend(claim_for(&mut tx, tenant, owner, now, lease_ms, n).await?);
        }
        tx.commit().await.map_err(db)?;
        Ok(sorted(out))
    }

    async fn system_update(
        &self,
        sql: &str,
        a: &str,
        b: Option<Millis>,
        requeues: bool,
    ) -> Result<usize, StoreError> {
        let mut tx = self.system_tx().await?;
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(a);
        let q = match b {
            Some(b) => q.bind(b),
            None => q,
        };
        let n = q.execute(&mut *tx).await.map_err(db)?.rows_affected();
        tx.commit().await.map_err(db)?;
        if n > 0 && requeues {
            self.announce();
        }
        Ok(n as usize)
    }

    /// System: extends the leases of every run `owner` is running.
    pub async fn renew_leases(&self, owner: &str, until: Millis) -> Result<usize, StoreError> {
        self.system_update(
            // Rows locked right now are being finished or cancelled: skip rather than queue
            // behind (and possibly deadlock with) their batches.
            "UPDATE run_queue SET lease_expires = $2 WHERE (tenant_id, workspace_id, run_id) IN (
               SELECT tenant_id, workspace_id, run_id FROM run_queue WHERE lease_owner = $1 FOR UPDATE SKIP LOCKED)",
            owner,
            Some(until),
            false,
        )
        .await
    }

    /// System: returns runs whose lease expired (their worker died) to the queue.
    pub async fn reclaim_expired(&self, now: Millis) -> Result<usize, StoreError> {
        let mut tx = self.system_tx().await?;
        let sql = format!(
            "WITH back AS (UPDATE run_queue SET lease_owner = NULL, lease_expires = NULL
               WHERE lease_owner IS NOT NULL AND lease_expires < $1 RETURNING tenant_id, workspace_id, run_id)
             {REQUEUE_RUNS}"
        );
        let n = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        tx.commit().await.map_err(db)?;
        if n > 0 {
            self.announce();
        }
        Ok(n as usize)
    }

    /// System: returns every running run not owned by `owner` to the queue.
    pub async fn reclaim_all_except(&self, owner: &str) -> Result<usize, StoreError> {
        let sql = format!(
            "WITH back AS (UPDATE run_queue SET lease_owner = NULL, lease_expires = NULL
               WHERE lease_owner IS NOT NULL AND lease_owner <> $1 RETURNING tenant_id, workspace_id, run_id)
             {REQUEUE_RUNS}"
        );
        self.system_update(&sql, owner, None, true).await
    }

    /// Hands `owner`'s running runs back to the queue (graceful shutdown).
    pub async fn release_leases(&self, owner: &str) -> Result<usize, StoreError> {
        let sql = format!(
            "WITH back AS (UPDATE run_queue SET lease_owner = NULL, lease_expires = NULL
               WHERE lease_owner = $1 RETURNING tenant_id, workspace_id, run_id)
             {REQUEUE_RUNS}"
        );
        self.system_update(&sql, owner, None, true).await
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
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "WITH back AS (UPDATE run_queue SET lease_owner = NULL, lease_expires = NULL, not_before = $5
               WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND lease_owner = $4
               RETURNING tenant_id, workspace_id, run_id)
             UPDATE runs r SET status = 'queued' FROM back b
             WHERE r.tenant_id = b.tenant_id AND r.workspace_id = b.workspace_id AND r.id = b.run_id",
        )
        .bind(&t)
        .bind(&w)
        .bind(run.to_string())
        .bind(owner)
        .bind(not_before)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
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

    /// Checkpoints steps of a run `owner` holds, in order; false (nothing written) when it no
    /// longer holds it.
    pub async fn checkpoint_steps(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        cps: Vec<StepCheckpoint>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.batch(|reply| super::batch::Job::Checkpoint {
            scope,
            run,
            owner: owner.to_string(),
            cps,
            now,
            reply,
        })
        .await
    }

    /// [`PgStore::finish_run`] after checkpointing `steps` (in the same statement), waking
    /// its parent if that waits; false when it is no longer held (e.g. cancelled meanwhile).
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
        self.batch(|reply| super::batch::Job::Finish {
            scope,
            run,
            owner: owner.to_string(),
            steps,
            status,
            output,
            error,
            logs,
            now,
            reply,
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
        let (t, w) = scope_strs(&scope);
        let rid = run.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        // Runs below this one, deepest first (none for most runs). Their queue rows are locked
        // before this run's: a finishing sub-flow locks its own queue row, then its parent's.
        let below = super::waits::descendants(&mut tx, &t, &w, &rid).await?;
        if !below.is_empty() {
            sqlx::query(
                "SELECT 1 FROM run_queue q JOIN UNNEST($3::text[]) WITH ORDINALITY AS i(run_id, n) ON q.run_id = i.run_id
                 WHERE q.tenant_id = $1 AND q.workspace_id = $2 ORDER BY i.n FOR UPDATE OF q",
            )
            .bind(&t)
            .bind(&w)
            .bind(&below)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        // Queue row first (the lock order of claims and finishes), then the run.
        let dequeued = sqlx::query(
            "DELETE FROM run_queue WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        let status: String = sqlx::query_scalar("SELECT status FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 FOR UPDATE")
            .bind(&t)
            .bind(&w)
            .bind(&rid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let status = RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?;
        if status.is_terminal() {
            return Ok(status);
        }
        if dequeued == 0 {
            // An unfinished run without a queue row a moment ago: a retry that put it back
            // committed while this waited for the run. Its new queue row goes too.
            sqlx::query(
                "DELETE FROM run_queue WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3",
            )
            .bind(&t)
            .bind(&w)
            .bind(&rid)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let parent: Option<String> = sqlx::query_scalar(
            "UPDATE runs SET status = 'cancelled', finished_at = $4, error = 'cancelled on request'
             WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 RETURNING parent_run",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        super::waits::cancel_open_steps(&mut tx, &t, &w, std::slice::from_ref(&rid), now).await?;
        insert_logs(
            &mut tx,
            &t,
            &w,
            &rid,
            now,
            &[NewLog::new(
                "warn",
                None,
                RunEvent::RunCancelled,
                "run cancelled on request",
            )],
        )
        .await?;
        let mut detail = json!({"previous_status": status.as_str()});
        if !below.is_empty() {
            let n = super::waits::cancel_below(&mut tx, &t, &w, &below, now).await?;
            if n > 0 {
                detail["cancelled_descendants"] = json!(n);
            }
        }
        let woke = match parent {
            Some(p) => super::waits::wake_waiting(&mut tx, &t, &[(w.clone(), p, now)]).await? > 0,
            None => false,
        };
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "run.cancel",
                object_kind: "run",
                object_id: rid.clone(),
                workspace: Some(scope.workspace),
                detail,
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        if woke {
            self.announce();
        }
        Ok(RunStatus::Cancelled)
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
        let (t, w) = scope_strs(&scope);
        let rid = run.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        // A run in the queue is not finished; its queue row is locked first, as everywhere.
        let queued: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM run_queue WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 FOR UPDATE",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT status, (COALESCE((trigger->'$weft_payload'->'blob'->>'size')::bigint, LENGTH(trigger::text))
                    + CASE WHEN status = 'cancelled' THEN 0 ELSE
                        COALESCE((output->'$weft_payload'->'blob'->>'size')::bigint, LENGTH(output::text), 0)
                        + COALESCE((SELECT SUM(COALESCE((s.output->'$weft_payload'->'blob'->>'size')::bigint, LENGTH(s.output::text)))
                                    FROM run_steps s WHERE s.tenant_id = $1 AND s.workspace_id = $2 AND s.run_id = $3), 0) END)::bigint
             FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 FOR UPDATE",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let (status, bytes) = row.ok_or(StoreError::NotFound)?;
        let status = RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?;
        if queued.is_some() || !status.is_terminal() {
            return Err(crate::run_not_finished(run, status));
        }
        for sql in [
            "DELETE FROM run_logs WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3",
            "DELETE FROM run_steps WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3",
            "DELETE FROM run_signals WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3",
            "DELETE FROM event_watches WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3",
            "DELETE FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
        ] {
            sqlx::query(sql)
                .bind(&t)
                .bind(&w)
                .bind(&rid)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let month = crate::quota::month_of(now);
        sqlx::query(
            "INSERT INTO tenant_usage AS u (tenant_id, shard, month, runs_in_month, stored_bytes)
             VALUES ($1, pg_backend_pid() % 256, $2, 0, -$3::bigint)
             ON CONFLICT (tenant_id, shard) DO UPDATE SET
               runs_in_month = CASE WHEN u.month >= $2 THEN u.runs_in_month ELSE 0 END,
               month = GREATEST(u.month, $2), stored_bytes = u.stored_bytes + excluded.stored_bytes",
        )
        .bind(&t)
        .bind(&month)
        .bind(bytes)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "run.delete",
                object_kind: "run",
                object_id: rid,
                workspace: Some(scope.workspace),
                detail: json!({"status": status.as_str(), "stored_bytes": bytes}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Appends log lines to a run.
    pub async fn append_logs(
        &self,
        scope: Scope,
        run: RunId,
        logs: Vec<NewLog>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        insert_logs(&mut tx, &t, &w, &run.to_string(), now, &logs).await?;
        tx.commit().await.map_err(db)
    }

    /// The records of some steps of a run, by step id (ids with no record are left out).
    pub async fn get_steps(
        &self,
        scope: Scope,
        run: RunId,
        ids: &[String],
    ) -> Result<Vec<StepRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(
            "SELECT step_id, idx, status, attempts, output::text, error, started_at, finished_at FROM run_steps
             WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND step_id = ANY($4)",
        )
        .bind(&t)
        .bind(&w)
        .bind(run.to_string())
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(read_step_row).collect()
    }

    /// A run with its steps.
    pub async fn get_run(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<(RunRecord, Vec<StepRecord>), StoreError> {
        let (t, w) = scope_strs(&scope);
        let rid = run.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let run = run_in(&mut tx, &t, &w, &rid).await?;
        let steps = steps_of(&mut tx, &t, &w, &rid).await?;
        tx.commit().await.map_err(db)?;
        Ok((run, steps))
    }

    /// A run with its top-level steps and, per loop, how many items finished: what a person
    /// looks at, without reading a large loop's item checkpoints.
    pub async fn get_run_summary(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<(RunRecord, Vec<StepRecord>, Vec<LoopCount>), StoreError> {
        let (t, w) = scope_strs(&scope);
        let rid = run.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let run = run_in(&mut tx, &t, &w, &rid).await?;
        let rows = sqlx::query(
            "SELECT step_id, idx, status, attempts, output::text, error, started_at, finished_at FROM run_steps
             WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND strpos(step_id, '[') = 0
             ORDER BY idx",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let steps = rows
            .iter()
            .map(read_step_row)
            .collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT substr(step_id, 1, strpos(step_id, '[') - 1) AS loop_id, count(*),
                    count(*) FILTER (WHERE status = 'failed')
             FROM run_steps
             WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3
               AND step_id LIKE '%]' AND strpos(step_id, '].') = 0
               AND status IN ('succeeded', 'failed')
             GROUP BY loop_id",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let counts = rows
            .iter()
            .map(|r| LoopCount {
                step_id: r.get(0),
                done: r.get(1),
                failed: r.get(2),
            })
            .collect();
        Ok((run, steps, counts))
    }

    /// Runs of a workspace, newest first, filtered.
    pub async fn list_runs(
        &self,
        scope: Scope,
        f: RunFilter,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND workspace_id = $2
             AND ($3::text IS NULL OR flow_id = $3) AND ($4::text IS NULL OR status = $4) AND ($5::bigint IS NULL OR created_at >= $5)
             AND ($6::text IS NULL OR id < $6) ORDER BY id DESC LIMIT $7"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .bind(&w)
            .bind(f.flow_id.map(|x| x.to_string()))
            .bind(f.status.map(|s| s.as_str()))
            .bind(f.since)
            .bind(f.before.map(|x| x.to_string()))
            .bind(f.limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(|r| read_run(r).map(|x| x.0)).collect()
    }

    /// Log lines of every run of a workspace after seq `after`, oldest first (the live feed).
    pub async fn workspace_logs(
        &self,
        scope: Scope,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogHit>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LOG_COLS}, c.run_id, r.flow_name
             FROM {LOG_FROM}
             JOIN runs r ON r.tenant_id = c.tenant_id AND r.workspace_id = c.workspace_id AND r.id = c.run_id
             WHERE c.tenant_id = $1 AND c.workspace_id = $2 AND c.seq >= $3 / 1024 AND c.seq * 1024 + l.n - 1 > $3
             ORDER BY c.seq, l.n LIMIT $4"
        )))
        .bind(&t)
        .bind(&w)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(LogHit {
                    line: log_record(r),
                    run_id: parse(r.get(6), "run id")?,
                    flow: r.get(7),
                })
            })
            .collect()
    }

    /// Log lines of a workspace matching `q`, newest first.
    pub async fn search_logs(&self, scope: Scope, q: LogQuery) -> Result<Vec<LogHit>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LOG_COLS}, c.run_id, r.flow_name
             FROM {LOG_FROM}
             JOIN runs r ON r.tenant_id = c.tenant_id AND r.workspace_id = c.workspace_id AND r.id = c.run_id
             WHERE c.tenant_id = $1 AND c.workspace_id = $2
               AND ($3::text IS NULL OR c.run_id = $3)
               AND ($4::text IS NULL OR r.flow_id = $4)
               AND ($5::text IS NULL OR l.step_id = $5 OR left(l.step_id, length($5) + 1) = $5 || '[')
               AND ($6::text IS NULL OR l.level = $6)
               AND ($7::text IS NULL OR r.status = $7)
               AND ($8::bigint IS NULL OR l.ts >= $8)
               AND ($9::bigint IS NULL OR l.ts < $9)
               AND ($10::text IS NULL OR strpos(lower(l.message), lower($10)) > 0)
               AND ($11::bigint IS NULL OR (c.seq <= $11 / 1024 AND c.seq * 1024 + l.n - 1 < $11))
               AND ($13::text IS NULL OR l.event = $13)
             ORDER BY c.seq DESC, l.n DESC LIMIT $12"
        )))
        .bind(&t)
        .bind(&w)
        .bind(q.run.map(|r| r.to_string()))
        .bind(q.flow_id.map(|f| f.to_string()))
        .bind(q.step)
        .bind(q.level)
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.since)
        .bind(q.until)
        .bind(q.text)
        .bind(q.before)
        .bind(q.limit as i64)
        .bind(q.event.map(|e| e.as_str()))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                let run: String = r.get(6);
                Ok(LogHit {
                    line: log_record(r),
                    run_id: parse(run, "run id")?,
                    flow: r.get(7),
                })
            })
            .collect()
    }

    /// Log lines of a run after sequence `after`.
    pub async fn run_logs(
        &self,
        scope: Scope,
        run: RunId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {LOG_COLS} FROM {LOG_FROM} WHERE c.tenant_id = $1 AND c.workspace_id = $2 AND c.run_id = $3 AND c.seq >= $4 / 1024 AND c.seq * 1024 + l.n - 1 > $4 ORDER BY c.seq, l.n LIMIT $5")))
            .bind(&t)
            .bind(&w)
            .bind(run.to_string())
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(rows.iter().map(log_record).collect())
    }

    /// System: runs queued or running since before `before`, oldest first.
    pub async fn stuck_runs(
        &self,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut tx = self.system_tx().await?;
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE status IN ('queued', 'running')
               AND COALESCE(started_at, created_at) < $1
             ORDER BY COALESCE(started_at, created_at), id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(|r| Ok(read_run(r)?.0)).collect()
    }

    /// System: how many runs are in each status.
    pub async fn count_runs(&self) -> Result<Vec<(RunStatus, i64)>, StoreError> {
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query("SELECT status, COUNT(*) FROM runs GROUP BY status")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(rows
            .iter()
            .filter_map(|r| RunStatus::parse(&r.get::<String, _>(0)).map(|s| (s, r.get(1))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_sql_and_the_writer_agree_on_lines_per_row() {
        // The readers' SQL spells the factor out; it must be the one the writer splits by.
        let factor = format!("* {LINES_PER_ROW} +");
        assert!(LOG_COLS.contains(&factor), "{LOG_COLS}");
        let mut l = JobLogs::default();
        let lines: Vec<NewLog> = (0..LINES_PER_ROW + 1)
            .map(|i| NewLog::new("info", None, crate::RunEvent::Log, format!("{i}")))
            .collect();
        l.push(0, 7, &lines);
        assert_eq!(l.lo, [1, LINES_PER_ROW as i32 + 1]);
        assert_eq!(l.hi, [LINES_PER_ROW as i32, LINES_PER_ROW as i32 + 1]);
        assert!(l.ts.iter().all(|&t| t == 7));
    }
}
