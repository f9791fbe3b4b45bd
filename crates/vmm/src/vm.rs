//! Builds a machine from a [`VmConfig`] and runs it until the guest powers
//! off, resets or dies.
//!
//! Threads: one per vCPU (`vcpu-N`), one per active virtio device (named by
//! the device), and the caller's thread, which waits in [`Machine::wait`].
//! vCPU threads are stopped by a flag and a real-time signal that kicks them
//! out of `KVM_RUN`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use pv_devices::bus::{Bus, BusError};
use pv_devices::pci::{PciConfigIo, PciConfigMmio, PciSegment};
use pv_devices::platform::{AcpiPm, I8042Reset, PlatformEvents, PlatformRequest, PowerButton};
use pv_devices::serial::SerialPort;
use pv_devices::virtio::block::{Block, BlockMetrics};
use pv_devices::virtio::input::{InputDevice, InputHandle, InputKind, LayoutTap, TabletLayout};
use pv_devices::virtio::pci::{ShmBar, VirtioPciDevice, BAR_SIZE};
use pv_devices::virtio::rng::Rng;
use pv_devices::virtio::shm::MAX_SHM_BAR_SIZE;
use pv_devices::virtio::VirtioDevice;
use pv_display::{Display, InputEvent, InputSink, ResizeSink, ScanoutSink};
use pv_gpu::virtio_gpu::{DisplayControl, VirtioGpu};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::{create_acpi_tables, AcpiConfig, AcpiError};
use crate::arch::x86_64::boot::{load_kernel, BootError, BootSpec, KernelEntry};
use crate::arch::x86_64::cpu::{configure_vcpu, write_boot_tables, CpuError};
use crate::arch::x86_64::layout::*;
use crate::config::VmConfig;
use crate::hypervisor::kvm::KvmHypervisor;
use crate::hypervisor::{HypervisorError, IoEventAddress, Vcpu, VcpuExit, Vm};
use crate::interrupts::{legacy_irq, VmMsiRouter};
use crate::memory::{create_guest_memory, ram_top, GuestMemory, MemoryError};
use crate::shm::{MemorySlots, VmShmMapper};

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("cannot build ACPI tables")]
    Acpi(#[from] AcpiError),
    #[error("cannot create device {name}")]
    Device {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("device address conflict")]
    Bus(#[from] BusError),
    #[error("cannot create an eventfd or thread")]
    Io(#[from] std::io::Error),
    #[error("the vCPUs did not stop within 5 s")]
    Pause,
}

/// Why the machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset.
    Reset,
    /// The guest died (triple fault) or the VMM hit an unrecoverable error.
    Crash(String),
    /// The VMM was asked to stop.
    Stopped,
}

/// The first reason to stop wins; waiters are woken through an eventfd.
pub struct ExitSignal {
    reason: Mutex<Option<VmExitReason>>,
    fd: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            fd: EventFd::new(0)?,
        })
    }

    /// Records `reason` unless one was recorded already.
    pub fn set(&self, reason: VmExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            log::debug!("vm exit: {reason:?}");
            *r = Some(reason);
            let _ = self.fd.write(1);
        }
    }

    /// Whether a reason was set.
    pub fn is_set(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Blocks until a reason is set.
    pub fn wait(&self) -> VmExitReason {
        loop {
            if let Some(r) = self
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return r;
            }
            let _ = self.fd.read();
        }
    }
}

impl PlatformEvents for ExitSignal {
    fn request(&self, req: PlatformRequest) {
        self.set(match req {
            PlatformRequest::PowerOff => VmExitReason::PowerOff,
            PlatformRequest::Reset => VmExitReason::Reset,
        });
    }
}

/// Where the serial console's input comes from: the VMM's stdin thread
/// writes into whichever port is current (it changes when the guest reboots).
#[derive(Clone, Default)]
pub struct ConsoleInput(Arc<Mutex<Option<Arc<Mutex<SerialPort>>>>>);

impl ConsoleInput {
    /// Sends bytes to the guest's serial port, if a machine is running.
    pub fn send(&self, bytes: &[u8]) {
        if let Some(port) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            port.lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes);
        }
    }

    fn attach(&self, port: Option<Arc<Mutex<SerialPort>>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = port;
    }
}

