//! `pearvisor ctl` and `run --api-socket` at the command line, without KVM:
//! `ctl` talks to a pv-api server started in this process around a fake
//! machine (and, for screenshots and resizes, a fake display).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pv_api::{ApiServer, GpuInventory, ResizeError, Resizes, ScreenshotError, Screenshots};
use pv_vmm::config::VmConfig;
use pv_vmm::control::{MachineOps, VmController};
use pv_vmm::vm::{VcpuMetrics, VmError, VmExitReason};
use serde_json::{json, Value};

const PEARVISOR: &str = env!("CARGO_BIN_EXE_pearvisor");

/// (exit status, stdout, stderr)
fn pv(args: &[&str]) -> (i32, String, String) {
    let (rc, out, err) = pv_raw(args);
    (rc, String::from_utf8_lossy(&out).into_owned(), err)
}

/// (exit status, stdout as bytes, stderr)
fn pv_raw(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(PEARVISOR)
        .args(args)
        .output()
        .expect("run pearvisor");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn socket_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("pv-ctl-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[derive(Default)]
struct FakeMachine {
    paused: AtomicBool,
    stopped: Mutex<Option<VmExitReason>>,
    metrics: Vec<Arc<VcpuMetrics>>,
}

impl MachineOps for FakeMachine {
    fn pause(&self) -> Result<(), VmError> {
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn resume(&self) -> Result<(), VmError> {
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn press_power_button(&self) -> std::io::Result<()> {
        self.stop(VmExitReason::PowerOff);
        Ok(())
    }
    fn stop(&self, reason: VmExitReason) {
        self.stopped.lock().unwrap().get_or_insert(reason);
    }
    fn stopped(&self) -> bool {
        self.stopped.lock().unwrap().is_some()
    }
    fn vcpu_metrics(&self) -> Vec<Arc<VcpuMetrics>> {
        self.metrics.clone()
    }
    fn device_counters(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "virtio-blk-0".into(),
            json!({"read_bytes": 1024, "interrupts": 1, "notifications": 1}),
        );
        m
    }
}

/// A booted fake VM behind an API server at a fresh socket; no display.
fn serve(name: &str, gpus: GpuInventory) -> (PathBuf, ApiServer, Arc<FakeMachine>) {
    serve_with(name, gpus, None, None)
}

/// The same with `screenshots` and `resizes` as its display.
fn serve_with(
    name: &str,
    gpus: GpuInventory,
    screenshots: Option<Screenshots>,
    resizes: Option<Resizes>,
) -> (PathBuf, ApiServer, Arc<FakeMachine>) {
    let config: VmConfig =
        serde_json::from_value(json!({"kernel": "/boot/vmlinuz", "cpus": 1})).unwrap();
    let controller = VmController::new(config, Duration::from_millis(200));
    let machine = Arc::new(FakeMachine {
        metrics: vec![Arc::default()],
        ..Default::default()
    });
    machine.metrics[0].io_out.fetch_add(42, Ordering::Relaxed);
    controller.attach(machine.clone());
    let path = socket_path(name);
    let server = ApiServer::start(&path, controller, gpus, screenshots, resizes).unwrap();
    (path, server, machine)
}

fn no_gpus() -> GpuInventory {
    Arc::new(|| Err("GPU inventory not built yet".to_string()))
}

/// A `width`×`height` PNG of one colour.
fn png(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&rgba.repeat((width * height) as usize))
        .unwrap();
    writer.finish().unwrap();
    out
}

/// Display 0 shows blue, display 1 green; there are no others.
fn two_displays() -> Screenshots {
    Arc::new(|display| match display {
        0 => Ok(png(8, 6, [0, 0, 255, 255])),
        1 => Ok(png(2, 2, [0, 255, 0, 255])),
        n => Err(ScreenshotError::NoSuchDisplay(format!(
            "display {n} does not exist (the VM has 2)"
        ))),
    })
}

/// The sizes passed on, as (display, width, height).
type Asked = Arc<Mutex<Vec<(u32, u32, u32)>>>;

/// Size requests for two displays, recorded.
fn two_resizable_displays() -> (Resizes, Asked) {
    let asked = Asked::default();
    let passed = asked.clone();
    let resizes: Resizes = Arc::new(move |display, width, height| {
        if display > 1 {
            return Err(ResizeError::NoSuchDisplay(format!(
                "display {display} does not exist (the VM has 2)"
            )));
        }
        passed.lock().unwrap().push((display, width, height));
        Ok(())
    });
    (resizes, asked)
}

fn temp_file(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("pv-ctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn ctl_without_a_server_says_what_to_run() {
    let path = socket_path("missing");
    let p = path.to_str().unwrap();
    let (rc, out, err) = pv(&["ctl", "--socket", p, "info"]);
    assert_eq!(rc, 1);
    assert!(out.is_empty());
    assert_eq!(
        err.trim_end(),
        format!(
            "pearvisor ctl: no PearVisor API at {p}: is `pearvisor run --api-socket {p}` running?"
        )
    );
    // A stale socket file (nobody listening) reads the same.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let (rc, _, err) = pv(&["ctl", "--socket", p, "ping"]);
    assert_eq!(rc, 1);
    assert!(err.contains("no PearVisor API at"), "{err}");
    let _ = std::fs::remove_file(&path);
    // A request ctl does not know is clap's usage error.
    let (rc, _, err) = pv(&["ctl", "--socket", p, "explode"]);
    assert_eq!(rc, 2);
    assert!(err.contains("power-button"), "lists the requests: {err}");
}

#[test]
fn ctl_prints_answers_and_server_messages() {
    let (path, server, machine) = serve("answers", no_gpus());
    let p = path.to_str().unwrap();

    let (rc, out, err) = pv(&["ctl", "--socket", p, "info"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("\n  \"state\": \"Running\""),
        "pretty JSON: {out}"
    );
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["config"]["kernel"], "/boot/vmlinuz");
    assert_eq!(
        (info["vcpus"].as_u64(), info["boots"].as_u64()),
        (Some(1), Some(1))
    );

    let (rc, out, _) = pv(&["ctl", "--socket", p, "ping"]);
    assert_eq!(rc, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["pid"],
        std::process::id()
    );

    let (rc, out, err) = pv(&["ctl", "--socket", p, "pause"]);
    assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
    assert!(machine.paused.load(Ordering::SeqCst));
    let (rc, out, err) = pv(&["ctl", "--socket", p, "pause"]);
    assert_eq!(rc, 1);
    assert!(out.is_empty());
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: cannot pause the VM: it is Paused (HTTP 409)"
    );
    let (rc, _, err) = pv(&["ctl", "--socket", p, "power-button"]);
    assert_eq!(rc, 1);
    assert!(err.contains("(HTTP 409)"), "{err}");
    assert_eq!(pv(&["ctl", "--socket", p, "resume"]).0, 0);

    let (rc, out, _) = pv(&["ctl", "--socket", p, "counters"]);
    assert_eq!(rc, 0);
    let counters: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(counters["vcpus"][0]["exits"]["io_out"], 42);
    assert_eq!(counters["devices"]["virtio-blk-0"]["read_bytes"], 1024);

    let (rc, out, _) = pv(&["ctl", "--socket", p, "metrics"]);
    assert_eq!(rc, 0);
    assert!(
        out.contains("# TYPE pearvisor_vcpu_exits_total counter\n"),
        "{out}"
    );
    assert!(
        out.contains("pearvisor_vcpu_exits_total{vcpu=\"0\",reason=\"io_out\"} 42\n"),
        "{out}"
    );

    let (rc, _, err) = pv(&["ctl", "--socket", p, "gpus"]);
    assert_eq!(rc, 1);
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: GPU inventory not built yet (HTTP 500)"
    );

    // The guest obeys the button: shutdown ends at once; then 409.
    assert_eq!(pv(&["ctl", "--socket", p, "shutdown"]).0, 0);
    assert_eq!(
        *machine.stopped.lock().unwrap(),
        Some(VmExitReason::PowerOff)
    );
    let (rc, _, err) = pv(&["ctl", "--socket", p, "reboot"]);
    assert_eq!(rc, 1);
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: cannot reboot the VM: it is Shutdown (HTTP 409)"
    );
    server.stop();
    assert!(!path.exists());
}

