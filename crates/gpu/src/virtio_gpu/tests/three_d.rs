//! The 3D device end to end through the driver mock, against the real
//! virglrenderer (run under the GPU runtime): capsets, contexts of both
//! types, a Venus blob mapped into the host-visible window, a GL texture
//! shown on a scanout, fences held until the renderer signals them, and
//! hostile requests answered with errors.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use super::*;
use crate::virgl::{ContextTypes, Renderer, RendererOptions, VirglLibrary};

/// A host-visible window that records mappings and reads through them.
#[derive(Default)]
struct FakeWindow {
    maps: Mutex<Vec<(u64, usize, u64)>>,
}

impl HostVisibleWindow for FakeWindow {
    fn size(&self) -> u64 {
        1 << 20
    }

    unsafe fn map(&self, offset: u64, host_addr: *mut u8, len: u64) -> Result<(), String> {
        self.maps
            .lock()
            .unwrap()
            .push((offset, host_addr as usize, len));
        Ok(())
    }

    fn unmap(&self, offset: u64) -> Result<(), String> {
        let mut maps = self.maps.lock().unwrap();
        let before = maps.len();
        maps.retain(|m| m.0 != offset);
        if maps.len() == before {
            return Err(format!("nothing mapped at {offset:#x}"));
        }
        Ok(())
    }
}

fn req(type_: u32, flags: u32, fence: u64, ctx: u32, ring: u8, fields: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    CtrlHdr {
        type_,
        flags,
        fence_id: fence,
        ctx_id: ctx,
        ring_idx: ring,
    }
    .encode(&mut out);
    for f in fields {
        out.extend_from_slice(&f.to_le_bytes());
    }
    out
}

fn ctx_create(ctx: u32, capset: u32) -> Vec<u8> {
    let mut r = req(CMD_CTX_CREATE, 0, 0, ctx, 0, &[4, capset]);
    r.extend_from_slice(b"test");
    r.resize(HDR_LEN + 8 + 64, 0);
    r
}

fn blob_host3d(ctx: u32, id: u32, size: u64) -> Vec<u8> {
    let mut r = req(
        CMD_RESOURCE_CREATE_BLOB,
        0,
        0,
        ctx,
        0,
        &[id, 2 /* HOST3D */, 1 /* MAPPABLE */, 0],
    );
    r.extend_from_slice(&0u64.to_le_bytes());
    r.extend_from_slice(&size.to_le_bytes());
    r
}

fn map_blob(id: u32, offset: u64) -> Vec<u8> {
    let mut r = req(CMD_RESOURCE_MAP_BLOB, 0, 0, 0, 0, &[id, 0]);
    r.extend_from_slice(&offset.to_le_bytes());
    r
}

/// RESOURCE_CREATE_3D of a `w` x `h` 2D texture on virgl context 2
/// (sampler view and render target).
fn texture(id: u32, format: u32, w: u32, h: u32) -> Vec<u8> {
    req(
        CMD_RESOURCE_CREATE_3D,
        0,
        0,
        2,
        0,
        &[id, 2, format, (1 << 1) | (1 << 3), w, h, 1, 1, 0, 0, 0, 0],
    )
}

/// TRANSFER_TO_HOST_3D of the whole `w` x `h` texture `id` on context 2.
fn upload(id: u32, w: u32, h: u32) -> Vec<u8> {
    let mut t = req(CMD_TRANSFER_TO_HOST_3D, 0, 0, 2, 0, &[0, 0, 0, w, h, 1]);
    t.extend_from_slice(&0u64.to_le_bytes());
    for f in [id, 0, w * 4, 0] {
        t.extend_from_slice(&f.to_le_bytes());
    }
    t
}

/// A texture on context 2 holding `image` (guest backing, uploaded) and
/// shown whole on scanout 0.
fn texture_on_scanout(
    d: &mut Driver,
    fe: &mut Frontend,
    mem: &GuestMemory,
    (id, format, w, h): (u32, u32, u32, u32),
    image: &[u8],
) {
    assert_eq!(d.status(fe, &texture(id, format, w, h)), RESP_OK_NODATA);
    assert_eq!(
        d.status(fe, &req(CMD_CTX_ATTACH_RESOURCE, 0, 0, 2, 0, &[id, 0])),
        RESP_OK_NODATA
    );
    let backing = scattered_backing(mem, image);
    assert_eq!(
        d.status(fe, &encode::resource_attach_backing(id, &backing)),
        RESP_OK_NODATA
    );
    assert_eq!(d.status(fe, &upload(id, w, h)), RESP_OK_NODATA);
    assert_eq!(
        d.status(fe, &encode::set_scanout(0, id, Rect::new(0, 0, w, h))),
        RESP_OK_NODATA
    );
}

