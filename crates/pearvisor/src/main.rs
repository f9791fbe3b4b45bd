//! The `pearvisor` binary: parses the command line, prepares the terminal,
//! builds VMs, serves the control API and maps the VM's end to an exit
//! status; `pearvisor ctl` is the API's command-line client.

mod cli;
mod console;
mod ctl;
mod gpu_host;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Parser;
use pv_api::{ApiServer, GpuInventory, ResizeError, Resizes, ScreenshotError, Screenshots};
use pv_display::{Display, DisplayError, InputEvent, InputSink, WebViewer};
use pv_vmm::config::{parse_size, BlockParams, DisplayMode, GpuParams, SerialMode, VmConfig};
use pv_vmm::control::VmController;
use pv_vmm::hypervisor::kvm::HostKvm;
use pv_vmm::vm::{ConsoleInput, DisplaySetup, Machine, VmExitReason};

use cli::{Cli, Command, GpuRuntimeCommand, ImageCommand, RunArgs};

/// Command line used with the default guest image.
const DEFAULT_IMAGE_CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1";
/// The packages whose versions `pearvisor gpu-runtime build` prints.
const GPU_RUNTIME_SHOWN: &[&str] = &["libvirglrenderer1", "mesa-vulkan-drivers", "libc6"];
/// Command line used with a user-supplied kernel and no --cmdline.
const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet";

/// Guest RAM when booting the default image without --memory: its GPU
/// userspace (about 230 MB unpacked) must fit in the initramfs, which
/// Linux caps at half of RAM.
const DEFAULT_IMAGE_MEMORY: u64 = 1 << 30;

