//! The built `boxedclaw-agent` binary, driven over its real stdin/stdout like the gateway does.

// The helpers below are test code outside `#[test]` functions; failing loudly is their job.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use boxedclaw_protocol::agent::{AgentLimits, ErrorCode, MessageMetadata};
use boxedclaw_protocol::chat::{ChatMessage, Role, ToolCall};
use boxedclaw_protocol::codec;
use boxedclaw_protocol::tools::{ToolInvocation, ToolName};
use boxedclaw_protocol::{
    AgentId, BoxToHost, HostToBox, PROTOCOL_VERSION, Platform, RequestId, ToolCallId, UserRef,
};

const WAIT: Duration = Duration::from_secs(20);

/// A running agent: frames in through stdin, frames out through a reader thread (so a hung
/// agent fails the test instead of hanging it).
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<String>,
}

impl Agent {
    fn start(workspace: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_boxedclaw-agent"))
            .env_clear()
            .env("BOXEDCLAW_AGENT_ID", "agent-1")
            .env("BOXEDCLAW_WORKSPACE", workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            frames,
        }
    }

    fn send(&mut self, frame: &HostToBox) {
        self.send_raw(&codec::encode(frame));
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&mut self) -> BoxToHost {
        let line = self
            .frames
            .recv_timeout(WAIT)
            .expect("the agent sent no frame in time");
        codec::decode(line.as_bytes()).unwrap_or_else(|e| panic!("not a frame ({e}): {line}"))
    }

    /// Kills the agent the way a dying gateway leaves it: the process killed, stdin gone.
    fn kill(mut self) {
        let _ = self.child.kill();
        drop(self.stdin.take());
        let _ = self.child.wait();
    }

    /// Closes stdin and returns the exit status and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        assert!(self.frames.try_recv().is_err(), "no frame after the end");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn init() -> HostToBox {
    HostToBox::Init {
        protocol_version: PROTOCOL_VERSION,
        agent_id: AgentId::new("agent-1").unwrap(),
        system_prompt: "You help with files.".into(),
        tools: ToolName::ALL.to_vec(),
        limits: AgentLimits {
            max_tool_iterations: 4,
            shell_timeout_secs: 5,
            tool_output_cap: 16 * 1024,
            max_history_bytes: 256 * 1024,
        },
    }
}

fn user(text: &str) -> HostToBox {
    let user = UserRef::new(Platform::Terminal, "alice").unwrap();
    HostToBox::UserMessage {
        content: text.into(),
        metadata: MessageMetadata { user },
    }
}

fn expect_request(frame: BoxToHost) -> (RequestId, Vec<ChatMessage>) {
    match frame {
        BoxToHost::LlmRequest {
            request_id,
            messages,
            tools,
        } => {
            assert_eq!(tools, ToolName::ALL);
            (request_id, messages)
        }
        other => panic!("expected an LLM request, got {other:?}"),
    }
}

#[test]
fn a_turn_with_a_file_write_then_a_resumed_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path());
    agent.send(&init());
    assert_eq!(
        agent.recv(),
        BoxToHost::Ready {
            protocol_version: PROTOCOL_VERSION,
            resumed_messages: 0
        }
    );

    agent.send(&user("save a note"));
    let (first, messages) = expect_request(agent.recv());
    assert_eq!(
        messages[0],
        ChatMessage::text(Role::System, "You help with files.")
    );
    assert_eq!(messages[1], ChatMessage::text(Role::User, "save a note"));
    let call = ToolCall {
        id: ToolCallId::new("call-1").unwrap(),
        name: "file_write".into(),
        arguments: r#"{"path":"notes/today.md","content":"remember the milk"}"#.into(),
    };
    agent.send(&HostToBox::LlmResponse {
        request_id: first,
        message: ChatMessage {
            role: Role::Assistant,
            content: None,
            tool_calls: vec![call.clone()],
            tool_call_id: None,
        },
    });

    let (second, messages) = expect_request(agent.recv());
    assert!(second.0 > first.0, "request ids grow");
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[2].tool_calls, [call]);
    assert_eq!(
        messages[3],
        ChatMessage::tool_result(
            ToolCallId::new("call-1").unwrap(),
            "wrote 17 bytes to notes/today.md"
        )
    );
    agent.send(&HostToBox::LlmResponse {
        request_id: second,
        message: ChatMessage::text(Role::Assistant, "Saved."),
    });
    assert_eq!(
        agent.recv(),
        BoxToHost::FinalResponse {
            content: "Saved.".into()
        }
    );
    agent.send(&HostToBox::Shutdown);
    let (status, stderr) = agent.finish();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes/today.md")).unwrap(),
        "remember the milk"
    );

    // A new process on the same workspace picks the conversation up.
    let mut agent = Agent::start(dir.path());
    agent.send(&init());
    assert_eq!(
        agent.recv(),
        BoxToHost::Ready {
            protocol_version: PROTOCOL_VERSION,
            resumed_messages: 4
        }
    );
    agent.send(&user("what did you save?"));
    let (_, messages) = expect_request(agent.recv());
    assert_eq!(messages.len(), 6);
    assert_eq!(messages[4], ChatMessage::text(Role::Assistant, "Saved."));
    let (status, stderr) = agent.finish();
    assert!(
        status.success(),
        "end of stdin is a clean stop: {status:?}: {stderr}"
    );
}

