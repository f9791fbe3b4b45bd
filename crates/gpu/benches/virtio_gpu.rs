//! Device-side throughput of the virtio-gpu 2D path, in-process: requests
//! go through a split virtqueue in guest memory (the driver's side written
//! here) into the device's [`Frontend`], with a sink that drops frames.
//!
//! - full frame: TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of a 1920x1080 XRGB
//!   resource, its backing either 4 KiB guest pages in reverse order (no
//!   two adjacent: the worst case of Linux's shmem scatter lists) or one
//!   contiguous run; beside `copy_from_slice` of the same 8,294,400 bytes
//!   between two page-aligned host buffers. The three are timed in
//!   interleaved rounds, so each round's ratio compares like with like on a
//!   shared machine; the figures are medians over the rounds.
//! - damaged rectangles: 64x64 TRANSFER_TO_HOST_2D + RESOURCE_FLUSH pairs
//!   at moving positions.
//!
//! `cargo bench -p pv-gpu --bench virtio_gpu` (release build).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pv_devices::virtio::worker::QueueHandler;
use pv_devices::GuestMemory;
use pv_display::{CursorImage, FrameView, Rect, ScanoutSink};
use pv_gpu::virtio_gpu::protocol::{encode, FORMAT_B8G8R8X8_UNORM, RESP_OK_NODATA};
use pv_gpu::virtio_gpu::{Backend2d, DisplayControl, Frontend, GpuMetrics, GpuParams};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const FRAME: usize = (WIDTH * HEIGHT * 4) as usize;
const MEM_SIZE: usize = 64 << 20;
const QSIZE: u16 = 256;
/// Each driver's rings and requests live in its own 256 KiB window.
const DRIVER_WINDOW: u64 = 0x4_0000;
/// Scattered backing pages live here (reverse order).
const FB_PAGES: u64 = 0x100_0000;
/// The contiguous backing lives here.
const FB_LINEAR: u64 = 0x200_0000;
const ROUNDS: usize = 15;
const FRAMES_PER_ROUND: u32 = 40;
const DAMAGE_PER_ROUND: u32 = 2000;

/// Drops everything (the bench measures the device, not a display).
struct NullSink;

impl ScanoutSink for NullSink {
    fn set_mode(&self, _: u32, _: Option<(u32, u32)>) {}
    fn update(&self, _: u32, frame: &FrameView<'_>, damage: Rect) {
        black_box((frame.data.as_ptr(), damage));
    }
    fn set_cursor(&self, _: u32, _: Option<&CursorImage>) {}
    fn move_cursor(&self, _: u32, _: i32, _: i32) {}
}

/// The driver's side of a controlq, with a device frontend behind it.
struct Gpu<'a> {
    mem: &'a GuestMemory,
    fe: Frontend,
    metrics: Arc<GpuMetrics>,
    queue: Queue,
    base: u64,
    next_desc: u16,
    avail: u16,
}

