//! Per-sandbox limits on the process count and the total memory of a namespace sandbox,
//! through the kernel's pids and memory cgroup controllers.
//!
//! Why rlimits are not enough: `RLIMIT_NPROC` does not bind processes whose real uid is host
//! root, and a gateway running as root maps the sandbox's user to root on the host, so a fork
//! bomb could exhaust the host's pids; `RLIMIT_AS` bounds each process, not their sum, so
//! `max_processes` processes could each take `memory_mib`. A cgroup binds every process in it,
//! whoever owns it, and its total.
//!
//! Each sandbox gets its own group with `pids.max` = `[limits] max_processes` and a memory
//! limit of `[limits] memory_mib` without swap. The forked child joins it (writes `0` to the
//! group's `cgroup.procs`, through descriptors opened before the fork) before bubblewrap runs,
//! so nothing of the sandbox ever runs outside it.
//!
//! Where the groups live:
//! - cgroup v1 (one hierarchy per controller under `/sys/fs/cgroup/<controller>`): under the
//!   gateway's own group of each hierarchy, in `boxedclaw-<gateway pid>/`.
//! - cgroup v2 (`/sys/fs/cgroup` unified): under the gateway's own group, in
//!   `boxedclaw-sandboxes/`. Because v2 lets a group with processes in it have no controlled
//!   children, the gateway first moves itself into a `boxedclaw-gateway/` leaf (what systemd
//!   asks of services with `Delegate=yes`).
//!
//! Where a controller cannot be used (not mounted, a read-only cgroupfs, not root and not
//! delegated) the backend says why at start and in `boxedclaw doctor`, and that limit falls
//! back to the rlimits.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Distinguishes the groups of one gateway process (several gateways may share a process in
/// tests).
static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

/// A controller the sandboxes are limited by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Pids,
    Memory,
}

impl Controller {
    const ALL: [Controller; 2] = [Controller::Pids, Controller::Memory];

    fn name(self) -> &'static str {
        match self {
            Controller::Pids => "pids",
            Controller::Memory => "memory",
        }
    }
}

/// Where the gateway's own groups are, as `/proc/self/cgroup` and the mounts tell.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// Own group in each v1 hierarchy that has one of our controllers.
    V1(Vec<(Controller, PathBuf)>),
    /// Own group in the unified hierarchy, and which of our controllers it offers.
    V2(PathBuf, Vec<Controller>),
}

/// Where this gateway creates its sandboxes' groups.
#[derive(Debug, Clone)]
pub struct SandboxCgroups {
    /// v1: a base per controller; v2: one base for both.
    bases: Vec<(Vec<Controller>, PathBuf)>,
    v2: bool,
}

/// The limits of one sandbox's group.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// `pids.max`.
    pub processes: u64,
    /// Memory without swap, in bytes.
    pub memory_bytes: u64,
}

/// One sandbox's groups (one per v1 hierarchy, or one v2 group); removed when dropped, once
/// its processes are gone.
#[derive(Debug)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
    /// Each group's `cgroup.procs`, open until the sandbox's first process has joined.
    procs: Vec<OwnedFd>,
}

impl SandboxCgroups {
    /// Finds the pids and memory controllers the gateway may create groups in and prepares
    /// its base groups. Succeeds when at least one controller is usable; `notes` gets why
    /// any other is not.
    ///
    /// # Errors
    /// Why sandboxes cannot get cgroup limits here, in one line.
    pub fn discover(notes: &mut Vec<String>) -> Result<Self, String> {
        let found = find()?;
        let mut bases = Vec::new();
        let v2 = matches!(found, Found::V2(..));
        match found {
            Found::V1(own) => {
                for (controller, own_dir) in own {
                    sweep_stale_v1(&own_dir);
                    let base = own_dir.join(format!("boxedclaw-{}", std::process::id()));
                    match mkdir(&base) {
                        Ok(()) => bases.push((vec![controller], base)),
                        Err(e) => notes.push(format!("{}: {e}", controller.name())),
                    }
                }
            }
            Found::V2(own_dir, offered) => {
                let (base, enabled) = prepare_v2(&own_dir, &offered, notes)?;
                bases.push((enabled, base));
            }
        }
        for c in Controller::ALL {
            if !bases.iter().any(|(cs, _)| cs.contains(&c))
                && !notes.iter().any(|n| n.starts_with(c.name()))
            {
                notes.push(format!(
                    "{}: controller not available to this process",
                    c.name()
                ));
            }
        }
        if bases.is_empty() {
            return Err(notes.join("; "));
        }
        Ok(Self { bases, v2 })
    }