// `vm.resize` checks (and documents) the sizes the display takes.
const _: () = assert!(
    pv_api::MIN_DISPLAY_SIDE == pv_display::store::MIN_REQUEST_DIMENSION
        && pv_api::MAX_DISPLAY_SIDE == pv_display::store::MAX_REQUEST_DIMENSION
);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            console::restore_terminal();
            eprintln!("pearvisor: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Ctl(args) => Ok(ctl::run(&args)),
        Command::Image(ImageCommand::Build(args)) => {
            let image = pv_image::build_default_image(pv_image::ImageOptions {
                gpu_userspace: args.level(),
                ..Default::default()
            })?;
            println!("kernel: {}", image.kernel.display());
            println!("initrd: {}", image.initrd.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Path(args)) => {
            let image = pv_image::build_default_image(pv_image::ImageOptions {
                gpu_userspace: args.level(),
                ..Default::default()
            })?;
            println!("{} {}", image.kernel.display(), image.initrd.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::GpuRuntime(GpuRuntimeCommand::Build(args)) => {
            let rt = pv_image::build_gpu_runtime(pv_image::GpuRuntimeOptions {
                cache_dir: None,
                full: args.full,
                quiet: args.quiet,
            })
            .context("cannot build the GPU runtime")?;
            println!("{}", rt.root.display());
            for package in GPU_RUNTIME_SHOWN {
                println!("{package} {}", rt.version_of(package).unwrap_or("-"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::GpuRuntime(GpuRuntimeCommand::Path) => match pv_image::cached_gpu_runtime(None) {
            Some(rt) => {
                println!("{}", rt.root.display());
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("pearvisor: no GPU runtime; run `pearvisor gpu-runtime build`");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Gpu(args) => {
            let inventory = pv_gpu::inventory().context("cannot list the host's GPUs")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&inventory)?);
            } else {
                print!("{}", pv_gpu::render_text(&inventory));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Host => {
            let host = HostKvm::detect();
            println!("{}", host.describe());
            Ok(if host == HostKvm::Hardware {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

/// Merges the JSON config file (if any) with the flags.
fn build_config(args: &RunArgs) -> Result<VmConfig> {
    let mut config: Option<VmConfig> = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file '{}'", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("invalid config file '{}'", path.display()))?,
            )
        }
        None => None,
    };
    let kernel: PathBuf;
    let mut default_image = false;
    let mut initrd = args.initrd.clone();
    let mut cmdline = args.cmdline.clone();
    match (&args.kernel, &config) {
        (Some(k), _) => kernel = k.clone(),
        (None, Some(c)) => kernel = c.kernel.clone(),
        (None, None) => {
            let image = pv_image::build_default_image(Default::default())
                .context("cannot build the default guest image (pass --kernel to boot your own)")?;
            kernel = image.kernel;
            initrd = initrd.or(Some(image.initrd));
            cmdline = cmdline.or(Some(DEFAULT_IMAGE_CMDLINE.to_string()));
            default_image = true;
        }
    }
    let c = config.get_or_insert_with(|| VmConfig {
        kernel: kernel.clone(),
        initrd: None,
        cmdline: DEFAULT_CMDLINE.to_string(),
        cpus: 1,
        memory: 512 << 20,
        disks: Vec::new(),
        serial: SerialMode::Tty,
        rng: true,
        reboot: true,
        gpu: None,
        display: DisplayMode::Headless,
    });
    c.kernel = kernel;
    if initrd.is_some() {
        c.initrd = initrd;
    }
    if let Some(cmdline) = cmdline {
        c.cmdline = cmdline;
    }
    if let Some(cpus) = args.cpus {
        c.cpus = cpus;
    }
    if let Some(m) = &args.memory {
        c.memory = parse_size(m).context("bad --memory")?;
    } else if default_image {
        c.memory = c.memory.max(DEFAULT_IMAGE_MEMORY);
    }
    for (i, d) in args.disk.iter().enumerate() {
        c.disks
            .push(BlockParams::parse(d).with_context(|| format!("bad --disk #{}: '{d}'", i + 1))?);
    }
    if let Some(g) = &args.gpu {
        c.gpu = Some(GpuParams::parse(g).with_context(|| format!("bad --gpu '{g}'"))?);
    }
    if let Some(d) = &args.display {
        c.display = d.parse().context("bad --display")?;
    }
    if let Some(s) = &args.serial {
        c.serial = s.parse().context("bad --serial")?;
    }
    if args.no_reboot {
        c.reboot = false;
    }
    if args.no_rng {
        c.rng = false;
    }
    let config = config.unwrap_or_else(|| unreachable!("set above"));
    config.validate()?;
    Ok(config)
}

/// The host side of a GPU's screens: the store every scanout goes to, the
/// web viewer or the windows when asked for, and the input path back to the
/// guest (kept across reboots; each new machine's input devices are
/// connected in).
struct Screens {
    display: Arc<Display>,
    input: Arc<InputSwitch>,
    takes_input: bool,
    web: Option<WebViewer>,
    #[cfg(feature = "window")]
    window: Option<pv_display::WindowViewer>,
}

impl Screens {
    fn start(config: &VmConfig, controller: &Arc<VmController>) -> Result<Option<Self>> {
        let Some(gpu) = &config.gpu else {
            return Ok(None);
        };
        // The host copies of the scanouts count against the GPU's memory cap too.
        let display = Arc::new(Display::with_pixel_budget(
            gpu.displays,
            gpu.max_hostmem / 4,
        ));
        let input = Arc::new(InputSwitch::default());
        #[cfg(feature = "window")]
        let mut window = None;
        let web = match &config.display {
            DisplayMode::Headless => None,
            DisplayMode::Web(addr) => {
                let viewer = WebViewer::start(
                    *addr,
                    display.clone(),
                    Some(input.clone() as Arc<dyn InputSink>),
                )
                .with_context(|| format!("cannot start the web viewer on {addr}"))?;
                eprintln!(
                    "pearvisor: the guest's screen is at http://{}/",
                    viewer.local_addr()
                );
                Some(viewer)
            }
            #[cfg(feature = "window")]
            DisplayMode::Window => {
                window = Some(
                    pv_display::WindowViewer::start(
                        display.clone(),
                        Some(input.clone() as Arc<dyn InputSink>),
                        Some(power_off_on_last_close(controller.clone())),
                    )
                    .context("cannot open the guest's windows")?,
                );
                eprintln!(
                    "pearvisor: the guest's screens are shown in windows; closing the last one powers the guest off"
                );
                None
            }
            #[cfg(not(feature = "window"))]
            DisplayMode::Window => {
                let _ = controller;
                bail!("{NO_WINDOW_FEATURE}")
            }
        };
        Ok(Some(Self {
            display,
            input,
            takes_input: config.display.takes_input(),
            web,
            #[cfg(feature = "window")]
            window,
        }))
    }

    fn setup(&self) -> DisplaySetup {
        DisplaySetup {
            sink: self.display.clone(),
            with_input: self.takes_input,
            resizes: Some(self.display.clone()),
        }
    }

    /// PNG screenshots for the API's `vm.screenshot`.
    fn screenshots(&self) -> Screenshots {
        let display = self.display.clone();
        Arc::new(move |n| {
            display.screenshot(n).map_err(|e| match e {
                DisplayError::NoSuchDisplay { .. } => ScreenshotError::NoSuchDisplay(e.to_string()),
                _ => ScreenshotError::NothingShown(e.to_string()),
            })
        })
    }

    /// Size requests for the API's `vm.resize`, passed to the guest through
    /// the running machine's GPU.
    fn resizes(&self) -> Resizes {
        let display = self.display.clone();
        Arc::new(move |n, width, height| {
            display.request_size(n, width, height).map_err(|e| match e {
                DisplayError::NoSuchDisplay { .. } => ResizeError::NoSuchDisplay(e.to_string()),
                DisplayError::BadSize { .. } => ResizeError::BadSize(e.to_string()),
                DisplayError::NoResizer(_) => ResizeError::Unavailable(e.to_string()),
                _ => ResizeError::Failed(e.to_string()),
            })
        })
    }

    fn stop(self) {
        if let Some(web) = self.web {
            web.stop();
        }
        #[cfg(feature = "window")]
        if let Some(window) = self.window {
            window.stop();
        }
    }
}

#[cfg(not(feature = "window"))]
const NO_WINDOW_FEATURE: &str =
    "--display window is not built into this pearvisor (the `window` feature is off): use --display web or headless";

/// Closing the last window does what closing QEMU's window does: the guest
/// is asked to power off (the ACPI power button) and, if it has not after
/// the shutdown grace period, the VM is stopped (`VmController::shutdown`,
/// on its own thread: it waits for the guest).
#[cfg(feature = "window")]
fn power_off_on_last_close(controller: Arc<VmController>) -> pv_display::window::OnLastClosed {
    Box::new(move || {
        log::info!("the last window was closed: asking the guest to power off");
        let spawned = std::thread::Builder::new()
            .name("window-shutdown".into())
            .spawn(move || {
                if let Err(e) = controller.shutdown() {
                    log::warn!("closing the last window: cannot shut the VM down: {e}");
                }
            });
        if let Err(e) = spawned {
            log::error!("closing the last window: cannot start the shutdown: {e}");
        }
    })
}

/// `--display window` needs a display server and the `window` feature:
/// checked before anything boots.
fn check_window_display(config: &VmConfig) -> Result<()> {
    if config.gpu.is_none() || config.display != DisplayMode::Window {
        return Ok(());
    }
    window_possible()
}

#[cfg(feature = "window")]
fn window_possible() -> Result<()> {
    Ok(pv_display::window::check_display_server()?)
}

#[cfg(not(feature = "window"))]
fn window_possible() -> Result<()> {
    bail!("{NO_WINDOW_FEATURE}")
}

/// Viewer input goes to whichever machine is running now.
#[derive(Default)]
struct InputSwitch(Mutex<Option<Arc<dyn InputSink>>>);

impl InputSwitch {
    fn connect(&self, sink: Option<Arc<dyn InputSink>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    }
}

impl InputSink for InputSwitch {
    fn send(&self, event: InputEvent) {
        if let Some(sink) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            sink.send(event);
        }
    }
}

/// The host GPU inventory served at `vmm.gpus`.
/// The host's GPUs, asked for by the API's `vmm.gpus`. The Vulkan loader,
/// the drivers and NVML open device files and issue their own ioctls,
/// which the API thread's syscall filter forbids: each request is answered
/// on a thread started by the unfiltered spawner.
fn gpu_inventory() -> GpuInventory {
    Arc::new(|| {
        let lookup = pv_seccomp::spawn("gpu-inventory", || {
            let inventory = pv_gpu::inventory().map_err(|e| e.to_string())?;
            serde_json::to_value(inventory).map_err(|e| e.to_string())
        })
        .map_err(|e| format!("cannot start the GPU inventory: {e}"))?;
        lookup
            .join()
            .unwrap_or_else(|_| Err("the GPU inventory panicked".to_string()))
    })
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let config = build_config(&args)?;
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    check_window_display(&config)?;
    // Before any thread that runs filtered starts.
    pv_seccomp::set_mode(args.seccomp);
    gpu_host::prepare(&config)?;
    let host = HostKvm::detect();
    if host != HostKvm::Hardware && !args.skip_host_check {
        bail!(
            "this host cannot run a stock Linux guest: {}",
            host.describe()
        );
    }
    let controller = VmController::new(config.clone(), args.shutdown_grace);
    let screens = Screens::start(&config, &controller)?;
    let api = match &args.api_socket {
        Some(path) => Some(
            ApiServer::start(
                path,
                controller.clone(),
                gpu_inventory(),
                screens.as_ref().map(Screens::screenshots),
                screens.as_ref().map(Screens::resizes),
            )
            .context("cannot start the API server")?,
        ),
        None => None,
    };
    let input = ConsoleInput::default();
    let terminal = match config.serial {
        SerialMode::Tty => Some(console::attach_stdin(input.clone())),
        _ => None,
    };
    let result = run_machines(&config, &controller, &input, screens.as_ref());
    if let Some(screens) = screens {
        screens.stop();
    }
    controller.detach(true);
    // Gracefully: a `vm.shutdown` in flight gets its answer before we exit.
    if let Some(api) = api {
        api.stop();
    }
    drop(terminal);
    result
}

/// Boots the VM, and boots it again on each reboot the configuration or an
/// API request allows; the controller drives each machine.
fn run_machines(
    config: &VmConfig,
    controller: &VmController,
    input: &ConsoleInput,
    screens: Option<&Screens>,
) -> Result<ExitCode> {
    let setup = screens.map(Screens::setup);
    loop {
        let out: Box<dyn Write + Send> = match &config.serial {
            SerialMode::Tty => Box::new(std::io::stdout()),
            SerialMode::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open the serial log '{}'", p.display()))?,
            ),
            SerialMode::None => Box::new(std::io::sink()),
        };
        let machine = Machine::build(config, out, input.clone(), setup.as_ref())?;
        if let Some(screens) = screens {
            screens.input.connect(machine.input());
        }
        controller.attach(Arc::new(machine.handle()));
        let reason = machine.run();
        let reboot_requested = controller.take_reboot_request();
        let restart =
            matches!(reason, Ok(VmExitReason::Reset)) && (config.reboot || reboot_requested);
        controller.detach(!restart);
        match reason? {
            VmExitReason::PowerOff => {
                log::info!("guest powered off");
                return Ok(ExitCode::SUCCESS);
            }
            VmExitReason::Stopped => {
                log::info!("VM stopped");
                return Ok(ExitCode::SUCCESS);
            }
            VmExitReason::Reset if restart => {
                log::info!("guest rebooted; restarting it");
                continue;
            }
            VmExitReason::Reset => {
                log::info!("guest rebooted; exiting (--no-reboot)");
                return Ok(ExitCode::SUCCESS);
            }
            VmExitReason::Crash(why) => {
                console::restore_terminal();
                bail!("the guest stopped abnormally: {why}")
            }
        }
    }
}

#[cfg(all(test, feature = "window"))]
mod tests {
    use super::*;
    use pv_vmm::control::{MachineOps, VmState};
    use pv_vmm::vm::{VcpuMetrics, VmError};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    /// A machine whose guest powers off when the power button is pressed.
    #[derive(Default)]
    struct Obedient {
        pressed: AtomicBool,
    }

    impl MachineOps for Obedient {
        fn pause(&self) -> Result<(), VmError> {
            Ok(())
        }
        fn resume(&self) -> Result<(), VmError> {
            Ok(())
        }
        fn press_power_button(&self) -> std::io::Result<()> {
            self.pressed.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn stop(&self, _: VmExitReason) {}
        fn stopped(&self) -> bool {
            self.pressed.load(Ordering::SeqCst)
        }
        fn vcpu_metrics(&self) -> Vec<Arc<VcpuMetrics>> {
            Vec::new()
        }
        fn device_counters(&self) -> serde_json::Map<String, serde_json::Value> {
            serde_json::Map::new()
        }
    }

    fn config(display: DisplayMode, gpu: bool) -> VmConfig {
        VmConfig {
            kernel: PathBuf::from("/nonexistent"),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory: 64 << 20,
            disks: Vec::new(),
            serial: SerialMode::None,
            rng: false,
            reboot: false,
            gpu: gpu.then(|| GpuParams::parse("").unwrap()),
            display,
        }
    }

    #[test]
    fn closing_the_last_window_presses_the_power_button() {
        let controller =
            VmController::new(config(DisplayMode::Window, true), Duration::from_secs(5));
        let machine = Arc::new(Obedient::default());
        controller.attach(machine.clone());
        power_off_on_last_close(controller.clone())();
        let deadline = Instant::now() + Duration::from_secs(5);
        while controller.state() != VmState::Shutdown {
            assert!(Instant::now() < deadline, "the VM was not shut down");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(machine.pressed.load(Ordering::SeqCst));
    }

    #[test]
    fn only_window_mode_needs_a_display_server() {
        assert!(check_window_display(&config(DisplayMode::Headless, true)).is_ok());
        assert!(check_window_display(&config(DisplayMode::Window, false)).is_ok());
    }
}

#[cfg(test)]
mod resize_tests {
    use super::*;
    use pv_display::ResizeSink;

    /// A GPU that takes display 0's requests and refuses display 1's.
    #[derive(Default)]
    struct Gpu(Mutex<Vec<(u32, u32, u32)>>);

    impl ResizeSink for Gpu {
        fn request_size(&self, scanout: u32, width: u32, height: u32) -> Result<(), String> {
            if scanout == 1 {
                return Err("no display 1".into());
            }
            self.0.lock().unwrap().push((scanout, width, height));
            Ok(())
        }
    }

    #[test]
    fn display_errors_map_to_resize_errors() {
        let screens = Screens {
            display: Arc::new(Display::new(2)),
            input: Arc::default(),
            takes_input: false,
            web: None,
            #[cfg(feature = "window")]
            window: None,
        };
        let resize = screens.resizes();
        assert_eq!(
            resize(0, 800, 600),
            Err(ResizeError::Unavailable(
                "cannot resize display 0: no GPU is connected to ask the guest".into()
            ))
        );
        let gpu = Arc::new(Gpu::default());
        screens
            .display
            .connect_resizer(Some(gpu.clone() as Arc<dyn ResizeSink>));
        assert_eq!(resize(0, 800, 600), Ok(()));
        assert_eq!(*gpu.0.lock().unwrap(), [(0, 800, 600)]);
        assert_eq!(
            resize(2, 800, 600),
            Err(ResizeError::NoSuchDisplay(
                "display 2 does not exist (the VM has 2)".into()
            ))
        );
        assert!(
            matches!(resize(0, 16, 600), Err(ResizeError::BadSize(m)) if m.contains("from 32 to 8192")),
        );
        assert_eq!(
            resize(1, 800, 600),
            Err(ResizeError::Failed(
                "the GPU refused to resize display 1: no display 1".into()
            ))
        );
        assert_eq!(gpu.0.lock().unwrap().len(), 1);
    }
}
