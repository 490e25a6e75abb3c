//! Group commit for PostgreSQL: the writes every run makes (intake insert, step checkpoints,
//! finish) are queued to a few writer tasks, each of which runs whatever has queued up in one
//! transaction. One WAL flush then covers many runs instead of one each; with `fsync` on, a
//! flush per write capped the store at a few hundred runs a second.
//!
//! Each job's writes keep their own meaning inside the shared transaction: the row-security
//! tenant is set per job, checks precede writes (a refused job leaves nothing behind), and a
//! database error fails every job of the batch (their callers see a store error, as they
//! would for their own transaction, and nothing of the batch is committed).

use std::sync::Arc;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use weft_types::{Millis, RunId, RunStatus, Scope};

use super::runs::{
    CheckpointRow, FinishRow, checkpoint_many_tx, finish_many_tx, insert_many_tx, insert_run_tx,
    plan_limits,
};
use super::store::db;
use crate::{Inserted, NewLog, NewRun, StepCheckpoint, StoreError};

/// Most jobs in one transaction.
const MAX_BATCH: usize = 64;
/// Writer tasks (each holds a pool connection while it writes).
const WRITERS: usize = 3;

/// One queued write and where its answer goes.
pub(super) enum Job {
    Insert {
        run: NewRun,
        reply: oneshot::Sender<Result<Inserted, StoreError>>,
    },
    Checkpoint {
        scope: Scope,
        run: RunId,
        owner: String,
        cps: Vec<StepCheckpoint>,
        now: Millis,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Finish {
        scope: Scope,
        run: RunId,
        owner: String,
        steps: Vec<StepCheckpoint>,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        logs: Vec<NewLog>,
        now: Millis,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

impl Job {
    /// The order jobs run in within a batch: by tenant, then delivery key. Concurrent batches
    /// then take per-tenant locks (plan checks, the audit head) and dedupe-key index entries
    /// in one order, which keeps them from deadlocking on each other in the common cases (the
    /// rest is retried).
    fn order_key(&self) -> (String, u8, String, String, String) {
        match self {
            // Finishes and checkpoints first: they lock a queue row, then its run, as claims
            // and cancels do, before any insert of the batch takes the tenant's audit head.
            // Checkpoints come together so that they go in one statement.
            Job::Checkpoint { scope, .. } => (
                scope.tenant.to_string(),
                0,
                String::new(),
                String::new(),
                String::new(),
            ),
            Job::Finish { scope, .. } => (
                scope.tenant.to_string(),
                1,
                String::new(),
                String::new(),
                String::new(),
            ),
            Job::Insert { run, .. } => (
                run.scope.tenant.to_string(),
                2,
                run.scope.workspace.to_string(),
                run.flow_id.to_string(),
                run.dedupe_key.clone().unwrap_or_default(),
            ),
        }
    }

    fn tenant(&self) -> String {
        match self {
            Job::Insert { run, .. } => run.scope.tenant.to_string(),
            Job::Checkpoint { scope, .. } | Job::Finish { scope, .. } => scope.tenant.to_string(),
        }
    }

    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (Job::Insert { reply, .. }, Outcome::Insert(r)) => {
                let _ = reply.send(r);
            }
            (Job::Checkpoint { reply, .. } | Job::Finish { reply, .. }, Outcome::Bool(r)) => {
                let _ = reply.send(r);
            }
            (job, _) => job.fail(&StoreError::Db("internal: mismatched batch answer".into())),
        }
    }

    fn fail(self, e: &StoreError) {
        match self {
            Job::Insert { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Job::Checkpoint { reply, .. } | Job::Finish { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// A job's result, held until its batch has committed.
enum Outcome {
    Insert(Result<Inserted, StoreError>),
    Bool(Result<bool, StoreError>),
}

/// Attempts of a batch the database asked to retry.
const ATTEMPTS: usize = 3;

/// Starts the writer tasks; they end when every sender is dropped.
pub(super) fn start(pool: PgPool, announce: mpsc::Sender<()>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>(4096);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WRITERS {
        let (pool, rx, announce) = (pool.clone(), rx.clone(), announce.clone());
        tokio::spawn(async move {
            loop {
                let mut jobs = Vec::new();
                {
                    let mut rx = rx.lock().await;
                    match rx.recv().await {
                        Some(j) => jobs.push(j),
                        None => return,
                    }
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                }
                let readied = run_batch(&pool, jobs).await;
                if readied {
                    let _ = announce.try_send(());
                }
            }
        });
    }
    tx
}

/// Runs `jobs` in one transaction and answers each; true when a run was made ready (inserted,
/// or a parent woken by the end of its sub-flow run). When the batch fails for a reason other
/// than a deadlock, each job is run again on its own, so one job whose data the database
/// rejects fails alone instead of taking the others with it.
async fn run_batch(pool: &PgPool, mut jobs: Vec<Job>) -> bool {
    jobs.sort_by_cached_key(Job::order_key);
    match with_retries(pool, &jobs).await {
        Ok((outcomes, woke)) => answer_all(jobs, outcomes) | woke,
        // Only an error about some job's data is worth splitting the batch for.
        Err(e) if jobs.len() == 1 || !matches!(e, StoreError::Db(_)) => {
            for job in jobs {
                job.fail(&e);
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "a batch of writes failed; writing its jobs one by one");
            let mut readied = false;
            for job in jobs {
                match with_retries(pool, std::slice::from_ref(&job)).await {
                    Ok((outcomes, woke)) => readied |= answer_all(vec![job], outcomes) | woke,
                    Err(e) => job.fail(&e),
                }
            }
            readied
        }
    }
}

/// Answers each job with its outcome; true when a run was inserted.
fn answer_all(jobs: Vec<Job>, outcomes: Vec<Outcome>) -> bool {
    let inserted = outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Insert(Ok(i)) if !i.duplicate));
    for (job, o) in jobs.into_iter().zip(outcomes) {
        job.answer(o);
    }
    inserted
}

/// [`attempt_batch`], again when the database asks for a retry (deadlock, serialization).
async fn with_retries(pool: &PgPool, jobs: &[Job]) -> Result<(Vec<Outcome>, bool), StoreError> {
    let mut attempt = 1;
    loop {
        match attempt_batch(pool, jobs).await {
            Err(StoreError::Busy(m)) if attempt < ATTEMPTS => {
                tracing::debug!(error = %m, attempt, "retrying a batch of writes");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One attempt: every job in one transaction, committed, and whether a finish woke a waiting
/// parent run; or the error that undid them all.
async fn attempt_batch(pool: &PgPool, jobs: &[Job]) -> Result<(Vec<Outcome>, bool), StoreError> {
    let mut tx = pool.begin().await.map_err(db)?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut woke = false;
    let mut current: Option<String> = None;
    let mut plans = super::runs::PlanCache::new();
    let mut i = 0;
    while i < jobs.len() {
        let job = &jobs[i];
        let tenant = job.tenant();
        if current.as_deref() != Some(tenant.as_str()) {
            sqlx::query("SELECT set_config('weft.tenant_id', $1, true)")
                .bind(&tenant)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            current = Some(tenant.clone());
        }
        // A run of checkpoints of one tenant (one or more): one statement for all of them.
        let group: Vec<CheckpointRow<'_>> = jobs[i..]
            .iter()
            .map_while(|j| match j {
                Job::Checkpoint {
                    scope,
                    run,
                    owner,
                    cps,
                    now,
                    ..
                } if scope.tenant.to_string() == tenant => Some(CheckpointRow {
                    scope,
                    run: *run,
                    owner,
                    cps,
                    now: *now,
                }),
                _ => None,
            })
            .collect();
        if !group.is_empty() {
            let held = checkpoint_many_tx(&mut tx, &tenant, &group).await?;
            i += group.len();
            outcomes.extend(held.into_iter().map(|h| Outcome::Bool(Ok(h))));
            continue;
        }
        // A run of plain inserts (no delivery key, no audit, no parent) for a tenant without run
        // or byte limits: one statement too. Others take the path with their checks.
        if matches!(job, Job::Insert { run, .. } if run.dedupe_key.is_none() && run.audit.is_none() && run.parent.is_none())
            && plan_limits(&mut tx, &tenant, &mut plans).await? == (None, None)
        {
            let month = |r: &NewRun| crate::quota::month_of(r.now);
            let first_month = match job {
                Job::Insert { run, .. } => month(run),
                _ => String::new(),
            };
            let plain: Vec<(&NewRun, String)> = jobs[i..]
                .iter()
                .map_while(|j| match j {
                    Job::Insert { run, .. }
                        if run.scope.tenant.to_string() == tenant
                            && run.dedupe_key.is_none()
                            && run.audit.is_none()
                            && run.parent.is_none()
                            && month(run) == first_month =>
                    {
                        Some((run, super::pg_json(&run.trigger)))
                    }
                    _ => None,
                })
                .collect();
            if !plain.is_empty() {
                let results = insert_many_tx(&mut tx, &tenant, &plain).await?;
                i += plain.len();
                outcomes.extend(results.into_iter().map(Outcome::Insert));
                continue;
            }
        }
        // Likewise a run of finishes.
        let finishes: Vec<FinishRow<'_>> = jobs[i..]
            .iter()
            .map_while(|j| match j {
                Job::Finish {
                    scope,
                    run,
                    owner,
                    steps,
                    status,
                    output,
                    error,
                    logs,
                    now,
                    ..
                } if scope.tenant.to_string() == tenant => Some(FinishRow {
                    scope,
                    run: *run,
                    owner,
                    steps,
                    status: *status,
                    output: output.as_ref(),
                    error: error.as_deref(),
                    logs,
                    now: *now,
                }),
                _ => None,
            })
            .collect();
        if !finishes.is_empty() {
            let (done, parents_woken) = finish_many_tx(&mut tx, &tenant, &finishes).await?;
            woke |= parents_woken;
            i += finishes.len();
            outcomes.extend(done.into_iter().map(|d| Outcome::Bool(Ok(d))));
            continue;
        }
        i += 1;
        // Checkpoints and finishes went in their grouped statements above; what is left is an
        // insert with its own checks (delivery key, audit entry, plan limits) or a parent run.
        let Job::Insert { run, .. } = job else {
            return Err(StoreError::Db(
                "internal: a batch job was left ungrouped".into(),
            ));
        };
        let trigger = super::pg_json(&run.trigger);
        let outcome = Outcome::Insert(insert_run_tx(&mut tx, run, &trigger, &mut plans).await);
        let err = match &outcome {
            Outcome::Insert(Err(e)) | Outcome::Bool(Err(e)) => Some(e.clone()),
            _ => None,
        };
        if let Some(e) = err {
            match e {
                // These abort the transaction (and so every job in it).
                StoreError::Db(_)
                | StoreError::Busy(_)
                | StoreError::Unavailable(_)
                | StoreError::Corrupt(_)
                | StoreError::Closed => {
                    return Err(e);
                }
                // A refusal the job reported before writing; but a database-raised conflict
                // would have aborted the transaction: make sure it is still usable.
                _ => {
                    sqlx::query("SELECT 1")
                        .execute(&mut *tx)
                        .await
                        .map_err(|_| e)?;
                }
            }
        }
        outcomes.push(outcome);
    }
    tx.commit().await.map_err(db)?;
    Ok((outcomes, woke))
}
