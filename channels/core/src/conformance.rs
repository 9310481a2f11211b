//! The shared conformance suite every chat adapter passes (`docs/specs/channel-adapter.md`).
//!
//! An adapter's tests start a fake of its platform (a server speaking the platform's real wire
//! format on `127.0.0.1:0`), build the adapter pointed at it, implement [`PlatformFake`] for
//! the fake and call [`check_adapter`]. The suite drives the adapter only through the
//! [`ChannelAdapter`] trait and the fake, so it checks what users see, not how the adapter
//! does it.
#![allow(clippy::disallowed_methods)] // tokio::spawn: the suite runs the adapter like the gateway does.

use std::sync::Arc;
use std::time::Duration;

use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, UserRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{BoxFuture, ChannelAdapter, ChannelContext, InboundEvent, OutboundAction};

/// How long the suite waits for any one thing to happen.
const WAIT: Duration = Duration::from_secs(20);

/// One message as the platform would show it to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The platform's id of the message (edits keep it).
    pub id: String,
    /// Its text as displayed (no markup is interpreted by the suite).
    pub text: String,
    /// Labels of the buttons still attached to it.
    pub buttons: Vec<String>,
}

/// What the suite needs from a platform fake.
pub trait PlatformFake: Send + Sync {
    /// A user id the platform would issue, distinct for distinct `n`.
    fn user_id(&self, n: u32) -> String;
    /// Makes user `user` send a direct message `text` to the bot.
    fn direct_message<'a>(&'a self, user: &'a str, text: &'a str) -> BoxFuture<'a, ()>;
    /// Every message the bot posted in `conversation`, in the order posted, as currently
    /// shown (after edits); users' own messages are not included.
    fn shown<'a>(&'a self, conversation: &'a ConversationKey) -> BoxFuture<'a, Vec<Shown>>;
    /// Makes `user` click the Approve (or Deny) button of the message showing `approval`.
    /// Panics if no such button is shown.
    fn click<'a>(
        &'a self,
        conversation: &'a ConversationKey,
        approval: &'a ApprovalId,
        user: &'a str,
        approve: bool,
    ) -> BoxFuture<'a, ()>;
}

