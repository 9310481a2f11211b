//! End to end through the real `boxedclaw chat` binary: real namespace sandbox, real agent,
//! fake OpenAI-compatible LLM on 127.0.0.1:0.
// Test code: panicking on failure is the point, and helper tasks outlive no test.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use support::chat::{self as chat, Chat, workspace_of};

use std::process::Stdio;

use serde_json::json;
use support::{FakeLlm, agent_binary, test_dirs, text, tool};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn approved_shell_runs_inside_the_sandbox_and_the_reply_reaches_the_user() {
    let llm = FakeLlm::start().await;
    let (dir, config) = test_dirs("", &agent_binary());
    let host_only = dir.path().join("data");
    llm.script(
        "please run the checks",
        vec![
            tool(
                "file_write",
                json!({"path": "notes/hello.txt", "content": "written by the agent"}),
            ),
            tool(
                "shell",
                json!({"command": format!(
            "echo \"pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\"; cat notes/hello.txt; echo; \
             test -e /root && echo root-visible || echo root-invisible; \
             test -e {} && echo host-visible || echo host-invisible; echo uid=$(id -u); \
             (ping -c1 -W1 1.1.1.1 >/dev/null 2>&1 || echo network-unreachable)",
            host_only.display())}),
            ),
            text("done: {last_tool_result}"),
        ],
    );
    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("please run the checks").await;
    let id = chat.approval_id().await;
    assert!(
        chat.seen.last().unwrap().contains("shell: echo"),
        "the exact command is shown"
    );
    chat.say(&format!("/approve {id}")).await;
    chat.expect("resolution", |l| {
        l.contains(&format!("[approval {id}] approved by terminal:local"))
    })
    .await;
    let reply = chat.expect("final reply", |l| l.starts_with("done:")).await;
    let (all, _) = chat.finish().await;

    let host_pid1 = std::fs::read("/proc/1/cmdline").unwrap();
    let host_pid1 = String::from_utf8_lossy(&host_pid1).replace('\0', " ");
    let result = llm.tool_results("please run the checks").join("\n");
    assert!(result.contains("pid1="), "{result}");
    assert!(
        !result.contains(&format!("pid1={}", host_pid1.trim())),
        "PID 1 is the host's init: {result}"
    );
    assert!(result.contains("written by the agent"), "{result}");
    assert!(
        result.contains("root-invisible") && result.contains("host-invisible"),
        "{result}"
    );
    assert!(result.contains("uid=1000"), "{result}");
    assert!(
        result.contains("[exit status: 0]") || result.contains("exit"),
        "{result}"
    );
    assert!(
        reply.contains("pid1="),
        "the user saw the result: {reply}\n{all}"
    );
    // The file tool wrote into this conversation's workspace on the host.
    let written =
        std::fs::read_to_string(workspace_of(dir.path()).join("notes/hello.txt")).unwrap();
    assert_eq!(written, "written by the agent");
    // The gateway, not the agent, sent the key.
    let auth = llm
        .requests()
        .iter()
        .filter_map(|r| r.authorization.clone())
        .collect::<Vec<_>>();
    assert!(
        !auth.is_empty()
            && auth
                .iter()
                .all(|a| a == "Bearer sk-test-key-0123456789abcdef")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_shell_does_not_run() {
    let llm = FakeLlm::start().await;
    let (dir, config) = test_dirs("", &agent_binary());
    llm.script(
        "make a marker",
        vec![
            tool("shell", json!({"command": "touch /workspace/ran-marker"})),
            text("after: {last_tool_result}"),
        ],
    );
    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("make a marker").await;
    let id = chat.approval_id().await;
    chat.say(&format!("/deny {id}")).await;
    chat.expect("resolution", |l| {
        l.contains(&format!("[approval {id}] denied by terminal:local"))
    })
    .await;
    let reply = chat
        .expect("final reply", |l| l.starts_with("after:"))
        .await;
    chat.finish().await;
    assert!(
        reply.contains("not run") && reply.contains("denied"),
        "{reply}"
    );
    assert!(
        !workspace_of(dir.path()).join("ran-marker").exists(),
        "denied command ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_approval_runs_nothing_even_when_approved_late() {
    let llm = FakeLlm::start().await;
    let (dir, config) = test_dirs("[approvals]\ntimeout_secs = 1\n", &agent_binary());
    llm.script(
        "make a marker",
        vec![
            tool("shell", json!({"command": "touch /workspace/ran-marker"})),
            text("after: {last_tool_result}"),
        ],
    );
    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("make a marker").await;
    let id = chat.approval_id().await;
    chat.expect("expiry", |l| {
        l.contains(&format!("[approval {id}] expired"))
    })
    .await;
    let reply = chat
        .expect("final reply", |l| l.starts_with("after:"))
        .await;
    assert!(reply.contains("expired"), "{reply}");
    chat.say(&format!("/approve {id}")).await;
    chat.expect("late click refused", |l| l.contains("is not pending here"))
        .await;
    chat.finish().await;
    assert!(
        !workspace_of(dir.path()).join("ran-marker").exists(),
        "expired command ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_llm_configured_exits_at_once_with_one_line() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_boxedclaw"))
        .arg("chat")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(empty.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_key_reaches_no_sandbox_no_frame_and_no_log() {
    chat::canary_key_reaches_no_sandbox_no_frame_and_no_log("", &agent_binary()).await;
}

/// `auto` says at start which backend it picked and why; an explicit `boxlite` on a host
/// without hardware virtualization refuses to start with the doctor's reason.
#[tokio::test(flavor = "multi_thread")]
async fn sandbox_choice_is_explained_and_boxlite_refused_without_virtualization() {
    let llm = FakeLlm::start().await;
    let hw = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .split_whitespace()
        .any(|w| w == "vmx" || w == "svm");
    let run = |sandbox: &'static str| {
        let (dir, config) = test_dirs(&format!("sandbox = \"{sandbox}\""), &agent_binary());
        let out = Command::new(env!("CARGO_BIN_EXE_boxedclaw"))
            .args(["--config", &config.to_string_lossy(), "chat"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("OPENAI_BASE_URL", llm.base_url())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output();
        async move {
            let out = out.await.unwrap();
            drop(dir);
            (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (status, stderr) = run("auto").await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("sandbox backend chosen"), "{stderr}");
    if !hw {
        assert!(stderr.contains("sandbox=namespace"), "{stderr}");
        assert!(stderr.contains("no hardware virtualization"), "{stderr}");
        let (status, stderr) = run("boxlite").await;
        assert!(!status.success());
        assert!(stderr.contains("needs hardware virtualization"), "{stderr}");
        assert!(stderr.contains("vmx/svm"), "the doctor's reason: {stderr}");
    }
}

const RUN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `boxedclaw run` with no chat platform configured: the first line on stdout is the web
/// console's address (the one actually bound), which serves the chat page; SIGTERM ends it
/// cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn run_prints_the_console_address_it_serves() {
    use tokio::io::AsyncBufReadExt;

    let llm = FakeLlm::start().await;
    let (dir, config) = test_dirs("http_addr = \"127.0.0.1:0\"", &agent_binary());
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_boxedclaw"))
        .args(["--config", &config.to_string_lossy(), "run"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("OPENAI_BASE_URL", llm.base_url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(gateway.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(RUN_WAIT, stdout.next_line())
        .await
        .expect("an address within the wait")
        .unwrap()
        .expect("a line on stdout");
    let url = first
        .strip_prefix("BoxedClaw console: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("not the console line: {first:?}"));
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.starts_with("http://127.0.0.1:0/"),
        "{first}"
    );
    let page = reqwest::get(url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<!doctype html>"));

    let pid = rustix::process::Pid::from_raw(gateway.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(RUN_WAIT, gateway.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    drop(dir);
}
