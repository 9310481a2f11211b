//! Text as Discord shows it: escaping, splitting, truncating.
//!
//! Discord always interprets message content as its markdown dialect and resolves mentions,
//! and has no "plain text" switch. So every text this adapter sends (agent replies, approval
//! actions, notices) is escaped with backslashes, which Discord removes when it renders: the
//! user sees exactly the characters the agent wrote, and `**x**`, `` `x` ``, `[l](u)`,
//! `<@123>`, `@everyone`, `# title` and `> quote` are shown as typed, never as formatting, links
//! or pings. (`allowed_mentions: {"parse": []}` is sent as well, so even a missed mention
//! cannot notify anyone.)
//!
//! Rules, matching Discord's renderer (a backslash before any ASCII punctuation shows that
//! character; a bare `http(s)://` URL is taken as a link before escapes are looked at):
//! - everywhere: `\`, `*`, `_`, `~`, `` ` ``, `|`, `[`, `]`, `<` and `@` get a backslash;
//! - at the start of a line (after spaces): `#`, `-`, `>` and the `.` of `1.` get one, since
//!   only there do they make headings, lists, subtext and quotes;
//! - URLs (`http://…`, `https://…` up to whitespace or `<`) are left alone, so they stay
//!   clickable links (a backslash inside would become part of the URL); a URL directly
//!   followed by `<` is shown as text (`http\://…`), since the `<`'s escape would join it.
//!
//! Discord limits content to 2000 characters; pieces are kept within 2000 UTF-16 code units
//! *after* escaping, which is within the limit however Discord counts.

use boxedclaw_channels::render::split_message;

/// Discord's longest message content.
pub(crate) const LIMIT: usize = 2000;

/// Characters escaped wherever they appear.
const ALWAYS: &[char] = &['\\', '*', '_', '~', '`', '|', '[', ']', '<', '@'];
/// Characters escaped at the start of a line only.
const LINE_START: &[char] = &['#', '-', '>'];

/// Length of a URL starting at `rest`, if `rest` starts with one.
fn url_len(rest: &str) -> Option<usize> {
    if !(rest.starts_with("http://") || rest.starts_with("https://")) {
        return None;
    }
    Some(
        rest.find(|c: char| c.is_whitespace() || c == '<')
            .unwrap_or(rest.len()),
    )
}

/// `text` escaped so that Discord shows it literally (see the module docs).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8 + 8);
    let mut line_start = true;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if let Some(n) = url_len(rest) {
            if rest[n..].starts_with('<') {
                // A URL right before `<` would take any escape of that `<` into the link: show
                // it as text instead (an escaped `:` keeps it from being a link).
                let scheme = rest.find(':').unwrap_or(0);
                out.push_str(&rest[..scheme]);
                out.push_str("\\:");
                i += scheme + 1;
            } else {
                out.push_str(&rest[..n]);
                i += n;
            }
            line_start = false;
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        if line_start && (c == ' ' || c == '\t') {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        if line_start && c.is_ascii_digit() {
            // An ordered-list marker `12. `: escape its dot.
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            out.push_str(&rest[..digits]);
            i += digits;
            if rest[digits..].starts_with('.') {
                out.push_str("\\.");
                i += 1;
            }
            line_start = false;
            continue;
        }
        if ALWAYS.contains(&c) || (line_start && LINE_START.contains(&c)) {
            out.push('\\');
        }
        out.push(c);
        line_start = c == '\n';
        i += c.len_utf8();
    }
    out
}

