//! The Vulkan side: the first physical device, buffers in host-visible and
//! device memory, transfers and a compute dispatch with checked results,
//! and the timings `--bench` prints.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ash::vk;

use crate::spirv;

/// A buffer with its own memory; mapped when host-visible.
pub struct Buffer {
    device: ash::Device,
    pub buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    pub size: u64,
    ptr: Option<*mut u8>,
    coherent: bool,
}

impl Buffer {
    /// The mapping as u32 words (host-visible buffers only).
    pub fn words_mut(&mut self) -> Result<&mut [u32]> {
        let ptr = self.ptr.context("the buffer is not host-visible")?;
        // SAFETY: the mapping covers `size` bytes (mapped with VK_WHOLE_SIZE
        // of an allocation at least that large), is aligned to at least
        // minMemoryMapAlignment (>= 64) and stays mapped until drop; `&mut
        // self` keeps this the only view.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u32>(), (self.size / 4) as usize) })
    }

    /// Makes device writes visible to the host (non-coherent memory).
    pub fn invalidate(&self) -> Result<()> {
        if self.coherent || self.ptr.is_none() {
            return Ok(());
        }
        let range = vk::MappedMemoryRange::default()
            .memory(self.memory)
            .offset(0)
            .size(vk::WHOLE_SIZE);
        // SAFETY: the memory is mapped and belongs to this device.
        unsafe { self.device.invalidate_mapped_memory_ranges(&[range]) }
            .context("vkInvalidateMappedMemoryRanges")
    }

    /// Makes host writes visible to the device (non-coherent memory).
    pub fn flush(&self) -> Result<()> {
        if self.coherent || self.ptr.is_none() {
            return Ok(());
        }
        let range = vk::MappedMemoryRange::default()
            .memory(self.memory)
            .offset(0)
            .size(vk::WHOLE_SIZE);
        // SAFETY: the memory is mapped and belongs to this device.
        unsafe { self.device.flush_mapped_memory_ranges(&[range]) }
            .context("vkFlushMappedMemoryRanges")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the buffer and memory were created on this device, and
        // every submission using them has been waited for.
        unsafe {
            if self.ptr.is_some() {
                self.device.unmap_memory(self.memory);
            }
            self.device.destroy_buffer(self.buffer, None);
            self.device.free_memory(self.memory, None);
        }
    }
}

/// The first physical device, with one queue, a command buffer and a fence.
pub struct Gpu {
    _entry: ash::Entry,
    instance: ash::Instance,
    physical: vk::PhysicalDevice,
    device: ash::Device,
    queue: vk::Queue,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    memory: vk::PhysicalDeviceMemoryProperties,
    pub name: String,
    pub api: String,
    pub memory_types: String,
}

impl Gpu {
    pub fn new() -> Result<Self> {
        Self::with_extensions(&[])
    }

