//! Data of Approve / Deny buttons: opaque, versioned, bounded, and signed.
//!
//! Platforms return a button's data verbatim with the click (Telegram's `callback_data`,
//! Slack's `value`, Discord's `custom_id`), and a modified client can send any data it likes. So the data names nothing by itself: it carries the approval id
//! and the decision, plus an HMAC over them *and the conversation the prompt was posted in*,
//! keyed by a key derived from the bot token (stable across restarts, unknown to users). A
//! click counts only when the MAC matches the conversation of the message actually clicked;
//! the gateway then checks again that the approval is pending in that conversation and that
//! the clicker may decide it.
//!
//! Format (ASCII, at most [`MAX_LEN`] bytes, within every platform's limit: Telegram's 64,
//! Discord's 100, Slack's 2000): `1<a|d><id>.<mac>`, where `1` is the format version, `<id>`
//! the approval id and `<mac>` 16 hex digits.

use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Longest button data written or accepted (Telegram's limit, the smallest).
pub const MAX_LEN: usize = 64;
/// The format version this adapter writes.
const VERSION: char = '1';
/// Hex digits of MAC kept (64 bits: forging one takes 2^64 tries against Telegram's rate
/// limits).
const MAC_HEX: usize = 16;

/// Signs and checks callback data.
pub struct ButtonSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for ButtonSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ButtonSigner")
    }
}

impl ButtonSigner {
    /// A signer keyed from the bot token (and the platform, so one token never signs for
    /// another platform): restarts keep accepting buttons already posted.
    pub fn from_token(platform: Platform, token: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"boxedclaw button v1\0");
        h.update(platform.to_string().as_bytes());
        h.update(b"\0");
        h.update(token.as_bytes());
        Self {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, conversation: &ConversationKey, approve: bool, approval: &str) -> String {
        // `new_from_slice` accepts any key length for HMAC; 32 bytes cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(conversation.storage_name().as_bytes());
        mac.update(&[0, u8::from(approve)]);
        mac.update(approval.as_bytes());
        let tag = mac.finalize().into_bytes();
        hex::encode(&tag[..MAC_HEX / 2])
    }

    /// The data for one button.
    pub fn seal(
        &self,
        conversation: &ConversationKey,
        approval: &ApprovalId,
        approve: bool,
    ) -> String {
        let decision = if approve { 'a' } else { 'd' };
        let mac = self.mac(conversation, approve, approval.as_str());
        format!("{VERSION}{decision}{approval}.{mac}")
    }

    /// The approval and decision, if `data` was sealed by this bot for `conversation`.
    pub fn open(&self, data: &str, conversation: &ConversationKey) -> Option<(ApprovalId, bool)> {
        if data.len() > MAX_LEN || !data.is_ascii() {
            return None;
        }
        let rest = data.strip_prefix(VERSION)?;
        let approve = match rest.as_bytes().first()? {
            b'a' => true,
            b'd' => false,
            _ => return None,
        };
        let (id, mac) = rest[1..].split_once('.')?;
        let expected = self.mac(conversation, approve, id);
        // Constant-time: a refusal's timing says nothing about how much of the MAC matched.
        let same = mac.len() == expected.len()
            && mac
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return None;
        }
        ApprovalId::new(id.to_owned()).ok().map(|id| (id, approve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(chat: &str, topic: Option<&str>) -> ConversationKey {
        ConversationKey::new(Platform::Telegram, None, chat, topic).unwrap()
    }

    #[test]
    fn sealed_data_opens_only_for_its_conversation_and_signer() {
        let signer = ButtonSigner::from_token(Platform::Telegram, "123:token");
        let id = ApprovalId::new("0123456789ab".to_owned()).unwrap();
        let here = conv("-1001", Some("7"));
        let data = signer.seal(&here, &id, true);
        assert!(data.len() <= MAX_LEN, "{data}");
        assert_eq!(signer.open(&data, &here), Some((id.clone(), true)));
        // Another topic of the same group, another chat, another bot: refused.
        assert_eq!(signer.open(&data, &conv("-1001", Some("8"))), None);
        assert_eq!(signer.open(&data, &conv("-1002", Some("7"))), None);
        assert_eq!(
            ButtonSigner::from_token(Platform::Telegram, "456:other").open(&data, &here),
            None
        );
        // Flipping the decision or the id breaks the MAC.
        let flipped = data.replacen("1a", "1d", 1);
        assert_eq!(signer.open(&flipped, &here), None);
        let other_id = data.replacen("0123", "0124", 1);
        assert_eq!(signer.open(&other_id, &here), None);
    }

    #[test]
    fn malformed_data_is_refused() {
        let signer = ButtonSigner::from_token(Platform::Telegram, "123:token");
        let here = conv("42", None);
        for bad in [
            "",
            "1",
            "1a",
            "2a0123456789ab.0000000000000000",
            "1x0123456789ab.0000000000000000",
            "1a0123456789ab",
            "1a0123456789ab.",
            "approve:0123456789ab",
            &"1a".repeat(40),
            "1aé.00",
        ] {
            assert_eq!(signer.open(bad, &here), None, "{bad:?}");
        }
    }
}
