//! The conversation's memory: every message in order, persisted so a restarted agent (a new
//! process on the same workspace) carries on where the last one stopped.
//!
//! The file is `.boxedclaw/memory.jsonl`, one [`ChatMessage`] per line, appended as each
//! message is added. The shell tool can write anywhere in the workspace, so the file is
//! untrusted on load: it is read with a size cap, undecodable lines are skipped, and the
//! history is repaired so that every assistant tool call has exactly one result after it —
//! the shape every LLM API insists on.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{BorrowedFd, OwnedFd};

use boxedclaw_protocol::ToolCallId;
use boxedclaw_protocol::chat::{ChatMessage, Role};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::tools::confine::errno_text;

/// The memory file, inside the state directory.
pub(crate) const MEMORY_FILE: &str = "memory.jsonl";
/// A copy of the memory file kept when loading had to drop lines.
const BACKUP_FILE: &str = "memory.jsonl.bak";
const TEMP_FILE: &str = "memory.jsonl.tmp";
/// The most of the file loaded; beyond it the oldest part is left out.
const MAX_LOAD: u64 = 64 * 1024 * 1024;
/// The result recorded for tool calls a previous process never finished.
pub(crate) const RESTARTED: &str = "not run: the agent restarted";

/// The conversation so far (without the system prompt, which is not part of memory).
#[derive(Debug)]
pub(crate) struct Memory {
    messages: Vec<ChatMessage>,
    /// The append handle; `None` once persisting failed (or never worked), after which
    /// memory lives on in this process only.
    file: Option<File>,
}

impl Memory {
    /// Loads and repairs the memory in `state`. Never fails: problems come back as notes for
    /// the host's log, and a memory that cannot be read or written is kept in this process.
    pub(crate) fn open(state: BorrowedFd<'_>) -> (Self, Vec<String>) {
        let mut notes = Vec::new();
        let loaded = match load(state) {
            Ok(l) => l,
            Err(e) => {
                notes.push(format!(
                    "memory could not be read; this process will not save it: {e}"
                ));
                return (
                    Self {
                        messages: Vec::new(),
                        file: None,
                    },
                    notes,
                );
            }
        };
        if loaded.skipped > 0 {
            notes.push(format!(
                "memory: skipped {} undecodable line(s)",
                loaded.skipped
            ));
        }
        if loaded.cut {
            notes.push(format!(
                "memory: file over {MAX_LOAD} bytes; its oldest part was left out"
            ));
        }
        let repaired = repair(loaded.messages);
        if repaired.dropped > 0 {
            notes.push(format!(
                "memory: dropped {} message(s) out of order",
                repaired.dropped
            ));
        }
        let lossy = loaded.skipped > 0 || loaded.cut || repaired.dropped > 0;
        let mut memory = Self {
            messages: repaired.messages,
            file: None,
        };
        if lossy || repaired.rewrite || loaded.unterminated {
            // Appending would not reproduce the repaired order: write the whole file anew.
            if let Err(e) = rewrite(state, &memory.messages, lossy) {
                notes.push(format!(
                    "memory could not be rewritten; this process will not save it: {e}"
                ));
                return (memory, notes);
            }
        }
        match open_state_file(
            state,
            MEMORY_FILE,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
            0o600,
        ) {
            Ok(fd) => memory.file = Some(File::from(fd)),
            Err(e) => notes.push(format!("memory will not be saved: {}", errno_text(e))),
        }
        // Calls a crashed process left without results get one now, persisted like any message.
        for id in repaired.unanswered {
            if let Err(e) = memory.push(ChatMessage::tool_result(id, RESTARTED)) {
                notes.push(e);
            }
        }
        (memory, notes)
    }

    /// Appends a message and persists it.
    ///
    /// # Errors
    /// A note, the first time persisting fails; later messages stay in this process only.
    pub(crate) fn push(&mut self, message: ChatMessage) -> Result<(), String> {
        let result = match &mut self.file {
            Some(file) => serde_json::to_vec(&message)
                .map_err(|e| e.to_string())
                .and_then(|mut line| {
                    line.push(b'\n');
                    file.write_all(&line).map_err(|e| e.to_string())
                })
                .map_err(|e| format!("memory could not be saved; this process keeps it: {e}")),
            None => Ok(()),
        };
        if result.is_err() {
            // A half-written line must not be followed by more: stop writing altogether.
            self.file = None;
        }
        self.messages.push(message);
        result
    }

