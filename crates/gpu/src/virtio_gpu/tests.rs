//! Device tests through virtio-queue's driver mock: every command, every
//! error a hostile guest can provoke, fences, and what the sink sees.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_devices::virtio::worker::QueueHandler;
use pv_devices::virtio::{
    ActivateContext, ActivateError, ActiveQueue, Interrupt, InterruptKind, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use pv_devices::GuestMemory;
use pv_display::{CursorImage, FrameView, PixelFormat, Rect, ScanoutSink};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::protocol::{encode, *};
use super::*;

const MEM_SIZE: usize = 0x100_0000;
const REQ: u64 = 0x1_0000;
const RESP: u64 = 0x4000;

const BACKING: u64 = 0x10_0000;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const QSIZE: u16 = 64;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// What a [`RecordingSink`] was told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Mode(u32, Option<(u32, u32)>),
    /// The frame's pixels copied row by row (width * 4 bytes each).
    Update {
        scanout: u32,
        width: u32,
        height: u32,
        format: PixelFormat,
        pixels: Vec<u8>,
        damage: Rect,
    },
    Cursor(u32, Option<CursorImage>),
    Move(u32, i32, i32),
}

#[derive(Default)]
struct RecordingSink {
    events: Mutex<Vec<Event>>,
}

impl RecordingSink {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }
}

impl ScanoutSink for RecordingSink {
    fn set_mode(&self, scanout: u32, mode: Option<(u32, u32)>) {
        self.push(Event::Mode(scanout, mode));
    }

    fn update(&self, scanout: u32, frame: &FrameView<'_>, damage: Rect) {
        let row = frame.width as usize * 4;
        let mut pixels = Vec::new();
        for y in 0..frame.height as usize {
            let start = y * frame.stride as usize;
            pixels.extend_from_slice(&frame.data[start..start + row]);
        }
        self.push(Event::Update {
            scanout,
            width: frame.width,
            height: frame.height,
            format: frame.format,
            pixels,
            damage,
        });
    }

    fn set_cursor(&self, scanout: u32, image: Option<&CursorImage>) {
        self.push(Event::Cursor(scanout, image.cloned()));
    }

    fn move_cursor(&self, scanout: u32, x: i32, y: i32) {
        self.push(Event::Move(scanout, x, y));
    }
}

/// The driver's side of one queue. The rings are laid out here rather than
/// by `MockSplitQueue`, whose used ring overlaps the upper half of its
/// available ring (virtio-queue 0.18's `SplitQueueRing::end` counts entries,
/// not bytes), which breaks runs of more than half a queue of chains.
struct Driver<'a> {
    mem: &'a GuestMemory,
    queue: Queue,
    next_desc: u16,
    avail: u16,
}

const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        for a in [AVAIL_RING, USED_RING] {
            mem.write_obj(0u32, GuestAddress(a)).unwrap();
        }
        Self {
            mem,
            queue,
            next_desc: 0,
            avail: 0,
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// Makes a chain of (address, length, device-writable) available.
    fn add_chain(&mut self, descs: &[(u64, u32, bool)]) {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % QSIZE;
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= DESC_F_NEXT;
            }
            let next = (idx + 1) % QSIZE;
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            self.mem
                .write_obj(d, GuestAddress(DESC_TABLE + u64::from(idx) * 16))
                .unwrap();
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % QSIZE;
        let slot = u64::from(self.avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + slot * 2))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Makes available a chain whose only descriptor points at an
    /// indirect table of `n` descriptors at `table`.
    fn add_indirect(&mut self, table: u64, n: u32) {
        let head = self.next_desc;
        let d = RawDescriptor::from(Descriptor::new(table, n * 16, DESC_F_INDIRECT, 0));
        self.mem
            .write_obj(d, GuestAddress(DESC_TABLE + u64::from(head) * 16))
            .unwrap();
        self.next_desc = (self.next_desc + 1) % QSIZE;
        let slot = u64::from(self.avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + slot * 2))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Runs the frontend; returns the used lengths of the chains it used.
    fn run(&mut self, fe: &mut Frontend) -> Vec<u32> {
        let before = self.used_idx();
        fe.process_queue(0, &mut self.queue, self.mem);
        let after = self.used_idx();
        (before..after)
            .map(|i| {
                let at = USED_RING + 4 + u64::from(i % QSIZE) * 8 + 4;
                self.mem.read_obj::<u32>(GuestAddress(at)).unwrap()
            })
            .collect()
    }

    /// Sends `req` with a `resp_len`-byte response buffer; returns the used
    /// length and the response bytes written.
    fn send(&mut self, fe: &mut Frontend, req: &[u8], resp_len: u32) -> (u32, Vec<u8>) {
        self.mem.write_slice(req, GuestAddress(REQ)).unwrap();
        let zero = vec![0u8; resp_len as usize];
        self.mem.write_slice(&zero, GuestAddress(RESP)).unwrap();
        let mut chain = vec![(REQ, req.len() as u32, false)];
        if resp_len > 0 {
            chain.push((RESP, resp_len, true));
        }
        self.add_chain(&chain);
        let used = self.run(fe);
        assert_eq!(used.len(), 1);
        let mut resp = vec![0u8; used[0] as usize];
        self.mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
        (used[0], resp)
    }

    /// Sends `req` with room for any response; returns the response.
    fn cmd(&mut self, fe: &mut Frontend, req: &[u8]) -> Vec<u8> {
        self.send(fe, req, 2048).1
    }

    /// Sends `req` and returns the response type.
    fn status(&mut self, fe: &mut Frontend, req: &[u8]) -> u32 {
        let resp = self.cmd(fe, req);
        assert!(resp.len() >= HDR_LEN, "response of {} bytes", resp.len());
        rtype(&resp)
    }
}

