//! The thread that runs an active virtio device.
//!
//! [`Worker::spawn`] moves a [`QueueHandler`] and the device's queues into a
//! named thread that waits (epoll, no polling) on the queues' kick eventfds
//! and, when the handler has one, its own event source (a GPU's fences).
//! [`Worker::stop`] ends the thread and hands back the kick eventfds and the
//! handler. Dropping a worker stops it too. A device that must keep its own
//! thread across activations (virglrenderer binds to the thread that
//! initialized it) runs the same loop there with [`serve`].

use pv_seccomp::{Spawned, ThreadKind};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

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

    /// The syscall filter the worker thread runs under.
    fn thread_kind(&self) -> ThreadKind {
        ThreadKind::VirtioWorker
    }
}

/// Pops every available chain of `queue`, hands it to `handle` (which returns
/// the number of bytes it wrote into the chain) and adds it to the used ring,
/// re-checking after re-enabling notifications so no kick is lost. Returns
/// true when the driver should be interrupted. A broken ring (bad addresses
/// written by the guest) stops processing and is logged.
///
/// When more chains arrived while a batch was handled and the driver wants
/// to hear about the used ones, it returns true at once, leaving the new
/// chains available: a driver waiting for one response must not wait until
/// the device runs out of work (a guest that keeps the queue busy, such as
/// a console cursor blinking on a slow display, would otherwise never get
/// an interrupt). [`serve`] interrupts and comes straight back for the rest.
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
            crate::guest_warn!("virtio queue: cannot disable notifications: {e}");
            return false;
        }
        let chains: Vec<_> = match queue.iter(mem) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                crate::guest_warn!("virtio queue: broken available ring: {e}");
                return false;
            }
        };
        // A ring that claims buffers but yields none (a bad head index) must
        // not make the worker spin.
        let stuck = chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            // A head past the queue has no descriptors and no used entry to
            // give back; the chains after it in the batch still count.
            if head >= queue.size() {
                crate::guest_warn!(
                    "virtio queue: available ring names head {head}, past the queue"
                );
                continue;
            }
            let Some(len) = handle(chain) else {
                continue;
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                crate::guest_warn!("virtio queue: cannot add used entry: {e}");
                return used_any;
            }
            used_any = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) if !stuck => {
                if used_any && queue.needs_notification(mem).unwrap_or(true) {
                    return true;
                }
                continue;
            }
            Ok(true) => {
                crate::guest_warn!(
                    "virtio queue: the available ring names buffers that don't exist"
                );
                break;
            }
            Ok(false) => break,
            Err(e) => {
                crate::guest_warn!("virtio queue: cannot enable notifications: {e}");
                break;
            }
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

