//! The GPU optimizer: packed buffers, one fused kernel per rule, one
//! submission per step.

use std::num::NonZeroU64;

use crate::checkpoint::Checkpoint;
use crate::clip::ClipGradNorm;
use crate::cpu::state_index;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::layout::{Counters, Layout};
use crate::rules::lamb::{AuxScalars, FLAG_CLIP, FLAG_SKIP_NONFINITE};
use crate::rules::{Config, StepScalars};

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
    /// One pipeline per entry point.
    pipelines: Vec<wgpu::ComputePipeline>,
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
    kernel: Kernel,
    tile_kernel: Kernel,
    variant: Variant,
    tiling_total: usize,
    buffers: Built,
    clip: Option<ClipGradNorm>,
    counters: Counters,
}

/// The buffers and bind groups an optimizer owns besides the parameters and
/// gradients.
struct Built {
    state: Vec<Vec<wgpu::Buffer>>,
    #[allow(dead_code)]
    dummies: Vec<wgpu::Buffer>,
    #[allow(dead_code)]
    tile_tables: Vec<wgpu::Buffer>,
    #[allow(dead_code)]
    partials: wgpu::Buffer,
    #[allow(dead_code)]
    tensors: wgpu::Buffer,
    info: wgpu::Buffer,
    uniforms: wgpu::Buffer,
    aux_uniforms: wgpu::Buffer,
    rule_groups: Vec<(wgpu::BindGroup, u32)>,
    tile_groups: Vec<(wgpu::BindGroup, u32)>,
}

/// Elements per tile of the reductions: 256 threads × 16 elements.
const TILE: usize = 4096;

/// The tiles of the reductions: each chunk's part of each tensor cut into
/// pieces of at most [`TILE`] elements, numbered in flat order, so each
/// tensor's tiles are consecutive. Entry = (start in the chunk, length,
/// tensor, global number).
struct Tiling {
    per_chunk: Vec<Vec<[u32; 4]>>,
    /// (first tile, number of tiles) of each tensor.
    tensors: Vec<[u32; 2]>,
    total: usize,
}

