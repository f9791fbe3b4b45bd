//! The virtio-gpu wire format (virtio 1.3 §5.7.6): constants, requests
//! decoded from the bytes the driver wrote, and responses encoded into bytes
//! for the device-writable part of the chain.
//!
//! Everything is little-endian and decoded by hand from a byte slice (no
//! `unsafe`, no alignment assumptions). [`GpuCommand::decode`] checks the
//! length of every request against its struct (padding included) and bounds
//! the only variable-length part, RESOURCE_ATTACH_BACKING's entries, by
//! [`MAX_BACKING_ENTRIES`]. Values inside a request (ids, rectangles,
//! offsets, formats) are checked where they are used.

use pv_display::{PixelFormat, Rect};

/// Feature bit: 3D commands (offered whenever a 3D context type is on:
/// Linux gates every 3D ioctl on it, Venus included).
pub const VIRTIO_GPU_F_VIRGL: u32 = 0;
/// Feature bit: GET_EDID is supported.
pub const VIRTIO_GPU_F_EDID: u32 = 1;
/// Feature bit: RESOURCE_ASSIGN_UUID.
pub const VIRTIO_GPU_F_RESOURCE_UUID: u32 = 2;
/// Feature bit: blob resources and the host-visible memory region.
pub const VIRTIO_GPU_F_RESOURCE_BLOB: u32 = 3;
/// Feature bit: CTX_CREATE carries a capset id; fences carry a ring index.
pub const VIRTIO_GPU_F_CONTEXT_INIT: u32 = 4;
/// Shared memory region id of the host-visible memory.
pub const SHM_ID_HOST_VISIBLE: u8 = 1;

/// Scanouts the protocol can describe (`VIRTIO_GPU_MAX_SCANOUTS`).
pub const MAX_SCANOUTS: usize = 16;
/// Config-space event: the display configuration changed.
pub const EVENT_DISPLAY: u32 = 1 << 0;

/// Request flag: the driver wants a fence for this command.
pub const FLAG_FENCE: u32 = 1 << 0;
/// Request flag: `ring_idx` is meaningful (with FLAG_FENCE).
pub const FLAG_INFO_RING_IDX: u32 = 1 << 1;

// 2D commands.
pub const CMD_GET_DISPLAY_INFO: u32 = 0x0100;
pub const CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
pub const CMD_RESOURCE_UNREF: u32 = 0x0102;
pub const CMD_SET_SCANOUT: u32 = 0x0103;
pub const CMD_RESOURCE_FLUSH: u32 = 0x0104;
pub const CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
pub const CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
pub const CMD_RESOURCE_DETACH_BACKING: u32 = 0x0107;
pub const CMD_GET_CAPSET_INFO: u32 = 0x0108;
pub const CMD_GET_CAPSET: u32 = 0x0109;
pub const CMD_GET_EDID: u32 = 0x010a;
pub const CMD_RESOURCE_ASSIGN_UUID: u32 = 0x010b;
pub const CMD_RESOURCE_CREATE_BLOB: u32 = 0x010c;
pub const CMD_SET_SCANOUT_BLOB: u32 = 0x010d;
// 3D commands.
pub const CMD_CTX_CREATE: u32 = 0x0200;
pub const CMD_CTX_DESTROY: u32 = 0x0201;
pub const CMD_CTX_ATTACH_RESOURCE: u32 = 0x0202;
pub const CMD_CTX_DETACH_RESOURCE: u32 = 0x0203;
pub const CMD_RESOURCE_CREATE_3D: u32 = 0x0204;
pub const CMD_TRANSFER_TO_HOST_3D: u32 = 0x0205;
pub const CMD_TRANSFER_FROM_HOST_3D: u32 = 0x0206;
pub const CMD_SUBMIT_3D: u32 = 0x0207;
pub const CMD_RESOURCE_MAP_BLOB: u32 = 0x0208;
pub const CMD_RESOURCE_UNMAP_BLOB: u32 = 0x0209;
// Cursor commands.
pub const CMD_UPDATE_CURSOR: u32 = 0x0300;
pub const CMD_MOVE_CURSOR: u32 = 0x0301;

// Success responses.
pub const RESP_OK_NODATA: u32 = 0x1100;
pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
pub const RESP_OK_CAPSET_INFO: u32 = 0x1102;
pub const RESP_OK_CAPSET: u32 = 0x1103;
pub const RESP_OK_EDID: u32 = 0x1104;
pub const RESP_OK_RESOURCE_UUID: u32 = 0x1105;
pub const RESP_OK_MAP_INFO: u32 = 0x1106;
// Error responses.
pub const RESP_ERR_UNSPEC: u32 = 0x1200;
pub const RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
pub const RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

// Formats (`enum virtio_gpu_formats`).
pub const FORMAT_B8G8R8A8_UNORM: u32 = 1;
pub const FORMAT_B8G8R8X8_UNORM: u32 = 2;
pub const FORMAT_A8R8G8B8_UNORM: u32 = 3;
pub const FORMAT_X8R8G8B8_UNORM: u32 = 4;
pub const FORMAT_R8G8B8A8_UNORM: u32 = 67;
pub const FORMAT_X8B8G8R8_UNORM: u32 = 68;
pub const FORMAT_A8B8G8R8_UNORM: u32 = 121;
pub const FORMAT_R8G8B8X8_UNORM: u32 = 134;

