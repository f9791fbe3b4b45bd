//! Tier 3: a stock Debian 6.12 kernel booted by PearVisor, end to end.
//!
//! On a host with hardware virtualization each scenario's shell script runs
//! directly; otherwise it runs inside the nested-KVM machine (pv-testkit),
//! where `/dev/kvm` is a real kvm_amd on an emulated SVM CPU. The guest is
//! the default image plus the test scripts in `GUEST_TESTS`, selected with
//! `pv.test=NAME` on the guest command line; they report `KEY=VALUE` lines
//! on the serial console, and the host side of each scenario reports its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pv_image::{Compression, GpuUserspace, GuestImage, ImageBuilder};
use pv_testkit::webdriver::{http_request, Browser, BrowserOptions};
use pv_testkit::{host_virtualization, HostVirt, LiveRun, NestedMachine};

const PEARVISOR: &str = env!("CARGO_BIN_EXE_pearvisor");
const READY: &str = "PEARVISOR-GUEST-READY";

/// Guest-side scripts: /pv-tests/NAME.sh in the image.
const GUEST_TESTS: &[(&str, &str)] = &[
    (
        "info",
        r#"
echo "PV-NPROC=$(nproc)"
echo "PV-ONLINE=$(cat /sys/devices/system/cpu/online)"
echo "PV-MEMTOTAL-KB=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)"
echo "PV-HWRNG=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
echo "PV-RANDOM-HEX=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
echo "PV-PCI-VIRTIO=$(cat /sys/bus/pci/devices/*/vendor | grep -c 0x1af4)"
"#,
    ),
    (
        "disks",
        r#"
echo "PV-VDA-RO=$(cat /sys/block/vda/ro)"
echo "PV-VDA-SECTORS=$(cat /sys/block/vda/size)"
echo "PV-VDA-MD5=$(md5sum /dev/vda | cut -d' ' -f1)"
if dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; then
    echo "PV-VDA-WRITE=accepted"
else
    echo "PV-VDA-WRITE=refused"
fi
echo "PV-VDB-SERIAL=$(cat /sys/block/vdb/serial)"
printf 'PEARVISOR-WROTE-THIS' > /tmp/msg
dd if=/tmp/msg of=/dev/vdb bs=512 seek=8 conv=sync,fsync 2>/dev/null && echo "PV-VDB-WRITE=ok"
echo 3 > /proc/sys/vm/drop_caches
echo "PV-VDB-READBACK=$(dd if=/dev/vdb bs=512 skip=8 count=1 2>/dev/null | head -c 20)"
"#,
    ),
    (
        "reboot",
        r#"
if [ "$(dd if=/dev/vda bs=6 count=1 2>/dev/null)" = "BOOTED" ]; then
    echo "PV-SECOND-BOOT"
else
    printf BOOTED | dd of=/dev/vda conv=fsync 2>/dev/null
    echo "PV-FIRST-BOOT-REBOOTING"
    reboot -f
fi
"#,
    ),
    (
        "fbpattern",
        r#"
echo "PV-FB0=$(cat /sys/class/graphics/fb0/name) $(cat /sys/class/graphics/fb0/virtual_size) $(cat /sys/class/graphics/fb0/bits_per_pixel)"
[ -e /dev/dri/card0 ] && echo "PV-DRI-CARD0=yes"
echo "hello from the PearVisor guest" > /dev/tty1
sleep 1
echo "PV-TEXT-SHOWN"
# The host says go by writing "GO" at the start of the disk.
while [ "$(dd if=/dev/vda bs=2 count=1 2>/dev/null)" != "GO" ]; do
    echo 1 > /proc/sys/vm/drop_caches
    sleep 0.2
done
for b in /sys/class/vtconsole/vtcon*/bind; do echo 0 > "$b"; done
cat /pv-fb-pattern.raw > /dev/fb0
sleep 1
echo "PV-PATTERN-SHOWN"
while true; do sleep 1; done
"#,
    ),
    (
        "webinput",
        r#"
# A still screen: the test pattern with a line of text, no cursor blink.
echo 0 > /sys/class/graphics/fbcon/cursor_blink
cat /pv-fb-pattern.raw > /dev/fb0
printf 'PearVisor web viewer test\ntype here: ' > /dev/tty1
# The tablet's event device.
tab=
n=0
while [ -z "$tab" ] && [ $n -lt 50 ]; do
    for d in /sys/class/input/event*; do
        [ "$(cat "$d/device/name" 2>/dev/null)" = "PearVisor Tablet" ] && tab="/dev/input/${d##*/}"
    done
    [ -n "$tab" ] && [ -e "$tab" ] || { tab=; sleep 0.1; n=$((n + 1)); }
done
echo "PV-TABLET=$tab"
# Opened before saying ready, so nothing typed or moved from then on is lost.
exec 3</dev/tty1
exec 4<"$tab"
# Every input_event (24 bytes: timeval, type, code, value) as a line.
(
    while :; do
        set -- $(dd bs=24 count=1 <&4 2>/dev/null | od -An -v -tu2)
        [ $# -eq 12 ] || break
        echo "PV-EV type=$9 code=${10} value=$((${11} + ${12} * 65536))"
    done
) &
echo "PV-WEB-READY"
read -r line <&3
echo "PV-TYPED=$line"
# The host says goodbye with a second line.
read -r line <&3
echo "PV-TYPED-2=$line"
"#,
    ),
    (
        "ticker",
        r#"
i=0
while true; do
    i=$((i + 1))
    echo 1 > /proc/sys/vm/drop_caches
    dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=$((i % 64)) 2>/dev/null
    echo "PV-TICK $i $(cut -d' ' -f1 /proc/uptime)"
    sleep 0.5
done
"#,
    ),
];

/// Size of the framebuffer the GPU scenario uses (`--gpu width=,height=`).
const FB_WIDTH: u32 = 640;
const FB_HEIGHT: u32 = 480;

/// The colour of pixel (x, y) in the test pattern: 16x16 blocks, each a
/// different colour, so a misplaced block or channel swap shows.
fn pattern_rgb(x: u32, y: u32) -> [u8; 3] {
    let block = (x / 16) + (y / 16) * (FB_WIDTH / 16);
    [
        (block * 37 % 251) as u8,
        (block * 91 % 241) as u8,
        (block * 53 % 239) as u8,
    ]
}

/// The pattern as the guest's /dev/fb0 wants it: 32-bit XRGB little endian
/// (bytes B, G, R, X).
fn fb_pattern() -> Vec<u8> {
    let mut v = Vec::with_capacity((FB_WIDTH * FB_HEIGHT * 4) as usize);
    for y in 0..FB_HEIGHT {
        for x in 0..FB_WIDTH {
            let [r, g, b] = pattern_rgb(x, y);
            v.extend_from_slice(&[b, g, r, 0]);
        }
    }
    v
}

/// The guest command line used by every scenario (plus `pv.test=`).
const GUEST_CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1";

/// The image every scenario boots: the default image without its GPU
/// userspace (which would add 20-25 s of unpacking to each boot in the
/// nested machine; only `guest_gpu_userspace_loads_without_missing_libraries`
/// needs it and builds its own).
fn image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut b = ImageBuilder::new()
            .quiet(true)
            .gpu_userspace(GpuUserspace::None)
            .extra_file("/pv-fb-pattern.raw", fb_pattern(), 0o644);
        for (name, script) in GUEST_TESTS {
            b = b.test_script(name, *script);
        }
        b.build().expect("build the test guest image")
    })
}

