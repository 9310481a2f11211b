//! The gateway's HTTP server: health and readiness for supervisors and load balancers, plus
//! what the caller mounts (platform webhooks, the web console). It serves with the peer
//! address attached to every request, which the console's access rule reads.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// The routes, without a socket (tests use `oneshot`).
pub fn routes() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
}

/// Serves [`routes`] plus `extra` (platform webhooks) on `addr` until `shutdown`.
///
/// # Errors
/// The bind error, e.g. the address is in use.
pub async fn serve(
    addr: SocketAddr,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, extra, shutdown).await
}

/// Like [`serve`], on a socket already bound (tests bind `127.0.0.1:0`).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "HTTP server listening");
    let app = routes().merge(extra);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
