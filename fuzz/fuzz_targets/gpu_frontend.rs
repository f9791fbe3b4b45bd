//! virtio-gpu's whole request path with the 2D backend: the input is a
//! guest's control queue as it sits in guest memory — the descriptor table
//! (raw: any address, length, flags and next index, indirect tables and
//! loops included), the available ring, and 64 KiB of request bytes at
//! 0x10000 — and the device processes it twice (the same ring, notified
//! again). It must never panic, hang or allocate without bound, never
//! complete more chains than the driver made available, and only hand the
//! display frames that hold the damage it reports.
//!
//! Input layout: see `common/guest_queue.rs`.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pv_devices::virtio::worker::QueueHandler;
use pv_display::{CursorImage, FrameView, Rect, ScanoutSink};
use pv_gpu::virtio_gpu::{Backend2d, DisplayControl, Frontend, GpuMetrics, GpuParams};

#[path = "common/guest_queue.rs"]
mod guest_queue;

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
    let Some((mem, mut queue, count)) = guest_queue::build(data) else {
        return;
    };

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
    let used = guest_queue::used(&mem);
    assert!(used as usize <= count, "{used} used of {count} available");
    // Notified again: still never more than was made available.
    fe.process_queue(0, &mut queue, &mem);
    let again = guest_queue::used(&mem);
    assert!(again as usize <= count, "{again} used of {count} available");
    fe.shutdown();
});
