//! Configuration: a TOML file overlaid with environment variables, validated into [`Config`].
//!
//! Loading happens in two stages so each concern has one place:
//! 1. the file is parsed into private `Raw*` structs that mirror it exactly (every table refuses
//!    unknown keys, so a typo is an error rather than a silently ignored setting);
//! 2. environment variables are laid over it (env wins) and every value is checked and turned
//!    into the typed [`Config`] the rest of the gateway codes against.
//!
//! Every error is one line naming the file and key, or the variable, that is wrong and what is
//! allowed. The environment is read once, in [`Env::from_process`], and only for the variables in
//! [`KNOWN_ENV_VARS`]: that is the single place to audit what configures the gateway.
//!
//! Secrets are referenced, never inlined: the LLM key comes from `OPENAI_API_KEY` /
//! `ANTHROPIC_API_KEY` or from a private file named by `llm.api_key_file`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use boxedclaw_protocol::UserRef;
use boxedclaw_protocol::agent::AgentLimits;

use crate::secrets::{Secret, SecretError};

mod raw;
mod resolve;
#[cfg(test)]
mod tests;

/// Every environment variable the gateway reads (see `.env.example`).
pub const KNOWN_ENV_VARS: &[&str] = &[
    "BOXEDCLAW_CONFIG",
    "BOXLITE_RUNTIME_DIR",
    "HOME",
    "XDG_DATA_HOME",
    "BOXEDCLAW_SANDBOX",
    "BOXEDCLAW_WORKSPACE",
    "BOXEDCLAW_DATA_DIR",
    "BOXEDCLAW_HTTP_ADDR",
    "BOXEDCLAW_DATABASE_URL",
    "BOXEDCLAW_ADMINS",
    "BOXEDCLAW_APPROVERS",
    "BOXEDCLAW_ADMIN_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "ANTHROPIC_API_KEY",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_API_URL",
    "TELEGRAM_WEBHOOK_URL",
    "TELEGRAM_WEBHOOK_SECRET",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_API_URL",
    "SLACK_APPROVERS_CHANNEL",
    "DISCORD_BOT_TOKEN",
    "DISCORD_API_URL",
    "DISCORD_APPROVER_ROLES",
    "DISCORD_PUBLIC_KEY",
];

/// The config file used when neither `--config` nor `BOXEDCLAW_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "boxedclaw.toml";
/// Default OpenAI-compatible endpoint.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Anthropic's OpenAI-compatible endpoint, used when only `ANTHROPIC_API_KEY` is set.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";

pub(crate) const NO_LLM: &str = "no LLM configured: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local \
                      OpenAI-compatible server such as Ollama, or ANTHROPIC_API_KEY)";

/// The system prompt used when `agent.system_prompt` is not set.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant working inside an isolated \
sandbox. Your working directory is /workspace: files you create there persist for this \
conversation only. You have no network access; to read a web page, use the http_fetch tool. \
Risky tools (shell commands, deleting files, fetching URLs) run only after a human approves \
them, so say briefly why you need them. Be concise.";

/// A snapshot of the environment variables that configure the gateway.
///
/// Empty or blank values count as unset, so `OPENAI_API_KEY=` in an env file disables rather than
/// sets an empty key. `Debug` prints variable names only: values include tokens.
#[derive(Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// Reads [`KNOWN_ENV_VARS`] from the process environment: the gateway's only env access.
    #[allow(clippy::disallowed_methods)]
    pub fn from_process() -> Self {
        let vars = KNOWN_ENV_VARS
            .iter()
            .filter_map(|&name| {
                std::env::var_os(name).map(|v| (name.to_owned(), v.to_string_lossy().into_owned()))
            })
            .collect();
        Self(vars)
    }

    /// An environment made of `pairs`, for tests and embedding.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|&(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// The value of `name`, trimmed; `None` when unset or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// Whether `name` is set to a non-blank value.
    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_tuple("Env").field(&names).finish()
    }
}

/// Why the configuration could not be loaded. Each message is one line naming what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("{location}: {message}")]
    Syntax {
        /// `file:line:column`.
        location: String,
        /// What is wrong, naming the key when known.
        message: String,
    },
    /// The file has a key the gateway does not know (often a typo).
    #[error("{location}: unknown key `{key}`{hint}")]
    UnknownKey {
        /// `file:line:column`.
        location: String,
        /// The dotted key, e.g. `llm.api_key`.
        key: String,
        /// What to do instead, or which keys are allowed.
        hint: String,
    },
    /// A value is outside what is allowed.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// Where the value came from: a key in a file, or an environment variable.
        setting: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A secret file could not be used.
    #[error("{setting}: {source}")]
    Secret {
        /// Where the file was named.
        setting: String,
        /// Why it was refused.
        source: SecretError,
    },
    /// No LLM is configured; the gateway cannot do anything useful.
    #[error("{}", NO_LLM)]
    NoLlm,
    /// The current directory, needed to make relative paths absolute, is unavailable.
    #[error("cannot determine the current directory: {0}")]
    CurrentDir(std::io::Error),
}

