//! Secrets: API keys and tokens the gateway holds and nothing else may see.
//!
//! Three tools keep a secret from leaking:
//! - [`Secret`] wraps a value so it cannot be printed, cloned or serialized by accident, and wipes
//!   its memory when dropped. The one way to read it is [`Secret::expose`], called only where an
//!   HTTP header is built.
//! - [`Redactor`] scrubs text that leaves the gateway's control (error excerpts, logs): every known
//!   secret value, its common encodings, and anything shaped like a provider key or bearer token.
//! - [`read_secret_file`] loads a key from a file only if the file is private to its owner, so an
//!   operator who left a key world-readable finds out at start-up rather than after a leak.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Largest secret file accepted. Keys and tokens are a few hundred bytes at most; the bound stops
/// a misconfigured path (a log file, a device) from being slurped into memory.
pub const MAX_SECRET_FILE_LEN: u64 = 16 * 1024;

pub use boxedclaw_channels::secret::{REDACTED, Secret};

/// Scrubs secrets out of text before it is logged or shown.
///
/// It replaces, with `[REDACTED]`:
/// - every value it was built with, and (for values of 8 bytes or more) their base64, base64url,
///   hex and percent-encoded forms, since providers and proxies echo keys in those shapes too;
/// - anything shaped like a well-known credential, even one the gateway does not hold:
///   `sk-…` (OpenAI, Anthropic, OpenRouter), Slack `xox?-…` and `xapp-…`, Telegram bot tokens
///   (`123456789:AA…`) and the token after `Bearer`.
///
/// Matching is done by hand rather than with a regex engine: the shapes are simple prefixes and
/// character runs, and a linear scan keeps hostile input from costing more than its length.
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<Zeroizing<String>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.needles.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for `secrets` plus the built-in credential shapes. The values are copied into
    /// storage that is wiped when the redactor is dropped.
    pub fn new(secrets: &[&Secret]) -> Self {
        let mut r = Self::default();
        for s in secrets {
            r.add(s.expose());
        }
        r
    }

    fn add(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        let mut push = |n: String| {
            if !n.is_empty() && !self.needles.iter().any(|m| m.as_str() == n) {
                self.needles.push(Zeroizing::new(n));
            }
        };
        push(value.to_owned());
        // Short values' encodings are short enough to occur by chance in ordinary text.
        if value.len() >= 8 {
            let bytes = value.as_bytes();
            push(base64(bytes, STANDARD, true));
            push(base64(bytes, STANDARD, false));
            push(base64(bytes, URL_SAFE, false));
            push(hex::encode(bytes));
            push(hex::encode_upper(bytes));
            push(percent_encode(value));
        }
        // Longest first, so a value containing another is replaced whole.
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// `text` with every secret and credential-shaped token replaced by `[REDACTED]`. Borrows
    /// when nothing needed replacing.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for needle in &self.needles {
            spans.extend(
                text.match_indices(needle.as_str())
                    .map(|(i, m)| (i, i + m.len())),
            );
        }
        find_credential_shapes(text.as_bytes(), &mut spans);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for (start, end) in spans {
            if end <= pos {
                continue;
            }
            if start < pos {
                // Overlaps the span just replaced: extend it without a second marker.
                pos = end;
                continue;
            }
            out.push_str(&text[pos..start]);
            out.push_str(REDACTED);
            pos = end;
        }
        out.push_str(&text[pos..]);
        Cow::Owned(out)
    }
}

/// Characters of a token in the credential shapes (`[A-Za-z0-9_-]`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Characters of an RFC 6750 `b64token` (what follows `Bearer `).
fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Length of the run of bytes satisfying `pred` starting at `from`.
fn run(bytes: &[u8], from: usize, pred: fn(u8) -> bool) -> usize {
    bytes
        .get(from..)
        .map_or(0, |rest| rest.iter().take_while(|&&b| pred(b)).count())
}

