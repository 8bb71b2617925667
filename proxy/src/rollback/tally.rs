//! The evidence as it arrives: monotonic per-color counters of weighted and forced outcomes and
//! a latency histogram, kept in per-thread shards so that recording a response writes no cache
//! line another worker writes. Readers (the verdict, `/status`, `/metrics`) sum the shards.
//!
//! Counters are `u64` and only grow: at 1,000,000 requests a second they would take more than
//! 500,000 years to wrap, so no epoch, bucket or saturation logic is needed; windows and
//! batches are differences of two readings.
//!
//! Beside the counters, each color keeps its failures in a row and where its latest failure
//! fell among its successes, for the streak rule. Those are shared, but written only on a
//! failure and on the first success after one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::config::Color;
use crate::rollback::latency;
use crate::rollback::sequential::{Counts, Streaks};
use crate::shard::{self, SHARDS};

/// Whether an outcome is evidence about the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Routed by weight (or sticky weight): the canary and stable saw the same kind of traffic.
    Weighted,
    /// Forced by `canary-by-header` or `canary-by-cookie`: chosen by the client, counted but
    /// never held against a color.
    Forced,
}

/// One color's counters in one shard.
struct ColorShard {
    /// Weighted successes and failures.
    weighted: [AtomicU64; 2],
    /// Forced successes and failures.
    forced: [AtomicU64; 2],
    /// Latency to the response headers of the requests that got a response: weighted ones
    /// first (the latency trigger's evidence), then forced ones.
    latency: [[AtomicU64; latency::BINS]; 2],
}

/// One shard, on cache lines of its own.
#[repr(align(128))]
struct Shard([ColorShard; 2]);

/// The streak rule's inputs for one color.
#[repr(align(128))]
#[derive(Default)]
struct Run {
    /// Weighted failures in a row, up to the latest weighted request.
    failures: AtomicU64,
    /// The color's weighted successes when its latest weighted failure was recorded.
    successes_at_failure: AtomicU64,
}

/// Per-color counters, sharded.
pub struct Tally {
    shards: Box<[Shard]>,
    runs: [Run; 2],
}

/// Every counter of one color, summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColorTotals {
    /// Weighted outcomes.
    pub weighted: Counts,
    /// Forced outcomes.
    pub forced: Counts,
    /// The latency histogram, weighted and forced requests together.
    pub latency: [u64; latency::BINS],
    /// The latency histogram of weighted requests alone.
    pub weighted_latency: [u64; latency::BINS],
}

impl Default for ColorTotals {
    fn default() -> Self {
        ColorTotals {
            weighted: Counts::default(),
            forced: Counts::default(),
            latency: [0; latency::BINS],
            weighted_latency: [0; latency::BINS],
        }
    }
}

impl ColorTotals {
    /// What was added since `earlier`.
    pub fn since(&self, earlier: &ColorTotals) -> ColorTotals {
        ColorTotals {
            weighted: self.weighted.since(earlier.weighted),
            forced: self.forced.since(earlier.forced),
            latency: bins_since(&self.latency, &earlier.latency),
            weighted_latency: bins_since(&self.weighted_latency, &earlier.weighted_latency),
        }
    }
}

