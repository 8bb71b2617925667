use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = [
        ("blue.upstream", "blue.default.svc:80"),
        ("green.upstream", "127.0.0.1:8082"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in pairs {
        if v.is_empty() && k.ends_with(".upstream") {
            data.remove(*k);
        } else {
            data.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    data
}

fn error(pairs: &[(&str, &str)]) -> String {
    match Config::from_map(&map(pairs)) {
        Ok(config) => panic!("{pairs:?} was accepted as {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_rejected_with_a_message_naming_key_and_value() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("canary-wieght", "5")],
            "unknown key `canary-wieght` (did you mean `canary-weight`?)",
        ),
        (&[("weights", "5")], "unknown key `weights`"),
        (&[("blue.upstream", "")], "key `blue.upstream` is required"),
        (
            &[("green.upstream", "")],
            "key `green.upstream` is required",
        ),
        (
            &[("blue.upstream", "blue-svc")],
            "key `blue.upstream`: \"blue-svc\" has no port: write `host:port`",
        ),
        (
            &[("blue.upstream", "https://blue:443")],
            "key `blue.upstream`: \"https://blue:443\" has scheme `https`: upstreams are plain HTTP, write `host:port` or `http://host:port`",
        ),
        (
            &[("green.upstream", "green:99999")],
            "key `green.upstream`: \"green:99999\" has an invalid port",
        ),
        (
            &[("green.upstream", "http://green:80/api")],
            "key `green.upstream`: \"http://green:80/api\" must be `host:port` only, without a path, query or user",
        ),
        (
            &[("green.upstream", "gr een:80")],
            "key `green.upstream`: \"gr een:80\" is not a valid `host:port`",
        ),
        (
            &[("green.upstream", "green:0")],
            "key `green.upstream`: \"green:0\" has port 0",
        ),
        (
            &[("stable", "purple")],
            "key `stable`: \"purple\" is not a color: use `blue` or `green`",
        ),
        (
            &[("canary-weight", "ninety")],
            "key `canary-weight`: \"ninety\" is not a whole number",
        ),
        (
            &[("canary-weight", "-5")],
            "key `canary-weight`: \"-5\" is not a whole number",
        ),
        (
            &[("canary-weight", "5.5")],
            "key `canary-weight`: \"5.5\" is not a whole number",
        ),
        (
            &[("canary-weight", "99999999999")],
            "key `canary-weight`: \"99999999999\" is too large",
        ),
        (
            &[("canary-weight", "150")],
            "key `canary-weight`: \"150\" is above canary-weight-total (100)",
        ),
        (
            &[("canary-weight", "20"), ("canary-weight-total", "10")],
            "key `canary-weight`: \"20\" is above canary-weight-total (10)",
        ),
        (
            &[("canary-weight-total", "0")],
            "key `canary-weight-total`: \"0\" must be at least 1",
        ),
        (
            &[("canary-by-header", "x canary")],
            "key `canary-by-header`: \"x canary\" is not a valid HTTP header name",
        ),
        (
            &[
                ("canary-by-header", "x-canary"),
                ("canary-by-header-pattern", "(unclosed"),
            ],
            "key `canary-by-header-pattern`: \"(unclosed\" is not a valid regular expression: error: unclosed group",
        ),
        (
            &[("canary-by-header-value", "yes")],
            "key `canary-by-header-value`: \"yes\" needs canary-by-header to be set",
        ),
        (
            &[("canary-by-cookie", "a;b")],
            "key `canary-by-cookie`: \"a;b\" is not a valid cookie name",
        ),
        (
            &[("sticky", "ip")],
            "key `sticky`: \"ip\" must be `cookie:NAME` or `header:NAME`",
        ),
        (
            &[("rollback.enabled", "yes")],
            "key `rollback.enabled`: \"yes\" must be `true` or `false`",
        ),
        (
            &[("rollback.max-error-rate", "150")],
            "key `rollback.max-error-rate`: \"150\" must be a percentage between 0 and 100",
        ),
        (
            &[("rollback.max-error-rate", "five")],
            "key `rollback.max-error-rate`: \"five\" is not a number",
        ),
        (
            &[("rollback.min-requests", "0")],
            "key `rollback.min-requests`: \"0\" must be at least 1",
        ),
        (
            &[("rollback.confidence", "100")],
            "key `rollback.confidence`: \"100\" must be at least 50 and below 100",
        ),
        (
            &[("rollback.confidence", "sure")],
            "key `rollback.confidence`: \"sure\" is not a number",
        ),
        (
            &[("timeout.response-idle", "0s")],
            "key `timeout.response-idle`: \"0s\" must be more than zero",
        ),
        (
            &[("rollback.window", "30")],
            "key `rollback.window`: \"30\" has no unit: write e.g. `500ms`, `30s` or `2m`",
        ),
        (
            &[("rollback.window", "30 days")],
            "key `rollback.window`: \"30 days\" has an unknown unit: use ms, s, m or h",
        ),
        (
            &[("rollback.window", "100ms")],
            "key `rollback.window`: \"100ms\" must be between 1s and 1h",
        ),
        (
            &[("rollback.failure-statuses", "6xx")],
            "key `rollback.failure-statuses`: \"6xx\" has `6xx`, which is neither a status code (100-599) nor a class like `5xx`",
        ),
        (
            &[("rollback.failure-statuses", "5xx,99")],
            "key `rollback.failure-statuses`: \"5xx,99\" has `99`, which is neither a status code (100-599) nor a class like `5xx`",
        ),
        (
            &[("retry.canary-connect-failure", "1")],
            "key `retry.canary-connect-failure`: \"1\" must be `true` or `false`",
        ),
        (
            &[("timeout.connect", "0s")],
            "key `timeout.connect`: \"0s\" must be more than zero",
        ),
        (
            &[("timeout.request", "soon")],
            "key `timeout.request`: \"soon\" is not a duration: write e.g. `500ms`, `30s` or `2m`",
        ),
        (
            &[("response-color-header", "x served")],
            "key `response-color-header`: \"x served\" is not a valid HTTP header name",
        ),
        (
            &[("forwarded.trusted-cidrs", "10.0.0.0/33")],
            "key `forwarded.trusted-cidrs`: \"10.0.0.0/33\" has `10.0.0.0/33`, whose prefix is not 0-32",
        ),
        (
            &[("forwarded.trusted-cidrs", "10.0.0.0/8, ingress")],
            "key `forwarded.trusted-cidrs`: \"10.0.0.0/8, ingress\" has `ingress`, which is not an address or a CIDR block",
        ),
        (
            &[("timeout.client-idle", "0s")],
            "key `timeout.client-idle`: \"0s\" must be more than zero",
        ),
        (
            &[("timeout.upstream-idle", "2")],
            "key `timeout.upstream-idle`: \"2\" has no unit: write e.g. `500ms`, `30s` or `2m`",
        ),
        (
            &[("timeout.tunnel-idle", "forever")],
            "key `timeout.tunnel-idle`: \"forever\" is not a duration: write e.g. `500ms`, `30s` or `2m`",
        ),
        (
            &[("limit.tunnels", "many")],
            "key `limit.tunnels`: \"many\" is not a whole number",
        ),
    ];
    assert!(cases.len() >= 15);
    for (pairs, expected) in cases {
        assert_eq!(&error(pairs), expected, "for {pairs:?}");
    }
}

#[test]
fn defaults_follow_the_design() {
    let c = Config::from_map(&map(&[])).unwrap();
    assert_eq!(c.stable, Color::Blue);
    assert_eq!(c.canary(), Color::Green);
    assert_eq!((c.weight, c.weight_total), (0, 100));
    assert!(c.by_header.is_none() && c.by_cookie.is_none() && c.sticky.is_none());
    assert!(c.rollback.enabled);
    assert_eq!(c.rollback.max_error_rate, 0.05);
    assert_eq!(c.rollback.min_requests, 20);
    assert_eq!(c.rollback.window, Duration::from_secs(30));
    assert!(c.rollback.failure_statuses.contains(500));
    assert!(c.rollback.failure_statuses.contains(599));
    assert!(!c.rollback.failure_statuses.contains(429));
    assert!(c.retry_canary_connect_failure);
    assert_eq!(c.protocols, [Protocol::Http1, Protocol::Http1]);
    assert!(!c.rollback.grpc_failure_codes.contains(0));
    assert!((1..=16).all(|code| c.rollback.grpc_failure_codes.contains(code)));
    assert_eq!(c.timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.timeouts.request, Duration::from_secs(60));
    assert!(c.response_color_header.is_none());
    assert_eq!(c.client.max_body, None);
    assert_eq!(c.client.body_timeout, Duration::from_secs(60));
    assert_eq!(c.client.trusted_hops, 0);
    assert!(c.client.trusted_cidrs.is_empty());
    assert_eq!(c.client.idle_timeout, Duration::from_secs(75));
    assert_eq!(c.client.tunnel_idle, Duration::from_secs(3600));
    assert_eq!(c.client.max_tunnels, Some(10_000));
    assert_eq!(c.timeouts.upstream_idle, Duration::from_secs(4));
}

#[test]
fn every_key_is_read() {
    let c = Config::from_map(&map(&[
        ("blue.upstream", "http://[::1]"),
        (
            "green.upstream",
            "http://green.prod.svc.cluster.local:8080/",
        ),
        ("stable", "green"),
        ("canary-weight", "3"),
        ("canary-weight-total", "1000"),
        ("canary-by-header", "X-Canary"),
        ("canary-by-header-value", "me"),
        ("canary-by-header-pattern", "^tester-"),
        ("canary-by-cookie", "canary"),
        ("sticky", "cookie:session"),
        ("rollback.enabled", "false"),
        ("rollback.max-error-rate", "2.5%"),
        ("rollback.min-requests", "50"),
        ("rollback.window", "1.5m"),
        ("rollback.failure-statuses", "5xx, 429"),
        ("rollback.grpc-failure-codes", "2, 13-15"),
        ("green.protocol", "h2c"),
        ("retry.canary-connect-failure", "false"),
        ("timeout.connect", "250ms"),
        ("timeout.request", "15s\n"),
        ("response-color-header", "x-served-color"),
        ("limit.request-body", "10m"),
        ("timeout.client-body", "5s"),
        ("forwarded.trusted-hops", "1"),
        (
            "forwarded.trusted-cidrs",
            "10.0.0.0/8, 192.168.1.7, fd00::/8",
        ),
        ("timeout.client-idle", "90s"),
        ("timeout.upstream-idle", "1s"),
        ("timeout.tunnel-idle", "10m"),
        ("limit.tunnels", "0"),
    ]))
    .unwrap();
    assert_eq!(c.upstream(Color::Blue).to_string(), "[::1]:80");
    let Upstreams::Static(blue) = c.upstream(Color::Blue) else {
        panic!("a static upstream")
    };
    assert_eq!(blue[0].host(), "::1");
    assert_eq!(
        c.upstream(Color::Green).to_string(),
        "green.prod.svc.cluster.local:8080"
    );
    assert_eq!((c.stable, c.canary()), (Color::Green, Color::Blue));
    assert_eq!((c.weight, c.weight_total), (3, 1000));
    let rule = c.by_header.as_ref().unwrap();
    assert_eq!(rule.name, "x-canary");
    assert_eq!(rule.value.as_deref(), Some("me"));
    assert_eq!(rule.pattern.as_ref().unwrap().as_str(), "^tester-");
    assert_eq!(c.by_cookie.as_deref(), Some("canary"));
    assert_eq!(c.sticky, Some(Sticky::Cookie("session".into())));
    assert!(!c.rollback.enabled);
    assert_eq!(c.rollback.max_error_rate, 0.025);
    assert_eq!(c.rollback.min_requests, 50);
    assert_eq!(c.rollback.window, Duration::from_secs(90));
    assert!(c.rollback.failure_statuses.contains(429));
    assert!(!c.rollback.failure_statuses.contains(404));
    let grpc = c.rollback.grpc_failure_codes;
    assert!(grpc.contains(2) && grpc.contains(13) && grpc.contains(15) && !grpc.contains(5));
    assert_eq!(c.protocol(Color::Green), Protocol::H2c);
    assert!(!c.retry_canary_connect_failure);
    assert_eq!(c.timeouts.connect, Duration::from_millis(250));
    assert_eq!(c.timeouts.request, Duration::from_secs(15));
    assert_eq!(c.response_color_header.unwrap(), "x-served-color");
    assert_eq!(c.client.max_body, Some(10 << 20));
    assert_eq!(c.client.body_timeout, Duration::from_secs(5));
    assert_eq!(c.client.trusted_hops, 1);
    let trusts = |ip: &str| c.client.trusts(ip.parse().unwrap());
    assert!(trusts("10.2.3.4") && trusts("::ffff:10.2.3.4") && trusts("192.168.1.7"));
    assert!(trusts("fd12::1") && !trusts("192.168.1.8") && !trusts("11.0.0.1"));
    assert_eq!(c.client.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.timeouts.upstream_idle, Duration::from_secs(1));
    assert_eq!(c.client.tunnel_idle, Duration::from_secs(600));
    assert_eq!(c.client.max_tunnels, None);
}

#[test]
fn empty_optional_values_mean_unset() {
    let c = Config::from_map(&map(&[("canary-weight", ""), ("canary-by-header", " ")])).unwrap();
    assert_eq!(c.weight, 0);
    assert!(c.by_header.is_none());
}

#[test]
fn an_upstream_may_be_a_list_of_endpoints() {
    let c = Config::from_map(&map(&[(
        "green.upstream",
        "127.0.0.11:8080, 127.0.0.12:8080,http://green-2:80",
    )]))
    .unwrap();
    let green = c.upstream(Color::Green);
    assert!(matches!(green, Upstreams::Static(e) if e.len() == 3));
    assert_eq!(
        green.to_string(),
        "127.0.0.11:8080,127.0.0.12:8080,green-2:80"
    );
    let many = (0..=MAX_ENDPOINTS)
        .map(|i| format!("10.0.{}.{}:80", i / 200, i % 200 + 1))
        .collect::<Vec<_>>()
        .join(",");
    for (value, reason) in [
        ("a:80,a:80", "names `a:80` twice"),
        ("a:80,", "is not a valid `host:port`"),
        ("a:80,b", "has no port: write `host:port`"),
        (many.as_str(), "has more than 64 endpoints"),
    ] {
        let message = error(&[("green.upstream", value)]);
        assert!(message.ends_with(reason), "{value}: {message}");
    }
}

#[test]
fn an_upstream_may_be_a_service() {
    let c = Config::from_map(&map(&[("green.upstream", "svc:shop-green.prod:http")])).unwrap();
    let green = c.upstream(Color::Green);
    assert_eq!(
        green,
        &Upstreams::Service(ServiceRef {
            namespace: "prod".into(),
            name: "shop-green".into(),
            port: "http".into(),
        })
    );
    assert_eq!(green.to_string(), "svc:shop-green.prod:http");
    let numbered = Config::from_map(&map(&[("green.upstream", "svc:a.b:8080")])).unwrap();
    assert_eq!(numbered.upstream(Color::Green).to_string(), "svc:a.b:8080");
    for (value, reason) in [
        ("svc:green", "has no port"),
        ("svc:green:http", "has no namespace"),
        (
            "svc:Green.prod:http",
            "has an invalid Service name or namespace",
        ),
        (
            "svc:green.prod.svc:http",
            "has an invalid Service name or namespace",
        ),
        ("svc:green.prod:", "has an invalid port ``"),
        ("svc:green.prod:99999", "has an invalid port `99999`"),
    ] {
        let message = error(&[("green.upstream", value)]);
        assert!(message.contains(reason), "{value}: {message}");
    }
}