    /// Like [`Gpu::new`], with these device extensions enabled.
    pub fn with_extensions(extensions: &[&std::ffi::CStr]) -> Result<Self> {
        // SAFETY: loading the Vulkan loader runs its initializers; nothing
        // else in this process uses Vulkan.
        let entry = unsafe { ash::Entry::load() }.context("cannot load libvulkan.so.1")?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"pv-vkcheck")
            .api_version(vk::make_api_version(0, 1, 1, 0));
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: valid create info; the instance is destroyed in Drop.
        let instance = unsafe { entry.create_instance(&info, None) }.context("vkCreateInstance")?;
        match Self::open(entry.clone(), instance.clone(), extensions) {
            Ok(gpu) => Ok(gpu),
            Err(e) => {
                // SAFETY: nothing created from the instance survives; `entry`
                // keeps the loader loaded until after this call.
                unsafe { instance.destroy_instance(None) };
                drop(entry);
                Err(e)
            }
        }
    }

    fn open(
        entry: ash::Entry,
        instance: ash::Instance,
        extensions: &[&std::ffi::CStr],
    ) -> Result<Self> {
        // SAFETY: a live instance.
        let pdevs = unsafe { instance.enumerate_physical_devices() }
            .context("vkEnumeratePhysicalDevices")?;
        let &pdev = pdevs.first().context("no Vulkan physical device")?;
        // SAFETY: pdev comes from this instance.
        let props = unsafe { instance.get_physical_device_properties(pdev) };
        let name = props
            .device_name_as_c_str()
            .unwrap_or(c"?")
            .to_string_lossy()
            .into_owned();
        let v = props.api_version;
        let api = format!(
            "{}.{}.{}",
            vk::api_version_major(v),
            vk::api_version_minor(v),
            vk::api_version_patch(v)
        );
        // SAFETY: pdev comes from this instance.
        let families = unsafe { instance.get_physical_device_queue_family_properties(pdev) };
        let family = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .context("no compute queue family")? as u32;
        // SAFETY: pdev comes from this instance.
        let memory = unsafe { instance.get_physical_device_memory_properties(pdev) };
        let memory_types = memory.memory_types[..memory.memory_type_count as usize]
            .iter()
            .map(|t| format!("{:?}", t.property_flags))
            .collect::<Vec<_>>()
            .join("; ");
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&priorities)];
        let names: Vec<*const std::ffi::c_char> = extensions.iter().map(|e| e.as_ptr()).collect();
        let dinfo = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&names);
        // SAFETY: valid create info for a device of this instance; the
        // extension names outlive the call.
        let device = unsafe { instance.create_device(pdev, &dinfo, None) }
            .with_context(|| format!("vkCreateDevice (extensions: {extensions:?})"))?;
        // SAFETY: the family was created with one queue.
        let queue = unsafe { device.get_device_queue(family, 0) };
        let pinfo = vk::CommandPoolCreateInfo::default()
            .queue_family_index(family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: valid create infos on a live device; everything is
        // destroyed in Drop (or below on failure).
        let made = unsafe {
            device.create_command_pool(&pinfo, None).and_then(|pool| {
                let ainfo = vk::CommandBufferAllocateInfo::default()
                    .command_pool(pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1);
                let cmd = device.allocate_command_buffers(&ainfo)?[0];
                let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
                Ok((pool, cmd, fence))
            })
        };
        let (pool, cmd, fence) = match made {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: nothing else uses the device.
                unsafe { device.destroy_device(None) };
                return Err(e).context("command pool, command buffer or fence");
            }
        };
        Ok(Self {
            _entry: entry,
            instance,
            physical: pdev,
            device,
            queue,
            pool,
            cmd,
            fence,
            memory,
            name,
            api,
            memory_types,
        })
    }

    pub fn device(&self) -> &ash::Device {
        &self.device
    }

    pub fn instance(&self) -> &ash::Instance {
        &self.instance
    }

    pub fn physical(&self) -> vk::PhysicalDevice {
        self.physical
    }

    pub fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> Option<(u32, bool)> {
        (0..self.memory.memory_type_count).find_map(|i| {
            let flags = self.memory.memory_types[i as usize].property_flags;
            (bits & (1 << i) != 0 && flags.contains(want))
                .then(|| (i, flags.contains(vk::MemoryPropertyFlags::HOST_COHERENT)))
        })
    }

    /// A buffer of `size` bytes; `host` asks for host-visible memory
    /// (mapped), otherwise device-local is preferred.
    pub fn buffer(&self, size: u64, usage: vk::BufferUsageFlags, host: bool) -> Result<Buffer> {
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid create info on a live device.
        let buffer = unsafe { self.device.create_buffer(&info, None) }.context("vkCreateBuffer")?;
        // SAFETY: the buffer was just created on this device.
        let req = unsafe { self.device.get_buffer_memory_requirements(buffer) };
        let found = if host {
            self.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::HOST_VISIBLE)
        } else {
            self.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::DEVICE_LOCAL)
                .or_else(|| {
                    self.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::empty())
                })
        };
        let Some((type_index, coherent)) = found else {
            // SAFETY: unused buffer of this device.
            unsafe { self.device.destroy_buffer(buffer, None) };
            bail!("no memory type for a {size}-byte buffer (host-visible: {host})");
        };
        let ainfo = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        // SAFETY: valid allocate info; the memory is bound to the buffer
        // and both are released together in Buffer's Drop.
        let memory = match unsafe { self.device.allocate_memory(&ainfo, None) } {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: unused buffer of this device.
                unsafe { self.device.destroy_buffer(buffer, None) };
                return Err(e).context("vkAllocateMemory");
            }
        };
        let mut b = Buffer {
            device: self.device.clone(),
            buffer,
            memory,
            size,
            ptr: None,
            coherent,
        };
        // SAFETY: fresh buffer and memory of this device, offset 0.
        unsafe { self.device.bind_buffer_memory(buffer, memory, 0) }
            .context("vkBindBufferMemory")?;
        if host {
            // SAFETY: host-visible memory, not mapped yet.
            let ptr = unsafe {
                self.device
                    .map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            }
            .context("vkMapMemory")?;
            b.ptr = Some(ptr.cast());
        }
        Ok(b)
    }

    /// Records commands with `record`, submits them and waits; returns the
    /// time from submit to the fence's signal.
    pub fn run(&self, record: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<Duration> {
        self.record(record)?;
        let cmds = [self.cmd];
        self.submit_wait(&cmds)
    }

    /// Records commands with `record` into the command buffer, to be
    /// submitted by the caller (see [`Gpu::submit`]).
    pub fn record(&self, record: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<()> {
        let d = &self.device;
        // SAFETY: the command buffer is not in use (every submission is
        // waited for before its next recording).
        unsafe {
            d.reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())
                .context("vkResetCommandBuffer")?;
            d.begin_command_buffer(
                self.cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .context("vkBeginCommandBuffer")?;
        }
        record(d, self.cmd);
        // SAFETY: as above.
        unsafe { d.end_command_buffer(self.cmd) }.context("vkEndCommandBuffer")
    }

    /// Submits the recorded command buffer with `fence`, without waiting.
    pub fn submit(&self, fence: vk::Fence) -> Result<()> {
        let cmds = [self.cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        // SAFETY: a recorded command buffer of this device, an unsignalled
        // fence of this device; the caller waits before reusing either.
        unsafe { self.device.queue_submit(self.queue, &submit, fence) }.context("vkQueueSubmit")
    }

    /// Submits `cmds` (maybe none) with the fence and waits for it.
    pub fn submit_wait(&self, cmds: &[vk::CommandBuffer]) -> Result<Duration> {
        let submit = [vk::SubmitInfo::default().command_buffers(cmds)];
        let start = Instant::now();
        // SAFETY: recorded command buffers of this device; the fence is
        // unsignalled and reset after the wait.
        unsafe {
            self.device
                .queue_submit(self.queue, &submit, self.fence)
                .context("vkQueueSubmit")?;
            self.device
                .wait_for_fences(&[self.fence], true, 60_000_000_000)
                .context("vkWaitForFences")?;
        }
        let took = start.elapsed();
        // SAFETY: the fence is signalled and no longer in use.
        unsafe { self.device.reset_fences(&[self.fence]) }.context("vkResetFences")?;
        Ok(took)
    }

    /// A compute pipeline running [`spirv::lcg_shader`] over one storage
    /// buffer.
    pub fn lcg_pipeline(&self) -> Result<Pipeline> {
        Pipeline::new(&self.device)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: all submissions were waited for; the objects belong to
        // this device and instance and are destroyed once.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_fence(self.fence, None);
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// The compute pipeline and its descriptor set.
pub struct Pipeline {
    device: ash::Device,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
}

impl Pipeline {
    fn new(device: &ash::Device) -> Result<Self> {
        let mut p = Pipeline {
            device: device.clone(),
            module: vk::ShaderModule::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
            pool: vk::DescriptorPool::null(),
            set: vk::DescriptorSet::null(),
        };
        let code = spirv::lcg_shader();
        // SAFETY: valid create infos on a live device; every object is
        // stored in `p` at once, so Drop releases what was made even when a
        // later step fails.
        unsafe {
            p.module = device
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)
                .context("vkCreateShaderModule")?;
            let bindings = [vk::DescriptorSetLayoutBinding::default()
                .binding(0)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)];
            p.set_layout = device
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                    None,
                )
                .context("vkCreateDescriptorSetLayout")?;
            let ranges = [vk::PushConstantRange::default()
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
                .offset(0)
                .size(4)];
            let layouts = [p.set_layout];
            p.layout = device
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default()
                        .set_layouts(&layouts)
                        .push_constant_ranges(&ranges),
                    None,
                )
                .context("vkCreatePipelineLayout")?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(p.module)
                .name(c"main");
            let info = [vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(p.layout)];
            p.pipeline = device
                .create_compute_pipelines(vk::PipelineCache::null(), &info, None)
                .map_err(|(_, e)| e)
                .context("vkCreateComputePipelines")?[0];
            let sizes = [vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)];
            p.pool = device
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(1)
                        .pool_sizes(&sizes),
                    None,
                )
                .context("vkCreateDescriptorPool")?;
            p.set = device
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default()
                        .descriptor_pool(p.pool)
                        .set_layouts(&layouts),
                )
                .context("vkAllocateDescriptorSets")?[0];
        }
        Ok(p)
    }

    /// Points the shader's storage buffer at `buffer`.
    pub fn bind(&self, buffer: &Buffer) {
        let infos = [vk::DescriptorBufferInfo::default()
            .buffer(buffer.buffer)
            .offset(0)
            .range(vk::WHOLE_SIZE)];
        let write = [vk::WriteDescriptorSet::default()
            .dst_set(self.set)
            .dst_binding(0)
            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
            .buffer_info(&infos)];
        // SAFETY: the set is not in use by a pending submission.
        unsafe { self.device.update_descriptor_sets(&write, &[]) };
    }

    /// Records a dispatch of `invocations` (a multiple of the local size)
    /// with `rounds` rounds.
    pub fn record(&self, d: &ash::Device, cmd: vk::CommandBuffer, invocations: u32, rounds: u32) {
        // SAFETY: a command buffer in the recording state; the pipeline,
        // layout and set are live.
        unsafe {
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[self.set],
                &[],
            );
            d.cmd_push_constants(
                cmd,
                self.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &rounds.to_le_bytes(),
            );
            d.cmd_dispatch(cmd, invocations / spirv::LOCAL_SIZE, 1, 1);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // SAFETY: objects of this device, not in use, destroyed once (null
        // handles are ignored by Vulkan).
        unsafe {
            self.device.destroy_descriptor_pool(self.pool, None);
            self.device.destroy_pipeline(self.pipeline, None);
            self.device.destroy_pipeline_layout(self.layout, None);
            self.device
                .destroy_descriptor_set_layout(self.set_layout, None);
            self.device.destroy_shader_module(self.module, None);
        }
    }
}

