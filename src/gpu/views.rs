//! Tensor views: a GPU optimizer over parameters and gradients that live at
//! any 4-byte offset in any number of the caller's buffers (a framework's
//! memory pool), with its state its own, packed.
//!
//! The parameters' buffers (and the gradients') are bound whole, or in
//! windows of one chunk's size when a buffer is larger than a binding may
//! be; each dispatch binds one parameter window, one gradient window and
//! one chunk of the state, and reads the offsets of each piece of tensor
//! they share from a tile table (`shaders/views.wgsl`). Dispatches grow
//! with the number of distinct (parameter buffer, gradient buffer) pairs,
//! not with the number of tensors.

use std::collections::HashMap;
use std::num::NonZeroU64;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::groups::{check_groups, ParamGroup};
use crate::layout::Layout;
use crate::rules::Config;

use super::chunks::{check_size, chunk_elements, split_chunks, ChunkRange, Tiling};
use super::groups::{group_of, GroupPlan};
use super::kernels::{pick_width, variant, Kernel, Variant, VIEW_TILE_LEN_BITS};
use super::optimizer::{GpuOptimizer, GpuOptions};
use super::resources::Storage;

/// One tensor of `f32` inside a buffer of the caller's: `len` elements from
/// byte `offset` of `buffer`, as a framework's memory pool places them
/// (burn's wgpu backend aligns its tensors to 256 bytes; any multiple of 4
/// bytes is taken). See [`GpuOptimizer::from_views`].
#[derive(Clone, Debug)]
pub struct TensorView {
    /// The buffer holding the tensor (`STORAGE` usage at least).
    pub buffer: wgpu::Buffer,
    /// Where the tensor starts, in bytes: a multiple of 4.
    pub offset: u64,
    /// Its length, in `f32` elements.
    pub len: usize,
}

impl TensorView {
    /// The view of `len` elements from byte `offset` of `buffer`.
    pub fn new(buffer: wgpu::Buffer, offset: u64, len: usize) -> Self {
        TensorView {
            buffer,
            offset,
            len,
        }
    }

    /// Where the view ends, in bytes, or `None` past `u64::MAX`.
    fn end(&self) -> Option<u64> {
        u64::try_from(self.len)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(self.offset))
    }
}

/// Elements per tile of a view kernel's table, as the packed tiles of the
/// reductions (chunks.rs): so that without windowing the reduction sums the
/// same tiles in the same order as on the packed path.
const TILE: u64 = 4096;

/// What the view kernels need for `vec4` loads.
const VIEWS_NEED: &str = "on views needs every view to start at a multiple of 16 bytes and hold \
                          a multiple of 4 elements";

/// Whether every view starts at a multiple of 16 bytes and holds a
/// multiple of 4 elements: then every tile's offsets and length are
/// multiples of 4 too (windows, chunks and [`TILE`] are), and the view
/// kernel may load `vec4<f32>`s.
fn vec4_aligned(params: &[TensorView], grads: &[TensorView]) -> bool {
    params
        .iter()
        .chain(grads)
        .all(|v| v.offset.is_multiple_of(16) && v.len.is_multiple_of(4))
}

/// One dispatch of a view kernel: the windows it binds and its tiles.
pub(super) struct ViewGroup {
    /// (index into `ViewPlan::param_buffers`, window).
    param: (usize, u64),
    /// (index into `ViewPlan::grad_buffers`, window).
    grad: (usize, u64),
    /// The state chunk.
    chunk: usize,
    /// `view_tiles` of views.wgsl.
    rule_table: wgpu::Buffer,
    /// The tile kernels' `tables` (tiles.wgsl): header, then (offset in the
    /// gradient window, length, tensor, global tile number).
    reduce_table: wgpu::Buffer,
    tiles: u32,
}

/// How views are bound: the distinct buffers and the dispatches.
pub(super) struct ViewPlan {
    param_buffers: Vec<wgpu::Buffer>,
    grad_buffers: Vec<wgpu::Buffer>,
    /// Elements of a window (one chunk's size).
    window: u64,
    /// Elements a kernel invocation loads at once (1 or 4): the rule
    /// table counts in these units.
    width: u32,
    pub(super) groups: Vec<ViewGroup>,
    /// Tiles over all groups.
    pub(super) tiles: usize,
}

