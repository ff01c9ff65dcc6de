// RAdam, as torch.optim.RAdam (DECOUPLED: decoupled_weight_decay).
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `RAdamScalars` in src/rules/radam.rs, whose size the host
// checks against this struct. The bias corrections and the rectification,
// which change with the step count, are the step table's entry (`t` below).
struct Scalars {
    lr: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay_factor: f32,
    _pad0: u32,
}

override MAXIMIZE: bool = false;
override DECOUPLED: bool = false;

// This step's (1 − β1ᵗ, sqrt(1 − β2ᵗ), r, 1 if ρt > 5 else 0):
// `RAdam::step_entry`.
var<private> t: vec4<f32>;

fn begin_step(entry: vec4<f32>) {
    t = entry;
}

// torch's order: ((m̂·lr)·((1/(sqrt(v) + eps))·sqrt(1 − β2ᵗ)))·r, or m̂·lr
// before the rectification switches on; as `step_element` in radam.rs.
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
    var step = m / t.x * u.rule.lr;
    if (t.w != 0.0) {
        let adaptive_lr = (1.0 / (sqrt_torch(v) + u.rule.eps)) * t.y;
        step = step * adaptive_lr * t.z;
    }
    param[i] = p - step;
}
