//! The HTTP interactions endpoint (optional): Discord POSTs clicks and commands to the
//! application's "Interactions Endpoint URL" instead of sending them on the gateway websocket.
//!
//! Discord signs every request with the application's Ed25519 key: `X-Signature-Ed25519` is
//! the hex signature of the `X-Signature-Timestamp` bytes followed by the raw body bytes. The
//! signature is checked (`verify_strict`, against the public key from the Developer Portal)
//! on the bytes as received, before anything is parsed; a missing or malformed header, a bad
//! signature or a stale timestamp is answered 401 and nothing is processed. Discord probes the
//! URL when it is saved (and now and then after): a signed PING must get `{"type":1}`, and
//! requests with bad signatures must get 401, or the URL is refused.
//!
//! A verified click or command goes through `DiscordChannel::react`, the code the
//! websocket's interactions go through; its first answer is the HTTP response here (there it
//! is a REST callback), and the event reaches the gateway only once that response was sent.

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use serenity::all::Interaction;
use tokio::sync::oneshot;

use crate::{DiscordChannel, SetupError};

/// Where the endpoint is served unless configured otherwise.
pub const DEFAULT_INTERACTIONS_PATH: &str = "/discord/interactions";
/// The header with the request's signature (hex).
pub(crate) const SIGNATURE_HEADER: &str = "x-signature-ed25519";
/// The header with the signed timestamp (Unix seconds).
pub(crate) const TIMESTAMP_HEADER: &str = "x-signature-timestamp";
/// Larger bodies are refused with 413 (interactions are a few KiB).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Signed timestamps further than this from now are refused. Not required by Discord, but a
/// captured request can then be replayed only within this window (and the adapter drops a
/// replayed interaction id anyway).
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The application's public key, which checks the signatures of HTTP interactions: 32 bytes,
/// written as 64 hex digits in the Developer Portal (General Information → Public Key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InteractionsKey(VerifyingKey);

impl InteractionsKey {
    /// The key from its 32 bytes.
    ///
    /// # Errors
    /// [`SetupError`] when the bytes are not a usable Ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SetupError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| SetupError("DISCORD_PUBLIC_KEY is not an Ed25519 public key".into()))?;
        // A small-order key would accept signatures nobody needs the private key for.
        if key.is_weak() {
            return Err(SetupError(
                "DISCORD_PUBLIC_KEY is a weak Ed25519 key".into(),
            ));
        }
        Ok(Self(key))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}

impl FromStr for InteractionsKey {
    type Err = SetupError;

    /// Parses the 64 hex digits the Developer Portal shows.
    fn from_str(s: &str) -> Result<Self, SetupError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| {
            SetupError(
                "DISCORD_PUBLIC_KEY must be 64 hex digits (the application's public key)".into(),
            )
        })?;
        Self::from_bytes(&bytes)
    }
}

impl std::fmt::Debug for InteractionsKey {
    // A public key: fine to print, and useful to tell which application is configured.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InteractionsKey")
            .field(&hex::encode(self.0.as_bytes()))
            .finish()
    }
}

/// Checks the configured route, so a bad one fails at start instead of panicking in axum.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if path.len() < 2 || !path.starts_with('/') || path.contains(['{', '}', '*', ' ']) {
        return Err(format!(
            "interactions path {path:?} must start with / and be a literal path"
        ));
    }
    Ok(())
}

/// Checks Discord's signature of a request: `Ok` only for a valid signature by `key` over
/// `timestamp ‖ body` (the raw bytes) with a timestamp within [`MAX_SKEW`] of `now` (Unix
/// seconds). The error says why, for the log.
pub(crate) fn verify(
    key: &InteractionsKey,
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(), &'static str> {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .ok_or("no X-Signature-Ed25519 header")?;
    let timestamp = headers
        .get(TIMESTAMP_HEADER)
        .ok_or("no X-Signature-Timestamp header")?
        .as_bytes();
    let mut raw = [0u8; 64];
    hex::decode_to_slice(signature.as_bytes(), &mut raw)
        .map_err(|_| "X-Signature-Ed25519 is not 64 bytes in hex")?;
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp);
    message.extend_from_slice(body);
    key.0
        .verify_strict(&message, &Signature::from_bytes(&raw))
        .map_err(|_| "bad signature")?;
    let at = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or("X-Signature-Timestamp is not Unix seconds")?;
    if at.abs_diff(now) > MAX_SKEW.as_secs() {
        return Err("timestamp too far from now (a replay, or a wrong clock)");
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Clone)]
struct Endpoint {
    key: InteractionsKey,
    adapter: Arc<DiscordChannel>,
}

