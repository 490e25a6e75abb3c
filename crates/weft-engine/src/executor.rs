//! Executes one claimed run: its steps as a DAG, each result checkpointed before any step that
//! depends on it starts; retries with backoff; step and run timeouts; cancellation.
//!
//! Skip rule: a step whose `if:` is false is `skipped`, and so is every step that needs a
//! skipped step. A step that failed with `continue_on_error` counts as finished for its
//! dependents (they see `.steps.<id>.status == "failed"` and `.error`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weft_flow::{CompiledFlow, CompiledStep, StepKind};
use weft_store::{ClaimedRun, NewLog, RunRecord, StepCheckpoint, StepRecord};
use weft_types::{Millis, RunStatus, Scope, StepStatus};

use crate::invoke::{ActionCall, AttemptError};
use crate::limits::StepLimit;
use crate::{Inner, WebhookResponse};

/// How a step ended.
#[derive(Debug, Clone)]
enum Outcome {
    Succeeded(Value),
    Skipped,
    Failed(String),
}

/// What a step task reports back.
enum Report {
    Done(usize, Outcome),
    /// The run is no longer ours (cancelled, or the lease was lost): stop without finishing.
    Lost,
}

/// Most times a rate-limited step waits before it counts as failed.
const MAX_RATE_LIMIT_WAITS: u32 = 100;

pub(crate) async fn execute(inner: Arc<Inner>, claimed: ClaimedRun) {
    let run = claimed.run;
    let claimed_at = inner.now();
    let token = CancellationToken::new();
    if let Ok(mut m) = inner.cancels.lock() {
        m.insert(run.id, token.clone());
    }
    let result = run_steps(&inner, &run, claimed.steps, &token).await;
    if let Ok(mut m) = inner.cancels.lock() {
        m.remove(&run.id);
    }
    // A run that never reached its `respond` step answers intake with 202 (dropping the sender).
    if let Ok(mut m) = inner.responders.lock() {
        m.remove(&run.id);
    }
    let Some((status, output, error)) = result else {
        // Stopped without an outcome. If this process still holds the run (a checkpoint could not
        // be written), it goes back to the queue now rather than when the process goes idle; a
        // cancelled run or one another worker took over is not held, and nothing changes.
        hand_back(&inner, &run).await;
        let _ = inner
            .events
            .send(crate::EngineEvent::RunStopped { run: run.id });
        return;
    };
    let msg = match status {
        RunStatus::Succeeded => NewLog {
            level: "info",
            step_id: None,
            message: "run succeeded".into(),
        },
        _ => NewLog {
            level: "error",
            step_id: None,
            message: format!("run failed: {}", error.clone().unwrap_or_default()),
        },
    };
    match inner
        .opts
        .store
        .finish_run(
            run.scope,
            run.id,
            &inner.opts.owner,
            status,
            output,
            error,
            vec![msg],
            inner.now(),
        )
        .await
    {
        Ok(true) => {
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

/// Returns the final status, or None when the run must be left alone (lost or cancelled).
async fn run_steps(
    inner: &Arc<Inner>,
    run: &RunRecord,
    prior: Vec<StepRecord>,
    token: &CancellationToken,
) -> Option<(RunStatus, Option<Value>, Option<String>)> {
    let flow = match inner
        .compiled(run.scope, run.flow_id, run.flow_version)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            return Some((
                RunStatus::Failed,
                None,
                Some(format!("flow version {} cannot run: {e}", run.flow_version)),
            ));
        }
    };
    let n = flow.steps.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut prior_attempts = vec![0u32; n];
    for rec in prior {
        let Some(i) = flow.step_index(&rec.step_id) else {
            continue;
        };
        prior_attempts[i] = rec.attempts.max(0) as u32;
        outcomes[i] = match rec.status {
            StepStatus::Succeeded => Some(Outcome::Succeeded(rec.output.unwrap_or(Value::Null))),
            StepStatus::Skipped => Some(Outcome::Skipped),
            StepStatus::Failed => Some(Outcome::Failed(rec.error.unwrap_or_default())),
            _ => None,
        };
    }
    let deadline: Option<Millis> = flow
        .run_timeout
        .map(|t| run.started_at.unwrap_or(run.created_at) + t.as_millis() as i64);
    let mut started = vec![false; n];
    let mut fatal: Option<String> = None;
    let mut tasks: JoinSet<Report> = JoinSet::new();

    loop {
        if fatal.is_none() {
            for i in 0..n {
                if started[i] || outcomes[i].is_some() {
                    continue;
                }
                let step = &flow.steps[i];
                if !step.deps.iter().all(|&d| outcomes[d].is_some()) {
                    continue;
                }
                started[i] = true;
                let ctx = context(run, &flow, &outcomes);
                let dep_skipped = step
                    .deps
                    .iter()
                    .any(|&d| matches!(outcomes[d], Some(Outcome::Skipped)));
                let job = StepJob {
                    inner: inner.clone(),
                    flow: flow.clone(),
                    idx: i,
                    scope: run.scope,
                    run_id: run.id.to_string(),
                    run: run.id,
                    prior_attempts: prior_attempts[i],
                    token: token.clone(),
                    class: std::sync::Mutex::new("none"),
                };
                tasks.spawn(job.run(ctx, dep_skipped));
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
                        if let Outcome::Failed(e) = &outcome
                            && !flow.steps[i].continue_on_error && fatal.is_none() {
                                fatal = Some(format!("step '{}' failed: {e}", flow.steps[i].id));
                            }
                        outcomes[i] = Some(outcome);
                    }
                    Some(Ok(Report::Lost)) | None => {
                        tasks.abort_all();
                        return None;
                    }
                    Some(Err(e)) => {
                        tasks.abort_all();
                        return Some((RunStatus::Failed, None, Some(format!("a step task crashed: {e}"))));
                    }
                }
            }
            _ = token.cancelled() => {
                tasks.abort_all();
                return None;
            }
            _ = sleep_until_deadline => {
                tasks.abort_all();
                let t = flow.run_timeout.unwrap_or_default();
                return Some((RunStatus::Failed, None, Some(format!("the run exceeded its {} timeout", fmt_duration(t)))));
            }
        }
    }
    if let Some(e) = fatal {
        return Some((RunStatus::Failed, None, Some(e)));
    }
    let output = (0..n).rev().find_map(|i| match &outcomes[i] {
        Some(Outcome::Succeeded(v)) => Some(v.clone()),
        _ => None,
    });
    Some((RunStatus::Succeeded, output, None))
}

