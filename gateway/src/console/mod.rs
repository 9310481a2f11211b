//! The web console on the gateway's HTTP server: the local chat page (the `web` channel from
//! `boxedclaw-web`), the operators' dashboard, `/metrics`, and the login page, all behind one
//! access rule ([`access`]): this machine, or the admin token.
//!
//! The console is built before the gateway runs (its routes go to the HTTP server, its chat
//! adapter to the channels) and [`Console::attach`]ed to the running gateway's services once
//! they exist; until then the dashboard answers 503.

pub mod access;
mod assets;
mod dashboard;
pub mod resources;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::Router as HttpRouter;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use boxedclaw_channels::ChannelAdapter;
use boxedclaw_protocol::ids::{Platform, UserRef};
use boxedclaw_web::{SessionKey, WebChannel, WebSettings};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::router::Router;
use crate::services::Services;

use self::access::AccessPolicy;

/// The id of the console's operator: whoever holds the dashboard (this machine, or the admin
/// token) decides approvals as `web:operator`. Browser chat sessions have 32-hex-digit ids,
/// so they can never be this user.
pub const OPERATOR_ID: &str = "operator";

/// The console's operator as a user.
pub fn operator() -> UserRef {
    // A fixed, valid id: construction cannot fail.
    UserRef::new(Platform::Web, OPERATOR_ID).unwrap_or_else(|_| unreachable!("valid user id"))
}

/// The web console.
pub struct Console {
    web: Arc<WebChannel>,
    access: Arc<AccessPolicy>,
    started: Instant,
    attached: OnceLock<Attached>,
    /// The last audit-chain verification (it reads the whole log, so it is not redone on
    /// every refresh of the dashboard).
    audit_status: Mutex<Option<(Instant, dashboard::ChainStatus)>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("attached", &self.attached.get().is_some())
            .finish_non_exhaustive()
    }
}

/// What the running gateway hands the console.
pub(crate) struct Attached {
    pub(crate) services: Arc<Services>,
    pub(crate) router: Arc<Router>,
    pub(crate) channels: ChannelBoard,
}

/// The state of each channel's intake, as the gateway started them.
#[derive(Debug, Default, Clone)]
pub(crate) struct ChannelBoard(Vec<ChannelEntry>);

#[derive(Debug, Clone)]
struct ChannelEntry {
    platform: Platform,
    ready: CancellationToken,
    ended: Arc<OnceLock<Result<(), String>>>,
}

impl ChannelBoard {
    /// Adds a channel; the returned cell is set when its intake ends (`Err`: why it failed).
    pub(crate) fn add(
        &mut self,
        platform: Platform,
        ready: CancellationToken,
    ) -> Arc<OnceLock<Result<(), String>>> {
        let ended = Arc::new(OnceLock::new());
        self.0.push(ChannelEntry {
            platform,
            ready,
            ended: ended.clone(),
        });
        ended
    }
}

/// The file in the data directory holding the key that signs web chat cookies.
pub const SESSION_KEY_FILE: &str = "web-session.key";