/// A built machine.
pub struct Machine {
    vm: Arc<dyn Vm>,
    mem: Arc<GuestMemory>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    vcpus: Vec<Box<dyn Vcpu>>,
    entry: KernelEntry,
    exit: Arc<ExitSignal>,
    console: ConsoleInput,
    power_button: Arc<PowerButton>,
    block_metrics: Vec<Arc<BlockMetrics>>,
    vcpu_metrics: Vec<Arc<VcpuMetrics>>,
    vcpu_control: Arc<VcpuControl>,
    pci_devices: Vec<Arc<Mutex<VirtioPciDevice>>>,
    input: Option<Arc<InputRouter>>,
    /// Keeps the display's size requests going to this machine's GPU.
    _resizer: Option<ResizerLink>,
}

/// Where a GPU's scanouts go, and whether keyboard and mouse come back
/// (virtio-input devices are added then).
pub struct DisplaySetup {
    pub sink: Arc<dyn ScanoutSink>,
    pub with_input: bool,
    /// The display whose size requests (a window or viewer the user
    /// resized: [`Display::request_size`]) go to the guest through this
    /// machine's GPU: connected when the machine is built, disconnected
    /// when it goes, so after a reboot they reach the new device. None:
    /// the guest's display size is only its own.
    pub resizes: Option<Arc<Display>>,
}

/// A GPU connected to a display's size requests; disconnected when
/// dropped (with the machine, or a build that failed after it).
pub struct ResizerLink {
    display: Arc<Display>,
    resizer: Arc<dyn ResizeSink>,
}

impl ResizerLink {
    /// Connects `control` (a GPU's) to `display`'s size requests.
    pub fn connect(display: Arc<Display>, control: DisplayControl) -> Self {
        let resizer: Arc<dyn ResizeSink> = Arc::new(control);
        display.connect_resizer(Some(resizer.clone()));
        Self { display, resizer }
    }
}

impl Drop for ResizerLink {
    fn drop(&mut self) {
        self.display.disconnect_resizer(&self.resizer);
    }
}

/// Sends viewer input to the keyboard and the tablet (each takes its own;
/// the tablet maps pointer positions through the scanouts' layout).
pub struct InputRouter(Vec<InputHandle>);

impl InputSink for InputRouter {
    fn send(&self, event: InputEvent) {
        for h in &self.0 {
            h.send(event);
        }
    }
}

