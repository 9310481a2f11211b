//! Starting and stopping one conversation's agent: sandbox, handshake, crash budget.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use boxedclaw_protocol::agent::{BoxToHost, HostToBox, PROTOCOL_VERSION};
use boxedclaw_protocol::codec::LineSplitter;
use boxedclaw_protocol::ids::{AgentId, ConversationKey};
use boxedclaw_protocol::tools::ToolName;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::metrics::RunningSandbox;
use crate::sandbox::SandboxSpec;
use crate::sandbox::link::AgentLink;
use crate::sandbox::live::{LiveEntry, LiveSandbox};
use crate::services::Services;

/// Crashes tolerated within [`CRASH_WINDOW`] before restarts are refused for a while.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(600);
/// Lines of sandbox stderr logged per agent; the rest are counted.
const MAX_STDERR_LINES: usize = 200;

/// A running agent.
#[derive(Debug)]
pub(crate) struct RunningAgent {
    pub(crate) id: AgentId,
    pub(crate) link: AgentLink,
    /// Counts the sandbox as running until the agent is dropped; [`RunningSandbox::crashed`]
    /// when it broke.
    pub(crate) sandbox: RunningSandbox,
    /// Lists the sandbox on the dashboard until the agent is dropped.
    pub(crate) _listed: LiveEntry,
}

/// Why an agent could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("the agent crashed {MAX_CRASHES} times in 10 minutes; restarts paused")]
    CrashLoop,
    #[error("{0}")]
    Failed(String),
}

/// Recent crashes of a conversation's agent.
#[derive(Debug, Default)]
pub(crate) struct CrashBudget(VecDeque<Instant>);

impl CrashBudget {
    pub(crate) fn record(&mut self) {
        self.0.push_back(Instant::now());
    }

    fn exhausted(&mut self) -> bool {
        while self.0.front().is_some_and(|t| t.elapsed() > CRASH_WINDOW) {
            self.0.pop_front();
        }
        self.0.len() >= MAX_CRASHES
    }
}

/// The host directory that becomes this conversation's `/workspace`.
pub(crate) fn workspace_dir(services: &Services, key: &ConversationKey) -> PathBuf {
    services.config.workspace_root.join(key.storage_name())
}

/// Starts a sandbox for `key` and completes the handshake.
pub(crate) async fn start(
    services: &Services,
    key: &ConversationKey,
    crashes: &mut CrashBudget,
) -> Result<RunningAgent, StartError> {
    if crashes.exhausted() {
        return Err(StartError::CrashLoop);
    }
    let workspace = workspace_dir(services, key);
    create_private_dir(&workspace)
        .map_err(|e| StartError::Failed(format!("workspace {}: {e}", workspace.display())))?;
    if let Some(quotas) = &services.workspaces {
        quotas
            .prepare(&workspace)
            .await
            .map_err(|e| StartError::Failed(e.to_string()))?;
    }
    let id = new_agent_id();
    let spec = SandboxSpec {
        conversation: key.clone(),
        agent_id: id.clone(),
        workspace,
    };
    let started = Instant::now();
    let mut process = services
        .sandbox
        .start(&spec)
        .await
        .map_err(|e| StartError::Failed(e.to_string()))?;
    // From here on every way out drops or hands over this guard: the gauge stays exact.
    let sandbox = services.metrics.sandbox_started(services.sandbox.kind());
    if let Some(stderr) = process.stderr.take() {
        services.tasks.spawn(drain_stderr(stderr, id.clone()));
    }
    let mut link = AgentLink::new(process);
    let agent = &services.config.agent;
    let init = HostToBox::Init {
        protocol_version: PROTOCOL_VERSION,
        agent_id: id.clone(),
        system_prompt: agent.system_prompt.clone(),
        tools: ToolName::ALL.to_vec(),
        limits: agent.limits,
    };
    let handshake = async {
        link.send(&init).await.map_err(|e| e.to_string())?;
        match link.recv().await {
            Ok(BoxToHost::Ready {
                protocol_version,
                resumed_messages,
            }) if protocol_version == PROTOCOL_VERSION => Ok(resumed_messages),
            Ok(BoxToHost::Ready {
                protocol_version, ..
            }) => Err(format!(
                "agent speaks protocol {protocol_version}, gateway speaks {PROTOCOL_VERSION}"
            )),
            Ok(_) => Err("agent sent something other than Ready first".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(agent.ready_timeout, handshake).await {
        Ok(Ok(resumed)) => {
            tracing::info!(conversation = %key, agent = %id, pid = link.pid(), resumed, elapsed_ms = started.elapsed().as_millis() as u64, "agent ready");
            let listed = services.live.register(
                key.clone(),
                LiveSandbox {
                    backend: services.sandbox.kind().to_string(),
                    agent: id.clone(),
                    started: std::time::Instant::now(),
                    pid: link.pid(),
                },
            );
            Ok(RunningAgent {
                id,
                link,
                sandbox,
                _listed: listed,
            })
        }
        Ok(Err(why)) => {
            link.kill().await;
            sandbox.crashed();
            crashes.record();
            Err(StartError::Failed(why))
        }
        Err(_) => {
            link.kill().await;
            sandbox.crashed();
            crashes.record();
            Err(StartError::Failed(format!(
                "agent not ready within {:?}",
                agent.ready_timeout
            )))
        }
    }
}

/// Creates `path` and its missing parents, readable by the gateway's user only.
pub(crate) fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn new_agent_id() -> AgentId {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    AgentId::from_random(b)
}

/// Logs what the sandbox writes to stderr: bounded per line and per agent, since a hostile
/// agent controls it.
async fn drain_stderr(mut stderr: Box<dyn AsyncRead + Send + Unpin>, agent: AgentId) {
    let mut splitter = LineSplitter::new(usize::MAX);
    let mut buf = [0u8; 4096];
    let (mut logged, mut dropped) = (0usize, 0u64);
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Feed in pieces so one endless line is logged in bounded slices.
        for piece in buf[..n].chunks(1024) {
            if splitter.feed(piece).is_err() {
                break;
            }
            while let Some(Ok(line)) = splitter.next_line() {
                if logged < MAX_STDERR_LINES {
                    let text = String::from_utf8_lossy(&line[..line.len().min(1000)]);
                    tracing::debug!(target: "boxedclaw::sandbox", %agent, line = %boxedclaw_protocol::display::escape_untrusted(&text), "sandbox stderr");
                    logged += 1;
                } else {
                    dropped += 1;
                }
            }
            if splitter.pending() > 1000 {
                // An endless line: log its start, then drop it.
                let mut fresh = LineSplitter::new(usize::MAX);
                std::mem::swap(&mut splitter, &mut fresh);
                dropped += 1;
            }
        }
    }
    if dropped > 0 {
        tracing::debug!(target: "boxedclaw::sandbox", %agent, dropped, "sandbox stderr lines not logged");
    }
}
