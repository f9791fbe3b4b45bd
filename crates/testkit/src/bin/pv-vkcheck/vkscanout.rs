//! `--vk-scanout`: a picture made by Vulkan alone, shown on the display
//! through a dma-buf, the way a Wayland compositor shows a Vulkan client's
//! buffer.
//!
//! A 4x4 image of sixteen colours (uploaded from a staging buffer) is
//! blitted with nearest filtering onto a linear B8G8R8A8 image the size of
//! the display, whose memory is allocated for export as a dma-buf. The
//! image is copied back and checked pixel by pixel, then the dma-buf goes
//! to KMS (drmPrimeFDToHandle, drmModeAddFB2, drmModeSetCrtc). Through
//! Venus the exported memory is a host blob resource, so virtio-gpu shows
//! it with SET_SCANOUT_BLOB and the host reads the pixels from the blob.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use ash::vk;

use crate::vk::{barrier, Gpu};

/// Tiles across and down.
pub const TILES: u32 = 4;

/// The colour (red, green, blue) of tile (`tx`, `ty`).
pub fn tile_color(tx: u32, ty: u32) -> [u8; 3] {
    [
        (tx * 80 + 15) as u8,
        (ty * 80 + 15) as u8,
        (255 - (tx + ty) * 30) as u8,
    ]
}

/// The colour pixel (x, y) of a `width` x `height` picture has: a nearest
/// blit samples source texel floor((x + 0.5) * TILES / width).
pub fn expected_pixel(x: u32, y: u32, width: u32, height: u32) -> [u8; 3] {
    let tx = ((2 * x + 1) * TILES / (2 * width)).min(TILES - 1);
    let ty = ((2 * y + 1) * TILES / (2 * height)).min(TILES - 1);
    tile_color(tx, ty)
}

/// Device extensions the export needs.
pub fn extensions() -> [&'static std::ffi::CStr; 2] {
    [
        ash::khr::external_memory_fd::NAME,
        ash::ext::external_memory_dma_buf::NAME,
    ]
}

/// An image with its own memory, dedicated and exportable as a dma-buf
/// when `export` was asked for.
pub struct Image {
    device: ash::Device,
    pub image: vk::Image,
    memory: vk::DeviceMemory,
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: objects of this device, no longer used by a submission.
        unsafe {
            self.device.destroy_image(self.image, None);
            self.device.free_memory(self.memory, None);
        }
    }
}

fn image(
    gpu: &Gpu,
    width: u32,
    height: u32,
    tiling: vk::ImageTiling,
    export: bool,
) -> Result<Image> {
    let d = gpu.device();
    let handle = vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT;
    let mut external = vk::ExternalMemoryImageCreateInfo::default().handle_types(handle);
    let mut info = vk::ImageCreateInfo::default()
        .image_type(vk::ImageType::TYPE_2D)
        .format(vk::Format::B8G8R8A8_UNORM)
        .extent(vk::Extent3D {
            width,
            height,
            depth: 1,
        })
        .mip_levels(1)
        .array_layers(1)
        .samples(vk::SampleCountFlags::TYPE_1)
        .tiling(tiling)
        .usage(vk::ImageUsageFlags::TRANSFER_DST | vk::ImageUsageFlags::TRANSFER_SRC)
        .sharing_mode(vk::SharingMode::EXCLUSIVE)
        .initial_layout(vk::ImageLayout::UNDEFINED);
    if export {
        info = info.push_next(&mut external);
    }
    // SAFETY: valid create info on a live device.
    let image = unsafe { d.create_image(&info, None) }
        .with_context(|| format!("vkCreateImage {width}x{height} {tiling:?}"))?;
    // SAFETY: the image was just created on this device.
    let req = unsafe { d.get_image_memory_requirements(image) };
    let found = gpu
        .memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::DEVICE_LOCAL)
        .or_else(|| gpu.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::empty()));
    let Some((type_index, _)) = found else {
        // SAFETY: an unused image of this device.
        unsafe { d.destroy_image(image, None) };
        bail!("no memory type for a {width}x{height} image");
    };
    let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().image(image);
    let mut exported = vk::ExportMemoryAllocateInfo::default().handle_types(handle);
    let mut ainfo = vk::MemoryAllocateInfo::default()
        .allocation_size(req.size)
        .memory_type_index(type_index);
    if export {
        ainfo = ainfo.push_next(&mut dedicated).push_next(&mut exported);
    }
    // SAFETY: valid allocate info; memory and image are released together.
    let memory = match unsafe { d.allocate_memory(&ainfo, None) } {
        Ok(m) => m,
        Err(e) => {
            // SAFETY: an unused image of this device.
            unsafe { d.destroy_image(image, None) };
            return Err(e).context("vkAllocateMemory (exportable as a dma-buf)");
        }
    };
    let img = Image {
        device: d.clone(),
        image,
        memory,
    };
    // SAFETY: fresh image and memory of this device, offset 0.
    unsafe { d.bind_image_memory(image, memory, 0) }.context("vkBindImageMemory")?;
    Ok(img)
}

