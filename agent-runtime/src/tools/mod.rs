//! The tools that run inside the sandbox, and the dispatch from a parsed invocation.
//!
//! `http_fetch` is not here: the sandbox has no network, the gateway runs it.

pub(crate) mod confine;
pub(crate) mod fs;
pub(crate) mod shell;

use std::time::Duration;

use boxedclaw_protocol::agent::AgentLimits;
use boxedclaw_protocol::tools::ToolInvocation;

pub(crate) use confine::Workspace;

/// Runs a local tool and returns the text the model sees: the output, or `error: …`.
pub(crate) fn run_local(
    ws: &Workspace,
    invocation: &ToolInvocation,
    limits: &AgentLimits,
) -> String {
    let cap = usize::try_from(limits.tool_output_cap).unwrap_or(usize::MAX);
    let result = match invocation {
        ToolInvocation::FileRead { path } => fs::read(ws, path, cap),
        ToolInvocation::FileWrite { path, content } => fs::write(ws, path, content),
        ToolInvocation::FileList { path } => fs::list(ws, path, cap),
        ToolInvocation::FileDelete { path } => fs::delete(ws, path),
        ToolInvocation::Shell { command } => {
            let timeout = Duration::from_secs(u64::from(limits.shell_timeout_secs));
            shell::run(ws.path(), command, timeout, cap)
        }
        ToolInvocation::HttpFetch { .. } => Err("http_fetch runs in the gateway".to_owned()),
    };
    result.unwrap_or_else(|e| format!("error: {e}"))
}
