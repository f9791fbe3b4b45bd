//! Randomized adversarial tests: a hostile driver feeds the frontend garbage
//! (random commands with random ids, sizes, rectangles, scanouts and backing
//! anywhere; truncated and oversized requests; random descriptor layouts,
//! indirect tables and ring indices) and the device must neither panic nor
//! hang nor hold more than `max_hostmem`, and must still answer a
//! well-formed request afterwards.
//!
//! Everything is deterministic: a small xorshift generator with fixed seeds
//! (a failure names its seed and step). The command-stream test also keeps
//! a model of the resources and predicts every response type and the host
//! memory held, so wrong accounting is caught as well as crashes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use pv_devices::virtio::worker::{drain_queue, QueueHandler};
use pv_devices::virtio::VirtioDevice;
use pv_devices::GuestMemory;
use pv_display::store::Display;
use pv_display::{CursorImage, FrameView, Rect, ScanoutSink};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::protocol::{encode, *};
use super::resources::BACKING_ENTRY_COST;
use super::scanout::MAX_CURSOR_SIZE;
use super::*;

/// xorshift64* (Vigna): small, fast and good enough to pick test cases.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True once in `n` times.
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// Guest memory: two adjacent regions (runs may span them), a hole, and a
// small region beyond the hole.
const SPLIT: u64 = 0x80_0000;
const MEM_END: u64 = 0x100_0000;
const FAR: u64 = 0x200_0000;
const FAR_LEN: u64 = 0x1_0000;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), SPLIT as usize),
        (GuestAddress(SPLIT), (MEM_END - SPLIT) as usize),
        (GuestAddress(FAR), FAR_LEN as usize),
    ])
    .unwrap()
}

// Driver-side layout. Device-writable buffers never point below SAFE so the
// rings and indirect tables stay the driver's (a guest that scribbles on
// its own rings only hurts itself; the ring test covers garbage rings).
const QSIZE: u16 = 64;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const TABLES: u64 = 0x3000;
const SAFE: u64 = 0x1_0000;
const REQ: u64 = 0x1_0000;
const RESP: u64 = 0x8_0000;
const BACKING: u64 = 0x10_0000;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// The driver's side of one split queue.
struct Ring<'a> {
    mem: &'a GuestMemory,
    queue: Queue,
    next_desc: u16,
    avail: u16,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        mem.write_slice(&[0u8; 0x1000], GuestAddress(AVAIL_RING))
            .unwrap();
        mem.write_slice(&[0u8; 0x1000], GuestAddress(USED_RING))
            .unwrap();
        Self {
            mem,
            queue,
            next_desc: 0,
            avail: 0,
        }
    }

    fn write_desc(&self, table: u64, index: u16, d: Descriptor) {
        self.mem
            .write_obj(
                RawDescriptor::from(d),
                GuestAddress(table + u64::from(index) * 16),
            )
            .unwrap();
    }

    /// Makes the chain headed by `head` available.
    fn post(&mut self, head: u16) {
        let slot = u64::from(self.avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + slot * 2))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Puts `descs` (address, length, flags) in the descriptor table as one
    /// chain (NEXT added between them) and makes it available.
    fn chain(&mut self, descs: &[(u64, u32, u16)]) {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let next = (idx + 1) % QSIZE;
            let more = if i + 1 < descs.len() { DESC_F_NEXT } else { 0 };
            self.write_desc(
                DESC_TABLE,
                idx,
                Descriptor::new(addr, len, flags | more, next),
            );
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        self.post(head);
    }

    /// The same chain through an indirect table at `table`.
    fn indirect(&mut self, table: u64, descs: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let more = if i + 1 < descs.len() { DESC_F_NEXT } else { 0 };
            self.write_desc(
                table,
                i as u16,
                Descriptor::new(addr, len, flags | more, i as u16 + 1),
            );
        }
        let head = self.next_desc;
        self.write_desc(
            DESC_TABLE,
            head,
            Descriptor::new(table, descs.len() as u32 * 16, DESC_F_INDIRECT, 0),
        );
        self.next_desc = (head + 1) % QSIZE;
        self.post(head);
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// Runs the frontend; returns the used lengths of the chains it used.
    fn run(&mut self, fe: &mut Frontend) -> Vec<u32> {
        let before = self.used_idx();
        fe.process_queue(0, &mut self.queue, self.mem);
        let n = self.used_idx().wrapping_sub(before);
        (0..n)
            .map(|i| {
                let slot = u64::from(before.wrapping_add(i) % QSIZE);
                let at = USED_RING + 4 + slot * 8 + 4;
                self.mem.read_obj::<u32>(GuestAddress(at)).unwrap()
            })
            .collect()
    }

    /// Runs the frontend over the queue as `process_queue` does, and returns
    /// what it answered for every chain it handled (right even when garbage
    /// chains made the device write over the rings, which is the guest's
    /// own business).
    fn drain(&mut self, fe: &mut Frontend) -> Vec<u32> {
        let mut lens = Vec::new();
        let mem = self.mem;
        drain_queue(&mut self.queue, mem, |chain| {
            let n = fe.process_chain(chain, mem);
            lens.push(n);
            n
        });
        lens
    }

    /// Sends a well-formed request with a `resp_len`-byte response buffer;
    /// returns the response.
    fn send(&mut self, fe: &mut Frontend, req: &[u8], resp_len: u32) -> Vec<u8> {
        self.mem.write_slice(req, GuestAddress(REQ)).unwrap();
        self.chain(&[(REQ, req.len() as u32, 0), (RESP, resp_len, DESC_F_WRITE)]);
        let used = self.run(fe);
        assert_eq!(used.len(), 1);
        let mut resp = vec![0u8; used[0] as usize];
        self.mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
        resp
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The lengths a response can have: nothing, a header, display info, EDID.
fn is_response_len(n: u32) -> bool {
    [0, HDR_LEN, DISPLAY_INFO_LEN, EDID_RESP_LEN].contains(&(n as usize))
}

/// A sink that checks the [`ScanoutSink`] contract on every call (modes are
/// real changes, frames match the mode and hold their rows, damage lies in
/// the frame, cursors are small and consistent) and forwards everything to
/// the real headless store, which must cope too.
struct CheckingSink {
    modes: Mutex<Vec<Option<(u32, u32)>>>,
    store: Display,
    frames: Mutex<Vec<(u32, Vec<u8>)>>,
}

impl CheckingSink {
    fn new(n: u32) -> Self {
        Self {
            modes: Mutex::new(vec![None; n as usize]),
            store: Display::new(n),
            frames: Mutex::new(Vec::new()),
        }
    }

    fn mode(&self, scanout: u32) -> Option<(u32, u32)> {
        self.modes.lock().unwrap()[scanout as usize]
    }
}

impl ScanoutSink for CheckingSink {
    fn set_mode(&self, scanout: u32, mode: Option<(u32, u32)>) {
        let mut modes = self.modes.lock().unwrap();
        let slot = modes
            .get_mut(scanout as usize)
            .unwrap_or_else(|| panic!("set_mode on scanout {scanout}"));
        assert_ne!(*slot, mode, "set_mode without a change");
        if let Some((w, h)) = mode {
            assert!(w > 0 && h > 0, "empty mode {w}x{h}");
        }
        *slot = mode;
        drop(modes);
        self.store.set_mode(scanout, mode);
    }

    fn update(&self, scanout: u32, frame: &FrameView<'_>, damage: Rect) {
        assert_eq!(
            self.mode(scanout),
            Some((frame.width, frame.height)),
            "frame of another size than the mode"
        );
        let row = u64::from(frame.width) * 4;
        assert!(u64::from(frame.stride) >= row);
        let need = (u64::from(frame.height) - 1) * u64::from(frame.stride) + row;
        assert!(frame.data.len() as u64 >= need, "frame data too short");
        assert!(!damage.is_empty(), "empty damage");
        assert!(u64::from(damage.x) + u64::from(damage.width) <= u64::from(frame.width));
        assert!(u64::from(damage.y) + u64::from(damage.height) <= u64::from(frame.height));
        let mut pixels = Vec::with_capacity((row * u64::from(frame.height)) as usize);
        for y in 0..frame.height as usize {
            let start = y * frame.stride as usize;
            pixels.extend_from_slice(&frame.data[start..start + row as usize]);
        }
        self.frames.lock().unwrap().push((scanout, pixels));
        self.store.update(scanout, frame, damage);
    }

    fn set_cursor(&self, scanout: u32, image: Option<&CursorImage>) {
        assert!((scanout as usize) < self.modes.lock().unwrap().len());
        if let Some(c) = image {
            assert!(c.width > 0 && c.height > 0);
            assert!(c.width <= MAX_CURSOR_SIZE && c.height <= MAX_CURSOR_SIZE);
            assert_eq!(c.rgba.len() as u64, u64::from(c.width * c.height) * 4);
            assert!(c.hot_x < c.width && c.hot_y < c.height);
        }
        self.store.set_cursor(scanout, image);
    }

    fn move_cursor(&self, scanout: u32, x: i32, y: i32) {
        assert!((scanout as usize) < self.modes.lock().unwrap().len());
        self.store.move_cursor(scanout, x, y);
    }
}

struct Setup {
    fe: Frontend,
    sink: Arc<CheckingSink>,
    metrics: Arc<GpuMetrics>,
    display: DisplayControl,
    params: GpuParams,
}

fn setup(params: GpuParams, edid: bool) -> Setup {
    params.validate().unwrap();
    let sink = Arc::new(CheckingSink::new(params.displays));
    let metrics = Arc::new(GpuMetrics::default());
    let display = DisplayControl::new(&params);
    let fe = Frontend::new(
        Box::new(Backend2d::new(params.max_hostmem)),
        display.clone(),
        sink.clone(),
        metrics.clone(),
        edid,
    );
    Setup {
        fe,
        sink,
        metrics,
        display,
        params,
    }
}

fn host_bytes(m: &GpuMetrics) -> u64 {
    m.host_bytes.load(std::sync::atomic::Ordering::Relaxed)
}

fn resources(m: &GpuMetrics) -> u64 {
    m.resources.load(std::sync::atomic::Ordering::Relaxed)
}

/// The pool most ids come from, so commands meet live resources.
const IDS: u32 = 12;

fn gen_id(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0 => rng.pick(&[0, u32::MAX, 1 << 31]),
        1 => rng.u32(),
        _ => rng.range(1, u64::from(IDS)) as u32,
    }
}

