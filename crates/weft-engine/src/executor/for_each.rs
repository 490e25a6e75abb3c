//! `for_each`: the nested steps run once per item, up to `concurrency` items at a time. Each
//! nested step is checkpointed as `loop[i].step`, and each finished item as `loop[i]`, so a
//! resumed run skips finished items and, inside an unfinished one, finished steps.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weft_flow::{ForEachSpec, ItemSource};
use weft_store::{NewLog, RunRecord, StepCheckpoint, StepRecord};
use weft_types::{Millis, StepStatus};

use super::step::StepJob;
use super::{DagEnd, Frame, ItemCx, Outcome, Prior, Report, run_dag};
use crate::Inner;

/// Longest list a loop takes.
pub(crate) const MAX_ITEMS: usize = 1_000_000;

/// How one item ended.
enum ItemEnd {
    Done(usize, Result<Value, String>),
    Lost,
}

impl StepJob {
    pub(crate) async fn for_each(
        &self,
        fe: &ForEachSpec,
        ctx: &super::StepCtx,
        started: Millis,
    ) -> Report {
        let mut items = match &fe.list {
            ItemSource::List(expr) => match self.inner.eval(expr, ctx).await {
                Ok(Value::Array(a)) if a.len() <= MAX_ITEMS => {
                    Items::Listed(a.into_iter().map(Some).collect())
                }
                Ok(Value::Array(a)) => {
                    return self
                        .fail_loop(
                            format!("for_each gave {} items; the limit is {MAX_ITEMS}", a.len()),
                            started,
                        )
                        .await;
                }
                Ok(other) => {
                    return self
                        .fail_loop(
                            format!(
                                "for_each needs a list; its expression gave {}",
                                kind_of(&other)
                            ),
                            started,
                        )
                        .await;
                }
                Err(e) => return self.fail_loop(format!("for_each: {e}"), started).await,
            },
            ItemSource::OutputsOf { step, .. } => {
                let rec = match self
                    .inner
                    .opts
                    .store
                    .get_steps(self.run.scope, self.run.id, std::slice::from_ref(step))
                    .await
                {
                    Ok(mut v) => v.pop(),
                    Err(e) => {
                        tracing::warn!(run = %self.run.id, error = %e, "could not read a loop's record; the run will be resumed");
                        return Report::Lost;
                    }
                };
                let total = rec
                    .as_ref()
                    .and_then(|r| r.output.as_ref())
                    // A finished loop's `total`, or a failed one's `items_total`.
                    .and_then(|o| o.get("total").or_else(|| o.get("items_total")))
                    .and_then(Value::as_u64);
                match total {
                    Some(n) if n as usize <= MAX_ITEMS => Items::Streamed {
                        step: step.clone(),
                        total: n as usize,
                        page: HashMap::new(),
                    },
                    _ => {
                        return self
                            .fail_loop(
                                format!("for_each: '{step}' has no item outputs to read (it did not run, or failed before it started its items)"),
                                started,
                            )
                            .await;
                    }
                }
            }
        };
        let total = items.len();
        let fid = self.step().id.clone();
        if self.prior.is_none() {
            // Shows the loop and its size while items run (progress counts item checkpoints).
            let rec = self.record(
                StepStatus::Running,
                1,
                Some(json!({"items_total": total})),
                None,
                started,
            );
            if !self.checkpoint(rec, Vec::new()).await {
                return Report::Lost;
            }
        }
        let mut results: Vec<Value> = if fe.collect {
            vec![Value::Null; total]
        } else {
            Vec::new()
        };
        let mut succeeded = 0usize;
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut todo = Vec::new();
        // Items finished before a resume: a resumed run's checkpoints come without item
        // outputs, so a collecting loop reads them back here, a page at a time.
        let mut finished = Vec::new();
        for i in 0..total {
            let rec = self.all_prior.get(&format!("{fid}[{i}]"));
            match rec.map(|r| r.status) {
                Some(StepStatus::Succeeded) => {
                    succeeded += 1;
                    if fe.collect {
                        finished.push(i);
                    }
                }
                Some(StepStatus::Failed) => {
                    failed.push((i, rec.and_then(|r| r.error.clone()).unwrap_or_default()))
                }
                _ => todo.push(i),
            }
        }
        for chunk in finished.chunks(PAGE) {
            let ids: Vec<String> = chunk.iter().map(|i| format!("{fid}[{i}]")).collect();
            let recs = match self
                .inner
                .opts
                .store
                .get_steps(self.run.scope, self.run.id, &ids)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(run = %self.run.id, error = %e, "could not read a loop's item outputs; the run will be resumed");
                    return Report::Lost;
                }
            };
            for r in recs {
                if let Some(i) = item_index(&r.step_id, &fid)
                    && let Some(slot) = results.get_mut(i)
                {
                    *slot = r.output.unwrap_or(Value::Null);
                }
            }
        }
        let outer = Arc::new(ctx.steps_map());
        let mut next = 0usize;
        let mut set: JoinSet<ItemEnd> = JoinSet::new();
        loop {
            while set.len() < fe.concurrency && failed.is_empty() {
                let Some(&i) = todo.get(next) else { break };
                next += 1;
                let value = match items.take(&self.inner, &self.run, i, &todo[next..]).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(run = %self.run.id, error = %e, "could not read a loop's item outputs; the run will be resumed");
                        set.abort_all();
                        return Report::Lost;
                    }
                };
                let item = ItemTask {
                    inner: self.inner.clone(),
                    run: self.run.clone(),
                    frame: Frame {
                        flow: self.frame.flow.clone(),
                        base: self.frame.base.clone(),
                        item: Some(Arc::new(ItemCx {
                            parent: self.idx,
                            index: Some(i),
                            extra: vec![("item", value), ("index", json!(i))],
                            outer: outer.clone(),
                        })),
                    },
                    prior: self.all_prior.clone(),
                    token: self.token.clone(),
                    loop_id: fid.clone(),
                    started: self.inner.now(),
                };
                set.spawn(item.run());
            }
            if set.is_empty() {
                break;
            }
            tokio::select! {
                joined = set.join_next() => match joined {
                    Some(Ok(ItemEnd::Done(i, Ok(v)))) => {
                        succeeded += 1;
                        if fe.collect {
                            results[i] = v;
                        }
                    }
                    Some(Ok(ItemEnd::Done(i, Err(e)))) => failed.push((i, e)),
                    Some(Ok(ItemEnd::Lost)) | None => {
                        set.abort_all();
                        return Report::Lost;
                    }
                    Some(Err(e)) => failed.push((usize::MAX, format!("an item task crashed: {e}"))),
                },
                _ = self.token.cancelled() => {
                    set.abort_all();
                    return Report::Lost;
                }
            }
        }
        if let Some((i, e)) = failed.iter().min_by_key(|(i, _)| *i) {
            let msg = format!(
                "item {i} failed: {e} ({} of {total} items failed, {succeeded} succeeded)",
                failed.len()
            );
            self.set_class("permanent");
            // The failed record keeps the loop's size for its progress.
            let rec = self.record(
                StepStatus::Failed,
                1,
                Some(json!({"items_total": total})),
                Some(msg.clone()),
                started,
            );
            let level = if self.step().continue_on_error || self.step().has_handlers() {
                "warn"
            } else {
                "error"
            };
            let log = weft_store::NewLog::new(
                level,
                Some(self.record_id()),
                weft_store::RunEvent::StepFailed,
                format!("failed: {msg}"),
            );
            return if self.checkpoint(rec, vec![log]).await {
                Report::Done(self.idx, Outcome::failed(msg))
            } else {
                Report::Lost
            };
        }
        let output = if fe.collect {
            Value::Array(results)
        } else {
            json!({"total": total, "succeeded": succeeded, "failed": 0})
        };
        self.conclude(
            Outcome::Succeeded(output),
            started,
            format!("all {total} items succeeded"),
        )
        .await
    }

    async fn fail_loop(&self, e: String, started: Millis) -> Report {
        self.set_class("permanent");
        self.conclude(Outcome::failed(e.clone()), started, format!("failed: {e}"))
            .await
    }
}