fn rtype(resp: &[u8]) -> u32 {
    u32::from_le_bytes(resp[..4].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

struct Setup {
    fe: Frontend,
    sink: Arc<RecordingSink>,
    metrics: Arc<GpuMetrics>,
    display: DisplayControl,
}

fn setup(params: &GpuParams) -> Setup {
    let sink = Arc::new(RecordingSink::default());
    let metrics = Arc::new(GpuMetrics::default());
    let display = DisplayControl::new(params);
    let fe = Frontend::new(
        Box::new(Backend2d::new(params.max_hostmem)),
        display.clone(),
        sink.clone(),
        metrics.clone(),
        true,
    );
    Setup {
        fe,
        sink,
        metrics,
        display,
    }
}

fn two_displays() -> GpuParams {
    GpuParams {
        width: 1024,
        height: 768,
        displays: 2,
        max_hostmem: 64 << 20,
        ..GpuParams::default()
    }
}

/// A deterministic guest image of `len` bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8) ^ seed)
        .collect()
}

/// Backing for `len` bytes at BACKING as 4 KiB pages in reverse order,
/// holding `content` in backing order.
fn scattered_backing(mem: &GuestMemory, content: &[u8]) -> Vec<(u64, u32)> {
    let pages = content.len().div_ceil(4096);
    (0..pages)
        .map(|p| {
            let addr = BACKING + ((pages - 1 - p) * 4096) as u64;
            let chunk = &content[p * 4096..content.len().min((p + 1) * 4096)];
            mem.write_slice(chunk, GuestAddress(addr)).unwrap();
            (addr, chunk.len() as u32)
        })
        .collect()
}

const OK: u32 = RESP_OK_NODATA;
const XRGB: u32 = FORMAT_B8G8R8X8_UNORM;

/// Creates resource `id` of `w` x `h` with a scattered backing holding
/// `content`.
fn resource(
    d: &mut Driver<'_>,
    fe: &mut Frontend,
    id: u32,
    format: u32,
    w: u32,
    h: u32,
    content: &[u8],
) {
    assert_eq!(
        d.status(fe, &encode::resource_create_2d(id, format, w, h)),
        OK
    );
    let entries = scattered_backing(d.mem, content);
    assert_eq!(
        d.status(fe, &encode::resource_attach_backing(id, &entries)),
        OK
    );
}

#[test]
fn display_info_lists_enabled_scanouts() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    let (used, resp) = d.send(&mut s.fe, &encode::get_display_info(), 2048);
    assert_eq!(used as usize, DISPLAY_INFO_LEN);
    assert_eq!(rtype(&resp), RESP_OK_DISPLAY_INFO);
    for i in 0..2 {
        let o = HDR_LEN + i * 24;
        assert_eq!(
            [
                u32_at(&resp, o),
                u32_at(&resp, o + 4),
                u32_at(&resp, o + 8),
                u32_at(&resp, o + 12)
            ],
            [0, 0, 1024, 768]
        );
        assert_eq!(u32_at(&resp, o + 16), 1, "enabled");
    }
    assert!(resp[HDR_LEN + 48..].iter().all(|&b| b == 0));
    let snap = s.metrics.snapshot(2);
    assert_eq!(snap.command("get_display_info"), 1);
    assert_eq!(snap.errors, 0);

    // A resized display reports its new mode, in the EDID too.
    s.display.resize(1, 1920, 1200).unwrap();
    let resp = d.cmd(&mut s.fe, &encode::get_display_info());
    assert_eq!((u32_at(&resp, 56), u32_at(&resp, 60)), (1920, 1200));
    assert_eq!((u32_at(&resp, 32), u32_at(&resp, 36)), (1024, 768));
    let resp = d.cmd(&mut s.fe, &encode::get_edid(1));
    assert_eq!(&resp[32..160], &edid::build(1920, 1200, 1)[..]);
    assert_eq!(s.display.events(), EVENT_DISPLAY);
}

#[test]
fn edid_per_scanout() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    let (used, resp) = d.send(&mut s.fe, &encode::get_edid(1), 2048);
    assert_eq!(used as usize, EDID_RESP_LEN);
    assert_eq!(rtype(&resp), RESP_OK_EDID);
    assert_eq!(u32_at(&resp, 24), 128);
    let e = &resp[32..160];
    assert_eq!(e.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0, "checksum");
    assert_eq!(e, &edid::build(1024, 768, 1)[..]);
    // Preferred detailed timing: 1024x768.
    assert_eq!(u32::from(e[56]) | (u32::from(e[58] >> 4) << 8), 1024);
    assert_eq!(u32::from(e[59]) | (u32::from(e[61] >> 4) << 8), 768);
    assert!(resp[160..].iter().all(|&b| b == 0));

    assert_eq!(
        d.status(&mut s.fe, &encode::get_edid(2)),
        RESP_ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        d.status(&mut s.fe, &encode::get_edid(u32::MAX)),
        RESP_ERR_INVALID_SCANOUT_ID
    );

    // Without the feature the command is refused.
    let params = two_displays();
    let mut fe = Frontend::new(
        Box::new(Backend2d::new(1 << 20)),
        DisplayControl::new(&params),
        Arc::new(RecordingSink::default()),
        Arc::default(),
        false,
    );
    assert_eq!(d.status(&mut fe, &encode::get_edid(0)), RESP_ERR_UNSPEC);
}

