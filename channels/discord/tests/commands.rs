//! Admin commands on Discord: `/boxedclaw` is registered at start; a use of it is answered at
//! once with a deferred ephemeral response, forwarded as a command, and the gateway's answer
//! edits that response (seen by the user alone). `/boxedclaw approve <id>` is a decision, and
//! its response shows the outcome.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use boxedclaw_channels::{InboundEvent, OutboundAction};
use boxedclaw_discord::fake::FakeDiscord;
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::ApprovalId;
use common::{ALICE, CHANNEL, GUILD, Harness, guild};

const TOKEN: &str = "commands.discord.token";

#[tokio::test(flavor = "multi_thread")]
async fn a_slash_command_is_deferred_ephemerally_and_answered_by_an_edit() {
    let mut h = Harness::start(TOKEN).await;
    let commands = h.fake.commands();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0]["name"], "boxedclaw");
    assert_eq!(commands[0]["options"][0]["name"], "command");
    assert!(h.fake.calls().iter().any(|c| c.route()
        == format!(
            "PUT /api/v10/applications/{}/commands",
            FakeDiscord::APPLICATION_ID
        )));

    let used = h.fake.slash(ALICE, Some(GUILD), CHANNEL, "/status");
    let InboundEvent::Command(m) = h.next().await else {
        panic!("a slash command becomes a command")
    };
    assert_eq!(m.text, "/status");
    assert_eq!(m.user.to_string(), format!("discord:{ALICE}"));
    assert_eq!(m.conversation, guild(GUILD, CHANNEL, None));
    assert_eq!(m.id, format!("discord-interaction-{used}"));
    let answers = h.fake.interaction_responses();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].kind, 5, "deferred: the user sees 'thinking…'");
    assert_eq!(answers[0].data["flags"], 64, "ephemeral");
    assert!(answers[0].after < Duration::from_secs(1));

    h.deliver(OutboundAction::Notice {
        conversation: m.conversation.clone(),
        user: Some(m.user.clone()),
        text: "2 agents running; *none* idle".into(),
    })
    .await
    .unwrap();
    let answer = h.fake.original_response(used).unwrap();
    assert_eq!(answer.text, "2 agents running; *none* idle");
    assert!(answer.edited);
    assert_eq!(answer.flags & 64, 64, "still only for Alice");
    assert!(
        h.fake.messages(CHANNEL).is_empty(),
        "nothing in the channel"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn approve_by_command_is_a_decision_answered_with_the_outcome() {
    let mut h = Harness::start(TOKEN).await;
    h.fake.dm(ALICE, "hi");
    let m = h.message().await;
    let id = ApprovalId::new("c0ffee0000aa".to_owned()).unwrap();
    h.deliver(OutboundAction::RequestApproval(ApprovalPrompt {
        conversation: m.conversation.clone(),
        approval: id.clone(),
        requester: m.user.clone(),
        action: "shell: ls".into(),
        reason: "look".into(),
        expires_in_secs: 600,
    }))
    .await
    .unwrap();
    let used = h.fake.slash(ALICE, None, 0, &format!("/approve {id}"));
    let InboundEvent::ApprovalDecision(d) = h.next().await else {
        panic!("/boxedclaw approve <id> is a decision")
    };
    assert_eq!(
        (d.conversation.clone(), d.approval.clone(), d.approve),
        (m.conversation.clone(), id.clone(), true)
    );
    h.deliver(OutboundAction::ResolveApproval {
        conversation: m.conversation.clone(),
        approval: id.clone(),
        outcome: ApprovalOutcome::Approved,
        by: Some(d.user.clone()),
    })
    .await
    .unwrap();
    let answer = h.fake.original_response(used).unwrap();
    assert!(
        answer
            .text
            .contains(&format!("approved by discord:{ALICE}")),
        "{}",
        answer.text
    );
    let dm = h.fake.dm_channel(ALICE).unwrap();
    let prompt = &h.fake.messages(dm)[0];
    assert!(prompt.buttons.is_empty());
    assert!(prompt.text.contains("approved by"));
    h.stop().await;
}
