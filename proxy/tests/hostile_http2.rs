//! Hostile HTTP/2 clients against the real binary (RELIABILITY.md cases 11-13): rapid reset
//! with the `h2` client, and CONTINUATION, PING, SETTINGS, empty-DATA, reset-provoking and
//! stream-limit floods written as raw frames. Each checks that the proxy stays up, that its
//! memory stays bounded, and how many requests reached the upstream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_testkit::client::HttpClient;
use canary_testkit::faulty::RecordingUpstream;
use canary_testkit::procfs;
use canary_testkit::proxy::ProxyProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

/// The proxy's allocator (mimalloc) maps memory in 2 MiB steps: each memory bound from
/// RELIABILITY.md gets one step of slack.
const ALLOCATOR_STEP_KIB: u64 = 2048;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

async fn proxy_to(upstream: &RecordingUpstream) -> ProxyProcess {
    let authority = upstream.authority();
    ProxyProcess::in_front_of(bin(), &authority, &[])
        .await
        .unwrap()
}

/// Warms the proxy with a few HTTP/2 requests, then returns its RSS in KiB.
async fn warm_rss(proxy: &ProxyProcess) -> u64 {
    let client = HttpClient::http2(proxy.addr);
    for _ in 0..20 {
        assert_eq!(client.get("/warm", &[]).await.unwrap().status, 200);
    }
    procfs::rss_kib(proxy.pid())
}

