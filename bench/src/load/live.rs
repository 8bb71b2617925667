//! Counters a running load exposes while it runs: one cache-line-aligned block per connection,
//! written only by that connection's task, summed on demand by readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Which color answered, from the response's `x-color` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Blue = 0,
    Green = 1,
    /// No `x-color` header, or another value: an error page from the proxy, for one.
    None = 2,
}

impl Slot {
    pub(crate) fn of(value: Option<&[u8]>) -> Slot {
        match value {
            Some(b"blue") => Slot::Blue,
            Some(b"green") => Slot::Green,
            _ => Slot::None,
        }
    }
}

/// A value for each answering color, and for answers that named none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerColor<T> {
    /// Answers with `x-color: blue`.
    pub blue: T,
    /// Answers with `x-color: green`.
    pub green: T,
    /// Answers without a known color.
    pub none: T,
}

impl<T: Copy> PerColor<T> {
    fn from_array(values: [T; 3]) -> Self {
        PerColor {
            blue: values[0],
            green: values[1],
            none: values[2],
        }
    }
}

/// "Never" for the timestamp counters, which hold nanoseconds since the load started.
const NEVER: u64 = u64::MAX;

/// One connection's counters. Aligned so that two connections never share a cache line.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct LiveCounters {
    /// Responses read, whatever their status.
    responses: AtomicU64,
    /// Responses per answering color.
    by_color: [AtomicU64; 3],
    /// Responses with a 5xx status, per answering color.
    failed_by_color: [AtomicU64; 3],
    /// Responses with any status outside 2xx.
    not_ok: AtomicU64,
    /// Requests that got no response: connect failures, resets, timeouts.
    errors: AtomicU64,
    /// When the first 5xx of each color arrived (ns since start), for the demo's rollback time.
    first_failure_ns: [AtomicU64; 3],
    /// When the last response of each color arrived (ns since start).
    last_response_ns: [AtomicU64; 3],
}

impl Default for LiveCounters {
    fn default() -> Self {
        LiveCounters {
            responses: AtomicU64::new(0),
            by_color: Default::default(),
            failed_by_color: Default::default(),
            not_ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_failure_ns: [
                AtomicU64::new(NEVER),
                AtomicU64::new(NEVER),
                AtomicU64::new(NEVER),
            ],
            last_response_ns: [
                AtomicU64::new(NEVER),
                AtomicU64::new(NEVER),
                AtomicU64::new(NEVER),
            ],
        }
    }
}

/// Adds one to a counter that only one task writes: a plain load and store, no locked
/// instruction, yet readers on other threads see a torn-free value.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl LiveCounters {
    /// Counts one response of `status` from `slot`, `at_ns` after the start.
    pub(crate) fn response(&self, slot: Slot, status: u16, at_ns: u64) {
        let i = slot as usize;
        bump(&self.responses);
        bump(&self.by_color[i]);
        if !(200..300).contains(&status) {
            bump(&self.not_ok);
        }
        if status >= 500 {
            bump(&self.failed_by_color[i]);
            if self.first_failure_ns[i].load(Ordering::Relaxed) == NEVER {
                self.first_failure_ns[i].store(at_ns, Ordering::Relaxed);
            }
        }
        self.last_response_ns[i].store(at_ns, Ordering::Relaxed);
    }

    /// Counts one request that got no response.
    pub(crate) fn error(&self) {
        bump(&self.errors);
    }
}

/// The counters of a whole load at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Live {
    /// Time since the load started.
    pub elapsed: Duration,
    /// Responses read.
    pub responses: u64,
    /// Responses per color.
    pub by_color: PerColor<u64>,
    /// 5xx responses per color.
    pub failed_by_color: PerColor<u64>,
    /// Responses outside 2xx.
    pub not_ok: u64,
    /// Requests without a response.
    pub errors: u64,
    /// Time of the first 5xx per color, since the start.
    pub first_failure: PerColor<Option<Duration>>,
    /// Time of the last response per color, since the start.
    pub last_response: PerColor<Option<Duration>>,
}

impl Live {
    pub(crate) fn sum(counters: &[LiveCounters], elapsed: Duration) -> Live {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut by_color = [0; 3];
        let mut failed = [0; 3];
        let mut first = [NEVER; 3];
        let mut last = [0u64; 3];
        let mut seen = [false; 3];
        let (mut responses, mut not_ok, mut errors) = (0, 0, 0);
        for c in counters {
            responses += load(&c.responses);
            not_ok += load(&c.not_ok);
            errors += load(&c.errors);
            for i in 0..3 {
                by_color[i] += load(&c.by_color[i]);
                failed[i] += load(&c.failed_by_color[i]);
                first[i] = first[i].min(load(&c.first_failure_ns[i]));
                let l = load(&c.last_response_ns[i]);
                if l != NEVER {
                    seen[i] = true;
                    last[i] = last[i].max(l);
                }
            }
        }
        let at = |ns: u64, present: bool| present.then(|| Duration::from_nanos(ns));
        Live {
            elapsed,
            responses,
            by_color: PerColor::from_array(by_color),
            failed_by_color: PerColor::from_array(failed),
            not_ok,
            errors,
            first_failure: PerColor::from_array([0, 1, 2].map(|i| at(first[i], first[i] != NEVER))),
            last_response: PerColor::from_array([0, 1, 2].map(|i| at(last[i], seen[i]))),
        }
    }

    /// Responses per second between `earlier` and `self`.
    pub fn rate_since(&self, earlier: &Live) -> f64 {
        let secs = self.elapsed.saturating_sub(earlier.elapsed).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.responses.saturating_sub(earlier.responses) as f64 / secs
    }
}
