//! The kernels: their WGSL composed from the shared parts in shaders/ and
//! the rule's own file, with the numbers Rust and WGSL share (the
//! workgroup size, the table length, the flags, the bindings, the uniform
//! structs) written into it from Rust; their bind group layouts, checked
//! against the device's limits; compilation, and the pipeline cache of
//! each context.
//!
//! A kernel's source is, in order: the prelude [`compose`] writes (`V` and
//! its u32 and bool types, the constants, `struct StepTail`, `struct
//! TileHeader`, `struct Uniforms`, the bindings), `shaders/common.wgsl`,
//! the prologue of its kind (`shaders/elementwise.wgsl`,
//! `shaders/tiles.wgsl`, or `shaders/views.wgsl` for tensors given as
//! views), then the rule's own file (its `struct Scalars`, its overrides,
//! its update; for views rewritten by `view_body`) or the reduction's.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::rules::{Config, KernelShape};

use super::optimizer::{GpuOptimizer, GpuOptions};
use super::uniforms::{StepTail, TileHeader, FLAGS, TABLE_LEN};

/// Threads per workgroup (`WORKGROUP_SIZE` in every kernel).
pub(super) const WORKGROUP_SIZE: u64 = 256;

/// Kernel variant: vector width and whether bounds checks are compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    pub(super) width: u32,
    pub(super) bounds_checked: bool,
    /// The kernel of an optimizer over views (`shaders/views.wgsl`): it
    /// reads each element's offsets from a tile table.
    pub(super) views: bool,
}

/// How a kernel reads a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    ReadWrite,
    /// The uniforms `u`, at a dynamic offset (the ring slot).
    Uniform,
}

/// One binding of a kernel: its WGSL name and type. Binding `i` of the
/// layout is entry `i` of [`Kernel::bindings`].
#[derive(Clone, Debug)]
pub(super) struct Binding {
    pub(super) name: &'static str,
    pub(super) access: Access,
    wgsl_type: &'static str,
}

impl Binding {
    const fn new(name: &'static str, access: Access, wgsl_type: &'static str) -> Self {
        Binding {
            name,
            access,
            wgsl_type,
        }
    }

    fn layout_entry(&self, binding: u32) -> wgpu::BindGroupLayoutEntry {
        let ty = match self.access {
            Access::Uniform => wgpu::BufferBindingType::Uniform,
            Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
            Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
        };
        wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: self.access == Access::Uniform,
                min_binding_size: None,
            },
            count: None,
        }
    }
}

/// A compiled kernel (one pipeline per entry point) and its bind group
/// layout, cached per context.
#[derive(Clone)]
pub(crate) struct Kernel {
    /// One pipeline per entry point.
    pub(super) pipelines: Vec<wgpu::ComputePipeline>,
    pub(super) layout: wgpu::BindGroupLayout,
    /// The bindings in binding order, by the names the WGSL gives them.
    pub(super) bindings: Vec<Binding>,
}

