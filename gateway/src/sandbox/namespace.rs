//! The namespace backend: each agent in fresh Linux namespaces, via bubblewrap.
//!
//! Why bubblewrap: it is small, setuid-free here (we rely on unprivileged user namespaces or
//! a root gateway), audited as Flatpak's sandbox, and does exactly one thing — build a mount,
//! pid, net, ipc, uts and user namespace from an explicit list of binds. Spawning it costs a
//! few milliseconds, which keeps cold starts well under our 50 ms target, and keeping the
//! namespace setup in a separate, well-reviewed program keeps `unsafe` out of the gateway
//! except for the rlimits below.
//!
//! What the agent sees:
//! - `/usr` (and the `/bin`, `/lib*`, `/sbin` links or binds) read-only from the host;
//! - a synthetic `/etc` (passwd, group, hosts, the dynamic linker cache, alternatives links);
//! - private `/proc` (its own pid namespace), minimal `/dev`, a small private `/tmp`;
//! - its own conversation's workspace at `/workspace`, the only writable place;
//! - the agent binary read-only at `/opt/boxedclaw/boxedclaw-agent`;
//! - no network (only a loopback device in its own net namespace), no capabilities, no
//!   nested user namespaces, an environment of exactly five variables;
//! - a seccomp filter ([`super::seccomp`]) that refuses the kernel interfaces an agent has no
//!   use for (`ptrace`, keyrings, `io_uring`, `bpf`, mounting, namespaces, modules, …);
//! - never the host's home directories, the gateway's config, data dir or other workspaces:
//!   the root is an empty read-only tmpfs and nothing else is bound. If one of those lies under
//!   a bound system directory it is masked.
//!
//! Resource limits are rlimits set in the child before bubblewrap runs, so they bind the whole
//! sandbox. `RLIMIT_NPROC` does not bind processes whose real uid is host root and
//! `RLIMIT_AS` bounds each process, not their sum, so the process count and the total memory
//! are also capped by cgroups per sandbox ([`super::cgroup`]) wherever the host lets the
//! gateway create them; the child joins them before bubblewrap runs.

use std::io::Write as _;
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use boxedclaw_channels::BoxFuture;
use rustix::process::{Resource, Rlimit};
use tokio::process::{Child, Command};

use super::cgroup::{GroupLimits, SandboxCgroup, SandboxCgroups};
use super::{SandboxBackend, SandboxControl, SandboxError, SandboxProcess, SandboxSpec};
use crate::config::{Config, SandboxLimits};
use crate::host::SandboxKind;

/// Where the agent binary appears inside the sandbox.
pub const AGENT_PATH: &str = "/opt/boxedclaw/boxedclaw-agent";
/// Size of the sandbox's private `/tmp`.
const TMP_SIZE: u64 = 64 * 1024 * 1024;
/// Places bubblewrap is looked for (the environment's PATH is not consulted: it is
/// configuration the gateway does not trust for picking a security boundary).
const BWRAP_CANDIDATES: [&str; 3] = ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"];
/// Top-level host directories that make up the read-only system view.
const SYSTEM_DIRS: [&str; 5] = ["/usr", "/bin", "/sbin", "/lib", "/lib64"];

#[derive(Debug, Clone)]
enum SystemEntry {
    Bind(PathBuf),
    Symlink { link: PathBuf, target: PathBuf },
}

/// Starts agents under bubblewrap.
#[derive(Debug)]
pub struct NamespaceBackend {
    bwrap: PathBuf,
    agent_binary: PathBuf,
    etc_dir: PathBuf,
    limits: Limits,
    system: Vec<SystemEntry>,
    masks: Vec<PathBuf>,
    /// Where each sandbox's cgroups are made; `None` where the host allows none.
    cgroups: Option<SandboxCgroups>,
    /// The compiled seccomp filter bubblewrap installs; `None` on an architecture without one.
    seccomp: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    memory: u64,
    processes: u64,
    file_size: u64,
    cpu: u64,
    open_files: u64,
}

impl From<&SandboxLimits> for Limits {
    fn from(l: &SandboxLimits) -> Self {
        Self {
            memory: l.memory_bytes,
            processes: l.max_processes,
            file_size: l.file_size_bytes,
            cpu: l.cpu_seconds,
            open_files: l.open_files,
        }
    }
}

