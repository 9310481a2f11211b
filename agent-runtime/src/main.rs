//! `boxedclaw-agent`: the program that runs inside a conversation's sandbox.
//!
//! It speaks the `boxedclaw-protocol` frames on stdin/stdout with the gateway (the host), keeps
//! the conversation's memory in its workspace and runs the file and shell tools there. It holds
//! no secrets: LLM calls, approvals and network fetches are all requests to the host.
//!
//! The program is synchronous and std-only on purpose: one conversation is one sequential loop,
//! and a runtime would cost more memory than everything else here (target idle RSS < 5 MiB).
//!
//! Stdout carries frames only. Diagnostics go to the host as (bounded) `Log` frames, or to
//! stderr before the handshake and on fatal errors.
//!
//! # Layout
//! - `main.rs`: environment, exit status.
//! - [`wire`]: the framed stdin/stdout connection and the reasons the agent stops.
//! - [`session`]: the handshake, the idle loop and the turn loop (LLM round trips, approvals,
//!   tool calls), including resuming a turn a restart interrupted (`RunApproved`).
//! - [`memory`]: the conversation history, persisted as JSON lines and repaired on load (an
//!   interrupted last turn is kept open for the session).
//! - [`history`]: trimming the history to the byte budget of one LLM request.
//! - [`tools`]: the tools that run in the sandbox:
//!   - `tools::confine`: workspace-relative path checks and `openat2` confinement;
//!   - `tools::fs`: `file_read`, `file_write`, `file_list`, `file_delete`;
//!   - `tools::shell`: `shell`, with a timeout, capped output and process-group kill.
//!
//! # Exit status
//! 0 after `Shutdown` or end of stdin; 1 after anything fatal (an undecodable frame, an
//! unexpected frame, a broken stdout, an unusable workspace), with one line on stderr.
#![forbid(unsafe_code)]

mod history;
mod memory;
mod session;
mod tools;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use wire::Stop;

/// Where the workspace is when the host does not say.
const DEFAULT_WORKSPACE: &str = "/workspace";

/// What the host configures through the environment.
#[derive(Debug, Clone)]
struct Env {
    /// `BOXEDCLAW_AGENT_ID`, checked against `Init` when set.
    agent_id: Option<String>,
    /// `BOXEDCLAW_WORKSPACE`: the only writable directory.
    workspace: PathBuf,
}

// The workspace lint list forbids reading the environment outside the gateway's config module;
// the agent has exactly two variables, read here and nowhere else.
#[allow(clippy::disallowed_methods)]
fn read_env() -> Env {
    Env {
        agent_id: std::env::var("BOXEDCLAW_AGENT_ID")
            .ok()
            .filter(|s| !s.is_empty()),
        workspace: std::env::var_os("BOXEDCLAW_WORKSPACE")
            .filter(|s| !s.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_WORKSPACE), PathBuf::from),
    }
}

fn main() -> ExitCode {
    let env = read_env();
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    match session::run(stdin, stdout, &env) {
        Stop::Shutdown | Stop::Eof => ExitCode::SUCCESS,
        Stop::Fatal(message) => {
            eprintln!("boxedclaw-agent: {message}");
            ExitCode::FAILURE
        }
    }
}
