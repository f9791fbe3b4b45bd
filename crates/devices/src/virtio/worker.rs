//! The thread that runs an active virtio device.
//!
//! [`Worker::spawn`] moves a [`QueueHandler`] and the device's queues into a
//! named thread that waits (epoll, no polling) on the queues' kick eventfds
//! and, when the handler has one, its own event source (a GPU's fences).
//! [`Worker::stop`] ends the thread and hands back the kick eventfds and the
//! handler. Dropping a worker stops it too. A device that must keep its own
//! thread across activations (virglrenderer binds to the thread that
//! initialized it) runs the same loop there with [`serve`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, Interrupt, InterruptKind};
use crate::GuestMemory;

/// The per-device logic a worker runs.
pub trait QueueHandler: Send + 'static {
    /// Handles the available buffers of queue `index`. Returns true when the
    /// driver must be interrupted.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool;

    /// A file descriptor to wait on besides the kicks (readable when
    /// [`QueueHandler::process_event`] has work).
    fn event_fd(&self) -> Option<RawFd> {
        None
    }

    /// Handles the event of [`QueueHandler::event_fd`]; returns a bit mask
    /// of the queues whose driver must be interrupted.
    fn process_event(&mut self, _queues: &mut [Queue], _mem: &GuestMemory) -> u64 {
        0
    }
}

/// Pops every available chain of `queue`, hands it to `handle` (which returns
/// the number of bytes it wrote into the chain) and adds it to the used ring,
/// re-checking after re-enabling notifications so no kick is lost. Returns
/// true when the driver should be interrupted. A broken ring (bad addresses
/// written by the guest) stops processing and is logged.
pub fn drain_queue<F>(queue: &mut Queue, mem: &GuestMemory, mut handle: F) -> bool
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> u32,
{
    drain_queue_deferred(queue, mem, |chain| Some(handle(chain)))
}

/// [`drain_queue`] for handlers that may finish a chain later: `handle`
/// returns None to keep the chain (its head index is the handler's to
/// [`Queue::add_used`] when the work completes, e.g. on a GPU fence).
pub fn drain_queue_deferred<F>(queue: &mut Queue, mem: &GuestMemory, mut handle: F) -> bool
where
    F: FnMut(DescriptorChain<&GuestMemory>) -> Option<u32>,
{
    let mut used_any = false;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            log::warn!("virtio queue: cannot disable notifications: {e}");
            return false;
        }
        let chains: Vec<_> = match queue.iter(mem) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                log::warn!("virtio queue: broken available ring: {e}");
                return false;
            }
        };
        // A ring that claims buffers but yields none (a bad head index) must
        // not make the worker spin.
        let stuck = chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            let Some(len) = handle(chain) else {
                continue;
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::warn!("virtio queue: cannot add used entry: {e}");
                return used_any;
            }
            used_any = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) if !stuck => continue,
            Ok(true) => {
                log::warn!("virtio queue: the available ring names buffers that don't exist");
                break;
            }
            Ok(false) => break,
            Err(e) => {
                log::warn!("virtio queue: cannot enable notifications: {e}");
                break;
            }
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

/// A running device thread.
pub struct Worker<H: QueueHandler> {
    stop: EventFd,
    thread: Option<JoinHandle<(H, Vec<EventFd>)>>,
}

const STOP_TOKEN: u64 = u64::MAX;
const EVENT_TOKEN: u64 = u64::MAX - 1;

/// Runs `handler` on the current thread until `stop` is signalled: waits on
/// the queues' kicks (and the handler's event fd), processes what arrives,
/// interrupts the driver. Returns the kick eventfds for the next activation.
/// Setting up the wait failing is logged and returns at once.
pub fn serve<H: QueueHandler + ?Sized>(
    handler: &mut H,
    ctx: ActivateContext,
    stop: &EventFd,
) -> Vec<EventFd> {
    let ActivateContext {
        mem,
        queues,
        interrupt,
        notifications,
        ..
    } = ctx;
    let (mut queues, kicks): (Vec<Queue>, Vec<EventFd>) =
        queues.into_iter().map(|q| (q.queue, q.kick)).unzip();
    let epoll = match watch(&kicks, stop, handler.event_fd()) {
        Ok(e) => e,
        Err(e) => {
            log::error!("device worker: cannot wait for events: {e}");
            return kicks;
        }
    };
    // Buffers may already be waiting from before activation.
    for (i, q) in queues.iter_mut().enumerate() {
        run_queue(handler, i, q, &mem, interrupt.as_ref());
    }
    let mut events = vec![EpollEvent::default(); kicks.len() + 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("device worker: epoll failed: {e}");
                break;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                STOP_TOKEN => return kicks,
                EVENT_TOKEN => {
                    let mask = handler.process_event(&mut queues, &mem);
                    for i in 0..queues.len().min(64) {
                        if mask & (1 << i) != 0 {
                            interrupt.trigger(InterruptKind::Queue(i as u16));
                        }
                    }
                }
                token => {
                    let i = token as usize;
                    let (Some(kick), Some(queue)) = (kicks.get(i), queues.get_mut(i)) else {
                        continue;
                    };
                    if let Ok(n) = kick.read() {
                        notifications.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    run_queue(handler, i, queue, &mem, interrupt.as_ref());
                }
            }
        }
    }
    kicks
}

fn watch(kicks: &[EventFd], stop: &EventFd, event: Option<RawFd>) -> io::Result<Epoll> {
    let epoll = Epoll::new()?;
    for (i, kick) in kicks.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, STOP_TOKEN),
    )?;
    if let Some(fd) = event {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, EVENT_TOKEN),
        )?;
    }
    Ok(epoll)
}

impl<H: QueueHandler> Worker<H> {
    /// Starts `handler` on a thread called `name`.
    pub fn spawn(name: &str, mut handler: H, ctx: ActivateContext) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_thread = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let kicks = serve(&mut handler, ctx, &stop_thread);
                (handler, kicks)
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread; returns the handler and the kick eventfds.
    pub fn stop(mut self) -> Option<(H, Vec<EventFd>)> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Option<(H, Vec<EventFd>)> {
        let thread = self.thread.take()?;
        let _ = self.stop.write(1);
        thread.join().ok()
    }
}

impl<H: QueueHandler> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn run_queue<H: QueueHandler + ?Sized>(
    handler: &mut H,
    index: usize,
    queue: &mut Queue,
    mem: &Arc<GuestMemory>,
    interrupt: &dyn Interrupt,
) {
    if handler.process_queue(index, queue, mem) {
        interrupt.trigger(InterruptKind::Queue(index as u16));
    }
}
