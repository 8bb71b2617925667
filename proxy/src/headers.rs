//! Header rewriting at the proxy boundary: hop-by-hop headers removed both ways (RFC 9110
//! §7.6.1), `X-Forwarded-*` and `Via` added, and the request put in the form the upstream's
//! protocol wants (origin form and `Host` for HTTP/1.1, `:authority` for HTTP/2).

use std::net::IpAddr;

use http::header::{CONNECTION, COOKIE, HOST, HeaderName, HeaderValue, TE, VIA};
use http::header::{Entry, OccupiedEntry};
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme, Uri};
use http::{HeaderMap, Request, Version, request, response};

use crate::config::UpstreamAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1). Names as `&str`,
/// so that both a `HeaderMap` and a head held as bytes compare against the one list.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];

/// The client's forwarding fields, which the proxy replaces, or appends to for a trusted peer.
pub const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Besides [`FORWARDING`], the fields a `Connection` option may not remove.
const END_TO_END: [&str; 3] = ["host", "via", "trailer"];

/// The proxy's own `Via` entry on an HTTP/1.1 hop.
pub const VIA_HTTP11: &str = "1.1 canary-proxy";

/// Whether `name`, as raw bytes of any case, is one of `names` (for heads held as bytes).
pub fn listed(names: &[&str], name: &[u8]) -> bool {
    names
        .iter()
        .any(|known| known.as_bytes().eq_ignore_ascii_case(name))
}

/// How the client reached the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Cleartext.
    Http,
    /// TLS.
    Https,
}

impl Scheme {
    fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// Rewrites a client request's head for the upstream, whatever its protocol. `client` is the
/// client's address as a header value. Unless `trusted` (the connection comes from a trusted
/// proxy in front) the client's own `X-Forwarded-*` and `Forwarded` are discarded, since
/// anyone can send them; otherwise they are kept and appended to.
pub fn to_upstream(head: &mut request::Parts, client: &HeaderValue, scheme: Scheme, trusted: bool) {
    let via = via_value(head.version);
    // One pass over the names: most requests carry none of the headers looked for below.
    let (mut hop, mut forwarded) = (false, false);
    for name in head.headers.keys() {
        hop |= is_hop_by_hop(name);
        forwarded |= is_forwarding(name);
    }
    if forwarded && !trusted {
        for name in FORWARDING {
            head.headers.remove(name);
        }
    }
    if hop {
        // `TE: trailers` is the one TE an HTTP/2 upstream must see (gRPC requires it).
        let te_trailers = head.headers.get(TE).is_some_and(|v| v == "trailers");
        strip_hop_by_hop(&mut head.headers);
        if te_trailers {
            head.headers
                .insert(TE, HeaderValue::from_static("trailers"));
        }
    }

    // The target's authority (HTTP/2 `:authority`, or an absolute-form HTTP/1.1 target) wins
    // over a `Host` header, as RFC 9112 §3.2.2 says.
    let authority = head
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(authority) = authority {
        head.headers.insert(HOST, authority);
    }
    let keep_forwarded = forwarded && trusted;
    if let Some(host) = head.headers.get(HOST).cloned()
        && !(keep_forwarded && head.headers.contains_key(&X_FORWARDED_HOST))
    {
        head.headers.insert(&X_FORWARDED_HOST, host);
    }
    if keep_forwarded {
        append(&mut head.headers, X_FORWARDED_FOR.clone(), client.clone());
    } else {
        head.headers.insert(&X_FORWARDED_FOR, client.clone());
    }
    if !(keep_forwarded && head.headers.contains_key(&X_FORWARDED_PROTO)) {
        head.headers.insert(&X_FORWARDED_PROTO, scheme.value());
    }
    append(&mut head.headers, VIA, via);
}

/// The client's address as the value `X-Forwarded-For` carries (IPv4-mapped IPv6 as IPv4);
/// made once per connection.
pub fn client_value(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    };
    HeaderValue::from_str(&text).expect("an IP address is a valid header value")
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether a `Connection` option naming `name` (raw bytes, any case) must be ignored: the
/// proxy must send that field on.
pub fn is_end_to_end(name: &[u8]) -> bool {
    listed(&END_TO_END, name) || listed(&FORWARDING, name)
}

fn is_forwarding(name: &HeaderName) -> bool {
    FORWARDING.contains(&name.as_str())
}

/// Puts a request in HTTP/1.1 form: origin-form target, `Host` header, no `TE`, and HTTP/2's
/// separate `cookie` fields joined into one (RFC 9113 §8.2.3).
pub fn for_http1<B>(req: &mut Request<B>) {
    req.headers_mut().remove(TE);
    join_cookies(req.headers_mut());
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        if !req.headers().contains_key(HOST)
            && let Some(Ok(host)) = req
                .uri()
                .authority()
                .map(|a| HeaderValue::from_str(a.as_str()))
        {
            req.headers_mut().insert(HOST, host);
        }
        *req.uri_mut() = Uri::from(path_of(req.uri()));
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Puts a request in HTTP/2 form: `http://HOST/path` (the client's host, else the upstream's)
/// becomes `:scheme`, `:authority` and `:path`; no `Host` header.
pub fn for_h2<B>(req: &mut Request<B>, upstream: &UpstreamAddr) {
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned())
        .unwrap_or_else(|| upstream.authority.clone());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(UriScheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_of(req.uri()));
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// Joins several `cookie` fields into one with `; `, as an HTTP/1.1 server expects one line.
fn join_cookies(headers: &mut HeaderMap) {
    let Entry::Occupied(mut entry) = headers.entry(COOKIE) else {
        return;
    };
    if entry.iter().nth(1).is_none() {
        return;
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined(&entry, b"; ")) {
        entry.insert(value);
    }
}

fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// Rewrites an upstream response's head for the client.
pub fn to_client(head: &mut response::Parts) {
    if head.headers.keys().any(is_hop_by_hop) {
        strip_hop_by_hop(&mut head.headers);
    }
    append(&mut head.headers, VIA, via_value(Version::HTTP_11));
}

/// Removes the headers that describe one connection, not the message, and those named in
/// `Connection`, except the ones the proxy itself must send on (a `Connection` option only
/// names hop-by-hop fields, RFC 9110 §7.6.1). `Trailer` describes the message and stays
/// (§6.6.2).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !is_end_to_end(name.as_str().as_bytes()))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn via_value(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_2 => "2 canary-proxy",
        Version::HTTP_10 => "1.0 canary-proxy",
        _ => VIA_HTTP11,
    })
}