/// Which sandbox backend to use (`sandbox` in TOML, `BOXEDCLAW_SANDBOX`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxChoice {
    /// A microVM where hardware virtualization is available, else the namespace sandbox.
    #[default]
    Auto,
    /// Linux namespaces, seccomp and rlimits.
    Namespace,
    /// A BoxLite microVM per conversation.
    Boxlite,
}

impl std::str::FromStr for SandboxChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "namespace" => Ok(Self::Namespace),
            "boxlite" => Ok(Self::Boxlite),
            _ => Err(format!(
                "{s:?} is not a sandbox; allowed: auto, namespace, boxlite"
            )),
        }
    }
}

impl fmt::Display for SandboxChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Namespace => "namespace",
            Self::Boxlite => "boxlite",
        })
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Sandbox backend choice.
    pub sandbox: SandboxChoice,
    /// Directory holding each conversation's `/workspace` (absolute; may not exist yet).
    pub workspace_root: PathBuf,
    /// Directory for the gateway's own state (absolute; may not exist yet).
    pub data_dir: PathBuf,
    /// Address of the HTTP server (webhooks, web console, health).
    pub http_addr: SocketAddr,
    /// PostgreSQL URL for shared state across replicas; `None` = SQLite in `data_dir`.
    /// `database_url` or `BOXEDCLAW_DATABASE_URL`. May carry a password: never logged.
    pub database_url: Option<Secret>,
    /// Users allowed to run admin commands.
    pub admins: Vec<UserRef>,
    /// Users allowed to approve tool calls.
    pub approvers: Vec<UserRef>,
    /// The LLM provider.
    pub llm: LlmConfig,
    /// The sandboxed agent.
    pub agent: AgentConfig,
    /// Resource limits of each sandbox.
    pub limits: SandboxLimits,
    /// Approval settings.
    pub approvals: ApprovalConfig,
    /// Router settings.
    pub router: RouterConfig,
    /// Absolute path of the config file that was loaded, if any (sandboxes must not see it).
    pub config_file: Option<PathBuf>,
    /// Which chat platforms have a token set.
    pub channels: ChannelsPresent,
    /// The Telegram channel, when `TELEGRAM_BOT_TOKEN` is set.
    pub telegram: Option<boxedclaw_telegram::TelegramSettings>,
    /// The Slack channel, when `SLACK_BOT_TOKEN` is set.
    pub slack: Option<boxedclaw_slack::SlackSettings>,
    /// The Discord channel, when `DISCORD_BOT_TOKEN` is set.
    pub discord: Option<boxedclaw_discord::DiscordSettings>,
    /// The BoxLite microVM backend.
    pub boxlite: BoxliteConfig,
    /// The web console (local chat, dashboard, metrics).
    pub console: ConsoleConfig,
}

/// The web console on the gateway's HTTP server (`[console]`).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Whether the console (chat page, dashboard, `/metrics`) is served. Default: on.
    pub enabled: bool,
    /// Required from any client that is not on this machine: `BOXEDCLAW_ADMIN_TOKEN` or
    /// `[console] admin_token_file`. Mandatory when `http_addr` is not a loopback address.
    pub admin_token: Option<Arc<Secret>>,
}

/// Where a BoxLite guest's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestImage {
    /// A local OCI image layout directory (`oci:/path`), built by
    /// `deploy/boxlite/build-guest-image.sh`; it contains the agent binary.
    Layout(PathBuf),
    /// Any OCI image reference (`debian:bookworm-slim`); the agent binary is provided to the
    /// box read-only from the host.
    Reference(String),
}

/// The BoxLite microVM backend (`[boxlite]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxliteConfig {
    /// Directory of the BoxLite runtime (shim, guest, libkrunfw): `[boxlite] runtime_dir` or
    /// `BOXLITE_RUNTIME_DIR`, else where `deploy/boxlite/install-runtime.sh` puts it.
    pub runtime_dir: PathBuf,
    /// The guest image. Default: the layout at `<data_dir>/boxlite/guest-image`.
    pub image: GuestImage,
    /// BoxLite's own state (disks, boxes), `<data_dir>/boxlite/home`.
    pub home_dir: PathBuf,
    /// Virtual CPUs per box.
    pub cpus: u8,
    /// Guest memory per box, MiB.
    pub memory_mib: u32,
    /// Boxes kept booted for new conversations (0 = boot on demand).
    pub warm_pool: usize,
}

