//! Durable state, end to end: restarts (graceful and `kill -9`) with pending approvals,
//! re-delivered events, replies that could not be delivered, budgets, admin commands.
//!
//! Runs on SQLite, and on PostgreSQL too when `BOXEDCLAW_TEST_DATABASE_URL` is set (`.ci/run`
//! starts a server with `scripts/postgres-for-tests.sh`): every test gets a fresh database.
// Test code: panicking on failure is the point, and helper tasks outlive no test.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use boxedclaw_channels::fake::FakeChannel;
use boxedclaw_channels::{InboundEvent, OutboundAction};
use boxedclaw_protocol::channel::InboundMessage;
use boxedclaw_protocol::ids::{ConversationKey, Platform, UserRef};
use serde_json::json;
use support::chat::{Chat, workspace_of};
use support::flows::{Harness, WAIT, key, user};
use support::{FakeLlm, agent_binary, database_toml, test_dirs, text, tool};

fn posts(fake: &FakeChannel, conv: &ConversationKey) -> Vec<String> {
    fake.delivered()
        .into_iter()
        .filter_map(|a| match a {
            OutboundAction::Post { conversation, text } if conversation == *conv => Some(text),
            _ => None,
        })
        .collect()
}

fn message(conv: &ConversationKey, from: &UserRef, id: &str, text: &str) -> InboundEvent {
    InboundEvent::Message(InboundMessage {
        id: id.to_owned(),
        conversation: conv.clone(),
        user: from.clone(),
        text: text.to_owned(),
    })
}

fn command(conv: &ConversationKey, from: &UserRef, id: &str, text: &str) -> InboundEvent {
    InboundEvent::Command(InboundMessage {
        id: id.to_owned(),
        conversation: conv.clone(),
        user: from.clone(),
        text: text.to_owned(),
    })
}

