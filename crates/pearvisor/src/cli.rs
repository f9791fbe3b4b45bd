//! Command-line syntax: `pearvisor run`, `pearvisor ctl`, `pearvisor image`,
//! `pearvisor gpu-runtime`, `pearvisor host`, `pearvisor gpu`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Build or locate the host GPU runtime (virglrenderer and Mesa from Debian sid).
    #[command(subcommand)]
    GpuRuntime(GpuRuntimeCommand),
    /// Say what virtualization this host offers.
    Host,
    /// Control a running VM through its API socket (see `run --api-socket`).
    Ctl(CtlArgs),
    /// List the host's GPUs (Vulkan) and whether each can back the 3D path.
    Gpu(GpuArgs),
}

#[derive(Debug, Args)]
pub struct GpuArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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
    /// Guest RAM, e.g. 512M or 2G (at least 64M). Default: 512M, or 1G with the
    /// default image (its GPU userspace unpacks into RAM).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// A virtio-blk disk backed by a raw image: path=PATH[,readonly=on|off][,id=SERIAL].
    /// Repeat for more disks; they appear as /dev/vda, /dev/vdb, ... in order.
    #[arg(long, value_name = "OPTIONS")]
    pub disk: Vec<String>,
    /// A virtio-gpu (2D) device: [width=W][,height=H][,displays=N][,max-hostmem=SIZE]
    /// (default 1280x800, 1 display, 256M of host memory for the guest's resources).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "")]
    pub gpu: Option<String>,
    /// Where the GPU's screens are shown: headless (screenshots through the API; the
    /// default), web[=ADDR:PORT] (a viewer in the browser with keyboard and mouse,
    /// default 127.0.0.1:8080), or window (a native window per display with keyboard
    /// and mouse; needs DISPLAY or WAYLAND_DISPLAY; closing the last window powers the
    /// guest off).
    #[arg(long, value_name = "MODE")]
    pub display: Option<String>,
    /// Serial console (ttyS0): tty (this terminal), file=PATH, or none.
    #[arg(long, value_name = "MODE")]
    pub serial: Option<String>,
    /// Exit with status 0 when the guest reboots instead of restarting it.
    #[arg(long)]
    pub no_reboot: bool,
    /// Do not offer a virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,
    /// Print the VM configuration these flags resolve to (JSON, the schema
    /// of --config and the API) and exit without booting.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve the REST API on this Unix socket (mode 0600); drive it with
    /// `pearvisor ctl --socket PATH` or curl --unix-socket. Refused when a
    /// server already answers there; a stale socket file is replaced.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// How long a shutdown through the API waits for the guest to power off
    /// after pressing the power button before it stops the VM: 10s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Syscall filters on the VMM's threads (vCPUs, device workers, API,
    /// display): on (a syscall outside a thread's list kills the VMM with
    /// SIGSYS), log (allowed, and logged in the kernel's audit log) or off.
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    pub seccomp: pv_seccomp::SeccompMode,
    /// Boot even when the host check says a stock kernel cannot run here
    /// (kvm_pvm without hardware virtualization). For experiments only.
    #[arg(long, hide = true)]
    pub skip_host_check: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Download the Debian packages and build the default guest image (cached).
    Build(ImageArgs),
    /// Print the default image's kernel and initrd paths (building it if needed).
    Path(ImageArgs),
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The GPU userspace in the image: full (Venus Vulkan and virgl GL, about 70 MB more
    /// compressed: Mesa's GL links LLVM), vulkan (Venus only, about 5 MB more) or none.
    #[arg(long, value_name = "LEVEL", default_value = "full")]
    pub gpu_userspace: pv_image::GpuUserspace,
    /// The same as --gpu-userspace none.
    #[arg(long, conflicts_with = "gpu_userspace")]
    pub no_gpu_userspace: bool,
}

