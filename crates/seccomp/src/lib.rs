//! Syscall filters (seccomp-BPF, built with seccompiler) for every thread
//! PearVisor starts once a guest runs.
//!
//! Each thread kind ([`ThreadKind`]) gets its own allow list
//! ([`rules`]): a vCPU may only run KVM ioctls and write to its console, a
//! virtio-blk worker may only read, write and flush its disk, and so on. The
//! mode is chosen once per process ([`set_mode`]): `kill` (the default of
//! `pearvisor run`) ends the whole process with SIGSYS on a syscall outside
//! the list, `log` lets it through and logs it (the kernel's audit log), and
//! `off` installs nothing. A process that never calls [`set_mode`] (unit
//! tests, benchmarks) runs unfiltered.
//!
//! Filters are inherited by threads a filtered thread creates, and stack:
//! a worker spawned from a vCPU would run under both lists. Device workers
//! are therefore started through [`spawn`], which creates them from an
//! unfiltered spawner thread so each runs under its own list only.

mod rules;
mod spawner;
mod trap;

use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction};
use serde::{Deserialize, Serialize};

pub use rules::allowed_syscalls;
pub use spawner::{spawn, Spawned};

/// What a filtered thread's forbidden syscall does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the process with SIGSYS.
    #[default]
    Kill,
    /// Allow it and log it (the kernel's audit log: `dmesg`, `journalctl -k`).
    Log,
    /// Install no filters.
    Off,
}

impl SeccompMode {
    /// The name `--seccomp` takes.
    pub fn name(self) -> &'static str {
        match self {
            SeccompMode::Kill => "on",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        }
    }
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" | "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            other => Err(format!(
                "unknown seccomp mode {other:?}: use on, log or off"
            )),
        }
    }
}

/// The kinds of threads that run filtered, each with its own allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// `vcpu-N`: KVM_RUN and the devices' register handlers.
    Vcpu,
    /// A virtio device worker without a GPU: `virtio-blk-N`, `virtio-rng`,
    /// `virtio-input-*`.
    VirtioWorker,
    /// The 2D virtio-gpu worker (no renderer library).
    Gpu2d,
    /// The 3D virtio-gpu thread and the threads virglrenderer and the GL
    /// driver start from it.
    GpuRenderer,
    /// The REST API server and its blocking pool; also the thread that
    /// carries out a shutdown after the last window closed.
    Api,
    /// The web viewer.
    DisplayWeb,
    /// The native windows (winit, X11 or Wayland client libraries).
    DisplayWindow,
    /// The terminal's input to the serial port.
    Stdin,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Vcpu,
        ThreadKind::VirtioWorker,
        ThreadKind::Gpu2d,
        ThreadKind::GpuRenderer,
        ThreadKind::Api,
        ThreadKind::DisplayWeb,
        ThreadKind::DisplayWindow,
        ThreadKind::Stdin,
    ];

    /// A short name (logs, the self-test variable).
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::VirtioWorker => "virtio-worker",
            ThreadKind::Gpu2d => "gpu-2d",
            ThreadKind::GpuRenderer => "gpu-renderer",
            ThreadKind::Api => "api",
            ThreadKind::DisplayWeb => "display-web",
            ThreadKind::DisplayWindow => "display-window",
            ThreadKind::Stdin => "stdin",
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {kind} syscall filter: {source}")]
    Build {
        kind: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind} syscall filter: {source}")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
}

static MODE: OnceLock<SeccompMode> = OnceLock::new();

/// Chooses the mode for this process; the first call wins. Call it on the
/// main thread before starting a VM.
pub fn set_mode(mode: SeccompMode) {
    if MODE.set(mode).is_err() && MODE.get() != Some(&mode) {
        log::warn!("seccomp mode already chosen; {} ignored", mode.name());
    }
    if mode != SeccompMode::Off {
        spawner::start();
    }
    if mode == SeccompMode::Kill {
        trap::install_handler();
    }
}

/// The process's mode; `Off` until [`set_mode`] is called.
pub fn mode() -> SeccompMode {
    MODE.get().copied().unwrap_or(SeccompMode::Off)
}