/// A barrier from `src` writes to `dst` accesses (whole memory).
pub fn barrier(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    src: (vk::PipelineStageFlags, vk::AccessFlags),
    dst: (vk::PipelineStageFlags, vk::AccessFlags),
) {
    let m = [vk::MemoryBarrier::default()
        .src_access_mask(src.1)
        .dst_access_mask(dst.1)];
    // SAFETY: a command buffer in the recording state.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            src.0,
            dst.0,
            vk::DependencyFlags::empty(),
            &m,
            &[],
            &[],
        )
    };
}

pub const TRANSFER_WRITE: (vk::PipelineStageFlags, vk::AccessFlags) = (
    vk::PipelineStageFlags::TRANSFER,
    vk::AccessFlags::TRANSFER_WRITE,
);
pub const TRANSFER_READ: (vk::PipelineStageFlags, vk::AccessFlags) = (
    vk::PipelineStageFlags::TRANSFER,
    vk::AccessFlags::TRANSFER_READ,
);
pub const HOST_READ: (vk::PipelineStageFlags, vk::AccessFlags) =
    (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ);
pub const SHADER_WRITE: (vk::PipelineStageFlags, vk::AccessFlags) = (
    vk::PipelineStageFlags::COMPUTE_SHADER,
    vk::AccessFlags::SHADER_WRITE,
);

