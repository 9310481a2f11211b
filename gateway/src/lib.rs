//! The BoxedClaw gateway: the trusted host between chat platforms and sandboxed agents.
//!
//! It holds every key, makes every LLM call on the agents' behalf, asks humans to approve
//! risky tool calls, and gives each conversation its own agent in its own sandbox.
//!
//! # Layout
//! - [`config`]: TOML + environment → validated [`config::Config`].
//! - [`secrets`]: the redacted [`secrets::Secret`] type and the output [`secrets::Redactor`].
//! - [`llm`]: the OpenAI-compatible client; the only code that sees the API key.
//! - [`host`]: what this machine can do (hardware virtualization) and which sandbox `auto` picks.
//! - [`sandbox`]: the sandbox trait, the namespace backend, the framed link to an agent.
//! - [`router`]: one ordered worker per conversation, bounded queues.
//! - [`conversation`]: a conversation's worker: agent lifecycle and turns.
//! - [`approvals`]: pending approvals, authorization, exactly-once decisions.
//! - [`store`]: durable state (SQLite or PostgreSQL): conversations, inbound de-duplication,
//!   approvals, outbox, usage and budgets, the hash-chained audit log.
//! - [`recovery`]: on start, replay undelivered replies and restore pending approvals.
//! - [`admin`]: admin commands, for admins only.
//! - [`fetch`]: `http_fetch`, performed here because sandboxes have no network.
//! - [`services`]: what the parts share; outbound delivery with redaction and rate limits.
//! - [`metrics`]: the Prometheus metrics (turns, LLM calls, approvals, sandboxes, deliveries).
//! - [`doctor`]: `boxedclaw doctor`.
//! - [`console`]: the web console: local chat, the operators' dashboard, `/metrics`.
//! - [`shutdown`], [`http`]: signals, the HTTP server and its health endpoints.
#![deny(unsafe_code)]

pub mod admin;
pub mod approvals;
pub mod config;
pub mod console;
pub mod conversation;
pub mod doctor;
pub mod fetch;
pub mod host;
pub mod http;
pub mod llm;
pub mod metrics;
pub mod recovery;
pub mod router;
pub mod sandbox;
pub mod secrets;
pub mod services;
pub mod shutdown;
pub mod store;

use std::sync::Arc;

