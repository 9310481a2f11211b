//! The bounded line codec: one JSON frame per `\n`-terminated line.
//!
//! Frames from a sandbox are hostile input, so decoding bounds everything before it allocates:
//! a line longer than the limit is refused while it is still arriving ([`LineSplitter`]),
//! bytes must be UTF-8, nesting is capped by serde_json's recursion limit (128, never
//! disabled), and every frame type rejects unknown fields and unknown variants.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame either side accepts, in bytes (without the newline). Big enough for a long
/// conversation history in one `LlmRequest`; small enough that a hostile box cannot make the
/// host buffer much.
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A line exceeded the frame limit (possibly before its newline arrived).
    #[error("frame longer than {limit} bytes")]
    TooLong {
        /// The limit in force.
        limit: usize,
    },
    /// The line was not UTF-8.
    #[error("frame is not valid UTF-8")]
    InvalidUtf8,
    /// The line was empty or only whitespace.
    #[error("empty frame")]
    Empty,
    /// The JSON was malformed, too deep, or not a known frame.
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// Decodes one line (without its newline) into a frame.
///
/// # Errors
/// [`DecodeError`] when the line is too long, not UTF-8, empty, malformed JSON, nested deeper
/// than serde_json's recursion limit, or not a frame of type `T`.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, DecodeError> {
    decode_with_limit(line, MAX_FRAME_LEN)
}

/// [`decode`] with an explicit size limit.
///
/// # Errors
/// As [`decode`].
pub fn decode_with_limit<T: DeserializeOwned>(line: &[u8], limit: usize) -> Result<T, DecodeError> {
    if line.len() > limit {
        return Err(DecodeError::TooLong { limit });
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| DecodeError::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Err(DecodeError::Empty);
    }
    // Keep only serde's own message: it names the field or variant and the position, never
    // echoes the (possibly huge, possibly secret-bearing) input.
    serde_json::from_str(text).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Encodes a frame as one line, newline included.
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // Frames are plain derived data (strings, numbers, enums): serializing cannot fail. If it
    // ever did, an empty line is decoded as `Empty` by the peer: a visible protocol error.
    let mut out = serde_json::to_vec(frame).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Splits an incoming byte stream into lines without ever holding more than `limit` bytes of
/// an unfinished line.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already handed out as lines.
    consumed: usize,
    limit: usize,
    poisoned: bool,
}

