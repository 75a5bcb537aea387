//! A deliberately small HTTP/1.1 server connection: reads requests (Content-Length or chunked bodies) and
//! writes responses (Content-Length or chunked), with full control of the socket so faults can be injected.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 8 * 1024;

/// A request as read off the wire, before it is recorded.
#[derive(Debug)]
pub(crate) struct WireRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
}

impl WireRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The bytes are not HTTP/1.x; answer 400 and close.
    Malformed(&'static str),
    /// The socket failed or closed mid-request; just close.
    Io,
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

/// How a response body is framed.
pub(crate) enum Framing {
    Length(usize),
    Chunked,
}

/// One accepted connection with its read buffer (which may hold the start of the next request).
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Reads the next request; `Ok(None)` when the client closed cleanly between requests.
    pub(crate) async fn read_request(&mut self) -> Result<Option<WireRequest>, ReadError> {
        let head_len = loop {
            // RFC 9112 §2.2: ignore empty lines before the request line.
            while self.buf.starts_with(b"\r\n") {
                self.buf.advance(2);
            }
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Malformed("request head too large"));
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        };
        let head = self.buf.split_to(head_len);
        let head = std::str::from_utf8(&head[..head_len - 4])
            .map_err(|_| ReadError::Malformed("head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ReadError::Malformed("bad request line"));
        };
        let http11 = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            _ => return Err(ReadError::Malformed("unsupported HTTP version")),
        };
        if method.is_empty() || !target.starts_with('/') && target != "*" {
            return Err(ReadError::Malformed("bad request line"));
        }
        let mut headers = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(ReadError::Malformed("bad header line"));
            };
            if name.is_empty() || name.ends_with([' ', '\t']) {
                return Err(ReadError::Malformed("bad header name"));
            }
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut req = WireRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body: Bytes::new(),
            keep_alive: false,
        };
        let connection = req
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase();
        req.keep_alive = if http11 {
            !connection.contains("close")
        } else {
            connection.contains("keep-alive")
        };

        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let length = match req.header("content-length") {
            _ if chunked => None,
            None => None,
            Some(v) => Some(
                v.parse::<usize>()
                    .map_err(|_| ReadError::Malformed("bad content-length"))?,
            ),
        };
        if length.is_some_and(|n| n > MAX_BODY) {
            return Err(ReadError::Malformed("body too large"));
        }
        let expects_body = chunked || length.is_some_and(|n| n > 0);
        if expects_body
            && req
                .header("expect")
                .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        if chunked {
            req.body = self.read_chunked().await?;
        } else if let Some(n) = length {
            self.ensure(n).await?;
            req.body = self.buf.split_to(n).freeze();
        }
        Ok(Some(req))
    }

    async fn read_chunked(&mut self) -> Result<Bytes, ReadError> {
        let mut body = BytesMut::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| ReadError::Malformed("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body.freeze());
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadError::Malformed("body too large"));
            }
            self.ensure(size + 2).await?;
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(ReadError::Malformed("chunk not followed by CRLF"));
            }
            self.buf.advance(size + 2);
        }
    }

    async fn read_line(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = self.buf.split_to(pos + 2);
                return String::from_utf8(line[..pos].to_vec())
                    .map_err(|_| ReadError::Malformed("line is not UTF-8"));
            }
            if self.buf.len() > MAX_LINE {
                return Err(ReadError::Malformed("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// Reads until the buffer holds at least `n` bytes.
    async fn ensure(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(8 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads and discards until the client closes (or the socket fails).
    pub(crate) async fn drain_until_closed(&mut self) {
        loop {
            self.buf.clear();
            match self.fill().await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Writes a complete response with a `Content-Length` body.
    pub(crate) async fn write_fixed(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
        keep_alive: bool,
    ) -> io::Result<()> {
        let mut out = head(status, headers, Framing::Length(body.len()), keep_alive).into_bytes();
        out.extend_from_slice(body);
        self.write_all(&out).await
    }

    /// Writes the head of a chunked response.
    pub(crate) async fn write_chunked_head(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        keep_alive: bool,
    ) -> io::Result<()> {
        self.write_all(head(status, headers, Framing::Chunked, keep_alive).as_bytes())
            .await
    }

    /// Writes one chunk (never empty: an empty chunk would end the body) and flushes it.
    pub(crate) async fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        self.write_all(&out).await
    }

    /// Writes the terminating zero-length chunk.
    pub(crate) async fn finish_chunked(&mut self) -> io::Result<()> {
        self.write_all(b"0\r\n\r\n").await
    }

    /// Resolves when the client closes its side (EOF or an error on read), discarding what it sends
    /// meanwhile: while a response streams, a client sends nothing more on the connection.
    pub(crate) async fn peer_closed(&mut self) {
        self.drain_until_closed().await;
    }

    /// Half-closes the write side (FIN) so the client sees the end of the connection now.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Arms SO_LINGER 0 so that dropping the socket sends RST instead of FIN.
    pub(crate) fn arm_reset(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))
    }
}

/// Renders a status line and headers, ending with the blank line.
pub(crate) fn head(
    status: u16,
    headers: &[(String, String)],
    framing: Framing,
    keep_alive: bool,
) -> String {
    use std::fmt::Write;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.push_str("transfer-encoding: chunked\r\n"),
    }
    out.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Unknown",
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, Conn) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Conn::new(server))
    }

    #[tokio::test]
    async fn reads_pipelined_requests_with_length_and_chunked_bodies() {
        let (mut client, mut conn) = pair().await;
        client
            .write_all(
                b"\r\nPOST /v1/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
                  POST /v1/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                  3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
            )
            .await
            .unwrap();
        let a = conn.read_request().await.unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.target.as_str(), &a.body[..]),
            ("POST", "/v1/a?x=1", &b"hello"[..])
        );
        assert_eq!(a.header("host"), Some("h"));
        assert!(a.keep_alive);
        let b = conn.read_request().await.unwrap().unwrap();
        assert_eq!(&b.body[..], b"abcde");
        assert!(!b.keep_alive);
        drop(client);
        assert!(conn.read_request().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_garbage() {
        let (mut client, mut conn) = pair().await;
        client.write_all(b"NOT HTTP\r\n\r\n").await.unwrap();
        assert!(matches!(
            conn.read_request().await,
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn head_frames_bodies() {
        let h = head(
            429,
            &[("retry-after".into(), "1".into())],
            Framing::Length(2),
            true,
        );
        assert_eq!(
            h,
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
    }
}
