//! Outbound actions → Discord REST calls.
//!
//! Every message carries `allowed_mentions: {"parse": []}` (nothing the agent writes pings
//! anyone), the `SUPPRESS_EMBEDS` flag (no link previews), and escaped content (see
//! [`crate::text`]). Deceptive characters in approval actions arrive already escaped by the
//! gateway (`\u{202E}` and friends).

use std::time::{Duration, Instant};

use boxedclaw_channels::render::{approval_prompt, outcome_line};
use boxedclaw_channels::{ChannelError, OutboundAction};
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, UserRef};
use serde_json::{Value, json};
use serenity::all::{ApplicationId, ChannelId, Message};
use serenity::http::{LightMethod, Route};

use crate::text::{self, LIMIT};
use crate::{
    DiscordChannel, EPHEMERAL, INTERACTION_TTL, OpenInteraction, OpenKind, ProgressMessage, Prompt,
    SUPPRESS_EMBEDS, id, rest,
};

/// Wait before the one retry of an interaction answer refused as Unknown Webhook.
const UNACKNOWLEDGED_RETRY: Duration = Duration::from_millis(500);

/// The channel a conversation's messages go to: its thread, else its channel.
fn target(conversation: &ConversationKey) -> Result<ChannelId, ChannelError> {
    let raw = conversation
        .thread
        .as_deref()
        .unwrap_or(&conversation.channel);
    let n = raw
        .parse::<u64>()
        .map_err(|_| ChannelError::Platform(format!("{conversation} is not a Discord channel")))?;
    id(n)
}

/// The body of a message with escaped `content`.
fn message_body(content: String, components: Option<Value>) -> Value {
    let mut body = json!({
        "content": content,
        "allowed_mentions": { "parse": [] },
        "flags": SUPPRESS_EMBEDS,
    });
    if let Some(c) = components {
        body["components"] = c;
    }
    body
}

/// The prompt's text, and the action pieces to post before it when the whole does not fit
/// (all before escaping).
fn prompt_text(p: &ApprovalPrompt) -> (String, Vec<String>) {
    approval_prompt(
        p,
        |whole| text::fits(whole, LIMIT),
        |action| {
            text::pieces(action, LIMIT - 200)
                .into_iter()
                .map(str::to_owned)
                .collect()
        },
    )
}

