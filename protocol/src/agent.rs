//! Frames between the gateway (host) and the agent in a sandbox (box), one JSON object per line.
//!
//! # Phases
//! A box starts `Booting`: the host sends [`HostToBox::Init`], the box answers
//! [`BoxToHost::Ready`] with the protocol version it speaks. It is then `Idle`: the host sends
//! [`HostToBox::UserMessage`] and the box is `InTurn` until it sends [`BoxToHost::FinalResponse`]
//! or [`BoxToHost::Error`]. Inside a turn the box asks the host for LLM turns
//! ([`BoxToHost::LlmRequest`] → [`HostToBox::LlmResponse`]), for approvals
//! ([`BoxToHost::ApprovalRequest`] → [`HostToBox::ApprovalResult`]) and for tools the host runs
//! ([`BoxToHost::ToolRequest`] → [`HostToBox::ToolResult`]). Each variant's doc names the phase it
//! is legal in; the host treats any other frame as a protocol violation and stops the box.

use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;
use crate::ids::{AgentId, RequestId, ToolCallId, UserRef};
use crate::tools::{ToolInvocation, ToolName};

/// The version of this frame set. The box reports the version it speaks in `Ready`; the host
/// refuses a box that speaks another.
pub const PROTOCOL_VERSION: u32 = 1;

/// Limits the host imposes on the agent's own loop (the sandbox enforces the hard ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLimits {
    /// LLM round trips allowed in one turn before the agent gives up.
    pub max_tool_iterations: u32,
    /// Wall-clock limit of one shell command, in seconds.
    pub shell_timeout_secs: u32,
    /// Bytes of one tool's output kept for the model; the rest is cut with a marker.
    pub tool_output_cap: u32,
    /// Bytes of history sent with each LLM request; the oldest turns are left out beyond it.
    pub max_history_bytes: u32,
}

/// Facts about a user message that the agent may use (never trusted for authorization).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageMetadata {
    /// Who wrote it.
    pub user: UserRef,
}

/// Frames the host sends to the box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostToBox {
    /// Phase `Booting`: first frame; configures the agent.
    Init {
        /// The host's protocol version.
        protocol_version: u32,
        /// This agent instance.
        agent_id: AgentId,
        /// Operator instructions for the model.
        system_prompt: String,
        /// The tools this agent may offer the model.
        tools: Vec<ToolName>,
        /// Loop limits.
        limits: AgentLimits,
    },
    /// Phase `Idle`: starts a turn.
    UserMessage {
        /// What the user wrote.
        content: String,
        /// Who wrote it.
        metadata: MessageMetadata,
    },
    /// Phase `InTurn`: the model's answer to an `LlmRequest`.
    LlmResponse {
        /// The request this answers.
        request_id: RequestId,
        /// The assistant message; tool call ids are assigned by the host.
        message: ChatMessage,
    },
    /// Phase `InTurn`: the LLM call for `request_id` failed; the turn is over.
    LlmFailed {
        /// The request this answers.
        request_id: RequestId,
        /// A message safe to keep in memory (no secrets, no provider details).
        message: String,
    },
    /// Phase `InTurn`: a human's decision on an `ApprovalRequest`.
    ApprovalResult {
        /// The request this answers.
        request_id: RequestId,
        /// Whether the exact requested call may run, once.
        approved: bool,
        /// Who decided, or why nothing was decided (expired, cancelled).
        reason: String,
    },
    /// Phase `InTurn`: the outcome of a tool the host ran (`http_fetch`).
    ToolResult {
        /// The request this answers.
        request_id: RequestId,
        /// The tool's output, already capped.
        output: String,
    },
    /// Phase `Idle`: resumes a turn that a restart interrupted. A human approved the call
    /// `call_id`, which the agent's memory holds without a result; the agent runs exactly
    /// `operation` (it must match the remembered call), then continues the turn as if the
    /// approval had just arrived: remaining calls of that response, further LLM rounds, and
    /// finally `FinalResponse`. For a gateway-side tool the agent sends `ToolRequest` as usual.
    RunApproved {
        /// Fresh id for this resumption (for logs; answers come as a normal turn).
        request_id: RequestId,
        /// The remembered call.
        call_id: ToolCallId,
        /// What the human approved, exactly.
        operation: ToolInvocation,
    },
    /// Any phase: finish and exit.
    Shutdown,
}

