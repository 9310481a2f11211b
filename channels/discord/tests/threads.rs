//! Where conversations live on Discord: a mention in a channel starts a thread and the reply
//! goes there, follow-ups in the thread stay in that conversation, chatter elsewhere never
//! reaches the agent, and each user's DMs are their own conversation.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use boxedclaw_channels::OutboundAction;
use common::{ALICE, BOB, CHANNEL, GUILD, Harness, dm, guild, mention, texts};

const TOKEN: &str = "threads.discord.token";

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_starts_a_thread_and_the_conversation_stays_in_it() {
    let mut h = Harness::start(TOKEN).await;
    let asked = h.fake.guild_message(
        GUILD,
        CHANNEL,
        ALICE,
        &format!("{} please look at the *build*", mention()),
    );
    let m = h.message().await;
    let thread = h
        .fake
        .thread_of(asked)
        .expect("a thread started from the message");
    assert_eq!(m.conversation, guild(GUILD, CHANNEL, Some(thread)));
    assert_eq!(
        m.text, "please look at the *build*",
        "only the mention is removed"
    );
    assert_eq!(m.user.to_string(), format!("discord:{ALICE}"));
    assert_eq!(m.id, format!("discord-message-{asked}"));
    let started = h.fake.calls_to("/threads");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["name"], "please look at the *build*");

    // The reply goes to the thread, never to the channel's root.
    h.deliver(OutboundAction::Post {
        conversation: m.conversation.clone(),
        text: "on it".into(),
    })
    .await
    .unwrap();
    assert_eq!(texts(&h.fake.messages(thread)), ["on it"]);
    assert!(h.fake.messages(CHANNEL).is_empty());

    // A follow-up in the thread, without a mention and from another user, is the same
    // conversation; the bot's own message (dispatched back to it) is not an event.
    h.fake
        .thread_message(GUILD, CHANNEL, thread, BOB, "and the tests, please");
    let follow = h.message().await;
    assert_eq!(follow.conversation, m.conversation);
    assert_eq!(follow.text, "and the tests, please");
    assert_eq!(follow.user.to_string(), format!("discord:{BOB}"));
    assert_eq!(h.fake.calls_to("/threads").len(), 1, "no second thread");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chatter_not_addressed_to_the_bot_is_ignored() {
    let mut h = Harness::start(TOKEN).await;
    let other_thread = 900_000_000_000_000_077;
    h.fake.guild_message(GUILD, CHANNEL, ALICE, "just chatting");
    h.fake
        .guild_message(GUILD, CHANNEL, ALICE, "<@123> talking to someone else");
    h.fake.thread_message(
        GUILD,
        CHANNEL,
        other_thread,
        BOB,
        "a thread the bot is not in",
    );
    h.nothing_within(Duration::from_millis(500)).await;
    assert!(h.fake.calls_to("/threads").is_empty());

    // Mentioned in a thread someone else started: that thread is the conversation (no new
    // thread), and from then on its messages reach the agent.
    h.fake.thread_message(
        GUILD,
        CHANNEL,
        other_thread,
        BOB,
        &format!("hey {} over here", mention()),
    );
    let m = h.message().await;
    assert_eq!(m.conversation, guild(GUILD, CHANNEL, Some(other_thread)));
    assert_eq!(m.text, "hey over here");
    h.fake
        .thread_message(GUILD, CHANNEL, other_thread, ALICE, "more context");
    assert_eq!(h.message().await.conversation, m.conversation);
    assert!(h.fake.calls_to("/threads").is_empty());

    // The same channel id in another guild is another conversation.
    h.fake
        .guild_message(GUILD + 1, CHANNEL + 1, ALICE, &format!("{} hi", mention()));
    let elsewhere = h.message().await;
    assert_eq!(
        elsewhere.conversation.tenant.as_deref(),
        Some(&*(GUILD + 1).to_string())
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_users_dms_are_their_own_conversation() {
    let mut h = Harness::start(TOKEN).await;
    h.fake.dm(ALICE, "hello from alice");
    let a = h.message().await;
    h.fake.dm(BOB, "/status is just text in a DM");
    let b = h.message().await;
    h.fake.dm(ALICE, "alice again");
    let a2 = h.message().await;
    let alice_dm = h.fake.dm_channel(ALICE).unwrap();
    assert_eq!(a.conversation, dm(alice_dm));
    assert_eq!(a2.conversation, a.conversation);
    assert_ne!(b.conversation, a.conversation);
    assert_eq!(
        b.text, "/status is just text in a DM",
        "only application commands are commands"
    );
    assert_ne!(a.id, a2.id);
    h.deliver(OutboundAction::Post {
        conversation: b.conversation.clone(),
        text: "hi bob".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        texts(&h.fake.messages(h.fake.dm_channel(BOB).unwrap())),
        ["hi bob"]
    );
    assert!(h.fake.messages(alice_dm).is_empty());
    h.stop().await;
}
