//! Writes the seed corpora (`corpus/<target>/seed-*`) from the device's own
//! request encoders: every 2D command for `gpu_decode`, and for
//! `gpu_frontend` queues that carry them as a driver lays them out (a
//! request descriptor chained to a response buffer), one command each and
//! one whole 2D session (create, back, show, transfer, flush, cursor); and
//! for `blk_queue` one request of each virtio-blk type as a driver chains
//! it (header, data, status byte); and for `gpu_frontend_3d` a Venus
//! context's life: created, fenced submits on two rings, destroyed with
//! fences pending, its id reused.
//! `cargo run --example seeds` (from `fuzz/`).

use std::fs;
use std::path::Path;

use pv_display::Rect;
use pv_gpu::virtio_gpu::protocol::{
    encode, CtrlHdr, CMD_CTX_CREATE, CMD_CTX_DESTROY, CMD_SUBMIT_3D, FLAG_FENCE,
    FLAG_INFO_RING_IDX, FORMAT_B8G8R8X8_UNORM, FORMAT_R8G8B8A8_UNORM,
};

/// Matches `gpu_frontend`'s layout.
const QSIZE: usize = 16;
const DATA: u64 = 0x1_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn commands() -> Vec<(&'static str, Vec<u8>)> {
    let r = Rect::new(0, 0, 64, 32);
    vec![
        ("display-info", encode::get_display_info()),
        ("edid", encode::get_edid(0)),
        (
            "create",
            encode::resource_create_2d(1, FORMAT_B8G8R8X8_UNORM, 64, 32),
        ),
        (
            "create-rgba",
            encode::resource_create_2d(2, FORMAT_R8G8B8A8_UNORM, 64, 64),
        ),
        (
            "backing",
            encode::resource_attach_backing(1, &[(DATA + 0x8000, 0x2000)]),
        ),
        ("scanout", encode::set_scanout(0, 1, r)),
        ("transfer", encode::transfer_to_host_2d(1, r, 0)),
        ("flush", encode::resource_flush(1, r)),
        ("cursor", encode::update_cursor(0, 10, 10, 2, 1, 1)),
        ("move", encode::move_cursor(0, 20, 20)),
        ("detach", encode::resource_detach_backing(1)),
        ("unref", encode::resource_unref(1)),
    ]
}

/// A queue with `reqs` chained one after the other: request i at its own
/// place in the data area, each with a 256-byte response buffer.
fn queue(reqs: &[Vec<u8>]) -> Vec<u8> {
    let mut table = vec![0u8; QSIZE * 16];
    let mut data = vec![0u8; 0x8000];
    let mut heads = Vec::new();
    let mut at = 0usize;
    for (i, req) in reqs.iter().enumerate().take(QSIZE / 2) {
        let (d0, d1) = (2 * i, 2 * i + 1);
        data[at..at + req.len()].copy_from_slice(req);
        put(
            &mut table,
            d0,
            DATA + at as u64,
            req.len() as u32,
            F_NEXT,
            d1 as u16,
        );
        put(
            &mut table,
            d1,
            DATA + 0x7000 + i as u64 * 256,
            256,
            F_WRITE,
            0,
        );
        heads.push(d0 as u8);
        at += req.len().div_ceil(64) * 64;
    }
    let mut out = table;
    out.push(heads.len() as u8);
    out.extend(heads);
    out.extend(data);
    out
}

/// A 3D request header: context `ctx`, a fence on `ring` when given.
fn hdr3d(type_: u32, ctx: u32, fence: Option<(u64, u8)>) -> Vec<u8> {
    let (flags, fence_id, ring_idx) = match fence {
        Some((id, ring)) => (FLAG_FENCE | FLAG_INFO_RING_IDX, id, ring),
        None => (0, 0, 0),
    };
    let mut out = Vec::new();
    CtrlHdr {
        type_,
        flags,
        fence_id,
        ctx_id: ctx,
        ring_idx,
    }
    .encode(&mut out);
    out
}

fn ctx_create(ctx: u32) -> Vec<u8> {
    let mut r = hdr3d(CMD_CTX_CREATE, ctx, None);
    r.extend_from_slice(&4u32.to_le_bytes());
    r.extend_from_slice(&4u32.to_le_bytes()); // context_init: Venus
    r.extend_from_slice(b"fuzz");
    r.resize(24 + 8 + 64, 0);
    r
}

