//! virtio-gpu's 3D command handling and fence bookkeeping, without a
//! renderer: a hostile control queue (see `common/guest_queue.rs`) against
//! the frontend over [`ManualFences`], a backend whose Venus contexts take
//! any command stream and whose fences signal only when told. After the
//! queue is processed, every fence the frontend armed is signalled (in
//! reverse order) and the device must then have completed every chain it
//! held: no fenced chain may be left waiting (a context destroyed with
//! fences pending, decreasing ids, rings of unknown contexts...), nothing
//! may panic, and never more chains complete than were made available.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pv_devices::virtio::worker::QueueHandler;
use pv_display::{CursorImage, FrameView, Rect, ScanoutSink};
use pv_gpu::virtio_gpu::manual3d::ManualFences;
use pv_gpu::virtio_gpu::{DisplayControl, Frontend, GpuMetrics, GpuParams};

#[path = "common/guest_queue.rs"]
mod guest_queue;

struct NullSink;

impl ScanoutSink for NullSink {
    fn set_mode(&self, _: u32, _: Option<(u32, u32)>) {}
    fn update(&self, _: u32, _: &FrameView<'_>, _: Rect) {}
    fn set_cursor(&self, _: u32, _: Option<&CursorImage>) {}
    fn move_cursor(&self, _: u32, _: i32, _: i32) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((mem, mut queue, count)) = guest_queue::build(data) else {
        return;
    };
    let params = GpuParams::default();
    let (backend, fences) = ManualFences::new(16 << 20);
    let mut fe = Frontend::new(
        Box::new(backend),
        DisplayControl::new(&params),
        Arc::new(NullSink),
        Arc::new(GpuMetrics::default()),
        true,
    );
    fe.process_queue(0, &mut queue, &mem);
    let armed = fences.armed.lock().unwrap().clone();
    for &(timeline, id) in armed.iter().rev() {
        fences.signal(timeline, id);
    }
    fe.process_event(std::slice::from_mut(&mut queue), &mem);
    assert_eq!(
        fe.pending_fences(),
        0,
        "chains still held after every armed fence signalled: {armed:?}"
    );
    let used = guest_queue::used(&mem);
    assert!(used as usize <= count, "{used} used of {count} available");
});
