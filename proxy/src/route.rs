//! Route choice: which color serves a request, with NGINX's canary precedence
//! (header, then cookie, then sticky or weight), read from one immutable [`RouteTable`].

use std::cell::RefCell;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{COOKIE, HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::{Color, Config, HeaderRule, Sticky};
use crate::progressive::Stepper;
use crate::rollback::judge::Judge;
use crate::rollback::sequential::{Counts, Plan};
use crate::rollback::tally::Evidence;
use crate::upstream::endpoints::Endpoints;

/// Everything a request needs to be routed and accounted, swapped as one snapshot.
#[derive(Clone)]
pub struct RouteTable {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The configuration's revision (ConfigMap resourceVersion or content hash).
    pub revision: Arc<str>,
    /// Endpoints per color, with their pools, loads and outlier states.
    pub upstreams: [Arc<Endpoints>; 2],
    /// The rollback test's constants, from the rollback policy.
    pub plan: Plan,
    /// The canary's test; carried over across reloads while the canary stays the same.
    pub judge: Arc<Judge>,
    /// Set once the canary has been rolled back: every request then goes to stable.
    pub rolled_back: Option<Arc<RolledBack>>,
    /// The canary's step plan (`progressive.*`); carried over like the judge.
    pub progress: Arc<Stepper>,
}

/// Where a request goes, and whether it is evidence about that color.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The color that serves it.
    pub color: Color,
    /// Weighted, or forced by a header or cookie.
    pub evidence: Evidence,
}

/// A rollback that has happened.
#[derive(Clone, Debug)]
pub struct RolledBack {
    /// The canary color that was rolled back.
    pub color: Color,
    /// Why, with the figures.
    pub reason: String,
    /// When, in RFC 3339.
    pub at: String,
    /// The revision of the configuration whose evidence was judged; the persisted record
    /// names it, including when it is written after later, unrelated edits.
    pub revision: Arc<str>,
}

impl RouteTable {
    /// A table for `config` with new upstreams (empty pools) and a judge that starts from no
    /// requests at all.
    pub fn new(config: Config, revision: &str) -> RouteTable {
        let policy = &config.rollback;
        RouteTable {
            upstreams: Color::ALL
                .map(|c| Arc::new(Endpoints::new(config.upstream(c), config.protocol(c), None))),
            plan: Plan::new(
                policy.max_error_rate,
                policy.confidence,
                policy.min_requests,
            ),
            judge: Arc::new(Judge::starting_at([Counts::default(); 2])),
            progress: Arc::new(Stepper::new(&config)),
            config: Arc::new(config),
            revision: revision.into(),
            rolled_back: None,
        }
    }

    /// Chooses the color for a request whose headers `headers` looks up (a `HeaderMap`, or
    /// the lean path's spans): one implementation of the canary rules for every way a request
    /// head is held.
    pub fn choose(&self, headers: &impl HeaderLookup) -> Choice {
        let config = &*self.config;
        let (stable, canary) = (config.stable, config.canary());
        let forced = |color| Choice {
            color,
            evidence: Evidence::Forced,
        };
        let weighted = |color| Choice {
            color,
            evidence: Evidence::Weighted,
        };
        if self.rolled_back.is_some() {
            return weighted(stable);
        }
        if let Some(rule) = &config.by_header {
            match header_decision(rule, headers) {
                Some(true) => return forced(canary),
                Some(false) => return forced(stable),
                None => {}
            }
        }
        if let Some(name) = &config.by_cookie {
            match cookie(headers, name) {
                Some(b"always") => return forced(canary),
                Some(b"never") => return forced(stable),
                _ => {}
            }
        }
        if config.weight == 0 {
            return weighted(stable);
        }
        if config.weight >= config.weight_total {
            return weighted(canary);
        }
        let slot = match self.sticky_key(headers) {
            Some(key) => (stable_hash(key) % u64::from(config.weight_total)) as u32,
            None => random_below(config.weight_total),
        };
        weighted(if slot < config.weight { canary } else { stable })
    }

    /// The canary's configured share of weighted traffic, 0 to 1 (0 once rolled back).
    pub fn canary_share(&self) -> f64 {
        self.weight_percent(self.config.canary()) / 100.0
    }

    /// The effective share of weighted traffic per color, in percent.
    pub fn weight_percent(&self, color: Color) -> f64 {
        let config = &*self.config;
        let canary = if self.rolled_back.is_some() {
            0.0
        } else {
            100.0 * f64::from(config.weight) / f64::from(config.weight_total)
        };
        if color == config.canary() {
            canary
        } else {
            100.0 - canary
        }
    }

    fn sticky_key<'h>(&self, headers: &'h impl HeaderLookup) -> Option<&'h [u8]> {
        match self.config.sticky.as_ref()? {
            Sticky::Cookie(name) => cookie(headers, name),
            Sticky::Header(name) => headers.first(name),
        }
        .filter(|v| !v.is_empty())
    }
}

/// What routing reads of a request's headers: a `HeaderMap` (the hyper path) or the spans of
/// a raw HTTP/1.1 head (the lean path).
pub trait HeaderLookup {
    /// The value of the first field named `name`.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
    /// The values of every `Cookie` field, in order.
    fn cookies(&self) -> impl Iterator<Item = &[u8]>;
}

impl HeaderLookup for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(COOKIE).iter().map(HeaderValue::as_bytes)
    }
}

/// NGINX's `canary-by-header`: `Some(true)` to canary, `Some(false)` to stable, `None` to fall
/// through to the next rule.
fn header_decision(rule: &HeaderRule, headers: &impl HeaderLookup) -> Option<bool> {
    let value = headers.first(&rule.name)?;
    if let Some(wanted) = &rule.value {
        return (value == wanted.as_bytes()).then_some(true);
    }
    if let Some(pattern) = &rule.pattern {
        let value = std::str::from_utf8(value).ok()?;
        return pattern.is_match(value).then_some(true);
    }
    match value {
        b"always" => Some(true),
        b"never" => Some(false),
        _ => None,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, without allocating.
fn cookie<'h>(headers: &'h impl HeaderLookup, name: &str) -> Option<&'h [u8]> {
    headers
        .cookies()
        .flat_map(|h| h.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name.as_bytes())?;
            let value = rest.trim_ascii_start().strip_prefix(b"=")?;
            Some(value.trim_ascii())
        })
}

/// FNV-1a, then a 64-bit finaliser so that nearby keys spread over all slots.
pub(crate) fn stable_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

thread_local! {
    /// A fast per-thread generator: routing needs an even split, not secrecy.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

fn random_below(n: u32) -> u32 {
    RNG.with(|rng| rng.borrow_mut().random_range(0..n))
}

#[cfg(test)]
mod tests;
