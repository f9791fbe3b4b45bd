//! The API server against its OpenAPI document (`docs/api/openapi.yaml`):
//! every documented response is produced and its body validates against the
//! documented schema (a binary one: its content type and PNG signature),
//! undocumented paths are 404, other methods 405; the lifecycle over HTTP,
//! bad bodies, screenshots, resizes, concurrent clients, start and stop. A
//! fake machine stands in for KVM and a fake display for the GPU.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pv_api::client::{Client, Response};
use pv_api::{
    ApiError, ApiServer, Endpoint, GpuInventory, ResizeError, Resizes, ScreenshotError, Screenshots,
};
use pv_vmm::config::VmConfig;
use pv_vmm::control::{MachineOps, VmController};
use pv_vmm::vm::{VcpuMetrics, VmError, VmExitReason};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// The document and a validator for the subset of JSON Schema it uses.

fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.yaml");
        let text = std::fs::read_to_string(&path).expect("read docs/api/openapi.yaml");
        serde_yaml::from_str(&text).expect("openapi.yaml is valid YAML")
    })
}

/// The path prefix of the document's server, e.g. `/api/v1`.
fn base_path() -> String {
    let url = openapi()["servers"][0]["url"]
        .as_str()
        .expect("servers[0].url");
    let rest = url.split("://").nth(1).expect("an absolute URL");
    rest.find('/').map_or("", |i| &rest[i..]).to_string()
}

/// (full path, lower-case method, operation) for every documented operation.
fn operations() -> Vec<(String, String, &'static Value)> {
    let mut out = Vec::new();
    for (path, item) in openapi()["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            assert!(
                ["get", "put", "post", "delete", "patch"].contains(&method.as_str()),
                "unexpected key {method} under {path}"
            );
            out.push((format!("{}{path}", base_path()), method.clone(), op));
        }
    }
    out
}

/// Follows a `$ref` inside the document.
fn resolve(v: &'static Value) -> &'static Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            resolve(
                openapi()
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {r}")),
            )
        }
        None => v,
    }
}

const SCHEMA_KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "nullable",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "oneOf",
    "minimum",
    "maximum",
    "description",
    "example",
    "default",
];

