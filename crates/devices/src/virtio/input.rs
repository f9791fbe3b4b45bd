//! virtio-input (virtio 1.3 §5.8): a keyboard and an absolute tablet that
//! carry a viewer's keyboard and mouse into the guest.
//!
//! The display side calls [`InputHandle::send`] (it implements
//! [`pv_display::InputSink`]); events are queued (bounded: the oldest are
//! dropped when the guest stops reading) and the device's worker is woken
//! through the event queue's own kick eventfd, so no extra thread or fd is
//! needed. Each event is followed by a `SYN_REPORT`, as evdev expects.
//!
//! The tablet's absolute axes span 0..=[`TABLET_ABS_MAX`] (as QEMU's do).
//! With several scanouts, all of them share that one space: a
//! [`TabletLayout`] places them side by side, left to right in scanout
//! order, top-aligned, each at its current mode (off scanouts take no
//! room), the way desktops arrange outputs by default. [`LayoutTap`], put
//! between the GPU and its display sink, keeps the layout up to date.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pv_display::{CursorImage, FrameView, InputEvent, InputSink, Rect, ScanoutSink};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{drain_queue, QueueHandler, Worker};
use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::GuestMemory;

const EV_SYN: u16 = 0x00;
const EV_KEY: u16 = 0x01;
const EV_REL: u16 = 0x02;
const EV_ABS: u16 = 0x03;
const EV_REP: u16 = 0x14;
const SYN_REPORT: u16 = 0;
const REL_WHEEL: u16 = 0x08;
const ABS_X: u16 = 0x00;
const ABS_Y: u16 = 0x01;
const BTN_LEFT: u16 = 0x110;
const BTN_RIGHT: u16 = 0x111;
const BTN_MIDDLE: u16 = 0x112;
/// Highest key code the keyboard offers (KEY_MICMUTE is 248).
const KEY_MAX_OFFERED: u16 = 248;
const INPUT_PROP_DIRECT: u16 = 0x01;

const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;

/// Events kept while the guest isn't reading; older ones are dropped.
const PENDING_MAX: usize = 1024;
const QUEUE_SIZE: u16 = 64;

/// The largest value of the tablet's ABS_X and ABS_Y (the smallest is 0).
pub const TABLET_ABS_MAX: u32 = 0x7fff;

/// Which device this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    /// An absolute pointer over the scanouts of a [`TabletLayout`].
    Tablet,
}

/// Where each scanout lies in the tablet's absolute space: side by side,
/// left to right in scanout order, top-aligned, each as wide and as high as
/// its current mode; scanouts that are off take no room. The space is the
/// bounding box of them all, scaled to 0..=[`TABLET_ABS_MAX`] on each axis.
#[derive(Debug, Default)]
pub struct TabletLayout {
    modes: Mutex<Vec<Option<(u32, u32)>>>,
}

impl TabletLayout {
    /// A layout of `scanouts` scanouts, all off.
    pub fn new(scanouts: u32) -> Self {
        Self {
            modes: Mutex::new(vec![None; scanouts as usize]),
        }
    }

    /// Scanout `scanout` now shows `width` x `height` (None or an empty
    /// mode: off). Scanouts beyond those given to [`TabletLayout::new`] are
    /// ignored.
    pub fn set_mode(&self, scanout: u32, mode: Option<(u32, u32)>) {
        let mut modes = self.modes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modes.get_mut(scanout as usize) {
            *m = mode.filter(|&(w, h)| w > 0 && h > 0);
        }
    }

    /// The absolute position of pixel (`x`, `y`) of `scanout` (clamped to
    /// the scanout), or None when the scanout is off or does not exist.
    pub fn map(&self, scanout: u32, x: u32, y: u32) -> Option<(u32, u32)> {
        let modes = self.modes.lock().unwrap_or_else(|e| e.into_inner());
        map_to_tablet(&modes, scanout, x, y)
    }
}

