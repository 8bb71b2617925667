//! The client's request head on the lean path (a body, if any, has a `Content-Length`): parsed once with `httparse` into spans of the
//! connection's buffer, checked against the lean subset (anything else goes to hyper, which
//! answers it as it always has), and written out for the upstream by copying those spans
//! minus the hop-by-hop fields, plus `X-Forwarded-*` and `Via` as [`headers::to_upstream`]
//! sets them.
//!
//! [`headers::to_upstream`]: crate::headers::to_upstream

use std::io::Write;

use http::HeaderName;

use crate::admission::{MAX_HEADER_VALUE, MAX_URI};
use crate::headers::{FORWARDING, HOP_BY_HOP, VIA_HTTP11, listed};
use crate::route::HeaderLookup;

/// Header fields parsed at most: hyper's own default, and `Limits::max_headers`'s.
pub const MAX_FIELDS: usize = 100;

/// A byte range of the connection's buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `part`, a slice of `buf`, lies in it.
    pub(super) fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes it covers in `buf`.
    pub fn in_buf(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// What a field means to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Forwarded as it is.
    Plain,
    /// `Connection` (`keep-alive` or `close` only): not forwarded.
    Connection,
    /// `X-Forwarded-*` or `Forwarded` from an untrusted client: replaced.
    Forwarding,
    /// `Via`: the proxy's own is appended to it.
    Via,
    /// `Cookie`: read by routing, forwarded.
    Cookie,
}

/// One header field.
#[derive(Clone, Copy, Debug)]
struct Field {
    name: Span,
    value: Span,
    kind: Kind,
}

/// A parsed request head in the lean subset.
#[derive(Debug, Default)]
pub struct Head {
    /// Bytes of the head, its final CRLF included.
    pub len: usize,
    method: Span,
    target: Span,
    host: Span,
    fields: Vec<Field>,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// A `HEAD` request: the response has no body.
    pub head_method: bool,
    /// Safe to send twice (GET, HEAD, OPTIONS, or with an `Idempotency-Key`; never a body).
    pub idempotent: bool,
    /// Bytes of the body, from `Content-Length`.
    pub body: u64,
}

/// What the bytes read so far make of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head in the lean subset, in the [`Head`] given.
    Lean,
    /// Not a whole head yet.
    Partial,
    /// Anything else: hyper takes the connection from here.
    Fallback,
}

