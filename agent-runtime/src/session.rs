//! The agent's life: the `Init`/`Ready` handshake, then turns until the host stops it.
//!
//! Every wait accepts exactly one frame: the answer to the request just sent. Anything else
//! means host and box disagree about the state of the conversation, which nothing here can
//! repair, so the agent reports `UnexpectedFrame` and exits (the host restarts it, and memory
//! carries the conversation over).
//!
//! # Interrupted turns
//! A process that dies mid-turn (the gateway was killed while a human had not yet decided on an
//! approval) leaves memory ending in an assistant message with unanswered calls (see
//! [`Memory::interrupted`]). The next process, when idle, accepts either
//! - `RunApproved` for exactly one of those calls, with exactly the remembered operation of a
//!   tool that needs approval: the call runs as an approved call does, then the turn goes on as
//!   if the approval had just arrived (the remaining calls, then LLM rounds up to the turn's
//!   iteration cap). Anything else is refused as an unexpected frame, and nothing runs;
//! - a `UserMessage`: the unanswered calls are closed with [`INTERRUPTED`] first.

use std::convert::Infallible;
use std::io::{Read, Write};

use boxedclaw_protocol::agent::{AgentLimits, ErrorCode, LogLevel};
use boxedclaw_protocol::chat::{ChatMessage, Role, ToolCall};
use boxedclaw_protocol::codec::MAX_FRAME_LEN;
use boxedclaw_protocol::tools::{ToolInvocation, ToolName};
use boxedclaw_protocol::{BoxToHost, HostToBox, PROTOCOL_VERSION, RequestId, ToolCallId};

use crate::Env;
use crate::history;
use crate::memory::{Interrupted, Memory};
use crate::tools::{self, Workspace};
use crate::wire::{Conn, Stop};

/// Room left in an `LlmRequest` frame for everything but the messages.
const FRAME_MARGIN: usize = 64 * 1024;

/// Shown to the human deciding on an approval.
const APPROVAL_REASON: &str = "the model asked to run this";

/// The result recorded for calls of an interrupted turn that a new user message abandons.
pub(crate) const INTERRUPTED: &str = "not run: the turn was interrupted before a decision";

/// Runs the agent over `input`/`output` until it stops, and says why.
pub(crate) fn run<R: Read, W: Write>(input: R, output: W, env: &Env) -> Stop {
    let conn = Conn::new(input, output);
    let result = boot(conn, env).and_then(|mut session| session.serve());
    match result {
        Err(stop) => stop,
        Ok(never) => match never {},
    }
}

/// A ready agent.
struct Session<R, W> {
    conn: Conn<R, W>,
    ws: Workspace,
    memory: Memory,
    system_prompt: String,
    tools: Vec<ToolName>,
    limits: AgentLimits,
    /// The last request id used; ids only grow within a process.
    last_request: u64,
}

fn boot<R: Read, W: Write>(mut conn: Conn<R, W>, env: &Env) -> Result<Session<R, W>, Stop> {
    // Before `Ready` the host accepts no `Log` or `Error` frame: failures go to stderr only.
    let frame = conn.recv()?;
    let HostToBox::Init {
        protocol_version,
        agent_id,
        system_prompt,
        tools,
        limits,
    } = frame
    else {
        return Err(Stop::Fatal(format!(
            "expected init as the first frame, got {}",
            name(&frame)
        )));
    };
    if let Some(expected) = &env.agent_id
        && expected != agent_id.as_str()
    {
        return Err(Stop::Fatal(format!(
            "init is for agent {agent_id}, but this sandbox was started for {expected}"
        )));
    }
    let ws = Workspace::open(&env.workspace).map_err(Stop::Fatal)?;
    let (memory, notes) = Memory::open(ws.state_dir());
    let resumed_messages = memory.messages().len() as u64;
    conn.send(&BoxToHost::Ready {
        protocol_version: PROTOCOL_VERSION,
        resumed_messages,
    })?;
    if protocol_version != PROTOCOL_VERSION {
        let message = format!("host speaks protocol {protocol_version}, agent {PROTOCOL_VERSION}");
        conn.log(LogLevel::Warn, message)?;
    }
    for note in notes {
        conn.log(LogLevel::Warn, note)?;
    }
    Ok(Session {
        conn,
        ws,
        memory,
        system_prompt,
        tools,
        limits,
        last_request: 0,
    })
}

impl<R: Read, W: Write> Session<R, W> {
    /// Idle: each `UserMessage` is one turn; `RunApproved` finishes an interrupted one.
    fn serve(&mut self) -> Result<Infallible, Stop> {
        loop {
            match self.conn.recv()? {
                HostToBox::UserMessage {
                    content,
                    metadata: _,
                } => self.turn(content)?,
                HostToBox::RunApproved {
                    request_id,
                    call_id,
                    operation,
                } => self.resume(request_id, &call_id, &operation)?,
                other => return Err(self.unexpected("user_message or run_approved", &other)),
            }
        }
    }

