//! `http_fetch`, performed by the gateway for agents (sandboxes have no network).
//!
//! Only after a human approved the exact URL. The request carries no credentials, follows no
//! redirects (a redirect is reported to the agent, which must ask again), is bounded in time
//! and size, and never reaches loopback, private, link-local or otherwise internal addresses:
//! the host name is resolved here, every address checked, and the connection pinned to the
//! checked addresses so DNS cannot change its answer in between.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Performs the fetch and describes the outcome for the model. Never fails: errors are text.
pub async fn fetch(url: &str, cap: usize) -> String {
    match fetch_inner(url, cap).await {
        Ok(text) => text,
        Err(e) => format!("error: {e}"),
    }
}

async fn fetch_inner(url: &str, cap: usize) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("only http and https URLs can be fetched".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URLs with credentials are refused".into());
    }
    let host = parsed.host_str().ok_or("URL has no host")?.to_owned();
    let port = parsed.port_or_known_default().ok_or("URL has no port")?;
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port)),
    )
    .await
    .map_err(|_| "DNS lookup timed out".to_owned())?
    .map_err(|e| format!("DNS lookup failed: {e}"))?
    .collect();
    if addrs.is_empty() {
        return Err("host has no addresses".into());
    }
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, an internal address; refused",
            bad.ip()
        ));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .resolve_to_addrs(&host, &addrs)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut resp = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let mut out = format!("HTTP {}\n", status.as_u16());
    if status.is_redirection() {
        if let Some(loc) = resp.headers().get(reqwest::header::LOCATION) {
            out.push_str(&format!(
                "redirect to: {}\n",
                String::from_utf8_lossy(loc.as_bytes())
            ));
        }
        return Ok(out);
    }
    let mut body = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading body: {e}"))?
    {
        total += chunk.len();
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if total > cap.saturating_mul(16) {
            break; // stop downloading far past what we keep
        }
    }
    out.push_str(&String::from_utf8_lossy(&body));
    if total > body.len() {
        out.push_str(&format!(
            "\n[truncated: kept {} of at least {total} bytes]",
            body.len()
        ));
    }
    Ok(out)
}

/// Whether an address is on the public internet (not loopback, private, link-local, CGNAT,
/// multicast, documentation, unspecified or IPv4-mapped internal).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] == 0x2001 && seg[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn loopback_and_odd_urls_are_refused_without_a_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let out = fetch(&url, 1024).await;
        assert!(
            out.starts_with("error:") && out.contains("internal address"),
            "{out}"
        );
        assert!(
            fetch("http://localhost:1/", 1024)
                .await
                .contains("internal address")
        );
        assert!(
            fetch("http://user:pw@example.com/", 1024)
                .await
                .contains("credentials")
        );
        assert!(
            fetch("ftp://example.com/", 1024)
                .await
                .starts_with("error:")
        );
        // Nothing connected to our listener.
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err());
    }
}
