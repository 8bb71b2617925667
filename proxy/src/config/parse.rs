//! Parsing and validation of each key. One error names one key, its value and what is wrong.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;
use regex::Regex;

use super::{
    Cidr, ClientPolicy, Color, Config, GrpcCodes, HeaderRule, MAX_ENDPOINTS, Protocol,
    RollbackPolicy, ServiceRef, StatusSet, Sticky, Timeouts, UpstreamAddr, Upstreams,
};

/// Every key the configuration knows, in DESIGN.md's order.
pub const KEYS: &[&str] = &[
    "blue.upstream",
    "green.upstream",
    "blue.protocol",
    "green.protocol",
    "stable",
    "canary-weight",
    "canary-weight-total",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "sticky",
    "rollback.enabled",
    "rollback.max-error-rate",
    "rollback.min-requests",
    "rollback.confidence",
    "rollback.window",
    "rollback.failure-statuses",
    "rollback.grpc-failure-codes",
    "rollback.max-latency-increase",
    "rollback.latency-quantile",
    "progressive.steps",
    "progressive.step-min-duration",
    "progressive.step-min-requests",
    "progressive.promote",
    "progressive.paused",
    "retry.canary-connect-failure",
    "timeout.connect",
    "timeout.request",
    "timeout.client-body",
    "timeout.response-idle",
    "timeout.client-idle",
    "timeout.upstream-idle",
    "timeout.tunnel-idle",
    "limit.request-body",
    "limit.tunnels",
    "forwarded.trusted-hops",
    "forwarded.trusted-cidrs",
    "response-color-header",
];

/// Why a configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key that is not in [`KEYS`], most often a typo.
    #[error("unknown key `{key}`{}", did_you_mean(.suggestion))]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The known key it most resembles, if any is close.
        suggestion: Option<&'static str>,
    },
    /// A required key is absent or empty.
    #[error("key `{0}` is required")]
    Missing(&'static str),
    /// A key's value is not acceptable.
    #[error("key `{key}`: {value:?} {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The source could not be read or is not a map of keys to values.
    #[error("{0}")]
    Source(String),
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// The keys' values, with empty values treated as unset (as NGINX treats empty annotations).
struct Keys<'a>(&'a BTreeMap<String, String>);

impl<'a> Keys<'a> {
    fn get(&self, key: &'static str) -> Option<&'a str> {
        self.0
            .get(key)
            .map(|v| v.trim_end_matches(['\n', '\r']))
            .filter(|v| !v.trim().is_empty())
    }

    fn required(&self, key: &'static str) -> Result<&'a str, ConfigError> {
        self.get(key).ok_or(ConfigError::Missing(key))
    }

    /// Parses `key` with `parse` when it is set, else returns `default`.
    fn parse_or<T>(
        &self,
        key: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => parse(value.trim()).map_err(|reason| invalid(key, value, reason)),
        }
    }
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

pub(super) fn parse(data: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    if let Some(key) = data.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(ConfigError::UnknownKey {
            key: key.clone(),
            suggestion: closest_key(key),
        });
    }
    let keys = Keys(data);

    let upstreams = [
        upstream(&keys, "blue.upstream")?,
        upstream(&keys, "green.upstream")?,
    ];
    let protocols = [
        keys.parse_or("blue.protocol", Protocol::Http1, protocol)?,
        keys.parse_or("green.protocol", Protocol::Http1, protocol)?,
    ];
    let stable = keys.parse_or("stable", Color::Blue, |v| match v {
        "blue" => Ok(Color::Blue),
        "green" => Ok(Color::Green),
        _ => Err("is not a color: use `blue` or `green`".into()),
    })?;
    let weight_total = keys.parse_or("canary-weight-total", 100, |v| match whole(v)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    })?;
    let weight = keys.parse_or("canary-weight", 0, whole)?;
    if weight > weight_total {
        return Err(invalid(
            "canary-weight",
            &weight.to_string(),
            format!("is above canary-weight-total ({weight_total})"),
        ));
    }

    let by_header = header_rule(&keys)?;
    let by_cookie = keys.parse_or("canary-by-cookie", None, |v| {
        cookie_name(v).map(|n| Some(n.to_owned()))
    })?;
    let sticky = keys.parse_or("sticky", None, |v| sticky(v).map(Some))?;

