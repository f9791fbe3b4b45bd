//! Device-side costs of the 3D path, against the real virglrenderer:
//!
//! - fence round trip: a fence created and its callback seen through the
//!   eventfd the device waits on (no other work queued), on the device
//!   timeline (virgl) and on a Venus context's ring;
//! - blob lifetime: create + map + unmap + unref of a HOST3D blob (the
//!   Venus ring memory kind), beside mmap + first touch + munmap of
//!   anonymous memory of the same size (the physical floor);
//! - texture upload: TRANSFER_TO_HOST of a 1920x1080 BGRX texture from a
//!   host buffer, beside a memcpy of the same bytes;
//! - scanout read back: what a RESOURCE_FLUSH of a 3D scanout costs, the
//!   whole 1920x1080 frame beside a 64x64 damaged rectangle (what the
//!   device reads since it reads only the flushed rectangle).
//!
//! The host's virglrenderer may be too old, so the bench runs itself under
//! the GPU runtime like the tests (`PEARVISOR_GPU_RUNTIME=DIR` or the
//! cached one; `PV_VIRGL_DIRECT=1` uses the library the loader finds).
//! `cargo bench -p pv-gpu --bench virgl`.

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pv_gpu::virgl::ffi::{VirglBox, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_HOST3D};
use pv_gpu::virgl::runtime::{RuntimeLayout, ACTIVE_ENV};
use pv_gpu::virgl::{
    Blob, ContextTypes, FenceEvent, HostRange, Renderer, RendererOptions, Resource3d, Timeline,
    Transfer, VirglLibrary, CAPSET_VENUS, CAPSET_VIRGL2,
};

fn reexec_under_runtime() -> bool {
    if RuntimeLayout::active().is_some() || std::env::var_os("PV_VIRGL_DIRECT").is_some() {
        return false;
    }
    let rt = RuntimeLayout::new(pv_gpu::virgl::testing::runtime_root());
    let exe = std::env::current_exe().expect("bench binary");
    let mut cmd = Command::new(rt.loader());
    cmd.args(rt.loader_args(&exe))
        .args(std::env::args_os().skip(1))
        .env(ACTIVE_ENV, &rt.root);
    for (k, v) in rt.default_env() {
        if std::env::var_os(&k).is_none() {
            cmd.env(k, v);
        }
    }
    let status = cmd.status().expect("run the bench under the GPU runtime");
    std::process::exit(status.code().unwrap_or(1));
}