impl<'a> Gpu<'a> {
    /// Driver number `n` (its own window of guest memory) and a 1920x1080
    /// display.
    fn new(mem: &'a GuestMemory, n: u64) -> Self {
        let base = n * DRIVER_WINDOW;
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(base as u32), Some(0));
        queue.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
        queue.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let params = GpuParams {
            width: WIDTH,
            height: HEIGHT,
            ..GpuParams::default()
        };
        let metrics = Arc::new(GpuMetrics::default());
        let fe = Frontend::new(
            Box::new(Backend2d::new(params.max_hostmem)),
            DisplayControl::new(&params),
            Arc::new(NullSink),
            metrics.clone(),
            true,
        );
        Self {
            mem,
            fe,
            metrics,
            queue,
            base,
            next_desc: 0,
            avail: 0,
        }
    }

    fn resp(&self) -> u64 {
        self.base + 0x3000
    }

    /// Where the `i`th prepared request goes.
    fn req(&self, i: u64) -> u64 {
        self.base + 0x4000 + i * 128
    }

    /// Queues the request at `req` (`len` bytes) with a response buffer.
    fn add(&mut self, req: u64, len: u32) {
        let head = self.next_desc;
        let descs = [
            Descriptor::new(req, len, 1, (head + 1) % QSIZE),
            Descriptor::new(self.resp(), 64, 2, 0),
        ];
        for (i, d) in descs.into_iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let at = GuestAddress(self.base + u64::from(idx) * 16);
            self.mem.write_obj(RawDescriptor::from(d), at).unwrap();
        }
        self.next_desc = (head + 2) % QSIZE;
        let slot = u64::from(self.avail % QSIZE);
        let at = GuestAddress(self.base + 0x1000 + 4 + slot * 2);
        self.mem.write_obj(head, at).unwrap();
        self.avail = self.avail.wrapping_add(1);
        let at = GuestAddress(self.base + 0x1000 + 2);
        self.mem.write_obj(self.avail, at).unwrap();
    }

    fn run(&mut self) {
        self.fe.process_queue(0, &mut self.queue, self.mem);
    }

    /// Sends one request (in the large request area) and checks it worked.
    fn call(&mut self, req: &[u8]) {
        let at = self.base + 0x1_0000;
        assert!(req.len() as u64 <= DRIVER_WINDOW - 0x1_0000);
        self.mem.write_slice(req, GuestAddress(at)).unwrap();
        self.add(at, req.len() as u32);
        self.run();
        let status: u32 = self.mem.read_obj(GuestAddress(self.resp())).unwrap();
        assert_eq!(status, RESP_OK_NODATA, "request failed");
    }

    /// Resource 1: the whole display, backed by `entries`, on scanout 0.
    fn framebuffer(&mut self, entries: &[(u64, u32)]) {
        let full = Rect::new(0, 0, WIDTH, HEIGHT);
        self.call(&encode::resource_create_2d(
            1,
            FORMAT_B8G8R8X8_UNORM,
            WIDTH,
            HEIGHT,
        ));
        self.call(&encode::resource_attach_backing(1, entries));
        self.call(&encode::set_scanout(0, 1, full));
    }

    /// Prepares request `i` (transfer of `r`) and `i + 1` (its flush).
    fn prepare_update(&self, i: u64, r: Rect) {
        let offset = u64::from(r.y) * u64::from(WIDTH) * 4 + u64::from(r.x) * 4;
        let t = encode::transfer_to_host_2d(1, r, offset);
        let f = encode::resource_flush(1, r);
        self.mem.write_slice(&t, GuestAddress(self.req(i))).unwrap();
        self.mem
            .write_slice(&f, GuestAddress(self.req(i + 1)))
            .unwrap();
    }

    /// Queues prepared update `i` and runs the device.
    fn update(&mut self, i: u64) {
        self.add(self.req(i), 56);
        self.add(self.req(i + 1), 48);
        self.run();
    }

    /// Checks every command succeeded and `flushes` frames were flushed.
    fn check(&self, flushes: u64) {
        let m = self.metrics.snapshot(1);
        assert_eq!(m.errors, 0);
        assert_eq!(m.flushes[0], flushes);
    }
}

