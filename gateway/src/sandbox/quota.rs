//! Disk quotas for workspaces: each conversation's workspace is a filesystem of its own.
//!
//! An agent with a shell can fill whatever its `/workspace` lives on (`dd`, or ten million
//! empty files), and per-file limits (`RLIMIT_FSIZE`) do not bound the sum. So, where the host
//! allows it (a root gateway with loop devices and `mkfs.ext4`), every workspace is an ext4
//! filesystem in a sparse image file under `<data_dir>/workspace-images/`, loop-mounted on the
//! workspace directory. Its size bounds the bytes and its inode table bounds the number of
//! files, for the namespace backend and for BoxLite's virtio-fs share alike; the host's own
//! free space and inodes are never at stake. A sparse image costs the host only what the
//! agent actually wrote.
//!
//! The images are mounted when a conversation's agent first starts and unmounted when the
//! gateway stops, so the gateway leaves no mounts behind; a mount left by a gateway that
//! crashed is found (the directory is on another device than its parent) and reused.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::process::Command;

/// Bytes of workspace per inode: 1 GiB of quota allows 65 536 files and directories.
const BYTES_PER_INODE: u64 = 16 * 1024;
/// The smallest quota: ext4's journal alone takes 1 MiB, and an agent needs room to work.
pub const MIN_QUOTA_BYTES: u64 = 16 << 20;
/// Where the programs are looked for (not through PATH, which is configuration the gateway
/// does not trust for picking what runs as root).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How full a workspace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceUsage {
    /// Bytes the agent can still write.
    pub available_bytes: u64,
    /// The quota (the image's size; the filesystem's own metadata takes some of it).
    pub quota_bytes: u64,
    /// Files and directories that can still be created.
    pub free_inodes: u64,
}

impl WorkspaceUsage {
    /// Whether the agent can hardly write any more: no inode, or under 1% of the quota (at
    /// least 1 MiB) left. ext4 refuses writes while reporting a little space free (its
    /// reserve for metadata), so "nothing left" is never seen.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.free_inodes == 0 || self.available_bytes < (self.quota_bytes / 100).max(1 << 20)
    }
}

/// Makes, mounts and unmounts the per-workspace filesystems.
#[derive(Debug)]
pub struct WorkspaceQuotas {
    images: PathBuf,
    bytes: u64,
    mkfs: PathBuf,
    fsck: PathBuf,
    resize: PathBuf,
    mount: PathBuf,
    umount: PathBuf,
    /// Workspaces this gateway has mounted (or found mounted), to unmount at the end.
    mounted: Mutex<BTreeSet<PathBuf>>,
}

/// Why a workspace could not get its quota.
#[derive(Debug, thiserror::Error)]
#[error("workspace quota for {}: {why}", workspace.display())]
pub struct QuotaError {
    workspace: PathBuf,
    why: String,
}

