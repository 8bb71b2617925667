//! A whole client connection's bytes into the proxy, over an in-memory pipe: HTTP/1.1 or
//! HTTP/2 parsing, admission, routing, header rewriting, the request body, and a real
//! upstream exchange on loopback. Short timeouts keep a stalled input from holding a run.
//! Each input goes through both HTTP/1.1 paths: hyper's, then the lean one (which hands what
//! it does not serve to hyper with the bytes it has read).

#![no_main]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use canary_proxy::headers::Scheme;
use canary_proxy::lean;
use canary_proxy::listener::{ClientConn, Limits, http_builder, serve_connection, shutdown_pair};
use canary_proxy::metrics::Metrics;
use canary_proxy::runtime::Runtime;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One thread runs the proxy's side, the upstream and the client, input after input.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

/// The proxy's state and connection settings, shared by every input.
static PROXY: LazyLock<(Arc<Runtime>, Arc<auto::Builder<TokioExecutor>>, Limits)> = LazyLock::new(|| {
    let upstream = RT.block_on(upstream());
    let runtime = Runtime::new(Metrics::new().expect("metrics"), "fuzz".into());
    let keys: BTreeMap<String, String> = [
        ("blue.upstream", upstream.to_string()),
        ("green.upstream", upstream.to_string()),
        ("canary-weight", "50".into()),
        ("canary-by-header", "x-canary".into()),
        ("timeout.request", "200ms".into()),
        ("timeout.client-body", "100ms".into()),
        ("limit.request-body", "64k".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    runtime.apply(&keys, "fuzz", |_| None).expect("config");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let mut builder = http_builder(limits);
    // The input ends with a half-close: pipelined requests after the first are still served.
    builder.http1().half_close(true);
    (runtime, Arc::new(builder), limits)
});

/// An upstream that reads each request's body and answers 200.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let _ = drain(req.into_body()).await;
                    Ok::<_, Infallible>(http::Response::new(String::from("ok")))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Reads a body to its end without another dependency.
async fn drain(mut body: hyper::body::Incoming) -> Result<(), hyper::Error> {
    use hyper::body::Body;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        frame?;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    for lean in [false, true] {
        run(data, lean);
    }
});

/// Feeds `data` to one connection, served by hyper or by the lean path.
fn run(data: &[u8], lean: bool) {
    let (runtime, builder, limits) = &*PROXY;
    RT.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_shutdown, drain) = shutdown_pair(Default::default());
        let conn = ClientConn::new(
            runtime.clone(),
            "127.0.0.1:9".parse().unwrap(),
            Scheme::Http,
            drain,
        );
        let serving = if lean {
            let idle = Duration::from_millis(100);
            tokio::spawn(lean::serve(server, conn, builder.clone(), *limits, idle, None))
        } else {
            tokio::spawn(serve_connection(
                TokioIo::new(server),
                conn,
                builder.clone(),
            ))
        };
        let (mut read, mut write) = tokio::io::split(client);
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&input).await;
            let _ = write.shutdown().await;
        });
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), read.read_to_end(&mut response)).await;
        writer.abort();
        serving.abort();
    });
}