impl ImageArgs {
    /// The GPU userspace level asked for.
    pub fn level(&self) -> pv_image::GpuUserspace {
        if self.no_gpu_userspace {
            pv_image::GpuUserspace::None
        } else {
            self.gpu_userspace
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum GpuRuntimeCommand {
    /// Assemble the GPU runtime from Debian sid's packages into the cache (reused while sid's
    /// packages are unchanged); prints its path and the main versions.
    Build(GpuRuntimeBuildArgs),
    /// Print the cached GPU runtime's path (never builds; exits 1 when there is none).
    Path,
}

#[derive(Debug, Args)]
pub struct GpuRuntimeBuildArgs {
    /// Keep everything the packages ship: all of Mesa's Vulkan drivers, docs, man pages.
    #[arg(long)]
    pub full: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API socket of a running `pearvisor run --api-socket PATH`.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The request to send.
    #[arg(value_enum)]
    pub request: CtlRequest,
    /// With resize, and required there: the size to ask for, e.g. 1920x1080.
    #[arg(value_name = "WIDTHxHEIGHT", value_parser = parse_display_size)]
    pub size: Option<DisplaySize>,
    /// With screenshot, and required there: the file to write the PNG to
    /// (- for stdout, unless it is a terminal).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// With screenshot and resize: which display (scanout), from 0 [default: 0].
    #[arg(long, value_name = "N")]
    pub display: Option<u32>,
}

/// A display size given as `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplaySize {
    pub width: u32,
    pub height: u32,
}

/// Parses `1920x1080`: two decimal numbers joined by `x`. The range is the
/// server's to check (its message says it).
pub fn parse_display_size(s: &str) -> Result<DisplaySize, String> {
    let usage = "expected WIDTHxHEIGHT, like 1920x1080";
    let Some((width, height)) = s.split_once('x') else {
        return Err(format!("no 'x' between width and height: {usage}"));
    };
    let number = |what: &str, v: &str| -> Result<u32, String> {
        if v.is_empty() {
            return Err(format!("the {what} is missing: {usage}"));
        }
        if !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "the {what} '{v}' is not a whole number of pixels: {usage}"
            ));
        }
        v.parse()
            .map_err(|_| format!("the {what} '{v}' is too large: {usage}"))
    };
    Ok(DisplaySize {
        width: number("width", width)?,
        height: number("height", height)?,
    })
}

/// What `pearvisor ctl` can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CtlRequest {
    /// Whether the VMM answers: its version and pid (GET vmm.ping).
    Ping,
    /// State, configuration, uptime, vCPUs and memory as JSON (GET vm.info).
    Info,
    /// Stop the vCPUs and the guest clock (PUT vm.pause).
    Pause,
    /// Continue a paused VM (PUT vm.resume).
    Resume,
    /// Reset the guest; it boots again (PUT vm.reboot).
    Reboot,
    /// Press the ACPI power button (PUT vm.power-button).
    PowerButton,
    /// Power button, then stop the VM after the grace period (PUT vm.shutdown).
    Shutdown,
    /// Counters per vCPU and device as JSON (GET vm.counters).
    Counters,
    /// The counters in Prometheus text format (GET vm.metrics).
    Metrics,
    /// The host's GPUs (GET vmm.gpus).
    Gpus,
    /// The guest's display as a PNG, written to -o FILE (GET vm.screenshot).
    Screenshot,
    /// Ask the guest to switch its display to WIDTHxHEIGHT (PUT vm.resize).
    Resize,
}

/// Parses durations like `10s`, `500ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let err =
        || format!("invalid duration '{s}': use a number with ms, s, m or h, like 10s or 500ms");
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms_per_unit = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "10x",
            "1.5s",
            "-1s",
            "99999999999999999999h",
            "10 parsecs",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("10x").unwrap_err(),
            "invalid duration '10x': use a number with ms, s, m or h, like 10s or 500ms"
        );
    }

    #[test]
    fn display_sizes() {
        let size = |width, height| Ok(DisplaySize { width, height });
        assert_eq!(parse_display_size("1920x1080"), size(1920, 1080));
        assert_eq!(
            parse_display_size("10x10"),
            size(10, 10),
            "range: the server's"
        );
        assert_eq!(parse_display_size("0800x0600"), size(800, 600));
        assert_eq!(
            parse_display_size("4294967295x1"),
            size(u32::MAX, 1),
            "the server refuses it with its message"
        );
        for (bad, message) in [
            ("", "no 'x' between width and height"),
            ("800", "no 'x' between width and height"),
            ("800*600", "no 'x' between width and height"),
            ("800X600", "no 'x' between width and height"),
            ("10x", "the height is missing"),
            ("x600", "the width is missing"),
            ("x", "the width is missing"),
            (
                "800x600x2",
                "the height '600x2' is not a whole number of pixels",
            ),
            (
                "-800x600",
                "the width '-800' is not a whole number of pixels",
            ),
            (
                "+800x600",
                "the width '+800' is not a whole number of pixels",
            ),
            (
                "800.5x600",
                "the width '800.5' is not a whole number of pixels",
            ),
            (
                " 800x600",
                "the width ' 800' is not a whole number of pixels",
            ),
            (
                "800x600 ",
                "the height '600 ' is not a whole number of pixels",
            ),
            ("4294967296x600", "the width '4294967296' is too large"),
        ] {
            assert_eq!(
                parse_display_size(bad),
                Err(format!("{message}: expected WIDTHxHEIGHT, like 1920x1080")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ctl_requests_are_kebab_case() {
        use clap::ValueEnum;
        let names: Vec<String> = CtlRequest::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        assert_eq!(
            names,
            [
                "ping",
                "info",
                "pause",
                "resume",
                "reboot",
                "power-button",
                "shutdown",
                "counters",
                "metrics",
                "gpus",
                "screenshot",
                "resize"
            ]
        );
    }
}
