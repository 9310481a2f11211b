//! The gateway's end-to-end flows, written once and run against every sandbox backend: the
//! namespace backend in `gateway_flows.rs`, the BoxLite backend in `boxlite_vm.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::fake::FakeChannel;
use boxedclaw_channels::{ChannelAdapter, InboundEvent, OutboundAction};
use boxedclaw_gateway::config::{Config, Env};
use boxedclaw_protocol::channel::{ApprovalDecision, ApprovalOutcome, InboundMessage};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{FakeLlm, test_dirs, text, tool};

/// How to run the gateway under test: its agent binary and extra config (the sandbox backend).
#[derive(Debug, Clone)]
pub struct Backend {
    pub agent: PathBuf,
    pub extra_toml: String,
    /// Whether sandboxes show up as host processes naming their workspace (namespace backend).
    pub host_processes: bool,
}

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Harness {
    pub llm: FakeLlm,
    pub fake: Arc<FakeChannel>,
    shutdown: CancellationToken,
    gateway: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
}

impl Harness {
    pub async fn start(llm: &FakeLlm, agent: &Path, extra_toml: &str) -> Self {
        let (dir, config_path) = test_dirs(extra_toml, agent);
        Self::launch(llm, dir, config_path, FakeChannel::new(Platform::Slack))
    }

    fn launch(
        llm: &FakeLlm,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        fake: Arc<FakeChannel>,
    ) -> Self {
        let env = Env::from_pairs(&[
            ("OPENAI_BASE_URL", llm.base_url().as_str()),
            ("OPENAI_API_KEY", "sk-flows-0123456789abcdef"),
        ]);
        let config = Config::load(Some(&config_path), &env).unwrap();
        let sandbox = boxedclaw_gateway::build_sandbox(&config).unwrap();
        let shutdown = CancellationToken::new();
        let channels: Vec<Arc<dyn ChannelAdapter>> = vec![fake.clone()];
        let token = shutdown.clone();
        let gateway = tokio::spawn(async move {
            boxedclaw_gateway::run(config, sandbox, channels, token)
                .await
                .unwrap();
        });
        Self {
            llm: llm.clone(),
            fake,
            shutdown,
            gateway,
            dir,
            config_path,
        }
    }

    /// Stops this gateway and starts a new one on the same directories and store, with a
    /// fresh channel (`fake`), as after a restart.
    pub async fn restart(self, fake: Arc<FakeChannel>) -> Self {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.gateway)
            .await
            .unwrap()
            .unwrap();
        Self::launch(&self.llm, self.dir, self.config_path, fake)
    }

    /// The config file the next [`restart`](Self::restart) loads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn workspace(&self, key: &ConversationKey) -> PathBuf {
        self.dir.path().join("workspace").join(key.storage_name())
    }

    pub async fn say(&self, key: &ConversationKey, user: &UserRef, text: &str) {
        self.fake
            .send(InboundEvent::Message(InboundMessage {
                id: format!("{key}-{text}"),
                conversation: key.clone(),
                user: user.clone(),
                text: text.to_owned(),
            }))
            .await;
    }

    pub async fn click(
        &self,
        key: &ConversationKey,
        user: &UserRef,
        id: &ApprovalId,
        approve: bool,
    ) {
        self.fake
            .send(InboundEvent::ApprovalDecision(ApprovalDecision {
                conversation: key.clone(),
                approval: id.clone(),
                user: user.clone(),
                approve,
                approver_role: None,
            }))
            .await;
    }

    pub async fn prompt(&self, key: &ConversationKey) -> ApprovalId {
        let key = key.clone();
        match self
            .fake
            .wait_for(
                WAIT,
                |a| matches!(a, OutboundAction::RequestApproval(p) if p.conversation == key),
            )
            .await
        {
            OutboundAction::RequestApproval(p) => p.approval,
            _ => unreachable!(),
        }
    }

    /// `user` says `message`, approves the risky call the agent then proposes, and gets the
    /// reply containing `needle`.
    pub async fn say_and_approve(
        &self,
        key: &ConversationKey,
        user: &UserRef,
        message: &str,
        needle: &str,
    ) -> String {
        self.say(key, user, message).await;
        let id = self.prompt(key).await;
        self.click(key, user, &id, true).await;
        self.reply(key, needle).await
    }

    pub async fn reply(&self, key: &ConversationKey, needle: &str) -> String {
        let key = key.clone();
        match self.fake.wait_for(WAIT, |a| matches!(a, OutboundAction::Post { conversation, text } if *conversation == key && text.contains(needle))).await {
            OutboundAction::Post { text, .. } => text,
            _ => unreachable!(),
        }
    }

    pub async fn notice_for(&self, user: &UserRef, needle: &str) -> String {
        let user = user.clone();
        match self.fake.wait_for(WAIT, |a| matches!(a, OutboundAction::Notice { user: Some(u), text, .. } if *u == user && text.contains(needle))).await {
            OutboundAction::Notice { text, .. } => text,
            _ => unreachable!(),
        }
    }

    /// Stops the gateway; hands back its directories, for a look at what it left behind.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.gateway)
            .await
            .unwrap()
            .unwrap();
        self.dir
    }
}

