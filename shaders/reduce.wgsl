// Global-norm gradient clipping, as torch.nn.utils.clip_grad_norm_: the L2
// norm of all gradients together, and the scale max_norm / (norm + 1e-6)
// applied when below 1. Two kernels: per-tile sums of squares, then one
// workgroup adds the tiles in a fixed order and writes `info`.

@compute @workgroup_size(WORKGROUP_SIZE)
fn clip_partials(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let count = tile_count();
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = tile_at(t);
        // x: the sum of squares of the (unscaled) gradients; y: how many
        // are NaN or infinite (PyTorch's found_inf looks at each element:
        // a finite gradient whose square overflows does not count).
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = lid; k < tile.y; k = k + WORKGROUP_SIZE) {
            let raw = grad[tile.x + k];
            var g = raw;
            if ((u.tail.flags & FLAG_GRAD_SCALE) != 0u) { g = g * u.tail.inv_scale; }
            acc = acc + vec2<f32>(g * g, select(0.0, 1.0, !is_finite(raw)));
        }
        let total = workgroup_sum(lid, acc);
        if (lid == 0u) {
            partials[tile.w] = total;
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn clip_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < u.tiles.n_tiles; k = k + WORKGROUP_SIZE) {
        acc = acc + partials[k];
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        let norm = sqrt_torch(total.x);
        let coef = u.tiles.max_norm / (norm + 1e-6);
        info[0] = norm;
        if (is_finite(norm)) {
            info[1] = min(coef, 1.0);
            info[2] = 0.0;
        } else {
            // As torch: a non-finite norm propagates into the gradients,
            // clamp(max_norm / (norm + 1e-6), max=1) being 0 for an
            // infinite norm and NaN for a NaN one (set by the bits: the
            // division need not follow IEEE 754 here).
            info[1] = select(0.0, norm, is_nan(norm));
            info[2] = 1.0;
        }
        let found_inf = total.y > 0.0;
        info[3] = select(0.0, 1.0, found_inf);
        // The step counters (FLAG_SKIP_NONFINITE): this step is applied
        // unless refused, for either reason the rule kernels refuse it.
        if ((u.tail.flags & FLAG_SKIP_NONFINITE) != 0u) {
            let refused = found_inf
                || ((u.tail.flags & FLAG_ERROR_IF_NONFINITE) != 0u && !is_finite(norm));
            let filled = counters[3];
            counters[4] = filled;
            if (refused) {
                counters[2] = counters[2] + 1u;
            } else {
                counters[0] = counters[0] + 1u;
                if ((u.tail.flags & FLAG_SGD_MOMENTUM) != 0u) { counters[3] = 1u; }
            }
            counters[1] = u.tail.host_step;
            counters[5] = select(0u, 1u, refused);
            // The outcomes of the last 32 steps, the last in bit 0: which
            // were applied, for the host's scalar state (src/gpu/skip.rs).
            counters[6] = (counters[6] << 1u) | select(1u, 0u, refused);
        }
    }
}