/// Length of `struct virtio_gpu_ctrl_hdr`.
pub const HDR_LEN: usize = 24;
/// Length of `struct virtio_gpu_mem_entry`.
pub const MEM_ENTRY_LEN: usize = 16;
/// Length of `struct virtio_gpu_resource_attach_backing` (before its entries).
pub const ATTACH_BACKING_LEN: usize = HDR_LEN + 8;
/// The most backing entries one RESOURCE_ATTACH_BACKING may carry (Linux
/// sends one per contiguous run of pages; 16384 covers 64 MiB of scattered
/// 4 KiB pages).
pub const MAX_BACKING_ENTRIES: u32 = 16384;
/// The longest request the device reads: RESOURCE_CREATE_BLOB (the longer
/// of the two requests with entries) with the most entries.
pub const MAX_REQUEST_LEN: usize = CREATE_BLOB_LEN + MAX_BACKING_ENTRIES as usize * MEM_ENTRY_LEN;
/// Length of `struct virtio_gpu_submit` (before its command stream).
pub const SUBMIT_LEN: usize = HDR_LEN + 8;
/// The longest 3D command stream one SUBMIT_3D may carry (virgl's command
/// buffers are at most 256 KiB; Venus passes its commands through shared
/// memory).
pub const MAX_SUBMIT_BYTES: u32 = 4 << 20;
/// Length of `struct virtio_gpu_resource_create_blob` (before its entries).
pub const CREATE_BLOB_LEN: usize = HDR_LEN + 32;
/// The longest debug name CTX_CREATE carries.
pub const CTX_NAME_MAX: usize = 64;
/// Length of `struct virtio_gpu_resp_capset_info`.
pub const CAPSET_INFO_RESP_LEN: usize = HDR_LEN + 16;
/// Length of `struct virtio_gpu_resp_resource_uuid`.
pub const UUID_RESP_LEN: usize = HDR_LEN + 16;
/// Length of `struct virtio_gpu_resp_map_info`.
pub const MAP_INFO_RESP_LEN: usize = HDR_LEN + 8;
/// Length of `struct virtio_gpu_resp_display_info`.
pub const DISPLAY_INFO_LEN: usize = HDR_LEN + MAX_SCANOUTS * 24;
/// Bytes of EDID data `struct virtio_gpu_resp_edid` can carry.
pub const EDID_MAX: usize = 1024;
/// Length of `struct virtio_gpu_resp_edid`.
pub const EDID_RESP_LEN: usize = HDR_LEN + 8 + EDID_MAX;

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request is {0} bytes, shorter than its 24-byte header")]
    ShortHeader(usize),
    #[error("{name} request is {got} bytes, expected {need}")]
    Short {
        name: &'static str,
        need: usize,
        got: usize,
    },
    #[error("unknown or unsupported command type {0:#x}")]
    Unknown(u32),
    #[error("{0} backing entries, more than the limit of 16384")]
    TooManyEntries(u32),
    #[error("SUBMIT_3D of {0} bytes (the limit is 4 MiB, in whole dwords)")]
    BadSubmitSize(u32),
}

impl DecodeError {
    /// The response type the driver gets for this error.
    pub fn response_type(&self) -> u32 {
        match self {
            Self::TooManyEntries(_) | Self::BadSubmitSize(_) => RESP_ERR_INVALID_PARAMETER,
            _ => RESP_ERR_UNSPEC,
        }
    }
}

/// `struct virtio_gpu_ctrl_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtrlHdr {
    pub type_: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

impl CtrlHdr {
    /// Decodes the header at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < HDR_LEN {
            return Err(DecodeError::ShortHeader(buf.len()));
        }
        let mut r = Reader::new(buf);
        Ok(Self {
            type_: r.u32(),
            flags: r.u32(),
            fence_id: r.u64(),
            ctx_id: r.u32(),
            ring_idx: buf[20],
        })
    }

    /// Whether the driver asked for a fence.
    pub fn fenced(&self) -> bool {
        self.flags & FLAG_FENCE != 0
    }

    /// The header of the response to this request: `type_`, and for a
    /// fenced request the FENCE flag with fence_id, ctx_id (and ring_idx
    /// with INFO_RING_IDX) echoed.
    pub fn response(&self, type_: u32) -> CtrlHdr {
        if !self.fenced() {
            return CtrlHdr {
                type_,
                ..CtrlHdr::default()
            };
        }
        let ring = self.flags & FLAG_INFO_RING_IDX != 0;
        CtrlHdr {
            type_,
            flags: FLAG_FENCE | (self.flags & FLAG_INFO_RING_IDX),
            fence_id: self.fence_id,
            ctx_id: self.ctx_id,
            ring_idx: if ring { self.ring_idx } else { 0 },
        }
    }

    /// Appends the 24 header bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.type_.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.fence_id.to_le_bytes());
        out.extend_from_slice(&self.ctx_id.to_le_bytes());
        out.extend_from_slice(&[self.ring_idx, 0, 0, 0]);
    }
}

/// `struct virtio_gpu_mem_entry`: one guest-physical run of a resource's
/// backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub length: u32,
}

/// `struct virtio_gpu_cursor_pos`. Positions are signed on the host side:
/// Linux writes a plane's (possibly negative) `crtc_x`/`crtc_y` into them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorPos {
    pub scanout_id: u32,
    pub x: i32,
    pub y: i32,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuCommand {
    GetDisplayInfo,
    GetEdid {
        scanout_id: u32,
    },
    ResourceCreate2d {
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    },
    ResourceUnref {
        resource_id: u32,
    },
    SetScanout {
        rect: Rect,
        scanout_id: u32,
        resource_id: u32,
    },
    ResourceFlush {
        rect: Rect,
        resource_id: u32,
    },
    TransferToHost2d {
        rect: Rect,
        offset: u64,
        resource_id: u32,
    },
    ResourceAttachBacking {
        resource_id: u32,
        entries: Vec<MemEntry>,
    },
    ResourceDetachBacking {
        resource_id: u32,
    },
    UpdateCursor {
        pos: CursorPos,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    },
    MoveCursor {
        pos: CursorPos,
    },
    GetCapsetInfo {
        index: u32,
    },
    GetCapset {
        capset_id: u32,
        version: u32,
    },
    ResourceAssignUuid {
        resource_id: u32,
    },
    ResourceCreateBlob {
        resource_id: u32,
        blob_mem: u32,
        blob_flags: u32,
        blob_id: u64,
        size: u64,
        entries: Vec<MemEntry>,
    },
    SetScanoutBlob(ScanoutBlob),
    /// The header's ctx_id is the context.
    CtxCreate {
        /// The capset id of VIRTIO_GPU_F_CONTEXT_INIT (0: the default).
        context_init: u32,
        name: Vec<u8>,
    },
    CtxDestroy,
    CtxAttachResource {
        resource_id: u32,
    },
    CtxDetachResource {
        resource_id: u32,
    },
    ResourceCreate3d {
        resource_id: u32,
        args: Create3d,
    },
    TransferToHost3d(Transfer3d),
    TransferFromHost3d(Transfer3d),
    /// The command stream, `size` bytes (a whole number of dwords); read
    /// from the chain by the frontend, not part of the decoded request.
    Submit3d {
        size: u32,
    },
    ResourceMapBlob {
        resource_id: u32,
        offset: u64,
    },
    ResourceUnmapBlob {
        resource_id: u32,
    },
}

