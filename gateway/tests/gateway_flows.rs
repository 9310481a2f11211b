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
    let reply = h.say_and_approve(&c, &alice, "flood", "flooded:").await;
    let procs = count_after(&reply, "procs=");
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
/// The seccomp filter refuses the kernel interfaces an agent has no use for, in every process
/// of the sandbox (here a shell's grandchild): `ptrace` of itself, which the kernel otherwise
/// allows any process, the keyrings and `io_uring` fail with `EPERM`; ordinary calls work.
#[tokio::test(flavor = "multi_thread")]
async fn the_sandboxs_seccomp_filter_refuses_the_kernels_attack_surface() {
    use serde_json::json;
    use support::{FakeLlm, text, tool};

    // perl-base is part of every Debian system; its `syscall` makes raw system calls.
    assert!(
        std::path::Path::new("/usr/bin/perl").exists(),
        "this test needs /usr/bin/perl in the sandbox's /usr"
    );
    let calls = [
        ("ptrace", libc::SYS_ptrace),
        ("keyctl", libc::SYS_keyctl),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("getppid", libc::SYS_getppid),
    ];
    let args: Vec<String> = calls.iter().map(|(n, nr)| format!("{n}={nr}")).collect();
    let probe = format!(
        "perl -e 'for (@ARGV) {{ my ($n, $nr) = split /=/; $! = 0; \
         my $r = syscall($nr, 0, 0, 0, 0); printf \"%s=%d/%d \", $n, $r, $!+0 }}' {}",
        args.join(" ")
    );
    let llm = FakeLlm::start().await;
    llm.script(
        "syscalls",
        vec![
            tool("shell", json!({ "command": probe })),
            text("probed: {last_tool_result}"),
        ],
    );
    let h = flows::Harness::start(&llm, &agent_binary(), "").await;
    let (c, alice) = (flows::key("SECCOMP"), flows::user("alice"));
    let reply = h.say_and_approve(&c, &alice, "syscalls", "probed:").await;
    // "result/errno" per call; EPERM is 1.
    let outcome = |name: &str| {
        reply
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {reply:?}"))
            .to_owned()
    };
    for refused in ["ptrace", "keyctl", "io_uring_setup"] {
        assert_eq!(
            outcome(refused),
            "-1/1",
            "{refused} was not refused: {reply}"
        );
    }
    let parent: i64 = outcome("getppid")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(parent > 0, "ordinary calls must work: {reply}");
    h.stop().await;
}

/// The number a sandbox script printed after `tag` (as in `procs=12`).
fn count_after(reply: &str, tag: &str) -> usize {
    reply
        .split(tag)
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {tag:?} in {reply:?}"))
}

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
    let reply = h.say_and_approve(&c, &alice, "hog memory", "hogged:").await;
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

