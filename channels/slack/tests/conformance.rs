//! The Slack adapter against the shared channel-adapter conformance suite, with the fake
//! Slack (Web API + Socket Mode) on 127.0.0.1:0 standing in for Slack.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use boxedclaw_channels::Secret;
use boxedclaw_channels::conformance::check_adapter;
use boxedclaw_slack::fake::FakeSlack;
use boxedclaw_slack::{SlackChannel, SlackSettings};

const BOT_TOKEN: &str = "xoxb-conformance-bot";
const APP_TOKEN: &str = "xapp-conformance-app";

#[tokio::test(flavor = "multi_thread")]
async fn slack_adapter_passes_the_conformance_suite() {
    let fake = FakeSlack::start(BOT_TOKEN, APP_TOKEN).await;
    let mut settings = SlackSettings::new(
        Arc::new(Secret::new(BOT_TOKEN.to_owned())),
        Some(Arc::new(Secret::new(APP_TOKEN.to_owned()))),
        None,
        Some(fake.api_url()),
    );
    settings.reconnect_backoff_secs = 0;
    let adapter = SlackChannel::new(settings).unwrap();
    check_adapter(adapter, &*fake).await;
}
