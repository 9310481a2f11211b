//! The chat routes: the page and its assets, the event stream, and the two JSON posts.
//!
//! Every API request is bound to the session of its cookie and to nothing in its body. Posts
//! must be `application/json`: a cross-site HTML form cannot send that, and a cross-site
//! `fetch` with it needs a CORS preflight this server never grants. Requests a browser marks
//! as coming from another site (`Sec-Fetch-Site`) are refused outright.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use boxedclaw_channels::command;
use boxedclaw_protocol::channel::{ApprovalDecision, InboundMessage};
use boxedclaw_protocol::ids::ApprovalId;
use futures_util::stream::Stream;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::session::{Keep, Session, random_hex};
use crate::{InboundEvent, MAX_POST_BYTES, SESSION_COOKIE, WebChannel};

const CHAT_HTML: &str = include_str!("../assets/chat.html");
const CHAT_JS: &str = include_str!("../assets/chat.js");
const CONSOLE_CSS: &str = include_str!("../assets/console.css");

/// Largest request body read: a maximal message JSON-escaped (`\uXXXX` is 6 bytes for 1).
const MAX_BODY: usize = 6 * MAX_POST_BYTES + 1024;
/// Keep-alive comments on idle event streams.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a post waits for room in the gateway's inbound queue before giving up with 503.
const INBOUND_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn router(channel: Arc<WebChannel>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/assets/chat.js", get(script))
        .route("/assets/console.css", get(stylesheet))
        .route("/api/chat/events", get(events))
        .route("/api/chat/messages", post(message))
        .route("/api/chat/decisions", post(decision))
        .with_state(channel)
}

/// A JSON error answer: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The session named by the request's cookie, if it has the right form and exists.
fn session_of(channel: &WebChannel, headers: &HeaderMap) -> Option<Arc<Session>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .find_map(|(_, value)| channel.sessions.get(value.trim()))
}

/// Refuses what a browser says comes from another site or origin. Absent (older browsers,
/// non-browser clients) is allowed: the cookie and content-type rules still apply.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none"))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CHAT_JS)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// The chat page; a visitor without a live session gets a new one.
async fn page(State(channel): State<Arc<WebChannel>>, headers: HeaderMap) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        CHAT_HTML,
    )
        .into_response();
    if session_of(&channel, &headers).is_none() {
        let cookie = channel.sessions.create().and_then(|s| {
            HeaderValue::from_str(&format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                channel.sessions.cookie_value(&s)
            ))
            .map_err(|e| e.to_string())
        });
        match cookie {
            Ok(cookie) => {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            Err(e) => {
                tracing::error!("web: cannot create a session: {e}");
                return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot create a session");
            }
        }
    }
    response
}

/// The session's events: its history after `Last-Event-ID`, then live ones.
async fn events(State(channel): State<Arc<WebChannel>>, headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return error(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let Some(session) = session_of(&channel, &headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "no chat session: load / to start one",
        );
    };
    let Some(end) = channel.stream_end() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the chat is shutting down; try again in a moment",
        );
    };
    let mut last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if last > session.latest_seq() {
        // An id this session never issued (a stream of an older session): replay everything.
        last = 0;
    }
    Sse::new(stream(session, last, end))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

struct Cursor {
    session: Arc<Session>,
    last: u64,
    pending: VecDeque<(u64, Arc<str>)>,
    latest: watch::Receiver<u64>,
    end: CancellationToken,
}

/// Events after `last`, until the session is evicted or the channel stops. It reads the
/// session's history, so it can fall behind (a slow browser) without anything being queued
/// for it, and without losing events silently (see [`Session::read_after`]).
fn stream(
    session: Arc<Session>,
    last: u64,
    end: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let cursor = Cursor {
        latest: session.subscribe(),
        session,
        last,
        pending: VecDeque::new(),
        end,
    };
    futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some((seq, json)) = c.pending.pop_front() {
                c.last = seq;
                let event = Event::default().id(seq.to_string()).data(&*json);
                return Some((Ok(event), c));
            }
            // Mark the current version seen *before* reading, so a push after the read
            // wakes the wait below.
            c.latest.borrow_and_update();
            c.session.read_after(c.last, &mut c.pending);
            if !c.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = c.latest.changed() => if changed.is_err() { return None },
                () = c.session.closed.cancelled() => return None,
                () = c.end.cancelled() => return None,
            }
        }
    })
}

