//! End-to-end: HTTPS with ALPN and certificate rotation, gRPC to an h2c upstream, WebSocket
//! tunnels, and sticky assignment, through the real binary.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use canary_testkit::client::HttpClient;
use canary_testkit::faulty::{RecordingUpstream, Script, ScriptedUpstream};
use canary_testkit::grpc::{GrpcUpstream, message};
use canary_testkit::proxy::{ProxyProcess, Source};
use canary_testkit::upstream::TestUpstream;
use canary_testkit::websocket::EchoUpstream;
use http::Request;
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    (cert.cert.pem(), cert.signing_key.serialize_pem(), der)
}

/// Connects with TLS offering one ALPN protocol; returns the stream and the served certificate.
async fn tls_connect(
    addr: std::net::SocketAddr,
    trust: &[CertificateDer<'static>],
    alpn: &[u8],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trust {
        roots.add(cert.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let (_, session) = stream.get_ref();
    assert_eq!(session.alpn_protocol(), Some(alpn));
    let served = session.peer_certificates().unwrap()[0].clone().into_owned();
    (stream, served)
}

#[tokio::test]
async fn https_with_alpn_h1_and_h2_and_certificate_rotation() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (pem, key, first) = certificate();
    std::fs::write(&cert_path, pem).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let config = [
        ("blue.upstream", blue.authority()),
        ("green.upstream", green.authority()),
    ];
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = ProxyProcess::start_with(
        bin(),
        Source::File(&config),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();

    // HTTP/1.1 over TLS.
    let (stream, served) = tls_connect(proxy.addr, std::slice::from_ref(&first), b"http/1.1").await;
    assert_eq!(served, first);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/tls")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let (_, headers, _) = blue.last_request().unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https");

    // HTTP/2 over TLS, chosen by ALPN.
    let (stream, _) = tls_connect(proxy.addr, std::slice::from_ref(&first), b"h2").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);

    // A bad certificate on reload keeps the old one.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy
        .logs()
        .iter()
        .any(|l| l.contains("TLS certificate not reloaded"))
    {
        assert!(
            Instant::now() < deadline,
            "the bad certificate was not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, served) = tls_connect(proxy.addr, std::slice::from_ref(&first), b"http/1.1").await;
    assert_eq!(served, first);

    // A renewed certificate is served to new connections, without a restart.
    let (pem, key, second) = certificate();
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&cert_path, pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, served) =
            tls_connect(proxy.addr, &[first.clone(), second.clone()], b"http/1.1").await;
        if served == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn grpc_call(proxy: &ProxyProcess) -> Request<Full<Bytes>> {
    Request::post(format!("http://{}/demo.Echo/Say", proxy.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message(b"hello")))
        .unwrap()
}

#[tokio::test]
async fn grpc_round_trip_keeps_trailers_and_a_failing_status_rolls_back() {
    let (blue, green) = (
        GrpcUpstream::start("blue").await,
        GrpcUpstream::start("green").await,
    );
    let (b, g) = (blue.addr.to_string(), green.addr.to_string());
    let config = |weight| {
        vec![
            ("blue.upstream", b.as_str()),
            ("green.upstream", g.as_str()),
            ("blue.protocol", "h2c"),
            ("green.protocol", "h2c"),
            ("canary-weight", weight),
            ("rollback.min-requests", "10"),
        ]
    };
    let proxy = ProxyProcess::start(bin(), &config("0")).await.unwrap();
    let client = HttpClient::http2(proxy.addr);
    let reply = client.send(grpc_call(&proxy)).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.color(), "blue");
    assert_eq!(&reply.body[5..], b"blue");
    assert_eq!(reply.trailers.as_ref().unwrap()["grpc-status"], "0");

    // Green answers UNAVAILABLE: every call is HTTP 200, the failure is in the trailer.
    green.set_status(14);
    proxy.write_config(&config("100"));
    proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["configured_weight"]["weight"] == 100
        })
        .await
        .unwrap();
    let mut failed = 0;
    for _ in 0..30 {
        let reply = client.send(grpc_call(&proxy)).await.unwrap();
        assert_eq!(reply.status, 200);
        failed += usize::from(reply.trailers.as_ref().unwrap()["grpc-status"] != "0");
    }
    assert_eq!(failed, 10, "rolled back at the 10th failed call");
    assert_eq!(
        proxy
            .metric("canary_proxy_upstream_errors_total{color=\"green\",kind=\"status\"}")
            .await,
        Some(10.0)
    );
    let status = proxy.status().await;
    assert_eq!(status["rollback"]["rolled_back"], true);
    assert_eq!(status["rollback"]["color"], "green");
    assert_eq!(green.served(), 10);
}

