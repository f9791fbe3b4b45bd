//! Writes the seed corpora (`corpus/<target>/seed-*`) from the device's own
//! request encoders: every 2D command for `gpu_decode`, and for
//! `gpu_frontend` queues that carry them as a driver lays them out (a
//! request descriptor chained to a response buffer), one command each and
//! one whole 2D session (create, back, show, transfer, flush, cursor); and
//! for `blk_queue` one request of each virtio-blk type as a driver chains
//! it (header, data, status byte); and for `gpu_frontend_3d` a Venus
//! context's life: created, fenced submits on two rings, destroyed with
//! fences pending, its id reused; for `pci_transport` driver sessions in
//! its operation language (`fuzz_targets/common/pci_ops.rs`): whole
//! start-ups with requests of every kind for virtio-rng and virtio-blk,
//! the same start-up step by step, BAR sizing and the capability walk,
//! MSI-X masking, ECAM and 0xCF8 accesses; and for `api_http` a request
//! for every endpoint (`pv_api::Endpoint::ALL`) with the bodies the
//! OpenAPI document gives (docs/api/openapi.yaml), and a few ways HTTP/1.1
//! carries them (pipelined, chunked, 100-continue, HTTP/1.0, a body over
//! the limit).
//! `cargo run --example seeds` (from `fuzz/`).

use std::fs;
use std::path::Path;

use pv_api::Endpoint;

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

#[path = "../fuzz_targets/common/pci_ops.rs"]
mod pci_ops;
use pci_ops::*;

