//! The Slack channel: a [`ChannelAdapter`] on slack-morphism.
//!
//! - **Intake**: Socket Mode by default (`SLACK_APP_TOKEN`; no public URL needed), or the
//!   Events API over HTTP on the gateway's server ([`SlackChannel::http_router`]), where every
//!   request's `v0` signature (HMAC over timestamp and raw body, 5-minute window, constant
//!   time) is checked before the body is read, and the answer comes at once, before the work.
//! - **Mapping** (`inbound`): each thread is a conversation; a top-level mention starts a
//!   thread and the reply goes into it; DMs per user; the team id is part of the key. A
//!   message without a mention in a thread the adapter does not know is the bot's when Slack
//!   says the thread's parent mentions the bot or was posted by it (`conversations.replies`,
//!   once per thread, answers kept in a bounded cache: `threads`), so threads survive a
//!   restart.
//! - **Approvals**: Block Kit with the exact action as `plain_text` (never mrkdwn) and
//!   Approve / Deny buttons whose values are signed for the conversation
//!   (`boxedclaw_channels::button`); after a decision the message is updated to say who
//!   decided what and the buttons go. With [`SlackSettings::approvers_channel`] every prompt
//!   is also posted there, with buttons signed for the original conversation; a click on
//!   that copy counts as a click in the conversation, and both messages are updated.
//! - **Admin**: `/boxedclaw status|agents|…`, answered ephemerally through the command's
//!   `response_url`.
//! - **Output** (`outbound`): `&`, `<`, `>` escaped so `<!channel>`, `<!here>` and `<@U…>`
//!   in agent output are shown, not acted on; unfurling off; chunked; progress by
//!   `chat.update` at a bounded rate; 429 `Retry-After` honoured per request.
#![forbid(unsafe_code)]

#[cfg(feature = "test-utils")]
pub mod fake;
mod http;
mod inbound;
mod outbound;
mod threads;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use boxedclaw_channels::button::ButtonSigner;
use boxedclaw_channels::dedup::RecentIds;
use boxedclaw_channels::render::ResumePoints;
use boxedclaw_channels::{
    BoxFuture, Capabilities, ChannelAdapter, ChannelContext, ChannelError, InboundEvent,
    OutboundAction, Secret,
};
use boxedclaw_protocol::channel::InboundMessage;
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use dashmap::DashMap;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::mpsc;

use crate::inbound::{BotIdentity, Intake};
use crate::threads::ThreadCache;

/// Longest text of one message this adapter sends, in characters (Slack truncates beyond
/// 40,000 and advises staying under 4,000).
pub const MAX_TEXT_LEN: usize = 3900;
/// A request is tried this often when Slack answers 429.
const MAX_ATTEMPTS: u32 = 5;
/// Longest `Retry-After` honoured inside one delivery.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Events waiting between the HTTP endpoint and the adapter.
const HTTP_QUEUE: usize = 256;
/// A click's or command's `response_url` is used for its answer for this long.
const RESPONSE_URL_TTL: Duration = Duration::from_secs(600);
/// Tries of a side request (a thread lookup, an approval's copy for approvers): it holds up
/// the intake or the conversation's deliveries, so a long rate limit is not waited out.
const SIDE_ATTEMPTS: u32 = 2;
/// Longest `Retry-After` waited out for a side request.
const SIDE_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The client type: slack-morphism over hyper with rustls, accepting `http://` so
/// `SLACK_API_URL` can point at a local server.
type Client = SlackHyperClient;

/// How the adapter is configured.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// `SLACK_BOT_TOKEN` (`xoxb-…`): Web API calls.
    pub bot_token: Arc<Secret>,
    /// `SLACK_APP_TOKEN` (`xapp-…`): Socket Mode. Without it, events come over HTTP.
    pub app_token: Option<Arc<Secret>>,
    /// `SLACK_SIGNING_SECRET`: required for the HTTP endpoints.
    pub signing_secret: Option<Arc<Secret>>,
    /// `SLACK_API_URL`: another Web API base (tests, proxies); default `https://slack.com/api`.
    pub api_url: Option<String>,
    /// Route prefix of the HTTP endpoints on the gateway's server: `<prefix>/events`,
    /// `<prefix>/interactions`, `<prefix>/commands`.
    pub http_prefix: String,
    /// Progress updates of one message come at most this often.
    pub progress_interval: Duration,
    /// Socket Mode: first reconnect delay, in seconds.
    pub reconnect_backoff_secs: u64,
    /// `SLACK_APPROVERS_CHANNEL`: a channel id (`C…`) where every approval prompt is also
    /// posted, for approvers to decide there.
    pub approvers_channel: Option<String>,
}

