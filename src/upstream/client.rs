//! The forward path's HTTP client: hyper-util's pooled client over hyper-rustls, our response type
//! (status, headers, the body whole or frame by frame) and our transport error. reqwest did this
//! before, and cost more: it printed the URL we had parsed once and parsed it again (twice) on every
//! request, and ran a redirect policy, header merging and its own body types we do not use. It still
//! serves the cold paths (OAuth token calls, webhooks, JWKS, the CLI).

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

type BoxError = Box<dyn StdError + Send + Sync>;

/// How long a pooled connection may sit unused before it is closed (reqwest's default, kept).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes, as reqwest sent them: after 15 s idle, every 15 s, 3 of them.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data older than this breaks the connection (reqwest's default on Linux, kept).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// One profile's pooled HTTP/1.1 client (HTTPS with the webpki roots, as reqwest's `rustls-tls`).
/// Cloning shares the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<TimedConnector, Full<Bytes>>,
}

/// Why a client could not be built: only a TLS configuration rustls refuses.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct ClientBuildError(#[from] rustls::Error);

impl HttpClient {
    /// A client whose connections (TCP and TLS handshake together) must be made within `connect`,
    /// with TCP_NODELAY, no proxy, no redirects followed and no decompression.
    pub fn new(connect: Duration) -> Result<HttpClient, ClientBuildError> {
        let mut http = HttpConnector::new();
        // The URL's scheme decides; the HTTPS connector below takes `https`.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect));
        http.set_keepalive(Some(TCP_KEEPALIVE));
        http.set_keepalive_interval(Some(TCP_KEEPALIVE));
        http.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        let https = HttpsConnector::from((http, Arc::new(tls_config()?)));
        let connector = TimedConnector {
            inner: https,
            timeout: connect,
        };
        let inner = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(HttpClient { inner })
    }

    /// Sends `req` on a pooled connection (or a new one); the response once its headers are in.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<UpstreamResponse, TransportError> {
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(TransportError::request)?;
        let (parts, body) = resp.into_parts();
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: BodyKind::Wire(body),
        })
    }
}

/// What reqwest 0.12 with `rustls-tls` (and without `http2`) configured: the webpki roots, TLS 1.2
/// and 1.3, the process's installed crypto provider or else ring, and ALPN offering HTTP/1.1 only.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The HTTPS connector with one deadline over the whole connection setup (DNS, TCP, TLS), as
/// reqwest's `connect_timeout` was: a handshake that never finishes is a connect timeout too.
#[derive(Clone)]
struct TimedConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

/// The connection setup outlived `TimedConnector::timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connection setup timed out")]
struct ConnectTimedOut;

type Connection = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for TimedConnector {
    type Response = Connection;
    type Error = BoxError;
    // Boxed: a new connection is rare next to the requests that reuse one.
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(done) => done,
                Err(_) => Err(Box::new(ConnectTimedOut) as BoxError),
            }
        })
    }
}

/// An upstream's answer: its status and headers, and a body to read whole or frame by frame.
pub struct UpstreamResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: BodyKind,
}

enum BodyKind {
    /// Off a connection, as it arrives.
    Wire(Incoming),
    /// Built in-process (`provider: echo`), one frame per entry.
    Local(VecDeque<Bytes>),
}

impl UpstreamResponse {
    /// An answer made in-process: `status`, `content_type`, and the body as these frames.
    pub fn local(status: StatusCode, content_type: &'static str, frames: Vec<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        UpstreamResponse {
            status,
            headers,
            body: BodyKind::Local(frames.into()),
        }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body, frame by frame as the upstream sent it (trailers skipped).
    pub fn into_stream(self) -> BodyStream {
        BodyStream(self.body)
    }

    /// The whole body, at most `limit` bytes, with `idle` as the longest wait for the next frame.
    pub async fn read_whole(self, limit: usize, idle: Duration) -> Result<Bytes, ReadError> {
        let mut stream = self.into_stream();
        // A body of one frame (the usual whole answer) is returned as it came, without a copy.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        loop {
            let chunk = match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => return Err(ReadError::Stalled),
                Ok(None) if buf.is_empty() => return Ok(first.unwrap_or_default()),
                Ok(None) => return Ok(buf.freeze()),
                Ok(Some(Err(e))) => return Err(ReadError::Broken(e)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
            if held + chunk.len() > limit {
                return Err(ReadError::TooLarge(limit));
            }
            match first.take() {
                None if buf.is_empty() => first = Some(chunk),
                earlier => {
                    if let Some(earlier) = earlier {
                        buf.extend_from_slice(&earlier);
                    }
                    buf.extend_from_slice(&chunk);
                }
            }
        }
    }
}

/// Why a whole body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No frame arrived within the idle timeout.
    #[error("the body stalled past the idle timeout")]
    Stalled,
    /// The connection broke mid-body.
    #[error("the connection broke while reading the body")]
    Broken(#[source] TransportError),
    /// The body is longer than the limit.
    #[error("the body exceeds {0} bytes")]
    TooLarge(usize),
}

/// A response body as a stream of its data frames.
pub struct BodyStream(BodyKind);