/// The picture: made, checked and exported.
pub struct Picture {
    /// The image whose memory the dma-buf is (kept alive while shown).
    _image: Image,
    pub dmabuf: OwnedFd,
    /// Bytes between rows.
    pub pitch: u32,
    /// Where the first row starts in the dma-buf.
    pub offset: u32,
    /// The first wrong pixel of the read-back copy, if any.
    pub wrong: Option<String>,
}

/// Draws the tiles onto a `width` x `height` exportable image, reads it
/// back and checks it, and exports its memory as a dma-buf.
pub fn draw(gpu: &Gpu, width: u32, height: u32) -> Result<Picture> {
    let d = gpu.device();
    let format = vk::Format::B8G8R8A8_UNORM;
    // SAFETY: a physical device of this instance.
    let props = unsafe {
        gpu.instance()
            .get_physical_device_format_properties(gpu.physical(), format)
    };
    if !props
        .linear_tiling_features
        .contains(vk::FormatFeatureFlags::BLIT_DST)
    {
        bail!("{format:?} with linear tiling cannot be a blit destination here");
    }
    let tiles = image(gpu, TILES, TILES, vk::ImageTiling::OPTIMAL, false)?;
    let screen = image(gpu, width, height, vk::ImageTiling::LINEAR, true)?;

    let mut staging = gpu.buffer(
        u64::from(TILES * TILES * 4),
        vk::BufferUsageFlags::TRANSFER_SRC,
        true,
    )?;
    for (i, w) in staging.words_mut()?.iter_mut().enumerate() {
        let [r, g, b] = tile_color(i as u32 % TILES, i as u32 / TILES);
        // B8G8R8A8 in memory: blue, green, red, alpha.
        *w = u32::from_le_bytes([b, g, r, 255]);
    }
    staging.flush()?;
    let frame = u64::from(width) * u64::from(height) * 4;
    let mut readback = gpu.buffer(frame, vk::BufferUsageFlags::TRANSFER_DST, true)?;

    let color = vk::ImageSubresourceRange {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        base_mip_level: 0,
        level_count: 1,
        base_array_layer: 0,
        layer_count: 1,
    };
    let layers = vk::ImageSubresourceLayers {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        mip_level: 0,
        base_array_layer: 0,
        layer_count: 1,
    };
    let transition = |img: vk::Image, from, to, src, dst| {
        vk::ImageMemoryBarrier::default()
            .image(img)
            .subresource_range(color)
            .old_layout(from)
            .new_layout(to)
            .src_access_mask(src)
            .dst_access_mask(dst)
            .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
            .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
    };
    let stage = vk::PipelineStageFlags::TRANSFER;
    // Image layout transitions between `from` and `to` stages.
    let images = |d: &ash::Device,
                  cmd: vk::CommandBuffer,
                  from: vk::PipelineStageFlags,
                  to: vk::PipelineStageFlags,
                  barriers: &[vk::ImageMemoryBarrier<'_>]| {
        // SAFETY: a command buffer in the recording state; the images are
        // live until the submission has been waited for.
        unsafe {
            d.cmd_pipeline_barrier(
                cmd,
                from,
                to,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                barriers,
            )
        };
    };
    gpu.run(|d, cmd| {
        // SAFETY: a command buffer in the recording state; every object is
        // live until the submission has been waited for.
        unsafe {
            let to_dst = [
                transition(
                    tiles.image,
                    vk::ImageLayout::UNDEFINED,
                    vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                    vk::AccessFlags::empty(),
                    vk::AccessFlags::TRANSFER_WRITE,
                ),
                transition(
                    screen.image,
                    vk::ImageLayout::UNDEFINED,
                    vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                    vk::AccessFlags::empty(),
                    vk::AccessFlags::TRANSFER_WRITE,
                ),
            ];
            images(d, cmd, vk::PipelineStageFlags::TOP_OF_PIPE, stage, &to_dst);
            let upload = vk::BufferImageCopy::default()
                .image_subresource(layers)
                .image_extent(vk::Extent3D {
                    width: TILES,
                    height: TILES,
                    depth: 1,
                });
            d.cmd_copy_buffer_to_image(
                cmd,
                staging.buffer,
                tiles.image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                &[upload],
            );
            let tiles_src = [transition(
                tiles.image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::TRANSFER_READ,
            )];
            images(d, cmd, stage, stage, &tiles_src);
            let blit = vk::ImageBlit::default()
                .src_subresource(layers)
                .src_offsets([
                    vk::Offset3D::default(),
                    vk::Offset3D {
                        x: TILES as i32,
                        y: TILES as i32,
                        z: 1,
                    },
                ])
                .dst_subresource(layers)
                .dst_offsets([
                    vk::Offset3D::default(),
                    vk::Offset3D {
                        x: width as i32,
                        y: height as i32,
                        z: 1,
                    },
                ]);
            d.cmd_blit_image(
                cmd,
                tiles.image,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                screen.image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                &[blit],
                vk::Filter::NEAREST,
            );
            let screen_src = [transition(
                screen.image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::TRANSFER_READ,
            )];
            images(d, cmd, stage, stage, &screen_src);
            let back = vk::BufferImageCopy::default()
                .image_subresource(layers)
                .image_extent(vk::Extent3D {
                    width,
                    height,
                    depth: 1,
                });
            d.cmd_copy_image_to_buffer(
                cmd,
                screen.image,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                readback.buffer,
                &[back],
            );
            // The display reads the image's memory directly: GENERAL, and
            // every write done before the fence.
            let shown = [transition(
                screen.image,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                vk::ImageLayout::GENERAL,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::MEMORY_READ,
            )];
            images(
                d,
                cmd,
                stage,
                vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                &shown,
            );
        }
        barrier(
            d,
            cmd,
            (stage, vk::AccessFlags::TRANSFER_WRITE),
            (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ),
        );
    })?;
    readback.invalidate()?;
    let wrong = first_wrong(readback.words_mut()?, width, height);

    let subresource = vk::ImageSubresource {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        mip_level: 0,
        array_layer: 0,
    };
    // SAFETY: a linear image of this device.
    let layout = unsafe { d.get_image_subresource_layout(screen.image, subresource) };
    let fds = ash::khr::external_memory_fd::Device::new(gpu.instance(), d);
    let info = vk::MemoryGetFdInfoKHR::default()
        .memory(screen.memory)
        .handle_type(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT);
    // SAFETY: the memory was allocated exportable as a dma-buf.
    let fd = unsafe { fds.get_memory_fd(&info) }.context("vkGetMemoryFdKHR (dma-buf)")?;
    // SAFETY: vkGetMemoryFdKHR hands over a new file descriptor.
    let dmabuf = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Picture {
        _image: screen,
        dmabuf,
        pitch: u32::try_from(layout.row_pitch).context("row pitch")?,
        offset: u32::try_from(layout.offset).context("image offset")?,
        wrong,
    })
}

fn first_wrong(words: &[u32], width: u32, height: u32) -> Option<String> {
    for y in 0..height {
        for x in 0..width {
            let [b, g, r, _] = words[(y * width + x) as usize].to_le_bytes();
            let want = expected_pixel(x, y, width, height);
            if [r, g, b] != want {
                return Some(format!(
                    "pixel ({x}, {y}): got {:?}, want {want:?}",
                    [r, g, b]
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_split_the_picture_evenly_when_the_size_divides() {
        assert_eq!(expected_pixel(0, 0, 1280, 800), tile_color(0, 0));
        assert_eq!(expected_pixel(319, 199, 1280, 800), tile_color(0, 0));
        assert_eq!(expected_pixel(320, 200, 1280, 800), tile_color(1, 1));
        assert_eq!(expected_pixel(1279, 799, 1280, 800), tile_color(3, 3));
    }

    #[test]
    fn all_sixteen_tile_colours_differ() {
        let mut all: Vec<[u8; 3]> = (0..16).map(|i| tile_color(i % 4, i / 4)).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 16);
    }
}
