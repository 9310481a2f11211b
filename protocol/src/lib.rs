//! The contract between BoxedClaw's channels, gateway and sandboxed agents.
//!
//! Everything here is plain data plus pure functions: no I/O, no async runtime. The gateway and
//! the agent runtime both depend on it, so a frame that one side writes is, by construction, a
//! frame the other side can read — and anything else is rejected with a typed error.
//!
//! # Layout
//! - [`ids`]: typed identifiers (`ConversationKey`, `AgentId`, `RequestId`, `ApprovalId`, …).
//! - [`chat`]: LLM-neutral chat messages and token usage.
//! - [`tools`]: the closed set of tools, their typed arguments and which ones need approval.
//! - [`agent`]: the gateway ⇄ sandbox frames (`HostToBox`, `BoxToHost`) and the version handshake.
//! - [`codec`]: the bounded line codec every frame goes through.
//! - [`channel`]: platform-neutral inbound events and outbound actions.
//! - [`display`]: escaping untrusted text so what a human approves is what they see.
//! - [`admin`]: the admin commands and their one parser.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod channel;
pub mod chat;
pub mod codec;
pub mod display;
pub mod ids;
pub mod tools;

pub use agent::{BoxToHost, HostToBox, PROTOCOL_VERSION};
pub use ids::{AgentId, ApprovalId, ConversationKey, Platform, RequestId, ToolCallId, UserRef};
