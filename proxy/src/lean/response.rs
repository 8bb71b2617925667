//! The upstream's response head on the lean path: parsed with `httparse`, its framing read as
//! strictly as hyper's client reads it (conflicting or invalid lengths refused, both
//! `Content-Length` and `Transfer-Encoding` refused as response smuggling), and rewritten for
//! the client as [`headers::to_client`] does: hop-by-hop fields and those `Connection` names
//! removed, `Via` appended, the color header added when configured.
//!
//! [`headers::to_client`]: crate::headers::to_client

use crate::headers::{HOP_BY_HOP, VIA_HTTP11, is_end_to_end, listed};
use crate::lean::request::{Span, digits, write_field, write_number};

/// Header fields of a response parsed at most (hyper's client default).
const MAX_FIELDS: usize = 100;
/// `Connection` options remembered per response; a response naming more is refused.
const MAX_OPTIONS: usize = 16;

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (a response to HEAD, 204, 304).
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked, checked as it passes.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// Why a response head is refused (the exchange counts as a reset: 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x as `httparse` reads it, or too many fields.
    #[error("malformed response head")]
    Malformed,
    /// Both `Content-Length` and `Transfer-Encoding`: the ends may be read differently.
    #[error("the response has both Transfer-Encoding and Content-Length")]
    Ambiguous,
    /// A `Content-Length` that is not one number.
    #[error("invalid Content-Length in the response")]
    Length,
}

/// What the exchange needs of a parsed response head.
#[derive(Debug)]
pub struct Response {
    /// Bytes of the head.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// How its body ends.
    pub framing: Framing,
    /// Whether its connection may carry another request afterwards.
    pub reusable: bool,
    /// `200` with a gRPC content type: judged by `grpc-status`.
    pub grpc: bool,
    /// The `grpc-status` of the head (a trailers-only gRPC response).
    pub grpc_status: Option<u32>,
    /// The reason phrase.
    reason: Span,
}

/// The result of parsing what the upstream has sent so far.
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A whole head.
    Head(Response),
}

/// Parses a response head from `buf` (its fields' names and values into `fields`, for
/// [`write_client`]); `head_method`: the request was `HEAD`.
pub fn parse(
    buf: &[u8],
    head_method: bool,
    fields: &mut Vec<(Span, Span)>,
) -> Result<Parsed, HeadError> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut parsed);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(HeadError::Malformed);
    };
    let mut length: Option<u64> = None;
    let (mut chunked, mut encoded, mut close, mut keep_alive) = (false, false, false, false);
    let (mut grpc, mut grpc_status) = (false, None);
    let mut options = 0;
    fields.clear();
    for field in res.headers.iter() {
        let (name, value) = (field.name.as_bytes(), field.value);
        fields.push((Span::of(buf, name), Span::of(buf, value)));
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        if is(b"content-length") {
            let n = digits(value.trim_ascii()).ok_or(HeadError::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Length);
            }
            length = Some(n);
        } else if is(b"transfer-encoding") {
            encoded = true;
            // Chunked only when it is the final coding (RFC 9112 §6.3).
            chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if is(b"connection") {
            for option in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                options += usize::from(!option.is_empty());
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is(b"content-type") {
            grpc = value
                .strip_prefix(b"application/grpc")
                .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')));
        } else if is(b"grpc-status") {
            grpc_status = Some(
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2),
            );
        }
    }
    if encoded && length.is_some() {
        return Err(HeadError::Ambiguous);
    }
    if options > MAX_OPTIONS {
        // [`write_client`] strips what `Connection` names from a fixed list of this size.
        return Err(HeadError::Malformed);
    }
    let framing = if head_method || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    let persistent = if version == 1 { !close } else { keep_alive };
    Ok(Parsed::Head(Response {
        len,
        status,
        framing,
        reusable: persistent && framing != Framing::Close,
        grpc: grpc && status == 200,
        grpc_status,
        reason: Span::of(buf, res.reason.unwrap_or_default().as_bytes()),
    }))
}

