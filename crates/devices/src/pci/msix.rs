//! MSI-X: the vector table, pending bits and delivery through irqfds.
//!
//! Each vector owns an interrupt line (a GSI with an irqfd) allocated from the
//! VMM's [`MsiRouter`]. When the guest programs a table entry, the line's MSI
//! route is updated; [`Msix::trigger`] then only writes the eventfd, so the
//! hypervisor injects the interrupt without another exit. Masked vectors
//! collect a pending bit and fire when unmasked.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// An MSI message: (address, data).
pub type MsiMessage = (u64, u32);

/// The VMM's interrupt routing, as MSI-X needs it.
pub trait MsiRouter: Send + Sync {
    /// Creates a line: a GSI whose eventfd is registered as an irqfd.
    fn allocate(&self) -> io::Result<(u32, EventFd)>;
    /// Sets (or removes) the MSI message line `gsi` delivers.
    fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()>;
}

/// An [`MsiRouter`] without a hypervisor, for tests and fuzzing: each line
/// is a fresh non-blocking eventfd that nothing injects (read it to see
/// whether the vector fired) and a GSI counted up from
/// [`LocalMsiRouter::FIRST_GSI`]; routes are only remembered, the latest
/// message per GSI.
#[derive(Debug, Default)]
pub struct LocalMsiRouter {
    allocated: AtomicU32,
    routes: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl LocalMsiRouter {
    /// The first GSI handed out (the ones below are the legacy IRQs).
    pub const FIRST_GSI: u32 = 24;

    /// A router that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many lines were handed out.
    pub fn allocated(&self) -> u32 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// The message line `gsi` delivers now, if one was set.
    pub fn route(&self, gsi: u32) -> Option<MsiMessage> {
        self.lock().get(&gsi).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, MsiMessage>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MsiRouter for LocalMsiRouter {
    fn allocate(&self) -> io::Result<(u32, EventFd)> {
        let fd = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
        let n = self.allocated.fetch_add(1, Ordering::Relaxed);
        Ok((Self::FIRST_GSI.saturating_add(n), fd))
    }

    fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut routes = self.lock();
        match msg {
            Some(m) => routes.insert(gsi, m),
            None => routes.remove(&gsi),
        };
        Ok(())
    }
}

/// PCI capability id of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
const CTRL_MASKED: u32 = 1;
/// Message-control bits in the capability.
pub const MSIX_ENABLE: u16 = 1 << 15;
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;

#[derive(Clone, Copy, Default)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.ctrl & CTRL_MASKED != 0
    }
    fn message(&self) -> MsiMessage {
        (
            (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo),
            self.data,
        )
    }
}

struct State {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
}

/// One device's MSI-X vectors.
pub struct Msix {
    state: Mutex<State>,
    lines: Vec<(u32, EventFd)>,
    router: Arc<dyn MsiRouter>,
}

