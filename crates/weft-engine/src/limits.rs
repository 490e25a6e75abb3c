//! Isolation between providers: the manifests' rate limits (a GCRA bucket per tenant,
//! connector, credential and endpoint, shared by every process through the store), pauses a
//! provider asked for (429 / `Retry-After`), a concurrency cap per connector, and a circuit
//! breaker per (connector, credential) so one failing provider does not tie up the workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weft_connectors::Manifest;
use weft_store::rate::{Rate, RateDecision};
use weft_types::{Millis, Scope};

use crate::Inner;

/// Calls in flight per connector in one process.
pub const CONNECTOR_CONCURRENCY: usize = 32;
/// Consecutive failures (5xx, timeouts, connection errors) that open a breaker.
pub const BREAKER_FAILURES: u32 = 5;
/// How long an open breaker refuses calls before letting one through to test the provider.
pub const BREAKER_OPEN: Duration = Duration::from_secs(30);
/// Longest a step waits in place for its rate limit; longer waits go back to the retry loop.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(60);

/// Why a call may not go out now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The provider (or its declared limit) needs this long; the step waits, not failing.
    RateLimited(Duration, String),
    /// The breaker is open; the step waits this long, not failing.
    BreakerOpen(Duration, String),
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Millis>,
}

/// Per-process state of the guards (the rate buckets live in the store).
#[derive(Default)]
pub(crate) struct Guards {
    breakers: Mutex<HashMap<String, Breaker>>,
    paused: Mutex<HashMap<String, Millis>>,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// What one call holds while it runs.
pub(crate) struct Ticket {
    key: String,
    /// The connector, for metrics.
    connector: String,
    /// Whether the call's connector is one provider (every one but `http`).
    one_provider: bool,
    _slot: Option<OwnedSemaphorePermit>,
}

/// A step's own `rate_limit`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepLimit<'a> {
    /// The flow (the bucket is shared by every run of the step).
    pub flow: &'a str,
    /// The step id.
    pub step: &'a str,
    /// Requests per second.
    pub per_second: f64,
    /// Requests at once.
    pub burst: u32,
}

fn to_rate(per_second: f64, burst: u32) -> Rate {
    Rate {
        interval_us: (1_000_000.0 / per_second).round().max(1.0) as i64,
        burst: i64::from(burst.max(1)),
    }
}

/// The rate limit of `action` in `m`: its own endpoint's, else `*`.
fn rate_for(m: &Manifest, action: &str) -> Option<Rate> {
    let rl = m
        .rate_limits
        .iter()
        .find(|r| r.endpoint == action)
        .or_else(|| m.rate_limits.iter().find(|r| r.endpoint == "*"))?;
    Some(to_rate(rl.per_second, rl.burst))
}