/// Asks for a WebSocket through the proxy at `addr`: the connection, and the response head in
/// lower case.
async fn upgrade(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /chat HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).unwrap().to_ascii_lowercase())
}

/// Sends `message` into a tunnel to an echo upstream and reads it back.
async fn echo(tcp: &mut TcpStream, message: &[u8]) {
    tcp.write_all(message).await.unwrap();
    let mut echoed = vec![0; message.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
        .await
        .expect("echoed within 5 s")
        .unwrap();
    assert_eq!(echoed, message);
}

/// Waits up to `wait` for the proxy to close `tcp` cleanly (FIN, no reset).
async fn closed_cleanly(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(wait, tcp.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_to_one_color() {
    let (blue, green) = (
        EchoUpstream::start("blue").await,
        EchoUpstream::start("green").await,
    );
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &blue.addr.to_string()),
            ("green.upstream", &green.addr.to_string()),
            ("canary-weight", "100"),
        ],
    )
    .await
    .unwrap();
    let (mut tcp, head) = upgrade(proxy.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("x-color: green"),
        "{head}"
    );
    for message in [
        &b"hello"[..],
        b"second frame",
        &[0x81, 0x05, b'w', b'o', b'r', b'l', b'd'],
    ] {
        echo(&mut tcp, message).await;
    }
    assert_eq!(
        proxy
            .metric("canary_proxy_requests_total{code=\"1xx\",color=\"green\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn sticky_users_keep_their_color_and_only_move_to_the_canary() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let (b, g) = (blue.authority(), green.authority());
    let config = |weight| {
        vec![
            ("blue.upstream", b.as_str()),
            ("green.upstream", g.as_str()),
            ("canary-weight", weight),
            ("sticky", "header:x-user"),
        ]
    };
    let proxy = ProxyProcess::start(bin(), &config("5")).await.unwrap();
    let client = proxy.client();
    let users: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let mut on_canary = vec![false; users.len()];
    for (weight, p) in [("5", 0.05), ("50", 0.5), ("100", 1.0)] {
        proxy.write_config(&config(weight));
        proxy
            .wait_status(Duration::from_secs(5), |s| {
                s["configured_weight"]["weight"] == weight.parse::<u32>().unwrap()
            })
            .await
            .unwrap();
        let mut canary = 0;
        for (i, user) in users.iter().enumerate() {
            let first = client.get("/", &[("x-user", user)]).await.unwrap().color() == "green";
            let again = client.get("/", &[("x-user", user)]).await.unwrap().color() == "green";
            assert_eq!(first, again, "{user} changed color at weight {weight}");
            assert!(
                first || !on_canary[i],
                "{user} moved back to stable at weight {weight}"
            );
            on_canary[i] = first;
            canary += usize::from(first);
        }
        let n = users.len() as f64;
        let share = canary as f64 / n;
        assert!(
            (share - p).abs() <= 4.0 * (p * (1.0 - p) / n).sqrt() + 1e-9,
            "weight {weight}: {share}"
        );
    }
    // Without the header, requests get the plain weighted choice.
    proxy.write_config(&config("50"));
    proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["configured_weight"]["weight"] == 50
        })
        .await
        .unwrap();
    let mut green_replies = 0;
    for _ in 0..400 {
        green_replies += usize::from(client.get("/", &[]).await.unwrap().color() == "green");
    }
    assert!((120..=280).contains(&green_replies), "{green_replies}");
}

