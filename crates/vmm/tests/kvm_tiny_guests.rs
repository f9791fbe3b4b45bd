//! Tier 2: tiny hand-assembled real-mode guests on the host's /dev/kvm,
//! driven through the VMM's own vCPU loop and buses. These run on any KVM,
//! including kvm_pvm without hardware virtualization.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use pv_devices::bus::{Bus, BusDevice};
use pv_devices::virtio::pci::{SharedMemoryBar, TransportMetrics};
use pv_devices::virtio::shm::ShmLayout;
use pv_devices::virtio::{SharedMemoryRegion, ShmMapper};
use pv_vmm::hypervisor::kvm::{KvmHypervisor, KvmVm};
use pv_vmm::hypervisor::Vm;
use pv_vmm::shm::{MemorySlots, VmShmMapper};
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

/// A VM without an in-kernel irqchip.
fn new_vm() -> Arc<KvmVm> {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "tier-2 tests need /dev/kvm (any KVM, kvm_pvm included)"
    );
    let hv = KvmHypervisor::new().expect("open /dev/kvm");
    Arc::new(hv.create_vm(false).expect("create VM"))
}

/// Runs `code` at 0x1000 in real mode with 64 KiB of RAM until it halts.
fn run_guest(
    code: &[u8],
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
) -> (VmExitReason, Arc<VcpuMetrics>) {
    run_guest_on(new_vm().as_ref(), code, io_bus, mmio_bus)
}

/// [`run_guest`] on `vm`; RAM is slot 0 and removed again before returning.
fn run_guest_on(
    vm: &dyn Vm,
    code: &[u8],
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
) -> (VmExitReason, Arc<VcpuMetrics>) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let region = mem.iter().next().unwrap();
    let host = region.get_host_address(MemoryRegionAddress(0)).unwrap();
    // SAFETY: the slot is deleted below, before `mem` is dropped.
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
    vm.unmap_user_memory(0, 0, region.len()).unwrap();
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

/// Anonymous host memory, page aligned, unmapped on drop.
struct HostBuffer {
    ptr: *mut u8,
    len: usize,
}

impl HostBuffer {
    /// `len` bytes where byte `i` is `pattern(i)`.
    fn new(len: usize, pattern: impl Fn(usize) -> u8) -> Self {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let buf = Self {
            ptr: ptr.cast(),
            len,
        };
        for i in 0..len {
            buf.set(i, pattern(i));
        }
        buf
    }

    fn get(&self, i: usize) -> u8 {
        assert!(i < self.len);
        // SAFETY: in bounds of the live mapping; the guest may write it
        // concurrently only while a vCPU runs, and the tests read after the run.
        unsafe { self.ptr.add(i).read_volatile() }
    }

    fn set(&self, i: usize, v: u8) {
        assert!(i < self.len);
        // SAFETY: as in `get`.
        unsafe { self.ptr.add(i).write_volatile(v) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; every slot using it was deleted.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A port whose writes run an action (here: unmapping while the guest runs).
struct Trigger(Box<dyn FnMut() + Send>);

impl BusDevice for Trigger {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        (self.0)();
    }
}

fn console_bytes(written: &Writes) -> Vec<u8> {
    written
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, d)| d.clone())
        .collect()
}

fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7) ^ ((i >> 8) as u8) ^ 0xa2
}

/// Guest address of the mappings: right above the 64 KiB of RAM, reachable
/// from real mode with DS = 0x2000.
const SHM_GPA: u64 = 0x20000;

#[test]
fn user_memory_slot_is_guest_memory_until_unmapped() {
    let vm = new_vm();
    let buf = HostBuffer::new(0x2000, pattern);
    // SAFETY: `buf` outlives the slot: the guest deletes it through the
    // trigger port, and the VM is dropped before `buf` at the latest.
    unsafe { vm.map_user_memory(1, SHM_GPA, 0x2000, buf.ptr, false) }.unwrap();
    let code = [
        0xb8, 0x00, 0x20, // mov ax, 0x2000
        0x8e, 0xd8, // mov ds, ax
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xa0, 0x00, 0x00, // mov al, [0x0000]    host byte 0
        0xee, // out dx, al
        0xa0, 0x01, 0x10, // mov al, [0x1001]    host byte 0x1001 (second page)
        0xee, // out dx, al
        0xc6, 0x06, 0x02, 0x00, 0x77, // mov byte [0x0002], 0x77  into host memory
        0xa0, 0x02, 0x00, // mov al, [0x0002]
        0xee, // out dx, al
        0xba, 0x10, 0x05, // mov dx, 0x510
        0xee, // out dx, al                       the VMM deletes the slot
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xa0, 0x00, 0x00, // mov al, [0x0000]    now an MMIO read (0x5a)
        0xee, // out dx, al
        0xc6, 0x06, 0x03, 0x00, 0x66, // mov byte [0x0003], 0x66  an MMIO write
        0xf4, // hlt
    ];
    let io = Arc::new(Bus::new());
    let (console, written) = probe(0);
    io.insert(console, 0x3f8, 8).unwrap();
    let unmapped = Arc::new(Mutex::new(None));
    let (vm2, result) = (vm.clone(), unmapped.clone());
    let trigger = Trigger(Box::new(move || {
        *result.lock().unwrap() = Some(vm2.unmap_user_memory(1, SHM_GPA, 0x2000).is_ok());
    }));
    io.insert(Arc::new(Mutex::new(trigger)), 0x510, 1).unwrap();
    let mmio = Arc::new(Bus::new());
    let (hole, hole_writes) = probe(0x5a);
    mmio.insert(hole, SHM_GPA, 0x2000).unwrap();

    let (reason, m) = run_guest_on(vm.as_ref(), &code, io, mmio);
    assert_eq!(reason, VmExitReason::PowerOff);
    assert_eq!(*unmapped.lock().unwrap(), Some(true), "slot deleted");
    assert_eq!(
        console_bytes(&written),
        vec![pattern(0), pattern(0x1001), 0x77, 0x5a],
        "the guest read host memory, read back its write, then the MMIO hole"
    );
    assert_eq!(buf.get(2), 0x77, "the guest's write landed in host memory");
    assert_eq!(buf.get(3), pattern(3), "the write after unmapping did not");
    assert_eq!(*hole_writes.lock().unwrap(), vec![(3, vec![0x66])]);
    assert_eq!(m.mmio_read.load(Ordering::Relaxed), 1);
    assert_eq!(m.mmio_write.load(Ordering::Relaxed), 1);
    drop(vm);
}