#[test]
fn guest_pixels_reach_the_sink_with_their_damage() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    let (w, h) = (64u32, 48u32);
    let stride = w as usize * 4;
    let image = pattern(stride * h as usize, 1);
    resource(&mut d, &mut s.fe, 1, XRGB, w, h, &image);
    let full = Rect::new(0, 0, w, h);
    assert_eq!(
        d.status(&mut s.fe, &encode::transfer_to_host_2d(1, full, 0)),
        OK
    );
    assert_eq!(d.status(&mut s.fe, &encode::set_scanout(0, 1, full)), OK);
    assert_eq!(s.sink.take(), vec![Event::Mode(0, Some((64, 48)))]);
    assert_eq!(d.status(&mut s.fe, &encode::resource_flush(1, full)), OK);
    assert_eq!(
        s.sink.take(),
        vec![Event::Update {
            scanout: 0,
            width: w,
            height: h,
            format: PixelFormat::B8G8R8X8,
            pixels: image.clone(),
            damage: full,
        }]
    );

    // The guest redraws a rectangle; only it is transferred and flushed.
    let mut guest = image.clone();
    let r = Rect::new(10, 5, 20, 7);
    let fresh = pattern(stride * h as usize, 99);
    for y in r.y..r.y + r.height {
        let a = y as usize * stride + r.x as usize * 4;
        let b = a + r.width as usize * 4;
        guest[a..b].copy_from_slice(&fresh[a..b]);
    }
    scattered_backing(&mem, &guest);
    let offset = u64::from(r.y) * stride as u64 + u64::from(r.x) * 4;
    assert_eq!(
        d.status(&mut s.fe, &encode::transfer_to_host_2d(1, r, offset)),
        OK
    );
    assert_eq!(d.status(&mut s.fe, &encode::resource_flush(1, r)), OK);
    match &s.sink.take()[..] {
        [Event::Update { pixels, damage, .. }] => {
            assert_eq!(*damage, r);
            assert_eq!(pixels, &guest);
        }
        other => panic!("{other:?}"),
    }

    // Scanout 1 shows a part of the same resource: damage is clipped to
    // it and moved into its coordinates; its frame is that part.
    let part = Rect::new(16, 8, 32, 32);
    assert_eq!(d.status(&mut s.fe, &encode::set_scanout(1, 1, part)), OK);
    assert_eq!(s.sink.take(), vec![Event::Mode(1, Some((32, 32)))]);
    let damage = Rect::new(0, 0, 20, 12);
    assert_eq!(d.status(&mut s.fe, &encode::resource_flush(1, damage)), OK);
    let events = s.sink.take();
    assert_eq!(events.len(), 2);
    let mut want_part = Vec::new();
    for y in 8..40 {
        let a = y * stride + 16 * 4;
        want_part.extend_from_slice(&guest[a..a + 32 * 4]);
    }
    assert_eq!(
        events[1],
        Event::Update {
            scanout: 1,
            width: 32,
            height: 32,
            format: PixelFormat::B8G8R8X8,
            pixels: want_part,
            damage: Rect::new(0, 0, 4, 4),
        }
    );
    assert!(matches!(&events[0], Event::Update { scanout: 0, damage: d, .. } if *d == damage));
    // Damage outside scanout 1's part reaches scanout 0 only; damage
    // outside the resource is clipped away.
    assert_eq!(
        d.status(
            &mut s.fe,
            &encode::resource_flush(1, Rect::new(50, 0, 14, 5))
        ),
        OK
    );
    assert_eq!(s.sink.take().len(), 1);
    assert_eq!(
        d.status(
            &mut s.fe,
            &encode::resource_flush(1, Rect::new(64, 48, 10, 10))
        ),
        OK
    );
    assert!(s.sink.take().is_empty());
    // Same size again: no new mode.
    assert_eq!(
        d.status(
            &mut s.fe,
            &encode::set_scanout(1, 1, Rect::new(0, 0, 32, 32))
        ),
        OK
    );
    assert!(s.sink.take().is_empty());

    let m = s.metrics.snapshot(2);
    assert_eq!(m.command("transfer_to_host_2d"), 2);
    assert_eq!(m.command("resource_flush"), 5);
    assert_eq!(m.flushes, vec![4, 1]);
    assert_eq!(
        m.bytes_transferred,
        (stride * h as usize + 20 * 7 * 4) as u64
    );
    assert_eq!(m.resources, 1);
    assert_eq!(m.host_bytes, (stride * h as usize) as u64 + 3 * 24);
    assert_eq!(m.errors, 0);
    assert!(m.latency_max_ns > 0 && m.latency_mean_ns <= m.latency_max_ns);

    // SET_SCANOUT with resource 0 turns the scanout off; unref turns off
    // the others showing it.
    assert_eq!(
        d.status(&mut s.fe, &encode::set_scanout(1, 0, Rect::default())),
        OK
    );
    assert_eq!(s.sink.take(), vec![Event::Mode(1, None)]);
    assert_eq!(d.status(&mut s.fe, &encode::resource_unref(1)), OK);
    assert_eq!(s.sink.take(), vec![Event::Mode(0, None)]);
    let m = s.metrics.snapshot(2);
    assert_eq!((m.resources, m.host_bytes), (0, 0));
    assert_eq!(s.fe.scanouts().resource(0), Some(0));
}

