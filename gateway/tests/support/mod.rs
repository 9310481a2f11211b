//! Test support: a fake OpenAI-compatible LLM server on 127.0.0.1:0, and helpers to find the
//! agent binary and build configs.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};

pub mod chat;
pub mod flows;
pub mod in_process;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A tool call.
    Tool {
        name: &'static str,
        arguments: String,
    },
    /// A final text; `{last_tool_result}` is replaced by the last tool message's content.
    Text(String),
}

pub fn tool(name: &'static str, arguments: Value) -> Reply {
    Reply::Tool {
        name,
        arguments: arguments.to_string(),
    }
}

pub fn text(t: &str) -> Reply {
    Reply::Text(t.to_owned())
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub body: Value,
    pub authorization: Option<String>,
}

/// Scripts keyed by the first user message of a conversation; the step is the number of
/// assistant messages already in the request, so each conversation advances independently.
#[derive(Default)]
struct Inner {
    scripts: HashMap<String, Vec<Reply>>,
    requests: Vec<Recorded>,
}

#[derive(Clone)]
pub struct FakeLlm {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl FakeLlm {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { inner, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn script(&self, first_user_message: &str, replies: Vec<Reply>) {
        self.inner
            .lock()
            .unwrap()
            .scripts
            .insert(first_user_message.to_owned(), replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Requests whose first user message is `first`.
    pub fn requests_for(&self, first: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .map(|r| r.body)
            .filter(|b| first_user(b) == first)
            .collect()
    }

    /// The content of every tool message the model was sent for conversation `first`.
    pub fn tool_results(&self, first: &str) -> Vec<String> {
        let last = self.requests_for(first).pop().unwrap_or(Value::Null);
        last["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["role"] == "tool")
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

fn first_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn complete(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let mut inner = inner.lock().unwrap();
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    inner.requests.push(Recorded {
        body: body.clone(),
        authorization,
    });
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let step = messages.iter().filter(|m| m["role"] == "assistant").count();
    let script = inner
        .scripts
        .get(&first_user(&body))
        .cloned()
        .unwrap_or_default();
    let reply = script
        .get(step)
        .cloned()
        .unwrap_or_else(|| text("(script finished)"));
    let message = match reply {
        Reply::Tool { name, arguments } => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": format!("call_{step}"), "type": "function",
                            "function": {"name": name, "arguments": arguments}}]
        }),
        Reply::Text(t) => {
            let last_tool = messages
                .iter()
                .rev()
                .find(|m| m["role"] == "tool")
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default();
            json!({"role": "assistant", "content": t.replace("{last_tool_result}", last_tool)})
        }
    };
    Json(json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "system_fingerprint": "ignored-extra-field"
    }))
}

/// The hostile test agent, written as an executable script into `dir`.
pub fn hostile_agent(dir: &Path) -> PathBuf {
    let agent = dir.join("hostile-agent");
    std::fs::write(&agent, flows::HOSTILE_AGENT).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    agent
}

/// The agent binary cargo built for this workspace (`cargo build --workspace --bins`).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let agent = dir.join("boxedclaw-agent");
    assert!(
        agent.is_file(),
        "{} missing: build it first with `cargo build --workspace --bins`",
        agent.display()
    );
    agent
}

/// A fresh directory with `workspace/`, `data/` and a config file; returns (dir, config path).
pub fn test_dirs(extra_toml: &str, agent: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("boxedclaw.toml");
    // The namespace backend unless the caller names another.
    let sandbox = if extra_toml.contains("sandbox =") {
        ""
    } else {
        "sandbox = \"namespace\"\n"
    };
    // Workspace quotas (a loop-mounted filesystem per workspace) have tests of their own; the
    // others keep plain directories, which they inspect after the gateway has stopped.
    let extra_toml = if extra_toml.contains("workspace_mib") {
        extra_toml.to_owned()
    } else if extra_toml.contains("[limits]\n") {
        extra_toml.replacen("[limits]\n", "[limits]\nworkspace_mib = 0\n", 1)
    } else {
        format!("{extra_toml}\n[limits]\nworkspace_mib = 0\n")
    };
    let toml = format!(
        "{sandbox}workspace = \"{}\"\ndata_dir = \"{}\"\n{}\n[agent]\nbinary = \"{}\"\n",
        dir.path().join("workspace").display(),
        dir.path().join("data").display(),
        extra_toml,
        agent.display()
    );
    std::fs::write(&config, toml).unwrap();
    (dir, config)
}

/// A random canary that looks like a provider key.
pub fn canary() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    format!("sk-canary{}", hex::encode(b))
}

/// Extra config selecting the store under test: SQLite in the data dir (empty), or a fresh
/// PostgreSQL database when `BOXEDCLAW_TEST_DATABASE_URL` is set.
pub async fn database_toml() -> String {
    match std::env::var("BOXEDCLAW_TEST_DATABASE_URL") {
        Ok(admin_url) => format!(
            "database_url = \"{}\"\n",
            fresh_postgres_database(&admin_url).await
        ),
        Err(_) => String::new(),
    }
}

/// Creates an empty schema in the database `admin_url` names and returns a URL whose
/// connections use it (through `search_path`), so every test has a store of its own.
async fn fresh_postgres_database(admin_url: &str) -> String {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let name = format!("boxedclaw_e2e_{}", hex::encode(b));
    // The name is ours: a fixed prefix and hex digits.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    format!("{admin_url}{sep}options=-c%20search_path%3D{name}")
}

/// The stored state of an approval, read straight from the store the test used.
pub async fn approval_state(dir: &tempfile::TempDir, database_toml: &str, id: &str) -> String {
    let store = match database_toml.split('"').nth(1) {
        Some(url) => boxedclaw_gateway::store::Store::open_url(url)
            .await
            .unwrap(),
        None => boxedclaw_gateway::store::Store::open_sqlite(&dir.path().join("data/boxedclaw.db"))
            .await
            .unwrap(),
    };
    let id = boxedclaw_protocol::ids::ApprovalId::new(id).unwrap();
    let row = store.approval(&id).await.unwrap().unwrap();
    format!("{:?}", row.state).to_lowercase()
}
