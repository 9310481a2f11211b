//! What every part of a running gateway shares: config, the LLM client, the sandbox backend,
//! the approval book, the way out to the channels, the metrics, and the task tracker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::{ChannelAdapter, ChannelError, OutboundAction};
use boxedclaw_protocol::ids::Platform;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::approvals::ApprovalBook;
use crate::config::Config;
use crate::llm::LlmClient;
use crate::metrics::Metrics;
use crate::sandbox::SandboxBackend;
use crate::sandbox::live::LiveSandboxes;
use crate::sandbox::quota::WorkspaceQuotas;
use crate::secrets::Redactor;
use crate::store::{AuditEntry, OutboxClaim, Store};

/// How long an undelivered reply stays worth delivering after a restart; older ones are
/// expired, never replayed.
pub const OUTBOX_TTL_SECS: i64 = 3600;

/// How often a delivery is retried after the platform asks us to slow down.
const MAX_DELIVERY_ATTEMPTS: u32 = 5;
/// Longest platform-requested wait we honour before giving up on a delivery.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// How long a delivery holds its outbox row: longer than the slowest send (every attempt
/// after waiting the longest pause we honour), so no sweep takes a reply that is being sent.
const DELIVERY_CLAIM_SECS: i64 = 660;
const _: () =
    assert!(DELIVERY_CLAIM_SECS as u64 > MAX_DELIVERY_ATTEMPTS as u64 * MAX_RETRY_AFTER.as_secs());

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
    /// Durable state: conversations, approvals, outbox, usage, budgets, audit.
    pub store: Store,
    /// This gateway process's name where replicas sharing the store must tell each other
    /// apart (outbox claims): host, pid and a random part.
    pub instance: String,
    /// Prometheus metrics (the same handle [`Outbound`] counts delivery failures in).
    pub metrics: Arc<Metrics>,
    /// The sandboxes running right now (the dashboard lists them).
    pub live: LiveSandboxes,
    /// Each workspace's own filesystem; `None` when quotas are off or this host cannot
    /// mount them (then workspaces are plain directories).
    pub workspaces: Option<WorkspaceQuotas>,
    /// Every task the gateway spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Turns blocked on a human's decision right now (a drain does not wait for those: their
    /// approvals stay pending in the store and survive the restart).
    pub awaiting_humans: std::sync::atomic::AtomicUsize,
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
    metrics: Arc<Metrics>,
}