/// The key that signs web chat cookies, so that a browser's session (and its conversation)
/// survives a gateway restart: 32 random bytes in `<data_dir>/web-session.key` (mode 0600),
/// made on first use and replaced if unreadable as a key.
fn session_key(data_dir: &std::path::Path) -> std::io::Result<SessionKey> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let path = data_dir.join(SESSION_KEY_FILE);
    match std::fs::read(&path).map(<[u8; 32]>::try_from) {
        Ok(Ok(bytes)) => return Ok(SessionKey::new(bytes)),
        Ok(Err(_)) => tracing::warn!(path = %path.display(), "not a session key; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    crate::conversation::create_private_dir(data_dir)?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    // Written whole under another name, then renamed: a crash never leaves half a key.
    let partial = data_dir.join(format!("{SESSION_KEY_FILE}.partial"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    Ok(SessionKey::new(bytes))
}

impl Console {
    /// The console `config` asks for, or `None` when `[console] enabled = false`.
    pub fn new(config: &Config) -> Option<Arc<Self>> {
        config.console.enabled.then(|| {
            Arc::new(Self {
                web: WebChannel::new(WebSettings {
                    session_key: match session_key(&config.data_dir) {
                        Ok(key) => Some(key),
                        Err(e) => {
                            tracing::warn!(error = %e, "web chat sessions will not survive a restart");
                            None
                        }
                    },
                    ..WebSettings::default()
                }),
                access: Arc::new(AccessPolicy::new(config.console.admin_token.clone())),
                started: Instant::now(),
                attached: OnceLock::new(),
                audit_status: Mutex::new(None),
            })
        })
    }

    /// The chat adapter, to run with the other channels.
    pub fn channel(&self) -> Arc<dyn ChannelAdapter> {
        self.web.clone()
    }

    /// Whether a token lets other machines in.
    pub fn has_admin_token(&self) -> bool {
        self.access.has_token()
    }

    /// Hands the console the running gateway.
    pub(crate) fn attach(&self, attached: Attached) {
        if self.attached.set(attached).is_err() {
            tracing::warn!("console attached twice; keeping the first gateway");
        }
    }

    /// Every console route, to merge into the gateway's HTTP server. The server must provide
    /// the peer address (`into_make_service_with_connect_info`); without it every request
    /// counts as remote.
    pub fn routes(self: &Arc<Self>) -> HttpRouter {
        let policy = self.access.clone();
        let dashboard = HttpRouter::new()
            .route(
                "/dashboard",
                get(|| async { assets::html(assets::DASHBOARD_HTML) }),
            )
            .route(
                "/assets/dashboard.js",
                get(|| async { assets::script(assets::DASHBOARD_JS) }),
            )
            .route(
                "/assets/dashboard.css",
                get(|| async { assets::style(assets::DASHBOARD_CSS) }),
            )
            .route("/api/dashboard", get(dashboard::snapshot))
            .route("/api/dashboard/decisions", post(dashboard::decide))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        let guarded = self
            .web
            .router()
            .merge(dashboard)
            .layer(axum::middleware::from_fn(move |req, next| {
                access::guard(policy.clone(), req, next)
            }));
        let login = HttpRouter::new()
            .route("/login", get(|| async { assets::html(assets::LOGIN_HTML) }))
            .route(
                "/assets/login.js",
                get(|| async { assets::script(assets::LOGIN_JS) }),
            )
            .route("/api/login", post(login))
            .with_state(self.clone())
            .layer(axum::middleware::map_response(
                |mut response: Response| async move {
                    access::add_security_headers(response.headers_mut());
                    response
                },
            ));
        guarded.merge(login)
    }

    fn attached(&self) -> Result<&Attached, Unavailable> {
        self.attached.get().ok_or(Unavailable::Starting)
    }
}

/// Why the console cannot answer right now.
#[derive(Debug)]
enum Unavailable {
    /// The gateway has not attached yet.
    Starting,
    /// The store failed.
    Store(String),
}

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        let text = match self {
            Self::Starting => "the gateway is starting\n".to_owned(),
            Self::Store(e) => {
                tracing::error!(error = %e, "console: store unavailable");
                format!("the store is unavailable: {e}\n")
            }
        };
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    }
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(console): State<Arc<Console>>) -> Response {
    match console.attached() {
        Ok(a) => (
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            a.services.metrics.encode(),
        )
            .into_response(),
        Err(starting) => starting.into_response(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    token: String,
}

/// `POST /api/login {"token": …}`: sets the admin cookie.
async fn login(
    State(console): State<Arc<Console>>,
    axum::Json(form): axum::Json<LoginForm>,
) -> Response {
    match console.access.login(&form.token) {
        Ok(cookie) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
        Err(e) => {
            let status = match e {
                access::LoginError::NoToken => StatusCode::NOT_FOUND,
                access::LoginError::Wrong => StatusCode::UNAUTHORIZED,
                access::LoginError::TooMany => StatusCode::TOO_MANY_REQUESTS,
            };
            tracing::warn!(target: "boxedclaw::audit", event = "console.login_failed", reason = %e);
            (status, format!("{e}\n")).into_response()
        }
    }
}
