//! The router: one worker per conversation, created on first message.
//!
//! `DashMap<ConversationKey, Handle>`: messages of one conversation go through that
//! conversation's bounded queue, so they are handled in order; different conversations run
//! concurrently. A full queue is refused at once (the user is told) rather than buffered
//! without bound. A worker that has been idle releases its agent and removes itself, under the
//! map's lock and only if its queue is empty, so there is never more than one worker (and one
//! agent) per conversation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use boxedclaw_protocol::channel::InboundMessage;

pub use crate::conversation::Work;
use boxedclaw_protocol::ids::ConversationKey;
use dashmap::DashMap;
use tokio::sync::{Notify, mpsc};

use crate::conversation::{Conversation, WorkerExit};
use crate::services::Services;

/// Why a message was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The conversation's queue is full.
    #[error("this conversation has too many messages waiting; try again in a moment")]
    Busy,
    /// The gateway serves its maximum number of conversations.
    #[error("the gateway is at its conversation limit; try again later")]
    Full,
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

struct Handle {
    tx: mpsc::Sender<Work>,
    generation: u64,
}

/// Routes messages to conversation workers.
pub struct Router {
    services: Arc<Services>,
    conversations: DashMap<ConversationKey, Handle>,
    generation: AtomicU64,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("conversations", &self.conversations.len())
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl Router {
    /// A router over `services`.
    pub fn new(services: Arc<Services>) -> Arc<Self> {
        Arc::new(Self {
            services,
            conversations: DashMap::new(),
            generation: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Queues a user's message for its conversation, starting a worker if there is none.
    ///
    /// # Errors
    /// [`DispatchError`] when the queue is full, the conversation limit is reached, or the
    /// gateway is shutting down; the message was not accepted.
    pub fn dispatch(self: &Arc<Self>, msg: InboundMessage) -> Result<(), DispatchError> {
        let key = msg.conversation.clone();
        self.submit(&key, Work::Message(msg), true)?;
        self.services.metrics.message_received(key.platform);
        Ok(())
    }

    /// Queues gateway work (stop, reset, a restored approval) for a conversation. `start`
    /// says whether to start a worker if the conversation has none; stopping or resetting an
    /// idle conversation needs no worker.
    ///
    /// # Errors
    /// As [`Router::dispatch`].
    pub fn submit(
        self: &Arc<Self>,
        key: &ConversationKey,
        work: Work,
        start: bool,
    ) -> Result<(), DispatchError> {
        if self.services.shutdown.is_cancelled() {
            return Err(DispatchError::ShuttingDown);
        }
        if !self.conversations.contains_key(key) {
            if !start {
                return Ok(());
            }
            if self.conversations.len() >= self.services.config.router.max_conversations {
                return Err(DispatchError::Full);
            }
        }
        // Count before sending, so a fast worker cannot finish the item before we count it.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // try_send under the entry's lock: a worker removing itself holds the same lock and
        // checks its queue is empty, so work can never land in a retiring worker's queue.
        let entry = self
            .conversations
            .entry(key.clone())
            .or_insert_with(|| self.spawn_worker(key.clone()));
        let sent = entry.tx.try_send(work);
        drop(entry);
        sent.map_err(|e| {
            self.finish_one();
            match e {
                mpsc::error::TrySendError::Full(_) => DispatchError::Busy,
                mpsc::error::TrySendError::Closed(_) => DispatchError::ShuttingDown,
            }
        })
    }

    /// Whether `key` has a live worker right now.
    pub fn is_active(&self, key: &ConversationKey) -> bool {
        self.conversations.contains_key(key)
    }

    /// Conversations with a live worker.
    pub fn conversations(&self) -> usize {
        self.conversations.len()
    }

    /// Waits until every accepted message has been answered.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every accepted message has been answered or is blocked on a human (whose
    /// approval survives a restart anyway). Polls: this runs once, during shutdown.
    pub async fn wait_drained(&self) {
        loop {
            let busy = self.in_flight.load(Ordering::SeqCst);
            let waiting = self.services.awaiting_humans.load(Ordering::SeqCst);
            if busy <= waiting {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn finish_one(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn spawn_worker(self: &Arc<Self>, key: ConversationKey) -> Handle {
        let (tx, mut rx) = mpsc::channel(self.services.config.router.queue_depth);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let router = Arc::clone(self);
        // Counted from here until the task ends, however it ends.
        let active = self.services.metrics.conversation_started();
        self.services.tasks.spawn(async move {
            let _active = active;
            let mut conversation = Conversation::new(key.clone(), router.services.clone());
            let done = || router.finish_one();
            loop {
                match conversation.run(&mut rx, &done).await {
                    WorkerExit::Idle => {
                        let retired = router
                            .conversations
                            .remove_if(&key, |_, h| h.generation == generation && rx.is_empty());
                        if retired.is_some() {
                            tracing::debug!(conversation = %key, "worker retired");
                            return;
                        }
                        // Messages arrived while we were deciding: keep serving.
                    }
                    WorkerExit::Shutdown => {
                        rx.close();
                        while rx.try_recv().is_ok() {
                            router.finish_one();
                        }
                        router
                            .conversations
                            .remove_if(&key, |_, h| h.generation == generation);
                        return;
                    }
                }
            }
        });
        Handle { tx, generation }
    }
}
