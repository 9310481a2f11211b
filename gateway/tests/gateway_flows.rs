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
    use serde_json::json;
    use support::{FakeLlm, text, tool};

    if !cgroup_controller_usable("pids", "a_process_flood_stops_at_the_sandboxs_pids_limit") {
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

/// Whether this host lets the gateway give sandboxes a `controller` cgroup; says so when not
/// (a kernel or container without it), so a skipped test never passes silently.
fn cgroup_controller_usable(controller: &str, test: &str) -> bool {
    match boxedclaw_gateway::sandbox::cgroup::SandboxCgroups::probe() {
        Ok(what) if what.contains(controller) => true,
        Ok(what) => {
            eprintln!("SKIPPED {test}: no {controller} controller here ({what})");
            false
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Several processes that each stay under the per-process `RLIMIT_AS` but together exceed
/// `[limits] memory_mib` are stopped by the sandbox's memory cgroup, and the agent survives.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandboxs_memory_is_capped_in_total() {
    use serde_json::json;
    use support::{FakeLlm, text, tool};

    if !cgroup_controller_usable("memory", "a_sandboxs_memory_is_capped_in_total") {
        return;
    }
    let llm = FakeLlm::start().await;
    // Three `dd`s each fill a 100 MiB buffer and hold it until their reader wakes up; each
    // records how many bytes got through. 300 MiB in all against a 192 MiB sandbox.
    let hog = "for i in 1 2 3; do \
                 (dd if=/dev/zero bs=100M count=1 status=none | (sleep 2; wc -c >/workspace/out$i)) & \
               done; wait; echo sizes: $(cat /workspace/out1 /workspace/out2 /workspace/out3)";
    llm.script(
        "hog memory",
        vec![
            tool("shell", json!({ "command": hog })),
            text("hogged: {last_tool_result}"),
            text("still alive"),
        ],
    );
    let h = flows::Harness::start(&llm, &agent_binary(), "[limits]\nmemory_mib = 192\n").await;
    let (c, alice) = (flows::key("HOG"), flows::user("alice"));
    h.say(&c, &alice, "hog memory").await;
    let id = h.prompt(&c).await;
    h.click(&c, &alice, &id, true).await;
    let reply = h.reply(&c, "hogged:").await;
    let sizes: Vec<u64> = reply
        .split("sizes:")
        .nth(1)
        .unwrap_or_else(|| panic!("no sizes in {reply:?}"))
        .split_whitespace()
        .map_while(|n| n.parse().ok())
        .collect();
    assert_eq!(sizes.len(), 3, "{reply}");
    let whole = sizes.iter().filter(|&&n| n == 100 * 1024 * 1024).count();
    assert!(
        whole <= 1,
        "{whole} of 3 processes held 100 MiB at once in a 192 MiB sandbox: {reply}"
    );
    h.say(&c, &alice, "are you there").await;
    h.reply(&c, "still alive").await;
    h.stop().await;
}
