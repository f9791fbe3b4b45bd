//! `pv-bench-gpu`: what GPU acceleration through PearVisor costs, against
//! the same GPU driver used directly.
//!
//! In one run of the nested machine (or directly, on a host with hardware
//! virtualization), `pv-vkcheck --bench` (Vulkan) and `pv-vkcheck --gl
//! --bench` (OpenGL ES) run twice on the same host drivers, lavapipe and
//! llvmpipe from the GPU runtime:
//!
//! 1. on the host (L1) itself, under the runtime's loader;
//! 2. in a guest booted by PearVisor with `--gpu context-types=venus:virgl`,
//!    through Venus (Vulkan) and virgl (GL), pearvisor running under the
//!    same runtime.
//!
//! It prints both sets of figures, the guest/host ratio of each, and the
//! device's own fence counters (arrival of a fenced request → the renderer
//! signalling it). Inside the nested machine the host is an emulated CPU
//! (QEMU/TCG), so the figures are not hardware figures; the ratios are what
//! carries over.
//!
//! `pv-bench-gpu [--mib N] [--iters N] [--invocations N] [--rounds N]
//! [--fences N] [--gl-size N] [--pearvisor PATH] [--l1-cpus N]`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use pv_image::{Compression, GpuUserspace, ImageBuilder};
use pv_testkit::{host_virtualization, HostVirt, NestedMachine};

#[derive(Parser)]
#[command(about = "GPU acceleration overhead: pv-vkcheck on the host vs in a guest")]
struct Args {
    /// MiB per buffer for fill + copy.
    #[arg(long, default_value_t = 16)]
    mib: u64,
    /// Timed repetitions of each measurement (medians are printed).
    #[arg(long, default_value_t = 10)]
    iters: u32,
    /// Compute shader invocations per dispatch.
    #[arg(long, default_value_t = 65536)]
    invocations: u32,
    /// Loop rounds per invocation.
    #[arg(long, default_value_t = 64)]
    rounds: u32,
    /// Empty submits timed for the fence round trip.
    #[arg(long, default_value_t = 100)]
    fences: u32,
    /// Size of the GL picture drawn and read back.
    #[arg(long, default_value_t = 256)]
    gl_size: u32,
    /// The pearvisor binary (default: next to this program).
    #[arg(long)]
    pearvisor: Option<PathBuf>,
    /// CPUs of the nested machine (more than 1: multi-threaded TCG, so the
    /// render server and the guest's vCPU can run at once).
    #[arg(long, default_value_t = 1)]
    l1_cpus: u32,
}

const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 pv.test=gpu-bench";
/// Where pv-vkcheck goes in the guest and in L1.
const VKCHECK_GUEST: &str = "/usr/bin/pv-vkcheck";
/// Where the runtime goes in L1.
const L1_RUNTIME: &str = "/opt/gpu-runtime";

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program")?;
    Ok(me.with_file_name(name))
}

impl Args {
    fn vkcheck_args(&self) -> String {
        format!(
            "--mib {} --iters {} --invocations {} --rounds {} --fences {} --gl-size {}",
            self.mib, self.iters, self.invocations, self.rounds, self.fences, self.gl_size
        )
    }
}

/// The guest's script: both workloads, each line prefixed `GUEST `.
fn guest_script(args: &Args) -> String {
    let a = args.vkcheck_args();
    format!(
        r#"
# No full-frame flushes from a blinking console cursor while measuring.
echo 0 > /sys/class/graphics/fbcon/cursor_blink
pv-vkcheck --bench {a} 2>&1 | sed 's/^/GUEST /'
pv-vkcheck --gl --bench {a} 2>&1 | sed 's/^/GUEST /'
"#
    )
}

