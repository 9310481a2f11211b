//! The web chat's routes, driven in process with `tower::ServiceExt::oneshot`: sessions,
//! posts becoming inbound events, the checks posts pass, and the per-session event streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// tokio::spawn: the tests run the adapter as the gateway does.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::http::{Request, Response, StatusCode, header};
use boxedclaw_channels::{ChannelAdapter, ChannelContext, InboundEvent, OutboundAction};
use boxedclaw_protocol::channel::{ApprovalOutcome, ApprovalPrompt};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use boxedclaw_web::{WebChannel, WebSettings, public_session_id};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(5);

struct Harness {
    channel: Arc<WebChannel>,
    router: Router,
    rx: mpsc::Receiver<InboundEvent>,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), boxedclaw_channels::ChannelError>>,
}

/// A channel with `run` started, as the gateway starts it.
async fn running(settings: WebSettings) -> Harness {
    let channel = WebChannel::new(settings);
    let (tx, rx) = mpsc::channel(16);
    let ctx = ChannelContext {
        inbound: tx,
        shutdown: CancellationToken::new(),
        ready: CancellationToken::new(),
    };
    let running = tokio::spawn(Arc::clone(&channel).run(ctx.clone()));
    tokio::time::timeout(WAIT, ctx.ready.cancelled())
        .await
        .expect("ready at once");
    Harness {
        router: channel.router(),
        channel,
        rx,
        shutdown: ctx.shutdown,
        running,
    }
}

async fn call(router: &Router, request: Request<Body>) -> Response<Body> {
    router.clone().oneshot(request).await.unwrap()
}

async fn json_body(response: Response<Body>) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn cookie_of(response: &Response<Body>) -> Option<String> {
    let v = response
        .headers()
        .get(header::SET_COOKIE)?
        .to_str()
        .unwrap();
    let (pair, attrs) = v.split_once(';').unwrap();
    assert_eq!(attrs.trim(), "Path=/; HttpOnly; SameSite=Strict");
    Some(pair.strip_prefix("boxedclaw_session=").unwrap().to_owned())
}

/// A new browser session: loads `/` and returns the session id from its cookie.
async fn new_session(router: &Router) -> String {
    let response = call(router, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    cookie_of(&response).expect("a new visitor gets a cookie")
}

fn post(
    path: &str,
    session: Option<&str>,
    content_type: Option<&str>,
    body: String,
) -> Request<Body> {
    let mut r = Request::post(path);
    if let Some(s) = session {
        r = r.header(header::COOKIE, format!("theme=dark; boxedclaw_session={s}"));
    }
    if let Some(ct) = content_type {
        r = r.header(header::CONTENT_TYPE, ct);
    }
    r.body(Body::from(body)).unwrap()
}

fn post_json(path: &str, session: &str, body: Value) -> Request<Body> {
    post(
        path,
        Some(session),
        Some("application/json"),
        body.to_string(),
    )
}

/// The conversation of the session whose cookie holds `session`.
fn conversation(session: &str) -> ConversationKey {
    ConversationKey::new(Platform::Web, None, &public_session_id(session), None).unwrap()
}

/// The user of the session whose cookie holds `session`.
fn user(session: &str) -> UserRef {
    UserRef::new(Platform::Web, &public_session_id(session)).unwrap()
}

async fn next_inbound(rx: &mut mpsc::Receiver<InboundEvent>) -> InboundEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an inbound event in time")
        .expect("intake open")
}

/// Reads Server-Sent Events from a response body.
struct Events {
    body: BodyDataStream,
    /// Bytes, not text: a chunk may end inside a multi-byte character.
    buf: Vec<u8>,
}

