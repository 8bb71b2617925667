//! TLS on the data listener (rustls, ALPN `h2` and `http/1.1`), with the certificate and key
//! re-read when their files change, so a renewed Kubernetes TLS Secret is served without a
//! restart. A pair that does not load keeps the previous one serving.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

/// Time between two reads of the certificate files.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    path: String,
    reason: String,
}

/// The certificate being served, swapped when its files change.
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// Loads the PEM certificate chain and private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Certificates>, TlsError> {
        let key = read_pair(cert_path, key_path)?.1;
        Ok(Arc::new(Certificates {
            current: ArcSwap::from_pointee(key),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        }))
    }

    /// An acceptor that serves the current certificate with ALPN `h2` and `http/1.1`.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Re-reads the files when their content changes, until `shutdown` resolves.
    pub async fn follow(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut seen = self.contents();
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                () = &mut shutdown => return,
            }
            let now = self.contents();
            if now == seen {
                continue;
            }
            seen = now;
            match read_pair(&self.cert_path, &self.key_path) {
                Ok((chain, key)) => {
                    self.current.store(Arc::new(key));
                    info!(path = %self.cert_path.display(), certificates = chain, "TLS certificate reloaded");
                }
                Err(e) => {
                    error!(error = %e, "TLS certificate not reloaded, keeping the current one");
                }
            }
        }
    }

    fn contents(&self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (
            std::fs::read(&self.cert_path).ok(),
            std::fs::read(&self.key_path).ok(),
        )
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(usize, CertifiedKey), TlsError> {
    let fail = |path: &Path, reason: String| TlsError {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| fail(cert_path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(fail(cert_path, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| fail(key_path, e.to_string()))?;
    let count = chain.len();
    let certified = CertifiedKey::from_der(chain, key, &default_provider())
        .map_err(|e| fail(key_path, format!("does not fit the certificate: {e}")))?;
    Ok((count, certified))
}