impl DiscordChannel {
    /// Renders one outbound action.
    pub(crate) async fn render(&self, action: OutboundAction) -> Result<(), ChannelError> {
        match action {
            OutboundAction::Post { conversation, text } => {
                self.progress.remove(&conversation);
                self.post(&conversation, &text).await
            }
            OutboundAction::Typing { conversation } => {
                let channel_id = target(&conversation)?;
                self.rest
                    .send(LightMethod::Post, Route::ChannelTyping { channel_id }, None)
                    .await
                    .map(drop)
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
                    && let Some(open) = self.take_open(&conversation, user)
                {
                    // The notice answers that user's click or command: shown to them alone.
                    match self.answer_privately(&open, &text).await {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            tracing::warn!(platform = "discord", error = %e, "private answer failed; posting the notice in the channel");
                        }
                    }
                }
                self.post(&conversation, &text).await
            }
        }
    }

    /// Posts `text`, escaped and split to Discord's limit. A retried post (after a failure
    /// midway) resumes after the pieces already shown instead of repeating them.
    async fn post(&self, conversation: &ConversationKey, text: &str) -> Result<(), ChannelError> {
        let channel = target(conversation)?;
        let text = if text.trim().is_empty() {
            "(empty reply)"
        } else {
            text
        };
        let done = self.partial.shown(conversation, text);
        for (i, piece) in text::pieces(text, LIMIT).into_iter().enumerate().skip(done) {
            if let Err(e) = self.send_message(channel, text::escape(piece), None).await {
                self.partial.stopped_at(conversation, text, i);
                return Err(e);
            }
        }
        self.partial.finished(conversation, text);
        Ok(())
    }

    async fn send_message(
        &self,
        channel_id: ChannelId,
        content: String,
        components: Option<Value>,
    ) -> Result<Message, ChannelError> {
        let body = message_body(content, components);
        self.rest
            .json(
                LightMethod::Post,
                Route::ChannelMessages { channel_id },
                Some(&body),
            )
            .await
    }

    async fn edit_message(
        &self,
        channel_id: ChannelId,
        message: u64,
        body: &Value,
    ) -> Result<(), ChannelError> {
        let route = Route::ChannelMessage {
            channel_id,
            message_id: id(message)?,
        };
        self.rest
            .send(LightMethod::Patch, route, Some(body))
            .await
            .map(drop)
    }

    /// One progress message per turn, edited at most every `progress_interval`; updates in
    /// between are dropped (the next one shows the latest state).
    async fn show_progress(
        &self,
        conversation: &ConversationKey,
        text: &str,
    ) -> Result<(), ChannelError> {
        let channel = target(conversation)?;
        let content = text::escape_truncated(&format!("⏳ {text}"), LIMIT);
        let current = self.progress.get(conversation).map(|p| *p);
        match current {
            Some(p) if p.edited.elapsed() < self.settings.progress_interval => Ok(()),
            Some(p) => {
                let body = json!({ "content": content, "allowed_mentions": { "parse": [] } });
                match self.edit_message(p.channel, p.message, &body).await {
                    // The progress message may be gone (deleted by a user): not worth failing
                    // the turn for.
                    Ok(()) | Err(ChannelError::Platform(_)) => {}
                    Err(e) => return Err(e),
                }
                self.progress.insert(
                    conversation.clone(),
                    ProgressMessage {
                        edited: Instant::now(),
                        ..p
                    },
                );
                Ok(())
            }
            None => {
                let sent = self.send_message(channel, content, None).await?;
                self.progress.insert(
                    conversation.clone(),
                    ProgressMessage {
                        channel,
                        message: sent.id.get(),
                        edited: Instant::now(),
                    },
                );
                Ok(())
            }
        }
    }

    async fn ask(&self, p: &ApprovalPrompt) -> Result<(), ChannelError> {
        let channel = target(&p.conversation)?;
        let (prompt, parts) = prompt_text(p);
        for part in &parts {
            self.send_message(channel, text::escape(part), None).await?;
        }
        let button = |label: &str, style: u8, approve: bool| {
            json!({
                "type": 2,
                "style": style,
                "label": label,
                "custom_id": self.signer.seal(&p.conversation, &p.approval, approve),
            })
        };
        let components = json!([{
            "type": 1,
            "components": [button("Approve", 3, true), button("Deny", 4, false)],
        }]);
        let sent = self
            .send_message(channel, text::escape(&prompt), Some(components))
            .await?;
        self.prompts.insert(
            p.approval.clone(),
            Prompt {
                channel,
                message: sent.id.get(),
                text: prompt,
            },
        );
        Ok(())
    }

    /// Edits the prompt to show the outcome, without buttons, and answers the commands that
    /// decided it.
    async fn resolve(
        &self,
        conversation: &ConversationKey,
        approval: &ApprovalId,
        outcome: ApprovalOutcome,
        by: Option<&UserRef>,
    ) -> Result<(), ChannelError> {
        let line = outcome_line(outcome, by);
        for open in self.take_open_on(approval) {
            // A click is answered by the edited prompt itself; an `/approve` command gets the
            // outcome in its own (ephemeral) answer.
            if open.kind == OpenKind::Command
                && let Err(e) = self.answer_privately(&open, &line).await
            {
                tracing::debug!(platform = "discord", error = %e, "command answer failed");
            }
        }
        let fallback = format!("Approval {approval}: {line}");
        let Some((_, prompt)) = self.prompts.remove(approval) else {
            // Posted before a restart: say it in a new message.
            return self.post(conversation, &fallback).await;
        };
        let line_escaped = text::escape(&line);
        let room = LIMIT - text::units(&line_escaped) - 2;
        let content = format!(
            "{}\n\n{line_escaped}",
            text::escape_truncated(&prompt.text, room)
        );
        let body = json!({
            "content": content,
            "components": [],
            "allowed_mentions": { "parse": [] },
        });
        match self
            .edit_message(prompt.channel, prompt.message, &body)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                // The prompt may be gone (deleted by a user): say it in a new message.
                tracing::warn!(platform = "discord", error = %e, "could not edit approval prompt");
                self.post(conversation, &fallback).await
            }
        }
    }

    /// The oldest open interaction of `user` in `conversation`, if it can still be answered.
    fn take_open(&self, conversation: &ConversationKey, user: &UserRef) -> Option<OpenInteraction> {
        let mut open = self.open.lock().ok()?;
        open.retain(|o| o.at.elapsed() < INTERACTION_TTL);
        let i = open
            .iter()
            .position(|o| &o.conversation == conversation && &o.user == user)?;
        Some(open.remove(i))
    }

    fn take_open_on(&self, approval: &ApprovalId) -> Vec<OpenInteraction> {
        let Ok(mut open) = self.open.lock() else {
            return Vec::new();
        };
        let (mine, rest) = open
            .drain(..)
            .partition(|o| o.approval.as_ref() == Some(approval));
        *open = rest;
        mine
    }

    /// Shows `text` to the interaction's user alone: a command's deferred response is edited,
    /// a click gets an ephemeral follow-up.
    async fn answer_privately(
        &self,
        open: &OpenInteraction,
        text: &str,
    ) -> Result<(), ChannelError> {
        let application_id = id(*self
            .application
            .get()
            .ok_or_else(|| ChannelError::Platform("application id unknown".into()))?)?;
        let content = text::escape_truncated(text, LIMIT);
        let token = open.token.as_str();
        let send = || self.answer_once(application_id, open.kind, token, &content);
        match send().await {
            // Unknown Webhook: Discord may not have the interaction's first answer yet (sent as
            // an HTTP response, it can arrive after this request); once more, a moment later.
            Err(e) if rest::is_code(&e, 10_015) => {
                tokio::time::sleep(UNACKNOWLEDGED_RETRY).await;
                send().await
            }
            other => other,
        }
    }

    async fn answer_once(
        &self,
        application_id: ApplicationId,
        kind: OpenKind,
        token: &str,
        content: &str,
    ) -> Result<(), ChannelError> {
        match kind {
            OpenKind::Command => {
                let body = json!({ "content": content, "allowed_mentions": { "parse": [] } });
                let route = Route::WebhookOriginalInteractionResponse {
                    application_id,
                    token,
                };
                self.rest.send(LightMethod::Patch, route, Some(&body)).await
            }
            OpenKind::Click => {
                let body = json!({
                    "content": content,
                    "flags": EPHEMERAL | SUPPRESS_EMBEDS,
                    "allowed_mentions": { "parse": [] },
                });
                let route = Route::WebhookFollowupMessages {
                    application_id,
                    token,
                };
                self.rest.send(LightMethod::Post, route, Some(&body)).await
            }
        }
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use boxedclaw_protocol::ids::Platform;

    use super::*;

    fn prompt(action: &str) -> ApprovalPrompt {
        ApprovalPrompt {
            conversation: ConversationKey::new(Platform::Discord, None, "1", None).unwrap(),
            approval: ApprovalId::new("0123456789ab".to_owned()).unwrap(),
            requester: UserRef::new(Platform::Discord, "1").unwrap(),
            action: action.to_owned(),
            reason: "r".into(),
            expires_in_secs: 600,
        }
    }

    #[test]
    fn long_actions_are_shown_in_full_before_the_prompt() {
        let action = "x*".repeat(3000);
        let (prompt, parts) = prompt_text(&prompt(&action));
        assert!(text::fits(&prompt, LIMIT));
        assert!(parts.len() >= 3);
        assert!(parts.iter().all(|m| text::fits(m, LIMIT)));
        let shown: String = parts
            .iter()
            .map(|m| m.split_once(":\n").unwrap().1)
            .collect();
        assert_eq!(shown, action);
        assert!(prompt.contains("0123456789ab"));
    }

    #[test]
    fn short_actions_are_in_the_prompt() {
        let (prompt, parts) = prompt_text(&prompt("rm -rf /tmp/x"));
        assert!(parts.is_empty());
        assert!(prompt.contains("rm -rf /tmp/x"));
    }

    #[test]
    fn conversations_target_their_thread() {
        let t = ConversationKey::new(Platform::Discord, Some("1"), "2", Some("3")).unwrap();
        assert_eq!(target(&t).unwrap().get(), 3);
        let c = ConversationKey::new(Platform::Discord, None, "2", None).unwrap();
        assert_eq!(target(&c).unwrap().get(), 2);
        let bad = ConversationKey::new(Platform::Discord, None, "0", None).unwrap();
        assert!(target(&bad).is_err());
    }
}
