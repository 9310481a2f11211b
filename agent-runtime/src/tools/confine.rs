//! Keeping file tools inside the workspace.
//!
//! Two layers. First a lexical check of the model's path: relative, no `..`, no NUL, not into
//! the agent's own state directory. Then every open goes through `openat2` from the workspace
//! root with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so the kernel refuses any resolution —
//! through a symlink, a `/proc` magic link or a rename race — that would leave the workspace.
//! Symlinks that stay inside are followed. There is no fallback to plain `open`: a kernel
//! without `openat2` makes the file tools refuse to work.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The agent's own state directory at the workspace root; invisible to the file tools.
pub(crate) const STATE_DIR: &str = ".boxedclaw";

/// Flags for a directory used only as an anchor for `*at` calls.
pub(crate) const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// Identity of an open file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of `fd`.
    pub(crate) fn of(fd: impl AsFd) -> Result<Self, Errno> {
        let st = rustix::fs::fstat(fd)?;
        Ok(Self {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// The workspace: its path (for the shell's cwd) and a descriptor every file tool resolves
/// against, opened once.
#[derive(Debug)]
pub(crate) struct Workspace {
    path: PathBuf,
    root: OwnedFd,
    root_id: FileId,
    state: OwnedFd,
    state_id: FileId,
}

impl Workspace {
    /// Opens the workspace at `path` and creates its state directory (mode 0700).
    ///
    /// # Errors
    /// A message when the workspace is not a directory or the state directory cannot be
    /// created, or is not a plain directory (a symlink there is refused).
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let what = |e: Errno, doing: &str| format!("{doing} {}: {}", path.display(), errno_text(e));
        let root = rustix::fs::open(path, DIR_PATH, Mode::empty())
            .map_err(|e| what(e, "opening workspace"))?;
        match rustix::fs::mkdirat(&root, STATE_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(what(e, "creating .boxedclaw in")),
        }
        // The state directory itself must be a real directory: the shell could have replaced
        // it with a symlink, and memory must not be written through one. One path component
        // with NOFOLLOW cannot leave the root, so plain openat suffices and the agent (if not
        // its file tools) still runs on kernels without openat2.
        let state = rustix::fs::openat(
            &root,
            STATE_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| what(e, "opening .boxedclaw in"))?;
        rustix::fs::fchmod(&state, Mode::from_raw_mode(0o700))
            .map_err(|e| what(e, "restricting .boxedclaw in"))?;
        Ok(Self {
            path: path.to_owned(),
            root_id: FileId::of(&root).map_err(|e| what(e, "inspecting"))?,
            state_id: FileId::of(&state).map_err(|e| what(e, "inspecting .boxedclaw in"))?,
            root,
            state,
        })
    }

    /// The workspace path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory, for the agent's own files.
    pub(crate) fn state_dir(&self) -> BorrowedFd<'_> {
        self.state.as_fd()
    }

    /// Whether `fd` is the workspace root.
    pub(crate) fn is_root(&self, fd: impl AsFd) -> bool {
        FileId::of(fd).is_ok_and(|id| id == self.root_id)
    }

    /// Opens `comps` (from [`parse`]; empty means the root) beneath the workspace root.
    pub(crate) fn open_beneath(
        &self,
        comps: &[&str],
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, Errno> {
        let joined = if comps.is_empty() {
            ".".to_owned()
        } else {
            comps.join("/")
        };
        // openat2 refuses flags that mean nothing for the open (EINVAL), e.g. NOCTTY with PATH.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        retry(|| {
            rustix::fs::openat2(
                &self.root,
                joined.as_str(),
                flags,
                mode,
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            )
        })
    }

    /// Refuses `dir` when it is the state directory, or when `name` inside it would be.
    /// The lexical check misses paths that reach the state directory through a symlink
    /// (`link -> .boxedclaw`); this catches them by identity.
    pub(crate) fn guard(&self, dir: impl AsFd, name: Option<&str>) -> Result<(), String> {
        let id = FileId::of(&dir).map_err(errno_text)?;
        if id == self.state_id || (id == self.root_id && name == Some(STATE_DIR)) {
            return Err(state_refusal());
        }
        Ok(())
    }
}

