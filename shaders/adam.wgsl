// Adam and AdamW (DECOUPLED), as torch.optim.Adam / torch.optim.AdamW.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `AdamScalars` in src/rules/adam.rs, whose size the host checks
// against this struct. The step size and the bias corrections, which
// change with the step count, are the step table's entry (`t` below).
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
override EPS_INSIDE_SQRT: bool = false;
override AMSGRAD: bool = false;
override DECOUPLED: bool = false;

// This step's (lr / (1 − β1ᵗ), sqrt(1 − β2ᵗ), 1 − β2ᵗ): `AdamFamily::step_entry`.
var<private> t: vec4<f32>;

fn begin_step(entry: vec4<f32>) {
    t = entry;
}

fn update(i: u32) {
    var p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) {
        if (DECOUPLED) { p = p * u.rule.decay_factor; } else { g = g + u.rule.weight_decay * p; }
    }
    let m = lerp_torch(exp_avg[i], g, u.rule.one_minus_beta1);
    exp_avg[i] = m;
    let v = exp_avg_sq[i] * u.rule.beta2 + u.rule.one_minus_beta2 * (g * g);
    exp_avg_sq[i] = v;
    var vv = v;
    if (AMSGRAD) {
        vv = maximum_torch(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = vv;
    }
    var denom: V;
    if (EPS_INSIDE_SQRT) {
        denom = sqrt_torch(vv / t.z + u.rule.eps);
    } else {
        denom = sqrt_torch(vv) / t.y + u.rule.eps;
    }
    param[i] = p - t.x * (m / denom);
}
