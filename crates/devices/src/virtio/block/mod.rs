//! virtio-blk: a disk backed by a raw image file (virtio 1.3 §5.2).
//!
//! - [`params`]: [`BlockParams`], parsed from the command line or a config.
//! - [`device`]: [`Block`], the [`VirtioDevice`](super::VirtioDevice) with its
//!   features and configuration space; at activation it moves a
//!   [`BlockHandler`] onto a worker thread named `virtio-blk-N`.
//! - [`request`]: parsing and executing one request against a [`Disk`]. All
//!   guest-supplied lengths, sectors and addresses are checked before the
//!   image is touched.
//! - [`metrics`]: [`BlockMetrics`], shared counters readable while the device
//!   runs.
//!
//! One request queue of up to 256 entries. The device offers VERSION_1,
//! EVENT_IDX, INDIRECT_DESC, FLUSH, SEG_MAX and BLK_SIZE, plus RO for a
//! read-only disk or DISCARD and WRITE_ZEROES for a writable one.

pub mod device;
pub mod metrics;
pub mod params;
pub mod request;

pub use device::{Block, BlockError, BlockHandler, QUEUE_SIZE};
pub use metrics::{BlockMetrics, BlockMetricsSnapshot};
pub use params::{BlockParams, ParamsError};
pub use request::{Disk, RequestError};
