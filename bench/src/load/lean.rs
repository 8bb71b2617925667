//! The HTTP/1.1 client of `load`, as lean as wrk's: the request's bytes are made once per
//! connection and go out in one write; the response head is parsed in place with `httparse`
//! and its body skipped by its framing (Content-Length, chunked, or up to the close), in the
//! connection's own task, with one buffer per connection and nothing allocated per request.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::live::Slot;
use super::target::Target;

/// The read buffer of a connection; a response head must fit in it.
const BUFFER: usize = 16 * 1024;
/// Response headers parsed, at most.
const MAX_HEADERS: usize = 64;

/// What `load` keeps of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The status code.
    pub(crate) status: u16,
    /// The color its `x-color` header names.
    pub(crate) color: Slot,
    /// Whether the server closes the connection after it.
    pub(crate) close: bool,
}

/// Why an exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeanError {
    /// The connection was closed before any byte of the answer came: the server closed it
    /// while it was idle.
    Closed,
    /// The connection failed, or the answer broke HTTP/1.1.
    Io,
}

/// How the body of a response is delimited.
enum Framing {
    /// No body (a 204 or a 304).
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunks, then a last chunk and trailers.
    Chunked,
    /// Everything until the server closes.
    Close,
}

/// One HTTP/1.1 keep-alive connection.
pub(crate) struct Lean {
    stream: TcpStream,
    /// The request, the same for every exchange.
    request: Box<[u8]>,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Lean {
    /// A client for `target` over `stream`.
    pub(crate) fn new(stream: TcpStream, target: &Target) -> Lean {
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\n\r\n",
            target.path(),
            target.authority()
        );
        Lean {
            stream,
            request: request.into_bytes().into_boxed_slice(),
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Sends the request and reads the whole answer, leaving the connection ready for the
    /// next one unless the answer says it closes.
    pub(crate) async fn exchange(&mut self) -> Result<Answer, LeanError> {
        if self.stream.write_all(&self.request).await.is_err() {
            return Err(LeanError::Closed);
        }
        let mut got_any = self.start < self.end;
        let (answer, framing) = loop {
            match self.parse_head()? {
                Some((_, None)) => continue,
                Some((answer, Some(framing))) => break (answer, framing),
                None => {
                    let read = self.fill().await.map_err(|_| LeanError::Io)?;
                    if read == 0 {
                        return Err(if got_any {
                            LeanError::Io
                        } else {
                            LeanError::Closed
                        });
                    }
                    got_any = true;
                }
            }
        };
        match framing {
            Framing::Empty => {}
            Framing::Length(length) => self.skip(length).await?,
            Framing::Chunked => self.skip_chunks().await?,
            Framing::Close => {
                self.start = self.end;
                while self.fill().await.map_err(|_| LeanError::Io)? > 0 {
                    self.start = self.end;
                }
            }
        }
        Ok(answer)
    }

    /// Parses a response head from the buffered bytes: `None` if more are needed; the
    /// answer and its body's framing, or no framing for an interim (1xx) response.
    #[allow(clippy::type_complexity)]
    fn parse_head(&mut self) -> Result<Option<(Answer, Option<Framing>)>, LeanError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let used = match response.parse(&self.buf[self.start..self.end]) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(LeanError::Io),
        };
        let status = response.code.ok_or(LeanError::Io)?;
        let mut answer = Answer {
            status,
            color: Slot::None,
            // HTTP/1.0 closes unless asked otherwise; this client never asks.
            close: response.version == Some(0),
        };
        let mut length = None;
        let mut chunked = false;
        for header in response.headers.iter() {
            let name = header.name.as_bytes();
            if name.eq_ignore_ascii_case(b"x-color") {
                answer.color = Slot::of(Some(header.value));
            } else if name.eq_ignore_ascii_case(b"connection") {
                answer.close |= header
                    .value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let value = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(LeanError::Io)?;
                if length.is_some_and(|l| l != value) {
                    return Err(LeanError::Io);
                }
                length = Some(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = header
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !chunked {
                    // Any other coding is delimited by the close.
                    answer.close = true;
                }
            }
        }
        self.start += used;
        if (100..200).contains(&status) {
            return Ok(Some((answer, None)));
        }
        let framing = if status == 204 || status == 304 {
            Framing::Empty
        } else if chunked {
            Framing::Chunked
        } else if let Some(length) = length {
            Framing::Length(length)
        } else {
            answer.close = true;
            Framing::Close
        };
        Ok(Some((answer, Some(framing))))
    }

    /// Reads more bytes after the unread ones; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(io::Error::other("a response line or head too long"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += read;
        Ok(read)
    }

