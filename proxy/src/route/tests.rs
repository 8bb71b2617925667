use std::collections::BTreeMap;

use http::HeaderMap;

use super::*;
use crate::config::Config;

fn table(pairs: &[(&str, &str)]) -> RouteTable {
    let mut data: BTreeMap<String, String> = [
        ("blue.upstream", "127.0.0.1:1"),
        ("green.upstream", "127.0.0.1:2"),
    ]
    .into_iter()
    .chain(pairs.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    data.retain(|_, v| !v.is_empty());
    RouteTable::new(Config::from_map(&data).unwrap(), "test")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect()
}

fn canary_share(table: &RouteTable, n: u32, h: &HeaderMap) -> f64 {
    let canary = table.config.canary();
    (0..n).filter(|_| table.choose(h).color == canary).count() as f64 / f64::from(n)
}

#[test]
fn weight_5_of_100_is_within_4_sigma_over_100k() {
    let t = table(&[("canary-weight", "5")]);
    let n = 100_000;
    let share = canary_share(&t, n, &HeaderMap::new());
    let sigma = (0.05 * 0.95 / f64::from(n)).sqrt();
    assert!(
        (share - 0.05).abs() < 4.0 * sigma,
        "share {share}, sigma {sigma}"
    );
}

#[test]
fn weight_total_and_extremes() {
    let t = table(&[("canary-weight", "1"), ("canary-weight-total", "4")]);
    let share = canary_share(&t, 40_000, &HeaderMap::new());
    assert!(
        (share - 0.25).abs() < 4.0 * (0.25 * 0.75 / 40_000f64).sqrt(),
        "{share}"
    );
    assert_eq!(canary_share(&table(&[]), 1000, &HeaderMap::new()), 0.0);
    assert_eq!(
        canary_share(&table(&[("canary-weight", "100")]), 1000, &HeaderMap::new()),
        1.0
    );
}

#[test]
fn stable_green_makes_blue_the_canary() {
    let t = table(&[("stable", "green"), ("canary-weight", "100")]);
    assert_eq!(t.choose(&HeaderMap::new()).color, Color::Blue);
}

#[test]
fn header_always_and_never_beat_the_weight() {
    let t = table(&[("canary-weight", "50"), ("canary-by-header", "x-canary")]);
    assert_eq!(
        canary_share(&t, 1000, &headers(&[("x-canary", "always")])),
        1.0
    );
    assert_eq!(
        canary_share(&t, 1000, &headers(&[("x-canary", "never")])),
        0.0
    );
    // Any other value falls through to the weight.
    let share = canary_share(&t, 4000, &headers(&[("x-canary", "maybe")]));
    assert!((0.4..0.6).contains(&share), "{share}");
}

#[test]
fn forced_requests_are_told_apart_from_weighted_ones() {
    let t = table(&[("canary-weight", "50"), ("canary-by-header", "x-canary")]);
    for value in ["always", "never"] {
        let choice = t.choose(&headers(&[("x-canary", value)]));
        assert_eq!(choice.evidence, Evidence::Forced, "{value}");
    }
    for _ in 0..100 {
        assert_eq!(t.choose(&HeaderMap::new()).evidence, Evidence::Weighted);
    }
}

#[test]
fn header_value_and_pattern_beat_the_weight() {
    let t = table(&[
        ("canary-by-header", "x-user"),
        ("canary-by-header-value", "tester"),
    ]);
    assert_eq!(
        t.choose(&headers(&[("x-user", "tester")])).color,
        Color::Green
    );
    // With a value set, `always` is just another value (NGINX semantics).
    assert_eq!(
        t.choose(&headers(&[("x-user", "always")])).color,
        Color::Blue
    );

    let t = table(&[
        ("canary-by-header", "x-user"),
        ("canary-by-header-pattern", "^qa-[0-9]+$"),
    ]);
    assert_eq!(
        t.choose(&headers(&[("x-user", "qa-42")])).color,
        Color::Green
    );
    assert_eq!(t.choose(&headers(&[("x-user", "qa-x")])).color, Color::Blue);

    // The value wins over the pattern.
    let t = table(&[
        ("canary-by-header", "x-user"),
        ("canary-by-header-value", "exact"),
        ("canary-by-header-pattern", "^qa"),
    ]);
    assert_eq!(t.choose(&headers(&[("x-user", "qa-1")])).color, Color::Blue);
    assert_eq!(
        t.choose(&headers(&[("x-user", "exact")])).color,
        Color::Green
    );
}

#[test]
fn cookie_beats_the_weight_and_header_beats_cookie() {
    let t = table(&[
        ("canary-weight", "50"),
        ("canary-by-cookie", "canary"),
        ("canary-by-header", "x-canary"),
    ]);
    let cookie_always = headers(&[("cookie", "a=1; canary=always; b=2")]);
    assert_eq!(canary_share(&t, 1000, &cookie_always), 1.0);
    assert_eq!(
        canary_share(&t, 1000, &headers(&[("cookie", "canary=never")])),
        0.0
    );
    // A cookie whose name only starts like ours is not ours.
    let share = canary_share(&t, 4000, &headers(&[("cookie", "canary2=always")]));
    assert!((0.4..0.6).contains(&share), "{share}");
    let both = headers(&[("cookie", "canary=always"), ("x-canary", "never")]);
    assert_eq!(canary_share(&t, 1000, &both), 0.0);
}

#[test]
fn rolled_back_sends_everything_to_stable_overrides_included() {
    let mut t = table(&[("canary-weight", "100"), ("canary-by-header", "x-canary")]);
    t.rolled_back = Some(Arc::new(RolledBack {
        color: Color::Green,
        reason: "test".into(),
        at: "2026-11-26T08:00:00Z".into(),
        revision: "1".into(),
    }));
    assert_eq!(
        canary_share(&t, 100, &headers(&[("x-canary", "always")])),
        0.0
    );
    assert_eq!(t.weight_percent(Color::Green), 0.0);
    assert_eq!(t.weight_percent(Color::Blue), 100.0);
}

#[test]
fn sticky_users_only_move_towards_the_canary() {
    let ids: Vec<String> = (0..5000).map(|i| format!("user-{i}")).collect();
    let mut on_canary = vec![false; ids.len()];
    for weight in ["5", "20", "50", "80", "100"] {
        let t = table(&[("canary-weight", weight), ("sticky", "cookie:session")]);
        let mut count = 0;
        for (i, id) in ids.iter().enumerate() {
            let h = headers(&[("cookie", &format!("session={id}"))]);
            let canary = t.choose(&h).color == Color::Green;
            assert!(
                canary || !on_canary[i],
                "{id} moved back to stable at weight {weight}"
            );
            assert_eq!(
                canary,
                t.choose(&h).color == Color::Green,
                "not a pure function"
            );
            on_canary[i] = canary;
            count += usize::from(canary);
        }
        let p: f64 = weight.parse::<f64>().unwrap() / 100.0;
        let n = ids.len() as f64;
        let sigma = (p * (1.0 - p) / n).sqrt();
        let share = count as f64 / n;
        assert!(
            (share - p).abs() <= 4.0 * sigma + 1e-9,
            "weight {weight}: share {share}"
        );
    }
}
