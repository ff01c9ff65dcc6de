// LAMB (Apex FusedLAMB / optax lamb form), three kernels in one submission:
//   lamb_moments: per tile, update m and v, and sum θ² and u² (u the update
//                 direction) into the tile's partials;
//   lamb_ratio:   per tensor, add its tiles' partials in a fixed order and
//                 write the trust ratio ‖θ‖/‖u‖ (1 where either norm is 0,
//                 NaN where either is NaN);
//   lamb_apply:   per tile, recompute u from the new moments and apply
//                 θ ← θ − lr·ratio·u.

// LAMB's uniforms (`u.rule`); `LambScalars` in src/rules/lamb.rs, whose
// size the host checks against this struct. The bias corrections, which
// change with the step count, are the step table's entry (`bc` below).
struct Scalars {
    lr: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    clamp_min: f32,
    clamp_max: f32,
    // LAMB_CLAMP, LAMB_UNIT_RATIO.
    options: u32,
    _pad0: u32,
    _pad1: u32,
}

// Overrides fixed for the optimizer's life:
override MAXIMIZE: bool = false;
override EPS_INSIDE_SQRT: bool = false;

// This step's bias corrections (1 − β1ᵗ, 1 − β2ᵗ), from the table entry
// of the step count the GPU is at (`table_index` in common.wgsl).
var<private> bc: vec2<f32>;

fn load_bias_corrections() {
    bc = u.tail.table[table_index()].xy;
}

// The update direction from updated moments; the same arithmetic as
// `update_direction` in src/rules/lamb.rs.
fn lamb_update(p: f32, m: f32, v: f32) -> f32 {
    let m_hat = m / bc.x;
    var denom: f32;
    if (EPS_INSIDE_SQRT) {
        denom = sqrt_torch(v / bc.y + u.rule.eps);
    } else {
        denom = sqrt_torch(v / bc.y) + u.rule.eps;
    }
    return m_hat / denom + u.rule.weight_decay * p;
}

// pn / un for two norms (≥ 0 or NaN, not 0) as IEEE 754 divides: NaN
// from a NaN or from inf/inf, 0 for a finite pn over an infinite un, inf
// for an infinite pn over a finite un.
fn ratio_ieee(pn: f32, un: f32) -> f32 {
    let inf_p = !is_finite(pn) && !is_nan(pn);
    let inf_u = !is_finite(un) && !is_nan(un);
    let nan = bitcast<f32>(bitcast<u32>(pn) | 0x7fc00000u);
    var r = pn / un;
    r = select(r, 0.0, inf_u);
    r = select(r, pn, inf_p);
    return select(r, nan, is_nan(pn) || is_nan(un) || (inf_p && inf_u));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn lamb_moments(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (step_refused(lid)) { return; }
    load_bias_corrections();
    let count = tile_count();
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = tile_at(t);
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = lid; k < tile.y; k = k + WORKGROUP_SIZE) {
            let i = tile.x + k;
            var g = effective_grad(grad[i]);
            if (MAXIMIZE) { g = -g; }
            let m = u.rule.beta1 * exp_avg[i] + u.rule.one_minus_beta1 * g;
            let v = u.rule.beta2 * exp_avg_sq[i] + u.rule.one_minus_beta2 * (g * g);
            exp_avg[i] = m;
            exp_avg_sq[i] = v;
            let p = param[i];
            let u = lamb_update(p, m, v);
            acc = acc + vec2<f32>(p * p, u * u);
        }
        let total = workgroup_sum(lid, acc);
        if (lid == 0u) {
            partials[tile.w] = total;
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn lamb_ratio(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (step_refused(lid)) { return; }
    for (var t = wid.x; t < u.tiles.n_tensors; t = t + nwg.x) {
        let span = tensor_span(t);
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = lid; k < span.y; k = k + WORKGROUP_SIZE) {
            acc = acc + partials[span.x + k];
        }
        let total = workgroup_sum(lid, acc);
        if (lid == 0u) {
            let pn = sqrt_torch(total.x);
            let un = sqrt_torch(total.y);
            // As Apex (`!= 0`) and optax (`== 0`): 1 where a norm is 0; a
            // NaN norm is not 0, so the ratio is NaN (trust_ratio in
            // src/rules/lamb.rs).
            var r = 1.0;
            if (!is_zero(pn) && !is_zero(un)) { r = ratio_ieee(pn, un); }
            if ((u.rule.options & LAMB_UNIT_RATIO) != 0u) { r = 1.0; }
            if ((u.rule.options & LAMB_CLAMP) != 0u) {
                // torch.clamp: NaN stays NaN.
                r = select(min(max(r, u.rule.clamp_min), u.rule.clamp_max), r, is_nan(r));
            }
            info[4u + t] = r;
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn lamb_apply(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (step_refused(lid)) { return; }
    load_bias_corrections();
    let count = tile_count();
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = tile_at(t);
        let step = u.rule.lr * info[4u + tile.z];
        for (var k = lid; k < tile.y; k = k + WORKGROUP_SIZE) {
            let i = tile.x + k;
            let p = param[i];
            param[i] = p - step * lamb_update(p, exp_avg[i], exp_avg_sq[i]);
        }
    }
}
