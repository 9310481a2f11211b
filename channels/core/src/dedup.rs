//! Dropping re-delivered platform events cheaply, before they reach the gateway (whose store
//! drops the rest, across restarts).

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// How many recent ids an adapter remembers by default.
pub const RECENT_IDS: usize = 4096;

/// A bounded set of recently seen event ids: the oldest is forgotten when it is full.
#[derive(Debug)]
pub struct RecentIds<T> {
    capacity: usize,
    order: VecDeque<T>,
    seen: HashSet<T>,
}

impl<T: Hash + Eq + Clone> Default for RecentIds<T> {
    fn default() -> Self {
        Self::with_capacity(RECENT_IDS)
    }
}

impl<T: Hash + Eq + Clone> RecentIds<T> {
    /// Remembers up to `capacity` ids.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// True the first time `id` is seen (among the last `capacity`).
    pub fn first(&mut self, id: T) -> bool {
        if !self.seen.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    /// Whether `id` was seen recently.
    pub fn contains(&self, id: &T) -> bool {
        self.seen.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_most_recent_ids_only() {
        let mut r = RecentIds::with_capacity(2);
        assert!(r.first(1));
        assert!(!r.first(1));
        assert!(r.first(2));
        assert!(r.first(3));
        assert!(!r.contains(&1), "the oldest is forgotten");
        assert!(r.first(1));
        assert!(!r.first(3));
    }
}