/// `struct virtio_gpu_resource_create_3d`'s arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Create3d {
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
}

/// `struct virtio_gpu_box`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Box3d {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}

/// `struct virtio_gpu_transfer_host_3d`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer3d {
    pub bx: Box3d,
    pub offset: u64,
    pub resource_id: u32,
    pub level: u32,
    pub stride: u32,
    pub layer_stride: u32,
}

/// Bytes of `struct virtio_gpu_set_scanout_blob` after the header.
pub const SET_SCANOUT_BLOB_LEN: usize = 16 + 6 * 4 + 4 * 4 + 4 * 4;

/// `struct virtio_gpu_set_scanout_blob`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanoutBlob {
    pub rect: Rect,
    pub scanout_id: u32,
    pub resource_id: u32,
    pub width: u32,
    pub height: u32,
    pub format: u32,
    pub strides: [u32; 4],
    pub offsets: [u32; 4],
}

impl GpuCommand {
    /// Decodes a request from the device-readable bytes of a chain (`buf`
    /// may hold more than the request; extra bytes are ignored).
    pub fn decode(buf: &[u8]) -> Result<(CtrlHdr, GpuCommand), DecodeError> {
        let hdr = CtrlHdr::decode(buf)?;
        let need = |name: &'static str, len: usize| {
            if buf.len() < len {
                Err(DecodeError::Short {
                    name,
                    need: len,
                    got: buf.len(),
                })
            } else {
                Ok(Reader::new(&buf[HDR_LEN..len]))
            }
        };
        let cmd = match hdr.type_ {
            CMD_GET_DISPLAY_INFO => GpuCommand::GetDisplayInfo,
            CMD_GET_EDID => {
                let mut r = need("GET_EDID", HDR_LEN + 8)?;
                GpuCommand::GetEdid {
                    scanout_id: r.u32(),
                }
            }
            CMD_RESOURCE_CREATE_2D => {
                let mut r = need("RESOURCE_CREATE_2D", HDR_LEN + 16)?;
                GpuCommand::ResourceCreate2d {
                    resource_id: r.u32(),
                    format: r.u32(),
                    width: r.u32(),
                    height: r.u32(),
                }
            }
            CMD_RESOURCE_UNREF => {
                let mut r = need("RESOURCE_UNREF", HDR_LEN + 8)?;
                GpuCommand::ResourceUnref {
                    resource_id: r.u32(),
                }
            }
            CMD_SET_SCANOUT => {
                let mut r = need("SET_SCANOUT", HDR_LEN + 24)?;
                GpuCommand::SetScanout {
                    rect: r.rect(),
                    scanout_id: r.u32(),
                    resource_id: r.u32(),
                }
            }
            CMD_RESOURCE_FLUSH => {
                let mut r = need("RESOURCE_FLUSH", HDR_LEN + 24)?;
                GpuCommand::ResourceFlush {
                    rect: r.rect(),
                    resource_id: r.u32(),
                }
            }
            CMD_TRANSFER_TO_HOST_2D => {
                let mut r = need("TRANSFER_TO_HOST_2D", HDR_LEN + 32)?;
                GpuCommand::TransferToHost2d {
                    rect: r.rect(),
                    offset: r.u64(),
                    resource_id: r.u32(),
                }
            }
            CMD_RESOURCE_ATTACH_BACKING => {
                let mut r = need("RESOURCE_ATTACH_BACKING", ATTACH_BACKING_LEN)?;
                let resource_id = r.u32();
                let nr_entries = r.u32();
                if nr_entries > MAX_BACKING_ENTRIES {
                    return Err(DecodeError::TooManyEntries(nr_entries));
                }
                // At most 16384 * 16 bytes: no overflow.
                let len = ATTACH_BACKING_LEN + nr_entries as usize * MEM_ENTRY_LEN;
                let mut r = need("RESOURCE_ATTACH_BACKING", len)?;
                r.skip(8);
                let entries = r.entries(nr_entries);
                GpuCommand::ResourceAttachBacking {
                    resource_id,
                    entries,
                }
            }
            CMD_RESOURCE_DETACH_BACKING => {
                let mut r = need("RESOURCE_DETACH_BACKING", HDR_LEN + 8)?;
                GpuCommand::ResourceDetachBacking {
                    resource_id: r.u32(),
                }
            }
            CMD_UPDATE_CURSOR => {
                let mut r = need("UPDATE_CURSOR", HDR_LEN + 32)?;
                let pos = r.cursor_pos();
                GpuCommand::UpdateCursor {
                    pos,
                    resource_id: r.u32(),
                    hot_x: r.u32(),
                    hot_y: r.u32(),
                }
            }
            CMD_MOVE_CURSOR => {
                let mut r = need("MOVE_CURSOR", HDR_LEN + 32)?;
                GpuCommand::MoveCursor {
                    pos: r.cursor_pos(),
                }
            }
            CMD_GET_CAPSET_INFO => {
                let mut r = need("GET_CAPSET_INFO", HDR_LEN + 8)?;
                GpuCommand::GetCapsetInfo { index: r.u32() }
            }
            CMD_GET_CAPSET => {
                let mut r = need("GET_CAPSET", HDR_LEN + 8)?;
                GpuCommand::GetCapset {
                    capset_id: r.u32(),
                    version: r.u32(),
                }
            }
            CMD_RESOURCE_ASSIGN_UUID => {
                let mut r = need("RESOURCE_ASSIGN_UUID", HDR_LEN + 8)?;
                GpuCommand::ResourceAssignUuid {
                    resource_id: r.u32(),
                }
            }
            CMD_RESOURCE_CREATE_BLOB => {
                let mut r = need("RESOURCE_CREATE_BLOB", CREATE_BLOB_LEN)?;
                let resource_id = r.u32();
                let blob_mem = r.u32();
                let blob_flags = r.u32();
                let nr_entries = r.u32();
                let blob_id = r.u64();
                let size = r.u64();
                if nr_entries > MAX_BACKING_ENTRIES {
                    return Err(DecodeError::TooManyEntries(nr_entries));
                }
                let len = CREATE_BLOB_LEN + nr_entries as usize * MEM_ENTRY_LEN;
                let mut r = need("RESOURCE_CREATE_BLOB", len)?;
                r.skip(CREATE_BLOB_LEN - HDR_LEN);
                GpuCommand::ResourceCreateBlob {
                    resource_id,
                    blob_mem,
                    blob_flags,
                    blob_id,
                    size,
                    entries: r.entries(nr_entries),
                }
            }
            CMD_SET_SCANOUT_BLOB => {
                // rect, six u32 (the last one padding), strides[4], offsets[4].
                let mut r = need("SET_SCANOUT_BLOB", HDR_LEN + SET_SCANOUT_BLOB_LEN)?;
                let rect = r.rect();
                let scanout_id = r.u32();
                let resource_id = r.u32();
                let width = r.u32();
                let height = r.u32();
                let format = r.u32();
                r.skip(4);
                let strides = [r.u32(), r.u32(), r.u32(), r.u32()];
                let offsets = [r.u32(), r.u32(), r.u32(), r.u32()];
                GpuCommand::SetScanoutBlob(ScanoutBlob {
                    rect,
                    scanout_id,
                    resource_id,
                    width,
                    height,
                    format,
                    strides,
                    offsets,
                })
            }
            CMD_CTX_CREATE => {
                let mut r = need("CTX_CREATE", HDR_LEN + 8 + CTX_NAME_MAX)?;
                let nlen = (r.u32() as usize).min(CTX_NAME_MAX);
                let context_init = r.u32();
                let name = buf[HDR_LEN + 8..HDR_LEN + 8 + nlen].to_vec();
                GpuCommand::CtxCreate { context_init, name }
            }
            CMD_CTX_DESTROY => GpuCommand::CtxDestroy,
            CMD_CTX_ATTACH_RESOURCE => {
                let mut r = need("CTX_ATTACH_RESOURCE", HDR_LEN + 8)?;
                GpuCommand::CtxAttachResource {
                    resource_id: r.u32(),
                }
            }
            CMD_CTX_DETACH_RESOURCE => {
                let mut r = need("CTX_DETACH_RESOURCE", HDR_LEN + 8)?;
                GpuCommand::CtxDetachResource {
                    resource_id: r.u32(),
                }
            }
            CMD_RESOURCE_CREATE_3D => {
                let mut r = need("RESOURCE_CREATE_3D", HDR_LEN + 48)?;
                let resource_id = r.u32();
                GpuCommand::ResourceCreate3d {
                    resource_id,
                    args: Create3d {
                        target: r.u32(),
                        format: r.u32(),
                        bind: r.u32(),
                        width: r.u32(),
                        height: r.u32(),
                        depth: r.u32(),
                        array_size: r.u32(),
                        last_level: r.u32(),
                        nr_samples: r.u32(),
                        flags: r.u32(),
                    },
                }
            }
            CMD_TRANSFER_TO_HOST_3D => GpuCommand::TransferToHost3d(
                need("TRANSFER_TO_HOST_3D", HDR_LEN + 48)?.transfer_3d(),
            ),
            CMD_TRANSFER_FROM_HOST_3D => GpuCommand::TransferFromHost3d(
                need("TRANSFER_FROM_HOST_3D", HDR_LEN + 48)?.transfer_3d(),
            ),
            CMD_SUBMIT_3D => {
                let mut r = need("SUBMIT_3D", SUBMIT_LEN)?;
                let size = r.u32();
                if size > MAX_SUBMIT_BYTES || size % 4 != 0 {
                    return Err(DecodeError::BadSubmitSize(size));
                }
                GpuCommand::Submit3d { size }
            }
            CMD_RESOURCE_MAP_BLOB => {
                let mut r = need("RESOURCE_MAP_BLOB", HDR_LEN + 16)?;
                let resource_id = r.u32();
                r.skip(4);
                GpuCommand::ResourceMapBlob {
                    resource_id,
                    offset: r.u64(),
                }
            }
            CMD_RESOURCE_UNMAP_BLOB => {
                let mut r = need("RESOURCE_UNMAP_BLOB", HDR_LEN + 8)?;
                GpuCommand::ResourceUnmapBlob {
                    resource_id: r.u32(),
                }
            }
            t => return Err(DecodeError::Unknown(t)),
        };
        Ok((hdr, cmd))
    }

    /// Whether the command needs a 3D device (VIRGL, RESOURCE_BLOB,
    /// CONTEXT_INIT or RESOURCE_UUID features).
    pub fn is_3d(&self) -> bool {
        !matches!(
            self,
            Self::GetDisplayInfo
                | Self::GetEdid { .. }
                | Self::ResourceCreate2d { .. }
                | Self::ResourceUnref { .. }
                | Self::SetScanout { .. }
                | Self::ResourceFlush { .. }
                | Self::TransferToHost2d { .. }
                | Self::ResourceAttachBacking { .. }
                | Self::ResourceDetachBacking { .. }
                | Self::UpdateCursor { .. }
                | Self::MoveCursor { .. }
        )
    }

    /// The command's name as the spec spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::GetDisplayInfo => "GET_DISPLAY_INFO",
            Self::GetEdid { .. } => "GET_EDID",
            Self::ResourceCreate2d { .. } => "RESOURCE_CREATE_2D",
            Self::ResourceUnref { .. } => "RESOURCE_UNREF",
            Self::SetScanout { .. } => "SET_SCANOUT",
            Self::ResourceFlush { .. } => "RESOURCE_FLUSH",
            Self::TransferToHost2d { .. } => "TRANSFER_TO_HOST_2D",
            Self::ResourceAttachBacking { .. } => "RESOURCE_ATTACH_BACKING",
            Self::ResourceDetachBacking { .. } => "RESOURCE_DETACH_BACKING",
            Self::UpdateCursor { .. } => "UPDATE_CURSOR",
            Self::MoveCursor { .. } => "MOVE_CURSOR",
            Self::GetCapsetInfo { .. } => "GET_CAPSET_INFO",
            Self::GetCapset { .. } => "GET_CAPSET",
            Self::ResourceAssignUuid { .. } => "RESOURCE_ASSIGN_UUID",
            Self::ResourceCreateBlob { .. } => "RESOURCE_CREATE_BLOB",
            Self::SetScanoutBlob(_) => "SET_SCANOUT_BLOB",
            Self::CtxCreate { .. } => "CTX_CREATE",
            Self::CtxDestroy => "CTX_DESTROY",
            Self::CtxAttachResource { .. } => "CTX_ATTACH_RESOURCE",
            Self::CtxDetachResource { .. } => "CTX_DETACH_RESOURCE",
            Self::ResourceCreate3d { .. } => "RESOURCE_CREATE_3D",
            Self::TransferToHost3d(_) => "TRANSFER_TO_HOST_3D",
            Self::TransferFromHost3d(_) => "TRANSFER_FROM_HOST_3D",
            Self::Submit3d { .. } => "SUBMIT_3D",
            Self::ResourceMapBlob { .. } => "RESOURCE_MAP_BLOB",
            Self::ResourceUnmapBlob { .. } => "RESOURCE_UNMAP_BLOB",
        }
    }
}

