// Adagrad, as torch.optim.Adagrad.
// `V` is `f32` or `vec4<f32>`: the host prepends `alias V = ...;` (every
// operation here is element-wise, so one text serves both widths).

// Keep in sync with `AdagradScalars` in src/rules/adagrad.rs.
struct Scalars {
    clr: f32,
    weight_decay: f32,
    eps: f32,
    _pad0: u32,
}

const WORKGROUP_SIZE: u32 = 256u;
override MAXIMIZE: bool = false;
override EPS_INSIDE_SQRT: bool = false;

@group(0) @binding(0) var<storage, read_write> param: array<V>;
@group(0) @binding(1) var<storage, read> grad: array<V>;
@group(0) @binding(2) var<storage, read_write> sum: array<V>;
@group(0) @binding(3) var<uniform> s: Scalars;

fn update(i: u32) {
    let p = param[i];
    var g = grad[i];
    if (MAXIMIZE) { g = -g; }
    if (s.weight_decay != 0.0) { g = g + s.weight_decay * p; }
    let acc = sum[i] + g * g;
    sum[i] = acc;
    var std_: V;
    if (EPS_INSIDE_SQRT) { std_ = sqrt(acc + s.eps); } else { std_ = sqrt(acc) + s.eps; }
    param[i] = p - s.clr * (g / std_);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&param);
    let stride = nwg.x * WORKGROUP_SIZE;
    for (var i = gid.x; i < n; i = i + stride) {
        update(i);
    }
}
