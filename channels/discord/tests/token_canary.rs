//! The bot token never shows up in a log line or an error, at TRACE level, through a whole
//! session (identify, messages, a 429, a click, a command, a dropped connection and resume)
//! and when every request fails. (Serenity's `Http` holds the token; the adapter never prints
//! it with `Debug`.)
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::{ChannelAdapter, ChannelContext, OutboundAction, Secret};
use boxedclaw_discord::{DiscordChannel, DiscordSettings};
use boxedclaw_protocol::ids::{ConversationKey, Platform};
use common::{ALICE, Harness, WAIT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "MTEwMDAw.CANARY-discord-token.never-printed";

#[tokio::test(flavor = "multi_thread")]
async fn the_token_reaches_no_log_line_and_no_error() {
    let logs = boxedclaw_channels::fake::capture_logs();
    let mut errors = Vec::new();

    // A whole session against the fake.
    let mut h = Harness::start(TOKEN).await;
    tracing::info!(adapter = ?h.adapter, "built");
    h.fake.dm(ALICE, "hello");
    let m = h.message().await;
    let channel = h.fake.dm_channel(ALICE).unwrap();
    h.fake
        .rate_limit_next(&format!("POST /api/v10/channels/{channel}/messages"), 0.2);
    h.deliver(OutboundAction::Post {
        conversation: m.conversation.clone(),
        text: "hi".into(),
    })
    .await
    .unwrap();
    h.fake
        .click(ALICE, channel, h.fake.messages(channel)[0].id, "forged");
    let used = h.fake.slash(ALICE, None, 0, "/status");
    h.next().await;
    h.deliver(OutboundAction::Notice {
        conversation: m.conversation.clone(),
        user: Some(m.user.clone()),
        text: "ok".into(),
    })
    .await
    .unwrap();
    assert!(h.fake.original_response(used).unwrap().edited);
    h.fake.drop_connection();
    h.fake
        .wait_until(WAIT, "a resume", |f| {
            (!f.resumes().is_empty()).then_some(())
        })
        .await;
    h.fake.dm(ALICE, "again");
    h.message().await;
    let gone = ConversationKey::new(Platform::Discord, None, "42", None).unwrap();
    if let Err(e) = h
        .deliver(OutboundAction::Post {
            conversation: gone,
            text: "to an unknown channel".into(),
        })
        .await
    {
        errors.push(e.to_string());
    }
    h.stop().await;

    // Nothing listens on port 1: every request fails with a network error.
    let settings = DiscordSettings::new(
        Arc::new(Secret::new(TOKEN.to_owned())),
        Some("http://127.0.0.1:1".to_owned()),
    );
    let adapter = DiscordChannel::new(settings).unwrap();
    tracing::info!(adapter = ?adapter, "built");
    let (tx, _rx) = mpsc::channel(1);
    let ctx = ChannelContext {
        inbound: tx,
        shutdown: CancellationToken::new(),
        ready: CancellationToken::new(),
    };
    let running = tokio::spawn(adapter.clone().run(ctx.clone()));
    let conversation = ConversationKey::new(Platform::Discord, None, "1", None).unwrap();
    let err = adapter
        .deliver(OutboundAction::Post {
            conversation,
            text: "hello".into(),
        })
        .await
        .unwrap_err();
    errors.push(err.to_string());
    // Long enough for the identity request to fail and be retried (and logged) twice.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    ctx.shutdown.cancel();
    running.await.unwrap().unwrap();

    let logs = logs.text();
    for expected in [
        "identity request failed",
        "rate limited; waiting",
        "gateway session resumed",
    ] {
        assert!(logs.contains(expected), "{expected:?} is logged");
    }
    assert!(
        logs.len() > 10_000,
        "TRACE logging was on: {} bytes",
        logs.len()
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (what, text) in
        std::iter::once(("logs", logs.as_str())).chain(errors.iter().map(|e| ("error", e.as_str())))
    {
        assert!(!text.contains("CANARY"), "token in {what}: {text}");
        assert!(!text.contains("MTEwMDAw"), "token in {what}: {text}");
    }
    // Interaction tokens (short-lived, but enough to answer as the bot) stay out too.
    assert!(
        !logs.contains("fake-token"),
        "an interaction token was logged"
    );
}
