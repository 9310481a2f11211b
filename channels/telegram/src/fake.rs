//! A fake Telegram Bot API server for tests.
//!
//! [`FakeTelegram::start`] serves the real Bot API JSON over HTTP on `127.0.0.1:0`, so the
//! adapter runs its real `teloxide` client against it (`Bot::set_api_url`). Tests inject what
//! users do (messages, forum-topic messages, button clicks) as updates and inspect what the
//! bot did: every call it made ([`FakeTelegram::calls`]) and its messages as users now see
//! them, edits applied ([`FakeTelegram::chat`]).
//!
//! Fidelity notes, each matching Telegram rather than convenience:
//! - errors are answered `{"ok":false,...}` with a 4xx status, never a 5xx (teloxide sleeps
//!   10 s on any 5xx);
//! - a forum-topic message carries `reply_to_message` = the topic's creation service message,
//!   as Telegram sends it when the message is not an explicit reply;
//! - `reply_to_message` is never nested twice; text is limited to 4096 UTF-16 units;
//! - `getUpdates` answers 409 while a webhook is set; `parse_mode: "HTML"` is rendered to the
//!   plain text users would see (other parse modes are stored as sent).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use boxedclaw_channels::BoxFuture;
use boxedclaw_channels::conformance::{PlatformFake, Shown};
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Telegram's limit on a message's text, in UTF-16 code units.
const MAX_TEXT_UTF16: usize = 4096;
/// Longest long poll the fake holds, whatever the client asks (keeps tests fast).
const MAX_POLL_SECS: u64 = 5;
/// Sender of forum topics' creation service messages (not a `user_id(n)` of the suite).
const FORUM_ADMIN_ID: u64 = 999_000_001;

/// Methods the fake knows, in Telegram's canonical spelling (requests arrive in any case).
const METHODS: &[&str] = &[
    "getMe",
    "getWebhookInfo",
    "deleteWebhook",
    "setWebhook",
    "setMyCommands",
    "getMyCommands",
    "deleteMyCommands",
    "getUpdates",
    "sendMessage",
    "editMessageText",
    "editMessageReplyMarkup",
    "answerCallbackQuery",
    "sendChatAction",
    "deleteMessage",
];

/// One recorded Bot API call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The method in canonical lowerCamelCase, e.g. `"sendMessage"`.
    pub method: String,
    /// The JSON body as sent (`{}` when empty; `null` when it was not JSON).
    pub body: Value,
    /// Whether the call was answered with an error (429, 400, 401, ...).
    pub rejected: bool,
}

/// A message the bot posted, as users now see it (after edits).
#[derive(Debug, Clone, PartialEq)]
pub struct BotMessage {
    /// Telegram's id of the message.
    pub message_id: i32,
    /// The chat it was posted in.
    pub chat_id: i64,
    /// The forum topic (`message_thread_id`) it was posted in, if any.
    pub thread: Option<i32>,
    /// Its text as displayed.
    pub text: String,
    /// Its inline buttons as `(label, callback_data)`, rows flattened; `callback_data` is empty
    /// for buttons of other kinds (URL etc.).
    pub buttons: Vec<(String, String)>,
}

/// A fake Telegram Bot API server; see the [module docs](self).
pub struct FakeTelegram {
    inner: Arc<Inner>,
    server: tokio::task::AbortHandle,
}

/// What the server task and the test share.
struct Inner {
    token: String,
    addr: SocketAddr,
    state: Mutex<World>,
    /// Wakes long polls when an update is queued.
    pushed: Notify,
}

/// Everything the fake Telegram knows.
#[derive(Default)]
struct World {
    last_update_id: u32,
    last_message_id: i32,
    last_callback_id: u64,
    queue: VecDeque<Queued>,
    calls: Vec<Call>,
    /// Chat JSON by id, as learned from injected updates.
    chats: HashMap<i64, Value>,
    /// The bot's messages, in the order posted.
    posted: Vec<Posted>,
    webhook: Option<(String, Option<String>)>,
    commands: Vec<Value>,
    /// Pending 429s by lowercased method name.
    /// Per method: queued 429s, each served after that many more calls succeed.
    rate_limits: HashMap<String, VecDeque<(usize, u32)>>,
}

struct Queued {
    update: Value,
    /// Returned by some `getUpdates` already: only such updates are confirmed by an offset,
    /// so an update pushed with an old id (a duplicate) is still delivered once.
    delivered: bool,
}

struct Posted {
    shown: BotMessage,
    markup: Option<Value>,
    date: i64,
    edit_date: Option<i64>,
}

/// An error answer: `{"ok":false,"error_code":code,"description":...}`.
struct Failure {
    code: u16,
    description: String,
    parameters: Option<Value>,
}

impl Failure {
    fn new(code: u16, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            parameters: None,
        }
    }

    fn bad_request(what: &str) -> Self {
        Self::new(400, format!("Bad Request: {what}"))
    }
}

type Answer = Result<Value, Failure>;

impl FakeTelegram {
    /// The bot's user id (`getMe`, `from` of its messages).
    pub const BOT_ID: u64 = 777_000_111;
    /// The bot's username, without `@`.
    pub const BOT_USERNAME: &'static str = "boxedclaw_test_bot";