/// Finds bubblewrap.
///
/// # Errors
/// [`SandboxError::Missing`] with the install hint.
pub fn find_bwrap() -> Result<PathBuf, SandboxError> {
    BWRAP_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(|| {
        SandboxError::Missing {
            what: "bubblewrap (bwrap)".into(),
            hint: "install it: `apt-get install bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap`".into(),
        }
    })
}

impl NamespaceBackend {
    /// Prepares the backend: finds bubblewrap and the agent, writes the synthetic `/etc`.
    ///
    /// # Errors
    /// [`SandboxError`] when bubblewrap or the agent binary is missing or the data dir cannot
    /// be written.
    pub fn new(cfg: &Config) -> Result<Self, SandboxError> {
        let bwrap = find_bwrap()?;
        let agent_binary = super::resolve_agent_binary(cfg.agent.binary.as_deref())?;
        let etc_dir = cfg.data_dir.join("sandbox-etc");
        write_synthetic_etc(&etc_dir)?;
        let system = SYSTEM_DIRS
            .iter()
            .filter_map(|d| {
                let path = Path::new(d);
                match std::fs::read_link(path) {
                    Ok(target) => Some(SystemEntry::Symlink {
                        link: path.into(),
                        target,
                    }),
                    Err(_) if path.is_dir() => Some(SystemEntry::Bind(path.into())),
                    Err(_) => None,
                }
            })
            .collect::<Vec<_>>();
        // Anything of ours that happens to live under a bound system directory is hidden.
        let mut sensitive = vec![cfg.data_dir.clone(), cfg.workspace_root.clone()];
        sensitive.extend(cfg.config_file.clone());
        let masks = sensitive
            .into_iter()
            .filter(|p| {
                system
                    .iter()
                    .any(|e| matches!(e, SystemEntry::Bind(d) if p.starts_with(d)))
            })
            .collect();
        let mut missing = Vec::new();
        let cgroups = match SandboxCgroups::discover(&mut missing) {
            Ok(cgroups) => {
                tracing::info!(
                    cgroups = %cgroups.describe(),
                    max_processes = cfg.limits.max_processes,
                    memory_bytes = cfg.limits.memory_bytes,
                    "each sandbox in cgroups of its own"
                );
                Some(cgroups)
            }
            Err(_) => None,
        };
        for why in missing {
            tracing::warn!(
                reason = %why,
                "a sandbox cgroup limit is unavailable; the rlimit remains (RLIMIT_NPROC does \
                 not bind a gateway running as root; RLIMIT_AS bounds each process, not the sum)"
            );
        }
        let seccomp = match super::seccomp::program() {
            Ok(program) => Some(program),
            Err(e) => {
                tracing::warn!(error = %e, "sandboxes run without a seccomp filter");
                None
            }
        };
        Ok(Self {
            bwrap,
            agent_binary,
            etc_dir,
            limits: Limits::from(&cfg.limits),
            system,
            masks,
            cgroups,
            seccomp,
        })
    }

