//! The balancer's arithmetic. Each endpoint's cost is a peak-sensitive moving average of its
//! latency times its requests in flight plus one (the "peak EWMA" of Finagle and
//! linkerd2-proxy); a request goes to one of two endpoints drawn at random ("power of two
//! choices"). Two draws come close to the least loaded of all without reading all, and do not
//! send every worker to the same endpoint at once as always-least-loaded would.
//!
//! Of the two, the cheaper is taken with a probability that grows with the gap: with costs
//! `a` and `b`, the first with probability `b / (a + b)`. Always taking the cheaper starves an
//! endpoint whose estimate one slow answer raised: it loses every draw, so it gets no request
//! that would bring its estimate down, until time decays it. Under load the costs are far
//! apart (requests in flight multiply them) and the choice is nearly the strict one; with
//! little load and equal endpoints it stays an even split.
//!
//! Each thread keeps its own view of each endpoint (its own requests in flight there and its own
//! estimate, on cache lines no other worker writes), and balances its own requests by it, as
//! independent clients each running this balancer would: the sum of loads each balanced evenly
//! is balanced, and an endpoint that turns slow is noticed by each thread on its first slow
//! answer there. The state is atomics without a lock; two threads that share a shard and race
//! may lose one sample, which only makes the estimate a little older.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How fast the latency average forgets, in nanoseconds: a sample's weight falls by `e` in it.
/// An idle endpoint's estimate decays toward 0 on the same scale.
const DECAY_NS: f64 = 10e9;

/// The least weight a sample below the estimate gets: however dense the samples, a few fast
/// answers bring down an estimate one slow answer raised, so a scheduling hiccup does not hold
/// an endpoint back for long (measured: with 0.25 the per-pod counts of equal pods spread
/// about 1.3 binomial σ, with 0.5 about 1.1).
const MIN_STEP: f64 = 0.5;

/// Added to every estimate so that requests in flight still count while the estimates are 0
/// (a new endpoint, an idle set): 100 µs, about one loopback exchange.
const FLOOR_NS: f64 = 100_000.0;

/// One endpoint's latency as one thread sees it.
#[derive(Debug, Default)]
pub struct Load {
    /// The latency estimate in nanoseconds (`f64` bits), as of `stamp`.
    estimate: AtomicU64,
    /// When the estimate was last written, in nanoseconds on the caller's clock.
    stamp: AtomicU64,
}

impl Load {
    /// The cost of sending one more request at `now` with `in_flight` already there: the
    /// decayed estimate times the requests in flight plus one.
    pub fn cost(&self, now: u64, in_flight: u64) -> f64 {
        (self.estimate_at(now) + FLOOR_NS) * (in_flight as f64 + 1.0)
    }

    /// Takes in a latency sample of `latency_ns` seen at `now`: above the estimate it becomes
    /// the estimate at once (a slowing endpoint is noticed on its first slow answer); below, it
    /// moves the estimate by the weight its age gives it.
    pub fn observe(&self, latency_ns: u64, now: u64) {
        let sample = latency_ns as f64;
        let previous = self.estimate_at(now);
        let next = if sample >= previous {
            sample
        } else {
            let elapsed = now.saturating_sub(self.stamp.load(Relaxed)) as f64;
            let keep = (-elapsed / DECAY_NS).exp().min(1.0 - MIN_STEP);
            previous * keep + sample * (1.0 - keep)
        };
        self.estimate.store(next.to_bits(), Relaxed);
        self.stamp.store(now, Relaxed);
    }

    /// The estimate decayed toward 0 for the time since it was written.
    fn estimate_at(&self, now: u64) -> f64 {
        let estimate = f64::from_bits(self.estimate.load(Relaxed));
        if estimate == 0.0 {
            return 0.0;
        }
        let elapsed = now.saturating_sub(self.stamp.load(Relaxed)) as f64;
        estimate * (-elapsed / DECAY_NS).exp()
    }
}

/// Whether to take the first of two endpoints costing `a` and `b`: with probability
/// `b / (a + b)`, drawn from `random`.
pub fn prefer_first(a: f64, b: f64, random: u64) -> bool {
    // 53 random bits as a fraction in [0, 1).
    let draw = (random >> 11) as f64 / (1u64 << 53) as f64;
    draw * (a + b) < b
}

/// Two different indices below `n` (`n` ≥ 2) from one random number.
pub fn two_of(n: usize, random: u64) -> (usize, usize) {
    debug_assert!(n >= 2);
    let a = (random % n as u64) as usize;
    let b = ((random >> 32) % (n as u64 - 1)) as usize;
    // b is drawn from the n - 1 others: skip over a.
    (a, if b >= a { b + 1 } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn in_flight_counts_while_estimates_are_zero() {
        let load = Load::default();
        assert!(load.cost(0, 0) < load.cost(0, 1));
        assert_eq!(load.cost(0, 0), FLOOR_NS);
    }

    #[test]
    fn a_slow_sample_is_taken_at_once_and_forgotten_slowly() {
        let load = Load::default();
        load.observe(MS, 0);
        load.observe(100 * MS, 1);
        assert!(load.cost(1, 0) > 99.0 * MS as f64);
        // Fast answers pull it down over several samples, not in one.
        load.observe(MS, 2);
        let after_one = load.cost(2, 0);
        assert!(after_one > 50.0 * MS as f64, "{after_one}");
        for t in 3..20 {
            load.observe(MS, t);
        }
        assert!(load.cost(20, 0) < 2.0 * MS as f64);
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let load = Load::default();
        load.observe(100 * MS, 0);
        let later = load.cost(120_000 * MS, 0);
        assert!(later < 2.0 * FLOOR_NS, "{later}");
    }

    #[test]
    fn the_cheaper_is_preferred_by_the_gap() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut first = [0u32; 3];
        for _ in 0..30_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            first[0] += u32::from(prefer_first(1.0, 1.0, x));
            first[1] += u32::from(prefer_first(1.0, 3.0, x));
            first[2] += u32::from(prefer_first(1.0, 99.0, x));
        }
        // 15,000, 22,500 and 29,700 expected; σ ≤ 87.
        assert!((14_500..15_500).contains(&first[0]), "{first:?}");
        assert!((22_000..23_000).contains(&first[1]), "{first:?}");
        assert!(first[2] > 29_400, "{first:?}");
    }

    #[test]
    fn two_of_draws_two_different_indices_evenly() {
        let mut seen = [[0u32; 5]; 5];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50_000 {
            // xorshift: any spread of bits will do here.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (a, b) = two_of(5, x);
            assert_ne!(a, b);
            seen[a][b] += 1;
        }
        for (a, row) in seen.iter().enumerate() {
            for (b, &count) in row.iter().enumerate() {
                if a != b {
                    // 2,500 expected per ordered pair; 5 σ is 250.
                    assert!((2_250..2_750).contains(&count), "{a},{b}: {count}");
                }
            }
        }
    }
}
