//! The API server's service proxy, `GET /api/v1/namespaces/NS/services/NAME:PORT/proxy/PATH`,
//! as `kubectl get --raw` and the `kubectl canary` plugin use it: forwarded to the address a
//! test registered for that Service port; an unregistered one answers 503, as a Service
//! without ready endpoints does.

use std::net::SocketAddr;

use super::Shared;
use super::status::ApiError;
use crate::client::HttpClient;

/// The Service, port and path a service-proxy path names.
pub(crate) struct ProxyPath {
    /// `NS/NAME:PORT`.
    service: String,
    /// The path and query forwarded.
    rest: String,
}

/// Parses a service-proxy path; `None` for any other path.
pub(crate) fn parse(path_and_query: &str) -> Option<ProxyPath> {
    let rest = path_and_query.strip_prefix("/api/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once("/services/")?;
    let (service, rest) = rest.split_once("/proxy")?;
    let rest = if rest.is_empty() { "/" } else { rest };
    Some(ProxyPath {
        service: format!("{namespace}/{service}"),
        rest: rest.to_owned(),
    })
}

/// Forwards a GET to the registered address: the backend's status and body.
pub(crate) async fn forward(shared: &Shared, path: &ProxyPath) -> Result<(u16, Vec<u8>), ApiError> {
    let Some(addr) = shared.service_backend(&path.service) else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!("no endpoints available for service \"{}\"", path.service),
        ));
    };
    let reply = HttpClient::http1(addr)
        .get(&path.rest, &[])
        .await
        .map_err(|e| ApiError::new(503, "ServiceUnavailable", e))?;
    Ok((reply.status.as_u16(), reply.body.to_vec()))
}

/// The key a backend is registered under.
pub(crate) fn key(namespace: &str, service: &str, port: &str) -> String {
    format!("{namespace}/{service}:{port}")
}

/// What [`Shared`] keeps: the registered backends.
pub(crate) type Backends = std::collections::HashMap<String, SocketAddr>;
