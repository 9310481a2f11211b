//! The namespace sandbox's seccomp filter: system calls an agent has no use for and that are
//! the kernel's usual attack surface fail with `EPERM`, for the agent and everything it runs.
//!
//! Namespaces, dropped capabilities and `--disable-userns` already refuse most of these
//! (mounting, new user namespaces); the filter is the second wall, and the only one for calls
//! an unprivileged process may otherwise make: `ptrace` of its own children, the keyrings,
//! `io_uring`, `userfaultfd`, `perf_event_open`, `process_vm_readv`. bubblewrap loads the
//! program (`--seccomp FD`) just before it executes the agent, with `no_new_privs` set.
//!
//! A deny list rather than an allow list: agents run arbitrary user tools (compilers,
//! interpreters, package scripts), whose syscall needs an allow list would have to guess.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Denied calls by name (for the log and the tests) and number, on every supported
/// architecture.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const DENIED_COMMON: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("vhangup", libc::SYS_vhangup),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
];

/// Denied calls that exist on this architecture only.
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[(&str, i64)] = &[
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("uselib", libc::SYS_uselib),
];

#[cfg(target_arch = "aarch64")]
const DENIED_ARCH: &[(&str, i64)] = &[];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const DENIED_COMMON: &[(&str, i64)] = &[];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const DENIED_ARCH: &[(&str, i64)] = &[];

fn denied() -> impl Iterator<Item = &'static (&'static str, i64)> {
    DENIED_COMMON.iter().chain(DENIED_ARCH)
}

/// On x86-64 the same calls can be made through the x32 ABI, numbered with this bit set, and
/// the filter's architecture check does not tell the two apart.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// The names of the denied calls.
pub fn denied_names() -> impl Iterator<Item = &'static str> {
    denied().map(|(name, _)| *name)
}

/// Why no filter could be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This architecture has no deny list.
    #[error("no seccomp deny list for the {0} architecture")]
    UnsupportedArch(&'static str),
    /// The filter compiler refused the rules.
    #[error("seccomp filter: {0}")]
    Compile(String),
}

/// The compiled filter in the form bubblewrap reads from `--seccomp FD`: the raw
/// `struct sock_filter` array, in native byte order.
///
/// # Errors
/// [`SeccompError`] on an architecture without a deny list, or if the compiler refuses.
pub fn program() -> Result<Vec<u8>, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    if DENIED_COMMON.is_empty() {
        return Err(SeccompError::UnsupportedArch(std::env::consts::ARCH));
    }
    let mut rules = BTreeMap::new();
    for &(_, nr) in denied() {
        // An empty rule list matches every call of that number, whatever its arguments.
        rules.insert(nr, Vec::new());
        #[cfg(target_arch = "x86_64")]
        rules.insert(nr | X32_SYSCALL_BIT, Vec::new());
    }
    let eperm = u32::try_from(libc::EPERM).unwrap_or(1);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(eperm),
        arch,
    )
    .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_program_is_whole_instructions_within_the_kernels_limit() {
        let bytes = program().unwrap();
        assert_eq!(bytes.len() % 8, 0);
        let instructions = bytes.len() / 8;
        // BPF_MAXINSNS: the kernel refuses longer programs.
        assert!(
            (denied().count()..=4096).contains(&instructions),
            "{instructions}"
        );
    }

    #[test]
    fn the_deny_list_names_each_call_once() {
        let mut names: Vec<_> = denied_names().collect();
        let mut numbers: Vec<_> = denied().map(|(_, nr)| *nr).collect();
        names.sort_unstable();
        names.dedup();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(names.len(), denied().count());
        assert_eq!(numbers.len(), denied().count());
        for needed in [
            "ptrace",
            "keyctl",
            "io_uring_setup",
            "bpf",
            "unshare",
            "mount",
        ] {
            assert!(names.contains(&needed), "{needed} is not denied");
        }
    }
}