    let rollback = RollbackPolicy {
        enabled: keys.parse_or("rollback.enabled", true, boolean)?,
        max_error_rate: keys.parse_or("rollback.max-error-rate", 0.05, percent)?,
        min_requests: keys.parse_or("rollback.min-requests", 20, |v| match whole(v)? {
            0 => Err("must be at least 1".into()),
            n => Ok(u64::from(n)),
        })?,
        confidence: keys.parse_or("rollback.confidence", 0.99, |v| {
            let c = percent(v)?;
            if !(0.5..1.0).contains(&c) {
                return Err("must be at least 50 and below 100".into());
            }
            Ok(c)
        })?,
        window: keys.parse_or("rollback.window", Duration::from_secs(30), |v| {
            let d = duration(v)?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                return Err("must be between 1s and 1h".into());
            }
            Ok(d)
        })?,
        failure_statuses: keys.parse_or(
            "rollback.failure-statuses",
            status_set("5xx").expect("the default parses"),
            status_set,
        )?,
        grpc_failure_codes: keys.parse_or(
            "rollback.grpc-failure-codes",
            GrpcCodes(0x1_fffe),
            grpc_codes,
        )?,
        latency: progressive::latency_trigger(&keys)?,
    };
    let timeouts = Timeouts {
        connect: keys.parse_or("timeout.connect", Duration::from_secs(1), positive_duration)?,
        request: keys.parse_or(
            "timeout.request",
            Duration::from_secs(60),
            positive_duration,
        )?,
        response_idle: keys.parse_or(
            "timeout.response-idle",
            Duration::from_secs(60),
            positive_duration,
        )?,
        upstream_idle: keys.parse_or(
            "timeout.upstream-idle",
            Duration::from_secs(4),
            positive_duration,
        )?,
    };

    Ok(Config {
        upstreams,
        protocols,
        stable,
        weight,
        weight_total,
        by_header,
        by_cookie,
        sticky,
        rollback,
        retry_canary_connect_failure: keys.parse_or(
            "retry.canary-connect-failure",
            true,
            boolean,
        )?,
        timeouts,
        response_color_header: keys
            .parse_or("response-color-header", None, |v| header_name(v).map(Some))?,
        client: ClientPolicy {
            max_body: keys.parse_or("limit.request-body", None, |v| {
                size(v).map(|n| (n > 0).then_some(n))
            })?,
            body_timeout: keys.parse_or(
                "timeout.client-body",
                Duration::from_secs(60),
                positive_duration,
            )?,
            trusted_hops: keys.parse_or("forwarded.trusted-hops", 0, |v| match whole(v)? {
                n if n > 16 => Err("must be at most 16".into()),
                n => Ok(n),
            })?,
            trusted_cidrs: keys.parse_or("forwarded.trusted-cidrs", Vec::new(), cidrs)?,
            // NGINX's keepalive_timeout: above the 60 s ingress-nginx keeps its upstream
            // connections for.
            idle_timeout: keys.parse_or(
                "timeout.client-idle",
                Duration::from_secs(75),
                positive_duration,
            )?,
            tunnel_idle: keys.parse_or(
                "timeout.tunnel-idle",
                Duration::from_secs(3600),
                positive_duration,
            )?,
            max_tunnels: keys.parse_or("limit.tunnels", Some(10_000), |v| {
                whole(v).map(|n| (n > 0).then_some(n as usize))
            })?,
        },
        progressive: progressive::steps(&keys, weight_total)?,
    })
}

/// Parses `10.0.0.0/8, 192.168.1.7, fd00::/8`: addresses and blocks of them.
fn cidrs(v: &str) -> Result<Vec<Cidr>, String> {
    v.split(',')
        .map(|item| {
            let item = item.trim();
            let (ip, prefix) = match item.split_once('/') {
                Some((ip, prefix)) => (ip, Some(prefix)),
                None => (item, None),
            };
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("has `{item}`, which is not an address or a CIDR block"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("has `{item}`, whose prefix is not 0-{max}"))?,
            };
            Ok(Cidr::new(ip, prefix).expect("the prefix was checked"))
        })
        .collect()
}

