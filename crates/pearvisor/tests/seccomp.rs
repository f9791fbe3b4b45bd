//! The VMM's syscall filters in the real binary (issue 6), with the
//! bare-metal test guest on the host's /dev/kvm (kvm_pvm is enough).
//!
//! `PEARVISOR_SECCOMP_SELFTEST=<kind>` makes a thread of that kind call a
//! syscall no list allows (personality) right after its filter is
//! installed: with `--seccomp=on` (the default) the VMM must end with
//! SIGSYS and say which thread and syscall; with `log` and `off` it must run
//! on.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PEARVISOR: &str = env!("CARGO_BIN_EXE_pearvisor");

struct Outcome {
    /// Killed by this signal, or None when it was still running after the
    /// guest got going (then the test stopped it).
    signal: Option<i32>,
    stderr: String,
    console: String,
}

/// Boots the guest in `mode` with the self-test aimed at `kind` and
/// `--seccomp=seccomp`; stops it once the console shows `ready` (or it
/// ended by itself).
fn run(dir: &Path, kind: &str, seccomp: &str, mode: &str, ready: &str) -> Outcome {
    pv_testkit::baremetal::require_kvm();
    let elf = pv_testkit::baremetal::build(dir).unwrap_or_else(|e| panic!("{e}"));
    let serial = dir.join(format!("serial-{kind}-{seccomp}.txt"));
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let stderr_path = dir.join(format!("stderr-{kind}-{seccomp}.txt"));
    let mut child = Command::new(PEARVISOR)
        .env("PEARVISOR_SECCOMP_SELFTEST", kind)
        .args(["run", "--skip-host-check", "--kernel"])
        .arg(&elf)
        .args(["--cmdline", &format!("mode={mode}"), "--memory", "64M"])
        .arg(format!("--seccomp={seccomp}"))
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .arg("--api-socket")
        .arg(dir.join("api.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start pearvisor");
    let deadline = Instant::now() + Duration::from_secs(20);
    let signal = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.signal();
        }
        if std::fs::read_to_string(&serial).is_ok_and(|s| s.contains(ready)) {
            // Give a late violation (the worker starts on DRIVER_OK) time.
            std::thread::sleep(Duration::from_millis(300));
            if let Some(status) = child.try_wait().unwrap() {
                break status.signal();
            }
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{seccomp}: neither ready nor ended"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        signal,
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
        console: std::fs::read_to_string(&serial).unwrap_or_default(),
    }
}

/// (self-test kind, guest mode, console line that shows the guest got far
/// enough for that kind's thread to exist)
const KINDS: [(&str, &str, &str); 3] = [
    ("vcpu", "ticker", "TICK 3"),
    ("api", "ticker", "TICK 3"),
    ("virtio-worker", "durable", "DURABLE ACK"),
];

#[test]
fn a_forbidden_syscall_stops_the_vmm_with_sigsys_and_names_the_thread() {
    let dir = pv_testkit::baremetal::scratch_dir("seccomp-on");
    for (kind, mode, ready) in KINDS {
        let out = run(&dir, kind, "on", mode, ready);
        assert_eq!(
            out.signal,
            Some(libc::SIGSYS),
            "{kind}: not stopped by SIGSYS\nstderr: {}\nconsole: {}",
            out.stderr,
            out.console
        );
        let says = format!("({kind} filter) made syscall {}", libc::SYS_personality);
        assert!(out.stderr.contains(&says), "{kind}: {}", out.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_and_off_modes_let_the_vmm_run_on() {
    let dir = pv_testkit::baremetal::scratch_dir("seccomp-log");
    for seccomp in ["log", "off"] {
        for (kind, mode, ready) in KINDS {
            let out = run(&dir, kind, seccomp, mode, ready);
            assert_eq!(
                out.signal, None,
                "{kind}/{seccomp}: ended\nstderr: {}\nconsole: {}",
                out.stderr, out.console
            );
            assert!(
                out.console.contains(ready),
                "{kind}/{seccomp}: {}",
                out.console
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
