//! Admin commands: authorization and execution.
//!
//! Commands reach the gateway only as [`InboundEvent::Command`] events, which adapters build
//! from platform slash commands; the text of chat messages and of agent output never comes
//! here. The caller must be in `BOXEDCLAW_ADMINS` by verified platform user id; everyone else
//! is refused (and the refusal audited). Answers go to the caller as a notice.
//!
//! [`InboundEvent::Command`]: boxedclaw_protocol::channel::InboundEvent::Command

use std::fmt::Write as _;
use std::sync::Arc;

use boxedclaw_channels::OutboundAction;
use boxedclaw_protocol::admin::{self, AdminCommand, BudgetTarget, HELP};
use boxedclaw_protocol::channel::InboundMessage;

use crate::router::{Router, Work};
use crate::services::{Services, now_secs};
use crate::store::{BudgetSubject, ConversationRow};

/// Runs one command from `req.user` and tells them the result.
pub async fn handle(services: &Arc<Services>, router: &Arc<Router>, req: InboundMessage) {
    let text = if !services.config.admins.contains(&req.user) {
        services
            .audit(
                &req.user.to_string(),
                "admin.refused",
                Some(&req.conversation.to_string()),
                &req.text,
            )
            .await;
        "Only gateway admins may run commands.".to_owned()
    } else {
        match admin::parse(&req.text) {
            Err(e) => e.to_string(),
            Ok(command) => {
                let detail = format!("{command:?}");
                let out = run(services, router, command).await;
                let actor = req.user.to_string();
                services
                    .audit(
                        &actor,
                        "admin.command",
                        Some(&req.conversation.to_string()),
                        &detail,
                    )
                    .await;
                out
            }
        }
    };
    let notice = OutboundAction::Notice {
        conversation: req.conversation,
        user: Some(req.user),
        text,
    };
    services.outbound.send(notice).await;
}

async fn run(services: &Arc<Services>, router: &Arc<Router>, command: AdminCommand) -> String {
    let store = &services.store;
    let fail = |e: crate::store::StoreError| format!("store error: {e}");
    match command {
        AdminCommand::Help => HELP.to_owned(),
        AdminCommand::Status => {
            let pending = store
                .pending_approvals()
                .await
                .map(|p| p.len())
                .unwrap_or(0);
            let known = store.conversations().await.map(|c| c.len()).unwrap_or(0);
            format!(
                "sandbox: {}\nstore: {}\nconversations: {known} known, {} active\npending approvals: {pending}",
                services.sandbox.kind(),
                store.engine(),
                router.conversations(),
            )
        }
        AdminCommand::Agents => match store.conversations().await {
            Err(e) => fail(e),
            Ok(rows) if rows.is_empty() => "no conversations yet".to_owned(),
            Ok(rows) => {
                let mut out = String::new();
                for r in rows.iter().take(50) {
                    let live = if router.is_active(&r.key) {
                        "running"
                    } else {
                        "idle"
                    };
                    let _ = writeln!(
                        out,
                        "{} — {} sandbox, {live}, last active {}",
                        r.key,
                        r.backend,
                        ago(r.last_active)
                    );
                }
                out
            }
        },
        AdminCommand::Approvals => match store.pending_approvals().await {
            Err(e) => fail(e),
            Ok(rows) if rows.is_empty() => "no pending approvals".to_owned(),
            Ok(rows) => rows
                .iter()
                .map(|a| {
                    format!(
                        "{} in {} by {}: {}",
                        a.id, a.conversation, a.requester, a.summary
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        },
        AdminCommand::Stop { conversation } => match find(services, &conversation).await {
            Err(msg) => msg,
            Ok(row) => match router.submit(&row.key, Work::Stop, false) {
                Ok(()) => format!("stopping the sandbox of {}", row.key),
                Err(e) => e.to_string(),
            },
        },
        AdminCommand::Reset { conversation } => match find(services, &conversation).await {
            Err(msg) => msg,
            Ok(row) => {
                if let Err(e) = router.submit(&row.key, Work::Reset, true) {
                    return e.to_string();
                }
                format!("{} will start with fresh memory (its files stay)", row.key)
            }
        },
        AdminCommand::Budget {
            target,
            tokens_per_day,
        } => {
            let subject = match target {
                BudgetTarget::User(u) => BudgetSubject::User(u),
                BudgetTarget::Conversation(name) => match find(services, &name).await {
                    Ok(row) => BudgetSubject::Conversation(row.key),
                    Err(msg) => return msg,
                },
            };
            match store.set_budget(&subject, tokens_per_day).await {
                Ok(()) => {
                    let who = match &subject {
                        BudgetSubject::User(u) => format!("user {u}"),
                        BudgetSubject::Conversation(k) => format!("conversation {k}"),
                    };
                    format!("budget of {who} set to {tokens_per_day} tokens per day")
                }
                Err(e) => fail(e),
            }
        }
        AdminCommand::Audit { conversation } => {
            let verdict = match store.verify_audit().await {
                Ok(n) => format!("audit chain verified ({n} entries)"),
                Err(broken) => format!("AUDIT CHAIN BROKEN: {broken}"),
            };
            match store.recent_audit(conversation.as_deref(), 20).await {
                Err(e) => fail(e),
                Ok(rows) => {
                    let mut out = verdict;
                    for r in rows {
                        let _ = write!(out, "\n#{} {} {} {}", r.seq, ago(r.at), r.actor, r.action);
                        if let Some(c) = &r.conversation {
                            let _ = write!(out, " [{c}]");
                        }
                        if !r.detail.is_empty() {
                            let _ =
                                write!(out, " {}", r.detail.chars().take(200).collect::<String>());
                        }
                    }
                    out
                }
            }
        }
    }
}

async fn find(services: &Services, name: &str) -> Result<ConversationRow, String> {
    match services.store.conversation_by_name(name).await {
        Ok(Some(row)) => Ok(row),
        Ok(None) => Err(format!("no conversation named {name:?}; see agents")),
        Err(e) => Err(format!("store error: {e}")),
    }
}

fn ago(at: i64) -> String {
    let secs = now_secs().saturating_sub(at).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}