/// Why a box ended a turn with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The LLM call failed (told by `LlmFailed`).
    LlmFailed,
    /// The turn hit `max_tool_iterations`.
    ToolLoopLimit,
    /// The host sent a frame the box did not expect.
    UnexpectedFrame,
    /// The agent's memory could not be read or written.
    Memory,
    /// Anything else.
    Internal,
}

/// Severity of a [`BoxToHost::Log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Fine detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

/// Frames the box sends to the host. Everything here is untrusted input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BoxToHost {
    /// Phase `Booting`: answers `Init`.
    Ready {
        /// The protocol version the box speaks.
        protocol_version: u32,
        /// Messages restored from the workspace's memory (0 for a new conversation).
        resumed_messages: u64,
    },
    /// Phase `InTurn`: asks the host to call the LLM.
    LlmRequest {
        /// Fresh id, answered by `LlmResponse` or `LlmFailed`.
        request_id: RequestId,
        /// The conversation so far (system prompt first).
        messages: Vec<ChatMessage>,
        /// Tools to offer; must be among those given in `Init`.
        tools: Vec<ToolName>,
    },
    /// Phase `InTurn`: asks a human to approve a tool call from the last `LlmResponse`.
    ApprovalRequest {
        /// Fresh id, answered by `ApprovalResult`.
        request_id: RequestId,
        /// The call, as the host assigned it.
        call_id: ToolCallId,
        /// What would run; must be exactly the call the model asked for.
        operation: ToolInvocation,
        /// Why the agent wants it (shown to the human).
        reason: String,
    },
    /// Phase `InTurn`: asks the host to run an approved gateway-side tool call.
    ToolRequest {
        /// Fresh id, answered by `ToolResult`.
        request_id: RequestId,
        /// The approved call.
        call_id: ToolCallId,
        /// What to run; must match the approved call.
        operation: ToolInvocation,
    },
    /// Phase `InTurn`: a short status line for the user ("running shell…").
    Progress {
        /// The status text.
        message: String,
    },
    /// Phase `InTurn`: the turn's answer; the box is `Idle` again.
    FinalResponse {
        /// The answer for the user.
        content: String,
    },
    /// Phase `InTurn`: the turn failed; the box is `Idle` again.
    Error {
        /// What went wrong (shown to operators, not verbatim to users).
        message: String,
        /// Category.
        code: ErrorCode,
    },
    /// Any phase after `Ready`: a diagnostic line for the gateway's log.
    Log {
        /// Severity.
        level: LogLevel,
        /// The line.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode;

    #[test]
    fn frames_round_trip() {
        let frames = [
            BoxToHost::Ready {
                protocol_version: PROTOCOL_VERSION,
                resumed_messages: 3,
            },
            BoxToHost::ApprovalRequest {
                request_id: RequestId(7),
                call_id: ToolCallId::new("c1").unwrap(),
                operation: ToolInvocation::Shell {
                    command: "ls".into(),
                },
                reason: "look".into(),
            },
            BoxToHost::Log {
                level: LogLevel::Warn,
                message: "x".into(),
            },
        ];
        for f in frames {
            let line = crate::codec::encode(&f);
            assert_eq!(decode::<BoxToHost>(&line[..line.len() - 1]).unwrap(), f);
        }
    }

    #[test]
    fn a_box_cannot_send_host_only_frames() {
        // `approval_result` exists only host → box; the closed box → host set refuses it.
        let forged = br#"{"type":"approval_result","request_id":1,"approved":true,"reason":"me"}"#;
        assert!(decode::<BoxToHost>(forged).is_err());
    }
}
