//! Rendering helpers shared by adapters.

/// Splits `text` into pieces of at most `max_chars` characters, preferring to cut at a blank
/// line, then a newline, then a space, and never inside a character. Nothing is dropped:
/// concatenating the pieces gives back `text`.
pub fn split_message(text: &str, max_chars: usize) -> Vec<&str> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // Byte offset just past `max_chars` characters, or the whole rest if shorter.
        let hard = match rest.char_indices().nth(max_chars) {
            Some((i, _)) => i,
            None => {
                out.push(rest);
                break;
            }
        };
        let window = &rest[..hard];
        // Cut after the separator, but only if that keeps the piece at least half full, so a
        // separator near the start does not produce a flood of tiny messages.
        let min = hard / 2;
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| {
                window
                    .rfind(sep)
                    .map(|i| i + sep.len())
                    .filter(|&i| i > min)
            })
            .unwrap_or(hard);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// Makes agent text safe for a terminal: control characters other than newline and tab (ANSI
/// escapes, carriage returns, backspaces) and invisible or bidi characters are shown as
/// `\u{…}` instead of acting on the screen.
pub fn terminal_safe(text: &str) -> String {
    boxedclaw_protocol::display::escape_untrusted_multiline(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_respect_the_limit_and_lose_nothing() {
        let text = "alpha beta\n\ngamma delta epsilon\nzeta ".repeat(50) + &"é".repeat(300);
        for max in [1, 7, 64, 4096] {
            let pieces = split_message(&text, max);
            assert!(pieces.iter().all(|p| p.chars().count() <= max));
            assert_eq!(pieces.concat(), text);
        }
    }

    #[test]
    fn prefers_paragraph_then_line_boundaries() {
        let text = format!("{}\n\n{}", "a".repeat(30), "b".repeat(30));
        assert_eq!(split_message(&text, 40), vec![&text[..32], &text[32..]]);
    }

    #[test]
    fn terminal_escapes_are_neutralized() {
        assert_eq!(
            terminal_safe("ok\x1b[2J\r\nx\ty"),
            "ok\\u{001B}[2J\\u{000D}\nx\ty"
        );
    }
}
