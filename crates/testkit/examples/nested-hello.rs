//! Boots the L1 machine once with a trivial script:
//! `cargo run -p pv-testkit --example nested-hello [-- SCRIPT]`.

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("host: {}", pv_testkit::host_virtualization());
    let script = std::env::args().nth(1).unwrap_or_else(|| {
        "echo hello-from-l1; ls -l /dev/kvm; cat /sys/module/kvm_amd/parameters/nested".into()
    });
    let start = Instant::now();
    let out = pv_testkit::NestedMachine::new()
        .binary("/bin/busybox")
        .script(script)
        .timeout(Duration::from_secs(300))
        .run()?;
    println!("{}", out.log);
    println!(
        "kvm_ready={} l1_rc={:?} qemu={:.1?} total={:.1?}",
        out.kvm_ready(),
        out.l1_rc,
        out.elapsed,
        start.elapsed()
    );
    Ok(())
}
