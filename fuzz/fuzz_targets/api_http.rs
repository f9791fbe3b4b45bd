//! The REST API server as a local client reaches it: the input's bytes are
//! written raw to a fresh connection on the server's Unix socket (in a few
//! writes, cut where a hash of the input says), the write side is shut
//! down, and whatever comes back is read (at most 2 s: a hang is a crash).
//! One server runs for the whole process, around a fake machine that does
//! what it is told and a fake display; after each input the VM is put back
//! to Running (resumed, its reboot done, or a new controller and server
//! after a shutdown) so inputs do not depend on each other.
//!
//! Every response must start with `HTTP/1.1 ` (`HTTP/1.0 ` to an HTTP/1.0
//! request) and a 3-digit status, and
//! pipelined responses must each be whole (as their Content-Length says);
//! none may be 500 (with these fakes nothing fails, so a 500 can only be
//! the server's own fault); afterwards `GET /api/v1/vm.info` on a new
//! connection still answers 200.
//!
//! `PV_FUZZ_SHOW=1` prints each answer (to see what an input gets).

#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pv_api::{
    ApiServer, GpuInventory, ResizeError, Resizes, ScreenshotError, Screenshots, PNG_SIGNATURE,
};
use pv_vmm::config::VmConfig;
use pv_vmm::control::{MachineOps, VmController, VmState};
use pv_vmm::vm::{VcpuMetrics, VmError, VmExitReason};
use serde_json::{json, Value};

/// How long a response may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `vm.shutdown` waits for the fake guest (which obeys at once).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(50);
/// The request that must still work after every input.
const HEALTH: &[u8] =
    b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// A machine that obeys: the power button powers it off.
struct FakeMachine {
    stopped: Mutex<Option<VmExitReason>>,
    metrics: Vec<Arc<VcpuMetrics>>,
}

impl FakeMachine {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            stopped: Mutex::new(None),
            metrics: vec![Arc::default(), Arc::default()],
        })
    }
}

impl MachineOps for FakeMachine {
    fn pause(&self) -> Result<(), VmError> {
        Ok(())
    }
    fn resume(&self) -> Result<(), VmError> {
        Ok(())
    }
    fn press_power_button(&self) -> std::io::Result<()> {
        self.stop(VmExitReason::PowerOff);
        Ok(())
    }
    fn stop(&self, reason: VmExitReason) {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
    }
    fn stopped(&self) -> bool {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
    fn vcpu_metrics(&self) -> Vec<Arc<VcpuMetrics>> {
        self.metrics.clone()
    }
    fn device_counters(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "virtio-blk-0".into(),
            json!({"read_bytes": 4096, "write_bytes": 512, "interrupts": 9, "notifications": 10}),
        );
        m.insert(
            "virtio-rng".into(),
            json!({"bytes": 64, "requests": 2, "interrupts": 2, "notifications": 2}),
        );
        m
    }
}

fn config() -> VmConfig {
    serde_json::from_value(json!({
        "kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0",
        "cpus": 2, "memory": 536870912u64,
        "disks": [{"path": "/var/lib/root.img", "readonly": true, "id": "root"}],
        "rng": true
    }))
    .expect("a VM config")
}

fn gpus() -> GpuInventory {
    Arc::new(|| {
        Ok(
            json!({"gpus": [{"index": 0, "name": "llvmpipe", "venus_ready": false}],
                  "loader_version": "1.3.239", "notes": []}),
        )
    })
}

/// Display 0 shows a picture, 1 nothing yet; no others.
fn screenshots() -> Screenshots {
    Arc::new(|display| match display {
        0 => Ok([&PNG_SIGNATURE[..], b"\0\0\0\rIHDR"].concat()),
        1 => Err(ScreenshotError::NothingShown(
            "display 1 shows nothing yet".into(),
        )),
        n => Err(ScreenshotError::NoSuchDisplay(format!(
            "display {n} does not exist (the VM has 2)"
        ))),
    })
}

/// Display 0 takes any size, 1 has no GPU to ask, 2 takes at most 4096.
fn resizes() -> Resizes {
    Arc::new(|display, width, height| match display {
        0 => Ok(()),
        1 => Err(ResizeError::Unavailable("no GPU is connected".into())),
        2 if width.max(height) > 4096 => Err(ResizeError::BadSize("at most 4096".into())),
        2 => Ok(()),
        n => Err(ResizeError::NoSuchDisplay(format!(
            "display {n} does not exist (the VM has 3)"
        ))),
    })
}

/// The server and the VM behind it.
struct Api {
    path: PathBuf,
    controller: Arc<VmController>,
    server: Option<ApiServer>,
}