impl SlackSettings {
    /// Socket Mode when `app_token` is given, else HTTP; defaults for the rest.
    pub fn new(
        bot_token: Arc<Secret>,
        app_token: Option<Arc<Secret>>,
        signing_secret: Option<Arc<Secret>>,
        api_url: Option<String>,
    ) -> Self {
        Self {
            bot_token,
            app_token,
            signing_secret,
            api_url,
            http_prefix: "/slack".to_owned(),
            progress_interval: Duration::from_secs(2),
            reconnect_backoff_secs: 1,
            approvers_channel: None,
        }
    }
}

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("slack: {0}")]
pub struct SetupError(String);

/// The Slack adapter.
pub struct SlackChannel {
    client: Arc<Client>,
    token: SlackApiToken,
    settings: SlackSettings,
    signer: ButtonSigner,
    me: OnceLock<BotIdentity>,
    /// Whether channel threads are the bot's, as far as known (Slack is asked otherwise).
    threads: Mutex<ThreadCache>,
    /// Where each approval prompt is (`channel`, `ts`, plain text), and its copy in the
    /// approvers' channel.
    prompts: DashMap<ApprovalId, Prompt>,
    /// The approvers'-channel copies of pending prompts, by (`channel`, `ts`): the
    /// conversation a click on one counts for.
    copies: DashMap<(String, String), ConversationKey>,
    /// The progress message of each conversation's current turn.
    progress: DashMap<ConversationKey, Progress>,
    /// `response_url`s of recent clicks and slash commands, for private answers.
    responders: Mutex<Vec<Responder>>,
    /// Pieces of a long reply already delivered, so a retried reply does not repeat them.
    partial: ResumePoints,
    recent: Mutex<RecentIds<String>>,
    http_tx: mpsc::Sender<Taken>,
    http_rx: Mutex<Option<mpsc::Receiver<Taken>>>,
}

impl std::fmt::Debug for SlackChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackChannel")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Prompt {
    channel: String,
    ts: String,
    text: String,
    /// Its copy in the approvers' channel, if one was posted.
    copy: Option<Posted>,
}

/// A message the adapter posted and may update: where, and its plain text.
#[derive(Debug, Clone)]
struct Posted {
    channel: String,
    ts: String,
    text: String,
}

/// An event taken in from Slack, before it goes to the gateway.
#[derive(Debug)]
pub(crate) enum Taken {
    /// For the gateway as it is.
    Ready(InboundEvent),
    /// A message without a mention in a channel thread the adapter knows nothing of yet: for
    /// the gateway only if Slack says the thread is the bot's.
    InThread(InboundMessage),
}

#[derive(Debug, Clone)]
struct Progress {
    ts: String,
    updated: Instant,
}

#[derive(Debug)]
struct Responder {
    conversation: ConversationKey,
    user: UserRef,
    approval: Option<ApprovalId>,
    url: String,
    at: Instant,
}

/// What the Socket Mode callbacks (plain `fn`s in slack-morphism) reach through its user
/// state.
#[derive(Clone)]
struct ListenerState {
    adapter: Arc<SlackChannel>,
    ctx: ChannelContext,
}