fn wait_fences(fe: &Frontend) {
    let fd = fe.event_fd().expect("a 3D frontend waits on fences");
    // SAFETY: the fd belongs to the frontend's renderer, alive here.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut pfd = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(pfd.as_mut_ptr(), 1, 20_000) };
    assert_eq!(n, 1, "no fence signalled within 20 s");
}

/// A 3D frontend over the real virglrenderer (Venus and virgl) with a
/// recording sink and window.
struct Gpu3d {
    fe: Frontend,
    mem: Arc<GuestMemory>,
    window: Arc<FakeWindow>,
    sink: Arc<RecordingSink>,
    metrics: Arc<GpuMetrics>,
}

fn gpu_3d(width: u32, height: u32, max_hostmem: u64) -> Gpu3d {
    let lib = Arc::new(VirglLibrary::load().expect("virglrenderer"));
    let renderer = Renderer::new(
        lib,
        RendererOptions {
            context_types: ContextTypes {
                venus: true,
                virgl: true,
            },
            gles: false,
            server: crate::virgl::runtime::RuntimeLayout::active().map(|r| r.server_launcher()),
        },
    )
    .expect("renderer");
    // In the VMM the device's thread runs under the renderer's syscall
    // filter from here on; so does this test's thread (a syscall outside
    // the list kills the test process with SIGSYS).
    pv_seccomp::set_mode(pv_seccomp::SeccompMode::Kill);
    pv_seccomp::apply(pv_seccomp::ThreadKind::GpuRenderer).expect("the renderer's filter");
    let mem = Arc::new(mem());
    let window = Arc::new(FakeWindow::default());
    let params = GpuParams {
        width,
        height,
        ..GpuParams::default()
    };
    let sink = Arc::new(RecordingSink::default());
    let metrics = Arc::new(GpuMetrics::default());
    let fe = Frontend::new(
        Box::new(VirglBackend::new(
            renderer,
            mem.clone(),
            max_hostmem,
            Some(window.clone() as Arc<dyn HostVisibleWindow>),
        )),
        DisplayControl::new(&params),
        sink.clone(),
        metrics.clone(),
        true,
    );
    Gpu3d {
        fe,
        mem,
        window,
        sink,
        metrics,
    }
}

