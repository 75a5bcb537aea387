//! The server side: shared state (reply queue, recorded requests), the accept loop, and per-connection
//! request handling that carries out each `Reply`, faults included.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::http::{Conn, ReadError, WireRequest};
use crate::openai::{self, EchoCtx, Response};
use crate::reply::{openai_error, Reply};
use crate::request::ReceivedRequest;

/// The models `GET /v1/models` lists until `set_models` changes them.
pub(crate) const DEFAULT_MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"];

/// State shared between the `MockUpstream` handle and the server tasks.
pub(crate) struct Shared {
    pub name: String,
    pub latency: Duration,
    pub fault_rate: f64,
    pub record: bool,
    /// parking_lot: critical sections are a few pushes and pops, never held across an await.
    pub state: Mutex<State>,
    /// Wakes `wait_for_requests` whenever a request arrives.
    pub arrived: Notify,
    /// Ids for `chatcmpl-mock-N`; atomic so concurrent requests never share one.
    pub seq: AtomicU64,
    /// Accepted TCP connections, so tests can check keep-alive reuse.
    pub connections: AtomicUsize,
    /// How each streamed answer ended, in order (see `StreamEnd`).
    pub stream_ends: Mutex<Vec<StreamEnd>>,
}

/// How one streamed answer ended: sent whole, or given up because the client closed the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    /// Chunks (events) written before the end.
    pub events_sent: usize,
    /// Every event was sent (false: the client closed the connection first).
    pub completed: bool,
    /// When the end was seen: the last write, or the moment the client's close was noticed.
    pub at: Instant,
}

pub(crate) struct State {
    pub queue: VecDeque<Reply>,
    pub default: Reply,
    pub requests: Vec<ReceivedRequest>,
    pub count: usize,
    pub models: Arc<Vec<String>>,
}

impl Shared {
    pub(crate) fn new(name: String, latency: Duration, fault_rate: f64, record: bool) -> Shared {
        Shared {
            name,
            latency,
            fault_rate,
            record,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                default: Reply::Echo,
                requests: Vec::new(),
                count: 0,
                models: Arc::new(DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect()),
            }),
            arrived: Notify::new(),
            seq: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            stream_ends: Mutex::new(Vec::new()),
        }
    }

    /// Records a request and picks its reply under one lock, so the n-th recorded request gets the n-th
    /// queued reply even when requests race on several connections.
    fn admit(&self, req: &WireRequest, peer: SocketAddr) -> (Reply, usize, Arc<Vec<String>>) {
        let picked = {
            let mut state = self.state.lock();
            state.count += 1;
            let index = state.count;
            if self.record {
                state.requests.push(ReceivedRequest {
                    method: req.method.clone(),
                    path: req.target.clone(),
                    headers: req.headers.clone(),
                    body: req.body.clone(),
                    peer,
                });
            }
            let reply = match state.queue.pop_front() {
                Some(reply) => reply,
                None => state.default.clone(),
            };
            (reply, index, Arc::clone(&state.models))
        };
        self.arrived.notify_waiters();
        picked
    }

    /// Whether the `index`-th request (1-based) is one of the `fault_rate` share answered 500. A golden-ratio
    /// sequence rather than randomness: the share is exact over any window and runs are reproducible.
    fn injects_fault(&self, index: usize) -> bool {
        if self.fault_rate <= 0.0 {
            return false;
        }
        let x = (index as f64 * 0.618_033_988_749_895).fract();
        x < self.fault_rate
    }
}

/// Accepts connections until aborted; aborting drops the `JoinSet`, which aborts every connection too.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve_conn(shared.clone(), stream, peer));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// What to do with the connection after a reply.
enum Flow {
    KeepAlive,
    Close,
}

async fn serve_conn(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // Every SSE event must leave as soon as it is written.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    loop {
        let req = match conn.read_request().await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Malformed(why)) => {
                let body = openai_error(
                    &format!("Malformed HTTP request: {why}"),
                    "invalid_request_error",
                    None,
                    None,
                );
                let _ = conn
                    .write_fixed(400, &json_headers(&shared.name), body.as_bytes(), false)
                    .await;
                return;
            }
        };
        let (reply, index, models) = shared.admit(&req, peer);
        match respond(&mut conn, &shared, &req, reply, index, &models).await {
            Ok(Flow::KeepAlive) if req.keep_alive => {}
            Ok(_) | Err(_) => return,
        }
    }
}