pub fn key(channel: &str) -> ConversationKey {
    ConversationKey::new(Platform::Slack, Some("T1"), channel, None).unwrap()
}

pub fn user(id: &str) -> UserRef {
    UserRef::new(Platform::Slack, id).unwrap()
}

pub fn resolutions(fake: &FakeChannel, id: &ApprovalId) -> Vec<(ApprovalOutcome, Option<UserRef>)> {
    fake.delivered()
        .into_iter()
        .filter_map(|a| match a {
            OutboundAction::ResolveApproval {
                approval,
                outcome,
                by,
                ..
            } if approval == *id => Some((outcome, by)),
            _ => None,
        })
        .collect()
}

pub async fn only_the_requester_decides_forged_and_double_clicks_change_nothing(b: &Backend) {
    let llm = FakeLlm::start().await;
    llm.script(
        "append a line",
        vec![
            tool(
                "shell",
                json!({"command": "echo ran >> /workspace/log.txt"}),
            ),
            text("finished: {last_tool_result}"),
        ],
    );
    let h = Harness::start(&llm, &b.agent, &b.extra_toml).await;
    let (c1, c2) = (key("C1"), key("C2"));
    let (alice, mallory) = (user("alice"), user("mallory"));
    h.say(&c1, &alice, "append a line").await;
    let id = h.prompt(&c1).await;

    // Someone else in the channel clicks Approve: refused, still pending.
    h.click(&c1, &mallory, &id, true).await;
    h.notice_for(&mallory, "may not decide").await;
    // A forged click naming C1's approval from another conversation, even by alice.
    h.click(&c2, &alice, &id, true).await;
    h.notice_for(&alice, "not pending here").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        resolutions(&h.fake, &id).is_empty(),
        "approval must still be pending"
    );
    assert!(
        !h.workspace(&c1).join("log.txt").exists(),
        "nothing ran before approval"
    );

    // The requester approves; a double click afterwards changes nothing.
    h.click(&c1, &alice, &id, true).await;
    h.click(&c1, &alice, &id, true).await;
    h.reply(&c1, "finished:").await;
    assert_eq!(
        resolutions(&h.fake, &id),
        vec![(ApprovalOutcome::Approved, Some(alice.clone()))]
    );
    assert_eq!(
        std::fs::read_to_string(h.workspace(&c1).join("log.txt")).unwrap(),
        "ran\n"
    );
    h.stop().await;
}

pub async fn configured_approver_may_decide_for_others(b: &Backend) {
    let llm = FakeLlm::start().await;
    llm.script(
        "delete it",
        vec![
            tool("file_delete", json!({"path": "doomed.txt"})),
            text("deleted: {last_tool_result}"),
        ],
    );
    let h = Harness::start(
        &llm,
        &b.agent,
        &format!("approvers = [\"slack:boss\"]\n{}", b.extra_toml),
    )
    .await;
    let c = key("C9");
    std::fs::create_dir_all(h.workspace(&c)).unwrap();
    std::fs::write(h.workspace(&c).join("doomed.txt"), "x").unwrap();
    h.say(&c, &user("alice"), "delete it").await;
    let id = h.prompt(&c).await;
    h.click(&c, &user("boss"), &id, true).await;
    h.reply(&c, "deleted:").await;
    assert!(!h.workspace(&c).join("doomed.txt").exists());
    assert_eq!(
        resolutions(&h.fake, &id),
        vec![(ApprovalOutcome::Approved, Some(user("boss")))]
    );
    h.stop().await;
}