impl Events {
    async fn open(router: &Router, session: &str, last_event_id: Option<u64>) -> Self {
        let mut r = Request::get("/api/chat/events")
            .header(header::COOKIE, format!("boxedclaw_session={session}"));
        if let Some(id) = last_event_id {
            r = r.header("last-event-id", id.to_string());
        }
        let response = call(router, r.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Self {
            body: response.into_body().into_data_stream(),
            buf: Vec::new(),
        }
    }

    /// The next event as `(id, data)`, skipping keep-alive comments; `None` at the end.
    async fn next_within(&mut self, wait: Duration) -> Option<Option<(u64, Value)>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let frame = std::str::from_utf8(&frame).unwrap();
                let mut id = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse::<u64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str::<Value>(v).unwrap());
                    }
                }
                if let Some(data) = data {
                    let id = id.expect("every event has an id");
                    assert_eq!(data["seq"], json!(id), "seq matches the SSE id");
                    return Some(Some((id, data)));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()?;
            match chunk {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("stream error: {e}"),
                None => return Some(None),
            }
        }
    }

    async fn next(&mut self) -> (u64, Value) {
        self.next_within(WAIT)
            .await
            .expect("an event in time")
            .expect("the stream is open")
    }

    /// Asserts nothing arrives for a short while.
    async fn nothing(&mut self) {
        if let Some(ev) = self.next_within(Duration::from_millis(300)).await {
            panic!("unexpected event or end: {ev:?}");
        }
    }
}

fn post_action(session: &str, text: &str) -> OutboundAction {
    OutboundAction::Post {
        conversation: conversation(session),
        text: text.into(),
    }
}

