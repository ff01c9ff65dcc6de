// Switches schedule-free parameters between train mode's y and eval mode's
// x in place, as the package's train()/eval() do: p ← lerp(p, z, weight),
// torch's two-sided lerp (lerp_torch of common.wgsl, here on f32 alone, as
// this kernel is composed of nothing else). One chunk per dispatch.

struct Mode {
    weight: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<uniform> mode: Mode;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&param);
    let w = mode.weight;
    for (var i = gid.x; i < n; i = i + nwg.x * 256u) {
        let p = param[i];
        let e = z[i];
        if (abs(w) < 0.5) {
            param[i] = p + w * (e - p);
        } else {
            param[i] = e - (e - p) * (1.0 - w);
        }
    }
}
