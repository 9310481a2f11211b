//! Rendering helpers shared by adapters.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ConversationKey, UserRef};

/// Splits `text` into pieces of at most `max_chars` characters, preferring to cut at a blank
/// line, then a newline, then a space, and never inside a character. Nothing is dropped:
/// concatenating the pieces gives back `text`.
pub fn split_message(text: &str, max_chars: usize) -> Vec<&str> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // Byte offset just past `max_chars` characters, or the whole rest if shorter.
        let hard = match rest.char_indices().nth(max_chars) {
            Some((i, _)) => i,
            None => {
                out.push(rest);
                break;
            }
        };
        let window = &rest[..hard];
        // Cut after the separator, but only if that keeps the piece at least half full, so a
        // separator near the start does not produce a flood of tiny messages.
        let min = hard / 2;
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| {
                window
                    .rfind(sep)
                    .map(|i| i + sep.len())
                    .filter(|&i| i > min)
            })
            .unwrap_or(hard);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// Makes agent text safe for a terminal: control characters other than newline and tab (ANSI
/// escapes, carriage returns, backspaces) and invisible or bidi characters are shown as
/// `\u{…}` instead of acting on the screen.
pub fn terminal_safe(text: &str) -> String {
    boxedclaw_protocol::display::escape_untrusted_multiline(text)
}

/// The line that says how an approval ended, the same on every platform.
pub fn outcome_line(outcome: ApprovalOutcome, by: Option<&UserRef>) -> String {
    match (outcome, by) {
        (ApprovalOutcome::Approved, Some(u)) => format!("Decision: approved by {u}; it ran once."),
        (ApprovalOutcome::Denied, Some(u)) => format!("Decision: denied by {u}; nothing ran."),
        (outcome, Some(u)) => format!("Decision: {outcome} by {u}; nothing ran."),
        (ApprovalOutcome::Approved, None) => "Decision: approved; it ran once.".to_owned(),
        (outcome, None) => format!("Decision: {outcome}; nothing ran."),
    }
}

/// An approval prompt's text, the same on every platform, and, when the whole does not fit
/// one message (`fits` says), the action in pieces (`split_action`) to post before the
/// prompt: an action is always shown in full, never cut.
pub fn approval_prompt(
    p: &ApprovalPrompt,
    fits: impl Fn(&str) -> bool,
    split_action: impl Fn(&str) -> Vec<String>,
) -> (String, Vec<String>) {
    let minutes = p.expires_in_secs.div_ceil(60);
    let head = format!(
        "Approval needed — {id}\nRequested by {who}\n\nAction:\n",
        id = p.approval,
        who = p.requester
    );
    let tail = |reason: &str| {
        format!(
            "\n\nReason: {reason}\n\nExpires in {minutes} min. Only the requester or an \
             approver can decide."
        )
    };
    let whole = format!("{head}{}{}", p.action, tail(&p.reason));
    if fits(&whole) {
        return (whole, Vec::new());
    }
    let pieces = split_action(&p.action);
    let n = pieces.len();
    let parts = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            format!(
                "Action of approval {} (part {}/{n}):\n{piece}",
                p.approval,
                i + 1
            )
        })
        .collect();
    let reason: String = p.reason.chars().take(500).collect();
    let prompt = format!(
        "{head}(shown in full in the {n} messages above){}",
        tail(&reason)
    );
    (prompt, parts)
}

/// Remembers how many pieces of a long reply were shown before a delivery failed, so the
/// retry (the gateway retries whole actions) resumes after them instead of repeating them.
#[derive(Debug, Default)]
pub struct ResumePoints {
    shown: Mutex<HashMap<(ConversationKey, u64), usize>>,
}

impl ResumePoints {
    fn key(conversation: &ConversationKey, text: &str) -> (ConversationKey, u64) {
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        (conversation.clone(), h.finish())
    }

    /// How many pieces of `text` were already shown in `conversation`.
    pub fn shown(&self, conversation: &ConversationKey, text: &str) -> usize {
        let key = Self::key(conversation, text);
        self.shown
            .lock()
            .map_or(0, |m| m.get(&key).copied().unwrap_or(0))
    }

    /// Delivery stopped before piece `next` (0-based).
    pub fn stopped_at(&self, conversation: &ConversationKey, text: &str, next: usize) {
        if let Ok(mut m) = self.shown.lock() {
            m.insert(Self::key(conversation, text), next);
        }
    }

    /// Every piece was shown.
    pub fn finished(&self, conversation: &ConversationKey, text: &str) {
        if let Ok(mut m) = self.shown.lock() {
            m.remove(&Self::key(conversation, text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_respect_the_limit_and_lose_nothing() {
        let text = "alpha beta\n\ngamma delta epsilon\nzeta ".repeat(50) + &"é".repeat(300);
        for max in [1, 7, 64, 4096] {
            let pieces = split_message(&text, max);
            assert!(pieces.iter().all(|p| p.chars().count() <= max));
            assert_eq!(pieces.concat(), text);
        }
    }

    #[test]
    fn prefers_paragraph_then_line_boundaries() {
        let text = format!("{}\n\n{}", "a".repeat(30), "b".repeat(30));
        assert_eq!(split_message(&text, 40), vec![&text[..32], &text[32..]]);
    }

    #[test]
    fn terminal_escapes_are_neutralized() {
        assert_eq!(
            terminal_safe("ok\x1b[2J\r\nx\ty"),
            "ok\\u{001B}[2J\\u{000D}\nx\ty"
        );
    }
}
