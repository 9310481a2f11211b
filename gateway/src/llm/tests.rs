//! Client tests against a fake OpenAI-compatible server on `127.0.0.1:0`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use boxedclaw_protocol::ToolCallId;
use boxedclaw_protocol::chat::{ChatMessage, Role, TokenUsage, ToolCall};
use boxedclaw_protocol::tools::ToolName;
use serde_json::{Value, json};

use super::*;
use crate::config::LlmConfig;
use crate::secrets::Secret;

const KEY: &str = "sk-test-CANARY-0123456789abcdefghij";

/// One scripted answer of the fake server.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }
    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// A request the fake server received.
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

/// A fake OpenAI-compatible server: answers each request with the next scripted reply (500 when
/// the script is exhausted) and records what it received.
struct Fake {
    base_url: String,
    script: Arc<Script>,
    _tasks: tokio_util::task::TaskTracker,
}

impl Fake {
    async fn start(replies: Vec<Reply>) -> Self {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            seen: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base_url,
            script,
            _tasks: tasks,
        }
    }

    fn requests(&self) -> usize {
        self.script.seen.lock().unwrap().len()
    }

    fn seen<T>(&self, f: impl FnOnce(&[Seen]) -> T) -> T {
        f(&self.script.seen.lock().unwrap())
    }

    fn client(&self, key: Option<&str>, max_retries: u32) -> LlmClient {
        self.client_with_timeout(key, max_retries, Duration::from_secs(5))
    }

    fn client_with_timeout(
        &self,
        key: Option<&str>,
        max_retries: u32,
        timeout: Duration,
    ) -> LlmClient {
        let cfg = LlmConfig {
            base_url: self.base_url.clone(),
            model: "test-model".into(),
            api_key: key.map(|k| Arc::new(Secret::new(k.to_owned()))),
            timeout,
            max_retries,
            max_tokens: 256,
        };
        LlmClient::new(&cfg)
            .unwrap()
            .with_test_limits(Duration::from_millis(20), 4096)
    }
}

async fn answer(
    State(script): State<Arc<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let Some(reply) = script.replies.lock().unwrap().pop_front() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "script exhausted").into_response();
    };
    tokio::time::sleep(reply.delay).await;
    let mut resp = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (name, value) in reply.headers {
        resp.headers_mut().insert(name, value.parse().unwrap());
    }
    resp
}

fn completion(message: Value, usage: Value) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    })
}

fn hello() -> Reply {
    Reply::ok(completion(
        json!({"role": "assistant", "content": "Hello!"}),
        json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}),
    ))
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::text(Role::System, "sys"),
        ChatMessage::text(Role::User, text),
    ]
}

async fn ask(client: &LlmClient) -> Result<Completion, LlmError> {
    client
        .complete(CompletionRequest {
            messages: &user("hi"),
            tools: &[],
        })
        .await
}

#[tokio::test]
async fn plain_answer_with_usage() {
    let fake = Fake::start(vec![hello()]).await;
    let c = ask(&fake.client(Some(KEY), 3)).await.unwrap();
    assert_eq!(c.content.as_deref(), Some("Hello!"));
    assert!(c.tool_calls.is_empty());
    assert_eq!(
        c.usage,
        TokenUsage {
            prompt_tokens: 12,
            completion_tokens: 3
        }
    );
}

#[tokio::test]
async fn tool_call_answer() {
    let message = json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{"id": "call_abc", "type": "function",
                        "function": {"name": "shell", "arguments": "{\"command\":\"ls\"}"}}]
    });
    let fake = Fake::start(vec![Reply::ok(completion(message, json!({})))]).await;
    let c = ask(&fake.client(None, 0)).await.unwrap();
    assert_eq!(c.content, None);
    assert_eq!(
        c.tool_calls,
        [ProviderToolCall {
            provider_id: "call_abc".into(),
            name: "shell".into(),
            arguments: r#"{"command":"ls"}"#.into()
        }]
    );
    assert_eq!(c.usage, TokenUsage::default());
}