/// `POST path`, with bodies over [`MAX_BODY`] refused (413) before they are read whole.
pub(crate) fn router(path: &str, key: InteractionsKey, adapter: Arc<DiscordChannel>) -> Router {
    Router::new()
        .route(path, post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Endpoint { key, adapter })
}

/// Just the interaction's type, read before the full model: a PING needs nothing else.
#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: u8,
}

async fn receive(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(why) = verify(&ep.key, &headers, &body, unix_now()) {
        tracing::warn!(platform = "discord", why, "unverified interaction refused");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match serde_json::from_slice::<Kind>(&body) {
        Ok(Kind { kind: 1 }) => {
            return axum::Json(serde_json::json!({ "type": 1 })).into_response();
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(platform = "discord", error = %e, "unreadable interaction");
            return StatusCode::BAD_REQUEST.into_response();
        }
    }
    let interaction = match serde_json::from_slice::<Interaction>(&body) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(platform = "discord", error = %e, "unreadable interaction");
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let reaction = ep.adapter.react(interaction).await;
    let Some(answer) = reaction.answer else {
        // A replayed interaction id (Discord does not retry interactions) or a kind the
        // adapter never asks for.
        return StatusCode::BAD_REQUEST.into_response();
    };
    let (sent, answered) = oneshot::channel();
    if let Some(event) = reaction.event
        && !ep.adapter.queue_from_http(event, answered).await
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(answer)
        .into_response()
        .map(|inner| Body::new(Announced { inner, _sent: sent }))
}

/// A response body that drops `_sent` when hyper is done with it (written, or the connection
/// failed): the event waiting on the other end may then go to the gateway.
struct Announced {
    inner: Body,
    _sent: oneshot::Sender<()>,
}

impl HttpBody for Announced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn public(key: &SigningKey) -> InteractionsKey {
        InteractionsKey::from_bytes(&key.verifying_key().to_bytes()).unwrap()
    }

    fn signed(key: &SigningKey, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        let signature = hex::encode(key.sign(&message).to_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&signature).unwrap());
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from_str(timestamp).unwrap());
        headers
    }

    const BODY: &[u8] = br#"{"type":3,"id":"1","data":{"custom_id":"x"}}"#;

    #[test]
    fn a_good_signature_over_the_raw_body_is_accepted() {
        let key = signing_key();
        let ts = NOW.to_string();
        assert_eq!(
            verify(&public(&key), &signed(&key, &ts, BODY), BODY, NOW),
            Ok(())
        );
    }

    #[test]
    fn one_flipped_bit_anywhere_is_refused() {
        let key = signing_key();
        let ts = NOW.to_string();
        let headers = signed(&key, &ts, BODY);
        // In the body.
        let mut body = BODY.to_vec();
        body[10] ^= 1;
        assert!(verify(&public(&key), &headers, &body, NOW).is_err());
        // In the signature.
        let mut sig = hex::decode(headers[SIGNATURE_HEADER].as_bytes()).unwrap();
        sig[0] ^= 1;
        let mut flipped = headers.clone();
        flipped.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&hex::encode(sig)).unwrap(),
        );
        assert_eq!(
            verify(&public(&key), &flipped, BODY, NOW),
            Err("bad signature")
        );
        // In the timestamp (still within the window).
        let mut later = headers;
        later.insert(TIMESTAMP_HEADER, HeaderValue::from(NOW + 1));
        assert_eq!(
            verify(&public(&key), &later, BODY, NOW),
            Err("bad signature")
        );
    }

    #[test]
    fn the_same_json_reserialized_is_refused() {
        let key = signing_key();
        let ts = NOW.to_string();
        let headers = signed(&key, &ts, BODY);
        let value: serde_json::Value = serde_json::from_slice(BODY).unwrap();
        for other in [
            serde_json::to_vec_pretty(&value).unwrap(),
            br#"{"id":"1","type":3,"data":{"custom_id":"x"}}"#.to_vec(), // keys reordered
            [BODY, b" "].concat(),
        ] {
            assert_ne!(other, BODY);
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&other).unwrap(),
                value,
                "the same JSON"
            );
            assert_eq!(
                verify(&public(&key), &headers, &other, NOW),
                Err("bad signature")
            );
        }
    }

    #[test]
    fn another_keys_signature_is_refused() {
        let key = signing_key();
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let ts = NOW.to_string();
        assert_eq!(
            verify(&public(&key), &signed(&other, &ts, BODY), BODY, NOW),
            Err("bad signature")
        );
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        let key = signing_key();
        let ts = NOW.to_string();
        let good = signed(&key, &ts, BODY);
        for name in [SIGNATURE_HEADER, TIMESTAMP_HEADER] {
            let mut h = good.clone();
            h.remove(name);
            assert!(verify(&public(&key), &h, BODY, NOW).is_err(), "{name}");
        }
        assert!(verify(&public(&key), &HeaderMap::new(), BODY, NOW).is_err());
        for bad in ["", "zz", "00", &"0".repeat(128), &"g".repeat(128)] {
            let mut h = good.clone();
            h.insert(SIGNATURE_HEADER, HeaderValue::from_str(bad).unwrap());
            assert!(verify(&public(&key), &h, BODY, NOW).is_err(), "{bad:?}");
        }
        // A signed timestamp that is not a number.
        let h = signed(&key, "yesterday", BODY);
        assert_eq!(
            verify(&public(&key), &h, BODY, NOW),
            Err("X-Signature-Timestamp is not Unix seconds")
        );
    }

    #[test]
    fn stale_timestamps_are_refused_even_when_signed() {
        let key = signing_key();
        let old = (NOW - MAX_SKEW.as_secs() - 1).to_string();
        assert!(verify(&public(&key), &signed(&key, &old, BODY), BODY, NOW).is_err());
        let edge = (NOW - MAX_SKEW.as_secs()).to_string();
        assert_eq!(
            verify(&public(&key), &signed(&key, &edge, BODY), BODY, NOW),
            Ok(())
        );
    }

    #[test]
    fn a_ping_is_told_apart_without_the_full_model() {
        let ping = br#"{"id":"1","application_id":"2","type":1,"token":"t","version":1,"user":{"id":"3"}}"#;
        assert_eq!(serde_json::from_slice::<Kind>(ping).unwrap().kind, 1);
        assert_eq!(serde_json::from_slice::<Kind>(BODY).unwrap().kind, 3);
    }

    #[test]
    fn keys_parse_from_the_portals_hex() {
        let key = signing_key();
        let hex = hex::encode(key.verifying_key().to_bytes());
        let parsed: InteractionsKey = hex.parse().unwrap();
        assert_eq!(parsed, public(&key));
        assert_eq!(parsed.to_bytes(), key.verifying_key().to_bytes());
        assert!(format!("{parsed:?}").contains(&hex));
        assert!(format!(" {hex}\n").parse::<InteractionsKey>().is_ok());
        for bad in ["", "00", &hex[..62], &format!("{hex}00"), &"x".repeat(64)] {
            assert!(bad.parse::<InteractionsKey>().is_err(), "{bad:?}");
        }
        // The identity point: a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(InteractionsKey::from_bytes(&identity).is_err());
    }

    #[tokio::test]
    async fn the_event_waits_until_the_answer_body_is_done() {
        let (sent, mut answered) = oneshot::channel::<()>();
        let body = Body::new(Announced {
            inner: Body::from(r#"{"type":6}"#),
            _sent: sent,
        });
        assert_eq!(
            answered.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        let bytes = axum::body::to_bytes(body, 1024).await.unwrap();
        assert_eq!(&bytes[..], br#"{"type":6}"#, "the answer unchanged");
        assert_eq!(
            answered.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "released once the body was taken"
        );
    }

    #[test]
    fn paths_must_be_literal_routes() {
        assert!(check_path(DEFAULT_INTERACTIONS_PATH).is_ok());
        for bad in ["", "/", "discord", "/a/{id}", "/a/*rest"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
