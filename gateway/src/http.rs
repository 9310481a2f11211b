//! The gateway's HTTP server: health and readiness for supervisors and load balancers, plus
//! what the caller mounts (platform webhooks, the web console). It serves with the peer
//! address attached to every request, which the console's access rule reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Whether this gateway should be sent traffic, as `/readyz` reports it: not while it is
/// still connecting its channels and recovering pending work, and not once it drains for
/// shutdown, so a load balancer (or a Kubernetes readiness probe) routes around it then.
/// `/healthz` stays 200 throughout: the process is alive, only not taking new work.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// Start-up is over: channels connected (or given up on) and recovery done. A gateway
    /// already draining stays draining.
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Shutdown has begun; final.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    /// `starting`, `ready` or `draining`.
    pub fn state(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            STARTING => "starting",
            READY => "ready",
            _ => "draining",
        }
    }

    /// The `/readyz` answer: 200 only when ready, 503 naming the state otherwise.
    fn answer(&self) -> (StatusCode, String) {
        let state = self.state();
        let status = if state == "ready" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, format!("{state}\n"))
    }
}

/// The health and readiness routes, without a socket.
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || async move { readiness.answer() }))
}

/// Serves [`routes`] plus `extra` (platform webhooks, the console) on `listener`, bound by the
/// caller so that it can say which address answers, until `shutdown`.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    extra: Router,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "HTTP server listening");
    let app = routes(readiness).merge(extra);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn readyz_follows_the_gateway_from_starting_to_draining() {
        let readiness = Readiness::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = serve_on(listener, Router::new(), readiness.clone(), stop.clone());
        let client = reqwest::Client::new();
        let probe = |path: &'static str| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let r = client.get(format!("{base}{path}")).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let probes = async {
            assert_eq!(probe("/readyz").await, (503, "starting\n".into()));
            assert_eq!(probe("/healthz").await, (200, "ok\n".into()));
            readiness.set_ready();
            assert_eq!(probe("/readyz").await, (200, "ready\n".into()));
            readiness.set_draining();
            readiness.set_ready();
            assert_eq!(probe("/readyz").await, (503, "draining\n".into()));
            assert_eq!(probe("/healthz").await, (200, "ok\n".into()));
            stop.cancel();
        };
        let (served, ()) = tokio::join!(server, probes);
        served.unwrap();
    }
}
