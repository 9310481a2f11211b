//! The file tools: `file_read`, `file_write`, `file_list`, `file_delete`.
//!
//! Every path goes through [`confine::parse`] and every open through [`Workspace::open_beneath`], so
//! nothing here can reach outside the workspace or into the agent's state directory.

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::confine::{self, DIR_PATH, Workspace, errno_text};

/// Entries `file_list` shows at most.
pub(crate) const MAX_LIST_ENTRIES: usize = 1000;

/// Reads a file, keeping at most `cap` bytes.
pub(crate) fn read(ws: &Workspace, path: &str, cap: usize) -> Result<String, String> {
    let comps = confine::parse(path, false)?;
    let (name, parents) = comps.split_last().ok_or("refused: no file name")?;
    guarded_parent(ws, parents, name)?;
    // Non-blocking so a FIFO cannot hang the agent; regular files ignore the flag.
    let fd = ws
        .open_beneath(&comps, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())
        .map_err(errno_text)?;
    let st = rustix::fs::fstat(&fd).map_err(errno_text)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(format!("{path} is not a regular file"));
    }
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    let mut buf = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0).min(cap));
    File::from(fd)
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let truncated = buf.len() > cap;
    let total = u64::try_from(st.st_size).unwrap_or(0).max(buf.len() as u64);
    buf.truncate(cap);
    let mut out = match String::from_utf8(buf) {
        Ok(text) => text,
        // A cut in the middle of the last character is not binary content.
        Err(e) if truncated && e.utf8_error().error_len().is_none() => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).unwrap_or_default()
        }
        Err(e) => format!(
            "[binary file: not valid UTF-8, shown with replacement characters]\n{}",
            String::from_utf8_lossy(e.as_bytes())
        ),
    };
    if out.is_empty() && !truncated {
        out.push_str("[empty file]");
    }
    if truncated {
        out.push_str(&format!("\n[truncated: {total} bytes total]"));
    }
    Ok(out)
}

/// Opens the directory holding `name` (confined to the workspace) and refuses names that
/// reach the agent's own state.
fn guarded_parent(ws: &Workspace, parents: &[&str], name: &str) -> Result<OwnedFd, String> {
    let parent = ws
        .open_beneath(parents, DIR_PATH, Mode::empty())
        .map_err(errno_text)?;
    ws.guard(&parent, Some(name))?;
    Ok(parent)
}

/// Creates or replaces a file (mode 0644), creating missing parent directories.
pub(crate) fn write(ws: &Workspace, path: &str, content: &str) -> Result<String, String> {
    let comps = confine::parse(path, false)?;
    let (name, parents) = comps.split_last().ok_or("refused: no file name")?;
    let parent = make_dirs(ws, parents)?;
    ws.guard(&parent, Some(name))?;
    // Write a temporary file and rename it over the target: a reader never sees half a file,
    // and a symlink at the target is replaced rather than written through.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        ".boxedclaw-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let fd = open_in(
        &parent,
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        0o644,
    )
    .map_err(errno_text)?;
    let written = (|| {
        let mut file = File::from(fd);
        file.write_all(content.as_bytes())
            .map_err(|e| e.to_string())?;
        // The process umask must not decide the mode the tool promises.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644)).map_err(errno_text)?;
        rustix::fs::renameat(&parent, tmp.as_str(), &parent, *name).map_err(errno_text)
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
        return Err(format!("cannot write {path}: {e}"));
    }
    Ok(format!("wrote {} bytes to {path}", content.len()))
}

/// Opens (creating as needed) each directory of `comps`, level by level, each one resolved
/// from the workspace root so a symlink at any level is confined like any other path.
fn make_dirs(ws: &Workspace, comps: &[&str]) -> Result<OwnedFd, String> {
    let mut dir = ws
        .open_beneath(&[], DIR_PATH, Mode::empty())
        .map_err(errno_text)?;
    for (i, comp) in comps.iter().enumerate() {
        let prefix = comps.get(..=i).unwrap_or(comps);
        dir = match ws.open_beneath(prefix, DIR_PATH, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, *comp, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(format!("cannot create directory {comp}: {}", errno_text(e)));
                    }
                }
                ws.open_beneath(prefix, DIR_PATH, Mode::empty())
                    .map_err(errno_text)?
            }
            Err(e) => return Err(errno_text(e)),
        };
    }
    Ok(dir)
}

