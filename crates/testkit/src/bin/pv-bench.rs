//! `pv-bench`: times a VMM command from process start to a marker on its
//! console and to its exit, and measures its memory beyond guest RAM.
//!
//! ```text
//! pv-bench --runs 5 --label pearvisor --marker PEARVISOR-GUEST-READY -- CMD ARGS...
//! ```
//! Prints one line per run and a final `BENCH {json}` line with medians:
//! `{"label":..,"runs":N,"marker_ms":..,"exit_ms":..,"rss_kib":..,"overhead_kib":..}`.
//! `overhead_kib` is the process's resident memory outside anonymous mappings
//! of 64 MiB or more (guest RAM), sampled when the marker appears.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

const GUEST_RAM_MAPPING_MIN: u64 = 64 << 20;

struct Sample {
    marker_ms: f64,
    exit_ms: f64,
    rss_kib: u64,
    overhead_kib: u64,
}

/// (total RSS, RSS outside guest-RAM-sized anonymous mappings) in KiB.
fn memory_of(pid: u32) -> (u64, u64) {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return (0, 0);
    };
    let (mut total, mut overhead) = (0u64, 0u64);
    let mut big_anon = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let mut bounds = first
                .split('-')
                .map(|x| u64::from_str_radix(x, 16).unwrap_or(0));
            let (start, end) = (bounds.next().unwrap_or(0), bounds.next().unwrap_or(0));
            let path = line.split_whitespace().nth(5);
            big_anon = end - start >= GUEST_RAM_MAPPING_MIN && path.is_none();
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib;
            if !big_anon {
                overhead += kib;
            }
        }
    }
    (total, overhead)
}

fn run_once(cmd: &[String], marker: &str) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd[0]))?;
    let pid = child.id();
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut marker_at = None;
    let mut mem = (0, 0);
    loop {
        let n = out.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if marker_at.is_none() && seen.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            marker_at = Some(start.elapsed());
            mem = memory_of(pid);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let exit = start.elapsed();
    let marker_at = marker_at.ok_or_else(|| {
        format!(
            "marker never appeared (exit {status}); output tail: {}",
            String::from_utf8_lossy(&seen[seen.len().saturating_sub(400)..])
        )
    })?;
    Ok(Sample {
        marker_ms: marker_at.as_secs_f64() * 1e3,
        exit_ms: exit.as_secs_f64() * 1e3,
        rss_kib: mem.0,
        overhead_kib: mem.1,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 5usize;
    let mut label = "vmm".to_string();
    let mut marker = "PEARVISOR-GUEST-READY".to_string();
    let mut i = 0;
    while i < args.len() && args[i] != "--" {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--runs", Some(v)) => runs = v.parse().unwrap_or(runs),
            ("--label", Some(v)) => label = v.clone(),
            ("--marker", Some(v)) => marker = v.clone(),
            (other, _) => {
                eprintln!("pv-bench: unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let cmd = &args[(i + 1).min(args.len())..];
    if cmd.is_empty() {
        eprintln!("usage: pv-bench [--runs N] [--label L] [--marker M] -- COMMAND ARGS...");
        std::process::exit(2);
    }
    let mut samples = Vec::new();
    for r in 0..runs {
        match run_once(cmd, &marker) {
            Ok(s) => {
                println!(
                    "RUN {label} {r}: marker {:.0} ms, exit {:.0} ms, rss {} KiB, overhead {} KiB",
                    s.marker_ms, s.exit_ms, s.rss_kib, s.overhead_kib
                );
                samples.push(s);
            }
            Err(e) => {
                println!("RUN {label} {r}: FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "BENCH {{\"label\":\"{label}\",\"runs\":{},\"marker_ms\":{:.1},\"exit_ms\":{:.1},\"rss_kib\":{:.0},\"overhead_kib\":{:.0}}}",
        samples.len(),
        median(samples.iter().map(|s| s.marker_ms).collect()),
        median(samples.iter().map(|s| s.exit_ms).collect()),
        median(samples.iter().map(|s| s.rss_kib as f64).collect()),
        median(samples.iter().map(|s| s.overhead_kib as f64).collect()),
    );
}
