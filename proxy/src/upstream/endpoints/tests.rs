use super::*;
use crate::config::ServiceRef;

fn endpoints(n: usize) -> Endpoints {
    let upstreams = Upstreams::Static((0..n).map(addr).collect());
    Endpoints::new(&upstreams, Protocol::Http1, None)
}

fn addr(i: usize) -> UpstreamAddr {
    UpstreamAddr {
        authority: format!("127.0.0.{}:80", 11 + i).parse().unwrap(),
    }
}

fn served(set: &Endpoints, i: usize) -> Served {
    Served::start(&set.endpoints.load()[i])
}

/// How many endpoints there are, and how many of them are ejected now.
fn counts(set: &Endpoints) -> (usize, usize) {
    let endpoints = set.endpoints.load();
    let now = now();
    let ejected = endpoints
        .iter()
        .filter(|e| e.outlier.state(now) == State::Ejected)
        .count();
    (endpoints.len(), ejected)
}

fn retired(endpoint: &Endpoint) -> bool {
    endpoint
        .upstream
        .retired
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn pick_one(set: &Endpoints, tried: u64) -> usize {
    pick(&set.endpoints.load(), tried, now()).unwrap()
}

#[test]
fn requests_spread_evenly_over_equal_endpoints() {
    let set = endpoints(3);
    let mut counts = [0u32; 3];
    for _ in 0..3_000 {
        let i = pick_one(&set, 0);
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
    set.outcome(&slow, false, Some(Duration::from_millis(50)), true);
    drop(slow);
    let mut counts = [0u32; 3];
    for _ in 0..1_000 {
        counts[pick_one(&set, 0)] += 1;
    }
    // Endpoint 2 wins every draw it is in: two thirds of them.
    assert!(counts[2] > 600, "{counts:?}");
    drop(held);
}

#[test]
fn a_new_endpoint_gets_requests_at_once() {
    let set = endpoints(2);
    let old = served(&set, 0);
    set.outcome(&old, false, Some(Duration::from_millis(1)), true);
    drop(old);
    // Costs 1.1 ms against 0.1 ms: the new one is taken 11 times in 12.
    let new = (0..600).filter(|_| pick_one(&set, 0) == 1).count();
    assert!(new > 500, "{new}");
}

#[test]
fn tried_endpoints_are_skipped() {
    let set = endpoints(3);
    for _ in 0..100 {
        let i = pick_one(&set, 0b011);
        assert_eq!(i, 2);
    }
}

/// The outcome of a weighted request at endpoint `i`.
fn weighted(set: &Endpoints, i: usize, failed: bool) -> Attribution {
    set.outcome(&served(set, i), failed, None, true)
}

#[test]
fn a_pod_failing_alone_is_ejected_and_its_failures_are_its_own() {
    let set = endpoints(3);
    for i in [1, 2] {
        weighted(&set, i, false);
    }
    let settled: Vec<Attribution> = (0..outlier::EJECT_AFTER)
        .map(|_| weighted(&set, 0, true))
        .collect();
    let version = |n| Attribution { version: n, pod: 0 };
    // Two count against the version; the next two are held; the fifth ejects the pod and
    // settles the three as its own.
    assert_eq!(
        settled,
        [
            version(1),
            version(1),
            Attribution::default(),
            Attribution::default(),
            Attribution { version: 0, pod: 3 },
        ]
    );
    assert_eq!(counts(&set), (3, 1));
    for _ in 0..100 {
        assert_ne!(pick_one(&set, 0), 0);
    }
    let status = set.status();
    assert_eq!(status[0].state, State::Ejected);
    assert_eq!((status[0].requests, status[0].failures), (5, 5));
}

#[test]
fn held_failures_count_against_the_version_once_another_pod_fails() {
    let set = endpoints(3);
    for i in 0..3 {
        weighted(&set, i, false);
    }
    for _ in 0..2 {
        weighted(&set, 0, true);
    }
    assert_eq!(weighted(&set, 0, true), Attribution::default());
    assert_eq!(weighted(&set, 1, true), Attribution { version: 2, pod: 0 });
}

#[test]
fn a_version_failing_on_every_pod_is_never_excused() {
    let set = endpoints(3);
    for i in 0..3 {
        weighted(&set, i, false);
    }
    let mut version = 0;
    for round in 0..10 {
        for i in 0..3 {
            let settled = weighted(&set, i, true);
            assert_eq!(settled.pod, 0);
            version += settled.version;
            assert!(counts(&set).1 <= 1, "round {round}");
        }
    }
    assert_eq!(version, 30);
}

#[test]
fn the_last_endpoints_are_tried_even_when_ejected() {
    let set = endpoints(2);
    for _ in 0..outlier::EJECT_AFTER {
        weighted(&set, 0, true);
    }
    assert_eq!(counts(&set), (2, 1));
    assert_eq!(pick_one(&set, 0b10), 0);
}

#[test]
fn a_reload_keeps_endpoints_at_the_same_address() {
    let old = endpoints(2);
    let new = Endpoints::new(
        &Upstreams::Static((0..3).map(addr).collect()),
        Protocol::Http1,
        Some(&old),
    );
    let (old, new) = (old.endpoints.load(), new.endpoints.load());
    assert!(Arc::ptr_eq(&new[0], &old[0]));
    assert!(Arc::ptr_eq(&new[1], &old[1]));
    assert_eq!(new.len(), 3);
}

#[test]
fn a_service_starts_empty_and_follows_its_updates() {
    let service = Upstreams::Service(ServiceRef {
        namespace: "prod".into(),
        name: "green".into(),
        port: "http".into(),
    });
    let set = Endpoints::new(&service, Protocol::Http1, None);
    assert_eq!(pick(&set.endpoints.load(), 0, now()), None);
    set.update(&[addr(0), addr(1)]);
    let first = set.endpoints.load_full();
    set.update(&[addr(1), addr(2), addr(3)]);
    let second = set.endpoints.load_full();
    assert!(Arc::ptr_eq(&first[1], &second[0]), "kept with its state");
    assert!(retired(&first[0]));
    assert!(!retired(&second[0]));
    // Another Service (a new canary) starts empty, not with the previous one's pods.
    let other = Upstreams::Service(ServiceRef {
        namespace: "prod".into(),
        name: "green-v2".into(),
        port: "http".into(),
    });
    let next = Endpoints::new(&other, Protocol::Http1, Some(&set));
    assert_eq!(counts(&next), (0, 0));
}

#[test]
fn counts_from_every_thread_are_summed() {
    let set = endpoints(2);
    std::thread::scope(|s| {
        for t in 0..4 {
            let set = &set;
            s.spawn(move || {
                for i in 0..1_000 {
                    // One failure in ten, never five in a row: no ejection.
                    let failed = (i + t) % 10 == 0;
                    set.outcome(&served(set, 0), failed, None, false);
                }
            });
        }
    });
    let status = set.status();
    assert_eq!((status[0].requests, status[0].failures), (4_000, 400));
    assert_eq!(status[0].state, State::Ready);
    assert_eq!((status[1].requests, status[0].in_flight), (0, 0));
}

#[test]
fn requests_in_flight_are_summed_over_threads_wherever_they_end() {
    let set = endpoints(1);
    let out: Vec<Served> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3).map(|_| s.spawn(|| served(&set, 0))).collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(set.status()[0].in_flight, 3);
    drop(out);
    assert_eq!(set.status()[0].in_flight, 0);
}

/// Something that lives exactly as long as the endpoint at index `i`.
fn witness(set: &Endpoints, i: usize) -> std::sync::Weak<std::sync::atomic::AtomicBool> {
    Arc::downgrade(&set.endpoints.load()[i].upstream.retired)
}

#[test]
fn an_endpoint_that_leaves_lives_until_its_last_request_is_over() {
    let set = endpoints(2);
    let alive = witness(&set, 0);
    let here = served(&set, 0);
    let there = std::thread::scope(|s| s.spawn(|| served(&set, 0)).join().unwrap());
    set.update(&[addr(1)]);
    assert!(alive.upgrade().is_some(), "two requests still there");
    assert_eq!(here.endpoint().upstream.addr, addr(0));
    std::thread::scope(|s| {
        s.spawn(move || drop(there));
    });
    assert!(alive.upgrade().is_some(), "one request still there");
    set.outcome(&here, false, Some(Duration::from_millis(1)), true);
    drop(here);
    assert!(alive.upgrade().is_none(), "freed with its last request");
}

#[test]
fn an_endpoint_that_leaves_idle_is_freed_at_once() {
    let set = endpoints(2);
    let (gone, kept) = (witness(&set, 0), witness(&set, 1));
    drop(served(&set, 0));
    set.update(&[addr(1)]);
    assert!(gone.upgrade().is_none());
    assert!(kept.upgrade().is_some());
    drop(set);
    assert!(kept.upgrade().is_none());
}

#[test]
fn endpoints_that_come_and_go_under_load_are_freed_once_their_requests_are_over() {
    let set = endpoints(4);
    let witnesses: Vec<_> = (0..4).map(|i| witness(&set, i)).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut held = Vec::new();
                while !stop.load(Relaxed) {
                    let endpoints = set.endpoints.load();
                    if let Some(i) = pick(&endpoints, 0, now()) {
                        held.push(Served::start(&endpoints[i]));
                    }
                    drop(endpoints);
                    // Requests end in another order than they started.
                    if held.len() > 8 {
                        let last = held.swap_remove(0);
                        set.outcome(&last, false, Some(Duration::from_micros(50)), true);
                    }
                }
            });
        }
        for round in 0..2_000 {
            let first = round % 3;
            set.update(&[addr(first), addr(first + 1), addr(first + 2)]);
        }
        stop.store(true, Relaxed);
    });
    set.update(&[]);
    for (i, w) in witnesses.iter().enumerate() {
        assert!(w.upgrade().is_none(), "endpoint {i} outlived its requests");
    }
}
