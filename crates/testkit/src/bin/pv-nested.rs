//! pv-nested: runs PearVisor inside the nested-KVM L1 machine (QEMU/TCG with emulated AMD
//! SVM), with the terminal attached, for hosts without hardware virtualization.
//!
//! `pv-nested [--memory 3G] [--pearvisor PATH] -- <pearvisor args...>` builds the default guest
//! image, carries it (as /l2/vmlinuz and /l2/initrd.img) and the pearvisor binary into L1 and
//! runs `pearvisor <args>` there (no args: `pearvisor run`). `{kernel}` and `{initrd}` in the args are replaced by the
//! image's in-L1 paths; when the args name no kernel, `--kernel /l2/vmlinuz --initrd
//! /l2/initrd.img` is appended (and `--memory 1G` unless the args say how much). When the args ask for 3D (`context-types=`), the host's GPU
//! runtime (`pearvisor gpu-runtime build`, built here when missing) goes into L1 too, at
//! /opt/gpu-runtime, and `PEARVISOR_GPU_RUNTIME` points pearvisor at it (L1 has no
//! virglrenderer); L1 then gets at least 4G.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use pv_testkit::{host_virtualization, NestedMachine, L2_INITRD, L2_KERNEL};

#[derive(Debug, Parser)]
#[command(
    name = "pv-nested",
    version,
    about = "Run PearVisor inside a nested-KVM L1 machine (QEMU/TCG, emulated AMD SVM)",
    after_help = "In the pearvisor args, {kernel} and {initrd} stand for the guest image in L1 \
                  (/l2/vmlinuz, /l2/initrd.img); without a --kernel arg both are appended.\n\
                  The console is interactive: Ctrl-A x quits QEMU, Ctrl-C goes to the guest.\n\
                  Needs QEMU >= 10 (scripts/setup-host.sh installs it)."
)]
struct Args {
    /// Memory of the L1 machine (QEMU -m syntax) [default: 3G, 4G with the GPU runtime].
    #[arg(long)]
    memory: Option<String>,
    /// The pearvisor binary [default: `pearvisor` next to this program].
    #[arg(long, value_name = "PATH")]
    pearvisor: Option<PathBuf>,
    /// Kill the L1 machine after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Give an L1 shell instead of running pearvisor (pearvisor is on PATH, the image in /l2).
    #[arg(long)]
    shell: bool,
    /// Forward TCP HOST_PORT on the host's loopback to L1_PORT in L1
    /// (repeatable), e.g. 8080:8080 for `--display web=0.0.0.0:8080`.
    #[arg(long, value_name = "HOST_PORT:L1_PORT")]
    forward: Vec<String>,
    /// Carry a host file or directory into L1 (repeatable).
    #[arg(long, value_name = "SRC:DEST")]
    carry: Vec<String>,
    /// Arguments for pearvisor.
    #[arg(last = true, value_name = "PEARVISOR ARGS")]
    args: Vec<String>,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Substitutes the placeholders and appends the image paths when no kernel is named.
/// No args at all means `run`.
fn pearvisor_args(args: &[String]) -> Vec<String> {
    let run = ["run".to_string()];
    let args = if args.is_empty() { &run[..] } else { args };
    let mut out: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("{kernel}", L2_KERNEL)
                .replace("{initrd}", L2_INITRD)
        })
        .collect();
    let names = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let placeholder = args.iter().any(|a| a.contains("{kernel}"));
    if !placeholder && !names("--kernel") {
        out.extend(["--kernel".to_string(), L2_KERNEL.to_string()]);
        if !names("--initrd") && !args.iter().any(|a| a.contains("{initrd}")) {
            out.extend(["--initrd".to_string(), L2_INITRD.to_string()]);
        }
        // What pearvisor gives the default image when it picks it itself:
        // the GPU userspace unpacks into RAM.
        if !names("--memory") && !names("--config") {
            out.extend(["--memory".to_string(), "1G".to_string()]);
        }
    }
    out
}

/// Where the GPU runtime goes in L1.
const L1_GPU_RUNTIME: &str = "/opt/gpu-runtime";

/// Whether pearvisor's args ask for a 3D GPU (and so for the GPU runtime).
fn wants_3d(args: &[String]) -> bool {
    args.iter().any(|a| a.contains("context-types="))
}

fn default_pearvisor() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find pv-nested's own path")?;
    Ok(exe.with_file_name("pearvisor"))
}

