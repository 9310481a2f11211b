//! The Discord channel end to end: the real gateway with the serenity-based adapter, pointed
//! at a fake Discord (REST + gateway websocket) on 127.0.0.1:0, the real namespace sandbox and
//! agent, and a fake LLM.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_discord::fake::{BotMessage, FakeDiscord};
use boxedclaw_protocol::ids::{ConversationKey, Platform};
use serde_json::json;
use support::in_process::{RunningGateway, WAIT, line_count};
use support::{text, tool};

const TOKEN: &str = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.discord-test.token-for-the-gateway";
const GUILD: u64 = 500;
const CHANNEL: u64 = 600;
const ALICE: u64 = 7001;
const MALLORY: u64 = 7002;
const BOB: u64 = 7003;
/// A guild role configured as an approver role, and one that is not.
const APPROVER_ROLE: u64 = 900;
const OTHER_ROLE: u64 = 901;

struct Gateway {
    inner: RunningGateway,
    discord: Arc<FakeDiscord>,
}

impl Gateway {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[(&str, &str)]) -> Self {
        let discord = FakeDiscord::start(TOKEN).await;
        let api_url = discord.api_url();
        let admins = format!("discord:{ALICE}");
        let mut vars = vec![
            ("DISCORD_BOT_TOKEN", TOKEN),
            ("DISCORD_API_URL", api_url.as_str()),
            ("BOXEDCLAW_ADMINS", admins.as_str()),
        ];
        vars.extend_from_slice(extra);
        let inner = RunningGateway::start("", &vars, 1).await;
        discord
            .wait_until(WAIT, "a connected gateway session", |d| {
                d.connected().then_some(())
            })
            .await;
        Self { inner, discord }
    }

    fn workspace(&self, thread: u64) -> std::path::PathBuf {
        let key = ConversationKey::new(
            Platform::Discord,
            Some(&GUILD.to_string()),
            &CHANNEL.to_string(),
            Some(&thread.to_string()),
        )
        .unwrap();
        self.inner.workspace(&key)
    }

    async fn shown(&self, channel: u64, needle: &str) -> BotMessage {
        let what = format!("a message containing {needle:?} in {channel}");
        self.discord
            .wait_until(WAIT, &what, |d| {
                d.messages(channel)
                    .into_iter()
                    .find(|m| m.text.contains(needle))
            })
            .await
    }

    /// Alice asks, with a mention, for a shell line that appends to `log.txt` and, once
    /// approved, answers "finished: …"; waits for the approval prompt in the new thread.
    async fn pending_shell_approval(&self, request: &str) -> Pending {
        self.inner.llm.script(
            request,
            vec![
                tool(
                    "shell",
                    json!({"command": "echo ran >> /workspace/log.txt"}),
                ),
                text("finished: {last_tool_result}"),
            ],
        );
        let asked = self
            .discord
            .guild_message(GUILD, CHANNEL, ALICE, &mention(request));
        let thread = self.thread_of(asked).await;
        let prompt = self.shown(thread, "Approval needed").await;
        let approve = prompt
            .buttons
            .iter()
            .find(|b| b.label == "Approve")
            .unwrap()
            .custom_id
            .clone();
        Pending {
            thread,
            log: self.workspace(thread).join("log.txt"),
            prompt,
            approve,
        }
    }

    /// Waits for the refusal, seen only by the clicker, of the click `click`.
    async fn refused(&self, click: u64) {
        self.discord
            .wait_until(WAIT, "a private refusal", |d| {
                d.followups()
                    .into_iter()
                    .find(|f| f.interaction_id == click && f.text.contains("may not decide"))
            })
            .await;
    }

    /// The thread the bot started from a mention.
    async fn thread_of(&self, message: u64) -> u64 {
        self.discord
            .wait_until(WAIT, "a thread started from the mention", |d| {
                d.thread_of(message)
            })
            .await
    }
}

/// An approval prompt waiting in its thread.
struct Pending {
    thread: u64,
    prompt: BotMessage,
    /// The Approve button's `custom_id`.
    approve: String,
    /// The file the approved command appends to.
    log: std::path::PathBuf,
}