/// The host's script: both workloads directly (lines prefixed `HOST `),
/// then the guest; the device counters last seen before it powered off.
/// `$PV`, `$VKCHECK`, `$RT`, `$L2_KERNEL`, `$L2_INITRD` are set by the caller.
fn host_script(args: &Args) -> String {
    let a = args.vkcheck_args();
    format!(
        r#"
echo "BENCH-HOST $(uname -r) $(grep -c ^processor /proc/cpuinfo) cpu(s)"
LIB=$RT/usr/lib/x86_64-linux-gnu
direct() {{
  VK_DRIVER_FILES=$RT/usr/share/vulkan/icd.d/lvp_icd.json \
  __EGL_VENDOR_LIBRARY_FILENAMES=$RT/usr/share/glvnd/egl_vendor.d/50_mesa.json \
  LIBGL_DRIVERS_PATH=$LIB/dri GBM_BACKENDS_PATH=$LIB/gbm \
  $LIB/ld-linux-x86-64.so.2 --inhibit-cache --library-path $LIB $VKCHECK "$@" 2>&1 | sed 's/^/HOST /'
}}
direct --bench {a}
direct --gl --bench {a}
export PEARVISOR_GPU_RUNTIME=$RT
rm -f /tmp/pv-api.sock /tmp/counters.json
timeout 900 $PV run --kernel $L2_KERNEL --initrd $L2_INITRD --cmdline "{CMDLINE}" \
    --memory 1G --gpu context-types=venus:virgl --api-socket /tmp/pv-api.sock </dev/null &
pid=$!
while kill -0 $pid 2>/dev/null; do
  sleep 2
  $PV ctl --socket /tmp/pv-api.sock counters > /tmp/counters.new 2>/dev/null && mv /tmp/counters.new /tmp/counters.json
done
wait $pid
echo "PV-RC=$?"
echo "COUNTERS-BEGIN"; cat /tmp/counters.json; echo "COUNTERS-END"
"#
    )
}

