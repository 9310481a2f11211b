//! A fake Discord for tests: the REST API and the gateway websocket on one server.
//!
//! [`FakeDiscord::start`] serves Discord's JSON on `127.0.0.1:0`: REST under `/api/v10/…`
//! and the gateway at `/gateway` (named by `GET /api/v10/gateway`), so the adapter runs its
//! real serenity client against it (`DISCORD_API_URL` = [`FakeDiscord::api_url`]). Tests make
//! users act (DMs, guild and thread messages, button clicks, slash commands) and inspect what
//! the bot did: every REST call ([`FakeDiscord::calls`]), its messages as users now see them
//! ([`FakeDiscord::messages`]), interaction answers and follow-ups.
//!
//! Gateway, as Discord does it: op 10 Hello → op 2 Identify (token checked, else close 4004)
//! → READY (seq 1) → dispatches with increasing `s`; op 1 → op 11; op 6 Resume with the
//! session id → the dispatches after the given seq are replayed, then RESUMED (an unknown
//! session gets op 9). Events injected while no connection is live are kept in the session and
//! replayed on resume, as Discord does; events injected before the bot's first Identify are
//! delivered right after its READY (a convenience: tests need not wait for the connection).
//! Intents are honoured: no guild messages without `GUILD_MESSAGES`, no DMs without
//! `DIRECT_MESSAGES`, and guild message content only with `MESSAGE_CONTENT` or when the bot
//! is mentioned.
//!
//! Fidelity notes, each matching Discord rather than convenience:
//! - payloads carry every field serenity 0.12.5's models require (its strict models drop an
//!   event whose payload does not parse, and the sequence with it);
//! - a thread started from a message has that message's id; starting a second one from the
//!   same message fails with code 160004; threads cannot be started inside threads (50024);
//! - content over 2000 characters, empty messages, bad components (label > 80, `custom_id`
//!   > 100 or repeated), and edits of others' messages are refused with Discord's codes;
//! - an interaction must be answered once, within 3 s (later: 10062 Unknown interaction);
//!   follow-ups and `@original` edits need that answer first;
//! - 429s carry `retry_after` in the body (fractional seconds) and `Retry-After` (whole
//!   seconds) as a header, and no `code` field, as Discord sends them;
//! - message text as users see it ([`BotMessage::text`]) is the content with Discord's markdown
//!   escapes removed (a backslash before ASCII punctuation, outside URLs).
//!
//! HTTP interactions: after [`FakeDiscord::use_interactions_endpoint`] (as after saving an
//! "Interactions Endpoint URL" in the Developer Portal) clicks and commands are no longer
//! dispatched on the websocket but POSTed to that URL, signed with the application's Ed25519
//! key ([`FakeDiscord::interactions_public_key`]) over the timestamp and the raw body; the
//! HTTP answer is taken as the interaction's first answer (the same rules as a callback), and
//! every exchange is kept ([`FakeDiscord::endpoint_answers`]). As with Discord, a follow-up
//! sent before that answer arrived is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use boxedclaw_channels::BoxFuture;
use boxedclaw_channels::conformance::{PlatformFake, Shown};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Discord's epoch (2015-01-01) in Unix milliseconds, for snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
/// Heartbeat interval announced in Hello.
const HEARTBEAT_MS: u64 = 5_000;
/// Discord's limit on message content, in characters.
const MAX_CONTENT: usize = 2000;
/// An interaction must be answered within this long.
const ANSWER_DEADLINE: Duration = Duration::from_secs(3);
/// Gateway intents, as Discord numbers them.
const GUILD_MESSAGES: u64 = 1 << 9;
const DIRECT_MESSAGES: u64 = 1 << 12;
const MESSAGE_CONTENT: u64 = 1 << 15;
/// Message flag: visible to the interaction's user only.
const EPHEMERAL: u64 = 1 << 6;
/// The seed of the application's interactions signing key (fixed: tests configure the
/// adapter with its public half).
const APPLICATION_KEY_SEED: [u8; 32] = [0x5d; 32];

/// One recorded REST call.
#[derive(Debug, Clone)]
pub struct Call {
    /// `GET`, `POST`, `PATCH`, `PUT`, …
    pub method: String,
    /// The path, e.g. `/api/v10/channels/1/messages` (interaction tokens included).
    pub path: String,
    /// The JSON body as sent (`null` when empty or not JSON).
    pub body: Value,
    /// Whether the call was answered with an error (429, 400, 401, 404, …).
    pub rejected: bool,
}

impl Call {
    /// `"METHOD /path"`, what [`FakeDiscord::rate_limit_next`] matches against.
    pub fn route(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A button on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    /// Its label.
    pub label: String,
    /// Its `custom_id`.
    pub custom_id: String,
    /// Whether it is disabled (shown, not clickable).
    pub disabled: bool,
}

/// A message the bot posted, as users now see it (after edits).
#[derive(Debug, Clone, PartialEq)]
pub struct BotMessage {
    /// Discord's id of the message.
    pub id: u64,
    /// The channel (or thread) it is in.
    pub channel_id: u64,
    /// Its content as sent (with the bot's markdown escapes).
    pub content: String,
    /// Its text as displayed.
    pub text: String,
    /// Its buttons, rows flattened.
    pub buttons: Vec<Button>,
    /// Message flags as sent (`SUPPRESS_EMBEDS` = 4).
    pub flags: u64,
    /// The `allowed_mentions` of the last create or edit that set it.
    pub allowed_mentions: Option<Value>,
}

/// The first answer to an interaction (`POST /interactions/{id}/{token}/callback`).
#[derive(Debug, Clone)]
pub struct InteractionResponse {
    /// The interaction answered.
    pub interaction_id: u64,
    /// The response type (4 message, 5 deferred message, 6 deferred update, 7 update).
    pub kind: u64,
    /// Its `data`, if any.
    pub data: Value,
    /// How long after the interaction was dispatched the answer came.
    pub after: Duration,
}

/// A follow-up message of an interaction (`POST /webhooks/{app}/{token}`).
#[derive(Debug, Clone)]
pub struct Followup {
    /// The interaction it follows.
    pub interaction_id: u64,
    /// Its content as sent.
    pub content: String,
    /// Its text as displayed.
    pub text: String,
    /// Its flags (`EPHEMERAL` = 64).
    pub flags: u64,
}

/// One request to the HTTP interactions endpoint and its answer.
#[derive(Debug, Clone)]
pub struct EndpointAnswer {
    /// The interaction it carried, when the fake sent it as Discord ([`FakeDiscord::click`],
    /// [`FakeDiscord::slash`]); `None` for [`FakeDiscord::post_to_endpoint`].
    pub interaction_id: Option<u64>,
    /// The body as sent (signed as these bytes).
    pub request: Vec<u8>,
    /// The signature timestamp sent (`X-Signature-Timestamp`).
    pub timestamp: Option<String>,
    /// The HTTP status of the answer (0 when the endpoint could not be reached).
    pub status: u16,
    /// The answer's JSON body (`null` when empty or not JSON).
    pub body: Value,
    /// Whether the answer was taken as the interaction's first answer (a 200 with a response
    /// valid for it, in time).
    pub accepted: bool,
}

/// One op 6 Resume the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The session the client resumed.
    pub session_id: String,
    /// The last sequence number it had seen.
    pub seq: u64,
    /// How many dispatches were replayed to it (0 when the session was unknown).
    pub replayed: usize,
}

/// An interaction's own response message (type 4, or type 5 edited via `@original`).
#[derive(Debug, Clone)]
pub struct OriginalResponse {
    /// Its text as displayed (empty while only deferred).
    pub text: String,
    /// Its flags (`EPHEMERAL` = 64).
    pub flags: u64,
    /// Whether it was edited after the first answer.
    pub edited: bool,
}

/// A fake Discord; see the [module docs](self).
pub struct FakeDiscord {
    inner: Arc<Inner>,
    server: tokio::task::AbortHandle,
}

struct Inner {
    token: String,
    addr: SocketAddr,
    state: Mutex<World>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dm { user: u64 },
    Text { guild: u64 },
    Thread { guild: u64, parent: u64, owner: u64 },
}

impl Kind {
    fn guild(self) -> Option<u64> {
        match self {
            Kind::Dm { .. } => None,
            Kind::Text { guild } | Kind::Thread { guild, .. } => Some(guild),
        }
    }
}

struct Msg {
    id: u64,
    channel: u64,
    author: u64,
    content: String,
    flags: u64,
    components: Value,
    allowed_mentions: Option<Value>,
    edited: bool,
    /// The thread started from this message.
    thread: Option<u64>,
}

