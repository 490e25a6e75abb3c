//! Time behind a trait, so the engine's backoff, timeouts and schedules can be tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::Millis;

/// Source of the current time and of timed waits.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in epoch milliseconds.
    fn now_ms(&self) -> Millis;
    /// Completes once the clock has advanced by `d`.
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
    /// Completes once the clock reads `at` (epoch ms) or later. Unlike `sleep`, a deadline
    /// computed before the clock moved still fires on time.
    fn sleep_until(
        &self,
        at: Millis,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.sleep(Duration::from_millis((at - self.now_ms()).max(0) as u64))
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that only moves when a test calls [`ManualClock::advance`].
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: AtomicI64,
    tick: tokio::sync::watch::Sender<Millis>,
}

impl ManualClock {
    /// A manual clock starting at `start` epoch milliseconds.
    pub fn new(start: Millis) -> Self {
        let (tick, _) = tokio::sync::watch::channel(start);
        Self {
            inner: Arc::new(ManualInner {
                now: AtomicI64::new(start),
                tick,
            }),
        }
    }
    /// Moves time forward and wakes every sleeper whose deadline has passed.
    pub fn advance(&self, d: Duration) {
        let now = self
            .inner
            .now
            .fetch_add(d.as_millis() as i64, Ordering::SeqCst)
            + d.as_millis() as i64;
        self.inner.tick.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.inner.now.load(Ordering::SeqCst)
    }
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.sleep_until(self.now_ms() + d.as_millis() as i64)
    }
    fn sleep_until(
        &self,
        deadline: Millis,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let mut rx = self.inner.tick.subscribe();
        Box::pin(async move {
            loop {
                if *rx.borrow_and_update() >= deadline {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_only_after_advance() {
        let c = ManualClock::new(1_000);
        let s = c.sleep(Duration::from_secs(5));
        let h = tokio::spawn(s);
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        c.advance(Duration::from_secs(4));
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        c.advance(Duration::from_secs(1));
        assert!(
            tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .is_ok()
        );
        assert_eq!(c.now_ms(), 6_000);
    }
}
