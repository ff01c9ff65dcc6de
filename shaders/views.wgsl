// The entry point of the element-wise kernels over tensor views (a
// GpuOptimizer built with from_views or from_views_with_groups): the
// parameters and gradients live at any 4-byte offset in the caller's
// buffers, the state is the optimizer's own, packed. The host binds one
// window of a parameter buffer, one of a gradient buffer and one chunk of
// the state, and `view_tiles` lists the pieces of tensors they share:
// entry = (element offset in the parameter window, in the gradient
// window, in the state chunk, length), in units of `V`. A workgroup takes
// one tile at a time; the rule's `update(i, pi, gi)` (its file, rewritten
// by src/gpu/kernels.rs) steps state element i with param[pi] and
// grad[gi]. `V` is vec4<f32> when every view starts at a multiple of 16
// bytes and holds a multiple of 4 elements (the table then counts vec4s),
// f32 otherwise.
//
// Two hooks, written by src/gpu/kernels.rs: `begin_views` (one group: its
// step table, once) and `select_tile` (the tile's length from the
// entry's last word; over several groups the group sits in the bits above
// the length, and the tile is stepped with its group's scalars and
// options, so every group steps in the same dispatch).

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (refused_by_info()) { return; }
    begin_views();
    let count = arrayLength(&view_tiles);
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = view_tiles[t];
        let len = select_tile(tile.w);
        for (var k = lid; k < len; k = k + WORKGROUP_SIZE) {
            update(tile.z + k, tile.x + k, tile.y + k);
        }
    }
}