/// Opens one plain name inside an already confined directory.
fn open_in(dir: impl AsFd, name: &str, flags: OFlags, mode: u32) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        name,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
}

/// Lists a directory: sorted, `/` after directories, `@` after symlinks, at most
/// [`MAX_LIST_ENTRIES`] entries and about `cap` bytes.
pub(crate) fn list(ws: &Workspace, path: &str, cap: usize) -> Result<String, String> {
    let comps = confine::parse(path, true)?;
    if let Some((name, parents)) = comps.split_last() {
        guarded_parent(ws, parents, name)?;
    }
    let fd = ws
        .open_beneath(&comps, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(errno_text)?;
    ws.guard(&fd, None)?;
    let at_root = ws.is_root(&fd);
    let mut dir = Dir::new(fd).map_err(errno_text)?;
    // Keep only the smallest names: a huge directory costs time, not memory.
    let mut kept: BinaryHeap<String> = BinaryHeap::new();
    let mut total = 0usize;
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(errno_text)?;
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." || (at_root && raw == confine::STATE_DIR.as_bytes()) {
            continue;
        }
        let mut kind = entry.file_type();
        if kind == FileType::Unknown {
            let dfd = dir.fd().map_err(errno_text)?;
            kind = rustix::fs::statat(dfd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))
                .unwrap_or(FileType::Unknown);
        }
        let lossy = String::from_utf8_lossy(raw);
        // A newline in a name must not forge a line of the listing.
        let mut shown: String = if lossy.chars().any(char::is_control) {
            lossy.escape_debug().collect()
        } else {
            lossy.into_owned()
        };
        match kind {
            FileType::Directory => shown.push('/'),
            FileType::Symlink => shown.push('@'),
            _ => {}
        }
        total += 1;
        kept.push(shown);
        if kept.len() > MAX_LIST_ENTRIES {
            kept.pop();
        }
    }
    if total == 0 {
        return Ok("[empty directory]".to_owned());
    }
    let mut out = String::new();
    let mut shown = 0usize;
    for name in kept.into_sorted_vec() {
        if out.len() + name.len() + 1 > cap {
            break;
        }
        out.push_str(&name);
        out.push('\n');
        shown += 1;
    }
    if shown < total {
        out.push_str(&format!(
            "[listing truncated: showing {shown} of {total} entries]\n"
        ));
    }
    Ok(out)
}

