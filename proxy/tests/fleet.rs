//! End-to-end: ten (or three) `canary-proxy --configmap --fleet` replicas on loopback, behind
//! one ConfigMap in the fake API server, whose EndpointSlices name the replicas and whose Lease
//! elects their judge. Each test has its own ten addresses (127.0.0.N1 and up), where the
//! replicas share one admin port as pods share a container port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use canary_proxy::rollback::sequential::Plan;
use canary_testkit::fake_apiserver::FakeApiServer;
use canary_testkit::proxy::{ProxyProcess, Source};
use canary_testkit::upstream::TestUpstream;
use serde_json::Value;
use tokio::task::JoinSet;

const NS: &str = "default";
const NAME: &str = "canary-proxy";
const PEERS: &str = "canary-proxy-peers";
const REPLICAS: usize = 10;

/// How long a Lease holds without renewal (the controller's `LEASE_SECONDS`), and the longest
/// a judge's death may leave the fleet without one, plus the election's random pause and
/// the replicas' first gather under the new judge.
const HANDOVER: Duration = Duration::from_secs(15 + 5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// The replicas, their upstreams and the API server they share.
struct Fleet {
    api: FakeApiServer,
    /// The replicas; `None` once a test has killed one.
    replicas: Vec<Option<ProxyProcess>>,
    /// Their admin addresses, as the EndpointSlice lists them.
    admins: Vec<SocketAddr>,
    /// Blue (stable) and green (the canary).
    upstreams: (TestUpstream, TestUpstream),
}

/// One admin port free on all `n` addresses from `127.0.0.first`.
fn admin_addresses(first: u8, n: usize) -> Vec<SocketAddr> {
    loop {
        let probe = std::net::TcpListener::bind((format!("127.0.0.{first}"), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addrs: Vec<SocketAddr> = (0..n as u8)
            .map(|i| SocketAddr::from(([127, 0, 0, first + i], port)))
            .collect();
        if addrs.iter().all(|a| std::net::TcpListener::bind(a).is_ok()) {
            return addrs;
        }
    }
}

/// Ten replicas from `127.0.0.first` on a ConfigMap of `keys`.
async fn fleet(first: u8, keys: &[(&str, &str)]) -> Fleet {
    fleet_of(first, REPLICAS, keys).await
}

/// `n` replicas from `127.0.0.first` on a ConfigMap of `keys`.
async fn fleet_of(first: u8, n: usize, keys: &[(&str, &str)]) -> Fleet {
    let (api, (blue, green)) = FakeApiServer::with_colors(NS, NAME, keys).await;
    let admins = admin_addresses(first, n);
    let ready: Vec<(SocketAddr, bool)> = admins.iter().map(|a| (*a, true)).collect();
    api.set_endpoints(NS, PEERS, "admin", &ready);
    let mut replicas = Vec::new();
    for admin in &admins {
        let args = vec![
            "--configmap".to_owned(),
            format!("{NS}/{NAME}"),
            "--fleet".to_owned(),
            format!("{NS}/{PEERS}"),
        ];
        let env = vec![(
            "KUBECONFIG".to_owned(),
            api.kubeconfig_path().display().to_string(),
        )];
        let data = SocketAddr::new(admin.ip(), 0);
        let proxy = ProxyProcess::start_at(
            bin(),
            Source::Args(args, env),
            (data, *admin),
            &["--workers", "1"],
        )
        .await
        .unwrap();
        replicas.push(Some(proxy));
    }
    let fleet = Fleet {
        api,
        replicas,
        admins,
        upstreams: (blue, green),
    };
    fleet.judge(Duration::from_secs(30)).await;
    fleet
}

impl Fleet {
    fn alive(&self) -> impl Iterator<Item = &ProxyProcess> {
        self.replicas.iter().flatten()
    }

    /// Waits until every live replica is ready and names the same judge, one of them; its
    /// index.
    async fn judge(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut judges = Vec::new();
            let mut named = Vec::new();
            for (i, replica) in self.replicas.iter().enumerate() {
                let Some(replica) = replica else { continue };
                let status = replica.status().await;
                if status["ready"] == true && status["fleet"]["is_judge"] == true {
                    judges.push(i);
                }
                named.push(status["fleet"]["judge"].clone());
            }
            if let [judge] = judges[..] {
                let status = self.replicas[judge].as_ref().unwrap().status().await;
                let identity = &status["fleet"]["identity"];
                if named.iter().all(|n| n == identity) {
                    return judge;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single judge that all replicas name: judges {judges:?}, named {named:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends up to `each` requests to every live replica at once, until `done` holds.
    async fn load(&self, each: usize, done: Arc<AtomicBool>) {
        let mut clients = JoinSet::new();
        for replica in self.alive() {
            let (client, done) = (replica.client(), done.clone());
            clients.spawn(async move {
                for _ in 0..each {
                    if done.load(Relaxed) {
                        return;
                    }
                    client.get("/", &[]).await.expect("the replica serves");
                }
            });
        }
        while let Some(finished) = clients.join_next().await {
            finished.unwrap();
        }
    }

    fn weight(&self) -> String {
        self.data("canary-weight")
    }

    /// Waits up to 10 s for an Event of `reason`: it is recorded after the write it reports.
    async fn wait_for_event(&self, reason: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.api.events().iter().any(|e| e.reason == reason) {
            assert!(Instant::now() < deadline, "no {reason} Event");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ConfigMap's `key`.
    fn data(&self, key: &str) -> String {
        self.api
            .configmap(NS, NAME)
            .and_then(|cm| cm.data.get(key).cloned())
            .unwrap_or_default()
    }

    /// The largest statistic among the replicas' own tests (each still computes it, and
    /// shows it, though in a fleet it may not act on it).
    async fn largest_local_statistic(&self) -> f64 {
        let mut largest: f64 = 0.0;
        for replica in self.alive() {
            let status = replica.status().await;
            if let Some(s) = status["rollback"]["test"]["statistic"].as_f64() {
                largest = largest.max(s);
            }
        }
        largest
    }
}

#[tokio::test]
async fn a_canary_failing_10_percent_spread_over_ten_replicas_is_rolled_back_by_the_fleet_judge() {
    let fleet = fleet(11, &[("canary-weight", "50")]).await;
    fleet.upstreams.1.set_error_rate(0.10);
    let boundary = Plan::new(0.05, 0.99, 20).boundary;
    let done = Arc::new(AtomicBool::new(false));
    let load = fleet.load(1500, done.clone());
    let watch = async {
        let mut largest: f64 = 0.0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while fleet.weight() != "0" {
            largest = largest.max(fleet.largest_local_statistic().await);
            assert!(Instant::now() < deadline, "never rolled back");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        done.store(true, Relaxed);
        largest
    };
    let ((), largest) = tokio::join!(load, watch);
    let cm = fleet.api.configmap(NS, NAME).unwrap();
    let reason = &cm.annotations["canary-proxy/rollback-reason"];
    eprintln!("{reason}; the largest replica's own statistic was {largest:.1} of {boundary:.1}");
    assert!(
        reason.starts_with("fleet judge on 10 replicas' evidence: canary failed"),
        "{reason}"
    );
    assert!(
        largest < boundary,
        "one replica alone could have decided ({largest})"
    );
    // Every replica converges through its watch.
    for replica in fleet.alive() {
        replica
            .wait_status(Duration::from_secs(10), |s| {
                s["rollback"]["rolled_back"] == true
            })
            .await
            .expect("rolled back everywhere");
    }
}

#[tokio::test]
async fn a_canary_failing_2_5_percent_is_not_rolled_back_by_the_fleet_over_15000_requests() {
    let fleet = fleet(21, &[("canary-weight", "50")]).await;
    fleet.upstreams.1.set_error_rate(0.025);
    fleet.load(1500, Arc::new(AtomicBool::new(false))).await;
    // The judge's last gathers take in the end of the load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.weight(), "50");
    let judge = fleet.judge(Duration::from_secs(5)).await;
    let status = fleet.replicas[judge].as_ref().unwrap().status().await;
    let f = &status["fleet"];
    eprintln!("the judge's view: {f}");
    assert_eq!(f["reporting"], 10, "{f}");
    assert_eq!(f["state"], "connected", "{f}");
    // Half of 15,000 requests were the canary's, all of them in the fleet's test.
    let judged = f["canary"]["requests"].as_u64().unwrap();
    assert!(judged > 7_000, "{f}");
    assert!(f["statistic"].as_f64().unwrap() < f["boundary"].as_f64().unwrap());
    for replica in fleet.alive() {
        assert_eq!(replica.status().await["rollback"]["rolled_back"], false);
    }
}

#[tokio::test]
async fn killing_the_judge_hands_over_within_the_lease_duration() {
    let mut fleet = fleet(31, &[("canary-weight", "10")]).await;
    let judge = fleet.judge(Duration::from_secs(5)).await;
    let old: Value =
        fleet.replicas[judge].as_ref().unwrap().status().await["fleet"]["identity"].clone();
    // SIGKILL: no release, the Lease must expire.
    fleet.replicas[judge].as_ref().unwrap().signal("KILL");
    fleet.replicas[judge] = None;
    let killed = Instant::now();
    let next = fleet.judge(HANDOVER).await;
    let took = killed.elapsed();
    let new = fleet.replicas[next].as_ref().unwrap().status().await["fleet"]["identity"].clone();
    eprintln!("{old} died; {new} judges {took:?} later");
    assert_ne!(old, new);
    assert_eq!(
        fleet.api.lease_holder(NS, PEERS).as_deref(),
        new.as_str(),
        "the Lease names the new judge"
    );
    // What docs/operating.md has an operator type, where kubectl is installed.
    let holder = "jsonpath={.spec.holderIdentity}";
    let api = &fleet.api;
    if let Some(out) = api
        .run_kubectl(&["get", "lease", PEERS, "-o", holder])
        .await
    {
        assert_eq!(Some(out.as_str()), new.as_str());
        let selector = format!("kubernetes.io/service-name={PEERS}");
        let slices = api
            .run_kubectl(&["get", "endpointslices", "-l", &selector])
            .await
            .unwrap();
        assert!(slices.contains(PEERS), "{slices}");
    }
}

#[tokio::test]
async fn a_replica_cut_from_its_peers_or_the_api_keeps_serving_and_its_fast_path() {
    let fleet = fleet(41, &[("canary-weight", "50")]).await;
    let judge = fleet.judge(Duration::from_secs(5)).await;
    let cut = (judge + 1) % REPLICAS;
    // The judge no longer reaches it: it is gone from the EndpointSlice.
    let others: Vec<(SocketAddr, bool)> = fleet
        .admins
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != cut)
        .map(|(_, a)| (*a, true))
        .collect();
    fleet.api.set_endpoints(NS, PEERS, "admin", &others);
    let replica = fleet.replicas[cut].as_ref().unwrap();
    replica
        .wait_status(Duration::from_secs(15), |s| {
            s["fleet"]["state"] == "cut off from its peers"
        })
        .await
        .expect("says it is cut off");
    // The gauge follows on the judging loop's next tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    while replica.metric("canary_proxy_fleet_isolated").await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "canary_proxy_fleet_isolated stays 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = replica.client();
    for _ in 0..20 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    }
    // A dead canary is still caught at once by the local streak rule.
    fleet.upstreams.1.set_status(500);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.weight() != "0" {
        client.get("/", &[]).await.unwrap();
        assert!(Instant::now() < deadline, "the streak rule did not trip");
    }
    let cm = fleet.api.configmap(NS, NAME).unwrap();
    let reason = &cm.annotations["canary-proxy/rollback-reason"];
    assert!(reason.contains("requests in a row"), "{reason}");

    // Cut from the API server too: it says so and still serves, from the last good state.
    fleet.api.stop().await;
    replica
        .wait_status(Duration::from_secs(15), |s| {
            s["fleet"]["state"] == "cut off from the API server"
        })
        .await
        .expect("says it is cut off from the API server");
    for _ in 0..20 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "blue"));
    }
}

#[tokio::test]
async fn three_replicas_climb_the_steps_on_the_fleets_evidence_to_promotion() {
    let fleet = fleet_of(
        51,
        3,
        &[
            ("canary-weight", "10"),
            ("rollback.max-error-rate", "20"),
            ("progressive.steps", "10,50,100"),
            ("progressive.step-min-duration", "500ms"),
            ("progressive.step-min-requests", "20"),
        ],
    )
    .await;
    let judge = fleet.judge(Duration::from_secs(5)).await;
    let follower = fleet.replicas[(judge + 1) % 3].as_ref().unwrap();
    let status = follower.status().await;
    assert_eq!(status["progressive"]["state"], "following", "{status:#}");
    load_until(&fleet, "stable", "green").await;
    assert_eq!(fleet.weight(), "0");
    fleet.wait_for_event("CanaryPromoted").await;
    let events = fleet.api.events();
    let reasons: Vec<_> = events.iter().map(|e| e.reason.as_str()).collect();
    let steps = reasons
        .iter()
        .filter(|r| **r == "CanaryStepPromoted")
        .count();
    assert_eq!(steps, 2, "{reasons:?}");
    let step = events
        .iter()
        .find(|e| {
            e.reason == "CanaryStepPromoted" && e.message.starts_with("canary weight 10 -> 50")
        })
        .expect("the first step's Event");
    assert!(
        step.message.contains("failure evidence"),
        "{}",
        step.message
    );
    // Every replica follows the ConfigMap: green is stable, with everything.
    for replica in fleet.alive() {
        replica
            .wait_status(Duration::from_secs(10), |s| {
                s["stable"] == "green" && s["progressive"]["state"] != "stepping"
            })
            .await
            .unwrap_or_else(|s| panic!("{s:#}"));
    }
}

/// Loads every live replica until the ConfigMap's `key` reads `value`, up to a minute.
async fn load_until(fleet: &Fleet, key: &str, value: &str) {
    let done = Arc::new(AtomicBool::new(false));
    let load = fleet.load(50_000, done.clone());
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while fleet.data(key) != value {
            assert!(
                Instant::now() < deadline,
                "{key} never {value}; canary-weight {}",
                fleet.weight()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done.store(true, Relaxed);
    };
    tokio::join!(load, watch);
}

#[tokio::test]
async fn a_judge_killed_mid_step_is_succeeded_at_the_configmaps_step() {
    let mut fleet = fleet_of(
        61,
        3,
        &[
            ("canary-weight", "10"),
            ("rollback.max-error-rate", "20"),
            ("progressive.steps", "10,50,100"),
            // Longer than the load takes to stop once the ConfigMap says 50.
            ("progressive.step-min-duration", "2s"),
            ("progressive.step-min-requests", "20"),
        ],
    )
    .await;
    let judge = fleet.judge(Duration::from_secs(5)).await;
    load_until(&fleet, "canary-weight", "50").await;
    fleet.replicas[judge].as_ref().unwrap().signal("KILL");
    fleet.replicas[judge] = None;
    let next = fleet.judge(HANDOVER).await;
    let status = fleet.replicas[next]
        .as_ref()
        .unwrap()
        .wait_status(Duration::from_secs(5), |s| {
            s["progressive"]["state"] == "stepping"
        })
        .await
        .unwrap_or_else(|s| panic!("{s:#}"));
    assert_eq!(status["progressive"]["current_step"], 50, "{status:#}");
    assert_eq!(fleet.weight(), "50");
    load_until(&fleet, "stable", "green").await;
    fleet.wait_for_event("CanaryPromoted").await;
    let events = fleet.api.events();
    let messages: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
    for step in ["canary weight 10 -> 50", "canary weight 50 -> 100"] {
        let n = messages.iter().filter(|m| m.starts_with(step)).count();
        assert_eq!(n, 1, "{step}: {messages:#?}");
    }
}
