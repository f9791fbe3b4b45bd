//! Command-line syntax: `pearvisor run`, `pearvisor image`, `pearvisor host`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// PearVisor: a KVM virtual machine monitor with a paravirtual GPU.
#[derive(Debug, Parser)]
#[command(name = "pearvisor", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a Linux guest (the default guest image when no --kernel is given).
    Run(RunArgs),
    /// Build or locate the default guest image.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Say what virtualization this host offers.
    Host,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// JSON VM configuration (the same schema as the API). Flags given on
    /// the command line override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel to boot: a bzImage or an uncompressed ELF vmlinux (PVH).
    /// Default: the default guest image's kernel (built on first use).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk. Default with the default kernel: the default image's initramfs.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. Default: "console=ttyS0 quiet" (plus extras for the default image).
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1-254).
    #[arg(long, value_name = "N")]
    pub cpus: Option<u8>,
    /// Guest RAM, e.g. 512M or 2G (at least 64M).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// A virtio-blk disk backed by a raw image: path=PATH[,readonly=on|off][,id=SERIAL].
    /// Repeat for more disks; they appear as /dev/vda, /dev/vdb, ... in order.
    #[arg(long, value_name = "OPTIONS")]
    pub disk: Vec<String>,
    /// Serial console (ttyS0): tty (this terminal), file=PATH, or none.
    #[arg(long, value_name = "MODE")]
    pub serial: Option<String>,
    /// Exit with status 0 when the guest reboots instead of restarting it.
    #[arg(long)]
    pub no_reboot: bool,
    /// Do not offer a virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,
    /// Boot even when the host check says a stock kernel cannot run here
    /// (kvm_pvm without hardware virtualization). For experiments only.
    #[arg(long, hide = true)]
    pub skip_host_check: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Download the Debian packages and build the default guest image (cached).
    Build,
    /// Print the default image's kernel and initrd paths (building it if needed).
    Path,
}