impl WorkspaceQuotas {
    /// Checks that this host lets the gateway make and mount filesystems, by making and
    /// mounting a small one in `data_dir`; `bytes` is each workspace's size.
    ///
    /// # Errors
    /// Why workspaces cannot have quotas here (not root, no loop devices, a missing program,
    /// a refused mount), to be logged and shown by `boxedclaw doctor`.
    pub async fn probe(data_dir: &Path, bytes: u64) -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("the gateway is not running as root, so it cannot mount a \
                        filesystem per workspace"
                .into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("no loop devices (/dev/loop-control is missing)".into());
        }
        let find = |name: &str| {
            SBIN.iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| format!("{name} not found (Debian: e2fsprogs, mount)"))
        };
        let quotas = Self {
            images: data_dir.join("workspace-images"),
            bytes,
            mkfs: find("mkfs.ext4")?,
            fsck: find("e2fsck")?,
            resize: find("resize2fs")?,
            mount: find("mount")?,
            umount: find("umount")?,
            mounted: Mutex::new(BTreeSet::new()),
        };
        let trial = data_dir.join("workspace-images").join(".probe");
        let _ = std::fs::remove_dir_all(&trial);
        std::fs::create_dir_all(&trial)
            .map_err(|e| format!("cannot create {}: {e}", trial.display()))?;
        let result = async {
            let dir = trial.join("mnt");
            std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
            let image = trial.join("probe.img");
            quotas
                .make_image(&image, MIN_QUOTA_BYTES, None)
                .await
                .map_err(|e| e.why)?;
            quotas.mount_image(&image, &dir).await.map_err(|e| e.why)?;
            quotas.unmount(&dir);
            Ok(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&trial);
        result.map(|()| quotas)
    }

    /// One line for logs and the doctor.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "each workspace is its own {} MiB ext4 filesystem ({} files at most), images in {}",
            self.bytes >> 20,
            self.bytes / BYTES_PER_INODE,
            self.images.display()
        )
    }

    /// Makes sure `workspace` is its conversation's own filesystem: creates the image on first
    /// use (with whatever the directory already holds) and mounts it.
    ///
    /// # Errors
    /// [`QuotaError`] when the image cannot be made or mounted; the agent must not start
    /// then, or it would write to the host's disk without a bound.
    pub async fn prepare(&self, workspace: &Path) -> Result<(), QuotaError> {
        let error = |why: String| QuotaError {
            workspace: workspace.to_path_buf(),
            why,
        };
        if is_mount_point(workspace).map_err(|e| error(e.to_string()))? {
            self.remember(workspace);
            return Ok(());
        }
        let name = workspace
            .file_name()
            .ok_or_else(|| error("no directory name".into()))?;
        let mut image = self.images.join(name);
        image.as_mut_os_string().push(".img");
        if !image.exists() {
            std::fs::create_dir_all(&self.images)
                .map_err(|e| error(format!("{}: {e}", self.images.display())))?;
            let populated = std::fs::read_dir(workspace)
                .map_err(|e| error(e.to_string()))?
                .next()
                .is_some();
            // Made under a temporary name and renamed: a crash never leaves half an image.
            let mut partial = image.clone();
            partial.as_mut_os_string().push(".partial");
            self.make_image(&partial, self.bytes, populated.then_some(workspace))
                .await?;
            std::fs::rename(&partial, &image).map_err(|e| error(e.to_string()))?;
        } else {
            self.grow(&image).await.map_err(error)?;
        }
        self.mount_image(&image, workspace).await?;
        self.remember(workspace);
        // A fresh filesystem's root belongs to root with mode 0755: make it the private
        // directory the workspace was, and drop `lost+found`, which is only clutter to an agent.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(workspace, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| error(e.to_string()))?;
        let _ = std::fs::remove_dir(workspace.join("lost+found"));
        Ok(())
    }

    /// How full `workspace` is, when it is one of ours and mounted.
    #[must_use]
    pub fn usage(&self, workspace: &Path) -> Option<WorkspaceUsage> {
        if !self.lock().contains(workspace) {
            return None;
        }
        let s = rustix::fs::statvfs(workspace).ok()?;
        Some(WorkspaceUsage {
            available_bytes: s.f_bavail * s.f_frsize,
            quota_bytes: self.bytes,
            free_inodes: s.f_favail,
        })
    }

    /// Unmounts every workspace this gateway mounted (lazily: a process still inside one
    /// keeps it until it exits, and the loop device goes with the last user).
    pub fn release_all(&self) {
        let mounted = std::mem::take(&mut *self.lock());
        for workspace in mounted {
            self.unmount(&workspace);
        }
    }

    fn remember(&self, workspace: &Path) {
        self.lock().insert(workspace.to_path_buf());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.mounted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn make_image(
        &self,
        image: &Path,
        bytes: u64,
        contents: Option<&Path>,
    ) -> Result<(), QuotaError> {
        let error = |why: String| QuotaError {
            workspace: contents.unwrap_or(image).to_path_buf(),
            why,
        };
        let file = std::fs::File::create(image).map_err(|e| error(e.to_string()))?;
        // Sparse: the host's disk holds only what is written.
        file.set_len(bytes).map_err(|e| error(e.to_string()))?;
        drop(file);
        let mut cmd = Command::new(&self.mkfs);
        cmd.args(["-q", "-F", "-t", "ext4", "-m", "0"])
            .args(["-i", &BYTES_PER_INODE.to_string()])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"]);
        if let Some(dir) = contents {
            cmd.arg("-d").arg(dir);
        }
        cmd.arg(image);
        let result = run(cmd).await.map_err(error);
        if result.is_err() {
            let _ = std::fs::remove_file(image);
        }
        result
    }

    /// Grows an unmounted image to the configured size when the quota was raised since it was
    /// made (never shrinks one: that could lose files).
    async fn grow(&self, image: &Path) -> Result<(), String> {
        let len = std::fs::metadata(image).map_err(|e| e.to_string())?.len();
        if len >= self.bytes {
            return Ok(());
        }
        tracing::info!(image = %image.display(), from = len, to = self.bytes, "growing workspace filesystem");
        std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .and_then(|f| f.set_len(self.bytes))
            .map_err(|e| e.to_string())?;
        // resize2fs insists on a freshly checked filesystem; -p repairs only what is safe.
        let mut check = Command::new(&self.fsck);
        check.args(["-f", "-p"]).arg(image);
        // Exit code 1: errors were found and corrected, which is what -p is for.
        run_allowing(check, &[0, 1]).await?;
        let mut resize = Command::new(&self.resize);
        resize.arg(image);
        run(resize).await
    }

    async fn mount_image(&self, image: &Path, dir: &Path) -> Result<(), QuotaError> {
        let mut cmd = Command::new(&self.mount);
        cmd.args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(image)
            .arg(dir);
        run(cmd).await.map_err(|why| QuotaError {
            workspace: dir.to_path_buf(),
            why,
        })
    }

    fn unmount(&self, dir: &Path) {
        // Synchronous on purpose: this also runs from `Drop`, when no runtime may be left.
        match std::process::Command::new(&self.umount)
            .arg("-l")
            .arg(dir)
            .env_clear()
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(
                workspace = %dir.display(),
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "could not unmount workspace"
            ),
            Err(e) => {
                tracing::warn!(workspace = %dir.display(), error = %e, "could not run umount")
            }
        }
    }
}

