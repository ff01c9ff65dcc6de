//! The GPU optimizer: packed buffers, one fused kernel per rule, one
//! submission per step.

use std::num::NonZeroU64;

use crate::cpu::state_index;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::layout::{Counters, Layout};
use crate::rules::Config;

/// Threads per workgroup; `WORKGROUP_SIZE` in every shader.
const WORKGROUP_SIZE: u64 = 256;
/// Slots of the uniform ring: each step writes its scalars to the next slot,
/// so up to this many steps can be recorded into one command encoder.
pub(crate) const UNIFORM_RING: u64 = 256;
/// Stride of the ring: the largest `min_uniform_buffer_offset_alignment`
/// any backend asks for.
const UNIFORM_STRIDE: u64 = 256;
/// Chunk boundaries are multiples of this many elements (256 bytes), the
/// largest `min_storage_buffer_offset_alignment` any backend asks for.
const CHUNK_ALIGN: u64 = 64;

/// Options of a [`GpuOptimizer`] that are not hyperparameters.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// The most elements one binding (one dispatch) covers. By default the
    /// device's `max_storage_buffer_binding_size` and `max_buffer_size`
    /// decide; a smaller value splits the model into more chunks (tests use
    /// it to exercise the splitting). Rounded down to a multiple of 64.
    pub max_chunk_elements: Option<u64>,
    /// Elements each invocation loads per buffer at once: 4 (`vec4<f32>`,
    /// 16-byte loads) or 1. `None` takes 4 wherever the chunks allow it:
    /// always for the optimizer's own buffers (padded to a multiple of 4),
    /// and for the caller's buffers when the total length is a multiple of 4.
    pub vector_width: Option<u32>,
    /// Compile the kernels without wgpu's shader bounds checks. Safe by
    /// construction: each invocation touches only index `i < arrayLength(&param)`,
    /// and every binding of a chunk (parameters, gradients, each state
    /// tensor) is bound with the same length, so `i` is in bounds for all of
    /// them; the state slots a configuration does not use are behind
    /// `override` constants and never touched. The loop ends because the
    /// stride is at least one workgroup.
    pub skip_bounds_checks: bool,
}

/// Kernel variant: vector width and whether bounds checks are compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    width: u32,
    checked: bool,
}

/// A compiled rule kernel and its bind group layout, cached per context.
#[derive(Clone)]
pub(crate) struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// State bindings the shader declares, in binding order after param and grad.
    slots: &'static [&'static str],
}

/// Where a packed tensor set lives: our own buffers (one per chunk), or one
/// buffer the user handed over (chunks are ranges of it).
enum Storage {
    Owned(Vec<wgpu::Buffer>),
    User(wgpu::Buffer),
}

impl Storage {
    fn binding(&self, chunk: usize, range: &ChunkRange, width: u32) -> wgpu::BufferBinding<'_> {
        match self {
            Storage::Owned(buffers) => wgpu::BufferBinding {
                buffer: &buffers[chunk],
                offset: 0,
                size: NonZeroU64::new(padded(range.len, width) * 4),
            },
            Storage::User(buffer) => wgpu::BufferBinding {
                buffer,
                offset: range.start * 4,
                size: NonZeroU64::new(range.len * 4),
            },
        }
    }

    /// The buffer and byte offset of flat element `chunk_start`.
    fn locate(&self, chunk: usize, range: &ChunkRange) -> (&wgpu::Buffer, u64) {
        match self {
            Storage::Owned(buffers) => (&buffers[chunk], 0),
            Storage::User(buffer) => (buffer, range.start * 4),
        }
    }
}

/// `len` rounded up to a multiple of the vector width: the optimizer's own
/// buffers are allocated (zero-filled) to this length.
fn padded(len: u64, width: u32) -> u64 {
    len.div_ceil(width as u64) * width as u64
}

#[derive(Clone, Debug)]
struct ChunkRange {
    start: u64,
    len: u64,
}

