//! Slack events → platform-neutral inbound events.
//!
//! Mapping rules (see `docs/specs/channel-adapter.md`):
//! - a direct message (`channel_type: im`) is that user's conversation (no threads);
//! - in channels every thread is a conversation: a top-level mention starts one (its own `ts`
//!   becomes the thread), and later messages in a thread the bot is in reach the same agent
//!   (whether it is the bot's is the adapter's call: see [`Intake::ThreadReply`]);
//! - the team id is part of every key;
//! - a message's id is `channel:ts`, the same for Slack's retries and for the `message` and
//!   `app_mention` events one mention produces, so the gateway runs one turn;
//! - a button click counts only with data this bot signed for the clicked message's
//!   conversation; the `/boxedclaw` slash command goes to the admin core.

use boxedclaw_channels::InboundEvent;
use boxedclaw_channels::button::ButtonSigner;
use boxedclaw_protocol::channel::{ApprovalDecision, InboundMessage};
use boxedclaw_protocol::ids::{ConversationKey, Platform, UserRef};
use slack_morphism::prelude::*;

/// Who the bot is, from `auth.test` at start.
#[derive(Debug, Clone)]
pub(crate) struct BotIdentity {
    /// The bot's user id (`U…`), as it appears in mentions.
    pub(crate) user: String,
    /// The bot's bot id (`B…`), carried by the messages it posts.
    pub(crate) bot_id: Option<String>,
}

impl BotIdentity {
    /// Whether `text` (Slack-formatted) mentions the bot: `<@U…>` or `<@U…|name>`.
    pub(crate) fn mentioned_in(&self, text: &str) -> bool {
        text.contains(&format!("<@{}>", self.user)) || text.contains(&format!("<@{}|", self.user))
    }

    /// Whether a thread with this parent message is the bot's: the parent mentions the bot or
    /// was posted by it.
    pub(crate) fn owns_thread_of(&self, parent: &SlackHistoryMessage) -> bool {
        let by_me = parent
            .sender
            .user
            .as_ref()
            .is_some_and(|u| u.0 == self.user)
            || parent
                .sender
                .bot_id
                .as_ref()
                .is_some_and(|b| self.bot_id.as_deref() == Some(b.0.as_str()));
        by_me
            || parent
                .content
                .text
                .as_deref()
                .is_some_and(|t| self.mentioned_in(t))
    }
}

/// What one Slack event means to the gateway.
#[derive(Debug)]
pub(crate) enum Intake {
    /// A message for a conversation's agent: a DM, or a mention (a top-level one starts a
    /// thread; either way the adapter then treats the thread as the bot's).
    Message { message: InboundMessage },
    /// A message without a mention in a channel thread: for the agent only when the thread
    /// is the bot's, which this module cannot know (the adapter remembers, or asks Slack).
    ThreadReply { message: InboundMessage },
    /// A click on a signed button.
    Click {
        decision: ApprovalDecision,
        response_url: Option<String>,
    },
    /// A click whose data was not signed for this conversation.
    RefusedClick { response_url: Option<String> },
    /// Nothing for the gateway.
    Ignore,
}

fn key(team: &str, channel: &str, thread: Option<&str>) -> Option<ConversationKey> {
    ConversationKey::new(Platform::Slack, Some(team), channel, thread).ok()
}

fn user_ref(id: &str) -> Option<UserRef> {
    UserRef::new(Platform::Slack, id).ok()
}

