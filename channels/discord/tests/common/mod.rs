//! Shared set-up of the adapter's end-to-end tests: the fake Discord, and the adapter pointed
//! at it and running as the gateway runs it.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::{
    ChannelAdapter, ChannelContext, ChannelError, InboundEvent, OutboundAction, Secret,
};
use boxedclaw_discord::fake::{BotMessage, FakeDiscord};
use boxedclaw_discord::{DiscordChannel, DiscordSettings};
use boxedclaw_protocol::channel::InboundMessage;
use boxedclaw_protocol::ids::{ConversationKey, Platform};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for any one thing.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// Ids used across the tests.
pub(crate) const GUILD: u64 = 900_000_000_000_000_001;
pub(crate) const CHANNEL: u64 = 900_000_000_000_000_002;
pub(crate) const ALICE: u64 = 800_000_000_000_000_001;
pub(crate) const BOB: u64 = 800_000_000_000_000_002;

/// The fake, the adapter, and the adapter's side of the gateway.
pub(crate) struct Harness {
    pub(crate) fake: Arc<FakeDiscord>,
    pub(crate) adapter: Arc<DiscordChannel>,
    pub(crate) ctx: ChannelContext,
    pub(crate) rx: mpsc::Receiver<InboundEvent>,
    running: Option<JoinHandle<Result<(), ChannelError>>>,
}

impl Harness {
    /// Starts the fake and the adapter with default settings; returns once it is ready.
    pub(crate) async fn start(token: &str) -> Self {
        Self::start_with(token, |_| {}).await
    }

    /// Like [`Harness::start`], with `configure` applied to the settings.
    pub(crate) async fn start_with(
        token: &str,
        configure: impl FnOnce(&mut DiscordSettings),
    ) -> Self {
        let fake = FakeDiscord::start(token).await;
        let mut settings = DiscordSettings::new(
            Arc::new(Secret::new(token.to_owned())),
            Some(fake.api_url()),
        );
        configure(&mut settings);
        let adapter = DiscordChannel::new(settings).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let ctx = ChannelContext {
            inbound: tx,
            shutdown: CancellationToken::new(),
            ready: CancellationToken::new(),
        };
        let running = tokio::spawn(adapter.clone().run(ctx.clone()));
        tokio::time::timeout(WAIT, ctx.ready.cancelled())
            .await
            .expect("the adapter signals ready");
        // Commands are registered right after READY.
        fake.wait_until(WAIT, "/boxedclaw registered", |f| {
            (!f.commands().is_empty()).then_some(())
        })
        .await;
        Self {
            fake,
            adapter,
            ctx,
            rx,
            running: Some(running),
        }
    }

    /// The next inbound event.
    pub(crate) async fn next(&mut self) -> InboundEvent {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an inbound event in time")
            .expect("intake open")
    }

    /// The next inbound event, which must be a message.
    pub(crate) async fn message(&mut self) -> InboundMessage {
        match self.next().await {
            InboundEvent::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Asserts that no inbound event comes within `within`.
    pub(crate) async fn nothing_within(&mut self, within: Duration) {
        if let Ok(Some(e)) = tokio::time::timeout(within, self.rx.recv()).await {
            panic!("unexpected inbound event {e:?}");
        }
    }

    /// Delivers one action as the gateway would.
    pub(crate) async fn deliver(&self, action: OutboundAction) -> Result<(), ChannelError> {
        tokio::time::timeout(Duration::from_secs(30), self.adapter.deliver(action))
            .await
            .expect("deliver finishes")
    }

    /// Shuts the adapter down and checks that `run` ends cleanly.
    pub(crate) async fn stop(mut self) {
        self.ctx.shutdown.cancel();
        let ended = tokio::time::timeout(WAIT, self.running.take().unwrap())
            .await
            .expect("run returns soon after shutdown")
            .expect("run does not panic");
        assert!(ended.is_ok(), "{ended:?}");
    }
}

/// The conversation of a DM channel.
pub(crate) fn dm(channel: u64) -> ConversationKey {
    ConversationKey::new(Platform::Discord, None, &channel.to_string(), None).unwrap()
}

/// The conversation of a guild thread (or of the channel itself when `thread` is `None`).
pub(crate) fn guild(guild: u64, channel: u64, thread: Option<u64>) -> ConversationKey {
    ConversationKey::new(
        Platform::Discord,
        Some(&guild.to_string()),
        &channel.to_string(),
        thread.map(|t| t.to_string()).as_deref(),
    )
    .unwrap()
}

/// The displayed texts of messages.
pub(crate) fn texts(messages: &[BotMessage]) -> Vec<String> {
    messages.iter().map(|m| m.text.clone()).collect()
}

/// A mention of the bot, as Discord clients write it.
pub(crate) fn mention() -> String {
    format!("<@{}>", FakeDiscord::BOT_ID)
}