impl Tiling {
    fn new(layout: &Layout, chunks: &[ChunkRange]) -> Self {
        let mut per_chunk = vec![Vec::new(); chunks.len()];
        let mut tensors = Vec::with_capacity(layout.len());
        let mut total = 0usize;
        for t in 0..layout.len() {
            let r = layout.range(t);
            let first = total;
            let mut at = r.start as u64;
            while at < r.end as u64 {
                let ci = chunks.partition_point(|c| c.start + c.len <= at);
                let c = &chunks[ci];
                let end = (r.end as u64).min(c.start + c.len).min(at + TILE as u64);
                per_chunk[ci].push([
                    (at - c.start) as u32,
                    (end - at) as u32,
                    t as u32,
                    total as u32,
                ]);
                total += 1;
                at = end;
            }
            tensors.push([first as u32, (total - first) as u32]);
        }
        Tiling {
            per_chunk,
            tensors,
            total,
        }
    }
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
        if params.is_empty() {
            return Err(Error::EmptyParameterList);
        }
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
        if lengths.is_empty() {
            return Err(Error::EmptyParameterList);
        }
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
        let is_lamb = matches!(config, Config::Lamb(_));
        // LAMB runs on tiles only; its kernels read scalars, never vec4s.
        let variant = if is_lamb {
            Variant {
                width: 1,
                ..variant
            }
        } else {
            variant
        };
        let kernel = kernel_for(ctx, &config, variant)?;
        let tile_kernel = tile_kernel_for(ctx, variant)?;
        let width = variant.width;
        let state_names = config.state_names();
        let tiling = Tiling::new(&layout, &chunks);
        let built = ctx.scoped("creating state buffers and bind groups", || {
            let device = &ctx.device;
            let storage_buffer = |label: &str, size: u64| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let state: Vec<Vec<wgpu::Buffer>> = state_names
                .iter()
                .map(|name| {
                    let init = config.state_initial_value(name);
                    chunks
                        .iter()
                        .map(|c| {
                            let buffer = storage_buffer(name, padded(c.len, 4) * 4);
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
            // Each unused slot gets a buffer of its own, so that no two
            // writable bindings alias.
            let dummy = || storage_buffer("unused slot", 16);
            let tile_tables: Vec<wgpu::Buffer> = tiling
                .per_chunk
                .iter()
                .map(|tiles| {
                    let b = storage_buffer("tiles", (tiles.len().max(1) * 16) as u64);
                    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(tiles));
                    b
                })
                .collect();
            let partials = storage_buffer("tile partials", (tiling.total.max(1) * 8) as u64);
            let tensors = storage_buffer("tensor tiles", (tiling.tensors.len().max(1) * 8) as u64);
            ctx.queue
                .write_buffer(&tensors, 0, bytemuck::cast_slice(&tiling.tensors));
            let info = storage_buffer("step info", ((4 + layout.len()) * 4) as u64);
            let ring = |label: &str| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: UNIFORM_RING * UNIFORM_STRIDE,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            let uniforms = ring("step scalars");
            let aux_uniforms = ring("tile scalars");
            let uniform_binding = |buffer| {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 0,
                    size: NonZeroU64::new(UNIFORM_STRIDE),
                })
            };
            let max_groups = ctx.limits().max_compute_workgroups_per_dimension as u64;
            let mut dummies = Vec::new();
            let mut rule_groups = Vec::new();
            let mut tile_groups = Vec::new();
            for (ci, range) in chunks.iter().enumerate() {
                let state_binding = |name: &str, width: u32| {
                    state_names.iter().position(|n| *n == name).map(|si| {
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &state[si][ci],
                            offset: 0,
                            size: NonZeroU64::new(padded(range.len, width) * 4),
                        })
                    })
                };
                let slot_dummies: Vec<wgpu::Buffer> =
                    (0..kernel.slots.len() + 2).map(|_| dummy()).collect();
                if !is_lamb {
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
                    for (k, slot) in kernel.slots.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: 2 + k as u32,
                            resource: state_binding(slot, width)
                                .unwrap_or_else(|| slot_dummies[k].as_entire_binding()),
                        });
                    }
                    let n = kernel.slots.len() as u32;
                    entries.push(wgpu::BindGroupEntry {
                        binding: 2 + n,
                        resource: info.as_entire_binding(),
                    });
                    entries.push(wgpu::BindGroupEntry {
                        binding: 3 + n,
                        resource: uniform_binding(&uniforms),
                    });
                    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("optimizer chunk"),
                        layout: &kernel.layout,
                        entries: &entries,
                    });
                    let units = padded(range.len, width) / width as u64;
                    rule_groups
                        .push((group, units.div_ceil(WORKGROUP_SIZE).min(max_groups) as u32));
                }
                let m_dummy = &slot_dummies[kernel.slots.len()];
                let v_dummy = &slot_dummies[kernel.slots.len() + 1];
                let entries = [
                    (
                        0,
                        wgpu::BindingResource::Buffer(params.binding(ci, range, 1)),
                    ),
                    (
                        1,
                        wgpu::BindingResource::Buffer(grads.binding(ci, range, 1)),
                    ),
                    (
                        2,
                        state_binding("exp_avg", 1).unwrap_or_else(|| m_dummy.as_entire_binding()),
                    ),
                    (
                        3,
                        state_binding("exp_avg_sq", 1)
                            .unwrap_or_else(|| v_dummy.as_entire_binding()),
                    ),
                    (4, tile_tables[ci].as_entire_binding()),
                    (5, partials.as_entire_binding()),
                    (6, tensors.as_entire_binding()),
                    (7, info.as_entire_binding()),
                    (8, uniform_binding(&aux_uniforms)),
                ]
                .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource });
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("optimizer tiles"),
                    layout: &tile_kernel.layout,
                    entries: &entries,
                });
                let tiles = tiling.per_chunk[ci].len() as u64;
                tile_groups.push((group, tiles.clamp(1, max_groups) as u32));
                dummies.extend(slot_dummies);
            }
            Built {
                state,
                dummies,
                tile_tables,
                partials,
                tensors,
                info,
                uniforms,
                aux_uniforms,
                rule_groups,
                tile_groups,
            }
        })?;
        Ok(GpuOptimizer {
            ctx: ctx.clone(),
            config,
            layout,
            chunks,
            params,
            grads,
            state_names,
            kernel,
            tile_kernel,
            variant,
            tiling_total: tiling.total,
            buffers: built,
            clip: None,
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
    /// one submission, nothing read back — except with
    /// [`ClipGradNorm::error_if_nonfinite`], where the step reads back
    /// whether the GPU refused it (a non-finite gradient norm) and then
    /// returns [`Error::NonFiniteGradNorm`] with parameters, state and step
    /// count unchanged.
    pub fn step_device(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        let before = self.counters;
        ctx.scoped("stepping", || {
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("optimizer step"),
                });
            self.record(&mut encoder, None);
            ctx.queue.submit(Some(encoder.finish()));
        })?;
        if self.clip.is_some_and(|c| c.error_if_nonfinite) {
            let info = read_buffer(&self.ctx, &self.buffers.info, 0, 12)?;
            if info[2] != 0.0 {
                self.counters = before;
                return Err(Error::NonFiniteGradNorm {
                    norm: info[0] as f64,
                });
            }
        }
        Ok(())
    }

    /// Records one step into the caller's command encoder (for example
    /// right after their backward pass, so the whole training step is one
    /// submission) and counts it as taken. The step's scalars go through
    /// `queue.write_buffer` into the next slot of a ring of 256, so at most
    /// 256 steps may be recorded between two submissions.
    /// `timestamp_writes` is passed to the compute pass. With
    /// [`ClipGradNorm::error_if_nonfinite`] use [`GpuOptimizer::step_device`],
    /// which learns whether the GPU refused the step; this returns
    /// [`Error::InvalidOptions`] then.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        if self.clip.is_some_and(|c| c.error_if_nonfinite) {
            return Err(Error::InvalidOptions(
                "record_step cannot report a refused step (error_if_nonfinite): use step_device"
                    .into(),
            ));
        }
        self.record(encoder, timestamp_writes);
        Ok(())
    }

    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        let slot = self.counters.step % UNIFORM_RING;
        let offset = [(slot * UNIFORM_STRIDE) as u32];
        let mut flags = 0;
        if let Some(clip) = self.clip {
            flags |= FLAG_CLIP;
            if clip.error_if_nonfinite {
                flags |= FLAG_SKIP_NONFINITE;
            }
        }
        let scalars =
            self.config
                .step_scalars(self.counters.step + 1, self.counters.buffer_filled, flags);
        let mut aux = match scalars {
            StepScalars::Lamb(a) => a,
            _ => AuxScalars {
                flags,
                ..AuxScalars::default()
            },
        };
        aux.max_norm = self.clip.map_or(0.0, |c| c.max_norm as f32);
        aux.n_tiles = self.tiling_total as u32;
        aux.n_tensors = self.layout.len() as u32;
        let queue = &self.ctx.queue;
        queue.write_buffer(
            &self.buffers.aux_uniforms,
            slot * UNIFORM_STRIDE,
            bytemuck::bytes_of(&aux),
        );
        let is_lamb = matches!(scalars, StepScalars::Lamb(_));
        if !is_lamb {
            queue.write_buffer(
                &self.buffers.uniforms,
                slot * UNIFORM_STRIDE,
                scalars.bytes(),
            );
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("optimizer step"),
                timestamp_writes,
            });
            let tiles = &self.buffers.tile_groups;
            let max_groups = self.ctx.limits().max_compute_workgroups_per_dimension;
            let per_tile = |pass: &mut wgpu::ComputePass<'_>, pipeline: &wgpu::ComputePipeline| {
                pass.set_pipeline(pipeline);
                for (group, workgroups) in tiles {
                    pass.set_bind_group(0, group, &offset);
                    pass.dispatch_workgroups(*workgroups, 1, 1);
                }
            };
            let once = |pass: &mut wgpu::ComputePass<'_>,
                        pipeline: &wgpu::ComputePipeline,
                        workgroups: u32| {
                if let Some((group, _)) = tiles.first() {
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, group, &offset);
                    pass.dispatch_workgroups(workgroups, 1, 1);
                }
            };
            if self.clip.is_some() {
                per_tile(&mut pass, &self.tile_kernel.pipelines[0]);
                once(&mut pass, &self.tile_kernel.pipelines[1], 1);
            }
            if is_lamb {
                let tensors = (self.layout.len() as u32).clamp(1, max_groups);
                per_tile(&mut pass, &self.kernel.pipelines[0]);
                once(&mut pass, &self.kernel.pipelines[1], tensors);
                per_tile(&mut pass, &self.kernel.pipelines[2]);
            } else {
                pass.set_pipeline(&self.kernel.pipelines[0]);
                for (group, workgroups) in &self.buffers.rule_groups {
                    pass.set_bind_group(0, group, &offset);
                    pass.dispatch_workgroups(*workgroups, 1, 1);
                }
            }
        }
        self.counters.advance(&self.config);
    }

    /// Dispatches one step records: one per chunk (1 unless the model is
    /// larger than one storage binding), whatever the number of tensors;
    /// with clipping one more per chunk and one to finish the norm; LAMB
    /// two per chunk and one for the trust ratios.
    pub fn dispatches_per_step(&self) -> usize {
        let chunks = self.chunks.len();
        if chunks == 0 {
            return 0;
        }
        let clip = if self.clip.is_some() { chunks + 1 } else { 0 };
        let rule = if matches!(self.config, Config::Lamb(_)) {
            2 * chunks + 1
        } else {
            chunks
        };
        clip + rule
    }

    /// Turns global-norm gradient clipping on (`Some`) or off (`None`) from
    /// the next step on: the norm of all gradients together is computed on
    /// the GPU and the scale applied inside the fused update, in the same
    /// submission.
    pub fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
        if let Some(c) = clip {
            c.validate()?;
        }
        self.clip = clip;
        Ok(())
    }

    /// The clipping in force.
    pub fn clip_grad_norm(&self) -> Option<ClipGradNorm> {
        self.clip
    }

    /// The total gradient norm of the last step (before clipping), read back
    /// from the GPU: this waits for the step to finish, so ask only when you
    /// log it. `None` while clipping is off.
    pub fn last_grad_norm(&self) -> Result<Option<f32>> {
        if self.clip.is_none() {
            return Ok(None);
        }
        let info = read_buffer(&self.ctx, &self.buffers.info, 0, 4)?;
        Ok(Some(info[0]))
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

    /// Replaces the state tensor `name` (one slice per parameter tensor)
    /// with these values: how a checkpoint, or state from elsewhere,
    /// reaches the GPU. Checks the name and every length first: on error
    /// nothing changes.
    pub fn write_state(&mut self, name: &str, tensors: &[&[f32]]) -> Result<()> {
        let i = state_index(&self.config, &self.state_names, name)?;
        self.layout.check(tensors)?;
        let storage = Storage::Owned(self.buffers.state[i].clone());
        let ctx = self.ctx.clone();
        ctx.scoped("writing a state tensor", || {
            self.write_storage_tensors(&storage, tensors)
        })
    }

    /// The whole state as a [`Checkpoint`] to [`Checkpoint::save`]: every
    /// state tensor read back, the step count, hyperparameters and options,
    /// and the parameters when the optimizer can read them (its own
    /// buffers, or the caller's with `COPY_SRC`; otherwise `params` is
    /// `None` and the parameters are the caller's to save). Waits for the
    /// GPU.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let readable = match &self.params {
            Storage::Owned(_) => true,
            Storage::User(b) => b.usage().contains(wgpu::BufferUsages::COPY_SRC),
        };
        let params = if readable {
            Some(self.read_params_flat()?)
        } else {
            None
        };
        let mut state = Vec::with_capacity(self.state_names.len());
        for name in &self.state_names {
            state.push((name.to_string(), self.read_state_flat(name)?));
        }
        Ok(Checkpoint {
            config: self.config.clone(),
            lengths: self.layout.lengths().to_vec(),
            step: self.counters.step,
            buffer_filled: self.counters.buffer_filled,
            state,
            params,
            clip: self.clip,
            skip_nonfinite: false,
            skipped_steps: 0,
            grad_scale: 1.0,
            scheduler: None,
        })
    }

    /// A new optimizer on `ctx` with the checkpoint's parameters, state,
    /// step count, hyperparameters and options (the checkpoint must carry
    /// the parameters; otherwise build the optimizer from yours and call
    /// [`GpuOptimizer::load_checkpoint`]).
    pub fn from_checkpoint(
        ctx: &GpuContext,
        ckpt: &Checkpoint,
        options: GpuOptions,
    ) -> Result<Self> {
        ckpt.validate()?;
        let Some(flat) = &ckpt.params else {
            return Err(Error::Checkpoint(
                "the checkpoint has no parameters: build the optimizer from yours and call load_checkpoint".into(),
            ));
        };
        let layout = Layout::new(&ckpt.lengths);
        let mut opt = Self::with_options(ctx, ckpt.config.clone(), &layout.split(flat), options)?;
        opt.load_checkpoint(ckpt)?;
        Ok(opt)
    }

    /// Restores a checkpoint into this optimizer (taken on the GPU or the
    /// CPU): its state tensors, step count, hyperparameters and options,
    /// and its parameters when it carries them. Same rule, same options
    /// fixed at construction and same lengths, or
    /// [`Error::CheckpointMismatch`]; everything is checked before anything
    /// changes. The writes reach the GPU before the next submitted step.
    pub fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        ckpt.validate()?;
        ckpt.check_fits(&self.config, self.layout.lengths())?;
        if ckpt.params.is_some() {
            self.check_host_writable(&self.params, "parameter")?;
        }
        let ctx = self.ctx.clone();
        ctx.scoped("restoring a checkpoint", || {
            for (i, (_, values)) in ckpt.state.iter().enumerate() {
                let storage = Storage::Owned(self.buffers.state[i].clone());
                self.write_storage_tensors(&storage, &self.layout.split(values));
            }
            if let Some(p) = &ckpt.params {
                self.write_storage_tensors(&self.params, &self.layout.split(p));
            }
        })?;
        self.config = ckpt.config.clone();
        self.counters = Counters {
            step: ckpt.step,
            buffer_filled: ckpt.buffer_filled,
        };
        self.clip = ckpt.clip;
        Ok(())
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
        self.read_storage(&Storage::Owned(self.buffers.state[i].clone()))
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
        Config::Lamb(_) => &[],
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

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }
}

