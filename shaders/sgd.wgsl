// SGD with optional (Nesterov) momentum, as torch.optim.SGD.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `SgdScalars` in src/rules/sgd.rs, whose size the host checks
// against this struct.
struct Scalars {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    use_momentum: u32,
    buffer_filled: u32,
    _pad0: u32,
    _pad1: u32,
}

override MAXIMIZE: bool = false;
override NESTEROV: bool = false;
override HAS_MOMENTUM: bool = false;

// Whether the momentum buffer holds a value: the host's flag, or with
// FLAG_SKIP_NONFINITE the GPU's (steps may have been skipped since the
// host last knew).
var<private> buffer_filled: u32;

// SGD has no step-dependent scalars: its table entries are unused.
fn begin_step(entry: vec4<f32>) {
    buffer_filled = u.rule.buffer_filled;
    if ((u.tail.flags & FLAG_SKIP_NONFINITE) != 0u) { buffer_filled = counters[4]; }
}

fn update(i: u32) {
    var p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) { g = g + u.rule.weight_decay * p; }
    if (HAS_MOMENTUM && u.rule.use_momentum != 0u) {
        var b: V;
        if (buffer_filled == 0u) {
            b = g;
        } else {
            b = momentum_buffer[i] * u.rule.momentum + u.rule.one_minus_dampening * g;
        }
        momentum_buffer[i] = b;
        if (NESTEROV) { g = g + u.rule.momentum * b; } else { g = b; }
    }
    param[i] = p - u.rule.lr * g;
}