    /// The messages, oldest first.
    pub(crate) fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }
}

/// Opens a plain file in the state directory, never through a symlink. The name is one
/// component, so `O_NOFOLLOW` alone keeps the open inside the directory.
fn open_state_file(
    state: BorrowedFd<'_>,
    name: &str,
    flags: OFlags,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        state,
        name,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
        Mode::from_raw_mode(mode),
    )
}

#[derive(Default)]
struct Loaded {
    messages: Vec<ChatMessage>,
    skipped: usize,
    /// The file was over [`MAX_LOAD`].
    cut: bool,
    /// The last line had no newline (a crash mid-write); appending after it would corrupt.
    unterminated: bool,
}

fn load(state: BorrowedFd<'_>) -> Result<Loaded, String> {
    let fd = match open_state_file(state, MEMORY_FILE, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Loaded::default()),
        Err(e) => return Err(errno_text(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(errno_text)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(format!("{MEMORY_FILE} is not a regular file"));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let mut file = File::from(fd);
    let mut loaded = Loaded {
        cut: size > MAX_LOAD,
        ..Loaded::default()
    };
    if loaded.cut {
        file.seek(SeekFrom::Start(size - MAX_LOAD))
            .map_err(|e| e.to_string())?;
    }
    let mut reader = BufReader::new(file.take(MAX_LOAD));
    let mut line = Vec::new();
    // After a cut the first line is a fragment.
    let mut skip_fragment = loaded.cut;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            break;
        }
        if std::mem::take(&mut skip_fragment) {
            continue;
        }
        match line.strip_suffix(b"\n") {
            Some(text) => line.truncate(text.len()),
            None => loaded.unterminated = true,
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<ChatMessage>(&line) {
            Ok(m) => loaded.messages.push(m),
            Err(_) => loaded.skipped += 1,
        }
    }
    Ok(loaded)
}

struct Repaired {
    messages: Vec<ChatMessage>,
    /// Messages removed (system messages, orphan tool results, a leading assistant).
    dropped: usize,
    /// Results were inserted before the end: the file must be rewritten.
    rewrite: bool,
    /// Calls of the last assistant message still without results.
    unanswered: Vec<ToolCallId>,
}

/// Makes the history well formed: it starts with a user message, holds no system message,
/// and each assistant message with tool calls is followed by one result per call.
fn repair(input: Vec<ChatMessage>) -> Repaired {
    let mut out = Repaired {
        messages: Vec::with_capacity(input.len()),
        dropped: 0,
        rewrite: false,
        unanswered: Vec::new(),
    };
    let mut pending: Vec<ToolCallId> = Vec::new();
    for m in input {
        match m.role {
            Role::System => out.dropped += 1,
            Role::Tool => {
                let answered = m
                    .tool_call_id
                    .as_ref()
                    .and_then(|id| pending.iter().position(|p| p == id));
                match answered {
                    Some(i) => {
                        pending.remove(i);
                        out.messages.push(m);
                    }
                    None => out.dropped += 1,
                }
            }
            Role::User | Role::Assistant => {
                if !pending.is_empty() {
                    out.rewrite = true;
                    for id in pending.drain(..) {
                        out.messages.push(ChatMessage::tool_result(id, RESTARTED));
                    }
                }
                if out.messages.is_empty() && m.role == Role::Assistant {
                    out.dropped += 1;
                    continue;
                }
                pending = m.tool_calls.iter().map(|c| c.id.clone()).collect();
                out.messages.push(m);
            }
        }
    }
    out.unanswered = pending;
    out
}

/// Replaces the memory file with `messages`, atomically; with `backup`, the old file stays
/// as [`BACKUP_FILE`] for someone to look at.
fn rewrite(state: BorrowedFd<'_>, messages: &[ChatMessage], backup: bool) -> Result<(), String> {
    let _ = rustix::fs::unlinkat(state, TEMP_FILE, AtFlags::empty());
    let fd = open_state_file(
        state,
        TEMP_FILE,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        0o600,
    )
    .map_err(errno_text)?;
    let mut w = BufWriter::new(File::from(fd));
    for m in messages {
        serde_json::to_writer(&mut w, m).map_err(|e| e.to_string())?;
        w.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())?;
    drop(w);
    if backup {
        let _ = rustix::fs::unlinkat(state, BACKUP_FILE, AtFlags::empty());
        let _ = rustix::fs::linkat(state, MEMORY_FILE, state, BACKUP_FILE, AtFlags::empty());
    }
    rustix::fs::renameat(state, TEMP_FILE, state, MEMORY_FILE).map_err(errno_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::Workspace;
    use boxedclaw_protocol::chat::ToolCall;

    fn id(s: &str) -> ToolCallId {
        ToolCallId::new(s).unwrap()
    }

    fn calls(ids: &[&str]) -> ChatMessage {
        ChatMessage {
            role: Role::Assistant,
            content: None,
            tool_calls: ids
                .iter()
                .map(|i| ToolCall {
                    id: id(i),
                    name: "file_list".into(),
                    arguments: "{}".into(),
                })
                .collect(),
            tool_call_id: None,
        }
    }

    fn file(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join(".boxedclaw").join(MEMORY_FILE)
    }

    #[test]
    fn messages_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let (mut m, notes) = Memory::open(ws.state_dir());
        assert!(notes.is_empty() && m.messages().is_empty());
        let written = [
            ChatMessage::text(Role::User, "hi"),
            calls(&["c1"]),
            ChatMessage::tool_result(id("c1"), "a\nb"),
            ChatMessage::text(Role::Assistant, "done"),
        ];
        for msg in &written {
            m.push(msg.clone()).unwrap();
        }
        drop(m);
        let (again, notes) = Memory::open(ws.state_dir());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(again.messages(), written);
    }

    #[test]
    fn dangling_tool_calls_get_results_once() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let (mut m, _) = Memory::open(ws.state_dir());
        m.push(ChatMessage::text(Role::User, "go")).unwrap();
        m.push(calls(&["c1", "c2"])).unwrap();
        m.push(ChatMessage::tool_result(id("c1"), "ok")).unwrap();
        drop(m);
        let (m, notes) = Memory::open(ws.state_dir());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(m.messages().len(), 4);
        assert_eq!(
            m.messages()[3],
            ChatMessage::tool_result(id("c2"), RESTARTED)
        );
        drop(m);
        let (m, _) = Memory::open(ws.state_dir());
        assert_eq!(
            m.messages().len(),
            4,
            "the repair was persisted, not redone"
        );
    }

    #[test]
    fn corrupt_lines_are_skipped_reported_and_backed_up() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let good = |m: &ChatMessage| serde_json::to_string(m).unwrap();
        let text = format!(
            "{}\nnot json\n{}\n{}\n{}",
            good(&ChatMessage::text(Role::System, "injected")),
            good(&ChatMessage::text(Role::User, "one")),
            good(&ChatMessage::tool_result(id("orphan"), "x")),
            // The last line lost its newline in a crash.
            good(&ChatMessage::text(Role::Assistant, "two")),
        );
        std::fs::write(file(&dir), &text).unwrap();
        let (mut m, notes) = Memory::open(ws.state_dir());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(
            m.messages(),
            [
                ChatMessage::text(Role::User, "one"),
                ChatMessage::text(Role::Assistant, "two")
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".boxedclaw").join(BACKUP_FILE)).unwrap(),
            text
        );
        m.push(ChatMessage::text(Role::User, "three")).unwrap();
        drop(m);
        let (m, notes) = Memory::open(ws.state_dir());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(m.messages().len(), 3);
    }

    #[test]
    fn a_symlinked_memory_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        std::fs::write(outside.path().join("f"), "").unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), file(&dir)).unwrap();
        let (mut m, notes) = Memory::open(ws.state_dir());
        assert_eq!(notes.len(), 1, "{notes:?}");
        m.push(ChatMessage::text(Role::User, "x")).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.path().join("f")).unwrap(),
            ""
        );
    }
}
