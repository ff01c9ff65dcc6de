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
}

const FLAG_CLIP: u32 = 1u;
const FLAG_SKIP_NONFINITE: u32 = 2u;
const FLAG_CLAMP: u32 = 4u;
const FLAG_UNIT_RATIO: u32 = 8u;

// `info`: [0] total gradient norm, [1] clip scale, [2] 1.0 when the norm
// is not finite, [3] unused, [4 + t] LAMB's trust ratio of tensor t.
@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(4) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> tensors: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read_write> info: array<f32>;
@group(0) @binding(8) var<uniform> a: Aux;

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

// The gradient as the update sees it: clipped when asked.
fn scaled_grad(i: u32) -> f32 {
    var g = grad[i];
    if ((a.flags & FLAG_CLIP) != 0u) {
        g = g * info[1];
    }
    return g;
}

var<workgroup> refused_wg: u32;

// Whether this step is refused (non-finite gradient norm with
// FLAG_SKIP_NONFINITE), as a workgroup-uniform value so that kernels with
// barriers may return on it.
fn step_refused(lid: u32) -> bool {
    if (lid == 0u) {
        refused_wg = select(0u, 1u, (a.flags & FLAG_SKIP_NONFINITE) != 0u && info[2] != 0.0);
    }
    return workgroupUniformLoad(&refused_wg) != 0u;
}
