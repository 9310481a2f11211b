//! The Telegram channel end to end: the real gateway with the real teloxide-based adapter,
//! pointed at a fake Bot API server on 127.0.0.1:0, the real namespace sandbox and agent, and
//! a fake LLM. What is asserted is what Telegram users would see (the fake's chats) and what
//! ran in the sandbox.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boxedclaw_protocol::ids::{ConversationKey, Platform};
use boxedclaw_telegram::fake::{BotMessage, FakeTelegram};
use serde_json::{Value, json};
use support::in_process::{RunningGateway, WAIT, line_count};
use support::{FakeLlm, text, tool};

const TOKEN: &str = "123456:telegram-test-token-AAAAAAAAAAAAAAAAAAAAA";
const WEBHOOK_SECRET: &str = "webhook-secret_0123";
struct Gateway {
    inner: RunningGateway,
    llm: FakeLlm,
    tg: Arc<FakeTelegram>,
    http: SocketAddr,
}

impl Gateway {
    async fn start(extra_toml: &str, webhook: bool) -> Self {
        let tg = FakeTelegram::start(TOKEN).await;
        let api_url = tg.api_url();
        let mut vars = vec![
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_API_URL", api_url.as_str()),
            ("BOXEDCLAW_ADMINS", "telegram:1001"),
        ];
        if webhook {
            vars.push((
                "TELEGRAM_WEBHOOK_URL",
                "https://bot.example/telegram/webhook",
            ));
            vars.push(("TELEGRAM_WEBHOOK_SECRET", WEBHOOK_SECRET));
        }
        let inner = RunningGateway::start(extra_toml, &vars, 1).await;
        let g = Self {
            llm: inner.llm.clone(),
            http: inner.http,
            inner,
            tg,
        };
        // Connected: getMe done and commands registered.
        g.tg.wait_until(WAIT, "setMyCommands", |t| {
            (!t.calls_to("setMyCommands").is_empty()).then_some(())
        })
        .await;
        g
    }

    fn workspace(&self, chat: i64, topic: Option<i32>) -> std::path::PathBuf {
        let topic = topic.map(|t| t.to_string());
        let key = ConversationKey::new(
            Platform::Telegram,
            None,
            &chat.to_string(),
            topic.as_deref(),
        )
        .unwrap();
        self.inner.workspace(&key)
    }

    /// Waits for a bot message in `chat` containing `needle`.
    async fn shown(&self, chat: i64, needle: &str) -> BotMessage {
        let what = format!("a message containing {needle:?} in chat {chat}");
        self.tg
            .wait_until(WAIT, &what, |t| {
                t.chat(chat).into_iter().find(|m| m.text.contains(needle))
            })
            .await
    }

    /// Waits for an answer to a button click whose text contains `needle`.
    async fn click_answer(&self, needle: &str) -> Value {
        let what = format!("a callback answer containing {needle:?}");
        self.tg
            .wait_until(WAIT, &what, |t| {
                t.calls_to("answerCallbackQuery")
                    .into_iter()
                    .find(|b| b["text"].as_str().is_some_and(|s| s.contains(needle)))
            })
            .await
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

fn button<'a>(m: &'a BotMessage, label: &str) -> &'a str {
    &m.buttons.iter().find(|(l, _)| l == label).unwrap().1
}

