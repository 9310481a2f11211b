//! Sandboxes: where agents run.
//!
//! One trait, [`SandboxBackend`], starts an agent for a conversation and hands back its
//! stdin/stdout (the only channel between the gateway and the box) and a control handle. The
//! backend decides how strong the walls are; everything above it — framing, phases, approvals —
//! is the same for every backend.
//!
//! # Layout
//! - [`namespace`]: the agent in fresh Linux namespaces via bubblewrap, for hosts without
//!   hardware virtualization.
//! - [`cgroup`]: pids and memory cgroups per namespace sandbox.
//! - [`quota`]: a filesystem of its own per workspace, so no agent can fill the host's disk.
//! - [`link`]: the framed, bounded, hostile-input-proof connection to a running agent.
//! - [`live`]: which sandboxes are running right now (for the dashboard).

pub mod boxlite;
pub mod cgroup;
pub mod link;
pub mod live;
pub mod namespace;
pub mod quota;
pub mod seccomp;

use std::path::{Path, PathBuf};

use boxedclaw_channels::BoxFuture;
use boxedclaw_protocol::ids::{AgentId, ConversationKey};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::host::SandboxKind;

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The conversation the agent serves (for logs and naming).
    pub conversation: ConversationKey,
    /// This agent instance.
    pub agent_id: AgentId,
    /// The host directory that becomes `/workspace`; it must exist.
    pub workspace: PathBuf,
}

/// Control over a started sandbox.
pub trait SandboxControl: Send + Sync {
    /// Kills every process of the sandbox and waits for the backend to reap it.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
    /// Waits until the sandbox exits by itself; returns its exit code if it had one.
    fn wait(&mut self) -> BoxFuture<'_, Option<i32>>;
    /// The host pid of the sandbox's outermost process, for metrics.
    fn pid(&self) -> Option<u32>;
}

/// A started sandbox: its agent's stdio and a control handle.
pub struct SandboxProcess {
    /// The agent's stdin: frames to the box.
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    /// The agent's stdout: frames from the box.
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// Diagnostics from the sandbox and agent (untrusted, logged bounded).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Kill and wait.
    pub control: Box<dyn SandboxControl>,
}

impl std::fmt::Debug for SandboxProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxProcess")
            .field("pid", &self.control.pid())
            .finish_non_exhaustive()
    }
}

/// Why a sandbox could not be set up or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A program the backend needs is missing.
    #[error("{what} not found: {hint}")]
    Missing {
        /// What is missing.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// Starting the sandbox failed.
    #[error("could not start sandbox: {0}")]
    Spawn(String),
    /// Preparing host files (workspace, sandbox /etc) failed.
    #[error("could not prepare {path}: {source}")]
    Prepare {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Starts sandboxed agents.
pub trait SandboxBackend: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> SandboxKind;
    /// Starts an agent for `spec`.
    fn start<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<SandboxProcess, SandboxError>>;
}

/// Finds the agent binary: the configured path, else next to the running executable (or one
/// level up, where cargo puts binaries relative to test executables).
///
/// # Errors
/// [`SandboxError::Missing`] naming the places looked at.
pub fn resolve_agent_binary(configured: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let mut tried = Vec::new();
    if let Some(p) = configured {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        tried.push(p.to_path_buf());
    } else if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("boxedclaw-agent");
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
    }
    Err(SandboxError::Missing {
        what: "the agent binary (boxedclaw-agent)".into(),
        hint: format!(
            "looked at {}; build it with `cargo build -p boxedclaw-agent` or set [agent] binary",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}
