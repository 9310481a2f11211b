//! Approvals on Discord: the prompt shows the exact action with two signed buttons; a click is
//! acknowledged at once (Discord's 3 s) and becomes a decision for the clicked message's
//! conversation and the clicker; the resolved prompt names outcome and decider without
//! buttons; a refused click gets an ephemeral answer; forged or foreign `custom_id`s are
//! refused before anything reaches the gateway.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use boxedclaw_channels::{InboundEvent, OutboundAction};
use boxedclaw_discord::fake::BotMessage;
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, UserRef};
use common::{ALICE, BOB, CHANNEL, GUILD, Harness, mention};

const TOKEN: &str = "approvals.discord.token";
const ACTION: &str = "shell: rm -rf **/tmp/x** `y` @everyone <@123> [l](http://e.x) # not a title";

fn approval(n: u8) -> ApprovalId {
    ApprovalId::new(format!("c0ffee00000{n}")).unwrap()
}

fn request(
    conversation: &ConversationKey,
    approval: &ApprovalId,
    requester: &UserRef,
) -> OutboundAction {
    OutboundAction::RequestApproval(ApprovalPrompt {
        conversation: conversation.clone(),
        approval: approval.clone(),
        requester: requester.clone(),
        action: ACTION.to_owned(),
        reason: "cleaning up".to_owned(),
        expires_in_secs: 600,
    })
}

/// The bot's prompt for `approval` in `channel`.
fn prompt(h: &Harness, channel: u64, approval: &ApprovalId) -> BotMessage {
    h.fake
        .messages(channel)
        .into_iter()
        .find(|m| m.text.contains(approval.as_str()))
        .expect("the prompt is shown")
}