fn gen_format(rng: &mut Rng) -> u32 {
    if rng.one_in(6) {
        let any = rng.u32();
        rng.pick(&[0, 5, 66, 100, 135, u32::MAX, any])
    } else {
        rng.pick(&[1, 2, 3, 4, 67, 68, 121, 134])
    }
}

/// A resource side: mostly cursor-sized, sometimes large, sometimes absurd.
fn gen_side(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0 => rng.pick(&[0, 1, 63, 64, 65, 0x3fff_ffff, 0x4000_0000, u32::MAX]),
        1 | 2 => rng.range(1, 1200) as u32,
        _ => rng.range(1, 80) as u32,
    }
}

fn gen_coord(rng: &mut Rng) -> u32 {
    match rng.below(8) {
        0 => rng.pick(&[u32::MAX, u32::MAX - 1, 1 << 31, 1 << 30]),
        1 => rng.u32(),
        _ => rng.range(0, 100) as u32,
    }
}

fn gen_rect(rng: &mut Rng) -> Rect {
    Rect::new(
        gen_coord(rng),
        gen_coord(rng),
        gen_coord(rng),
        gen_coord(rng),
    )
}

fn gen_scanout(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0 => rng.pick(&[3, 16, 17, u32::MAX, 1 << 31]),
        1 => rng.u32(),
        2..=4 => rng.range(0, 2) as u32,
        _ => 0,
    }
}

fn gen_pos(rng: &mut Rng) -> i32 {
    match rng.below(6) {
        0 => rng.pick(&[i32::MIN, i32::MAX, -1, -64, 0]),
        1 => rng.u32() as i32,
        _ => rng.range(0, 2000) as i32 - 100,
    }
}

/// An address that may be anywhere: in memory, across the region split,
/// across the end of memory, in the hole, in the far region, at the top of
/// the address space.
fn gen_addr(rng: &mut Rng, len: u64) -> u64 {
    let back = |rng: &mut Rng, end: u64| end.wrapping_sub(rng.below(len.min(1 << 20) + 2));
    match rng.below(10) {
        0 => back(rng, SPLIT),
        1 => back(rng, MEM_END),
        2 => FAR + rng.below(FAR_LEN),
        3 => back(rng, FAR + FAR_LEN),
        4 => MEM_END + rng.below(FAR - MEM_END),
        5 => u64::MAX - rng.below(1 << 16),
        6 => rng.next(),
        _ => rng.range(0, MEM_END - 1),
    }
}

fn gen_len(rng: &mut Rng) -> u32 {
    match rng.below(8) {
        0 => 0,
        1 => rng.pick(&[1, 4095, 4096, 4097, u32::MAX, u32::MAX - 4095, 1 << 31]),
        2 => rng.u32(),
        _ => rng.range(1, 3 * 4096) as u32,
    }
}

/// Backing entries: random runs anywhere, or runs in guest memory covering
/// `bytes` (in pieces, some across the region split).
fn gen_entries(rng: &mut Rng, bytes: Option<u64>) -> Vec<(u64, u32)> {
    if let (Some(bytes), false) = (bytes, rng.one_in(3)) {
        let mut out = Vec::new();
        let mut left = bytes.min(4 << 20);
        while left > 0 {
            let n = if rng.one_in(3) {
                left
            } else {
                rng.range(1, left.min(64 << 10))
            };
            let base = if rng.one_in(4) {
                SPLIT - rng.below(n + 1)
            } else {
                BACKING + rng.below(MEM_END - BACKING - n)
            };
            out.push((base, n as u32));
            // Sometimes the next run continues this one (merged).
            left -= n;
            if left > 0 && rng.one_in(4) {
                let m = rng.range(1, left.min(8192));
                out.push((base + n, m as u32));
                left -= m;
            }
            if out.len() > 64 {
                break;
            }
        }
        if rng.one_in(8) {
            out.insert(
                rng.below(out.len() as u64 + 1) as usize,
                (gen_addr(rng, 0), 0),
            );
        }
        return out;
    }
    let n = match rng.below(10) {
        0 => 0,
        1 => rng.range(100, 600),
        _ => rng.range(1, 8),
    };
    (0..n)
        .map(|_| {
            let len = gen_len(rng);
            (gen_addr(rng, u64::from(len)), len)
        })
        .collect()
}

