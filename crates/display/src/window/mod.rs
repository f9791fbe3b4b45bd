//! The native window: one window per scanout on the host's desktop (X11 or
//! Wayland), showing the guest's screen live, scaled to the window with its
//! aspect ratio kept (black bars), with keyboard and mouse sent back to the
//! guest. Built with the `window` feature: winit for the windows and their
//! input, softbuffer to present pixels drawn on the CPU (no GPU or GL
//! needed, so it works under Xvfb).
//!
//! [`WindowViewer::start`] runs winit's event loop on its own thread,
//! `display-window` (winit allows that on Linux through `with_any_thread`;
//! other platforms would need the process's main thread). The loop sleeps
//! until something happens: the window system's events, or a wake-up from
//! the [`Display`] store through an `EventLoopProxy` when its
//! [`Subscription`] has changes. Then it takes the coalesced changes,
//! applies them to its copy of each scanout ([`screen`]) and asks only the
//! windows whose picture changed to redraw. Nothing is polled and nothing
//! is drawn while the guest's screens stand still.
//!
//! Windows appear when a scanout is first enabled (title "PearVisor —
//! display N"), follow the guest's mode changes, and stay (black) while
//! their scanout is off. The other way round, the guest follows the
//! window: when the user resizes a window, the guest is asked for the new
//! size ([`Display::request_size`]) once the window has kept it for
//! [`RESIZE_SETTLE`] (a drag asks once, at its end; the loop sleeps until
//! then with `ControlFlow::WaitUntil`), and never for the mode the guest
//! already shows, so a window following the guest does not ask it again.
//! Until the guest switches, the picture is letterboxed. Closing one window closes only that one; closing
//! the last one calls the `on_last_closed` callback (the binary asks the
//! guest to power off, like QEMU's window does).
//!
//! Input goes to the [`InputSink`] through the same checks as the web
//! viewer's ([`InputFilter`]): keys by physical position ([`keys`]),
//! pointer positions in scanout pixels after undoing the scaling
//! ([`scale`]), buttons and wheel steps. Key repeat is the guest's; held
//! keys and buttons are released when a window loses the focus.
//!
//! winit allows one event loop per process, so a process starts at most one
//! `WindowViewer`; a second start fails with [`DisplayError::WindowSystem`].

pub mod keys;
pub mod scale;
pub mod screen;

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use winit::application::ApplicationHandler;
use winit::dpi::PhysicalSize;
use winit::event::{ElementState, WindowEvent};
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop, EventLoopProxy};
use winit::keyboard::PhysicalKey;
use winit::window::{Window, WindowId};

use crate::store::{Update, MAX_REQUEST_DIMENSION, MIN_REQUEST_DIMENSION};
use crate::web::protocol::InputFilter;
use crate::{Display, DisplayError, InputEvent, InputSink, Subscription};
use keys::{linux_button, linux_key, Wheel};
use screen::Screen;

/// How long a window keeps a new size before the guest is asked for it.
pub const RESIZE_SETTLE: Duration = Duration::from_millis(150);

/// What the display-window thread is woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The display store has changes for this viewer.
    Changes,
    /// [`WindowViewer::stop`]: close everything and end the loop.
    Stop,
}

/// Called (once, on the display-window thread) when the user closed the
/// last open window.
pub type OnLastClosed = Box<dyn FnOnce() + Send>;

/// Whether a display server is there to open windows on: `WAYLAND_DISPLAY`
/// (or `WAYLAND_SOCKET`) or `DISPLAY` is set and not empty. Checked before
/// the VM boots, so `--display window` without one fails at once.
pub fn check_display_server() -> Result<(), DisplayError> {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("WAYLAND_DISPLAY") || set("WAYLAND_SOCKET") || set("DISPLAY") {
        Ok(())
    } else {
        Err(DisplayError::NoDisplayServer)
    }
}