/// A running device thread.
pub struct Worker<H: QueueHandler> {
    stop: EventFd,
    thread: Option<Spawned<(H, Vec<EventFd>)>>,
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
        // Started by the spawner: a worker is usually activated from a
        // vCPU thread, whose syscall filter it must not inherit.
        let kind = handler.thread_kind();
        let thread = pv_seccomp::spawn(name, move || {
            pv_seccomp::apply_or_abort(kind);
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

/// Runs the handler over queue `index` and interrupts the driver when asked;
/// again while the handler consumed chains and more are available (a
/// handler stops early so that the driver hears about used buffers; see
/// [`drain_queue_deferred`]). A handler that leaves chains in the ring on
/// purpose (an event queue waiting for events) consumes none and is not run
/// again.
fn run_queue<H: QueueHandler + ?Sized>(
    handler: &mut H,
    index: usize,
    queue: &mut Queue,
    mem: &Arc<GuestMemory>,
    interrupt: &dyn Interrupt,
) {
    loop {
        let before = queue.next_avail();
        if handler.process_queue(index, queue, mem) {
            interrupt.trigger(InterruptKind::Queue(index as u16));
        }
        let consumed = queue.next_avail() != before;
        let more = queue
            .avail_idx(mem.as_ref(), std::sync::atomic::Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail());
        if !(consumed && more) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const SIZE: u16 = 16;

    /// A driver: one writable descriptor per chain, heads in order, and
    /// the used_event it asks interrupts with.
    struct Driver {
        mem: Arc<GuestMemory>,
        desc: u64,
        avail: u64,
        added: u16,
    }

    impl Driver {
        /// The driver and the device's queue (descriptors at 0x1000, the
        /// available ring at 0x2000, the used ring at 0x3000).
        fn new() -> (Self, Queue) {
            let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
            let mut q = Queue::new(SIZE).unwrap();
            q.set_size(SIZE);
            q.set_desc_table_address(Some(0x1000), Some(0));
            q.set_avail_ring_address(Some(0x2000), Some(0));
            q.set_used_ring_address(Some(0x3000), Some(0));
            q.set_ready(true);
            q.set_event_idx(true);
            let d = Self {
                mem,
                desc: 0x1000,
                avail: 0x2000,
                added: 0,
            };
            (d, q)
        }

        /// Makes one more chain available.
        fn add(&mut self) {
            let head = self.added % SIZE;
            let at = self.desc + 16 * u64::from(head);
            let m = &self.mem;
            m.write_obj(0x8_0000 + u64::from(head) * 0x100, GuestAddress(at))
                .unwrap();
            m.write_obj(0x100u32, GuestAddress(at + 8)).unwrap();
            m.write_obj(VRING_DESC_F_WRITE as u16, GuestAddress(at + 12))
                .unwrap();
            m.write_obj(0u16, GuestAddress(at + 14)).unwrap();
            m.write_obj(head, GuestAddress(self.avail + 4 + 2 * u64::from(head)))
                .unwrap();
            self.added += 1;
            m.write_obj(self.added, GuestAddress(self.avail + 2))
                .unwrap();
        }

        /// Asks for an interrupt once the used index passes `idx`.
        fn set_used_event(&self, idx: u16) {
            let at = self.avail + 4 + 2 * u64::from(SIZE);
            self.mem.write_obj(idx, GuestAddress(at)).unwrap();
        }
    }

    #[test]
    fn drain_returns_early_when_the_driver_waits_and_more_arrived() {
        let (mut driver, mut q) = Driver::new();
        let mem = driver.mem.clone();
        driver.set_used_event(0);
        driver.add();
        let mut handled = 0;
        // While the first chain is handled, the driver adds a second one.
        let notify = drain_queue_deferred(&mut q, &mem, |_| {
            handled += 1;
            if driver.added < 2 {
                driver.add();
            }
            Some(8)
        });
        assert!(notify, "the driver waits for the first response");
        assert_eq!(handled, 1, "the second chain waits for the next round");
        assert_eq!((q.next_used(), q.next_avail()), (1, 1));

        // A driver that asks for no interrupt yet: the loop goes on to the end.
        let (mut driver, mut q) = Driver::new();
        let mem = driver.mem.clone();
        driver.set_used_event(100);
        driver.add();
        let mut handled = 0;
        let notify = drain_queue_deferred(&mut q, &mem, |_| {
            handled += 1;
            if driver.added < 3 {
                driver.add();
            }
            Some(8)
        });
        assert!(!notify);
        assert_eq!(handled, 3);
    }

    /// Regression (hostile guest, avail-head-out-of-range): a head index
    /// past the queue made add_used fail and the rest of the batch, already
    /// taken from the ring, was never answered.
    #[test]
    fn a_head_past_the_queue_does_not_lose_the_chains_after_it() {
        let (mut driver, mut q) = Driver::new();
        let mem = driver.mem.clone();
        driver.add();
        driver.add();
        driver.add();
        // The second available entry names head 300 of a 16-entry queue.
        mem.write_obj(300u16, GuestAddress(driver.avail + 4 + 2))
            .unwrap();
        let mut heads = Vec::new();
        drain_queue(&mut q, &mem, |chain| {
            heads.push(chain.head_index());
            8
        });
        assert_eq!(
            heads,
            vec![0, 2],
            "the bad head is skipped, the rest served"
        );
        assert_eq!((q.next_avail(), q.next_used()), (3, 2));
        let used = |i: u64| {
            let at = GuestAddress(0x3000 + 4 + 8 * i);
            mem.read_obj::<u32>(at).unwrap()
        };
        assert_eq!((used(0), used(1)), (0, 2));
    }

    #[derive(Default)]
    struct Counting(Arc<AtomicU64>);

    impl Interrupt for Counting {
        fn trigger(&self, _kind: InterruptKind) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Adds a chain while handling each of the first chains (up to `total`)
    /// and records how many interrupts the driver had when each chain was
    /// handled. With `consume` false it leaves the ring alone (an event
    /// queue waiting for events).
    struct Busy {
        driver: Driver,
        interrupts: Arc<AtomicU64>,
        total: u16,
        seen: Vec<u64>,
        consume: bool,
    }

    impl QueueHandler for Busy {
        fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
            if !self.consume {
                return false;
            }
            drain_queue_deferred(queue, mem, |_| {
                self.seen.push(self.interrupts.load(Ordering::SeqCst));
                if self.driver.added < self.total {
                    self.driver.add();
                    // The driver re-arms after each response it reads.
                    self.driver.set_used_event(self.driver.added - 2);
                }
                Some(8)
            })
        }
    }

    #[test]
    fn run_queue_interrupts_between_batches_of_a_busy_queue() {
        let (mut driver, mut q) = Driver::new();
        let mem = driver.mem.clone();
        driver.set_used_event(0);
        driver.add();
        let interrupt = Counting::default();
        let mut busy = Busy {
            driver,
            interrupts: interrupt.0.clone(),
            total: 5,
            seen: Vec::new(),
            consume: true,
        };
        run_queue(&mut busy, 0, &mut q, &mem, &interrupt);
        assert_eq!(q.next_used(), 5, "every chain is served in one run");
        // Each chain after the first was handled after the driver had been
        // interrupted for the one before.
        assert_eq!(busy.seen, vec![0, 1, 2, 3, 4]);
        // The last chain's driver never asked past used index 3.
        assert_eq!(interrupt.0.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn run_queue_leaves_a_queue_the_handler_keeps() {
        let (mut driver, mut q) = Driver::new();
        let mem = driver.mem.clone();
        driver.add();
        let interrupt = Counting::default();
        let mut busy = Busy {
            driver,
            interrupts: interrupt.0.clone(),
            total: 1,
            seen: Vec::new(),
            consume: false,
        };
        // Returns although a chain stays available.
        run_queue(&mut busy, 0, &mut q, &mem, &interrupt);
        assert_eq!((q.next_avail(), interrupt.0.load(Ordering::SeqCst)), (0, 0));
    }
}
