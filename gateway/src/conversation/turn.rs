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
use boxedclaw_protocol::ids::{ConversationKey, RequestId, ToolCallId, UserRef};
use boxedclaw_protocol::tools::{ToolInvocation, ToolName};
use sha2::Digest as _;
use tokio::time::Instant;

use super::Conversation;
use super::agent::{self, StartError};
use crate::approvals::Decided;
use crate::llm::CompletionRequest;
use crate::sandbox::link::LinkError;
use crate::services::{Services, now_secs};
use crate::store::{ApprovalRow, ApprovalState, BudgetSubject};

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
    /// The agent crashed, broke its link or violated the protocol: the turn failed as
    /// [`TurnOutcome::Failed`] with `stop_agent`, and the agent counts as crashed.
    Crashed {
        /// What the user is told (no internals, no secrets).
        user_message: String,
        /// What operators see in the log.
        log_message: String,
    },
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
    TurnOutcome::Crashed {
        user_message: "The agent sent an invalid message and was stopped. Your next message \
                       restarts it with its memory."
            .into(),
        log_message: format!("protocol violation: {}", what.into()),
    }
}

fn link_failure(e: LinkError) -> TurnOutcome {
    match e {
        LinkError::Protocol(d) => violation(d.to_string()),
        other => TurnOutcome::Crashed {
            user_message: "The agent stopped unexpectedly. Your next message restarts it with \
                           its memory."
                .into(),
            log_message: format!("agent crashed: {other}"),
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
    /// A turn resumed after a restart: calls issued before the restart are unknown here.
    resumed: bool,
}

impl Conversation {
    /// Runs one turn for `msg`, starting the agent if needed.
    /// Runs one turn for `msg`, starting the agent if needed.
    pub(super) async fn turn(&mut self, msg: &InboundMessage) -> TurnOutcome {
        if let Err(failed) = self.ensure_agent().await {
            return failed;
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
        self.drive(&msg.user, TurnState::default()).await
    }

    /// Resumes a turn a restart interrupted: the human approved `row` after the restart, so
    /// the agent (restarted on the same memory) runs exactly that call, once.
    pub(super) async fn resume_turn(&mut self, row: &ApprovalRow) -> TurnOutcome {
        let services = self.services.clone();
        let operation: ToolInvocation = match serde_json::from_str(&row.operation) {
            Ok(op) => op,
            Err(e) => {
                return TurnOutcome::Failed {
                    user_message: "The approved action could not be resumed.".into(),
                    log_message: format!("stored operation of {} unreadable: {e}", row.id),
                    stop_agent: false,
                };
            }
        };
        match services.store.mark_executed(&row.id, now_secs()).await {
            Ok(true) => {}
            Ok(false) => {
                return TurnOutcome::Failed {
                    user_message: format!("Approval {} was already carried out.", row.id),
                    log_message: "resume of an approval already executed".into(),
                    stop_agent: false,
                };
            }
            Err(e) => {
                return TurnOutcome::Failed {
                    user_message: "The approved action could not be resumed.".into(),
                    log_message: format!("store: {e}"),
                    stop_agent: false,
                };
            }
        }
        if let Err(failed) = self.ensure_agent().await {
            return failed;
        }
        let Ok(call_id) = ToolCallId::new(row.call_id.clone()) else {
            return violation("stored call id invalid");
        };
        let mut state = TurnState {
            resumed: true,
            ..TurnState::default()
        };
        if operation.tool().runs_in_gateway() {
            state
                .approved_gateway
                .insert(call_id.clone(), operation.canonical_json());
        }
        services
            .audit(
                "gateway",
                "approval.resumed",
                Some(&self.key.to_string()),
                &row.id.to_string(),
            )
            .await;
        let frame = HostToBox::RunApproved {
            request_id: RequestId(0),
            call_id,
            operation,
        };
        if let Err(e) = self.link().send(&frame).await {
            return link_failure(e);
        }
        self.drive(&row.requester, state).await
    }

    async fn ensure_agent(&mut self) -> Result<(), TurnOutcome> {
        if self.agent.is_some() {
            return Ok(());
        }
        let services = self.services.clone();
        match agent::start(&services, &self.key, &mut self.crashes).await {
            Ok(a) => {
                self.agent = Some(a);
                let workspace = agent::workspace_dir(&services, &self.key);
                let backend = services.sandbox.kind().to_string();
                if let Err(e) = services
                    .store
                    .touch_conversation(&self.key, &workspace, &backend)
                    .await
                {
                    tracing::error!(conversation = %self.key, error = %e, "store: conversation not recorded");
                }
                Ok(())
            }
            Err(e @ StartError::CrashLoop) => Err(TurnOutcome::Failed {
                user_message: "The agent keeps crashing; it is paused for a few minutes.".into(),
                log_message: e.to_string(),
                stop_agent: false,
            }),
            Err(StartError::Failed(why)) => Err(TurnOutcome::Failed {
                user_message: "The agent could not be started.".into(),
                log_message: format!("agent start failed: {why}"),
                stop_agent: false,
            }),
        }
    }

    /// Serves the agent's requests until it ends the turn.
    async fn drive(&mut self, requester: &UserRef, mut state: TurnState) -> TurnOutcome {
        let services = self.services.clone();
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
                    self.llm_round(&mut state, requester, request_id, messages, tools)
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
                            &mut state, requester, request_id, call_id, operation, reason,
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
        requester: &UserRef,
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
        let day = now_secs() / 86_400;
        if let Some(over) = Self::over_budget(&services, &self.key, requester, day).await {
            state.llm_failure = Some(over);
            let reply = HostToBox::LlmFailed {
                request_id,
                message: "the daily token budget is used up".into(),
            };
            return self.link().send(&reply).await.map_err(link_failure);
        }
        let asked = Instant::now();
        let answer = services
            .llm
            .complete(CompletionRequest {
                messages: &messages,
                tools: &tools,
            })
            .await;
        let usage = answer.as_ref().map(|c| c.usage).unwrap_or_default();
        services.metrics.llm_call(
            asked.elapsed(),
            usage.prompt_tokens,
            usage.completion_tokens,
            answer.is_ok(),
        );
        let reply = match answer {
            Ok(c) => {
                if let Err(e) = services
                    .store
                    .add_usage(&self.key, requester, day, c.usage.total())
                    .await
                {
                    tracing::error!(conversation = %self.key, error = %e, "store: usage not recorded");
                }
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

    /// Why no further LLM call may be made today, if the conversation or the user has spent
    /// the daily budget an admin set.
    async fn over_budget(
        services: &Services,
        key: &ConversationKey,
        user: &UserRef,
        day: i64,
    ) -> Option<String> {
        let store = &services.store;
        let subjects = [
            (
                BudgetSubject::Conversation(key.clone()),
                "This conversation",
            ),
            (BudgetSubject::User(user.clone()), "You"),
        ];
        for (subject, who) in subjects {
            let Ok(Some(budget)) = store.budget(&subject).await else {
                continue;
            };
            let used = store.usage(&subject, day).await.unwrap_or(0);
            if used >= budget {
                tracing::warn!(conversation = %key, used, budget, "token budget exhausted");
                return Some(format!(
                    "{who} used the daily token budget ({used} of {budget} tokens). \
                     An admin can raise it with /budget."
                ));
            }
        }
        None
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
            if state.resumed && state.llm_rounds == 0 {
                // Another call of the response a restart interrupted: the gateway no longer
                // knows what the model asked for, so it cannot bind an approval. Refuse it.
                let result = HostToBox::ApprovalResult {
                    request_id,
                    approved: false,
                    reason: "issued before a gateway restart; ask again".into(),
                };
                return self.link().send(&result).await.map_err(link_failure);
            }
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
        let (approved, reason_text) = self
            .ask_human(requester, &call_id, &expected, &reason)
            .await?;
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
        call_id: &ToolCallId,
        operation: &ToolInvocation,
        reason: &str,
    ) -> Result<(bool, String), TurnOutcome> {
        let services = self.services.clone();
        let ttl = services.config.approvals.timeout;
        let mut open = services.approvals.open(&self.key, requester, ttl);
        let id = open.id.clone();
        let action = escape_untrusted(&operation.summary());
        // Persisted before it is shown, so a restart cannot lose an approval a human sees.
        let canonical = operation.canonical_json();
        let now = now_secs();
        let row = ApprovalRow {
            id: id.clone(),
            conversation: self.key.clone(),
            requester: requester.clone(),
            call_id: call_id.to_string(),
            call_hash: hex::encode(sha2::Sha256::digest(canonical.as_bytes())),
            operation: canonical,
            summary: action.clone(),
            created_at: now,
            expires_at: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            state: ApprovalState::Pending,
            decided_by: None,
            decided_at: None,
        };
        if let Err(e) = services.store.insert_approval(&row).await {
            services.approvals.withdraw(&id);
            return Err(TurnOutcome::Failed {
                user_message: "The approval could not be recorded, so nothing was run.".into(),
                log_message: format!("store: {e}"),
                stop_agent: true,
            });
        }
        let key = self.key.to_string();
        services
            .audit(
                &requester.to_string(),
                "approval.requested",
                Some(&key),
                &format!("{id} {action}"),
            )
            .await;
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
        let waiting = WaitingForHuman::new(&services);
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
        drop(waiting);
        if shutdown.is_cancelled() && !matches!(decided, Ok(Some(_))) {
            // Left pending in the store: restored, and still decidable, after the restart.
            services.approvals.withdraw(&id);
            return Err(TurnOutcome::Failed {
                user_message: format!(
                    "The gateway is restarting; approval {id} stays pending and can still be decided."
                ),
                log_message: "shutdown while waiting for approval".into(),
                stop_agent: true,
            });
        }
        let expired = Instant::now() >= open.expires_at;
        let (outcome, by, via_role) = match &decided {
            Ok(Some(d)) => (d.outcome, Some(d.by.clone()), d.via_role.clone()),
            Ok(None) if expired => (ApprovalOutcome::Expired, None, None),
            _ => {
                services.approvals.withdraw(&id);
                (ApprovalOutcome::Cancelled, None, None)
            }
        };
        let state = match outcome {
            ApprovalOutcome::Approved => ApprovalState::Approved,
            ApprovalOutcome::Denied => ApprovalState::Denied,
            ApprovalOutcome::Expired => ApprovalState::Expired,
            ApprovalOutcome::Cancelled => ApprovalState::Cancelled,
        };
        let now = now_secs();
        // The store decides, exactly once: another replica may have resolved it first.
        let mut runs = match services
            .store
            .resolve_approval(&id, state, by.as_ref(), now)
            .await
        {
            Ok(changed) => changed && outcome == ApprovalOutcome::Approved,
            Err(e) => {
                tracing::error!(approval = %id, error = %e, "store: approval not resolved; nothing runs");
                false
            }
        };
        if runs {
            // At most once: marked executed before the agent is told to run it.
            runs = matches!(services.store.mark_executed(&id, now).await, Ok(true));
        }
        let actor = by
            .as_ref()
            .map_or_else(|| "gateway".to_owned(), ToString::to_string);
        services.metrics.approval_resolved(outcome);
        let detail = match &via_role {
            Some(role) => format!("{id} (as holder of approver role {role})"),
            None => id.to_string(),
        };
        services
            .audit(&actor, &format!("approval.{outcome}"), Some(&key), &detail)
            .await;
        let resolve = OutboundAction::ResolveApproval {
            conversation: self.key.clone(),
            approval: id,
            outcome,
            by: by.clone(),
        };
        services.outbound.send(resolve).await;
        decided?;
        Ok(match (outcome, by) {
            (ApprovalOutcome::Approved, Some(by)) if runs => (true, format!("approved by {by}")),
            (ApprovalOutcome::Approved, _) => (false, "the approval was already used".into()),
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
        self.services
            .audit(
                "gateway",
                "tool.ran",
                Some(&self.key.to_string()),
                &format!("{call_id} {}", operation.tool()),
            )
            .await;
        let result = HostToBox::ToolResult { request_id, output };
        self.link().send(&result).await.map_err(link_failure)
    }
}

/// Counts a turn as blocked on a human for as long as it lives.
struct WaitingForHuman<'a>(&'a Services);

impl<'a> WaitingForHuman<'a> {
    fn new(services: &'a Services) -> Self {
        services
            .awaiting_humans
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(services)
    }
}

impl Drop for WaitingForHuman<'_> {
    fn drop(&mut self) {
        self.0
            .awaiting_humans
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
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
