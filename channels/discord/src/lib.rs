//! The Discord channel: a [`ChannelAdapter`] on serenity.
//!
//! - **Intake**: the gateway websocket (serenity's `Client`, intents `GUILD_MESSAGES`,
//!   `DIRECT_MESSAGES` and the privileged `MESSAGE_CONTENT`). After a dropped connection
//!   serenity resumes the session and Discord replays what was missed; re-deliveries the
//!   adapter recognises (recent message and interaction ids) are dropped, and the gateway's
//!   store drops the rest by `InboundMessage::id`.
//! - **Mapping** (`inbound`): DM → that user's conversation; guild thread → its own
//!   conversation (`tenant` = guild); a mention in a channel starts a thread from that message
//!   and the thread is the conversation. In guilds only mentions, replies to the bot and
//!   threads the bot started or was addressed in reach the agent.
//! - **Approvals**: a prompt showing the exact action (escaped, so nothing in it is markup or
//!   a mention) with Approve / Deny buttons whose `custom_id` is signed for the conversation
//!   (`boxedclaw_channels::button`). A click is acknowledged at once (deferred update, within
//!   Discord's 3 s) and forwarded; the prompt is edited to say who decided what, without
//!   buttons; a refused click gets an ephemeral follow-up; a forged one an ephemeral
//!   "not valid here" and nothing else.
//! - **Admin**: one application command, `/boxedclaw command:<text>`, registered at start;
//!   answered at once with a deferred ephemeral response, which the gateway's answer edits.
//! - **Output** (`outbound`, `text`): every text escaped (Discord has no plain-text mode),
//!   `allowed_mentions: {"parse": []}`, embeds suppressed, split at 2000 characters without
//!   repeating pieces on a retry, typing indicator, progress by editing one message at a
//!   bounded rate.
//! - **REST** (`rest`): serenity's ratelimiter against Discord; with `DISCORD_API_URL` (a fake
//!   or a proxy) requests go there and 429s are waited out here, since serenity's errors do
//!   not carry `retry_after`.
//!
//!   Holders of a role named in `DISCORD_APPROVER_ROLES` (as Discord reports the clicking
//!   member's roles) count as approvers in their guild.
//! - **HTTP interactions** (`interactions`, optional): with the application's public key set,
//!   [`DiscordChannel::interactions_router`] is the "Interactions Endpoint URL" route for the
//!   gateway's HTTP server. Each request's Ed25519 signature (over the timestamp and the raw
//!   body) is checked before anything is parsed; clicks and commands then go through the same
//!   code as those from the websocket (`react`), the first answer being the HTTP response
//!   instead of a REST callback.
#![forbid(unsafe_code)]

#[cfg(feature = "test-utils")]
pub mod fake;
mod gateway;
mod inbound;
mod interactions;
mod outbound;
mod rest;
mod text;

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use boxedclaw_channels::button::ButtonSigner;
use boxedclaw_channels::dedup::RecentIds;
use boxedclaw_channels::render::ResumePoints;
use boxedclaw_channels::{
    BoxFuture, Capabilities, ChannelAdapter, ChannelContext, ChannelError, InboundEvent,
    OutboundAction, Secret,
};
use boxedclaw_protocol::channel::{ApprovalDecision, InboundMessage};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use dashmap::DashMap;
use serde_json::{Value, json};
use serenity::all::{
    Channel, ChannelId, ClientBuilder, CommandInteraction, ComponentInteraction, CurrentUser,
    GatewayError, GuildId, Interaction, InteractionId, Message, PartialChannel,
};
use serenity::http::{LightMethod, Route};
use serenity::model::gateway::Gateway;
use tokio::sync::{mpsc, oneshot};

use crate::gateway::{Forwarder, Incoming};
use crate::inbound::Place;
pub use crate::interactions::{DEFAULT_INTERACTIONS_PATH, InteractionsKey};
use crate::rest::Rest;