/// The pixel layout of a virtio-gpu format number (the names agree: both
/// give the byte order in memory).
pub fn pixel_format(format: u32) -> Option<PixelFormat> {
    Some(match format {
        FORMAT_B8G8R8A8_UNORM => PixelFormat::B8G8R8A8,
        FORMAT_B8G8R8X8_UNORM => PixelFormat::B8G8R8X8,
        FORMAT_A8R8G8B8_UNORM => PixelFormat::A8R8G8B8,
        FORMAT_X8R8G8B8_UNORM => PixelFormat::X8R8G8B8,
        FORMAT_R8G8B8A8_UNORM => PixelFormat::R8G8B8A8,
        FORMAT_X8B8G8R8_UNORM => PixelFormat::X8B8G8R8,
        FORMAT_A8B8G8R8_UNORM => PixelFormat::A8B8G8R8,
        FORMAT_R8G8B8X8_UNORM => PixelFormat::R8G8B8X8,
        _ => return None,
    })
}

/// One scanout's entry in GET_DISPLAY_INFO (`struct virtio_gpu_display_one`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DisplayOne {
    pub rect: Rect,
    pub enabled: bool,
}

/// A response's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    OkNoData,
    /// Up to [`MAX_SCANOUTS`] entries; the rest are zero.
    OkDisplayInfo(Vec<DisplayOne>),
    /// EDID bytes (at most [`EDID_MAX`]).
    OkEdid(Vec<u8>),
    OkCapsetInfo {
        capset_id: u32,
        max_version: u32,
        max_size: u32,
    },
    OkCapset(Vec<u8>),
    OkResourceUuid([u8; 16]),
    OkMapInfo(u32),
    /// An error response type (`RESP_ERR_*`).
    Err(u32),
}

