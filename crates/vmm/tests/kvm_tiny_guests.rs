//! Tier 2: tiny hand-assembled real-mode guests on the host's /dev/kvm,
//! driven through the VMM's own vCPU loop and buses. These run on any KVM,
//! including kvm_pvm without hardware virtualization.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use pv_devices::bus::{Bus, BusDevice};
use pv_vmm::hypervisor::kvm::KvmHypervisor;
use pv_vmm::hypervisor::Vm;
use pv_vmm::vm::{ExitSignal, VcpuContext, VcpuControl, VcpuMetrics, VmExitReason};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// (offset, bytes) of each write a probe saw.
type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Records writes; reads return a fixed byte.
struct Probe {
    value: u8,
    writes: Writes,
}

impl BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.value);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
    }
}

fn probe(value: u8) -> (Arc<Mutex<Probe>>, Writes) {
    let writes = Arc::new(Mutex::new(Vec::new()));
    (
        Arc::new(Mutex::new(Probe {
            value,
            writes: writes.clone(),
        })),
        writes,
    )
}

/// Runs `code` at 0x1000 in real mode with 64 KiB of RAM until it halts.
fn run_guest(
    code: &[u8],
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
) -> (VmExitReason, Arc<VcpuMetrics>) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "tier-2 tests need /dev/kvm (any KVM, kvm_pvm included)"
    );
    let hv = KvmHypervisor::new().expect("open /dev/kvm");
    let vm = hv.create_vm(false).expect("create VM");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let region = mem.iter().next().unwrap();
    let host = region.get_host_address(MemoryRegionAddress(0)).unwrap();
    // SAFETY: `mem` outlives the VM, which is dropped at the end of this function.
    unsafe { vm.map_memory(0, 0, region.len(), host as u64, false) }.unwrap();
    mem.write_slice(code, GuestAddress(0x1000)).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let metrics = Arc::new(VcpuMetrics::default());
    let ctx = VcpuContext {
        id: 0,
        io_bus,
        mmio_bus,
        exit: exit.clone(),
        control: VcpuControl::new(),
        metrics: metrics.clone(),
    };
    let t = std::thread::spawn(move || ctx.run(vcpu));
    let reason = exit.wait();
    t.join().unwrap();
    drop(vm);
    drop(mem);
    (reason, metrics)
}

#[test]
fn port_io_in_and_out_reach_the_bus_and_hlt_stops() {
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'H', // mov al, 'H'
        0xee, // out dx, al
        0xb0, b'i', // mov al, 'i'
        0xee, // out dx, al
        0xba, 0x00, 0x05, // mov dx, 0x500
        0xec, // in al, dx  (probe answers 'A')
        0xfe, 0xc0, // inc al
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al  ('B')
        0xba, 0x00, 0x06, // mov dx, 0x600 (nothing there)
        0xec, // in al, dx  (0xff)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xf4, // hlt
    ];
    let io = Arc::new(Bus::new());
    let (console, written) = probe(0);
    let (answer, _) = probe(b'A');
    io.insert(console, 0x3f8, 8).unwrap();
    io.insert(answer, 0x500, 1).unwrap();
    let (reason, m) = run_guest(&code, io, Arc::new(Bus::new()));
    assert_eq!(reason, VmExitReason::PowerOff, "hlt ends the run");
    assert_eq!(m.io_out.load(Ordering::Relaxed), 4);
    assert_eq!(m.io_in.load(Ordering::Relaxed), 2);
    assert_eq!(
        m.unclaimed.load(Ordering::Relaxed),
        1,
        "port 0x600 has no device"
    );
    let bytes: Vec<u8> = written
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(bytes, vec![b'H', b'i', b'B', 0xff]);
}

#[test]
fn mmio_reads_and_writes_outside_ram_reach_the_bus() {
    let code = [
        0xb8, 0x00, 0x10, // mov ax, 0x1000
        0x8e, 0xd8, // mov ds, ax        (ds base 0x10000: outside RAM)
        0xa0, 0x00, 0x00, // mov al, [0]      MMIO read 0x10000 -> 0x5a
        0xa2, 0x01, 0x00, // mov [1], al      MMIO write 0x10001
        0xc7, 0x06, 0x04, 0x00, 0x34, 0x12, // mov word [4], 0x1234
        0xf4, // hlt
    ];
    let mmio = Arc::new(Bus::new());
    let (dev, written) = probe(0x5a);
    mmio.insert(dev, 0x10000, 0x100).unwrap();
    let (reason, m) = run_guest(&code, Arc::new(Bus::new()), mmio);
    assert_eq!(reason, VmExitReason::PowerOff);
    assert_eq!(m.mmio_read.load(Ordering::Relaxed), 1);
    assert_eq!(m.mmio_write.load(Ordering::Relaxed), 2);
    assert_eq!(
        *written.lock().unwrap(),
        vec![(1, vec![0x5a]), (4, vec![0x34, 0x12])]
    );
}
