//! Webhook mode: the route Telegram POSTs updates to, mounted on the gateway's HTTP server.
//!
//! Telegram sends the secret given to `setWebhook` in `X-Telegram-Bot-Api-Secret-Token`. A
//! request without it, or with another value, is refused with 401 before its body is parsed,
//! so nothing an outsider sends reaches the gateway. Accepted updates are queued for the
//! adapter, which drops re-deliveries (Telegram retries on anything but 2xx).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use boxedclaw_channels::Secret;
use teloxide::types::Update;
use tokio::sync::mpsc;

use crate::WebhookSettings;

/// The header Telegram puts the webhook secret in.
pub(crate) const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

#[derive(Clone)]
struct Hook {
    secret: Arc<Secret>,
    updates: mpsc::Sender<Update>,
}

/// Checks what Telegram would refuse at `setWebhook`, so a bad setting fails at start.
pub(crate) fn check_settings(w: &WebhookSettings) -> Result<(), String> {
    let secret = w.secret.expose();
    if secret.is_empty()
        || secret.len() > 256
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("the webhook secret must be 1-256 characters of A-Z, a-z, 0-9, _ and -".into());
    }
    if !w.path.starts_with('/') || w.path.contains(['{', '}', '*']) {
        return Err(format!(
            "webhook path {:?} must start with / and be literal",
            w.path
        ));
    }
    if !w.public_url.starts_with("https://") && !w.public_url.starts_with("http://") {
        return Err(format!(
            "webhook URL {:?} must be an http(s) URL",
            w.public_url
        ));
    }
    Ok(())
}

/// The webhook route at `path`.
pub(crate) fn router(path: &str, secret: Arc<Secret>, updates: mpsc::Sender<Update>) -> Router {
    Router::new()
        .route(path, post(receive))
        .with_state(Hook { secret, updates })
}

async fn receive(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let presented = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !hook.secret.matches(presented) {
        tracing::warn!(
            platform = "telegram",
            "webhook request without the right secret refused"
        );
        return StatusCode::UNAUTHORIZED;
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            // Acknowledged anyway: Telegram would re-send the same unreadable update forever.
            tracing::warn!(platform = "telegram", error = %e, "unreadable update dropped");
            return StatusCode::OK;
        }
    };
    match hook.updates.send(update).await {
        Ok(()) => StatusCode::OK,
        // Shutting down: let Telegram re-deliver it to the next process.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}
