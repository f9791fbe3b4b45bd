//! virglrenderer: the host side of guest GPU acceleration.
//!
//! - [`library`]: finds `libvirglrenderer.so.1` at run time, tells its
//!   release, and refuses a missing or too old one with what to install.
//! - [`ffi`]: the C structs and entry points, written out by hand.
//! - [`renderer`]: [`Renderer`], virglrenderer initialized with Venus
//!   and/or virgl, every call wrapped; fences arrive on an eventfd.
//! - [`runtime`]: running under a GPU runtime (a newer C library and
//!   virglrenderer than the host has), where the render server must be
//!   started through the runtime's loader.

pub mod ffi;
pub mod library;
pub mod renderer;
pub mod runtime;
#[doc(hidden)]
pub mod testing;

pub use library::{LibraryError, LibraryInfo, Release, VirglLibrary, LIBRARY_NAME};
pub use renderer::{
    Blob, BlobMapping, CapsetInfo, ContextTypes, ExportedBlob, FenceEvent, FenceQueue, HostRange,
    Renderer, RendererError, RendererOptions, Resource3d, ResourceDescription, ServerLauncher,
    Timeline, Transfer, CAPSET_VENUS, CAPSET_VIRGL, CAPSET_VIRGL2,
};
