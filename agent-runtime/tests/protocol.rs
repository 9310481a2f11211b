//! The built `boxedclaw-agent` binary, driven over its real stdin/stdout like the gateway does.

// The helpers below are test code outside `#[test]` functions; failing loudly is their job.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use boxedclaw_protocol::agent::{AgentLimits, MessageMetadata};
use boxedclaw_protocol::chat::{ChatMessage, Role, ToolCall};
use boxedclaw_protocol::codec;
use boxedclaw_protocol::tools::ToolName;
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
