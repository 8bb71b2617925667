//! Hostile HTTP/1.1 clients against the real binary (RELIABILITY.md cases 1-10): smuggling,
//! malformed heads, oversized heads, slow clients, oversized bodies, hop-by-hop headers,
//! upgrade smuggling and spoofed forwarding headers. The upstream records every byte it
//! receives, so "nothing reached the upstream" is checked on the wire.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::faulty::{RawConn, RecordingUpstream};
use canary_testkit::procfs;
use canary_testkit::proxy::ProxyProcess;

/// The proxy's allocator (mimalloc) maps memory in 2 MiB steps: each memory bound from
/// RELIABILITY.md gets one step of slack.
const ALLOCATOR_STEP_KIB: u64 = 2048;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

const WAIT: Duration = Duration::from_secs(5);

/// A proxy whose both colors are one recording upstream, with extra config keys.
async fn proxy_to(upstream: &RecordingUpstream, extra: &[(&str, &str)]) -> ProxyProcess {
    ProxyProcess::in_front_of(bin(), &upstream.authority(), extra)
        .await
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn cl_te_smuggling_never_reaches_the_upstream() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let attack = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
    let reply = RawConn::exchange(proxy.addr, attack, WAIT).await;
    // hyper frames the body by Transfer-Encoding, drops Content-Length, answers the request
    // and closes the connection, so the bytes after the chunked body are never parsed.
    assert!(reply.closed, "the connection stays open: {}", reply.text());
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
    assert_eq!(upstream.requests(), 1);
    assert_eq!(upstream.paths(), ["/"]);
    // The proxy frames the (empty) body its own way: never the client's Content-Length.
    let headers = upstream.last_headers().unwrap();
    assert!(!headers.contains_key("content-length"), "{headers:?}");
    assert!(!contains(&upstream.transcript(), b"/admin"));
}

