//! PostgreSQL: durable waits (a run parked until a time, a signal or a child run), signals,
//! event watches, retry in place and sub-flow runs (mirrors `sqlite/waits.rs`; the conformance
//! suite checks they agree).
//!
//! A parked run is `waiting` in `runs` and keeps its `run_queue` row, unleased, with its wake
//! time in `not_before` ([`crate::NO_WAKE`] when only a signal or a child run ends the wait)
//! and `waiting` set; a claim takes it by itself once it is due. Nothing is missed between a
//! park and what ends it: each side locks the parked run's queue row first and reads the
//! other side's rows in a later statement (so after the other transaction committed):
//! - a park updates the queue row, then looks for an awaited signal or finished child;
//! - a signal, and the end of a child run, lock the queue row, then read whether it waits.

use serde_json::{Value, json};
use sqlx::Row;
use weft_types::{Millis, RunId, RunStatus, Scope};

use super::PgStore;
use super::runs::{RUN_COLS, insert_logs, read_run};
use super::store::{Tx, append, db, parse};
use super::{pg_json, pg_text};
use crate::*;

/// Makes the `waiting` runs among `runs` (workspace, run, ready at) of the tenant of `tx` ready;
/// returns how many were waiting. Their queue rows are locked first, by a statement of their
/// own, so that a park that committed meanwhile is seen by the next one.
pub(super) async fn wake_waiting(
    tx: &mut Tx,
    tenant: &str,
    runs: &[(String, String, Millis)],
) -> Result<u64, StoreError> {
    let ws: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    let ids: Vec<&str> = runs.iter().map(|r| r.1.as_str()).collect();
    let nows: Vec<Millis> = runs.iter().map(|r| r.2).collect();
    sqlx::query(
        "SELECT 1 FROM run_queue q JOIN UNNEST($2::text[], $3::text[]) AS i(workspace_id, run_id)
           ON q.workspace_id = i.workspace_id AND q.run_id = i.run_id
         WHERE q.tenant_id = $1 ORDER BY q.workspace_id, q.run_id FOR UPDATE OF q",
    )
    .bind(tenant)
    .bind(&ws)
    .bind(&ids)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    let n = sqlx::query(
        "WITH i AS (SELECT * FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS i(workspace_id, run_id, now)),
         woken AS (
           UPDATE runs r SET status = 'queued' FROM i
           WHERE r.tenant_id = $1 AND r.workspace_id = i.workspace_id AND r.id = i.run_id AND r.status = 'waiting'
           RETURNING r.workspace_id, r.id, i.now)
         UPDATE run_queue q SET not_before = w.now, waiting = false FROM woken w
         WHERE q.tenant_id = $1 AND q.workspace_id = w.workspace_id AND q.run_id = w.id",
    )
    .bind(tenant)
    .bind(&ws)
    .bind(&ids)
    .bind(&nows)
    .execute(&mut **tx)
    .await
    .map_err(db)?
    .rows_affected();
    Ok(n)
}

/// The ids of every run below `run` (its sub-flow runs, theirs, …), deepest first.
pub(super) async fn descendants(
    tx: &mut Tx,
    t: &str,
    w: &str,
    run: &str,
) -> Result<Vec<String>, StoreError> {
    // The depth bound only guards against a cycle no insert makes.
    sqlx::query_scalar(
        "WITH RECURSIVE d(id, depth) AS (
           SELECT id, 1 FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND parent_run = $3
           UNION ALL
           SELECT r.id, d.depth + 1 FROM runs r JOIN d ON r.tenant_id = $1 AND r.workspace_id = $2 AND r.parent_run = d.id
           WHERE d.depth < 1000)
         SELECT id FROM d GROUP BY id ORDER BY MAX(depth) DESC, id",
    )
    .bind(t)
    .bind(w)
    .bind(run)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)
}

/// Cancels the unfinished runs among `runs` (the descendants of a cancelled run, whose queue
/// rows this transaction holds), each with a log line naming its parent; returns how many.
pub(super) async fn cancel_below(
    tx: &mut Tx,
    t: &str,
    w: &str,
    runs: &[String],
    now: Millis,
) -> Result<u64, StoreError> {
    sqlx::query(
        "DELETE FROM run_queue WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = ANY($3)",
    )
    .bind(t)
    .bind(w)
    .bind(runs)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    let n = sqlx::query(
        "WITH c AS (
           UPDATE runs SET status = 'cancelled', finished_at = $4, error = 'cancelled with its parent run ' || parent_run
           WHERE tenant_id = $1 AND workspace_id = $2 AND id = ANY($3) AND status NOT IN ('succeeded', 'failed', 'cancelled')
           RETURNING id, parent_run)
         INSERT INTO run_logs (tenant_id, workspace_id, run_id, ts, level, step_id, message, event)
         SELECT $1, $2, c.id, ARRAY[$4::bigint], ARRAY['warn'], ARRAY[NULL::text],
                ARRAY['cancelled with its parent run ' || c.parent_run], ARRAY['RunCancelled'] FROM c",
    )
    .bind(t)
    .bind(w)
    .bind(runs)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?
    .rows_affected();
    cancel_open_steps(tx, t, w, runs, now).await?;
    Ok(n)
}