    /// The bubblewrap arguments for `spec`, in order (bubblewrap applies them in order).
    pub fn arguments(&self, spec: &SandboxSpec) -> Vec<String> {
        let mut a: Vec<String> = Vec::with_capacity(96);
        let mut push = |args: &[&str]| a.extend(args.iter().map(|s| (*s).to_owned()));
        push(&["--unshare-all", "--unshare-user", "--disable-userns"]);
        push(&["--uid", "1000", "--gid", "1000", "--hostname", "boxedclaw"]);
        push(&["--die-with-parent", "--new-session", "--cap-drop", "ALL"]);
        for entry in &self.system {
            match entry {
                SystemEntry::Bind(d) => {
                    let d = d.to_string_lossy();
                    push(&["--ro-bind", &d, &d]);
                }
                SystemEntry::Symlink { link, target } => {
                    push(&[
                        "--symlink",
                        &target.to_string_lossy(),
                        &link.to_string_lossy(),
                    ]);
                }
            }
        }
        for m in &self.masks {
            let m = m.to_string_lossy();
            if Path::new(m.as_ref()).is_dir() {
                push(&["--tmpfs", &m]);
            } else {
                push(&["--ro-bind", "/dev/null", &m]);
            }
        }
        push(&["--dir", "/etc"]);
        for f in ETC_FILES
            .iter()
            .map(|(name, _)| *name)
            .chain(["ld.so.cache"])
        {
            let host = self.etc_dir.join(f);
            if host.exists() {
                push(&["--ro-bind", &host.to_string_lossy(), &format!("/etc/{f}")]);
            }
        }
        push(&["--ro-bind-try", "/etc/alternatives", "/etc/alternatives"]);
        push(&["--proc", "/proc", "--dev", "/dev"]);
        push(&["--size", &TMP_SIZE.to_string(), "--tmpfs", "/tmp"]);
        push(&["--bind", &spec.workspace.to_string_lossy(), "/workspace"]);
        push(&[
            "--ro-bind",
            &self.agent_binary.to_string_lossy(),
            AGENT_PATH,
        ]);
        push(&["--remount-ro", "/", "--chdir", "/workspace", "--clearenv"]);
        push(&["--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin"]);
        push(&[
            "--setenv",
            "HOME",
            "/workspace",
            "--setenv",
            "LANG",
            "C.UTF-8",
        ]);
        push(&["--setenv", "BOXEDCLAW_WORKSPACE", "/workspace"]);
        push(&["--setenv", "BOXEDCLAW_AGENT_ID", spec.agent_id.as_str()]);
        push(&["--", AGENT_PATH]);
        a
    }

    /// The bubblewrap command for `spec`, and the pipe its seccomp filter is read from (keep it
    /// open until the command has been spawned).
    fn command(
        &self,
        spec: &SandboxSpec,
        cgroup: Option<&SandboxCgroup>,
    ) -> Result<(Command, Option<std::io::PipeReader>), SandboxError> {
        let mut cmd = Command::new(&self.bwrap);
        let filter = match &self.seccomp {
            Some(program) => {
                let failed = |e: std::io::Error| SandboxError::Spawn(format!("seccomp pipe: {e}"));
                // The whole program fits in the pipe's buffer (the kernel caps filters at
                // 4096 instructions, 32 KiB), so it is written before bubblewrap reads it.
                let (reader, mut writer) = std::io::pipe().map_err(failed)?;
                writer.write_all(program).map_err(failed)?;
                drop(writer);
                cmd.args(["--seccomp", &reader.as_raw_fd().to_string()]);
                Some(reader)
            }
            None => None,
        };
        cmd.args(self.arguments(spec))
            // bubblewrap itself is visible inside the sandbox as a process: it must not carry
            // the gateway's environment (API keys) either.
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let join = cgroup.map_or([None; 2], SandboxCgroup::procs_fds);
        let inherit = filter.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        confine_child(&mut cmd, self.limits, join, inherit);
        Ok((cmd, filter))
    }
}

