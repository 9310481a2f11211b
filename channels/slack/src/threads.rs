//! Which channel threads are the bot's, as a bounded cache of Slack's answers.
//!
//! Slack is the source of truth: a thread is the bot's when its parent mentions the bot or was
//! posted by it (`conversations.replies`). The cache only saves asking again, so a restart
//! loses nothing but a call per thread, and both answers are kept so chatter in other people's
//! threads costs one call per thread, not one per message.

use std::collections::{HashMap, VecDeque};

/// How many threads are remembered; the oldest entry is forgotten first.
pub(crate) const KNOWN_THREADS: usize = 4096;

/// `(channel, thread_ts)` → whether the thread is the bot's.
#[derive(Debug)]
pub(crate) struct ThreadCache {
    capacity: usize,
    order: VecDeque<(String, String)>,
    ours: HashMap<(String, String), bool>,
}

impl Default for ThreadCache {
    fn default() -> Self {
        Self::with_capacity(KNOWN_THREADS)
    }
}

impl ThreadCache {
    /// Remembers up to `capacity` threads.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            ours: HashMap::new(),
        }
    }

    /// What is known of the thread, if anything.
    pub(crate) fn get(&self, channel: &str, thread: &str) -> Option<bool> {
        self.ours
            .get(&(channel.to_owned(), thread.to_owned()))
            .copied()
    }

    /// Records an answer. A thread once the bot's stays so: a later "no" can only come from a
    /// lookup that raced a mention in that thread, and the mention wins.
    pub(crate) fn remember(&mut self, channel: &str, thread: &str, ours: bool) {
        let key = (channel.to_owned(), thread.to_owned());
        match self.ours.get_mut(&key) {
            Some(known) => *known |= ours,
            None => {
                self.ours.insert(key.clone(), ours);
                self.order.push_back(key);
                if self.order.len() > self.capacity
                    && let Some(old) = self.order.pop_front()
                {
                    self.ours.remove(&old);
                }
            }
        }
    }

    /// How many threads are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ours.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_both_answers_and_forgets_the_oldest() {
        let mut c = ThreadCache::with_capacity(2);
        assert_eq!(c.get("C1", "1.1"), None);
        c.remember("C1", "1.1", true);
        c.remember("C1", "1.2", false);
        assert_eq!(c.get("C1", "1.1"), Some(true));
        assert_eq!(c.get("C1", "1.2"), Some(false));
        assert_eq!(c.get("C2", "1.1"), None, "the channel is part of the key");
        c.remember("C1", "1.3", false);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("C1", "1.1"), None, "the oldest is forgotten");
        assert_eq!(c.get("C1", "1.3"), Some(false));
    }

    #[test]
    fn a_mention_turns_a_no_into_a_yes_but_not_back() {
        let mut c = ThreadCache::with_capacity(4);
        c.remember("C1", "1.1", false);
        c.remember("C1", "1.1", true);
        assert_eq!(c.get("C1", "1.1"), Some(true));
        c.remember("C1", "1.1", false);
        assert_eq!(c.get("C1", "1.1"), Some(true));
        assert_eq!(c.len(), 1);
    }
}