impl LineSplitter {
    /// A splitter refusing lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            consumed: 0,
            limit,
            poisoned: false,
        }
    }

    /// Appends bytes read from the stream.
    ///
    /// # Errors
    /// [`DecodeError::TooLong`] when the unfinished line would exceed the limit. The splitter
    /// is then poisoned: a stream that broke framing cannot be resynchronized safely.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        if self.poisoned {
            return Err(DecodeError::TooLong { limit: self.limit });
        }
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        // Only the tail after the last newline is an unfinished line.
        let tail_start = self
            .buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let pending_in_buf = self.buf.len() - tail_start;
        let pending_after = match chunk.iter().rposition(|&b| b == b'\n') {
            Some(i) => chunk.len() - i - 1,
            None => pending_in_buf + chunk.len(),
        };
        // Complete lines inside `chunk` are checked in `next_line`; here only the unfinished
        // one matters, since it is what would grow without bound.
        if pending_after > self.limit {
            self.poisoned = true;
            self.buf.clear();
            return Err(DecodeError::TooLong { limit: self.limit });
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The next complete line, without its newline.
    ///
    /// # Errors
    /// [`DecodeError::TooLong`] for a complete line over the limit (the splitter is poisoned).
    pub fn next_line(&mut self) -> Option<Result<&[u8], DecodeError>> {
        if self.poisoned {
            return None;
        }
        let rest = &self.buf[self.consumed..];
        let end = rest.iter().position(|&b| b == b'\n')?;
        if end > self.limit {
            self.poisoned = true;
            self.buf.clear();
            self.consumed = 0;
            return Some(Err(DecodeError::TooLong { limit: self.limit }));
        }
        let start = self.consumed;
        self.consumed += end + 1;
        Some(Ok(&self.buf[start..start + end]))
    }

    /// Bytes of an unfinished line held right now.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{BoxToHost, HostToBox};
    use proptest::prelude::*;

    #[test]
    fn oversized_line_is_refused_before_it_is_buffered() {
        let mut s = LineSplitter::new(1024);
        let chunk = vec![b'a'; 600];
        assert!(s.feed(&chunk).is_ok());
        assert_eq!(s.feed(&chunk), Err(DecodeError::TooLong { limit: 1024 }));
        assert_eq!(s.pending(), 0, "poisoned splitter must drop what it held");
        assert!(s.feed(b"\n").is_err(), "a broken stream stays broken");
    }

    #[test]
    fn hundred_megabytes_without_newline_never_exceeds_the_limit() {
        let mut s = LineSplitter::new(MAX_FRAME_LEN);
        let chunk = vec![b'x'; 64 * 1024];
        let mut refused = false;
        for _ in 0..(100 * 16) {
            if s.feed(&chunk).is_err() {
                refused = true;
                break;
            }
            assert!(s.pending() <= MAX_FRAME_LEN);
        }
        assert!(refused);
    }

    #[test]
    fn invalid_utf8_is_a_typed_error() {
        assert_eq!(
            decode::<BoxToHost>(b"{\"type\":\"ready\xff\"}"),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn ten_thousand_deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!(
            "{{\"type\":\"progress\",\"message\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(
            decode::<BoxToHost>(deep.as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
        let deep_obj = "{\"a\":".repeat(10_000);
        assert!(matches!(
            decode::<BoxToHost>(deep_obj.as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn unknown_variants_fields_and_huge_numbers_are_refused() {
        for bad in [
            r#"{"type":"admin_command","text":"/reset"}"#,
            r#"{"type":"ready","protocol_version":1,"resumed_messages":0,"extra":1}"#,
            r#"{"type":"ready","protocol_version":1180591620717411303424,"resumed_messages":0}"#,
            r#"{"type":"log","level":"fatal","message":"x"}"#,
            r#"{"protocol_version":1}"#,
            r#"[]"#,
        ] {
            assert!(
                matches!(
                    decode::<BoxToHost>(bad.as_bytes()),
                    Err(DecodeError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn lines_split_across_chunks_are_reassembled() {
        let frame = encode(&HostToBox::Shutdown);
        let mut s = LineSplitter::new(64);
        for b in &frame {
            s.feed(std::slice::from_ref(b)).unwrap();
        }
        let line = s.next_line().unwrap().unwrap().to_vec();
        assert_eq!(decode::<HostToBox>(&line).unwrap(), HostToBox::Shutdown);
        assert!(s.next_line().is_none());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<BoxToHost>(&bytes);
            let _ = decode::<HostToBox>(&bytes);
        }

        #[test]
        fn splitter_yields_exactly_the_lines_fed(
            lines in proptest::collection::vec("[a-z{}\":,]{0,40}", 0..20),
            cut in 1usize..17,
        ) {
            let mut stream = Vec::new();
            for l in &lines {
                stream.extend_from_slice(l.as_bytes());
                stream.push(b'\n');
            }
            let mut s = LineSplitter::new(64);
            let mut out = Vec::new();
            for chunk in stream.chunks(cut) {
                s.feed(chunk).unwrap();
                while let Some(line) = s.next_line() {
                    out.push(String::from_utf8(line.unwrap().to_vec()).unwrap());
                }
            }
            prop_assert_eq!(out, lines);
        }

        #[test]
        fn splitter_never_holds_more_than_limit_plus_one_chunk(
            chunks in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..200), 0..50),
        ) {
            let mut s = LineSplitter::new(100);
            for c in &chunks {
                if s.feed(c).is_err() { break; }
                while let Some(Ok(_)) = s.next_line() {}
                prop_assert!(s.pending() <= 100 + c.len());
            }
        }

        #[test]
        fn mutated_valid_frames_never_panic(idx in 0usize..200, byte in any::<u8>()) {
            let mut frame = encode(&BoxToHost::Progress { message: "running shell".into() });
            frame.pop();
            let i = idx % frame.len();
            frame[i] = byte;
            let _ = decode::<BoxToHost>(&frame);
        }
    }
}
