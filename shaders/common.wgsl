// The part every kernel shares, element-wise and tile kernels alike. The
// host (src/gpu/kernels.rs) puts it after the prelude it writes from Rust:
// `V` (f32 or vec4<f32>) with `VU` and `VB`, its u32 and bool types;
// WORKGROUP_SIZE, TABLE_LEN and the FLAG_* bits; `struct StepTail` and
// `struct Uniforms`; and the bindings, among them `info`, `counters` and
// `u`, the uniforms, whose `u.tail` is the per-step tail below.

// The per-step tail (`StepTail` in src/gpu/uniforms.rs):
//   flags      FLAG_* of this step;
//   inv_scale  1/grad_scale in f32 (with FLAG_GRAD_SCALE);
//   base       low 32 bits of the applied-step count the host last knew;
//   host_step  low 32 bits of this step's number among the steps queued;
//   table      entry j: the step-dependent scalars of step base + 1 + j.

// Whether this step is refused: a non-finite gradient norm with
// FLAG_ERROR_IF_NONFINITE (clipping's error_if_nonfinite), or any NaN or
// infinite gradient with FLAG_SKIP_NONFINITE (skip_nonfinite). `info` is
// written by reduce.wgsl earlier in the same submission.
fn refused_by_info() -> bool {
    return ((u.tail.flags & FLAG_ERROR_IF_NONFINITE) != 0u && info[2] != 0.0)
        || ((u.tail.flags & FLAG_SKIP_NONFINITE) != 0u && info[3] != 0.0);
}

// The entry of `u.tail.table` for the step count the GPU is at: with
// FLAG_SKIP_NONFINITE the host does not know how many of the steps it
// queued since its last read-back were skipped, so it sends the scalars of
// every count the GPU may be at (entry j: step base + 1 + j), and
// counters[0], the steps applied including this one (clip_finish counted
// it), picks. Without the flag, entry 0 is this step's.
fn table_index() -> u32 {
    if ((u.tail.flags & FLAG_SKIP_NONFINITE) == 0u) { return 0u; }
    return min(counters[0] - 1u - u.tail.base, TABLE_LEN - 1u);
}

// The gradient as the update sees it: divided by the loss scale, then
// clipped, as GradScaler.unscale_ and clip_grad_norm_ do (two f32
// multiplications, in that order).
fn effective_grad(raw: V) -> V {
    var g = raw;
    if ((u.tail.flags & FLAG_GRAD_SCALE) != 0u) { g = g * u.tail.inv_scale; }
    if ((u.tail.flags & FLAG_CLIP) != 0u) { g = g * info[1]; }
    return g;
}

// torch.lerp's two-sided form; the same as `lerp` in src/rules/mod.rs.
fn lerp_torch(start: V, end: V, weight: f32) -> V {
    if (abs(weight) < 0.5) { return start + weight * (end - start); }
    return end - (end - start) * (1.0 - weight);
}

// NaN and infinity by their bits. WGSL lets an implementation assume
// floating-point values are never NaN or infinite, so `x != x`, `max`, a
// comparison or a built-in may not treat them as IEEE 754 (and torch) do;
// integer tests of the bits and selects are exact.
fn is_nan_v(x: V) -> VB {
    return (bitcast<VU>(x) & VU(0x7fffffffu)) > VU(0x7f800000u);
}

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn is_zero(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0u;
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
