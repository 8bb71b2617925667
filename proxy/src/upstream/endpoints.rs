//! A color's endpoints: each request goes to one of them, chosen by the balancer among those
//! outlier ejection leaves in; a request that could not connect to one is tried on another
//! of the same color. Each endpoint has its own keep-alive pools (per thread, keyed by its
//! address), its load, its outlier state and its counters for `/status`.
//!
//! A static list is fixed for the life of its configuration. A Service's endpoints arrive as
//! data ([`Endpoints::update`]) and are swapped in as one snapshot that the request path reads
//! without a lock; an endpoint that leaves gets no new request and its idle connections are
//! closed.
//!
//! What a response writes is the calling thread's own (see [`crate::shard`]): each endpoint
//! keeps its requests in flight, its counters and the balancer's latency estimate per thread,
//! and a request holds its endpoint by the same per-thread count, not by a reference count
//! every worker writes (see [`anchor`]). The outlier state and the held failures are shared,
//! and written only when they change: a healthy endpoint's responses only read them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use self::anchor::{Anchor, Ticket};
use super::balance::{Load, prefer_first, two_of};
use super::outlier::{self, Outlier, State};
use super::{Failure, Fault, Lease, Upstream};
use crate::body::RequestBody;
use crate::config::{MAX_ENDPOINTS, Protocol, Timeouts, UpstreamAddr, Upstreams};
use crate::metrics::ErrorKind;
use crate::shard::{self, SHARDS};

mod anchor;

/// Endpoints of one color a request may be tried on when it could not connect.
pub const CONNECT_ATTEMPTS: usize = 3;

/// One endpoint (a pod, or one address of a static list).
#[derive(Debug)]
pub struct Endpoint {
    /// Its address and connection pools.
    pub upstream: Upstream,
    /// Its failures in a row and ejection.
    outlier: Outlier,
    /// What each shard's threads write per request, summed when read.
    slots: [Slot; SHARDS],
    /// Requests still in flight once no snapshot lists it, plus [`anchor::BIAS`] until its
    /// shards are closed (see [`anchor`]).
    orphaned: AtomicU64,
}

/// One shard's share of an endpoint, on cache lines no other shard writes.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Slot {
    /// Requests started by this shard's threads and not yet over: what its balancer weighs,
    /// and what keeps the endpoint alive (see [`anchor`]).
    in_flight: AtomicU64,
    /// Outcomes recorded, for `/status`.
    requests: AtomicU64,
    /// Failed outcomes recorded, for `/status`.
    failures: AtomicU64,
    /// The latency as this shard's threads see it.
    load: Load,
}

impl Endpoint {
    fn new(upstream: Upstream) -> Endpoint {
        Endpoint {
            upstream,
            outlier: Outlier::default(),
            slots: Default::default(),
            orphaned: AtomicU64::new(anchor::BIAS),
        }
    }

    /// The calling thread's slot.
    fn slot(&self) -> &Slot {
        &self.slots[shard::index()]
    }

    /// What sending one more request costs at `now`, as the threads of `shard` see it.
    fn cost(&self, shard: usize, now: u64) -> f64 {
        let slot = &self.slots[shard];
        slot.load.cost(now, slot.in_flight.load(Relaxed))
    }

    /// Requests in flight, every thread's.
    fn in_flight(&self) -> u64 {
        self.sum(|slot| &slot.in_flight)
    }

    fn sum(&self, counter: impl Fn(&Slot) -> &AtomicU64) -> u64 {
        self.slots.iter().map(|s| counter(s).load(Relaxed)).sum()
    }
}

/// A request on its way to an endpoint: counted in flight there until dropped, at the end of
/// its exchange.
#[derive(Debug)]
pub struct Served(Ticket);

impl Served {
    fn start(endpoint: &Anchor) -> Served {
        Served(endpoint.start())
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.0.endpoint()
    }
}

/// A request that got no response from any endpoint it was tried on.
pub struct Missed {
    /// Why the last attempt failed.
    pub failure: Failure,
    /// The endpoint of the last attempt; `None` when the color has no endpoint at all.
    pub served: Option<Served>,
}

/// Weighted failures settled by one outcome: to be recorded now as rollback evidence against
/// the version, or as the pod's fault (counted, not evidence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// Failures that are evidence against the version.
    pub version: u64,
    /// Failures that were one pod's own.
    pub pod: u64,
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

/// A color's endpoints.
#[derive(Debug)]
pub struct Endpoints {
    /// How to talk to them.
    pub protocol: Protocol,
    /// The endpoints: in the configured order for a list, by address for a Service.
    endpoints: ArcSwap<Vec<Arc<Anchor>>>,
    /// How many there are, for the request path's questions that need no more than that.
    count: AtomicUsize,
    /// Weighted failures excused as a pod's own while the pod is not yet ejected: not yet
    /// evidence either way. Written on failures only.
    held: AtomicU64,
}

