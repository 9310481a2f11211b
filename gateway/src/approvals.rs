//! Pending approvals: who may decide, and making sure each is decided at most once.
//!
//! A conversation opens an approval when its agent asks to run a sensitive call; the book
//! holds it until a human decides, it expires, or the conversation cancels it. Decisions come
//! from any channel, so every check happens here, under the entry's lock:
//! - the decision must come from the conversation that owns the approval (a button or command
//!   in another chat cannot name it);
//! - the decider must be the user whose message caused the call, or a configured approver;
//! - the first valid decision wins; later clicks, and clicks after expiry, change nothing.
//!
//! Fails closed: an unauthorized click leaves the approval pending, and every way an
//! approval can end other than an authorized "approve" runs nothing.

use std::time::Duration;

use boxedclaw_protocol::channel::{ApprovalDecision, ApprovalOutcome};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, UserRef};
use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A human's decision, as delivered to the waiting conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// Approved or denied.
    pub outcome: ApprovalOutcome,
    /// Who decided.
    pub by: UserRef,
    /// The platform-reported approver role that authorized `by`, when that is what did
    /// (recorded in the audit log).
    pub via_role: Option<String>,
}

/// What became of a decision attempt, for telling the clicker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionResult {
    /// Accepted; the conversation acts on it.
    Accepted(ApprovalOutcome),
    /// No such pending approval in this conversation (unknown, from another conversation,
    /// already decided, expired or cancelled). Deliberately one answer for all of these, so a
    /// forged id learns nothing about other conversations.
    NotPending,
    /// The clicker may not decide this approval; it stays pending.
    NotAuthorized,
}

struct Pending {
    conversation: ConversationKey,
    requester: UserRef,
    expires_at: Instant,
    decide: oneshot::Sender<Decided>,
}

/// Every pending approval of this gateway.
pub struct ApprovalBook {
    pending: DashMap<ApprovalId, Pending>,
    approvers: Vec<UserRef>,
}

impl std::fmt::Debug for ApprovalBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalBook")
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// The waiting side of an open approval.
#[derive(Debug)]
pub struct OpenApproval {
    /// The id users type and buttons carry.
    pub id: ApprovalId,
    /// When it expires.
    pub expires_at: Instant,
    /// Resolves when a human decides.
    pub decision: oneshot::Receiver<Decided>,
}

impl ApprovalBook {
    /// A book where `approvers` may decide any approval (besides each one's requester).
    pub fn new(approvers: Vec<UserRef>) -> Self {
        Self {
            pending: DashMap::new(),
            approvers,
        }
    }

    /// Opens an approval for `conversation`, requested by `requester`, expiring after `ttl`.
    pub fn open(
        &self,
        conversation: &ConversationKey,
        requester: &UserRef,
        ttl: Duration,
    ) -> OpenApproval {
        loop {
            let id = new_approval_id();
            if !self.pending.contains_key(&id) {
                return self.restore(&id, conversation, requester, ttl);
            }
        }
    }

    /// Opens an approval under a given id: a fresh one, or one persisted before a restart.
    pub fn restore(
        &self,
        id: &ApprovalId,
        conversation: &ConversationKey,
        requester: &UserRef,
        ttl: Duration,
    ) -> OpenApproval {
        let (tx, rx) = oneshot::channel();
        let expires_at = Instant::now() + ttl;
        let pending = Pending {
            conversation: conversation.clone(),
            requester: requester.clone(),
            expires_at,
            decide: tx,
        };
        self.pending.insert(id.clone(), pending);
        OpenApproval {
            id: id.clone(),
            expires_at,
            decision: rx,
        }
    }

    /// Applies a human's decision.
    pub fn decide(&self, d: &ApprovalDecision) -> DecisionResult {
        let Some(entry) = self.pending.get(&d.approval) else {
            return DecisionResult::NotPending;
        };
        if entry.conversation != d.conversation {
            return DecisionResult::NotPending;
        }
        if Instant::now() >= entry.expires_at {
            // The conversation's timer resolves it as expired; a late click changes nothing.
            return DecisionResult::NotPending;
        }
        let on_own_account = entry_authorizes(&entry.requester, &self.approvers, &d.user);
        if !on_own_account && d.approver_role.is_none() {
            return DecisionResult::NotAuthorized;
        }
        drop(entry);
        // Re-check under the removal lock: only one of two concurrent clicks removes it.
        let removed = self.pending.remove_if(&d.approval, |_, p| {
            p.conversation == d.conversation && Instant::now() < p.expires_at
        });
        let Some((_, pending)) = removed else {
            return DecisionResult::NotPending;
        };
        let outcome = if d.approve {
            ApprovalOutcome::Approved
        } else {
            ApprovalOutcome::Denied
        };
        // A role only matters when nothing else authorized the clicker.
        let via_role = if on_own_account {
            None
        } else {
            d.approver_role.clone()
        };
        match pending.decide.send(Decided {
            outcome,
            by: d.user.clone(),
            via_role,
        }) {
            Ok(()) => DecisionResult::Accepted(outcome),
            // The conversation stopped waiting (its agent died): nothing will run.
            Err(_) => DecisionResult::NotPending,
        }
    }

