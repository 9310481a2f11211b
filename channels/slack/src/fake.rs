//! A fake Slack for tests: the Web API over HTTP and Socket Mode over a WebSocket.
//!
//! [`FakeSlack::start`] serves on `127.0.0.1:0` what the real `slack-morphism` client talks
//! to: `POST /api/<method>` (JSON, form-encoded or query parameters, as Slack accepts them),
//! the WebSocket that `apps.connections.open` hands out, and the `response_url`s of clicks
//! and slash commands. The adapter points its connector at [`FakeSlack::api_url`]
//! (`SlackClientHyperConnector::with_slack_api_url`). Tests inject what users do (mentions,
//! thread replies, channel chatter, DMs, button clicks, slash commands) as Socket Mode
//! envelopes and inspect what the bot did: every call it made ([`FakeSlack::calls`]), its
//! messages as users now see them ([`FakeSlack::messages`]), its acknowledgements
//! ([`FakeSlack::acks`]) and what only one user saw ([`FakeSlack::ephemerals`]).
//!
//! Web API methods served: `auth.test`, `apps.connections.open`, `chat.postMessage`,
//! `chat.update`, `chat.delete`, `chat.postEphemeral`, `conversations.open`,
//! `conversations.replies`, `reactions.add`; any other answers `unknown_method`. Channel ids
//! must look like Slack's (`C…`, `D…`, `G…`, upper-case alphanumeric; `channel_not_found`
//! otherwise); a user id (`U…`) as channel posts into the app's DM with that user,
//! `D<user id>`, the channel [`FakeSlack::dm`] uses.
//!
//! Fidelity notes, each matching Slack rather than convenience:
//! - Web API errors are HTTP 200 with `{"ok":false,"error":...}`; a rate limit is HTTP 429
//!   with a `Retry-After` header;
//! - the bot token works for Web API methods and the app-level token only for
//!   `apps.connections.open` (`not_allowed_token_type` otherwise, `invalid_auth` for any
//!   other token);
//! - an envelope stays pending until acknowledged: one in flight on a connection that goes
//!   away is sent again on the next connection with `retry_attempt` increased (Slack's
//!   time-based retries on a live connection are not modelled);
//! - a `response_url` accepts 5 posts; without `response_type` a post is ephemeral, and it
//!   replaces the clicked message only with `replace_original: true`;
//! - Block Kit is checked for the limits adapters hit (50 blocks, 3000 characters of section
//!   text, 75 of button text, 2000 of button value, 25 elements per actions block), and text
//!   for Slack's 40 000 characters;
//! - `conversations.replies` (`channel`, `ts`, optional `limit`, default 1000, and `cursor`)
//!   answers `{"ok":true,"messages":[…],"has_more":…}` with the thread's parent first, then
//!   its replies (users' and the bot's) oldest first, at most `limit` of them, and a
//!   `response_metadata.next_cursor` when more remain; a `ts` of a reply names its thread; a
//!   message with no replies comes back alone; an unknown `ts` is `thread_not_found`. The
//!   fake knows the messages its users sent through it and the bot's posts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use boxedclaw_channels::BoxFuture;
use boxedclaw_channels::conformance::{PlatformFake, Shown};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

/// Seconds part of the first timestamp the fake issues.
const FIRST_TS_SECS: u64 = 1_700_000_000;
/// Slack truncates or refuses message text longer than this (characters).
const MAX_TEXT_CHARS: usize = 40_000;
/// Most blocks one message may carry.
const MAX_BLOCKS: usize = 50;
/// How many times one `response_url` may be used.
const RESPONSE_URL_USES: u32 = 5;
/// The legacy verification token carried by every payload.
const VERIFICATION_TOKEN: &str = "fakeVerificationToken";
/// The slash command the fake's users type.
const COMMAND: &str = "/boxedclaw";

/// Web API methods the fake serves.
const METHODS: &[&str] = &[
    "auth.test",
    "apps.connections.open",
    "chat.postMessage",
    "chat.update",
    "chat.delete",
    "chat.postEphemeral",
    "conversations.open",
    "conversations.replies",
    "reactions.add",
];

/// One recorded Web API call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The method, e.g. `"chat.postMessage"`.
    pub method: String,
    /// The parameters as sent: the JSON body, or form / query parameters as a JSON object of
    /// strings (`{}` when there were none).
    pub body: Value,
    /// Whether the call was answered with an error (`ok: false` or HTTP 429).
    pub rejected: bool,
}

/// A message the bot posted, as users now see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackMessage {
    /// The channel it was posted in (`D…` for a DM, also when posted to a user id).
    pub channel: String,
    /// Its timestamp, Slack's id of the message.
    pub ts: String,
    /// The thread it was posted in, if any.
    pub thread_ts: Option<String>,
    /// Its `text` field (the fallback text when it has blocks).
    pub text: String,
    /// Its Block Kit blocks as sent; `Null` if none.
    pub blocks: Value,
    /// The buttons of its `actions` blocks, in order.
    pub buttons: Vec<SlackButton>,
}

impl SlackMessage {
    /// What users see of it: the text of its blocks when they show any (section, header and
    /// context texts, concatenated; `plain_text` verbatim, `mrkdwn` rendered), else its
    /// `text` rendered. Rendering decodes `&lt;`, `&gt;`, `&amp;` and shows `<…>` control
    /// sequences as Slack does: `<@U1>` as `@U1`, `<!here>` as `@here`, `<#C1|x>` as `#x`,
    /// `<https://a|label>` as `label`. ([`text`](Self::text) is the raw field as sent.)
    pub fn shown_text(&self) -> String {
        let mut shown = String::new();
        let mut any = false;
        for block in self.blocks.as_array().into_iter().flatten() {
            let texts: Vec<&Value> = match str_of(block, "type") {
                Some("section") => block
                    .get("text")
                    .into_iter()
                    .chain(
                        block
                            .get("fields")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten(),
                    )
                    .collect(),
                Some("header") => block.get("text").into_iter().collect(),
                Some("context") => block
                    .get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|e| matches!(str_of(e, "type"), Some("plain_text" | "mrkdwn")))
                    .collect(),
                _ => Vec::new(),
            };
            for t in texts {
                let Some(text) = str_of(t, "text") else {
                    continue;
                };
                any = true;
                if str_of(t, "type") == Some("plain_text") {
                    shown.push_str(text);
                } else {
                    shown.push_str(&render_mrkdwn(text));
                }
            }
        }
        if any {
            shown
        } else {
            render_mrkdwn(&self.text)
        }
    }
}

/// A button of one of the bot's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackButton {
    /// Its label (`text.text`).
    pub label: String,
    /// Its `action_id` (empty if none).
    pub action_id: String,
    /// Its `value` (empty if none).
    pub value: String,
}

/// A fake Slack (Web API and Socket Mode); see the [module docs](self).
pub struct FakeSlack {
    inner: Arc<Inner>,
    server: tokio::task::AbortHandle,
}

/// What the server tasks and the test share.
struct Inner {
    bot_token: String,
    app_token: String,
    addr: SocketAddr,
    state: Mutex<World>,
    /// How many WebSocket connections were accepted so far; wakes a connection that waits
    /// for the client to reconnect after a `disconnect` message.
    accepted: watch::Sender<usize>,
}

/// Everything the fake Slack knows.
struct World {
    /// Where the fake listens (for the URLs it hands out).
    addr: SocketAddr,
    last_ts: u64,
    last_id: u64,
    calls: Vec<Call>,
    /// The bot's messages, in the order posted.
    posted: Vec<SlackMessage>,
    /// Users' messages by `(channel, ts)`.
    user_messages: HashMap<(String, String), UserMessage>,
    /// Envelopes not acknowledged yet, in the order queued.
    pending: VecDeque<Envelope>,
    /// Every envelope frame written to a WebSocket.
    sent: Vec<Value>,
    acks: Vec<(String, Value)>,
    ephemerals: Vec<(String, String)>,
    response_posts: Vec<Value>,
    response_urls: HashMap<String, ResponseTarget>,
    /// Pending 429s by method: each the `Retry-After` seconds.
    rate_limits: HashMap<String, VecDeque<u32>>,
    /// `apps.connections.open` calls answered (the WebSocket URLs issued).
    opened: u64,
    /// WebSocket connections accepted so far.
    accepted: usize,
    live: Vec<Live>,
}

/// A message a user sent through the fake.
struct UserMessage {
    user: String,
    text: String,
    thread_ts: Option<String>,
}

/// An envelope queued for Socket Mode.
struct Envelope {
    id: String,
    kind: &'static str,
    payload: Value,
    accepts_response_payload: bool,
    /// How many times it was written to a connection.
    attempts: u32,
    /// The live connection it is in flight on.
    on: Option<usize>,
    /// For a slash command: who typed it and where (an acknowledgement may carry a reply).
    command: Option<(String, String)>,
}

/// A live WebSocket connection.
struct Live {
    id: usize,
    tx: mpsc::UnboundedSender<Ctl>,
}

/// What a connection's task is told to do.
enum Ctl {
    Hello,
    Envelope(String),
    Drop,
    Disconnect,
}

/// Where a `response_url` answers.
struct ResponseTarget {
    channel: String,
    user: String,
    /// The clicked message, for `replace_original` / `delete_original`.
    message_ts: Option<String>,
    uses: u32,
}

/// A Web API error answer.
struct Failure {
    error: String,
    errors: Vec<String>,
    retry_after: Option<u32>,
}

impl Failure {
    fn new(error: &str) -> Self {
        Self {
            error: error.to_owned(),
            errors: Vec::new(),
            retry_after: None,
        }
    }
}

type Answer = Result<Value, Failure>;

impl FakeSlack {
    /// The workspace (team) id.
    pub const TEAM: &'static str = "T0FAKE";
    /// The bot's user id.
    pub const BOT_USER: &'static str = "U0BOT";
    /// The app's id.
    pub const APP_ID: &'static str = "A0FAKE";
    /// The bot's bot id (`bot_id` of its messages).
    pub const BOT_ID: &'static str = "B0BOT";