impl Outbound {
    /// Routes to `adapters` by platform; every text passes through `redactor` first. Failed
    /// deliveries are counted in `metrics`.
    pub fn new(
        adapters: &[Arc<dyn ChannelAdapter>],
        redactor: Redactor,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            adapters: adapters.iter().map(|a| (a.platform(), a.clone())).collect(),
            redactor,
            metrics,
        }
    }

    /// Delivers one action, honouring rate limits. Failures are logged, not returned: a reply
    /// that cannot be shown must not take the conversation down.
    pub async fn send(&self, mut action: OutboundAction) -> bool {
        self.redact(&mut action);
        let platform = action.conversation().platform;
        let Some(adapter) = self.adapters.get(&platform) else {
            tracing::warn!(%platform, "no channel for outbound action; dropped");
            return false;
        };
        for attempt in 1..=MAX_DELIVERY_ATTEMPTS {
            match adapter.deliver(action.clone()).await {
                Ok(()) => return true,
                Err(ChannelError::RateLimited { retry_after })
                    if retry_after <= MAX_RETRY_AFTER && attempt < MAX_DELIVERY_ATTEMPTS =>
                {
                    tracing::info!(%platform, wait_ms = retry_after.as_millis() as u64, attempt, "rate limited; waiting");
                    tokio::time::sleep(retry_after).await;
                }
                Err(e) => {
                    tracing::error!(%platform, conversation = %action.conversation(), error = %e, "delivery failed");
                    self.metrics.channel_error(platform);
                    return false;
                }
            }
        }
        false
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

impl Services {
    /// Delivers a reply through the outbox: it is stored (claimed by this gateway) before the
    /// attempt and marked delivered after, so a reply that could not be delivered (channel
    /// down, gateway killed) is delivered once later, by the next outbox sweep of this or
    /// another replica, within [`OUTBOX_TTL_SECS`].
    pub async fn reply(&self, action: OutboundAction) {
        let conversation = action.conversation().clone();
        let payload = serde_json::to_string(&action).unwrap_or_default();
        let not_after = now_secs() + OUTBOX_TTL_SECS;
        let id = match self
            .store
            .enqueue_outbox(&conversation, &payload, not_after, self.delivery_claim())
            .await
        {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(%conversation, error = %e, "outbox unavailable; delivering without it");
                None
            }
        };
        let delivered = self.outbound.send(action).await;
        if let Some(id) = id {
            let done = if delivered {
                self.store.mark_delivered(id, now_secs()).await
            } else {
                self.store.record_attempt(id).await
            };
            if let Err(e) = done {
                tracing::error!(%conversation, error = %e, "outbox update failed");
            }
        }
    }

    /// This gateway's claim on outbox rows it starts delivering now.
    fn delivery_claim(&self) -> OutboxClaim<'_> {
        OutboxClaim {
            owner: &self.instance,
            until: now_secs() + DELIVERY_CLAIM_SECS,
        }
    }

    /// Delivers what the outbox still holds and no one is delivering: replies a previous run
    /// or a failed attempt left, and those of a replica that died mid-send (once its claim
    /// ran out). Each row is claimed first, so replicas sweeping together send it once. Stale
    /// replies are expired, never sent.
    pub async fn deliver_outbox(&self) {
        let now = now_secs();
        match self.store.expire_outbox(now).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                expired = n,
                "undelivered replies older than the outbox TTL dropped"
            ),
            Err(e) => tracing::error!(error = %e, "outbox expiry failed"),
        }
        let rows = match self
            .store
            .claim_undelivered(now, self.delivery_claim())
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "outbox unreadable");
                return;
            }
        };
        for row in rows {
            let Ok(action) = serde_json::from_str::<OutboundAction>(&row.payload) else {
                tracing::error!(id = row.id, "undecodable outbox row skipped");
                let _ = self.store.mark_delivered(row.id, now).await;
                continue;
            };
            if self.outbound.send(action).await {
                let _ = self.store.mark_delivered(row.id, now_secs()).await;
                tracing::info!(
                    id = row.id,
                    attempts = row.attempts,
                    "undelivered reply delivered"
                );
            } else {
                let _ = self.store.record_attempt(row.id).await;
            }
        }
    }

    /// Sweeps the outbox every `[router] outbox_retry_secs` until the gateway stops.
    pub async fn retry_outbox_until_stopped(&self) {
        let mut tick = tokio::time::interval(self.config.router.outbox_retry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: recovery has just swept.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.deliver_outbox().await,
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Appends to the audit log; a failure is logged loudly, not returned (the action it
    /// records has happened).
    pub async fn audit(&self, actor: &str, action: &str, conversation: Option<&str>, detail: &str) {
        let entry = AuditEntry {
            at: now_secs(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            conversation: conversation.map(str::to_owned),
            detail: detail.to_owned(),
        };
        tracing::info!(target: "boxedclaw::audit", actor, action, conversation, detail);
        if let Err(e) = self.store.audit(&entry).await {
            tracing::error!(error = %e, action, "audit log write failed");
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A name for this gateway process, unique among replicas sharing a store: the host's
/// name, the process id and a random part (pids repeat across hosts and restarts).
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = match host.trim() {
        "" => "host",
        h => h,
    };
    format!("{host}:{}:{}", std::process::id(), correlation_id())
}

/// A short random id that ties a user-visible error to the log lines about it.
pub fn correlation_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}
