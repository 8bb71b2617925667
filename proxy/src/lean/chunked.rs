//! A strict check of chunked framing (RFC 9112 §7.1) for a body forwarded as it is: the bytes
//! pass through unchanged, but the proxy knows exactly where the body ends and refuses any
//! framing a peer could read differently (a size that overflows, a bare LF, a chunk not ended
//! by CRLF, oversized extensions or trailers), so nothing can be smuggled past it.

/// Hex digits of a chunk size, at most: 16 of them fill a `u64`.
const MAX_SIZE_DIGITS: u32 = 16;
/// Bytes of chunk extensions, per chunk, at most.
const MAX_EXTENSION: usize = 4 * 1024;
/// Bytes of trailer fields, at most.
const MAX_TRAILERS: usize = 16 * 1024;
/// Bytes of a trailer line kept to read `grpc-status` from.
const LINE_KEPT: usize = 32;

/// Why chunked framing was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk size that is empty, not hex, or too large.
    #[error("invalid chunk size")]
    Size,
    /// A line not ended by CRLF where the framing needs one.
    #[error("chunk framing without CRLF")]
    LineEnd,
    /// A control character in a chunk extension or trailer.
    #[error("invalid byte in a chunk extension or trailer")]
    Byte,
    /// Chunk extensions or trailers beyond the limit.
    #[error("chunk extensions or trailers too large")]
    TooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a size.
    Size,
    /// Whitespace after the size.
    SizeSpace,
    /// A chunk extension, up to CR.
    Extension,
    /// The LF after a size line's CR.
    SizeLf,
    /// Chunk data, this many bytes still to come.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The LF after a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The body has ended.
    Done,
}

/// Follows a chunked body as its bytes pass.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u32,
    /// Extension bytes of the current chunk; trailer bytes once in the trailers.
    extra: usize,
    /// The start of the current trailer line, to find `grpc-status`.
    line: [u8; LINE_KEPT],
    line_len: usize,
    /// The `grpc-status` of the trailers, if they carry one.
    grpc_status: Option<u32>,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
            extra: 0,
            line: [0; LINE_KEPT],
            line_len: 0,
            grpc_status: None,
        }
    }
}

impl Chunked {
    /// Takes in `bytes`; returns how many of them belong to the body (fewer than all only once
    /// the body has ended).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < bytes.len() {
            if let State::Data(left) = self.state {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            if self.state == State::Done {
                break;
            }
            self.step(bytes[at])?;
            at += 1;
        }
        Ok(at)
    }

    /// Takes in the framing at the start of `bytes`, up to the next chunk data or the start of
    /// the trailer section, for a reader that strips the framing: returns how many bytes were
    /// framing, and how many of the bytes right after them are data (taken in too).
    /// `(bytes.len(), 0)` when all of them were framing; fewer framing bytes and no data at
    /// the trailer section (see [`Chunked::in_trailers`]; [`Chunked::feed`] takes it in) or
    /// once the body has ended.
    pub fn next_data(&mut self, bytes: &[u8]) -> Result<(usize, usize), ChunkError> {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Data(left) => {
                    let take = left.min((bytes.len() - at) as u64);
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    return Ok((at, take as usize));
                }
                State::Done | State::TrailerStart => break,
                _ => {}
            }
            self.step(bytes[at])?;
            at += 1;
        }
        Ok((at, 0))
    }

    /// Whether the last chunk has been read and what follows is the trailer section (up to
    /// and with its final empty line).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart | State::Trailer | State::TrailerLf | State::EndLf
        )
    }

    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The `grpc-status` its trailers carried, if any.
    pub fn grpc_status(&self) -> Option<u32> {
        self.grpc_status
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, b) {
            (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
            (State::Size, b';') if self.digits > 0 => State::Extension,
            (State::Size, b' ' | b'\t') if self.digits > 0 => State::SizeSpace,
            (State::Size, _) => {
                let digit = (b as char).to_digit(16).ok_or(ChunkError::Size)?;
                self.digits += 1;
                if self.digits > MAX_SIZE_DIGITS {
                    return Err(ChunkError::Size);
                }
                self.size = self.size << 4 | u64::from(digit);
                State::Size
            }
            (State::SizeSpace, b' ' | b'\t') => State::SizeSpace,
            (State::SizeSpace, b';') => State::Extension,
            (State::SizeSpace, b'\r') => State::SizeLf,
            (State::SizeSpace, _) => return Err(ChunkError::Size),
            (State::Extension, b'\r') => State::SizeLf,
            (State::Extension, b'\n') => return Err(ChunkError::LineEnd),
            (State::Extension, b) => {
                self.extra += 1;
                if self.extra > MAX_EXTENSION {
                    return Err(ChunkError::TooLarge);
                }
                if is_control(b) {
                    return Err(ChunkError::Byte);
                }
                State::Extension
            }
            (State::SizeLf, b'\n') => {
                let size = std::mem::take(&mut self.size);
                self.digits = 0;
                self.extra = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size,
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::Trailer, b) => {
                if b == b'\r' {
                    self.end_trailer_line();
                    State::TrailerLf
                } else if b == b'\n' {
                    return Err(ChunkError::LineEnd);
                } else if is_control(b) {
                    return Err(ChunkError::Byte);
                } else {
                    self.extra += 1;
                    if self.extra > MAX_TRAILERS {
                        return Err(ChunkError::TooLarge);
                    }
                    if self.state == State::TrailerStart {
                        self.line_len = 0;
                    }
                    if self.line_len < LINE_KEPT {
                        self.line[self.line_len] = b;
                        self.line_len += 1;
                    }
                    State::Trailer
                }
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            (
                State::SizeLf
                | State::DataCr
                | State::DataLf
                | State::TrailerLf
                | State::EndLf
                | State::Data(_)
                | State::Done,
                _,
            ) => return Err(ChunkError::LineEnd),
        };
        Ok(())
    }

    fn end_trailer_line(&mut self) {
        let line = &self.line[..self.line_len];
        let Some(value) = line
            .get(..12)
            .filter(|name| name.eq_ignore_ascii_case(b"grpc-status:"))
            .map(|_| line[12..].trim_ascii())
        else {
            return;
        };
        self.grpc_status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        if self.grpc_status.is_none() {
            // Present but unreadable: UNKNOWN, as gRPC says.
            self.grpc_status = Some(2);
        }
    }
}

