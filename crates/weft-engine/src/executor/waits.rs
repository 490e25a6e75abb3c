//! Steps that wait: `wait` (a durable timer) and `approval` / `wait_for_event` (a signal, with an
//! optional timeout). A waiting step is checkpointed `waiting` with its deadline before the run
//! parks, so a restart keeps the same deadline: the timer fires once, at the time first set.

use serde_json::{Value, json};
use weft_flow::{SignalWait, WaitSpec};
use weft_store::{NewLog, RunEvent, SignalRecord};
use weft_types::{Millis, StepStatus};

use super::step::StepJob;
use super::{Outcome, Report};

impl StepJob {
    /// A number the waiting checkpoint stored under `field`, if this step was waiting.
    fn waiting_field(&self, field: &str) -> Option<Option<Millis>> {
        let p = self
            .prior
            .as_ref()
            .filter(|p| p.status == StepStatus::Waiting)?;
        Some(
            p.output
                .as_ref()
                .and_then(|o| o.get(field))
                .and_then(Value::as_i64),
        )
    }

    /// Records the step `waiting` (output says until when / for what); false when lost.
    async fn checkpoint_waiting(&self, output: Value, message: String, started: Millis) -> bool {
        let rec = self.record(StepStatus::Waiting, 1, Some(output), None, started);
        let log = NewLog::new(
            "info",
            Some(self.record_id()),
            RunEvent::StepWaiting,
            message,
        );
        self.checkpoint(rec, vec![log]).await
    }

    /// Ends the step now with `outcome`.
    pub(crate) async fn conclude(
        &self,
        outcome: Outcome,
        started: Millis,
        message: String,
    ) -> Report {
        let (status, output, error, level, event) = match &outcome {
            Outcome::Succeeded(v) => (
                StepStatus::Succeeded,
                Some(v.clone()),
                None,
                "info",
                RunEvent::StepSucceeded,
            ),
            Outcome::Skipped => (
                StepStatus::Skipped,
                None,
                None,
                "info",
                RunEvent::StepSkipped,
            ),
            Outcome::Failed { error, timed_out } => (
                StepStatus::Failed,
                timed_out.then(|| json!({"timed_out": true})),
                Some(error.clone()),
                if self.step().continue_on_error || self.step().has_handlers() {
                    "warn"
                } else {
                    "error"
                },
                RunEvent::StepFailed,
            ),
        };
        let rec = self.record(status, 1, output, error, started);
        let log = NewLog::new(level, Some(self.record_id()), event, message);
        if self.checkpoint(rec, vec![log]).await {
            Report::Done(self.idx, outcome)
        } else {
            Report::Lost
        }
    }

    /// `wait: 5m` / `wait: {until: JQ}`.
    pub(crate) async fn wait(&self, w: &WaitSpec, ctx: &super::StepCtx, started: Millis) -> Report {
        let until = match self.waiting_field("until_ms") {
            Some(Some(ms)) => ms,
            _ => {
                let ms = match w {
                    WaitSpec::For(d) => started.saturating_add(d.as_millis() as i64),
                    WaitSpec::Until(e) => {
                        match self.inner.eval(e, ctx).await.and_then(|v| time_of(&v)) {
                            Ok(ms) => ms,
                            Err(msg) => {
                                self.set_class("expression");
                                let m = format!("wait.until: {msg}");
                                return self
                                    .conclude(
                                        Outcome::failed(m.clone()),
                                        started,
                                        format!("failed: {m}"),
                                    )
                                    .await;
                            }
                        }
                    }
                };
                if ms > self.inner.now() {
                    let at = weft_types::rfc3339(ms);
                    let out = json!({"until": at, "until_ms": ms});
                    if !self
                        .checkpoint_waiting(out, format!("waiting until {at}"), started)
                        .await
                    {
                        return Report::Lost;
                    }
                }
                ms
            }
        };
        if self.inner.now() >= until {
            let at = weft_types::rfc3339(until);
            return self
                .conclude(
                    Outcome::Succeeded(json!({"waited_until": at})),
                    started,
                    format!("waited until {at}"),
                )
                .await;
        }
        Report::Parked(Some(until), Vec::new())
    }