#[test]
fn every_format_is_accepted() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    let formats = [1, 2, 3, 4, 67, 68, 121, 134];
    for (i, f) in formats.into_iter().enumerate() {
        let id = i as u32 + 1;
        assert_eq!(
            d.status(&mut s.fe, &encode::resource_create_2d(id, f, 32, 32)),
            OK
        );
        assert_eq!(
            d.status(
                &mut s.fe,
                &encode::set_scanout(0, id, Rect::new(0, 0, 32, 32))
            ),
            OK
        );
        assert_eq!(
            d.status(
                &mut s.fe,
                &encode::resource_flush(id, Rect::new(0, 0, 1, 1))
            ),
            OK
        );
        let events = s.sink.take();
        let Some(Event::Update { format, .. }) = events.last() else {
            panic!("{events:?}");
        };
        assert_eq!(Some(*format), pixel_format(f));
    }
    for f in [0, 5, 66, 120, 135, u32::MAX] {
        assert_eq!(
            d.status(&mut s.fe, &encode::resource_create_2d(100, f, 32, 32)),
            RESP_ERR_INVALID_PARAMETER
        );
    }
}

#[test]
fn cursor_updates_and_moves_reach_the_sink() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    // A 64x64 ARGB cursor: opaque red at (0,0), half-transparent white
    // (premultiplied) at (1,0), transparent elsewhere.
    let mut pixels = vec![0u8; 64 * 64 * 4];
    pixels[..4].copy_from_slice(&[0, 0, 255, 255]);
    pixels[4..8].copy_from_slice(&[128, 128, 128, 128]);
    resource(&mut d, &mut s.fe, 7, FORMAT_B8G8R8A8_UNORM, 64, 64, &pixels);
    assert_eq!(
        d.status(
            &mut s.fe,
            &encode::transfer_to_host_2d(7, Rect::new(0, 0, 64, 64), 0)
        ),
        OK
    );

    // Linux sends cursor commands without a response buffer.
    let (used, _) = d.send(&mut s.fe, &encode::update_cursor(1, 100, -3, 7, 5, 80), 0);
    assert_eq!(used, 0);
    let events = s.sink.take();
    assert_eq!(events.len(), 2);
    let Event::Cursor(1, Some(img)) = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!(
        (img.width, img.height, img.hot_x, img.hot_y),
        (64, 64, 5, 63)
    );
    assert_eq!(&img.rgba[..8], &[255, 0, 0, 255, 255, 255, 255, 128]);
    assert!(img.rgba[8..].iter().all(|&b| b == 0));
    assert_eq!(events[1], Event::Move(1, 100, -3));

    let (used, _) = d.send(&mut s.fe, &encode::move_cursor(0, 12, 34), 0);
    assert_eq!(used, 0);
    assert_eq!(s.sink.take(), vec![Event::Move(0, 12, 34)]);
    assert_eq!(d.status(&mut s.fe, &encode::move_cursor(0, -1, 2)), OK);
    assert_eq!(s.sink.take(), vec![Event::Move(0, -1, 2)]);

    // Resource 0 hides the cursor.
    assert_eq!(
        d.status(&mut s.fe, &encode::update_cursor(0, 1, 2, 0, 0, 0)),
        OK
    );
    assert_eq!(
        s.sink.take(),
        vec![Event::Cursor(0, None), Event::Move(0, 1, 2)]
    );

    // Errors: scanout, resource, size.
    assert_eq!(
        d.status(&mut s.fe, &encode::update_cursor(2, 0, 0, 7, 0, 0)),
        RESP_ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        d.status(&mut s.fe, &encode::move_cursor(16, 0, 0)),
        RESP_ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        d.status(&mut s.fe, &encode::update_cursor(0, 0, 0, 8, 0, 0)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        d.status(&mut s.fe, &encode::resource_create_2d(9, XRGB, 65, 64)),
        OK
    );
    assert_eq!(
        d.status(&mut s.fe, &encode::update_cursor(0, 0, 0, 9, 0, 0)),
        RESP_ERR_INVALID_PARAMETER
    );
    assert!(s.sink.take().is_empty());
    let m = s.metrics.snapshot(2);
    assert_eq!(m.command("update_cursor"), 5);
    assert_eq!(m.command("move_cursor"), 3);
}

