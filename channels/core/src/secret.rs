//! [`Secret`]: a value (API key, bot token) that cannot be printed, cloned or serialized by
//! accident. It lives in the channels crate because adapters hold platform tokens too; the
//! gateway re-exports it next to its redactor.

use std::fmt;

use zeroize::Zeroizing;

/// What the `Debug`/`Display` of [`Secret`] (and the gateway's redactor) print instead of a
/// secret.
pub const REDACTED: &str = "[REDACTED]";

/// A secret value (API key, bot token) whose memory is wiped on drop.
///
/// It deliberately implements neither `Clone` nor `Serialize`: every copy is one more place the
/// value could leak from, and serializing config or state must never write a key out. Share it
/// with `Arc<Secret>` instead. `Debug` and `Display` print `[REDACTED]`.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value. The `String` is moved in, so no unwiped copy is left behind by this call.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret's value. Call this only where the value is put on the wire (an
    /// `Authorization` header), never to log, format or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals the secret, in time that depends on the lengths only, so a
    /// caller probing a webhook secret learns nothing from how long a refusal takes.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        if secret.len() != candidate.len() {
            return false;
        }
        secret
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_and_compares_whole_values_only() {
        let s = Secret::new("hunter2-token".to_owned());
        assert_eq!(format!("{s} {s:?}"), "[REDACTED] [REDACTED]");
        assert!(s.matches(b"hunter2-token"));
        assert!(!s.matches(b"hunter2-tokem"));
        assert!(!s.matches(b"hunter2"));
        assert!(!s.matches(b""));
    }
}
