//! Browser sessions: their ids, their event logs and which one goes when there are too many.
//!
//! Each session keeps the events shown to its browser as pre-serialized JSON, numbered by a
//! per-session `seq`. Live subscribers (SSE streams) never receive events through a queue of
//! their own: a `watch` channel tells them the log grew and they read what they have not sent
//! yet from the log. So a slow browser cannot block a delivery or make the channel buffer
//! without bound, and it cannot lose events silently either: if the log dropped events it had
//! not sent, it is told so (see [`Session::read_after`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use boxedclaw_protocol::ids::{ConversationKey, Platform, UserRef};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Length of a session id: 16 random bytes as lowercase hex.
pub(crate) const SESSION_ID_LEN: usize = 32;

/// Whether `s` has the form of a session id this channel issues (32 lowercase hex digits).
pub(crate) fn valid_session_id(s: &str) -> bool {
    s.len() == SESSION_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The public id of the session whose cookie holds `secret`: the first 32 hex digits of a
/// domain-separated SHA-256. The id names the conversation and the user (`web:<id>`), so it
/// shows up in logs, the audit log, workspace names and the dashboard; the cookie value never
/// does, and the id does not lead back to it.
pub fn public_session_id(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"boxedclaw web session v1\0");
    h.update(secret.as_bytes());
    let mut id = hex::encode(h.finalize());
    id.truncate(SESSION_ID_LEN);
    id
}

/// The key that signs session cookies, so that a session outlives the gateway process that
/// issued it: a cookie whose signature checks out names its session again after a restart
/// (same public id, so the same conversation), while a cookie made up by someone without the
/// key names nothing. The gateway keeps the key in its data directory.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// A key from 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The signature of `secret`: 32 hex digits of a domain-separated HMAC-SHA256.
    fn tag(&self, secret: &str) -> String {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail here.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(b"boxedclaw web session cookie v1\0");
        mac.update(secret.as_bytes());
        let mut tag = hex::encode(mac.finalize().into_bytes());
        tag.truncate(SESSION_ID_LEN);
        tag
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey([REDACTED])")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 16 bytes from the OS's random source, as 32 lowercase hex digits.
pub(crate) fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a panic elsewhere is no reason
    // to stop serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One event as stored: its number, whether a later transient event replaces it, its JSON.
#[derive(Debug, Clone)]
struct Stored {
    seq: u64,
    transient: bool,
    json: Arc<str>,
}

#[derive(Debug)]
struct Log {
    events: VecDeque<Stored>,
    /// The `seq` of the next event.
    next_seq: u64,
    /// The highest `seq` dropped because the log was full (0: none).
    lost_through: u64,
    capacity: usize,
}

/// A browser session and the conversation it owns.
#[derive(Debug)]
pub(crate) struct Session {
    /// The secret in the browser's cookie: whoever holds it is this session.
    pub(crate) secret: String,
    /// The public id ([`public_session_id`] of the secret).
    pub(crate) id: String,
    /// `web:<id>`.
    pub(crate) conversation: ConversationKey,
    /// `web:<id>`.
    pub(crate) user: UserRef,
    /// Logical time of the last activity, for eviction.
    active: AtomicU64,
    log: Mutex<Log>,
    /// The `seq` of the newest event; subscribers wait on it.
    latest: watch::Sender<u64>,
    /// Cancelled when the session is evicted: its streams end.
    pub(crate) closed: CancellationToken,
}

/// Whether an event stays in the history or is replaced by the next transient one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Messages, approvals, outcomes, notices.
    Always,
    /// Typing and progress: only the latest one since the last lasting event is kept, so a
    /// reload shows the current state without hundreds of stale status lines.
    UntilNext,
}

impl Session {
    fn new(secret: String, capacity: usize, now: u64) -> Result<Self, String> {
        let id = public_session_id(&secret);
        let conversation = ConversationKey::new(Platform::Web, None, &id, None)
            .map_err(|e| format!("session conversation: {e}"))?;
        let user = UserRef::new(Platform::Web, &id).map_err(|e| format!("session user: {e}"))?;
        Ok(Self {
            secret,
            id,
            conversation,
            user,
            active: AtomicU64::new(now),
            log: Mutex::new(Log {
                events: VecDeque::new(),
                next_seq: 1,
                lost_through: 0,
                capacity: capacity.max(1),
            }),
            latest: watch::channel(0).0,
            closed: CancellationToken::new(),
        })
    }

