//! Showing untrusted text to a human who must decide on it.
//!
//! An approval prompt is only as honest as its rendering: a right-to-left override, a
//! zero-width space, an ANSI escape or a line separator can make `rm -rf ~` look like
//! something else. [`escape_untrusted`] makes every such character visible as `\u{…}` (and
//! escapes the backslash itself, so the escaped form is unambiguous) while leaving ordinary
//! text, including non-Latin scripts, as it is.

use std::fmt::Write as _;

/// True for characters that render as nothing, move the cursor, or reorder text.
fn is_deceptive(c: char) -> bool {
    c.is_control() // C0, DEL, C1 — includes \n, \r, \t, ESC
        || matches!(c,
            '\u{00AD}'                      // soft hyphen
            | '\u{034F}'                    // combining grapheme joiner
            | '\u{061C}'                    // Arabic letter mark
            | '\u{115F}' | '\u{1160}'       // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'       // Mongolian selectors and vowel separator
            | '\u{200B}'..='\u{200F}'       // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}'       // line/paragraph separators, bidi embeddings
            | '\u{2060}'..='\u{206F}'       // word joiner, invisible operators, bidi isolates
            | '\u{3164}'                    // Hangul filler
            | '\u{FE00}'..='\u{FE0F}'       // variation selectors
            | '\u{FEFF}'                    // BOM / zero-width no-break space
            | '\u{FFA0}'                    // halfwidth Hangul filler
            | '\u{FFF9}'..='\u{FFFB}'       // interlinear annotations
            | '\u{E0000}'..='\u{E007F}'     // tag characters
            | '\u{E0100}'..='\u{E01EF}'     // variation selectors supplement
        )
}

/// Escapes deceptive characters as `\u{XXXX}` and `\` as `\\`; everything else is kept. For
/// one-line displays of what will run, such as approval prompts.
pub fn escape_untrusted(s: &str) -> String {
    escape(s, false)
}

/// Like [`escape_untrusted`], but keeps newlines and tabs and leaves backslashes alone: for
/// multi-line text such as agent replies, where layout matters and no decision hangs on
/// telling `\u{202E}` typed out from the real character.
pub fn escape_untrusted_multiline(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' && !multiline {
            out.push_str("\\\\");
        } else if multiline && (c == '\n' || c == '\t') {
            out.push(c);
        } else if is_deceptive(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:04X}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_control_characters_become_visible() {
        let shown = escape_untrusted("ls\u{200B} \u{202E}fdp\u{2028}\x1b[2Jrm -rf ~\r\n");
        assert_eq!(
            shown,
            "ls\\u{200B} \\u{202E}fdp\\u{2028}\\u{001B}[2Jrm -rf ~\\u{000D}\\u{000A}"
        );
        assert!(!shown.chars().any(is_deceptive));
    }

    #[test]
    fn multiline_keeps_layout_but_not_tricks() {
        assert_eq!(
            escape_untrusted_multiline("a\\b\n\tc\u{202E}\x1b[2J\r"),
            "a\\b\n\tc\\u{202E}\\u{001B}[2J\\u{000D}"
        );
    }

    #[test]
    fn escaping_is_unambiguous_and_keeps_ordinary_text() {
        assert_eq!(escape_untrusted(r"a\u{202E}"), r"a\\u{202E}");
        assert_eq!(
            escape_untrusted("grüße, 日本語 `code`"),
            "grüße, 日本語 `code`"
        );
    }
}
