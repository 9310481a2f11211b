//! What every part of a running gateway shares: config, the LLM client, the sandbox backend,
//! the approval book, the way out to the channels, and the task tracker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::{ChannelAdapter, ChannelError, OutboundAction};
use boxedclaw_protocol::ids::{ConversationKey, Platform};
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::approvals::ApprovalBook;
use crate::config::Config;
use crate::llm::LlmClient;
use crate::sandbox::SandboxBackend;
use crate::secrets::Redactor;

/// How often a delivery is retried after the platform asks us to slow down.
const MAX_DELIVERY_ATTEMPTS: u32 = 5;
/// Longest platform-requested wait we honour before giving up on a delivery.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Shared state of a running gateway.
pub struct Services {
    /// Validated configuration.
    pub config: Config,
    /// The LLM client: the only holder of the API key.
    pub llm: LlmClient,
    /// Where agents run.
    pub sandbox: Arc<dyn SandboxBackend>,
    /// Pending approvals.
    pub approvals: ApprovalBook,
    /// Delivery to the channels.
    pub outbound: Outbound,
    /// Tokens spent per conversation since start.
    pub usage: DashMap<ConversationKey, u64>,
    /// Every task the gateway spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

/// Delivers outbound actions to the adapter of their platform.
pub struct Outbound {
    adapters: HashMap<Platform, Arc<dyn ChannelAdapter>>,
    redactor: Redactor,
}

impl Outbound {
    /// Routes to `adapters` by platform; every text passes through `redactor` first.
    pub fn new(adapters: &[Arc<dyn ChannelAdapter>], redactor: Redactor) -> Self {
        Self {
            adapters: adapters.iter().map(|a| (a.platform(), a.clone())).collect(),
            redactor,
        }
    }

    /// Delivers one action, honouring rate limits. Failures are logged, not returned: a reply
    /// that cannot be shown must not take the conversation down.
    pub async fn send(&self, mut action: OutboundAction) {
        self.redact(&mut action);
        let platform = action.conversation().platform;
        let Some(adapter) = self.adapters.get(&platform) else {
            tracing::warn!(%platform, "no channel for outbound action; dropped");
            return;
        };
        for attempt in 1..=MAX_DELIVERY_ATTEMPTS {
            match adapter.deliver(action.clone()).await {
                Ok(()) => return,
                Err(ChannelError::RateLimited { retry_after })
                    if retry_after <= MAX_RETRY_AFTER && attempt < MAX_DELIVERY_ATTEMPTS =>
                {
                    tracing::info!(%platform, wait_ms = retry_after.as_millis() as u64, attempt, "rate limited; waiting");
                    tokio::time::sleep(retry_after).await;
                }
                Err(e) => {
                    tracing::error!(%platform, conversation = %action.conversation(), error = %e, "delivery failed");
                    return;
                }
            }
        }
    }

    /// No secret the gateway knows leaves through a channel, whatever the agent writes.
    fn redact(&self, action: &mut OutboundAction) {
        let text = match action {
            OutboundAction::Post { text, .. }
            | OutboundAction::Progress { text, .. }
            | OutboundAction::Notice { text, .. } => text,
            OutboundAction::RequestApproval(p) => {
                p.reason = self.redactor.redact(&p.reason).into_owned();
                &mut p.action
            }
            OutboundAction::Typing { .. } | OutboundAction::ResolveApproval { .. } => return,
        };
        if let std::borrow::Cow::Owned(clean) = self.redactor.redact(text) {
            *text = clean;
        }
    }
}

/// A short random id that ties a user-visible error to the log lines about it.
pub fn correlation_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}