/// A virtio-blk request header: type, reserved, sector.
fn blk_header(type_: u32, sector: u64) -> Vec<u8> {
    let mut h = type_.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// Guest address of `POST` buffer offset `offset`.
fn data(offset: u16) -> u32 {
    (DATA + u64::from(offset)) as u32
}

fn pci_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const ALL: u64 = u64::MAX;
    let mut out = Vec::new();

    // virtio-rng: start-up with MSI-X (without EVENT_IDX: an interrupt per
    // request), requests, the ISR and PBA read, reset, started again
    // without MSI-X.
    let mut o = Ops::new(0);
    o.setup(8, ALL & !(1 << 29), SETUP_MSIX)
        .post(&[(0, 64, BUF_WRITE)], &[])
        .post(&[(0x100, 16, BUF_WRITE), (0x200, 4096, BUF_WRITE)], &[])
        .post(&[(0x300, 8, 0), (0x400, 8, BUF_WRITE)], &[])
        .wait()
        .bar_read(0x1000, 1)
        .bar_read(0x6000, 8)
        .bar_read(0x4000, 4)
        .bar_write(0x14, 1, 0)
        .setup(4, 0, 0)
        .post(&[(0x800, 32, BUF_WRITE)], &[])
        .wait()
        .bar_read(0x1000, 1);
    out.push(("rng-session", o.0));

    // virtio-blk: every request type a driver sends.
    let status = |n: u16| (0x3000 + n, 1, BUF_WRITE);
    let mut o = Ops::new(DEV_BLK);
    let mut segment = 16u64.to_le_bytes().to_vec(); // sector
    segment.extend_from_slice(&8u32.to_le_bytes()); // sectors
    segment.extend_from_slice(&0u32.to_le_bytes()); // flags
    o.setup(7, ALL, SETUP_MSIX)
        .mem_write(data(0x1000), &[0x5a; 512])
        .post(
            &[(0, 16, 0), (0x1000, 512, 0), status(0)],
            &blk_header(1, 0),
        )
        .post(
            &[(0x20, 16, 0), (0x1400, 512, BUF_WRITE), status(1)],
            &blk_header(0, 0),
        )
        .post(&[(0x40, 16, 0), status(2)], &blk_header(4, 0))
        .post(
            &[(0x60, 16, 0), (0x1800, 20, BUF_WRITE), status(3)],
            &blk_header(8, 0),
        )
        .mem_write(data(0x1c00), &segment)
        .post(
            &[(0x80, 16, 0), (0x1c00, 16, 0), status(4)],
            &blk_header(11, 0),
        )
        .post(
            &[(0xa0, 16, 0), (0x1c00, 16, 0), status(5)],
            &blk_header(13, 0),
        )
        .post(
            &[(0xc0, 16, 0), (0x1400, 1024, BUF_WRITE), status(6)],
            &blk_header(0, 2047),
        )
        .wait();
    for off in (0x2000..0x2040).step_by(4) {
        o.bar_read(off, 4);
    }
    out.push(("blk-session", o.0));

    // A read-only disk refuses writes.
    let mut o = Ops::new(DEV_BLK | DEV_READONLY);
    o.setup(8, ALL, 0)
        .post(
            &[(0, 16, 0), (0x1000, 512, 0), status(0)],
            &blk_header(1, 0),
        )
        .post(&[(0x20, 16, 0), status(1)], &blk_header(4, 0))
        .wait()
        .bar_read(0x2000, 8);
    out.push(("blk-readonly", o.0));

    // The start-up step by step, as Linux's virtio_pci_modern does it, one
    // chain written by hand and notified.
    let mut o = Ops::new(0);
    o.bar_write(0x14, 1, 0)
        .bar_write(0x14, 1, 1)
        .bar_write(0x14, 1, 3)
        .bar_write(0x00, 4, 0)
        .bar_read(0x04, 4)
        .bar_write(0x00, 4, 1)
        .bar_read(0x04, 4)
        .bar_write(0x08, 4, 0)
        .bar_write(0x0c, 4, 1 << 28)
        .bar_write(0x08, 4, 1)
        .bar_write(0x0c, 4, 1)
        .bar_write(0x14, 1, 0xb)
        .bar_read(0x14, 1)
        .cfg_read(0x10)
        .cfg_write(0x10, 2, 2, 0xc000)
        .bar_write(0x4000, 4, 0xfee0_0000)
        .bar_write(0x4004, 4, 0)
        .bar_write(0x4008, 4, 0x41)
        .bar_write(0x400c, 4, 0)
        .bar_write(0x4010, 8, 0xfee0_0000)
        .bar_write(0x4018, 8, 0x42)
        .cfg_write(0x10, 2, 2, 0x8000)
        .bar_write(0x10, 2, 0)
        .bar_read(0x10, 2)
        .bar_read(0x12, 2)
        .bar_write(0x16, 2, 0)
        .bar_read(0x18, 2)
        .bar_write(0x18, 2, 16)
        .bar_write(0x1a, 2, 1)
        .bar_write(0x20, 4, DESC)
        .bar_write(0x24, 4, 0)
        .bar_write(0x28, 8, AVAIL)
        .bar_write(0x30, 8, USED)
        .bar_write(0x1c, 2, 1)
        .bar_read(0x1e, 2)
        .bar_write(0x14, 1, 0xf)
        .bar_read(0x14, 1);
    let mut desc = (DATA + 0x100).to_le_bytes().to_vec();
    desc.extend_from_slice(&64u32.to_le_bytes());
    desc.extend_from_slice(&2u16.to_le_bytes());
    desc.extend_from_slice(&0u16.to_le_bytes());
    o.mem_write(DESC as u32, &desc)
        .mem_write(AVAIL as u32, &[0, 0, 1, 0, 0, 0])
        .notify(0, 2)
        .wait()
        .bar_read(0x1000, 1)
        .bar_read(0x6000, 4)
        .bar_write(0x14, 1, 0);
    out.push(("driver-by-hand", o.0));

    // BAR sizing of every BAR register, the command register, the
    // capability walk, the expansion ROM, past the 256 bytes.
    let mut o = Ops::new(DEV_BLK);
    o.cfg_read(0).cfg_read(2).cfg_read(3);
    for reg in 4..10 {
        o.cfg_read(reg)
            .cfg_write(reg, 0, 4, u32::MAX)
            .cfg_read(reg)
            .cfg_write(reg, 0, 4, if reg == 4 { 0xc000_0000 } else { 0 });
    }
    o.cfg_write(1, 0, 2, 0x0406)
        .cfg_read(1)
        .cfg_write(1, 0, 2, 0)
        .cfg_read(0xd);
    for reg in 0x10..0x30 {
        o.cfg_read(reg);
    }
    o.cfg_write(0xc, 0, 4, u32::MAX)
        .cfg_read(0xc)
        .cfg_write(0xf, 0, 1, 11)
        .cfg_read(0xf)
        .cfg_read(64)
        .cfg_read(1023)
        .cfg_write(100, 0, 4, u32::MAX)
        .cfg_write(0x10, 3, 1, 0xc0)
        .cfg_write(0x10, 2, 2, 0xffff)
        .cfg_read(0x10)
        .cfg_write(4, 1, 2, 0xffff)
        .cfg_write(4, 3, 4, u32::MAX)
        .cfg_read(4);
    out.push(("bar-sizing", o.0));

    // MSI-X: function mask, per-vector masks, pending bits delivered when
    // unmasked, MSI-X turned off and on while the device runs.
    let mut o = Ops::new(0);
    o.setup(3, ALL, SETUP_MSIX)
        .cfg_write(0x10, 2, 2, 0xc000)
        .post(&[(0, 32, BUF_WRITE)], &[])
        .wait()
        .bar_read(0x6000, 8)
        .cfg_write(0x10, 2, 2, 0x8000)
        .bar_write(0x401c, 4, 1)
        .post(&[(0x40, 32, BUF_WRITE)], &[])
        .wait()
        .bar_read(0x6000, 1)
        .bar_write(0x401c, 4, 0)
        .bar_read(0x4010, 8)
        .bar_read(0x4018, 8)
        .bar_write(0x1a, 2, 0x7ff)
        .bar_read(0x1a, 2)
        .cfg_write(0x10, 2, 2, 0)
        .post(&[(0x80, 32, BUF_WRITE)], &[])
        .wait()
        .bar_read(0x1000, 1);
    out.push(("msix-masks", o.0));

    // Configuration access through ECAM and 0xCF8/0xCFC: ids, sizing,
    // other slots and functions, misaligned and odd widths.
    let mut o = Ops::new(0);
    o.cfg_port(0, 0, 4, 0)
        .cfg_port(0, 2, 2, 0)
        .cfg_port(PORT_WRITE, 0x10, 4, u32::MAX)
        .cfg_port(0, 0x10, 4, 0)
        .cfg_port(PORT_WRITE, 0x10, 4, 0xc000_0000)
        .cfg_port(0, 0x1000, 4, 0)
        .cfg_port(PORT_OTHER_SLOT, 0, 4, 0)
        .cfg_port(0, 0x11, 4, 0)
        .cfg_port(0, 0x43, 1, 0)
        .cfg_port(PORT_CF8, 0, 4, 0)
        .cfg_port(PORT_CF8, 0x2008, 2, 0)
        .cfg_port(PORT_CF8 | PORT_WRITE, 0x10, 4, u32::MAX)
        .cfg_port(PORT_CF8, 0x10, 4, 0)
        .cfg_port(PORT_CF8 | PORT_WRITE, 0x10, 4, 0xc000_0000)
        .cfg_port(PORT_CF8 | PORT_WRITE, 0x3042, 2, 0x8000)
        .cfg_port(PORT_CF8, 0x8000, 4, 0)
        .cfg_port(PORT_CF8 | PORT_OTHER_SLOT | (2 << 3), 0, 4, 0);
    out.push(("config-ports", o.0));
    out
}

