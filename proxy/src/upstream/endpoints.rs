//! A color's endpoints: each request goes to one of them, chosen by the balancer among those
//! outlier ejection leaves in; a request that could not connect to one is tried on another
//! of the same color. Each endpoint has its own keep-alive pools (per thread, keyed by its
//! address), its load, its outlier state and its counters for `/status`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::balance::{Load, prefer_first, two_of};
use super::outlier::{self, Outlier, State};
use super::{Failure, Fault, Lease, Upstream};
use crate::body::RequestBody;
use crate::config::{Protocol, Timeouts, Upstreams};
use crate::metrics::ErrorKind;

/// Endpoints of one color a request may be tried on when it could not connect.
const CONNECT_ATTEMPTS: usize = 3;

/// One endpoint (a pod, or one address of a static list).
#[derive(Debug)]
pub struct Endpoint {
    /// Its address and connection pools.
    pub upstream: Upstream,
    /// What the balancer reads.
    load: Load,
    /// Its failures in a row and ejection.
    outlier: Outlier,
    /// Outcomes recorded, for `/status`.
    requests: AtomicU64,
    /// Failed outcomes recorded, for `/status`.
    failures: AtomicU64,
}

impl Endpoint {
    fn new(upstream: Upstream) -> Endpoint {
        Endpoint {
            upstream,
            load: Load::default(),
            outlier: Outlier::default(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

/// A request on its way to an endpoint: counted in flight there until dropped, at the end of
/// its exchange.
#[derive(Debug)]
pub struct Served(Arc<Endpoint>);

impl Served {
    fn start(endpoint: &Arc<Endpoint>) -> Served {
        endpoint.load.start();
        Served(endpoint.clone())
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.0.load.finish();
    }
}

/// A request that got no response from any endpoint it was tried on.
pub struct Missed {
    /// Why the last attempt failed.
    pub failure: Failure,
    /// The endpoint of the last attempt.
    pub served: Served,
}

/// One endpoint as `/status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointStatus {
    /// `host:port`.
    pub address: String,
    /// `ready`, `ejected` or `probing`.
    pub state: State,
    /// Requests in flight.
    pub in_flight: u64,
    /// Outcomes recorded.
    pub requests: u64,
    /// Failed outcomes recorded.
    pub failures: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Ejections so far.
    pub ejections: u64,
}

/// A color's endpoints, fixed for the life of one configuration.
#[derive(Debug)]
pub struct Endpoints {
    /// How to talk to them.
    pub protocol: Protocol,
    /// The endpoints, in the configured order; never empty.
    endpoints: Vec<Arc<Endpoint>>,
}

impl Endpoints {
    /// The endpoints of `upstreams`, spoken to with `protocol`. An endpoint of `previous` at
    /// the same address is kept with its pools, load and outlier state.
    pub fn new(
        upstreams: &Upstreams,
        protocol: Protocol,
        previous: Option<&Endpoints>,
    ) -> Endpoints {
        let kept = |addr| {
            previous
                .filter(|p| p.protocol == protocol)?
                .endpoints
                .iter()
                .find(|e| &e.upstream.addr == addr)
                .cloned()
        };
        let endpoints = upstreams
            .endpoints
            .iter()
            .map(|addr| {
                kept(addr).unwrap_or_else(|| {
                    Arc::new(Endpoint::new(Upstream::new(addr.clone(), protocol)))
                })
            })
            .collect();
        Endpoints {
            protocol,
            endpoints,
        }
    }

    /// Sends `req` to an endpoint and waits for the response headers. A request that could not
    /// connect is tried on up to [`CONNECT_ATTEMPTS`] endpoints in all.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        timeouts: Timeouts,
    ) -> Result<(Response<Incoming>, Lease, Served), Missed> {
        let mut tried: u64 = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (index, endpoint) = self.pick(tried, now());
            tried |= 1 << index;
            let served = Served::start(endpoint);
            match endpoint.upstream.send(req, timeouts).await {
                Ok((response, lease)) => return Ok((response, lease, served)),
                Err(Failure {
                    fault: Fault::Upstream(kind @ (ErrorKind::Connect | ErrorKind::Timeout)),
                    error,
                    request: Some(unsent),
                }) if attempt < CONNECT_ATTEMPTS.min(self.endpoints.len()) => {
                    tracing::debug!(endpoint = %endpoint.upstream.addr, %error, ?kind, "could not connect, trying another endpoint");
                    self.record(&served, true);
                    req = unsent;
                }
                Err(failure) => return Err(Missed { failure, served }),
            }
        }
    }

    /// The endpoint for the next request: of two drawn at random among those available and not in `tried` (a bit per index); with none available, the cheapest not
    /// tried, so that a color whose every endpoint is out still gets its requests tried.
    fn pick(&self, tried: u64, now: u64) -> (usize, &Arc<Endpoint>) {
        let n = self.endpoints.len();
        let usable = |i: usize| {
            let e = &self.endpoints[i];
            tried & (1 << i) == 0 && e.outlier.available(now, e.load.in_flight())
        };
        if n == 1 {
            return (0, &self.endpoints[0]);
        }
        let (a, b) = two_of(n, random());
        let chosen = match (usable(a), usable(b)) {
            (true, true) => {
                let (cost_a, cost_b) = (
                    self.endpoints[a].load.cost(now),
                    self.endpoints[b].load.cost(now),
                );
                Some(if prefer_first(cost_a, cost_b, random()) {
                    a
                } else {
                    b
                })
            }
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => None,
        };
        let index = chosen
            .or_else(|| self.cheapest(usable, now))
            .or_else(|| self.cheapest(|i| tried & (1 << i) == 0, now))
            .unwrap_or(0);
        (index, &self.endpoints[index])
    }

    fn cheapest(&self, allowed: impl Fn(usize) -> bool, now: u64) -> Option<usize> {
        (0..self.endpoints.len())
            .filter(|&i| allowed(i))
            .min_by(|&a, &b| {
                let cost = |i: usize| self.endpoints[i].load.cost(now);
                cost(a).total_cmp(&cost(b))
            })
    }

    /// Takes in the outcome of a request `served`: its latency (time to the response headers,
    /// if there was a response) for the balancer, and its success for outlier ejection.
    /// Returns whether a failure is the endpoint's own fault rather than its version's (see
    /// [`outlier`]).
    pub fn outcome(&self, served: &Served, failed: bool, latency: Option<Duration>) -> bool {
        let now = now();
        if let Some(latency) = latency {
            served.0.load.observe(latency.as_nanos() as u64, now);
        }
        self.record(served, failed)
    }

    fn record(&self, served: &Served, failed: bool) -> bool {
        let endpoint = &served.0;
        endpoint.requests.fetch_add(1, Relaxed);
        let streak = endpoint.outlier.record(failed);
        if !failed {
            return false;
        }
        endpoint.failures.fetch_add(1, Relaxed);
        let now = now();
        let n = self.endpoints.len();
        if endpoint.outlier.due(now) {
            let ejected = self
                .endpoints
                .iter()
                .filter(|e| e.outlier.state(now) == State::Ejected)
                .count();
            if outlier::may_eject(n, ejected) {
                tracing::info!(endpoint = %endpoint.upstream.addr, failures = streak, "endpoint ejected");
                endpoint.outlier.eject(now);
            }
        }
        let well = self
            .endpoints
            .iter()
            .filter(|e| e.outlier.streak() == 0 && e.requests.load(Relaxed) > 0)
            .count();
        outlier::excused(streak, n, well)
    }

    /// Each endpoint's state, in the configured order.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = now();
        self.endpoints
            .iter()
            .map(|e| EndpointStatus {
                address: e.upstream.addr.to_string(),
                state: e.outlier.state(now),
                in_flight: e.load.in_flight(),
                requests: e.requests.load(Relaxed),
                failures: e.failures.load(Relaxed),
                consecutive_failures: e.outlier.streak(),
                ejections: e.outlier.ejected_total(),
            })
            .collect()
    }

