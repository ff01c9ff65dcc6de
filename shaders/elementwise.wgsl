// The entry point of the element-wise kernels (sgd, adagrad, rmsprop,
// adam). One invocation updates one element (or one vec4 of them) per
// grid-stride iteration; the host binds one chunk of the packed tensors at
// a time, every binding of it with the same length (arrayLength gives it).
// Each rule's file defines `struct Scalars` (its part of the uniforms,
// `u.rule`), `begin_step`, which takes this step's entry of the table, and
// `update`, which steps element i.

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    if (refused_by_info()) { return; }
    begin_step(u.tail.table[table_index()]);
    let n = arrayLength(&param);
    let stride = nwg.x * WORKGROUP_SIZE;
    for (var i = gid.x; i < n; i = i + stride) {
        update(i);
    }
}