/// A live resource (id, width, height) to aim at, most of the time.
fn gen_target(rng: &mut Rng, live: &[(u32, u32, u32)]) -> Option<(u32, u32, u32)> {
    (!live.is_empty() && !rng.one_in(3)).then(|| rng.pick(live))
}

/// A rectangle inside a `w` x `h` resource (often all of it).
fn gen_inside(rng: &mut Rng, w: u32, h: u32) -> Rect {
    if rng.one_in(3) {
        return Rect::new(0, 0, w, h);
    }
    let x = rng.below(u64::from(w)) as u32;
    let y = rng.below(u64::from(h)) as u32;
    let width = rng.range(1, u64::from(w - x)) as u32;
    let height = rng.range(1, u64::from(h - y)) as u32;
    Rect::new(x, y, width, height)
}

/// One request's bytes: a command with random fields (aimed at live
/// resources `live`, as (id, width, height), most of the time), or garbage;
/// then perhaps a random header, truncation or trailing bytes.
fn gen_request(rng: &mut Rng, live: &[(u32, u32, u32)]) -> Vec<u8> {
    let target = gen_target(rng, live);
    let id = match target {
        Some((id, _, _)) => id,
        None => gen_id(rng),
    };
    let rect = match target {
        Some((_, w, h)) if !rng.one_in(4) => gen_inside(rng, w, h),
        _ => gen_rect(rng),
    };
    let mut req = match rng.below(20) {
        0..=2 => {
            encode::resource_create_2d(gen_id(rng), gen_format(rng), gen_side(rng), gen_side(rng))
        }
        3 => encode::resource_unref(id),
        4..=6 => {
            let bytes = target.map(|(_, w, h)| u64::from(w) * u64::from(h) * 4);
            let entries = gen_entries(rng, bytes);
            let mut req = encode::resource_attach_backing(id, &entries);
            if rng.one_in(6) {
                // nr_entries that doesn't match the entries sent.
                let n = rng.pick(&[
                    0,
                    entries.len() as u32 + 1,
                    (entries.len() as u32).saturating_sub(1),
                    MAX_BACKING_ENTRIES,
                    MAX_BACKING_ENTRIES + 1,
                    u32::MAX,
                ]);
                req[28..32].copy_from_slice(&n.to_le_bytes());
            }
            req
        }
        7 => encode::resource_detach_backing(id),
        8 | 9 => {
            let resource = if rng.one_in(6) { 0 } else { id };
            encode::set_scanout(gen_scanout(rng), resource, rect)
        }
        10 | 11 => encode::resource_flush(id, rect),
        12 | 13 => {
            let offset = match (rng.below(4), target) {
                (0, _) => rng.next(),
                (1, _) => rng.pick(&[u64::MAX, u64::MAX - 3, 1 << 32, 4]),
                (_, Some((_, w, _))) => {
                    u64::from(rect.y) * u64::from(w) * 4 + u64::from(rect.x) * 4
                }
                _ => rng.below(0x4000) * 4,
            };
            encode::transfer_to_host_2d(id, rect, offset)
        }
        14 => {
            let resource = if rng.one_in(4) { 0 } else { id };
            encode::update_cursor(
                gen_scanout(rng),
                gen_pos(rng),
                gen_pos(rng),
                resource,
                gen_coord(rng),
                gen_coord(rng),
            )
        }
        15 => encode::move_cursor(gen_scanout(rng), gen_pos(rng), gen_pos(rng)),
        16 => encode::get_display_info(),
        17 => encode::get_edid(gen_scanout(rng)),
        18 => {
            let (any, ctrl, cursor) = (
                rng.u32(),
                rng.range(0x100, 0x10b) as u32,
                rng.range(0x300, 0x301) as u32,
            );
            let t = rng.pick(&[
                CMD_GET_CAPSET_INFO,
                CMD_GET_CAPSET,
                0,
                0x0200,
                0x0302,
                RESP_OK_NODATA,
                any,
                ctrl,
                cursor,
            ]);
            let mut req = encode::hdr(t, rng.u32(), rng.next());
            let n = rng.below(96) as usize;
            req.extend(rng.bytes(n));
            req
        }
        _ => {
            let n = rng.below(72) as usize;
            rng.bytes(n)
        }
    };
    if req.len() >= HDR_LEN && rng.one_in(5) {
        // Fence flags, ids, ring index, padding: anything.
        let junk = rng.bytes(20);
        req[4..HDR_LEN].copy_from_slice(&junk);
    }
    match rng.below(12) {
        0 => req.truncate(rng.below(req.len() as u64 + 1) as usize),
        1 => {
            let n = rng.below(64) as usize;
            req.extend(rng.bytes(n));
        }
        2 if rng.one_in(8) => {
            // Far more than any request: only MAX_REQUEST_LEN is read.
            let n = MAX_REQUEST_LEN + rng.below(64 << 10) as usize;
            req.resize(n, 0xa5);
        }
        _ => {}
    }
    req
}

/// What the model knows of one resource.
#[derive(Clone, Copy)]
struct ModelRes {
    width: u32,
    height: u32,
    bytes: u64,
    /// (cost charged, bytes of backing) once attached.
    backing: Option<(u64, u64)>,
}

/// The resources the device should hold, and the response each command
/// should get.
struct Model {
    res: HashMap<u32, ModelRes>,
    used: u64,
    max: u64,
    scanouts: u32,
    edid: bool,
}

fn fits(start: u32, len: u32, limit: u32) -> bool {
    start.checked_add(len).is_some_and(|e| e <= limit)
}

/// Backing runs after dropping empty ones and merging continuations.
fn merged_runs(entries: &[MemEntry]) -> u64 {
    let mut runs: Vec<(u64, u32)> = Vec::new();
    for e in entries.iter().filter(|e| e.length > 0) {
        if let Some(last) = runs.last_mut() {
            let end = last.0.checked_add(u64::from(last.1));
            if let (Some(end), Some(len)) = (end, last.1.checked_add(e.length)) {
                if end == e.addr {
                    last.1 = len;
                    continue;
                }
            }
        }
        runs.push((e.addr, e.length));
    }
    runs.len() as u64
}

