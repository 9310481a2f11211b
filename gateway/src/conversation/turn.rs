//! One turn: from a user's message to the agent's answer.
//!
//! The gateway is the policy point of a turn. It makes every LLM call, so it knows every tool
//! call the model asked for; it remembers them, and accepts an approval request only for one of
//! those calls, with arguments whose canonical form is byte-for-byte the model's. A human's
//! "approve" then lets exactly that call run, once. Any frame that does not fit — a call that
//! was never made, changed arguments, a second request for the same call, too many LLM rounds,
//! a frame of the wrong phase — is a protocol violation: the agent is stopped and the user told.

use std::collections::HashMap;

use boxedclaw_channels::OutboundAction;
use boxedclaw_protocol::agent::{BoxToHost, HostToBox, LogLevel, MessageMetadata};
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt, InboundMessage};
use boxedclaw_protocol::chat::{ChatMessage, Role, ToolCall};
use boxedclaw_protocol::display::escape_untrusted;
use boxedclaw_protocol::ids::{ConversationKey, ToolCallId, UserRef};
use boxedclaw_protocol::tools::{ToolInvocation, ToolName};
use tokio::time::Instant;

use super::Conversation;
use super::agent::{self, StartError};
use crate::approvals::Decided;
use crate::llm::CompletionRequest;
use crate::sandbox::link::LinkError;

/// Log frames accepted from an agent per turn; more are dropped (a per-box rate limit).
const MAX_LOGS_PER_TURN: u32 = 100;
/// Progress updates forwarded per turn.
const MAX_PROGRESS_PER_TURN: u32 = 30;
/// Longest agent-supplied text kept in logs and approval prompts.
const MAX_AGENT_TEXT: usize = 2000;

/// How a turn ended.
#[derive(Debug)]
pub(crate) enum TurnOutcome {
    /// The agent's answer.
    Answer(String),
    /// The turn failed; the user gets `user_message` plus a reference.
    Failed {
        /// What the user is told (no internals, no secrets).
        user_message: String,
        /// What operators see in the log.
        log_message: String,
        /// Whether the agent must be stopped (crash, violation, timeout).
        stop_agent: bool,
    },
}

fn violation(what: impl Into<String>) -> TurnOutcome {
    TurnOutcome::Failed {
        user_message: "The agent sent an invalid message and was stopped. Your next message \
                       restarts it with its memory."
            .into(),
        log_message: format!("protocol violation: {}", what.into()),
        stop_agent: true,
    }
}

fn link_failure(e: LinkError) -> TurnOutcome {
    match e {
        LinkError::Protocol(d) => violation(d.to_string()),
        other => TurnOutcome::Failed {
            user_message: "The agent stopped unexpectedly. Your next message restarts it with \
                           its memory."
                .into(),
            log_message: format!("agent crashed: {other}"),
            stop_agent: true,
        },
    }
}

/// A tool call from the latest LLM response, as the model wrote it.
struct IssuedCall {
    name: String,
    arguments: String,
}

/// What a turn remembers while it runs.
#[derive(Default)]
struct TurnState {
    /// Calls from the latest LLM response not yet submitted for approval.
    issued: HashMap<ToolCallId, IssuedCall>,
    /// Approved gateway-side calls (canonical form), each usable once.
    approved_gateway: HashMap<ToolCallId, String>,
    llm_rounds: u32,
    logs: u32,
    progress: u32,
    /// Set when the LLM failed, to tell the user why the agent gave up.
    llm_failure: Option<String>,
}

