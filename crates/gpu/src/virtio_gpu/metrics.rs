//! Counters of the virtio-gpu device.
//!
//! The worker updates a shared [`GpuMetrics`] with relaxed atomics; anyone
//! holding the `Arc` reads it while the device runs. [`GpuMetrics::to_json`]
//! gives the flat object `VirtioDevice::metrics` returns (numbers only, so
//! the Prometheus rendering takes every field as it is).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::protocol::{GpuCommand, MAX_SCANOUTS};

/// The commands counted by type, indexed by [`command_index`].
pub const COMMAND_NAMES: [&str; 26] = [
    "get_display_info",
    "get_edid",
    "resource_create_2d",
    "resource_unref",
    "set_scanout",
    "resource_flush",
    "transfer_to_host_2d",
    "resource_attach_backing",
    "resource_detach_backing",
    "update_cursor",
    "move_cursor",
    "get_capset_info",
    "get_capset",
    "resource_assign_uuid",
    "resource_create_blob",
    "set_scanout_blob",
    "ctx_create",
    "ctx_destroy",
    "ctx_attach_resource",
    "ctx_detach_resource",
    "resource_create_3d",
    "transfer_to_host_3d",
    "transfer_from_host_3d",
    "submit_3d",
    "resource_map_blob",
    "resource_unmap_blob",
];

/// Index of a command in [`COMMAND_NAMES`].
pub fn command_index(cmd: &GpuCommand) -> usize {
    match cmd {
        GpuCommand::GetDisplayInfo => 0,
        GpuCommand::GetEdid { .. } => 1,
        GpuCommand::ResourceCreate2d { .. } => 2,
        GpuCommand::ResourceUnref { .. } => 3,
        GpuCommand::SetScanout { .. } => 4,
        GpuCommand::ResourceFlush { .. } => 5,
        GpuCommand::TransferToHost2d { .. } => 6,
        GpuCommand::ResourceAttachBacking { .. } => 7,
        GpuCommand::ResourceDetachBacking { .. } => 8,
        GpuCommand::UpdateCursor { .. } => 9,
        GpuCommand::MoveCursor { .. } => 10,
        GpuCommand::GetCapsetInfo { .. } => 11,
        GpuCommand::GetCapset { .. } => 12,
        GpuCommand::ResourceAssignUuid { .. } => 13,
        GpuCommand::ResourceCreateBlob { .. } => 14,
        GpuCommand::SetScanoutBlob(_) => 15,
        GpuCommand::CtxCreate { .. } => 16,
        GpuCommand::CtxDestroy => 17,
        GpuCommand::CtxAttachResource { .. } => 18,
        GpuCommand::CtxDetachResource { .. } => 19,
        GpuCommand::ResourceCreate3d { .. } => 20,
        GpuCommand::TransferToHost3d(_) => 21,
        GpuCommand::TransferFromHost3d(_) => 22,
        GpuCommand::Submit3d { .. } => 23,
        GpuCommand::ResourceMapBlob { .. } => 24,
        GpuCommand::ResourceUnmapBlob { .. } => 25,
    }
}