/// Runs a host-side scenario script (POSIX sh, busybox-compatible) where
/// `$PV` is pearvisor, `$L2` holds `vmlinuz` and `initrd.img` (plus
/// `extra` files), and `$CMDLINE` is the guest command line. Returns the log.
fn scenario(script: &str, extra: &[(&Path, &str)]) -> String {
    let image = image();
    let prelude = format!("CMDLINE='{GUEST_CMDLINE}'\nset -u\n");
    match host_virtualization() {
        HostVirt::Hardware => {
            let dir = std::env::temp_dir().join(format!("pv-e2e-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&image.kernel, dir.join("vmlinuz")).unwrap();
            std::fs::copy(&image.initrd, dir.join("initrd.img")).unwrap();
            for (src, name) in extra {
                std::fs::copy(src, dir.join(name)).unwrap();
            }
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{prelude}{script}"))
                .env("PV", PEARVISOR)
                .env("L2", &dir)
                .current_dir(&dir)
                .output()
                .expect("run sh");
            let _ = std::fs::remove_dir_all(&dir);
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
        _ => {
            let mut m = NestedMachine::new()
                .binary(PEARVISOR)
                .guest_image(image)
                .quiet(true)
                .timeout(Duration::from_secs(480))
                .script(format!("PV=pearvisor\nL2=/l2\n{prelude}{script}"));
            for (src, name) in extra {
                m = m.file(*src, format!("/l2/{name}"));
            }
            let out = m.run().expect("run the nested machine");
            assert!(
                out.kvm_ready(),
                "the nested machine has no /dev/kvm:\n{}",
                out.tail(40)
            );
            out.log
        }
    }
}

/// The value of the first `KEY=value` line after `after` (a marker line, or "").
fn value<'a>(log: &'a str, after: &str, key: &str) -> Option<&'a str> {
    let start = if after.is_empty() {
        0
    } else {
        log.find(after)?
    };
    let prefix = format!("{key}=");
    log[start..]
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn boots_to_userspace_with_one_vcpu_and_powers_off() {
    let log = scenario(
        r#"
timeout 240 $PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=info" \
    --cpus 1 --memory 256M </dev/null
echo "PV-RC=$?"
"#,
        &[],
    );
    assert!(log.contains(READY), "no userspace marker:\n{log}");
    assert_eq!(value(&log, "", "PV-NPROC"), Some("1"), "{log}");
    let kb: u64 = value(&log, "", "PV-MEMTOTAL-KB").unwrap().parse().unwrap();
    assert!(
        (200_000..=262_144).contains(&kb),
        "MemTotal {kb} kB for 256M:\n{log}"
    );
    assert_eq!(value(&log, "", "PV-HWRNG"), Some("virtio_rng.0"), "{log}");
    let hex = value(&log, "", "PV-RANDOM-HEX").unwrap();
    assert_eq!(hex.len(), 32, "16 random bytes from virtio-rng:\n{log}");
    assert_ne!(hex, "00000000000000000000000000000000");
    assert_eq!(value(&log, "", "PV-PCI-VIRTIO"), Some("1"), "{log}");
    assert_eq!(
        value(&log, "", "PV-RC"),
        Some("0"),
        "poweroff exits 0:\n{log}"
    );
}

#[test]
fn two_vcpus_come_online_and_the_guest_sees_its_memory() {
    let log = scenario(
        r#"
timeout 240 $PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=info" \
    --cpus 2 --memory 1G --serial file=serial.log </dev/null > stdout.log
echo "PV-RC=$?"
echo "HOST-STDOUT-BYTES=$(wc -c < stdout.log)"
echo "HOST-SERIAL-FILE-BEGIN"
cat serial.log
"#,
        &[],
    );
    assert_eq!(
        value(&log, "", "HOST-STDOUT-BYTES"),
        Some("0"),
        "--serial file= keeps the terminal quiet:\n{log}"
    );
    assert_eq!(value(&log, "", "PV-RC"), Some("0"), "{log}");
    let log = &log[log.find("HOST-SERIAL-FILE-BEGIN").expect("serial file")..];
    assert!(
        log.contains(READY),
        "no userspace marker in the serial file:\n{log}"
    );
    assert_eq!(value(log, "", "PV-NPROC"), Some("2"), "{log}");
    assert_eq!(value(log, "", "PV-ONLINE"), Some("0-1"), "{log}");
    let kb: u64 = value(log, "", "PV-MEMTOTAL-KB").unwrap().parse().unwrap();
    assert!(
        (900_000..=1_048_576).contains(&kb),
        "MemTotal {kb} kB for 1G:\n{log}"
    );
}

#[test]
fn disks_read_and_write_and_readonly_is_enforced() {
    let log = scenario(
        r#"
dd if=/dev/urandom of=ro.img bs=1M count=8 2>/dev/null
dd if=/dev/zero of=rw.img bs=1M count=8 2>/dev/null
echo "HOST-RO-MD5-BEFORE=$(md5sum ro.img | cut -d' ' -f1)"
timeout 240 $PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=disks" \
    --disk path=ro.img,readonly=on --disk path=rw.img,id=pv-data-disk --no-reboot </dev/null
echo "PV-RC=$?"
echo "HOST-RO-MD5-AFTER=$(md5sum ro.img | cut -d' ' -f1)"
echo "HOST-RW-AT-4096=$(dd if=rw.img bs=512 skip=8 count=1 2>/dev/null | head -c 20)"
$PV run --kernel rw.img --no-reboot </dev/null 2>bad.err
echo "HOST-BAD-KERNEL-RC=$?"
echo "HOST-BAD-KERNEL-ERR=$(cat bad.err)"
"#,
        &[],
    );
    let before = value(&log, "", "HOST-RO-MD5-BEFORE").expect("host md5");
    assert!(log.contains(READY), "no userspace marker:\n{log}");
    assert_eq!(value(&log, "", "PV-VDA-SECTORS"), Some("16384"), "{log}");
    assert_eq!(
        value(&log, "", "PV-VDA-MD5"),
        Some(before),
        "guest reads the disk:\n{log}"
    );
    assert_eq!(value(&log, "", "PV-VDA-RO"), Some("1"), "{log}");
    assert_eq!(value(&log, "", "PV-VDA-WRITE"), Some("refused"), "{log}");
    assert_eq!(
        value(&log, "", "PV-VDB-SERIAL"),
        Some("pv-data-disk"),
        "{log}"
    );
    assert_eq!(value(&log, "", "PV-VDB-WRITE"), Some("ok"), "{log}");
    assert_eq!(
        value(&log, "", "PV-VDB-READBACK"),
        Some("PEARVISOR-WROTE-THIS"),
        "{log}"
    );
    assert_eq!(value(&log, "", "PV-RC"), Some("0"), "{log}");
    assert_eq!(
        value(&log, "", "HOST-RO-MD5-AFTER"),
        Some(before),
        "read-only disk changed"
    );
    assert_eq!(
        value(&log, "", "HOST-RW-AT-4096"),
        Some("PEARVISOR-WROTE-THIS"),
        "the guest's write must be in the file after poweroff:\n{log}"
    );
    assert_eq!(value(&log, "", "HOST-BAD-KERNEL-RC"), Some("1"), "{log}");
    assert_eq!(
        value(&log, "", "HOST-BAD-KERNEL-ERR"),
        Some("pearvisor: error: 'rw.img' is not a Linux kernel (neither a bzImage nor an ELF vmlinux)"),
        "{log}"
    );
}

#[test]
fn reboot_restarts_the_guest_or_exits_with_no_reboot() {
    let log = scenario(
        r#"
dd if=/dev/zero of=flag.img bs=1M count=1 2>/dev/null
echo "HOST-RUN-1"
timeout 240 $PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=reboot" \
    --disk path=flag.img --no-reboot </dev/null
echo "PV-RC-NO-REBOOT=$?"
dd if=/dev/zero of=flag.img bs=1M count=1 2>/dev/null
echo "HOST-RUN-2"
timeout 240 $PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=reboot" \
    --disk path=flag.img </dev/null
echo "PV-RC-REBOOT=$?"
echo "HOST-DONE"
dd if=/dev/zero of=flag.img bs=1M count=1 2>/dev/null
$PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=reboot reboot=t" \
    --disk path=flag.img --no-reboot </dev/null 2>err.txt
echo "PV-RC-TRIPLE=$?"
echo "HOST-STDERR: $(cat err.txt)"
"#,
        &[],
    );
    let run1 = &log[log.find("HOST-RUN-1").expect("run 1")..log.find("HOST-RUN-2").expect("run 2")];
    assert!(run1.contains("PV-FIRST-BOOT-REBOOTING"), "{log}");
    assert!(
        !run1.contains("PV-SECOND-BOOT"),
        "--no-reboot must not restart:\n{log}"
    );
    assert_eq!(value(&log, "", "PV-RC-NO-REBOOT"), Some("0"), "{log}");
    let run2 = &log[log.find("HOST-RUN-2").unwrap()..log.find("HOST-DONE").expect("done")];
    assert_eq!(count(run2, READY), 2, "the guest boots twice:\n{log}");
    assert!(run2.contains("PV-SECOND-BOOT"), "{log}");
    assert_eq!(
        value(&log, "HOST-RUN-2", "PV-RC-REBOOT"),
        Some("0"),
        "{log}"
    );
    // reboot=t makes Linux reboot by triple fault: a crash for the VMM.
    assert_eq!(value(&log, "", "PV-RC-TRIPLE"), Some("1"), "{log}");
    assert!(
        log.contains(
            "HOST-STDERR: pearvisor: error: the guest stopped abnormally: vcpu-0 triple-faulted"
        ),
        "{log}"
    );
}

/// Decompresses the vmlinux inside a bzImage (zstd payload, as Debian builds it).
fn extract_vmlinux(bzimage: &Path) -> PathBuf {
    let d = std::fs::read(bzimage).unwrap();
    let setup_sects = match d[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let word = |o: usize| u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]) as usize;
    let start = (setup_sects + 1) * 512 + word(0x248);
    let payload = &d[start..start + word(0x24c)];
    assert_eq!(
        &payload[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "a zstd-compressed kernel"
    );
    // The kernel appends the decompressed size after the zstd frame.
    let mut frame = &payload[..payload.len() - 4];
    let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut frame).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut dec, &mut out).unwrap();
    let path = std::env::temp_dir().join(format!("pv-vmlinux-{}", std::process::id()));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn elf_vmlinux_boots_through_pvh_from_a_json_config() {
    let vmlinux = extract_vmlinux(&image().kernel);
    let log = scenario(
        r#"
cat > vm.json <<JSON
{"kernel": "$L2/vmlinux", "initrd": "$L2/initrd.img", "cmdline": "$CMDLINE pv.test=info",
 "cpus": 2, "memory": 536870912, "serial": "tty", "reboot": false}
JSON
timeout 240 $PV run --config vm.json </dev/null
echo "PV-RC=$?"
"#,
        &[(&vmlinux, "vmlinux")],
    );
    let _ = std::fs::remove_file(&vmlinux);
    assert!(log.contains(READY), "no userspace marker:\n{log}");
    assert_eq!(value(&log, "", "PV-NPROC"), Some("2"), "{log}");
    let kb: u64 = value(&log, "", "PV-MEMTOTAL-KB").unwrap().parse().unwrap();
    assert!(
        (400_000..=524_288).contains(&kb),
        "MemTotal {kb} kB for 512M:\n{log}"
    );
    assert_eq!(value(&log, "", "PV-RC"), Some("0"), "{log}");
    let kb: u64 = value(&log, "", "PV-MEMTOTAL-KB").unwrap().parse().unwrap();
    assert!(
        (400_000..=524_288).contains(&kb),
        "MemTotal {kb} kB for 512M:\n{log}"
    );
}

/// Host-side shell helpers for scenarios that drive a running VM over the
/// API: `ticks FILE`, `waitfor FILE N` (up to 60 s), `state SOCK`,
/// `counter SOCK NAME` (first occurrence in `ctl counters`).
const API_HELPERS: &str = r#"
ticks() { grep -c '^PV-TICK' "$1"; }
waitfor() { n=0; while [ "$(ticks "$1")" -lt "$2" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done; }
state() { $PV ctl --socket "$1" info | grep '"state"' | head -1 | sed 's/.*: *"\([A-Za-z]*\)".*/\1/'; }
counter() { $PV ctl --socket "$1" counters | grep "\"$2\"" | head -1 | tr -dc 0-9; }
"#;

/// Guest uptime printed with tick `n` in `log`.
fn tick_uptime(log: &str, n: u64) -> Option<f64> {
    let prefix = format!("PV-TICK {n} ");
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|u| u.trim().parse().ok())
}

#[test]
fn api_pauses_resumes_counts_and_presses_the_power_button() {
    let log = scenario(
        &format!(
            r#"{API_HELPERS}
dd if=/dev/zero of=d.img bs=1M count=1 2>/dev/null
$PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=ticker" \
    --disk path=d.img --api-socket pv.sock </dev/null > guest.log 2>&1 &
PVPID=$!
waitfor guest.log 3
echo "HOST-STATE-1=$(state pv.sock)"
e1=$(counter pv.sock total); r1=$(counter pv.sock read_requests)
$PV ctl --socket pv.sock pause >/dev/null; echo "HOST-PAUSE-RC=$?"
t1=$(ticks guest.log); sleep 3; t2=$(ticks guest.log)
echo "HOST-PAUSED-AT-TICK=$t1"
echo "HOST-TICKS-WHILE-PAUSED=$((t2 - t1))"
echo "HOST-STATE-2=$(state pv.sock)"
$PV ctl --socket pv.sock pause 2>pause2.err; echo "HOST-PAUSE-AGAIN-RC=$?"
echo "HOST-PAUSE-AGAIN-ERR=$(cat pause2.err)"
$PV ctl --socket pv.sock resume >/dev/null; echo "HOST-RESUME-RC=$?"
waitfor guest.log $((t2 + 3))
echo "HOST-TICKS-AFTER-RESUME=$(( $(ticks guest.log) - t2 ))"
echo "HOST-STATE-3=$(state pv.sock)"
e2=$(counter pv.sock total); r2=$(counter pv.sock read_requests)
echo "HOST-EXITS-ROSE=$([ "$e2" -gt "$e1" ] && echo yes || echo "no $e1 $e2")"
echo "HOST-DISK-READS-ROSE=$([ "$r2" -gt "$r1" ] && echo yes || echo "no $r1 $r2")"
$PV ctl --socket pv.sock power-button >/dev/null; echo "HOST-BUTTON-RC=$?"
wait $PVPID; echo "HOST-PV-RC=$?"
echo "HOST-GUEST-LOG-BEGIN"
cat guest.log
"#
        ),
        &[],
    );
    assert_eq!(value(&log, "", "HOST-STATE-1"), Some("Running"), "{log}");
    assert_eq!(value(&log, "", "HOST-PAUSE-RC"), Some("0"), "{log}");
    assert_eq!(
        value(&log, "", "HOST-TICKS-WHILE-PAUSED"),
        Some("0"),
        "a paused guest prints nothing:\n{log}"
    );
    assert_eq!(value(&log, "", "HOST-STATE-2"), Some("Paused"), "{log}");
    assert_eq!(value(&log, "", "HOST-PAUSE-AGAIN-RC"), Some("1"), "{log}");
    let err = value(&log, "", "HOST-PAUSE-AGAIN-ERR").unwrap_or("");
    assert!(err.contains("409") && err.contains("Paused"), "{log}");
    assert_eq!(value(&log, "", "HOST-RESUME-RC"), Some("0"), "{log}");
    let after: u64 = value(&log, "", "HOST-TICKS-AFTER-RESUME")
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 3, "the guest continues after resume:\n{log}");
    assert_eq!(value(&log, "", "HOST-STATE-3"), Some("Running"), "{log}");
    assert_eq!(value(&log, "", "HOST-EXITS-ROSE"), Some("yes"), "{log}");
    assert_eq!(
        value(&log, "", "HOST-DISK-READS-ROSE"),
        Some("yes"),
        "{log}"
    );
    assert_eq!(value(&log, "", "HOST-BUTTON-RC"), Some("0"), "{log}");
    assert_eq!(
        value(&log, "", "HOST-PV-RC"),
        Some("0"),
        "the button powers the guest off:\n{log}"
    );
    // The guest's clock stood still while paused (3 s on the host).
    let guest = &log[log.find("HOST-GUEST-LOG-BEGIN").unwrap()..];
    let t1: u64 = value(&log, "", "HOST-PAUSED-AT-TICK")
        .unwrap()
        .parse()
        .unwrap();
    let (before, after) = (
        tick_uptime(guest, t1).unwrap(),
        tick_uptime(guest, t1 + 1).unwrap(),
    );
    assert!(
        after - before < 2.0,
        "guest uptime advanced {:.2} s across a 3 s pause:\n{log}",
        after - before
    );
    assert!(guest.contains("pv-init: power button pressed"), "{log}");
}

