//! A process-count limit for each namespace sandbox, through the kernel's pids cgroup
//! controller.
//!
//! Why not only `RLIMIT_NPROC`: the kernel does not apply it to processes whose real uid is
//! host root, and a gateway running as root maps the sandbox's user to root on the host, so a
//! fork bomb there could exhaust the host's pids. A pids cgroup binds every process in it,
//! whoever owns it.
//!
//! Each sandbox gets its own group with `pids.max` = `[limits] max_processes`. The forked child
//! joins it (writes `0` to the group's `cgroup.procs`, through a descriptor opened before the
//! fork) before bubblewrap runs, so nothing of the sandbox ever runs outside it.
//!
//! Where the groups live:
//! - cgroup v1 (a `pids` hierarchy at `/sys/fs/cgroup/pids`): under the gateway's own group,
//!   in `boxedclaw-<gateway pid>/`.
//! - cgroup v2 (`/sys/fs/cgroup` unified, `pids` available): under the gateway's own group,
//!   in `boxedclaw-sandboxes/`. Because v2 lets a group with processes in it have no
//!   controlled children, the gateway first moves itself into a `boxedclaw-gateway/` leaf
//!   (what systemd asks of services with `Delegate=yes`).
//!
//! When neither works (no controller, a read-only cgroupfs, not root and not delegated) the
//! backend says why at start and in `boxedclaw doctor`, and sandboxes run with rlimits only.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Distinguishes the groups of one gateway process (several gateways may share a process in
/// tests; each sandbox gets a fresh name anyway).
static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

/// The cgroup layout in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where this gateway creates its sandboxes' pids groups.
#[derive(Debug, Clone)]
pub struct PidsCgroups {
    base: PathBuf,
    version: Version,
}

/// One sandbox's group; removed when dropped (once its processes are gone).
#[derive(Debug)]
pub struct SandboxCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open until the sandbox's first process has joined.
    procs: Option<OwnedFd>,
}