/// In the forked child, before bubblewrap is executed: joins the sandbox's cgroups (through
/// `cgroup_procs`, their `cgroup.procs` opened by the parent) and sets the resource limits, so
/// that every process of the sandbox is counted and inherits them, and none can raise a hard
/// limit. `inherit` (the seccomp filter's pipe) is made to survive the exec: the parent opens
/// it close-on-exec, so no other child spawned meanwhile receives it.
#[allow(unsafe_code)]
fn confine_child(
    cmd: &mut Command,
    l: Limits,
    cgroup_procs: [Option<RawFd>; 2],
    inherit: Option<RawFd>,
) {
    let limits = [
        (Resource::As, l.memory),
        (Resource::Nproc, l.processes),
        (Resource::Fsize, l.file_size),
        (Resource::Cpu, l.cpu),
        (Resource::Nofile, l.open_files),
        (Resource::Core, 0),
    ];
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe operations are allowed. It only issues write(2) and fcntl(2) on
    // descriptors the parent keeps open until the spawn has returned, and setrlimit(2), with
    // values computed before the fork; it does not allocate, lock or touch shared state.
    unsafe {
        cmd.pre_exec(move || {
            for fd in cgroup_procs.into_iter().flatten() {
                // `0` moves the writing process: the child, before anything else runs.
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::write(fd, b"0")?;
            }
            if let Some(fd) = inherit {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            for (resource, value) in limits {
                let lim = Rlimit {
                    current: Some(value),
                    maximum: Some(value),
                };
                rustix::process::setrlimit(resource, lim)?;
            }
            Ok(())
        });
    }
}

/// Files of the synthetic `/etc`: enough for `id`, `ls -l` and name lookups of localhost.
const ETC_FILES: [(&str, &str); 4] = [
    (
        "passwd",
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nagent:x:1000:1000:agent:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    ("group", "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n"),
    ("hosts", "127.0.0.1 localhost boxedclaw\n::1 localhost\n"),
    (
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
    ),
];

fn write_synthetic_etc(dir: &Path) -> Result<(), SandboxError> {
    let prep = |path: &Path, source| SandboxError::Prepare {
        path: path.into(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| prep(dir, e))?;
    for (name, content) in ETC_FILES {
        let p = dir.join(name);
        std::fs::write(&p, content).map_err(|e| prep(&p, e))?;
    }
    // The linker cache speeds up dynamic loading; it holds only library paths. Missing is fine.
    let cache = dir.join("ld.so.cache");
    if std::fs::copy("/etc/ld.so.cache", &cache).is_err() {
        let _ = std::fs::remove_file(&cache);
    }
    Ok(())
}

struct BwrapChild {
    child: Child,
    cgroup: Option<SandboxCgroup>,
}

impl BwrapChild {
    async fn release_cgroup(&mut self) {
        if let Some(mut group) = self.cgroup.take() {
            group.remove().await;
        }
    }
}

impl SandboxControl for BwrapChild {
    fn kill(&mut self) -> BoxFuture<'_, ()> {
        // Killing bubblewrap's outer process tears the whole pid namespace down: its init gets
        // SIGKILL through --die-with-parent, and the kernel kills everything inside with it.
        Box::pin(async move {
            let _ = self.child.kill().await;
            self.release_cgroup().await;
        })
    }

    fn wait(&mut self) -> BoxFuture<'_, Option<i32>> {
        Box::pin(async move {
            let code = self.child.wait().await.ok().and_then(|s| s.code());
            self.release_cgroup().await;
            code
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl SandboxBackend for NamespaceBackend {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Namespace
    }

    fn start<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<SandboxProcess, SandboxError>> {
        Box::pin(async move {
            // Fails closed: where the host gives cgroups, no sandbox runs without its own.
            let limits = GroupLimits {
                processes: self.limits.processes,
                memory_bytes: self.limits.memory,
            };
            let mut cgroup = match &self.cgroups {
                Some(cgroups) => Some(
                    cgroups
                        .create(spec.agent_id.as_str(), limits)
                        .map_err(|e| SandboxError::Spawn(format!("sandbox cgroup: {e}")))?,
                ),
                None => None,
            };
            let (mut command, seccomp_pipe) = self.command(spec, cgroup.as_ref())?;
            let mut child = command
                .spawn()
                .map_err(|e| SandboxError::Spawn(e.to_string()))?;
            // The child holds its own copy now.
            drop(seccomp_pipe);
            if let Some(group) = &mut cgroup {
                group.joined();
            }
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(SandboxError::Spawn("sandbox stdio was not captured".into()));
            };
            let stderr = child.stderr.take().map(|s| Box::new(s) as _);
            Ok(SandboxProcess {
                stdin: Box::new(stdin),
                stdout: Box::new(stdout),
                stderr,
                control: Box::new(BwrapChild { child, cgroup }),
            })
        })
    }
}

/// Checks that namespace sandboxes can be created here, for `boxedclaw doctor`.
///
/// # Errors
/// A one-line explanation of what is missing or refused.
pub async fn probe() -> Result<String, String> {
    let bwrap = find_bwrap().map_err(|e| e.to_string())?;
    let out = Command::new(&bwrap)
        .args([
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
        ])
        .args(["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin"])
        .args([
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
        ])
        .args(["--proc", "/proc", "--", "/bin/true"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("could not run {}: {e}", bwrap.display()))?;
    if out.status.success() {
        Ok(format!(
            "{} can create user, pid, mount, net, ipc and uts namespaces",
            bwrap.display()
        ))
    } else {
        Err(format!(
            "{} failed ({}): {} — unprivileged user namespaces may be disabled \
             (sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces)",
            bwrap.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