/// The expression context `{trigger, steps, run, flow, vars}`. Credentials never appear here.
fn context(run: &RunRecord, flow: &CompiledFlow, outcomes: &[Option<Outcome>]) -> Value {
    let mut steps = Map::new();
    for (i, o) in outcomes.iter().enumerate() {
        let Some(o) = o else { continue };
        let v = match o {
            Outcome::Succeeded(out) => json!({"status": "succeeded", "output": out}),
            Outcome::Skipped => json!({"status": "skipped", "output": null}),
            Outcome::Failed(e) => json!({"status": "failed", "output": null, "error": e}),
        };
        steps.insert(flow.steps[i].id.clone(), v);
    }
    json!({
        "trigger": run.trigger,
        "steps": steps,
        "run": {"id": run.id.to_string(), "flow_version": run.flow_version, "created_at": weft_types::rfc3339(run.created_at)},
        "flow": {"id": run.flow_id.to_string(), "name": run.flow_name, "version": run.flow_version},
        "vars": flow.vars,
    })
}

fn fmt_duration(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

struct StepJob {
    inner: Arc<Inner>,
    flow: Arc<CompiledFlow>,
    idx: usize,
    scope: Scope,
    run_id: String,
    run: weft_types::RunId,
    prior_attempts: u32,
    token: CancellationToken,
    /// The class of the last failure, for metrics.
    class: std::sync::Mutex<&'static str>,
}

impl StepJob {
    fn step(&self) -> &CompiledStep {
        &self.flow.steps[self.idx]
    }

    fn set_class(&self, class: &'static str) {
        let class = match self.step().kind {
            StepKind::Transform(_) => "expression",
            _ => class,
        };
        if let Ok(mut c) = self.class.lock() {
            *c = class;
        }
    }

    /// Counts a checkpointed step in the metrics.
    fn observe(&self, status: StepStatus, secs: f64) {
        let m = &self.inner.metrics;
        let connector = match &self.step().kind {
            StepKind::Action { connector, .. } => connector.as_str(),
            _ => "none",
        };
        let class = match status {
            StepStatus::Failed | StepStatus::Retrying => {
                self.class.lock().map(|c| *c).unwrap_or("permanent")
            }
            _ => "none",
        };
        if status == StepStatus::Retrying {
            crate::metrics::EngineMetrics::per_connector(&m.retries, connector);
            if class == "rate_limited" {
                crate::metrics::EngineMetrics::per_connector(&m.rate_limit_waits, connector);
            }
            return;
        }
        m.step(
            self.step().kind.name(),
            connector,
            status.as_str(),
            class,
            secs,
        );
    }

    async fn checkpoint(&self, rec: StepRecord, logs: Vec<NewLog>) -> bool {
        let status = rec.status;
        let secs = match (rec.started_at, rec.finished_at) {
            (Some(a), Some(b)) => (b - a).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        let cp = StepCheckpoint { step: rec, logs };
        match self
            .inner
            .opts
            .store
            .checkpoint_step(
                self.scope,
                self.run,
                &self.inner.opts.owner,
                cp,
                self.inner.now(),
            )
            .await
        {
            Ok(held) => {
                if held {
                    self.observe(status, secs);
                }
                if held && status != StepStatus::Retrying {
                    let _ = self.inner.events.send(crate::EngineEvent::StepFinished {
                        run: self.run,
                        step: self.step().id.clone(),
                        status,
                    });
                }
                held
            }
            Err(e) => {
                tracing::warn!(run = %self.run_id, error = %e, "checkpoint failed; the run will be resumed");
                false
            }
        }
    }

    fn record(
        &self,
        status: StepStatus,
        attempts: u32,
        output: Option<Value>,
        error: Option<String>,
        started: Millis,
    ) -> StepRecord {
        StepRecord {
            step_id: self.step().id.clone(),
            idx: self.idx as i64,
            status,
            attempts: attempts as i64,
            output,
            error,
            started_at: Some(started),
            finished_at: Some(self.inner.now()),
        }
    }

    async fn run(self, ctx: Value, dep_skipped: bool) -> Report {
        let started = self.inner.now();
        let id = self.step().id.clone();
        let skip_reason = if dep_skipped {
            Some("a step it needs was skipped".to_string())
        } else if let Some(cond) = &self.step().condition {
            match self.inner.eval(cond, &ctx).await {
                Ok(v) if truthy(&v) => None,
                Ok(_) => Some("its `if:` condition is false".to_string()),
                Err(e) => {
                    self.set_class("expression");
                    let rec = self.record(StepStatus::Failed, 1, None, Some(e.clone()), started);
                    let log = NewLog {
                        level: "error",
                        step_id: Some(id),
                        message: format!("condition failed: {e}"),
                    };
                    return if self.checkpoint(rec, vec![log]).await {
                        Report::Done(self.idx, Outcome::Failed(e))
                    } else {
                        Report::Lost
                    };
                }
            }
        } else {
            None
        };
        if let Some(reason) = skip_reason {
            let rec = self.record(StepStatus::Skipped, 0, None, None, started);
            let log = NewLog {
                level: "info",
                step_id: Some(id),
                message: format!("skipped: {reason}"),
            };
            return if self.checkpoint(rec, vec![log]).await {
                Report::Done(self.idx, Outcome::Skipped)
            } else {
                Report::Lost
            };
        }

        let policy = self.step().retry.clone();
        let mut attempt = self.prior_attempts;
        let mut rate_waits = 0u32;
        loop {
            attempt += 1;
            let result = tokio::select! {
                r = self.attempt(&ctx, attempt) => r,
                _ = self.token.cancelled() => return Report::Lost,
            };
            match result {
                Ok(output) => {
                    let ms = self.inner.now() - started;
                    let log = NewLog {
                        level: "info",
                        step_id: Some(id.clone()),
                        message: format!("succeeded in {ms} ms (attempt {attempt})"),
                    };
                    let rec = self.record(
                        StepStatus::Succeeded,
                        attempt,
                        Some(output.clone()),
                        None,
                        started,
                    );
                    return if self.checkpoint(rec, vec![log]).await {
                        Report::Done(self.idx, Outcome::Succeeded(output))
                    } else {
                        Report::Lost
                    };
                }
                Err(e) => {
                    self.set_class(e.class());
                    // A rate-limited step waits; it does not use up its attempts.
                    let counts = !(e.rate_limited && rate_waits < MAX_RATE_LIMIT_WAITS);
                    if e.rate_limited && !counts {
                        rate_waits += 1;
                    }
                    let exhausted = counts && attempt >= policy.max_attempts;
                    if !e.retryable || exhausted {
                        let msg = if attempt > 1 {
                            format!("{} (after {attempt} attempts)", e.message)
                        } else {
                            e.message.clone()
                        };
                        let level = if self.step().continue_on_error {
                            "warn"
                        } else {
                            "error"
                        };
                        let log = NewLog {
                            level,
                            step_id: Some(id.clone()),
                            message: format!("failed: {msg}"),
                        };
                        let rec = self.record(
                            StepStatus::Failed,
                            attempt,
                            None,
                            Some(msg.clone()),
                            started,
                        );
                        return if self.checkpoint(rec, vec![log]).await {
                            Report::Done(self.idx, Outcome::Failed(msg))
                        } else {
                            Report::Lost
                        };
                    }
                    if !counts {
                        attempt -= 1;
                    }
                    let delay = crate::retry::backoff_delay(
                        &policy,
                        attempt.max(1),
                        e.retry_after,
                        rand::random::<f64>(),
                    );
                    let log = NewLog {
                        level: "warn",
                        step_id: Some(id.clone()),
                        message: format!(
                            "attempt {attempt} failed: {}; retrying in {}",
                            e.message,
                            fmt_duration(delay)
                        ),
                    };
                    let rec = self.record(
                        StepStatus::Retrying,
                        attempt,
                        None,
                        Some(e.message.clone()),
                        started,
                    );
                    if !self.checkpoint(rec, vec![log]).await {
                        return Report::Lost;
                    }
                    // Start the timer before announcing the retry, so whoever reacts to the
                    // event (a test advancing a manual clock) cannot move time before it starts.
                    let wait = self.inner.opts.clock.sleep(delay);
                    let _ = self.inner.events.send(crate::EngineEvent::StepRetrying {
                        run: self.run,
                        step: id.clone(),
                        attempt,
                        delay,
                    });
                    tokio::select! {
                        _ = wait => {},
                        _ = self.token.cancelled() => return Report::Lost,
                    }
                }
            }
        }
    }

    /// One attempt, bounded by the step's timeout.
    async fn attempt(&self, ctx: &Value, attempt: u32) -> Result<Value, AttemptError> {
        let fut = self.attempt_inner(ctx, attempt);
        match self.step().timeout {
            Some(t) => tokio::select! {
                r = fut => r,
                _ = self.inner.opts.clock.sleep(t) => Err(AttemptError {
                    message: format!("timed out after {}", fmt_duration(t)),
                    retryable: true,
                    retry_after: None,
                    rate_limited: false,
                    unauthorized: false,
                }),
            },
            None => fut.await,
        }
    }

    async fn attempt_inner(&self, ctx: &Value, _attempt: u32) -> Result<Value, AttemptError> {
        match &self.step().kind {
            StepKind::Transform(e) => self
                .inner
                .eval(e, ctx)
                .await
                .map_err(AttemptError::permanent),
            StepKind::Action {
                connector,
                action,
                input,
                credential,
                version,
                rate_limit,
            } => {
                let input = self
                    .inner
                    .render(input, ctx)
                    .await
                    .map_err(AttemptError::permanent)?;
                // Stable per (run, step, loop index): identical on every retry and after a crash.
                let key = format!("{}:{}:0", self.run_id, self.step().id);
                let flow_id = format!("{}:{}", self.scope.workspace, self.flow.def.name);
                let out = crate::invoke::invoke(
                    &self.inner,
                    &ActionCall {
                        scope: self.scope,
                        connector,
                        action,
                        version: version.as_deref(),
                        input: &input,
                        credential: credential.as_deref(),
                        key: &key,
                        step_limit: rate_limit.map(|(per_second, burst)| StepLimit {
                            flow: &flow_id,
                            step: &self.step().id,
                            per_second,
                            burst,
                        }),
                    },
                )
                .await;
                weft_types::failpoint_at("action.after_effect", &self.step().id);
                out
            }
            StepKind::Respond {
                status,
                headers,
                body,
            } => {
                let status_v = self
                    .inner
                    .render(status, ctx)
                    .await
                    .map_err(AttemptError::permanent)?;
                let code = status_v
                    .as_u64()
                    .or_else(|| status_v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|c| (200..=599).contains(c))
                    .ok_or_else(|| {
                        AttemptError::permanent(format!(
                            "respond status {status_v} is not an HTTP status between 200 and 599"
                        ))
                    })?;
                let headers_v = self
                    .inner
                    .render(headers, ctx)
                    .await
                    .map_err(AttemptError::permanent)?;
                let body = self
                    .inner
                    .render(body, ctx)
                    .await
                    .map_err(AttemptError::permanent)?;
                let mut hs = Vec::new();
                if let Value::Object(m) = &headers_v {
                    for (k, v) in m {
                        hs.push((k.clone(), weft_expr::to_text(v)));
                    }
                }
                let resp = WebhookResponse {
                    status: code as u16,
                    headers: hs,
                    body: body.clone(),
                };
                if let Some(tx) = self
                    .inner
                    .responders
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(&self.run))
                {
                    let _ = tx.send(resp);
                }
                Ok(json!({"status": code, "headers": headers_v, "body": body}))
            }
            StepKind::Fail(msg) => {
                let m = self
                    .inner
                    .render(msg, ctx)
                    .await
                    .map_err(AttemptError::permanent)?;
                Err(AttemptError::permanent(weft_expr::to_text(&m)))
            }
        }
    }
}

/// jq truthiness: everything but `false` and `null`.
fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}