/// Validates `value` against `schema`; the error says where and why.
fn validate(schema: &'static Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(schema);
    let obj = schema
        .as_object()
        .ok_or(format!("{at}: schema not an object"))?;
    for k in obj.keys() {
        assert!(
            SCHEMA_KEYWORDS.contains(&k.as_str()),
            "the validator does not know the keyword {k}"
        );
    }
    if value.is_null() && schema["nullable"] == json!(true) {
        return Ok(());
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        let matching = alternatives
            .iter()
            .filter(|s| validate(s, value, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!("{at}: {value} matches {matching} of oneOf"));
        }
    }
    if let Some(ty) = schema["type"].as_str() {
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => panic!("unknown type {other}"),
        };
        if !ok {
            return Err(format!("{at}: {value} is not of type {ty}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(v)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if v < min {
            return Err(format!("{at}: {v} < minimum {min}"));
        }
    }
    if let (Some(max), Some(v)) = (schema["maximum"].as_f64(), value.as_f64()) {
        if v > max {
            return Err(format!("{at}: {v} > maximum {max}"));
        }
    }
    if let Some(map) = value.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().expect("required names");
            if !map.contains_key(r) {
                return Err(format!("{at}: required property {r} missing"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, v) in map {
            let here = format!("{at}.{k}");
            match (
                props.and_then(|p| p.get(k)),
                &schema["additionalProperties"],
            ) {
                (Some(s), _) => validate(s, v, &here)?,
                (None, Value::Bool(false)) => {
                    return Err(format!("{at}: property {k} is not documented"))
                }
                (None, extra @ Value::Object(_)) => validate(extra, v, &here)?,
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            validate(items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The `Error` schema.
fn error_schema() -> &'static Value {
    &openapi()["components"]["schemas"]["Error"]
}

/// Checks a response against the documented operation `method path` (a
/// query string is not part of the path); returns the status.
fn check_documented(path: &str, method: &str, r: &Response) -> u16 {
    let base = base_path();
    let path = path.split('?').next().unwrap_or(path);
    let doc_path = path
        .strip_prefix(base.as_str())
        .expect("under the base path");
    let op = &openapi()["paths"][doc_path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let documented = resolve(&op["responses"][r.status.to_string()]);
    assert!(
        documented.is_object(),
        "{method} {path} answered {} which is not documented: {}",
        r.status,
        r.text()
    );
    match documented.get("content").and_then(Value::as_object) {
        None => assert!(r.body.is_empty(), "{method} {path}: unexpected body"),
        Some(content) => {
            let ct = r.header("content-type").unwrap_or("");
            let media = ct.split(';').next().unwrap_or("").trim();
            let entry = content
                .get(media)
                .unwrap_or_else(|| panic!("{method} {path}: content-type {ct} not documented"));
            if resolve(&entry["schema"])["format"] == "binary" {
                // Not JSON: the bytes must be what the content type says.
                assert_eq!(
                    resolve(&entry["schema"]),
                    &json!({"type": "string", "format": "binary"}),
                    "{method} {path}: a binary schema"
                );
                assert_eq!(media, "image/png", "the validator knows only PNG");
                assert_eq!(ct, "image/png", "{method} {path}: Content-Type");
                assert!(
                    r.body.starts_with(&pv_api::PNG_SIGNATURE),
                    "{method} {path} ({}): not a PNG: {:?}",
                    r.status,
                    &r.body[..r.body.len().min(16)]
                );
                return r.status;
            }
            let body = if media == "application/json" {
                r.json()
                    .unwrap_or_else(|| panic!("{method} {path}: not JSON"))
            } else {
                Value::String(r.text())
            };
            if let Err(e) = validate(&entry["schema"], &body, "body") {
                panic!("{method} {path} ({}): {e}\n{body:#}", r.status);
            }
        }
    }
    r.status
}

// ---------------------------------------------------------------------------
// A fake machine and a server around it.

/// A machine that does what it is told; `fail` makes every operation fail
/// (errors where the trait has them, panics where it has not).
#[derive(Default)]
struct FakeMachine {
    paused: AtomicBool,
    stopped: Mutex<Option<VmExitReason>>,
    presses: AtomicU32,
    obeys_button: AtomicBool,
    fail: AtomicBool,
    metrics: Vec<Arc<VcpuMetrics>>,
}

impl FakeMachine {
    fn new(vcpus: usize) -> Arc<Self> {
        Arc::new(Self {
            metrics: (0..vcpus).map(|_| Arc::default()).collect(),
            ..Default::default()
        })
    }
    fn failing(&self) -> bool {
        self.fail.load(Ordering::SeqCst)
    }
    fn stop_reason(&self) -> Option<VmExitReason> {
        self.stopped.lock().unwrap().clone()
    }
    /// Waits until the power button has been pressed (a shutdown is in
    /// flight); returns about when.
    fn wait_for_a_press(&self) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.presses.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the button was never pressed");
            std::thread::sleep(Duration::from_millis(5));
        }
        Instant::now()
    }
}

impl MachineOps for FakeMachine {
    fn pause(&self) -> Result<(), VmError> {
        if self.failing() {
            return Err(VmError::Pause);
        }
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn resume(&self) -> Result<(), VmError> {
        if self.failing() {
            return Err(VmError::Pause);
        }
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn press_power_button(&self) -> std::io::Result<()> {
        if self.failing() {
            return Err(std::io::Error::other("the GED is gone"));
        }
        self.presses.fetch_add(1, Ordering::SeqCst);
        if self.obeys_button.load(Ordering::SeqCst) {
            self.stop(VmExitReason::PowerOff);
        }
        Ok(())
    }
    fn stop(&self, reason: VmExitReason) {
        assert!(!self.failing(), "fake failure in stop");
        self.stopped.lock().unwrap().get_or_insert(reason);
    }
    fn stopped(&self) -> bool {
        assert!(!self.failing(), "fake failure in stopped");
        self.stopped.lock().unwrap().is_some()
    }
    fn vcpu_metrics(&self) -> Vec<Arc<VcpuMetrics>> {
        assert!(!self.failing(), "fake failure in vcpu_metrics");
        self.metrics.clone()
    }
    fn device_counters(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "virtio-blk-0".into(),
            json!({"read_bytes": 4096, "write_bytes": 512, "read_requests": 8,
                   "write_requests": 1, "flush_requests": 1, "discard_requests": 0,
                   "write_zeroes_requests": 0, "errors": 0,
                   "interrupts": 9, "notifications": 10}),
        );
        m.insert(
            "virtio-rng".into(),
            json!({"bytes": 64, "requests": 2, "interrupts": 2, "notifications": 2}),
        );
        m
    }
}

fn config() -> VmConfig {
    serde_json::from_value(json!({
        "kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img", "cmdline": "console=ttyS0",
        "cpus": 2, "memory": 536870912u64,
        "disks": [{"path": "/var/lib/root.img", "readonly": true, "id": "root"},
                  {"path": "/var/lib/data.img", "readonly": false}],
        "serial": {"file": "/tmp/serial.log"}, "rng": true, "reboot": true
    }))
    .unwrap()
}

fn gpus_ok() -> GpuInventory {
    Arc::new(|| {
        Ok(
            json!({"gpus": [{"index": 0, "name": "llvmpipe", "venus_ready": false}],
                  "loader_version": "1.3.239", "notes": []}),
        )
    })
}

fn gpus_err() -> GpuInventory {
    Arc::new(|| Err("GPU inventory not built yet".to_string()))
}

/// A `width`×`height` PNG of one colour.
fn png(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&rgba.repeat((width * height) as usize))
        .unwrap();
    writer.finish().unwrap();
    out
}

/// A display of four scanouts: 0 shows a red 4×3 picture, 1 nothing yet,
/// 2 panics, 3 gives bytes that are not a PNG; others do not exist.
fn fake_display() -> Screenshots {
    Arc::new(|display| match display {
        0 => Ok(png(4, 3, [255, 0, 0, 255])),
        1 => Err(ScreenshotError::NothingShown(
            "display 1 shows nothing yet".into(),
        )),
        2 => panic!("fake failure in the display"),
        3 => Ok(b"GIF89a".to_vec()),
        n => Err(ScreenshotError::NoSuchDisplay(format!(
            "display {n} does not exist (the VM has 4)"
        ))),
    })
}

/// The sizes [`fake_resizer`] passed on, as (display, width, height).
type Asked = Arc<Mutex<Vec<(u32, u32, u32)>>>;

/// Size requests for a display of four scanouts: 0 takes any, 1 has no GPU
/// connected (between the machines of a reboot), 2's GPU refuses, 3 takes
/// at most 4096 on a side; others do not exist.
fn fake_resizer() -> (Resizes, Asked) {
    let asked = Asked::default();
    let passed = asked.clone();
    let resizes: Resizes = Arc::new(move |display, width, height| match display {
        1 => Err(ResizeError::Unavailable(
            "cannot resize display 1: no GPU is connected to ask the guest".into(),
        )),
        2 => Err(ResizeError::Failed(
            "the GPU refused to resize display 2: no display 2".into(),
        )),
        3 if width.max(height) > 4096 => Err(ResizeError::BadSize(format!(
            "cannot resize display 3 to {width}x{height}: sizes go from 32 to 4096 on a side"
        ))),
        0 | 3 => {
            passed.lock().unwrap().push((display, width, height));
            Ok(())
        }
        n => Err(ResizeError::NoSuchDisplay(format!(
            "display {n} does not exist (the VM has 4)"
        ))),
    });
    (resizes, asked)
}

fn socket_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("pv-api-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

struct Vm {
    controller: Arc<VmController>,
    machine: Arc<FakeMachine>,
    server: Option<ApiServer>,
    client: Client,
}

impl Vm {
    /// A controller with a booted fake machine behind a server; no display.
    fn start(name: &str, grace: Duration, gpus: GpuInventory) -> Self {
        Self::with_display(name, grace, gpus, None, None)
    }

    /// The same with `screenshots` and `resizes` as its display.
    fn with_display(
        name: &str,
        grace: Duration,
        gpus: GpuInventory,
        screenshots: Option<Screenshots>,
        resizes: Option<Resizes>,
    ) -> Self {
        let controller = VmController::new(config(), grace);
        let machine = FakeMachine::new(2);
        machine.metrics[0].io_in.fetch_add(123, Ordering::Relaxed);
        machine.metrics[1]
            .mmio_write
            .fetch_add(7, Ordering::Relaxed);
        controller.attach(machine.clone());
        let path = socket_path(name);
        let server = ApiServer::start(&path, controller.clone(), gpus, screenshots, resizes)
            .expect("start the server");
        Self {
            controller,
            machine,
            server: Some(server),
            client: Client::new(path).timeout(Duration::from_secs(20)),
        }
    }

    fn get(&self, name: &str) -> Response {
        self.client.get(&format!("/api/v1/{name}")).expect("GET")
    }

    fn put(&self, name: &str, body: Option<&str>) -> Response {
        self.client
            .put(&format!("/api/v1/{name}"), body)
            .expect("PUT")
    }

    fn state(&self) -> String {
        let r = self.get("vm.info");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()["state"].as_str().unwrap().to_string()
    }
}

// ---------------------------------------------------------------------------
// The contract.

#[test]
fn every_documented_response_is_produced_and_matches_its_schema() {
    let (resizes, asked) = fake_resizer();
    let vm = Vm::with_display(
        "contract",
        Duration::from_millis(100),
        gpus_ok(),
        Some(fake_display()),
        Some(resizes),
    );
    let broken = Vm::start("contract-broken", Duration::from_millis(100), gpus_err());
    let mut seen: BTreeSet<(String, String, u16)> = BTreeSet::new();
    let mut record = |vm: &Vm, method: &str, name: &str, body: Option<&str>| -> Response {
        let path = format!("/api/v1/{name}");
        let r = vm
            .client
            .request(&method.to_uppercase(), &path, body)
            .unwrap();
        let status = check_documented(&path, method, &r);
        let path = path.split('?').next().unwrap_or(&path).to_string();
        seen.insert((path, method.to_string(), status));
        r
    };

    // Queries.
    let r = record(&vm, "get", "vmm.ping", None);
    assert_eq!(r.json().unwrap()["pid"], std::process::id());
    assert_eq!(r.json().unwrap()["version"], pv_api::VERSION);
    let r = record(&vm, "get", "vm.info", None);
    let info = r.json().unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(
        (info["vcpus"].as_u64(), info["boots"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(info["config"]["disks"][0]["id"], "root");
    assert_eq!(info["config"]["serial"]["file"], "/tmp/serial.log");
    let r = record(&vm, "get", "vm.counters", None);
    let counters = r.json().unwrap();
    assert_eq!(counters["vcpus"][0]["exits"]["io_in"], 123);
    assert_eq!(counters["devices"]["virtio-blk-0"]["read_bytes"], 4096);
    let r = record(&vm, "get", "vm.metrics", None);
    let text = r.text();
    assert!(text.contains("pearvisor_vcpu_exits_total{vcpu=\"0\",reason=\"io_in\"} 123\n"));
    assert!(text.contains("pearvisor_vcpu_exits_total{vcpu=\"1\",reason=\"mmio_write\"} 7\n"));
    assert!(text.contains("pearvisor_device_read_bytes{device=\"virtio-blk-0\"} 4096\n"));
    assert!(text.contains("# TYPE pearvisor_memory_bytes gauge\n"));
    assert!(text.contains("pearvisor_memory_bytes 536870912\n"));
    assert!(text.contains("# TYPE pearvisor_uptime_seconds gauge\n"));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let r = record(&vm, "get", "vmm.gpus", None);
    assert_eq!(r.json().unwrap()["gpus"][0]["name"], "llvmpipe");
    let r = record(&broken, "get", "vmm.gpus", None);
    assert_eq!(r.error_message(), "GPU inventory not built yet");

    // Screenshots: the display's bytes as they are, its errors, bad queries.
    let red = png(4, 3, [255, 0, 0, 255]);
    for query in ["", "?display=0", "?display=00", "?", "?&display=0&"] {
        let r = record(&vm, "get", &format!("vm.screenshot{query}"), None);
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        assert_eq!(r.body, red, "{query}: the PNG as the display gave it");
    }
    let mut reader = png::Decoder::new(std::io::Cursor::new(&red[..]))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (4, 3));
    assert_eq!(&pixels[..4], [255, 0, 0, 255]);
    for (query, message) in [
        (
            "display=x",
            "invalid display 'x': expected a display number (0, 1, …)",
        ),
        (
            "display=-1",
            "invalid display '-1': expected a display number (0, 1, …)",
        ),
        (
            "display=99999999999",
            "invalid display '99999999999': the number is too large",
        ),
        (
            "display=",
            "the query parameter display needs a value: display=0, display=1, …",
        ),
        (
            "display=0&display=0",
            "the query parameter display is given more than once",
        ),
        (
            "scale=2",
            "unknown query parameter 'scale': vm.screenshot takes only display",
        ),
    ] {
        let r = record(&vm, "get", &format!("vm.screenshot?{query}"), None);
        assert_eq!(
            (r.status, r.error_message().as_str()),
            (400, message),
            "{query}"
        );
    }
    let r = record(&vm, "get", "vm.screenshot?display=7", None);
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (404, "display 7 does not exist (the VM has 4)")
    );
    let r = record(&vm, "get", "vm.screenshot?display=1", None);
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (409, "display 1 shows nothing yet")
    );
    let r = record(&broken, "get", "vm.screenshot", None);
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (409, "the VM has no display: start it with --gpu")
    );
    let r = record(&vm, "get", "vm.screenshot?display=2", None);
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (500, "the vm.screenshot handler failed")
    );
    let r = record(&vm, "get", "vm.screenshot?display=3", None);
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (500, "display 3 did not give a PNG image")
    );
    assert_eq!(vm.state(), "Running", "a failing display stops nothing");
    // The query parameter is documented as the server reads it.
    let params = &openapi()["paths"]["/vm.screenshot"]["get"]["parameters"];
    assert_eq!(params.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (&params[0]["name"], &params[0]["in"], &params[0]["required"]),
        (&json!("display"), &json!("query"), &json!(false))
    );
    assert_eq!(
        (
            &params[0]["schema"]["type"],
            &params[0]["schema"]["minimum"],
            &params[0]["schema"]["maximum"],
            &params[0]["schema"]["default"]
        ),
        (&json!("integer"), &json!(0), &json!(u32::MAX), &json!(0))
    );

    // Resizes: passed on to the display, its refusals with their statuses,
    // bad bodies; every accepted body follows the documented schema.
    for (body, asked_for) in [
        (r#"{"width": 800, "height": 600}"#, (0, 800, 600)),
        (
            r#"{"display": 0, "width": 32, "height": 8192}"#,
            (0, 32, 8192),
        ),
        (
            r#" {"height": 32, "width": 4096, "display": 3} "#,
            (3, 4096, 32),
        ),
    ] {
        let sent: Value = serde_json::from_str(body).unwrap();
        validate(resize_schema(), &sent, "vm.resize body").unwrap();
        let r = record(&vm, "put", "vm.resize", Some(body));
        assert_eq!(r.status, 204, "{body}: {}", r.text());
        assert_eq!(asked.lock().unwrap().pop(), Some(asked_for), "{body}");
    }
    for (body, documented_body, status, message) in [
        (
            r#"{"width": 10, "height": 600}"#,
            false,
            400,
            "invalid width 10: each side must be within 32..=8192 pixels",
        ),
        (
            r#"{"width": 800, "height": 600, "depth": 24}"#,
            false,
            400,
            "unknown field 'depth': vm.resize takes display, width and height",
        ),
        (
            r#"{"display": 3, "width": 8192, "height": 600}"#,
            true,
            400,
            "cannot resize display 3 to 8192x600: sizes go from 32 to 4096 on a side",
        ),
        (
            r#"{"display": 7, "width": 800, "height": 600}"#,
            true,
            404,
            "display 7 does not exist (the VM has 4)",
        ),
        (
            r#"{"display": 1, "width": 800, "height": 600}"#,
            true,
            409,
            "cannot resize display 1: no GPU is connected to ask the guest",
        ),
        (
            r#"{"display": 2, "width": 800, "height": 600}"#,
            true,
            500,
            "the GPU refused to resize display 2: no display 2",
        ),
    ] {
        let sent: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            validate(resize_schema(), &sent, "vm.resize body").is_ok(),
            documented_body,
            "{body}"
        );
        let r = record(&vm, "put", "vm.resize", Some(body));
        assert_eq!(
            (r.status, r.error_message().as_str()),
            (status, message),
            "{body}"
        );
    }
    let r = record(&vm, "put", "vm.resize", None);
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (
            400,
            r#"vm.resize needs a body: {"width": W, "height": H} or {"display": N, "width": W, "height": H}"#
        )
    );
    let r = record(
        &broken,
        "put",
        "vm.resize",
        Some(r#"{"width": 800, "height": 600}"#),
    );
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (409, "the VM has no display: start it with --gpu")
    );
    assert!(
        asked.lock().unwrap().is_empty(),
        "nothing refused was passed on"
    );
    assert_eq!(vm.state(), "Running", "a failing resize stops nothing");

    // Counters and metrics fail (500) when the machine does; the server lives on.
    broken.machine.fail.store(true, Ordering::SeqCst);
    record(&broken, "get", "vm.counters", None);
    record(&broken, "get", "vm.metrics", None);

    // Every action: 400 (a field), 413 (too large), 500 (the machine fails),
    // 409 (wrong state) and 204, in an order the state machine allows.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    for action in [
        "vm.pause",
        "vm.resume",
        "vm.reboot",
        "vm.power-button",
        "vm.shutdown",
        "vm.resize",
    ] {
        let r = record(&vm, "put", action, Some(r#"{"force": true}"#));
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("'force'"), "{}", r.text());
        assert_eq!(record(&vm, "put", action, Some(&big)).status, 413);
    }
    // pause: 500 then 204 then 409.
    assert_eq!(record(&broken, "put", "vm.pause", None).status, 500);
    assert_eq!(broken.state(), "Running", "a failed pause changes nothing");
    assert_eq!(record(&vm, "put", "vm.pause", None).status, 204);
    assert_eq!(record(&vm, "put", "vm.pause", None).status, 409);
    // resume: 500 (machine fails), 204, then 409.
    broken.machine.fail.store(false, Ordering::SeqCst);
    assert_eq!(broken.put("vm.pause", None).status, 204);
    broken.machine.fail.store(true, Ordering::SeqCst);
    assert_eq!(record(&broken, "put", "vm.resume", None).status, 500);
    broken.machine.fail.store(false, Ordering::SeqCst);
    assert_eq!(record(&broken, "put", "vm.resume", None).status, 204);
    assert_eq!(record(&broken, "put", "vm.resume", None).status, 409);
    // power-button: 409 while paused, 500 when the button fails, 204.
    assert_eq!(record(&vm, "put", "vm.power-button", None).status, 409);
    assert_eq!(vm.put("vm.resume", None).status, 204);
    broken.machine.fail.store(true, Ordering::SeqCst);
    assert_eq!(record(&broken, "put", "vm.power-button", None).status, 500);
    assert_eq!(record(&vm, "put", "vm.power-button", None).status, 204);
    assert_eq!(vm.machine.presses.load(Ordering::SeqCst), 1);
    // reboot and shutdown: 500 when the machine cannot be stopped.
    assert_eq!(record(&broken, "put", "vm.reboot", None).status, 500);
    assert_eq!(record(&broken, "put", "vm.shutdown", None).status, 500);
    broken.machine.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        broken.state(),
        "Running",
        "the VM survives its handlers failing"
    );
    assert_eq!(record(&vm, "put", "vm.reboot", Some("{}")).status, 204);
    assert_eq!(vm.machine.stop_reason(), Some(VmExitReason::Reset));
    assert_eq!(record(&vm, "put", "vm.shutdown", Some(" {} ")).status, 204);
    assert_eq!(record(&vm, "put", "vm.shutdown", None).status, 409);
    assert_eq!(record(&vm, "put", "vm.reboot", None).status, 409);
    let r = record(
        &vm,
        "put",
        "vm.resize",
        Some(r#"{"width": 800, "height": 600}"#),
    );
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (409, "cannot resize a display of the VM: it is Shutdown")
    );
    record(&vm, "get", "vm.info", None);
    record(&vm, "get", "vm.counters", None);

    // Documented 405s: another method, checked against the documented one.
    for (path, method, op) in operations() {
        if op["responses"].get("405").is_none() {
            continue;
        }
        let other = if method == "get" { "PUT" } else { "GET" };
        let r = vm.client.request(other, &path, None).unwrap();
        assert_eq!(r.header("allow"), Some(method.to_uppercase().as_str()));
        assert_eq!(check_documented(&path, &method, &r), 405);
        seen.insert((path, method, 405));
    }

    // Every documented (path, method, status) was produced.
    let mut documented = BTreeSet::new();
    for (path, method, op) in operations() {
        for status in op["responses"].as_object().expect("responses").keys() {
            documented.insert((path.clone(), method.clone(), status.parse::<u16>().unwrap()));
        }
    }
    let missing: Vec<_> = documented.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "documented but never produced: {missing:?}"
    );
    assert!(seen.is_subset(&documented));
}

