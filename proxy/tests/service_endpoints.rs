//! End-to-end: colors whose upstreams are Kubernetes Services (`svc:NAME.NAMESPACE:PORT`),
//! their pods on loopback addresses and their EndpointSlices in the fake API server. Requests
//! spread over the ready pods, follow a scale-up at once, and leave a terminating pod without
//! a failed request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use canary_testkit::fake_apiserver::{FakeApiServer, Pod};
use canary_testkit::proxy::{ProxyProcess, Source};
use canary_testkit::upstream::{TestUpstream, assert_even_spread};

const NS: &str = "default";
const NAME: &str = "canary-proxy";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// `n` pods of `color` at 127.0.0.`first`, 127.0.0.`first + 1`, ... all on one port, as a
/// Service's pods share their target port.
async fn pods(color: &'static str, first: u8, n: u8) -> Vec<TestUpstream> {
    let one = TestUpstream::start_at(([127, 0, 0, first], 0).into(), color).await;
    let port = one.addr.port();
    let mut pods = vec![one];
    for i in 1..n {
        pods.push(TestUpstream::start_at(([127, 0, 0, first + i], port).into(), color).await);
    }
    pods
}

/// Each pod's address with its state.
fn states(pods: &[TestUpstream], state: impl Fn(usize) -> Pod) -> Vec<(SocketAddr, Pod)> {
    pods.iter()
        .enumerate()
        .map(|(i, p)| (p.addr, state(i)))
        .collect()
}

