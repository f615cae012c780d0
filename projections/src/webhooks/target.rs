//! Where deliveries may go: an endpoint's URL is checked against SSRF when it is registered and
//! again on every attempt, after DNS resolution, and the connection goes to the address checked;
//! only `https://` to public addresses, unless the operator allows a host.

use super::*;

/// `host:port` pairs that may be targets although they are not public (tests, internal
/// receivers): `SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS`, comma-separated.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<String>);

impl AllowList {
    /// Parses `a:1,b:2`.
    pub fn parse(list: &str) -> Self {
        Self(list.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect())
    }

    fn allows(&self, host_port: &str) -> bool {
        self.0.iter().any(|h| h == host_port)
    }
}

/// A checked target: where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL.
    pub url: reqwest::Url,
    /// Its host name as written.
    pub host: String,
    /// The addresses it resolved to (all checked).
    pub addresses: Vec<SocketAddr>,
}

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared, documentation, multicast or otherwise special).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

/// Checks `url` as a webhook target: `https://`, or `http://` to an allow-listed `host:port`;
/// it must resolve, and to public addresses only unless its `host:port` is allow-listed. The
/// error is a sentence for the `url` field.
pub async fn check_target(url: &str, allow: &AllowList) -> Result<Target, String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "must be an absolute URL such as https://example.com/hooks".to_owned())?;
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    let host = parsed.host_str().ok_or_else(|| "must name a host".to_owned())?.to_owned();
    let port = parsed.port_or_known_default().ok_or_else(|| "must be https:// or http://".to_owned())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let allowed = allow.allows(&format!("{}:{port}", host.to_ascii_lowercase()));
    match parsed.scheme() {
        "https" => {}
        "http" if allowed => {}
        "http" => {
            return Err(format!("must be https:// (http:// only to a host:port in SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS; {host}:{port} is not)"))
        }
        _ => return Err("must be https:// or http://".to_owned()),
    }
    let addresses: Vec<SocketAddr> = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((bare.as_str(), port))).await {
        Ok(Ok(found)) => found.collect(),
        _ => return Err(format!("{host} does not resolve")),
    };
    if addresses.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    if !allowed {
        if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
            return Err(format!(
                "resolves to {}, a loopback, private or link-local address (allowed only for a host:port in SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS)",
                private.ip()
            ));
        }
    }
    Ok(Target { url: parsed, host: bare, addresses })
}