#[tokio::test]
async fn request_body_and_headers() {
    let fake = Fake::start(vec![hello(), hello()]).await;
    let id = ToolCallId::new("t1").unwrap();
    let mut messages = user("list files");
    messages.push(ChatMessage {
        role: Role::Assistant,
        content: None,
        tool_calls: vec![ToolCall {
            id: id.clone(),
            name: "file_list".into(),
            arguments: "{}".into(),
        }],
        tool_call_id: None,
    });
    messages.push(ChatMessage::tool_result(id, "a.txt"));
    let tools = [ToolName::Shell, ToolName::FileList];
    let client = fake.client(Some(KEY), 0);
    client
        .complete(CompletionRequest {
            messages: &messages,
            tools: &tools,
        })
        .await
        .unwrap();
    fake.client(None, 0)
        .complete(CompletionRequest {
            messages: &messages,
            tools: &[],
        })
        .await
        .unwrap();

    fake.seen(|seen| {
        let first = &seen[0];
        assert_eq!(first.method, Method::POST);
        assert_eq!(first.path, "/v1/chat/completions");
        assert_eq!(
            first.headers["authorization"],
            format!("Bearer {KEY}").as_str()
        );
        assert_eq!(first.headers["content-type"], "application/json");
        let body = first.json();
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["stream"], false);
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[1], json!({"role": "user", "content": "list files"}));
        assert_eq!(msgs[2]["tool_calls"][0]["id"], "t1");
        assert_eq!(msgs[2]["tool_calls"][0]["function"]["name"], "file_list");
        assert_eq!(
            msgs[3],
            json!({"role": "tool", "content": "a.txt", "tool_call_id": "t1"})
        );
        assert_eq!(
            body["tools"][0],
            json!({"type": "function", "function": {
                "name": "shell",
                "description": ToolName::Shell.description(),
                "parameters": ToolName::Shell.parameters_schema(),
            }})
        );
        assert_eq!(body["tools"].as_array().unwrap().len(), 2);

        // Without a key: no Authorization header, and no tools key when there are none.
        assert!(seen[1].headers.get("authorization").is_none());
        assert!(seen[1].json().get("tools").is_none());
    });
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_waited_out() {
    let fake = Fake::start(vec![
        Reply::status(429, r#"{"error":{"message":"slow down"}}"#).header("retry-after", "1"),
        hello(),
    ])
    .await;
    let start = Instant::now();
    let c = ask(&fake.client(Some(KEY), 3)).await.unwrap();
    assert_eq!(c.content.as_deref(), Some("Hello!"));
    assert_eq!(fake.requests(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn server_error_is_retried() {
    let fake = Fake::start(vec![Reply::status(503, "overloaded"), hello()]).await;
    assert!(ask(&fake.client(Some(KEY), 3)).await.is_ok());
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let slow = || hello().delayed(Duration::from_secs(2));
    let fake = Fake::start(vec![slow(), hello()]).await;
    let client = fake.client_with_timeout(Some(KEY), 1, Duration::from_millis(300));
    assert!(ask(&client).await.is_ok());
    assert_eq!(fake.requests(), 2);

    let fake = Fake::start(vec![slow(), slow()]).await;
    let client = fake.client_with_timeout(Some(KEY), 1, Duration::from_millis(300));
    let err = ask(&client).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout), "{err:?}");
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn retries_stop_at_max_retries_and_bodies_are_redacted() {
    let echo = format!(r#"{{"error":{{"message":"internal error for key {KEY}"}}}}"#);
    let fake = Fake::start(vec![Reply::status(500, &echo), Reply::status(500, &echo)]).await;
    let err = ask(&fake.client(Some(KEY), 1)).await.unwrap_err();
    assert_eq!(fake.requests(), 2);
    let LlmError::Http { status: 500, body } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(body, "internal error for key [REDACTED]");
    assert!(!format!("{err} {err:?}").contains("CANARY"));
}

#[tokio::test]
async fn bad_key_fails_at_once_without_leaking_it() {
    let echo = format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#);
    let fake = Fake::start(vec![Reply::status(401, &echo), hello()]).await;
    let err = ask(&fake.client(Some(KEY), 3)).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Unauthorized { status: 401 }),
        "{err:?}"
    );
    assert_eq!(fake.requests(), 1);
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("CANARY"), "{shown}");
    }
    assert_eq!(
        err.to_string(),
        "LLM provider rejected the API key (HTTP 401): check OPENAI_API_KEY"
    );
}

