//! Stage 2: environment variables laid over the file (env wins), every value checked and
//! turned into the typed [`Config`]. Errors name where the bad value came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use boxedclaw_protocol::UserRef;
use boxedclaw_protocol::agent::AgentLimits;

use super::raw::{RawBoxlite, RawConfig, RawConsole, RawDiscord, RawLlm, RawSlack, RawTelegram};
use super::*;
use crate::secrets::{Secret, read_secret_file};

/// Where a value came from, for error messages.
enum Origin<'a> {
    File {
        key: &'static str,
        path: Option<&'a Path>,
    },
    Env(&'static str),
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { key, path: Some(p) } => write!(f, "`{key}` in {}", p.display()),
            Self::File { key, path: None } => write!(f, "`{key}`"),
            Self::Env(var) => write!(f, "{var}"),
        }
    }
}

fn invalid(origin: &Origin<'_>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: origin.to_string(),
        reason: reason.into(),
    }
}

struct Ctx<'a> {
    env: &'a Env,
    file: Option<&'a Path>,
    cwd: &'a Path,
}

impl<'a> Ctx<'a> {
    fn file(&self, key: &'static str) -> Origin<'a> {
        Origin::File {
            key,
            path: self.file,
        }
    }

    /// The env value of `var` if set, else the file value of `key`, with its origin.
    fn layered<T>(
        &self,
        file_value: Option<T>,
        key: &'static str,
        var: &'static str,
        from_env: impl FnOnce(&str) -> T,
    ) -> Option<(T, Origin<'a>)> {
        match self.env.get(var) {
            Some(v) => Some((from_env(v), Origin::Env(var))),
            None => file_value.map(|v| (v, self.file(key))),
        }
    }

    /// A file-only integer: `default` when absent, else checked against `lo..=hi`.
    fn int(
        &self,
        v: Option<u64>,
        key: &'static str,
        default: u64,
        lo: u64,
        hi: u64,
    ) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(&v) => Ok(v),
            Some(v) => Err(invalid(
                &self.file(key),
                format!("{v} is out of range; allowed: {lo} to {hi}"),
            )),
        }
    }

    fn int_u32(
        &self,
        v: Option<u64>,
        key: &'static str,
        default: u32,
        lo: u32,
        hi: u32,
    ) -> Result<u32, ConfigError> {
        let v = self.int(v, key, default.into(), lo.into(), hi.into())?;
        u32::try_from(v).map_err(|_| invalid(&self.file(key), "out of range"))
    }

    fn secs(
        &self,
        v: Option<u64>,
        key: &'static str,
        default: u64,
        hi: u64,
    ) -> Result<Duration, ConfigError> {
        self.int(v, key, default, 1, hi).map(Duration::from_secs)
    }

    /// `p` made absolute against the current directory, `.` components dropped.
    fn absolute(&self, p: &Path, origin: &Origin<'_>) -> Result<PathBuf, ConfigError> {
        if p.as_os_str().is_empty() {
            return Err(invalid(origin, "the path is empty"));
        }
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.cwd.join(p)
        };
        Ok(joined
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect())
    }

    fn path(
        &self,
        file_value: Option<PathBuf>,
        key: &'static str,
        var: &'static str,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        let (p, origin) = self
            .layered(file_value, key, var, |v| Path::new(v).to_path_buf())
            .unwrap_or_else(|| (PathBuf::from(default), self.file(key)));
        self.absolute(&p, &origin)
    }

    /// A list from the file (an array) or the environment (comma-separated), each item
    /// parsed by `parse`, duplicates dropped.
    fn list<T: PartialEq>(
        &self,
        file_value: Option<Vec<String>>,
        key: &'static str,
        var: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        let Some((items, origin)) = self.layered(file_value, key, var, |v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<T> = Vec::with_capacity(items.len());
        for item in items {
            let parsed = parse(item.trim()).map_err(|e| invalid(&origin, e))?;
            if !out.contains(&parsed) {
                out.push(parsed);
            }
        }
        Ok(out)
    }

    fn users(
        &self,
        file_value: Option<Vec<String>>,
        key: &'static str,
        var: &'static str,
    ) -> Result<Vec<UserRef>, ConfigError> {
        self.list(file_value, key, var, |item| {
            item.parse::<UserRef>()
                .map_err(|e| format!("{item:?}: {e}; expected platform:id such as slack:U123"))
        })
    }
}

