//! pv-testkit: PearVisor's nested-KVM test harness, and a WebDriver client for
//! browser tests ([`webdriver`]).
//!
//! On hosts without hardware virtualization (see [`host_virtualization`]), PearVisor's
//! end-to-end tests run inside an "L1" Debian 6.12 machine under QEMU 10/TCG with emulated AMD
//! SVM, where `kvm_amd` provides a real `/dev/kvm`; PearVisor then boots its "L2" guest (the
//! pv-image default image) there.
//!
//! ```no_run
//! use pv_testkit::NestedMachine;
//! let image = pv_image::build_default_image(pv_image::ImageOptions::default())?;
//! let out = NestedMachine::new()
//!     .binary("target/debug/pearvisor")
//!     .guest_image(&image)
//!     .script("pearvisor --kernel /l2/vmlinuz --initrd /l2/initrd.img")
//!     .run()?;
//! assert!(out.kvm_ready() && out.success(), "{}", out.tail(40));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The nested machine needs the `nested` feature (on by default); without
//! it only [`webdriver`] and [`baremetal`] are built.
//!
//! [`baremetal`] builds the bare-metal test guest (freestanding C that drives
//! the devices directly; its `hostile` mode is the hostile-guest suite).

pub mod baremetal;
pub mod webdriver;

#[cfg(feature = "nested")]
pub mod ldd;
#[cfg(feature = "nested")]
pub mod machine;
#[cfg(feature = "nested")]
pub mod qemu;

/// The host's virtualization support (the VMM's own detection).
#[cfg(feature = "nested")]
pub use pv_vmm::hypervisor::kvm::HostKvm as HostVirt;

/// What this host offers: hardware virtualization, kvm_pvm only, or nothing.
#[cfg(feature = "nested")]
pub fn host_virtualization() -> HostVirt {
    HostVirt::detect()
}
#[cfg(feature = "nested")]
pub use machine::{
    parse_l1_rc, LiveRun, NestedMachine, NestedOutput, TestkitError, L1_KVM_READY, L1_NO_KVM,
    L1_TEST_EXIT, L2_INITRD, L2_KERNEL,
};
