//! The GPU optimizer: packed buffers, one fused kernel per rule, one
//! submission per step.

use std::num::NonZeroU64;

use crate::checkpoint::Checkpoint;
use crate::clip::ClipGradNorm;
use crate::cpu::state_index;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::layout::{Counters, Layout};
use crate::rules::lamb::{
    AuxScalars, FLAG_CLIP, FLAG_GRAD_SCALE, FLAG_SKIP_FOUND_INF, FLAG_SKIP_NONFINITE,
    FLAG_USE_MOMENTUM,
};
use crate::rules::{Config, StepScalars};
use wgpu::util::DeviceExt;

/// Threads per workgroup; `WORKGROUP_SIZE` in every shader.
const WORKGROUP_SIZE: u64 = 256;
/// Slots of the uniform ring: each step writes its scalars to the next slot
/// (a queue write for a step submitted alone, a copy inside the encoder for
/// a recorded one; see [`ScalarsVia`]).
pub(crate) const UNIFORM_RING: u64 = 256;
/// Stride of the ring: a multiple of the largest
/// `min_uniform_buffer_offset_alignment` any backend asks for (256), large
/// enough for the largest rule header (64 bytes) and the [`StepTail`].
const UNIFORM_STRIDE: u64 = 768;
/// Entries of the bias-correction table of [`StepTail`]: with
/// `skip_nonfinite`, the host may queue at most this many steps past the
/// last step whose outcome (applied or skipped) it has read back.
pub(crate) const TABLE_LEN: usize = 32;

/// The per-step tail of every kernel's uniforms, written right after the
/// rule's own scalars (whose sizes are multiples of 16 bytes); `inv_scale,
/// base, host_step, _, table` at the end of each WGSL `Scalars`/`Aux`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepTail {
    /// `1/grad_scale` rounded to f32 (used with `FLAG_GRAD_SCALE`).
    inv_scale: f32,
    /// Low 32 bits of the applied-step count the host last read back.
    base: u32,
    /// Low 32 bits of this step's number among the steps the host queued.
    host_step: u32,
    _pad: u32,
    /// Entry j: the step-dependent scalars of step `base + 1 + j`.
    table: [[f32; 4]; TABLE_LEN],
}
const _: () = assert!(std::mem::size_of::<StepTail>() + 64 <= UNIFORM_STRIDE as usize);
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
/// buffers are allocated (zero-filled) to this length. Only ever called with
/// a chunk's length (at most [`MAX_CHUNK_ELEMENTS`]), so neither the result
/// nor its byte count (`× 4`) can overflow.
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
    /// The reduction of `shaders/reduce.wgsl`, compiled when clipping or
    /// `skip_nonfinite` is first turned on (`ensure_reduction`).
    tile_kernel: Option<Kernel>,
    variant: Variant,
    tiling_total: usize,
    buffers: Built,
    clip: Option<ClipGradNorm>,
    /// A step has run with the clipping in force (so `info` holds its norm).
    norm_seen: bool,
    counters: Counters,
    /// `1/grad_scale` and the scale (1: off).
    inv_scale: f32,
    grad_scale: f64,
    /// `Some` while steps with non-finite gradients are skipped.
    skip: Option<SkipTracker>,
    /// Steps skipped before the tracker in force was started.
    skipped_before: u64,
}

/// What the host knows of the GPU's step counters while `skip_nonfinite`
/// is on (the design is in the README, "Non-finite gradients", and on
/// [`GpuOptimizer::set_skip_nonfinite`]).
///
/// The GPU decides each step whether it is applied; the host learns it
/// later, from read-backs it never waits for unless it must. `known_*` is
/// the state after host step `known_h` (steps are numbered 1, 2, ... in the
/// order queued); `queued` steps have been queued in all. A step's
/// step-dependent scalars (Adam's bias corrections, Adagrad's decayed lr,
/// LAMB's bias corrections) depend on how many steps were applied before
/// it, which is `known_e + j` for some `j` in `0 ..= queued − known_h`: the
/// host sends the scalars of every such count (the table of
/// [`StepTail`]) and the GPU picks. A step can be queued only while that
/// window fits the table ([`TABLE_LEN`]); at its edge the host waits for
/// the read-back of a step already submitted.
struct SkipTracker {
    queued: u64,
    known_h: u64,
    known_e: u64,
    known_skipped: u64,
    known_filled: bool,
    known_last_skipped: bool,
    /// Read-backs in flight: the staging buffer and its map result.
    pending: Vec<Readback>,
    /// Staging buffers ready for reuse.
    free: Vec<wgpu::Buffer>,
}

struct Readback {
    buffer: wgpu::Buffer,
    done: std::sync::Arc<std::sync::Mutex<Option<bool>>>,
}

/// The counters as read back (low 32 bits).
#[derive(Clone, Copy, Debug)]
struct CounterWords {
    applied: u32,
    host_step: u32,
    skipped: u32,
    filled: u32,
    last_skipped: u32,
}

impl CounterWords {
    fn of(words: &[u32]) -> Self {
        CounterWords {
            applied: words[0],
            host_step: words[1],
            skipped: words[2],
            filled: words[3],
            last_skipped: words[5],
        }
    }
}

impl SkipTracker {
    /// Takes in a read-back of the counters: the GPU's numbers are the low
    /// 32 bits of counts that only grow, and lie between what the host
    /// knew and what it queued, so the host puts the high bits back.
    fn learn(&mut self, w: CounterWords) {
        let h = self.known_h + (w.host_step.wrapping_sub(self.known_h as u32)) as u64;
        if h < self.known_h || h > self.queued {
            return;
        }
        self.known_e += w.applied.wrapping_sub(self.known_e as u32) as u64;
        self.known_skipped += w.skipped.wrapping_sub(self.known_skipped as u32) as u64;
        self.known_h = h;
        self.known_filled = w.filled != 0;
        self.known_last_skipped = w.last_skipped != 0;
    }

    /// Steps queued whose outcome the host does not know yet.
    fn unknown(&self) -> u64 {
        self.queued - self.known_h
    }
}

/// How [`GpuOptimizer::record`] gets a step's scalars into its uniform
/// slot. Queue writes land at the next submission, before every command in
/// it: right for a step submitted alone, wrong for steps recorded into one
/// encoder, where a later step that reuses a slot would overwrite it before
/// the earlier one ran.
#[derive(Clone, Copy)]
enum ScalarsVia {
    /// `queue.write_buffer` (the step is submitted right after).
    Queue,
    /// A copy recorded into the encoder before the step's dispatches.
    Encoder,
}

/// The buffers and bind groups an optimizer owns besides the parameters and
/// gradients.
struct Built {
    state: Vec<Vec<wgpu::Buffer>>,
    #[allow(dead_code)]
    dummies: Vec<wgpu::Buffer>,
    /// Each chunk's tile table (`tables` in tiles.wgsl).
    tile_tables: Vec<wgpu::Buffer>,
    partials: wgpu::Buffer,
    /// Workgroups of each chunk's tile dispatch.
    tile_workgroups: Vec<u32>,
    info: wgpu::Buffer,
    /// The step counters of `skip_nonfinite` (`counters` in tiles.wgsl).
    counters: wgpu::Buffer,
    uniforms: wgpu::Buffer,
    aux_uniforms: wgpu::Buffer,
    rule_groups: Vec<(wgpu::BindGroup, u32)>,
    /// Made with the first tile kernel built (`attach_tile_groups`): at
    /// construction for LAMB, else with the reduction; empty until then.
    tile_groups: Vec<(wgpu::BindGroup, u32)>,
}

