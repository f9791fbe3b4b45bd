//! The frontend against a 3D backend whose fences signal only when the
//! test says so. Fence ordering: chains complete in order per timeline,
//! timelines are independent, and fences of a context destroyed before
//! they signalled (virglrenderer drops those silently) complete rather
//! than hold the guest's buffers forever. And requests as long as the
//! device accepts reach the backend whole.

use vm_memory::Address;

use super::*;
use crate::virgl::{Timeline, CAPSET_VENUS};
use crate::virtio_gpu::manual3d::{FenceControl, ManualFences};

fn setup() -> (Frontend, Arc<FenceControl>, Arc<GpuMetrics>) {
    let (backend, fences) = ManualFences::new(64 << 20);
    let metrics = Arc::new(GpuMetrics::default());
    let fe = Frontend::new(
        Box::new(backend),
        DisplayControl::new(&GpuParams::default()),
        Arc::new(RecordingSink::default()),
        metrics.clone(),
        true,
    );
    (fe, fences, metrics)
}

/// A request header with `ctx`, and with a fence `fence` on `ring` when
/// given.
fn hdr(type_: u32, ctx: u32, fence: Option<(u64, u8)>) -> Vec<u8> {
    let mut out = Vec::new();
    let (flags, fence_id, ring_idx) = match fence {
        Some((id, ring)) => (FLAG_FENCE | FLAG_INFO_RING_IDX, id, ring),
        None => (0, 0, 0),
    };
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
    let mut r = hdr(CMD_CTX_CREATE, ctx, None);
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&CAPSET_VENUS.to_le_bytes());
    r.resize(HDR_LEN + 8 + 64, 0);
    r
}

fn submit(ctx: u32, fence: u64, ring: u8) -> Vec<u8> {
    let mut r = hdr(CMD_SUBMIT_3D, ctx, Some((fence, ring)));
    r.extend_from_slice(&[0u8; 8]);
    r
}

/// Queues requests, each with its own response buffer, in one batch;
/// returns the response buffer address of each.
fn queue_all(d: &mut Driver, reqs: &[Vec<u8>]) -> Vec<u64> {
    let mut at = 0x20_0000u64;
    let mut resps = Vec::new();
    for r in reqs {
        d.mem.write_slice(r, GuestAddress(at)).unwrap();
        d.add_chain(&[(at, r.len() as u32, false), (at + 0x800, 64, true)]);
        resps.push(at + 0x800);
        at += 0x1000;
    }
    resps
}

/// The fence ids of the used entries, read from their responses.
fn completed(d: &Driver, used_before: u16, resps: &[u64], reqs_at: &[u64]) -> Vec<u64> {
    let after = d.used_idx();
    (used_before..after)
        .map(|i| {
            let at = USED_RING + 4 + u64::from(i % QSIZE) * 8;
            let head: u32 = d.mem.read_obj(GuestAddress(at)).unwrap();
            // The chain's response buffer is the head's request + 0x800.
            let desc: RawDescriptor = d
                .mem
                .read_obj(GuestAddress(DESC_TABLE + u64::from(head) * 16))
                .unwrap();
            let req = Descriptor::from(desc).addr().raw_value();
            assert!(reqs_at.contains(&req));
            let resp = req + 0x800;
            assert!(resps.contains(&resp));
            let mut h = [0u8; HDR_LEN];
            d.mem.read_slice(&mut h, GuestAddress(resp)).unwrap();
            CtrlHdr::decode(&h).unwrap().fence_id
        })
        .collect()
}

fn step(fe: &mut Frontend, d: &mut Driver) {
    fe.process_event(std::slice::from_mut(&mut d.queue), d.mem);
}

#[test]
fn fenced_chains_complete_in_order_per_timeline() {
    let (mut fe, fences, metrics) = setup();
    let mem = mem();
    let mut d = Driver::new(&mem);
    assert_eq!(d.status(&mut fe, &ctx_create(1)), RESP_OK_NODATA);
    let reqs = vec![submit(1, 10, 0), submit(1, 11, 1), submit(1, 12, 0)];
    let before = d.used_idx();
    let resps = queue_all(&mut d, &reqs);
    let starts: Vec<u64> = resps.iter().map(|r| r - 0x800).collect();
    assert!(
        d.run(&mut fe).is_empty(),
        "nothing completes before a signal"
    );
    assert_eq!(fences.armed.lock().unwrap().len(), 3);

    // Ring 1's fence completes alone: rings are separate timelines.
    fences.signal(
        Timeline::Context {
            ctx_id: 1,
            ring_idx: 1,
        },
        11,
    );
    step(&mut fe, &mut d);
    assert_eq!(completed(&d, before, &resps, &starts), [11]);
    // Ring 0's later fence signals first: both of ring 0 complete, in order.
    fences.signal(
        Timeline::Context {
            ctx_id: 1,
            ring_idx: 0,
        },
        12,
    );
    step(&mut fe, &mut d);
    assert_eq!(completed(&d, before, &resps, &starts), [11, 10, 12]);
    let t = metrics.snapshot(1).timelines;
    let fences_of = |name: &str| t.iter().find(|(n, _)| n == name).map(|(_, s)| s.fences);
    assert_eq!(fences_of("ctx1.ring0"), Some(2));
    assert_eq!(fences_of("ctx1.ring1"), Some(1));
}

