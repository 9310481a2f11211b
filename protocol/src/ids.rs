//! Typed identifiers. Each is a newtype so a conversation key can never be passed where a user
//! id is expected, and each validates what it accepts because most of them arrive from outside.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted id component (a platform user, channel or thread id). Real platform ids are
/// far shorter; the bound keeps hostile input from inflating keys, paths and logs.
pub const MAX_ID_LEN: usize = 128;

/// Why a textual id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id was empty.
    #[error("empty {0}")]
    Empty(&'static str),
    /// The id was longer than [`MAX_ID_LEN`].
    #[error("{0} longer than {MAX_ID_LEN} bytes")]
    TooLong(&'static str),
    /// The id contained a character outside its alphabet.
    #[error("{0} contains a character that is not allowed: {1:?}")]
    BadChar(&'static str, char),
    /// A `platform:id` reference had no known platform prefix.
    #[error("unknown platform {0:?} (expected one of terminal, web, telegram, slack, discord)")]
    UnknownPlatform(String),
}

fn check_component(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty(what));
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(what));
    }
    // Platform ids are ASCII (numbers, Slack's `U123`/`1700000000.000100`, uuids). Refusing
    // everything else keeps separators, control and invisible characters out of keys.
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
    {
        Some(c) => Err(IdError::BadChar(what, c)),
        None => Ok(()),
    }
}

/// The chat platform a conversation or user lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// `boxedclaw chat`: the local terminal.
    Terminal,
    /// The local web console.
    Web,
    /// Telegram Bot API.
    Telegram,
    /// Slack (Socket Mode or Events API).
    Slack,
    /// Discord gateway and interactions.
    Discord,
}

impl Platform {
    /// The lowercase name used in config (`slack:U123`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminal => "terminal",
            Self::Web => "web",
            Self::Telegram => "telegram",
            Self::Slack => "slack",
            Self::Discord => "discord",
        }
    }

    fn parse(s: &str) -> Result<Self, IdError> {
        Ok(match s {
            "terminal" => Self::Terminal,
            "web" => Self::Web,
            "telegram" => Self::Telegram,
            "slack" => Self::Slack,
            "discord" => Self::Discord,
            other => return Err(IdError::UnknownPlatform(other.to_owned())),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified platform user: who sent a message or clicked a button. Adapters build it only
/// from the platform's authenticated payload, never from message text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserRef {
    platform: Platform,
    id: String,
}

impl UserRef {
    /// Builds a user reference, validating the platform's user id.
    ///
    /// # Errors
    /// [`IdError`] when the id is empty, too long or has characters outside `[A-Za-z0-9._@-]`.
    pub fn new(platform: Platform, id: &str) -> Result<Self, IdError> {
        check_component("user id", id)?;
        Ok(Self {
            platform,
            id: id.to_owned(),
        })
    }

    /// The platform this user belongs to.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The platform's own id for this user.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::str::FromStr for UserRef {
    type Err = IdError;

    /// Parses `platform:id`, the form used in `BOXEDCLAW_ADMINS` and `BOXEDCLAW_APPROVERS`.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (platform, id) = s
            .split_once(':')
            .ok_or(IdError::UnknownPlatform(s.to_owned()))?;
        Self::new(Platform::parse(platform.trim())?, id.trim())
    }
}

impl TryFrom<String> for UserRef {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<UserRef> for String {
    fn from(u: UserRef) -> String {
        u.to_string()
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform, self.id)
    }
}

/// Which conversation a message belongs to: one per chat channel, thread, forum topic, DM or web
/// session. Every conversation gets its own agent and its own sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationKey {
    /// The platform the conversation lives on.
    pub platform: Platform,
    /// Workspace / team / guild id where the platform has one (Slack team, Discord guild).
    pub tenant: Option<String>,
    /// Channel, chat or DM id.
    pub channel: String,
    /// Thread, forum topic or web session inside the channel, if any.
    pub thread: Option<String>,
}

impl ConversationKey {
    /// Builds a key, validating every component.
    ///
    /// # Errors
    /// [`IdError`] when a component is empty, too long or has characters outside
    /// `[A-Za-z0-9._@-]`.
    pub fn new(
        platform: Platform,
        tenant: Option<&str>,
        channel: &str,
        thread: Option<&str>,
    ) -> Result<Self, IdError> {
        if let Some(t) = tenant {
            check_component("tenant id", t)?;
        }
        check_component("channel id", channel)?;
        if let Some(t) = thread {
            check_component("thread id", t)?;
        }
        Ok(Self {
            platform,
            tenant: tenant.map(str::to_owned),
            channel: channel.to_owned(),
            thread: thread.map(str::to_owned),
        })
    }

