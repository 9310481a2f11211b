//! The agent's life: the `Init`/`Ready` handshake, then turns until the host stops it.
//!
//! Every wait accepts exactly one frame: the answer to the request just sent. Anything else
//! means host and box disagree about the state of the conversation, which nothing here can
//! repair, so the agent reports `UnexpectedFrame` and exits (the host restarts it, and memory
//! carries the conversation over).

use std::convert::Infallible;
use std::io::{Read, Write};

use boxedclaw_protocol::agent::{AgentLimits, ErrorCode, LogLevel};
use boxedclaw_protocol::chat::{ChatMessage, Role, ToolCall};
use boxedclaw_protocol::codec::MAX_FRAME_LEN;
use boxedclaw_protocol::tools::{ToolInvocation, ToolName};
use boxedclaw_protocol::{BoxToHost, HostToBox, PROTOCOL_VERSION, RequestId};

use crate::Env;
use crate::history;
use crate::memory::Memory;
use crate::tools::{self, Workspace};
use crate::wire::{Conn, Stop};

/// Room left in an `LlmRequest` frame for everything but the messages.
const FRAME_MARGIN: usize = 64 * 1024;

/// Shown to the human deciding on an approval.
const APPROVAL_REASON: &str = "the model asked to run this";

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
    /// Idle: each `UserMessage` is one turn.
    fn serve(&mut self) -> Result<Infallible, Stop> {
        loop {
            match self.conn.recv()? {
                HostToBox::UserMessage {
                    content,
                    metadata: _,
                } => self.turn(content)?,
                other => return Err(self.unexpected("user_message", &other)),
            }
        }
    }

    /// One turn: LLM round trips and tool calls until the model answers without tools.
    fn turn(&mut self, content: String) -> Result<(), Stop> {
        self.remember(ChatMessage::text(Role::User, content))?;
        // A request over the frame limit would be refused by the host whatever the budget says.
        let budget = usize::try_from(self.limits.max_history_bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_FRAME_LEN - FRAME_MARGIN);
        for _ in 0..self.limits.max_tool_iterations {
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
            return Ok(format!(
                "error: the tool {tool} is not available to this agent"
            ));
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
        let message = format!("expected {wanted}, got {}", name(got));
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
        HostToBox::Shutdown => "shutdown".to_owned(),
    }
}

#[cfg(test)]
mod tests;
