//! The gateway websocket, through serenity's `Client`.
//!
//! Serenity connects to the URL from `GET /gateway` (our fake's, or a proxy's), identifies,
//! heartbeats, and after a dropped connection resumes with the session id and last sequence
//! number, so Discord replays what was missed. Each event it hands to [`Forwarder`] in a
//! task of its own; the forwarder only passes it on to the adapter's `run` loop over a
//! channel, which restores Discord's order (see [`Incoming::order`]) and does the work.

use serenity::all::{Context, EventHandler, GatewayIntents, Interaction, Message, Ready};
use serenity::model::event::ResumedEvent;
use tokio::sync::mpsc;

/// What the gateway told us, for the `run` loop.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// READY: connected as `bot`, an application's bot user.
    Ready {
        /// The bot's user id.
        bot: u64,
        /// The application id (for interactions and commands).
        application: u64,
    },
    /// A message in a channel the bot can see.
    Message(Box<Message>),
    /// A button click or an application command.
    Interaction(Box<Interaction>),
}

impl Incoming {
    /// Sort key restoring Discord's order within a burst: snowflakes grow with time, and READY
    /// comes first.
    pub(crate) fn order(&self) -> u64 {
        match self {
            Self::Ready { .. } => 0,
            Self::Message(m) => m.id.get(),
            Self::Interaction(i) => i.id().get(),
        }
    }
}

/// The intents the adapter needs: guild and DM messages, with their text (privileged: it must
/// be enabled for the bot in the developer portal).
pub(crate) fn intents() -> GatewayIntents {
    GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
}

/// Serenity's event handler: forwards what the adapter uses.
pub(crate) struct Forwarder {
    pub(crate) tx: mpsc::Sender<Incoming>,
}

impl Forwarder {
    async fn forward(&self, incoming: Incoming) {
        // Fails only when `run` has ended (shutdown); the event is then dropped with it.
        if self.tx.send(incoming).await.is_err() {
            tracing::debug!(platform = "discord", "event after intake ended dropped");
        }
    }
}

#[serenity::async_trait]
impl EventHandler for Forwarder {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        tracing::info!(
            platform = "discord",
            bot = ready.user.id.get(),
            guilds = ready.guilds.len(),
            "gateway session ready"
        );
        self.forward(Incoming::Ready {
            bot: ready.user.id.get(),
            application: ready.application.id.get(),
        })
        .await;
    }

    async fn resume(&self, _ctx: Context, _: ResumedEvent) {
        tracing::info!(platform = "discord", "gateway session resumed");
    }

    async fn message(&self, _ctx: Context, message: Message) {
        self.forward(Incoming::Message(Box::new(message))).await;
    }

    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        self.forward(Incoming::Interaction(Box::new(interaction)))
            .await;
    }
}
