//! The Slack channel end to end: the real gateway with the slack-morphism-based adapter,
//! pointed at a fake Slack (Web API + Socket Mode websocket) on 127.0.0.1:0, the real
//! namespace sandbox and agent, and a fake LLM.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_protocol::ids::{ConversationKey, Platform};
use boxedclaw_slack::fake::{FakeSlack, SlackMessage};
use serde_json::json;
use support::in_process::{RunningGateway, WAIT, line_count};
use support::{text, tool};

const BOT_TOKEN: &str = "xoxb-1111-2222-slacktesttoken";
const APP_TOKEN: &str = "xapp-1-A0FAKE-3333-slackapptoken";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

struct Gateway {
    inner: RunningGateway,
    slack: Arc<FakeSlack>,
}

impl Gateway {
    /// Socket Mode, or the Events API over HTTP when `http` is set.
    async fn start(http: bool) -> Self {
        let slack = FakeSlack::start(BOT_TOKEN, APP_TOKEN).await;
        let api_url = slack.api_url();
        let mut vars = vec![
            ("SLACK_BOT_TOKEN", BOT_TOKEN),
            ("SLACK_API_URL", api_url.as_str()),
            ("BOXEDCLAW_ADMINS", "slack:U0ADMIN"),
        ];
        if http {
            vars.push(("SLACK_SIGNING_SECRET", SIGNING_SECRET));
        } else {
            vars.push(("SLACK_APP_TOKEN", APP_TOKEN));
        }
        let inner = RunningGateway::start("", &vars, 1).await;
        let g = Self { inner, slack };
        g.slack
            .wait_until(WAIT, "auth.test", |s| {
                (!s.calls_to("auth.test").is_empty()).then_some(())
            })
            .await;
        if !http {
            g.slack
                .wait_until(WAIT, "a Socket Mode connection", |s| {
                    (s.connections() > 0).then_some(())
                })
                .await;
        }
        g
    }

    fn workspace(&self, channel: &str, thread: Option<&str>) -> std::path::PathBuf {
        let key =
            ConversationKey::new(Platform::Slack, Some(FakeSlack::TEAM), channel, thread).unwrap();
        self.inner.workspace(&key)
    }

    async fn shown(&self, channel: &str, needle: &str) -> SlackMessage {
        let what = format!("a message containing {needle:?} in {channel}");
        self.slack
            .wait_until(WAIT, &what, |s| {
                s.messages(channel)
                    .into_iter()
                    .find(|m| m.text.contains(needle))
            })
            .await
    }