/// The word the host writes at `i` into the upload buffer.
pub fn upload_word(i: u32) -> u32 {
    i.wrapping_mul(2_654_435_761) ^ 0x5a5a_5a5a
}

/// The word vkCmdFillBuffer writes.
pub const FILL_WORD: u32 = 0xa5c3_0f1e;

/// First mismatch of `got` against `want(i)`, as a message.
pub fn first_mismatch(got: &[u32], want: impl Fn(u32) -> u32) -> Option<String> {
    got.iter().enumerate().find_map(|(i, &g)| {
        let w = want(i as u32);
        (g != w).then(|| format!("word {i}: got {g:#010x}, want {w:#010x}"))
    })
}

/// Host upload → device, a fill, device → host: checks every word.
///
/// The host writes a pattern into mapped memory U; the GPU fills the first
/// half of device buffer D, copies U's second half into D's second half,
/// then copies D into mapped memory R, which the host checks.
pub fn transfer_check(gpu: &Gpu, bytes: u64) -> Result<Option<String>> {
    use vk::BufferUsageFlags as U;
    let half = bytes / 2;
    let mut up = gpu.buffer(bytes, U::TRANSFER_SRC, true)?;
    for (i, w) in up.words_mut()?.iter_mut().enumerate() {
        *w = upload_word(i as u32);
    }
    up.flush()?;
    let dev = gpu.buffer(bytes, U::TRANSFER_SRC | U::TRANSFER_DST, false)?;
    let mut back = gpu.buffer(bytes, U::TRANSFER_DST, true)?;
    back.words_mut()?.fill(0);
    back.flush()?;
    gpu.run(|d, cmd| {
        // SAFETY: a recording command buffer; live buffers of this device
        // with the usages given at creation; ranges inside them.
        unsafe {
            d.cmd_fill_buffer(cmd, dev.buffer, 0, half, FILL_WORD);
            d.cmd_copy_buffer(
                cmd,
                up.buffer,
                dev.buffer,
                &[vk::BufferCopy {
                    src_offset: half,
                    dst_offset: half,
                    size: bytes - half,
                }],
            );
        }
        barrier(d, cmd, TRANSFER_WRITE, TRANSFER_READ);
        // SAFETY: as above.
        unsafe {
            d.cmd_copy_buffer(
                cmd,
                dev.buffer,
                back.buffer,
                &[vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: 0,
                    size: bytes,
                }],
            )
        };
        barrier(d, cmd, TRANSFER_WRITE, HOST_READ);
    })?;
    back.invalidate()?;
    let half_words = (half / 4) as u32;
    Ok(first_mismatch(back.words_mut()?, |i| {
        if i < half_words {
            FILL_WORD
        } else {
            upload_word(i)
        }
    }))
}