/// Deletes a file, a symlink (never its target) or an empty directory.
pub(crate) fn delete(ws: &Workspace, path: &str) -> Result<String, String> {
    let comps = confine::parse(path, false)?;
    let (name, parents) = comps.split_last().ok_or("refused: no file name")?;
    let parent = guarded_parent(ws, parents, name)?;
    match rustix::fs::unlinkat(&parent, *name, AtFlags::empty()) {
        Ok(()) => Ok(format!("deleted {path}")),
        Err(Errno::ISDIR) => rustix::fs::unlinkat(&parent, *name, AtFlags::REMOVEDIR)
            .map(|()| format!("deleted empty directory {path}"))
            .map_err(|e| format!("cannot delete {path}: {}", errno_text(e))),
        Err(e) => Err(format!("cannot delete {path}: {}", errno_text(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::Path;

    struct Fixture {
        dir: tempfile::TempDir,
        outside: tempfile::TempDir,
        ws: Workspace,
    }

    /// A workspace with `sub/f.txt`, `l -> /`, `out -> <outside dir>`, `inside -> sub`,
    /// `st -> .boxedclaw`, and an outside dir holding `secret`.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "top secret").unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f.txt"), "hello").unwrap();
        symlink("/", root.join("l")).unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        symlink("sub", root.join("inside")).unwrap();
        let ws = Workspace::open(root).unwrap();
        symlink(".boxedclaw", root.join("st")).unwrap();
        std::fs::write(root.join(".boxedclaw/memory.jsonl"), "").unwrap();
        Fixture { dir, outside, ws }
    }

    fn outside_untouched(f: &Fixture) {
        let names: Vec<_> = std::fs::read_dir(f.outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        assert_eq!(
            std::fs::read_to_string(f.outside.path().join("secret")).unwrap(),
            "top secret"
        );
    }

    #[test]
    fn escaping_paths_are_refused_by_every_tool() {
        let f = fixture();
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "a\0b",
            "l/etc/passwd",
            "out/secret",
            "out/new",
            ".boxedclaw/memory.jsonl",
            "st/memory.jsonl",
            "inside/../../x",
        ] {
            assert!(read(&f.ws, bad, 1024).is_err(), "read {bad:?}");
            assert!(write(&f.ws, bad, "pwned").is_err(), "write {bad:?}");
            assert!(list(&f.ws, bad, 1024).is_err(), "list {bad:?}");
            assert!(delete(&f.ws, bad).is_err(), "delete {bad:?}");
        }
        for dir in ["l", "l/etc", "out", ".boxedclaw", "st", "/"] {
            assert!(list(&f.ws, dir, 1024).is_err(), "list {dir:?}");
        }
        assert!(delete(&f.ws, ".boxedclaw").is_err());
        assert!(delete(&f.ws, "inside/../.boxedclaw").is_err());
        outside_untouched(&f);
        assert!(f.dir.path().join(".boxedclaw/memory.jsonl").exists());
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn a_state_dir_reached_through_a_dir_symlink_is_refused() {
        let f = fixture();
        // `me -> .` makes `me/.boxedclaw` the state dir without naming it first.
        symlink(".", f.dir.path().join("me")).unwrap();
        assert!(read(&f.ws, "me/.boxedclaw/memory.jsonl", 1024).is_err());
        assert!(list(&f.ws, "me/.boxedclaw", 1024).is_err());
        assert!(write(&f.ws, "me/.boxedclaw", "x").is_err());
        assert!(delete(&f.ws, "me/.boxedclaw").is_err());
        assert!(!list(&f.ws, "me", 1024).unwrap().contains(".boxedclaw"));
    }

    #[test]
    fn symlinks_that_stay_inside_work_for_every_tool() {
        let f = fixture();
        assert_eq!(read(&f.ws, "inside/f.txt", 1024).unwrap(), "hello");
        assert_eq!(
            write(&f.ws, "inside/new.txt", "abc").unwrap(),
            "wrote 3 bytes to inside/new.txt"
        );
        assert_eq!(
            std::fs::read_to_string(f.dir.path().join("sub/new.txt")).unwrap(),
            "abc"
        );
        assert_eq!(list(&f.ws, "inside", 1024).unwrap(), "f.txt\nnew.txt\n");
        assert!(delete(&f.ws, "inside/new.txt").is_ok());
        assert!(!f.dir.path().join("sub/new.txt").exists());
    }

    #[test]
    fn deleting_a_symlink_leaves_its_target() {
        let f = fixture();
        delete(&f.ws, "out").unwrap();
        delete(&f.ws, "inside").unwrap();
        assert!(!f.dir.path().join("out").exists() && !f.dir.path().join("inside").exists());
        assert_eq!(
            std::fs::read_to_string(f.dir.path().join("sub/f.txt")).unwrap(),
            "hello"
        );
        outside_untouched(&f);
    }

    #[test]
    fn writing_a_symlink_name_replaces_the_link_not_its_target() {
        let f = fixture();
        symlink(f.outside.path().join("secret"), f.dir.path().join("s")).unwrap();
        write(&f.ws, "s", "new").unwrap();
        assert!(
            !std::fs::symlink_metadata(f.dir.path().join("s"))
                .unwrap()
                .is_symlink()
        );
        outside_untouched(&f);
    }

    #[test]
    fn write_creates_parents_with_the_promised_modes() {
        let f = fixture();
        assert_eq!(
            write(&f.ws, "a/b/c.txt", "x").unwrap(),
            "wrote 1 bytes to a/b/c.txt"
        );
        let path = f.dir.path().join("a/b/c.txt");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        write(&f.ws, "a/b/c.txt", "replaced").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "replaced");
        assert!(
            write(&f.ws, "sub", "x").is_err(),
            "a directory is not replaced"
        );
        assert!(write(&f.ws, "sub/f.txt/x", "x").is_err());
        let leftovers = std::fs::read_dir(f.dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".boxedclaw-tmp")
        });
        assert_eq!(leftovers.count(), 0);
    }

    #[test]
    fn read_caps_marks_binary_and_refuses_fifos() {
        let f = fixture();
        std::fs::write(f.dir.path().join("big"), "é".repeat(100)).unwrap();
        let out = read(&f.ws, "big", 11).unwrap();
        assert_eq!(
            out,
            format!("{}\n[truncated: 200 bytes total]", "é".repeat(5))
        );
        std::fs::write(f.dir.path().join("bin"), [0xff, 0xfe, b'a']).unwrap();
        assert!(read(&f.ws, "bin", 100).unwrap().starts_with("[binary file"));
        std::fs::write(f.dir.path().join("empty"), "").unwrap();
        assert_eq!(read(&f.ws, "empty", 100).unwrap(), "[empty file]");
        let root = rustix::fs::open(f.dir.path(), OFlags::PATH, Mode::empty()).unwrap();
        rustix::fs::mknodat(&root, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        assert!(
            read(&f.ws, "fifo", 100)
                .unwrap_err()
                .contains("not a regular file")
        );
        assert!(read(&f.ws, "sub", 100).is_err());
    }

    #[test]
    fn list_is_sorted_marked_hides_state_and_is_capped() {
        let f = fixture();
        let out = list(&f.ws, ".", 1 << 20).unwrap();
        assert_eq!(out, "inside@\nl@\nout@\nst@\nsub/\n");
        assert_eq!(list(&f.ws, "", 1 << 20).unwrap(), out);
        for i in 0..1005 {
            std::fs::write(f.dir.path().join(format!("sub/{i:04}")), "").unwrap();
        }
        let out = list(&f.ws, "sub", 1 << 20).unwrap();
        assert!(out.starts_with("0000\n0001\n"));
        assert!(
            out.ends_with("[listing truncated: showing 1000 of 1006 entries]\n"),
            "{out}"
        );
        let out = list(&f.ws, "sub", 50).unwrap();
        assert!(
            out.ends_with("[listing truncated: showing 10 of 1006 entries]\n"),
            "{out}"
        );
        std::fs::create_dir(f.dir.path().join("odd")).unwrap();
        std::fs::write(f.dir.path().join("odd/a\nb"), "").unwrap();
        std::fs::write(f.dir.path().join("odd/it's \"q\""), "").unwrap();
        assert_eq!(list(&f.ws, "odd", 1 << 20).unwrap(), "a\\nb\nit's \"q\"\n");
    }

    #[test]
    fn delete_removes_files_and_empty_dirs_only() {
        let f = fixture();
        std::fs::create_dir(f.dir.path().join("empty")).unwrap();
        assert_eq!(
            delete(&f.ws, "empty").unwrap(),
            "deleted empty directory empty"
        );
        assert!(delete(&f.ws, "sub").unwrap_err().contains("not empty"));
        assert_eq!(delete(&f.ws, "sub/f.txt").unwrap(), "deleted sub/f.txt");
        assert!(
            delete(&f.ws, "sub/f.txt")
                .unwrap_err()
                .contains("no such file")
        );
        assert!(delete(&f.ws, ".").is_err());
    }
}