impl Drop for WorkspaceQuotas {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Whether `dir` is the root of a mounted filesystem (it sits on another device than its
/// parent).
///
/// # Errors
/// When `dir` or its parent cannot be looked at.
pub fn is_mount_point(dir: &Path) -> std::io::Result<bool> {
    let parent = dir.parent().unwrap_or(dir);
    Ok(std::fs::metadata(dir)?.dev() != std::fs::metadata(parent)?.dev())
}

/// Runs a program with an empty environment; its stderr becomes the error.
async fn run(cmd: Command) -> Result<(), String> {
    run_allowing(cmd, &[0]).await
}

/// [`run`], accepting the exit codes `ok`.
async fn run_allowing(mut cmd: Command, ok: &[i32]) -> Result<(), String> {
    let out = cmd
        .env_clear()
        .output()
        .await
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.as_std().get_program()))?;
    if out.status.code().is_some_and(|c| ok.contains(&c)) {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed ({}): {}",
            cmd.as_std().get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn full_means_no_inode_or_under_one_percent_and_one_mib_left() {
        const MIB: u64 = 1 << 20;
        let usage = |available_bytes, quota_bytes, free_inodes| WorkspaceUsage {
            available_bytes,
            quota_bytes,
            free_inodes,
        };
        assert!(!usage(8 * MIB, 16 * MIB, 10).is_full());
        assert!(!usage(MIB, 16 * MIB, 10).is_full());
        assert!(usage(MIB - 1, 16 * MIB, 10).is_full());
        assert!(usage(163 * 1024, 16 * MIB, 10).is_full());
        assert!(!usage(11 * MIB, 1024 * MIB, 10).is_full());
        assert!(usage(10 * MIB, 1024 * MIB, 10).is_full());
        assert!(
            usage(8 * MIB, 16 * MIB, 0).is_full(),
            "no inode left is full"
        );
    }

    #[test]
    fn a_directory_on_its_parents_device_is_not_a_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ws");
        std::fs::create_dir(&sub).unwrap();
        assert!(!is_mount_point(&sub).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
    }
}
