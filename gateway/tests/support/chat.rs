//! Driving the real `boxedclaw chat` binary from tests.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::{FakeLlm, canary, test_dirs, text, tool};

pub const STEP: Duration = Duration::from_secs(60);

pub struct Chat {
    pub seen: Vec<String>,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Chat {
    pub fn start(llm: &FakeLlm, config: &Path, api_key: &str) -> Self {
        let mut child = Command::new(boxedclaw_binary())
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

    pub async fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Reads stdout lines until one satisfies `pred`.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
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

    pub async fn approval_id(&mut self) -> String {
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

    /// Sends SIGTERM, as a supervisor stopping the service would.
    pub fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// `kill -9`: the gateway dies at once, as in a crash (its sandboxes die with it).
    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Closes stdin, expects exit 0, returns everything the binary wrote to stderr.
    pub async fn finish(mut self) -> (String, String) {
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

pub fn workspace_of(dir: &Path) -> std::path::PathBuf {
    dir.join("workspace").join("terminal+-+local+-")
}

/// The canary scenario: no key in the sandbox, in any frame, log, chat line or host file.
pub async fn canary_key_reaches_no_sandbox_no_frame_and_no_log(extra_toml: &str, agent: &Path) {
    let llm = FakeLlm::start().await;
    let (dir, config) = test_dirs(extra_toml, agent);
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

/// The gateway binary next to the agent binary cargo built.
pub fn boxedclaw_binary() -> std::path::PathBuf {
    super::agent_binary().with_file_name("boxedclaw")
}
