//! The demo's pass/fail rules, as pure functions of the counts it observed.

use serde::Serialize;

/// How many standard deviations of a binomial the observed canary share may stray.
pub const SIGMAS: f64 = 4.0;
/// Fewer responses than this in a step make its split meaningless.
pub const MIN_RESPONSES: u64 = 200;

/// One check and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

/// The allowed deviation of the canary count from `n * p`: `SIGMAS` standard deviations of a
/// binomial, plus one for the rounding of a discrete count.
pub fn allowed_deviation(n: u64, p: f64) -> f64 {
    SIGMAS * (n as f64 * p * (1.0 - p)).sqrt() + 1.0
}

/// Checks that `green` of `blue + green + none` responses matches a canary weight of
/// `percent`, and that every response named its color.
pub fn split(step: &str, percent: f64, blue: u64, green: u64, none: u64) -> Check {
    let n = blue + green + none;
    let p = percent / 100.0;
    let expected = n as f64 * p;
    let allowed = allowed_deviation(n, p);
    let share = if n == 0 {
        0.0
    } else {
        100.0 * green as f64 / n as f64
    };
    let detail = format!(
        "green {green} of {n} = {share:.2} %, expected {expected:.0} ± {allowed:.0} ({SIGMAS} σ), {none} without x-color"
    );
    let passed = n >= MIN_RESPONSES && none == 0 && (green as f64 - expected).abs() <= allowed;
    Check {
        name: format!("split at {step}"),
        passed,
        detail: if n < MIN_RESPONSES {
            format!("{detail}; fewer than {MIN_RESPONSES} responses")
        } else {
            detail
        },
    }
}

/// Checks that clients saw no failed request (non-2xx or no response) outside the fault.
pub fn no_client_errors(outside_fault: u64) -> Check {
    Check {
        name: "no client errors outside the fault".to_string(),
        passed: outside_fault == 0,
        detail: format!(
            "{outside_fault} non-2xx or failed requests before the fault and after the rollback"
        ),
    }
}

/// Checks that the proxy rolled the canary back, as `/status` and `/metrics` both say.
pub fn rolled_back(status_says: bool, color: Option<&str>, metric: Option<f64>) -> Check {
    let passed = status_says && color == Some("green") && metric.is_some_and(|n| n >= 1.0);
    Check {
        name: "the proxy rolled green back by itself".to_string(),
        passed,
        detail: format!(
            "/status rolled_back={status_says} color={}, canary_proxy_rollbacks_total{{color=\"green\"}}={}",
            color.unwrap_or("null"),
            metric.map_or("absent".to_string(), |n| n.to_string())
        ),
    }
}

/// Checks that green got no traffic after the rollback.
pub fn green_drained(green_after: u64, total_after: u64) -> Check {
    Check {
        name: "green gets nothing after the rollback".to_string(),
        passed: green_after == 0 && total_after >= MIN_RESPONSES,
        detail: format!("green {green_after} of {total_after} responses after the rollback"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fair_split_passes_and_a_skewed_one_fails() {
        // 5 % of 4000 = 200, sigma about 13.8.
        assert!(split("5%", 5.0, 3800, 200, 0).passed);
        assert!(split("5%", 5.0, 3750, 250, 0).passed);
        assert!(!split("5%", 5.0, 3700, 300, 0).passed);
        assert!(!split("5%", 5.0, 4000, 0, 0).passed);
    }

    #[test]
    fn the_edges_must_be_exact() {
        assert!(split("100%", 100.0, 0, 1000, 0).passed);
        assert!(!split("100%", 100.0, 2, 998, 0).passed);
        assert!(split("0%", 0.0, 1000, 0, 0).passed);
    }

    #[test]
    fn too_few_or_colorless_responses_fail() {
        assert!(!split("50%", 50.0, 50, 50, 0).passed);
        assert!(!split("50%", 50.0, 500, 500, 1).passed);
    }

    #[test]
    fn rollback_needs_both_sources() {
        assert!(rolled_back(true, Some("green"), Some(1.0)).passed);
        assert!(!rolled_back(true, Some("green"), None).passed);
        assert!(!rolled_back(false, None, Some(1.0)).passed);
    }
}
