//! One step: its condition, its attempts with retries and backoff, its checkpoints.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weft_flow::{CompiledStep, StepKind};
use weft_store::{NewLog, RunEvent, RunRecord, StepCheckpoint, StepRecord};
use weft_types::{Millis, StepStatus};

use super::{Frame, Outcome, Prior, Report, fmt_duration, truthy};
use crate::invoke::{ActionCall, AttemptError};
use crate::limits::StepLimit;
use crate::{Inner, WebhookResponse};

/// CPU time of a code step without its own `timeout`.
const CODE_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// Most CPU time a code step may ask for.
const MAX_CODE_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Most times a rate-limited step waits before it counts as failed.
const MAX_RATE_LIMIT_WAITS: u32 = 100;

pub(crate) struct StepJob {
    pub(crate) inner: Arc<Inner>,
    pub(crate) frame: Frame,
    pub(crate) idx: usize,
    pub(crate) run: Arc<RunRecord>,
    /// This step's checkpoint from before (a resumed run).
    pub(crate) prior: Option<StepRecord>,
    /// Every checkpoint of the run (loops find their items' here).
    pub(crate) all_prior: Prior,
    pub(crate) token: CancellationToken,
    /// The class of the last failure, for metrics.
    pub(crate) class: std::sync::Mutex<&'static str>,
    /// Lines a code step wrote (`console.log`), stored with its next checkpoint.
    pub(crate) console: std::sync::Mutex<Vec<NewLog>>,
    /// Whether this step's `StepStarted` line was handed to a checkpoint.
    pub(crate) start_logged: std::sync::atomic::AtomicBool,
}

impl StepJob {
    pub(crate) fn step(&self) -> &CompiledStep {
        &self.frame.steps()[self.idx]
    }

    /// The id this step's checkpoint is stored under.
    pub(crate) fn record_id(&self) -> String {
        self.frame.record_id(&self.step().id)
    }

