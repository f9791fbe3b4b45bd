//! A virtqueue as a hostile driver leaves it in guest memory, built from
//! fuzz input: the raw descriptor table (16 descriptors x 16 bytes: any
//! address, length, flags and next index, so indirect tables, loops and
//! out-of-range buffers included), one byte with the number of available
//! entries, that many head indices, then up to 64 KiB of bytes at 0x10000
//! (requests, data, indirect tables).

use pv_devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub const QSIZE: u16 = 16;
pub const DESC: u64 = 0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
pub const DATA: u64 = 0x1_0000;
pub const DATA_LEN: usize = 0x1_0000;
pub const MEM: usize = 1 << 20;

/// Guest memory holding the queue, the queue, and how many entries the
/// driver made available; None when the input is too short.
pub fn build(data: &[u8]) -> Option<(GuestMemory, Queue, usize)> {
    let table = QSIZE as usize * 16;
    if data.len() < table + 1 {
        return None;
    }
    let (desc, rest) = data.split_at(table);
    let count = rest[0] as usize % (QSIZE as usize + 1);
    let rest = &rest[1..];
    if rest.len() < count {
        return None;
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
    Some((mem, queue, count))
}

/// The used ring's index.
pub fn used(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}
