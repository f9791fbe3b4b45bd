//! virtio-input (virtio 1.3 §5.8): a keyboard and an absolute tablet that
//! carry a viewer's keyboard and mouse into the guest.
//!
//! The display side calls [`InputHandle::send`] (it implements
//! [`pv_display::InputSink`]); events are queued (bounded: the oldest are
//! dropped when the guest stops reading) and the device's worker is woken
//! through the event queue's own kick eventfd, so no extra thread or fd is
//! needed. Each event is followed by a `SYN_REPORT`, as evdev expects.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pv_display::{InputEvent, InputSink};
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

/// Which device this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    /// Absolute pointer over a `width` x `height` screen.
    Tablet {
        width: u32,
        height: u32,
    },
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
            (InputKind::Tablet { width, height }, InputEvent::PointerMove { x, y, .. }) => vec![
                event(EV_ABS, ABS_X, x.min(width.saturating_sub(1)) as i32),
                event(EV_ABS, ABS_Y, y.min(height.saturating_sub(1)) as i32),
            ],
            (InputKind::Tablet { .. }, InputEvent::Button { code, pressed })
                if matches!(code, BTN_LEFT | BTN_RIGHT | BTN_MIDDLE) =>
            {
                vec![event(EV_KEY, code, i32::from(pressed))]
            }
            (InputKind::Tablet { .. }, InputEvent::Wheel { delta }) if delta != 0 => {
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
        while !s.pending.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
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
                    log::warn!("virtio-input: unusable event buffer");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::warn!("virtio-input: cannot add used entry: {e}");
                break;
            }
            used = true;
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
    name: String,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<InputMetrics>,
    select: u8,
    subsel: u8,
    worker: Option<Worker<InputHandler>>,
}

impl InputDevice {
    pub fn new(kind: InputKind) -> Self {
        let name = match kind {
            InputKind::Keyboard => "PearVisor Keyboard",
            InputKind::Tablet { .. } => "PearVisor Tablet",
        };
        Self {
            kind,
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

    /// The handle the display sends input through.
    pub fn handle(&self) -> InputHandle {
        InputHandle {
            kind: self.kind,
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
            (CFG_PROP_BITS, 0, InputKind::Tablet { .. }) => Self::bitmap([INPUT_PROP_DIRECT]),
            (CFG_EV_BITS, t, InputKind::Keyboard) => match u16::from(t) {
                EV_KEY => Self::bitmap(1..=KEY_MAX_OFFERED),
                EV_REP => Self::bitmap([0, 1]),
                _ => Vec::new(),
            },
            (CFG_EV_BITS, t, InputKind::Tablet { .. }) => match u16::from(t) {
                EV_KEY => Self::bitmap([BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                EV_ABS => Self::bitmap([ABS_X, ABS_Y]),
                EV_REL => Self::bitmap([REL_WHEEL]),
                _ => Vec::new(),
            },
            (CFG_ABS_INFO, axis, InputKind::Tablet { width, height })
                if u16::from(axis) == ABS_X || u16::from(axis) == ABS_Y =>
            {
                let max = if u16::from(axis) == ABS_X {
                    width
                } else {
                    height
                };
                // min, max, fuzz, flat, res
                [0u32, max.saturating_sub(1), 0, 0, 0]
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
            InputKind::Tablet { .. } => "virtio-input-tab",
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

        let mut tab = InputDevice::new(InputKind::Tablet {
            width: 1280,
            height: 800,
        });
        let (_, abs) = cfg(&mut tab, CFG_EV_BITS, EV_ABS as u8);
        assert_eq!(abs, vec![0b11]);
        let (size, info) = cfg(&mut tab, CFG_ABS_INFO, ABS_Y as u8);
        assert_eq!(size, 20);
        assert_eq!(
            u32::from_le_bytes([info[4], info[5], info[6], info[7]]),
            799
        );
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
        let tab = InputDevice::new(InputKind::Tablet {
            width: 100,
            height: 50,
        });
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
        assert_eq!(read(0), (EV_ABS, ABS_X, 99), "clamped to the screen");
        assert_eq!(read(1), (EV_ABS, ABS_Y, 10));
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
}
