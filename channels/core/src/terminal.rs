//! The terminal channel behind `boxedclaw chat`: one local user, one conversation.
//!
//! Lines read from the input are messages, except `/approve <id>` and `/deny <id>`, which
//! decide approvals, and other lines starting with `/`, which are gateway commands
//! (`/status`, `/help`, …; admins only). Output goes to the given writer: replies as they are, an approval request
//! as one line `[approval <ID>] <what will run> — /approve <ID> or /deny <ID>`. Intake ends when
//! the input closes; the gateway then finishes pending work and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use boxedclaw_protocol::channel::{ApprovalDecision, InboundMessage};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::render::terminal_safe;
use crate::{BoxFuture, Capabilities, ChannelAdapter, ChannelContext, ChannelError};
use crate::{InboundEvent, OutboundAction};

/// Longest input line accepted; longer lines are refused with a notice, not truncated.
const MAX_LINE: usize = 64 * 1024;

type Input = Box<dyn AsyncBufRead + Send + Unpin>;
type Output = Box<dyn AsyncWrite + Send + Unpin>;

/// The terminal adapter.
pub struct TerminalChannel {
    user: UserRef,
    conversation: ConversationKey,
    input: Mutex<Option<Input>>,
    output: Mutex<Output>,
    next_event: AtomicU64,
    /// Distinguishes this run's event ids from earlier runs' (the store de-duplicates by id).
    session: String,
}

impl std::fmt::Debug for TerminalChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalChannel")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl TerminalChannel {
    /// A terminal channel for `user_id`, reading `input` and writing `output`.
    ///
    /// # Errors
    /// [`ChannelError::Platform`] when `user_id` is not a valid id.
    pub fn new(user_id: &str, input: Input, output: Output) -> Result<Self, ChannelError> {
        let user = UserRef::new(Platform::Terminal, user_id)
            .map_err(|e| ChannelError::Platform(format!("terminal user: {e}")))?;
        let conversation = ConversationKey::new(Platform::Terminal, None, user_id, None)
            .map_err(|e| ChannelError::Platform(format!("terminal user: {e}")))?;
        Ok(Self {
            user,
            conversation,
            input: Mutex::new(Some(input)),
            output: Mutex::new(output),
            next_event: AtomicU64::new(1),
            session: session_id(),
        })
    }

    /// The terminal's standard input and output.
    ///
    /// # Errors
    /// As [`TerminalChannel::new`].
    pub fn stdio(user_id: &str) -> Result<Self, ChannelError> {
        Self::new(
            user_id,
            Box::new(tokio::io::BufReader::new(tokio::io::stdin())),
            Box::new(tokio::io::stdout()),
        )
    }

    /// The one conversation this terminal talks in.
    pub fn conversation(&self) -> &ConversationKey {
        &self.conversation
    }

    fn parse_line(&self, line: &str) -> Result<Option<InboundEvent>, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            return Ok(None);
        }
        let mut words = line.split_whitespace();
        let approve = match words.next() {
            Some("/approve") => Some(true),
            Some("/deny") => Some(false),
            _ => None,
        };
        if let Some(approve) = approve {
            let id = words.next().ok_or("usage: /approve <id> or /deny <id>")?;
            let approval = ApprovalId::new(id).map_err(|e| format!("bad approval id: {e}"))?;
            return Ok(Some(InboundEvent::ApprovalDecision(ApprovalDecision {
                conversation: self.conversation.clone(),
                approval,
                user: self.user.clone(),
                approve,
                approver_role: None,
            })));
        }
        let n = self.next_event.fetch_add(1, Ordering::Relaxed);
        let message = InboundMessage {
            id: format!("terminal-{}-{n}", self.session),
            conversation: self.conversation.clone(),
            user: self.user.clone(),
            text: line.to_owned(),
        };
        // Any other line starting with `/` is a gateway command (`/status`, `/help`, …); it is
        // never shown to the agent.
        Ok(Some(if line.starts_with('/') {
            InboundEvent::Command(message)
        } else {
            InboundEvent::Message(message)
        }))
    }

    async fn write(&self, text: &str) -> Result<(), ChannelError> {
        let mut out = self.output.lock().await;
        let io = |e: std::io::Error| ChannelError::Transport(e.to_string());
        out.write_all(text.as_bytes()).await.map_err(io)?;
        if !text.ends_with('\n') {
            out.write_all(b"\n").await.map_err(io)?;
        }
        out.flush().await.map_err(io)
    }

    async fn intake(self: Arc<Self>, ctx: ChannelContext) -> Result<(), ChannelError> {
        let Some(mut input) = self.input.lock().await.take() else {
            return Err(ChannelError::Platform(
                "terminal channel already running".into(),
            ));
        };
        ctx.ready.cancel();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let mut bounded = AsyncReadExt::take(&mut input, MAX_LINE as u64 + 1);
            let read = tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                r = bounded.read_until(b'\n', &mut buf) => r,
            };
            match read {
                Ok(0) => return Ok(()),
                Ok(_) if buf.len() > MAX_LINE && !buf.ends_with(b"\n") => {
                    // Discard the rest of the over-long line so it is not read as a new message.
                    let mut skip = Vec::new();
                    let _ = input.read_until(b'\n', &mut skip).await;
                    self.write(&format!(
                        "[notice] line longer than {MAX_LINE} bytes ignored"
                    ))
                    .await?;
                }
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    match self.parse_line(&line) {
                        Ok(Some(ev)) => {
                            if ctx.inbound.send(ev).await.is_err() {
                                return Err(ChannelError::Closed);
                            }
                        }
                        Ok(None) => {}
                        Err(msg) => self.write(&format!("[notice] {msg}")).await?,
                    }
                }
                Err(e) => return Err(ChannelError::Transport(e.to_string())),
            }
        }
    }
}