    /// Binds `127.0.0.1:0` and serves the Bot API for `token` (any other token gets 401) on a
    /// spawned task, which stops when the fake is dropped.
    pub async fn start(token: &str) -> Arc<FakeTelegram> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Telegram");
        let addr = listener.local_addr().expect("fake Telegram address");
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            addr,
            state: Mutex::new(World::default()),
            pushed: Notify::new(),
        });
        let app = Router::new().fallback(serve_call).with_state(inner.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("fake Telegram server stopped: {e}");
            }
        })
        .abort_handle();
        Arc::new(FakeTelegram { inner, server })
    }

    /// The base URL to give `Bot::set_api_url`: `http://127.0.0.1:PORT/`.
    pub fn api_url(&self) -> String {
        format!("http://{}/", self.inner.addr)
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.inner.world()
    }

    // ---- Updates ----

    /// Builds the next update of user `user_id` writing `text` to the bot in private, without
    /// queueing it (for webhook tests).
    pub fn private_message_update(&self, user_id: u64, text: &str) -> Value {
        let mut w = self.world();
        let chat = private_chat(user_id);
        w.chats.insert(user_id as i64, chat.clone());
        let message = w.user_message(user_id, chat, text);
        w.update("message", message)
    }

    /// Queues a private message of user `user_id` for `getUpdates` and returns the update.
    pub fn private_message(&self, user_id: u64, text: &str) -> Value {
        let update = self.private_message_update(user_id, text);
        self.push_update(update.clone());
        update
    }

    /// Queues a message of user `user_id` in supergroup `chat_id` (a forum when `topic` is
    /// given or the chat was a forum already), in forum topic `topic` if given; returns it.
    pub fn group_message(
        &self,
        chat_id: i64,
        topic: Option<i32>,
        user_id: u64,
        text: &str,
    ) -> Value {
        let update = self.group_update(chat_id, topic, user_id, text, None);
        self.push_update(update.clone());
        update
    }

    /// Like [`group_message`](Self::group_message), as a reply to the bot's message
    /// `reply_to_message_id` in that chat. Panics if the bot posted no such message.
    pub fn group_reply_to(
        &self,
        chat_id: i64,
        topic: Option<i32>,
        user_id: u64,
        text: &str,
        reply_to_message_id: i32,
    ) -> Value {
        let update = self.group_update(chat_id, topic, user_id, text, Some(reply_to_message_id));
        self.push_update(update.clone());
        update
    }

    fn group_update(
        &self,
        chat_id: i64,
        topic: Option<i32>,
        user_id: u64,
        text: &str,
        reply_to: Option<i32>,
    ) -> Value {
        let mut w = self.world();
        let was_forum = w.chats.get(&chat_id).is_some_and(is_forum);
        let chat = json!({
            "id": chat_id,
            "type": "supergroup",
            "title": format!("Group {chat_id}"),
            "is_forum": was_forum || topic.is_some(),
        });
        w.chats.insert(chat_id, chat.clone());
        let mut message = w.user_message(user_id, chat.clone(), text);
        if let Some(topic) = topic {
            message["message_thread_id"] = json!(topic);
            message["is_topic_message"] = json!(true);
            message["reply_to_message"] = topic_root(&chat, topic);
        }
        if let Some(id) = reply_to {
            let replied = w.find(chat_id, id).unwrap_or_else(|| {
                panic!("group_reply_to: the bot posted no message {id} in {chat_id}")
            });
            message["reply_to_message"] = without_reply(w.message_json(replied));
        }
        w.update("message", message)
    }

    /// Queues user `user_id`'s click on a button of the bot's message `message_id` in
    /// `chat_id`, carrying `data` (any string: forgeries allowed); returns the update. Panics
    /// if the bot posted no such message.
    pub fn click(&self, user_id: u64, chat_id: i64, message_id: i32, data: &str) -> Value {
        let update = {
            let mut w = self.world();
            let posted = w.find(chat_id, message_id).unwrap_or_else(|| {
                panic!("click: the bot posted no message {message_id} in {chat_id}")
            });
            let message = w.message_json(posted);
            w.last_callback_id += 1;
            let query = json!({
                "id": format!("{}", 4_400_000_000_u64 + w.last_callback_id),
                "from": user(user_id),
                "message": message,
                "chat_instance": format!("ci{}", chat_id.unsigned_abs()),
                "data": data,
            });
            w.update("callback_query", query)
        };
        self.push_update(update.clone());
        update
    }

    /// Queues `update` exactly as given (e.g. a duplicate `update_id`, or malformed JSON).
    pub fn push_update(&self, update: Value) {
        self.world().queue.push_back(Queued {
            update,
            delivered: false,
        });
        self.inner.pushed.notify_waiters();
    }

    // ---- Inspection ----

    /// Every call the bot made, in the order received.
    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// Bodies of the accepted (not rejected) calls to `method` (compared case-insensitively).
    pub fn calls_to(&self, method: &str) -> Vec<Value> {
        self.world()
            .calls
            .iter()
            .filter(|c| !c.rejected && c.method.eq_ignore_ascii_case(method))
            .map(|c| c.body.clone())
            .collect()
    }

    /// The bot's messages in `chat_id`, in the order posted, as currently shown.
    pub fn chat(&self, chat_id: i64) -> Vec<BotMessage> {
        self.world()
            .posted
            .iter()
            .filter(|p| p.shown.chat_id == chat_id)
            .map(|p| p.shown.clone())
            .collect()
    }

    /// URL and secret token of the webhook set by the last `setWebhook`; `None` when none is
    /// set (never set, or `deleteWebhook` since).
    pub fn webhook(&self) -> Option<(String, Option<String>)> {
        self.world().webhook.clone()
    }

    /// How many updates are queued and not yet acknowledged.
    pub fn pending_updates(&self) -> usize {
        self.world().queue.len()
    }

    /// Calls `f` every 10 ms until it returns `Some`, and returns that. Panics after `timeout`,
    /// naming `what` and listing every call the bot made.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&FakeTelegram) -> Option<T>,
    ) -> T {
        boxedclaw_channels::fake::poll_until(timeout, what, || f(self), || self.dump()).await
    }

    fn dump(&self) -> String {
        let calls = self.calls();
        if calls.is_empty() {
            return "  (none)".to_owned();
        }
        calls
            .iter()
            .map(|c| {
                let flag = if c.rejected { " [rejected]" } else { "" };
                format!("  {}{flag} {}", c.method, c.body)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    // ---- Failure injection ----

    /// Answers the next call to `method` (case-insensitive) like Telegram's flood control:
    /// HTTP 429 with `parameters.retry_after` = `retry_after_secs`. That call is recorded as
    /// rejected and has no effect. Repeated calls queue several 429s.
    pub fn rate_limit_next(&self, method: &str, retry_after_secs: u32) {
        self.rate_limit_after(method, 0, retry_after_secs);
    }

    /// Like [`FakeTelegram::rate_limit_next`], but `after` more calls to `method` succeed
    /// first: for failing the middle of a multi-message reply.
    pub fn rate_limit_after(&self, method: &str, after: usize, retry_after_secs: u32) {
        self.world()
            .rate_limits
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back((after, retry_after_secs));
    }
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Inner {
    fn world(&self) -> MutexGuard<'_, World> {
        // A test that panicked while holding the lock must not hide the original failure.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Consumes one pending 429 for `method`, if any.
    fn take_rate_limit(&self, method: &str) -> Option<u32> {
        let mut w = self.world();
        let queue = w.rate_limits.get_mut(&method.to_ascii_lowercase())?;
        match queue.front_mut() {
            Some((after, _)) if *after > 0 => {
                *after -= 1;
                None
            }
            Some(_) => queue.pop_front().map(|(_, secs)| secs),
            None => None,
        }
    }
}

impl World {
    fn update(&mut self, kind: &str, payload: Value) -> Value {
        self.last_update_id += 1;
        let mut update = json!({ "update_id": self.last_update_id });
        update[kind] = payload;
        update
    }

    fn next_message_id(&mut self) -> i32 {
        self.last_message_id += 1;
        self.last_message_id
    }

    fn user_message(&mut self, user_id: u64, chat: Value, text: &str) -> Value {
        let mut message = json!({
            "message_id": self.next_message_id(),
            "from": user(user_id),
            "date": now(),
            "chat": chat,
            "text": text,
        });
        let entities = entities(text);
        if !entities.is_empty() {
            message["entities"] = Value::Array(entities);
        }
        message
    }

    fn find(&self, chat_id: i64, message_id: i32) -> Option<&Posted> {
        self.posted
            .iter()
            .find(|p| p.shown.chat_id == chat_id && p.shown.message_id == message_id)
    }

    fn find_mut(&mut self, chat_id: i64, message_id: i32) -> Option<&mut Posted> {
        self.posted
            .iter_mut()
            .find(|p| p.shown.chat_id == chat_id && p.shown.message_id == message_id)
    }

    /// The Bot API `Message` for one of the bot's messages.
    fn message_json(&self, p: &Posted) -> Value {
        let m = &p.shown;
        let chat = self
            .chats
            .get(&m.chat_id)
            .cloned()
            .unwrap_or_else(|| private_chat(0));
        let mut message = json!({
            "message_id": m.message_id,
            "from": bot_user(),
            "date": p.date,
            "chat": chat,
            "text": m.text,
        });
        if let Some(thread) = m.thread {
            message["message_thread_id"] = json!(thread);
            if is_forum(&chat) {
                message["is_topic_message"] = json!(true);
                message["reply_to_message"] = topic_root(&chat, thread);
            }
        }
        if let Some(markup) = &p.markup {
            message["reply_markup"] = markup.clone();
        }
        if let Some(edited) = p.edit_date {
            message["edit_date"] = json!(edited);
        }
        message
    }

    /// The chat a send is addressed to; 400 like Telegram when the fake never saw it.
    fn known_chat(&self, body: &Value) -> Result<i64, Failure> {
        let id = match body.get("chat_id") {
            None | Some(Value::Null) => return Err(Failure::bad_request("chat_id is empty")),
            Some(v) => int(v).ok_or_else(|| Failure::bad_request("chat not found"))?,
        };
        if self.chats.contains_key(&id) {
            Ok(id)
        } else {
            Err(Failure::bad_request("chat not found"))
        }
    }

    /// The bot's message a call names by `chat_id` + `message_id`.
    fn target(&self, body: &Value, not_found: &str) -> Result<(i64, i32), Failure> {
        if body.get("inline_message_id").is_some() {
            return Err(Failure::bad_request(not_found));
        }
        let chat = self.known_chat(body)?;
        let id = body
            .get("message_id")
            .and_then(int)
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| Failure::bad_request("message identifier is not specified"))?;
        match self.find(chat, id) {
            Some(_) => Ok((chat, id)),
            None => Err(Failure::bad_request(not_found)),
        }
    }

    /// Answers every method but `getUpdates` (which may wait, so lives outside the lock).
    fn answer(&mut self, method: &str, body: &Value) -> Answer {
        match method {
            "getMe" => Ok(me()),
            "getWebhookInfo" => Ok(json!({
                "url": self.webhook.as_ref().map_or("", |(url, _)| url.as_str()),
                "has_custom_certificate": false,
                "pending_update_count": self.queue.len(),
            })),
            "deleteWebhook" => {
                self.webhook = None;
                self.drop_pending_if_asked(body);
                Ok(json!(true))
            }
            "setWebhook" => self.set_webhook(body),
            "setMyCommands" => self.set_my_commands(body),
            "getMyCommands" => Ok(Value::Array(self.commands.clone())),
            "deleteMyCommands" => {
                self.commands.clear();
                Ok(json!(true))
            }
            "sendMessage" => self.send_message(body),
            "editMessageText" => {
                let (chat, id) = self.target(body, "message to edit not found")?;
                let text = visible_text(body)?;
                let markup = inline_markup(body);
                let posted = self.find_mut(chat, id).expect("target checked");
                posted.shown.text = text;
                set_markup(posted, markup);
                posted.edit_date = Some(now());
                Ok(self.message_json(self.find(chat, id).expect("target checked")))
            }
            "editMessageReplyMarkup" => {
                let (chat, id) = self.target(body, "message to edit not found")?;
                let markup = inline_markup(body);
                let posted = self.find_mut(chat, id).expect("target checked");
                set_markup(posted, markup);
                posted.edit_date = Some(now());
                Ok(self.message_json(self.find(chat, id).expect("target checked")))
            }
            "deleteMessage" => {
                let (chat, id) = self.target(body, "message to delete not found")?;
                self.posted
                    .retain(|p| !(p.shown.chat_id == chat && p.shown.message_id == id));
                Ok(json!(true))
            }
            "sendChatAction" => self.known_chat(body).map(|_| json!(true)),
            "answerCallbackQuery" => Ok(json!(true)),
            _ => Err(Failure::new(404, "Not Found")),
        }
    }

    fn send_message(&mut self, body: &Value) -> Answer {
        let chat_id = self.known_chat(body)?;
        let text = visible_text(body)?;
        let thread = body
            .get("message_thread_id")
            .and_then(int)
            .and_then(|t| i32::try_from(t).ok());
        let message_id = self.next_message_id();
        let mut posted = Posted {
            shown: BotMessage {
                message_id,
                chat_id,
                thread,
                text,
                buttons: Vec::new(),
            },
            markup: None,
            date: now(),
            edit_date: None,
        };
        set_markup(&mut posted, inline_markup(body));
        let message = self.message_json(&posted);
        self.posted.push(posted);
        Ok(message)
    }

    fn set_webhook(&mut self, body: &Value) -> Answer {
        let url = body.get("url").and_then(Value::as_str).unwrap_or_default();
        let secret = body.get("secret_token").and_then(Value::as_str);
        if let Some(secret) = secret {
            let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if secret.is_empty() || secret.len() > 256 || !secret.chars().all(allowed) {
                return Err(Failure::bad_request(
                    "secret token contains unallowed characters",
                ));
            }
        }
        self.drop_pending_if_asked(body);
        // Telegram: an empty URL removes the webhook.
        self.webhook = (!url.is_empty()).then(|| (url.to_owned(), secret.map(str::to_owned)));
        Ok(json!(true))
    }

    fn set_my_commands(&mut self, body: &Value) -> Answer {
        let commands = body
            .get("commands")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &commands {
            let name = c.get("command").and_then(Value::as_str).unwrap_or_default();
            let name_ok = (1..=32).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            let description = c
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !name_ok {
                return Err(Failure::bad_request("BOT_COMMAND_INVALID"));
            }
            if !(1..=256).contains(&description.chars().count()) {
                return Err(Failure::bad_request("BOT_COMMAND_DESCRIPTION_INVALID"));
            }
        }
        self.commands = commands;
        Ok(json!(true))
    }

    fn drop_pending_if_asked(&mut self, body: &Value) {
        if body.get("drop_pending_updates").and_then(Value::as_bool) == Some(true) {
            self.queue.clear();
        }
    }

    /// Confirms updates as `getUpdates(offset)` does: a positive offset confirms every
    /// delivered update below it; a negative one forgets all but the last `-offset`.
    fn acknowledge(&mut self, offset: i64) {
        if offset > 0 {
            self.queue
                .retain(|q| !(q.delivered && update_id(&q.update) < offset));
        } else if offset < 0 {
            let keep = usize::try_from(offset.unsigned_abs()).unwrap_or(usize::MAX);
            let excess = self.queue.len().saturating_sub(keep);
            self.queue.drain(..excess);
        }
    }

    fn take_batch(&mut self, limit: usize) -> Vec<Value> {
        self.queue
            .iter_mut()
            .take(limit)
            .map(|q| {
                q.delivered = true;
                q.update.clone()
            })
            .collect()
    }
}

/// The single handler: `/bot<TOKEN>/<Method>`, any HTTP method, a JSON or multipart body.
async fn serve_call(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = percent_decode(uri.path());
    let (bot, method) = path
        .trim_matches('/')
        .split_once('/')
        .unwrap_or((&path, ""));
    let method = canonical(method);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = parse_body(content_type.unwrap_or_default(), &body);
    let index = {
        let mut w = inner.world();
        w.calls.push(Call {
            method: method.clone(),
            body: parsed.clone().unwrap_or_default(),
            rejected: false,
        });
        w.calls.len() - 1
    };
    let answer = if bot.strip_prefix("bot") != Some(inner.token.as_str()) {
        Err(Failure::new(401, "Unauthorized"))
    } else if let Some(secs) = inner.take_rate_limit(&method) {
        Err(Failure {
            code: 429,
            description: format!("Too Many Requests: retry after {secs}"),
            parameters: Some(json!({ "retry_after": secs })),
        })
    } else {
        match parsed {
            None => Err(Failure::bad_request("can't parse request JSON object")),
            Some(body) if method == "getUpdates" => get_updates(&inner, &body).await,
            Some(body) => inner.world().answer(&method, &body),
        }
    };
    match answer {
        Ok(result) => Json(json!({ "ok": true, "result": result })).into_response(),
        Err(failure) => {
            inner.world().calls[index].rejected = true;
            let mut body = json!({
                "ok": false,
                "error_code": failure.code,
                "description": failure.description,
            });
            if let Some(parameters) = failure.parameters {
                body["parameters"] = parameters;
            }
            // Never a 5xx (see the module docs); unknown codes fall back to 400.
            let status = StatusCode::from_u16(failure.code)
                .ok()
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_REQUEST);
            (status, Json(body)).into_response()
        }
    }
}

/// `getUpdates`: confirms by `offset`, then answers the queued updates, long-polling up to
/// `min(timeout, 5)` seconds when there are none.
async fn get_updates(inner: &Inner, body: &Value) -> Answer {
    let offset = body.get("offset").and_then(int).unwrap_or(0);
    let limit = body.get("limit").and_then(int).unwrap_or(100).clamp(1, 100);
    let limit = usize::try_from(limit).unwrap_or(100);
    let timeout = body.get("timeout").and_then(int).unwrap_or(0).max(0);
    let deadline = Instant::now()
        + Duration::from_secs(u64::try_from(timeout).unwrap_or(0).min(MAX_POLL_SECS));
    {
        let mut w = inner.world();
        if w.webhook.is_some() {
            return Err(Failure::new(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use \
                 deleteWebhook to delete the webhook first",
            ));
        }
        w.acknowledge(offset);
    }
    loop {
        // Registered before looking at the queue, so a push in between still wakes us.
        let pushed = inner.pushed.notified();
        tokio::pin!(pushed);
        pushed.as_mut().enable();
        let batch = inner.world().take_batch(limit);
        if !batch.is_empty() || Instant::now() >= deadline {
            return Ok(Value::Array(batch));
        }
        let _ = tokio::time::timeout_at(deadline, pushed).await;
    }
}

/// The call's parameters as a JSON object: from a JSON body (empty = `{}`), or from
/// `multipart/form-data` (teloxide sends `setWebhook` so), where nested values are JSON text.
fn parse_body(content_type: &str, body: &[u8]) -> Option<Value> {
    if content_type.starts_with("multipart/form-data") {
        return parse_multipart(content_type, body);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(json!({}));
    }
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

fn parse_multipart(content_type: &str, body: &[u8]) -> Option<Value> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let text = String::from_utf8_lossy(body);
    let mut fields = serde_json::Map::new();
    for part in text.split(&format!("--{boundary}")).skip(1) {
        if part.starts_with("--") {
            break; // the closing delimiter
        }
        let (head, value) = part.split_once("\r\n\r\n")?;
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        let params = || head.split([';', '\n']).map(str::trim);
        let name = params()
            .find_map(|p| p.strip_prefix("name="))?
            .trim_matches('"');
        let value = if params().any(|p| p.starts_with("filename=")) {
            json!("(file)")
        } else if value.starts_with(['[', '{']) || value == "true" || value == "false" {
            serde_json::from_str(value).unwrap_or_else(|_| json!(value))
        } else {
            // Numbers stay text: `int` reads both, and a text field is never turned numeric.
            json!(value)
        };
        fields.insert(name.to_owned(), value);
    }
    Some(Value::Object(fields))
}

// ---- JSON builders ----

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn user(id: u64) -> Value {
    json!({
        "id": id,
        "is_bot": false,
        "first_name": format!("User {id}"),
        "username": format!("user{id}"),
        "language_code": "en",
    })
}

fn bot_user() -> Value {
    json!({
        "id": FakeTelegram::BOT_ID,
        "is_bot": true,
        "first_name": "BoxedClaw Test",
        "username": FakeTelegram::BOT_USERNAME,
    })
}

fn me() -> Value {
    let mut me = bot_user();
    me["can_join_groups"] = json!(true);
    me["can_read_all_group_messages"] = json!(false);
    me["supports_inline_queries"] = json!(false);
    me["can_connect_to_business"] = json!(false);
    me["has_main_web_app"] = json!(false);
    me
}

fn private_chat(user_id: u64) -> Value {
    json!({
        "id": user_id,
        "type": "private",
        "first_name": format!("User {user_id}"),
        "username": format!("user{user_id}"),
    })
}

fn is_forum(chat: &Value) -> bool {
    chat.get("is_forum").and_then(Value::as_bool) == Some(true)
}

/// The service message that created forum topic `topic`: Telegram sets it as
/// `reply_to_message` of every topic message that is not an explicit reply.
fn topic_root(chat: &Value, topic: i32) -> Value {
    json!({
        "message_id": topic,
        "from": { "id": FORUM_ADMIN_ID, "is_bot": false, "first_name": "Forum admin" },
        "date": now(),
        "chat": chat,
        "message_thread_id": topic,
        "forum_topic_created": { "name": format!("Topic {topic}"), "icon_color": 7_322_096 },
    })
}

/// Telegram never nests `reply_to_message` inside a `reply_to_message`.
fn without_reply(mut message: Value) -> Value {
    if let Some(m) = message.as_object_mut() {
        m.remove("reply_to_message");
    }
    message
}

fn update_id(update: &Value) -> i64 {
    update.get("update_id").and_then(Value::as_i64).unwrap_or(0)
}

/// An integer given as a JSON number or a numeric string (both are accepted by Telegram).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The `reply_markup` of a call, when it is an inline keyboard (the only kind a message
/// shows); a JSON-encoded string is accepted like Telegram does.
fn inline_markup(body: &Value) -> Option<Value> {
    let markup = match body.get("reply_markup")? {
        Value::String(s) => serde_json::from_str(s).ok()?,
        v => v.clone(),
    };
    markup.get("inline_keyboard")?.as_array()?;
    Some(markup)
}

fn set_markup(posted: &mut Posted, markup: Option<Value>) {
    posted.shown.buttons = markup
        .as_ref()
        .and_then(|m| m.get("inline_keyboard"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .map(|b| {
            let field = |k: &str| {
                b.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("text"), field("callback_data"))
        })
        .collect();
    // Telegram omits an empty keyboard from the message.
    posted.markup = markup.filter(|_| !posted.shown.buttons.is_empty());
}

/// The text users see for a send or edit, checked like Telegram checks it.
fn visible_text(body: &Value) -> Result<String, Failure> {
    let raw = body.get("text").and_then(Value::as_str).unwrap_or_default();
    let html = body
        .get("parse_mode")
        .and_then(Value::as_str)
        .is_some_and(|m| m.eq_ignore_ascii_case("html"));
    let text = if html {
        html_to_text(raw)
    } else {
        raw.to_owned()
    };
    if text.trim().is_empty() {
        return Err(Failure::bad_request("message text is empty"));
    }
    if text.encode_utf16().count() > MAX_TEXT_UTF16 {
        return Err(Failure::bad_request("message is too long"));
    }
    Ok(text)
}

/// HTML parse mode as displayed: tags dropped, entities decoded.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.find(['<', '&']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with('<') {
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
            continue;
        }
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let c = match &rest[1..end] {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                e => e
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| e.strip_prefix('#').map(str::parse))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `bot_command` and `mention` entities as Telegram marks them (offsets in UTF-16 units).
fn entities(text: &str) -> Vec<Value> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut utf16 = 0;
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let at_word_start = prev.is_none_or(char::is_whitespace);
        if at_word_start && (c == '/' || c == '@') {
            let tail = &text[i + 1..];
            let mut len = tail.find(|ch: char| !word(ch)).unwrap_or(tail.len());
            // `/cmd@bot` is one command entity.
            if c == '/' && len > 0 && tail[len..].starts_with('@') {
                let after = &tail[len + 1..];
                let bot = after.find(|ch: char| !word(ch)).unwrap_or(after.len());
                if bot > 0 {
                    len += 1 + bot;
                }
            }
            if len > 0 {
                let kind = if c == '/' { "bot_command" } else { "mention" };
                let length = 1 + tail[..len].encode_utf16().count();
                found.push(json!({ "type": kind, "offset": utf16, "length": length }));
                // Skip the entity's ASCII tail.
                for _ in 0..len {
                    chars.next();
                }
                utf16 += length;
                prev = Some('x');
                continue;
            }
        }
        utf16 += c.len_utf16();
        prev = Some(c);
    }
    found
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical spelling of a method name that arrived in any case.
fn canonical(method: &str) -> String {
    if let Some(known) = METHODS.iter().find(|m| m.eq_ignore_ascii_case(method)) {
        return (*known).to_owned();
    }
    let mut chars = method.chars();
    chars
        .next()
        .map(|first| first.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

// ---- The shared conformance suite ----

impl PlatformFake for FakeTelegram {
    fn user_id(&self, n: u32) -> String {
        (1000 + u64::from(n)).to_string()
    }

    fn direct_message<'a>(&'a self, user: &'a str, text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let id = user.parse().expect("a Telegram user id is a number");
            self.private_message(id, text);
        })
    }

    fn shown<'a>(&'a self, conversation: &'a ConversationKey) -> BoxFuture<'a, Vec<Shown>> {
        Box::pin(async move {
            let (chat, thread) = place(conversation);
            self.chat(chat)
                .into_iter()
                .filter(|m| m.thread == thread)
                .map(|m| Shown {
                    id: m.message_id.to_string(),
                    text: m.text,
                    buttons: m.buttons.into_iter().map(|(label, _)| label).collect(),
                })
                .collect()
        })
    }

    fn click<'a>(
        &'a self,
        conversation: &'a ConversationKey,
        approval: &'a ApprovalId,
        user: &'a str,
        approve: bool,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (chat, thread) = place(conversation);
            let label = if approve { "Approve" } else { "Deny" };
            let (message_id, data) = self
                .chat(chat)
                .into_iter()
                .filter(|m| {
                    m.thread == thread
                        && m.text.contains(approval.as_str())
                        && !m.buttons.is_empty()
                })
                .find_map(|m| {
                    let (_, data) = m.buttons.iter().find(|(l, _)| l.starts_with(label))?;
                    Some((m.message_id, data.clone()))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "no {label} button shown for approval {} in {conversation:?}",
                        approval.as_str()
                    )
                });
            let user = user.parse().expect("a Telegram user id is a number");
            FakeTelegram::click(self, user, chat, message_id, &data);
        })
    }
}