/// [`TabletLayout::map`] over explicit modes. A pixel maps to the absolute
/// value at its centre, so that the guest's usual scaling back to pixels,
/// `value * size / (TABLET_ABS_MAX + 1)`, lands on the same pixel for
/// layouts up to 16384 pixels on a side.
pub fn map_to_tablet(
    modes: &[Option<(u32, u32)>],
    scanout: u32,
    x: u32,
    y: u32,
) -> Option<(u32, u32)> {
    let (w, h) = (*modes.get(scanout as usize)?).filter(|&(w, h)| w > 0 && h > 0)?;
    let on = || modes.iter().flatten().filter(|&&(w, h)| w > 0 && h > 0);
    let left: u64 = modes[..scanout as usize]
        .iter()
        .flatten()
        .filter(|&&(w, h)| w > 0 && h > 0)
        .map(|&(w, _)| u64::from(w))
        .sum();
    let total_w: u64 = on().map(|&(w, _)| u64::from(w)).sum();
    let total_h: u64 = on().map(|&(_, h)| u64::from(h)).max().unwrap_or(1);
    let scale = |pos: u64, total: u64| {
        let span = u64::from(TABLET_ABS_MAX) + 1;
        let v = (2 * pos + 1) * span / (2 * total);
        v.min(u64::from(TABLET_ABS_MAX)) as u32
    };
    let x = left + u64::from(x.min(w - 1));
    let y = u64::from(y.min(h - 1));
    Some((scale(x, total_w), scale(y, total_h)))
}

/// A [`ScanoutSink`] that keeps a [`TabletLayout`] up to date with the modes
/// passing through it, and forwards everything to `inner`. The layout is
/// updated first, so a viewer that sees a mode can point into it.
pub struct LayoutTap {
    inner: Arc<dyn ScanoutSink>,
    layout: Arc<TabletLayout>,
}

impl LayoutTap {
    pub fn new(inner: Arc<dyn ScanoutSink>, layout: Arc<TabletLayout>) -> Self {
        Self { inner, layout }
    }
}

impl ScanoutSink for LayoutTap {
    fn set_mode(&self, scanout: u32, mode: Option<(u32, u32)>) {
        self.layout.set_mode(scanout, mode);
        self.inner.set_mode(scanout, mode);
    }

    fn update(&self, scanout: u32, frame: &FrameView<'_>, damage: Rect) {
        self.inner.update(scanout, frame, damage);
    }

    fn set_cursor(&self, scanout: u32, image: Option<&CursorImage>) {
        self.inner.set_cursor(scanout, image);
    }

    fn move_cursor(&self, scanout: u32, x: i32, y: i32) {
        self.inner.move_cursor(scanout, x, y);
    }
}

/// Counters, readable while the device runs.
#[derive(Debug, Default)]
pub struct InputMetrics {
    pub events_queued: AtomicU64,
    pub events_delivered: AtomicU64,
    pub events_dropped: AtomicU64,
}

struct Shared {
    pending: VecDeque<[u8; 8]>,
    wake: Option<EventFd>,
}

/// The sending side, given to the display (cheap to clone).
#[derive(Clone)]
pub struct InputHandle {
    kind: InputKind,
    layout: Arc<TabletLayout>,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<InputMetrics>,
}

fn event(type_: u16, code: u16, value: i32) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..2].copy_from_slice(&type_.to_le_bytes());
    e[2..4].copy_from_slice(&code.to_le_bytes());
    e[4..].copy_from_slice(&value.to_le_bytes());
    e
}