/// A thread conversation started by `ALICE`'s mention; returns it and its thread id.
async fn thread_conversation(h: &mut Harness) -> (ConversationKey, u64, UserRef) {
    let asked = h
        .fake
        .guild_message(GUILD, CHANNEL, ALICE, &format!("{} clean up", mention()));
    let m = h.message().await;
    (m.conversation, h.fake.thread_of(asked).unwrap(), m.user)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_click_is_acknowledged_at_once_and_becomes_a_decision() {
    let mut h = Harness::start(TOKEN).await;
    let (conv, thread, alice) = thread_conversation(&mut h).await;
    let id = approval(1);
    h.deliver(request(&conv, &id, &alice)).await.unwrap();
    let shown = prompt(&h, thread, &id);
    assert!(
        shown.text.contains(ACTION),
        "the exact action, shown literally: {}",
        shown.text
    );
    assert!(
        !shown.content.contains("**/tmp"),
        "no markup reaches Discord: {}",
        shown.content
    );
    let labels: Vec<&str> = shown.buttons.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["Approve", "Deny"]);
    assert!(
        shown
            .buttons
            .iter()
            .all(|b| b.custom_id.len() <= 100 && !b.custom_id.contains(&conv.channel))
    );

    // Bob (in the thread) clicks Deny.
    let clicked = h
        .fake
        .click(BOB, thread, shown.id, &shown.buttons[1].custom_id);
    let InboundEvent::ApprovalDecision(d) = h.next().await else {
        panic!("a click becomes a decision")
    };
    assert_eq!(d.conversation, conv, "the clicked message's conversation");
    assert_eq!(
        d.user.to_string(),
        format!("discord:{BOB}"),
        "the verified clicker"
    );
    assert_eq!(d.approval, id);
    assert!(!d.approve);
    // Acknowledged before the decision was handed over, well within Discord's 3 s.
    let answers = h.fake.interaction_responses();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].interaction_id, clicked);
    assert_eq!(answers[0].kind, 6, "deferred update: nothing shown yet");
    assert!(
        answers[0].after < Duration::from_secs(1),
        "{:?}",
        answers[0].after
    );

    // The gateway resolves it: the prompt says so, buttons gone, posted nowhere else.
    h.deliver(OutboundAction::ResolveApproval {
        conversation: conv.clone(),
        approval: id.clone(),
        outcome: ApprovalOutcome::Denied,
        by: Some(d.user.clone()),
    })
    .await
    .unwrap();
    let resolved = prompt(&h, thread, &id);
    assert_eq!(resolved.id, shown.id, "edited in place");
    assert!(resolved.buttons.is_empty());
    assert!(
        resolved.text.contains(&format!("denied by discord:{BOB}")),
        "{}",
        resolved.text
    );
    assert!(resolved.text.contains(ACTION));
    assert_eq!(h.fake.messages(thread).len(), 1, "the prompt, nothing more");
    assert!(h.fake.followups().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_click_gets_an_answer_only_the_clicker_sees() {
    let mut h = Harness::start(TOKEN).await;
    let (conv, thread, alice) = thread_conversation(&mut h).await;
    let id = approval(2);
    h.deliver(request(&conv, &id, &alice)).await.unwrap();
    let shown = prompt(&h, thread, &id);
    let clicked = h
        .fake
        .click(BOB, thread, shown.id, &shown.buttons[0].custom_id);
    let InboundEvent::ApprovalDecision(d) = h.next().await else {
        panic!("a click becomes a decision")
    };
    // Bob is neither the requester nor an approver: the gateway says so to him alone.
    h.deliver(OutboundAction::Notice {
        conversation: conv.clone(),
        user: Some(d.user.clone()),
        text: "You may not decide this approval.".into(),
    })
    .await
    .unwrap();
    let followups = h.fake.followups();
    assert_eq!(followups.len(), 1);
    assert_eq!(followups[0].interaction_id, clicked);
    assert_eq!(followups[0].text, "You may not decide this approval.");
    assert_eq!(followups[0].flags & 64, 64, "ephemeral");
    // Nothing changed in the thread: the prompt still has its buttons.
    assert_eq!(prompt(&h, thread, &id).buttons.len(), 2);
    assert_eq!(h.fake.messages(thread).len(), 1);

    // A notice for a user with no open interaction goes to the conversation.
    h.deliver(OutboundAction::Notice {
        conversation: conv.clone(),
        user: Some(alice.clone()),
        text: "FYI".into(),
    })
    .await
    .unwrap();
    assert!(h.fake.messages(thread).iter().any(|m| m.text == "FYI"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_foreign_custom_ids_are_refused() {
    let mut h = Harness::start(TOKEN).await;
    // Two conversations with a prompt each: Alice's DM and Bob's DM.
    h.fake.dm(ALICE, "hi");
    let a = h.message().await;
    h.fake.dm(BOB, "hi");
    let b = h.message().await;
    let (a_chan, b_chan) = (
        h.fake.dm_channel(ALICE).unwrap(),
        h.fake.dm_channel(BOB).unwrap(),
    );
    let (ida, idb) = (approval(3), approval(4));
    h.deliver(request(&a.conversation, &ida, &a.user))
        .await
        .unwrap();
    h.deliver(request(&b.conversation, &idb, &b.user))
        .await
        .unwrap();
    let (pa, pb) = (prompt(&h, a_chan, &ida), prompt(&h, b_chan, &idb));

    // Bob replays Alice's button on his own prompt; then plain forgeries.
    let forged = [
        pa.buttons[0].custom_id.clone(),
        format!("1a{}.0000000000000000", idb.as_str()),
        "approve:c0ffee000004".to_owned(),
        "x".repeat(100),
    ];
    let mut clicks = Vec::new();
    for data in &forged {
        clicks.push(h.fake.click(BOB, b_chan, pb.id, data));
    }
    h.nothing_within(Duration::from_millis(500)).await;
    let answers = h.fake.interaction_responses();
    assert_eq!(answers.len(), forged.len());
    for (answer, click) in answers.iter().zip(&clicks) {
        assert_eq!(answer.interaction_id, *click);
        assert_eq!(answer.kind, 4, "answered with a message");
        assert_eq!(answer.data["flags"].as_u64().unwrap() & 64, 64, "ephemeral");
        assert!(
            answer.data["content"]
                .as_str()
                .unwrap()
                .contains("not valid here")
        );
    }
    assert_eq!(prompt(&h, b_chan, &idb).buttons.len(), 2, "nothing changed");

    // Bob's own button still works.
    h.fake.click(BOB, b_chan, pb.id, &pb.buttons[0].custom_id);
    let InboundEvent::ApprovalDecision(d) = h.next().await else {
        panic!("a valid click becomes a decision")
    };
    assert_eq!((d.approval, d.conversation), (idb, b.conversation));
    h.stop().await;
}