impl Endpoints {
    /// The endpoints of `upstreams`, spoken to with `protocol`: a static list's addresses, or
    /// none yet for a Service (another Service's pods, or the same pods spoken to otherwise,
    /// are no stand-in: its own arrive with the first [`update`](Endpoints::update)). An
    /// endpoint of `previous` at the same address is kept with its pools, load and outlier
    /// state.
    pub fn new(
        upstreams: &Upstreams,
        protocol: Protocol,
        previous: Option<&Endpoints>,
    ) -> Endpoints {
        let previous = previous.filter(|p| p.protocol == protocol);
        let set = Endpoints {
            protocol,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            count: AtomicUsize::new(0),
            held: AtomicU64::new(0),
        };
        if let Upstreams::Static(addrs) = upstreams {
            let built = set.build(addrs, previous);
            set.count.store(built.len(), Relaxed);
            set.endpoints.store(Arc::new(built));
        }
        set
    }

    /// Makes `addrs` the endpoints (the first [`MAX_ENDPOINTS`]): those already here are kept
    /// with their state, new ones take requests from now on, and those gone get no new request
    /// and have their idle connections closed.
    pub fn update(&self, addrs: &[UpstreamAddr]) {
        let addrs = &addrs[..addrs.len().min(MAX_ENDPOINTS)];
        let fresh = self.build(addrs, Some(self));
        self.count.store(fresh.len(), Relaxed);
        let old = self.endpoints.swap(Arc::new(fresh));
        for gone in old.iter().filter(|e| !addrs.contains(&e.upstream.addr)) {
            gone.upstream.retire();
        }
    }

    /// Endpoints at `addrs`, reusing those of `previous` at the same addresses.
    fn build(&self, addrs: &[UpstreamAddr], previous: Option<&Endpoints>) -> Vec<Arc<Anchor>> {
        let previous = previous.map(|p| p.endpoints.load_full());
        addrs
            .iter()
            .map(|addr| {
                previous
                    .as_ref()
                    .and_then(|p| p.iter().find(|e| &e.upstream.addr == addr).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(Anchor::new(Endpoint::new(Upstream::new(
                            addr.clone(),
                            self.protocol,
                        ))))
                    })
            })
            .collect()
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
            let (served, n) = {
                let endpoints = self.endpoints.load();
                // A lone endpoint is chosen without the clock: there is nothing to compare.
                let at = if endpoints.len() > 1 { now() } else { 0 };
                let Some(index) = pick(&endpoints, tried, at) else {
                    return Err(Missed {
                        failure: Failure {
                            fault: Fault::Upstream(ErrorKind::Connect),
                            error: "the upstream has no ready endpoint".into(),
                            request: Some(req),
                        },
                        served: None,
                    });
                };
                tried |= 1 << index;
                (Served::start(&endpoints[index]), endpoints.len())
            };
            match served.endpoint().upstream.send(req, timeouts).await {
                Ok((response, lease)) => return Ok((response, lease, served)),
                Err(Failure {
                    fault: Fault::Upstream(kind @ (ErrorKind::Connect | ErrorKind::Timeout)),
                    error,
                    request: Some(unsent),
                }) if attempt < CONNECT_ATTEMPTS.min(n) => {
                    tracing::debug!(endpoint = %served.endpoint().upstream.addr, %error, ?kind, "could not connect, trying another endpoint");
                    self.record(&served, true);
                    req = unsent;
                }
                Err(failure) => {
                    return Err(Missed {
                        failure,
                        served: Some(served),
                    });
                }
            }
        }
    }

    /// Starts a request at an endpoint chosen as [`send`](Endpoints::send) chooses, among those
    /// not in `tried` (a bit per index, updated); with it, how many endpoints there are. `None`
    /// when there is none left to try. For a transport that dials the endpoint itself (the lean
    /// HTTP/1.1 path), which then owes [`connect_failed`](Endpoints::connect_failed) or
    /// [`outcome`](Endpoints::outcome).
    pub fn start(&self, tried: &mut u64) -> Option<(Served, usize)> {
        let endpoints = self.endpoints.load();
        let at = if endpoints.len() > 1 { now() } else { 0 };
        let index = pick(&endpoints, *tried, at)?;
        *tried |= 1 << index;
        Some((Served::start(&endpoints[index]), endpoints.len()))
    }

    /// Counts a connect that failed at `served`, before another endpoint is tried, as
    /// [`send`](Endpoints::send) does.
    pub fn connect_failed(&self, served: &Served) {
        self.record(served, true);
    }

    /// Takes in the outcome of a request `served`: its latency (time to the response headers,
    /// if there was a response) for the balancer, and its success for outlier ejection. For a
    /// failure of a `weighted` request, says how many weighted failures are settled now, as
    /// the version's or as the pod's (see [`outlier`]): one the pod may be to blame for is held
    /// until its pod is ejected (the pod's) or a failure elsewhere shows the fault is wider
    /// (the version's, with every one held).
    pub fn outcome(
        &self,
        served: &Served,
        failed: bool,
        latency: Option<Duration>,
        weighted: bool,
    ) -> Attribution {
        // Only the balancer reads the estimate, and it has nothing to weigh for a lone endpoint;
        // one that gains a peer starts from its next sample (a slow one is taken at once).
        if let Some(latency) = latency
            && self.count.load(Relaxed) > 1
        {
            (served.endpoint().slot().load).observe(latency.as_nanos() as u64, now());
        }
        let (excused, ejected) = self.record(served, failed);
        if !failed {
            return Attribution::default();
        }
        let current = u64::from(weighted);
        match (excused, ejected) {
            (true, false) => {
                if weighted {
                    self.held.fetch_add(1, Relaxed);
                }
                Attribution::default()
            }
            (true, true) => Attribution {
                version: 0,
                pod: self.release_held() + current,
            },
            (false, _) => Attribution {
                version: self.release_held() + current,
                pod: 0,
            },
        }
    }

    /// Takes the held failures, writing the shared word only when there are some: a version
    /// failing everywhere holds none, and its failures should not all write it.
    fn release_held(&self) -> u64 {
        if self.held.load(Relaxed) == 0 {
            return 0;
        }
        self.held.swap(0, Relaxed)
    }

    /// Counts one outcome of `served` for ejection; for a failure, returns whether it is
    /// excused as the endpoint's own and whether it ejected the endpoint.
    fn record(&self, served: &Served, failed: bool) -> (bool, bool) {
        let endpoint = served.endpoint();
        let slot = endpoint.slot();
        slot.requests.fetch_add(1, Relaxed);
        let streak = endpoint.outlier.record(failed);
        if !failed {
            return (false, false);
        }
        slot.failures.fetch_add(1, Relaxed);
        let now = now();
        let endpoints = self.endpoints.load();
        let n = endpoints.len();
        let mut ejected = false;
        if endpoint.outlier.due(now) {
            let out = endpoints
                .iter()
                .filter(|e| e.outlier.state(now) == State::Ejected)
                .count();
            if outlier::may_eject(n, out) {
                tracing::info!(endpoint = %endpoint.upstream.addr, failures = streak, "endpoint ejected");
                endpoint.outlier.eject(now);
                ejected = true;
            }
        }
        let well = endpoints.iter().filter(|e| e.outlier.well()).count();
        (outlier::excused(streak, n, well), ejected)
    }

    /// Starts a request at the first endpoint, without the balancer's choice or a connection:
    /// what the accounting benchmark feeds [`outcome`](Endpoints::outcome) with.
    pub fn serve_first(&self) -> Option<Served> {
        self.endpoints.load().first().map(|e| Served::start(e))
    }

    /// Each endpoint's state, in the configured order.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = now();
        self.endpoints
            .load()
            .iter()
            .map(|e| EndpointStatus {
                address: e.upstream.addr.to_string(),
                state: e.outlier.state(now),
                in_flight: e.in_flight(),
                requests: e.sum(|slot| &slot.requests),
                failures: e.sum(|slot| &slot.failures),
                consecutive_failures: e.outlier.streak(),
                ejections: e.outlier.ejected_total(),
            })
            .collect()
    }

    /// Whether there is no endpoint at all (a Service whose endpoints have not arrived, or
    /// that has none ready).
    pub fn is_empty(&self) -> bool {
        self.endpoints.load().is_empty()
    }
}

