// The entry point of the element-wise kernels over several parameter
// groups (a GpuOptimizer built with with_param_groups): the tensors are
// packed as on the one-group path, and `group_tiles` lists the pieces of
// tensors in the bound chunk with the group each belongs to: entry =
// (start in the chunk, length, group, unused), in units of `V`. A
// workgroup takes one tile at a time and steps it with its group's
// scalars and options (`select_group`, written by src/gpu/kernels.rs from
// the rule's file, which it follows), so every group steps in the same
// dispatch.

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (refused_by_info()) { return; }
    let count = arrayLength(&group_tiles);
    for (var t = wid.x; t < count; t = t + nwg.x) {
        let tile = group_tiles[t];
        select_group(tile.z);
        for (var k = lid; k < tile.y; k = k + WORKGROUP_SIZE) {
            update(tile.x + k);
        }
    }
}
