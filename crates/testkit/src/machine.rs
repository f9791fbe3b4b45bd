//! [`NestedMachine`]: an "L1" Debian 6.12 machine under QEMU/TCG with emulated AMD SVM, where
//! `kvm_amd` provides a real `/dev/kvm`, carrying PearVisor (with its shared libraries), files
//! and a script to run once KVM is up.
//!
//! The L1 kernel is the same trixie package pv-image uses for guests. Its initramfs holds
//! busybox, the decompressed `irqbypass kvm ccp kvm-amd` chain (order from the modules'
//! `.modinfo`), the binaries, the files and `/l1/script.sh`. L1's `/init` prints
//! [`L1_KVM_READY`] or [`L1_NO_KVM`], runs the script in `/tmp` (a tmpfs), prints
//! `L1-TEST-EXIT rc=N` and powers off.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pv_image::{
    busybox_skeleton, fetch_base, modules, Cache, CacheError, CpioError, DebianError, FetchOptions,
    GuestImage, Initramfs, ModuleError, ModuleFile,
};
use thiserror::Error;

use crate::ldd::{self, LddError};
use crate::qemu::{self, Collecting, Echo, Finished, QemuError};

/// Printed by L1 once `/dev/kvm` exists.
pub const L1_KVM_READY: &str = "L1-KVM-READY";
/// Printed by L1 when the kvm modules left no `/dev/kvm`.
pub const L1_NO_KVM: &str = "L1-NO-KVM";
/// Prefix of the line L1 prints after the script: `L1-TEST-EXIT rc=N`.
pub const L1_TEST_EXIT: &str = "L1-TEST-EXIT rc=";
/// Where [`NestedMachine::guest_image`] puts the L2 kernel in L1.
pub const L2_KERNEL: &str = "/l2/vmlinuz";
/// Where [`NestedMachine::guest_image`] puts the L2 initramfs in L1.
pub const L2_INITRD: &str = "/l2/initrd.img";
/// Where binaries go in L1 (first on PATH).
pub const L1_BIN_DIR: &str = "/usr/local/bin";
/// The L1 kernel command line.
pub const L1_CMDLINE: &str = "console=ttyS0 panic=-1 quiet loglevel=3";
/// The kernel modules L1 loads (dependencies are added).
pub const L1_MODULES: &[&str] = &["kvm_amd"];
/// The default limit of a non-interactive run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of a nested machine run.
#[derive(Debug, Error)]
pub enum TestkitError {
    #[error("cache unavailable")]
    Cache(#[from] CacheError),
    #[error("cannot get the L1 kernel and busybox")]
    Packages(#[from] DebianError),
    #[error("cannot resolve the L1 kernel modules")]
    Modules(#[from] ModuleError),
    #[error("cannot build the L1 initramfs")]
    Initramfs(#[from] CpioError),
    #[error("cannot find the libraries of a carried binary")]
    Ldd(#[from] LddError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not a file name usable in L1")]
    BadBinaryName(PathBuf),
    #[error("QEMU failed ({status}); last output:\n{log_tail}")]
    QemuFailed { status: String, log_tail: String },
    #[error("nested machine timed out after {after:?}; last output:\n{log_tail}")]
    Timeout { after: Duration, log_tail: String },
    #[error("{waiting_for:?} did not appear within {after:?}; last output:\n{log_tail}")]
    NotSeen {
        waiting_for: String,
        after: Duration,
        log_tail: String,
    },
    #[error(
        "the machine stopped ({status}) before {waiting_for:?} appeared; last output:\n{log_tail}"
    )]
    StoppedEarly {
        waiting_for: String,
        status: String,
        log_tail: String,
    },
}

/// What an L1 run printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedOutput {
    /// Everything L1's console and QEMU printed ('\r' removed).
    pub log: String,
    /// The script's exit status from `L1-TEST-EXIT rc=N`; None when L1 never got there.
    pub l1_rc: Option<i32>,
    /// Wall time of the QEMU run.
    pub elapsed: Duration,
}

impl NestedOutput {
    /// Whether L1 reported a working `/dev/kvm`.
    pub fn kvm_ready(&self) -> bool {
        self.log.lines().any(|l| l.trim() == L1_KVM_READY)
    }

    /// Whether the script ran and exited 0.
    pub fn success(&self) -> bool {
        self.l1_rc == Some(0)
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds `L1-TEST-EXIT rc=N` in a log.
pub fn parse_l1_rc(log: &str) -> Option<i32> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(L1_TEST_EXIT)?.trim().parse().ok())
}

#[derive(Debug, Clone)]
enum Carry {
    HostFile {
        src: PathBuf,
        dest: PathBuf,
    },
    HostDir {
        src: PathBuf,
        dest: PathBuf,
    },
    Bytes {
        dest: PathBuf,
        data: Vec<u8>,
        mode: u32,
    },
}

/// Builder and runner of an L1 machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct NestedMachine {
    binaries: Vec<PathBuf>,
    carry: Vec<Carry>,
    script: String,
    memory: String,
    timeout: Option<Duration>,
    interactive: bool,
    echo: bool,
    quiet: bool,
    cache_dir: Option<PathBuf>,
    kernel_package: Option<String>,
    modules: Vec<String>,
    extra_cmdline: String,
    qemu: PathBuf,
    forwards: Vec<(u16, u16)>,
    cpus: u32,
}

impl Default for NestedMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl NestedMachine {
    /// A machine with 3G of memory, an empty script and a 10-minute timeout.
    /// `PV_NESTED_ECHO=1` in the environment turns on [`NestedMachine::echo`].
    pub fn new() -> Self {
        NestedMachine {
            binaries: Vec::new(),
            carry: Vec::new(),
            script: String::new(),
            memory: "3G".to_string(),
            timeout: Some(DEFAULT_TIMEOUT),
            interactive: false,
            echo: std::env::var_os("PV_NESTED_ECHO").is_some_and(|v| v == "1"),
            quiet: false,
            cache_dir: None,
            kernel_package: None,
            modules: L1_MODULES.iter().map(|m| m.to_string()).collect(),
            forwards: Vec::new(),
            cpus: 1,
            extra_cmdline: String::new(),
            qemu: qemu::qemu_program(),
        }
    }

