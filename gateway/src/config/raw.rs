//! Stage 1: the config file exactly as written. Every table refuses unknown keys, and TOML
//! errors become one line with file, line, column and dotted key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) sandbox: Option<String>,
    pub(super) workspace: Option<PathBuf>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) database_url: Option<String>,
    pub(super) http_addr: Option<String>,
    pub(super) admins: Option<Vec<String>>,
    pub(super) approvers: Option<Vec<String>>,
    #[serde(default)]
    pub(super) llm: RawLlm,
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) approvals: RawApprovals,
    #[serde(default)]
    pub(super) router: RawRouter,
    #[serde(default)]
    pub(super) boxlite: RawBoxlite,
    #[serde(default)]
    pub(super) telegram: RawTelegram,
    #[serde(default)]
    pub(super) slack: RawSlack,
    #[serde(default)]
    pub(super) discord: RawDiscord,
    #[serde(default)]
    pub(super) console: RawConsole,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    pub(super) enabled: Option<bool>,
    pub(super) admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscord {
    pub(super) bot_token_file: Option<PathBuf>,
    pub(super) api_url: Option<String>,
    pub(super) progress_interval_secs: Option<u64>,
    pub(super) approver_roles: Option<Vec<String>>,
    pub(super) public_key: Option<String>,
    pub(super) interactions_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlack {
    pub(super) bot_token_file: Option<PathBuf>,
    pub(super) app_token_file: Option<PathBuf>,
    pub(super) signing_secret_file: Option<PathBuf>,
    pub(super) api_url: Option<String>,
    pub(super) http_prefix: Option<String>,
    pub(super) progress_interval_secs: Option<u64>,
    pub(super) approvers_channel: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelegram {
    pub(super) bot_token_file: Option<PathBuf>,
    pub(super) api_url: Option<String>,
    pub(super) webhook_url: Option<String>,
    pub(super) webhook_path: Option<String>,
    pub(super) webhook_secret_file: Option<PathBuf>,
    pub(super) poll_timeout_secs: Option<u64>,
    pub(super) progress_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBoxlite {
    pub(super) runtime_dir: Option<PathBuf>,
    pub(super) image: Option<String>,
    pub(super) cpus: Option<u64>,
    pub(super) memory_mib: Option<u64>,
    pub(super) warm_pool: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLlm {
    pub(super) base_url: Option<String>,
    pub(super) model: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) timeout_secs: Option<u64>,
    pub(super) max_retries: Option<u64>,
    pub(super) max_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) binary: Option<PathBuf>,
    pub(super) system_prompt: Option<String>,
    pub(super) max_tool_iterations: Option<u64>,
    pub(super) shell_timeout_secs: Option<u64>,
    pub(super) tool_output_cap: Option<u64>,
    pub(super) max_history_bytes: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) ready_timeout_secs: Option<u64>,
    pub(super) turn_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) memory_mib: Option<u64>,
    pub(super) max_processes: Option<u64>,
    pub(super) file_size_mib: Option<u64>,
    pub(super) cpu_secs: Option<u64>,
    pub(super) open_files: Option<u64>,
    pub(super) workspace_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    pub(super) timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouter {
    pub(super) queue_depth: Option<u64>,
    pub(super) max_conversations: Option<u64>,
    pub(super) drain_timeout_secs: Option<u64>,
    pub(super) outbox_retry_secs: Option<u64>,
}

/// Parses `src` (the text of `path`), turning TOML errors into one-line messages with the
/// file, line, column and dotted key.
pub(super) fn parse_file(src: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let location = |offset: Option<usize>| match offset {
        Some(o) => {
            let (line, column) = line_column(src, o);
            format!("{}:{line}:{column}", path.display())
        }
        None => path.display().to_string(),
    };
    let tree = DeTable::parse(src).map_err(|e| ConfigError::Syntax {
        location: location(e.span().map(|s| s.start)),
        message: e.message().to_owned(),
    })?;
    toml::from_str::<RawConfig>(src).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let key = offset
            .and_then(|o| key_at(tree.get_ref(), o))
            .unwrap_or_default();
        let message = e.message();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            // The span may point at the table rather than the key: make sure the name is last.
            let key = if key.ends_with(name) {
                key
            } else if key.is_empty() {
                name.to_owned()
            } else {
                format!("{key}.{name}")
            };
            let hint = if name == "api_key" {
                "; keys are never written in the config: set OPENAI_API_KEY (or ANTHROPIC_API_KEY) \
                 or put the key in a file with mode 600 and set llm.api_key_file"
                    .to_owned()
            } else {
                let expected = expected.trim_start_matches(',').trim();
                if expected.is_empty() {
                    String::new()
                } else {
                    format!(" ({expected})")
                }
            };
            ConfigError::UnknownKey {
                location: location(offset),
                key,
                hint,
            }
        } else if key.is_empty() {
            ConfigError::Syntax {
                location: location(offset),
                message: message.to_owned(),
            }
        } else {
            ConfigError::Syntax {
                location: location(offset),
                message: format!("`{key}`: {message}"),
            }
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key whose key or value spans byte `offset`, deepest first.
fn key_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (k, v) in table.iter() {
        let inner = match v.get_ref() {
            DeValue::Table(t) => key_at(t, offset),
            _ => None,
        };
        if let Some(inner) = inner {
            return Some(format!("{}.{inner}", k.get_ref()));
        }
        if k.span().contains(&offset) || v.span().contains(&offset) {
            return Some(k.get_ref().to_string());
        }
    }
    None
}
