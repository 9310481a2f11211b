//! Discord's REST API, through serenity's request builder and routes.
//!
//! Two transports, chosen once from the settings:
//! - **Discord itself** (no `DISCORD_API_URL`): serenity's [`Http`] with its own ratelimiter,
//!   which tracks the buckets, waits before a request would be refused, and sits out any 429's
//!   `Retry-After` by itself.
//! - **Another server** (`DISCORD_API_URL`: a fake in tests, a proxy in production): serenity
//!   ignores the proxy while its ratelimiter is on, so the ratelimiter is off. And serenity's
//!   error for a refused request (`HttpError::UnsuccessfulRequest(ErrorResponse)`) keeps only
//!   the status and the JSON `code`/`message`: Discord's `retry_after` (body) and
//!   `Retry-After` (header) are dropped. So in this mode the request serenity builds
//!   ([`Request::build`]) is sent on a plain client here, and a 429 is waited out and the same
//!   request sent again, at most [`MAX_ATTEMPTS`] times; waits over [`MAX_RETRY_AFTER`] go back
//!   to the caller as [`ChannelError::RateLimited`] for the gateway's outbox.
//!
//! Errors never carry the bot token (it travels only in the `Authorization` header) nor an
//! interaction token (URLs are stripped from transport errors).

use std::time::Duration;

use boxedclaw_channels::ChannelError;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serenity::http::{Http, HttpBuilder, HttpError, LightMethod, Request, Route};

/// A request is tried this often when the server answers 429.
pub(crate) const MAX_ATTEMPTS: u32 = 5;
/// Longest wait sat out inside one request; longer ones are handed to the caller.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Wait used when a 429 names none (never seen from Discord; a proxy might).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Per-request timeout of the proxy-mode client (serenity's default client has none).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The REST side of the adapter.
pub(crate) struct Rest {
    http: Http,
    /// Set in proxy mode: the plain client and the base URL replacing `https://discord.com`.
    direct: Option<(reqwest::Client, String)>,
}

impl std::fmt::Debug for Rest {
    // By hand: never print the client, which holds the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("proxy", &self.direct.as_ref().map(|(_, base)| base))
            .finish_non_exhaustive()
    }
}

/// Serenity's HTTP client for `token`, pointed at `api_url` when given (with its ratelimiter
/// off, since it would ignore the proxy otherwise).
pub(crate) fn serenity_http(token: &str, api_url: Option<&str>) -> Http {
    match api_url {
        Some(url) => HttpBuilder::new(token)
            .proxy(url.trim_end_matches('/'))
            .ratelimiter_disabled(true)
            .build(),
        None => HttpBuilder::new(token).build(),
    }
}

impl Rest {
    /// The REST client for `token`, talking to `api_url` (`http(s)://host[:port]`, without
    /// `/api/v10`) or to Discord.
    pub(crate) fn new(token: &str, api_url: Option<&str>) -> Result<Self, String> {
        let direct = match api_url {
            Some(url) => {
                let base = url.trim_end_matches('/').to_owned();
                if !(base.starts_with("http://") || base.starts_with("https://")) {
                    return Err(format!(
                        "DISCORD_API_URL {url:?} must be an http(s) URL like http://127.0.0.1:8080"
                    ));
                }
                let client = reqwest::Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))?;
                Some((client, base))
            }
            None => None,
        };
        Ok(Self {
            http: serenity_http(token, api_url),
            direct,
        })
    }

    /// Sends one request and returns the response body (empty for 204).
    pub(crate) async fn send(
        &self,
        method: LightMethod,
        route: Route<'_>,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, ChannelError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ChannelError::Platform(format!("request body: {e}")))?;
        let request = Request::new(route, method).body(body);
        match &self.direct {
            None => {
                let response = self.http.request(request).await.map_err(serenity_error)?;
                let bytes = response.bytes().await.map_err(transport)?;
                Ok(bytes.to_vec())
            }
            Some((client, base)) => self.send_direct(client, base, request).await,
        }
    }

    /// Proxy mode: serenity builds the request, we send it and honour 429s.
    async fn send_direct(
        &self,
        client: &reqwest::Client,
        base: &str,
        request: Request<'_>,
    ) -> Result<Vec<u8>, ChannelError> {
        let path = request
            .route_ref()
            .path()
            .replace("https://discord.com", "");
        let mut attempt = 1;
        loop {
            let built = request
                .clone()
                .build(client, self.http.token(), Some(base))
                .map_err(serenity_error)?
                .build()
                .map_err(transport)?;
            let response = client.execute(built).await.map_err(transport)?;
            let status = response.status();
            let header_wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok());
            let bytes = response.bytes().await.map_err(transport)?.to_vec();
            if status.is_success() {
                return Ok(bytes);
            }
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.as_u16() == 429 {
                // The body's `retry_after` is the precise one (seconds, fractional); the
                // header is rounded up to whole seconds.
                let wait = json
                    .get("retry_after")
                    .and_then(Value::as_f64)
                    .or(header_wait)
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs_f64);
                if attempt < MAX_ATTEMPTS && wait <= MAX_RETRY_AFTER {
                    tracing::info!(
                        platform = "discord",
                        route = %redact(&path),
                        wait_ms = wait.as_millis() as u64,
                        attempt,
                        "rate limited; waiting"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    continue;
                }
                return Err(ChannelError::RateLimited { retry_after: wait });
            }
            let code = json.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = json
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            return Err(status_error(status.as_u16(), code, &message));
        }
    }

    /// Sends one request and decodes the JSON answer.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: LightMethod,
        route: Route<'_>,
        body: Option<&Value>,
    ) -> Result<T, ChannelError> {
        let bytes = self.send(method, route, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ChannelError::Platform(format!("unexpected answer from Discord: {e}")))
    }
}