#[test]
fn api_shutdown_stops_a_guest_that_ignores_the_button_within_the_grace_period() {
    let log = scenario(
        &format!(
            r#"{API_HELPERS}
$PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img \
    --cmdline "$CMDLINE pv.test=ticker pv.ignore-power-button" --no-rng \
    --api-socket pv.sock --shutdown-grace 3s </dev/null > guest.log 2>&1 &
PVPID=$!
waitfor guest.log 2
echo "HOST-STATE-1=$(state pv.sock)"
s=$(date +%s)
$PV ctl --socket pv.sock shutdown >/dev/null; echo "HOST-SHUTDOWN-RC=$?"
wait $PVPID; echo "HOST-PV-RC=$?"
echo "HOST-SHUTDOWN-SECS=$(( $(date +%s) - s ))"
echo "HOST-GUEST-LOG-BEGIN"
cat guest.log
"#
        ),
        &[],
    );
    assert_eq!(value(&log, "", "HOST-STATE-1"), Some("Running"), "{log}");
    assert!(log.contains("pv-init: ignoring the power button"), "{log}");
    assert_eq!(value(&log, "", "HOST-SHUTDOWN-RC"), Some("0"), "{log}");
    assert_eq!(value(&log, "", "HOST-PV-RC"), Some("0"), "{log}");
    let secs: u64 = value(&log, "", "HOST-SHUTDOWN-SECS")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2..=15).contains(&secs),
        "shutdown took {secs} s with a 3 s grace:\n{log}"
    );
}