/// The rule's kernel: the element-wise one (`main`), or LAMB's three tile
/// kernels.
fn kernel_for(ctx: &GpuContext, config: &Config, variant: Variant) -> Result<Kernel> {
    let (name, source) = config.shader();
    let overrides = config.overrides();
    if let Config::Lamb(_) = config {
        return compile(
            ctx,
            name,
            &format!("{}{source}", include_str!("../../shaders/tiles.wgsl")),
            &["lamb_moments", "lamb_ratio", "lamb_apply"],
            overrides,
            tile_layout_entries(),
            &[],
            variant,
        );
    }
    let slots = shader_slots(config);
    let mut entries = vec![storage_entry(0, false), storage_entry(1, true)];
    for k in 0..slots.len() as u32 {
        entries.push(storage_entry(2 + k, false));
    }
    entries.push(storage_entry(2 + slots.len() as u32, true));
    entries.push(uniform_entry(3 + slots.len() as u32));
    let prelude = if variant.width == 4 {
        "alias V = vec4<f32>;\n"
    } else {
        "alias V = f32;\n"
    };
    compile(
        ctx,
        name,
        &format!("{prelude}{source}"),
        &["main"],
        overrides,
        entries,
        slots,
        variant,
    )
}

fn tile_layout_entries() -> Vec<wgpu::BindGroupLayoutEntry> {
    vec![
        storage_entry(0, false),
        storage_entry(1, true),
        storage_entry(2, false),
        storage_entry(3, false),
        storage_entry(4, true),
        storage_entry(5, false),
        storage_entry(6, true),
        storage_entry(7, false),
        uniform_entry(8),
    ]
}

