//! A mock OpenAI-compatible upstream with fault injection, speaking real HTTP/1.1 (keep-alive, chunked
//! SSE) on 127.0.0.1, for the proxy's integration tests and load tests.
//!
//! ```no_run
//! # async fn demo() {
//! use switchyard_load_tests::{MockUpstream, Reply};
//! let upstream = MockUpstream::start_named("a").await;
//! upstream.push(Reply::rate_limited(1)); // the next request gets a 429, later ones the echo
//! // point the proxy at upstream.base_url(), send a request, then:
//! assert!(upstream.wait_for_requests(1, std::time::Duration::from_secs(5)).await);
//! assert_eq!(upstream.requests()[0].path, "/v1/chat/completions");
//! # }
//! ```
#![forbid(unsafe_code)]

mod agent;
mod anthropic;
mod http;
mod openai;
mod reply;
mod request;
mod responses;
mod server;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use agent::MARKER as AGENT_MARKER;
pub use reply::Reply;
pub use request::ReceivedRequest;
pub use server::StreamEnd;

use server::Shared;

/// How to start a [`MockUpstream`] beyond the defaults of [`MockUpstream::start`].
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Address to listen on (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// Name that appears in every reply text and in the `x-mock-upstream` header (default `mock`).
    pub name: String,
    /// Extra latency before every response, on top of any `Reply::Delay` (default zero).
    pub latency: Duration,
    /// Share of requests (0.0..=1.0) answered with `Reply::server_error()` instead of their reply (default 0).
    pub fault_rate: f64,
    /// Whether to keep every request for `requests()`; turn off for long load tests (default on).
    pub record_requests: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: "mock".to_owned(),
            latency: Duration::ZERO,
            fault_rate: 0.0,
            record_requests: true,
        }
    }
}

/// A running mock upstream; dropping it closes the listener and every open connection.
pub struct MockUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// A second handle on the listening socket, so `Drop` can stop accepting synchronously (a test that
    /// drops the mock and connects at once gets "connection refused", not a race with the task's abort).
    listener: socket2::Socket,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Binds 127.0.0.1:0 and spawns the server task; the mock is called `mock`.
    ///
    /// # Panics
    /// When no port can be bound on 127.0.0.1, or outside a tokio runtime.
    pub async fn start() -> MockUpstream {
        Self::start_named("mock").await
    }

    /// Like [`MockUpstream::start`], with a name that appears in reply texts (`mock reply from <name>`).
    ///
    /// # Panics
    /// When no port can be bound on 127.0.0.1, or outside a tokio runtime.
    pub async fn start_named(name: &str) -> MockUpstream {
        let options = MockOptions {
            name: name.to_owned(),
            ..MockOptions::default()
        };
        match Self::start_with(options).await {
            Ok(mock) => mock,
            Err(e) => panic!("mock upstream {name}: cannot listen on 127.0.0.1:0: {e}"),
        }
    }

    /// Starts with explicit options (a fixed address, e.g. to restart on the same port, latency, faults).
    pub async fn start_with(options: MockOptions) -> io::Result<MockUpstream> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(options.listen), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&options.listen.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        let handle = socket.try_clone()?;
        let listener = tokio::net::TcpListener::from_std(socket.into())?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(
            options.name,
            options.latency,
            options.fault_rate,
            options.record_requests,
        ));
        let task = tokio::spawn(server::accept_loop(listener, shared.clone()));
        Ok(MockUpstream {
            shared,
            addr,
            listener: handle,
            task,
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The mock's name, as it appears in reply texts and the `x-mock-upstream` header.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Queues a one-shot reply: the next request gets it (FIFO), then the default behaviour resumes.
    pub fn push(&self, reply: Reply) {
        self.shared.state.lock().queue.push_back(reply);
    }

    /// Queues the same reply `n` times.
    pub fn push_n(&self, n: usize, reply: Reply) {
        let mut state = self.shared.state.lock();
        state.queue.extend(std::iter::repeat_n(reply, n));
    }

    /// Replaces the default behaviour (used when the queue is empty).
    pub fn set_default(&self, reply: Reply) {
        self.shared.state.lock().default = reply;
    }

    /// Replaces the model ids `GET /v1/models` lists (and `GET /v1/models/{id}` knows).
    pub fn set_models(&self, models: Vec<String>) {
        self.shared.state.lock().models = Arc::new(models);
    }

    /// Every request received so far, in order (empty when recording is off).
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.state.lock().requests.clone()
    }

    /// Number of requests received so far (counted even when recording is off).
    pub fn request_count(&self) -> usize {
        self.shared.state.lock().count
    }

    /// Number of TCP connections accepted so far (one per client connection, however many requests it carried).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// How every streamed answer so far ended (sent whole, or the client closed first), in order.
    pub fn stream_ends(&self) -> Vec<StreamEnd> {
        self.shared.stream_ends.lock().clone()
    }

    /// Clears the queue and the recorded requests (and the count), and restores `Reply::Echo` as default.
    pub fn clear(&self) {
        let mut state = self.shared.state.lock();
        state.queue.clear();
        state.requests.clear();
        state.count = 0;
        state.default = Reply::Echo;
    }

    /// Waits until at least `n` requests have arrived; false if `timeout` passed first.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            // Register before checking, so an arrival between the check and the await is not missed.
            arrived.as_mut().enable();
            if self.request_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.request_count() >= n;
            }
        }
    }
}

impl Drop for MockUpstream {
    /// Stops accepting at once, then aborts the server task and with it every open connection.
    fn drop(&mut self) {
        let _ = self.listener.shutdown(Shutdown::Both);
        self.task.abort();
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
