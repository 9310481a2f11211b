//! Fake browsers for tests: real HTTP clients of the chat routes.
//!
//! [`FakeBrowsers::start`] serves a [`WebChannel`]'s router on `127.0.0.1:0` and opens `n`
//! browser sessions the way a browser does: it loads `/` and keeps the session cookie, then
//! follows `/api/chat/events` (reconnecting with `Last-Event-ID` when the stream ends, like
//! `EventSource`) and keeps a view of the page built the way `chat.js` builds it. Users post
//! with the same JSON requests the page sends. It implements the conformance suite's
//! [`PlatformFake`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use boxedclaw_channels::BoxFuture;
use boxedclaw_channels::conformance::{PlatformFake, Shown};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey};
use serde_json::{Value, json};
use tokio::task::AbortHandle;

use crate::{SESSION_COOKIE, WebChannel};

/// What one browser tab shows, as `chat.js` renders it.
#[derive(Debug, Default)]
struct View {
    /// Everything but the user's own messages, in order.
    shown: Vec<Shown>,
    /// The user's own messages, in order.
    sent: Vec<String>,
    /// The `seq` of the last event received (what `EventSource` sends as `Last-Event-ID`).
    last_seq: u64,
    /// Whether the typing indicator is visible.
    typing: bool,
}

impl View {
    fn apply(&mut self, ev: &Value) {
        let text = |k: &str| ev[k].as_str().unwrap_or_default().to_owned();
        let id = ev["seq"].as_u64().unwrap_or_default().to_string();
        let progress = |s: &Shown| s.id.starts_with("progress");
        match ev["kind"].as_str().unwrap_or_default() {
            "user" => self.sent.push(text("text")),
            "post" => {
                self.shown.retain(|s| !progress(s));
                self.shown.push(Shown {
                    id,
                    text: text("text"),
                    buttons: Vec::new(),
                });
                self.typing = false;
            }
            "typing" => self.typing = true,
            "progress" => {
                match self.shown.iter_mut().find(|s| progress(s)) {
                    Some(p) => p.text = text("text"),
                    None => self.shown.push(Shown {
                        id: format!("progress-{id}"),
                        text: text("text"),
                        buttons: Vec::new(),
                    }),
                }
                self.typing = true;
            }
            "approval" => {
                let approval = text("approval");
                let card = Shown {
                    id: format!("approval-{approval}"),
                    text: format!(
                        "Approval needed: {approval}\nRequested by {}\n{}\nReason: {}",
                        text("requester"),
                        text("action"),
                        text("reason")
                    ),
                    buttons: vec!["Approve".into(), "Deny".into()],
                };
                match self.shown.iter_mut().find(|s| s.id == card.id) {
                    Some(old) => *old = card,
                    None => self.shown.push(card),
                }
                self.typing = false;
            }
            "resolved" => {
                let approval = text("approval");
                let card_id = format!("approval-{approval}");
                let outcome = match ev["by"].as_str() {
                    Some(by) => format!("{} by {by}", text("outcome")),
                    None => text("outcome"),
                };
                match self.shown.iter_mut().find(|s| s.id == card_id) {
                    Some(card) => {
                        card.buttons.clear();
                        card.text.push('\n');
                        card.text.push_str(&outcome);
                    }
                    None => self.shown.push(Shown {
                        id: card_id,
                        text: format!("Approval {approval}\n{outcome}"),
                        buttons: Vec::new(),
                    }),
                }
            }
            "notice" => {
                self.shown.push(Shown {
                    id,
                    text: text("text"),
                    buttons: Vec::new(),
                });
                self.typing = false;
            }
            other => panic!("unknown event kind {other:?}: {ev}"),
        }
    }
}

/// One browser session.
struct Browser {
    /// The cookie's secret.
    session: String,
    /// The session's public id (its user and conversation id).
    id: String,
    view: Mutex<View>,
}

/// `n` browsers of one [`WebChannel`]; see the [module docs](self).
pub struct FakeBrowsers {
    base: String,
    client: reqwest::Client,
    browsers: Vec<Arc<Browser>>,
    tasks: Vec<AbortHandle>,
}

impl std::fmt::Debug for FakeBrowsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBrowsers")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeBrowsers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The session id in a `Set-Cookie` header of `/`.
fn session_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()?
                .trim()
                .strip_prefix(SESSION_COOKIE)?
                .strip_prefix('=')
                .map(str::to_owned)
        })
        .expect("GET / sets the session cookie")
}

