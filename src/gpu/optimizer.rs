//! The GPU optimizer: packed buffers, one fused kernel per rule, one
//! submission per step. Its parts live beside it: kernels.rs (the
//! kernels), chunks.rs (chunks and limits), resources.rs (buffers and bind
//! groups), uniforms.rs (the per-step scalars), skip.rs (the non-finite
//! skip tracker), readback.rs.

use crate::checkpoint::{Checkpoint, GroupFit, GroupState};
use crate::clip::ClipGradNorm;
use crate::cpu::{scalar_state_of, state_index};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::layout::{Counters, Layout, Shape};
use crate::rules::Config;

use super::chunks::{chunk_elements, padded, split_chunks, ChunkRange, Tiling};
use super::groups::GpuGroups;
use super::kernels::{kernel_for, variant, Kernel, Variant};
use super::matrix::{MatrixPlan, MatrixStep};
use super::precision::GpuPrecision;
use super::readback::{map_counters, read_buffer};
use super::resources::{OwnedResources, Storage};
use super::skip::{SkipTracker, COUNTER_WORDS};
use super::uniforms::{grouped_stride, ScalarsVia, UNIFORM_RING, UNIFORM_STRIDE};
use super::views::ViewPlan;

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
    /// On views ([`GpuOptimizer::from_views`]) 4 needs every view to start
    /// at a multiple of 16 bytes and hold a multiple of 4 elements; `None`
    /// takes 4 where they do.
    pub vector_width: Option<u32>,
    /// Compile the kernels without wgpu's shader bounds checks. Safe by
    /// construction: each invocation touches only index `i < arrayLength(&param)`,
    /// and every binding of a chunk (parameters, gradients, each state
    /// tensor) is bound with the same length, so `i` is in bounds for all of
    /// them; the state slots a configuration does not use are behind
    /// `override` constants and never touched. The loop ends because the
    /// stride is at least one workgroup. Ignored on views
    /// ([`GpuOptimizer::from_views`]) and with 8-bit state
    /// ([`GpuOptimizer::with_precision`]), whose kernels index with offsets
    /// from a table.
    pub skip_bounds_checks: bool,
}

