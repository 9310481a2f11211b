//! `boxedclaw doctor`: what this host can run, and why not when it cannot.

use std::fmt::Write as _;

use crate::config::{Config, ConfigError};
use crate::host::{self, VirtReport};
use crate::llm::LlmClient;
use crate::sandbox::namespace;
use crate::sandbox::quota::WorkspaceQuotas;

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Works.
    Ok,
    /// Works with a caveat, or is optional.
    Note,
    /// Blocks running the gateway.
    Fail,
}

/// Whether BoxLite microVMs can run here, and exactly why not when they cannot.
fn boxlite_line(cfg: &Config, virt: &VirtReport) -> (Verdict, String) {
    use crate::sandbox::boxlite::runtime_dir::check_runtime_dir;
    if !crate::BOXLITE_BUILT {
        return (
            Verdict::Note,
            "BoxLite: not part of this build (cargo feature `boxlite`)".into(),
        );
    }
    let runtime = match check_runtime_dir(&cfg.boxlite.runtime_dir) {
        Ok(rt) => format!("runtime {} at {}", rt.version, rt.path.display()),
        Err(e) => format!("{e}"),
    };
    if virt.hardware_virtualization() {
        (
            Verdict::Ok,
            format!("BoxLite: hardware virtualization present; {runtime}"),
        )
    } else {
        (
            Verdict::Note,
            format!("BoxLite: cannot run here: {}; {runtime}", virt.explain()),
        )
    }
}

/// Runs every check and renders the report. Returns the report and whether nothing failed.
pub async fn report(config: &Result<Config, ConfigError>) -> (String, bool) {
    let mut lines: Vec<(Verdict, String)> = Vec::new();
    let virt = VirtReport::detect();
    lines.push((
        if virt.hardware_virtualization() {
            Verdict::Ok
        } else {
            Verdict::Note
        },
        format!("hardware virtualization: {}", virt.explain()),
    ));
    let ns = namespace::probe().await;
    lines.push(match &ns {
        Ok(what) => (Verdict::Ok, format!("namespace sandbox: {what}")),
        Err(why) => (Verdict::Fail, format!("namespace sandbox: {why}")),
    });
    lines.push(match crate::sandbox::seccomp::program() {
        Ok(program) => (
            Verdict::Ok,
            format!(
                "seccomp filter: {} system calls refused with EPERM in namespace sandboxes \
                 ({} BPF instructions)",
                crate::sandbox::seccomp::denied_names().count(),
                program.len() / 8
            ),
        ),
        Err(e) => (
            Verdict::Note,
            format!("seccomp filter: {e}; namespace sandboxes run without one"),
        ),
    });
    lines.push(match crate::sandbox::cgroup::SandboxCgroups::probe() {
        Ok(what) => (Verdict::Ok, format!("sandbox cgroups: {what}")),
        Err(why) => (
            Verdict::Note,
            format!(
                "sandbox cgroups: {why}; only rlimits apply (RLIMIT_NPROC does not bind a \
                 gateway running as root; RLIMIT_AS bounds each process, not the sum)"
            ),
        ),
    });
    match config {
        Err(e) => lines.push((Verdict::Fail, format!("config: {e}"))),
        Ok(cfg) => {
            lines.push((
                Verdict::Ok,
                format!(
                    "config: {}",
                    match &cfg.config_file {
                        Some(p) => format!("loaded {}", p.display()),
                        None => "defaults and environment (no config file)".into(),
                    }
                ),
            ));
            lines.push(
                match host::choose_backend(cfg.sandbox, &virt, crate::BOXLITE_BUILT) {
                    Ok((kind, reason)) => (
                        Verdict::Ok,
                        format!("sandbox = {} → {kind}: {reason}", cfg.sandbox),
                    ),
                    Err(why) => (Verdict::Fail, format!("sandbox = {}: {why}", cfg.sandbox)),
                },
            );
            lines.push(boxlite_line(cfg, &virt));
            lines.push(match cfg.limits.workspace_bytes {
                0 => (
                    Verdict::Note,
                    "workspace quotas: off ([limits] workspace_mib = 0); an agent can fill the \
                     disk its workspace is on"
                        .into(),
                ),
                bytes => match WorkspaceQuotas::probe(&cfg.data_dir, bytes).await {
                    Ok(quotas) => (
                        Verdict::Ok,
                        format!("workspace quotas: {}", quotas.describe()),
                    ),
                    Err(why) => (
                        Verdict::Note,
                        format!(
                            "workspace quotas: unavailable: {why}; an agent can fill the disk \
                             its workspace is on"
                        ),
                    ),
                },
            });
            lines.push(
                match crate::sandbox::resolve_agent_binary(cfg.agent.binary.as_deref()) {
                    Ok(p) => (Verdict::Ok, format!("agent binary: {}", p.display())),
                    Err(e) => (Verdict::Fail, format!("agent binary: {e}")),
                },
            );
            lines.push(match LlmClient::new(&cfg.llm) {
                Err(e) => (Verdict::Fail, format!("LLM: {e}")),
                Ok(client) => match client.probe().await {
                    Ok(()) => (
                        Verdict::Ok,
                        format!(
                            "LLM: {} reachable (model {})",
                            cfg.llm.base_url,
                            client.model()
                        ),
                    ),
                    Err(e) => (Verdict::Fail, format!("LLM: {} — {e}", cfg.llm.base_url)),
                },
            });
            let ch = &cfg.channels;
            let mut on: Vec<&str> = Vec::new();
            for (set, name) in [
                (ch.telegram, "telegram"),
                (ch.slack, "slack"),
                (ch.discord, "discord"),
            ] {
                if set {
                    on.push(name);
                }
            }
            lines.push(if on.is_empty() {
                (Verdict::Note, "channels: no platform token set; `boxedclaw run` serves the web console, `boxedclaw chat` talks to an agent from this terminal".into())
            } else {
                (Verdict::Note, format!("channels: tokens set for {}; the web console serves as well", on.join(", ")))
            });
        }
    }
    let mut out = String::new();
    let mut ok = true;
    for (verdict, text) in lines {
        let tag = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Note => "note",
            Verdict::Fail => {
                ok = false;
                "FAIL"
            }
        };
        let _ = writeln!(out, "[{tag}] {text}");
    }
    (out, ok)
}