/// The HTTP/2 client preface, which hyper's server detects.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Head {
    /// Parses `buf` into `self`. `trusted`: the client's forwarding headers are believed
    /// (those requests are left to hyper, which appends to them); `max_body`: a body declared
    /// larger is left to hyper, which refuses it.
    pub fn parse(&mut self, buf: &[u8], trusted: bool, max_body: Option<u64>) -> Parsed {
        let preface = buf.len().min(H2_PREFACE.len());
        if preface > 0 && buf[..preface] == H2_PREFACE[..preface] {
            return Parsed::Fallback;
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Fallback,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Fallback;
        };
        if matches!(method, "TRACE" | "CONNECT")
            || !target.starts_with('/')
            || target.len() > MAX_URI
            || !target.bytes().all(plain_target_byte)
        {
            return Parsed::Fallback;
        }
        *self = Head {
            len,
            method: Span::of(buf, method.as_bytes()),
            target: Span::of(buf, target.as_bytes()),
            fields: std::mem::take(&mut self.fields),
            head_method: method == "HEAD",
            idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS"),
            ..Head::default()
        };
        self.fields.clear();
        let (mut hosts, mut cookies, mut lengths) = (0, 0, 0);
        for field in req.headers.iter() {
            let (name, value) = (field.name.as_bytes(), field.value);
            if name.contains(&b'_') || value.len() > MAX_HEADER_VALUE {
                return Parsed::Fallback;
            }
            let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
            let kind = if is("host") {
                hosts += 1;
                self.host = Span::of(buf, value);
                Kind::Plain
            } else if is("content-length") {
                lengths += 1;
                // Digits only: hyper refuses `+5`, an empty value and the like.
                let Some(length) = digits(value) else {
                    return Parsed::Fallback;
                };
                if max_body.is_some_and(|max| length > max) {
                    return Parsed::Fallback;
                }
                self.body = length;
                Kind::Plain
            } else if is("connection") {
                let value = value.trim_ascii();
                if value.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if !value.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Fallback;
                }
                Kind::Connection
            } else if listed(&FORWARDING, name) {
                if trusted {
                    return Parsed::Fallback;
                }
                Kind::Forwarding
            } else if is("via") {
                Kind::Via
            } else if is("cookie") {
                cookies += 1;
                Kind::Cookie
            } else if listed(&HOP_BY_HOP, name) || is("expect") || is("http2-settings") {
                return Parsed::Fallback;
            } else {
                if is("idempotency-key") {
                    self.idempotent = true;
                }
                Kind::Plain
            };
            self.fields.push(Field {
                name: Span::of(buf, name),
                value: Span::of(buf, value),
                kind,
            });
        }
        // One Host (HTTP/1.1 needs it; two are refused), one Cookie line (an HTTP/2 client's
        // several are joined by hyper's path), at most one Content-Length.
        if hosts != 1 || cookies > 1 || lengths > 1 {
            return Parsed::Fallback;
        }
        if self.body > 0 {
            self.idempotent = false;
        }
        Parsed::Lean
    }

    /// Writes the head the upstream gets into `out`: the request line and fields as the
    /// client sent them (names in lower case, as hyper writes them), without `Connection` and
    /// the client's forwarding fields, with `X-Forwarded-Host`, `-For`, `-Proto` and `Via`.
    pub fn write_upstream(&self, buf: &[u8], client: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.method.in_buf(buf));
        out.push(b' ');
        out.extend_from_slice(self.target.in_buf(buf));
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for field in &self.fields {
            match field.kind {
                Kind::Plain | Kind::Cookie => {
                    write_field(out, field.name.in_buf(buf), field.value.in_buf(buf));
                }
                Kind::Connection | Kind::Forwarding | Kind::Via => {}
            }
        }
        write_field(out, b"x-forwarded-host", self.host.in_buf(buf));
        write_field(out, b"x-forwarded-for", client);
        out.extend_from_slice(b"x-forwarded-proto: http\r\nvia: ");
        // Several `Via` lines are one list: joined, with the proxy's own last.
        for field in self.fields.iter().filter(|f| f.kind == Kind::Via) {
            out.extend_from_slice(field.value.in_buf(buf));
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(VIA_HTTP11.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }

    /// This head's fields as routing reads them.
    pub fn lookup<'a>(&'a self, buf: &'a [u8]) -> Fields<'a> {
        Fields { head: self, buf }
    }
}

/// Writes `name: value` with the name in lower case.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `value` as decimal digits.
pub fn write_number(out: &mut Vec<u8>, value: u64) {
    let _ = write!(out, "{value}");
}

/// A `Content-Length` value: one decimal number, nothing else.
pub fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A request target byte that every HTTP/1.1 parser reads alike (visible ASCII other than
/// the characters URIs never carry unescaped); others go to hyper's stricter parser.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

/// A lean head's fields, for routing.
pub struct Fields<'a> {
    head: &'a Head,
    buf: &'a [u8],
}