    async fn ephemeral(&self, user: &str, needle: &str) -> String {
        let what = format!("an ephemeral answer for {user} containing {needle:?}");
        self.slack
            .wait_until(WAIT, &what, |s| {
                s.ephemerals()
                    .into_iter()
                    .find(|(u, t)| u == user && t.contains(needle))
                    .map(|(_, t)| t)
            })
            .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_starts_a_thread_and_follow_ups_reach_the_same_agent() {
    let g = Gateway::start(false).await;
    g.inner.llm.script(
        "first thread question",
        vec![text("first answer"), text("second answer")],
    );
    g.inner
        .llm
        .script("other thread question", vec![text("other answer")]);
    let root = g.slack.mention("C1", "U1", "first thread question");
    let reply = g.shown("C1", "first answer").await;
    assert_eq!(
        reply.thread_ts.as_deref(),
        Some(root.as_str()),
        "reply in the new thread"
    );
    g.slack.thread_message("C1", &root, "U1", "and a follow-up");
    let second = g.shown("C1", "second answer").await;
    assert_eq!(second.thread_ts.as_deref(), Some(root.as_str()));
    let last = g
        .inner
        .llm
        .requests_for("first thread question")
        .pop()
        .unwrap();
    assert!(
        last.to_string().contains("and a follow-up"),
        "same agent, same memory"
    );
    // One mention, delivered as both app_mention and message: one turn.
    assert_eq!(g.inner.llm.requests_for("first thread question").len(), 2);

    let other = g.slack.mention("C1", "U2", "other thread question");
    let answer = g.shown("C1", "other answer").await;
    assert_eq!(answer.thread_ts.as_deref(), Some(other.as_str()));
    assert!(g.workspace("C1", Some(&root)).is_dir());
    assert!(
        g.workspace("C1", Some(&other)).is_dir(),
        "two threads, two agents"
    );
    // Nothing was posted at the channel root.
    assert!(g.slack.messages("C1").iter().all(|m| m.thread_ts.is_some()));
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn block_action_approvals_count_only_from_the_requester_and_run_once() {
    let g = Gateway::start(false).await;
    g.inner.llm.script(
        "append a line",
        vec![
            tool(
                "shell",
                json!({"command": "echo ran >> /workspace/log.txt"}),
            ),
            text("finished: {last_tool_result}"),
        ],
    );
    let root = g.slack.mention("C2", "U1", "append a line");
    let prompt = g.shown("C2", "Approval needed").await;
    assert_eq!(prompt.buttons.len(), 2, "{prompt:?}");
    assert_eq!(prompt.thread_ts.as_deref(), Some(root.as_str()));
    let approve = prompt
        .buttons
        .iter()
        .find(|b| b.label == "Approve")
        .unwrap()
        .clone();
    let log = g.workspace("C2", Some(&root)).join("log.txt");

    // Someone else clicks: refused privately, still pending, nothing ran.
    g.slack
        .click("U9", "C2", &prompt.ts, &approve.action_id, &approve.value);
    g.ephemeral("U9", "may not decide").await;
    // A forged value (no valid signature).
    g.slack.click(
        "U1",
        "C2",
        &prompt.ts,
        &approve.action_id,
        "1a0123456789ab.0000000000000000",
    );
    g.ephemeral("U1", "not valid here").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = g.shown("C2", "Approval needed").await;
    assert_eq!(still.buttons.len(), 2, "still pending: {still:?}");
    assert_eq!(line_count(&log), 0);

    // The requester approves (twice): it runs once, and the prompt loses its buttons.
    g.slack
        .click("U1", "C2", &prompt.ts, &approve.action_id, &approve.value);
    g.slack
        .click("U1", "C2", &prompt.ts, &approve.action_id, &approve.value);
    g.shown("C2", "finished:").await;
    let decided = g.shown("C2", "approved by slack:U1").await;
    assert_eq!(decided.ts, prompt.ts, "the prompt itself is updated");
    assert!(decided.buttons.is_empty(), "{decided:?}");
    assert_eq!(line_count(&log), 1, "ran exactly once");
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_output_cannot_ping_or_disguise_links() {
    let g = Gateway::start(false).await;
    g.inner.llm.script(
        "say something loud",
        vec![text(
            "<!channel> <!here> <@U1> see <https://evil.example|docs>",
        )],
    );
    g.slack.mention("C3", "U1", "say something loud");
    let reply = g.shown("C3", "&lt;!channel&gt;").await;
    assert!(
        !reply.text.contains("<!channel>") && !reply.text.contains("<@U1>"),
        "{reply:?}"
    );
    let body = g
        .slack
        .calls_to("chat.postMessage")
        .into_iter()
        .find(|b| {
            b["text"]
                .as_str()
                .is_some_and(|t| t.contains("&lt;!channel"))
        })
        .unwrap();
    assert_eq!(body["unfurl_links"], false, "{body}");
    assert_eq!(body["link_names"], false, "{body}");
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_socket_reconnects_without_losing_or_doubling_events() {
    let g = Gateway::start(false).await;
    g.inner.llm.script(
        "before the drop",
        vec![text("answer one"), text("answer two")],
    );
    let root = g.slack.mention("C4", "U1", "before the drop");
    g.shown("C4", "answer one").await;
    g.slack.drop_connection();
    // Sent while the connection is down: delivered once the adapter is back.
    g.slack.thread_message("C4", &root, "U1", "during the drop");
    g.shown("C4", "answer two").await;
    assert!(g.slack.connections() >= 2, "reconnected");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        g.inner.llm.requests_for("before the drop").len(),
        2,
        "each message one turn"
    );
    let answers = g
        .slack
        .messages("C4")
        .into_iter()
        .filter(|m| m.text.contains("answer two"))
        .count();
    assert_eq!(answers, 1);
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slash_command_answers_admins_privately_and_refuses_others() {
    let g = Gateway::start(false).await;
    g.slack.slash_command("U0ADMIN", "C5", "status");
    let status = g.ephemeral("U0ADMIN", "conversations").await;
    assert!(status.contains("pending approvals"), "{status}");
    g.slack.slash_command("U7", "C5", "status");
    g.ephemeral("U7", "Only gateway admins").await;
    assert!(g.slack.messages("C5").is_empty(), "nothing public");
    assert!(
        g.inner.llm.requests().is_empty(),
        "commands never reach the agent"
    );
    g.inner.stop().await;
}

/// POSTs an Events API body to the gateway, signed with `secret` at `timestamp`.
async fn post_event(
    g: &Gateway,
    body: &serde_json::Value,
    secret: &str,
    timestamp: i64,
    retry: Option<u32>,
) -> u16 {
    let raw = body.to_string();
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/slack/events", g.inner.http))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", timestamp.to_string())
        .header(
            "x-slack-signature",
            FakeSlack::sign(secret, timestamp, raw.as_bytes()),
        )
        .body(raw);
    if let Some(n) = retry {
        req = req
            .header("x-slack-retry-num", n.to_string())
            .header("x-slack-retry-reason", "http_timeout");
    }
    req.send().await.unwrap().status().as_u16()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn http_events_need_a_fresh_valid_signature_and_retries_make_one_turn() {
    let g = Gateway::start(true).await;
    g.inner
        .llm
        .script("hello over http", vec![text("http answer")]);
    let body = g.slack.mention_event_body("C6", "U1", "hello over http");
    assert_eq!(
        post_event(&g, &body, "wrong-secret", now(), None).await,
        401
    );
    assert_eq!(
        post_event(&g, &body, SIGNING_SECRET, now() - 301, None).await,
        401
    );
    assert_eq!(
        post_event(&g, &body, SIGNING_SECRET, now() + 301, None).await,
        401
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        g.inner.llm.requests().is_empty(),
        "a refused request reached the agent"
    );

    assert_eq!(
        post_event(&g, &body, SIGNING_SECRET, now(), None).await,
        200
    );
    for n in 1..=2 {
        assert_eq!(
            post_event(&g, &body, SIGNING_SECRET, now(), Some(n)).await,
            200
        );
    }
    g.shown("C6", "http answer").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        g.inner.llm.requests_for("hello over http").len(),
        1,
        "one turn"
    );
    let replies = g
        .slack
        .messages("C6")
        .into_iter()
        .filter(|m| m.text.contains("http answer"))
        .count();
    assert_eq!(replies, 1);
    g.inner.stop().await;
}