impl Model {
    /// Applies `cmd` and returns the response type it must get.
    fn apply(&mut self, cmd: &GpuCommand, mem: &GuestMemory) -> u32 {
        match *cmd {
            GpuCommand::GetDisplayInfo => RESP_OK_DISPLAY_INFO,
            GpuCommand::GetEdid { scanout_id } => {
                if !self.edid {
                    RESP_ERR_UNSPEC
                } else if scanout_id >= self.scanouts {
                    RESP_ERR_INVALID_SCANOUT_ID
                } else {
                    RESP_OK_EDID
                }
            }
            GpuCommand::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => {
                if resource_id == 0 || self.res.contains_key(&resource_id) {
                    return RESP_ERR_INVALID_RESOURCE_ID;
                }
                if pixel_format(format).is_none() || width == 0 || height == 0 {
                    return RESP_ERR_INVALID_PARAMETER;
                }
                let Some(stride) = width.checked_mul(4) else {
                    return RESP_ERR_INVALID_PARAMETER;
                };
                let bytes = u64::from(stride) * u64::from(height);
                if self.used + bytes > self.max {
                    return RESP_ERR_OUT_OF_MEMORY;
                }
                self.used += bytes;
                self.res.insert(
                    resource_id,
                    ModelRes {
                        width,
                        height,
                        bytes,
                        backing: None,
                    },
                );
                RESP_OK_NODATA
            }
            GpuCommand::ResourceUnref { resource_id } => match self.res.remove(&resource_id) {
                None => RESP_ERR_INVALID_RESOURCE_ID,
                Some(r) => {
                    self.used -= r.bytes + r.backing.map_or(0, |b| b.0);
                    RESP_OK_NODATA
                }
            },
            GpuCommand::ResourceAttachBacking {
                resource_id,
                ref entries,
            } => {
                let Some(r) = self.res.get(&resource_id) else {
                    return RESP_ERR_INVALID_RESOURCE_ID;
                };
                if r.backing.is_some() {
                    return RESP_ERR_UNSPEC;
                }
                if entries.is_empty()
                    || entries
                        .iter()
                        .any(|e| !mem.check_range(GuestAddress(e.addr), e.length as usize))
                {
                    return RESP_ERR_INVALID_PARAMETER;
                }
                let cost = merged_runs(entries) * BACKING_ENTRY_COST;
                if self.used + cost > self.max {
                    return RESP_ERR_OUT_OF_MEMORY;
                }
                self.used += cost;
                let len = entries.iter().map(|e| u64::from(e.length)).sum();
                self.res.get_mut(&resource_id).unwrap().backing = Some((cost, len));
                RESP_OK_NODATA
            }
            GpuCommand::ResourceDetachBacking { resource_id } => {
                let Some(r) = self.res.get_mut(&resource_id) else {
                    return RESP_ERR_INVALID_RESOURCE_ID;
                };
                let Some((cost, _)) = r.backing.take() else {
                    return RESP_ERR_UNSPEC;
                };
                self.used -= cost;
                RESP_OK_NODATA
            }
            GpuCommand::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => {
                if scanout_id >= self.scanouts {
                    return RESP_ERR_INVALID_SCANOUT_ID;
                }
                if resource_id == 0 {
                    return RESP_OK_NODATA;
                }
                let Some(r) = self.res.get(&resource_id) else {
                    return RESP_ERR_INVALID_RESOURCE_ID;
                };
                if rect.is_empty()
                    || !fits(rect.x, rect.width, r.width)
                    || !fits(rect.y, rect.height, r.height)
                {
                    return RESP_ERR_INVALID_PARAMETER;
                }
                RESP_OK_NODATA
            }
            GpuCommand::ResourceFlush { resource_id, .. } => {
                if self.res.contains_key(&resource_id) {
                    RESP_OK_NODATA
                } else {
                    RESP_ERR_INVALID_RESOURCE_ID
                }
            }
            GpuCommand::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => {
                let Some(r) = self.res.get(&resource_id) else {
                    return RESP_ERR_INVALID_RESOURCE_ID;
                };
                if !fits(rect.x, rect.width, r.width) || !fits(rect.y, rect.height, r.height) {
                    return RESP_ERR_INVALID_PARAMETER;
                }
                let Some((_, len)) = r.backing else {
                    return RESP_ERR_UNSPEC;
                };
                if rect.is_empty() {
                    return RESP_OK_NODATA;
                }
                let end = u128::from(rect.height - 1) * u128::from(r.width) * 4
                    + u128::from(rect.width) * 4
                    + u128::from(offset);
                if end > u128::from(len) {
                    return RESP_ERR_INVALID_PARAMETER;
                }
                RESP_OK_NODATA
            }
            GpuCommand::UpdateCursor {
                pos, resource_id, ..
            } => {
                if pos.scanout_id >= self.scanouts {
                    return RESP_ERR_INVALID_SCANOUT_ID;
                }
                if resource_id == 0 {
                    return RESP_OK_NODATA;
                }
                let Some(r) = self.res.get(&resource_id) else {
                    return RESP_ERR_INVALID_RESOURCE_ID;
                };
                if r.width > MAX_CURSOR_SIZE || r.height > MAX_CURSOR_SIZE {
                    return RESP_ERR_INVALID_PARAMETER;
                }
                RESP_OK_NODATA
            }
            GpuCommand::MoveCursor { pos } => {
                if pos.scanout_id >= self.scanouts {
                    RESP_ERR_INVALID_SCANOUT_ID
                } else {
                    RESP_OK_NODATA
                }
            }
            // A 2D device answers every 3D command with ERR_UNSPEC.
            _ => RESP_ERR_UNSPEC,
        }
    }

    /// The live resources as (id, width, height), in id order.
    fn live(&self) -> Vec<(u32, u32, u32)> {
        let mut live: Vec<_> = self
            .res
            .iter()
            .map(|(&id, r)| (id, r.width, r.height))
            .collect();
        live.sort_unstable();
        live
    }
}