async fn notice(h: &Harness, to: &UserRef, needle: &str) -> String {
    h.notice_for(to, needle).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_delivered_three_times_makes_one_turn_and_one_reply() {
    let llm = FakeLlm::start().await;
    llm.script("count me once", vec![text("counted")]);
    let h = Harness::start(&llm, &agent_binary(), &database_toml().await).await;
    let c = key("DEDUP");
    for _ in 0..3 {
        h.fake
            .send(message(&c, &user("alice"), "evt-1", "count me once"))
            .await;
    }
    h.reply(&c, "counted").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(posts(&h.fake, &c), vec!["counted".to_owned()]);
    assert_eq!(llm.requests_for("count me once").len(), 1, "one agent turn");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_could_not_be_delivered_is_delivered_once_after_restart() {
    let llm = FakeLlm::start().await;
    llm.script(
        "hello through an outage",
        vec![text("the reply that waited")],
    );
    let h = Harness::start(&llm, &agent_binary(), &database_toml().await).await;
    let c = key("OUTBOX");
    h.fake.set_failing(true);
    h.fake
        .send(message(
            &c,
            &user("alice"),
            "evt-o",
            "hello through an outage",
        ))
        .await;
    // The turn runs; its reply cannot be delivered.
    wait_for_turn(&llm, "hello through an outage").await;
    assert!(posts(&h.fake, &c).is_empty());
    let fresh = FakeChannel::new(Platform::Slack);
    let h = h.restart(fresh).await;
    h.reply(&c, "the reply that waited").await;
    // A second restart does not deliver it again.
    let again = FakeChannel::new(Platform::Slack);
    let h = h.restart(again).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(posts(&h.fake, &c).is_empty(), "delivered twice");
    h.stop().await;
}

/// Waits until the turn that `first_message` started has asked the LLM, then a little for
/// its reply's delivery attempt.
async fn wait_for_turn(llm: &FakeLlm, first_message: &str) {
    for _ in 0..300 {
        if !llm.requests_for(first_message).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_could_not_be_delivered_is_retried_without_a_restart() {
    let llm = FakeLlm::start().await;
    llm.script("hello during a blip", vec![text("the retried reply")]);
    let toml = format!("{}[router]\noutbox_retry_secs = 1\n", database_toml().await);
    let h = Harness::start(&llm, &agent_binary(), &toml).await;
    let c = key("RETRY");
    h.fake.set_failing(true);
    h.fake
        .send(message(&c, &user("alice"), "evt-r", "hello during a blip"))
        .await;
    wait_for_turn(&llm, "hello during a blip").await;
    assert!(posts(&h.fake, &c).is_empty());
    // The platform is back: the next sweep delivers the reply, once.
    h.fake.set_failing(false);
    h.reply(&c, "the retried reply").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(posts(&h.fake, &c), vec!["the retried reply".to_owned()]);
    h.stop().await;
}

/// Two replicas sharing one store start together with undelivered replies in its outbox
/// (left by a replica that could not deliver them): every reply is delivered once in all,
/// never by both.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_sharing_a_store_deliver_each_waiting_reply_once() {
    const N: usize = 6;
    let shared = tempfile::tempdir().unwrap();
    let database = match database_toml().await {
        toml if toml.is_empty() => format!(
            "database_url = \"sqlite://{}\"\n",
            shared.path().join("shared.db").display()
        ),
        toml => toml,
    };
    let llm = FakeLlm::start().await;
    let conversations: Vec<_> = (0..N).map(|i| key(&format!("REPLICAS{i}"))).collect();
    let first = Harness::start(&llm, &agent_binary(), &database).await;
    first.fake.set_failing(true);
    for (i, c) in conversations.iter().enumerate() {
        let ask = format!("replica question {i}");
        llm.script(&ask, vec![text(&format!("replica answer {i}"))]);
        first
            .fake
            .send(message(c, &user("alice"), &format!("evt-rep-{i}"), &ask))
            .await;
    }
    for i in 0..N {
        wait_for_turn(&llm, &format!("replica question {i}")).await;
    }
    first.stop().await;

    let toml = format!("{database}[router]\noutbox_retry_secs = 1\n");
    let (a, b) = (
        Harness::start(&llm, &agent_binary(), &toml).await,
        Harness::start(&llm, &agent_binary(), &toml).await,
    );
    // Slow deliveries: each replica's sweep is still sending while the other one sweeps.
    a.fake.set_delay(Duration::from_millis(150));
    b.fake.set_delay(Duration::from_millis(150));
    let all_posts = || {
        let mut texts: Vec<String> = conversations
            .iter()
            .flat_map(|c| [posts(&a.fake, c), posts(&b.fake, c)])
            .flatten()
            .collect();
        texts.sort();
        texts
    };
    for _ in 0..300 {
        if all_posts().len() >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several more sweeps of both replicas.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expected: Vec<String> = (0..N).map(|i| format!("replica answer {i}")).collect();
    assert_eq!(
        all_posts(),
        expected,
        "each waiting reply delivered once in all"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn non_admins_are_refused_every_command_and_agent_output_is_never_a_command() {
    let llm = FakeLlm::start().await;
    let c = key("ADMIN");
    llm.script(
        "say the magic words",
        vec![text("/reset slack:T1/ADMIN\n/budget slack:mallory 999999")],
    );
    let extra = format!("admins = [\"slack:root\"]\n{}", database_toml().await);
    let h = Harness::start(&llm, &agent_binary(), &extra).await;
    let commands = [
        "/status",
        "/agents",
        "/reset slack:T1/ADMIN",
        "/stop slack:T1/ADMIN",
        "/approvals",
        "/budget slack:mallory 999999",
        "/audit",
        "/help",
    ];
    for (i, cmd) in commands.iter().enumerate() {
        h.fake
            .send(command(&c, &user("mallory"), &format!("m{i}"), cmd))
            .await;
    }
    h.fake
        .wait_until(WAIT, |d| {
            d.iter()
                .filter(|a| matches!(a, OutboundAction::Notice { text, .. } if text.contains("Only gateway admins")))
                .count()
                == commands.len()
        })
        .await;
    // The agent's reply contains command text; it is posted as text and nothing runs.
    h.fake
        .send(message(
            &c,
            &user("mallory"),
            "m-chat",
            "say the magic words",
        ))
        .await;
    h.reply(&c, "/reset").await;
    assert!(
        h.workspace(&c).join(".boxedclaw/memory.jsonl").exists(),
        "memory was not reset"
    );
    // An admin's command works, and the audit log recorded the refusals.
    h.fake
        .send(command(&c, &user("root"), "r1", "/audit"))
        .await;
    let audit = notice(&h, &user("root"), "audit chain verified").await;
    assert!(audit.contains("admin.refused"), "{audit}");
    assert!(!audit.contains("admin.command\n"), "{audit}");
    h.fake
        .send(command(&c, &user("root"), "r2", "/status"))
        .await;
    notice(&h, &user("root"), "pending approvals:").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_budget_means_no_llm_call_and_a_clear_message() {
    let llm = FakeLlm::start().await;
    let c = key("BUDGET");
    // Scripts are keyed by a conversation's first message; the step is the number of answers
    // already in it, and the refused turn adds none.
    llm.script(
        "first question",
        vec![text("first answer"), text("second answer")],
    );
    let extra = format!("admins = [\"slack:root\"]\n{}", database_toml().await);
    let h = Harness::start(&llm, &agent_binary(), &extra).await;
    h.fake
        .send(message(&c, &user("alice"), "b1", "first question"))
        .await;
    h.reply(&c, "first answer").await;
    // The fake LLM reports 15 tokens per call; a budget of 10 is spent.
    h.fake
        .send(command(
            &c,
            &user("root"),
            "b-set",
            "/budget slack:T1/BUDGET 10",
        ))
        .await;
    notice(&h, &user("root"), "budget of conversation").await;
    let before = llm.requests().len();
    h.fake
        .send(message(&c, &user("alice"), "b2", "second question"))
        .await;
    let refused = h.reply(&c, "daily token budget").await;
    assert!(refused.contains("15 of 10"), "{refused}");
    assert_eq!(llm.requests().len(), before, "no LLM call over budget");
    // An admin raises it; the conversation works again.
    h.fake
        .send(command(
            &c,
            &user("root"),
            "b-raise",
            "/budget slack:T1/BUDGET 100000",
        ))
        .await;
    notice(&h, &user("root"), "100000 tokens per day").await;
    h.fake
        .send(message(&c, &user("alice"), "b3", "second question"))
        .await;
    h.reply(&c, "second answer").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_keeps_a_pending_approval_decidable() {
    let llm = FakeLlm::start().await;
    let c = key("RESTART");
    llm.script(
        "write after restart",
        vec![
            tool(
                "shell",
                json!({"command": "echo ran >> /workspace/once.txt"}),
            ),
            text("resumed: {last_tool_result}"),
        ],
    );
    let h = Harness::start(&llm, &agent_binary(), &database_toml().await).await;
    h.say(&c, &user("alice"), "write after restart").await;
    let id = h.prompt(&c).await;
    let h = h.restart(FakeChannel::new(Platform::Slack)).await;
    assert_eq!(h.prompt(&c).await, id, "the same approval is shown again");
    h.click(&c, &user("mallory"), &id, true).await;
    h.notice_for(&user("mallory"), "may not decide").await;
    h.click(&c, &user("alice"), &id, true).await;
    h.reply(&c, "resumed:").await;
    h.click(&c, &user("alice"), &id, true).await;
    h.notice_for(&user("alice"), "not pending here").await;
    assert_eq!(
        std::fs::read_to_string(h.workspace(&c).join("once.txt")).unwrap(),
        "ran\n"
    );
    h.stop().await;
}

/// `kill -9` of the real binary with an approval pending: after restart the same approval is
/// shown again, approving it runs exactly the bound call once; with a short expiry, an
/// approval that expired while the gateway was down is recorded as expired.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_a_pending_approval_then_restart() {
    let llm = FakeLlm::start().await;
    let db = database_toml().await;
    let (dir, config) = test_dirs(&db, &agent_binary());
    llm.script(
        "survive a crash",
        vec![
            tool(
                "shell",
                json!({"command": "echo ran >> /workspace/once.txt"}),
            ),
            text("after crash: {last_tool_result}"),
        ],
    );
    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("survive a crash").await;
    let id = chat.approval_id().await;
    chat.kill9().await;

    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    assert_eq!(chat.approval_id().await, id, "restored after the crash");
    chat.say(&format!("/approve {id}")).await;
    let reply = chat
        .expect("resumed reply", |l| l.starts_with("after crash:"))
        .await;
    assert!(reply.contains("exit status: 0"), "{reply}");
    chat.say(&format!("/approve {id}")).await;
    chat.expect("second approval refused", |l| {
        l.contains("is not pending here")
    })
    .await;
    chat.finish().await;
    let ran = std::fs::read_to_string(workspace_of(dir.path()).join("once.txt")).unwrap();
    assert_eq!(ran, "ran\n", "the bound call ran exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_that_expired_while_the_gateway_was_down_is_recorded_as_expired() {
    let llm = FakeLlm::start().await;
    let db = database_toml().await;
    let (dir, config) = test_dirs(
        &format!("{db}\n[approvals]\ntimeout_secs = 1\n"),
        &agent_binary(),
    );
    llm.script(
        "expire during a crash",
        vec![
            tool(
                "shell",
                json!({"command": "echo ran >> /workspace/once.txt"}),
            ),
            text("after: {last_tool_result}"),
        ],
    );
    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("expire during a crash").await;
    let id = chat.approval_id().await;
    chat.kill9().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("/audit").await; // not an admin: refused, but it lets the restart settle
    chat.expect("refusal", |l| l.contains("Only gateway admins"))
        .await;
    chat.say(&format!("/approve {id}")).await;
    chat.expect("late approval refused", |l| {
        l.contains("is not pending here")
    })
    .await;
    chat.finish().await;
    assert!(!workspace_of(dir.path()).join("once.txt").exists());
    // The store says expired, not denied.
    let state = support::approval_state(&dir, &db, &id).await;
    assert_eq!(state, "expired");
}

/// SIGTERM stops intake but lets the turn in flight finish and its reply reach the user
/// (bounded by `[router] drain_timeout_secs`); a turn longer than the drain is cut short and
/// the user told.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_turns_in_flight_within_a_bounded_time() {
    let llm = FakeLlm::start().await;
    let db = database_toml().await;
    let (_dir, config) = test_dirs(
        &format!("{db}\n[router]\ndrain_timeout_secs = 3\n"),
        &agent_binary(),
    );
    llm.script(
        "short work",
        vec![
            tool("shell", json!({"command": "sleep 1; echo slept"})),
            text("finished: {last_tool_result}"),
        ],
    );
    llm.script(
        "endless work",
        vec![
            tool("shell", json!({"command": "sleep 60; echo never"})),
            text("finished: {last_tool_result}"),
        ],
    );
    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("short work").await;
    let id = chat.approval_id().await;
    chat.say(&format!("/approve {id}")).await;
    chat.expect("approved", |l| l.contains("approved by")).await;
    chat.sigterm();
    let reply = chat
        .expect("the reply of the drained turn", |l| {
            l.starts_with("finished:")
        })
        .await;
    assert!(reply.contains("slept"), "{reply}");
    chat.finish().await;

    let (_dir, config) = test_dirs(
        &format!("{db}\n[router]\ndrain_timeout_secs = 1\n"),
        &agent_binary(),
    );
    let mut chat = Chat::start(&llm, &config, "sk-test-key-0123456789abcdef");
    chat.say("endless work").await;
    let id = chat.approval_id().await;
    chat.say(&format!("/approve {id}")).await;
    chat.expect("approved", |l| l.contains("approved by")).await;
    chat.sigterm();
    chat.expect("told", |l| l.contains("shutting down")).await;
    chat.finish().await;
}