    /// What [`discover`](Self::discover) would find, without creating or moving anything
    /// (for `boxedclaw doctor`).
    ///
    /// # Errors
    /// Why sandboxes could not get cgroup limits here.
    pub fn probe() -> Result<String, String> {
        let (version, dirs): (&str, Vec<(Vec<Controller>, PathBuf)>) = match find()? {
            Found::V1(own) => ("v1", own.into_iter().map(|(c, d)| (vec![c], d)).collect()),
            Found::V2(own, offered) => ("v2", vec![(offered, own)]),
        };
        let mut usable = Vec::new();
        let mut refused = Vec::new();
        for (controllers, dir) in dirs {
            let names: Vec<&str> = controllers.iter().map(|c| c.name()).collect();
            match rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK) {
                Ok(()) => usable.extend(names),
                Err(e) => refused.push(format!(
                    "{} not writable ({e}): run the gateway as root or delegate its cgroup",
                    dir.display()
                )),
            }
        }
        if usable.is_empty() {
            return Err(refused.join("; "));
        }
        let mut what = format!(
            "cgroup {version} {}: each sandbox's {} capped",
            usable.join(" and "),
            if usable.len() == 2 {
                "process count and memory are"
            } else if usable.contains(&"pids") {
                "process count is"
            } else {
                "memory is"
            }
        );
        for r in refused {
            what.push_str("; ");
            what.push_str(&r);
        }
        Ok(what)
    }

    /// `"cgroup v1 pids, memory"`, for logs.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self
            .bases
            .iter()
            .flat_map(|(cs, _)| cs.iter().map(|c| c.name()))
            .collect();
        format!(
            "cgroup {} {}",
            if self.v2 { "v2" } else { "v1" },
            names.join(", ")
        )
    }

    /// Creates the groups of one sandbox with `limits`.
    ///
    /// # Errors
    /// The file system error, naming the path.
    pub fn create(&self, name: &str, limits: GroupLimits) -> Result<SandboxCgroup, String> {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(64)
            .collect();
        let n = NEXT_GROUP.fetch_add(1, Ordering::Relaxed);
        // Built as it goes, so a failure part-way removes what was made (on drop).
        let mut group = SandboxCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        for (controllers, base) in &self.bases {
            let dir = base.join(format!("{safe}-{n}"));
            mkdir(&dir)?;
            group.dirs.push(dir.clone());
            for c in controllers {
                match c {
                    Controller::Pids => {
                        write(&dir.join("pids.max"), &limits.processes.to_string())?
                    }
                    Controller::Memory => set_memory(&dir, self.v2, limits.memory_bytes)?,
                }
            }
            let procs_path = dir.join("cgroup.procs");
            // std opens with O_CLOEXEC: the descriptor is gone once bubblewrap is executed.
            let procs = OpenOptions::new()
                .write(true)
                .open(&procs_path)
                .map_err(|e| format!("cannot open {}: {e}", procs_path.display()))?;
            group.procs.push(OwnedFd::from(procs));
        }
        Ok(group)
    }
}

impl SandboxCgroup {
    /// The descriptors of the groups' `cgroup.procs` (at most one per controller): writing
    /// `0` to one moves the writing process into that group.
    pub fn procs_fds(&self) -> [Option<RawFd>; 2] {
        let mut fds = [None; 2];
        for (slot, fd) in fds.iter_mut().zip(&self.procs) {
            *slot = Some(fd.as_raw_fd());
        }
        fds
    }

    /// The sandbox's first process has been started (and joined): its descendants stay in
    /// the groups by inheritance, so the descriptors are no longer needed.
    pub fn joined(&mut self) {
        self.procs.clear();
    }

    /// Removes the groups, waiting briefly for their last processes to be reaped (the kernel
    /// refuses to remove a group that still has some).
    pub async fn remove(&mut self) {
        for _ in 0..50 {
            self.dirs.retain(|dir| match std::fs::remove_dir(dir) {
                Ok(()) => false,
                Err(e) => e.kind() != std::io::ErrorKind::NotFound,
            });
            if self.dirs.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::warn!(groups = ?self.dirs, "sandbox cgroup still busy; left in place");
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        // Best effort: `remove` already ran after a normal exit.
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Sets a group's memory limit with no swap on top (swap would let a sandbox exceed it).
fn set_memory(dir: &Path, v2: bool, bytes: u64) -> Result<(), String> {
    let value = bytes.to_string();
    if v2 {
        write(&dir.join("memory.max"), &value)?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
    } else {
        write(&dir.join("memory.limit_in_bytes"), &value)?;
        // Memory plus swap, when the kernel accounts swap: the same total, so no swap.
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &value)?;
        }
    }
    Ok(())
}

fn find() -> Result<Found, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let v2_controllers =
        std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers")).ok();
    locate(&own, v2_controllers.as_deref())
}

