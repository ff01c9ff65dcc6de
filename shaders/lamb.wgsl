// LAMB (Apex FusedLAMB / optax lamb form), three kernels in one submission:
//   lamb_moments: per tile, update m and v, and sum θ² and u² (u the update
//                 direction) into the tile's partials;
//   lamb_ratio:   per tensor, add its tiles' partials in a fixed order and
//                 write the trust ratio ‖θ‖/‖u‖ (1 where either norm is 0);
//   lamb_apply:   per tile, recompute u from the new moments and apply
//                 θ ← θ − lr·ratio·u.
// Overrides fixed for the optimizer's life:
override MAXIMIZE: bool = false;
override EPS_INSIDE_SQRT: bool = false;

// This step's bias corrections (1 − β1ᵗ, 1 − β2ᵗ), from the table entry
// of the step count the GPU is at (`pick_entry` in tiles.wgsl).
var<private> bc: vec2<f32>;

fn load_bias_corrections() {
    bc = a.table[pick_entry()].xy;
}

// The update direction from updated moments; the same arithmetic as
// `update_direction` in src/rules/lamb.rs.
fn lamb_update(p: f32, m: f32, v: f32) -> f32 {
    let m_hat = m / bc.x;
    var denom: f32;
    if (EPS_INSIDE_SQRT) {
        denom = sqrt(v / bc.y + a.eps);
    } else {
        denom = sqrt(v / bc.y) + a.eps;
    }
    return m_hat / denom + a.weight_decay * p;
}

@compute @workgroup_size(256)
fn lamb_moments(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (step_refused(lid)) { return; }
    load_bias_corrections();
    let count = arrayLength(&tiles);
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = tiles[t];
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = lid; k < tile.y; k = k + WG) {
            let i = tile.x + k;
            var g = scaled_grad(i);
            if (MAXIMIZE) { g = -g; }
            let m = a.beta1 * exp_avg[i] + a.one_minus_beta1 * g;
            let v = a.beta2 * exp_avg_sq[i] + a.one_minus_beta2 * (g * g);
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

@compute @workgroup_size(256)
fn lamb_ratio(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (step_refused(lid)) { return; }
    for (var t = wid.x; t < a.n_tensors; t = t + nwg.x) {
        let span = tensors[t];
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = lid; k < span.y; k = k + WG) {
            acc = acc + partials[span.x + k];
        }
        let total = workgroup_sum(lid, acc);
        if (lid == 0u) {
            let pn = sqrt(total.x);
            let un = sqrt(total.y);
            var r = 1.0;
            if (pn > 0.0 && un > 0.0) { r = pn / un; }
            if ((a.flags & FLAG_UNIT_RATIO) != 0u) { r = 1.0; }
            if ((a.flags & FLAG_CLAMP) != 0u) { r = min(max(r, a.clamp_min), a.clamp_max); }
            info[4u + t] = r;
        }
    }
}

@compute @workgroup_size(256)
fn lamb_apply(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (step_refused(lid)) { return; }
    load_bias_corrections();
    let count = arrayLength(&tiles);
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = tiles[t];
        let step = a.lr * info[4u + tile.z];
        for (var k = lid; k < tile.y; k = k + WG) {
            let i = tile.x + k;
            let p = param[i];
            param[i] = p - step * lamb_update(p, exp_avg[i], exp_avg_sq[i]);
        }
    }
}
