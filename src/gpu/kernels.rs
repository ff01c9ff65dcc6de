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
    /// Parameter groups of the grouped kernel (`shaders/groups.wgsl`),
    /// whose uniforms hold this many groups' scalars; 0 for the one-group
    /// kernels.
    pub(super) groups: u32,
    /// 16-bit storage ([`Packed16`]); `None` for f32 everywhere.
    pub(super) packed16: Option<Packed16>,
    /// 8-bit blockwise state ([`Blockwise`]); `None` otherwise.
    pub(super) blockwise: Option<Blockwise>,
}

/// The 8-bit blockwise kernel of a rule (`shaders/blockwise.wgsl`): which
/// of the rule's state slots it keeps (bit `k`: slot `k`), each in 8-bit
/// codes with its absmax per block, the map picked by the slot's name
/// (`precision::store::state_sign`). The other slots have no binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Blockwise {
    pub(crate) in_use: u32,
}

/// Where the 8-bit kernel's `blocks` binding keeps what it holds (u32
/// words): the signed map at 0, the unsigned at [`WORKGROUP_SIZE`] (one
/// entry a thread), the header (blocks, a zero word), then 4 words a
/// block; `BW_F32` marks a block of f32 state (a tensor under
/// `MIN_8BIT_SIZE`).
pub(super) const BW_MAPS: u32 = 2 * WORKGROUP_SIZE as u32;
pub(super) const BW_HEADER: u32 = BW_MAPS;
pub(super) const BW_ENTRIES: u32 = BW_HEADER + 4;
pub(super) const BW_F32: u32 = u32::MAX;
const _: () = assert!(WORKGROUP_SIZE as usize == crate::precision::blockwise::BLOCK);

/// How a kernel with 16-bit storage keeps the parameters: it steps pairs
/// of elements (`V` is `vec2<f32>`), each pair of 16-bit values one `u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Param16 {
    /// f32 parameters.
    F32,
    /// bf16 parameters (`param16`, the model's) behind an f32 master
    /// (`param`), rounded to nearest even on every store.
    MasterBf16,
    /// bf16 parameters (`param`, words) rounded stochastically, no master.
    StochasticBf16,
    /// f16 parameters (`param16`) behind an f32 master (`param`), rounded
    /// to nearest even on every store.
    MasterF16,
}

/// The 16-bit storage of a kernel: the parameters' and whether every
/// state slot is bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Packed16 {
    pub(crate) param: Param16,
    pub(crate) state_bf16: bool,
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
    /// without (the reduction). LAMB's kernels compute on `vec4`s (`V`) and
    /// read their four arrays through the accessors [`tile_accessors`]
    /// writes for bindings `width` (1 or 4) wide.
    Tiles { rule: bool, width: u32 },
    /// A rule's element-wise kernel over views, `V` this wide: the
    /// prologue `shaders/views.wgsl`, the rule's file rewritten by
    /// [`view_body`].
    Views { width: u32 },
    /// A rule's element-wise kernel over several parameter groups, `V`
    /// this wide: the prologue `shaders/groups.wgsl` (on views
    /// `shaders/views.wgsl`), the rule's file rewritten by
    /// [`grouped_body`] (on views after [`view_body`]), uniforms of
    /// `groups` groups.
    Grouped {
        width: u32,
        groups: u32,
        views: bool,
    },
    /// A rule's element-wise kernel with 16-bit storage: `V` is
    /// `vec2<f32>`, the prologue `shaders/elementwise.wgsl` after
    /// `shaders/packed16.wgsl`, the rule's file rewritten by
    /// [`packed16_body`].
    Packed16,
    /// A rule's element-wise kernel with 8-bit blockwise state: `V` is
    /// `f32`, the entry point `shaders/blockwise.wgsl`, the rule's file
    /// rewritten by [`blockwise_body`].
    Blockwise,
}

