//! Benchmarks: prints medians and tails; asserts nothing about time.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p boxedclaw-gateway`
//! (the release agent binary must exist next to the benchmark's target directory).
//! `cargo bench -p boxedclaw-gateway -- warm` (or `cold`, `quota`, `chats`, `rss`) runs one section.
//!
//! - sandbox cold start: bubblewrap spawn → agent `Ready`, through the real namespace backend;
//! - warm turn: user message → reply through the in-process gateway, real sandboxed agent,
//!   fake LLM answering at once over loopback HTTP; the bare HTTP round trip to the fake LLM is
//!   measured too, so gateway overhead = turn − 2 × LLM round trip is visible... see README;
//! - workspace quota: making and mounting a new workspace's filesystem (a conversation's first
//!   start), and mounting an existing one (its first start after a gateway restart);
//! - 200 new chats at once: 200 conversations, 200 sandboxes, until every reply is in;
//! - RSS of one idle agent and of the idle `boxedclaw run` process.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    missing_docs,
    unreachable_pub
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use boxedclaw_channels::fake::FakeChannel;
use boxedclaw_channels::{ChannelAdapter, InboundEvent, OutboundAction};
use boxedclaw_gateway::config::{Config, Env};
use boxedclaw_gateway::sandbox::link::AgentLink;
use boxedclaw_gateway::sandbox::namespace::NamespaceBackend;
use boxedclaw_gateway::sandbox::{SandboxBackend, SandboxSpec};
use boxedclaw_protocol::agent::{BoxToHost, HostToBox, PROTOCOL_VERSION};
use boxedclaw_protocol::channel::InboundMessage;
use boxedclaw_protocol::ids::{AgentId, ConversationKey, Platform, UserRef};
use boxedclaw_protocol::tools::ToolName;
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms min={:.3} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn pids_with_cmdline(prefix: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .starts_with(prefix)
                .then_some(pid)
        })
        .collect()
}

fn load_config(llm: &support::FakeLlm, extra: &str) -> (tempfile::TempDir, Config) {
    let (dir, path) = support::test_dirs(extra, &support::agent_binary());
    let env = Env::from_pairs(&[
        ("OPENAI_BASE_URL", llm.base_url().as_str()),
        ("OPENAI_API_KEY", "sk-bench-0123456789abcdef"),
    ]);
    (dir, Config::load(Some(&path), &env).unwrap())
}

async fn cold_start(llm: &support::FakeLlm) {
    let (dir, config) = load_config(llm, "");
    let backend = NamespaceBackend::new(&config).unwrap();
    let mut samples = Vec::new();
    for i in 0..60 {
        let workspace = dir.path().join(format!("cold-{i}"));
        std::fs::create_dir_all(&workspace).unwrap();
        let spec = SandboxSpec {
            conversation: ConversationKey::new(Platform::Web, None, &format!("c{i}"), None)
                .unwrap(),
            agent_id: AgentId::new(format!("bench{i}")).unwrap(),
            workspace,
        };
        let t0 = Instant::now();
        let mut process = backend.start(&spec).await.unwrap();
        process.stderr = None;
        let mut link = AgentLink::new(process);
        link.send(&HostToBox::Init {
            protocol_version: PROTOCOL_VERSION,
            agent_id: spec.agent_id.clone(),
            system_prompt: "bench".into(),
            tools: ToolName::ALL.to_vec(),
            limits: config.agent.limits,
        })
        .await
        .unwrap();
        assert!(matches!(
            link.recv().await.unwrap(),
            BoxToHost::Ready { .. }
        ));
        let took = t0.elapsed();
        if i >= 10 {
            samples.push(took);
        }
        link.shutdown().await;
    }
    report("sandbox cold start to Ready", samples);
}

async fn workspace_quota() {
    use boxedclaw_gateway::sandbox::quota::WorkspaceQuotas;
    let dir = tempfile::tempdir().unwrap();
    let quotas = match WorkspaceQuotas::probe(&dir.path().join("data"), 1 << 30).await {
        Ok(q) => q,
        Err(why) => {
            println!("workspace quota: not measured: {why}");
            return;
        }
    };
    let workspaces: Vec<_> = (0..40)
        .map(|i| {
            let w = dir.path().join("workspace").join(format!("w{i}"));
            std::fs::create_dir_all(&w).unwrap();
            w
        })
        .collect();
    // The first pass makes each filesystem; the second only mounts it again.
    let mut passes = Vec::new();
    for _ in 0..2 {
        let mut timings = Vec::new();
        for w in &workspaces {
            let t0 = Instant::now();
            quotas.prepare(w).await.unwrap();
            timings.push(t0.elapsed());
        }
        quotas.release_all();
        passes.push(timings);
    }
    let again = passes.pop().unwrap();
    let fresh = passes.pop().unwrap();
    report(
        "workspace quota: new 1 GiB filesystem, made and mounted",
        fresh,
    );
    report("workspace quota: existing filesystem mounted", again);
}

