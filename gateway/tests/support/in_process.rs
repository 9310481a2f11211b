//! The real gateway in-process, configured and assembled like `boxedclaw run` (platform
//! channels, web console) from environment variables, with its HTTP server (webhooks,
//! console) on 127.0.0.1:0: for the chat platform and console tests, whose fakes and browser
//! stand in for the platforms and users.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use boxedclaw_gateway::config::{Config, Env};
use boxedclaw_protocol::ids::ConversationKey;
use tokio_util::sync::CancellationToken;

use super::{FakeLlm, agent_binary, test_dirs};

/// How long a test waits for anything to happen.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct RunningGateway {
    pub llm: FakeLlm,
    /// The gateway's HTTP server (health, webhooks).
    pub http: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
}

impl RunningGateway {
    /// Starts the gateway with the namespace sandbox, a fresh store, a fake LLM, `extra_toml`
    /// and the environment `vars` (platform tokens and URLs). Panics unless exactly
    /// `channels` platform adapters are enabled.
    pub async fn start(extra_toml: &str, vars: &[(&str, &str)], channels: usize) -> Self {
        Self::start_on("127.0.0.1:0", extra_toml, vars, channels).await
    }

    /// As [`RunningGateway::start`], with the HTTP server bound to `bind`.
    pub async fn start_on(
        bind: &str,
        extra_toml: &str,
        vars: &[(&str, &str)],
        channels: usize,
    ) -> Self {
        let llm = FakeLlm::start().await;
        let (dir, config_path) = test_dirs(extra_toml, &agent_binary());
        Self::launch(llm, dir, config_path, bind, vars, channels).await
    }

    /// Stops this gateway and starts a new one on the same directories, store, fake LLM and
    /// HTTP address, as after a restart.
    pub async fn restart(self, vars: &[(&str, &str)], channels: usize) -> Self {
        let bind = self.http.to_string();
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
        Self::launch(self.llm, self.dir, self.config_path, &bind, vars, channels).await
    }

    async fn launch(
        llm: FakeLlm,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        bind: &str,
        vars: &[(&str, &str)],
        channels: usize,
    ) -> Self {
        let base = llm.base_url();
        let mut env = vec![
            ("OPENAI_BASE_URL", base.as_str()),
            ("OPENAI_API_KEY", "sk-platform-0123456789abcdef"),
        ];
        env.extend_from_slice(vars);
        let config = Config::load(Some(&config_path), &Env::from_pairs(&env)).unwrap();
        let sandbox = boxedclaw_gateway::build_sandbox(&config).unwrap();
        let frontends = boxedclaw_gateway::build_frontends(&config).unwrap();
        assert_eq!(frontends.platforms, channels, "platform adapters enabled");
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let http = listener.local_addr().unwrap();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            boxedclaw_gateway::serve(config, sandbox, frontends, listener, token)
                .await
                .unwrap();
        });
        Self {
            llm,
            http,
            shutdown,
            task,
            dir,
            config_path,
        }
    }

    /// The directory holding every conversation's workspace.
    pub fn workspace_root(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    /// The workspace directory of a conversation.
    pub fn workspace(&self, key: &ConversationKey) -> PathBuf {
        self.dir.path().join("workspace").join(key.storage_name())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Lines in a file (0 when it does not exist): how often an approved shell command ran.
pub fn line_count(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}