/// What a histogram gained since `earlier`.
pub fn bins_since(
    now: &[u64; latency::BINS],
    earlier: &[u64; latency::BINS],
) -> [u64; latency::BINS] {
    let mut bins = *now;
    for (bin, old) in bins.iter_mut().zip(earlier) {
        *bin = bin.saturating_sub(*old);
    }
    bins
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    /// All zeros.
    pub fn new() -> Tally {
        let color = || ColorShard {
            weighted: Default::default(),
            forced: Default::default(),
            latency: [const { [const { AtomicU64::new(0) }; latency::BINS] }; 2],
        };
        Tally {
            shards: (0..SHARDS).map(|_| Shard([color(), color()])).collect(),
            runs: Default::default(),
        }
    }

    /// Records one outcome of `color`; `latency` is the time to the response headers, if there
    /// was a response.
    pub fn record(
        &self,
        color: Color,
        evidence: Evidence,
        failed: bool,
        latency: Option<Duration>,
    ) {
        let shard = &self.shards[shard::index()].0[color.index()];
        let (counters, bins) = match evidence {
            Evidence::Weighted => (&shard.weighted, &shard.latency[0]),
            Evidence::Forced => (&shard.forced, &shard.latency[1]),
        };
        counters[usize::from(failed)].fetch_add(1, Relaxed);
        if let Some(latency) = latency {
            bins[latency::bin(latency)].fetch_add(1, Relaxed);
        }
        if evidence == Evidence::Forced {
            return;
        }
        let run = &self.runs[color.index()];
        if failed {
            run.failures.fetch_add(1, Relaxed);
            run.successes_at_failure
                .store(self.weighted(color).successes(), Relaxed);
        } else if run.failures.load(Relaxed) != 0 {
            // Checked first, so that the healthy path does not write a shared cache line.
            run.failures.store(0, Relaxed);
        }
    }

    /// `color`'s weighted outcomes so far.
    pub fn weighted(&self, color: Color) -> Counts {
        let (mut successes, mut failures) = (0, 0);
        for shard in self.shards.iter() {
            let c = &shard.0[color.index()].weighted;
            successes += c[0].load(Relaxed);
            failures += c[1].load(Relaxed);
        }
        Counts::new(successes, failures)
    }

    /// `color`'s latency histogram of weighted requests so far.
    pub fn weighted_latency(&self, color: Color) -> [u64; latency::BINS] {
        let mut sum = [0; latency::BINS];
        for shard in self.shards.iter() {
            for (s, bin) in sum.iter_mut().zip(&shard.0[color.index()].latency[0]) {
                *s += bin.load(Relaxed);
            }
        }
        sum
    }

    /// The canary's failures in a row and stable's successes in a row.
    pub fn streaks(&self, canary: Color) -> Streaks {
        let stable = canary.other();
        let run = &self.runs[stable.index()];
        Streaks {
            canary: self.runs[canary.index()].failures.load(Relaxed),
            stable: self
                .weighted(stable)
                .successes()
                .saturating_sub(run.successes_at_failure.load(Relaxed)),
        }
    }

    /// Forgets `color`'s failures in a row: a new canary starts with a clean streak.
    pub fn reset_streak(&self, color: Color) {
        self.runs[color.index()].failures.store(0, Relaxed);
    }

    /// Every counter of `color`, summed.
    pub fn totals(&self, color: Color) -> ColorTotals {
        let mut t = ColorTotals::default();
        let (mut w, mut f) = ([0; 2], [0; 2]);
        for shard in self.shards.iter() {
            let c = &shard.0[color.index()];
            for i in 0..2 {
                w[i] += c.weighted[i].load(Relaxed);
                f[i] += c.forced[i].load(Relaxed);
            }
            for (i, (sum, weighted)) in t
                .latency
                .iter_mut()
                .zip(t.weighted_latency.iter_mut())
                .enumerate()
            {
                let w = c.latency[0][i].load(Relaxed);
                *weighted += w;
                *sum += w + c.latency[1][i].load(Relaxed);
            }
        }
        t.weighted = Counts::new(w[0], w[1]);
        t.forced = Counts::new(f[0], f[1]);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_weighted_and_forced_apart() {
        let t = Tally::new();
        for i in 0..100 {
            t.record(Color::Green, Evidence::Weighted, i % 10 == 0, None);
            t.record(Color::Green, Evidence::Forced, true, None);
        }
        let g = t.totals(Color::Green);
        assert_eq!(g.weighted, Counts::new(90, 10));
        assert_eq!(g.forced, Counts::new(0, 100));
        assert_eq!(t.weighted(Color::Blue), Counts::default());
    }

    #[test]
    fn streaks_follow_weighted_requests_only() {
        let t = Tally::new();
        for _ in 0..5 {
            t.record(Color::Blue, Evidence::Weighted, false, None);
        }
        for failed in [true, true, false, true, true, true] {
            t.record(Color::Green, Evidence::Weighted, failed, None);
        }
        // Forced requests neither extend nor break a streak.
        t.record(Color::Green, Evidence::Forced, false, None);
        assert_eq!(
            t.streaks(Color::Green),
            Streaks {
                canary: 3,
                stable: 5
            }
        );
        t.record(Color::Blue, Evidence::Weighted, true, None);
        t.record(Color::Blue, Evidence::Weighted, false, None);
        assert_eq!(t.streaks(Color::Green).stable, 1);
        t.reset_streak(Color::Green);
        assert_eq!(t.streaks(Color::Green).canary, 0);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let t = std::sync::Arc::new(Tally::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        t.record(
                            Color::Blue,
                            Evidence::Weighted,
                            i % 2 == 0,
                            Some(Duration::from_millis(1)),
                        );
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let b = t.totals(Color::Blue);
        assert_eq!(b.weighted, Counts::new(20_000, 20_000));
        assert_eq!(b.latency.iter().sum::<u64>(), 40_000);
        assert_eq!(b.weighted_latency, t.weighted_latency(Color::Blue));
        t.record(
            Color::Blue,
            Evidence::Forced,
            false,
            Some(Duration::from_millis(1)),
        );
        let b = t.totals(Color::Blue);
        assert_eq!(b.latency.iter().sum::<u64>(), 40_001);
        assert_eq!(b.weighted_latency.iter().sum::<u64>(), 40_000);
    }
}