#[test]
fn garbage_on_stdin_is_a_clean_failure() {
    for garbage in [
        &b"this is not json\n"[..],
        b"{\"type\":\"init\"}\n",
        b"\xff\xfe\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = Agent::start(dir.path());
        agent.send_raw(garbage);
        let (status, stderr) = agent.finish();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("boxedclaw-agent: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // After the handshake too.
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path());
    agent.send(&init());
    assert!(matches!(agent.recv(), BoxToHost::Ready { .. }));
    agent.send_raw(b"{\"type\":\"user_message\",\"content\":1}\n");
    let (status, stderr) = agent.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The sensitive call of [`interrupted_workspace`].
const MARK_COMMAND: &str = "echo resumed > marker.txt";

fn marker_call() -> ToolCall {
    ToolCall {
        id: ToolCallId::new("call-shell").unwrap(),
        name: "shell".into(),
        arguments: format!(r#"{{"command":"{MARK_COMMAND}"}}"#),
    }
}

fn write_call() -> ToolCall {
    ToolCall {
        id: ToolCallId::new("call-write").unwrap(),
        name: "file_write".into(),
        arguments: r#"{"path":"note.txt","content":"hello"}"#.into(),
    }
}

fn run_approved(call_id: &str, operation: ToolInvocation) -> HostToBox {
    HostToBox::RunApproved {
        request_id: RequestId(1000),
        call_id: ToolCallId::new(call_id).unwrap(),
        operation,
    }
}

fn marker_operation() -> ToolInvocation {
    ToolInvocation::Shell {
        command: MARK_COMMAND.into(),
    }
}

/// A workspace whose agent was killed (with the gateway) while a human had not yet decided on
/// the shell call of a two-call response; the `file_write` before it had run.
fn interrupted_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path());
    agent.send(&init());
    assert!(matches!(agent.recv(), BoxToHost::Ready { .. }));
    agent.send(&user("write a note, then mark it"));
    let (request_id, _) = expect_request(agent.recv());
    agent.send(&HostToBox::LlmResponse {
        request_id,
        message: ChatMessage {
            role: Role::Assistant,
            content: None,
            tool_calls: vec![write_call(), marker_call()],
            tool_call_id: None,
        },
    });
    match agent.recv() {
        BoxToHost::ApprovalRequest {
            call_id, operation, ..
        } => {
            assert_eq!(call_id, marker_call().id);
            assert_eq!(operation, marker_operation());
        }
        other => panic!("expected an approval request, got {other:?}"),
    }
    agent.kill();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("note.txt")).unwrap(),
        "hello"
    );
    assert!(!dir.path().join("marker.txt").exists());
    dir
}

/// Starts an agent on `workspace` and checks it resumed memory.
fn restart(workspace: &Path) -> Agent {
    let mut agent = Agent::start(workspace);
    agent.send(&init());
    match agent.recv() {
        BoxToHost::Ready {
            protocol_version,
            resumed_messages,
        } => {
            assert_eq!(protocol_version, PROTOCOL_VERSION);
            assert!(resumed_messages > 0);
        }
        other => panic!("expected ready, got {other:?}"),
    }
    agent
}

/// The contents of the tool results for `id` in `messages`.
fn results_for(messages: &[ChatMessage], id: &ToolCallId) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.role == Role::Tool && m.tool_call_id.as_ref() == Some(id))
        .map(|m| m.content.clone().unwrap_or_default())
        .collect()
}

