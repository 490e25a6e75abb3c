//! Rate limits as GCRA (the generic cell rate algorithm): the whole state of a limit is one
//! number per key, its theoretical arrival time (TAT), so it fits in a database row that every
//! process shares. Pure; the backends store the TAT.

/// A limit: up to `burst` requests at once, refilled at one per `interval_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds per request at the sustained rate.
    pub interval_us: i64,
    /// Requests allowed at once from a full bucket (at least 1).
    pub burst: i64,
}

impl Rate {
    /// `n` a second, with a burst of `n`.
    pub fn per_second(n: u32) -> Self {
        Self::per(n, 1_000_000)
    }

    /// `n` a minute, with a burst of `n`.
    pub fn per_minute(n: u32) -> Self {
        Self::per(n, 60_000_000)
    }

    /// `n` an hour, with a burst of `n`.
    pub fn per_hour(n: u32) -> Self {
        Self::per(n, 3_600_000_000)
    }

    fn per(n: u32, period_us: i64) -> Self {
        let n = i64::from(n.max(1));
        Rate {
            interval_us: (period_us / n).max(1),
            burst: n,
        }
    }

    /// How far ahead of now the TAT may run: the bucket's size in time.
    fn capacity_us(&self) -> i64 {
        self.interval_us.saturating_mul(self.burst.max(1))
    }
}

/// What a limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead (the request was counted).
    Allowed,
    /// Over the limit (nothing was counted); the next request fits after this long.
    Limited {
        /// Milliseconds until a request would be allowed (at least 1).
        retry_after_ms: u64,
    },
}

/// Decides one request at `now_us` against a key whose stored TAT is `tat` (None: never
/// seen); returns the decision and, when allowed, the TAT to store.
pub fn gcra(tat: Option<i64>, now_us: i64, rate: Rate) -> (RateDecision, Option<i64>) {
    let start = tat.map_or(now_us, |t| t.max(now_us));
    let next = start.saturating_add(rate.interval_us);
    let ahead = next - now_us;
    if ahead <= rate.capacity_us() {
        (RateDecision::Allowed, Some(next))
    } else {
        let wait_us = ahead - rate.capacity_us();
        (
            RateDecision::Limited {
                retry_after_ms: (wait_us as u64).div_ceil(1000).max(1),
            },
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: Rate, times_us: &[i64]) -> Vec<bool> {
        let mut tat = None;
        times_us
            .iter()
            .map(|&t| match gcra(tat, t, rate) {
                (RateDecision::Allowed, new) => {
                    tat = new;
                    true
                }
                (RateDecision::Limited { .. }, _) => false,
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_refuses() {
        let r = Rate::per_second(3);
        assert_eq!(run(r, &[0, 0, 0, 0]), [true, true, true, false]);
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let r = Rate::per_second(2); // one per 500 ms, burst 2
        assert_eq!(
            run(r, &[0, 0, 0, 499_000, 500_000, 500_000]),
            [true, true, false, false, true, false]
        );
    }

    #[test]
    fn idle_time_never_banks_more_than_the_burst() {
        let r = Rate::per_second(2);
        assert_eq!(
            run(r, &[0, 100_000_000, 100_000_000, 100_000_000]),
            [true, true, true, false]
        );
    }

    #[test]
    fn refusals_say_when_to_retry_and_count_nothing() {
        let r = Rate::per_minute(1); // one per 60 s
        let (d, tat) = gcra(None, 0, r);
        assert_eq!(d, RateDecision::Allowed);
        let (d, none) = gcra(tat, 15_000_000, r);
        assert_eq!(none, None);
        assert_eq!(
            d,
            RateDecision::Limited {
                retry_after_ms: 45_000
            }
        );
        // A refused request does not push the next allowed time further out.
        assert_eq!(gcra(tat, 60_000_000, r).0, RateDecision::Allowed);
    }

    #[test]
    fn extreme_inputs_do_not_overflow() {
        let r = Rate::per_hour(u32::MAX);
        assert_eq!(gcra(Some(i64::MAX), 0, r).1, None);
        let r = Rate {
            interval_us: i64::MAX,
            burst: i64::MAX,
        };
        assert_eq!(gcra(None, i64::MAX, r).0, RateDecision::Allowed);
    }
}
