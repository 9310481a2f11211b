//! The framed connection to the host: `HostToBox` lines in, `BoxToHost` lines out.

use std::io::{Read, Write};

use boxedclaw_protocol::BoxToHost;
use boxedclaw_protocol::HostToBox;
use boxedclaw_protocol::agent::LogLevel;
use boxedclaw_protocol::codec::{self, LineSplitter, MAX_FRAME_LEN};

/// Bytes read from stdin at a time.
const READ_CHUNK: usize = 64 * 1024;
/// `Log` frames one process may send; a chatty agent must not flood the gateway's log.
const MAX_LOG_FRAMES: u32 = 64;

/// Why the agent stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The host sent `Shutdown`.
    Shutdown,
    /// Stdin ended between frames.
    Eof,
    /// Something the agent cannot continue after; the text goes to stderr.
    Fatal(String),
}

/// The framed connection.
pub(crate) struct Conn<R, W> {
    input: R,
    output: W,
    splitter: LineSplitter,
    chunk: Vec<u8>,
    /// Whether a line longer than a chunk went through the splitter since it was last
    /// replaced; its buffer then keeps that capacity, so it is dropped once empty.
    splitter_grew: bool,
    logs_left: u32,
}

impl<R: Read, W: Write> Conn<R, W> {
    /// A connection over the given streams.
    pub(crate) fn new(input: R, output: W) -> Self {
        Self {
            input,
            output,
            splitter: LineSplitter::new(MAX_FRAME_LEN),
            chunk: vec![0; READ_CHUNK],
            splitter_grew: false,
            logs_left: MAX_LOG_FRAMES,
        }
    }

    /// The next frame. `Shutdown` and end of input come back as [`Stop`], so every wait in
    /// the agent ends the same way on them.
    pub(crate) fn recv(&mut self) -> Result<HostToBox, Stop> {
        loop {
            if let Some(line) = self.splitter.next_line() {
                let line = line.map_err(|e| Stop::Fatal(format!("bad frame on stdin: {e}")))?;
                let frame = codec::decode::<HostToBox>(line)
                    .map_err(|e| Stop::Fatal(format!("bad frame on stdin: {e}")))?;
                return match frame {
                    HostToBox::Shutdown => Err(Stop::Shutdown),
                    frame => Ok(frame),
                };
            }
            if self.splitter_grew && self.splitter.pending() == 0 {
                // An 8 MiB frame must not keep 8 MiB resident for the rest of the process.
                self.splitter = LineSplitter::new(MAX_FRAME_LEN);
                self.splitter_grew = false;
            }
            let n = loop {
                match self.input.read(&mut self.chunk) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Stop::Fatal(format!("reading stdin: {e}"))),
                }
            };
            if n == 0 {
                return Err(if self.splitter.pending() == 0 {
                    Stop::Eof
                } else {
                    Stop::Fatal("stdin ended in the middle of a frame".to_owned())
                });
            }
            if self.splitter.pending() + n > READ_CHUNK {
                self.splitter_grew = true;
            }
            let chunk = self.chunk.get(..n).unwrap_or_default();
            self.splitter
                .feed(chunk)
                .map_err(|e| Stop::Fatal(format!("bad frame on stdin: {e}")))?;
        }
    }

    /// Sends one frame and flushes it.
    pub(crate) fn send(&mut self, frame: &BoxToHost) -> Result<(), Stop> {
        let line = codec::encode(frame);
        self.output
            .write_all(&line)
            .and_then(|()| self.output.flush())
            .map_err(|e| Stop::Fatal(format!("writing stdout: {e}")))
    }

    /// Sends a `Log` frame unless this process already sent its share.
    pub(crate) fn log(&mut self, level: LogLevel, message: impl Into<String>) -> Result<(), Stop> {
        match self.logs_left {
            0 => Ok(()),
            1 => {
                self.logs_left = 0;
                let message = "further log lines from this agent are suppressed".to_owned();
                self.send(&BoxToHost::Log {
                    level: LogLevel::Warn,
                    message,
                })
            }
            _ => {
                self.logs_left -= 1;
                self.send(&BoxToHost::Log {
                    level,
                    message: message.into(),
                })
            }
        }
    }

    /// The output stream (tests read frames back from it).
    #[cfg(test)]
    pub(crate) fn output(&self) -> &W {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_are_read_and_shutdown_stops() {
        let mut bytes = codec::encode(&HostToBox::ToolResult {
            request_id: boxedclaw_protocol::RequestId(3),
            output: "x".repeat(200_000),
        });
        bytes.extend(codec::encode(&HostToBox::Shutdown));
        let mut conn = Conn::new(&bytes[..], Vec::new());
        assert!(matches!(conn.recv(), Ok(HostToBox::ToolResult { .. })));
        assert!(conn.splitter_grew || conn.splitter.pending() == 0);
        assert_eq!(conn.recv().unwrap_err(), Stop::Shutdown);
    }

    #[test]
    fn eof_is_clean_between_frames_and_fatal_inside_one() {
        let mut conn = Conn::new(&b""[..], Vec::new());
        assert_eq!(conn.recv().unwrap_err(), Stop::Eof);
        let mut conn = Conn::new(&b"{\"type\":"[..], Vec::new());
        assert!(matches!(conn.recv().unwrap_err(), Stop::Fatal(_)));
        let mut conn = Conn::new(&b"garbage\n"[..], Vec::new());
        assert!(matches!(conn.recv().unwrap_err(), Stop::Fatal(_)));
    }

    #[test]
    fn log_frames_are_bounded() {
        let mut conn = Conn::new(&b""[..], Vec::new());
        for i in 0..1000 {
            conn.log(LogLevel::Info, format!("line {i}")).unwrap();
        }
        let lines = conn
            .output()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(lines, MAX_LOG_FRAMES as usize);
    }
}
