//! The configuration: the ConfigMap's `data` keys parsed and validated into one immutable
//! [`Config`]. Everything is checked here, once, so the request path never meets a bad value.
//!
//! - [`source`] reads the keys from a file, a ConfigMap manifest or a kubelet-mounted directory.
//! - [`watch`] polls that source and hands each new, valid config to the runtime.

pub mod source;
pub mod watch;

mod parse;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;
use regex::Regex;

pub use parse::{ConfigError, KEYS, duration as parse_duration};

/// One of the two upstream colors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Color {
    /// The `blue` upstream.
    Blue,
    /// The `green` upstream.
    Green,
}

impl Color {
    /// Both colors, in index order.
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The color's index into per-color arrays.
    pub const fn index(self) -> usize {
        match self {
            Color::Blue => 0,
            Color::Green => 1,
        }
    }

    /// The other color.
    pub const fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// The color's name as used in config values, labels and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated configuration snapshot. Immutable once built.
#[derive(Clone, Debug)]
pub struct Config {
    /// Upstream endpoints per color, indexed by [`Color::index`].
    pub upstreams: [Upstreams; 2],
    /// Protocol spoken to each color's upstream (`blue.protocol`, `green.protocol`).
    pub protocols: [Protocol; 2],
    /// The color that takes the traffic the canary does not.
    pub stable: Color,
    /// Canary share, out of `weight_total` (NGINX `canary-weight`).
    pub weight: u32,
    /// Denominator of the weight (NGINX `canary-weight-total`).
    pub weight_total: u32,
    /// `canary-by-header` and its value or pattern.
    pub by_header: Option<HeaderRule>,
    /// `canary-by-cookie`: the cookie name.
    pub by_cookie: Option<String>,
    /// `sticky`: which request value keeps one user on one color.
    pub sticky: Option<Sticky>,
    /// When and how the canary is rolled back.
    pub rollback: RollbackPolicy,
    /// Re-send to stable a request that could not connect to the canary.
    pub retry_canary_connect_failure: bool,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// If set, every response names the color that served it in this header.
    pub response_color_header: Option<HeaderName>,
    /// What the proxy accepts from clients.
    pub client: ClientPolicy,
    /// `progressive.*`: the steps the canary's weight climbs by itself; `None` without
    /// `progressive.steps`.
    pub progressive: Option<Progressive>,
}

/// The step plan (`progressive.*`): `canary-weight` reads as the current step, and the
/// weight moves to the next step once the step's gate is passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progressive {
    /// `progressive.steps`: canary weights, out of `canary-weight-total`, strictly increasing.
    pub steps: Vec<u32>,
    /// `progressive.step-min-duration`: the least time at each step.
    pub min_duration: Duration,
    /// `progressive.step-min-requests`: the least weighted canary requests at each step.
    pub min_requests: u64,
    /// `progressive.promote`: after the last step, make the canary stable (weight 0);
    /// otherwise stay at the last step.
    pub promote: bool,
    /// `progressive.paused`: hold the current step.
    pub paused: bool,
    /// Whether `progressive.paused` is written at all: writing it, changing it or removing it
    /// is the edit that resumes a plan paused by a hand edit of the weight.
    pub paused_written: bool,
}

/// The latency trigger's parameters (`rollback.max-latency-increase`,
/// `rollback.latency-quantile`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyTrigger {
    /// How much slower than stable the canary may be, a fraction (20 % is 0.2).
    pub max_increase: f64,
    /// The quantile whose neighbourhood of the tail is compared (0.99).
    pub quantile: f64,
}

/// Limits on client requests and how far their forwarding headers are believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPolicy {
    /// `limit.request-body`: the largest request body accepted, in bytes; `None` for no limit.
    pub max_body: Option<u64>,
    /// `timeout.client-body`: the longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// `forwarded.trusted-hops`: how many proxies in front of this one are trusted to have
    /// set `X-Forwarded-*` truthfully. With 0, what the client sent is replaced.
    pub trusted_hops: u32,
    /// `forwarded.trusted-cidrs`: the peers whose `X-Forwarded-*` are believed (NGINX's
    /// `set_real_ip_from`); empty trusts any peer, as before the key existed.
    pub trusted_cidrs: Vec<Cidr>,
    /// `timeout.client-idle`: how long an idle kept-alive client connection stays open. Longer
    /// than an ingress keeps its upstream connections, so the ingress always closes first.
    pub idle_timeout: Duration,
    /// `timeout.tunnel-idle`: an upgraded tunnel (WebSocket) with no bytes either way for this
    /// long is closed.
    pub tunnel_idle: Duration,
    /// `limit.tunnels`: upgraded tunnels open at once; beyond it an upgrade gets 503. `None`
    /// for no limit.
    pub max_tunnels: Option<usize>,
}

impl ClientPolicy {
    /// Whether a client connecting from `peer` may have its `X-Forwarded-*` believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_hops > 0
            && (self.trusted_cidrs.is_empty()
                || self.trusted_cidrs.iter().any(|c| c.contains(peer)))
    }
}

/// A block of addresses, `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, with the host bits cleared.
    net: IpAddr,
    /// The prefix length.
    prefix: u8,
}

impl Cidr {
    /// The block of `net`'s first `prefix` bits; `None` if the prefix is too long.
    pub fn new(net: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if net.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Cidr {
            net: mask(net, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in the block; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & bits).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & bits).into())
        }
    }
}