pub async fn two_conversations_get_two_sandboxes_that_cannot_see_each_other(b: &Backend) {
    let llm = FakeLlm::start().await;
    llm.script(
        "store my secret",
        vec![
            tool(
                "file_write",
                json!({"path": "secret-of-a.txt", "content": "alpha-private"}),
            ),
            text("stored"),
        ],
    );
    llm.script("look around", vec![
        tool("shell", json!({"command": "ls -a /workspace; find / -xdev -name 'secret-of-a*' 2>/dev/null; p=$(printf '%s-%s' alpha private); grep -rs \"$p\" / --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr; echo look-done"})),
        text("seen: {last_tool_result}"),
    ]);
    let h = Harness::start(&llm, &b.agent, &b.extra_toml).await;
    let (a, b) = (key("CA"), key("CB"));
    h.say(&a, &user("alice"), "store my secret").await;
    h.say(&b, &user("bob"), "look around").await;
    h.reply(&a, "stored").await;
    let id = h.prompt(&b).await;
    h.click(&b, &user("bob"), &id, true).await;
    let seen = h.reply(&b, "seen:").await;
    assert!(seen.contains("look-done"), "{seen}");
    assert!(
        !seen.contains("secret-of-a") && !seen.contains("alpha-private"),
        "{seen}"
    );
    assert!(h.workspace(&a).join("secret-of-a.txt").exists());
    assert!(!h.workspace(&b).join("secret-of-a.txt").exists());
    // Neither conversation's context ever reached the other's LLM requests.
    for body in llm.requests_for("look around") {
        assert!(!body.to_string().contains("store my secret"));
    }
    for body in llm.requests_for("store my secret") {
        assert!(!body.to_string().contains("look around"));
    }
    h.stop().await;
}

/// An agent that speaks just enough protocol, then misbehaves as `/workspace/.mode` says.
pub const HOSTILE_AGENT: &str = include_str!("hostile-agent.sh");

pub async fn hostile_agents_are_stopped_and_others_keep_running(b: &Backend) {
    let llm = FakeLlm::start().await;
    let h = Harness::start(&llm, &b.agent, &b.extra_toml).await;
    let modes = ["oversize", "deep", "forged", "binary"];
    for m in modes {
        let ws = h.workspace(&key(m));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join(".mode"), m).unwrap();
    }
    let good = key("good");
    for m in modes {
        h.say(&key(m), &user("eve"), "hello").await;
    }
    h.say(&good, &user("alice"), "hello").await;
    for m in modes {
        let reply = h.reply(&key(m), "invalid message and was stopped").await;
        assert!(reply.contains("(reference "), "{reply}");
        // Its sandbox is gone: no process still has its workspace in its command line.
        let ws = h.workspace(&key(m)).to_string_lossy().into_owned();
        let mut alive = b.host_processes;
        for _ in 0..50 {
            if !b.host_processes {
                break;
            }
            alive = processes_mentioning(&ws);
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!alive, "sandbox of {m} still running");
    }
    h.reply(&good, "pong from the good agent").await;
    // No approval was ever shown for the forged request.
    assert!(
        !h.fake
            .delivered()
            .iter()
            .any(|a| matches!(a, OutboundAction::RequestApproval(_)))
    );
    // A stopped conversation gets a fresh sandbox on its next message (which misbehaves again
    // and is stopped again).
    h.say(&key("forged"), &user("eve"), "again").await;
    let forged = key("forged");
    h.fake
        .wait_until(WAIT, |d| {
            d.iter()
                .filter(|a| {
                    matches!(a, OutboundAction::Post { conversation, text }
                    if *conversation == forged && text.contains("invalid message"))
                })
                .count()
                == 2
        })
        .await;
    h.stop().await;
}

fn processes_mentioning(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}
