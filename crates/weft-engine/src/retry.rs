//! Retry delays: exponential backoff with full jitter, `Retry-After` honoured. Pure.

use std::time::Duration;

use weft_flow::RetryPolicy;

/// Delay before attempt `attempt + 1`, after attempt number `attempt` (from 1) failed.
///
/// Full jitter: a uniform draw in `[0, min(max, initial * backoff^(attempt-1))]`, where `unit`
/// is that draw's position in `[0, 1)`. A server's `Retry-After` is a floor: never retry earlier
/// than it asked, even past `max`.
pub fn backoff_delay(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let exp = policy
        .backoff
        .powi(attempt.saturating_sub(1).min(64) as i32);
    let ceiling = (policy.initial.as_secs_f64() * exp).min(policy.max.as_secs_f64());
    let jittered = Duration::from_secs_f64((ceiling * unit.clamp(0.0, 1.0)).max(0.0));
    match retry_after {
        Some(ra) => jittered.max(ra).min(weft_flow::MAX_DURATION),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            backoff: 2.0,
            max: Duration::from_secs(10),
        }
    }

    fn check(attempt: u32, retry_after: Option<u64>, unit: f64, expected_ms: u64) {
        let d = backoff_delay(
            &policy(),
            attempt,
            retry_after.map(Duration::from_secs),
            unit,
        );
        assert_eq!(
            d.as_millis() as u64,
            expected_ms,
            "attempt {attempt} unit {unit}"
        );
    }

    #[test]
    fn exponential_with_full_jitter_and_cap() {
        check(1, None, 0.999_999, 999);
        check(2, None, 0.5, 1000);
        check(3, None, 0.5, 2000);
        check(4, None, 1.0, 8000);
        check(5, None, 1.0, 10_000); // capped at max
        check(60, None, 1.0, 10_000); // no overflow far out
        check(3, None, 0.0, 0); // full jitter reaches zero
    }

    #[test]
    fn retry_after_is_a_floor() {
        check(1, Some(7), 0.1, 7000);
        check(1, Some(30), 1.0, 30_000); // even above max
        check(4, Some(1), 1.0, 8000);
    }
}
