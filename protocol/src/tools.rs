//! The closed set of tools an agent may call, with typed arguments.
//!
//! The model writes tool arguments as free JSON text. Both the agent and the gateway parse that
//! text with [`ToolInvocation::parse`], and the gateway binds an approval to the
//! [`ToolInvocation::canonical_json`] of the result: fields in a fixed order, unknown fields
//! refused. Two texts that parse to the same invocation are the same action; any change to what
//! would run is a different action and needs a new approval.

use serde::{Deserialize, Serialize};

/// Longest accepted path argument, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted shell command, in bytes.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;
/// Longest accepted URL, in bytes.
pub const MAX_URL_LEN: usize = 8192;
/// Largest content `file_write` accepts in one call, in bytes.
pub const MAX_WRITE_LEN: usize = 4 * 1024 * 1024;

/// The tools, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolName {
    /// Read a file in the workspace.
    FileRead,
    /// Create or replace a file in the workspace.
    FileWrite,
    /// List a directory in the workspace.
    FileList,
    /// Delete a file in the workspace (needs approval).
    FileDelete,
    /// Run a shell command in the sandbox (needs approval).
    Shell,
    /// Fetch a URL; performed by the gateway, since sandboxes have no network (needs approval).
    HttpFetch,
}

impl ToolName {
    /// Every tool, in a stable order.
    pub const ALL: [ToolName; 6] = [
        Self::FileRead,
        Self::FileWrite,
        Self::FileList,
        Self::FileDelete,
        Self::Shell,
        Self::HttpFetch,
    ];

    /// The name the model uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FileRead => "file_read",
            Self::FileWrite => "file_write",
            Self::FileList => "file_list",
            Self::FileDelete => "file_delete",
            Self::Shell => "shell",
            Self::HttpFetch => "http_fetch",
        }
    }

    /// Looks a tool up by the name the model wrote.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether a human must approve each call before it runs.
    pub fn needs_approval(self) -> bool {
        matches!(self, Self::FileDelete | Self::Shell | Self::HttpFetch)
    }

    /// Whether the gateway (not the sandbox) performs the call.
    pub fn runs_in_gateway(self) -> bool {
        matches!(self, Self::HttpFetch)
    }

    /// One sentence for the model.
    pub fn description(self) -> &'static str {
        match self {
            Self::FileRead => "Read a UTF-8 text file from the workspace.",
            Self::FileWrite => "Create or overwrite a file in the workspace with the given text.",
            Self::FileList => "List the entries of a directory in the workspace ('.' is the root).",
            Self::FileDelete => "Delete a file in the workspace. A human must approve it.",
            Self::Shell => {
                "Run a shell command (sh -c) in the workspace, without network access. \
                 A human must approve it."
            }
            Self::HttpFetch => "Fetch a URL with HTTP GET. A human must approve it.",
        }
    }

    /// The JSON Schema of the arguments, as OpenAI-compatible APIs expect it.
    pub fn parameters_schema(self) -> serde_json::Value {
        let (props, required): (serde_json::Value, &[&str]) = match self {
            Self::FileRead | Self::FileDelete => (
                serde_json::json!({"path": {"type": "string", "description": "Path relative to the workspace."}}),
                &["path"],
            ),
            Self::FileList => (
                serde_json::json!({"path": {"type": "string", "description": "Directory relative to the workspace."}}),
                &[],
            ),
            Self::FileWrite => (
                serde_json::json!({
                    "path": {"type": "string", "description": "Path relative to the workspace."},
                    "content": {"type": "string"}
                }),
                &["path", "content"],
            ),
            Self::Shell => (
                serde_json::json!({"command": {"type": "string"}}),
                &["command"],
            ),
            Self::HttpFetch => (
                serde_json::json!({"url": {"type": "string", "description": "http:// or https:// URL."}}),
                &["url"],
            ),
        };
        serde_json::json!({
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": false
        })
    }
}

impl std::fmt::Display for ToolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool call with typed, validated arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToolInvocation {
    /// `file_read`.
    FileRead {
        /// Path relative to the workspace.
        path: String,
    },
    /// `file_write`.
    FileWrite {
        /// Path relative to the workspace.
        path: String,
        /// The complete new content.
        content: String,
    },
    /// `file_list`.
    FileList {
        /// Directory relative to the workspace.
        path: String,
    },
    /// `file_delete`.
    FileDelete {
        /// Path relative to the workspace.
        path: String,
    },
    /// `shell`.
    Shell {
        /// The command line, run with `sh -c`.
        command: String,
    },
    /// `http_fetch`.
    HttpFetch {
        /// The URL to GET.
        url: String,
    },
}

/// Why tool arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolParseError {
    /// The model named a tool that does not exist.
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    /// The arguments were not the JSON object the tool expects.
    #[error("invalid arguments for {tool}: {reason}")]
    InvalidArguments {
        /// The tool.
        tool: ToolName,
        /// What was wrong, for the model to correct.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathArgs {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    #[serde(default = "dot")]
    path: String,
}