impl Config {
    /// Parses and validates the ConfigMap `data` keys.
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        parse::parse(data)
    }

    /// The canary: the color that is not stable.
    pub fn canary(&self) -> Color {
        self.stable.other()
    }

    /// The upstream endpoints of `color`.
    pub fn upstream(&self, color: Color) -> &Upstreams {
        &self.upstreams[color.index()]
    }

    /// The protocol spoken to `color`'s upstream.
    pub fn protocol(&self, color: Color) -> Protocol {
        self.protocols[color.index()]
    }

    /// Whether any request can reach the canary under this config.
    pub fn canary_reachable(&self) -> bool {
        self.weight > 0 || self.by_header.is_some() || self.by_cookie.is_some()
    }
}

/// An upstream's address: `host:port`, spoken to in plain HTTP/1.1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// `host:port`, as connected to and as written in logs.
    pub authority: Authority,
}

impl UpstreamAddr {
    /// The host part (a DNS name or an IP literal, IPv6 without brackets).
    pub fn host(&self) -> &str {
        let host = self.authority.host();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The port; always present after validation.
    pub fn port(&self) -> u16 {
        self.authority.port_u16().unwrap_or(80)
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.authority.as_str())
    }
}

/// A color's upstream: the endpoints each request is balanced across. Written as the key's
/// value was (a list joined by `,`, or `svc:NAME.NAMESPACE:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstreams {
    /// A fixed list: at least one address and at most [`MAX_ENDPOINTS`], none twice.
    Static(Vec<UpstreamAddr>),
    /// A Kubernetes Service: its ready endpoints, followed through its EndpointSlices.
    Service(ServiceRef),
}

/// A Kubernetes Service and the port of its endpoints that serves HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name in the Service (and so in its EndpointSlices), or a port number on the
    /// pods.
    pub port: String,
}

/// The most endpoints a color may have: it bounds the per-endpoint state on `/status` and in
/// the metrics, and the linear scans of the balancer and the pools. A Service with more
/// ready endpoints is balanced over the first this many, by address.
pub const MAX_ENDPOINTS: usize = 64;

impl fmt::Display for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstreams::Static(endpoints) => {
                for (i, addr) in endpoints.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    fmt::Display::fmt(addr, f)?;
                }
                Ok(())
            }
            Upstreams::Service(service) => fmt::Display::fmt(service, f),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "svc:{}.{}:{}", self.name, self.namespace, self.port)
    }
}

/// How the proxy talks to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, one request per connection at a time.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge, multiplexed; needed for gRPC.
    H2c,
}

/// `canary-by-header` with its optional exact value or pattern (NGINX semantics: with neither,
/// `always` and `never` decide; with a value, only that value sends to the canary; the value
/// wins over the pattern).
#[derive(Clone, Debug)]
pub struct HeaderRule {
    /// The header to look at.
    pub name: HeaderName,
    /// `canary-by-header-value`.
    pub value: Option<String>,
    /// `canary-by-header-pattern`, matched anywhere in the value like NGINX's `ngx.re.match`.
    pub pattern: Option<Regex>,
}

/// Where the sticky key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// The value of this cookie.
    Cookie(String),
    /// The value of this header.
    Header(HeaderName),
}

/// The rollback rule's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct RollbackPolicy {
    /// `rollback.enabled`.
    pub enabled: bool,
    /// `rollback.max-error-rate` as a fraction (5 % is 0.05).
    pub max_error_rate: f64,
    /// `rollback.min-requests`.
    pub min_requests: u64,
    /// `rollback.confidence` as a fraction (99 % is 0.99): the chance that a canary at or below
    /// the threshold is *not* rolled back within the test's horizon.
    pub confidence: f64,
    /// `rollback.window`.
    pub window: Duration,
    /// `rollback.failure-statuses`.
    pub failure_statuses: StatusSet,
    /// `rollback.grpc-failure-codes`: `grpc-status` values that count as failures.
    pub grpc_failure_codes: GrpcCodes,
    /// The latency trigger; `None` without `rollback.max-latency-increase`.
    pub latency: Option<LatencyTrigger>,
}

/// A set of gRPC status codes (0-16), as a bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcCodes(pub u32);

impl GrpcCodes {
    /// Whether `code` is in the set; codes beyond 31 never are.
    pub fn contains(&self, code: u32) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }
}

/// A set of HTTP status codes, as a bitmap over 100..=599.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatusSet([u64; 8]);

impl StatusSet {
    /// The empty set.
    pub const fn empty() -> StatusSet {
        StatusSet([0; 8])
    }

    /// Adds one code; codes outside 100..=599 are ignored (validation rejects them first).
    pub fn insert(&mut self, code: u16) {
        if (100..600).contains(&code) {
            let i = usize::from(code - 100);
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        if !(100..600).contains(&code) {
            return false;
        }
        let i = usize::from(code - 100);
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((100..600).filter(|&c| self.contains(c)))
            .finish()
    }
}

/// Upstream timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `timeout.connect`: TCP connect to an upstream.
    pub connect: Duration,
    /// `timeout.request`: from the end of sending the request (its body included) to the
    /// upstream's response headers; time spent waiting for the client's body is not counted.
    pub request: Duration,
    /// `timeout.response-idle`: the longest wait for the next piece of a response body.
    pub response_idle: Duration,
    /// `timeout.upstream-idle`: how long an idle pooled HTTP/1.1 connection is kept; below the
    /// upstream's own keep-alive timeout, so the proxy rarely reuses one the upstream is closing.
    pub upstream_idle: Duration,
}
