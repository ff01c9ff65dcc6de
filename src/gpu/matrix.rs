//! The matrix rules (Adafactor, Muon) on the GPU. Each tensor has buffers
//! of its own (parameters, gradients, each state tensor), so a kernel
//! indexes a tensor from 0 and a tensor is never split between bindings;
//! one step is one compute pass of a few dispatches per tensor, all in the
//! step's own submission:
//!
//! * Adafactor, a matrix: the row sums of `G²` (one workgroup per row),
//!   the column sums (one invocation per column, down the rows in order),
//!   the mean of the rows' statistics, one workgroup summing `θ²` and
//!   `U²`, then the update. A vector: the sums (the variance moved on the
//!   way) and the update. Every sum is a fixed tree over a fixed
//!   assignment of elements to threads: no float atomics, the same bits
//!   from run to run. The state held is the factored state's.
//! * Muon: the momentum (writing `X`, transposed for a tall matrix), the
//!   Frobenius norm (per tile, then the tiles in order), the division by it,
//!   then per Newton–Schulz step three tiled products (shaders/matmul.wgsl)
//!   and the update. `X`, `X·Xᵀ` and `b·G + c·G·G` live in scratch
//!   buffers shared by all tensors (the largest tensor's sizes).

use std::num::NonZeroU64;

use wgpu::util::DeviceExt;

use crate::clip::ClipGradNorm;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::layout::Layout;
use crate::rules::{Adafactor, Config, Muon, Rule};

use super::kernels::Kernel;

const DESC_SOURCE: &str = include_str!("../../shaders/matrix_desc.wgsl");
const ELEMENTWISE_SOURCE: &str = include_str!("../../shaders/matrix.wgsl");
const MATMUL_SOURCE: &str = include_str!("../../shaders/matmul.wgsl");

/// Threads of every matrix kernel's workgroup.
const WORKGROUP: u32 = 256;
/// The side of a product's output tile (shaders/matmul.wgsl).
const MATMUL_TILE: u32 = 64;
/// Workgroup memory of the products: two tiles of 1024 f32.
const MATMUL_WORKGROUP_BYTES: u32 = 2 * 1024 * 4;
/// Storage buffers of the element-wise kernels (the most of any).
const STORAGE_BINDINGS: u32 = 7;
/// Bytes between two tensors' descriptors: a dynamic uniform offset must
/// be a multiple of `min_uniform_buffer_offset_alignment` (at most 256).
const DESC_STRIDE: u64 = 256;
/// Floats of `red` before the row means (shaders/matrix.wgsl).
const RED_HEAD: usize = 8;
/// Elements of a tile of the tensor-wide sums (shaders/matrix.wgsl).
const PARTIAL_TILE: usize = 4096;

const FLAG_GRAD_SCALE: u32 = 1;
const FLAG_MAXIMIZE: u32 = 2;
const FLAG_FACTORED: u32 = 4;
const FLAG_NESTEROV: u32 = 8;
const FLAG_TALL: u32 = 16;
const FLAG_OUT_IN_X1: u32 = 32;
const FLAG_CLIP: u32 = 64;

/// What one step of a matrix rule takes besides the rule.
#[derive(Clone, Copy, Debug)]
pub(super) struct MatrixStep {
    /// The step's number (1 for the first).
    pub(super) number: u64,
    /// `1/grad_scale` (1: none).
    pub(super) inv_scale: f32,
    /// The clipping in force.
    pub(super) clip: Option<ClipGradNorm>,
}

/// `struct Desc` of shaders/matrix_desc.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct MatrixDesc {
    len: u32,
    rows: u32,
    cols: u32,
    batch: u32,
    m: u32,
    n: u32,
    flags: u32,
    partials: u32,
    inv_scale: f32,
    s: [f32; 8],
    clip_base: u32,
    clip_tiles: u32,
    max_norm: f32,
}

/// What the kernels need of one tensor, fixed at construction.
#[derive(Clone, Copy, Debug)]
struct TensorPlan {
    len: u32,
    /// Adafactor: a matrix's last two dimensions (0 for a vector); Muon:
    /// the shape.
    rows: u32,
    cols: u32,
    /// Adafactor: the matrices of the tensor (0 for a vector).
    batch: u32,
    /// Muon: `X` is `m × n`, `m <= n`.
    m: u32,
    n: u32,
    tall: bool,
}

