//! The gateway's Prometheus metrics, and the text `GET /metrics` answers with.
//!
//! Every metric lives in one [`Metrics`] (shared as `Arc<Metrics>` through
//! [`Services`](crate::services::Services)), registered in its own registry, so two gateways in
//! one process (tests) never mix their numbers.
//!
//! Labels are low-cardinality by construction: every label value comes from a closed set this
//! module defines (an outcome, a platform, a sandbox backend). No user, conversation, agent or
//! approval id ever becomes a label; the recording methods take no argument that could carry one.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `boxedclaw_turns_total` | counter | `outcome` = `completed` \| `failed` |
//! | `boxedclaw_messages_received_total` | counter | `platform` |
//! | `boxedclaw_llm_request_duration_seconds` | histogram | |
//! | `boxedclaw_llm_requests_total` | counter | `result` = `ok` \| `error` |
//! | `boxedclaw_llm_tokens_total` | counter | `kind` = `prompt` \| `completion` |
//! | `boxedclaw_approvals_total` | counter | `outcome` = `approved` \| `denied` \| `expired` \| `cancelled` |
//! | `boxedclaw_sandboxes` | gauge | `backend`, `state` = `running` |
//! | `boxedclaw_sandbox_starts_total` | counter | `backend` |
//! | `boxedclaw_sandbox_crashes_total` | counter | `backend` |
//! | `boxedclaw_channel_errors_total` | counter | `platform` |
//! | `boxedclaw_conversations_active` | gauge | |
//!
//! The two gauges are kept exact by guards: [`Metrics::sandbox_started`] returns a
//! [`RunningSandbox`] and [`Metrics::conversation_started`] an [`ActiveConversation`], each
//! counted until it is dropped, whichever way its owner ends.

use std::time::Duration;

use boxedclaw_protocol::channel::ApprovalOutcome;
use boxedclaw_protocol::ids::Platform;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::host::SandboxKind;

/// The `Content-Type` of [`Metrics::encode`]'s output: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds, in seconds, of the LLM request duration buckets: from a cached local model's
/// 50 ms to a slow provider's two minutes (retries included).
pub const LLM_DURATION_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0,
];

/// How a turn ended, for `boxedclaw_turns_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnResult {
    /// The agent answered.
    Completed,
    /// The turn failed (the user got an error message).
    Failed,
}

impl TurnResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabel {
    platform: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    backend: &'static str,
    state: &'static str,
}

fn platform_label(platform: Platform) -> PlatformLabel {
    PlatformLabel {
        platform: platform.as_str(),
    }
}

fn backend_name(backend: SandboxKind) -> &'static str {
    match backend {
        SandboxKind::Namespace => "namespace",
        SandboxKind::Boxlite => "boxlite",
    }
}

fn approval_name(outcome: ApprovalOutcome) -> &'static str {
    match outcome {
        ApprovalOutcome::Approved => "approved",
        ApprovalOutcome::Denied => "denied",
        ApprovalOutcome::Expired => "expired",
        ApprovalOutcome::Cancelled => "cancelled",
    }
}