    /// Consumes `n` bytes of body.
    async fn skip(&mut self, mut n: u64) -> Result<(), LeanError> {
        loop {
            let here = ((self.end - self.start) as u64).min(n);
            self.start += here as usize;
            n -= here;
            if n == 0 {
                return Ok(());
            }
            if self.fill().await.map_err(|_| LeanError::Io)? == 0 {
                return Err(LeanError::Io);
            }
        }
    }

    /// Consumes a chunked body: chunks, the last chunk and the trailers.
    async fn skip_chunks(&mut self) -> Result<(), LeanError> {
        loop {
            match httparse::parse_chunk_size(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    self.start += used;
                    break;
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    self.start += used;
                    // The chunk's data and its CRLF.
                    self.skip(size + 2).await?;
                }
                Ok(httparse::Status::Partial) => self.more().await?,
                Err(_) => return Err(LeanError::Io),
            }
        }
        // Trailer lines, up to the empty line that ends the message.
        loop {
            match self.buf[self.start..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                Some(0) => {
                    self.start += 2;
                    return Ok(());
                }
                Some(line) => self.start += line + 2,
                None => self.more().await?,
            }
        }
    }

    /// Reads more bytes where the message cannot end yet.
    async fn more(&mut self) -> Result<(), LeanError> {
        match self.fill().await {
            Ok(0) | Err(_) => Err(LeanError::Io),
            Ok(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Answers each request on one connection with the next of `answers`, written in pieces
    /// of at most `piece` bytes, and returns what it read.
    async fn run(answers: &[&'static [u8]], piece: usize) -> Vec<Result<Answer, LeanError>> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answers: Vec<&'static [u8]> = answers.to_vec();
        let n = answers.len();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for answer in answers {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let read = conn.read(&mut buf).await.unwrap();
                    assert!(read > 0);
                    head.extend_from_slice(&buf[..read]);
                }
                assert!(head.starts_with(b"GET / HTTP/1.1\r\nhost: 127.0.0.1:"));
                for part in answer.chunks(piece) {
                    conn.write_all(part).await.unwrap();
                    conn.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut lean = Lean::new(stream, &Target::from_addr(addr));
        let mut results = Vec::new();
        for _ in 0..n {
            let result = lean.exchange().await;
            let stop = result.as_ref().map_or(true, |a| a.close);
            results.push(result);
            if stop {
                break;
            }
        }
        server.await.unwrap();
        results
    }

    fn ok(status: u16, color: Slot, close: bool) -> Result<Answer, LeanError> {
        Ok(Answer {
            status,
            color,
            close,
        })
    }

    #[tokio::test]
    async fn reads_each_framing_on_one_connection_in_any_pieces() {
        let answers: &[&'static [u8]] = &[
            b"HTTP/1.1 200 OK\r\nx-color: blue\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nx-color: green\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\nConnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n",
        ];
        for piece in [1, 7, 4096] {
            assert_eq!(
                run(answers, piece).await,
                [
                    ok(200, Slot::Blue, false),
                    ok(204, Slot::Green, false),
                    ok(200, Slot::None, false),
                    ok(304, Slot::None, false),
                    ok(503, Slot::None, true),
                ],
                "pieces of {piece}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_up_to_the_close_ends_the_connection() {
        let answers: &[&'static [u8]] = &[b"HTTP/1.1 200 OK\r\n\r\nuntil the end"];
        assert_eq!(run(answers, 5).await, [ok(200, Slot::None, true)]);
    }

    #[tokio::test]
    async fn broken_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let results = run(&[answer], 4096).await;
            assert_eq!(results, [Err(LeanError::Io)], "{answer:?}");
        }
    }
}