    /// Appends `event` (a JSON object; its `seq` is added here) and wakes the subscribers.
    /// Returns the `seq`. Never waits for a subscriber.
    pub(crate) fn push(&self, event: Value, keep: Keep) -> u64 {
        self.push_all([(event, keep)])
    }

    /// Appends `events` at once (a reader sees all or none of them, e.g. the pieces of one
    /// long reply) and wakes the subscribers. Returns the last `seq`.
    pub(crate) fn push_all(&self, events: impl IntoIterator<Item = (Value, Keep)>) -> u64 {
        let mut log = lock(&self.log);
        for (mut event, keep) in events {
            let seq = log.next_seq;
            log.next_seq += 1;
            if let Some(fields) = event.as_object_mut() {
                fields.insert("seq".to_owned(), json!(seq));
            }
            if keep == Keep::UntilNext && log.events.back().is_some_and(|e| e.transient) {
                log.events.pop_back();
            }
            log.events.push_back(Stored {
                seq,
                transient: keep == Keep::UntilNext,
                json: event.to_string().into(),
            });
            while log.events.len() > log.capacity {
                if let Some(old) = log.events.pop_front() {
                    log.lost_through = old.seq;
                }
            }
        }
        let latest = log.next_seq - 1;
        drop(log);
        self.latest.send_replace(latest);
        latest
    }

    /// The `seq` of the newest event (0 when there is none).
    pub(crate) fn latest_seq(&self) -> u64 {
        lock(&self.log).next_seq - 1
    }

    /// Appends to `out` every event after `last`, as `(seq, json)`. If events after `last`
    /// were dropped because the log was full, a notice saying so comes first, numbered as the
    /// last dropped event, so the browser knows what it missed instead of missing it silently.
    pub(crate) fn read_after(&self, last: u64, out: &mut VecDeque<(u64, Arc<str>)>) {
        let log = lock(&self.log);
        if log.lost_through > last {
            let notice = json!({
                "kind": "notice",
                "text": format!(
                    "Earlier messages are no longer available here (this chat keeps the last \
                     {} events).",
                    log.capacity
                ),
                "seq": log.lost_through,
            });
            out.push_back((log.lost_through, notice.to_string().into()));
        }
        // Events are in seq order: skip the ones already sent.
        let start = log.events.partition_point(|e| e.seq <= last);
        out.extend(
            log.events
                .range(start..)
                .map(|e| (e.seq, Arc::clone(&e.json))),
        );
    }

    /// A receiver that changes whenever an event is pushed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    fn has_subscribers(&self) -> bool {
        self.latest.receiver_count() > 0
    }
}

/// All sessions, at most `max` of them.
#[derive(Debug)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// Signs cookies; `None`: a session lives as long as this process.
    key: Option<SessionKey>,
    /// Logical clock for "least recently active".
    clock: AtomicU64,
    max: usize,
    history: usize,
}

impl Sessions {
    pub(crate) fn new(max: usize, history: usize, key: Option<SessionKey>) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            key,
            clock: AtomicU64::new(0),
            max: max.max(1),
            history: history.max(1),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The value of the cookie that names `session`: its secret, and with a key, `.` and the
    /// secret's signature.
    pub(crate) fn cookie_value(&self, session: &Session) -> String {
        match &self.key {
            Some(key) => format!("{}.{}", session.secret, key.tag(&session.secret)),
            None => session.secret.clone(),
        }
    }