/// The gateway's own groups, from `/proc/self/cgroup` and the unified root's
/// `cgroup.controllers` (absent when `/sys/fs/cgroup` is not cgroup2).
fn locate(proc_self_cgroup: &str, v2_controllers: Option<&str>) -> Result<Found, String> {
    let mut v1 = Vec::new();
    let mut v2_path = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2_path = Some(path);
            continue;
        }
        for c in Controller::ALL {
            if controllers.split(',').any(|name| name == c.name()) {
                let root = Path::new(CGROUP_ROOT).join(c.name());
                v1.push((c, root.join(path.trim_start_matches('/'))));
            }
        }
    }
    if !v1.is_empty() {
        return Ok(Found::V1(v1));
    }
    match (v2_path, v2_controllers) {
        (Some(path), Some(available)) => {
            let offered: Vec<Controller> = Controller::ALL
                .into_iter()
                .filter(|c| available.split_whitespace().any(|a| a == c.name()))
                .collect();
            if offered.is_empty() {
                return Err("the cgroup v2 hierarchy offers neither pids nor memory".into());
            }
            Ok(Found::V2(
                Path::new(CGROUP_ROOT).join(path.trim_start_matches('/')),
                offered,
            ))
        }
        _ => Err("no pids or memory cgroup controller is mounted".into()),
    }
}

/// cgroup v2: moves the gateway into a leaf of its own group (unless it is the root, which
/// may have processes and controlled children at once) and enables the controllers for
/// children. Returns the base and the controllers enabled.
fn prepare_v2(
    own: &Path,
    offered: &[Controller],
    notes: &mut Vec<String>,
) -> Result<(PathBuf, Vec<Controller>), String> {
    if own != Path::new(CGROUP_ROOT) {
        let leaf = own.join("boxedclaw-gateway");
        mkdir(&leaf)?;
        // `0`: the writing process, with all its threads.
        write(&leaf.join("cgroup.procs"), "0")?;
    }
    let base = own.join("boxedclaw-sandboxes");
    let mut enabled = Vec::new();
    for &c in offered {
        let on = format!("+{}", c.name());
        match write(&own.join("cgroup.subtree_control"), &on) {
            Ok(()) => enabled.push(c),
            Err(e) => notes.push(format!(
                "{}: {e} (with systemd, give the service Delegate=yes)",
                c.name()
            )),
        }
    }
    if enabled.is_empty() {
        return Err(notes.join("; "));
    }
    mkdir(&base)?;
    for c in &enabled {
        write(
            &base.join("cgroup.subtree_control"),
            &format!("+{}", c.name()),
        )?;
    }
    Ok((base, enabled))
}

/// cgroup v1: removes the groups of gateways that are no longer running.
fn sweep_stale_v1(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("boxedclaw-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        if let Ok(groups) = std::fs::read_dir(entry.path()) {
            for group in groups.flatten() {
                if group.path().is_dir() {
                    let _ = std::fs::remove_dir(group.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

fn mkdir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn v1_uses_each_controllers_hierarchy_and_the_gateways_own_group() {
        let own = "12:pids:/system.slice/bc.service\n4:memory:/limited\n3:cpu:/\n0::/x\n";
        assert_eq!(
            locate(own, None).unwrap(),
            Found::V1(vec![
                (
                    Controller::Pids,
                    PathBuf::from("/sys/fs/cgroup/pids/system.slice/bc.service")
                ),
                (
                    Controller::Memory,
                    PathBuf::from("/sys/fs/cgroup/memory/limited")
                ),
            ])
        );
        // A combined v1 line counts too.
        assert_eq!(
            locate("3:cpu,pids:/\n", None).unwrap(),
            Found::V1(vec![(
                Controller::Pids,
                PathBuf::from("/sys/fs/cgroup/pids/")
            )])
        );
    }

    #[test]
    fn v2_offers_what_the_unified_root_has() {
        let own = "0::/system.slice/bc.service\n";
        assert_eq!(
            locate(own, Some("cpuset cpu io memory pids\n")).unwrap(),
            Found::V2(
                PathBuf::from("/sys/fs/cgroup/system.slice/bc.service"),
                vec![Controller::Pids, Controller::Memory]
            )
        );
        assert_eq!(
            locate(own, Some("cpu memory\n")).unwrap(),
            Found::V2(
                PathBuf::from("/sys/fs/cgroup/system.slice/bc.service"),
                vec![Controller::Memory]
            )
        );
        let e = locate(own, Some("cpu io\n")).unwrap_err();
        assert!(e.contains("neither pids nor memory"), "{e}");
        let e = locate(own, None).unwrap_err();
        assert!(e.contains("no pids or memory cgroup"), "{e}");
        assert!(locate("", None).is_err());
    }
}