/// A group's tiles before the buffers are made.
struct GroupTiles {
    key: (usize, u64, usize, u64, usize),
    rule: Vec<[u32; 4]>,
    reduce: Vec<[u32; 4]>,
}

/// Index of `buffer` in `distinct`, added when new.
fn buffer_index(distinct: &mut Vec<wgpu::Buffer>, buffer: &wgpu::Buffer) -> usize {
    match distinct.iter().position(|b| b == buffer) {
        Some(i) => i,
        None => {
            distinct.push(buffer.clone());
            distinct.len() - 1
        }
    }
}

/// Every check of [`GpuOptimizer::from_views`] on the views themselves, in
/// the order the docs give.
fn check_views(params: &[TensorView], grads: &[TensorView]) -> Result<()> {
    if params.is_empty() {
        return Err(Error::EmptyParameterList);
    }
    if grads.len() != params.len() {
        return Err(Error::TensorCountMismatch {
            expected: params.len(),
            got: grads.len(),
        });
    }
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        if g.len != p.len {
            return Err(Error::LengthMismatch {
                tensor: i,
                expected: p.len,
                got: g.len,
            });
        }
    }
    let all = || {
        params
            .iter()
            .enumerate()
            .map(|(i, v)| ("parameter", i, v))
            .chain(grads.iter().enumerate().map(|(i, v)| ("gradient", i, v)))
    };
    for (what, tensor, v) in all() {
        if !v.offset.is_multiple_of(4) {
            return Err(Error::Misaligned {
                what,
                tensor,
                offset: v.offset,
            });
        }
        let size = v.buffer.size();
        match v.end() {
            Some(end) if end <= size => {}
            end => {
                return Err(Error::ViewOutOfBounds {
                    what,
                    tensor,
                    end: end.unwrap_or(u64::MAX),
                    size,
                })
            }
        }
        if !v.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::BufferUsage {
                what,
                missing: "STORAGE".into(),
                has: format!("{:?}", v.buffer.usage()),
            });
        }
    }
    // Overlaps: the non-empty views of each buffer sorted by start; one
    // overlaps another exactly when it starts before the furthest end of
    // those sorted before it.
    let mut distinct = Vec::new();
    let mut spans: Vec<(usize, u64, u64, &'static str, usize)> = all()
        .filter(|(_, _, v)| v.len > 0)
        .map(|(what, i, v)| {
            let b = buffer_index(&mut distinct, &v.buffer);
            // In bounds, so no overflow (checked above).
            (b, v.offset, v.end().unwrap_or(u64::MAX), what, i)
        })
        .collect();
    spans.sort_by_key(|s| (s.0, s.1));
    for pair in spans.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // Sorted by start within a buffer, and no two earlier views
        // overlap, so the previous view has the furthest end.
        if a.0 == b.0 && b.1 < a.2 {
            return Err(Error::ViewOverlap {
                first: a.3,
                first_tensor: a.4,
                second: b.3,
                second_tensor: b.4,
            });
        }
    }
    for (i, g) in grads.iter().enumerate() {
        if params.iter().any(|p| p.buffer == g.buffer) {
            return Err(Error::Unsupported(format!(
                "gradient view {i} is in a buffer that holds parameters: wgpu refuses a buffer \
                 bound read-write and read-only in one dispatch; keep parameters and gradients \
                 in separate buffers"
            )));
        }
    }
    Ok(())
}