    /// The session `cookie` names, marked active; `None` when it is malformed, not signed by
    /// our key, or (without a key) names no live session. A signed cookie whose session this
    /// process does not hold (issued before a restart, or evicted) gets it back: same secret,
    /// same public id, same conversation, an empty history.
    pub(crate) fn get(&self, cookie: &str) -> Option<Arc<Session>> {
        let secret = match &self.key {
            Some(key) => {
                let (secret, tag) = cookie.split_once('.')?;
                // A tag has the shape of an id too, so an empty one never matches.
                let signed = valid_session_id(secret)
                    && valid_session_id(tag)
                    && constant_time_eq(tag.as_bytes(), key.tag(secret).as_bytes());
                signed.then_some(secret)?
            }
            None => cookie,
        };
        if !valid_session_id(secret) {
            return None;
        }
        if let Some(session) = self.by_id(&public_session_id(secret)) {
            return constant_time_eq(session.secret.as_bytes(), secret.as_bytes())
                .then_some(session);
        }
        // Only a signed cookie brings a session back.
        self.key.as_ref()?;
        let session = Session::new(secret.to_owned(), self.history, self.tick()).ok()?;
        tracing::debug!(conversation = %session.conversation, "web session resumed from its cookie");
        Some(self.insert(session))
    }

    /// The session with public id `id` (the conversation's channel), marked active.
    pub(crate) fn by_id(&self, id: &str) -> Option<Arc<Session>> {
        let session = lock(&self.map).get(id).cloned()?;
        session.active.store(self.tick(), Ordering::Relaxed);
        Some(session)
    }

    /// A new session with a fresh random id. When `max` sessions exist, the least recently
    /// active one goes first, preferring one without an open event stream (a tab that is
    /// open right now outlives idle ones).
    pub(crate) fn create(&self) -> Result<Arc<Session>, String> {
        let secret = random_hex().map_err(|e| format!("random session secret: {e}"))?;
        Ok(self.insert(Session::new(secret, self.history, self.tick())?))
    }