/// The whole source of a kernel: the prelude written here, then
/// common.wgsl, the prologue of `kind`, and `body` (the rule's file or the
/// reduction's). `constants` are the rule's own (LAMB's option bits).
fn compose(kind: Kind, bindings: &[Binding], constants: &[(&str, u32)], body: &str) -> String {
    let mut s = String::with_capacity(8192 + body.len());
    let vector = match kind {
        Kind::Elementwise { width: 4 }
        | Kind::Views { width: 4 }
        | Kind::Grouped { width: 4, .. }
        | Kind::Tiles { rule: true, .. } => "vec4<f32>",
        Kind::Packed16 => "vec2<f32>",
        _ => "f32",
    };
    let (vu, vb) = match vector {
        "f32" => ("u32", "bool"),
        "vec2<f32>" => ("vec2<u32>", "vec2<bool>"),
        _ => ("vec4<u32>", "vec4<bool>"),
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
        Kind::Elementwise { .. } | Kind::Views { .. } | Kind::Packed16 | Kind::Blockwise => {
            "    tail: StepTail,\n    rule: Scalars,\n"
        }
        Kind::Tiles { rule: true, .. } => {
            "    tail: StepTail,\n    tiles: TileHeader,\n    rule: Scalars,\n"
        }
        Kind::Tiles { rule: false, .. } => "    tail: StepTail,\n    tiles: TileHeader,\n",
        Kind::Grouped { .. } => "    tail: StepTail,\n    groups: array<GroupEntry, GROUPS>,\n",
    };
    if let Kind::Grouped { groups, .. } = kind {
        let _ = writeln!(s, "const GROUPS: u32 = {groups}u;");
        s.push_str(GROUP_ENTRY_WGSL);
    }
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
    if let Kind::Tiles { rule: true, width } = kind {
        s.push_str(&tile_accessors(width));
    }
    s.push_str(include_str!("../../shaders/common.wgsl"));
    if let Kind::Packed16 | Kind::Blockwise = kind {
        s.push_str(PACKED16_WGSL);
    }
    // views.wgsl's two hooks: one group's step table once a workgroup, or
    // each tile's group from the bits above its length.
    match kind {
        Kind::Views { .. } => s.push_str(
            "fn begin_views() { begin_step(u.tail.table[table_index()]); }\n\
             fn select_tile(w: u32) -> u32 { return w; }\n",
        ),
        Kind::Grouped { views: true, .. } => {
            let _ = write!(
                s,
                "fn begin_views() {{}}\n\
                 fn select_tile(w: u32) -> u32 {{\n\
                 \x20   select_group(w >> {VIEW_TILE_LEN_BITS}u);\n\
                 \x20   return w & {}u;\n}}\n",
                (1u32 << VIEW_TILE_LEN_BITS) - 1
            );
        }
        _ => {}
    }
    s.push_str(match kind {
        Kind::Elementwise { .. } | Kind::Packed16 => include_str!("../../shaders/elementwise.wgsl"),
        Kind::Blockwise => BLOCKWISE_WGSL,
        Kind::Tiles { .. } => include_str!("../../shaders/tiles.wgsl"),
        Kind::Views { .. } => VIEWS_WGSL,
        Kind::Grouped { views: false, .. } => GROUPS_WGSL,
        Kind::Grouped { views: true, .. } => VIEWS_WGSL,
    });
    s.push_str(body);
    s
}

/// The arrays LAMB's tile kernels read and write, with whether they are
/// written.
const TILE_ARRAYS: [(&str, bool); 4] = [
    ("param", true),
    ("grad", false),
    ("exp_avg", true),
    ("exp_avg_sq", true),
];

/// LAMB's tile bindings for arrays `width` wide: [`TILE_BINDINGS`] with
/// the four arrays of [`TILE_ARRAYS`] as `array<vec4<f32>>` when `width`
/// is 4 (the bind groups are the same: a layout does not type its arrays).
fn lamb_tile_bindings(width: u32) -> Vec<Binding> {
    let mut bindings = TILE_BINDINGS.to_vec();
    if width == 4 {
        for b in &mut bindings {
            if TILE_ARRAYS.iter().any(|(name, _)| *name == b.name) {
                b.wgsl_type = "array<vec4<f32>>";
            }
        }
    }
    bindings
}

/// For each array of [`TILE_ARRAYS`] bound `width` wide: `load4_NAME(q)`
/// and `store4_NAME(q, x)`, the `vec4` of elements `4q .. 4q + 3`, and
/// `load1_NAME(i)`, `store1_NAME(i, x)`, element `i`. With `width` 4 the
/// vector ones are single vector accesses and the scalar ones address a
/// component (a store writes that component only, so two workgroups may
/// write the two ends of one `vec4`); with `width` 1 the vector ones are
/// four scalar accesses. The kernels' arithmetic is the same for both.
fn tile_accessors(width: u32) -> String {
    let mut s = String::new();
    for (name, written) in TILE_ARRAYS {
        if width == 4 {
            let _ = writeln!(
                s,
                "fn load4_{name}(q: u32) -> vec4<f32> {{ return {name}[q]; }}
                 fn load1_{name}(i: u32) -> f32 {{ return {name}[i >> 2u][i & 3u]; }}"
            );
            if written {
                let _ = writeln!(
                    s,
                    "fn store4_{name}(q: u32, x: vec4<f32>) {{ {name}[q] = x; }}
                     fn store1_{name}(i: u32, x: f32) {{ {name}[i >> 2u][i & 3u] = x; }}"
                );
            }
        } else {
            let _ = writeln!(
                s,
                "fn load4_{name}(q: u32) -> vec4<f32> {{ let i = 4u * q;                  return vec4<f32>({name}[i], {name}[i + 1u], {name}[i + 2u], {name}[i + 3u]); }}
                 fn load1_{name}(i: u32) -> f32 {{ return {name}[i]; }}"
            );
            if written {
                let _ = writeln!(
                    s,
                    "fn store4_{name}(q: u32, x: vec4<f32>) {{ let i = 4u * q;                      {name}[i] = x.x; {name}[i + 1u] = x.y; {name}[i + 2u] = x.z;                      {name}[i + 3u] = x.w; }}
                     fn store1_{name}(i: u32, x: f32) {{ {name}[i] = x; }}"
                );
            }
        }
    }
    s
}

