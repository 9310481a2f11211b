//! The Telegram channel: a [`ChannelAdapter`] on teloxide.
//!
//! - **Intake**: long polling by default (`getUpdates`, an update acknowledged only after it
//!   was handed to the gateway); or a webhook on the gateway's HTTP server ([`webhook_router`]),
//!   which checks `X-Telegram-Bot-Api-Secret-Token` before reading anything.
//! - **Mapping** (`inbound`): private chat → that user's conversation; group → one
//!   conversation, or one per forum topic; in groups only mentions, replies and commands.
//! - **Approvals**: an inline keyboard under a plain-text prompt showing the exact action;
//!   callback data signed per conversation (`boxedclaw_channels::button`); after a decision the prompt is
//!   edited to say who decided what and the keyboard goes.
//! - **Output** (`outbound`): plain text only (no `parse_mode`, so nothing the agent writes
//!   is markup), split at 4096 UTF-16 units, link previews off, typing indicator, progress by
//!   editing one message at a bounded rate, `retry_after` honoured per request.
//!
//! [`webhook_router`]: TelegramChannel::webhook_router
#![forbid(unsafe_code)]

#[cfg(feature = "test-utils")]
pub mod fake;
mod inbound;
mod outbound;
mod webhook;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use boxedclaw_channels::button::ButtonSigner;
use boxedclaw_channels::dedup::RecentIds;
use boxedclaw_channels::render::ResumePoints;
use boxedclaw_channels::{
    BoxFuture, Capabilities, ChannelAdapter, ChannelContext, ChannelError, OutboundAction, Secret,
};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use dashmap::DashMap;
use teloxide::Bot;
use teloxide::payloads::{GetUpdatesSetters, SetWebhookSetters};
use teloxide::requests::{Request, Requester};
use teloxide::types::{AllowedUpdate, BotCommand, ChatId, MessageId, Update};
use teloxide::{ApiError, RequestError};
use tokio::sync::mpsc;

use crate::inbound::{BotIdentity, Intake};

/// Telegram's longest message text, in UTF-16 code units.
pub const MAX_TEXT_LEN: usize = 4096;
/// Updates waiting between the webhook endpoint and the adapter.
const WEBHOOK_QUEUE: usize = 256;
/// A request is tried this often when Telegram answers `retry_after`.
const MAX_ATTEMPTS: u32 = 5;
/// Longest `retry_after` honoured inside a request; longer ones are handed to the gateway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A clicked button's spinner is answered at the latest after this long.
const CLICK_ANSWER_DEADLINE: Duration = Duration::from_secs(8);

/// How the adapter is configured.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    /// The bot token (`TELEGRAM_BOT_TOKEN`).
    pub token: Arc<Secret>,
    /// Another Bot API server (`TELEGRAM_API_URL`): a self-hosted one, or a fake in tests.
    pub api_url: Option<String>,
    /// Webhook mode instead of long polling.
    pub webhook: Option<WebhookSettings>,
    /// `getUpdates` long-poll timeout.
    pub poll_timeout: Duration,
    /// Progress edits of one message come at most this often.
    pub progress_interval: Duration,
}

impl TelegramSettings {
    /// Long polling against `api.telegram.org` (or `api_url`), with the defaults.
    pub fn new(token: Arc<Secret>, api_url: Option<String>) -> Self {
        Self {
            token,
            api_url,
            webhook: None,
            poll_timeout: Duration::from_secs(25),
            progress_interval: Duration::from_secs(2),
        }
    }
}

/// Webhook mode: Telegram POSTs updates to `public_url`, which the gateway's HTTP server
/// serves at `path`.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The HTTPS URL Telegram calls (registered with `setWebhook` at start).
    pub public_url: String,
    /// The route on the gateway's HTTP server, e.g. `/telegram/webhook`.
    pub path: String,
    /// Sent by Telegram in `X-Telegram-Bot-Api-Secret-Token`; a different secret from the
    /// bot token (1–256 characters of `A-Za-z0-9_-`).
    pub secret: Arc<Secret>,
}

