//! The host GPU runtime, assembled for real from Debian sid (network on the first run, about
//! 270 MB; later runs reuse the cached runtime while sid's packages are unchanged) and checked
//! by running its programs through its own dynamic loader.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use pv_image::{build_gpu_runtime, cached_gpu_runtime, GpuRuntime, GpuRuntimeOptions};

fn runtime() -> &'static GpuRuntime {
    static RT: OnceLock<GpuRuntime> = OnceLock::new();
    RT.get_or_init(|| {
        build_gpu_runtime(GpuRuntimeOptions {
            quiet: true,
            ..Default::default()
        })
        .expect("build the GPU runtime (needs deb.debian.org on the first run)")
    })
}

/// `ld.so --list FILE` through the runtime's loader: (soname, resolved path) per line.
fn list(rt: &GpuRuntime, file: &Path) -> Vec<(String, String)> {
    let out = Command::new(rt.loader())
        .arg("--inhibit-cache")
        .arg("--library-path")
        .arg(rt.lib_dir())
        .arg("--list")
        .arg(file)
        .output()
        .expect("run the runtime's loader");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--list {}: {text}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.trim().split_once("=>"))
        .map(|(name, rest)| {
            let path = rest.split_whitespace().next().unwrap_or("").to_string();
            (name.trim().to_string(), path)
        })
        .collect()
}

#[test]
fn runtime_has_the_versions_and_files_pearvisor_needs() {
    let rt = runtime();
    let virgl = rt
        .version_of("libvirglrenderer1")
        .expect("libvirglrenderer1");
    let major_minor: Vec<u32> = virgl
        .split(['.', '-'])
        .take(2)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    assert!(
        major_minor >= vec![1, 2],
        "virglrenderer {virgl} is too old for Venus"
    );
    assert!(rt.version_of("libc6").is_some() && rt.version_of("mesa-vulkan-drivers").is_some());
    assert!(
        rt.version_of("debconf").is_none(),
        "excluded packages stay out"
    );
    for path in [
        rt.loader(),
        rt.render_server(),
        rt.lib_dir().join("libvirglrenderer.so.1"),
    ] {
        assert!(path.is_file(), "{} is missing", path.display());
    }
    for (key, value) in rt.env() {
        assert!(
            Path::new(&value).exists(),
            "{key}={} does not exist",
            value.to_string_lossy()
        );
    }
    let versions = std::fs::read_to_string(rt.root.join("VERSIONS")).unwrap();
    assert!(
        versions
            .lines()
            .any(|l| l == format!("libvirglrenderer1 {virgl}")),
        "{versions}"
    );
    // Hardware Vulkan drivers are pruned.
    assert!(!rt.lib_dir().join("libvulkan_radeon.so").exists());
    assert!(rt.lib_dir().join("libvulkan_lvp.so").exists());
    // The published runtime is what the offline lookup finds.
    assert_eq!(cached_gpu_runtime(None).as_ref(), Some(rt));
    // Built once: the second call reuses it.
    let again = build_gpu_runtime(GpuRuntimeOptions {
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(&again, rt);
}

#[test]
fn every_library_resolves_inside_the_runtime() {
    let rt = runtime();
    let lib = rt.lib_dir();
    let gallium = std::fs::read_dir(&lib)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libgallium-"))
        })
        .expect("libgallium-*.so");
    for file in [
        lib.join("libvirglrenderer.so.1"),
        rt.render_server(),
        lib.join("libvulkan_lvp.so"),
        lib.join("libEGL_mesa.so.0"),
        gallium,
    ] {
        let deps = list(rt, &file);
        assert!(!deps.is_empty(), "{} has no dependencies?", file.display());
        for (name, path) in deps {
            assert!(
                Path::new(&path).starts_with(&lib),
                "{}: {name} resolves to {path:?}, outside the runtime",
                file.display()
            );
        }
    }
}

#[test]
fn runtime_programs_run_through_its_loader() {
    let rt = runtime();
    let out = rt
        .command(&rt.root.join("usr/bin/virgl_test_server"))
        .arg("--help")
        .output()
        .expect("start virgl_test_server through the runtime's loader");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("error while loading shared libraries"),
        "{text}"
    );
    assert!(
        text.contains("Usage:") && text.contains("--venus"),
        "{text}"
    );
    // The render server starts too (it refuses the option, after loading).
    let out = rt
        .command(&rt.render_server())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("virgl_render_server"), "{text}");
    assert!(
        !text.contains("error while loading shared libraries"),
        "{text}"
    );
}