/// The environment variable that makes a thread of the named kind (see
/// [`ThreadKind::name`]) call a syscall no list allows right after its
/// filter is installed. Tests use it to show that the filter holds.
pub const SELFTEST_ENV: &str = "PEARVISOR_SECCOMP_SELFTEST";

/// Installs `kind`'s filter on the calling thread, per the process's mode.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let mismatch = match mode() {
        SeccompMode::Off => return Ok(()),
        // SIGSYS, whose handler names the thread and the syscall, then
        // ends the process with SIGSYS.
        SeccompMode::Kill => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let filters = rules::filters(kind, mismatch).map_err(build)?;
    for filter in filters {
        let program: BpfProgram = filter.try_into().map_err(build)?;
        seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })?;
    }
    trap::set_thread_kind(kind);
    log::debug!(
        "seccomp: {} filter installed ({})",
        kind.name(),
        mode().name()
    );
    if std::env::var(SELFTEST_ENV).is_ok_and(|v| v == kind.name()) {
        selftest_violation(kind);
    }
    Ok(())
}

/// [`apply`], logging a failure: for thread bodies that have nowhere to
/// return an error to. A thread whose filter cannot be installed stops
/// the process rather than run unconfined in `kill` mode.
pub fn apply_or_abort(kind: ThreadKind) {
    if let Err(e) = apply(kind) {
        log::error!("{e}");
        if mode() == SeccompMode::Kill {
            eprintln!("pearvisor: {e}; stopping (run with --seccomp=off to debug)");
            std::process::abort();
        }
    }
}

