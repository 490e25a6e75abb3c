//! Poll triggers on PostgreSQL (mirrors `sqlite/polls.rs`). Claims skip rows another worker
//! holds, so each due poll is listed by one worker; the seen set's primary key settles which
//! item starts a run even if two listings overlapped.

use serde_json::Value;
use sqlx::Row;
use weft_types::{FlowId, Millis, Scope};

use super::PgStore;
use super::runs::insert_run_tx;
use super::store::{db, parse};
use super::{pg_json, pg_text};
use crate::*;

fn json_opt(s: Option<String>) -> Result<Option<Value>, StoreError> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
    })
    .transpose()
}

impl PgStore {
    /// Turns a flow's polling on (next poll at `next_at`) or off (`None`); a new poll starts
    /// from `since` (primed when given). An existing one keeps its cursor and seen items.
    pub async fn set_poll(
        &self,
        scope: Scope,
        flow: FlowId,
        next_at: Option<Millis>,
        since: Option<Value>,
    ) -> Result<(), StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        if next_at.is_none() {
            // A listing in flight is dropped: the trigger it was for is gone.
            sqlx::query("UPDATE polls SET next_at = NULL, lease_owner = NULL, lease_until = NULL WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3")
                .bind(&t)
                .bind(&w)
                .bind(flow.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO polls (tenant_id, workspace_id, flow_id, next_at, cursor, primed) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant_id, workspace_id, flow_id) DO UPDATE SET next_at = excluded.next_at",
        )
        .bind(&t)
        .bind(&w)
        .bind(flow.to_string())
        .bind(next_at)
        .bind(since.as_ref().map(|v| v.to_string()))
        .bind(since.is_some())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// System: leases up to `limit` due, unpaused polls to `owner` until `now + lease_ms`.
    pub async fn claim_polls(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: Millis,
        limit: usize,
    ) -> Result<Vec<ClaimedPoll>, StoreError> {
        let mut tx = self.system_tx().await?;
        let rows = sqlx::query(
            "UPDATE polls p SET lease_owner = $1, lease_until = $2
             FROM (SELECT tenant_id, workspace_id, flow_id FROM polls
                   WHERE next_at IS NOT NULL AND next_at <= $3 AND paused IS NULL
                     AND (lease_until IS NULL OR lease_until <= $3)
                   ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED) d
             WHERE p.tenant_id = d.tenant_id AND p.workspace_id = d.workspace_id AND p.flow_id = d.flow_id
             RETURNING p.tenant_id, p.workspace_id, p.flow_id, p.cursor, p.primed",
        )
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedPoll {
                    scope: Scope {
                        tenant: parse(r.try_get(0).map_err(db)?, "tenant id")?,
                        workspace: parse(r.try_get(1).map_err(db)?, "workspace id")?,
                    },
                    flow_id: parse(r.try_get(2).map_err(db)?, "flow id")?,
                    cursor: json_opt(r.try_get(3).map_err(db)?)?,
                    primed: r.try_get(4).map_err(db)?,
                })
            })
            .collect()
    }

    /// Records a poll's result and hands its lease back, in one transaction; `None` when
    /// `owner` no longer holds it (nothing is recorded then).
    pub async fn complete_poll(&self, done: PollDone) -> Result<Option<PollRecorded>, StoreError> {
        let (t, w) = scope_strs(&done.scope);
        let f = done.flow_id.to_string();
        let mut tx = self.tenant_tx(&t).await?;
        let primed: Option<bool> = sqlx::query_scalar(
            "SELECT primed FROM polls WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND lease_owner = $4 AND next_at IS NOT NULL FOR UPDATE",
        )
        .bind(&t)
        .bind(&w)
        .bind(&f)
        .bind(&done.owner)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(primed) = primed else {
            return Ok(None);
        };
        let mut recorded = PollRecorded::default();
        let mut listed = false;
        let mut cursor = None;
        let (mut error, mut paused) = (None, None);
        match &done.outcome {
            PollOutcome::Listed { items, cursor: c } => {
                listed = true;
                cursor = c.as_ref().map(|v| v.to_string());
                let mut plans = Default::default();
                for (key, run) in items {
                    let key = pg_text(key);
                    // New ids insert; known ones refresh their age at most daily.
                    let new: Option<bool> = sqlx::query_scalar(
                        "INSERT INTO poll_seen (tenant_id, workspace_id, flow_id, item_key, seen_at) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (tenant_id, workspace_id, flow_id, item_key) DO UPDATE SET seen_at = excluded.seen_at
                           WHERE poll_seen.seen_at < excluded.seen_at - 86400000
                         RETURNING (xmax = 0)",
                    )
                    .bind(&t)
                    .bind(&w)
                    .bind(&f)
                    .bind(key.as_ref())
                    .bind(done.now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                    if new != Some(true) {
                        recorded.known += 1;
                    } else if primed {
                        let ins =
                            insert_run_tx(&mut tx, run, &pg_json(&run.trigger), &mut plans).await?;
                        if !ins.duplicate {
                            recorded.started.push(ins.run_id);
                        }
                    } else {
                        recorded.learned += 1;
                    }
                }
                sqlx::query("DELETE FROM poll_seen WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND seen_at < $4")
                    .bind(&t)
                    .bind(&w)
                    .bind(&f)
                    .bind(done.now - POLL_SEEN_TTL_MS)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            PollOutcome::Failed(e) => error = Some(pg_text(e).into_owned()),
            PollOutcome::Paused(r) => {
                error = Some(pg_text(r).into_owned());
                paused = error.clone();
            }
        }
        sqlx::query(
            "UPDATE polls SET lease_owner = NULL, lease_until = NULL, next_at = CASE WHEN next_at IS NULL THEN NULL ELSE $5 END,
                cursor = CASE WHEN $6 THEN $7 ELSE cursor END, primed = primed OR $6,
                last_polled_at = $4, last_error = $8, paused = $9, polls = polls + 1, started = started + $10
             WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(&f)
        .bind(done.now)
        .bind(done.next_at)
        .bind(listed)
        .bind(cursor)
        .bind(error)
        .bind(paused)
        .bind(recorded.started.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if !recorded.started.is_empty() {
            self.announce();
        }
        Ok(Some(recorded))
    }

    /// A flow's poll state, if it ever had a poll trigger.
    pub async fn poll_state(
        &self,
        scope: Scope,
        flow: FlowId,
    ) -> Result<Option<PollState>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let r = sqlx::query(
            "SELECT next_at, cursor, primed, paused, last_polled_at, last_error, polls, started,
               (SELECT COUNT(*) FROM poll_seen s WHERE s.tenant_id = p.tenant_id AND s.workspace_id = p.workspace_id AND s.flow_id = p.flow_id)
             FROM polls p WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3",
        )
        .bind(&t)
        .bind(&w)
        .bind(flow.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        r.map(|r| {
            Ok(PollState {
                flow_id: flow,
                next_at: r.try_get(0).map_err(db)?,
                cursor: json_opt(r.try_get(1).map_err(db)?)?,
                primed: r.try_get(2).map_err(db)?,
                paused: r.try_get(3).map_err(db)?,
                last_polled_at: r.try_get(4).map_err(db)?,
                last_error: r.try_get(5).map_err(db)?,
                polls: r.try_get(6).map_err(db)?,
                started: r.try_get(7).map_err(db)?,
                seen: r.try_get(8).map_err(db)?,
            })
        })
        .transpose()
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
        let (t, w) = scope_strs(&scope);
        let detail = serde_json::json!({"since": since});
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "UPDATE polls SET cursor = $4, primed = true, next_at = $5, paused = NULL, lease_owner = NULL, lease_until = NULL
             WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND next_at IS NOT NULL",
        )
        .bind(&t)
        .bind(&w)
        .bind(flow.to_string())
        .bind(since.map(|v| v.to_string()))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let entry = Audit {
            actor,
            action: "flow.backfill",
            object_kind: "flow",
            object_id: flow.to_string(),
            workspace: Some(scope.workspace),
            detail,
        };
        super::store::append(&mut tx, &t, now, &entry).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Resumes the workspace's paused polls (after a credential was fixed), due at `now`.
    pub async fn resume_polls(&self, scope: Scope, now: Millis) -> Result<usize, StoreError> {
        let (t, w) = scope_strs(&scope);
        let mut tx = self.tenant_tx(&t).await?;
        let n = sqlx::query(
            "UPDATE polls SET paused = NULL, next_at = LEAST(next_at, $3)
             WHERE tenant_id = $1 AND workspace_id = $2 AND paused IS NOT NULL AND next_at IS NOT NULL",
        )
        .bind(&t)
        .bind(&w)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n as usize)
    }

    /// System: hands back the poll leases `owner` holds (graceful shutdown), or with `others`,
    /// every lease but `owner`'s.
    pub async fn release_polls(&self, owner: &str, others: bool) -> Result<usize, StoreError> {
        let sql = if others {
            "UPDATE polls SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL AND lease_owner <> $1"
        } else {
            "UPDATE polls SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1"
        };
        let mut tx = self.system_tx().await?;
        let n = sqlx::query(sql)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n as usize)
    }

    /// Item ids of `keys` the flow's poll has seen.
    pub async fn poll_known(
        &self,
        scope: Scope,
        flow: FlowId,
        keys: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        let (t, w) = scope_strs(&scope);
        let keys: Vec<String> = keys.iter().map(|k| pg_text(k).into_owned()).collect();
        let mut tx = self.tenant_tx(&t).await?;
        let known: Vec<String> = sqlx::query_scalar(
            "SELECT item_key FROM poll_seen WHERE tenant_id = $1 AND workspace_id = $2 AND flow_id = $3 AND item_key = ANY($4)",
        )
        .bind(&t)
        .bind(&w)
        .bind(flow.to_string())
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(known)
    }

    /// System: the earliest due time of an unpaused poll.
    pub async fn next_poll_at(&self) -> Result<Option<Millis>, StoreError> {
        let mut tx = self.system_tx().await?;
        let at: Option<Millis> = sqlx::query_scalar(
            "SELECT MIN(GREATEST(next_at, COALESCE(lease_until, 0))) FROM polls WHERE next_at IS NOT NULL AND paused IS NULL",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(at)
    }
}