/// The windows showing a [`Display`]. Closes them when dropped.
pub struct WindowViewer {
    proxy: EventLoopProxy<Wake>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for WindowViewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowViewer")
            .field("windows", &self.windows())
            .finish_non_exhaustive()
    }
}

/// Counters shared with the display-window thread.
#[derive(Debug, Default)]
struct Stats {
    windows: AtomicUsize,
    presented: AtomicU64,
}

impl WindowViewer {
    /// Opens a window for each scanout of `display` as it gets enabled.
    /// Keyboard and mouse go to `input` (None: view only). When the user
    /// closes the last open window, `on_last_closed` runs.
    ///
    /// Fails at once without a display server, when the window system
    /// cannot be reached, or when this process already started one.
    pub fn start(
        display: Arc<Display>,
        input: Option<Arc<dyn InputSink>>,
        on_last_closed: Option<OnLastClosed>,
    ) -> Result<WindowViewer, DisplayError> {
        check_display_server()?;
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("display-window".into())
            .spawn(move || {
                let event_loop = match new_event_loop() {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Connected to the display server: filtered from here on.
                pv_seccomp::apply_or_abort(pv_seccomp::ThreadKind::DisplayWindow);
                let proxy = event_loop.create_proxy();
                let waker = proxy.clone();
                let sub = display.subscribe(Box::new(move || {
                    // Fails only once the loop has ended: nothing to wake.
                    let _ = waker.send_event(Wake::Changes);
                }));
                let mut app = App::new(display, sub, input, on_last_closed, thread_stats);
                if ready_tx.send(Ok(proxy)).is_err() {
                    return;
                }
                event_loop.set_control_flow(ControlFlow::Wait);
                if let Err(e) = event_loop.run_app(&mut app) {
                    log::error!("display: the window's event loop failed: {e}");
                }
                log::debug!("display: windows closed");
            })
            .map_err(DisplayError::WindowThread)?;
        let proxy = match ready_rx.recv() {
            Ok(Ok(proxy)) => proxy,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(DisplayError::WindowSystem(
                    "the display-window thread ended while starting".into(),
                ));
            }
        };
        log::info!("display: showing the guest's screens in windows");
        Ok(WindowViewer {
            proxy,
            thread: Some(thread),
            stats,
        })
    }

    /// How many windows are open now.
    pub fn windows(&self) -> usize {
        self.stats.windows.load(Ordering::SeqCst)
    }

    /// How many pictures the windows have presented so far (all windows
    /// together): a window only draws when its scanout changed or the
    /// window system asked (exposed, resized).
    pub fn presented(&self) -> u64 {
        self.stats.presented.load(Ordering::SeqCst)
    }

    /// Closes every window and waits for the display-window thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Fails only when the loop already ended.
        let _ = self.proxy.send_event(Wake::Stop);
        if thread.join().is_err() {
            log::error!("display: the display-window thread panicked");
        }
    }
}

impl Drop for WindowViewer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn new_event_loop() -> Result<EventLoop<Wake>, DisplayError> {
    let mut builder = EventLoop::<Wake>::with_user_event();
    // The loop runs on the display-window thread, not the process's main
    // thread: fine for X11 and Wayland (one flag serves both backends).
    #[cfg(target_os = "linux")]
    winit::platform::x11::EventLoopBuilderExtX11::with_any_thread(&mut builder, true);
    builder
        .build()
        .map_err(|e| DisplayError::WindowSystem(Box::new(e)))
}

/// Which scanouts have a window, and which ones the user closed (those do
/// not come back).
#[derive(Debug, Default)]
struct Lifecycle {
    open: BTreeSet<u32>,
    closed: BTreeSet<u32>,
}

/// What closing a window meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// It was not open (closed twice, or destroyed after closing).
    NotOpen,
    /// Others are still open (how many).
    Others(usize),
    /// It was the last open window.
    Last,
}

impl Lifecycle {
    fn wants_window(&self, scanout: u32) -> bool {
        !self.open.contains(&scanout) && !self.closed.contains(&scanout)
    }