#[tokio::test]
async fn not_found_and_other_client_errors_fail_at_once() {
    let fake = Fake::start(vec![Reply::status(404, "no such model")]).await;
    let err = ask(&fake.client(Some(KEY), 3)).await.unwrap_err();
    assert!(matches!(err, LlmError::NotFound));
    assert!(err.to_string().contains("OPENAI_BASE_URL and OPENAI_MODEL"));
    assert_eq!(fake.requests(), 1);

    let fake = Fake::start(vec![Reply::status(400, "context\n too   long")]).await;
    let err = ask(&fake.client(Some(KEY), 3)).await.unwrap_err();
    assert!(matches!(&err, LlmError::Http { status: 400, body } if body == "context too long"));
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn long_retry_after_gives_up_without_waiting() {
    let fake = Fake::start(vec![
        Reply::status(429, "{}").header("retry-after", "3600"),
        hello(),
    ])
    .await;
    let start = Instant::now();
    let err = ask(&fake.client(Some(KEY), 3)).await.unwrap_err();
    assert!(matches!(err, LlmError::RateLimited { retry_after } if retry_after.as_secs() == 3600));
    assert_eq!(fake.requests(), 1);
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn malformed_answers_are_invalid_responses() {
    let fake = Fake::start(vec![Reply::status(200, "this is not json {")]).await;
    let err = ask(&fake.client(Some(KEY), 3)).await.unwrap_err();
    assert!(matches!(err, LlmError::InvalidResponse(_)), "{err:?}");
    assert_eq!(fake.requests(), 1);

    let big = completion(
        json!({"role": "assistant", "content": "x".repeat(5000)}),
        json!({}),
    );
    let fake = Fake::start(vec![Reply::ok(big)]).await;
    let err = ask(&fake.client(Some(KEY), 3)).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::InvalidResponse(m) if m.contains("larger than")),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_response_fields_are_ignored() {
    let body = json!({
        "id": "x", "object": "chat.completion", "system_fingerprint": "fp", "provider": "p",
        "choices": [{
            "index": 0, "logprobs": null, "finish_reason": "stop", "native_finish_reason": "end",
            "message": {"role": "assistant", "content": "ok", "refusal": null, "annotations": [],
                        "reasoning": "thinking..."}
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                  "prompt_tokens_details": {"cached_tokens": 0}},
        "x_groq": {"id": "req"}
    });
    let fake = Fake::start(vec![Reply::ok(body)]).await;
    let c = ask(&fake.client(None, 0)).await.unwrap();
    assert_eq!(c.content.as_deref(), Some("ok"));
    assert_eq!(c.usage.total(), 3);
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cfg = LlmConfig {
        base_url: format!("http://{addr}/v1"),
        model: "m".into(),
        api_key: None,
        timeout: Duration::from_secs(5),
        max_retries: 1,
        max_tokens: 1,
    };
    let client = LlmClient::new(&cfg)
        .unwrap()
        .with_test_limits(Duration::from_millis(1), 1024);
    let err = ask(&client).await.unwrap_err();
    assert!(matches!(err, LlmError::Transport(_)), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.starts_with("cannot reach the LLM provider: "),
        "{shown}"
    );
    assert!(shown.contains("127.0.0.1"), "{shown}");
}

#[tokio::test]
async fn probe_lists_models() {
    let fake = Fake::start(vec![
        Reply::ok(json!({"object": "list", "data": [{"id": "test-model"}]})),
        Reply::status(401, "{}"),
    ])
    .await;
    let client = fake.client(Some(KEY), 3);
    client.probe().await.unwrap();
    assert!(matches!(
        client.probe().await,
        Err(LlmError::Unauthorized { status: 401 })
    ));
    fake.seen(|seen| {
        assert_eq!(
            (&seen[0].method, seen[0].path.as_str()),
            (&Method::GET, "/v1/models")
        );
        assert_eq!(
            seen[0].headers["authorization"],
            format!("Bearer {KEY}").as_str()
        );
    });
    assert_eq!(client.model(), "test-model");
    assert!(!format!("{client:?}").contains("CANARY"));
}