impl Response {
    /// The response type.
    pub fn type_(&self) -> u32 {
        match self {
            Self::OkNoData => RESP_OK_NODATA,
            Self::OkDisplayInfo(_) => RESP_OK_DISPLAY_INFO,
            Self::OkEdid(_) => RESP_OK_EDID,
            Self::OkCapsetInfo { .. } => RESP_OK_CAPSET_INFO,
            Self::OkCapset(_) => RESP_OK_CAPSET,
            Self::OkResourceUuid(_) => RESP_OK_RESOURCE_UUID,
            Self::OkMapInfo(_) => RESP_OK_MAP_INFO,
            Self::Err(t) => *t,
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::OkDisplayInfo(_) => DISPLAY_INFO_LEN,
            Self::OkEdid(_) => EDID_RESP_LEN,
            Self::OkCapsetInfo { .. } => CAPSET_INFO_RESP_LEN,
            Self::OkCapset(data) => HDR_LEN + data.len(),
            Self::OkResourceUuid(_) => UUID_RESP_LEN,
            Self::OkMapInfo(_) => MAP_INFO_RESP_LEN,
            _ => HDR_LEN,
        }
    }

    /// Whether the response is an error.
    pub fn is_err(&self) -> bool {
        matches!(self, Self::Err(_))
    }