    fn opened(&mut self, scanout: u32) {
        self.open.insert(scanout);
    }

    fn close(&mut self, scanout: u32) -> Closed {
        if !self.open.remove(&scanout) {
            return Closed::NotOpen;
        }
        self.closed.insert(scanout);
        match self.open.len() {
            0 => Closed::Last,
            n => Closed::Others(n),
        }
    }
}

/// A scanout's window and the surface its pictures are presented on.
struct Win {
    // Declared before `window` and `_context`: dropped first.
    surface: softbuffer::Surface<Rc<Window>, Rc<Window>>,
    _context: softbuffer::Context<Rc<Window>>,
    window: Rc<Window>,
    /// Whether the host's pointer is hidden over the window (the guest
    /// draws its own).
    pointer_hidden: bool,
}

/// The event loop's state: the windows, each scanout's picture, input.
struct App {
    display: Arc<Display>,
    sub: Subscription,
    input: Option<Arc<dyn InputSink>>,
    filter: InputFilter,
    wheel: Wheel,
    screens: Vec<Screen>,
    windows: Vec<Option<Win>>,
    lifecycle: Lifecycle,
    /// The window system is ready for windows (`resumed` came).
    resumed: bool,
    on_last_closed: Option<OnLastClosed>,
    /// The last pointer position sent (scanout, x, y).
    pointer: Option<(u32, u32, u32)>,
    /// Per scanout: when to ask the guest for its window's size.
    resize_at: Vec<Option<Instant>>,
    /// Per scanout: the size asked for that the guest has not answered
    /// with a mode change yet.
    requested: Vec<Option<(u32, u32)>>,
    stats: Arc<Stats>,
}

impl App {
    fn new(
        display: Arc<Display>,
        sub: Subscription,
        input: Option<Arc<dyn InputSink>>,
        on_last_closed: Option<OnLastClosed>,
        stats: Arc<Stats>,
    ) -> Self {
        let count = display.count() as usize;
        Self {
            display,
            sub,
            input,
            filter: InputFilter::new(),
            wheel: Wheel::default(),
            screens: (0..count).map(|_| Screen::new()).collect(),
            windows: (0..count).map(|_| None).collect(),
            lifecycle: Lifecycle::default(),
            resumed: false,
            on_last_closed,
            pointer: None,
            resize_at: vec![None; count],
            requested: vec![None; count],
            stats,
        }
    }

    /// Takes the store's changes, opens windows for newly enabled scanouts
    /// and asks the changed ones to redraw.
    fn fetch(&mut self, event_loop: &ActiveEventLoop) {
        let mut dirty = vec![false; self.screens.len()];
        for update in self.display.updates(&self.sub) {
            let scanout = match &update {
                Update::Mode { scanout, .. }
                | Update::Pixels { scanout, .. }
                | Update::Cursor { scanout, .. }
                | Update::CursorMove { scanout, .. } => *scanout as usize,
            };
            let Some(screen) = self.screens.get_mut(scanout) else {
                continue;
            };
            let resize = match update {
                Update::Mode {
                    mode: Some((w, h)), ..
                } => Some(PhysicalSize::new(w, h)),
                _ => None,
            };
            if matches!(update, Update::Mode { .. }) {
                // The guest answered (or switched by itself).
                self.requested[scanout] = None;
            }
            if screen.apply(update) {
                dirty[scanout] = true;
            }
            if let (Some(size), Some(win)) = (resize, &self.windows[scanout]) {
                // The window follows the guest's resolution (the window
                // manager may say otherwise; the picture is scaled then).
                let _ = win.window.request_inner_size(size);
            }
        }
        if !self.resumed {
            return;
        }
        for (scanout, dirty) in dirty.into_iter().enumerate() {
            if self.screens[scanout].mode().is_some() && self.lifecycle.wants_window(scanout as u32)
            {
                self.open_window(event_loop, scanout);
            }
            let has_cursor = self.screens[scanout].has_cursor();
            if let Some(win) = &mut self.windows[scanout] {
                if win.pointer_hidden != has_cursor {
                    win.window.set_cursor_visible(!has_cursor);
                    win.pointer_hidden = has_cursor;
                }
                if dirty {
                    win.window.request_redraw();
                }
            }
        }
    }