struct Interaction {
    id: u64,
    token: String,
    /// 2 command, 3 component.
    kind: u64,
    message: Option<u64>,
    dispatched: Instant,
    response: Option<u64>,
    original: Option<OriginalResponse>,
}

enum Out {
    Text(String),
    Close(u16),
}

struct Session {
    id: String,
    intents: u64,
    seq: u64,
    /// Every dispatch of the session, for resumes.
    log: Vec<(u64, String)>,
}

#[derive(Default)]
struct Gateway {
    session: Option<Session>,
    /// The connection dispatches go to: (connection number, its outbox).
    live: Option<(u64, mpsc::UnboundedSender<Out>)>,
    connections: u64,
    /// Dispatches injected before the first Identify: sent after READY.
    backlog: Vec<(&'static str, Value)>,
    identified: Vec<u64>,
    resumes: Vec<Resume>,
    replay_extra: usize,
}

/// Everything the fake Discord knows.
#[derive(Default)]
struct World {
    last_snowflake: u64,
    channels: HashMap<u64, Kind>,
    dms: HashMap<u64, u64>,
    messages: Vec<Msg>,
    interactions: Vec<Interaction>,
    responses: Vec<InteractionResponse>,
    followups: Vec<Followup>,
    commands: Vec<Value>,
    /// Guild role ids each user holds (reported in interactions' `member.roles`).
    roles: HashMap<u64, Vec<u64>>,
    calls: Vec<Call>,
    /// Queued 429s: (route substring, calls to let through first, retry_after seconds).
    rate_limits: VecDeque<(String, usize, f64)>,
    gateway: Gateway,
    /// The HTTP interactions endpoint interactions are POSTed to instead of dispatched.
    endpoint: Option<String>,
    endpoint_answers: Vec<EndpointAnswer>,
}

/// An error answer: `{"message": …, "code": …}` with an HTTP status.
struct Failure {
    status: u16,
    code: u64,
    message: String,
}

impl Failure {
    fn new(status: u16, code: u64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn form(what: &str) -> Self {
        Self::new(400, 50035, format!("Invalid Form Body: {what}"))
    }
}

type Answer = Result<Option<Value>, Failure>;

impl FakeDiscord {
    /// The bot's user id.
    pub const BOT_ID: u64 = 1_100_000_000_000_000_001;
    /// The bot's application id (deliberately not its user id).
    pub const APPLICATION_ID: u64 = 1_100_000_000_000_000_002;
    /// The bot's username.
    pub const BOT_NAME: &'static str = "boxedclaw-test";

