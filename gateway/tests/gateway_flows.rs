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
