//! Poll triggers on SQLite: the per-flow cursor, the lease that lets one poller at a time
//! list items, and the set of item ids already seen.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use weft_types::{FlowId, Millis, Scope};

use super::SqliteStore;
use super::ops::{insert_run_tx, json, parse};
use crate::*;

/// Records items: each one not seen before is remembered and (when `start`) starts its run.
fn record_items(
    c: &Connection,
    t: &str,
    w: &str,
    f: &str,
    items: &[(String, NewRun, String)],
    start: bool,
    now: Millis,
) -> Result<PollRecorded, StoreError> {
    let mut out = PollRecorded::default();
    let mut seen = c.prepare_cached(
        "SELECT seen_at FROM poll_seen WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND item_key = ?4",
    )?;
    for (key, run, trigger) in items {
        let at: Option<Millis> = seen
            .query_row(params![t, w, f, key], |r| r.get(0))
            .optional()?;
        match at {
            Some(at) => {
                out.known += 1;
                // Refreshed at most daily: an item still listed must not be forgotten.
                if now - at > 24 * 3600 * 1000 {
                    c.prepare_cached("UPDATE poll_seen SET seen_at = ?5 WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND item_key = ?4")?
                        .execute(params![t, w, f, key, now])?;
                }
            }
            None => {
                c.prepare_cached("INSERT INTO poll_seen (tenant_id, workspace_id, flow_id, item_key, seen_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![t, w, f, key, now])?;
                if start {
                    let ins = insert_run_tx(c, run, trigger)?;
                    if !ins.duplicate {
                        out.started.push(ins.run_id);
                    }
                } else {
                    out.learned += 1;
                }
            }
        }
    }
    c.prepare_cached("DELETE FROM poll_seen WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND seen_at < ?4")?
        .execute(params![t, w, f, now - POLL_SEEN_TTL_MS])?;
    Ok(out)
}

impl SqliteStore {
    /// Turns a flow's polling on (next poll at `next_at`) or off (`None`); a new poll starts
    /// from `since` (primed when given). An existing one keeps its cursor and seen items.
    pub async fn set_poll(
        &self,
        scope: Scope,
        flow: FlowId,
        next_at: Option<Millis>,
        since: Option<Value>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            if next_at.is_none() {
                // A listing in flight is dropped: the trigger it was for is gone.
                c.execute(
                    "UPDATE polls SET next_at = NULL, lease_owner = NULL, lease_until = NULL WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3",
                    params![t, w, flow.to_string()],
                )?;
                return Ok(());
            }
            let primed = since.is_some();
            c.execute(
                "INSERT INTO polls (tenant_id, workspace_id, flow_id, next_at, cursor, primed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant_id, workspace_id, flow_id) DO UPDATE SET next_at = excluded.next_at",
                params![t, w, flow.to_string(), next_at, since.clone().map(|v| v.to_string()), primed],
            )?;
            Ok(())
        })
        .await
    }

    /// System: leases up to `limit` due, unpaused polls to `owner` until `now + lease_ms`.
    pub async fn claim_polls(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: Millis,
        limit: usize,
    ) -> Result<Vec<ClaimedPoll>, StoreError> {
        let owner = owner.to_string();
        self.write(move |c| {
            let mut st = c.prepare_cached(
                "UPDATE polls SET lease_owner = ?1, lease_until = ?2
                 WHERE rowid IN (SELECT rowid FROM polls WHERE next_at IS NOT NULL AND next_at <= ?3 AND paused IS NULL
                                   AND (lease_until IS NULL OR lease_until <= ?3) ORDER BY next_at LIMIT ?4)
                 RETURNING tenant_id, workspace_id, flow_id, cursor, primed",
            )?;
            let mut rows = st.query(params![owner, now + lease_ms, now, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(ClaimedPoll {
                    scope: Scope {
                        tenant: parse(r.get(0)?, "tenant id")?,
                        workspace: parse(r.get(1)?, "workspace id")?,
                    },
                    flow_id: parse(r.get(2)?, "flow id")?,
                    cursor: json(r.get(3)?)?,
                    primed: r.get(4)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Records a poll's result and hands its lease back, in one transaction; `None` when
    /// `owner` no longer holds it (nothing is recorded then).
    pub async fn complete_poll(&self, done: PollDone) -> Result<Option<PollRecorded>, StoreError> {
        let items: Vec<(String, NewRun, String)> = match &done.outcome {
            PollOutcome::Listed { items, .. } => items
                .iter()
                .map(|(k, r)| (k.clone(), r.clone(), r.trigger.to_string()))
                .collect(),
            _ => Vec::new(),
        };
        self.write(move |c| {
            let (t, w) = scope_strs(&done.scope);
            let f = done.flow_id.to_string();
            // Only the lease holder records, and only while the trigger is on (a backfill or a
            // new trigger meanwhile took the lease away).
            let primed: Option<bool> = c
                .prepare_cached("SELECT primed FROM polls WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND lease_owner = ?4 AND next_at IS NOT NULL")?
                .query_row(params![t, w, f, done.owner], |r| r.get(0))
                .optional()?;
            let Some(primed) = primed else {
                return Ok(None);
            };
            let (recorded, cursor, error, paused) = match &done.outcome {
                PollOutcome::Listed { cursor, .. } => (
                    record_items(c, &t, &w, &f, &items, primed, done.now)?,
                    Some(cursor.as_ref().map(|v| v.to_string())),
                    None,
                    None,
                ),
                PollOutcome::Failed(e) => (PollRecorded::default(), None, Some(e.clone()), None),
                PollOutcome::Paused(r) => (PollRecorded::default(), None, Some(r.clone()), Some(r.clone())),
            };
            let listed = matches!(done.outcome, PollOutcome::Listed { .. });
            c.prepare_cached(
                "UPDATE polls SET lease_owner = NULL, lease_until = NULL, next_at = CASE WHEN next_at IS NULL THEN NULL ELSE ?5 END,
                    cursor = CASE WHEN ?6 THEN ?7 ELSE cursor END, primed = CASE WHEN ?6 THEN 1 ELSE primed END,
                    last_polled_at = ?4, last_error = ?8, paused = ?9, polls = polls + 1, started = started + ?10
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3",
            )?
            .execute(params![
                t,
                w,
                f,
                done.now,
                done.next_at,
                listed,
                cursor.flatten(),
                error,
                paused,
                recorded.started.len() as i64
            ])?;
            Ok(Some(recorded))
        })
        .await
    }

    /// A flow's poll state, if it ever had a poll trigger.
    pub async fn poll_state(
        &self,
        scope: Scope,
        flow: FlowId,
    ) -> Result<Option<PollState>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let f = flow.to_string();
            let row = c
                .prepare_cached(
                    "SELECT next_at, cursor, primed, paused, last_polled_at, last_error, polls, started,
                       (SELECT COUNT(*) FROM poll_seen s WHERE s.tenant_id = p.tenant_id AND s.workspace_id = p.workspace_id AND s.flow_id = p.flow_id)
                     FROM polls p WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3",
                )?
                .query_row(params![t, w, f], |r| {
                    Ok((
                        r.get::<_, Option<Millis>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<Millis>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                })
                .optional()?;
            row.map(|(next_at, cursor, primed, paused, last_polled_at, last_error, polls, started, seen)| {
                Ok(PollState {
                    flow_id: flow,
                    next_at,
                    cursor: json(cursor)?,
                    primed,
                    paused,
                    last_polled_at,
                    last_error,
                    polls,
                    started,
                    seen,
                })
            })
            .transpose()
        })
        .await
    }

    /// Restarts a flow's polling from `since`: the cursor is replaced, items found start runs
    /// (unless already seen), and the next poll is due at `now`. `NotFound` without an active
    /// poll trigger.
    pub async fn backfill_poll(
        &self,
        scope: Scope,
        flow: FlowId,
        since: Option<Value>,
        actor: Actor,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            let detail = serde_json::json!({"since": since});
            let n = c.execute(
                "UPDATE polls SET cursor = ?4, primed = 1, next_at = ?5, paused = NULL, lease_owner = NULL, lease_until = NULL
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND next_at IS NOT NULL",
                params![t, w, flow.to_string(), since.clone().map(|v| v.to_string()), now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            let entry = Audit {
                actor: actor.clone(),
                action: "flow.backfill",
                object_kind: "flow",
                object_id: flow.to_string(),
                workspace: Some(scope.workspace),
                detail,
            };
            super::audit::append(c, &t, now, &entry)
        })
        .await
    }

    /// Resumes the workspace's paused polls (after a credential was fixed), due at `now`.
    pub async fn resume_polls(&self, scope: Scope, now: Millis) -> Result<usize, StoreError> {
        self.write(move |c| {
            let (t, w) = scope_strs(&scope);
            Ok(c.execute(
                "UPDATE polls SET paused = NULL, next_at = MIN(next_at, ?3)
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND paused IS NOT NULL AND next_at IS NOT NULL",
                params![t, w, now],
            )?)
        })
        .await
    }

    /// System: hands back the poll leases `owner` holds (graceful shutdown), or with `others`,
    /// every lease but `owner`'s (the embedded server's start: no other process is alive).
    pub async fn release_polls(&self, owner: &str, others: bool) -> Result<usize, StoreError> {
        let owner = owner.to_string();
        self.write(move |c| {
            let sql = if others {
                "UPDATE polls SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL AND lease_owner <> ?1"
            } else {
                "UPDATE polls SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?1"
            };
            Ok(c.execute(sql, [owner.clone()])?)
        })
        .await
    }

    /// Item ids of `keys` the flow's poll has seen.
    pub async fn poll_known(
        &self,
        scope: Scope,
        flow: FlowId,
        keys: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |c| {
            let (t, w) = scope_strs(&scope);
            let f = flow.to_string();
            let mut st = c.prepare_cached(
                "SELECT 1 FROM poll_seen WHERE tenant_id = ?1 AND workspace_id = ?2 AND flow_id = ?3 AND item_key = ?4",
            )?;
            let mut known = Vec::new();
            for k in keys {
                if st.exists(params![t, w, f, k])? {
                    known.push(k);
                }
            }
            Ok(known)
        })
        .await
    }

    /// System: the earliest due time of an unpaused poll.
    pub async fn next_poll_at(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MIN(MAX(next_at, COALESCE(lease_until, 0))) FROM polls WHERE next_at IS NOT NULL AND paused IS NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }
}
