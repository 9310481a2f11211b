//! Who may use the console: this machine, or whoever holds the admin token.
//!
//! A request is let in when
//! - it carries the admin token (`Authorization: Bearer …`, or the cookie `/login` sets), or
//! - it comes from a loopback address *and* names a local host (`localhost`, `127.0.0.1`,
//!   `[::1]`). The host check matters: behind a reverse proxy on the same machine every request
//!   is loopback, and a DNS-rebinding page reaches `127.0.0.1` under a foreign name; both name
//!   some other host and so need the token.
//!
//! State-changing requests from another origin (`Origin` / `Sec-Fetch-Site`) are refused, and
//! every console response carries a strict Content-Security-Policy, so text that slips through
//! as markup still cannot run script.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::secrets::Secret;

/// The cookie `/login` sets: a hash of the token, never the token itself.
pub const ADMIN_COOKIE: &str = "boxedclaw_admin";
/// Failed logins allowed per [`LOGIN_WINDOW`], across all clients, before `/api/login` answers 429.
const LOGIN_FAILURES: usize = 5;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Headers every console response carries.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// What [`AccessPolicy::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Allow,
    /// No valid admin token, and not a local request.
    Unauthorized,
    /// A state-changing request from another site.
    CrossSite,
}

/// The console's access rule (see the module docs).
#[derive(Debug)]
pub struct AccessPolicy {
    token: Option<Arc<Secret>>,
    /// `hex(sha256(domain ‖ token))`: what the admin cookie must hold.
    cookie: Option<String>,
    failures: Mutex<VecDeque<Instant>>,
}

impl AccessPolicy {
    /// A policy for `token` (`None`: only local requests get in).
    pub fn new(token: Option<Arc<Secret>>) -> Self {
        let cookie = token.as_ref().map(|t| cookie_value(t.expose()));
        Self {
            token,
            cookie,
            failures: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether an admin token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Decides a request from `peer` (`None`: unknown, treated as remote) with `headers`.
    pub fn check(&self, peer: Option<SocketAddr>, method: &Method, headers: &HeaderMap) -> Verdict {
        if !is_safe(method) && is_cross_site(headers) {
            return Verdict::CrossSite;
        }
        if self.presents_token(headers) {
            return Verdict::Allow;
        }
        let local_peer = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
        if local_peer && names_local_host(headers) {
            Verdict::Allow
        } else {
            Verdict::Unauthorized
        }
    }

    fn presents_token(&self, headers: &HeaderMap) -> bool {
        let (Some(token), Some(cookie)) = (&self.token, &self.cookie) else {
            return false;
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|v| token.matches(v.trim().as_bytes()));
        bearer
            || cookies(headers, ADMIN_COOKIE)
                .any(|v| constant_time_eq(v.as_bytes(), cookie.as_bytes()))
    }

    /// Checks a token typed into the login page; returns the cookie to set. Failures are
    /// counted across all clients: past [`LOGIN_FAILURES`] a minute, every attempt fails with
    /// [`LoginError::TooMany`] until the window passes.
    pub fn login(&self, candidate: &str) -> Result<String, LoginError> {
        let (Some(token), Some(cookie)) = (&self.token, &self.cookie) else {
            return Err(LoginError::NoToken);
        };
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > LOGIN_WINDOW)
        {
            failures.pop_front();
        }
        if failures.len() >= LOGIN_FAILURES {
            return Err(LoginError::TooMany);
        }
        if token.matches(candidate.trim().as_bytes()) {
            Ok(format!(
                "{ADMIN_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict"
            ))
        } else {
            failures.push_back(now);
            Err(LoginError::Wrong)
        }
    }
}

/// Why a login failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// No admin token is configured: the console is open to this machine only.
    #[error("no admin token is configured; the console is open to this machine only")]
    NoToken,
    /// Not the token.
    #[error("wrong token")]
    Wrong,
    /// Too many wrong tokens lately.
    #[error("too many failed logins; wait a minute")]
    TooMany,
}

fn cookie_value(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"boxedclaw console session v1\0");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The values of cookie `name` in the request.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The `Host` header without its port; `None` when absent or unreadable.
fn host_name(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    })
}

fn names_local_host(headers: &HeaderMap) -> bool {
    match host_name(headers) {
        // HTTP/1.0 clients may send no Host; a browser always does.
        None => headers.get(header::HOST).is_none(),
        Some(h) => {
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback())
        }
    }
}

fn is_cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host != Some(host)
}