/// Splits `total` bytes into 1..=`max` pieces (lengths).
fn split(rng: &mut Rng, total: u64, max: u64) -> Vec<u64> {
    let n = rng.range(1, max);
    let mut cuts: Vec<u64> = (1..n).map(|_| rng.below(total + 1)).collect();
    cuts.push(0);
    cuts.push(total);
    cuts.sort_unstable();
    cuts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// A valid GET_DISPLAY_INFO answered with every scanout at its mode.
fn assert_display_info(ring: &mut Ring<'_>, s: &mut Setup) {
    let resp = ring.send(&mut s.fe, &encode::get_display_info(), 512);
    assert_eq!(resp.len(), DISPLAY_INFO_LEN);
    assert_eq!(u32_at(&resp, 0), RESP_OK_DISPLAY_INFO);
    for (i, (w, h)) in s.display.modes().into_iter().enumerate() {
        let at = HDR_LEN + i * 24;
        assert_eq!(
            (
                u32_at(&resp, at + 8),
                u32_at(&resp, at + 12),
                u32_at(&resp, at + 16)
            ),
            (w, h, 1)
        );
    }
}

/// A resource shown end to end: its guest pixels reach the sink.
fn assert_pipeline_works(ring: &mut Ring<'_>, s: &mut Setup, id: u32) {
    let (w, h) = (24u32, 10u32);
    let image: Vec<u8> = (0..w * h * 4).map(|i| (i * 7 + id) as u8).collect();
    ring.mem
        .write_slice(&image, GuestAddress(BACKING + 0x1000))
        .unwrap();
    let full = Rect::new(0, 0, w, h);
    s.sink.frames.lock().unwrap().clear();
    for req in [
        encode::resource_create_2d(id, FORMAT_B8G8R8X8_UNORM, w, h),
        encode::resource_attach_backing(id, &[(BACKING + 0x1000, w * h * 4)]),
        encode::transfer_to_host_2d(id, full, 0),
        encode::set_scanout(0, id, full),
        encode::resource_flush(id, full),
    ] {
        let resp = ring.send(&mut s.fe, &req, 64);
        assert_eq!(u32_at(&resp, 0), RESP_OK_NODATA, "{:#x}", u32_at(&req, 0));
    }
    let frames = s.sink.frames.lock().unwrap();
    assert_eq!(frames.last(), Some(&(0, image)));
}

/// Random command streams, each request through a random (but well-formed)
/// descriptor layout, checked command by command against the model.
fn command_stream(seed: u64, steps: usize) -> Coverage {
    let mut rng = Rng::new(seed);
    let mem = mem();
    let params = GpuParams {
        width: 320,
        height: 240,
        displays: rng.range(1, 3) as u32,
        max_hostmem: rng.pick(&[1 << 20, 4 << 20]),
        ..GpuParams::default()
    };
    let edid = !rng.one_in(4);
    let mut s = setup(params.clone(), edid);
    let mut model = Model {
        res: HashMap::new(),
        used: 0,
        max: params.max_hostmem,
        scanouts: params.displays,
        edid,
    };
    let mut ring = Ring::new(&mem);
    let mut cover = Coverage::default();
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let req = gen_request(&mut rng, &model.live());
        mem.write_slice(&req, GuestAddress(REQ)).unwrap();
        // The readable part: 1..=4 pieces of the request, in order.
        let mut descs: Vec<(u64, u32, u16)> = Vec::new();
        let mut at = REQ;
        for len in split(&mut rng, req.len() as u64, 4) {
            descs.push((at, len as u32, 0));
            at += len;
        }
        // The writable part: a response buffer of some size, in pieces.
        let room = match rng.below(10) {
            0 => rng.below(HDR_LEN as u64),
            1 => rng.range(HDR_LEN as u64, DISPLAY_INFO_LEN as u64 - 1),
            2 => rng.range(DISPLAY_INFO_LEN as u64, EDID_RESP_LEN as u64 - 1),
            3 => rng.pick(&[HDR_LEN, DISPLAY_INFO_LEN, EDID_RESP_LEN]) as u64,
            _ => 2048,
        };
        let pieces = split(&mut rng, room, 3);
        for (i, &len) in pieces.iter().enumerate() {
            descs.push((RESP + i as u64 * 0x1000, len as u32, DESC_F_WRITE));
        }
        mem.write_slice(&[0u8; 0x3000], GuestAddress(RESP)).unwrap();
        // Empty descriptors anywhere are skipped, whatever they point at.
        if rng.one_in(5) {
            let at = rng.below(descs.len() as u64 + 1) as usize;
            let flags = rng.pick(&[0, DESC_F_WRITE]);
            descs.insert(at, (gen_addr(&mut rng, 0), 0, flags));
        }
        if rng.one_in(5) {
            ring.indirect(TABLES, &descs);
        } else {
            ring.chain(&descs);
        }

        // What the device reads, and so what it must answer.
        let gathered = &req[..req.len().min(MAX_REQUEST_LEN)];
        let want = match GpuCommand::decode(gathered) {
            Ok((_, cmd)) => model.apply(&cmd, &mem),
            Err(e) => e.response_type(),
        };
        let need = match want {
            RESP_OK_DISPLAY_INFO => DISPLAY_INFO_LEN,
            RESP_OK_EDID => EDID_RESP_LEN,
            _ => HDR_LEN,
        } as u64;
        let (want, want_len) = match room {
            r if r < HDR_LEN as u64 => (None, 0),
            r if r < need => (Some(RESP_ERR_UNSPEC), HDR_LEN),
            _ => (Some(want), need as usize),
        };

        if let (Some(RESP_OK_NODATA | RESP_OK_DISPLAY_INFO | RESP_OK_EDID), Ok((_, cmd))) =
            (want, GpuCommand::decode(gathered))
        {
            *cover.ok.entry(cmd.name()).or_default() += 1;
        }
        let used = ring.run(&mut s.fe);
        assert_eq!(used, vec![want_len as u32], "{ctx}: used length");
        if let Some(want) = want {
            let mut resp = Vec::new();
            for (i, &len) in pieces.iter().enumerate() {
                let mut b = vec![0u8; len as usize];
                mem.read_slice(&mut b, GuestAddress(RESP + i as u64 * 0x1000))
                    .unwrap();
                resp.extend(b);
            }
            let mut hdr = Vec::new();
            CtrlHdr::decode(gathered)
                .unwrap_or_default()
                .response(want)
                .encode(&mut hdr);
            assert_eq!(&resp[..HDR_LEN], &hdr[..], "{ctx}: response header");
        }
        assert_eq!(host_bytes(&s.metrics), model.used, "{ctx}: host bytes");
        assert_eq!(resources(&s.metrics), model.res.len() as u64, "{ctx}");
        assert!(host_bytes(&s.metrics) <= params.max_hostmem, "{ctx}");
        if step % 64 == 0 {
            for i in 0..params.displays {
                let _ = s.sink.store.composited_frame(i);
            }
        }
        if rng.one_in(50) {
            // The host resizes a display meanwhile (a viewer's window).
            let (w, h) = (rng.range(32, 8192) as u32, rng.range(32, 8192) as u32);
            let _ = s.display.resize(rng.below(4) as u32, w, h);
        }
    }

    let snap = s.metrics.snapshot(params.displays as usize);
    cover.frames = s.sink.frames.lock().unwrap().len();
    assert!(snap.errors > 0 && snap.invalid_commands > 0, "seed {seed}");
    assert_display_info(&mut ring, &mut s);
    // Everything is given back.
    let ids: Vec<u32> = model.res.keys().copied().collect();
    for id in ids {
        let resp = ring.send(&mut s.fe, &encode::resource_unref(id), 24);
        assert_eq!(u32_at(&resp, 0), RESP_OK_NODATA);
    }
    assert_eq!((host_bytes(&s.metrics), resources(&s.metrics)), (0, 0));
    assert_pipeline_works(&mut ring, &mut s, 1);
    cover
}

/// What a command stream got done: successful commands by name, frames.
#[derive(Default)]
struct Coverage {
    ok: BTreeMap<&'static str, u32>,
    frames: usize,
}

#[test]
fn random_command_streams_are_answered_as_the_model_predicts() {
    let mut ok = BTreeMap::new();
    let mut frames = 0;
    for seed in 1..=4 {
        let c = command_stream(seed, 3000);
        for (name, n) in c.ok {
            *ok.entry(name).or_insert(0) += n;
        }
        frames += c.frames;
    }
    // The streams are not all refused: every command succeeds many times
    // and frames reach the sink.
    assert_eq!(ok.len(), 11, "{ok:?}");
    assert!(ok.values().all(|&n| n >= 10), "{ok:?}");
    assert!(frames >= 10, "{frames} frames");
}

