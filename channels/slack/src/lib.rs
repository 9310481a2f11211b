//! The Slack channel: a [`ChannelAdapter`] on slack-morphism.
//!
//! - **Intake**: Socket Mode by default (`SLACK_APP_TOKEN`; no public URL needed), or the
//!   Events API over HTTP on the gateway's server ([`SlackChannel::http_router`]), where every
//!   request's `v0` signature (HMAC over timestamp and raw body, 5-minute window, constant
//!   time) is checked before the body is read, and the answer comes at once, before the work.
//! - **Mapping** (`inbound`): each thread is a conversation; a top-level mention starts a
//!   thread and the reply goes into it; DMs per user; the team id is part of the key.
//! - **Approvals**: Block Kit with the exact action as `plain_text` (never mrkdwn) and
//!   Approve / Deny buttons whose values are signed for the conversation
//!   (`boxedclaw_channels::button`); after a decision the message is updated to say who
//!   decided what and the buttons go.
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

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use boxedclaw_channels::button::ButtonSigner;
use boxedclaw_channels::dedup::RecentIds;
use boxedclaw_channels::render::ResumePoints;
use boxedclaw_channels::{
    BoxFuture, Capabilities, ChannelAdapter, ChannelContext, ChannelError, InboundEvent,
    OutboundAction, Secret,
};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use dashmap::{DashMap, DashSet};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::mpsc;

use crate::inbound::{BotIdentity, Intake};

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
    /// Channel threads the bot is part of (`channel`, `thread_ts`).
    threads: DashSet<(String, String)>,
    /// Where each approval prompt is (`channel`, `ts`, plain text).
    prompts: DashMap<ApprovalId, Prompt>,
    /// The progress message of each conversation's current turn.
    progress: DashMap<ConversationKey, Progress>,
    /// `response_url`s of recent clicks and slash commands, for private answers.
    responders: Mutex<Vec<Responder>>,
    /// Pieces of a long reply already delivered, so a retried reply does not repeat them.
    partial: ResumePoints,
    recent: Mutex<RecentIds<String>>,
    http_tx: mpsc::Sender<InboundEvent>,
    http_rx: Mutex<Option<mpsc::Receiver<InboundEvent>>>,
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
            threads: DashSet::new(),
            prompts: DashMap::new(),
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
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(out) => return Ok(out),
                Err(SlackClientError::RateLimitError(e)) => {
                    let wait = e.retry_after.unwrap_or(Duration::from_secs(1));
                    if attempt >= MAX_ATTEMPTS || wait > MAX_RETRY_AFTER {
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
                    return Ok(BotIdentity { user: me.user_id.0 });
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

    /// Turns an Events API callback into an inbound event, if it is one.
    pub(crate) fn accept_push(&self, ev: &SlackPushEventCallback) -> Option<InboundEvent> {
        let me = self.me.get()?;
        let known = |channel: &str, thread: &str| {
            self.threads
                .contains(&(channel.to_owned(), thread.to_owned()))
        };
        match inbound::push_event(ev, me, known) {
            Intake::Message {
                message,
                starts_thread,
            } => {
                if !self.first_sighting(&message.id) {
                    return None;
                }
                if let Some(thread) = &message.conversation.thread {
                    // Mentions inside a thread also make it ours.
                    self.threads
                        .insert((message.conversation.channel.clone(), thread.clone()));
                }
                let _ = starts_thread;
                Some(InboundEvent::Message(message))
            }
            _ => None,
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
        match inbound::click(click, &self.signer) {
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

    /// Queues an event received over HTTP for `run` to hand to the gateway.
    pub(crate) async fn queue_from_http(&self, event: InboundEvent) -> bool {
        self.http_tx.send(event).await.is_ok()
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
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => if ctx.inbound.send(event).await.is_err() { return Ok(()) },
                    None => return Ok(()),
                },
                () = ctx.shutdown.cancelled() => return Ok(()),
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
        && let Some(event) = st.adapter.accept_push(&ev)
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
