// Adagrad, as torch.optim.Adagrad.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl).

// `u.rule`: `AdagradScalars` in src/rules/adagrad.rs, whose size the host
// checks against this struct. clr, which changes with the step count, is
// the step table's entry (`Rule::step_entry` there).
struct Scalars {
    weight_decay: f32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

override MAXIMIZE: bool = false;
override EPS_INSIDE_SQRT: bool = false;

// This step's lr / (1 + (t − 1)·lr_decay).
var<private> clr: f32;

fn begin_step(entry: vec4<f32>) {
    clr = entry.x;
}

fn update(i: u32) {
    let p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) { g = g + u.rule.weight_decay * p; }
    let acc = sum[i] + g * g;
    sum[i] = acc;
    var std_: V;
    if (EPS_INSIDE_SQRT) { std_ = sqrt_torch(acc + u.rule.eps); } else { std_ = sqrt_torch(acc) + u.rule.eps; }
    param[i] = p - clr * (g / std_);
}