use boxedclaw_channels::{ChannelAdapter, ChannelContext, InboundEvent, OutboundAction};
use boxedclaw_protocol::channel::{ApprovalDecision, InboundMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::approvals::{ApprovalBook, DecisionResult};
use crate::config::Config;
use crate::host::{SandboxKind, VirtReport};
use crate::llm::LlmClient;
use crate::router::Router;
use crate::sandbox::SandboxBackend;
use crate::sandbox::namespace::NamespaceBackend;
use crate::secrets::Redactor;
use crate::services::{Outbound, Services};

/// Inbound events buffered between the channels and the router.
const INBOUND_QUEUE: usize = 1024;
/// How long start-up waits for channels to connect before recovering anyway.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long shutdown waits for tasks (agents being stopped, deliveries) before giving up.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The LLM client could not be built.
    #[error("LLM client: {0}")]
    Llm(#[from] llm::LlmError),
    /// No usable sandbox.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A chat platform adapter could not be set up.
    #[error("channel: {0}")]
    Channel(String),
    /// The store could not be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// Whether this build contains the BoxLite microVM backend (cargo feature `boxlite`).
pub const BOXLITE_BUILT: bool = cfg!(feature = "boxlite");

/// Picks and builds the sandbox backend for this host, logging the choice and why.
///
/// # Errors
/// [`GatewayError::Sandbox`] when the configured backend cannot run here.
pub fn build_sandbox(config: &Config) -> Result<Arc<dyn SandboxBackend>, GatewayError> {
    let virt = VirtReport::detect();
    let (kind, reason) = host::choose_backend(config.sandbox, &virt, BOXLITE_BUILT)
        .map_err(GatewayError::Sandbox)?;
    tracing::info!(sandbox = %kind, %reason, "sandbox backend chosen");
    match kind {
        SandboxKind::Namespace => NamespaceBackend::new(config)
            .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
            .map_err(|e| GatewayError::Sandbox(e.to_string())),
        #[cfg(feature = "boxlite")]
        SandboxKind::Boxlite => sandbox::boxlite::BoxliteBackend::new(config)
            .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
            .map_err(|e| GatewayError::Sandbox(e.to_string())),
        #[cfg(not(feature = "boxlite"))]
        SandboxKind::Boxlite => Err(GatewayError::Sandbox(
            "the boxlite backend is not part of this build".into(),
        )),
    }
}

/// What the gateway serves people through: the chat platforms the config enables (a platform
/// is on when its token is set), the web console when it is on, and the HTTP routes of both.
pub struct Frontends {
    /// Every channel: the platforms', then the console's chat.
    pub channels: Vec<Arc<dyn ChannelAdapter>>,
    /// Webhook and console routes for the HTTP server.
    pub routes: axum::Router,
    /// The web console, when on.
    pub console: Option<Arc<console::Console>>,
    /// How many chat platforms are enabled (the console not counted).
    pub platforms: usize,
}

/// Builds the [`Frontends`] `config` asks for.
///
/// # Errors
/// [`GatewayError::Channel`] when an adapter's settings are unusable.
pub fn build_frontends(config: &Config) -> Result<Frontends, GatewayError> {
    let (mut channels, mut routes) = build_channels(config)?;
    let platforms = channels.len();
    let console = console::Console::new(config);
    if let Some(console) = &console {
        channels.push(console.channel());
        routes = routes.merge(console.routes());
    }
    Ok(Frontends {
        channels,
        routes,
        console,
        platforms,
    })
}

/// Runs the gateway with `frontends` and its HTTP server (health, readiness, webhooks, console)
/// on `listener`, until `shutdown` (see [`run_with_console`]). The server failing stops the
/// gateway too: webhooks and the console would be gone.
///
/// # Errors
/// [`GatewayError`] when a component cannot start or the HTTP server fails.
pub async fn serve(
    config: Config,
    sandbox: Arc<dyn SandboxBackend>,
    frontends: Frontends,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let readiness = http::Readiness::default();
    let served = async {
        let served = http::serve_on(
            listener,
            frontends.routes,
            readiness.clone(),
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        served
    };
    let ran = run_with_console(
        config,
        sandbox,
        frontends.channels,
        frontends.console,
        readiness.clone(),
        shutdown.clone(),
    );
    let (ran, served) = tokio::join!(ran, served);
    ran?;
    Ok(served?)
}

/// The chat platform adapters enabled by `config`, and the HTTP routes they need on the
/// gateway's server (webhooks).
fn build_channels(
    config: &Config,
) -> Result<(Vec<Arc<dyn ChannelAdapter>>, axum::Router), GatewayError> {
    let mut channels: Vec<Arc<dyn ChannelAdapter>> = Vec::new();
    let mut routes = axum::Router::new();
    if let Some(settings) = &config.telegram {
        let telegram = boxedclaw_telegram::TelegramChannel::new(settings.clone())
            .map_err(|e| GatewayError::Channel(e.to_string()))?;
        if let Some(hook) = telegram.webhook_router() {
            routes = routes.merge(hook);
        }
        channels.push(telegram);
    }
    if let Some(settings) = &config.slack {
        let slack = boxedclaw_slack::SlackChannel::new(settings.clone())
            .map_err(|e| GatewayError::Channel(e.to_string()))?;
        if let Some(events) = slack.http_router() {
            routes = routes.merge(events);
        }
        channels.push(slack);
    }
    if let Some(settings) = &config.discord {
        let discord = boxedclaw_discord::DiscordChannel::new(settings.clone())
            .map_err(|e| GatewayError::Channel(e.to_string()))?;
        if let Some(interactions) = discord.interactions_router() {
            routes = routes.merge(interactions);
        }
        channels.push(discord);
    }
    Ok((channels, routes))
}

/// Every secret the gateway holds, for scrubbing what leaves it.
fn redactor_for(config: &Config) -> Redactor {
    let mut secrets = Vec::new();
    if let Some(key) = &config.llm.api_key {
        secrets.push(key.as_ref());
    }
    if let Some(url) = &config.database_url {
        secrets.push(url);
    }
    if let Some(t) = &config.telegram {
        secrets.push(t.token.as_ref());
        if let Some(w) = &t.webhook {
            secrets.push(w.secret.as_ref());
        }
    }
    if let Some(s) = &config.slack {
        secrets.push(s.bot_token.as_ref());
        secrets.extend(s.app_token.as_deref());
        secrets.extend(s.signing_secret.as_deref());
    }
    if let Some(d) = &config.discord {
        secrets.push(d.token.as_ref());
    }
    Redactor::new(&secrets)
}

/// Runs the gateway (see [`run_with_console`]) without a web console.
///
/// # Errors
/// [`GatewayError`] when a component cannot start.
pub async fn run(
    config: Config,
    sandbox: Arc<dyn SandboxBackend>,
    channels: Vec<Arc<dyn ChannelAdapter>>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    run_with_console(
        config,
        sandbox,
        channels,
        None,
        http::Readiness::default(),
        shutdown,
    )
    .await
}

/// Runs the gateway until `shutdown` is cancelled, or until every channel's intake has ended
/// and every accepted message has been answered (how `boxedclaw chat` ends at end of input).
/// Without channels it runs until `shutdown`.
///
/// On `shutdown` (SIGTERM) intake stops at once and turns in flight get `[router]
/// drain_timeout_secs` to finish; then sandboxes are stopped. Approvals still pending stay
/// pending in the store, and are restored by the next start.
///
/// `console` (whose chat adapter must be among `channels`) is attached to the running
/// gateway; its operator may decide approvals.
///
/// # Errors
/// [`GatewayError`] when a component cannot start.
pub async fn run_with_console(
    mut config: Config,
    sandbox: Arc<dyn SandboxBackend>,
    channels: Vec<Arc<dyn ChannelAdapter>>,
    console: Option<Arc<console::Console>>,
    readiness: http::Readiness,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    if console.is_some() {
        config.approvers.push(console::operator());
    }
    let llm = LlmClient::new(&config.llm)?;
    let redactor = redactor_for(&config);
    let store = match &config.database_url {
        Some(url) => store::Store::open_url(url.expose()).await?,
        None => store::Store::open_sqlite(&config.data_dir.join("boxedclaw.db")).await?,
    };
    tracing::info!(engine = store.engine(), "store open");
    let workspaces = workspace_quotas(&config).await;
    let tasks = TaskTracker::new();
    // `shutdown` stops intake; `stop` (after the drain) stops workers and sandboxes.
    let stop = CancellationToken::new();
    let metrics = Arc::new(metrics::Metrics::new());
    let services = Arc::new(Services {
        store,
        instance: services::instance_name(),
        approvals: ApprovalBook::new(config.approvers.clone()),
        outbound: Outbound::new(&channels, redactor, metrics.clone()),
        metrics,
        live: sandbox::live::LiveSandboxes::default(),
        workspaces,
        llm,
        sandbox,
        tasks: tasks.clone(),
        shutdown: stop.clone(),
        awaiting_humans: std::sync::atomic::AtomicUsize::new(0),
        config,
    });
    let router = Router::new(services.clone());

    let (tx, mut rx) = mpsc::channel(INBOUND_QUEUE);
    // A gateway without channels (only health endpoints for now) serves until shutdown.
    let serve_until_shutdown = channels.is_empty();
    let mut ready = Vec::new();
    let mut board = console::ChannelBoard::default();
    for channel in channels {
        let ctx = ChannelContext {
            inbound: tx.clone(),
            shutdown: shutdown.clone(),
            ready: CancellationToken::new(),
        };
        ready.push((channel.platform(), ctx.ready.clone()));
        let platform = channel.platform();
        let ended = board.add(platform, ctx.ready.clone());
        tracing::info!(%platform, capabilities = ?channel.capabilities(), "channel starting");
        tasks.spawn(async move {
            let result = channel.run(ctx).await;
            match &result {
                Ok(()) => tracing::info!(%platform, "channel intake ended"),
                Err(e) => tracing::error!(%platform, error = %e, "channel failed"),
            }
            let _ = ended.set(result.map_err(|e| e.to_string()));
        });
    }
    if let Some(console) = &console {
        console.attach(console::Attached {
            services: services.clone(),
            router: router.clone(),
            channels: board,
        });
    }
    // Only the channels hold senders now: `recv` yields None once every intake has ended.
    drop(tx);
    // Replayed replies and restored approvals need channels that can deliver.
    for (platform, token) in ready {
        if tokio::time::timeout(READY_TIMEOUT, token.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(%platform, "channel not ready after {READY_TIMEOUT:?}; recovering anyway");
        }
    }
    recovery::recover(&services, &router).await;
    let sweeper = services.clone();
    tasks.spawn(async move { sweeper.retry_outbox_until_stopped().await });
    readiness.set_ready();

    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            () = shutdown.cancelled() => None,
        };
        match event {
            Some(InboundEvent::Message(msg)) => {
                if !first_delivery(&services, &msg).await {
                    continue;
                }
                let conversation = msg.conversation.clone();
                let user = msg.user.clone();
                if let Err(e) = router.dispatch(msg) {
                    let notice = OutboundAction::Notice {
                        conversation,
                        user: Some(user),
                        text: e.to_string(),
                    };
                    services.outbound.send(notice).await;
                }
            }
            Some(InboundEvent::ApprovalDecision(d)) => decide(&services, d).await,
            Some(InboundEvent::Command(req)) => {
                if first_delivery(&services, &req).await {
                    admin::handle(&services, &router, req).await;
                }
            }
            None => break,
        }
    }
    if serve_until_shutdown {
        shutdown.cancelled().await;
    }
    // Intake is over: whatever ends next, this gateway takes no new work.
    readiness.set_draining();
    if !shutdown.is_cancelled() {
        // Intake ended by itself (end of input): answer everything accepted, unless a signal
        // comes first.
        tokio::select! {
            () = router.wait_idle() => {}
            () = shutdown.cancelled() => {}
        }
    }
    if shutdown.is_cancelled() {
        let drain = services.config.router.drain_timeout;
        match tokio::time::timeout(drain, router.wait_drained()).await {
            Ok(()) => tracing::info!("drained: every accepted message answered"),
            Err(_) => {
                tracing::warn!("drain timeout of {drain:?} reached; stopping turns in flight")
            }
        }
    }
    stop.cancel();
    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
    }
    if let Some(quotas) = &services.workspaces {
        quotas.release_all();
    }
    Ok(())
}

