//! Claiming work: the dispatcher loop and the lease keeper.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::Inner;

/// Most runs claimed in one store call.
const CLAIM_BATCH: usize = 256;

/// Claims ready runs while there is capacity, and sleeps until woken, polled or stopped.
pub(crate) async fn dispatcher(inner: Arc<Inner>) {
    let lease = inner.opts.lease.as_millis() as i64;
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let free = inner
            .opts
            .max_in_flight
            .saturating_sub(inner.in_flight.load(Ordering::SeqCst));
        if free == 0 {
            tokio::select! {
                _ = inner.capacity.notified() => {},
                _ = inner.shutdown.cancelled() => return,
            }
            continue;
        }
        let want = free.min(CLAIM_BATCH);
        let claimed = match inner
            .opts
            .store
            .claim_runs(&inner.opts.owner, inner.now(), lease, want)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming runs failed; retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = inner.shutdown.cancelled() => return,
                }
                continue;
            }
        };
        let n = claimed.len();
        let now = inner.now();
        inner.metrics.claimed.inc_by(n as u64);
        for c in claimed {
            // A run with no checkpoints is (nearly always) on its first claim.
            if c.steps.is_empty() {
                let lag = (now - c.run.created_at).max(0) as f64 / 1000.0;
                inner.metrics.claim_lag.observe(lag);
            }
            inner.in_flight.fetch_add(1, Ordering::SeqCst);
            inner.metrics.in_flight.inc();
            let inner2 = inner.clone();
            // Boxed: the run's future is large, and spawning it by value copied it.
            let run = Box::pin(crate::executor::execute(inner.clone(), c));
            tokio::spawn(async move {
                // Past shutdown's deadline the run stops where it is, as in a crash; its lease
                // is then handed back.
                tokio::select! {
                    () = run => {}
                    () = inner2.stop_runs.cancelled() => {}
                }
                inner2.metrics.in_flight.dec();
                if inner2.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                    inner2.idle.notify_waiters();
                }
                inner2.capacity.notify_one();
            });
        }
        if n == want {
            continue;
        }
        tokio::select! {
            _ = inner.wake.notified() => {},
            _ = inner.opts.clock.sleep(inner.opts.poll_interval) => {},
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// Keeps this process's leases fresh and returns expired ones (dead processes') to the queue.
pub(crate) async fn lease_keeper(inner: Arc<Inner>) {
    let every = inner.opts.lease / 3;
    loop {
        tokio::select! {
            _ = inner.opts.clock.sleep(every) => {},
            _ = inner.shutdown.cancelled() => return,
        }
        let now = inner.now();
        if inner.in_flight.load(Ordering::SeqCst) > 0
            && let Err(e) = inner
                .opts
                .store
                .renew_leases(&inner.opts.owner, now + inner.opts.lease.as_millis() as i64)
                .await
        {
            tracing::warn!(error = %e, "renewing leases failed");
        }
        match inner.opts.store.reclaim_expired(now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(runs = n, "returned runs with expired leases to the queue");
                inner.wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "reclaiming expired leases failed"),
        }
    }
}

/// Most parked runs made ready in one store call.
const WAKE_BATCH: usize = 1000;

/// Longest sleep between looks for due timers when none is known (another process may have
/// parked a run).
const TIMER_RECHECK: Duration = Duration::from_secs(60);

/// Makes parked runs whose timer is due ready again. One loop for all runs: a waiting run costs
/// a row, not a task.
pub(crate) async fn timers(inner: Arc<Inner>) {
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let now = inner.now();
        match inner.opts.store.wake_runs(now, WAKE_BATCH).await {
            Ok(n) => {
                if n > 0 {
                    inner.wake.notify_one();
                }
                if n == WAKE_BATCH {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "waking parked runs failed; retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = inner.shutdown.cancelled() => return,
                }
                continue;
            }
        }
        let next = match inner.opts.store.next_wake_at().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next timer failed");
                None
            }
        };
        // An absolute deadline: if the clock moved since `now`, a due timer fires at once.
        let recheck = now + TIMER_RECHECK.as_millis() as i64;
        let at = next.map_or(recheck, |t| t.min(recheck));
        tokio::select! {
            _ = inner.opts.clock.sleep_until(at) => {},
            _ = inner.timer_wake.notified() => {},
            _ = inner.shutdown.cancelled() => return,
        }
    }
}