    /// Replaces `out` with the encoded response to the request `req`.
    pub fn encode(&self, req: &CtrlHdr, out: &mut Vec<u8>) {
        out.clear();
        req.response(self.type_()).encode(out);
        match self {
            Self::OkNoData | Self::Err(_) => {}
            Self::OkDisplayInfo(displays) => {
                for i in 0..MAX_SCANOUTS {
                    let d = displays.get(i).copied().unwrap_or_default();
                    for v in [d.rect.x, d.rect.y, d.rect.width, d.rect.height] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    out.extend_from_slice(&u32::from(d.enabled).to_le_bytes());
                    out.extend_from_slice(&0u32.to_le_bytes());
                }
            }
            Self::OkEdid(edid) => {
                let n = edid.len().min(EDID_MAX);
                out.extend_from_slice(&(n as u32).to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&edid[..n]);
                out.resize(EDID_RESP_LEN, 0);
            }
            Self::OkCapsetInfo {
                capset_id,
                max_version,
                max_size,
            } => {
                for v in [*capset_id, *max_version, *max_size, 0] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Self::OkCapset(data) => out.extend_from_slice(data),
            Self::OkResourceUuid(uuid) => out.extend_from_slice(uuid),
            Self::OkMapInfo(info) => {
                out.extend_from_slice(&info.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
            }
        }
    }
}

/// Reads little-endian fields from a slice the caller sized beforehand.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        // Callers size the buffer first; a short one reads zeroes rather
        // than panicking.
        let mut out = [0u8; N];
        let n = N.min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = &self.buf[n..];
        out
    }

    fn skip(&mut self, n: usize) {
        self.buf = &self.buf[n.min(self.buf.len())..];
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn rect(&mut self) -> Rect {
        Rect::new(self.u32(), self.u32(), self.u32(), self.u32())
    }

    fn entries(&mut self, n: u32) -> Vec<MemEntry> {
        (0..n)
            .map(|_| {
                let addr = self.u64();
                let length = self.u32();
                self.skip(4);
                MemEntry { addr, length }
            })
            .collect()
    }

    fn transfer_3d(&mut self) -> Transfer3d {
        let bx = Box3d {
            x: self.u32(),
            y: self.u32(),
            z: self.u32(),
            w: self.u32(),
            h: self.u32(),
            d: self.u32(),
        };
        Transfer3d {
            bx,
            offset: self.u64(),
            resource_id: self.u32(),
            level: self.u32(),
            stride: self.u32(),
            layer_stride: self.u32(),
        }
    }

    fn cursor_pos(&mut self) -> CursorPos {
        let scanout_id = self.u32();
        let x = self.u32() as i32;
        let y = self.u32() as i32;
        self.skip(4);
        CursorPos { scanout_id, x, y }
    }
}

/// Request encoders, the driver's side of the wire format (for tests and
/// benchmarks).
pub mod encode {
    use super::*;

    /// A request header of type `type_` with `flags` and `fence_id`.
    pub fn hdr(type_: u32, flags: u32, fence_id: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HDR_LEN);
        CtrlHdr {
            type_,
            flags,
            fence_id,
            ctx_id: 0,
            ring_idx: 0,
        }
        .encode(&mut out);
        out
    }