/// One random descriptor: any address, length and flags.
fn random_desc(rng: &mut Rng, next: u16) -> Descriptor {
    let len = match rng.below(6) {
        0 => 0,
        1 => rng.pick(&[HDR_LEN as u32, 40, 408, 1056, 16, 32]),
        2 => gen_len(rng),
        _ => rng.range(1, 2048) as u32,
    };
    let flags = match rng.below(10) {
        0 => rng.next() as u16,
        1 => DESC_F_INDIRECT,
        2 => DESC_F_INDIRECT | DESC_F_WRITE,
        3..=5 => DESC_F_WRITE,
        _ => 0,
    };
    let mut addr = match rng.below(4) {
        0 => gen_addr(rng, u64::from(len)),
        1 => TABLES + rng.below(0x800) * 16,
        2 => RESP + rng.below(0x100) * 8,
        _ => REQ,
    };
    // Writable buffers stay off the rings and tables.
    if flags & DESC_F_WRITE != 0 && addr < SAFE {
        addr += SAFE;
    }
    let next = if rng.one_in(6) {
        rng.u32() as u16
    } else {
        next
    };
    Descriptor::new(addr, len, flags, next)
}

/// Random descriptor chains: mixed readable and writable descriptors in
/// any order, zero-length ones, buffers outside memory or across its
/// regions, NEXT loops, out-of-range next indices, indirect tables that are
/// empty, misaligned, huge, nested or garbage. Every chain is used, with a
/// length a response can have, and the device keeps serving.
#[test]
fn random_descriptor_layouts_and_indirect_tables() {
    let mem = mem();
    for seed in 10..14u64 {
        let mut rng = Rng::new(seed);
        let mut s = setup(
            GpuParams {
                width: 800,
                height: 600,
                displays: 2,
                max_hostmem: 2 << 20,
                ..GpuParams::default()
            },
            true,
        );
        let mut chains = 0;
        let mut created = Vec::new();
        for batch in 0..400 {
            // A fresh queue each batch: garbage may have hit the last one's
            // rings.
            let mut ring = Ring::new(&mem);
            let ctx = format!("seed {seed} batch {batch}");
            let req = gen_request(&mut rng, &[]);
            if let Ok((_, GpuCommand::ResourceCreate2d { resource_id, .. })) =
                GpuCommand::decode(&req)
            {
                created.push(resource_id);
            }
            mem.write_slice(&req[..req.len().min(0x6_0000)], GuestAddress(REQ))
                .unwrap();
            let n = rng.range(1, 8);
            ring.next_desc = 0;
            let mut table = TABLES;
            for _ in 0..n {
                let head = ring.next_desc;
                if rng.one_in(3) {
                    // An indirect table of random descriptors.
                    let k = rng.range(0, 12) as u16;
                    for i in 0..k {
                        let d = random_desc(&mut rng, i + 1);
                        let flags = if rng.one_in(8) {
                            d.flags() | DESC_F_INDIRECT
                        } else {
                            d.flags()
                        };
                        let more = if i + 1 < k && !rng.one_in(8) {
                            DESC_F_NEXT
                        } else {
                            0
                        };
                        ring.write_desc(
                            table,
                            i,
                            Descriptor::new(d.addr().0, d.len(), flags | more, d.next()),
                        );
                    }
                    let (addr, len) = match rng.below(8) {
                        0 => (table, u32::from(k) * 16 + rng.range(1, 15) as u32),
                        1 => (table, rng.pick(&[0, 16 * 0x1_0000, !15])),
                        2 => {
                            // A table in untouched (zero) or absent memory.
                            let addr = match rng.below(3) {
                                0 => MEM_END - rng.below(64) * 16,
                                1 => u64::MAX - rng.below(64) * 16,
                                _ => BACKING + rng.below(0x1000) * 16,
                            };
                            (addr, rng.range(1, 64) as u32 * 16)
                        }
                        _ => (table, u32::from(k) * 16),
                    };
                    let flags = DESC_F_INDIRECT
                        | if rng.one_in(4) {
                            DESC_F_NEXT | DESC_F_WRITE
                        } else {
                            0
                        };
                    ring.write_desc(
                        DESC_TABLE,
                        head,
                        Descriptor::new(addr, len, flags, head + 1),
                    );
                    ring.next_desc = (head + 1) % QSIZE;
                    table += 0x400;
                } else {
                    let k = rng.range(1, 6) as u16;
                    for i in 0..k {
                        let idx = (head + i) % QSIZE;
                        let d = random_desc(&mut rng, (idx + 1) % QSIZE);
                        let more = if i + 1 < k || rng.one_in(8) {
                            DESC_F_NEXT
                        } else {
                            0
                        };
                        ring.write_desc(
                            DESC_TABLE,
                            idx,
                            Descriptor::new(d.addr().0, d.len(), d.flags() | more, d.next()),
                        );
                    }
                    ring.next_desc = (head + k) % QSIZE;
                }
                ring.post(head);
            }
            let used = ring.drain(&mut s.fe);
            assert!(used.len() as u64 >= n, "{ctx}: every chain is used");
            for &u in &used {
                assert!(is_response_len(u), "{ctx}: used length {u}");
            }
            chains += n;
            assert!(host_bytes(&s.metrics) <= s.params.max_hostmem, "{ctx}");
        }
        assert!(chains > 1500, "{chains} chains");
        let mut ring = Ring::new(&mem);
        let snap = s.metrics.snapshot(2);
        assert!(snap.invalid_commands > 0, "seed {seed}");
        assert_display_info(&mut ring, &mut s);
        // Whatever was created is given back in full.
        for id in created {
            ring.send(&mut s.fe, &encode::resource_unref(id), 24);
        }
        assert_eq!((host_bytes(&s.metrics), resources(&s.metrics)), (0, 0));
        assert_pipeline_works(&mut ring, &mut s, 0xfeed);
    }
}

