// Schedule-free SGD, as schedulefree.SGDScheduleFree in train mode. Every
// operation here is element-wise, so one text serves both widths of `V`
// (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `SgdScheduleFreeScalars` in src/rules/schedulefree.rs, whose
// size the host checks against this struct.
struct Scalars {
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// This step's (c, lr_k·(β·(1 − c) − 1), lr_k, w), w < 0 on the first step
// (z ← y first): `schedulefree::entry`, from the host's history k, lr_max,
// weight_sum.
var<private> t: vec4<f32>;

fn begin_step(entry: vec4<f32>) {
    t = entry;
}

fn update(i: u32) {
    let y = param[i];
    var z0 = z[i];
    if (t.w < 0.0) { z0 = y; }
    var g = effective_grad(grad[i]);
    if (u.rule.weight_decay != 0.0) { g = g + u.rule.weight_decay * y; }
    param[i] = lerp_torch(y, z0, t.x) + t.y * g;
    z[i] = z0 - t.z * g;
}