/// Parses a byte size: `1048576`, `512k`, `10m`, `1g` (powers of 1024, as NGINX does).
fn size(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let (number, scale) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 1 << 10),
        Some(b'm') => (&lower[..lower.len() - 1], 1 << 20),
        Some(b'g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| "is not a size: write e.g. `1048576`, `512k`, `10m` or `1g`".to_string())?;
    n.checked_mul(scale).ok_or_else(|| "is too large".into())
}

fn upstream(keys: &Keys<'_>, key: &'static str) -> Result<Upstreams, ConfigError> {
    let value = keys.required(key)?.trim();
    parse_upstreams(value).map_err(|reason| invalid(key, value, reason))
}

/// A Service reference (`svc:NAME.NAMESPACE:PORT`) or a comma-separated list of `host:port`.
fn parse_upstreams(value: &str) -> Result<Upstreams, String> {
    if let Some(service) = value.strip_prefix("svc:") {
        return parse_service(service).map(Upstreams::Service);
    }
    let mut endpoints: Vec<UpstreamAddr> = Vec::new();
    for part in value.split(',') {
        let addr = parse_upstream(part.trim())?;
        if endpoints.contains(&addr) {
            return Err(format!("names `{addr}` twice"));
        }
        endpoints.push(addr);
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(format!("has more than {MAX_ENDPOINTS} endpoints"));
    }
    Ok(Upstreams::Static(endpoints))
}

/// `NAME.NAMESPACE:PORT`, each name a DNS label (RFC 1123) as Kubernetes requires, the port
/// a name or a number.
fn parse_service(value: &str) -> Result<ServiceRef, String> {
    const FORM: &str = "write a Service as `svc:NAME.NAMESPACE:PORT`";
    let (names, port) = value
        .split_once(':')
        .ok_or_else(|| format!("has no port: {FORM}"))?;
    let (name, namespace) = names
        .split_once('.')
        .ok_or_else(|| format!("has no namespace: {FORM}"))?;
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !label(name) || !label(namespace) {
        return Err(format!(
            "has an invalid Service name or namespace (lowercase letters, digits and `-`): {FORM}"
        ));
    }
    let number_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    if !label(port) || (port.bytes().all(|b| b.is_ascii_digit()) && !number_ok) {
        return Err(format!("has an invalid port `{port}`: {FORM}"));
    }
    Ok(ServiceRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port: port.to_owned(),
    })
}

fn parse_upstream(value: &str) -> Result<UpstreamAddr, String> {
    let (rest, default_port) = match value.split_once("://") {
        Some(("http", rest)) => (rest.strip_suffix('/').unwrap_or(rest), Some(80)),
        Some((scheme, _)) => {
            return Err(format!(
                "has scheme `{scheme}`: upstreams are plain HTTP, write `host:port` or `http://host:port`"
            ));
        }
        None => (value, None),
    };
    if rest.contains(['/', '?', '#', '@']) {
        return Err("must be `host:port` only, without a path, query or user".into());
    }
    let authority: Authority = rest
        .parse()
        .map_err(|_| "is not a valid `host:port`".to_string())?;
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = !bare.is_empty()
        && (bare.parse::<std::net::IpAddr>().is_ok()
            || bare.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    if !host_ok {
        return Err(format!("has an invalid host `{host}`"));
    }
    let port_text = authority
        .as_str()
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.ends_with(']'));
    if port_text && authority.port_u16().is_none() {
        return Err("has an invalid port".into());
    }
    let authority = match (authority.port_u16(), default_port) {
        (Some(0), _) => return Err("has port 0".into()),
        (Some(_), _) => authority,
        (None, Some(port)) => format!("{host}:{port}")
            .parse()
            .map_err(|_| "is not a valid `host:port`".to_string())?,
        (None, None) => return Err("has no port: write `host:port`".into()),
    };
    Ok(UpstreamAddr { authority })
}

fn protocol(v: &str) -> Result<Protocol, String> {
    match v {
        "http1" => Ok(Protocol::Http1),
        "h2c" => Ok(Protocol::H2c),
        _ => Err("must be `http1` or `h2c`".into()),
    }
}

