//! Whole conversations against a scripted host: request ids are predictable (1, 2, …), so the
//! host's answers can be written down before the agent runs.

use std::path::Path;

use boxedclaw_protocol::agent::MessageMetadata;
use boxedclaw_protocol::codec;
use boxedclaw_protocol::{AgentId, ToolCallId, UserRef};

use super::*;

fn limits(max_tool_iterations: u32) -> AgentLimits {
    AgentLimits {
        max_tool_iterations,
        shell_timeout_secs: 10,
        tool_output_cap: 64 * 1024,
        max_history_bytes: 1 << 20,
    }
}

fn init(tools: &[ToolName], max_tool_iterations: u32) -> HostToBox {
    HostToBox::Init {
        protocol_version: PROTOCOL_VERSION,
        agent_id: AgentId::new("a1").unwrap(),
        system_prompt: "You are terse.".into(),
        tools: tools.to_vec(),
        limits: limits(max_tool_iterations),
    }
}

fn user(text: &str) -> HostToBox {
    let user = UserRef::new(boxedclaw_protocol::Platform::Terminal, "me").unwrap();
    HostToBox::UserMessage {
        content: text.into(),
        metadata: MessageMetadata { user },
    }
}

fn answer(id: u64, text: &str) -> HostToBox {
    HostToBox::LlmResponse {
        request_id: RequestId(id),
        message: ChatMessage::text(Role::Assistant, text),
    }
}

fn tool_calls(id: u64, calls: &[(&str, &str, &str)]) -> HostToBox {
    let tool_calls = calls
        .iter()
        .map(|(cid, name, args)| ToolCall {
            id: ToolCallId::new(*cid).unwrap(),
            name: (*name).into(),
            arguments: (*args).into(),
        })
        .collect();
    HostToBox::LlmResponse {
        request_id: RequestId(id),
        message: ChatMessage {
            role: Role::Assistant,
            content: None,
            tool_calls,
            tool_call_id: None,
        },
    }
}

fn approval(id: u64, approved: bool, reason: &str) -> HostToBox {
    HostToBox::ApprovalResult {
        request_id: RequestId(id),
        approved,
        reason: reason.into(),
    }
}

/// Runs the agent on `script` and returns why it stopped and every frame it sent.
fn converse(ws: &Path, script: &[HostToBox]) -> (Stop, Vec<BoxToHost>) {
    let input: Vec<u8> = script.iter().flat_map(codec::encode).collect();
    let mut output = Vec::new();
    let env = Env {
        agent_id: Some("a1".into()),
        workspace: ws.to_owned(),
    };
    let stop = run(&input[..], &mut output, &env);
    let frames = output
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| codec::decode::<BoxToHost>(l).unwrap())
        .collect();
    (stop, frames)
}

/// The tool results the agent sent in its LLM request, in order.
fn tool_results(frame: &BoxToHost) -> Vec<String> {
    let BoxToHost::LlmRequest { messages, .. } = frame else {
        panic!("not a request: {frame:?}")
    };
    messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.clone().unwrap_or_default())
        .collect()
}

fn ready(resumed_messages: u64) -> BoxToHost {
    BoxToHost::Ready {
        protocol_version: PROTOCOL_VERSION,
        resumed_messages,
    }
}

fn final_response(text: &str) -> BoxToHost {
    BoxToHost::FinalResponse {
        content: text.into(),
    }
}

