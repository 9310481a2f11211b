//! The Discord adapter against the shared channel-adapter conformance suite, with the fake
//! Discord (REST + gateway websocket) on 127.0.0.1:0 standing in for Discord.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use boxedclaw_channels::Secret;
use boxedclaw_channels::conformance::check_adapter;
use boxedclaw_discord::fake::FakeDiscord;
use boxedclaw_discord::{DiscordChannel, DiscordSettings};

const TOKEN: &str = "conformance.discord.token";

#[tokio::test(flavor = "multi_thread")]
async fn discord_adapter_passes_the_conformance_suite() {
    let fake = FakeDiscord::start(TOKEN).await;
    let settings = DiscordSettings::new(
        Arc::new(Secret::new(TOKEN.to_owned())),
        Some(fake.api_url()),
    );
    let adapter = DiscordChannel::new(settings).unwrap();
    check_adapter(adapter, &*fake).await;
    // Everything the suite did went through Discord's real routes.
    assert!(
        !fake.calls().iter().any(|c| c.rejected),
        "{:#?}",
        fake.calls()
    );
    assert_eq!(fake.identifies().len(), 1);
}
