//! The Telegram adapter against the shared channel-adapter conformance suite, with the fake
//! Bot API server on 127.0.0.1:0 standing in for Telegram.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::Secret;
use boxedclaw_channels::conformance::check_adapter;
use boxedclaw_telegram::fake::FakeTelegram;
use boxedclaw_telegram::{TelegramChannel, TelegramSettings};

const TOKEN: &str = "4242:conformance-token";

#[tokio::test(flavor = "multi_thread")]
async fn telegram_adapter_passes_the_conformance_suite() {
    let fake = FakeTelegram::start(TOKEN).await;
    let mut settings = TelegramSettings::new(
        Arc::new(Secret::new(TOKEN.to_owned())),
        Some(fake.api_url()),
    );
    settings.poll_timeout = Duration::from_secs(1);
    let adapter = TelegramChannel::new(settings).unwrap();
    check_adapter(adapter, &*fake).await;
}
