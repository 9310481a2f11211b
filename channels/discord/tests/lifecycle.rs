//! Start and stop: what the adapter asks Discord for at start, the intents it identifies with,
//! and a refused token ending `run` with `ChannelError::Auth` instead of retrying forever.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::sync::Arc;

use boxedclaw_channels::{ChannelAdapter, ChannelContext, ChannelError, Secret};
use boxedclaw_discord::fake::FakeDiscord;
use boxedclaw_discord::{DiscordChannel, DiscordSettings};
use common::{Harness, WAIT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "lifecycle.discord.token";

#[tokio::test(flavor = "multi_thread")]
async fn start_asks_for_identity_gateway_and_commands_with_the_needed_intents() {
    let h = Harness::start(TOKEN).await;
    let routes: Vec<String> = h.fake.calls().iter().map(|c| c.route()).collect();
    assert_eq!(
        routes,
        [
            "GET /api/v10/users/@me".to_owned(),
            "GET /api/v10/gateway".to_owned(),
            // serenity's client builder asks again
            "GET /api/v10/gateway".to_owned(),
            format!(
                "PUT /api/v10/applications/{}/commands",
                FakeDiscord::APPLICATION_ID
            ),
        ]
    );
    // GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT
    assert_eq!(h.fake.identifies(), [(1 << 9) | (1 << 12) | (1 << 15)]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_ends_run_with_an_auth_error() {
    let fake = FakeDiscord::start(TOKEN).await;
    let settings = DiscordSettings::new(
        Arc::new(Secret::new("not.the.token".to_owned())),
        Some(fake.api_url()),
    );
    let adapter = DiscordChannel::new(settings).unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let ctx = ChannelContext {
        inbound: tx,
        shutdown: CancellationToken::new(),
        ready: CancellationToken::new(),
    };
    let ended = tokio::time::timeout(WAIT, adapter.run(ctx.clone()))
        .await
        .expect("run gives up on a refused token");
    assert!(matches!(ended, Err(ChannelError::Auth(_))), "{ended:?}");
    assert!(!ctx.ready.is_cancelled());
    assert!(
        fake.identifies().is_empty(),
        "no gateway connection was tried"
    );
}

#[test]
fn an_empty_token_or_a_bad_url_is_refused_at_setup() {
    let token = || Arc::new(Secret::new("t".to_owned()));
    assert!(
        DiscordChannel::new(DiscordSettings::new(
            Arc::new(Secret::new(" ".into())),
            None
        ))
        .is_err()
    );
    assert!(
        DiscordChannel::new(DiscordSettings::new(token(), Some("127.0.0.1:8080".into()))).is_err()
    );
    let ok = DiscordChannel::new(DiscordSettings::new(token(), None)).unwrap();
    let caps = ok.capabilities();
    assert!(caps.buttons && caps.threads && caps.edits && caps.ephemeral);
    assert_eq!(caps.max_text_len, 2000);
}