    /// Binds `127.0.0.1:0` and serves Slack for `bot_token` (Web API methods) and
    /// `app_token` (`apps.connections.open`) on a spawned task, which stops when the fake is
    /// dropped. Any other token gets `invalid_auth`.
    pub async fn start(bot_token: &str, app_token: &str) -> Arc<FakeSlack> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Slack");
        let addr = listener.local_addr().expect("fake Slack address");
        let inner = Arc::new(Inner {
            bot_token: bot_token.to_owned(),
            app_token: app_token.to_owned(),
            addr,
            state: Mutex::new(World::new(addr)),
            accepted: watch::Sender::new(0),
        });
        let app = Router::new()
            .route("/api/{method}", any(serve_api))
            .route("/socket", get(serve_socket))
            .route("/response/{id}", post(serve_response_url))
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("fake Slack server stopped: {e}");
            }
        })
        .abort_handle();
        Arc::new(FakeSlack { inner, server })
    }

    /// The Web API base URL to give `with_slack_api_url`: `http://127.0.0.1:PORT/api`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.inner.addr)
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.inner.world()
    }

    // ---- Inbound over Socket Mode ----

    /// User `user` writes `text` at the top level of `channel`, mentioning the bot (`<@U0BOT> `
    /// is prepended when `text` lacks it). Queues an `app_mention` and a `message` event (two
    /// envelopes, distinct event ids, one ts, in that order) and returns the message's ts.
    pub fn mention(&self, channel: &str, user: &str, text: &str) -> String {
        let mut w = self.world();
        let text = with_mention(text);
        let ts = w.user_message(channel, user, &text, None);
        let mention = w.app_mention_event(channel, user, &text, &ts, None);
        let mention = w.event_callback(mention, &ts);
        w.queue("events_api", mention, false, None);
        let message = w.message_event(channel, user, &text, &ts, None);
        let message = w.event_callback(message, &ts);
        w.queue("events_api", message, false, None);
        ts
    }

    /// User `user` writes `text` at the top level of `channel` without mentioning the bot
    /// (chatter the bot sees as a channel member): queues a `message` event and returns its
    /// ts.
    pub fn channel_message(&self, channel: &str, user: &str, text: &str) -> String {
        let mut w = self.world();
        let ts = w.user_message(channel, user, text, None);
        let message = w.message_event(channel, user, text, &ts, None);
        let message = w.event_callback(message, &ts);
        w.queue("events_api", message, false, None);
        ts
    }

    /// User `user` replies `text` in the thread `thread_ts` of `channel` (no mention): queues
    /// a `message` event and returns its ts.
    pub fn thread_message(&self, channel: &str, thread_ts: &str, user: &str, text: &str) -> String {
        let mut w = self.world();
        let ts = w.user_message(channel, user, text, Some(thread_ts));
        let message = w.message_event(channel, user, text, &ts, Some(thread_ts));
        let message = w.event_callback(message, &ts);
        w.queue("events_api", message, false, None);
        ts
    }

    /// User `user` mentions the bot in the thread `thread_ts` of `channel` (`<@U0BOT> `
    /// prepended when missing): queues an `app_mention` and a `message` event, both with
    /// `thread_ts`, and returns the message's ts.
    pub fn thread_mention(&self, channel: &str, thread_ts: &str, user: &str, text: &str) -> String {
        let mut w = self.world();
        let text = with_mention(text);
        let ts = w.user_message(channel, user, &text, Some(thread_ts));
        let mention = w.app_mention_event(channel, user, &text, &ts, Some(thread_ts));
        let mention = w.event_callback(mention, &ts);
        w.queue("events_api", mention, false, None);
        let message = w.message_event(channel, user, &text, &ts, Some(thread_ts));
        let message = w.event_callback(message, &ts);
        w.queue("events_api", message, false, None);
        ts
    }

    /// User `user` writes `text` to the bot in their DM (channel `D<user>`, `channel_type`
    /// `im`): queues a `message` event and returns its ts.
    pub fn dm(&self, user: &str, text: &str) -> String {
        let mut w = self.world();
        let channel = dm_channel(user);
        let ts = w.user_message(&channel, user, text, None);
        let message = w.message_event(&channel, user, text, &ts, None);
        let message = w.event_callback(message, &ts);
        w.queue("events_api", message, false, None);
        ts
    }

    /// User `user` clicks a button of the bot's message `message_ts` in `channel`, sending
    /// `action_id` and `value` (any strings: forgeries allowed; the button's label and block
    /// are taken from the message when it has a button with that `action_id`). Queues a
    /// `block_actions` interaction carrying the message as now shown and a `response_url`,
    /// and returns the envelope id. Panics if the bot posted no such message.
    pub fn click(
        &self,
        user: &str,
        channel: &str,
        message_ts: &str,
        action_id: &str,
        value: &str,
    ) -> String {
        let mut w = self.world();
        let payload = w.block_actions(user, channel, message_ts, action_id, value);
        w.queue("interactive", payload, false, None)
    }

    /// User `user` types `/boxedclaw <text>` in `channel`: queues a `slash_commands`
    /// envelope (which accepts a response payload) with a `response_url`, and returns the
    /// envelope id.
    pub fn slash_command(&self, user: &str, channel: &str, text: &str) -> String {
        let mut w = self.world();
        let payload = w.slash_payload(user, channel, text);
        w.queue(
            "slash_commands",
            payload,
            true,
            Some((user.to_owned(), channel.to_owned())),
        )
    }

    // ---- Inbound over HTTP (Events API) ----

    /// An Events API `event_callback` body (an `app_mention` of the bot by `user` in
    /// `channel`, `<@U0BOT> ` prepended when missing) with a fresh event id; not queued.
    pub fn mention_event_body(&self, channel: &str, user: &str, text: &str) -> Value {
        let mut w = self.world();
        let text = with_mention(text);
        let ts = w.user_message(channel, user, &text, None);
        let event = w.app_mention_event(channel, user, &text, &ts, None);
        w.event_callback(event, &ts)
    }

    /// An Events API `event_callback` body (a `message` of `user` in the thread `thread_ts`
    /// of `channel`, no mention) with a fresh event id; not queued.
    pub fn thread_message_event_body(
        &self,
        channel: &str,
        thread_ts: &str,
        user: &str,
        text: &str,
    ) -> Value {
        let mut w = self.world();
        let ts = w.user_message(channel, user, text, Some(thread_ts));
        let event = w.message_event(channel, user, text, &ts, Some(thread_ts));
        w.event_callback(event, &ts)
    }

    /// An Events API `event_callback` body (a DM `message` of `user`) with a fresh event id;
    /// not queued.
    pub fn dm_event_body(&self, user: &str, text: &str) -> Value {
        let mut w = self.world();
        let channel = dm_channel(user);
        let ts = w.user_message(&channel, user, text, None);
        let event = w.message_event(&channel, user, text, &ts, None);
        w.event_callback(event, &ts)
    }

    /// The `block_actions` payload [`click`](Self::click) would queue, not queued (over HTTP
    /// Slack posts it form-encoded as `payload=<this JSON>`). Panics like `click`.
    pub fn click_payload(
        &self,
        user: &str,
        channel: &str,
        message_ts: &str,
        action_id: &str,
        value: &str,
    ) -> Value {
        self.world()
            .block_actions(user, channel, message_ts, action_id, value)
    }

    /// The form-encoded body Slack posts over HTTP for `/boxedclaw <text>` typed by `user` in
    /// `channel`; not queued.
    pub fn slash_command_form(&self, user: &str, channel: &str, text: &str) -> String {
        let payload = self.world().slash_payload(user, channel, text);
        let pairs: Vec<(String, String)> = payload
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        form_encode(&pairs)
    }

    /// Slack's request signature for an HTTP delivery: `v0=` + hex of
    /// HMAC-SHA256(`signing_secret`, `"v0:{timestamp}:{body}"`), the value of the
    /// `X-Slack-Signature` header (with `X-Slack-Request-Timestamp: {timestamp}`).
    pub fn sign(signing_secret: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(format!("v0:{timestamp}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    // ---- Connection control ----

    /// Closes every live WebSocket abruptly (TCP close, no `disconnect` message, no close
    /// frame). Envelopes in flight on them are sent again on the next connection.
    pub fn drop_connection(&self) {
        self.world().tell_live(|| Ctl::Drop);
    }

    /// Sends `{"type":"disconnect","reason":"refresh_requested"}` on every live WebSocket,
    /// then closes each once the client has opened a new connection, or after 1 s.
    pub fn send_disconnect(&self) {
        self.world().tell_live(|| Ctl::Disconnect);
    }

    /// WebSocket connections accepted so far.
    pub fn connections(&self) -> usize {
        self.world().accepted
    }

    /// WebSocket connections open now.
    pub fn live_connections(&self) -> usize {
        self.world().live.len()
    }

    // ---- Inspection ----

    /// Every Web API call the bot made, in the order received.
    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// Parameters of the accepted (not rejected) calls to `method`.
    pub fn calls_to(&self, method: &str) -> Vec<Value> {
        self.world()
            .calls
            .iter()
            .filter(|c| !c.rejected && c.method == method)
            .map(|c| c.body.clone())
            .collect()
    }

    /// The bot's messages in `channel`, in the order posted, as now shown (edits applied,
    /// deleted ones gone).
    pub fn messages(&self, channel: &str) -> Vec<SlackMessage> {
        self.world()
            .posted
            .iter()
            .filter(|m| m.channel == channel)
            .cloned()
            .collect()
    }

    /// Acknowledgements received, in order: `(envelope_id, payload)`, the payload `Null`
    /// when the acknowledgement carried none.
    pub fn acks(&self) -> Vec<(String, Value)> {
        self.world().acks.clone()
    }

    /// What the bot showed to one user alone, as `(user, text)`: `chat.postEphemeral`,
    /// ephemeral `response_url` posts (the default without `response_type`), and replies
    /// carried by slash-command acknowledgements.
    pub fn ephemerals(&self) -> Vec<(String, String)> {
        self.world().ephemerals.clone()
    }

    /// Every body posted to a `response_url`, in order (also refused ones).
    pub fn response_posts(&self) -> Vec<Value> {
        self.world().response_posts.clone()
    }

    /// Every envelope frame written to a WebSocket, in order (re-deliveries included, with
    /// their `retry_attempt`).
    pub fn sent_envelopes(&self) -> Vec<Value> {
        self.world().sent.clone()
    }

    /// How many envelopes are not acknowledged yet.
    pub fn pending_envelopes(&self) -> usize {
        self.world().pending.len()
    }

    /// Calls `f` every 10 ms until it returns `Some`, and returns that. Panics after
    /// `timeout`, naming `what` and listing every call, acknowledgement and pending envelope.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&FakeSlack) -> Option<T>,
    ) -> T {
        boxedclaw_channels::fake::poll_until(timeout, what, || f(self), || self.dump()).await
    }

    fn dump(&self) -> String {
        let w = self.world();
        let mut out = String::from("calls:\n");
        for c in &w.calls {
            let flag = if c.rejected { " [rejected]" } else { "" };
            out.push_str(&format!("  {}{flag} {}\n", c.method, c.body));
        }
        out.push_str("acks:\n");
        for (id, payload) in &w.acks {
            out.push_str(&format!("  {id} {payload}\n"));
        }
        out.push_str(&format!(
            "pending envelopes: {}; connections accepted: {}, live: {}\n",
            w.pending.len(),
            w.accepted,
            w.live.len()
        ));
        for e in &w.pending {
            out.push_str(&format!(
                "  {} {} (sent {} times) {}\n",
                e.id, e.kind, e.attempts, e.payload
            ));
        }
        out
    }

    // ---- Failure injection ----

    /// Answers the next call to `method` like Slack's rate limiter: HTTP 429 with
    /// `Retry-After: retry_after_secs` and `{"ok":false,"error":"ratelimited"}`. That call is
    /// recorded as rejected and has no effect. Repeated calls queue several 429s.
    pub fn rate_limit_next(&self, method: &str, retry_after_secs: u32) {
        self.world()
            .rate_limits
            .entry(method.to_owned())
            .or_default()
            .push_back(retry_after_secs);
    }
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.server.abort();
        self.world().tell_live(|| Ctl::Drop);
    }
}

impl Inner {
    fn world(&self) -> MutexGuard<'_, World> {
        // A test that panicked while holding the lock must not hide the original failure.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl World {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            last_ts: 0,
            last_id: 0,
            calls: Vec::new(),
            posted: Vec::new(),
            user_messages: HashMap::new(),
            pending: VecDeque::new(),
            sent: Vec::new(),
            acks: Vec::new(),
            ephemerals: Vec::new(),
            response_posts: Vec::new(),
            response_urls: HashMap::new(),
            rate_limits: HashMap::new(),
            opened: 0,
            accepted: 0,
            live: Vec::new(),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// A fresh message timestamp, increasing: `1700000000.000101`, `…102`, …
    fn next_ts(&mut self) -> String {
        self.last_ts += 1;
        let micros = 100 + self.last_ts;
        format!(
            "{}.{:06}",
            FIRST_TS_SECS + micros / 1_000_000,
            micros % 1_000_000
        )
    }