/// Items read ahead from another loop's checkpoints per store read.
const PAGE: usize = 256;

/// A loop's items: a list in memory, or another loop's item outputs read a page at a time
/// (so a loop over a 100,000-item loop's results never holds them all).
enum Items {
    Listed(Vec<Option<Value>>),
    Streamed {
        step: String,
        total: usize,
        page: HashMap<usize, Value>,
    },
}

impl Items {
    fn len(&self) -> usize {
        match self {
            Items::Listed(v) => v.len(),
            Items::Streamed { total, .. } => *total,
        }
    }

    /// Item `i`; a streamed one is read with the items to start after it (`ahead`).
    async fn take(
        &mut self,
        inner: &Inner,
        run: &RunRecord,
        i: usize,
        ahead: &[usize],
    ) -> Result<Value, weft_store::StoreError> {
        match self {
            Items::Listed(v) => Ok(v.get_mut(i).and_then(Option::take).unwrap_or(Value::Null)),
            Items::Streamed { step, page, .. } => {
                if let Some(v) = page.remove(&i) {
                    return Ok(v);
                }
                page.clear();
                let mut want = vec![i];
                want.extend(ahead.iter().take(PAGE - 1));
                let ids: Vec<String> = want.iter().map(|j| format!("{step}[{j}]")).collect();
                let recs = inner.opts.store.get_steps(run.scope, run.id, &ids).await?;
                for r in recs {
                    // An item that failed (the loop continued on error) is given as null.
                    let Some(j) = item_index(&r.step_id, step) else {
                        continue;
                    };
                    if r.status == StepStatus::Succeeded {
                        page.insert(j, r.output.unwrap_or(Value::Null));
                    }
                }
                Ok(page.remove(&i).unwrap_or(Value::Null))
            }
        }
    }
}

