//! The load's target URL, parsed once into what every request reuses.

use std::net::SocketAddr;

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};

/// Why a target URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a URL at all.
    #[error("not a URL: {0}")]
    Parse(#[from] http::uri::InvalidUri),
    /// Only plain `http://` is spoken (h2c for HTTP/2).
    #[error("only http:// targets are supported, not {0:?}")]
    Scheme(String),
    /// The URL has no `host:port`.
    #[error("the target URL has no host")]
    NoHost,
    /// The host did not resolve to any address.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The host as written.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

/// A parsed `http://host:port/path` target.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given, for reports.
    pub url: String,
    /// Where connections go.
    pub addr: SocketAddr,
    /// The `Host` header of HTTP/1.1 requests and `:authority` of HTTP/2 ones.
    authority: Authority,
    /// The path every request asks for.
    path: PathAndQuery,
    /// Made once so that each request only clones it.
    host_header: HeaderValue,
}

impl Target {
    /// Parses `url` and resolves its host (once: a load is aimed at one address).
    pub async fn resolve(url: &str) -> Result<Target, TargetError> {
        let uri: Uri = url.parse()?;
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => {}
            Some(other) => return Err(TargetError::Scheme(other.to_string())),
            None => return Err(TargetError::Scheme(String::new())),
        }
        let authority = uri.authority().ok_or(TargetError::NoHost)?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| TargetError::Resolve {
                host: host.to_string(),
                reason: err.to_string(),
            })?
            .next()
            .ok_or_else(|| TargetError::Resolve {
                host: host.to_string(),
                reason: "no address".to_string(),
            })?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // An authority is always a valid header value.
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| TargetError::NoHost)?;
        Ok(Target {
            url: url.to_string(),
            addr,
            authority,
            path,
            host_header,
        })
    }

    /// A target for an address already known, asking for `/`.
    pub fn from_addr(addr: SocketAddr) -> Target {
        let authority: Authority = addr
            .to_string()
            .parse()
            .expect("a socket address is a valid authority");
        let host_header =
            HeaderValue::from_str(authority.as_str()).expect("an authority is a valid header");
        Target {
            url: format!("http://{addr}/"),
            addr,
            authority,
            path: PathAndQuery::from_static("/"),
            host_header,
        }
    }

    /// The path (and query) every request asks for.
    pub(crate) fn path(&self) -> &PathAndQuery {
        &self.path
    }

    /// The `host:port` of the `Host` header.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// A `GET` request for the target: origin-form with `Host` for HTTP/1.1, absolute-form
    /// (which becomes `:scheme` and `:authority`) for HTTP/2.
    pub(crate) fn request<B>(&self, http2: bool, body: B) -> Request<B> {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(self.path.clone());
        if http2 {
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(self.authority.clone());
        }
        let mut request = Request::new(body);
        // The parts come from a URI that parsed, so they form one again.
        *request.uri_mut() = Uri::from_parts(parts).expect("parts of a valid URI");
        if !http2 {
            request
                .headers_mut()
                .insert(http::header::HOST, self.host_header.clone());
        }
        request
    }
}
