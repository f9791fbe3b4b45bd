//! `pv-bench-display`: frame latency of the web viewer, into a real browser
//! (headless Chromium through chromedriver).
//!
//! Two measurements, each with one clock per interval:
//!
//! 1. **Viewer path, on this host** (no VM): the display store gets a frame
//!    the way the virtio-gpu worker hands it over on RESOURCE_FLUSH
//!    (`ScanoutSink::update`), at time t0; the page records when the
//!    WebSocket message with it arrives and when the canvas holds it (a
//!    hook on the canvas' `putImageData`/`drawImage` reads a marker pixel).
//!    t0 is this process' wall clock, the page's times are
//!    `performance.timeOrigin + performance.now()`: the same host clock.
//!    Three kinds of frame: a 32x32 damaged rectangle (sent raw), a whole
//!    1280x800 frame as PNG (the default encoding), and raw.
//!
//! 2. **Guest round trip, end to end** (nested machine where there is no
//!    hardware virtualization): the page sends a key (the viewer's own
//!    `send`) at t0; the guest reads it from the keyboard's evdev node and
//!    writes a marker block to /dev/fb0 (one `write`, which the fbdev
//!    emulation flushes through virtio-gpu); the page records when the
//!    canvas shows it. One clock (the browser's). The guest also reports how
//!    long its script took from seeing the key to finishing the write (its
//!    monotonic clock), and the page times HTTP round trips through the
//!    forwarded port as the network baseline.
//!
//! `pv-bench-display [--frames N] [--rounds N] [--skip-host] [--skip-guest]
//! [--pearvisor PATH]`. Prints tables (Markdown) and a final `BENCH {json}`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use pv_display::{Display, FrameView, PixelFormat, Rect, ScanoutSink, WebViewer};
use pv_image::ImageBuilder;
use pv_testkit::webdriver::{Browser, BrowserOptions};
use pv_testkit::{host_virtualization, HostVirt, LiveRun, NestedMachine};
use serde_json::Value;

#[derive(Parser)]
#[command(
    about = "Frame latency of the web viewer: display store → browser canvas, and guest round trips"
)]
struct Args {
    /// Frames per kind in the viewer-path measurement.
    #[arg(long, default_value_t = 60)]
    frames: usize,
    /// Key → frame round trips through the guest.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Skip the viewer-path measurement on this host.
    #[arg(long)]
    skip_host: bool,
    /// Skip the guest round trips.
    #[arg(long)]
    skip_guest: bool,
    /// The pearvisor binary (default: next to this program).
    #[arg(long)]
    pearvisor: Option<PathBuf>,
}

/// The page hook: the arrival time of every binary WebSocket message, and
/// every change of the marker pixel (4, 4) of the canvas to a marker
/// colour (blue 0x5a; red and green carry the frame number), with the time
/// the canvas got it and the time of the next animation frame.
const HOOK: &str = r#"
if (window.pvHook) return true;
if (typeof ws === 'undefined' || !ws || ws.readyState !== 1) return false;
window.pvHook = true;
window.pvArrivals = [];
window.pvPaints = [];
const now = () => performance.timeOrigin + performance.now();
const orig = ws.onmessage;
ws.onmessage = (ev) => { if (typeof ev.data !== 'string') window.pvArrivals.push(now()); orig(ev); };
let last = -1;
const check = (ctx) => {
  if (!ctx.canvas || ctx.canvas.id !== 'display-0') return;
  const d = ctx.getImageData(4, 4, 1, 1).data;
  if (d[2] !== 0x5a) return;
  const k = d[0] | (d[1] << 8);
  if (k === last) return;
  last = k;
  const entry = [k, now(), null];
  window.pvPaints.push(entry);
  requestAnimationFrame(() => { entry[2] = now(); });
};
const P = CanvasRenderingContext2D.prototype;
const put = P.putImageData, draw = P.drawImage;
P.putImageData = function (...a) { const r = put.apply(this, a); check(this); return r; };
P.drawImage = function (...a) { const r = draw.apply(this, a); check(this); return r; };
window.pvKey = (code) => {
  const t = now();
  send({type: 'key', code, pressed: true});
  send({type: 'key', code, pressed: false});
  return t;
};
return true;
"#;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// Median, 95th percentile, minimum and maximum of `v` (ms).
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    n: usize,
    median: f64,
    p95: f64,
    min: f64,
    max: f64,
}

fn stats(v: &[f64]) -> Stats {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Stats::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        n: v.len(),
        median: at(0.5),
        p95: at(0.95),
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn row(name: &str, s: Stats) -> String {
    format!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
        s.median, s.p95, s.min, s.max, s.n
    )
}

