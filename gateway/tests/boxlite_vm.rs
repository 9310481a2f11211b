//! The foundation's end-to-end flows (approval, canary, isolation, hostile agents) against the
//! BoxLite microVM backend.
//!
//! They boot real VMs, so they need hardware virtualization (VT-x/AMD-V or proper nested
//! virtualization), the BoxLite runtime (`BOXLITE_RUNTIME_DIR`) and two guest images built by
//! `deploy/boxlite/build-guest-image.sh` (`BOXEDCLAW_TEST_GUEST_IMAGE`, with the real agent,
//! and `BOXEDCLAW_TEST_HOSTILE_IMAGE`, with the hostile test agent). `.ci/run` prepares all
//! three and runs these with `--ignored` where `/proc/cpuinfo` shows `vmx` or `svm`; elsewhere
//! it says, in one line, that they were not run and why.
// Test code: panicking on failure is the point, and helper tasks outlive no test.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use support::agent_binary;
use support::flows::{self, Backend};

#[allow(clippy::disallowed_methods)] // test setup reads what .ci/run prepared
fn prepared(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: see the top of gateway/tests/boxlite_vm.rs for what to prepare")
    })
}

fn boxlite_toml(image_var: &str) -> String {
    format!(
        "sandbox = \"boxlite\"\n[boxlite]\nruntime_dir = \"{}\"\nimage = \"oci:{}\"\n",
        prepared("BOXLITE_RUNTIME_DIR"),
        prepared(image_var)
    )
}

fn boxlite() -> Backend {
    Backend {
        agent: agent_binary(),
        extra_toml: boxlite_toml("BOXEDCLAW_TEST_GUEST_IMAGE"),
        host_processes: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs hardware virtualization"]
async fn vm_only_the_requester_decides_forged_and_double_clicks_change_nothing() {
    flows::only_the_requester_decides_forged_and_double_clicks_change_nothing(&boxlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs hardware virtualization"]
async fn vm_two_conversations_get_two_boxes_that_cannot_see_each_other() {
    flows::two_conversations_get_two_sandboxes_that_cannot_see_each_other(&boxlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs hardware virtualization"]
async fn vm_hostile_agents_are_stopped_and_others_keep_running() {
    let backend = Backend {
        extra_toml: boxlite_toml("BOXEDCLAW_TEST_HOSTILE_IMAGE"),
        ..boxlite()
    };
    flows::hostile_agents_are_stopped_and_others_keep_running(&backend).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs hardware virtualization"]
async fn vm_canary_key_reaches_no_box_no_frame_and_no_log() {
    support::chat::canary_key_reaches_no_sandbox_no_frame_and_no_log(
        &boxlite_toml("BOXEDCLAW_TEST_GUEST_IMAGE"),
        &agent_binary(),
    )
    .await;
}
