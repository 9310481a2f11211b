//! The local web chat: a [`ChannelAdapter`] whose platform is a browser tab.
//!
//! The gateway merges [`WebChannel::router`] into its axum server. A visitor of `/` gets the
//! chat page and a session cookie holding a random secret; the session's public id (a hash of
//! the secret, see [`public_session_id`]) names the conversation and the user (`web:<id>`),
//! so every browser session gets its own agent and sandbox, and nothing that shows the id
//! (logs, audit, dashboard, the page itself) gives the session away.
//!
//! - **In**: `POST /api/chat/messages` (`{"text"}`) and `POST /api/chat/decisions`
//!   (`{"approval","approve"}`), JSON only (a cross-site form cannot send it), bound to the
//!   session of the cookie: the body never names a conversation or a user.
//! - **Out**: `GET /api/chat/events`, Server-Sent Events. Each session keeps a bounded history
//!   of the JSON events shown to it; a stream replays the history after `Last-Event-ID` and
//!   then follows it live. [`ChannelAdapter::deliver`] only appends to the history, so a slow
//!   or absent browser never holds up the gateway.
//! - **Page**: `assets/chat.html`, `chat.js`, `console.css`, embedded in the binary; plain
//!   JavaScript that sets every text with `textContent`, under `default-src 'self'`.
//!
//! Sessions live in memory: after a gateway restart a browser gets a new session (and so a
//! new conversation). At most [`WebSettings::max_sessions`] exist; the least recently active
//! one (preferring one without an open tab) is dropped to make room.
#![forbid(unsafe_code)]

#[cfg(feature = "test-utils")]
pub mod fake;
mod http;
mod session;

pub use session::public_session_id;

use std::sync::{Arc, Mutex, PoisonError};

use boxedclaw_channels::render::split_message;
use boxedclaw_channels::{
    BoxFuture, Capabilities, ChannelAdapter, ChannelContext, ChannelError, InboundEvent,
    OutboundAction,
};
use boxedclaw_protocol::ids::{ConversationKey, Platform};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::session::SessionKey;
use crate::session::{Keep, Session, Sessions};

/// Longest text of one shown message, in characters; longer replies are split.
pub const MAX_TEXT_LEN: usize = 65_536;
/// Longest message a browser may post, in bytes of UTF-8.
pub const MAX_POST_BYTES: usize = 16 * 1024;
/// The name of the session cookie.
pub const SESSION_COOKIE: &str = "boxedclaw_session";

/// How the web chat is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// Most browser sessions kept at once (default 1000).
    pub max_sessions: usize,
    /// Events kept per session for reloads and reconnects (default 500).
    pub history: usize,
    /// Signs session cookies so that sessions survive a restart; `None` (the default): a
    /// session lives as long as the process.
    pub session_key: Option<SessionKey>,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            history: 500,
            session_key: None,
        }
    }
}

/// Whether the gateway is listening: posts are refused with 503 unless it is.
#[derive(Debug)]
enum Intake {
    /// `run` was not called yet.
    Idle,
    /// `run` is running.
    Running {
        inbound: mpsc::Sender<InboundEvent>,
        shutdown: CancellationToken,
    },
    /// `run` returned.
    Stopped,
}

/// The web chat adapter; see the [crate docs](crate).
#[derive(Debug)]
pub struct WebChannel {
    sessions: Sessions,
    intake: Mutex<Intake>,
    /// Cancelled when `run` returns: ends the streams opened before it started.
    stopped: CancellationToken,
}

impl WebChannel {
    /// Builds the channel; nothing is served until the gateway mounts [`WebChannel::router`].
    pub fn new(settings: WebSettings) -> Arc<Self> {
        Arc::new(Self {
            sessions: Sessions::new(
                settings.max_sessions,
                settings.history,
                settings.session_key,
            ),
            intake: Mutex::new(Intake::Idle),
            stopped: CancellationToken::new(),
        })
    }