impl TensorPlan {
    fn factored(&self) -> bool {
        self.batch > 0
    }
}

/// Which rule, with what the step reads of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Adafactor,
    Muon,
}

/// The kernels, buffers and bind groups of a matrix rule on the GPU (see
/// the module's documentation).
pub(super) struct MatrixPlan {
    which: Which,
    tensors: Vec<TensorPlan>,
    /// Where the partial sums start in `red`.
    partials_at: u32,
    /// Each tensor's first tile of the clipping norm, and the tiles of all.
    clip_bases: Vec<u32>,
    clip_tiles: u32,
    /// The reductions' results (shaders/matrix.wgsl): [2] is the last
    /// clipping norm.
    red: wgpu::Buffer,
    /// `[state][tensor]`, each at least 16 bytes (bindings cannot be empty).
    state: Vec<Vec<wgpu::Buffer>>,
    /// How each state tensor is packed (the factored statistics are
    /// shorter than their parameters).
    state_layouts: Vec<Layout>,
    /// The tensors' descriptors, one [`DESC_STRIDE`] slot each.
    desc: wgpu::Buffer,
    elementwise: Vec<wgpu::ComputePipeline>,
    products: Vec<wgpu::ComputePipeline>,
    /// Per tensor (`None` for an empty one): the element-wise kernels'
    /// bind group.
    groups: Vec<Option<wgpu::BindGroup>>,
    /// Muon: `[gram from X0, gram from X1, poly, next into X1, next into X0]`.
    product_groups: Vec<wgpu::BindGroup>,
    /// Kept alive for the bind groups.
    _scratch: Vec<wgpu::Buffer>,
}

/// The element-wise entry points, in `MatrixPlan::elementwise` order.
const ELEMENTWISE_ENTRIES: [&str; 13] = [
    "muon_momentum",
    "muon_norm",
    "muon_scale",
    "muon_apply",
    "adafactor_rows",
    "adafactor_cols",
    "adafactor_row_mean",
    "adafactor_stats",
    "adafactor_apply",
    "muon_norm_partial",
    "adafactor_stats_partial",
    "clip_partial",
    "clip_finish",
];
const MUON_MOMENTUM: usize = 0;
const MUON_NORM: usize = 1;
const MUON_SCALE: usize = 2;
const MUON_APPLY: usize = 3;
const ADAFACTOR_ROWS: usize = 4;
const ADAFACTOR_COLS: usize = 5;
const ADAFACTOR_ROW_MEAN: usize = 6;
const ADAFACTOR_STATS: usize = 7;
const ADAFACTOR_APPLY: usize = 8;
const MUON_NORM_PARTIAL: usize = 9;
const ADAFACTOR_STATS_PARTIAL: usize = 10;
const CLIP_PARTIAL: usize = 11;
const CLIP_FINISH: usize = 12;
const PRODUCT_ENTRIES: [&str; 3] = ["muon_gram", "muon_poly", "muon_next"];

fn device_limit(what: &str, limit: &'static str, needed: u64, available: u64) -> Error {
    Error::DeviceLimit {
        what: what.to_string(),
        limit,
        needed,
        available,
    }
}

/// `n` (a count the kernels index in 32 bits) as `u32`.
fn kernel_u32(n: usize, what: &'static str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::SizeOverflow {
        what,
        ty: "u32",
        detail: format!("{n}; the matrix kernels index it in 32 bits"),
    })
}

