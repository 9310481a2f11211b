//! Admin commands: one parser for every channel.
//!
//! Adapters hand over the text of a platform slash command (`/status`, Slack's
//! `/boxedclaw status`, a terminal line starting with `/`) as
//! [`crate::channel::InboundEvent::Command`]; the gateway parses it here and runs it only for
//! admins. Nothing else is ever parsed as a command: not a user's chat message, and never an
//! agent's output.

use serde::{Deserialize, Serialize};

use crate::ids::UserRef;

/// Longest accepted command line.
pub const MAX_COMMAND_LEN: usize = 1024;

/// Who a budget applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum BudgetTarget {
    /// A conversation, named as `status`/`agents` show it.
    Conversation(String),
    /// A user, as `platform:id`.
    User(UserRef),
}

/// What an admin can ask the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminCommand {
    /// Gateway health: backend, conversations, pending approvals, usage today.
    Status,
    /// Conversations and their sandboxes.
    Agents,
    /// Give a conversation fresh memory (its workspace files stay).
    Reset {
        /// Which conversation.
        conversation: String,
    },
    /// Stop a conversation's sandbox (it restarts on the next message).
    Stop {
        /// Which conversation.
        conversation: String,
    },
    /// Pending approvals.
    Approvals,
    /// Set a daily token budget.
    Budget {
        /// For whom.
        target: BudgetTarget,
        /// Tokens per UTC day.
        tokens_per_day: u64,
    },
    /// Recent audit entries (optionally of one conversation), with a chain check.
    Audit {
        /// Only this conversation.
        conversation: Option<String>,
    },
    /// The list of commands.
    Help,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminParseError {
    /// Not one of the commands.
    #[error("unknown command {0:?}; try help")]
    Unknown(String),
    /// Wrong or missing arguments.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// Longer than [`MAX_COMMAND_LEN`].
    #[error("command longer than {MAX_COMMAND_LEN} bytes")]
    TooLong,
}

/// One line per command, for `help`.
pub const HELP: &str = "status — gateway health\n\
agents — conversations and their sandboxes\n\
reset <conversation> — fresh memory for a conversation\n\
stop <conversation> — stop a conversation's sandbox\n\
approvals — pending approvals\n\
budget <conversation|platform:user> <tokens/day> — set a daily token budget\n\
audit [conversation] — recent audit entries, chain verified\n\
help — this list";

/// Parses a command line: an optional leading `/`, an optional `boxedclaw` word (Slack's
/// `/boxedclaw status`), then the command and its arguments.
///
/// # Errors
/// [`AdminParseError`] for unknown commands, bad arguments or over-long input.
pub fn parse(line: &str) -> Result<AdminCommand, AdminParseError> {
    if line.len() > MAX_COMMAND_LEN {
        return Err(AdminParseError::TooLong);
    }
    let line = line.trim().trim_start_matches('/');
    let mut words = line.split_whitespace().peekable();
    if words
        .peek()
        .is_some_and(|w| w.eq_ignore_ascii_case("boxedclaw"))
    {
        words.next();
    }
    let Some(command) = words.next() else {
        return Ok(AdminCommand::Help);
    };
    let args: Vec<&str> = words.collect();
    let one = |usage: &'static str| -> Result<String, AdminParseError> {
        match args.as_slice() {
            [a] => Ok((*a).to_owned()),
            _ => Err(AdminParseError::Usage(usage)),
        }
    };
    let none = |cmd: AdminCommand, usage: &'static str| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(AdminParseError::Usage(usage))
        }
    };
    match command.to_ascii_lowercase().as_str() {
        "status" => none(AdminCommand::Status, "status"),
        "agents" => none(AdminCommand::Agents, "agents"),
        "approvals" => none(AdminCommand::Approvals, "approvals"),
        "help" => none(AdminCommand::Help, "help"),
        "reset" => Ok(AdminCommand::Reset {
            conversation: one("reset <conversation>")?,
        }),
        "stop" => Ok(AdminCommand::Stop {
            conversation: one("stop <conversation>")?,
        }),
        "audit" => match args.as_slice() {
            [] => Ok(AdminCommand::Audit { conversation: None }),
            [c] => Ok(AdminCommand::Audit {
                conversation: Some((*c).to_owned()),
            }),
            _ => Err(AdminParseError::Usage("audit [conversation]")),
        },
        "budget" => {
            const USAGE: &str = "budget <conversation|platform:user> <tokens/day>";
            let [who, tokens] = args.as_slice() else {
                return Err(AdminParseError::Usage(USAGE));
            };
            let tokens_per_day = tokens
                .replace('_', "")
                .parse::<u64>()
                .map_err(|_| AdminParseError::Usage(USAGE))?;
            // `platform:id` names a user; anything else a conversation.
            let target = match who.parse::<UserRef>() {
                Ok(user) if !who.contains('/') => BudgetTarget::User(user),
                _ => BudgetTarget::Conversation((*who).to_owned()),
            };
            Ok(AdminCommand::Budget {
                target,
                tokens_per_day,
            })
        }
        other => Err(AdminParseError::Unknown(other.chars().take(32).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_with_and_without_prefixes() {
        assert_eq!(parse("/status"), Ok(AdminCommand::Status));
        assert_eq!(parse("/boxedclaw status"), Ok(AdminCommand::Status));
        assert_eq!(parse("agents"), Ok(AdminCommand::Agents));
        assert_eq!(parse("/approvals"), Ok(AdminCommand::Approvals));
        assert_eq!(parse("/help"), Ok(AdminCommand::Help));
        assert_eq!(parse("/"), Ok(AdminCommand::Help));
        assert_eq!(
            parse("/reset slack:T1/C1"),
            Ok(AdminCommand::Reset {
                conversation: "slack:T1/C1".into()
            })
        );
        assert_eq!(
            parse("/stop x"),
            Ok(AdminCommand::Stop {
                conversation: "x".into()
            })
        );
        assert_eq!(
            parse("/audit"),
            Ok(AdminCommand::Audit { conversation: None })
        );
        assert_eq!(
            parse("/audit c"),
            Ok(AdminCommand::Audit {
                conversation: Some("c".into())
            })
        );
        assert_eq!(
            parse("/budget telegram:42 10_000"),
            Ok(AdminCommand::Budget {
                target: BudgetTarget::User(
                    UserRef::new(crate::ids::Platform::Telegram, "42").unwrap()
                ),
                tokens_per_day: 10_000
            })
        );
        assert_eq!(
            parse("/budget terminal:local 5"),
            Ok(AdminCommand::Budget {
                target: BudgetTarget::User("terminal:local".parse().unwrap()),
                tokens_per_day: 5
            })
        );
        assert_eq!(
            parse("/budget slack:T1/C1 5"),
            Ok(AdminCommand::Budget {
                target: BudgetTarget::Conversation("slack:T1/C1".into()),
                tokens_per_day: 5
            })
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(parse("/rm -rf"), Err(AdminParseError::Unknown(_))));
        assert!(matches!(parse("/reset"), Err(AdminParseError::Usage(_))));
        assert!(matches!(
            parse("/status now"),
            Err(AdminParseError::Usage(_))
        ));
        assert!(matches!(
            parse("/budget x lots"),
            Err(AdminParseError::Usage(_))
        ));
        assert_eq!(parse(&"x".repeat(2000)), Err(AdminParseError::TooLong));
    }
}
