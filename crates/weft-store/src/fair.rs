//! Weighted-fair sharing of free execution slots across tenants: pure, shared by every backend.
//!
//! Each slot goes to the tenant with the lowest (running + granted) / weight that still has
//! ready work and is under its concurrency cap. A tenant with 100,000 queued runs therefore
//! cannot hold back another tenant's first run: the newcomer has the lowest share and gets the
//! next free slot.

/// One tenant's demand at claim time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Runs of the tenant running now (on every worker).
    pub running: i64,
    /// Ready runs available to claim (may be capped at the batch size).
    pub ready: i64,
    /// Fair-share weight, at least 1.
    pub weight: i64,
    /// Most runs the tenant may run at once, if limited.
    pub cap: Option<i64>,
}

/// How many of `slots` each tenant gets, in the order given.
pub fn shares(demands: &[Demand], slots: usize) -> Vec<usize> {
    let mut granted = vec![0usize; demands.len()];
    for _ in 0..slots {
        let mut best: Option<(usize, i64, i64)> = None;
        for (i, d) in demands.iter().enumerate() {
            let g = granted[i] as i64;
            if g >= d.ready || d.cap.is_some_and(|c| d.running + g >= c) {
                continue;
            }
            let (load, w) = (d.running + g, d.weight.max(1));
            // Compare load/w without division: a/b < c/d  <=>  a*d < c*b.
            let better = match best {
                None => true,
                Some((_, bl, bw)) => (load as i128) * (bw as i128) < (bl as i128) * (w as i128),
            };
            if better {
                best = Some((i, load, w));
            }
        }
        match best {
            Some((i, _, _)) => granted[i] += 1,
            None => break,
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(running: i64, ready: i64, weight: i64, cap: Option<i64>) -> Demand {
        Demand {
            running,
            ready,
            weight,
            cap,
        }
    }

    #[test]
    fn a_newcomer_gets_the_next_slot_ahead_of_a_flood() {
        // Tenant A runs 64 and has 100k waiting; B has one run waiting.
        assert_eq!(
            shares(&[d(64, 100_000, 1, None), d(0, 1, 1, None)], 1),
            vec![0, 1]
        );
        assert_eq!(
            shares(&[d(64, 100_000, 1, None), d(0, 1, 1, None)], 8),
            vec![7, 1]
        );
    }

    #[test]
    fn weights_split_slots_in_proportion() {
        assert_eq!(
            shares(&[d(0, 1000, 3, None), d(0, 1000, 1, None)], 40),
            vec![30, 10]
        );
        assert_eq!(
            shares(&[d(0, 1000, 1, None), d(0, 1000, 1, None)], 9)
                .iter()
                .sum::<usize>(),
            9
        );
    }

    #[test]
    fn caps_and_readiness_bound_the_grant() {
        assert_eq!(
            shares(&[d(4, 100, 1, Some(5)), d(0, 2, 1, None)], 10),
            vec![1, 2]
        );
        assert_eq!(shares(&[d(5, 100, 1, Some(5))], 10), vec![0]);
        assert_eq!(shares(&[], 10), Vec::<usize>::new());
    }
}