/// Slack escapes `&`, `<` and `>` in message text; mentions look like `<@U123>`.
fn plain_text(text: &str, bot_user: &str) -> String {
    let text = text
        .replace(&format!("<@{bot_user}>"), "")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Interprets one Events API callback.
pub(crate) fn push_event(ev: &SlackPushEventCallback, me: &BotIdentity) -> Intake {
    let team = ev.team_id.0.as_str();
    match &ev.event {
        SlackEventCallbackBody::AppMention(m) => {
            let channel = m.channel.0.as_str();
            let text = m.content.text.as_deref().unwrap_or_default();
            if m.user.0 == me.user {
                return Intake::Ignore;
            }
            // A top-level mention starts a thread: its own ts.
            let thread = m.origin.thread_ts.as_ref().unwrap_or(&m.origin.ts);
            message(
                team,
                channel,
                Some(&thread.0),
                &m.user.0,
                &m.origin.ts.0,
                text,
                me,
            )
            .map_or(Intake::Ignore, |message| Intake::Message { message })
        }
        SlackEventCallbackBody::Message(m) => {
            // Edits, joins, bot posts (ours included) and other subtypes are not messages
            // from a person.
            if m.subtype.is_some() || m.sender.bot_id.is_some() {
                return Intake::Ignore;
            }
            let (Some(channel), Some(user), Some(text)) = (
                m.origin.channel.as_ref(),
                m.sender.user.as_ref(),
                m.content.as_ref().and_then(|c| c.text.as_deref()),
            ) else {
                return Intake::Ignore;
            };
            if user.0 == me.user {
                return Intake::Ignore;
            }
            let channel = channel.0.as_str();
            let direct =
                matches!(m.origin.channel_type, Some(SlackChannelType(ref t)) if t == "im");
            if direct {
                return message(team, channel, None, &user.0, &m.origin.ts.0, text, me)
                    .map_or(Intake::Ignore, |message| Intake::Message { message });
            }
            // A mention arrives as `app_mention` as well; that event is the one used.
            if me.mentioned_in(text) {
                return Intake::Ignore;
            }
            // Top-level chatter without a mention is not for the bot.
            let Some(thread) = &m.origin.thread_ts else {
                return Intake::Ignore;
            };
            message(
                team,
                channel,
                Some(&thread.0),
                &user.0,
                &m.origin.ts.0,
                text,
                me,
            )
            .map_or(Intake::Ignore, |message| Intake::ThreadReply { message })
        }
        _ => Intake::Ignore,
    }
}

fn message(
    team: &str,
    channel: &str,
    thread: Option<&str>,
    user: &str,
    ts: &str,
    text: &str,
    me: &BotIdentity,
) -> Option<InboundMessage> {
    Some(InboundMessage {
        id: format!("{channel}:{ts}"),
        conversation: key(team, channel, thread)?,
        user: user_ref(user)?,
        text: plain_text(text, &me.user),
    })
}

/// Interprets a `block_actions` click on an Approve / Deny button. The conversation is the
/// clicked message's: `copy_of(channel, ts)` names it for the adapter's copies of prompts in
/// the approvers' channel, else it is the message's own channel and thread.
pub(crate) fn click(
    ev: &SlackInteractionBlockActionsEvent,
    signer: &ButtonSigner,
    copy_of: impl Fn(&str, &str) -> Option<ConversationKey>,
) -> Intake {
    let response_url = ev.response_url.as_ref().map(|u| u.0.to_string());
    let refused = || Intake::RefusedClick {
        response_url: response_url.clone(),
    };
    let (channel, message_ts) = match &ev.container {
        SlackInteractionActionContainer::Message(c) => (
            c.channel_id.as_ref().map(|c| c.0.clone()),
            Some(c.message_ts.0.clone()),
        ),
        _ => (None, None),
    };
    let channel = channel.or_else(|| ev.channel.as_ref().map(|c| c.id.0.clone()));
    let message_ts = message_ts.or_else(|| ev.message.as_ref().map(|m| m.origin.ts.0.clone()));
    let thread = ev
        .message
        .as_ref()
        .and_then(|m| m.origin.thread_ts.as_ref())
        .map(|t| t.0.clone());
    let (Some(channel), Some(user)) = (channel, ev.user.as_ref()) else {
        return refused();
    };
    let copied = message_ts.and_then(|ts| copy_of(&channel, &ts));
    let (Some(conversation), Some(user)) = (
        copied.or_else(|| key(&ev.team.id.0, &channel, thread.as_deref())),
        user_ref(&user.id.0),
    ) else {
        return refused();
    };
    let Some(value) = ev.actions.iter().flatten().find_map(|a| a.value.as_deref()) else {
        return refused();
    };
    match signer.open(value, &conversation) {
        Some((approval, approve)) => Intake::Click {
            decision: ApprovalDecision {
                conversation,
                approval,
                user,
                approve,
                approver_role: None,
            },
            response_url,
        },
        None => refused(),
    }
}

/// The `/boxedclaw <command>` slash command as an admin command (or a typed decision) for
/// the channel it was used in.
pub(crate) fn slash_command(ev: &SlackCommandEvent) -> Option<InboundEvent> {
    let text = ev.text.as_deref().unwrap_or_default().trim();
    let text = if text.is_empty() { "help" } else { text };
    let message = InboundMessage {
        id: format!("command:{}", ev.trigger_id.0),
        conversation: key(&ev.team_id.0, &ev.channel_id.0, None)?,
        user: user_ref(&ev.user_id.0)?,
        text: format!("/{text}"),
    };
    Some(boxedclaw_channels::command::interpret(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_and_slack_escapes_are_undone() {
        assert_eq!(
            plain_text("<@U0BOT>  run `a &amp;&amp; b` &lt;x&gt;", "U0BOT"),
            "run `a && b` <x>"
        );
    }
}
