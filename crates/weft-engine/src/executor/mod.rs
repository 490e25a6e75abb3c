//! Executes one claimed run: its steps as a DAG, each result checkpointed before any step that
//! depends on it starts; retries with backoff; step and run timeouts; cancellation; parking
//! the run while a step waits (a timer, a signal, a child run) and resuming it later.
//!
//! - `mod.rs` — the run: claim to finish or park, the DAG loop and its skip rules.
//! - `step.rs` — one step: condition, attempts with retries, checkpoints.
//! - `waits.rs` — `wait`, `approval` and `wait_for_event` steps.
//! - `for_each.rs` — loops: items with their own nested DAG and per-item checkpoints.
//! - `subflow.rs` — child runs of other flows, awaited or detached.
//!
//! Skip rule: a step whose `if:` is false is `skipped`. A step's need is *met* when it
//! succeeded, or failed with `continue_on_error`; it is *unmet* when skipped, or failed and
//! handled by `on_error`/`on_timeout` steps. With `join: all` (the default) a step is skipped
//! when any need is unmet; with `join: any`, only when every need is. A handler runs only for
//! the failure it handles; a step in a `switch` case only when its case was chosen.

mod for_each;
mod step;
mod subflow;
mod waits;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weft_flow::{CompiledFlow, CompiledStep, Handler, StepKind};
use weft_store::{ClaimedRun, NewLog, RunEvent, RunRecord, StepRecord};
use weft_types::{Millis, RunStatus, StepStatus};

use crate::Inner;
use step::StepJob;

/// How a step ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Succeeded(Value),
    Skipped,
    Failed { error: String, timed_out: bool },
}

impl Outcome {
    fn failed(error: impl Into<String>) -> Self {
        Outcome::Failed {
            error: error.into(),
            timed_out: false,
        }
    }