/// The bindings of an element-wise kernel: the parameters, the gradients,
/// the rule's state `slots`, `info` and `counters` (read only here), the
/// uniforms.
fn elementwise_bindings(slots: &[&'static str]) -> Vec<Binding> {
    let mut b = vec![
        Binding::new("param", Access::ReadWrite, "array<V>"),
        Binding::new("grad", Access::Read, "array<V>"),
    ];
    b.extend(
        slots
            .iter()
            .map(|s| Binding::new(s, Access::ReadWrite, "array<V>")),
    );
    b.extend([
        Binding::new("info", Access::Read, "array<f32>"),
        Binding::new("counters", Access::Read, "array<u32>"),
        Binding::new("u", Access::Uniform, "Uniforms"),
    ]);
    b
}

/// The bindings of every tile kernel (LAMB's and the reduction's): 8
/// storage buffers and one uniform, WebGPU's default limits.
const TILE_BINDINGS: [Binding; 9] = [
    Binding::new("param", Access::ReadWrite, "array<f32>"),
    Binding::new("grad", Access::Read, "array<f32>"),
    Binding::new("exp_avg", Access::ReadWrite, "array<f32>"),
    Binding::new("exp_avg_sq", Access::ReadWrite, "array<f32>"),
    Binding::new("tables", Access::Read, "array<vec4<u32>>"),
    Binding::new("partials", Access::ReadWrite, "array<vec2<f32>>"),
    Binding::new("info", Access::ReadWrite, "array<f32>"),
    Binding::new("u", Access::Uniform, "Uniforms"),
    Binding::new("counters", Access::ReadWrite, "array<u32>"),
];

/// What a composed kernel is.
#[derive(Clone, Copy)]
enum Kind {
    /// A rule's element-wise kernel, `V` this wide.
    Elementwise { width: u32 },
    /// Tile kernels; `rule`: with the rule's `struct Scalars` (LAMB) or
    /// without (the reduction).
    Tiles { rule: bool },
    /// A rule's element-wise kernel over views, `V` this wide: the
    /// prologue `shaders/views.wgsl`, the rule's file rewritten by
    /// [`view_body`].
    Views { width: u32 },
}

/// The whole source of a kernel: the prelude written here, then
/// common.wgsl, the prologue of `kind`, and `body` (the rule's file or the
/// reduction's). `constants` are the rule's own (LAMB's option bits).
fn compose(kind: Kind, bindings: &[Binding], constants: &[(&str, u32)], body: &str) -> String {
    let mut s = String::with_capacity(8192 + body.len());
    let vector = match kind {
        Kind::Elementwise { width: 4 } | Kind::Views { width: 4 } => "vec4<f32>",
        _ => "f32",
    };
    let (vu, vb) = if vector == "f32" {
        ("u32", "bool")
    } else {
        ("vec4<u32>", "vec4<bool>")
    };
    let _ = writeln!(s, "// Written by src/gpu/kernels.rs.");
    let _ = writeln!(s, "alias V = {vector};\nalias VU = {vu};\nalias VB = {vb};");
    let _ = writeln!(s, "const WORKGROUP_SIZE: u32 = {WORKGROUP_SIZE}u;");
    let _ = writeln!(s, "const TABLE_LEN: u32 = {TABLE_LEN}u;");
    for (name, value) in FLAGS.iter().chain(constants) {
        let _ = writeln!(s, "const {name}: u32 = {value}u;");
    }
    s.push_str(StepTail::WGSL);
    s.push_str(TileHeader::WGSL);
    let members = match kind {
        Kind::Elementwise { .. } | Kind::Views { .. } => {
            "    tail: StepTail,\n    rule: Scalars,\n"
        }
        Kind::Tiles { rule: true } => {
            "    tail: StepTail,\n    tiles: TileHeader,\n    rule: Scalars,\n"
        }
        Kind::Tiles { rule: false } => "    tail: StepTail,\n    tiles: TileHeader,\n",
    };
    let _ = write!(s, "struct Uniforms {{\n{members}}}\n");
    for (i, b) in bindings.iter().enumerate() {
        let space = match b.access {
            Access::Read => "storage, read",
            Access::ReadWrite => "storage, read_write",
            Access::Uniform => "uniform",
        };
        let _ = writeln!(
            s,
            "@group(0) @binding({i}) var<{space}> {}: {};",
            b.name, b.wgsl_type
        );
    }
    s.push_str(include_str!("../../shaders/common.wgsl"));
    s.push_str(match kind {
        Kind::Elementwise { .. } => include_str!("../../shaders/elementwise.wgsl"),
        Kind::Tiles { .. } => include_str!("../../shaders/tiles.wgsl"),
        Kind::Views { .. } => VIEWS_WGSL,
    });
    s.push_str(body);
    s
}

/// The prologue of the kernels over views.
const VIEWS_WGSL: &str = include_str!("../../shaders/views.wgsl");

/// The table of a view kernel's tiles (`view_tiles` in views.wgsl).
const VIEW_TILES: Binding = Binding::new("view_tiles", Access::Read, "array<vec4<u32>>");

/// A rule's file as the view kernel needs it: `update(i)` becomes
/// `update(i, pi, gi)`, and each `param[i]` / `grad[i]` reads `param[pi]` /
/// `grad[gi]` (the element's offsets in the bound windows of the caller's
/// buffers; `i` stays the state's index). One rule text serves both paths.
/// `None` when the file does not have the one `update(i: u32)` and the
/// accesses this rewriting knows.
fn view_body(source: &str) -> Option<String> {
    const SIGNATURE: &str = "fn update(i: u32)";
    if source.matches(SIGNATURE).count() != 1 {
        return None;
    }
    let s = source.replace(SIGNATURE, "fn update(i: u32, pi: u32, gi: u32)");
    let s = replace_access(&s, "param[i]", "param[pi]");
    let s = replace_access(&s, "grad[i]", "grad[gi]");
    // Any other access to the two bindings would index them with the
    // state's `i`.
    let left = |name: &str, kept: &str| {
        let mut at = 0;
        while let Some(k) = s[at..].find(name) {
            let start = at + k;
            let whole = start == 0 || !is_ident(s.as_bytes()[start - 1]);
            if whole && !s[start..].starts_with(kept) {
                return true;
            }
            at = start + name.len();
        }
        false
    };
    if left("param[", "param[pi]") || left("grad[", "grad[gi]") {
        return None;
    }
    Some(s)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `from` replaced by `to` where `from` is not the tail of a longer name
/// (`prev_grad[i]` stays).
fn replace_access(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len() + 64);
    let mut at = 0;
    while let Some(k) = s[at..].find(from) {
        let start = at + k;
        out.push_str(&s[at..start]);
        if start == 0 || !is_ident(s.as_bytes()[start - 1]) {
            out.push_str(to);
        } else {
            out.push_str(from);
        }
        at = start + from.len();
    }
    out.push_str(&s[at..]);
    out
}

/// The reduction's source (`shaders/reduce.wgsl`).
const REDUCE_WGSL: &str = include_str!("../../shaders/reduce.wgsl");
/// The reduction's entry points, in dispatch order.
const REDUCE_ENTRY_POINTS: [&str; 2] = ["clip_partials", "clip_finish"];

/// Workgroup memory of the tile kernels (tiles.wgsl): `sums`, 256
/// `vec2<f32>`, and `refused_wg`, one `u32`. The element-wise kernels use
/// none.
const TILE_WORKGROUP_BYTES: u64 = WORKGROUP_SIZE * 8 + 4;

/// Refuses, naming the limit, a device on which a kernel with these
/// bindings and this much workgroup memory cannot be built, before wgpu is
/// asked (wgpu would report a validation error without naming it).
fn check_kernel_limits(
    limits: &wgpu::Limits,
    what: &str,
    entries: &[Binding],
    workgroup_bytes: u64,
) -> Result<()> {
    let uniform = entries
        .iter()
        .filter(|e| e.access == Access::Uniform)
        .count() as u64;
    let storage = entries.len() as u64 - uniform;
    let bindings = entries.len() as u64;
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

/// The variant of these options with vectors `width` wide (1 or 4).
pub(super) fn variant(width: u32, options: &GpuOptions) -> Result<Variant> {
    if width != 1 && width != 4 {
        return Err(Error::InvalidOptions(format!(
            "vector_width must be 1 or 4, got {width}"
        )));
    }
    Ok(Variant {
        width,
        bounds_checked: !options.skip_bounds_checks,
        views: false,
    })
}

/// The GPU's answer to a matrix rule (Adafactor, Muon) given to a
/// constructor of the element-wise kernels (the caller's buffers, views,
/// groups): they run through src/gpu/matrix.rs only.
pub(crate) fn matrix_rule_unsupported(config: &Config) -> crate::Error {
    crate::Error::Unsupported(format!(
        "{} on the GPU through this constructor (the matrix rules take GpuOptimizer::new or with_shapes, with their own buffers)",
        config.kind()
    ))
}

/// The rule's kernel: the element-wise one (`main`), or LAMB's three tile
/// kernels; `momentum_buffer`: whether the state has one.
pub(super) fn kernel_for(
    ctx: &GpuContext,
    config: &Config,
    momentum_buffer: bool,
    variant: Variant,
) -> Result<Kernel> {
    let spec = config.kernel();
    let (name, source) = (spec.name, spec.source);
    let overrides = config.overrides(momentum_buffer);
    let limits = ctx.limits();
    let slots = match spec.shape {
        KernelShape::Tiled {
            entry_points,
            constants,
        } => {
            let bindings = TILE_BINDINGS.to_vec();
            check_kernel_limits(
                &limits,
                &format!("the {name} kernels"),
                &bindings,
                TILE_WORKGROUP_BYTES,
            )?;
            let kind = Kind::Tiles { rule: true };
            return compile(
                ctx,
                name,
                &compose(kind, &bindings, constants, source),
                entry_points,
                overrides,
                bindings,
                variant,
            );
        }
        KernelShape::ElementWise { slots } => slots,
        KernelShape::None => return Err(matrix_rule_unsupported(config)),
    };
    let mut bindings = elementwise_bindings(slots);
    if variant.views {
        let Some(body) = view_body(source) else {
            return Err(Error::Unsupported(format!(
                "the {name} kernel on tensor views"
            )));
        };
        // Before `u`, the last binding.
        bindings.insert(bindings.len() - 1, VIEW_TILES);
        check_kernel_limits(
            &limits,
            &format!("the {name} kernel on views"),
            &bindings,
            0,
        )?;
        return compile(
            ctx,
            name,
            &compose(
                Kind::Views {
                    width: variant.width,
                },
                &bindings,
                &[],
                &body,
            ),
            &["main"],
            overrides,
            bindings,
            variant,
        );
    }
    check_kernel_limits(&limits, &format!("the {name} kernel"), &bindings, 0)?;
    let kind = Kind::Elementwise {
        width: variant.width,
    };
    compile(
        ctx,
        name,
        &compose(kind, &bindings, &[], source),
        &["main"],
        overrides,
        bindings,
        variant,
    )
}

/// The reduction of clipping and `skip_nonfinite` (`shaders/reduce.wgsl`).
fn reduction_kernel(ctx: &GpuContext, variant: Variant) -> Result<Kernel> {
    let bindings = TILE_BINDINGS.to_vec();
    check_kernel_limits(
        &ctx.limits(),
        "the reduction of gradient clipping and skip_nonfinite",
        &bindings,
        TILE_WORKGROUP_BYTES,
    )?;
    let kind = Kind::Tiles { rule: false };
    compile(
        ctx,
        "reduce",
        &compose(kind, &bindings, &[], REDUCE_WGSL),
        &REDUCE_ENTRY_POINTS,
        vec![],
        bindings,
        // The same kernel serves views: their tile tables have its format.
        Variant {
            width: 1,
            views: false,
            ..variant
        },
    )
}

/// Compiles `source` (composed) with `overrides`, one pipeline per entry
/// point, or takes it from the context's cache.
fn compile(
    ctx: &GpuContext,
    name: &'static str,
    source: &str,
    entry_points: &[&str],
    overrides: Vec<(&'static str, f64)>,
    bindings: Vec<Binding>,
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
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .enumerate()
        .map(|(i, b)| b.layout_entry(i as u32))
        .collect();
    let kernel = ctx.scoped("compiling a kernel", || {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = if variant.bounds_checked {
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
            bindings,
        }
    })?;
    if let Ok(mut p) = ctx.pipelines.lock() {
        p.insert(key, kernel.clone());
    }
    Ok(kernel)
}

impl GpuOptimizer {
    /// Builds the reduction (clipping's norm, `skip_nonfinite`'s check) on
    /// first use, so that optimizers that never turn either on do not need
    /// what it needs; a device that cannot host it refuses here
    /// ([`Error::DeviceLimit`]) and nothing changes.
    pub(super) fn ensure_reduction(&mut self) -> Result<()> {
        if self.matrix.is_some() {
            // Their tensors live in buffers of their own, which the tile
            // reduction (one binding per chunk of the packed tensors) does
            // not cover; they clip with their own kernels, and cannot skip.
            return Err(Error::Unsupported(format!(
                "skip_nonfinite for {} on the GPU",
                self.config.kind()
            )));
        }
        if self.reduction.is_some() {
            return Ok(());
        }
        let kernel = reduction_kernel(&self.ctx, self.variant)?;
        self.attach_tile_groups(&kernel)?;
        self.reduction = Some(kernel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::uniforms::{TAIL_BYTES, TILE_HEADER_BYTES};
    use crate::rules::RuleKind;
    use wgpu::naga;

    /// Parses and validates a composed kernel as wgpu would (no device
    /// needed).
    fn module(source: &str) -> naga::Module {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{}\n{source}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
        module
    }

    /// The size of struct `name` and the offset of each member.
    fn layout(module: &naga::Module, name: &str) -> (u32, Vec<(String, u32)>) {
        let (_, ty) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no struct {name}"));
        match &ty.inner {
            naga::TypeInner::Struct { members, span } => (
                *span,
                members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
                    .collect(),
            ),
            _ => panic!("{name} is not a struct"),
        }
    }

    /// Every kernel composes into a valid module, and each uniform struct
    /// the WGSL declares has the size of the Rust struct the host writes,
    /// at the offset the host writes it: a field added to one side only
    /// fails here, not as wrong numbers on a GPU.
    #[test]
    fn composed_kernels_match_the_host_structs() {
        for kind in RuleKind::ALL {
            let config = kind.default_config();
            let spec = config.kernel();
            let (name, source) = (spec.name, spec.source);
            let rule_bytes = config.step_scalars(false).bytes().len() as u32;
            let sources = match spec.shape {
                KernelShape::Tiled { constants, .. } => vec![(
                    compose(
                        Kind::Tiles { rule: true },
                        &TILE_BINDINGS,
                        constants,
                        source,
                    ),
                    (TAIL_BYTES + TILE_HEADER_BYTES) as u32,
                )],
                // The matrix rules have no kernel yet.
                KernelShape::None => continue,
                KernelShape::ElementWise { slots } => {
                    let bindings = elementwise_bindings(slots);
                    [1, 4]
                        .map(|width| {
                            let kind = Kind::Elementwise { width };
                            (compose(kind, &bindings, &[], source), TAIL_BYTES as u32)
                        })
                        .to_vec()
                }
            };
            for (source, rule_offset) in sources {
                let m = module(&source);
                assert_eq!(layout(&m, "Scalars").0, rule_bytes, "{name}: Scalars");
                let (_, members) = layout(&m, "Uniforms");
                let rule = members.iter().find(|(n, _)| n == "rule").unwrap();
                assert_eq!(
                    rule.1, rule_offset,
                    "{name}: where the rule's scalars start"
                );
                assert_eq!(layout(&m, "StepTail").0 as usize, TAIL_BYTES);
                assert_eq!(layout(&m, "TileHeader").0 as usize, TILE_HEADER_BYTES);
                assert!(rule_offset + rule_bytes <= super::super::uniforms::UNIFORM_STRIDE as u32);
            }
        }
        let reduce = module(&compose(
            Kind::Tiles { rule: false },
            &TILE_BINDINGS,
            &[],
            REDUCE_WGSL,
        ));
        let (_, members) = layout(&reduce, "Uniforms");
        assert_eq!(
            members,
            [
                ("tail".to_string(), 0),
                ("tiles".to_string(), TAIL_BYTES as u32)
            ]
        );
    }

    /// Every element-wise rule's file rewrites into a valid view kernel
    /// whose `param` and `grad` are indexed only by the window offsets, and
    /// the rewriting leaves a longer name that ends in `grad` alone.
    #[test]
    fn view_kernels_compose() {
        for kind in RuleKind::ALL {
            let config = kind.default_config();
            let spec = config.kernel();
            let KernelShape::ElementWise { slots } = spec.shape else {
                continue;
            };
            let body = view_body(spec.source).unwrap_or_else(|| panic!("{}", spec.name));
            assert!(!body.contains("param[i]") && !body.contains("grad[i]"));
            assert!(body.contains("param[pi]") && body.contains("grad[gi]"));
            let mut bindings = elementwise_bindings(slots);
            bindings.insert(bindings.len() - 1, VIEW_TILES);
            for width in [1, 4] {
                module(&compose(Kind::Views { width }, &bindings, &[], &body));
            }
        }
        assert_eq!(
            replace_access("prev_grad[i] + grad[i]", "grad[i]", "grad[gi]"),
            "prev_grad[i] + grad[gi]"
        );
        assert!(view_body("fn update(i: u32) { let a = grad[i + 1u]; }").is_none());
        assert!(view_body("fn other() {}").is_none());
    }

    /// The numbers shared with Rust come from Rust: the rule files and the
    /// shared parts hold no binding numbers, workgroup sizes or flag values
    /// of their own.
    #[test]
    fn shaders_hold_no_shared_numbers() {
        let files = [
            include_str!("../../shaders/common.wgsl"),
            include_str!("../../shaders/elementwise.wgsl"),
            include_str!("../../shaders/tiles.wgsl"),
            VIEWS_WGSL,
            REDUCE_WGSL,
        ];
        let rules = RuleKind::ALL.map(|k| k.default_config().kernel().source);
        for text in files.iter().chain(&rules) {
            for needle in [
                "@binding(",
                "@workgroup_size(2",
                "const FLAG_",
                "const LAMB_",
                ", 32>",
                "256u",
            ] {
                assert!(!text.contains(needle), "{needle} in a shader file");
            }
        }
    }
}
