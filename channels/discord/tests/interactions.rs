//! The HTTP interactions endpoint (security test T04): the adapter's router served on
//! 127.0.0.1:0, with the fake Discord POSTing clicks and commands to it, signed with the
//! application's Ed25519 key, as Discord does once an Interactions Endpoint URL is saved.
//! Requests whose signature does not verify over the exact bytes received (a flipped bit,
//! the same JSON re-serialized, another key, no headers) get 401 and reach nothing; a signed
//! PING gets `{"type":1}`; a signed click or command goes through the same code as one from
//! the websocket, with the first answer as the HTTP response.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use boxedclaw_channels::Secret;
use boxedclaw_channels::{InboundEvent, OutboundAction};
use boxedclaw_discord::fake::{EndpointAnswer, FakeDiscord};
use boxedclaw_discord::{
    DEFAULT_INTERACTIONS_PATH, DiscordChannel, DiscordSettings, InteractionsKey,
};
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey};
use common::{ALICE, BOB, CHANNEL, GUILD, Harness, WAIT, guild, mention};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

const TOKEN: &str = "interactions.discord.token";

/// The adapter configured with the fake application's public key, its router served on
/// 127.0.0.1:0, and the fake sending interactions there.
async fn start() -> Harness {
    let key = InteractionsKey::from_bytes(&FakeDiscord::interactions_public_key()).unwrap();
    let h = Harness::start_with(TOKEN, |s| s.interactions_public_key = Some(key)).await;
    let router = h.adapter.interactions_router().expect("a key is set");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    h.fake
        .use_interactions_endpoint(&format!("http://{addr}{DEFAULT_INTERACTIONS_PATH}"));
    h
}

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

/// The endpoint's answer to interaction `id`, once the fake has it.
async fn answer_to(h: &Harness, id: u64) -> EndpointAnswer {
    h.fake
        .wait_until(WAIT, "the endpoint's answer", |f| {
            f.endpoint_answers()
                .into_iter()
                .find(|a| a.interaction_id == Some(id))
        })
        .await
}

/// A thread conversation started by `ALICE`'s mention (on the websocket), with an approval
/// prompt in it; returns the conversation, the thread, the prompt's message id and the
/// `custom_id`s of its Approve and Deny buttons.
async fn prompt(
    h: &mut Harness,
    approval: &ApprovalId,
) -> (ConversationKey, u64, u64, [String; 2]) {
    let asked = h
        .fake
        .guild_message(GUILD, CHANNEL, ALICE, &format!("{} clean up", mention()));
    let m = h.message().await;
    let thread = h.fake.thread_of(asked).unwrap();
    h.deliver(OutboundAction::RequestApproval(ApprovalPrompt {
        conversation: m.conversation.clone(),
        approval: approval.clone(),
        requester: m.user,
        action: "shell: rm -rf /tmp/x".into(),
        reason: "cleaning up".into(),
        expires_in_secs: 600,
    }))
    .await
    .unwrap();
    let shown = h
        .fake
        .messages(thread)
        .into_iter()
        .find(|m| m.text.contains(approval.as_str()))
        .unwrap();
    let ids = [
        shown.buttons[0].custom_id.clone(),
        shown.buttons[1].custom_id.clone(),
    ];
    (m.conversation, thread, shown.id, ids)
}

fn ping() -> Vec<u8> {
    json!({
        "id": "1200000000000000001",
        "application_id": FakeDiscord::APPLICATION_ID.to_string(),
        "type": 1,
        "token": "cGluZw.probe",
        "version": 1,
        "user": { "id": "1200000000000000002", "username": "discord", "discriminator": "0",
                  "global_name": null, "avatar": null },
    })
    .to_string()
    .into_bytes()
}

/// `signature` with one bit flipped.
fn flipped(signature: &str) -> String {
    let mut raw = hex::decode(signature).unwrap();
    raw[17] ^= 0x08;
    hex::encode(raw)
}