/// Writes the head the client gets for the response head in `buf` (its `fields` as
/// [`parse`] found them) into `out`. `color`: the color header's name and value, when
/// configured; `close`: the client connection closes after this response.
pub fn write_client(
    buf: &[u8],
    response: &Response,
    fields: &[(Span, Span)],
    color: Option<(&[u8], &[u8])>,
    close: bool,
    out: &mut Vec<u8>,
) {
    let fields = || {
        fields
            .iter()
            .map(|&(name, value)| (name.in_buf(buf), value.in_buf(buf)))
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    write_number(out, u64::from(response.status));
    out.push(b' ');
    out.extend_from_slice(response.reason.in_buf(buf));
    out.extend_from_slice(b"\r\n");
    let mut options: [&[u8]; MAX_OPTIONS] = [&[]; MAX_OPTIONS];
    let mut named = 0;
    for (_, value) in fields().filter(|(name, _)| name.eq_ignore_ascii_case(b"connection")) {
        for option in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if named < MAX_OPTIONS && !option.is_empty() && !is_end_to_end(option) {
                options[named] = option;
                named += 1;
            }
        }
    }
    let options = &options[..named];
    for (name, value) in fields() {
        if listed(&HOP_BY_HOP, name)
            || name.eq_ignore_ascii_case(b"via")
            || options.iter().any(|o| o.eq_ignore_ascii_case(name))
            || color.is_some_and(|(header, _)| header.eq_ignore_ascii_case(name))
        {
            continue;
        }
        write_field(out, name, value);
    }
    // Several `Via` lines are one list: joined, with the proxy's own last.
    out.extend_from_slice(b"via: ");
    for (_, value) in fields().filter(|(name, _)| name.eq_ignore_ascii_case(b"via")) {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(VIA_HTTP11.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some((name, value)) = color {
        write_field(out, name, value);
    }
    match response.framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close => out.extend_from_slice(b"connection: close\r\n"),
        Framing::Empty | Framing::Length(_) if close => {
            out.extend_from_slice(b"connection: close\r\n");
        }
        Framing::Empty | Framing::Length(_) => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Response, HeadError> {
        match parse(raw.as_bytes(), false, &mut Vec::new())? {
            Parsed::Head(r) => Ok(r),
            Parsed::Partial => panic!("partial: {raw:?}"),
        }
    }

    #[test]
    fn framing_is_read_strictly() {
        let r = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(
            (r.framing, r.reusable, r.len),
            (Framing::Length(5), true, 38)
        );
        let r = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        let r = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Close, false));
        let r = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!r.reusable);
        let r = head("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(r.framing, Framing::Empty);
        let r = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!r.reusable);
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err(),
            HeadError::Ambiguous
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        ] {
            assert_eq!(head(bad).unwrap_err(), HeadError::Length, "{bad:?}");
        }
        assert!(head("HTTP/9.9 200 OK\r\n\r\n").is_err());
        // More `Connection` options than the rewrite strips would let the rest through.
        let options: Vec<String> = (0..=MAX_OPTIONS).map(|i| format!("x-{i}")).collect();
        let many = format!(
            "HTTP/1.1 200 OK\r\nConnection: {}\r\nContent-Length: 0\r\n\r\n",
            options.join(", ")
        );
        assert_eq!(head(&many).unwrap_err(), HeadError::Malformed);
        let few = options[..MAX_OPTIONS].join(", ");
        assert!(head(&format!("HTTP/1.1 200 OK\r\nConnection: {few}\r\n\r\n")).is_ok());
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\n", false, &mut Vec::new()),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn the_client_head_drops_hop_by_hop_fields() {
        let raw = "HTTP/1.1 200 Fine\r\nConnection: x-backend, keep-alive\r\nX-Backend: 1\r\n\
                   Keep-Alive: timeout=5\r\nVia: 1.1 up\r\nX-Color: blue\r\nContent-Length: 2\r\n\r\nok";
        let mut fields = Vec::new();
        let Ok(Parsed::Head(r)) = parse(raw.as_bytes(), false, &mut fields) else {
            panic!("a whole head");
        };
        let mut out = Vec::new();
        let color = Some((&b"x-served-color"[..], &b"green"[..]));
        write_client(raw.as_bytes(), &r, &fields, color, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nx-color: blue\r\ncontent-length: 2\r\nvia: 1.1 up, 1.1 canary-proxy\r\n\
             x-served-color: green\r\nconnection: close\r\n\r\n"
        );
    }
}
