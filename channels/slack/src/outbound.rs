//! Outbound actions → Slack Web API calls.
//!
//! Agent text goes in the message's `text` with Slack's three control characters escaped
//! (`&` → `&amp;`, `<` → `&lt;`, `>` → `&gt;`): `<!channel>`, `<!here>`, `<@U…>` and
//! `<https://evil|innocent>` then show as typed instead of pinging or disguising a link, and
//! `link_names`, unfurling and media previews are off. Approval prompts use `plain_text`
//! blocks, which Slack never formats. With an approvers' channel, each prompt is posted a
//! second time there, headed by where and by whom it was asked, with the same buttons (signed
//! for the conversation the approval belongs to).

use std::time::Instant;

use boxedclaw_channels::render::{approval_prompt, outcome_line, split_message};
use boxedclaw_channels::{ChannelError, OutboundAction};
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, UserRef};
use serde_json::json;
use slack_morphism::prelude::*;

use crate::{
    MAX_ATTEMPTS, MAX_RETRY_AFTER, MAX_TEXT_LEN, Posted, Progress, Prompt, SIDE_ATTEMPTS,
    SIDE_MAX_RETRY_AFTER, SlackChannel,
};

/// Longest text of one `plain_text` section block.
const MAX_BLOCK_TEXT: usize = 2900;

/// Escapes the characters Slack parses for mentions and links.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Section blocks showing `text` verbatim (plain text, no emoji shortcodes), split to the
/// block limit, then the buttons if any.
fn blocks(text: &str, buttons: Option<serde_json::Value>) -> Vec<SlackBlock> {
    let mut out: Vec<serde_json::Value> = split_message(text, MAX_BLOCK_TEXT)
        .into_iter()
        .map(|piece| {
            json!({
                "type": "section",
                "text": {"type": "plain_text", "text": piece, "emoji": false}
            })
        })
        .collect();
    if let Some(b) = buttons {
        out.push(b);
    }
    // The JSON above is Block Kit; slack-morphism's model accepts every field used.
    serde_json::from_value(serde_json::Value::Array(out)).unwrap_or_default()
}

/// The whole prompt: blocks are split to their limit, so it always fits.
fn prompt_text(p: &ApprovalPrompt) -> String {
    approval_prompt(p, |_| true, |action| vec![action.to_owned()]).0
}

/// The approvers' copy of a prompt: where and by whom it was asked, then the prompt as
/// shown in the conversation.
fn copy_text(p: &ApprovalPrompt, prompt: &str) -> String {
    let c = &p.conversation;
    let place = match &c.thread {
        Some(thread) => format!("channel {}, thread {thread}", c.channel),
        None if c.channel.starts_with('D') => format!("a direct message ({})", c.channel),
        None => format!("channel {}", c.channel),
    };
    format!(
        "Asked by {who} in {place} (conversation {c}). A decision here counts as one \
         there.\n\n{prompt}",
        who = p.requester
    )
}

/// Plain-text blocks (the `text` field escaped as the notification fallback), with buttons
/// if any.
fn plain_content(text: &str, buttons: Option<serde_json::Value>) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(escape(text))
        .with_blocks(blocks(text, buttons))
}