/// An optimizer whose parameters, gradients and state live on the GPU.
///
/// The tensors are packed back to back in flat buffers (see [`Layout`]); a
/// step writes this step's scalars to a uniform buffer and records one
/// compute pass with one dispatch per chunk (one chunk unless the model is
/// larger than one storage binding), whatever the number of tensors. Nothing
/// is read back and nothing is recompiled during a step. Tensors that live
/// at offsets in the caller's own buffers (a framework's pool) are taken as
/// views: [`GpuOptimizer::from_views`].
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
    pub(super) ctx: GpuContext,
    pub(super) config: Config,
    pub(super) layout: Layout,
    pub(super) chunks: Vec<ChunkRange>,
    pub(super) params: Storage,
    pub(super) grads: Storage,
    pub(super) state_names: Vec<&'static str>,
    pub(super) kernel: Kernel,
    /// The reduction of `shaders/reduce.wgsl`, compiled when clipping or
    /// `skip_nonfinite` is first turned on (`ensure_reduction`).
    pub(super) reduction: Option<Kernel>,
    pub(super) variant: Variant,
    /// Tiles over all chunks.
    pub(super) tile_count: usize,
    pub(super) buffers: OwnedResources,
    pub(super) clip: Option<ClipGradNorm>,
    /// A step has run with the clipping in force (so `info` holds its norm).
    pub(super) norm_seen: bool,
    pub(super) counters: Counters,
    /// The rule's scalar state after `counters.step` steps (while
    /// skipping, the tracker's `scalar_state_known` is the one kept).
    pub(super) scalar_state: Vec<f64>,
    /// `1/grad_scale` and the scale (1: off).
    pub(super) inv_scale: f32,
    pub(super) grad_scale: f64,
    /// `Some` while steps with non-finite gradients are skipped.
    pub(super) skip: Option<SkipTracker>,
    /// Steps skipped before the tracker in force was started.
    pub(super) skipped_before: u64,
    /// Schedule-free eval mode: the parameters hold `x`, not `y`
    /// (src/gpu/mode.rs).
    pub(super) eval: bool,
    /// How the views are bound ([`GpuOptimizer::from_views`]); `None` on
    /// the packed paths.
    pub(super) views: Option<ViewPlan>,
    /// Several parameter groups ([`GpuOptimizer::with_param_groups`]);
    /// `None` for one.
    pub(super) groups: Option<GpuGroups>,
    /// 16-bit parameters or state ([`GpuOptimizer::with_precision`]);
    /// `None` for f32.
    pub(super) precision: Option<GpuPrecision>,
    /// The matrix rules' (Adafactor, Muon) kernels and buffers
    /// (src/gpu/matrix.rs); `None` for the element-wise rules.
    pub(super) matrix: Option<MatrixPlan>,
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
        if config.is_matrix_rule() {
            check_matrix_options(&config, &options)?;
            let layout = Layout::of(params)?;
            config.check_shapes(&layout)?;
            return Self::build_matrix(ctx, config, momentum_buffer, layout, params);
        }
        Self::with_state(ctx, config, momentum_buffer, params, options)
    }

    /// As [`GpuOptimizer::new`], with each tensor's [`Shape`], as
    /// [`crate::CpuOptimizer::with_shapes`] takes them (the same checks and
    /// errors: [`Error::ShapeMismatch`], [`Error::MatrixRequired`]):
    /// [`crate::Adafactor`] factors every tensor of two or more dimensions,
    /// [`crate::Muon`] needs every tensor 2-D. The element-wise rules ignore
    /// the shapes; checkpoints record them ([`Checkpoint::shapes`]).
    ///
    /// The matrix rules keep each tensor in buffers of its own (parameters,
    /// gradients, state) and step in one submission like the others.
    /// Global-norm clipping ([`GpuOptimizer::set_clip_grad_norm`]), the
    /// loss scale ([`GpuOptimizer::set_grad_scale`]), `set_lr`,
    /// `set_momentum` (Muon), checkpoints and
    /// [`GpuOptimizer::record_step`] work as for the others; refused
    /// ([`Error::Unsupported`]): `skip_nonfinite` and
    /// [`ClipGradNorm::error_if_nonfinite`] (their kernels cannot refuse a
    /// step), non-default [`GpuOptions`], views, the caller's buffers and
    /// parameter groups. A tensor (and, for Muon, its Gram matrix) must
    /// fit one storage binding ([`Error::DeviceLimit`]).
    ///
    /// ```no_run
    /// use wgpu_optim::{GpuContext, GpuOptimizer, Muon, Shape};
    /// let ctx = GpuContext::new()?;
    /// let w = vec![0.01f32; 64 * 256];
    /// let mut opt = GpuOptimizer::with_shapes(&ctx, Muon::default(), &[&w], &[Shape::matrix(64, 256)])?;
    /// opt.step(&[&vec![0.1f32; 64 * 256]])?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn with_shapes(
        ctx: &GpuContext,
        config: impl Into<Config>,
        params: &[&[f32]],
        shapes: &[Shape],
    ) -> Result<Self> {
        Self::with_shapes_and_options(ctx, config, params, shapes, GpuOptions::default())
    }

    /// As [`GpuOptimizer::with_shapes`], with [`GpuOptions`] (the
    /// element-wise rules take them as [`GpuOptimizer::with_options`]
    /// does; for the matrix rules a non-default one is
    /// [`Error::Unsupported`]).
    pub fn with_shapes_and_options(
        ctx: &GpuContext,
        config: impl Into<Config>,
        params: &[&[f32]],
        shapes: &[Shape],
        options: GpuOptions,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let momentum_buffer = config.builds_momentum_buffer();
        Self::with_state_shaped(ctx, config, momentum_buffer, params, shapes, options)
    }

    /// [`GpuOptimizer::with_shapes`] with the state set given and options.
    fn with_state_shaped(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        params: &[&[f32]],
        shapes: &[Shape],
        options: GpuOptions,
    ) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::EmptyParameterList);
        }
        let layout = Layout::of(params)?.with_shapes(shapes)?;
        config.check_shapes(&layout)?;
        if config.is_matrix_rule() {
            check_matrix_options(&config, &options)?;
            return Self::build_matrix(ctx, config, momentum_buffer, layout, params);
        }
        let mut opt = Self::with_state(ctx, config, momentum_buffer, params, options)?;
        opt.layout = layout;
        Ok(opt)
    }

    /// A matrix rule's optimizer: one parameter and one gradient buffer
    /// per non-empty tensor (a "chunk" each, so the uploads and read-backs
    /// of the packed paths serve it), and the [`MatrixPlan`].
    fn build_matrix(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        layout: Layout,
        params: &[&[f32]],
    ) -> Result<Self> {
        let chunks: Vec<ChunkRange> = (0..layout.len())
            .filter(|&i| layout.lengths()[i] > 0)
            .map(|i| ChunkRange {
                start: layout.offsets()[i] as u64,
                len: layout.lengths()[i] as u64,
            })
            .collect();
        let tiling = Tiling::new(&layout, &chunks)?;
        let state_names = config.state_names_with(momentum_buffer);
        // Checks the limits before the parameter buffers are made.
        let max_binding = {
            let l = ctx.limits();
            l.max_storage_buffer_binding_size.min(l.max_buffer_size)
        };
        if let Some(c) = chunks.iter().find(|c| padded(c.len, 4) * 4 > max_binding) {
            return Err(Error::DeviceLimit {
                what: format!("a tensor of {} elements of {}", c.len, config.kind()),
                limit: "max_storage_buffer_binding_size",
                needed: padded(c.len, 4) * 4,
                available: max_binding,
            });
        }
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
        let plan = MatrixPlan::new(
            ctx,
            &config,
            &state_names,
            &layout,
            &param_buffers,
            &grad_buffers,
        )?;
        let buffers = OwnedResources::create(
            ctx,
            &config,
            &[],
            &chunks,
            &tiling,
            layout.len(),
            UNIFORM_STRIDE,
            false,
            None,
        )?;
        let scalar_state = config.scalar_state_initial();
        let opt = GpuOptimizer {
            ctx: ctx.clone(),
            config,
            layout,
            chunks,
            params: Storage::Owned(param_buffers),
            grads: Storage::Owned(grad_buffers),
            state_names,
            kernel: MatrixPlan::placeholder_kernel(ctx),
            reduction: None,
            variant: variant(1, &GpuOptions::default())?,
            tile_count: tiling.total,
            buffers,
            clip: None,
            norm_seen: false,
            counters: Counters::default(),
            scalar_state,
            inv_scale: 1.0,
            grad_scale: 1.0,
            skip: None,
            skipped_before: 0,
            eval: false,
            views: None,
            groups: None,
            precision: None,
            matrix: Some(plan),
        };
        ctx.scoped("uploading parameters", || {
            opt.write_storage_tensors(&opt.params, params)
        })?;
        Ok(opt)
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
        let width = options.vector_width.unwrap_or(4);
        let state_names = config.state_names_with(momentum_buffer);
        Self::with_layout(
            ctx,
            config,
            momentum_buffer,
            state_names,
            params,
            layout,
            variant(width, &options)?,
            &options,
        )
    }

    /// The optimizer of [`GpuOptimizer::with_state`] on its own packed
    /// buffers, with these state tensors and this kernel variant (several
    /// groups: the union of their state, the grouped kernel, whose bind
    /// groups the caller attaches once the group tables exist).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn with_layout(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        state_names: Vec<&'static str>,
        params: &[&[f32]],
        layout: Layout,
        variant: Variant,
        options: &GpuOptions,
    ) -> Result<Self> {
        let chunks = split_chunks(layout.total() as u64, chunk_elements(ctx, options)?);
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
        let opt = Self::build(
            ctx,
            config,
            momentum_buffer,
            state_names,
            layout,
            chunks,
            tiling,
            params_storage,
            Storage::Owned(grad_buffers),
            variant,
            None,
            None,
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
        if config.is_matrix_rule() {
            return Err(super::kernels::matrix_rule_unsupported(&config));
        }
        if lengths.is_empty() {
            return Err(Error::EmptyParameterList);
        }
        let layout = Layout::new(lengths)?;
        let momentum_buffer = config.builds_momentum_buffer();
        let state_names = config.state_names_with(momentum_buffer);
        Self::caller_buffers(
            ctx,
            config,
            momentum_buffer,
            state_names,
            layout,
            params,
            grads,
            None,
            &options,
        )
    }

    /// The optimizer over the caller's checked buffers of
    /// [`GpuOptimizer::from_buffers_with_options`], with these state
    /// tensors; `grouped`: the grouped kernel's variant (whose bind groups
    /// the caller attaches), `None` for one group's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn caller_buffers(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        state_names: Vec<&'static str>,
        layout: Layout,
        params: wgpu::Buffer,
        grads: wgpu::Buffer,
        grouped: Option<Variant>,
        options: &GpuOptions,
    ) -> Result<Self> {
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
        let chunks = split_chunks(layout.total() as u64, chunk_elements(ctx, options)?);
        let tiling = Tiling::new(&layout, &chunks)?;
        let variant = match grouped {
            Some(v) => v,
            None => {
                // Chunk starts are multiples of 64 elements; only the total
                // decides whether every chunk is a whole number of vec4s.
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
                variant(width, options)?
            }
        };
        Self::build(
            ctx,
            config,
            momentum_buffer,
            state_names,
            layout,
            chunks,
            tiling,
            Storage::Caller(params),
            Storage::Caller(grads),
            variant,
            None,
            None,
        )
    }

    // Each argument is a separate part of the optimizer, made by its
    // constructor (the state set included: `momentum_buffer`; the tiling,
    // its counts checked before any buffer is allocated; the plan of the
    // views, with the views).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        state_names: Vec<&'static str>,
        layout: Layout,
        chunks: Vec<ChunkRange>,
        tiling: Tiling,
        params: Storage,
        grads: Storage,
        variant: Variant,
        views: Option<ViewPlan>,
        state_words: Option<&[u64]>,
    ) -> Result<Self> {
        // LAMB's tile kernels take the same width as the element-wise
        // ones: vec4 accesses wherever a tile covers whole vec4s (every
        // chunk is then bound a whole number of them wide), scalar ones
        // at a tensor's ends.
        let is_lamb = config.kernel().is_tiled();
        let kernel = kernel_for(ctx, &config, momentum_buffer, variant)?;
        let scalar_state = config.scalar_state_initial();
        let rule_stride = match variant.groups {
            0 => UNIFORM_STRIDE,
            n => grouped_stride(ctx, &config, n)?,
        };
        let buffers = OwnedResources::create(
            ctx,
            &config,
            &state_names,
            &chunks,
            &tiling,
            layout.len(),
            rule_stride,
            variant.packed16.is_some_and(|p| p.state_bf16),
            state_words,
        )?;
        let mut opt = GpuOptimizer {
            ctx: ctx.clone(),
            config,
            layout,
            chunks,
            params,
            grads,
            state_names,
            kernel,
            reduction: None,
            variant,
            tile_count: tiling.total,
            buffers,
            clip: None,
            norm_seen: false,
            counters: Counters::default(),
            scalar_state,
            inv_scale: 1.0,
            grad_scale: 1.0,
            skip: None,
            skipped_before: 0,
            eval: false,
            views,
            groups: None,
            precision: None,
            matrix: None,
        };
        if is_lamb {
            // LAMB's own kernels are tile kernels: their bind groups are
            // needed from the first step.
            let kernel = opt.kernel.clone();
            opt.attach_tile_groups(&kernel)?;
        } else if variant.groups == 0 && variant.packed16.is_none() && variant.blockwise.is_none() {
            // A grouped kernel's bind groups need the group tables
            // (GpuOptimizer::with_param_groups makes them), a 16-bit or
            // 8-bit one its buffers (with_precision).
            opt.attach_rule_groups()?;
        }
        Ok(opt)
    }

    /// One step with gradients from the host: uploads them into the
    /// gradient buffer, then [`GpuOptimizer::step_device`]. Checks every
    /// length first: on error nothing changes.
    pub fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.layout.check(grads)?;
        self.check_train_mode()?;
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
        self.check_train_mode()?;
        let ctx = self.ctx.clone();
        self.make_room()?;
        let before = (self.counters, self.scalar_state.clone());
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
                    (self.counters, self.scalar_state) = before;
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
    /// and record again. So does, for NAdam and ASGD, a step after
    /// `betas[0]` (NAdam) or the lr (ASGD) changed among recorded steps
    /// that are not submitted yet: their scalar state needs the outcomes
    /// (see [`GpuOptimizer::set_skip_nonfinite`]). With
    /// [`ClipGradNorm::error_if_nonfinite`] use
    /// [`GpuOptimizer::step_device`], which learns whether the GPU refused
    /// the step; this returns [`Error::InvalidOptions`] then.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        self.check_train_mode()?;
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

    /// Records one step's scalars and dispatches into `encoder` and counts
    /// the step; on error nothing was recorded or counted.
    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
        via: ScalarsVia,
    ) -> Result<()> {
        if let Some(plan) = &self.matrix {
            // Clipping and skipping are refused for the matrix rules
            // (`ensure_reduction`): the step always counts.
            let _ = via;
            plan.record(
                &self.ctx,
                encoder,
                timestamp_writes,
                &self.config,
                MatrixStep {
                    number: self.counters.step + 1,
                    inv_scale: self.inv_scale,
                    clip: self.clip,
                },
            );
            self.norm_seen |= self.clip.is_some();
            self.config
                .advance_scalar_state(&mut self.scalar_state, self.counters.step + 1);
            self.counters.advance(&self.config);
            return Ok(());
        }
        let skip = self.skip.as_ref();
        let host_step = skip.map_or(self.counters.step, |t| t.host_steps_queued);
        let slot = host_step % UNIFORM_RING;
        // Below 2^32: 256 slots of at most a uniform binding (64 KiB by
        // default; grouped_stride checked it).
        let offset = [(slot * UNIFORM_STRIDE) as u32];
        let rule_offset = [(slot * self.buffers.rule_stride) as u32];
        self.write_step_scalars(encoder, slot, host_step, via)?;
        let is_lamb = self.config.kernel().is_tiled();
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("optimizer step"),
                timestamp_writes,
            });
            let tiles = &self.buffers.tile_groups;
            let max_groups = self.ctx.limits().max_compute_workgroups_per_dimension;
            let per_tile = |pass: &mut wgpu::ComputePass<'_>, pipeline: &wgpu::ComputePipeline| {
                dispatch_per_group(pass, pipeline, tiles, &offset)
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
            let reduce = self.reduction.as_ref();
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
                    pass.set_bind_group(0, group, &rule_offset);
                    pass.dispatch_workgroups(*workgroups, 1, 1);
                }
            }
        }
        self.norm_seen |= self.clip.is_some();
        match self.skip.as_mut() {
            Some(t) => {
                t.host_steps_queued += 1;
                t.window.push_back(self.config.clone());
                // An upper bound until the outcome is read back.
                self.counters.step = t.applied_known + t.outcomes_unknown();
            }
            None => {
                let step = self.counters.step + 1;
                self.config
                    .advance_scalar_state(&mut self.scalar_state, step);
                match &mut self.groups {
                    Some(groups) => {
                        for g in 0..groups.groups.len() {
                            let config = &groups.groups[g].config;
                            let own = step - groups.behind[g];
                            config.advance_scalar_state(&mut groups.scalar_state[g], own);
                            groups.filled[g] |= config.fills_buffer_on_first_use();
                        }
                        let fills = groups
                            .groups
                            .iter()
                            .find(|g| g.config.fills_buffer_on_first_use());
                        self.counters
                            .advance(fills.map_or(&self.config, |g| &g.config));
                    }
                    None => self.counters.advance(&self.config),
                }
            }
        }
        Ok(())
    }

    /// Dispatches one step records: one per chunk (1 unless the model is
    /// larger than one storage binding), whatever the number of tensors;
    /// with clipping one more per chunk and one to finish the norm; LAMB
    /// two per chunk and one for the trust ratios.
    /// On views ([`GpuOptimizer::from_views`]) read "group" for "chunk": a
    /// group is one (parameter window, gradient window, state chunk) that
    /// tensors share, so one per distinct (parameter buffer, gradient
    /// buffer) pair unless a buffer or the state is larger than a binding.
    pub fn dispatches_per_step(&self) -> usize {
        if let Some(plan) = &self.matrix {
            return plan.dispatches(&self.config, self.clip.is_some());
        }
        let chunks = match &self.views {
            Some(plan) => plan.groups.len(),
            None => self.chunks.len(),
        };
        if chunks == 0 {
            return 0;
        }
        let clip = if self.clip.is_some() || self.skip.is_some() {
            chunks + 1
        } else {
            0
        };
        let rule = if self.config.kernel().is_tiled() {
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
            if self.matrix.is_some() {
                matrix_clip_supported(&self.config, c)?;
            } else {
                self.ensure_reduction()?;
            }
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
        if let Some(plan) = &self.matrix {
            return plan.last_clip_norm(&self.ctx).map(Some);
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
    /// With bf16 parameters ([`GpuOptimizer::with_precision`]) the master
    /// weights take them as given, the parameters rounded.
    pub fn write_params(&mut self, params: &[&[f32]]) -> Result<()> {
        self.layout.check(params)?;
        self.check_host_writable(&self.params, "parameter")?;
        let ctx = self.ctx.clone();
        if self.model16().is_some() {
            let flat: Vec<f32> = params.iter().flat_map(|t| t.iter().copied()).collect();
            ctx.scoped("uploading parameters", || self.write_params16(&flat))?;
            return Ok(());
        }
        ctx.scoped("uploading parameters", || {
            self.write_storage_tensors(&self.params, params)
        })
    }

    /// Replaces the state tensor `name` (one slice per parameter tensor)
    /// with these values: how a checkpoint, or state from elsewhere,
    /// reaches the GPU. Checks the name and every length first: on error
    /// nothing changes.
    pub fn write_state(&mut self, name: &str, tensors: &[&[f32]]) -> Result<()> {
        let i = state_index(&self.config, &self.state_names, name)?;
        if let Some(plan) = &self.matrix {
            plan.state_layout(i).check(tensors)?;
            let ctx = self.ctx.clone();
            return ctx.scoped("writing a state tensor", || {
                plan.write_state(&self.ctx, i, tensors)
            });
        }
        self.layout.check(tensors)?;
        if self.blocks().is_some() {
            let flat: Vec<f32> = tensors.iter().flat_map(|t| t.iter().copied()).collect();
            let ctx = self.ctx.clone();
            return ctx.scoped("writing a state tensor", || {
                self.write_blockwise_state(i, &flat, |_| None)
            });
        }
        if self.state_is_bf16() {
            let flat: Vec<f32> = tensors.iter().flat_map(|t| t.iter().copied()).collect();
            let ctx = self.ctx.clone();
            return ctx.scoped("writing a state tensor", || {
                self.write_words(&self.buffers.state[i], &flat, false)
            });
        }
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
        let readable = self
            .params
            .buffers()
            .iter()
            .all(|b| b.usage().contains(wgpu::BufferUsages::COPY_SRC));
        let mut params = if readable {
            Some(self.read_params_flat()?)
        } else {
            None
        };
        let mut state = Vec::with_capacity(self.state_names.len());
        let mut quantized = Vec::new();
        if self.blocks().is_some() {
            // The codes and absmax are the state; `state` their values.
            let (values, q) = self.quantized_state()?;
            for (name, v) in self.state_names.iter().zip(values) {
                state.push((name.to_string(), v));
            }
            quantized = q;
        } else {
            for name in &self.state_names {
                state.push((name.to_string(), self.read_state_flat(name)?));
            }
        }
        let exact = self.exact_counts()?;
        // A checkpoint holds train mode's parameters (`y`).
        if let (true, Some(p)) = (
            self.eval && crate::cpu::z_exists(&exact.scalar_state),
            params.as_mut(),
        ) {
            let beta1 = crate::cpu::eval_beta1(&self.config)?;
            let z = state_index(&self.config, &self.state_names, "z")?;
            crate::rules::schedulefree::switch_mode(
                p,
                &state[z].1,
                crate::rules::schedulefree::mode_switch_weight(beta1, false),
            );
        }
        let scalar_state = scalar_state_of(&self.config, exact.step, &exact.scalar_state)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        let (groups, group_state) = match &self.groups {
            None => (Vec::new(), Vec::new()),
            Some(groups) => {
                // A group without a state keeps nothing there.
                for (name, values) in &mut state {
                    for (g, group) in groups.groups.iter().enumerate() {
                        if !groups.state_names(g).contains(&name.as_str()) {
                            for &t in &group.params {
                                values[self.layout.range(t)].fill(0.0);
                            }
                        }
                    }
                }
                let counters = Counters {
                    step: exact.step,
                    buffer_filled: exact.buffer_filled,
                };
                let group_state = (0..groups.groups.len())
                    .map(|g| (g, groups.counters(g, counters, self.skip.is_some())))
                    .map(|(g, own)| GroupState {
                        step: own.step,
                        buffer_filled: own.buffer_filled,
                        scalar_state: scalar_state_of(
                            &groups.groups[g].config,
                            own.step,
                            &groups.scalar_state[g],
                        )
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect(),
                        state_names: groups
                            .state_names(g)
                            .iter()
                            .map(|n| n.to_string())
                            .collect(),
                    })
                    .collect();
                (groups.groups.clone(), group_state)
            }
        };
        Ok(Checkpoint {
            config: self.config.clone(),
            lengths: self.layout.lengths().to_vec(),
            shapes: self
                .layout
                .shapes()
                .map(<[Shape]>::to_vec)
                .unwrap_or_default(),
            step: exact.step,
            buffer_filled: group_state
                .first()
                .map_or(exact.buffer_filled, |g: &GroupState| g.buffer_filled),
            state,
            scalar_state,
            params,
            clip: self.clip,
            skip_nonfinite: self.skip.is_some(),
            skipped_steps: exact.skipped,
            grad_scale: self.grad_scale,
            scheduler: None,
            groups,
            group_state,
            precision: self.precision(),
            master_params: self.master_params()?,
            quantized,
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
        if !ckpt.precision.is_f32() && ckpt.groups.is_empty() {
            let start = ckpt.master_params.as_ref().unwrap_or(flat);
            let mut opt = Self::with_precision_options(
                ctx,
                ckpt.config.clone(),
                &layout.split(start)?,
                ckpt.precision,
                options,
            )?;
            opt.load_checkpoint(ckpt)?;
            return Ok(opt);
        }
        if !ckpt.groups.is_empty() {
            let mut opt =
                Self::with_param_groups(ctx, &layout.split(flat)?, &ckpt.groups, options)?;
            opt.load_checkpoint(ckpt)?;
            return Ok(opt);
        }
        let mut opt = if ckpt.shapes.is_empty() && !ckpt.config.is_matrix_rule() {
            Self::with_state(
                ctx,
                ckpt.config.clone(),
                ckpt.momentum_buffer(),
                &layout.split(flat)?,
                options,
            )?
        } else if ckpt.shapes.is_empty() {
            // A matrix rule's checkpoint without shapes: vectors only.
            check_matrix_options(&ckpt.config, &options)?;
            ckpt.config.check_shapes(&layout)?;
            Self::build_matrix(
                ctx,
                ckpt.config.clone(),
                ckpt.momentum_buffer(),
                layout.clone(),
                &layout.split(flat)?,
            )?
        } else {
            Self::with_state_shaped(
                ctx,
                ckpt.config.clone(),
                ckpt.momentum_buffer(),
                &layout.split(flat)?,
                &ckpt.shapes,
                options,
            )?
        };
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
        // A checkpoint of another precision is a mismatch (its values would
        // be widened or rounded).
        if self.groups.is_some() || !ckpt.groups.is_empty() {
            self.check_fits_groups(ckpt)?;
        } else {
            ckpt.check_fits(
                &self.config,
                &self.state_names,
                self.layout.lengths(),
                &self.precision(),
            )?;
        }
        ckpt.check_shapes_fit(&self.layout)?;
        if ckpt.params.is_some() {
            self.check_host_writable(&self.params, "parameter")?;
        }
        if ckpt.skip_nonfinite && self.precision().stochastic_rounding() {
            return Err(Error::Unsupported(
                "skip_nonfinite with stochastic rounding on the GPU".into(),
            ));
        }
        let inv_scale = crate::rules::inverse_grad_scale(ckpt.grad_scale)?;
        match (&self.matrix, ckpt.clip) {
            (Some(_), Some(c)) if !ckpt.skip_nonfinite => matrix_clip_supported(&self.config, c)?,
            _ if ckpt.clip.is_some() || ckpt.skip_nonfinite => self.ensure_reduction()?,
            _ => {}
        }
        let ctx = self.ctx.clone();
        let bf16_state = self.state_is_bf16();
        ctx.scoped("restoring a checkpoint", || {
            for (i, (_, values)) in ckpt.state.iter().enumerate() {
                if let Some(plan) = &self.matrix {
                    // Lengths validated above (check_fits, check_shapes_fit).
                    let tensors = plan.state_layout(i).split_unchecked(values);
                    plan.write_state(&self.ctx, i, &tensors);
                    continue;
                }
                if self.blocks().is_some() {
                    // The 8-bit tensors from their own codes and absmax
                    // (validate checked them against `values`).
                    let name = self.state_names[i];
                    self.write_blockwise_state(i, values, |t| {
                        ckpt.quantized
                            .iter()
                            .find(|q| q.tensor == t && q.state == name)
                            .map(|q| (q.codes.as_slice(), q.absmax.as_slice()))
                    });
                    continue;
                }
                // Lengths validated above; bf16 values (validate) pack
                // exactly.
                if bf16_state {
                    self.write_words(&self.buffers.state[i], values, false);
                    continue;
                }
                let storage = Storage::Owned(self.buffers.state[i].clone());
                self.write_storage_tensors(&storage, &self.layout.split_unchecked(values));
            }
            match (&ckpt.params, self.model16()) {
                (Some(p), Some(model)) => {
                    self.write_words(model, p, self.params_f16());
                    if let Some(master) = &ckpt.master_params {
                        self.write_storage_tensors(
                            &self.params,
                            &self.layout.split_unchecked(master),
                        );
                    }
                }
                (Some(p), None) => {
                    self.write_storage_tensors(&self.params, &self.layout.split_unchecked(p))
                }
                (None, _) => {}
            }
        })?;
        self.config = ckpt.config.clone();
        self.counters = Counters {
            step: ckpt.step,
            buffer_filled: ckpt.buffer_filled,
        };
        let values = |s: &[(String, f64)]| s.iter().map(|(_, v)| *v).collect();
        self.scalar_state = values(&ckpt.scalar_state);
        if let Some(groups) = &mut self.groups {
            for (g, (saved, counters)) in ckpt.groups.iter().zip(&ckpt.group_state).enumerate() {
                groups.groups[g].config = saved.config.clone();
                groups.scalar_state[g] = values(&counters.scalar_state);
                // At most the optimizer's count (check_fits_groups).
                groups.behind[g] = ckpt.step - counters.step;
                groups.filled[g] = counters.buffer_filled;
            }
        }
        self.clip = ckpt.clip;
        self.norm_seen = false;
        self.inv_scale = inv_scale;
        self.grad_scale = ckpt.grad_scale;
        self.skip = None;
        self.skipped_before = ckpt.skipped_steps;
        self.eval = false;
        if ckpt.skip_nonfinite {
            self.start_skipping()?;
        }
        Ok(())
    }

    /// Checks a checkpoint of several groups, or one into an optimizer of
    /// several, as the CPU optimizer does. A group ahead of group 0 (whose
    /// count is the optimizer's) is [`Error::Unsupported`], as is
    /// `skip_nonfinite` with a group behind it.
    fn check_fits_groups(&self, ckpt: &Checkpoint) -> Result<()> {
        let groups = self.groups();
        let names: Vec<Vec<&'static str>> = (0..groups.len())
            .map(|g| match &self.groups {
                Some(own) => own.state_names(g),
                None => self.state_names.clone(),
            })
            .collect();
        let fits: Vec<GroupFit<'_>> = groups
            .iter()
            .zip(&names)
            .map(|(group, names)| GroupFit {
                group,
                state_names: names.clone(),
            })
            .collect();
        ckpt.check_fits_groups(
            &fits,
            &self.state_names,
            self.layout.lengths(),
            &Default::default(),
        )?;
        // Group 0's count is the optimizer's; a group added later is
        // behind it, never ahead.
        if ckpt.group_state.iter().any(|s| s.step > ckpt.step) {
            return Err(Error::Unsupported(
                "a checkpoint of a parameter group ahead of group 0's step count on the GPU \
                 (group 0's count is the optimizer's)"
                    .into(),
            ));
        }
        if ckpt.skip_nonfinite {
            if ckpt.group_state.iter().any(|s| s.step != ckpt.step) {
                return self.check_one_group(
                    "skip_nonfinite with a group added later (the GPU counts one step for all)",
                );
            }
            self.check_skip_groups()?;
        }
        Ok(())
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

    /// Reads the parameters back, packed.
    /// With bf16 parameters: the model's, widened to f32.
    pub fn read_params_flat(&self) -> Result<Vec<f32>> {
        match self.model16() {
            Some(model) => self.read_words(model, self.params_f16()),
            None => self.read_storage(&self.params),
        }
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
    /// bf16 state widened to f32.
    pub fn read_state_flat(&self, name: &str) -> Result<Vec<f32>> {
        let i = state_index(&self.config, &self.state_names, name)?;
        if let Some(plan) = &self.matrix {
            return plan.read_state(&self.ctx, i);
        }
        if self.blocks().is_some() {
            return Ok(self.read_blockwise_state(i)?.0);
        }
        if self.state_is_bf16() {
            return self.read_words(&self.buffers.state[i], false);
        }
        self.read_storage(&Storage::Owned(self.buffers.state[i].clone()))
    }

    /// Reads the state tensor `name` back, one vector per tensor (as long
    /// as its parameter tensor, but for Adafactor's factored statistics, as
    /// [`crate::CpuOptimizer::state`] has them).
    pub fn read_state(&self, name: &str) -> Result<Vec<Vec<f32>>> {
        let flat = self.read_state_flat(name)?;
        let layout = match &self.matrix {
            Some(plan) => plan.state_layout(state_index(&self.config, &self.state_names, name)?),
            None => &self.layout,
        };
        Ok(layout
            .split_unchecked(&flat)
            .into_iter()
            .map(|s| s.to_vec())
            .collect())
    }

    /// Names of the state tensors, as PyTorch names them.
    pub fn state_names(&self) -> &[&'static str] {
        &self.state_names
    }

    /// The rule's scalar state ([`Config::scalar_state_names`]: NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`), kept on the host, as
    /// [`crate::CpuOptimizer::scalar_state`] gives it. With
    /// [`GpuOptimizer::set_skip_nonfinite`] it depends on which queued
    /// steps were applied: this reads the GPU's counters back (waits).
    pub fn scalar_state(&self) -> Result<Vec<(&'static str, f64)>> {
        let exact = self.exact_counts()?;
        Ok(scalar_state_of(
            &self.config,
            exact.step,
            &exact.scalar_state,
        ))
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
    /// With several groups it sets every group's; on error no group
    /// changes.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.set_groups(None, |c, _| c.set_lr(lr))
    }

    /// Sets the momentum (SGD, RMSprop) or `beta1` (Adam, AdamW, NAdam,
    /// LAMB) used from the next step on.
    /// With several groups it sets every group's; on error no group
    /// changes.
    pub fn set_momentum(&mut self, momentum: f64) -> Result<()> {
        self.set_groups(None, |c, has_buffer| c.set_momentum(momentum, has_buffer))
    }

    /// The context this optimizer runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The parameter buffers: one per chunk for buffers the optimizer
    /// made (for the matrix rules, Adafactor and Muon, one per non-empty
    /// tensor, in tensor order, each holding its tensor from byte 0), or
    /// the caller's own (on views, each distinct buffer once, in the order
    /// of the views that first name them).
    pub fn param_buffers(&self) -> Vec<&wgpu::Buffer> {
        match (&self.views, &self.params) {
            (Some(plan), _) => plan.param_buffers().iter().collect(),
            (None, Storage::Owned(b)) => b.iter().collect(),
            (None, Storage::Caller(b)) => vec![b],
            (None, Storage::Views(v)) => v.iter().map(|v| &v.buffer).collect(),
        }
    }

    /// The gradient buffers, as [`GpuOptimizer::param_buffers`].
    pub fn grad_buffers(&self) -> Vec<&wgpu::Buffer> {
        match (&self.views, &self.grads) {
            (Some(plan), _) => plan.grad_buffers().iter().collect(),
            (None, Storage::Owned(b)) => b.iter().collect(),
            (None, Storage::Caller(b)) => vec![b],
            (None, Storage::Views(v)) => v.iter().map(|v| &v.buffer).collect(),
        }
    }
}

/// `pipeline` over each of `groups` (a bind group and its workgroups),
/// with the uniform slot at `offset`: a tile kernel's dispatches of a step.
pub(super) fn dispatch_per_group(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    groups: &[(wgpu::BindGroup, u32)],
    offset: &[u32],
) {
    pass.set_pipeline(pipeline);
    for (group, workgroups) in groups {
        pass.set_bind_group(0, group, offset);
        pass.dispatch_workgroups(*workgroups, 1, 1);
    }
}

/// The matrix rules take no [`GpuOptions`] (each tensor is a buffer of its
/// own, read in f32 scalars, with bounds checks): a non-default one is
/// refused rather than ignored.
fn check_matrix_options(config: &Config, options: &GpuOptions) -> Result<()> {
    if options.max_chunk_elements.is_some()
        || options.vector_width.is_some()
        || options.skip_bounds_checks
    {
        return Err(Error::Unsupported(format!(
            "GpuOptions (max_chunk_elements, vector_width, skip_bounds_checks) for {}",
            config.kind()
        )));
    }
    Ok(())
}

/// The matrix rules clip on the GPU (their own tiles of the norm, in the
/// step's pass) but cannot refuse a step there: `error_if_nonfinite` is
/// [`Error::Unsupported`].
fn matrix_clip_supported(config: &Config, clip: ClipGradNorm) -> Result<()> {
    if clip.error_if_nonfinite {
        return Err(Error::Unsupported(format!(
            "ClipGradNorm::error_if_nonfinite for {} on the GPU",
            config.kind()
        )));
    }
    Ok(())
}