/// What Discord displays for `content`: the inverse of [`escape`], as Discord's renderer
/// applies it (a backslash before ASCII punctuation outside URLs is dropped).
#[cfg(any(test, feature = "test-utils"))]
pub(crate) fn displayed(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        let rest = &content[i..];
        if let Some(n) = url_len(rest) {
            out.push_str(&rest[..n]);
            i += n;
            continue;
        }
        let mut chars = rest.chars();
        let Some(c) = chars.next() else { break };
        if c == '\\'
            && let Some(next) = chars.next()
            && next.is_ascii_punctuation()
        {
            out.push(next);
            i += 1 + next.len_utf8();
            continue;
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// UTF-16 length: the strictest way Discord might count a message's length.
pub(crate) fn units(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Whether `text`, escaped, fits in one message.
pub(crate) fn fits(text: &str, limit: usize) -> bool {
    units(&escape(text)) <= limit
}

/// `text` in pieces whose escaped forms each fit in `limit` UTF-16 units, each as long as
/// possible and cut at a blank line, line or space where one keeps it at least half full.
/// The pieces concatenate to `text`.
pub(crate) fn pieces(text: &str, limit: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if fits(rest, limit) {
            out.push(rest);
            break;
        }
        // The most characters whose escaped form fits (escaping only grows with the prefix),
        // then the usual boundary rules within that window.
        let ends: Vec<usize> = rest.char_indices().map(|(i, _)| i).collect();
        let (mut lo, mut hi) = (1, ends.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(&rest[..ends[mid]], limit) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let piece = split_message(rest, lo)[0];
        out.push(piece);
        rest = &rest[piece.len()..];
    }
    out
}

/// `text` escaped and cut to fit `limit` UTF-16 units, ending in `…` when cut.
pub(crate) fn escape_truncated(text: &str, limit: usize) -> String {
    let escaped = escape(text);
    if units(&escaped) <= limit {
        return escaped;
    }
    // Cut the raw text, not the escaped one, so no escape is split from its character: the
    // longest prefix (in characters) whose escaped form plus `…` fits.
    let ends: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let fits_with = |n: usize| units(&escape(&text[..ends[n]])) < limit;
    let (mut lo, mut hi) = (0, ends.len() - 1);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits_with(mid) {
            lo = mid
        } else {
            hi = mid - 1
        }
    }
    format!("{}…", escape(&text[..ends[lo]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_mentions_are_shown_literally() {
        for text in [
            "**bold** __u__ ~~s~~ `code` ```block``` ||spoiler||",
            "[click](http://evil.example) <@123> <@!123> <@&9> <#7> <t:1:R> @everyone @here",
            "# heading\n## two\n-# subtext\n- item\n  * item\n> quote\n>>> all\n1. first\n10. ten",
            r#"shell: {"command":"echo <b>hi</b> *x* _y_ `z` [l](http://e.x) \u{202E}"}"#,
            "back\\slash \\* \\\\ trailing\\",
            "a > b - c # d 3.5 x-y",
        ] {
            let sent = escape(text);
            assert_eq!(displayed(&sent), text, "{sent}");
            // Nothing that starts markup or a mention survives unescaped outside URLs.
            for bad in ["**", "<@", "@everyone", "[click]", "||", "`"] {
                assert!(
                    !sent.replace(&format!("\\{}", &bad[..1]), "").contains(bad),
                    "{bad} in {sent}"
                );
            }
        }
        assert_eq!(escape("# h\n- l\n> q\n2. n"), "\\# h\n\\- l\n\\> q\n2\\. n");
        assert_eq!(escape("a # b - c > d"), "a # b - c > d");
    }

    #[test]
    fn urls_stay_links() {
        let text = "see https://example.com/a_b*c?x=[1] and http://e.x/~u<@1>";
        let sent = escape(text);
        assert!(sent.contains("https://example.com/a_b*c?x=[1]"), "{sent}");
        assert!(sent.contains("http\\://e.x/\\~u\\<\\@1>"), "{sent}");
        assert_eq!(displayed(&sent), text);
    }

    #[test]
    fn pieces_fit_after_escaping_and_lose_nothing() {
        let text = "*_~".repeat(1500) + &"🦀".repeat(1500) + &"word ".repeat(900);
        let parts = pieces(&text, LIMIT);
        assert!(parts.len() >= 4);
        // Every piece but the last is well filled: no tiny leftovers.
        assert!(
            parts[..parts.len() - 1]
                .iter()
                .all(|p| units(&escape(p)) > LIMIT / 2)
        );
        assert!(parts.iter().all(|p| units(&escape(p)) <= LIMIT));
        assert_eq!(parts.concat(), text);
        assert_eq!(pieces("short", LIMIT), ["short"]);
    }

    #[test]
    fn truncation_keeps_escapes_whole() {
        let t = escape_truncated(&"*".repeat(100), 51);
        assert!(units(&t) <= 51, "{t}");
        assert!(t.ends_with('…'));
        assert_eq!(displayed(t.trim_end_matches('…')), "*".repeat(25));
        assert_eq!(escape_truncated("ok", 10), "ok");
    }
}