    fn open_window(&mut self, event_loop: &ActiveEventLoop, scanout: usize) {
        let Some((w, h)) = self.screens[scanout].mode() else {
            return;
        };
        let attributes = Window::default_attributes()
            .with_title(format!("PearVisor — display {scanout}"))
            .with_inner_size(PhysicalSize::new(w, h));
        let window = match event_loop.create_window(attributes) {
            Ok(w) => Rc::new(w),
            Err(e) => {
                log::error!("display {scanout}: cannot open a window: {e}");
                // Not again for every frame.
                self.lifecycle.closed.insert(scanout as u32);
                return;
            }
        };
        let surface = softbuffer::Context::new(window.clone()).and_then(|context| {
            softbuffer::Surface::new(&context, window.clone()).map(|s| (context, s))
        });
        let (context, surface) = match surface {
            Ok(s) => s,
            Err(e) => {
                log::error!("display {scanout}: cannot draw into its window: {e}");
                self.lifecycle.closed.insert(scanout as u32);
                return;
            }
        };
        log::info!("display {scanout}: window opened ({w}x{h})");
        window.request_redraw();
        self.windows[scanout] = Some(Win {
            surface,
            _context: context,
            window,
            pointer_hidden: false,
        });
        self.lifecycle.opened(scanout as u32);
        self.stats
            .windows
            .store(self.lifecycle.open.len(), Ordering::SeqCst);
    }

    fn close_window(&mut self, scanout: usize, why: &str) {
        self.windows[scanout] = None;
        self.release_input();
        let closed = self.lifecycle.close(scanout as u32);
        self.stats
            .windows
            .store(self.lifecycle.open.len(), Ordering::SeqCst);
        match closed {
            Closed::NotOpen => {}
            Closed::Others(n) => log::info!(
                "display {scanout}: window {why}; the VM keeps running ({n} window{} still open)",
                if n == 1 { "" } else { "s" }
            ),
            Closed::Last => {
                log::info!("display {scanout}: window {why}, the last one");
                if let Some(f) = self.on_last_closed.take() {
                    f();
                }
            }
        }
    }

    fn draw(&mut self, scanout: usize) {
        let Some(win) = &mut self.windows[scanout] else {
            return;
        };
        let size = win.window.inner_size();
        let (Some(w), Some(h)) = (NonZeroU32::new(size.width), NonZeroU32::new(size.height)) else {
            return; // minimized
        };
        if let Err(e) = win.surface.resize(w, h) {
            log::warn!("display {scanout}: cannot size the window's buffer: {e}");
            return;
        }
        let mut buffer = match win.surface.buffer_mut() {
            Ok(b) => b,
            Err(e) => {
                log::warn!("display {scanout}: no window buffer: {e}");
                return;
            }
        };
        self.screens[scanout].render(&mut buffer, (size.width, size.height));
        win.window.pre_present_notify();
        if let Err(e) = buffer.present() {
            log::warn!("display {scanout}: cannot present: {e}");
            return;
        }
        self.stats.presented.fetch_add(1, Ordering::SeqCst);
    }

    fn send(&mut self, ev: InputEvent) {
        if let Some(input) = &self.input {
            if let Some(ev) = self.filter.filter(ev, &self.display) {
                input.send(ev);
            }
        }
    }

    /// Releases every key and button the guest believes held.
    fn release_input(&mut self) {
        self.wheel.reset();
        if let Some(input) = &self.input {
            for ev in self.filter.release_all() {
                input.send(ev);
            }
        }
    }