impl FakeBrowsers {
    /// Serves `channel`'s router on `127.0.0.1:0` and opens `n` browser sessions, each
    /// following its event stream.
    pub async fn start(channel: &Arc<WebChannel>, n: u32) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let router = channel.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let mut fake = Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            browsers: Vec::new(),
            tasks: vec![server.abort_handle()],
        };
        for _ in 0..n {
            let page = fake.client.get(fake.url("/")).send().await.unwrap();
            assert_eq!(page.status(), 200);
            let session = session_cookie(&page);
            let browser = Arc::new(Browser {
                id: crate::public_session_id(&session),
                session,
                view: Mutex::new(View::default()),
            });
            let task = tokio::spawn(follow(
                fake.client.clone(),
                fake.url("/api/chat/events"),
                Arc::clone(&browser),
            ));
            fake.tasks.push(task.abort_handle());
            fake.browsers.push(browser);
        }
        fake
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn browser(&self, id: &str) -> &Browser {
        self.browsers
            .iter()
            .find(|b| b.id == id)
            .unwrap_or_else(|| panic!("no fake browser has session {id}"))
    }

    /// The public session id of browser `n` (1-based): its user and conversation id. The
    /// other methods name browsers by it.
    pub fn session(&self, n: u32) -> &str {
        let i = usize::try_from(n).unwrap().checked_sub(1).expect("1-based");
        &self
            .browsers
            .get(i)
            .unwrap_or_else(|| panic!("only {} fake browsers", self.browsers.len()))
            .id
    }

    /// Posts `body` to `path` as the browser of `session`, as `chat.js` does; returns the
    /// status and the JSON answer.
    pub async fn post(&self, session: &str, path: &str, body: Value) -> (u16, Value) {
        let cookie = &self.browser(session).session;
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
            .header("sec-fetch-site", "same-origin")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// What the browser of `session` shows (its own messages excluded), in order.
    pub fn shown_to(&self, session: &str) -> Vec<Shown> {
        lock(&self.browser(session).view).shown.clone()
    }

    /// The messages the browser of `session` shows as its user's own.
    pub fn sent_by(&self, session: &str) -> Vec<String> {
        lock(&self.browser(session).view).sent.clone()
    }

    /// Whether the browser of `session` shows the typing indicator.
    pub fn typing(&self, session: &str) -> bool {
        lock(&self.browser(session).view).typing
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Follows the browser's event stream like `EventSource`: reconnects with `Last-Event-ID`
/// after the stream ends or the connection fails; stops for good on an HTTP error status.
async fn follow(client: reqwest::Client, url: String, browser: Arc<Browser>) {
    loop {
        let last = lock(&browser.view).last_seq;
        let mut request = client
            .get(&url)
            .header("cookie", format!("{SESSION_COOKIE}={}", browser.session))
            .header("accept", "text/event-stream");
        if last > 0 {
            request = request.header("last-event-id", last.to_string());
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => read_stream(response, &browser).await,
            Ok(_) => return, // EventSource gives up on an error status, as the page does.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_stream(mut response: reqwest::Response, browser: &Browser) {
    // Bytes, not text: a chunk may end inside a multi-byte character.
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let frame = std::str::from_utf8(&frame).expect("UTF-8 events");
            let (mut id, mut data) = (None, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().expect("numeric event id"));
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if data.is_empty() {
                continue; // A keep-alive comment.
            }
            let event: Value = serde_json::from_str(&data).expect("one JSON object per event");
            let mut view = lock(&browser.view);
            if let Some(id) = id {
                assert_eq!(
                    event["seq"],
                    json!(id),
                    "the seq field matches the event id"
                );
                assert!(
                    id > view.last_seq,
                    "event ids increase: {id} after {}",
                    view.last_seq
                );
                view.last_seq = id;
            }
            view.apply(&event);
        }
    }
}

impl PlatformFake for FakeBrowsers {
    fn user_id(&self, n: u32) -> String {
        self.session(n).to_owned()
    }

    fn direct_message<'a>(&'a self, user: &'a str, text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (status, answer) = self
                .post(user, "/api/chat/messages", json!({ "text": text }))
                .await;
            assert_eq!(status, 202, "message refused: {answer}");
        })
    }

    fn shown<'a>(&'a self, conversation: &'a ConversationKey) -> BoxFuture<'a, Vec<Shown>> {
        Box::pin(async move { self.shown_to(&conversation.channel) })
    }

    fn click<'a>(
        &'a self,
        conversation: &'a ConversationKey,
        approval: &'a ApprovalId,
        user: &'a str,
        approve: bool,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // A web user sees only their own session's conversation.
            assert_eq!(
                conversation.channel, user,
                "a browser can click only in its own conversation"
            );
            let card = format!("approval-{approval}");
            let label = if approve { "Approve" } else { "Deny" };
            assert!(
                self.shown_to(user)
                    .iter()
                    .any(|s| s.id == card && s.buttons.iter().any(|b| b == label)),
                "no {label} button shown for {approval}"
            );
            let (status, answer) = self
                .post(
                    user,
                    "/api/chat/decisions",
                    json!({ "approval": approval.as_str(), "approve": approve }),
                )
                .await;
            assert_eq!(status, 202, "decision refused: {answer}");
        })
    }
}
