//! The one place a test builds an HTTP request to the server under test:
//! `server.post(path).bearer(token).json(body).send()`, returning status, headers and the body.

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use super::{client, Server};

/// A request being built against a test [`Server`]; nothing is sent until `send` or `send_text`.
#[must_use = "a Call does nothing until it is sent"]
pub struct Call(reqwest::RequestBuilder);

impl Server {
    /// A request of any method to `path` on this server.
    pub fn request(&self, method: Method, path: &str) -> Call {
        Call(client().request(method, self.url(path)))
    }

    pub fn get(&self, path: &str) -> Call {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Call {
        self.request(Method::POST, path)
    }

    pub fn patch(&self, path: &str) -> Call {
        self.request(Method::PATCH, path)
    }

    pub fn delete(&self, path: &str) -> Call {
        self.request(Method::DELETE, path)
    }
}

impl Call {
    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Call {
        Call(self.0.bearer_auth(token))
    }

    /// A bearer when there is one: for tests that try the same call with and without a credential.
    pub fn maybe_bearer(self, token: Option<&str>) -> Call {
        match token {
            Some(t) => self.bearer(t),
            None => self,
        }
    }

    pub fn header(self, name: &str, value: &str) -> Call {
        Call(self.0.header(name, value))
    }

    /// A JSON body (a `Value` or a reference to one).
    pub fn json(self, body: impl serde::Serialize) -> Call {
        Call(self.0.json(&body))
    }

    /// A body sent byte for byte as JSON (for bodies `Value` cannot hold, such as a duplicated key).
    pub fn raw_json(self, body: &str) -> Call {
        Call(
            self.0
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
    }

    /// Sends; returns status, headers and the body parsed as JSON (or the text as a JSON string when
    /// it is not JSON, so a test can still print it).
    pub async fn send(self) -> (u16, HeaderMap, Value) {
        let (status, headers, text) = self.send_text().await;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    /// Sends; returns status, headers and the body text.
    pub async fn send_text(self) -> (u16, HeaderMap, String) {
        let resp = self.0.send().await.expect("send");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.expect("body"))
    }
}
