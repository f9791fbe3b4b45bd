//! The API server: a Unix socket, a thread named `api` running a
//! current-thread tokio runtime, hyper's HTTP/1.1 on each connection.
//!
//! Starting refuses a socket path where a server already answers and
//! replaces a stale socket file; the socket is made mode 0600. Stopping
//! closes the listener, lets in-flight requests finish (so the answer to
//! `vm.shutdown` reaches its client), then removes the socket file.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pv_vmm::control::VmController;
use tokio::sync::oneshot;

use crate::routes::{handle, State};
use crate::{GpuInventory, Resizes, Screenshots};

/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("an API server already answers at {}", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot check the existing socket {}", path.display())]
    Probe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {} private (mode 0600)", path.display())]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the API server's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

/// A running API server; [`ApiServer::stop`] (or dropping it) stops it.
pub struct ApiServer {
    path: PathBuf,
    /// The socket file's (device, inode): only that file is removed.
    socket_id: (u64, u64),
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `path` and serves `controller` (with `gpus` for
    /// `vmm.gpus`, `screenshots` for `vm.screenshot` and `resizes` for
    /// `vm.resize`; `None` when the VM has no display) on a new thread
    /// named `api`.
    pub fn start(
        path: impl AsRef<Path>,
        controller: Arc<VmController>,
        gpus: GpuInventory,
        screenshots: Option<Screenshots>,
        resizes: Option<Resizes>,
    ) -> Result<Self, ApiError> {
        let path = path.as_ref().to_path_buf();
        clear_stale_socket(&path)?;
        let std_listener =
            std::os::unix::net::UnixListener::bind(&path).map_err(|source| ApiError::Bind {
                path: path.clone(),
                source,
            })?;
        let socket_id = match private_socket(&path) {
            Ok(id) => id,
            Err(source) => {
                drop(std_listener);
                let _ = std::fs::remove_file(&path);
                return Err(ApiError::Permissions { path, source });
            }
        };
        let started = (|| {
            std_listener
                .set_nonblocking(true)
                .map_err(ApiError::Runtime)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ApiError::Runtime)?;
            let listener = {
                let _enter = runtime.enter();
                tokio::net::UnixListener::from_std(std_listener).map_err(ApiError::Runtime)?
            };
            let (stop_tx, stop_rx) = oneshot::channel();
            let state = Arc::new(State {
                controller,
                gpus,
                screenshots,
                resizes,
            });
            let thread = std::thread::Builder::new()
                .name("api".into())
                .spawn(move || {
                    // tokio's blocking pool starts from here and inherits it.
                    pv_seccomp::apply_or_abort(pv_seccomp::ThreadKind::Api);
                    runtime.block_on(serve(listener, state, stop_rx));
                    // Handlers still on the blocking pool get a moment to finish.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
                .map_err(ApiError::Thread)?;
            Ok((stop_tx, thread))
        })();
        match started {
            Ok((stop, thread)) => {
                log::info!("API server listening on {}", path.display());
                Ok(Self {
                    path,
                    socket_id,
                    stop: Some(stop),
                    thread: Some(thread),
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting connections, lets in-flight requests finish (at most
    /// 30 s), then removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the API thread panicked");
            }
            // Remove the socket only if it is still the one we created.
            if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
                if (meta.dev(), meta.ino()) == self.socket_id {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
            log::info!("API server on {} stopped", self.path.display());
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Refuses a path where a server answers or that is not a socket; removes a
/// socket nobody listens on.
fn clear_stale_socket(path: &Path) -> Result<(), ApiError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiError::Probe {
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.into()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse(path.into())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            log::info!("removing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(ApiError::Probe {
            path: path.into(),
            source,
        }),
    }
}

/// Makes the socket owner-only; returns its (device, inode).
fn private_socket(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Accepts connections until `stop` fires, then drains them.
async fn serve(
    listener: tokio::net::UnixListener,
    state: Arc<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // A client may shut down its write side once its request is sent: the
    // answer still goes out (without this, hyper drops the connection when
    // it reads the end of the stream while a handler is still running).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .half_close(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            log::debug!("api: connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off, keep serving.
                    log::warn!("api: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            log::warn!("api: requests still running after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;

    use pv_vmm::control::VmController;

    use super::*;

    /// A client that sends its whole request and shuts down its write side
    /// (`nc -N`, socat, a script) still gets its answer, for handlers that
    /// run on the blocking pool as well. Found by the `api_http` fuzz
    /// target: hyper dropped such a connection as soon as it read the end
    /// of the stream, before the answer was ready.
    #[test]
    fn a_client_that_half_closes_gets_its_answer() {
        let dir = std::env::temp_dir().join(format!("pv-api-half-close-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let config =
            serde_json::from_value(serde_json::json!({"kernel": "/boot/vmlinuz"})).unwrap();
        let controller = VmController::new(config, Duration::from_millis(10));
        let server = ApiServer::start(
            &path,
            controller,
            Arc::new(|| Ok(serde_json::json!({"gpus": []}))),
            None,
            None,
        )
        .unwrap();
        for (request, status) in [
            ("GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
            (
                "PUT /api/v1/vm.pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                "409",
            ),
            ("GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
        ] {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{request:?} answered {answer:?}"
            );
        }
        server.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