/// Interaction tokens sit in webhook and callback paths: never log them.
fn redact(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    let mut hide_next = 0;
    for part in parts {
        if hide_next == 2 {
            // skip the id after /webhooks or /interactions; hide the token after it
            out.push(part.to_owned());
            hide_next = 1;
        } else if hide_next == 1 {
            out.push("<token>".to_owned());
            hide_next = 0;
        } else {
            if part == "webhooks" || part == "interactions" {
                hide_next = 2;
            }
            out.push(part.to_owned());
        }
    }
    out.join("/")
}

fn transport(e: reqwest::Error) -> ChannelError {
    // Without the URL: it may hold an interaction token.
    ChannelError::Transport(e.without_url().to_string())
}

fn status_error(status: u16, code: i64, message: &str) -> ChannelError {
    let text = format!("HTTP {status}, Discord code {code}: {message}");
    match status {
        401 => ChannelError::Auth(text),
        429 => ChannelError::RateLimited {
            retry_after: DEFAULT_RETRY_AFTER,
        },
        500..=599 => ChannelError::Transport(text),
        _ => ChannelError::Platform(text),
    }
}

/// Maps serenity's errors (its ratelimiter has already sat out any 429).
fn serenity_error(e: serenity::Error) -> ChannelError {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => status_error(
            r.status_code.as_u16(),
            i64::try_from(r.error.code).unwrap_or(-1),
            &r.error.message,
        ),
        serenity::Error::Http(HttpError::Request(e)) => transport(e),
        other => ChannelError::Platform(other.to_string()),
    }
}

/// Discord's JSON error code of a refused request, for callers that treat some as expected.
pub(crate) fn is_code(e: &ChannelError, code: i64) -> bool {
    matches!(e, ChannelError::Platform(text) if text.contains(&format!("Discord code {code}:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interaction_tokens_are_redacted_from_paths() {
        assert_eq!(
            redact("/api/v10/interactions/123/aW50ZXJhY3Rpb24/callback"),
            "/api/v10/interactions/123/<token>/callback"
        );
        assert_eq!(
            redact("/api/v10/webhooks/9/tok.en/messages/@original"),
            "/api/v10/webhooks/9/<token>/messages/@original"
        );
        assert_eq!(
            redact("/api/v10/channels/1/messages"),
            "/api/v10/channels/1/messages"
        );
    }

    #[test]
    fn statuses_map_to_channel_errors() {
        assert!(matches!(status_error(401, 0, "x"), ChannelError::Auth(_)));
        assert!(matches!(
            status_error(502, 0, "x"),
            ChannelError::Transport(_)
        ));
        let e = status_error(404, 10008, "Unknown Message");
        assert!(is_code(&e, 10008));
        assert!(!is_code(&e, 10003));
    }

    #[test]
    fn api_urls_must_be_http() {
        assert!(Rest::new("t", Some("127.0.0.1:1")).is_err());
        assert!(Rest::new("t", Some("http://127.0.0.1:1/")).is_ok());
        assert!(Rest::new("t", None).is_ok());
    }
}
