//! The config parser on arbitrary text: as a config file (YAML, a ConfigMap manifest or a
//! flat map), and as `key=value` lines that reach every key's validation more often. A
//! config that parses must hold what the request path relies on.

#![no_main]

use std::collections::BTreeMap;

use canary_proxy::config::{Config, source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = source::parse_text(text) {
        check(&keys);
    }
    let keys: BTreeMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    check(&keys);
});

fn check(keys: &BTreeMap<String, String>) {
    let Ok(config) = Config::from_map(keys) else {
        return;
    };
    assert!(config.weight_total >= 1);
    assert!(config.weight <= config.weight_total);
    assert_ne!(config.stable, config.canary());
}
