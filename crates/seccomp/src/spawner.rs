//! The spawner: an unfiltered thread that starts threads for filtered ones.
//!
//! A thread inherits its creator's filters, and filters only ever add up.
//! Device workers are started when the guest activates a device, that is
//! from a vCPU thread; started there directly, a virtio-blk worker would run
//! under the vCPU's list and its own, and the vCPU's list would have to allow
//! disk I/O. [`spawn`] hands the thread's body to a spawner thread started
//! from the main thread before any filter, so the new thread begins
//! unfiltered and installs only its own list.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

type Start = Box<dyn FnOnce() + Send>;

/// A request to the spawner: start `body` on a thread called `name` and
/// say whether that worked.
struct Request {
    name: String,
    body: Start,
    started: mpsc::SyncSender<io::Result<()>>,
}

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

/// Starts the spawner thread (once); called with the process's mode.
pub(crate) fn start() {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawned = std::thread::Builder::new()
            .name("thread-spawner".into())
            .spawn(move || {
                for req in rx {
                    let r = std::thread::Builder::new()
                        .name(req.name)
                        .spawn(req.body)
                        .map(drop);
                    let _ = req.started.send(r);
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the thread spawner: {e}; threads start directly");
        }
        Mutex::new(tx)
    });
}

/// A thread started by [`spawn`].
pub struct Spawned<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Direct(JoinHandle<T>),
    Remote(mpsc::Receiver<std::thread::Result<T>>),
}

impl<T> Spawned<T> {
    /// Waits for the thread to finish; `Err` with the panic's payload if
    /// it panicked (like `JoinHandle::join`).
    pub fn join(self) -> std::thread::Result<T> {
        match self.inner {
            Inner::Direct(handle) => handle.join(),
            Inner::Remote(result) => result
                .recv()
                .unwrap_or_else(|_| Err(Box::new("the thread ended without a result"))),
        }
    }
}

/// Starts `body` on a new thread called `name` that inherits no syscall
/// filter from the caller (when filters are on); otherwise like
/// `std::thread::Builder::new().name(name).spawn(body)`.
pub fn spawn<T, F>(name: &str, body: F) -> io::Result<Spawned<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let Some(spawner) = SPAWNER.get() else {
        let handle = std::thread::Builder::new().name(name.into()).spawn(body)?;
        return Ok(Spawned {
            inner: Inner::Direct(handle),
        });
    };
    let (result_tx, result_rx) = mpsc::sync_channel(1);
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let req = Request {
        name: name.into(),
        body: Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = result_tx.send(r);
        }),
        started: started_tx,
    };
    let stopped = || io::Error::other("the thread spawner has stopped");
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(req)
        .map_err(|_| stopped())?;
    started_rx.recv().map_err(|_| stopped())??;
    Ok(Spawned {
        inner: Inner::Remote(result_rx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_threads_return_values_and_panics() {
        start();
        let t = spawn("value", || 42).unwrap();
        assert_eq!(t.join().unwrap(), 42);
        let t = spawn("name", || std::thread::current().name().map(String::from)).unwrap();
        assert_eq!(t.join().unwrap().as_deref(), Some("name"));
        let t = spawn("panics", || panic!("boom")).unwrap();
        assert!(t.join().is_err());
    }
}