/// The prologue of the kernels over views.
const VIEWS_WGSL: &str = include_str!("../../shaders/views.wgsl");

/// The table of a view kernel's tiles (`view_tiles` in views.wgsl).
const VIEW_TILES: Binding = Binding::new("view_tiles", Access::Read, "array<vec4<u32>>");

/// The 16-bit formats' WGSL (`shaders/packed16.wgsl`).
const PACKED16_WGSL: &str = include_str!("../../shaders/packed16.wgsl");

/// The 8-bit state's entry point (`shaders/blockwise.wgsl`).
const BLOCKWISE_WGSL: &str = include_str!("../../shaders/blockwise.wgsl");

/// The model's 16-bit parameters in the 8-bit kernel, written a half word
/// at a time.
const PARAM16_ATOMIC: Binding = Binding::new("param16", Access::ReadWrite, "array<atomic<u32>>");

/// The 8-bit kernel's table of blocks and maps.
const BLOCKS: Binding = Binding::new("blocks", Access::Read, "array<u32>");

/// The constants of the 8-bit kernel's `blocks` binding.
const BLOCKWISE_CONSTANTS: [(&str, u32); 4] = [
    ("BW_MAPS", BW_MAPS),
    ("BW_HEADER", BW_HEADER),
    ("BW_ENTRIES", BW_ENTRIES),
    ("BW_F32", BW_F32),
];