/// Stops, pauses and resumes the vCPU threads of a machine.
///
/// A paused vCPU thread parks on a condition variable outside `KVM_RUN`;
/// threads are kicked out of the guest with a real-time signal, repeatedly,
/// until they all report parked (a signal landing just before `KVM_RUN`
/// would otherwise be missed).
#[derive(Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause_requested: AtomicBool,
    paused: Mutex<bool>,
    cond: std::sync::Condvar,
    parked: std::sync::atomic::AtomicUsize,
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl VcpuControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn register_thread(&self, thread: libc::pthread_t) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
    }

    fn kick_all(&self) {
        for &t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // SAFETY: threads are unregistered before they are joined (see
            // `Machine::run`), so `t` names a live thread; the kick signal
            // has a no-op handler.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// Whether the vCPUs were told to stop for good.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _g = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        self.cond.notify_all();
    }

    /// Parks `count` vCPU threads; false if they did not all park within `timeout`.
    pub fn pause(&self, count: usize, timeout: Duration) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.pause_requested.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while self.parked.load(Ordering::SeqCst) < count {
            if std::time::Instant::now() > deadline || self.stopping() {
                return false;
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Lets parked vCPU threads run again.
    pub fn resume(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        *paused = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// Called by a vCPU thread between runs: blocks while paused.
    fn park_while_paused(&self) {
        if !self.pause_requested.load(Ordering::Acquire) {
            return;
        }
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !*paused {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while *paused && !self.stopping() {
            paused = self.cond.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the control plane holds of a running machine: cheap to clone, valid
/// for one boot.
#[derive(Clone)]
pub struct MachineHandle {
    exit: Arc<ExitSignal>,
    vcpus: Arc<VcpuControl>,
    vcpu_count: usize,
    vm: Arc<dyn Vm>,
    power_button: Arc<PowerButton>,
    paused_clock: Arc<Mutex<Option<u64>>>,
    vcpu_metrics: Vec<Arc<VcpuMetrics>>,
    devices: Vec<Arc<Mutex<VirtioPciDevice>>>,
}

impl MachineHandle {
    /// Stops every vCPU and the guest's clock.
    pub fn pause(&self) -> Result<(), VmError> {
        if !self.vcpus.pause(self.vcpu_count, Duration::from_secs(5)) {
            self.vcpus.resume();
            return Err(VmError::Pause);
        }
        let clock = self.vm.get_clock()?;
        *self.paused_clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(clock);
        Ok(())
    }

    /// Restarts the guest's clock where it stopped, then the vCPUs.
    pub fn resume(&self) -> Result<(), VmError> {
        if let Some(clock) = self
            .paused_clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.vm.set_clock(clock)?;
        }
        self.vcpus.resume();
        Ok(())
    }

    /// Presses the ACPI power button.
    pub fn press_power_button(&self) -> std::io::Result<()> {
        self.power_button.press()
    }

    /// Ends the machine with `reason` (first reason wins).
    pub fn stop(&self, reason: VmExitReason) {
        self.exit.set(reason);
    }

    /// Whether the machine has stopped or is stopping.
    pub fn stopped(&self) -> bool {
        self.exit.is_set()
    }

    /// Exit counters per vCPU.
    pub fn vcpu_metrics(&self) -> &[Arc<VcpuMetrics>] {
        &self.vcpu_metrics
    }

    /// Counters of every virtio device, keyed by device name.
    pub fn device_counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for dev in &self.devices {
            let dev = dev.lock().unwrap_or_else(|e| e.into_inner());
            let t = dev.transport_metrics();
            let mut m = match dev.device_metrics() {
                Some(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            m.insert(
                "interrupts".into(),
                t.interrupts.load(Ordering::Relaxed).into(),
            );
            m.insert(
                "notifications".into(),
                t.notifications.load(Ordering::Relaxed).into(),
            );
            out.insert(dev.name().to_string(), serde_json::Value::Object(m));
        }
        out
    }
}

/// Signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop) {
            log::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// Allocates naturally aligned BARs in one of the host bridge's windows.
struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    fn new(start: u64, size: u64) -> Self {
        Self {
            next: start,
            end: start.saturating_add(size),
        }
    }

    /// `size` bytes (a power of two) aligned to `size`.
    fn alloc(&mut self, size: u64) -> Option<u64> {
        let addr = self.next.checked_next_multiple_of(size)?;
        let end = addr.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            addr
        })
    }
}

// The largest shared-memory BAR fits the 64-bit window.
const _: () = assert!(MAX_SHM_BAR_SIZE <= PCI_MMIO64_SIZE);

impl Machine {
    /// Builds the machine: memory, devices, tables, kernel, vCPUs. The
    /// caller checks the host first
    /// ([`crate::hypervisor::kvm::HostKvm::detect`]).
    pub fn build(
        config: &VmConfig,
        serial_out: Box<dyn Write + Send>,
        console: ConsoleInput,
        display: Option<&DisplaySetup>,
    ) -> Result<Self, VmError> {
        let hv = KvmHypervisor::new()?;
        let vm: Arc<dyn Vm> = Arc::new(hv.create_vm(true)?);
        let mem = Arc::new(create_guest_memory(config.memory)?);
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| VmError::Device {
                    name: "memory".into(),
                    source: Box::new(e),
                })?;
            // SAFETY: the mapping is owned by `mem`, which the Machine keeps
            // alive longer than the VM's vCPUs run.
            unsafe {
                vm.map_memory(
                    slot as u32,
                    region.start_addr().0,
                    region.len(),
                    host as u64,
                    false,
                )?;
            }
        }

        let io_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());
        let exit = Arc::new(ExitSignal::new()?);

        // Legacy and platform devices.
        let serial_irq = legacy_irq(vm.as_ref(), SERIAL_IRQ)?;
        let serial = Arc::new(Mutex::new(SerialPort::new(serial_irq, serial_out)));
        io_bus.insert(serial.clone(), u64::from(SERIAL_PORT), 8)?;
        console.attach(Some(serial.clone()));
        let pm = AcpiPm::new(ACPI_S5_SLEEP_TYPE, ACPI_RESET_VALUE, exit.clone());
        let power_button = pm.power_button(legacy_irq(vm.as_ref(), ACPI_GED_IRQ)?);
        io_bus.insert(
            Arc::new(Mutex::new(pm)),
            u64::from(ACPI_SLEEP_CONTROL_PORT),
            pv_devices::platform::ACPI_PM_LEN,
        )?;
        io_bus.insert(Arc::new(Mutex::new(I8042Reset::new(exit.clone()))), 0x64, 1)?;

        // PCI.
        let segment = Arc::new(Mutex::new(PciSegment::new()));
        io_bus.insert(
            Arc::new(Mutex::new(PciConfigIo::new(segment.clone()))),
            u64::from(PCI_CONFIG_IO_PORT),
            PCI_CONFIG_IO_SIZE,
        )?;
        mmio_bus.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(segment.clone()))),
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )?;
        let router = Arc::new(VmMsiRouter::new(vm.clone()));
        let mut bars = BarAllocator::new(PCI_MMIO32_START, PCI_MMIO32_SIZE);
        // 64-bit BARs (device shared memory) go above RAM; mappings into
        // them take memory slots above the RAM slots.
        let mmio64_start = pci_mmio64_start(ram_top(&mem));
        let mut bars64 = BarAllocator::new(mmio64_start, PCI_MMIO64_SIZE);
        let shm_slots = Arc::new(Mutex::new(MemorySlots::new(
            mem.num_regions() as u32,
            vm.memory_slot_limit(),
        )));
        let mut pci_devices = Vec::new();
        let mut block_metrics = Vec::new();
        let mut virtio: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let name = format!("virtio-blk-{i}");
            let block = Block::new(disk).map_err(|e| VmError::Device {
                name: name.clone(),
                source: Box::new(e),
            })?;
            block_metrics.push(block.metrics());
            virtio.push((name, Box::new(block)));
        }
        let mut input = None;
        let mut resizer = None;
        if let Some(params) = &config.gpu {
            let Some(display) = display else {
                return Err(VmError::Device {
                    name: "virtio-gpu".into(),
                    source: "a GPU needs a display to show its scanouts".into(),
                });
            };
            // With input, the tablet maps pointer positions through the
            // scanouts' layout, which a tap on the GPU's sink keeps current.
            let mut sink = display.sink.clone();
            let mut input_devices = Vec::new();
            if display.with_input {
                let layout = Arc::new(TabletLayout::new(params.displays));
                sink = Arc::new(LayoutTap::new(sink, layout.clone()));
                let keyboard = InputDevice::new(InputKind::Keyboard);
                let tablet = InputDevice::new(InputKind::Tablet).with_layout(layout);
                input = Some(Arc::new(InputRouter(vec![
                    keyboard.handle(),
                    tablet.handle(),
                ])));
                input_devices.push(("virtio-input-keyboard".to_string(), keyboard));
                input_devices.push(("virtio-input-tablet".to_string(), tablet));
            }
            let gpu = VirtioGpu::new(params.clone(), sink).map_err(|e| VmError::Device {
                name: "virtio-gpu".into(),
                source: Box::new(e),
            })?;
            resizer = display
                .resizes
                .clone()
                .map(|d| ResizerLink::connect(d, gpu.display_control()));
            virtio.push(("virtio-gpu".into(), Box::new(gpu)));
            for (name, dev) in input_devices {
                virtio.push((name, Box::new(dev)));
            }
        }
        if config.rng {
            let rng = Rng::new().map_err(|e| VmError::Device {
                name: "virtio-rng".into(),
                source: Box::new(e),
            })?;
            virtio.push(("virtio-rng".into(), Box::new(rng)));
        }
        for (name, dev) in virtio {
            let bar = bars.alloc(BAR_SIZE).ok_or_else(|| VmError::Device {
                name: name.clone(),
                source: "the PCI MMIO window is full".into(),
            })?;
            let pci = VirtioPciDevice::with_shared_memory(
                &name,
                dev,
                mem.clone(),
                router.clone(),
                bar,
                |layout| {
                    let addr = bars64
                        .alloc(layout.bar_size())
                        .ok_or("the PCI 64-bit MMIO window is full")?;
                    let mapper =
                        VmShmMapper::new(vm.clone(), shm_slots.clone(), addr, layout.clone());
                    Ok(ShmBar {
                        addr,
                        mapper: Arc::new(mapper),
                    })
                },
            )
            .map_err(|e| VmError::Device {
                name: name.clone(),
                source: Box::new(e),
            })?;
            for (addr, fd) in pci.notify_eventfds() {
                vm.register_ioevent(fd, IoEventAddress::Mmio(addr))?;
            }
            // What no mapping covers in the shared-memory BAR exits as MMIO
            // and lands in a hole that reads zeros.
            if let Some((addr, size, hole)) = pci.shared_memory_bar() {
                log::debug!("{name}: shared memory BAR at {addr:#x} ({size:#x} bytes)");
                mmio_bus.insert(Arc::new(Mutex::new(hole)), addr, size)?;
            }
            let pci = Arc::new(Mutex::new(pci));
            mmio_bus.insert(pci.clone(), bar, BAR_SIZE)?;
            segment
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(pci.clone())
                .map_err(|e| VmError::Device {
                    name: name.clone(),
                    source: Box::new(e),
                })?;
            pci_devices.push(pci);
        }

        // Firmware tables and the kernel.
        let rsdp = create_acpi_tables(
            &mem,
            &AcpiConfig {
                num_cpus: config.cpus,
                pci_mmio64_start: mmio64_start,
                pci_mmio64_size: PCI_MMIO64_SIZE,
            },
        )?;
        write_boot_tables(&mem)?;
        let entry = load_kernel(
            &mem,
            &BootSpec {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
                rsdp,
            },
        )?;

        let supported = vm.supported_cpuid()?;
        let mut vcpus = Vec::new();
        for id in 0..config.cpus {
            let vcpu = vm.create_vcpu(id)?;
            configure_vcpu(
                vcpu.as_ref(),
                &supported,
                id,
                config.cpus,
                (id == 0).then_some(entry),
            )?;
            vcpus.push(vcpu);
        }

        Ok(Self {
            vm,
            mem,
            io_bus,
            mmio_bus,
            vcpus,
            entry,
            exit,
            console,
            power_button: Arc::new(power_button),
            block_metrics,
            vcpu_metrics: (0..config.cpus).map(|_| Arc::default()).collect(),
            vcpu_control: VcpuControl::new(),
            pci_devices,
            input,
            _resizer: resizer,
        })
    }

    /// Where the boot vCPU enters the kernel.
    pub fn kernel_entry(&self) -> KernelEntry {
        self.entry
    }

    /// Block device counters, one per disk.
    pub fn block_metrics(&self) -> &[Arc<BlockMetrics>] {
        &self.block_metrics
    }

    /// Exit counters, one per vCPU.
    pub fn vcpu_metrics(&self) -> &[Arc<VcpuMetrics>] {
        &self.vcpu_metrics
    }

    /// Where viewer input goes for this machine (None without input devices).
    pub fn input(&self) -> Option<Arc<dyn InputSink>> {
        self.input.clone().map(|i| i as Arc<dyn InputSink>)
    }

    /// What the control plane needs to drive this machine once it runs.
    pub fn handle(&self) -> MachineHandle {
        MachineHandle {
            exit: self.exit.clone(),
            vcpus: self.vcpu_control.clone(),
            vcpu_count: self.vcpu_metrics.len(),
            vm: self.vm.clone(),
            power_button: self.power_button.clone(),
            paused_clock: Arc::default(),
            vcpu_metrics: self.vcpu_metrics.clone(),
            devices: self.pci_devices.clone(),
        }
    }

    /// Starts the vCPUs and waits until the machine stops.
    pub fn run(mut self) -> Result<VmExitReason, VmError> {
        use std::os::unix::thread::JoinHandleExt;
        install_kick_handler();
        let control = self.vcpu_control.clone();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let ctx = VcpuContext {
                id,
                io_bus: self.io_bus.clone(),
                mmio_bus: self.mmio_bus.clone(),
                exit: self.exit.clone(),
                control: control.clone(),
                metrics: self.vcpu_metrics[id].clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("vcpu-{id}"))
                .spawn(move || ctx.run(vcpu))?;
            control.register_thread(t.as_pthread_t());
            threads.push(t);
        }
        let reason = self.exit.wait();
        control.request_stop();
        // Kick until every thread noticed the flag.
        for _ in 0..2500 {
            if threads.iter().all(|t| t.is_finished()) {
                break;
            }
            control.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        // Only finished threads are joined while registered; a thread still
        // running here is stuck in the kernel and is left behind.
        let (done, stuck): (Vec<_>, Vec<_>) = threads.into_iter().partition(|t| t.is_finished());
        control
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for t in done {
            let _ = t.join();
        }
        if !stuck.is_empty() {
            log::error!("{} vCPU thread(s) did not stop", stuck.len());
        }
        self.console.attach(None);
        let _ = (&self.vm, &self.mem);
        Ok(reason)
    }
}