impl SlackChannel {
    /// Builds the adapter; nothing is contacted until [`ChannelAdapter::run`].
    ///
    /// # Errors
    /// [`SetupError`] when neither Socket Mode nor HTTP mode is configured, or TLS roots are
    /// unavailable.
    pub fn new(settings: SlackSettings) -> Result<Arc<Self>, SetupError> {
        if settings.app_token.is_none() && settings.signing_secret.is_none() {
            return Err(SetupError(
                "set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (Events API over HTTP)"
                    .into(),
            ));
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| SetupError(format!("TLS roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let mut connector = SlackClientHyperConnector::with_connector(https);
        if let Some(url) = &settings.api_url {
            connector = connector.with_slack_api_url(url);
        }
        let token = SlackApiToken::new(SlackApiTokenValue(settings.bot_token.expose().to_owned()));
        let (http_tx, http_rx) = mpsc::channel(HTTP_QUEUE);
        Ok(Arc::new(Self {
            client: Arc::new(SlackClient::new(connector)),
            token,
            signer: ButtonSigner::from_token(Platform::Slack, settings.bot_token.expose()),
            settings,
            me: OnceLock::new(),
            threads: Mutex::new(ThreadCache::default()),
            prompts: DashMap::new(),
            copies: DashMap::new(),
            progress: DashMap::new(),
            responders: Mutex::new(Vec::new()),
            partial: ResumePoints::default(),
            recent: Mutex::new(RecentIds::default()),
            http_tx,
            http_rx: Mutex::new(Some(http_rx)),
        }))
    }

    /// The Events API, interactivity and slash-command endpoints for the gateway's HTTP
    /// server; `None` without a signing secret.
    pub fn http_router(self: &Arc<Self>) -> Option<axum::Router> {
        let secret = self.settings.signing_secret.clone()?;
        Some(http::router(
            &self.settings.http_prefix,
            secret,
            self.clone(),
        ))
    }

    /// A Web API session with the bot token.
    fn session(&self) -> SlackClientSession<'_, SlackClientHyperHttpsConnector> {
        self.client.open_session(&self.token)
    }

    /// Runs the request `f` makes, waiting and retrying when Slack answers 429.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ChannelError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ClientResult<T>>,
    {
        self.call_bounded(f, MAX_ATTEMPTS, MAX_RETRY_AFTER).await
    }

    /// As [`call`](Self::call), with at most `attempts` tries and waits of at most
    /// `max_wait`; beyond those the 429 is returned as [`ChannelError::RateLimited`].
    async fn call_bounded<T, F, Fut>(
        &self,
        f: F,
        attempts: u32,
        max_wait: Duration,
    ) -> Result<T, ChannelError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ClientResult<T>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(out) => return Ok(out),
                Err(SlackClientError::RateLimitError(e)) => {
                    let wait = e.retry_after.unwrap_or(Duration::from_secs(1));
                    if attempt >= attempts || wait > max_wait {
                        return Err(ChannelError::RateLimited { retry_after: wait });
                    }
                    tracing::info!(
                        platform = "slack",
                        wait_ms = wait.as_millis() as u64,
                        attempt,
                        "rate limited; waiting"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(channel_error(e)),
            }
        }
    }

    /// `auth.test`, retried with backoff until it works or shutdown.
    async fn identify(&self, ctx: &ChannelContext) -> Result<BotIdentity, ChannelError> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let result = tokio::select! {
                r = self.call(|| async { self.session().auth_test().await }) => r,
                () = ctx.shutdown.cancelled() => return Err(ChannelError::Closed),
            };
            match result {
                Ok(me) => {
                    return Ok(BotIdentity {
                        user: me.user_id.0,
                        bot_id: me.bot_id.map(|b| b.0),
                    });
                }
                Err(e @ ChannelError::Auth(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(platform = "slack", error = %e, "auth.test failed; retrying in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = ctx.shutdown.cancelled() => return Err(ChannelError::Closed),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Drops re-deliveries (Socket Mode re-sends after a reconnect, HTTP retries).
    fn first_sighting(&self, id: &str) -> bool {
        self.recent
            .lock()
            .map(|mut r| r.first(id.to_owned()))
            .unwrap_or(true)
    }

    fn remember_responder(
        &self,
        conversation: &ConversationKey,
        user: &UserRef,
        approval: Option<&ApprovalId>,
        url: Option<String>,
    ) {
        let Some(url) = url else { return };
        if let Ok(mut r) = self.responders.lock() {
            r.retain(|x| x.at.elapsed() < RESPONSE_URL_TTL);
            r.push(Responder {
                conversation: conversation.clone(),
                user: user.clone(),
                approval: approval.cloned(),
                url,
                at: Instant::now(),
            });
        }
    }

    /// Takes in an Events API callback: `None` when it is nothing for the gateway (or a
    /// re-delivery), else the event, or a thread message still to be [settled](Self::settle).
    /// Cheap and without I/O, so the HTTP endpoint can answer Slack at once.
    pub(crate) fn intake_push(&self, ev: &SlackPushEventCallback) -> Option<Taken> {
        let me = self.me.get()?;
        match inbound::push_event(ev, me) {
            Intake::Message { message } => {
                if !self.first_sighting(&message.id) {
                    return None;
                }
                if let Some(thread) = &message.conversation.thread {
                    // A mention starts a thread or joins one: either way the thread is ours.
                    self.remember_thread(&message.conversation.channel, thread, true);
                }
                Some(Taken::Ready(InboundEvent::Message(message)))
            }
            Intake::ThreadReply { message } => {
                if !self.first_sighting(&message.id) {
                    return None;
                }
                let thread = message.conversation.thread.as_deref()?;
                match self.known_thread(&message.conversation.channel, thread) {
                    Some(true) => Some(Taken::Ready(InboundEvent::Message(message))),
                    Some(false) => None,
                    None => Some(Taken::InThread(message)),
                }
            }
            _ => None,
        }
    }

    /// The event for the gateway, if any: a thread message goes on only when its thread is
    /// the bot's, asking Slack when that is not known yet.
    pub(crate) async fn settle(&self, taken: Taken) -> Option<InboundEvent> {
        match taken {
            Taken::Ready(event) => Some(event),
            Taken::InThread(message) => {
                let thread = message.conversation.thread.as_deref()?;
                self.thread_is_ours(&message.conversation.channel, thread)
                    .await
                    .then_some(InboundEvent::Message(message))
            }
        }
    }

    /// Turns an Events API callback into an inbound event, if it is one.
    pub(crate) async fn accept_push(&self, ev: &SlackPushEventCallback) -> Option<InboundEvent> {
        let taken = self.intake_push(ev)?;
        self.settle(taken).await
    }

    fn known_thread(&self, channel: &str, thread: &str) -> Option<bool> {
        self.threads.lock().ok()?.get(channel, thread)
    }

    fn remember_thread(&self, channel: &str, thread: &str, ours: bool) {
        if let Ok(mut t) = self.threads.lock() {
            t.remember(channel, thread, ours);
        }
    }

    /// Whether the thread `thread` of `channel` is the bot's: known, or asked of Slack (the
    /// thread's parent, `conversations.replies` with `limit=1`) and remembered.
    async fn thread_is_ours(&self, channel: &str, thread: &str) -> bool {
        if let Some(known) = self.known_thread(channel, thread) {
            return known;
        }
        let Some(me) = self.me.get() else {
            return false;
        };
        let req = SlackApiConversationsRepliesRequest::new(
            SlackChannelId(channel.to_owned()),
            SlackTs(thread.to_owned()),
        )
        .with_limit(1);
        let answer = self
            .call_bounded(
                || async { self.session().conversations_replies(&req).await },
                SIDE_ATTEMPTS,
                SIDE_MAX_RETRY_AFTER,
            )
            .await;
        match answer {
            Ok(replies) => {
                let ours = replies
                    .messages
                    .iter()
                    .find(|m| m.origin.ts.0 == thread)
                    .is_some_and(|parent| me.owns_thread_of(parent));
                tracing::debug!(
                    platform = "slack",
                    channel,
                    thread,
                    ours,
                    "thread looked up"
                );
                self.remember_thread(channel, thread, ours);
                ours
            }
            Err(e) => {
                // Not ours when Slack cannot tell us: answering unverified threads would let
                // chatter reach an agent, and a mention always gets through. Logged, so the
                // dropped message is not silent. Slack's own refusals (`thread_not_found`,
                // `not_in_channel`, `missing_scope`) are remembered so they cost one call per
                // thread; transport errors and rate limits are not, so a later message asks
                // again.
                tracing::warn!(
                    platform = "slack",
                    channel,
                    thread,
                    error = %e,
                    "could not tell whether a thread is the bot's; its message is ignored"
                );
                if matches!(e, ChannelError::Platform(_)) {
                    self.remember_thread(channel, thread, false);
                }
                false
            }
        }
    }

    /// Turns a click into a decision, or answers a refused one.
    pub(crate) async fn accept_interaction(
        &self,
        ev: &SlackInteractionEvent,
    ) -> Option<InboundEvent> {
        let SlackInteractionEvent::BlockActions(click) = ev else {
            return None;
        };
        if !self.first_sighting(&format!("click:{}", click.trigger_id.0)) {
            return None;
        }
        let copy_of = |channel: &str, ts: &str| {
            self.copies
                .get(&(channel.to_owned(), ts.to_owned()))
                .map(|c| c.clone())
        };
        match inbound::click(click, &self.signer, copy_of) {
            Intake::Click {
                decision,
                response_url,
            } => {
                self.remember_responder(
                    &decision.conversation,
                    &decision.user,
                    Some(&decision.approval),
                    response_url,
                );
                Some(InboundEvent::ApprovalDecision(decision))
            }
            Intake::RefusedClick { response_url } => {
                tracing::warn!(
                    platform = "slack",
                    "click with button data not signed for its conversation refused"
                );
                if let Some(url) = response_url {
                    self.respond(&url, "This button is not valid here.").await;
                }
                None
            }
            _ => None,
        }
    }

    /// Turns `/boxedclaw …` into an admin command.
    pub(crate) fn accept_command(&self, ev: &SlackCommandEvent) -> Option<InboundEvent> {
        if !self.first_sighting(&format!("command:{}", ev.trigger_id.0)) {
            return None;
        }
        let event = inbound::slash_command(ev)?;
        if let InboundEvent::Command(m) | InboundEvent::Message(m) = &event {
            self.remember_responder(
                &m.conversation,
                &m.user,
                None,
                Some(ev.response_url.0.to_string()),
            );
        }
        Some(event)
    }

    /// Queues an event received over HTTP for `run` to settle and hand to the gateway.
    pub(crate) async fn queue_from_http(&self, taken: Taken) -> bool {
        self.http_tx.send(taken).await.is_ok()
    }

    async fn run_socket_mode(
        self: Arc<Self>,
        app_token: Arc<Secret>,
        ctx: ChannelContext,
    ) -> Result<(), ChannelError> {
        let callbacks = SlackSocketModeListenerCallbacks::new()
            .with_hello_events(on_hello)
            .with_push_events(on_push)
            .with_interaction_events(on_interaction)
            .with_command_events(on_command);
        let env = Arc::new(
            SlackClientEventsListenerEnvironment::new(self.client.clone())
                .with_error_handler(on_error)
                .with_user_state(ListenerState {
                    adapter: self.clone(),
                    ctx: ctx.clone(),
                }),
        );
        let config = SlackClientSocketModeConfig::new()
            .with_max_connections_count(1)
            .with_initial_backoff_in_seconds(self.settings.reconnect_backoff_secs);
        let listener = SlackClientSocketModeListener::new(&config, env, callbacks);
        let token = SlackApiToken::new(SlackApiTokenValue(app_token.expose().to_owned()));
        listener.listen_for(&token).await.map_err(channel_error)?;
        listener.start().await;
        tracing::info!(platform = "slack", "Socket Mode started");
        ctx.shutdown.cancelled().await;
        listener.shutdown().await;
        Ok(())
    }

    async fn run_http(&self, ctx: ChannelContext) -> Result<(), ChannelError> {
        let Some(mut rx) = self.http_rx.lock().ok().and_then(|mut r| r.take()) else {
            return Err(ChannelError::Platform("HTTP intake already running".into()));
        };
        ctx.ready.cancel();
        tracing::info!(platform = "slack", prefix = %self.settings.http_prefix, "receiving events over HTTP");
        loop {
            let taken = tokio::select! {
                taken = rx.recv() => match taken {
                    Some(taken) => taken,
                    None => return Ok(()),
                },
                () = ctx.shutdown.cancelled() => return Ok(()),
            };
            // Settled here, in arrival order, so Slack had its answer before any lookup.
            let event = tokio::select! {
                event = self.settle(taken) => event,
                () = ctx.shutdown.cancelled() => return Ok(()),
            };
            if let Some(event) = event
                && ctx.inbound.send(event).await.is_err()
            {
                return Ok(());
            }
        }
    }
}

fn channel_error(e: SlackClientError) -> ChannelError {
    match e {
        SlackClientError::RateLimitError(e) => ChannelError::RateLimited {
            retry_after: e.retry_after.unwrap_or(Duration::from_secs(1)),
        },
        SlackClientError::ApiError(e)
            if matches!(
                e.code.as_str(),
                "invalid_auth" | "not_authed" | "account_inactive" | "token_revoked"
            ) =>
        {
            ChannelError::Auth(e.code)
        }
        SlackClientError::ApiError(e) => ChannelError::Platform(e.code),
        SlackClientError::HttpError(e) => ChannelError::Transport(e.to_string()),
        other => ChannelError::Transport(other.to_string()),
    }
}

async fn listener_state(states: &SlackClientEventsUserState) -> Option<ListenerState> {
    states
        .read()
        .await
        .get_user_state::<ListenerState>()
        .cloned()
}

/// Socket Mode's `hello`: connected. (Generic over the event type, which slack-morphism
/// does not export by name.)
async fn on_hello<Hello>(_ev: Hello, _client: Arc<Client>, states: SlackClientEventsUserState) {
    if let Some(st) = listener_state(&states).await {
        tracing::info!(platform = "slack", "Socket Mode connected");
        st.ctx.ready.cancel();
    }
}

/// Socket Mode acknowledges an envelope after its callback returns, so an event is handed
/// to the gateway before Slack considers it delivered.
async fn on_push(
    ev: SlackPushEventCallback,
    _client: Arc<Client>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    if let Some(st) = listener_state(&states).await
        && let Some(event) = st.adapter.accept_push(&ev).await
    {
        st.ctx.inbound.send(event).await?;
    }
    Ok(())
}

async fn on_interaction(
    ev: SlackInteractionEvent,
    _client: Arc<Client>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    if let Some(st) = listener_state(&states).await
        && let Some(event) = st.adapter.accept_interaction(&ev).await
    {
        st.ctx.inbound.send(event).await?;
    }
    Ok(())
}

async fn on_command(
    ev: SlackCommandEvent,
    _client: Arc<Client>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    if let Some(st) = listener_state(&states).await
        && let Some(event) = st.adapter.accept_command(&ev)
    {
        st.ctx.inbound.send(event).await?;
    }
    // The ack is shown to the user alone; the answer follows through the response URL.
    Ok(SlackCommandEventResponse::new(
        SlackMessageContent::new().with_text("Working on it…".into()),
    )
    .with_response_type(SlackMessageResponseType::Ephemeral))
}

fn on_error(
    err: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<Client>,
    _states: SlackClientEventsUserState,
) -> HttpStatusCode {
    tracing::warn!(platform = "slack", error = %err, "Socket Mode event not handed over");
    // Not acknowledged: Slack re-delivers it after the reconnect.
    HttpStatusCode::SERVICE_UNAVAILABLE
}

impl ChannelAdapter for SlackChannel {
    fn platform(&self) -> Platform {
        Platform::Slack
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            buttons: true,
            threads: true,
            edits: true,
            ephemeral: true,
            max_text_len: MAX_TEXT_LEN,
        }
    }

    fn run(self: Arc<Self>, ctx: ChannelContext) -> BoxFuture<'static, Result<(), ChannelError>> {
        Box::pin(async move {
            let me = match self.identify(&ctx).await {
                Ok(me) => me,
                Err(ChannelError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            tracing::info!(platform = "slack", bot = %me.user, "connected");
            let _ = self.me.set(me);
            match self.settings.app_token.clone() {
                Some(app_token) => {
                    // HTTP endpoints (if configured) feed the same intake.
                    let http = self.clone();
                    let http_ctx = ChannelContext {
                        ready: tokio_util::sync::CancellationToken::new(),
                        ..ctx.clone()
                    };
                    let (socket, http) = tokio::join!(
                        self.clone().run_socket_mode(app_token, ctx),
                        http.run_http(http_ctx)
                    );
                    http?;
                    socket
                }
                None => self.run_http(ctx).await,
            }
        })
    }

    fn deliver(&self, action: OutboundAction) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(self.render(action))
    }
}

#[cfg(all(test, feature = "test-utils"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::fake::FakeSlack;
    use tokio_util::sync::CancellationToken;

    const BOT: &str = "xoxb-unit-bot";
    const APP: &str = "xapp-unit-app";
    const SIGNING: &str = "unit-signing-secret";
    const WAIT: Duration = Duration::from_secs(30);

    /// The adapter running as the gateway runs it, its inbound events in `rx`.
    struct Running {
        adapter: Arc<SlackChannel>,
        rx: mpsc::Receiver<InboundEvent>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), ChannelError>>,
    }

    impl Running {
        async fn start(fake: &FakeSlack, socket: bool) -> Self {
            Self::start_with(fake, socket, None).await
        }

        async fn start_with(fake: &FakeSlack, socket: bool, approvers: Option<&str>) -> Self {
            let mut settings = SlackSettings::new(
                Arc::new(Secret::new(BOT.to_owned())),
                socket.then(|| Arc::new(Secret::new(APP.to_owned()))),
                (!socket).then(|| Arc::new(Secret::new(SIGNING.to_owned()))),
                Some(fake.api_url()),
            );
            settings.reconnect_backoff_secs = 0;
            settings.approvers_channel = approvers.map(str::to_owned);
            let adapter = SlackChannel::new(settings).unwrap();
            let (tx, rx) = mpsc::channel(16);
            let ctx = ChannelContext {
                inbound: tx,
                shutdown: CancellationToken::new(),
                ready: CancellationToken::new(),
            };
            let task = tokio::spawn(adapter.clone().run(ctx.clone()));
            tokio::time::timeout(WAIT, ctx.ready.cancelled())
                .await
                .expect("ready in time");
            Self {
                adapter,
                rx,
                shutdown: ctx.shutdown,
                task,
            }
        }

        /// The next message handed to the gateway.
        async fn next(&mut self) -> InboundMessage {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(InboundEvent::Message(m))) => m,
                other => panic!("expected a message, got {other:?}"),
            }
        }

        /// The next event, which must be an approval decision.
        async fn next_decision(&mut self) -> boxedclaw_protocol::channel::ApprovalDecision {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(InboundEvent::ApprovalDecision(d))) => d,
                other => panic!("expected a decision, got {other:?}"),
            }
        }

        /// The next message, which must be the DM `text` of `user`: everything Slack sent
        /// before it and the adapter did not hand over was dropped (Socket Mode envelopes are
        /// handled one at a time, in order).
        async fn next_is_marker(&mut self, fake: &FakeSlack, user: &str, text: &str) {
            fake.dm(user, text);
            let m = self.next().await;
            assert_eq!(m.text, text, "something came before the marker: {m:?}");
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(WAIT, self.task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    fn lookups(fake: &FakeSlack) -> Vec<crate::fake::Call> {
        fake.calls()
            .into_iter()
            .filter(|c| c.method == "conversations.replies")
            .collect()
    }

    fn conversation(channel: &str, thread: Option<&str>) -> ConversationKey {
        ConversationKey::new(Platform::Slack, Some(FakeSlack::TEAM), channel, thread).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_adapter_asks_slack_once_per_unknown_thread() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut first = Running::start(&fake, true).await;
        let root = fake.mention("C1", "U1", "start");
        assert_eq!(
            first.next().await.conversation,
            conversation("C1", Some(&root))
        );
        // Acknowledged, so Slack does not hand the mention to the next adapter again.
        fake.wait_until(WAIT, "the mention acknowledged", |f| {
            (f.pending_envelopes() == 0).then_some(())
        })
        .await;
        first.stop().await;

        // No memory of the thread: Slack is asked, once.
        let mut a = Running::start(&fake, true).await;
        fake.thread_message("C1", &root, "U1", "follow-up");
        let m = a.next().await;
        assert_eq!(
            (m.conversation, m.text.as_str()),
            (conversation("C1", Some(&root)), "follow-up")
        );
        fake.thread_message("C1", &root, "U2", "another");
        assert_eq!(a.next().await.text, "another");
        let asked = lookups(&fake);
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!(asked[0].body["ts"], root.as_str());
        assert_eq!(asked[0].body["limit"], "1");

        // Somebody else's thread: asked once, dropped, remembered.
        let chatter = fake.channel_message("C1", "U3", "lunch?");
        fake.thread_message("C1", &chatter, "U4", "yes");
        fake.thread_message("C1", &chatter, "U3", "noon");
        a.next_is_marker(&fake, "U9", "marker one").await;
        assert_eq!(lookups(&fake).len(), 2);

        // A thread under the bot's own top-level post is the bot's.
        a.adapter
            .deliver(OutboundAction::Post {
                conversation: conversation("C1", None),
                text: "announcement".into(),
            })
            .await
            .unwrap();
        let post = fake.messages("C1").last().unwrap().ts.clone();
        fake.thread_message("C1", &post, "U5", "about that");
        assert_eq!(a.next().await.conversation, conversation("C1", Some(&post)));

        // A mention in somebody else's thread makes it the bot's from then on.
        fake.thread_mention("C1", &chatter, "U3", "join us");
        assert_eq!(a.next().await.text, "join us");
        fake.thread_message("C1", &chatter, "U4", "welcome");
        assert_eq!(a.next().await.text, "welcome");
        assert_eq!(lookups(&fake).len(), 3);
        a.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_lookup_drops_the_message_and_only_slacks_refusals_are_remembered() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut a = Running::start(&fake, true).await;
        // Slack does not know the thread: `thread_not_found`, remembered as not ours.
        fake.thread_message("C2", "1600000000.000001", "U1", "lost");
        fake.thread_message("C2", "1600000000.000001", "U1", "lost again");
        a.next_is_marker(&fake, "U9", "marker one").await;
        let asked = lookups(&fake);
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert!(asked[0].rejected);

        // A rate limit longer than a lookup waits: dropped, not remembered, asked again.
        a.adapter
            .deliver(OutboundAction::Post {
                conversation: conversation("C2", None),
                text: "root post".into(),
            })
            .await
            .unwrap();
        let post = fake.messages("C2").last().unwrap().ts.clone();
        fake.rate_limit_next("conversations.replies", 30);
        fake.thread_message("C2", &post, "U1", "during the limit");
        a.next_is_marker(&fake, "U9", "marker two").await;
        fake.thread_message("C2", &post, "U1", "after the limit");
        assert_eq!(a.next().await.text, "after the limit");
        let asked = lookups(&fake);
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert!(asked[1].rejected && !asked[2].rejected);
        a.stop().await;
    }

    /// Over HTTP the lookup happens after Slack got its answer, and in arrival order.
    #[tokio::test(flavor = "multi_thread")]
    async fn http_intake_looks_threads_up_after_answering() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut a = Running::start(&fake, false).await;
        let router = a.adapter.http_router().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let post = |body: serde_json::Value| async move {
            let body = body.to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let signature = FakeSlack::sign(SIGNING, now, body.as_bytes());
            let request = format!(
                "POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 X-Slack-Request-Timestamp: {now}\r\nX-Slack-Signature: {signature}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        };
        let mention = fake.mention_event_body("C3", "U1", "over http");
        let root = mention["event"]["ts"].as_str().unwrap().to_owned();
        post(mention).await;
        assert_eq!(a.next().await.text, "over http");
        // A fresh adapter would not know the thread; drop this one's memory the same way.
        *a.adapter.threads.lock().unwrap() = ThreadCache::default();
        post(fake.thread_message_event_body("C3", &root, "U1", "follow-up over http")).await;
        let m = a.next().await;
        assert_eq!(
            (m.conversation, m.text.as_str()),
            (conversation("C3", Some(&root)), "follow-up over http")
        );
        assert_eq!(lookups(&fake).len(), 1);
        a.stop().await;
    }

    fn approval(conversation: &ConversationKey) -> boxedclaw_protocol::channel::ApprovalPrompt {
        boxedclaw_protocol::channel::ApprovalPrompt {
            conversation: conversation.clone(),
            approval: ApprovalId::new("c0ffee000001".to_owned()).unwrap(),
            requester: UserRef::new(Platform::Slack, "U1").unwrap(),
            action: "shell: rm -rf /workspace/<b>".into(),
            reason: "tidy up".into(),
            expires_in_secs: 600,
        }
    }

    fn resolve(p: &boxedclaw_protocol::channel::ApprovalPrompt, by: &str) -> OutboundAction {
        OutboundAction::ResolveApproval {
            conversation: p.conversation.clone(),
            approval: p.approval.clone(),
            outcome: boxedclaw_protocol::channel::ApprovalOutcome::Approved,
            by: Some(UserRef::new(Platform::Slack, by).unwrap()),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_click_on_the_approvers_copy_counts_for_the_conversation() {
        let fake = FakeSlack::start(BOT, APP).await;
        let mut a = Running::start_with(&fake, true, Some("C0APPR")).await;
        let root = fake.mention("C4", "U1", "do it");
        let here = a.next().await.conversation;
        let p = approval(&here);
        a.adapter
            .deliver(OutboundAction::RequestApproval(p.clone()))
            .await
            .unwrap();
        let prompt = fake.messages("C4").pop().unwrap();
        let copy = fake.messages("C0APPR").pop().unwrap();
        assert_eq!(prompt.thread_ts.as_deref(), Some(root.as_str()));
        assert_eq!(copy.thread_ts, None);
        assert_eq!(copy.buttons, prompt.buttons, "signed for the conversation");
        let shown = copy.shown_text();
        assert!(
            shown.starts_with(&format!("Asked by slack:U1 in channel C4, thread {root}"))
                && shown.ends_with(&prompt.shown_text())
                && shown.contains("rm -rf /workspace/<b>"),
            "{shown}"
        );
        assert!(
            copy.text.contains("&lt;b&gt;"),
            "escaped fallback: {}",
            copy.text
        );

        let approve = copy.buttons[0].clone();
        fake.click("U7", "C0APPR", &copy.ts, &approve.action_id, &approve.value);
        let d = a.next_decision().await;
        assert_eq!(
            (&d.conversation, &d.approval, d.approve),
            (&here, &p.approval, true)
        );
        assert_eq!(d.user.id(), "U7");
        fake.click("U8", "C4", &prompt.ts, &approve.action_id, &approve.value);
        assert_eq!(a.next_decision().await.conversation, here);

        a.adapter.deliver(resolve(&p, "U7")).await.unwrap();
        for m in [
            fake.messages("C4").pop().unwrap(),
            fake.messages("C0APPR").pop().unwrap(),
        ] {
            assert!(m.buttons.is_empty(), "{m:?}");
            assert!(
                m.shown_text()
                    .ends_with("approved by slack:U7; it ran once."),
                "{m:?}"
            );
        }
        // The copy counts no more: a late click on it is refused like a forged one.
        fake.click("U7", "C0APPR", &copy.ts, &approve.action_id, &approve.value);
        fake.wait_until(WAIT, "the refusal", |f| {
            f.ephemerals()
                .into_iter()
                .find(|(u, t)| u == "U7" && t.contains("not valid here"))
        })
        .await;
        a.next_is_marker(&fake, "U9", "marker").await;
        a.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_copy_leaves_the_prompt_in_the_conversation() {
        let fake = FakeSlack::start(BOT, APP).await;
        // Not a channel id: Slack answers `channel_not_found`.
        let mut a = Running::start_with(&fake, true, Some("#approvers")).await;
        fake.mention("C5", "U1", "do it");
        let here = a.next().await.conversation;
        let p = approval(&here);
        a.adapter
            .deliver(OutboundAction::RequestApproval(p.clone()))
            .await
            .expect("the prompt itself was posted");
        let prompt = fake.messages("C5").pop().unwrap();
        assert_eq!(prompt.buttons.len(), 2);
        let failed: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| c.method == "chat.postMessage" && c.rejected)
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].body["channel"], "#approvers");
        a.adapter.deliver(resolve(&p, "U1")).await.unwrap();
        assert!(fake.messages("C5").pop().unwrap().buttons.is_empty());
        a.stop().await;
    }
}
