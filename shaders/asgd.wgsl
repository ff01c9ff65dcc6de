// ASGD, as torch.optim.ASGD. Every operation here is element-wise, so one
// text serves both widths of `V` (the host's prelude; see common.wgsl and
// elementwise.wgsl).

// `u.rule`: `AsgdScalars` in src/rules/asgd.rs, whose size the host checks
// against this struct. The decay, the step size and the averaging weight
// come from eta and mu, the host's history of the steps: they are the step
// table's entry (`t`).
struct Scalars {
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override MAXIMIZE: bool = false;

// This step's (1 − λ·η, −η, μ): `Asgd::step_entry_with`.
var<private> t: vec4<f32>;

fn begin_step(entry: vec4<f32>) {
    t = entry;
}

fn update(i: u32) {
    var p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    if (u.rule.weight_decay != 0.0) { g = g + u.rule.weight_decay * p; }
    p = p * t.x;
    p = p + t.y * g;
    param[i] = p;
    // torch copies while μ is 1 (ax + (θ − ax)·1 need not be θ).
    if (t.z == 1.0) {
        ax[i] = p;
    } else {
        let a = ax[i];
        ax[i] = a + (p - a) * t.z;
    }
}