#[tokio::test]
async fn smuggling_corpus_gets_400_and_nothing_upstream() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let head = |headers: &str, body: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    };
    let corpus = [
        head("Content-Length: 5\r\nContent-Length: 6\r\n", "hello"),
        head("Content-Length: +5\r\n", "hello"),
        head("Content-Length: \r\n", ""),
        head("Content-Length: 5, 6\r\n", "hello"),
        head("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding: identity\r\n", "0\r\n\r\n"),
        "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        head("Transfer-Encoding: chunked\r\n", "ffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
        head("Transfer-Encoding: chunked\r\n", "5;a\nb\r\nhello\r\n0\r\n\r\n"),
        head("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n"),
        head("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
        head(" Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
    ];
    for attack in &corpus {
        let reply = RawConn::exchange(proxy.addr, attack.as_bytes(), WAIT).await;
        assert_eq!(reply.statuses(), [400], "{attack:?} got {}", reply.text());
        assert!(reply.closed, "{attack:?}: the connection stays open");
    }
    assert_eq!(upstream.requests(), 0, "{:?}", upstream.paths());
    assert!(upstream.transcript().is_empty());
}

#[tokio::test]
async fn malformed_heads_get_400_and_underscores_are_dropped() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let refused = [
        ("GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
        ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("G\0T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET / HTTP/1.2\r\nHost: x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        ("TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ];
    for (request, status) in refused {
        let mut conn = RawConn::connect(proxy.addr).await.unwrap();
        conn.send(request.as_bytes()).await.unwrap();
        let reply = conn.read_responses(1, WAIT).await;
        assert_eq!(
            reply.statuses(),
            [status],
            "{request:?} got {}",
            reply.text()
        );
    }
    assert_eq!(upstream.requests(), 0, "{:?}", upstream.paths());

    // The absolute-form authority decides; an underscored header is dropped (NGINX's way).
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(
        b"GET http://a.example/p HTTP/1.1\r\nHost: b.example\r\nX_Auth: 1\r\nX-Auth: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = conn.read_responses(1, WAIT).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
    assert_eq!(upstream.paths(), ["/p"]);
    let headers = upstream.last_headers().unwrap();
    assert_eq!(headers["host"], "a.example");
    assert!(!headers.contains_key("x_auth"));
    assert_eq!(headers["x-auth"], "2");
}

/// Sends `request` `times` times over `conns` parallel connections, a new connection for each
/// request; returns the statuses seen.
async fn hammer(addr: std::net::SocketAddr, request: &[u8], times: usize) -> Vec<u16> {
    let conns = 8;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let request = request.to_vec();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..times / conns {
                    let mut conn = RawConn::connect(addr).await.unwrap();
                    conn.send(&request).await.unwrap();
                    statuses.extend(conn.read_responses(1, WAIT).await.statuses());
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn header_limits_give_431_and_414_without_growing() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"), 431),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(9 * 1024)
            ),
            431,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10 * 1024)),
            414,
        ),
        // hyper alone would take this one: the read buffer limit refuses it.
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
                "a".repeat(300 * 1024)
            ),
            431,
        ),
    ];
    // A first round warms the allocator; the second must not grow the process.
    for (request, status) in &cases {
        assert!(
            hammer(proxy.addr, request.as_bytes(), 16)
                .await
                .iter()
                .all(|s| s == status)
        );
    }
    let before = procfs::rss_kib(proxy.pid());
    let started = Instant::now();
    for (request, status) in &cases {
        let times = if request.len() > 100_000 { 200 } else { 1000 };
        let statuses = hammer(proxy.addr, request.as_bytes(), times).await;
        assert_eq!(statuses.len(), times, "every request answered");
        assert!(
            statuses.iter().all(|s| s == status),
            "{status}: {statuses:?}"
        );
    }
    let after = procfs::rss_kib(proxy.pid());
    eprintln!(
        "3,200 oversized requests in {:?}: RSS {before} KiB -> {after} KiB",
        started.elapsed()
    );
    assert!(
        after < before + 1024 + ALLOCATOR_STEP_KIB,
        "RSS grew from {before} to {after} KiB"
    );
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn slow_and_silent_clients_are_closed_at_the_header_timeout() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let pid = proxy.pid();
    let baseline = procfs::open_fds(pid);
    // A quarter send nothing, a quarter trickle a request head, a quarter trickle an HTTP/2
    // preface, and a quarter send the whole preface and never their SETTINGS.
    let mut conns = Vec::new();
    for i in 0..60 {
        let mut conn = RawConn::connect(proxy.addr).await.unwrap();
        match i % 4 {
            1 => conn.send(b"G").await.unwrap(),
            2 => conn.send(b"PRI").await.unwrap(),
            3 => conn
                .send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap(),
            _ => {}
        }
        conns.push((i % 4, conn));
    }
    let started = Instant::now();
    // The rest of a request head (then an endless header value), and the rest of the preface.
    let head = b"ET / HTTP/1.1\r\nX-A: ";
    let preface = b" * HTTP/2.0\r\n\r\n";
    let mut sent = 0;
    let mut open = conns.len();
    // The header timeout is 10 s; every connection must be gone well before 14 s.
    while open > 0 && started.elapsed() < Duration::from_secs(14) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open = 0;
        for (kind, conn) in &mut conns {
            let byte = match kind {
                1 => Some(*head.get(sent).unwrap_or(&b'a')),
                2 => preface.get(sent).copied(),
                _ => None,
            };
            if let Some(byte) = byte {
                let _ = conn.send(&[byte]).await;
            }
            if !conn
                .read_until_closed(Duration::from_millis(1))
                .await
                .closed
            {
                open += 1;
            }
        }
        sent += 1;
    }
    let took = started.elapsed();
    eprintln!("60 slow clients all closed after {took:?}");
    assert_eq!(open, 0, "{open} slow connections still open after {took:?}");
    assert!(
        took > Duration::from_secs(5),
        "closed before the timeout: {took:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while procfs::open_fds(pid) > baseline && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        procfs::open_fds(pid) <= baseline,
        "fds not back to {baseline}"
    );
    assert_eq!(upstream.requests(), 0);
    assert_eq!(proxy.client().get("/", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_upstream_request_is_aborted() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[("timeout.client-body", "500ms")]).await;

    // No body byte at all: answered before anything goes upstream.
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let reply = conn.read_until_closed(WAIT).await;
    assert_eq!(reply.statuses(), [408], "{}", reply.text());
    assert!(reply.closed);
    assert_eq!(upstream.requests(), 0);

    // Some body, then a stall: the upstream has the request, and sees it cut off.
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n0123456789")
        .await
        .unwrap();
    let reply = conn.read_until_closed(WAIT).await;
    assert_eq!(reply.statuses(), [408], "{}", reply.text());
    assert!(reply.closed);
    let deadline = Instant::now() + WAIT;
    while upstream.aborted() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((upstream.requests(), upstream.aborted()), (1, 1));
    // The client stalled: nothing is held against the upstream.
    assert_eq!(
        proxy
            .metric("canary_proxy_upstream_errors_total{color=\"blue\",kind=\"reset\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn body_limit_gives_413() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[("limit.request-body", "64k")]).await;
    let pid = proxy.pid();
    let mut before = 0;
    // The first rounds warm the allocator (mimalloc keeps freed pages a while); the next
    // ten must not grow the process.
    let mut rss = Vec::new();
    for round in 0..20 {
        if round == 10 {
            before = procfs::rss_kib(pid);
        }
        refuse_large_bodies(&proxy, &upstream, round + 1).await;
        rss.push(procfs::rss_kib(pid));
    }
    let after = procfs::rss_kib(pid);
    eprintln!("oversized bodies: RSS after each round {rss:?} KiB");
    assert!(
        after < before + 2048 + ALLOCATOR_STEP_KIB,
        "RSS {before} -> {after} KiB"
    );
}

/// The `n`th round of [`body_limit_gives_413`]: a declared and a streamed oversized body.
async fn refuse_large_bodies(proxy: &ProxyProcess, upstream: &RecordingUpstream, n: u64) {
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\n\r\n")
        .await
        .unwrap();
    let reply = conn.read_responses(1, WAIT).await;
    assert_eq!(reply.statuses(), [413], "{}", reply.text());
    assert_eq!(upstream.requests(), n - 1);

    // A chunked body that crosses the limit on its way: the upstream sees it cut off.
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("4000\r\n{}\r\n", "a".repeat(0x4000));
    for _ in 0..8 {
        if conn.send(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let reply = conn.read_until_closed(WAIT).await;
    assert_eq!(reply.statuses(), [413], "{}", reply.text());
    assert!(reply.closed);
    let deadline = Instant::now() + WAIT;
    while upstream.aborted() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((upstream.requests(), upstream.aborted()), (n, n));
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let upstream = RecordingUpstream::start().await;
    upstream.set_response_headers(&[
        ("connection", "x-backend"),
        ("x-backend", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic"),
    ]);
    let proxy = proxy_to(&upstream, &[]).await;
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Forwarded-For, X-Auth-User\r\n\
          X-Forwarded-For: 1.2.3.4\r\nX-Auth-User: admin\r\nKeep-Alive: 300\r\n\
          Proxy-Connection: keep-alive\r\nTE: gzip\r\nUpgrade: foo\r\nProxy-Authorization: Basic eA==\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = conn.read_until_closed(WAIT).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
    let headers = upstream.last_headers().unwrap();
    for gone in [
        "x-auth-user",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!headers.contains_key(gone), "{gone} reached the upstream");
    }
    // The proxy's own X-Forwarded-For, added after the client's was removed.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    let response = reply.text().to_ascii_lowercase();
    for gone in ["x-backend", "keep-alive", "proxy-authenticate"] {
        assert!(
            !response.contains(gone),
            "{gone} reached the client: {response}"
        );
    }
}

#[tokio::test]
async fn a_refused_upgrade_does_not_open_a_tunnel() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = conn.read_responses(2, WAIT).await;
    // The upstream answered 200, not 101: /admin is a request of its own, routed as such,
    // or the connection is closed; it never travels as raw bytes inside a tunnel.
    let paths = upstream.paths();
    let statuses = reply.statuses();
    assert!(
        statuses == [200, 200] && paths == ["/ws", "/admin"] || statuses == [200] && reply.closed,
        "{statuses:?} {paths:?} {}",
        reply.text()
    );
    let transcript = upstream.transcript();
    let raw = transcript
        .windows(b"GET /admin".len())
        .filter(|w| *w == b"GET /admin")
        .count();
    assert_eq!(
        raw,
        paths.iter().filter(|p| *p == "/admin").count(),
        "every /admin the upstream got was parsed as a request"
    );
}

#[tokio::test]
async fn forwarded_headers_follow_trusted_hops() {
    let upstream = RecordingUpstream::start().await;
    let spoof = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\
                  X-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4\r\n\r\n";
    let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for (hops, xff, proto) in [
        ("0", "127.0.0.2", "http"),
        ("1", "1.2.3.4, 127.0.0.2", "https"),
    ] {
        let proxy = proxy_to(&upstream, &[("forwarded.trusted-hops", hops)]).await;
        let mut conn = RawConn::connect_from(peer, proxy.addr).await.unwrap();
        conn.send(spoof).await.unwrap();
        assert_eq!(conn.read_responses(1, WAIT).await.statuses(), [200]);
        let headers = upstream.last_headers().unwrap();
        assert_eq!(headers["x-forwarded-for"], xff, "trusted hops {hops}");
        assert_eq!(headers["x-forwarded-proto"], proto, "trusted hops {hops}");
        assert_eq!(headers.contains_key("forwarded"), hops != "0");
    }
}

#[tokio::test]
async fn the_admin_listener_caps_connections_and_closes_idle_ones() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    // Fill the admin listener (32 connections) with clients that never send a request.
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(RawConn::connect(proxy.admin).await.unwrap());
    }
    // One more is closed at once, without an answer, even with a whole request in it.
    let refused = RawConn::exchange(
        proxy.admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(refused.closed, "not closed: {:?}", refused.text());
    assert!(refused.statuses().is_empty(), "{:?}", refused.text());
    // The idle ones are closed at the header timeout (5 s), which frees the listener.
    let started = Instant::now();
    for conn in &mut idle {
        let reply = conn
            .read_until_closed(Duration::from_secs(10).saturating_sub(started.elapsed()))
            .await;
        assert!(
            reply.closed,
            "an idle admin connection still open after {:?}",
            started.elapsed()
        );
    }
    eprintln!(
        "32 idle admin connections closed after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "closed before the timeout"
    );
    assert_eq!(proxy.admin_get("/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn forwarded_for_lines_are_one_list_and_trust_follows_the_peer() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(
        &upstream,
        &[
            ("forwarded.trusted-hops", "1"),
            ("forwarded.trusted-cidrs", "127.0.0.2/32"),
        ],
    )
    .await;
    let two_lines = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\n\
                      X-Forwarded-For: 2.2.2.2\r\n\r\n";
    for (peer, xff) in [
        ([127, 0, 0, 2], "1.1.1.1, 2.2.2.2, 127.0.0.2"),
        // Not a trusted proxy: what it claims is replaced.
        ([127, 0, 0, 3], "127.0.0.3"),
    ] {
        let peer = IpAddr::V4(Ipv4Addr::from(peer));
        let mut conn = RawConn::connect_from(peer, proxy.addr).await.unwrap();
        conn.send(two_lines).await.unwrap();
        assert_eq!(conn.read_responses(1, WAIT).await.statuses(), [200]);
        let headers = upstream.last_headers().unwrap();
        let all: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, [xff], "from {peer}");
    }
}

#[tokio::test]
async fn connection_options_never_strip_host_and_connect_is_refused() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nHost: example\r\nConnection: host, close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_until_closed(WAIT).await.statuses(), [200]);
    let headers = upstream.last_headers().unwrap();
    assert_eq!(headers["host"], "example");

    let reply = RawConn::exchange(
        proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(reply.statuses(), [405], "{}", reply.text());
    assert_eq!(upstream.requests(), 1, "the CONNECT reached the upstream");
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    // Request trailers reach the upstream.
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          2\r\nhi\r\n0\r\nx-checksum: abc\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(conn.read_responses(1, WAIT).await.statuses(), [200]);
    let transcript = String::from_utf8_lossy(&upstream.transcript()).to_ascii_lowercase();
    assert!(
        transcript.contains("trailer: x-checksum") && transcript.contains("0\r\nx-checksum: abc"),
        "{transcript}"
    );

    // Response trailers reach the client.
    let scripted =
        canary_testkit::faulty::ScriptedUpstream::start(canary_testkit::faulty::Script::Reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-digest\r\n\r\n\
              2\r\nok\r\n0\r\nx-digest: xyz\r\n\r\n"
                .to_vec(),
        ))
        .await;
    let authority = scripted.authority();
    let proxy = ProxyProcess::in_front_of(bin(), &authority, &[])
        .await
        .unwrap();
    let reply = RawConn::exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let text = reply.text().to_ascii_lowercase();
    assert!(
        text.contains("trailer: x-digest") && text.contains("0\r\nx-digest: xyz"),
        "{text}"
    );
}