    /// The chat routes, to merge into the gateway's axum server: `GET /`,
    /// `GET /assets/chat.js`, `GET /assets/console.css`, `GET /api/chat/events`,
    /// `POST /api/chat/messages`, `POST /api/chat/decisions`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        http::router(Arc::clone(self))
    }

    fn set_intake(&self, intake: Intake) {
        *self.intake.lock().unwrap_or_else(PoisonError::into_inner) = intake;
    }

    /// Where inbound events go, while `run` runs.
    fn inbound(&self) -> Option<mpsc::Sender<InboundEvent>> {
        match &*self.intake.lock().unwrap_or_else(PoisonError::into_inner) {
            Intake::Running { inbound, .. } => Some(inbound.clone()),
            Intake::Idle | Intake::Stopped => None,
        }
    }

    /// What ends an event stream opened now; `None` after shutdown.
    fn stream_end(&self) -> Option<CancellationToken> {
        match &*self.intake.lock().unwrap_or_else(PoisonError::into_inner) {
            Intake::Idle => Some(self.stopped.clone()),
            Intake::Running { shutdown, .. } => Some(shutdown.clone()),
            Intake::Stopped => None,
        }
    }

    /// The live session a conversation key names, if any.
    fn session_of(&self, conversation: &ConversationKey) -> Option<Arc<Session>> {
        if conversation.platform != Platform::Web
            || conversation.tenant.is_some()
            || conversation.thread.is_some()
        {
            return None;
        }
        self.sessions.by_id(&conversation.channel)
    }

    /// Appends `action` to its session's history, which wakes the session's streams.
    fn show(&self, action: OutboundAction) {
        let Some(session) = self.session_of(action.conversation()) else {
            // The browser session is gone (evicted, or from before a restart): nobody can
            // see it, and nobody could ever see it, so it is not an error to retry.
            tracing::debug!(
                conversation = %action.conversation(),
                "web: no such browser session; action dropped"
            );
            return;
        };
        match action {
            OutboundAction::Post { text, .. } => {
                session.push_all(
                    split_message(&text, MAX_TEXT_LEN)
                        .into_iter()
                        .map(|piece| (json!({"kind": "post", "text": piece}), Keep::Always)),
                );
            }
            OutboundAction::Typing { .. } => {
                session.push(json!({"kind": "typing"}), Keep::UntilNext);
            }
            OutboundAction::Progress { text, .. } => {
                session.push(json!({"kind": "progress", "text": text}), Keep::UntilNext);
            }
            OutboundAction::RequestApproval(p) => {
                // The action is shown whole, in one card (a `<pre>` that scrolls): the web has
                // no message size limit that would force splitting it.
                session.push(
                    json!({
                        "kind": "approval",
                        "approval": p.approval.as_str(),
                        "action": p.action,
                        "reason": p.reason,
                        "requester": p.requester.to_string(),
                        "expires_in_secs": p.expires_in_secs,
                    }),
                    Keep::Always,
                );
            }
            OutboundAction::ResolveApproval {
                approval,
                outcome,
                by,
                ..
            } => {
                session.push(
                    json!({
                        "kind": "resolved",
                        "approval": approval.as_str(),
                        "outcome": outcome.to_string(),
                        "by": by.map(|u| u.to_string()),
                    }),
                    Keep::Always,
                );
            }
            // A conversation has one user, so a notice for one user is a notice for all.
            OutboundAction::Notice { text, .. } => {
                session.push(json!({"kind": "notice", "text": text}), Keep::Always);
            }
        }
    }
}

impl ChannelAdapter for WebChannel {
    fn platform(&self) -> Platform {
        Platform::Web
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            buttons: true,
            threads: false,
            edits: true,
            ephemeral: true,
            max_text_len: MAX_TEXT_LEN,
        }
    }

    fn run(self: Arc<Self>, ctx: ChannelContext) -> BoxFuture<'static, Result<(), ChannelError>> {
        Box::pin(async move {
            self.set_intake(Intake::Running {
                inbound: ctx.inbound.clone(),
                shutdown: ctx.shutdown.clone(),
            });
            // Nothing to connect to: browsers come to us, and deliveries always succeed.
            ctx.ready.cancel();
            ctx.shutdown.cancelled().await;
            self.set_intake(Intake::Stopped);
            self.stopped.cancel();
            Ok(())
        })
    }

    fn deliver(&self, action: OutboundAction) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move {
            self.show(action);
            Ok(())
        })
    }
}