/// A syscall that no list allows and that changes nothing when it runs
/// anyway (`log` mode): personality(0xffffffff) only reads the persona.
fn selftest_violation(kind: ThreadKind) {
    log::warn!(
        "seccomp self-test: the {} thread calls a forbidden syscall",
        kind.name()
    );
    // SAFETY: personality with 0xffffffff only queries the current persona.
    let r = unsafe { libc::personality(0xffff_ffff) };
    log::warn!("seccomp self-test: the forbidden syscall returned {r}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::SeccompFilter;

    #[test]
    fn mode_names_round_trip() {
        for m in [SeccompMode::Kill, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(m.name().parse::<SeccompMode>(), Ok(m));
        }
        assert!("strict"
            .parse::<SeccompMode>()
            .unwrap_err()
            .contains("on, log or off"));
    }

    #[test]
    fn every_kind_builds_a_filter() {
        for kind in ThreadKind::ALL {
            let list = rules::rules(kind).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert!(list.len() > 20, "{}: {} syscalls", kind.name(), list.len());
            let filter = SeccompFilter::new(
                list,
                SeccompAction::KillProcess,
                SeccompAction::Allow,
                std::env::consts::ARCH.try_into().unwrap(),
            )
            .unwrap();
            let program: BpfProgram = filter.try_into().unwrap();
            assert!(!program.is_empty());
        }
    }

    #[test]
    fn no_list_allows_new_programs_or_the_selftest_syscall() {
        for kind in ThreadKind::ALL {
            let allowed = allowed_syscalls(kind);
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_personality,
                libc::SYS_mount,
                libc::SYS_init_module,
                libc::SYS_kexec_load,
                libc::SYS_bpf,
            ] {
                assert!(
                    !allowed.contains(&forbidden),
                    "{} allows syscall {forbidden}",
                    kind.name()
                );
            }
        }
    }

    /// Runs [`child_scenario`] in a new process (filters cannot be taken
    /// off a thread) and returns how it ended and what it printed.
    fn run_child(scenario: &str) -> (std::process::ExitStatus, String) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::child_scenario", "--nocapture"])
            .env("PV_SECCOMP_CHILD", scenario)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status, text)
    }

    fn killed_by_sigsys(status: std::process::ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(libc::SIGSYS)
    }

    #[test]
    fn a_filtered_vcpu_thread_keeps_its_allowed_calls() {
        let (status, out) = run_child("allowed");
        assert!(status.success(), "{out}");
        assert!(out.contains("child: allowed calls work"), "{out}");
    }

    #[test]
    fn a_non_kvm_ioctl_from_a_vcpu_kills_the_process() {
        let (status, out) = run_child("tty-ioctl");
        assert!(killed_by_sigsys(status), "{status:?}: {out}");
        assert!(!out.contains("child: survived"), "{out}");
        // The handler names the thread kind and the syscall.
        let says = format!("(vcpu filter) made syscall {}, which", libc::SYS_ioctl);
        assert!(out.contains(&says), "{out}");
    }

    #[test]
    fn a_new_process_from_a_worker_kills_the_process() {
        let (status, out) = run_child("fork");
        assert!(killed_by_sigsys(status), "{status:?}: {out}");
        // By the fork (glibc's fork is clone without CLONE_THREAD), not
        // by the terminal query before it.
        let says = format!("(virtio-worker filter) made syscall {},", libc::SYS_clone);
        assert!(out.contains(&says), "{out}");
    }

    #[test]
    fn log_mode_lets_the_forbidden_call_through() {
        let (status, out) = run_child("log");
        assert!(status.success(), "{status:?}: {out}");
        assert!(out.contains("child: survived"), "{out}");
    }

    #[test]
    fn the_selftest_variable_kills_the_named_kind_only() {
        let (status, out) = run_child("selftest");
        assert!(killed_by_sigsys(status), "{status:?}: {out}");
        assert!(out.contains("child: api filtered"), "{out}");
        assert!(!out.contains("child: survived"), "{out}");
    }

    /// Body of the tests above, in the child process.
    #[test]
    fn child_scenario() {
        let Ok(scenario) = std::env::var("PV_SECCOMP_CHILD") else {
            return;
        };
        let mode = if scenario == "log" {
            SeccompMode::Log
        } else {
            SeccompMode::Kill
        };
        set_mode(mode);
        let t = std::thread::spawn(move || match scenario.as_str() {
            "allowed" => {
                apply(ThreadKind::Vcpu).unwrap();
                // SAFETY: getpid has no arguments.
                assert!(unsafe { libc::getpid() } > 0);
                // SAFETY: the null argument block is never read: the
                // filter answers first.
                let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
                let errno = std::io::Error::last_os_error().raw_os_error();
                assert_eq!((r, errno), (-1, Some(libc::ENOSYS)));
                // Threads start through clone's fallback.
                std::thread::spawn(|| ()).join().unwrap();
                // Opening a file fails instead of stopping the process.
                let e = std::fs::File::open("/proc/self/status").unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
                // A panic with a backtrace (which looks for the
                // executable) is a panic, not a stop.
                std::env::set_var("RUST_BACKTRACE", "1");
                assert!(std::panic::catch_unwind(|| panic!("on purpose")).is_err());
                println!("child: allowed calls work");
            }
            "tty-ioctl" => {
                apply(ThreadKind::Vcpu).unwrap();
                let mut ws: libc::winsize = empty_winsize();
                // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
                unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
                println!("child: survived");
            }
            "fork" => {
                apply(ThreadKind::VirtioWorker).unwrap();
                // Asking whether stderr is a terminal (the logger does) is
                // allowed everywhere.
                // SAFETY: isatty only queries the descriptor.
                unsafe { libc::isatty(2) };
                // SAFETY: the child (if any) exits at once.
                if unsafe { libc::fork() } == 0 {
                    // SAFETY: _exit is async-signal-safe.
                    unsafe { libc::_exit(0) };
                }
                println!("child: survived");
            }
            "log" => {
                apply(ThreadKind::Stdin).unwrap();
                selftest_violation(ThreadKind::Stdin);
                println!("child: survived");
            }
            "selftest" => {
                std::env::set_var(SELFTEST_ENV, "vcpu");
                apply(ThreadKind::Api).unwrap();
                println!("child: api filtered");
                std::thread::spawn(|| apply(ThreadKind::Vcpu).unwrap())
                    .join()
                    .unwrap();
                println!("child: survived");
            }
            other => panic!("unknown scenario {other}"),
        });
        t.join().unwrap();
    }

    fn empty_winsize() -> libc::winsize {
        libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}