#[derive(Deserialize)]
struct MessageBody {
    text: String,
}

#[derive(Deserialize)]
struct DecisionBody {
    approval: String,
    approve: bool,
}

/// The checks every post passes, in order: 403, 415, 401, 413, 400; then its parsed body.
async fn accept_post<T: DeserializeOwned>(
    channel: &WebChannel,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<(Arc<Session>, T), Response> {
    if cross_site(headers) {
        return Err(error(StatusCode::FORBIDDEN, "cross-site request refused"));
    }
    if !is_json(headers) {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON with Content-Type: application/json",
        ));
    }
    let Some(session) = session_of(channel, headers) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "no chat session: load / to start one",
        ));
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?;
    let parsed = serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad {what}: {e}")))?;
    Ok((session, parsed))
}

/// Hands `event` to the gateway: `Ok` once queued, otherwise the answer to give.
async fn forward(channel: &WebChannel, event: InboundEvent) -> Result<(), Response> {
    let Some(inbound) = channel.inbound() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the chat is not running (the gateway is starting or shutting down); try again \
             in a moment",
        ));
    };
    match tokio::time::timeout(INBOUND_WAIT, inbound.send(event)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is not accepting messages (shutting down?); try again in a moment",
        )),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is busy; try again in a moment",
        )),
    }
}

/// `POST /api/chat/messages`: a message for the agent, or a typed `/command`.
async fn message(
    State(channel): State<Arc<WebChannel>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (session, MessageBody { text }) =
        match accept_post(&channel, &headers, body, "message").await {
            Ok(accepted) => accepted,
            Err(refused) => return refused,
        };
    if text.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "the message is empty");
    }
    if text.len() > MAX_POST_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the message is longer than {} KiB", MAX_POST_BYTES / 1024),
        );
    }
    let id = match random_hex() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!("web: no random event id: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot accept messages now",
            );
        }
    };
    // In the history first, so it is shown before anything the agent answers.
    session.push(json!({"kind": "user", "text": text}), Keep::Always);
    let msg = InboundMessage {
        id: id.clone(),
        conversation: session.conversation.clone(),
        user: session.user.clone(),
        text,
    };
    let event = if msg.text.starts_with('/') {
        command::interpret(msg)
    } else {
        InboundEvent::Message(msg)
    };
    if let Err(refused) = forward(&channel, event).await {
        session.push(
            json!({"kind": "notice", "text": "That message was not delivered: the gateway is not accepting messages right now. Please send it again."}),
            Keep::Always,
        );
        return refused;
    }
    (StatusCode::ACCEPTED, axum::Json(json!({ "id": id }))).into_response()
}

/// `POST /api/chat/decisions`: an Approve / Deny click, for the session's own conversation.
async fn decision(
    State(channel): State<Arc<WebChannel>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (session, body) =
        match accept_post::<DecisionBody>(&channel, &headers, body, "decision").await {
            Ok(accepted) => accepted,
            Err(refused) => return refused,
        };
    let Ok(approval) = ApprovalId::new(body.approval) else {
        return error(StatusCode::BAD_REQUEST, "not an approval id");
    };
    // Conversation and user come from the cookie only: whatever else the body says is
    // ignored, so a browser can only ever decide in its own conversation.
    let event = InboundEvent::ApprovalDecision(ApprovalDecision {
        conversation: session.conversation.clone(),
        approval: approval.clone(),
        user: session.user.clone(),
        approve: body.approve,
        approver_role: None,
    });
    if let Err(refused) = forward(&channel, event).await {
        return refused;
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "approval": approval.as_str() })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_must_be_json() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_json(&h), ok, "{v}");
        }
    }

    #[test]
    fn only_same_origin_fetches_pass() {
        let mut h = HeaderMap::new();
        assert!(!cross_site(&h));
        for (v, refused) in [
            ("same-origin", false),
            ("none", false),
            ("same-site", true),
            ("cross-site", true),
        ] {
            h.insert("sec-fetch-site", HeaderValue::from_static(v));
            assert_eq!(cross_site(&h), refused, "{v}");
        }
    }
}