/// An optimizer whose parameters, gradients and state live on the GPU.
///
/// The tensors are packed back to back in flat buffers (see [`Layout`]); a
/// step writes this step's scalars to a uniform buffer and records one
/// compute pass with one dispatch per chunk (one chunk unless the model is
/// larger than one storage binding), whatever the number of tensors. Nothing
/// is read back and nothing is recompiled during a step.
///
/// ```no_run
/// use wgpu_optim::{AdamW, GpuContext, GpuOptimizer};
/// let ctx = GpuContext::new()?;
/// let weights = vec![0.5f32; 1_000_000];
/// let mut opt = GpuOptimizer::new(&ctx, AdamW::default(), &[&weights])?;
/// let grads = vec![0.01f32; 1_000_000];
/// opt.step(&[&grads])?;
/// let updated = opt.read_params()?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct GpuOptimizer {
    ctx: GpuContext,
    config: Config,
    layout: Layout,
    chunks: Vec<ChunkRange>,
    params: Storage,
    grads: Storage,
    state_names: Vec<&'static str>,
    state: Vec<Vec<wgpu::Buffer>>,
    _dummies: Vec<wgpu::Buffer>,
    uniforms: wgpu::Buffer,
    kernel: Kernel,
    variant: Variant,
    bind_groups: Vec<(wgpu::BindGroup, u32)>,
    counters: Counters,
}

impl std::fmt::Debug for GpuOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuOptimizer")
            .field("config", &self.config)
            .field("tensors", &self.layout.len())
            .field("elements", &self.layout.total())
            .field("chunks", &self.chunks.len())
            .field("step", &self.counters.step)
            .finish()
    }
}

fn chunk_elements(ctx: &GpuContext, options: &GpuOptions) -> u64 {
    let limits = ctx.limits();
    let by_device = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        / 4;
    let max = options
        .max_chunk_elements
        .unwrap_or(by_device)
        .min(by_device);
    (max / CHUNK_ALIGN * CHUNK_ALIGN).max(CHUNK_ALIGN)
}

fn split_chunks(total: u64, per_chunk: u64) -> Vec<ChunkRange> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < total {
        let len = per_chunk.min(total - start);
        out.push(ChunkRange { start, len });
        start += len;
    }
    out
}

impl GpuOptimizer {
    /// Uploads copies of these parameter tensors to new GPU buffers and
    /// allocates the gradient and state buffers there.
    pub fn new(ctx: &GpuContext, config: impl Into<Config>, params: &[&[f32]]) -> Result<Self> {
        Self::with_options(ctx, config, params, GpuOptions::default())
    }