/// The gateway's Prometheus metrics (low-cardinality labels only: no user or conversation ids).
pub struct Metrics {
    registry: Registry,
    turns: Family<OutcomeLabel, Counter>,
    messages_received: Family<PlatformLabel, Counter>,
    llm_duration: Histogram,
    llm_requests: Family<ResultLabel, Counter>,
    llm_tokens: Family<KindLabel, Counter>,
    approvals: Family<OutcomeLabel, Counter>,
    sandboxes: Family<SandboxLabels, Gauge>,
    sandbox_starts: Family<BackendLabel, Counter>,
    sandbox_crashes: Family<BackendLabel, Counter>,
    channel_errors: Family<PlatformLabel, Counter>,
    conversations_active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("conversations_active", &self.conversations_active.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered in a registry of its own. Series with a fixed set of label
    /// values (outcomes, results, token kinds, backends) start at zero, so they are scraped
    /// before anything happens; platform series appear with their first event.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            turns: Family::default(),
            messages_received: Family::default(),
            llm_duration: Histogram::new(LLM_DURATION_BUCKETS),
            llm_requests: Family::default(),
            llm_tokens: Family::default(),
            approvals: Family::default(),
            sandboxes: Family::default(),
            sandbox_starts: Family::default(),
            sandbox_crashes: Family::default(),
            channel_errors: Family::default(),
            conversations_active: Gauge::default(),
        };
        let registry = &mut m.registry;
        // Counters: the text encoder appends `_total`.
        registry.register(
            "boxedclaw_turns",
            "Agent turns (a user message answered or failed), by outcome",
            m.turns.clone(),
        );
        registry.register(
            "boxedclaw_messages_received",
            "Inbound user messages accepted by the router, by platform",
            m.messages_received.clone(),
        );
        registry.register(
            "boxedclaw_llm_request_duration_seconds",
            "Duration of LLM completion requests made for agents, retries included",
            m.llm_duration.clone(),
        );
        registry.register(
            "boxedclaw_llm_requests",
            "LLM completion requests made for agents, by result",
            m.llm_requests.clone(),
        );
        registry.register(
            "boxedclaw_llm_tokens",
            "LLM tokens spent, by kind",
            m.llm_tokens.clone(),
        );
        registry.register(
            "boxedclaw_approvals",
            "Approvals resolved, by outcome",
            m.approvals.clone(),
        );
        registry.register(
            "boxedclaw_sandboxes",
            "Sandboxes by backend and state (running: started and not yet stopped)",
            m.sandboxes.clone(),
        );
        registry.register(
            "boxedclaw_sandbox_starts",
            "Sandboxes started, by backend",
            m.sandbox_starts.clone(),
        );
        registry.register(
            "boxedclaw_sandbox_crashes",
            "Agents that exited or broke unexpectedly or violated the protocol, by backend",
            m.sandbox_crashes.clone(),
        );
        registry.register(
            "boxedclaw_channel_errors",
            "Outbound deliveries a channel failed (rate-limit retries exhausted included), by platform",
            m.channel_errors.clone(),
        );
        registry.register(
            "boxedclaw_conversations_active",
            "Conversations with a live worker",
            m.conversations_active.clone(),
        );
        for outcome in [TurnResult::Completed, TurnResult::Failed] {
            m.turns.get_or_create_owned(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        for result in ["ok", "error"] {
            m.llm_requests.get_or_create_owned(&ResultLabel { result });
        }
        for kind in ["prompt", "completion"] {
            m.llm_tokens.get_or_create_owned(&KindLabel { kind });
        }
        for outcome in [
            ApprovalOutcome::Approved,
            ApprovalOutcome::Denied,
            ApprovalOutcome::Expired,
            ApprovalOutcome::Cancelled,
        ] {
            m.approvals.get_or_create_owned(&OutcomeLabel {
                outcome: approval_name(outcome),
            });
        }
        for backend in [SandboxKind::Namespace, SandboxKind::Boxlite] {
            let backend = backend_name(backend);
            m.sandboxes.get_or_create_owned(&SandboxLabels {
                backend,
                state: "running",
            });
            m.sandbox_starts
                .get_or_create_owned(&BackendLabel { backend });
            m.sandbox_crashes
                .get_or_create_owned(&BackendLabel { backend });
        }
        m
    }

    /// Everything, in the Prometheus text exposition format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; an encoder bug must not take the endpoint down.
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    /// A turn ended (a user's message, or a turn resumed after a restart).
    pub fn turn_finished(&self, outcome: TurnResult) {
        self.turns
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The router accepted a user's message from `platform`.
    pub fn message_received(&self, platform: Platform) {
        self.messages_received
            .get_or_create(&platform_label(platform))
            .inc();
    }

    /// One LLM completion request made for an agent (retries included in `duration`), with the
    /// tokens it spent (zeros for a failed request).
    pub fn llm_call(
        &self,
        duration: Duration,
        prompt_tokens: u64,
        completion_tokens: u64,
        ok: bool,
    ) {
        self.llm_duration.observe(duration.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.llm_requests
            .get_or_create(&ResultLabel { result })
            .inc();
        self.llm_tokens
            .get_or_create(&KindLabel { kind: "prompt" })
            .inc_by(prompt_tokens);
        self.llm_tokens
            .get_or_create(&KindLabel { kind: "completion" })
            .inc_by(completion_tokens);
    }

    /// An approval was resolved.
    pub fn approval_resolved(&self, outcome: ApprovalOutcome) {
        self.approvals
            .get_or_create(&OutcomeLabel {
                outcome: approval_name(outcome),
            })
            .inc();
    }

    /// A delivery to `platform` failed: the adapter returned an error, or rate-limit retries
    /// ran out.
    pub fn channel_error(&self, platform: Platform) {
        self.channel_errors
            .get_or_create(&platform_label(platform))
            .inc();
    }

    /// A sandbox of `backend` started. It counts as running until the returned guard is
    /// dropped (or [`RunningSandbox::stopped`] / [`RunningSandbox::crashed`] is called).
    pub fn sandbox_started(&self, backend: SandboxKind) -> RunningSandbox {
        let backend = backend_name(backend);
        self.sandbox_starts
            .get_or_create(&BackendLabel { backend })
            .inc();
        let running = self.sandboxes.get_or_create_owned(&SandboxLabels {
            backend,
            state: "running",
        });
        running.inc();
        RunningSandbox {
            running,
            crashes: self
                .sandbox_crashes
                .get_or_create_owned(&BackendLabel { backend }),
        }
    }

    /// A conversation worker started. It counts as active until the returned guard is dropped.
    pub fn conversation_started(&self) -> ActiveConversation {
        self.conversations_active.inc();
        ActiveConversation {
            active: self.conversations_active.clone(),
        }
    }
}

/// A started sandbox, counted in `boxedclaw_sandboxes{state="running"}` until dropped: drop it
/// when the sandbox is gone (stopped, killed, or its start abandoned).
#[derive(Debug)]
#[must_use = "the sandbox stops counting as running when this is dropped"]
pub struct RunningSandbox {
    running: Gauge,
    crashes: Counter,
}

impl RunningSandbox {
    /// The sandbox was stopped as planned (same as dropping the guard).
    pub fn stopped(self) {}

    /// The agent exited or broke unexpectedly, or violated the protocol: counts a crash of its
    /// backend, and the sandbox no longer counts as running.
    pub fn crashed(self) {
        self.crashes.inc();
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        self.running.dec();
    }
}

/// A live conversation worker, counted in `boxedclaw_conversations_active` until dropped.
#[derive(Debug)]
#[must_use = "the conversation stops counting as active when this is dropped"]
pub struct ActiveConversation {
    active: Gauge,
}

impl Drop for ActiveConversation {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    use boxedclaw_channels::fake::FakeChannel;
    use boxedclaw_channels::{ChannelAdapter, OutboundAction};
    use boxedclaw_protocol::ids::ConversationKey;

    use super::*;
    use crate::secrets::Redactor;
    use crate::services::Outbound;

    /// One sample line: `name{labels} value`.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(s: &str) -> bool {
        is_name(s) && !s.contains(':')
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => s
                .parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}")),
        }
    }