#[test]
fn resource_errors() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&GpuParams {
        max_hostmem: 1 << 20,
        width: 256,
        height: 256,
        ..GpuParams::default()
    });
    let fe = &mut s.fe;
    let st = |d: &mut Driver<'_>, fe: &mut Frontend, req: Vec<u8>| d.status(fe, &req);
    assert_eq!(
        st(&mut d, fe, encode::resource_create_2d(1, XRGB, 256, 256)),
        OK
    );
    // Reused and reserved ids.
    assert_eq!(
        st(&mut d, fe, encode::resource_create_2d(1, XRGB, 8, 8)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        st(&mut d, fe, encode::resource_create_2d(0, XRGB, 8, 8)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    // Zero and huge sizes.
    for (w, h) in [(0, 8), (8, 0), (0, 0), (u32::MAX, 1), (1 << 30, 4)] {
        assert_eq!(
            st(&mut d, fe, encode::resource_create_2d(2, XRGB, w, h)),
            RESP_ERR_INVALID_PARAMETER,
            "{w}x{h}"
        );
    }
    // The cap: 1 MiB is full with resource 1 (256 KiB) and 3 more.
    for (w, h) in [(1 << 28, 1 << 28), (u32::MAX / 4, u32::MAX), (1024, 1024)] {
        assert_eq!(
            st(&mut d, fe, encode::resource_create_2d(2, XRGB, w, h)),
            RESP_ERR_OUT_OF_MEMORY,
            "{w}x{h}"
        );
    }
    for id in 2..=4 {
        assert_eq!(
            st(&mut d, fe, encode::resource_create_2d(id, XRGB, 256, 256)),
            OK
        );
    }
    assert_eq!(
        st(&mut d, fe, encode::resource_create_2d(5, XRGB, 1, 1)),
        RESP_ERR_OUT_OF_MEMORY
    );
    assert_eq!(s.metrics.snapshot(1).host_bytes, 1 << 20);
    assert_eq!(st(&mut d, fe, encode::resource_unref(4)), OK);
    assert_eq!(
        st(&mut d, fe, encode::resource_create_2d(5, XRGB, 1, 1)),
        OK
    );
    // Unknown ids everywhere.
    let r = Rect::new(0, 0, 1, 1);
    for req in [
        encode::resource_unref(4),
        encode::resource_flush(4, r),
        encode::transfer_to_host_2d(4, r, 0),
        encode::resource_attach_backing(4, &[(BACKING, 4096)]),
        encode::resource_detach_backing(4),
        encode::set_scanout(0, 4, r),
        encode::resource_unref(0),
    ] {
        assert_eq!(st(&mut d, fe, req), RESP_ERR_INVALID_RESOURCE_ID);
    }
    // Transfer without backing; detach without backing.
    assert_eq!(
        st(&mut d, fe, encode::transfer_to_host_2d(1, r, 0)),
        RESP_ERR_UNSPEC
    );
    assert_eq!(
        st(&mut d, fe, encode::resource_detach_backing(1)),
        RESP_ERR_UNSPEC
    );
    // Backing outside guest memory, empty, too many entries, twice.
    for entries in [
        vec![(MEM_SIZE as u64, 4096)],
        vec![(BACKING, 4096), (MEM_SIZE as u64 - 4096, 4097)],
        vec![(u64::MAX - 4095, 4096)],
        vec![(BACKING, u32::MAX)],
        vec![],
    ] {
        assert_eq!(
            st(&mut d, fe, encode::resource_attach_backing(1, &entries)),
            RESP_ERR_INVALID_PARAMETER,
            "{entries:?}"
        );
    }
    // Too many entries, in a request longer than the device reads.
    let many = vec![(BACKING, 16); MAX_BACKING_ENTRIES as usize + 2];
    let req = encode::resource_attach_backing(1, &many);
    assert!(req.len() > MAX_REQUEST_LEN);
    assert_eq!(st(&mut d, fe, req), RESP_ERR_INVALID_PARAMETER);
    let entries = vec![(BACKING, 128 * 1024), (BACKING + 0x2_0000, 128 * 1024)];
    assert_eq!(
        st(&mut d, fe, encode::resource_attach_backing(1, &entries)),
        OK
    );
    assert_eq!(
        st(&mut d, fe, encode::resource_attach_backing(1, &entries)),
        RESP_ERR_UNSPEC
    );
    // Transfers outside the resource or its backing.
    for (rect, offset) in [
        (Rect::new(0, 0, 257, 1), 0),
        (Rect::new(256, 0, 1, 1), 0),
        (Rect::new(0, 255, 1, 2), 0),
        (Rect::new(u32::MAX, u32::MAX, 2, 2), 0),
        (Rect::new(0, 0, 256, 256), 1),
        (Rect::new(0, 0, 1, 1), 256 * 1024),
        (Rect::new(0, 0, 1, 1), u64::MAX),
    ] {
        assert_eq!(
            st(&mut d, fe, encode::transfer_to_host_2d(1, rect, offset)),
            RESP_ERR_INVALID_PARAMETER,
            "{rect:?} at {offset}"
        );
    }
    assert_eq!(
        st(
            &mut d,
            fe,
            encode::transfer_to_host_2d(1, Rect::new(0, 0, 256, 256), 0)
        ),
        OK
    );
    assert_eq!(st(&mut d, fe, encode::resource_detach_backing(1)), OK);
    assert_eq!(
        st(&mut d, fe, encode::transfer_to_host_2d(1, r, 0)),
        RESP_ERR_UNSPEC
    );
    // Scanout ids and rectangles.
    for id in [1, 16, u32::MAX] {
        assert_eq!(
            st(&mut d, fe, encode::set_scanout(id, 1, r)),
            RESP_ERR_INVALID_SCANOUT_ID
        );
        assert_eq!(
            st(&mut d, fe, encode::set_scanout(id, 0, r)),
            RESP_ERR_INVALID_SCANOUT_ID
        );
    }
    for rect in [
        Rect::new(0, 0, 0, 0),
        Rect::new(0, 0, 257, 256),
        Rect::new(1, 0, 256, 256),
        Rect::new(0, u32::MAX, 1, 1),
        Rect::new(u32::MAX, 0, 1, 1),
    ] {
        assert_eq!(
            st(&mut d, fe, encode::set_scanout(0, 1, rect)),
            RESP_ERR_INVALID_PARAMETER,
            "{rect:?}"
        );
    }
    assert!(s.sink.take().is_empty());
    let m = s.metrics.snapshot(1);
    assert!(m.errors >= 30, "{}", m.errors);
    // Only the oversized ATTACH_BACKING failed to decode.
    assert_eq!(m.invalid_commands, 1);
}

#[test]
fn malformed_chains_get_errors_not_panics() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    let fe = &mut s.fe;
    // Short header, short body, unknown and unsupported types.
    let (used, resp) = d.send(fe, &[1, 1, 0, 0, 0, 0], 64);
    assert_eq!((used, rtype(&resp)), (24, RESP_ERR_UNSPEC));
    let create = encode::resource_create_2d(1, XRGB, 8, 8);
    assert_eq!(d.status(fe, &create[..39]), RESP_ERR_UNSPEC);
    for t in [0, 0x0200, CMD_GET_CAPSET_INFO, 0x1100, 0xdead_beef] {
        assert_eq!(
            d.status(fe, &encode::hdr(t, 0, 0)),
            RESP_ERR_UNSPEC,
            "{t:#x}"
        );
    }
    // A request split over several descriptors works.
    mem.write_slice(&create, GuestAddress(REQ)).unwrap();
    d.add_chain(&[
        (REQ, 3, false),
        (REQ + 3, 20, false),
        (REQ + 23, 17, false),
        (RESP, 10, true),
        (RESP + 10, 100, true),
    ]);
    assert_eq!(d.run(fe), vec![24]);
    let mut hdr = [0u8; 24];
    mem.read_slice(&mut hdr, GuestAddress(RESP)).unwrap();
    assert_eq!(rtype(&hdr), OK);
    // Readable after writable.
    d.add_chain(&[(REQ, 24, false), (RESP, 64, true), (REQ + 24, 16, false)]);
    assert_eq!(d.run(fe), vec![24]);
    mem.read_slice(&mut hdr, GuestAddress(RESP)).unwrap();
    assert_eq!(rtype(&hdr), RESP_ERR_UNSPEC);
    // Request outside guest memory.
    d.add_chain(&[(MEM_SIZE as u64 - 8, 40, false), (RESP, 64, true)]);
    assert_eq!(d.run(fe), vec![24]);
    mem.read_slice(&mut hdr, GuestAddress(RESP)).unwrap();
    assert_eq!(rtype(&hdr), RESP_ERR_UNSPEC);
    // Response outside guest memory: nothing written, used length 0.
    d.add_chain(&[(REQ, 24, false), (u64::MAX - 10, 64, true)]);
    assert_eq!(d.run(fe), vec![0]);
    // Response buffer too small for display info: a bare error header.
    let (used, resp) = d.send(fe, &encode::get_display_info(), 24);
    assert_eq!((used, rtype(&resp)), (24, RESP_ERR_UNSPEC));
    // Smaller than a header: nothing.
    assert_eq!(d.send(fe, &encode::get_display_info(), 23).0, 0);
    assert_eq!(d.send(fe, &encode::get_display_info(), 0).0, 0);
    // No readable part at all.
    d.add_chain(&[(RESP, 64, true)]);
    assert_eq!(d.run(fe), vec![24]);
    // Zero-length descriptors are skipped.
    let info = encode::get_display_info();
    mem.write_slice(&info, GuestAddress(REQ)).unwrap();
    d.add_chain(&[
        (REQ, 0, false),
        (REQ, 24, false),
        (RESP, 0, true),
        (RESP, 512, true),
    ]);
    assert_eq!(d.run(fe), vec![DISPLAY_INFO_LEN as u32]);
    // A huge readable descriptor is read only up to the largest request.
    mem.write_slice(&info, GuestAddress(REQ)).unwrap();
    d.add_chain(&[
        (REQ, (MEM_SIZE as u64 - REQ) as u32, false),
        (RESP, 512, true),
    ]);
    assert_eq!(d.run(fe), vec![DISPLAY_INFO_LEN as u32]);
    // Indirect descriptors (VIRTIO_RING_F_INDIRECT_DESC): the head points
    // at a table holding the request and the response buffer.
    let table = 0x8000u64;
    let entries = [
        Descriptor::new(REQ, 24, DESC_F_NEXT, 1),
        Descriptor::new(RESP, 512, DESC_F_WRITE, 0),
    ];
    for (i, e) in entries.into_iter().enumerate() {
        mem.write_obj(RawDescriptor::from(e), GuestAddress(table + i as u64 * 16))
            .unwrap();
    }
    d.add_indirect(table, 2);
    assert_eq!(d.run(fe), vec![DISPLAY_INFO_LEN as u32]);
    mem.read_slice(&mut hdr, GuestAddress(RESP)).unwrap();
    assert_eq!(rtype(&hdr), RESP_OK_DISPLAY_INFO);
    let m = s.metrics.snapshot(2);
    assert_eq!(m.invalid_commands, 11);
    // Still serving.
    assert_eq!(
        d.status(&mut s.fe, &encode::resource_create_2d(2, XRGB, 8, 8)),
        OK
    );
}

#[test]
fn fences_are_echoed() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    let mut req = encode::resource_create_2d(1, XRGB, 8, 8);
    req[4..8].copy_from_slice(&(FLAG_FENCE | FLAG_INFO_RING_IDX).to_le_bytes());
    req[8..16].copy_from_slice(&0x1234_5678_9abc_u64.to_le_bytes());
    req[16..20].copy_from_slice(&3u32.to_le_bytes());
    req[20] = 2;
    let resp = d.cmd(&mut s.fe, &req);
    assert_eq!(rtype(&resp), OK);
    assert_eq!(u32_at(&resp, 4), FLAG_FENCE | FLAG_INFO_RING_IDX);
    assert_eq!(
        u64::from_le_bytes(resp[8..16].try_into().unwrap()),
        0x1234_5678_9abc
    );
    assert_eq!((u32_at(&resp, 16), resp[20]), (3, 2));
    // An error response completes the fence too.
    let resp = d.cmd(&mut s.fe, &req);
    assert_eq!(rtype(&resp), RESP_ERR_INVALID_RESOURCE_ID);
    assert_eq!(u32_at(&resp, 4), FLAG_FENCE | FLAG_INFO_RING_IDX);
    // FENCE alone echoes no ring index; no FENCE echoes nothing.
    req[4..8].copy_from_slice(&FLAG_FENCE.to_le_bytes());
    let resp = d.cmd(&mut s.fe, &req);
    assert_eq!((u32_at(&resp, 4), resp[20]), (FLAG_FENCE, 0));
    assert_eq!(
        u64::from_le_bytes(resp[8..16].try_into().unwrap()),
        0x1234_5678_9abc
    );
    req[4..8].copy_from_slice(&0u32.to_le_bytes());
    let resp = d.cmd(&mut s.fe, &req);
    assert!(resp[4..24].iter().all(|&b| b == 0));
    // A fenced display-info response is fenced too.
    let mut info = encode::hdr(CMD_GET_DISPLAY_INFO, FLAG_FENCE, 9);
    info.truncate(24);
    let resp = d.cmd(&mut s.fe, &info);
    assert_eq!(
        (rtype(&resp), u32_at(&resp, 4)),
        (RESP_OK_DISPLAY_INFO, FLAG_FENCE)
    );
    assert_eq!(s.metrics.snapshot(2).fences, 4);
}