#[tokio::test]
async fn a_new_visitor_gets_a_session_cookie_and_the_page() {
    let h = running(WebSettings::default()).await;
    let response = call(&h.router, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let session = cookie_of(&response).unwrap();
    assert_eq!(session.len(), 32);
    assert!(
        session
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{session}"
    );
    let html = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(
        std::str::from_utf8(&html)
            .unwrap()
            .contains("id=\"messages\"")
    );

    // Coming back with the cookie keeps the session.
    let again = call(
        &h.router,
        Request::get("/")
            .header(header::COOKIE, format!("boxedclaw_session={session}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(cookie_of(&again).is_none());

    // A malformed or unknown id is no session: a new one is issued.
    for bad in [
        session.to_uppercase(),
        format!("{session}0"),
        "../../etc/passwd".to_owned(),
        "0".repeat(32),
    ] {
        let response = call(
            &h.router,
            Request::get("/")
                .header(header::COOKIE, format!("boxedclaw_session={bad}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let fresh = cookie_of(&response).expect("a new cookie");
        assert_ne!(fresh, session);
        assert_ne!(fresh, bad);
    }
}

#[tokio::test]
async fn assets_are_served_with_their_types() {
    let h = running(WebSettings::default()).await;
    for (path, ct, needle) in [
        (
            "/assets/chat.js",
            "text/javascript; charset=utf-8",
            "EventSource",
        ),
        (
            "/assets/console.css",
            "text/css; charset=utf-8",
            ".approval-action",
        ),
    ] {
        let response = call(&h.router, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], ct);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(response.headers().get(header::SET_COOKIE).is_none());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(
            std::str::from_utf8(&body).unwrap().contains(needle),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_message_becomes_an_inbound_message_of_the_sessions_conversation() {
    let mut h = running(WebSettings::default()).await;
    let session = new_session(&h.router).await;
    let response = call(
        &h.router,
        post_json(
            "/api/chat/messages",
            &session,
            json!({"text": "hello <b>agent</b>"}),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = json_body(response).await["id"].as_str().unwrap().to_owned();
    match next_inbound(&mut h.rx).await {
        InboundEvent::Message(m) => {
            assert_eq!(m.id, id);
            assert_eq!(m.text, "hello <b>agent</b>");
            assert_eq!(m.conversation, conversation(&session));
            assert_eq!(m.user, user(&session));
        }
        other => panic!("expected a message, got {other:?}"),
    }
    // A second message gets its own event id.
    let response = call(
        &h.router,
        post_json("/api/chat/messages", &session, json!({"text": "again"})),
    )
    .await;
    let id2 = json_body(response).await["id"].as_str().unwrap().to_owned();
    assert_ne!(id, id2);
    assert!(matches!(next_inbound(&mut h.rx).await, InboundEvent::Message(m) if m.id == id2));

    // The user's own messages are in the history, so a reload shows them.
    let mut events = Events::open(&h.router, &session, None).await;
    let (_, first) = events.next().await;
    assert_eq!(
        first,
        json!({"kind": "user", "text": "hello <b>agent</b>", "seq": 1})
    );
    let (_, second) = events.next().await;
    assert_eq!(second["text"], "again");
}

#[tokio::test]
async fn two_sessions_get_different_conversations() {
    let mut h = running(WebSettings::default()).await;
    let (a, b) = (new_session(&h.router).await, new_session(&h.router).await);
    assert_ne!(a, b);
    for s in [&a, &b] {
        let response = call(
            &h.router,
            post_json("/api/chat/messages", s, json!({"text": "hi"})),
        )
        .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let (InboundEvent::Message(ma), InboundEvent::Message(mb)) =
        (next_inbound(&mut h.rx).await, next_inbound(&mut h.rx).await)
    else {
        panic!("two messages expected")
    };
    assert_ne!(ma.conversation, mb.conversation);
    assert_ne!(ma.user, mb.user);
    assert_eq!(ma.conversation, conversation(&a));
    assert_eq!(mb.conversation, conversation(&b));
}

#[tokio::test]
async fn posts_need_json_a_session_and_a_sensible_size() {
    let mut h = running(WebSettings::default()).await;
    let session = new_session(&h.router).await;
    let body = json!({"text": "hi"}).to_string();
    let cases = [
        // A cross-site form can only send these content types.
        (
            post("/api/chat/messages", Some(&session), None, body.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            post(
                "/api/chat/messages",
                Some(&session),
                Some("text/plain"),
                body.clone(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            post(
                "/api/chat/messages",
                Some(&session),
                Some("application/x-www-form-urlencoded"),
                "text=hi".into(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            post(
                "/api/chat/decisions",
                Some(&session),
                None,
                json!({"approval": "c0ffee000001", "approve": true}).to_string(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // No session.
        (
            post(
                "/api/chat/messages",
                None,
                Some("application/json"),
                body.clone(),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            post(
                "/api/chat/messages",
                Some(&"f".repeat(32)),
                Some("application/json"),
                body.clone(),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            post(
                "/api/chat/messages",
                Some(&session.to_uppercase()),
                Some("application/json"),
                body.clone(),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            post(
                "/api/chat/decisions",
                None,
                Some("application/json"),
                json!({"approval": "c0ffee000001", "approve": true}).to_string(),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        // Bad bodies.
        (
            post_json("/api/chat/messages", &session, json!({"text": "   \n\t"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json("/api/chat/messages", &session, json!({"txt": "hi"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(
                "/api/chat/messages",
                Some(&session),
                Some("application/json"),
                "{not json".into(),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json(
                "/api/chat/messages",
                &session,
                json!({"text": "x".repeat(16 * 1024 + 1)}),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            post_json(
                "/api/chat/messages",
                &session,
                json!({"text": "\u{e9}".repeat(8 * 1024 + 1)}),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            post_json(
                "/api/chat/messages",
                &session,
                json!({"text": "x".repeat(1 << 20)}),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            post_json(
                "/api/chat/decisions",
                &session,
                json!({"approval": "../x", "approve": true}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json(
                "/api/chat/decisions",
                &session,
                json!({"approval": "", "approve": true}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json(
                "/api/chat/decisions",
                &session,
                json!({"approval": "c0ffee000001"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (i, (request, status)) in cases.into_iter().enumerate() {
        let response = call(&h.router, request).await;
        assert_eq!(response.status(), status, "case {i}");
        assert!(
            json_body(response).await["error"].is_string(),
            "case {i}: a JSON error"
        );
    }
    // A browser marking the request as cross-site is refused even with everything else right.
    let mut request = post_json("/api/chat/messages", &session, json!({"text": "hi"}));
    request
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(
        call(&h.router, request).await.status(),
        StatusCode::FORBIDDEN
    );
    assert!(
        h.rx.try_recv().is_err(),
        "nothing refused reached the gateway"
    );

    // Exactly 16 KiB is fine, and `charset` on the content type too.
    let request = post(
        "/api/chat/messages",
        Some(&session),
        Some("application/json; charset=utf-8"),
        json!({"text": "x".repeat(16 * 1024)}).to_string(),
    );
    assert_eq!(
        call(&h.router, request).await.status(),
        StatusCode::ACCEPTED
    );
    assert!(
        matches!(next_inbound(&mut h.rx).await, InboundEvent::Message(m) if m.text.len() == 16 * 1024)
    );
}

#[tokio::test]
async fn a_decision_is_bound_to_the_cookies_session() {
    let mut h = running(WebSettings::default()).await;
    let (mine, other) = (new_session(&h.router).await, new_session(&h.router).await);
    let response = call(
        &h.router,
        post_json(
            "/api/chat/decisions",
            &mine,
            json!({
                "approval": "c0ffee000001",
                "approve": false,
                // Attempts to decide for someone else are ignored.
                "conversation": conversation(&other),
                "user": format!("web:{other}"),
            }),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    match next_inbound(&mut h.rx).await {
        InboundEvent::ApprovalDecision(d) => {
            assert_eq!(d.conversation, conversation(&mine));
            assert_eq!(d.user, user(&mine));
            assert_eq!(d.approval.as_str(), "c0ffee000001");
            assert!(!d.approve);
        }
        other => panic!("expected a decision, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_commands_become_decisions_or_admin_commands() {
    let mut h = running(WebSettings::default()).await;
    let session = new_session(&h.router).await;
    for text in ["/approve c0ffee000002", "/deny c0ffee000003", "/status"] {
        let response = call(
            &h.router,
            post_json("/api/chat/messages", &session, json!({"text": text})),
        )
        .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    match next_inbound(&mut h.rx).await {
        InboundEvent::ApprovalDecision(d) => {
            assert_eq!(d.approval.as_str(), "c0ffee000002");
            assert!(d.approve);
            assert_eq!(d.conversation, conversation(&session));
            assert_eq!(d.user, user(&session));
        }
        other => panic!("expected a decision, got {other:?}"),
    }
    assert!(matches!(next_inbound(&mut h.rx).await,
        InboundEvent::ApprovalDecision(d) if !d.approve && d.approval.as_str() == "c0ffee000003"));
    assert!(matches!(next_inbound(&mut h.rx).await,
        InboundEvent::Command(m) if m.text == "/status" && m.conversation == conversation(&session)));
}

#[tokio::test]
async fn the_event_stream_needs_a_session() {
    let h = running(WebSettings::default()).await;
    for cookie in [None, Some("0".repeat(32)), Some("nope".to_owned())] {
        let mut r = Request::get("/api/chat/events");
        if let Some(c) = cookie {
            r = r.header(header::COOKIE, format!("boxedclaw_session={c}"));
        }
        let response = call(&h.router, r.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn deliveries_reach_only_their_sessions_stream() {
    let h = running(WebSettings::default()).await;
    let (a, b) = (new_session(&h.router).await, new_session(&h.router).await);
    let mut ea = Events::open(&h.router, &a, None).await;
    let mut eb = Events::open(&h.router, &b, None).await;

    h.channel
        .deliver(post_action(&a, "for A <script>alert(1)</script>"))
        .await
        .unwrap();
    let (id, ev) = ea.next().await;
    assert_eq!(id, 1);
    assert_eq!(
        ev,
        json!({"kind": "post", "text": "for A <script>alert(1)</script>", "seq": 1})
    );
    eb.nothing().await;

    // Every kind, with its exact fields.
    let requester = user(&a);
    let conv = conversation(&a);
    let approval = ApprovalId::new("c0ffee000009").unwrap();
    let actions = [
        OutboundAction::Typing {
            conversation: conv.clone(),
        },
        OutboundAction::Progress {
            conversation: conv.clone(),
            text: "running shell".into(),
        },
        OutboundAction::RequestApproval(ApprovalPrompt {
            conversation: conv.clone(),
            approval: approval.clone(),
            requester: requester.clone(),
            action: "shell: rm -rf <img src=x onerror=alert(1)>".into(),
            reason: "cleanup".into(),
            expires_in_secs: 300,
        }),
        OutboundAction::ResolveApproval {
            conversation: conv.clone(),
            approval: approval.clone(),
            outcome: ApprovalOutcome::Approved,
            by: Some(requester.clone()),
        },
        OutboundAction::ResolveApproval {
            conversation: conv.clone(),
            approval: approval.clone(),
            outcome: ApprovalOutcome::Expired,
            by: None,
        },
        OutboundAction::Notice {
            conversation: conv.clone(),
            user: Some(requester.clone()),
            text: "note".into(),
        },
    ];
    let expected = [
        json!({"kind": "typing", "seq": 2}),
        json!({"kind": "progress", "text": "running shell", "seq": 3}),
        json!({"kind": "approval", "approval": "c0ffee000009",
               "action": "shell: rm -rf <img src=x onerror=alert(1)>", "reason": "cleanup",
               "requester": requester.to_string(), "expires_in_secs": 300, "seq": 4}),
        json!({"kind": "resolved", "approval": "c0ffee000009", "outcome": "approved",
               "by": requester.to_string(), "seq": 5}),
        json!({"kind": "resolved", "approval": "c0ffee000009", "outcome": "expired",
               "by": null, "seq": 6}),
        json!({"kind": "notice", "text": "note", "seq": 7}),
    ];
    // Each as soon as it is delivered (a reader that falls behind sees only the latest
    // typing/progress status, so they are read one by one here).
    for (action, want) in actions.into_iter().zip(expected) {
        h.channel.deliver(action).await.unwrap();
        assert_eq!(ea.next().await.1, want);
    }
    eb.nothing().await;

    // B's own deliveries reach B, numbered from 1 in B's stream.
    h.channel.deliver(post_action(&b, "for B")).await.unwrap();
    assert_eq!(
        eb.next().await,
        (1, json!({"kind": "post", "text": "for B", "seq": 1}))
    );
    ea.nothing().await;

    // An unknown session (gone, or never existed) is not an error.
    h.channel
        .deliver(post_action(&"e".repeat(32), "nobody"))
        .await
        .unwrap();
    let slack = ConversationKey::new(Platform::Slack, Some("T1"), "C1", None).unwrap();
    h.channel
        .deliver(OutboundAction::Post {
            conversation: slack,
            text: "x".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn last_event_id_replays_only_later_events() {
    let h = running(WebSettings::default()).await;
    let s = new_session(&h.router).await;
    for i in 1..=4 {
        h.channel
            .deliver(post_action(&s, &format!("m{i}")))
            .await
            .unwrap();
    }
    let mut all = Events::open(&h.router, &s, None).await;
    for i in 1..=4 {
        assert_eq!(all.next().await.1["text"], format!("m{i}"));
    }
    let mut later = Events::open(&h.router, &s, Some(2)).await;
    assert_eq!(
        later.next().await,
        (3, json!({"kind": "post", "text": "m3", "seq": 3}))
    );
    assert_eq!(later.next().await.0, 4);
    later.nothing().await;
    // Then live events follow the replay.
    h.channel.deliver(post_action(&s, "m5")).await.unwrap();
    assert_eq!(later.next().await.0, 5);
    assert_eq!(all.next().await.0, 5);
    // An id this session never issued replays everything.
    let mut stale = Events::open(&h.router, &s, Some(99)).await;
    assert_eq!(stale.next().await.0, 1);
}

#[tokio::test]
async fn a_reader_behind_the_history_is_told_what_it_missed() {
    let h = running(WebSettings {
        max_sessions: 10,
        history: 3,
        ..WebSettings::default()
    })
    .await;
    let s = new_session(&h.router).await;
    for i in 1..=5 {
        h.channel
            .deliver(post_action(&s, &format!("m{i}")))
            .await
            .unwrap();
    }
    let mut events = Events::open(&h.router, &s, Some(1)).await;
    let (id, notice) = events.next().await;
    assert_eq!(id, 2);
    assert_eq!(notice["kind"], "notice");
    for want in 3..=5 {
        assert_eq!(events.next().await.1["text"], format!("m{want}"));
    }
    // A long burst while a stream is open and not being read: nothing blocks, and the reader
    // then gets the notice and the newest events instead of losing them silently.
    for i in 6..=20 {
        h.channel
            .deliver(post_action(&s, &format!("m{i}")))
            .await
            .unwrap();
    }
    let (id, notice) = events.next().await;
    assert_eq!((id, notice["kind"].as_str()), (17, Some("notice")));
    for want in 18..=20 {
        assert_eq!(events.next().await.1["text"], format!("m{want}"));
    }
}

#[tokio::test]
async fn a_long_reply_is_split_without_losing_anything() {
    let h = running(WebSettings::default()).await;
    let s = new_session(&h.router).await;
    let long = "Grüße 🦀\n".repeat(20_000);
    h.channel.deliver(post_action(&s, &long)).await.unwrap();
    let mut events = Events::open(&h.router, &s, None).await;
    let mut joined = String::new();
    while joined.len() < long.len() {
        let text = events.next().await.1["text"].as_str().unwrap().to_owned();
        assert!(text.chars().count() <= boxedclaw_web::MAX_TEXT_LEN);
        joined.push_str(&text);
    }
    assert_eq!(joined, long);
}

#[tokio::test]
async fn posts_are_refused_before_run_and_after_shutdown() {
    let channel = WebChannel::new(WebSettings::default());
    let router = channel.router();
    let session = new_session(&router).await;
    let response = call(
        &router,
        post_json("/api/chat/messages", &session, json!({"text": "hi"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json_body(response).await["error"]
            .as_str()
            .unwrap()
            .contains("not running")
    );

    let (tx, mut rx) = mpsc::channel(4);
    let ctx = ChannelContext {
        inbound: tx,
        shutdown: CancellationToken::new(),
        ready: CancellationToken::new(),
    };
    let running = tokio::spawn(Arc::clone(&channel).run(ctx.clone()));
    ctx.ready.cancelled().await;
    let response = call(
        &router,
        post_json("/api/chat/messages", &session, json!({"text": "hi"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(rx.recv().await.is_some());

    // An open stream ends at shutdown, and `run` returns Ok.
    let mut events = Events::open(&router, &session, None).await;
    ctx.shutdown.cancel();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Replayed history first, then the end.
    while events
        .next_within(WAIT)
        .await
        .expect("the stream ends")
        .is_some()
    {}
    let response = call(
        &router,
        post_json("/api/chat/messages", &session, json!({"text": "hi"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_closed_intake_answers_503_and_says_so_in_the_chat() {
    let mut h = running(WebSettings::default()).await;
    let session = new_session(&h.router).await;
    h.rx.close();
    let response = call(
        &h.router,
        post_json("/api/chat/messages", &session, json!({"text": "hi"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let mut events = Events::open(&h.router, &session, None).await;
    assert_eq!(events.next().await.1["kind"], "user");
    assert_eq!(events.next().await.1["kind"], "notice");
    h.shutdown.cancel();
    h.running.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_least_recently_active_session_is_evicted() {
    let h = running(WebSettings {
        max_sessions: 2,
        history: 10,
        ..WebSettings::default()
    })
    .await;
    let hi = || json!({"text": "hi"});
    let a = new_session(&h.router).await;
    let b = new_session(&h.router).await;
    let mut stream_b = Events::open(&h.router, &b, None).await;
    // `a` was active more recently than `b`, but `b` has an open tab: `a` goes.
    let response = call(&h.router, post_json("/api/chat/messages", &a, hi())).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let c = new_session(&h.router).await;
    let gone = call(&h.router, post_json("/api/chat/messages", &a, hi())).await;
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
    for s in [&b, &c] {
        let ok = call(&h.router, post_json("/api/chat/messages", s, hi())).await;
        assert_eq!(ok.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(stream_b.next().await.1["kind"], "user");
    // Both have open tabs now: activity decides, `b` (used before `c`) goes and its stream
    // ends, so its EventSource reconnects, gets 401 and the page starts a new session.
    let _stream_c = Events::open(&h.router, &c, None).await;
    new_session(&h.router).await;
    assert_eq!(
        stream_b.next_within(WAIT).await,
        Some(None),
        "b's stream ends"
    );
    let gone = call(&h.router, post_json("/api/chat/messages", &b, hi())).await;
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
    let ok = call(&h.router, post_json("/api/chat/messages", &c, hi())).await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
}

#[test]
fn the_front_end_never_parses_text_as_html_and_loads_nothing_external() {
    let js = include_str!("../assets/chat.js");
    let html = include_str!("../assets/chat.html");
    let css = include_str!("../assets/console.css");
    for forbidden in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setAttribute('on",
        "DOMParser",
        "createContextualFragment",
    ] {
        assert!(!js.contains(forbidden), "chat.js uses {forbidden}");
    }
    assert!(js.contains("textContent"));
    // Under `default-src 'self'`: no inline scripts, styles or handlers; nothing external.
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains("<script src=\"/assets/chat.js\" defer></script>"));
    assert!(!html.contains("<style"));
    assert!(!html.contains(" style="));
    assert!(!html.contains(" on"), "an inline event handler attribute?");
    for text in [js, html, css] {
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"));
        assert!(!text.contains("@import"));
    }
    // The DOM contract the browser tests rely on.
    for id in [
        "id=\"messages\"",
        "id=\"composer\"",
        "id=\"input\"",
        "id=\"send\"",
        "id=\"typing\"",
        "id=\"status\"",
        "href=\"/dashboard\"",
    ] {
        assert!(html.contains(id), "{id}");
    }
    for class in [
        "'msg-user'",
        "'msg-agent'",
        "'msg-notice'",
        "'msg msg-progress'",
        "'approval'",
        "'approval-action'",
        "'approval-reason'",
        "'approve'",
        "'deny'",
        "'approval-outcome'",
        "data-approval",
    ] {
        assert!(js.contains(class), "{class}");
    }
}

#[tokio::test]
async fn the_public_id_shown_everywhere_does_not_open_the_session() {
    let mut h = running(WebSettings::default()).await;
    let secret = new_session(&h.router).await;
    let public = public_session_id(&secret);
    assert_ne!(public, secret);
    let response = call(
        &h.router,
        post_json("/api/chat/messages", &secret, json!({"text": "hi"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    match next_inbound(&mut h.rx).await {
        InboundEvent::Message(m) => {
            // What the gateway logs, audits and shows carries the public id only.
            let shown = format!("{} {}", m.conversation, m.user);
            assert!(
                shown.contains(&public) && !shown.contains(&secret),
                "{shown}"
            );
        }
        other => panic!("expected a message, got {other:?}"),
    }
    // Someone who read the id in a log or on the dashboard cannot use it as the cookie.
    let forged = call(
        &h.router,
        post_json("/api/chat/messages", &public, json!({"text": "as you"})),
    )
    .await;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let stream = Request::get("/api/chat/events")
        .header(header::COOKIE, format!("boxedclaw_session={public}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        call(&h.router, stream).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