#[test]
fn denied_unknown_and_disabled_tools_become_results_for_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, frames) = converse(
        dir.path(),
        &[
            init(&[ToolName::FileRead, ToolName::Shell], 8),
            user("clean up"),
            tool_calls(
                1,
                &[
                    ("c1", "shell", r#"{"command":"rm -rf ~"}"#),
                    ("c2", "file_write", r#"{"path":"x","content":"y"}"#),
                    ("c3", "launch_missiles", "{}"),
                ],
            ),
            approval(2, false, "denied by terminal:me"),
            answer(3, "ok, I won't"),
        ],
    );
    assert_eq!(stop, Stop::Eof);
    assert_eq!(frames.len(), 5, "{frames:#?}");
    assert_eq!(frames[0], ready(0));
    assert!(matches!(
        &frames[2],
        BoxToHost::ApprovalRequest {
            request_id: RequestId(2),
            operation: ToolInvocation::Shell { .. },
            ..
        }
    ));
    let results = tool_results(&frames[3]);
    assert_eq!(results[0], "not run: denied by terminal:me");
    assert!(results[1].starts_with("error: the tool file_write is not available"));
    assert!(results[2].starts_with("error: unknown tool"));
    assert_eq!(frames[4], final_response("ok, I won't"));
    assert!(!dir.path().join("x").exists());
}

#[test]
fn approved_calls_run_locally_or_in_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, frames) = converse(
        dir.path(),
        &[
            init(&[ToolName::Shell, ToolName::HttpFetch], 8),
            user("look"),
            tool_calls(
                1,
                &[
                    ("c1", "shell", r#"{"command":"echo hi"}"#),
                    ("c2", "http_fetch", r#"{"url":"https://example.com/"}"#),
                ],
            ),
            approval(2, true, "approved by terminal:me"),
            approval(3, true, "approved by terminal:me"),
            HostToBox::ToolResult {
                request_id: RequestId(4),
                output: "<html>".into(),
            },
            answer(5, "seen"),
            HostToBox::Shutdown,
        ],
    );
    assert_eq!(stop, Stop::Shutdown);
    assert!(
        matches!(frames[3], BoxToHost::Progress { .. }),
        "{frames:#?}"
    );
    assert!(matches!(
        &frames[5],
        BoxToHost::ToolRequest {
            request_id: RequestId(4),
            operation: ToolInvocation::HttpFetch { .. },
            ..
        }
    ));
    assert_eq!(tool_results(&frames[6]), ["hi\n[exit status: 0]", "<html>"]);
    assert_eq!(frames[7], final_response("seen"));
}

#[test]
fn a_failed_llm_call_ends_the_turn_and_the_next_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, frames) = converse(
        dir.path(),
        &[
            init(&[], 8),
            user("one"),
            HostToBox::LlmFailed {
                request_id: RequestId(1),
                message: "provider down".into(),
            },
            user("two"),
            answer(2, "hello"),
        ],
    );
    assert_eq!(stop, Stop::Eof);
    assert_eq!(
        frames[2],
        BoxToHost::Error {
            message: "provider down".into(),
            code: ErrorCode::LlmFailed
        }
    );
    let BoxToHost::LlmRequest { messages, .. } = &frames[3] else {
        panic!("{frames:#?}")
    };
    assert_eq!(
        messages[..],
        [
            ChatMessage::text(Role::System, "You are terse."),
            ChatMessage::text(Role::User, "one"),
            ChatMessage::text(Role::User, "two"),
        ]
    );
    assert_eq!(frames[4], final_response("hello"));
}

#[test]
fn the_iteration_cap_still_answers_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let list = |id| tool_calls(id, &[(&format!("c{id}"), "file_list", "{}")]);
    let (_, frames) = converse(
        dir.path(),
        &[
            init(&[ToolName::FileList], 2),
            user("loop"),
            list(1),
            list(2),
        ],
    );
    assert_eq!(frames.len(), 4, "{frames:#?}");
    let BoxToHost::FinalResponse { content } = &frames[3] else {
        panic!("{frames:#?}")
    };
    assert!(content.contains("stopped after 2 tool iterations"));
}

#[test]
fn unexpected_frames_stop_the_agent_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (script, tail) in [
        (vec![user("hi"), answer(7, "wrong id")], "llm_response 7"),
        (vec![user("hi"), user("again")], "user_message"),
        (vec![answer(1, "no turn")], "llm_response 1"),
        (vec![init(&[], 1)], "init"),
        (
            vec![
                user("hi"),
                tool_calls(1, &[("c1", "shell", r#"{"command":"ls"}"#)]),
                approval(3, true, "x"),
            ],
            "approval_result 3",
        ),
    ] {
        let mut full = vec![init(&[ToolName::Shell], 4)];
        full.extend(script);
        let (stop, frames) = converse(dir.path(), &full);
        let Stop::Fatal(why) = stop else {
            panic!("{stop:?}")
        };
        assert!(why.ends_with(tail), "{why}");
        let Some(BoxToHost::Error { code, .. }) = frames.last() else {
            panic!("{frames:#?}")
        };
        assert_eq!(*code, ErrorCode::UnexpectedFrame);
    }
}

#[test]
fn handshake_failures_stop_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, frames) = converse(dir.path(), &[user("hi")]);
    assert!(matches!(stop, Stop::Fatal(_)) && frames.is_empty());
    let mut other = init(&[], 1);
    if let HostToBox::Init { agent_id, .. } = &mut other {
        *agent_id = AgentId::new("someone-else").unwrap();
    }
    let (stop, frames) = converse(dir.path(), &[other]);
    assert!(matches!(stop, Stop::Fatal(_)) && frames.is_empty());
}