    fn pointer_moved(&mut self, scanout: usize, x: f64, y: f64) {
        let Some(win) = &self.windows[scanout] else {
            return;
        };
        let size = win.window.inner_size();
        let Some(vp) = self.screens[scanout].viewport((size.width, size.height)) else {
            return;
        };
        let (sx, sy) = vp.to_scanout(x, y);
        let at = (scanout as u32, sx, sy);
        if self.pointer != Some(at) {
            self.pointer = Some(at);
            self.send(InputEvent::PointerMove {
                scanout: at.0,
                x: sx,
                y: sy,
            });
        }
    }

    /// Asks the guest for the size of `scanout`'s window (when the user
    /// resized it and it has kept the size for [`RESIZE_SETTLE`]).
    fn request_guest_size(&mut self, scanout: usize) {
        let Some(win) = &self.windows[scanout] else {
            return;
        };
        let size = win.window.inner_size();
        let Some(want) = guest_size_for((size.width, size.height)) else {
            return; // minimized
        };
        let Some(mode) = self.display.mode(scanout as u32) else {
            return; // off: nothing to fit
        };
        if !wants_request(want, mode, self.requested[scanout]) {
            return;
        }
        let (w, h) = want;
        match self.display.request_size(scanout as u32, w, h) {
            Ok(()) => {
                log::debug!("display {scanout}: window is {w}x{h}, asking the guest for it");
                self.requested[scanout] = (want != mode).then_some(want);
            }
            Err(e) => log::debug!("display {scanout}: window is {w}x{h}, not asked: {e}"),
        }
    }

    fn scanout_of(&self, id: WindowId) -> Option<usize> {
        self.windows
            .iter()
            .position(|w| w.as_ref().is_some_and(|w| w.window.id() == id))
    }
}

impl ApplicationHandler<Wake> for App {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        self.resumed = true;
        self.fetch(event_loop);
    }

    fn user_event(&mut self, event_loop: &ActiveEventLoop, event: Wake) {
        match event {
            Wake::Changes => self.fetch(event_loop),
            Wake::Stop => {
                self.release_input();
                for w in &mut self.windows {
                    *w = None;
                }
                self.stats.windows.store(0, Ordering::SeqCst);
                event_loop.exit();
            }
        }
    }

    fn about_to_wait(&mut self, event_loop: &ActiveEventLoop) {
        let now = Instant::now();
        for scanout in 0..self.resize_at.len() {
            if self.resize_at[scanout].is_some_and(|at| at <= now) {
                self.resize_at[scanout] = None;
                self.request_guest_size(scanout);
            }
        }
        // Sleep until the next settled size, or until something happens.
        event_loop.set_control_flow(match self.resize_at.iter().flatten().min() {
            Some(&at) => ControlFlow::WaitUntil(at),
            None => ControlFlow::Wait,
        });
    }

    fn window_event(&mut self, _: &ActiveEventLoop, id: WindowId, event: WindowEvent) {
        let Some(scanout) = self.scanout_of(id) else {
            return;
        };
        match event {
            WindowEvent::CloseRequested => self.close_window(scanout, "closed"),
            WindowEvent::Destroyed => self.close_window(scanout, "destroyed"),
            WindowEvent::RedrawRequested => self.draw(scanout),
            WindowEvent::Resized(_) => {
                if let Some(win) = &self.windows[scanout] {
                    win.window.request_redraw();
                }
                // Ask the guest once the size settles (a drag sends many).
                self.resize_at[scanout] = Some(Instant::now() + RESIZE_SETTLE);
            }
            WindowEvent::ScaleFactorChanged { .. } => {
                if let Some(win) = &self.windows[scanout] {
                    win.window.request_redraw();
                }
            }
            WindowEvent::Focused(false) => self.release_input(),
            WindowEvent::KeyboardInput {
                event,
                is_synthetic,
                ..
            } => {
                // The guest repeats held keys itself. Synthetic events are
                // winit's presses of keys already held when a window gets
                // the focus (Alt after Alt-Tab, say), and releases when it
                // loses it (done by release_input already).
                if event.repeat || is_synthetic {
                    return;
                }
                let PhysicalKey::Code(key) = event.physical_key else {
                    return;
                };
                match linux_key(key) {
                    Some(code) => self.send(InputEvent::Key {
                        code,
                        pressed: event.state == ElementState::Pressed,
                    }),
                    None => log::debug!("display {scanout}: key {key:?} has no Linux code"),
                }
            }
            WindowEvent::CursorMoved { position, .. } => {
                self.pointer_moved(scanout, position.x, position.y)
            }
            WindowEvent::MouseInput { state, button, .. } => {
                if let Some(code) = linux_button(button) {
                    self.send(InputEvent::Button {
                        code,
                        pressed: state == ElementState::Pressed,
                    });
                }
            }
            WindowEvent::MouseWheel { delta, .. } => {
                let steps = self.wheel.steps(delta);
                if steps != 0 {
                    self.send(InputEvent::Wheel { delta: steps });
                }
            }
            WindowEvent::CursorLeft { .. } => self.wheel.reset(),
            _ => {}
        }
    }
}

