//! The web channel against the shared channel-adapter conformance suite, with fake browsers
//! (real HTTP clients of the chat routes on 127.0.0.1:0) standing in for users.
#![allow(clippy::unwrap_used)]

use boxedclaw_channels::conformance::check_adapter;
use boxedclaw_web::fake::FakeBrowsers;
use boxedclaw_web::{WebChannel, WebSettings};

#[tokio::test(flavor = "multi_thread")]
async fn web_adapter_passes_the_conformance_suite() {
    let channel = WebChannel::new(WebSettings::default());
    // The suite's "users" are browser sessions: each one is a person with a tab.
    let browsers = FakeBrowsers::start(&channel, 2).await;
    check_adapter(channel, &browsers).await;
}
