//! `boxedclaw`: the gateway binary. Parses the command line, loads config, sets up logging and
//! hands over to the library. The only place `anyhow` is used.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use boxedclaw_channels::ChannelAdapter;
use boxedclaw_channels::terminal::TerminalChannel;
use boxedclaw_gateway::config::{Config, ConfigError, Env};
use boxedclaw_gateway::console::Console;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// A secure chat gateway for AI agents: every conversation gets its own sandboxed agent.
#[derive(Debug, Parser)]
#[command(name = "boxedclaw", version)]
struct Cli {
    /// Config file (TOML). Default: $BOXEDCLAW_CONFIG, else ./boxedclaw.toml if present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (default).
    Run,
    /// Talk to an agent from this terminal: /approve <id> and /deny <id> answer approvals.
    Chat {
        /// Your user name in this conversation.
        #[arg(long, default_value = "local")]
        user: String,
    },
    /// Check what this host can run and whether the configuration works.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // Chat keeps the terminal for the conversation: only warnings go to stderr by default.
    let default_level = if matches!(command, Command::Chat { .. }) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::load(cli.config.as_deref(), &Env::from_process());
    if let Ok(cfg) = &config {
        export_boxlite_runtime_dir(cfg);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boxedclaw: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("boxedclaw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `boxlite` library finds its runtime through `BOXLITE_RUNTIME_DIR`; the gateway's own
/// setting (config key or default install location) is handed to it that way.
#[allow(unsafe_code)]
fn export_boxlite_runtime_dir(cfg: &Config) {
    // SAFETY: called from `main` before the async runtime is built, while this process has
    // exactly one thread, so no other thread can be reading the environment.
    unsafe { std::env::set_var("BOXLITE_RUNTIME_DIR", &cfg.boxlite.runtime_dir) }
}

async fn dispatch(
    command: Command,
    config: Result<Config, ConfigError>,
) -> anyhow::Result<ExitCode> {
    if let Command::Doctor = command {
        let (report, ok) = boxedclaw_gateway::doctor::report(&config).await;
        print!("{report}");
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            // One line that says what to fix (for NoLlm: which variable to set).
            eprintln!("boxedclaw: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let sandbox = boxedclaw_gateway::build_sandbox(&config)?;
    let shutdown = CancellationToken::new();
    // Returns once the token is cancelled, by a signal or by the gateway finishing.
    let signals = boxedclaw_gateway::shutdown::cancel_on_signal(shutdown.clone());
    match command {
        Command::Chat { user } => {
            let channels: Vec<Arc<dyn ChannelAdapter>> =
                vec![Arc::new(TerminalChannel::stdio(&user)?)];
            let (ran, ()) = tokio::join!(
                boxedclaw_gateway::run(config, sandbox, channels, shutdown),
                signals
            );
            ran?;
        }
        Command::Run | Command::Doctor => {
            let frontends = boxedclaw_gateway::build_frontends(&config)?;
            // Bound before anything else starts, so the address printed is one that answers.
            let listener = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("cannot listen on {}", config.http_addr))?;
            // The bound address: with port 0 in the config, the one the kernel picked.
            let bound = listener.local_addr().unwrap_or(config.http_addr);
            announce(bound, frontends.console.as_deref(), frontends.platforms);
            let gateway =
                boxedclaw_gateway::serve(config, sandbox, frontends, listener, shutdown.clone());
            let (ran, ()) = tokio::join!(gateway, signals);
            ran?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells the user where to go: the console's address on stdout (the first thing a new user
/// needs), and what to set when no chat platform is configured.
fn announce(addr: std::net::SocketAddr, console: Option<&Console>, platforms: usize) {
    match console {
        Some(console) => {
            // 0.0.0.0 is where we listen, not an address to open.
            let ip = if addr.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                addr.ip()
            };
            let shown = std::net::SocketAddr::new(ip, addr.port());
            println!("BoxedClaw console: http://{shown}/ (dashboard: http://{shown}/dashboard)");
            if console.has_admin_token() {
                println!("Other machines need the admin token (BOXEDCLAW_ADMIN_TOKEN) to open it.");
            }
        }
        None => tracing::info!(%addr, "web console disabled ([console] enabled = false)"),
    }
    if platforms == 0 {
        tracing::info!(
            "no chat platform token set (TELEGRAM_BOT_TOKEN, SLACK_BOT_TOKEN, \
             DISCORD_BOT_TOKEN); chat on the web console or with `boxedclaw chat`"
        );
    }
}