/// Gives every workspace a filesystem of its own where the config asks for quotas and the
/// host can mount them; says loudly when it cannot, since disk use is then unbounded.
async fn workspace_quotas(config: &Config) -> Option<sandbox::quota::WorkspaceQuotas> {
    let bytes = config.limits.workspace_bytes;
    if bytes == 0 {
        tracing::warn!("[limits] workspace_mib = 0: workspaces have no disk quota");
        return None;
    }
    match sandbox::quota::WorkspaceQuotas::probe(&config.data_dir, bytes).await {
        Ok(quotas) => {
            tracing::info!(quotas = %quotas.describe(), "workspace quotas on");
            Some(quotas)
        }
        Err(why) => {
            tracing::warn!(%why, "workspace quotas unavailable: an agent can fill the disk its workspace is on");
            None
        }
    }
}

/// Whether this is the first delivery of an inbound event; platforms re-deliver, and so may
/// two replicas behind one load balancer. A store failure lets the event through (better a
/// rare duplicate than a lost message) and is logged.
async fn first_delivery(services: &Services, msg: &InboundMessage) -> bool {
    match services
        .store
        .first_delivery(msg.conversation.platform, &msg.id)
        .await
    {
        Ok(true) => true,
        Ok(false) => {
            tracing::info!(conversation = %msg.conversation, event = %msg.id, "duplicate delivery dropped");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "store: de-duplication unavailable");
            true
        }
    }
}

/// Applies a human's approval decision and tells them when it did not count.
async fn decide(services: &Services, d: ApprovalDecision) {
    let result = services.approvals.decide(&d);
    let text = match result {
        DecisionResult::Accepted(_) => return,
        DecisionResult::NotAuthorized => {
            tracing::warn!(target: "boxedclaw::audit", event = "approval.refused", conversation = %d.conversation, approval = %d.approval, user = %d.user, "not an approver");
            format!(
                "You may not decide approval {}; it is still pending.",
                d.approval
            )
        }
        DecisionResult::NotPending => {
            tracing::info!(target: "boxedclaw::audit", event = "approval.stale", conversation = %d.conversation, approval = %d.approval, user = %d.user);
            format!(
                "Approval {} is not pending here: already decided, expired or unknown.",
                d.approval
            )
        }
    };
    let notice = OutboundAction::Notice {
        conversation: d.conversation,
        user: Some(d.user),
        text,
    };
    services.outbound.send(notice).await;
}