/// The bindings of the 8-bit kernel: the element-wise ones with only the
/// slots in use, as `u32` words, and `blocks` before `info`.
fn blockwise_bindings(slots: &[&'static str], bw: Blockwise, param: Param16) -> Vec<Binding> {
    let param_type = match param {
        Param16::StochasticBf16 => "array<atomic<u32>>",
        _ => "array<f32>",
    };
    let mut b = vec![
        Binding::new("param", Access::ReadWrite, param_type),
        Binding::new("grad", Access::Read, "array<f32>"),
    ];
    b.extend(
        slots
            .iter()
            .enumerate()
            .filter(|(k, _)| bw.in_use & (1 << k) != 0)
            .map(|(_, s)| Binding::new(s, Access::ReadWrite, "array<u32>")),
    );
    match param {
        Param16::MasterBf16 | Param16::MasterF16 => b.push(PARAM16_ATOMIC),
        Param16::StochasticBf16 => b.push(CHUNK_BASE),
        Param16::F32 => {}
    }
    b.extend([
        BLOCKS,
        Binding::new("info", Access::Read, "array<f32>"),
        Binding::new("counters", Access::Read, "array<u32>"),
        Binding::new("u", Access::Uniform, "Uniforms"),
    ]);
    b
}

/// A rule's file as the 8-bit kernel needs it: every access `NAME[i]` to
/// a state slot read through `load_NAME(i)` (the value dequantized, or
/// the f32 of a small tensor's block) and every store made
/// `store_NAME(i, e);`, which keeps the new value for the block's
/// quantization (`bw_store_block`, written here, after the block's
/// update). A slot not in use reads 0 and stores nothing (it has no
/// binding). `None` when a store is not a whole `NAME[i] = e;` statement.
///
/// With 16-bit parameters (behind an f32 master, `param16`, or rounded
/// stochastically, `param` itself; a pair of elements a word) the rounded
/// values are written after the block's update: a pair inside the block
/// as one word, a pair that straddles two blocks (whose two workgroups
/// both write the word) a half at a time, with atomics on that half only.
fn blockwise_body(source: &str, slots: &[&str], bw: Blockwise, param: Param16) -> Option<String> {
    let mut s = source.to_string();
    let mut helpers = String::new();
    let pack = match param {
        Param16::MasterBf16 => Some("bf16_nearest"),
        Param16::MasterF16 => Some("f16_nearest"),
        Param16::F32 => None,
        Param16::StochasticBf16 => {
            // The parameters are the bf16 words themselves: each read an
            // atomic load of the word (the other half may be another
            // workgroup's), each store its half rounded stochastically
            // with element k's bits of this step (`CounterRng`, as
            // packed16_body's).
            s = rewrite_stores(&s, "param")?;
            s = replace_access(&s, "param[i]", "load_param(i)");
            helpers.push_str(
                "fn load_param(i: u32) -> f32 {\n\
                 \x20   let w = atomicLoad(&param[i >> 1u]);\n\
                 \x20   return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));\n}\n\
                 fn store_param(i: u32, v: f32) {\n\
                 \x20   let r = lowbias32((chunk_base[0] + i) ^ u.tail.sr_key);\n\
                 \x20   wg_half[blk_lid] = bf16_stochastic(v, r);\n}\n",
            );
            None
        }
    };
    if let Some(pack) = pack {
        s = rewrite_stores(&s, "param")?;
        let _ = write!(
            helpers,
            "fn store_param(i: u32, v: f32) {{\n\
             \x20   param[i] = v;\n\
             \x20   wg_half[blk_lid] = {pack}(v);\n}}\n"
        );
    }
    // 16-bit parameters: each thread's rounded value waits in `wg_half`
    // until the block's barrier; then a pair inside the block is one
    // word (an atomic store: the binding is atomic), and only a pair
    // that straddles the block's start or end, shared with the
    // neighbouring block's workgroup, is written a half at a time (clear,
    // then set, with atomics on that half only).
    let words16 = match param {
        Param16::MasterBf16 | Param16::MasterF16 => Some("param16"),
        Param16::StochasticBf16 => Some("param"),
        Param16::F32 => None,
    };
    let (store16, store16_f32) = match words16 {
        None => (String::new(), String::new()),
        Some(w) => {
            let _ = write!(
                helpers,
                "var<workgroup> wg_half: array<u32, WORKGROUP_SIZE>;\n\
                 fn bw_store_param16(lid: u32, start: u32, len: u32) {{\n\
                 \x20   if (lid >= len) {{ return; }}\n\
                 \x20   let e = start + lid;\n\
                 \x20   let h = wg_half[lid];\n\
                 \x20   if ((e & 1u) == 0u) {{\n\
                 \x20       if (lid + 1u < len) {{\n\
                 \x20           atomicStore(&{w}[e >> 1u], h | (wg_half[lid + 1u] << 16u));\n\
                 \x20       }} else {{\n\
                 \x20           atomicAnd(&{w}[e >> 1u], 0xffff0000u);\n\
                 \x20           atomicOr(&{w}[e >> 1u], h);\n\
                 \x20       }}\n\
                 \x20   }} else if (lid == 0u) {{\n\
                 \x20       atomicAnd(&{w}[e >> 1u], 0xffffu);\n\
                 \x20       atomicOr(&{w}[e >> 1u], h << 16u);\n\
                 \x20   }}\n}}\n"
            );
            (
                "    bw_store_param16(lid, start, len);\n".to_string(),
                "        workgroupBarrier();\n\
                 \x20       bw_store_param16(lid, start, len);\n\
                 \x20       workgroupBarrier();\n"
                    .to_string(),
            )
        }
    };
    let (mut red_init, mut red_step, mut quantize) = (String::new(), String::new(), String::new());
    let mut reciprocal = String::new();
    let (mut pack, mut absmax, mut f32_stores) = (String::new(), String::new(), String::new());
    for (k, name) in slots.iter().enumerate() {
        s = rewrite_stores(&s, name)?;
        s = replace_access(&s, &format!("{name}[i]"), &format!("load_{name}(i)"));
        if bw.in_use & (1 << k) == 0 {
            let _ = write!(
                helpers,
                "fn load_{name}(i: u32) -> f32 {{ return 0.0; }}\n\
                 fn store_{name}(i: u32, v: f32) {{}}\n"
            );
            continue;
        }
        let off = match crate::precision::store::state_sign(name) {
            Some(false) => WORKGROUP_SIZE,
            _ => 0,
        };
        let _ = write!(
            helpers,
            "var<private> new_{name}: f32;\n\
             var<workgroup> wg_red_{name}: array<u32, WORKGROUP_SIZE>;\n\
             var<workgroup> wg_codes_{name}: array<u32, WORKGROUP_SIZE>;\n\
             var<workgroup> wg_inv_{name}: f32;\n\
             fn load_{name}(i: u32) -> f32 {{\n\
             \x20   var v: f32;\n\
             \x20   if (blk_absmax == BW_F32) {{\n\
             \x20       v = bitcast<f32>({name}[blk_word + blk_lid]);\n\
             \x20   }} else {{\n\
             \x20       let w = {name}[blk_word + (blk_lid >> 2u)];\n\
             \x20       v = bw_dequantize(bw_code(w, blk_lid), {off}u, bitcast<f32>({name}[blk_absmax]));\n\
             \x20   }}\n\
             \x20   new_{name} = v;\n\
             \x20   return v;\n}}\n\
             fn store_{name}(i: u32, v: f32) {{ new_{name} = v; }}\n"
        );
        let _ = writeln!(
            f32_stores,
            "        if (inside) {{ {name}[word + lid] = bitcast<u32>(new_{name}); }}"
        );
        let _ = writeln!(
            red_init,
            "    wg_red_{name}[lid] = select(0u, bitcast<u32>(new_{name}) & 0x7fffffffu, inside);"
        );
        let _ = writeln!(
            red_step,
            "            wg_red_{name}[lid] = max(wg_red_{name}[lid], wg_red_{name}[lid + s]);"
        );
        let _ = writeln!(
            reciprocal,
            "        wg_inv_{name} = bw_reciprocal(bitcast<f32>(wg_red_{name}[0]));"
        );
        let _ = write!(
            quantize,
            "    let m_{name} = bitcast<f32>(wg_red_{name}[0]);\n\
             \x20   wg_codes_{name}[lid] = select(0u, bw_quantize(new_{name}, m_{name}, \
             wg_inv_{name}, {off}u), inside);\n"
        );
        let _ = write!(
            pack,
            "        {name}[word + lid] = wg_codes_{name}[k] | (wg_codes_{name}[k + 1u] << 8u)\n\
             \x20           | (wg_codes_{name}[k + 2u] << 16u) | (wg_codes_{name}[k + 3u] << 24u);\n"
        );
        let _ = writeln!(absmax, "        {name}[absmax] = bitcast<u32>(m_{name});");
    }
    // Every slot at once: one reduction tree (the largest magnitude's bits,
    // which order as the values do, NaN above ∞) and one round of codes,
    // so a block costs the same barriers whatever the number of states.
    let _ = write!(
        helpers,
        "// Stores the block's new state: f32 words, or the codes and absmax.\n\
         fn bw_store_block(lid: u32, start: u32, len: u32, word: u32, absmax: u32) {{\n\
         \x20   let inside = lid < len;\n\
         \x20   // Every thread's reads of the block's words come before any\n\
         \x20   // thread's writes to them.\n\
         \x20   storageBarrier();\n\
         \x20   if (absmax == BW_F32) {{\n{f32_stores}{store16_f32}        return;\n    }}\n\
         {red_init}\
         \x20   workgroupBarrier();\n\
         {store16}\
         \x20   for (var s = WORKGROUP_SIZE / 2u; s > 0u; s = s / 2u) {{\n\
         \x20       if (lid < s) {{\n{red_step}        }}\n\
         \x20       workgroupBarrier();\n\
         \x20   }}\n\
         \x20   // 1/absmax once a block (an integer division: not every thread's).\n\
         \x20   if (lid == 0u) {{\n{reciprocal}    }}\n\
         \x20   workgroupBarrier();\n\
         {quantize}\
         \x20   workgroupBarrier();\n\
         \x20   if (lid < (len + 3u) / 4u) {{\n\
         \x20       let k = 4u * lid;\n{pack}    }}\n\
         \x20   if (lid == 0u) {{\n{absmax}    }}\n\
         \x20   workgroupBarrier();\n}}\n"
    );
    Some(helpers + &s)
}

/// The extra bindings of 16-bit storage: the model's bf16 parameters
/// behind a master, and the chunk's first element (stochastic rounding's
/// counter).
const PARAM16: Binding = Binding::new("param16", Access::ReadWrite, "array<u32>");
const CHUNK_BASE: Binding = Binding::new("chunk_base", Access::Read, "array<u32>");

/// A rule's file as a kernel with 16-bit storage needs it: every access
/// `NAME[i]` to a 16-bit binding read through `load_NAME(i)` and every
/// store `NAME[i] = e;` made `store_NAME(i, e);`, both written here (a
/// pair of bf16 in one `u32`: unpacked exactly, packed rounded to nearest
/// even, or stochastically for the parameters without a master). With a
/// master the parameters' reads stay f32 and each store writes both.
/// `None` when a store is not a whole `NAME[i] = e;` statement.
fn packed16_body(source: &str, slots: &[&str], packed: Packed16) -> Option<String> {
    let mut s = source.to_string();
    let mut helpers = String::new();
    let mut words: Vec<&str> = Vec::new();
    if packed.state_bf16 {
        words.extend(slots);
    }
    match packed.param {
        Param16::F32 => {}
        Param16::StochasticBf16 => {
            words.push("param");
            // Element k's bits are CounterRng's for this step at counter k
            // (`u.tail.sr_key`, the step's part, from the host), k counted
            // from the optimizer's first element (`chunk_base[0]`, the
            // chunk's).
            helpers.push_str(
                "fn pack_bf16_stochastic(v: vec2<f32>, i: u32) -> u32 {\n\
                 \x20   let k = chunk_base[0] + 2u * i;\n\
                 \x20   let r0 = lowbias32(k ^ u.tail.sr_key);\n\
                 \x20   let r1 = lowbias32((k + 1u) ^ u.tail.sr_key);\n\
                 \x20   return bf16_stochastic(v.x, r0) | (bf16_stochastic(v.y, r1) << 16u);\n}\n",
            );
        }
        Param16::MasterBf16 | Param16::MasterF16 => {
            s = rewrite_stores(&s, "param")?;
            let pack = match packed.param {
                Param16::MasterF16 => "pack_f16",
                _ => "pack_bf16",
            };
            let _ = write!(
                helpers,
                "fn store_param(i: u32, v: V) {{\n    param[i] = v;\n    param16[i] = {pack}(v);\n}}\n"
            );
        }
    }
    for name in words {
        s = rewrite_stores(&s, name)?;
        s = replace_access(&s, &format!("{name}[i]"), &format!("load_{name}(i)"));
        let pack = if name == "param" {
            "pack_bf16_stochastic(v, i)"
        } else {
            "pack_bf16(v)"
        };
        let _ = write!(
            helpers,
            "fn load_{name}(i: u32) -> V {{\n    return unpack_bf16({name}[i]);\n}}\n\
             fn store_{name}(i: u32, v: V) {{\n    {name}[i] = {pack};\n}}\n"
        );
    }
    Some(helpers + &s)
}

/// Each statement `name[i] = e;` of `source` as `store_name(i, e);`;
/// `None` when `name[i]` is assigned any other way (`+=`, ...).
fn rewrite_stores(source: &str, name: &str) -> Option<String> {
    let target = format!("{name}[i] =");
    let mut out = String::with_capacity(source.len() + 64);
    let mut at = 0;
    while let Some(k) = source[at..].find(&target) {
        let start = at + k;
        let whole = start == 0 || !is_ident(source.as_bytes()[start - 1]);
        let after = start + target.len();
        if !whole || source[after..].starts_with('=') {
            out.push_str(&source[at..after]);
            at = after;
            continue;
        }
        let end = after + source[after..].find(';')?;
        out.push_str(&source[at..start]);
        let _ = write!(out, "store_{name}(i, {});", source[after..end].trim());
        at = end + 1;
    }
    out.push_str(&source[at..]);
    for op in ["+=", "-=", "*=", "/="] {
        if out.contains(&format!("{name}[i] {op}")) {
            return None;
        }
    }
    Some(out)
}

/// The prologue of the kernels over several parameter groups.
const GROUPS_WGSL: &str = include_str!("../../shaders/groups.wgsl");

/// Bits of a grouped view tile's last word that hold its length; the group
/// is in the bits above (`select_tile`, written by [`compose`]). A tile is
/// at most 4096 elements.
pub(super) const VIEW_TILE_LEN_BITS: u32 = 16;

/// The table of a grouped kernel's tiles (`group_tiles` in groups.wgsl).
const GROUP_TILES: Binding = Binding::new("group_tiles", Access::Read, "array<vec4<u32>>");

/// One group's part of a grouped kernel's uniforms: its step table, its
/// rule scalars, its option bits (`GroupEntry` in [`grouped_uniforms`]'s
/// bytes).
const GROUP_ENTRY_WGSL: &str = "struct GroupEntry {
    table: array<vec4<f32>, TABLE_LEN>,
    rule: Scalars,
    options: vec4<u32>,
}
";