fn session_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{:x}", std::process::id(), nanos)
}

impl ChannelAdapter for TerminalChannel {
    fn platform(&self) -> Platform {
        Platform::Terminal
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            buttons: false,
            threads: false,
            edits: false,
            ephemeral: false,
            max_text_len: usize::MAX,
        }
    }

    fn run(self: Arc<Self>, ctx: ChannelContext) -> BoxFuture<'static, Result<(), ChannelError>> {
        Box::pin(self.intake(ctx))
    }

    fn deliver(&self, action: OutboundAction) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move {
            let text = match action {
                OutboundAction::Post { text, .. } => terminal_safe(&text),
                OutboundAction::RequestApproval(p) => {
                    // `action` is escaped by the gateway: one line, nothing invisible.
                    let id = p.approval;
                    format!("[approval {id}] {} — /approve {id} or /deny {id}", p.action)
                }
                OutboundAction::ResolveApproval {
                    approval,
                    outcome,
                    by,
                    ..
                } => match by {
                    Some(by) => format!("[approval {approval}] {outcome} by {by}"),
                    None => format!("[approval {approval}] {outcome}"),
                },
                OutboundAction::Notice { text, .. } => format!("[notice] {}", terminal_safe(&text)),
                // Progress and typing would interleave with replies on a plain terminal; they
                // go to the log instead.
                OutboundAction::Progress { text, .. } => {
                    tracing::info!(progress = %terminal_safe(&text), "agent progress");
                    return Ok(());
                }
                OutboundAction::Typing { .. } => return Ok(()),
            };
            self.write(&text).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn lines_become_messages_and_decisions() {
        let input = b"hello\n\n/approve abc123\n/deny\n/deny x/y\n/status\nbye".to_vec();
        let (w, mut r) = tokio::io::duplex(4096);
        let ch = Arc::new(
            TerminalChannel::new("alice", Box::new(std::io::Cursor::new(input)), Box::new(w))
                .unwrap(),
        );
        let (tx, mut rx) = mpsc::channel(8);
        let ctx = ChannelContext {
            inbound: tx,
            shutdown: CancellationToken::new(),
            ready: CancellationToken::new(),
        };
        let ready = ctx.ready.clone();
        ch.clone().run(ctx).await.unwrap();
        assert!(ready.is_cancelled(), "the terminal reports itself ready");
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(matches!(&events[0], InboundEvent::Message(m) if m.text == "hello"));
        assert!(matches!(&events[1],
            InboundEvent::ApprovalDecision(d) if d.approve && d.approval.as_str() == "abc123"));
        assert!(matches!(&events[2], InboundEvent::Command(m) if m.text == "/status"));
        assert!(matches!(&events[3], InboundEvent::Message(m) if m.text == "bye"));
        drop(ch);
        let mut shown = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut shown)
            .await
            .unwrap();
        assert!(
            shown.contains("[notice] usage: /approve <id> or /deny <id>"),
            "{shown}"
        );
        assert!(shown.contains("[notice] bad approval id"), "{shown}");
    }
}
