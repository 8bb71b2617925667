//! Admission: what a request must satisfy before it is routed anywhere. hyper has already
//! refused broken framing (conflicting or malformed `Content-Length`, a `Transfer-Encoding`
//! that does not end in `chunked`); these are the checks a proxy adds on top, each answered
//! by the proxy itself, so a refused request never reaches an upstream.

use http::header::{CONTENT_LENGTH, HOST};
use http::{Method, StatusCode, Version, request};

use crate::config::ClientPolicy;

/// The longest request target accepted (NGINX's default buffer for the request line).
pub const MAX_URI: usize = 8 * 1024;
/// The longest single header value accepted (NGINX rejects header lines over 8 KiB).
pub const MAX_HEADER_VALUE: usize = 8 * 1024;

/// A refused request: the status and the short text the client gets.
pub type Refusal = (StatusCode, &'static str);

/// Checks `head` and drops headers the proxy never forwards. On refusal, nothing was sent.
pub fn admit(head: &mut request::Parts, policy: &ClientPolicy) -> Result<(), Refusal> {
    if head.method == Method::TRACE {
        // TRACE would reflect headers (cookies included) back to a script.
        return Err((StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed\n"));
    }
    if head.method == Method::CONNECT {
        // A reverse proxy opens no tunnels to arbitrary hosts; refused at once, not left
        // waiting for an upstream that would not know what to do with it.
        return Err((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not allowed\n"));
    }
    let uri = &head.uri;
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, str::len);
    if target > MAX_URI {
        return Err((StatusCode::URI_TOO_LONG, "request target too long\n"));
    }
    let hosts = head.headers.get_all(HOST).iter().count();
    let host_ok = match (head.version, head.uri.authority().is_some()) {
        // HTTP/1.1 needs exactly one Host, unless the target carries the authority.
        (Version::HTTP_11, false) => hosts == 1,
        _ => hosts <= 1,
    };
    if !host_ok {
        return Err((StatusCode::BAD_REQUEST, "missing or repeated Host header\n"));
    }
    let mut underscored = false;
    for (name, value) in &head.headers {
        if value.len() > MAX_HEADER_VALUE {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header too large\n",
            ));
        }
        underscored |= name.as_str().contains('_');
    }
    if underscored {
        // `X_Auth` and `X-Auth` are one header to some frameworks and two to others: drop
        // the ambiguous spelling, as NGINX does by default.
        let names: Vec<_> = head
            .headers
            .keys()
            .filter(|n| n.as_str().contains('_'))
            .cloned()
            .collect();
        names.iter().for_each(|n| {
            head.headers.remove(n);
        });
    }
    if let Some(limit) = policy.max_body {
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Request;

    use super::*;

    fn check(req: Request<()>) -> Result<request::Parts, StatusCode> {
        let policy = ClientPolicy {
            max_body: Some(1024),
            body_timeout: Duration::from_secs(1),
            trusted_hops: 0,
            trusted_cidrs: Vec::new(),
            idle_timeout: Duration::from_secs(1),
            tunnel_idle: Duration::from_secs(1),
            max_tunnels: None,
        };
        let (mut head, ()) = req.into_parts();
        admit(&mut head, &policy).map(|()| head).map_err(|(s, _)| s)
    }

    #[test]
    fn refusals() {
        let get = || Request::get("/").header("host", "a");
        assert!(check(get().body(()).unwrap()).is_ok());
        assert_eq!(
            check(
                Request::builder()
                    .method("TRACE")
                    .uri("/")
                    .header("host", "a")
                    .body(())
                    .unwrap()
            )
            .unwrap_err(),
            405
        );
        assert_eq!(
            check(
                Request::builder()
                    .method("CONNECT")
                    .uri("example.com:443")
                    .header("host", "example.com:443")
                    .body(())
                    .unwrap()
            )
            .unwrap_err(),
            405
        );
        let long = format!("/{}", "a".repeat(MAX_URI));
        assert_eq!(
            check(Request::get(long).header("host", "a").body(()).unwrap()).unwrap_err(),
            414
        );
        assert_eq!(check(Request::get("/").body(()).unwrap()).unwrap_err(), 400);
        assert_eq!(
            check(get().header("host", "b").body(()).unwrap()).unwrap_err(),
            400
        );
        assert_eq!(
            check(
                get()
                    .header("x-big", "a".repeat(9 * 1024))
                    .body(())
                    .unwrap()
            )
            .unwrap_err(),
            431
        );
        assert_eq!(
            check(get().header("content-length", "2048").body(()).unwrap()).unwrap_err(),
            413
        );
        // HTTP/2 carries the authority in the target.
        let h2 = Request::get("http://a/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert!(check(h2).is_ok());
    }

    #[test]
    fn underscored_headers_are_dropped() {
        let head = check(
            Request::get("/")
                .header("host", "a")
                .header("x_auth", "1")
                .header("x-auth", "2")
                .body(())
                .unwrap(),
        )
        .unwrap();
        assert!(!head.headers.contains_key("x_auth"));
        assert_eq!(head.headers["x-auth"], "2");
    }
}
