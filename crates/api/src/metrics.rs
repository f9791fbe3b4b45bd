//! The counters in Prometheus' text exposition format (version 0.0.4).
//!
//! Derived from [`pv_vmm::control::VmController::counters`]:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `pearvisor_up` | gauge | |
//! | `pearvisor_vm_state` | gauge (1 for the current state) | `state` |
//! | `pearvisor_uptime_seconds` | gauge | |
//! | `pearvisor_boots_total` | counter | |
//! | `pearvisor_memory_bytes` | gauge | |
//! | `pearvisor_vcpus` | gauge | |
//! | `pearvisor_vcpu_exits_total` | counter | `vcpu`, `reason` |
//! | `pearvisor_device_<counter>` | counter (gauge for levels) | `device` |
//! | `pearvisor_device_fence_timeline_<counter>` | counter (gauge for latencies) | `device`, `timeline` |
//!
//! Device counters rise while a machine runs and start again from zero
//! when the guest reboots (a new machine), which Prometheus reads as a
//! counter reset.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Exit reasons reported per vCPU (the `total` in the counters is their sum
/// and is left out, so that `sum()` over reasons is right).
const EXIT_REASONS: [&str; 6] = [
    "io_in",
    "io_out",
    "mmio_read",
    "mmio_write",
    "interrupted",
    "unclaimed",
];

const STATES: [&str; 4] = ["Created", "Running", "Paused", "Shutdown"];

/// Help texts of the device counters PearVisor's devices report.
const DEVICE_HELP: &[(&str, &str)] = &[
    ("read_bytes", "Bytes read from the disk image."),
    ("write_bytes", "Bytes written to the disk image."),
    ("read_requests", "Read requests received."),
    ("write_requests", "Write requests received."),
    ("flush_requests", "Flush requests received."),
    ("discard_requests", "Discard requests received."),
    ("write_zeroes_requests", "Write-zeroes requests received."),
    ("errors", "Requests that failed."),
    ("interrupts", "Interrupts sent to the guest."),
    ("notifications", "Queue notifications from the guest."),
    ("bytes", "Random bytes handed to the guest."),
    ("requests", "Requests served."),
];

