//! Facts about the host that decide which sandbox backend can run, and the choice itself.
//!
//! A BoxLite microVM needs real hardware virtualization: a CPU that exposes VT-x (`vmx`) or
//! AMD-V (`svm`) *and* a `/dev/kvm` device. Cloud VMs often have one without the other: a
//! paravirtual `/dev/kvm` with no `vmx`/`svm` flag exists, and a microVM guest kernel does not
//! boot on it. So `auto` picks BoxLite only when both are there and says why otherwise.
//!
//! Detection ([`VirtReport::detect`]) is the only I/O here; the rest is pure so it can be tested
//! with `/proc/cpuinfo` fixtures.

use std::fmt;
use std::path::Path;

use crate::config::SandboxChoice;

/// What the host offers for hardware virtualization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtReport {
    /// The CPU flags include `vmx` (Intel VT-x) or `svm` (AMD-V).
    pub vmx_or_svm: bool,
    /// The CPU flags include `hypervisor`: this host is itself a virtual machine.
    pub hypervisor_guest: bool,
    /// `/dev/kvm` exists (whether this user may open it is not checked here).
    pub dev_kvm: bool,
}

impl VirtReport {
    /// Reads `/proc/cpuinfo` and looks for `/dev/kvm`. A missing or unreadable `/proc/cpuinfo`
    /// (not Linux, a restricted container) reports no virtualization.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::from_cpuinfo(&cpuinfo, Path::new("/dev/kvm").exists())
    }

    /// The report for a `/proc/cpuinfo` text and whether `/dev/kvm` exists.
    pub fn from_cpuinfo(cpuinfo: &str, dev_kvm: bool) -> Self {
        let mut vmx_or_svm = false;
        let mut hypervisor_guest = false;
        let flag_lines = cpuinfo.lines().filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        });
        for flag in flag_lines.flat_map(str::split_ascii_whitespace) {
            match flag {
                "vmx" | "svm" => vmx_or_svm = true,
                "hypervisor" => hypervisor_guest = true,
                _ => {}
            }
        }
        Self {
            vmx_or_svm,
            hypervisor_guest,
            dev_kvm,
        }
    }

    /// Whether a microVM can boot here: `vmx`/`svm` and `/dev/kvm` both present.
    pub fn hardware_virtualization(&self) -> bool {
        self.vmx_or_svm && self.dev_kvm
    }

    /// One line saying what was found and what it means.
    pub fn explain(&self) -> String {
        let guest = if self.hypervisor_guest {
            " (this host is itself a virtual machine)"
        } else {
            ""
        };
        match (self.vmx_or_svm, self.dev_kvm) {
            (true, true) => "hardware virtualization available: the CPU exposes vmx/svm and \
                             /dev/kvm is present"
                .to_owned(),
            (false, true) => format!(
                "/dev/kvm is present but the CPU exposes no vmx/svm flag: a paravirtual KVM on \
                 which microVM guests cannot boot{guest}"
            ),
            (true, false) => "the CPU exposes vmx/svm but /dev/kvm is missing: load the kvm_intel \
                              or kvm_amd module"
                .to_owned(),
            (false, false) if self.hypervisor_guest => {
                "no hardware virtualization: this host is a \
                 virtual machine without nested virtualization (no vmx/svm flag, no /dev/kvm)"
                    .to_owned()
            }
            (false, false) => {
                "no hardware virtualization: the CPU exposes no vmx/svm flag and /dev/kvm is \
                 missing (is virtualization disabled in the firmware?)"
                    .to_owned()
            }
        }
    }
}

/// The sandbox backend that will run the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxKind {
    /// Linux namespaces, seccomp and rlimits.
    Namespace,
    /// A BoxLite microVM per conversation.
    Boxlite,
}

impl fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Namespace => "namespace",
            Self::Boxlite => "boxlite",
        })
    }
}