impl PidsCgroups {
    /// Finds a pids controller the gateway may create groups in, and prepares its base group.
    ///
    /// # Errors
    /// Why sandboxes cannot get a pids limit here, in one line.
    pub fn discover() -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let v2_controllers =
            std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers")).ok();
        let (version, own_dir) = locate(&own, v2_controllers.as_deref())?;
        let base = match version {
            Version::V1 => {
                sweep_stale_v1(&own_dir);
                own_dir.join(format!("boxedclaw-{}", std::process::id()))
            }
            Version::V2 => prepare_v2(&own_dir)?,
        };
        mkdir(&base)?;
        if version == Version::V2 {
            write(&base.join("cgroup.subtree_control"), "+pids")?;
        }
        Ok(Self { base, version })
    }

    /// What [`discover`](Self::discover) would find, without creating or moving anything
    /// (for `boxedclaw doctor`).
    ///
    /// # Errors
    /// Why sandboxes could not get a pids limit here.
    pub fn probe() -> Result<String, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let v2_controllers =
            std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers")).ok();
        let (version, own_dir) = locate(&own, v2_controllers.as_deref())?;
        rustix::fs::access(&own_dir, rustix::fs::Access::WRITE_OK).map_err(|e| {
            format!(
                "{} is not writable ({e}): run the gateway as root or delegate its cgroup",
                own_dir.display()
            )
        })?;
        let version = if version == Version::V1 { "v1" } else { "v2" };
        Ok(format!(
            "pids cgroup {version} under {}: each sandbox's process count is capped",
            own_dir.display()
        ))
    }

    /// Where the groups are created.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Creates the group for one sandbox, limited to `max` processes.
    ///
    /// # Errors
    /// The file system error, naming the path.
    pub fn create(&self, name: &str, max: u64) -> Result<SandboxCgroup, String> {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(64)
            .collect();
        let n = NEXT_GROUP.fetch_add(1, Ordering::Relaxed);
        let dir = self.base.join(format!("{safe}-{n}"));
        mkdir(&dir)?;
        let made = (|| {
            write(&dir.join("pids.max"), &max.to_string())?;
            let procs_path = dir.join("cgroup.procs");
            // std opens with O_CLOEXEC: the descriptor is gone once bubblewrap is executed.
            let procs = OpenOptions::new()
                .write(true)
                .open(&procs_path)
                .map_err(|e| format!("cannot open {}: {e}", procs_path.display()))?;
            Ok(OwnedFd::from(procs))
        })();
        match made {
            Ok(procs) => Ok(SandboxCgroup {
                dir,
                procs: Some(procs),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// `v1` or `v2`, for logs and the doctor.
    pub fn version(&self) -> &'static str {
        match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

impl SandboxCgroup {
    /// The descriptor of `cgroup.procs`: writing `0` to it moves the writing process in.
    pub fn procs_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The sandbox's first process has been started (and joined): its descendants stay in
    /// the group by inheritance, so the descriptor is no longer needed.
    pub fn joined(&mut self) {
        self.procs = None;
    }

    /// The group's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many processes are in the group now.
    pub fn current(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes the group, waiting briefly for its last processes to be reaped (the kernel
    /// refuses to remove a group that still has some).
    pub async fn remove(&self) {
        for _ in 0..50 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        tracing::warn!(group = %self.dir.display(), "sandbox pids group still busy; left in place");
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        // Best effort: `remove` already ran after a normal exit.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The hierarchy to use and the gateway's own group in it, from `/proc/self/cgroup` and the
/// unified root's `cgroup.controllers` (absent when `/sys/fs/cgroup` is not cgroup2).
fn locate(
    proc_self_cgroup: &str,
    v2_controllers: Option<&str>,
) -> Result<(Version, PathBuf), String> {
    let mut v2_path = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "pids") {
            let root = Path::new(CGROUP_ROOT).join("pids");
            return Ok((Version::V1, root.join(path.trim_start_matches('/'))));
        }
        if controllers.is_empty() {
            v2_path = Some(path);
        }
    }
    match (v2_path, v2_controllers) {
        (Some(path), Some(controllers)) if controllers.split_whitespace().any(|c| c == "pids") => {
            Ok((
                Version::V2,
                Path::new(CGROUP_ROOT).join(path.trim_start_matches('/')),
            ))
        }
        (Some(_), Some(_)) => Err("the cgroup v2 hierarchy has no pids controller".into()),
        _ => Err("no pids cgroup controller is mounted".into()),
    }
}

/// cgroup v2: moves the gateway into a leaf of its own group (unless it is the root, which
/// may have processes and controlled children at once) and enables `pids` for children.
fn prepare_v2(own: &Path) -> Result<PathBuf, String> {
    if own != Path::new(CGROUP_ROOT) {
        let leaf = own.join("boxedclaw-gateway");
        mkdir(&leaf)?;
        // `0`: the writing process, with all its threads.
        write(&leaf.join("cgroup.procs"), "0")?;
    }
    write(&own.join("cgroup.subtree_control"), "+pids")
        .map_err(|e| format!("{e} (with systemd, give the service Delegate=pids)"))?;
    Ok(own.join("boxedclaw-sandboxes"))
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
    fn v1_uses_the_pids_hierarchy_and_the_gateways_own_group() {
        let own = "12:pids:/system.slice/boxedclaw.service\n4:memory:/x\n0::/system.slice/boxedclaw.service\n";
        let (v, dir) = locate(own, None).unwrap();
        assert_eq!(v, Version::V1);
        assert_eq!(
            dir,
            Path::new("/sys/fs/cgroup/pids/system.slice/boxedclaw.service")
        );
        // A combined v1 line counts too.
        let (v, dir) = locate("3:cpu,pids:/\n", None).unwrap();
        assert_eq!(
            (v, dir),
            (Version::V1, PathBuf::from("/sys/fs/cgroup/pids/"))
        );
    }

    #[test]
    fn v2_needs_the_pids_controller_in_the_unified_root() {
        let own = "0::/system.slice/boxedclaw.service\n";
        let (v, dir) = locate(own, Some("cpuset cpu io memory pids\n")).unwrap();
        assert_eq!(v, Version::V2);
        assert_eq!(
            dir,
            Path::new("/sys/fs/cgroup/system.slice/boxedclaw.service")
        );
        let e = locate(own, Some("cpu memory\n")).unwrap_err();
        assert!(e.contains("no pids controller"), "{e}");
        let e = locate(own, None).unwrap_err();
        assert!(e.contains("no pids cgroup controller"), "{e}");
        assert!(locate("", None).is_err());
    }
}
