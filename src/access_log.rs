//! One log line per HTTP request (target `voxrt::access`), with `access_token` values
//! redacted: browsers put credentials in the query string, and logs must never hold them.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use std::time::Instant;

/// What a logged `access_token` value is replaced with.
const REDACTED: &str = "[redacted]";

/// `query` with every `access_token` value replaced (the key compared after URL decoding, so
/// `access%5Ftoken=` is caught too). Other parameters are kept, re-encoded.
pub fn redact_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "access_token" {
            out.append_pair(&key, REDACTED);
        } else {
            out.append_pair(&key, &value);
        }
    }
    out.finish()
}

/// The middleware: logs method, path, redacted query, status, client and duration.
/// Probes and metrics scrapes log at debug, everything else at info.
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let began = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let query = redact_query(req.query_string());
    let peer = req.peer_addr();
    let res = next.call(req).await?;
    let status = res.status().as_u16();
    let ms = began.elapsed().as_secs_f64() * 1e3;
    if matches!(path.as_str(), "/health" | "/ready" | "/metrics") {
        tracing::debug!(target: "voxrt::access", %method, %path, %query, status, ?peer, ms, "request");
    } else {
        tracing::info!(target: "voxrt::access", %method, %path, %query, status, ?peer, ms, "request");
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_values_are_redacted_however_encoded() {
        let q = redact_query("sample_rate=16000&access_token=s3cr%2Ft&access%5Ftoken=x&channels=1");
        assert!(!q.contains("s3cr"), "{q}");
        assert!(!q.contains("=x"), "{q}");
        assert!(
            q.starts_with("sample_rate=16000&access_token=%5Bredacted%5D"),
            "{q}"
        );
        assert!(q.ends_with("channels=1"), "{q}");
        assert_eq!(redact_query(""), "");
    }
}
