//! Proves the whole chain without PearVisor: builds the guest image with a `pv.test=hello`
//! script, boots L1, and in L1 boots that image as L2 with the host's QEMU on L1's /dev/kvm.
//! `cargo run -p pv-testkit --example nested-l2-qemu`

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut builder = pv_image::ImageBuilder::new()
        .gpu_userspace(pv_image::GpuUserspace::None)
        .test_script(
        "hello",
        "echo hello-from-l2 at $(cut -d' ' -f1 /proc/uptime); uname -r; hostname; lsmod | wc -l\n",
    );
    // PV_EXAMPLE_MODULES="" (none) or a space-separated list; PV_EXAMPLE_PLAIN=1: no gzip.
    if let Ok(list) = std::env::var("PV_EXAMPLE_MODULES") {
        builder = builder.modules(
            list.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
    }
    if std::env::var_os("PV_EXAMPLE_PLAIN").is_some() {
        builder = builder.compression(pv_image::Compression::None);
    }
    let image = builder.build()?;
    let image_time = start.elapsed();
    let script = "\
t0=$(cut -d' ' -f1 /proc/uptime)
qemu-system-x86_64 -M microvm -bios /usr/share/qemu/qboot.rom -accel kvm -cpu host -smp 1 -m 512M -nodefaults -no-user-config \
  -display none -serial stdio -no-reboot -kernel /l2/vmlinuz -initrd /l2/initrd.img \
  -append 'console=ttyS0 quiet loglevel=1 pv.test=hello' </dev/null
rc=$?
echo \"L2 took $t0 .. $(cut -d' ' -f1 /proc/uptime) s of L1 uptime\"
exit $rc
";
    let out = pv_testkit::NestedMachine::new()
        .binary(which("qemu-system-x86_64").ok_or("qemu-system-x86_64 not on PATH")?)
        .dir("/usr/share/qemu", "/usr/share/qemu")
        .guest_image(&image)
        .script(script)
        .timeout(Duration::from_secs(300))
        .run()?;
    println!("{}", out.log);
    println!(
        "image={:.1?} l1_rc={:?} qemu={:.1?} total={:.1?} l2_ok={}",
        image_time,
        out.l1_rc,
        out.elapsed,
        start.elapsed(),
        out.log.contains("PV-TEST-EXIT rc=0")
    );
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
