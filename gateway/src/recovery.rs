//! What a gateway does on start with the state a previous run left: replies it could not
//! deliver are delivered (once, within their TTL), and approvals still pending are restored —
//! expired ones are recorded as expired (never as denied), the others are shown again and stay
//! decidable; an approval granted after the restart resumes the interrupted turn, running
//! exactly the bound call once.

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::OutboundAction;
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};

use crate::approvals::OpenApproval;
use crate::router::{Router, Work};
use crate::services::{Services, now_secs};
use crate::store::{ApprovalRow, ApprovalState};

/// Replays the outbox and restores pending approvals. Call once the channels are running.
pub async fn recover(services: &Arc<Services>, router: &Arc<Router>) {
    services.deliver_outbox().await;
    let rows = match services.store.pending_approvals().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "store: pending approvals unreadable; none restored");
            return;
        }
    };
    for row in rows {
        let now = now_secs();
        if row.expires_at <= now {
            settle(services, &row, ApprovalOutcome::Expired, None).await;
            continue;
        }
        let ttl = Duration::from_secs(u64::try_from(row.expires_at - now).unwrap_or(0));
        let open = services
            .approvals
            .restore(&row.id, &row.conversation, &row.requester, ttl);
        tracing::info!(approval = %row.id, conversation = %row.conversation, "approval restored after restart");
        let prompt = ApprovalPrompt {
            conversation: row.conversation.clone(),
            approval: row.id.clone(),
            requester: row.requester.clone(),
            action: row.summary.clone(),
            reason: "still pending from before a gateway restart".into(),
            expires_in_secs: ttl.as_secs(),
        };
        services
            .outbound
            .send(OutboundAction::RequestApproval(prompt))
            .await;
        let (services2, router2) = (services.clone(), router.clone());
        services
            .tasks
            .spawn(async move { wait(&services2, &router2, row, open).await });
    }
}

async fn wait(
    services: &Arc<Services>,
    router: &Arc<Router>,
    row: ApprovalRow,
    mut open: OpenApproval,
) {
    let shutdown = services.shutdown.clone();
    let decided = tokio::select! {
        decided = &mut open.decision => decided.ok(),
        () = tokio::time::sleep_until(open.expires_at) => {
            if services.approvals.withdraw(&row.id) {
                settle(services, &row, ApprovalOutcome::Expired, None).await;
                return;
            }
            // A decision won the race; it has been sent.
            open.decision.await.ok()
        }
        // Left pending in the store for the next start.
        () = shutdown.cancelled() => {
            services.approvals.withdraw(&row.id);
            return;
        }
    };
    let Some(d) = decided else { return };
    let recorded = settle(services, &row, d.outcome, Some(&d.by)).await;
    if recorded && d.outcome == ApprovalOutcome::Approved {
        let key = row.conversation.clone();
        if let Err(e) = router.submit(&key, Work::Resume(Box::new(row)), true) {
            tracing::error!(conversation = %key, error = %e, "approved call could not be resumed");
        }
    }
}

/// Records how a restored approval ended (exactly once, through the store), audits it and
/// shows it. Returns whether this call recorded it.
async fn settle(
    services: &Services,
    row: &ApprovalRow,
    outcome: ApprovalOutcome,
    by: Option<&boxedclaw_protocol::ids::UserRef>,
) -> bool {
    let state = match outcome {
        ApprovalOutcome::Approved => ApprovalState::Approved,
        ApprovalOutcome::Denied => ApprovalState::Denied,
        ApprovalOutcome::Expired => ApprovalState::Expired,
        ApprovalOutcome::Cancelled => ApprovalState::Cancelled,
    };
    let changed = match services
        .store
        .resolve_approval(&row.id, state, by, now_secs())
        .await
    {
        Ok(changed) => changed,
        Err(e) => {
            tracing::error!(approval = %row.id, error = %e, "store: approval not resolved");
            false
        }
    };
    if !changed {
        return false;
    }
    services.metrics.approval_resolved(outcome);
    let actor = by.map_or_else(|| "gateway".to_owned(), ToString::to_string);
    let conversation = row.conversation.to_string();
    services
        .audit(
            &actor,
            &format!("approval.{outcome}"),
            Some(&conversation),
            &row.id.to_string(),
        )
        .await;
    let resolve = OutboundAction::ResolveApproval {
        conversation: row.conversation.clone(),
        approval: row.id.clone(),
        outcome,
        by: by.cloned(),
    };
    services.outbound.send(resolve).await;
    true
}