fn json_stats(s: Stats) -> Value {
    serde_json::json!({"median_ms": round(s.median), "p95_ms": round(s.p95), "min_ms": round(s.min), "max_ms": round(s.max), "n": s.n})
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The marker paints the page recorded: (frame, drawn at, next animation frame).
fn paints(b: &Browser) -> Result<Vec<(u32, f64, Option<f64>)>> {
    let v = b.script("return window.pvPaints || [];")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e[0].as_u64()? as u32, e[1].as_f64()?, e[2].as_f64())))
                .collect()
        })
        .unwrap_or_default())
}

fn arrivals(b: &Browser) -> Result<Vec<f64>> {
    let v = b.script("return window.pvArrivals || [];")?;
    Ok(v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default())
}

fn install_hook(b: &Browser, w: u32, h: u32) -> Result<()> {
    b.wait_script(
        "the viewer's canvas",
        &format!(
            "const c = document.getElementById('display-0'); return !!c && c.width === {w} && c.height === {h};"
        ),
        Duration::from_secs(120),
    )?;
    b.wait_script("the page hook", HOOK, Duration::from_secs(30))?;
    Ok(())
}

/// Waits for a paint of marker `k` drawn after `after` (epoch ms).
fn wait_paint(b: &Browser, k: u32, after: f64, timeout: Duration) -> Result<(f64, Option<f64>)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = paints(b)?
            .into_iter()
            .find(|&(pk, t, _)| pk == k && t >= after)
        {
            // Give the animation frame a moment to land.
            if p.2.is_none() {
                std::thread::sleep(Duration::from_millis(40));
                if let Some(p2) = paints(b)?
                    .into_iter()
                    .find(|&(pk, t, _)| pk == k && t >= after)
                {
                    return Ok((p2.1, p2.2));
                }
            }
            return Ok((p.1, p.2));
        }
        if Instant::now() >= deadline {
            bail!("frame {k} never reached the canvas");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// 1. The viewer path on this host.
// ---------------------------------------------------------------------------

const HOST_W: u32 = 1280;
const HOST_H: u32 = 800;

/// A B8G8R8X8 picture with gradients and noise (so PNG has work to do).
fn picture(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            let noise = ((x * 7 + y * 13 + seed) ^ (x.wrapping_mul(y))) as u8;
            data.extend_from_slice(&[noise, (y * 255 / h) as u8, (x * 255 / w) as u8, 0]);
        }
    }
    data
}

/// Paints the 32x32 marker block for frame `k` into a B8G8R8X8 picture.
fn mark(data: &mut [u8], stride: usize, k: u32) {
    for y in 0..32 {
        for x in 0..32 {
            let i = y * stride + x * 4;
            data[i..i + 4].copy_from_slice(&[0x5a, (k >> 8) as u8, k as u8, 0]);
        }
    }
}

struct PathSamples {
    to_arrival: Vec<f64>,
    to_drawn: Vec<f64>,
    to_animation_frame: Vec<f64>,
}