/// Appends `value` to a comma-list header, as one field: several field lines of the list
/// are one list (RFC 9110 §5.3), so all of them are kept, in order.
fn append(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(entry) => {
            entry.insert(value);
        }
        Entry::Occupied(mut entry) => {
            let mut joined = joined(&entry, b", ");
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                entry.insert(v);
            }
        }
    }
}

/// The field lines of `entry` as one value, separated by `separator`.
fn joined(entry: &OccupiedEntry<'_, HeaderValue>, separator: &[u8]) -> Vec<u8> {
    let mut joined = Vec::new();
    for value in entry.iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(separator);
        }
        joined.extend_from_slice(value.as_bytes());
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn request_hop_by_hop_removed_and_forwarding_added() {
        let req = Request::get("/p?q=1")
            .header("host", "shop.example")
            .header("connection", "close, X-Secret")
            .header("x-secret", "1")
            .header("keep-alive", "300")
            .header("proxy-connection", "keep-alive")
            .header("te", "gzip")
            .header("upgrade", "foo")
            .header("proxy-authorization", "Basic x")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        let (mut head, ()) = req.into_parts();
        to_upstream(
            &mut head,
            &client_value("10.0.0.9".parse().unwrap()),
            Scheme::Http,
            true,
        );
        let mut req = Request::from_parts(head, ());
        for_http1(&mut req);
        let (head, ()) = req.into_parts();
        let h = &head.headers;
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(h["host"], "shop.example");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        // Set by the trusted proxy in front.
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["via"], "1.1 canary-proxy");
        assert_eq!(head.uri, "/p?q=1");
    }

    #[test]
    fn http2_authority_becomes_host_and_uri_origin_form() {
        let req = Request::get("http://api.example:8080/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let (mut head, ()) = req.into_parts();
        to_upstream(
            &mut head,
            &client_value("::ffff:127.0.0.1".parse().unwrap()),
            Scheme::Https,
            false,
        );
        assert_eq!(head.headers["host"], "api.example:8080");
        assert_eq!(head.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(head.headers["x-forwarded-proto"], "https");
        assert_eq!(head.headers["via"], "2 canary-proxy");
        let mut req = Request::from_parts(head, ());
        for_http1(&mut req);
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn h2_upstream_form_keeps_te_trailers_and_moves_host_to_authority() {
        let req = Request::post("/pkg.Svc/Call")
            .header("host", "grpc.example")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (mut head, ()) = req.into_parts();
        to_upstream(
            &mut head,
            &client_value("10.0.0.1".parse().unwrap()),
            Scheme::Http,
            false,
        );
        let mut req = Request::from_parts(head, ());
        let upstream = UpstreamAddr {
            authority: "10.1.1.1:50051".parse().unwrap(),
        };
        for_h2(&mut req, &upstream);
        assert_eq!(req.uri(), "http://grpc.example/pkg.Svc/Call");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(!req.headers().contains_key("host"));
        assert_eq!(req.headers()["te"], "trailers");
        // And back, when a request that never left is re-sent to an HTTP/1.1 stable.
        for_http1(&mut req);
        assert_eq!(req.uri(), "/pkg.Svc/Call");
        assert_eq!(req.headers()["host"], "grpc.example");
        assert!(!req.headers().contains_key("te"));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let req = Request::get("http://a.example/x")
            .header("host", "b.example")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=1.2.3.4")
            .body(())
            .unwrap();
        let (mut head, ()) = req.into_parts();
        to_upstream(
            &mut head,
            &client_value("127.0.0.2".parse().unwrap()),
            Scheme::Http,
            false,
        );
        let h = &head.headers;
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["host"], "a.example",
            "the absolute-form authority decides"
        );
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn response_hop_by_hop_removed() {
        let res = http::Response::builder()
            .header("connection", "x-backend")
            .header("x-backend", "1")
            .header("keep-alive", "timeout=5")
            .header("via", "1.1 upstream")
            .body(())
            .unwrap();
        let (mut head, ()) = res.into_parts();
        to_client(&mut head);
        assert!(!head.headers.contains_key("x-backend"));
        assert!(!head.headers.contains_key("keep-alive"));
        assert_eq!(head.headers["via"], "1.1 upstream, 1.1 canary-proxy");
    }

    #[test]
    fn several_forwarded_for_lines_are_one_list() {
        let req = Request::get("/")
            .header("host", "x")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2")
            .body(())
            .unwrap();
        let (mut head, ()) = req.into_parts();
        let client = client_value("127.0.0.1".parse().unwrap());
        to_upstream(&mut head, &client, Scheme::Http, true);
        let all: Vec<_> = head.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["1.1.1.1, 2.2.2.2, 127.0.0.1"]);
    }

    #[test]
    fn connection_options_never_remove_what_the_proxy_must_send() {
        let req = Request::get("/")
            .header("host", "example")
            .header("connection", "host, via, x-forwarded-host, trailer, close")
            .header("trailer", "x-checksum")
            .body(())
            .unwrap();
        let (mut head, ()) = req.into_parts();
        let client = client_value("127.0.0.1".parse().unwrap());
        to_upstream(&mut head, &client, Scheme::Http, false);
        let h = &head.headers;
        assert_eq!(h["host"], "example");
        assert_eq!(h["x-forwarded-host"], "example");
        assert_eq!(h["via"], "1.1 canary-proxy");
        assert_eq!(h["trailer"], "x-checksum");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn http2_cookie_fields_are_joined_for_http1() {
        let mut req = Request::get("http://x/")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        for_http1(&mut req);
        let all: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }
}
