//! One conversation: a worker task that owns the conversation's agent and runs its turns in
//! order.
//!
//! Messages for a conversation arrive on a bounded queue (filled by the router) and are handled
//! one at a time, so replies keep the order of questions. Between turns the worker watches the
//! agent: an idle agent is shut down after `idle_timeout` (its memory stays in the workspace),
//! and an agent that speaks out of turn is stopped.
//!
//! # Layout
//! - [`agent`]: starting an agent (sandbox + handshake) and the crash budget.
//! - [`turn`]: one turn: LLM calls, approvals, gateway-side tools, the answer.

mod agent;
mod turn;

pub(crate) use agent::create_private_dir;

use std::sync::Arc;

use boxedclaw_channels::OutboundAction;
use boxedclaw_protocol::agent::BoxToHost;
use boxedclaw_protocol::channel::InboundMessage;
use boxedclaw_protocol::ids::ConversationKey;
use tokio::sync::mpsc;

use self::agent::{CrashBudget, RunningAgent};
use crate::metrics::TurnResult;
use crate::services::{Services, correlation_id};
use crate::store::ApprovalRow;

pub(crate) use self::turn::TurnOutcome;

/// What a conversation's worker is asked to do, in queue order.
#[derive(Debug)]
pub enum Work {
    /// A user's message: run a turn.
    Message(InboundMessage),
    /// Stop the agent (admin `stop`); it restarts on the next message.
    Stop,
    /// Stop the agent and forget its memory (admin `reset`); workspace files stay.
    Reset,
    /// Run a call whose approval was decided after a restart (see [`ApprovalRow`]).
    Resume(Box<ApprovalRow>),
}

/// The worker of one conversation.
pub(crate) struct Conversation {
    key: ConversationKey,
    services: Arc<Services>,
    agent: Option<RunningAgent>,
    crashes: CrashBudget,
    /// Whether the user has been told that the workspace is full (told once per time it fills).
    told_workspace_full: bool,
}

/// Why a worker loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WorkerExit {
    /// Nothing happened for `idle_timeout`; the agent was released.
    Idle,
    /// The gateway is shutting down.
    Shutdown,
}

impl Conversation {
    pub(crate) fn new(key: ConversationKey, services: Arc<Services>) -> Self {
        Self {
            key,
            services,
            agent: None,
            crashes: CrashBudget::default(),
            told_workspace_full: false,
        }
    }