/// Discord's longest message content, in characters.
pub const MAX_TEXT_LEN: usize = text::LIMIT;
/// Gateway events waiting for the `run` loop.
const INTAKE_QUEUE: usize = 1024;
/// Events arriving within this window are put back in Discord's order before intake
/// (serenity hands each event to a task of its own, so a burst can arrive shuffled).
const BURST_WINDOW: Duration = Duration::from_millis(25);
/// An interaction token works for 15 minutes; answers are sent through it until shortly before.
const INTERACTION_TTL: Duration = Duration::from_secs(14 * 60);
/// Channels whose kind (thread or not) is remembered.
const PLACE_CACHE: usize = 10_000;
/// How long shutdown waits for serenity to close the websocket.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Message flag: no link previews (embeds) for agent text.
const SUPPRESS_EMBEDS: u64 = 1 << 2;
/// Message flag: visible to the interaction's user only.
const EPHEMERAL: u64 = 1 << 6;
/// Events from the HTTP interactions endpoint waiting for the `run` loop.
const HTTP_QUEUE: usize = 256;
/// How long an event from the HTTP endpoint waits for its interaction's answer to be sent
/// (normally microseconds: the answer is written as soon as the handler returns).
const HTTP_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// How the adapter is configured.
#[derive(Debug, Clone)]
pub struct DiscordSettings {
    /// The bot token (`DISCORD_BOT_TOKEN`).
    pub token: Arc<Secret>,
    /// Another API server (`DISCORD_API_URL`, e.g. `http://127.0.0.1:8080`): a REST proxy,
    /// or a fake in tests. Its `GET /api/v10/gateway` names the websocket to connect to.
    pub api_url: Option<String>,
    /// Progress edits of one message come at most this often.
    pub progress_interval: Duration,
    /// Role ids (`DISCORD_APPROVER_ROLES`) whose holders may decide any approval in their
    /// guild, besides the requester and the gateway's configured approvers.
    pub approver_roles: Vec<u64>,
    /// The application's public key (`DISCORD_PUBLIC_KEY`, Developer Portal → General
    /// Information). When set, [`DiscordChannel::interactions_router`] serves the HTTP
    /// interactions endpoint; otherwise interactions arrive on the gateway websocket only.
    pub interactions_public_key: Option<InteractionsKey>,
    /// The route of the HTTP interactions endpoint on the gateway's HTTP server
    /// ([`DEFAULT_INTERACTIONS_PATH`] by default); Discord's "Interactions Endpoint URL" is
    /// the public URL that reaches it.
    pub interactions_path: String,
}

impl DiscordSettings {
    /// Discord itself (or `api_url`), with the defaults.
    pub fn new(token: Arc<Secret>, api_url: Option<String>) -> Self {
        Self {
            token,
            api_url,
            progress_interval: Duration::from_secs(2),
            approver_roles: Vec::new(),
            interactions_public_key: None,
            interactions_path: DEFAULT_INTERACTIONS_PATH.to_owned(),
        }
    }
}

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("discord: {0}")]
pub struct SetupError(String);

/// The Discord adapter.
pub struct DiscordChannel {
    settings: DiscordSettings,
    rest: Rest,
    signer: ButtonSigner,
    /// The bot's user id, from `GET /users/@me` at start.
    bot: OnceLock<u64>,
    /// The application id, from READY (interaction answers and commands need it).
    application: OnceLock<u64>,
    /// Where each approval prompt is, so a decision can edit it.
    prompts: DashMap<ApprovalId, Prompt>,
    /// The progress message of each conversation's current turn.
    progress: DashMap<ConversationKey, ProgressMessage>,
    /// Interactions whose answer is still to come from the gateway (a refusal notice, a
    /// command's output), oldest first.
    open: Mutex<Vec<OpenInteraction>>,
    /// Pieces of a long reply already delivered, so a retried reply does not repeat them.
    partial: ResumePoints,
    /// Recent message and interaction ids, to drop re-deliveries.
    recent: Mutex<RecentIds<u64>>,
    /// Whether a guild channel is a thread (learned from `GET /channels/{id}` or by creating
    /// it).
    places: DashMap<u64, Place>,
    /// Threads the bot was addressed in: their later messages reach the agent unaddressed.
    joined: Mutex<RecentIds<u64>>,
    /// Events from the HTTP interactions endpoint, for the `run` loop (which takes the
    /// receiver).
    http_tx: mpsc::Sender<FromHttp>,
    http_rx: Mutex<Option<mpsc::Receiver<FromHttp>>>,
}

