//! virtio-blk's whole request path: a hostile driver's request queue (see
//! `common/guest_queue.rs` for the input layout) against a 1 MiB disk
//! image. Every available chain must be answered or dropped without a
//! panic, a hang or an allocation beyond the transfer cap, and never more
//! chains completed than were made available.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pv_devices::virtio::block::{BlockHandler, BlockMetrics, Disk};
use pv_devices::virtio::worker::QueueHandler;

#[path = "common/guest_queue.rs"]
mod guest_queue;
#[path = "common/scratch.rs"]
mod scratch;

const DISK_BYTES: u64 = 1 << 20;

/// One scratch disk image for the whole run (its content does not matter).
fn disk() -> Arc<Disk> {
    static DISK: OnceLock<Arc<Disk>> = OnceLock::new();
    DISK.get_or_init(|| {
        let file = scratch::scratch_image("blk", DISK_BYTES);
        Arc::new(Disk::new(
            file,
            DISK_BYTES,
            false,
            *b"pv-fuzz-disk\0\0\0\0\0\0\0\0",
        ))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((mem, mut queue, count)) = guest_queue::build(data) else {
        return;
    };
    let mut handler = BlockHandler::new(disk(), Arc::new(BlockMetrics::default()));
    handler.process_queue(0, &mut queue, &mem);
    let used = guest_queue::used(&mem);
    assert!(used as usize <= count, "{used} used of {count} available");
});