impl ViewPlan {
    /// Cuts every tensor into tiles that stay within one parameter window,
    /// one gradient window, one state chunk and one run of [`TILE`]
    /// elements from a multiple of [`TILE`] in the chunk, numbered
    /// in tensor order, and groups them by the windows and chunk they bind;
    /// then makes each group's tables. The views are checked; with `width`
    /// 4 they are [`vec4_aligned`]. `group_of`: each tensor's parameter
    /// group, carried in its tiles' last word above the length (the
    /// grouped view kernel), fewer than 2^16 groups.
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &GpuContext,
        layout: &Layout,
        params: &[TensorView],
        grads: &[TensorView],
        chunks: &[ChunkRange],
        window: u64,
        width: u32,
        group_of: Option<&[u32]>,
    ) -> Result<Self> {
        let mut param_buffers = Vec::new();
        let mut grad_buffers = Vec::new();
        let mut groups: Vec<GroupTiles> = Vec::new();
        let mut index: HashMap<(usize, u64, usize, u64, usize), usize> = HashMap::new();
        let mut total: u64 = 0;
        for (t, (p, g)) in params.iter().zip(grads).enumerate() {
            let pb = buffer_index(&mut param_buffers, &p.buffer);
            let gb = buffer_index(&mut grad_buffers, &g.buffer);
            let tensor = u32::try_from(t).map_err(|_| too_many("the number of tensors", t))?;
            let (p0, g0) = (p.offset / 4, g.offset / 4);
            let flat = layout.offsets()[t] as u64;
            let len = p.len as u64;
            let mut k = 0;
            while k < len {
                let at = flat + k;
                let ci = chunks.partition_point(|c| c.start + c.len <= at);
                let c = &chunks[ci];
                let (pe, ge) = (p0 + k, g0 + k);
                let (pw, gw) = (pe / window, ge / window);
                // Tiles end where the packed path's do (at the chunk's
                // multiples of TILE, src/gpu/chunks.rs), so clipping sums
                // the same partials in the same order.
                let next_boundary = ((at - c.start) / TILE + 1) * TILE + c.start;
                let take = (len - k)
                    .min(next_boundary - at)
                    .min(c.start + c.len - at)
                    .min((pw + 1) * window - pe)
                    .min((gw + 1) * window - ge);
                let key = (pb, pw, gb, gw, ci);
                let gi = *index.entry(key).or_insert_with(|| {
                    groups.push(GroupTiles {
                        key,
                        rule: Vec::new(),
                        reduce: Vec::new(),
                    });
                    groups.len() - 1
                });
                let number =
                    u32::try_from(total).map_err(|_| too_many("the number of tiles", t))?;
                // Offsets within a window or chunk (at most 2^30 elements)
                // and a tile's length fit u32.
                let (po, go, so) = (
                    (pe - pw * window) as u32,
                    (ge - gw * window) as u32,
                    (at - c.start) as u32,
                );
                // With width 4 all four are multiples of 4 (vec4_aligned).
                let w = width;
                // A tile is at most TILE elements: its length fits below
                // the group's bits.
                let last = match group_of {
                    Some(g) => (take as u32 / w) | (g[t] << VIEW_TILE_LEN_BITS),
                    None => take as u32 / w,
                };
                groups[gi].rule.push([po / w, go / w, so / w, last]);
                groups[gi].reduce.push([go, take as u32, tensor, number]);
                total += 1;
                k += take;
            }
        }
        let limits = ctx.limits();
        for g in &groups {
            check_size(
                &limits,
                "view tile table",
                (g.rule.len() as u64 + 1) * 16,
                false,
            )?;
        }
        let groups = ctx.scoped("creating the view tile tables", || {
            let make = |label: &str, table: &[[u32; 4]]| {
                let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: table.len() as u64 * 16,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(table));
                b
            };
            groups
                .into_iter()
                .map(|g| {
                    let tiles = g.rule.len() as u32;
                    let mut reduce = Vec::with_capacity(g.reduce.len() + 1);
                    // tiles.wgsl's header: the tiles start at entry 1 (no
                    // tensor spans: LAMB is refused on views).
                    reduce.push([1, tiles, 0, 0]);
                    reduce.extend(g.reduce);
                    ViewGroup {
                        param: (g.key.0, g.key.1),
                        grad: (g.key.2, g.key.3),
                        chunk: g.key.4,
                        rule_table: make("view tiles", &g.rule),
                        reduce_table: make("view reduction tiles", &reduce),
                        tiles,
                    }
                })
                .collect()
        })?;
        Ok(ViewPlan {
            param_buffers,
            grad_buffers,
            window,
            width,
            groups,
            tiles: total as usize,
        })
    }

    /// The binding of window `w` of `buffer`: one chunk's bytes, or what is
    /// left of the buffer, rounded down to whole `V`s (every view ends at
    /// one: at a multiple of 4 bytes, of 16 with width 4).
    fn window_binding<'a>(&self, buffer: &'a wgpu::Buffer, w: u64) -> wgpu::BufferBinding<'a> {
        let bytes = self.window * 4;
        let offset = w * bytes;
        let unit = 4 * self.width as u64;
        let size = (buffer.size() / unit * unit - offset).min(bytes);
        wgpu::BufferBinding {
            buffer,
            offset,
            size: NonZeroU64::new(size),
        }
    }

    /// The distinct parameter buffers.
    pub(super) fn param_buffers(&self) -> &[wgpu::Buffer] {
        &self.param_buffers
    }

    /// The distinct gradient buffers.
    pub(super) fn grad_buffers(&self) -> &[wgpu::Buffer] {
        &self.grad_buffers
    }
}