impl Stream for BodyStream {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().0 {
            BodyKind::Local(frames) => Poll::Ready(frames.pop_front().map(Ok)),
            BodyKind::Wire(body) => loop {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Some(Err(TransportError::body(e))))
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            return Poll::Ready(Some(Ok(data)));
                        }
                        // A trailers frame: nothing to relay.
                    }
                }
            },
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            BodyKind::Local(frames) => (frames.len(), Some(frames.len())),
            BodyKind::Wire(body) if body.is_end_stream() => (0, Some(0)),
            BodyKind::Wire(_) => (0, None),
        }
    }
}

/// What kind of transport failure a request met: the forwarder's failure class follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// A deadline passed: the connection setup's, or the operating system's (`ETIMEDOUT`).
    Timeout,
    /// No connection could be made: refused, unreachable, DNS, or the TLS handshake failed.
    Connect,
    /// The connection was made, then broke (closed before a response, or mid-body).
    Other,
}

impl TransportKind {
    fn words(self) -> &'static str {
        match self {
            TransportKind::Timeout => "timed out",
            TransportKind::Connect => "cannot connect",
            TransportKind::Other => "the connection failed",
        }
    }
}

/// The network failed us: before response headers, or while reading a body. Its text is the error
/// chain of hyper and the OS (no URL, header or credential is in it).
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", .kind.words(), chain(.source.as_ref()))]
pub struct TransportError {
    kind: TransportKind,
    source: BoxError,
}

impl TransportError {
    /// What kind of failure this is.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// A request that got no response. Timeouts are looked for first (reqwest's order): a connect
    /// timeout is also a connect error.
    fn request(e: hyper_util::client::legacy::Error) -> TransportError {
        let kind = if timed_out(&e) {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        };
        TransportError {
            kind,
            source: Box::new(e),
        }
    }

    /// A body that broke while being read.
    fn body(e: hyper::Error) -> TransportError {
        let kind = match timed_out(&e) {
            true => TransportKind::Timeout,
            false => TransportKind::Other,
        };
        TransportError {
            kind,
            source: Box::new(e),
        }
    }

    /// A URL that is not a valid request target: nothing was sent.
    pub fn invalid_url(e: http::Error) -> TransportError {
        TransportError {
            kind: TransportKind::Other,
            source: Box::new(e),
        }
    }
}

/// Whether a deadline is anywhere in `e`'s chain: ours, hyper's, or the OS's.
fn timed_out(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<ConnectTimedOut>()
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
            || err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// `e` and its sources, joined with ": ".
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(err) = next {
        out.push_str(": ");
        out.push_str(&err.to_string());
        next = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn post(url: &str) -> Request<Full<Bytes>> {
        Request::post(url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let err = match client
            .send(post(&format!("http://127.0.0.1:{port}/x")))
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("nothing listens there"),
        };
        assert_eq!(err.kind(), TransportKind::Connect, "{err}");
        assert!(err.to_string().starts_with("cannot connect: "), "{err}");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_finishes_is_a_connect_timeout() {
        // Accepts and never answers the client hello: TCP connects, TLS waits forever.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(sock);
        });
        let client = HttpClient::new(Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        let err = match client.send(post(&format!("https://{addr}/x"))).await {
            Err(e) => e,
            Ok(_) => panic!("the handshake cannot finish"),
        };
        assert_eq!(err.kind(), TransportKind::Timeout, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_neither_timeout_nor_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            // Closed with the request read and no answer.
        });
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let err = match client.send(post(&format!("http://{addr}/x"))).await {
            Err(e) => e,
            Ok(_) => panic!("no answer was sent"),
        };
        assert_eq!(err.kind(), TransportKind::Other, "{err}");
    }

    #[tokio::test]
    async fn a_chunked_body_arrives_frame_by_frame_and_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            sock.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
            )
            .await
            .unwrap();
            // The second chunk only after the client has read the first one.
            go_rx.recv().await;
            sock.write_all(b"7\r\nsecond\n\r\n0\r\n\r\n").await.unwrap();
        });
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let resp = client
            .send(post(&format!("http://{addr}/x")))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_stream();
        assert_eq!(body.next().await.unwrap().unwrap(), "first\n");
        go_tx.send(()).await.unwrap();
        assert_eq!(body.next().await.unwrap().unwrap(), "second\n");
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_whole_read_keeps_the_limit_and_the_idle_timeout() {
        let frames = || {
            vec![
                Bytes::from_static(b"abc"),
                Bytes::from_static(b"def"),
                Bytes::from_static(b"g"),
            ]
        };
        let local = |f| UpstreamResponse::local(StatusCode::OK, "application/json", f);
        let idle = Duration::from_secs(1);
        assert_eq!(
            local(frames()).read_whole(7, idle).await.unwrap(),
            "abcdefg"
        );
        assert!(matches!(
            local(frames()).read_whole(6, idle).await,
            Err(ReadError::TooLarge(6))
        ));
        let one = Bytes::from_static(b"only");
        let read = local(vec![one.clone()]).read_whole(4, idle).await.unwrap();
        assert_eq!(read.as_ptr(), one.as_ptr(), "one frame is not copied");
        assert_eq!(local(vec![]).read_whole(4, idle).await.unwrap(), "");

        // Headers, then silence: the idle timeout ends the read.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let resp = client
            .send(post(&format!("http://{addr}/x")))
            .await
            .unwrap();
        let read = resp.read_whole(100, Duration::from_millis(200)).await;
        assert!(matches!(read, Err(ReadError::Stalled)), "{read:?}");
    }
}
