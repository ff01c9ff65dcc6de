// Adagrad, as torch.optim.Adagrad.
// `V` is `f32` or `vec4<f32>`: the host prepends `alias V = ...;` (every
// operation here is element-wise, so one text serves both widths).

// Keep in sync with `AdagradScalars` in src/rules/adagrad.rs.
struct Scalars {
    clr: f32,
    weight_decay: f32,
    eps: f32,
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

@group(0) @binding(0) var<storage, read_write> param: array<V>;
@group(0) @binding(1) var<storage, read> grad: array<V>;
@group(0) @binding(2) var<storage, read_write> sum: array<V>;
// [0] gradient norm, [1] clip scale, [2] 1.0 when the norm is not finite,
// [3] 1.0 when a gradient is NaN or infinite
// (written by reduce.wgsl in the same submission when clipping is on).
@group(0) @binding(3) var<storage, read> info: array<f32>;
// The step counters reduce.wgsl keeps (see tiles.wgsl).
@group(0) @binding(4) var<storage, read> counters: array<u32>;
@group(0) @binding(5) var<uniform> s: Scalars;


// This step's lr / (1 + (t − 1)·lr_decay).
var<private> clr: f32;

fn update(i: u32) {
    let p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (s.weight_decay != 0.0) { g = g + s.weight_decay * p; }
    let acc = sum[i] + g * g;
    sum[i] = acc;
    var std_: V;
    if (EPS_INSIDE_SQRT) { std_ = sqrt_torch(acc + s.eps); } else { std_ = sqrt_torch(acc) + s.eps; }
    param[i] = p - clr * (g / std_);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    if (step_refused()) { return; }
    clr = s.table[pick_entry()].x;
    let n = arrayLength(&param);
    let stride = nwg.x * WORKGROUP_SIZE;
    for (var i = gid.x; i < n; i = i + stride) {
        update(i);
    }
}