impl Inner {
    /// Waits for the call's rate limit, then takes a connector slot. Returns a hold when the
    /// provider paused us or the breaker is open: the caller reports it as a rate-limited,
    /// retryable attempt, which waits without using up attempts.
    pub(crate) async fn before_call(
        &self,
        scope: Scope,
        m: &Manifest,
        action: &str,
        credential: Option<&str>,
        step_limit: Option<StepLimit<'_>>,
    ) -> Result<Ticket, Hold> {
        let key = format!("{}:{}:{}", scope.tenant, m.name, credential.unwrap_or("-"));
        let now = self.now();
        // `http` reaches any host, so it is not one provider: a flaky or rate-limited URL must
        // not pause, break or cap a tenant's other requests. Only a step's own limit applies.
        let one_provider = m.name != "http";
        if let Some(until) = self
            .guards
            .paused
            .lock()
            .ok()
            .filter(|_| one_provider)
            .and_then(|p| p.get(&key).copied())
            .filter(|u| *u > now)
        {
            return Err(Hold::RateLimited(
                Duration::from_millis((until - now) as u64),
                format!("{}.{action}: the provider asked to wait", m.name),
            ));
        }
        if let (true, Ok(mut b)) = (one_provider, self.guards.breakers.lock()) {
            let br = b.entry(key.clone()).or_default();
            match br.open_until {
                Some(until) if until > now => {
                    return Err(Hold::BreakerOpen(
                        Duration::from_millis((until - now) as u64),
                        format!(
                            "{}.{action}: {} failed {BREAKER_FAILURES} times in a row; calls pause for {}s before one is tried again",
                            m.name,
                            m.title,
                            BREAKER_OPEN.as_secs()
                        ),
                    ));
                }
                // Half-open: this call is the trial; the next failure opens it again at once.
                Some(_) => {
                    br.open_until = None;
                    br.failures = BREAKER_FAILURES.saturating_sub(1);
                }
                None => {}
            }
        }
        // A step's own `rate_limit` replaces the connector's, shared by that step's runs.
        let limit = match step_limit {
            Some(l) => Some((
                to_rate(l.per_second, l.burst),
                format!("step:{}:{}:{}", scope.tenant, l.flow, l.step),
            )),
            None => rate_for(m, action).map(|r| (r, format!("conn:{key}:{action}"))),
        };
        if let Some((rate, bucket)) = limit {
            loop {
                let now_us = self.now().saturating_mul(1000);
                match self.opts.store.rate_take(&bucket, rate, now_us).await {
                    Ok(RateDecision::Allowed) => break,
                    Ok(RateDecision::Limited { retry_after_ms }) => {
                        let wait = Duration::from_millis(retry_after_ms);
                        if wait > MAX_INLINE_WAIT {
                            return Err(Hold::RateLimited(
                                wait,
                                format!("{}.{action}: over the connector's rate limit", m.name),
                            ));
                        }
                        // The step waits in place: a rate limit is not a failure.
                        self.opts.clock.sleep(wait).await;
                    }
                    // The limit is advisory; a store hiccup must not stop the call.
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limit unavailable; calling without it");
                        break;
                    }
                }
            }
        }
        if !one_provider {
            return Ok(Ticket {
                key,
                connector: m.name.clone(),
                one_provider,
                _slot: None,
            });
        }
        let sem = self
            .guards
            .slots
            .lock()
            .ok()
            .map(|mut s| {
                s.entry(m.name.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(CONNECTOR_CONCURRENCY)))
                    .clone()
            })
            .unwrap_or_else(|| Arc::new(Semaphore::new(CONNECTOR_CONCURRENCY)));
        match sem.acquire_owned().await {
            Ok(slot) => Ok(Ticket {
                key,
                connector: m.name.clone(),
                one_provider,
                _slot: Some(slot),
            }),
            // The semaphore is never closed.
            Err(_) => Err(Hold::RateLimited(
                Duration::from_secs(1),
                "connector slots closed".into(),
            )),
        }
    }

    /// Breakers open in this process now (for the metrics).
    pub(crate) fn open_breakers(&self) -> i64 {
        let now = self.now();
        self.guards
            .breakers
            .lock()
            .map(|b| {
                b.values()
                    .filter(|br| br.open_until.is_some_and(|u| u > now))
                    .count() as i64
            })
            .unwrap_or(0)
    }

    /// Records how a call went: success closes the breaker, a transient failure counts toward
    /// opening it, and a provider's `Retry-After` pauses the (connector, credential).
    pub(crate) fn after_call(&self, t: Ticket, outcome: CallOutcome) {
        let now = self.now();
        match outcome {
            CallOutcome::Ok | CallOutcome::Permanent => {
                if let Ok(mut b) = self.guards.breakers.lock() {
                    b.remove(&t.key);
                }
            }
            CallOutcome::RateLimited(after) if t.one_provider => {
                if let (Some(d), Ok(mut p)) = (after, self.guards.paused.lock()) {
                    if p.len() > 10_000 {
                        p.retain(|_, until| *until > now);
                    }
                    p.insert(t.key.clone(), now + d.as_millis() as Millis);
                }
            }
            CallOutcome::Transient if t.one_provider => {
                if let Ok(mut b) = self.guards.breakers.lock() {
                    let br = b.entry(t.key.clone()).or_default();
                    br.failures += 1;
                    if br.failures >= BREAKER_FAILURES {
                        if br.open_until.is_none_or(|u| u <= now) {
                            crate::metrics::EngineMetrics::per_connector(
                                &self.metrics.breakers_opened,
                                &t.connector,
                            );
                        }
                        br.open_until = Some(now + BREAKER_OPEN.as_millis() as Millis);
                        tracing::warn!(key = %t.key, "circuit breaker open for {}s", BREAKER_OPEN.as_secs());
                    }
                }
            }
            CallOutcome::RateLimited(_) | CallOutcome::Transient => {}
        }
    }
}

/// How one call ended, for the guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// It succeeded.
    Ok,
    /// It failed in a way retrying cannot fix (the provider is up).
    Permanent,
    /// The provider rate-limited it, maybe saying for how long.
    RateLimited(Option<Duration>),
    /// 5xx, timeout, connection failure.
    Transient,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_endpoint_or_the_wildcard() {
        let gh = weft_connectors::manifest::find("github", None).unwrap();
        let r = rate_for(gh, "create_issue").unwrap();
        assert_eq!((r.interval_us, r.burst), (100_000, 20));
        let slack = weft_connectors::manifest::find("slack", None).unwrap();
        let r = rate_for(slack, "post_message").unwrap();
        assert_eq!((r.interval_us, r.burst), (1_000_000, 5));
        assert!(
            rate_for(
                weft_connectors::manifest::find("http", None).unwrap(),
                "request"
            )
            .is_none()
        );
    }
}
