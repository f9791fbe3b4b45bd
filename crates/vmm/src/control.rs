//! The VM's lifecycle as the control plane sees it.
//!
//! A [`VmController`] outlives the machines it drives: the binary builds a
//! machine, [`VmController::attach`]es its handle, runs it, and on reboot
//! builds the next one. Requests (pause, resume, reboot, power button,
//! shutdown) follow a small state machine; an illegal transition is a
//! [`ControlError::Conflict`], which the REST API answers with 409.
//!
//! ```text
//!   Created --boot--> Running <--pause/resume--> Paused
//!      \                 |  \                     |
//!       \                |   reboot (new machine, stays Running)
//!        +-------------> Shutdown <---------------+
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::vm::{MachineHandle, VcpuMetrics, VmError, VmExitReason};

/// What the controller needs of a running machine ([`MachineHandle`]; a fake
/// in tests).
pub trait MachineOps: Send + Sync {
    fn pause(&self) -> Result<(), VmError>;
    fn resume(&self) -> Result<(), VmError>;
    fn press_power_button(&self) -> std::io::Result<()>;
    fn stop(&self, reason: VmExitReason);
    fn stopped(&self) -> bool;
    fn vcpu_metrics(&self) -> Vec<Arc<VcpuMetrics>>;
    fn device_counters(&self) -> serde_json::Map<String, serde_json::Value>;
}

impl MachineOps for MachineHandle {
    fn pause(&self) -> Result<(), VmError> {
        MachineHandle::pause(self)
    }
    fn resume(&self) -> Result<(), VmError> {
        MachineHandle::resume(self)
    }
    fn press_power_button(&self) -> std::io::Result<()> {
        MachineHandle::press_power_button(self)
    }
    fn stop(&self, reason: VmExitReason) {
        MachineHandle::stop(self, reason)
    }
    fn stopped(&self) -> bool {
        MachineHandle::stopped(self)
    }
    fn vcpu_metrics(&self) -> Vec<Arc<VcpuMetrics>> {
        MachineHandle::vcpu_metrics(self).to_vec()
    }
    fn device_counters(&self) -> serde_json::Map<String, serde_json::Value> {
        MachineHandle::device_counters(self)
    }
}

/// Lifecycle states, as reported by `vm.info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Paused,
    Shutdown,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Shutdown => "Shutdown",
        })
    }
}

/// Errors of lifecycle requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("cannot {action} the VM: it is {state}")]
    Conflict {
        action: &'static str,
        state: VmState,
    },
    #[error("cannot {action} the VM: {reason}")]
    Failed {
        action: &'static str,
        reason: String,
    },
}

/// What `vm.info` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    pub config: VmConfig,
    /// Since the first boot, in milliseconds (0 before it).
    pub uptime_ms: u64,
    /// Boots so far (reboots included).
    pub boots: u64,
    pub vcpus: u8,
    pub memory_bytes: u64,
}

struct Inner {
    state: VmState,
    machine: Option<Arc<dyn MachineOps>>,
    first_boot: Option<Instant>,
    boots: u64,
    reboot_requested: bool,
}

/// Drives the VM for the control plane. Shared with the API threads.
pub struct VmController {
    config: VmConfig,
    shutdown_grace: Duration,
    inner: Mutex<Inner>,
}

