//! Reconnects: after a dropped gateway connection serenity resumes the session (no new
//! Identify), Discord replays what was missed, and every event arrives exactly once, also
//! when the server re-delivers events the adapter already handed over.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ALICE, BOB, Harness, WAIT};

const TOKEN: &str = "reconnect.discord.token";

/// Texts of the messages arriving within `within`.
async fn texts_within(h: &mut Harness, within: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, h.rx.recv()).await {
        match e {
            boxedclaw_channels::InboundEvent::Message(m) => out.push(m.text),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_connection_resumes_without_losing_or_repeating_events() {
    let mut h = Harness::start(TOKEN).await;
    h.fake.dm(ALICE, "before");
    assert_eq!(h.message().await.text, "before");

    h.fake.drop_connection();
    // Injected while the connection is down: kept by Discord, replayed on resume.
    h.fake.dm(ALICE, "during");
    h.fake.dm(BOB, "during, from bob");
    h.fake
        .wait_until(WAIT, "a resumed connection", |f| {
            (f.connected() && !f.resumes().is_empty()).then_some(())
        })
        .await;
    h.fake.dm(ALICE, "after");
    let got = texts_within(&mut h, Duration::from_secs(2)).await;
    assert_eq!(
        got,
        ["during", "during, from bob", "after"],
        "each exactly once, in order"
    );
    assert_eq!(
        h.fake.identifies().len(),
        1,
        "resumed, not identified again"
    );
    let resumed = &h.fake.resumes()[0];
    assert!(
        resumed.session_id.starts_with("fake-session-"),
        "{resumed:?}"
    );
    assert!(
        resumed.seq >= 2,
        "the client resumed after what it had seen: {resumed:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn re_delivered_events_are_dropped() {
    let mut h = Harness::start(TOKEN).await;
    h.fake.dm(ALICE, "one");
    h.fake.dm(ALICE, "two");
    assert_eq!(
        texts_within(&mut h, Duration::from_millis(700)).await,
        ["one", "two"]
    );
    // The next resume replays READY and both messages again.
    h.fake.replay_on_resume(10);
    h.fake.request_reconnect();
    h.fake
        .wait_until(WAIT, "a resumed connection", |f| {
            (f.connected() && !f.resumes().is_empty()).then_some(())
        })
        .await;
    assert!(h.fake.resumes()[0].replayed >= 3, "{:?}", h.fake.resumes());
    h.fake.dm(ALICE, "three");
    assert_eq!(
        texts_within(&mut h, Duration::from_secs(2)).await,
        ["three"]
    );
    assert_eq!(h.fake.identifies().len(), 1);
    h.stop().await;
}
