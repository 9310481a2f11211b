//! Telegram updates → platform-neutral inbound events.
//!
//! Mapping rules (see `docs/specs/channel-adapter.md`):
//! - a private chat is that user's conversation;
//! - a group is one conversation, or one per forum topic when the message is in a topic;
//! - in groups the bot acts only when mentioned (`@bot`), replied to, or given a command;
//! - `/approve <id>` and `/deny <id>` are decisions, other `/commands` go to the admin core;
//! - a button click is a decision for the clicked message's conversation, accepted only with
//!   callback data this bot signed for that conversation (see `boxedclaw_channels::button`).

use boxedclaw_channels::InboundEvent;
use boxedclaw_protocol::channel::{ApprovalDecision, InboundMessage};
use boxedclaw_protocol::ids::{ConversationKey, Platform, UserRef};
use teloxide::types::{CallbackQuery, MaybeInaccessibleMessage, Message, Update, UpdateKind, User};

use boxedclaw_channels::button::ButtonSigner;

/// Who the bot is, learned from `getMe` at start.
#[derive(Debug, Clone)]
pub(crate) struct BotIdentity {
    /// The bot's user id.
    pub(crate) id: u64,
    /// Its `@username`, without the `@`.
    pub(crate) username: String,
}

/// What one update means to the gateway.
#[derive(Debug)]
pub(crate) enum Intake {
    /// Forward this event.
    Event(InboundEvent),
    /// A button click: forward the decision and remember the query so its spinner can be
    /// answered with the outcome.
    Click {
        /// The decision to forward.
        decision: ApprovalDecision,
        /// Telegram's id of the callback query.
        query_id: String,
    },
    /// A click whose data this bot did not sign for that conversation: answer it, forward
    /// nothing.
    RefusedClick {
        /// Telegram's id of the callback query.
        query_id: String,
    },
    /// Nothing for us (another bot's command, a sticker, a group chat not addressed to us).
    Ignore,
}

/// The conversation a message belongs to: its chat, plus its forum topic when it is in one.
pub(crate) fn conversation_of(msg: &Message) -> Option<ConversationKey> {
    let topic = if msg.is_topic_message {
        msg.thread_id.map(|t| t.0.0.to_string())
    } else {
        None
    };
    ConversationKey::new(
        Platform::Telegram,
        None,
        &msg.chat.id.0.to_string(),
        topic.as_deref(),
    )
    .ok()
}

/// The verified sender (Telegram signs nothing, but only Telegram can put a user id in an
/// update reaching our token's `getUpdates` or our secret-checked webhook).
fn user_ref(user: &User) -> Option<UserRef> {
    UserRef::new(Platform::Telegram, &user.id.0.to_string()).ok()
}

/// Interprets one update.
pub(crate) fn interpret(update: &Update, me: &BotIdentity, signer: &ButtonSigner) -> Intake {
    match &update.kind {
        UpdateKind::Message(msg) => message(update.id.0, msg, me),
        UpdateKind::CallbackQuery(q) => click(q, signer),
        _ => Intake::Ignore,
    }
}

fn message(update_id: u32, msg: &Message, me: &BotIdentity) -> Intake {
    let Some(from) = msg.from.as_ref().filter(|u| !u.is_bot) else {
        return Intake::Ignore;
    };
    let (Some(text), Some(conversation), Some(user)) =
        (msg.text(), conversation_of(msg), user_ref(from))
    else {
        return Intake::Ignore;
    };
    let private = msg.chat.is_private();
    let event = |text: String| InboundMessage {
        id: format!("update-{update_id}"),
        conversation: conversation.clone(),
        user: user.clone(),
        text,
    };
    if let Some(command) = text.strip_prefix('/') {
        return match command_for_us(command, &me.username) {
            Some(command) => Intake::Event(boxedclaw_channels::command::interpret(event(command))),
            None => Intake::Ignore,
        };
    }
    if private {
        return Intake::Event(InboundEvent::Message(event(text.to_owned())));
    }
    let replied_to_bot = msg
        .reply_to_message()
        .and_then(|r| r.from.as_ref())
        .is_some_and(|u| u.id.0 == me.id);
    match strip_mention(text, &me.username) {
        Some(rest) => Intake::Event(InboundEvent::Message(event(rest))),
        None if replied_to_bot => Intake::Event(InboundEvent::Message(event(text.to_owned()))),
        None => Intake::Ignore,
    }
}

/// `command` (after the `/`) with a trailing `@thisbot` removed from its first word; `None`
/// when it is addressed to another bot.
fn command_for_us(command: &str, username: &str) -> Option<String> {
    let (first, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    let name = match first.split_once('@') {
        Some((name, bot)) if bot.eq_ignore_ascii_case(username) => name,
        Some(_) => return None,
        None => first,
    };
    Some(if rest.is_empty() {
        format!("/{name}")
    } else {
        format!("/{name} {}", rest.trim())
    })
}

/// The text with `@username` removed, if it mentions the bot (case-insensitively, as a whole
/// word).
fn strip_mention(text: &str, username: &str) -> Option<String> {
    let needle = format!("@{}", username.to_ascii_lowercase());
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle).map(|i| i + from) {
        let end = i + needle.len();
        let word_ends = lower[end..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if word_ends {
            let rest = format!("{}{}", &text[..i], &text[end..]);
            return Some(rest.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        from = end;
    }
    None
}

fn click(q: &CallbackQuery, signer: &ButtonSigner) -> Intake {
    let query_id = q.id.0.clone();
    let refused = || Intake::RefusedClick {
        query_id: query_id.clone(),
    };
    let Some(MaybeInaccessibleMessage::Regular(msg)) = &q.message else {
        return refused();
    };
    let (Some(conversation), Some(user), Some(data)) =
        (conversation_of(msg), user_ref(&q.from), q.data.as_deref())
    else {
        return refused();
    };
    match signer.open(data, &conversation) {
        Some((approval, approve)) => Intake::Click {
            decision: ApprovalDecision {
                conversation,
                approval,
                user,
                approve,
                approver_role: None,
            },
            query_id,
        },
        None => refused(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_addressed_to_other_bots_are_ignored() {
        assert_eq!(command_for_us("status", "claw").as_deref(), Some("/status"));
        assert_eq!(
            command_for_us("status@Claw  now ", "claw").as_deref(),
            Some("/status now")
        );
        assert_eq!(command_for_us("status@otherbot", "claw"), None);
    }

    #[test]
    fn mentions_are_whole_words_and_removed() {
        assert_eq!(
            strip_mention("hey @Claw what is up", "claw").as_deref(),
            Some("hey what is up")
        );
        assert_eq!(strip_mention("@clawbot hi", "claw"), None);
        assert_eq!(strip_mention("no mention", "claw"), None);
        assert_eq!(
            strip_mention("@clawbot and @claw", "claw").as_deref(),
            Some("@clawbot and")
        );
    }
}