impl InputHandle {
    /// The evdev events for `ev` on this device (empty if it isn't for it).
    fn translate(&self, ev: InputEvent) -> Vec<[u8; 8]> {
        let mut out = match (self.kind, ev) {
            (InputKind::Keyboard, InputEvent::Key { code, pressed })
                if (1..=KEY_MAX_OFFERED).contains(&code) =>
            {
                vec![event(EV_KEY, code, i32::from(pressed))]
            }
            (InputKind::Tablet, InputEvent::PointerMove { scanout, x, y }) => {
                match self.layout.map(scanout, x, y) {
                    // Both at most TABLET_ABS_MAX: no overflow.
                    Some((ax, ay)) => vec![
                        event(EV_ABS, ABS_X, ax as i32),
                        event(EV_ABS, ABS_Y, ay as i32),
                    ],
                    None => Vec::new(),
                }
            }
            (InputKind::Tablet, InputEvent::Button { code, pressed })
                if matches!(code, BTN_LEFT | BTN_RIGHT | BTN_MIDDLE) =>
            {
                vec![event(EV_KEY, code, i32::from(pressed))]
            }
            (InputKind::Tablet, InputEvent::Wheel { delta }) if delta != 0 => {
                vec![event(EV_REL, REL_WHEEL, delta.clamp(-120, 120))]
            }
            _ => Vec::new(),
        };
        if !out.is_empty() {
            out.push(event(EV_SYN, SYN_REPORT, 0));
        }
        out
    }
}

impl InputSink for InputHandle {
    fn send(&self, ev: InputEvent) {
        let events = self.translate(ev);
        if events.is_empty() {
            return;
        }
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            if s.pending.len() >= PENDING_MAX {
                s.pending.pop_front();
                self.metrics.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
            s.pending.push_back(e);
            self.metrics.events_queued.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(wake) = &s.wake {
            let _ = wake.write(1);
        }
    }
}

/// The device's queue logic (eventq 0, statusq 1).
pub struct InputHandler {
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<InputMetrics>,
}

impl InputHandler {
    /// Moves pending events into the guest's event buffers. Returns true
    /// when the driver must be interrupted.
    pub fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = false;
        loop {
            while !s.pending.is_empty() {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                // A head past the queue has nothing to fill and no used
                // entry to give back; the buffers after it still count.
                if head >= queue.size() {
                    crate::guest_warn!(
                        "virtio-input: available ring names head {head}, past the queue"
                    );
                    continue;
                }
                let buf = chain
                    .into_iter()
                    .find(|d| d.is_write_only() && d.len() >= 8)
                    .map(|d| d.addr());
                let len = match (buf, s.pending.front()) {
                    (Some(addr), Some(ev)) if mem.write_slice(ev, addr).is_ok() => {
                        s.pending.pop_front();
                        self.metrics
                            .events_delivered
                            .fetch_add(1, Ordering::Relaxed);
                        8
                    }
                    _ => {
                        crate::guest_warn!("virtio-input: unusable event buffer");
                        0
                    }
                };
                if let Err(e) = queue.add_used(mem, head, len) {
                    crate::guest_warn!("virtio-input: cannot add used entry: {e}");
                    return used;
                }
                used = true;
            }
            if s.pending.is_empty() {
                break;
            }
            // Out of buffers with events waiting: the driver must notify
            // when it adds more (with EVENT_IDX, only a published
            // avail_event makes it kick again). Buffers that arrived
            // meanwhile are used at once.
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    crate::guest_warn!("virtio-input: cannot enable notifications: {e}");
                    break;
                }
            }
        }
        used && queue.needs_notification(mem).unwrap_or(true)
    }
}

impl QueueHandler for InputHandler {
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        match index {
            0 => self.deliver(queue, mem),
            // Status (LEDs): read and ignored.
            _ => drain_queue(queue, mem, |_| 0),
        }
    }
}

/// A virtio-input device.
pub struct InputDevice {
    kind: InputKind,
    layout: Arc<TabletLayout>,
    name: String,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<InputMetrics>,
    select: u8,
    subsel: u8,
    worker: Option<Worker<InputHandler>>,
}

