// Schedule-free AdamW, as schedulefree.AdamWScheduleFree in train mode.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `AdamWScheduleFreeScalars` in src/rules/schedulefree.rs, whose
// size the host checks against this struct.
struct Scalars {
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
}

// This step's (c, lr_k·(β1·(1 − c) − 1), lr_k, ±(1 − β2^(k+1))), negative
// on the first step (z ← y first): `schedulefree::entry`, from the host's
// history k, lr_max, weight_sum.
var<private> t: vec4<f32>;

fn begin_step(entry: vec4<f32>) {
    t = entry;
}

// In the package's order: addcmul is v + (value·g)·g.
fn update(i: u32) {
    let y = param[i];
    var z0 = z[i];
    if (t.w < 0.0) { z0 = y; }
    let g = effective_grad(grad[i]);
    let v = exp_avg_sq[i] * u.rule.beta2 + u.rule.one_minus_beta2 * g * g;
    exp_avg_sq[i] = v;
    let denom = sqrt_torch(v / abs(t.w)) + u.rule.eps;
    var n = g / denom;
    if (u.rule.weight_decay != 0.0) { n = n + u.rule.weight_decay * y; }
    param[i] = lerp_torch(y, z0, t.x) + t.y * n;
    z[i] = z0 - t.z * n;
}