fn time(iters: u32, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed() / iters
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn gbps(d: Duration) -> f64 {
    FRAME as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let image: Vec<u8> = (0..FRAME).map(|i| (i * 7 + i / 4096) as u8).collect();
    // Page p of the frame at FB_PAGES + (pages - 1 - p) * 4096.
    let pages = FRAME.div_ceil(4096);
    let scattered: Vec<(u64, u32)> = (0..pages)
        .map(|p| {
            let addr = FB_PAGES + ((pages - 1 - p) * 4096) as u64;
            let chunk = &image[p * 4096..FRAME.min((p + 1) * 4096)];
            mem.write_slice(chunk, GuestAddress(addr)).unwrap();
            (addr, chunk.len() as u32)
        })
        .collect();
    mem.write_slice(&image, GuestAddress(FB_LINEAR)).unwrap();

    let full = Rect::new(0, 0, WIDTH, HEIGHT);
    let mut paged = Gpu::new(&mem, 0);
    paged.framebuffer(&scattered);
    paged.prepare_update(0, full);
    let mut linear = Gpu::new(&mem, 1);
    linear.framebuffer(&[(FB_LINEAR, FRAME as u32)]);
    linear.prepare_update(0, full);
    // The memcpy baseline, page-aligned like the resources.
    let mut src = vec![0u8; FRAME + 4096];
    let mut dst = vec![0u8; FRAME + 4096];
    let (so, do_) = (
        src.as_ptr().align_offset(4096),
        dst.as_ptr().align_offset(4096),
    );
    src[so..so + FRAME].copy_from_slice(&image);
    // Warm up: fault in every buffer.
    paged.update(0);
    linear.update(0);
    dst[do_..do_ + FRAME].copy_from_slice(&src[so..so + FRAME]);

    let mut memcpy = Vec::new();
    let mut paged_t = Vec::new();
    let mut linear_t = Vec::new();
    for _ in 0..ROUNDS {
        memcpy.push(time(FRAMES_PER_ROUND, || {
            dst[do_..do_ + FRAME].copy_from_slice(black_box(&src[so..so + FRAME]));
            black_box(&dst);
        }));
        paged_t.push(time(FRAMES_PER_ROUND, || paged.update(0)));
        linear_t.push(time(FRAMES_PER_ROUND, || linear.update(0)));
    }
    let frames = 1 + u64::from(FRAMES_PER_ROUND) * ROUNDS as u64;
    paged.check(frames);
    linear.check(frames);

    println!(
        "virtio-gpu 2D, 1920x1080 XRGB ({FRAME} bytes a frame), medians of {ROUNDS} interleaved rounds x {FRAMES_PER_ROUND} frames"
    );
    let m = median(memcpy.clone());
    println!(
        "  memcpy (copy_from_slice)          {:8.1} frames/s  {:6.2} GB/s",
        1.0 / m.as_secs_f64(),
        gbps(m)
    );
    for (name, t) in [
        ("transfer+flush, 4 KiB pages", &paged_t),
        ("transfer+flush, contiguous", &linear_t),
    ] {
        let ratios: Vec<f64> = memcpy
            .iter()
            .zip(t)
            .map(|(m, t)| m.as_secs_f64() / t.as_secs_f64())
            .collect();
        let d = median(t.clone());
        println!(
            "  {name:<33} {:8.1} frames/s  {:6.2} GB/s  {:5.1}% of memcpy (rounds: {:.0}% to {:.0}%)",
            1.0 / d.as_secs_f64(),
            gbps(d),
            100.0 * median(ratios.clone()),
            100.0 * ratios.iter().cloned().fold(f64::MAX, f64::min),
            100.0 * ratios.iter().cloned().fold(0.0, f64::max),
        );
    }

    // Damaged rectangles: 64x64 at 128 positions, requests prepared once.
    let mut gpu = Gpu::new(&mem, 2);
    gpu.framebuffer(&scattered);
    let spots = 128u64;
    for i in 0..spots {
        let x = (i as u32 * 149) % (WIDTH - 64);
        let y = (i as u32 * 83) % (HEIGHT - 64);
        gpu.prepare_update(2 * i, Rect::new(x, y, 64, 64));
    }
    let mut next = 0u64;
    let per_update = median(
        (0..ROUNDS)
            .map(|_| {
                time(DAMAGE_PER_ROUND, || {
                    gpu.update(2 * next);
                    next = (next + 1) % spots;
                })
            })
            .collect(),
    );
    gpu.check(u64::from(DAMAGE_PER_ROUND) * ROUNDS as u64);
    let m = gpu.metrics.snapshot(1);
    println!(
        "  64x64 damage transfer+flush       {:8.0} updates/s ({:.2} us each; command latency mean {} ns)",
        1.0 / per_update.as_secs_f64(),
        per_update.as_secs_f64() * 1e6,
        m.latency_mean_ns,
    );
}