/// A vCPU's run loop: dispatches I/O and MMIO exits to the buses and turns
/// the others into a [`VmExitReason`]. Unclaimed reads return all ones.
pub struct VcpuContext {
    pub id: usize,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub control: Arc<VcpuControl>,
    pub metrics: Arc<VcpuMetrics>,
}

/// Exits of one vCPU by reason, readable while it runs.
#[derive(Debug, Default)]
pub struct VcpuMetrics {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    /// Accesses no device claimed.
    pub unclaimed: AtomicU64,
    /// Runs interrupted by a signal.
    pub interrupted: AtomicU64,
}

impl VcpuMetrics {
    /// All exits counted so far.
    pub fn total(&self) -> u64 {
        [
            &self.io_in,
            &self.io_out,
            &self.mmio_read,
            &self.mmio_write,
            &self.interrupted,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// With debug logging: exits per (kind, address), printed when the vCPU stops.
#[derive(Default)]
struct ExitProfile(Option<std::collections::HashMap<(&'static str, u64), u64>>);

impl ExitProfile {
    fn new() -> Self {
        Self(log::log_enabled!(log::Level::Debug).then(Default::default))
    }

    fn count(&mut self, kind: &'static str, addr: u64) {
        if let Some(map) = self.0.as_mut() {
            *map.entry((kind, addr)).or_default() += 1;
        }
    }

    fn report(&self, id: usize) {
        let Some(map) = &self.0 else { return };
        let mut top: Vec<_> = map.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        for ((kind, addr), n) in top.into_iter().take(12) {
            log::debug!("vcpu-{id}: {n} {kind} exits at {addr:#x}");
        }
    }
}

impl VcpuContext {
    /// Runs `vcpu` until it stops or `stop` is set.
    pub fn run(self, mut vcpu: Box<dyn Vcpu>) {
        pv_seccomp::apply_or_abort(pv_seccomp::ThreadKind::Vcpu);
        let m = self.metrics.clone();
        let mut profile = ExitProfile::new();
        while !self.control.stopping() {
            self.control.park_while_paused();
            if self.control.stopping() {
                break;
            }
            match vcpu.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    m.io_in.fetch_add(1, Ordering::Relaxed);
                    profile.count("pio-in", u64::from(port));
                    if !self.io_bus.read(u64::from(port), data) {
                        m.unclaimed.fetch_add(1, Ordering::Relaxed);
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    m.io_out.fetch_add(1, Ordering::Relaxed);
                    profile.count("pio-out", u64::from(port));
                    if !self.io_bus.write(u64::from(port), data) {
                        m.unclaimed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    m.mmio_read.fetch_add(1, Ordering::Relaxed);
                    profile.count("mmio-read", addr & !0xfff);
                    if !self.mmio_bus.read(addr, data) {
                        m.unclaimed.fetch_add(1, Ordering::Relaxed);
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    m.mmio_write.fetch_add(1, Ordering::Relaxed);
                    profile.count("mmio-write", addr & !0xfff);
                    if !self.mmio_bus.write(addr, data) {
                        m.unclaimed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(VcpuExit::Interrupted) => {
                    m.interrupted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(VcpuExit::Hlt) => {
                    log::info!("vcpu-{}: halted", self.id);
                    self.exit.set(VmExitReason::PowerOff);
                    break;
                }
                Ok(VcpuExit::Reset) => {
                    self.exit.set(VmExitReason::Reset);
                    break;
                }
                Ok(VcpuExit::Shutdown) => {
                    self.exit.set(VmExitReason::Crash(format!(
                        "vcpu-{} triple-faulted (the guest crashed)",
                        self.id
                    )));
                    break;
                }
                Ok(VcpuExit::Unhandled(what)) => {
                    self.exit
                        .set(VmExitReason::Crash(format!("vcpu-{}: {what}", self.id)));
                    break;
                }
                Err(e) => {
                    self.exit
                        .set(VmExitReason::Crash(format!("vcpu-{}: {e}", self.id)));
                    break;
                }
            }
        }
        log::info!(
            "vcpu-{}: {} exits ({} port in, {} port out, {} mmio read, {} mmio write, {} unclaimed)",
            self.id,
            m.total(),
            m.io_in.load(Ordering::Relaxed),
            m.io_out.load(Ordering::Relaxed),
            m.mmio_read.load(Ordering::Relaxed),
            m.mmio_write.load(Ordering::Relaxed),
            m.unclaimed.load(Ordering::Relaxed),
        );
        profile.report(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_and_bounded() {
        let mut b = BarAllocator::new(PCI_MMIO32_START + 0x100, PCI_MMIO32_SIZE - 0x100);
        assert_eq!(b.alloc(0x8000), Some(PCI_MMIO32_START + 0x8000));
        assert_eq!(b.alloc(0x8000), Some(PCI_MMIO32_START + 0x10000));
        assert_eq!(b.alloc(PCI_MMIO32_SIZE), None);
        // The 64-bit window takes the largest shared-memory BAR (64 GiB, a
        // GPU's largest host-visible window) and then some.
        let start = pci_mmio64_start(8 << 30);
        let mut b = BarAllocator::new(start, PCI_MMIO64_SIZE);
        assert_eq!(b.alloc(1 << 20), Some(start));
        assert_eq!(b.alloc(16 << 30), Some(start + (16 << 30)));
        assert_eq!(b.alloc(MAX_SHM_BAR_SIZE), Some(start + MAX_SHM_BAR_SIZE));
        assert_eq!(b.alloc(0x1000), None, "past the window");
        let mut edge = BarAllocator::new(u64::MAX - 0xfff, 0x1000);
        assert_eq!(edge.alloc(0x2000), None, "no overflow");
    }

    #[test]
    fn size_requests_go_to_the_running_machines_gpu() {
        let display = Arc::new(Display::new(1));
        let gpu = || {
            VirtioGpu::new(
                pv_gpu::virtio_gpu::GpuParams::default(),
                display.clone() as Arc<dyn ScanoutSink>,
            )
            .unwrap()
            .display_control()
        };
        let (first, second) = (gpu(), gpu());
        let default = first.mode(0).unwrap();
        let link = ResizerLink::connect(display.clone(), first.clone());
        display.request_size(0, 1000, 700).unwrap();
        assert_eq!(first.mode(0), Some((1000, 700)));
        // The machine goes: nothing to ask until the next one is built.
        drop(link);
        assert!(matches!(
            display.request_size(0, 900, 600),
            Err(pv_display::DisplayError::NoResizer(0))
        ));
        // The rebooted machine's new GPU gets the requests.
        let link = ResizerLink::connect(display.clone(), second.clone());
        display.request_size(0, 900, 600).unwrap();
        assert_eq!(second.mode(0), Some((900, 600)));
        assert_eq!(first.mode(0), Some((1000, 700)));
        // An old link going late leaves the new one connected.
        let stale = ResizerLink::connect(display.clone(), first.clone());
        let current = ResizerLink::connect(display.clone(), second.clone());
        drop(stale);
        assert!(display.has_resizer());
        drop(current);
        drop(link);
        assert!(!display.has_resizer());
        assert_ne!(default, (900, 600));
    }

    #[test]
    fn first_exit_reason_wins() {
        let s = ExitSignal::new().unwrap();
        s.request(PlatformRequest::Reset);
        s.set(VmExitReason::PowerOff);
        assert_eq!(s.wait(), VmExitReason::Reset);
    }
}
