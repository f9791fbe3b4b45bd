//! `pv-bench-boot`: boot-time and memory benchmark of PearVisor against QEMU.
//!
//! In one run of the nested machine (or directly, on a host with hardware
//! virtualization), boots the default guest image N times with PearVisor
//! and N times with QEMU's microvm machine, and prints the medians and the
//! ratios of: process start → guest userspace marker, process start → VMM
//! exit (after the guest powers off), and the VMM's resident memory beyond
//! guest RAM (see `pv-bench`).
//!
//! `pv-bench-boot [--runs N] [--pearvisor PATH]`

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use pv_testkit::{host_virtualization, HostVirt, NestedMachine};

#[derive(Parser)]
#[command(about = "Boot-time benchmark: PearVisor vs QEMU microvm")]
struct Args {
    /// Boots per VMM.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// The pearvisor binary (default: next to this program).
    #[arg(long)]
    pearvisor: Option<PathBuf>,
}

const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 pv.test=none";

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program")?;
    Ok(me.with_file_name(name))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The shell script that runs both VMMs, alternating, with the host's page
/// cache dropped and memory compacted before every boot (the first VM after
/// a compaction gets transparent huge pages; later ones might not);
/// `$PV`, `$BENCH`, `$L2`, `$QEMU_DATA` are set by the caller.
fn script(runs: u32) -> String {
    format!(
        r#"
echo "BENCH-HOST $(uname -r) $(grep -c ^processor /proc/cpuinfo) cpu(s)"
settle() {{ sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; echo 1 > /proc/sys/vm/compact_memory 2>/dev/null; sleep 1; }}
i=0
while [ $i -lt {runs} ]; do
  settle
  $BENCH --runs 1 --label pearvisor -- $PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img \
      --cmdline "{CMDLINE}" --cpus 1 --memory 512M --no-reboot
  settle
  $BENCH --runs 1 --label qemu-microvm -- qemu-system-x86_64 \
      -M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=on -bios $QEMU_DATA/qboot.rom \
      -accel kvm -cpu host -smp 1 -m 512M -nodefaults -no-user-config -display none -serial stdio -no-reboot \
      -kernel $L2/vmlinuz -initrd $L2/initrd.img -append "{CMDLINE}"
  i=$((i + 1))
done
"#
    )
}

/// Medians over the `RUN <label> ...` lines of `pv-bench`.
#[derive(Debug, Default, Clone)]
struct Summary {
    marker_ms: f64,
    exit_ms: f64,
    overhead_kib: f64,
    rss_kib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The number after `key` in a run line, e.g. `marker 7323 ms`.
fn number_after(line: &str, key: &str) -> Option<f64> {
    let mut words = line.split([' ', ',']).filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        if w == key {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn summary(log: &str, label: &str) -> Option<Summary> {
    let prefix = format!("RUN {label} ");
    let runs: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with(&prefix) && !l.contains("FAILED"))
        .collect();
    if runs.is_empty()
        || log
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains("FAILED"))
    {
        return None;
    }
    let col = |key: &str| median(runs.iter().filter_map(|l| number_after(l, key)).collect());
    Some(Summary {
        marker_ms: col("marker"),
        exit_ms: col("exit"),
        rss_kib: col("rss"),
        overhead_kib: col("overhead"),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let pearvisor = match args.pearvisor {
        Some(p) => p,
        None => sibling("pearvisor")?,
    };
    let bench = sibling("pv-bench")?;
    for p in [&pearvisor, &bench] {
        if !p.is_file() {
            bail!(
                "{} not found: build with `cargo build --release --workspace --bins`",
                p.display()
            );
        }
    }
    let qemu = which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed (scripts/setup-host.sh)")?;
    // Without the GPU userspace: the figures measure the VMM's boot, not unpacking Mesa.
    let image = pv_image::build_default_image(pv_image::ImageOptions {
        gpu_userspace: pv_image::GpuUserspace::None,
        ..Default::default()
    })?;
    let log = match host_virtualization() {
        HostVirt::Hardware => {
            let dir = std::env::temp_dir().join(format!("pv-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(&image.kernel, dir.join("vmlinuz"))?;
            std::fs::copy(&image.initrd, dir.join("initrd.img"))?;
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script(args.runs))
                .env("PV", &pearvisor)
                .env("BENCH", &bench)
                .env("L2", &dir)
                .env("QEMU_DATA", "/usr/share/qemu")
                .output()?;
            let _ = std::fs::remove_dir_all(&dir);
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        _ => {
            eprintln!(
                "bench: no hardware virtualization here; measuring inside the nested machine"
            );
            let out = NestedMachine::new()
                .binary(&pearvisor)
                .binary(&bench)
                .binary(&qemu)
                .dir(Path::new("/usr/share/qemu"), "/usr/share/qemu")
                .guest_image(&image)
                .timeout(Duration::from_secs(60 + u64::from(args.runs) * 90))
                .script(format!(
                    "PV=pearvisor\nBENCH=pv-bench\nL2=/l2\nQEMU_DATA=/usr/share/qemu\n{}",
                    script(args.runs)
                ))
                .run()?;
            out.log
        }
    };
    for line in log
        .lines()
        .filter(|l| l.starts_with("RUN ") || l.starts_with("BENCH-HOST"))
    {
        println!("{line}");
    }
    let (Some(pv), Some(qemu)) = (summary(&log, "pearvisor"), summary(&log, "qemu-microvm")) else {
        bail!("a benchmark run failed; log tail:\n{}", tail(&log, 40));
    };
    println!();
    println!(
        "| median of {} boots | PearVisor | QEMU microvm | PearVisor / QEMU |",
        args.runs
    );
    println!("|---|---|---|---|");
    println!(
        "| start → guest userspace | {:.0} ms | {:.0} ms | {:.2} |",
        pv.marker_ms,
        qemu.marker_ms,
        pv.marker_ms / qemu.marker_ms
    );
    println!(
        "| start → VMM exit | {:.0} ms | {:.0} ms | {:.2} |",
        pv.exit_ms,
        qemu.exit_ms,
        pv.exit_ms / qemu.exit_ms
    );
    println!(
        "| VMM RSS beyond guest RAM | {:.1} MiB | {:.1} MiB | {:.2} |",
        pv.overhead_kib / 1024.0,
        qemu.overhead_kib / 1024.0,
        pv.overhead_kib / qemu.overhead_kib
    );
    println!(
        "| total RSS at userspace | {:.1} MiB | {:.1} MiB | {:.2} |",
        pv.rss_kib / 1024.0,
        qemu.rss_kib / 1024.0,
        pv.rss_kib / qemu.rss_kib
    );
    Ok(())
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