    fn with(type_: u32, fields: &[u32]) -> Vec<u8> {
        let mut out = hdr(type_, 0, 0);
        for f in fields {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out
    }

    pub fn get_display_info() -> Vec<u8> {
        hdr(CMD_GET_DISPLAY_INFO, 0, 0)
    }

    pub fn get_edid(scanout_id: u32) -> Vec<u8> {
        with(CMD_GET_EDID, &[scanout_id, 0])
    }

    pub fn resource_create_2d(resource_id: u32, format: u32, width: u32, height: u32) -> Vec<u8> {
        with(
            CMD_RESOURCE_CREATE_2D,
            &[resource_id, format, width, height],
        )
    }

    pub fn resource_unref(resource_id: u32) -> Vec<u8> {
        with(CMD_RESOURCE_UNREF, &[resource_id, 0])
    }

    pub fn set_scanout(scanout_id: u32, resource_id: u32, r: Rect) -> Vec<u8> {
        with(
            CMD_SET_SCANOUT,
            &[r.x, r.y, r.width, r.height, scanout_id, resource_id],
        )
    }

    /// SET_SCANOUT_BLOB of one plane (`stride`, `offset`).
    pub fn set_scanout_blob(b: &ScanoutBlob) -> Vec<u8> {
        let r = b.rect;
        let mut fields = vec![
            r.x,
            r.y,
            r.width,
            r.height,
            b.scanout_id,
            b.resource_id,
            b.width,
            b.height,
            b.format,
            0,
        ];
        fields.extend(b.strides);
        fields.extend(b.offsets);
        with(CMD_SET_SCANOUT_BLOB, &fields)
    }

    pub fn resource_flush(resource_id: u32, r: Rect) -> Vec<u8> {
        with(
            CMD_RESOURCE_FLUSH,
            &[r.x, r.y, r.width, r.height, resource_id, 0],
        )
    }

    pub fn transfer_to_host_2d(resource_id: u32, r: Rect, offset: u64) -> Vec<u8> {
        let mut out = with(CMD_TRANSFER_TO_HOST_2D, &[r.x, r.y, r.width, r.height]);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&resource_id.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    /// ATTACH_BACKING with `entries` as (address, length).
    pub fn resource_attach_backing(resource_id: u32, entries: &[(u64, u32)]) -> Vec<u8> {
        let mut out = with(
            CMD_RESOURCE_ATTACH_BACKING,
            &[resource_id, entries.len() as u32],
        );
        for &(addr, len) in entries {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        out
    }

    pub fn resource_detach_backing(resource_id: u32) -> Vec<u8> {
        with(CMD_RESOURCE_DETACH_BACKING, &[resource_id, 0])
    }

    pub fn update_cursor(
        scanout_id: u32,
        x: i32,
        y: i32,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    ) -> Vec<u8> {
        with(
            CMD_UPDATE_CURSOR,
            &[
                scanout_id,
                x as u32,
                y as u32,
                0,
                resource_id,
                hot_x,
                hot_y,
                0,
            ],
        )
    }

    pub fn move_cursor(scanout_id: u32, x: i32, y: i32) -> Vec<u8> {
        with(
            CMD_MOVE_CURSOR,
            &[scanout_id, x as u32, y as u32, 0, 0, 0, 0, 0],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_fence_echo() {
        let mut buf = encode::hdr(CMD_GET_DISPLAY_INFO, FLAG_FENCE | FLAG_INFO_RING_IDX, 77);
        buf[16..20].copy_from_slice(&5u32.to_le_bytes());
        buf[20] = 3;
        let hdr = CtrlHdr::decode(&buf).unwrap();
        assert_eq!(
            hdr,
            CtrlHdr {
                type_: CMD_GET_DISPLAY_INFO,
                flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
                fence_id: 77,
                ctx_id: 5,
                ring_idx: 3,
            }
        );
        let resp = hdr.response(RESP_OK_NODATA);
        assert_eq!(resp.flags, FLAG_FENCE | FLAG_INFO_RING_IDX);
        assert_eq!((resp.fence_id, resp.ctx_id, resp.ring_idx), (77, 5, 3));

        // Without FENCE nothing is echoed.
        let plain = CtrlHdr { flags: 0, ..hdr }.response(RESP_OK_NODATA);
        assert_eq!(
            plain,
            CtrlHdr {
                type_: RESP_OK_NODATA,
                ..CtrlHdr::default()
            }
        );
        // FENCE alone: ring_idx is not echoed.
        let fence = CtrlHdr {
            flags: FLAG_FENCE,
            ..hdr
        }
        .response(RESP_OK_NODATA);
        assert_eq!((fence.flags, fence.ring_idx), (FLAG_FENCE, 0));
    }

    #[test]
    fn decodes_every_command() {
        let r = Rect::new(1, 2, 3, 4);
        let cases = [
            (encode::get_display_info(), GpuCommand::GetDisplayInfo),
            (encode::get_edid(3), GpuCommand::GetEdid { scanout_id: 3 }),
            (
                encode::resource_create_2d(7, FORMAT_X8R8G8B8_UNORM, 640, 480),
                GpuCommand::ResourceCreate2d {
                    resource_id: 7,
                    format: FORMAT_X8R8G8B8_UNORM,
                    width: 640,
                    height: 480,
                },
            ),
            (
                encode::resource_unref(7),
                GpuCommand::ResourceUnref { resource_id: 7 },
            ),
            (
                encode::set_scanout(1, 7, r),
                GpuCommand::SetScanout {
                    rect: r,
                    scanout_id: 1,
                    resource_id: 7,
                },
            ),
            (
                encode::resource_flush(7, r),
                GpuCommand::ResourceFlush {
                    rect: r,
                    resource_id: 7,
                },
            ),
            (
                encode::transfer_to_host_2d(7, r, 1 << 40),
                GpuCommand::TransferToHost2d {
                    rect: r,
                    offset: 1 << 40,
                    resource_id: 7,
                },
            ),
            (
                encode::resource_attach_backing(7, &[(0x1000, 4096), (1 << 33, 8192)]),
                GpuCommand::ResourceAttachBacking {
                    resource_id: 7,
                    entries: vec![
                        MemEntry {
                            addr: 0x1000,
                            length: 4096,
                        },
                        MemEntry {
                            addr: 1 << 33,
                            length: 8192,
                        },
                    ],
                },
            ),
            (
                encode::resource_detach_backing(7),
                GpuCommand::ResourceDetachBacking { resource_id: 7 },
            ),
            (
                encode::update_cursor(1, -5, 10, 7, 2, 3),
                GpuCommand::UpdateCursor {
                    pos: CursorPos {
                        scanout_id: 1,
                        x: -5,
                        y: 10,
                    },
                    resource_id: 7,
                    hot_x: 2,
                    hot_y: 3,
                },
            ),
            (
                encode::move_cursor(0, 100, -1),
                GpuCommand::MoveCursor {
                    pos: CursorPos {
                        scanout_id: 0,
                        x: 100,
                        y: -1,
                    },
                },
            ),
        ];
        for (bytes, want) in cases {
            let (hdr, cmd) = GpuCommand::decode(&bytes).unwrap();
            assert_eq!(cmd, want);
            assert_eq!(hdr.flags, 0);
            assert!(!cmd.name().is_empty());
            // One byte short of any fixed part is refused.
            if bytes.len() > HDR_LEN {
                let err = GpuCommand::decode(&bytes[..bytes.len() - 1]).unwrap_err();
                assert!(matches!(err, DecodeError::Short { .. }), "{err}");
                assert_eq!(err.response_type(), RESP_ERR_UNSPEC);
            }
            // Trailing bytes are ignored.
            let mut long = bytes.clone();
            long.extend_from_slice(&[0xaa; 9]);
            assert_eq!(GpuCommand::decode(&long).unwrap().1, want);
        }
    }

    /// SET_SCANOUT_BLOB as Linux lays it out (96 bytes, fields at fixed
    /// offsets), built without the encoder: a real guest's request.
    #[test]
    fn set_scanout_blob_has_linux_layout() {
        let mut buf = [0u8; 96];
        let mut put = |at: usize, v: u32| buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(0, CMD_SET_SCANOUT_BLOB);
        for (i, v) in [0u32, 0, 1280, 800, 0, 42, 1280, 800, FORMAT_B8G8R8X8_UNORM]
            .into_iter()
            .enumerate()
        {
            put(24 + 4 * i, v);
        }
        put(64, 5120);
        put(80, 4096);
        let want = ScanoutBlob {
            rect: Rect::new(0, 0, 1280, 800),
            scanout_id: 0,
            resource_id: 42,
            width: 1280,
            height: 800,
            format: FORMAT_B8G8R8X8_UNORM,
            strides: [5120, 0, 0, 0],
            offsets: [4096, 0, 0, 0],
        };
        assert_eq!(
            GpuCommand::decode(&buf).map(|(_, c)| c),
            Ok(GpuCommand::SetScanoutBlob(want))
        );
        assert_eq!(encode::set_scanout_blob(&want), buf);
        assert!(matches!(
            GpuCommand::decode(&buf[..95]),
            Err(DecodeError::Short {
                need: 96,
                got: 95,
                ..
            })
        ));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            GpuCommand::decode(&[0; 23]).unwrap_err(),
            DecodeError::ShortHeader(23)
        );
        for t in [0, 0x010e, 0x020a, 0x1100, u32::MAX] {
            let err = GpuCommand::decode(&encode::hdr(t, 0, 0)).unwrap_err();
            assert_eq!(err, DecodeError::Unknown(t));
            assert_eq!(err.response_type(), RESP_ERR_UNSPEC);
        }
        // 3D requests shorter than their struct.
        for (t, name) in [
            (CMD_GET_CAPSET_INFO, "GET_CAPSET_INFO"),
            (CMD_CTX_CREATE, "CTX_CREATE"),
            (CMD_RESOURCE_CREATE_3D, "RESOURCE_CREATE_3D"),
            (CMD_SUBMIT_3D, "SUBMIT_3D"),
            (CMD_RESOURCE_CREATE_BLOB, "RESOURCE_CREATE_BLOB"),
            (CMD_SET_SCANOUT_BLOB, "SET_SCANOUT_BLOB"),
        ] {
            let err = GpuCommand::decode(&encode::hdr(t, 0, 0)).unwrap_err();
            assert!(
                matches!(err, DecodeError::Short { name: n, got: 24, .. } if n == name),
                "{err:?}"
            );
        }
        // SUBMIT_3D sizes: whole dwords, at most 4 MiB.
        for (size, ok) in [
            (0u32, true),
            (8, true),
            (6, false),
            (MAX_SUBMIT_BYTES, true),
            (MAX_SUBMIT_BYTES + 4, false),
        ] {
            let mut req = encode::hdr(CMD_SUBMIT_3D, 0, 0);
            req.extend_from_slice(&size.to_le_bytes());
            req.extend_from_slice(&0u32.to_le_bytes());
            let got = GpuCommand::decode(&req).map(|(_, c)| c);
            if ok {
                assert_eq!(got, Ok(GpuCommand::Submit3d { size }));
            } else {
                assert_eq!(got, Err(DecodeError::BadSubmitSize(size)));
            }
        }
        // CTX_CREATE's name length is clamped to its 64-byte field.
        let mut req = encode::hdr(CMD_CTX_CREATE, 0, 0);
        req.extend_from_slice(&u32::MAX.to_le_bytes());
        req.extend_from_slice(&4u32.to_le_bytes());
        req.extend_from_slice(&[b'x'; 64]);
        match GpuCommand::decode(&req).unwrap().1 {
            GpuCommand::CtxCreate { context_init, name } => {
                assert_eq!(context_init, 4);
                assert_eq!(name.len(), 64);
            }
            other => panic!("{other:?}"),
        }
        let mut too_many = encode::resource_attach_backing(1, &[]);
        too_many[28..32].copy_from_slice(&(MAX_BACKING_ENTRIES + 1).to_le_bytes());
        let err = GpuCommand::decode(&too_many).unwrap_err();
        assert_eq!(err, DecodeError::TooManyEntries(MAX_BACKING_ENTRIES + 1));
        assert_eq!(err.response_type(), RESP_ERR_INVALID_PARAMETER);
        too_many[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(GpuCommand::decode(&too_many).is_err());
        // nr_entries promises more than the request holds.
        let mut short = encode::resource_attach_backing(1, &[(0, 4096)]);
        short[28..32].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            GpuCommand::decode(&short).unwrap_err(),
            DecodeError::Short {
                name: "RESOURCE_ATTACH_BACKING",
                need: 64,
                got: 48
            }
        );
    }

    #[test]
    fn formats() {
        let all = [
            (1, PixelFormat::B8G8R8A8),
            (2, PixelFormat::B8G8R8X8),
            (3, PixelFormat::A8R8G8B8),
            (4, PixelFormat::X8R8G8B8),
            (67, PixelFormat::R8G8B8A8),
            (68, PixelFormat::X8B8G8R8),
            (121, PixelFormat::A8B8G8R8),
            (134, PixelFormat::R8G8B8X8),
        ];
        for (n, f) in all {
            assert_eq!(pixel_format(n), Some(f));
        }
        for n in [0, 5, 66, 100, 135, u32::MAX] {
            assert_eq!(pixel_format(n), None);
        }
    }

    #[test]
    fn encodes_responses() {
        let req = CtrlHdr {
            type_: CMD_GET_DISPLAY_INFO,
            flags: FLAG_FENCE,
            fence_id: 9,
            ctx_id: 0,
            ring_idx: 0,
        };
        let mut out = Vec::new();
        Response::OkNoData.encode(&req, &mut out);
        assert_eq!(out.len(), HDR_LEN);
        assert_eq!(&out[..4], &RESP_OK_NODATA.to_le_bytes());
        assert_eq!(&out[4..8], &FLAG_FENCE.to_le_bytes());
        assert_eq!(&out[8..16], &9u64.to_le_bytes());

        let info = Response::OkDisplayInfo(vec![DisplayOne {
            rect: Rect::new(0, 0, 1280, 800),
            enabled: true,
        }]);
        info.encode(&req, &mut out);
        assert_eq!(out.len(), DISPLAY_INFO_LEN);
        assert_eq!(out.len(), info.encoded_len());
        assert_eq!(&out[32..36], &1280u32.to_le_bytes());
        assert_eq!(&out[36..40], &800u32.to_le_bytes());
        assert_eq!(&out[40..44], &1u32.to_le_bytes());
        assert!(out[48..].iter().all(|&b| b == 0));

        let edid = Response::OkEdid(vec![0xab; 128]);
        edid.encode(&req, &mut out);
        assert_eq!(out.len(), EDID_RESP_LEN);
        assert_eq!(&out[24..28], &128u32.to_le_bytes());
        assert_eq!(out[32], 0xab);
        assert_eq!(out[32 + 128], 0);

        Response::Err(RESP_ERR_INVALID_PARAMETER).encode(&req, &mut out);
        assert_eq!(&out[..4], &RESP_ERR_INVALID_PARAMETER.to_le_bytes());
        assert_eq!(out.len(), HDR_LEN);
    }
}