/// The clipping kernels (`shaders/reduce.wgsl`).
fn tile_kernel_for(ctx: &GpuContext, variant: Variant) -> Result<Kernel> {
    compile(
        ctx,
        "reduce",
        &format!(
            "{}{}",
            include_str!("../../shaders/tiles.wgsl"),
            include_str!("../../shaders/reduce.wgsl")
        ),
        &["clip_partials", "clip_finish"],
        vec![],
        tile_layout_entries(),
        &[],
        Variant {
            width: 1,
            ..variant
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn compile(
    ctx: &GpuContext,
    name: &'static str,
    source: &str,
    entry_points: &[&str],
    overrides: Vec<(&'static str, f64)>,
    entries: Vec<wgpu::BindGroupLayoutEntry>,
    slots: &'static [&'static str],
    variant: Variant,
) -> Result<Kernel> {
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
    let kernel = ctx.scoped("compiling a kernel", || {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
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
        let pipelines = entry_points
            .iter()
            .map(|entry| {
                ctx.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: Some(&pipeline_layout),
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &overrides,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
            })
            .collect();
        Kernel {
            pipelines,
            layout,
            slots,
        }
    })?;
    if let Ok(mut p) = ctx.pipelines.lock() {
        p.insert(key, kernel.clone());
    }
    Ok(kernel)
}
