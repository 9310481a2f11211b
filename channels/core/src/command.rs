//! Slash commands typed in a chat: `/approve <id>` and `/deny <id>` are approval decisions,
//! everything else goes to the gateway's admin core (which parses it and checks the sender).
//! Shared by every adapter so all platforms treat typed commands the same.

use boxedclaw_protocol::channel::{ApprovalDecision, InboundMessage};
use boxedclaw_protocol::ids::ApprovalId;

use crate::InboundEvent;

/// The event for `msg`, whose text is a command starting with `/` (platform decorations such
/// as Telegram's `@botname` already removed).
pub fn interpret(msg: InboundMessage) -> InboundEvent {
    let mut words = msg.text.split_whitespace();
    let approve = match words.next() {
        Some("/approve") => Some(true),
        Some("/deny") => Some(false),
        _ => None,
    };
    if let (Some(approve), Some(id), None) = (approve, words.next(), words.next())
        && let Ok(approval) = ApprovalId::new(id.to_owned())
    {
        return InboundEvent::ApprovalDecision(ApprovalDecision {
            conversation: msg.conversation,
            approval,
            user: msg.user,
            approve,
            approver_role: None,
        });
    }
    InboundEvent::Command(msg)
}

#[cfg(test)]
mod tests {
    use boxedclaw_protocol::ids::{ConversationKey, Platform, UserRef};

    use super::*;

    fn msg(text: &str) -> InboundMessage {
        InboundMessage {
            id: "1".into(),
            conversation: ConversationKey::new(Platform::Slack, Some("T1"), "C1", None).unwrap(),
            user: UserRef::new(Platform::Slack, "U1").unwrap(),
            text: text.into(),
        }
    }

    #[test]
    fn approve_and_deny_with_one_valid_id_are_decisions() {
        assert!(matches!(interpret(msg("/approve 0123456789ab")),
            InboundEvent::ApprovalDecision(d) if d.approve && d.approval.as_str() == "0123456789ab"));
        assert!(matches!(interpret(msg("/deny 0123456789ab")),
            InboundEvent::ApprovalDecision(d) if !d.approve));
        // Anything else is for the admin core, which answers with usage help.
        for text in [
            "/approve",
            "/approve a b",
            "/deny x/y",
            "/status",
            "/budget user:1 5",
        ] {
            assert!(
                matches!(interpret(msg(text)), InboundEvent::Command(_)),
                "{text}"
            );
        }
    }
}