#[tokio::test(flavor = "multi_thread")]
async fn pings_are_answered_and_unverified_requests_get_401() {
    let h = start().await;
    let body = ping();
    let ts = now();
    let good = FakeDiscord::sign(&ts, &body);

    let pong = h.fake.post_to_endpoint(&body, Some(&ts), Some(&good)).await;
    assert_eq!((pong.status, pong.body), (200, json!({ "type": 1 })));

    // Discord's probe: the same PING with a signature that does not verify.
    let probe = h
        .fake
        .post_to_endpoint(&body, Some(&ts), Some(&flipped(&good)))
        .await;
    assert_eq!(probe.status, 401);
    assert_eq!(probe.body, Value::Null, "nothing said about why");
    // The same JSON, re-serialized: other bytes, so the signature does not hold.
    let reserialized =
        serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    let r = h
        .fake
        .post_to_endpoint(&reserialized, Some(&ts), Some(&good))
        .await;
    assert_eq!(r.status, 401);
    // Signed by another key.
    let mut message = ts.as_bytes().to_vec();
    message.extend_from_slice(&body);
    let stranger = hex::encode(SigningKey::from_bytes(&[7u8; 32]).sign(&message).to_bytes());
    let r = h
        .fake
        .post_to_endpoint(&body, Some(&ts), Some(&stranger))
        .await;
    assert_eq!(r.status, 401);
    // No headers, or one of them missing.
    assert_eq!(h.fake.post_to_endpoint(&body, None, None).await.status, 401);
    assert_eq!(
        h.fake
            .post_to_endpoint(&body, None, Some(&good))
            .await
            .status,
        401
    );
    assert_eq!(
        h.fake.post_to_endpoint(&body, Some(&ts), None).await.status,
        401
    );
    // Too large: refused before it is read whole.
    let huge = vec![b' '; 64 * 1024 + 1];
    let sig = FakeDiscord::sign(&ts, &huge);
    assert_eq!(
        h.fake
            .post_to_endpoint(&huge, Some(&ts), Some(&sig))
            .await
            .status,
        413
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_click_is_deferred_in_the_http_answer_and_becomes_a_decision() {
    let mut h = start().await;
    let approval = ApprovalId::new("c0ffee0000d1".to_owned()).unwrap();
    let (conv, thread, message, [approve, deny]) = prompt(&mut h, &approval).await;

    // Bob clicks Deny: the fake POSTs it, signed, to the endpoint.
    let clicked = h.fake.click(BOB, thread, message, &deny);
    let answer = answer_to(&h, clicked).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({ "type": 6 }), "deferred update");
    assert!(answer.accepted, "taken as the interaction's answer");
    assert_eq!(h.fake.interaction_responses()[0].kind, 6);
    assert!(
        h.fake.calls_to("/callback").is_empty(),
        "answered in the HTTP response, not by a REST callback"
    );
    let InboundEvent::ApprovalDecision(d) = h.next().await else {
        panic!("a click becomes a decision")
    };
    assert_eq!(d.conversation, conv, "the clicked message's conversation");
    assert_eq!(d.user.to_string(), format!("discord:{BOB}"));
    assert_eq!(d.approval, approval);
    assert!(!d.approve);

    // The gateway refuses Bob's click: an answer only he sees, through the interaction.
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
    assert_eq!(followups[0].flags & 64, 64, "ephemeral");

    // Replays of that request: a flipped bit, the same JSON re-serialized, and the exact bytes
    // with their valid signature. None gets through.
    let ts = answer.timestamp.clone().unwrap();
    let good = FakeDiscord::sign(&ts, &answer.request);
    let bad_bit = h
        .fake
        .post_to_endpoint(&answer.request, Some(&ts), Some(&flipped(&good)))
        .await;
    assert_eq!(bad_bit.status, 401);
    let value: Value = serde_json::from_slice(&answer.request).unwrap();
    let reserialized = serde_json::to_vec_pretty(&value).unwrap();
    let r = h
        .fake
        .post_to_endpoint(&reserialized, Some(&ts), Some(&good))
        .await;
    assert_eq!(r.status, 401);
    let replay = h
        .fake
        .post_to_endpoint(&answer.request, Some(&ts), Some(&good))
        .await;
    assert_eq!(replay.status, 400, "a known interaction id: dropped");

    // A forged custom_id: refused to the clicker alone, and no event.
    let forged = h.fake.click(BOB, thread, message, "v1.forged.custom_id");
    let refusal = answer_to(&h, forged).await;
    assert_eq!(refusal.status, 200);
    assert_eq!(refusal.body["type"], 4);
    assert_eq!(refusal.body["data"]["flags"].as_u64().unwrap() & 64, 64);
    assert!(
        refusal.body["data"]["content"]
            .as_str()
            .unwrap()
            .contains("not valid here"),
        "{}",
        refusal.body
    );

    // Alice approves: the next event is hers, so nothing above produced one.
    let approved = h.fake.click(ALICE, thread, message, &approve);
    assert_eq!(answer_to(&h, approved).await.body, json!({ "type": 6 }));
    let InboundEvent::ApprovalDecision(d) = h.next().await else {
        panic!("a click becomes a decision")
    };
    assert_eq!(d.user.to_string(), format!("discord:{ALICE}"));
    assert!(d.approve);

    // Resolved: the prompt itself says so, without buttons.
    h.deliver(OutboundAction::ResolveApproval {
        conversation: conv.clone(),
        approval: approval.clone(),
        outcome: ApprovalOutcome::Approved,
        by: Some(d.user.clone()),
    })
    .await
    .unwrap();
    let resolved = h
        .fake
        .messages(thread)
        .into_iter()
        .find(|m| m.id == message)
        .unwrap();
    assert!(resolved.buttons.is_empty());
    assert!(
        resolved
            .text
            .contains(&format!("approved by discord:{ALICE}")),
        "{}",
        resolved.text
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_command_is_deferred_ephemerally_and_answered_by_an_edit() {
    let mut h = start().await;
    let used = h.fake.slash(ALICE, Some(GUILD), CHANNEL, "/status");
    let answer = answer_to(&h, used).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({ "type": 5, "data": { "flags": 64 } }));
    assert!(answer.accepted);
    let InboundEvent::Command(m) = h.next().await else {
        panic!("a slash command becomes a command")
    };
    assert_eq!(m.text, "/status");
    assert_eq!(m.conversation, guild(GUILD, CHANNEL, None));
    assert_eq!(m.id, format!("discord-interaction-{used}"));

    h.deliver(OutboundAction::Notice {
        conversation: m.conversation.clone(),
        user: Some(m.user.clone()),
        text: "2 agents running".into(),
    })
    .await
    .unwrap();
    let shown = h.fake.original_response(used).unwrap();
    assert_eq!(shown.text, "2 agents running");
    assert!(shown.edited);
    assert_eq!(shown.flags & 64, 64, "only for Alice");
    assert!(
        h.fake.messages(CHANNEL).is_empty(),
        "nothing in the channel"
    );
    h.stop().await;
}

#[test]
fn the_endpoint_exists_only_with_a_key_and_a_usable_path() {
    let settings = || {
        DiscordSettings::new(
            std::sync::Arc::new(Secret::new(TOKEN.to_owned())),
            Some("http://127.0.0.1:1".to_owned()),
        )
    };
    let without = DiscordChannel::new(settings()).unwrap();
    assert!(without.interactions_router().is_none(), "websocket only");
    let key = InteractionsKey::from_bytes(&FakeDiscord::interactions_public_key()).unwrap();
    let mut s = settings();
    s.interactions_public_key = Some(key);
    assert_eq!(s.interactions_path, DEFAULT_INTERACTIONS_PATH);
    assert!(
        DiscordChannel::new(s.clone())
            .unwrap()
            .interactions_router()
            .is_some()
    );
    s.interactions_path = "discord/{x}".into();
    assert!(
        DiscordChannel::new(s).is_err(),
        "refused at setup, not a panic in axum"
    );
    let hex = hex::encode(FakeDiscord::interactions_public_key());
    assert_eq!(hex.parse::<InteractionsKey>().unwrap(), key);
}