struct Gateway {
    fake: Arc<FakeChannel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_gateway(llm: &support::FakeLlm) -> Gateway {
    let (dir, config) = load_config(llm, "[router]\nmax_conversations = 1000\n");
    let sandbox = boxedclaw_gateway::build_sandbox(&config).unwrap();
    let fake = FakeChannel::new(Platform::Web);
    let shutdown = CancellationToken::new();
    let channels: Vec<Arc<dyn ChannelAdapter>> = vec![fake.clone()];
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        boxedclaw_gateway::run(config, sandbox, channels, token)
            .await
            .unwrap();
    });
    Gateway {
        fake,
        shutdown,
        task,
        _dir: dir,
    }
}

fn message(conv: &ConversationKey, n: usize) -> InboundEvent {
    InboundEvent::Message(InboundMessage {
        id: format!("m{n}"),
        conversation: conv.clone(),
        user: UserRef::new(Platform::Web, "bench").unwrap(),
        text: "bench".into(),
    })
}

fn count_posts(delivered: &[OutboundAction]) -> usize {
    delivered
        .iter()
        .filter(|a| matches!(a, OutboundAction::Post { .. }))
        .count()
}

async fn warm_turns(llm: &support::FakeLlm) {
    let gw = start_gateway(llm).await;
    let conv = ConversationKey::new(Platform::Web, None, "warm", None).unwrap();
    let mut samples = Vec::new();
    for n in 0..230 {
        let t0 = Instant::now();
        gw.fake.send(message(&conv, n)).await;
        gw.fake
            .wait_until(Duration::from_secs(30), |d| count_posts(d) > n)
            .await;
        if n >= 30 {
            samples.push(t0.elapsed());
        }
    }
    report("warm turn (message → reply, 1 LLM call)", samples);

    // What one bare HTTP round trip to the fake LLM costs, for comparison.
    let client = reqwest::Client::new();
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let mut http = Vec::new();
    for i in 0..230 {
        let t0 = Instant::now();
        let r = client
            .post(format!("{}/chat/completions", llm.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
        if i >= 30 {
            http.push(t0.elapsed());
        }
    }
    report("bare fake-LLM HTTP round trip", http);

    let agents = pids_with_cmdline("/opt/boxedclaw/boxedclaw-agent");
    for pid in agents {
        if let Some(kib) = rss_kib(pid) {
            println!(
                "idle agent RSS: {:.2} MiB (pid {pid}, after 230 turns)",
                kib as f64 / 1024.0
            );
        }
    }
    gw.shutdown.cancel();
    gw.task.await.unwrap();
}

async fn new_chats(llm: &support::FakeLlm, count: usize) {
    let gw = start_gateway(llm).await;
    let t0 = Instant::now();
    for n in 0..count {
        let conv = ConversationKey::new(Platform::Web, None, &format!("new{n}"), None).unwrap();
        gw.fake.send(message(&conv, n)).await;
    }
    gw.fake
        .wait_until(Duration::from_secs(120), |d| count_posts(d) >= count)
        .await;
    println!(
        "{count} new chats ({count} sandboxes) answered in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    gw.shutdown.cancel();
    gw.task.await.unwrap();
}

async fn idle_gateway_rss(llm: &support::FakeLlm) {
    let (dir, path) = support::test_dirs("http_addr = \"127.0.0.1:0\"", &support::agent_binary());
    let exe = support::agent_binary().with_file_name("boxedclaw");
    let mut child = tokio::process::Command::new(exe)
        .args(["--config", &path.to_string_lossy(), "run"])
        .env_clear()
        .env("OPENAI_BASE_URL", llm.base_url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().unwrap();
    println!(
        "idle gateway RSS (`boxedclaw run`): {:.2} MiB",
        rss_kib(pid).unwrap() as f64 / 1024.0
    );
    child.kill().await.unwrap();
    drop(dir);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench -p boxedclaw-gateway -- warm quota` runs only the sections so named.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted =
        |section: &str| only.is_empty() || only.iter().any(|o| section.contains(o.as_str()));
    rt.block_on(async {
        let llm = support::FakeLlm::start().await;
        if wanted("cold") {
            cold_start(&llm).await;
        }
        if wanted("quota") {
            workspace_quota().await;
        }
        if wanted("warm") {
            warm_turns(&llm).await;
        }
        if wanted("chats") {
            new_chats(&llm, 200).await;
        }
        if wanted("rss") {
            idle_gateway_rss(&llm).await;
        }
    });
}