/// The options of a rule file, its `override NAME: bool = DEFAULT;`
/// lines, in order: bit `k` of a group's option word is option `k`'s
/// value in the grouped kernel. `None` for an override that is not a
/// `bool` with a default (the grouped kernel could not set it).
pub(super) fn rule_options(source: &str) -> Option<Vec<(&str, bool)>> {
    let mut options = Vec::new();
    for line in source.lines() {
        let Some(rest) = line.trim().strip_prefix("override ") else {
            continue;
        };
        let (name, rest) = rest.split_once(':')?;
        let default = match rest.trim() {
            "bool = false;" => false,
            "bool = true;" => true,
            _ => return None,
        };
        options.push((name.trim(), default));
    }
    Some(options)
}

/// A rule's file as the grouped kernel needs it: every option a private
/// variable and `u.rule` the private `group_rule`, both set per tile from
/// the tile's group by `select_group`, written here. One rule text serves
/// every path.
fn grouped_body(source: &str) -> Option<String> {
    let options = rule_options(source)?;
    let mut s = String::with_capacity(source.len() + 1024);
    for line in source.lines() {
        match line.trim().strip_prefix("override ") {
            Some(rest) => {
                let name = rest.split_once(':').map_or(rest, |(n, _)| n).trim();
                let _ = writeln!(s, "var<private> {name}: bool;");
            }
            None => {
                s.push_str(&line.replace("u.rule.", "group_rule."));
                s.push('\n');
            }
        }
    }
    s.push_str("var<private> group_rule: Scalars;\n\n");
    s.push_str("// Group g's scalars and options, then its entry of the step table.\n");
    s.push_str("fn select_group(g: u32) {\n    group_rule = u.groups[g].rule;\n");
    s.push_str("    let options = u.groups[g].options.x;\n");
    for (k, (name, _)) in options.iter().enumerate() {
        let _ = writeln!(s, "    {name} = (options & {}u) != 0u;", 1u32 << k);
    }
    s.push_str("    begin_step(u.groups[g].table[table_index()]);\n}\n");
    Some(s)
}

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