/// Lays the environment over `raw` and validates everything into a [`Config`].
pub(super) fn resolve(
    raw: RawConfig,
    file: Option<PathBuf>,
    env: &Env,
    cwd: &Path,
) -> Result<Config, ConfigError> {
    let cx = Ctx {
        env,
        file: file.as_deref(),
        cwd,
    };

    let sandbox = match cx.layered(raw.sandbox, "sandbox", "BOXEDCLAW_SANDBOX", str::to_owned) {
        Some((s, origin)) => s.parse().map_err(|e: String| invalid(&origin, e))?,
        None => SandboxChoice::default(),
    };
    let http_addr = match cx.layered(
        raw.http_addr,
        "http_addr",
        "BOXEDCLAW_HTTP_ADDR",
        str::to_owned,
    ) {
        Some((s, origin)) => s.trim().parse().map_err(|_| {
            invalid(
                &origin,
                format!("{s:?} is not an address; expected IP:port such as 127.0.0.1:8080"),
            )
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let workspace_root = cx.path(
        raw.workspace,
        "workspace",
        "BOXEDCLAW_WORKSPACE",
        "./workspace",
    )?;
    let data_dir = cx.path(raw.data_dir, "data_dir", "BOXEDCLAW_DATA_DIR", "./data")?;
    let database_url = match cx.layered(
        raw.database_url,
        "database_url",
        "BOXEDCLAW_DATABASE_URL",
        str::to_owned,
    ) {
        Some((url, origin)) => {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(invalid(
                    &origin,
                    "expected a postgres://… (or sqlite:…) URL",
                ));
            }
            Some(Secret::new(url))
        }
        None => None,
    };
    let admins = cx.users(raw.admins, "admins", "BOXEDCLAW_ADMINS")?;
    let approvers = cx.users(raw.approvers, "approvers", "BOXEDCLAW_APPROVERS")?;
    let llm = llm_config(&cx, raw.llm)?;

    let a = raw.agent;
    let system_prompt = a
        .system_prompt
        .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_owned());
    if system_prompt.trim().is_empty() || system_prompt.len() > 64 * 1024 {
        return Err(invalid(
            &cx.file("agent.system_prompt"),
            "must be non-empty and at most 65536 bytes",
        ));
    }
    let binary = match a.binary {
        Some(p) => Some(cx.absolute(&p, &cx.file("agent.binary"))?),
        None => None,
    };
    let agent = AgentConfig {
        binary,
        system_prompt,
        limits: AgentLimits {
            max_tool_iterations: cx.int_u32(
                a.max_tool_iterations,
                "agent.max_tool_iterations",
                16,
                1,
                100,
            )?,
            shell_timeout_secs: cx.int_u32(
                a.shell_timeout_secs,
                "agent.shell_timeout_secs",
                60,
                1,
                3600,
            )?,
            tool_output_cap: cx.int_u32(
                a.tool_output_cap,
                "agent.tool_output_cap",
                65536,
                1024,
                1 << 20,
            )?,
            max_history_bytes: cx.int_u32(
                a.max_history_bytes,
                "agent.max_history_bytes",
                262_144,
                4096,
                64 << 20,
            )?,
        },
        idle_timeout: cx.secs(
            a.idle_timeout_secs,
            "agent.idle_timeout_secs",
            600,
            7 * 86400,
        )?,
        ready_timeout: cx.secs(a.ready_timeout_secs, "agent.ready_timeout_secs", 10, 300)?,
        turn_timeout: cx.secs(a.turn_timeout_secs, "agent.turn_timeout_secs", 1800, 86400)?,
    };

    let l = raw.limits;
    const MIB: u64 = 1 << 20;
    let limits = SandboxLimits {
        memory_bytes: cx.int(l.memory_mib, "limits.memory_mib", 1024, 16, 1 << 20)? * MIB,
        max_processes: cx.int(l.max_processes, "limits.max_processes", 128, 1, 1 << 20)?,
        file_size_bytes: cx.int(l.file_size_mib, "limits.file_size_mib", 1024, 1, 1 << 24)? * MIB,
        cpu_seconds: cx.int(l.cpu_secs, "limits.cpu_secs", 600, 1, 1 << 32)?,
        open_files: cx.int(l.open_files, "limits.open_files", 256, 16, 1 << 20)?,
        workspace_bytes: match cx.int(l.workspace_mib, "limits.workspace_mib", 1024, 0, 1 << 24)? {
            0 => 0,
            mib if mib * MIB < crate::sandbox::quota::MIN_QUOTA_BYTES => {
                return Err(invalid(
                    &cx.file("limits.workspace_mib"),
                    format!(
                        "{mib} is too small for a filesystem; allowed: 0 (no quota) or at least {}",
                        crate::sandbox::quota::MIN_QUOTA_BYTES / MIB
                    ),
                ));
            }
            mib => mib * MIB,
        },
    };
    let approvals = ApprovalConfig {
        timeout: cx.secs(
            raw.approvals.timeout_secs,
            "approvals.timeout_secs",
            600,
            86400,
        )?,
    };
    let as_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let router = RouterConfig {
        queue_depth: as_usize(cx.int(raw.router.queue_depth, "router.queue_depth", 32, 1, 1024)?),
        max_conversations: as_usize(cx.int(
            raw.router.max_conversations,
            "router.max_conversations",
            1000,
            1,
            1_000_000,
        )?),
        drain_timeout: cx.secs(
            raw.router.drain_timeout_secs,
            "router.drain_timeout_secs",
            30,
            600,
        )?,
        outbox_retry: cx.secs(
            raw.router.outbox_retry_secs,
            "router.outbox_retry_secs",
            30,
            3600,
        )?,
    };
    let boxlite = boxlite_config(&cx, raw.boxlite, &data_dir)?;
    let telegram = telegram_config(&cx, raw.telegram)?;
    let slack = slack_config(&cx, raw.slack)?;
    let discord = discord_config(&cx, raw.discord)?;
    let console = console_config(&cx, raw.console, http_addr)?;
    let channels = ChannelsPresent {
        telegram: telegram.is_some(),
        slack: slack.is_some(),
        discord: discord.is_some(),
    };
    Ok(Config {
        sandbox,
        workspace_root,
        data_dir,
        http_addr,
        database_url,
        admins,
        approvers,
        llm,
        agent,
        limits,
        approvals,
        router,
        config_file: file,
        channels,
        telegram,
        slack,
        discord,
        console,
        boxlite,
    })
}

/// Resolves `[discord]` with `DISCORD_*`: enabled when a bot token is set.
fn discord_config(
    cx: &Ctx<'_>,
    raw: RawDiscord,
) -> Result<Option<boxedclaw_discord::DiscordSettings>, ConfigError> {
    let Some(token) = secret_from(
        cx,
        "DISCORD_BOT_TOKEN",
        raw.bot_token_file,
        "discord.bot_token_file",
    )?
    else {
        return Ok(None);
    };
    let api_url = match cx.layered(
        raw.api_url,
        "discord.api_url",
        "DISCORD_API_URL",
        str::to_owned,
    ) {
        Some((url, origin)) => Some(check_base_url(&url, &origin)?),
        None => None,
    };
    let mut settings = boxedclaw_discord::DiscordSettings::new(token, api_url);
    settings.progress_interval = cx.secs(
        raw.progress_interval_secs,
        "discord.progress_interval_secs",
        2,
        60,
    )?;
    settings.approver_roles = cx.list(
        raw.approver_roles,
        "discord.approver_roles",
        "DISCORD_APPROVER_ROLES",
        |item| match item.parse::<u64>() {
            Ok(id) if id > 0 => Ok(id),
            _ => Err(format!("{item:?} is not a Discord role id (a number)")),
        },
    )?;
    if let Some((key, origin)) = cx.layered(
        raw.public_key,
        "discord.public_key",
        "DISCORD_PUBLIC_KEY",
        str::to_owned,
    ) {
        let key = key.parse::<boxedclaw_discord::InteractionsKey>().map_err(|_| {
            invalid(
                &origin,
                "must be the application's public key from the Developer Portal (64 hex digits)",
            )
        })?;
        settings.interactions_public_key = Some(key);
    }
    if let Some(path) = raw.interactions_path {
        if !path.starts_with('/') || path.contains(['{', '}', '*', ' ']) {
            return Err(invalid(
                &cx.file("discord.interactions_path"),
                "must start with / and be literal",
            ));
        }
        settings.interactions_path = path;
    }
    Ok(Some(settings))
}

/// Resolves `[slack]` with `SLACK_*`: enabled when a bot token is set; Socket Mode with an
/// app token, the Events API over HTTP with a signing secret.
fn slack_config(
    cx: &Ctx<'_>,
    raw: RawSlack,
) -> Result<Option<boxedclaw_slack::SlackSettings>, ConfigError> {
    let Some(bot_token) = secret_from(
        cx,
        "SLACK_BOT_TOKEN",
        raw.bot_token_file,
        "slack.bot_token_file",
    )?
    else {
        return Ok(None);
    };
    let app_token = secret_from(
        cx,
        "SLACK_APP_TOKEN",
        raw.app_token_file,
        "slack.app_token_file",
    )?;
    let signing_secret = secret_from(
        cx,
        "SLACK_SIGNING_SECRET",
        raw.signing_secret_file,
        "slack.signing_secret_file",
    )?;
    if app_token.is_none() && signing_secret.is_none() {
        return Err(invalid(
            &Origin::Env("SLACK_BOT_TOKEN"),
            "Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (Events API over HTTP)",
        ));
    }
    let api_url = match cx.layered(raw.api_url, "slack.api_url", "SLACK_API_URL", str::to_owned) {
        Some((url, origin)) => Some(check_base_url(&url, &origin)?),
        None => None,
    };
    let mut settings =
        boxedclaw_slack::SlackSettings::new(bot_token, app_token, signing_secret, api_url);
    if let Some(prefix) = raw.http_prefix {
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(['{', '}', '*']) {
            return Err(invalid(
                &cx.file("slack.http_prefix"),
                "must start with /, not end with /, and be literal",
            ));
        }
        settings.http_prefix = prefix;
    }
    settings.progress_interval = cx.secs(
        raw.progress_interval_secs,
        "slack.progress_interval_secs",
        2,
        60,
    )?;
    if let Some((channel, origin)) = cx.layered(
        raw.approvers_channel,
        "slack.approvers_channel",
        "SLACK_APPROVERS_CHANNEL",
        str::to_owned,
    ) {
        settings.approvers_channel = Some(slack_channel_id(&channel, &origin)?);
    }
    Ok(Some(settings))
}

/// A Slack channel id (`C…` public, `G…` private): what `chat.postMessage` needs. A
/// `#name` would post nowhere (Slack answers `channel_not_found`), so it is refused here.
fn slack_channel_id(value: &str, origin: &Origin<'_>) -> Result<String, ConfigError> {
    let id = value.trim();
    let valid = id.len() >= 2
        && id.len() <= 24
        && id.starts_with(['C', 'G'])
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if valid {
        Ok(id.to_owned())
    } else {
        Err(invalid(
            origin,
            format!(
                "{value:?} is not a Slack channel id; expected an id such as C0123ABCD \
                 (channel details → channel ID), not a #name"
            ),
        ))
    }
}

/// A secret from the environment variable `var`, else from the private file named by the
/// file key `key`.
fn secret_from(
    cx: &Ctx<'_>,
    var: &'static str,
    file: Option<PathBuf>,
    key: &'static str,
) -> Result<Option<Arc<Secret>>, ConfigError> {
    if let Some(v) = cx.env.get(var) {
        return Ok(Some(Arc::new(Secret::new(v.to_owned()))));
    }
    let Some(p) = file else {
        return Ok(None);
    };
    let origin = cx.file(key);
    let p = cx.absolute(&p, &origin)?;
    read_secret_file(&p)
        .map(|s| Some(Arc::new(s)))
        .map_err(|source| ConfigError::Secret {
            setting: origin.to_string(),
            source,
        })
}

/// Shortest admin token accepted: it guards the console from the network.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Resolves `[console]` with `BOXEDCLAW_ADMIN_TOKEN`. A console reachable from other machines
/// without a token would hand anyone the approvals and the audit log, so a non-loopback
/// `http_addr` requires one.
fn console_config(
    cx: &Ctx<'_>,
    raw: RawConsole,
    http_addr: SocketAddr,
) -> Result<ConsoleConfig, ConfigError> {
    let enabled = raw.enabled.unwrap_or(true);
    let admin_token = secret_from(
        cx,
        "BOXEDCLAW_ADMIN_TOKEN",
        raw.admin_token_file,
        "console.admin_token_file",
    )?;
    if let Some(token) = &admin_token
        && token.expose().trim().len() < MIN_ADMIN_TOKEN_LEN
    {
        return Err(ConfigError::Invalid {
            setting: "BOXEDCLAW_ADMIN_TOKEN (or console.admin_token_file)".into(),
            reason: format!("the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
        });
    }
    if enabled && admin_token.is_none() && !http_addr.ip().is_loopback() {
        return Err(ConfigError::Invalid {
            setting: "http_addr / BOXEDCLAW_HTTP_ADDR".into(),
            reason: format!(
                "{http_addr} is reachable from other machines: set BOXEDCLAW_ADMIN_TOKEN (or \
                 [console] admin_token_file) to protect the web console, or set [console] \
                 enabled = false"
            ),
        });
    }
    Ok(ConsoleConfig {
        enabled,
        admin_token,
    })
}

/// Resolves `[telegram]` with `TELEGRAM_*`: enabled when a bot token is set.
fn telegram_config(
    cx: &Ctx<'_>,
    raw: RawTelegram,
) -> Result<Option<boxedclaw_telegram::TelegramSettings>, ConfigError> {
    let Some(token) = secret_from(
        cx,
        "TELEGRAM_BOT_TOKEN",
        raw.bot_token_file,
        "telegram.bot_token_file",
    )?
    else {
        return Ok(None);
    };
    let api_url = match cx.layered(
        raw.api_url,
        "telegram.api_url",
        "TELEGRAM_API_URL",
        str::to_owned,
    ) {
        Some((url, origin)) => Some(check_base_url(&url, &origin)?),
        None => None,
    };
    let mut settings = boxedclaw_telegram::TelegramSettings::new(token, api_url);
    settings.poll_timeout = cx.secs(raw.poll_timeout_secs, "telegram.poll_timeout_secs", 25, 50)?;
    settings.progress_interval = cx.secs(
        raw.progress_interval_secs,
        "telegram.progress_interval_secs",
        2,
        60,
    )?;
    let webhook_url = cx.layered(
        raw.webhook_url,
        "telegram.webhook_url",
        "TELEGRAM_WEBHOOK_URL",
        str::to_owned,
    );
    let secret = secret_from(
        cx,
        "TELEGRAM_WEBHOOK_SECRET",
        raw.webhook_secret_file,
        "telegram.webhook_secret_file",
    )?;
    settings.webhook = match (webhook_url, secret) {
        (None, None) => None,
        (Some((_, origin)), None) => {
            return Err(invalid(
                &origin,
                "webhook mode needs a secret: set TELEGRAM_WEBHOOK_SECRET (not the bot token) \
                 or telegram.webhook_secret_file",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                &Origin::Env("TELEGRAM_WEBHOOK_SECRET"),
                "a webhook secret without TELEGRAM_WEBHOOK_URL (or telegram.webhook_url)",
            ));
        }
        (Some((url, origin)), Some(secret)) => {
            if secret.expose() == settings.token.expose() {
                return Err(invalid(
                    &origin,
                    "the webhook secret must differ from the bot token",
                ));
            }
            let url = check_base_url(&url, &origin)?;
            Some(boxedclaw_telegram::WebhookSettings {
                public_url: url,
                path: raw
                    .webhook_path
                    .unwrap_or_else(|| "/telegram/webhook".to_owned()),
                secret,
            })
        }
    };
    Ok(Some(settings))
}

/// Resolves `[boxlite]` (with `BOXLITE_RUNTIME_DIR`).
fn boxlite_config(
    cx: &Ctx<'_>,
    raw: RawBoxlite,
    data_dir: &Path,
) -> Result<BoxliteConfig, ConfigError> {
    let runtime_dir = match cx.layered(
        raw.runtime_dir,
        "boxlite.runtime_dir",
        "BOXLITE_RUNTIME_DIR",
        |v| PathBuf::from(v),
    ) {
        Some((p, origin)) => cx.absolute(&p, &origin)?,
        None => crate::sandbox::boxlite::runtime_dir::default_runtime_dir(
            cx.env.get("XDG_DATA_HOME").map(Path::new),
            cx.env.get("HOME").map(Path::new),
        )
        .unwrap_or_else(|| {
            PathBuf::from("/usr/local/share/boxedclaw/boxlite").join(format!(
                "v{}",
                crate::sandbox::boxlite::runtime_dir::BOXLITE_VERSION
            ))
        }),
    };
    let image = match raw.image {
        None => GuestImage::Layout(data_dir.join("boxlite").join("guest-image")),
        Some(s) => match s.strip_prefix("oci:") {
            Some(path) => {
                GuestImage::Layout(cx.absolute(Path::new(path), &cx.file("boxlite.image"))?)
            }
            None if !s.trim().is_empty() && !s.chars().any(char::is_whitespace) => {
                GuestImage::Reference(s)
            }
            None => {
                return Err(invalid(
                    &cx.file("boxlite.image"),
                    "expected oci:/path/to/layout or an image reference such as debian:bookworm-slim",
                ));
            }
        },
    };
    let cpus = cx.int(raw.cpus, "boxlite.cpus", 1, 1, 64)?;
    Ok(BoxliteConfig {
        runtime_dir,
        image,
        home_dir: data_dir.join("boxlite").join("home"),
        cpus: u8::try_from(cpus).unwrap_or(1),
        memory_mib: cx.int_u32(raw.memory_mib, "boxlite.memory_mib", 512, 128, 1 << 20)?,
        warm_pool: usize::try_from(cx.int(raw.warm_pool, "boxlite.warm_pool", 0, 0, 64)?)
            .unwrap_or(0),
    })
}

/// Resolves `[llm]` with `OPENAI_*` / `ANTHROPIC_API_KEY`.
fn llm_config(cx: &Ctx<'_>, raw: RawLlm) -> Result<LlmConfig, ConfigError> {
    let openai_key = cx.env.get("OPENAI_API_KEY");
    let anthropic_key = cx.env.get("ANTHROPIC_API_KEY");
    let explicit_url = cx.layered(
        raw.base_url,
        "llm.base_url",
        "OPENAI_BASE_URL",
        str::to_owned,
    );
    // Only an Anthropic key and nothing pointing elsewhere: use Anthropic's compatible endpoint.
    let anthropic_default = anthropic_key.is_some()
        && openai_key.is_none()
        && raw.api_key_file.is_none()
        && explicit_url.is_none();

    let base_url = match &explicit_url {
        Some((url, origin)) => check_base_url(url, origin)?,
        None if anthropic_default => ANTHROPIC_BASE_URL.to_owned(),
        None => OPENAI_BASE_URL.to_owned(),
    };
    let is_anthropic = reqwest::Url::parse(&base_url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| h == "anthropic.com" || h.ends_with(".anthropic.com"))
        })
        .unwrap_or(false);

    let api_key = if let Some(k) = openai_key {
        Some(Secret::new(k.to_owned()))
    } else if let Some(p) = &raw.api_key_file {
        let origin = cx.file("llm.api_key_file");
        let p = cx.absolute(p, &origin)?;
        Some(read_secret_file(&p).map_err(|source| ConfigError::Secret {
            setting: origin.to_string(),
            source,
        })?)
    } else {
        // An explicit Anthropic base URL with only an Anthropic key still gets that key.
        anthropic_key
            .filter(|_| is_anthropic)
            .map(|k| Secret::new(k.to_owned()))
    };
    if api_key.is_none() && explicit_url.is_none() {
        return Err(ConfigError::NoLlm);
    }

    let model = match cx.layered(raw.model, "llm.model", "OPENAI_MODEL", str::to_owned) {
        Some((m, origin)) => {
            let m = m.trim().to_owned();
            if m.is_empty() || m.len() > 256 || m.chars().any(char::is_control) {
                return Err(invalid(
                    &origin,
                    "must be a model name of 1 to 256 printable characters",
                ));
            }
            m
        }
        None if is_anthropic => "claude-sonnet-4-5".to_owned(),
        None => "gpt-4o-mini".to_owned(),
    };
    Ok(LlmConfig {
        base_url,
        model,
        api_key: api_key.map(Arc::new),
        timeout: cx.secs(raw.timeout_secs, "llm.timeout_secs", 120, 600)?,
        max_retries: cx.int_u32(raw.max_retries, "llm.max_retries", 3, 0, 10)?,
        max_tokens: cx.int_u32(raw.max_tokens, "llm.max_tokens", 4096, 1, 200_000)?,
    })
}

/// Checks an `http(s)://` base URL and trims its trailing `/`.
fn check_base_url(url: &str, origin: &Origin<'_>) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            origin,
            format!("{url:?} must start with http:// or https://"),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| invalid(origin, format!("{url:?} is not a URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(origin, format!("{url:?} has no host")));
    }
    // Credentials in a URL end up in logs and error messages; keys go in OPENAI_API_KEY.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            origin,
            "must not contain credentials; set OPENAI_API_KEY instead",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            origin,
            format!("{url:?} must not have a query or fragment"),
        ));
    }
    Ok(url.to_owned())
}