/// Appends the byte ranges of credential-shaped tokens in `bytes`. Every range starts and ends
/// next to an ASCII byte, so it is a valid `str` range of the text `bytes` came from.
fn find_credential_shapes(bytes: &[u8], spans: &mut Vec<(usize, usize)>) {
    let starts_word = |i: usize| i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        // (prefix length, minimum token length after it) of a prefixed key starting here.
        let slack = rest.starts_with(b"xapp-")
            || (rest.len() >= 5
                && rest.starts_with(b"xox")
                && matches!(rest[3], b'a' | b'b' | b'p' | b'r' | b's' | b'e')
                && rest[4] == b'-');
        let prefixed = if rest.starts_with(b"sk-") {
            Some((3, 16))
        } else if slack {
            Some((5, 8))
        } else {
            None
        };
        if let Some((prefix, min)) = prefixed.filter(|_| starts_word(i)) {
            let n = run(bytes, i + prefix, is_token_byte);
            if n >= min {
                spans.push((i, i + prefix + n));
                i += prefix + n;
                continue;
            }
        }
        if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"bearer") && starts_word(i) {
            let gap = run(bytes, i + 6, |b| b == b' ' || b == b'\t');
            let n = run(bytes, i + 6 + gap, is_b64token_byte);
            if gap > 0 && n >= 8 {
                let start = i + 6 + gap;
                spans.push((start, start + n));
                i = start + n;
                continue;
            }
        }
        if bytes[i] == b':' {
            // Telegram bot token: `<6-12 digits>:<30+ token chars>`.
            let digits = bytes[..i]
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let n = run(bytes, i + 1, is_token_byte);
            if digits >= 6 && n >= 30 {
                spans.push((i - digits, i + 1 + n));
                i += 1 + n;
                continue;
            }
        }
        i += 1;
    }
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `data` with `alphabet`, padded with `=` when `pad`.
fn base64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * k)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// `value` with every byte outside RFC 3986's unreserved set written as `%XX`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The path is a symbolic link; secrets are read only from the file itself so a link cannot
    /// redirect the read somewhere else.
    #[error("secret file {} is a symbolic link; point the setting at the file itself", .0.display())]
    Symlink(PathBuf),
    /// The file could not be opened or read.
    #[error("cannot read secret file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("secret file {} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// Group or others may read or write the file.
    #[error(
        "secret file {} is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than [`MAX_SECRET_FILE_LEN`].
    #[error("secret file {} is larger than {MAX_SECRET_FILE_LEN} bytes; is it the right file?", .0.display())]
    TooLarge(PathBuf),
    /// The file is empty (or holds only line breaks).
    #[error("secret file {} is empty", .0.display())]
    Empty(PathBuf),
    /// The file is not UTF-8 text, or holds a control character inside the value (a second line,
    /// a NUL), which would corrupt the header it goes into.
    #[error("secret file {} must hold one line of text (found binary data or several lines)", .0.display())]
    Malformed(PathBuf),
}