fn wait(r: &Renderer, want: FenceEvent) {
    loop {
        let mut pfd = libc::pollfd {
            fd: r.fences().eventfd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert!(n > 0, "fence {want:?} did not signal within 5 s");
        if r.fences().drain().contains(&want) {
            return;
        }
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: v[v.len() / 2],
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if reexec_under_runtime() {
        return;
    }
    let lib = Arc::new(VirglLibrary::load().expect("virglrenderer"));
    println!("library: {}", lib.info());
    let mut r = Renderer::new(
        lib,
        RendererOptions {
            context_types: ContextTypes {
                venus: true,
                virgl: true,
            },
            gles: false,
            server: RuntimeLayout::active().map(|rt| rt.server_launcher()),
        },
    )
    .expect("renderer");
    r.create_context(1, CAPSET_VENUS, "bench-venus")
        .expect("venus context");
    r.create_context(2, CAPSET_VIRGL2, "bench-virgl")
        .expect("virgl context");

    // Fence round trips.
    const FENCES: u64 = 2000;
    for (name, timeline) in [
        ("device timeline (virgl)", Timeline::Global),
        (
            "Venus context ring 0",
            Timeline::Context {
                ctx_id: 1,
                ring_idx: 0,
            },
        ),
    ] {
        let mut times = Vec::new();
        for id in 1..=FENCES {
            let t = Instant::now();
            match timeline {
                Timeline::Global => r.create_fence(id, 0).expect("fence"),
                Timeline::Context { ctx_id, ring_idx } => {
                    r.create_context_fence(ctx_id, ring_idx, id).expect("fence")
                }
            }
            wait(
                &r,
                FenceEvent {
                    timeline,
                    fence_id: id,
                },
            );
            times.push(t.elapsed());
        }
        let s = stats(times);
        println!(
            "fence round trip, {name}: median {:.1} us, p99 {:.1} us ({FENCES} fences)",
            us(s.median),
            us(s.p99)
        );
    }

    // Blob lifetime vs anonymous memory.
    for size in [64u64 << 10, 16 << 20] {
        let mut blob_times = Vec::new();
        let mut anon_times = Vec::new();
        for i in 0..200u32 {
            let t = Instant::now();
            let blob = Blob {
                ctx_id: 1,
                blob_mem: BLOB_MEM_HOST3D,
                blob_flags: BLOB_FLAG_USE_MAPPABLE,
                blob_id: 0,
                size,
            };
            let id = 100 + i;
            // SAFETY: no guest ranges.
            unsafe { r.create_blob(id, &blob, &[]) }.expect("blob");
            let m = r.map_blob(id).expect("map");
            // SAFETY: the mapping is at least `size` bytes until unmap.
            unsafe { std::ptr::write_volatile(m.addr, 1) };
            r.unmap_blob(id).expect("unmap");
            r.unref_resource(id);
            blob_times.push(t.elapsed());

            let t = Instant::now();
            // SAFETY: a fresh anonymous mapping, touched once and unmapped.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                std::ptr::write_volatile(p as *mut u8, 1);
                libc::munmap(p, size as usize);
            }
            anon_times.push(t.elapsed());
        }
        let (b, a) = (stats(blob_times), stats(anon_times));
        println!(
            "HOST3D blob {} KiB create+map+unmap+unref: median {:.1} us (p99 {:.1}); anonymous mmap+touch+munmap {:.1} us; ratio {:.1}x",
            size >> 10,
            us(b.median),
            us(b.p99),
            us(a.median),
            b.median.as_secs_f64() / a.median.as_secs_f64().max(1e-9)
        );
    }

    // Texture upload vs memcpy.
    let (w, h) = (1920u32, 1080u32);
    let bytes = (w * h * 4) as usize;
    let res = Resource3d {
        target: 2,
        format: 2,
        bind: (1 << 1) | (1 << 3),
        width: w,
        height: h,
        depth: 1,
        array_size: 1,
        ..Default::default()
    };
    r.create_resource(50, &res).expect("texture");
    r.attach_resource(2, 50);
    let mut backing: Vec<u8> = (0..bytes).map(|i| (i * 13) as u8).collect();
    let range = HostRange {
        addr: backing.as_mut_ptr(),
        len: bytes,
    };
    // SAFETY: `backing` outlives the resource's use (detached below).
    unsafe { r.attach_backing(50, &[range]) }.expect("backing");
    let t = Transfer {
        resource_id: 50,
        ctx_id: 2,
        stride: w * 4,
        bx: VirglBox {
            x: 0,
            y: 0,
            z: 0,
            w,
            h,
            d: 1,
        },
        ..Default::default()
    };
    let mut dst = vec![0u8; bytes];
    let mut upload = Vec::new();
    let mut copy = Vec::new();
    for _ in 0..30 {
        let s = Instant::now();
        r.transfer_write(&t).expect("upload");
        upload.push(s.elapsed());
        let s = Instant::now();
        dst.copy_from_slice(&backing);
        black_box(&dst);
        copy.push(s.elapsed());
    }
    let (u, c) = (stats(upload), stats(copy));
    let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "1920x1080 texture upload: median {:.2} ms ({:.2} GB/s); memcpy {:.2} ms ({:.2} GB/s); {:.0}% of memcpy",
        u.median.as_secs_f64() * 1e3,
        gbs(u.median),
        c.median.as_secs_f64() * 1e3,
        gbs(c.median),
        100.0 * c.median.as_secs_f64() / u.median.as_secs_f64()
    );

    // Scanout read back at a flush: the whole frame vs a 64x64 damage.
    let mut frame = vec![0u8; bytes];
    let mut full = Vec::new();
    let mut damage = Vec::new();
    for i in 0..30u32 {
        let s = Instant::now();
        r.read_into(50, t.bx, w * 4, 0, &mut frame)
            .expect("read back");
        full.push(s.elapsed());
        let (x, y) = ((i * 97) % (w - 64), (i * 53) % (h - 64));
        let bx = VirglBox {
            x,
            y,
            z: 0,
            w: 64,
            h: 64,
            d: 1,
        };
        let s = Instant::now();
        r.read_into(50, bx, w * 4, u64::from(y * w * 4 + x * 4), &mut frame)
            .expect("read back");
        damage.push(s.elapsed());
        black_box(&frame);
    }
    let (f, d) = (stats(full), stats(damage));
    println!(
        "1920x1080 scanout read back: whole frame median {:.2} ms ({:.2} GB/s); 64x64 damage {:.1} us ({:.0}x less)",
        f.median.as_secs_f64() * 1e3,
        gbs(f.median),
        us(d.median),
        f.median.as_secs_f64() / d.median.as_secs_f64()
    );
    r.detach_backing(50);
    r.unref_resource(50);
    r.destroy_context(1);
    r.destroy_context(2);
}