/// Chat id and topic of a conversation key.
fn place(conversation: &ConversationKey) -> (i64, Option<i32>) {
    let chat = conversation
        .channel
        .parse()
        .expect("a Telegram chat id is a number");
    let thread = conversation
        .thread
        .as_deref()
        .map(|t| t.parse().expect("a Telegram topic id is a number"));
    (chat, thread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide::prelude::*;
    use teloxide::types::{
        InlineKeyboardButton, InlineKeyboardMarkup, MessageId, ThreadId, UpdateKind,
    };
    use teloxide::{ApiError, RequestError};

    const TOKEN: &str = "123:ABC";
    const GROUP: i64 = -1_001_000_000_005;
    const FORUM: i64 = -1_001_000_000_009;

    async fn setup() -> (Arc<FakeTelegram>, Bot) {
        let fake = FakeTelegram::start(TOKEN).await;
        let bot = Bot::new(TOKEN).set_api_url(fake.api_url().parse().unwrap());
        (fake, bot)
    }

    fn keyboard() -> InlineKeyboardMarkup {
        InlineKeyboardMarkup::new(vec![vec![
            InlineKeyboardButton::callback("Approve", "a:1"),
            InlineKeyboardButton::callback("Deny", "d:1"),
        ]])
    }

    #[tokio::test]
    async fn get_me_parses() {
        let (fake, bot) = setup().await;
        let me = bot.get_me().await.unwrap();
        assert_eq!(me.id.0, FakeTelegram::BOT_ID);
        assert_eq!(me.username(), FakeTelegram::BOT_USERNAME);
        assert!(me.is_bot);
        let info = bot.get_webhook_info().await.unwrap();
        assert_eq!(info.url, None);
        assert_eq!(fake.calls()[0].method, "getMe");
        assert_eq!(fake.calls()[1].method, "getWebhookInfo");
    }

    #[tokio::test]
    async fn send_and_edit_show_in_the_chat() {
        let (fake, bot) = setup().await;
        fake.group_message(GROUP, Some(7), 1001, "hi @boxedclaw_test_bot");
        let sent = bot
            .send_message(ChatId(GROUP), "approve?")
            .message_thread_id(ThreadId(MessageId(7)))
            .reply_markup(keyboard())
            .await
            .unwrap();
        assert_eq!(sent.text(), Some("approve?"));
        assert_eq!(sent.thread_id, Some(ThreadId(MessageId(7))));
        assert!(sent.is_topic_message);
        assert_eq!(sent.from.as_ref().unwrap().id.0, FakeTelegram::BOT_ID);
        assert_eq!(sent.reply_markup(), Some(&keyboard()));
        let shown = BotMessage {
            message_id: sent.id.0,
            chat_id: GROUP,
            thread: Some(7),
            text: "approve?".to_owned(),
            buttons: vec![
                ("Approve".into(), "a:1".into()),
                ("Deny".into(), "d:1".into()),
            ],
        };
        assert_eq!(fake.chat(GROUP), vec![shown.clone()]);

        let edited = bot
            .edit_message_text(ChatId(GROUP), sent.id, "approved")
            .await
            .unwrap();
        assert_eq!(edited.text(), Some("approved"));
        assert_eq!(edited.reply_markup(), None);
        let now = BotMessage {
            text: "approved".into(),
            buttons: vec![],
            ..shown.clone()
        };
        assert_eq!(fake.chat(GROUP), vec![now]);

        bot.edit_message_reply_markup(ChatId(GROUP), sent.id)
            .reply_markup(keyboard())
            .await
            .unwrap();
        assert_eq!(fake.chat(GROUP)[0].buttons.len(), 2);
        let err = bot
            .edit_message_text(ChatId(GROUP), MessageId(999), "x")
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageToEditNotFound)),
            "{err:?}"
        );
        assert_eq!(fake.calls_to("editmessagetext").len(), 1);
    }

    #[tokio::test]
    async fn unknown_chats_and_bad_texts_are_rejected_like_telegram() {
        let (fake, bot) = setup().await;
        let err = bot.send_message(ChatId(42), "hi").await.unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::ChatNotFound)),
            "{err:?}"
        );
        fake.private_message(42, "hello");
        let err = bot.send_message(ChatId(42), "  ").await.unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageTextIsEmpty)),
            "{err:?}"
        );
        let err = bot
            .send_message(ChatId(42), "🦀".repeat(2049))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageIsTooLong)),
            "{err:?}"
        );
        bot.send_message(ChatId(42), "🦀".repeat(2048))
            .await
            .unwrap();
        let html = bot
            .send_message(ChatId(42), "<b>a</b> &lt;b&gt; &amp;")
            .parse_mode(teloxide::types::ParseMode::Html)
            .await
            .unwrap();
        assert_eq!(html.text(), Some("a <b> &"));
        assert_eq!(fake.calls().iter().filter(|c| c.rejected).count(), 3);
        assert_eq!(fake.calls_to("sendMessage").len(), 2);
    }

    #[tokio::test]
    async fn updates_parse_and_offsets_acknowledge_them() {
        let (fake, bot) = setup().await;
        let first = fake.private_message(1001, "/start now");
        fake.group_message(FORUM, Some(3), 1002, "in a topic @boxedclaw_test_bot");
        let sent = bot
            .send_message(ChatId(FORUM), "prompt")
            .message_thread_id(ThreadId(MessageId(3)));
        let sent = sent.reply_markup(keyboard()).await.unwrap();
        fake.group_reply_to(FORUM, Some(3), 1002, "a reply", sent.id.0);
        fake.click(1002, FORUM, sent.id.0, "forged");
        assert_eq!(fake.pending_updates(), 4);

        let updates = bot.get_updates().timeout(0).await.unwrap();
        assert_eq!(updates.len(), 4);
        let UpdateKind::Message(dm) = &updates[0].kind else {
            panic!("{:?}", updates[0])
        };
        assert_eq!(dm.text(), Some("/start now"));
        assert!(dm.chat.is_private());
        assert_eq!(dm.chat.id.0, 1001);
        assert_eq!(dm.from.as_ref().unwrap().id.0, 1001);
        let entities = dm.parse_entities().unwrap();
        assert_eq!(entities[0].text(), "/start");

        let UpdateKind::Message(topic) = &updates[1].kind else {
            panic!("{:?}", updates[1])
        };
        assert_eq!(topic.text(), Some("in a topic @boxedclaw_test_bot"));
        assert!(topic.chat.is_supergroup());
        assert_eq!(topic.thread_id, Some(ThreadId(MessageId(3))));
        assert!(topic.is_topic_message);
        let root = topic.reply_to_message().unwrap();
        assert!(root.forum_topic_created().is_some());
        assert_eq!(
            topic.parse_entities().unwrap()[0].text(),
            "@boxedclaw_test_bot"
        );

        let UpdateKind::Message(reply) = &updates[2].kind else {
            panic!("{:?}", updates[2])
        };
        let replied = reply.reply_to_message().unwrap();
        assert_eq!(replied.id, sent.id);
        assert_eq!(replied.from.as_ref().unwrap().id.0, FakeTelegram::BOT_ID);

        let UpdateKind::CallbackQuery(q) = &updates[3].kind else {
            panic!("{:?}", updates[3])
        };
        assert_eq!(q.data.as_deref(), Some("forged"));
        assert_eq!(q.from.id.0, 1002);
        let clicked = q.regular_message().unwrap();
        assert_eq!(clicked.id, sent.id);
        assert_eq!(clicked.thread_id, Some(ThreadId(MessageId(3))));
        assert_eq!(clicked.reply_markup(), Some(&keyboard()));

        // Unacknowledged updates come again; an offset confirms them for good.
        assert_eq!(bot.get_updates().timeout(0).await.unwrap().len(), 4);
        let next = updates[3].id.as_offset();
        assert!(
            bot.get_updates()
                .offset(next)
                .timeout(0)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(fake.pending_updates(), 0);

        // A re-sent old update id is still delivered once.
        fake.push_update(first);
        let again = bot.get_updates().offset(next).timeout(0).await.unwrap();
        assert_eq!(again[0].id, updates[0].id);
    }

    #[tokio::test]
    async fn long_polls_wake_on_a_push() {
        let (fake, bot) = setup().await;
        let pusher = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            pusher.private_message(1001, "late");
        });
        let started = std::time::Instant::now();
        let updates = bot.get_updates().timeout(3).await.unwrap();
        assert_eq!(updates.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(2));
        let started = std::time::Instant::now();
        let offset = updates[0].id.as_offset();
        assert!(
            bot.get_updates()
                .offset(offset)
                .timeout(1)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn rate_limits_answer_retry_after_once() {
        let (fake, bot) = setup().await;
        fake.private_message(1001, "hi");
        fake.rate_limit_next("sendMessage", 1);
        let err = bot.send_message(ChatId(1001), "one").await.unwrap_err();
        assert!(
            matches!(err, RequestError::RetryAfter(s) if s.seconds() == 1),
            "{err:?}"
        );
        assert!(fake.chat(1001).is_empty());
        bot.send_message(ChatId(1001), "two").await.unwrap();
        assert_eq!(fake.chat(1001).len(), 1);
        let sends: Vec<bool> = fake
            .calls()
            .into_iter()
            .filter(|c| c.method == "sendMessage")
            .map(|c| c.rejected)
            .collect();
        assert_eq!(sends, [true, false]);
        assert_eq!(fake.calls_to("sendMessage").len(), 1);
    }

    #[tokio::test]
    async fn wrong_tokens_and_unknown_methods_get_api_errors() {
        let (fake, _) = setup().await;
        let stranger = Bot::new("123:WRONG").set_api_url(fake.api_url().parse().unwrap());
        let started = std::time::Instant::now();
        let err = stranger.get_me().await.unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::InvalidToken)),
            "{err:?}"
        );
        let err = stranger.send_message(ChatId(1), "x").await.unwrap_err();
        assert!(matches!(err, RequestError::Api(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a 5xx would have slept"
        );
        assert!(fake.calls().iter().all(|c| c.rejected));
    }

    #[tokio::test]
    async fn webhooks_and_commands_are_recorded() {
        let (fake, bot) = setup().await;
        bot.set_webhook("https://example.test/tg".parse().unwrap())
            .secret_token("s3cr3t-_x".to_owned())
            .await
            .unwrap();
        assert_eq!(
            fake.webhook(),
            Some((
                "https://example.test/tg".to_owned(),
                Some("s3cr3t-_x".to_owned())
            ))
        );
        let info = bot.get_webhook_info().await.unwrap();
        assert_eq!(info.url.unwrap().as_str(), "https://example.test/tg");
        let err = bot.get_updates().timeout(0).await.unwrap_err();
        assert!(matches!(err, RequestError::Api(_)), "{err:?}");
        let err = bot
            .set_webhook("https://example.test/tg".parse().unwrap())
            .secret_token("no/slashes".to_owned())
            .await
            .unwrap_err();
        assert!(matches!(err, RequestError::Api(_)), "{err:?}");
        bot.delete_webhook().await.unwrap();
        assert_eq!(fake.webhook(), None);

        let commands = vec![teloxide::types::BotCommand::new("status", "Show status")];
        bot.set_my_commands(commands).await.unwrap();
        assert_eq!(bot.get_my_commands().await.unwrap()[0].command, "status");
        let built = fake.private_message_update(1001, "not queued");
        assert_eq!(fake.pending_updates(), 0);
        assert!(built["update_id"].as_u64().is_some());
        bot.send_chat_action(ChatId(1001), teloxide::types::ChatAction::Typing)
            .await
            .unwrap();
        let sent = bot.send_message(ChatId(1001), "bye").await.unwrap();
        bot.answer_callback_query(teloxide::types::CallbackQueryId("1".into()))
            .await
            .unwrap();
        bot.delete_message(ChatId(1001), sent.id).await.unwrap();
        assert!(fake.chat(1001).is_empty());
    }

    #[tokio::test]
    async fn wait_until_returns_the_found_value() {
        let (fake, bot) = setup().await;
        fake.private_message(1001, "hi");
        tokio::spawn(async move { bot.send_message(ChatId(1001), "reply").await.unwrap() });
        let text = fake
            .wait_until(Duration::from_secs(5), "a reply", |f| {
                f.chat(1001).first().map(|m| m.text.clone())
            })
            .await;
        assert_eq!(text, "reply");
    }

    #[tokio::test]
    async fn platform_fake_clicks_the_named_button() {
        use boxedclaw_protocol::ids::Platform;
        let (fake, bot) = setup().await;
        let alice = fake.user_id(1);
        fake.direct_message(&alice, "hello").await;
        let approval = ApprovalId::new("c0ffee000001".to_owned()).unwrap();
        let prompt = format!("run it? ({approval})");
        bot.send_message(ChatId(1001), prompt.clone())
            .reply_markup(keyboard())
            .await
            .unwrap();
        let conv = ConversationKey::new(Platform::Telegram, None, "1001", None).unwrap();
        let shown = fake.shown(&conv).await;
        assert_eq!(shown[0].text, prompt);
        assert_eq!(shown[0].buttons, ["Approve", "Deny"]);
        PlatformFake::click(&*fake, &conv, &approval, &alice, false).await;
        let updates = bot.get_updates().timeout(0).await.unwrap();
        let UpdateKind::CallbackQuery(q) = &updates[1].kind else {
            panic!("{updates:?}")
        };
        assert_eq!(q.data.as_deref(), Some("d:1"));
        assert_eq!(q.from.id.0, 1001);
    }

    #[test]
    fn entities_count_utf16_units() {
        let found = entities("🦀 /go@bot x @me");
        assert_eq!(
            found[0],
            json!({"type": "bot_command", "offset": 3, "length": 7})
        );
        assert_eq!(
            found[1],
            json!({"type": "mention", "offset": 13, "length": 3})
        );
        assert!(entities("a/b e@mail").is_empty());
    }
}
