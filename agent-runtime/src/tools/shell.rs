//! The `shell` tool: `sh -c` in the workspace, with a deadline, bounded output and no
//! survivors.
//!
//! The command runs in its own process group. When the shell exits or the deadline passes,
//! the whole group gets SIGKILL, so `cmd &` cannot outlive the call. Stdout and stderr share
//! one pipe (like `2>&1`), so the output is interleaved exactly as the command wrote it, as a
//! terminal would show it. Up to the cap is kept; the rest is read and counted but not kept,
//! so the command never blocks on a full pipe and the agent's memory stays bounded.

use std::io::{PipeReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

/// The only `PATH` the command sees.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How often the deadline is checked.
const POLL: Duration = Duration::from_millis(10);
/// How long to wait for the output reader once the group is dead.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// The reader thread needs almost no stack.
const READER_STACK: usize = 64 * 1024;

/// Output kept so far, shared with the reader thread.
struct Capture {
    kept: Vec<u8>,
    omitted: u64,
    cap: usize,
}

impl Capture {
    fn add(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.kept.len());
        let (keep, drop) = bytes.split_at(room.min(bytes.len()));
        self.kept.extend_from_slice(keep);
        self.omitted += drop.len() as u64;
    }
}

/// Runs `command` and describes what happened; see the module docs.
///
/// # Errors
/// A message when the shell cannot be started.
pub(crate) fn run(
    workspace: &Path,
    command: &str,
    timeout: Duration,
    cap: usize,
) -> Result<String, String> {
    let (pipe, out_writer) =
        std::io::pipe().map_err(|e| format!("cannot create the output pipe: {e}"))?;
    let err_writer = out_writer
        .try_clone()
        .map_err(|e| format!("cannot create the output pipe: {e}"))?;
    // The `Command` (and with it our copies of the write ends) is dropped at the end of this
    // statement, so the reader sees end of file once the command's processes are gone.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(workspace)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", workspace)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(out_writer)
        .stderr(err_writer)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    let pid = Pid::from_child(&child);
    let capture = Arc::new(Mutex::new(Capture {
        kept: Vec::new(),
        omitted: 0,
        cap,
    }));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let spawned = spawn_reader(pipe, Arc::clone(&capture), done_tx);

    let deadline = Instant::now() + timeout;
    let timed_out = spawned.is_ok() && !wait_exit(pid, deadline);
    // The shell is still a zombie here (never reaped by `wait_exit`), so its pid, which is
    // the group id, cannot have been reused: the kill reaches exactly this command's group.
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    let status = child.wait();
    reap_group(pid);

    if let Err(e) = spawned {
        return Err(format!("cannot read the command's output: {e}"));
    }
    // Bounded: a process that escaped the group (setsid) may hold the pipe open forever.
    let drained = done_rx.recv_timeout(DRAIN_GRACE).is_ok();
    let (kept, omitted) = {
        let mut c = capture.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut c.kept), c.omitted)
    };
    let mut out = String::from_utf8_lossy(&kept).into_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if timed_out {
        out.push_str(&format!("[killed after {}s timeout]", timeout.as_secs()));
    } else {
        out.push_str(&describe(status));
    }
    if omitted > 0 {
        out.push_str(&format!("\n[output truncated: {omitted} bytes omitted]"));
    }
    if !drained {
        out.push_str(
            "\n[stopped reading output: a process outside the command's group kept it open]",
        );
    }
    Ok(out)
}

/// Reads `pipe` to its end into `capture`, then says so on `done`.
fn spawn_reader(
    mut pipe: PipeReader,
    capture: Arc<Mutex<Capture>>,
    done: mpsc::Sender<()>,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("shell-output".into())
        .stack_size(READER_STACK)
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => capture
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .add(buf.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        })?;
    Ok(())
}

