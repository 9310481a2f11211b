//! The conversation's memory: every message in order, persisted so a restarted agent (a new
//! process on the same workspace) carries on where the last one stopped.
//!
//! The file is `.boxedclaw/memory.jsonl`, one [`ChatMessage`] per line, appended as each
//! message is added. The shell tool can write anywhere in the workspace, so the file is
//! untrusted on load: it is read with a size cap, undecodable lines are skipped, and the
//! history is repaired so that every assistant tool call has exactly one result after it —
//! the shape every LLM API insists on.
//!
//! One exception is kept on purpose: a turn the previous process left waiting (typically for a
//! human's approval) ends in an assistant message whose calls are only partly answered. When
//! that message is the last assistant message and nothing but results for its own calls follows
//! it, it stays *dangling* ([`Memory::interrupted`]): the session either resumes it (the
//! approval arrives as `RunApproved`) or closes it with "not run" results before the next user
//! message. Anything else out of shape is repaired on load as before.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{BorrowedFd, OwnedFd};

use boxedclaw_protocol::ToolCallId;
use boxedclaw_protocol::chat::{ChatMessage, Role, ToolCall};
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

/// A turn the previous process left unfinished: the last assistant message, some of whose
/// calls have no result yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interrupted {
    /// Every call of that message, in the model's order.
    pub(crate) calls: Vec<ToolCall>,
    /// The calls still without a result, in the model's order.
    pub(crate) unanswered: Vec<ToolCall>,
}

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
        let repaired = repair(loaded.messages, loaded.last_skip);
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
        // Calls a crashed process left without results get one now, persisted like any message
        // (unless they are the dangling end of an interrupted turn, kept for the session).
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

    /// The interrupted turn, if the history ends in an assistant message with calls still
    /// unanswered (only tool results for its own calls after it).
    pub(crate) fn interrupted(&self) -> Option<Interrupted> {
        let results = self
            .messages
            .iter()
            .rev()
            .take_while(|m| m.role == Role::Tool);
        let mut answered: Vec<&ToolCallId> =
            results.filter_map(|m| m.tool_call_id.as_ref()).collect();
        let at = self.messages.len().checked_sub(answered.len() + 1)?;
        let assistant = self.messages.get(at)?;
        if assistant.role != Role::Assistant {
            return None;
        }
        let mut unanswered = Vec::new();
        for call in &assistant.tool_calls {
            match answered.iter().position(|id| **id == call.id) {
                Some(i) => {
                    answered.swap_remove(i);
                }
                None => unanswered.push(call.clone()),
            }
        }
        if unanswered.is_empty() {
            return None;
        }
        Some(Interrupted {
            calls: assistant.tool_calls.clone(),
            unanswered,
        })
    }

    /// LLM rounds the current turn has used: assistant messages since the last user message.
    pub(crate) fn rounds_in_turn(&self) -> u32 {
        let n = self
            .messages
            .iter()
            .rev()
            .take_while(|m| m.role != Role::User)
            .filter(|m| m.role == Role::Assistant)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
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
    /// Where the last undecodable line was: the number of messages decoded before it.
    last_skip: Option<usize>,
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
            Err(_) => {
                loaded.skipped += 1;
                loaded.last_skip = Some(loaded.messages.len());
            }
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
    /// Calls of the last assistant message still without results, which need one now; empty
    /// when that message is kept dangling.
    unanswered: Vec<ToolCallId>,
}