/// Live counters of one GPU.
#[derive(Debug, Default)]
pub struct GpuMetrics {
    /// Commands decoded, by type ([`COMMAND_NAMES`] order).
    pub commands: [AtomicU64; COMMAND_NAMES.len()],
    /// Requests that could not be decoded (short, unknown type, bad chain).
    pub invalid_commands: AtomicU64,
    /// Responses with an error type.
    pub errors: AtomicU64,
    /// Live resources.
    pub resources: AtomicU64,
    /// Host bytes held by resources (pixels and backing tables).
    pub host_bytes: AtomicU64,
    /// Bytes copied from guest backing by TRANSFER_TO_HOST_2D.
    pub bytes_transferred: AtomicU64,
    /// Frames pushed to the sink, per scanout.
    pub flushes: [AtomicU64; MAX_SCANOUTS],
    /// Fenced commands completed.
    pub fences: AtomicU64,
    /// Commands timed, their total and largest latency in ns.
    pub latency_count: AtomicU64,
    pub latency_total_ns: AtomicU64,
    pub latency_max_ns: AtomicU64,
    /// Bytes of 3D command streams submitted.
    pub submit_bytes: AtomicU64,
    /// Live contexts by type.
    pub contexts_venus: AtomicU64,
    pub contexts_virgl: AtomicU64,
    /// Bytes of blobs mapped into the host-visible window now.
    pub blob_bytes_mapped: AtomicU64,
    /// Renderer fences signalled, on the device timeline and on context rings.
    pub fences_global: AtomicU64,
    pub fences_context: AtomicU64,
    /// From a fenced command's arrival to its fence signalling, in ns.
    pub fence_latency_count: AtomicU64,
    pub fence_latency_total_ns: AtomicU64,
    pub fence_latency_max_ns: AtomicU64,
    /// Fences per timeline of the live contexts (and the device's), at
    /// most [`MAX_TIMELINES`] of them.
    timelines: Mutex<BTreeMap<(u32, u32), TimelineStats>>,
}

/// Timelines whose fences are counted one by one; a guest with more
/// (1024 contexts x 64 rings are possible) is counted in the totals only.
pub const MAX_TIMELINES: usize = 64;

/// The fences of one timeline: the device's (`device`) or a context ring's
/// (`ctx<id>.ring<idx>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimelineStats {
    pub fences: u64,
    pub latency_total_ns: u64,
    pub latency_max_ns: u64,
}

impl TimelineStats {
    pub fn latency_mean_ns(&self) -> u64 {
        self.latency_total_ns.checked_div(self.fences).unwrap_or(0)
    }
}

/// A timeline's name in the counters.
pub fn timeline_name(ctx_id: u32, ring_idx: u32) -> String {
    if ctx_id == 0 {
        "device".to_string()
    } else {
        format!("ctx{ctx_id}.ring{ring_idx}")
    }
}

/// A point-in-time copy of [`GpuMetrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GpuMetricsSnapshot {
    pub commands: Vec<(String, u64)>,
    pub invalid_commands: u64,
    pub errors: u64,
    pub resources: u64,
    pub host_bytes: u64,
    pub bytes_transferred: u64,
    pub flushes: Vec<u64>,
    pub fences: u64,
    pub latency_mean_ns: u64,
    pub latency_max_ns: u64,
    pub submit_bytes: u64,
    pub contexts_venus: u64,
    pub contexts_virgl: u64,
    pub blob_bytes_mapped: u64,
    pub fences_global: u64,
    pub fences_context: u64,
    pub fence_latency_mean_ns: u64,
    pub fence_latency_max_ns: u64,
    /// Per timeline ([`timeline_name`]), in (context, ring) order.
    pub timelines: Vec<(String, TimelineStats)>,
}