    /// As [`GpuOptimizer::new`], with [`GpuOptions`].
    pub fn with_options(
        ctx: &GpuContext,
        config: impl Into<Config>,
        params: &[&[f32]],
        options: GpuOptions,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let layout = Layout::of(params);
        let chunks = split_chunks(layout.total() as u64, chunk_elements(ctx, &options));
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let (param_buffers, grad_buffers) = ctx.scoped("allocating parameter buffers", || {
            let make = |label: &str| -> Vec<wgpu::Buffer> {
                chunks
                    .iter()
                    .map(|c| {
                        ctx.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some(label),
                            size: padded(c.len, 4) * 4,
                            usage,
                            mapped_at_creation: false,
                        })
                    })
                    .collect()
            };
            (make("params"), make("grads"))
        })?;
        let params_storage = Storage::Owned(param_buffers);
        let width = options.vector_width.unwrap_or(4);
        let opt = Self::build(
            ctx,
            config,
            layout,
            chunks,
            params_storage,
            Storage::Owned(grad_buffers),
            variant(width, &options)?,
        )?;
        opt.write_storage_tensors(&opt.params, params);
        Ok(opt)
    }

    /// Steps buffers the caller already has on `ctx`'s device, in place:
    /// `params` and `grads` hold the tensors of `lengths` back to back from
    /// byte 0, as [`Layout`] packs them. Both need `STORAGE` usage; reading
    /// back needs `COPY_SRC` and [`GpuOptimizer::step`] with host gradients
    /// `COPY_DST`. The state buffers are the optimizer's own.
    pub fn from_buffers(
        ctx: &GpuContext,
        config: impl Into<Config>,
        lengths: &[usize],
        params: wgpu::Buffer,
        grads: wgpu::Buffer,
    ) -> Result<Self> {
        Self::from_buffers_with_options(ctx, config, lengths, params, grads, GpuOptions::default())
    }

    /// As [`GpuOptimizer::from_buffers`], with [`GpuOptions`].
    pub fn from_buffers_with_options(
        ctx: &GpuContext,
        config: impl Into<Config>,
        lengths: &[usize],
        params: wgpu::Buffer,
        grads: wgpu::Buffer,
        options: GpuOptions,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let layout = Layout::new(lengths);
        let required = layout.total() as u64 * 4;
        for (what, b) in [("parameter", &params), ("gradient", &grads)] {
            if !b.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(Error::BufferUsage {
                    what,
                    missing: "STORAGE".into(),
                    has: format!("{:?}", b.usage()),
                });
            }
            if b.size() < required {
                return Err(Error::BufferTooSmall {
                    what,
                    required,
                    actual: b.size(),
                });
            }
        }
        if params == grads {
            return Err(Error::InvalidOptions(
                "the parameter and gradient buffers are the same buffer".into(),
            ));
        }
        let chunks = split_chunks(layout.total() as u64, chunk_elements(ctx, &options));
        // Chunk starts are multiples of 64 elements; only the total decides
        // whether every chunk is a whole number of vec4s.
        let width = match options.vector_width {
            Some(w) => w,
            None if layout.total().is_multiple_of(4) => 4,
            None => 1,
        };
        if width == 4 && !layout.total().is_multiple_of(4) {
            return Err(Error::InvalidOptions(format!(
                "vector_width 4 needs the caller's buffers to hold a multiple of 4 elements, got {}",
                layout.total()
            )));
        }
        Self::build(
            ctx,
            config,
            layout,
            chunks,
            Storage::User(params),
            Storage::User(grads),
            variant(width, &options)?,
        )
    }

    fn build(
        ctx: &GpuContext,
        config: Config,
        layout: Layout,
        chunks: Vec<ChunkRange>,
        params: Storage,
        grads: Storage,
        variant: Variant,
    ) -> Result<Self> {
        let kernel = kernel_for(ctx, &config, variant)?;
        let width = variant.width;
        let state_names = config.state_names();
        let (state, dummies, uniforms, bind_groups) =
            ctx.scoped("creating state buffers and bind groups", || {
                let state: Vec<Vec<wgpu::Buffer>> = state_names
                    .iter()
                    .map(|name| {
                        let init = config.state_initial_value(name);
                        chunks
                            .iter()
                            .map(|c| {
                                let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                                    label: Some(name),
                                    size: padded(c.len, 4) * 4,
                                    usage: wgpu::BufferUsages::STORAGE
                                        | wgpu::BufferUsages::COPY_DST
                                        | wgpu::BufferUsages::COPY_SRC,
                                    mapped_at_creation: false,
                                });
                                if init != 0.0 {
                                    let fill = vec![init; padded(c.len, 4) as usize];
                                    ctx.queue
                                        .write_buffer(&buffer, 0, bytemuck::cast_slice(&fill));
                                }
                                buffer
                            })
                            .collect()
                    })
                    .collect();
                // Each absent state slot gets a buffer of its own, so that no two
                // writable bindings alias.
                let dummies: Vec<wgpu::Buffer> = kernel
                    .slots
                    .iter()
                    .filter(|s| !state_names.contains(s))
                    .map(|_| {
                        ctx.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("unused state slot"),
                            size: 16,
                            usage: wgpu::BufferUsages::STORAGE,
                            mapped_at_creation: false,
                        })
                    })
                    .collect();
                let uniforms = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("step scalars"),
                    size: UNIFORM_RING * UNIFORM_STRIDE,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let max_groups = ctx.limits().max_compute_workgroups_per_dimension as u64;
                let bind_groups: Vec<(wgpu::BindGroup, u32)> = chunks
                    .iter()
                    .enumerate()
                    .map(|(ci, range)| {
                        let mut entries = vec![
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: wgpu::BindingResource::Buffer(
                                    params.binding(ci, range, width),
                                ),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: wgpu::BindingResource::Buffer(
                                    grads.binding(ci, range, width),
                                ),
                            },
                        ];
                        let mut dummy = dummies.iter();
                        for (k, slot) in kernel.slots.iter().enumerate() {
                            let resource = match state_names.iter().position(|n| n == slot) {
                                Some(si) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: &state[si][ci],
                                    offset: 0,
                                    size: NonZeroU64::new(padded(range.len, width) * 4),
                                }),
                                None => dummy
                                    .next()
                                    .expect("one dummy per absent slot")
                                    .as_entire_binding(),
                            };
                            entries.push(wgpu::BindGroupEntry {
                                binding: 2 + k as u32,
                                resource,
                            });
                        }
                        entries.push(wgpu::BindGroupEntry {
                            binding: 2 + kernel.slots.len() as u32,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &uniforms,
                                offset: 0,
                                size: NonZeroU64::new(UNIFORM_STRIDE),
                            }),
                        });
                        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("optimizer chunk"),
                            layout: &kernel.layout,
                            entries: &entries,
                        });
                        let units = padded(range.len, width) / width as u64;
                        let groups = units.div_ceil(WORKGROUP_SIZE).min(max_groups) as u32;
                        (group, groups)
                    })
                    .collect();
                (state, dummies, uniforms, bind_groups)
            })?;
        Ok(GpuOptimizer {
            ctx: ctx.clone(),
            config,
            layout,
            chunks,
            params,
            grads,
            state_names,
            state,
            _dummies: dummies,
            uniforms,
            kernel,
            variant,
            bind_groups,
            counters: Counters::default(),
        })
    }

    /// One step with gradients from the host: uploads them into the
    /// gradient buffer, then [`GpuOptimizer::step_device`]. Checks every
    /// length first: on error nothing changes.
    pub fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.layout.check(grads)?;
        self.check_host_writable(&self.grads, "gradient")?;
        self.write_storage_tensors(&self.grads, grads);
        self.step_device()
    }

    /// One step with the gradients already in the gradient buffer (written
    /// there by the caller's own kernels, or by [`GpuOptimizer::write_grads`]):
    /// one submission, nothing read back.
    pub fn step_device(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        ctx.scoped("stepping", || {
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("optimizer step"),
                });
            self.record_step(&mut encoder, None);
            ctx.queue.submit(Some(encoder.finish()));
        })
    }

    /// Records one step into the caller's command encoder (for example
    /// right after their backward pass, so the whole training step is one
    /// submission) and counts it as taken. The step's scalars go through
    /// `queue.write_buffer` into the next slot of a ring of 256, so at most
    /// 256 steps may be recorded between two submissions.
    /// `timestamp_writes` is passed to the compute pass.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        let slot = self.counters.step % UNIFORM_RING;
        let scalars = self
            .config
            .step_scalars(self.counters.step + 1, self.counters.buffer_filled);
        self.ctx
            .queue
            .write_buffer(&self.uniforms, slot * UNIFORM_STRIDE, scalars.bytes());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("optimizer step"),
                timestamp_writes,
            });
            pass.set_pipeline(&self.kernel.pipeline);
            for (group, workgroups) in &self.bind_groups {
                pass.set_bind_group(0, group, &[(slot * UNIFORM_STRIDE) as u32]);
                pass.dispatch_workgroups(*workgroups, 1, 1);
            }
        }
        self.counters.advance(&self.config);
    }

    /// Dispatches one step records: one per chunk (1 unless the model is
    /// larger than one storage binding), whatever the number of tensors.
    pub fn dispatches_per_step(&self) -> usize {
        self.bind_groups.len()
    }

    /// Elements each invocation loads per buffer (4: `vec4<f32>`, or 1).
    pub fn vector_width(&self) -> u32 {
        self.variant.width
    }

    /// Uploads gradients into the gradient buffer without stepping.
    pub fn write_grads(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.layout.check(grads)?;
        self.check_host_writable(&self.grads, "gradient")?;
        self.write_storage_tensors(&self.grads, grads);
        Ok(())
    }

    /// Replaces the parameters with these values (same layout).
    pub fn write_params(&mut self, params: &[&[f32]]) -> Result<()> {
        self.layout.check(params)?;
        self.check_host_writable(&self.params, "parameter")?;
        self.write_storage_tensors(&self.params, params);
        Ok(())
    }

    fn check_host_writable(&self, storage: &Storage, what: &'static str) -> Result<()> {
        if let Storage::User(b) = storage {
            if !b.usage().contains(wgpu::BufferUsages::COPY_DST) {
                return Err(Error::BufferUsage {
                    what,
                    missing: "COPY_DST".into(),
                    has: format!("{:?}", b.usage()),
                });
            }
        }
        Ok(())
    }

    /// Writes tensors (already checked against the layout) into a storage,
    /// splitting each at chunk boundaries.
    fn write_storage_tensors(&self, storage: &Storage, tensors: &[&[f32]]) {
        for (i, t) in tensors.iter().enumerate() {
            let mut flat = self.layout.offsets()[i] as u64;
            let mut rest: &[f32] = t;
            while !rest.is_empty() {
                let ci = self.chunks.partition_point(|c| c.start + c.len <= flat);
                let range = &self.chunks[ci];
                let take = ((range.start + range.len - flat) as usize).min(rest.len());
                let (buffer, base) = storage.locate(ci, range);
                self.ctx.queue.write_buffer(
                    buffer,
                    base + (flat - range.start) * 4,
                    bytemuck::cast_slice(&rest[..take]),
                );
                rest = &rest[take..];
                flat += take as u64;
            }
        }
    }

    fn read_storage(&self, storage: &Storage) -> Result<Vec<f32>> {
        if let Storage::User(b) = storage {
            if !b.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                return Err(Error::BufferUsage {
                    what: "parameter",
                    missing: "COPY_SRC".into(),
                    has: format!("{:?}", b.usage()),
                });
            }
        }
        let mut out = Vec::with_capacity(self.layout.total());
        for (ci, range) in self.chunks.iter().enumerate() {
            let (buffer, base) = storage.locate(ci, range);
            out.extend(read_buffer(&self.ctx, buffer, base, range.len * 4)?);
        }
        Ok(out)
    }

    /// Reads the parameters back, packed.
    pub fn read_params_flat(&self) -> Result<Vec<f32>> {
        self.read_storage(&self.params)
    }

    /// Reads the parameters back, one vector per tensor.
    pub fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        let flat = self.read_params_flat()?;
        Ok(self
            .layout
            .split(&flat)
            .into_iter()
            .map(|s| s.to_vec())
            .collect())
    }

    /// Reads the state tensor `name` back, packed.
    pub fn read_state_flat(&self, name: &str) -> Result<Vec<f32>> {
        let i = state_index(&self.config, &self.state_names, name)?;
        self.read_storage(&Storage::Owned(self.state[i].clone()))
    }

    /// Reads the state tensor `name` back, one vector per tensor.
    pub fn read_state(&self, name: &str) -> Result<Vec<Vec<f32>>> {
        let flat = self.read_state_flat(name)?;
        Ok(self
            .layout
            .split(&flat)
            .into_iter()
            .map(|s| s.to_vec())
            .collect())
    }

    /// Names of the state tensors, as PyTorch names them.
    pub fn state_names(&self) -> &[&'static str] {
        &self.state_names
    }

    /// The rule and hyperparameters in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How the tensors are packed.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.counters.step
    }

    /// Sets the learning rate used from the next step on (no recompilation:
    /// it reaches the kernel through the uniform buffer).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.config.set_lr(lr)
    }

    /// Sets the momentum (SGD, RMSprop) or `beta1` (Adam, AdamW) used from
    /// the next step on.
    pub fn set_momentum(&mut self, momentum: f64) -> Result<()> {
        let has_buffer = self.state_names.contains(&"momentum_buffer");
        self.config.set_momentum(momentum, has_buffer)
    }

    /// The context this optimizer runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The parameter buffers: one per chunk for buffers the optimizer
    /// made, or the caller's own.
    pub fn param_buffers(&self) -> Vec<&wgpu::Buffer> {
        match &self.params {
            Storage::Owned(b) => b.iter().collect(),
            Storage::User(b) => vec![b],
        }
    }

    /// The gradient buffers, as [`GpuOptimizer::param_buffers`].
    pub fn grad_buffers(&self) -> Vec<&wgpu::Buffer> {
        match &self.grads {
            Storage::Owned(b) => b.iter().collect(),
            Storage::User(b) => vec![b],
        }
    }
}