fn too_many(what: &'static str, tensor: usize) -> Error {
    Error::SizeOverflow {
        what,
        ty: "u32",
        detail: format!("at tensor {tensor}; the kernels index it in 32 bits"),
    }
}

impl GpuOptimizer {
    /// An optimizer over tensors that live in the caller's buffers, where
    /// a framework put them: parameter `i` is `params[i]` and its gradient
    /// `grads[i]`, a view of the same length, each in any buffer at any
    /// byte offset that is a multiple of 4. The state is the optimizer's
    /// own (packed, as [`GpuOptimizer::from_buffers`] keeps it), and every
    /// call works as there, reading and writing through the views:
    /// [`GpuOptimizer::step`] (needs `COPY_DST` on the gradients'
    /// buffers), `step_device`, `record_step`, `read_params` (`COPY_SRC`
    /// on the parameters'), `write_grads`, checkpoints, clipping,
    /// `skip_nonfinite`, the setters.
    ///
    /// A step binds whole buffers (or windows of one binding's size of a
    /// larger buffer) and reads each tensor's offsets from a table: its
    /// dispatches grow with the number of distinct (parameter buffer,
    /// gradient buffer) pairs, not with the number of tensors
    /// ([`GpuOptimizer::dispatches_per_step`]). The kernels load
    /// `vec4<f32>`s when every view starts at a multiple of 16 bytes and
    /// holds a multiple of 4 elements (burn's 256-byte alignment, lengths
    /// in fours), scalars otherwise; [`GpuOptions::vector_width`] 4 asks
    /// for the former, [`Error::InvalidOptions`] when the views do not
    /// allow it.
    ///
    /// Checked in this order, before anything is made:
    /// [`Error::EmptyParameterList`], [`Error::TensorCountMismatch`] and
    /// [`Error::LengthMismatch`] (a gradient view of another length);
    /// then for each view [`Error::Misaligned`] (an offset not a multiple
    /// of 4), [`Error::ViewOutOfBounds`] (past its buffer's end),
    /// [`Error::BufferUsage`] (no `STORAGE`); [`Error::ViewOverlap`] (two
    /// views sharing bytes: parameters, gradients, or one of each).
    ///
    /// Not supported, [`Error::Unsupported`]: a gradient in a buffer that
    /// also holds parameters (wgpu refuses a buffer bound read-write and
    /// read-only in one dispatch: keep them in separate buffers), LAMB
    /// (its tile kernels index parameters and state alike), and the
    /// schedule-free eval mode ([`GpuOptimizer::set_eval`]).
    /// [`GpuOptions::skip_bounds_checks`] is ignored: the view kernels
    /// index with offsets from a table, so their bounds checks stay on.
    ///
    /// ```no_run
    /// use wgpu_optim::{AdamW, GpuContext, GpuOptimizer, TensorView};
    /// let ctx = GpuContext::new()?;
    /// let usage = wgpu::BufferUsages::STORAGE
    ///     | wgpu::BufferUsages::COPY_DST
    ///     | wgpu::BufferUsages::COPY_SRC;
    /// let pool = |label| {
    ///     ctx.device().create_buffer(&wgpu::BufferDescriptor {
    ///         label: Some(label),
    ///         size: 1 << 20,
    ///         usage,
    ///         mapped_at_creation: false,
    ///     })
    /// };
    /// let (weights, grads) = (pool("weights"), pool("grads"));
    /// // Two tensors at 256-byte-aligned offsets of each pool.
    /// let params = vec![
    ///     TensorView::new(weights.clone(), 0, 1000),
    ///     TensorView::new(weights.clone(), 4096, 300),
    /// ];
    /// let grad_views = vec![
    ///     TensorView::new(grads.clone(), 256, 1000),
    ///     TensorView::new(grads.clone(), 8192, 300),
    /// ];
    /// let mut opt = GpuOptimizer::from_views(&ctx, AdamW::default(), params, grad_views)?;
    /// opt.step_device()?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn from_views(
        ctx: &GpuContext,
        config: impl Into<Config>,
        params: Vec<TensorView>,
        grads: Vec<TensorView>,
    ) -> Result<Self> {
        Self::from_views_with_options(ctx, config, params, grads, GpuOptions::default())
    }

    /// As [`GpuOptimizer::from_views`], with [`GpuOptions`]:
    /// `max_chunk_elements` sets the windows and the state's chunks too.
    pub fn from_views_with_options(
        ctx: &GpuContext,
        config: impl Into<Config>,
        params: Vec<TensorView>,
        grads: Vec<TensorView>,
        options: GpuOptions,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        check_views(&params, &grads)?;
        if config.kernel().is_tiled() {
            return Err(Error::Unsupported(format!(
                "{} on tensor views (its tile kernels index the parameters and the state alike)",
                config.kind().name()
            )));
        }
        let aligned = vec4_aligned(&params, &grads);
        let width = pick_width(options.vector_width, aligned, VIEWS_NEED)?;
        // Checks the width (1 or 4) before anything is made.
        let variant = variant(width, &options)?;
        let momentum_buffer = config.builds_momentum_buffer();
        let state_names = config.state_names_with(momentum_buffer);
        Self::over_views(
            ctx,
            config,
            momentum_buffer,
            state_names,
            params,
            grads,
            &options,
            variant,
            None,
        )
    }

    /// An optimizer over tensor views in parameter groups: as
    /// [`GpuOptimizer::from_views`] for the views (the same checks, the
    /// same errors, first), and as [`GpuOptimizer::with_param_groups`] for
    /// the groups (`groups[g].params` index `params`; the same checks and
    /// refusals after the views'). Every group steps in the same dispatches:
    /// each piece of tensor in a view tile table carries its group, and the
    /// uniforms hold each group's scalars. One group is
    /// [`GpuOptimizer::from_views_with_options`] with its configuration.
    /// [`GpuOptimizer::add_param_group`] is refused (views cannot grow).
    ///
    /// ```no_run
    /// use wgpu_optim::{AdamW, GpuContext, GpuOptimizer, GpuOptions, ParamGroup, TensorView};
    /// let ctx = GpuContext::new()?;
    /// let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    /// let pool = |label| {
    ///     ctx.device().create_buffer(&wgpu::BufferDescriptor {
    ///         label: Some(label),
    ///         size: 1 << 16,
    ///         usage,
    ///         mapped_at_creation: false,
    ///     })
    /// };
    /// let (weights, grads) = (pool("weights"), pool("grads"));
    /// let params = vec![
    ///     TensorView::new(weights.clone(), 0, 1024),  // a weight matrix
    ///     TensorView::new(weights.clone(), 4096, 16), // its bias
    /// ];
    /// let grad_views = vec![
    ///     TensorView::new(grads.clone(), 0, 1024),
    ///     TensorView::new(grads.clone(), 4096, 16),
    /// ];
    /// // No weight decay on the bias.
    /// let groups = [
    ///     ParamGroup::new(AdamW::default(), vec![0]),
    ///     ParamGroup::new(AdamW { weight_decay: 0.0, ..AdamW::default() }, vec![1]),
    /// ];
    /// let mut opt = GpuOptimizer::from_views_with_groups(
    ///     &ctx, params, grad_views, &groups, GpuOptions::default(),
    /// )?;
    /// opt.step_device()?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn from_views_with_groups(
        ctx: &GpuContext,
        params: Vec<TensorView>,
        grads: Vec<TensorView>,
        groups: &[ParamGroup],
        options: GpuOptions,
    ) -> Result<Self> {
        check_views(&params, &grads)?;
        check_groups(groups, params.len())?;
        if groups.len() == 1 {
            let config = groups[0].config.clone();
            return Self::from_views_with_options(ctx, config, params, grads, options);
        }
        if groups.len() >> VIEW_TILE_LEN_BITS != 0 {
            return Err(Error::SizeOverflow {
                what: "the number of parameter groups on views",
                ty: "u16",
                detail: format!(
                    "{} groups; a view tile carries its group in 16 bits",
                    groups.len()
                ),
            });
        }
        let aligned = vec4_aligned(&params, &grads);
        let plan = GroupPlan::new(groups, aligned, VIEWS_NEED, &options)?;
        let of = group_of(groups, params.len());
        let mut opt = Self::over_views(
            ctx,
            groups[0].config.clone(),
            false,
            plan.state_names.clone(),
            params,
            grads,
            &options,
            plan.variant,
            Some(&of),
        )?;
        opt.attach_groups(groups, plan)?;
        Ok(opt)
    }

    /// The optimizer over checked views with the kernel `variant` (made a
    /// view kernel here) and its state set; `group_of`: each tensor's
    /// group, for the grouped view kernel.
    #[allow(clippy::too_many_arguments)]
    fn over_views(
        ctx: &GpuContext,
        config: Config,
        momentum_buffer: bool,
        state_names: Vec<&'static str>,
        params: Vec<TensorView>,
        grads: Vec<TensorView>,
        options: &GpuOptions,
        variant: Variant,
        group_of: Option<&[u32]>,
    ) -> Result<Self> {
        let lengths: Vec<usize> = params.iter().map(|v| v.len).collect();
        let layout = Layout::new(&lengths)?;
        let window = chunk_elements(ctx, options)?;
        let chunks = split_chunks(layout.total() as u64, window);
        let variant = Variant {
            views: true,
            // The view kernels index with offsets from a table: their
            // bounds checks stay on.
            bounds_checked: true,
            ..variant
        };
        let plan = ViewPlan::new(
            ctx,
            &layout,
            &params,
            &grads,
            &chunks,
            window,
            variant.width,
            group_of,
        )?;
        // The packed tiles are not used on views: only the partials'
        // count (one per view tile) matters to the resources.
        let tiling = Tiling {
            per_chunk: vec![Vec::new(); chunks.len()],
            tensors: Vec::new(),
            total: plan.tiles,
        };
        Self::build(
            ctx,
            config,
            momentum_buffer,
            state_names,
            layout,
            chunks,
            tiling,
            Storage::Views(params),
            Storage::Views(grads),
            variant,
            Some(plan),
            None,
        )
    }

    /// The bind groups of `kernel` (the rule's view kernel, or a tile
    /// kernel: the reduction) over the views, one per group, with their
    /// workgroups; and the buffers made for unused state slots.
    pub(super) fn view_groups(
        &self,
        plan: &ViewPlan,
        kernel: &Kernel,
        uniforms: &wgpu::Buffer,
        stride: u64,
    ) -> (Vec<(wgpu::BindGroup, u32)>, Vec<wgpu::Buffer>) {
        let b = &self.buffers;
        let device = &self.ctx.device;
        let max_groups = self.ctx.limits().max_compute_workgroups_per_dimension;
        let fixed = [
            "param",
            "grad",
            "info",
            "counters",
            "tables",
            "view_tiles",
            "partials",
            "u",
        ];
        let mut groups = Vec::with_capacity(plan.groups.len());
        let mut unused = Vec::new();
        for g in &plan.groups {
            let dummies: Vec<wgpu::Buffer> = kernel
                .bindings
                .iter()
                .filter(|k| !fixed.contains(&k.name) && !self.state_names.contains(&k.name))
                .map(|k| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(k.name),
                        size: 16,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                })
                .collect();
            let mut next_dummy = dummies.iter();
            let chunk = &self.chunks[g.chunk];
            let entries: Vec<wgpu::BindGroupEntry<'_>> = kernel
                .bindings
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let resource = match k.name {
                        "param" => wgpu::BindingResource::Buffer(
                            plan.window_binding(&plan.param_buffers[g.param.0], g.param.1),
                        ),
                        "grad" => wgpu::BindingResource::Buffer(
                            plan.window_binding(&plan.grad_buffers[g.grad.0], g.grad.1),
                        ),
                        "info" => b.info.as_entire_binding(),
                        "counters" => b.counters.as_entire_binding(),
                        "tables" => g.reduce_table.as_entire_binding(),
                        "view_tiles" => g.rule_table.as_entire_binding(),
                        "partials" => b.partials.as_entire_binding(),
                        "u" => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: uniforms,
                            offset: 0,
                            size: NonZeroU64::new(stride),
                        }),
                        name => match self.state_names.iter().position(|n| *n == name) {
                            Some(si) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &b.state[si][g.chunk],
                                offset: 0,
                                size: NonZeroU64::new(chunk.len * 4),
                            }),
                            None => next_dummy
                                .next()
                                .expect("one dummy per missing slot")
                                .as_entire_binding(),
                        },
                    };
                    wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource,
                    }
                })
                .collect();
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("optimizer views"),
                layout: &kernel.layout,
                entries: &entries,
            });
            groups.push((group, g.tiles.clamp(1, max_groups)));
            unused.extend(dummies);
        }
        (groups, unused)
    }
}