/// An event from the HTTP endpoint, to be handed over once `answered` resolves (its sender is
/// dropped when the interaction's HTTP answer has been sent, or could not be).
struct FromHttp {
    event: InboundEvent,
    answered: oneshot::Receiver<()>,
}

/// What an interaction means, wherever it arrived: the first answer Discord needs within 3 s,
/// and the event for the gateway. The caller sends the answer (a REST callback for the
/// websocket, the response body for the HTTP endpoint) before it hands the event over, so the
/// gateway's answer (a follow-up, an edit of the deferred response) finds the interaction
/// acknowledged.
pub(crate) struct Reaction {
    /// An interaction response (`{"type": …}`); `None` when nothing may be answered (a
    /// re-delivery, or a kind the adapter never asks for).
    pub(crate) answer: Option<Value>,
    /// What the gateway gets, if anything.
    pub(crate) event: Option<InboundEvent>,
}

impl Reaction {
    fn nothing() -> Self {
        Self {
            answer: None,
            event: None,
        }
    }

    /// An ephemeral answer and no event: a refusal.
    fn refuse(text: &str) -> Self {
        Self {
            answer: Some(ephemeral_answer(text)),
            event: None,
        }
    }
}

impl std::fmt::Debug for DiscordChannel {
    // By hand: serenity's `Http` holds the token, and open interactions hold their tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordChannel")
            .field("settings", &self.settings)
            .field("rest", &self.rest)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Prompt {
    channel: ChannelId,
    message: u64,
    /// The prompt's text before escaping.
    text: String,
}

#[derive(Debug, Clone, Copy)]
struct ProgressMessage {
    channel: ChannelId,
    message: u64,
    edited: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenKind {
    /// A button click, acknowledged with a deferred update: answered by a follow-up.
    Click,
    /// An application command, acknowledged with a deferred ephemeral response: answered by
    /// editing that response.
    Command,
}

/// An interaction the gateway may still answer. No `Debug`: it holds the interaction token.
struct OpenInteraction {
    kind: OpenKind,
    token: String,
    conversation: ConversationKey,
    user: UserRef,
    /// The approval a click or an `/approve`/`/deny` command is about.
    approval: Option<ApprovalId>,
    at: Instant,
}

/// A Discord id from its number (serenity's ids refuse 0).
fn id<T: From<NonZeroU64>>(n: u64) -> Result<T, ChannelError> {
    NonZeroU64::new(n)
        .map(T::from)
        .ok_or_else(|| ChannelError::Platform("a Discord id cannot be 0".into()))
}

impl DiscordChannel {
    /// Builds the adapter; nothing is contacted until [`ChannelAdapter::run`].
    ///
    /// # Errors
    /// [`SetupError`] for an empty token or an unusable API URL.
    pub fn new(settings: DiscordSettings) -> Result<Arc<Self>, SetupError> {
        let token = settings.token.expose().trim();
        if token.is_empty() {
            return Err(SetupError("DISCORD_BOT_TOKEN is empty".into()));
        }
        let rest = Rest::new(token, settings.api_url.as_deref()).map_err(SetupError)?;
        if settings.interactions_public_key.is_some() {
            interactions::check_path(&settings.interactions_path).map_err(SetupError)?;
        }
        let (http_tx, http_rx) = mpsc::channel(HTTP_QUEUE);
        Ok(Arc::new(Self {
            signer: ButtonSigner::from_token(Platform::Discord, token),
            rest,
            settings,
            bot: OnceLock::new(),
            application: OnceLock::new(),
            prompts: DashMap::new(),
            progress: DashMap::new(),
            open: Mutex::new(Vec::new()),
            partial: ResumePoints::default(),
            recent: Mutex::new(RecentIds::default()),
            places: DashMap::new(),
            joined: Mutex::new(RecentIds::default()),
            http_tx,
            http_rx: Mutex::new(Some(http_rx)),
        }))
    }