/// Workgroup memory of the 8-bit kernel (blockwise.wgsl): the two maps,
/// one flag, and for each slot in 8 bits its absmax reduction and codes
/// (256 words each), with 16-bit parameters their rounded halves (256
/// words): 6.0 KiB for Adam's two, 7.0 KiB with 16-bit parameters.
fn blockwise_workgroup_bytes(bw: Blockwise, param: Param16) -> u64 {
    let halves = match param {
        Param16::F32 => 0,
        _ => WORKGROUP_SIZE * 4,
    };
    BW_MAPS as u64 * 4 + 4 + halves + u64::from(bw.in_use.count_ones()) * (WORKGROUP_SIZE * 8 + 4)
}

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

/// The vector width of a kernel whose tensors allow `vec4` loads when
/// `aligned`: 4 then, 1 otherwise, or the one `requested`
/// ([`GpuOptions::vector_width`]); 4 requested where not aligned is
/// [`Error::InvalidOptions`] saying what 4 `needs`.
pub(super) fn pick_width(requested: Option<u32>, aligned: bool, needs: &str) -> Result<u32> {
    match requested {
        None if aligned => Ok(4),
        None => Ok(1),
        Some(4) if !aligned => Err(Error::InvalidOptions(format!("vector_width 4 {needs}"))),
        Some(w) => Ok(w),
    }
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
        groups: 0,
        packed16: None,
        blockwise: None,
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
            let bindings = lamb_tile_bindings(variant.width);
            check_kernel_limits(
                &limits,
                &format!("the {name} kernels"),
                &bindings,
                TILE_WORKGROUP_BYTES,
            )?;
            let kind = Kind::Tiles {
                rule: true,
                width: variant.width,
            };
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
    if let Some(bw) = variant.blockwise {
        let param = variant.packed16.map_or(Param16::F32, |p| p.param);
        let body = blockwise_body(source, slots, bw, param)
            .filter(|_| !variant.views && variant.groups == 0)
            .filter(|_| !variant.packed16.is_some_and(|p| p.state_bf16))
            .ok_or_else(|| Error::Unsupported(format!("the {name} kernel with 8-bit state")))?;
        let bindings = blockwise_bindings(slots, bw, param);
        check_kernel_limits(
            &limits,
            &format!("the {name} kernel with 8-bit state"),
            &bindings,
            blockwise_workgroup_bytes(bw, param),
        )?;
        return compile(
            ctx,
            name,
            &compose(Kind::Blockwise, &bindings, &BLOCKWISE_CONSTANTS, &body),
            &["main"],
            overrides,
            bindings,
            variant,
        );
    }
    let mut bindings = elementwise_bindings(slots);
    if let Some(packed) = variant.packed16 {
        let body = packed16_body(source, slots, packed)
            .filter(|_| !variant.views && variant.groups == 0)
            .ok_or_else(|| Error::Unsupported(format!("the {name} kernel with 16-bit storage")))?;
        for b in bindings.iter_mut() {
            let word = match b.name {
                "param" => packed.param == Param16::StochasticBf16,
                "grad" | "info" | "counters" | "u" => false,
                _ => packed.state_bf16,
            };
            if word {
                b.wgsl_type = "array<u32>";
            }
        }
        // Before `info`.
        let at = bindings.len() - 3;
        match packed.param {
            Param16::MasterBf16 | Param16::MasterF16 => bindings.insert(at, PARAM16),
            Param16::StochasticBf16 => bindings.insert(at, CHUNK_BASE),
            Param16::F32 => {}
        }
        check_kernel_limits(
            &limits,
            &format!("the {name} kernel with 16-bit storage"),
            &bindings,
            0,
        )?;
        return compile(
            ctx,
            name,
            &compose(Kind::Packed16, &bindings, &[], &body),
            &["main"],
            overrides,
            bindings,
            variant,
        );
    }
    if variant.groups > 0 {
        // On views the rule's accesses are rewritten first, as for one
        // group; the tile table is the views' (its last word carries the
        // group).
        let (body, table) = if variant.views {
            (view_body(source).and_then(|b| grouped_body(&b)), VIEW_TILES)
        } else {
            (grouped_body(source), GROUP_TILES)
        };
        let body = body.ok_or_else(|| {
            Error::Unsupported(format!("the {name} kernel over parameter groups"))
        })?;
        // Before `u`, the last binding.
        bindings.insert(bindings.len() - 1, table);
        check_kernel_limits(
            &limits,
            &format!("the {name} kernel over parameter groups"),
            &bindings,
            0,
        )?;
        let kind = Kind::Grouped {
            width: variant.width,
            groups: variant.groups,
            views: variant.views,
        };
        // The options are each group's, in the uniforms.
        return compile(
            ctx,
            name,
            &compose(kind, &bindings, &[], &body),
            &["main"],
            Vec::new(),
            bindings,
            variant,
        );
    }
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
    let kind = Kind::Tiles {
        rule: false,
        width: 1,
    };
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
            groups: 0,
            packed16: None,
            blockwise: None,
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
                KernelShape::Tiled { constants, .. } => [1, 4]
                    .map(|width| {
                        let kind = Kind::Tiles { rule: true, width };
                        (
                            compose(kind, &lamb_tile_bindings(width), constants, source),
                            (TAIL_BYTES + TILE_HEADER_BYTES) as u32,
                        )
                    })
                    .to_vec(),
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
            Kind::Tiles {
                rule: false,
                width: 1,
            },
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

    /// Every element-wise rule's file rewrites into a valid grouped kernel
    /// whose `GroupEntry` has the size the host writes
    /// ([`group_entry_bytes`]), and every option a configuration sets is
    /// one the rewriting turned into a per-group variable.
    #[test]
    fn grouped_kernels_compose() {
        use crate::gpu::uniforms::group_entry_bytes;
        for kind in RuleKind::ALL {
            let config = kind.default_config();
            let spec = config.kernel();
            let KernelShape::ElementWise { slots } = spec.shape else {
                continue;
            };
            let body = grouped_body(spec.source).unwrap_or_else(|| panic!("{}", spec.name));
            assert!(!body.contains("u.rule.") && !body.contains("override "));
            let options = rule_options(spec.source).unwrap();
            for momentum_buffer in [false, true] {
                for (name, _) in config.overrides(momentum_buffer) {
                    assert!(
                        options.iter().any(|(n, _)| *n == name),
                        "{}: {name}",
                        spec.name
                    );
                }
            }
            let on_views = view_body(spec.source)
                .and_then(|b| grouped_body(&b))
                .unwrap_or_else(|| panic!("{} on views", spec.name));
            let rule_bytes = config.step_scalars(false).bytes().len();
            for (views, body, table) in [(false, &body, GROUP_TILES), (true, &on_views, VIEW_TILES)]
            {
                let mut bindings = elementwise_bindings(slots);
                bindings.insert(bindings.len() - 1, table);
                for width in [1, 4] {
                    let m = module(&compose(
                        Kind::Grouped {
                            width,
                            groups: 3,
                            views,
                        },
                        &bindings,
                        &[],
                        body,
                    ));
                    let (size, _) = layout(&m, "GroupEntry");
                    assert_eq!(
                        size as usize,
                        group_entry_bytes(rule_bytes),
                        "{}",
                        spec.name
                    );
                    let (_, members) = layout(&m, "Uniforms");
                    assert_eq!(members[1], ("groups".to_string(), TAIL_BYTES as u32));
                }
            }
        }
    }

    /// Every element-wise rule's file rewrites into a valid kernel for
    /// every 16-bit storage, with no direct access left to a 16-bit
    /// binding but through its load and store.
    #[test]
    fn packed16_kernels_compose() {
        for kind in RuleKind::ALL {
            let config = kind.default_config();
            let spec = config.kernel();
            let KernelShape::ElementWise { slots } = spec.shape else {
                continue;
            };
            for param in [
                Param16::F32,
                Param16::MasterBf16,
                Param16::StochasticBf16,
                Param16::MasterF16,
            ] {
                for state_bf16 in [false, true] {
                    let packed = Packed16 { param, state_bf16 };
                    let body = packed16_body(spec.source, slots, packed)
                        .unwrap_or_else(|| panic!("{}: {packed:?}", spec.name));
                    let mut bindings = elementwise_bindings(slots);
                    for b in bindings.iter_mut() {
                        let word = match b.name {
                            "param" => param == Param16::StochasticBf16,
                            "grad" | "info" | "counters" | "u" => false,
                            _ => state_bf16,
                        };
                        if word {
                            b.wgsl_type = "array<u32>";
                        }
                    }
                    let at = bindings.len() - 3;
                    match param {
                        Param16::MasterBf16 | Param16::MasterF16 => bindings.insert(at, PARAM16),
                        Param16::StochasticBf16 => bindings.insert(at, CHUNK_BASE),
                        Param16::F32 => {}
                    }
                    module(&compose(Kind::Packed16, &bindings, &[], &body));
                }
            }
        }
        assert_eq!(
            rewrite_stores("    exp_avg[i] = m * 2.0;\n    x = exp_avg[i];", "exp_avg").unwrap(),
            "    store_exp_avg(i, m * 2.0);\n    x = exp_avg[i];"
        );
        assert!(rewrite_stores("exp_avg[i] += g;", "exp_avg").is_none());
    }

    /// Every element-wise rule's file rewrites into a valid 8-bit kernel,
    /// with every slot kept in 8 bits or with only the first, with no
    /// direct access left to a state slot but through its load and store,
    /// and within WebGPU's default limits.
    #[test]
    fn blockwise_kernels_compose() {
        let defaults = wgpu::Limits::default();
        for kind in RuleKind::ALL {
            let config = kind.default_config();
            let spec = config.kernel();
            let KernelShape::ElementWise { slots } = spec.shape else {
                continue;
            };
            let params = [
                Param16::F32,
                Param16::MasterBf16,
                Param16::MasterF16,
                Param16::StochasticBf16,
            ];
            for (in_use, param) in [(1u32 << slots.len()) - 1, 1]
                .into_iter()
                .flat_map(|u| params.map(|p| (u, p)))
            {
                let bw = Blockwise { in_use };
                let body = blockwise_body(spec.source, slots, bw, param)
                    .unwrap_or_else(|| panic!("{}", spec.name));
                for name in slots {
                    assert!(!body.contains(&format!(" {name}[i]")), "{}", spec.name);
                }
                let bindings = blockwise_bindings(slots, bw, param);
                if in_use.count_ones() as usize + usize::from(param != Param16::F32) <= 3 {
                    check_kernel_limits(
                        &defaults,
                        "test",
                        &bindings,
                        blockwise_workgroup_bytes(bw, param),
                    )
                    .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
                }
                module(&compose(
                    Kind::Blockwise,
                    &bindings,
                    &BLOCKWISE_CONSTANTS,
                    &body,
                ));
            }
        }
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
            GROUPS_WGSL,
            PACKED16_WGSL,
            BLOCKWISE_WGSL,
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