/// The OpenAI-compatible LLM endpoint (`[llm]`).
#[derive(Debug)]
pub struct LlmConfig {
    /// Base URL, `http(s)://…` without a trailing `/` (requests go to `{base_url}/chat/completions`).
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// The API key, if the endpoint needs one.
    pub api_key: Option<Arc<Secret>>,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
    /// Retries after a rate limit, a 5xx, a timeout or a connection error.
    pub max_retries: u32,
    /// `max_tokens` of each completion.
    pub max_tokens: u32,
}

/// The agent that runs in each sandbox (`[agent]`).
#[derive(Debug)]
pub struct AgentConfig {
    /// Path of the `boxedclaw-agent` binary; `None` means next to the running executable.
    pub binary: Option<PathBuf>,
    /// Operator instructions for the model.
    pub system_prompt: String,
    /// Limits of the agent's own loop.
    pub limits: AgentLimits,
    /// An idle sandbox is stopped after this long.
    pub idle_timeout: Duration,
    /// How long a new sandbox has to answer `Init`.
    pub ready_timeout: Duration,
    /// Wall-clock limit of one turn, excluding time spent waiting for humans.
    pub turn_timeout: Duration,
}

/// Resource limits of each sandbox (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub max_processes: u64,
    /// Largest file the agent may write, in bytes.
    pub file_size_bytes: u64,
    /// CPU time, in seconds.
    pub cpu_seconds: u64,
    /// Open file descriptors.
    pub open_files: u64,
    /// Size of each workspace's own filesystem, in bytes; 0 = no quota (the workspace is a
    /// plain directory on the host's disk).
    pub workspace_bytes: u64,
}

/// Approval settings (`[approvals]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalConfig {
    /// A pending approval expires (denied) after this long.
    pub timeout: Duration,
}

/// Router settings (`[router]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    /// Messages queued per conversation before new ones are refused.
    pub queue_depth: usize,
    /// Conversations with a live agent at once.
    pub max_conversations: usize,
    /// On SIGTERM, how long turns in flight may take to finish (non-zero, bounded).
    pub drain_timeout: Duration,
    /// How often undelivered replies are tried again (and those a replica that died
    /// mid-send left are taken over).
    pub outbox_retry: Duration,
}

/// Which chat platforms have a token in the environment (the tokens themselves are not kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelsPresent {
    /// `TELEGRAM_BOT_TOKEN` is set.
    pub telegram: bool,
    /// `SLACK_BOT_TOKEN` is set.
    pub slack: bool,
    /// `DISCORD_BOT_TOKEN` is set.
    pub discord: bool,
}

impl Config {
    /// Loads the configuration.
    ///
    /// The file is `path` if given, else `BOXEDCLAW_CONFIG`, else `./boxedclaw.toml` if it
    /// exists, else none (defaults and environment only). Environment variables override the
    /// file.
    ///
    /// # Errors
    /// [`ConfigError`]; [`ConfigError::NoLlm`] when neither a key nor a base URL is set.
    pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir().map_err(ConfigError::CurrentDir)?;
        Self::load_in(path, env, &cwd)
    }

    /// [`Config::load`] with an explicit current directory (tests).
    fn load_in(path: Option<&Path>, env: &Env, cwd: &Path) -> Result<Config, ConfigError> {
        let chosen = match (path, env.get("BOXEDCLAW_CONFIG")) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(PathBuf::from(p)),
            (None, None) => Some(cwd.join(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let Some(file) = chosen else {
            return resolve::resolve(raw::RawConfig::default(), None, env, cwd);
        };
        let file = if file.is_absolute() {
            file
        } else {
            cwd.join(file)
        };
        let src = read_config_file(&file)?;
        let raw = raw::parse_file(&src, &file)?;
        resolve::resolve(raw, Some(file), env, cwd)
    }
}

/// Largest config file read; a real one is a few KiB. Stops a wrong path (a log, a device) from
/// being read into memory.
const MAX_CONFIG_FILE_LEN: u64 = 1 << 20;

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut src = String::new();
    file.take(MAX_CONFIG_FILE_LEN + 1)
        .read_to_string(&mut src)
        .map_err(err)?;
    if src.len() as u64 > MAX_CONFIG_FILE_LEN {
        return Err(err(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_FILE_LEN} bytes; is it the right file?"
        ))));
    }
    Ok(src)
}