/// Copies `len` bytes at `offset` of `buffer` into a mappable buffer and
/// reads them, in pieces of at most 64 MiB.
pub(crate) fn read_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: u64,
) -> Result<Vec<f32>> {
    const PIECE: u64 = 64 << 20;
    let mut out = Vec::with_capacity((len / 4) as usize);
    let mut done = 0;
    while done < len {
        let size = PIECE.min(len - done);
        let staging = ctx.scoped("reading back", || {
            let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("readback"),
                });
            encoder.copy_buffer_to_buffer(buffer, offset + done, &staging, 0, size);
            ctx.queue.submit(Some(encoder.finish()));
            staging
        })?;
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait()?;
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::Readback(e.to_string())),
            None => return Err(Error::Readback("the map callback never ran".into())),
        }
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            out.extend_from_slice(bytemuck::cast_slice(&view));
        }
        staging.unmap();
        done += size;
    }
    if let Some(lost) = ctx.lost() {
        return Err(Error::Readback(format!("device lost: {lost}")));
    }
    Ok(out)
}

/// The state bindings each shader declares, in binding order.
fn shader_slots(config: &Config) -> &'static [&'static str] {
    match config {
        Config::Sgd(_) => &["momentum_buffer"],
        Config::Adagrad(_) => &["sum"],
        Config::RmsProp(_) => &["square_avg", "momentum_buffer", "grad_avg"],
        Config::Adam(_) | Config::AdamW(_) => &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    }
}