fn viewer_path(frames: usize) -> Result<Vec<(String, PathSamples)>> {
    let display = Arc::new(Display::new(1));
    display.set_mode(0, Some((HOST_W, HOST_H)));
    let stride = (HOST_W * 4) as usize;
    let mut pics = [picture(HOST_W, HOST_H, 1), picture(HOST_W, HOST_H, 2)];
    let push = |data: &[u8], damage: Rect| {
        let view = FrameView {
            width: HOST_W,
            height: HOST_H,
            stride: HOST_W * 4,
            format: PixelFormat::B8G8R8X8,
            data,
        };
        display.update(0, &view, damage);
    };
    push(&pics[0], Rect::new(0, 0, HOST_W, HOST_H));
    let viewer = WebViewer::start("127.0.0.1:0".parse()?, display.clone(), None)?;
    let b = Browser::start_with(&BrowserOptions {
        window: (1400, 1000),
    })?;
    let cases = [
        ("32x32 rectangle, raw", "auto", Rect::new(0, 0, 32, 32)),
        (
            "1280x800 frame, PNG",
            "auto",
            Rect::new(0, 0, HOST_W, HOST_H),
        ),
        (
            "1280x800 frame, raw",
            "raw",
            Rect::new(0, 0, HOST_W, HOST_H),
        ),
    ];
    let mut out = Vec::new();
    // The page's clock against ours (both read the host's wall clock; this
    // checks it): the offset, and how well a WebDriver round trip pins it.
    b.navigate(&format!("http://{}/", viewer.local_addr()))?;
    let mut offsets = Vec::new();
    for _ in 0..10 {
        let t0 = now_ms();
        let js = b
            .script("return performance.timeOrigin + performance.now();")?
            .as_f64()
            .context("no time from the page")?;
        let t1 = now_ms();
        offsets.push((js - (t0 + t1) / 2.0, (t1 - t0) / 2.0));
    }
    offsets.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (offset, within) = offsets[0];
    println!("clock check: page − bench = {offset:+.2} ms (± {within:.2} ms)");
    let mut k = 1u32;
    for (name, encoding, damage) in cases {
        eprintln!("bench: viewer path, {name} ({frames} frames)");
        b.navigate(&format!(
            "http://{}/?encoding={encoding}",
            viewer.local_addr()
        ))?;
        install_hook(&b, HOST_W, HOST_H)?;
        let mut starts = Vec::new();
        let mut samples = PathSamples {
            to_arrival: Vec::new(),
            to_drawn: Vec::new(),
            to_animation_frame: Vec::new(),
        };
        for i in 0..frames {
            let pic = &mut pics[i % 2];
            mark(pic, stride, k);
            let t0 = now_ms();
            push(pic, damage);
            // Frame numbers are unique here: no need to compare clocks.
            let (drawn, raf) = wait_paint(&b, k, f64::NEG_INFINITY, Duration::from_secs(20))
                .with_context(|| format!("{name}: frame {i}"))?;
            starts.push((t0, drawn, raf));
            k += 1;
            // Frames apart, as a guest's flushes are.
            std::thread::sleep(Duration::from_millis(20 + (i as u64 * 7) % 30));
        }
        let arr = arrivals(&b)?;
        for (t0, drawn, raf) in starts {
            if let Some(a) = arr.iter().copied().find(|&a| a >= t0 && a <= drawn) {
                samples.to_arrival.push(a - t0);
            }
            samples.to_drawn.push(drawn - t0);
            if let Some(r) = raf {
                samples.to_animation_frame.push(r - t0);
            }
        }
        out.push((name.to_string(), samples));
    }
    drop(b);
    viewer.stop();
    Ok(out)
}

// ---------------------------------------------------------------------------
// 2. Guest round trips.
// ---------------------------------------------------------------------------

const GUEST_W: u32 = 640;
const GUEST_H: u32 = 480;
const L1_PORT: u16 = 8080;
const KEY_A: u32 = 30;
const KEY_Q: u32 = 16;

/// The guest's side: wait for key presses on the keyboard's evdev node;
/// for each, write marker block k (1..8, in turn) to /dev/fb0 in one
/// write, then report how long that took on its monotonic clock.
const GUEST_SCRIPT: &str = r#"
echo 0 > /sys/class/graphics/fbcon/cursor_blink
for b in /sys/class/vtconsole/vtcon*/bind; do echo 0 > "$b"; done
dd if=/dev/zero of=/dev/fb0 bs=4096 count=300 2>/dev/null
echo "PV-LAT-STRIDE=$(cat /sys/class/graphics/fb0/stride)"
kbd=
n=0
while [ -z "$kbd" ] && [ $n -lt 50 ]; do
    for d in /sys/class/input/event*; do
        [ "$(cat "$d/device/name" 2>/dev/null)" = "PearVisor Keyboard" ] && kbd="/dev/input/${d##*/}"
    done
    [ -n "$kbd" ] && [ -e "$kbd" ] || { kbd=; sleep 0.1; n=$((n + 1)); }