/// Words of the step-counter buffer (`counters` in tiles.wgsl): [0] steps
/// applied, [1] host step number last processed, [2] steps skipped, [3]
/// SGD buffer filled, [4] filled before the current step, [5] current step
/// skipped; all the low 32 bits.
const COUNTER_WORDS: u64 = 8;

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
    /// The tiles, or [`Error::SizeOverflow`] when the tensor indices or the
    /// tile numbers (`u32` in the kernels) would not fit 32 bits; the tensor
    /// count is checked before anything is allocated.
    fn new(layout: &Layout, chunks: &[ChunkRange]) -> Result<Self> {
        let n_tensors = kernel_u32(layout.len() as u64, "the number of tensors", || {
            format!("{} tensors", layout.len())
        })?;
        let mut per_chunk = vec![Vec::new(); chunks.len()];
        let mut tensors = Vec::with_capacity(layout.len());
        let mut total = 0u32;
        for t in 0..n_tensors {
            let r = layout.range(t as usize);
            let first = total;
            let mut at = r.start as u64;
            while at < r.end as u64 {
                let ci = chunks.partition_point(|c| c.start + c.len <= at);
                let c = &chunks[ci];
                let end = (r.end as u64).min(c.start + c.len).min(at + TILE as u64);
                // Within a chunk (at most MAX_CHUNK_ELEMENTS = 2^30
                // elements), and at most TILE long: both fit u32.
                per_chunk[ci].push([(at - c.start) as u32, (end - at) as u32, t, total]);
                total = kernel_u32(u64::from(total) + 1, "the number of tiles", || {
                    format!(
                        "{} elements in {} tensors, in tiles of at most {TILE}",
                        layout.total(),
                        layout.len()
                    )
                })?;
                at = end;
            }
            tensors.push([first, total - first]);
        }
        Ok(Tiling {
            per_chunk,
            tensors,
            total: total as usize,
        })
    }

    /// Each chunk's table as tiles.wgsl reads it (`tables`): a header
    /// (index of the chunk's first tile, its number of tiles); in the first
    /// chunk's table only, the tensors' (first tile, tile count), two to an
    /// entry (lamb_ratio runs once, on the first chunk's bind group); then
    /// the tiles. One binding for both tables keeps the tile kernels within
    /// 8 storage buffers.
    fn tables(&self) -> Vec<Vec<[u32; 4]>> {
        self.per_chunk
            .iter()
            .enumerate()
            .map(|(ci, tiles)| {
                let spans: Vec<[u32; 4]> = if ci == 0 {
                    self.tensors
                        .chunks(2)
                        .map(|p| {
                            let b = p.get(1).copied().unwrap_or([0, 0]);
                            [p[0][0], p[0][1], b[0], b[1]]
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                // At most 2^31 spans (u32::MAX tensors, Tiling::new) and
                // 2^30 tiles (one chunk's elements): the table's indices
                // fit u32.
                let mut table = Vec::with_capacity(1 + spans.len() + tiles.len());
                table.push([1 + spans.len() as u32, tiles.len() as u32, 0, 0]);
                table.extend(spans);
                table.extend_from_slice(tiles);
                table
            })
            .collect()
    }
}

/// `n` as the `u32` the kernels hold it in, or [`Error::SizeOverflow`]
/// naming `what` (a count the kernels index with).
fn kernel_u32(n: u64, what: &'static str, detail: impl FnOnce() -> String) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::SizeOverflow {
        what,
        ty: "u32",
        detail: format!("{}; the kernels index it in 32 bits", detail()),
    })
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

/// The most elements of one chunk, whatever the device: 2^30, so that a
/// chunk's byte size fits in 32 bits.
///
/// # 32-bit indices are safe by construction
///
/// Every kernel indexes a chunk's binding with a `u32` `i` (an element, or
/// a `vec4` of them). A chunk holds at most `MAX_CHUNK_ELEMENTS` = 2^30
/// elements (and never more bytes than `max_storage_buffer_binding_size`),
/// so `i < 2^30`. The element kernels' grid-stride loop computes
/// `i + stride` with `stride = workgroups × 256 ≤ 65 535 × 256 < 2^24`
/// (`max_compute_workgroups_per_dimension` is at most 65 535 on every
/// backend, and the dispatch is clamped to it): at most
/// `2^30 − 1 + 2^24 < 2^32`, so the sum never wraps and the loop ends. The
/// tile kernels index `tile.x + k` with `tile.x + tile.y ≤` the chunk's
/// length and step `k` by 256 below `tile.y ≤ 4096`; tile numbers and
/// tensor indices are `u32` too, and a model with more than 2^32 − 1 tiles
/// or tensors is refused ([`Error::SizeOverflow`], from `Tiling::new`).
/// Offsets into the packed tensors (which can exceed 2^32 elements in all)
/// are `u64` on the host and never reach a kernel: each chunk is bound at
/// its own offset.
pub(crate) const MAX_CHUNK_ELEMENTS: u64 = 1 << 30;
const _: () = assert!(MAX_CHUNK_ELEMENTS - 1 + 65_535 * WORKGROUP_SIZE < 1 << 32);

/// Elements per chunk on `ctx`'s device, after checking that its
/// alignments and binding sizes allow chunks at all.
fn chunk_elements(ctx: &GpuContext, options: &GpuOptions) -> Result<u64> {
    let limits = ctx.limits();
    check_chunk_limits(&limits)?;
    Ok(chunk_elements_for(&limits, options))
}

/// Workgroup memory of the tile kernels (tiles.wgsl): `red`, 256
/// `vec2<f32>`, and `refused_wg`, one `u32`. The element-wise kernels use
/// none.
const TILE_WORKGROUP_BYTES: u64 = WORKGROUP_SIZE * 8 + 4;

/// The limits that chunking and the uniform ring rely on: chunks start at
/// multiples of 256 bytes and hold at least [`CHUNK_ALIGN`] elements, ring
/// slots start at multiples of [`UNIFORM_STRIDE`].
fn check_chunk_limits(limits: &wgpu::Limits) -> Result<()> {
    let what = "chunking the packed tensors";
    let chunk_bytes = CHUNK_ALIGN * 4;
    let storage_align = limits.min_storage_buffer_offset_alignment as u64;
    if storage_align > chunk_bytes || !chunk_bytes.is_multiple_of(storage_align.max(1)) {
        return Err(Error::DeviceLimit {
            what: what.into(),
            limit: "min_storage_buffer_offset_alignment",
            needed: chunk_bytes,
            available: storage_align,
        });
    }
    let uniform_align = limits.min_uniform_buffer_offset_alignment as u64;
    if uniform_align > 256 || !UNIFORM_STRIDE.is_multiple_of(uniform_align.max(1)) {
        return Err(Error::DeviceLimit {
            what: "the ring of step scalars".into(),
            limit: "min_uniform_buffer_offset_alignment",
            needed: 256,
            available: uniform_align,
        });
    }
    for (limit, available) in [
        (
            "max_storage_buffer_binding_size",
            limits.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", limits.max_buffer_size),
    ] {
        if available < chunk_bytes {
            return Err(Error::DeviceLimit {
                what: what.into(),
                limit,
                needed: chunk_bytes,
                available,
            });
        }
    }
    Ok(())
}

/// Refuses, naming the limit, a device on which a kernel with these
/// bindings and this much workgroup memory cannot be built, before wgpu is
/// asked (wgpu would report a validation error without naming it).
fn check_kernel_limits(
    limits: &wgpu::Limits,
    what: &str,
    entries: &[wgpu::BindGroupLayoutEntry],
    workgroup_bytes: u64,
) -> Result<()> {
    let storage = entries
        .iter()
        .filter(|e| {
            matches!(
                e.ty,
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { .. },
                    ..
                }
            )
        })
        .count() as u64;
    let uniform = entries.len() as u64 - storage;
    let bindings = entries
        .iter()
        .map(|e| e.binding as u64 + 1)
        .max()
        .unwrap_or(0);
    let needs = [
        (
            "max_storage_buffers_per_shader_stage",
            storage,
            limits.max_storage_buffers_per_shader_stage,
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            uniform,
            limits.max_uniform_buffers_per_shader_stage,
        ),
        (
            "max_dynamic_uniform_buffers_per_pipeline_layout",
            uniform,
            limits.max_dynamic_uniform_buffers_per_pipeline_layout,
        ),
        ("max_bind_groups", 1, limits.max_bind_groups),
        (
            "max_bindings_per_bind_group",
            bindings,
            limits.max_bindings_per_bind_group,
        ),
        (
            "max_non_sampler_bindings",
            entries.len() as u64,
            limits.max_non_sampler_bindings,
        ),
        (
            "max_compute_workgroup_size_x",
            WORKGROUP_SIZE,
            limits.max_compute_workgroup_size_x,
        ),
        (
            "max_compute_invocations_per_workgroup",
            WORKGROUP_SIZE,
            limits.max_compute_invocations_per_workgroup,
        ),
        (
            "max_compute_workgroup_storage_size",
            workgroup_bytes,
            limits.max_compute_workgroup_storage_size,
        ),
        (
            "max_compute_workgroups_per_dimension",
            1,
            limits.max_compute_workgroups_per_dimension,
        ),
    ];
    for (limit, needed, available) in needs {
        if needed > available as u64 {
            return Err(Error::DeviceLimit {
                what: what.into(),
                limit,
                needed,
                available: available as u64,
            });
        }
    }
    Ok(())
}

/// Elements per chunk for a device with these limits.
pub(crate) fn chunk_elements_for(limits: &wgpu::Limits, options: &GpuOptions) -> u64 {
    let by_device = (limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        / 4)
    .min(MAX_CHUNK_ELEMENTS);
    let max = options
        .max_chunk_elements
        .unwrap_or(by_device)
        .min(by_device);
    (max / CHUNK_ALIGN * CHUNK_ALIGN).max(CHUNK_ALIGN)
}

/// Refuses a buffer the device cannot make: the library never asks wgpu
/// for a buffer larger than `max_buffer_size` (nor a uniform binding
/// larger than `max_uniform_buffer_binding_size`), it says so first.
fn check_size(limits: &wgpu::Limits, what: &str, bytes: u64, uniform: bool) -> Result<()> {
    if bytes > limits.max_buffer_size {
        return Err(Error::TooLarge(format!(
            "the {what} buffer needs {bytes} bytes, more than this device's max_buffer_size \
             ({}): the model has too many tensors or elements for this device",
            limits.max_buffer_size
        )));
    }
    // Every storage buffer checked here is bound whole.
    if !uniform && bytes > limits.max_storage_buffer_binding_size {
        return Err(Error::TooLarge(format!(
            "the {what} buffer needs {bytes} bytes, more than this device's \
             max_storage_buffer_binding_size ({}): the model has too many tensors or elements \
             for this device",
            limits.max_storage_buffer_binding_size
        )));
    }
    if uniform && UNIFORM_STRIDE > limits.max_uniform_buffer_binding_size {
        return Err(Error::TooLarge(format!(
            "the step scalars need a {UNIFORM_STRIDE}-byte uniform binding, more than this \
             device's max_uniform_buffer_binding_size ({})",
            limits.max_uniform_buffer_binding_size
        )));
    }
    Ok(())
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
        let momentum_buffer = config.builds_momentum_buffer();
        Self::with_state(ctx, config, momentum_buffer, params, options)
    }

    /// As [`GpuOptimizer::with_options`], with the state set given (with or
    /// without a `momentum_buffer`) and `config` already validated for it:
    /// how a checkpoint of an optimizer whose momentum was set to 0 is
    /// rebuilt.
    fn with_state(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        params: &[&[f32]],
        options: GpuOptions,
    ) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::EmptyParameterList);
        }
        let layout = Layout::of(params)?;
        let chunks = split_chunks(layout.total() as u64, chunk_elements(ctx, &options)?);
        let tiling = Tiling::new(&layout, &chunks)?;
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
            momentum_buffer,
            layout,
            chunks,
            tiling,
            params_storage,
            Storage::Owned(grad_buffers),
            variant(width, &options)?,
        )?;
        ctx.scoped("uploading parameters", || {
            opt.write_storage_tensors(&opt.params, params)
        })?;
        Ok(opt)
    }

    /// Steps buffers the caller already has on `ctx`'s device, in place:
    /// `params` and `grads` hold the tensors of `lengths` back to back from
    /// byte 0, as [`Layout`] packs them. Both need `STORAGE` usage; reading
    /// back needs `COPY_SRC` and [`GpuOptimizer::step`] with host gradients
    /// `COPY_DST`. The state buffers are the optimizer's own. Lengths whose
    /// total or byte count overflows are [`Error::SizeOverflow`], checked
    /// before the buffers' sizes ([`Error::BufferTooSmall`]).
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
        let layout = Layout::new(lengths)?;
        let required = layout.bytes();
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
        let chunks = split_chunks(layout.total() as u64, chunk_elements(ctx, &options)?);
        let tiling = Tiling::new(&layout, &chunks)?;
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
        let momentum_buffer = config.builds_momentum_buffer();
        Self::build(
            ctx,
            config,
            momentum_buffer,
            layout,
            chunks,
            tiling,
            Storage::User(params),
            Storage::User(grads),
            variant(width, &options)?,
        )
    }

    // Each argument is a separate part of the optimizer, made by its
    // constructor (the state set included: `momentum_buffer`; the tiling,
    // its counts checked before any buffer is allocated).
    #[allow(clippy::too_many_arguments)]
    fn build(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        layout: Layout,
        chunks: Vec<ChunkRange>,
        tiling: Tiling,
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
        let kernel = kernel_for(ctx, &config, momentum_buffer, variant)?;
        let width = variant.width;
        let state_names = config.state_names_with(momentum_buffer);
        let tables = tiling.tables();
        let limits = ctx.limits();
        // In u64: the counts are below 2^32 (Tiling::new), their byte
        // counts need not fit a 32-bit usize.
        check_size(
            &limits,
            "tile partials",
            tiling.total.max(1) as u64 * 8,
            false,
        )?;
        check_size(&limits, "step info", (4 + layout.len() as u64) * 4, false)?;
        for table in &tables {
            check_size(&limits, "tile table", table.len() as u64 * 16, false)?;
        }
        check_size(&limits, "step scalars", UNIFORM_RING * UNIFORM_STRIDE, true)?;
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
            let tile_tables: Vec<wgpu::Buffer> = tables
                .iter()
                .map(|table| {
                    let b = storage_buffer("tile table", table.len() as u64 * 16);
                    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(table));
                    b
                })
                .collect();
            let partials = storage_buffer("tile partials", tiling.total.max(1) as u64 * 8);
            let info = storage_buffer("step info", (4 + layout.len() as u64) * 4);
            let counters = storage_buffer("step counters", COUNTER_WORDS * 4);
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
                    (0..kernel.slots.len()).map(|_| dummy()).collect();
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
                        resource: counters.as_entire_binding(),
                    });
                    entries.push(wgpu::BindGroupEntry {
                        binding: 4 + n,
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
                dummies.extend(slot_dummies);
            }
            let tile_workgroups = tiling
                .per_chunk
                .iter()
                .map(|tiles| (tiles.len() as u64).clamp(1, max_groups) as u32)
                .collect();
            Built {
                state,
                dummies,
                tile_tables,
                partials,
                tile_workgroups,
                info,
                counters,
                uniforms,
                aux_uniforms,
                rule_groups,
                tile_groups: Vec::new(),
            }
        })?;
        let mut opt = GpuOptimizer {
            ctx: ctx.clone(),
            config,
            layout,
            chunks,
            params,
            grads,
            state_names,
            kernel,
            tile_kernel: None,
            variant,
            tiling_total: tiling.total,
            buffers: built,
            clip: None,
            norm_seen: false,
            counters: Counters::default(),
            inv_scale: 1.0,
            grad_scale: 1.0,
            skip: None,
            skipped_before: 0,
        };
        if is_lamb {
            // LAMB's own kernels are tile kernels: their bind groups are
            // needed from the first step.
            let layout = opt.kernel.layout.clone();
            opt.attach_tile_groups(&layout)?;
        }
        Ok(opt)
    }

    /// Makes the bind groups of the tile kernels with `layout` (every tile
    /// kernel, LAMB's and the reduction's, has the same layout), once.
    fn attach_tile_groups(&mut self, layout: &wgpu::BindGroupLayout) -> Result<()> {
        if !self.buffers.tile_groups.is_empty() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let b = &self.buffers;
        let (groups, dummies) = ctx.scoped("creating the tile kernels' bind groups", || {
            let device = &ctx.device;
            let uniform_binding = |buffer| {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 0,
                    size: NonZeroU64::new(UNIFORM_STRIDE),
                })
            };
            let mut groups = Vec::new();
            let mut dummies = Vec::new();
            for (ci, range) in self.chunks.iter().enumerate() {
                let state_binding = |name: &str| {
                    self.state_names.iter().position(|n| *n == name).map(|si| {
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &b.state[si][ci],
                            offset: 0,
                            size: NonZeroU64::new(range.len * 4),
                        })
                    })
                };
                // Each unused slot gets a buffer of its own, so that no two
                // writable bindings alias.
                let [m_dummy, v_dummy] = ["unused exp_avg", "unused exp_avg_sq"].map(|label| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size: 16,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                });
                let entries = [
                    (
                        0,
                        wgpu::BindingResource::Buffer(self.params.binding(ci, range, 1)),
                    ),
                    (
                        1,
                        wgpu::BindingResource::Buffer(self.grads.binding(ci, range, 1)),
                    ),
                    (
                        2,
                        state_binding("exp_avg").unwrap_or_else(|| m_dummy.as_entire_binding()),
                    ),
                    (
                        3,
                        state_binding("exp_avg_sq").unwrap_or_else(|| v_dummy.as_entire_binding()),
                    ),
                    (4, b.tile_tables[ci].as_entire_binding()),
                    (5, b.partials.as_entire_binding()),
                    (7, b.info.as_entire_binding()),
                    (8, uniform_binding(&b.aux_uniforms)),
                    (9, b.counters.as_entire_binding()),
                ]
                .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource });
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("optimizer tiles"),
                    layout,
                    entries: &entries,
                });
                groups.push((group, b.tile_workgroups[ci]));
                dummies.extend([m_dummy, v_dummy]);
            }
            (groups, dummies)
        })?;
        self.buffers.tile_groups = groups;
        self.buffers.dummies.extend(dummies);
        Ok(())
    }

    /// Builds the reduction (clipping's norm, `skip_nonfinite`'s check) on
    /// first use, so that optimizers that never turn either on do not need
    /// what it needs; a device that cannot host it refuses here
    /// ([`Error::DeviceLimit`]) and nothing changes.
    fn ensure_reduction(&mut self) -> Result<()> {
        if self.tile_kernel.is_some() {
            return Ok(());
        }
        let kernel = tile_kernel_for(&self.ctx, self.variant)?;
        self.attach_tile_groups(&kernel.layout)?;
        self.tile_kernel = Some(kernel);
        Ok(())
    }

    /// One step with gradients from the host: uploads them into the
    /// gradient buffer, then [`GpuOptimizer::step_device`]. Checks every
    /// length first: on error nothing changes.
    pub fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.layout.check(grads)?;
        self.check_host_writable(&self.grads, "gradient")?;
        let ctx = self.ctx.clone();
        ctx.scoped("uploading gradients", || {
            self.write_storage_tensors(&self.grads, grads)
        })?;
        self.step_device()
    }

    /// One step with the gradients already in the gradient buffer (written
    /// there by the caller's own kernels, or by [`GpuOptimizer::write_grads`]):
    /// one submission, nothing read back — except with
    /// [`ClipGradNorm::error_if_nonfinite`], where the step reads back
    /// whether the GPU refused it (a non-finite gradient norm) and then
    /// returns [`Error::NonFiniteGradNorm`] with parameters, state and step
    /// count unchanged. With [`GpuOptimizer::set_skip_nonfinite`] a step
    /// with a NaN or infinite gradient is skipped on the GPU and `Ok` is
    /// returned without waiting: ask [`GpuOptimizer::last_step_skipped`].
    pub fn step_device(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        self.make_room()?;
        let before = self.counters;
        let staging = self.skip.as_mut().map(|t| {
            t.free.pop().unwrap_or_else(|| {
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("step counters readback"),
                    size: COUNTER_WORDS * 4,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
        });
        ctx.scoped("stepping", || {
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("optimizer step"),
                });
            // One submission per step, so queue writes of the scalars land
            // right before this step's dispatches: the cheap path.
            self.record(&mut encoder, None, ScalarsVia::Queue)?;
            if let Some(staging) = &staging {
                encoder.copy_buffer_to_buffer(
                    &self.buffers.counters,
                    0,
                    staging,
                    0,
                    COUNTER_WORDS * 4,
                );
            }
            ctx.queue.submit(Some(encoder.finish()));
            Ok(())
        })??;
        if let (Some(staging), Some(t)) = (staging, self.skip.as_mut()) {
            t.pending.push(map_counters(staging));
        }
        if self.clip.is_some_and(|c| c.error_if_nonfinite) {
            let info = read_buffer(&self.ctx, &self.buffers.info, 0, 16)?;
            if info[2] != 0.0 {
                if self.skip.is_some() {
                    // Counted as skipped on the GPU: learn it now.
                    self.sync()?;
                    if info[3] != 0.0 {
                        // A non-finite gradient: skipped, not an error.
                        return Ok(());
                    }
                } else {
                    self.counters = before;
                }
                return Err(Error::NonFiniteGradNorm {
                    norm: info[0] as f64,
                });
            }
        }
        Ok(())
    }

    /// Records one step into the caller's command encoder (for example
    /// right after their backward pass, so the whole training step is one
    /// submission) and counts it as taken. The step's scalars (learning
    /// rate, bias corrections, ...) are copied into their uniform slot by a
    /// command recorded into `encoder` before the step's compute pass, so
    /// any number of steps may be recorded into one encoder, each running
    /// with its own scalars, in the order recorded. `timestamp_writes` is
    /// passed to the compute pass.
    ///
    /// Steps run when the encoder is submitted, in the order submissions
    /// reach the queue: submit it before the next
    /// [`GpuOptimizer::step_device`] or [`GpuOptimizer::step`], or that step
    /// runs first. Uploads from the host ([`GpuOptimizer::write_grads`],
    /// `write_params`, `write_state`, `load_checkpoint`) go through the
    /// queue and land at the next submission, before every command of it:
    /// between steps recorded into one encoder, change the gradients with
    /// commands in the encoder (your backward pass, `copy_buffer_to_buffer`).
    ///
    /// With [`GpuOptimizer::set_skip_nonfinite`] at most 32 steps may be
    /// queued ahead of the last step whose outcome the host has read back
    /// (the host waits for steps already submitted when it must): the 33rd
    /// step recorded before the encoder is submitted returns
    /// [`Error::UnsubmittedSteps`] and changes nothing; submit the encoder
    /// and record again. With [`ClipGradNorm::error_if_nonfinite`] use
    /// [`GpuOptimizer::step_device`], which learns whether the GPU refused
    /// the step; this returns [`Error::InvalidOptions`] then.
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
        self.make_room()?;
        if self.skip.as_ref().is_some_and(|t| t.pending.is_empty()) {
            // Ask for the counters as the GPU has them after whatever the
            // caller has submitted so far (our own small submission).
            self.request_counters()?;
        }
        self.record(encoder, timestamp_writes, ScalarsVia::Encoder)
    }

    /// With `skip_nonfinite`, makes sure the next step's window of possible
    /// step counts fits the table: takes in finished read-backs (without
    /// waiting), and waits for one only when the window is full.
    fn make_room(&mut self) -> Result<()> {
        if self.skip.is_none() {
            return Ok(());
        }
        self.harvest(false)?;
        let full = |t: &SkipTracker| t.unknown() + 1 > TABLE_LEN as u64;
        if self.skip.as_ref().is_some_and(full) {
            self.harvest(true)?;
        }
        if self.skip.as_ref().is_some_and(full) {
            // Nothing in flight covered the steps queued: read now.
            self.request_counters()?;
            self.harvest(true)?;
        }
        if let Some(t) = self.skip.as_ref().filter(|t| full(t)) {
            return Err(Error::UnsubmittedSteps {
                steps: t.unknown(),
                needs: "with skip_nonfinite at most 32 steps may be queued ahead of the GPU",
            });
        }
        const _: () = assert!(TABLE_LEN == 32, "the message above says 32");
        Ok(())
    }

    /// Submits a copy of the counters to a staging buffer and maps it.
    fn request_counters(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        let Some(t) = self.skip.as_mut() else {
            return Ok(());
        };
        let staging = t.free.pop().unwrap_or_else(|| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step counters readback"),
                size: COUNTER_WORDS * 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let counters = &self.buffers.counters;
        ctx.scoped("reading the step counters", || {
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step counters"),
                });
            encoder.copy_buffer_to_buffer(counters, 0, &staging, 0, COUNTER_WORDS * 4);
            ctx.queue.submit(Some(encoder.finish()));
        })?;
        t.pending.push(map_counters(staging));
        Ok(())
    }

    /// Takes in the read-backs that have finished; with `wait`, waits for
    /// all those in flight first.
    fn harvest(&mut self, wait: bool) -> Result<()> {
        let Some(t) = self.skip.as_mut() else {
            return Ok(());
        };
        if t.pending.is_empty() {
            return Ok(());
        }
        if wait {
            self.ctx.wait()?;
        } else {
            let _ = self.ctx.device.poll(wgpu::PollType::Poll);
        }
        if let Some(lost) = self.ctx.lost() {
            return Err(Error::DeviceLost {
                during: "reading the step counters",
                reason: lost,
            });
        }
        let mut still = Vec::new();
        for r in std::mem::take(&mut t.pending) {
            let state = *r
                .done
                .lock()
                .map_err(|_| Error::Readback("poisoned".into()))?;
            match state {
                None => still.push(r),
                Some(false) => {
                    return Err(Error::Readback("mapping the step counters failed".into()))
                }
                Some(true) => {
                    let words: Vec<u32> = {
                        let view = r
                            .buffer
                            .slice(..)
                            .get_mapped_range()
                            .map_err(|e| Error::Readback(e.to_string()))?;
                        bytemuck::cast_slice(&view).to_vec()
                    };
                    r.buffer.unmap();
                    t.learn(CounterWords::of(&words));
                    t.free.push(r.buffer);
                }
            }
        }
        t.pending = still;
        self.counters.step = t.known_e + t.unknown();
        Ok(())
    }

    /// Waits for every queued step and learns the exact step count,
    /// skips and SGD's buffer flag (with `skip_nonfinite`; a no-op
    /// otherwise).
    fn sync(&mut self) -> Result<()> {
        if self.skip.is_none() {
            return Ok(());
        }
        self.request_counters()?;
        self.harvest(true)?;
        if let Some(t) = &self.skip {
            if t.unknown() != 0 {
                return Err(Error::UnsubmittedSteps {
                    steps: t.unknown(),
                    needs: "the exact step count needs every step run",
                });
            }
            self.counters = Counters {
                step: t.known_e,
                buffer_filled: t.known_filled,
            };
        }
        Ok(())
    }

    /// Records one step's scalars and dispatches into `encoder` and counts
    /// the step; on error nothing was recorded or counted.
    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
        via: ScalarsVia,
    ) -> Result<()> {
        let skip = self.skip.as_ref();
        let host_step = skip.map_or(self.counters.step, |t| t.queued);
        let slot = host_step % UNIFORM_RING;
        let offset = [(slot * UNIFORM_STRIDE) as u32];
        let mut flags = 0;
        if let Some(clip) = self.clip {
            flags |= FLAG_CLIP;
            if clip.error_if_nonfinite {
                flags |= FLAG_SKIP_NONFINITE;
            }
        }
        if self.inv_scale != 1.0 {
            flags |= FLAG_GRAD_SCALE;
        }
        if skip.is_some() {
            flags |= FLAG_SKIP_FOUND_INF;
        }
        if let Config::Sgd(c) = &self.config {
            if c.momentum != 0.0 {
                flags |= FLAG_USE_MOMENTUM;
            }
        }
        // The applied-step count before this step: known exactly without
        // skipping; with it, one of `known_e ..= known_e + unknown`.
        let (base, window) = match skip {
            Some(t) => (t.known_e, t.unknown()),
            None => (self.counters.step, 0),
        };
        let mut tail = StepTail {
            inv_scale: self.inv_scale,
            base: base as u32,
            host_step: (host_step + 1) as u32,
            _pad: 0,
            table: [[0.0; 4]; TABLE_LEN],
        };
        for j in 0..=window {
            let s = self
                .config
                .step_scalars(base + j + 1, self.counters.buffer_filled, flags);
            tail.table[j as usize] = table_entry(&s);
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
        // Both below 2^32: Tiling::new refused more.
        aux.n_tiles = self.tiling_total as u32;
        aux.n_tensors = self.layout.len() as u32;
        let at = slot * UNIFORM_STRIDE;
        let is_lamb = matches!(scalars, StepScalars::Lamb(_));
        match via {
            ScalarsVia::Queue => {
                let queue = &self.ctx.queue;
                queue.write_buffer(&self.buffers.aux_uniforms, at, bytemuck::bytes_of(&aux));
                queue.write_buffer(
                    &self.buffers.aux_uniforms,
                    at + std::mem::size_of::<AuxScalars>() as u64,
                    bytemuck::bytes_of(&tail),
                );
                if !is_lamb {
                    let header = scalars.bytes();
                    queue.write_buffer(&self.buffers.uniforms, at, header);
                    queue.write_buffer(
                        &self.buffers.uniforms,
                        at + header.len() as u64,
                        bytemuck::bytes_of(&tail),
                    );
                }
            }
            ScalarsVia::Encoder => {
                // A buffer of this step's own, copied into the slot by the
                // encoder: ordered with the dispatches, whatever else the
                // encoder holds or the queue runs before it.
                let aux_len = std::mem::size_of::<AuxScalars>() + std::mem::size_of::<StepTail>();
                let mut bytes = Vec::with_capacity(2 * aux_len);
                bytes.extend_from_slice(bytemuck::bytes_of(&aux));
                bytes.extend_from_slice(bytemuck::bytes_of(&tail));
                if !is_lamb {
                    bytes.extend_from_slice(scalars.bytes());
                    bytes.extend_from_slice(bytemuck::bytes_of(&tail));
                }
                let device = &self.ctx.device;
                let source = self.ctx.scoped("recording a step's scalars", || {
                    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("one step's scalars"),
                        contents: &bytes,
                        usage: wgpu::BufferUsages::COPY_SRC,
                    })
                })?;
                let aux_len = aux_len as u64;
                encoder.copy_buffer_to_buffer(&source, 0, &self.buffers.aux_uniforms, at, aux_len);
                if !is_lamb {
                    encoder.copy_buffer_to_buffer(
                        &source,
                        aux_len,
                        &self.buffers.uniforms,
                        at,
                        bytes.len() as u64 - aux_len,
                    );
                }
            }
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
            // Built whenever clipping or skipping is on (`ensure_reduction`).
            let reduce = self.tile_kernel.as_ref();
            if let Some(reduce) = reduce.filter(|_| self.clip.is_some() || skip.is_some()) {
                per_tile(&mut pass, &reduce.pipelines[0]);
                once(&mut pass, &reduce.pipelines[1], 1);
            }
            if is_lamb {
                // At most u32::MAX tensors (Tiling::new).
                let tensors = u32::try_from(self.layout.len())
                    .unwrap_or(u32::MAX)
                    .clamp(1, max_groups);
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
        self.norm_seen |= self.clip.is_some();
        match self.skip.as_mut() {
            Some(t) => {
                t.queued += 1;
                // An upper bound until the outcome is read back.
                self.counters.step = t.known_e + t.unknown();
            }
            None => self.counters.advance(&self.config),
        }
        Ok(())
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
        let clip = if self.clip.is_some() || self.skip.is_some() {
            chunks + 1
        } else {
            0
        };
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
    /// submission. Turning it on builds the reduction kernel the first
    /// time: [`Error::DeviceLimit`] on a device whose limits cannot host it
    /// (see the README, "Device limits"), with nothing changed.
    pub fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
        if let Some(c) = clip {
            c.validate()?;
            self.ensure_reduction()?;
        }
        self.clip = clip;
        self.norm_seen = false;
        Ok(())
    }

    /// The clipping in force.
    pub fn clip_grad_norm(&self) -> Option<ClipGradNorm> {
        self.clip
    }

    /// The total gradient norm of the last step clipping saw (before
    /// clipping; a step refused by `error_if_nonfinite` included), read back
    /// from the GPU: this waits for the step to finish, so ask only when you
    /// log it. `None` while clipping is off and before the first step after
    /// [`GpuOptimizer::set_clip_grad_norm`], as on the CPU.
    pub fn last_grad_norm(&self) -> Result<Option<f32>> {
        if self.clip.is_none() || !self.norm_seen {
            return Ok(None);
        }
        let info = read_buffer(&self.ctx, &self.buffers.info, 0, 4)?;
        Ok(Some(info[0]))
    }

    /// Elements each invocation loads per buffer (4: `vec4<f32>`, or 1).
    pub fn vector_width(&self) -> u32 {
        self.variant.width
    }

    /// Uploads gradients into the gradient buffer without stepping. The
    /// upload goes through the queue: it lands at the next submission,
    /// before every command of it (so not between steps recorded into one
    /// encoder; see [`GpuOptimizer::record_step`]).
    pub fn write_grads(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.layout.check(grads)?;
        self.check_host_writable(&self.grads, "gradient")?;
        let ctx = self.ctx.clone();
        ctx.scoped("uploading gradients", || {
            self.write_storage_tensors(&self.grads, grads)
        })
    }

    /// Replaces the parameters with these values (same layout).
    pub fn write_params(&mut self, params: &[&[f32]]) -> Result<()> {
        self.layout.check(params)?;
        self.check_host_writable(&self.params, "parameter")?;
        let ctx = self.ctx.clone();
        ctx.scoped("uploading parameters", || {
            self.write_storage_tensors(&self.params, params)
        })
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
        let (step, buffer_filled, skipped) = self.exact_counts()?;
        Ok(Checkpoint {
            config: self.config.clone(),
            lengths: self.layout.lengths().to_vec(),
            step,
            buffer_filled,
            state,
            params,
            clip: self.clip,
            skip_nonfinite: self.skip.is_some(),
            skipped_steps: skipped,
            grad_scale: self.grad_scale,
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
        let layout = Layout::new(&ckpt.lengths)?;
        let mut opt = Self::with_state(
            ctx,
            ckpt.config.clone(),
            ckpt.momentum_buffer(),
            &layout.split(flat)?,
            options,
        )?;
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
        ckpt.check_fits(&self.config, &self.state_names, self.layout.lengths())?;
        if ckpt.params.is_some() {
            self.check_host_writable(&self.params, "parameter")?;
        }
        let inv_scale = crate::rules::inverse_grad_scale(ckpt.grad_scale)?;
        if ckpt.clip.is_some() || ckpt.skip_nonfinite {
            self.ensure_reduction()?;
        }
        let ctx = self.ctx.clone();
        ctx.scoped("restoring a checkpoint", || {
            for (i, (_, values)) in ckpt.state.iter().enumerate() {
                let storage = Storage::Owned(self.buffers.state[i].clone());
                // Lengths validated above.
                self.write_storage_tensors(&storage, &self.layout.split_unchecked(values));
            }
            if let Some(p) = &ckpt.params {
                self.write_storage_tensors(&self.params, &self.layout.split_unchecked(p));
            }
        })?;
        self.config = ckpt.config.clone();
        self.counters = Counters {
            step: ckpt.step,
            buffer_filled: ckpt.buffer_filled,
        };
        self.clip = ckpt.clip;
        self.norm_seen = false;
        self.inv_scale = inv_scale;
        self.grad_scale = ckpt.grad_scale;
        self.skip = None;
        self.skipped_before = ckpt.skipped_steps;
        if ckpt.skip_nonfinite {
            self.start_skipping()?;
        }
        Ok(())
    }

    /// Skip steps whose gradients hold a NaN or an infinity (PyTorch's
    /// `GradScaler` `found_inf`, optax's `apply_if_finite`): the whole step
    /// is skipped, parameters, state and step count untouched, and counted
    /// ([`GpuOptimizer::skipped_steps`]). Off by default: a NaN then
    /// propagates, as in PyTorch.
    ///
    /// The GPU checks the gradients in the same submission as the update
    /// (the reduction of `shaders/reduce.wgsl` counts the non-finite
    /// elements) and decides alone: nothing is read back for the step, so
    /// stepping never waits. What the host cannot know is how many of the
    /// steps it queued were applied, and Adam's bias corrections (Adagrad's
    /// decayed lr, LAMB's) depend on that count, computed on the host in
    /// f64. So the GPU keeps the count, and each step carries the scalars of
    /// every count it may be at — at most 32, one per step queued since
    /// the host last learned the count — and the kernel picks the entry of
    /// the count it has. The host learns the count from small read-backs it
    /// maps asynchronously and collects when they are done, never waiting
    /// unless 32 steps are queued ahead of what it knows. The scalars are
    /// those of the same f64 formula as without skipping, so a run with
    /// skipped steps is bit for bit the run that never saw those gradients.
    ///
    /// Turning it off waits for the queued steps (to learn the count).
    /// Toggle it between submissions, not between steps recorded into one
    /// encoder. Turning it on builds the reduction kernel the first time:
    /// [`Error::DeviceLimit`] on a device whose limits cannot host it, with
    /// nothing changed.
    pub fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()> {
        match (skip, self.skip.is_some()) {
            (true, false) => {
                self.ensure_reduction()?;
                self.start_skipping()
            }
            (false, true) => {
                self.sync()?;
                if let Some(t) = self.skip.take() {
                    self.skipped_before += t.known_skipped;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Starts the skip tracker at the host's (exact) counts, and the GPU's
    /// counters with it.
    fn start_skipping(&mut self) -> Result<()> {
        let c = self.counters;
        let words: [u32; COUNTER_WORDS as usize] = [
            c.step as u32,
            c.step as u32,
            0,
            c.buffer_filled as u32,
            c.buffer_filled as u32,
            0,
            0,
            0,
        ];
        let ctx = self.ctx.clone();
        ctx.scoped("starting the step counters", || {
            ctx.queue
                .write_buffer(&self.buffers.counters, 0, bytemuck::cast_slice(&words))
        })?;
        self.skip = Some(SkipTracker {
            queued: c.step,
            known_h: c.step,
            known_e: c.step,
            known_skipped: 0,
            known_filled: c.buffer_filled,
            known_last_skipped: false,
            pending: Vec::new(),
            free: Vec::new(),
        });
        Ok(())
    }

    /// Whether steps with non-finite gradients are skipped.
    pub fn skip_nonfinite(&self) -> bool {
        self.skip.is_some()
    }

    /// Steps skipped so far because a gradient was NaN or infinite (and,
    /// with `skip_nonfinite` on, steps refused by `error_if_nonfinite`).
    /// Waits for the queued steps: ask when you log, not every step.
    pub fn skipped_steps(&mut self) -> Result<u64> {
        self.sync()?;
        Ok(self.skipped_before + self.skip.as_ref().map_or(0, |t| t.known_skipped))
    }

    /// Whether the last step was skipped (`skip_nonfinite`). Waits for the
    /// queued steps: ask when you need to know, for example to lower the
    /// loss scale as `GradScaler.update` does.
    pub fn last_step_skipped(&mut self) -> Result<bool> {
        self.sync()?;
        Ok(self.skip.as_ref().is_some_and(|t| t.known_last_skipped))
    }

    /// The gradients in the gradient buffer are loss-scaled by `scale`
    /// (mixed precision): the fused update multiplies each by `1/scale`
    /// (rounded to f32 as PyTorch's `GradScaler.unscale_` does) before
    /// clipping and the rule, in the same kernel. 1 (the default) turns it
    /// off. Refuses a scale that is not finite and positive
    /// ([`Error::InvalidHyperparameter`] `grad_scale`).
    pub fn set_grad_scale(&mut self, scale: f64) -> Result<()> {
        self.inv_scale = crate::rules::inverse_grad_scale(scale)?;
        self.grad_scale = scale;
        Ok(())
    }

    /// The loss scale in force (1: none).
    pub fn grad_scale(&self) -> f64 {
        self.grad_scale
    }

    /// The exact (steps applied, SGD buffer filled, steps skipped), reading
    /// the GPU's counters back with `skip_nonfinite` (waits).
    fn exact_counts(&self) -> Result<(u64, bool, u64)> {
        let Some(t) = &self.skip else {
            return Ok((
                self.counters.step,
                self.counters.buffer_filled,
                self.skipped_before,
            ));
        };
        let words: Vec<u32> = read_buffer(&self.ctx, &self.buffers.counters, 0, COUNTER_WORDS * 4)?
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let mut copy = SkipTracker {
            queued: t.queued,
            known_h: t.known_h,
            known_e: t.known_e,
            known_skipped: t.known_skipped,
            known_filled: t.known_filled,
            known_last_skipped: t.known_last_skipped,
            pending: Vec::new(),
            free: Vec::new(),
        };
        copy.learn(CounterWords::of(&words));
        if copy.unknown() != 0 {
            return Err(Error::UnsubmittedSteps {
                steps: copy.unknown(),
                needs: "the exact step count needs every step run",
            });
        }
        Ok((
            copy.known_e,
            copy.known_filled,
            self.skipped_before + copy.known_skipped,
        ))
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
            .split_unchecked(&flat)
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
            .split_unchecked(&flat)
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

    /// Steps taken so far. With [`GpuOptimizer::set_skip_nonfinite`] the
    /// host does not wait to learn which steps were skipped: this counts
    /// the steps whose outcome it has not read back yet as taken (an upper
    /// bound), and is exact after [`GpuOptimizer::skipped_steps`],
    /// [`GpuOptimizer::last_step_skipped`] or a checkpoint.
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

/// The step-dependent scalars of a step, as the kernels read them from the
/// table of [`StepTail`]: Adam's `(step_size, sqrt(1 − β2ᵗ), 1 − β2ᵗ)`,
/// Adagrad's decayed lr, LAMB's `(1 − β1ᵗ, 1 − β2ᵗ)`; nothing for SGD and
/// RMSprop.
fn table_entry(s: &StepScalars) -> [f32; 4] {
    match s {
        StepScalars::Adam(a) => [
            a.step_size,
            a.bias_correction2_sqrt,
            a.bias_correction2,
            0.0,
        ],
        StepScalars::Adagrad(a) => [a.clr, 0.0, 0.0, 0.0],
        StepScalars::Lamb(a) => [a.bias_correction1, a.bias_correction2, 0.0, 0.0],
        StepScalars::Sgd(_) | StepScalars::RmsProp(_) => [0.0; 4],
    }
}

/// Maps a staging buffer the counters were copied to; the result arrives
/// when the device is next polled after the copy has run.
fn map_counters(buffer: wgpu::Buffer) -> Readback {
    let done = std::sync::Arc::new(std::sync::Mutex::new(None));
    let d = done.clone();
    buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        if let Ok(mut d) = d.lock() {
            *d = Some(r.is_ok());
        }
    });
    Readback { buffer, done }
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
            Some(Err(e)) => {
                if let Some(reason) = ctx.lost() {
                    return Err(Error::DeviceLost {
                        during: "reading back",
                        reason,
                    });
                }
                return Err(Error::Readback(e.to_string()));
            }
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
    if let Some(reason) = ctx.lost() {
        return Err(Error::DeviceLost {
            during: "reading back",
            reason,
        });
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
/// kernels; `momentum_buffer`: whether the state has one.
fn kernel_for(
    ctx: &GpuContext,
    config: &Config,
    momentum_buffer: bool,
    variant: Variant,
) -> Result<Kernel> {
    let (name, source) = config.shader();
    let overrides = config.overrides(momentum_buffer);
    let limits = ctx.limits();
    if let Config::Lamb(_) = config {
        let entries = tile_layout_entries();
        check_kernel_limits(&limits, "the LAMB kernels", &entries, TILE_WORKGROUP_BYTES)?;
        return compile(
            ctx,
            name,
            &format!("{}{source}", include_str!("../../shaders/tiles.wgsl")),
            &["lamb_moments", "lamb_ratio", "lamb_apply"],
            overrides,
            entries,
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
    entries.push(storage_entry(3 + slots.len() as u32, true));
    entries.push(uniform_entry(4 + slots.len() as u32));
    check_kernel_limits(&limits, &format!("the {name} kernel"), &entries, 0)?;
    let prelude = if variant.width == 4 {
        "alias V = vec4<f32>;\nalias VU = vec4<u32>;\nalias VB = vec4<bool>;\n"
    } else {
        "alias V = f32;\nalias VU = u32;\nalias VB = bool;\n"
    };
    let common = include_str!("../../shaders/step.wgsl");
    compile(
        ctx,
        name,
        &format!("{prelude}{common}{source}"),
        &["main"],
        overrides,
        entries,
        slots,
        variant,
    )
}

/// The bindings of the tile kernels (tiles.wgsl): 8 storage buffers and
/// one uniform, WebGPU's default limits.
fn tile_layout_entries() -> Vec<wgpu::BindGroupLayoutEntry> {
    vec![
        storage_entry(0, false),
        storage_entry(1, true),
        storage_entry(2, false),
        storage_entry(3, false),
        storage_entry(4, true),
        storage_entry(5, false),
        storage_entry(7, false),
        uniform_entry(8),
        storage_entry(9, false),
    ]
}

/// The clipping kernels (`shaders/reduce.wgsl`).
fn tile_kernel_for(ctx: &GpuContext, variant: Variant) -> Result<Kernel> {
    check_kernel_limits(
        &ctx.limits(),
        "the reduction of gradient clipping and skip_nonfinite",
        &tile_layout_entries(),
        TILE_WORKGROUP_BYTES,
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A count the kernels hold in 32 bits is refused past u32::MAX, never
    /// truncated (a model of 2^32 tensors or tiles is too big to build in a
    /// test, so the check itself is tested).
    #[test]
    fn kernel_counts_past_u32_are_refused() {
        assert_eq!(kernel_u32(u32::MAX as u64, "x", String::new), Ok(u32::MAX));
        for n in [u32::MAX as u64 + 1, u64::MAX] {
            match kernel_u32(n, "the number of tiles", || "detail".into()) {
                Err(Error::SizeOverflow { what, ty, detail }) => {
                    assert_eq!((what, ty), ("the number of tiles", "u32"));
                    assert!(detail.contains("detail"), "{detail}");
                }
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    /// Whatever a device claims, a chunk stays below 2^30 elements (its
    /// byte size and every index into it fit in 32 bits).
    #[test]
    fn chunks_keep_indices_32_bit() {
        let huge = wgpu::Limits {
            max_storage_buffer_binding_size: u64::MAX,
            max_buffer_size: u64::MAX,
            ..wgpu::Limits::default()
        };
        assert_eq!(
            chunk_elements_for(&huge, &GpuOptions::default()),
            MAX_CHUNK_ELEMENTS
        );
        let asked = GpuOptions {
            max_chunk_elements: Some(u64::MAX),
            ..GpuOptions::default()
        };
        assert_eq!(chunk_elements_for(&huge, &asked), MAX_CHUNK_ELEMENTS);
        // A 2^33-element model is 8 chunks, each bound at its own offset.
        let chunks = split_chunks(1 << 33, MAX_CHUNK_ELEMENTS);
        assert_eq!(chunks.len(), 8);
        assert!(chunks.iter().all(|c| c.len <= MAX_CHUNK_ELEMENTS));
        // The grid-stride loop's last index plus the largest stride.
        let last = (MAX_CHUNK_ELEMENTS - 1) as u32;
        assert!(last.checked_add(65_535 * WORKGROUP_SIZE as u32).is_some());
    }

    /// The low 32 bits the GPU keeps are put back into full counts, past
    /// 2^32 too.
    #[test]
    fn counters_past_32_bits() {
        let start = (1u64 << 32) - 2;
        let mut t = SkipTracker {
            queued: start + 5,
            known_h: start,
            known_e: start,
            known_skipped: 0,
            known_filled: false,
            known_last_skipped: false,
            pending: Vec::new(),
            free: Vec::new(),
        };
        t.learn(CounterWords {
            applied: (start + 3) as u32,
            host_step: (start + 4) as u32,
            skipped: 1,
            filled: 1,
            last_skipped: 0,
        });
        assert_eq!(
            (t.known_h, t.known_e, t.known_skipped),
            (start + 4, start + 3, 1)
        );
        // An older read-back arriving late is ignored.
        t.learn(CounterWords {
            applied: (start + 1) as u32,
            host_step: (start + 1) as u32,
            skipped: 0,
            filled: 0,
            last_skipped: 0,
        });
        assert_eq!((t.known_h, t.known_e), (start + 4, start + 3));
        assert_eq!(t.unknown(), 1);
    }
}