/// The proxy still answers a fresh HTTP/2 client.
async fn still_serves(addr: SocketAddr) {
    let reply = HttpClient::http2(addr).get("/after", &[]).await.unwrap();
    assert_eq!(reply.status, 200);
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET /` (or `POST /`) with `:authority: x`, HPACK-encoded from the static table.
fn request_block(post: bool) -> Vec<u8> {
    vec![if post { 0x83 } else { 0x82 }, 0x86, 0x84, 0x01, 0x01, b'x']
}

/// What the server sent on a raw connection.
#[derive(Default, Debug)]
struct Seen {
    /// The GOAWAY's error code, if one came.
    goaway: Option<u32>,
    /// RST_STREAM error codes.
    resets: Vec<u32>,
    /// Response HEADERS frames.
    responses: usize,
    /// The connection ended.
    closed: bool,
}

/// A raw HTTP/2 connection: frames are written as given; a task records what comes back.
struct RawH2 {
    writer: OwnedWriteHalf,
    seen: Arc<Mutex<Seen>>,
}

impl RawH2 {
    /// Connects, exchanges SETTINGS (and acknowledges the server's), then reads in the
    /// background.
    async fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.unwrap();
        loop {
            let (kind, flags, _, _) = read_frame(&mut stream).await.expect("server SETTINGS");
            if kind == SETTINGS && flags & ACK == 0 {
                break;
            }
        }
        stream
            .write_all(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .unwrap();
        let (mut reader, writer) = stream.into_split();
        let seen = Arc::new(Mutex::new(Seen::default()));
        tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Some((kind, _, _, payload)) = read_frame(&mut reader).await {
                    let code = |at: usize| {
                        payload
                            .get(at..at + 4)
                            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
                    };
                    let mut seen = seen.lock().unwrap();
                    match kind {
                        GOAWAY => seen.goaway = Some(code(4)),
                        RST_STREAM => seen.resets.push(code(0)),
                        HEADERS => seen.responses += 1,
                        _ => {}
                    }
                }
                seen.lock().unwrap().closed = true;
            }
        });
        RawH2 { writer, seen }
    }

    /// Writes `bytes`; `false` once the connection refuses them or `wait` has passed.
    async fn send(&mut self, bytes: &[u8], wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.writer.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    fn ended(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.closed || seen.goaway.is_some()
    }

    /// Waits up to `wait` for a GOAWAY or the end of the connection.
    async fn wait_end(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while !self.ended() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.ended()
    }
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

#[tokio::test]
async fn rapid_reset_closes_the_connection_and_spares_the_upstream() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream).await;
    let before = warm_rss(&proxy).await;
    upstream.set_delay(Duration::from_millis(100));
    let warm = upstream.requests();

    // A well-behaved client on its own connection, timed before and during the attack.
    let bystander = HttpClient::http2(proxy.addr);
    let started = Instant::now();
    assert_eq!(bystander.get("/", &[]).await.unwrap().status, 200);
    let baseline = started.elapsed();
    let during = tokio::spawn({
        let bystander = bystander.clone();
        async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..10 {
                let started = Instant::now();
                assert_eq!(bystander.get("/", &[]).await.unwrap().status, 200);
                slowest = slowest.max(started.elapsed());
            }
            slowest
        }
    });

    // HEADERS then RST_STREAM at once (CVE-2023-44487), 10,000 times at most.
    let (mut client, connection) = h2_client(proxy.addr).await;
    let mut opened = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while opened < 10_000 && !connection.is_finished() && Instant::now() < deadline {
        let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_secs(2), client.ready()).await
        else {
            break;
        };
        client = ready;
        let Ok((_, mut stream)) = client.send_request(get(proxy.addr), false) else {
            break;
        };
        // Lets the connection task write the HEADERS: a stream reset before they leave is
        // dropped by the client without a frame.
        tokio::task::yield_now().await;
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the attacking connection is still open");
    let slowest = during.await.unwrap();
    let reached = upstream.requests() - warm - 11;
    let after = procfs::rss_kib(proxy.pid());
    eprintln!(
        "rapid reset: the client had sent {opened} streams when it saw the close; {reached} \
         reached the upstream; RSS {before} -> {after} KiB; bystander {baseline:?} before, \
         slowest {slowest:?} during"
    );
    assert!(opened < 10_000, "the connection took all {opened} streams");
    assert!(reached <= 1000, "{reached} requests reached the upstream");
    assert!(
        after < before + 5 * 1024 + ALLOCATOR_STEP_KIB,
        "RSS {before} -> {after} KiB"
    );
    // The upstream takes 100 ms; a bystander stalled by the attack would take far longer.
    assert!(
        slowest < Duration::from_secs(2),
        "bystander took {slowest:?}"
    );
    still_serves(proxy.addr).await;
}

#[tokio::test]
async fn streams_cancelled_after_they_went_upstream_close_the_connection() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream).await;
    let before = warm_rss(&proxy).await;
    upstream.set_delay(Duration::from_millis(500));
    let warm = upstream.requests();
    // Rounds of 50 requests, each cancelled once it has reached the upstream: h2's own guard
    // only counts streams reset before they are accepted; the proxy's rule counts these.
    let (mut client, connection) = h2_client(proxy.addr).await;
    let mut opened = 0;
    'rounds: for _ in 0..20 {
        let mut streams = Vec::new();
        for _ in 0..50 {
            let Ok(Ok(ready)) =
                tokio::time::timeout(Duration::from_secs(2), client.clone().ready()).await
            else {
                break 'rounds;
            };
            client = ready;
            let Ok((response, stream)) = client.send_request(get(proxy.addr), true) else {
                break 'rounds;
            };
            streams.push((response, stream));
            opened += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while upstream.requests() < warm + opened && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (_, mut stream) in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if connection.is_finished() {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    let ended =
        ended.unwrap_or_else(|_| panic!("the connection is still open after {opened} streams"));
    assert!(ended.unwrap().is_ok(), "the connection ended in an error");
    let refused = client.ready().await.err();
    assert!(
        refused.as_ref().is_some_and(h2::Error::is_go_away),
        "closed without a GOAWAY: {refused:?}"
    );
    let reached = upstream.requests() - warm;
    let after = procfs::rss_kib(proxy.pid());
    eprintln!(
        "cancel after accept: closed after {opened} streams, {reached} reached the upstream; \
         RSS {before} -> {after} KiB"
    );
    assert!(
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("client cancels most of its streams")),
        "closed by the proxy's premature-reset rule"
    );
    assert!(opened <= 200, "{opened} streams before the close");
    assert!(
        after < before + 5 * 1024 + ALLOCATOR_STEP_KIB,
        "RSS {before} -> {after} KiB"
    );
    still_serves(proxy.addr).await;
}

#[tokio::test]
async fn streams_cancelled_at_their_deadline_on_a_slow_upstream_are_not_an_attack() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream).await;
    upstream.set_delay(Duration::from_secs(3));
    // A gRPC client with a short deadline: each call is cancelled after 1.5 s, while the
    // upstream is still working on it. 150 of them, 75 at a time.
    let (mut client, connection) = h2_client(proxy.addr).await;
    for _ in 0..2 {
        let mut streams = Vec::new();
        for _ in 0..75 {
            client = client.ready().await.unwrap();
            let (response, stream) = client.send_request(get(proxy.addr), true).unwrap();
            streams.push((response, stream));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for (_, mut stream) in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    upstream.set_delay(Duration::ZERO);
    client = client.ready().await.unwrap();
    let (response, _) = client.send_request(get(proxy.addr), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response).await;
    assert!(
        matches!(&response, Ok(Ok(r)) if r.status() == 200),
        "the connection did not survive: {response:?}"
    );
    assert!(!connection.is_finished());
}

/// An `h2` client connection to `addr`, its connection task spawned.
async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

fn get(addr: SocketAddr) -> http::Request<()> {
    http::Request::get(format!("http://{addr}/"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn continuation_floods_are_cut_off() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream).await;
    let before = warm_rss(&proxy).await;
    let warm = upstream.requests();
    // 16,000-byte fragments of literal headers, then the 3-byte variant (empty name and
    // value); h2 allows 5 CONTINUATION frames for a 32 KiB header list.
    let big: Vec<u8> = [0x00, 0x01, b'a', 0x01, b'b'].repeat(3200);
    for fragment in [big, vec![0x00, 0x00, 0x00]] {
        let mut conn = RawH2::connect(proxy.addr).await;
        let mut block = request_block(false);
        block.extend_from_slice(&fragment);
        assert!(
            conn.send(
                &frame(HEADERS, END_STREAM, 1, &block),
                Duration::from_secs(2)
            )
            .await
        );
        let mut sent = 0;
        while sent < 4096 && !conn.ended() {
            let continuation = frame(CONTINUATION, 0, 1, &fragment);
            if !conn.send(&continuation, Duration::from_secs(2)).await {
                break;
            }
            sent += 1;
        }
        assert!(
            conn.wait_end(Duration::from_secs(5)).await,
            "not closed after {sent} frames"
        );
        let seen = conn.seen.lock().unwrap();
        eprintln!(
            "CONTINUATION flood of {}-byte frames: GOAWAY {:?} after {sent} frames were written",
            fragment.len(),
            seen.goaway
        );
        assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    }
    let after = procfs::rss_kib(proxy.pid());
    eprintln!("CONTINUATION floods: RSS {before} -> {after} KiB");
    assert!(
        after < before + 5 * 1024 + ALLOCATOR_STEP_KIB,
        "RSS {before} -> {after} KiB"
    );
    assert_eq!(upstream.requests(), warm);
    still_serves(proxy.addr).await;
}

#[tokio::test]
async fn ping_settings_and_empty_data_floods_stay_bounded() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream).await;
    let before = warm_rss(&proxy).await;

    // PINGs and SETTINGS without reading the acknowledgements: the server answers one at a
    // time, so an unread flood only stalls its own connection.
    for (name, one) in [
        ("PING", frame(PING, 0, 0, &[0; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
    ] {
        let mut conn = RawH2::connect(proxy.addr).await;
        let batch = one.repeat(1000);
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while sent < 100_000 && Instant::now() < deadline {
            if !conn.send(&batch, Duration::from_millis(500)).await {
                break;
            }
            sent += 1000;
        }
        eprintln!(
            "{name} flood: {sent} frames written, ended: {}",
            conn.ended()
        );
        still_serves(proxy.addr).await;
    }

    // 10,000 empty DATA frames on one request: they carry nothing upstream.
    let mut conn = RawH2::connect(proxy.addr).await;
    assert!(
        conn.send(
            &frame(HEADERS, END_HEADERS, 1, &request_block(true)),
            Duration::from_secs(2)
        )
        .await
    );
    let empty = frame(DATA, 0, 1, &[]).repeat(10_000);
    let flooded = conn.send(&empty, Duration::from_secs(5)).await;
    let last = frame(DATA, END_STREAM, 1, b"x");
    let finished = flooded && conn.send(&last, Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn.ended() && conn.seen.lock().unwrap().responses == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = format!("{:?}", conn.seen.lock().unwrap());
    eprintln!("empty DATA flood: written {flooded}, finished {finished}, server: {seen}");
    assert!(
        conn.ended() || conn.seen.lock().unwrap().responses == 1,
        "{seen}"
    );

    let after = procfs::rss_kib(proxy.pid());
    eprintln!("PING, SETTINGS and empty DATA floods: RSS {before} -> {after} KiB");
    assert!(
        after < before + 5 * 1024 + ALLOCATOR_STEP_KIB,
        "RSS {before} -> {after} KiB"
    );
    still_serves(proxy.addr).await;
}

#[tokio::test]
async fn reset_provoking_frames_end_the_connection() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy_to(&upstream).await;
    let before = warm_rss(&proxy).await;
    upstream.set_delay(Duration::from_millis(200));
    let warm = upstream.requests();
    // Each stream opens a request without a `:path`, a malformed request the
    // server must answer with RST_STREAM; 2,000 of them, at most. hyper's limit on such
    // resets (1,024) must end the connection.
    let mut conn = RawH2::connect(proxy.addr).await;
    let mut sent = 0;
    let mut id = 1;
    while sent < 2000 && !conn.ended() {
        let mut block = request_block(false);
        block.retain(|b| *b != 0x84);
        let frames = frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
        if !conn.send(&frames, Duration::from_secs(2)).await {
            break;
        }
        sent += 1;
        id += 2;
    }
    assert!(
        conn.wait_end(Duration::from_secs(5)).await,
        "still open after {sent} streams"
    );
    let reached = upstream.requests() - warm;
    let after = procfs::rss_kib(proxy.pid());
    {
        let seen = conn.seen.lock().unwrap();
        eprintln!(
            "reset-provoking frames: {sent} streams written ({} RST_STREAM, GOAWAY {:?}); \
             {reached} reached the upstream; RSS {before} -> {after} KiB",
            seen.resets.len(),
            seen.goaway
        );
        assert!(
            seen.resets.len() <= 1024,
            "{} streams reset",
            seen.resets.len()
        );
        assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
        assert_eq!(
            reached, 0,
            "{reached} malformed requests reached the upstream"
        );
        assert!(
            after < before + 5 * 1024 + ALLOCATOR_STEP_KIB,
            "RSS {before} -> {after} KiB"
        );
    }
    still_serves(proxy.addr).await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let upstream = RecordingUpstream::start().await;
    upstream.set_delay(Duration::from_millis(1000));
    let proxy = proxy_to(&upstream).await;
    let mut conn = RawH2::connect(proxy.addr).await;
    let streams: Vec<u8> = (0..250u32)
        .flat_map(|i| {
            frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * i + 1,
                &request_block(false),
            )
        })
        .collect();
    assert!(conn.send(&streams, Duration::from_secs(2)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = |seen: &Seen| seen.responses + seen.resets.len() >= 250 || seen.closed;
    while !done(&conn.seen.lock().unwrap()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = conn.seen.lock().unwrap();
    let refused = seen.resets.iter().filter(|c| **c == REFUSED_STREAM).count();
    eprintln!(
        "250 streams at once: {} answered, {refused} refused, {} reached the upstream",
        seen.responses,
        upstream.requests()
    );
    assert!(
        upstream.requests() <= 100,
        "{} reached the upstream",
        upstream.requests()
    );
    assert_eq!(refused, 150, "{seen:?}");
    assert_eq!(seen.responses, 100, "{seen:?}");
}
