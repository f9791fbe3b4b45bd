//! A scratch disk image for the targets that need a file behind a device.

use std::fs::{File, OpenOptions};

/// A zero-filled, read-write file of `len` bytes, already unlinked: it
/// lives as long as the returned handle (and its reopened copies).
pub fn scratch_image(name: &str, len: u64) -> File {
    let path = std::env::temp_dir().join(format!("pv-fuzz-{name}-{}.img", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("scratch disk image");
    file.set_len(len).expect("size the image");
    let _ = std::fs::remove_file(&path);
    file
}