    /// Binds `127.0.0.1:0` and serves Discord for bot token `token` (any other gets 401 and
    /// gateway close 4004) on a spawned task, which stops when the fake is dropped.
    pub async fn start(token: &str) -> Arc<FakeDiscord> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Discord");
        let addr = listener.local_addr().expect("fake Discord address");
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            addr,
            state: Mutex::new(World::default()),
        });
        let app = Router::new()
            .route("/gateway", get(upgrade))
            .fallback(serve_rest)
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("fake Discord server stopped: {e}");
            }
        })
        .abort_handle();
        Arc::new(FakeDiscord { inner, server })
    }

    /// The URL to give the adapter (`DISCORD_API_URL`): `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.inner.world()
    }

    // ---- What users do ----

    /// User `user` writes `text` to the bot in their DM; returns the message id.
    pub fn dm(&self, user: u64, text: &str) -> u64 {
        let mut w = self.world();
        let channel = w.dm_channel(user);
        w.user_message(channel, user, text)
    }

    /// User `user` writes `text` in text channel `channel` of guild `guild`; returns the
    /// message id.
    pub fn guild_message(&self, guild: u64, channel: u64, user: u64, text: &str) -> u64 {
        let mut w = self.world();
        w.ensure(channel, Kind::Text { guild });
        w.user_message(channel, user, text)
    }

    /// User `user` writes `text` in thread `thread` of channel `parent` (a thread another user
    /// started, unless it exists already); returns the message id.
    pub fn thread_message(
        &self,
        guild: u64,
        parent: u64,
        thread: u64,
        user: u64,
        text: &str,
    ) -> u64 {
        let mut w = self.world();
        w.ensure(parent, Kind::Text { guild });
        w.ensure(
            thread,
            Kind::Thread {
                guild,
                parent,
                owner: user.wrapping_add(1),
            },
        );
        w.user_message(thread, user, text)
    }

    /// User `user` clicks a button of the bot's message `message_id` in `channel`, sending
    /// `custom_id` (any string: a modified client or a replay can send anything); returns
    /// the interaction id. Panics if the bot posted no such message there.
    pub fn click(&self, user: u64, channel: u64, message_id: u64, custom_id: &str) -> u64 {
        let mut w = self.world();
        let i = w
            .messages
            .iter()
            .position(|m| m.id == message_id && m.channel == channel && m.author == Self::BOT_ID)
            .unwrap_or_else(|| {
                panic!("click: the bot posted no message {message_id} in {channel}")
            });
        let message = w.message_json(&w.messages[i]);
        let data = json!({ "custom_id": custom_id, "component_type": 2 });
        let (id, post) = w.interaction(3, user, channel, Some(message_id), Some(message), data);
        drop(w);
        self.send_to_endpoint(id, post);
        id
    }

    /// Gives `user` the guild role `role` (in every guild of the fake): interactions in a
    /// guild then list it among the member's roles.
    pub fn give_role(&self, user: u64, role: u64) {
        self.world().roles.entry(user).or_default().push(role);
    }

    /// User `user` runs an application command in `channel` (of `guild`, or their DM when
    /// `guild` is `None`), typed as `text` (`"/status"`, `"/approve 0123"`): the first word
    /// names a registered command and the rest fills its first string option; with one
    /// registered command that does not match, the whole text (without `/`) fills its option,
    /// as `/boxedclaw command:<text>`. Returns the interaction id. Panics if no command is
    /// registered.
    pub fn slash(&self, user: u64, guild: Option<u64>, channel: u64, text: &str) -> u64 {
        let mut w = self.world();
        let channel = match guild {
            Some(guild) => {
                w.ensure(channel, Kind::Text { guild });
                channel
            }
            None => w.dm_channel(user),
        };
        let text = text.trim().trim_start_matches('/');
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let (command, value) = match w.commands.iter().find(|c| c["name"] == word) {
            Some(c) => (c.clone(), rest.trim().to_owned()),
            None if w.commands.len() == 1 => (w.commands[0].clone(), text.to_owned()),
            None => panic!(
                "slash: no registered command matches {text:?}: {:?}",
                w.commands
            ),
        };
        let option = command["options"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["type"] == 3))
            .map(|o| o["name"].clone());
        let options = match option {
            Some(name) if !value.is_empty() => json!([{ "name": name, "type": 3, "value": value }]),
            _ => json!([]),
        };
        let data = json!({
            "id": command["id"],
            "name": command["name"],
            "type": 1,
            "options": options,
        });
        let (id, post) = w.interaction(2, user, channel, None, None, data);
        drop(w);
        self.send_to_endpoint(id, post);
        id
    }

    // ---- The HTTP interactions endpoint ----

    /// The public half of the application's interactions signing key (what the Developer
    /// Portal shows as "Public Key"; `DISCORD_PUBLIC_KEY`).
    pub fn interactions_public_key() -> [u8; 32] {
        SigningKey::from_bytes(&APPLICATION_KEY_SEED)
            .verifying_key()
            .to_bytes()
    }

    /// Discord's `X-Signature-Ed25519` for `timestamp` and `body`: the hex Ed25519 signature,
    /// by the application's key, of the timestamp bytes followed by the body bytes.
    pub fn sign(timestamp: &str, body: &[u8]) -> String {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        hex::encode(
            SigningKey::from_bytes(&APPLICATION_KEY_SEED)
                .sign(&message)
                .to_bytes(),
        )
    }

    /// From now on clicks and commands are POSTed, signed, to `url` (the adapter's
    /// interactions route on its HTTP server) instead of being dispatched on the websocket.
    /// They are sent from a task of their own; wait for their [`FakeDiscord::endpoint_answers`].
    pub fn use_interactions_endpoint(&self, url: &str) {
        self.world().endpoint = Some(url.to_owned());
    }

    /// Every request made to the interactions endpoint with its answer, in the order answered.
    pub fn endpoint_answers(&self) -> Vec<EndpointAnswer> {
        self.world().endpoint_answers.clone()
    }

    /// Sends `body` to the interactions endpoint with the given `X-Signature-Timestamp` and
    /// `X-Signature-Ed25519` (each left out when `None`), as anyone on the internet could:
    /// probes, forgeries, replays. The answer is recorded and returned; it answers no
    /// interaction. Panics without an endpoint.
    pub async fn post_to_endpoint(
        &self,
        body: &[u8],
        timestamp: Option<&str>,
        signature: Option<&str>,
    ) -> EndpointAnswer {
        let url = self
            .world()
            .endpoint
            .clone()
            .expect("post_to_endpoint: call use_interactions_endpoint first");
        let (status, answer) = post_signed(&url, body, timestamp, signature).await;
        let answer = EndpointAnswer {
            interaction_id: None,
            request: body.to_vec(),
            timestamp: timestamp.map(str::to_owned),
            status,
            body: answer,
            accepted: false,
        };
        self.world().endpoint_answers.push(answer.clone());
        answer
    }

    /// Sends an interaction to the endpoint as Discord does, in a task of its own, and takes
    /// the answer as the interaction's first answer.
    fn send_to_endpoint(&self, id: u64, post: Option<(String, Value)>) {
        let Some((url, payload)) = post else { return };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let body = payload.to_string().into_bytes();
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            let signature = FakeDiscord::sign(&timestamp, &body);
            let (status, answer) =
                post_signed(&url, &body, Some(&timestamp), Some(&signature)).await;
            let mut w = inner.world();
            let token = w
                .interactions
                .iter()
                .find(|i| i.id == id)
                .map(|i| i.token.clone())
                .unwrap_or_default();
            let accepted = status == 200 && w.callback(id, &token, &answer).is_ok();
            w.endpoint_answers.push(EndpointAnswer {
                interaction_id: Some(id),
                request: body,
                timestamp: Some(timestamp),
                status,
                body: answer,
                accepted,
            });
        });
    }

    // ---- Inspection ----

    /// Every REST call the bot made, in the order received.
    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// Bodies of the accepted calls whose `"METHOD /path"` contains `route`.
    pub fn calls_to(&self, route: &str) -> Vec<Value> {
        self.world()
            .calls
            .iter()
            .filter(|c| !c.rejected && c.route().contains(route))
            .map(|c| c.body.clone())
            .collect()
    }

    /// The bot's messages in `channel` (a channel, thread or DM), in the order posted, as
    /// currently shown.
    pub fn messages(&self, channel: u64) -> Vec<BotMessage> {
        let w = self.world();
        w.messages
            .iter()
            .filter(|m| m.channel == channel && m.author == Self::BOT_ID)
            .map(bot_message)
            .collect()
    }

    /// The DM channel of `user`, once they wrote to the bot (or the bot opened it).
    pub fn dm_channel(&self, user: u64) -> Option<u64> {
        self.world().dms.get(&user).copied()
    }

    /// The thread started from message `message`, if any.
    pub fn thread_of(&self, message: u64) -> Option<u64> {
        self.world()
            .messages
            .iter()
            .find(|m| m.id == message)
            .and_then(|m| m.thread)
    }

    /// First answers to interactions, in the order received.
    pub fn interaction_responses(&self) -> Vec<InteractionResponse> {
        self.world().responses.clone()
    }

    /// Interaction follow-up messages, in the order received.
    pub fn followups(&self) -> Vec<Followup> {
        self.world().followups.clone()
    }

    /// The response message of interaction `interaction`, if it has one.
    pub fn original_response(&self, interaction: u64) -> Option<OriginalResponse> {
        self.world()
            .interactions
            .iter()
            .find(|i| i.id == interaction)
            .and_then(|i| i.original.clone())
    }

    /// The registered application commands.
    pub fn commands(&self) -> Vec<Value> {
        self.world().commands.clone()
    }

    /// The intents of every Identify, in order (one per new session).
    pub fn identifies(&self) -> Vec<u64> {
        self.world().gateway.identified.clone()
    }

    /// Every Resume, in order.
    pub fn resumes(&self) -> Vec<Resume> {
        self.world().gateway.resumes.clone()
    }

    /// Whether a gateway connection is live (identified or resumed, not dropped).
    pub fn connected(&self) -> bool {
        self.world().gateway.live.is_some()
    }

    /// Calls `f` every 10 ms until it returns `Some`, and returns that. Panics after `timeout`,
    /// naming `what` and listing every call the bot made.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&FakeDiscord) -> Option<T>,
    ) -> T {
        boxedclaw_channels::fake::poll_until(timeout, what, || f(self), || self.dump()).await
    }

    fn dump(&self) -> String {
        let calls = self.calls();
        if calls.is_empty() {
            return "  (none)".to_owned();
        }
        calls
            .iter()
            .map(|c| {
                let flag = if c.rejected { " [rejected]" } else { "" };
                format!("  {}{flag} {}", c.route(), c.body)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    // ---- Failure injection ----

    /// Answers the next call whose `"METHOD /path"` contains `route` like Discord's rate
    /// limit: HTTP 429, `retry_after` in the body, `Retry-After` header. That call is recorded
    /// as rejected and has no effect. Repeated calls queue several 429s.
    pub fn rate_limit_next(&self, route: &str, retry_after_secs: f64) {
        self.rate_limit_after(route, 0, retry_after_secs);
    }

    /// Like [`FakeDiscord::rate_limit_next`], but `after` more matching calls succeed first:
    /// for failing the middle of a multi-message reply.
    pub fn rate_limit_after(&self, route: &str, after: usize, retry_after_secs: f64) {
        self.world()
            .rate_limits
            .push_back((route.to_owned(), after, retry_after_secs));
    }

    /// Closes the live gateway connection with code 4000 (as Discord does on its own
    /// errors); the client is expected to resume. Events injected until then are replayed.
    pub fn drop_connection(&self) {
        let mut w = self.world();
        if let Some((_, tx)) = w.gateway.live.take() {
            let _ = tx.send(Out::Close(4000));
        }
    }

    /// Sends op 7 Reconnect on the live connection; the client is expected to resume on a
    /// new one.
    pub fn request_reconnect(&self) {
        let mut w = self.world();
        if let Some((_, tx)) = w.gateway.live.take() {
            let _ = tx.send(Out::Text(json!({ "op": 7, "d": null }).to_string()));
        }
    }

    /// Makes the next resume also replay the `n` dispatches before the client's sequence
    /// number: re-deliveries the adapter must recognise.
    pub fn replay_on_resume(&self, n: usize) {
        self.world().gateway.replay_extra = n;
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.server.abort();
        if let Some((_, tx)) = self.world().gateway.live.take() {
            let _ = tx.send(Out::Close(1001));
        }
    }
}

impl Inner {
    fn world(&self) -> MutexGuard<'_, World> {
        // A test that panicked while holding the lock must not hide the original failure.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn timestamp() -> String {
    serenity::model::Timestamp::now().to_string()
}

fn user_json(id: u64) -> Value {
    if id == FakeDiscord::BOT_ID {
        return json!({
            "id": id.to_string(),
            "username": FakeDiscord::BOT_NAME,
            "discriminator": "0",
            "global_name": null,
            "avatar": null,
            "bot": true,
        });
    }
    json!({
        "id": id.to_string(),
        "username": format!("user{id}"),
        "discriminator": "0",
        "global_name": format!("User {id}"),
        "avatar": null,
    })
}

fn member_json(user: u64, roles: &[u64]) -> Value {
    let roles: Vec<String> = roles.iter().map(u64::to_string).collect();
    json!({
        "user": user_json(user),
        "roles": roles,
        "joined_at": timestamp(),
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "permissions": "2248473465835073",
    })
}

/// User ids mentioned as `<@id>` / `<@!id>` in `text`.
fn mentioned(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("<@") {
        rest = &rest[i + 2..];
        let digits = rest.trim_start_matches('!');
        let end = digits.find('>').unwrap_or(0);
        if let Ok(id) = digits[..end].parse::<u64>()
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

fn buttons(components: &Value) -> Vec<Button> {
    components
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["type"] == 2)
        .map(|c| Button {
            label: c["label"].as_str().unwrap_or("").to_owned(),
            custom_id: c["custom_id"].as_str().unwrap_or("").to_owned(),
            disabled: c["disabled"].as_bool().unwrap_or(false),
        })
        .collect()
}

fn bot_message(m: &Msg) -> BotMessage {
    BotMessage {
        id: m.id,
        channel_id: m.channel,
        content: m.content.clone(),
        text: crate::text::displayed(&m.content),
        buttons: buttons(&m.components),
        flags: m.flags,
        allowed_mentions: m.allowed_mentions.clone(),
    }
}

/// Checks components as Discord does (action rows of at most 5 buttons; labels ≤ 80
/// characters; `custom_id` 1–100 characters, unique in the message).
fn check_components(components: &Value) -> Result<(), Failure> {
    let rows = components
        .as_array()
        .ok_or_else(|| Failure::form("components must be an array"))?;
    if rows.len() > 5 {
        return Err(Failure::form("at most 5 action rows"));
    }
    let mut ids = Vec::new();
    for row in rows {
        let inner = row["components"].as_array();
        if row["type"] != 1 || inner.is_none_or(|c| c.is_empty() || c.len() > 5) {
            return Err(Failure::form("an action row holds 1 to 5 components"));
        }
        for c in inner.into_iter().flatten() {
            if c["type"] != 2 {
                return Err(Failure::form("only buttons are supported by the fake"));
            }
            let style = c["style"].as_u64().unwrap_or(0);
            if !(1..=4).contains(&style) {
                return Err(Failure::form("button style must be 1 to 4 here"));
            }
            let label = c["label"].as_str().unwrap_or("");
            let id = c["custom_id"].as_str().unwrap_or("");
            if label.chars().count() > 80 || id.is_empty() || id.chars().count() > 100 {
                return Err(Failure::form("button label or custom_id too long or empty"));
            }
            if ids.contains(&id) {
                return Err(Failure::form("custom_id must be unique in a message"));
            }
            ids.push(id);
        }
    }
    Ok(())
}

fn check_content(content: &str) -> Result<(), Failure> {
    if content.chars().count() > MAX_CONTENT {
        return Err(Failure::form("content: Must be 2000 or fewer in length."));
    }
    Ok(())
}

impl World {
    fn snowflake(&mut self) -> u64 {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(DISCORD_EPOCH_MS);
        let id = (ms << 22).max(self.last_snowflake + 1);
        self.last_snowflake = id;
        id
    }

    fn ensure(&mut self, channel: u64, kind: Kind) {
        self.channels.entry(channel).or_insert(kind);
    }

    fn dm_channel(&mut self, user: u64) -> u64 {
        if let Some(&c) = self.dms.get(&user) {
            return c;
        }
        let c = self.snowflake();
        self.dms.insert(user, c);
        self.channels.insert(c, Kind::Dm { user });
        c
    }

    fn channel_json(&self, id: u64) -> Option<Value> {
        let kind = *self.channels.get(&id)?;
        Some(match kind {
            Kind::Dm { user } => json!({
                "id": id.to_string(),
                "type": 1,
                "last_message_id": null,
                "recipients": [user_json(user)],
            }),
            Kind::Text { guild } => json!({
                "id": id.to_string(),
                "type": 0,
                "guild_id": guild.to_string(),
                "name": format!("channel-{id}"),
                "position": 0,
                "permission_overwrites": [],
                "nsfw": false,
                "parent_id": null,
                "topic": null,
            }),
            Kind::Thread {
                guild,
                parent,
                owner,
            } => json!({
                "id": id.to_string(),
                "type": 11,
                "guild_id": guild.to_string(),
                "parent_id": parent.to_string(),
                "owner_id": owner.to_string(),
                "name": format!("thread-{id}"),
                "message_count": 0,
                "member_count": 1,
                "rate_limit_per_user": 0,
                "flags": 0,
                "thread_metadata": {
                    "archived": false,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": timestamp(),
                    "locked": false,
                    "create_timestamp": timestamp(),
                },
            }),
        })
    }

    /// The interaction's `channel`: a partial channel naming a thread's parent.
    fn partial_channel_json(&self, id: u64) -> Value {
        match self.channels.get(&id) {
            Some(Kind::Dm { .. }) => json!({ "id": id.to_string(), "type": 1 }),
            Some(Kind::Thread { parent, .. }) => json!({
                "id": id.to_string(),
                "type": 11,
                "name": format!("thread-{id}"),
                "parent_id": parent.to_string(),
            }),
            _ => json!({ "id": id.to_string(), "type": 0, "name": format!("channel-{id}") }),
        }
    }

    fn message_json(&self, m: &Msg) -> Value {
        let kind = self.channels.get(&m.channel).copied();
        let mentions: Vec<Value> = mentioned(&m.content).into_iter().map(user_json).collect();
        let mut v = json!({
            "id": m.id.to_string(),
            "channel_id": m.channel.to_string(),
            "author": user_json(m.author),
            "content": m.content,
            "timestamp": timestamp(),
            "edited_timestamp": if m.edited { Value::from(timestamp()) } else { Value::Null },
            "tts": false,
            "mention_everyone": false,
            "mentions": mentions,
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": false,
            "type": 0,
            "flags": m.flags,
            "components": m.components,
        });
        if let Some(guild) = kind.and_then(Kind::guild) {
            v["guild_id"] = json!(guild.to_string());
        }
        if let Some(Kind::Thread { .. }) = kind {
            v["position"] = json!(0);
        }
        v
    }

    fn find_message(&self, channel: u64, id: u64) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| m.id == id && m.channel == channel)
    }

    fn user_message(&mut self, channel: u64, user: u64, text: &str) -> u64 {
        let id = self.snowflake();
        let msg = Msg {
            id,
            channel,
            author: user,
            content: text.to_owned(),
            flags: 0,
            components: json!([]),
            allowed_mentions: None,
            edited: false,
            thread: None,
        };
        let payload = self.message_json(&msg);
        self.messages.push(msg);
        self.dispatch("MESSAGE_CREATE", payload);
        id
    }

    /// Creates an interaction; returns its id, and the endpoint and payload to POST when
    /// interactions go to an HTTP endpoint (else it was dispatched on the websocket).
    fn interaction(
        &mut self,
        kind: u64,
        user: u64,
        channel: u64,
        message_id: Option<u64>,
        message: Option<Value>,
        data: Value,
    ) -> (u64, Option<(String, Value)>) {
        let id = self.snowflake();
        let token = format!("aW50ZXJhY3Rpb24.{id:x}.fake-token");
        let mut payload = json!({
            "id": id.to_string(),
            "application_id": FakeDiscord::APPLICATION_ID.to_string(),
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": channel.to_string(),
            "channel": self.partial_channel_json(channel),
            "data": data,
            "locale": "en-US",
            "entitlements": [],
            "app_permissions": "2248473465835073",
            "attachment_size_limit": 10_485_760,
        });
        match self.channels.get(&channel).copied().and_then(Kind::guild) {
            Some(guild) => {
                payload["guild_id"] = json!(guild.to_string());
                payload["guild_locale"] = json!("en-US");
                let roles = self.roles.get(&user).map_or(&[][..], Vec::as_slice);
                payload["member"] = member_json(user, roles);
                payload["context"] = json!(0);
            }
            None => {
                payload["user"] = user_json(user);
                payload["context"] = json!(1);
            }
        }
        if let Some(m) = message {
            payload["message"] = m;
        }
        self.interactions.push(Interaction {
            id,
            token,
            kind,
            message: message_id,
            dispatched: Instant::now(),
            response: None,
            original: None,
        });
        if let Some(url) = &self.endpoint {
            return (id, Some((url.clone(), payload)));
        }
        self.dispatch("INTERACTION_CREATE", payload);
        (id, None)
    }

    /// Sends (or keeps, while disconnected) one dispatch of the current session.
    fn dispatch(&mut self, event: &'static str, payload: Value) {
        let Some(session) = self.gateway.session.as_mut() else {
            self.gateway.backlog.push((event, payload));
            return;
        };
        let payload = match visible(event, payload, session.intents) {
            Some(p) => p,
            None => return,
        };
        session.seq += 1;
        let frame = json!({ "op": 0, "t": event, "s": session.seq, "d": payload }).to_string();
        session.log.push((session.seq, frame.clone()));
        if let Some((_, tx)) = &self.gateway.live {
            let _ = tx.send(Out::Text(frame));
        }
    }

    /// Looks up an interaction by its token (webhook routes) or id and token (callbacks).
    fn interaction_by_token(&mut self, token: &str) -> Option<&mut Interaction> {
        self.interactions.iter_mut().find(|i| i.token == token)
    }
}

/// Whether a JSON id (a string, as Discord sends ids) is the bot's.
fn is_bot(id: &Value) -> bool {
    id.as_str().and_then(|s| s.parse::<u64>().ok()) == Some(FakeDiscord::BOT_ID)
}

/// The payload as a bot with `intents` receives it, or `None` when it would not receive it.
fn visible(event: &str, mut payload: Value, intents: u64) -> Option<Value> {
    if event != "MESSAGE_CREATE" {
        return Some(payload);
    }
    let in_guild = payload.get("guild_id").is_some();
    let needed = if in_guild {
        GUILD_MESSAGES
    } else {
        DIRECT_MESSAGES
    };
    if intents & needed == 0 {
        return None;
    }
    let mentions_bot = payload["mentions"]
        .as_array()
        .is_some_and(|m| m.iter().any(|u| is_bot(&u["id"])));
    let own = is_bot(&payload["author"]["id"]);
    if in_guild && intents & MESSAGE_CONTENT == 0 && !mentions_bot && !own {
        payload["content"] = json!("");
    }
    Some(payload)
}

/// POSTs `body` to `url` with Discord's signature headers; the status (0 when unreachable)
/// and the JSON answer.
async fn post_signed(
    url: &str,
    body: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    if let Some(t) = timestamp {
        request = request.header("x-signature-timestamp", t);
    }
    if let Some(s) = signature {
        request = request.header("x-signature-ed25519", s);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
        Err(_) => (0, Value::Null),
    }
}

// ---- REST ----

fn failure_response(f: &Failure) -> Response {
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(json!({ "message": f.message, "code": f.code })),
    )
        .into_response()
}