/// The axum middleware: applies `policy`, answers refusals, adds the security headers.
pub async fn guard(policy: Arc<AccessPolicy>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let verdict = policy.check(peer, req.method(), req.headers());
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut response = match verdict {
        Verdict::Allow => next.run(req).await,
        Verdict::CrossSite => {
            (StatusCode::FORBIDDEN, "cross-site requests are refused\n").into_response()
        }
        Verdict::Unauthorized if wants_html => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            super::assets::LOGIN_HTML,
        )
            .into_response(),
        Verdict::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the BoxedClaw console needs the admin token from other machines: send \
             `Authorization: Bearer <BOXEDCLAW_ADMIN_TOKEN>` or log in at /login\n",
        )
            .into_response(),
    };
    add_security_headers(response.headers_mut());
    response
}

/// Adds the console's security headers (also used by the routes outside [`guard`]).
pub fn add_security_headers(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers.insert(*name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TOKEN: &str = "console-token-0123456789";

    fn policy() -> AccessPolicy {
        AccessPolicy::new(Some(Arc::new(Secret::new(TOKEN.to_owned()))))
    }

    fn local() -> Option<SocketAddr> {
        Some("127.0.0.1:5555".parse().unwrap())
    }

    fn remote() -> Option<SocketAddr> {
        Some("192.0.2.7:5555".parse().unwrap())
    }

    #[test]
    fn local_requests_naming_a_local_host_get_in_without_a_token() {
        let p = AccessPolicy::new(None);
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            let h = headers(&[("host", host)]);
            assert_eq!(p.check(local(), &Method::GET, &h), Verdict::Allow, "{host}");
        }
        let v6: Option<SocketAddr> = Some("[::ffff:127.0.0.1]:9".parse().unwrap());
        assert_eq!(
            p.check(v6, &Method::GET, &headers(&[("host", "localhost")])),
            Verdict::Allow
        );
    }

    #[test]
    fn remote_peers_and_foreign_host_names_need_the_token() {
        let p = policy();
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(p.check(remote(), &Method::GET, &h), Verdict::Unauthorized);
        assert_eq!(p.check(None, &Method::GET, &h), Verdict::Unauthorized);
        // DNS rebinding, or a reverse proxy on this machine: loopback peer, foreign name.
        let rebound = headers(&[("host", "evil.example:8080")]);
        assert_eq!(
            p.check(local(), &Method::GET, &rebound),
            Verdict::Unauthorized
        );

        let bearer = format!("Bearer {TOKEN}");
        let ok = headers(&[("host", "gw.example"), ("authorization", &bearer)]);
        assert_eq!(p.check(remote(), &Method::GET, &ok), Verdict::Allow);
        let wrong = headers(&[("authorization", "Bearer console-token-0123456780")]);
        assert_eq!(
            p.check(remote(), &Method::GET, &wrong),
            Verdict::Unauthorized
        );
        let raw_cookie = format!("{ADMIN_COOKIE}={TOKEN}");
        let token_as_cookie = headers(&[("cookie", &raw_cookie)]);
        assert_eq!(
            p.check(remote(), &Method::GET, &token_as_cookie),
            Verdict::Unauthorized,
            "the cookie holds a derived value, not the token"
        );
    }

    #[test]
    fn login_sets_a_cookie_that_opens_the_console_and_failures_are_limited() {
        let p = policy();
        let set = p.login(TOKEN).unwrap();
        assert!(!set.contains(TOKEN));
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        let cookie = set.split(';').next().unwrap();
        let h = headers(&[("cookie", &format!("other=1; {cookie}"))]);
        assert_eq!(p.check(remote(), &Method::GET, &h), Verdict::Allow);

        for _ in 0..LOGIN_FAILURES {
            assert_eq!(p.login("guess-guess-guess-1"), Err(LoginError::Wrong));
        }
        assert_eq!(p.login(TOKEN), Err(LoginError::TooMany));
        assert_eq!(
            AccessPolicy::new(None).login(TOKEN),
            Err(LoginError::NoToken)
        );
    }

    #[test]
    fn cross_site_state_changes_are_refused_even_locally() {
        let p = AccessPolicy::new(None);
        let host = ("host", "127.0.0.1:8080");
        let foreign = headers(&[host, ("origin", "http://evil.example")]);
        assert_eq!(
            p.check(local(), &Method::POST, &foreign),
            Verdict::CrossSite
        );
        let fetch_meta = headers(&[host, ("sec-fetch-site", "cross-site")]);
        assert_eq!(
            p.check(local(), &Method::POST, &fetch_meta),
            Verdict::CrossSite
        );
        let same = headers(&[
            host,
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(p.check(local(), &Method::POST, &same), Verdict::Allow);
        // Reading is not a state change: a cross-site GET is judged by the usual rule.
        assert_eq!(p.check(local(), &Method::GET, &foreign), Verdict::Allow);
    }
}
