//! The dashboard's data (`GET /api/dashboard`) and its approval buttons
//! (`POST /api/dashboard/decisions`). Everything is JSON; the page renders it as text.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use boxedclaw_protocol::channel::ApprovalDecision;
use boxedclaw_protocol::ids::ApprovalId;
use serde::{Deserialize, Serialize};

use super::{Console, Unavailable, operator, resources};
use crate::approvals::DecisionResult;
use crate::services::now_secs;

/// Conversations listed, most recently active first.
const MAX_CONVERSATIONS: usize = 200;
/// Audit entries shown.
const AUDIT_ENTRIES: u32 = 50;
/// Usage lines shown.
const USAGE_LINES: u32 = 100;
/// How long a chain verification is reused.
const AUDIT_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
struct Snapshot {
    gateway: GatewayInfo,
    channels: Vec<ChannelInfo>,
    conversations: Vec<ConversationInfo>,
    approvals: Vec<ApprovalInfo>,
    audit: AuditInfo,
    usage: UsageInfo,
}

#[derive(Debug, Serialize)]
struct GatewayInfo {
    version: &'static str,
    uptime_secs: u64,
    sandbox: String,
    store: &'static str,
    conversations_active: usize,
    sandboxes_running: usize,
    approvals_pending: usize,
}

#[derive(Debug, Serialize)]
struct ChannelInfo {
    platform: &'static str,
    /// `connecting`, `connected`, `stopped` or `failed`.
    state: &'static str,
    healthy: bool,
    detail: Option<String>,
}

#[derive(Debug, Serialize)]
struct ConversationInfo {
    conversation: String,
    platform: &'static str,
    backend: String,
    /// `running` (a sandbox is up) or `idle`.
    state: &'static str,
    created_at: i64,
    last_active: i64,
    sandbox: Option<SandboxInfo>,
}

#[derive(Debug, Serialize)]
struct SandboxInfo {
    agent: String,
    uptime_secs: u64,
    usage: Option<resources::TreeUsage>,
}

#[derive(Debug, Serialize)]
struct ApprovalInfo {
    approval: String,
    conversation: String,
    requester: String,
    action: String,
    created_at: i64,
    expires_at: i64,
}

/// The audit chain's state.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(super) enum ChainStatus {
    /// Every entry verified.
    Intact { entries: u64 },
    /// Verification failed at an entry.
    Broken { at_seq: i64, reason: String },
}

#[derive(Debug, Serialize)]
struct AuditInfo {
    chain: ChainStatus,
    entries: Vec<AuditLine>,
}

#[derive(Debug, Serialize)]
struct AuditLine {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    conversation: Option<String>,
    detail: String,
}

#[derive(Debug, Serialize)]
struct UsageInfo {
    day: i64,
    lines: Vec<UsageLine>,
}

#[derive(Debug, Serialize)]
struct UsageLine {
    subject: String,
    tokens: u64,
    budget: Option<u64>,
}

fn store_failure(e: impl std::fmt::Display) -> Unavailable {
    Unavailable::Store(e.to_string())
}