#[test]
fn ctl_prints_the_gpu_inventory() {
    let gpus: GpuInventory = Arc::new(|| Ok(json!({"gpus": [{"name": "llvmpipe"}], "notes": []})));
    let (path, server, _) = serve("gpus", gpus);
    let (rc, out, err) = pv(&["ctl", "--socket", path.to_str().unwrap(), "gpus"]);
    assert_eq!(rc, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["gpus"][0]["name"], "llvmpipe");
    server.stop();
}

#[test]
fn ctl_screenshot_writes_the_png_and_nothing_else() {
    let (path, server, _) = serve_with("screenshot", no_gpus(), Some(two_displays()), None);
    let p = path.to_str().unwrap();
    let file = temp_file("screen.png");
    let f = file.to_str().unwrap();

    let (rc, out, err) = pv(&["ctl", "--socket", p, "screenshot", "-o", f]);
    assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
    assert_eq!(std::fs::read(&file).unwrap(), png(8, 6, [0, 0, 255, 255]));
    // --display, and an existing file is replaced.
    let (rc, out, err) = pv(&[
        "ctl",
        "--socket",
        p,
        "screenshot",
        "--display",
        "1",
        "--output",
        f,
    ]);
    assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
    assert_eq!(std::fs::read(&file).unwrap(), png(2, 2, [0, 255, 0, 255]));
    // -o - is stdout, here a pipe: the bytes as they are.
    let (rc, out, err) = pv_raw(&["ctl", "--socket", p, "screenshot", "-o", "-"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, png(8, 6, [0, 0, 255, 255]));
    std::fs::remove_file(&file).unwrap();

    // The server's errors: a message, exit 1, no file.
    let (rc, out, err) = pv(&[
        "ctl",
        "--socket",
        p,
        "screenshot",
        "-o",
        f,
        "--display",
        "7",
    ]);
    assert_eq!(rc, 1);
    assert!(out.is_empty());
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: display 7 does not exist (the VM has 2) (HTTP 404)"
    );
    assert!(!file.exists(), "no file for a failed request");
    let (rc, _, err) = pv(&[
        "ctl",
        "--socket",
        p,
        "screenshot",
        "-o",
        "/nonexistent-dir/s.png",
    ]);
    assert_eq!(rc, 1);
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: cannot write the PNG to /nonexistent-dir/s.png: \
         No such file or directory (os error 2)"
    );
    server.stop();

    // A VM without a display.
    let (path, server, _) = serve("no-display", no_gpus());
    let (rc, _, err) = pv(&[
        "ctl",
        "--socket",
        path.to_str().unwrap(),
        "screenshot",
        "-o",
        f,
    ]);
    assert_eq!(rc, 1);
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: the VM has no display: start it with --gpu (HTTP 409)"
    );
    assert!(!file.exists());
    server.stop();
}