    /// One turn: LLM round trips and tool calls until the model answers without tools.
    fn turn(&mut self, content: String) -> Result<(), Stop> {
        // An interrupted turn nobody resumed is over: its open calls never ran.
        if let Some(interrupted) = self.memory.interrupted() {
            for call in interrupted.unanswered {
                self.remember(ChatMessage::tool_result(call.id, INTERRUPTED))?;
            }
        }
        self.remember(ChatMessage::text(Role::User, content))?;
        self.rounds(0)
    }

    /// Finishes the turn a restart interrupted, after a human approved `call_id` (`RunApproved`).
    /// Only the remembered call runs, and only when `operation` is exactly it.
    fn resume(
        &mut self,
        request_id: RequestId,
        call_id: &ToolCallId,
        operation: &ToolInvocation,
    ) -> Result<(), Stop> {
        let (call, invocation, rest) =
            match check_resumable(self.memory.interrupted(), call_id, operation) {
                Ok(found) => found,
                Err(why) => {
                    let message = format!("run_approved {request_id} for call {call_id}: {why}");
                    return Err(self.refuse(message));
                }
            };
        let result = self.run_approved(&call, invocation)?;
        self.remember(ChatMessage::tool_result(call.id, result))?;
        for call in &rest {
            let result = self.call_tool(call)?;
            self.remember(ChatMessage::tool_result(call.id.clone(), result))?;
        }
        let used = self.memory.rounds_in_turn();
        self.rounds(used)
    }

    /// The turn's LLM round trips, `done` of them already used, and the tool calls they ask
    /// for, until the model answers without tools or the iteration cap is reached.
    fn rounds(&mut self, done: u32) -> Result<(), Stop> {
        // A request over the frame limit would be refused by the host whatever the budget says.
        let budget = usize::try_from(self.limits.max_history_bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_FRAME_LEN - FRAME_MARGIN);
        for _ in done..self.limits.max_tool_iterations {
            let request_id = self.fresh_id();
            let messages =
                history::request_messages(&self.system_prompt, self.memory.messages(), budget);
            let tools = self.tools.clone();
            self.conn.send(&BoxToHost::LlmRequest {
                request_id,
                messages,
                tools,
            })?;
            let mut message = match self.conn.recv()? {
                HostToBox::LlmResponse {
                    request_id: r,
                    message,
                } if r == request_id => message,
                HostToBox::LlmFailed {
                    request_id: r,
                    message,
                } if r == request_id => {
                    // The user message stays in memory; nothing else of this turn was added
                    // after the last complete tool round, so history stays well formed.
                    return self.conn.send(&BoxToHost::Error {
                        message,
                        code: ErrorCode::LlmFailed,
                    });
                }
                other => return Err(self.unexpected(&format!("llm_response {request_id}"), &other)),
            };
            // What the host relays is the assistant's turn, whatever the role field says.
            message.role = Role::Assistant;
            message.tool_call_id = None;
            let calls = message.tool_calls.clone();
            let answer = message.content.clone().unwrap_or_default();
            self.remember(message)?;
            if calls.is_empty() {
                return self
                    .conn
                    .send(&BoxToHost::FinalResponse { content: answer });
            }
            // Every call gets a result before the next request, whatever happens to it.
            for call in &calls {
                let result = self.call_tool(call)?;
                self.remember(ChatMessage::tool_result(call.id.clone(), result))?;
            }
        }
        let content = format!(
            "I stopped after {} tool iterations without reaching a final answer. \
             Tell me to continue if you want me to keep going.",
            self.limits.max_tool_iterations
        );
        self.remember(ChatMessage::text(Role::Assistant, content.clone()))?;
        self.conn.send(&BoxToHost::FinalResponse { content })
    }

    /// Runs one tool call (asking for approval, or the host, as the tool requires) and
    /// returns the result text for the model.
    fn call_tool(&mut self, call: &ToolCall) -> Result<String, Stop> {
        let invocation = match ToolInvocation::parse(&call.name, &call.arguments) {
            Ok(inv) => inv,
            Err(e) => return Ok(format!("error: {e}")),
        };
        let tool = invocation.tool();
        if !self.tools.contains(&tool) {
            return Ok(unavailable(tool));
        }
        if tool.needs_approval() {
            let request_id = self.fresh_id();
            self.conn.send(&BoxToHost::ApprovalRequest {
                request_id,
                call_id: call.id.clone(),
                operation: invocation.clone(),
                reason: APPROVAL_REASON.to_owned(),
            })?;
            match self.conn.recv()? {
                HostToBox::ApprovalResult {
                    request_id: r,
                    approved,
                    reason,
                } if r == request_id => {
                    if !approved {
                        return Ok(format!("not run: {reason}"));
                    }
                }
                other => {
                    return Err(self.unexpected(&format!("approval_result {request_id}"), &other));
                }
            }
        }
        self.run_approved(call, invocation)
    }

