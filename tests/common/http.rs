//! Plain HTTP requests to a test server (ureq, blocking): the status, headers and body as
//! they arrived, with the assertions every JSON answer shares. No connection is kept alive,
//! so servers shut down without waiting for idle clients.

use super::{assert_no_leak, HANG};
use serde_json::Value;

/// One HTTP answer: status, headers (lowercase names), body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Type`, or "" without one.
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("JSON body expected ({e}): {self:?}"))
    }

    /// Asserts `status` and a JSON body; returns the body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.content_type().starts_with("application/json"),
            "{self:?}"
        );
        self.json()
    }

    /// Asserts the `{"error":{code,message,correlation_id}}` shape with `status` and `code`;
    /// returns the message.
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        let body = self.expect(status);
        assert_eq!(body["error"]["code"], code, "{body}");
        uuid::Uuid::parse_str(body["error"]["correlation_id"].as_str().unwrap_or(""))
            .unwrap_or_else(|_| panic!("correlation_id is a UUID: {body}"));
        let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
        assert!(!message.is_empty(), "{body}");
        message
    }
}

/// `method` (`GET` or `POST`) `url` with an optional raw `Authorization` header value. A
/// JSON error body is checked for leaked internals (`assert_no_leak`).
pub fn request(method: &str, url: &str, authorization: Option<&str>) -> Reply {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .timeout_global(Some(HANG))
            .build(),
    );
    request_via(&agent, method, url, authorization)
}

/// [`request`] through `agent` (one configured for https, say).
pub fn request_via(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    authorization: Option<&str>,
) -> Reply {
    let response = match (method, authorization) {
        ("GET", None) => agent.get(url).call(),
        ("GET", Some(a)) => agent.get(url).header("Authorization", a).call(),
        ("POST", None) => agent.post(url).send_empty(),
        ("POST", Some(a)) => agent.post(url).header("Authorization", a).send_empty(),
        _ => panic!("method {method}"),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url} body: {e}"));
    let reply = Reply {
        status,
        headers,
        body,
    };
    if status >= 400 && reply.content_type().starts_with("application/json") {
        assert_no_leak(&format!("{method} {url} {status}"), &reply.body);
    }
    reply
}

/// Writes `request` (a whole raw HTTP/1.1 request, normally with `Connection: close`) to
/// `addr` and reads until the server closes: for requests a client library would not send
/// (hand-made upgrade headers, plain GETs on the WebSocket route).
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(HANG, tcp.read_to_end(&mut raw))
        .await
        .expect("response hung")
        .expect("read");
    String::from_utf8(raw).expect("UTF-8 response")
}
