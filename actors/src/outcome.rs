//! What an attempt at an upstream came to: the classes routing and health decisions are made on.

use std::time::Duration;

/// Why an attempt failed. Routing decides on the class, never on message strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// 429 or an equivalent body: cool down, honour Retry-After.
    RateLimited,
    /// 402, `insufficient_quota`, credit exhausted: bench the profile for a long time.
    Billing,
    /// 401/403: the credential is bad; stop using it until reset or reload.
    Auth,
    /// 5xx, 529, or a 2xx whose body is not what the API promises.
    Server,
    /// No response headers (or no chunk) within the configured timeout.
    Timeout,
    /// Could not connect, or the connection was reset before a response.
    Connect,
    /// A stream ended without its terminator.
    StreamCut,
}

impl FailureClass {
    /// The name used in usage records, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Billing => "billing",
            FailureClass::Auth => "auth",
            FailureClass::Server => "server",
            FailureClass::Timeout => "timeout",
            FailureClass::Connect => "connect",
            FailureClass::StreamCut => "stream_cut",
        }
    }

    /// Whether a profile failing this way feeds the cooldown schedule.
    pub fn cools_down(self) -> bool {
        matches!(
            self,
            FailureClass::RateLimited
                | FailureClass::Server
                | FailureClass::Timeout
                | FailureClass::Connect
                | FailureClass::StreamCut
        )
    }
}

/// The health-relevant result of one attempt, as reported to the profile's actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The upstream answered properly (including a client error such as a 400, which is not its fault).
    Succeeded,
    /// The upstream failed; `retry_after` is the upstream's own hint, when it gave one.
    Failed {
        class: FailureClass,
        retry_after: Option<Duration>,
        /// A short, secret-free description for operators.
        detail: String,
    },
    /// The client went away before the outcome was known: no change of health.
    Abandoned,
}
