//! Outbound actions → Bot API calls.
//!
//! Everything is sent as plain text (no `parse_mode`): agent output and approval actions can
//! contain `<b>`, `*`, `[x](y)` and they are shown as typed, never interpreted. Deceptive
//! characters in actions arrive already escaped by the gateway (`\u{202E}` and friends).

use std::time::Instant;

use boxedclaw_channels::render::{approval_prompt, outcome_line, split_message};
use boxedclaw_channels::{ChannelError, OutboundAction};
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, UserRef};
use teloxide::payloads::{AnswerCallbackQuerySetters, SendChatActionSetters, SendMessageSetters};
use teloxide::requests::Requester;
use teloxide::types::{
    CallbackQueryId, ChatAction, ChatId, InlineKeyboardButton, InlineKeyboardMarkup,
    LinkPreviewOptions, Message, MessageId, ThreadId,
};

use crate::{MAX_TEXT_LEN, ProgressMessage, Prompt, TelegramChannel};

/// Where in Telegram a conversation lives.
#[derive(Debug, Clone, Copy)]
struct Place {
    chat: ChatId,
    topic: Option<ThreadId>,
}

fn place(conversation: &ConversationKey) -> Result<Place, ChannelError> {
    let chat = conversation
        .channel
        .parse::<i64>()
        .map_err(|_| ChannelError::Platform(format!("{conversation} is not a Telegram chat")))?;
    let topic = match &conversation.thread {
        Some(t) => Some(ThreadId(MessageId(t.parse::<i32>().map_err(|_| {
            ChannelError::Platform(format!("{conversation}: bad topic id"))
        })?))),
        None => None,
    };
    Ok(Place {
        chat: ChatId(chat),
        topic,
    })
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Pieces within Telegram's limit, which counts UTF-16 code units: a piece of 4096
/// characters with emoji in it is too long, so such a piece is split again at half size.
pub(crate) fn split_for_telegram(text: &str) -> Vec<&str> {
    split_message(text, MAX_TEXT_LEN)
        .into_iter()
        .flat_map(|piece| {
            if utf16_len(piece) <= MAX_TEXT_LEN {
                vec![piece]
            } else {
                split_message(piece, MAX_TEXT_LEN / 2)
            }
        })
        .collect()
}

/// `text` cut to at most `max` UTF-16 units, marked when cut.
fn truncate_utf16(text: &str, max: usize) -> String {
    if utf16_len(text) <= max {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        if used + c.len_utf16() > max.saturating_sub(1) {
            break;
        }
        used += c.len_utf16();
        out.push(c);
    }
    out.push('…');
    out
}

fn no_preview() -> LinkPreviewOptions {
    LinkPreviewOptions {
        is_disabled: true,
        url: None,
        prefer_small_media: false,
        prefer_large_media: false,
        show_above_text: false,
    }
}

/// The prompt's text, and the action pieces to post before it when the whole does not fit.
fn prompt_text(p: &ApprovalPrompt) -> (String, Vec<String>) {
    approval_prompt(
        p,
        |whole| utf16_len(whole) <= MAX_TEXT_LEN,
        |action| {
            split_message(action, MAX_TEXT_LEN / 2)
                .into_iter()
                .map(str::to_owned)
                .collect()
        },
    )
}

impl TelegramChannel {
    /// Renders one outbound action.
    pub(crate) async fn render(&self, action: OutboundAction) -> Result<(), ChannelError> {
        match action {
            OutboundAction::Post { conversation, text } => {
                self.progress.remove(&conversation);
                self.post(&conversation, &text).await
            }
            OutboundAction::Typing { conversation } => {
                let at = place(&conversation)?;
                let mut req = self.bot.send_chat_action(at.chat, ChatAction::Typing);
                if let Some(topic) = at.topic {
                    req = req.message_thread_id(topic);
                }
                self.call(req).await.map(drop)
            }
            OutboundAction::Progress { conversation, text } => {
                self.show_progress(&conversation, &text).await
            }
            OutboundAction::RequestApproval(p) => self.ask(&p).await,
            OutboundAction::ResolveApproval {
                conversation,
                approval,
                outcome,
                by,
            } => {
                self.resolve(&conversation, &approval, outcome, by.as_ref())
                    .await
            }
            OutboundAction::Notice {
                conversation,
                user,
                text,
            } => {
                if let Some(user) = &user
                    && let Some(query) = self.take_open_click(&conversation, user)
                {
                    // The notice answers that user's click: shown to them alone.
                    self.answer_click(&query, &text).await;
                    return Ok(());
                }
                self.post(&conversation, &text).await
            }
        }
    }

    /// Posts `text`, split to Telegram's limit. A retried post (after a failure midway)
    /// resumes after the pieces already shown instead of repeating them.
    async fn post(&self, conversation: &ConversationKey, text: &str) -> Result<(), ChannelError> {
        let at = place(conversation)?;
        let text = if text.trim().is_empty() {
            "(empty reply)"
        } else {
            text
        };
        let done = self.partial.shown(conversation, text);
        for (i, piece) in split_for_telegram(text).into_iter().enumerate().skip(done) {
            if let Err(e) = self.send_text(at, piece, None).await {
                self.partial.stopped_at(conversation, text, i);
                return Err(e);
            }
        }
        self.partial.finished(conversation, text);
        Ok(())
    }

    async fn send_text(
        &self,
        at: Place,
        text: &str,
        keyboard: Option<InlineKeyboardMarkup>,
    ) -> Result<Message, ChannelError> {
        let mut req = self
            .bot
            .send_message(at.chat, text)
            .link_preview_options(no_preview());
        if let Some(topic) = at.topic {
            req = req.message_thread_id(topic);
        }
        if let Some(k) = keyboard {
            req = req.reply_markup(k);
        }
        self.call(req).await
    }

    /// One progress message per turn, edited at most every `progress_interval`; updates in
    /// between are dropped (the next one shows the latest state).
    async fn show_progress(
        &self,
        conversation: &ConversationKey,
        text: &str,
    ) -> Result<(), ChannelError> {
        let at = place(conversation)?;
        let text = truncate_utf16(&format!("⏳ {text}"), MAX_TEXT_LEN);
        let current = self.progress.get(conversation).map(|p| *p);
        match current {
            Some(p) if p.edited.elapsed() < self.settings.progress_interval => Ok(()),
            Some(p) => {
                match self
                    .call(self.bot.edit_message_text(at.chat, p.message, text))
                    .await
                {
                    Ok(_) | Err(ChannelError::Platform(_)) => {}
                    Err(e) => return Err(e),
                }
                self.progress.insert(
                    conversation.clone(),
                    ProgressMessage {
                        message: p.message,
                        edited: Instant::now(),
                    },
                );
                Ok(())
            }
            None => {
                let sent = self.send_text(at, &text, None).await?;
                self.progress.insert(
                    conversation.clone(),
                    ProgressMessage {
                        message: sent.id,
                        edited: Instant::now(),
                    },
                );
                Ok(())
            }
        }
    }

    async fn ask(&self, p: &ApprovalPrompt) -> Result<(), ChannelError> {
        let at = place(&p.conversation)?;
        let (text, parts) = prompt_text(p);
        for part in &parts {
            self.send_text(at, part, None).await?;
        }
        let keyboard = InlineKeyboardMarkup::new([[
            InlineKeyboardButton::callback(
                "Approve",
                self.signer.seal(&p.conversation, &p.approval, true),
            ),
            InlineKeyboardButton::callback(
                "Deny",
                self.signer.seal(&p.conversation, &p.approval, false),
            ),
        ]]);
        let sent = self.send_text(at, &text, Some(keyboard)).await?;
        self.prompts.insert(
            p.approval.clone(),
            Prompt {
                chat: at.chat,
                message: sent.id,
                text,
            },
        );
        Ok(())
    }

    /// Edits the prompt to show the outcome (which removes its keyboard) and answers the
    /// clicks waiting on it.
    async fn resolve(
        &self,
        conversation: &ConversationKey,
        approval: &ApprovalId,
        outcome: ApprovalOutcome,
        by: Option<&UserRef>,
    ) -> Result<(), ChannelError> {
        let line = outcome_line(outcome, by);
        for click in self.take_clicks_on(approval) {
            let answer = if by == Some(&click.user) {
                line.clone()
            } else {
                format!("Already decided. {line}")
            };
            self.answer_click(&click.query_id, &answer).await;
        }
        let Some((_, prompt)) = self.prompts.remove(approval) else {
            // Posted before a restart: say it in a new message.
            return self
                .post(conversation, &format!("Approval {approval}: {line}"))
                .await;
        };
        let text = format!(
            "{}\n\n{line}",
            truncate_utf16(&prompt.text, MAX_TEXT_LEN - 200)
        );
        match self
            .call(
                self.bot
                    .edit_message_text(prompt.chat, prompt.message, text),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                // The prompt may be gone (deleted by a user): say it in a new message.
                tracing::warn!(platform = "telegram", error = %e, "could not edit approval prompt");
                self.post(conversation, &format!("Approval {approval}: {line}"))
                    .await
            }
        }
    }

    fn take_open_click(&self, conversation: &ConversationKey, user: &UserRef) -> Option<String> {
        let mut open = self.open_clicks.lock().ok()?;
        let i = open
            .iter()
            .position(|c| &c.conversation == conversation && &c.user == user)?;
        Some(open.remove(i).query_id)
    }

    fn take_clicks_on(&self, approval: &ApprovalId) -> Vec<crate::OpenClick> {
        let Ok(mut open) = self.open_clicks.lock() else {
            return Vec::new();
        };
        let (mine, rest) = open.drain(..).partition(|c| &c.approval == approval);
        *open = rest;
        mine
    }

    /// Stops a clicked button's spinner; a non-empty `text` is shown to the clicker alone.
    pub(crate) async fn answer_click(&self, query_id: &str, text: &str) {
        let mut req = self
            .bot
            .answer_callback_query(CallbackQueryId(query_id.to_owned()));
        if !text.is_empty() {
            req = req.text(truncate_utf16(text, 200)).show_alert(true);
        }
        match self.call(req).await {
            Ok(_) => {}
            // Answered too late (Telegram allows about 15 s): nothing left to do.
            Err(ChannelError::Platform(e)) => {
                tracing::debug!(platform = "telegram", error = %e, "callback answer refused");
            }
            Err(e) => tracing::warn!(platform = "telegram", error = %e, "callback answer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use boxedclaw_protocol::ids::Platform;

    use super::*;

    #[test]
    fn pieces_fit_in_utf16_units_and_lose_nothing() {
        let text = "🦀".repeat(5000) + &"a".repeat(9000);
        let pieces = split_for_telegram(&text);
        assert!(pieces.iter().all(|p| utf16_len(p) <= MAX_TEXT_LEN));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn long_actions_are_shown_in_full_before_the_prompt() {
        let action = "x".repeat(10_000);
        let p = ApprovalPrompt {
            conversation: ConversationKey::new(Platform::Telegram, None, "1", None).unwrap(),
            approval: ApprovalId::new("0123456789ab".to_owned()).unwrap(),
            requester: UserRef::new(Platform::Telegram, "1").unwrap(),
            action: action.clone(),
            reason: "r".into(),
            expires_in_secs: 600,
        };
        let (prompt, parts) = prompt_text(&p);
        assert!(utf16_len(&prompt) <= MAX_TEXT_LEN);
        assert!(parts.len() >= 3);
        assert!(parts.iter().all(|m| utf16_len(m) <= MAX_TEXT_LEN));
        let shown: String = parts
            .iter()
            .map(|m| m.split_once(":\n").unwrap().1)
            .collect();
        assert_eq!(shown, action);
        assert!(prompt.contains("0123456789ab"));
    }

    #[test]
    fn truncation_respects_utf16_units() {
        let t = truncate_utf16(&"🦀".repeat(10), 5);
        assert!(utf16_len(&t) <= 5, "{t}");
        assert!(t.ends_with('…'));
        assert_eq!(truncate_utf16("short", 5), "short");
    }
}