/// `openat2` may fail with `EAGAIN` when a rename raced with the resolution; trying again is
/// the documented answer.
fn retry(mut f: impl FnMut() -> Result<OwnedFd, Errno>) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match f() {
            Err(Errno::AGAIN | Errno::INTR) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

fn state_refusal() -> String {
    format!("refused: {STATE_DIR} holds the agent's own state and is not accessible to tools")
}

/// Checks the model's `path` and splits it into components (`.` and empty ones dropped).
/// An empty result means the workspace root, allowed only when `allow_root`.
///
/// # Errors
/// A message for the model when the path is empty, absolute, contains NUL or a `..`
/// component, or points into the state directory.
pub(crate) fn parse(path: &str, allow_root: bool) -> Result<Vec<&str>, String> {
    if path.contains('\0') {
        return Err("refused: the path contains a NUL byte".to_owned());
    }
    if path.is_empty() && !allow_root {
        return Err("refused: the path is empty".to_owned());
    }
    if path.starts_with('/') {
        return Err(
            "refused: absolute paths are not allowed; use a path relative to the \
                    workspace"
                .to_owned(),
        );
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err("refused: '..' is not allowed in paths".to_owned());
    }
    if comps.first() == Some(&STATE_DIR) {
        return Err(state_refusal());
    }
    if comps.is_empty() && !allow_root {
        return Err("refused: the path names the workspace root, not a file".to_owned());
    }
    Ok(comps)
}

/// A short, model-readable text for an error number.
pub(crate) fn errno_text(e: Errno) -> String {
    match e {
        Errno::NOSYS => "refused: this kernel lacks openat2(2), which the agent needs to keep \
                         file access inside the workspace (Linux 5.6 or newer)"
            .to_owned(),
        Errno::XDEV => "refused: the path leads outside the workspace".to_owned(),
        Errno::LOOP => "refused: too many symlinks, a symlink loop, or a link the agent may \
                        not follow"
            .to_owned(),
        Errno::NOENT => "no such file or directory".to_owned(),
        Errno::NOTDIR => "a component of the path is not a directory".to_owned(),
        Errno::ISDIR => "is a directory".to_owned(),
        Errno::NOTEMPTY => "directory not empty".to_owned(),
        Errno::ACCESS | Errno::PERM => "permission denied".to_owned(),
        Errno::NAMETOOLONG => "name too long".to_owned(),
        Errno::NOSPC | Errno::DQUOT => "no space left in the workspace".to_owned(),
        Errno::ROFS => "read-only file system".to_owned(),
        other => std::io::Error::from(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_checks() {
        assert_eq!(parse("a/./b//c/", false).unwrap(), ["a", "b", "c"]);
        assert_eq!(parse("./.", true).unwrap(), Vec::<&str>::new());
        assert!(parse(".", false).is_err());
        assert!(parse("", false).is_err());
        assert!(parse("", true).unwrap().is_empty());
        for bad in [
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "a\0b",
            ".boxedclaw/memory.jsonl",
            "./.boxedclaw",
            ".boxedclaw",
        ] {
            assert!(parse(bad, true).is_err(), "{bad:?}");
        }
        // Only the root's state directory is special.
        assert!(parse("sub/.boxedclaw", false).is_ok());
    }

    #[test]
    fn state_dir_is_private_and_must_not_be_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join(STATE_DIR)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert!(ws.guard(ws.state_dir(), None).is_err());
        drop(ws);

        let other = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(other.path(), dir.path().join(STATE_DIR)).unwrap();
        assert!(Workspace::open(dir.path()).is_err());
    }
}
