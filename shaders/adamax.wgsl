// Adamax, as torch.optim.Adamax.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `AdamaxScalars` in src/rules/adamax.rs, whose size the host
// checks against this struct. clr = lr / (1 − β1ᵗ), which changes with the
// step count, is the step table's entry.
struct Scalars {
    beta2: f32,
    one_minus_beta1: f32,
    eps: f32,
    weight_decay: f32,
}

override MAXIMIZE: bool = false;

// This step's lr / (1 − β1ᵗ): `Adamax::step_entry`.
var<private> clr: f32;

fn begin_step(entry: vec4<f32>) {
    clr = entry.x;
}

fn update(i: u32) {
    let p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) { g = g + u.rule.weight_decay * p; }
    let m = lerp_torch(exp_avg[i], g, u.rule.one_minus_beta1);
    exp_avg[i] = m;
    // torch.maximum: a NaN in either operand gives NaN (`max` need not).
    let e = maximum_torch(exp_inf[i] * u.rule.beta2, abs(g) + u.rule.eps);
    exp_inf[i] = e;
    // torch's addcdiv order: (−clr·m)/e, the same bits as p − (clr·m)/e.
    param[i] = p - clr * m / e;
}