    /// The HTTP interactions endpoint (`POST` on `interactions_path`), to merge into the
    /// gateway's HTTP server; `None` without `interactions_public_key`.
    pub fn interactions_router(self: &Arc<Self>) -> Option<axum::Router> {
        let key = self.settings.interactions_public_key?;
        Some(interactions::router(
            &self.settings.interactions_path,
            key,
            self.clone(),
        ))
    }

    /// Queues an event from the HTTP endpoint for the `run` loop; `false` when intake has
    /// ended (shutdown).
    pub(crate) async fn queue_from_http(
        &self,
        event: InboundEvent,
        answered: oneshot::Receiver<()>,
    ) -> bool {
        self.http_tx
            .send(FromHttp { event, answered })
            .await
            .is_ok()
    }

    /// Hands the HTTP endpoint's events to the gateway, each once its interaction's answer
    /// was sent: Discord refuses follow-ups and edits through an interaction's token until it
    /// has the answer. Never returns (the gateway connection decides when `run` ends).
    async fn http_intake(&self, ctx: &ChannelContext) {
        let taken = self.http_rx.lock().ok().and_then(|mut rx| rx.take());
        if let Some(mut rx) = taken {
            while let Some(FromHttp { event, answered }) = rx.recv().await {
                let _ = tokio::time::timeout(HTTP_ANSWER_WAIT, answered).await;
                if ctx.inbound.send(event).await.is_err() {
                    // The gateway's intake is gone: it is shutting down.
                    break;
                }
            }
        }
        std::future::pending::<()>().await;
    }