/// The PNG between `begin` and `end` marker lines, base64-encoded in the
/// log, as width, height and RGB bytes.
fn png_between(log: &str, begin: &str, end: &str) -> (u32, u32, Vec<u8>) {
    let start = log.find(begin).expect("begin marker") + begin.len();
    let stop = start + log[start..].find(end).expect("end marker");
    let b64: String = log[start..stop]
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/' || *c == '=')
        .collect();
    let png = base64_decode(&b64);
    // PV_E2E_SAVE_SCREENSHOTS=DIR keeps the PNGs (the README's pictures come from here).
    if let Some(dir) = std::env::var_os("PV_E2E_SAVE_SCREENSHOTS") {
        let path = std::path::Path::new(&dir).join(format!("{}.png", begin.to_lowercase()));
        if let Err(e) = std::fs::write(&path, &png) {
            eprintln!("cannot keep the screenshot {}: {e}", path.display());
        }
    }
    decode_png_rgb(&png)
}

/// A PNG's width, height and RGB bytes.
fn decode_png_rgb(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    buf.truncate(info.buffer_size());
    // Screenshots are opaque RGB; accept RGBA too, keeping RGB.
    let rgb = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgb)
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk.iter().filter(|&&c| c != b'=').count();
        let v = chunk.iter().take(n).enumerate().fold(0u32, |acc, (i, &c)| {
            acc | (u32::from(val(c)) << (18 - 6 * i))
        });
        out.extend_from_slice(&v.to_be_bytes()[1..n.max(1)]);
    }
    out
}

#[test]
fn gpu_framebuffer_comes_back_pixel_exact_in_a_screenshot() {
    let log = scenario(
        &format!(
            r#"{API_HELPERS}
dd if=/dev/zero of=flag.img bs=1M count=1 2>/dev/null
$PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=fbpattern" \
    --disk path=flag.img --gpu width={FB_WIDTH},height={FB_HEIGHT} --display headless --api-socket pv.sock \
    </dev/null > guest.log 2>&1 &
PVPID=$!
n=0; while ! grep -q PV-TEXT-SHOWN guest.log && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
$PV ctl --socket pv.sock screenshot -o text.png; echo "HOST-SHOT1-RC=$?"
echo "HOST-SHOT1-BEGIN"; base64 text.png; echo "HOST-SHOT1-END"
$PV ctl --socket pv.sock screenshot --display 1 -o none.png 2>shot.err; echo "HOST-BAD-DISPLAY-RC=$?"
echo "HOST-BAD-DISPLAY-ERR=$(cat shot.err)"
echo "HOST-GO"
printf GO | dd of=flag.img conv=notrunc 2>/dev/null
n=0; while ! grep -q PV-PATTERN-SHOWN guest.log && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
$PV ctl --socket pv.sock screenshot -o pattern.png; echo "HOST-SHOT2-RC=$?"
echo "HOST-SHOT2-BEGIN"; base64 pattern.png; echo "HOST-SHOT2-END"
echo "HOST-COUNTERS-BEGIN"; $PV ctl --socket pv.sock counters; echo "HOST-COUNTERS-END"
$PV ctl --socket pv.sock power-button >/dev/null
wait $PVPID; echo "HOST-PV-RC=$?"
echo "HOST-GUEST-LOG-BEGIN"; cat guest.log
"#
        ),
        &[],
    );
    let guest = &log[log.find("HOST-GUEST-LOG-BEGIN").expect("guest log")..];
    assert!(
        guest.contains(&format!("PV-FB0=virtio_gpudrmfb {FB_WIDTH},{FB_HEIGHT} 32")),
        "virtio_gpu binds and fbcon uses the configured mode:\n{log}"
    );
    assert_eq!(value(guest, "", "PV-DRI-CARD0"), Some("yes"), "{log}");
    assert_eq!(value(&log, "", "HOST-SHOT1-RC"), Some("0"), "{log}");
    let (w, h, text) = png_between(&log, "HOST-SHOT1-BEGIN", "HOST-SHOT1-END");
    assert_eq!((w, h), (FB_WIDTH, FB_HEIGHT));
    let lit = text.chunks(3).filter(|p| *p != [0, 0, 0]).count();
    assert!(lit > 200, "fbcon text is visible ({lit} lit pixels)");
    assert_eq!(value(&log, "", "HOST-BAD-DISPLAY-RC"), Some("1"), "{log}");
    assert!(
        value(&log, "", "HOST-BAD-DISPLAY-ERR")
            .unwrap_or("")
            .contains("display 1"),
        "{log}"
    );
    assert_eq!(value(&log, "", "HOST-SHOT2-RC"), Some("0"), "{log}");
    let (w, h, shot) = png_between(&log, "HOST-SHOT2-BEGIN", "HOST-SHOT2-END");
    assert_eq!((w, h), (FB_WIDTH, FB_HEIGHT));
    let mut wrong = 0;
    for y in 0..FB_HEIGHT {
        for x in 0..FB_WIDTH {
            let i = ((y * FB_WIDTH + x) * 3) as usize;
            if shot[i..i + 3] != pattern_rgb(x, y) {
                wrong += 1;
            }
        }
    }
    assert_eq!(
        wrong, 0,
        "{wrong} pixels differ from what the guest wrote to /dev/fb0"
    );
    let counters =
        &log[log.find("HOST-COUNTERS-BEGIN").unwrap()..log.find("HOST-COUNTERS-END").unwrap()];
    assert!(
        counters.contains("virtio-gpu"),
        "GPU counters are listed:\n{counters}"
    );
    assert_eq!(value(&log, "", "HOST-PV-RC"), Some("0"), "{log}");
}

/// The port the web viewer listens on inside the nested machine.
const L1_WEB_PORT: u16 = 8080;

