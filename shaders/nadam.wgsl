// NAdam, as torch.optim.NAdam. Every operation here is element-wise, so
// one text serves both widths of `V` (the host's prelude; see common.wgsl
// and elementwise.wgsl).

// `u.rule`: `NAdamScalars` in src/rules/nadam.rs, whose size the host
// checks against this struct. The two coefficients of the update and the
// bias correction change with the step (and with mu_product, the host's
// history of the momentum factors): they are the step table's entry (`t`).
struct Scalars {
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay_factor: f32,
    _pad0: u32,
    _pad1: u32,
}

override MAXIMIZE: bool = false;
override DECOUPLED: bool = false;

// This step's (−lr·(1 − μₜ)/(1 − Π), −lr·μₜ₊₁/(1 − Π·μₜ₊₁), 1 − β2ᵗ):
// `NAdam::step_entry_with`.
var<private> t: vec4<f32>;

fn begin_step(entry: vec4<f32>) {
    t = entry;
}

// In torch's order: addcmul is v + (value·g)·g, addcdiv θ + (value·x)/d.
fn update(i: u32) {
    var p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) {
        if (DECOUPLED) { p = p * u.rule.decay_factor; } else { g = g + u.rule.weight_decay * p; }
    }
    let m = lerp_torch(exp_avg[i], g, u.rule.one_minus_beta1);
    exp_avg[i] = m;
    let v = exp_avg_sq[i] * u.rule.beta2 + u.rule.one_minus_beta2 * g * g;
    exp_avg_sq[i] = v;
    let denom = sqrt_torch(v / t.z) + u.rule.eps;
    p = p + t.x * g / denom;
    param[i] = p + t.y * m / denom;
}