/// One item's run of the nested steps.
struct ItemTask {
    inner: Arc<Inner>,
    run: Arc<RunRecord>,
    frame: Frame,
    prior: Prior,
    token: CancellationToken,
    loop_id: String,
    started: Millis,
}

impl ItemTask {
    async fn run(self) -> ItemEnd {
        let Some((item, index)) = self
            .frame
            .item
            .clone()
            .and_then(|it| it.index.map(|i| (it, i)))
        else {
            return ItemEnd::Lost;
        };
        let end = run_dag(
            &self.inner,
            &self.run,
            self.frame.clone(),
            &self.prior,
            &self.token,
            None,
        )
        .await;
        let result = match end {
            DagEnd::Done {
                fatal: None,
                outcomes,
            } => Ok(outcomes
                .iter()
                .rev()
                .find_map(|o| match o {
                    Some(Outcome::Succeeded(v)) => Some(v.clone()),
                    _ => None,
                })
                .unwrap_or(Value::Null)),
            DagEnd::Done { fatal: Some(e), .. } => Err(e),
            DagEnd::Crashed(e) => Err(format!("a step task crashed: {e}")),
            // Validation keeps waiting steps out of loops; no deadline is passed in.
            DagEnd::Parked(..) | DagEnd::TimedOut(_) => {
                Err("a step inside a for_each cannot wait".to_string())
            }
            DagEnd::Lost => return ItemEnd::Lost,
        };
        let (status, output, error) = match &result {
            Ok(v) => (StepStatus::Succeeded, Some(v.clone()), None),
            Err(e) => (StepStatus::Failed, None, Some(e.clone())),
        };
        let rec = StepRecord {
            step_id: format!("{}[{index}]", self.loop_id),
            idx: item.parent as i64,
            status,
            attempts: 1,
            output,
            error,
            started_at: Some(self.started),
            finished_at: Some(self.inner.now()),
        };
        let logs = match &result {
            Ok(_) => Vec::new(),
            Err(e) => vec![NewLog::new(
                "warn",
                Some(rec.step_id.clone()),
                weft_store::RunEvent::StepFailed,
                format!("item {index} failed: {e}"),
            )],
        };
        match self
            .inner
            .opts
            .store
            .checkpoint_step(
                self.run.scope,
                self.run.id,
                &self.inner.opts.owner,
                StepCheckpoint { step: rec, logs },
                self.inner.now(),
            )
            .await
        {
            Ok(true) => {
                weft_types::failpoint_at(
                    "for_each.item_done",
                    &format!("{}[{index}]", self.loop_id),
                );
                ItemEnd::Done(index, result)
            }
            Ok(false) => ItemEnd::Lost,
            Err(e) => {
                tracing::warn!(run = %self.run.id, error = %e, "checkpoint failed; the run will be resumed");
                ItemEnd::Lost
            }
        }
    }
}

/// `i` of an item checkpoint `loop[i]`.
fn item_index(step_id: &str, loop_id: &str) -> Option<usize> {
    step_id
        .strip_prefix(loop_id)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A JSON value's kind, for messages.
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
