// The part the tile kernels share (reduce.wgsl, lamb.wgsl), after
// common.wgsl. The packed tensors of one chunk are cut into tiles that
// never cross a tensor: tile = (start in the chunk, length, tensor, global
// tile number). A workgroup reduces one tile at a time with a fixed
// assignment of elements to threads and a fixed summation tree, so every
// sum is the same from run to run whatever the number of workgroups: no
// atomics, no floating-point order that depends on scheduling.
//
// `tables` holds this chunk's tile table: [0] = (index of its first tile,
// number of tiles, 0, 0); in the first chunk's table only, entries 1..
// hold each tensor's (first tile, number of tiles), two tensors to an
// entry; then the tiles. (One binding for both tables keeps the tile
// kernels within 8 storage buffers, WebGPU's default limit.) `info`: [0]
// total gradient norm, [1] clip scale, [2] 1.0 when the norm is not
// finite, [3] 1.0 when a gradient is NaN or infinite, [4 + t] LAMB's trust
// ratio of tensor t. `counters`, kept on the GPU while steps with
// non-finite gradients are skipped (FLAG_SKIP_NONFINITE): [0] steps
// applied, [1] the host's number of the last step processed, [2] steps
// skipped, [3] SGD's momentum buffer filled, [4] filled before the current
// step, [5] the current step was skipped, [6] the outcomes of the last 32
// steps (bit 0 the last, 1 when applied); all u32 (the host keeps the high
// bits of the counts). `u.tiles` (`TileHeader` in src/gpu/uniforms.rs): clipping's
// max_norm, the tiles over all chunks, the tensors.

fn tile_count() -> u32 { return tables[0].y; }
fn tile_at(t: u32) -> vec4<u32> { return tables[tables[0].x + t]; }
// Tensor t's (first tile, number of tiles); only the first chunk's table
// has them (lamb_ratio runs once, with the first chunk's bind group).
fn tensor_span(t: u32) -> vec2<u32> {
    let q = tables[1u + t / 2u];
    return select(q.xy, q.zw, (t & 1u) == 1u);
}

var<workgroup> sums: array<vec2<f32>, WORKGROUP_SIZE>;

// Sum of `v` over the workgroup by a fixed tree; every thread gets it.
fn workgroup_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    sums[lid] = v;
    workgroupBarrier();
    for (var s = WORKGROUP_SIZE / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            sums[lid] = sums[lid] + sums[lid + s];
        }
        workgroupBarrier();
    }
    let total = sums[0];
    workgroupBarrier();
    return total;
}

var<workgroup> refused_wg: u32;

// `refused_by_info` as a workgroup-uniform value, so that kernels with
// barriers may return on it.
fn step_refused(lid: u32) -> bool {
    if (lid == 0u) {
        refused_wg = select(0u, 1u, refused_by_info());
    }
    return workgroupUniformLoad(&refused_wg) != 0u;
}
