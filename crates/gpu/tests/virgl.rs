//! pv-gpu's virglrenderer wrapper against the real library: Venus and virgl
//! initialization, capsets, contexts, 3D resources and transfers, blobs
//! (create, map, export), and fences on both timelines.
//!
//! The host's own virglrenderer may be too old (Debian 12 has 0.10), so
//! each test runs itself again in a child process under the GPU runtime's
//! loader (`pearvisor gpu-runtime build`; `scripts/test.sh` builds it), the
//! way `pearvisor` runs itself. With `PEARVISOR_GPU_RUNTIME=DIR` a runtime
//! elsewhere is used; with `PV_VIRGL_DIRECT=1` the tests use the library the
//! loader finds (a host with virglrenderer >= 1.1, or the NVIDIA device
//! machine's carried runtime).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pv_gpu::virgl::ffi::{VirglBox, BLOB_FD_TYPE_SHM, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_HOST3D};
use pv_gpu::virgl::runtime::RuntimeLayout;
use pv_gpu::virgl::{
    Blob, ContextTypes, FenceEvent, HostRange, Renderer, RendererError, RendererOptions,
    Resource3d, Timeline, Transfer, VirglLibrary, CAPSET_VENUS, CAPSET_VIRGL, CAPSET_VIRGL2,
};

fn in_child(test: &str) -> bool {
    pv_gpu::virgl::testing::in_gpu_runtime(test)
}

fn renderer(types: ContextTypes) -> Renderer {
    let lib = Arc::new(VirglLibrary::load().expect("load virglrenderer"));
    let release = lib.info().release.expect("release from the file name");
    assert!(release.major >= 1, "{}", lib.info());
    let options = RendererOptions {
        context_types: types,
        gles: false,
        server: RuntimeLayout::active().map(|rt| rt.server_launcher()),
    };
    Renderer::new(lib, options).expect("initialize virglrenderer")
}

/// Waits (blocking on the eventfd, no spinning) for fences until `want`.
fn wait_fence(r: &Renderer, want: FenceEvent) -> Vec<FenceEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: r.fences().eventfd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 200) };
        seen.extend(r.fences().drain());
        if seen.contains(&want) {
            return seen;
        }
    }
    panic!("fence {want:?} did not signal within 20 s; saw {seen:?}");
}

#[test]
fn venus_context_blob_map_export_and_context_fence() {
    if !in_child("venus_context_blob_map_export_and_context_fence") {
        return;
    }
    let mut r = renderer(ContextTypes {
        venus: true,
        virgl: false,
    });
    let caps = r.capsets().to_vec();
    assert_eq!(caps.len(), 1, "{caps:?}");
    assert_eq!(caps[0].id, CAPSET_VENUS);
    let data = r
        .capset(CAPSET_VENUS, caps[0].max_version)
        .expect("venus capset");
    assert_eq!(data.len(), caps[0].max_size as usize);
    let wire_format = u32::from_le_bytes(data[0..4].try_into().unwrap());
    assert!(wire_format >= 1, "Venus wire format {wire_format}");
    assert!(
        r.capset(CAPSET_VIRGL2, 2).is_none(),
        "virgl capset not enabled"
    );

    r.create_context(1, CAPSET_VENUS, "test")
        .expect("venus context");
    // The Venus ring memory: a HOST3D blob with blob_id 0, no command needed.
    let size = 64 * 1024;
    let blob = Blob {
        ctx_id: 1,
        blob_mem: BLOB_MEM_HOST3D,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 0,
        size,
    };
    // SAFETY: no guest ranges are passed.
    unsafe { r.create_blob(10, &blob, &[]) }.expect("create blob");
    r.attach_resource(1, 10);
    let map = r.map_blob(10).expect("map blob");
    assert_eq!(map.size, size);
    // SAFETY: the mapping is `size` bytes, writable, until unmap.
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.addr, size as usize) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let exported = r.export_blob(10).expect("export blob");
    assert_eq!(
        exported.fd_type, BLOB_FD_TYPE_SHM,
        "Venus ring memory is shm"
    );
    // The exported fd is the same memory.
    // SAFETY: a fresh read-only shared mapping of the exported fd.
    let other = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            exported.fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(other, libc::MAP_FAILED);
    // SAFETY: mapped above with this size.
    let seen = unsafe { std::slice::from_raw_parts(other as *const u8, size as usize) };
    assert_eq!(seen[..4096], bytes[..4096]);
    assert_eq!(seen[60_000], (60_000 % 251) as u8);
    // SAFETY: unmapping our own mapping.
    unsafe { libc::munmap(other, size as usize) };

    r.create_context_fence(1, 0, 42).expect("context fence");
    wait_fence(
        &r,
        FenceEvent {
            timeline: Timeline::Context {
                ctx_id: 1,
                ring_idx: 0,
            },
            fence_id: 42,
        },
    );
    r.unmap_blob(10).expect("unmap");
    r.detach_resource(1, 10);
    r.unref_resource(10);
    r.destroy_context(1);
    // Unknown ids are answered with errors, not crashes.
    assert!(r.map_blob(999).is_err());
    assert!(r.create_context_fence(77, 0, 1).is_err());
}