impl Api {
    fn start(path: PathBuf) -> Self {
        let controller = VmController::new(config(), SHUTDOWN_GRACE);
        controller.attach(FakeMachine::new());
        let server = ApiServer::start(
            &path,
            controller.clone(),
            gpus(),
            Some(screenshots()),
            Some(resizes()),
        )
        .expect("start the API server");
        Self {
            path,
            controller,
            server: Some(server),
        }
    }

    /// Back to Running, as the binary's loop would (or a new VM after a
    /// shutdown).
    fn recover(&mut self) {
        if self.controller.take_reboot_request() {
            self.controller.detach(false);
            self.controller.attach(FakeMachine::new());
        }
        match self.controller.state() {
            VmState::Running => {}
            VmState::Paused => self.controller.resume().expect("resume"),
            VmState::Created | VmState::Shutdown => {
                if let Some(server) = self.server.take() {
                    server.stop();
                }
                *self = Api::start(self.path.clone());
            }
        }
    }
}

extern "C" fn remove_socket_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

static DIR: OnceLock<PathBuf> = OnceLock::new();

fn api() -> &'static Mutex<Api> {
    static API: OnceLock<Mutex<Api>> = OnceLock::new();
    API.get_or_init(|| {
        // A peer that closes early must not kill the process (libFuzzer's
        // main does not ignore SIGPIPE as Rust's does).
        // SAFETY: setting a signal to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = std::env::temp_dir().join(format!("pv-fuzz-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket directory");
        let _ = DIR.set(dir.clone());
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(remove_socket_dir) };
        Mutex::new(Api::start(dir.join("api.sock")))
    })
}

/// FNV-1a, to cut the input into writes.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Sends `data` on a new connection (cut into 1 to 4 writes), half-closes
/// when `half_close`, and reads until the server closes.
fn exchange(api: &Api, data: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(&api.path).expect("connect to the API socket");
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let h = hash(data);
    let mut cuts: Vec<usize> = (0..h % 4)
        .map(|i| ((h >> (16 * i + 8)) & 0xffff) as usize % (data.len() + 1))
        .collect();
    cuts.push(data.len());
    cuts.sort_unstable();
    let mut at = 0;
    for cut in cuts {
        // The server may close before reading everything (a bad request).
        if s.write_all(&data[at..cut]).is_err() {
            break;
        }
        at = cut;
        std::thread::yield_now();
    }
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no end of the answer within {ANSWER_TIMEOUT:?} (got {} bytes) to {:?}",
                    out.len(),
                    String::from_utf8_lossy(&data[..data.len().min(300)])
                );
            }
            Err(e) => panic!("reading the answer: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the answer took over {ANSWER_TIMEOUT:?}"
        );
    }
    out
}

/// The statuses of the pipelined responses in `raw`, each checked whole.
fn statuses(raw: &[u8]) -> Result<Vec<u16>, String> {
    let mut rest = raw;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let line = String::from_utf8_lossy(&rest[..rest.len().min(40)]).into_owned();
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        let status = rest
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| rest.strip_prefix(b"HTTP/1.0 "))
            .and_then(|r| r.get(..4))
            .filter(|s| s[..3].iter().all(u8::is_ascii_digit) && s[3] == b' ')
            .map(|s| (s[0] - b'0') as u16 * 100 + (s[1] - b'0') as u16 * 10 + (s[2] - b'0') as u16)
            .ok_or(format!("not an HTTP/1.x status line: {line:?}"))?;
        if !(100..=599).contains(&status) {
            return Err(format!("status {status}"));
        }
        out.push(status);
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(format!("a response head without its end: {line:?}"))?
            + 4;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("content-length {v:?}: {e}"))
            })
            .transpose()?;
        let body = match length {
            Some(n) => n,
            None if status < 200 || status == 204 || status == 304 => 0,
            // Delimited by the end of the connection.
            None => rest.len() - head_end,
        };
        if rest.len() - head_end < body {
            return Err(format!(
                "a {status} response with {} of its {body} body bytes",
                rest.len() - head_end
            ));
        }
        rest = &rest[head_end + body..];
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let mut api = api().lock().unwrap_or_else(|e| e.into_inner());
    let answer = exchange(&api, data, true);
    let seen = statuses(&answer).unwrap_or_else(|e| {
        panic!(
            "{e}\nanswer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(600)])
        )
    });
    assert!(
        !seen.contains(&500),
        "500 from a server whose machine and display never fail: {seen:?}\nanswer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(600)])
    );
    if std::env::var_os("PV_FUZZ_SHOW").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&answer));
    }
    let health = exchange(&api, HEALTH, false);
    assert_eq!(
        statuses(&health).ok().as_deref(),
        Some(&[200][..]),
        "GET vm.info after the input: {:?}",
        String::from_utf8_lossy(&health)
    );
    api.recover();
});
