// Rprop, as torch.optim.Rprop.
// Every operation here is element-wise, so one text serves both widths of
// `V` (the host's prelude; see common.wgsl and elementwise.wgsl). The signs
// are taken from the bits: a NaN or infinite product must take torch's
// branch, and WGSL may assume neither occurs.

// `u.rule`: `RpropScalars` in src/rules/rprop.rs, whose size the host
// checks against this struct.
struct Scalars {
    etaplus: f32,
    etaminus: f32,
    etaminus_factor: f32,
    step_size_min: f32,
    step_size_max: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override MAXIMIZE: bool = false;

// On the first step the step sizes start from lr (`RpropScalars` and
// `Rule::step_entry` in src/rules/rprop.rs), not from the state.
var<private> first_step: bool;
var<private> initial_step_size: f32;

fn begin_step(entry: vec4<f32>) {
    first_step = entry.x != 0.0;
    initial_step_size = entry.y;
}

// torch.sign: ±1 by the sign bit, 0 for ±0 and NaN.
fn sign_torch(x: V) -> V {
    let b = bitcast<VU>(x);
    let mag = b & VU(0x7fffffffu);
    let unit = bitcast<V>((b & VU(0x80000000u)) | VU(0x3f800000u));
    return select(unit, V(0.0), (mag == VU(0u)) | (mag > VU(0x7f800000u)));
}

fn update(i: u32) {
    let p = param[i];
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    let s = sign_torch(g * prev[i]);
    let factor = select(select(V(1.0), V(u.rule.etaplus), s > V(0.0)), V(u.rule.etaminus_factor), s < V(0.0));
    var old = step_size[i];
    if (first_step) { old = V(initial_step_size); }
    // torch.clamp. The factor is never NaN, so a step size is NaN only if
    // the state held one (and then compares false, as on the CPU).
    var eta = old * factor;
    eta = select(eta, V(u.rule.step_size_min), eta < V(u.rule.step_size_min));
    eta = select(eta, V(u.rule.step_size_max), eta > V(u.rule.step_size_max));
    step_size[i] = eta;
    g = select(g, V(0.0), factor == V(u.rule.etaminus));
    param[i] = p - sign_torch(g) * eta;
    prev[i] = g;
}