#[tokio::test(flavor = "multi_thread")]
async fn dms_get_replies_and_two_users_never_share_a_conversation() {
    let g = Gateway::start("", false).await;
    g.llm
        .script("my secret word is tangerine", vec![text("noted, alice")]);
    g.llm
        .script("what is my secret word?", vec![text("I do not know, bob")]);
    g.tg.private_message(1001, "my secret word is tangerine");
    g.tg.private_message(1002, "what is my secret word?");
    g.shown(1001, "noted, alice").await;
    g.shown(1002, "I do not know, bob").await;
    // Bob's conversation never carried Alice's words to the model, and each has its own
    // workspace.
    for req in g.llm.requests_for("what is my secret word?") {
        assert!(!req.to_string().contains("tangerine"), "{req}");
    }
    assert!(g.workspace(1001, None).is_dir());
    assert!(g.workspace(1002, None).is_dir());
    // Replies are plain text without link previews: nothing the agent writes is markup.
    for body in g.tg.calls_to("sendMessage") {
        assert!(body.get("parse_mode").is_none(), "{body}");
        assert_eq!(body["link_preview_options"]["is_disabled"], true, "{body}");
    }
    assert!(
        !g.tg.calls_to("sendChatAction").is_empty(),
        "typing indicator shown"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forum_topics_are_conversations_and_replies_stay_in_their_topic() {
    let g = Gateway::start("", false).await;
    let group = -100_500;
    g.llm
        .script("topic five question", vec![text("answer for five")]);
    g.llm
        .script("topic nine question", vec![text("answer for nine")]);
    g.llm
        .script("nobody asked me", vec![text("must not be said")]);
    let mention = format!("@{}", FakeTelegram::BOT_USERNAME);
    g.tg.group_message(
        group,
        Some(5),
        1001,
        &format!("{mention} topic five question"),
    );
    g.tg.group_message(
        group,
        Some(9),
        1002,
        &format!("topic nine question {mention}"),
    );
    // Group chatter that does not address the bot is not for the agent.
    g.tg.group_message(group, Some(5), 1003, "nobody asked me");
    let five = g.shown(group, "answer for five").await;
    let nine = g.shown(group, "answer for nine").await;
    assert_eq!(five.thread, Some(5));
    assert_eq!(nine.thread, Some(9));
    assert!(g.workspace(group, Some(5)).is_dir());
    assert!(g.workspace(group, Some(9)).is_dir());
    // A reply to the bot's message counts as addressing it, in the same topic.
    g.llm
        .script("and a follow-up", vec![text("follow-up answered")]);
    g.tg.group_reply_to(group, Some(9), 1002, "and a follow-up", nine.message_id);
    // It is the same conversation as "topic nine question", so the script of that one
    // continues: the model sees the follow-up as its second user message.
    g.tg.wait_until(WAIT, "the follow-up reaching topic nine's agent", |_| {
        g.llm
            .requests_for("topic nine question")
            .into_iter()
            .find(|r| r.to_string().contains("and a follow-up"))
    })
    .await;
    assert!(
        g.llm.requests_for("nobody asked me").is_empty(),
        "unaddressed chatter reached the model"
    );
    g.stop().await;
}

/// The approval scenario: a shell call in a group, decided by clicks.
async fn request_shell_approval(g: &Gateway, group: i64, first: &str) -> BotMessage {
    g.llm.script(
        first,
        vec![
            tool(
                "shell",
                json!({"command": "echo ran >> /workspace/log.txt"}),
            ),
            text("finished: {last_tool_result}"),
        ],
    );
    let mention = format!("@{}", FakeTelegram::BOT_USERNAME);
    g.tg.group_message(group, None, 1001, &format!("{mention} {first}"));
    let prompt = g.shown(group, "Approval needed").await;
    assert_eq!(prompt.buttons.len(), 2, "{prompt:?}");
    assert!(
        prompt.text.contains("echo ran >> /workspace/log.txt"),
        "{prompt:?}"
    );
    prompt
}

#[tokio::test(flavor = "multi_thread")]
async fn only_authorized_clicks_count_and_the_approved_action_runs_once() {
    let g = Gateway::start("", false).await;
    let (group, other_group) = (-100_700, -100_800);
    // The bot has a message in another group too (for the forged click below).
    g.llm
        .script("hello other group", vec![text("hi other group")]);
    let mention = format!("@{}", FakeTelegram::BOT_USERNAME);
    g.tg.group_message(
        other_group,
        None,
        1001,
        &format!("{mention} hello other group"),
    );
    let elsewhere = g.shown(other_group, "hi other group").await;

    let prompt = request_shell_approval(&g, group, "append a line").await;
    let approve = button(&prompt, "Approve").to_owned();
    let log = g.workspace(group, None).join("log.txt");

    // A group member who is neither the requester nor an approver: refused, still pending.
    g.tg.click(1002, group, prompt.message_id, &approve);
    g.click_answer("may not decide").await;
    // The same signed data replayed on a message of another conversation, by the requester.
    g.tg.click(1001, other_group, elsewhere.message_id, &approve);
    g.click_answer("not valid here").await;
    // Data made up by a modified client.
    g.tg.click(
        1001,
        group,
        prompt.message_id,
        "1a0123456789ab.0000000000000000",
    );
    g.tg.wait_until(WAIT, "three refusals", |t| {
        (t.calls_to("answerCallbackQuery").len() >= 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still =
        g.tg.chat(group)
            .into_iter()
            .find(|m| m.message_id == prompt.message_id)
            .unwrap();
    assert_eq!(
        still.buttons.len(),
        2,
        "approval must still be pending: {still:?}"
    );
    assert_eq!(line_count(&log), 0, "nothing ran before approval");

    // The requester double-clicks Approve: it runs once.
    g.tg.click(1001, group, prompt.message_id, &approve);
    g.tg.click(1001, group, prompt.message_id, &approve);
    g.shown(group, "finished:").await;
    let decided = g.shown(group, "approved by telegram:1001").await;
    assert_eq!(
        decided.message_id, prompt.message_id,
        "the prompt itself is edited"
    );
    assert!(decided.buttons.is_empty(), "buttons removed: {decided:?}");
    g.click_answer("not pending").await;
    assert_eq!(line_count(&log), 1, "the approved shell ran exactly once");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_click_after_expiry_runs_nothing() {
    let g = Gateway::start("[approvals]\ntimeout_secs = 1\n", false).await;
    let group = -100_900;
    let prompt = request_shell_approval(&g, group, "append late").await;
    let approve = button(&prompt, "Approve").to_owned();
    let expired = g.shown(group, "expired").await;
    assert!(expired.buttons.is_empty(), "{expired:?}");
    g.tg.click(1001, group, prompt.message_id, &approve);
    g.click_answer("not pending").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(line_count(&g.workspace(group, None).join("log.txt")), 0);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_reply_is_delivered_once_after_the_wait() {
    let g = Gateway::start("", false).await;
    g.llm
        .script("slow down please", vec![text("delivered after the wait")]);
    g.tg.rate_limit_next("sendMessage", 2);
    g.tg.private_message(1001, "slow down please");
    g.shown(1001, "delivered after the wait").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown: Vec<_> =
        g.tg.chat(1001)
            .into_iter()
            .filter(|m| m.text.contains("delivered after the wait"))
            .collect();
    assert_eq!(shown.len(), 1, "delivered exactly once: {shown:?}");
    let calls: Vec<_> =
        g.tg.calls()
            .into_iter()
            .filter(|c| c.method == "sendMessage")
            .collect();
    let rejected = calls
        .iter()
        .position(|c| c.rejected)
        .expect("the 429 was served");
    assert!(
        calls[rejected + 1..].iter().any(|c| !c.rejected),
        "retried after the 429"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_requires_the_secret_and_drops_duplicate_updates() {
    let g = Gateway::start("", true).await;
    // setWebhook follows setMyCommands, which is all `start` waits for.
    let (url, secret) = g.tg.wait_until(WAIT, "setWebhook", |t| t.webhook()).await;
    assert_eq!(url, "https://bot.example/telegram/webhook");
    assert_eq!(secret.as_deref(), Some(WEBHOOK_SECRET));
    assert!(
        g.tg.calls_to("getUpdates").is_empty(),
        "no polling in webhook mode"
    );
    g.llm
        .script("hello by webhook", vec![text("webhook reply")]);
    let update = g.tg.private_message_update(1001, "hello by webhook");
    let endpoint = format!("http://{}/telegram/webhook", g.http);
    let client = reqwest::Client::new();
    let post = |secret: Option<&'static str>| {
        let mut req = client.post(&endpoint).json(&update);
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(
        post(Some("webhook-secret_0124")).await.unwrap().status(),
        401
    );
    assert_eq!(
        post(Some(TOKEN)).await.unwrap().status(),
        401,
        "the bot token is not the secret"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        g.llm.requests().is_empty(),
        "a refused request reached the agent"
    );
    for _ in 0..3 {
        assert_eq!(post(Some(WEBHOOK_SECRET)).await.unwrap().status(), 200);
    }
    g.shown(1001, "webhook reply").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        g.llm.requests_for("hello by webhook").len(),
        1,
        "one turn for one update"
    );
    let replies =
        g.tg.chat(1001)
            .into_iter()
            .filter(|m| m.text.contains("webhook reply"))
            .count();
    assert_eq!(replies, 1);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_with_bidi_ansi_and_markup_is_shown_escaped() {
    let g = Gateway::start("", false).await;
    let command = "echo \u{202E}gnp.exe <b>bold</b> *star* _u_ [x](http://e.x) \u{1b}[31mred";
    g.llm.script(
        "show me something tricky",
        vec![tool("shell", json!({ "command": command })), text("done")],
    );
    g.tg.private_message(1001, "show me something tricky");
    let prompt = g.shown(1001, "Approval needed").await;
    assert!(
        !prompt.text.contains('\u{202E}') && !prompt.text.contains('\u{1b}'),
        "{prompt:?}"
    );
    assert!(prompt.text.contains("\\u{202E}gnp.exe"), "{prompt:?}");
    assert!(prompt.text.contains("\\u{001B}[31mred"), "{prompt:?}");
    assert!(
        prompt
            .text
            .contains("<b>bold</b> *star* _u_ [x](http://e.x)"),
        "{prompt:?}"
    );
    let sent =
        g.tg.calls_to("sendMessage")
            .into_iter()
            .find(|b| {
                b["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Approval needed"))
            })
            .unwrap();
    assert!(
        sent.get("parse_mode").is_none(),
        "markup must not be interpreted: {sent}"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_are_bot_commands_for_admins_only() {
    let g = Gateway::start("", false).await;
    let registered = g.tg.calls_to("setMyCommands").pop().unwrap();
    let names: Vec<&str> = registered["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    for c in [
        "status",
        "agents",
        "reset",
        "stop",
        "approvals",
        "budget",
        "audit",
        "help",
    ] {
        assert!(names.contains(&c), "{c} not registered: {names:?}");
    }
    g.tg.private_message(1001, "/status");
    g.shown(1001, "conversations").await;
    g.tg.private_message(1002, &format!("/status@{}", FakeTelegram::BOT_USERNAME));
    g.shown(1002, "admin").await;
    // A command for another bot in a group is not ours.
    g.tg.group_message(-100_1000, None, 1001, "/status@some_other_bot");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(g.tg.chat(-100_1000).is_empty());
    assert!(
        g.llm.requests().is_empty(),
        "commands never reach the agent"
    );
    g.stop().await;
}