/// Garbage in the rings themselves: available indices far ahead of the
/// device, heads beyond the queue, a descriptor table of random bytes,
/// event-index fields anywhere. The device must return from every kick;
/// once the driver sets the queue up again, it answers.
#[test]
fn garbage_rings_neither_hang_nor_panic() {
    let mem = mem();
    let mut rng = Rng::new(99);
    let mut s = setup(GpuParams::default(), true);
    for round in 0..500 {
        let mut ring = Ring::new(&mem);
        ring.queue.set_event_idx(rng.one_in(2));
        let table = rng.bytes(usize::from(QSIZE) * 16);
        mem.write_slice(&table, GuestAddress(DESC_TABLE)).unwrap();
        // Keep writable buffers off the rings: clear WRITE below SAFE.
        for i in 0..u64::from(QSIZE) {
            let at = DESC_TABLE + i * 16;
            let addr: u64 = mem.read_obj(GuestAddress(at)).unwrap();
            if addr < SAFE {
                let flags: u16 = mem.read_obj(GuestAddress(at + 12)).unwrap();
                mem.write_obj(flags & !DESC_F_WRITE, GuestAddress(at + 12))
                    .unwrap();
            }
        }
        for _ in 0..rng.range(1, 4) {
            let n = rng.range(0, 80);
            for _ in 0..n {
                let head = if rng.one_in(3) {
                    rng.u32() as u16
                } else {
                    rng.below(u64::from(QSIZE)) as u16
                };
                ring.post(head);
            }
            if rng.one_in(3) {
                let idx = rng.u32() as u16;
                mem.write_obj(idx, GuestAddress(AVAIL_RING + 2)).unwrap();
            }
            if rng.one_in(3) {
                // used_event, flags, avail_event.
                let junk = rng.u32() as u16;
                let at = rng.pick(&[AVAIL_RING, AVAIL_RING + 4 + u64::from(QSIZE) * 2, USED_RING]);
                mem.write_obj(junk, GuestAddress(at)).unwrap();
            }
            for u in ring.drain(&mut s.fe) {
                assert!(is_response_len(u), "round {round}: used length {u}");
            }
        }
        assert!(
            host_bytes(&s.metrics) <= s.params.max_hostmem,
            "round {round}"
        );
    }
    let mut ring = Ring::new(&mem);
    assert_display_info(&mut ring, &mut s);
    assert_pipeline_works(&mut ring, &mut s, 0xbeef);
}