/// The size to ask the guest for, for a window of `inner` physical pixels
/// (each side clamped to what a display can be); None for a minimized
/// window.
fn guest_size_for(inner: (u32, u32)) -> Option<(u32, u32)> {
    let (w, h) = inner;
    if w == 0 || h == 0 {
        return None;
    }
    let clamp = |v: u32| v.clamp(MIN_REQUEST_DIMENSION, MAX_REQUEST_DIMENSION);
    Some((clamp(w), clamp(h)))
}

/// Whether to ask the guest for `want` while it shows `mode`, having asked
/// for `requested` without an answer yet: never for the mode it shows (a
/// window following the guest's mode change must not ask it again), unless
/// that takes back an unanswered request; never twice for the same size.
fn wants_request(want: (u32, u32), mode: (u32, u32), requested: Option<(u32, u32)>) -> bool {
    match requested {
        Some(r) => want != r,
        None => want != mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_window_sizes_the_guest_is_asked_for() {
        assert_eq!(guest_size_for((1000, 700)), Some((1000, 700)));
        assert_eq!(guest_size_for((10, 9000)), Some((32, 8192)));
        assert_eq!(guest_size_for((0, 700)), None);
        assert_eq!(guest_size_for((700, 0)), None);
        // A new size: asked.
        assert!(wants_request((1000, 700), (800, 600), None));
        // The mode the guest shows (the window followed it): not asked.
        assert!(!wants_request((800, 600), (800, 600), None));
        // Already asked, no answer yet: not again.
        assert!(!wants_request((1000, 700), (800, 600), Some((1000, 700))));
        // Asked, then resized again before the guest answered.
        assert!(wants_request((1100, 700), (800, 600), Some((1000, 700))));
        // ... or back to the shown mode: the request is taken back.
        assert!(wants_request((800, 600), (800, 600), Some((1000, 700))));
    }

    #[test]
    fn closing_windows_until_the_last() {
        let mut l = Lifecycle::default();
        assert!(l.wants_window(0));
        l.opened(0);
        l.opened(1);
        l.opened(2);
        assert!(!l.wants_window(1));
        assert_eq!(l.close(1), Closed::Others(2));
        assert!(!l.wants_window(1), "a closed window does not come back");
        assert_eq!(l.close(1), Closed::NotOpen, "closed twice");
        assert_eq!(l.close(7), Closed::NotOpen);
        assert_eq!(l.close(0), Closed::Others(1));
        // A scanout that appears later still gets a window.
        assert!(l.wants_window(3));
        l.opened(3);
        assert_eq!(l.close(3), Closed::Others(1));
        assert_eq!(l.close(2), Closed::Last);
        assert_eq!(l.close(2), Closed::NotOpen, "destroyed after closing");
    }

    #[test]
    fn display_server_message() {
        assert_eq!(
            DisplayError::NoDisplayServer.to_string(),
            "--display window needs a display server (DISPLAY or WAYLAND_DISPLAY is unset); use --display web or headless"
        );
    }
}
