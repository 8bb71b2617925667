//! Latency bins: one per microsecond below 32 µs, then sixteen per power of two (each 4.4 % wide
//! or less, fine enough for the latency trigger's 10-20 % margins), up to 2^28 µs (about 4.5
//! minutes), counted in plain integers so that sums and differences of histograms are exact.

use std::time::Duration;

/// Bins per power of two.
const SUB: usize = 16;

/// Number of bins.
pub const BINS: usize = SUB * 25;

/// The bin a latency falls in.
pub fn bin(latency: Duration) -> usize {
    let us = (latency.as_micros() as u64).max(1);
    if us < 2 * SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let sub = (us >> (octave - 4)) as usize - SUB;
    (SUB * (octave - 3) + sub).min(BINS - 1)
}

/// The lower edge of bin `bin`, in microseconds.
pub fn floor_us(bin: usize) -> f64 {
    if bin < 2 * SUB {
        return bin.max(1) as f64;
    }
    let (octave, sub) = (bin / SUB + 3, bin % SUB);
    ((SUB + sub) << (octave - 4)) as f64
}

/// Latencies in bin `from` or above: those at least [`floor_us`]`(from)` long.
pub fn at_least(bins: &[u64; BINS], from: usize) -> u64 {
    bins.get(from..).map_or(0, |b| b.iter().sum())
}

/// The bin holding the `q` quantile of `bins`; `None` when it is empty.
pub fn quantile_bin(bins: &[u64; BINS], q: f64) -> Option<usize> {
    let total: u64 = bins.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    bins.iter().position(|&n| {
        seen += n;
        seen >= rank
    })
}

/// The `q` quantile of the histogram `bins`; `None` when it is empty.
pub fn quantile(bins: &[u64; BINS], q: f64) -> Option<Duration> {
    let bin = quantile_bin(bins, q)?;
    // The middle of the bin, geometrically: within 12 % of any value in it.
    let mid = (floor_us(bin) * floor_us(bin + 1)).sqrt();
    Some(Duration::from_nanos((mid * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_close() {
        let mut bins = [0u64; BINS];
        for ms in 1..=100u64 {
            bins[bin(Duration::from_millis(ms))] += 1;
        }
        let ms = |q| quantile(&bins, q).unwrap().as_secs_f64() * 1000.0;
        assert!((44.0..=57.0).contains(&ms(0.5)), "p50 {}", ms(0.5));
        assert!((88.0..=112.0).contains(&ms(0.99)), "p99 {}", ms(0.99));
        assert_eq!(quantile(&[0; BINS], 0.5), None);
    }

    #[test]
    fn bins_are_ordered_and_bounded() {
        let mut last = 0;
        for us in [1, 2, 3, 4, 7, 8, 100, 1_000, 65_536, 1 << 27, 1 << 40] {
            let b = bin(Duration::from_micros(us));
            assert!(b >= last && b < BINS, "{us}: {b}");
            last = b;
        }
    }
}
