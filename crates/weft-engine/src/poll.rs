//! Poll triggers: a due poll is leased to one process, which calls the listing action, picks
//! out the items, and records in one transaction the runs of the items never seen before, the
//! new cursor and the next poll time. The cursor and the seen ids belong to the flow, so they
//! survive restarts and new versions; the lease makes each poll happen once across workers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use weft_flow::{PollSpec, TriggerKind};
use weft_store::{ClaimedPoll, NewRun, PollDone, PollOutcome, StoreError};
use weft_types::{Millis, RunId};

use crate::Inner;
use crate::invoke::{ActionCall, invoke};

/// Longest the poller sleeps without looking for due polls.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long a claimed poll is ours; a worker that dies mid-poll frees it after this. Longer
/// than a whole poll can take: the listing's limit plus recording it.
const LEASE: Duration = Duration::from_secs(900);
/// A listing that takes longer than this is abandoned (and recorded as failed); above the
/// longest `http.request` timeout (300 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(330);
/// Polls running at once in one process.
const MAX_POLLS_IN_FLIGHT: usize = 8;
/// Most items one listing may return.
pub const MAX_POLL_ITEMS: usize = 10_000;
/// Item ids longer than this are remembered by their hash.
const MAX_KEY_LEN: usize = 200;

pub(crate) async fn poller(inner: Arc<Inner>) {
    let slots = Arc::new(Semaphore::new(MAX_POLLS_IN_FLIGHT));
    loop {
        let mut failed = false;
        let free = slots.available_permits();
        if free > 0 {
            let now = inner.now();
            match inner
                .opts
                .store
                .claim_polls(&inner.opts.owner, now, LEASE.as_millis() as Millis, free)
                .await
            {
                Ok(claimed) => {
                    for c in claimed {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            poll_once(&inner, c).await;
                            drop(permit);
                            inner.poll_wake.notify_one();
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming polls failed");
                    failed = true;
                }
            }
        }
        // Due and not leased (leases count in `next_poll_at`): claim again at once, unless
        // every slot is busy (a finished poll wakes this loop) or the store is failing.
        let wait = match inner.opts.store.next_poll_at().await {
            Ok(Some(at)) => (at - inner.now()).clamp(0, MAX_SLEEP.as_millis() as i64) as u64,
            _ => MAX_SLEEP.as_millis() as u64,
        };
        if wait == 0 && !failed && slots.available_permits() > 0 {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = match (wait, failed) {
            (_, true) => Duration::from_secs(1),
            (0, false) => MAX_SLEEP,
            (ms, false) => Duration::from_millis(ms),
        };
        tokio::select! {
            _ = inner.opts.clock.sleep(sleep) => {},
            _ = inner.poll_wake.notified() => {},
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

impl crate::Engine {
    /// A flow's poll state: cursor, next poll, last error, counts. `NotFound` when the flow
    /// never had a poll trigger.
    pub async fn poll_state(
        &self,
        scope: weft_types::Scope,
        flow: &crate::FlowRef,
    ) -> Result<weft_store::PollState, crate::EngineError> {
        let rec = self.get_flow(scope, flow).await?;
        self.store()
            .poll_state(scope, rec.id)
            .await?
            .ok_or(crate::EngineError::NotFound("poll trigger"))
    }

    /// Restarts a flow's polling from `since` (its cursor): the next poll is due now, and
    /// the items it lists start runs unless they were seen before.
    pub async fn backfill_poll(
        &self,
        scope: weft_types::Scope,
        flow: &crate::FlowRef,
        since: Option<Value>,
        actor: weft_store::Actor,
    ) -> Result<weft_store::PollState, crate::EngineError> {
        let rec = self.get_flow(scope, flow).await?;
        self.store()
            .backfill_poll(scope, rec.id, since, actor, self.inner.now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound => crate::EngineError::Conflict(format!(
                    "flow '{}' has no published poll trigger to backfill",
                    rec.name
                )),
                other => other.into(),
            })?;
        // The state as the backfill left it, read before waking the poller: woken first, a
        // poll could move the cursor on before this read.
        let state = self.poll_state(scope, flow).await;
        self.inner.poll_wake.notify_one();
        state
    }
}

/// Polls one claimed trigger and records the outcome (which also hands the lease back).
pub(crate) async fn poll_once(inner: &Arc<Inner>, c: ClaimedPoll) {
    let now = inner.now();
    let target = match target(inner, &c).await {
        Ok(t) => t,
        Err(Stop::Gone) => {
            // No published poll trigger any more: stop polling (state kept for a comeback).
            let _ = inner
                .opts
                .store
                .set_poll(c.scope, c.flow_id, None, None)
                .await;
            return;
        }
        Err(Stop::Failed(msg, every) | Stop::Paused(msg, every)) => {
            record(
                inner,
                &c,
                PollOutcome::Failed(msg),
                now + every.as_millis() as Millis,
            )
            .await;
            return;
        }
    };
    let Some(spec) = target.spec() else { return };
    let next_at = now + spec.every.as_millis() as Millis;
    let listed = tokio::select! {
        r = list(inner, &c, &target, spec, now) => Some(r),
        _ = inner.opts.clock.sleep(POLL_TIMEOUT) => None,
    };
    let outcome = match listed {
        Some(Ok(outcome)) => outcome,
        Some(Err(Stop::Failed(msg, _))) => PollOutcome::Failed(msg),
        Some(Err(Stop::Paused(msg, _))) => PollOutcome::Paused(msg),
        Some(Err(Stop::Gone)) => return,
        None => PollOutcome::Failed(format!(
            "the listing took longer than {}s and was abandoned",
            POLL_TIMEOUT.as_secs()
        )),
    };
    record(inner, &c, outcome, next_at).await;
}

/// Records a poll's outcome and hands the lease back (the task that ran the poll then wakes
/// the poller, which slept while the lease was held).
async fn record(inner: &Arc<Inner>, c: &ClaimedPoll, outcome: PollOutcome, next_at: Millis) {
    let (outcome_name, failed) = match &outcome {
        PollOutcome::Listed { .. } => ("listed", None),
        PollOutcome::Failed(m) => ("failed", Some(m.clone())),
        PollOutcome::Paused(m) => ("paused", Some(m.clone())),
    };
    let done = |outcome| PollDone {
        scope: c.scope,
        flow_id: c.flow_id,
        owner: inner.opts.owner.clone(),
        now: inner.now(),
        next_at,
        outcome,
    };
    match inner.opts.store.complete_poll(done(outcome)).await {
        Ok(Some(rec)) => {
            if let Some(m) = &failed {
                tracing::warn!(flow = %c.flow_id, error = %m, "poll failed");
            } else {
                tracing::debug!(flow = %c.flow_id, started = rec.started.len(), known = rec.known, learned = rec.learned, "polled");
            }
            if !rec.started.is_empty() {
                inner.wake.notify_one();
            }
            inner
                .metrics
                .polls
                .get_or_create(&crate::metrics::OutcomeLabels {
                    outcome: outcome_name,
                })
                .inc();
            inner.metrics.poll_runs.inc_by(rec.started.len() as u64);
            let _ = inner.events.send(crate::EngineEvent::Polled {
                flow: c.flow_id,
                started: rec.started.len(),
                error: failed,
            });
        }
        Ok(None) => {
            tracing::info!(flow = %c.flow_id, "poll result dropped: its lease was taken back (a backfill, a changed trigger, or another worker after expiry)")
        }
        Err(e) => {
            // Over its plan, or a run the store refused: nothing of this listing was kept; say
            // why on the trigger and try again at the next interval.
            let why = match &e {
                StoreError::Quota { detail, .. } => detail.clone(),
                other => format!("recording the poll failed: {other}"),
            };
            tracing::warn!(flow = %c.flow_id, error = %why, "poll not recorded");
            let _ = inner
                .opts
                .store
                .complete_poll(done(PollOutcome::Failed(why)))
                .await;
        }
    }
}

/// What a claimed poll polls: its flow's published version, whose trigger is a poll.
struct Target {
    flow_name: String,
    version: i64,
    compiled: Arc<weft_flow::CompiledFlow>,
}

impl Target {
    /// The poll trigger (`target` only builds a Target around one).
    fn spec(&self) -> Option<&PollSpec> {
        match &self.compiled.trigger {
            TriggerKind::Poll(p) => Some(p),
            _ => None,
        }
    }
}

async fn target(inner: &Arc<Inner>, c: &ClaimedPoll) -> Result<Target, Stop> {
    let flow = inner
        .opts
        .store
        .get_flow(c.scope, &c.flow_id.to_string())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => Stop::Gone,
            other => Stop::Failed(other.to_string(), MAX_SLEEP),
        })?;
    let version = flow.published_version.ok_or(Stop::Gone)?;
    let compiled = inner
        .compiled(c.scope, c.flow_id, version)
        .await
        .map_err(|e| Stop::Failed(e.to_string(), MAX_SLEEP))?;
    let target = Target {
        flow_name: flow.name,
        version,
        compiled,
    };
    match target.spec() {
        Some(_) => Ok(target),
        None => Err(Stop::Gone),
    }
}

/// Why a poll stopped before listing.
enum Stop {
    /// The listing failed; try again after the interval.
    Failed(String, Duration),
    /// A credential needs a person: no more polls until it is fixed.
    Paused(String, Duration),
    /// The flow has no published poll trigger any more.
    Gone,
}

async fn list(
    inner: &Arc<Inner>,
    c: &ClaimedPoll,
    target: &Target,
    spec: &PollSpec,
    now: Millis,
) -> Result<PollOutcome, Stop> {
    let compiled = &target.compiled;
    let fail = |m: String| Stop::Failed(m, spec.every);
    let ctx = json!({
        "cursor": c.cursor.clone().unwrap_or(Value::Null),
        "vars": compiled.vars,
        "now": weft_types::rfc3339(now),
    });
    let input = inner
        .render(&spec.input, &ctx)
        .await
        .map_err(|m| fail(format!("input: {m}")))?;
    let key = format!("poll:{}:{now}", c.flow_id);
    let output = invoke(
        inner,
        &ActionCall {
            scope: c.scope,
            connector: &spec.connector,
            action: &spec.action,
            version: spec.version.as_deref(),
            input: &input,
            credential: spec.credential.as_deref(),
            key: &key,
            step_limit: None,
        },
    )
    .await;
    let output = match output {
        Ok(v) => v,
        Err(e) => return Err(action_failed(inner, c, spec, e.message).await),
    };
    let items = match &spec.items {
        Some(e) => inner
            .eval(e, &output)
            .await
            .map_err(|m| fail(format!("items: {m}")))?,
        None if output.is_array() => output.clone(),
        None => output.get("body").cloned().unwrap_or(Value::Null),
    };
    let Value::Array(items) = items else {
        return Err(fail(format!(
            "items: the listing is {}, not a list; set `items:` to a jq program that selects it (e.g. `.body.items`)",
            kind_of(&items)
        )));
    };
    if items.len() > MAX_POLL_ITEMS {
        return Err(fail(format!(
            "items: the listing has {} items, more than the {MAX_POLL_ITEMS} one poll may take; make the action return fewer (a page size, or a cursor)",
            items.len()
        )));
    }
    let mut runs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = inner
            .eval(&spec.id, item)
            .await
            .map_err(|m| fail(format!("id of item {i}: {m}")))?;
        let key = item_key(&id).ok_or_else(|| {
            fail(format!(
                "id of item {i}: `{}` gave {}, and an id must be a non-empty string or a number; set `id:`",
                spec.id.source(),
                kind_of(&id)
            ))
        })?;
        runs.push((
            key.clone(),
            NewRun {
                scope: c.scope,
                id: RunId::new(),
                flow_id: c.flow_id,
                flow_name: target.flow_name.clone(),
                flow_version: target.version,
                trigger: json!({
                    "kind": "poll",
                    "item": item,
                    "item_id": key,
                    "cursor": c.cursor.clone().unwrap_or(Value::Null),
                    "polled_at": weft_types::rfc3339(now),
                }),
                dedupe_key: Some(format!("poll:{key}")),
                dedupe_window_ms: i64::MAX / 4,
                now,
                audit: None,
                parent: None,
                traceparent: None,
            },
        ));
    }
    let cursor = match &spec.cursor {
        Some(e) => {
            let v = inner
                .eval(
                    e,
                    &json!({"output": output, "items": items, "cursor": c.cursor}),
                )
                .await
                .map_err(|m| fail(format!("cursor: {m}")))?;
            if v.is_null() {
                c.cursor.clone()
            } else {
                Some(v)
            }
        }
        None => c.cursor.clone(),
    };
    // Items that start no run (a first poll only learns; known ones are only touched) need
    // no trigger: their payloads must not be written only to be deleted.
    let known: std::collections::HashSet<String> = if c.primed {
        let keys: Vec<String> = runs.iter().map(|(k, _)| k.clone()).collect();
        inner
            .opts
            .store
            .poll_known(c.scope, c.flow_id, keys)
            .await
            .map_err(|e| fail(e.to_string()))?
            .into_iter()
            .collect()
    } else {
        Default::default()
    };
    for (key, run) in &mut runs {
        if !c.primed || known.contains(key) {
            run.trigger = Value::Null;
        }
    }
    Ok(PollOutcome::Listed {
        items: runs,
        cursor,
    })
}

/// A failed listing: paused when its credential needs re-authorization, else retried later.
async fn action_failed(
    inner: &Arc<Inner>,
    c: &ClaimedPoll,
    spec: &PollSpec,
    message: String,
) -> Stop {
    if let Some(name) = &spec.credential
        && let Ok(Some((rec, _))) = inner.opts.store.credential(c.scope, name).await
        && rec.status == "needs_reauth"
    {
        return Stop::Paused(
            format!(
                "paused: credential '{name}' needs re-authorization; polling resumes when it is authorized again (`weft credentials authorize {name}`)"
            ),
            spec.every,
        );
    }
    Stop::Failed(
        format!("{}.{}: {message}", spec.connector, spec.action),
        spec.every,
    )
}

/// An item id as the seen set keeps it; `None` when it is not a usable id.
fn item_key(id: &Value) -> Option<String> {
    let s = match id {
        // NUL cannot be stored by PostgreSQL; the replacement keeps the id usable.
        Value::String(s) if !s.is_empty() => s.replace('\0', "\u{FFFD}"),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if s.len() <= MAX_KEY_LEN {
        return Some(s);
    }
    let hex: String = Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256:{hex}"))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys() {
        assert_eq!(item_key(&json!("a-1")).as_deref(), Some("a-1"));
        assert_eq!(item_key(&json!(42)).as_deref(), Some("42"));
        assert_eq!(item_key(&json!("")), None);
        assert_eq!(item_key(&json!(null)), None);
        assert_eq!(item_key(&json!({"id": 1})), None);
        let long = "x".repeat(500);
        let k = item_key(&json!(long)).unwrap_or_default();
        assert!(k.starts_with("sha256:") && k.len() == 7 + 64);
        assert_eq!(item_key(&json!("x".repeat(500))), Some(k));
    }
}
