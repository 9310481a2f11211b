//! Which sandboxes are running right now, for the dashboard: one entry per conversation whose
//! agent is up, removed when the agent's [`LiveEntry`] guard drops (stop, crash, idle release),
//! so the list cannot go stale.

use std::sync::Arc;
use std::time::Instant;

use boxedclaw_protocol::ids::{AgentId, ConversationKey};
use dashmap::DashMap;

/// A running sandbox.
#[derive(Debug, Clone)]
pub struct LiveSandbox {
    /// The backend it runs in (`namespace`, `boxlite`).
    pub backend: String,
    /// The agent instance inside.
    pub agent: AgentId,
    /// When it started.
    pub started: Instant,
    /// The host pid of its outermost process, when the backend has one.
    pub pid: Option<u32>,
}

/// The registry of running sandboxes.
#[derive(Debug, Clone, Default)]
pub struct LiveSandboxes(Arc<DashMap<ConversationKey, LiveSandbox>>);

impl LiveSandboxes {
    /// Records `sandbox` as running for `key` until the returned guard drops.
    pub fn register(&self, key: ConversationKey, sandbox: LiveSandbox) -> LiveEntry {
        let agent = sandbox.agent.clone();
        self.0.insert(key.clone(), sandbox);
        LiveEntry {
            map: self.0.clone(),
            key,
            agent,
        }
    }

    /// The running sandboxes, in no particular order.
    pub fn snapshot(&self) -> Vec<(ConversationKey, LiveSandbox)> {
        self.0
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Keeps a sandbox listed while it lives.
#[derive(Debug)]
pub struct LiveEntry {
    map: Arc<DashMap<ConversationKey, LiveSandbox>>,
    key: ConversationKey,
    agent: AgentId,
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        // Only our own entry: a restarted agent of the same conversation may already be listed.
        self.map.remove_if(&self.key, |_, s| s.agent == self.agent);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use boxedclaw_protocol::ids::Platform;

    use super::*;

    fn sandbox(agent: &str) -> LiveSandbox {
        LiveSandbox {
            backend: "namespace".into(),
            agent: AgentId::new(agent.to_owned()).unwrap(),
            started: Instant::now(),
            pid: None,
        }
    }

    #[test]
    fn entries_live_as_long_as_their_guard_and_a_successor_is_kept() {
        let live = LiveSandboxes::default();
        let key = ConversationKey::new(Platform::Web, None, "s1", None).unwrap();
        let first = live.register(key.clone(), sandbox("a1"));
        assert_eq!(live.len(), 1);
        // The crashed agent's guard drops after its successor registered.
        let second = live.register(key.clone(), sandbox("a2"));
        drop(first);
        assert_eq!(live.snapshot()[0].1.agent.as_str(), "a2");
        drop(second);
        assert!(live.is_empty());
    }
}
