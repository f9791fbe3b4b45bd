//! Disk durability under SIGKILL (issue 6), with the bare-metal test guest
//! (`mode=durable`, crates/testkit/guests/baremetal/modes/durable.c) on the
//! host's /dev/kvm (kvm_pvm is enough).
//!
//! The guest writes sector records (magic, sector, sequence number, a fill
//! derived from the sequence) round robin, flushes, and prints
//! `DURABLE ACK <seq>` once the device answered the flush. The test kills
//! the VMM with SIGKILL at a random moment and reads the host file: for
//! every sector, the newest write acknowledged as flushed (or a newer one)
//! must be there, whole. A read-only disk attached beside it must come out
//! byte for byte unchanged.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PEARVISOR: &str = env!("CARGO_BIN_EXE_pearvisor");
const SECTOR: usize = 512;
const SECTORS: u64 = 64;
const RECORD_MAGIC: u32 = 0x5244_5650;
const TRIALS: u32 = 100;

fn guest(dir: &Path) -> PathBuf {
    pv_testkit::baremetal::build(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// A small xorshift generator: random kill moments, reproducible per seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn sha256(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(path).unwrap());
    h.finalize().to_vec()
}

/// What a sector holds: a record the guest wrote, the host's initial
/// zeroes, or something else (a torn or foreign write).
#[derive(Debug, PartialEq)]
enum Sector {
    Record(u64),
    Zero,
    Garbage,
}

fn parse_sector(bytes: &[u8], index: u64) -> Sector {
    if bytes.iter().all(|&b| b == 0) {
        return Sector::Zero;
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let sector = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let fill_ok = bytes[16..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (seq.wrapping_mul(31).wrapping_add(i as u64)) as u8);
    if magic == RECORD_MAGIC && u64::from(sector) == index && fill_ok {
        Sector::Record(seq)
    } else {
        Sector::Garbage
    }
}

fn boot(dir: &Path, elf: &Path, disk: &Path, ro: &Path, serial: &Path) -> Child {
    Command::new(PEARVISOR)
        .args(["run", "--skip-host-check", "--kernel"])
        .arg(elf)
        .args(["--cmdline", &format!("mode=durable sectors={SECTORS}")])
        .args(["--memory", "64M", "--no-rng"])
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .arg("--disk")
        .arg(format!("path={},readonly=on", ro.display()))
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pearvisor")
}

/// The last `DURABLE ACK n` on the console, and whether the guest said
/// anything else alarming.
fn last_ack(console: &str) -> Option<u64> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("DURABLE ACK "))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

#[test]
fn acknowledged_flushes_survive_sigkill_and_read_only_disks_are_untouched() {
    pv_testkit::baremetal::require_kvm();
    let dir = pv_testkit::baremetal::scratch_dir("durability");
    let elf = guest(&dir);
    let disk = dir.join("disk.img");
    let ro = dir.join("ro.img");
    let ro_bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&ro, &ro_bytes).unwrap();
    let ro_sum = sha256(&ro);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut acked_total = 0u64;
    let mut checked_sectors = 0u64;
    let mut losses = Vec::new();
    let started = Instant::now();
    for trial in 0..TRIALS {
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let serial = dir.join(format!("serial-{trial}.txt"));
        let mut child = boot(&dir, &elf, &disk, &ro, &serial);
        // Wait until the guest writes, then kill at a random moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("DURABLE READY")) {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("trial {trial}: pearvisor ended early ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "trial {trial}: the guest never got ready"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.below(200)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let console = std::fs::read_to_string(&serial).unwrap();
        assert!(
            !console.contains("DURABLE ERROR"),
            "trial {trial}: the guest saw an error:\n{console}"
        );
        let Some(acked) = last_ack(&console) else {
            continue;
        };
        acked_total += acked;
        let image = std::fs::read(&disk).unwrap();
        for index in 0..SECTORS {
            // The newest acknowledged write of this sector.
            let Some(expected) = (0..=acked).rev().find(|s| *s > 0 && s % SECTORS == index) else {
                continue;
            };
            checked_sectors += 1;
            let at = index as usize * SECTOR;
            match parse_sector(&image[at..at + SECTOR], index) {
                Sector::Record(seq) if seq >= expected => {}
                other => losses.push(format!(
                    "trial {trial}: sector {index} should hold write {expected} or newer (ack {acked}), holds {other:?}"
                )),
            }
        }
        let _ = std::fs::remove_file(&serial);
    }
    assert_eq!(sha256(&ro), ro_sum, "the read-only disk changed");
    assert!(
        losses.is_empty(),
        "{} losses:\n{}",
        losses.len(),
        losses.join("\n")
    );
    // The trials must have exercised something.
    assert!(
        acked_total > u64::from(TRIALS) * 10,
        "only {acked_total} writes acknowledged over {TRIALS} trials"
    );
    eprintln!(
        "durability: {TRIALS} trials, {acked_total} acknowledged writes, {checked_sectors} sectors checked, 0 losses, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