#[test]
fn virgl_texture_round_trip_and_global_fence() {
    if !in_child("virgl_texture_round_trip_and_global_fence") {
        return;
    }
    let mut r = renderer(ContextTypes {
        venus: false,
        virgl: true,
    });
    let ids: Vec<u32> = r.capsets().iter().map(|c| c.id).collect();
    assert_eq!(ids, [CAPSET_VIRGL, CAPSET_VIRGL2]);
    let v2 = r.capset(CAPSET_VIRGL2, 2).expect("virgl2 capset");
    assert!(v2.len() >= 1000, "virgl2 capset is {} bytes", v2.len());
    r.create_context(1, CAPSET_VIRGL2, "test")
        .expect("virgl context");

    // A 64x32 B8G8R8A8 texture (PIPE_TEXTURE_2D, render target + sampler view).
    let (w, h) = (64u32, 32u32);
    let res = Resource3d {
        target: 2,
        format: 1,
        bind: (1 << 1) | (1 << 3),
        width: w,
        height: h,
        depth: 1,
        array_size: 1,
        ..Default::default()
    };
    r.create_resource(5, &res).expect("texture");
    r.attach_resource(1, 5);
    let mut backing: Vec<u8> = (0..w * h * 4).map(|i| (i * 7 % 256) as u8).collect();
    let range = HostRange {
        addr: backing.as_mut_ptr(),
        len: backing.len(),
    };
    // SAFETY: `backing` outlives the resource's use of it (detached below).
    unsafe { r.attach_backing(5, &[range]) }.expect("attach backing");
    let full = VirglBox {
        x: 0,
        y: 0,
        z: 0,
        w,
        h,
        d: 1,
    };
    let t = Transfer {
        resource_id: 5,
        ctx_id: 1,
        stride: w * 4,
        bx: full,
        ..Default::default()
    };
    r.transfer_write(&t).expect("transfer to host");
    let mut out = vec![0u8; backing.len()];
    r.read_into(5, full, w * 4, 0, &mut out).expect("read back");
    assert_eq!(
        out, backing,
        "texture contents round-trip through the GL texture"
    );
    let info = r.describe(5).expect("resource info");
    assert_eq!((info.width, info.height), (w, h));

    // A transfer outside the texture is refused.
    let outside = VirglBox {
        x: 60,
        w: 10,
        ..full
    };
    assert!(r.transfer_write(&Transfer { bx: outside, ..t }).is_err());

    r.create_fence(7, 0).expect("global fence");
    wait_fence(
        &r,
        FenceEvent {
            timeline: Timeline::Global,
            fence_id: 7,
        },
    );
    r.detach_backing(5);
    r.unref_resource(5);
    r.destroy_context(1);
    // A garbage command stream is rejected or ignored; the renderer survives.
    r.create_context(2, CAPSET_VIRGL2, "garbage")
        .expect("context");
    let mut garbage: Vec<u32> = (0..256u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
    let _ = r.submit(2, &mut garbage);
    r.destroy_context(2);
    r.create_fence(8, 0).expect("fence after garbage");
    wait_fence(
        &r,
        FenceEvent {
            timeline: Timeline::Global,
            fence_id: 8,
        },
    );
}

#[test]
fn venus_and_virgl_together_and_one_renderer_per_process() {
    if !in_child("venus_and_virgl_together_and_one_renderer_per_process") {
        return;
    }
    let r = renderer(ContextTypes {
        venus: true,
        virgl: true,
    });
    let ids: Vec<u32> = r.capsets().iter().map(|c| c.id).collect();
    assert_eq!(ids, [CAPSET_VIRGL, CAPSET_VIRGL2, CAPSET_VENUS]);
    let lib = Arc::new(VirglLibrary::load().expect("load"));
    let second = Renderer::new(
        lib,
        RendererOptions {
            context_types: ContextTypes {
                venus: false,
                virgl: true,
            },
            ..Default::default()
        },
    );
    assert!(matches!(second, Err(RendererError::AlreadyInitialized)));
    drop(r);
    // After the first is gone a new one can start.
    let again = renderer(ContextTypes {
        venus: false,
        virgl: true,
    });
    assert_eq!(again.capsets().len(), 2);
}