#[test]
fn ctl_screenshot_options_are_checked_before_anything_is_sent() {
    // No server: the options are refused before ctl connects.
    let path = socket_path("options");
    let p = path.to_str().unwrap();
    for (args, message) in [
        (
            &["screenshot"][..],
            "screenshot needs -o FILE, the file to write the PNG to (- for stdout)",
        ),
        (
            &["screenshot", "--display", "1"],
            "screenshot needs -o FILE, the file to write the PNG to (- for stdout)",
        ),
        (
            &["info", "-o", "x.png"],
            "-o/--output goes only with screenshot",
        ),
        (
            &["metrics", "--output", "x.png", "--display", "0"],
            "-o/--output goes only with screenshot",
        ),
        (
            &["pause", "--display", "0"],
            "--display goes only with screenshot and resize",
        ),
    ] {
        ctl_fails(p, args, 2, message);
    }
    assert!(!Path::new("x.png").exists());
    // Not a number: clap's usage error.
    let (rc, _, err) = pv(&[
        "ctl",
        "--socket",
        p,
        "screenshot",
        "-o",
        "x.png",
        "--display",
        "one",
    ]);
    assert_eq!(rc, 2);
    assert!(
        err.contains("invalid value 'one' for '--display <N>'"),
        "{err}"
    );
}