/// The compute shader over `invocations` words, copied back and checked.
pub fn compute_check(gpu: &Gpu, invocations: u32, rounds: u32) -> Result<Option<String>> {
    use vk::BufferUsageFlags as U;
    let bytes = u64::from(invocations) * 4;
    let pipeline = gpu.lcg_pipeline()?;
    let dev = gpu.buffer(bytes, U::STORAGE_BUFFER | U::TRANSFER_SRC, false)?;
    let mut back = gpu.buffer(bytes, U::TRANSFER_DST, true)?;
    back.words_mut()?.fill(0);
    back.flush()?;
    pipeline.bind(&dev);
    gpu.run(|d, cmd| {
        pipeline.record(d, cmd, invocations, rounds);
        barrier(d, cmd, SHADER_WRITE, TRANSFER_READ);
        // SAFETY: a recording command buffer; live buffers; in range.
        unsafe {
            d.cmd_copy_buffer(
                cmd,
                dev.buffer,
                back.buffer,
                &[vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: 0,
                    size: bytes,
                }],
            )
        };
        barrier(d, cmd, TRANSFER_WRITE, HOST_READ);
    })?;
    back.invalidate()?;
    Ok(first_mismatch(back.words_mut()?, |i| {
        spirv::expected(i, rounds)
    }))
}