    /// Runs a call that may run (approved, or not needing approval): in the sandbox, or for a
    /// gateway tool through the host. Returns the result text for the model.
    fn run_approved(
        &mut self,
        call: &ToolCall,
        invocation: ToolInvocation,
    ) -> Result<String, Stop> {
        let tool = invocation.tool();
        // Checked again for a resumed call: this process may offer fewer tools than the last.
        if !self.tools.contains(&tool) {
            return Ok(unavailable(tool));
        }
        if tool.runs_in_gateway() {
            let request_id = self.fresh_id();
            let call_id = call.id.clone();
            self.conn.send(&BoxToHost::ToolRequest {
                request_id,
                call_id,
                operation: invocation,
            })?;
            return match self.conn.recv()? {
                HostToBox::ToolResult {
                    request_id: r,
                    output,
                } if r == request_id => Ok(output),
                other => Err(self.unexpected(&format!("tool_result {request_id}"), &other)),
            };
        }
        if tool == ToolName::Shell {
            self.conn.send(&BoxToHost::Progress {
                message: "running a shell command".to_owned(),
            })?;
        }
        Ok(tools::run_local(&self.ws, &invocation, &self.limits))
    }

    fn fresh_id(&mut self) -> RequestId {
        self.last_request += 1;
        RequestId(self.last_request)
    }

    /// Adds to memory; a failure to persist is logged once and the turn goes on.
    fn remember(&mut self, message: ChatMessage) -> Result<(), Stop> {
        match self.memory.push(message) {
            Ok(()) => Ok(()),
            Err(note) => self.conn.log(LogLevel::Error, note),
        }
    }

    /// Reports a frame that does not fit the current state; the caller stops with the result.
    fn unexpected(&mut self, wanted: &str, got: &HostToBox) -> Stop {
        self.refuse(format!("expected {wanted}, got {}", name(got)))
    }

    /// Reports a frame the agent will not act on (`message` says why); the caller stops with
    /// the result.
    fn refuse(&mut self, message: String) -> Stop {
        // The agent exits either way; a broken stdout changes nothing.
        let _ = self.conn.send(&BoxToHost::Error {
            message: message.clone(),
            code: ErrorCode::UnexpectedFrame,
        });
        Stop::Fatal(message)
    }
}

/// A frame's type and, for answers, the request it answers.
fn name(frame: &HostToBox) -> String {
    match frame {
        HostToBox::Init { .. } => "init".to_owned(),
        HostToBox::UserMessage { .. } => "user_message".to_owned(),
        HostToBox::LlmResponse { request_id, .. } => format!("llm_response {request_id}"),
        HostToBox::LlmFailed { request_id, .. } => format!("llm_failed {request_id}"),
        HostToBox::ApprovalResult { request_id, .. } => format!("approval_result {request_id}"),
        HostToBox::ToolResult { request_id, .. } => format!("tool_result {request_id}"),
        HostToBox::RunApproved { request_id, .. } => format!("run_approved {request_id}"),
        HostToBox::Shutdown => "shutdown".to_owned(),
    }
}

/// The result for a call of a tool this agent does not offer.
fn unavailable(tool: ToolName) -> String {
    format!("error: the tool {tool} is not available to this agent")
}

/// Checks a `RunApproved` against the interrupted turn. On success: the remembered call, its
/// typed invocation, and the calls still unanswered after it (in order). On failure: why the
/// frame is refused.
fn check_resumable(
    interrupted: Option<Interrupted>,
    call_id: &ToolCallId,
    operation: &ToolInvocation,
) -> Result<(ToolCall, ToolInvocation, Vec<ToolCall>), String> {
    let Some(Interrupted {
        calls,
        mut unanswered,
    }) = interrupted
    else {
        return Err("no interrupted turn is waiting for a decision".to_owned());
    };
    let Some(at) = unanswered.iter().position(|c| c.id == *call_id) else {
        return Err(if calls.iter().any(|c| c.id == *call_id) {
            "that call already has a result".to_owned()
        } else {
            "the interrupted turn has no such call".to_owned()
        });
    };
    let call = unanswered.remove(at);
    let remembered = ToolInvocation::parse(&call.name, &call.arguments)
        .map_err(|e| format!("the remembered call is not runnable: {e}"))?;
    if !remembered.tool().needs_approval() {
        return Err(format!(
            "the remembered call is {}, which needs no approval",
            remembered.tool()
        ));
    }
    if remembered.canonical_json() != operation.canonical_json() {
        return Err("the operation differs from the remembered call".to_owned());
    }
    Ok((call, remembered, unanswered))
}

#[cfg(test)]
mod tests;
