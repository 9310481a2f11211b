//! Platform-neutral events: what channel adapters hand the gateway ([`InboundEvent`]) and what
//! the gateway asks them to show ([`OutboundAction`]). Adapters translate to and from their
//! platform's wire format; nothing platform-specific crosses this line.

use serde::{Deserialize, Serialize};

use crate::ids::{ApprovalId, ConversationKey, UserRef};

/// Something a chat user did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InboundEvent {
    /// A message for the conversation's agent.
    Message(InboundMessage),
    /// A click on Approve / Deny, or a typed `/approve <id>` / `/deny <id>`.
    ApprovalDecision(ApprovalDecision),
    /// A slash command for the gateway (`/status`, Slack's `/boxedclaw status`, …). Never
    /// shown to the agent; parsed by [`crate::admin::parse`] and run only for admins.
    Command(InboundMessage),
}

/// A user's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundMessage {
    /// The platform's id for this event, used to drop re-deliveries.
    pub id: String,
    /// The conversation it belongs to.
    pub conversation: ConversationKey,
    /// The verified sender.
    pub user: UserRef,
    /// What they wrote.
    pub text: String,
}

/// A human's answer to an approval prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    /// The conversation the click or command came from; must own the approval.
    pub conversation: ConversationKey,
    /// Which approval.
    pub approval: ApprovalId,
    /// The verified clicker.
    pub user: UserRef,
    /// Approve or deny.
    pub approve: bool,
    /// Set only by an adapter whose platform vouches that the clicker holds a role the
    /// deployment names as an approver role (a Discord role id, from the interaction's
    /// member): the gateway then counts the click as a configured approver's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_role: Option<String>,
}

/// How an approval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    /// An authorized human approved; the call ran once.
    Approved,
    /// An authorized human denied; nothing ran.
    Denied,
    /// Nobody decided in time; nothing ran.
    Expired,
    /// The agent went away (crash, stop, reset) before a decision; nothing ran.
    Cancelled,
}

impl std::fmt::Display for ApprovalOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        })
    }
}

/// An approval prompt, ready to render as buttons or a typed-command hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPrompt {
    /// Where to show it.
    pub conversation: ConversationKey,
    /// The id buttons and `/approve` carry.
    pub approval: ApprovalId,
    /// The user whose message caused the call.
    pub requester: UserRef,
    /// What will run, already escaped with [`crate::display::escape_untrusted`], in full.
    pub action: String,
    /// The agent's stated reason, escaped.
    pub reason: String,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
}

/// Something the gateway wants shown in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutboundAction {
    /// A reply from the agent (adapters split it to the platform's size limits).
    Post {
        /// Where.
        conversation: ConversationKey,
        /// The text.
        text: String,
    },
    /// The agent is working.
    Typing {
        /// Where.
        conversation: ConversationKey,
    },
    /// A status line ("running shell…"); adapters may edit one message in place.
    Progress {
        /// Where.
        conversation: ConversationKey,
        /// The status.
        text: String,
    },
    /// Ask for a decision.
    RequestApproval(ApprovalPrompt),
    /// Show how an approval ended and remove its buttons.
    ResolveApproval {
        /// Where.
        conversation: ConversationKey,
        /// Which approval.
        approval: ApprovalId,
        /// How it ended.
        outcome: ApprovalOutcome,
        /// Who decided, when a human did.
        by: Option<UserRef>,
    },
    /// A notice for one user (ephemeral where the platform can), e.g. "you may not approve".
    Notice {
        /// Where.
        conversation: ConversationKey,
        /// For whom; `None` shows it to the conversation.
        user: Option<UserRef>,
        /// The text.
        text: String,
    },
}

impl OutboundAction {
    /// The conversation this action is for.
    pub fn conversation(&self) -> &ConversationKey {
        match self {
            Self::Post { conversation, .. }
            | Self::Typing { conversation }
            | Self::Progress { conversation, .. }
            | Self::ResolveApproval { conversation, .. }
            | Self::Notice { conversation, .. } => conversation,
            Self::RequestApproval(p) => &p.conversation,
        }
    }
}