    /// Adds `session`, evicting as [`create`](Self::create) says. A session of the same id
    /// added meanwhile by a concurrent request wins, so both requests share one session.
    fn insert(&self, session: Session) -> Arc<Session> {
        let mut map = lock(&self.map);
        if let Some(existing) = map.get(&session.id) {
            return Arc::clone(existing);
        }
        let session = Arc::new(session);
        while map.len() >= self.max {
            let victim = map
                .values()
                .min_by_key(|s| (s.has_subscribers(), s.active.load(Ordering::Relaxed)))
                .map(|s| s.id.clone());
            let Some(victim) = victim else { break };
            if let Some(gone) = map.remove(&victim) {
                tracing::debug!(
                    conversation = %gone.conversation,
                    "web session evicted (too many sessions)"
                );
                gone.closed.cancel();
            }
        }
        map.insert(session.id.clone(), Arc::clone(&session));
        session
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn texts(s: &Session, after: u64) -> Vec<(u64, String)> {
        let mut out = VecDeque::new();
        s.read_after(after, &mut out);
        out.into_iter()
            .map(|(seq, j)| {
                let v: Value = serde_json::from_str(&j).unwrap();
                assert_eq!(v["seq"], json!(seq), "the seq field matches the event id");
                (
                    seq,
                    v["text"]
                        .as_str()
                        .unwrap_or(v["kind"].as_str().unwrap())
                        .to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn signed_cookies_resume_their_session_after_a_restart_and_forged_ones_name_nothing() {
        let key = SessionKey::new([7; 32]);
        let before = Sessions::new(10, 10, Some(key.clone()));
        let session = before.create().unwrap();
        let cookie = before.cookie_value(&session);
        assert!(
            cookie.starts_with(&format!("{}.", session.secret)),
            "{cookie}"
        );
        assert_eq!(before.get(&cookie).unwrap().id, session.id);

        // A new process with the same key: the cookie names the same conversation again.
        let after = Sessions::new(10, 10, Some(key));
        let resumed = after.get(&cookie).unwrap();
        assert_eq!(resumed.conversation, session.conversation);
        assert_eq!(resumed.user, session.user);
        assert_eq!(
            after.get(&cookie).unwrap().id,
            resumed.id,
            "one session, not two"
        );

        // A made-up secret, a bare secret, a bad signature or another key's cookie: nothing.
        let made_up = random_hex().unwrap();
        let other_key = Sessions::new(10, 10, Some(SessionKey::new([8; 32])));
        let forged = other_key.cookie_value(&other_key.create().unwrap());
        let mut bad_tag = cookie.clone();
        bad_tag.replace_range(
            cookie.len() - 1..,
            if cookie.ends_with('0') { "1" } else { "0" },
        );
        let no_tag = format!("{}.", session.secret);
        for cookie in [
            made_up.as_str(),
            &session.secret,
            &bad_tag,
            &no_tag,
            &forged,
            "",
        ] {
            assert!(after.get(cookie).is_none(), "{cookie:?} was accepted");
        }
        // Without a key nothing is resumed: a secret this process never issued names nothing.
        let unkeyed = Sessions::new(10, 10, None);
        assert!(unkeyed.get(&session.secret).is_none());
        assert!(format!("{:?}", SessionKey::new([7; 32])).contains("REDACTED"));
    }

    #[test]
    fn ids_are_exactly_32_lowercase_hex() {
        let id = random_hex().unwrap();
        assert!(valid_session_id(&id), "{id}");
        assert_ne!(id, random_hex().unwrap());
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcd\u{e9}",
        ] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn history_is_bounded_and_a_reader_behind_it_is_told() {
        let s = Session::new("a".repeat(32), 3, 0).unwrap();
        for i in 1..=5 {
            s.push(
                json!({"kind": "post", "text": format!("m{i}")}),
                Keep::Always,
            );
        }
        assert_eq!(s.latest_seq(), 5);
        let all = texts(&s, 0);
        assert_eq!(all.len(), 4, "a notice and the last three: {all:?}");
        assert_eq!(all[0].0, 2);
        assert!(all[0].1.contains("no longer available"), "{all:?}");
        assert_eq!(
            &all[1..],
            [(3, "m3".into()), (4, "m4".into()), (5, "m5".into())]
        );
        // A reader that has everything up to the drop point is not told anything.
        assert_eq!(texts(&s, 2).len(), 3);
        assert_eq!(texts(&s, 4), [(5, "m5".to_owned())]);
        assert!(texts(&s, 5).is_empty());
    }

    #[test]
    fn only_the_latest_transient_event_is_kept() {
        let s = Session::new("b".repeat(32), 10, 0).unwrap();
        s.push(json!({"kind": "user", "text": "hi"}), Keep::Always);
        s.push(json!({"kind": "typing"}), Keep::UntilNext);
        s.push(json!({"kind": "progress", "text": "p1"}), Keep::UntilNext);
        s.push(json!({"kind": "progress", "text": "p2"}), Keep::UntilNext);
        s.push(json!({"kind": "post", "text": "done"}), Keep::Always);
        assert_eq!(
            texts(&s, 0),
            [
                (1, "hi".to_owned()),
                (4, "p2".to_owned()),
                (5, "done".to_owned())
            ]
        );
        // Replaced status lines are not "lost": no notice for a reader that missed them.
        assert_eq!(texts(&s, 2), [(4, "p2".to_owned()), (5, "done".to_owned())]);
    }

    #[test]
    fn eviction_prefers_idle_sessions_without_streams() {
        let sessions = Sessions::new(2, 10, None);
        let a = sessions.create().unwrap();
        let b = sessions.create().unwrap();
        let _stream = a.subscribe(); // `a` has an open tab, `b` was active more recently.
        let c = sessions.create().unwrap();
        assert!(sessions.get(&a.secret).is_some());
        assert!(sessions.get(&b.secret).is_none());
        assert!(b.closed.is_cancelled());
        assert!(sessions.get(&c.secret).is_some());
        // Among sessions without streams, the least recently active goes.
        let sessions = Sessions::new(2, 10, None);
        let a = sessions.create().unwrap();
        let b = sessions.create().unwrap();
        assert!(sessions.get(&a.secret).is_some()); // touch a
        sessions.create().unwrap();
        assert!(sessions.get(&a.secret).is_some());
        assert!(sessions.get(&b.secret).is_none());
    }
}
