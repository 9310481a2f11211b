//! Delivery details against the fake Discord: agent text never pings or formats, a 429 is
//! waited out and the message delivered once, a long wait goes back to the gateway and the
//! retried reply does not repeat pieces, progress edits one message at a bounded rate, and the
//! typing indicator goes to the conversation's thread.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use boxedclaw_channels::{ChannelError, OutboundAction};
use boxedclaw_discord::MAX_TEXT_LEN;
use boxedclaw_protocol::ids::ConversationKey;
use common::{ALICE, CHANNEL, GUILD, Harness, mention, texts};
use serde_json::json;

const TOKEN: &str = "delivery.discord.token";

async fn dm_conversation(h: &mut Harness) -> (ConversationKey, u64) {
    h.fake.dm(ALICE, "hi");
    let m = h.message().await;
    (m.conversation, h.fake.dm_channel(ALICE).unwrap())
}

/// `content` without its escapes (each backslash and the character after it).
fn without_escapes(content: &str) -> String {
    let mut out = String::new();
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

fn post(conversation: &ConversationKey, text: &str) -> OutboundAction {
    OutboundAction::Post {
        conversation: conversation.clone(),
        text: text.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_text_never_pings_formats_or_unfurls() {
    let mut h = Harness::start(TOKEN).await;
    let (conv, channel) = dm_conversation(&mut h).await;
    let text = "@everyone @here look <@123> <@&4> **now** https://e.x/a_b";
    h.deliver(post(&conv, text)).await.unwrap();
    h.deliver(OutboundAction::Progress {
        conversation: conv.clone(),
        text: "@here working".into(),
    })
    .await
    .unwrap();
    h.deliver(OutboundAction::Notice {
        conversation: conv.clone(),
        user: None,
        text: "<@123> notice".into(),
    })
    .await
    .unwrap();
    let shown = h.fake.messages(channel);
    assert_eq!(shown[0].text, text, "shown exactly as written");
    for m in &shown {
        assert_eq!(m.allowed_mentions, Some(json!({ "parse": [] })), "{m:?}");
        assert_eq!(m.flags & 4, 4, "embeds suppressed: {m:?}");
        // What is left when every backslash escape is taken out: no mention or markup.
        let bare = without_escapes(&m.content);
        for raw in ["@everyone", "@here", "<@", "*"] {
            assert!(!bare.contains(raw), "{raw} sent unescaped: {}", m.content);
        }
    }
    // The URL stays a link: sent as is.
    assert!(shown[0].content.contains("https://e.x/a_b"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_message_is_delivered_once_after_the_wait() {
    let mut h = Harness::start(TOKEN).await;
    let (conv, channel) = dm_conversation(&mut h).await;
    let route = format!("POST /api/v10/channels/{channel}/messages");
    h.fake.rate_limit_next(&route, 1.2);
    let started = Instant::now();
    h.deliver(post(&conv, "hello once")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(texts(&h.fake.messages(channel)), ["hello once"]);
    let attempts: Vec<bool> = h
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.route() == route)
        .map(|c| c.rejected)
        .collect();
    assert_eq!(
        attempts,
        [true, false],
        "the same request, sent again after the wait"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_wait_goes_back_to_the_gateway_and_the_retry_does_not_repeat_pieces() {
    let mut h = Harness::start(TOKEN).await;
    let (conv, channel) = dm_conversation(&mut h).await;
    let text = "paragraph. ".repeat(MAX_TEXT_LEN * 3 / 11);
    let route = format!("POST /api/v10/channels/{channel}/messages");
    // The second piece is refused with a wait too long to sit out inside one delivery.
    h.fake.rate_limit_after(&route, 1, 600.0);
    match h.deliver(post(&conv, &text)).await {
        Err(ChannelError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(600));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(
        h.fake.messages(channel).len(),
        1,
        "the first piece was shown"
    );
    h.deliver(post(&conv, &text)).await.unwrap();
    let shown = texts(&h.fake.messages(channel));
    assert!(shown.len() >= 3, "{}", shown.len());
    assert!(shown.iter().all(|s| s.chars().count() <= MAX_TEXT_LEN));
    assert_eq!(shown.concat(), text, "every piece once, in order");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_edits_one_message_at_a_bounded_rate() {
    let mut h =
        Harness::start_with(TOKEN, |s| s.progress_interval = Duration::from_millis(400)).await;
    let (conv, channel) = dm_conversation(&mut h).await;
    let progress = |text: &str| OutboundAction::Progress {
        conversation: conv.clone(),
        text: text.to_owned(),
    };
    for i in 0..5 {
        h.deliver(progress(&format!("step {i}"))).await.unwrap();
    }
    assert_eq!(h.fake.messages(channel).len(), 1, "one progress message");
    assert!(
        h.fake.calls_to("PATCH /api/v10/channels").is_empty(),
        "updates within the interval are dropped"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    h.deliver(progress("step 5")).await.unwrap();
    let shown = h.fake.messages(channel);
    assert_eq!(shown.len(), 1, "edited in place");
    assert_eq!(shown[0].text, "⏳ step 5");
    // The reply ends the turn; the next turn's progress is a new message.
    h.deliver(post(&conv, "done")).await.unwrap();
    h.deliver(progress("next turn")).await.unwrap();
    assert_eq!(
        texts(&h.fake.messages(channel)),
        ["⏳ step 5", "done", "⏳ next turn"]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typing_shows_in_the_conversations_thread() {
    let mut h = Harness::start(TOKEN).await;
    let asked = h
        .fake
        .guild_message(GUILD, CHANNEL, ALICE, &format!("{} hi", mention()));
    let m = h.message().await;
    let thread = h.fake.thread_of(asked).unwrap();
    h.deliver(OutboundAction::Typing {
        conversation: m.conversation,
    })
    .await
    .unwrap();
    assert_eq!(
        h.fake
            .calls_to(&format!("POST /api/v10/channels/{thread}/typing"))
            .len(),
        1
    );
    assert!(
        h.fake
            .calls_to(&format!("POST /api/v10/channels/{CHANNEL}/typing"))
            .is_empty()
    );
    h.stop().await;
}
