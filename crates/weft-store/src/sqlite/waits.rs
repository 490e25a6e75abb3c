//! SQLite: durable waits (a run parked until a time, a signal or a child run), signals, event
//! watches, retry in place and sub-flow runs (mirrors `postgres/waits.rs`; the conformance
//! suite checks they agree).
//!
//! The queue is `runs` itself: a parked run is `waiting`, its wake time in `not_before`
//! ([`crate::NO_WAKE`] when only a signal or a child run ends the wait). Claims take `queued`
//! runs only, so a waiting run comes back through `wake_runs`, a signal, or the end of an
//! awaited child. Every write is one closure on the writer thread, so a signal, a child's end
//! and a park cannot interleave: none is missed.

use rusqlite::{Connection, params};
use serde_json::{Value, json};
use weft_types::{Millis, RunId, RunStatus, Scope};

use super::SqliteStore;
use super::audit::append;
use super::ops::{RUN_COLS, STEP_BYTES, insert_logs, json, parse, read_run};
use crate::model::*;
use crate::{NO_WAKE, StoreError, scope_strs};

/// Makes `run` ready now if it is waiting; true when it was.
pub(super) fn wake_if_waiting(
    c: &Connection,
    t: &str,
    w: &str,
    run: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached(
            "UPDATE runs SET status = 'queued', not_before = ?4
             WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND status = 'waiting'",
        )?
        .execute(params![t, w, run, now])?;
    Ok(n > 0)
}

/// Marks a cancelled run's unfinished steps (waiting, running, retrying) `cancelled`.
pub(super) fn cancel_open_steps(
    c: &Connection,
    t: &str,
    w: &str,
    run: &str,
    now: Millis,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE run_steps SET status = 'cancelled', finished_at = ?4
         WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 AND status IN ('waiting', 'running', 'retrying', 'pending')",
    )?
    .execute(params![t, w, run, now])?;
    Ok(())
}

/// Cancels every unfinished run below `run` (its children, their children, …), each with a
/// log line naming its parent; returns how many.
pub(super) fn cancel_descendants(
    c: &Connection,
    t: &str,
    w: &str,
    run: &str,
    now: Millis,
) -> Result<usize, StoreError> {
    let mut st = c.prepare_cached(
        "WITH RECURSIVE d(id) AS (
           SELECT id FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND parent_run = ?3
           UNION
           SELECT r.id FROM runs r JOIN d ON r.parent_run = d.id WHERE r.tenant_id = ?1 AND r.workspace_id = ?2)
         UPDATE runs SET status = 'cancelled', finished_at = ?4, error = 'cancelled with its parent run ' || parent_run,
           lease_owner = NULL, lease_expires = NULL
         WHERE tenant_id = ?1 AND workspace_id = ?2 AND id IN (SELECT id FROM d)
           AND status NOT IN ('succeeded', 'failed', 'cancelled')
         RETURNING id, parent_run",
    )?;
    let cancelled: Vec<(String, Option<String>)> = st
        .query_map(params![t, w, run, now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    drop(st);
    for (id, parent) in &cancelled {
        cancel_open_steps(c, t, w, id, now)?;
        let log = NewLog::new(
            "warn",
            None,
            RunEvent::RunCancelled,
            format!(
                "cancelled with its parent run {}",
                parent.as_deref().unwrap_or_default()
            ),
        );
        insert_logs(c, t, w, id, now, &[log])?;
    }
    Ok(cancelled.len())
}

/// Whether something `run` awaits has arrived: a signal named in `awaiting` (a JSON array), or
/// the end of a child run whose id is in it.
fn awaited_arrived(
    c: &Connection,
    t: &str,
    w: &str,
    run: &str,
    awaiting: &str,
) -> Result<bool, StoreError> {
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM run_signals WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3
                          AND name IN (SELECT value FROM json_each(?4)))
             OR EXISTS (SELECT 1 FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND parent_run = ?3
                          AND id IN (SELECT value FROM json_each(?4)) AND status IN ('succeeded', 'failed', 'cancelled'))",
    )?
    .query_row(params![t, w, run, awaiting], |r| r.get(0))?)
}