/// Renders `counters` (the JSON of `vm.counters`) as Prometheus text.
pub fn render(counters: &Value) -> String {
    let mut out = Exposition::default();
    out.family("pearvisor_up", "gauge", "1 while the VMM answers.");
    out.sample("pearvisor_up", &[], "1");

    let state = counters["state"].as_str().unwrap_or("");
    out.family(
        "pearvisor_vm_state",
        "gauge",
        "The VM's lifecycle state: 1 for the current one, 0 for the others.",
    );
    for s in STATES {
        let v = if s == state { "1" } else { "0" };
        out.sample("pearvisor_vm_state", &[("state", s)], v);
    }

    let uptime_ms = counters["uptime_ms"].as_u64().unwrap_or(0);
    out.family(
        "pearvisor_uptime_seconds",
        "gauge",
        "Seconds since the VM first booted (0 before).",
    );
    out.sample(
        "pearvisor_uptime_seconds",
        &[],
        &format!("{}.{:03}", uptime_ms / 1000, uptime_ms % 1000),
    );

    out.family(
        "pearvisor_boots_total",
        "counter",
        "Boots of the guest, reboots included.",
    );
    out.sample(
        "pearvisor_boots_total",
        &[],
        &number(&counters["boots"]).unwrap_or_else(|| "0".into()),
    );

    out.family("pearvisor_memory_bytes", "gauge", "Guest RAM in bytes.");
    out.sample(
        "pearvisor_memory_bytes",
        &[],
        &number(&counters["memory_bytes"]).unwrap_or_else(|| "0".into()),
    );

    let vcpus = counters["vcpus"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    out.family(
        "pearvisor_vcpus",
        "gauge",
        "vCPUs of the running machine (0 when none runs).",
    );
    out.sample("pearvisor_vcpus", &[], &vcpus.len().to_string());

    out.family(
        "pearvisor_vcpu_exits_total",
        "counter",
        "VM exits of each vCPU by reason, since the machine booted.",
    );
    for (index, vcpu) in vcpus.iter().enumerate() {
        let id = vcpu["id"]
            .as_u64()
            .map_or_else(|| index.to_string(), |id| id.to_string());
        for reason in EXIT_REASONS {
            if let Some(v) = number(&vcpu["exits"][reason]) {
                out.sample(
                    "pearvisor_vcpu_exits_total",
                    &[("vcpu", &id), ("reason", reason)],
                    &v,
                );
            }
        }
    }

    // One family per counter name, with a sample per device that has it.
    type Sample<'a> = (&'a str, Option<(&'a str, &'a str)>, String);
    let mut families: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    if let Some(devices) = counters["devices"].as_object() {
        for (device, fields) in devices {
            let Some(fields) = fields.as_object() else {
                continue;
            };
            for (name, value) in fields {
                if let Some(v) = number(value) {
                    families
                        .entry(metric_name(name))
                        .or_default()
                        .push((device.as_str(), None, v));
                } else if let Some(groups) = value.as_object() {
                    // `fence_timelines: {NAME: {fences: N, ...}}` becomes
                    // `..._fence_timeline_fences{device, timeline="NAME"}`.
                    let prefix = name.strip_suffix('s').unwrap_or(name);
                    let label = prefix.rsplit('_').next().unwrap_or(prefix);
                    for (group, counters) in groups {
                        let Some(counters) = counters.as_object() else {
                            continue;
                        };
                        for (counter, value) in counters {
                            if let Some(v) = number(value) {
                                families
                                    .entry(metric_name(&format!("{prefix}_{counter}")))
                                    .or_default()
                                    .push((device.as_str(), Some((label, group.as_str())), v));
                            }
                        }
                    }
                }
            }
        }
    }
    for (name, samples) in families {
        let metric = format!("pearvisor_device_{name}");
        let help = DEVICE_HELP
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| format!("Device counter {name}."), |(_, h)| h.to_string());
        let kind = if is_level(&name) { "gauge" } else { "counter" };
        out.family(&metric, kind, &help);
        for (device, group, v) in samples {
            match group {
                Some(label) => out.sample(&metric, &[("device", device), label], &v),
                None => out.sample(&metric, &[("device", device)], &v),
            }
        }
    }
    out.text
}

/// Counters that can fall (levels rather than event counts).
fn is_level(name: &str) -> bool {
    [
        "in_flight",
        "pending",
        "depth",
        "capacity",
        "size",
        "current",
        "latency",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// A JSON number as Prometheus writes it; `None` for anything else.
fn number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Value::Number(n) => n.as_f64().map(|f| {
            if f.is_nan() {
                "NaN".into()
            } else if f.is_infinite() {
                if f > 0.0 { "+Inf" } else { "-Inf" }.into()
            } else {
                f.to_string()
            }
        }),
        Value::Bool(b) => Some(u8::from(*b).to_string()),
        _ => None,
    }
}

