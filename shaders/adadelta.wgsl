// Adadelta, as torch.optim.Adadelta.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `AdadeltaScalars` in src/rules/adadelta.rs, whose size the host
// checks against this struct.
struct Scalars {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override MAXIMIZE: bool = false;

// Adadelta has no step-dependent scalars: its table entries are unused.
fn begin_step(entry: vec4<f32>) {}

fn update(i: u32) {
    let p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) { g = g + u.rule.weight_decay * p; }
    // torch's order: addcmul's (1 − rho)·g first, the division before ·g.
    let v = square_avg[i] * u.rule.rho + u.rule.one_minus_rho * g * g;
    square_avg[i] = v;
    let std_ = sqrt_torch(v + u.rule.eps);
    let acc = acc_delta[i];
    let delta = sqrt_torch(acc + u.rule.eps) / std_ * g;
    acc_delta[i] = acc * u.rule.rho + u.rule.one_minus_rho * delta * delta;
    param[i] = p - u.rule.lr * delta;
}
