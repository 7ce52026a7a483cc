//! One log line per HTTP request (target `voxrt::access`), with credentials kept out: the
//! query string is logged through an allow-list, and the client is the address resolved
//! through `server.trusted_proxies` (the proxy's own address would tell an operator nothing).
//!
//! Browsers put credentials in the query string (`access_token`, and `resume_token` to
//! resume a session), and a client may put them anywhere by mistake. So only parameters the
//! server knows and that carry no secret keep their values; a credential parameter is
//! logged as `[redacted]`, and an unknown one (its name could itself be a token) as
//! `[redacted]=[redacted]`. Headers are never logged.

use crate::client_ip::client_ip;
use crate::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use std::net::IpAddr;
use std::time::Instant;
use voxrt_actors::protocol::KNOWN_PARAMS;

/// What a logged credential (or unknown parameter) is replaced with.
const REDACTED: &str = "[redacted]";

/// Query parameters whose values are credentials.
const CREDENTIALS: [&str; 2] = ["access_token", "resume_token"];

/// Parameters of the operators' endpoints (`/v1/stats`), besides [`KNOWN_PARAMS`].
const OPS_PARAMS: [&str; 2] = ["limit", "offset"];

/// `query` as it may be logged: values of [`CREDENTIALS`] replaced, unknown parameters
/// replaced name and value, known ones kept; all re-encoded. Names are compared after URL
/// decoding, so `access%5Ftoken=` is caught too, and a malformed query never reaches the
/// log as it came.
pub fn redact_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let key = key.as_ref();
        if CREDENTIALS.contains(&key) {
            out.append_pair(key, REDACTED);
        } else if KNOWN_PARAMS.contains(&key) || OPS_PARAMS.contains(&key) {
            out.append_pair(key, &value);
        } else {
            out.append_pair(REDACTED, REDACTED);
        }
    }
    out.finish()
}

/// The client's address: the TCP peer, or the address a trusted proxy forwarded for.
fn client_address(req: &ServiceRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Some(peer);
    };
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok().map(str::to_owned));
    let current = state.current();
    Some(client_ip(
        peer,
        forwarded,
        &current.settings.server.trusted_proxies,
    ))
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
    let client = client_address(&req).map_or_else(String::new, |ip| ip.to_string());
    let res = next.call(req).await?;
    let status = res.status().as_u16();
    let ms = began.elapsed().as_secs_f64() * 1e3;
    if matches!(path.as_str(), "/health" | "/ready" | "/metrics") {
        tracing::debug!(target: "voxrt::access", %method, %path, %query, status, %client, ms, "request");
    } else {
        tracing::info!(target: "voxrt::access", %method, %path, %query, status, %client, ms, "request");
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_however_encoded() {
        let q = redact_query(
            "sample_rate=16000&access_token=s3cr%2Ft&access%5Ftoken=x&resume_token=r3s&channels=1",
        );
        assert!(!q.contains("s3cr"), "{q}");
        assert!(!q.contains("=x"), "{q}");
        assert!(!q.contains("r3s"), "{q}");
        assert_eq!(
            q,
            "sample_rate=16000&access_token=%5Bredacted%5D&access_token=%5Bredacted%5D\
             &resume_token=%5Bredacted%5D&channels=1"
        );
        assert_eq!(redact_query(""), "");
    }

    #[test]
    fn unknown_parameters_lose_name_and_value() {
        let q = redact_query("eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl&Access_Token=k3y&limit=5");
        assert!(!q.contains("eyJ"), "{q}");
        assert!(!q.contains("k3y"), "{q}");
        assert_eq!(
            q,
            "%5Bredacted%5D=%5Bredacted%5D&%5Bredacted%5D=%5Bredacted%5D&limit=5"
        );
    }
}
