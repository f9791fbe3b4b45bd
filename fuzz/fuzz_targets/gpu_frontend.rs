//! virtio-gpu's whole request path with the 2D backend: the input is a
//! guest's control queue as it sits in guest memory — the descriptor table
//! (raw: any address, length, flags and next index, indirect tables and
//! loops included), the available ring, and 64 KiB of request bytes at
//! 0x10000 — and the device processes it twice (the same ring, notified
//! again). It must never panic, hang or allocate without bound, never
//! complete more chains than the driver made available, and only hand the
//! display frames that hold the damage it reports.
//!
//! Input layout: 16 descriptors x 16 bytes (the table), one byte with the
//! number of available entries, that many bytes of head indices, then the
//! bytes copied to 0x10000 (requests, backing data, indirect tables).

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pv_devices::virtio::worker::QueueHandler;
use pv_devices::GuestMemory;
use pv_display::{CursorImage, FrameView, Rect, ScanoutSink};
use pv_gpu::virtio_gpu::{Backend2d, DisplayControl, Frontend, GpuMetrics, GpuParams};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 16;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DATA: u64 = 0x1_0000;
const DATA_LEN: usize = 0x1_0000;
const MEM: usize = 1 << 20;

/// Reads every frame it is given (a display would).
struct TouchingSink;

impl ScanoutSink for TouchingSink {
    fn set_mode(&self, _: u32, _: Option<(u32, u32)>) {}
    fn update(&self, _: u32, frame: &FrameView<'_>, damage: Rect) {
        // The damaged rows must be inside the frame the device hands over.
        let row = u64::from(damage.x + damage.width) * 4;
        let last = u64::from(damage.y + damage.height).saturating_sub(1);
        let end = last * u64::from(frame.stride) + row;
        assert!(
            damage.width == 0 || damage.height == 0 || end <= frame.data.len() as u64,
            "damage {damage:?} outside a frame of {} bytes (stride {})",
            frame.data.len(),
            frame.stride
        );
    }
    fn set_cursor(&self, _: u32, image: Option<&CursorImage>) {
        if let Some(c) = image {
            assert_eq!(
                c.rgba.len() as u64,
                u64::from(c.width) * u64::from(c.height) * 4
            );
        }
    }
    fn move_cursor(&self, _: u32, _: i32, _: i32) {}
}

fuzz_target!(|data: &[u8]| {
    let table = QSIZE as usize * 16;
    if data.len() < table + 1 {
        return;
    }
    let (desc, rest) = data.split_at(table);
    let count = rest[0] as usize % (QSIZE as usize + 1);
    let rest = &rest[1..];
    if rest.len() < count {
        return;
    }
    let (heads, payload) = rest.split_at(count);

    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory");
    mem.write_slice(desc, GuestAddress(DESC)).unwrap();
    for (i, &h) in heads.iter().enumerate() {
        let at = GuestAddress(AVAIL + 4 + i as u64 * 2);
        mem.write_obj(u16::from(h) % QSIZE, at).unwrap();
    }
    mem.write_obj(count as u16, GuestAddress(AVAIL + 2))
        .unwrap();
    let n = payload.len().min(DATA_LEN);
    mem.write_slice(&payload[..n], GuestAddress(DATA)).unwrap();

    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_size(QSIZE);
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);

    let params = GpuParams {
        max_hostmem: 16 << 20,
        ..GpuParams::default()
    };
    let mut fe = Frontend::new(
        Box::new(Backend2d::new(params.max_hostmem)),
        DisplayControl::new(&params),
        Arc::new(TouchingSink),
        Arc::new(GpuMetrics::default()),
        true,
    );
    fe.process_queue(0, &mut queue, &mem);
    let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert!(used as usize <= count, "{used} used of {count} available");
    // Notified again: still never more than was made available.
    fe.process_queue(0, &mut queue, &mem);
    let again: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert!(again as usize <= count, "{again} used of {count} available");
    fe.shutdown();
});
