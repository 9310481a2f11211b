//! The OpenAI chat-completions wire format: building a request body from LLM-neutral
//! [`ChatMessage`]s and reading the first choice out of a response.
//!
//! Reading is deliberately lenient, because "OpenAI-compatible" servers differ in the details:
//! unknown fields are ignored, `usage` may be missing, `content` may be a string, `null` or an
//! array of parts, tool-call `arguments` may be a JSON string or an object, and local servers
//! sometimes omit tool-call ids.

use boxedclaw_protocol::chat::{ChatMessage, Role, TokenUsage};
use boxedclaw_protocol::tools::ToolName;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Completion, ProviderToolCall};

/// The request body of `POST /chat/completions`.
#[derive(Serialize)]
pub(super) struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool>,
    max_tokens: u32,
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// `null` only for an assistant message that carries tool calls (as OpenAI documents it);
    /// other roles always get a string, which stricter servers require.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionOut<'a>,
}

#[derive(Serialize)]
struct WireFunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireToolFunction,
}

#[derive(Serialize)]
struct WireToolFunction {
    name: &'static str,
    description: &'static str,
    parameters: Value,
}

impl<'a> WireRequest<'a> {
    /// The body for `messages` offering `tools`.
    pub(super) fn new(
        model: &'a str,
        max_tokens: u32,
        messages: &'a [ChatMessage],
        tools: &[ToolName],
    ) -> Self {
        let messages = messages
            .iter()
            .map(|m| {
                let has_calls = !m.tool_calls.is_empty();
                let content = match m.content.as_deref() {
                    Some(c) => Some(c),
                    None if has_calls && m.role == Role::Assistant => None,
                    None => Some(""),
                };
                WireMessage {
                    role: match m.role {
                        Role::System => "system",
                        Role::User => "user",
                        Role::Assistant => "assistant",
                        Role::Tool => "tool",
                    },
                    content,
                    tool_calls: m
                        .tool_calls
                        .iter()
                        .map(|c| WireToolCallOut {
                            id: c.id.as_str(),
                            kind: "function",
                            function: WireFunctionOut {
                                name: &c.name,
                                arguments: &c.arguments,
                            },
                        })
                        .collect(),
                    tool_call_id: m.tool_call_id.as_ref().map(|id| id.as_str()),
                }
            })
            .collect();
        let tools = tools
            .iter()
            .map(|&t| WireTool {
                kind: "function",
                function: WireToolFunction {
                    name: t.as_str(),
                    description: t.description(),
                    parameters: t.parameters_schema(),
                },
            })
            .collect();
        Self {
            model,
            messages,
            tools,
            max_tokens,
            stream: false,
        }
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessageIn,
}

#[derive(Deserialize)]
struct WireMessageIn {
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCallIn>>,
}

#[derive(Deserialize)]
struct WireToolCallIn {
    #[serde(default)]
    id: Option<String>,
    function: WireFunctionIn,
}

#[derive(Deserialize)]
struct WireFunctionIn {
    name: String,
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Reads a `200` response body. The error text is not yet redacted: the caller redacts it.
pub(super) fn parse_response(body: &[u8]) -> Result<Completion, String> {
    let resp: WireResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Err(format!("not a chat completion: {e}")),
    };
    let Some(choice) = resp.choices.into_iter().next() else {
        // Some gateways answer 200 with an `{"error": {...}}` object instead of choices.
        return Err(match provider_error_message(body) {
            Some(m) => format!("no choices in the response; the provider said: {m}"),
            None => "no choices in the response".to_owned(),
        });
    };
    let content = match choice.message.content {
        Value::Null => None,
        Value::String(s) => Some(s),
        // Content parts: keep the text ones, in order.
        Value::Array(parts) => {
            let text: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("");
            Some(text)
        }
        other => {
            return Err(format!(
                "message content is a {}, not text",
                json_type(&other)
            ));
        }
    };
    let tool_calls = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| ProviderToolCall {
            provider_id: c
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("call_{i}")),
            name: c.function.name,
            arguments: match c.function.arguments {
                Value::String(s) => s,
                Value::Null => String::new(),
                // Some local servers send the arguments as an object rather than JSON text.
                other => other.to_string(),
            },
        })
        .collect();
    let usage = resp.usage.map_or_else(TokenUsage::default, |u| TokenUsage {
        prompt_tokens: u.prompt_tokens.unwrap_or(0),
        completion_tokens: u.completion_tokens.unwrap_or(0),
    });
    Ok(Completion {
        content,
        tool_calls,
        usage,
    })
}

/// `error.message` (or a string `error`) of a provider's JSON error body, if it has one.
pub(super) fn provider_error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    e.get("message")
        .and_then(Value::as_str)
        .or_else(|| e.as_str())
        .map(str::to_owned)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use boxedclaw_protocol::ToolCallId;
    use boxedclaw_protocol::chat::ToolCall;

    use super::*;

    #[test]
    fn request_maps_every_role_and_omits_empty_tools() {
        let id = ToolCallId::new("c1").unwrap();
        let msgs = [
            ChatMessage::text(Role::System, "sys"),
            ChatMessage::text(Role::User, "hi"),
            ChatMessage {
                role: Role::Assistant,
                content: None,
                tool_calls: vec![ToolCall {
                    id: id.clone(),
                    name: "shell".into(),
                    arguments: "{}".into(),
                }],
                tool_call_id: None,
            },
            ChatMessage::tool_result(id, "out"),
        ];
        let v = serde_json::to_value(WireRequest::new("m", 7, &msgs, &[])).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["stream"], false);
        assert!(v.get("tools").is_none());
        let roles: Vec<_> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].clone())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
        assert_eq!(v["messages"][2]["content"], Value::Null);
        assert_eq!(v["messages"][2]["tool_calls"][0]["type"], "function");
        assert_eq!(
            v["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        assert_eq!(v["messages"][3]["tool_call_id"], "c1");
        assert!(v["messages"][1].get("tool_calls").is_none());
    }

    #[test]
    fn response_variants_of_compatible_servers_are_read() {
        let parts = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#;
        assert_eq!(
            parse_response(parts).unwrap().content.as_deref(),
            Some("ab")
        );
        let obj_args = br#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"shell","arguments":{"command":"ls"}}}]}}]}"#;
        let c = parse_response(obj_args).unwrap();
        assert_eq!(c.content, None);
        assert_eq!(c.tool_calls[0].provider_id, "call_0");
        assert_eq!(c.tool_calls[0].arguments, r#"{"command":"ls"}"#);
        assert_eq!(c.usage, TokenUsage::default());
        let err = parse_response(br#"{"error":{"message":"model overloaded"}}"#).unwrap_err();
        assert!(err.contains("model overloaded"), "{err}");
        assert!(parse_response(br#"{"choices":[{"message":{"content":5}}]}"#).is_err());
    }
}