/// Established TCP connections whose far end is `addr` (an IPv4 pod): the proxy's connections to
/// it, read from `/proc/net/tcp`.
fn connections_to(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        return 0;
    };
    let [a, b, c, d] = v4.ip().octets();
    // The kernel writes the address as a little-endian word and the port big-endian.
    let remote = format!("{d:02X}{c:02X}{b:02X}{a:02X}:{:04X}", v4.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// The green endpoints the proxy has, from `/status`.
async fn green_endpoints(proxy: &ProxyProcess) -> usize {
    proxy.status().await["colors"]["green"]["endpoints"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn a_service_upstream_follows_scale_up_and_termination() {
    let blue = pods("blue", 31, 3).await;
    let mut green = pods("green", 41, 5).await;
    let api = FakeApiServer::start().await;
    api.create_configmap(
        NS,
        NAME,
        &[
            ("blue.upstream", "svc:blue.default:http"),
            ("green.upstream", "svc:green.default:http"),
            ("canary-weight", "50"),
        ],
    );
    let args = vec!["--configmap".to_owned(), format!("{NS}/{NAME}")];
    let env = vec![(
        "KUBECONFIG".to_owned(),
        api.kubeconfig_path().display().to_string(),
    )];
    let proxy = ProxyProcess::start_with(bin(), Source::Args(args, env), &[])
        .await
        .unwrap();
    // The configuration is there, the stable color's pods are not known yet: not ready.
    proxy
        .wait_status(Duration::from_secs(10), |s| s["revision"].is_string())
        .await
        .expect("the configuration applied");
    let (code, body) = proxy.admin_get("/readyz").await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (503, "the stable color has no ready endpoint yet\n")
    );
    api.set_pods(NS, "blue", "http", &states(&blue, |_| Pod::Ready));
    proxy
        .wait_status(Duration::from_secs(10), |s| s["ready"] == true)
        .await
        .expect("ready once blue's pods are known");
    // Green's pods are not known yet: its share goes to blue, and that is no rollback.
    let client = proxy.client();
    for _ in 0..100 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "blue"));
    }
    assert_eq!(proxy.status().await["rollback"]["rolled_back"], false);
    // Five green pods exist; two are not ready yet.
    let scaled = |ready: usize| {
        states(
            &green,
            move |i| if i < ready { Pod::Ready } else { Pod::NotReady },
        )
    };
    api.set_pods(NS, "green", "http", &scaled(3));
    proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["colors"]["green"]["endpoints"].as_array().map(Vec::len) == Some(3)
                && s["colors"]["blue"]["endpoints"].as_array().map(Vec::len) == Some(3)
        })
        .await
        .expect("three endpoints each");

    // 3,000 requests over 8 keep-alive connections: each color's three pods share evenly.
    let before: Vec<u64> = blue
        .iter()
        .chain(&green)
        .map(TestUpstream::served)
        .collect();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let client = proxy.client();
            tokio::spawn(async move {
                for _ in 0..375 {
                    assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
    .expect("3,000 requests within a minute");
    let served: Vec<u64> = blue
        .iter()
        .chain(&green)
        .zip(&before)
        .map(|(pod, before)| pod.served() - before)
        .collect();
    assert_even_spread("blue", &served[..3]);
    assert_even_spread("green", &served[3..6]);
    assert_eq!(green[3].served() + green[4].served(), 0);

    // Scale-up: the two new pods turn ready.
    let started = Instant::now();
    api.set_pods(NS, "green", "http", &scaled(5));
    let mut sent = 0;
    while green[3].served() == 0 || green[4].served() == 0 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
        sent += 1;
        assert!(
            sent < 5_000 && started.elapsed() < Duration::from_secs(10),
            "the new pods got nothing"
        );
    }
    eprintln!(
        "both new pods served within {:?} ({sent} requests) of turning ready",
        started.elapsed()
    );

    // Termination under load: pod 0 turns terminating, leaves, then stops.
    let going = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, going) = (proxy.client(), going.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while going.load(SeqCst) && statuses.len() < 20_000 {
                    statuses.push(client.get("/", &[]).await.map(|r| r.status.as_u16()));
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.set_pods(
        NS,
        "green",
        "http",
        &states(
            &green,
            |i| if i == 0 { Pod::Terminating } else { Pod::Ready },
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while green_endpoints(&proxy).await != 4 {
        assert!(
            Instant::now() < deadline,
            "the terminating pod was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests sent before the proxy saw the change may still be in flight there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served_when_gone = green[0].served();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        green[0].served(),
        served_when_gone,
        "a terminating pod got new requests"
    );
    // Its idle keep-alive connections were closed, while the pod still runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while connections_to(green[0].addr) > 0 {
        assert!(
            Instant::now() < deadline,
            "connections to the terminating pod stay open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(connections_to(green[1].addr) > 0, "the others' are kept");
    drop(green.remove(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    going.store(false, SeqCst);
    let mut statuses = Vec::new();
    for task in load {
        statuses.extend(task.await.unwrap());
    }
    let failed = statuses.iter().filter(|s| !matches!(s, Ok(200))).count();
    eprintln!(
        "{} requests during the termination, {failed} failed",
        statuses.len()
    );
    assert_eq!(failed, 0);
    assert!(statuses.len() > 100);
    for pod in &green {
        assert!(pod.served() > 0);
    }
}

#[tokio::test]
async fn a_new_canary_service_gets_the_canary_traffic_and_the_old_pods_none() {
    let blue = pods("blue", 51, 2).await;
    let old = pods("green", 61, 2).await;
    let new = pods("green", 71, 2).await;
    let api = FakeApiServer::start().await;
    api.set_pods(NS, "blue", "http", &states(&blue, |_| Pod::Ready));
    api.set_pods(NS, "green", "http", &states(&old, |_| Pod::Ready));
    api.set_pods(NS, "green-v2", "http", &states(&new, |_| Pod::Ready));
    api.create_configmap(
        NS,
        NAME,
        &[
            ("blue.upstream", "svc:blue.default:http"),
            ("green.upstream", "svc:green.default:http"),
            ("canary-weight", "50"),
        ],
    );
    let args = vec!["--configmap".to_owned(), format!("{NS}/{NAME}")];
    let env = vec![(
        "KUBECONFIG".to_owned(),
        api.kubeconfig_path().display().to_string(),
    )];
    let proxy = ProxyProcess::start_with(bin(), Source::Args(args, env), &[])
        .await
        .unwrap();
    proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["ready"] == true
                && s["colors"]["green"]["endpoints"].as_array().map(Vec::len) == Some(2)
        })
        .await
        .expect("ready with green's pods");
    let client = proxy.client();
    for _ in 0..100 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    }
    assert!(old.iter().all(|p| p.served() > 0));

    api.patch_data(NS, NAME, &[("green.upstream", "svc:green-v2.default:http")]);
    let first_new = new[0].authority();
    proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["colors"]["green"]["endpoints"]
                .as_array()
                .is_some_and(|e| {
                    e.len() == 2 && e.iter().any(|e| e["address"] == first_new.as_str())
                })
        })
        .await
        .expect("green is the new Service's pods");
    let old_served: u64 = old.iter().map(TestUpstream::served).sum();
    for _ in 0..200 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    }
    assert_eq!(
        old.iter().map(TestUpstream::served).sum::<u64>(),
        old_served
    );
    assert!(new.iter().all(|p| p.served() > 0));
    assert_eq!(proxy.status().await["rollback"]["rolled_back"], false);
}