impl SlackChannel {
    /// Renders one outbound action.
    pub(crate) async fn render(&self, action: OutboundAction) -> Result<(), ChannelError> {
        match action {
            OutboundAction::Post { conversation, text } => {
                self.progress.remove(&conversation);
                self.post(&conversation, &text).await
            }
            // Slack has no typing indicator for bots outside the assistant API; progress
            // messages show that work is going on.
            OutboundAction::Typing { .. } => Ok(()),
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
            } => match user {
                Some(user) => self.notice_for(&conversation, &user, &text).await,
                None => self.post(&conversation, &text).await,
            },
        }
    }

    fn thread_of(conversation: &ConversationKey) -> Option<SlackTs> {
        conversation.thread.clone().map(SlackTs)
    }

    async fn send(
        &self,
        conversation: &ConversationKey,
        content: SlackMessageContent,
    ) -> Result<SlackTs, ChannelError> {
        self.send_to(
            &conversation.channel,
            Self::thread_of(conversation),
            content,
            (MAX_ATTEMPTS, MAX_RETRY_AFTER),
        )
        .await
    }

    /// `chat.postMessage` into `channel` (and `thread`), with `patience` as the tries and
    /// longest rate-limit wait.
    async fn send_to(
        &self,
        channel: &str,
        thread: Option<SlackTs>,
        content: SlackMessageContent,
        patience: (u32, std::time::Duration),
    ) -> Result<SlackTs, ChannelError> {
        let mut req =
            SlackApiChatPostMessageRequest::new(SlackChannelId(channel.to_owned()), content)
                .with_link_names(false)
                .with_unfurl_links(false)
                .with_unfurl_media(false);
        if let Some(ts) = thread {
            req = req.with_thread_ts(ts);
        }
        let (attempts, max_wait) = patience;
        let sent = self
            .call_bounded(
                || async { self.session().chat_post_message(&req).await },
                attempts,
                max_wait,
            )
            .await?;
        Ok(sent.ts)
    }

    /// Posts `text` escaped and split. A retried post resumes after the pieces already
    /// shown.
    async fn post(&self, conversation: &ConversationKey, text: &str) -> Result<(), ChannelError> {
        let text = if text.trim().is_empty() {
            "(empty reply)"
        } else {
            text
        };
        let done = self.partial.shown(conversation, text);
        for (i, piece) in split_message(text, MAX_TEXT_LEN)
            .into_iter()
            .enumerate()
            .skip(done)
        {
            let content = SlackMessageContent::new().with_text(escape(piece));
            if let Err(e) = self.send(conversation, content).await {
                self.partial.stopped_at(conversation, text, i);
                return Err(e);
            }
        }
        self.partial.finished(conversation, text);
        Ok(())
    }

    async fn update(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), ChannelError> {
        let req = SlackApiChatUpdateRequest::new(
            SlackChannelId(channel.to_owned()),
            content,
            SlackTs(ts.to_owned()),
        )
        .with_link_names(false);
        self.call(|| async { self.session().chat_update(&req).await })
            .await
            .map(drop)
    }

    /// One progress message per turn, updated at most every `progress_interval`.
    async fn show_progress(
        &self,
        conversation: &ConversationKey,
        text: &str,
    ) -> Result<(), ChannelError> {
        let text = escape(&format!(":hourglass: {text}"));
        let current = self.progress.get(conversation).map(|p| p.clone());
        match current {
            Some(p) if p.updated.elapsed() < self.settings.progress_interval => Ok(()),
            Some(p) => {
                let content = SlackMessageContent::new().with_text(text);
                self.update(&conversation.channel, &p.ts, content).await?;
                self.progress.insert(
                    conversation.clone(),
                    Progress {
                        ts: p.ts,
                        updated: Instant::now(),
                    },
                );
                Ok(())
            }
            None => {
                let ts = self
                    .send(conversation, SlackMessageContent::new().with_text(text))
                    .await?;
                self.progress.insert(
                    conversation.clone(),
                    Progress {
                        ts: ts.0,
                        updated: Instant::now(),
                    },
                );
                Ok(())
            }
        }
    }

    async fn ask(&self, p: &ApprovalPrompt) -> Result<(), ChannelError> {
        let text = prompt_text(p);
        let buttons = json!({
            "type": "actions",
            "block_id": "boxedclaw_approval",
            "elements": [
                {"type": "button", "action_id": "boxedclaw_approve", "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve", "emoji": false},
                 "value": self.signer.seal(&p.conversation, &p.approval, true)},
                {"type": "button", "action_id": "boxedclaw_deny", "style": "danger",
                 "text": {"type": "plain_text", "text": "Deny", "emoji": false},
                 "value": self.signer.seal(&p.conversation, &p.approval, false)}
            ]
        });
        // `text` is the notification fallback; the blocks are what people see.
        let content = plain_content(&text, Some(buttons.clone()));
        let ts = self.send(&p.conversation, content).await?;
        self.prompts.insert(
            p.approval.clone(),
            Prompt {
                channel: p.conversation.channel.clone(),
                ts: ts.0,
                text: text.clone(),
                copy: None,
            },
        );
        // The copy comes after the prompt is shown and recorded, so its failure costs only
        // the copy.
        if let Some(channel) = &self.settings.approvers_channel {
            self.copy_for_approvers(channel, p, &text, buttons).await;
        }
        Ok(())
    }

    /// Posts the approvers' copy of prompt `p` into `channel` and records it, so a click on
    /// it counts for `p`'s conversation. A failure is logged, not returned: the prompt in the
    /// conversation stands on its own.
    async fn copy_for_approvers(
        &self,
        channel: &str,
        p: &ApprovalPrompt,
        prompt: &str,
        buttons: serde_json::Value,
    ) {
        let text = copy_text(p, prompt);
        let content = plain_content(&text, Some(buttons));
        let posted = self
            .send_to(
                channel,
                None,
                content,
                (SIDE_ATTEMPTS, SIDE_MAX_RETRY_AFTER),
            )
            .await;
        let ts = match posted {
            Ok(ts) => ts.0,
            Err(e) => {
                tracing::warn!(
                    platform = "slack",
                    channel,
                    approval = %p.approval,
                    error = %e,
                    "could not post the approval to the approvers' channel; it is shown in its conversation only"
                );
                return;
            }
        };
        let key = (channel.to_owned(), ts.clone());
        self.copies.insert(key.clone(), p.conversation.clone());
        let copy = Posted {
            channel: channel.to_owned(),
            ts,
            text,
        };
        if let Some(mut prompt) = self.prompts.get_mut(&p.approval) {
            prompt.copy = Some(copy);
            return;
        }
        // Decided in the conversation while the copy was being posted: its buttons must go.
        self.copies.remove(&key);
        let text = format!("{}\n\nDecided in the conversation.", copy.text);
        if let Err(e) = self
            .update(&copy.channel, &copy.ts, plain_content(&text, None))
            .await
        {
            tracing::warn!(platform = "slack", error = %e, "could not update the approvers' copy");
        }
    }

    /// Updates the prompt to show the outcome, without buttons, and answers waiting clicks.
    async fn resolve(
        &self,
        conversation: &ConversationKey,
        approval: &ApprovalId,
        outcome: ApprovalOutcome,
        by: Option<&UserRef>,
    ) -> Result<(), ChannelError> {
        let line = outcome_line(outcome, by);
        for r in self.take_responders(|r| r.approval.as_ref() == Some(approval)) {
            if by != Some(&r.user) {
                self.respond(&r.url, &format!("Already decided. {line}"))
                    .await;
            }
        }
        let Some((_, prompt)) = self.prompts.remove(approval) else {
            return self
                .post(conversation, &format!("Approval {approval}: {line}"))
                .await;
        };
        let text = format!("{}\n\n{line}", prompt.text);
        let updated = self
            .update(&prompt.channel, &prompt.ts, plain_content(&text, None))
            .await;
        if let Some(copy) = &prompt.copy {
            // Clicks on the copy stop counting now; late ones are refused like stray clicks.
            self.copies.remove(&(copy.channel.clone(), copy.ts.clone()));
            let text = format!("{}\n\n{line}", copy.text);
            if let Err(e) = self
                .update(&copy.channel, &copy.ts, plain_content(&text, None))
                .await
            {
                tracing::warn!(platform = "slack", error = %e, "could not update the approvers' copy");
            }
        }
        if let Err(e) = updated {
            tracing::warn!(platform = "slack", error = %e, "could not update approval prompt");
            return self
                .post(conversation, &format!("Approval {approval}: {line}"))
                .await;
        }
        Ok(())
    }

    /// A notice for one user: through the `response_url` of their click or command when
    /// there is one, else as an ephemeral message in the conversation.
    async fn notice_for(
        &self,
        conversation: &ConversationKey,
        user: &UserRef,
        text: &str,
    ) -> Result<(), ChannelError> {
        let mut responders =
            self.take_responders(|r| &r.conversation == conversation && &r.user == user);
        if let Some(r) = responders.pop() {
            self.respond(&r.url, text).await;
            return Ok(());
        }
        let mut req = SlackApiChatPostEphemeralRequest::new(
            SlackChannelId(conversation.channel.clone()),
            SlackUserId(user.id().to_owned()),
            SlackMessageContent::new().with_text(escape(text)),
        )
        .with_link_names(false);
        if let Some(ts) = Self::thread_of(conversation) {
            req = req.with_thread_ts(ts);
        }
        self.call(|| async { self.session().chat_post_ephemeral(&req).await })
            .await
            .map(drop)
    }

    fn take_responders(&self, pick: impl Fn(&crate::Responder) -> bool) -> Vec<crate::Responder> {
        let Ok(mut all) = self.responders.lock() else {
            return Vec::new();
        };
        let (picked, rest) = all.drain(..).partition(|r| pick(r));
        *all = rest;
        picked
    }

    /// Answers through a `response_url`: shown to that user alone.
    pub(crate) async fn respond(&self, url: &str, text: &str) {
        let Ok(url) = url.parse::<url::Url>() else {
            return;
        };
        let req = SlackApiPostWebhookMessageRequest::new(
            SlackMessageContent::new().with_text(escape(text)),
        )
        .with_replace_original(false);
        if let Err(e) = self.client.post_webhook_message(&url, &req).await {
            tracing::warn!(platform = "slack", error = %e, "response_url answer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_controls_are_escaped() {
        assert_eq!(
            escape("<!channel> <@U1> <https://x|y> a&b"),
            "&lt;!channel&gt; &lt;@U1&gt; &lt;https://x|y&gt; a&amp;b"
        );
    }

    #[test]
    fn prompt_blocks_are_plain_text_with_two_buttons() {
        let b = blocks(
            "*not bold* <!here>",
            Some(json!({"type": "actions", "elements": [
                {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "Approve"}, "value": "v"},
                {"type": "button", "action_id": "d", "text": {"type": "plain_text", "text": "Deny"}, "value": "w"}
            ]})),
        );
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v[0]["text"]["type"], "plain_text", "{v}");
        assert_eq!(v[0]["text"]["text"], "*not bold* <!here>");
        assert_eq!(v[1]["elements"].as_array().unwrap().len(), 2, "{v}");
    }
}
