// Lion, as lion_pytorch.Lion (the paper's rule). Every operation here is
// element-wise, so one text serves both widths of `V` (the host's prelude;
// see common.wgsl and elementwise.wgsl).

// `u.rule`: `LionScalars` in src/rules/lion.rs, whose size the host checks
// against this struct. Nothing depends on the step count.
struct Scalars {
    lr: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    decay_factor: f32,
    zero: u32,
    _pad0: u32,
}

override MAXIMIZE: bool = false;

// Lion has no step-dependent scalars: its table entries are unused.
fn begin_step(entry: vec4<f32>) {}

// `x` as rounded here. The step is ±lr by the sign of an expression of the
// momentum, so a momentum one unit in the last place off the CPU's may
// flip a sign later (2·lr, far beyond rounding): its products must not be
// fused into a multiply-add, which WGSL allows. ORing in `u.rule.zero`
// (always 0, but not known to the compiler) keeps each product a value of
// its own.
fn unfused(x: V) -> V {
    return bitcast<V>(bitcast<VU>(x) | VU(u.rule.zero));
}

// torch.sign(a + b) of the rounded sum, without computing the sum: a
// rounded sum of two floats is 0 only if they cancel exactly and otherwise
// has the exact sum's sign, so comparing `a` with `−b` gives it whatever
// the compiler fuses. NaN (either operand, or inf − inf) gives 0, as
// torch.sign; it is tested by its bits, as WGSL may assume there is none.
// The same as `sign_of_sum` in src/rules/lion.rs.
fn sign_of_sum(a: V, b: V) -> V {
    let nb = -b;
    let s = select(select(V(0.0), V(-1.0), a < nb), V(1.0), a > nb);
    return select(s, V(0.0), is_nan_v(a) | is_nan_v(b));
}

fn update(i: u32) {
    var g = effective_grad(grad[i]);
    if (MAXIMIZE) { g = -g; }
    let m = exp_avg[i];
    let p = param[i] * u.rule.decay_factor;
    let direction = sign_of_sum(m * u.rule.beta1, u.rule.one_minus_beta1 * g);
    param[i] = p - u.rule.lr * direction;
    exp_avg[i] = unfused(m * u.rule.beta2) + unfused(u.rule.one_minus_beta2 * g);
}
