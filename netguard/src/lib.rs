//! SSRF protection for every request to a URL a customer gave (webhooks, `webhook_send`,
//! `play`): only public addresses, checked on the addresses actually connected to (the DNS
//! answer), not on the URL's text, so a name that resolves to 10.0.0.1 or 169.254.169.254 is
//! refused as surely as the literal.
//!
//! [`AddressPolicy::allow`] lets chosen networks through anyway (the binary's
//! `VBIN_WEBHOOK_ALLOW_NETS`; tests allow 127.0.0.1/32); [`AddressPolicy::https_only`]
//! (`VBIN_WEBHOOK_HTTPS_ONLY`) refuses plain http.

pub mod tls;

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

/// Networks never reachable by a webhook unless allowed explicitly.
static BLOCKED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        // IPv4: this network, private, loopback, link-local, shared (CGNAT), IETF protocol
        // assignments, documentation, benchmarking, multicast, reserved and broadcast.
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        // IPv6: unspecified, loopback, discard, Teredo, documentation, unique local,
        // link-local, site-local, multicast.
        "::/128",
        "::1/128",
        "100::/64",
        "2001::/32",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|n| n.parse().expect("valid CIDR"))
    .collect()
});

/// Which addresses webhook requests may connect to.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    /// Networks allowed even though they are not public.
    pub allow: Vec<IpNet>,
    /// Refuse `http://` targets.
    pub https_only: bool,
}

/// IPv4 embedded in an IPv6 address by mapping (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) or
/// 6to4 (2002:AABB:CCDD::/48): it is that IPv4 address that gets reached.
fn embedded_v4(ip: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(std::net::Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return Some(std::net::Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

impl AddressPolicy {
    /// Whether a request may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        if let IpAddr::V6(v6) = ip {
            if let Some(v4) = embedded_v4(v6) {
                return self.permits(IpAddr::V4(v4));
            }
        }
        !BLOCKED.iter().any(|n| n.contains(&ip))
    }

    /// Checks a target URL before sending: scheme, and the host if it is an IP literal
    /// (names are checked by [`GuardedResolver`] on what they resolve to).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Blocked> {
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            s => return Err(Blocked::Scheme(s.to_string())),
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Blocked::NoHost),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Blocked::NotPublic(ip))
        }
    }
}

/// Why a target URL is refused (the text is what the delivery records as its error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// Not https (or http where allowed).
    #[error("blocked: scheme {0} not allowed")]
    Scheme(String),
    /// No host in the URL.
    #[error("blocked: no host")]
    NoHost,
    /// An IP literal the policy refuses.
    #[error("blocked: {0} is not a public address")]
    NotPublic(IpAddr),
}

/// A DNS resolver for reqwest that drops every address the policy refuses (and fails when
/// none is left), so the connection can only go where the check said.
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "blocked: {host} resolves only to addresses that are not public ({found:?})"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        let p = AddressPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} permitted");
        }
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(p.permits(ip(good)), "{good} refused");
        }
    }

    #[test]
    fn the_allow_list_and_urls() {
        let p = AddressPolicy {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            https_only: false,
        };
        assert!(p.permits(ip("127.0.0.1")));
        assert!(!p.permits(ip("127.0.0.2")));
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(p.check_url(&url("http://127.0.0.1:8080/h")).is_ok());
        assert!(p.check_url(&url("http://127.0.0.2/h")).is_err());
        assert!(p.check_url(&url("http://[::1]/h")).is_err());
        assert!(p.check_url(&url("ftp://example.com/")).is_err());
        assert!(p.check_url(&url("http://example.com/")).is_ok());
        let strict = AddressPolicy {
            https_only: true,
            ..p
        };
        assert!(strict.check_url(&url("http://example.com/")).is_err());
        assert!(strict.check_url(&url("https://example.com/")).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        use reqwest::dns::Resolve;
        let r = GuardedResolver::new(Arc::new(AddressPolicy::default()));
        let err = match r.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved through the guard"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("blocked"), "{err}");
        let allowed = GuardedResolver::new(Arc::new(AddressPolicy {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            https_only: false,
        }));
        let addrs: Vec<_> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip() == ip("127.0.0.1")), "{addrs:?}");
    }
}
