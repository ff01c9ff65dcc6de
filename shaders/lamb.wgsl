// LAMB (Apex FusedLAMB / optax lamb form), three kernels in one submission,
// on vec4s wherever a tile covers whole ones (`tile_parts`), through the
// accessors src/gpu/kernels.rs writes (`load4_param`, `store1_exp_avg`,
// ...) for the bindings' width:
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

// The update direction from updated moments, four elements at a time
// (`V` is vec4<f32> in these kernels); the same arithmetic per element as
// `update_direction` in src/rules/lamb.rs.
fn lamb_update(p: V, m: V, v: V) -> V {
    let m_hat = m / bc.x;
    var denom: V;
    if (EPS_INSIDE_SQRT) {
        denom = sqrt_torch(v / bc.y + u.rule.eps);
    } else {
        denom = sqrt_torch(v / bc.y) + u.rule.eps;
    }
    return m_hat / denom + u.rule.weight_decay * p;
}

// The moments after this step's gradient.
struct Moments {
    m: V,
    v: V,
}

fn lamb_moments_of(raw: V, m: V, v: V) -> Moments {
    var g = effective_grad(raw);
    if (MAXIMIZE) { g = -g; }
    return Moments(
        u.rule.beta1 * m + u.rule.one_minus_beta1 * g,
        u.rule.beta2 * v + u.rule.one_minus_beta2 * (g * g),
    );
}

// A tile's elements [s, e) in three parts: the head [s, a) before its
// first whole vec4, the whole vec4s [a, b) (vec4 indices a/4 .. b/4), and
// the tail [b, e); head and tail have at most 3 elements each. Tiles
// start at multiples of 4096 inside a tensor (src/gpu/chunks.rs), so only
// a tensor's first and last tile have them.
struct Parts {
    s: u32,
    a: u32,
    b: u32,
    e: u32,
}

fn tile_parts(tile: vec4<u32>) -> Parts {
    let s = tile.x;
    let e = tile.x + tile.y;
    let a = min((s + 3u) & ~3u, e);
    let b = max(e & ~3u, a);
    return Parts(s, a, b, e);
}

// Thread `lid`'s scalar element of the head or the tail, if it has one:
// thread k < a − s takes head element s + k, thread k < e − b tail element
// b + k; both may fall to one thread (returned as x and y, the count in z).
fn edge_elements(parts: Parts, lid: u32) -> vec3<u32> {
    var n = 0u;
    var out = vec2<u32>(0u, 0u);
    if (lid < parts.a - parts.s) {
        out[n] = parts.s + lid;
        n = n + 1u;
    }
    if (lid < parts.e - parts.b) {
        out[n] = parts.b + lid;
        n = n + 1u;
    }
    return vec3<u32>(out, n);
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
        let parts = tile_parts(tile_at(t));
        // Each thread's sums of θ² and d² (d the update direction) per
        // vec4 lane, then its edge elements', then the lanes: a fixed
        // order for a fixed tiling.
        var acc_p = vec4<f32>(0.0);
        var acc_d = vec4<f32>(0.0);
        for (var q = parts.a / 4u + lid; q < parts.b / 4u; q = q + WORKGROUP_SIZE) {
            let p = load4_param(q);
            let mv = lamb_moments_of(load4_grad(q), load4_exp_avg(q), load4_exp_avg_sq(q));
            store4_exp_avg(q, mv.m);
            store4_exp_avg_sq(q, mv.v);
            let d = lamb_update(p, mv.m, mv.v);
            acc_p = acc_p + p * p;
            acc_d = acc_d + d * d;
        }
        var acc = vec2<f32>((acc_p.x + acc_p.y) + (acc_p.z + acc_p.w),
                            (acc_d.x + acc_d.y) + (acc_d.z + acc_d.w));
        let edges = edge_elements(parts, lid);
        for (var j = 0u; j < edges.z; j = j + 1u) {
            let i = edges[j];
            let p = load1_param(i);
            let mv = lamb_moments_of(V(load1_grad(i)), V(load1_exp_avg(i)), V(load1_exp_avg_sq(i)));
            store1_exp_avg(i, mv.m.x);
            store1_exp_avg_sq(i, mv.v.x);
            let d = lamb_update(V(p), mv.m, mv.v).x;
            acc = acc + vec2<f32>(p * p, d * d);
        }
        let total = workgroup_sum(lid, acc);
        if (lid == 0u) {
            partials[tile_at(t).w] = total;
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
            let pn = sqrt_torch(V(total.x)).x;
            let un = sqrt_torch(V(total.y)).x;
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
        let parts = tile_parts(tile);
        let step = u.rule.lr * info[4u + tile.z];
        for (var q = parts.a / 4u + lid; q < parts.b / 4u; q = q + WORKGROUP_SIZE) {
            let p = load4_param(q);
            store4_param(q, p - step * lamb_update(p, load4_exp_avg(q), load4_exp_avg_sq(q)));
        }
        let edges = edge_elements(parts, lid);
        for (var j = 0u; j < edges.z; j = j + 1u) {
            let i = edges[j];
            let p = load1_param(i);
            let d = lamb_update(V(p), V(load1_exp_avg(i)), V(load1_exp_avg_sq(i))).x;
            store1_param(i, p - step * d);
        }
    }
}
