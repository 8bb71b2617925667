//! The routing decision on arbitrary routing keys and request headers. The input is config
//! lines (`key=value`), a blank line, then header lines (`name: value`). The decision must
//! never panic and must keep NGINX's rules that need no randomness.

#![no_main]

use std::collections::BTreeMap;

use canary_proxy::config::{Color, Config};
use canary_proxy::rollback::tally::Evidence;
use canary_proxy::route::RouteTable;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (keys, headers) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut config: BTreeMap<String, String> = [
        ("blue.upstream", "127.0.0.1:1"),
        ("green.upstream", "127.0.0.1:2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    config.extend(
        keys.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let Ok(config) = Config::from_map(&config) else {
        return;
    };
    let headers: HeaderMap = headers
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            Some((name, HeaderValue::from_str(value.trim()).ok()?))
        })
        .collect();
    let table = RouteTable::new(config, "fuzz");
    let config = &table.config;
    let choice = table.choose(&headers);
    let color = choice.color;
    let overridden = config.by_header.is_some() || config.by_cookie.is_some();
    if !overridden {
        assert_eq!(choice.evidence, Evidence::Weighted);
    }
    if !overridden && config.weight == 0 {
        assert_eq!(color, config.stable);
    }
    if !overridden && config.weight >= config.weight_total {
        assert_eq!(color, config.canary());
    }
    let share: f64 = Color::ALL.iter().map(|c| table.weight_percent(*c)).sum();
    assert!((share - 100.0).abs() < 1e-6, "{share}");
});
