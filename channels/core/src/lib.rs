//! Channel adapters: how chat platforms reach the gateway.
//!
//! An adapter turns its platform's events into [`InboundEvent`]s and renders
//! [`OutboundAction`]s with the platform's own client. The gateway sees only the neutral types
//! from `boxedclaw-protocol`, so routing, approvals and admin work the same on every platform.
//!
//! # Layout
//! - [`ChannelAdapter`]: the trait every adapter implements (four methods; capabilities are data).
//! - [`ChannelContext`]: what the gateway hands an adapter when it starts it.
//! - [`render`]: shared rendering helpers (message chunking, terminal-safe text).
//! - [`button`]: signed Approve / Deny button data.
//! - [`command`]: typed `/commands` → decisions or admin commands.
//! - [`dedup`]: recently seen event ids, to drop re-deliveries.
//! - [`terminal`]: the `boxedclaw chat` channel (stdin/stdout).
//! - [`secret`]: the [`Secret`] type for platform tokens.
//! - `fake` (feature `test-utils`): an in-memory adapter for tests of the gateway.
//! - `conformance` (feature `test-utils`): the suite every chat adapter passes.
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use boxedclaw_protocol::channel::{InboundEvent, OutboundAction};
use boxedclaw_protocol::ids::Platform;
pub use secret::Secret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod button;
pub mod command;
#[cfg(feature = "test-utils")]
pub mod conformance;
pub mod dedup;
#[cfg(feature = "test-utils")]
pub mod fake;
pub mod render;
pub mod secret;
pub mod terminal;

/// A boxed, sendable future: adapters are used as trait objects, without async-trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a platform can show. Data, not `supports_*()` methods, so the gateway can log it and
/// tests can compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Approve / Deny buttons (otherwise approvals are typed commands).
    pub buttons: bool,
    /// Replies can go into threads or topics.
    pub threads: bool,
    /// Sent messages can be edited (progress, resolved approvals).
    pub edits: bool,
    /// Messages visible to one user only.
    pub ephemeral: bool,
    /// Longest text of one message, in characters.
    pub max_text_len: usize,
}

/// Everything an adapter needs from the gateway while it runs.
#[derive(Debug, Clone)]
pub struct ChannelContext {
    /// Where inbound events go. Bounded: `send().await` is the backpressure.
    pub inbound: mpsc::Sender<InboundEvent>,
    /// Cancelled when the gateway shuts down; every adapter loop selects on it.
    pub shutdown: CancellationToken,
    /// The adapter cancels this once it is connected and can deliver: the gateway waits for
    /// it before replaying undelivered replies and restoring approvals after a restart.
    pub ready: CancellationToken,
}

/// Why an adapter could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The platform asked us to slow down; retry after the given time.
    #[error("rate limited; retry after {retry_after:?}")]
    RateLimited {
        /// How long the platform asked us to wait.
        retry_after: Duration,
    },
    /// The platform refused our credentials.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The connection failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The platform answered with an error.
    #[error("platform error: {0}")]
    Platform(String),
    /// The gateway is shutting down or the channel's output is gone.
    #[error("channel closed")]
    Closed,
}

/// A chat platform, as the gateway sees it.
///
/// Lifecycle: the gateway builds the adapter from config, calls [`ChannelAdapter::run`] once
/// (intake: it returns when the source ends or `ctx.shutdown` fires), and calls
/// [`ChannelAdapter::deliver`] for every outbound action on this platform, concurrently across
/// conversations.
pub trait ChannelAdapter: Send + Sync + 'static {
    /// The platform this adapter serves; outbound actions are routed by it.
    fn platform(&self) -> Platform;
    /// What the platform can show.
    fn capabilities(&self) -> Capabilities;
    /// Receives events until the source ends or shutdown; forwards them to `ctx.inbound`.
    /// MUST cancel `ctx.ready` once connected.
    fn run(self: Arc<Self>, ctx: ChannelContext) -> BoxFuture<'static, Result<(), ChannelError>>;
    /// Shows one action. Implementations split long text to the platform's limits.
    fn deliver(&self, action: OutboundAction) -> BoxFuture<'_, Result<(), ChannelError>>;
}