/// A VM started by a host-side scenario script (as in [`scenario`]) that
/// keeps running while the test acts on it: `$WEB` in the script is the
/// address to give `--display web=`, and [`LiveVm::web`] is where the host
/// reaches it (forwarded out of the nested machine).
struct LiveVm {
    run: LiveRun,
    web: SocketAddr,
    _dir: Option<RemoveDir>,
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn live_scenario(script: &str) -> LiveVm {
    let image = image();
    let host_port = free_port();
    let web = SocketAddr::from(([127, 0, 0, 1], host_port));
    let prelude = format!("CMDLINE='{GUEST_CMDLINE}'\nset -u\n");
    match host_virtualization() {
        HostVirt::Hardware => {
            let dir = std::env::temp_dir().join(format!("pv-e2e-live-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&image.kernel, dir.join("vmlinuz")).unwrap();
            std::fs::copy(&image.initrd, dir.join("initrd.img")).unwrap();
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c")
                .arg(format!("{prelude}{script}"))
                .env("PV", PEARVISOR)
                .env("L2", &dir)
                .env("WEB", web.to_string())
                .current_dir(&dir);
            let run = LiveRun::direct(cmd, Duration::from_secs(480)).expect("start the script");
            LiveVm {
                run,
                web,
                _dir: Some(RemoveDir(dir)),
            }
        }
        _ => {
            let run = NestedMachine::new()
                .binary(PEARVISOR)
                .guest_image(image)
                .quiet(true)
                .timeout(Duration::from_secs(480))
                .forward_tcp(host_port, L1_WEB_PORT)
                .script(format!(
                    "PV=pearvisor\nL2=/l2\nWEB=0.0.0.0:{L1_WEB_PORT}\n{prelude}{script}"
                ))
                .spawn()
                .expect("start the nested machine");
            LiveVm {
                run,
                web,
                _dir: None,
            }
        }
    }
}

impl LiveVm {
    /// Waits for `needle` on the console; the console so far.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        self.run
            .wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the console satisfies `done`; the console so far.
    fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        self.run
            .wait_until(what, timeout, done)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /screenshot.png` from the viewer: width, height, RGB.
    fn screenshot(&self) -> Result<(u32, u32, Vec<u8>), String> {
        match http_request(self.web, "GET", "/screenshot.png", &[], b"") {
            Ok((200, png)) => Ok(decode_png_rgb(&png)),
            Ok((status, body)) => Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Pixels of an RGBA canvas that differ from an RGB screenshot, and the first.
fn canvas_diff(canvas: &[u8], shot: &[u8], width: u32) -> (usize, Option<(u32, u32)>) {
    let mut wrong = 0;
    let mut first = None;
    for (i, (c, s)) in canvas.chunks_exact(4).zip(shot.chunks_exact(3)).enumerate() {
        if c[..3] != *s {
            wrong += 1;
            first.get_or_insert((i as u32 % width, i as u32 / width));
        }
    }
    (wrong, first)
}

/// Waits until the page's canvas equals `GET /screenshot.png`, pixel for
/// pixel (the guest's screen is still: fbcon's cursor does not blink and
/// the guest shows no hardware cursor, so the screenshot, which composites
/// the cursor, is the bare frame the canvas holds).
fn wait_canvas_equals_screenshot(vm: &LiveVm, b: &Browser, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shot = vm.screenshot();
        let canvas = b
            .canvas_rgba("display-0", FB_WIDTH, FB_HEIGHT)
            .expect("read the canvas");
        let last = match (shot, canvas) {
            (Ok((w, h, rgb)), Some(rgba)) => {
                assert_eq!((w, h), (FB_WIDTH, FB_HEIGHT), "screenshot size");
                let (wrong, first) = canvas_diff(&rgba, &rgb, w);
                if wrong == 0 && rgba.len() == rgb.len() / 3 * 4 {
                    return;
                }
                format!("{wrong} pixels differ, the first at {first:?}")
            }
            (Err(e), _) => format!("no screenshot: {e}"),
            (_, None) => format!("no {FB_WIDTH}x{FB_HEIGHT} canvas yet"),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: the canvas never equalled the screenshot ({last})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `PV-EV type=T code=C value=V` lines the guest printed.
fn input_events(log: &str) -> Vec<(u16, u16, u32)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix("PV-EV ")?;
            let mut f = rest.split(' ').map(|kv| kv.split_once('=').map(|(_, v)| v));
            let t = f.next()??.parse().ok()?;
            let c = f.next()??.parse().ok()?;
            let v = f.next()??.parse().ok()?;
            Some((t, c, v))
        })
        .collect()
}

const EV_KEY: u16 = 1;
const EV_ABS: u16 = 3;
const ABS_X: u16 = 0;
const ABS_Y: u16 = 1;
const BTN_LEFT: u16 = 0x110;
/// The tablet's absolute range is 0..=0x7fff on both axes
/// (`pv_devices::virtio::input::TABLET_ABS_MAX`).
const ABS_SPAN: u64 = 0x8000;

/// The scanout pixel a guest desktop scales an absolute value back to.
fn abs_to_pixel(value: u32, size: u32) -> u32 {
    (u64::from(value) * u64::from(size) / ABS_SPAN) as u32
}

/// The last ABS_X and ABS_Y values in `events`.
fn last_abs(events: &[(u16, u16, u32)]) -> (Option<u32>, Option<u32>) {
    let last = |code| {
        events
            .iter()
            .rev()
            .find(|&&(t, c, _)| t == EV_ABS && c == code)
            .map(|e| e.2)
    };
    (last(ABS_X), last(ABS_Y))
}

#[test]
fn web_viewer_in_a_browser_shows_the_guest_and_types_and_points_into_it() {
    let mut vm = live_scenario(&format!(
        r#"
timeout 400 $PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img --cmdline "$CMDLINE pv.test=webinput" \
    --gpu width={FB_WIDTH},height={FB_HEIGHT} --display web=$WEB </dev/null
echo "PV-RC=$?"
"#
    ));
    let log = vm.wait_for("PV-WEB-READY", Duration::from_secs(300));
    // Input takes a second or two to arrive in the nested machine.
    let wait = Duration::from_secs(60);
    assert!(
        value(&log, "", "PV-TABLET").is_some_and(|t| t.starts_with("/dev/input/event")),
        "the guest found no PearVisor Tablet event device:\n{log}"
    );

    // (a) The page draws what the guest shows: canvas = screenshot.
    // Large enough that the fit-to-window page shows the screen unscaled.
    let b = Browser::start_with(&BrowserOptions {
        window: (1024, 900),
    })
    .expect("start headless Chromium");
    b.navigate(&format!("http://{}/", vm.web)).unwrap();
    wait_canvas_equals_screenshot(&vm, &b, "the guest's screen");
    let (_, _, shot) = vm.screenshot().unwrap();
    let pattern_pixels = (0..FB_HEIGHT)
        .flat_map(|y| (0..FB_WIDTH).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let i = ((y * FB_WIDTH + x) * 3) as usize;
            shot[i..i + 3] == pattern_rgb(x, y)
        })
        .count();
    assert!(
        pattern_pixels > (FB_WIDTH * FB_HEIGHT / 2) as usize,
        "the screen shows the guest's pattern ({pattern_pixels} pixels of it)"
    );
    let [left, top, width, height] = b.rect_of("#display-0").unwrap();
    assert_eq!(
        (width, height),
        (f64::from(FB_WIDTH), f64::from(FB_HEIGHT)),
        "the canvas is not scaled in a 1024x900 window"
    );

    // (c) The mouse: a click (which also focuses the canvas), then a move
    // to a known pixel; the guest reads them from the tablet's evdev node.
    let canvas = b.element("#display-0").unwrap();
    b.click(&canvas).unwrap();
    let log = vm.wait_until("the click on the tablet", wait, |log| {
        let ev = input_events(log);
        ev.contains(&(EV_KEY, BTN_LEFT, 1)) && ev.contains(&(EV_KEY, BTN_LEFT, 0))
    });
    let (x, y) = last_abs(&input_events(&log));
    let (x, y) = (
        x.expect("ABS_X of the click"),
        y.expect("ABS_Y of the click"),
    );
    assert!(
        abs_to_pixel(x, FB_WIDTH).abs_diff(FB_WIDTH / 2) <= 1
            && abs_to_pixel(y, FB_HEIGHT).abs_diff(FB_HEIGHT / 2) <= 1,
        "the click at the canvas' centre ({}, {}) reached the tablet at ABS ({x}, {y}), pixel ({}, {})",
        FB_WIDTH / 2,
        FB_HEIGHT / 2,
        abs_to_pixel(x, FB_WIDTH),
        abs_to_pixel(y, FB_HEIGHT)
    );
    let (px, py) = (123u32, 45u32);
    let seen = input_events(&log).len();
    b.mouse_to(
        (left + f64::from(px)).ceil() as i64,
        (top + f64::from(py)).ceil() as i64,
    )
    .unwrap();
    let log = vm.wait_until("the mouse move on the tablet", wait, |log| {
        let ev = input_events(log);
        let (x, y) = last_abs(&ev[seen.min(ev.len())..]);
        x.zip(y).is_some_and(|(x, y)| {
            abs_to_pixel(x, FB_WIDTH).abs_diff(px) <= 1
                && abs_to_pixel(y, FB_HEIGHT).abs_diff(py) <= 1
        })
    });
    let ev = input_events(&log);
    let (x, y) = last_abs(&ev[seen..]);
    eprintln!(
        "mouse at canvas pixel ({px}, {py}) -> ABS ({}, {}) -> pixel ({}, {})",
        x.unwrap(),
        y.unwrap(),
        abs_to_pixel(x.unwrap(), FB_WIDTH),
        abs_to_pixel(y.unwrap(), FB_HEIGHT)
    );
    assert!(
        ev.iter()
            .all(|&(t, c, v)| t != EV_ABS || (c <= ABS_Y && v <= 0x7fff)),
        "only ABS_X/ABS_Y within 0..=0x7fff: {ev:?}"
    );

    // (b) Keys typed in the page reach the guest's console (tty1), through
    // the virtio keyboard and the guest's own keymap.
    let typed = "Hello PV 42!";
    b.type_keys(&format!("{typed}\u{E006}")).unwrap();
    // The whole line: the serial console may have delivered only part of it.
    let log = vm.wait_until("the typed line on the console", wait, |log| {
        log.find("PV-TYPED=")
            .is_some_and(|at| log[at..].contains('\n'))
    });
    assert_eq!(
        value(&log, "", "PV-TYPED"),
        Some(typed),
        "what the guest read from /dev/tty1"
    );
    // The echo of the typed line changed the screen; the page follows.
    wait_canvas_equals_screenshot(&vm, &b, "after typing");
    let (_, _, after) = vm.screenshot().unwrap();
    assert_ne!(after, shot, "the typed text shows on the guest's screen");

    b.type_keys("bye\u{E006}").unwrap();
    drop(b);
    let out = vm.run.finish().expect("the machine finishes");
    assert_eq!(
        value(&out.log, "", "PV-TYPED-2"),
        Some("bye"),
        "{}",
        out.tail(40)
    );
    assert_eq!(
        value(&out.log, "", "PV-RC"),
        Some("0"),
        "pearvisor exits 0 after the guest powers off:\n{}",
        out.tail(40)
    );
}

/// The guest side of the GPU userspace (pv-image `GpuUserspace::Full`):
/// the files are there, the loader resolves every library of the programs
/// and drivers, and vulkaninfo and eglinfo run. Without a 3D device the
/// Venus driver finds no GPU, so vulkaninfo ends in an enumeration error;
/// eglinfo falls back to llvmpipe.
const GPU_USERSPACE_CHECK: &str = r#"
L=/lib64/ld-linux-x86-64.so.2
LIB=/usr/lib/x86_64-linux-gnu
for f in /usr/share/vulkan/icd.d/virtio_icd.json $LIB/libvulkan_virtio.so $LIB/libvulkan.so.1 \
    /usr/bin/vulkaninfo /usr/bin/vkcube /usr/bin/eglinfo /usr/bin/kmscube \
    /usr/share/glvnd/egl_vendor.d/50_mesa.json; do
    [ -s "$f" ] && echo "PV-HAS=$f"
done
echo "PV-ICDS=$(ls /usr/share/vulkan/icd.d | tr '\n' ' ')"
for f in /usr/bin/vulkaninfo /usr/bin/vkcube /usr/bin/eglinfo /usr/bin/kmscube \
    $LIB/libvulkan_virtio.so $LIB/libvulkan.so.1 $LIB/libEGL_mesa.so.0 $LIB/gbm/dri_gbm.so $LIB/libgallium-*.so; do
    $L --list "$f" > /tmp/list.txt 2>&1
    echo "PV-LIST $f rc=$? missing=$(grep -c 'not found' /tmp/list.txt)"
done
VK_LOADER_DEBUG=driver vulkaninfo --summary > /tmp/vk.txt 2>&1
echo "PV-VULKANINFO-RC=$?"
echo "PV-VK-BEGIN"; head -c 6000 /tmp/vk.txt; echo; echo "PV-VK-END"
grep -i virtio /proc/interrupts
echo PV-TRACE-BEGIN; grep -v 'TRANSFER_TO_HOST_2D\|RESOURCE_FLUSH' /sys/kernel/tracing/trace | tail -n 40; echo PV-TRACE-END
eglinfo -B -p surfaceless > /tmp/egl.txt 2>&1
echo "PV-EGLINFO-RC=$?"
echo "PV-EGL-BEGIN"; head -c 3000 /tmp/egl.txt; echo; echo "PV-EGL-END"
"#;

fn gpu_userspace_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        ImageBuilder::new()
            .quiet(true)
            .gpu_userspace(GpuUserspace::Full)
            // Uncompressed: inflating ~75 MB on the nested machine's emulated
            // CPU costs more than carrying ~220 MB (a memory copy).
            .compression(Compression::None)
            .test_script("gpu-userspace", GPU_USERSPACE_CHECK)
            .build()
            .expect("build the guest image with the GPU userspace")
    })
}

#[test]
fn guest_gpu_userspace_loads_without_missing_libraries() {
    let gpu_image = gpu_userspace_image();
    assert_eq!(
        gpu_image.kernel,
        image().kernel,
        "one kernel for both images"
    );
    let log = scenario(
        r#"
timeout 400 $PV run --kernel $L2/vmlinuz --initrd $L2/gpu-initrd.img \
    --cmdline "$CMDLINE pv.test=gpu-userspace" --memory 1G --gpu </dev/null
echo "PV-RC=$?"
"#,
        &[(&gpu_image.initrd, "gpu-initrd.img")],
    );
    assert!(log.contains(READY), "no userspace marker:\n{log}");
    for f in [
        "/usr/share/vulkan/icd.d/virtio_icd.json",
        "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/bin/vulkaninfo",
        "/usr/bin/vkcube",
        "/usr/bin/eglinfo",
        "/usr/bin/kmscube",
        "/usr/share/glvnd/egl_vendor.d/50_mesa.json",
    ] {
        assert!(
            log.lines().any(|l| l.trim_end() == format!("PV-HAS={f}")),
            "{f} is missing in the guest:\n{log}"
        );
    }
    assert_eq!(
        value(&log, "", "PV-ICDS"),
        Some("virtio_icd.json"),
        "only the Venus driver:\n{log}"
    );
    let lists: Vec<&str> = log.lines().filter(|l| l.starts_with("PV-LIST ")).collect();
    assert_eq!(lists.len(), 9, "{log}");
    for l in &lists {
        assert!(
            l.trim_end().ends_with("rc=0 missing=0"),
            "the guest's loader cannot resolve everything: {l}\n{log}"
        );
    }
    let between = |begin: &str, end: &str| -> String {
        let start = log.find(begin).map(|i| i + begin.len()).unwrap_or(0);
        let stop = log[start..].find(end).map_or(log.len(), |i| start + i);
        log[start..stop].to_string()
    };
    let vk = between("PV-VK-BEGIN", "PV-VK-END");
    assert!(value(&log, "", "PV-VULKANINFO-RC").is_some(), "{log}");
    for bad in [
        "error while loading shared libraries",
        "cannot open shared object file",
        "Failed loading",
    ] {
        assert!(!vk.contains(bad), "vulkaninfo: {bad}:\n{vk}");
    }
    assert!(
        vk.contains("Found ICD manifest file /usr/share/vulkan/icd.d/virtio_icd.json"),
        "the loader found the Venus ICD:\n{vk}"
    );
    // Either Venus found a device (a 3D-capable GPU) or enumeration failed
    // after the driver loaded; both mean vulkaninfo ran to the devices.
    assert!(
        vk.contains("GPU0") || vk.contains("vkEnumeratePhysicalDevices"),
        "vulkaninfo did not get to the devices:\n{vk}"
    );
    let egl = between("PV-EGL-BEGIN", "PV-EGL-END");
    assert_eq!(value(&log, "", "PV-EGLINFO-RC"), Some("0"), "{egl}");
    assert!(
        egl.contains("EGL vendor string: Mesa Project")
            && egl.contains("OpenGL core profile renderer:"),
        "eglinfo:\n{egl}"
    );
    assert_eq!(value(&log, "", "PV-RC"), Some("0"), "{log}");
}

/// The guest side of GPU acceleration (`--gpu context-types=venus:virgl`):
/// vulkaninfo sees Venus, pv-vkcheck's Vulkan workload (transfers and a
/// compute shader through Venus) and GL workload (EGL surfaceless through
/// virgl) come back right, eglinfo names virgl; then pv-vkcheck draws with
/// GL into a GBM surface and puts it on the display with KMS.
const GPU_ACCEL_CHECK: &str = r#"
echo "PV-RENDER-NODE=$(ls /dev/dri | tr '\n' ' ')"
/lib64/ld-linux-x86-64.so.2 --list /usr/bin/pv-vkcheck > /tmp/list.txt 2>&1
echo "PV-LIST pv-vkcheck rc=$? missing=$(grep -c 'not found' /tmp/list.txt)"
VN_DEBUG=init vulkaninfo --summary > /tmp/vk.txt 2>&1
echo "PV-VULKANINFO-RC=$?"
echo "PV-VK-BEGIN"; head -c 6000 /tmp/vk.txt; echo; echo "PV-VK-END"
pv-vkcheck
echo "PV-VKCHECK-RC=$?"
eglinfo -B -p surfaceless > /tmp/egl.txt 2>&1
echo "PV-EGLINFO-RC=$?"
echo "PV-EGL-BEGIN"; head -c 3000 /tmp/egl.txt; echo; echo "PV-EGL-END"
pv-vkcheck --gl
echo "PV-GLCHECK-RC=$?"
# The host takes a screenshot while each picture is up.
pv-vkcheck --scanout --hold 8
echo "PV-SCANOUT-RC=$?"
pv-vkcheck --vk-scanout --hold 8
echo "PV-VKSCANOUT-RC=$?"
# A real GL program: kmscube draws a spinning cube with GLES (virgl) into
# GBM buffers and page-flips them with KMS: 20 frames, then once more
# until stopped after 10 s while the host takes a screenshot.
kmscube -c 20 > /tmp/kmscube.txt 2>&1
echo "PV-KMSCUBE-RC=$?"
echo "PV-KMSCUBE-START"
timeout 10 kmscube > /dev/null 2>&1
echo "PV-KMSCUBE-BEGIN"; tail -c 2000 /tmp/kmscube.txt; echo; echo "PV-KMSCUBE-END"
echo "PV-DMESG-BEGIN"; dmesg | grep -i -E 'virtio|drm|gpu' | tail -n 20; echo "PV-DMESG-END"
"#;

/// Where pv-vkcheck goes in the guest image.
const VKCHECK_GUEST: &str = "/usr/bin/pv-vkcheck";

/// A binary of the workspace (built by `cargo build --workspace --bins`,
/// as scripts/test.sh does), next to pearvisor; built when missing.
fn workspace_bin(name: &str) -> PathBuf {
    let path = Path::new(PEARVISOR).with_file_name(name);
    if !path.exists() {
        let release = Path::new(PEARVISOR)
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "release");
        let mut cmd = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.args(["build", "-p", "pv-testkit", "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

fn gpu_accel_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let vkcheck = std::fs::read(workspace_bin("pv-vkcheck")).expect("read pv-vkcheck");
        ImageBuilder::new()
            .quiet(true)
            .gpu_userspace(GpuUserspace::Full)
            .compression(Compression::None)
            .extra_file(VKCHECK_GUEST, vkcheck, 0o755)
            .test_script("gpu-accel", GPU_ACCEL_CHECK)
            .build()
            .expect("build the guest image with the GPU userspace and pv-vkcheck")
    })
}

/// The host GPU runtime (scripts/test.sh builds it; built here if not).
fn gpu_runtime() -> pv_image::GpuRuntime {
    pv_image::cached_gpu_runtime(None).unwrap_or_else(|| {
        pv_image::build_gpu_runtime(pv_image::GpuRuntimeOptions {
            quiet: true,
            ..Default::default()
        })
        .expect("build the GPU runtime (pearvisor gpu-runtime build)")
    })
}

/// Where the GPU runtime goes in the nested machine.
const L1_GPU_RUNTIME: &str = "/opt/gpu-runtime";

/// Like [`scenario`], for the GPU acceleration image: the nested machine
/// also carries the GPU runtime (its virglrenderer, Mesa and their C
/// library; L1 has none of them) and `$PEARVISOR_GPU_RUNTIME` points
/// pearvisor at it; `$RT` is the runtime. The script runs in a scratch
/// directory. Returns the log.
fn gpu_scenario(script: &str) -> String {
    let image = gpu_accel_image();
    let rt = gpu_runtime();
    let prelude = format!("CMDLINE='{GUEST_CMDLINE}'\nset -u\n");
    match host_virtualization() {
        HostVirt::Hardware => {
            let dir = std::env::temp_dir().join(format!("pv-e2e-gpu-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{prelude}{script}"))
                .env("PV", PEARVISOR)
                .env("L2_KERNEL", &image.kernel)
                .env("L2_INITRD", &image.initrd)
                .env("RT", &rt.root)
                .env("PEARVISOR_GPU_RUNTIME", &rt.root)
                .current_dir(&dir)
                .output()
                .expect("run sh");
            let _ = std::fs::remove_dir_all(&dir);
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
        _ => {
            let out = NestedMachine::new()
                .binary(PEARVISOR)
                .file(&image.kernel, "/l2/vmlinuz")
                .file(&image.initrd, "/l2/gpu-initrd.img")
                .dir(&rt.root, L1_GPU_RUNTIME)
                // The initramfs (about 520 MB: the runtime and the guest
                // image) stays in L1's memory beside the 1G guest.
                .memory("4G")
                .quiet(true)
                .timeout(Duration::from_secs(600))
                .script(format!(
                    "PV=pearvisor\nL2_KERNEL=/l2/vmlinuz\nL2_INITRD=/l2/gpu-initrd.img\n\
                     RT={L1_GPU_RUNTIME}\nexport PEARVISOR_GPU_RUNTIME={L1_GPU_RUNTIME}\n\
                     {prelude}{script}"
                ))
                .run()
                .expect("run the nested machine");
            assert!(
                out.kvm_ready(),
                "the nested machine has no /dev/kvm:\n{}",
                out.tail(40)
            );
            eprintln!("nested machine: {:.1?}", out.elapsed);
            out.log
        }
    }
}

fn between(log: &str, begin: &str, end: &str) -> String {
    let start = log.find(begin).map(|i| i + begin.len()).unwrap_or(0);
    let stop = log[start..].find(end).map_or(log.len(), |i| start + i);
    log[start..stop].to_string()
}

/// GPU acceleration end to end: a guest with the default image's GPU
/// userspace and pv-vkcheck boots with `--gpu context-types=venus:virgl`
/// in the nested machine, where pearvisor runs under the GPU runtime
/// (virglrenderer 1.3, lavapipe and llvmpipe). Vulkan through Venus and GL
/// through virgl both compute checked results (see GPU_ACCEL_CHECK).
#[test]
fn guest_vulkan_through_venus_and_gl_through_virgl() {
    let log = gpu_scenario(
        r#"
timeout 500 $PV run --kernel $L2_KERNEL --initrd $L2_INITRD \
    --cmdline "$CMDLINE pv.test=gpu-accel" --memory 1G --gpu context-types=venus:virgl \
    --api-socket pv.sock </dev/null > guest.log 2>&1 &
PVPID=$!
# Waits (up to 300 s, while pearvisor runs) for a line the guest prints.
wait_for() {
    n=0
    while ! grep -q "$1" guest.log && kill -0 $PVPID 2>/dev/null && [ $n -lt 3000 ]; do
        sleep 0.1; n=$((n + 1))
    done
}
wait_for PV-SCANOUT=
sleep 1
$PV ctl --socket pv.sock screenshot -o scanout.png; echo "HOST-SHOT-RC=$?"
echo "HOST-SHOT-BEGIN"; base64 scanout.png; echo "HOST-SHOT-END"
wait_for PV-VKSCANOUT=
sleep 1
$PV ctl --socket pv.sock screenshot -o vkscanout.png; echo "HOST-VKSHOT-RC=$?"
echo "HOST-VKSHOT-BEGIN"; base64 vkscanout.png; echo "HOST-VKSHOT-END"
wait_for PV-KMSCUBE-START
$PV ctl --socket pv.sock counters > counters.json; echo "HOST-COUNTERS-RC=$?"
sleep 3
$PV ctl --socket pv.sock screenshot -o cube.png; echo "HOST-CUBESHOT-RC=$?"
echo "HOST-CUBESHOT-BEGIN"; base64 cube.png; echo "HOST-CUBESHOT-END"
echo "HOST-COUNTERS-BEGIN"; cat counters.json; echo; echo "HOST-COUNTERS-END"
wait $PVPID; echo "PV-RC=$?"
echo "HOST-GUEST-LOG-BEGIN"; cat guest.log; echo "HOST-GUEST-LOG-END"
"#,
    );
    // L1 has no virglrenderer; a host with hardware virtualization may.
    assert!(
        log.contains("running under the GPU runtime")
            || matches!(host_virtualization(), HostVirt::Hardware),
        "pearvisor re-executes itself under the runtime:\n{log}"
    );
    if !matches!(host_virtualization(), HostVirt::Hardware) {
        assert!(
            log.contains(&format!(
                "running under the GPU runtime at {L1_GPU_RUNTIME} (virglrenderer 1."
            )),
            "pearvisor names the runtime's virglrenderer:\n{log}"
        );
    }
    assert!(log.contains(READY), "no userspace marker:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.trim_end() == "PV-LIST pv-vkcheck rc=0 missing=0"),
        "the guest's loader resolves pv-vkcheck:\n{log}"
    );
    let vk = between(&log, "PV-VK-BEGIN", "PV-VK-END");
    assert_eq!(
        value(&log, "", "PV-VULKANINFO-RC"),
        Some("0"),
        "{vk}\n{log}"
    );
    assert!(
        vk.lines()
            .any(|l| l.contains("deviceName") && l.contains("Virtio-GPU Venus (llvmpipe")),
        "vulkaninfo shows the Venus device on the host's lavapipe:\n{vk}"
    );
    let device = value(&log, "", "PV-VK-DEVICE").unwrap_or_default();
    assert!(
        device.starts_with("Virtio-GPU Venus (llvmpipe"),
        "pv-vkcheck's device: {device}\n{log}"
    );
    assert_eq!(value(&log, "", "PV-VK-TRANSFER"), Some("PASS"), "{log}");
    assert_eq!(value(&log, "", "PV-VK-COMPUTE"), Some("PASS"), "{log}");
    assert_eq!(value(&log, "", "PV-VKCHECK-RC"), Some("0"), "{log}");
    let egl = between(&log, "PV-EGL-BEGIN", "PV-EGL-END");
    assert_eq!(value(&log, "", "PV-EGLINFO-RC"), Some("0"), "{egl}");
    assert!(
        egl.lines()
            .any(|l| l.contains("renderer:") && l.contains("virgl")),
        "eglinfo names virgl as the renderer:\n{egl}"
    );
    let renderer = value(&log, "", "PV-GL-RENDERER").unwrap_or_default();
    assert!(renderer.contains("virgl"), "GL renderer {renderer}\n{log}");
    assert_eq!(value(&log, "", "PV-GL-CHECK"), Some("PASS"), "{log}");
    assert_eq!(value(&log, "", "PV-GLCHECK-RC"), Some("0"), "{log}");

    // The scanout: GL into a GBM buffer, on the CRTC through KMS; the
    // host's screenshot must show the picture the guest checked.
    let (w, h, shot) = scanout_screenshot(&log, "PV-SCANOUT", "HOST-SHOT");
    let wrong = |flip: bool| {
        let mut n = 0;
        let mut first = None;
        for y in 0..h {
            for x in 0..w {
                // GL counts rows from the bottom; the screen from the top.
                let gl_y = if flip { y } else { h - 1 - y };
                let want = scanout_pixel(x, gl_y, w);
                let i = ((y * w + x) * 3) as usize;
                let got = &shot[i..i + 3];
                if got.iter().zip(want).any(|(&g, w)| g.abs_diff(w) > 1) {
                    n += 1;
                    first.get_or_insert((x, y, got.to_vec(), want));
                }
            }
        }
        (n, first)
    };
    let (bad, first) = wrong(false);
    assert_eq!(
        bad,
        0,
        "{bad} of {} screenshot pixels differ from the guest's GL picture \
         (first: {first:?}; upside down, {} would differ)",
        w * h,
        wrong(true).0
    );
    assert_eq!(value(&log, "", "PV-SCANOUT-RC"), Some("0"), "{log}");

    // Vulkan's picture through a dma-buf on the CRTC: a blob resource shown
    // with SET_SCANOUT_BLOB, read by the host from the blob's mapping.
    let (w, h, shot) = scanout_screenshot(&log, "PV-VKSCANOUT", "HOST-VKSHOT");
    let mut bad = 0;
    let mut first = None;
    for y in 0..h {
        for x in 0..w {
            let want = vk_scanout_pixel(x, y, w, h);
            let i = ((y * w + x) * 3) as usize;
            if shot[i..i + 3] != want {
                bad += 1;
                first.get_or_insert((x, y, shot[i..i + 3].to_vec(), want));
            }
        }
    }
    assert_eq!(
        bad,
        0,
        "{bad} of {} screenshot pixels differ from the guest's Vulkan picture (first: {first:?})\n{}",
        w * h,
        without_screenshots(&log)
    );
    assert_eq!(value(&log, "", "PV-VKSCANOUT-RC"), Some("0"), "{log}");

    // kmscube: 20 frames drawn through virgl and page-flipped on the CRTC
    // (it counts those after the first, which it only shows).
    let kms = between(&log, "PV-KMSCUBE-BEGIN", "PV-KMSCUBE-END");
    assert_eq!(value(&log, "", "PV-KMSCUBE-RC"), Some("0"), "{kms}");
    let rendered = kms
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Rendered "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
        .max();
    assert_eq!(rendered, Some(19), "kmscube shows its frames:\n{kms}");
    // Its spinning cube on the host's screenshot: shaded faces (many
    // colours) over a one-colour background, covering part of the screen.
    assert_eq!(value(&log, "", "HOST-CUBESHOT-RC"), Some("0"), "{log}");
    let (_, _, cube) = png_between(&log, "HOST-CUBESHOT-BEGIN", "HOST-CUBESHOT-END");
    let mut counts: std::collections::HashMap<&[u8], usize> = Default::default();
    for p in cube.chunks(3) {
        *counts.entry(p).or_default() += 1;
    }
    let total = cube.len() / 3;
    let background = counts.values().copied().max().unwrap_or(0);
    let cube_share = 1.0 - background as f64 / total as f64;
    assert!(
        counts.len() > 1000 && (0.05..0.9).contains(&cube_share),
        "kmscube's cube on the screenshot: {} colours, {:.1}% off the background\n{kms}",
        counts.len(),
        cube_share * 100.0
    );

    // The sync file waited on a fence of the Venus context's ring: the
    // device signalled fences on context timelines, and blob scanouts.
    assert_eq!(value(&log, "", "PV-VK-SYNCFD"), Some("PASS"), "{log}");
    assert_eq!(value(&log, "", "HOST-COUNTERS-RC"), Some("0"), "{log}");
    let counters: serde_json::Value =
        serde_json::from_str(between(&log, "HOST-COUNTERS-BEGIN", "HOST-COUNTERS-END").trim())
            .expect("ctl counters prints JSON");
    let gpu = find_key(&counters, "fences_context").expect("GPU counters in ctl counters");
    assert!(gpu.as_u64().unwrap_or(0) > 0, "context fences: {counters}");
    // GL's fences (virgl) went on the device timeline, counted by name.
    let device_fences = find_key(&counters, "fence_timelines")
        .and_then(|t| t["device"]["fences"].as_u64())
        .unwrap_or(0);
    assert!(device_fences > 0, "device timeline fences: {counters}");
    assert_eq!(value(&log, "", "PV-RC"), Some("0"), "{log}");
}

/// A picture the guest checked (`{guest}-DRAW=PASS`) and put on the display
/// (`{guest}=SHOWN`, in mode `{guest}-MODE`), as the host's screenshot
/// between `{host}-BEGIN` and `{host}-END` has it: width, height, RGB.
fn scanout_screenshot(log: &str, guest: &str, host: &str) -> (u32, u32, Vec<u8>) {
    assert_eq!(
        value(log, "", &format!("{guest}-DRAW")),
        Some("PASS"),
        "{log}"
    );
    assert_eq!(value(log, "", guest), Some("SHOWN"), "{log}");
    assert_eq!(value(log, "", &format!("{host}-RC")), Some("0"), "{log}");
    let (w, h, shot) = png_between(log, &format!("{host}-BEGIN"), &format!("{host}-END"));
    assert_eq!(
        value(log, "", &format!("{guest}-MODE")),
        Some(format!("{w}x{h}").as_str()),
        "the screenshot has the mode the guest set"
    );
    (w, h, shot)
}

/// The log without the base64 of the screenshots (for failure messages).
fn without_screenshots(log: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in log.lines() {
        if line.contains("SHOT-BEGIN") {
            skipping = true;
        } else if line.contains("SHOT-END") {
            skipping = false;
            out.push_str("[screenshot]\n");
        } else if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The first value named `key` anywhere in `v`.
fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|c| find_key(c, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|c| find_key(c, key)),
        _ => None,
    }
}

/// What pv-vkcheck's Vulkan picture has at (x, y) of a `width` x `height`
/// screen (its `vkscanout::expected_pixel`): 4x4 tiles blitted with
/// nearest filtering, tile (tx, ty) coloured (80tx+15, 80ty+15,
/// 255-30(tx+ty)).
fn vk_scanout_pixel(x: u32, y: u32, width: u32, height: u32) -> [u8; 3] {
    let tx = ((2 * x + 1) * 4 / (2 * width)).min(3);
    let ty = ((2 * y + 1) * 4 / (2 * height)).min(3);
    [
        (tx * 80 + 15) as u8,
        (ty * 80 + 15) as u8,
        (255 - (tx + ty) * 30) as u8,
    ]
}

/// What pv-vkcheck's GL picture has at (x, y), y counted from the bottom
/// (its `expected_pixel`, as RGB): a blue-grey background, a red 16x16
/// corner at the origin, and over the right half each pixel's coordinates.
fn scanout_pixel(x: u32, y: u32, width: u32) -> [u8; 3] {
    if x >= width / 2 {
        [x.min(255) as u8, y.min(255) as u8, 255]
    } else if x < 16 && y < 16 {
        [255, 0, 0]
    } else {
        [51, 102, 153]
    }
}