#[test]
fn many_commands_in_one_kick() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut s = setup(&two_displays());
    // 200 chains over a 64-entry queue, several rounds.
    for round in 0..4u32 {
        for i in 0..50u32 {
            let req = encode::resource_create_2d(round * 50 + i + 1, XRGB, 4, 4);
            let at = REQ + u64::from(i) * 64;
            mem.write_slice(&req, GuestAddress(at)).unwrap();
            d.add_chain(&[(at, 40, false), (RESP + u64::from(i) * 32, 24, true)]);
            if i % 25 == 24 {
                assert_eq!(d.run(&mut s.fe), vec![24; 25]);
            }
        }
    }
    assert_eq!(s.metrics.snapshot(2).resources, 200);
}

#[derive(Default)]
struct CountingInterrupt {
    queue: AtomicU64,
    config: AtomicU64,
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        match kind {
            InterruptKind::Queue(_) => self.queue.fetch_add(1, Ordering::SeqCst),
            InterruptKind::Config => self.config.fetch_add(1, Ordering::SeqCst),
        };
    }
}

#[test]
fn device_identity_config_and_errors() {
    let sink: Arc<dyn ScanoutSink> = Arc::new(RecordingSink::default());
    let err = VirtioGpu::new(
        GpuParams {
            displays: 17,
            ..GpuParams::default()
        },
        sink.clone(),
    )
    .err()
    .unwrap();
    assert_eq!(err.to_string(), "invalid GPU parameters");
    assert!(std::error::Error::source(&err).is_some());

    let mut gpu = VirtioGpu::new(two_displays(), sink).unwrap();
    assert_eq!(gpu.device_type(), 16);
    assert_eq!(gpu.queue_max_sizes(), &[256, 256]);
    let f = gpu.features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & (1 << VIRTIO_GPU_F_EDID), 0);
    assert_eq!(f & (1 << VIRTIO_GPU_F_VIRGL), 0);
    let mut c = [0xffu8; 20];
    gpu.read_config(0, &mut c);
    assert_eq!(&c[..16], &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&c[16..], &[0; 4]);

    // Resizing sets the event; events_clear clears it (partial writes too).
    gpu.resize(1, 800, 600).unwrap();
    assert_eq!(gpu.display_control().mode(1), Some((800, 600)));
    let mut ev = [0u8; 4];
    gpu.read_config(0, &mut ev);
    assert_eq!(u32::from_le_bytes(ev), EVENT_DISPLAY);
    gpu.write_config(6, &[1]);
    gpu.read_config(0, &mut ev);
    assert_eq!(u32::from_le_bytes(ev), EVENT_DISPLAY);
    gpu.write_config(4, &[1, 0, 0, 0]);
    gpu.read_config(0, &mut ev);
    assert_eq!(u32::from_le_bytes(ev), 0);
    gpu.write_config(u64::MAX, &[1, 2]);
    assert!(matches!(
        gpu.resize(2, 800, 600),
        Err(ResizeError::NoDisplay(2))
    ));
    assert!(matches!(gpu.resize(0, 8, 600), Err(ResizeError::Mode(_))));

    let metrics = gpu.metrics().unwrap();
    assert_eq!(metrics["resources_current"], 0);
    assert_eq!(metrics["flushes_scanout_1"], 0);
    assert!(gpu.reset().is_none());
}

