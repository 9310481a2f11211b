//! BoxLite's exec stdio as the `AsyncRead` / `AsyncWrite` pair the agent link expects.
//!
//! BoxLite hands stdout over as a stream of text chunks fed by an unbounded channel. A guest
//! that writes without pause must not make the host buffer without bound, so a pump drains the
//! stream at once into a buffer of bounded size; when the reader falls more than the bound
//! behind, the stream is cut (the link then sees end of file and treats the box as broken).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use boxlite::ExecStdin;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::task::TaskTracker;

use boxedclaw_protocol::codec::MAX_FRAME_LEN;

/// Bytes of unread guest output held before the stream is cut: two full frames.
pub(super) const MAX_BUFFERED: usize = 2 * MAX_FRAME_LEN;

#[derive(Default)]
struct Shared {
    buf: VecDeque<u8>,
    closed: bool,
    overflowed: bool,
    waker: Option<Waker>,
}

/// The reading end fed by [`pump_stdout`].
pub(super) struct BoundedReader(Arc<Mutex<Shared>>);

impl AsyncRead for BoundedReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !s.buf.is_empty() {
            let n = out.remaining().min(s.buf.len());
            let (a, b) = s.buf.as_slices();
            let from_a = n.min(a.len());
            out.put_slice(&a[..from_a]);
            out.put_slice(&b[..n - from_a]);
            s.buf.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if s.closed {
            return Poll::Ready(Ok(())); // end of file
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Starts draining `stdout` into a [`BoundedReader`].
pub(super) fn pump_stdout<S>(mut stdout: S, tasks: &TaskTracker) -> BoundedReader
where
    S: futures_util::Stream<Item = String> + Send + Unpin + 'static,
{
    let shared = Arc::new(Mutex::new(Shared::default()));
    let pump = shared.clone();
    tasks.spawn(async move {
        while let Some(chunk) = stdout.next().await {
            let mut s = pump.lock().unwrap_or_else(|p| p.into_inner());
            if s.buf.len() + chunk.len() > MAX_BUFFERED {
                s.overflowed = true;
                tracing::warn!(target: "boxedclaw::sandbox", "box output exceeded {MAX_BUFFERED} unread bytes; cutting it off");
                break;
            }
            s.buf.extend(chunk.as_bytes());
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        let mut s = pump.lock().unwrap_or_else(|p| p.into_inner());
        s.closed = true;
        if s.overflowed {
            // What is buffered may end mid-frame; drop it so the reader sees a clean cut.
            s.buf.clear();
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    });
    BoundedReader(shared)
}

/// A writer whose bytes go to the box's stdin, through a pump task.
pub(super) fn pump_stdin(mut stdin: ExecStdin, tasks: &TaskTracker) -> tokio::io::DuplexStream {
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    tasks.spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match theirs.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stdin.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        stdin.close();
    });
    ours
}

/// Drains a stream of guest diagnostics into the log, bounded.
pub(super) fn drain_text<S>(mut stream: S, agent: String, tasks: &TaskTracker)
where
    S: futures_util::Stream<Item = String> + Send + Unpin + 'static,
{
    tasks.spawn(async move {
        let mut logged = 0usize;
        while let Some(chunk) = stream.next().await {
            if logged < 200 {
                let text = boxedclaw_protocol::display::escape_untrusted(
                    &chunk.chars().take(1000).collect::<String>(),
                );
                tracing::debug!(target: "boxedclaw::sandbox", %agent, line = %text, "box stderr");
                logged += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_arrive_in_order_and_end_cleanly() {
        let tasks = TaskTracker::new();
        let chunks = vec![
            "{\"type\":".to_owned(),
            "\"x\"}\n".to_owned(),
            "tail".to_owned(),
        ];
        let mut reader = pump_stdout(futures_util::stream::iter(chunks), &tasks);
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "{\"type\":\"x\"}\ntail");
    }

    #[tokio::test]
    async fn a_flooding_guest_is_cut_off_without_unbounded_buffering() {
        let tasks = TaskTracker::new();
        let chunk = "x".repeat(1 << 20);
        // Far more than the bound, never read while it arrives.
        let flood = futures_util::stream::iter(std::iter::repeat_n(chunk, 64));
        let reader = pump_stdout(flood, &tasks);
        tasks.close();
        tasks.wait().await;
        let shared = reader.0.lock().unwrap();
        assert!(shared.overflowed && shared.closed);
        assert!(
            shared.buf.is_empty(),
            "a cut stream hands out nothing partial"
        );
    }
}