/// Waits until the shell has exited, without reaping it. False when the deadline passed.
fn wait_exit(pid: Pid, deadline: Instant) -> bool {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match rustix::process::waitid(WaitId::Pid(pid), options) {
            Ok(Some(_)) => return true,
            Ok(None) | Err(Errno::INTR) => {}
            // Not our child any more (cannot happen while we hold the `Child`): stop waiting.
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Reaps killed group members that became our children (when the agent is the sandbox's
/// init, orphans are reparented to it). Bounded: a member stuck in the kernel is left.
fn reap_group(pgid: Pid) {
    let until = Instant::now() + Duration::from_millis(100);
    loop {
        match rustix::process::waitpgid(pgid, WaitOptions::NOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
            Err(Errno::INTR) => {}
            _ => return,
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("[exit status: {code}]"),
            (None, Some(sig)) => format!("[killed by signal {sig}]"),
            (None, None) => "[exit status: unknown]".to_owned(),
        },
        Err(e) => format!("[exit status unknown: {e}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(command: &str, timeout_secs: u64, cap: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), command, Duration::from_secs(timeout_secs), cap).unwrap()
    }

    #[test]
    fn output_and_exit_status_are_reported() {
        assert_eq!(
            sh("echo hello; echo oops >&2; exit 3", 10, 1024),
            "hello\noops\n[exit status: 3]"
        );
        assert_eq!(sh("true", 10, 1024), "[exit status: 0]");
        assert_eq!(sh("kill -9 $$", 10, 1024), "[killed by signal 9]");
    }

    #[test]
    fn environment_and_cwd_are_the_workspace_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            dir.path(),
            "pwd; echo $HOME; echo $PATH; env | wc -l",
            Duration::from_secs(10),
            1024,
        )
        .unwrap();
        let ws = dir.path().canonicalize().unwrap();
        let ws = ws.display();
        let expected_lines = [
            format!("{ws}"),
            format!("{}", dir.path().display()),
            PATH.to_owned(),
        ];
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], expected_lines[0]);
        assert_eq!(lines[1], expected_lines[1]);
        assert_eq!(lines[2], expected_lines[2]);
        // PATH, HOME, LANG, plus what sh itself exports (PWD, SHLVL, `_`): nothing inherited.
        let count: usize = lines[3].trim().parse().unwrap();
        assert!(count <= 6, "{out}");
    }

    #[test]
    fn a_timeout_kills_the_command() {
        let start = Instant::now();
        let out = sh("echo started; sleep 30", 1, 1024);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(out, "started\n[killed after 1s timeout]");
    }

    #[test]
    fn background_children_die_with_the_group() {
        let start = Instant::now();
        let out = sh("sleep 30 & echo $!", 10, 1024);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let pid: i32 = out.lines().next().unwrap().trim().parse().unwrap();
        assert!(out.ends_with("[exit status: 0]"), "{out}");
        // Dead means gone, or a zombie waiting for whoever inherited it.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')').next().unwrap().trim_start().starts_with('Z')
            })
        };
        let until = Instant::now() + Duration::from_secs(3);
        while !gone() && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "background sleep {pid} survived");
    }

    #[test]
    fn a_process_escaping_the_group_does_not_hold_the_call() {
        if !Path::new("/usr/bin/setsid").exists() {
            return;
        }
        let start = Instant::now();
        // The escaped sleep keeps the output pipe open; the call must not wait for it.
        let out = sh("setsid sleep 3 & sleep 0.3; echo hi", 10, 1024);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(
            out.starts_with("hi\n[exit status: 0]\n[stopped reading output"),
            "{out}"
        );
    }

    #[test]
    fn huge_output_is_capped_counted_and_drained() {
        let start = Instant::now();
        let out = sh("yes | head -c 50000000; echo done >&2", 30, 64 * 1024);
        assert!(start.elapsed() < Duration::from_secs(20));
        let (body, tail) = out.split_at(64 * 1024);
        assert!(body.bytes().all(|b| b == b'y' || b == b'\n'));
        // 50_000_000 bytes from stdout plus "done\n" from stderr, minus the 65_536 kept.
        assert_eq!(
            tail,
            "[exit status: 0]\n[output truncated: 49934469 bytes omitted]"
        );
        assert!(out.len() < 64 * 1024 + 200);
    }

    #[test]
    fn invalid_utf8_output_is_made_valid() {
        let out = sh("printf 'a\\377b'", 10, 1024);
        assert_eq!(out, "a\u{fffd}b\n[exit status: 0]");
    }
}
