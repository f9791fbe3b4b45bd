//! What kind of KVM this host offers: hardware virtualization, PVM only, or none.
//!
//! PearVisor boots stock kernels, which need a `/dev/kvm` backed by `kvm_intel` or `kvm_amd`
//! on a CPU with VMX/SVM. A `/dev/kvm` from `kvm_pvm` (paravirtualized KVM, common in cloud
//! sandboxes) only runs PVM guest kernels; there, and without `/dev/kvm`, end-to-end tests run
//! PearVisor inside a nested L1 machine under QEMU/TCG instead ([`crate::NestedMachine`]).

use std::fmt;
use std::path::Path;

/// The host's virtualization support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostVirt {
    /// `/dev/kvm` backed by kvm_intel or kvm_amd on a CPU with vmx/svm.
    Hardware,
    /// `/dev/kvm` from kvm_pvm, no vmx/svm: stock kernels cannot run on it.
    PvmOnly,
    /// No usable `/dev/kvm`.
    None,
}

impl HostVirt {
    /// Classifies from observations: whether `/dev/kvm` exists, whether a module directory
    /// exists under `/sys/module` (`module_loaded("kvm_amd")`), and `/proc/cpuinfo`'s text.
    pub fn classify(
        dev_kvm: bool,
        module_loaded: impl Fn(&str) -> bool,
        cpuinfo: &str,
    ) -> HostVirt {
        if !dev_kvm {
            return HostVirt::None;
        }
        let hw_flag = cpu_has_flag(cpuinfo, "vmx") || cpu_has_flag(cpuinfo, "svm");
        let hw_module = module_loaded("kvm_intel") || module_loaded("kvm_amd");
        if hw_flag && hw_module {
            HostVirt::Hardware
        } else if module_loaded("kvm_pvm") {
            HostVirt::PvmOnly
        } else {
            HostVirt::None
        }
    }

    /// Whether PearVisor can boot stock guests directly on this host.
    pub fn can_run_guests(self) -> bool {
        self == HostVirt::Hardware
    }

    /// A plain explanation for users.
    pub fn describe(self) -> &'static str {
        match self {
            HostVirt::Hardware => {
                "hardware virtualization: /dev/kvm is backed by kvm_intel/kvm_amd on a CPU \
                 with VMX/SVM, so PearVisor runs guests directly"
            }
            HostVirt::PvmOnly => {
                "/dev/kvm is kvm_pvm (paravirtualized KVM) and the CPU has no VMX/SVM: it runs \
                 only PVM guest kernels, not the stock kernels PearVisor boots; end-to-end tests \
                 run PearVisor inside a nested L1 machine under QEMU/TCG with emulated AMD SVM \
                 instead (pv-nested, slower)"
            }
            HostVirt::None => {
                "no usable /dev/kvm (no kvm_intel/kvm_amd with VMX/SVM): PearVisor cannot run \
                 guests here directly; end-to-end tests run it inside a nested L1 machine under \
                 QEMU/TCG with emulated AMD SVM instead (pv-nested, slower)"
            }
        }
    }
}

impl fmt::Display for HostVirt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Whether any `flags` line of `cpuinfo` lists `flag`.
fn cpu_has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo.lines().any(|line| {
        line.split_once(':').is_some_and(|(key, value)| {
            key.trim() == "flags" && value.split_whitespace().any(|f| f == flag)
        })
    })
}

/// Detects this host's virtualization support from `/dev/kvm`, `/sys/module` and
/// `/proc/cpuinfo`.
pub fn host_virtualization() -> HostVirt {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    HostVirt::classify(
        Path::new("/dev/kvm").exists(),
        |m| Path::new("/sys/module").join(m).exists(),
        &cpuinfo,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: &str =
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de svm npt lm\n";
    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme vmx ept lm\n";
    const PLAIN: &str = "processor\t: 0\nflags\t\t: fpu vme de pse lm hypervisor\n\
                         vmx flags\t: vnmi\n";

    fn loaded(names: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |m| names.contains(&m)
    }

    #[test]
    fn hardware_amd_and_intel() {
        assert_eq!(
            HostVirt::classify(true, loaded(&["kvm", "kvm_amd"]), AMD),
            HostVirt::Hardware
        );
        assert_eq!(
            HostVirt::classify(true, loaded(&["kvm", "kvm_intel"]), INTEL),
            HostVirt::Hardware
        );
        assert!(HostVirt::Hardware.can_run_guests());
    }

    #[test]
    fn pvm_only() {
        let v = HostVirt::classify(true, loaded(&["kvm", "kvm_pvm"]), PLAIN);
        assert_eq!(v, HostVirt::PvmOnly);
        assert!(!v.can_run_guests());
        assert!(v.describe().contains("kvm_pvm"));
    }

    #[test]
    fn none_without_dev_kvm_or_backend() {
        assert_eq!(
            HostVirt::classify(false, loaded(&["kvm_amd"]), AMD),
            HostVirt::None
        );
        // A "vmx flags" line is not the flags line.
        assert_eq!(
            HostVirt::classify(true, loaded(&["kvm_intel"]), PLAIN),
            HostVirt::None
        );
        assert_eq!(HostVirt::classify(true, loaded(&[]), AMD), HostVirt::None);
        assert!(HostVirt::None.to_string().contains("/dev/kvm"));
    }

    #[test]
    fn this_host_is_classified() {
        // Whatever this machine is, detection must not panic and must explain itself.
        assert!(!host_virtualization().describe().is_empty());
    }
}