    /// Withdraws an approval (expired or cancelled). Returns false if a decision won the race,
    /// in which case the waiting side will receive it.
    pub fn withdraw(&self, id: &ApprovalId) -> bool {
        self.pending.remove(id).is_some()
    }

    /// Pending approvals right now.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// 48 random bits: unguessable enough that ids do not help an attacker (authorization never
/// depends on an id being secret).
fn new_approval_id() -> ApprovalId {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness means a broken host; fall back to the clock so ids stay unique.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    ApprovalId::from_random(bytes)
}

/// Whether `user` may decide on their own account: the requester or a configured approver.
fn entry_authorizes(requester: &UserRef, approvers: &[UserRef], user: &UserRef) -> bool {
    requester == user || approvers.contains(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxedclaw_protocol::ids::Platform;

    fn key(c: &str) -> ConversationKey {
        ConversationKey::new(Platform::Slack, Some("T1"), c, None).unwrap()
    }
    fn user(u: &str) -> UserRef {
        UserRef::new(Platform::Slack, u).unwrap()
    }
    fn decision(conv: &str, id: &ApprovalId, by: &str, approve: bool) -> ApprovalDecision {
        ApprovalDecision {
            conversation: key(conv),
            approval: id.clone(),
            user: user(by),
            approve,
            approver_role: None,
        }
    }

    #[tokio::test]
    async fn requester_decides_once_and_late_clicks_change_nothing() {
        let book = ApprovalBook::new(vec![]);
        let mut open = book.open(&key("C1"), &user("alice"), Duration::from_secs(60));
        assert_eq!(
            book.decide(&decision("C1", &open.id, "alice", true)),
            DecisionResult::Accepted(ApprovalOutcome::Approved)
        );
        assert_eq!(
            book.decide(&decision("C1", &open.id, "alice", false)),
            DecisionResult::NotPending
        );
        let got = open.decision.try_recv().unwrap();
        assert_eq!(
            got,
            Decided {
                outcome: ApprovalOutcome::Approved,
                by: user("alice"),
                via_role: None,
            }
        );
        assert!(book.is_empty());
    }

    #[tokio::test]
    async fn strangers_and_other_conversations_cannot_decide() {
        let book = ApprovalBook::new(vec![user("boss")]);
        let mut open = book.open(&key("C1"), &user("alice"), Duration::from_secs(60));
        assert_eq!(
            book.decide(&decision("C1", &open.id, "mallory", true)),
            DecisionResult::NotAuthorized
        );
        // Forged: the right id, clicked from another conversation, even by the requester.
        assert_eq!(
            book.decide(&decision("C2", &open.id, "alice", true)),
            DecisionResult::NotPending
        );
        assert!(open.decision.try_recv().is_err(), "still pending");
        assert_eq!(
            book.decide(&decision("C1", &open.id, "boss", false)),
            DecisionResult::Accepted(ApprovalOutcome::Denied)
        );
    }

    #[tokio::test]
    async fn a_platform_vouched_approver_role_counts_but_only_in_its_conversation() {
        let book = ApprovalBook::new(vec![]);
        let mut open = book.open(&key("C1"), &user("alice"), Duration::from_secs(60));
        let mut elsewhere = decision("C2", &open.id, "carol", true);
        elsewhere.approver_role = Some("900".into());
        assert_eq!(book.decide(&elsewhere), DecisionResult::NotPending);
        let mut by_role = decision("C1", &open.id, "carol", true);
        by_role.approver_role = Some("900".into());
        assert_eq!(
            book.decide(&by_role),
            DecisionResult::Accepted(ApprovalOutcome::Approved)
        );
        let decided = open.decision.try_recv().unwrap();
        assert_eq!(decided.by, user("carol"));
        assert_eq!(decided.via_role.as_deref(), Some("900"));
    }

    #[tokio::test(start_paused = true)]
    async fn clicks_after_expiry_run_nothing() {
        let book = ApprovalBook::new(vec![]);
        let mut open = book.open(&key("C1"), &user("alice"), Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            book.decide(&decision("C1", &open.id, "alice", true)),
            DecisionResult::NotPending
        );
        assert!(book.withdraw(&open.id));
        assert!(open.decision.try_recv().is_err());
    }

    #[tokio::test]
    async fn concurrent_double_clicks_accept_exactly_one() {
        let book = std::sync::Arc::new(ApprovalBook::new(vec![]));
        for _ in 0..200 {
            let open = book.open(&key("C1"), &user("alice"), Duration::from_secs(60));
            let (a, b) = (book.clone(), book.clone());
            let (d1, d2) = (
                decision("C1", &open.id, "alice", true),
                decision("C1", &open.id, "alice", true),
            );
            let t1 = std::thread::spawn(move || a.decide(&d1));
            let t2 = std::thread::spawn(move || b.decide(&d2));
            let results = [t1.join().unwrap(), t2.join().unwrap()];
            let accepted = results
                .iter()
                .filter(|r| matches!(r, DecisionResult::Accepted(_)))
                .count();
            assert_eq!(accepted, 1, "{results:?}");
        }
    }

    #[test]
    fn ids_are_short_and_distinct() {
        let a = new_approval_id();
        let b = new_approval_id();
        assert_eq!(a.as_str().len(), 12);
        assert_ne!(a, b);
    }
}
