//! The keys of progressive delivery: `progressive.*` (the step plan) and the latency trigger
//! (`rollback.max-latency-increase`, `rollback.latency-quantile`).

use std::time::Duration;

use super::{ConfigError, Keys, boolean, duration, invalid, whole};
use crate::config::{LatencyTrigger, Progressive};

/// The plan's keys other than `progressive.steps`: each needs the steps.
const PLAN_KEYS: [&str; 4] = [
    "progressive.step-min-duration",
    "progressive.step-min-requests",
    "progressive.promote",
    "progressive.paused",
];

/// Parses `progressive.*`; `None` without `progressive.steps`.
pub(super) fn steps(
    keys: &Keys<'_>,
    weight_total: u32,
) -> Result<Option<Progressive>, ConfigError> {
    let Some(value) = keys.get("progressive.steps") else {
        if let Some(key) = PLAN_KEYS.into_iter().find(|k| keys.get(k).is_some()) {
            let value = keys.get(key).unwrap_or_default();
            return Err(invalid(key, value, "needs progressive.steps to be set"));
        }
        return Ok(None);
    };
    let steps = step_list(value.trim(), weight_total)
        .map_err(|reason| invalid("progressive.steps", value, reason))?;
    Ok(Some(Progressive {
        steps,
        min_duration: keys.parse_or(
            "progressive.step-min-duration",
            Duration::from_secs(60),
            |v| match duration(v)? {
                d if d > Duration::from_secs(86_400) => Err("must be at most 24h".into()),
                d => Ok(d),
            },
        )?,
        min_requests: keys.parse_or("progressive.step-min-requests", 100, |v| {
            whole(v).map(u64::from)
        })?,
        promote: keys.parse_or("progressive.promote", true, boolean)?,
        paused: keys.parse_or("progressive.paused", false, boolean)?,
        paused_written: keys.get("progressive.paused").is_some(),
    }))
}

/// Parses `5,25,50,100`: canary weights out of `total`, strictly increasing.
fn step_list(v: &str, total: u32) -> Result<Vec<u32>, String> {
    let mut steps: Vec<u32> = Vec::new();
    for item in v.split(',').map(str::trim) {
        let step = whole(item).map_err(|_| format!("has `{item}`, which is not a weight"))?;
        if step == 0 || step > total {
            return Err(format!(
                "has `{step}`: a step is a canary weight from 1 to canary-weight-total ({total})"
            ));
        }
        if steps.last().is_some_and(|&last| last >= step) {
            return Err("must be strictly increasing, e.g. `5,25,50,100`".into());
        }
        steps.push(step);
    }
    Ok(steps)
}

/// Parses the latency trigger; `None` without `rollback.max-latency-increase`.
pub(super) fn latency_trigger(keys: &Keys<'_>) -> Result<Option<LatencyTrigger>, ConfigError> {
    let quantile = keys.parse_or("rollback.latency-quantile", 0.99, |v| {
        let q: f64 = v
            .parse()
            .map_err(|_| "is not a number: write a quantile such as `0.99`".to_string())?;
        if !(0.5..=0.999).contains(&q) {
            return Err("must be a quantile from 0.5 to 0.999".into());
        }
        Ok(q)
    })?;
    let Some(value) = keys.get("rollback.max-latency-increase") else {
        if let Some(q) = keys.get("rollback.latency-quantile") {
            return Err(invalid(
                "rollback.latency-quantile",
                q,
                "needs rollback.max-latency-increase to be set",
            ));
        }
        return Ok(None);
    };
    let increase = value.trim();
    let n: f64 = increase
        .strip_suffix('%')
        .unwrap_or(increase)
        .trim()
        .parse()
        .map_err(|_| {
            invalid(
                "rollback.max-latency-increase",
                value,
                "is not a percentage: write e.g. `20%`",
            )
        })?;
    if !(n > 0.0 && n <= 1000.0) {
        return Err(invalid(
            "rollback.max-latency-increase",
            value,
            "must be above 0% and at most 1000%",
        ));
    }
    Ok(Some(LatencyTrigger {
        max_increase: n / 100.0,
        quantile,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::Config;

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let mut data: BTreeMap<String, String> = [
            ("blue.upstream", "127.0.0.1:1"),
            ("green.upstream", "127.0.0.1:2"),
        ]
        .into_iter()
        .chain(pairs.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        data.retain(|_, v| !v.is_empty());
        Config::from_map(&data).map_err(|e| e.to_string())
    }

    #[test]
    fn the_plan_and_its_defaults() {
        let c = parse(&[("progressive.steps", "5, 25,50,100")]).unwrap();
        let p = c.progressive.unwrap();
        assert_eq!(p.steps, [5, 25, 50, 100]);
        assert_eq!(p.min_duration, Duration::from_secs(60));
        assert_eq!(p.min_requests, 100);
        assert!(p.promote && !p.paused);
        let c = parse(&[
            ("progressive.steps", "10,50"),
            ("progressive.step-min-duration", "2m"),
            ("progressive.step-min-requests", "500"),
            ("progressive.promote", "false"),
            ("progressive.paused", "true"),
        ])
        .unwrap();
        let p = c.progressive.unwrap();
        assert_eq!(
            (p.min_duration, p.min_requests),
            (Duration::from_secs(120), 500)
        );
        assert!(!p.promote && p.paused);
        assert!(parse(&[]).unwrap().progressive.is_none());
    }

    #[test]
    fn bad_plans_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("progressive.steps", "5,50,25")],
                "key `progressive.steps`: \"5,50,25\" must be strictly increasing",
            ),
            (
                &[("progressive.steps", "5,101")],
                "has `101`: a step is a canary weight from 1 to canary-weight-total (100)",
            ),
            (&[("progressive.steps", "0,5")], "has `0`"),
            (
                &[("progressive.steps", "5,x")],
                "has `x`, which is not a weight",
            ),
            (
                &[("progressive.paused", "true")],
                "key `progressive.paused`: \"true\" needs progressive.steps to be set",
            ),
            (
                &[
                    ("progressive.steps", "5"),
                    ("progressive.step-min-duration", "2"),
                ],
                "key `progressive.step-min-duration`",
            ),
        ];
        for (pairs, expected) in cases {
            let e = parse(pairs).unwrap_err();
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn the_latency_trigger() {
        let c = parse(&[("rollback.max-latency-increase", "20%")]).unwrap();
        assert_eq!(
            c.rollback.latency,
            Some(LatencyTrigger {
                max_increase: 0.2,
                quantile: 0.99
            })
        );
        let c = parse(&[
            ("rollback.max-latency-increase", "50"),
            ("rollback.latency-quantile", "0.9"),
        ])
        .unwrap();
        assert_eq!(c.rollback.latency.unwrap().quantile, 0.9);
        assert!(parse(&[]).unwrap().rollback.latency.is_none());
        for (pairs, expected) in [
            (
                &[("rollback.max-latency-increase", "0%")][..],
                "must be above 0%",
            ),
            (
                &[("rollback.max-latency-increase", "fast")][..],
                "is not a percentage",
            ),
            (
                &[("rollback.latency-quantile", "0.95")][..],
                "needs rollback.max-latency-increase",
            ),
            (
                &[
                    ("rollback.max-latency-increase", "20%"),
                    ("rollback.latency-quantile", "99"),
                ][..],
                "must be a quantile from 0.5 to 0.999",
            ),
        ] {
            let e = parse(pairs).unwrap_err();
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }
}
