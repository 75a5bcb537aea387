//! What the mock received: `ReceivedRequest`, one per HTTP request, recorded in arrival order.

use std::net::SocketAddr;

use bytes::Bytes;

/// One HTTP request as the mock received it.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Request target as sent, query string included (e.g. `/v1/chat/completions`).
    pub path: String,
    /// Headers in arrival order; names are lowercased, values untouched.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked when it came with `Transfer-Encoding: chunked`.
    pub body: Bytes,
    /// The client's address; two requests with the same `peer` came over one keep-alive connection.
    pub peer: SocketAddr,
}

impl ReceivedRequest {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_is_case_insensitive_and_json_never_panics() {
        let req = ReceivedRequest {
            method: "POST".into(),
            path: "/v1/x?a=1".into(),
            headers: vec![("authorization".into(), "Bearer sk-1".into())],
            body: Bytes::from_static(b"{nope"),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(req.header("Authorization"), Some("Bearer sk-1"));
        assert_eq!(req.bearer(), Some("sk-1"));
        assert_eq!(req.json(), serde_json::Value::Null);
        assert_eq!(req.path_only(), "/v1/x");
    }
}