impl InputDevice {
    /// A keyboard, or a tablet over a one-scanout layout that is off until
    /// [`InputDevice::with_layout`] gives it the GPU's.
    pub fn new(kind: InputKind) -> Self {
        let name = match kind {
            InputKind::Keyboard => "PearVisor Keyboard",
            InputKind::Tablet => "PearVisor Tablet",
        };
        Self {
            kind,
            layout: Arc::new(TabletLayout::new(1)),
            name: name.to_string(),
            shared: Arc::new(Mutex::new(Shared {
                pending: VecDeque::new(),
                wake: None,
            })),
            metrics: Arc::default(),
            select: 0,
            subsel: 0,
            worker: None,
        }
    }

    /// The layout a tablet maps pointer positions through (kept up to date
    /// by a [`LayoutTap`] on the GPU's sink).
    pub fn with_layout(mut self, layout: Arc<TabletLayout>) -> Self {
        self.layout = layout;
        self
    }

    /// The handle the display sends input through.
    pub fn handle(&self) -> InputHandle {
        InputHandle {
            kind: self.kind,
            layout: self.layout.clone(),
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
        }
    }

    fn bitmap(codes: impl IntoIterator<Item = u16>) -> Vec<u8> {
        let mut bits = vec![0u8; 128];
        for c in codes {
            if let Some(b) = bits.get_mut(usize::from(c / 8)) {
                *b |= 1 << (c % 8);
            }
        }
        while bits.last() == Some(&0) {
            bits.pop();
        }
        bits
    }