/// A control character other than horizontal tab.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; the bytes taken and whether it ended.
    fn run(body: &[u8], step: usize) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::default();
        let mut taken = 0;
        for piece in body.chunks(step) {
            taken += c.feed(piece)?;
            if c.done() {
                break;
            }
        }
        Ok((taken, c.done()))
    }

    /// Decodes `body` through [`Chunked::next_data`] in pieces of `step` bytes: the data, the
    /// bytes taken, and whether it ended.
    fn decode(body: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let (mut c, mut data, mut taken) = (Chunked::default(), Vec::new(), 0);
        for piece in body.chunks(step) {
            let mut at = 0;
            while at < piece.len() && !c.done() {
                if c.in_trailers() {
                    at += c.feed(&piece[at..])?;
                    continue;
                }
                let (framing, n) = c.next_data(&piece[at..])?;
                data.extend_from_slice(&piece[at + framing..at + framing + n]);
                at += framing + n;
            }
            taken += at;
            if c.done() {
                break;
            }
        }
        Ok((data, taken, c.done()))
    }

    #[test]
    fn next_data_strips_the_framing_however_the_bytes_come() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-a: 1\r\n\r\nGET / HTTP/1.1\r\n";
        for step in [1, 2, 3, 7, 1000] {
            let decoded = decode(body, step).unwrap();
            assert_eq!(
                decoded,
                (b"hello world".to_vec(), body.len() - 16, true),
                "step {step}"
            );
            assert_eq!(decode(b"5\r\nhel", step), Ok((b"hel".to_vec(), 6, false)));
            assert_eq!(decode(b"5\r\nhello\n", step), Err(ChunkError::LineEnd));
            assert_eq!(decode(b"x\r\n", step), Err(ChunkError::Size));
        }
    }

    #[test]
    fn valid_bodies_end_where_they_end() {
        for step in [1, 2, 3, 7, 1000] {
            let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
            assert_eq!(run(body, step), Ok((body.len() - 16, true)), "step {step}");
            let trailers = b"3\r\nabc\r\n0\r\nx-a: 1\r\ngrpc-status: 7\r\n\r\n";
            assert_eq!(run(trailers, step), Ok((trailers.len(), true)));
            assert!(run(b"A  \r\n0123456789\r\n0\r\n\r\n", step).unwrap().1);
        }
        let mut c = Chunked::default();
        c.feed(b"0\r\nGrpc-Status: 13\r\n\r\n").unwrap();
        assert_eq!(c.grpc_status(), Some(13));
        let partial = run(b"5\r\nhel", 2).unwrap();
        assert_eq!(partial, (6, false));
    }

    #[test]
    fn broken_framing_is_refused() {
        for (body, error) in [
            (&b"\r\n"[..], ChunkError::Size),
            (b"x\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"ffffffffffffffff1\r\n", ChunkError::Size),
            (b"1 2\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::Size),
            (b"5;a\nb\r\n", ChunkError::LineEnd),
            (b"5\r\nhelloXX0\r\n\r\n", ChunkError::LineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::LineEnd),
            (b"0\r\nx: 1\n\r\n", ChunkError::LineEnd),
            (b"0\r\nx: \x001\r\n\r\n", ChunkError::Byte),
            (b"0\r\n\rX", ChunkError::LineEnd),
        ] {
            assert_eq!(
                run(body, 1),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(run(body, 64), Err(error));
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_EXTENSION + 1]].concat();
        assert_eq!(run(&long, 100), Err(ChunkError::TooLarge));
        let trailers = [b"0\r\nx: ".as_slice(), &[b'a'; MAX_TRAILERS + 1]].concat();
        assert_eq!(run(&trailers, 100), Err(ChunkError::TooLarge));
    }
}
