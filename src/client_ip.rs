//! The client's address behind reverse proxies.
//!
//! `X-Forwarded-For` is only believed when the TCP peer is a configured trusted proxy; then
//! the client is the right-most entry that is not itself a trusted proxy (entries to its left
//! were written by the client and can be forged). Per-IP limits and logs use this address.

use crate::settings::TrustedProxy;
use std::net::IpAddr;

/// The client address for a connection from `peer` carrying `forwarded_for` headers.
pub fn client_ip(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = String>,
    trusted: &[TrustedProxy],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|p| p.0.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = forwarded_for
        .flat_map(|h| {
            h.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter_map(|s| s.parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter()
            .map(|s| TrustedProxy::try_from(s.to_string()).unwrap())
            .collect()
    }

    fn xff(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn header_from_untrusted_peer_is_ignored() {
        let got = client_ip(
            ip("203.0.113.9"),
            xff(&["1.2.3.4"]),
            &proxies(&["10.0.0.0/8"]),
        );
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // The client forged "6.6.6.6"; the proxy appended the real address.
        let got = client_ip(
            ip("10.0.0.2"),
            xff(&["6.6.6.6, 198.51.100.7", "10.0.0.5"]),
            &trusted,
        );
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        let got = client_ip(ip("10.0.0.2"), xff(&[]), &proxies(&["10.0.0.0/8"]));
        assert_eq!(got, ip("10.0.0.2"));
    }
}