/// `GET /api/dashboard`.
pub(super) async fn snapshot(State(console): State<Arc<Console>>) -> Response {
    match build(&console).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn build(console: &Console) -> Result<Snapshot, Unavailable> {
    let a = console.attached()?;
    let services = &a.services;
    let store = &services.store;
    let live: HashMap<_, _> = services.live.snapshot().into_iter().collect();
    let mut known = store.conversations().await.map_err(store_failure)?;
    known.sort_by_key(|c| std::cmp::Reverse(c.last_active));
    known.truncate(MAX_CONVERSATIONS);
    let conversations = known
        .into_iter()
        .map(|c| {
            let sandbox = live.get(&c.key).map(|s| SandboxInfo {
                agent: s.agent.to_string(),
                uptime_secs: s.started.elapsed().as_secs(),
                usage: s.pid.and_then(resources::tree_usage),
            });
            ConversationInfo {
                conversation: c.key.to_string(),
                platform: c.key.platform.as_str(),
                backend: c.backend,
                state: if sandbox.is_some() { "running" } else { "idle" },
                created_at: c.created_at,
                last_active: c.last_active,
                sandbox,
            }
        })
        .collect();
    let approvals: Vec<ApprovalInfo> = store
        .pending_approvals()
        .await
        .map_err(store_failure)?
        .into_iter()
        .map(|p| ApprovalInfo {
            approval: p.id.to_string(),
            conversation: p.conversation.to_string(),
            requester: p.requester.to_string(),
            action: p.summary,
            created_at: p.created_at,
            expires_at: p.expires_at,
        })
        .collect();
    let entries = store
        .recent_audit(None, AUDIT_ENTRIES)
        .await
        .map_err(store_failure)?
        .into_iter()
        .rev()
        .map(|r| AuditLine {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            conversation: r.conversation,
            detail: r.detail,
        })
        .collect();
    let day = now_secs().div_euclid(86_400);
    let usage = store
        .usage_report(day, USAGE_LINES)
        .await
        .map_err(store_failure)?
        .into_iter()
        .map(|l| UsageLine {
            subject: l.subject.to_string(),
            tokens: l.tokens,
            budget: l.budget,
        })
        .collect();
    let channels = a
        .channels
        .0
        .iter()
        .map(|c| {
            let (state, detail) = match c.ended.get() {
                Some(Ok(())) => ("stopped", None),
                Some(Err(e)) => ("failed", Some(e.clone())),
                None if c.ready.is_cancelled() => ("connected", None),
                None => ("connecting", None),
            };
            ChannelInfo {
                platform: c.platform.as_str(),
                state,
                healthy: state == "connected",
                detail,
            }
        })
        .collect();
    Ok(Snapshot {
        gateway: GatewayInfo {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: console.started.elapsed().as_secs(),
            sandbox: services.sandbox.kind().to_string(),
            store: store.engine(),
            conversations_active: a.router.conversations(),
            sandboxes_running: live.len(),
            approvals_pending: approvals.len(),
        },
        channels,
        conversations,
        approvals,
        audit: AuditInfo {
            chain: chain_status(console).await,
            entries,
        },
        usage: UsageInfo { day, lines: usage },
    })
}

/// The audit chain's status, re-verified at most every [`AUDIT_RECHECK`].
async fn chain_status(console: &Console) -> ChainStatus {
    let cached = console
        .audit_status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some((at, status)) = cached
        && at.elapsed() < AUDIT_RECHECK
    {
        return status;
    }
    let Some(a) = console.attached.get() else {
        return ChainStatus::Broken {
            at_seq: 0,
            reason: "gateway starting".into(),
        };
    };
    let status = match a.services.store.verify_audit().await {
        Ok(entries) => ChainStatus::Intact { entries },
        Err(e) => ChainStatus::Broken {
            at_seq: e.seq,
            reason: e.reason,
        },
    };
    *console
        .audit_status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((Instant::now(), status.clone()));
    status
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionForm {
    approval: String,
    approve: bool,
}

/// `POST /api/dashboard/decisions {"approval": id, "approve": bool}`: the operator decides a
/// pending approval of any conversation. The approval's own conversation comes from the store,
/// never from the request.
pub(super) async fn decide(
    State(console): State<Arc<Console>>,
    Json(form): Json<DecisionForm>,
) -> Response {
    let a = match console.attached() {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let Ok(approval) = ApprovalId::new(form.approval) else {
        return (StatusCode::BAD_REQUEST, "not an approval id\n").into_response();
    };
    let row = match a.services.store.approval(&approval).await {
        Ok(Some(row)) => row,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such approval\n").into_response(),
        Err(e) => return store_failure(e).into_response(),
    };
    let decision = ApprovalDecision {
        conversation: row.conversation,
        approval,
        user: operator(),
        approve: form.approve,
        approver_role: None,
    };
    match a.services.approvals.decide(&decision) {
        DecisionResult::Accepted(outcome) => {
            Json(serde_json::json!({ "outcome": outcome.to_string() })).into_response()
        }
        DecisionResult::NotAuthorized => (
            StatusCode::FORBIDDEN,
            "the console operator is not an approver here\n",
        )
            .into_response(),
        DecisionResult::NotPending => (
            StatusCode::CONFLICT,
            "not pending: already decided, expired or cancelled\n",
        )
            .into_response(),
    }
}