/// Makes the history well formed: it starts with a user message, holds no system message,
/// and each assistant message with tool calls is followed by one result per call — except a
/// cleanly interrupted last turn, left dangling (see the module docs). `last_skip` is where the
/// last undecodable line was (see [`Loaded`]); one after the last assistant message makes its
/// tail untrustworthy, so it is repaired.
fn repair(input: Vec<ChatMessage>, last_skip: Option<usize>) -> Repaired {
    let mut out = Repaired {
        messages: Vec::with_capacity(input.len()),
        dropped: 0,
        rewrite: false,
        unanswered: Vec::new(),
    };
    let mut pending: Vec<ToolCallId> = Vec::new();
    // Whether everything since the message that set `pending` was a result for one of its calls.
    let mut clean_tail = true;
    // Where (in `input`) that message was.
    let mut pending_from = 0;
    for (i, m) in input.into_iter().enumerate() {
        match m.role {
            Role::System => {
                out.dropped += 1;
                clean_tail = false;
            }
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
                    None => {
                        out.dropped += 1;
                        clean_tail = false;
                    }
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
                pending_from = i;
                clean_tail = true;
                out.messages.push(m);
            }
        }
    }
    let dangling = clean_tail && last_skip.is_none_or(|s| s <= pending_from);
    if !dangling {
        out.unanswered = pending;
    }
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
    fn an_interrupted_turn_stays_dangling() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let (mut m, _) = Memory::open(ws.state_dir());
        m.push(ChatMessage::text(Role::User, "go")).unwrap();
        m.push(calls(&["c1", "c2", "c3"])).unwrap();
        m.push(ChatMessage::tool_result(id("c1"), "ok")).unwrap();
        let written = m.messages().to_vec();
        drop(m);
        let before = std::fs::read(file(&dir)).unwrap();
        for _ in 0..2 {
            let (m, notes) = Memory::open(ws.state_dir());
            assert!(notes.is_empty(), "{notes:?}");
            assert_eq!(m.messages(), written);
            let interrupted = m.interrupted().unwrap();
            assert_eq!(interrupted.calls, written[1].tool_calls);
            assert_eq!(interrupted.unanswered, written[1].tool_calls[1..]);
            assert_eq!(m.rounds_in_turn(), 1);
        }
        assert_eq!(std::fs::read(file(&dir)).unwrap(), before, "nothing added");
    }

    #[test]
    fn interrupted_follows_the_results_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let (mut m, _) = Memory::open(ws.state_dir());
        assert_eq!(m.interrupted(), None);
        m.push(ChatMessage::text(Role::User, "go")).unwrap();
        assert_eq!(m.interrupted(), None);
        m.push(calls(&["c1", "c2"])).unwrap();
        assert_eq!(m.interrupted().unwrap().unanswered.len(), 2);
        m.push(ChatMessage::tool_result(id("c2"), "ok")).unwrap();
        let left = m.interrupted().unwrap().unanswered;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, id("c1"));
        m.push(ChatMessage::tool_result(id("c1"), "ok")).unwrap();
        assert_eq!(m.interrupted(), None);
        m.push(calls(&["c3"])).unwrap();
        assert_eq!(m.rounds_in_turn(), 2);
        m.push(ChatMessage::tool_result(id("c3"), "ok")).unwrap();
        m.push(ChatMessage::text(Role::Assistant, "done")).unwrap();
        assert_eq!(m.interrupted(), None);
        assert_eq!(m.rounds_in_turn(), 3);
        m.push(ChatMessage::text(Role::User, "next")).unwrap();
        assert_eq!(m.rounds_in_turn(), 0);
    }

    /// Writes `lines` (raw text, one per line) as the memory file and opens it.
    fn open_lines(dir: &tempfile::TempDir, lines: &[String]) -> (Memory, Vec<String>) {
        let ws = Workspace::open(dir.path()).unwrap();
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(file(dir), text).unwrap();
        Memory::open(ws.state_dir())
    }

    fn line(m: &ChatMessage) -> String {
        serde_json::to_string(m).unwrap()
    }

    #[test]
    fn other_unanswered_calls_are_still_closed_on_load() {
        let user = line(&ChatMessage::text(Role::User, "go"));
        let asked = line(&calls(&["c1", "c2"]));
        let c1 = line(&ChatMessage::tool_result(id("c1"), "ok"));
        let restarted = |i: &str| ChatMessage::tool_result(id(i), RESTARTED);
        // Something other than results for its own calls after the last assistant message.
        for (what, tail) in [
            (
                "an orphan result",
                line(&ChatMessage::tool_result(id("x"), "?")),
            ),
            ("a repeated result", c1.clone()),
            (
                "a system message",
                line(&ChatMessage::text(Role::System, "?")),
            ),
            ("an undecodable line", "not json".to_owned()),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (m, notes) = open_lines(&dir, &[user.clone(), asked.clone(), c1.clone(), tail]);
            assert_eq!(notes.len(), 1, "{what}: {notes:?}");
            assert_eq!(m.messages().len(), 4, "{what}");
            assert_eq!(m.messages()[3], restarted("c2"), "{what}");
            assert_eq!(m.interrupted(), None, "{what}");
        }
        // Not the last assistant message: closed where it stands.
        let dir = tempfile::tempdir().unwrap();
        let later = line(&ChatMessage::text(Role::User, "hello?"));
        let (m, notes) = open_lines(&dir, &[user.clone(), asked.clone(), c1.clone(), later]);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(m.messages()[3], restarted("c2"));
        assert_eq!(m.messages()[4], ChatMessage::text(Role::User, "hello?"));
        assert_eq!(m.interrupted(), None);
        // An undecodable line before the interrupted message does not matter.
        let dir = tempfile::tempdir().unwrap();
        let (m, notes) = open_lines(&dir, &[user, "not json".into(), asked, c1]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(m.messages().len(), 3);
        assert_eq!(m.interrupted().unwrap().unanswered.len(), 1);
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
