//! Lifecycle under stress (issue 6), with the bare-metal test guest
//! (`mode=ticker`: `TICK n` on the serial console every few milliseconds)
//! on the host's /dev/kvm (kvm_pvm is enough), driven through the REST API:
//! 1,000 pause/resume cycles, then 100 concurrent clients (queries, the
//! host's GPU inventory, pause and resume). No request may
//! fail (HTTP errors other than the documented 409 for an illegal
//! transition, transport errors, timeouts), the VM must never get stuck, and
//! a paused guest must print nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use pv_api::client::Client;

const PEARVISOR: &str = env!("CARGO_BIN_EXE_pearvisor");
const CYCLES: u32 = 1000;
const CLIENTS: u32 = 100;

struct Vm {
    child: Child,
    api: Client,
    serial: PathBuf,
    dir: PathBuf,
}

impl Vm {
    fn boot(name: &str) -> Vm {
        pv_testkit::baremetal::require_kvm();
        let dir = pv_testkit::baremetal::scratch_dir(name);
        let elf = pv_testkit::baremetal::build(&dir).unwrap_or_else(|e| panic!("{e}"));
        let serial = dir.join("serial.txt");
        let socket = dir.join("api.sock");
        let child = Command::new(PEARVISOR)
            .args(["run", "--skip-host-check", "--kernel"])
            .arg(&elf)
            .args([
                "--cmdline",
                "mode=ticker ms=2",
                "--memory",
                "64M",
                "--cpus",
                "2",
            ])
            .arg("--serial")
            .arg(format!("file={}", serial.display()))
            .arg("--api-socket")
            .arg(&socket)
            .args(["--shutdown-grace", "200ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pearvisor");
        let api = Client::new(&socket).timeout(Duration::from_secs(10));
        let vm = Vm {
            child,
            api,
            serial,
            dir,
        };
        vm.wait_ticks(3, Duration::from_secs(20));
        vm
    }

    fn console_len(&self) -> u64 {
        std::fs::metadata(&self.serial)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Waits until the console grew by `n` lines' worth of ticks.
    fn wait_ticks(&self, n: usize, timeout: Duration) {
        let start = self.ticks();
        let deadline = Instant::now() + timeout;
        while self.ticks() < start + n {
            assert!(
                Instant::now() < deadline,
                "the guest stopped ticking (at {} ticks)",
                self.ticks()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn ticks(&self) -> usize {
        std::fs::read_to_string(&self.serial)
            .map(|s| s.matches("TICK ").count())
            .unwrap_or(0)
    }

    fn put(&self, action: &str) {
        let r = self
            .api
            .put(&format!("/api/v1/vm.{action}"), None)
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        assert!(r.is_success(), "{action}: {} {}", r.status, r.text());
    }

    fn state(&self) -> String {
        let r = self.api.get("/api/v1/vm.info").expect("info");
        r.json().unwrap()["state"].as_str().unwrap().to_string()
    }

    /// Shuts the VM down through the API; pearvisor must exit 0.
    fn shutdown(mut self) {
        self.put("shutdown");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "pearvisor did not exit after shutdown"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "pearvisor exited with {status}");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_thousand_pause_resume_cycles_leave_a_running_guest() {
    let vm = Vm::boot("pause-cycles");
    let started = Instant::now();
    for cycle in 0..CYCLES {
        vm.put("pause");
        if cycle % 100 == 0 {
            // Paused means silent: nothing reaches the console.
            assert_eq!(vm.state(), "Paused", "cycle {cycle}");
            let before = vm.console_len();
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(
                vm.console_len(),
                before,
                "cycle {cycle}: a paused guest printed"
            );
        }
        vm.put("resume");
        if cycle % 100 == 0 {
            assert_eq!(vm.state(), "Running", "cycle {cycle}");
            vm.wait_ticks(2, Duration::from_secs(10));
        }
    }
    let elapsed = started.elapsed();
    // Still running and still answering.
    assert_eq!(vm.state(), "Running");
    vm.wait_ticks(5, Duration::from_secs(10));
    eprintln!(
        "lifecycle: {CYCLES} pause/resume cycles in {:.2} s ({:.0} µs a cycle)",
        elapsed.as_secs_f64(),
        elapsed.as_micros() as f64 / f64::from(CYCLES)
    );
    vm.shutdown();
}

#[test]
fn a_hundred_concurrent_clients_get_answers_and_the_guest_keeps_running() {
    let vm = Vm::boot("clients");
    let socket = vm.api.socket().to_path_buf();
    let answered = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(CLIENTS as usize));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let socket = socket.clone();
            let answered = answered.clone();
            let conflicts = conflicts.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let api = Client::new(&socket).timeout(Duration::from_secs(30));
                barrier.wait();
                for round in 0..10u32 {
                    // Queries from everyone; pause/resume from a few, so
                    // illegal transitions (409) happen and must be clean.
                    let (method, path) = match (i + round) % 10 {
                        0 if i % 10 == 0 => ("PUT", "/api/v1/vm.pause"),
                        1 if i % 10 == 0 => ("PUT", "/api/v1/vm.resume"),
                        // The host's GPU inventory (Vulkan, NVML) runs
                        // outside the API thread's syscall filter.
                        2 if i % 25 == 0 => ("GET", "/api/v1/vmm.gpus"),
                        0..=3 => ("GET", "/api/v1/vm.info"),
                        4..=5 => ("GET", "/api/v1/vm.counters"),
                        6 => ("GET", "/api/v1/vm.metrics"),
                        _ => ("GET", "/api/v1/vmm.ping"),
                    };
                    let r = if method == "GET" {
                        api.get(path)
                    } else {
                        api.put(path, None)
                    }
                    .map_err(|e| format!("client {i} {method} {path}: {e}"))?;
                    match r.status {
                        200..=299 => {}
                        409 if method == "PUT" => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        s => return Err(format!("client {i} {method} {path}: {s} {}", r.text())),
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|t| t.join().expect("client thread").err())
        .collect();
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed requests:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(answered.load(Ordering::Relaxed), u64::from(CLIENTS) * 10);
    // Whatever the pausers left behind, the VM answers and runs on resume.
    if vm.state() == "Paused" {
        vm.put("resume");
    }
    assert_eq!(vm.state(), "Running");
    vm.wait_ticks(5, Duration::from_secs(10));
    eprintln!(
        "lifecycle: {CLIENTS} concurrent clients, {} requests ({} clean 409s) in {:.2} s",
        answered.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
    vm.shutdown();
}