    /// Carries a host binary to `/usr/local/bin/<its file name>`, with every shared library
    /// `ldd` lists and its ELF interpreter at their host paths. May be called more than once.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binaries.push(path.into());
        self
    }

    /// Carries a host file to `dest` (absolute, in L1), keeping its permission bits.
    pub fn file(mut self, src: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.carry.push(Carry::HostFile {
            src: src.into(),
            dest: dest.into(),
        });
        self
    }

    /// Carries a host directory tree to `dest`.
    pub fn dir(mut self, src: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.carry.push(Carry::HostDir {
            src: src.into(),
            dest: dest.into(),
        });
        self
    }

    /// Puts `data` at `dest` in L1 with permission bits `mode`.
    pub fn file_bytes(
        mut self,
        dest: impl Into<PathBuf>,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.carry.push(Carry::Bytes {
            dest: dest.into(),
            data: data.into(),
            mode,
        });
        self
    }

    /// Carries a built guest image to [`L2_KERNEL`] and [`L2_INITRD`].
    pub fn guest_image(self, image: &GuestImage) -> Self {
        self.file(&image.kernel, L2_KERNEL)
            .file(&image.initrd, L2_INITRD)
    }

    /// The shell script (busybox sh) L1 runs in `/tmp` once KVM is up; its exit status
    /// becomes [`NestedOutput::l1_rc`].
    pub fn script(mut self, text: impl Into<String>) -> Self {
        self.script = text.into();
        self
    }

