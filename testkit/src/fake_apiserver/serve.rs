//! Serving: binding (again, after a stop), the accept loop, optional TLS, the kubeconfig.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

use super::{Shared, routes};

/// Binds with `SO_REUSEADDR`, so a restart can take the port back from its TIME_WAIT sockets.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Accepts connections until aborted; the connections live in a `JoinSet`, so aborting this
/// task drops them all, as a dying API server would.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: give the system a moment.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = shared.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        // A failed handshake is the client's problem; it sees the error.
                        Some(tls) => if let Ok(stream) = tls.accept(stream).await {
                            serve_connection(stream, shared).await;
                        },
                        None => serve_connection(stream, shared).await,
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| routes::handle(shared.clone(), request));
    // A client hanging up mid-watch is an ordinary end of a connection here.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A self-signed certificate for 127.0.0.1 and localhost, its PEM written to `ca_path`.
pub(crate) fn tls_acceptor(ca_path: &Path) -> TlsAcceptor {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
    std::fs::write(ca_path, certified.cert.pem()).expect("write ca.crt");
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("the generated key matches its certificate");
    // HTTP/1.1 only, as served here; clients offering h2 fall back to it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

pub(crate) fn kubeconfig(
    scheme: &str,
    addr: SocketAddr,
    certificate_authority: Option<&Path>,
) -> String {
    let authority = certificate_authority
        .map(|path| format!("    certificate-authority: {}\n", path.display()))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {scheme}://{addr}\n{authority}\
         users:\n- name: fake\n  user:\n    token: fake-token\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
         current-context: fake\n"
    )
}
