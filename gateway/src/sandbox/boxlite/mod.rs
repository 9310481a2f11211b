//! The BoxLite backend: one microVM per conversation.
//!
//! Each conversation gets a box whose root filesystem is the guest image, whose only share is
//! the conversation's workspace (virtio-fs, at `/workspace`), with no network device and
//! BoxLite's full security profile on the host side (jailer: chroot, pid namespace, seccomp,
//! unprivileged uid, closed fds, sanitized environment). The box's main process idles; the
//! agent is started in it with `exec`, its stdin/stdout speaking the same frames as with the
//! namespace backend. Killing the agent stops and removes the box.
//!
//! A warm pool (`[boxlite] warm_pool`, default 0) keeps booted boxes whose workspace is a fresh,
//! empty directory; a new conversation (one whose workspace does not exist yet) takes one and
//! the directory is renamed into place, which the VM's share follows since it holds the
//! directory itself, not its name.
//!
//! # Layout
//! - [`runtime_dir`]: finding the runtime and checking its version (always built, for doctor).
//! - `options`: configuration → BoxLite options (pure, unit-tested).
//! - `stdio`: BoxLite exec streams → bounded `AsyncRead` / `AsyncWrite`.

#[cfg(feature = "boxlite")]
mod options;
pub mod runtime_dir;
#[cfg(feature = "boxlite")]
mod stdio;

#[cfg(feature = "boxlite")]
pub use self::backend::BoxliteBackend;

#[cfg(feature = "boxlite")]
mod backend {
    use std::collections::VecDeque;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use boxedclaw_channels::BoxFuture;
    use boxlite::{BoxCommand, BoxliteOptions, BoxliteRuntime, Execution, LiteBox};
    use tokio_util::task::TaskTracker;

    use super::options::{BoxMounts, box_options};
    use super::runtime_dir::check_runtime_dir;
    use super::stdio::{drain_text, pump_stdin, pump_stdout};
    use crate::config::{Config, GuestImage};
    use crate::host::SandboxKind;
    use crate::sandbox::namespace::AGENT_PATH;
    use crate::sandbox::{
        SandboxBackend, SandboxControl, SandboxError, SandboxProcess, SandboxSpec,
    };

    /// Boots boxes and starts agents in them.
    pub struct BoxliteBackend {
        booter: Arc<Booter>,
        tasks: TaskTracker,
    }

    /// Everything needed to boot a box, shared with the background pool filler.
    struct Booter {
        runtime: BoxliteRuntime,
        config: crate::config::BoxliteConfig,
        limits: crate::config::SandboxLimits,
        agent_binary: PathBuf,
        pool_dir: PathBuf,
        pool: Mutex<VecDeque<WarmBox>>,
        filling: AtomicBool,
    }

