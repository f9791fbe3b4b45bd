//! `pv-vkcheck`: a small GPU workload with checked results, for a guest's
//! Vulkan through Venus and GL through virgl, and the same on the host.
//!
//! Vulkan (default): the first physical device; a host-written buffer and
//! a vkCmdFillBuffer go through a device buffer and come back through
//! mapped memory; a compute shader (hand-assembled SPIR-V) writes a
//! sequence that is copied back; a fill whose fence is exported as a sync
//! file (where the device can) is waited for with poll(2). Every word is
//! checked.
//!
//! GL (`--gl`): an OpenGL ES 3 context on EGL's surfaceless platform draws
//! into a renderbuffer (clears, a scissored clear, a shader gradient) that
//! is read back with glReadPixels and checked pixel by pixel.
//!
//! Scanout (`--scanout`): the same picture drawn with GL into a GBM window
//! surface on /dev/dri/card0 at the display's mode, checked, presented, and
//! put on the CRTC with drmModeSetCrtc; then it stays there for `--hold`
//! seconds (a screenshot taken meanwhile shows it).
//!
//! Vulkan scanout (`--vk-scanout`): a picture made with Vulkan transfers
//! and a blit in dma-buf-exportable memory, checked, and put on the CRTC
//! through drmModeAddFB2 (see `vkscanout`); it stays for `--hold` seconds.
//!
//! `--bench` times the same work (see `vk::bench`, `gl::Gl::bench`).
//! Results are `KEY=VALUE` lines (`PV-VK-*`, `PV-GL-*`, `PV-BENCH-*`);
//! exit status 0 when every check passed.
//!
//! It only needs libvulkan.so.1 (or libEGL.so.1 and libGLESv2.so.2) and a
//! C library as old as the build host's, so one binary runs in the guest
//! image and on the host under the GPU runtime's loader.

mod gl;
mod kms;
mod spirv;
mod syncfd;
mod vk;
mod vkscanout;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Vulkan (or GL) workload with checked results, and its timings")]
struct Args {
    /// OpenGL ES through EGL instead of Vulkan.
    #[arg(long)]
    gl: bool,
    /// Draw with GL into a GBM surface and show it on the display (KMS).
    #[arg(long)]
    scanout: bool,
    /// Draw with Vulkan into a dma-buf and show it on the display (KMS).
    #[arg(long, conflicts_with_all = ["scanout", "gl"])]
    vk_scanout: bool,
    /// Seconds the scanout stays up.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// The DRM primary node for --scanout.
    #[arg(long, default_value = "/dev/dri/card0")]
    card: String,
    /// Also time the workload.
    #[arg(long)]
    bench: bool,
    /// MiB per buffer (transfer check and benchmark).
    #[arg(long, default_value_t = 16)]
    mib: u64,
    /// Timed repetitions (the median is printed).
    #[arg(long, default_value_t = 10)]
    iters: u32,
    /// Compute shader invocations (a multiple of 64).
    #[arg(long, default_value_t = 65536)]
    invocations: u32,
    /// Rounds of the compute shader's loop.
    #[arg(long, default_value_t = 256)]
    rounds: u32,
    /// Empty submits timed for the fence round trip.
    #[arg(long, default_value_t = 100)]
    fences: u32,
    /// Width and height of the GL picture (check: 64).
    #[arg(long, default_value_t = 256)]
    gl_size: i32,
}

fn verdict(key: &str, r: &Result<Option<String>>) -> bool {
    match r {
        Ok(None) => {
            println!("{key}=PASS");
            true
        }
        Ok(Some(bad)) => {
            println!("{key}=FAIL {bad}");
            false
        }
        Err(e) => {
            println!("{key}=FAIL {e:#}");
            false
        }
    }
}

