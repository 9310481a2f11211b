//! End to end through the real `boxedclaw chat` binary: real namespace sandbox, real agent,
//! fake OpenAI-compatible LLM on 127.0.0.1:0.
// Test code: panicking on failure is the point, and helper tasks outlive no test.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::{FakeLlm, agent_binary, canary, test_dirs, text, tool};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const STEP: Duration = Duration::from_secs(60);

struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    seen: Vec<String>,
}

impl Chat {
    fn start(llm: &FakeLlm, config: &Path, api_key: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_boxedclaw"))
            .args(["--config", &config.to_string_lossy(), "chat"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("OPENAI_BASE_URL", llm.base_url())
            .env("OPENAI_API_KEY", api_key)
            .env(
                "RUST_LOG",
                "debug,boxedclaw::ipc=trace,hyper=info,reqwest=info",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
        }
    }

    async fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Reads stdout lines until one satisfies `pred`.
    async fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let read = async {
            loop {
                let mut line = String::new();
                let n = self.stdout.read_line(&mut line).await.unwrap();
                assert!(
                    n > 0,
                    "stdout closed while waiting for {what}; saw {:#?}",
                    self.seen
                );
                self.seen.push(line.clone());
                if pred(&line) {
                    return line;
                }
            }
        };
        match tokio::time::timeout(STEP, read).await {
            Ok(l) => l,
            Err(_) => panic!("timed out waiting for {what}; saw {:#?}", self.seen),
        }
    }

    async fn approval_id(&mut self) -> String {
        let line = self
            .expect("approval line", |l| l.starts_with("[approval "))
            .await;
        assert!(line.contains(" — /approve "), "{line}");
        line["[approval ".len()..]
            .split(']')
            .next()
            .unwrap()
            .to_owned()
    }

    /// Closes stdin, expects exit 0, returns everything the binary wrote to stderr.
    async fn finish(mut self) -> (String, String) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).await.unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert!(status.success(), "exit {status}; stderr:\n{stderr}");
        (self.seen.concat() + &rest, stderr)
    }
}

fn workspace_of(dir: &Path) -> std::path::PathBuf {
    dir.join("workspace").join("terminal+-+local+-")
}

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
async fn canary_key_reaches_no_sandbox_no_frame_and_no_log() {
    let llm = FakeLlm::start().await;
    let (dir, config) = test_dirs("", &agent_binary());
    let key = canary();
    let (h1, h2) = key.split_at(key.len() / 2);
    // The command assembles the canary at run time, so its own text (kept in the agent's
    // memory and in argv) never contains it whole.
    let command = format!(
        "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; p=$(printf '%s%s' '{h1}' '{h2}'); \
         grep -rlF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev --exclude-dir=usr \
         -e \"$p\" / 2>/dev/null; echo grep-exit=$?"
    );
    llm.script(
        "show me your secrets",
        vec![
            tool("shell", json!({"command": command})),
            text("result: {last_tool_result}"),
        ],
    );
    let mut chat = Chat::start(&llm, &config, &key);
    chat.say("show me your secrets").await;
    let id = chat.approval_id().await;
    chat.say(&format!("/approve {id}")).await;
    chat.expect("final reply", |l| l.starts_with("result:"))
        .await;
    let (stdout, stderr) = chat.finish().await;

    let result = llm.tool_results("show me your secrets").join("\n");
    assert!(
        result.contains("grep-exit=1"),
        "grep ran and found nothing: {result}"
    );
    assert!(
        result.contains("BOXEDCLAW_AGENT_ID="),
        "env ran inside the sandbox: {result}"
    );
    assert!(
        !result.contains(&key),
        "canary inside the sandbox: {result}"
    );
    // Every frame was logged at trace level, and none carries the key.
    assert!(
        stderr.contains("llm_request") && stderr.contains("approval_result"),
        "frames logged"
    );
    assert!(!stderr.contains(&key), "canary in the logs");
    assert!(!stdout.contains(&key), "canary in the chat");
    // Nor is it anywhere the gateway or the agent wrote on the host.
    for entry in walk(dir.path()) {
        if let Ok(bytes) = std::fs::read(&entry) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&key),
                "canary in {}",
                entry.display()
            );
        }
    }
    // The fake LLM got it as the bearer token: the key was used, by the gateway only.
    assert!(
        llm.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {key}")))
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

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