    impl std::fmt::Debug for BoxliteBackend {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BoxliteBackend")
                .field("config", &self.booter.config)
                .finish_non_exhaustive()
        }
    }

    /// A booted box waiting for a new conversation, with its (empty) workspace directory.
    struct WarmBox {
        litebox: LiteBox,
        workspace: PathBuf,
    }

    fn failed(e: impl std::fmt::Display) -> SandboxError {
        SandboxError::Spawn(e.to_string())
    }

    impl BoxliteBackend {
        /// Checks the runtime and the guest image and opens BoxLite's runtime.
        ///
        /// # Errors
        /// [`SandboxError`] when the runtime is missing, incomplete or of another version,
        /// the image layout is missing, or BoxLite refuses to start.
        pub fn new(cfg: &Config) -> Result<Self, SandboxError> {
            let runtime_dir =
                check_runtime_dir(&cfg.boxlite.runtime_dir).map_err(|e| SandboxError::Missing {
                    what: "BoxLite runtime".into(),
                    hint: e.to_string(),
                })?;
            if let GuestImage::Layout(path) = &cfg.boxlite.image
                && !path.join("index.json").is_file()
            {
                return Err(SandboxError::Missing {
                    what: format!("guest image layout {}", path.display()),
                    hint: "build it with `deploy/boxlite/build-guest-image.sh --agent \
                           target/release/boxedclaw-agent --out <dir>`"
                        .into(),
                });
            }
            let agent_binary = crate::sandbox::resolve_agent_binary(cfg.agent.binary.as_deref())?;
            tracing::info!(runtime = %runtime_dir.path.display(), version = %runtime_dir.version, "BoxLite runtime found");
            let runtime = BoxliteRuntime::new(BoxliteOptions {
                home_dir: cfg.boxlite.home_dir.clone(),
                ..BoxliteOptions::default()
            })
            .map_err(failed)?;
            let booter = Arc::new(Booter {
                runtime,
                config: cfg.boxlite.clone(),
                limits: cfg.limits,
                agent_binary,
                pool_dir: cfg.workspace_root.join(".warm"),
                pool: Mutex::new(VecDeque::new()),
                filling: AtomicBool::new(false),
            });
            let backend = Self {
                booter,
                tasks: TaskTracker::new(),
            };
            backend.refill_in_background();
            Ok(backend)
        }

        /// Tops the warm pool up without making anyone wait for it.
        fn refill_in_background(&self) {
            let booter = self.booter.clone();
            if booter.config.warm_pool == 0 || booter.filling.swap(true, Ordering::AcqRel) {
                return;
            }
            self.tasks.spawn(async move {
                booter.fill_pool().await;
                booter.filling.store(false, Ordering::Release);
            });
        }

        async fn start_agent(&self, spec: &SandboxSpec) -> Result<SandboxProcess, SandboxError> {
            let booter = &self.booter;
            let litebox = match booter.take_warm(spec) {
                Some(b) => b,
                None => booter.boot(&spec.workspace).await?,
            };
            self.refill_in_background();
            let command = BoxCommand::new(AGENT_PATH)
                .env("BOXEDCLAW_AGENT_ID", spec.agent_id.as_str())
                .env("BOXEDCLAW_WORKSPACE", "/workspace")
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("HOME", "/workspace")
                .working_dir("/workspace")
                .user("1000:1000");
            let mut execution = match litebox.exec(command).await {
                Ok(e) => e,
                Err(e) => {
                    let _ = litebox.stop().await;
                    return Err(failed(e));
                }
            };
            let (Some(stdin), Some(stdout)) = (execution.stdin(), execution.stdout()) else {
                let _ = litebox.stop().await;
                return Err(failed("the box gave no stdio for the agent"));
            };
            if let Some(stderr) = execution.stderr() {
                drain_text(stderr, spec.agent_id.to_string(), &self.tasks);
            }
            Ok(SandboxProcess {
                stdin: Box::new(pump_stdin(stdin, &self.tasks)),
                stdout: Box::new(pump_stdout(stdout, &self.tasks)),
                stderr: None,
                control: Box::new(BoxControl {
                    litebox: Arc::new(litebox),
                    execution,
                }),
            })
        }
    }

    impl Booter {
        async fn boot(&self, workspace: &std::path::Path) -> Result<LiteBox, SandboxError> {
            let mounts = BoxMounts {
                workspace: workspace.to_string_lossy().into_owned(),
                agent_binary: self.agent_binary.to_string_lossy().into_owned(),
            };
            let options = box_options(&self.config, &self.limits, &mounts);
            let litebox = self.runtime.create(options, None).await.map_err(failed)?;
            litebox.start().await.map_err(failed)?;
            Ok(litebox)
        }

        /// Boots boxes until the pool holds `[boxlite] warm_pool` of them.
        async fn fill_pool(&self) {
            loop {
                let have = self.pool.lock().unwrap_or_else(|p| p.into_inner()).len();
                if have >= self.config.warm_pool {
                    return;
                }
                let mut rnd = [0u8; 6];
                let _ = getrandom::fill(&mut rnd);
                let workspace = self.pool_dir.join(hex::encode(rnd));
                if let Err(e) = std::fs::create_dir_all(&workspace) {
                    tracing::warn!(error = %e, "warm pool: cannot create workspace");
                    return;
                }
                match self.boot(&workspace).await {
                    Ok(litebox) => self
                        .pool
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(WarmBox { litebox, workspace }),
                    Err(e) => {
                        tracing::warn!(error = %e, "warm pool: boot failed");
                        return;
                    }
                }
            }
        }

        /// A warm box for `spec`, if there is one and the conversation is new.
        fn take_warm(&self, spec: &SandboxSpec) -> Option<LiteBox> {
            // Only a conversation without state can take a box booted on an empty workspace.
            let empty = std::fs::read_dir(&spec.workspace)
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            // A workspace with a quota is a filesystem mounted on its directory, while a warm
            // box shares a plain directory fixed at boot: such a box cannot serve it.
            if !empty || crate::sandbox::quota::is_mount_point(&spec.workspace).unwrap_or(true) {
                return None;
            }
            let warm = self
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()?;
            let _ = std::fs::remove_dir(&spec.workspace);
            match std::fs::rename(&warm.workspace, &spec.workspace) {
                Ok(()) => Some(warm.litebox),
                Err(e) => {
                    tracing::warn!(error = %e, "warm pool: cannot hand over workspace; booting cold");
                    let _ = std::fs::create_dir_all(&spec.workspace);
                    self.pool
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_front(warm);
                    None
                }
            }
        }
    }

    struct BoxControl {
        litebox: Arc<LiteBox>,
        execution: Execution,
    }

    impl SandboxControl for BoxControl {
        fn kill(&mut self) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let _ = self.execution.kill().await;
                // Stopping removes the box (auto_delete): nothing of it outlives the agent.
                if let Err(e) = self.litebox.stop().await {
                    tracing::warn!(error = %e, "stopping box failed");
                }
            })
        }

        fn wait(&mut self) -> BoxFuture<'_, Option<i32>> {
            Box::pin(async move {
                let code = self.execution.wait().await.ok().map(|r| r.code());
                let _ = self.litebox.stop().await;
                code
            })
        }

        fn pid(&self) -> Option<u32> {
            None
        }
    }

    impl SandboxBackend for BoxliteBackend {
        fn kind(&self) -> SandboxKind {
            SandboxKind::Boxlite
        }

        fn start<'a>(
            &'a self,
            spec: &'a SandboxSpec,
        ) -> BoxFuture<'a, Result<SandboxProcess, SandboxError>> {
            Box::pin(self.start_agent(spec))
        }
    }
}
