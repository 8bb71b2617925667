//! A sliding window of requests, failures and latencies for one color, kept in time buckets
//! that are updated with atomics only, so the request path never takes a lock.
//!
//! The window is [`BUCKETS`] buckets of `window / BUCKETS` each. A bucket's request and failure
//! counts share one `AtomicU64` with the bucket's epoch (its tick number), so a recorder that
//! finds a stale bucket resets and counts in one compare-and-swap: counts are exact. Latencies
//! go to a per-bucket log-linear histogram whose reset races benignly with concurrent recorders
//! (a few samples at a bucket boundary may be lost; the percentiles are for display only).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets per window.
pub const BUCKETS: u64 = 20;

const EPOCH_BITS: u32 = 22;
const COUNT_BITS: u32 = 21;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

/// Latency bins: four per power of two of microseconds, up to 2^28 µs (about 4.5 minutes).
const LATENCY_BINS: usize = 4 * 28;

/// Requests and failures seen in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests that got a response or definitely failed.
    pub requests: u64,
    /// Those of them that failed.
    pub failures: u64,
}

impl Counts {
    /// Failures over requests; 0 when there were none.
    pub fn failure_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

/// Window statistics, with latency percentiles.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Requests and failures.
    pub counts: Counts,
    /// Median latency, if there were requests with a latency.
    pub p50: Option<Duration>,
    /// 99th percentile latency.
    pub p99: Option<Duration>,
}

struct Bucket {
    /// epoch (22 bits) | requests (21 bits) | failures (21 bits).
    state: AtomicU64,
    /// Latency histogram of this bucket's epoch.
    latency: [AtomicU32; LATENCY_BINS],
}

/// One color's sliding window.
pub struct Window {
    buckets: Box<[Bucket]>,
    /// Width of one bucket in milliseconds.
    bucket_ms: u64,
    /// Failures in a row, up to the latest request: a sudden total failure shows here at
    /// once, while the window's earlier successes still dilute its rate.
    streak: AtomicU64,
    /// When the current streak began; a streak older than the window has aged out with it.
    streak_since: AtomicU64,
}

impl Window {
    /// A window `length` long, rounded to whole milliseconds per bucket.
    pub fn new(length: Duration) -> Window {
        let bucket_ms = bucket_ms(length);
        let buckets = (0..BUCKETS)
            .map(|_| Bucket {
                // Epoch MASK never equals a live tick within the first 2^22 ticks: empty.
                state: AtomicU64::new(pack(EPOCH_MASK, 0, 0)),
                latency: [const { AtomicU32::new(0) }; LATENCY_BINS],
            })
            .collect();
        Window {
            buckets,
            bucket_ms,
            streak: AtomicU64::new(0),
            streak_since: AtomicU64::new(0),
        }
    }

    /// Whether this window has the buckets a window `length` long would have.
    pub fn has_length(&self, length: Duration) -> bool {
        self.bucket_ms == bucket_ms(length)
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        Duration::from_millis(self.bucket_ms * BUCKETS)
    }

    /// Failures in a row up to the latest request recorded, if the streak began within the
    /// window ending at `now_ms`; 0 otherwise.
    pub fn streak(&self, now_ms: u64) -> u64 {
        let since = self.streak_since.load(Relaxed);
        if now_ms.saturating_sub(since) < self.bucket_ms * BUCKETS {
            self.streak.load(Relaxed)
        } else {
            0
        }
    }

    /// Records one request at `now_ms` (milliseconds on the runtime's monotonic clock).
    pub fn record(&self, now_ms: u64, failed: bool, latency: Option<Duration>) {
        if failed {
            if self.streak.fetch_add(1, Relaxed) == 0 {
                self.streak_since.store(now_ms, Relaxed);
            }
        } else if self.streak.load(Relaxed) != 0 {
            // Checked first, so that the healthy path does not write a shared cache line.
            self.streak.store(0, Relaxed);
        }
        let tick = now_ms / self.bucket_ms;
        let epoch = tick & EPOCH_MASK;
        let bucket = &self.buckets[(tick % BUCKETS) as usize];
        let mut current = bucket.state.load(Relaxed);
        let fresh = loop {
            let (e, requests, failures) = unpack(current);
            let (next, fresh) = if e == epoch {
                let requests = (requests + 1).min(COUNT_MAX);
                let failures = (failures + u64::from(failed)).min(COUNT_MAX);
                (pack(epoch, requests, failures), false)
            } else {
                (pack(epoch, 1, u64::from(failed)), true)
            };
            match bucket
                .state
                .compare_exchange_weak(current, next, Relaxed, Relaxed)
            {
                Ok(_) => break fresh,
                Err(seen) => current = seen,
            }
        };
        if fresh {
            bucket.latency.iter().for_each(|bin| bin.store(0, Relaxed));
        }
        if let Some(latency) = latency {
            bucket.latency[latency_bin(latency)].fetch_add(1, Relaxed);
        }
    }

    /// Requests and failures in the window ending at `now_ms`.
    pub fn counts(&self, now_ms: u64) -> Counts {
        let mut counts = Counts::default();
        self.live_buckets(now_ms, |_, requests, failures| {
            counts.requests += requests;
            counts.failures += failures;
        });
        counts
    }