    /// Records a message of `user` in `channel` and returns its fresh ts.
    fn user_message(
        &mut self,
        channel: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> String {
        let ts = self.next_ts();
        self.user_messages.insert(
            (channel.to_owned(), ts.clone()),
            UserMessage {
                user: user.to_owned(),
                text: text.to_owned(),
                thread_ts: thread_ts.map(str::to_owned),
            },
        );
        ts
    }

    fn find(&self, channel: &str, ts: &str) -> Option<&SlackMessage> {
        self.posted
            .iter()
            .find(|m| m.channel == channel && m.ts == ts)
    }

    fn find_mut(&mut self, channel: &str, ts: &str) -> Option<&mut SlackMessage> {
        self.posted
            .iter_mut()
            .find(|m| m.channel == channel && m.ts == ts)
    }

    // ---- Payloads ----

    fn message_event(
        &mut self,
        channel: &str,
        user: &str,
        text: &str,
        ts: &str,
        thread_ts: Option<&str>,
    ) -> Value {
        let mut event = json!({
            "type": "message",
            "channel": channel,
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "team": FakeSlack::TEAM,
            "client_msg_id": self.client_msg_id(),
            "channel_type": channel_type(channel),
        });
        if let Some(thread) = thread_ts {
            event["thread_ts"] = json!(thread);
            if let Some(parent) = self.author(channel, thread) {
                event["parent_user_id"] = json!(parent);
            }
        }
        event
    }

    fn app_mention_event(
        &mut self,
        channel: &str,
        user: &str,
        text: &str,
        ts: &str,
        thread_ts: Option<&str>,
    ) -> Value {
        let mut event = json!({
            "type": "app_mention",
            "channel": channel,
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "team": FakeSlack::TEAM,
            "client_msg_id": self.client_msg_id(),
        });
        if let Some(thread) = thread_ts {
            event["thread_ts"] = json!(thread);
        }
        event
    }

    /// Who wrote message `ts` in `channel`, if the fake knows.
    fn author(&self, channel: &str, ts: &str) -> Option<String> {
        if self.find(channel, ts).is_some() {
            return Some(FakeSlack::BOT_USER.to_owned());
        }
        self.user_messages
            .get(&(channel.to_owned(), ts.to_owned()))
            .map(|m| m.user.clone())
    }

    fn client_msg_id(&mut self) -> String {
        let n = self.next_id();
        format!("c0ffee00-0000-4000-8000-{n:012x}")
    }

    /// The Events API wrapper of `event` (a message event at `ts`).
    fn event_callback(&mut self, event: Value, ts: &str) -> Value {
        let n = self.next_id();
        json!({
            "token": VERIFICATION_TOKEN,
            "team_id": FakeSlack::TEAM,
            "context_team_id": FakeSlack::TEAM,
            "context_enterprise_id": null,
            "api_app_id": FakeSlack::APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": format!("Ev0FAKE{n:06}"),
            "event_time": ts_secs(ts),
            "authorizations": [{
                "enterprise_id": null,
                "team_id": FakeSlack::TEAM,
                "user_id": FakeSlack::BOT_USER,
                "is_bot": true,
                "is_enterprise_install": false,
            }],
            "is_ext_shared_channel": false,
            "event_context": format!("4-fake-{n}"),
        })
    }

    /// A fresh `response_url` answering into `channel` for `user`.
    fn response_url(&mut self, channel: &str, user: &str, message_ts: Option<&str>) -> String {
        let id = format!("R{:06}", self.next_id());
        self.response_urls.insert(
            id.clone(),
            ResponseTarget {
                channel: channel.to_owned(),
                user: user.to_owned(),
                message_ts: message_ts.map(str::to_owned),
                uses: 0,
            },
        );
        format!("http://{}/response/{id}", self.addr)
    }

    fn trigger_id(&mut self) -> String {
        let n = self.next_id();
        format!("{n}.{}.fake{n:08x}", FIRST_TS_SECS)
    }

    fn block_actions(
        &mut self,
        user: &str,
        channel: &str,
        message_ts: &str,
        action_id: &str,
        value: &str,
    ) -> Value {
        let shown = self.find(channel, message_ts).cloned().unwrap_or_else(|| {
            panic!("click: the bot posted no message {message_ts} in {channel}")
        });
        let (block_id, label) = find_button(&shown.blocks, action_id)
            .unwrap_or_else(|| ("fake-block".to_owned(), action_id.to_owned()));
        let response_url = self.response_url(channel, user, Some(message_ts));
        let trigger_id = self.trigger_id();
        let action_ts = self.next_ts();
        json!({
            "type": "block_actions",
            "token": VERIFICATION_TOKEN,
            "team": { "id": FakeSlack::TEAM, "domain": "fake" },
            "user": {
                "id": user,
                "username": user_name(user),
                "name": user_name(user),
                "team_id": FakeSlack::TEAM,
            },
            "api_app_id": FakeSlack::APP_ID,
            "is_enterprise_install": false,
            "enterprise": null,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": false,
            },
            "trigger_id": trigger_id,
            "channel": { "id": channel, "name": channel_name(channel) },
            "message": message_json(&shown),
            "state": { "values": {} },
            "response_url": response_url,
            "actions": [{
                "type": "button",
                "action_id": action_id,
                "block_id": block_id,
                "text": { "type": "plain_text", "text": label, "emoji": true },
                "value": value,
                "action_ts": action_ts,
            }],
        })
    }

    fn slash_payload(&mut self, user: &str, channel: &str, text: &str) -> Value {
        let response_url = self.response_url(channel, user, None);
        let trigger_id = self.trigger_id();
        json!({
            "token": VERIFICATION_TOKEN,
            "team_id": FakeSlack::TEAM,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": channel_name(channel),
            "user_id": user,
            "user_name": user_name(user),
            "command": COMMAND,
            "text": text,
            "api_app_id": FakeSlack::APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        })
    }

    // ---- Socket Mode ----

    /// Queues an envelope and sends it if a connection is live; returns its id.
    fn queue(
        &mut self,
        kind: &'static str,
        payload: Value,
        accepts_response_payload: bool,
        command: Option<(String, String)>,
    ) -> String {
        let id = format!(
            "{:08x}-fake-4e0e-8000-{:012x}",
            self.next_id(),
            self.pending.len()
        );
        self.pending.push_back(Envelope {
            id: id.clone(),
            kind,
            payload,
            accepts_response_payload,
            attempts: 0,
            on: None,
            command,
        });
        self.dispatch();
        id
    }

    /// Hands every envelope not in flight to the newest live connection.
    fn dispatch(&mut self) {
        loop {
            let Some(live) = self.live.last() else {
                return;
            };
            let conn = live.id;
            let tx = live.tx.clone();
            let mut failed = false;
            for e in self.pending.iter_mut().filter(|e| e.on.is_none()) {
                if tx.send(Ctl::Envelope(e.id.clone())).is_err() {
                    failed = true;
                    break;
                }
                e.on = Some(conn);
            }
            if !failed {
                return;
            }
            // That connection's task is gone: forget it and try the next one.
            self.live.retain(|l| l.id != conn);
            for e in self.pending.iter_mut().filter(|e| e.on == Some(conn)) {
                e.on = None;
            }
        }
    }

    fn tell_live(&mut self, ctl: impl Fn() -> Ctl) {
        for live in &self.live {
            let _ = live.tx.send(ctl());
        }
    }

    /// The frame for envelope `id` on connection `conn`, counting the attempt; `None` if it
    /// was acknowledged or moved to another connection meanwhile.
    fn frame(&mut self, id: &str, conn: usize) -> Option<String> {
        let e = self
            .pending
            .iter_mut()
            .find(|e| e.id == id && e.on == Some(conn))?;
        let frame = json!({
            "envelope_id": e.id,
            "type": e.kind,
            "accepts_response_payload": e.accepts_response_payload,
            "payload": e.payload,
            "retry_attempt": e.attempts,
            "retry_reason": if e.attempts == 0 { "" } else { "timeout" },
        });
        e.attempts += 1;
        self.sent.push(frame.clone());
        Some(frame.to_string())
    }

    fn hello(&self) -> String {
        json!({
            "type": "hello",
            "num_connections": self.live.len(),
            "debug_info": {
                "host": "fake-slack",
                "build_number": 1,
                "approximate_connection_time": 18_060,
            },
            "connection_info": { "app_id": FakeSlack::APP_ID },
        })
        .to_string()
    }

