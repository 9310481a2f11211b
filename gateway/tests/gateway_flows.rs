//! The gateway in-process with a fake channel (any user can be played), the real namespace
//! sandbox and agent, and a fake LLM: authorization, forged clicks, isolation, hostile agents.
//! The same flows run against BoxLite in `boxlite_vm.rs`.
// Test code: panicking on failure is the point, and helper tasks outlive no test.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use support::flows::{self, Backend};
use support::{agent_binary, hostile_agent};

fn namespace() -> Backend {
    Backend {
        agent: agent_binary(),
        extra_toml: String::new(),
        host_processes: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_requester_decides_forged_and_double_clicks_change_nothing() {
    flows::only_the_requester_decides_forged_and_double_clicks_change_nothing(&namespace()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_approver_may_decide_for_others() {
    flows::configured_approver_may_decide_for_others(&namespace()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_conversations_get_two_sandboxes_that_cannot_see_each_other() {
    flows::two_conversations_get_two_sandboxes_that_cannot_see_each_other(&namespace()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_agents_are_stopped_and_others_keep_running() {
    let scripts = tempfile::tempdir().unwrap();
    let backend = Backend {
        agent: hostile_agent(scripts.path()),
        ..namespace()
    };
    flows::hostile_agents_are_stopped_and_others_keep_running(&backend).await;
}

/// A process flood inside one sandbox stops at `[limits] max_processes`, even for a gateway
/// running as root (where `RLIMIT_NPROC` does not bind), and leaves the sandbox usable.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_flood_stops_at_the_sandboxs_pids_limit() {
    use boxedclaw_gateway::sandbox::cgroup::PidsCgroups;
    use serde_json::json;
    use support::{FakeLlm, text, tool};

    if let Err(why) = PidsCgroups::probe() {
        // Only where the kernel offers no pids controller to this process at all.
        eprintln!("SKIPPED a_process_flood_stops_at_the_sandboxs_pids_limit: {why}");
        return;
    }
    const MAX: usize = 24;
    let llm = FakeLlm::start().await;
    // 200 background sleeps (in a subshell, which a failed fork ends); then count the
    // processes of this sandbox's pid namespace with builtins only: no pid is left to fork.
    let flood = "(for i in $(seq 1 200); do sleep 30 & done) 2>/dev/null; \
                 set -- /proc/[0-9]*; echo procs=$#";
    llm.script(
        "flood",
        vec![
            tool("shell", json!({ "command": flood })),
            text("flooded: {last_tool_result}"),
            text("still here"),
        ],
    );
    llm.script("bystander", vec![text("unaffected")]);
    let h = flows::Harness::start(
        &llm,
        &agent_binary(),
        &format!("[limits]\nmax_processes = {MAX}\n"),
    )
    .await;
    let (c, other) = (flows::key("FLOOD"), flows::key("CALM"));
    let alice = flows::user("alice");
    h.say(&c, &alice, "flood").await;
    let id = h.prompt(&c).await;
    h.click(&c, &alice, &id, true).await;
    let reply = h.reply(&c, "flooded:").await;
    let procs: usize = reply
        .split("procs=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no process count in {reply:?}"));
    assert!(
        (8..=MAX).contains(&procs),
        "{procs} processes in the sandbox with max_processes = {MAX}: {reply}"
    );
    // The same sandbox answers its next message; another conversation never noticed.
    h.say(&c, &alice, "are you there").await;
    h.reply(&c, "still here").await;
    h.say(&other, &flows::user("bob"), "bystander").await;
    h.reply(&other, "unaffected").await;
    h.stop().await;
}