    /// A name safe to use as a directory: only `[a-z0-9._-]`, bounded length, unique per key.
    ///
    /// Components are validated on construction, so joining them with separators that cannot
    /// occur inside a component (`~`, `+`) is injective; the platform prefix keeps the
    /// directory listing readable.
    pub fn storage_name(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(self.platform.as_str());
        for part in [
            self.tenant.as_deref(),
            Some(self.channel.as_str()),
            self.thread.as_deref(),
        ] {
            out.push('+');
            match part {
                Some(p) => {
                    for c in p.chars() {
                        // Upper case is escaped rather than folded so `U1` and `u1` stay apart.
                        if c.is_ascii_uppercase() {
                            out.push('~');
                            out.push(c.to_ascii_lowercase());
                        } else if c == '@' {
                            out.push_str("~at");
                        } else {
                            out.push(c);
                        }
                    }
                }
                None => out.push('-'),
            }
        }
        out
    }
}

impl fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.platform)?;
        if let Some(t) = &self.tenant {
            write!(f, "{t}/")?;
        }
        f.write_str(&self.channel)?;
        if let Some(t) = &self.thread {
            write!(f, "/{t}")?;
        }
        Ok(())
    }
}

fn hex12(bytes: [u8; 6]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(12);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            ///
            /// # Errors
            /// [`IdError`] when it is empty, too long or has characters outside
            /// `[A-Za-z0-9._@-]`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_component($what, &s)?;
                Ok(Self(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// An id of 12 lowercase hex digits from 6 random bytes: short enough to type.
            pub fn from_random(bytes: [u8; 6]) -> Self {
                Self(hex12(bytes))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// One agent instance: a conversation's sandboxed process (new after each restart).
    AgentId,
    "agent id"
);
string_id!(
    /// A pending approval, as users type it (`/approve <id>`) and buttons carry it.
    ApprovalId,
    "approval id"
);
string_id!(
    /// A tool call inside an LLM response. The gateway assigns these, never the model, so they
    /// are short, unique within a conversation and safe to show.
    ToolCallId,
    "tool call id"
);

/// Correlates a request frame from the box with the gateway's answer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ref_round_trips_through_its_config_form() {
        let u: UserRef = "slack:U123".parse().unwrap();
        assert_eq!(u.platform(), Platform::Slack);
        assert_eq!(u.id(), "U123");
        assert_eq!(u.to_string(), "slack:U123");
        assert!("irc:bob".parse::<UserRef>().is_err());
        assert!("slack:".parse::<UserRef>().is_err());
        assert!("slack:a b".parse::<UserRef>().is_err());
        assert!("bob".parse::<UserRef>().is_err());
    }

    #[test]
    fn conversation_components_refuse_separators_and_invisible_characters() {
        for bad in [
            "a/b",
            "..",
            "a\u{200b}",
            "a\nb",
            "",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            // ".." is made only of allowed characters, so it must be caught by storage_name's
            // alphabet instead; everything else must be refused outright.
            if bad == ".." {
                continue;
            }
            assert!(
                ConversationKey::new(Platform::Slack, None, bad, None).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn storage_names_are_distinct_and_path_safe() {
        let keys = [
            ConversationKey::new(Platform::Slack, Some("T1"), "C1", None).unwrap(),
            ConversationKey::new(Platform::Slack, Some("T1"), "C1", Some("1.2")).unwrap(),
            ConversationKey::new(Platform::Slack, None, "T1", Some("C1")).unwrap(),
            ConversationKey::new(Platform::Slack, Some("t1"), "C1", None).unwrap(),
            ConversationKey::new(Platform::Telegram, None, "..", None).unwrap(),
        ];
        let names: std::collections::BTreeSet<_> = keys.iter().map(|k| k.storage_name()).collect();
        assert_eq!(names.len(), keys.len());
        for n in &names {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-+~".contains(c))
            );
            assert!(!n.starts_with('.'), "{n}");
            assert!(!n.contains('/'));
        }
    }
}