/// The config space at any offset and width: reads are zero outside it,
/// only `events_clear` writes do anything.
#[test]
fn config_space_at_random_offsets_and_widths() {
    let sink: Arc<dyn ScanoutSink> = Arc::new(CheckingSink::new(3));
    let mut gpu = VirtioGpu::new(
        GpuParams {
            displays: 3,
            ..GpuParams::default()
        },
        sink,
    )
    .unwrap();
    let mut rng = Rng::new(7);
    for _ in 0..20_000 {
        let offset = match rng.below(4) {
            0 => rng.next(),
            1 => u64::MAX - rng.below(32),
            _ => rng.below(40),
        };
        let len = rng.below(17) as usize;
        if rng.one_in(2) {
            let mut data = vec![0xeeu8; len];
            gpu.read_config(offset, &mut data);
            for (i, &b) in data.iter().enumerate() {
                if offset.checked_add(i as u64).is_none_or(|at| at >= 16) {
                    assert_eq!(b, 0, "offset {offset:#x}+{i}");
                }
            }
        } else {
            let data = rng.bytes(len);
            gpu.write_config(offset, &data);
        }
        if rng.one_in(500) {
            let _ = gpu.resize(rng.below(4) as u32, rng.range(16, 9000) as u32, 600);
        }
    }
    let mut c = [0u8; 16];
    gpu.read_config(0, &mut c);
    assert_eq!(u32_at(&c, 8), 3, "num_scanouts");
    assert_eq!(u32_at(&c, 4), 0, "events_clear reads zero");
    assert_eq!(u32_at(&c, 12), 0, "num_capsets");
    gpu.resize(0, 640, 480).unwrap();
    gpu.read_config(0, &mut c);
    assert_eq!(u32_at(&c, 0), EVENT_DISPLAY);
    gpu.write_config(4, &EVENT_DISPLAY.to_le_bytes());
    gpu.read_config(0, &mut c);
    assert_eq!(u32_at(&c, 0), 0);
    // Every mode a display can be resized to has a valid EDID block.
    for _ in 0..2000 {
        let (w, h) = (rng.range(32, 8192) as u32, rng.range(32, 8192) as u32);
        let e = edid::build(w, h, rng.below(16) as u32);
        assert_eq!(e[..8], [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        let sum = e.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        assert_eq!(sum, 0, "{w}x{h}: checksum");
    }
}

/// Random backings (runs across the region split, in the far region,
/// continuing each other, empty, shorter or longer than the resource) and
/// random transfers: every resource holds exactly what a linear model of
/// its backing says, and refused transfers change nothing.
#[test]
fn random_transfers_copy_exactly_the_backing_bytes() {
    let mem = mem();
    let mut rng = Rng::new(31);
    let areas = [
        (SPLIT - 0x4_0000, 0x8_0000),
        (FAR, FAR_LEN),
        (BACKING, 0x4_0000),
    ];
    for (base, len) in areas {
        mem.write_slice(&rng.bytes(len as usize), GuestAddress(base))
            .unwrap();
    }
    let mut b = Backend2d::new(64 << 20);
    let (mut copied, mut refused) = (0, 0);
    for id in 1..=1000u32 {
        let (w, h) = (rng.range(1, 100) as u32, rng.range(1, 60) as u32);
        let (stride, bytes) = (u64::from(w) * 4, u64::from(w * h) * 4);
        b.create_2d(id, FORMAT_B8G8R8A8_UNORM, w, h).unwrap();
        let want = if rng.one_in(3) {
            bytes.saturating_sub(rng.below(256)).max(1)
        } else {
            bytes + rng.below(64)
        };
        let mut entries: Vec<MemEntry> = Vec::new();
        let mut total = 0;
        while total < want {
            let n = rng.range(1, 9000).min(want - total);
            let addr = match (rng.below(6), entries.last()) {
                (0, _) => SPLIT - rng.below(n + 1),
                (1, _) => FAR + rng.below(FAR_LEN - n),
                (2, Some(last)) => last.addr + u64::from(last.length),
                (3, _) => {
                    entries.push(MemEntry {
                        addr: gen_addr(&mut rng, 0),
                        length: 0,
                    });
                    continue;
                }
                _ => BACKING + rng.below(0x4_0000 - n),
            };
            if !mem.check_range(GuestAddress(addr), n as usize) {
                continue;
            }
            entries.push(MemEntry {
                addr,
                length: n as u32,
            });
            total += n;
        }
        let mut linear = Vec::new();
        for e in &entries {
            let mut run = vec![0u8; e.length as usize];
            mem.read_slice(&mut run, GuestAddress(e.addr)).unwrap();
            linear.extend(run);
        }
        b.attach_backing(id, entries, &mem).unwrap();
        let mut model = vec![0u8; bytes as usize];
        for _ in 0..8 {
            let rect = if rng.one_in(5) {
                gen_rect(&mut rng)
            } else {
                gen_inside(&mut rng, w, h)
            };
            let exact = u64::from(rect.y) * stride + u64::from(rect.x) * 4;
            let offset = match rng.below(6) {
                0 => rng.next(),
                1 => exact + rng.below(512),
                2 => rng.below(linear.len() as u64 + 1),
                _ => exact,
            };
            let result = b.transfer_to_host_2d(id, rect, offset, &mem);
            let ctx = format!("resource {id} {w}x{h} {rect:?} offset {offset}");
            if !fits(rect.x, rect.width, w) || !fits(rect.y, rect.height, h) {
                assert!(
                    matches!(result, Err(BackendError::OutsideResource { .. })),
                    "{ctx}"
                );
                refused += 1;
            } else if rect.is_empty() {
                assert_eq!(result.unwrap(), 0, "{ctx}");
            } else {
                let row = u64::from(rect.width) * 4;
                let end = u128::from(rect.height - 1) * u128::from(stride)
                    + u128::from(row)
                    + u128::from(offset);
                if end > linear.len() as u128 {
                    assert!(
                        matches!(result, Err(BackendError::OutsideBacking { .. })),
                        "{ctx}"
                    );
                    refused += 1;
                } else {
                    assert_eq!(result.unwrap(), row * u64::from(rect.height), "{ctx}");
                    for i in 0..u64::from(rect.height) {
                        let src = (offset + i * stride) as usize;
                        let dst =
                            ((u64::from(rect.y) + i) * stride + u64::from(rect.x) * 4) as usize;
                        model[dst..dst + row as usize]
                            .copy_from_slice(&linear[src..src + row as usize]);
                    }
                    copied += 1;
                }
            }
            assert!(b.view(id).unwrap().data == &model[..], "{ctx}: pixels");
        }
        if rng.one_in(2) {
            b.unref(id).unwrap();
        }
    }
    assert!(
        copied > 3000 && refused > 800,
        "{copied} copied, {refused} refused"
    );
}

/// Interrupt lines that go nowhere.
struct NoRouter;

impl pv_devices::pci::msix::MsiRouter for NoRouter {
    fn allocate(&self) -> std::io::Result<(u32, vmm_sys_util::eventfd::EventFd)> {
        let fd = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
        Ok((0, fd))
    }
    fn set_route(
        &self,
        _: u32,
        _: Option<pv_devices::pci::msix::MsiMessage>,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// The whole device behind its PCI transport: random BAR traffic and
/// status walks activate and reset it over and over with queues on guest
/// memory full of garbage (the worker drains whatever the rings hold at
/// activation); then a clean handshake with a GET_DISPLAY_INFO already
/// queued is answered by the worker thread.
#[test]
fn device_behind_the_transport_survives_garbage_and_answers() {
    use pv_devices::bus::BusDevice;
    use pv_devices::virtio::pci::VirtioPciDevice;

    let mem = Arc::new(mem());
    let mut rng = Rng::new(4242);
    mem.write_slice(&rng.bytes(0x20_0000), GuestAddress(0))
        .unwrap();
    let sink = Arc::new(CheckingSink::new(2));
    let params = GpuParams {
        displays: 2,
        ..GpuParams::default()
    };
    let gpu = VirtioGpu::new(params.clone(), sink).unwrap();
    let metrics = gpu.gpu_metrics();
    let display = gpu.display_control();
    let mut pci = VirtioPciDevice::new(
        "gpu",
        Box::new(gpu),
        mem.clone(),
        Arc::new(NoRouter),
        0xc000_0000,
    )
    .unwrap();
    let w = |pci: &mut VirtioPciDevice, off: u64, v: u64, len: usize| {
        pci.write(off, &v.to_le_bytes()[..len]);
    };
    let mut active = 0;
    for _ in 0..4000 {
        match rng.below(8) {
            0 => {
                let mut data = vec![0u8; rng.below(17) as usize];
                pci.read(rng.below(0x8000), &mut data);
            }
            1 => {
                let n = rng.below(17) as usize;
                let data = rng.bytes(n);
                let off = if rng.one_in(2) {
                    rng.below(0x40)
                } else {
                    0x2000 + rng.below(0x20)
                };
                pci.write(off, &data);
            }
            2 => {
                // Accept VERSION_1 (and whatever else).
                w(&mut pci, 0x08, 1, 4);
                w(&mut pci, 0x0c, rng.next() | 1, 4);
                w(&mut pci, 0x08, 0, 4);
                w(&mut pci, 0x0c, rng.next(), 4);
            }
            3 | 4 => {
                // A queue on garbage, then the status walk.
                w(&mut pci, 0x16, rng.below(3), 2);
                w(&mut pci, 0x18, 1 << rng.below(9), 2);
                for off in [0x20, 0x28, 0x30] {
                    w(&mut pci, off, rng.below(0x1f0) * 0x1000, 8);
                }
                w(&mut pci, 0x1c, rng.below(2), 2);
                for status in [1, 3, 0xb, 0xf] {
                    w(&mut pci, 0x14, status, 1);
                }
            }
            5 => w(&mut pci, 0x14, rng.next() & 0xff, 1),
            6 => w(&mut pci, 0x14, 0, 1),
            _ => {
                // The host resizes a display (a config interrupt while the
                // device runs); the guest clears events at random.
                let (w_, h) = (rng.range(32, 4096) as u32, rng.range(32, 4096) as u32);
                let _ = display.resize(rng.below(3) as u32, w_, h);
                w(&mut pci, 0x2004, rng.next(), 4);
            }
        }
        if pci.notify_eventfds().is_empty() {
            active += 1;
        }
        assert!(host_bytes(&metrics) <= params.max_hostmem);
    }
    assert!(active > 100, "the device ran for {active} steps");

    // Clean handshake with a request waiting on the controlq.
    w(&mut pci, 0x14, 0, 1);
    let (desc, avail, used) = (0x18_0000u64, 0x18_1000u64, 0x18_2000u64);
    mem.write_slice(&[0u8; 0x6000], GuestAddress(desc)).unwrap();
    mem.write_slice(&encode::get_display_info(), GuestAddress(REQ))
        .unwrap();
    let chain = [
        Descriptor::new(REQ, HDR_LEN as u32, DESC_F_NEXT, 1),
        Descriptor::new(RESP, 512, DESC_F_WRITE, 0),
    ];
    for (i, d) in chain.into_iter().enumerate() {
        mem.write_obj(RawDescriptor::from(d), GuestAddress(desc + i as u64 * 16))
            .unwrap();
    }
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    w(&mut pci, 0x14, 3, 1);
    for sel in 0..2 {
        w(&mut pci, 0x00, sel, 4);
        let mut f = [0u8; 4];
        pci.read(0x04, &mut f);
        w(&mut pci, 0x08, sel, 4);
        pci.write(0x0c, &f);
    }
    w(&mut pci, 0x14, 0xb, 1);
    for q in 0..2u64 {
        w(&mut pci, 0x16, q, 2);
        w(&mut pci, 0x18, 16, 2);
        w(&mut pci, 0x20, desc + q * 0x3000, 8);
        w(&mut pci, 0x28, avail + q * 0x3000, 8);
        w(&mut pci, 0x30, used + q * 0x3000, 8);
        w(&mut pci, 0x1c, 1, 2);
    }
    w(&mut pci, 0x14, 0xf, 1);
    let mut status = [0u8];
    pci.read(0x14, &mut status);
    assert_eq!(status, [0xf]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap() != 1 {
        assert!(std::time::Instant::now() < deadline, "no answer");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut resp = [0u8; DISPLAY_INFO_LEN];
    mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
    assert_eq!(u32_at(&resp, 0), RESP_OK_DISPLAY_INFO);
    let mode = display.mode(0).unwrap();
    assert_eq!((u32_at(&resp, 32), u32_at(&resp, 36)), mode);
    w(&mut pci, 0x14, 0, 1);
    assert_eq!(pci.notify_eventfds().len(), 2);
}
