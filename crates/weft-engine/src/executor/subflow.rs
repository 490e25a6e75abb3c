//! `subflow`: another flow of the workspace runs as a child run (linked to this one). The
//! step records the child's id before it waits, and the child's id is derived from this step
//! (a dedupe key), so a crash between starting the child and recording it starts no second
//! child. The child's end wakes the parent; cancelling the parent cancels the child.

use serde_json::{Value, json};
use weft_expr::TValue;
use weft_store::{NewRun, StoreError};
use weft_types::{Millis, RunId, RunStatus, StepStatus};

use super::step::StepJob;
use super::{Outcome, Report};

/// Deepest chain of sub-flows (A calls B calls C …).
const MAX_DEPTH: usize = 10;

impl StepJob {
    pub(crate) async fn subflow(
        &self,
        target: &str,
        input: &TValue,
        detach: bool,
        ctx: &super::StepCtx,
        started: Millis,
    ) -> Report {
        let recorded = self
            .prior
            .as_ref()
            .filter(|p| p.status == StepStatus::Waiting)
            .and_then(|p| p.output.as_ref())
            .and_then(|o| o.get("run_id"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<RunId>().ok());
        let child = match recorded {
            Some(c) => c,
            None => match self.start_child(target, input, detach, ctx).await {
                Ok(c) => c,
                Err(Err(e)) => {
                    return self
                        .conclude(Outcome::failed(e.clone()), started, format!("failed: {e}"))
                        .await;
                }
                Err(Ok(())) => return Report::Lost,
            },
        };
        if detach {
            return self
                .conclude(
                    Outcome::Succeeded(json!({"run_id": child.to_string()})),
                    started,
                    format!("started run {child} of flow '{target}'"),
                )
                .await;
        }
        if recorded.is_none() {
            let out = json!({"run_id": child.to_string(), "flow": target});
            let rec = self.record(StepStatus::Waiting, 1, Some(out), None, started);
            let log = weft_store::NewLog::new(
                "info",
                Some(self.record_id()),
                weft_store::RunEvent::StepWaiting,
                format!("waiting for run {child} of flow '{target}'"),
            );
            if !self.checkpoint(rec, vec![log]).await {
                return Report::Lost;
            }
        }
        let (run, _) = match self.inner.opts.store.get_run(self.run.scope, child).await {
            Ok(r) => r,
            Err(StoreError::NotFound) => {
                let e = format!("sub-flow run {child} no longer exists");
                return self
                    .conclude(Outcome::failed(e.clone()), started, format!("failed: {e}"))
                    .await;
            }
            Err(e) => {
                tracing::warn!(run = %self.run.id, error = %e, "could not read a sub-flow run; the run will be resumed");
                return Report::Lost;
            }
        };
        match run.status {
            RunStatus::Succeeded => {
                self.conclude(
                    Outcome::Succeeded(run.output.unwrap_or(Value::Null)),
                    started,
                    format!("sub-flow run {child} succeeded"),
                )
                .await
            }
            RunStatus::Failed | RunStatus::Cancelled => {
                self.set_class("permanent");
                let e = format!(
                    "sub-flow run {child} of '{target}' {}: {}",
                    run.status,
                    run.error.unwrap_or_default()
                );
                self.conclude(Outcome::failed(e.clone()), started, format!("failed: {e}"))
                    .await
            }
            _ => Report::Parked(None, vec![child.to_string()]),
        }
    }

    /// Starts (or finds, after a crash) the child run; `Err(Ok(()))` when the run was lost.
    async fn start_child(
        &self,
        target: &str,
        input: &TValue,
        detach: bool,
        ctx: &super::StepCtx,
    ) -> Result<RunId, Result<(), String>> {
        let chain: Vec<String> = self
            .run
            .trigger
            .get("parent")
            .and_then(|p| p.get("chain"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut chain = chain;
        chain.push(self.run.flow_name.clone());
        if chain.iter().any(|f| f == target) {
            self.set_class("validation");
            return Err(Err(format!(
                "sub-flow cycle: {} → {target}; a flow cannot call itself through sub-flows",
                chain.join(" → ")
            )));
        }
        if chain.len() > MAX_DEPTH {
            self.set_class("validation");
            return Err(Err(format!(
                "sub-flows nest deeper than {MAX_DEPTH} levels ({})",
                chain.join(" → ")
            )));
        }
        let body = self.inner.render(input, ctx).await.map_err(|e| {
            self.set_class("expression");
            Err(e)
        })?;
        let store = &self.inner.opts.store;
        let flow = match store.get_flow(self.run.scope, target).await {
            Ok(f) => f,
            Err(StoreError::NotFound) => {
                self.set_class("validation");
                return Err(Err(format!("no flow named '{target}' in this workspace")));
            }
            Err(e) => {
                tracing::warn!(run = %self.run.id, error = %e, "could not read a sub-flow; the run will be resumed");
                return Err(Ok(()));
            }
        };
        let Some(version) = flow.published_version else {
            self.set_class("validation");
            return Err(Err(format!("flow '{target}' has no published version")));
        };
        let now = self.inner.now();
        let trigger = json!({
            "kind": "subflow",
            "body": body,
            "received_at": weft_types::rfc3339(now),
            "parent": {
                "run": self.run.id.to_string(),
                "step": self.step().id,
                "flow": self.run.flow_name,
                "chain": chain,
            },
        });
        let inserted = store
            .insert_run(NewRun {
                scope: self.run.scope,
                id: RunId::new(),
                flow_id: flow.id,
                flow_name: flow.name,
                flow_version: version,
                trigger,
                // One child per (run, step): a crash before the step is checkpointed finds it.
                dedupe_key: Some(format!("subflow:{}:{}", self.run.id, self.step().id)),
                dedupe_window_ms: i64::MAX / 4,
                now,
                audit: None,
                parent: (!detach).then_some(self.run.id),
                traceparent: crate::trace::current(),
            })
            .await;
        match inserted {
            Ok(ins) => {
                self.inner.wake.notify_one();
                Ok(ins.run_id)
            }
            Err(StoreError::Quota { detail, .. }) => {
                self.set_class("validation");
                Err(Err(format!("could not start the sub-flow: {detail}")))
            }
            Err(e) => {
                tracing::warn!(run = %self.run.id, error = %e, "could not start a sub-flow run; the run will be resumed");
                Err(Ok(()))
            }
        }
    }
}