#[test]
fn an_approval_decided_after_a_restart_resumes_the_turn() {
    let dir = interrupted_workspace();
    let mut agent = restart(dir.path());
    agent.send(&run_approved("call-shell", marker_operation()));
    assert!(matches!(agent.recv(), BoxToHost::Progress { .. }));
    let (request_id, messages) = expect_request(agent.recv());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("marker.txt")).unwrap(),
        "resumed\n"
    );
    assert_eq!(
        results_for(&messages, &write_call().id),
        ["wrote 5 bytes to note.txt"]
    );
    assert_eq!(
        results_for(&messages, &marker_call().id),
        ["[exit status: 0]"]
    );
    // The history is well formed: the response, then exactly its two results.
    let at = messages
        .iter()
        .position(|m| m.tool_calls == [write_call(), marker_call()])
        .unwrap();
    assert_eq!(messages.len(), at + 3);
    agent.send(&HostToBox::LlmResponse {
        request_id,
        message: ChatMessage::text(Role::Assistant, "Noted and marked."),
    });
    assert_eq!(
        agent.recv(),
        BoxToHost::FinalResponse {
            content: "Noted and marked.".into()
        }
    );
    agent.send(&HostToBox::Shutdown);
    let (status, stderr) = agent.finish();
    assert!(status.success(), "{status:?}: {stderr}");
}

#[test]
fn run_approved_for_anything_but_the_pending_call_is_refused() {
    let write = ToolInvocation::FileWrite {
        path: "note.txt".into(),
        content: "hello".into(),
    };
    let other_command = ToolInvocation::Shell {
        command: "echo resumed > marker.txt; echo pwned".into(),
    };
    for (frame, why) in [
        (
            run_approved("call-shell", other_command),
            "the operation differs from the remembered call",
        ),
        (
            run_approved("call-write", write),
            "that call already has a result",
        ),
    ] {
        let dir = interrupted_workspace();
        let mut agent = restart(dir.path());
        agent.send(&frame);
        match agent.recv() {
            BoxToHost::Error { message, code } => {
                assert_eq!(code, ErrorCode::UnexpectedFrame);
                assert!(message.ends_with(why), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let (status, stderr) = agent.finish();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(!dir.path().join("marker.txt").exists());

        // The refusal changed nothing: the real approval still resumes the turn.
        let mut agent = restart(dir.path());
        agent.send(&run_approved("call-shell", marker_operation()));
        assert!(matches!(agent.recv(), BoxToHost::Progress { .. }));
        let (_, messages) = expect_request(agent.recv());
        assert_eq!(results_for(&messages, &marker_call().id).len(), 1);
        assert!(dir.path().join("marker.txt").exists());
        let (status, stderr) = agent.finish();
        assert!(status.success(), "{status:?}: {stderr}");
    }
}

#[test]
fn a_new_message_after_a_restart_closes_the_undecided_call() {
    let dir = interrupted_workspace();
    let mut agent = restart(dir.path());
    agent.send(&user("never mind"));
    let (request_id, messages) = expect_request(agent.recv());
    assert_eq!(
        results_for(&messages, &marker_call().id),
        ["not run: the turn was interrupted before a decision"]
    );
    assert_eq!(
        results_for(&messages, &write_call().id),
        ["wrote 5 bytes to note.txt"]
    );
    assert_eq!(
        messages.last(),
        Some(&ChatMessage::text(Role::User, "never mind"))
    );
    agent.send(&HostToBox::LlmResponse {
        request_id,
        message: ChatMessage::text(Role::Assistant, "OK."),
    });
    assert_eq!(
        agent.recv(),
        BoxToHost::FinalResponse {
            content: "OK.".into()
        }
    );
    let (status, stderr) = agent.finish();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!dir.path().join("marker.txt").exists());

    // The call is closed for good: approving it now is refused.
    let mut agent = restart(dir.path());
    agent.send(&run_approved("call-shell", marker_operation()));
    assert!(matches!(
        agent.recv(),
        BoxToHost::Error {
            code: ErrorCode::UnexpectedFrame,
            ..
        }
    ));
    let (status, _) = agent.finish();
    assert_eq!(status.code(), Some(1));
    assert!(!dir.path().join("marker.txt").exists());
}