async fn serve_rest(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let mut call = Call {
        method: method.as_str().to_owned(),
        path: path.clone(),
        body: body.clone(),
        rejected: false,
    };
    let route = call.route();
    let mut w = inner.world();
    if let Some(wait) = take_rate_limit(&mut w, &route) {
        call.rejected = true;
        w.calls.push(call);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (
                    header::RETRY_AFTER,
                    format!("{}", wait.ceil().max(0.0) as u64),
                ),
                (
                    header::HeaderName::from_static("x-ratelimit-scope"),
                    "user".to_owned(),
                ),
            ],
            axum::Json(json!({
                "message": "You are being rate limited.",
                "retry_after": wait,
                "global": false,
            })),
        )
            .into_response();
    }
    let Some(rest) = path.strip_prefix("/api/v10/") else {
        call.rejected = true;
        w.calls.push(call);
        return failure_response(&Failure::new(404, 0, "404: Not Found"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    // Interaction callbacks and webhooks are authorized by their token; everything else by
    // the bot token.
    let token_routes = matches!(segments.first(), Some(&"interactions" | &"webhooks"));
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authorized = presented == format!("Bot {}", inner.token);
    let answer = if !token_routes && !authorized {
        Err(Failure::new(401, 0, "401: Unauthorized"))
    } else {
        w.route(&inner, &method, &segments, &body)
    };
    call.rejected = answer.is_err();
    w.calls.push(call);
    match answer {
        Ok(Some(v)) => (StatusCode::OK, axum::Json(v)).into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(f) => failure_response(&f),
    }
}

fn take_rate_limit(w: &mut World, route: &str) -> Option<f64> {
    let i = w
        .rate_limits
        .iter()
        .position(|(needle, _, _)| route.contains(needle.as_str()))?;
    let entry = &mut w.rate_limits[i];
    if entry.1 > 0 {
        entry.1 -= 1;
        return None;
    }
    w.rate_limits.remove(i).map(|(_, _, wait)| wait)
}

fn num(s: &str) -> Result<u64, Failure> {
    s.parse()
        .map_err(|_| Failure::new(404, 0, "404: Not Found"))
}

impl World {
    fn route(&mut self, inner: &Inner, method: &Method, seg: &[&str], body: &Value) -> Answer {
        let m = method.as_str();
        match (m, seg) {
            ("GET", ["gateway"]) => Ok(Some(
                json!({ "url": format!("ws://{}/gateway", inner.addr) }),
            )),
            ("GET", ["users", "@me"]) => Ok(Some(user_json(FakeDiscord::BOT_ID))),
            ("GET", ["oauth2", "applications", "@me"]) => Ok(Some(json!({
                "id": FakeDiscord::APPLICATION_ID.to_string(),
                "name": FakeDiscord::BOT_NAME,
                "icon": null,
                "description": "",
                "bot_public": true,
                "bot_require_code_grant": false,
                "verify_key": "00",
                "flags": 0,
                "bot": user_json(FakeDiscord::BOT_ID),
            }))),
            ("POST", ["users", "@me", "channels"]) => {
                let user = body["recipient_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| body["recipient_id"].as_u64())
                    .ok_or_else(|| Failure::form("recipient_id"))?;
                let channel = self.dm_channel(user);
                Ok(self.channel_json(channel))
            }
            ("GET", ["channels", c]) => self
                .channel_json(num(c)?)
                .map(Some)
                .ok_or_else(|| Failure::new(404, 10003, "Unknown Channel")),
            ("POST", ["channels", c, "typing"]) => {
                self.known_channel(num(c)?)?;
                Ok(None)
            }
            ("POST", ["channels", c, "messages"]) => self.create_message(num(c)?, body),
            ("PATCH", ["channels", c, "messages", id]) => {
                self.edit_message(num(c)?, num(id)?, body)
            }
            ("POST", ["channels", c, "messages", id, "threads"]) => {
                self.start_thread(num(c)?, num(id)?, body)
            }
            ("POST", ["interactions", id, token, "callback"]) => {
                self.callback(num(id)?, token, body)
            }
            ("POST", ["webhooks", app, token]) => {
                self.check_app(app)?;
                self.followup(token, body)
            }
            ("PATCH", ["webhooks", app, token, "messages", "@original"]) => {
                self.check_app(app)?;
                self.edit_original(token, body)
            }
            ("PUT", ["applications", app, "commands"]) => {
                self.check_app(app)?;
                self.set_commands(body)
            }
            ("GET", ["applications", app, "commands"]) => {
                self.check_app(app)?;
                Ok(Some(Value::Array(self.commands.clone())))
            }
            _ => Err(Failure::new(404, 0, "404: Not Found")),
        }
    }

    fn check_app(&self, app: &str) -> Result<(), Failure> {
        if num(app)? == FakeDiscord::APPLICATION_ID {
            Ok(())
        } else {
            Err(Failure::new(404, 10002, "Unknown Application"))
        }
    }

    fn known_channel(&self, channel: u64) -> Result<Kind, Failure> {
        self.channels
            .get(&channel)
            .copied()
            .ok_or_else(|| Failure::new(404, 10003, "Unknown Channel"))
    }

    fn create_message(&mut self, channel: u64, body: &Value) -> Answer {
        self.known_channel(channel)?;
        let content = body["content"].as_str().unwrap_or("").to_owned();
        check_content(&content)?;
        let components = body.get("components").cloned().unwrap_or(json!([]));
        check_components(&components)?;
        if content.trim().is_empty() && components.as_array().is_none_or(Vec::is_empty) {
            return Err(Failure::new(400, 50006, "Cannot send an empty message"));
        }
        let id = self.snowflake();
        let msg = Msg {
            id,
            channel,
            author: FakeDiscord::BOT_ID,
            content,
            flags: body["flags"].as_u64().unwrap_or(0),
            components,
            allowed_mentions: body.get("allowed_mentions").cloned(),
            edited: false,
            thread: None,
        };
        let json = self.message_json(&msg);
        self.messages.push(msg);
        // Discord dispatches the bot's own messages to it too.
        self.dispatch("MESSAGE_CREATE", json.clone());
        Ok(Some(json))
    }

    fn edit_message(&mut self, channel: u64, id: u64, body: &Value) -> Answer {
        self.known_channel(channel)?;
        let i = self
            .find_message(channel, id)
            .ok_or_else(|| Failure::new(404, 10008, "Unknown Message"))?;
        if self.messages[i].author != FakeDiscord::BOT_ID {
            return Err(Failure::new(
                403,
                50005,
                "Cannot edit a message authored by another user",
            ));
        }
        self.apply_edit(i, body)?;
        Ok(Some(self.message_json(&self.messages[i])))
    }

    fn apply_edit(&mut self, i: usize, body: &Value) -> Result<(), Failure> {
        if let Some(content) = body.get("content").and_then(Value::as_str) {
            check_content(content)?;
        }
        if let Some(c) = body.get("components") {
            check_components(c)?;
        }
        let m = &mut self.messages[i];
        if let Some(content) = body.get("content").and_then(Value::as_str) {
            m.content = content.to_owned();
        }
        if let Some(c) = body.get("components") {
            m.components = c.clone();
        }
        if let Some(f) = body.get("flags").and_then(Value::as_u64) {
            m.flags = f;
        }
        if let Some(a) = body.get("allowed_mentions") {
            m.allowed_mentions = Some(a.clone());
        }
        m.edited = true;
        Ok(())
    }

    fn start_thread(&mut self, channel: u64, message: u64, body: &Value) -> Answer {
        let Kind::Text { guild } = self.known_channel(channel)? else {
            return Err(Failure::new(
                400,
                50024,
                "Cannot execute action on this channel type",
            ));
        };
        let i = self
            .find_message(channel, message)
            .ok_or_else(|| Failure::new(404, 10008, "Unknown Message"))?;
        if self.messages[i].thread.is_some() {
            return Err(Failure::new(
                400,
                160_004,
                "A thread has already been created for this message",
            ));
        }
        let name = body["name"].as_str().unwrap_or("");
        if name.trim().is_empty() || name.chars().count() > 100 {
            return Err(Failure::form("name: 1 to 100 characters"));
        }
        // Discord gives a thread started from a message that message's id.
        let thread = message;
        self.messages[i].thread = Some(thread);
        self.channels.insert(
            thread,
            Kind::Thread {
                guild,
                parent: channel,
                owner: FakeDiscord::BOT_ID,
            },
        );
        Ok(self.channel_json(thread))
    }

    fn callback(&mut self, id: u64, token: &str, body: &Value) -> Answer {
        let kind = body["type"].as_u64().unwrap_or(0);
        let data = body.get("data").cloned().unwrap_or(Value::Null);
        let content = data["content"].as_str().unwrap_or("").to_owned();
        check_content(&content)?;
        let unknown = || Failure::new(404, 10062, "Unknown interaction");
        let i = self
            .interactions
            .iter()
            .position(|i| i.id == id && i.token == token)
            .ok_or_else(unknown)?;
        let it = &self.interactions[i];
        if it.response.is_some() {
            return Err(Failure::new(
                400,
                40060,
                "Interaction has already been acknowledged.",
            ));
        }
        let after = it.dispatched.elapsed();
        if after > ANSWER_DEADLINE {
            return Err(unknown());
        }
        let allowed: &[u64] = if it.kind == 3 { &[4, 5, 6, 7] } else { &[4, 5] };
        if !allowed.contains(&kind) {
            return Err(Failure::form("type: not valid for this interaction"));
        }
        let message = it.message;
        let flags = data["flags"].as_u64().unwrap_or(0);
        let it = &mut self.interactions[i];
        it.response = Some(kind);
        match kind {
            4 => {
                it.original = Some(OriginalResponse {
                    text: crate::text::displayed(&content),
                    flags,
                    edited: false,
                });
            }
            5 => {
                it.original = Some(OriginalResponse {
                    text: String::new(),
                    flags,
                    edited: false,
                });
            }
            7 => {
                if let Some(m) = message {
                    let j = self
                        .messages
                        .iter()
                        .position(|x| x.id == m)
                        .ok_or_else(unknown)?;
                    self.apply_edit(j, &data)?;
                }
            }
            _ => {}
        }
        self.responses.push(InteractionResponse {
            interaction_id: id,
            kind,
            data,
            after,
        });
        Ok(None)
    }

    fn edit_original(&mut self, token: &str, body: &Value) -> Answer {
        let unknown = || Failure::new(404, 10015, "Unknown Webhook");
        let it = self.interaction_by_token(token).ok_or_else(unknown)?;
        let (response, message) = (it.response, it.message);
        match response {
            None => Err(unknown()),
            // A component interaction's original message is the message clicked.
            Some(6 | 7) => {
                let m = message.ok_or_else(unknown)?;
                let j = self
                    .messages
                    .iter()
                    .position(|x| x.id == m)
                    .ok_or_else(unknown)?;
                self.apply_edit(j, body)?;
                Ok(Some(self.message_json(&self.messages[j])))
            }
            Some(_) => {
                let content = body["content"].as_str().unwrap_or("").to_owned();
                check_content(&content)?;
                let it = self.interaction_by_token(token).ok_or_else(unknown)?;
                let flags = it.original.as_ref().map_or(0, |o| o.flags);
                it.original = Some(OriginalResponse {
                    text: crate::text::displayed(&content),
                    flags,
                    edited: true,
                });
                let id = self.snowflake();
                Ok(Some(self.webhook_message_json(id, &content, flags)))
            }
        }
    }

    fn followup(&mut self, token: &str, body: &Value) -> Answer {
        let unknown = || Failure::new(404, 10015, "Unknown Webhook");
        let it = self.interaction_by_token(token).ok_or_else(unknown)?;
        if it.response.is_none() {
            return Err(unknown());
        }
        let interaction_id = it.id;
        let content = body["content"].as_str().unwrap_or("").to_owned();
        check_content(&content)?;
        if content.trim().is_empty() {
            return Err(Failure::new(400, 50006, "Cannot send an empty message"));
        }
        let flags = body["flags"].as_u64().unwrap_or(0);
        self.followups.push(Followup {
            interaction_id,
            text: crate::text::displayed(&content),
            content: content.clone(),
            flags,
        });
        let id = self.snowflake();
        Ok(Some(self.webhook_message_json(id, &content, flags)))
    }

    /// A message sent through an interaction webhook (only its user sees it when ephemeral).
    fn webhook_message_json(&self, id: u64, content: &str, flags: u64) -> Value {
        json!({
            "id": id.to_string(),
            "channel_id": "0",
            "author": user_json(FakeDiscord::BOT_ID),
            "content": content,
            "timestamp": timestamp(),
            "edited_timestamp": null,
            "tts": false,
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": false,
            "type": 20,
            "flags": flags & (EPHEMERAL | 4),
            "webhook_id": FakeDiscord::APPLICATION_ID.to_string(),
        })
    }

    fn set_commands(&mut self, body: &Value) -> Answer {
        let list = body
            .as_array()
            .ok_or_else(|| Failure::form("expected an array of commands"))?;
        let mut stored = Vec::new();
        for c in list {
            let name = c["name"].as_str().unwrap_or("");
            let description = c["description"].as_str().unwrap_or("");
            let name_ok = (1..=32).contains(&name.chars().count())
                && name
                    .chars()
                    .all(|ch| ch.is_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_');
            if !name_ok || !(1..=100).contains(&description.chars().count()) {
                return Err(Failure::form("command name or description"));
            }
            for o in c["options"].as_array().into_iter().flatten() {
                let d = o["description"].as_str().unwrap_or("");
                if o["name"].as_str().is_none_or(str::is_empty)
                    || !(1..=100).contains(&d.chars().count())
                {
                    return Err(Failure::form("option name or description"));
                }
            }
            let mut c = c.clone();
            c["id"] = json!(self.snowflake().to_string());
            c["application_id"] = json!(FakeDiscord::APPLICATION_ID.to_string());
            c["version"] = json!("1");
            c["default_member_permissions"] = Value::Null;
            c["type"] = c.get("type").cloned().unwrap_or(json!(1));
            stored.push(c);
        }
        self.commands = stored.clone();
        Ok(Some(Value::Array(stored)))
    }
}

// ---- Gateway ----

async fn upgrade(State(inner): State<Arc<Inner>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| connection(inner, socket))
}

fn text_frame(v: &Value) -> WsMessage {
    WsMessage::Text(v.to_string().into())
}

async fn connection(inner: Arc<Inner>, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let conn = {
        let mut w = inner.world();
        w.gateway.connections += 1;
        w.gateway.connections
    };
    let hello =
        json!({ "op": 10, "s": null, "t": null, "d": { "heartbeat_interval": HEARTBEAT_MS } });
    if socket.send(text_frame(&hello)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    let Ok(op) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    match op["op"].as_u64() {
                        Some(1) => {
                            let ack = json!({ "op": 11, "s": null, "t": null, "d": null });
                            if socket.send(text_frame(&ack)).await.is_err() { break; }
                        }
                        Some(2) => {
                            let accepted = identify(&inner, conn, &tx, &op["d"]);
                            if !accepted {
                                let _ = socket.send(WsMessage::Close(Some(CloseFrame {
                                    code: 4004,
                                    reason: "Authentication failed.".into(),
                                }))).await;
                                break;
                            }
                        }
                        Some(6) => {
                            let resumed = resume(&inner, conn, &tx, &op["d"]);
                            if !resumed {
                                let invalid = json!({ "op": 9, "s": null, "t": null, "d": false });
                                if socket.send(text_frame(&invalid)).await.is_err() { break; }
                            }
                        }
                        _ => {}
                    }
                }
                // The close reply is queued by the websocket; the next read sends it and
                // then ends the stream, so the client's shutdown completes cleanly.
                Some(Ok(WsMessage::Close(_))) => {}
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            out = rx.recv() => match out {
                Some(Out::Text(frame)) => {
                    if socket.send(WsMessage::Text(frame.into())).await.is_err() { break; }
                }
                Some(Out::Close(code)) => {
                    let _ = socket.send(WsMessage::Close(Some(CloseFrame {
                        code,
                        reason: "".into(),
                    }))).await;
                    break;
                }
                None => break,
            },
        }
    }
    let mut w = inner.world();
    if w.gateway.live.as_ref().is_some_and(|(c, _)| *c == conn) {
        w.gateway.live = None;
    }
}

/// Op 2: a new session, READY, then the backlog. `false` for a wrong token.
fn identify(inner: &Inner, conn: u64, tx: &mpsc::UnboundedSender<Out>, d: &Value) -> bool {
    let token = d["token"].as_str().unwrap_or("");
    if token.trim_start_matches("Bot ") != inner.token {
        return false;
    }
    let intents = d["intents"].as_u64().unwrap_or(0);
    let mut w = inner.world();
    let session_id = format!("fake-session-{:x}", w.snowflake());
    w.gateway.identified.push(intents);
    w.gateway.session = Some(Session {
        id: session_id.clone(),
        intents,
        seq: 0,
        log: Vec::new(),
    });
    w.gateway.live = Some((conn, tx.clone()));
    let ready = json!({
        "v": 10,
        "user": user_json(FakeDiscord::BOT_ID),
        "guilds": [],
        "private_channels": [],
        "session_id": session_id,
        "resume_gateway_url": format!("ws://{}/gateway", inner.addr),
        "shard": [0, 1],
        "application": { "id": FakeDiscord::APPLICATION_ID.to_string(), "flags": 0 },
    });
    w.dispatch("READY", ready);
    for (event, payload) in std::mem::take(&mut w.gateway.backlog) {
        w.dispatch(event, payload);
    }
    true
}

/// Op 6: replays what the client missed, then RESUMED. `false` for an unknown session.
fn resume(inner: &Inner, conn: u64, tx: &mpsc::UnboundedSender<Out>, d: &Value) -> bool {
    let token = d["token"].as_str().unwrap_or("");
    let session_id = d["session_id"].as_str().unwrap_or("");
    let seq = d["seq"].as_u64().unwrap_or(0);
    let mut w = inner.world();
    let extra = std::mem::take(&mut w.gateway.replay_extra) as u64;
    let ok = token.trim_start_matches("Bot ") == inner.token
        && w.gateway
            .session
            .as_ref()
            .is_some_and(|s| s.id == session_id);
    let mut replayed = 0;
    if ok && let Some(session) = &w.gateway.session {
        let from = seq.saturating_sub(extra);
        for (s, frame) in &session.log {
            if *s > from {
                let _ = tx.send(Out::Text(frame.clone()));
                replayed += 1;
            }
        }
    }
    w.gateway.resumes.push(Resume {
        session_id: session_id.to_owned(),
        seq,
        replayed,
    });
    if !ok {
        return false;
    }
    w.gateway.live = Some((conn, tx.clone()));
    w.dispatch("RESUMED", json!({}));
    true
}

// ---- Conformance ----

impl PlatformFake for FakeDiscord {
    fn user_id(&self, n: u32) -> String {
        (1_200_000_000_000_000_000_u64 + u64::from(n)).to_string()
    }

    fn direct_message<'a>(&'a self, user: &'a str, text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.dm(user.parse().expect("a Discord user id is a number"), text);
        })
    }

    fn shown<'a>(&'a self, conversation: &'a ConversationKey) -> BoxFuture<'a, Vec<Shown>> {
        Box::pin(async move {
            self.messages(target(conversation))
                .into_iter()
                .map(|m| Shown {
                    id: m.id.to_string(),
                    text: m.text,
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
            let channel = target(conversation);
            let (message_id, custom_id) = self
                .messages(channel)
                .into_iter()
                .filter(|m| m.text.contains(approval.as_str()))
                .find_map(|m| {
                    let b = m.buttons.iter().find(|b| b.label == label)?;
                    Some((m.id, b.custom_id.clone()))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "no {label} button shown for approval {} in {conversation}",
                        approval.as_str()
                    )
                });
            let user = user.parse().expect("a Discord user id is a number");
            FakeDiscord::click(self, user, channel, message_id, &custom_id);
        })
    }
}