#[tokio::test]
async fn a_websocket_tunnel_lives_through_a_sigterm_drain_then_closes_cleanly() {
    let echo_upstream = EchoUpstream::start("blue").await;
    let authority = echo_upstream.addr.to_string();
    let config = [
        ("blue.upstream", authority.as_str()),
        ("green.upstream", authority.as_str()),
    ];
    let mut proxy =
        ProxyProcess::start_with(bin(), Source::File(&config), &["--drain-timeout", "3s"])
            .await
            .unwrap();
    let (mut tcp, head) = upgrade(proxy.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo(&mut tcp, b"before").await;
    proxy.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.admin_get("/readyz").await.map(|r| r.0) != Ok(503) {
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining: the tunnel still carries messages both ways.
    for message in [&b"during the drain"[..], b"still here"] {
        echo(&mut tcp, message).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // At the drain timeout it is closed cleanly, and the proxy exits 0.
    assert!(
        closed_cleanly(&mut tcp, Duration::from_secs(10)).await,
        "the tunnel was not closed cleanly"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn idle_tunnels_are_closed_and_their_number_is_capped() {
    let echo_upstream = EchoUpstream::start("blue").await;
    let authority = echo_upstream.addr.to_string();
    let proxy = ProxyProcess::in_front_of(
        bin(),
        &authority,
        &[("timeout.tunnel-idle", "1s"), ("limit.tunnels", "1")],
    )
    .await
    .unwrap();
    let (mut tcp, head) = upgrade(proxy.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // Refused whichever worker accepts the connection, not only the one holding the tunnel.
    for _ in 0..4 {
        let (_, refused) = upgrade(proxy.addr).await;
        assert!(refused.starts_with("http/1.1 503"), "{refused}");
    }
    // Traffic keeps it open past several idle timeouts...
    for _ in 0..16 {
        echo(&mut tcp, b"ping").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // ...silence closes it, and frees its place.
    assert!(
        closed_cleanly(&mut tcp, Duration::from_secs(5)).await,
        "the idle tunnel stayed open"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, head) = upgrade(proxy.addr).await;
        if head.starts_with("http/1.1 101") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed tunnel still counts: {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http2_cookies_are_joined_and_grpc_web_is_plain_http() {
    let upstream = RecordingUpstream::start().await;
    let authority = upstream.authority();
    let proxy = ProxyProcess::in_front_of(bin(), &authority, &[])
        .await
        .unwrap();
    let req = Request::get(format!("http://{}/", proxy.addr))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::default())
        .unwrap();
    let reply = HttpClient::http2(proxy.addr).send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    let headers = upstream.last_headers().unwrap();
    let cookies: Vec<_> = headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);

    // A chunked grpc-web answer carries its status in the body: a plain 200.
    let grpc_web = ScriptedUpstream::start(Script::Reply(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
    ))
    .await;
    let authority = grpc_web.authority();
    let proxy = ProxyProcess::in_front_of(bin(), &authority, &[])
        .await
        .unwrap();
    let reply = proxy.client().get("/", &[]).await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), &reply.body[..]),
        (200, &b"hello"[..])
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy
        .metric("canary_proxy_requests_total{code=\"2xx\",color=\"blue\"}")
        .await
        != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the grpc-web answer was not counted as a 2xx"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy
            .metric("canary_proxy_requests_total{code=\"error\",color=\"blue\"}")
            .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn h2c_opens_another_connection_when_the_streams_run_out() {
    let upstream = TestUpstream::start_with_stream_limit("blue", 2).await;
    let authority = upstream.authority();
    let config = [
        ("blue.upstream", authority.as_str()),
        ("green.upstream", authority.as_str()),
        ("blue.protocol", "h2c"),
        ("green.protocol", "h2c"),
    ];
    let proxy = ProxyProcess::start_with(bin(), Source::File(&config), &["--workers", "1"])
        .await
        .unwrap();
    // One call first, so the upstream's SETTINGS (2 streams) is known; then 8 at once on one
    // multiplexed client connection.
    let client = HttpClient::http2(proxy.addr);
    assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    upstream.set_delay(Duration::from_secs(1));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/", &[]).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status, 200);
    }
    let connections = upstream.connections();
    eprintln!("8 concurrent calls over {connections} h2c connections of 2 streams each");
    assert!(
        connections >= 4,
        "{connections} connections for 8 concurrent calls"
    );
}