    /// Counts and latency percentiles in the window ending at `now_ms`.
    pub fn summary(&self, now_ms: u64) -> Summary {
        let mut counts = Counts::default();
        let mut bins = [0u64; LATENCY_BINS];
        self.live_buckets(now_ms, |bucket, requests, failures| {
            counts.requests += requests;
            counts.failures += failures;
            for (sum, bin) in bins.iter_mut().zip(&bucket.latency) {
                *sum += u64::from(bin.load(Relaxed));
            }
        });
        Summary {
            counts,
            p50: percentile(&bins, 0.50),
            p99: percentile(&bins, 0.99),
        }
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        self.streak.store(0, Relaxed);
        for bucket in self.buckets.iter() {
            bucket.state.store(pack(EPOCH_MASK, 0, 0), Relaxed);
        }
    }

    fn live_buckets(&self, now_ms: u64, mut each: impl FnMut(&Bucket, u64, u64)) {
        let now_epoch = (now_ms / self.bucket_ms) & EPOCH_MASK;
        for bucket in self.buckets.iter() {
            let (epoch, requests, failures) = unpack(bucket.state.load(Relaxed));
            if now_epoch.wrapping_sub(epoch) & EPOCH_MASK < BUCKETS {
                each(bucket, requests, failures);
            }
        }
    }
}

fn bucket_ms(length: Duration) -> u64 {
    (length.as_millis() as u64 / BUCKETS).max(1)
}

const fn pack(epoch: u64, requests: u64, failures: u64) -> u64 {
    (epoch << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | failures
}

const fn unpack(state: u64) -> (u64, u64, u64) {
    (
        state >> (2 * COUNT_BITS),
        (state >> COUNT_BITS) & COUNT_MAX,
        state & COUNT_MAX,
    )
}

fn latency_bin(latency: Duration) -> usize {
    let us = (latency.as_micros() as u64).max(1);
    let octave = 63 - us.leading_zeros() as usize;
    let sub = if octave >= 2 {
        (us >> (octave - 2)) & 3
    } else {
        us & 3
    };
    (octave * 4 + sub as usize).min(LATENCY_BINS - 1)
}

/// The lower edge of bin `bin`, in microseconds.
fn bin_floor_us(bin: usize) -> f64 {
    let (octave, sub) = (bin / 4, bin % 4);
    if octave < 2 {
        return (bin % 4).max(1) as f64;
    }
    ((4 + sub as u64) << (octave - 2)) as f64
}

fn percentile(bins: &[u64; LATENCY_BINS], q: f64) -> Option<Duration> {
    let total: u64 = bins.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (bin, &n) in bins.iter().enumerate() {
        seen += n;
        if seen >= rank {
            // The middle of the bin, geometrically: within 12 % of any value in it.
            let mid = (bin_floor_us(bin) * bin_floor_us(bin + 1)).sqrt();
            return Some(Duration::from_nanos((mid * 1000.0) as u64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_records() {
        let w = Window::new(Duration::from_secs(10));
        for i in 0..100 {
            w.record(1_000 + i, i % 10 == 0, Some(Duration::from_millis(2)));
        }
        assert_eq!(
            w.counts(1_100),
            Counts {
                requests: 100,
                failures: 10
            }
        );
    }

    #[test]
    fn old_requests_age_out() {
        let w = Window::new(Duration::from_secs(10));
        w.record(0, true, None);
        w.record(5_000, false, None);
        assert_eq!(
            w.counts(9_000),
            Counts {
                requests: 2,
                failures: 1
            }
        );
        assert_eq!(
            w.counts(10_600),
            Counts {
                requests: 1,
                failures: 0
            }
        );
        assert_eq!(w.counts(16_000), Counts::default());
        // A bucket reused by a later tick starts from zero.
        w.record(20_000, false, None);
        assert_eq!(
            w.counts(20_000),
            Counts {
                requests: 1,
                failures: 0
            }
        );
    }

    #[test]
    fn the_streak_counts_failures_in_a_row() {
        let w = Window::new(Duration::from_secs(10));
        for failed in [true, true, false, true, true, true] {
            w.record(1_000, failed, None);
        }
        assert_eq!(w.streak(1_000), 3);
        // It ages out with the window.
        assert_eq!(w.streak(10_999), 3);
        assert_eq!(w.streak(11_000), 0);
        w.reset();
        assert_eq!(w.streak(1_000), 0);
    }

    #[test]
    fn reset_forgets() {
        let w = Window::new(Duration::from_secs(10));
        w.record(100, true, None);
        w.reset();
        assert_eq!(w.counts(100), Counts::default());
    }

    #[test]
    fn percentiles_are_close() {
        let w = Window::new(Duration::from_secs(10));
        for ms in 1..=100u64 {
            w.record(0, false, Some(Duration::from_millis(ms)));
        }
        let s = w.summary(0);
        let p50 = s.p50.unwrap().as_secs_f64() * 1000.0;
        let p99 = s.p99.unwrap().as_secs_f64() * 1000.0;
        assert!((44.0..=57.0).contains(&p50), "p50 {p50}");
        assert!((88.0..=112.0).contains(&p99), "p99 {p99}");
        assert_eq!(Window::new(Duration::from_secs(1)).summary(0).p50, None);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let w = std::sync::Arc::new(Window::new(Duration::from_secs(60)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.record(500, i % 2 == 0, None);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(
            w.counts(500),
            Counts {
                requests: 40_000,
                failures: 20_000
            }
        );
    }
}
