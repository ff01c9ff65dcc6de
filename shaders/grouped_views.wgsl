// The entry point of the element-wise kernels over several parameter
// groups on tensor views (a GpuOptimizer built with
// from_views_with_groups): bound as the one-group view kernel
// (views.wgsl), with `view_tiles` entry = (element offset in the
// parameter window, in the gradient window, in the state chunk,
// length | group << 16), in units of `V`. A workgroup takes one tile at a
// time and steps it with its group's scalars and options (`select_group`,
// written by src/gpu/kernels.rs from the rule's file), so every group
// steps in the same dispatch.

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (refused_by_info()) { return; }
    let count = arrayLength(&view_tiles);
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = view_tiles[t];
        select_group(tile.w >> 16u);
        let len = tile.w & 0xffffu;
        for (var k = lid; k < len; k = k + WORKGROUP_SIZE) {
            update(tile.z + k, tile.x + k, tile.y + k);
        }
    }
}