/// The channel a conversation's messages are in: its thread, else its channel.
fn target(conversation: &ConversationKey) -> u64 {
    conversation
        .thread
        .as_deref()
        .unwrap_or(&conversation.channel)
        .parse()
        .expect("a Discord channel id is a number")
}

#[cfg(test)]
mod tests {
    use serenity::all::{Channel, Interaction, Message};
    use serenity::model::event::GatewayEvent;

    use super::*;

    const TOKEN: &str = "fake.discord.token";

    fn client(fake: &FakeDiscord) -> serenity::http::Http {
        crate::rest::serenity_http(TOKEN, Some(&fake.api_url()))
    }

    /// Builds the session without a websocket: what an Identify would do.
    fn session(fake: &FakeDiscord) -> mpsc::UnboundedReceiver<Out> {
        let (tx, rx) = mpsc::unbounded_channel();
        let d = json!({ "token": TOKEN, "intents": GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT });
        assert!(identify(&fake.inner, 99, &tx, &d));
        rx
    }

    fn frames(rx: &mut mpsc::UnboundedReceiver<Out>) -> Vec<GatewayEvent> {
        let mut out = Vec::new();
        while let Ok(Out::Text(t)) = rx.try_recv() {
            out.push(
                serde_json::from_str::<GatewayEvent>(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
            );
        }
        out
    }

    #[tokio::test]
    async fn gateway_payloads_parse_in_serenitys_models() {
        let fake = FakeDiscord::start(TOKEN).await;
        let mut rx = session(&fake);
        fake.dm(7, "hello <@1100000000000000001>");
        fake.guild_message(1, 2, 7, "in a guild");
        fake.thread_message(1, 2, 3, 7, "in a thread");
        let events = frames(&mut rx);
        assert_eq!(events.len(), 4, "READY and three messages");
        let GatewayEvent::Dispatch(1, serenity::model::event::Event::Ready(ready)) = &events[0]
        else {
            panic!("{:?}", events[0]);
        };
        assert_eq!(ready.ready.user.id.get(), FakeDiscord::BOT_ID);
        assert_eq!(
            ready.ready.application.id.get(),
            FakeDiscord::APPLICATION_ID
        );
        let GatewayEvent::Dispatch(2, serenity::model::event::Event::MessageCreate(dm)) =
            &events[1]
        else {
            panic!("{:?}", events[1]);
        };
        assert_eq!(dm.message.guild_id, None);
        assert_eq!(dm.message.mentions[0].id.get(), FakeDiscord::BOT_ID);
        let GatewayEvent::Dispatch(4, serenity::model::event::Event::MessageCreate(t)) = &events[3]
        else {
            panic!("{:?}", events[3]);
        };
        assert_eq!(t.message.channel_id.get(), 3);
        assert_eq!(t.message.guild_id.map(|g| g.get()), Some(1));

        // Bot messages, clicks and commands.
        let http = client(&fake);
        let body = json!({
            "content": "prompt",
            "components": [{ "type": 1, "components": [
                { "type": 2, "style": 3, "label": "Approve", "custom_id": "a" },
                { "type": 2, "style": 4, "label": "Deny", "custom_id": "d" },
            ]}],
        });
        let sent: Message = http
            .fire(
                serenity::http::Request::new(
                    serenity::http::Route::ChannelMessages {
                        channel_id: 3.into(),
                    },
                    serenity::http::LightMethod::Post,
                )
                .body(Some(serde_json::to_vec(&body).unwrap())),
            )
            .await
            .unwrap();
        assert_eq!(sent.components[0].components.len(), 2);
        fake.click(7, 3, sent.id.get(), "a");
        fake.world().commands = vec![json!({
            "id": "5", "name": "boxedclaw", "options": [{ "type": 3, "name": "command" }],
        })];
        fake.slash(7, Some(1), 2, "/status now");
        fake.slash(8, None, 0, "/boxedclaw help");
        let events = frames(&mut rx);
        let mut events = events.into_iter();
        // Discord dispatches the bot's own messages to it too.
        match events.next() {
            Some(GatewayEvent::Dispatch(_, serenity::model::event::Event::MessageCreate(m))) => {
                assert_eq!(m.message.author.id.get(), FakeDiscord::BOT_ID);
                assert!(m.message.author.bot);
            }
            other => panic!("{other:?}"),
        }
        let parsed: Vec<Interaction> = events
            .map(|e| match e {
                GatewayEvent::Dispatch(_, serenity::model::event::Event::InteractionCreate(i)) => {
                    i.interaction
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let Interaction::Component(click) = &parsed[0] else {
            panic!("{:?}", parsed[0])
        };
        assert_eq!(click.data.custom_id, "a");
        assert_eq!(click.user.id.get(), 7, "the member's user is the clicker");
        assert_eq!(
            click.channel.as_ref().unwrap().parent_id.map(|p| p.get()),
            Some(2)
        );
        let Interaction::Command(cmd) = &parsed[1] else {
            panic!("{:?}", parsed[1])
        };
        assert_eq!(cmd.data.name, "boxedclaw");
        assert_eq!(
            crate::inbound::command_text(cmd).as_deref(),
            Some("/status now")
        );
        let Interaction::Command(dm_cmd) = &parsed[2] else {
            panic!("{:?}", parsed[2])
        };
        assert_eq!(dm_cmd.guild_id, None);
        assert_eq!(dm_cmd.user.id.get(), 8);
        assert_eq!(
            crate::inbound::command_text(dm_cmd).as_deref(),
            Some("/help")
        );
    }

    #[tokio::test]
    async fn rest_answers_parse_and_refuse_like_discord() {
        let fake = FakeDiscord::start(TOKEN).await;
        let http = client(&fake);
        let me = http.get_current_user().await.unwrap();
        assert_eq!(me.id.get(), FakeDiscord::BOT_ID);
        assert!(me.bot);
        let gw = http.get_gateway().await.unwrap();
        assert_eq!(gw.url, format!("ws://{}/gateway", fake.inner.addr));
        fake.guild_message(1, 2, 7, "<@1100000000000000001> start");
        let first = fake.world().messages[0].id;
        let thread = http
            .create_thread_from_message(2.into(), first.into(), &json!({ "name": "t" }), None)
            .await
            .unwrap();
        assert_eq!(thread.id.get(), first, "a thread has its message's id");
        assert_eq!(thread.parent_id.map(|p| p.get()), Some(2));
        assert_eq!(thread.owner_id.map(|o| o.get()), Some(FakeDiscord::BOT_ID));
        let again = http
            .create_thread_from_message(2.into(), first.into(), &json!({ "name": "t" }), None)
            .await
            .unwrap_err();
        assert!(
            again.to_string().contains("already been created"),
            "{again}"
        );
        let Channel::Guild(c) = http.get_channel(first.into()).await.unwrap() else {
            panic!()
        };
        assert_eq!(c.kind, serenity::all::ChannelType::PublicThread);
        fake.dm(7, "hi");
        let dm = fake.dm_channel(7).unwrap();
        let Channel::Private(p) = http.get_channel(dm.into()).await.unwrap() else {
            panic!()
        };
        assert_eq!(p.recipient.id.get(), 7);
        let opened = http
            .create_private_channel(&json!({ "recipient_id": "7" }))
            .await
            .unwrap();
        assert_eq!(opened.id.get(), dm);
        http.broadcast_typing(dm.into()).await.unwrap();

        let long = "x".repeat(2001);
        let err = http
            .send_message(dm.into(), vec![], &json!({ "content": long }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("2000"), "{err}");
        let err = http
            .send_message(dm.into(), vec![], &json!({ "content": " " }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = http
            .send_message(42.into(), vec![], &json!({ "content": "x" }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Unknown Channel"), "{err}");
        let err = http
            .edit_message(2.into(), first.into(), &json!({ "content": "x" }), vec![])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another user"), "{err}");
        let sent = http
            .send_message(dm.into(), vec![], &json!({ "content": "\\*hi\\* <https://x>", "flags": 4, "allowed_mentions": { "parse": [] } }))
            .await
            .unwrap();
        let shown = &fake.messages(dm)[0];
        assert_eq!(shown.text, "*hi* <https://x>");
        assert_eq!(shown.flags, 4);
        assert_eq!(shown.allowed_mentions, Some(json!({ "parse": [] })));
        http.edit_message(dm.into(), sent.id, &json!({ "content": "edited" }), vec![])
            .await
            .unwrap();
        assert_eq!(fake.messages(dm)[0].text, "edited");

        let stranger = crate::rest::serenity_http("wrong", Some(&fake.api_url()));
        let err = stranger.get_current_user().await.unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        let rejected = fake.calls().iter().filter(|c| c.rejected).count();
        assert_eq!(rejected, 6);
    }

    #[tokio::test]
    async fn rate_limits_carry_retry_after_in_body_and_header() {
        let fake = FakeDiscord::start(TOKEN).await;
        fake.rate_limit_next("GET /api/v10/users/@me", 1.5);
        let res = reqwest::Client::new()
            .get(format!("{}/api/v10/users/@me", fake.api_url()))
            .header("authorization", format!("Bot {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "2");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["retry_after"], 1.5);
        assert!(body.get("code").is_none());
        // What serenity makes of it: the status, and no retry_after anywhere.
        fake.rate_limit_next("GET /api/v10/users/@me", 1.5);
        let err = client(&fake).get_current_user().await.unwrap_err();
        match err {
            serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(r)) => {
                assert_eq!(r.status_code.as_u16(), 429);
                assert_eq!(
                    r.error.code, -1,
                    "the body has no code: serenity cannot decode it"
                );
            }
            other => panic!("{other:?}"),
        }
        client(&fake).get_current_user().await.unwrap();
    }

    #[tokio::test]
    async fn interactions_must_be_answered_once_in_time() {
        let fake = FakeDiscord::start(TOKEN).await;
        let _rx = session(&fake);
        fake.dm(7, "hi");
        let dm = fake.dm_channel(7).unwrap();
        let http = client(&fake);
        let sent = http
            .send_message(dm.into(), vec![], &json!({ "content": "p" }))
            .await
            .unwrap();
        let id = fake.click(7, dm, sent.id.get(), "x");
        let token = fake.world().interactions[0].token.clone();
        let post = |body: Value| {
            let url = format!(
                "{}/api/v10/interactions/{id}/{token}/callback",
                fake.api_url()
            );
            async move {
                reqwest::Client::new()
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        let followup_url = format!(
            "{}/api/v10/webhooks/{}/{token}",
            fake.api_url(),
            FakeDiscord::APPLICATION_ID
        );
        let early = reqwest::Client::new()
            .post(&followup_url)
            .json(&json!({ "content": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(early.status(), 404, "no follow-up before the answer");
        assert_eq!(post(json!({ "type": 6 })).await, 204);
        assert_eq!(post(json!({ "type": 6 })).await, 400, "answered once");
        let ok = reqwest::Client::new()
            .post(&followup_url)
            .json(&json!({ "content": "\\@you", "flags": 64 }))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let f = &fake.followups()[0];
        assert_eq!(
            (f.interaction_id, f.text.as_str(), f.flags),
            (id, "@you", 64)
        );
        assert_eq!(fake.interaction_responses()[0].kind, 6);
        assert!(fake.interaction_responses()[0].after < ANSWER_DEADLINE);
    }

    #[test]
    fn intents_gate_what_is_dispatched() {
        let guild = json!({ "guild_id": "1", "content": "secret", "mentions": [] });
        assert_eq!(
            visible("MESSAGE_CREATE", guild.clone(), DIRECT_MESSAGES),
            None
        );
        let v = visible("MESSAGE_CREATE", guild.clone(), GUILD_MESSAGES).unwrap();
        assert_eq!(v["content"], "");
        let v = visible("MESSAGE_CREATE", guild, GUILD_MESSAGES | MESSAGE_CONTENT).unwrap();
        assert_eq!(v["content"], "secret");
        let dm = json!({ "content": "hi", "mentions": [] });
        assert_eq!(visible("MESSAGE_CREATE", dm.clone(), GUILD_MESSAGES), None);
        assert_eq!(
            visible("MESSAGE_CREATE", dm, DIRECT_MESSAGES).unwrap()["content"],
            "hi"
        );
        assert_eq!(mentioned("<@1> <@!2> <@1> <@&3> <#4>"), [1, 2]);
    }
}