impl Conversation {
    /// Runs one turn for `msg`, starting the agent if needed.
    pub(super) async fn turn(&mut self, msg: &InboundMessage) -> TurnOutcome {
        let services = self.services.clone();
        if self.agent.is_none() {
            match agent::start(&services, &self.key, &mut self.crashes).await {
                Ok(a) => self.agent = Some(a),
                Err(e @ StartError::CrashLoop) => {
                    return TurnOutcome::Failed {
                        user_message: "The agent keeps crashing; it is paused for a few minutes."
                            .into(),
                        log_message: e.to_string(),
                        stop_agent: false,
                    };
                }
                Err(StartError::Failed(why)) => {
                    return TurnOutcome::Failed {
                        user_message: "The agent could not be started.".into(),
                        log_message: format!("agent start failed: {why}"),
                        stop_agent: false,
                    };
                }
            }
        }
        let user_message = HostToBox::UserMessage {
            content: msg.text.clone(),
            metadata: MessageMetadata {
                user: msg.user.clone(),
            },
        };
        if let Err(e) = self.link().send(&user_message).await {
            return link_failure(e);
        }
        let mut state = TurnState::default();
        let mut deadline = Instant::now() + services.config.agent.turn_timeout;
        loop {
            let shutdown = services.shutdown.clone();
            let frame = tokio::select! {
                r = self.link().recv() => r,
                () = tokio::time::sleep_until(deadline) => {
                    return TurnOutcome::Failed {
                        user_message: "The agent took too long and was stopped.".into(),
                        log_message: "turn timeout".into(),
                        stop_agent: true,
                    };
                }
                () = shutdown.cancelled() => {
                    return TurnOutcome::Failed {
                        user_message: "The gateway is shutting down; please ask again later.".into(),
                        log_message: "shutdown during turn".into(),
                        stop_agent: true,
                    };
                }
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return link_failure(e),
            };
            let step = match frame {
                BoxToHost::LlmRequest {
                    request_id,
                    messages,
                    tools,
                } => {
                    self.llm_round(&mut state, request_id, messages, tools)
                        .await
                }
                BoxToHost::ApprovalRequest {
                    request_id,
                    call_id,
                    operation,
                    reason,
                } => {
                    let asked = Instant::now();
                    let r = self
                        .approval(
                            &mut state, &msg.user, request_id, call_id, operation, reason,
                        )
                        .await;
                    // Time spent waiting for a human does not count against the turn.
                    deadline += asked.elapsed();
                    r
                }
                BoxToHost::ToolRequest {
                    request_id,
                    call_id,
                    operation,
                } => {
                    self.gateway_tool(&mut state, request_id, call_id, operation)
                        .await
                }
                BoxToHost::Progress { message } => {
                    state.progress += 1;
                    if state.progress <= MAX_PROGRESS_PER_TURN {
                        let text = escape_untrusted(truncate(&message, 200));
                        let action = OutboundAction::Progress {
                            conversation: self.key.clone(),
                            text,
                        };
                        services.outbound.send(action).await;
                    }
                    Ok(())
                }
                BoxToHost::Log { level, message } => {
                    state.logs += 1;
                    if state.logs <= MAX_LOGS_PER_TURN {
                        log_from_agent(&self.key, level, &message);
                    }
                    Ok(())
                }
                BoxToHost::FinalResponse { content } => return TurnOutcome::Answer(content),
                BoxToHost::Error { message, code } => {
                    let user_message = match state.llm_failure.take() {
                        Some(why) => why,
                        None => format!("The agent could not finish this turn ({code:?})."),
                    };
                    return TurnOutcome::Failed {
                        user_message,
                        log_message: format!(
                            "agent error {code:?}: {}",
                            escape_untrusted(truncate(&message, MAX_AGENT_TEXT))
                        ),
                        stop_agent: false,
                    };
                }
                BoxToHost::Ready { .. } => Err(violation("ready frame during a turn")),
            };
            if let Err(outcome) = step {
                return outcome;
            }
        }
    }

    fn link(&mut self) -> &mut crate::sandbox::link::AgentLink {
        // A turn only runs with a started agent (checked at its start); a missing agent here
        // would be a bug, and the link of a fresh placeholder would fail closed anyway.
        match self.agent.as_mut() {
            Some(a) => &mut a.link,
            None => unreachable!("turn without agent"),
        }
    }