#[test]
fn fences_of_a_destroyed_context_complete_and_its_id_can_be_reused() {
    let (mut fe, fences, metrics) = setup();
    let mem = mem();
    let mut d = Driver::new(&mem);
    assert_eq!(d.status(&mut fe, &ctx_create(1)), RESP_OK_NODATA);
    assert_eq!(d.status(&mut fe, &ctx_create(2)), RESP_OK_NODATA);
    let before = d.used_idx();
    // Work on context 1 (two rings) and 2, then context 1 goes away (its
    // process was killed) before the renderer signalled anything.
    let reqs = vec![
        submit(1, 5, 0),
        submit(1, 6, 3),
        submit(2, 7, 0),
        submit(1, 8, 0),
        hdr(CMD_CTX_DESTROY, 1, None),
    ];
    let resps = queue_all(&mut d, &reqs);
    let starts: Vec<u64> = resps.iter().map(|r| r - 0x800).collect();
    d.run(&mut fe);
    // The destroy (fence id 0) and every fence of context 1, in order;
    // context 2's still waits for its renderer.
    assert_eq!(completed(&d, before, &resps, &starts), [0, 5, 6, 8]);
    assert!(metrics
        .snapshot(1)
        .timelines
        .iter()
        .all(|(n, _)| !n.starts_with("ctx1.")));
    fences.signal(
        Timeline::Context {
            ctx_id: 2,
            ring_idx: 0,
        },
        7,
    );
    step(&mut fe, &mut d);
    assert_eq!(completed(&d, before, &resps, &starts), [0, 5, 6, 8, 7]);

    // Linux reuses the id: the new context 1's fences wait for its own
    // signals, untouched by the old ones.
    let before = d.used_idx();
    assert_eq!(d.status(&mut fe, &ctx_create(1)), RESP_OK_NODATA);
    let before_fence = d.used_idx();
    let resps = queue_all(&mut d, &[submit(1, 1, 0)]);
    let starts: Vec<u64> = resps.iter().map(|r| r - 0x800).collect();
    assert!(d.run(&mut fe).is_empty());
    assert!(before_fence != before);
    fences.signal(
        Timeline::Context {
            ctx_id: 1,
            ring_idx: 0,
        },
        1,
    );
    step(&mut fe, &mut d);
    assert_eq!(completed(&d, before_fence, &resps, &starts), [1]);
}

/// RESOURCE_CREATE_BLOB with the most entries (16384) is the longest
/// request: it reaches the backend whole (the backend here refuses the
/// resource id) instead of being cut short (ERR_UNSPEC).
#[test]
fn a_blob_with_the_most_entries_reaches_the_backend_whole() {
    let (mut fe, _fences, _metrics) = setup();
    let mem = mem();
    let mut d = Driver::new(&mem);
    assert_eq!(d.status(&mut fe, &ctx_create(1)), RESP_OK_NODATA);
    let n = MAX_BACKING_ENTRIES;
    let mut r = hdr(CMD_RESOURCE_CREATE_BLOB, 1, None);
    for f in [42u32, 1 /* GUEST */, 0, n] {
        r.extend_from_slice(&f.to_le_bytes());
    }
    r.extend_from_slice(&0u64.to_le_bytes());
    r.extend_from_slice(&(u64::from(n) * 4096).to_le_bytes());
    for i in 0..u64::from(n) {
        r.extend_from_slice(&(i * 4096).to_le_bytes());
        r.extend_from_slice(&4096u32.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
    }
    assert_eq!(r.len(), MAX_REQUEST_LEN);
    assert_eq!(d.status(&mut fe, &r), RESP_ERR_INVALID_RESOURCE_ID);
    // One entry more is refused by the decoder, not cut short.
    let mut r2 = r.clone();
    r2[HDR_LEN + 12..HDR_LEN + 16].copy_from_slice(&(n + 1).to_le_bytes());
    r2.extend_from_slice(&[0u8; MEM_ENTRY_LEN]);
    assert_ne!(d.status(&mut fe, &r2), RESP_OK_NODATA);
}