/// One HTTP/1.1 request as a local client sends it.
fn request(method: &str, target: &str, body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    if let Some(b) = body {
        r += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    r += "\r\n";
    r += body.unwrap_or("");
    r.into_bytes()
}

fn api_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in Endpoint::ALL {
        let name = e.name().replace('.', "-");
        let method = e.method().to_string();
        let path = e.path();
        match e {
            Endpoint::Resize => {
                // VmResize from docs/api/openapi.yaml.
                for (tag, body) in [
                    ("", r#"{"width": 1024, "height": 768}"#),
                    ("-display", r#"{"display": 0, "width": 32, "height": 8192}"#),
                    (
                        "-display-2",
                        r#"{"display": 2, "width": 8192, "height": 32}"#,
                    ),
                    ("-bad", r#"{"width": 31, "height": 600, "depth": 32}"#),
                ] {
                    out.push((format!("{name}{tag}"), request(&method, &path, Some(body))));
                }
            }
            Endpoint::Screenshot => {
                out.push((name.clone(), request(&method, &path, None)));
                for (tag, q) in [("-1", "display=1"), ("-bad", "display=x&scale=2")] {
                    out.push((
                        format!("{name}{tag}"),
                        request(&method, &format!("{path}?{q}"), None),
                    ));
                }
            }
            _ if method == "PUT" => {
                // NoParameters: nothing, or {}.
                out.push((name.clone(), request(&method, &path, None)));
                out.push((
                    format!("{name}-empty-object"),
                    request(&method, &path, Some("{}")),
                ));
            }
            _ => out.push((name.clone(), request(&method, &path, None))),
        }
        // The other method: 405 with Allow.
        let other = if method == "GET" { "PUT" } else { "GET" };
        out.push((format!("{name}-405"), request(other, &path, None)));
    }
    out.push((
        "not-found".into(),
        request("GET", "/api/v1/vm.nothing", None),
    ));
    // Two requests on one connection, then a lifecycle round.
    let mut pipelined = request("GET", "/api/v1/vm.info", None);
    pipelined.extend(request("PUT", "/api/v1/vm.pause", Some("{}")));
    pipelined.extend(request("PUT", "/api/v1/vm.resume", None));
    pipelined.extend(request("GET", "/api/v1/vm.counters", None));
    out.push(("pipelined".into(), pipelined));
    out.push((
        "chunked".into(),
        b"PUT /api/v1/vm.resize HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          e\r\n{\"width\": 800,\r\n11\r\n \"height\": 600}  \r\n0\r\n\r\n"
            .to_vec(),
    ));
    out.push((
        "expect-continue".into(),
        b"PUT /api/v1/vm.pause HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
            .to_vec(),
    ));
    // One byte over the 64 KiB body limit: 413.
    let big = format!("{{{}}}", " ".repeat(64 * 1024 - 1));
    out.push((
        "too-large".into(),
        request("PUT", "/api/v1/vm.resize", Some(&big)),
    ));
    out.push((
        "http10".into(),
        b"GET /api/v1/vmm.ping HTTP/1.0\r\n\r\n".to_vec(),
    ));
    out.push((
        "close".into(),
        b"GET /api/v1/vm.metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_vec(),
    ));
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
    let pci = root.join("pci_transport");
    fs::create_dir_all(&pci).unwrap();
    for (name, ops) in pci_seeds() {
        fs::write(pci.join(format!("seed-{name}")), ops).unwrap();
    }
    let api = root.join("api_http");
    fs::create_dir_all(&api).unwrap();
    for (name, req) in api_seeds() {
        fs::write(api.join(format!("seed-{name}")), req).unwrap();
    }
    println!("seeds written under {}", root.display());
}