    async fn llm_round(
        &mut self,
        state: &mut TurnState,
        request_id: boxedclaw_protocol::ids::RequestId,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolName>,
    ) -> Result<(), TurnOutcome> {
        let services = self.services.clone();
        state.llm_rounds += 1;
        if state.llm_rounds
            > services
                .config
                .agent
                .limits
                .max_tool_iterations
                .saturating_add(1)
        {
            return Err(violation(
                "more LLM requests than max_tool_iterations allows",
            ));
        }
        if tools.len() > ToolName::ALL.len() {
            return Err(violation("tool list longer than the tool set"));
        }
        // Calls of the previous response that were never submitted are void now.
        state.issued.clear();
        let answer = services
            .llm
            .complete(CompletionRequest {
                messages: &messages,
                tools: &tools,
            })
            .await;
        let reply = match answer {
            Ok(c) => {
                *services.usage.entry(self.key.clone()).or_default() += c.usage.total();
                let mut tool_calls = Vec::with_capacity(c.tool_calls.len());
                for call in c.tool_calls {
                    // Ids are ours, not the model's: short, unique, safe to show and log.
                    let mut rnd = [0u8; 6];
                    let _ = getrandom::fill(&mut rnd);
                    let id = ToolCallId::from_random(rnd);
                    state.issued.insert(
                        id.clone(),
                        IssuedCall {
                            name: call.name.clone(),
                            arguments: call.arguments.clone(),
                        },
                    );
                    tool_calls.push(ToolCall {
                        id,
                        name: call.name,
                        arguments: call.arguments,
                    });
                }
                let message = ChatMessage {
                    role: Role::Assistant,
                    content: c.content,
                    tool_calls,
                    tool_call_id: None,
                };
                HostToBox::LlmResponse {
                    request_id,
                    message,
                }
            }
            Err(e) => {
                tracing::error!(conversation = %self.key, error = %e, "LLM call failed");
                state.llm_failure =
                    Some("The language model could not be reached; please try again later.".into());
                HostToBox::LlmFailed {
                    request_id,
                    message: "the language model is unavailable".into(),
                }
            }
        };
        self.link().send(&reply).await.map_err(link_failure)
    }

    async fn approval(
        &mut self,
        state: &mut TurnState,
        requester: &UserRef,
        request_id: boxedclaw_protocol::ids::RequestId,
        call_id: ToolCallId,
        operation: ToolInvocation,
        reason: String,
    ) -> Result<(), TurnOutcome> {
        let Some(issued) = state.issued.remove(&call_id) else {
            return Err(violation(format!(
                "approval requested for unknown call {call_id}"
            )));
        };
        let expected = ToolInvocation::parse(&issued.name, &issued.arguments)
            .map_err(|e| violation(format!("approval requested for an invalid call: {e}")))?;
        let canonical = expected.canonical_json();
        if !expected.tool().needs_approval() || canonical != operation.canonical_json() {
            tracing::warn!(target: "boxedclaw::audit", conversation = %self.key, call = %call_id, "approval request does not match the model's call");
            return Err(violation(
                "approval request does not match the model's call",
            ));
        }
        let (approved, reason_text) = self.ask_human(requester, &expected, &reason).await?;
        if approved && expected.tool().runs_in_gateway() {
            state.approved_gateway.insert(call_id, canonical);
        }
        let result = HostToBox::ApprovalResult {
            request_id,
            approved,
            reason: reason_text,
        };
        self.link().send(&result).await.map_err(link_failure)
    }