#[test]
fn activate_serves_kicks_resizes_and_reset_clears_the_screens() {
    let mem = Arc::new(mem());
    let sink = Arc::new(RecordingSink::default());
    let mut gpu = VirtioGpu::new(two_displays(), sink.clone()).unwrap();
    let ctrl = MockSplitQueue::create(&*mem, GuestAddress(0), 16);
    let cursor = MockSplitQueue::create(&*mem, GuestAddress(0x9000), 16);
    let kicks = [
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    ];
    let interrupt = Arc::new(CountingInterrupt::default());
    let ctx = |queues: Vec<ActiveQueue>| ActivateContext {
        mem: mem.clone(),
        queues,
        interrupt: interrupt.clone(),
        acked_features: VIRTIO_F_VERSION_1 | (1 << VIRTIO_GPU_F_EDID),
        shm: None,
        notifications: Default::default(),
    };
    let err = gpu.activate(ctx(vec![])).unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 0
        }
    ));
    let queues = vec![
        ActiveQueue {
            queue: ctrl.create_queue().unwrap(),
            kick: kicks[0].try_clone().unwrap(),
        },
        ActiveQueue {
            queue: cursor.create_queue().unwrap(),
            kick: kicks[1].try_clone().unwrap(),
        },
    ];
    gpu.activate(ctx(queues)).unwrap();

    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let chain = |mock: &MockSplitQueue<'_, GuestMemory>, at: u64, req: &[u8], resp: Option<u64>| {
        mem.write_slice(req, GuestAddress(at)).unwrap();
        let mut descs = vec![RawDescriptor::from(Descriptor::new(
            at,
            req.len() as u32,
            if resp.is_some() { DESC_F_NEXT } else { 0 },
            1,
        ))];
        if let Some(r) = resp {
            descs.push(RawDescriptor::from(Descriptor::new(
                r,
                1024,
                DESC_F_WRITE,
                0,
            )));
        }
        mock.add_desc_chains(&descs, 0).unwrap();
    };

    // A 32x32 resource on scanout 0, flushed, through the controlq.
    let image = pattern(32 * 32 * 4, 5);
    mem.write_slice(&image, GuestAddress(BACKING)).unwrap();
    let full = Rect::new(0, 0, 32, 32);
    for (i, req) in [
        encode::resource_create_2d(1, XRGB, 32, 32),
        encode::resource_attach_backing(1, &[(BACKING, 4096)]),
        encode::transfer_to_host_2d(1, full, 0),
        encode::set_scanout(0, 1, full),
        encode::resource_flush(1, full),
    ]
    .iter()
    .enumerate()
    {
        chain(&ctrl, REQ, req, Some(RESP));
        kicks[0].write(1).unwrap();
        let n = i as u16 + 1;
        wait("the controlq", &|| ctrl.used().idx().load() == n);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(RESP)).unwrap(),
            OK,
            "command {i}"
        );
    }
    wait("an interrupt", &|| {
        interrupt.queue.load(Ordering::SeqCst) > 0
    });
    // A cursor move through the cursorq.
    chain(&cursor, REQ + 0x1000, &encode::move_cursor(0, 3, 4), None);
    kicks[1].write(1).unwrap();
    wait("the cursorq", &|| cursor.used().idx().load() == 1);
    let events = sink.take();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0], Event::Mode(0, Some((32, 32))));
    assert!(matches!(&events[1], Event::Update { pixels, .. } if *pixels == image));
    assert_eq!(events[2], Event::Move(0, 3, 4));
    assert_eq!(gpu.metrics().unwrap()["flushes_scanout_0"], 1);

    // Hot resize while running: config interrupt, new display info.
    gpu.resize(0, 1920, 1080).unwrap();
    assert_eq!(interrupt.config.load(Ordering::SeqCst), 1);
    gpu.resize(0, 1920, 1080).unwrap();
    assert_eq!(
        interrupt.config.load(Ordering::SeqCst),
        1,
        "same mode: no event"
    );
    let mut ev = [0u8; 4];
    gpu.read_config(0, &mut ev);
    assert_eq!(u32::from_le_bytes(ev), EVENT_DISPLAY);
    chain(&ctrl, REQ, &encode::get_display_info(), Some(RESP));
    kicks[0].write(1).unwrap();
    wait("display info", &|| ctrl.used().idx().load() == 6);
    let mut info = [0u8; 64];
    mem.read_slice(&mut info, GuestAddress(RESP)).unwrap();
    assert_eq!((u32_at(&info, 32), u32_at(&info, 36)), (1920, 1080));
    assert_eq!((u32_at(&info, 56), u32_at(&info, 60)), (1024, 768));

    assert!(matches!(
        gpu.activate(ctx(vec![])),
        Err(ActivateError::AlreadyActive)
    ));
    let returned = gpu.reset().expect("device was active");
    assert_eq!(returned.len(), 2);
    // Reset turns the screens off and frees the resources.
    let events = sink.take();
    assert!(events.contains(&Event::Mode(0, None)), "{events:?}");
    assert!(events.contains(&Event::Cursor(0, None)));
    assert!(events.contains(&Event::Cursor(1, None)));
    assert!(
        !events.contains(&Event::Mode(1, None)),
        "scanout 1 was never on"
    );
    let m = gpu.metrics().unwrap();
    assert_eq!(
        (
            m["resources_current"].as_u64(),
            m["host_bytes_current"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(m["commands_resource_create_2d"], 1);
    gpu.read_config(0, &mut ev);
    assert_eq!(u32::from_le_bytes(ev), 0, "reset clears events");
    // No interrupt after reset.
    gpu.resize(1, 640, 480).unwrap();
    assert_eq!(interrupt.config.load(Ordering::SeqCst), 1);
    assert!(gpu.reset().is_none());
}

mod manual3d;
mod three_d;
