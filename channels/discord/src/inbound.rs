//! Discord events → what they mean for the gateway: the pure part of intake.
//!
//! Mapping rules (see `docs/specs/channel-adapter.md`):
//! - a DM is that user's conversation (`channel` = the DM channel, no tenant);
//! - in a guild (`tenant` = guild id) each thread is a conversation (`channel` = its parent,
//!   `thread` = the thread); a mention of the bot in a plain channel starts a thread from that
//!   message, and the thread is the conversation;
//! - in guilds the bot acts only when addressed (a mention or a reply to one of its messages),
//!   or in a thread it started or was addressed in; other chatter is ignored;
//! - only application commands (`/boxedclaw …`) are commands; text starting with `/` in a
//!   message is a message like any other;
//! - a button click is a decision for the clicked message's conversation, accepted only with a
//!   `custom_id` this bot signed for that conversation (`boxedclaw_channels::button`).
//!
//! The parts that need Discord (whether a channel is a thread, creating a thread) are in
//! `lib.rs`; everything here is a pure function of the event.

use boxedclaw_protocol::ids::{ConversationKey, Platform, UserRef};
use serenity::model::application::{CommandDataOptionValue, CommandInteraction};
use serenity::model::channel::{ChannelType, Message, MessageType};

/// The application command the adapter registers; its one option carries the command text.
pub(crate) const COMMAND_NAME: &str = "boxedclaw";
/// The string option of [`COMMAND_NAME`].
pub(crate) const COMMAND_OPTION: &str = "command";

/// Where a guild channel sits, as far as conversations are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A thread of `parent`, started by `owner`.
    Thread {
        /// The channel the thread belongs to.
        parent: u64,
        /// Who created it (the bot, for threads it started from a mention).
        owner: Option<u64>,
    },
    /// A channel messages are posted in directly (text, announcement, voice text chat).
    Channel,
}

impl Place {
    /// The place a channel of `kind` is.
    pub(crate) fn of(kind: ChannelType, parent: Option<u64>, owner: Option<u64>) -> Self {
        match (kind, parent) {
            (
                ChannelType::PublicThread | ChannelType::PrivateThread | ChannelType::NewsThread,
                Some(parent),
            ) => Place::Thread { parent, owner },
            _ => Place::Channel,
        }
    }
}

/// The conversation of a DM channel.
pub(crate) fn dm_conversation(channel: u64) -> Option<ConversationKey> {
    ConversationKey::new(Platform::Discord, None, &channel.to_string(), None).ok()
}

/// The conversation of a guild channel (`thread` = `None`) or a thread of it.
pub(crate) fn guild_conversation(
    guild: u64,
    channel: u64,
    thread: Option<u64>,
) -> Option<ConversationKey> {
    ConversationKey::new(
        Platform::Discord,
        Some(&guild.to_string()),
        &channel.to_string(),
        thread.map(|t| t.to_string()).as_deref(),
    )
    .ok()
}

/// The verified user behind a Discord user id (Discord authenticates every event on the
/// gateway connection our token opened).
pub(crate) fn user_ref(id: u64) -> Option<UserRef> {
    UserRef::new(Platform::Discord, &id.to_string()).ok()
}

/// The event id given to the gateway for a message or an interaction: Discord's snowflake,
/// which a re-delivery keeps.
pub(crate) fn event_id(kind: &str, id: u64) -> String {
    format!("discord-{kind}-{id}")
}

/// Whether a user message may reach the agent at all: from a human, a normal message or
/// reply, with text.
pub(crate) fn is_candidate(msg: &Message, bot: u64) -> bool {
    !msg.author.bot
        && msg.author.id.get() != bot
        && msg.webhook_id.is_none()
        && matches!(msg.kind, MessageType::Regular | MessageType::InlineReply)
}

/// Whether `msg` addresses the bot: it mentions it, or replies to one of its messages.
pub(crate) fn addressed(msg: &Message, bot: u64) -> bool {
    msg.mentions.iter().any(|u| u.id.get() == bot)
        || mention_tokens(bot).iter().any(|t| msg.content.contains(t))
        || msg
            .referenced_message
            .as_ref()
            .is_some_and(|r| r.author.id.get() == bot)
}

fn mention_tokens(bot: u64) -> [String; 2] {
    [format!("<@{bot}>"), format!("<@!{bot}>")]
}

/// `text` with the bot's mentions (`<@ID>`, `<@!ID>`) removed; surrounding whitespace is
/// trimmed and a space doubled by the removal is dropped. Everything else is unchanged.
pub(crate) fn strip_mention(text: &str, bot: u64) -> String {
    let mut out = text.to_owned();
    for token in mention_tokens(bot) {
        while let Some(i) = out.find(&token) {
            let end = i + token.len();
            let before_space = out[..i].ends_with(' ');
            let after_space = out[end..].starts_with(' ');
            let end = if before_space && after_space {
                end + 1
            } else {
                end
            };
            out.replace_range(i..end, "");
        }
    }
    out.trim().to_owned()
}

/// A thread name for a conversation started by `text`: its first line, shortened.
pub(crate) fn thread_name(text: &str) -> String {
    let first: String = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    if first.trim().is_empty() {
        "BoxedClaw".to_owned()
    } else {
        first
    }
}

/// The command text of an application command (`/boxedclaw command:status` → `/status`);
/// `None` for commands that are not ours.
pub(crate) fn command_text(c: &CommandInteraction) -> Option<String> {
    if c.data.name != COMMAND_NAME {
        return None;
    }
    let value = c.data.options.iter().find_map(|o| match &o.value {
        CommandDataOptionValue::String(s) if o.name == COMMAND_OPTION => Some(s.as_str()),
        _ => None,
    });
    let text = value.unwrap_or("help").trim();
    let text = text.trim_start_matches('/').trim();
    Some(if text.is_empty() {
        "/help".to_owned()
    } else {
        format!("/{text}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_removed_and_nothing_else() {
        assert_eq!(strip_mention("<@42> hello", 42), "hello");
        assert_eq!(strip_mention("hey <@!42> there", 42), "hey there");
        assert_eq!(
            strip_mention("line one\n<@42>\nline two", 42),
            "line one\n\nline two"
        );
        assert_eq!(strip_mention("<@43> and <@42>", 42), "<@43> and");
        assert_eq!(strip_mention("  *keep*  `this` ", 42), "*keep*  `this`");
        assert_eq!(strip_mention("<@42>", 42), "");
    }

    #[test]
    fn thread_names_are_short_single_lines() {
        assert_eq!(thread_name("\n  fix the build\nplease"), "fix the build");
        assert_eq!(thread_name(""), "BoxedClaw");
        assert_eq!(thread_name(&"x".repeat(300)).chars().count(), 80);
    }

    #[test]
    fn only_threads_with_a_parent_are_threads() {
        assert_eq!(
            Place::of(ChannelType::PublicThread, Some(1), Some(2)),
            Place::Thread {
                parent: 1,
                owner: Some(2)
            }
        );
        assert_eq!(Place::of(ChannelType::Text, None, None), Place::Channel);
        assert_eq!(Place::of(ChannelType::News, Some(3), None), Place::Channel);
    }

    #[test]
    fn conversations_carry_the_guild() {
        let dm = dm_conversation(5).unwrap();
        assert_eq!((dm.tenant, dm.thread), (None, None));
        let t = guild_conversation(1, 2, Some(3)).unwrap();
        assert_eq!(t.to_string(), "discord:1/2/3");
        assert_ne!(
            guild_conversation(1, 2, Some(3)),
            guild_conversation(9, 2, Some(3))
        );
    }
}