/// Runs the suite: readiness, conversation mapping, chunking, approvals with buttons,
/// resolution, notices and shutdown. Panics, naming the rule, on the first violation.
pub async fn check_adapter(adapter: Arc<dyn ChannelAdapter>, fake: &dyn PlatformFake) {
    let caps = adapter.capabilities();
    let platform = adapter.platform();
    let (tx, mut rx) = mpsc::channel(64);
    let ctx = ChannelContext {
        inbound: tx,
        shutdown: CancellationToken::new(),
        ready: CancellationToken::new(),
    };
    let running = tokio::spawn(adapter.clone().run(ctx.clone()));
    tokio::time::timeout(WAIT, ctx.ready.cancelled())
        .await
        .expect("MUST signal ready once connected");

    // Mapping: DMs are per user, stable per user, and carry the verified sender.
    let (alice, bob) = (fake.user_id(1), fake.user_id(2));
    fake.direct_message(&alice, "hello from alice").await;
    let a = next_message(&mut rx).await;
    fake.direct_message(&bob, "hello from bob").await;
    let b = next_message(&mut rx).await;
    fake.direct_message(&alice, "alice again").await;
    let a2 = next_message(&mut rx).await;
    assert_eq!(
        a.text, "hello from alice",
        "MUST pass the text through unchanged"
    );
    assert_eq!(
        a.user.to_string(),
        format!("{platform}:{alice}"),
        "MUST verify the sender"
    );
    assert_eq!(a.conversation.platform, platform);
    assert_ne!(
        a.conversation, b.conversation,
        "MUST give each user's DM its own conversation"
    );
    assert_eq!(
        a.conversation, a2.conversation,
        "MUST map one user's DMs to one conversation"
    );
    assert_ne!(a.id, a2.id, "MUST give distinct events distinct ids");
    let conv = a.conversation.clone();

    // Chunking: nothing lost, nothing over the limit, multi-byte text intact.
    let long: String = "Grüße, 世界! 🦀 ".repeat(caps.max_text_len / 7 + 3);
    deliver(
        &*adapter,
        OutboundAction::Post {
            conversation: conv.clone(),
            text: long.clone(),
        },
    )
    .await;
    let shown = wait_shown(
        fake,
        &conv,
        |s| s.len() >= 2,
        "a long reply split in pieces",
    )
    .await;
    let pieces: Vec<&Shown> = shown.iter().collect();
    assert!(
        pieces
            .iter()
            .all(|s| s.text.chars().count() <= caps.max_text_len),
        "MUST keep every piece within max_text_len"
    );
    let joined: String = pieces.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        joined, long,
        "MUST deliver every character of a long reply, in order"
    );

    // Approvals: the exact action shown, with buttons, as plain text.
    let approval = ApprovalId::new("c0ffee000001".to_owned()).expect("valid id");
    let action = r#"shell: {"command":"echo <b>hi</b> *x* _y_ `z` [l](http://e.x) \u{202E}"}"#;
    let requester: UserRef = a.user.clone();
    deliver(
        &*adapter,
        OutboundAction::RequestApproval(ApprovalPrompt {
            conversation: conv.clone(),
            approval: approval.clone(),
            requester: requester.clone(),
            action: action.to_owned(),
            reason: "because".to_owned(),
            expires_in_secs: 600,
        }),
    )
    .await;
    let prompt = wait_shown(
        fake,
        &conv,
        |s| s.iter().any(|m| m.text.contains(action)),
        "the approval prompt",
    )
    .await
    .into_iter()
    .find(|m| m.text.contains(action))
    .expect("prompt present");
    if caps.buttons {
        assert_eq!(
            prompt.buttons.len(),
            2,
            "MUST show Approve and Deny buttons"
        );
        fake.click(&conv, &approval, &alice, true).await;
        match next_event(&mut rx).await {
            InboundEvent::ApprovalDecision(d) => {
                assert_eq!(
                    d.conversation, conv,
                    "MUST name the clicked message's conversation"
                );
                assert_eq!(d.approval, approval);
                assert_eq!(d.user, requester, "MUST verify the clicker");
                assert!(d.approve);
            }
            other => panic!("a click MUST become an ApprovalDecision, got {other:?}"),
        }
    }
    deliver(
        &*adapter,
        OutboundAction::ResolveApproval {
            conversation: conv.clone(),
            approval: approval.clone(),
            outcome: ApprovalOutcome::Approved,
            by: Some(requester.clone()),
        },
    )
    .await;
    let resolved = wait_shown(
        fake,
        &conv,
        |s| {
            s.iter().any(|m| {
                m.text.contains(approval.as_str())
                    && m.text.contains("approved")
                    && m.text.contains(&requester.to_string())
                    && m.buttons.is_empty()
            })
        },
        "the resolved prompt naming the outcome and the decider, without buttons",
    )
    .await;
    assert!(
        resolved.iter().all(|m| m.buttons.is_empty()),
        "MUST remove the buttons of a resolved approval"
    );

    // Notices reach the conversation.
    deliver(
        &*adapter,
        OutboundAction::Notice {
            conversation: conv.clone(),
            user: None,
            text: "a notice".into(),
        },
    )
    .await;
    wait_shown(
        fake,
        &conv,
        |s| s.iter().any(|m| m.text.contains("a notice")),
        "a notice",
    )
    .await;

    // Shutdown ends intake promptly.
    ctx.shutdown.cancel();
    let ended = tokio::time::timeout(WAIT, running)
        .await
        .expect("MUST return from run soon after shutdown")
        .expect("run must not panic");
    assert!(ended.is_ok(), "MUST end cleanly on shutdown: {ended:?}");
}

async fn deliver(adapter: &dyn ChannelAdapter, action: OutboundAction) {
    tokio::time::timeout(WAIT, adapter.deliver(action))
        .await
        .expect("deliver MUST finish")
        .expect("deliver to a healthy platform MUST succeed");
}

async fn next_event(rx: &mut mpsc::Receiver<InboundEvent>) -> InboundEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an inbound event in time")
        .expect("intake open")
}

async fn next_message(
    rx: &mut mpsc::Receiver<InboundEvent>,
) -> boxedclaw_protocol::channel::InboundMessage {
    match next_event(rx).await {
        InboundEvent::Message(m) => m,
        other => panic!("a direct message MUST become InboundEvent::Message, got {other:?}"),
    }
}

async fn wait_shown(
    fake: &dyn PlatformFake,
    conv: &ConversationKey,
    done: impl Fn(&[Shown]) -> bool,
    what: &str,
) -> Vec<Shown> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let shown = fake.shown(conv).await;
        if done(&shown) {
            return shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; shown: {shown:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