    /// An acknowledgement (or anything else) the client wrote on a WebSocket.
    fn on_client_frame(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            tracing::warn!("fake Slack: not JSON on the socket: {text}");
            return;
        };
        let Some(id) = frame.get("envelope_id").and_then(Value::as_str) else {
            tracing::warn!("fake Slack: a frame without envelope_id: {text}");
            return;
        };
        let payload = frame.get("payload").cloned().unwrap_or(Value::Null);
        self.acks.push((id.to_owned(), payload.clone()));
        let Some(index) = self.pending.iter().position(|e| e.id == id) else {
            return;
        };
        let envelope = self.pending.remove(index).expect("position found");
        if let Some((user, channel)) = envelope.command {
            self.command_reply(&user, &channel, &payload);
        }
    }

    /// A reply carried by a slash command's acknowledgement: ephemeral unless `in_channel`.
    fn command_reply(&mut self, user: &str, channel: &str, payload: &Value) {
        let text = str_of(payload, "text");
        if text.is_none() && payload.get("blocks").is_none_or(Value::is_null) {
            return;
        }
        if str_of(payload, "response_type") == Some("in_channel") {
            let blocks = blocks_of(payload).ok().flatten().unwrap_or(Value::Null);
            let thread_ts = str_of(payload, "thread_ts").map(str::to_owned);
            self.post(channel, thread_ts, text.unwrap_or_default(), blocks);
        } else {
            self.ephemerals
                .push((user.to_owned(), text.unwrap_or_default().to_owned()));
        }
    }

    fn connection_closed(&mut self, conn: usize) {
        self.live.retain(|l| l.id != conn);
        for e in self.pending.iter_mut().filter(|e| e.on == Some(conn)) {
            e.on = None;
        }
        self.dispatch();
    }

    // ---- Web API ----

    /// Consumes one pending 429 for `method`, if any.
    fn take_rate_limit(&mut self, method: &str) -> Option<u32> {
        self.rate_limits.get_mut(method)?.pop_front()
    }

    fn answer(&mut self, method: &str, p: &Value) -> Answer {
        match method {
            "auth.test" => Ok(json!({
                "url": "https://fake.slack.com/",
                "team": "fake",
                "user": "boxedclaw",
                "team_id": FakeSlack::TEAM,
                "user_id": FakeSlack::BOT_USER,
                "bot_id": FakeSlack::BOT_ID,
                "is_enterprise_install": false,
            })),
            "apps.connections.open" => {
                self.opened += 1;
                Ok(json!({ "url": format!("ws://{}/socket?n={}", self.addr, self.opened) }))
            }
            "chat.postMessage" => self.post_message(p),
            "chat.update" => self.update(p),
            "chat.delete" => {
                let channel = channel_param(p, "channel")?;
                let ts = str_of(p, "ts").unwrap_or_default().to_owned();
                if self.find(&channel, &ts).is_none() {
                    return Err(Failure::new("message_not_found"));
                }
                self.posted
                    .retain(|m| !(m.channel == channel && m.ts == ts));
                Ok(json!({ "channel": channel, "ts": ts }))
            }
            "chat.postEphemeral" => {
                channel_param(p, "channel")?;
                let user = str_of(p, "user")
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| Failure::new("user_not_in_channel"))?
                    .to_owned();
                let (text, _) = content(p)?;
                self.ephemerals.push((user, text));
                Ok(json!({ "message_ts": self.next_ts() }))
            }
            "conversations.open" => {
                let users = list_of(p, "users");
                let id = match (users.as_slice(), str_of(p, "channel")) {
                    ([], Some(channel)) if !channel.is_empty() => channel.to_owned(),
                    ([], _) => return Err(Failure::new("users_list_not_supplied")),
                    ([user], _) => dm_channel(user),
                    (many, _) => format!("G{}", many.concat()),
                };
                let mut channel = json!({
                    "id": id,
                    "created": FIRST_TS_SECS,
                    "is_im": id.starts_with('D'),
                    "is_mpim": id.starts_with('G'),
                    "is_open": true,
                });
                if let [user] = users.as_slice() {
                    channel["user"] = json!(user);
                }
                Ok(json!({ "channel": channel, "already_open": false, "no_op": false }))
            }
            "conversations.replies" => self.replies(p),
            "reactions.add" => {
                channel_param(p, "channel")?;
                if str_of(p, "name").is_none_or(str::is_empty) {
                    return Err(Failure::new("invalid_name"));
                }
                if str_of(p, "timestamp").is_none_or(str::is_empty) {
                    return Err(Failure::new("no_item_specified"));
                }
                Ok(json!({}))
            }
            _ => Err(Failure::new("unknown_method")),
        }
    }

    /// `conversations.replies`: the thread of `ts`, parent first (see the module docs).
    fn replies(&self, p: &Value) -> Answer {
        let channel = channel_param(p, "channel")?;
        let ts = str_of(p, "ts").unwrap_or_default();
        // Slack's `ts` may name a reply too; the thread is its parent's.
        let parent = match self.thread_of(&channel, ts) {
            Some(Some(parent)) => parent,
            Some(None) => ts.to_owned(),
            None => return Err(Failure::new("thread_not_found")),
        };
        let limit = match p.get("limit") {
            None | Some(Value::Null) => 1000,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| Failure::new("invalid_limit"))?,
        };
        let limit = usize::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
        let skip = match str_of(p, "cursor").filter(|c| !c.is_empty()) {
            None => 0,
            Some(cursor) => cursor
                .strip_prefix("next:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Failure::new("invalid_cursor"))?,
        };
        let mut replies: Vec<(String, Value)> = self
            .user_messages
            .iter()
            .filter(|((c, _), m)| *c == channel && m.thread_ts.as_deref() == Some(&parent))
            .map(|((_, ts), m)| (ts.clone(), Self::user_message_json(ts, m)))
            .chain(
                self.posted
                    .iter()
                    .filter(|m| m.channel == channel && m.thread_ts.as_deref() == Some(&parent))
                    .map(|m| (m.ts.clone(), message_json(m))),
            )
            .filter(|(ts, _)| *ts != parent)
            .collect();
        replies.sort_by(|a, b| a.0.cmp(&b.0));
        let mut head = self
            .message_json_at(&channel, &parent)
            .ok_or_else(|| Failure::new("thread_not_found"))?;
        if !replies.is_empty() {
            let users: Vec<Value> = {
                let mut users: Vec<String> = replies
                    .iter()
                    .filter_map(|(_, m)| str_of(m, "user").map(str::to_owned))
                    .collect();
                users.sort();
                users.dedup();
                users.into_iter().map(Value::String).collect()
            };
            head["thread_ts"] = json!(parent);
            head["reply_count"] = json!(replies.len());
            head["reply_users_count"] = json!(users.len());
            head["reply_users"] = Value::Array(users);
            head["latest_reply"] = json!(replies.last().map(|(ts, _)| ts.clone()));
        }
        let parent_user = str_of(&head, "user").unwrap_or_default().to_owned();
        let thread: Vec<Value> = std::iter::once(head)
            .chain(replies.into_iter().map(|(_, mut m)| {
                m["parent_user_id"] = json!(parent_user);
                m
            }))
            .collect();
        let page: Vec<Value> = thread.iter().skip(skip).take(limit).cloned().collect();
        let has_more = skip + page.len() < thread.len();
        let mut answer = json!({ "messages": page, "has_more": has_more });
        if has_more {
            answer["response_metadata"] =
                json!({ "next_cursor": format!("next:{}", skip + limit) });
        }
        Ok(answer)
    }

    /// For a known message `ts` of `channel`: `Some(thread)`, the thread it is a reply in
    /// (`None` for a top-level message). `None` when the message is unknown.
    fn thread_of(&self, channel: &str, ts: &str) -> Option<Option<String>> {
        if let Some(m) = self.find(channel, ts) {
            return Some(m.thread_ts.clone().filter(|t| t != ts));
        }
        self.user_messages
            .get(&(channel.to_owned(), ts.to_owned()))
            .map(|m| m.thread_ts.clone().filter(|t| t != ts))
    }

    /// Message `ts` of `channel` as `conversations.replies` returns it, if known.
    fn message_json_at(&self, channel: &str, ts: &str) -> Option<Value> {
        if let Some(m) = self.find(channel, ts) {
            return Some(message_json(m));
        }
        let m = self
            .user_messages
            .get(&(channel.to_owned(), ts.to_owned()))?;
        Some(Self::user_message_json(ts, m))
    }

    fn user_message_json(ts: &str, m: &UserMessage) -> Value {
        let mut message = json!({
            "type": "message",
            "user": m.user,
            "text": m.text,
            "ts": ts,
            "team": FakeSlack::TEAM,
        });
        if let Some(thread) = &m.thread_ts {
            message["thread_ts"] = json!(thread);
        }
        message
    }

    fn post_message(&mut self, p: &Value) -> Answer {
        let channel = channel_param(p, "channel")?;
        let (text, blocks) = content(p)?;
        let thread_ts = str_of(p, "thread_ts")
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let posted = self.post(&channel, thread_ts, &text, blocks);
        Ok(json!({
            "channel": posted.channel,
            "ts": posted.ts,
            "message": message_json(&posted),
        }))
    }

    fn post(
        &mut self,
        channel: &str,
        thread_ts: Option<String>,
        text: &str,
        blocks: Value,
    ) -> SlackMessage {
        let posted = SlackMessage {
            channel: channel.to_owned(),
            ts: self.next_ts(),
            thread_ts,
            text: text.to_owned(),
            buttons: buttons(&blocks),
            blocks,
        };
        self.posted.push(posted.clone());
        posted
    }

    fn update(&mut self, p: &Value) -> Answer {
        let channel = channel_param(p, "channel")?;
        let ts = str_of(p, "ts").unwrap_or_default().to_owned();
        if self.find(&channel, &ts).is_none() {
            return Err(Failure::new("message_not_found"));
        }
        let (text, blocks) = content(p)?;
        let m = self.find_mut(&channel, &ts).expect("checked above");
        replace_content(m, text, blocks);
        let m = m.clone();
        let mut message = message_json(&m);
        message["edited"] = json!({ "user": FakeSlack::BOT_USER, "ts": ts });
        let mut answer = json!({
            "channel": channel,
            "ts": ts,
            "text": m.text,
            "message": message,
        });
        if let Some(thread) = &m.thread_ts {
            answer["thread_ts"] = json!(thread);
        }
        Ok(answer)
    }

    /// A post to `response_url` `id`.
    fn on_response_post(&mut self, id: &str, body: &Value) -> Result<(), Failure> {
        self.response_posts.push(body.clone());
        let Some(target) = self.response_urls.get_mut(id) else {
            return Err(Failure::new("expired_url"));
        };
        if target.uses >= RESPONSE_URL_USES {
            return Err(Failure::new("used_url"));
        }
        target.uses += 1;
        let (channel, user, original) = (
            target.channel.clone(),
            target.user.clone(),
            target.message_ts.clone(),
        );
        let flag = |k: &str| match body.get(k) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        if flag("delete_original") {
            if let Some(ts) = original {
                self.posted
                    .retain(|m| !(m.channel == channel && m.ts == ts));
            }
            return Ok(());
        }
        let (text, blocks) = content(body)?;
        if flag("replace_original")
            && let Some(m) = original.and_then(|ts| self.find_mut(&channel, &ts))
        {
            replace_content(m, text, blocks);
            return Ok(());
        }
        if str_of(body, "response_type") == Some("in_channel") {
            let thread_ts = str_of(body, "thread_ts").map(str::to_owned);
            self.post(&channel, thread_ts, &text, blocks);
        } else {
            self.ephemerals.push((user, text));
        }
        Ok(())
    }
}

// ---- HTTP handlers ----

/// `/api/<method>`: any HTTP method; parameters from the query, a JSON body or a form body.
async fn serve_api(
    State(inner): State<Arc<Inner>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut params = query.as_deref().map(form_object).unwrap_or_default();
    let mut malformed = None;
    if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(fields)) => params.extend(fields),
            _ if body.iter().all(u8::is_ascii_whitespace) => {}
            _ => malformed = Some("invalid_json"),
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        params.extend(form_object(&String::from_utf8_lossy(&body)));
    } else if !body.iter().all(u8::is_ascii_whitespace) {
        malformed = Some("invalid_form_data");
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = bearer.or_else(|| str_of_map(&params, "token").map(str::to_owned));
    let params = Value::Object(params);

    let mut w = inner.world();
    w.calls.push(Call {
        method: method.clone(),
        body: params.clone(),
        rejected: false,
    });
    let index = w.calls.len() - 1;
    let wants_app_token = method == "apps.connections.open";
    let answer = if !METHODS.contains(&method.as_str()) {
        Err(Failure::new("unknown_method"))
    } else if let Some(error) = malformed {
        Err(Failure::new(error))
    } else {
        match token.as_deref() {
            None | Some("") => Err(Failure::new("not_authed")),
            Some(t) if t == inner.app_token && wants_app_token => Ok(()),
            Some(t) if t == inner.bot_token && !wants_app_token => Ok(()),
            Some(t) if t == inner.app_token || t == inner.bot_token => {
                Err(Failure::new("not_allowed_token_type"))
            }
            Some(_) => Err(Failure::new("invalid_auth")),
        }
        .and_then(|()| match w.take_rate_limit(&method) {
            Some(secs) => Err(Failure {
                retry_after: Some(secs),
                ..Failure::new("ratelimited")
            }),
            None => w.answer(&method, &params),
        })
    };
    match answer {
        Ok(mut result) => {
            let mut answer = json!({ "ok": true });
            if let Some(fields) = result.as_object_mut() {
                answer.as_object_mut().expect("an object").append(fields);
            }
            Json(answer).into_response()
        }
        Err(failure) => {
            w.calls[index].rejected = true;
            drop(w);
            failure_response(failure)
        }
    }
}

fn failure_response(failure: Failure) -> Response {
    let mut body = json!({ "ok": false, "error": failure.error });
    if !failure.errors.is_empty() {
        body["errors"] = json!(failure.errors);
    }
    match failure.retry_after {
        Some(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            Json(body),
        )
            .into_response(),
        None => Json(body).into_response(),
    }
}

/// `POST /response/<id>`: a `response_url` post (JSON; a `payload=` form is accepted too).
async fn serve_response_url(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body).ok().or_else(|| {
        let form = form_object(&String::from_utf8_lossy(&body));
        str_of_map(&form, "payload").and_then(|p| serde_json::from_str(p).ok())
    });
    let mut w = inner.world();
    let Some(parsed) = parsed.filter(Value::is_object) else {
        w.response_posts.push(Value::Null);
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    match w.on_response_post(&id, &parsed) {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(failure) => {
            let status = match failure.error.as_str() {
                "expired_url" | "used_url" => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, Json(json!({ "ok": false, "error": failure.error }))).into_response()
        }
    }
}

/// `GET /socket?n=<k>`: the Socket Mode WebSocket, for URLs `apps.connections.open` issued.
async fn serve_socket(
    State(inner): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let ticket = query
        .as_deref()
        .map(form_object)
        .and_then(|q| str_of_map(&q, "n").and_then(|n| n.parse::<u64>().ok()));
    let issued = inner.world().opened;
    if !ticket.is_some_and(|n| (1..=issued).contains(&n)) {
        return (StatusCode::UNAUTHORIZED, "invalid ticket").into_response();
    }
    ws.on_upgrade(move |socket| run_socket(inner, socket))
}

