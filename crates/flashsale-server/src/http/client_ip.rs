//! Who is the client? The TCP peer's address, unless the peer is one of the operator's
//! trusted proxies, in which case `X-Forwarded-For` is read from the right (the entry each
//! trusted hop appended) to the first address that is not itself a trusted proxy. Anything a
//! client writes to the left of that is ignored, so a client cannot pick its own rate-limit
//! key by sending the header itself.
//!
//! Limits count per [`rate_key`]: an IPv4 address, or an IPv6 client's /64 (one household or
//! one host is given a whole /64, so counting full IPv6 addresses would give a single client
//! billions of buckets).

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The proxies whose `X-Forwarded-For` is believed: a comma-separated list of addresses and
/// CIDR networks (`10.0.0.0/8,::1`). Empty by default: the header is ignored.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        // Later headers were appended by later hops: walk all entries from the right.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev() {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.contains(client) {
                        break;
                    }
                }
                // A garbled entry: trust nothing to its left.
                Err(_) => break,
            }
        }
        client
    }
}

/// The key an address is limited and counted by: IPv4 (or IPv4-mapped IPv6) as is, any other
/// IPv6 address reduced to its /64 network.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("not an IP address or CIDR network: {part:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{self}]")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let got = trusted.client_ip(ip("203.0.113.9"), &headers(&["198.51.100.1"]));
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_for_is_ignored_when_no_proxy_is_trusted() {
        let got = TrustedProxies::default().client_ip(ip("127.0.0.1"), &headers(&["1.2.3.4"]));
        assert_eq!(got, ip("127.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.0.2.7".parse().unwrap();
        // The client forged "6.6.6.6"; the edge proxy 192.0.2.7 appended the real 198.51.100.1.
        let got = trusted.client_ip(
            ip("10.1.2.3"),
            &headers(&["6.6.6.6, 198.51.100.1", "192.0.2.7"]),
        );
        assert_eq!(got, ip("198.51.100.1"));
    }

    #[test]
    fn a_garbled_entry_stops_the_walk() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let got = trusted.client_ip(ip("10.0.0.1"), &headers(&["1.2.3.4, bogus, 10.0.0.2"]));
        assert_eq!(got, ip("10.0.0.2"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_ipv4_by_the_address() {
        assert_eq!(
            rate_key(ip("2001:db8:1:2:aaaa::1")),
            rate_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(rate_key(ip("2001:db8:1:2::7")), ip("2001:db8:1:2::"));
        assert_ne!(
            rate_key(ip("2001:db8:1:2::1")),
            rate_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(rate_key(ip("192.0.2.9")), ip("192.0.2.9"));
        assert_eq!(rate_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let trusted: TrustedProxies = "127.0.0.1".parse().unwrap();
        assert!(trusted.contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_refused_with_their_text() {
        let err = "10.0.0.0/8,nonsense".parse::<TrustedProxies>().unwrap_err();
        assert!(err.contains("nonsense"), "{err}");
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
    }
}