/// The endpoint for the next request: of two drawn at random among those available and not in
/// `tried` (a bit per index), the cheaper one more often the cheaper it is (see
/// [`prefer_first`]); with none available, the cheapest not tried, so that a color whose every
/// endpoint is out still gets its requests tried. `None` when there is no endpoint to try.
fn pick(endpoints: &[Arc<Anchor>], tried: u64, now: u64) -> Option<usize> {
    let n = endpoints.len();
    let untried = |i: usize| tried & (1 << i) == 0;
    let usable = |i: usize| {
        let e = &endpoints[i];
        untried(i) && e.outlier.available(now, || e.in_flight())
    };
    if n < 2 {
        return (n == 1 && untried(0)).then_some(0);
    }
    // This thread's view of the loads (see `balance`): it reads no line another worker writes.
    let shard = shard::index();
    let (a, b) = two_of(n, random());
    let chosen = match (usable(a), usable(b)) {
        (true, true) => {
            let (cost_a, cost_b) = (endpoints[a].cost(shard, now), endpoints[b].cost(shard, now));
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
    chosen
        .or_else(|| cheapest(endpoints, usable, shard, now))
        .or_else(|| cheapest(endpoints, untried, shard, now))
}

fn cheapest(
    endpoints: &[Arc<Anchor>],
    allowed: impl Fn(usize) -> bool,
    shard: usize,
    now: u64,
) -> Option<usize> {
    (0..endpoints.len())
        .filter(|&i| allowed(i))
        .min_by(|&a, &b| {
            let cost = |i: usize| endpoints[i].cost(shard, now);
            cost(a).total_cmp(&cost(b))
        })
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
mod tests;