/// Whether this host lets the gateway give each workspace a filesystem of its own; says so
/// when not (no root, no loop devices), so a skipped test never passes silently.
async fn workspace_quotas_usable(test: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    match boxedclaw_gateway::sandbox::quota::WorkspaceQuotas::probe(
        dir.path(),
        boxedclaw_gateway::sandbox::quota::MIN_QUOTA_BYTES,
    )
    .await
    {
        Ok(_) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn is_mount_point(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    dev(dir) != dev(dir.parent().unwrap())
}

/// Security test T22, bytes: `dd` into `/workspace` stops at the workspace's quota, the host's
/// disk holds no more than the quota, the user is told, and deleting files frees the space.
/// Another conversation has a filesystem of its own and never notices.
#[tokio::test(flavor = "multi_thread")]
async fn filling_a_workspace_stops_at_its_quota() {
    use boxedclaw_channels::OutboundAction;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;
    use support::{FakeLlm, text, tool};

    if !workspace_quotas_usable("filling_a_workspace_stops_at_its_quota").await {
        return;
    }
    let llm = FakeLlm::start().await;
    llm.script(
        "fill",
        vec![
            tool(
                "shell",
                json!({ "command": "dd if=/dev/zero of=big bs=1M count=64 2>&1; echo rc=$?" }),
            ),
            text("filled: {last_tool_result}"),
            tool(
                "shell",
                json!({ "command": "rm big && echo room > after.txt && cat after.txt" }),
            ),
            text("cleaned: {last_tool_result}"),
        ],
    );
    llm.script(
        "bystander",
        vec![
            tool("file_write", json!({ "path": "b.txt", "content": "mine" })),
            text("wrote: {last_tool_result}"),
        ],
    );
    let h = flows::Harness::start(&llm, &agent_binary(), "[limits]\nworkspace_mib = 16\n").await;
    let (c, other) = (flows::key("FILL"), flows::key("CALM"));
    let alice = flows::user("alice");
    let reply = h.say_and_approve(&c, &alice, "fill", "filled:").await;
    assert!(
        reply.contains("No space left on device") && reply.contains("rc=1"),
        "{reply}"
    );
    let told = h.reply(&c, "workspace is full").await;
    assert!(told.contains("of its 16 MiB left"), "{told}");

    let workspace = h.workspace(&c);
    assert!(
        is_mount_point(&workspace),
        "the workspace is its own filesystem"
    );
    let images = workspace
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("data/workspace-images");
    let image = images.join(format!("{}.img", c.storage_name()));
    let on_disk = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(
        on_disk <= 17 << 20,
        "the host holds {on_disk} bytes for a 16 MiB workspace"
    );

    h.say(&other, &flows::user("bob"), "bystander").await;
    h.reply(&other, "wrote:").await;
    let theirs = h.workspace(&other);
    assert_eq!(
        std::fs::read_to_string(theirs.join("b.txt")).unwrap(),
        "mine"
    );
    assert_ne!(
        std::fs::metadata(&theirs).unwrap().dev(),
        std::fs::metadata(&workspace).unwrap().dev(),
        "each workspace has a filesystem of its own"
    );

    h.say(&c, &alice, "clean up").await;
    // `prompt` answers with the conversation's first prompt: the one already approved.
    let first = h.prompt(&c).await;
    let second = match h
        .fake
        .wait_for(flows::WAIT, |a| {
            matches!(a, OutboundAction::RequestApproval(p) if p.conversation == c && p.approval != first)
        })
        .await
    {
        OutboundAction::RequestApproval(p) => p.approval,
        _ => unreachable!(),
    };
    h.click(&c, &alice, &second, true).await;
    let reply = h.reply(&c, "cleaned:").await;
    assert!(reply.contains("room"), "{reply}");
    let _dirs = h.stop().await;
    assert!(
        !is_mount_point(&workspace),
        "a stopped gateway leaves no mount behind"
    );
}

/// Security test T22, inodes: a flood of empty files stops at the workspace's inode table
/// (16 MiB of quota allow 1 024 files), and the user is told.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_empty_files_stops_at_the_workspaces_inode_limit() {
    use serde_json::json;
    use support::{FakeLlm, text, tool};

    if !workspace_quotas_usable("a_flood_of_empty_files_stops_at_the_workspaces_inode_limit").await
    {
        return;
    }
    let llm = FakeLlm::start().await;
    let flood = "i=0; while [ $i -lt 5000 ]; do touch f$i 2>/dev/null || break; i=$((i+1)); done; \
                 echo made=$i";
    llm.script(
        "files",
        vec![
            tool("shell", json!({ "command": flood })),
            text("flooded: {last_tool_result}"),
        ],
    );
    let h = flows::Harness::start(&llm, &agent_binary(), "[limits]\nworkspace_mib = 16\n").await;
    let c = flows::key("INODES");
    let alice = flows::user("alice");
    let reply = h.say_and_approve(&c, &alice, "files", "flooded:").await;
    let made = count_after(&reply, "made=");
    assert!(
        (900..1024).contains(&made),
        "{made} files in a 16 MiB workspace"
    );
    h.reply(&c, "holds as many files as it may").await;
    h.stop().await;
}

/// A workspace under quota keeps its files and the agent's memory across a restart (its image
/// is mounted again), and grows when the quota is raised.
#[tokio::test(flavor = "multi_thread")]
async fn a_quota_workspace_survives_a_restart_and_grows_when_raised() {
    use serde_json::json;
    use support::{FakeLlm, text, tool};

    if !workspace_quotas_usable("a_quota_workspace_survives_a_restart_and_grows_when_raised").await
    {
        return;
    }
    let llm = FakeLlm::start().await;
    llm.script(
        "keep this",
        vec![
            tool(
                "file_write",
                json!({ "path": "notes.txt", "content": "kept" }),
            ),
            text("written"),
            tool("file_read", json!({ "path": "notes.txt" })),
            text("read back: {last_tool_result}"),
        ],
    );
    let h = flows::Harness::start(&llm, &agent_binary(), "[limits]\nworkspace_mib = 16\n").await;
    let c = flows::key("KEEP");
    let alice = flows::user("alice");
    h.say(&c, &alice, "keep this").await;
    h.reply(&c, "written").await;
    let workspace = h.workspace(&c);
    let size = |dir: &std::path::Path| {
        let s = rustix::fs::statvfs(dir).unwrap();
        s.f_blocks * s.f_frsize
    };
    assert!(size(&workspace) <= 16 << 20);

    let config = std::fs::read_to_string(h.config_path()).unwrap();
    std::fs::write(
        h.config_path(),
        config.replace("workspace_mib = 16", "workspace_mib = 48"),
    )
    .unwrap();
    let h = h
        .restart(boxedclaw_channels::fake::FakeChannel::new(
            boxedclaw_protocol::ids::Platform::Slack,
        ))
        .await;
    assert!(
        !workspace.join("notes.txt").exists(),
        "between runs the files are in the image, not on the host's disk"
    );
    h.say(&c, &alice, "what did I keep").await;
    let reply = h.reply(&c, "read back:").await;
    assert!(reply.contains("kept"), "{reply}");
    assert!(
        size(&workspace) > 32 << 20,
        "the workspace grew to the raised quota: {} bytes",
        size(&workspace)
    );
    h.stop().await;
}