#[tokio::test]
async fn expect_100_continue_waits_for_the_upstream() {
    // An upstream that asks for the body: the client's 100 follows the upstream's.
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = conn.read_responses(1, WAIT).await;
    assert_eq!(interim.statuses(), [100], "{}", interim.text());
    conn.send(b"hello").await.unwrap();
    assert_eq!(conn.read_responses(1, WAIT).await.statuses(), [200]);
    let headers = upstream.last_headers().unwrap();
    assert_eq!(headers["expect"], "100-continue");
    assert!(contains(&upstream.transcript(), b"\r\n\r\nhello"));

    // An upstream that refuses: no 100, its answer, and no body sent to it.
    let refusing =
        canary_testkit::faulty::ScriptedUpstream::start(canary_testkit::faulty::Script::Reply(
            b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ))
        .await;
    let authority = refusing.authority();
    let proxy = ProxyProcess::in_front_of(bin(), &authority, &[])
        .await
        .unwrap();
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    conn.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let reply = conn.read_responses(1, WAIT).await;
    assert_eq!(reply.statuses(), [417], "{}", reply.text());
}

#[tokio::test]
async fn idle_keep_alive_outlives_the_header_timeout_but_a_stalled_head_does_not() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream, &[]).await;
    let (mut idle, mut stalled) = (
        RawConn::connect(proxy.addr).await.unwrap(),
        RawConn::connect(proxy.addr).await.unwrap(),
    );
    for conn in [&mut idle, &mut stalled] {
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(conn.read_responses(1, WAIT).await.statuses(), [200]);
    }
    // A kept-alive connection that begins its next head and stops is closed at the 10 s
    // header timeout, counted from that first byte...
    tokio::time::sleep(Duration::from_millis(500)).await;
    stalled.send(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let reply = stalled.read_until_closed(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(reply.closed, "the stalled head was never timed out");
    assert!(took > Duration::from_secs(5), "closed after {took:?}");
    // ...while the idle one, silent just as long, still carries a request (timeout.client-idle
    // is 75 s, above the 60 s an ingress keeps its upstream connections).
    idle.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = idle.read_responses(1, WAIT).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
}