/// The first number of `KEY=number ...` on a line starting with `prefix`.
fn figure(log: &str, prefix: &str, key: &str) -> Option<f64> {
    let start = format!("{prefix} {key}=");
    log.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(&start)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The text after `KEY=` on a line starting with `prefix`.
fn text<'a>(log: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    let start = format!("{prefix} {key}=");
    log.lines()
        .find_map(|l| l.trim_end().strip_prefix(start.as_str()))
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.invocations == 0 || !args.invocations.is_multiple_of(64) {
        bail!("--invocations must be a positive multiple of 64");
    }
    let pearvisor = match &args.pearvisor {
        Some(p) => p.clone(),
        None => sibling("pearvisor")?,
    };
    let vkcheck = sibling("pv-vkcheck")?;
    for p in [&pearvisor, &vkcheck] {
        if !p.is_file() {
            bail!(
                "{} not found: build with `cargo build --release --workspace --bins`",
                p.display()
            );
        }
    }
    let rt = match pv_image::cached_gpu_runtime(None) {
        Some(rt) => rt,
        None => pv_image::build_gpu_runtime(pv_image::GpuRuntimeOptions::default())?,
    };
    let vkcheck_bytes = std::fs::read(&vkcheck).with_context(|| vkcheck.display().to_string())?;
    let image = ImageBuilder::new()
        .gpu_userspace(GpuUserspace::Full)
        .compression(Compression::None)
        .extra_file(VKCHECK_GUEST, vkcheck_bytes, 0o755)
        .test_script("gpu-bench", guest_script(&args))
        .build()?;
    let timeout = Duration::from_secs(600 + 3 * u64::from(args.iters) * 10);
    let log = match host_virtualization() {
        HostVirt::Hardware => {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(host_script(&args))
                .env("PV", &pearvisor)
                .env("VKCHECK", &vkcheck)
                .env("RT", &rt.root)
                .env("L2_KERNEL", &image.kernel)
                .env("L2_INITRD", &image.initrd)
                .output()?;
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
        _ => {
            eprintln!(
                "bench: no hardware virtualization here; measuring inside the nested machine \
                 (an emulated CPU: compare the ratios, not the figures)"
            );
            NestedMachine::new()
                .binary(&pearvisor)
                .binary(&vkcheck)
                .file(&image.kernel, "/l2/vmlinuz")
                .file(&image.initrd, "/l2/gpu-initrd.img")
                .dir(&rt.root, L1_RUNTIME)
                .memory("4G")
                .cpus(args.l1_cpus)
                .timeout(timeout)
                .script(format!(
                    "PV=pearvisor\nVKCHECK=/usr/local/bin/pv-vkcheck\nRT={L1_RUNTIME}\n\
                     L2_KERNEL=/l2/vmlinuz\nL2_INITRD=/l2/gpu-initrd.img\n{}",
                    host_script(&args)
                ))
                .run()?
                .log
        }
    };
    for line in log.lines().filter(|l| {
        l.starts_with("HOST ") || l.starts_with("GUEST ") || l.starts_with("BENCH-HOST")
    }) {
        println!("{line}");
    }
    for side in ["HOST", "GUEST"] {
        for key in ["PV-VK-CHECK", "PV-GL-CHECK"] {
            if text(&log, side, key) != Some("PASS") {
                bail!(
                    "{side} {key} did not pass: {:?}; log tail:\n{}",
                    text(&log, side, key),
                    tail(&log, 60)
                );
            }
        }
    }
    println!();
    println!(
        "| median of {} | host: {} | guest: {} | guest / host |",
        args.iters,
        text(&log, "HOST", "PV-VK-DEVICE").unwrap_or("?"),
        text(&log, "GUEST", "PV-VK-DEVICE").unwrap_or("?"),
    );
    println!("|---|---|---|---|");
    let rows: &[(&str, &str, String)] = &[
        (
            "PV-BENCH-VK-FILL-COPY-MS",
            "ms",
            format!("Vulkan fill {0} MiB + copy {0} MiB, one submit", args.mib),
        ),
        (
            "PV-BENCH-VK-COMPUTE-MS",
            "ms",
            format!(
                "Vulkan compute dispatch, {} invocations x {} rounds",
                args.invocations, args.rounds
            ),
        ),
        (
            "PV-BENCH-VK-FENCE-US",
            "µs",
            "Vulkan empty submit → fence signalled".to_string(),
        ),
        (
            "PV-BENCH-VK-MAP-WRITE-MIBS",
            "MiB/s",
            "CPU writes to mapped device memory".to_string(),
        ),
        (
            "PV-BENCH-VK-MAP-READ-MIBS",
            "MiB/s",
            "CPU reads from mapped device memory".to_string(),
        ),
        (
            "PV-BENCH-GL-DRAW-READ-MS",
            "ms",
            format!("GL {0}x{0} clears + draw + glReadPixels", args.gl_size),
        ),
    ];
    for (key, unit, what) in rows {
        let (h, g) = (figure(&log, "HOST", key), figure(&log, "GUEST", key));
        let ratio = match (h, g) {
            (Some(h), Some(g)) if h > 0.0 => format!("{:.2}", g / h),
            _ => "?".into(),
        };
        let show = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2} {unit}"));
        println!("| {what} | {} | {} | {ratio} |", show(h), show(g));
    }
    let counters = log
        .split("COUNTERS-BEGIN")
        .nth(1)
        .and_then(|s| s.split("COUNTERS-END").next())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s.trim()).ok());
    if let Some(gpu) = counters
        .as_ref()
        .and_then(|c| c.get("devices"))
        .and_then(|d| d.get("virtio-gpu"))
    {
        println!();
        println!("device counters (virtio-gpu, last read before the guest powered off):");
        for key in [
            "fences",
            "fences_context",
            "fences_global",
            "fence_latency_mean_ns",
            "fence_latency_max_ns",
            "commands_submit_3d",
            "submit_3d_bytes",
            "commands_resource_create_blob",
            "commands_resource_map_blob",
            "command_latency_mean_ns",
            "interrupts",
            "notifications",
        ] {
            if let Some(v) = gpu.get(key) {
                println!("  {key} = {v}");
            }
        }
    } else {
        eprintln!("bench: no device counters in the log");
    }
    if !log.contains("PV-RC=0") {
        bail!("pearvisor did not exit 0; log tail:\n{}", tail(&log, 40));
    }
    Ok(())
}
