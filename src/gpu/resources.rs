//! Resources: where the parameters and gradients live, the buffers and
//! bind groups an optimizer owns besides them, and the uploads and
//! read-backs of whole packed tensor sets.

use std::num::NonZeroU64;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::rules::Config;

use super::chunks::{check_size, padded, ChunkRange, Tiling};
use super::kernels::Param16;
use super::kernels::{Kernel, WORKGROUP_SIZE};
use super::optimizer::GpuOptimizer;
use super::readback::read_buffer;
use super::skip::COUNTER_WORDS;
use super::uniforms::{UNIFORM_RING, UNIFORM_STRIDE};
use super::views::TensorView;

/// Where a tensor set lives: our own buffers (one per chunk), one buffer
/// the caller handed over (chunks are ranges of it), or the caller's views
/// (one per tensor; bound by `GpuOptimizer::view_groups`, never by chunk).
pub(super) enum Storage {
    Owned(Vec<wgpu::Buffer>),
    Caller(wgpu::Buffer),
    Views(Vec<TensorView>),
}

impl Storage {
    /// Every buffer it holds (a caller's buffer once per view naming it).
    pub(super) fn buffers(&self) -> Vec<&wgpu::Buffer> {
        match self {
            Storage::Owned(b) => b.iter().collect(),
            Storage::Caller(b) => vec![b],
            Storage::Views(v) => v.iter().map(|v| &v.buffer).collect(),
        }
    }

    /// Chunk `chunk` bound whole. Packed storage only: views are bound by
    /// `view_groups`, which the callers (`chunk_groups`, the mode switch)
    /// leave to views, so the arm below is never taken.
    fn binding(&self, chunk: usize, range: &ChunkRange, width: u32) -> wgpu::BufferBinding<'_> {
        match self {
            Storage::Owned(buffers) => wgpu::BufferBinding {
                buffer: &buffers[chunk],
                offset: 0,
                size: NonZeroU64::new(padded(range.len, width) * 4),
            },
            Storage::Caller(buffer) => wgpu::BufferBinding {
                buffer,
                offset: range.start * 4,
                size: NonZeroU64::new(range.len * 4),
            },
            Storage::Views(_) => unreachable!("views are bound by view_groups"),
        }
    }

    /// The buffer and byte offset of flat element `chunk_start`, on packed
    /// storage (`None` on views: each tensor has its own place).
    pub(super) fn locate(&self, chunk: usize, range: &ChunkRange) -> Option<(&wgpu::Buffer, u64)> {
        match self {
            Storage::Owned(buffers) => Some((&buffers[chunk], 0)),
            Storage::Caller(buffer) => Some((buffer, range.start * 4)),
            Storage::Views(_) => None,
        }
    }
}

/// The buffers and bind groups an optimizer owns besides the parameters and
/// gradients.
pub(super) struct OwnedResources {
    /// Each state tensor's buffers, one per chunk, in `state_names` order.
    pub(super) state: Vec<Vec<wgpu::Buffer>>,
    /// The buffers bound to state slots a configuration does not use (each
    /// its own, so that no two writable bindings alias), kept with the
    /// bind groups that use them.
    #[allow(dead_code)]
    pub(super) unused_slots: Vec<wgpu::Buffer>,
    /// Each chunk's tile table (`tables` in tiles.wgsl).
    tile_tables: Vec<wgpu::Buffer>,
    pub(super) partials: wgpu::Buffer,
    /// Workgroups of each chunk's tile dispatch.
    tile_workgroups: Vec<u32>,
    /// Gradient norm, clip scale, refusals, trust ratios (`info` in the
    /// kernels).
    pub(super) info: wgpu::Buffer,
    /// The step counters of `skip_nonfinite` (`counters` in tiles.wgsl).
    pub(super) counters: wgpu::Buffer,
    /// The ring of the element-wise kernels' uniforms.
    pub(super) rule_uniforms: wgpu::Buffer,
    /// Bytes of a slot of the rule ring: [`UNIFORM_STRIDE`], or more for
    /// a grouped kernel's per-group entries.
    pub(super) rule_stride: u64,
    /// The ring of the tile kernels' uniforms.
    pub(super) tile_uniforms: wgpu::Buffer,
    /// The element-wise kernel's bind group of each chunk, with its
    /// workgroups; empty for LAMB.
    pub(super) rule_groups: Vec<(wgpu::BindGroup, u32)>,
    /// Made with the first tile kernel built (`attach_tile_groups`): at
    /// construction for LAMB, else with the reduction; empty until then.
    pub(super) tile_groups: Vec<(wgpu::BindGroup, u32)>,
}