fn vulkan(args: &Args) -> Result<bool> {
    // With sync-file export where the device has it.
    let (gpu, sync_fd) = match vk::Gpu::with_extensions(&[syncfd::EXTENSION]) {
        Ok(gpu) => (gpu, true),
        Err(_) => (vk::Gpu::new()?, false),
    };
    println!("PV-VK-DEVICE={}", gpu.name);
    println!("PV-VK-API={}", gpu.api);
    println!("PV-VK-MEMORY-TYPES={}", gpu.memory_types);
    let transfer = vk::transfer_check(&gpu, args.mib << 20);
    let compute = vk::compute_check(&gpu, args.invocations.max(64) / 64 * 64, 16);
    let mut ok = verdict("PV-VK-TRANSFER", &transfer) & verdict("PV-VK-COMPUTE", &compute);
    if sync_fd && syncfd::supported(&gpu) {
        ok &= verdict("PV-VK-SYNCFD", &syncfd::check(&gpu));
    } else {
        println!("PV-VK-SYNCFD=UNSUPPORTED");
    }
    println!("PV-VK-CHECK={}", if ok { "PASS" } else { "FAIL" });
    if ok && args.bench {
        let invocations = args.invocations.max(64) / 64 * 64;
        let b = vk::bench(
            &gpu,
            args.mib,
            args.iters,
            invocations,
            args.rounds,
            args.fences,
        )?;
        println!(
            "PV-BENCH-VK-FILL-COPY-MS={:.3} ({} MiB fill + {} MiB copy per submit, {:.0} MiB/s written)",
            b.fill_copy_ms, args.mib, args.mib, b.fill_copy_mibs
        );
        println!(
            "PV-BENCH-VK-COMPUTE-MS={:.3} ({invocations} invocations x {} rounds per dispatch)",
            b.compute_ms, args.rounds
        );
        println!(
            "PV-BENCH-VK-FENCE-US={:.1} (empty submit to fence signalled, median of {})",
            b.fence_us, args.fences
        );
        println!(
            "PV-BENCH-VK-MAP-WRITE-MIBS={:.0} (host writes to mapped memory)",
            b.map_write_mibs
        );
        println!(
            "PV-BENCH-VK-MAP-READ-MIBS={:.0} (host reads from mapped memory)",
            b.map_read_mibs
        );
    }
    Ok(ok)
}

fn gl(args: &Args) -> Result<bool> {
    let gl = gl::Gl::new()?;
    println!("PV-GL-EGL-VENDOR={}", gl.egl_vendor);
    println!("PV-GL-VENDOR={}", gl.vendor);
    println!("PV-GL-RENDERER={}", gl.renderer);
    println!("PV-GL-VERSION={}", gl.version);
    let ok = verdict("PV-GL-CHECK", &gl.check(64));
    if ok && args.bench {
        let t = gl.bench(args.gl_size, args.iters)?;
        println!(
            "PV-BENCH-GL-DRAW-READ-MS={:.3} ({size}x{size} clear + scissored clear + draw + glReadPixels)",
            t.as_secs_f64() * 1e3,
            size = args.gl_size,
        );
    }
    Ok(ok)
}

fn scanout(args: &Args) -> Result<bool> {
    let mut kms = kms::Kms::open(&args.card)?;
    println!("PV-SCANOUT-MODE={}x{}", kms.width, kms.height);
    let (device, surface) = kms.gbm();
    let gl = gl::Gl::open(gl::Platform::Gbm {
        device,
        surface,
        format: kms::FORMAT_XRGB8888,
    })?;
    println!("PV-GL-RENDERER={}", gl.renderer);
    let (w, h) = (kms.width as i32, kms.height as i32);
    let ok = verdict("PV-SCANOUT-DRAW", &gl.draw_and_swap(w, h));
    kms.show_front_buffer()?;
    println!("PV-SCANOUT=SHOWN");
    std::thread::sleep(std::time::Duration::from_secs(args.hold));
    kms.hide();
    drop(gl);
    drop(kms);
    Ok(ok)
}

fn vk_scanout(args: &Args) -> Result<bool> {
    let mut kms = kms::Kms::open_without_gbm(&args.card)?;
    println!("PV-VKSCANOUT-MODE={}x{}", kms.width, kms.height);
    let gpu = vk::Gpu::with_extensions(&vkscanout::extensions())?;
    println!("PV-VK-DEVICE={}", gpu.name);
    let picture = vkscanout::draw(&gpu, kms.width, kms.height)?;
    println!(
        "PV-VKSCANOUT-LAYOUT=pitch {} offset {}",
        picture.pitch, picture.offset
    );
    let ok = verdict("PV-VKSCANOUT-DRAW", &Ok(picture.wrong.clone()));
    kms.show_dmabuf(&picture.dmabuf, picture.pitch, picture.offset)?;
    println!("PV-VKSCANOUT=SHOWN");
    std::thread::sleep(std::time::Duration::from_secs(args.hold));
    kms.hide();
    drop(picture);
    drop(gpu);
    Ok(ok)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = if args.vk_scanout {
        vk_scanout(&args)
    } else if args.scanout {
        scanout(&args)
    } else if args.gl {
        gl(&args)
    } else {
        vulkan(&args)
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let key = if args.vk_scanout {
                "PV-VKSCANOUT"
            } else if args.scanout {
                "PV-SCANOUT"
            } else if args.gl {
                "PV-GL-CHECK"
            } else {
                "PV-VK-CHECK"
            };
            println!("{key}=FAIL {e:#}");
            ExitCode::FAILURE
        }
    }
}