fn variant(width: u32, options: &GpuOptions) -> Result<Variant> {
    if width != 1 && width != 4 {
        return Err(Error::InvalidOptions(format!(
            "vector_width must be 1 or 4, got {width}"
        )));
    }
    Ok(Variant {
        width,
        checked: !options.skip_bounds_checks,
    })
}

fn kernel_for(ctx: &GpuContext, config: &Config, variant: Variant) -> Result<Kernel> {
    let (name, source) = config.shader();
    let overrides = config.overrides();
    let key = (
        name,
        variant,
        overrides
            .iter()
            .map(|(k, v)| (*k, v.to_bits()))
            .collect::<Vec<_>>(),
    );
    if let Some(k) = ctx.pipelines.lock().ok().and_then(|p| p.get(&key).cloned()) {
        return Ok(k);
    }
    let slots = shader_slots(config);
    let kernel = ctx.scoped("compiling the rule kernel", || {
        let prelude = if variant.width == 4 {
            "alias V = vec4<f32>;\n"
        } else {
            "alias V = f32;\n"
        };
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(format!("{prelude}{source}").into()),
        };
        let module = if variant.checked {
            ctx.device.create_shader_module(desc)
        } else {
            let mut checks = wgpu::ShaderRuntimeChecks::checked();
            checks.bounds_checks = false;
            checks.force_loop_bounding = false;
            // SAFETY: see `GpuOptions::skip_bounds_checks`: every index is
            // below the length of every binding it touches, by construction,
            // and every loop terminates.
            unsafe { ctx.device.create_shader_module_trusted(desc, checks) }
        };
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: NonZeroU64::new(4 * variant.width as u64),
            },
            count: None,
        };
        let mut entries = vec![storage(0, false), storage(1, true)];
        for k in 0..slots.len() as u32 {
            entries.push(storage(2 + k, false));
        }
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: 2 + slots.len() as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        });
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(name),
                entries: &entries,
            });
        let pipeline_layout = ctx
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &overrides,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        Kernel {
            pipeline,
            layout,
            slots,
        }
    })?;
    if let Ok(mut p) = ctx.pipelines.lock() {
        p.insert(key, kernel.clone());
    }
    Ok(kernel)
}