/// One Socket Mode connection: hello, then envelopes out and acknowledgements in, until
/// either side closes it.
async fn run_socket(inner: Arc<Inner>, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = {
        let mut w = inner.world();
        w.accepted += 1;
        let conn = w.accepted;
        // Hello first: the envelopes dispatched below are queued after it.
        let _ = tx.send(Ctl::Hello);
        w.live.push(Live { id: conn, tx });
        w.dispatch();
        conn
    };
    inner.accepted.send_replace(conn);
    let mut closing: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => inner.world().on_client_frame(text.as_str()),
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                // Pings are answered by the WebSocket layer.
                Some(Ok(_)) => {}
            },
            ctl = rx.recv() => match ctl {
                Some(Ctl::Hello) => {
                    let hello = inner.world().hello();
                    if socket.send(Message::Text(hello.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ctl::Envelope(id)) => {
                    let frame = inner.world().frame(&id, conn);
                    if let Some(frame) = frame
                        && socket.send(Message::Text(frame.into())).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ctl::Disconnect) => {
                    let frame = json!({
                        "type": "disconnect",
                        "reason": "refresh_requested",
                        "debug_info": { "host": "fake-slack" },
                    });
                    if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                        break;
                    }
                    let seen = *inner.accepted.borrow();
                    let mut accepted = inner.accepted.subscribe();
                    closing = Some(Box::pin(async move {
                        let reconnected = accepted.wait_for(|n| *n > seen);
                        let _ = tokio::time::timeout(Duration::from_secs(1), reconnected).await;
                    }));
                }
                // Dropping the socket closes the TCP connection without a close frame.
                Some(Ctl::Drop) | None => break,
            },
            () = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
        }
    }
    drop(socket);
    inner.world().connection_closed(conn);
}

// ---- Helpers ----

fn with_mention(text: &str) -> String {
    let mention = format!("<@{}>", FakeSlack::BOT_USER);
    if text.contains(&mention) {
        text.to_owned()
    } else {
        format!("{mention} {text}")
    }
}

fn dm_channel(user: &str) -> String {
    format!("D{user}")
}

fn channel_type(channel: &str) -> &'static str {
    match channel.chars().next() {
        Some('D') => "im",
        Some('G') => "group",
        _ => "channel",
    }
}

fn channel_name(channel: &str) -> String {
    match channel_type(channel) {
        "im" => "directmessage".to_owned(),
        _ => format!("channel-{}", channel.to_ascii_lowercase()),
    }
}

fn user_name(user: &str) -> String {
    format!("user-{}", user.to_ascii_lowercase())
}

/// The seconds of a Slack timestamp.
fn ts_secs(ts: &str) -> u64 {
    ts.split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(FIRST_TS_SECS)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn str_of_map<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// A list parameter: a JSON array or a comma-separated string (form encoding).
fn list_of(p: &Value, key: &str) -> Vec<String> {
    match p.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The channel a call names; a user id (`U…`/`W…`) means the app's DM with that user.
fn channel_param(p: &Value, key: &str) -> Result<String, Failure> {
    let channel = str_of(p, key).unwrap_or_default();
    let valid = channel.len() >= 2
        && channel
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    match channel.chars().next() {
        Some('U' | 'W') if valid => Ok(dm_channel(channel)),
        Some('C' | 'D' | 'G') if valid => Ok(channel.to_owned()),
        _ => Err(Failure::new("channel_not_found")),
    }
}

/// `blocks` of a call or payload: an array, or an array as JSON text (form encoding).
/// `None` when absent, null or empty.
fn blocks_of(p: &Value) -> Result<Option<Value>, Failure> {
    let blocks = match p.get("blocks") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => {
            serde_json::from_str(s).map_err(|_| Failure::new("invalid_blocks_format"))?
        }
        Some(v) => v.clone(),
    };
    match blocks.as_array() {
        Some(items) if items.is_empty() => Ok(None),
        Some(_) => Ok(Some(blocks)),
        None => Err(Failure::new("invalid_blocks_format")),
    }
}

/// The text and blocks of a post or edit, checked like Slack checks them.
fn content(p: &Value) -> Result<(String, Value), Failure> {
    let blocks = blocks_of(p)?;
    if let Some(blocks) = &blocks {
        let errors = block_errors(blocks);
        if !errors.is_empty() {
            return Err(Failure {
                errors,
                ..Failure::new("invalid_blocks")
            });
        }
    }
    let text = str_of(p, "text").unwrap_or_default().to_owned();
    let has_attachments = p.get("attachments").is_some_and(|a| !a.is_null());
    if text.trim().is_empty() && blocks.is_none() && !has_attachments {
        return Err(Failure::new("no_text"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(Failure::new("msg_too_long"));
    }
    Ok((text, blocks.unwrap_or(Value::Null)))
}

/// Violations of the Block Kit limits adapters are likely to hit.
fn block_errors(blocks: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let blocks = blocks.as_array().map(Vec::as_slice).unwrap_or_default();
    if blocks.len() > MAX_BLOCKS {
        errors.push(format!(
            "no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]"
        ));
    }
    let text_len = |v: Option<&Value>| {
        v.and_then(|t| t.get("text"))
            .and_then(Value::as_str)
            .map_or(0, |s| s.chars().count())
    };
    let mut check = |ok: bool, what: String| {
        if !ok {
            errors.push(what);
        }
    };
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("[json-pointer:/blocks/{i}");
        match str_of(block, "type") {
            Some("section") => {
                check(
                    text_len(block.get("text")) <= 3000,
                    format!("must be less than 3001 characters {at}/text/text]"),
                );
                for (j, field) in block
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    check(
                        text_len(Some(field)) <= 2000,
                        format!("must be less than 2001 characters {at}/fields/{j}/text]"),
                    );
                }
                let has_content = block.get("text").is_some() || block.get("fields").is_some();
                check(has_content, format!("must provide text or fields {at}]"));
            }
            Some("header") => check(
                text_len(block.get("text")) <= 150,
                format!("must be less than 151 characters {at}/text/text]"),
            ),
            Some("actions") => {
                let elements = block
                    .get("elements")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                check(
                    (1..=25).contains(&elements.len()),
                    format!("must have 1 to 25 elements {at}/elements]"),
                );
                for (j, e) in elements.iter().enumerate() {
                    if str_of(e, "type") != Some("button") {
                        continue;
                    }
                    let label = text_len(e.get("text"));
                    check(
                        (1..=75).contains(&label),
                        format!("must be 1 to 75 characters {at}/elements/{j}/text/text]"),
                    );
                    let value = str_of(e, "value").map_or(0, |v| v.chars().count());
                    check(
                        value <= 2000,
                        format!("must be less than 2001 characters {at}/elements/{j}/value]"),
                    );
                    let action = str_of(e, "action_id").map_or(0, |v| v.chars().count());
                    check(
                        action <= 255,
                        format!("must be less than 256 characters {at}/elements/{j}/action_id]"),
                    );
                }
            }
            Some(_) => {}
            None => check(false, format!("missing required field: type {at}]")),
        }
    }
    errors
}

/// The buttons of the `actions` blocks of `blocks`.
fn buttons(blocks: &Value) -> Vec<SlackButton> {
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| str_of(b, "type") == Some("actions"))
        .filter_map(|b| b.get("elements").and_then(Value::as_array))
        .flatten()
        .filter(|e| str_of(e, "type") == Some("button"))
        .map(|e| SlackButton {
            label: e
                .get("text")
                .and_then(|t| str_of(t, "text"))
                .unwrap_or_default()
                .to_owned(),
            action_id: str_of(e, "action_id").unwrap_or_default().to_owned(),
            value: str_of(e, "value").unwrap_or_default().to_owned(),
        })
        .collect()
}

/// `(block_id, label)` of the button with `action_id` in `blocks`.
fn find_button(blocks: &Value, action_id: &str) -> Option<(String, String)> {
    blocks
        .as_array()?
        .iter()
        .filter(|b| str_of(b, "type") == Some("actions"))
        .find_map(|b| {
            let button = b
                .get("elements")?
                .as_array()?
                .iter()
                .find(|e| str_of(e, "action_id") == Some(action_id))?;
            let block_id = str_of(b, "block_id").unwrap_or("fake-block").to_owned();
            let label = button.get("text").and_then(|t| str_of(t, "text"))?;
            Some((block_id, label.to_owned()))
        })
}

/// Slack's message formatting as displayed: `<…>` control sequences shown, entities decoded.
fn render_mrkdwn(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..start]));
        let after = &rest[start + 1..];
        match after.find('>') {
            Some(end) => {
                out.push_str(&render_control(&after[..end]));
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&decode_entities(&rest[start..]));
                rest = "";
            }
        }
    }
    out.push_str(&decode_entities(rest));
    out
}

/// One `<…>` control sequence as displayed (its inside given).
fn render_control(inner: &str) -> String {
    let (target, label) = match inner.split_once('|') {
        Some((target, label)) => (target, Some(label)),
        None => (inner, None),
    };
    let shown = if let Some(user) = target.strip_prefix('@') {
        format!("@{}", label.unwrap_or(user))
    } else if let Some(channel) = target.strip_prefix('#') {
        format!("#{}", label.unwrap_or(channel))
    } else if let Some(special) = target.strip_prefix('!') {
        match (special, label) {
            ("channel" | "here" | "everyone", _) => format!("@{special}"),
            (_, Some(label)) => label.to_owned(),
            (s, None) => match s.split_once('^') {
                Some(("subteam", id)) => format!("@{id}"),
                _ => s.to_owned(),
            },
        }
    } else {
        label.unwrap_or(target).to_owned()
    };
    decode_entities(&shown)
}

