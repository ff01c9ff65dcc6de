// SGD with optional (Nesterov) momentum, as torch.optim.SGD.
// One invocation updates one element per grid-stride iteration; the host
// binds one chunk of the packed tensors at a time (arrayLength gives its size).
// `V` is `f32` or `vec4<f32>`: the host prepends `alias V = ...;` (every
// operation here is element-wise, so one text serves both widths).

// Keep in sync with `SgdScalars` in src/rules/sgd.rs.
struct Scalars {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    use_momentum: u32,
    buffer_filled: u32,
    flags: u32,
    _pad1: u32,
    inv_scale: f32,
    base: u32,
    host_step: u32,
    _tail: u32,
    table: array<vec4<f32>, 32>,
}

const WORKGROUP_SIZE: u32 = 256u;
override MAXIMIZE: bool = false;
override NESTEROV: bool = false;
override HAS_MOMENTUM: bool = false;

@group(0) @binding(0) var<storage, read_write> param: array<V>;
@group(0) @binding(1) var<storage, read> grad: array<V>;
@group(0) @binding(2) var<storage, read_write> momentum_buffer: array<V>;
// [0] gradient norm, [1] clip scale, [2] 1.0 when the norm is not finite,
// [3] 1.0 when a gradient is NaN or infinite
// (written by reduce.wgsl in the same submission when clipping is on).
@group(0) @binding(3) var<storage, read> info: array<f32>;
// The step counters reduce.wgsl keeps (see tiles.wgsl).
@group(0) @binding(4) var<storage, read> counters: array<u32>;
@group(0) @binding(5) var<uniform> s: Scalars;


// Whether the momentum buffer holds a value: the host's flag, or with
// FLAG_SKIP_FOUND_INF the GPU's (steps may have been skipped since the
// host last knew).
var<private> buffer_filled: u32;

fn update(i: u32) {
    var p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (s.weight_decay != 0.0) { g = g + s.weight_decay * p; }
    if (HAS_MOMENTUM && s.use_momentum != 0u) {
        var b: V;
        if (buffer_filled == 0u) {
            b = g;
        } else {
            b = momentum_buffer[i] * s.momentum + s.one_minus_dampening * g;
        }
        momentum_buffer[i] = b;
        if (NESTEROV) { g = g + s.momentum * b; } else { g = b; }
    }
    param[i] = p - s.lr * g;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    if (step_refused()) { return; }
    buffer_filled = s.buffer_filled;
    if ((s.flags & FLAG_SKIP_FOUND_INF) != 0u) { buffer_filled = counters[4]; }
    let n = arrayLength(&param);
    let stride = nwg.x * WORKGROUP_SIZE;
    for (var i = gid.x; i < n; i = i + stride) {
        update(i);
    }
}
