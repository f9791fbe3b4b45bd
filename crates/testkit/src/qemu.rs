//! Running QEMU for the L1 machine: finding a QEMU ≥ 10, and running it with a timeout while
//! collecting (and optionally echoing) its console output.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

/// The environment variable naming another QEMU binary.
pub const QEMU_ENV: &str = "PEARVISOR_QEMU";
/// The oldest QEMU major version whose TCG emulates SVM well enough for nested KVM.
pub const MIN_QEMU_MAJOR: u32 = 10;

/// Errors finding or running QEMU.
#[derive(Debug, Error)]
pub enum QemuError {
    #[error("{program} not found: install QEMU 10 with scripts/setup-host.sh")]
    Missing { program: String, source: io::Error },
    #[error(
        "{program} is QEMU {found}; the nested machine needs QEMU >= {MIN_QEMU_MAJOR} \
         (scripts/setup-host.sh installs it from bookworm-backports)"
    )]
    TooOld { program: String, found: String },
    #[error("cannot read a version from `{program} --version`: {output:?}")]
    BadVersion { program: String, output: String },
    #[error("cannot start {program}")]
    Spawn { program: String, source: io::Error },
    #[error("i/o error while QEMU ran")]
    Io(#[from] io::Error),
}

/// The QEMU binary: `$PEARVISOR_QEMU` or `qemu-system-x86_64` from PATH.
pub fn qemu_program() -> PathBuf {
    std::env::var_os(QEMU_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// Parses "QEMU emulator version 10.0.2 (Debian ...)" into (10, 0, 2).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let micro = parts.next().flatten().unwrap_or(0);
    Some((major, minor, micro))
}

/// Checks that `program` runs and is QEMU ≥ [`MIN_QEMU_MAJOR`]; returns its version.
pub fn check_qemu(program: &std::path::Path) -> Result<(u32, u32, u32), QemuError> {
    let name = program.display().to_string();
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| QemuError::Missing {
            program: name.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = parse_version(&text).ok_or_else(|| QemuError::BadVersion {
        program: name.clone(),
        output: text.lines().next().unwrap_or("").to_string(),
    })?;
    if version.0 < MIN_QEMU_MAJOR {
        return Err(QemuError::TooOld {
            program: name,
            found: format!("{}.{}.{}", version.0, version.1, version.2),
        });
    }
    Ok(version)
}

/// Where QEMU's console output goes besides the collected log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Only collected.
    None,
    /// Also copied to our stderr as it arrives.
    Stderr,
    /// Also copied to our stdout as it arrives (interactive use).
    Stdout,
}

/// The outcome of [`run_collecting`].
#[derive(Debug)]
pub struct Finished {
    /// stdout and stderr, interleaved as they arrived, '\r' removed.
    pub log: String,
    /// QEMU's exit status (after a timeout: the status of the killed process).
    pub status: ExitStatus,
    /// Whether QEMU was killed at the timeout.
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// A running process whose stdout and stderr are being collected (see
/// [`spawn_collecting`]): its output so far can be read while it runs. Killed
/// when dropped unless it has finished.
#[derive(Debug)]
pub struct Collecting {
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    start: Instant,
    done: bool,
}

impl Collecting {
    /// Everything printed so far, '\r' removed.
    pub fn log(&self) -> String {
        let bytes = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// Time since the process started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        Ok(self.child.try_wait()?)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it exits, or kills it once `timeout` has passed since it
    /// started; then collects the rest of its output.
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<Finished, QemuError> {
        let (status, timed_out) = wait_with_timeout(&mut self.child, timeout, self.start)?;
        self.done = true;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(Finished {
            log: self.log(),
            status,
            timed_out,
            elapsed: self.start.elapsed(),
        })
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns `cmd` with stdout and stderr piped (stdin as configured by the
/// caller) and collects its output as it comes.
pub fn spawn_collecting(mut cmd: Command, echo: Echo) -> Result<Collecting, QemuError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    kill_with_parent(&mut cmd);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|source| QemuError::Spawn { program, source })?;
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, Arc::clone(&log), echo));
    }
    if let Some(err) = child.stderr.take() {
        let echo_err = if echo == Echo::None {
            Echo::None
        } else {
            Echo::Stderr
        };
        readers.push(spawn_reader(err, Arc::clone(&log), echo_err));
    }
    Ok(Collecting {
        child,
        log,
        readers,
        start,
        done: false,
    })
}

/// Spawns `cmd` with stdout and stderr piped (stdin as configured by the caller), collects its
/// output, and kills it when `timeout` passes.
pub fn run_collecting(
    cmd: Command,
    timeout: Option<Duration>,
    echo: Echo,
) -> Result<Finished, QemuError> {
    spawn_collecting(cmd, echo)?.finish(timeout)
}

fn wait_with_timeout(
    child: &mut Child,
    timeout: Option<Duration>,
    start: Instant,
) -> Result<(ExitStatus, bool), QemuError> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            let _ = child.kill();
            return Ok((child.wait()?, true));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    mut src: R,
    log: Arc<Mutex<Vec<u8>>>,
    echo: Echo,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if let Ok(mut l) = log.lock() {
                l.extend_from_slice(&buf[..n]);
            }
            match echo {
                Echo::None => {}
                Echo::Stderr => {
                    let mut e = io::stderr().lock();
                    let _ = e.write_all(&buf[..n]);
                    let _ = e.flush();
                }
                Echo::Stdout => {
                    let mut o = io::stdout().lock();
                    let _ = o.write_all(&buf[..n]);
                    let _ = o.flush();
                }
            }
        }
    })
}

/// Makes the kernel kill QEMU when the thread that started it dies, so that an aborted test
/// run leaves no emulator spinning.
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)"),
            Some((7, 2, 19))
        );
        assert_eq!(
            parse_version("QEMU emulator version 9.2.0-rc1"),
            Some((9, 2, 0))
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn collects_output_and_times_out() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo out; echo err >&2; printf 'a\\r\\n'"]);
        let done = run_collecting(cmd, Some(Duration::from_secs(20)), Echo::None).unwrap();
        assert!(done.status.success());
        assert!(!done.timed_out);
        assert!(done.log.contains("out\n") && done.log.contains("err\n"));
        assert!(done.log.contains("a\n") && !done.log.contains('\r'));

        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let done = run_collecting(cmd, Some(Duration::from_millis(300)), Echo::None).unwrap();
        assert!(done.timed_out);
        assert!(done.log.contains("started"));
        assert!(done.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn output_can_be_read_while_it_runs_and_drop_kills() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo first; exec sleep 30"]);
        let mut run = spawn_collecting(cmd, Echo::None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !run.log().contains("first\n") {
            assert!(Instant::now() < deadline, "no output while running");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(run.try_wait().unwrap().is_none(), "still running");
        let pid = run.id();
        drop(run);
        // SAFETY: kill(2) with signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "dropping kills and reaps the process");
    }
}
