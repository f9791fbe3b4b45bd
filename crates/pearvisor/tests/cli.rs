//! The command line's answers to bad input: a clear message and status 1,
//! before any VM exists (so these run on every host).

use std::process::Command;

const PEARVISOR: &str = env!("CARGO_BIN_EXE_pearvisor");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(PEARVISOR)
        .args(args)
        .output()
        .expect("run pearvisor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str, content: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("pv-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let text = temp("text", b"this is not a kernel");
    let (rc, err) = run(&["run", "--kernel", text.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(err.contains("is not a Linux kernel"), "{err}");
    // A program that is an ELF but not a vmlinux is refused too.
    let (rc, err) = run(&["run", "--kernel", "/bin/sh"]);
    assert_eq!(rc, 1);
    assert!(err.contains("is not a Linux kernel"), "{err}");
    let _ = std::fs::remove_file(text);
}

#[test]
fn missing_files_name_the_path() {
    let (rc, err) = run(&["run", "--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("kernel '/nonexistent/vmlinuz' is not readable"),
        "{err}"
    );
    let kernel = temp("kernel-hdr", &bzimage_header());
    let (rc, err) = run(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd.img",
    ]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("initrd '/nonexistent/initrd.img' is not readable"),
        "{err}"
    );
    let (rc, err) = run(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        "path=/nonexistent/d.img",
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("cannot open '/nonexistent/d.img'"), "{err}");
    let _ = std::fs::remove_file(kernel);
}

/// Enough of a bzImage header to pass the format check.
fn bzimage_header() -> Vec<u8> {
    let mut v = vec![0u8; 0x400];
    v[0x202..0x206].copy_from_slice(b"HdrS");
    v
}

#[test]
fn bad_sizes_and_flags_are_explained() {
    let kernel = temp("kernel-hdr2", &bzimage_header());
    let k = kernel.to_str().unwrap();
    let (rc, err) = run(&["run", "--kernel", k, "--memory", "12Q"]);
    assert_eq!(rc, 1);
    assert!(err.contains("invalid size '12Q'"), "{err}");
    let (rc, err) = run(&["run", "--kernel", k, "--memory", "16M"]);
    assert_eq!(rc, 1);
    assert!(err.contains("too small"), "{err}");
    let (rc, err) = run(&["run", "--kernel", k, "--memory", "64T"]);
    assert_eq!(rc, 1);
    assert!(err.contains("more than the host"), "{err}");
    let (rc, err) = run(&["run", "--kernel", k, "--cpus", "0"]);
    assert_eq!(rc, 1);
    assert!(err.contains("--cpus must be between 1 and"), "{err}");
    let (rc, err) = run(&["run", "--kernel", k, "--disk", "path=x.img,speed=fast"]);
    assert_eq!(rc, 1);
    assert!(err.contains("unknown disk option 'speed'"), "{err}");
    let (rc, err) = run(&["run", "--kernel", k, "--serial", "pty"]);
    assert_eq!(rc, 1);
    assert!(err.contains("use tty, file=PATH or none"), "{err}");
    let (rc, _) = run(&["run", "--kernel", k, "--bogus-flag"]);
    assert_eq!(rc, 2, "clap's usage error");
    let _ = std::fs::remove_file(kernel);
}

#[test]
fn a_pvm_only_host_is_explained() {
    if pv_testkit::host_virtualization() != pv_testkit::HostVirt::PvmOnly {
        return; // only meaningful where /dev/kvm is kvm_pvm
    }
    let kernel = temp("kernel-hdr3", &bzimage_header());
    let (rc, err) = run(&["run", "--kernel", kernel.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("kvm_pvm without hardware virtualization"),
        "{err}"
    );
    assert!(err.contains("nested"), "says what to do instead: {err}");
    let _ = std::fs::remove_file(kernel);
}

#[test]
fn gpu_lists_the_hosts_vulkan_devices() {
    // scripts/setup-host.sh installs the Vulkan loader and Mesa's lavapipe.
    let out = Command::new(PEARVISOR)
        .args(["gpu", "--json"])
        .output()
        .expect("run pearvisor gpu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let gpus = inv["gpus"].as_array().expect("a gpus list");
    let cpu = gpus
        .iter()
        .find(|g| g["device_type"] == "cpu")
        .unwrap_or_else(|| panic!("lavapipe is listed: {inv}"));
    assert!(
        cpu["name"].as_str().unwrap_or("").contains("llvmpipe"),
        "{inv}"
    );
    assert!(
        cpu["device_local_memory"].as_u64().unwrap_or(0) > 0,
        "{inv}"
    );
    assert!(
        cpu["verdict"]
            .as_str()
            .unwrap_or("")
            .contains("Venus-ready"),
        "{inv}"
    );
    let text = Command::new(PEARVISOR).arg("gpu").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("llvmpipe") && text.contains("verdict"),
        "{text}"
    );
}

#[test]
fn a_window_without_a_display_server_is_refused_before_booting() {
    let kernel = temp("kernel-hdr-window", &bzimage_header());
    let out = Command::new(PEARVISOR)
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--gpu",
            "--display",
            "window",
        ])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("WAYLAND_SOCKET")
        .output()
        .expect("run pearvisor");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "--display window needs a display server (DISPLAY or WAYLAND_DISPLAY is unset); use --display web or headless"
        ),
        "{err}"
    );
    let _ = std::fs::remove_file(kernel);
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(PEARVISOR);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pearvisor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--gpu context-types=...`: virglrenderer is checked before anything
/// else. This host's own library is missing or too old (Debian 12 has 0.10),
/// so PearVisor runs itself under the GPU runtime when there is one, and
/// stops with what to install when there is none.
#[test]
fn a_3d_gpu_needs_virglrenderer_or_the_gpu_runtime() {
    let kernel = temp("kernel-3d", &bzimage_header());
    let kernel = kernel.to_str().unwrap();
    let empty = std::env::temp_dir().join(format!("pv-cli-{}-nocache", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.to_str().unwrap();
    let args = [
        "run",
        "--kernel",
        kernel,
        "--gpu",
        "context-types=venus:virgl",
    ];

    // No runtime anywhere: the library's problem and what to do.
    let (rc, err) = run_env(&args, &[("XDG_CACHE_HOME", empty), ("HOME", empty)]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("GPU acceleration is unavailable"), "{err}");
    assert!(
        err.contains("not found") || err.contains("too old") || err.contains("cannot be loaded"),
        "{err}"
    );
    assert!(err.contains("pearvisor gpu-runtime build"), "{err}");
    assert!(err.contains("libvirglrenderer1 >= 1.1"), "{err}");

    // A runtime directory that is not one.
    let (rc, err) = run_env(&args, &[("PEARVISOR_GPU_RUNTIME", empty)]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("has no dynamic loader"), "{err}");

    // The cached runtime (scripts/test.sh builds it): PearVisor says it runs
    // under it, then goes on (and on this host stops at the host check or
    // at the kernel).
    let (_, err) = run(&args);
    assert!(
        err.contains("running under the GPU runtime at") && err.contains("virglrenderer 1."),
        "{err}"
    );
    // A 2D GPU never needs virglrenderer.
    let (_, err) = run_env(
        &["run", "--kernel", kernel, "--gpu", ""],
        &[("XDG_CACHE_HOME", empty), ("HOME", empty)],
    );
    assert!(!err.contains("virglrenderer"), "{err}");
    let _ = std::fs::remove_dir_all(empty);
}

#[test]
fn gpu_runtime_path_without_a_runtime_says_how_to_build_one() {
    let cache = std::env::temp_dir().join(format!("pv-cli-{}-empty-cache", std::process::id()));
    let out = Command::new(PEARVISOR)
        .args(["gpu-runtime", "path"])
        .env("PEARVISOR_CACHE", &cache)
        .output()
        .expect("run pearvisor");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        err.trim(),
        "pearvisor: no GPU runtime; run `pearvisor gpu-runtime build`"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

fn dry_run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(PEARVISOR)
        .args(["run", "--dry-run"])
        .args(args)
        .output()
        .expect("run pearvisor");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--dry-run prints JSON")
}

/// `--dry-run` prints the resolved configuration, which --config takes
/// back unchanged; the default image gets 1 GiB unless told otherwise (its
/// GPU userspace unpacks into RAM; at 512 MiB the kernel's initramfs
/// unpacking fails with "write error").
#[test]
fn dry_run_prints_the_config_and_the_default_image_gets_enough_memory() {
    let kernel = temp("dry-kernel", &bzimage_header());
    let k = kernel.to_str().unwrap();
    let own = dry_run(&[
        "--kernel",
        k,
        "--cpus",
        "2",
        "--gpu",
        "width=800,height=600",
    ]);
    assert_eq!(own["memory"], 512u64 << 20, "{own}");
    assert_eq!(own["cpus"], 2);
    assert_eq!(own["gpu"]["width"], 800, "{own}");
    let config = temp("dry-config.json", own.to_string().as_bytes());
    let again = dry_run(&["--config", config.to_str().unwrap()]);
    assert_eq!(again, own, "--config takes --dry-run's output back");

    let default = dry_run(&[]);
    assert_eq!(default["memory"], 1u64 << 30, "{default}");
    assert!(
        default["initrd"]
            .as_str()
            .is_some_and(|p| p.ends_with("initrd.img")),
        "{default}"
    );
    let small = dry_run(&["--memory", "768M"]);
    assert_eq!(small["memory"], 768u64 << 20, "an explicit size wins");
    let _ = std::fs::remove_file(kernel);
    let _ = std::fs::remove_file(config);
}