fn mention(text: &str) -> String {
    format!("<@{}> {text}", FakeDiscord::BOT_ID)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_starts_a_thread_and_its_follow_ups_reach_the_same_agent() {
    let g = Gateway::start().await;
    g.inner.llm.script(
        "thread question",
        vec![text("thread answer"), text("second answer")],
    );
    let asked = g
        .discord
        .guild_message(GUILD, CHANNEL, ALICE, &mention("thread question"));
    let thread = g.thread_of(asked).await;
    g.shown(thread, "thread answer").await;
    assert!(
        g.discord.messages(CHANNEL).is_empty(),
        "nothing posted in the channel itself"
    );
    g.discord
        .thread_message(GUILD, CHANNEL, thread, ALICE, "a follow-up");
    g.shown(thread, "second answer").await;
    let last = g.inner.llm.requests_for("thread question").pop().unwrap();
    assert!(
        last.to_string().contains("a follow-up"),
        "same agent, same memory"
    );
    assert!(g.workspace(thread).is_dir());
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn button_approvals_count_only_from_the_requester_and_run_once() {
    let g = Gateway::start().await;
    let Pending {
        thread,
        prompt,
        approve,
        log,
    } = g.pending_shell_approval("append a line").await;

    // Another member clicks: an answer only they see, the approval stays pending.
    let click = g.discord.click(MALLORY, thread, prompt.id, &approve);
    g.refused(click).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(line_count(&log), 0, "nothing ran");

    // The requester clicks twice: it runs once; the prompt says who decided, buttons gone.
    g.discord.click(ALICE, thread, prompt.id, &approve);
    g.discord.click(ALICE, thread, prompt.id, &approve);
    g.shown(thread, "finished:").await;
    let decided = g.shown(thread, "approved by discord:7001").await;
    assert_eq!(decided.id, prompt.id, "the prompt itself is edited");
    assert!(
        decided.buttons.iter().all(|b| b.disabled),
        "no clickable buttons left: {decided:?}"
    );
    assert_eq!(line_count(&log), 1, "ran exactly once");
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_holding_an_approver_role_may_decide() {
    let roles = APPROVER_ROLE.to_string();
    let g = Gateway::start_with(&[("DISCORD_APPROVER_ROLES", roles.as_str())]).await;
    g.discord.give_role(MALLORY, OTHER_ROLE);
    g.discord.give_role(BOB, OTHER_ROLE);
    g.discord.give_role(BOB, APPROVER_ROLE);
    let Pending {
        thread,
        prompt,
        approve,
        log,
    } = g.pending_shell_approval("clean up").await;

    // A role, but not an approver role: refused, still pending.
    let click = g.discord.click(MALLORY, thread, prompt.id, &approve);
    g.refused(click).await;
    assert_eq!(line_count(&log), 0, "nothing ran");

    // Neither the requester nor a configured approver, but holding the approver role.
    g.discord.click(BOB, thread, prompt.id, &approve);
    g.shown(thread, "finished:").await;
    g.shown(thread, &format!("approved by discord:{BOB}")).await;
    assert_eq!(line_count(&log), 1, "ran exactly once");
    // The audit log says what authorized the click.
    let audit = g.discord.slash(ALICE, Some(GUILD), CHANNEL, "audit");
    let needle = format!("as holder of approver role {APPROVER_ROLE}");
    g.discord
        .wait_until(WAIT, "the audit entry naming the role", |d| {
            d.original_response(audit)
                .filter(|r| r.text.contains(&needle))
        })
        .await;
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interactions_may_come_over_the_signed_http_endpoint() {
    let key = hex::encode(FakeDiscord::interactions_public_key());
    let g = Gateway::start_with(&[("DISCORD_PUBLIC_KEY", key.as_str())]).await;
    g.discord
        .use_interactions_endpoint(&format!("http://{}/discord/interactions", g.inner.http));
    // Discord's checks when the URL is saved: a PING, and an unsigned request.
    let ping = g
        .discord
        .post_to_endpoint(br#"{"type":1}"#, Some("1700000000"), None)
        .await;
    assert_eq!(ping.status, 401, "unsigned: {ping:?}");

    let Pending {
        thread,
        prompt,
        approve,
        ..
    } = g.pending_shell_approval("over http").await;
    let click = g.discord.click(ALICE, thread, prompt.id, &approve);
    g.shown(thread, "finished:").await;
    let answer = g
        .discord
        .endpoint_answers()
        .into_iter()
        .find(|a| a.interaction_id == Some(click))
        .expect("the click went to the HTTP endpoint");
    assert_eq!(
        (answer.status, answer.body["type"].as_u64()),
        (200, Some(6))
    );
    assert_eq!(line_count(&g.workspace(thread).join("log.txt")), 1);
    g.inner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_output_pings_nobody_and_admin_commands_are_for_admins() {
    let g = Gateway::start().await;
    g.inner
        .llm
        .script("be loud", vec![text("@everyone look, <@7002> too")]);
    let asked = g
        .discord
        .guild_message(GUILD, CHANNEL, ALICE, &mention("be loud"));
    let thread = g.thread_of(asked).await;
    let loud = g.shown(thread, "look").await;
    assert_eq!(
        loud.allowed_mentions,
        Some(json!({"parse": []})),
        "{loud:?}"
    );

    let by_admin = g.discord.slash(ALICE, Some(GUILD), CHANNEL, "status");
    let by_other = g.discord.slash(MALLORY, Some(GUILD), CHANNEL, "status");
    let answer = |id: u64, needle: &'static str| {
        g.discord.wait_until(WAIT, needle, move |d| {
            d.original_response(id).filter(|r| r.text.contains(needle))
        })
    };
    let status = answer(by_admin, "conversations").await;
    assert_eq!(status.flags & 64, 64, "ephemeral");
    answer(by_other, "Only gateway admins").await;
    assert_eq!(
        g.inner.llm.requests().len(),
        1,
        "commands never reach the agent"
    );
    g.inner.stop().await;
}