#[test]
fn ctl_resize_sends_the_size_and_prints_nothing() {
    let (resizes, asked) = two_resizable_displays();
    let (path, server, machine) = serve_with("resize", no_gpus(), None, Some(resizes));
    let p = path.to_str().unwrap();
    let (rc, out, err) = pv(&["ctl", "--socket", p, "resize", "800x600"]);
    assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
    let (rc, out, err) = pv(&[
        "ctl",
        "--socket",
        p,
        "resize",
        "--display",
        "1",
        "1920x1080",
    ]);
    assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
    assert_eq!(*asked.lock().unwrap(), [(0, 800, 600), (1, 1920, 1080)]);

    // The server's refusals: its message, exit 1.
    for (args, message) in [
        (
            &["resize", "10x600"][..],
            "invalid width 10: each side must be within 32..=8192 pixels (HTTP 400)",
        ),
        (
            &["resize", "800x9000"],
            "invalid height 9000: each side must be within 32..=8192 pixels (HTTP 400)",
        ),
        (
            &["resize", "4294967295x600"],
            "invalid width 4294967295: each side must be within 32..=8192 pixels (HTTP 400)",
        ),
        (
            &["resize", "800x600", "--display", "7"],
            "display 7 does not exist (the VM has 2) (HTTP 404)",
        ),
    ] {
        ctl_fails(p, args, 1, message);
    }
    assert_eq!(pv(&["ctl", "--socket", p, "pause"]).0, 0);
    assert!(machine.paused.load(Ordering::SeqCst));
    let (rc, _, err) = pv(&["ctl", "--socket", p, "resize", "800x600"]);
    assert_eq!(rc, 1);
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: cannot resize a display of the VM: it is Paused (HTTP 409)"
    );
    assert_eq!(
        asked.lock().unwrap().len(),
        2,
        "nothing refused was passed on"
    );
    server.stop();

    // A VM without a display.
    let (path, server, _) = serve("resize-no-display", no_gpus());
    let (rc, _, err) = pv(&[
        "ctl",
        "--socket",
        path.to_str().unwrap(),
        "resize",
        "800x600",
    ]);
    assert_eq!(rc, 1);
    assert_eq!(
        err.trim_end(),
        "pearvisor ctl: the VM has no display: start it with --gpu (HTTP 409)"
    );
    server.stop();
}

#[test]
fn ctl_resize_arguments_are_checked_before_anything_is_sent() {
    // No server: bad arguments are refused before ctl connects.
    let path = socket_path("resize-options");
    let p = path.to_str().unwrap();
    let usage = "expected WIDTHxHEIGHT, like 1920x1080";
    for (args, message) in [
        (
            &["resize", "10x"][..],
            format!("the height is missing: {usage}"),
        ),
        (
            &["resize", "x600"],
            format!("the width is missing: {usage}"),
        ),
        (
            &["resize", "800"],
            format!("no 'x' between width and height: {usage}"),
        ),
        (
            &["resize", "800:600"],
            format!("no 'x' between width and height: {usage}"),
        ),
        (
            &["resize", "800x600x32"],
            format!("the height '600x32' is not a whole number of pixels: {usage}"),
        ),
        (
            &["resize", "800.5x600"],
            format!("the width '800.5' is not a whole number of pixels: {usage}"),
        ),
        (
            &["resize", "wide x tall"],
            format!("the width 'wide ' is not a whole number of pixels: {usage}"),
        ),
        (
            &["resize", "99999999999x600"],
            format!("the width '99999999999' is too large: {usage}"),
        ),
    ] {
        let mut argv = vec!["ctl", "--socket", p];
        argv.extend_from_slice(args);
        let (rc, out, err) = pv(&argv);
        assert_eq!(rc, 2, "{args:?}: {err}");
        assert!(out.is_empty());
        assert!(
            err.contains(&format!(
                "invalid value '{}' for '[WIDTHxHEIGHT]': {message}",
                args[1]
            )),
            "{args:?}: {err}"
        );
    }
    for (args, message) in [
        (
            &["resize"][..],
            "resize needs the size as WIDTHxHEIGHT, like 1920x1080",
        ),
        (
            &["resize", "--display", "1"],
            "resize needs the size as WIDTHxHEIGHT, like 1920x1080",
        ),
        (&["info", "800x600"], "WIDTHxHEIGHT goes only with resize"),
        (
            &["screenshot", "800x600", "-o", "x.png"],
            "WIDTHxHEIGHT goes only with resize",
        ),
        (
            &["resize", "800x600", "-o", "x.png"],
            "-o/--output goes only with screenshot",
        ),
    ] {
        ctl_fails(p, args, 2, message);
    }
    // A negative size reads as an option: clap's usage error too.
    let (rc, _, err) = pv(&["ctl", "--socket", p, "resize", "-800x600"]);
    assert_eq!(rc, 2, "{err}");
    assert!(!path.exists());
}