impl Msix {
    /// `vectors` vectors (1..=2048), all masked as at reset.
    pub fn new(vectors: u16, router: Arc<dyn MsiRouter>) -> io::Result<Self> {
        let n = usize::from(vectors.clamp(1, 2048));
        let lines = (0..n)
            .map(|_| router.allocate())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            state: Mutex::new(State {
                entries: vec![
                    Entry {
                        ctrl: CTRL_MASKED,
                        ..Default::default()
                    };
                    n
                ],
                pending: vec![false; n],
                enabled: false,
                function_masked: false,
            }),
            lines,
            router,
        })
    }

    pub fn vectors(&self) -> usize {
        self.lines.len()
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.lines.len() as u64 * MSIX_ENTRY_SIZE
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signals vector `vector` (or marks it pending while masked).
    pub fn trigger(&self, vector: u16) {
        let v = usize::from(vector);
        let mut s = self.lock();
        if v >= s.entries.len() || !s.enabled {
            return;
        }
        if s.function_masked || s.entries[v].masked() {
            s.pending[v] = true;
            return;
        }
        drop(s);
        if let Err(e) = self.lines[v].1.write(1) {
            crate::guest_warn!("msix: cannot signal vector {v}: {e}");
        }
    }

    /// The guest wrote the capability's message control.
    pub fn set_control(&self, control: u16) {
        let mut s = self.lock();
        s.enabled = control & MSIX_ENABLE != 0;
        s.function_masked = control & MSIX_FUNCTION_MASK != 0;
        self.deliver_pending(&mut s);
    }

    fn deliver_pending(&self, s: &mut State) {
        if !s.enabled || s.function_masked {
            return;
        }
        for v in 0..s.entries.len() {
            if s.pending[v] && !s.entries[v].masked() {
                s.pending[v] = false;
                let _ = self.lines[v].1.write(1);
            }
        }
    }

    /// Guest read of the table.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let s = self.lock();
        let (v, field) = (
            (offset / MSIX_ENTRY_SIZE) as usize,
            (offset % MSIX_ENTRY_SIZE) as usize,
        );
        let Some(e) = s.entries.get(v) else { return };
        let bytes: Vec<u8> = [e.addr_lo, e.addr_hi, e.data, e.ctrl]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        if field + data.len() <= bytes.len() && matches!(data.len(), 4 | 8) {
            data.copy_from_slice(&bytes[field..field + data.len()]);
        }
    }

    /// Guest write to the table: updates the route and (un)masking.
    pub fn table_write(&self, offset: u64, data: &[u8]) {
        let mut s = self.lock();
        let (v, field) = (
            (offset / MSIX_ENTRY_SIZE) as usize,
            (offset % MSIX_ENTRY_SIZE) as usize,
        );
        if v >= s.entries.len() || !matches!(data.len(), 4 | 8) || field % 4 != 0 {
            return;
        }
        let before = s.entries[v];
        for (i, chunk) in data.chunks(4).enumerate() {
            let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            match field / 4 + i {
                0 => s.entries[v].addr_lo = w,
                1 => s.entries[v].addr_hi = w,
                2 => s.entries[v].data = w,
                3 => s.entries[v].ctrl = w & CTRL_MASKED,
                _ => {}
            }
        }
        let after = s.entries[v];
        if after.message() != before.message() || (!after.masked() && before.masked()) {
            if let Err(e) = self
                .router
                .set_route(self.lines[v].0, Some(after.message()))
            {
                crate::guest_warn!("msix: cannot route vector {v}: {e}");
            }
        }
        if before.masked() && !after.masked() {
            self.deliver_pending(&mut s);
        }
    }

    /// Guest read of the pending-bit array.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let s = self.lock();
        for (i, b) in data.iter_mut().enumerate() {
            let base = (offset as usize + i) * 8;
            *b = (0..8)
                .filter(|bit| s.pending.get(base + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | (1 << bit));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A router that hands out eventfds and records routes.
    #[derive(Default)]
    pub struct TestRouter {
        next: AtomicU32,
        pub routes: Mutex<Vec<(u32, Option<MsiMessage>)>>,
    }

    impl MsiRouter for TestRouter {
        fn allocate(&self) -> io::Result<(u32, EventFd)> {
            Ok((
                24 + self.next.fetch_add(1, Ordering::SeqCst),
                EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
            ))
        }
        fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
            self.routes.lock().unwrap().push((gsi, msg));
            Ok(())
        }
    }

    #[test]
    fn routes_masks_and_pending() {
        let router = Arc::new(TestRouter::default());
        let msix = Msix::new(2, router.clone()).unwrap();
        msix.set_control(MSIX_ENABLE);
        // Program vector 1: address, data; still masked.
        msix.table_write(16, &0xfee0_0000u32.to_le_bytes());
        msix.table_write(24, &0x41u32.to_le_bytes());
        assert_eq!(
            router.routes.lock().unwrap().last(),
            Some(&(25, Some((0xfee0_0000, 0x41))))
        );
        msix.trigger(1);
        assert!(
            msix.lines[1].1.read().is_err(),
            "masked vector must not fire"
        );
        let mut pba = [0u8; 8];
        msix.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        // Unmask: the pending interrupt is delivered and cleared.
        msix.table_write(28, &0u32.to_le_bytes());
        assert_eq!(msix.lines[1].1.read().unwrap(), 1);
        msix.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        msix.trigger(1);
        assert_eq!(msix.lines[1].1.read().unwrap(), 1);
        // Out-of-range vectors and disabled MSI-X do nothing.
        msix.trigger(7);
        msix.set_control(0);
        msix.trigger(1);
        assert!(msix.lines[1].1.read().is_err());
        let mut e = [0u8; 4];
        msix.table_read(24, &mut e);
        assert_eq!(u32::from_le_bytes(e), 0x41);
        msix.table_read(4096, &mut e);
        assert_eq!(e, [0xff; 4]);
    }

    #[test]
    fn local_router_hands_out_lines_and_keeps_the_latest_route() {
        let router = Arc::new(LocalMsiRouter::new());
        let msix = Msix::new(3, router.clone()).unwrap();
        assert_eq!(router.allocated(), 3);
        assert_eq!(router.route(LocalMsiRouter::FIRST_GSI + 2), None);
        msix.set_control(MSIX_ENABLE);
        msix.table_write(32, &0xfee0_0000u32.to_le_bytes());
        msix.table_write(40, &0x22u32.to_le_bytes());
        msix.table_write(40, &0x23u32.to_le_bytes());
        assert_eq!(
            router.route(LocalMsiRouter::FIRST_GSI + 2),
            Some((0xfee0_0000, 0x23))
        );
        // Unmasked, the vector's eventfd fires; it does not block when read empty.
        msix.table_write(44, &0u32.to_le_bytes());
        msix.trigger(2);
        assert_eq!(msix.lines[2].1.read().unwrap(), 1);
        assert!(msix.lines[2].1.read().is_err());
        router
            .set_route(LocalMsiRouter::FIRST_GSI + 2, None)
            .unwrap();
        assert_eq!(router.route(LocalMsiRouter::FIRST_GSI + 2), None);
    }
}