/// Figures of one `--bench` run (milliseconds or MiB/s).
#[derive(Debug, Clone)]
pub struct Bench {
    /// Median time of one submit of fill(S) + copy(S), in ms.
    pub fill_copy_ms: f64,
    /// Bytes written per second by it (2 S per submit), in MiB/s.
    pub fill_copy_mibs: f64,
    /// Median time of one dispatch of the compute shader, in ms.
    pub compute_ms: f64,
    /// Median round trip of an empty submit with a fence, in µs.
    pub fence_us: f64,
    /// Host writes into mapped memory, MiB/s.
    pub map_write_mibs: f64,
    /// Host reads from mapped memory, MiB/s.
    pub map_read_mibs: f64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the benchmark: `mib` MiB buffers, `iters` repetitions, the
/// compute shader over `invocations` with `rounds` rounds, `fences` empty
/// submits.
pub fn bench(
    gpu: &Gpu,
    mib: u64,
    iters: u32,
    invocations: u32,
    rounds: u32,
    fences: u32,
) -> Result<Bench> {
    use vk::BufferUsageFlags as U;
    let bytes = mib << 20;
    let a = gpu.buffer(bytes, U::TRANSFER_SRC | U::TRANSFER_DST, false)?;
    let b = gpu.buffer(bytes, U::TRANSFER_DST, false)?;
    let mut fill_copy = Vec::new();
    for n in 0..=iters {
        let t = gpu.run(|d, cmd| {
            // SAFETY: a recording command buffer; live buffers; in range.
            unsafe { d.cmd_fill_buffer(cmd, a.buffer, 0, bytes, n) };
            barrier(d, cmd, TRANSFER_WRITE, TRANSFER_READ);
            // SAFETY: as above.
            unsafe {
                d.cmd_copy_buffer(
                    cmd,
                    a.buffer,
                    b.buffer,
                    &[vk::BufferCopy {
                        src_offset: 0,
                        dst_offset: 0,
                        size: bytes,
                    }],
                )
            };
        })?;
        // The first one warms up (allocation on first touch).
        if n > 0 {
            fill_copy.push(t);
        }
    }
    drop((a, b));

    let pipeline = gpu.lcg_pipeline()?;
    let storage = gpu.buffer(u64::from(invocations) * 4, U::STORAGE_BUFFER, false)?;
    pipeline.bind(&storage);
    let mut compute = Vec::new();
    for n in 0..=iters {
        let t = gpu.run(|d, cmd| pipeline.record(d, cmd, invocations, rounds))?;
        if n > 0 {
            compute.push(t);
        }
    }
    drop((storage, pipeline));

    let mut fence = Vec::new();
    for n in 0..=fences {
        let t = gpu.submit_wait(&[])?;
        if n > 0 {
            fence.push(t);
        }
    }

    // memset and memcpy (optimized in any build) through the mapping.
    let mut host = gpu.buffer(bytes, U::TRANSFER_SRC, true)?;
    let words = host.words_mut()?;
    let mut copy = vec![0u32; words.len()];
    words.fill(1);
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for n in 0..iters.max(1) {
        let start = Instant::now();
        // SAFETY: `words` is the buffer's mapping, words.len() u32s long.
        unsafe { std::ptr::write_bytes(words.as_mut_ptr(), n as u8, words.len()) };
        writes.push(start.elapsed());
        let start = Instant::now();
        copy.copy_from_slice(words);
        reads.push(start.elapsed());
        std::hint::black_box(&copy);
    }
    let mibs = |d: Duration| mib as f64 / d.as_secs_f64();
    let fc = median(fill_copy);
    Ok(Bench {
        fill_copy_ms: fc.as_secs_f64() * 1e3,
        fill_copy_mibs: 2.0 * mibs(fc),
        compute_ms: median(compute).as_secs_f64() * 1e3,
        fence_us: median(fence).as_secs_f64() * 1e6,
        map_write_mibs: mibs(median(writes)),
        map_read_mibs: mibs(median(reads)),
    })
}