/// Parses `2,4,13-15`: gRPC status codes 0-16 and ranges of them.
fn grpc_codes(v: &str) -> Result<GrpcCodes, String> {
    let code = |s: &str| match s.trim().parse::<u32>() {
        Ok(c) if c <= 16 => Ok(c),
        _ => Err(format!(
            "has `{}`, which is not a gRPC status code (0-16)",
            s.trim()
        )),
    };
    let mut set = 0u32;
    for item in v.split(',') {
        let (from, to) = match item.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(item)?, code(item)?),
        };
        if from > to {
            return Err(format!("has the empty range `{}`", item.trim()));
        }
        (from..=to).for_each(|c| set |= 1 << c);
    }
    Ok(GrpcCodes(set))
}

fn header_rule(keys: &Keys<'_>) -> Result<Option<HeaderRule>, ConfigError> {
    let value = keys.get("canary-by-header-value").map(str::to_owned);
    let pattern = keys.parse_or("canary-by-header-pattern", None, |v| {
        Regex::new(v).map(Some).map_err(|e| {
            format!(
                "is not a valid regular expression: {}",
                first_line(&e.to_string())
            )
        })
    })?;
    let Some(name) = keys.get("canary-by-header") else {
        if let Some(v) = &value {
            return Err(invalid(
                "canary-by-header-value",
                v,
                "needs canary-by-header to be set",
            ));
        }
        if let Some(p) = &pattern {
            return Err(invalid(
                "canary-by-header-pattern",
                p.as_str(),
                "needs canary-by-header to be set",
            ));
        }
        return Ok(None);
    };
    let name =
        header_name(name.trim()).map_err(|reason| invalid("canary-by-header", name, reason))?;
    Ok(Some(HeaderRule {
        name,
        value,
        pattern,
    }))
}

fn first_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s).trim()
}

fn header_name(v: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(v.as_bytes()).map_err(|_| "is not a valid HTTP header name".into())
}

fn cookie_name(v: &str) -> Result<&str, String> {
    // RFC 6265 cookie-name is an RFC 7230 token.
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if v.bytes().all(token) {
        Ok(v)
    } else {
        Err("is not a valid cookie name".into())
    }
}

fn sticky(v: &str) -> Result<Sticky, String> {
    match v.split_once(':') {
        Some(("cookie", name)) => cookie_name(name).map(|n| Sticky::Cookie(n.to_owned())),
        Some(("header", name)) => header_name(name).map(Sticky::Header),
        _ => Err("must be `cookie:NAME` or `header:NAME`".into()),
    }
}

fn whole(v: &str) -> Result<u32, String> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a whole number".into());
    }
    v.parse().map_err(|_| "is too large".into())
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be `true` or `false`".into()),
    }
}

fn percent(v: &str) -> Result<f64, String> {
    let n: f64 = v
        .strip_suffix('%')
        .unwrap_or(v)
        .trim()
        .parse()
        .map_err(|_| "is not a number".to_string())?;
    if !(0.0..=100.0).contains(&n) {
        return Err("must be a percentage between 0 and 100".into());
    }
    Ok(n / 100.0)
}

/// Parses `500ms`, `1s`, `1.5s`, `2m`, `1h`.
pub fn duration(v: &str) -> Result<Duration, String> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or("has no unit: write e.g. `500ms`, `30s` or `2m`")?;
    let (number, unit) = v.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| "is not a duration: write e.g. `500ms`, `30s` or `2m`".to_string())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err("has an unknown unit: use ms, s, m or h".into()),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|_| "is out of range".into())
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    match duration(v)? {
        Duration::ZERO => Err("must be more than zero".into()),
        d if d > Duration::from_secs(86_400) => Err("must be at most 24h".into()),
        d => Ok(d),
    }
}

/// Parses `5xx,429`: classes `1xx`..`5xx` and codes 100..=599.
fn status_set(v: &str) -> Result<StatusSet, String> {
    let mut set = StatusSet::empty();
    for item in v.split(',').map(str::trim) {
        match item.as_bytes() {
            [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                let base = u16::from(c - b'0') * 100;
                (base..base + 100).for_each(|code| set.insert(code));
            }
            _ => match item.parse::<u16>() {
                Ok(code) if (100..600).contains(&code) => set.insert(code),
                _ => {
                    return Err(format!(
                        "has `{item}`, which is neither a status code (100-599) nor a class like `5xx`"
                    ));
                }
            },
        }
    }
    Ok(set)
}

/// The known key within edit distance 3 of `key`, if there is one.
fn closest_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

mod progressive;
#[cfg(test)]
mod tests;
