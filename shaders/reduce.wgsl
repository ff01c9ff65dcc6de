// Global-norm gradient clipping, as torch.nn.utils.clip_grad_norm_: the L2
// norm of all gradients together, and the scale max_norm / (norm + 1e-6)
// applied when below 1. Two kernels: per-tile sums of squares, then one
// workgroup adds the tiles in a fixed order and writes `info`.

@compute @workgroup_size(256)
fn clip_partials(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let count = arrayLength(&tiles);
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = tiles[t];
        var acc = 0.0;
        for (var k = lid; k < tile.y; k = k + WG) {
            let g = grad[tile.x + k];
            acc = acc + g * g;
        }
        let total = workgroup_sum(lid, vec2<f32>(acc, 0.0));
        if (lid == 0u) {
            partials[tile.w] = total;
        }
    }
}

@compute @workgroup_size(256)
fn clip_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var k = lid; k < a.n_tiles; k = k + WG) {
        acc = acc + partials[k].x;
    }
    let total = workgroup_sum(lid, vec2<f32>(acc, 0.0));
    if (lid == 0u) {
        let norm = sqrt(total.x);
        let coef = a.max_norm / (norm + 1e-6);
        info[0] = norm;
        if (is_finite(norm)) {
            info[1] = min(coef, 1.0);
            info[2] = 0.0;
        } else {
            // As torch: a non-finite norm propagates into the gradients.
            info[1] = coef;
            info[2] = 1.0;
        }
    }
}
