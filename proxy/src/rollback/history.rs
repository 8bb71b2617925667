//! `rollback.window`'s look-back for `/status`, the admin page's charts and the shared-fault
//! display: readings of the [`Tally`](super::tally::Tally) taken every twentieth of the window,
//! so that "the last 30 s" is the difference between now and the reading 30 s ago (to within
//! a twentieth of the window). Only the ticker and `/status` touch it; the request path never
//! does.

use std::collections::VecDeque;
use std::time::Duration;

use crate::rollback::latency;
use crate::rollback::sequential::Counts;
use crate::rollback::tally::ColorTotals;

/// Readings per window.
pub const READINGS: u64 = 20;

/// One color over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Weighted requests and failures.
    pub weighted: Counts,
    /// Forced requests and failures.
    pub forced: Counts,
    /// Median latency to the response headers, if there were responses.
    pub p50: Option<Duration>,
    /// 99th percentile latency.
    pub p99: Option<Duration>,
}

/// Readings of both colors' totals over the last window.
pub struct History {
    /// The window's length in milliseconds.
    window_ms: u64,
    /// (time in ms, totals per color), oldest first.
    readings: VecDeque<(u64, Box<[ColorTotals; 2]>)>,
}

impl History {
    /// A history for a window `window` long.
    pub fn new(window: Duration) -> History {
        History {
            window_ms: (window.as_millis() as u64).max(1),
            readings: VecDeque::with_capacity(READINGS as usize + 2),
        }
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Whether a reading is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.readings
            .back()
            .is_none_or(|(at, _)| now_ms.saturating_sub(*at) >= self.window_ms / READINGS)
    }

    /// Keeps `totals` as the reading at `now_ms`, dropping readings older than one window.
    pub fn record(&mut self, now_ms: u64, totals: [ColorTotals; 2]) {
        self.readings.push_back((now_ms, Box::new(totals)));
        // Keep one reading at or before the window's start.
        while self.readings.len() > 1 && now_ms.saturating_sub(self.readings[1].0) >= self.window_ms
        {
            self.readings.pop_front();
        }
    }

    /// Each color over the window ending at `now_ms`, given the totals at `now_ms`.
    pub fn summary(&self, now_ms: u64, now: &[ColorTotals; 2]) -> [Summary; 2] {
        let start = now_ms.saturating_sub(self.window_ms);
        // The latest reading at or before the window's start, else the oldest there is.
        let base = self
            .readings
            .iter()
            .rev()
            .find(|(at, _)| *at <= start)
            .or(self.readings.front())
            .map(|(_, t)| &**t);
        [0, 1].map(|i| {
            let d = match base {
                Some(base) => now[i].since(&base[i]),
                None => now[i].clone(),
            };
            Summary {
                weighted: d.weighted,
                forced: d.forced,
                p50: latency::quantile(&d.latency, 0.50),
                p99: latency::quantile(&d.latency, 0.99),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(weighted: u64, failures: u64) -> [ColorTotals; 2] {
        let mut t = ColorTotals {
            weighted: Counts::new(weighted - failures, failures),
            ..ColorTotals::default()
        };
        t.latency[latency::bin(Duration::from_millis(2))] = weighted;
        [t.clone(), t]
    }

    #[test]
    fn the_window_is_the_difference_of_two_readings() {
        let mut h = History::new(Duration::from_secs(10));
        for s in 0..=30u64 {
            let now = s * 1000;
            if h.due(now) {
                h.record(now, totals(100 * s + 1, s));
            }
        }
        // 30 s in: the last 10 s added 1,000 requests and 10 failures.
        let [blue, _] = h.summary(30_000, &totals(3001, 30));
        assert_eq!(blue.weighted, Counts::new(990, 10));
        assert!(blue.p50.is_some());
        // Nothing new for a window: empty.
        let mut h2 = History::new(Duration::from_secs(10));
        h2.record(0, totals(5, 1));
        h2.record(10_000, totals(5, 1));
        assert_eq!(
            h2.summary(10_000, &totals(5, 1))[0].weighted,
            Counts::default()
        );
        assert_eq!(h2.summary(10_000, &totals(5, 1))[0].p99, None);
    }

    #[test]
    fn a_year_at_a_million_requests_a_second_neither_wraps_nor_saturates() {
        // 400 days of milliseconds and 3.5 × 10^13 requests: far inside u64.
        let year_ms = 400 * 86_400_000u64;
        let year_requests = 400 * 86_400 * 1_000_000u64;
        let mut h = History::new(Duration::from_secs(30));
        h.record(
            year_ms - 30_000,
            totals(year_requests - 30_000_000, 1_000_000),
        );
        let [blue, _] = h.summary(year_ms, &totals(year_requests, 2_500_000));
        assert_eq!(blue.weighted, Counts::new(28_500_000, 1_500_000));
    }

    #[test]
    fn readings_are_bounded() {
        let mut h = History::new(Duration::from_secs(1));
        for ms in 0..100_000u64 {
            if h.due(ms) {
                h.record(ms, totals(ms + 1, 0));
            }
        }
        assert!(
            h.readings.len() <= READINGS as usize + 2,
            "{}",
            h.readings.len()
        );
    }
}