    /// Shows the prompt and waits for a decision, expiry, or the agent going away.
    async fn ask_human(
        &mut self,
        requester: &UserRef,
        operation: &ToolInvocation,
        reason: &str,
    ) -> Result<(bool, String), TurnOutcome> {
        let services = self.services.clone();
        let ttl = services.config.approvals.timeout;
        let mut open = services.approvals.open(&self.key, requester, ttl);
        let id = open.id.clone();
        let action = escape_untrusted(&operation.summary());
        tracing::info!(target: "boxedclaw::audit", event = "approval.requested", conversation = %self.key, approval = %id, requester = %requester, action = %action);
        let prompt = ApprovalPrompt {
            conversation: self.key.clone(),
            approval: id.clone(),
            requester: requester.clone(),
            action,
            reason: escape_untrusted(truncate(reason, 500)),
            expires_in_secs: ttl.as_secs(),
        };
        services
            .outbound
            .send(OutboundAction::RequestApproval(prompt))
            .await;

        let shutdown = services.shutdown.clone();
        let decided: Result<Option<Decided>, TurnOutcome> = loop {
            tokio::select! {
                d = &mut open.decision => break Ok(d.ok()),
                () = tokio::time::sleep_until(open.expires_at) => {
                    if services.approvals.withdraw(&id) {
                        break Ok(None);
                    }
                    // A decision won the race; it has been sent.
                    break Ok((&mut open.decision).await.ok());
                }
                frame = self.link().recv() => match frame {
                    Ok(BoxToHost::Log { level, message }) => log_from_agent(&self.key, level, &message),
                    Ok(other) => break Err(violation(format!("{} while waiting for approval", frame_name(&other)))),
                    Err(e) => break Err(link_failure(e)),
                },
                () = shutdown.cancelled() => break Ok(None),
            }
        };
        let expired = Instant::now() >= open.expires_at;
        let (outcome, by) = match &decided {
            Ok(Some(d)) => (d.outcome, Some(d.by.clone())),
            Ok(None) if expired => (ApprovalOutcome::Expired, None),
            _ => {
                services.approvals.withdraw(&id);
                (ApprovalOutcome::Cancelled, None)
            }
        };
        tracing::info!(target: "boxedclaw::audit", event = "approval.resolved", conversation = %self.key, approval = %id, %outcome, by = by.as_ref().map(ToString::to_string));
        let resolve = OutboundAction::ResolveApproval {
            conversation: self.key.clone(),
            approval: id,
            outcome,
            by: by.clone(),
        };
        services.outbound.send(resolve).await;
        decided?;
        Ok(match (outcome, by) {
            (ApprovalOutcome::Approved, Some(by)) => (true, format!("approved by {by}")),
            (ApprovalOutcome::Denied, Some(by)) => (false, format!("denied by {by}")),
            (ApprovalOutcome::Expired, _) => (false, "the approval expired".into()),
            _ => (false, "the approval was cancelled".into()),
        })
    }

    async fn gateway_tool(
        &mut self,
        state: &mut TurnState,
        request_id: boxedclaw_protocol::ids::RequestId,
        call_id: ToolCallId,
        operation: ToolInvocation,
    ) -> Result<(), TurnOutcome> {
        let Some(canonical) = state.approved_gateway.remove(&call_id) else {
            return Err(violation(format!(
                "tool request for unapproved call {call_id}"
            )));
        };
        if canonical != operation.canonical_json() {
            return Err(violation("tool request differs from the approved call"));
        }
        let cap = self.services.config.agent.limits.tool_output_cap as usize;
        let output = match &operation {
            ToolInvocation::HttpFetch { url } => crate::fetch::fetch(url, cap).await,
            other => return Err(violation(format!("{} is not a gateway tool", other.tool()))),
        };
        tracing::info!(target: "boxedclaw::audit", event = "tool.ran", conversation = %self.key, call = %call_id, tool = %operation.tool());
        let result = HostToBox::ToolResult { request_id, output };
        self.link().send(&result).await.map_err(link_failure)
    }
}

/// Logs a line an agent sent: bounded, escaped, at the agent's level (capped at warn, so an
/// agent cannot page operators).
pub(super) fn log_from_agent(key: &ConversationKey, level: LogLevel, message: &str) {
    let message = escape_untrusted(truncate(message, MAX_AGENT_TEXT));
    match level {
        LogLevel::Debug => {
            tracing::debug!(target: "boxedclaw::agent", conversation = %key, %message)
        }
        LogLevel::Info => tracing::info!(target: "boxedclaw::agent", conversation = %key, %message),
        LogLevel::Warn | LogLevel::Error => {
            tracing::warn!(target: "boxedclaw::agent", conversation = %key, %message);
        }
    }
}

/// The frame's type name, for logs.
pub(super) fn frame_name(f: &BoxToHost) -> &'static str {
    match f {
        BoxToHost::Ready { .. } => "ready",
        BoxToHost::LlmRequest { .. } => "llm_request",
        BoxToHost::ApprovalRequest { .. } => "approval_request",
        BoxToHost::ToolRequest { .. } => "tool_request",
        BoxToHost::Progress { .. } => "progress",
        BoxToHost::FinalResponse { .. } => "final_response",
        BoxToHost::Error { .. } => "error",
        BoxToHost::Log { .. } => "log",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