done
# Monotonic nanoseconds into $ns without a fork: the third line of
# /proc/timer_list ("now at N nsecs").
mono() { { read -r _; read -r _; read -r _ _ ns _; } < /proc/timer_list; }
# CLOCK_REALTIME - CLOCK_MONOTONIC, to put evdev's (realtime) event times
# on the monotonic clock.
real_off=$(awk '/get_time: *ktime_get_real$/ { f = 1; next } f && /\.offset:/ { print $2; exit }' /proc/timer_list)
echo "PV-LAT-REAL-OFFSET=$real_off"
exec 4<"$kbd"
echo "PV-LAT-READY"
k=0
while :; do
    set -- $(dd bs=24 count=1 <&4 2>/dev/null | od -An -v -tu4)
    [ $# -eq 6 ] || break
    [ $(($5 & 65535)) -eq 1 ] && [ "$6" -eq 1 ] || continue
    mono; t1=$ns
    [ $(($5 >> 16)) -eq 16 ] && break
    k=$((k % 8 + 1))
    dd if=/pv-lat/c$k of=/dev/fb0 bs=40960 count=1 2>/dev/null
    mono; t2=$ns
    key=$(( ($1 + $2 * 4294967296) * 1000000000 + $3 * 1000 - ${real_off:-0} ))
    echo "PV-LAT k=$k event_to_script_us=$(( (t1 - key) / 1000 )) script_us=$(( (t2 - t1) / 1000 ))"
done
echo "PV-LAT-DONE"
"#;

/// Marker block k: 16 rows of 2560 bytes (640 pixels) of (k, 0, 0x5a).
fn guest_marker(k: u32) -> Vec<u8> {
    [0x5a, 0, k as u8, 0].repeat((GUEST_W * 16) as usize)
}

struct GuestSamples {
    round_trip: Vec<f64>,
    to_arrival: Vec<f64>,
    arrival_to_drawn: Vec<f64>,
    guest_script: Vec<f64>,
    guest_event_to_script: Vec<f64>,
    http_rtt: Vec<f64>,
    nested: bool,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program")?;
    Ok(me.with_file_name(name))
}

fn guest_round_trips(rounds: usize, pearvisor: &Path) -> Result<GuestSamples> {
    let mut builder = ImageBuilder::new()
        .quiet(true)
        .gpu_userspace(pv_image::GpuUserspace::None)
        .test_script("latency", GUEST_SCRIPT);
    for k in 1..=8 {
        builder = builder.extra_file(format!("/pv-lat/c{k}"), guest_marker(k), 0o644);
    }
    let image = builder.build().context("cannot build the guest image")?;
    let host_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let run_line = format!(
        "$PV run --kernel $L2/vmlinuz --initrd $L2/initrd.img \
         --cmdline 'console=ttyS0 quiet loglevel=1 panic=-1 pv.test=latency' \
         --gpu width={GUEST_W},height={GUEST_H} --display web=$WEB </dev/null\necho \"PV-RC=$?\"\n"
    );
    let nested = !matches!(host_virtualization(), HostVirt::Hardware);
    let _dir;
    let mut run = if nested {
        eprintln!("bench: no hardware virtualization here; the guest runs in the nested machine");
        _dir = None;
        NestedMachine::new()
            .binary(pearvisor)
            .guest_image(&image)
            .quiet(true)
            .timeout(Duration::from_secs(120 + rounds as u64 * 10))
            .forward_tcp(host_port, L1_PORT)
            .script(format!(
                "PV=pearvisor\nL2=/l2\nWEB=0.0.0.0:{L1_PORT}\n{run_line}"
            ))
            .spawn()?
    } else {
        let dir = std::env::temp_dir().join(format!("pv-bench-display-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&image.kernel, dir.join("vmlinuz"))?;
        std::fs::copy(&image.initrd, dir.join("initrd.img"))?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&run_line)
            .env("PV", pearvisor)
            .env("L2", &dir)
            .env("WEB", format!("127.0.0.1:{host_port}"));
        _dir = Some(RemoveDir(dir));
        LiveRun::direct(cmd, Duration::from_secs(120 + rounds as u64 * 10))?
    };
    run.wait_for("PV-LAT-READY", Duration::from_secs(300))?;
    let b = Browser::start_with(&BrowserOptions {
        window: (1024, 900),
    })?;
    b.navigate(&format!("http://127.0.0.1:{host_port}/"))?;
    install_hook(&b, GUEST_W, GUEST_H)?;

    // The network baseline: HTTP round trips through the forward.
    let http = b.script_async(
        "const done = arguments[arguments.length - 1];
         (async () => {
           const out = [];
           for (let i = 0; i < 20; i++) {
             const t = performance.now();
             await fetch('/pv-bench-ping', {cache: 'no-store'});
             out.push(performance.now() - t);
           }
           done(out);
         })();",
    )?;
    let http_rtt: Vec<f64> = http
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();

    let mut samples = GuestSamples {
        round_trip: Vec::new(),
        to_arrival: Vec::new(),
        arrival_to_drawn: Vec::new(),
        guest_script: Vec::new(),
        guest_event_to_script: Vec::new(),
        http_rtt,
        nested,
    };
    let mut sent = Vec::new();
    for i in 0..rounds {
        let k = (i % 8) as u32 + 1;
        let t0 = b
            .script(&format!("return pvKey({KEY_A});"))?
            .as_f64()
            .context("pvKey returned no time")?;
        let (drawn, _) =
            wait_paint(&b, k, t0, Duration::from_secs(30)).with_context(|| format!("round {i}"))?;
        sent.push((t0, drawn));
        samples.round_trip.push(drawn - t0);
        // Let the guest's script print and go back to reading.
        run.wait_until(
            &format!("round {i} reported"),
            Duration::from_secs(30),
            |log| log.matches("PV-LAT k=").count() > i,
        )?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let arr = arrivals(&b)?;
    for (t0, drawn) in sent {
        if let Some(a) = arr.iter().copied().find(|&a| a >= t0 && a <= drawn) {
            samples.to_arrival.push(a - t0);
            samples.arrival_to_drawn.push(drawn - a);
        }
    }
    b.script(&format!("return pvKey({KEY_Q});"))?;
    drop(b);
    let out = run.finish()?;
    if !out.log.contains("PV-LAT-DONE") {
        bail!("the guest did not finish; log tail:\n{}", out.tail(30));
    }
    let field = |key: &str| -> Vec<f64> {
        out.log
            .lines()
            .filter(|l| l.starts_with("PV-LAT k="))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.parse::<f64>().ok())
            })
            .map(|us| us / 1e3)
            .collect()
    };
    samples.guest_script = field("script_us=");
    // Without the realtime offset the event times cannot be compared.
    if !out.log.contains("PV-LAT-REAL-OFFSET=\n") {
        samples.guest_event_to_script = field("event_to_script_us=");
    }
    Ok(samples)
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut json = serde_json::Map::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "BENCH-HOST {} cpu(s), load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let header = "| | median ms | p95 ms | min ms | max ms | n |\n|---|---|---|---|---|---|";
    if !args.skip_host {
        let results = viewer_path(args.frames)?;
        println!("\n## Viewer path on this host: ScanoutSink::update → browser canvas\n");
        println!("{header}");
        let mut host = serde_json::Map::new();
        for (name, s) in &results {
            let (a, d, r) = (
                stats(&s.to_arrival),
                stats(&s.to_drawn),
                stats(&s.to_animation_frame),
            );
            println!(
                "{}",
                row(
                    &format!("{name}: update → WebSocket message in the page"),
                    a
                )
            );
            println!("{}", row(&format!("{name}: update → canvas drawn"), d));
            println!(
                "{}",
                row(&format!("{name}: update → next animation frame"), r)
            );
            host.insert(
                name.clone(),
                serde_json::json!({"to_arrival": json_stats(a), "to_drawn": json_stats(d),
                                   "to_animation_frame": json_stats(r)}),
            );
        }
        json.insert("viewer_path".into(), Value::Object(host));
    }
    if !args.skip_guest {
        let pearvisor = match &args.pearvisor {
            Some(p) => p.clone(),
            None => sibling("pearvisor")?,
        };
        if !pearvisor.is_file() {
            bail!(
                "{} not found: build it (cargo build --release -p pearvisor) or pass --pearvisor",
                pearvisor.display()
            );
        }
        let s = guest_round_trips(args.rounds, &pearvisor)?;
        let where_ = if s.nested {
            "nested machine (QEMU/TCG L1)"
        } else {
            "this host"
        };
        println!("\n## Guest round trip ({where_}): key sent by the page → guest writes /dev/fb0 → canvas drawn\n");
        println!("{header}");
        let (rt, ar, ad, gs, http) = (
            stats(&s.round_trip),
            stats(&s.to_arrival),
            stats(&s.arrival_to_drawn),
            stats(&s.guest_script),
            stats(&s.http_rtt),
        );
        println!("{}", row("round trip: key sent → canvas drawn", rt));
        println!(
            "{}",
            row("key sent → frame's WebSocket message in the page", ar)
        );
        println!("{}", row("WebSocket message → canvas drawn", ad));
        let es = stats(&s.guest_event_to_script);
        println!(
            "{}",
            row(
                "guest: key event in the kernel → script has it (guest clock)",
                es
            )
        );
        println!(
            "{}",
            row("guest script: key read → fb0 write done (guest clock)", gs)
        );
        println!(
            "{}",
            row("HTTP round trip page → viewer (network baseline)", http)
        );
        json.insert(
            "guest_round_trip".into(),
            serde_json::json!({"nested": s.nested, "round_trip": json_stats(rt), "to_arrival": json_stats(ar),
                               "arrival_to_drawn": json_stats(ad), "guest_script": json_stats(gs), "guest_event_to_script": json_stats(es),
                               "http_rtt": json_stats(http)}),
        );
    }
    println!("\nBENCH {}", Value::Object(json));
    Ok(())
}
