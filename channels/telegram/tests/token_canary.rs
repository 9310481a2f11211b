//! The bot token never shows up in a log line or an error, even when every request fails.
//! (teloxide's `Bot` prints its token in `Debug`; the adapter must never log it that way.)
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::{ChannelAdapter, ChannelContext, OutboundAction, Secret};
use boxedclaw_protocol::ids::{ConversationKey, Platform};
use boxedclaw_telegram::{TelegramChannel, TelegramSettings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "987654:CANARY-telegram-token-never-printed";

#[tokio::test(flavor = "multi_thread")]
async fn the_token_reaches_no_log_line_and_no_error() {
    let logs = boxedclaw_channels::fake::capture_logs();
    // Nothing listens on port 1: every request fails with a network error naming the URL.
    let settings = TelegramSettings::new(
        Arc::new(Secret::new(TOKEN.to_owned())),
        Some("http://127.0.0.1:1".to_owned()),
    );
    let tg = TelegramChannel::new(settings).unwrap();
    tracing::info!(adapter = ?tg, "built");
    let (tx, _rx) = mpsc::channel(1);
    let ctx = ChannelContext {
        inbound: tx,
        shutdown: CancellationToken::new(),
        ready: CancellationToken::new(),
    };
    let running = tokio::spawn(tg.clone().run(ctx.clone()));
    let conversation = ConversationKey::new(Platform::Telegram, None, "1", None).unwrap();
    let err = tg
        .deliver(OutboundAction::Post {
            conversation,
            text: "hello".into(),
        })
        .await
        .unwrap_err();
    // Long enough for getMe to fail and be retried (and logged) twice.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    ctx.shutdown.cancel();
    running.await.unwrap().unwrap();
    let logs = logs.text();
    assert!(
        logs.contains("getMe failed"),
        "the failure is logged: {logs}"
    );
    for (what, text) in [("logs", logs.as_str()), ("error", &err.to_string())] {
        assert!(!text.contains("CANARY"), "token in {what}: {text}");
    }
}