/// The documented body of `vm.resize`.
fn resize_schema() -> &'static Value {
    let body = resolve(&openapi()["paths"]["/vm.resize"]["put"]["requestBody"]);
    assert_eq!(body["required"], json!(true), "vm.resize needs its body");
    &body["content"]["application/json"]["schema"]
}

#[test]
fn the_resize_body_is_documented_as_the_server_reads_it() {
    let schema = resolve(resize_schema());
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], json!(false));
    assert_eq!(schema["required"], json!(["width", "height"]));
    let props = &schema["properties"];
    let fields: BTreeSet<&str> = props
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(["display", "width", "height"]));
    assert_eq!(
        (
            &props["display"]["type"],
            &props["display"]["minimum"],
            &props["display"]["maximum"],
            &props["display"]["default"]
        ),
        (&json!("integer"), &json!(0), &json!(u32::MAX), &json!(0))
    );
    for side in ["width", "height"] {
        assert_eq!(
            (
                &props[side]["type"],
                &props[side]["minimum"],
                &props[side]["maximum"]
            ),
            (
                &json!("integer"),
                &json!(pv_api::MIN_DISPLAY_SIDE),
                &json!(pv_api::MAX_DISPLAY_SIDE)
            ),
            "{side}"
        );
    }
}

#[test]
fn resize_is_passed_on_only_while_running() {
    let path = socket_path("resize-states");
    let controller = VmController::new(config(), Duration::from_millis(100));
    let (resizes, asked) = fake_resizer();
    let server = ApiServer::start(
        &path,
        controller.clone(),
        gpus_ok(),
        Some(fake_display()),
        Some(resizes),
    )
    .unwrap();
    let client = Client::new(&path).timeout(Duration::from_secs(20));
    let resize = |width: u32| {
        let r = client
            .put(
                "/api/v1/vm.resize",
                Some(&format!(r#"{{"width": {width}, "height": 600}}"#)),
            )
            .unwrap();
        (r.status, r.error_message())
    };
    let conflict = |state: &str| {
        (
            409,
            format!("cannot resize a display of the VM: it is {state}"),
        )
    };
    assert_eq!(resize(800), conflict("Created"), "before the first boot");
    controller.attach(FakeMachine::new(1));
    assert_eq!(resize(801).0, 204);
    controller.pause().unwrap();
    assert_eq!(resize(802), conflict("Paused"));
    controller.resume().unwrap();
    assert_eq!(resize(803).0, 204);
    controller.detach(true);
    assert_eq!(resize(804), conflict("Shutdown"));
    assert_eq!(*asked.lock().unwrap(), [(0, 801, 600), (0, 803, 600)]);
    server.stop();
}

#[test]
fn hostile_resize_bodies_are_400_and_reach_nothing() {
    let (resizes, asked) = fake_resizer();
    let vm = Vm::with_display(
        "resize-bodies",
        Duration::from_millis(100),
        gpus_ok(),
        None,
        Some(resizes),
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let long = format!(r#"{{"width": "{}", "height": 600}}"#, "9".repeat(60_000));
    for (body, expect) in [
        ("{", "malformed JSON"),
        (r#"{"width": 800, "height": 600"#, "malformed JSON"),
        (r#"{"width": 800, "height": 600} []"#, "malformed JSON"),
        (r#"{"width": 1e400, "height": 600}"#, "malformed JSON"),
        (deep.as_str(), "malformed JSON"),
        ("[800, 600]", "must be a JSON object"),
        ("\"800x600\"", "must be a JSON object"),
        ("800", "must be a JSON object"),
        ("{}", "missing field 'width'"),
        (r#"{"height": 600}"#, "missing field 'width'"),
        (r#"{"width": 800}"#, "missing field 'height'"),
        (
            r#"{"width": -800, "height": 600}"#,
            "invalid width -800: each side must be within 32..=8192",
        ),
        (
            r#"{"width": 800, "height": -1}"#,
            "invalid height -1: each side must be within 32..=8192",
        ),
        (
            r#"{"width": 0, "height": 0}"#,
            "invalid width 0: each side must be within 32..=8192",
        ),
        (
            r#"{"width": 8193, "height": 600}"#,
            "invalid width 8193: each side must be within 32..=8192",
        ),
        (
            r#"{"width": 4294967296, "height": 600}"#,
            "invalid width 4294967296: each side must be within 32..=8192",
        ),
        (
            r#"{"width": 99999999999999999999999, "height": 600}"#,
            "invalid width 1e+23: expected a whole number of pixels within 32..=8192",
        ),
        (
            r#"{"width": 800.0, "height": 600}"#,
            "invalid width 800.0: expected a whole number of pixels within 32..=8192",
        ),
        (
            r#"{"width": 800, "height": 6e2}"#,
            "invalid height 600.0: expected a whole number of pixels within 32..=8192",
        ),
        (
            r#"{"width": "800", "height": 600}"#,
            r#"invalid width "800": expected a whole number"#,
        ),
        (
            r#"{"width": null, "height": 600}"#,
            "invalid width null: expected a whole number",
        ),
        (
            r#"{"width": {"px": 800}, "height": 600}"#,
            r#"invalid width {"px":800}: expected a whole number"#,
        ),
        (long.as_str(), r#"invalid width "9999999999"#),
        (
            r#"{"display": -1, "width": 800, "height": 600}"#,
            "invalid display -1: expected a display number",
        ),
        (
            r#"{"display": 0.5, "width": 800, "height": 600}"#,
            "invalid display 0.5: expected a display number",
        ),
        (
            r#"{"display": "1", "width": 800, "height": 600}"#,
            r#"invalid display "1": expected a display number"#,
        ),
        (
            r#"{"display": 4294967296, "width": 800, "height": 600}"#,
            "invalid display 4294967296: the number is too large",
        ),
        (
            r#"{"width": 800, "height": 600, "scale": 2}"#,
            "unknown field 'scale': vm.resize takes display, width and height",
        ),
        (
            r#"{"width": 800, "height": 600, "": 2}"#,
            "unknown field '': vm.resize takes display, width and height",
        ),
        (
            r#"{"width": 800, "height": 600, "width": 1024}"#,
            "the field 'width' is given more than once",
        ),
        (
            r#"{"display": 0, "display": 7, "width": 800, "height": 600}"#,
            "the field 'display' is given more than once",
        ),
    ] {
        let r = vm.put("vm.resize", Some(body));
        let shown = &body[..body.len().min(60)];
        assert_eq!(r.status, 400, "{shown}: {}", r.text());
        validate(error_schema(), &r.json().unwrap(), "400 body").unwrap();
        assert!(
            r.error_message().contains(expect),
            "{shown}: {}",
            r.error_message()
        );
        assert!(r.error_message().len() < 400, "{shown}: a short message");
        // What the server refuses, the document does not allow either (but
        // a repeated field, which JSON Schema does not see).
        if let Ok(sent) = serde_json::from_str::<Value>(body) {
            if !expect.contains("more than once") {
                assert!(
                    validate(resize_schema(), &sent, "body").is_err(),
                    "{shown} is a documented body"
                );
            }
        }
    }
    assert!(
        asked.lock().unwrap().is_empty(),
        "nothing reached the display"
    );
    assert_eq!(vm.state(), "Running");
}

#[test]
fn the_document_and_the_server_list_the_same_endpoints() {
    let documented: BTreeSet<(String, String)> = operations()
        .into_iter()
        .map(|(p, m, _)| (p, m.to_uppercase()))
        .collect();
    let served: BTreeSet<(String, String)> = Endpoint::ALL
        .iter()
        .map(|e| (e.path(), e.method().to_string()))
        .collect();
    assert_eq!(documented, served);
    assert_eq!(base_path(), pv_api::API_PREFIX);
    assert_eq!(openapi()["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    assert_eq!(openapi()["info"]["version"], pv_api::VERSION);
}

#[test]
fn undocumented_paths_are_404_with_an_error_body() {
    let vm = Vm::start("notfound", Duration::from_millis(100), gpus_ok());
    let mut candidates: Vec<String> = vec![
        "/".into(),
        "/api".into(),
        "/api/v1".into(),
        "/api/v1/".into(),
        "/api/v1/vm.create".into(),
        "/api/v1/vm.boot".into(),
        "/api/v1/vmm.shutdown".into(),
        "/api/v1/vm.snapshot".into(),
        "/metrics".into(),
        "/api/v1/vm.info%00".into(),
        "/api/v1/../v1/vm.info".into(),
    ];
    for (path, _, _) in operations() {
        let name = path.rsplit('/').next().unwrap().to_string();
        candidates.push(format!("{path}/"));
        candidates.push(format!("{path}x"));
        candidates.push(format!("{path}/extra"));
        candidates.push(path.to_uppercase());
        candidates.push(format!("/api/v2/{name}"));
        candidates.push(format!("/{name}"));
        candidates.push(path.replace("/api/v1/", "/api/v1//"));
    }
    let documented: BTreeSet<String> = operations().into_iter().map(|(p, _, _)| p).collect();
    for path in candidates {
        assert!(!documented.contains(&path), "{path} is documented");
        for method in ["GET", "PUT", "POST", "DELETE"] {
            let r = vm.client.request(method, &path, None).unwrap();
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            validate(error_schema(), &r.json().unwrap(), "404 body").unwrap();
            assert!(
                r.error_message().contains("no such endpoint"),
                "{}",
                r.text()
            );
        }
    }
    // A query string does not change the endpoint.
    assert_eq!(vm.get("vm.info?verbose=1").status, 200);
    assert_eq!(vm.get("vm.screenshot?display=0").status, 409, "no display");
    assert_eq!(vm.state(), "Running");
}

#[test]
fn other_methods_are_405_with_allow() {
    let vm = Vm::start("methods", Duration::from_millis(100), gpus_ok());
    for (path, method, _) in operations() {
        for other in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            if other.eq_ignore_ascii_case(&method) {
                continue;
            }
            let r = vm.client.request(other, &path, Some("{}")).unwrap();
            assert_eq!(r.status, 405, "{other} {path}: {}", r.text());
            assert_eq!(r.header("allow"), Some(method.to_uppercase().as_str()));
            validate(error_schema(), &r.json().unwrap(), "405 body").unwrap();
        }
    }
    assert_eq!(vm.state(), "Running", "no 405 reached the VM");
}

// ---------------------------------------------------------------------------
// Behaviour.

#[test]
fn lifecycle_over_http() {
    let vm = Vm::start("lifecycle", Duration::from_millis(300), gpus_ok());
    assert_eq!(vm.state(), "Running");

    let r = vm.put("vm.pause", None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert!(vm.machine.paused.load(Ordering::SeqCst));
    assert_eq!(vm.state(), "Paused");
    let r = vm.put("vm.pause", None);
    assert_eq!(r.status, 409);
    assert_eq!(r.error_message(), "cannot pause the VM: it is Paused");
    assert_eq!(vm.get("vm.counters").json().unwrap()["state"], "Paused");

    assert_eq!(vm.put("vm.resume", None).status, 204);
    assert!(!vm.machine.paused.load(Ordering::SeqCst));
    assert_eq!(vm.state(), "Running");
    let r = vm.put("vm.resume", None);
    assert_eq!(
        (r.status, r.error_message().as_str()),
        (409, "cannot resume the VM: it is Running")
    );

    // Reboot stops this machine with Reset and asks the binary for another.
    assert_eq!(vm.put("vm.reboot", None).status, 204);
    assert_eq!(vm.machine.stop_reason(), Some(VmExitReason::Reset));
    assert!(vm.controller.take_reboot_request());
    vm.controller.detach(false);
    let second = FakeMachine::new(2);
    vm.controller.attach(second.clone());
    let info = vm.get("vm.info").json().unwrap();
    assert_eq!(
        (info["state"].as_str(), info["boots"].as_u64()),
        (Some("Running"), Some(2))
    );

    // A guest that ignores the button: shutdown stops it after the grace period.
    assert_eq!(vm.put("vm.power-button", None).status, 204);
    assert_eq!(second.presses.load(Ordering::SeqCst), 1);
    assert_eq!(second.stop_reason(), None);
    let t = Instant::now();
    assert_eq!(vm.put("vm.shutdown", None).status, 204);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(second.presses.load(Ordering::SeqCst), 2);
    assert_eq!(second.stop_reason(), Some(VmExitReason::Stopped));
    assert_eq!(vm.state(), "Shutdown");

    for (action, verb) in [
        ("vm.pause", "pause"),
        ("vm.resume", "resume"),
        ("vm.reboot", "reboot"),
        ("vm.power-button", "press the power button of"),
        ("vm.shutdown", "shut down"),
    ] {
        let r = vm.put(action, None);
        assert_eq!(r.status, 409, "{action}");
        assert_eq!(
            r.error_message(),
            format!("cannot {verb} the VM: it is Shutdown")
        );
    }
    assert_eq!(vm.get("vmm.ping").status, 200, "the VMM still answers");
}

#[test]
fn a_guest_that_obeys_the_button_shuts_down_at_once() {
    let vm = Vm::start("obeys", Duration::from_secs(30), gpus_ok());
    vm.machine.obeys_button.store(true, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(vm.put("vm.shutdown", None).status, 204);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(vm.machine.stop_reason(), Some(VmExitReason::PowerOff));
    assert_eq!(vm.state(), "Shutdown");
}

#[test]
fn bad_bodies_are_400_with_a_message_and_the_vm_keeps_running() {
    let vm = Vm::start("bodies", Duration::from_millis(100), gpus_ok());
    for (body, expect) in [
        ("{", "malformed JSON"),
        ("{\"a\": }", "malformed JSON"),
        ("not json", "malformed JSON"),
        ("{} {}", "malformed JSON"),
        ("[]", "must be empty or a JSON object"),
        ("\"pause\"", "must be empty or a JSON object"),
        ("null", "must be empty or a JSON object"),
        (r#"{"vcpus": 4}"#, "unknown field 'vcpus'"),
        (r#"{"": 1}"#, "unknown field ''"),
    ] {
        for action in ["vm.pause", "vm.resume", "vm.shutdown"] {
            let r = vm.put(action, Some(body));
            assert_eq!(r.status, 400, "{action} {body}: {}", r.text());
            validate(error_schema(), &r.json().unwrap(), "400 body").unwrap();
            assert!(
                r.error_message().contains(expect),
                "{action} {body}: {}",
                r.error_message()
            );
        }
        assert_eq!(vm.state(), "Running");
    }
    // Empty and {} are fine.
    assert_eq!(vm.put("vm.pause", Some("{}")).status, 204);
    assert_eq!(vm.put("vm.resume", Some("\n \t")).status, 204);
    // Raw garbage instead of HTTP: the connection closes, the server lives.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(vm.client.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 400"),
            "{out:?}"
        );
    }
    assert_eq!(vm.state(), "Running");
}

#[test]
fn eight_and_more_concurrent_clients_get_correct_answers() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 20;
    let vm = Vm::with_display(
        "concurrent",
        Duration::from_millis(100),
        gpus_ok(),
        Some(fake_display()),
        None,
    );
    let red = Arc::new(png(4, 3, [255, 0, 0, 255]));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let answers = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = vm.client.clone();
            let barrier = barrier.clone();
            let answers = answers.clone();
            let red = red.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..ROUNDS {
                    match (i + round) % 7 {
                        0 => {
                            let r = client.get("/api/v1/vmm.ping").unwrap();
                            assert_eq!(r.status, 200);
                            assert_eq!(r.json().unwrap()["pid"], std::process::id());
                        }
                        1 => {
                            let r = client.get("/api/v1/vm.info").unwrap();
                            assert_eq!(r.status, 200);
                            let v = r.json().unwrap();
                            assert_eq!(v["state"], "Running");
                            assert_eq!(v["config"]["memory"], 536870912u64);
                        }
                        2 => {
                            let r = client.get("/api/v1/vm.counters").unwrap();
                            assert_eq!(r.status, 200);
                            assert_eq!(r.json().unwrap()["vcpus"][0]["exits"]["io_in"], 123);
                        }
                        3 => {
                            let r = client.get("/api/v1/vm.metrics").unwrap();
                            assert_eq!(r.status, 200);
                            assert!(r.text().contains("pearvisor_boots_total 1\n"));
                        }
                        5 => {
                            let r = client.get("/api/v1/vm.screenshot").unwrap();
                            assert_eq!(r.status, 200);
                            assert_eq!(r.body, *red);
                        }
                        4 => {
                            let r = client.put("/api/v1/vm.resume", None).unwrap();
                            assert_eq!(r.status, 409);
                            assert_eq!(r.error_message(), "cannot resume the VM: it is Running");
                        }
                        _ => {
                            let r = client.get(&format!("/api/v1/nothing-{i}")).unwrap();
                            assert_eq!(r.status, 404);
                            assert!(r.error_message().contains(&format!("nothing-{i}")));
                        }
                    }
                    answers.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client got a wrong answer");
    }
    assert_eq!(answers.load(Ordering::SeqCst), CLIENTS * ROUNDS);
}

#[test]
fn a_slow_shutdown_does_not_hold_up_other_clients() {
    let vm = Vm::start("slow", Duration::from_millis(2500), gpus_ok());
    let client = vm.client.clone();
    let shutdown = std::thread::spawn(move || client.put("/api/v1/vm.shutdown", None).unwrap());
    vm.machine.wait_for_a_press();
    let t = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let client = vm.client.clone();
            std::thread::spawn(move || client.get("/api/v1/vmm.ping").unwrap().status)
        })
        .collect();
    for th in threads {
        assert_eq!(th.join().unwrap(), 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "pings waited for the shutdown: {:?}",
        t.elapsed()
    );
    assert_eq!(shutdown.join().unwrap().status, 204);
    assert_eq!(vm.state(), "Shutdown");
}

#[test]
fn stop_delivers_the_answer_to_a_request_in_flight_then_removes_the_socket() {
    let mut vm = Vm::start("stop", Duration::from_millis(700), gpus_ok());
    let path = vm.client.socket().to_path_buf();
    let client = vm.client.clone();
    let shutdown = std::thread::spawn(move || client.put("/api/v1/vm.shutdown", None));
    let pressed = vm.machine.wait_for_a_press();
    vm.server.take().unwrap().stop();
    assert!(
        pressed.elapsed() >= Duration::from_millis(600),
        "stop waited for the request in flight: {:?}",
        pressed.elapsed()
    );
    let r = shutdown.join().unwrap().expect("the answer arrives");
    assert_eq!(r.status, 204);
    assert!(!path.exists(), "the socket file is removed");
    let e = vm.client.get("/api/v1/vm.info").unwrap_err();
    assert!(e.to_string().starts_with("no PearVisor API at"), "{e}");
}

#[test]
fn start_refuses_a_live_socket_and_replaces_a_stale_one() {
    let path = socket_path("start");
    let controller = VmController::new(config(), Duration::from_millis(100));
    let first = ApiServer::start(&path, controller.clone(), gpus_ok(), None, None).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let e = match ApiServer::start(&path, controller.clone(), gpus_ok(), None, None) {
        Err(e) => e,
        Ok(_) => panic!("a second server on a live socket"),
    };
    assert!(matches!(e, ApiError::InUse(_)), "{e}");
    assert_eq!(
        e.to_string(),
        format!("an API server already answers at {}", path.display())
    );
    assert_eq!(first.path(), path);
    // The first one is untouched by the refusal.
    let r = Client::new(&path).get("/api/v1/vm.info").unwrap();
    assert_eq!(r.json().unwrap()["state"], "Created");
    drop(first); // Drop stops it too.
    assert!(!path.exists());

    // A socket file nobody listens on is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let second = ApiServer::start(&path, controller.clone(), gpus_ok(), None, None).unwrap();
    assert_eq!(
        Client::new(&path).get("/api/v1/vmm.ping").unwrap().status,
        200
    );
    second.stop();

    // Anything else at the path is left alone.
    std::fs::write(&path, "precious").unwrap();
    let e = match ApiServer::start(&path, controller, gpus_ok(), None, None) {
        Err(e) => e,
        Ok(_) => panic!("started over a regular file"),
    };
    assert!(matches!(e, ApiError::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    std::fs::remove_file(&path).unwrap();
    let e = match ApiServer::start(
        "/nonexistent-dir/pv.sock",
        VmController::new(config(), Duration::ZERO),
        gpus_ok(),
        None,
        None,
    ) {
        Err(e) => e,
        Ok(_) => panic!("started in a missing directory"),
    };
    assert_eq!(e.to_string(), "cannot listen on /nonexistent-dir/pv.sock");
}

#[test]
fn the_reference_documents_every_path() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/README.md");
    let text = std::fs::read_to_string(readme).expect("read docs/api/README.md");
    for (path, method, op) in operations() {
        let heading = format!("### `{} {path}`", method.to_uppercase());
        assert!(text.contains(&heading), "no section {heading}");
        let curl = if method == "get" {
            format!("curl --unix-socket /run/pv.sock http://localhost{path}")
        } else {
            format!("curl --unix-socket /run/pv.sock -X PUT http://localhost{path}")
        };
        assert!(text.contains(&curl), "no example `{curl}`");
        let section = &text[text.find(&heading).unwrap()..];
        let section = &section[..section[4..].find("\n### ").map_or(section.len(), |i| i + 4)];
        for status in op["responses"].as_object().unwrap().keys() {
            assert!(
                section.contains(&format!("`{status}`")),
                "{heading} does not list status {status}"
            );
        }
    }
    for schema in openapi()["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
    {
        assert!(
            text.contains(&format!("`{schema}`")),
            "schema {schema} not mentioned"
        );
    }
}
