// RMSprop, as torch.optim.RMSprop.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `RmsPropScalars` in src/rules/rmsprop.rs, whose size the host
// checks against this struct.
struct Scalars {
    lr: f32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    use_momentum: u32,
    _pad0: u32,
}

override MAXIMIZE: bool = false;
override EPS_INSIDE_SQRT: bool = false;
override CENTERED: bool = false;
override HAS_MOMENTUM: bool = false;

// RMSprop has no step-dependent scalars: its table entries are unused.
fn begin_step(entry: vec4<f32>) {}

fn update(i: u32) {
    let p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) { g = g + u.rule.weight_decay * p; }
    let sq = square_avg[i] * u.rule.alpha + u.rule.one_minus_alpha * (g * g);
    square_avg[i] = sq;
    var v = sq;
    if (CENTERED) {
        let ga = lerp_torch(grad_avg[i], g, u.rule.one_minus_alpha);
        grad_avg[i] = ga;
        v = sq - ga * ga;
    }
    var avg: V;
    if (EPS_INSIDE_SQRT) { avg = sqrt_torch(v + u.rule.eps); } else { avg = sqrt_torch(v) + u.rule.eps; }
    if (HAS_MOMENTUM && u.rule.use_momentum != 0u) {
        let b = momentum_buffer[i] * u.rule.momentum + g / avg;
        momentum_buffer[i] = b;
        param[i] = p - u.rule.lr * b;
    } else {
        param[i] = p - u.rule.lr * (g / avg);
    }
}
