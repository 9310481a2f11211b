//! The LLM client: OpenAI-compatible chat completions, called by the gateway on behalf of the
//! sandboxed agents (which have neither network nor keys).
//!
//! One wire format covers OpenAI, Ollama, vLLM, llama.cpp, OpenRouter and Anthropic's compatible
//! endpoint: `POST {base_url}/chat/completions` with `stream: false`. The client
//! - retries what is worth retrying (429, 408, 500/502/503/504/529, timeouts, connection errors)
//!   with exponential backoff and jitter, honouring `Retry-After` up to a minute, and fails at
//!   once on what is not (bad key, unknown model, other 4xx, malformed answers);
//! - caps every response body it reads, so a hostile or broken server cannot exhaust memory;
//! - passes every provider text that reaches an error or a log line through a [`Redactor`]
//!   holding the API key, so a provider echoing the key back never leaks it.
//!
//! Error messages are one line for operators and name the setting to check.

mod openai;
mod retry;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use boxedclaw_protocol::chat::{ChatMessage, TokenUsage};
use boxedclaw_protocol::tools::ToolName;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use zeroize::Zeroizing;

use crate::config::LlmConfig;
use crate::secrets::Redactor;

/// Largest successful response body read (a completion is a few KiB; this is generous).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Largest error body read; only an excerpt of it is kept.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Longest provider text kept in an error, in characters.
const MAX_EXCERPT_CHARS: usize = 300;
/// Timeout of [`LlmClient::probe`].
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One chat-completion call: the conversation so far and the tools to offer.
#[derive(Debug, Clone, Copy)]
pub struct CompletionRequest<'a> {
    /// The messages, system prompt first.
    pub messages: &'a [ChatMessage],
    /// Tools the model may call; none means a plain answer.
    pub tools: &'a [ToolName],
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Its text, if any (a tool-calling answer may have none).
    pub content: Option<String>,
    /// Tool calls it asked for, in order.
    pub tool_calls: Vec<ProviderToolCall>,
    /// Tokens spent (zeros when the provider does not say).
    pub usage: TokenUsage,
}

/// A tool call as the provider returned it. Untrusted: the name may be no tool at all and the
/// arguments malformed JSON. The gateway assigns its own ids before anything else sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderToolCall {
    /// The provider's id for the call (`call_<n>` when the provider gave none).
    pub provider_id: String,
    /// The tool name the model wrote.
    pub name: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
}

/// Why an LLM call failed. Every text inside has been redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The provider refused the credentials (401/403). Not retried.
    #[error("LLM provider rejected the API key (HTTP {status}): check OPENAI_API_KEY")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
    },
    /// The endpoint or the model does not exist (404). Not retried.
    #[error("LLM endpoint or model not found (HTTP 404): check OPENAI_BASE_URL and OPENAI_MODEL")]
    NotFound,
    /// Rate limited, and retrying was not possible within the limits.
    #[error("LLM provider rate limit reached: retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// What the provider asked for (or the next backoff step).
        retry_after: Duration,
    },
    /// The request timed out, on every attempt.
    #[error("LLM request timed out: the provider did not answer within llm.timeout_secs")]
    Timeout,
    /// Any other HTTP error status.
    #[error("LLM provider returned HTTP {status}: {body}")]
    Http {
        /// The status code.
        status: u16,
        /// What the provider said (redacted, at most 300 characters).
        body: String,
    },
    /// The provider could not be reached.
    #[error("cannot reach the LLM provider: {0}")]
    Transport(String),
    /// The provider answered something that is not a usable chat completion.
    #[error("LLM provider sent an invalid response: {0}")]
    InvalidResponse(String),
    /// The client could not be built from the configuration.
    #[error("LLM client configuration: {0}")]
    Config(String),
}

/// What one attempt came to, when it did not succeed.
enum Failure {
    /// Give up with this error.
    Final(LlmError),
    /// Worth retrying; `wait` is what the server asked for, if anything.
    Retry {
        error: LlmError,
        wait: Option<Duration>,
    },
}

