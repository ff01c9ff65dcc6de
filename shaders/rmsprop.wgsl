// RMSprop, as torch.optim.RMSprop.
// `V` is `f32` or `vec4<f32>`: the host prepends `alias V = ...;` (every
// operation here is element-wise, so one text serves both widths).

// Keep in sync with `RmsPropScalars` in src/rules/rmsprop.rs.
struct Scalars {
    lr: f32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    use_momentum: u32,
    flags: u32,
    inv_scale: f32,
    base: u32,
    host_step: u32,
    _tail: u32,
    table: array<vec4<f32>, 32>,
}

const WORKGROUP_SIZE: u32 = 256u;
override MAXIMIZE: bool = false;
override EPS_INSIDE_SQRT: bool = false;
override CENTERED: bool = false;
override HAS_MOMENTUM: bool = false;

@group(0) @binding(0) var<storage, read_write> param: array<V>;
@group(0) @binding(1) var<storage, read> grad: array<V>;
@group(0) @binding(2) var<storage, read_write> square_avg: array<V>;
@group(0) @binding(3) var<storage, read_write> momentum_buffer: array<V>;
@group(0) @binding(4) var<storage, read_write> grad_avg: array<V>;
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

fn update(i: u32) {
    let p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (s.weight_decay != 0.0) { g = g + s.weight_decay * p; }
    let sq = square_avg[i] * s.alpha + s.one_minus_alpha * (g * g);
    square_avg[i] = sq;
    var v = sq;
    if (CENTERED) {
        let ga = lerp_torch(grad_avg[i], g, s.one_minus_alpha);
        grad_avg[i] = ga;
        v = sq - ga * ga;
    }
    var avg: V;
    if (EPS_INSIDE_SQRT) { avg = sqrt_torch(v + s.eps); } else { avg = sqrt_torch(v) + s.eps; }
    if (HAS_MOMENTUM && s.use_momentum != 0u) {
        let b = momentum_buffer[i] * s.momentum + g / avg;
        momentum_buffer[i] = b;
        param[i] = p - s.lr * b;
    } else {
        param[i] = p - s.lr * (g / avg);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    if (step_refused()) { return; }
    let n = arrayLength(&param);
    let stride = nwg.x * WORKGROUP_SIZE;
    for (var i = gid.x; i < n; i = i + stride) {
        update(i);
    }
}