/// Why the adapter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("telegram: {0}")]
pub struct SetupError(String);

/// The Telegram adapter.
pub struct TelegramChannel {
    bot: Bot,
    settings: TelegramSettings,
    signer: ButtonSigner,
    me: OnceLock<BotIdentity>,
    /// Where each approval prompt is, so a decision can edit it.
    prompts: DashMap<ApprovalId, Prompt>,
    /// The progress message of each conversation's current turn.
    progress: DashMap<ConversationKey, ProgressMessage>,
    /// Clicks whose spinner is not answered yet: answered with the outcome or a refusal.
    open_clicks: Mutex<Vec<OpenClick>>,
    /// Pieces of a long reply already delivered, so a retried reply does not repeat them.
    partial: ResumePoints,
    recent_updates: Mutex<RecentIds<u32>>,
    webhook_tx: mpsc::Sender<Update>,
    webhook_rx: Mutex<Option<mpsc::Receiver<Update>>>,
}

impl std::fmt::Debug for TelegramChannel {
    // By hand: teloxide's `Bot` prints its token in `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramChannel")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Prompt {
    chat: ChatId,
    message: MessageId,
    text: String,
}

#[derive(Debug, Clone, Copy)]
struct ProgressMessage {
    message: MessageId,
    edited: Instant,
}

#[derive(Debug)]
struct OpenClick {
    query_id: String,
    conversation: ConversationKey,
    approval: ApprovalId,
    user: UserRef,
    at: Instant,
}

impl TelegramChannel {
    /// Builds the adapter; nothing is contacted until [`ChannelAdapter::run`].
    ///
    /// # Errors
    /// [`SetupError`] for an unusable API URL or webhook setting.
    pub fn new(settings: TelegramSettings) -> Result<Arc<Self>, SetupError> {
        let mut bot = Bot::new(settings.token.expose());
        if let Some(url) = &settings.api_url {
            let url = url
                .parse()
                .map_err(|e| SetupError(format!("TELEGRAM_API_URL {url:?}: {e}")))?;
            bot = bot.set_api_url(url);
        }
        if let Some(w) = &settings.webhook {
            webhook::check_settings(w).map_err(SetupError)?;
        }
        let (webhook_tx, webhook_rx) = mpsc::channel(WEBHOOK_QUEUE);
        Ok(Arc::new(Self {
            signer: ButtonSigner::from_token(Platform::Telegram, settings.token.expose()),
            bot,
            settings,
            me: OnceLock::new(),
            prompts: DashMap::new(),
            progress: DashMap::new(),
            open_clicks: Mutex::new(Vec::new()),
            partial: ResumePoints::default(),
            recent_updates: Mutex::new(RecentIds::default()),
            webhook_tx,
            webhook_rx: Mutex::new(Some(webhook_rx)),
        }))
    }

    /// The route Telegram POSTs updates to in webhook mode, to merge into the gateway's HTTP
    /// server; `None` in polling mode.
    pub fn webhook_router(&self) -> Option<axum::Router> {
        let w = self.settings.webhook.as_ref()?;
        Some(webhook::router(
            &w.path,
            w.secret.clone(),
            self.webhook_tx.clone(),
        ))
    }

    /// Sends `req`, waiting and retrying when Telegram answers `retry_after`.
    async fn call<R>(&self, req: R) -> Result<teloxide::requests::Output<R>, ChannelError>
    where
        R: Request<Err = RequestError>,
    {
        let mut attempt = 1;
        loop {
            match req.send_ref().await {
                Ok(out) => return Ok(out),
                Err(RequestError::RetryAfter(s))
                    if attempt < MAX_ATTEMPTS && s.duration() <= MAX_RETRY_AFTER =>
                {
                    tracing::info!(
                        platform = "telegram",
                        wait_secs = s.seconds(),
                        attempt,
                        "rate limited; waiting"
                    );
                    tokio::time::sleep(s.duration()).await;
                    attempt += 1;
                }
                Err(e) => return Err(channel_error(e)),
            }
        }
    }