impl GpuMetricsSnapshot {
    /// The count of command `name` (a [`COMMAND_NAMES`] entry).
    pub fn command(&self, name: &str) -> u64 {
        self.commands
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl GpuMetrics {
    /// Records one command's latency.
    pub fn record_latency(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        add(&self.latency_count, 1);
        add(&self.latency_total_ns, ns);
        self.latency_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Records one renderer fence's latency.
    pub fn record_fence_latency(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        add(&self.fence_latency_count, 1);
        add(&self.fence_latency_total_ns, ns);
        self.fence_latency_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Records a fence of context `ctx_id` (0: the device timeline) on ring
    /// `ring_idx` that took `d` from its command's arrival to its signal.
    pub fn record_timeline_fence(&self, ctx_id: u32, ring_idx: u32, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mut timelines = self.timelines.lock().unwrap_or_else(|e| e.into_inner());
        let full = timelines.len() >= MAX_TIMELINES;
        let stats = match timelines.get_mut(&(ctx_id, ring_idx)) {
            Some(s) => s,
            None if full => return,
            None => timelines.entry((ctx_id, ring_idx)).or_default(),
        };
        stats.fences += 1;
        stats.latency_total_ns = stats.latency_total_ns.saturating_add(ns);
        stats.latency_max_ns = stats.latency_max_ns.max(ns);
    }

    /// Drops the timelines of a destroyed context (all of them: `None`).
    pub fn forget_timelines(&self, ctx_id: Option<u32>) {
        let mut timelines = self.timelines.lock().unwrap_or_else(|e| e.into_inner());
        timelines.retain(|&(ctx, _), _| ctx_id.is_some_and(|c| c != ctx));
    }

    /// Reads every counter; `flushes` for the first `scanouts` scanouts.
    pub fn snapshot(&self, scanouts: usize) -> GpuMetricsSnapshot {
        let count = get(&self.latency_count);
        GpuMetricsSnapshot {
            commands: COMMAND_NAMES
                .iter()
                .zip(&self.commands)
                .map(|(n, c)| (n.to_string(), get(c)))
                .collect(),
            invalid_commands: get(&self.invalid_commands),
            errors: get(&self.errors),
            resources: get(&self.resources),
            host_bytes: get(&self.host_bytes),
            bytes_transferred: get(&self.bytes_transferred),
            flushes: self.flushes[..scanouts.min(MAX_SCANOUTS)]
                .iter()
                .map(get)
                .collect(),
            fences: get(&self.fences),
            latency_mean_ns: get(&self.latency_total_ns).checked_div(count).unwrap_or(0),
            latency_max_ns: get(&self.latency_max_ns),
            submit_bytes: get(&self.submit_bytes),
            contexts_venus: get(&self.contexts_venus),
            contexts_virgl: get(&self.contexts_virgl),
            blob_bytes_mapped: get(&self.blob_bytes_mapped),
            fences_global: get(&self.fences_global),
            fences_context: get(&self.fences_context),
            fence_latency_mean_ns: get(&self.fence_latency_total_ns)
                .checked_div(get(&self.fence_latency_count))
                .unwrap_or(0),
            fence_latency_max_ns: get(&self.fence_latency_max_ns),
            timelines: self
                .timelines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(&(ctx, ring), s)| (timeline_name(ctx, ring), *s))
                .collect(),
        }
    }

    /// The flat JSON object of `VirtioDevice::metrics`: `commands_<type>`,
    /// `commands_invalid`, `errors`, `resources_current`,
    /// `host_bytes_current`, `transfer_bytes`, `flushes_scanout_<n>`,
    /// `fences`, `command_latency_mean_ns`, `command_latency_max_ns`, and
    /// the 3D ones: `submit_3d_bytes`, `contexts_{venus,virgl}_current`,
    /// `blob_bytes_mapped_current`, `fences_{global,context}`,
    /// `fence_latency_{mean,max}_ns`, and `fence_timelines`: an object with
    /// `fences`, `latency_mean_ns` and `latency_max_ns` per timeline name.
    pub fn to_json(&self, scanouts: usize) -> serde_json::Value {
        let s = self.snapshot(scanouts);
        let mut m = serde_json::Map::new();
        for (name, v) in &s.commands {
            m.insert(format!("commands_{name}"), (*v).into());
        }
        m.insert("commands_invalid".into(), s.invalid_commands.into());
        m.insert("errors".into(), s.errors.into());
        m.insert("resources_current".into(), s.resources.into());
        m.insert("host_bytes_current".into(), s.host_bytes.into());
        m.insert("transfer_bytes".into(), s.bytes_transferred.into());
        for (i, v) in s.flushes.iter().enumerate() {
            m.insert(format!("flushes_scanout_{i}"), (*v).into());
        }
        m.insert("fences".into(), s.fences.into());
        m.insert("command_latency_mean_ns".into(), s.latency_mean_ns.into());
        m.insert("command_latency_max_ns".into(), s.latency_max_ns.into());
        m.insert("submit_3d_bytes".into(), s.submit_bytes.into());
        m.insert("contexts_venus_current".into(), s.contexts_venus.into());
        m.insert("contexts_virgl_current".into(), s.contexts_virgl.into());
        m.insert(
            "blob_bytes_mapped_current".into(),
            s.blob_bytes_mapped.into(),
        );
        m.insert("fences_global".into(), s.fences_global.into());
        m.insert("fences_context".into(), s.fences_context.into());
        m.insert(
            "fence_latency_mean_ns".into(),
            s.fence_latency_mean_ns.into(),
        );
        m.insert("fence_latency_max_ns".into(), s.fence_latency_max_ns.into());
        if !s.timelines.is_empty() {
            let timelines = s
                .timelines
                .iter()
                .map(|(name, t)| {
                    (
                        name.clone(),
                        serde_json::json!({
                            "fences": t.fences,
                            "latency_mean_ns": t.latency_mean_ns(),
                            "latency_max_ns": t.latency_max_ns,
                        }),
                    )
                })
                .collect();
            m.insert(
                "fence_timelines".into(),
                serde_json::Value::Object(timelines),
            );
        }
        serde_json::Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_json() {
        let m = GpuMetrics::default();
        add(&m.commands[5], 3);
        add(&m.flushes[1], 2);
        m.record_latency(Duration::from_nanos(100));
        m.record_latency(Duration::from_nanos(300));
        let s = m.snapshot(2);
        assert_eq!(s.command("resource_flush"), 3);
        assert_eq!(s.command("nonsense"), 0);
        assert_eq!(s.flushes, vec![0, 2]);
        assert_eq!((s.latency_mean_ns, s.latency_max_ns), (200, 300));
        let j = m.to_json(2);
        assert_eq!(j["commands_resource_flush"], 3);
        assert_eq!(j["flushes_scanout_1"], 2);
        assert!(j.get("flushes_scanout_2").is_none());
        assert_eq!(j["command_latency_max_ns"], 300);
        assert!(j.as_object().unwrap().values().all(|v| v.is_u64()));
        assert_eq!(GpuMetrics::default().snapshot(1).latency_mean_ns, 0);
        assert!(
            j.get("fence_timelines").is_none(),
            "no fences, no timelines"
        );
    }

    #[test]
    fn fences_per_timeline_are_bounded_and_forgotten_with_their_context() {
        let m = GpuMetrics::default();
        m.record_timeline_fence(0, 0, Duration::from_nanos(10));
        m.record_timeline_fence(3, 1, Duration::from_nanos(100));
        m.record_timeline_fence(3, 1, Duration::from_nanos(300));
        let j = m.to_json(1);
        let t = &j["fence_timelines"];
        assert_eq!(t["device"]["fences"], 1);
        assert_eq!(t["ctx3.ring1"]["fences"], 2);
        assert_eq!(t["ctx3.ring1"]["latency_mean_ns"], 200);
        assert_eq!(t["ctx3.ring1"]["latency_max_ns"], 300);
        // A hostile number of timelines: only the first MAX_TIMELINES.
        for ctx in 10..1000 {
            m.record_timeline_fence(ctx, 0, Duration::from_nanos(1));
        }
        assert_eq!(m.snapshot(1).timelines.len(), MAX_TIMELINES);
        m.record_timeline_fence(3, 1, Duration::from_nanos(1));
        assert_eq!(
            m.snapshot(1).timelines[1].1.fences,
            3,
            "known ones still count"
        );
        m.forget_timelines(Some(3));
        assert!(m.to_json(1)["fence_timelines"].get("ctx3.ring1").is_none());
        m.forget_timelines(None);
        assert!(m.to_json(1).get("fence_timelines").is_none());
    }
}