impl HeaderLookup for Fields<'_> {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        self.head
            .fields
            .iter()
            .find(|f| f.name.in_buf(self.buf).eq_ignore_ascii_case(name))
            .map(|f| f.value.in_buf(self.buf))
    }

    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.head
            .fields
            .iter()
            .filter(|f| f.kind == Kind::Cookie)
            .map(|f| f.value.in_buf(self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> (Head, Parsed) {
        let mut head = Head::default();
        let parsed = head.parse(raw.as_bytes(), false, Some(1024));
        (head, parsed)
    }

    #[test]
    fn the_common_request_is_lean() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: x\r\nConnection: close\r\n\r\nGET /next";
        let (head, parsed) = parse(raw);
        assert_eq!(parsed, Parsed::Lean);
        assert_eq!(head.len, raw.len() - "GET /next".len());
        assert!(head.close && head.idempotent && !head.head_method);
        for partial in ["", "GET / HTTP/1.1\r\nHost: a\r\n", "G"] {
            assert_eq!(parse(partial).1, Parsed::Partial, "{partial:?}");
        }
    }

    #[test]
    fn anything_unusual_falls_back() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 300\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX_Auth: 1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
            "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "PRI * HT",
        ] {
            assert_eq!(parse(raw).1, Parsed::Fallback, "{raw:?}");
        }
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(parse(&big).1, Parsed::Fallback);
        let mut head = Head::default();
        let forwarded = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
        assert_eq!(head.parse(forwarded, true, None), Parsed::Fallback);
        assert_eq!(head.parse(forwarded, false, None), Parsed::Lean);
        let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(head.parse(post, false, None), Parsed::Lean);
        assert!(head.body == 5 && !head.idempotent);
    }

    #[test]
    fn the_forwarded_head_copies_spans_minus_hop_by_hop() {
        let raw = "GET /p?q=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\n\
                   X-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\nVia: 1.0 edge\r\n\
                   Accept: */*\r\nCookie: c=1\r\n\r\n";
        let (head, parsed) = parse(raw);
        assert_eq!(parsed, Parsed::Lean);
        let mut out = Vec::new();
        head.write_upstream(raw.as_bytes(), b"10.0.0.9", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: shop.example\r\naccept: */*\r\ncookie: c=1\r\n\
             x-forwarded-host: shop.example\r\nx-forwarded-for: 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nvia: 1.0 edge, 1.1 canary-proxy\r\n\r\n"
        );
    }

    /// The same request routed from its spans and from a `HeaderMap` goes the same way.
    #[test]
    fn routing_on_spans_equals_routing_on_a_header_map() {
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Canary: always\r\nX-User: u1\r\nCookie: a=1; ck = never ; b=2\r\n\r\n";
        let (head, _) = parse(raw);
        let fields = head.lookup(raw.as_bytes());
        let mut map = http::HeaderMap::new();
        map.insert("host", "a".parse().unwrap());
        map.insert("x-canary", "always".parse().unwrap());
        map.insert("x-user", "u1".parse().unwrap());
        map.insert("cookie", "a=1; ck = never ; b=2".parse().unwrap());
        for name in ["x-canary", "x-user", "host", "missing"] {
            let name = HeaderName::from_static(name);
            assert_eq!(fields.first(&name), HeaderLookup::first(&map, &name));
        }
        assert!(fields.cookies().eq(HeaderLookup::cookies(&map)));
    }

    /// Whole route choices agree: header, cookie and sticky rules on spans and on a map.
    #[test]
    fn route_choices_on_spans_equal_those_on_a_header_map() {
        use crate::config::Config;
        use crate::route::RouteTable;
        for (rule, value, key) in [
            ("canary-by-header", "x-canary", None),
            ("canary-by-cookie", "ck", None),
            ("sticky", "header:x-user", Some("X-User")),
            ("sticky", "cookie:uid", Some("uid=")),
        ] {
            let keys = [
                ("blue.upstream", "127.0.0.1:1"),
                ("green.upstream", "127.0.0.1:2"),
                ("canary-weight", "50"),
                (rule, value),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into_iter()
            .collect();
            let table = RouteTable::new(Config::from_map(&keys).unwrap(), "test");
            for fields in [
                "X-Canary: always\r\n",
                "X-Canary: never\r\nCookie: ck=always\r\n",
                "Cookie: a=1; ck = never ; uid=u7\r\n",
                "X-User: u1\r\n",
                "X-User: u2\r\nCookie: uid=u9\r\n",
            ] {
                let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
                let (head, parsed) = parse(&raw);
                assert_eq!(parsed, Parsed::Lean);
                let mut req = http::Request::builder();
                for line in fields.split("\r\n").filter(|l| !l.is_empty()) {
                    let (name, value) = line.split_once(": ").unwrap();
                    req = req.header(name, value);
                }
                let map = req.body(()).unwrap().into_parts().0.headers;
                let lean = table.choose(&head.lookup(raw.as_bytes()));
                // Where the choice is not a random draw, both must make the same one.
                let forced = lean.evidence == crate::rollback::tally::Evidence::Forced;
                if forced || key.is_some_and(|k| fields.contains(k)) {
                    assert_eq!(lean, table.choose(&map), "{rule} {fields:?}");
                }
            }
        }
    }
}
