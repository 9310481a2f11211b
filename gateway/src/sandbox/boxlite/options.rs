//! Our configuration → BoxLite's `BoxOptions`. Pure, so the security-relevant translation
//! (volumes, network off, security profile on, limits) is unit-tested without a VM.

use boxlite::runtime::options::VolumeSpec;
use boxlite::{BoxOptions, NetworkSpec, RootfsSpec, SecurityOptions};

use crate::config::{BoxliteConfig, GuestImage, SandboxLimits};
use crate::sandbox::namespace::AGENT_PATH;

/// The host directories a box gets.
#[derive(Debug, Clone)]
pub(super) struct BoxMounts {
    /// Host directory that becomes `/workspace` (read-write).
    pub(super) workspace: String,
    /// Static agent binary on the host, mounted read-only when the image does not carry it.
    pub(super) agent_binary: String,
}

/// The box's main process: an idle loop, so the agent can be started (and restarted) with
/// `exec` while the VM stays up. Any image with a POSIX shell works.
pub(super) const IDLE_COMMAND: [&str; 3] = ["/bin/sh", "-c", "while :; do sleep 3600; done"];

/// Builds the options of one conversation's box.
pub(super) fn box_options(
    cfg: &BoxliteConfig,
    limits: &SandboxLimits,
    mounts: &BoxMounts,
) -> BoxOptions {
    let mut volumes = vec![VolumeSpec::bind_mount(
        mounts.workspace.clone(),
        "/workspace",
    )];
    let rootfs = match &cfg.image {
        GuestImage::Layout(path) => RootfsSpec::RootfsPath(path.to_string_lossy().into_owned()),
        GuestImage::Reference(reference) => {
            // A foreign image does not carry our agent: lend it the host's static binary,
            // read-only, as a single-file volume (BoxLite stages it alone, no siblings).
            let mut agent = VolumeSpec::bind_mount(mounts.agent_binary.clone(), AGENT_PATH);
            agent.read_only = true;
            volumes.push(agent);
            RootfsSpec::Image(reference.clone())
        }
    };

    let mut security = SecurityOptions::enabled();
    // No guest network means no gvproxy, so the jailer needs no host IP grants either.
    security.network_enabled = false;
    // The environment the shim may keep: none of ours (API keys live in the gateway's
    // environment, and the shim sits in the guest's trust domain).
    security.sanitize_env = true;
    security.env_allowlist.retain(|v| v == "RUST_LOG");
    // Host-side limits of the shim's process tree; guest memory and CPUs are VM settings.
    security.resource_limits.max_file_size = Some(limits.file_size_bytes.max(1 << 30));

    let mut options = BoxOptions {
        cpus: Some(cfg.cpus),
        memory_mib: Some(cfg.memory_mib),
        rootfs,
        volumes,
        network: NetworkSpec::Disabled,
        inbound_network: NetworkSpec::Disabled,
        working_dir: Some("/workspace".to_owned()),
        entrypoint: Some(IDLE_COMMAND.iter().map(|s| (*s).to_owned()).collect()),
        cmd: None,
        // Boxes are per conversation and disposable: removed when stopped, never detached.
        auto_delete: Some(1),
        detach: false,
        ..BoxOptions::default()
    };
    options.advanced.security = security;
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(image: GuestImage) -> BoxliteConfig {
        BoxliteConfig {
            runtime_dir: PathBuf::from("/rt"),
            image,
            home_dir: PathBuf::from("/data/boxlite/home"),
            cpus: 2,
            memory_mib: 768,
            warm_pool: 0,
        }
    }

    fn limits() -> SandboxLimits {
        SandboxLimits {
            memory_bytes: 1 << 30,
            max_processes: 128,
            file_size_bytes: 2 << 30,
            cpu_seconds: 600,
            open_files: 256,
            workspace_bytes: 1 << 30,
        }
    }

    fn mounts() -> BoxMounts {
        BoxMounts {
            workspace: "/ws/conv-1".into(),
            agent_binary: "/opt/agent-static".into(),
        }
    }

    #[test]
    fn workspace_volume_network_off_security_on_and_limits() {
        let o = box_options(
            &cfg(GuestImage::Layout("/img".into())),
            &limits(),
            &mounts(),
        );
        assert_eq!(
            o.volumes.len(),
            1,
            "our image carries the agent; only the workspace is shared"
        );
        assert_eq!(o.volumes[0].host_path, "/ws/conv-1");
        assert_eq!(o.volumes[0].guest_path, "/workspace");
        assert!(!o.volumes[0].read_only);
        assert!(matches!(o.rootfs, RootfsSpec::RootfsPath(ref p) if p == "/img"));
        assert!(matches!(o.network, NetworkSpec::Disabled));
        assert!(matches!(o.inbound_network, NetworkSpec::Disabled));
        assert!(o.ports.is_empty() && o.secrets.is_empty());
        let s = &o.advanced.security;
        assert!(s.jailer_enabled && s.seccomp_enabled && s.chroot_enabled && s.new_pid_ns);
        assert!(s.close_fds && s.sanitize_env && !s.network_enabled);
        assert_eq!(s.env_allowlist, vec!["RUST_LOG".to_string()]);
        assert_ne!(s.uid, Some(0), "the shim must drop root");
        assert!(
            s.resource_limits.max_processes.is_some(),
            "host cgroup pids cap stays on"
        );
        assert_eq!(o.cpus, Some(2));
        assert_eq!(o.memory_mib, Some(768));
        assert!(!o.detach);
        assert_eq!(
            o.entrypoint.as_deref().map(|e| e[0].as_str()),
            Some("/bin/sh")
        );
    }

    #[test]
    fn foreign_images_get_the_agent_read_only() {
        let o = box_options(
            &cfg(GuestImage::Reference("debian:bookworm-slim".into())),
            &limits(),
            &mounts(),
        );
        assert!(matches!(o.rootfs, RootfsSpec::Image(ref r) if r == "debian:bookworm-slim"));
        let agent = o
            .volumes
            .iter()
            .find(|v| v.guest_path == AGENT_PATH)
            .unwrap();
        assert_eq!(agent.host_path, "/opt/agent-static");
        assert!(agent.read_only);
    }
}