fn decode_entities(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn replace_content(m: &mut SlackMessage, text: String, blocks: Value) {
    m.text = text;
    m.buttons = buttons(&blocks);
    m.blocks = blocks;
}

/// One of the bot's messages as Slack returns it.
fn message_json(m: &SlackMessage) -> Value {
    let mut message = json!({
        "type": "message",
        "user": FakeSlack::BOT_USER,
        "bot_id": FakeSlack::BOT_ID,
        "app_id": FakeSlack::APP_ID,
        "team": FakeSlack::TEAM,
        "text": m.text,
        "ts": m.ts,
    });
    if let Some(thread) = &m.thread_ts {
        message["thread_ts"] = json!(thread);
    }
    if !m.blocks.is_null() {
        message["blocks"] = m.blocks.clone();
    }
    message
}

/// Form or query parameters as a JSON object of strings (`+` is a space, `%XX` a byte).
fn form_object(form: &str) -> Map<String, Value> {
    form.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), Value::String(form_decode(v)))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_encode(pairs: &[(String, String)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

// ---- The shared conformance suite ----

impl PlatformFake for FakeSlack {
    fn user_id(&self, n: u32) -> String {
        format!("U{:04}", 1000 + n)
    }

    fn direct_message<'a>(&'a self, user: &'a str, text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.dm(user, text);
        })
    }

    fn shown<'a>(&'a self, conversation: &'a ConversationKey) -> BoxFuture<'a, Vec<Shown>> {
        Box::pin(async move {
            self.messages(&conversation.channel)
                .into_iter()
                .filter(|m| m.thread_ts == conversation.thread)
                .map(|m| Shown {
                    text: m.shown_text(),
                    id: m.ts,
                    buttons: m.buttons.into_iter().map(|b| b.label).collect(),
                })
                .collect()
        })
    }

    fn click<'a>(
        &'a self,
        conversation: &'a ConversationKey,
        approval: &'a ApprovalId,
        user: &'a str,
        approve: bool,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let label = if approve { "Approve" } else { "Deny" };
            let (ts, button) = self
                .messages(&conversation.channel)
                .into_iter()
                .filter(|m| {
                    m.thread_ts == conversation.thread
                        && !m.buttons.is_empty()
                        && (m.shown_text().contains(approval.as_str())
                            || m.text.contains(approval.as_str())
                            || m.blocks.to_string().contains(approval.as_str()))
                })
                .find_map(|m| {
                    let button = m.buttons.iter().find(|b| b.label.starts_with(label))?;
                    Some((m.ts.clone(), button.clone()))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "no {label} button shown for approval {} in {conversation:?}",
                        approval.as_str()
                    )
                });
            FakeSlack::click(
                self,
                user,
                &conversation.channel,
                &ts,
                &button.action_id,
                &button.value,
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxedclaw_protocol::ids::Platform;
    use slack_morphism::errors::SlackClientError;
    use slack_morphism::prelude::*;
    use slack_morphism::signature_verifier::SlackEventSignatureVerifier;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;

    const BOT: &str = "xoxb-fake-bot";
    const APP: &str = "xapp-fake-app";
    const WAIT: Duration = Duration::from_secs(10);

    type Connector = SlackClientHyperHttpsConnector;
    type Client = SlackClient<Connector>;

    /// The client as production builds it, pointed at the fake.
    fn client(fake: &FakeSlack) -> Arc<Client> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .expect("native roots")
            .https_or_http()
            .enable_http1()
            .build();
        Arc::new(SlackClient::new(
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(&fake.api_url()),
        ))
    }

    fn token(value: &str) -> SlackApiToken {
        SlackApiToken::new(SlackApiTokenValue(value.to_owned()))
    }

    fn approval_blocks() -> Vec<SlackBlock> {
        let button = |label: &str, action: &str, value: &str| {
            SlackActionBlockElement::Button(
                SlackBlockButtonElement::new(label.into())
                    .with_action_id(SlackActionId(action.to_owned()))
                    .with_value(value.to_owned()),
            )
        };
        vec![
            SlackBlock::Section(SlackSectionBlock::new().with_text(SlackBlockText::MarkDown(
                SlackBlockMarkDownText::new("run `ls`? (c0ffee000001)".to_owned()),
            ))),
            SlackBlock::Actions(
                SlackActionsBlock::new(vec![
                    button("Approve", "bc.approve", "v1.approve"),
                    button("Deny", "bc.deny", "v1.deny"),
                ])
                .with_block_id(SlackBlockId("approval".to_owned())),
            ),
        ]
    }

    async fn post_prompt(client: &Client, channel: &str, thread: Option<&str>) -> String {
        let session_token = token(BOT);
        let session = client.open_session(&session_token);
        let mut request = SlackApiChatPostMessageRequest::new(
            SlackChannelId(channel.to_owned()),
            SlackMessageContent::new()
                .with_text("run `ls`? (c0ffee000001)".to_owned())
                .with_blocks(approval_blocks()),
        );
        if let Some(thread) = thread {
            request = request.with_thread_ts(SlackTs(thread.to_owned()));
        }
        let sent = session.chat_post_message(&request).await.unwrap();
        sent.ts.0
    }

    /// A raw HTTP/1.1 POST: `(status, raw headers, body)`.
    async fn raw_post(
        fake: &FakeSlack,
        path: &str,
        content_type: &str,
        auth: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(fake.inner.addr)
            .await
            .unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: {content_type}\r\n{auth}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn posts_and_updates_show_in_the_channel() {
        let fake = FakeSlack::start(BOT, APP).await;
        let client = client(&fake);
        let session_token = token(BOT);
        let session = client.open_session(&session_token);
        let me = session.auth_test().await.unwrap();
        assert_eq!(me.user_id.0, FakeSlack::BOT_USER);
        assert_eq!(me.team_id.0, FakeSlack::TEAM);
        assert_eq!(me.bot_id.unwrap().0, FakeSlack::BOT_ID);

        let root = fake.mention("C1", "U1001", "hi");
        let sent = session
            .chat_post_message(
                &SlackApiChatPostMessageRequest::new(
                    SlackChannelId("C1".into()),
                    SlackMessageContent::new()
                        .with_text("approve?".into())
                        .with_blocks(approval_blocks()),
                )
                .with_thread_ts(SlackTs(root.clone()))
                .with_unfurl_links(false)
                .with_unfurl_media(false),
            )
            .await
            .unwrap();
        assert_eq!(sent.channel.0, "C1");
        assert_eq!(sent.message.origin.thread_ts, Some(SlackTs(root.clone())));
        assert_eq!(sent.message.sender.bot_id.unwrap().0, FakeSlack::BOT_ID);
        assert_eq!(sent.message.content.blocks.unwrap().len(), 2);
        let shown = fake.messages("C1");
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].ts, sent.ts.0);
        assert!(shown[0].ts > root, "timestamps increase");
        assert_eq!(shown[0].thread_ts.as_deref(), Some(root.as_str()));
        assert_eq!(shown[0].text, "approve?");
        assert_eq!(
            shown[0].buttons,
            vec![
                SlackButton {
                    label: "Approve".into(),
                    action_id: "bc.approve".into(),
                    value: "v1.approve".into(),
                },
                SlackButton {
                    label: "Deny".into(),
                    action_id: "bc.deny".into(),
                    value: "v1.deny".into(),
                },
            ]
        );
        let body = &fake.calls_to("chat.postMessage")[0];
        assert_eq!(body["unfurl_links"], json!(false));

        let updated = session
            .chat_update(&SlackApiChatUpdateRequest::new(
                SlackChannelId("C1".into()),
                SlackMessageContent::new().with_text("approved by <@U1001>".into()),
                sent.ts.clone(),
            ))
            .await
            .unwrap();
        assert_eq!(updated.ts, sent.ts);
        let now = &fake.messages("C1")[0];
        assert_eq!(now.text, "approved by <@U1001>");
        assert_eq!(now.blocks, Value::Null);
        assert!(now.buttons.is_empty());
        assert_eq!(now.thread_ts.as_deref(), Some(root.as_str()));

        let err = session
            .chat_update(&SlackApiChatUpdateRequest::new(
                SlackChannelId("C1".into()),
                SlackMessageContent::new().with_text("x".into()),
                SlackTs("1.000001".into()),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SlackClientError::ApiError(e) if e.code == "message_not_found"),
            "{err:?}"
        );

        // A user id as channel means the app's DM with that user.
        let dm = session
            .chat_post_message(&SlackApiChatPostMessageRequest::new(
                SlackChannelId("U1001".into()),
                SlackMessageContent::new().with_text("psst".into()),
            ))
            .await
            .unwrap();
        assert_eq!(dm.channel.0, "DU1001");
        assert_eq!(fake.messages("DU1001")[0].text, "psst");
        let opened = session
            .conversations_open(
                &SlackApiConversationsOpenRequest::new()
                    .with_users(vec![SlackUserId("U1002".into())]),
            )
            .await
            .unwrap();
        assert_eq!(opened.channel.id.0, "DU1002");
        session
            .chat_post_ephemeral(&SlackApiChatPostEphemeralRequest::new(
                SlackChannelId("C1".into()),
                SlackUserId("U1002".into()),
                SlackMessageContent::new().with_text("only you".into()),
            ))
            .await
            .unwrap();
        assert_eq!(
            fake.ephemerals(),
            [("U1002".to_owned(), "only you".to_owned())]
        );
        session
            .reactions_add(&SlackApiReactionsAddRequest::new(
                SlackChannelId("C1".into()),
                SlackReactionName("eyes".into()),
                SlackTs(root.clone()),
            ))
            .await
            .unwrap();
        assert!(fake.calls().iter().filter(|c| c.rejected).count() == 1);
    }

    #[tokio::test]
    async fn conversations_replies_returns_the_thread_parent_first() {
        let fake = FakeSlack::start(BOT, APP).await;
        let client = client(&fake);
        let session_token = token(BOT);
        let session = client.open_session(&session_token);
        let root = fake.mention("C1", "U1001", "start");
        let reply = fake.thread_message("C1", &root, "U1002", "a reply");
        let prompt = post_prompt(&client, "C1", Some(&root)).await;
        let replies = |ts: &str, limit: Option<u16>| {
            let mut req = SlackApiConversationsRepliesRequest::new(
                SlackChannelId("C1".into()),
                SlackTs(ts.to_owned()),
            );
            req.limit = limit;
            req
        };

        let parent = session
            .conversations_replies(&replies(&root, Some(1)))
            .await
            .unwrap();
        assert_eq!(parent.messages.len(), 1);
        let head = &parent.messages[0];
        assert_eq!(head.origin.ts.0, root);
        assert_eq!(head.sender.user.as_ref().unwrap().0, "U1001");
        assert_eq!(head.content.text.as_deref(), Some("<@U0BOT> start"));
        assert_eq!(parent.has_more, Some(true));
        assert!(parent.response_metadata.unwrap().next_cursor.is_some());
        let call = fake.calls_to("conversations.replies").pop().unwrap();
        assert_eq!(
            (call["channel"].as_str(), call["limit"].as_str()),
            (Some("C1"), Some("1"))
        );

        // The whole thread, parent first; the ts of a reply names the same thread.
        for ts in [&root, &reply] {
            let all = session
                .conversations_replies(&replies(ts, None))
                .await
                .unwrap();
            let order: Vec<&str> = all
                .messages
                .iter()
                .map(|m| m.origin.ts.0.as_str())
                .collect();
            assert_eq!(order, [root.as_str(), reply.as_str(), prompt.as_str()]);
            assert_eq!(all.has_more, Some(false));
            assert_eq!(
                all.messages[2].sender.bot_id.as_ref().unwrap().0,
                FakeSlack::BOT_ID
            );
        }

        // The raw shape, as Slack's documentation gives it.
        let (status, _, body) = raw_post(
            &fake,
            "/api/conversations.replies",
            "application/x-www-form-urlencoded",
            Some(BOT),
            &format!("channel=C1&ts={root}&limit=2"),
        )
        .await;
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["ok"], true);
        assert_eq!(body["has_more"], true);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["thread_ts"], root.as_str());
        assert_eq!(messages[0]["reply_count"], 2);
        assert_eq!(messages[1]["parent_user_id"], "U1001");
        let cursor = body["response_metadata"]["next_cursor"].as_str().unwrap();
        let (_, _, rest) = raw_post(
            &fake,
            "/api/conversations.replies",
            "application/x-www-form-urlencoded",
            Some(BOT),
            &format!("channel=C1&ts={root}&limit=2&cursor={cursor}"),
        )
        .await;
        let rest: Value = serde_json::from_str(&rest).unwrap();
        assert_eq!(rest["messages"][0]["ts"], prompt.as_str());
        assert_eq!(rest["has_more"], false);

        // A message without replies comes back alone; unknown ones are errors.
        let lone = fake.channel_message("C1", "U1003", "lunch?");
        let alone = session
            .conversations_replies(&replies(&lone, Some(1)))
            .await
            .unwrap();
        assert_eq!(alone.messages.len(), 1);
        assert_eq!(alone.has_more, Some(false));
        let code = |err: SlackClientError| match err {
            SlackClientError::ApiError(e) => e.code,
            other => panic!("expected an API error, got {other:?}"),
        };
        let err = session
            .conversations_replies(&replies("1600000000.000001", Some(1)))
            .await
            .unwrap_err();
        assert_eq!(code(err), "thread_not_found");
        let err = session
            .conversations_replies(&SlackApiConversationsRepliesRequest::new(
                SlackChannelId("#general".into()),
                SlackTs(root.clone()),
            ))
            .await
            .unwrap_err();
        assert_eq!(code(err), "channel_not_found");
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.method == "conversations.replies")
                .count(),
            8,
            "every call is recorded"
        );
    }

    #[test]
    fn shown_text_renders_like_slack() {
        let message = |text: &str, blocks: Value| super::SlackMessage {
            channel: "C1".into(),
            ts: "1.000001".into(),
            thread_ts: None,
            text: text.into(),
            buttons: buttons(&blocks),
            blocks,
        };
        let plain = message(
            "a &lt;b&gt; &amp;lt; <!channel> <@U1> <@U2|bob> <#C9|general> \
             <https://e.x|docs> <https://e.x> <!subteam^S1> <!date^1|today> <oops",
            Value::Null,
        );
        assert_eq!(
            plain.shown_text(),
            "a <b> &lt; @channel @U1 @bob #general docs https://e.x @S1 today <oops"
        );
        let blocks = json!([
            {"type": "header", "text": {"type": "plain_text", "text": "Head: "}},
            {"type": "section", "text": {"type": "plain_text", "text": "<b> &lt; "}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "&lt;b&gt; "},
             "fields": [{"type": "mrkdwn", "text": "<!here>"}]},
            {"type": "context", "elements": [{"type": "image"}, {"type": "plain_text", "text": "!"}]},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Go"}, "action_id": "g"}
            ]},
        ]);
        let rich = message("fallback", blocks);
        assert_eq!(rich.shown_text(), "Head: <b> &lt; <b> @here!");
        assert_eq!(rich.buttons[0].label, "Go");
        assert_eq!(rich.buttons[0].value, "");
        let only_buttons = message("fallback &amp; more", json!([rich.blocks[4].clone()]));
        assert_eq!(only_buttons.shown_text(), "fallback & more");
    }

    #[tokio::test]
    async fn rate_limits_surface_as_retry_after() {
        let fake = FakeSlack::start(BOT, APP).await;
        let client = client(&fake);
        let session_token = token(BOT);
        let session = client.open_session(&session_token);
        fake.rate_limit_next("chat.postMessage", 7);
        let request = SlackApiChatPostMessageRequest::new(
            SlackChannelId("C1".into()),
            SlackMessageContent::new().with_text("one".into()),
        );
        let err = session.chat_post_message(&request).await.unwrap_err();
        match &err {
            SlackClientError::RateLimitError(e) => {
                assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
                assert_eq!(e.code.as_deref(), Some("ratelimited"));
            }
            other => panic!("expected a rate-limit error, got {other:?}"),
        }
        assert!(fake.messages("C1").is_empty());
        session.chat_post_message(&request).await.unwrap();
        assert_eq!(fake.messages("C1").len(), 1);
        let flags: Vec<bool> = fake.calls().iter().map(|c| c.rejected).collect();
        assert_eq!(flags, [true, false]);
        assert_eq!(fake.calls_to("chat.postMessage").len(), 1);
    }

    #[tokio::test]
    async fn tokens_methods_and_bodies_are_checked_like_slack() {
        let fake = FakeSlack::start(BOT, APP).await;
        let client = client(&fake);
        let api_error = |err: SlackClientError| match err {
            SlackClientError::ApiError(e) => e.code,
            other => panic!("expected an API error, got {other:?}"),
        };
        let wrong_token = token("xoxb-wrong");
        let wrong = client.open_session(&wrong_token);
        assert_eq!(
            api_error(wrong.auth_test().await.unwrap_err()),
            "invalid_auth"
        );
        let app_token = token(APP);
        let app = client.open_session(&app_token);
        assert_eq!(
            api_error(app.auth_test().await.unwrap_err()),
            "not_allowed_token_type"
        );
        let bot_token = token(BOT);
        let bot = client.open_session(&bot_token);
        let open = SlackApiAppsConnectionOpenRequest::new();
        assert_eq!(
            api_error(bot.apps_connections_open(&open).await.unwrap_err()),
            "not_allowed_token_type"
        );
        let url = app.apps_connections_open(&open).await.unwrap().url;
        assert!(url.0.as_str().starts_with("ws://127.0.0.1:"), "{url:?}");
        let empty = SlackApiChatPostMessageRequest::new(
            SlackChannelId("C1".into()),
            SlackMessageContent::new().with_text("  ".into()),
        );
        assert_eq!(
            api_error(bot.chat_post_message(&empty).await.unwrap_err()),
            "no_text"
        );
        let long = SlackBlock::Section(SlackSectionBlock::new().with_text(SlackBlockText::Plain(
            SlackBlockPlainText::new("x".repeat(3001)),
        )));
        let too_long = SlackApiChatPostMessageRequest::new(
            SlackChannelId("C1".into()),
            SlackMessageContent::new()
                .with_text("t".into())
                .with_blocks(vec![long]),
        );
        match bot.chat_post_message(&too_long).await.unwrap_err() {
            SlackClientError::ApiError(e) => {
                assert_eq!(e.code, "invalid_blocks");
                assert!(e.errors.unwrap()[0].contains("/blocks/0/text"));
            }
            other => panic!("{other:?}"),
        }
        let nowhere = SlackApiChatPostMessageRequest::new(
            SlackChannelId("#general".into()),
            SlackMessageContent::new().with_text("x".into()),
        );
        assert_eq!(
            api_error(bot.chat_post_message(&nowhere).await.unwrap_err()),
            "channel_not_found"
        );

        // Form-encoded calls and unknown methods, as other clients send them.
        let (status, _, body) = raw_post(
            &fake,
            "/api/chat.postMessage",
            "application/x-www-form-urlencoded",
            None,
            &format!(
                "token={BOT}&channel=C9&text=a+b%26c&blocks={}",
                form_encode(&[(String::new(), json!([{"type":"actions","elements":[
                    {"type":"button","text":{"type":"plain_text","text":"Go"},"action_id":"go","value":"1"}
                ]}]).to_string())])
                .trim_start_matches('=')
            ),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["ok"],
            json!(true)
        );
        let m = &fake.messages("C9")[0];
        assert_eq!(m.text, "a b&c");
        assert_eq!(m.buttons[0].label, "Go");
        assert_eq!(
            fake.calls_to("chat.postMessage").last().unwrap()["channel"],
            "C9"
        );
        let (status, _, body) =
            raw_post(&fake, "/api/chat.nope", "application/json", Some(BOT), "{}").await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "unknown_method"
        );
    }

    #[tokio::test]
    async fn signatures_match_slack_morphisms_verifier() {
        let body = serde_json::to_string(
            &FakeSlack::start(BOT, APP)
                .await
                .mention_event_body("C1", "U1001", "hello"),
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ts = i64::try_from(now).unwrap();
        let signature = FakeSlack::sign("s3cret", ts, body.as_bytes());
        assert!(signature.starts_with("v0="));
        let verifier = SlackEventSignatureVerifier::new(&SlackSigningSecret::new("s3cret".into()));
        verifier.verify(&signature, &body, &ts.to_string()).unwrap();
        assert!(
            verifier
                .verify(
                    &FakeSlack::sign("other", ts, body.as_bytes()),
                    &body,
                    &ts.to_string()
                )
                .is_err()
        );
        let SlackPushEvent::EventCallback(callback) = serde_json::from_str(&body).unwrap() else {
            panic!("{body}")
        };
        let SlackEventCallbackBody::AppMention(mention) = callback.event else {
            panic!("{body}")
        };
        assert_eq!(mention.content.text.as_deref(), Some("<@U0BOT> hello"));
    }

    #[tokio::test]
    async fn http_payload_builders_parse() {
        let fake = FakeSlack::start(BOT, APP).await;
        let client = client(&fake);
        let ts = post_prompt(&client, "C1", None).await;
        let click = fake.click_payload("U1001", "C1", &ts, "bc.deny", "v1.deny");
        let SlackInteractionEvent::BlockActions(click) = serde_json::from_value(click).unwrap()
        else {
            panic!("not block_actions")
        };
        assert_eq!(click.actions.unwrap()[0].value.as_deref(), Some("v1.deny"));
        let form = fake.slash_command_form("U1001", "C1", "status now");
        let command: SlackCommandEvent =
            serde_json::from_value(Value::Object(form_object(&form))).unwrap();
        assert_eq!(command.text.as_deref(), Some("status now"));
        assert_eq!(command.command.0, "/boxedclaw");
        let SlackPushEvent::EventCallback(dm) =
            serde_json::from_value(fake.dm_event_body("U1001", "yo")).unwrap()
        else {
            panic!("not an event callback")
        };
        assert!(matches!(dm.event, SlackEventCallbackBody::Message(_)));
        assert_eq!(fake.pending_envelopes(), 0, "HTTP payloads are not queued");
    }

    // ---- Socket Mode ----

    #[derive(Debug)]
    enum Got {
        Push(Box<SlackPushEventCallback>),
        Interaction(Box<SlackInteractionEvent>),
        Command(Box<SlackCommandEvent>),
    }

    struct TestState {
        tx: mpsc::UnboundedSender<Got>,
        /// A message "hold" waits on this before its callback returns, the first time only.
        hold: Arc<Notify>,
        held: AtomicBool,
    }

    async fn on_push(
        event: SlackPushEventCallback,
        _client: Arc<Client>,
        states: SlackClientEventsUserState,
    ) -> UserCallbackResult<()> {
        let (tx, hold) = {
            let states = states.read().await;
            let state = states.get_user_state::<TestState>().unwrap();
            let is_hold = matches!(&event.event, SlackEventCallbackBody::Message(m)
                if m.content.as_ref().and_then(|c| c.text.as_deref()) == Some("hold"));
            let hold = is_hold && !state.held.swap(true, Ordering::SeqCst);
            (state.tx.clone(), hold.then(|| state.hold.clone()))
        };
        let fail = matches!(&event.event, SlackEventCallbackBody::Message(m)
            if m.content.as_ref().and_then(|c| c.text.as_deref()) == Some("fail"));
        tx.send(Got::Push(Box::new(event))).unwrap();
        if let Some(hold) = hold {
            hold.notified().await;
        }
        if fail {
            return Err(Box::new(std::io::Error::other("refused by the test")));
        }
        Ok(())
    }

    async fn on_interaction(
        event: SlackInteractionEvent,
        _client: Arc<Client>,
        states: SlackClientEventsUserState,
    ) -> UserCallbackResult<()> {
        let states = states.read().await;
        let state = states.get_user_state::<TestState>().unwrap();
        state.tx.send(Got::Interaction(Box::new(event))).unwrap();
        Ok(())
    }

    async fn on_command(
        event: SlackCommandEvent,
        _client: Arc<Client>,
        states: SlackClientEventsUserState,
    ) -> UserCallbackResult<SlackCommandEventResponse> {
        let text = format!("got {}", event.text.clone().unwrap_or_default());
        let states = states.read().await;
        let state = states.get_user_state::<TestState>().unwrap();
        state.tx.send(Got::Command(Box::new(event))).unwrap();
        Ok(
            SlackCommandEventResponse::new(SlackMessageContent::new().with_text(text))
                .with_response_type(SlackMessageResponseType::Ephemeral),
        )
    }

    struct Listening {
        listener: SlackClientSocketModeListener<Connector>,
        client: Arc<Client>,
        rx: mpsc::UnboundedReceiver<Got>,
        hold: Arc<Notify>,
    }

    impl Listening {
        async fn next(&mut self) -> Got {
            tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("a callback in time")
                .expect("listener alive")
        }
    }

    async fn listen(fake: &FakeSlack) -> Listening {
        let client = client(fake);
        let (tx, rx) = mpsc::unbounded_channel();
        let hold = Arc::new(Notify::new());
        let state = TestState {
            tx,
            hold: hold.clone(),
            held: AtomicBool::new(false),
        };
        let environment = Arc::new(
            SlackClientEventsListenerEnvironment::new(client.clone()).with_user_state(state),
        );
        let callbacks = SlackSocketModeListenerCallbacks::new()
            .with_push_events(on_push)
            .with_interaction_events(on_interaction)
            .with_command_events(on_command);
        let config = SlackClientSocketModeConfig::new()
            .with_max_connections_count(1)
            .with_initial_backoff_in_seconds(0);
        let listener = SlackClientSocketModeListener::new(&config, environment, callbacks);
        listener.listen_for(&token(APP)).await.unwrap();
        listener.start().await;
        fake.wait_until(WAIT, "the first connection", |f| {
            (f.live_connections() == 1).then_some(())
        })
        .await;
        Listening {
            listener,
            client,
            rx,
            hold,
        }
    }

    fn push(got: Got) -> SlackPushEventCallback {
        match got {
            Got::Push(event) => *event,
            other => panic!("expected a push event, got {other:?}"),
        }
    }

    fn block_actions(got: Got) -> SlackInteractionBlockActionsEvent {
        match got {
            Got::Interaction(event) => match *event {
                SlackInteractionEvent::BlockActions(click) => click,
                other => panic!("expected block_actions, got {other:?}"),
            },
            other => panic!("expected an interaction, got {other:?}"),
        }
    }

    fn message(got: Got) -> SlackMessageEvent {
        let event = push(got);
        match event.event {
            SlackEventCallbackBody::Message(m) => m,
            other => panic!("expected a message event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn socket_mode_delivers_every_kind_of_envelope() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut l = listen(&fake).await;

        let ts = fake.dm("U1001", "hello");
        let dm = message(l.next().await);
        assert_eq!(dm.origin.ts.0, ts);
        assert_eq!(dm.origin.channel.unwrap().0, "DU1001");
        assert_eq!(dm.origin.channel_type.unwrap().0, "im");
        assert_eq!(dm.sender.user.unwrap().0, "U1001");
        assert_eq!(dm.content.unwrap().text.as_deref(), Some("hello"));

        let root = fake.mention("C1", "U1002", "do it");
        let first = push(l.next().await);
        let second = push(l.next().await);
        assert_ne!(first.event_id, second.event_id);
        assert_eq!(first.team_id.0, FakeSlack::TEAM);
        let SlackEventCallbackBody::AppMention(mention) = first.event else {
            panic!("{first:?}")
        };
        assert_eq!(mention.content.text.as_deref(), Some("<@U0BOT> do it"));
        assert_eq!(mention.origin.ts.0, root);
        assert_eq!(mention.channel.0, "C1");
        assert_eq!(mention.user.0, "U1002");
        let SlackEventCallbackBody::Message(copy) = second.event else {
            panic!("{second:?}")
        };
        assert_eq!(copy.origin.ts.0, root);
        assert_eq!(copy.origin.channel_type.unwrap().0, "channel");
        assert_eq!(copy.origin.thread_ts, None);

        let reply = fake.thread_message("C1", &root, "U1002", "more");
        let threaded = message(l.next().await);
        assert_eq!(threaded.origin.ts.0, reply);
        assert_eq!(threaded.origin.thread_ts.unwrap().0, root);

        let prompt = post_prompt(&l.client, "C1", Some(&root)).await;
        let click_id = fake.click("U1002", "C1", &prompt, "bc.approve", "v1.approve");
        let click = block_actions(l.next().await);
        assert_eq!(click.user.unwrap().id.0, "U1002");
        assert_eq!(click.channel.unwrap().id.0, "C1");
        let SlackInteractionActionContainer::Message(container) = &click.container else {
            panic!("{:?}", click.container)
        };
        assert_eq!(container.message_ts.0, prompt);
        let clicked = click.message.unwrap();
        assert_eq!(clicked.origin.thread_ts.unwrap().0, root);
        assert_eq!(clicked.content.blocks.unwrap().len(), 2);
        let action = &click.actions.unwrap()[0];
        assert_eq!(action.action_id.0, "bc.approve");
        assert_eq!(action.value.as_deref(), Some("v1.approve"));
        assert_eq!(action.block_id.as_ref().unwrap().0, "approval");

        // The response URL edits the clicked message, or answers the clicker alone.
        let response_url = click.response_url.unwrap();
        l.client
            .respond_to_event(
                &response_url,
                &SlackApiPostWebhookMessageRequest::new(
                    SlackMessageContent::new().with_text("not yours".into()),
                ),
            )
            .await
            .unwrap();
        l.client
            .respond_to_event(
                &response_url,
                &SlackApiPostWebhookMessageRequest::new(
                    SlackMessageContent::new().with_text("approved".into()),
                )
                .with_replace_original(true),
            )
            .await
            .unwrap();
        let shown = fake.messages("C1");
        assert_eq!(shown[0].text, "approved");
        assert!(shown[0].buttons.is_empty());
        assert_eq!(fake.response_posts().len(), 2);

        let slash_id = fake.slash_command("U1003", "C1", "status");
        let Got::Command(command) = l.next().await else {
            panic!("expected a command")
        };
        let command = *command;
        assert_eq!(command.command.0, "/boxedclaw");
        assert_eq!(command.text.as_deref(), Some("status"));
        assert_eq!(command.user_id.0, "U1003");
        assert_eq!(command.channel_id.0, "C1");
        assert_eq!(command.team_id.0, FakeSlack::TEAM);

        let acks = fake
            .wait_until(WAIT, "every envelope acknowledged", |f| {
                (f.pending_envelopes() == 0 && f.acks().len() == 6).then(|| f.acks())
            })
            .await;
        assert!(acks.iter().any(|(id, p)| *id == click_id && p.is_null()));
        let (_, reply) = acks.iter().find(|(id, _)| *id == slash_id).unwrap();
        assert_eq!(reply["text"], "got status");
        assert_eq!(
            fake.ephemerals(),
            [
                ("U1002".to_owned(), "not yours".to_owned()),
                ("U1003".to_owned(), "got status".to_owned()),
            ]
        );
        assert!(
            fake.sent_envelopes()
                .iter()
                .all(|e| e["retry_attempt"] == 0)
        );
        assert_eq!(fake.connections(), 1);
        l.listener.shutdown().await;
    }

    #[tokio::test]
    async fn the_listener_reconnects_after_a_drop_and_a_disconnect() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut l = listen(&fake).await;
        let dropped = std::time::Instant::now();
        fake.drop_connection();
        fake.wait_until(Duration::from_secs(30), "a reconnect after a drop", |f| {
            (f.connections() == 2 && f.live_connections() == 1).then_some(())
        })
        .await;
        let after_drop = dropped.elapsed();
        fake.dm("U1001", "after the drop");
        let m = message(l.next().await);
        assert_eq!(m.content.unwrap().text.as_deref(), Some("after the drop"));

        let asked = std::time::Instant::now();
        fake.send_disconnect();
        fake.wait_until(
            Duration::from_secs(30),
            "a reconnect after a disconnect",
            |f| (f.connections() == 3 && f.live_connections() == 1).then_some(()),
        )
        .await;
        let after_disconnect = asked.elapsed();
        fake.dm("U1001", "after the disconnect");
        let m = message(l.next().await);
        assert_eq!(
            m.content.unwrap().text.as_deref(),
            Some("after the disconnect")
        );
        eprintln!(
            "reconnected {after_drop:?} after a drop, {after_disconnect:?} after a disconnect"
        );
        l.listener.shutdown().await;
    }

    #[tokio::test]
    async fn an_envelope_unacknowledged_at_a_drop_is_delivered_again() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut l = listen(&fake).await;
        let envelope_of = |f: &FakeSlack, attempt: u64| {
            f.sent_envelopes()
                .into_iter()
                .find(|e| e["retry_attempt"] == attempt)
        };
        fake.dm("U1001", "hold");
        let first = push(l.next().await);
        // The callback is still running, so nothing is acknowledged yet.
        fake.drop_connection();
        fake.wait_until(WAIT, "the connection gone", |f| {
            (f.live_connections() == 0).then_some(())
        })
        .await;
        assert!(fake.acks().is_empty());
        l.hold.notify_one();
        let again = push(l.next().await);
        assert_eq!(again.event_id, first.event_id);
        fake.wait_until(WAIT, "the re-delivery acknowledged", |f| {
            (f.pending_envelopes() == 0).then_some(())
        })
        .await;
        let sent = envelope_of(&fake, 0).unwrap();
        let resent = envelope_of(&fake, 1).unwrap();
        assert_eq!(sent["envelope_id"], resent["envelope_id"]);
        assert_eq!(resent["retry_reason"], "timeout");
        let id = resent["envelope_id"].as_str().unwrap().to_owned();
        assert_eq!(fake.acks(), [(id, Value::Null)]);
        assert_eq!(fake.connections(), 2);
        l.listener.shutdown().await;
    }

    #[tokio::test]
    async fn a_failed_callback_leaves_the_envelope_unacknowledged() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut l = listen(&fake).await;
        fake.dm("U1001", "fail");
        let failed = push(l.next().await);
        fake.dm("U1001", "fine");
        message(l.next().await);
        fake.wait_until(WAIT, "the second envelope acknowledged", |f| {
            (f.acks().len() == 1).then_some(())
        })
        .await;
        assert_eq!(fake.pending_envelopes(), 1, "the failed one stays pending");
        fake.drop_connection();
        let again = push(l.next().await);
        assert_eq!(again.event_id, failed.event_id);
        l.listener.shutdown().await;
    }

    #[tokio::test]
    async fn envelopes_queued_while_offline_wait_for_a_connection() {
        let fake = FakeSlack::start(BOT, APP).await;
        fake.dm("U1001", "early");
        assert_eq!(fake.pending_envelopes(), 1);
        let mut l = listen(&fake).await;
        let m = message(l.next().await);
        assert_eq!(m.content.unwrap().text.as_deref(), Some("early"));
        let ts = fake.thread_mention("C1", "1700000000.000001", "U1002", "again");
        let SlackEventCallbackBody::AppMention(mention) = push(l.next().await).event else {
            panic!("expected app_mention")
        };
        assert_eq!(mention.origin.thread_ts.unwrap().0, "1700000000.000001");
        assert_eq!(mention.content.text.as_deref(), Some("<@U0BOT> again"));
        let copy = message(l.next().await);
        assert_eq!(copy.origin.ts.0, ts);
        assert_eq!(copy.origin.thread_ts.unwrap().0, "1700000000.000001");
        l.listener.shutdown().await;
    }

    #[tokio::test]
    async fn platform_fake_clicks_the_named_button() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut l = listen(&fake).await;
        let alice = fake.user_id(1);
        assert_eq!(alice, "U1001");
        fake.direct_message(&alice, "hello").await;
        let m = message(l.next().await);
        let channel = m.origin.channel.unwrap().0;
        let ts = post_prompt(&l.client, &channel, None).await;
        let conv =
            ConversationKey::new(Platform::Slack, Some(FakeSlack::TEAM), &channel, None).unwrap();
        let shown = fake.shown(&conv).await;
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].id, ts);
        assert_eq!(shown[0].buttons, ["Approve", "Deny"]);
        let threaded = ConversationKey::new(Platform::Slack, None, &channel, Some(&ts)).unwrap();
        assert!(fake.shown(&threaded).await.is_empty());
        let approval = ApprovalId::new("c0ffee000001".to_owned()).unwrap();
        PlatformFake::click(&*fake, &conv, &approval, &alice, false).await;
        let click = block_actions(l.next().await);
        let action = &click.actions.unwrap()[0];
        assert_eq!(action.action_id.0, "bc.deny");
        assert_eq!(action.value.as_deref(), Some("v1.deny"));
        assert_eq!(click.user.unwrap().id.0, alice);
        l.listener.shutdown().await;
    }

    #[tokio::test]
    async fn wait_until_returns_the_found_value() {
        let fake = FakeSlack::start(BOT, APP).await;
        let client = client(&fake);
        tokio::spawn(async move { post_prompt(&client, "C5", None).await });
        let text = fake
            .wait_until(WAIT, "a post", |f| {
                f.messages("C5").first().map(|m| m.text.clone())
            })
            .await;
        assert_eq!(text, "run `ls`? (c0ffee000001)");
    }
}