    /// `GET /users/@me` (the bot's id, to recognise mentions) and `GET /gateway` (where to
    /// connect), retried with backoff until they work, the token is refused, or shutdown.
    async fn identify(&self, ctx: &ChannelContext) -> Result<(u64, String), ChannelError> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let attempt = async {
                let me: CurrentUser = self
                    .rest
                    .json(LightMethod::Get, Route::UserMe, None)
                    .await?;
                let gateway: Gateway = self
                    .rest
                    .json(LightMethod::Get, Route::Gateway, None)
                    .await?;
                Ok::<_, ChannelError>((me.id.get(), gateway.url))
            };
            match attempt.await {
                Ok(found) => return Ok(found),
                Err(e @ ChannelError::Auth(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(platform = "discord", error = %e, "identity request failed; retrying in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = ctx.shutdown.cancelled() => return Err(ChannelError::Closed),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Registers `/boxedclaw` so clients offer it.
    async fn register_commands(&self) {
        let Some(&application) = self.application.get() else {
            return;
        };
        let commands = json!([{
            "name": inbound::COMMAND_NAME,
            "type": 1,
            "description": "BoxedClaw: status, approvals, approve <id>, deny <id>, reset, stop, budget, audit, help",
            "options": [{
                "type": 3,
                "name": inbound::COMMAND_OPTION,
                "description": "The command and its arguments, e.g. status or approve <id>",
                "required": true,
            }],
            "dm_permission": true,
        }]);
        let route = match id(application) {
            Ok(application_id) => Route::Commands { application_id },
            Err(_) => return,
        };
        if let Err(e) = self
            .rest
            .send(LightMethod::Put, route, Some(&commands))
            .await
        {
            tracing::warn!(platform = "discord", error = %e, "registering /boxedclaw failed; clients will not offer it");
        }
    }

    /// Connects the gateway and takes its events until shutdown. Serenity reconnects and
    /// resumes by itself; a client that ends with an error is rebuilt after a backoff.
    async fn serve(&self, ctx: &ChannelContext, ws_url: &str) -> Result<(), ChannelError> {
        let (tx, mut rx) = mpsc::channel(INTAKE_QUEUE);
        let mut backoff = Duration::from_secs(1);
        loop {
            let http = rest::serenity_http(
                self.settings.token.expose().trim(),
                self.settings.api_url.as_deref(),
            );
            let built = ClientBuilder::new_with_http(http, gateway::intents())
                .event_handler(Forwarder { tx: tx.clone() })
                .await;
            let mut client = match built {
                Ok(client) => client,
                Err(e) => {
                    tracing::warn!(platform = "discord", error = %e, "gateway client failed; retrying in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = ctx.shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            // Serenity falls back to wss://gateway.discord.gg when its own `GET /gateway` fails;
            // use the URL our server named.
            *client.ws_url.lock().await = ws_url.to_owned();
            let manager = client.shard_manager.clone();
            let mut sweep = tokio::time::interval(Duration::from_secs(30));
            let ended = {
                let start = client.start();
                tokio::pin!(start);
                loop {
                    tokio::select! {
                        ended = &mut start => break ended,
                        Some(first) = rx.recv() => {
                            if !self.burst(first, &mut rx, ctx).await {
                                // The gateway's intake is gone: it is shutting down.
                                let _ = tokio::time::timeout(SHUTDOWN_GRACE, manager.shutdown_all()).await;
                                return Ok(());
                            }
                        }
                        _ = sweep.tick() => self.sweep_open(),
                        () = ctx.shutdown.cancelled() => {
                            let _ = tokio::time::timeout(SHUTDOWN_GRACE, manager.shutdown_all()).await;
                            return Ok(());
                        }
                    }
                }
            };
            match ended {
                Err(serenity::Error::Gateway(GatewayError::InvalidAuthentication)) => {
                    return Err(ChannelError::Auth(
                        "Discord refused the bot token on the gateway".into(),
                    ));
                }
                Err(serenity::Error::Gateway(
                    GatewayError::InvalidGatewayIntents | GatewayError::DisallowedGatewayIntents,
                )) => {
                    return Err(ChannelError::Auth(
                        "Discord refused the gateway intents: enable the Message Content intent \
                         for this bot in the developer portal"
                            .into(),
                    ));
                }
                other => {
                    tracing::warn!(platform = "discord", result = ?other.err().map(|e| e.to_string()), "gateway client ended; reconnecting in {backoff:?}");
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, manager.shutdown_all()).await;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = ctx.shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Takes `first` and whatever else arrives within [`BURST_WINDOW`], in Discord's order.
    /// Returns `false` when the gateway's intake is closed.
    async fn burst(
        &self,
        first: Incoming,
        rx: &mut mpsc::Receiver<Incoming>,
        ctx: &ChannelContext,
    ) -> bool {
        let mut batch = vec![first];
        let window = tokio::time::sleep(BURST_WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                Some(more) = rx.recv() => batch.push(more),
                () = &mut window => break,
            }
        }
        batch.sort_by_key(Incoming::order);
        for incoming in batch {
            if !self.intake(incoming, ctx).await {
                return false;
            }
        }
        true
    }

    /// Handles one gateway event. Returns `false` when the gateway's intake is closed.
    async fn intake(&self, incoming: Incoming, ctx: &ChannelContext) -> bool {
        let event = match incoming {
            Incoming::Ready { bot, application } => {
                if self.bot.get().is_some_and(|&b| b != bot) {
                    tracing::warn!(
                        platform = "discord",
                        "READY names another bot user than GET /users/@me"
                    );
                }
                let _ = self.application.set(application);
                if !ctx.ready.is_cancelled() {
                    ctx.ready.cancel();
                    self.register_commands().await;
                }
                return true;
            }
            Incoming::Message(m) => self.message_event(&m).await,
            Incoming::Interaction(i) => {
                let (id, token) = (i.id(), i.token().to_owned());
                let reaction = self.react(*i).await;
                if let Some(answer) = &reaction.answer {
                    self.respond(id, &token, answer).await;
                }
                reaction.event
            }
        };
        match event {
            Some(event) => ctx.inbound.send(event).await.is_ok(),
            None => true,
        }
    }

    /// True the first time a message or interaction id is seen.
    fn first_time(&self, id: u64) -> bool {
        let first = self.recent.lock().map(|mut r| r.first(id)).unwrap_or(true);
        if !first {
            tracing::info!(platform = "discord", id, "re-delivered event dropped");
        }
        first
    }

    fn joined(&self, thread: u64) -> bool {
        self.joined.lock().is_ok_and(|j| j.contains(&thread))
    }

    fn join(&self, thread: u64) {
        if let Ok(mut j) = self.joined.lock() {
            j.first(thread);
        }
    }

    fn remember_place(&self, channel: u64, place: Place) {
        if self.places.len() >= PLACE_CACHE {
            self.places.clear();
        }
        self.places.insert(channel, place);
    }

    /// Whether guild channel `channel` is a thread: remembered, or asked once with
    /// `GET /channels/{id}`. `None` when Discord cannot say right now.
    async fn place(&self, channel: u64) -> Option<Place> {
        if let Some(p) = self.places.get(&channel) {
            return Some(*p);
        }
        let route = Route::Channel {
            channel_id: id(channel).ok()?,
        };
        match self
            .rest
            .json::<Channel>(LightMethod::Get, route, None)
            .await
        {
            Ok(Channel::Guild(c)) => {
                let place = Place::of(
                    c.kind,
                    c.parent_id.map(ChannelId::get),
                    c.owner_id.map(|u| u.get()),
                );
                self.remember_place(channel, place);
                Some(place)
            }
            Ok(_) => Some(Place::Channel),
            Err(e) => {
                tracing::warn!(platform = "discord", channel, error = %e, "channel lookup failed");
                None
            }
        }
    }

    /// Starts a thread from the message that mentioned the bot; `None` when that is not
    /// possible here (the conversation is then the channel itself).
    async fn start_thread(&self, channel: u64, message: u64, text: &str) -> Option<u64> {
        let route = Route::ChannelMessageThreads {
            channel_id: id(channel).ok()?,
            message_id: id(message).ok()?,
        };
        let body = json!({
            "name": inbound::thread_name(text),
            "auto_archive_duration": 1440,
        });
        let thread = match self
            .rest
            .json::<Channel>(LightMethod::Post, route, Some(&body))
            .await
        {
            Ok(c) => c.id().get(),
            // A thread from this message exists already (a re-delivery after a restart): a
            // thread started from a message has that message's id.
            Err(e) if rest::is_code(&e, 160_004) => message,
            Err(e) => {
                tracing::warn!(platform = "discord", channel, error = %e, "could not start a thread; answering in the channel");
                return None;
            }
        };
        let bot = self.bot.get().copied();
        self.remember_place(
            thread,
            Place::Thread {
                parent: channel,
                owner: bot,
            },
        );
        self.join(thread);
        Some(thread)
    }

    async fn message_event(&self, m: &Message) -> Option<InboundEvent> {
        /// Where a message for the agent belongs.
        enum Target {
            Dm,
            Thread { guild: u64, parent: u64 },
            NewThread { guild: u64 },
        }
        let bot = *self.bot.get()?;
        if !inbound::is_candidate(m, bot) {
            return None;
        }
        let user = inbound::user_ref(m.author.id.get())?;
        let addressed = inbound::addressed(m, bot);
        let channel = m.channel_id.get();
        let target = match m.guild_id.map(GuildId::get) {
            None => Target::Dm,
            // An addressed message whose channel cannot be looked up is taken to be in a plain
            // channel: starting a thread fails inside a thread, and the answer then goes to
            // where it was asked.
            Some(guild) => match self.place(channel).await {
                Some(Place::Thread { parent, owner })
                    if addressed || owner == Some(bot) || self.joined(channel) =>
                {
                    Target::Thread { guild, parent }
                }
                Some(Place::Channel) | None if addressed => Target::NewThread { guild },
                _ => return None,
            },
        };
        // Only events for the agent are remembered, so chatter does not push them out.
        if !self.first_time(m.id.get()) {
            return None;
        }
        let text = if addressed {
            inbound::strip_mention(&m.content, bot)
        } else {
            m.content.clone()
        };
        let conversation = match target {
            Target::Dm => inbound::dm_conversation(channel)?,
            Target::Thread { guild, parent } => {
                self.join(channel);
                inbound::guild_conversation(guild, parent, Some(channel))?
            }
            Target::NewThread { guild } => {
                let thread = self.start_thread(channel, m.id.get(), &text).await;
                inbound::guild_conversation(guild, channel, thread)?
            }
        };
        Some(InboundEvent::Message(InboundMessage {
            id: inbound::event_id("message", m.id.get()),
            conversation,
            user,
            text,
        }))
    }

    /// The conversation an interaction happened in: the DM, or the guild channel or thread
    /// (from the interaction's own `channel`, which names a thread's parent).
    async fn interaction_conversation(
        &self,
        guild: Option<GuildId>,
        channel: ChannelId,
        partial: Option<&PartialChannel>,
    ) -> Option<ConversationKey> {
        let channel = channel.get();
        let Some(guild) = guild.map(GuildId::get) else {
            return inbound::dm_conversation(channel);
        };
        let place = match partial {
            Some(p) => Place::of(p.kind, p.parent_id.map(ChannelId::get), None),
            None => self.place(channel).await?,
        };
        match place {
            Place::Thread { parent, .. } => {
                inbound::guild_conversation(guild, parent, Some(channel))
            }
            Place::Channel => inbound::guild_conversation(guild, channel, None),
        }
    }

    /// What an interaction means and how to answer it first, for both transports (see
    /// [`Reaction`]). Re-deliveries (by interaction id) get no answer and no event.
    pub(crate) async fn react(&self, interaction: Interaction) -> Reaction {
        // Discord names the application in every interaction: answers need it, and over HTTP
        // one may come before the websocket's READY.
        let _ = self.application.set(interaction.application_id().get());
        match interaction {
            Interaction::Component(c) => self.click(c).await,
            Interaction::Command(c) => self.command(c).await,
            // PINGs exist only over HTTP and are answered there before any of this;
            // autocomplete and modals are never asked for.
            _ => Reaction::nothing(),
        }
    }

    async fn click(&self, c: ComponentInteraction) -> Reaction {
        if !self.first_time(c.id.get()) {
            return Reaction::nothing();
        }
        let conversation = self
            .interaction_conversation(c.guild_id, c.message.channel_id, c.channel.as_ref())
            .await;
        let user = inbound::user_ref(c.user.id.get());
        let opened = conversation
            .as_ref()
            .and_then(|conv| self.signer.open(&c.data.custom_id, conv));
        let (Some(conversation), Some(user), Some((approval, approve))) =
            (conversation, user, opened)
        else {
            tracing::warn!(
                platform = "discord",
                interaction = c.id.get(),
                "click with a custom_id not signed for its conversation refused"
            );
            return Reaction::refuse("This button is not valid here.");
        };
        // Discord wants an answer within 3 s: acknowledge now (deferred update); the prompt is
        // edited when the gateway resolves the approval, and a refusal comes as an ephemeral
        // follow-up.
        self.remember_open(OpenInteraction {
            kind: OpenKind::Click,
            token: c.token,
            conversation: conversation.clone(),
            user: user.clone(),
            approval: Some(approval.clone()),
            at: Instant::now(),
        });
        // Roles come from the interaction's member, which Discord fills in only for clicks
        // in a guild: a DM click never counts as a role holder's.
        let approver_role = c.member.as_ref().and_then(|m| {
            m.roles
                .iter()
                .find(|r| self.settings.approver_roles.contains(&r.get()))
                .map(|r| r.to_string())
        });
        Reaction {
            answer: Some(json!({ "type": 6 })),
            event: Some(InboundEvent::ApprovalDecision(ApprovalDecision {
                conversation,
                approval,
                user,
                approve,
                approver_role,
            })),
        }
    }

    async fn command(&self, c: CommandInteraction) -> Reaction {
        if !self.first_time(c.id.get()) {
            return Reaction::nothing();
        }
        let Some(text) = inbound::command_text(&c) else {
            return Reaction::refuse("Unknown command.");
        };
        let conversation = self
            .interaction_conversation(c.guild_id, c.channel_id, c.channel.as_ref())
            .await;
        let (Some(conversation), Some(user)) = (conversation, inbound::user_ref(c.user.id.get()))
        else {
            return Reaction::refuse("This command cannot be used here.");
        };
        let event = boxedclaw_channels::command::interpret(InboundMessage {
            id: inbound::event_id("interaction", c.id.get()),
            conversation: conversation.clone(),
            user: user.clone(),
            text,
        });
        let approval = match &event {
            InboundEvent::ApprovalDecision(d) => Some(d.approval.clone()),
            _ => None,
        };
        self.remember_open(OpenInteraction {
            kind: OpenKind::Command,
            token: c.token,
            conversation,
            user,
            approval,
            at: Instant::now(),
        });
        // Within Discord's 3 s: "thinking…", visible to the user alone; the gateway's answer
        // replaces it.
        Reaction {
            answer: Some(json!({ "type": 5, "data": { "flags": EPHEMERAL } })),
            event: Some(event),
        }
    }

    /// Answers an interaction (`POST /interactions/{id}/{token}/callback`).
    async fn respond(&self, interaction: InteractionId, token: &str, body: &Value) {
        let route = Route::InteractionResponse {
            interaction_id: interaction,
            token,
        };
        if let Err(e) = self.rest.send(LightMethod::Post, route, Some(body)).await {
            tracing::warn!(platform = "discord", interaction = interaction.get(), error = %e, "interaction answer failed");
        }
    }

    fn remember_open(&self, open: OpenInteraction) {
        if let Ok(mut all) = self.open.lock() {
            all.push(open);
        }
    }

    /// Forgets interactions too old to be answered through.
    fn sweep_open(&self) {
        if let Ok(mut all) = self.open.lock() {
            all.retain(|o| o.at.elapsed() < INTERACTION_TTL);
        }
    }
}

/// An immediate ephemeral answer to an interaction.
fn ephemeral_answer(text: &str) -> Value {
    json!({
        "type": 4,
        "data": {
            "content": text::escape_truncated(text, text::LIMIT),
            "flags": EPHEMERAL | SUPPRESS_EMBEDS,
            "allowed_mentions": { "parse": [] },
        },
    })
}

impl ChannelAdapter for DiscordChannel {
    fn platform(&self) -> Platform {
        Platform::Discord
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            buttons: true,
            threads: true,
            edits: true,
            // Answers to clicks and commands are ephemeral; other notices go to the channel.
            ephemeral: true,
            max_text_len: MAX_TEXT_LEN,
        }
    }

    fn run(self: Arc<Self>, ctx: ChannelContext) -> BoxFuture<'static, Result<(), ChannelError>> {
        Box::pin(async move {
            let connection = async {
                let found = tokio::select! {
                    found = self.identify(&ctx) => found,
                    () = ctx.shutdown.cancelled() => return Ok(()),
                };
                let (bot, ws_url) = match found {
                    Ok(found) => found,
                    Err(ChannelError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                };
                let _ = self.bot.set(bot);
                tracing::info!(platform = "discord", bot, "connecting to the gateway");
                self.serve(&ctx, &ws_url).await
            };
            // The HTTP endpoint's events flow from the start, alongside the websocket; the
            // websocket side decides when `run` ends (`http_intake` never returns).
            tokio::select! {
                ended = connection => ended,
                () = self.http_intake(&ctx) => Ok(()),
            }
        })
    }

    fn deliver(&self, action: OutboundAction) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(self.render(action))
    }
}