impl SqliteStore {
    /// Parks a run `owner` holds: `waiting` until `wake_at` (`None`: no timer), or until a signal
    /// named in `awaiting` arrives or a child run whose id is in `awaiting` ends. When one of
    /// those already has, the run is ready again at once instead. False (nothing changed) when
    /// `owner` does not hold the run.
    pub async fn park_run(
        &self,
        scope: Scope,
        run: RunId,
        owner: &str,
        wake_at: Option<Millis>,
        awaiting: Vec<String>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        let awaiting = (!awaiting.is_empty()).then(|| json!(awaiting).to_string());
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let n = c
                .prepare_cached(
                    "UPDATE runs SET status = 'waiting', lease_owner = NULL, lease_expires = NULL, not_before = ?5
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3 AND status = 'running' AND lease_owner = ?4",
                )?
                .execute(params![t, w, rid, owner, wake_at.unwrap_or(NO_WAKE)])?;
            if n == 0 {
                return Ok(false);
            }
            if let Some(awaiting) = &awaiting
                && awaited_arrived(c, &t, &w, &rid, awaiting)?
            {
                wake_if_waiting(c, &t, &w, &rid, now)?;
            }
            Ok(true)
        })
        .await
    }

    /// System: makes up to `limit` waiting runs whose wake time is at or before `now` ready;
    /// returns how many.
    pub async fn wake_runs(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE runs SET status = 'queued' WHERE rowid IN (
                   SELECT rowid FROM runs WHERE status = 'waiting' AND not_before <= ?1 ORDER BY not_before LIMIT ?2)",
            )?
            .execute(params![now, limit as i64])?)
        })
        .await
    }

    /// System: the earliest wake time of a waiting run with a timer.
    pub async fn next_wake_at(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT MIN(not_before) FROM runs WHERE status = 'waiting' AND not_before < ?1",
            )?
            .query_row([NO_WAKE], |r| r.get(0))?)
        })
        .await
    }

    /// Records that `run` waits for the event `event` with `key` (any key when `None`); a second
    /// call for the same run and event replaces the key and time.
    pub async fn watch_event(
        &self,
        scope: Scope,
        run: RunId,
        event: &str,
        key: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let event = event.to_string();
        let key = key.map(str::to_string);
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            c.prepare_cached(
                "INSERT INTO event_watches (tenant_id, workspace_id, run_id, event, key, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant_id, workspace_id, run_id, event)
                 DO UPDATE SET key = excluded.key, created_at = excluded.created_at",
            )?
            .execute(params![t, w, run.to_string(), event, key, now])?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` runs watching `event` with no key or exactly `key` (`None`: unkeyed watches
    /// only), oldest watch first.
    pub async fn event_watchers(
        &self,
        scope: Scope,
        event: &str,
        key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunId>, StoreError> {
        let event = event.to_string();
        let key = key.map(str::to_string);
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            // `key = NULL` is never true: an event without a key finds unkeyed watches only.
            let mut st = c.prepare_cached(
                "SELECT run_id FROM event_watches
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND event = ?3 AND (key IS NULL OR key = ?4)
                 ORDER BY created_at, run_id LIMIT ?5",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut rows = st.query(params![t, w, event, key, limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(parse(r.get(0)?, "run id")?);
            }
            Ok(out)
        })
        .await
    }

    /// Forgets that `run` watches `event` (nothing happens when it does not).
    pub async fn unwatch_event(
        &self,
        scope: Scope,
        run: RunId,
        event: &str,
    ) -> Result<(), StoreError> {
        let event = event.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            c.prepare_cached(
                "DELETE FROM event_watches
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 AND event = ?4",
            )?
            .execute(params![t, w, run.to_string(), event])?;
            Ok(())
        })
        .await
    }

    /// Delivers the signal `name` to an unfinished run (once per name) and makes the run ready
    /// now if it is waiting; returns its status afterwards.
    pub async fn signal_run(
        &self,
        scope: Scope,
        run: RunId,
        name: &str,
        payload: Value,
        actor: Actor,
        now: Millis,
    ) -> Result<RunStatus, StoreError> {
        let name = name.to_string();
        let payload = payload.to_string();
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let status: String = c
                .prepare_cached(
                    "SELECT status FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                )?
                .query_row(params![t, w, rid], |r| r.get(0))?;
            let status = RunStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?;
            if status.is_terminal() {
                return Err(crate::signal_to_finished(status));
            }
            let n = c
                .prepare_cached(
                    "INSERT INTO run_signals (tenant_id, workspace_id, run_id, name, payload, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                )?
                .execute(params![t, w, rid, name, payload, now])?;
            if n == 0 {
                return Err(crate::signal_taken(&name));
            }
            let log = NewLog::new(
                "info",
                None,
                RunEvent::SignalReceived,
                format!("signal '{name}' received"),
            );
            insert_logs(c, &t, &w, &rid, now, &[log])?;
            let after = if wake_if_waiting(c, &t, &w, &rid, now)? {
                RunStatus::Queued
            } else {
                status
            };
            append(
                c,
                &t,
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "run.signal",
                    object_kind: "run",
                    object_id: rid,
                    workspace: Some(scope.workspace),
                    detail: json!({"name": name}),
                },
            )?;
            Ok(after)
        })
        .await
    }

    /// The signals delivered to a run, oldest first.
    pub async fn run_signals(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<Vec<SignalRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let mut st = c.prepare_cached(
                "SELECT name, payload, created_at FROM run_signals
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 ORDER BY created_at, name",
            )?;
            let mut rows = st.query(params![t, w, run.to_string()])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(SignalRecord {
                    name: r.get(0)?,
                    payload: json(r.get(1)?)?.unwrap_or(Value::Null),
                    created_at: r.get(2)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Queues a failed run again, keeping its succeeded steps (their outputs are reused) and
    /// dropping the rest; the bytes charged when it failed are given back (its next end charges
    /// them again). Not a new run: the monthly count is unchanged.
    pub async fn retry_run(
        &self,
        scope: Scope,
        run: RunId,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let rid = run.to_string();
            let (status, output_bytes): (String, i64) = c
                .prepare_cached(
                    "SELECT status, COALESCE(json_extract(output, '$.\"$weft_payload\".blob.size'), LENGTH(output), 0)
                     FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
                )?
                .query_row(params![t, w, rid], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let status = RunStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad run status {status}")))?;
            if status != RunStatus::Failed {
                return Err(crate::retry_refused(status));
            }
            let step_bytes: i64 = c
                .prepare_cached(STEP_BYTES)?
                .query_row(params![t, w, rid], |r| r.get(0))?;
            // A signal consumed by a step that runs again (a rejected approval) is asked anew.
            c.prepare_cached(
                "DELETE FROM run_signals WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 AND name IN (
                   SELECT step_id FROM run_steps WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 AND status <> 'succeeded')",
            )?
            .execute(params![t, w, rid])?;
            let dropped = c
                .prepare_cached(
                    "DELETE FROM run_steps WHERE tenant_id = ?1 AND workspace_id = ?2 AND run_id = ?3 AND status <> 'succeeded'",
                )?
                .execute(params![t, w, rid])?;
            c.prepare_cached(
                "UPDATE runs SET status = 'queued', output = NULL, error = NULL, finished_at = NULL, not_before = ?4,
                   lease_owner = NULL, lease_expires = NULL
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND id = ?3",
            )?
            .execute(params![t, w, rid, now])?;
            c.prepare_cached(
                "UPDATE tenant_usage SET stored_bytes = MAX(0, stored_bytes - ?2) WHERE tenant_id = ?1",
            )?
            .execute(params![t, step_bytes + output_bytes])?;
            let log = NewLog::new(
                "info",
                None,
                RunEvent::RunRetried,
                "retry requested: resuming from the failed step",
            );
            insert_logs(c, &t, &w, &rid, now, &[log])?;
            append(
                c,
                &t,
                now,
                &Audit {
                    actor: actor.clone(),
                    action: "run.retry",
                    object_kind: "run",
                    object_id: rid,
                    workspace: Some(scope.workspace),
                    detail: json!({"dropped_steps": dropped}),
                },
            )?;
            Ok(())
        })
        .await
    }

    /// The runs `run` started as sub-flows, oldest first.
    pub async fn child_runs(&self, scope: Scope, run: RunId) -> Result<Vec<RunRecord>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let sql = format!(
                "SELECT {RUN_COLS} FROM runs WHERE tenant_id = ?1 AND workspace_id = ?2 AND parent_run = ?3
                 ORDER BY created_at, id"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![t, w, run.to_string()])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(read_run(r)?.0);
            }
            Ok(out)
        })
        .await
    }
}