impl VmController {
    /// A controller in state Created. `shutdown_grace` is how long
    /// [`VmController::shutdown`] waits for the guest to power off.
    pub fn new(config: VmConfig, shutdown_grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            config,
            shutdown_grace,
            inner: Mutex::new(Inner {
                state: VmState::Created,
                machine: None,
                first_boot: None,
                boots: 0,
                reboot_requested: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A machine started (first boot or a reboot).
    pub fn attach(&self, machine: Arc<dyn MachineOps>) {
        let mut g = self.lock();
        if g.state == VmState::Shutdown {
            machine.stop(VmExitReason::Stopped);
            return;
        }
        g.first_boot.get_or_insert_with(Instant::now);
        g.boots += 1;
        g.state = VmState::Running;
        g.machine = Some(machine);
    }

    /// The machine stopped; `last` when no other boot follows.
    pub fn detach(&self, last: bool) {
        let mut g = self.lock();
        g.machine = None;
        if last {
            g.state = VmState::Shutdown;
        }
    }

    /// Whether a reboot was requested through the API (it restarts the
    /// guest even with `--no-reboot`); clears the request.
    pub fn take_reboot_request(&self) -> bool {
        std::mem::take(&mut self.lock().reboot_requested)
    }

    pub fn state(&self) -> VmState {
        self.lock().state
    }

    pub fn info(&self) -> VmInfo {
        let g = self.lock();
        VmInfo {
            state: g.state,
            config: self.config.clone(),
            uptime_ms: g.first_boot.map_or(0, |t| t.elapsed().as_millis() as u64),
            boots: g.boots,
            vcpus: self.config.cpus,
            memory_bytes: self.config.memory,
        }
    }

    fn running(g: &Inner, action: &'static str) -> Result<Arc<dyn MachineOps>, ControlError> {
        match (&g.machine, g.state) {
            (Some(m), VmState::Running | VmState::Paused) => Ok(m.clone()),
            (_, state) => Err(ControlError::Conflict { action, state }),
        }
    }

    /// Stops the vCPUs and the guest clock.
    pub fn pause(&self) -> Result<(), ControlError> {
        let mut g = self.lock();
        if g.state != VmState::Running {
            return Err(ControlError::Conflict {
                action: "pause",
                state: g.state,
            });
        }
        let m = Self::running(&g, "pause")?;
        m.pause().map_err(|e| ControlError::Failed {
            action: "pause",
            reason: e.to_string(),
        })?;
        g.state = VmState::Paused;
        Ok(())
    }

    /// Continues a paused VM.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut g = self.lock();
        if g.state != VmState::Paused {
            return Err(ControlError::Conflict {
                action: "resume",
                state: g.state,
            });
        }
        let m = Self::running(&g, "resume")?;
        m.resume().map_err(|e| ControlError::Failed {
            action: "resume",
            reason: e.to_string(),
        })?;
        g.state = VmState::Running;
        Ok(())
    }

    /// Resets the guest: a new machine boots (the binary's loop builds it).
    pub fn reboot(&self) -> Result<(), ControlError> {
        let mut g = self.lock();
        let m = Self::running(&g, "reboot")?;
        if g.state == VmState::Paused {
            let _ = m.resume();
            g.state = VmState::Running;
        }
        g.reboot_requested = true;
        m.stop(VmExitReason::Reset);
        Ok(())
    }

    /// Presses the ACPI power button; the guest decides what to do.
    pub fn power_button(&self) -> Result<(), ControlError> {
        let g = self.lock();
        if g.state != VmState::Running {
            return Err(ControlError::Conflict {
                action: "press the power button of",
                state: g.state,
            });
        }
        let m = Self::running(&g, "press the power button of")?;
        m.press_power_button().map_err(|e| ControlError::Failed {
            action: "press the power button of",
            reason: e.to_string(),
        })
    }

    /// Asks the guest to power off (power button) and, if it hasn't after
    /// the grace period, stops the VM. Returns when the VM is stopped.
    pub fn shutdown(&self) -> Result<(), ControlError> {
        let m = {
            let mut g = self.lock();
            let m = Self::running(&g, "shut down")?;
            if g.state == VmState::Paused {
                let _ = m.resume();
                g.state = VmState::Running;
            }
            m
        };
        let _ = m.press_power_button();
        let deadline = Instant::now() + self.shutdown_grace;
        while !m.stopped() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !m.stopped() {
            log::info!(
                "guest did not power off within {:?}; stopping it",
                self.shutdown_grace
            );
            m.stop(VmExitReason::Stopped);
        }
        let mut g = self.lock();
        g.state = VmState::Shutdown;
        Ok(())
    }

    /// Counters: uptime, memory, per-vCPU exits by reason, per-device I/O.
    pub fn counters(&self) -> serde_json::Value {
        let g = self.lock();
        let mut vcpus = Vec::new();
        let mut devices = serde_json::Map::new();
        if let Some(m) = &g.machine {
            for (id, v) in m.vcpu_metrics().iter().enumerate() {
                let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                vcpus.push(serde_json::json!({
                    "id": id,
                    "exits": {
                        "total": v.total(),
                        "io_in": get(&v.io_in),
                        "io_out": get(&v.io_out),
                        "mmio_read": get(&v.mmio_read),
                        "mmio_write": get(&v.mmio_write),
                        "interrupted": get(&v.interrupted),
                        "unclaimed": get(&v.unclaimed),
                    }
                }));
            }
            devices = m.device_counters();
        }
        serde_json::json!({
            "state": g.state,
            "uptime_ms": g.first_boot.map_or(0, |t| t.elapsed().as_millis() as u64),
            "boots": g.boots,
            "memory_bytes": self.config.memory,
            "vcpus": vcpus,
            "devices": devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A machine that records what it was asked; `obeys_button` makes it
    /// power off when the button is pressed.
    #[derive(Default)]
    struct FakeMachine {
        paused: AtomicBool,
        stopped: Mutex<Option<VmExitReason>>,
        button_presses: std::sync::atomic::AtomicU32,
        obeys_button: bool,
        metrics: Vec<Arc<VcpuMetrics>>,
    }

    impl MachineOps for FakeMachine {
        fn pause(&self) -> Result<(), VmError> {
            self.paused.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn resume(&self) -> Result<(), VmError> {
            self.paused.store(false, Ordering::SeqCst);
            Ok(())
        }
        fn press_power_button(&self) -> std::io::Result<()> {
            self.button_presses.fetch_add(1, Ordering::SeqCst);
            if self.obeys_button {
                self.stop(VmExitReason::PowerOff);
            }
            Ok(())
        }
        fn stop(&self, reason: VmExitReason) {
            self.stopped.lock().unwrap().get_or_insert(reason);
        }
        fn stopped(&self) -> bool {
            self.stopped.lock().unwrap().is_some()
        }
        fn vcpu_metrics(&self) -> Vec<Arc<VcpuMetrics>> {
            self.metrics.clone()
        }
        fn device_counters(&self) -> serde_json::Map<String, serde_json::Value> {
            let mut m = serde_json::Map::new();
            m.insert(
                "virtio-blk-0".into(),
                serde_json::json!({"read_bytes": 512}),
            );
            m
        }
    }

    fn booted(obeys_button: bool) -> (Arc<VmController>, Arc<FakeMachine>) {
        let c = controller();
        let m = Arc::new(FakeMachine {
            obeys_button,
            metrics: vec![Arc::default(), Arc::default()],
            ..Default::default()
        });
        c.attach(m.clone());
        (c, m)
    }

    #[test]
    fn pause_resume_and_illegal_transitions() {
        let (c, m) = booted(true);
        assert_eq!(c.state(), VmState::Running);
        assert!(matches!(
            c.resume(),
            Err(ControlError::Conflict {
                state: VmState::Running,
                ..
            })
        ));
        c.pause().unwrap();
        assert!(m.paused.load(Ordering::SeqCst));
        assert_eq!(c.state(), VmState::Paused);
        assert!(matches!(
            c.pause(),
            Err(ControlError::Conflict {
                state: VmState::Paused,
                ..
            })
        ));
        assert!(
            c.power_button().is_err(),
            "a paused guest can't see the button"
        );
        c.resume().unwrap();
        assert!(!m.paused.load(Ordering::SeqCst));
        assert_eq!(c.state(), VmState::Running);
        let info = c.info();
        assert_eq!((info.boots, info.vcpus), (1, 1));
    }

    #[test]
    fn reboot_resumes_a_paused_vm_and_marks_the_request() {
        let (c, m) = booted(true);
        c.pause().unwrap();
        c.reboot().unwrap();
        assert_eq!(*m.stopped.lock().unwrap(), Some(VmExitReason::Reset));
        assert!(!m.paused.load(Ordering::SeqCst));
        assert!(c.take_reboot_request());
        assert!(!c.take_reboot_request(), "the request is consumed");
        c.detach(false);
        c.attach(Arc::new(FakeMachine::default()));
        assert_eq!((c.state(), c.info().boots), (VmState::Running, 2));
    }

    #[test]
    fn shutdown_uses_the_button_then_stops_after_the_grace_period() {
        let (c, m) = booted(true);
        c.shutdown().unwrap();
        assert_eq!(*m.stopped.lock().unwrap(), Some(VmExitReason::PowerOff));
        assert_eq!(c.state(), VmState::Shutdown);
        assert!(matches!(
            c.reboot(),
            Err(ControlError::Conflict {
                state: VmState::Shutdown,
                ..
            })
        ));

        let (c, m) = booted(false);
        let t = Instant::now();
        c.shutdown().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(m.button_presses.load(Ordering::SeqCst), 1);
        assert_eq!(*m.stopped.lock().unwrap(), Some(VmExitReason::Stopped));
        assert_eq!(c.state(), VmState::Shutdown);
    }

    #[test]
    fn counters_list_vcpus_and_devices() {
        let (c, m) = booted(true);
        m.metrics[1].io_out.fetch_add(3, Ordering::Relaxed);
        let v = c.counters();
        assert_eq!(v["state"], "Running");
        assert_eq!(v["vcpus"][1]["exits"]["io_out"], 3);
        assert_eq!(v["vcpus"][1]["exits"]["total"], 3);
        assert_eq!(v["devices"]["virtio-blk-0"]["read_bytes"], 512);
    }

    fn controller() -> Arc<VmController> {
        let config: VmConfig = serde_json::from_str(r#"{"kernel":"/k"}"#).unwrap();
        VmController::new(config, Duration::from_millis(50))
    }

    #[test]
    fn requests_before_boot_and_after_shutdown_conflict() {
        let c = controller();
        assert_eq!(c.state(), VmState::Created);
        for (res, action) in [
            (c.pause(), "pause"),
            (c.resume(), "resume"),
            (c.reboot(), "reboot"),
            (c.shutdown(), "shut down"),
        ] {
            assert_eq!(
                res,
                Err(ControlError::Conflict {
                    action,
                    state: VmState::Created
                })
            );
        }
        c.detach(true);
        assert_eq!(c.state(), VmState::Shutdown);
        let e = c.pause().unwrap_err();
        assert_eq!(e.to_string(), "cannot pause the VM: it is Shutdown");
        let info = c.info();
        assert_eq!(
            (info.state, info.boots, info.uptime_ms),
            (VmState::Shutdown, 0, 0)
        );
        assert_eq!(c.counters()["vcpus"], serde_json::json!([]));
    }
}
