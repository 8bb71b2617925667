//! The proxy's lifecycle under load, against the real binary (RELIABILITY.md cases 27-29 and
//! 31): weight shifts and reloads with zero errors, SIGTERM with requests in flight and idle
//! HTTP/1.1 and HTTP/2 connections, and running out of file descriptors.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::client::HttpClient;
use canary_testkit::faulty::{RawConn, RecordingUpstream};
use canary_testkit::load::Load;
use canary_testkit::procfs;
use canary_testkit::proxy::{ProxyProcess, Source};
use canary_testkit::upstream::TestUpstream;
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Waits up to `wait` for `condition`.
async fn eventually(wait: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reloads(proxy: &ProxyProcess) -> f64 {
    proxy
        .metric("canary_proxy_config_reloads_total{result=\"ok\"}")
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn weight_shifts_and_reloads_under_load_have_no_errors() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let (b, g) = (blue.authority(), green.authority());
    let config = |weight: &'static str, header: &'static str| {
        vec![
            ("blue.upstream", b.clone()),
            ("green.upstream", g.clone()),
            ("canary-weight", weight.to_owned()),
            ("response-color-header", header.to_owned()),
        ]
    };
    let write = |proxy: &ProxyProcess, pairs: Vec<(&str, String)>| {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        proxy.write_config(&pairs);
    };
    let initial = config("0", "x-a");
    let pairs: Vec<(&str, &str)> = initial.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = ProxyProcess::start(bin(), &pairs).await.unwrap();
    let mut clients: Vec<HttpClient> = (0..4).map(|_| proxy.client()).collect();
    clients.extend((0..2).map(|_| HttpClient::http2(proxy.addr)));
    let load = Load::start(clients, Duration::from_millis(1));
    // One kept-alive connection that must survive every change.
    let mut kept = RawConn::connect(proxy.addr).await.unwrap();
    let mut kept_requests = 0;

    let mut applied = reloads(&proxy).await;
    let steps = [
        ("10", "x-a"),
        ("50", "x-a"),
        ("100", "x-a"),
        ("90", "x-b"),
        ("50", "x-a"),
        ("0", "x-b"),
    ];
    // Six weight steps, each followed by reloads that only rename the color header: 24 in all.
    for (weight, header) in steps {
        for reload in 0..4 {
            let header = if reload % 2 == 0 { header } else { "x-c" };
            write(&proxy, config(weight, header));
            let next = applied + 1.0;
            assert!(
                eventually(Duration::from_secs(2), async || reloads(&proxy).await
                    >= next)
                .await,
                "weight {weight} was not applied"
            );
            applied = next;
            kept.send(GET).await.unwrap();
            let reply = kept.read_responses(1, Duration::from_secs(2)).await;
            assert_eq!(reply.statuses(), [200], "{}", reply.text());
            assert!(!reply.closed, "the kept-alive connection was closed");
            kept_requests += 1;
        }
    }
    let tally = load.stop().await;
    eprintln!(
        "24 reloads under load: {} ok, {} failed, {:?}; one connection carried {kept_requests}",
        tally.ok, tally.failures, tally.colors
    );
    assert_eq!(tally.failures, 0, "{:?}", tally.examples);
    assert!(tally.colors.len() == 2, "{:?}", tally.colors);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_closes_idle_connections() {
    let upstream = RecordingUpstream::start().await;
    let authority = upstream.authority();
    let mut proxy = ProxyProcess::in_front_of(bin(), &authority, &[])
        .await
        .unwrap();
    let addr = proxy.addr;

    // 30 idle HTTP/1.1 connections, each after one request.
    let mut idle = Vec::new();
    for _ in 0..30 {
        let mut conn = RawConn::connect(addr).await.unwrap();
        conn.send(GET).await.unwrap();
        let reply = conn.read_responses(1, Duration::from_secs(2)).await;
        assert_eq!(reply.statuses(), [200]);
        idle.push(conn);
    }
    // 3 idle HTTP/2 connections, each after one request.
    let mut h2 = Vec::new();
    for _ in 0..3 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://{addr}/"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        h2.push((client, connection));
    }

    // 20 requests in flight to an upstream that takes 1.5 s.
    upstream.set_delay(Duration::from_millis(1500));
    let before = upstream.requests();
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let client = HttpClient::http1(addr);
            tokio::spawn(async move { client.get("/slow", &[]).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), async || upstream.requests()
            >= before + 20)
        .await,
        "the requests never reached the upstream"
    );

    proxy.signal("TERM");
    let signalled = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), async || {
            proxy.admin_get("/readyz").await.unwrap().0 == 503
        })
        .await,
        "readiness still on a second after SIGTERM"
    );
    let unready = signalled.elapsed();

    // Idle connections are closed cleanly while the requests in flight are still running.
    for conn in &mut idle {
        let reply = conn.read_until_closed(Duration::from_secs(1)).await;
        assert!(reply.closed && reply.bytes.is_empty(), "{reply:?}");
    }
    for (_, connection) in h2 {
        let ended = tokio::time::timeout(Duration::from_secs(1), connection).await;
        let ended = ended.expect("the idle HTTP/2 connection was not closed");
        assert!(ended.unwrap().is_ok(), "no GOAWAY before the close");
    }
    let idle_closed = signalled.elapsed();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are still accepted"
    );

    for request in in_flight {
        let reply = request
            .await
            .unwrap()
            .expect("the request in flight completes");
        assert_eq!(reply.status, 200);
    }
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    eprintln!(
        "SIGTERM: unready after {unready:?}, idle connections closed after {idle_closed:?}, \
         exit {status} after {:?}",
        signalled.elapsed()
    );
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn running_out_of_file_descriptors_neither_spins_nor_crashes() {
    let upstream = RecordingUpstream::start().await;
    let authority = upstream.authority();
    // The proxy under a limit of 64 descriptors, on one worker (one upstream pool).
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("limited.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 64\nexec '{}' \"$@\"\n",
            bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = [
        ("blue.upstream", authority.as_str()),
        ("green.upstream", authority.as_str()),
    ];
    let proxy = ProxyProcess::start_with(&wrapper, Source::File(&config), &["--workers", "1"])
        .await
        .unwrap();
    let pid = proxy.pid();

    // A kept-alive connection, and its upstream connection pooled.
    let mut established = RawConn::connect(proxy.addr).await.unwrap();
    established.send(GET).await.unwrap();
    assert_eq!(
        established
            .read_responses(1, Duration::from_secs(2))
            .await
            .statuses(),
        [200]
    );

    // 100 idle connections: the proxy runs out of descriptors part way.
    let mut hogs = Vec::new();
    for _ in 0..100 {
        hogs.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(2), async || procfs::open_fds(pid) >= 63).await,
        "never ran out: {} fds",
        procfs::open_fds(pid)
    );
    let cpu = procfs::cpu_time(pid);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let share = (procfs::cpu_time(pid) - cpu).as_secs_f64() / started.elapsed().as_secs_f64();
    eprintln!(
        "out of descriptors: {:.1}% of a core over 2 s",
        share * 100.0
    );
    assert!(
        share < 0.3,
        "the accept loop spins: {:.0}% of a core",
        share * 100.0
    );

    // The established connection is still served, through its pooled upstream connection.
    established.send(GET).await.unwrap();
    let reply = established.read_responses(1, Duration::from_secs(2)).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());

    // Descriptors come back: new connections are accepted again.
    drop(hogs);
    let freed = Instant::now();
    let client = proxy.client();
    assert!(
        eventually(Duration::from_secs(3), async || {
            matches!(client.get("/", &[]).await, Ok(r) if r.status == 200)
        })
        .await,
        "never accepted again"
    );
    eprintln!(
        "accepting again {:?} after the descriptors were freed",
        freed.elapsed()
    );
    let warnings = proxy
        .logs()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    // One per episode; freeing the descriptors may start a second, brief one while the
    // queued connections are accepted.
    assert!((1..=2).contains(&warnings), "{warnings} warnings");
}