/// Resolves the configured `choice` into a backend and the reason for it (logged at start and
/// shown by `boxedclaw doctor`).
///
/// # Errors
/// Why an explicit `boxlite` cannot be honoured: not compiled in, or no hardware virtualization.
/// `auto` never fails: it falls back to the namespace sandbox.
pub fn choose_backend(
    choice: SandboxChoice,
    virt: &VirtReport,
    boxlite_built: bool,
) -> Result<(SandboxKind, String), String> {
    match choice {
        SandboxChoice::Auto if boxlite_built && virt.hardware_virtualization() => Ok((
            SandboxKind::Boxlite,
            "auto: hardware virtualization available; using BoxLite microVMs".to_owned(),
        )),
        SandboxChoice::Auto if !boxlite_built => Ok((
            SandboxKind::Namespace,
            "auto: the boxlite backend is not part of this build; using the namespace sandbox"
                .to_owned(),
        )),
        SandboxChoice::Auto => Ok((
            SandboxKind::Namespace,
            format!(
                "auto: no hardware virtualization ({}); using the namespace sandbox",
                virt.explain()
            ),
        )),
        SandboxChoice::Namespace => Ok((
            SandboxKind::Namespace,
            "namespace sandbox chosen in the configuration".to_owned(),
        )),
        SandboxChoice::Boxlite if !boxlite_built => {
            Err("the boxlite backend is not part of this build".to_owned())
        }
        SandboxChoice::Boxlite if !virt.hardware_virtualization() => Err(format!(
            "the boxlite backend needs hardware virtualization: {}",
            virt.explain()
        )),
        SandboxChoice::Boxlite => Ok((
            SandboxKind::Boxlite,
            "boxlite chosen in the configuration".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc \
        msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss \
        ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl \
        xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 \
        ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c \
        rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb invpcid_single ssbd ibrs ibpb stibp \
        tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms\n\
        vmx flags\t: vnmi preemption_timer invvpid ept_x_only ept_ad ept_1gb flexpriority\n";

    const AMD: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de pse tsc \
        msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall \
        nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid \
        extd_apicid aperfmperf pni pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes \
        xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse \
        3dnowprefetch osvw ibs skinit wdt tce topoext perfctr_core perfctr_nb bpext npt lbrv \
        svm_lock nrip_save tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold\n";

    /// This development machine: a cloud VM whose `/dev/kvm` is paravirtual.
    const PARAVIRT: &str = "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca \
        cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm \
        constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni \
        pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes \
        xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse \
        3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep \
        bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves \
        clzero xsaveerptr wbnoinvd arat umip pku ospke vaes vpclmulqdq rdpid fsrm\n";

    #[test]
    fn reads_cpu_flags() {
        let intel = VirtReport::from_cpuinfo(INTEL, true);
        assert_eq!(
            intel,
            VirtReport {
                vmx_or_svm: true,
                hypervisor_guest: false,
                dev_kvm: true
            }
        );
        assert!(intel.hardware_virtualization());
        assert!(VirtReport::from_cpuinfo(AMD, true).hardware_virtualization());
        // `svm_lock` and `vmx flags` must not be mistaken for the flags themselves.
        let lookalikes = "flags\t: svm_lock vmmcall\nvmx flags\t: vmx\n";
        assert!(!VirtReport::from_cpuinfo(lookalikes, true).vmx_or_svm);

        let paravirt = VirtReport::from_cpuinfo(PARAVIRT, true);
        assert_eq!(
            paravirt,
            VirtReport {
                vmx_or_svm: false,
                hypervisor_guest: true,
                dev_kvm: true
            }
        );
        assert!(!paravirt.hardware_virtualization());
        assert!(
            paravirt
                .explain()
                .starts_with("/dev/kvm is present but the CPU exposes no vmx/svm")
        );
        assert!(!VirtReport::from_cpuinfo("", false).hardware_virtualization());
        assert!(!VirtReport::from_cpuinfo(INTEL, false).hardware_virtualization());
    }

    #[test]
    fn explanations_are_one_line_and_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for bits in 0..8u8 {
            let r = VirtReport {
                vmx_or_svm: bits & 1 != 0,
                hypervisor_guest: bits & 2 != 0,
                dev_kvm: bits & 4 != 0,
            };
            let e = r.explain();
            assert!(!e.contains('\n') && !e.contains("  "), "{e:?}");
            seen.insert(e);
        }
        assert!(seen.len() >= 5);
    }

    #[test]
    fn auto_prefers_boxlite_only_with_real_virtualization() {
        let hw = VirtReport::from_cpuinfo(INTEL, true);
        let paravirt = VirtReport::from_cpuinfo(PARAVIRT, true);
        let auto = SandboxChoice::Auto;
        assert_eq!(
            choose_backend(auto, &hw, true).unwrap().0,
            SandboxKind::Boxlite
        );
        let (kind, why) = choose_backend(auto, &paravirt, true).unwrap();
        assert_eq!(kind, SandboxKind::Namespace);
        assert!(
            why.starts_with("auto: no hardware virtualization (/dev/kvm is present"),
            "{why}"
        );
        assert!(why.ends_with("using the namespace sandbox"));
        let (kind, why) = choose_backend(auto, &hw, false).unwrap();
        assert_eq!(kind, SandboxKind::Namespace);
        assert!(why.contains("not part of this build"));
    }

    #[test]
    fn explicit_choices_are_honoured_or_refused() {
        let hw = VirtReport::from_cpuinfo(AMD, true);
        let paravirt = VirtReport::from_cpuinfo(PARAVIRT, true);
        for v in [&hw, &paravirt] {
            for built in [true, false] {
                let (kind, _) = choose_backend(SandboxChoice::Namespace, v, built).unwrap();
                assert_eq!(kind, SandboxKind::Namespace);
            }
        }
        assert_eq!(
            choose_backend(SandboxChoice::Boxlite, &hw, false).unwrap_err(),
            "the boxlite backend is not part of this build"
        );
        let err = choose_backend(SandboxChoice::Boxlite, &paravirt, true).unwrap_err();
        assert!(err.contains(&paravirt.explain()), "{err}");
        assert_eq!(
            choose_backend(SandboxChoice::Boxlite, &hw, true).unwrap().0,
            SandboxKind::Boxlite
        );
        assert_eq!(SandboxKind::Boxlite.to_string(), "boxlite");
        assert_eq!(SandboxKind::Namespace.to_string(), "namespace");
    }

    #[test]
    fn detect_runs_on_this_host() {
        // Whatever the machine, detection must not fail and must agree with its own parts.
        let r = VirtReport::detect();
        assert_eq!(r.hardware_virtualization(), r.vmx_or_svm && r.dev_kvm);
        assert_eq!(r.dev_kvm, Path::new("/dev/kvm").exists());
    }
}