/// Marks the unfinished steps (waiting, running, retrying) of cancelled `runs` `cancelled`.
pub(super) async fn cancel_open_steps(
    tx: &mut Tx,
    t: &str,
    w: &str,
    runs: &[String],
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE run_steps SET status = 'cancelled', finished_at = $4
         WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = ANY($3) AND status IN ('waiting', 'running', 'retrying', 'pending')",
    )
    .bind(t)
    .bind(w)
    .bind(runs)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

impl PgStore {
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
        let (t, w) = scope_strs(&scope);
        let rid = run.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let held = sqlx::query(
            "UPDATE run_queue SET lease_owner = NULL, lease_expires = NULL, not_before = $5, waiting = true
             WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND lease_owner = $4",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .bind(owner)
        .bind(wake_at.unwrap_or(NO_WAKE))
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if held == 0 {
            return Ok(false);
        }
        // A later statement than the one that locked the queue row: it sees every signal and
        // child end that committed before.
        let arrived: bool = if awaiting.is_empty() {
            false
        } else {
            let awaiting: Vec<String> = awaiting.iter().map(|a| pg_text(a).into_owned()).collect();
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM run_signals WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND name = ANY($4))
                     OR EXISTS (SELECT 1 FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND parent_run = $3
                                  AND id = ANY($4) AND status IN ('succeeded', 'failed', 'cancelled'))",
            )
            .bind(&t)
            .bind(&w)
            .bind(&rid)
            .bind(&awaiting)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
        };
        if arrived {
            sqlx::query(
                "UPDATE run_queue SET not_before = $4, waiting = false
                 WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3",
            )
            .bind(&t)
            .bind(&w)
            .bind(&rid)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        sqlx::query(
            "UPDATE runs SET status = $4 WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .bind(if arrived { "queued" } else { "waiting" })
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if arrived {
            self.announce();
        }
        Ok(true)
    }

    /// System: makes up to `limit` waiting runs whose wake time is at or before `now` ready;
    /// returns how many. (Their queue rows are due already: a claim may have taken them first.)
    pub async fn wake_runs(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let mut tx = self.system_tx().await?;
        let n = sqlx::query(
            "WITH due AS (
               SELECT tenant_id, workspace_id, run_id FROM run_queue
               WHERE waiting AND lease_owner IS NULL AND not_before <= $1
               ORDER BY not_before LIMIT $2 FOR UPDATE SKIP LOCKED),
             q AS (
               UPDATE run_queue q SET waiting = false FROM due d
               WHERE q.tenant_id = d.tenant_id AND q.workspace_id = d.workspace_id AND q.run_id = d.run_id
               RETURNING q.tenant_id, q.workspace_id, q.run_id)
             UPDATE runs r SET status = 'queued' FROM q
             WHERE r.tenant_id = q.tenant_id AND r.workspace_id = q.workspace_id AND r.id = q.run_id AND r.status = 'waiting'",
        )
        .bind(now)
        .bind(limit as i64)
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

    /// System: the earliest wake time of a waiting run with a timer.
    pub async fn next_wake_at(&self) -> Result<Option<Millis>, StoreError> {
        let mut tx = self.system_tx().await?;
        let at: Option<Millis> = sqlx::query_scalar(
            "SELECT MIN(not_before) FROM run_queue WHERE waiting AND lease_owner IS NULL AND not_before < $1",
        )
        .bind(NO_WAKE)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(at)
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
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        sqlx::query(
            "INSERT INTO event_watches (tenant_id, workspace_id, run_id, event, key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant_id, workspace_id, run_id, event)
             DO UPDATE SET key = excluded.key, created_at = excluded.created_at",
        )
        .bind(&t)
        .bind(&w)
        .bind(run.to_string())
        .bind(pg_text(event).as_ref())
        .bind(key.map(pg_text).as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
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
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        // `key = NULL` is never true: an event without a key finds unkeyed watches only.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT run_id FROM event_watches
             WHERE tenant_id = $1 AND workspace_id = $2 AND event = $3 AND (key IS NULL OR key = $4::text)
             ORDER BY created_at, run_id LIMIT $5",
        )
        .bind(&t)
        .bind(&w)
        .bind(pg_text(event).as_ref())
        .bind(key.map(pg_text).as_deref())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        ids.into_iter().map(|id| parse(id, "run id")).collect()
    }

    /// Forgets that `run` watches `event` (nothing happens when it does not).
    pub async fn unwatch_event(
        &self,
        scope: Scope,
        run: RunId,
        event: &str,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        sqlx::query(
            "DELETE FROM event_watches
             WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND event = $4",
        )
        .bind(&t)
        .bind(&w)
        .bind(run.to_string())
        .bind(pg_text(event).as_ref())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
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
        let (t, w) = scope_strs(&scope);
        let rid = run.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        // The queue row first (the lock order of claims and finishes): while it is held, the
        // run cannot finish or park, and a park that committed before is seen below.
        sqlx::query(
            "SELECT 1 FROM run_queue WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 FOR UPDATE",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let status: String = sqlx::query_scalar(
            "SELECT status FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3",
        )
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
            // Rolled back here, not on drop: a dropped transaction is rolled back later, when
            // its connection goes back to the pool, and until then it holds the queue row's
            // lock, so a claim meanwhile skips the run.
            tx.rollback().await.map_err(db)?;
            return Err(crate::signal_to_finished(status));
        }
        let stored = sqlx::query(
            "INSERT INTO run_signals (tenant_id, workspace_id, run_id, name, payload, created_at)
             VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .bind(pg_text(name).as_ref())
        .bind(pg_json(&payload))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if stored == 0 {
            tx.rollback().await.map_err(db)?;
            return Err(crate::signal_taken(name));
        }
        let log = NewLog::new(
            "info",
            None,
            RunEvent::SignalReceived,
            format!("signal '{}' received", pg_text(name)),
        );
        insert_logs(&mut tx, &t, &w, &rid, now, &[log]).await?;
        let woke = status == RunStatus::Waiting
            && wake_waiting(&mut tx, &t, &[(w.clone(), rid.clone(), now)]).await? > 0;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "run.signal",
                object_kind: "run",
                object_id: rid,
                workspace: Some(scope.workspace),
                detail: json!({"name": name}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        if woke {
            self.announce();
            return Ok(RunStatus::Queued);
        }
        Ok(status)
    }

    /// The signals delivered to a run, oldest first.
    pub async fn run_signals(
        &self,
        scope: Scope,
        run: RunId,
    ) -> Result<Vec<SignalRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let rows = sqlx::query(
            "SELECT name, payload::text, created_at FROM run_signals
             WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 ORDER BY created_at, name",
        )
        .bind(&t)
        .bind(&w)
        .bind(run.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                let payload: String = r.try_get(1).map_err(db)?;
                Ok(SignalRecord {
                    name: r.try_get(0).map_err(db)?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))?,
                    created_at: r.try_get(2).map_err(db)?,
                })
            })
            .collect()
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
        let (t, w) = scope_strs(&scope);
        let rid = run.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        // A failed run has no queue row to lock first; a cancel that races this one finds the
        // new row once it has the run (see `cancel_run`).
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT status, (COALESCE((output->'$weft_payload'->'blob'->>'size')::bigint, LENGTH(output::text), 0)
                    + COALESCE((SELECT SUM(COALESCE((s.output->'$weft_payload'->'blob'->>'size')::bigint, LENGTH(s.output::text)))
                                FROM run_steps s WHERE s.tenant_id = $1 AND s.workspace_id = $2 AND s.run_id = $3), 0))::bigint
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
        if status != RunStatus::Failed {
            return Err(crate::retry_refused(status));
        }
        // A signal consumed by a step that runs again (a rejected approval) is asked anew.
        sqlx::query(
            "DELETE FROM run_signals WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND name IN (
               SELECT step_id FROM run_steps WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND status <> 'succeeded')",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let dropped = sqlx::query(
            "DELETE FROM run_steps WHERE tenant_id = $1 AND workspace_id = $2 AND run_id = $3 AND status <> 'succeeded'",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        sqlx::query(
            "WITH back AS (
               UPDATE runs SET status = 'queued', output = NULL, error = NULL, finished_at = NULL
               WHERE tenant_id = $1 AND workspace_id = $2 AND id = $3 RETURNING tenant_id, workspace_id, id)
             INSERT INTO run_queue (tenant_id, workspace_id, run_id, not_before)
             SELECT tenant_id, workspace_id, id, $4 FROM back",
        )
        .bind(&t)
        .bind(&w)
        .bind(&rid)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
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
        insert_logs(
            &mut tx,
            &t,
            &w,
            &rid,
            now,
            &[NewLog::new(
                "info",
                None,
                RunEvent::RunRetried,
                "retry requested: resuming from the failed step",
            )],
        )
        .await?;
        append(
            &mut tx,
            &t,
            now,
            &Audit {
                actor,
                action: "run.retry",
                object_kind: "run",
                object_id: rid,
                workspace: Some(scope.workspace),
                detail: json!({"dropped_steps": dropped}),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        self.announce();
        Ok(())
    }

    /// The runs `run` started as sub-flows, oldest first.
    pub async fn child_runs(&self, scope: Scope, run: RunId) -> Result<Vec<RunRecord>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND workspace_id = $2 AND parent_run = $3
             ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&t)
            .bind(&w)
            .bind(run.to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(|r| read_run(r).map(|x| x.0)).collect()
    }
}