impl OwnedResources {
    /// Checks every size against the device's limits, then makes the
    /// buffers (no bind groups yet: `attach_rule_groups`,
    /// `attach_tile_groups`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        ctx: &GpuContext,
        config: &Config,
        state_names: &[&'static str],
        chunks: &[ChunkRange],
        tiling: &Tiling,
        n_tensors: usize,
        rule_stride: u64,
        state_bf16: bool,
        state_words: Option<&[u64]>,
    ) -> Result<Self> {
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
        check_size(&limits, "step info", (4 + n_tensors as u64) * 4, false)?;
        for table in &tables {
            check_size(&limits, "tile table", table.len() as u64 * 16, false)?;
        }
        check_size(&limits, "step scalars", UNIFORM_RING * rule_stride, true)?;
        ctx.scoped("creating state buffers", || {
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
                        .enumerate()
                        .map(|(ci, c)| {
                            // 8-bit state: its words (blockwise.rs), filled
                            // by its constructor.
                            if let Some(words) = state_words {
                                return storage_buffer(name, words[ci] * 4);
                            }
                            // bf16 state: half the bytes, filled by its
                            // constructor.
                            if state_bf16 {
                                return storage_buffer(name, super::precision::words(c.len) * 4);
                            }
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
            let tile_tables: Vec<wgpu::Buffer> = tables
                .iter()
                .map(|table| {
                    let b = storage_buffer("tile table", table.len() as u64 * 16);
                    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(table));
                    b
                })
                .collect();
            let ring = |label: &str, stride: u64| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: UNIFORM_RING * stride,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            let max_groups = limits.max_compute_workgroups_per_dimension as u64;
            OwnedResources {
                state,
                unused_slots: Vec::new(),
                tile_tables,
                partials: storage_buffer("tile partials", tiling.total.max(1) as u64 * 8),
                tile_workgroups: tiling
                    .per_chunk
                    .iter()
                    .map(|tiles| (tiles.len() as u64).clamp(1, max_groups) as u32)
                    .collect(),
                info: storage_buffer("step info", (4 + n_tensors as u64) * 4),
                counters: storage_buffer("step counters", COUNTER_WORDS * 4),
                rule_uniforms: ring("step scalars", rule_stride),
                rule_stride,
                tile_uniforms: ring("tile scalars", UNIFORM_STRIDE),
                rule_groups: Vec::new(),
                tile_groups: Vec::new(),
            }
        })
    }
}

impl GpuOptimizer {
    /// One bind group per chunk for `kernel`, each binding given by the
    /// name the kernel's WGSL gives it; vectors `width` wide; `uniforms`,
    /// the ring bound as `u`, slots `stride` bytes apart. Returns the
    /// groups and the buffers made for unused state slots.
    fn chunk_groups(
        &self,
        kernel: &Kernel,
        width: u32,
        uniforms: &wgpu::Buffer,
        stride: u64,
    ) -> (Vec<wgpu::BindGroup>, Vec<wgpu::Buffer>) {
        let b = &self.buffers;
        let device = &self.ctx.device;
        let mut groups = Vec::with_capacity(self.chunks.len());
        let mut unused = Vec::new();
        let fixed = [
            "param",
            "grad",
            "info",
            "counters",
            "tables",
            "partials",
            "group_tiles",
            "param16",
            "chunk_base",
            "blocks",
            "u",
        ];
        for (ci, range) in self.chunks.iter().enumerate() {
            // A buffer of its own for each state slot this configuration
            // does not have.
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
            let entries: Vec<wgpu::BindGroupEntry<'_>> = kernel
                .bindings
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let packed = self.variant.packed16;
                    let sr = packed.is_some_and(|p| p.param == Param16::StochasticBf16);
                    // 16-bit and 8-bit state are bound whole (their
                    // buffers are not an f32 an element).
                    let state_words =
                        packed.is_some_and(|p| p.state_bf16) || self.variant.blockwise.is_some();
                    let precision = self.precision.as_ref();
                    let resource = match k.name {
                        // 16-bit buffers bound whole: a pair a word.
                        "param" if sr => self.params.buffers()[ci].as_entire_binding(),
                        "param16" => match precision.and_then(|p| p.model.as_ref()) {
                            Some(model) => model[ci].as_entire_binding(),
                            None => unreachable!("a master kernel's bind groups need its model"),
                        },
                        "blocks" => match precision.and_then(|p| p.blocks.as_ref()) {
                            Some(blocks) => blocks.tables[ci].as_entire_binding(),
                            None => unreachable!("an 8-bit kernel's bind groups need its blocks"),
                        },
                        "chunk_base" => match precision {
                            Some(p) => p.chunk_bases[ci].as_entire_binding(),
                            None => {
                                unreachable!("a stochastic kernel's bind groups need its bases")
                            }
                        },
                        "param" => {
                            wgpu::BindingResource::Buffer(self.params.binding(ci, range, width))
                        }
                        "grad" => {
                            wgpu::BindingResource::Buffer(self.grads.binding(ci, range, width))
                        }
                        "info" => b.info.as_entire_binding(),
                        "counters" => b.counters.as_entire_binding(),
                        "tables" => b.tile_tables[ci].as_entire_binding(),
                        "partials" => b.partials.as_entire_binding(),
                        "group_tiles" => match &self.groups {
                            Some(g) => g.tables[ci].as_entire_binding(),
                            None => unreachable!("a grouped kernel's bind groups need its groups"),
                        },
                        "u" => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: uniforms,
                            offset: 0,
                            size: NonZeroU64::new(stride),
                        }),
                        name => match self.state_names.iter().position(|n| *n == name) {
                            Some(si) if state_words => b.state[si][ci].as_entire_binding(),
                            Some(si) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &b.state[si][ci],
                                offset: 0,
                                size: NonZeroU64::new(padded(range.len, width) * 4),
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
            groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("optimizer chunk"),
                layout: &kernel.layout,
                entries: &entries,
            }));
            unused.extend(dummies);
        }
        (groups, unused)
    }

    /// Makes the bind groups of the element-wise rule kernel.
    pub(super) fn attach_rule_groups(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        if let Some(plan) = &self.views {
            let (groups, unused) = ctx.scoped("creating the view kernel's bind groups", || {
                let b = &self.buffers;
                self.view_groups(plan, &self.kernel, &b.rule_uniforms, b.rule_stride)
            })?;
            self.buffers.rule_groups = groups;
            self.buffers.unused_slots.extend(unused);
            return Ok(());
        }
        let width = self.variant.width;
        let max_groups = ctx.limits().max_compute_workgroups_per_dimension as u64;
        let (groups, unused) = ctx.scoped("creating the rule kernel's bind groups", || {
            let b = &self.buffers;
            self.chunk_groups(&self.kernel, width, &b.rule_uniforms, b.rule_stride)
        })?;
        self.buffers.rule_groups = groups
            .into_iter()
            .zip(&self.chunks)
            .enumerate()
            .map(|(ci, (group, range))| {
                let workgroups = match &self.groups {
                    // One workgroup a tile (at most 4096 elements).
                    Some(g) => (g.tiles[ci] as u64).clamp(1, max_groups),
                    // 8-bit state: a workgroup steps blocks in turn, loading
                    // the maps once; up to 8 blocks each on large chunks, one
                    // each (up to 2048 workgroups) on small ones, which
                    // then still fill a GPU.
                    None if self.variant.blockwise.is_some() => match self.blocks() {
                        Some(b) => {
                            let n = b.plan.blocks_in(ci) as u64;
                            n.div_ceil(8).max(n.min(2048)).clamp(1, max_groups)
                        }
                        None => 1,
                    },
                    None => {
                        let units = padded(range.len, width) / width as u64;
                        units.div_ceil(WORKGROUP_SIZE).min(max_groups)
                    }
                };
                (group, workgroups as u32)
            })
            .collect();
        self.buffers.unused_slots.extend(unused);
        Ok(())
    }

    /// Makes the bind groups of the tile kernels with `kernel`'s layout
    /// (every tile kernel, LAMB's and the reduction's, has the same
    /// bindings), once.
    pub(super) fn attach_tile_groups(&mut self, kernel: &Kernel) -> Result<()> {
        if !self.buffers.tile_groups.is_empty() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        if let Some(plan) = &self.views {
            let (groups, unused) = ctx.scoped("creating the tile kernels' bind groups", || {
                self.view_groups(plan, kernel, &self.buffers.tile_uniforms, UNIFORM_STRIDE)
            })?;
            self.buffers.tile_groups = groups;
            self.buffers.unused_slots.extend(unused);
            return Ok(());
        }
        // Bound as wide as the rule kernel's bindings (padded to whole
        // vec4s at width 4): LAMB's tile kernels read vec4s then, the
        // reduction's scalars within the tiles only.
        let width = self.variant.width;
        let (groups, unused) = ctx.scoped("creating the tile kernels' bind groups", || {
            self.chunk_groups(kernel, width, &self.buffers.tile_uniforms, UNIFORM_STRIDE)
        })?;
        self.buffers.tile_groups = groups
            .into_iter()
            .zip(&self.buffers.tile_workgroups)
            .map(|(group, w)| (group, *w))
            .collect();
        self.buffers.unused_slots.extend(unused);
        Ok(())
    }

    pub(super) fn check_host_writable(&self, storage: &Storage, what: &'static str) -> Result<()> {
        if matches!(storage, Storage::Owned(_)) {
            return Ok(());
        }
        for b in storage.buffers() {
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
    pub(super) fn write_storage_tensors(&self, storage: &Storage, tensors: &[&[f32]]) {
        if let Storage::Views(views) = storage {
            for (v, t) in views.iter().zip(tensors) {
                if !t.is_empty() {
                    self.ctx
                        .queue
                        .write_buffer(&v.buffer, v.offset, bytemuck::cast_slice(t));
                }
            }
            return;
        }
        for (i, t) in tensors.iter().enumerate() {
            let mut flat = self.layout.offsets()[i] as u64;
            let mut rest: &[f32] = t;
            while !rest.is_empty() {
                let ci = self.chunks.partition_point(|c| c.start + c.len <= flat);
                let range = &self.chunks[ci];
                let take = ((range.start + range.len - flat) as usize).min(rest.len());
                let Some((buffer, base)) = storage.locate(ci, range) else {
                    return;
                };
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

    pub(super) fn read_storage(&self, storage: &Storage) -> Result<Vec<f32>> {
        let caller = !matches!(storage, Storage::Owned(_));
        for b in storage.buffers().into_iter().filter(|_| caller) {
            if !b.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                return Err(Error::BufferUsage {
                    what: "parameter",
                    missing: "COPY_SRC".into(),
                    has: format!("{:?}", b.usage()),
                });
            }
        }
        if let Storage::Views(views) = storage {
            return self.read_views(views);
        }
        let mut out = Vec::with_capacity(self.layout.total());
        for (ci, range) in self.chunks.iter().enumerate() {
            if let Some((buffer, base)) = storage.locate(ci, range) {
                out.extend(read_buffer(&self.ctx, buffer, base, range.len * 4)?);
            }
        }
        Ok(out)
    }

    /// The views' tensors, packed: each chunk's pieces of them copied into
    /// one buffer on the GPU (one submission), then read back, so a
    /// thousand tensors are not a thousand read-backs.
    fn read_views(&self, views: &[TensorView]) -> Result<Vec<f32>> {
        let ctx = &self.ctx;
        let packed = ctx.scoped("packing views for read-back", || {
            let packed: Vec<wgpu::Buffer> = self
                .chunks
                .iter()
                .map(|c| {
                    ctx.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("packed views"),
                        size: c.len * 4,
                        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    })
                })
                .collect();
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("packing views"),
                });
            for (i, v) in views.iter().enumerate() {
                let mut flat = self.layout.offsets()[i] as u64;
                let end = flat + v.len as u64;
                while flat < end {
                    let ci = self.chunks.partition_point(|c| c.start + c.len <= flat);
                    let c = &self.chunks[ci];
                    let take = (c.start + c.len).min(end) - flat;
                    let from = v.offset + (flat - self.layout.offsets()[i] as u64) * 4;
                    encoder.copy_buffer_to_buffer(
                        &v.buffer,
                        from,
                        &packed[ci],
                        (flat - c.start) * 4,
                        take * 4,
                    );
                    flat += take;
                }
            }
            ctx.queue.submit(Some(encoder.finish()));
            packed
        })?;
        let mut out = Vec::with_capacity(self.layout.total());
        for (buffer, c) in packed.iter().zip(&self.chunks) {
            out.extend(read_buffer(ctx, buffer, 0, c.len * 4)?);
        }
        Ok(out)
    }
}