/// Reads a secret from `path`: one line of text, a trailing line break removed.
///
/// Refuses a symbolic link as the last path component (opened with `O_NOFOLLOW`, so there is no
/// check-then-open race), anything but a regular file, and a file whose mode grants group or
/// others any access (`mode & 0o077 != 0`), since anyone who can read it has the key.
///
/// # Errors
/// [`SecretError`], whose message names the path and, for permissions, the `chmod` to run.
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let owned = || path.to_path_buf();
    // O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears; it
    // has no effect on regular files, the only kind accepted.
    let flags = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK)
        .bits()
        .cast_signed();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::LOOP) {
                SecretError::Symlink(owned())
            } else {
                SecretError::Io {
                    path: owned(),
                    source: e,
                }
            }
        })?;
    // fstat on the open descriptor: the checks apply to exactly the file being read.
    let meta = file.metadata().map_err(|e| SecretError::Io {
        path: owned(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile(owned()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: owned(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_FILE_LEN {
        return Err(SecretError::TooLarge(owned()));
    }
    // Capacity reserved up front so the buffer never reallocates (which would leave an unwiped
    // copy of the key in freed memory).
    let mut raw = Zeroizing::new(Vec::with_capacity(MAX_SECRET_FILE_LEN as usize + 1));
    file.take(MAX_SECRET_FILE_LEN + 1)
        .read_to_end(&mut raw)
        .map_err(|e| SecretError::Io {
            path: owned(),
            source: e,
        })?;
    if raw.len() as u64 > MAX_SECRET_FILE_LEN {
        return Err(SecretError::TooLarge(owned()));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| SecretError::Malformed(owned()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.trim().is_empty() {
        return Err(SecretError::Empty(owned()));
    }
    if value.chars().any(char::is_control) {
        return Err(SecretError::Malformed(owned()));
    }
    Ok(Secret::new(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-CANARY0123456789abcdefXYZ";

    #[test]
    fn secret_formats_as_redacted() {
        let s = Secret::new(KEY.to_owned());
        assert_eq!(s.expose(), KEY);
        for shown in [format!("{s:?}"), format!("{s}"), format!("{:?}", Some(&s))] {
            assert!(!shown.contains("CANARY"), "{shown}");
            assert!(shown.contains(REDACTED));
        }
    }

    #[test]
    fn redacts_known_values_and_their_encodings() {
        let s = Secret::new("my private value/with+chars".to_owned());
        let r = Redactor::new(&[&s]);
        let v = s.expose().as_bytes();
        let forms = [
            s.expose().to_owned(),
            base64(v, STANDARD, true),
            base64(v, URL_SAFE, false),
            hex::encode(v),
            hex::encode_upper(v),
            percent_encode(s.expose()),
        ];
        for form in forms {
            let text = format!("before {form} after");
            let out = r.redact(&text);
            assert_eq!(out, format!("before {REDACTED} after"), "{form}");
        }
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
        assert!(!format!("{r:?}").contains("private"));
    }

    #[test]
    fn base64_matches_the_reference_vectors() {
        // RFC 4648 §10.
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes(), STANDARD, true), enc);
            assert_eq!(
                base64(plain.as_bytes(), STANDARD, false),
                enc.trim_end_matches('=')
            );
        }
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE, false), "-_8");
    }

    #[test]
    fn redacts_credential_shapes_it_was_not_told_about() {
        let r = Redactor::default();
        let cases = [
            (
                "key sk-proj-abcdefghijklmnopqrstuv end",
                "key [REDACTED] end",
            ),
            ("sk-ant-api03-AAAAAAAAAAAAAAAAAAAA,", "[REDACTED],"),
            ("slack xoxb-1234-5678-abcdefgh ok", "slack [REDACTED] ok"),
            ("xapp-1-A0123-456-abcdef", "[REDACTED]"),
            (
                "url /bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0/getMe",
                "url /bot[REDACTED]/getMe",
            ),
            (
                "Authorization: Bearer abc.def-ghi_jkl==",
                "Authorization: Bearer [REDACTED]",
            ),
            (
                "authorization: bearer    0123456789abcdef",
                "authorization: bearer    [REDACTED]",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact(input), want, "{input}");
        }
        // Ordinary text that merely resembles a prefix is left alone.
        for keep in [
            "task-abcdefghijklmnopqrstuvwxyz",
            "sk-short",
            "at 12:30:00 the time was 123456:short",
            "Bearer tok",
            "xoxb-short",
            "unicode ✓ sk- é",
        ] {
            assert_eq!(r.redact(keep), keep);
        }
    }

    #[test]
    fn overlapping_matches_become_one_marker() {
        let s = Secret::new("sk-abcdefghijklmnopqrstuvwxyz".to_owned());
        let r = Redactor::new(&[&s]);
        assert_eq!(
            r.redact("Bearer sk-abcdefghijklmnopqrstuvwxyz!"),
            "Bearer [REDACTED]!"
        );
        assert_eq!(
            r.redact("é sk-abcdefghijklmnopqrstuvwxyz é"),
            "é [REDACTED] é"
        );
    }

    fn write_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn reads_a_private_secret_file_and_trims_the_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path(), "key", "abc123\n", 0o600);
        assert_eq!(read_secret_file(&p).unwrap().expose(), "abc123");
        let p = write_file(dir.path(), "key2", "abc123\r\n", 0o400);
        assert_eq!(read_secret_file(&p).unwrap().expose(), "abc123");
    }

    #[test]
    fn refuses_shared_symlinked_empty_and_odd_files() {
        let dir = tempfile::tempdir().unwrap();
        let open = write_file(dir.path(), "open", "abc\n", 0o644);
        let err = read_secret_file(&open).unwrap_err();
        assert!(matches!(err, SecretError::Permissions { mode: 0o644, .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", open.display())),
            "{msg}"
        );
        assert!(!msg.contains('\n'));

        let good = write_file(dir.path(), "good", "abc\n", 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(matches!(
            read_secret_file(&link),
            Err(SecretError::Symlink(_))
        ));

        let empty = write_file(dir.path(), "empty", "\n", 0o600);
        assert!(matches!(
            read_secret_file(&empty),
            Err(SecretError::Empty(_))
        ));
        let two = write_file(dir.path(), "two", "abc\ndef\n", 0o600);
        assert!(matches!(
            read_secret_file(&two),
            Err(SecretError::Malformed(_))
        ));
        let big = write_file(dir.path(), "big", &"a".repeat(20_000), 0o600);
        assert!(matches!(
            read_secret_file(&big),
            Err(SecretError::TooLarge(_))
        ));
        assert!(matches!(
            read_secret_file(dir.path()),
            Err(SecretError::NotAFile(_))
        ));
        assert!(matches!(
            read_secret_file(&dir.path().join("missing")),
            Err(SecretError::Io { .. })
        ));
    }
}
