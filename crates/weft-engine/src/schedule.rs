//! Cron schedules: each due tick starts one run; ticks missed while down collapse into one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use weft_store::{NewRun, StoreError};
use weft_types::RunId;

use crate::Inner;

/// Longest the scheduler sleeps without re-reading the schedule table.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub(crate) async fn scheduler(inner: Arc<Inner>) {
    loop {
        let now = inner.now();
        if let Err(e) = fire_due(&inner, now).await {
            tracing::warn!(error = %e, "firing schedules failed");
        }
        let sleep = match inner.opts.store.next_schedule_at().await {
            Ok(Some(at)) => Duration::from_millis(
                (at - inner.now()).clamp(0, MAX_SLEEP.as_millis() as i64) as u64,
            ),
            _ => MAX_SLEEP,
        };
        tokio::select! {
            _ = inner.opts.clock.sleep(sleep) => {},
            _ = inner.schedule_wake.notified() => {},
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// Fires every due schedule once.
pub(crate) async fn fire_due(inner: &Inner, now: i64) -> Result<usize, crate::EngineError> {
    let due = inner.opts.store.due_schedules(now, 100).await?;
    let mut fired = 0;
    for d in due {
        let flow = match inner
            .opts
            .store
            .get_flow(d.scope, &d.flow_id.to_string())
            .await
        {
            Ok(f) => f,
            Err(_) => {
                inner
                    .opts
                    .store
                    .set_schedule(d.scope, d.flow_id, None)
                    .await?;
                continue;
            }
        };
        let Some(version) = flow.published_version else {
            inner
                .opts
                .store
                .set_schedule(d.scope, d.flow_id, None)
                .await?;
            continue;
        };
        let compiled = inner.compiled(d.scope, d.flow_id, version).await?;
        // The next tick after *now*, not after the due tick: missed ticks fire once, not N times.
        let next = compiled.trigger.next_tick_after(now.max(d.tick_at));
        let run = NewRun {
            scope: d.scope,
            id: RunId::new(),
            flow_id: d.flow_id,
            flow_name: flow.name.clone(),
            flow_version: version,
            trigger: json!({"kind": "schedule", "scheduled_at": weft_types::rfc3339(d.tick_at), "fired_at": weft_types::rfc3339(now)}),
            dedupe_key: Some(format!("schedule:{}", d.tick_at)),
            dedupe_window_ms: i64::MAX / 4,
            now,
            audit: None,
            parent: None,
            traceparent: None,
        };
        match inner.opts.store.fire_schedule(run, d.tick_at, next).await {
            Ok(Some(_)) => fired += 1,
            Ok(None) => {}
            // Over its plan: this tick starts no run, and the schedule moves on to the next one.
            Err(StoreError::Quota { detail, .. }) => {
                tracing::warn!(flow = %d.flow_id, %detail, "scheduled run skipped: quota");
                inner
                    .opts
                    .store
                    .set_schedule(d.scope, d.flow_id, next)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if fired > 0 {
        inner.wake.notify_one();
    }
    Ok(fired)
}