    /// Parses `{k="v",k2="v2"}` (the braces included), refusing anything loose.
    fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
        let inner = s
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| format!("labels not in braces: {s:?}"))?;
        let mut labels = Vec::new();
        let mut rest = inner;
        while !rest.is_empty() {
            let (name, after) = rest
                .split_once("=\"")
                .ok_or_else(|| format!("label without =\": {rest:?}"))?;
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        other => return Err(format!("bad escape {other:?} in {s:?}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) => return Err("newline in label value".into()),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in {s:?}")),
                }
            };
            labels.push((name.to_owned(), value));
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.is_empty() {
                return Err(format!("junk after label value: {rest:?}"));
            }
        }
        let mut seen = HashSet::new();
        for (k, _) in &labels {
            if !seen.insert(k.clone()) {
                return Err(format!("duplicate label {k}"));
            }
        }
        Ok(labels)
    }

    /// A strict reader of the Prometheus text format 0.0.4: every line is `# HELP`, `# TYPE` or
    /// a sample `name{labels} value`; each family's TYPE comes once and before its samples;
    /// each sample belongs to a typed family (histograms via `_bucket`, `_sum`, `_count`).
    /// Returns the samples and the family types.
    fn parse_strict(text: &str) -> Result<(Vec<Sample>, HashMap<String, String>), String> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("output does not end with a newline".into());
        }
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps = HashSet::new();
        let mut samples = Vec::new();
        let mut series = HashSet::new();
        for line in text.lines() {
            if line.is_empty() {
                return Err("empty line".into());
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                if !is_name(name) || !helps.insert(name.to_owned()) || help.is_empty() {
                    return Err(format!("bad HELP line {line:?}"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("bad TYPE line {line:?}"))?;
                if !is_name(name)
                    || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                {
                    return Err(format!("bad TYPE line {line:?}"));
                }
                if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(format!("second TYPE for {name}"));
                }
                continue;
            }
            if line.starts_with('#') {
                return Err(format!("unexpected comment {line:?}"));
            }
            let (series_part, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("sample without value {line:?}"))?;
            let value = parse_value(value)?;
            let (name, labels) = match series_part.find('{') {
                Some(i) => (&series_part[..i], parse_labels(&series_part[i..])?),
                None => (series_part, Vec::new()),
            };
            if !is_name(name) {
                return Err(format!("bad metric name {name:?}"));
            }
            let family = match types.get(name).map(String::as_str) {
                Some("histogram") => {
                    return Err(format!("histogram sample without suffix: {line:?}"));
                }
                Some(_) => name,
                None => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                    })
                    .ok_or_else(|| format!("sample {name} has no TYPE before it"))?,
            };
            if name.ends_with("_bucket") && family != name {
                let le = labels.iter().find(|(k, _)| k == "le");
                let Some((_, le)) = le else {
                    return Err(format!("bucket without le: {line:?}"));
                };
                parse_value(le)?;
            }
            let types_kind = &types[family];
            if types_kind == "counter" && !name.ends_with("_total") {
                return Err(format!("counter {name} does not end in _total"));
            }
            if !series.insert(series_part.to_owned()) {
                return Err(format!("duplicate series {series_part}"));
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Ok((samples, types))
    }

    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (samples, _) = parse_strict(text).unwrap();
        let found: Vec<_> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?} in\n{text}");
        found[0].value
    }

    #[test]
    fn metrics_encode_is_strict_prometheus_text() {
        let m = Metrics::new();
        m.turn_finished(TurnResult::Completed);
        m.message_received(Platform::Telegram);
        m.llm_call(Duration::from_millis(300), 10, 5, true);
        m.approval_resolved(ApprovalOutcome::Denied);
        m.channel_error(Platform::Slack);
        let sandbox = m.sandbox_started(SandboxKind::Namespace);
        let conversation = m.conversation_started();
        let text = m.encode();
        let (samples, types) = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(!samples.is_empty());
        let expected = [
            ("boxedclaw_turns_total", "counter"),
            ("boxedclaw_messages_received_total", "counter"),
            ("boxedclaw_llm_request_duration_seconds", "histogram"),
            ("boxedclaw_llm_requests_total", "counter"),
            ("boxedclaw_llm_tokens_total", "counter"),
            ("boxedclaw_approvals_total", "counter"),
            ("boxedclaw_sandboxes", "gauge"),
            ("boxedclaw_sandbox_starts_total", "counter"),
            ("boxedclaw_sandbox_crashes_total", "counter"),
            ("boxedclaw_channel_errors_total", "counter"),
            ("boxedclaw_conversations_active", "gauge"),
        ];
        for (name, kind) in expected {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        assert_eq!(types.len(), expected.len(), "{types:?}");
        // The buckets span 50 ms to 120 s, plus +Inf.
        let les: Vec<String> = samples
            .iter()
            .filter(|s| s.name == "boxedclaw_llm_request_duration_seconds_bucket")
            .filter_map(|s| s.labels.iter().find(|(k, _)| k == "le"))
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(les.first().map(String::as_str), Some("0.05"));
        assert_eq!(les.last().map(String::as_str), Some("+Inf"));
        assert!(les.iter().any(|l| l == "120.0" || l == "120"), "{les:?}");
        drop((sandbox, conversation));
        // And the same holds for a fresh registry with nothing recorded.
        parse_strict(&Metrics::new().encode()).unwrap();
    }

    #[test]
    fn metrics_strict_reader_rejects_malformed_text() {
        for bad in [
            "boxedclaw_x_total 1\n",
            "# TYPE boxedclaw_x_total counter\nboxedclaw_x_total{a=\"1\" 1\n",
            "# TYPE boxedclaw_x_total counter\nboxedclaw_x_total one\n",
            "# TYPE boxedclaw_x counter\nboxedclaw_x 1\n",
            "# TYPE boxedclaw_x gauge\nboxedclaw_x 1",
            "# TYPE boxedclaw_x gauge\n# TYPE boxedclaw_x gauge\nboxedclaw_x 1\n",
            "# TYPE boxedclaw_x gauge\nboxedclaw_x{a=b} 1\n",
        ] {
            assert!(parse_strict(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metrics_counters_increase_after_recording() {
        let m = Metrics::new();
        let before = m.encode();
        assert_eq!(
            value(
                &before,
                "boxedclaw_turns_total",
                &[("outcome", "completed")]
            ),
            0.0
        );
        m.turn_finished(TurnResult::Completed);
        m.turn_finished(TurnResult::Completed);
        m.turn_finished(TurnResult::Failed);
        m.message_received(Platform::Discord);
        m.llm_call(Duration::from_millis(120), 100, 20, true);
        m.llm_call(Duration::from_secs(3), 0, 0, false);
        m.approval_resolved(ApprovalOutcome::Approved);
        m.approval_resolved(ApprovalOutcome::Expired);
        m.approval_resolved(ApprovalOutcome::Cancelled);
        m.channel_error(Platform::Telegram);
        let t = m.encode();
        let v = |name, labels: &[(&str, &str)]| value(&t, name, labels);
        assert_eq!(v("boxedclaw_turns_total", &[("outcome", "completed")]), 2.0);
        assert_eq!(v("boxedclaw_turns_total", &[("outcome", "failed")]), 1.0);
        assert_eq!(
            v(
                "boxedclaw_messages_received_total",
                &[("platform", "discord")]
            ),
            1.0
        );
        assert_eq!(v("boxedclaw_llm_requests_total", &[("result", "ok")]), 1.0);
        assert_eq!(
            v("boxedclaw_llm_requests_total", &[("result", "error")]),
            1.0
        );
        assert_eq!(
            v("boxedclaw_llm_tokens_total", &[("kind", "prompt")]),
            100.0
        );
        assert_eq!(
            v("boxedclaw_llm_tokens_total", &[("kind", "completion")]),
            20.0
        );
        assert_eq!(v("boxedclaw_llm_request_duration_seconds_count", &[]), 2.0);
        let sum = v("boxedclaw_llm_request_duration_seconds_sum", &[]);
        assert!((sum - 3.12).abs() < 1e-9, "{sum}");
        assert_eq!(
            v(
                "boxedclaw_llm_request_duration_seconds_bucket",
                &[("le", "0.25")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "boxedclaw_llm_request_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            2.0
        );
        for (outcome, n) in [
            ("approved", 1.0),
            ("denied", 0.0),
            ("expired", 1.0),
            ("cancelled", 1.0),
        ] {
            assert_eq!(
                v("boxedclaw_approvals_total", &[("outcome", outcome)]),
                n,
                "{outcome}"
            );
        }
        assert_eq!(
            v(
                "boxedclaw_channel_errors_total",
                &[("platform", "telegram")]
            ),
            1.0
        );
    }

    #[test]
    fn metrics_sandbox_gauge_returns_to_zero_after_stop_and_crash() {
        let m = Metrics::new();
        let running = |m: &Metrics| {
            value(
                &m.encode(),
                "boxedclaw_sandboxes",
                &[("backend", "namespace"), ("state", "running")],
            )
        };
        let counter =
            |m: &Metrics, name: &str| value(&m.encode(), name, &[("backend", "namespace")]);
        assert_eq!(running(&m), 0.0);

        let a = m.sandbox_started(SandboxKind::Namespace);
        let b = m.sandbox_started(SandboxKind::Namespace);
        assert_eq!(running(&m), 2.0);
        a.stopped();
        assert_eq!(running(&m), 1.0);
        b.crashed();
        assert_eq!(running(&m), 0.0);
        assert_eq!(counter(&m, "boxedclaw_sandbox_starts_total"), 2.0);
        assert_eq!(counter(&m, "boxedclaw_sandbox_crashes_total"), 1.0);

        // Dropped without a word (an error path, a task torn down): stopped all the same.
        let c = m.sandbox_started(SandboxKind::Namespace);
        assert_eq!(running(&m), 1.0);
        drop(c);
        assert_eq!(running(&m), 0.0);

        // Backends are counted apart.
        let vm = m.sandbox_started(SandboxKind::Boxlite);
        assert_eq!(running(&m), 0.0);
        assert_eq!(
            value(
                &m.encode(),
                "boxedclaw_sandboxes",
                &[("backend", "boxlite"), ("state", "running")]
            ),
            1.0
        );
        vm.crashed();
        assert_eq!(
            value(
                &m.encode(),
                "boxedclaw_sandboxes",
                &[("backend", "boxlite"), ("state", "running")]
            ),
            0.0
        );
    }

    #[test]
    fn metrics_conversations_gauge_follows_guards() {
        let m = Metrics::new();
        let active = |m: &Metrics| value(&m.encode(), "boxedclaw_conversations_active", &[]);
        assert_eq!(active(&m), 0.0);
        let a = m.conversation_started();
        let b = m.conversation_started();
        assert_eq!(active(&m), 2.0);
        drop(a);
        assert_eq!(active(&m), 1.0);
        drop(b);
        assert_eq!(active(&m), 0.0);
    }

    fn key(platform: Platform, chat: &str) -> ConversationKey {
        ConversationKey::new(platform, Some("T-PRIVATE-TEAM"), chat, None).unwrap()
    }

    /// Through real gateway code: a delivery the adapter refuses is a channel error of its
    /// platform, and one it accepts is not.
    #[tokio::test]
    async fn metrics_outbound_counts_failed_deliveries() {
        let metrics = Arc::new(Metrics::new());
        let fake = FakeChannel::new(Platform::Slack);
        let adapters: Vec<Arc<dyn ChannelAdapter>> = vec![fake.clone()];
        let outbound = Outbound::new(&adapters, Redactor::default(), metrics.clone());
        let post = || OutboundAction::Post {
            conversation: key(Platform::Slack, "C-PRIVATE-CHAT"),
            text: "hello from U-PRIVATE-USER".into(),
        };
        assert!(outbound.send(post()).await);
        let errors = |m: &Metrics| {
            value(
                &m.encode(),
                "boxedclaw_channel_errors_total",
                &[("platform", "slack")],
            )
        };
        fake.set_failing(true);
        assert!(!outbound.send(post()).await);
        assert!(!outbound.send(post()).await);
        assert_eq!(errors(&metrics), 2.0);
        fake.set_failing(false);
        assert!(outbound.send(post()).await);
        assert_eq!(errors(&metrics), 2.0);
    }

    /// Label values come from closed sets only: whatever the conversation, user or text, none
    /// of it reaches the exposition.
    #[tokio::test]
    async fn metrics_labels_carry_no_user_or_conversation_data() {
        let metrics = Arc::new(Metrics::new());
        let fake = FakeChannel::new(Platform::Telegram);
        fake.set_failing(true);
        let adapters: Vec<Arc<dyn ChannelAdapter>> = vec![fake.clone()];
        let outbound = Outbound::new(&adapters, Redactor::default(), metrics.clone());
        outbound
            .send(OutboundAction::Post {
                conversation: key(Platform::Telegram, "C-PRIVATE-CHAT"),
                text: "U-PRIVATE-USER says hi".into(),
            })
            .await;
        for platform in [
            Platform::Terminal,
            Platform::Web,
            Platform::Telegram,
            Platform::Slack,
            Platform::Discord,
        ] {
            metrics.message_received(platform);
            metrics.channel_error(platform);
        }
        metrics.turn_finished(TurnResult::Failed);
        metrics.llm_call(Duration::from_secs(1), 1, 1, false);
        metrics.approval_resolved(ApprovalOutcome::Denied);
        metrics.sandbox_started(SandboxKind::Boxlite).crashed();
        let _c = metrics.conversation_started();

        let text = metrics.encode();
        for private in [
            "PRIVATE",
            "T-PRIVATE-TEAM",
            "C-PRIVATE-CHAT",
            "U-PRIVATE-USER",
        ] {
            assert!(!text.contains(private), "{private} leaked:\n{text}");
        }
        let allowed: HashMap<&str, &[&str]> = HashMap::from([
            (
                "outcome",
                &[
                    "completed",
                    "failed",
                    "approved",
                    "denied",
                    "expired",
                    "cancelled",
                ][..],
            ),
            ("result", &["ok", "error"][..]),
            ("kind", &["prompt", "completion"][..]),
            (
                "platform",
                &["terminal", "web", "telegram", "slack", "discord"][..],
            ),
            ("backend", &["namespace", "boxlite"][..]),
            ("state", &["running"][..]),
        ]);
        let (samples, _) = parse_strict(&text).unwrap();
        for s in samples {
            for (k, v) in &s.labels {
                if k == "le" {
                    parse_value(v).unwrap();
                    continue;
                }
                let values = allowed
                    .get(k.as_str())
                    .unwrap_or_else(|| panic!("unexpected label {k} on {}", s.name));
                assert!(values.contains(&v.as_str()), "{k}={v:?} on {}", s.name);
            }
        }
    }
}
