//! An in-memory channel for tests: inject events as any user, await what the gateway shows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxedclaw_protocol::ids::Platform;
use tokio::sync::{Notify, mpsc};

use crate::{BoxFuture, Capabilities, ChannelAdapter, ChannelContext, ChannelError};
use crate::{InboundEvent, OutboundAction};

/// A channel whose platform is played by the test.
#[derive(Debug)]
pub struct FakeChannel {
    platform: Platform,
    inbound: Mutex<Option<mpsc::Sender<InboundEvent>>>,
    delivered: Mutex<Vec<OutboundAction>>,
    changed: Notify,
    started: Notify,
    failing: std::sync::atomic::AtomicBool,
    delay: Mutex<Duration>,
}

impl FakeChannel {
    /// A fake adapter for `platform`.
    pub fn new(platform: Platform) -> Arc<Self> {
        Arc::new(Self {
            platform,
            inbound: Mutex::new(None),
            delivered: Mutex::new(Vec::new()),
            changed: Notify::new(),
            started: Notify::new(),
            failing: std::sync::atomic::AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
        })
    }

    /// Sends an event into the gateway, waiting until the gateway has started the channel.
    ///
    /// # Panics
    /// When the gateway does not start the channel within 10 s or has stopped.
    pub async fn send(&self, event: InboundEvent) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let started = self.started.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            let tx = self
                .inbound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(tx) = tx {
                tx.send(event).await.expect("gateway stopped");
                return;
            }
            tokio::time::timeout_at(deadline, started)
                .await
                .expect("channel never started");
        }
    }

    /// Makes every delivery fail (a platform outage) until switched back.
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every delivery take `delay` (a slow platform), recorded when it completes.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Everything delivered so far.
    pub fn delivered(&self) -> Vec<OutboundAction> {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until everything delivered so far satisfies `pred` (e.g. "three replies").
    ///
    /// # Panics
    /// When it does not within `timeout`.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[OutboundAction]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if pred(&self.delivered.lock().unwrap_or_else(|p| p.into_inner())) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "condition not met within {timeout:?}; delivered: {:#?}",
                    self.delivered()
                );
            }
        }
    }

    /// Waits until some delivered action satisfies `pred`, and returns it.
    ///
    /// # Panics
    /// When none does within `timeout`; the message lists what was delivered.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&OutboundAction) -> bool,
    ) -> OutboundAction {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(a) = self.delivered().into_iter().find(|a| pred(a)) {
                return a;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "no matching action within {timeout:?}; delivered: {:#?}",
                    self.delivered()
                );
            }
        }
    }
}

impl ChannelAdapter for FakeChannel {
    fn platform(&self) -> Platform {
        self.platform
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            buttons: true,
            threads: true,
            edits: true,
            ephemeral: true,
            max_text_len: 4000,
        }
    }

    fn run(self: Arc<Self>, ctx: ChannelContext) -> BoxFuture<'static, Result<(), ChannelError>> {
        Box::pin(async move {
            *self.inbound.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.inbound.clone());
            self.started.notify_waiters();
            ctx.ready.cancel();
            ctx.shutdown.cancelled().await;
            Ok(())
        })
    }

    fn deliver(&self, action: OutboundAction) -> BoxFuture<'_, Result<(), ChannelError>> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async { Err(ChannelError::Transport("platform unreachable".into())) });
        }
        let delay = *self.delay.lock().unwrap_or_else(|p| p.into_inner());
        Box::pin(async move {
            // Even a zero sleep waits for the timer's next millisecond tick.
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.delivered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(action);
            self.changed.notify_waiters();
            Ok(())
        })
    }
}

/// Calls `f` every 10 ms until it returns `Some`, and returns that; for platform fakes'
/// `wait_until`. Panics after `timeout`, naming `what` and showing `dump()` (what the fake
/// saw), so a failing test says what was missing and what happened instead.
pub async fn poll_until<T>(
    timeout: Duration,
    what: &str,
    f: impl Fn() -> Option<T>,
    dump: impl Fn() -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = f() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what};\n{}",
            dump()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Everything logged in this test process from now on, at every level: for canary tests that
/// check no secret reaches a log line. Installs the process-wide subscriber, so call it once
/// per test binary (put such a test in a file of its own).
pub fn capture_logs() -> CapturedLogs {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let installed = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    assert!(
        installed.is_ok(),
        "capture_logs: a subscriber is already installed"
    );
    logs
}

/// The log output [`capture_logs`] collects.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// What was logged so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