#[test]
fn three_d_device_against_virglrenderer() {
    if !crate::virgl::testing::in_gpu_runtime(
        "virtio_gpu::tests::three_d::three_d_device_against_virglrenderer",
    ) {
        return;
    }
    let Gpu3d {
        mut fe,
        mem,
        window,
        sink,
        metrics,
    } = gpu_3d(640, 480, 64 << 20);
    let mut d = Driver::new(&mem);

    // Capsets in index order, then an index past the end.
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = d.cmd(&mut fe, &req(CMD_GET_CAPSET_INFO, 0, 0, 0, 0, &[i, 0]));
        assert_eq!(rtype(&r), RESP_OK_CAPSET_INFO);
        ids.push(u32_at(&r, 24));
        assert!(u32_at(&r, 32) > 0, "capset size");
    }
    assert_eq!(ids, [1, 2, 4]);
    let r = d.cmd(&mut fe, &req(CMD_GET_CAPSET_INFO, 0, 0, 0, 0, &[3, 0]));
    assert_eq!(rtype(&r), RESP_ERR_INVALID_PARAMETER);
    let r = d.cmd(&mut fe, &req(CMD_GET_CAPSET, 0, 0, 0, 0, &[4, 0]));
    assert_eq!(rtype(&r), RESP_OK_CAPSET);
    assert!(u32_at(&r, 24) >= 1, "Venus wire format");

    // Contexts: Venus (1) and virgl (2); duplicates and unknown capsets fail.
    assert_eq!(d.status(&mut fe, &ctx_create(1, 4)), RESP_OK_NODATA);
    assert_eq!(
        d.status(&mut fe, &ctx_create(1, 4)),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(
        d.status(&mut fe, &ctx_create(3, 9)),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(d.status(&mut fe, &ctx_create(2, 0)), RESP_OK_NODATA);
    assert_eq!(metrics.snapshot(1).contexts_venus, 1);
    assert_eq!(metrics.snapshot(1).contexts_virgl, 1);

    // A Venus blob, mapped into the window at 64 KiB.
    assert_eq!(d.status(&mut fe, &blob_host3d(1, 10, 8192)), RESP_OK_NODATA);
    assert_eq!(
        d.status(&mut fe, &blob_host3d(1, 10, 8192)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        d.status(&mut fe, &blob_host3d(7, 11, 8192)),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    let r = d.cmd(&mut fe, &map_blob(10, 0x10000));
    assert_eq!(rtype(&r), RESP_OK_MAP_INFO);
    assert_ne!(u32_at(&r, 24) & 0xf, 0, "a cache type is reported");
    let maps = window.maps.lock().unwrap().clone();
    assert_eq!(maps.len(), 1);
    assert_eq!((maps[0].0, maps[0].2), (0x10000, 8192));
    // The mapping is real memory, writable from the host side.
    // SAFETY: the window mapping covers 8192 bytes until unmap.
    unsafe { std::ptr::write_volatile(maps[0].1 as *mut u8, 0x5a) };
    assert_eq!(metrics.snapshot(1).blob_bytes_mapped, 8192);
    // Hostile map requests: mapped twice, overlapping, outside, unaligned.
    assert_eq!(
        d.status(&mut fe, &map_blob(10, 0x20000)),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(d.status(&mut fe, &blob_host3d(1, 12, 8192)), RESP_OK_NODATA);
    for offset in [0x11000, 0xf000 + 0x100, 1 << 20, u64::MAX - 4095] {
        assert_eq!(
            d.status(&mut fe, &map_blob(12, offset)),
            RESP_ERR_INVALID_PARAMETER,
            "offset {offset:#x}"
        );
    }
    // Beyond the 3D budget: out of memory.
    assert_eq!(
        d.status(&mut fe, &blob_host3d(1, 13, 1 << 40)),
        RESP_ERR_OUT_OF_MEMORY
    );

    // A fenced empty submit on context 1, ring 0: the chain waits for the
    // renderer's fence, then carries FENCE | INFO_RING_IDX with its id.
    let submit = req(
        CMD_SUBMIT_3D,
        FLAG_FENCE | FLAG_INFO_RING_IDX,
        5,
        1,
        0,
        &[0, 0],
    );
    mem.write_slice(&submit, GuestAddress(REQ)).unwrap();
    d.add_chain(&[(REQ, submit.len() as u32, false), (RESP, 64, true)]);
    let mut used = d.run(&mut fe);
    if used.is_empty() {
        wait_fences(&fe);
        let before = d.used_idx();
        fe.process_event(std::slice::from_mut(&mut d.queue), &mem);
        assert_eq!(d.used_idx(), before.wrapping_add(1));
        used = vec![HDR_LEN as u32];
    }
    assert_eq!(used, vec![HDR_LEN as u32]);
    let mut resp = [0u8; HDR_LEN];
    mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
    let hdr = CtrlHdr::decode(&resp).unwrap();
    assert_eq!(hdr.type_, RESP_OK_NODATA);
    assert_eq!(hdr.flags, FLAG_FENCE | FLAG_INFO_RING_IDX);
    assert_eq!((hdr.fence_id, hdr.ctx_id), (5, 1));
    assert_eq!(metrics.snapshot(1).fences_context, 1);
    let timelines = metrics.snapshot(1).timelines;
    assert_eq!(timelines.len(), 1, "{timelines:?}");
    assert_eq!(timelines[0].0, "ctx1.ring0");
    assert_eq!(timelines[0].1.fences, 1);

    // A GL texture with guest backing shown on scanout 0.
    let (w, h) = (64u32, 32u32);
    let image = pattern((w * h * 4) as usize, 9);
    texture_on_scanout(
        &mut d,
        &mut fe,
        &mem,
        (20, FORMAT_B8G8R8X8_UNORM, w, h),
        &image,
    );
    let full = Rect::new(0, 0, w, h);
    sink.take();
    assert_eq!(
        d.status(&mut fe, &encode::resource_flush(20, full)),
        RESP_OK_NODATA
    );
    let shown = sink.take().into_iter().find_map(|e| match e {
        Event::Update { pixels, .. } => Some(pixels),
        _ => None,
    });
    let shown = shown.expect("the 3D scanout reached the sink");
    // X8 formats: compare the colour bytes.
    let rgb = |v: &[u8]| -> Vec<u8> { v.chunks(4).flat_map(|p| p[..3].to_vec()).collect() };
    assert_eq!(rgb(&shown), rgb(&image), "the texture's pixels are shown");

    // A fenced command on the device timeline is held until virgl signals.
    let fenced_flush = {
        let mut r = encode::resource_flush(20, full);
        r[4..8].copy_from_slice(&FLAG_FENCE.to_le_bytes());
        r[8..16].copy_from_slice(&77u64.to_le_bytes());
        r
    };
    mem.write_slice(&fenced_flush, GuestAddress(REQ)).unwrap();
    d.add_chain(&[(REQ, fenced_flush.len() as u32, false), (RESP, 64, true)]);
    if d.run(&mut fe).is_empty() {
        wait_fences(&fe);
        fe.process_event(std::slice::from_mut(&mut d.queue), &mem);
    }
    mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
    let hdr = CtrlHdr::decode(&resp).unwrap();
    assert_eq!((hdr.flags, hdr.fence_id), (FLAG_FENCE, 77));
    let timelines = metrics.snapshot(1).timelines;
    assert!(
        timelines
            .iter()
            .any(|(name, t)| name == "device" && t.fences == 1),
        "{timelines:?}"
    );

    // Hostile: unknown contexts, garbage command streams; the device lives.
    let mut garbage = req(CMD_SUBMIT_3D, 0, 0, 2, 0, &[64, 0]);
    garbage.extend((0..16u32).flat_map(|i| i.wrapping_mul(0x9e37_79b9).to_le_bytes()));
    let _ = d.status(&mut fe, &garbage);
    assert_eq!(
        d.status(&mut fe, &req(CMD_SUBMIT_3D, 0, 0, 99, 0, &[0, 0])),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    let mut short = req(CMD_SUBMIT_3D, 0, 0, 2, 0, &[4096, 0]);
    short.extend_from_slice(&[0u8; 16]);
    assert_eq!(d.status(&mut fe, &short), RESP_ERR_UNSPEC);
    assert!(metrics.snapshot(1).submit_bytes >= 64);

    // Teardown: unmap, unref, destroy; the window is empty again.
    assert_eq!(
        d.status(&mut fe, &req(CMD_RESOURCE_UNMAP_BLOB, 0, 0, 0, 0, &[10, 0])),
        RESP_OK_NODATA
    );
    assert!(window.maps.lock().unwrap().is_empty());
    assert_eq!(
        d.status(&mut fe, &req(CMD_RESOURCE_UNMAP_BLOB, 0, 0, 0, 0, &[10, 0])),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(
        d.status(&mut fe, &encode::resource_unref(10)),
        RESP_OK_NODATA
    );
    assert_eq!(
        d.status(&mut fe, &req(CMD_CTX_DESTROY, 0, 0, 1, 0, &[])),
        RESP_OK_NODATA
    );
    assert_eq!(
        d.status(&mut fe, &req(CMD_CTX_DESTROY, 0, 0, 1, 0, &[])),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(metrics.snapshot(1).contexts_venus, 0);
    assert!(
        metrics
            .snapshot(1)
            .timelines
            .iter()
            .all(|(name, _)| !name.starts_with("ctx1.")),
        "a destroyed context's timelines are gone"
    );
    // Mapping a blob and resetting the device removes the window mapping.
    assert_eq!(rtype(&d.cmd(&mut fe, &map_blob(12, 0))), RESP_OK_MAP_INFO);
    fe.shutdown();
    assert!(window.maps.lock().unwrap().is_empty());
}

/// Blob scanouts (SET_SCANOUT_BLOB), what a guest shows when a compositor
/// or KMS client puts a Venus-exported image or a guest blob on the CRTC:
/// a HOST3D blob the guest mapped and wrote (rows padded, from an offset),
/// a HOST3D blob the guest never mapped (the device maps it itself), and a
/// GUEST blob over scattered pages; each flush shows exactly the blob's
/// pixels. Layouts outside the blob and unknown resources are refused.
#[test]
fn blob_scanouts_show_host_and_guest_blobs() {
    if !crate::virgl::testing::in_gpu_runtime(
        "virtio_gpu::tests::three_d::blob_scanouts_show_host_and_guest_blobs",
    ) {
        return;
    }
    let Gpu3d {
        mut fe,
        mem,
        window,
        sink,
        ..
    } = gpu_3d(640, 480, 64 << 20);
    let mut d = Driver::new(&mem);
    assert_eq!(d.status(&mut fe, &ctx_create(1, 4)), RESP_OK_NODATA);
    let (w, h) = (64u32, 32u32);
    let (stride, offset) = (w * 4 + 64, 256u32);
    let image = pattern((w * h * 4) as usize, 3);
    // The image laid out in a blob: `offset` bytes in, rows `stride` apart.
    let laid_out = |image: &[u8]| {
        let mut blob = vec![0xeeu8; (offset + stride * h) as usize];
        for y in 0..h as usize {
            let at = offset as usize + y * stride as usize;
            blob[at..at + w as usize * 4]
                .copy_from_slice(&image[y * w as usize * 4..(y + 1) * w as usize * 4]);
        }
        blob
    };
    let layout = |resource_id| ScanoutBlob {
        rect: Rect::new(0, 0, w, h),
        scanout_id: 0,
        resource_id,
        width: w,
        height: h,
        format: FORMAT_B8G8R8X8_UNORM,
        strides: [stride, 0, 0, 0],
        offsets: [offset, 0, 0, 0],
    };
    let full = Rect::new(0, 0, w, h);
    let rgb = |v: &[u8]| -> Vec<u8> { v.chunks(4).flat_map(|p| p[..3].to_vec()).collect() };
    let shows = |d: &mut Driver, fe: &mut Frontend, id: u32| -> Vec<u8> {
        assert_eq!(
            d.status(fe, &encode::set_scanout_blob(&layout(id))),
            RESP_OK_NODATA,
            "SET_SCANOUT_BLOB of {id}"
        );
        sink.take();
        assert_eq!(
            d.status(fe, &encode::resource_flush(id, full)),
            RESP_OK_NODATA
        );
        sink.take()
            .into_iter()
            .find_map(|e| match e {
                Event::Update { pixels, .. } => Some(pixels),
                _ => None,
            })
            .unwrap_or_else(|| panic!("blob {id} reached the sink"))
    };

    // A HOST3D blob the guest mapped and wrote through its window.
    assert_eq!(
        d.status(&mut fe, &blob_host3d(1, 10, 65536)),
        RESP_OK_NODATA
    );
    assert_eq!(rtype(&d.cmd(&mut fe, &map_blob(10, 0))), RESP_OK_MAP_INFO);
    let host = window.maps.lock().unwrap()[0].1 as *mut u8;
    let bytes = laid_out(&image);
    // SAFETY: the mapping covers 65536 bytes, more than `bytes`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), host, bytes.len()) };
    assert_eq!(rgb(&shows(&mut d, &mut fe, 10)), rgb(&image));
    // The guest draws again; the next flush shows the new pixels.
    let image2 = pattern((w * h * 4) as usize, 77);
    let bytes = laid_out(&image2);
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), host, bytes.len()) };
    assert_eq!(rgb(&shows(&mut d, &mut fe, 10)), rgb(&image2));

    // A HOST3D blob never mapped by the guest: zero-filled by the renderer.
    assert_eq!(
        d.status(&mut fe, &blob_host3d(1, 11, 65536)),
        RESP_OK_NODATA
    );
    let shown = shows(&mut d, &mut fe, 11);
    assert!(rgb(&shown).iter().all(|&b| b == 0), "a fresh blob is black");

    // A GUEST blob over scattered guest pages.
    let image3 = pattern((w * h * 4) as usize, 150);
    let backing = scattered_backing(&mem, &laid_out(&image3));
    let mut r = req(
        CMD_RESOURCE_CREATE_BLOB,
        0,
        0,
        1,
        0,
        &[12, 1 /* GUEST */, 0, backing.len() as u32],
    );
    r.extend_from_slice(&0u64.to_le_bytes());
    r.extend_from_slice(&u64::from(offset + stride * h).to_le_bytes());
    for &(addr, len) in &backing {
        r.extend_from_slice(&addr.to_le_bytes());
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
    }
    assert_eq!(d.status(&mut fe, &r), RESP_OK_NODATA);
    assert_eq!(rgb(&shows(&mut d, &mut fe, 12)), rgb(&image3));

    // Hostile layouts: rows past the blob's end, a stride shorter than a
    // row, no size, an unknown resource, a 2D-only format id.
    let bad = [
        ScanoutBlob {
            offsets: [65536 - 100, 0, 0, 0],
            ..layout(10)
        },
        ScanoutBlob {
            strides: [w * 4 - 4, 0, 0, 0],
            ..layout(10)
        },
        ScanoutBlob {
            width: 0,
            ..layout(10)
        },
        ScanoutBlob {
            height: 100_000,
            ..layout(10)
        },
        layout(99),
        ScanoutBlob {
            format: 999,
            ..layout(10)
        },
        ScanoutBlob {
            scanout_id: 16,
            ..layout(10)
        },
    ];
    for b in bad {
        let status = d.status(&mut fe, &encode::set_scanout_blob(&b));
        assert!(
            [
                RESP_ERR_INVALID_PARAMETER,
                RESP_ERR_INVALID_RESOURCE_ID,
                RESP_ERR_INVALID_SCANOUT_ID
            ]
            .contains(&status),
            "{b:?}: {status:#x}"
        );
    }
    // Taking the blob off the scanout, then the device still shows blobs.
    let off = ScanoutBlob {
        resource_id: 0,
        ..layout(0)
    };
    assert_eq!(
        d.status(&mut fe, &encode::set_scanout_blob(&off)),
        RESP_OK_NODATA
    );
    assert_eq!(rgb(&shows(&mut d, &mut fe, 12)), rgb(&image3));
    fe.shutdown();
}

/// A 3D texture's own format reaches the display (an R8G8B8X8 texture
/// is not shown as B8G8R8X8), and textures a scanout or the cursor cannot
/// show (bigger than 8192, or than 64x64 for the cursor) are refused before
/// anything is read back.
#[test]
fn three_d_scanouts_keep_their_format_and_size_limits() {
    if !crate::virgl::testing::in_gpu_runtime(
        "virtio_gpu::tests::three_d::three_d_scanouts_keep_their_format_and_size_limits",
    ) {
        return;
    }
    let Gpu3d {
        mut fe, mem, sink, ..
    } = gpu_3d(640, 480, 64 << 20);
    let mut d = Driver::new(&mem);
    assert_eq!(d.status(&mut fe, &ctx_create(2, 0)), RESP_OK_NODATA);
    const R8G8B8X8: u32 = 134;
    let (w, h) = (32u32, 16u32);
    let image = pattern((w * h * 4) as usize, 21);
    texture_on_scanout(&mut d, &mut fe, &mem, (30, R8G8B8X8, w, h), &image);
    let full = Rect::new(0, 0, w, h);
    sink.take();
    assert_eq!(
        d.status(&mut fe, &encode::resource_flush(30, full)),
        RESP_OK_NODATA
    );
    let shown = sink.take().into_iter().find_map(|e| match e {
        Event::Update { pixels, format, .. } => Some((format, pixels)),
        _ => None,
    });
    let (format, pixels) = shown.expect("the texture reached the sink");
    assert_eq!(format, PixelFormat::R8G8B8X8);
    let rgb = |v: &[u8]| -> Vec<u8> { v.chunks(4).flat_map(|p| p[..3].to_vec()).collect() };
    assert_eq!(rgb(&pixels), rgb(&image), "red stays red");

    // The guest draws a new picture but flushes only a rectangle: that is
    // all the device reads back (outside it the frame still holds the
    // previous picture), and the display's copy of it is the new one.
    let image2 = pattern((w * h * 4) as usize, 99);
    let backing2 = scattered_backing(&mem, &image2);
    assert_eq!(
        d.status(&mut fe, &encode::resource_detach_backing(30)),
        RESP_OK_NODATA
    );
    assert_eq!(
        d.status(&mut fe, &encode::resource_attach_backing(30, &backing2)),
        RESP_OK_NODATA
    );
    assert_eq!(d.status(&mut fe, &upload(30, w, h)), RESP_OK_NODATA);
    let damage = Rect::new(4, 2, 8, 5);
    assert_eq!(
        d.status(&mut fe, &encode::resource_flush(30, damage)),
        RESP_OK_NODATA
    );
    let (got_damage, pixels) = sink
        .take()
        .into_iter()
        .find_map(|e| match e {
            Event::Update { pixels, damage, .. } => Some((damage, pixels)),
            _ => None,
        })
        .expect("the flush reached the sink");
    assert_eq!(got_damage, damage);
    for y in 0..h {
        for x in 0..w {
            let i = ((y * w + x) * 4) as usize;
            let inside = (4..12).contains(&x) && (2..7).contains(&y);
            let want = if inside { &image2 } else { &image };
            assert_eq!(
                pixels[i..i + 3],
                want[i..i + 3],
                "pixel ({x}, {y}), inside the flush: {inside}"
            );
        }
    }

    // Too big for a scanout (Linux caps framebuffers at 8192): refused, and
    // nothing is read back for it.
    assert_eq!(
        d.status(&mut fe, &texture(31, FORMAT_B8G8R8X8_UNORM, 9000, 16)),
        RESP_OK_NODATA
    );
    assert_eq!(
        d.status(
            &mut fe,
            &encode::set_scanout(0, 31, Rect::new(0, 0, 64, 16))
        ),
        RESP_ERR_INVALID_PARAMETER
    );
    // A cursor bigger than 64x64 is refused before its read back.
    assert_eq!(
        d.status(&mut fe, &texture(32, FORMAT_B8G8R8A8_UNORM, 4096, 4096)),
        RESP_OK_NODATA
    );
    assert_ne!(
        d.status(&mut fe, &encode::update_cursor(0, 0, 0, 32, 0, 0)),
        RESP_OK_NODATA
    );
    fe.shutdown();
}

/// Random 3D requests from a hostile guest — ids, capsets, sizes, offsets,
/// boxes and command streams picked to hit edges — each gets a response of
/// a valid type, and the device still serves afterwards.
#[test]
fn random_3d_requests_are_answered_and_the_device_survives() {
    if !crate::virgl::testing::in_gpu_runtime(
        "virtio_gpu::tests::three_d::random_3d_requests_are_answered_and_the_device_survives",
    ) {
        return;
    }
    use crate::virtio_gpu::adversarial::Rng;
    let Gpu3d {
        mut fe,
        mem,
        window,
        ..
    } = gpu_3d(320, 240, 16 << 20);
    let mut d = Driver::new(&mem);
    let mut rng = Rng::new(0x3d);
    let valid = [
        RESP_OK_NODATA,
        RESP_OK_CAPSET_INFO,
        RESP_OK_CAPSET,
        RESP_OK_RESOURCE_UUID,
        RESP_OK_MAP_INFO,
        RESP_ERR_UNSPEC,
        RESP_ERR_OUT_OF_MEMORY,
        RESP_ERR_INVALID_SCANOUT_ID,
        RESP_ERR_INVALID_RESOURCE_ID,
        RESP_ERR_INVALID_CONTEXT_ID,
        RESP_ERR_INVALID_PARAMETER,
    ];
    let mut seen = std::collections::BTreeMap::<u32, u32>::new();
    for step in 0..3000 {
        let ctx = rng.pick(&[0u32, 1, 2, 3, u32::MAX]);
        let id = rng.pick(&[0u32, 1, 2, 3, 4, u32::MAX]);
        let big = |rng: &mut Rng| rng.pick(&[0u32, 1, 7, 64, 4096, 1 << 20, u32::MAX]);
        let r = match rng.below(14) {
            0 => ctx_create(ctx, rng.pick(&[0u32, 1, 2, 4, 9, 0x104])),
            1 => req(CMD_CTX_DESTROY, 0, 0, ctx, 0, &[]),
            2 => {
                let mut r = req(
                    CMD_RESOURCE_CREATE_BLOB,
                    0,
                    0,
                    ctx,
                    0,
                    &[
                        id,
                        rng.pick(&[0u32, 1, 2, 3, 4, 99]),
                        rng.pick(&[0u32, 1, 3, 7]),
                        0,
                    ],
                );
                r.extend_from_slice(&rng.pick(&[0u64, 1, 5]).to_le_bytes());
                r.extend_from_slice(
                    &rng.pick(&[0u64, 1, 4096, 65536, 1 << 24, u64::MAX])
                        .to_le_bytes(),
                );
                r
            }
            3 => map_blob(id, rng.pick(&[0u64, 4096, 0x10000, 0xfff, 1 << 20, !4095])),
            4 => req(CMD_RESOURCE_UNMAP_BLOB, 0, 0, 0, 0, &[id, 0]),
            5 => req(
                CMD_RESOURCE_CREATE_3D,
                0,
                0,
                ctx,
                0,
                &[
                    id,
                    rng.pick(&[0u32, 1, 2, 3, 4, 99]),
                    rng.pick(&[0u32, 1, 2, 67, 1000]),
                    big(&mut rng),
                    big(&mut rng),
                    big(&mut rng),
                    rng.pick(&[0u32, 1, 2]),
                    rng.pick(&[0u32, 1, 6]),
                    rng.pick(&[0u32, 1, 31]),
                    rng.pick(&[0u32, 4]),
                    0,
                    0,
                ],
            ),
            6 | 7 => {
                let t = if rng.one_in(2) {
                    CMD_TRANSFER_TO_HOST_3D
                } else {
                    CMD_TRANSFER_FROM_HOST_3D
                };
                let mut r = req(
                    t,
                    0,
                    0,
                    ctx,
                    0,
                    &[
                        big(&mut rng),
                        0,
                        0,
                        big(&mut rng),
                        big(&mut rng),
                        rng.pick(&[0u32, 1]),
                    ],
                );
                r.extend_from_slice(&rng.pick(&[0u64, 4096, u64::MAX]).to_le_bytes());
                for f in [id, rng.pick(&[0u32, 1, 99]), big(&mut rng), big(&mut rng)] {
                    r.extend_from_slice(&f.to_le_bytes());
                }
                r
            }
            8 => {
                let n = rng.pick(&[0u32, 4, 64, 1024]);
                let mut r = req(CMD_SUBMIT_3D, 0, 0, ctx, 0, &[n, 0]);
                for _ in 0..n / 4 {
                    r.extend_from_slice(&(rng.next() as u32).to_le_bytes());
                }
                r
            }
            9 => req(
                rng.pick(&[CMD_CTX_ATTACH_RESOURCE, CMD_CTX_DETACH_RESOURCE]),
                0,
                0,
                ctx,
                0,
                &[id, 0],
            ),
            10 => encode::resource_attach_backing(
                id,
                &[(
                    rng.pick(&[BACKING, u64::MAX - 10, MEM_SIZE as u64]),
                    big(&mut rng),
                )],
            ),
            11 => encode::resource_unref(id),
            12 => {
                let mut r = req(
                    CMD_SET_SCANOUT_BLOB,
                    0,
                    0,
                    0,
                    0,
                    &[0, 0, big(&mut rng), big(&mut rng)],
                );
                for f in [
                    rng.pick(&[0u32, 1, 17]),
                    id,
                    big(&mut rng),
                    big(&mut rng),
                    rng.pick(&[1u32, 2, 99]),
                    0,
                    big(&mut rng),
                    0,
                    0,
                    0,
                    big(&mut rng),
                    0,
                    0,
                    0,
                ] {
                    r.extend_from_slice(&f.to_le_bytes());
                }
                r
            }
            _ => req(
                rng.pick(&[
                    CMD_GET_CAPSET,
                    CMD_GET_CAPSET_INFO,
                    CMD_RESOURCE_ASSIGN_UUID,
                ]),
                0,
                0,
                0,
                0,
                &[
                    rng.pick(&[0u32, 1, 2, 4, 5, u32::MAX]),
                    rng.pick(&[0u32, 1, 2]),
                ],
            ),
        };
        let (used, resp) = d.send(&mut fe, &r, 4096);
        assert!(used as usize >= HDR_LEN, "step {step}: used {used}");
        let t = rtype(&resp);
        assert!(valid.contains(&t), "step {step}: response {t:#x}");
        *seen.entry(t).or_default() += 1;
    }
    // Successes and every kind of refusal happened.
    for t in [
        RESP_OK_NODATA,
        RESP_ERR_INVALID_RESOURCE_ID,
        RESP_ERR_INVALID_CONTEXT_ID,
        RESP_ERR_INVALID_PARAMETER,
    ] {
        assert!(
            seen.get(&t).copied().unwrap_or(0) > 0,
            "{t:#x} never answered: {seen:?}"
        );
    }
    // The device still works: a fresh context and a capset.
    assert_eq!(d.status(&mut fe, &ctx_create(100, 4)), RESP_OK_NODATA);
    let r = d.cmd(&mut fe, &req(CMD_GET_CAPSET_INFO, 0, 0, 0, 0, &[2, 0]));
    assert_eq!(rtype(&r), RESP_OK_CAPSET_INFO);
    fe.shutdown();
    assert!(window.maps.lock().unwrap().is_empty());
}