    /// The outcome a checkpointed record stands for; `None` for one still in progress.
    fn of_record(rec: &StepRecord) -> Option<Self> {
        match rec.status {
            StepStatus::Succeeded => Some(Outcome::Succeeded(
                rec.output.clone().unwrap_or(Value::Null),
            )),
            StepStatus::Skipped => Some(Outcome::Skipped),
            StepStatus::Failed => Some(Outcome::Failed {
                error: rec.error.clone().unwrap_or_default(),
                timed_out: rec
                    .output
                    .as_ref()
                    .and_then(|o| o.get("timed_out"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }),
            _ => None,
        }
    }

    /// The step's state as expressions see it under `.steps.<id>`.
    fn to_context(&self) -> Value {
        match self {
            Outcome::Succeeded(out) => json!({"status": "succeeded", "output": out}),
            Outcome::Skipped => json!({"status": "skipped", "output": null}),
            Outcome::Failed { error, .. } => {
                json!({"status": "failed", "output": null, "error": error})
            }
        }
    }
}

/// What a step task reports back.
pub(crate) enum Report {
    Done(usize, Outcome),
    /// The step is checkpointed `waiting`: the run parks until this time (if any), one of
    /// these signals, or a child run's end.
    Parked(Option<Millis>, Vec<String>),
    /// The run is no longer ours (cancelled, or the lease was lost): stop without finishing.
    Lost,
}

/// A nested list of steps: one item of a `for_each`, or the compensation of a step.
pub(crate) struct ItemCx {
    /// Index of the top-level step the list belongs to.
    pub(crate) parent: usize,
    /// Which list: an item's (its position), or the compensation (`None`).
    pub(crate) index: Option<usize>,
    /// What the nested steps see besides `.steps`: `item` and `index`, or `compensating`.
    pub(crate) extra: Vec<(&'static str, Value)>,
    /// `.steps` of the enclosing run when the list started.
    pub(crate) outer: Arc<Map<String, Value>>,
}

/// Where a list of steps lives: the flow's own, a `for_each`'s for one item, or a step's
/// compensation.
#[derive(Clone)]
pub(crate) struct Frame {
    pub(crate) flow: Arc<CompiledFlow>,
    pub(crate) item: Option<Arc<ItemCx>>,
    /// The parts of the context every step of the run shares.
    pub(crate) base: Arc<BaseCtx>,
}

/// What every step of a run sees and nothing changes while it executes: built once per
/// execution, borrowed by every expression.
pub(crate) struct BaseCtx {
    run: Arc<RunRecord>,
    flow: Arc<CompiledFlow>,
    /// `.run`: `{id, flow_version, created_at, resume}`.
    run_v: Value,
    /// `.flow`: `{id, name, version}`.
    flow_v: Value,
    /// Whether this execution starts the run (no step had a checkpoint): its `RunStarted`
    /// line goes with the first checkpoint, whichever step writes it.
    pub(crate) start_pending: std::sync::atomic::AtomicBool,
    /// Step results that ended but are not written yet; the run's next write carries them.
    pub(crate) held: Arc<Held>,
    /// Top-level steps without an outcome yet (the one that ends when this is 1 is the last).
    pub(crate) open: std::sync::atomic::AtomicUsize,
}

/// Step checkpoints held back to go with the run's next write: a pure transform's (evaluating
/// it again after a crash gives the same output and does nothing else), and the last step's,
/// which goes with the run's end (nothing runs between them). Every path that runs anything
/// else, parks or starts an error flow writes them first ([`flush_held`]).
#[derive(Default)]
pub(crate) struct Held(std::sync::Mutex<Vec<HeldStep>>);

/// One held checkpoint and what follows its write (metrics, the `StepFinished` event).
pub(crate) struct HeldStep {
    pub(crate) cp: weft_store::StepCheckpoint,
    pub(crate) written: Written,
}

/// What to do once a held checkpoint is written.
pub(crate) type Written = Box<dyn FnOnce() + Send>;

impl Held {
    pub(crate) fn push(&self, h: HeldStep) {
        if let Ok(mut v) = self.0.lock() {
            v.push(h);
        }
    }

    /// Takes the held checkpoints, and what to do once they are written.
    pub(crate) fn take(&self) -> (Vec<weft_store::StepCheckpoint>, Vec<Written>) {
        let held = self
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        held.into_iter().map(|h| (h.cp, h.written)).unzip()
    }
}

/// Writes the run's held checkpoints; false when they could not be (the run is no longer ours,
/// or the store failed: the run will be resumed and those steps run again).
async fn flush_held(inner: &Arc<Inner>, run: &RunRecord, held: &Held) -> bool {
    let (cps, written) = held.take();
    if cps.is_empty() {
        return true;
    }
    match inner
        .opts
        .store
        .checkpoint_steps(run.scope, run.id, &inner.opts.owner, cps, inner.now())
        .await
    {
        Ok(true) => {
            written.into_iter().for_each(|f| f());
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(run = %run.id, error = %e, "checkpoint failed; the run will be resumed");
            false
        }
    }
}

/// The expression context of one step, `{trigger, steps, run, flow, vars}` (plus `item` and
/// `index` in a loop, `compensating` in a compensation), kept as parts: the fast path reads
/// them where they are, and only the sandbox gets a built copy. Credentials never appear here.
pub(crate) struct StepCtx {
    base: Arc<BaseCtx>,
    /// The run's step states when this is a nested list's context.
    outer: Option<Arc<Map<String, Value>>>,
    /// This list's step states.
    steps: Map<String, Value>,
    item: Option<Arc<ItemCx>>,
}

impl StepCtx {
    /// `.steps` as one map (the run's and this list's), for a loop to hand to its items.
    pub(crate) fn steps_map(&self) -> Map<String, Value> {
        let mut m = self.outer.as_deref().cloned().unwrap_or_default();
        m.extend(self.steps.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    }
}

impl crate::eval::EvalInput for StepCtx {
    fn parts(&self) -> Option<Vec<(&str, weft_expr::Part<'_>)>> {
        use weft_expr::Part;
        let mut steps: Vec<(&str, &Value)> = Vec::new();
        if let Some(o) = &self.outer {
            steps.extend(o.iter().map(|(k, v)| (k.as_str(), v)));
        }
        steps.extend(self.steps.iter().map(|(k, v)| (k.as_str(), v)));
        let mut parts = vec![
            ("trigger", Part::Value(&self.base.run.trigger)),
            ("steps", Part::Object(steps)),
            ("run", Part::Value(&self.base.run_v)),
            ("flow", Part::Value(&self.base.flow_v)),
            ("vars", Part::Value(&self.base.flow.vars)),
        ];
        if let Some(it) = &self.item {
            parts.extend(it.extra.iter().map(|(k, v)| (*k, Part::Value(v))));
        }
        Some(parts)
    }

    fn value(&self) -> std::borrow::Cow<'_, Value> {
        let mut m = Map::new();
        m.insert("trigger".into(), self.base.run.trigger.clone());
        m.insert("steps".into(), Value::Object(self.steps_map()));
        m.insert("run".into(), self.base.run_v.clone());
        m.insert("flow".into(), self.base.flow_v.clone());
        m.insert("vars".into(), self.base.flow.vars.clone());
        if let Some(it) = &self.item {
            for (k, v) in &it.extra {
                m.insert((*k).to_string(), v.clone());
            }
        }
        std::borrow::Cow::Owned(Value::Object(m))
    }
}

impl Frame {
    fn steps(&self) -> &[CompiledStep] {
        match &self.item {
            None => &self.flow.steps,
            Some(it) => {
                let parent = &self.flow.steps[it.parent];
                match (&parent.kind, it.index) {
                    (StepKind::ForEach(fe), Some(_)) => &fe.steps,
                    _ => &parent.compensate,
                }
            }
        }
    }

    /// The id a step's checkpoint is stored under: an item's as `loop[3].inner`, a
    /// compensation's as `charge.compensate.refund`; no top-level id can collide with either.
    fn record_id(&self, local: &str) -> String {
        match &self.item {
            None => local.to_string(),
            Some(it) => {
                let parent = &self.flow.steps[it.parent].id;
                match it.index {
                    Some(i) => format!("{parent}[{i}].{local}"),
                    None => format!("{parent}.compensate.{local}"),
                }
            }
        }
    }

    /// The stored position: nested records sort with their parent.
    fn record_idx(&self, i: usize) -> i64 {
        match &self.item {
            None => i as i64,
            Some(it) => it.parent as i64,
        }
    }

    /// The loop index in idempotency keys: (run, step, loop index).
    fn loop_index(&self) -> usize {
        self.item.as_ref().and_then(|it| it.index).unwrap_or(0)
    }
}

/// Checkpoints of a run, by stored step id.
pub(crate) type Prior = Arc<HashMap<String, StepRecord>>;

/// How a DAG ended.
pub(crate) enum DagEnd {
    Done {
        fatal: Option<String>,
        outcomes: Vec<Option<Outcome>>,
    },
    Parked(Option<Millis>, Vec<String>),
    Lost,
    Crashed(String),
    /// The run's deadline passed; what had ended by then (for compensation).
    TimedOut(Vec<Option<Outcome>>),
}

/// What a run's execution came to.
enum RunEnd {
    Finished(RunStatus, Option<Value>, Option<String>),
    /// Failed, and the flow names an error flow to start first.
    FailedWithErrorFlow(String, String),
    Parked(Option<Millis>, Vec<String>),
    Lost,
}

/// Executes a claimed run as a `run` span of the trace that started it (a new trace when it
/// has none); JSON logs meanwhile carry its run and trace ids.
pub(crate) async fn execute(inner: Arc<Inner>, claimed: ClaimedRun) {
    use opentelemetry::trace::{FutureExt as _, SpanKind, TraceContextExt as _};
    use tracing::Instrument as _;
    let r = &claimed.run;
    let parent = r
        .traceparent
        .as_deref()
        .and_then(crate::trace::parent)
        .unwrap_or_default();
    let cx = crate::trace::start(&parent, "run", SpanKind::Consumer, || {
        vec![
            opentelemetry::KeyValue::new("weft.run_id", r.id.to_string()),
            opentelemetry::KeyValue::new("weft.flow", r.flow_name.clone()),
            opentelemetry::KeyValue::new("weft.flow_version", r.flow_version),
        ]
    });
    let trace_id = cx.span().span_context().trace_id();
    let logs = tracing::info_span!("run", run_id = %r.id, trace_id = %trace_id);
    execute_traced(inner, claimed)
        .with_context(cx.clone())
        .instrument(logs)
        .await;
    crate::trace::end(&cx, None);
}

async fn execute_traced(inner: Arc<Inner>, claimed: ClaimedRun) {
    let run = Arc::new(claimed.run);
    let claimed_at = inner.now();
    let token = CancellationToken::new();
    if let Ok(mut m) = inner.cancels.lock() {
        m.insert(run.id, token.clone());
    }
    let held = Arc::new(Held::default());
    let result = run_steps(&inner, &run, claimed.steps, &token, &held).await;
    if let Ok(mut m) = inner.cancels.lock() {
        m.remove(&run.id);
    }
    // A run that did not reach its `respond` step answers intake with 202 (dropping the sender).
    if let Ok(mut m) = inner.responders.lock() {
        m.remove(&run.id);
    }
    let (status, output, error) = match result {
        RunEnd::Finished(s, o, e) => (s, o, e),
        RunEnd::FailedWithErrorFlow(target, e) => {
            // Started before the run is finished (once: its dedupe key is this run), so a
            // crash in between cannot lose it.
            if !flush_held(&inner, &run, &held).await
                || !start_error_flow(&inner, &run, &target, &e).await
            {
                hand_back(&inner, &run).await;
                return;
            }
            (RunStatus::Failed, None, Some(e))
        }
        RunEnd::Parked(wake, awaiting) => {
            if flush_held(&inner, &run, &held).await {
                park(&inner, &run, wake, awaiting).await;
            } else {
                hand_back(&inner, &run).await;
            }
            return;
        }
        RunEnd::Lost => {
            // What ended before is kept if the run is still ours (a cancelled run's is not).
            flush_held(&inner, &run, &held).await;
            // Stopped without an outcome. If this process still holds the run (a checkpoint could
            // not be written), it goes back to the queue now rather than when the process goes
            // idle; a cancelled run or one another worker took over is not held, and nothing
            // changes.
            hand_back(&inner, &run).await;
            let _ = inner
                .events
                .send(crate::EngineEvent::RunStopped { run: run.id });
            return;
        }
    };
    // Published before the end is recorded (the event id is the run's), so a crash in between
    // publishes again on resume and delivers nothing twice.
    if !inner.publish_run_end(&run, status, &output, &error).await {
        hand_back(&inner, &run).await;
        return;
    }
    let msg = match status {
        RunStatus::Succeeded => NewLog::new("info", None, RunEvent::RunSucceeded, "run succeeded"),
        _ => NewLog::new(
            "error",
            None,
            RunEvent::RunFailed,
            format!("run failed: {}", error.clone().unwrap_or_default()),
        ),
    };
    let failure = (status == RunStatus::Failed).then(|| error.clone().unwrap_or_default());
    let (steps, written) = held.take();
    match inner
        .opts
        .store
        .finish_run_with(
            run.scope,
            run.id,
            &inner.opts.owner,
            steps,
            status,
            output,
            error,
            vec![msg],
            inner.now(),
        )
        .await
    {
        Ok(true) => {
            written.into_iter().for_each(|f| f());
            let labels = crate::metrics::RunLabels {
                status: status.as_str(),
            };
            inner.metrics.runs_finished.get_or_create(&labels).inc();
            let secs = (inner.now() - claimed_at).max(0) as f64 / 1000.0;
            inner
                .metrics
                .run_duration
                .get_or_create(&labels)
                .observe(secs);
            if run.parent.is_some() {
                // The parent waits for this run; on this process it may be claimable now.
                inner.wake.notify_one();
            }
            // Raised after the end is recorded: a crash in between loses this alert, never
            // the run's outcome.
            if let Some(error) = failure {
                opentelemetry::trace::get_active_span(|s| {
                    s.set_status(opentelemetry::trace::Status::error(error.clone()))
                });
                inner
                    .alert_run_failed(run.scope, run.id, &run.flow_name, &error)
                    .await;
            }
            let _ = inner.events.send(crate::EngineEvent::RunFinished {
                run: run.id,
                status,
            });
        }
        Ok(false) => (),
        Err(e) => {
            tracing::warn!(run = %run.id, error = %e, "could not record the end of a run; it will be resumed");
            hand_back(&inner, &run).await;
        }
    }
}

/// Starts the error flow of a failed run (its input: the run, flow and error); true when it
/// is started or nothing is to be started, false when the store failed (retry later).
async fn start_error_flow(inner: &Arc<Inner>, run: &RunRecord, target: &str, error: &str) -> bool {
    let store = &inner.opts.store;
    let flow = match store.get_flow(run.scope, target).await {
        Ok(f) => f,
        Err(weft_store::StoreError::NotFound) => {
            tracing::warn!(run = %run.id, flow = target, "the error flow does not exist; nothing started");
            return true;
        }
        Err(e) => {
            tracing::warn!(run = %run.id, error = %e, "could not read the error flow; the run will be resumed");
            return false;
        }
    };
    let Some(version) = flow.published_version else {
        tracing::warn!(run = %run.id, flow = target, "the error flow has no published version; nothing started");
        return true;
    };
    let now = inner.now();
    let body = json!({
        "run_id": run.id.to_string(),
        "flow": run.flow_name,
        "flow_version": run.flow_version,
        "error": error,
        "trigger": run.trigger,
    });
    let res = store
        .insert_run(weft_store::NewRun {
            scope: run.scope,
            id: weft_types::RunId::new(),
            flow_id: flow.id,
            flow_name: flow.name,
            flow_version: version,
            trigger: json!({"kind": "error_flow", "body": body, "received_at": weft_types::rfc3339(now)}),
            dedupe_key: Some(format!("error-flow:{}", run.id)),
            dedupe_window_ms: i64::MAX / 4,
            now,
            audit: None,
            parent: None,
            traceparent: crate::trace::current(),
        })
        .await;
    match res {
        Ok(_) => {
            inner.wake.notify_one();
            true
        }
        Err(weft_store::StoreError::Quota { detail, .. }) => {
            tracing::warn!(run = %run.id, detail, "the error flow was not started: quota");
            true
        }
        Err(e) => {
            tracing::warn!(run = %run.id, error = %e, "could not start the error flow; the run will be resumed");
            false
        }
    }
}

/// Parks a run whose remaining steps all wait: its lease goes, and the timer task (or a
/// signal, or a child's end) makes it ready again.
async fn park(inner: &Arc<Inner>, run: &RunRecord, wake: Option<Millis>, awaiting: Vec<String>) {
    match inner
        .opts
        .store
        .park_run(
            run.scope,
            run.id,
            &inner.opts.owner,
            wake,
            awaiting,
            inner.now(),
        )
        .await
    {
        Ok(true) => {
            inner.timer_wake.notify_one();
            // A signal that arrived meanwhile made it ready again at once.
            inner.wake.notify_one();
            let _ = inner.events.send(crate::EngineEvent::RunParked {
                run: run.id,
                until: wake,
            });
        }
        Ok(false) => {
            let _ = inner
                .events
                .send(crate::EngineEvent::RunStopped { run: run.id });
        }
        Err(e) => {
            tracing::warn!(run = %run.id, error = %e, "could not park a waiting run; it will be resumed");
            hand_back(inner, run).await;
        }
    }
}

/// Returns a run this process holds to the queue, ready again in a second (so a store that is
/// failing is not hammered by the same run).
async fn hand_back(inner: &Arc<Inner>, run: &RunRecord) {
    let at = inner.now() + 1_000;
    if let Err(e) = inner
        .opts
        .store
        .release_run(run.scope, run.id, &inner.opts.owner, at)
        .await
    {
        tracing::warn!(run = %run.id, error = %e, "could not hand a run back; its lease will expire");
    }
}

async fn run_steps(
    inner: &Arc<Inner>,
    run: &Arc<RunRecord>,
    prior: Vec<StepRecord>,
    token: &CancellationToken,
    held: &Arc<Held>,
) -> RunEnd {
    let flow = match inner
        .compiled(run.scope, run.flow_id, run.flow_version)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            return RunEnd::Finished(
                RunStatus::Failed,
                None,
                Some(format!("flow version {} cannot run: {e}", run.flow_version)),
            );
        }
    };
    let fresh = prior.is_empty();
    let prior: Prior = Arc::new(prior.into_iter().map(|r| (r.step_id.clone(), r)).collect());
    let deadline: Option<Millis> = flow
        .run_timeout
        .map(|t| run.started_at.unwrap_or(run.created_at) + t.as_millis() as i64);
    let mut links = Map::new();
    for s in &flow.steps {
        if let StepKind::Signal(_) = s.kind
            && let Some(url) = inner.resume_url(run.scope, run.id, &s.id)
        {
            links.insert(s.id.clone(), Value::String(url));
        }
    }
    let base = Arc::new(BaseCtx {
        run_v: json!({"id": run.id.to_string(), "flow_version": run.flow_version, "created_at": weft_types::rfc3339(run.created_at), "resume": links}),
        flow_v: json!({"id": run.flow_id.to_string(), "name": run.flow_name, "version": run.flow_version}),
        run: run.clone(),
        flow: flow.clone(),
        start_pending: std::sync::atomic::AtomicBool::new(fresh),
        held: held.clone(),
        open: std::sync::atomic::AtomicUsize::new(0),
    });
    let frame = Frame {
        flow: flow.clone(),
        item: None,
        base,
    };
    let end = run_dag_to_end(inner, run, &flow, &prior, token, deadline, frame).await;
    match (end, &flow.error_flow) {
        // Runs of an error flow do not start error flows: one failure, one notification.
        (RunEnd::Finished(RunStatus::Failed, _, e), Some(target))
            if run.trigger.get("kind").and_then(Value::as_str) != Some("error_flow") =>
        {
            RunEnd::FailedWithErrorFlow(target.clone(), e.unwrap_or_default())
        }
        (end, _) => end,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_dag_to_end(
    inner: &Arc<Inner>,
    run: &Arc<RunRecord>,
    flow: &Arc<CompiledFlow>,
    prior: &Prior,
    token: &CancellationToken,
    deadline: Option<Millis>,
    frame: Frame,
) -> RunEnd {
    let frame_base = frame.base.clone();
    match run_dag(inner, run, frame, prior, token, deadline).await {
        DagEnd::Done {
            fatal: Some(e),
            outcomes,
        } => match compensate(inner, run, &frame_base, flow, prior, token, &outcomes).await {
            Some(problems) if problems.is_empty() => {
                RunEnd::Finished(RunStatus::Failed, None, Some(e))
            }
            Some(problems) => RunEnd::Finished(
                RunStatus::Failed,
                None,
                Some(format!("{e}; compensation failed: {}", problems.join("; "))),
            ),
            None => RunEnd::Lost,
        },
        DagEnd::Done { outcomes, .. } => {
            let output = outcomes.iter().rev().find_map(|o| match o {
                Some(Outcome::Succeeded(v)) => Some(v.clone()),
                _ => None,
            });
            RunEnd::Finished(RunStatus::Succeeded, output, None)
        }
        DagEnd::Parked(wake, awaiting) => RunEnd::Parked(wake, awaiting),
        DagEnd::Lost => RunEnd::Lost,
        DagEnd::Crashed(e) => RunEnd::Finished(
            RunStatus::Failed,
            None,
            Some(format!("a step task crashed: {e}")),
        ),
        DagEnd::TimedOut(outcomes) => {
            let t = flow.run_timeout.unwrap_or_default();
            let e = format!("the run exceeded its {} timeout", fmt_duration(t));
            // A timed-out run failed: the steps it completed are undone as for any failure
            // (steps cut off mid-flight are not: they did not complete).
            match compensate(inner, run, &frame_base, flow, prior, token, &outcomes).await {
                Some(problems) if problems.is_empty() => {
                    RunEnd::Finished(RunStatus::Failed, None, Some(e))
                }
                Some(problems) => RunEnd::Finished(
                    RunStatus::Failed,
                    None,
                    Some(format!("{e}; compensation failed: {}", problems.join("; "))),
                ),
                None => RunEnd::Lost,
            }
        }
    }
}

/// Saga compensation of a failed run: for each step that succeeded and declares `compensate`,
/// last first, its compensation steps run (checkpointed like any step, so each runs once
/// across crashes). Returns what failed (empty when all undid their step), or `None` when
/// the run was lost meanwhile.
async fn compensate(
    inner: &Arc<Inner>,
    run: &Arc<RunRecord>,
    base: &Arc<BaseCtx>,
    flow: &Arc<CompiledFlow>,
    prior: &Prior,
    token: &CancellationToken,
    outcomes: &[Option<Outcome>],
) -> Option<Vec<String>> {
    // Compensation steps act: what ended before them is written first.
    if !flush_held(inner, run, &base.held).await {
        return None;
    }
    let steps = &flow.steps;
    let mut outer = Map::new();
    for (i, o) in outcomes.iter().enumerate() {
        if let Some(o) = o {
            outer.insert(steps[i].id.clone(), o.to_context());
        }
    }
    let outer = Arc::new(outer);
    let mut problems = Vec::new();
    for i in (0..steps.len()).rev() {
        let Some(Outcome::Succeeded(out)) = &outcomes[i] else {
            continue;
        };
        if steps[i].compensate.is_empty() {
            continue;
        }
        weft_types::failpoint_at("compensation.start", &steps[i].id);
        let frame = Frame {
            flow: flow.clone(),
            base: base.clone(),
            item: Some(Arc::new(ItemCx {
                parent: i,
                index: None,
                extra: vec![("compensating", json!({"step": steps[i].id, "output": out}))],
                outer: outer.clone(),
            })),
        };
        match run_dag(inner, run, frame, prior, token, None).await {
            DagEnd::Done { fatal: None, .. } => {}
            DagEnd::Done { fatal: Some(e), .. } | DagEnd::Crashed(e) => {
                problems.push(format!("undoing '{}': {e}", steps[i].id))
            }
            DagEnd::Parked(..) | DagEnd::TimedOut(_) => problems.push(format!(
                "undoing '{}': a compensation step cannot wait",
                steps[i].id
            )),
            DagEnd::Lost => return None,
        }
    }
    Some(problems)
}

/// Runs one list of steps to its end (or until all that is left waits). Boxed: loops run
/// their items' lists through it, from inside a step of the enclosing list.
fn run_dag<'a>(
    inner: &'a Arc<Inner>,
    run: &'a Arc<RunRecord>,
    frame: Frame,
    prior: &'a Prior,
    token: &'a CancellationToken,
    deadline: Option<Millis>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = DagEnd> + Send + 'a>> {
    Box::pin(run_dag_inner(inner, run, frame, prior, token, deadline))
}

async fn run_dag_inner(
    inner: &Arc<Inner>,
    run: &Arc<RunRecord>,
    frame: Frame,
    prior: &Prior,
    token: &CancellationToken,
    deadline: Option<Millis>,
) -> DagEnd {
    let steps = frame.steps();
    let n = steps.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut records: Vec<Option<StepRecord>> = vec![None; n];
    let mut fatal: Option<String> = None;
    for (i, s) in steps.iter().enumerate() {
        if let Some(rec) = prior.get(&frame.record_id(&s.id)) {
            outcomes[i] = Outcome::of_record(rec);
            records[i] = Some(rec.clone());
            // A failure checkpointed before a crash still fails the run when it resumes.
            if let Some(Outcome::Failed { error, .. }) = &outcomes[i]
                && !s.continue_on_error
                && !s.has_handlers()
                && fatal.is_none()
            {
                fatal = Some(format!("step '{}' failed: {error}", s.id));
            }
        }
    }
    let cap = if frame.item.is_none() {
        frame.flow.concurrency.unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    let top = frame.item.is_none();
    let open = |outcomes: &[Option<Outcome>]| {
        if top {
            let n = outcomes.iter().filter(|o| o.is_none()).count();
            frame
                .base
                .open
                .store(n, std::sync::atomic::Ordering::SeqCst);
        }
    };
    open(&outcomes);
    let mut started = vec![false; n];
    let mut parked: Vec<(Option<Millis>, Vec<String>)> = Vec::new();
    let mut tasks: JoinSet<Report> = JoinSet::new();

    loop {
        // A run resumed (from a wait) after its deadline starts nothing more.
        if deadline.is_some_and(|d| inner.now() >= d) {
            tasks.abort_all();
            return DagEnd::TimedOut(outcomes);
        }
        if fatal.is_none() {
            for i in 0..n {
                if tasks.len() >= cap {
                    break;
                }
                if started[i] || outcomes[i].is_some() {
                    continue;
                }
                let step = &steps[i];
                if !step.deps.iter().all(|&d| outcomes[d].is_some()) {
                    continue;
                }
                started[i] = true;
                let ctx = context(&frame, steps, &outcomes);
                let job = StepJob {
                    inner: inner.clone(),
                    frame: frame.clone(),
                    idx: i,
                    run: run.clone(),
                    prior: records[i].clone(),
                    all_prior: prior.clone(),
                    token: token.clone(),
                    class: std::sync::Mutex::new("none"),
                    console: std::sync::Mutex::default(),
                    start_logged: std::sync::atomic::AtomicBool::new(false),
                };
                // Each step is a span of the run's trace; its outbound calls are its children.
                let span = crate::trace::start(
                    &opentelemetry::Context::current(),
                    "step",
                    opentelemetry::trace::SpanKind::Internal,
                    || vec![opentelemetry::KeyValue::new("weft.step", job.record_id())],
                );
                // Boxed here: a step's future holds every step kind's state, and moving it by
                // value into the task copied kilobytes per step.
                let step = Box::pin(job.run(ctx, skip_reason(steps, i, &outcomes)));
                let held = span.clone();
                tasks.spawn(opentelemetry::trace::FutureExt::with_context(
                    async move {
                        let report = step.await;
                        let error = match &report {
                            Report::Done(_, Outcome::Failed { error, .. }) => Some(error.as_str()),
                            _ => None,
                        };
                        crate::trace::end(&held, error);
                        report
                    },
                    span,
                ));
            }
        }
        if tasks.is_empty() {
            break;
        }
        let sleep_until_deadline = async {
            match deadline {
                Some(d) => {
                    inner
                        .opts
                        .clock
                        .sleep(Duration::from_millis((d - inner.now()).max(0) as u64))
                        .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = tasks.join_next() => {
                match joined {
                    Some(Ok(Report::Done(i, outcome))) => {
                        if let Outcome::Failed { error, .. } = &outcome
                            && !steps[i].continue_on_error
                            && !steps[i].has_handlers()
                            && fatal.is_none()
                        {
                            fatal = Some(format!("step '{}' failed: {error}", steps[i].id));
                        }
                        outcomes[i] = Some(outcome);
                        open(&outcomes);
                    }
                    Some(Ok(Report::Parked(wake, names))) => parked.push((wake, names)),
                    Some(Ok(Report::Lost)) | None => {
                        tasks.abort_all();
                        return DagEnd::Lost;
                    }
                    Some(Err(e)) => {
                        tasks.abort_all();
                        return DagEnd::Crashed(e.to_string());
                    }
                }
            }
            _ = token.cancelled() => {
                tasks.abort_all();
                return DagEnd::Lost;
            }
            _ = sleep_until_deadline => {
                tasks.abort_all();
                return DagEnd::TimedOut(outcomes);
            }
        }
    }
    if fatal.is_none() && !parked.is_empty() {
        // The run's own deadline wakes it too, so a run-level timeout also bounds its waits.
        let wake = parked.iter().filter_map(|(w, _)| *w).chain(deadline).min();
        let mut names: Vec<String> = parked.into_iter().flat_map(|(_, n)| n).collect();
        names.sort();
        names.dedup();
        return DagEnd::Parked(wake, names);
    }
    DagEnd::Done { fatal, outcomes }
}

/// Why step `i` is skipped without running, given the outcomes of the steps it needs (all
/// known); `None` when it runs (subject to its own `if:`).
pub(crate) fn skip_reason(
    steps: &[CompiledStep],
    i: usize,
    outcomes: &[Option<Outcome>],
) -> Option<String> {
    let step = &steps[i];
    if let Some((t, kind)) = step.handles {
        let target = &steps[t];
        let Some(Outcome::Failed { timed_out, .. }) = &outcomes[t] else {
            return Some(format!("step '{}' did not fail", target.id));
        };
        let runs = match kind {
            Handler::Timeout => *timed_out,
            Handler::Error => !*timed_out || target.on_timeout.is_empty(),
        };
        if !runs {
            return Some(format!(
                "step '{}' failed, but not in the way this step handles",
                target.id
            ));
        }
    }
    if let Some((sw, key)) = &step.case_of
        && let Some(Outcome::Succeeded(out)) = &outcomes[*sw]
        && out.get("case").and_then(Value::as_str) != Some(key.as_str())
    {
        return Some(format!(
            "switch '{}' chose {}",
            steps[*sw].id,
            match out.get("case").and_then(Value::as_str) {
                Some(c) => format!("case '{c}'"),
                None => "no case".to_string(),
            }
        ));
    }
    let met = |d: usize| -> bool {
        match &outcomes[d] {
            Some(Outcome::Succeeded(_)) => true,
            // A handler's own target failing is what it waits for.
            Some(Outcome::Failed { .. }) if step.handles.map(|h| h.0) == Some(d) => true,
            Some(Outcome::Failed { .. }) => steps[d].continue_on_error,
            _ => false,
        }
    };
    let unmet: Vec<usize> = step.deps.iter().copied().filter(|&d| !met(d)).collect();
    let skip = if step.join_any {
        !step.deps.is_empty() && unmet.len() == step.deps.len()
    } else {
        !unmet.is_empty()
    };
    if skip {
        let d = unmet[0];
        return Some(match &outcomes[d] {
            Some(Outcome::Failed { .. }) => {
                format!("step '{}' it needs failed (and was handled)", steps[d].id)
            }
            _ => format!("step '{}' it needs was skipped", steps[d].id),
        });
    }
    None
}

/// The context of a step of `frame` that starts now.
fn context(frame: &Frame, steps: &[CompiledStep], outcomes: &[Option<Outcome>]) -> StepCtx {
    let mut map = Map::new();
    for (i, o) in outcomes.iter().enumerate() {
        if let Some(o) = o {
            map.insert(steps[i].id.clone(), o.to_context());
        }
    }
    StepCtx {
        base: frame.base.clone(),
        outer: frame.item.as_ref().map(|it| it.outer.clone()),
        steps: map,
        item: frame.item.clone(),
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// jq truthiness: everything but `false` and `null`.
fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}