#[test]
fn device_mapper_maps_read_only_into_the_bar_and_the_rest_reads_zero() {
    let vm = new_vm();
    assert!(vm.memory_slot_limit() > 2, "KVM_CAP_NR_MEMSLOTS");
    let vm_dyn: Arc<dyn Vm> = vm.clone();
    // A 64 KiB BAR at SHM_GPA with one region; the page goes at offset 0x1000.
    let layout = ShmLayout::new(&[SharedMemoryRegion {
        id: 1,
        len: 0x10000,
    }])
    .unwrap()
    .unwrap();
    assert_eq!(layout.bar_size(), 0x10000);
    let slots = Arc::new(Mutex::new(MemorySlots::new(1, vm.memory_slot_limit())));
    let mapper = Arc::new(VmShmMapper::new(vm_dyn, slots.clone(), SHM_GPA, layout));
    let buf = HostBuffer::new(0x1000, pattern);
    let readonly = vm.supports_readonly_memory();
    // SAFETY: `buf` outlives the mapping: the guest unmaps it through the
    // trigger port, and the mapper (which unmaps on drop) is dropped first.
    let mapped = unsafe { mapper.map(1, 0x1000, buf.ptr, 0x1000, false) };
    if !readonly {
        assert!(
            mapped.is_err(),
            "read-only refused without KVM_CAP_READONLY_MEM"
        );
        eprintln!("this KVM has no read-only memory slots; read-only part skipped");
        return;
    }
    mapped.unwrap();
    assert_eq!(slots.lock().unwrap().used(), 1);
    let code = [
        0xb8, 0x00, 0x20, // mov ax, 0x2000
        0x8e, 0xd8, // mov ds, ax
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xa0, 0x00, 0x10, // mov al, [0x1000]    mapped: host byte 0
        0xee, // out dx, al
        0xc6, 0x06, 0x00, 0x10, 0x11, // mov byte [0x1000], 0x11  read-only: exits, dropped
        0xa0, 0x00, 0x10, // mov al, [0x1000]    unchanged
        0xee, // out dx, al
        0xa0, 0x00, 0x00, // mov al, [0x0000]    not mapped: the hole reads 0
        0xee, // out dx, al
        0xba, 0x10, 0x05, // mov dx, 0x510
        0xee, // out dx, al                       the device unmaps its page
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xa0, 0x00, 0x10, // mov al, [0x1000]    the hole now
        0xee, // out dx, al
        0xf4, // hlt
    ];
    let io = Arc::new(Bus::new());
    let (console, written) = probe(0xee);
    io.insert(console, 0x3f8, 8).unwrap();
    let result = Arc::new(Mutex::new(None));
    let (m2, r2) = (mapper.clone(), result.clone());
    let trigger = Trigger(Box::new(move || {
        *r2.lock().unwrap() = Some(m2.unmap(1, 0x1000).map_err(|e| e.to_string()));
    }));
    io.insert(Arc::new(Mutex::new(trigger)), 0x510, 1).unwrap();
    let mmio = Arc::new(Bus::new());
    let metrics = Arc::new(TransportMetrics::default());
    mmio.insert(
        Arc::new(Mutex::new(SharedMemoryBar::new(metrics.clone()))),
        SHM_GPA,
        0x10000,
    )
    .unwrap();

    let (reason, _) = run_guest_on(vm.as_ref(), &code, io, mmio);
    assert_eq!(reason, VmExitReason::PowerOff);
    assert_eq!(*result.lock().unwrap(), Some(Ok(())));
    assert_eq!(
        console_bytes(&written),
        vec![pattern(0), pattern(0), 0, 0],
        "mapped byte twice (the write was dropped), then zeros from the hole"
    );
    assert_eq!(buf.get(0), pattern(0), "read-only: host memory unchanged");
    assert_eq!(
        metrics.shm_unmapped_accesses.load(Ordering::Relaxed),
        3,
        "the dropped write and two reads of unmapped parts exited"
    );
    assert_eq!(slots.lock().unwrap().used(), 0, "slot given back");
    assert_eq!(mapper.mapped(), 0);
    drop(mapper);
    drop(vm);
}