    pub(crate) fn set_class(&self, class: &'static str) {
        let class = match self.step().kind {
            StepKind::Transform(_) => "expression",
            StepKind::Code(_) => "code",
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
        if matches!(status, StepStatus::Running | StepStatus::Waiting) {
            return;
        }
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

    /// Counts a failed step in its error group (flow, step, connector, class). Best effort:
    /// the failure itself is already recorded with the run; a lost count is only a statistic.
    async fn count_error(&self, message: String) {
        let step = self.step();
        // A loop fails because an item's step did; that step's failure is the one counted.
        if matches!(step.kind, StepKind::ForEach(_)) {
            return;
        }
        let connector = match &step.kind {
            StepKind::Action { connector, .. } => connector.clone(),
            _ => "none".to_string(),
        };
        let class = self.class.lock().map(|c| *c).unwrap_or("permanent");
        // `loop[3].post` groups with every other item's `post` as `loop.post`.
        let step_id = match &self.frame.item {
            Some(it) if it.index.is_some() => {
                format!("{}.{}", self.frame.flow.steps[it.parent].id, step.id)
            }
            _ => self.record_id(),
        };
        let fingerprint = crate::errors::fingerprint(self.run.flow_id, &step_id, &connector, class);
        let e = weft_store::NewError {
            fingerprint: fingerprint.clone(),
            flow_id: self.run.flow_id,
            flow_name: self.run.flow_name.clone(),
            step_id: step_id.clone(),
            connector: connector.clone(),
            class: class.to_string(),
            message: message.chars().take(1000).collect(),
            run: self.run.id,
            at: self.inner.now(),
        };
        let new = match self.inner.opts.store.record_error(self.run.scope, e).await {
            Ok(new) => new,
            Err(err) => {
                tracing::warn!(run = %self.run.id, error = %err, "could not count a failure in its error group");
                return;
            }
        };
        // Every failure counts towards a spike; the first of its kind also opens a new group.
        let flow = &self.run.flow_name;
        let ons: &[crate::alerts::AlertOn] = if new {
            &[
                crate::alerts::AlertOn::ErrorNew,
                crate::alerts::AlertOn::ErrorSpike,
            ]
        } else {
            &[crate::alerts::AlertOn::ErrorSpike]
        };
        let os: Vec<_> = ons
            .iter()
            .map(|&on| {
                let what = if on == crate::alerts::AlertOn::ErrorNew {
                    "new kind of failure"
                } else {
                    "failures spiking"
                };
                crate::alerts::Occurrence {
                    on,
                    flow: Some(flow),
                    incident: format!("error:{fingerprint}"),
                    summary: format!(
                        "{what} in flow '{flow}', step '{step_id}' ({connector}, {class}): {message}"
                    ),
                    detail: serde_json::json!({"flow": flow, "step": step_id, "connector": connector,
                        "class": class, "fingerprint": fingerprint, "run_id": self.run.id.to_string(), "error": message}),
                }
            })
            .collect();
        // One read of the rules for both kinds.
        self.inner.alert_all(self.run.scope, &os).await;
    }

    /// Writes this step's state (with any checkpoints the run held back before it), or holds
    /// it back for the run's next write (see [`super::Held`]); false when the run is no longer
    /// ours or the write failed.
    pub(crate) async fn checkpoint(&self, rec: StepRecord, mut logs: Vec<NewLog>) -> bool {
        if let Ok(mut c) = self.console.lock()
            && !c.is_empty()
        {
            let mut all = std::mem::take(&mut *c);
            all.append(&mut logs);
            logs = all;
        }
        self.prepend_starts(&rec, &mut logs);
        let status = rec.status;
        let failure = (status == StepStatus::Failed).then(|| rec.error.clone().unwrap_or_default());
        let secs = match (rec.started_at, rec.finished_at) {
            (Some(a), Some(b)) => (b - a).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        let hold = self.may_hold(&rec);
        let now = self.inner.now();
        if hold {
            // Held lines keep the time they were written at, not the carrying write's.
            for l in &mut logs {
                l.at.get_or_insert(now);
            }
            let (inner, run, step) = (self.inner.clone(), self.run.id, self.record_id());
            let kind = self.step().kind.name();
            let connector = match &self.step().kind {
                StepKind::Action { connector, .. } => connector.clone(),
                _ => "none".to_string(),
            };
            self.frame.base.held.push(super::HeldStep {
                cp: StepCheckpoint { step: rec, logs },
                written: Box::new(move || {
                    inner
                        .metrics
                        .step(kind, &connector, status.as_str(), "none", secs);
                    let _ =
                        inner
                            .events
                            .send(crate::EngineEvent::StepFinished { run, step, status });
                }),
            });
            return true;
        }
        let (mut cps, written) = self.frame.base.held.take();
        cps.push(StepCheckpoint { step: rec, logs });
        match self
            .inner
            .opts
            .store
            .checkpoint_steps(
                self.run.scope,
                self.run.id,
                &self.inner.opts.owner,
                cps,
                now,
            )
            .await
        {
            Ok(held) => {
                if held {
                    written.into_iter().for_each(|f| f());
                    self.observe(status, secs);
                    if let Some(message) = failure {
                        self.count_error(message).await;
                    }
                }
                if held && !matches!(status, StepStatus::Retrying | StepStatus::Waiting) {
                    let _ = self.inner.events.send(crate::EngineEvent::StepFinished {
                        run: self.run.id,
                        step: self.record_id(),
                        status,
                    });
                }
                held
            }
            Err(e) => {
                tracing::warn!(run = %self.run.id, error = %e, "checkpoint failed; the run will be resumed");
                false
            }
        }
    }

    /// Whether this record may wait for the run's next write: a top-level step's success or
    /// skip that is either a pure transform's (redone identically after a crash) or the last
    /// step to end (its write goes with the run's end; nothing else runs before it).
    fn may_hold(&self, rec: &StepRecord) -> bool {
        if self.frame.item.is_some()
            || !matches!(rec.status, StepStatus::Succeeded | StepStatus::Skipped)
        {
            return false;
        }
        let pure = rec.status == StepStatus::Succeeded
            && matches!(&self.step().kind, StepKind::Transform(e) if e.is_pure());
        let last = self
            .frame
            .base
            .open
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1;
        pure || last
    }

    /// Puts the run's `RunStarted` (first checkpoint of a fresh run) and this step's
    /// `StepStarted` (its first checkpoint; a skipped step never started) before `logs`, each
    /// stamped with when it happened: a start shares its checkpoint's transaction instead of
    /// costing one of its own.
    fn prepend_starts(&self, rec: &StepRecord, logs: &mut Vec<NewLog>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut starts = Vec::new();
        if self.frame.base.start_pending.swap(false, Relaxed) {
            let mut l = NewLog::new("info", None, RunEvent::RunStarted, "run started");
            l.at = self.run.started_at.or(rec.started_at);
            starts.push(l);
        }
        if self.prior.is_none()
            && rec.status != StepStatus::Skipped
            && !self.start_logged.swap(true, Relaxed)
        {
            let mut l = NewLog::new(
                "info",
                Some(rec.step_id.clone()),
                RunEvent::StepStarted,
                "started",
            );
            l.at = rec.started_at;
            starts.push(l);
        }
        if !starts.is_empty() {
            starts.append(logs);
            *logs = starts;
        }
    }

    pub(crate) fn record(
        &self,
        status: StepStatus,
        attempts: u32,
        output: Option<Value>,
        error: Option<String>,
        started: Millis,
    ) -> StepRecord {
        StepRecord {
            step_id: self.record_id(),
            idx: self.frame.record_idx(self.idx),
            status,
            attempts: attempts as i64,
            output,
            error,
            started_at: Some(started),
            finished_at: Some(self.inner.now()),
        }
    }

    /// When this step first began (kept across parking and resumption).
    pub(crate) fn started(&self) -> Millis {
        self.prior
            .as_ref()
            .and_then(|p| p.started_at)
            .unwrap_or_else(|| self.inner.now())
    }

    pub(crate) async fn run(self, ctx: super::StepCtx, skip: Option<String>) -> Report {
        let started = self.started();
        let id = self.record_id();
        let resumed = self
            .prior
            .as_ref()
            .is_some_and(|p| p.status == StepStatus::Waiting);
        let skip_reason = if skip.is_some() {
            skip
        } else if resumed {
            // A waiting step's condition held when it began.
            None
        } else if let Some(cond) = &self.step().condition {
            match self.inner.eval(cond, &ctx).await {
                Ok(v) if truthy(&v) => None,
                Ok(_) => Some("its `if:` condition is false".to_string()),
                Err(e) => {
                    self.set_class("expression");
                    let rec = self.record(StepStatus::Failed, 1, None, Some(e.clone()), started);
                    let log = NewLog::new(
                        "error",
                        Some(id),
                        RunEvent::StepFailed,
                        format!("condition failed: {e}"),
                    );
                    return if self.checkpoint(rec, vec![log]).await {
                        Report::Done(self.idx, Outcome::failed(e))
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
            let log = NewLog::new(
                "info",
                Some(id),
                RunEvent::StepSkipped,
                format!("skipped: {reason}"),
            );
            return if self.checkpoint(rec, vec![log]).await {
                Report::Done(self.idx, Outcome::Skipped)
            } else {
                Report::Lost
            };
        }

        match &self.step().kind {
            StepKind::Wait(w) => return self.wait(w, &ctx, started).await,
            StepKind::Signal(s) => return self.await_signal(s, &ctx, started).await,
            StepKind::ForEach(fe) => return self.for_each(fe, &ctx, started).await,
            StepKind::Subflow {
                flow,
                input,
                detach,
            } => return self.subflow(flow, input, *detach, &ctx, started).await,
            _ => {}
        }
        let policy = self.step().retry.clone();
        let mut attempt = self.prior.as_ref().map_or(0, |p| p.attempts.max(0) as u32);
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
                    let log = NewLog::new(
                        "info",
                        Some(id.clone()),
                        RunEvent::StepSucceeded,
                        format!("succeeded in {ms} ms (attempt {attempt})"),
                    );
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
                        let log = NewLog::new(
                            level,
                            Some(id.clone()),
                            RunEvent::StepFailed,
                            format!("failed: {msg}"),
                        );
                        let rec = self.record(
                            StepStatus::Failed,
                            attempt,
                            None,
                            Some(msg.clone()),
                            started,
                        );
                        return if self.checkpoint(rec, vec![log]).await {
                            Report::Done(self.idx, Outcome::failed(msg))
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
                    let log = NewLog::new(
                        "warn",
                        Some(id.clone()),
                        RunEvent::StepRetrying,
                        format!(
                            "attempt {attempt} failed: {}; retrying in {}",
                            e.message,
                            fmt_duration(delay)
                        ),
                    );
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
                        run: self.run.id,
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
    async fn attempt(&self, ctx: &super::StepCtx, attempt: u32) -> Result<Value, AttemptError> {
        let fut = self.attempt_inner(ctx, attempt);
        // A code step's `timeout` is its CPU limit inside the sandbox, which says so itself.
        let limit = match self.step().kind {
            StepKind::Code(_) => None,
            _ => self.step().timeout,
        };
        match limit {
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

    async fn attempt_inner(
        &self,
        ctx: &super::StepCtx,
        _attempt: u32,
    ) -> Result<Value, AttemptError> {
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
                let key = format!(
                    "{}:{}:{}",
                    self.run.id,
                    self.step().id,
                    self.frame.loop_index()
                );
                let flow_id = format!("{}:{}", self.run.scope.workspace, self.frame.flow.def.name);
                let out = crate::invoke::invoke(
                    &self.inner,
                    &ActionCall {
                        scope: self.run.scope,
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
                    .and_then(|mut m| m.remove(&self.run.id))
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
            StepKind::Switch { expr, cases } => {
                let v = self
                    .inner
                    .eval(expr, ctx)
                    .await
                    .map_err(AttemptError::permanent)?;
                let text = match &v {
                    Value::String(s) => s.clone(),
                    other => weft_expr::to_text(other),
                };
                let case = if cases.contains(&text) {
                    Some(text)
                } else if cases.iter().any(|c| c == "default") {
                    Some("default".to_string())
                } else {
                    None
                };
                Ok(json!({"value": v, "case": case}))
            }
            StepKind::Code(src) => {
                let time = self.step().timeout.unwrap_or(CODE_TIME).min(MAX_CODE_TIME);
                let out = self
                    .inner
                    .opts
                    .sandbox
                    .eval_js(src, &crate::eval::EvalInput::value(ctx), time)
                    .await
                    .map_err(|e| AttemptError::permanent(format!("code: {e}")))?;
                if let Ok(mut c) = self.console.lock() {
                    let step = self.record_id();
                    c.extend(out.logs.into_iter().map(|l| {
                        NewLog::new(
                            "info",
                            Some(step.clone()),
                            RunEvent::Log,
                            format!("console: {l}"),
                        )
                    }));
                }
                out.result
                    .map_err(|e| AttemptError::permanent(format!("code threw: {e}")))
            }
            StepKind::Emit { event, data, key } => {
                let data = self
                    .inner
                    .render(data, ctx)
                    .await
                    .map_err(AttemptError::permanent)?;
                let key = match key {
                    Some(k) => Some(weft_expr::to_text(
                        &self
                            .inner
                            .render(k, ctx)
                            .await
                            .map_err(AttemptError::permanent)?,
                    )),
                    None => None,
                };
                crate::events::check_event(event, key.as_deref(), &data)
                    .map_err(|e| AttemptError::permanent(format!("emit: {e}")))?;
                let depth = crate::events::event_depth(&self.run) + 1;
                if depth > crate::events::MAX_EVENT_DEPTH {
                    return Err(AttemptError::permanent(format!(
                        "emit: {} events in a chain already led to this run; a flow that emits the event that starts it would loop for ever",
                        crate::events::MAX_EVENT_DEPTH
                    )));
                }
                let ev = crate::events::NewEvent {
                    // Stable per (run, step, loop index): a retry or a resumed run republishes
                    // the same event, which delivers nothing twice.
                    id: Some(format!("emit:{}:{}", self.run.id, self.record_id())),
                    name: event.clone(),
                    key,
                    data,
                    source: json!({
                        "run_id": self.run.id.to_string(),
                        "flow": self.run.flow_name,
                        "step": self.record_id(),
                    }),
                    depth,
                };
                let p = self
                    .inner
                    .publish_event(self.run.scope, ev, weft_store::Actor::system("events"))
                    .await
                    .map_err(|e| AttemptError {
                        message: format!("emit: {e}"),
                        retryable: true,
                        retry_after: None,
                        rate_limited: false,
                        unauthorized: false,
                    })?;
                Ok(json!({
                    "event_id": p.id,
                    "resumed": p.resumed.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "started": p.started.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                }))
            }
            StepKind::Wait(_)
            | StepKind::Signal(_)
            | StepKind::ForEach(_)
            | StepKind::Subflow { .. } => Err(AttemptError::permanent(
                "internal: a waiting step reached the attempt path".to_string(),
            )),
        }
    }
}
