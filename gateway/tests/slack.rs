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
        Self::launch(slack, http, &[]).await
    }

    /// A gateway against `slack` (which may have served an earlier gateway), with the extra
    /// environment `extra`; returns once it identified itself and, in Socket Mode, holds the
    /// one live connection.
    async fn launch(slack: Arc<FakeSlack>, http: bool, extra: &[(&str, &str)]) -> Self {
        let identified = slack.calls_to("auth.test").len();
        let connected = slack.connections();
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
        vars.extend_from_slice(extra);
        let inner = RunningGateway::start("", &vars, 1).await;
        let g = Self { inner, slack };
        g.slack
            .wait_until(WAIT, "auth.test", |s| {
                (s.calls_to("auth.test").len() > identified).then_some(())
            })
            .await;
        if !http {
            g.slack
                .wait_until(WAIT, "a Socket Mode connection", |s| {
                    (s.connections() > connected && s.live_connections() == 1).then_some(())
                })
                .await;
        }
        g
    }

    /// `boxedclaw_messages_received_total{platform="slack"}`: the messages this gateway's
    /// router took in. The router takes them one by one in arrival order, so once a reply to
    /// a later message is shown, every earlier message that reached the gateway is counted.
    async fn slack_messages_received(&self) -> u64 {
        let body = reqwest::get(format!("http://{}/metrics", self.inner.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix("boxedclaw_messages_received_total{platform=\"slack\"} "))
            .map_or(0, |n| n.trim().parse::<f64>().unwrap() as u64)
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

#[tokio::test(flavor = "multi_thread")]
async fn a_thread_survives_a_restart_and_other_peoples_threads_stay_quiet() {
    let slack = FakeSlack::start(BOT_TOKEN, APP_TOKEN).await;
    // Both gateways share one state: the same data dir and workspaces, as after a restart.
    let state = tempfile::tempdir().unwrap();
    let (workspace, data) = (state.path().join("workspace"), state.path().join("data"));
    let (workspace, data) = (workspace.to_str().unwrap(), data.to_str().unwrap());
    let dirs = [
        ("BOXEDCLAW_WORKSPACE", workspace),
        ("BOXEDCLAW_DATA_DIR", data),
    ];
    let script = || {
        vec![
            text("before the restart"),
            text("after the restart"),
            text("third answer"),
        ]
    };

    let g = Gateway::launch(slack.clone(), false, &dirs).await;
    g.inner.llm.script("remember this thread", script());
    let root = slack.mention("C7", "U1", "remember this thread");
    let first = g.shown("C7", "before the restart").await;
    assert_eq!(first.thread_ts.as_deref(), Some(root.as_str()));
    assert!(
        slack.calls_to("conversations.replies").is_empty(),
        "a mention needs no lookup"
    );
    g.inner.stop().await;

    // A new gateway: its adapter remembers no thread.
    let g = Gateway::launch(slack.clone(), false, &dirs).await;
    g.inner.llm.script("remember this thread", script());
    // Somebody else's thread, never addressed to the bot.
    let lunch = slack.channel_message("C7", "U2", "lunch anyone?");
    slack.thread_message("C7", &lunch, "U3", "sure, where?");
    slack.thread_message("C7", &root, "U1", "still there after the restart?");
    let reply = g.shown("C7", "after the restart").await;
    assert_eq!(
        reply.thread_ts.as_deref(),
        Some(root.as_str()),
        "answered in the thread"
    );
    let last = g
        .inner
        .llm
        .requests_for("remember this thread")
        .pop()
        .unwrap();
    assert!(
        last.to_string().contains("before the restart"),
        "the same conversation, with its memory: {last}"
    );
    let lookups = slack.calls_to("conversations.replies");
    let mut asked: Vec<&str> = lookups.iter().map(|b| b["ts"].as_str().unwrap()).collect();
    asked.sort_unstable();
    let mut expected = [root.as_str(), lunch.as_str()];
    expected.sort_unstable();
    assert_eq!(
        asked, expected,
        "one lookup per unknown thread: {lookups:?}"
    );
    assert!(
        lookups
            .iter()
            .all(|b| b["channel"] == "C7" && b["limit"] == "1"),
        "{lookups:?}"
    );

    // Both answers are remembered: no further lookups.
    slack.thread_message("C7", &lunch, "U2", "the usual place");
    slack.thread_message("C7", &root, "U1", "one more");
    g.shown("C7", "third answer").await;
    assert_eq!(slack.calls_to("conversations.replies").len(), 2);
    assert_eq!(
        g.slack_messages_received().await,
        2,
        "only the two messages of the bot's thread reached the gateway"
    );
    assert!(
        slack
            .messages("C7")
            .iter()
            .all(|m| m.thread_ts.as_deref() != Some(lunch.as_str())),
        "nothing posted in somebody else's thread"
    );
    let seen = format!(
        "{:?}",
        g.inner
            .llm
            .requests()
            .iter()
            .map(|r| &r.body)
            .collect::<Vec<_>>()
    );
    assert!(
        !seen.contains("lunch") && !seen.contains("sure, where") && !seen.contains("usual place"),
        "{seen}"
    );
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_are_copied_to_the_approvers_channel_and_count_there() {
    const APPROVERS: &str = "C0APPROVERS";
    let slack = FakeSlack::start(BOT_TOKEN, APP_TOKEN).await;
    let g = Gateway::launch(
        slack,
        false,
        &[
            ("SLACK_APPROVERS_CHANNEL", APPROVERS),
            ("BOXEDCLAW_APPROVERS", "slack:U0APPROVER"),
        ],
    )
    .await;
    g.inner.llm.script(
        "append for the approvers",
        vec![
            tool(
                "shell",
                json!({"command": "echo ran >> /workspace/log.txt"}),
            ),
            text("finished: {last_tool_result}"),
        ],
    );
    g.inner
        .llm
        .script("hello approvers", vec![text("hi approvers")]);
    let root = g.slack.mention("C8", "U1", "append for the approvers");
    let prompt = g.shown("C8", "Approval needed").await;
    let copy = g.shown(APPROVERS, "Approval needed").await;
    assert_eq!(copy.thread_ts, None, "top level of the approvers' channel");
    let shown = copy.shown_text();
    assert!(
        shown.contains("slack:U1") && shown.contains("C8") && shown.contains(&root),
        "says where and who asked: {shown}"
    );
    assert!(
        prompt
            .shown_text()
            .contains("echo ran >> /workspace/log.txt"),
        "{prompt:?}"
    );
    assert!(
        shown.ends_with(&prompt.shown_text()) && copy.text.ends_with(&prompt.text),
        "the prompt in full, escaped as in the thread: {copy:?}"
    );
    assert_eq!(
        copy.buttons, prompt.buttons,
        "the same buttons, signed for the thread"
    );
    let approve = copy
        .buttons
        .iter()
        .find(|b| b.label == "Approve")
        .unwrap()
        .clone();
    let log = g.workspace("C8", Some(&root)).join("log.txt");

    // A message of the bot in the approvers' channel that is not a copy: a click on it does
    // not count, even with a genuine value.
    g.slack.mention(APPROVERS, "U1", "hello approvers");
    let stray = g.shown(APPROVERS, "hi approvers").await;
    g.slack.click(
        "U0APPROVER",
        APPROVERS,
        &stray.ts,
        &approve.action_id,
        &approve.value,
    );
    g.ephemeral("U0APPROVER", "not valid here").await;

    // Someone who is neither the requester nor an approver clicks the copy: refused
    // privately, still pending in both places, nothing ran.
    g.slack.click(
        "U9",
        APPROVERS,
        &copy.ts,
        &approve.action_id,
        &approve.value,
    );
    g.ephemeral("U9", "may not decide").await;
    let now = |channel: &str, ts: &str| {
        g.slack
            .messages(channel)
            .into_iter()
            .find(|m| m.ts == ts)
            .unwrap()
    };
    assert_eq!(now("C8", &prompt.ts).buttons.len(), 2);
    assert_eq!(now(APPROVERS, &copy.ts).buttons.len(), 2);
    assert_eq!(line_count(&log), 0);

    // The approver approves from the approvers' channel (twice): it runs once, and both
    // messages say so, without buttons.
    for _ in 0..2 {
        g.slack.click(
            "U0APPROVER",
            APPROVERS,
            &copy.ts,
            &approve.action_id,
            &approve.value,
        );
    }
    g.shown("C8", "finished:").await;
    let decided = g.shown("C8", "approved by slack:U0APPROVER").await;
    assert_eq!(decided.ts, prompt.ts, "the prompt itself is updated");
    assert!(decided.buttons.is_empty(), "{decided:?}");
    let decided_copy = g.shown(APPROVERS, "approved by slack:U0APPROVER").await;
    assert_eq!(decided_copy.ts, copy.ts, "the copy itself is updated");
    assert!(decided_copy.buttons.is_empty(), "{decided_copy:?}");
    assert_eq!(line_count(&log), 1, "ran exactly once");
    g.inner.stop().await;
}