    /// L1's memory, in QEMU's `-m` syntax (default "3G").
    pub fn memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = memory.into();
        self
    }

    /// Kills QEMU after `timeout` (default 10 minutes; interactive runs: none unless set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Attaches the terminal to L1's console (QEMU's serial on stdio, Ctrl-A x quits QEMU,
    /// Ctrl-C goes to the guest); the script runs with the console as its controlling tty.
    pub fn interactive(mut self, interactive: bool) -> Self {
        if interactive && !self.interactive && self.timeout == Some(DEFAULT_TIMEOUT) {
            self.timeout = None;
        }
        self.interactive = interactive;
        self
    }

    /// Copies L1's console to stderr as it arrives (non-interactive runs).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// No progress lines on stderr.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Uses `dir` as the pv-image cache.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Pins the L1 kernel package (default: the newest 6.12, as pv-image).
    pub fn kernel_package(mut self, package: impl Into<String>) -> Self {
        self.kernel_package = Some(package.into());
        self
    }

    /// Forwards TCP `127.0.0.1:host_port` on the host to `l1_port` in L1
    /// (QEMU user networking; L1 gets a virtio-net interface at 10.0.2.15).
    /// A server in L1 must listen on 0.0.0.0 or 10.0.2.15.
    pub fn forward_tcp(mut self, host_port: u16, l1_port: u16) -> Self {
        if self.forwards.is_empty() {
            self.modules.push("virtio_net".into());
        }
        self.forwards.push((host_port, l1_port));
        self
    }

    /// Loads more kernel modules in L1 (dependencies are added), after the kvm chain.
    pub fn l1_module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    /// Appends to L1's kernel command line.
    pub fn cmdline(mut self, extra: impl Into<String>) -> Self {
        if !self.extra_cmdline.is_empty() {
            self.extra_cmdline.push(' ');
        }
        self.extra_cmdline.push_str(&extra.into());
        self
    }

    /// Uses another QEMU binary (default: `$PEARVISOR_QEMU` or `qemu-system-x86_64`).
    pub fn qemu(mut self, program: impl Into<PathBuf>) -> Self {
        self.qemu = program.into();
        self
    }

    fn say(&self, msg: &str) {
        if !self.quiet {
            eprintln!("nested: {msg}");
        }
    }

    /// L1's `/init`.
    pub fn init_script(&self) -> String {
        let run = if self.interactive {
            // A controlling tty, so that programs can put the console in raw mode and Ctrl-C
            // reaches them.
            "setsid cttyhack sh /l1/script.sh"
        } else {
            "sh /l1/script.sh"
        };
        format!(
            r#"#!/bin/busybox sh
# PearVisor nested-KVM L1 init (generated by pv-testkit).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs -o mode=1777 tmpfs /tmp
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
/bin/busybox --install -s /bin
export PATH={L1_BIN_DIR}:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=${{TERM:-linux}}
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
hostname pv-l1
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod" || echo "L1: insmod $mod failed"
done < /lib/modules/load.list
if [ -e /sys/class/net/eth0 ]; then
    ifconfig lo 127.0.0.1 up
    ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up
    route add default gw 10.0.2.2 2>/dev/null
fi
if [ -e /dev/kvm ]; then echo {L1_KVM_READY}; else echo {L1_NO_KVM}; fi
cd /tmp
{run}
rc=$?
echo "{L1_TEST_EXIT}$rc"
sync
poweroff -f
"#
        )
    }

    /// The L1 initramfs tree, from the given busybox binary and resolved kvm modules.
    pub fn initramfs(
        &self,
        busybox: &Path,
        modules: &[ModuleFile],
    ) -> Result<Initramfs, TestkitError> {
        let mut fs = busybox_skeleton(busybox)?;
        modules::add_to_initramfs(&mut fs, modules)?;
        fs.file("/init", self.init_script(), 0o755)?;
        fs.file("/l1/script.sh", self.script.clone(), 0o755)?;
        fs.dir("/l2", 0o755)?;
        fs.dir(L1_BIN_DIR, 0o755)?;
        for bin in &self.binaries {
            let name = bin
                .file_name()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| TestkitError::BadBinaryName(bin.clone()))?;
            let mode = host_mode(bin)? | 0o555;
            fs.file_from_host(Path::new(L1_BIN_DIR).join(name), bin, mode)?;
            for lib in ldd::runtime_files(bin)? {
                let mode = host_mode(&lib)?;
                fs.file_from_host(&lib, &lib, mode)?;
            }
        }
        for item in &self.carry {
            match item {
                Carry::HostFile { src, dest } => {
                    let mode = host_mode(src)?;
                    fs.file_from_host(dest, src, mode)?;
                }
                Carry::HostDir { src, dest } => {
                    fs.host_dir(src, dest)?;
                }
                Carry::Bytes { dest, data, mode } => {
                    fs.file(dest, data.clone(), *mode)?;
                }
            }
        }
        Ok(fs)
    }

    /// L1's CPUs. One (the default) runs TCG on one host thread, which was
    /// the fastest and steadiest for boots; more use multi-threaded TCG, one
    /// host thread per CPU, so that L1's processes (a render server beside
    /// the guest's vCPU) can run at the same time.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// The QEMU command line for an L1 initramfs at `initrd`.
    pub fn qemu_command(&self, kernel: &Path, initrd: &Path) -> Command {
        let mut cmd = Command::new(&self.qemu);
        if self.cpus > 1 {
            cmd.args(["-accel", "tcg,thread=multi", "-smp", &self.cpus.to_string()]);
        } else {
            cmd.args(["-accel", "tcg,thread=single", "-smp", "1"]);
        }
        cmd.args(["-cpu", "max"]).args(["-m", &self.memory]).args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ]);
        if self.interactive {
            cmd.args([
                "-chardev",
                "stdio,id=con,mux=on,signal=off",
                "-serial",
                "chardev:con",
                "-mon",
                "chardev=con,mode=readline",
            ]);
        } else {
            cmd.args(["-serial", "stdio"]);
        }
        if !self.forwards.is_empty() {
            let fwd: Vec<String> = self
                .forwards
                .iter()
                .map(|(h, g)| format!("hostfwd=tcp:127.0.0.1:{h}-:{g}"))
                .collect();
            cmd.args(["-netdev", &format!("user,id=net0,{}", fwd.join(","))])
                .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        }
        let mut append = L1_CMDLINE.to_string();
        if !self.extra_cmdline.is_empty() {
            append.push(' ');
            append.push_str(&self.extra_cmdline);
        }
        cmd.arg("-no-reboot")
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(append);
        cmd
    }

    /// Builds L1 and runs it to the end (or the timeout).
    pub fn run(&self) -> Result<NestedOutput, TestkitError> {
        self.spawn()?.finish()
    }

    /// Builds L1 and starts it; its console can be watched while it runs
    /// ([`LiveRun::log`], [`LiveRun::wait_for`]), for tests that act on the
    /// host while the guest runs (through [`NestedMachine::forward_tcp`]).
    /// The machine is killed when the [`LiveRun`] is dropped.
    pub fn spawn(&self) -> Result<LiveRun, TestkitError> {
        qemu::check_qemu(&self.qemu)?;
        let cache = Cache::open(self.cache_dir.as_deref())?;
        let base = fetch_base(
            &cache,
            &FetchOptions {
                kernel_package: self.kernel_package.clone(),
                quiet: self.quiet,
            },
        )?;
        let modules = base.kernel.module_index()?.resolve(&self.modules)?;
        let tree = self.initramfs(&base.busybox, &modules)?;
        let initrd = TempFile(cache.temp_path("l1-initrd-"));
        // Uncompressed: unpacking is a memcpy for the emulated CPU, inflating is not.
        tree.write_file(&initrd.0, pv_image::Compression::None)?;
        let size = fs::metadata(&initrd.0).map(|m| m.len()).unwrap_or(0);
        self.say(&format!(
            "booting L1 ({}, {} MiB initramfs, {} modules: {})",
            base.kernel.release,
            size >> 20,
            modules.len(),
            modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let mut cmd = self.qemu_command(&base.kernel.vmlinuz, &initrd.0);
        let echo = if self.interactive {
            cmd.stdin(Stdio::inherit());
            Echo::Stdout
        } else {
            cmd.stdin(Stdio::null());
            if self.echo {
                Echo::Stderr
            } else {
                Echo::None
            }
        };
        if self.interactive {
            self.say("interactive console: Ctrl-A x quits QEMU, Ctrl-C goes to the guest");
        }
        let proc = qemu::spawn_collecting(cmd, echo)?;
        Ok(LiveRun {
            proc,
            timeout: self.timeout,
            nested: true,
            quiet: self.quiet,
            _initrd: Some(initrd),
        })
    }
}

/// A running L1 machine ([`NestedMachine::spawn`]), or a script run
/// directly on a host with hardware virtualization ([`LiveRun::direct`]),
/// whose console can be read and waited on while it runs. Killed when
/// dropped unless finished.
#[derive(Debug)]
pub struct LiveRun {
    proc: Collecting,
    timeout: Option<Duration>,
    nested: bool,
    quiet: bool,
    _initrd: Option<TempFile>,
}

impl LiveRun {
    /// Runs `cmd` (stdin from /dev/null) with its output collected, killed
    /// after `timeout`: the direct counterpart of a nested machine.
    pub fn direct(mut cmd: Command, timeout: Duration) -> Result<Self, TestkitError> {
        cmd.stdin(Stdio::null());
        Ok(Self {
            proc: qemu::spawn_collecting(cmd, Echo::None)?,
            timeout: Some(timeout),
            nested: false,
            quiet: true,
            _initrd: None,
        })
    }

    /// The console output so far ('\r' removed).
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.proc.elapsed()
    }

    /// Waits until the console output holds `needle` and returns the output
    /// so far; an error when the machine stops first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, TestkitError> {
        self.wait_until(needle, timeout, |log| log.contains(needle))
    }

    /// Waits until `done` holds for the console output (described by `what`
    /// in errors) and returns the output so far.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String, TestkitError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            if done(&log) {
                return Ok(log);
            }
            if let Some(status) = self.proc.try_wait()? {
                // The last output may have come with the exit.
                std::thread::sleep(Duration::from_millis(100));
                let log = self.log();
                if done(&log) {
                    return Ok(log);
                }
                return Err(TestkitError::StoppedEarly {
                    waiting_for: what.to_string(),
                    status: status.to_string(),
                    log_tail: log_tail(&log, 40),
                });
            }
            if std::time::Instant::now() >= deadline {
                return Err(TestkitError::NotSeen {
                    waiting_for: what.to_string(),
                    after: timeout,
                    log_tail: log_tail(&log, 40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the end (the script's, then L1's poweroff), up to the
    /// machine's timeout counted from the start, and returns what it printed.
    pub fn finish(self) -> Result<NestedOutput, TestkitError> {
        let LiveRun {
            proc,
            timeout,
            nested,
            quiet,
            _initrd,
        } = self;
        let done: Finished = proc.finish(timeout)?;
        drop(_initrd);
        if done.timed_out {
            return Err(TestkitError::Timeout {
                after: timeout.unwrap_or_default(),
                log_tail: log_tail(&done.log, 40),
            });
        }
        let l1_rc = if nested {
            if !done.status.success() {
                return Err(TestkitError::QemuFailed {
                    status: done.status.to_string(),
                    log_tail: log_tail(&done.log, 40),
                });
            }
            parse_l1_rc(&done.log)
        } else {
            done.status.code()
        };
        if !quiet && nested {
            eprintln!(
                "nested: L1 finished in {:.1?} (rc {})",
                done.elapsed,
                l1_rc.map_or("none".to_string(), |rc| rc.to_string())
            );
        }
        Ok(NestedOutput {
            log: done.log,
            l1_rc,
            elapsed: done.elapsed,
        })
    }
}

fn host_mode(path: &Path) -> Result<u32, TestkitError> {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|source| TestkitError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Removes its file when dropped.
#[derive(Debug)]
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_image::cpio::parse_newc;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pv-testkit-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn l1_initramfs_layout() {
        let dir = scratch("layout");
        let busybox = dir.join("busybox");
        fs::write(&busybox, b"fake busybox").unwrap();
        let mut mods = Vec::new();
        for name in ["irqbypass", "kvm", "ccp", "kvm-amd"] {
            let path = dir.join(format!("{name}.ko"));
            fs::write(&path, format!("module {name}")).unwrap();
            mods.push(ModuleFile {
                name: name.replace('-', "_"),
                path,
                file_name: format!("{name}.ko"),
            });
        }
        let data_dir = dir.join("data");
        fs::create_dir_all(data_dir.join("sub")).unwrap();
        fs::write(data_dir.join("sub/a.txt"), b"A").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", data_dir.join("link")).unwrap();
        let note = dir.join("note");
        fs::write(&note, b"note").unwrap();

        let machine = NestedMachine::new()
            .binary("/bin/sh")
            .file(&note, "/etc/note")
            .dir(&data_dir, "/opt/data")
            .file_bytes("/l2/extra.sh", "echo x\n", 0o755)
            .script("echo hello-from-l1\n");
        let tree = machine.initramfs(&busybox, &mods).unwrap();
        let bytes = tree.write_to(Vec::new()).unwrap();
        let entries = parse_newc(&bytes).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("bin/busybox").data, b"fake busybox");
        assert_eq!(
            get("lib/modules/load.list").data,
            b"irqbypass.ko\nkvm.ko\nccp.ko\nkvm-amd.ko\n"
        );
        assert_eq!(get("lib/modules/kvm-amd.ko").data, b"module kvm-amd");
        let init = String::from_utf8(get("init").data.clone()).unwrap();
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert!(init.contains("L1-KVM-READY") && init.contains("L1-NO-KVM"));
        assert!(init.contains("echo \"L1-TEST-EXIT rc=$rc\""));
        assert!(init.contains("tmpfs /tmp") && init.contains("poweroff -f"));
        assert!(init.contains("sh /l1/script.sh") && !init.contains("cttyhack"));
        assert_eq!(get("init").permissions(), 0o755);
        assert_eq!(get("l1/script.sh").data, b"echo hello-from-l1\n");
        assert!(get("usr/local/bin/sh").is_file());
        assert!(entries
            .iter()
            .any(|e| e.name.contains("libc.so") && e.is_file() && !e.data.is_empty()));
        assert!(entries
            .iter()
            .any(|e| e.name.contains("ld-linux") && e.is_file()));
        assert_eq!(get("etc/note").data, b"note");
        assert_eq!(get("opt/data/sub/a.txt").data, b"A");
        assert!(get("opt/data/link").is_symlink());
        assert_eq!(get("l2/extra.sh").permissions(), 0o755);
        assert!(get("tmp").is_dir());

        let interactive = NestedMachine::new().interactive(true);
        assert!(interactive
            .init_script()
            .contains("setsid cttyhack sh /l1/script.sh"));
        assert_eq!(interactive.timeout, None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_carried_file_is_an_error() {
        let dir = scratch("missing");
        let busybox = dir.join("busybox");
        fs::write(&busybox, b"bb").unwrap();
        let machine = NestedMachine::new().file(dir.join("nope"), "/nope");
        assert!(matches!(
            machine.initramfs(&busybox, &[]),
            Err(TestkitError::Io { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn qemu_command_line() {
        let m = NestedMachine::new().memory("2G").cmdline("foo=1");
        let cmd = m.qemu_command(Path::new("/k"), Path::new("/i"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg,thread=single -smp 1 -cpu max -m 2G"));
        assert!(joined.contains("-serial stdio -no-reboot -kernel /k -initrd /i"));
        assert_eq!(
            args.last().map(String::as_str),
            Some("console=ttyS0 panic=-1 quiet loglevel=3 foo=1")
        );
        let i = NestedMachine::new().interactive(true);
        let joined: Vec<String> = i
            .qemu_command(Path::new("/k"), Path::new("/i"))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(joined.iter().any(|a| a.contains("signal=off")));
    }

    #[test]
    fn l1_exit_code_parsing() {
        let log = "boot\nL1-KVM-READY\nhello\nL1-TEST-EXIT rc=3\n[ 9.1] reboot: Power down\n";
        assert_eq!(parse_l1_rc(log), Some(3));
        assert_eq!(parse_l1_rc("L1-NO-KVM\n"), None);
        let out = NestedOutput {
            log: log.to_string(),
            l1_rc: parse_l1_rc(log),
            elapsed: Duration::ZERO,
        };
        assert!(out.kvm_ready() && !out.success());
        assert_eq!(out.tail(2), "L1-TEST-EXIT rc=3\n[ 9.1] reboot: Power down");
    }
}