    /// Handles messages until idle or shutdown. `done` is called after each message.
    pub(crate) async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<Work>,
        done: &(dyn Fn() + Send + Sync),
    ) -> WorkerExit {
        let idle = self.services.config.agent.idle_timeout;
        loop {
            let shutdown = self.services.shutdown.clone();
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => Event::Shutdown,
                w = rx.recv() => w.map_or(Event::Shutdown, Event::Work),
                frame = watch_idle_agent(self.agent.as_mut()) => Event::OutOfTurn(frame),
                () = tokio::time::sleep(idle) => Event::Idle,
            };
            match event {
                Event::Shutdown => {
                    self.release_agent().await;
                    return WorkerExit::Shutdown;
                }
                Event::Idle => {
                    self.release_agent().await;
                    return WorkerExit::Idle;
                }
                Event::Work(work) => {
                    match work {
                        Work::Message(msg) => self.handle(msg).await,
                        Work::Stop => self.release_agent().await,
                        Work::Reset => self.reset().await,
                        Work::Resume(row) => self.resume(&row).await,
                    }
                    done();
                }
                Event::OutOfTurn(frame) => self.out_of_turn(frame).await,
            }
        }
    }

    /// Runs one message as a turn and shows the result.
    async fn handle(&mut self, msg: InboundMessage) {
        let key = self.key.clone();
        self.services
            .outbound
            .send(OutboundAction::Typing {
                conversation: key.clone(),
            })
            .await;
        let outcome = self.turn(&msg).await;
        self.finish(outcome).await;
    }

    /// Resumes a turn whose approval was decided after a restart.
    async fn resume(&mut self, row: &ApprovalRow) {
        let outcome = self.resume_turn(row).await;
        self.finish(outcome).await;
    }

    /// Shows how a turn ended; stops the agent when the turn says so.
    async fn finish(&mut self, outcome: TurnOutcome) {
        let key = self.key.clone();
        let (user_message, log_message, stop_agent, crashed) = match outcome {
            TurnOutcome::Answer(text) => {
                self.services.metrics.turn_finished(TurnResult::Completed);
                (text, None, false, false)
            }
            TurnOutcome::Crashed {
                user_message,
                log_message,
            } => (user_message, Some(log_message), true, true),
            TurnOutcome::Failed {
                user_message,
                log_message,
                stop_agent,
            } => (user_message, Some(log_message), stop_agent, false),
        };
        let text = match log_message {
            None => user_message,
            Some(log_message) => {
                self.services.metrics.turn_finished(TurnResult::Failed);
                let reference = correlation_id();
                tracing::warn!(conversation = %key, %reference, reason = %log_message, stop_agent, crashed, "turn failed");
                if stop_agent {
                    if let Some(mut agent) = self.agent.take() {
                        agent.link.kill().await;
                        if crashed {
                            agent.sandbox.crashed();
                        }
                    }
                    self.crashes.record();
                }
                format!("{user_message} (reference {reference})")
            }
        };
        self.services
            .reply(OutboundAction::Post {
                conversation: key,
                text,
            })
            .await;
        self.tell_if_workspace_full().await;
    }

    /// Says so when the workspace's quota is used up: the agent's writes fail from now on,
    /// and the model may not explain why.
    async fn tell_if_workspace_full(&mut self) {
        let Some(quotas) = &self.services.workspaces else {
            return;
        };
        let Some(usage) = quotas.usage(&agent::workspace_dir(&self.services, &self.key)) else {
            return;
        };
        if !usage.is_full() {
            self.told_workspace_full = false;
            return;
        }
        if std::mem::replace(&mut self.told_workspace_full, true) {
            return;
        }
        tracing::warn!(conversation = %self.key, available = usage.available_bytes, quota = usage.quota_bytes, free_inodes = usage.free_inodes, "workspace full");
        let what = if usage.free_inodes == 0 {
            "holds as many files as it may".to_owned()
        } else {
            format!(
                "is full ({} KiB of its {} MiB left)",
                usage.available_bytes >> 10,
                usage.quota_bytes >> 20
            )
        };
        self.services
            .reply(OutboundAction::Post {
                conversation: self.key.clone(),
                text: format!(
                    "This conversation's workspace {what}: the agent cannot save more until \
                     files are deleted. An admin can raise `[limits] workspace_mib`."
                ),
            })
            .await;
    }

    /// Something the agent sent while no turn was running.
    async fn out_of_turn(&mut self, frame: Result<BoxToHost, String>) {
        let reason = match frame {
            Ok(BoxToHost::Log { level, message }) => {
                turn::log_from_agent(&self.key, level, &message);
                return;
            }
            Ok(other) => format!("frame outside a turn: {}", turn::frame_name(&other)),
            Err(e) => e,
        };
        tracing::warn!(conversation = %self.key, %reason, "stopping idle agent");
        if let Some(mut agent) = self.agent.take() {
            agent.link.kill().await;
            agent.sandbox.crashed();
        }
        self.crashes.record();
    }

    async fn reset(&mut self) {
        self.release_agent().await;
        let memory = agent::workspace_dir(&self.services, &self.key).join(".boxedclaw");
        match std::fs::remove_dir_all(&memory) {
            Ok(()) => tracing::info!(conversation = %self.key, "memory reset"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(conversation = %self.key, error = %e, "memory reset failed"),
        }
        self.crashes = CrashBudget::default();
    }

    async fn release_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            tracing::info!(conversation = %self.key, agent = %agent.id, "releasing agent");
            agent.link.shutdown().await;
        }
    }
}

enum Event {
    Shutdown,
    Idle,
    Work(Work),
    OutOfTurn(Result<BoxToHost, String>),
}

/// Waits for a frame from an agent that is between turns; never resolves without an agent.
async fn watch_idle_agent(agent: Option<&mut RunningAgent>) -> Result<BoxToHost, String> {
    match agent {
        Some(a) => a.link.recv().await.map_err(|e| e.to_string()),
        None => std::future::pending().await,
    }
}