impl MatrixPlan {
    /// Checks the device's limits against what the kernels and buffers
    /// need, then compiles the kernels and makes the state, scratch and
    /// descriptor buffers and the bind groups, over the parameter and
    /// gradient buffers given (one per non-empty tensor, in order).
    pub(super) fn new(
        ctx: &GpuContext,
        config: &Config,
        state_names: &[&'static str],
        layout: &Layout,
        params: &[wgpu::Buffer],
        grads: &[wgpu::Buffer],
    ) -> Result<Self> {
        let which = match config {
            Config::Adafactor(_) => Which::Adafactor,
            Config::Muon(_) => Which::Muon,
            other => {
                return Err(Error::Unsupported(format!(
                    "{} as a matrix rule on the GPU",
                    other.kind()
                )))
            }
        };
        let limits = ctx.limits();
        let what = format!("the {} kernels", config.kind());
        let need = |limit: &'static str, needed: u64, available: u64| {
            if available < needed {
                Err(device_limit(&what, limit, needed, available))
            } else {
                Ok(())
            }
        };
        need(
            "max_compute_invocations_per_workgroup",
            WORKGROUP as u64,
            limits.max_compute_invocations_per_workgroup as u64,
        )?;
        need(
            "max_compute_workgroup_size_x",
            WORKGROUP as u64,
            limits.max_compute_workgroup_size_x as u64,
        )?;
        need(
            "max_compute_workgroup_storage_size",
            MATMUL_WORKGROUP_BYTES as u64,
            limits.max_compute_workgroup_storage_size as u64,
        )?;
        need(
            "max_storage_buffers_per_shader_stage",
            STORAGE_BINDINGS as u64,
            limits.max_storage_buffers_per_shader_stage as u64,
        )?;
        let align = limits.min_uniform_buffer_offset_alignment as u64;
        if align > DESC_STRIDE || !DESC_STRIDE.is_multiple_of(align.max(1)) {
            return Err(device_limit(
                &what,
                "min_uniform_buffer_offset_alignment",
                DESC_STRIDE,
                align,
            ));
        }
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_groups = limits.max_compute_workgroups_per_dimension;
        // Each tensor's plan; the sizes of the largest X and Gram matrix.
        let mut tensors = Vec::with_capacity(layout.len());
        let (mut max_x, mut max_gram, mut max_batch) = (1usize, 1usize, 1usize);
        let mut max_len = 1usize;
        for i in 0..layout.len() {
            let len = layout.lengths()[i];
            max_len = max_len.max(len);
            need(
                "max_storage_buffer_binding_size",
                len as u64 * 4,
                max_binding,
            )?;
            let plan = match which {
                Which::Muon => {
                    // Muon's check_shapes: every tensor is 2-D.
                    let (rows, cols) = match layout.shape(i).map(crate::Shape::dims) {
                        Some(&[r, c]) => (r, c),
                        _ => (len, 1),
                    };
                    let (m, n) = (rows.min(cols), rows.max(cols));
                    let gram = m.checked_mul(m).ok_or(Error::SizeOverflow {
                        what: "Muon's Gram matrix",
                        ty: "usize",
                        detail: format!("{m} × {m}"),
                    })?;
                    need(
                        "max_storage_buffer_binding_size",
                        gram as u64 * 4,
                        max_binding,
                    )?;
                    let tiles = n.div_ceil(MATMUL_TILE as usize) as u64;
                    need(
                        "max_compute_workgroups_per_dimension",
                        tiles,
                        max_groups as u64,
                    )?;
                    max_x = max_x.max(len);
                    max_gram = max_gram.max(gram);
                    TensorPlan {
                        len: kernel_u32(len, "a tensor's elements")?,
                        rows: kernel_u32(rows, "a matrix's rows")?,
                        cols: kernel_u32(cols, "a matrix's columns")?,
                        batch: 0,
                        m: kernel_u32(m, "a matrix's rows")?,
                        n: kernel_u32(n, "a matrix's columns")?,
                        tall: rows > cols,
                    }
                }
                Which::Adafactor => match layout.shape(i).filter(|s| s.is_matrix()) {
                    Some(s) => {
                        max_batch = max_batch.max(s.batch());
                        TensorPlan {
                            len: kernel_u32(len, "a tensor's elements")?,
                            rows: kernel_u32(s.rows(), "a matrix's rows")?,
                            cols: kernel_u32(s.cols(), "a matrix's columns")?,
                            batch: kernel_u32(s.batch(), "a tensor's matrices")?,
                            m: 0,
                            n: 0,
                            tall: false,
                        }
                    }
                    None => TensorPlan {
                        len: kernel_u32(len, "a tensor's elements")?,
                        rows: 0,
                        cols: 0,
                        batch: 0,
                        m: 0,
                        n: 0,
                        tall: false,
                    },
                },
            };
            tensors.push(plan);
        }
        let partials_at = RED_HEAD + max_batch;
        let red_len = partials_at + 2 * max_len.div_ceil(PARTIAL_TILE);
        let partials_at = kernel_u32(partials_at, "a tensor's matrices")?;
        let mut clip_bases = Vec::with_capacity(layout.len());
        let mut clip_tiles = 0usize;
        for &len in layout.lengths() {
            clip_bases.push(kernel_u32(clip_tiles, "the tiles of the clipping norm")?);
            clip_tiles += len.div_ceil(PARTIAL_TILE);
        }
        need(
            "max_storage_buffer_binding_size",
            clip_tiles as u64 * 4,
            max_binding,
        )?;
        let clip_tiles_u32 = kernel_u32(clip_tiles, "the tiles of the clipping norm")?;
        need(
            "max_storage_buffer_binding_size",
            red_len as u64 * 4,
            max_binding,
        )?;
        let state_layouts: Vec<Layout> = state_names
            .iter()
            .map(|name| layout.state_layout(config, name))
            .collect();
        let desc_size = DESC_STRIDE * layout.len().max(1) as u64;
        need("max_buffer_size", desc_size, limits.max_buffer_size)?;

        ctx.scoped("building the matrix rule's kernels and buffers", || {
            let device = &ctx.device;
            let storage = |label: &str, floats: usize| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: (floats.max(4) as u64).next_multiple_of(4) * 4,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let state: Vec<Vec<wgpu::Buffer>> = state_names
                .iter()
                .zip(&state_layouts)
                .map(|(name, sl)| {
                    let init = config.state_initial_value(name);
                    sl.lengths()
                        .iter()
                        .map(|&n| {
                            let b = storage(name, n);
                            if init != 0.0 && n > 0 {
                                ctx.queue
                                    .write_buffer(&b, 0, bytemuck::cast_slice(&vec![init; n]));
                            }
                            b
                        })
                        .collect()
                })
                .collect();
            let red = storage("matrix reductions", red_len);
            let clip = storage("clipping norm tiles", clip_tiles);
            let scratch: Vec<wgpu::Buffer> = match which {
                Which::Muon => vec![
                    storage("Newton–Schulz X0", max_x),
                    storage("Newton–Schulz X1", max_x),
                    storage("Newton–Schulz Gram", max_gram),
                    storage("Newton–Schulz polynomial", max_gram),
                ],
                // The element-wise layout binds three state slots; a
                // vector-only or matrix-only Adafactor has all three.
                Which::Adafactor => Vec::new(),
            };
            let desc = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matrix descriptors"),
                size: desc_size,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let storage_entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let desc_entry = |binding: u32| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(std::mem::size_of::<MatrixDesc>() as u64),
                },
                count: None,
            };
            let ew_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("matrix element-wise"),
                entries: &[
                    storage_entry(0, false),
                    storage_entry(1, true),
                    storage_entry(2, false),
                    storage_entry(3, false),
                    storage_entry(4, false),
                    storage_entry(5, false),
                    desc_entry(6),
                    storage_entry(7, false),
                ],
            });
            let mm_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("matrix products"),
                entries: &[
                    storage_entry(0, true),
                    storage_entry(1, true),
                    storage_entry(2, true),
                    storage_entry(3, false),
                    desc_entry(4),
                ],
            });
            let pipelines =
                |name: &str, source: &str, layout: &wgpu::BindGroupLayout, entries: &[&str]| {
                    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(name),
                        source: wgpu::ShaderSource::Wgsl(format!("{DESC_SOURCE}\n{source}").into()),
                    });
                    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(name),
                        bind_group_layouts: &[Some(layout)],
                        immediate_size: 0,
                    });
                    entries
                        .iter()
                        .map(|entry| {
                            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                                label: Some(entry),
                                layout: Some(&pl),
                                module: &module,
                                entry_point: Some(entry),
                                compilation_options: Default::default(),
                                cache: None,
                            })
                        })
                        .collect::<Vec<_>>()
                };
            let elementwise = pipelines(
                "matrix element-wise",
                ELEMENTWISE_SOURCE,
                &ew_layout,
                &ELEMENTWISE_ENTRIES,
            );
            let products = match which {
                Which::Muon => pipelines(
                    "matrix products",
                    MATMUL_SOURCE,
                    &mm_layout,
                    &PRODUCT_ENTRIES,
                ),
                Which::Adafactor => Vec::new(),
            };
            let desc_binding = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &desc,
                offset: 0,
                size: NonZeroU64::new(std::mem::size_of::<MatrixDesc>() as u64),
            });
            let mut buffers = params.iter().zip(grads);
            let groups: Vec<Option<wgpu::BindGroup>> = (0..layout.len())
                .map(|i| {
                    if layout.lengths()[i] == 0 {
                        return None;
                    }
                    let (p, g) = buffers.next()?;
                    let slots: [&wgpu::Buffer; 3] = match which {
                        Which::Muon => [&state[0][i], &scratch[0], &scratch[1]],
                        Which::Adafactor => [&state[0][i], &state[1][i], &state[2][i]],
                    };
                    let entries = [
                        p.as_entire_binding(),
                        g.as_entire_binding(),
                        slots[0].as_entire_binding(),
                        slots[1].as_entire_binding(),
                        slots[2].as_entire_binding(),
                        red.as_entire_binding(),
                        desc_binding.clone(),
                        clip.as_entire_binding(),
                    ];
                    let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
                        .into_iter()
                        .enumerate()
                        .map(|(b, resource)| wgpu::BindGroupEntry {
                            binding: b as u32,
                            resource,
                        })
                        .collect();
                    Some(device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("matrix tensor"),
                        layout: &ew_layout,
                        entries: &entries,
                    }))
                })
                .collect();
            let product_groups = match which {
                Which::Muon => {
                    let [x0, x1, gram, poly] = [&scratch[0], &scratch[1], &scratch[2], &scratch[3]];
                    // (a, b, c, out)
                    let sets: [[&wgpu::Buffer; 4]; 5] = [
                        [x0, x0, x0, gram],
                        [x1, x1, x1, gram],
                        [gram, gram, gram, poly],
                        [poly, x0, x0, x1],
                        [poly, x1, x1, x0],
                    ];
                    sets.iter()
                        .map(|set| {
                            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = set
                                .iter()
                                .enumerate()
                                .map(|(b, buffer)| wgpu::BindGroupEntry {
                                    binding: b as u32,
                                    resource: buffer.as_entire_binding(),
                                })
                                .collect();
                            entries.push(wgpu::BindGroupEntry {
                                binding: 4,
                                resource: desc_binding.clone(),
                            });
                            device.create_bind_group(&wgpu::BindGroupDescriptor {
                                label: Some("Newton–Schulz product"),
                                layout: &mm_layout,
                                entries: &entries,
                            })
                        })
                        .collect()
                }
                Which::Adafactor => Vec::new(),
            };
            let mut kept = scratch;
            kept.push(clip);
            MatrixPlan {
                which,
                tensors,
                partials_at,
                clip_bases,
                clip_tiles: clip_tiles_u32,
                red,
                state,
                state_layouts,
                desc,
                elementwise,
                products,
                groups,
                product_groups,
                _scratch: kept,
            }
        })
    }

    /// An empty [`Kernel`] for the optimizer's `kernel` field (the matrix
    /// rules' pipelines live here).
    pub(super) fn placeholder_kernel(ctx: &GpuContext) -> Kernel {
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("matrix rule (no element-wise kernel)"),
                entries: &[],
            });
        Kernel {
            pipelines: Vec::new(),
            layout,
            bindings: Vec::new(),
        }
    }

    /// How state tensor `s` is packed.
    pub(super) fn state_layout(&self, s: usize) -> &Layout {
        &self.state_layouts[s]
    }

    /// State tensor `s`, read back and packed.
    pub(super) fn read_state(&self, ctx: &GpuContext, s: usize) -> Result<Vec<f32>> {
        let sl = &self.state_layouts[s];
        let mut out = Vec::with_capacity(sl.total());
        for (buffer, &n) in self.state[s].iter().zip(sl.lengths()) {
            if n > 0 {
                out.extend(super::readback::read_buffer(ctx, buffer, 0, n as u64 * 4)?);
            }
        }
        Ok(out)
    }

    /// Writes state tensor `s` (one slice per tensor, lengths checked).
    pub(super) fn write_state(&self, ctx: &GpuContext, s: usize, tensors: &[&[f32]]) {
        for (buffer, t) in self.state[s].iter().zip(tensors) {
            if !t.is_empty() {
                ctx.queue.write_buffer(buffer, 0, bytemuck::cast_slice(t));
            }
        }
    }

    /// The clipping norm of the last step that clipped (waits for it).
    pub(super) fn last_clip_norm(&self, ctx: &GpuContext) -> Result<f32> {
        Ok(super::readback::read_buffer(ctx, &self.red, 8, 4)?[0])
    }

    /// Dispatches of one step.
    pub(super) fn dispatches(&self, config: &Config, clip: bool) -> usize {
        let non_empty = self.tensors.iter().filter(|t| t.len > 0).count();
        let clipping = if clip && non_empty > 0 {
            non_empty + 1
        } else {
            0
        };
        let ns_steps = match config {
            Config::Muon(m) => m.ns_steps as usize,
            _ => 0,
        };
        self.tensors
            .iter()
            .filter(|t| t.len > 0)
            .map(|t| match self.which {
                Which::Muon => 5 + 3 * ns_steps,
                Which::Adafactor if t.factored() => 6,
                Which::Adafactor => 3,
            })
            .sum::<usize>()
            + clipping
    }

    /// Each tensor's descriptor for step `step` (1 for the first).
    fn descriptors(
        &self,
        config: &Config,
        step: u64,
        inv_scale: f32,
        clip: Option<ClipGradNorm>,
    ) -> Vec<u8> {
        let mut blob = vec![0u8; DESC_STRIDE as usize * self.tensors.len().max(1)];
        let scale_flag = if inv_scale != 1.0 { FLAG_GRAD_SCALE } else { 0 };
        for (i, t) in self.tensors.iter().enumerate() {
            let mut d = MatrixDesc {
                len: t.len,
                rows: t.rows,
                cols: t.cols,
                batch: t.batch,
                m: t.m,
                n: t.n,
                flags: scale_flag,
                partials: self.partials_at,
                inv_scale,
                clip_base: self.clip_bases[i],
                clip_tiles: self.clip_tiles,
                max_norm: clip.map_or(0.0, |c| c.max_norm as f32),
                ..Default::default()
            };
            match config {
                Config::Muon(muon) => fill_muon(&mut d, muon, t),
                Config::Adafactor(af) => fill_adafactor(&mut d, af, t, step),
                _ => {}
            }
            if clip.is_some() {
                d.flags |= FLAG_CLIP;
            }
            let at = i * DESC_STRIDE as usize;
            blob[at..at + std::mem::size_of::<MatrixDesc>()]
                .copy_from_slice(bytemuck::bytes_of(&d));
        }
        blob
    }

    /// Records step `step.number`: the descriptors copied into place by a
    /// command in `encoder`, then one compute pass.
    pub(super) fn record(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
        config: &Config,
        step: MatrixStep,
    ) {
        let MatrixStep {
            number,
            inv_scale,
            clip,
        } = step;
        let blob = self.descriptors(config, number, inv_scale, clip);
        let staging = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("matrix descriptors (this step)"),
                contents: &blob,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        encoder.copy_buffer_to_buffer(&staging, 0, &self.desc, 0, blob.len() as u64);
        let max_groups = ctx.limits().max_compute_workgroups_per_dimension;
        let linear = |n: u32| n.div_ceil(WORKGROUP).clamp(1, max_groups);
        // `n` workgroups as (x, y) within the per-dimension limit.
        let grid = |n: u32| {
            let x = n.clamp(1, max_groups);
            (x, n.div_ceil(x).max(1))
        };
        let tiles = |n: u32| n.div_ceil(PARTIAL_TILE as u32);
        let ns_steps = match config {
            Config::Muon(m) => m.ns_steps,
            _ => 0,
        };
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("matrix rule step"),
            timestamp_writes,
        });
        let offset_of = |i: usize| [(i as u64 * DESC_STRIDE) as u32];
        if clip.is_some() {
            // Every tensor's tiles of the norm, then the scale, before
            // any update.
            pass.set_pipeline(&self.elementwise[CLIP_PARTIAL]);
            let mut last = None;
            for (i, (t, group)) in self.tensors.iter().zip(&self.groups).enumerate() {
                let Some(group) = group else { continue };
                pass.set_bind_group(0, group, &offset_of(i));
                let (x, y) = grid(tiles(t.len));
                pass.dispatch_workgroups(x, y, 1);
                last = Some((i, group));
            }
            if let Some((i, group)) = last {
                pass.set_pipeline(&self.elementwise[CLIP_FINISH]);
                pass.set_bind_group(0, group, &offset_of(i));
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        for (i, (t, group)) in self.tensors.iter().zip(&self.groups).enumerate() {
            let Some(group) = group else { continue };
            let offset = [(i as u64 * DESC_STRIDE) as u32];
            let run = |pass: &mut wgpu::ComputePass<'_>, entry: usize, (x, y): (u32, u32)| {
                pass.set_pipeline(&self.elementwise[entry]);
                pass.set_bind_group(0, group, &offset);
                pass.dispatch_workgroups(x, y, 1);
            };
            match self.which {
                Which::Muon => {
                    run(&mut pass, MUON_MOMENTUM, (linear(t.len), 1));
                    run(&mut pass, MUON_NORM_PARTIAL, grid(tiles(t.len)));
                    run(&mut pass, MUON_NORM, (1, 1));
                    run(&mut pass, MUON_SCALE, (linear(t.len), 1));
                    let gram_tiles = t.m.div_ceil(MATMUL_TILE);
                    let x_tiles = t.n.div_ceil(MATMUL_TILE);
                    for k in 0..ns_steps {
                        let from_x1 = k % 2 == 1;
                        let product = |pass: &mut wgpu::ComputePass<'_>,
                                       entry: usize,
                                       group: usize,
                                       (x, y): (u32, u32)| {
                            pass.set_pipeline(&self.products[entry]);
                            pass.set_bind_group(0, &self.product_groups[group], &offset);
                            pass.dispatch_workgroups(x, y, 1);
                        };
                        product(&mut pass, 0, from_x1 as usize, (gram_tiles, gram_tiles));
                        product(&mut pass, 1, 2, (gram_tiles, gram_tiles));
                        product(&mut pass, 2, 3 + from_x1 as usize, (x_tiles, gram_tiles));
                    }
                    run(&mut pass, MUON_APPLY, (linear(t.len), 1));
                }
                Which::Adafactor => {
                    if t.factored() {
                        run(&mut pass, ADAFACTOR_ROWS, grid(t.batch * t.rows));
                        run(&mut pass, ADAFACTOR_COLS, (linear(t.batch * t.cols), 1));
                        run(&mut pass, ADAFACTOR_ROW_MEAN, grid(t.batch));
                    }
                    run(&mut pass, ADAFACTOR_STATS_PARTIAL, grid(tiles(t.len)));
                    run(&mut pass, ADAFACTOR_STATS, (1, 1));
                    run(&mut pass, ADAFACTOR_APPLY, (linear(t.len), 1));
                }
            }
        }
    }
}