#[test]
fn a_user_message_closes_a_turn_interrupted_before_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, _) = converse(
        dir.path(),
        &[
            init(&[ToolName::Shell], 4),
            user("run it"),
            tool_calls(1, &[("c1", "shell", r#"{"command":"ls"}"#)]),
            HostToBox::Shutdown,
        ],
    );
    assert_eq!(stop, Stop::Shutdown);
    let (_, frames) = converse(
        dir.path(),
        &[
            init(&[ToolName::Shell], 4),
            user("well?"),
            answer(1, "sorry"),
        ],
    );
    assert_eq!(frames[0], ready(2));
    assert_eq!(tool_results(&frames[1]), [INTERRUPTED]);
    assert_eq!(frames[2], final_response("sorry"));
    // The closing results were persisted: a third process finds a well-formed history.
    let (_, frames) = converse(
        dir.path(),
        &[init(&[ToolName::Shell], 4), user("and?"), answer(1, "ok")],
    );
    assert_eq!(frames[0], ready(5));
    assert_eq!(tool_results(&frames[1]), [INTERRUPTED]);
}

const MARK: &str = r#"{"command":"echo resumed >> marker.txt"}"#;
const MARK_AGAIN: &str = r#"{"command":"echo again >> marker.txt"}"#;

fn shell(command: &str) -> ToolInvocation {
    ToolInvocation::Shell {
        command: command.into(),
    }
}

fn run_approved(call_id: &str, operation: ToolInvocation) -> HostToBox {
    HostToBox::RunApproved {
        request_id: RequestId(900),
        call_id: ToolCallId::new(call_id).unwrap(),
        operation,
    }
}

/// A first process that gets `calls` from the model and is stopped while it waits for the
/// first approval (the gateway died).
fn interrupt(ws: &Path, calls: &[(&str, &str, &str)]) {
    let (stop, frames) = converse(
        ws,
        &[
            init(&ToolName::ALL, 4),
            user("go"),
            tool_calls(1, calls),
            HostToBox::Shutdown,
        ],
    );
    assert_eq!(stop, Stop::Shutdown);
    assert!(
        matches!(frames.last(), Some(BoxToHost::ApprovalRequest { .. })),
        "{frames:#?}"
    );
}

fn marker(ws: &Path) -> Option<String> {
    std::fs::read_to_string(ws.join("marker.txt")).ok()
}

#[test]
fn run_approved_resumes_the_interrupted_turn() {
    let dir = tempfile::tempdir().unwrap();
    interrupt(
        dir.path(),
        &[
            ("c1", "file_write", r#"{"path":"a.txt","content":"x"}"#),
            ("c2", "shell", MARK),
            ("c3", "shell", MARK_AGAIN),
        ],
    );
    assert_eq!(marker(dir.path()), None);
    let (stop, frames) = converse(
        dir.path(),
        &[
            init(&ToolName::ALL, 4),
            // Whitespace aside, the same operation as remembered.
            run_approved("c2", shell("echo resumed >> marker.txt")),
            approval(1, true, "approved by terminal:me"),
            answer(2, "both done"),
            HostToBox::Shutdown,
        ],
    );
    assert_eq!(stop, Stop::Shutdown, "{frames:#?}");
    assert_eq!(frames[0], ready(3));
    assert!(
        matches!(frames[1], BoxToHost::Progress { .. }),
        "{frames:#?}"
    );
    // The remaining sensitive call asks for approval like in any turn.
    assert_eq!(
        frames[2],
        BoxToHost::ApprovalRequest {
            request_id: RequestId(1),
            call_id: ToolCallId::new("c3").unwrap(),
            operation: shell("echo again >> marker.txt"),
            reason: APPROVAL_REASON.into(),
        }
    );
    assert!(matches!(frames[3], BoxToHost::Progress { .. }));
    assert_eq!(
        tool_results(&frames[4]),
        [
            "wrote 1 bytes to a.txt",
            "[exit status: 0]",
            "[exit status: 0]"
        ]
    );
    assert_eq!(frames[5], final_response("both done"));
    assert_eq!(frames.len(), 6);
    assert_eq!(marker(dir.path()).as_deref(), Some("resumed\nagain\n"));
}

#[test]
fn a_resumed_turn_keeps_its_iteration_count_and_gateway_tools_go_through_the_host() {
    let dir = tempfile::tempdir().unwrap();
    interrupt(
        dir.path(),
        &[("c1", "http_fetch", r#"{"url":"https://example.com/"}"#)],
    );
    let fetch = ToolInvocation::HttpFetch {
        url: "https://example.com/".into(),
    };
    let (stop, frames) = converse(
        dir.path(),
        &[
            // The interrupted turn already used its only round.
            init(&ToolName::ALL, 1),
            run_approved("c1", fetch.clone()),
            HostToBox::ToolResult {
                request_id: RequestId(1),
                output: "<html>".into(),
            },
        ],
    );
    assert_eq!(stop, Stop::Eof);
    assert_eq!(
        frames[1],
        BoxToHost::ToolRequest {
            request_id: RequestId(1),
            call_id: ToolCallId::new("c1").unwrap(),
            operation: fetch,
        }
    );
    let BoxToHost::FinalResponse { content } = &frames[2] else {
        panic!("{frames:#?}")
    };
    assert!(content.contains("stopped after 1 tool iterations"));
    assert_eq!(frames.len(), 3);
}

#[test]
fn run_approved_runs_nothing_but_the_remembered_call() {
    let calls: &[(&str, &str, &str)] = &[
        ("c1", "file_write", r#"{"path":"a.txt","content":"x"}"#),
        ("c2", "shell", MARK),
        ("c3", "file_write", r#"{"path":"b.txt","content":"y"}"#),
    ];
    for (interrupted, frame, why) in [
        (
            true,
            run_approved("c2", shell("echo pwned >> marker.txt")),
            "the operation differs from the remembered call",
        ),
        (
            true,
            run_approved("c1", shell("echo resumed >> marker.txt")),
            "that call already has a result",
        ),
        (
            true,
            run_approved("c9", shell("echo resumed >> marker.txt")),
            "the interrupted turn has no such call",
        ),
        (
            true,
            run_approved(
                "c3",
                ToolInvocation::FileWrite {
                    path: "b.txt".into(),
                    content: "y".into(),
                },
            ),
            "the remembered call is file_write, which needs no approval",
        ),
        (
            false,
            run_approved("c2", shell("echo resumed >> marker.txt")),
            "no interrupted turn is waiting for a decision",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        if interrupted {
            interrupt(dir.path(), calls);
        }
        let (stop, frames) = converse(dir.path(), &[init(&ToolName::ALL, 4), frame]);
        let Stop::Fatal(message) = stop else {
            panic!("{stop:?}")
        };
        assert!(message.ends_with(why), "{message}");
        assert_eq!(
            frames[1..],
            [BoxToHost::Error {
                message,
                code: ErrorCode::UnexpectedFrame
            }]
        );
        assert_eq!(marker(dir.path()), None);
        assert!(!dir.path().join("b.txt").exists());
    }
}

#[test]
fn a_finished_turn_cannot_be_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, _) = converse(
        dir.path(),
        &[
            init(&ToolName::ALL, 4),
            user("go"),
            tool_calls(1, &[("c1", "shell", MARK)]),
            approval(2, false, "denied by terminal:me"),
            answer(3, "fine"),
        ],
    );
    assert_eq!(stop, Stop::Eof);
    let (stop, frames) = converse(
        dir.path(),
        &[
            init(&ToolName::ALL, 4),
            run_approved("c1", shell("echo resumed >> marker.txt")),
        ],
    );
    assert!(matches!(stop, Stop::Fatal(_)), "{stop:?}");
    assert!(matches!(
        frames.last(),
        Some(BoxToHost::Error {
            code: ErrorCode::UnexpectedFrame,
            ..
        })
    ));
    assert_eq!(marker(dir.path()), None);
}

#[test]
fn shutdown_stops_an_agent_with_an_interrupted_turn() {
    let dir = tempfile::tempdir().unwrap();
    interrupt(dir.path(), &[("c1", "shell", MARK)]);
    let (stop, frames) = converse(dir.path(), &[init(&ToolName::ALL, 4), HostToBox::Shutdown]);
    assert_eq!(stop, Stop::Shutdown);
    assert_eq!(frames, [ready(2)]);
    assert_eq!(marker(dir.path()), None);
}
