// Common part of the tile kernels (reduce.wgsl, lamb.wgsl); the host puts
// it in front of each. The packed tensors of one chunk are cut into tiles
// that never cross a tensor: tile = (start in the chunk, length, tensor,
// global tile number). A workgroup reduces one tile at a time with a fixed
// assignment of elements to threads and a fixed summation tree, so every
// sum is the same from run to run whatever the number of workgroups: no
// atomics, no floating-point order that depends on scheduling.

// Keep in sync with `AuxScalars` in src/rules/lamb.rs.
struct Aux {
    lr: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    eps: f32,
    weight_decay: f32,
    clamp_min: f32,
    clamp_max: f32,
    max_norm: f32,
    n_tiles: u32,
    n_tensors: u32,
    flags: u32,
    _pad0: u32,
    // The per-step tail every kernel's uniforms end with (`StepTail` in
    // src/gpu/optimizer.rs): the loss scale's inverse, and with
    // FLAG_SKIP_FOUND_INF the bias corrections of each step count the
    // GPU may be at (see `pick` below).
    inv_scale: f32,
    base: u32,
    host_step: u32,
    _pad1: u32,
    table: array<vec4<f32>, 32>,
}

const FLAG_CLIP: u32 = 1u;
const FLAG_SKIP_NONFINITE: u32 = 2u;
const FLAG_CLAMP: u32 = 4u;
const FLAG_UNIT_RATIO: u32 = 8u;
const FLAG_GRAD_SCALE: u32 = 16u;
const FLAG_SKIP_FOUND_INF: u32 = 32u;
const FLAG_USE_MOMENTUM: u32 = 64u;

// `info`: [0] total gradient norm, [1] clip scale, [2] 1.0 when the norm
// is not finite, [3] 1.0 when a gradient is NaN or infinite, [4 + t]
// LAMB's trust ratio of tensor t.
@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<f32>;
// This chunk's tile table: [0] = (index of its first tile, number of
// tiles, 0, 0); in the first chunk's table only, entries 1.. hold each
// tensor's (first tile, number of tiles), two tensors to an entry; then
// the tiles. (One binding for both tables: with it the tile kernels use 8
// storage buffers, WebGPU's default limit.)
@group(0) @binding(4) var<storage, read> tables: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> info: array<f32>;
@group(0) @binding(8) var<uniform> a: Aux;
// The step counters the GPU keeps while steps with non-finite gradients
// are skipped (FLAG_SKIP_FOUND_INF): [0] steps applied, [1] the host's
// number of the last step processed, [2] steps skipped, [3] SGD's momentum
// buffer filled, [4] filled before the current step, [5] the current
// step was skipped. All u32 (the host keeps the high bits).
@group(0) @binding(9) var<storage, read_write> counters: array<u32>;

fn tile_count() -> u32 { return tables[0].y; }
fn tile_at(t: u32) -> vec4<u32> { return tables[tables[0].x + t]; }
// Tensor t's (first tile, number of tiles); only the first chunk's table
// has them (lamb_ratio runs once, with the first chunk's bind group).
fn tensor_span(t: u32) -> vec2<u32> {
    let q = tables[1u + t / 2u];
    return select(q.xy, q.zw, (t & 1u) == 1u);
}

const WG: u32 = 256u;
var<workgroup> red: array<vec2<f32>, 256>;

// Sum of `v` over the workgroup by a fixed tree; every thread gets it.
fn workgroup_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// NaN, zero and sqrt by the bits, as in step.wgsl: WGSL lets an
// implementation assume no NaN or infinity, integer tests are exact.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_zero(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0u;
}

// IEEE 754 sqrt: NaN below −0 (from the input's bits), and +inf, NaN and
// ±0 their own square roots.
fn sqrt_torch(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    let own = b >= 0x7f800000u || b == 0u || b == 0x80000000u;
    return select(select(sqrt(x), x, own), bitcast<f32>(b | 0x7fc00000u), b > 0x80000000u);
}

// The gradient as the update sees it: unscaled (loss scaling) and
// clipped when asked, as GradScaler.unscale_ then clip_grad_norm_ do.
fn scaled_grad(i: u32) -> f32 {
    var g = grad[i];
    if ((a.flags & FLAG_GRAD_SCALE) != 0u) {
        g = g * a.inv_scale;
    }
    if ((a.flags & FLAG_CLIP) != 0u) {
        g = g * info[1];
    }
    return g;
}

var<workgroup> refused_wg: u32;

// Whether this step is refused: a non-finite gradient norm with
// FLAG_SKIP_NONFINITE, or a non-finite gradient with FLAG_SKIP_FOUND_INF;
// as a workgroup-uniform value so that kernels with barriers may return
// on it.
fn step_refused(lid: u32) -> bool {
    if (lid == 0u) {
        let bad_norm = (a.flags & FLAG_SKIP_NONFINITE) != 0u && info[2] != 0.0;
        let found_inf = (a.flags & FLAG_SKIP_FOUND_INF) != 0u && info[3] != 0.0;
        refused_wg = select(0u, 1u, bad_norm || found_inf);
    }
    return workgroupUniformLoad(&refused_wg) != 0u;
}

// The entry of the bias-correction table for the step count the GPU is at.
// With FLAG_SKIP_FOUND_INF the host does not know how many of the steps
// it queued since its last read-back were skipped, so it sends the
// scalars of every count the GPU may be at: entry j is for step
// base + 1 + j. counters[0] (already counted for this step by clip_finish)
// says which applies. Without the flag, entry 0 is this step's.
fn pick_entry() -> u32 {
    if ((a.flags & FLAG_SKIP_FOUND_INF) == 0u) { return 0u; }
    return min(counters[0] - 1u - a.base, 31u);
}