    /// `getMe`, retried with backoff until it works or shutdown: the adapter needs its own
    /// username to recognise mentions.
    async fn identify(&self, ctx: &ChannelContext) -> Result<BotIdentity, ChannelError> {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.call(self.bot.get_me()).await {
                Ok(me) => {
                    return Ok(BotIdentity {
                        id: me.user.id.0,
                        username: me.username().to_owned(),
                    });
                }
                Err(e @ ChannelError::Auth(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(platform = "telegram", error = %e, "getMe failed; retrying in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = ctx.shutdown.cancelled() => return Err(ChannelError::Closed),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Registers the admin commands so clients offer them.
    async fn register_commands(&self) {
        let commands = [
            ("status", "Gateway status (admins)"),
            ("agents", "Conversations and their sandboxes (admins)"),
            ("approvals", "Pending approvals (admins)"),
            ("reset", "Fresh memory for a conversation (admins)"),
            ("stop", "Stop a conversation's sandbox (admins)"),
            ("budget", "Set a token budget (admins)"),
            ("audit", "Recent audit entries, chain verified (admins)"),
            ("approve", "Approve a pending action: /approve <id>"),
            ("deny", "Deny a pending action: /deny <id>"),
            ("help", "What the bot can do"),
        ]
        .map(|(c, d)| BotCommand::new(c, d));
        if let Err(e) = self.call(self.bot.set_my_commands(commands)).await {
            tracing::warn!(platform = "telegram", error = %e, "setMyCommands failed; commands still work when typed");
        }
    }

    /// Hands one update to the gateway (or answers a refused click). Returns `false` when the
    /// gateway's intake is closed.
    async fn intake(&self, update: Update, ctx: &ChannelContext) -> bool {
        let first = self
            .recent_updates
            .lock()
            .map(|mut r| r.first(update.id.0))
            .unwrap_or(true);
        if !first {
            tracing::info!(
                platform = "telegram",
                update = update.id.0,
                "duplicate update dropped"
            );
            return true;
        }
        let Some(me) = self.me.get() else {
            return true;
        };
        let event = match inbound::interpret(&update, me, &self.signer) {
            Intake::Event(e) => e,
            Intake::Click { decision, query_id } => {
                if let Ok(mut open) = self.open_clicks.lock() {
                    open.push(OpenClick {
                        query_id,
                        conversation: decision.conversation.clone(),
                        approval: decision.approval.clone(),
                        user: decision.user.clone(),
                        at: Instant::now(),
                    });
                }
                boxedclaw_channels::InboundEvent::ApprovalDecision(decision)
            }
            Intake::RefusedClick { query_id } => {
                tracing::warn!(
                    platform = "telegram",
                    update = update.id.0,
                    "click with callback data not signed for its conversation refused"
                );
                self.answer_click(&query_id, "This button is not valid here.")
                    .await;
                return true;
            }
            Intake::Ignore => return true,
        };
        ctx.inbound.send(event).await.is_ok()
    }

    /// Answers clicks nobody answered within [`CLICK_ANSWER_DEADLINE`], so no client keeps
    /// spinning.
    async fn answer_stale_clicks(&self) {
        let stale: Vec<OpenClick> = match self.open_clicks.lock() {
            Ok(mut open) => {
                let (stale, keep) = open
                    .drain(..)
                    .partition(|c| c.at.elapsed() >= CLICK_ANSWER_DEADLINE);
                *open = keep;
                stale
            }
            Err(_) => Vec::new(),
        };
        for click in stale {
            self.answer_click(&click.query_id, "").await;
        }
    }

    /// Long polling: an update is acknowledged (by the next `offset`) only after it was
    /// handed over, so a crash in between re-delivers it and the store drops the duplicate.
    async fn poll(&self, ctx: &ChannelContext) -> Result<(), ChannelError> {
        // A webhook left registered makes getUpdates fail with a conflict.
        if let Err(e) = self.call(self.bot.delete_webhook()).await {
            tracing::warn!(platform = "telegram", error = %e, "deleteWebhook failed");
        }
        ctx.ready.cancel();
        tracing::info!(platform = "telegram", "long polling");
        let timeout = u32::try_from(self.settings.poll_timeout.as_secs()).unwrap_or(25);
        let mut offset: i32 = 0;
        let mut backoff = Duration::from_millis(250);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            let request = self
                .bot
                .get_updates()
                .offset(offset)
                .timeout(timeout)
                .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
            let updates = tokio::select! {
                r = self.call(request) => r,
                _ = sweep.tick() => { self.answer_stale_clicks().await; continue; }
                () = ctx.shutdown.cancelled() => return Ok(()),
            };
            match updates {
                Ok(updates) => {
                    backoff = Duration::from_millis(250);
                    for update in updates {
                        let next = i32::try_from(update.id.0)
                            .unwrap_or(i32::MAX)
                            .saturating_add(1);
                        if !self.intake(update, ctx).await {
                            return Ok(());
                        }
                        offset = offset.max(next);
                    }
                }
                Err(ChannelError::Auth(e)) => return Err(ChannelError::Auth(e)),
                Err(e) => {
                    tracing::warn!(platform = "telegram", error = %e, "getUpdates failed; retrying in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = ctx.shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Webhook mode: registers the webhook, then takes what the HTTP route received.
    async fn serve_webhook(
        &self,
        w: &WebhookSettings,
        ctx: &ChannelContext,
    ) -> Result<(), ChannelError> {
        let Some(mut rx) = self.webhook_rx.lock().ok().and_then(|mut r| r.take()) else {
            return Err(ChannelError::Platform(
                "webhook intake already running".into(),
            ));
        };
        let url = w
            .public_url
            .parse()
            .map_err(|e| ChannelError::Platform(format!("webhook URL: {e}")))?;
        self.call(
            self.bot
                .set_webhook(url)
                .secret_token(w.secret.expose())
                .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery]),
        )
        .await?;
        ctx.ready.cancel();
        tracing::info!(platform = "telegram", path = %w.path, "receiving updates by webhook");
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                update = rx.recv() => match update {
                    Some(update) => if !self.intake(update, ctx).await { return Ok(()) },
                    None => return Ok(()),
                },
                _ = sweep.tick() => self.answer_stale_clicks().await,
                () = ctx.shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// Maps teloxide's errors; the token never appears in them (teloxide strips it from URLs).
fn channel_error(e: RequestError) -> ChannelError {
    match e {
        RequestError::RetryAfter(s) => ChannelError::RateLimited {
            retry_after: s.duration(),
        },
        RequestError::Api(ApiError::InvalidToken) => ChannelError::Auth("invalid bot token".into()),
        RequestError::Api(e) => ChannelError::Platform(e.to_string()),
        RequestError::Network(e) => ChannelError::Transport(e.to_string()),
        other => ChannelError::Platform(other.to_string()),
    }
}

impl ChannelAdapter for TelegramChannel {
    fn platform(&self) -> Platform {
        Platform::Telegram
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            buttons: true,
            threads: true,
            edits: true,
            // Only a clicked button's answer is private; other notices go to the chat.
            ephemeral: false,
            // In characters for the suite's purposes; pieces are also kept within 4096 UTF-16
            // units, which is what Telegram counts.
            max_text_len: MAX_TEXT_LEN,
        }
    }

    fn run(self: Arc<Self>, ctx: ChannelContext) -> BoxFuture<'static, Result<(), ChannelError>> {
        Box::pin(async move {
            let me = tokio::select! {
                me = self.identify(&ctx) => me,
                () = ctx.shutdown.cancelled() => return Ok(()),
            };
            let me = match me {
                Ok(me) => me,
                Err(ChannelError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            tracing::info!(platform = "telegram", bot = %me.username, "connected");
            let _ = self.me.set(me);
            self.register_commands().await;
            match &self.settings.webhook {
                Some(w) => self.serve_webhook(w, &ctx).await,
                None => self.poll(&ctx).await,
            }
        })
    }

    fn deliver(&self, action: OutboundAction) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(self.render(action))
    }
}