    /// The payload for the current select/subsel (empty: not supported).
    fn payload(&self) -> Vec<u8> {
        match (self.select, self.subsel, self.kind) {
            (CFG_ID_NAME, 0, _) => self.name.as_bytes().to_vec(),
            (CFG_ID_SERIAL, 0, _) => b"pearvisor-0".to_vec(),
            (CFG_ID_DEVIDS, 0, kind) => {
                // bustype BUS_VIRTUAL, vendor, product, version.
                let product: u16 = if kind == InputKind::Keyboard { 1 } else { 2 };
                [0x06u16, 0x1af4, product, 1]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            (CFG_PROP_BITS, 0, InputKind::Tablet) => Self::bitmap([INPUT_PROP_DIRECT]),
            (CFG_EV_BITS, t, InputKind::Keyboard) => match u16::from(t) {
                EV_KEY => Self::bitmap(1..=KEY_MAX_OFFERED),
                EV_REP => Self::bitmap([0, 1]),
                _ => Vec::new(),
            },
            (CFG_EV_BITS, t, InputKind::Tablet) => match u16::from(t) {
                EV_KEY => Self::bitmap([BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                EV_ABS => Self::bitmap([ABS_X, ABS_Y]),
                EV_REL => Self::bitmap([REL_WHEEL]),
                _ => Vec::new(),
            },
            (CFG_ABS_INFO, axis, InputKind::Tablet)
                if u16::from(axis) == ABS_X || u16::from(axis) == ABS_Y =>
            {
                // min, max, fuzz, flat, res
                [0u32, TABLET_ABS_MAX, 0, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// The config space image: select, subsel, size, reserved[5], union[128].
    fn config(&self) -> Vec<u8> {
        let payload = self.payload();
        let size = payload.len().min(128);
        let mut c = vec![0u8; 8 + 128];
        c[0] = self.select;
        c[1] = self.subsel;
        c[2] = size as u8;
        c[8..8 + size].copy_from_slice(&payload[..size]);
        c
    }
}

impl VirtioDevice for InputDevice {
    fn device_type(&self) -> u32 {
        device_type::INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = *b,
                Some(1) => self.subsel = *b,
                _ => {}
            }
        }
    }

    fn metrics(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "events_queued": self.metrics.events_queued.load(Ordering::Relaxed),
            "events_delivered": self.metrics.events_delivered.load(Ordering::Relaxed),
            "events_dropped": self.metrics.events_dropped.load(Ordering::Relaxed),
        }))
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        ctx.prepare_queues(2)?;
        let wake = ctx.queues[0]
            .kick
            .try_clone()
            .map_err(ActivateError::Worker)?;
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).wake = Some(wake);
        let handler = InputHandler {
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
        };
        let thread = match self.kind {
            InputKind::Keyboard => "virtio-input-kbd",
            InputKind::Tablet => "virtio-input-tab",
        };
        self.worker = Some(Worker::spawn(thread, handler, ctx).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<EventFd>> {
        let worker = self.worker.take()?;
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).wake = None;
        worker.stop().map(|(_, kicks)| kicks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn cfg(dev: &mut InputDevice, select: u8, subsel: u8) -> (u8, Vec<u8>) {
        dev.write_config(0, &[select, subsel]);
        let mut c = vec![0u8; 136];
        dev.read_config(0, &mut c);
        (c[2], c[8..8 + usize::from(c[2])].to_vec())
    }

    #[test]
    fn config_space_describes_keyboard_and_tablet() {
        let mut kbd = InputDevice::new(InputKind::Keyboard);
        assert_eq!(cfg(&mut kbd, CFG_ID_NAME, 0).1, b"PearVisor Keyboard");
        let (size, keys) = cfg(&mut kbd, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(size, 32);
        assert_ne!(keys[30 / 8] & (1 << (30 % 8)), 0, "KEY_A");
        assert_eq!(keys[0] & 1, 0, "KEY_RESERVED is not offered");
        assert_eq!(cfg(&mut kbd, CFG_EV_BITS, EV_ABS as u8).0, 0);
        assert_eq!(cfg(&mut kbd, 0x7f, 0).0, 0, "unknown select reads size 0");

        let mut tab = InputDevice::new(InputKind::Tablet);
        let (_, abs) = cfg(&mut tab, CFG_EV_BITS, EV_ABS as u8);
        assert_eq!(abs, vec![0b11]);
        for axis in [ABS_X, ABS_Y] {
            let (size, info) = cfg(&mut tab, CFG_ABS_INFO, axis as u8);
            assert_eq!(size, 20);
            let word = |i: usize| u32::from_le_bytes(info[i * 4..i * 4 + 4].try_into().unwrap());
            assert_eq!((word(0), word(1)), (0, 0x7fff), "axis {axis}: min, max");
        }
        assert_eq!(cfg(&mut tab, CFG_ABS_INFO, 2).0, 0, "no ABS_Z");
        let (_, btn) = cfg(&mut tab, CFG_EV_BITS, EV_KEY as u8);
        assert_ne!(btn[(BTN_LEFT / 8) as usize] & (1 << (BTN_LEFT % 8)), 0);
        assert_eq!(
            cfg(&mut tab, CFG_PROP_BITS, 0).1,
            vec![1 << INPUT_PROP_DIRECT]
        );
    }

    #[test]
    fn events_reach_guest_buffers_with_syn_and_are_bounded() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let layout = Arc::new(TabletLayout::new(1));
        layout.set_mode(0, Some((100, 50)));
        let tab = InputDevice::new(InputKind::Tablet).with_layout(layout);
        let h = tab.handle();
        h.send(InputEvent::Key {
            code: 30,
            pressed: true,
        }); // not a tablet event
        h.send(InputEvent::PointerMove {
            scanout: 0,
            x: 500,
            y: 10,
        });
        h.send(InputEvent::Button {
            code: BTN_LEFT,
            pressed: true,
        });
        assert_eq!(tab.metrics.events_queued.load(Ordering::Relaxed), 5);

        let mock = MockSplitQueue::new(&mem, 16);
        let descs: Vec<RawDescriptor> = (0..4u16)
            .map(|i| {
                RawDescriptor::from(Descriptor::new(
                    0x1000 + u64::from(i) * 0x100,
                    8,
                    VRING_DESC_F_WRITE as u16,
                    0,
                ))
            })
            .collect();
        for (i, d) in descs.iter().enumerate() {
            mock.add_desc_chains(std::slice::from_ref(d), i as u16)
                .unwrap();
        }
        let mut q: Queue = mock.create_queue().unwrap();
        let mut handler = InputHandler {
            shared: tab.shared.clone(),
            metrics: tab.metrics.clone(),
        };
        assert!(handler.deliver(&mut q, &mem));
        let read = |i: u64| {
            let mut e = [0u8; 8];
            mem.read_slice(&mut e, GuestAddress(0x1000 + i * 0x100))
                .unwrap();
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                i32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        };
        // x clamped to the last column (99 of 100), y = 10 of 50, as
        // centres of pixels in 0..=0x7fff.
        assert_eq!(read(0), (EV_ABS, ABS_X, 32604), "clamped to the screen");
        assert_eq!(read(1), (EV_ABS, ABS_Y, 6881));
        assert_eq!(read(2), (EV_SYN, SYN_REPORT, 0));
        assert_eq!(read(3), (EV_KEY, BTN_LEFT, 1));
        assert_eq!(
            tab.shared.lock().unwrap().pending.len(),
            1,
            "SYN waits for a buffer"
        );

        for _ in 0..PENDING_MAX {
            h.send(InputEvent::Wheel { delta: 1 });
        }
        assert_eq!(tab.shared.lock().unwrap().pending.len(), PENDING_MAX);
        assert!(tab.metrics.events_dropped.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn out_of_buffers_with_events_waiting_the_device_asks_for_a_kick() {
        // A driver with EVENT_IDX kicks only when its new buffers pass the
        // used ring's avail_event. A device that fills every buffer and
        // still holds events must publish where it stopped, or the driver
        // refills silently and the events wait forever (typed keys lost
        // after the first 64 events).
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let kbd = InputDevice::new(InputKind::Keyboard);
        let h = kbd.handle();
        for code in [30, 31, 32] {
            h.send(InputEvent::Key {
                code,
                pressed: true,
            });
        }
        let mock = MockSplitQueue::new(&mem, 16);
        for i in 0..4u16 {
            let d = RawDescriptor::from(Descriptor::new(
                0x1000 + u64::from(i) * 0x100,
                8,
                VRING_DESC_F_WRITE as u16,
                0,
            ));
            mock.add_desc_chains(std::slice::from_ref(&d), i).unwrap();
        }
        let mut q: Queue = mock.create_queue().unwrap();
        q.set_event_idx(true);
        let mut handler = InputHandler {
            shared: kbd.shared.clone(),
            metrics: kbd.metrics.clone(),
        };
        handler.deliver(&mut q, &mem);
        assert_eq!(kbd.metrics.events_delivered.load(Ordering::Relaxed), 4);
        assert_eq!(kbd.shared.lock().unwrap().pending.len(), 2);
        // avail_event sits after the used ring's flags, idx and 16 entries.
        let avail_event: u16 = mem
            .read_obj(GuestAddress(mock.used_addr().0 + 4 + 8 * 16))
            .unwrap();
        assert_eq!(avail_event, 4, "the device waits for the fifth buffer");
    }

    #[test]
    fn a_head_past_the_queue_does_not_stop_delivery() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let kbd = InputDevice::new(InputKind::Keyboard);
        let h = kbd.handle();
        h.send(InputEvent::Key {
            code: 30,
            pressed: true,
        });
        let mock = MockSplitQueue::new(&mem, 16);
        for i in 0..3u16 {
            let d = RawDescriptor::from(Descriptor::new(
                0x1000 + u64::from(i) * 0x100,
                8,
                VRING_DESC_F_WRITE as u16,
                0,
            ));
            mock.add_desc_chains(std::slice::from_ref(&d), i).unwrap();
        }
        // The first available entry names head 300 of a 16-entry queue.
        mem.write_obj(300u16, GuestAddress(mock.avail_addr().0 + 4))
            .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let mut handler = InputHandler {
            shared: kbd.shared.clone(),
            metrics: kbd.metrics.clone(),
        };
        handler.deliver(&mut q, &mem);
        assert_eq!(
            kbd.metrics.events_delivered.load(Ordering::Relaxed),
            2,
            "the key and its SYN went into the buffers after the bad head"
        );
    }

    /// Pixel a guest computes back from an absolute value, the way Linux
    /// desktops scale a tablet axis onto `size` pixels.
    fn to_pixel(value: u32, size: u32) -> u32 {
        (u64::from(value) * u64::from(size) / (u64::from(TABLET_ABS_MAX) + 1)) as u32
    }

    #[test]
    fn one_scanout_maps_pixels_to_their_centres() {
        let modes = [Some((1280, 800))];
        assert_eq!(map_to_tablet(&modes, 0, 0, 0), Some((12, 20)));
        assert_eq!(map_to_tablet(&modes, 0, 640, 400), Some((16396, 16404)));
        assert_eq!(
            map_to_tablet(&modes, 0, 1279, 799),
            Some((32755, 32747)),
            "the last pixel stays inside the range"
        );
        assert_eq!(
            map_to_tablet(&modes, 0, 5000, 5000),
            map_to_tablet(&modes, 0, 1279, 799),
            "clamped to the scanout"
        );
        for (w, h) in [
            (640, 480),
            (1280, 800),
            (1920, 1080),
            (3840, 2160),
            (1, 1),
            (16384, 3),
        ] {
            let modes = [Some((w, h))];
            for x in (0..w).step_by((w as usize / 97).max(1)).chain([w - 1]) {
                let (ax, ay) = map_to_tablet(&modes, 0, x, h - 1).unwrap();
                assert!(ax <= TABLET_ABS_MAX && ay <= TABLET_ABS_MAX);
                assert_eq!(to_pixel(ax, w), x, "{w}x{h}: x {x} round trip");
                assert_eq!(to_pixel(ay, h), h - 1, "{w}x{h}: y round trip");
            }
        }
    }

    #[test]
    fn scanouts_lie_side_by_side_left_to_right() {
        // 1280x800 and 1024x768: 2304 x 800 in all.
        let modes = [Some((1280, 800)), Some((1024, 768))];
        let (w, h) = (2304, 800);
        let at = |s, x, y| {
            let (ax, ay) = map_to_tablet(&modes, s, x, y).unwrap();
            (to_pixel(ax, w), to_pixel(ay, h))
        };
        assert_eq!(at(0, 0, 0), (0, 0));
        assert_eq!(at(0, 1279, 799), (1279, 799));
        assert_eq!(
            at(1, 0, 0),
            (1280, 0),
            "scanout 1 starts right of scanout 0"
        );
        assert_eq!(at(1, 100, 50), (1380, 50));
        assert_eq!(at(1, 1023, 767), (2303, 767), "top-aligned, not stretched");
        assert_eq!(at(1, 2000, 2000), (2303, 767), "clamped to its own scanout");
        // Left of scanout 1's first column is scanout 0's last.
        let (edge0, _) = map_to_tablet(&modes, 0, 1279, 0).unwrap();
        let (edge1, _) = map_to_tablet(&modes, 1, 0, 0).unwrap();
        assert!(edge0 < edge1);

        // Three scanouts, the middle one off: it takes no room.
        let modes = [Some((800, 600)), None, Some((800, 600))];
        let (ax, _) = map_to_tablet(&modes, 2, 0, 0).unwrap();
        assert_eq!(to_pixel(ax, 1600), 800);
        assert_eq!(map_to_tablet(&modes, 1, 0, 0), None, "off");
        assert_eq!(map_to_tablet(&modes, 3, 0, 0), None, "no such scanout");
        assert_eq!(
            map_to_tablet(&[Some((0, 600))], 0, 0, 0),
            None,
            "empty mode"
        );
        assert_eq!(map_to_tablet(&[], 0, 0, 0), None);
        // Scanout 0 off: scanout 1 is alone and spans the whole space.
        let modes = [None, Some((640, 480))];
        assert_eq!(map_to_tablet(&modes, 1, 0, 0), Some((25, 34)));
        assert_eq!(
            map_to_tablet(&modes, 1, 639, 479),
            map_to_tablet(&[Some((640, 480))], 0, 639, 479)
        );
        // Huge modes do not overflow.
        let modes = [Some((u32::MAX, u32::MAX)), Some((u32::MAX, 1))];
        let (ax, ay) = map_to_tablet(&modes, 1, u32::MAX, u32::MAX).unwrap();
        assert_eq!((ax, ay), (TABLET_ABS_MAX, 0));
    }

    /// Records what a sink behind a [`LayoutTap`] gets.
    #[derive(Default)]
    struct ModeLog(Mutex<Vec<ModeCall>>);

    type ModeCall = (u32, Option<(u32, u32)>);

    impl ScanoutSink for ModeLog {
        fn set_mode(&self, scanout: u32, mode: Option<(u32, u32)>) {
            self.0.lock().unwrap().push((scanout, mode));
        }
        fn update(&self, _: u32, _: &FrameView<'_>, _: Rect) {}
        fn set_cursor(&self, _: u32, _: Option<&CursorImage>) {}
        fn move_cursor(&self, _: u32, _: i32, _: i32) {}
    }

    #[test]
    fn the_tap_keeps_the_tablet_layout_and_pointer_moves_follow_the_scanout() {
        let layout = Arc::new(TabletLayout::new(2));
        let inner = Arc::new(ModeLog::default());
        let tap = LayoutTap::new(inner.clone(), layout.clone());
        let tab = InputDevice::new(InputKind::Tablet).with_layout(layout.clone());
        let h = tab.handle();
        let pending = || -> Vec<(u16, u16, i32)> {
            let mut s = tab.shared.lock().unwrap();
            s.pending
                .drain(..)
                .map(|e| {
                    (
                        u16::from_le_bytes([e[0], e[1]]),
                        u16::from_le_bytes([e[2], e[3]]),
                        i32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                    )
                })
                .collect()
        };
        let mv = |scanout, x, y| InputEvent::PointerMove { scanout, x, y };

        h.send(mv(0, 10, 10));
        assert!(pending().is_empty(), "nothing is shown yet: no event");
        tap.set_mode(0, Some((640, 480)));
        tap.set_mode(1, Some((640, 480)));
        tap.set_mode(7, Some((640, 480))); // no such scanout: forwarded, ignored here
        assert_eq!(
            *inner.0.lock().unwrap(),
            [
                (0, Some((640, 480))),
                (1, Some((640, 480))),
                (7, Some((640, 480)))
            ]
        );
        h.send(mv(1, 320, 240));
        let (ax, ay) = ((2 * 960 + 1) * 32768 / 2560, 16418);
        assert_eq!(
            pending(),
            [
                (EV_ABS, ABS_X, ax),
                (EV_ABS, ABS_Y, ay),
                (EV_SYN, SYN_REPORT, 0)
            ],
            "the middle of the right-hand half"
        );
        assert_eq!(to_pixel(ax as u32, 1280), 960);
        h.send(mv(0, 320, 240));
        assert_eq!(to_pixel(pending()[0].2 as u32, 1280), 320);
        // Scanout 0 goes off: scanout 1 now spans the whole width.
        tap.set_mode(0, None);
        h.send(mv(1, 320, 240));
        assert_eq!(to_pixel(pending()[0].2 as u32, 640), 320);
        h.send(mv(0, 320, 240));
        assert!(pending().is_empty(), "a move on an off scanout is dropped");
    }
}