#[test]
fn ctl_screenshot_refuses_to_write_to_a_terminal() {
    let Some((_master, tty)) = open_pty() else {
        eprintln!("no pseudo-terminal here: skipped");
        return;
    };
    let (path, server, _) = serve_with("tty", no_gpus(), Some(two_displays()), None);
    let p = path.to_str().unwrap();
    let t = tty.to_str().unwrap();
    let (rc, _, err) = pv(&["ctl", "--socket", p, "screenshot", "-o", t]);
    assert_eq!(rc, 1);
    assert_eq!(
        err.trim_end(),
        format!("pearvisor ctl: refusing to write a PNG to {t}: it is a terminal")
    );
    // -o - with stdout on the terminal.
    let out = Command::new(PEARVISOR)
        .args(["ctl", "--socket", p, "screenshot", "-o", "-"])
        .stdout(std::fs::OpenOptions::new().write(true).open(&tty).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "pearvisor ctl: refusing to write a PNG to a terminal: redirect stdout or give -o FILE"
    );
    server.stop();
}

/// A new pseudo-terminal: its master (kept open while the test runs) and
/// its terminal's path; `None` where there are none.
fn open_pty() -> Option<(std::os::fd::OwnedFd, PathBuf)> {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is open and owned by nothing else.
    let master = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `fd` is a pseudo-terminal master; ptsname_r writes at most
    // `name.len()` bytes, NUL-terminated, into `name`.
    let ok = unsafe {
        libc::grantpt(fd) == 0
            && libc::unlockpt(fd) == 0
            && libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return None;
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Some((master, PathBuf::from(name.to_str().ok()?)))
}

/// Enough of a bzImage header to pass the kernel format check.
fn bzimage_header() -> PathBuf {
    let mut v = vec![0u8; 0x400];
    v[0x202..0x206].copy_from_slice(b"HdrS");
    let p = std::env::temp_dir().join(format!("pv-ctl-{}-kernel", std::process::id()));
    std::fs::write(&p, v).unwrap();
    p
}

#[test]
fn run_refuses_a_socket_another_server_answers_on() {
    let (path, server, _) = serve("busy", no_gpus());
    let kernel = bzimage_header();
    // The API starts before any KVM work, so this runs on every host.
    let (rc, _, err) = pv(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--skip-host-check",
        "--serial",
        "none",
        "--api-socket",
        path.to_str().unwrap(),
    ]);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot start the API server\n  caused by: an API server already answers at {}",
            path.display()
        )),
        "{err}"
    );
    // The running server is untouched.
    let (rc, _, _) = pv(&["ctl", "--socket", path.to_str().unwrap(), "ping"]);
    assert_eq!(rc, 0);
    server.stop();
    let _ = std::fs::remove_file(kernel);
}

#[test]
fn bad_shutdown_grace_and_help() {
    let kernel = bzimage_header();
    let (rc, _, err) = pv(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--shutdown-grace",
        "soon",
    ]);
    assert_eq!(rc, 2);
    assert!(
        err.contains("invalid duration 'soon': use a number with ms, s, m or h"),
        "{err}"
    );
    let (rc, out, _) = pv(&["run", "--help"]);
    assert_eq!(rc, 0);
    for flag in [
        "--api-socket <PATH>",
        "--shutdown-grace <DURATION>",
        "[default: 10s]",
    ] {
        assert!(out.contains(flag), "run --help lacks {flag}:\n{out}");
    }
    let (rc, out, _) = pv(&["ctl", "--help"]);
    assert_eq!(rc, 0);
    for word in [
        "--socket <PATH>",
        "ping",
        "info",
        "pause",
        "resume",
        "reboot",
        "power-button",
        "shutdown",
        "counters",
        "metrics",
        "gpus",
        "screenshot",
        "resize",
        "[WIDTHxHEIGHT]",
        "-o, --output <FILE>",
        "--display <N>",
    ] {
        assert!(out.contains(word), "ctl --help lacks {word}:\n{out}");
    }
    let _ = std::fs::remove_file(kernel);
}

/// `pearvisor ctl --socket SOCKET ARGS...` exits `rc`, prints nothing on
/// stdout and `pearvisor ctl: MESSAGE` on stderr.
fn ctl_fails(socket: &str, args: &[&str], rc: i32, message: &str) {
    let mut argv = vec!["ctl", "--socket", socket];
    argv.extend_from_slice(args);
    let (got, out, err) = pv(&argv);
    assert_eq!(got, rc, "{args:?}: {err}");
    assert!(out.is_empty(), "{args:?}: {out}");
    assert_eq!(
        err.trim_end(),
        format!("pearvisor ctl: {message}"),
        "{args:?}"
    );
}
