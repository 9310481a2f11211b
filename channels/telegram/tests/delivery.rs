//! Delivery details against the fake Bot API server: progress edits at a bounded rate, and a
//! long reply that fails midway resuming without repeating what was shown.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_channels::{ChannelAdapter, ChannelError, OutboundAction, Secret};
use boxedclaw_protocol::ids::{ConversationKey, Platform};
use boxedclaw_telegram::fake::FakeTelegram;
use boxedclaw_telegram::{MAX_TEXT_LEN, TelegramChannel, TelegramSettings};

const TOKEN: &str = "5151:delivery-token";

async fn adapter(progress_interval: Duration) -> (Arc<FakeTelegram>, Arc<TelegramChannel>) {
    let fake = FakeTelegram::start(TOKEN).await;
    let mut settings = TelegramSettings::new(
        Arc::new(Secret::new(TOKEN.to_owned())),
        Some(fake.api_url()),
    );
    settings.progress_interval = progress_interval;
    // The chat exists once its user has written to the bot.
    fake.private_message(1001, "hi");
    (fake, TelegramChannel::new(settings).unwrap())
}

fn dm() -> ConversationKey {
    ConversationKey::new(Platform::Telegram, None, "1001", None).unwrap()
}

fn progress(text: &str) -> OutboundAction {
    OutboundAction::Progress {
        conversation: dm(),
        text: text.to_owned(),
    }
}

#[tokio::test]
async fn progress_edits_one_message_at_a_bounded_rate() {
    let (fake, tg) = adapter(Duration::from_millis(400)).await;
    for i in 0..5 {
        tg.deliver(progress(&format!("step {i}"))).await.unwrap();
    }
    assert_eq!(fake.chat(1001).len(), 1, "one progress message");
    assert!(
        fake.calls_to("editMessageText").is_empty(),
        "updates within the interval are dropped, not sent"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    tg.deliver(progress("step 5")).await.unwrap();
    let shown = fake.chat(1001);
    assert_eq!(shown.len(), 1, "edited in place: {shown:?}");
    assert!(shown[0].text.contains("step 5"), "{shown:?}");
    assert_eq!(fake.calls_to("editMessageText").len(), 1);
    // The reply ends the turn; the next turn's progress gets a new message.
    tg.deliver(OutboundAction::Post {
        conversation: dm(),
        text: "done".into(),
    })
    .await
    .unwrap();
    tg.deliver(progress("next turn")).await.unwrap();
    let texts: Vec<String> = fake.chat(1001).into_iter().map(|m| m.text).collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts[2].contains("next turn"), "{texts:?}");
}

#[tokio::test]
async fn a_reply_failing_midway_resumes_without_repeating_pieces() {
    let (fake, tg) = adapter(Duration::from_secs(2)).await;
    let text = "paragraph. ".repeat(MAX_TEXT_LEN * 3 / 11);
    let post = OutboundAction::Post {
        conversation: dm(),
        text: text.clone(),
    };
    // The second piece is refused with a wait too long to sit out inside one delivery: the
    // error goes back to the gateway, which retries the whole action later.
    fake.rate_limit_after("sendMessage", 1, 600);
    match tg.deliver(post.clone()).await {
        Err(ChannelError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(600));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(fake.chat(1001).len(), 1, "the first piece was shown");
    tg.deliver(post).await.unwrap();
    let shown: Vec<String> = fake.chat(1001).into_iter().map(|m| m.text).collect();
    assert!(shown.len() >= 3, "{}", shown.len());
    assert_eq!(shown.concat(), text, "every piece once, in order");
}
