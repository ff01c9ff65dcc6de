// Common part of the element-wise rule kernels (sgd, adagrad, rmsprop,
// adam); the host puts it in front of each, after `alias V = ...;` (and
// `VU`, `VB`, its u32 and bool types). It
// refers to `s` (the rule's uniforms, which end with the per-step tail
// `inv_scale, base, host_step, _, table`), `info` and `counters`, which
// each rule's file declares.

const FLAG_CLIP: u32 = 1u;
const FLAG_SKIP_NONFINITE: u32 = 2u;
const FLAG_GRAD_SCALE: u32 = 16u;
const FLAG_SKIP_FOUND_INF: u32 = 32u;

// Whether this step is refused: a non-finite gradient norm with
// FLAG_SKIP_NONFINITE (clipping's error_if_nonfinite), or any NaN or
// infinite gradient with FLAG_SKIP_FOUND_INF (skip_nonfinite). `info` is
// written by reduce.wgsl earlier in the same submission.
fn step_refused() -> bool {
    return ((s.flags & FLAG_SKIP_NONFINITE) != 0u && info[2] != 0.0)
        || ((s.flags & FLAG_SKIP_FOUND_INF) != 0u && info[3] != 0.0);
}

// The entry of `s.table` for the step count the GPU is at: with
// FLAG_SKIP_FOUND_INF the host sends the step-dependent scalars of every
// count the GPU may be at (entry j: step s.base + 1 + j) and counters[0],
// the steps applied including this one (clip_finish counted it), picks.
// Without the flag, entry 0 is this step's.
fn pick_entry() -> u32 {
    if ((s.flags & FLAG_SKIP_FOUND_INF) == 0u) { return 0u; }
    return min(counters[0] - 1u - s.base, 31u);
}

// NaN and infinity by their bits. WGSL lets an implementation assume
// floating-point values are never NaN or infinite, so `x != x`, `max`, a
// comparison or a built-in may not treat them as IEEE 754 (and torch) do;
// integer tests of the bits and selects are exact. `VU` and `VB` are the
// u32 and bool types of `V`'s width (the host's prelude).
fn is_nan_v(x: V) -> VB {
    return (bitcast<VU>(x) & VU(0x7fffffffu)) > VU(0x7f800000u);
}

// torch.maximum: NaN where either is NaN, else the larger. The same as
// `maximum` in src/rules/mod.rs (which NaN, of two, does not matter).
fn maximum_torch(a: V, b: V) -> V {
    return select(select(max(a, b), a, is_nan_v(a)), b, is_nan_v(b));
}

// sqrt as IEEE 754 (and torch) has it: NaN below −0 (made from the
// input's bits, so no NaN constant is needed), and +inf, NaN and ±0 their
// own square roots.
fn sqrt_torch(x: V) -> V {
    let b = bitcast<VU>(x);
    let own = (b >= VU(0x7f800000u)) | (b == VU(0u)) | (b == VU(0x80000000u));
    let negative = b > VU(0x80000000u);
    return select(select(sqrt(x), x, own), bitcast<V>(b | VU(0x7fc00000u)), negative);
}

// The gradient as the update sees it: divided by the loss scale, then
// clipped, as GradScaler.unscale_ and clip_grad_norm_ do (two f32
// multiplications, in that order).
fn effective_grad(raw: V) -> V {
    var g = raw;
    if ((s.flags & FLAG_GRAD_SCALE) != 0u) { g = g * s.inv_scale; }
    if ((s.flags & FLAG_CLIP) != 0u) { g = g * info[1]; }
    return g;
}
