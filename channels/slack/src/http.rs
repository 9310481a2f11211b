//! The Events API over HTTP, for deployments behind a load balancer instead of Socket Mode.
//!
//! Three routes under the configured prefix: `/events` (JSON event callbacks and the URL
//! verification challenge), `/interactions` (form field `payload` with a JSON interaction) and
//! `/commands` (slash commands, form-encoded). Every request must carry a valid `v0`
//! signature over `v0:<timestamp>:<raw body>` made with the signing secret, with a timestamp
//! within five minutes of now; otherwise it is answered 401 and its body is never parsed.
//! Accepted requests are answered at once (Slack wants an answer within 3 s) and the work is
//! done after. Slack's retries (`X-Slack-Retry-Num`) carry the same event and are dropped as
//! duplicates, by the adapter and by the gateway's store.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use boxedclaw_channels::Secret;
use slack_morphism::prelude::*;
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

use crate::{SlackChannel, Taken};

#[derive(Clone)]
struct Endpoint {
    verifier: Arc<SlackEventSignatureVerifier>,
    adapter: Arc<SlackChannel>,
}

/// The routes under `prefix`.
pub(crate) fn router(prefix: &str, secret: Arc<Secret>, adapter: Arc<SlackChannel>) -> Router {
    let verifier =
        SlackEventSignatureVerifier::new(&SlackSigningSecret::new(secret.expose().to_owned()));
    let state = Endpoint {
        verifier: Arc::new(verifier),
        adapter,
    };
    Router::new()
        .route(&format!("{prefix}/events"), post(events))
        .route(&format!("{prefix}/interactions"), post(interactions))
        .route(&format!("{prefix}/commands"), post(commands))
        .with_state(state)
}

/// The body as text if the request is signed by Slack, within the time window.
fn verified<'a>(ep: &Endpoint, headers: &HeaderMap, body: &'a Bytes) -> Option<&'a str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER)?;
    let timestamp = header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP)?;
    let body = std::str::from_utf8(body).ok()?;
    match ep.verifier.verify(signature, body, timestamp) {
        Ok(()) => Some(body),
        Err(e) => {
            tracing::warn!(platform = "slack", error = %e, "unsigned or stale request refused");
            None
        }
    }
}

fn form(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

async fn events(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(body) = verified(&ep, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match serde_json::from_str::<SlackPushEvent>(body) {
        Ok(SlackPushEvent::UrlVerification(v)) => v.challenge.into_response(),
        Ok(SlackPushEvent::EventCallback(ev)) => {
            // A thread lookup, if one is needed, happens after this answer (`run_http`).
            if let Some(taken) = ep.adapter.intake_push(&ev)
                && !ep.adapter.queue_from_http(taken).await
            {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            StatusCode::OK.into_response()
        }
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => {
            // Acknowledged: a retry would carry the same unreadable body.
            tracing::warn!(platform = "slack", error = %e, "unreadable event dropped");
            StatusCode::OK.into_response()
        }
    }
}

async fn interactions(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(body) = verified(&ep, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let payload = form(body).remove("payload").unwrap_or_default();
    match serde_json::from_str::<SlackInteractionEvent>(&payload) {
        Ok(ev) => {
            if let Some(event) = ep.adapter.accept_interaction(&ev).await
                && !ep.adapter.queue_from_http(Taken::Ready(event)).await
            {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            StatusCode::OK.into_response()
        }
        Err(e) => {
            tracing::warn!(platform = "slack", error = %e, "unreadable interaction dropped");
            StatusCode::OK.into_response()
        }
    }
}

async fn commands(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(body) = verified(&ep, &headers, &body) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let fields = form(body);
    let value = serde_json::to_value(&fields).unwrap_or_default();
    let Ok(ev) = serde_json::from_value::<SlackCommandEvent>(value) else {
        return (StatusCode::BAD_REQUEST, "not a slash command").into_response();
    };
    if let Some(event) = ep.adapter.accept_command(&ev)
        && !ep.adapter.queue_from_http(Taken::Ready(event)).await
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    // Shown to the admin alone; the answer follows through the response URL.
    axum::Json(serde_json::json!({"response_type": "ephemeral", "text": "Working on it…"}))
        .into_response()
}