    /// `approval` / `wait_for_event`: the first signal named for the step resumes it.
    pub(crate) async fn await_signal(
        &self,
        s: &SignalWait,
        ctx: &super::StepCtx,
        started: Millis,
    ) -> Report {
        let signals = match self
            .inner
            .opts
            .store
            .run_signals(self.run.scope, self.run.id)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(run = %self.run.id, error = %e, "could not read signals; the run will be resumed");
                return Report::Lost;
            }
        };
        if let Some(sig) = s
            .names
            .iter()
            .find_map(|n| signals.iter().find(|x| &x.name == n))
        {
            return self.on_signal(s, sig, started).await;
        }
        let deadline = match self.waiting_field("deadline_ms") {
            Some(d) => d,
            None => {
                let deadline = s
                    .timeout
                    .map(|t| started.saturating_add(t.as_millis() as i64));
                let message = match &s.message {
                    Some(m) => match self.inner.render(m, ctx).await {
                        Ok(v) => Some(weft_expr::to_text(&v)),
                        Err(e) => {
                            self.set_class("expression");
                            let m = format!("approval.message: {e}");
                            return self
                                .conclude(
                                    Outcome::failed(m.clone()),
                                    started,
                                    format!("failed: {m}"),
                                )
                                .await;
                        }
                    },
                    None => None,
                };
                // The watch goes in before the step shows as waiting: an event published from
                // now on finds this run (one published before the run parks is a signal the
                // park sees, so it resumes at once).
                let mut key = None;
                if let Some(event) = &s.event {
                    key = match &s.key {
                        Some(k) => match self.inner.render(k, ctx).await {
                            Ok(v) => Some(weft_expr::to_text(&v)),
                            Err(e) => {
                                self.set_class("expression");
                                let m = format!("wait_for_event.key: {e}");
                                return self
                                    .conclude(
                                        Outcome::failed(m.clone()),
                                        started,
                                        format!("failed: {m}"),
                                    )
                                    .await;
                            }
                        },
                        None => None,
                    };
                    if let Err(e) = self
                        .inner
                        .opts
                        .store
                        .watch_event(
                            self.run.scope,
                            self.run.id,
                            event,
                            key.as_deref(),
                            self.inner.now(),
                        )
                        .await
                    {
                        tracing::warn!(run = %self.run.id, error = %e, "could not record an event wait; the run will be resumed");
                        return Report::Lost;
                    }
                }
                let out = json!({
                    "event": s.event,
                    "key": key,
                    "resume_url": self.inner.resume_url(self.run.scope, self.run.id, &s.names[0]),
                    "waiting_for": s.names,
                    "deadline": deadline.map(weft_types::rfc3339),
                    "deadline_ms": deadline,
                    "message": message,
                });
                let what = match deadline {
                    Some(d) => format!(
                        "waiting for signal '{}' until {}",
                        s.names[0],
                        weft_types::rfc3339(d)
                    ),
                    None => format!("waiting for signal '{}'", s.names[0]),
                };
                if !self.checkpoint_waiting(out, what, started).await {
                    return Report::Lost;
                }
                deadline
            }
        };
        if let Some(d) = deadline
            && self.inner.now() >= d
        {
            self.set_class("timeout");
            let e = format!(
                "no signal '{}' arrived by {}",
                s.names[0],
                weft_types::rfc3339(d)
            );
            return self
                .conclude(
                    Outcome::Failed {
                        error: e.clone(),
                        timed_out: true,
                    },
                    started,
                    format!("timed out: {e}"),
                )
                .await;
        }
        Report::Parked(deadline, s.names.clone())
    }

    async fn on_signal(&self, s: &SignalWait, sig: &SignalRecord, started: Millis) -> Report {
        if !s.approval {
            return self
                .conclude(
                    Outcome::Succeeded(sig.payload.clone()),
                    started,
                    format!("resumed by signal '{}'", sig.name),
                )
                .await;
        }
        match decision(&sig.payload) {
            Ok(()) => {
                let mut out = match &sig.payload {
                    Value::Object(m) => m.clone(),
                    Value::Null => serde_json::Map::new(),
                    other => {
                        let mut m = serde_json::Map::new();
                        m.insert("payload".into(), other.clone());
                        m
                    }
                };
                out.insert("approved".into(), Value::Bool(true));
                out.insert(
                    "decided_at".into(),
                    json!(weft_types::rfc3339(sig.created_at)),
                );
                self.conclude(
                    Outcome::Succeeded(Value::Object(out)),
                    started,
                    format!("approved by signal '{}'", sig.name),
                )
                .await
            }
            Err(reason) => {
                self.set_class("permanent");
                let e = match reason {
                    Some(r) => format!("rejected: {r}"),
                    None => "rejected".to_string(),
                };
                self.conclude(
                    Outcome::failed(e.clone()),
                    started,
                    format!("{e} (signal '{}')", sig.name),
                )
                .await
            }
        }
    }
}

/// Whether an approval signal's payload approves: `{approved: false}` or
/// `{decision: "reject"}` rejects (with its `reason`); anything else approves.
fn decision(payload: &Value) -> Result<(), Option<String>> {
    let rejected = payload.get("approved") == Some(&Value::Bool(false))
        || payload
            .get("decision")
            .and_then(Value::as_str)
            .is_some_and(|d| matches!(d, "reject" | "rejected" | "deny" | "denied"));
    if rejected {
        let reason = payload
            .get("reason")
            .or_else(|| payload.get("comment"))
            .map(weft_expr::to_text);
        return Err(reason);
    }
    Ok(())
}

/// A time from `wait.until`: RFC 3339 text or epoch seconds.
fn time_of(v: &Value) -> Result<Millis, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 253_402_300_800.0)
            .map(|s| (s * 1000.0) as Millis)
            .ok_or_else(|| format!("{n} is not a time in epoch seconds")),
        Value::String(s) => weft_types::parse_rfc3339(s)
            .ok_or_else(|| format!("'{s}' is not an RFC 3339 time (e.g. 2026-12-24T09:00:00Z)")),
        other => Err(format!(
            "gave {}; expected an RFC 3339 time or epoch seconds",
            weft_expr::to_text(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_payloads_decide() {
        assert_eq!(decision(&json!({})), Ok(()));
        assert_eq!(decision(&json!(null)), Ok(()));
        assert_eq!(decision(&json!({"approved": true})), Ok(()));
        assert_eq!(decision(&json!({"approved": false})), Err(None));
        assert_eq!(
            decision(&json!({"decision": "reject", "reason": "too big"})),
            Err(Some("too big".into()))
        );
    }

    #[test]
    fn until_takes_rfc3339_or_epoch_seconds() {
        assert_eq!(time_of(&json!(1_767_225_600)), Ok(1_767_225_600_000));
        assert_eq!(
            time_of(&json!("2026-01-01T00:00:00Z")),
            Ok(1_767_225_600_000)
        );
        assert!(time_of(&json!("tomorrow")).is_err());
        assert!(time_of(&json!(-1)).is_err());
        assert!(time_of(&json!([1])).is_err());
    }
}
