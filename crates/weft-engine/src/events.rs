//! Workspace events. An event (a name, an optional correlation key and data) is published by
//! the API, by an `emit` step, or by the end of a run that something listens for. Publishing
//! resumes the runs whose `wait_for_event` step waits for that name (and key, when the wait has
//! one) and starts a run of each flow whose `event` trigger names it.
//!
//! Publishing is idempotent by event id, so a caller that crashed or timed out publishes again
//! with the same id: a started run is found by its dedupe key (`event:ID`, per flow), and a
//! second delivery of the same signal to a run is refused by the store (signals are single-use
//! per name). An `emit` step's id comes from its run and step, and a run's end event from the
//! run, so re-running them after a crash delivers nothing twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_flow::{StepKind, TriggerKind};
use weft_store::{Actor, NewRun, RunRecord, StoreError};
use weft_types::{FlowId, RunId, RunStatus, Scope};

use crate::{Engine, EngineError, Inner};

/// Largest event data, in bytes (as for signals).
pub const MAX_EVENT_BYTES: usize = crate::MAX_SIGNAL_BYTES;
/// Longest chain of events started by events (a flow whose runs emit the event that starts
/// it would otherwise loop for ever).
pub const MAX_EVENT_DEPTH: u64 = 10;
/// How long a workspace's listener index is trusted before it is read again (other processes
/// may publish flows).
const INDEX_TTL: Duration = Duration::from_secs(2);
/// Waiting runs resumed per store read.
const WATCH_BATCH: usize = 500;

/// An event to publish.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its id: publishing the same id twice has the effect of once. `None`: a new one.
    pub id: Option<String>,
    /// Name, e.g. `order.paid`.
    pub name: String,
    /// Correlation key: resumes only waits with this key (or with none).
    pub key: Option<String>,
    /// What it carries.
    pub data: Value,
    /// Who published it (`{api: true}`, or `{run_id, flow, step}`).
    pub source: Value,
    /// How many events led to this one (0 for one from outside).
    pub depth: u64,
}

/// What publishing did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The event id.
    pub id: String,
    /// Waiting runs that were resumed.
    pub resumed: Vec<RunId>,
    /// Runs started by `event` triggers (new or found again by the event id).
    pub started: Vec<RunId>,
}

/// Who listens for which events in one workspace (from the published flow versions).
#[derive(Default)]
pub(crate) struct EventIndex {
    /// Event name → flows whose trigger names it: (flow, name, published version).
    triggers: HashMap<String, Vec<(FlowId, String, i64)>>,
    /// Names that a `wait_for_event` step of a published version waits for.
    waited: HashSet<String>,
}

impl EventIndex {
    fn listens(&self, name: &str) -> bool {
        self.triggers.contains_key(name) || self.waited.contains(name)
    }
}

/// Listener indexes per workspace, read at most every [`INDEX_TTL`].
#[derive(Default)]
pub(crate) struct EventCache {
    by_scope: std::sync::Mutex<HashMap<Scope, (Instant, Arc<EventIndex>)>>,
}

impl EventCache {
    /// Forgets a workspace's index (its flows changed here).
    pub(crate) fn forget(&self, scope: Scope) {
        if let Ok(mut m) = self.by_scope.lock() {
            m.remove(&scope);
        }
    }
}