fn run() -> Result<ExitCode> {
    let args = Args::parse();
    let pearvisor = match args.pearvisor {
        Some(p) => p,
        None => default_pearvisor()?,
    };
    if !pearvisor.is_file() {
        bail!(
            "pearvisor binary not found at {} (build it with `cargo build -p pearvisor`, or pass \
             --pearvisor PATH)",
            pearvisor.display()
        );
    }
    let name = pearvisor
        .file_name()
        .and_then(|n| n.to_str())
        .context("the pearvisor path has no usable file name")?
        .to_string();
    eprintln!("pv-nested: host: {}", host_virtualization().describe());

    let image = pv_image::build_default_image(pv_image::ImageOptions::default())
        .context("cannot build the guest image")?;

    let runtime = if wants_3d(&args.args) {
        let rt = match pv_image::cached_gpu_runtime(None) {
            Some(rt) => rt,
            None => pv_image::build_gpu_runtime(pv_image::GpuRuntimeOptions::default())
                .context("cannot build the GPU runtime (pearvisor gpu-runtime build)")?,
        };
        eprintln!(
            "pv-nested: carrying the GPU runtime (virglrenderer {}) into L1 at {L1_GPU_RUNTIME}",
            rt.version_of("libvirglrenderer1").unwrap_or("?")
        );
        Some(rt)
    } else {
        None
    };
    let memory = args
        .memory
        .clone()
        .unwrap_or_else(|| if runtime.is_some() { "4G" } else { "3G" }.to_string());
    let mut machine = NestedMachine::new()
        .binary(&pearvisor)
        .guest_image(&image)
        .memory(memory)
        .interactive(true);
    if let Some(rt) = &runtime {
        machine = machine.dir(&rt.root, L1_GPU_RUNTIME);
    }
    for spec in &args.carry {
        let (src, dest) = spec
            .split_once(':')
            .with_context(|| format!("--carry {spec}: expected SRC:DEST"))?;
        let src = Path::new(src);
        machine = if src.is_dir() {
            machine.dir(src, dest)
        } else {
            machine.file(src, dest)
        };
    }
    for spec in &args.forward {
        let parse = || -> Option<(u16, u16)> {
            let (h, g) = spec.split_once(':')?;
            Some((h.parse().ok()?, g.parse().ok()?))
        };
        let (host, l1) =
            parse().with_context(|| format!("--forward {spec}: expected HOST_PORT:L1_PORT"))?;
        machine = machine.forward_tcp(host, l1);
        eprintln!("pv-nested: 127.0.0.1:{host} on this host reaches port {l1} in L1");
    }
    if let Some(secs) = args.timeout {
        machine = machine.timeout(Duration::from_secs(secs));
    }
    let env = if runtime.is_some() {
        format!("export PEARVISOR_GPU_RUNTIME={L1_GPU_RUNTIME}\n")
    } else {
        String::new()
    };
    let script = env
        + &if args.shell {
            format!(
            "echo 'pv-nested: L1 shell ({name} is on PATH, the guest image is in /l2); exit to \
             power off'\nexec sh -l\n"
        )
        } else {
            let mut line = shell_quote(&name);
            for a in pearvisor_args(&args.args) {
                line.push(' ');
                line.push_str(&shell_quote(&a));
            }
            format!(
                "echo \"pv-nested: running {}\"\n{line}\n",
                line.replace('"', "\\\"")
            )
        };
    let out = machine
        .script(script)
        .run()
        .context("the L1 machine failed")?;
    if !out.kvm_ready() {
        eprintln!("pv-nested: warning: L1 had no /dev/kvm (kvm_amd did not load)");
    }
    Ok(match out.l1_rc {
        Some(rc) => ExitCode::from(u8::try_from(rc).unwrap_or(1)),
        None => {
            eprintln!("pv-nested: L1 stopped before the command finished");
            ExitCode::from(1)
        }
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pv-nested: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn appends_image_paths_when_no_kernel_is_named() {
        assert_eq!(
            pearvisor_args(&v(&["run", "--memory", "512M"])),
            v(&[
                "run",
                "--memory",
                "512M",
                "--kernel",
                "/l2/vmlinuz",
                "--initrd",
                "/l2/initrd.img"
            ])
        );
        assert_eq!(
            pearvisor_args(&[]),
            v(&[
                "run",
                "--kernel",
                "/l2/vmlinuz",
                "--initrd",
                "/l2/initrd.img",
                "--memory",
                "1G"
            ])
        );
    }

    #[test]
    fn the_runtime_goes_along_only_for_3d() {
        assert!(wants_3d(&v(&["run", "--gpu", "context-types=venus:virgl"])));
        assert!(wants_3d(&v(&[
            "run",
            "--gpu=width=800,context-types=virgl"
        ])));
        assert!(!wants_3d(&v(&["run", "--gpu", "width=800"])));
        assert!(!wants_3d(&[]));
    }

    #[test]
    fn placeholders_and_explicit_kernel() {
        assert_eq!(
            pearvisor_args(&v(&["-k", "{kernel}", "-i", "{initrd}"])),
            v(&["-k", "/l2/vmlinuz", "-i", "/l2/initrd.img"])
        );
        assert_eq!(
            pearvisor_args(&v(&["--kernel=/my/k"])),
            v(&["--kernel=/my/k"])
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from(["pv-nested", "--memory", "2G", "--", "run", "--x"]).unwrap();
        assert_eq!(a.memory.as_deref(), Some("2G"));
        assert_eq!(a.args, v(&["run", "--x"]));
    }
}