fn dot() -> String {
    ".".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellArgs {
    command: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchArgs {
    url: String,
}

impl ToolInvocation {
    /// Parses the model's `name` and JSON `arguments` into a typed invocation.
    ///
    /// # Errors
    /// [`ToolParseError`] for an unknown tool, malformed or extra arguments, or arguments over
    /// their length bounds.
    pub fn parse(name: &str, arguments: &str) -> Result<Self, ToolParseError> {
        let tool = ToolName::from_name(name)
            .ok_or_else(|| ToolParseError::UnknownTool(name.to_owned()))?;
        let bad = |reason: String| ToolParseError::InvalidArguments { tool, reason };
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        fn de<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
            serde_json::from_str(s).map_err(|e| e.to_string())
        }
        let inv = match tool {
            ToolName::FileRead => Self::FileRead {
                path: de::<PathArgs>(arguments).map_err(bad)?.path,
            },
            ToolName::FileDelete => Self::FileDelete {
                path: de::<PathArgs>(arguments).map_err(bad)?.path,
            },
            ToolName::FileList => Self::FileList {
                path: de::<ListArgs>(arguments).map_err(bad)?.path,
            },
            ToolName::FileWrite => {
                let a = de::<WriteArgs>(arguments).map_err(bad)?;
                Self::FileWrite {
                    path: a.path,
                    content: a.content,
                }
            }
            ToolName::Shell => Self::Shell {
                command: de::<ShellArgs>(arguments).map_err(bad)?.command,
            },
            ToolName::HttpFetch => Self::HttpFetch {
                url: de::<FetchArgs>(arguments).map_err(bad)?.url,
            },
        };
        inv.check_bounds().map_err(|r| bad(r.to_owned()))?;
        Ok(inv)
    }

    fn check_bounds(&self) -> Result<(), &'static str> {
        let within = |s: &str, max: usize| s.len() <= max && !s.contains('\0');
        let ok = match self {
            Self::FileRead { path } | Self::FileList { path } | Self::FileDelete { path } => {
                within(path, MAX_PATH_LEN)
            }
            Self::FileWrite { path, content } => {
                within(path, MAX_PATH_LEN) && content.len() <= MAX_WRITE_LEN
            }
            Self::Shell { command } => {
                within(command, MAX_COMMAND_LEN) && !command.trim().is_empty()
            }
            Self::HttpFetch { url } => {
                within(url, MAX_URL_LEN)
                    && (url.starts_with("http://") || url.starts_with("https://"))
            }
        };
        if ok {
            Ok(())
        } else {
            Err("argument empty, too long, containing NUL, or not an http(s) URL")
        }
    }

    /// Which tool this is.
    pub fn tool(&self) -> ToolName {
        match self {
            Self::FileRead { .. } => ToolName::FileRead,
            Self::FileWrite { .. } => ToolName::FileWrite,
            Self::FileList { .. } => ToolName::FileList,
            Self::FileDelete { .. } => ToolName::FileDelete,
            Self::Shell { .. } => ToolName::Shell,
            Self::HttpFetch { .. } => ToolName::HttpFetch,
        }
    }

    /// The canonical serialization an approval is bound to: the tool name first, then the
    /// arguments in declaration order, with no insignificant whitespace.
    pub fn canonical_json(&self) -> String {
        // Serializing a derived, tagged enum of plain strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// What will run, in plain words, for an approval prompt. Not escaped: pass it through
    /// [`crate::display::escape_untrusted`] before showing it.
    pub fn summary(&self) -> String {
        match self {
            Self::FileRead { path } => format!("read file {path}"),
            Self::FileWrite { path, content } => {
                format!("write {} bytes to {path}", content.len())
            }
            Self::FileList { path } => format!("list directory {path}"),
            Self::FileDelete { path } => format!("delete file {path}"),
            Self::Shell { command } => format!("shell: {command}"),
            Self::HttpFetch { url } => format!("fetch {url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_argument_texts_share_one_canonical_form() {
        let a = ToolInvocation::parse("shell", r#"{"command":"ls -la"}"#).unwrap();
        let b = ToolInvocation::parse("shell", "{ \"command\" :\n \"ls -la\" }").unwrap();
        assert_eq!(a.canonical_json(), b.canonical_json());
        let c = ToolInvocation::parse("shell", r#"{"command":"ls -la "}"#).unwrap();
        assert_ne!(a.canonical_json(), c.canonical_json());
    }

    #[test]
    fn extra_unknown_and_oversized_arguments_are_refused() {
        assert!(ToolInvocation::parse("shell", r#"{"command":"ls","cwd":"/"}"#).is_err());
        assert!(ToolInvocation::parse("rm_rf", "{}").is_err());
        assert!(ToolInvocation::parse("shell", "not json").is_err());
        assert!(ToolInvocation::parse("shell", r#"{"command":""}"#).is_err());
        let long = format!(r#"{{"command":"{}"}}"#, "a".repeat(MAX_COMMAND_LEN + 1));
        assert!(ToolInvocation::parse("shell", &long).is_err());
        assert!(ToolInvocation::parse("file_read", r#"{"path":"a\u0000b"}"#).is_err());
        assert!(ToolInvocation::parse("http_fetch", r#"{"url":"file:///etc/passwd"}"#).is_err());
    }

    #[test]
    fn file_list_defaults_to_the_workspace_root() {
        assert_eq!(
            ToolInvocation::parse("file_list", "").unwrap(),
            ToolInvocation::FileList { path: ".".into() }
        );
    }

    #[test]
    fn only_shell_delete_and_fetch_need_approval() {
        let gated: Vec<_> = ToolName::ALL
            .into_iter()
            .filter(|t| t.needs_approval())
            .collect();
        assert_eq!(
            gated,
            [ToolName::FileDelete, ToolName::Shell, ToolName::HttpFetch]
        );
    }
}