/// Checks what the API accepts: the name and the size of the data.
pub fn check_event(name: &str, key: Option<&str>, data: &Value) -> Result<(), EngineError> {
    let mut errors = Vec::new();
    if !weft_flow::valid_event_name(name) {
        errors.push(weft_flow::FieldError::new(
            "name",
            "an event name is 1-100 characters: letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if key.is_some_and(|k| k.is_empty() || k.len() > 200) {
        errors.push(weft_flow::FieldError::new(
            "key",
            "a key is 1-200 characters (or leave it out)",
        ));
    }
    let size = serde_json::to_vec(data).map_or(0, |v| v.len());
    if size > MAX_EVENT_BYTES {
        errors.push(weft_flow::FieldError::new(
            "data",
            format!("is {size} bytes; an event carries at most {MAX_EVENT_BYTES}"),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EngineError::BadInput(errors))
    }
}

impl Inner {
    /// The listener index of a workspace.
    async fn event_index(&self, scope: Scope) -> Result<Arc<EventIndex>, EngineError> {
        if let Some((at, idx)) = self
            .events_cache
            .by_scope
            .lock()
            .ok()
            .and_then(|m| m.get(&scope).cloned())
            && at.elapsed() < INDEX_TTL
        {
            return Ok(idx);
        }
        let mut idx = EventIndex::default();
        let mut after = None;
        loop {
            let page = self
                .opts
                .store
                .list_flows(scope, after.clone(), 200)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            for f in &page {
                let Some(v) = f.published_version else {
                    continue;
                };
                // A version that no longer compiles (a connector went away) listens for nothing.
                let Ok(c) = self.compiled(scope, f.id, v).await else {
                    continue;
                };
                if let TriggerKind::Event { names } = &c.trigger {
                    for n in names {
                        idx.triggers
                            .entry(n.clone())
                            .or_default()
                            .push((f.id, f.name.clone(), v));
                    }
                }
                for s in &c.steps {
                    if let StepKind::Signal(w) = &s.kind
                        && let Some(e) = &w.event
                    {
                        idx.waited.insert(e.clone());
                    }
                }
            }
        }
        let idx = Arc::new(idx);
        if let Ok(mut m) = self.events_cache.by_scope.lock() {
            if m.len() >= 10_000 {
                m.clear();
            }
            m.insert(scope, (Instant::now(), idx.clone()));
        }
        Ok(idx)
    }

    /// Publishes an event: resumes the runs waiting for it and starts the flows it triggers.
    /// Idempotent by `ev.id`; on an error, publishing again with the same id completes it.
    pub(crate) async fn publish_event(
        &self,
        scope: Scope,
        ev: NewEvent,
        actor: Actor,
    ) -> Result<Published, EngineError> {
        let id = ev
            .id
            .clone()
            .unwrap_or_else(|| format!("evt_{}", RunId::new()));
        let now = self.now();
        let published_at = weft_types::rfc3339(now);
        let mut out = Published {
            id: id.clone(),
            ..Published::default()
        };
        // What a resumed wait_for_event step outputs.
        let payload = json!({
            "id": id,
            "name": ev.name,
            "key": ev.key,
            "data": ev.data,
            "source": ev.source,
            "published_at": published_at,
        });
        let store = &self.opts.store;
        let mut seen = HashSet::new();
        loop {
            let runs = store
                .event_watchers(scope, &ev.name, ev.key.as_deref(), WATCH_BATCH)
                .await?;
            let fresh: Vec<RunId> = runs.into_iter().filter(|r| seen.insert(*r)).collect();
            if fresh.is_empty() {
                break;
            }
            for run in fresh {
                match store
                    .signal_run(scope, run, &ev.name, payload.clone(), actor.clone(), now)
                    .await
                {
                    Ok(_) => out.resumed.push(run),
                    // Already resumed by this event (a publish repeated) or finished: nothing
                    // to deliver, and the watch is stale.
                    Err(StoreError::Conflict(_) | StoreError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
                store.unwatch_event(scope, run, &ev.name).await?;
            }
        }
        let index = self.event_index(scope).await?;
        if let Some(flows) = index.triggers.get(&ev.name) {
            let trigger = json!({
                "kind": "event",
                "event": {
                    "id": id,
                    "name": ev.name,
                    "key": ev.key,
                    "source": ev.source,
                    "depth": ev.depth,
                    "published_at": published_at,
                },
                "body": ev.data,
                "received_at": published_at,
            });
            for (flow, name, version) in flows {
                let res = store
                    .insert_run(NewRun {
                        scope,
                        id: RunId::new(),
                        flow_id: *flow,
                        flow_name: name.clone(),
                        flow_version: *version,
                        trigger: trigger.clone(),
                        dedupe_key: Some(format!("event:{id}")),
                        dedupe_window_ms: i64::MAX / 4,
                        now,
                        audit: None,
                        parent: None,
                        traceparent: crate::trace::current(),
                    })
                    .await;
                match res {
                    Ok(ins) => out.started.push(ins.run_id),
                    // Over quota: the tenant's plan refuses new runs; the others still start.
                    Err(StoreError::Quota { detail, .. }) => {
                        tracing::warn!(flow = %name, event = %ev.name, detail, "an event-triggered run was not started: quota");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !out.resumed.is_empty() || !out.started.is_empty() {
            self.wake.notify_one();
        }
        Ok(out)
    }

    /// Before a run's end is recorded: publishes `flow.NAME.succeeded|failed` when a flow or
    /// a waiting step listens for it. False when the store failed (the run is retried later;
    /// the event id is the run's, so nothing is delivered twice).
    pub(crate) async fn publish_run_end(
        &self,
        run: &RunRecord,
        status: RunStatus,
        output: &Option<Value>,
        error: &Option<String>,
    ) -> bool {
        let end = match status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            _ => return true,
        };
        let name = weft_flow::run_end_event(&run.flow_name, end);
        match self.event_index(run.scope).await {
            Ok(idx) if !idx.listens(&name) => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "could not read the workspace's event listeners; the run will be resumed");
                return false;
            }
        }
        let depth = event_depth(run) + 1;
        if depth > MAX_EVENT_DEPTH {
            tracing::warn!(run = %run.id, event = %name, "not published: {MAX_EVENT_DEPTH} events in a chain already led to this run");
            return true;
        }
        let ev = NewEvent {
            id: Some(format!("run-end:{}", run.id)),
            name,
            key: None,
            data: json!({
                "run_id": run.id.to_string(),
                "flow": run.flow_name,
                "flow_version": run.flow_version,
                "status": end,
                "output": output,
                "error": error,
            }),
            source: json!({"run_id": run.id.to_string(), "flow": run.flow_name}),
            depth,
        };
        match self
            .publish_event(run.scope, ev, Actor::system("events"))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "could not publish the run's end event; the run will be resumed");
                false
            }
        }
    }
}

/// How many events led to `run` (0 unless an event trigger started it).
pub(crate) fn event_depth(run: &RunRecord) -> u64 {
    run.trigger
        .get("event")
        .and_then(|e| e.get("depth"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

impl Engine {
    /// Publishes an event in a workspace (the API's `POST …/events`): resumes the runs waiting
    /// for it and starts the flows it triggers. Publishing the same `id` again does nothing
    /// more than once did.
    pub async fn publish_event(
        &self,
        scope: Scope,
        ev: NewEvent,
        actor: Actor,
    ) -> Result<Published, EngineError> {
        check_event(&ev.name, ev.key.as_deref(), &ev.data)?;
        if let Some(id) = &ev.id
            && !weft_flow::valid_event_name(id)
        {
            return Err(EngineError::BadInput(vec![weft_flow::FieldError::new(
                "id",
                "an event id is 1-100 characters: letters, digits, '-', '_', '.' or ':'",
            )]));
        }
        self.inner.publish_event(scope, ev, actor).await
    }
}