    /// How many endpoints there are, and how many of them are ejected now.
    pub fn counts(&self) -> (usize, usize) {
        let now = now();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.outlier.state(now) == State::Ejected)
            .count();
        (self.endpoints.len(), ejected)
    }
}

/// Nanoseconds on a process-wide monotonic clock.
fn now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

thread_local! {
    /// A fast per-thread generator: the balancer needs spread, not secrecy.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

fn random() -> u64 {
    RNG.with(|rng| rng.borrow_mut().random())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamAddr;

    fn endpoints(n: usize) -> Endpoints {
        let upstreams = Upstreams {
            endpoints: (0..n)
                .map(|i| UpstreamAddr {
                    authority: format!("127.0.0.{}:80", 11 + i).parse().unwrap(),
                })
                .collect(),
        };
        Endpoints::new(&upstreams, Protocol::Http1, None)
    }

    fn served(set: &Endpoints, i: usize) -> Served {
        Served::start(&set.endpoints[i])
    }

    #[test]
    fn requests_spread_evenly_over_equal_endpoints() {
        let set = endpoints(3);
        let mut counts = [0u32; 3];
        for _ in 0..3_000 {
            let (i, _) = set.pick(0, now());
            counts[i] += 1;
        }
        // 1,000 expected each; binomial σ ≈ 26, 5 σ allowed.
        for c in counts {
            assert!((870..1_130).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_busy_or_slow_endpoint_gets_fewer_requests() {
        let set = endpoints(3);
        let held: Vec<_> = (0..20).map(|_| served(&set, 0)).collect();
        let slow = served(&set, 1);
        set.outcome(&slow, false, Some(Duration::from_millis(50)));
        drop(slow);
        let mut counts = [0u32; 3];
        for _ in 0..1_000 {
            counts[set.pick(0, now()).0] += 1;
        }
        // Endpoint 2 wins every draw it is in: two thirds of them.
        assert!(counts[2] > 600, "{counts:?}");
        drop(held);
    }

    #[test]
    fn a_new_endpoint_gets_requests_at_once() {
        let set = endpoints(2);
        let old = served(&set, 0);
        set.outcome(&old, false, Some(Duration::from_millis(1)));
        drop(old);
        // Costs 1.1 ms against 0.1 ms: the new one is taken 11 times in 12.
        let new = (0..600).filter(|_| set.pick(0, now()).0 == 1).count();
        assert!(new > 500, "{new}");
    }

    #[test]
    fn tried_endpoints_are_skipped() {
        let set = endpoints(3);
        for _ in 0..100 {
            let (i, _) = set.pick(0b011, now());
            assert_eq!(i, 2);
        }
    }

    #[test]
    fn a_pod_failing_alone_is_ejected_and_excused() {
        let set = endpoints(3);
        for i in [1, 2] {
            set.record(&served(&set, i), false);
        }
        let excused: Vec<bool> = (0..outlier::EJECT_AFTER)
            .map(|_| set.record(&served(&set, 0), true))
            .collect();
        assert_eq!(excused, [false, false, true, true, true]);
        assert_eq!(set.counts(), (3, 1));
        for _ in 0..100 {
            assert_ne!(set.pick(0, now()).0, 0);
        }
        let status = set.status();
        assert_eq!(status[0].state, State::Ejected);
        assert_eq!((status[0].requests, status[0].failures), (5, 5));
    }

    #[test]
    fn a_version_failing_on_every_pod_is_not_excused() {
        let set = endpoints(3);
        let mut excused = 0;
        for round in 0..10 {
            for i in 0..3 {
                excused += usize::from(set.record(&served(&set, i), true));
                assert!(set.counts().1 <= 1, "round {round}");
            }
        }
        assert_eq!(excused, 0);
    }

    #[test]
    fn the_last_endpoints_are_tried_even_when_ejected() {
        let set = endpoints(2);
        for _ in 0..outlier::EJECT_AFTER {
            set.record(&served(&set, 0), true);
        }
        assert_eq!(set.counts(), (2, 1));
        assert_eq!(set.pick(0b10, now()).0, 0);
    }

    #[test]
    fn a_reload_keeps_endpoints_at_the_same_address() {
        let old = endpoints(2);
        let three = endpoints(3);
        let new = Endpoints::new(
            &Upstreams {
                endpoints: three
                    .endpoints
                    .iter()
                    .map(|e| e.upstream.addr.clone())
                    .collect(),
            },
            Protocol::Http1,
            Some(&old),
        );
        assert!(Arc::ptr_eq(&new.endpoints[0], &old.endpoints[0]));
        assert!(Arc::ptr_eq(&new.endpoints[1], &old.endpoints[1]));
        assert!(!Arc::ptr_eq(&new.endpoints[2], &three.endpoints[2]));
    }
}