async fn respond(
    conn: &mut Conn,
    shared: &Shared,
    req: &WireRequest,
    reply: Reply,
    index: usize,
    models: &[String],
) -> io::Result<Flow> {
    let mut reply = if shared.injects_fault(index) {
        Reply::server_error()
    } else {
        reply
    };
    if !shared.latency.is_zero() {
        tokio::time::sleep(shared.latency).await;
    }
    while let Reply::Delay(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    let ctx = EchoCtx {
        name: &shared.name,
        seq: shared.seq.fetch_add(1, Ordering::Relaxed),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        models,
    };
    let keep = req.keep_alive;
    match reply {
        Reply::NoUsage => {
            match openai::without_usage(openai::echo(&req.method, &req.target, &req.body, &ctx)) {
                Response::Fixed { status, body } => {
                    conn.write_fixed(status, &json_headers(&shared.name), body.as_bytes(), keep)
                        .await?;
                    Ok(Flow::KeepAlive)
                }
                Response::Stream { events } => {
                    stream(conn, shared, &events, Duration::ZERO, None, keep).await
                }
            }
        }
        Reply::Agent => {
            let answer = crate::agent::answer(&req.method, &req.target, &req.body, &ctx)
                .unwrap_or_else(|| openai::echo(&req.method, &req.target, &req.body, &ctx));
            match answer {
                Response::Fixed { status, body } => {
                    conn.write_fixed(status, &json_headers(&shared.name), body.as_bytes(), keep)
                        .await?;
                    Ok(Flow::KeepAlive)
                }
                Response::Stream { events } => {
                    stream(conn, shared, &events, Duration::ZERO, None, keep).await
                }
            }
        }
        Reply::Echo => match openai::echo(&req.method, &req.target, &req.body, &ctx) {
            Response::Fixed { status, body } => {
                conn.write_fixed(status, &json_headers(&shared.name), body.as_bytes(), keep)
                    .await?;
                Ok(Flow::KeepAlive)
            }
            Response::Stream { events } => {
                stream(conn, shared, &events, Duration::ZERO, None, keep).await
            }
        },
        Reply::Status {
            status,
            headers,
            body,
        } => {
            let mut all = Vec::with_capacity(headers.len() + 2);
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                all.push(("content-type".to_owned(), "application/json".to_owned()));
            }
            all.push(("x-mock-upstream".to_owned(), shared.name.clone()));
            all.extend(headers);
            conn.write_fixed(status, &all, body.as_bytes(), keep)
                .await?;
            Ok(Flow::KeepAlive)
        }
        Reply::Hang => {
            conn.drain_until_closed().await;
            Ok(Flow::Close)
        }
        Reply::CutStream { after } => {
            let events = openai::stream_events(&req.target, &req.body, &ctx);
            stream(conn, shared, &events, Duration::ZERO, Some(after), keep).await
        }
        Reply::SlowStream { gap } => {
            let events = openai::stream_events(&req.target, &req.body, &ctx);
            stream(conn, shared, &events, gap, None, keep).await
        }
        Reply::Events { chunks, gap } => stream(conn, shared, &chunks, gap, None, keep).await,
        Reply::Reset => {
            // Dropping the socket with SO_LINGER 0 sends RST; the caller drops it on `Flow::Close`.
            conn.arm_reset()?;
            Ok(Flow::Close)
        }
        Reply::Garbage => {
            let body = b"<html><body><h1>502 Bad Gateway</h1>upstream sent garbage</body></html>";
            conn.write_fixed(200, &json_headers(&shared.name), body, keep)
                .await?;
            Ok(Flow::KeepAlive)
        }
        // Unwrapped by the loop above.
        Reply::Delay(..) => Ok(Flow::Close),
    }
}

/// Sends `events` as a chunked `text/event-stream`, one chunk per event, pausing `gap` between events; with
/// `cut_after` it closes the connection after that many events, without the terminating chunk.
async fn stream(
    conn: &mut Conn,
    shared: &Shared,
    events: &[String],
    gap: Duration,
    cut_after: Option<usize>,
    keep: bool,
) -> io::Result<Flow> {
    let headers = [
        (
            "content-type".to_owned(),
            "text/event-stream; charset=utf-8".to_owned(),
        ),
        ("cache-control".to_owned(), "no-cache".to_owned()),
        ("x-mock-upstream".to_owned(), shared.name.clone()),
    ];
    conn.write_chunked_head(200, &headers, keep).await?;
    let ended = |events_sent, completed| {
        shared.stream_ends.lock().push(StreamEnd {
            events_sent,
            completed,
            at: Instant::now(),
        });
    };
    for (i, event) in events.iter().enumerate() {
        if cut_after == Some(i) {
            break;
        }
        if i > 0 && !gap.is_zero() {
            // A client that leaves during the pause is noticed at once, as a real server would on its
            // next write (this one just notices it sooner, so tests can say when).
            tokio::select! {
                _ = tokio::time::sleep(gap) => {}
                _ = conn.peer_closed() => {
                    ended(i, false);
                    return Ok(Flow::Close);
                }
            }
        }
        if let Err(e) = conn.write_chunk(event.as_bytes()).await {
            ended(i, false);
            return Err(e);
        }
    }
    ended(
        cut_after.unwrap_or(events.len()).min(events.len()),
        cut_after.is_none(),
    );
    if cut_after.is_some() {
        conn.shutdown().await;
        return Ok(Flow::Close);
    }
    conn.finish_chunked().await?;
    Ok(Flow::KeepAlive)
}

fn json_headers(name: &str) -> [(String, String); 2] {
    [
        ("content-type".to_owned(), "application/json".to_owned()),
        ("x-mock-upstream".to_owned(), name.to_owned()),
    ]
}
