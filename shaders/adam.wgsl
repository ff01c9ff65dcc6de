// Adam and AdamW (DECOUPLED), as torch.optim.Adam / torch.optim.AdamW.
// `V` is `f32` or `vec4<f32>`: the host prepends `alias V = ...;` (every
// operation here is element-wise, so one text serves both widths).

// Keep in sync with `AdamScalars` in src/rules/adam.rs.
struct Scalars {
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    bias_correction2: f32,
    eps: f32,
    weight_decay: f32,
    decay_factor: f32,
    flags: u32,
    _pad1: u32,
    _pad2: u32,
    inv_scale: f32,
    base: u32,
    host_step: u32,
    _tail: u32,
    table: array<vec4<f32>, 32>,
}

const WORKGROUP_SIZE: u32 = 256u;
override MAXIMIZE: bool = false;
override EPS_INSIDE_SQRT: bool = false;
override AMSGRAD: bool = false;
override DECOUPLED: bool = false;

@group(0) @binding(0) var<storage, read_write> param: array<V>;
@group(0) @binding(1) var<storage, read> grad: array<V>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<V>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<V>;
@group(0) @binding(4) var<storage, read_write> max_exp_avg_sq: array<V>;
// [0] gradient norm, [1] clip scale, [2] 1.0 when the norm is not finite,
// [3] 1.0 when a gradient is NaN or infinite
// (written by reduce.wgsl in the same submission when clipping is on).
@group(0) @binding(5) var<storage, read> info: array<f32>;
// The step counters reduce.wgsl keeps (see tiles.wgsl).
@group(0) @binding(6) var<storage, read> counters: array<u32>;
@group(0) @binding(7) var<uniform> s: Scalars;


// torch.lerp's two-sided form; the same as `lerp` in src/rules/mod.rs.
fn lerp_torch(start: V, end: V, weight: f32) -> V {
    if (abs(weight) < 0.5) { return start + weight * (end - start); }
    return end - (end - start) * (1.0 - weight);
}

// This step's (step_size, bias_correction2_sqrt, bias_correction2).
var<private> t: vec4<f32>;

fn update(i: u32) {
    var p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (s.weight_decay != 0.0) {
        if (DECOUPLED) { p = p * s.decay_factor; } else { g = g + s.weight_decay * p; }
    }
    let m = lerp_torch(exp_avg[i], g, s.one_minus_beta1);
    exp_avg[i] = m;
    let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * (g * g);
    exp_avg_sq[i] = v;
    var vv = v;
    if (AMSGRAD) {
        vv = maximum_torch(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = vv;
    }
    var denom: V;
    if (EPS_INSIDE_SQRT) {
        denom = sqrt_torch(vv / t.z + s.eps);
    } else {
        denom = sqrt_torch(vv) / t.y + s.eps;
    }
    param[i] = p - t.x * (m / denom);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    if (step_refused()) { return; }
    t = s.table[pick_entry()];
    let n = arrayLength(&param);
    let stride = nwg.x * WORKGROUP_SIZE;
    for (var i = gid.x; i < n; i = i + stride) {
        update(i);
    }
}
