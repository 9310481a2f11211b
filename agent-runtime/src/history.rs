//! What one LLM request carries: the system prompt, then as much recent history as fits the
//! byte budget.
//!
//! The budget counts the serialized JSON of every message sent, system prompt included.
//! History is cut only at the start of a turn (a user message), so an assistant message with
//! tool calls always travels with its results, and the newest turn is always sent. If that turn
//! alone is over budget, its oldest tool outputs are replaced by a short placeholder; past that
//! the request goes out over budget rather than without the user's message.

use std::io::Write;

use boxedclaw_protocol::chat::{ChatMessage, Role};

/// Replaces tool output that does not fit the budget.
pub(crate) const ELIDED: &str = "[output omitted: over the history size budget]";

/// The messages for an LLM request.
pub(crate) fn request_messages(
    system_prompt: &str,
    history: &[ChatMessage],
    budget: usize,
) -> Vec<ChatMessage> {
    let system = ChatMessage::text(Role::System, system_prompt);
    let sizes: Vec<usize> = history.iter().map(json_len).collect();
    let mut total = json_len(&system) + sizes.iter().sum::<usize>();
    // Where history may be cut: each user message, up to the newest one (always kept).
    let newest_user = history
        .iter()
        .rposition(|m| m.role == Role::User)
        .unwrap_or(0);
    let mut start = 0;
    for cut in (1..=newest_user).filter(|&i| history.get(i).is_some_and(|m| m.role == Role::User)) {
        if total <= budget {
            break;
        }
        total -= sizes.get(start..cut).map_or(0, |s| s.iter().sum::<usize>());
        start = cut;
    }
    let mut out = Vec::with_capacity(history.len() - start + 1);
    out.push(system);
    out.extend(history.get(start..).unwrap_or_default().iter().cloned());
    for m in out.iter_mut().filter(|m| m.role == Role::Tool) {
        if total <= budget {
            break;
        }
        let before = json_len(m);
        if m.content.as_ref().is_some_and(|c| c.len() > ELIDED.len()) {
            m.content = Some(ELIDED.to_owned());
            total -= before - json_len(m);
        }
    }
    out
}

/// Bytes of `m` as JSON, counted without building the text.
fn json_len(m: &ChatMessage) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing into a counter cannot fail; one byte stands for the separator.
    let _ = serde_json::to_writer(&mut c, m);
    c.0 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxedclaw_protocol::ToolCallId;
    use boxedclaw_protocol::chat::ToolCall;

    fn id(s: &str) -> ToolCallId {
        ToolCallId::new(s).unwrap()
    }

    /// A turn: the user's message, one tool round with `n` calls, and a final answer.
    fn turn(t: usize, n: usize, output: &str) -> Vec<ChatMessage> {
        let ids: Vec<String> = (0..n).map(|i| format!("t{t}c{i}")).collect();
        let mut v = vec![
            ChatMessage::text(Role::User, format!("question {t}")),
            ChatMessage {
                role: Role::Assistant,
                content: None,
                tool_calls: ids
                    .iter()
                    .map(|i| ToolCall {
                        id: id(i),
                        name: "shell".into(),
                        arguments: "{}".into(),
                    })
                    .collect(),
                tool_call_id: None,
            },
        ];
        v.extend(ids.iter().map(|i| ChatMessage::tool_result(id(i), output)));
        v.push(ChatMessage::text(Role::Assistant, format!("answer {t}")));
        v
    }

    fn size(msgs: &[ChatMessage]) -> usize {
        msgs.iter().map(json_len).sum()
    }

    /// Every assistant tool call is answered right after it, and nothing else is.
    fn well_formed(msgs: &[ChatMessage]) -> bool {
        let mut pending: Vec<&ToolCallId> = Vec::new();
        for m in msgs {
            match m.role {
                Role::Tool => {
                    let Some(i) = pending
                        .iter()
                        .position(|p| Some(*p) == m.tool_call_id.as_ref())
                    else {
                        return false;
                    };
                    pending.remove(i);
                }
                _ if !pending.is_empty() => return false,
                _ => pending = m.tool_calls.iter().map(|c| &c.id).collect(),
            }
        }
        pending.is_empty()
    }

    #[test]
    fn everything_is_sent_when_it_fits() {
        let history: Vec<_> = (0..3).flat_map(|t| turn(t, 2, "out")).collect();
        let out = request_messages("be nice", &history, 1 << 20);
        assert_eq!(out[0], ChatMessage::text(Role::System, "be nice"));
        assert_eq!(&out[1..], &history[..]);
    }

    #[test]
    fn oldest_whole_turns_go_first_and_pairs_stay_together() {
        let history: Vec<_> = (0..10).flat_map(|t| turn(t, 3, &"x".repeat(100))).collect();
        for budget in [0, 100, 500, 1000, 2000, 3000, 5000] {
            let out = request_messages("sys", &history, budget);
            assert_eq!(out[0].role, Role::System);
            assert_eq!(out[1].role, Role::User, "history starts at a turn");
            assert!(well_formed(&out[1..]), "budget {budget}");
            assert!(out.contains(&ChatMessage::text(Role::User, "question 9")));
            let one_turn = size(&turn(9, 3, &"x".repeat(100))) + json_len(&out[0]);
            if budget >= one_turn {
                assert!(size(&out) <= budget, "budget {budget}: {}", size(&out));
                // Greedy: adding back the previous turn would not fit.
                let kept_turns = out.iter().filter(|m| m.role == Role::User).count();
                assert!(kept_turns < 10);
                let prev = turn(9 - kept_turns, 3, &"x".repeat(100));
                assert!(size(&out) + size(&prev) > budget);
            }
        }
    }

    #[test]
    fn an_oversized_newest_turn_loses_old_tool_output_not_its_shape() {
        let mut history = turn(0, 1, "old");
        history.push(ChatMessage::text(Role::User, "now"));
        history.extend(turn(1, 4, &"y".repeat(10_000))[1..].iter().cloned());
        let out = request_messages("sys", &history, 25_000);
        assert_eq!(out[1], ChatMessage::text(Role::User, "now"));
        assert!(well_formed(&out[1..]));
        let elided = out
            .iter()
            .filter(|m| m.content.as_deref() == Some(ELIDED))
            .count();
        assert_eq!(elided, 2);
        assert!(size(&out) <= 25_000);
        // The newest results survive intact.
        assert_eq!(
            out[out.len() - 2].content.as_deref(),
            Some("y".repeat(10_000).as_str())
        );
    }
}