fn submit(ctx: u32, fence: u64, ring: u8) -> Vec<u8> {
    let mut r = hdr3d(CMD_SUBMIT_3D, ctx, Some((fence, ring)));
    r.extend_from_slice(&8u32.to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&[0x5a; 8]);
    r
}

/// A descriptor table entry.
fn put(t: &mut [u8], d: usize, addr: u64, len: u32, flags: u16, next: u16) {
    t[d * 16..d * 16 + 8].copy_from_slice(&addr.to_le_bytes());
    t[d * 16 + 8..d * 16 + 12].copy_from_slice(&len.to_le_bytes());
    t[d * 16 + 12..d * 16 + 14].copy_from_slice(&flags.to_le_bytes());
    t[d * 16 + 14..d * 16 + 16].copy_from_slice(&next.to_le_bytes());
}

/// A virtio-blk request of `type_` at `sector`: its 16-byte header, `data`
/// bytes of payload (read by the device for writes, discards and
/// write-zeroes; written by it for reads and GET_ID), then the status byte.
fn blk(type_: u32, sector: u64, data: u32) -> Vec<u8> {
    let mut table = vec![0u8; QSIZE * 16];
    let mut area = vec![0u8; 0x2000];
    area[0..4].copy_from_slice(&type_.to_le_bytes());
    area[8..16].copy_from_slice(&sector.to_le_bytes());
    let device_reads = matches!(type_, 1 | 11 | 13);
    if matches!(type_, 11 | 13) {
        // One discard/write-zeroes segment: sector, sectors, flags.
        area[0x1000..0x1008].copy_from_slice(&sector.to_le_bytes());
        area[0x1008..0x100c].copy_from_slice(&8u32.to_le_bytes());
    }
    put(&mut table, 0, DATA, 16, F_NEXT, 1);
    let mut next = 1;
    if data > 0 {
        let flags = if device_reads {
            F_NEXT
        } else {
            F_NEXT | F_WRITE
        };
        put(&mut table, 1, DATA + 0x1000, data, flags, 2);
        next = 2;
    }
    put(&mut table, next, DATA + 0x1ff0, 1, F_WRITE, 0);
    let mut out = table;
    out.push(1);
    out.push(0);
    out.extend(area);
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let decode = root.join("gpu_decode");
    let frontend = root.join("gpu_frontend");
    fs::create_dir_all(&decode).unwrap();
    fs::create_dir_all(&frontend).unwrap();
    for (name, req) in commands() {
        fs::write(decode.join(format!("seed-{name}")), &req).unwrap();
        fs::write(frontend.join(format!("seed-{name}")), queue(&[req])).unwrap();
    }
    let session: Vec<Vec<u8>> = [
        "create",
        "backing",
        "scanout",
        "transfer",
        "flush",
        "create-rgba",
        "cursor",
        "move",
    ]
    .iter()
    .map(|n| commands().into_iter().find(|(c, _)| c == n).unwrap().1)
    .collect();
    fs::write(frontend.join("seed-session"), queue(&session)).unwrap();
    let three_d = root.join("gpu_frontend_3d");
    fs::create_dir_all(&three_d).unwrap();
    let life = [
        ctx_create(1),
        submit(1, 5, 0),
        submit(1, 6, 3),
        submit(1, 7, 0),
        hdr3d(CMD_CTX_DESTROY, 1, None),
        ctx_create(1),
        submit(1, 1, 0),
    ];
    fs::write(three_d.join("seed-context-life"), queue(&life)).unwrap();
    let two = [
        ctx_create(1),
        ctx_create(2),
        submit(2, 9, 1),
        submit(1, 3, 0),
    ];
    fs::write(three_d.join("seed-two-contexts"), queue(&two)).unwrap();
    let blk_dir = root.join("blk_queue");
    fs::create_dir_all(&blk_dir).unwrap();
    for (name, type_, sector, data) in [
        ("read", 0u32, 0u64, 512u32),
        ("write", 1, 8, 1024),
        ("flush", 4, 0, 0),
        ("get-id", 8, 0, 20),
        ("discard", 11, 16, 16),
        ("write-zeroes", 13, 24, 16),
    ] {
        fs::write(
            blk_dir.join(format!("seed-{name}")),
            blk(type_, sector, data),
        )
        .unwrap();
    }
    println!("seeds written under {}", root.display());
}