/// A valid metric name part: `[a-zA-Z0-9_]`, other characters become `_`.
fn metric_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Escapes a label value (backslash, double quote, newline).
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;

    fn sample_counters() -> Value {
        json!({
            "state": "Running",
            "uptime_ms": 12345,
            "boots": 2,
            "memory_bytes": 536870912u64,
            "vcpus": [
                {"id": 0, "exits": {"total": 130, "io_in": 123, "io_out": 7, "mmio_read": 0,
                                    "mmio_write": 0, "interrupted": 0, "unclaimed": 0}},
                {"id": 1, "exits": {"total": 0, "io_in": 0, "io_out": 0, "mmio_read": 0,
                                    "mmio_write": 0, "interrupted": 0, "unclaimed": 0}}
            ],
            "devices": {
                "virtio-blk-0": {"read_bytes": 4096, "interrupts": 3, "queue_depth": 1},
                "virtio-rng": {"interrupts": 9, "bytes": 64, "odd\"name": "text"},
                "weird \"dev\"\n": {"read_bytes": 1},
                "virtio-gpu": {"fences": 3, "fence_timelines": {
                    "device": {"fences": 1, "latency_mean_ns": 500, "latency_max_ns": 700},
                    "ctx1.ring0": {"fences": 2, "latency_mean_ns": 90, "latency_max_ns": 100}
                }}
            }
        })
    }

    /// Checks the exposition's grammar: every sample belongs to the family
    /// declared just before it (HELP then TYPE), families are contiguous and
    /// unique, names and label syntax are valid.
    fn check_grammar(text: &str) -> Vec<(String, String, String)> {
        let mut seen = HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                let ty = lines.next().unwrap();
                let mut parts = ty.strip_prefix("# TYPE ").unwrap().split(' ');
                assert_eq!(parts.next(), Some(name.as_str()));
                assert!(matches!(parts.next(), Some("counter" | "gauge")), "{ty}");
                assert!(seen.insert(name.clone()), "family {name} twice");
                current = Some(name);
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                "{line}"
            );
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap().to_string()),
                None => (series, String::new()),
            };
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            assert_eq!(Some(name), current.as_deref(), "{line}");
            samples.push((name.to_string(), labels, value.to_string()));
        }
        samples
    }

    #[test]
    fn exposition_is_well_formed_and_complete() {
        let text = render(&sample_counters());
        let samples = check_grammar(&text);
        let has = |name: &str, labels: &str, value: &str| {
            samples
                .iter()
                .any(|(n, l, v)| n == name && l == labels && v == value)
        };
        assert!(has(
            "pearvisor_vcpu_exits_total",
            r#"vcpu="0",reason="io_in""#,
            "123"
        ));
        assert!(has("pearvisor_uptime_seconds", "", "12.345"));
        assert!(has("pearvisor_memory_bytes", "", "536870912"));
        assert!(has("pearvisor_boots_total", "", "2"));
        assert!(has("pearvisor_vcpus", "", "2"));
        assert!(has("pearvisor_vm_state", r#"state="Running""#, "1"));
        assert!(has("pearvisor_vm_state", r#"state="Paused""#, "0"));
        assert!(has(
            "pearvisor_device_read_bytes",
            r#"device="virtio-blk-0""#,
            "4096"
        ));
        assert!(has(
            "pearvisor_device_read_bytes",
            r#"device="weird \"dev\"\n""#,
            "1"
        ));
        assert!(has(
            "pearvisor_device_interrupts",
            r#"device="virtio-rng""#,
            "9"
        ));
        assert!(has(
            "pearvisor_device_fence_timeline_fences",
            r#"device="virtio-gpu",timeline="ctx1.ring0""#,
            "2"
        ));
        assert!(has(
            "pearvisor_device_fence_timeline_latency_max_ns",
            r#"device="virtio-gpu",timeline="device""#,
            "700"
        ));
        assert!(text.contains("# TYPE pearvisor_device_fence_timeline_fences counter"));
        assert!(text.contains("# TYPE pearvisor_device_fence_timeline_latency_mean_ns gauge"));
        assert!(!text.contains("reason=\"total\""));
        assert!(!text.contains("odd"), "non-numbers are left out");
        assert!(text.contains("# TYPE pearvisor_device_read_bytes counter"));
        assert!(text.contains("# TYPE pearvisor_device_queue_depth gauge"));
        assert!(text.contains("# TYPE pearvisor_uptime_seconds gauge"));
        assert!(text.contains("# TYPE pearvisor_vcpu_exits_total counter"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_vm_without_a_machine_still_renders() {
        let text = render(&json!({
            "state": "Created", "uptime_ms": 0, "boots": 0, "memory_bytes": 0,
            "vcpus": [], "devices": {}
        }));
        check_grammar(&text);
        assert!(text.contains("pearvisor_vcpus 0\n"));
        assert!(text.contains("pearvisor_uptime_seconds 0.000\n"));
        check_grammar(&render(&json!(null)));
    }
}
