//! The connection to one running agent: frames out on its stdin, frames in from its stdout.
//!
//! Everything read here is hostile input. Lines are bounded while they arrive
//! ([`LineSplitter`]), decoding refuses anything but a known [`BoxToHost`] frame, and the first
//! bad frame ends the link: a stream that broke framing cannot be trusted to resynchronize.

use std::time::Duration;

use boxedclaw_protocol::codec::{self, DecodeError, LineSplitter, MAX_FRAME_LEN};
use boxedclaw_protocol::{BoxToHost, HostToBox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::SandboxProcess;

/// How long a write to the agent may block before the agent is considered stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an agent gets to exit after `Shutdown` before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the link ended or a frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The agent closed its stdout (exited or crashed).
    #[error("agent exited")]
    Closed,
    /// Reading or writing failed.
    #[error("agent i/o failed: {0}")]
    Io(String),
    /// The agent sent something that is not a valid frame: a protocol violation.
    #[error("protocol violation: {0}")]
    Protocol(#[from] DecodeError),
}

/// A running agent's framed stdio.
pub struct AgentLink {
    process: SandboxProcess,
    splitter: LineSplitter,
    buf: Box<[u8]>,
    broken: bool,
}

impl std::fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLink")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl AgentLink {
    /// Wraps a started sandbox. Its stderr, if any, should already have been taken.
    pub fn new(process: SandboxProcess) -> Self {
        Self {
            process,
            splitter: LineSplitter::new(MAX_FRAME_LEN),
            buf: vec![0; 64 * 1024].into_boxed_slice(),
            broken: false,
        }
    }

    /// Sends one frame.
    ///
    /// # Errors
    /// [`LinkError::Io`] when the agent does not take it within the write timeout or its
    /// stdin is closed.
    pub async fn send(&mut self, frame: &HostToBox) -> Result<(), LinkError> {
        let bytes = codec::encode(frame);
        tracing::trace!(target: "boxedclaw::ipc", direction = "to_box", frame = %String::from_utf8_lossy(&bytes).trim_end());
        let write = async {
            self.process.stdin.write_all(&bytes).await?;
            self.process.stdin.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LinkError::Io(e.to_string())),
            Err(_) => Err(LinkError::Io(
                "agent did not read its input for 10 s".into(),
            )),
        }
    }

    /// Receives the next frame. Cancel-safe: a frame is never lost if the future is dropped.
    ///
    /// # Errors
    /// [`LinkError::Closed`] at end of stream, [`LinkError::Protocol`] for a bad frame (the
    /// link is then unusable), [`LinkError::Io`] for read errors.
    pub async fn recv(&mut self) -> Result<BoxToHost, LinkError> {
        if self.broken {
            return Err(LinkError::Closed);
        }
        loop {
            if let Some(line) = self.splitter.next_line() {
                let decoded = line.map_err(LinkError::from).and_then(|l| {
                    tracing::trace!(target: "boxedclaw::ipc", direction = "from_box", bytes = l.len(), frame = %String::from_utf8_lossy(&l[..l.len().min(4096)]));
                    codec::decode::<BoxToHost>(l).map_err(LinkError::from)
                });
                if decoded.is_err() {
                    self.broken = true;
                }
                return decoded;
            }
            let n = self
                .process
                .stdout
                .read(&mut self.buf)
                .await
                .map_err(|e| LinkError::Io(e.to_string()))?;
            if n == 0 {
                self.broken = true;
                return Err(LinkError::Closed);
            }
            if let Err(e) = self.splitter.feed(&self.buf[..n]) {
                self.broken = true;
                return Err(e.into());
            }
        }
    }

    /// Asks the agent to exit, then makes sure the whole sandbox is gone.
    pub async fn shutdown(mut self) {
        if !self.broken && self.send(&HostToBox::Shutdown).await.is_ok() {
            let exited = tokio::time::timeout(SHUTDOWN_GRACE, self.process.control.wait()).await;
            if exited.is_ok() {
                return;
            }
        }
        self.kill().await;
    }

    /// Kills the sandbox at once.
    pub async fn kill(&mut self) {
        self.broken = true;
        self.process.control.kill().await;
    }

    /// The sandbox's host pid, for metrics and benchmarks.
    pub fn pid(&self) -> Option<u32> {
        self.process.control.pid()
    }
}