impl Failure {
    fn into_error(self) -> LlmError {
        match self {
            Self::Final(e) | Self::Retry { error: e, .. } => e,
        }
    }
}

/// An OpenAI-compatible chat-completions client. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    chat_url: String,
    models_url: String,
    model: String,
    /// `Bearer <key>`, marked sensitive so `http` never prints it.
    auth: Option<HeaderValue>,
    max_retries: u32,
    max_tokens: u32,
    redactor: Redactor,
    backoff_base: Duration,
    max_body: usize,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("chat_url", &self.inner.chat_url)
            .field("model", &self.inner.model)
            .field("authenticated", &self.inner.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// Builds a client for `cfg`.
    ///
    /// # Errors
    /// [`LlmError::Config`] when the key cannot go in a header or the HTTP client cannot be built.
    pub fn new(cfg: &LlmConfig) -> Result<Self, LlmError> {
        let auth = match &cfg.api_key {
            Some(key) => {
                let header = Zeroizing::new(format!("Bearer {}", key.expose()));
                let mut v = HeaderValue::from_str(&header).map_err(|_| {
                    LlmError::Config(
                        "the API key contains characters not allowed in an HTTP header".into(),
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let redactor = match &cfg.api_key {
            Some(key) => Redactor::new(&[key]),
            None => Redactor::default(),
        };
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            // An API endpoint has no business redirecting; following one could carry the
            // request (and, to the same host, the key) somewhere unexpected.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("boxedclaw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Config(redactor.redact(&error_chain(&e)).into_owned()))?;
        let base = cfg.base_url.trim_end_matches('/');
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                chat_url: format!("{base}/chat/completions"),
                models_url: format!("{base}/models"),
                model: cfg.model.clone(),
                auth,
                max_retries: cfg.max_retries,
                max_tokens: cfg.max_tokens,
                redactor,
                backoff_base: retry::BACKOFF_BASE,
                max_body: MAX_RESPONSE_BYTES,
            }),
        })
    }

    /// The model requests are made for.
    pub fn model(&self) -> &str {
        &self.inner.model
    }

    /// Asks the model for the next message of a conversation, retrying transient failures.
    ///
    /// # Errors
    /// [`LlmError`]; its `Display` is one line telling the operator what to check.
    pub async fn complete(&self, req: CompletionRequest<'_>) -> Result<Completion, LlmError> {
        let inner = &*self.inner;
        let wire =
            openai::WireRequest::new(&inner.model, inner.max_tokens, req.messages, req.tools);
        let body = serde_json::to_vec(&wire)
            .map_err(|e| LlmError::Config(format!("cannot encode the request: {e}")))?;
        let mut attempt: u32 = 0;
        loop {
            let (error, wait) = match self.attempt(&body).await {
                Ok(c) => {
                    tracing::debug!(
                        attempt,
                        prompt_tokens = c.usage.prompt_tokens,
                        completion_tokens = c.usage.completion_tokens,
                        tool_calls = c.tool_calls.len(),
                        "LLM completion"
                    );
                    return Ok(c);
                }
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry { error, wait }) => (error, wait),
            };
            if let Some(w) = wait.filter(|w| *w > retry::MAX_RETRY_AFTER) {
                tracing::warn!(wait_ms = millis(w), error = %error, "LLM provider asks to wait too long; giving up");
                return Err(LlmError::RateLimited { retry_after: w });
            }
            let wait = wait.unwrap_or_else(|| retry::backoff(attempt, inner.backoff_base));
            if attempt >= inner.max_retries {
                tracing::warn!(attempt, error = %error, "LLM request failed; no retries left");
                return Err(match error {
                    LlmError::RateLimited { .. } => LlmError::RateLimited { retry_after: wait },
                    e => e,
                });
            }
            attempt += 1;
            tracing::warn!(attempt, wait_ms = millis(wait), error = %error, "LLM request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Checks that the endpoint answers and accepts the key: `GET {base_url}/models`, once, with
    /// a 5 s timeout (for `boxedclaw doctor`).
    ///
    /// # Errors
    /// [`LlmError`] describing what failed.
    pub async fn probe(&self) -> Result<(), LlmError> {
        let inner = &*self.inner;
        let mut req = inner.http.get(&inner.models_url).timeout(PROBE_TIMEOUT);
        if let Some(auth) = &inner.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_failure(&e).into_error())?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self.error_status(resp).await.into_error())
    }

    /// One POST of `body`.
    async fn attempt(&self, body: &[u8]) -> Result<Completion, Failure> {
        let inner = &*self.inner;
        let mut req = inner
            .http
            .post(&inner.chat_url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(auth) = &inner.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let resp = req.send().await.map_err(|e| self.transport_failure(&e))?;
        if !resp.status().is_success() {
            return Err(self.error_status(resp).await);
        }
        let (body, complete) = read_capped(resp, inner.max_body)
            .await
            .map_err(|e| self.transport_failure(&e))?;
        if !complete {
            return Err(Failure::Final(LlmError::InvalidResponse(format!(
                "response larger than {} bytes",
                inner.max_body
            ))));
        }
        openai::parse_response(&body)
            .map_err(|m| Failure::Final(LlmError::InvalidResponse(self.excerpt(&m))))
    }

    /// Classifies a non-2xx response.
    async fn error_status(&self, resp: reqwest::Response) -> Failure {
        let status = resp.status().as_u16();
        let wait = retry::retry_after(resp.headers(), SystemTime::now());
        // A failed body read still leaves the status to report.
        let raw = read_capped(resp, MAX_ERROR_BODY_BYTES)
            .await
            .map(|(b, _)| b)
            .unwrap_or_default();
        let text = openai::provider_error_message(&raw)
            .unwrap_or_else(|| String::from_utf8_lossy(&raw).into_owned());
        let body = self.excerpt(&text);
        tracing::warn!(status, body = %body, "LLM provider returned an error status");
        match status {
            401 | 403 => Failure::Final(LlmError::Unauthorized { status }),
            404 => Failure::Final(LlmError::NotFound),
            429 => Failure::Retry {
                error: LlmError::RateLimited {
                    retry_after: wait.unwrap_or_default(),
                },
                wait,
            },
            // 529: Anthropic's "overloaded".
            408 | 500 | 502 | 503 | 504 | 529 => Failure::Retry {
                error: LlmError::Http { status, body },
                wait,
            },
            _ => Failure::Final(LlmError::Http { status, body }),
        }
    }

    /// Classifies an error from sending or reading.
    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            return Failure::Retry {
                error: LlmError::Timeout,
                wait: None,
            };
        }
        let error = LlmError::Transport(self.excerpt(&error_chain(e)));
        if e.is_connect() || e.is_request() || e.is_body() {
            Failure::Retry { error, wait: None }
        } else {
            Failure::Final(error)
        }
    }

    /// `text` redacted, on one line, cut to [`MAX_EXCERPT_CHARS`]. Redaction comes first so a
    /// cut can never leave part of a key that the redactor would no longer recognise.
    fn excerpt(&self, text: &str) -> String {
        let redacted = self.inner.redactor.redact(text);
        let one_line = redacted.split_whitespace().collect::<Vec<_>>().join(" ");
        match one_line.char_indices().nth(MAX_EXCERPT_CHARS) {
            Some((cut, _)) => format!("{}…", &one_line[..cut]),
            None => one_line,
        }
    }
}

/// Reads at most `cap` bytes of `resp`'s body; the flag says whether the body ended within it.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// An error and its causes, `outer: inner: innermost` (reqwest's own message omits the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
impl LlmClient {
    /// Shrinks the waits and the body cap so tests run fast.
    fn with_test_limits(self, backoff_base: Duration, max_body: usize) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| unreachable!());
        Self {
            inner: Arc::new(Inner {
                backoff_base,
                max_body,
                ..inner
            }),
        }
    }
}