/// Muon's scalars: s0 = 1 − μ, s1 = μ, s2 = 1 − lr·weight_decay, s3 =
/// −adjusted lr, (s4, s5, s6) = (a, b, c), s7 = eps; as the CPU step
/// rounds them.
fn fill_muon(d: &mut MatrixDesc, muon: &Muon, t: &TensorPlan) {
    let s = muon.scalars(false);
    let (a, b, c) = muon.ns_coefficients;
    d.s = [
        s.one_minus_momentum,
        s.momentum,
        s.decay_factor,
        -muon.adjusted_lr(t.rows as usize, t.cols as usize) as f32,
        a as f32,
        b as f32,
        c as f32,
        muon.eps as f32,
    ];
    if muon.nesterov {
        d.flags |= FLAG_NESTEROV;
    }
    if t.tall {
        d.flags |= FLAG_TALL;
    }
    if muon.ns_steps % 2 == 1 {
        d.flags |= FLAG_OUT_IN_X1;
    }
}

/// Adafactor's scalars: s0 = 1 − β̂2, s1 = ρ, s2 = 1 − lr·weight_decay (1
/// without decay), s3 = eps1, s4 = eps1², s5 = eps2, s6 = d.
fn fill_adafactor(d: &mut MatrixDesc, af: &Adafactor, t: &TensorPlan, step: u64) {
    let s = af.scalars(false);
    let entry = af.step_entry(step);
    let decay = if af.weight_decay != 0.0 {
        s.decay_factor
    } else {
        1.0
    };
    d.s = [
        entry[0],
        entry[1],
        decay,
        s.eps1,
        s.eps1_squared,
        af.eps.1 as f32,
        af.d as f32,
        0.0,
    ];
    if af.maximize {
        d.flags |= FLAG_MAXIMIZE;
    }
    if t.factored() {
        d.flags |= FLAG_FACTORED;
    }
}
