// The element-wise and reduction kernels of the matrix rules (Adafactor,
// Muon), after matrix_desc.wgsl. One dispatch works on one tensor; the
// host records them tensor by tensor in one compute pass, and wgpu orders
// the dispatches (each sees the writes of the ones before). Every sum is
// a fixed assignment of elements to the 256 threads of one workgroup and
// a fixed summation tree: the same bits from run to run, no atomics.
//
// Bindings: `s0`, `s1`, `s2` are Adafactor's row_var, col_var, variance
// of this tensor, or Muon's momentum_buffer and the two buffers X goes
// back and forth between (shared by all tensors). `red` holds results
// of this tensor's reductions: Muon [0] max(‖X‖_F, eps); Adafactor [0]
// the step's factor −α/max(1, RMS(U)/d), [8 + b] max(mean(R_b), eps1) of
// matrix b; from d.partials, the (x, y) sums of each tile of PARTIAL_TILE
// elements (the first pass of the tensor-wide sums; a single workgroup
// then adds them in order).

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> s0: array<f32>;
@group(0) @binding(3) var<storage, read_write> s1: array<f32>;
@group(0) @binding(4) var<storage, read_write> s2: array<f32>;
@group(0) @binding(5) var<storage, read_write> red: array<f32>;
@group(0) @binding(6) var<uniform> d: Desc;

const WG: u32 = 256u;

var<workgroup> sums: array<vec2<f32>, 256>;

// Sum of `v` over the workgroup by a fixed tree; every thread gets it.
fn workgroup_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    sums[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            sums[lid] = sums[lid] + sums[lid + s];
        }
        workgroupBarrier();
    }
    let total = sums[0];
    workgroupBarrier();
    return total;
}

// torch.lerp's two-sided form; the same as `lerp` in src/rules/mod.rs.
fn lerp_torch(start: f32, end: f32, weight: f32) -> f32 {
    if (abs(weight) < 0.5) { return start + weight * (end - start); }
    return end - (end - start) * (1.0 - weight);
}

// The gradient divided by the loss scale, as GradScaler.unscale_ does,
// then clipped (red[1], written by clip_finish earlier in the pass): two
// f32 multiplications, in that order, as the element-wise kernels do.
fn grad_at(i: u32) -> f32 {
    var g = grad[i];
    if ((d.flags & FLAG_GRAD_SCALE) != 0u) { g = g * d.inv_scale; }
    if ((d.flags & FLAG_CLIP) != 0u) { g = g * red[1]; }
    return g;
}

// The workgroup's number in a dispatch of (x, y) workgroups (a count past
// 65535 is split over y).
fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

const PARTIAL_TILE: u32 = 4096u;

// This workgroup's tile of the tensor-wide sums: [start, end), or none.
fn partial_tile(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let start = flat_workgroup(wid, nwg) * PARTIAL_TILE;
    return vec2<u32>(start, min(start + PARTIAL_TILE, d.len));
}

fn store_partial(wid: vec3<u32>, nwg: vec3<u32>, total: vec2<f32>) {
    let at = d.partials + 2u * flat_workgroup(wid, nwg);
    red[at] = total.x;
    red[at + 1u] = total.y;
}

// The sum of every tile's partial sums, by one workgroup, in a fixed order.
fn sum_partials(lid: u32) -> vec2<f32> {
    let tiles = (d.len + PARTIAL_TILE - 1u) / PARTIAL_TILE;
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < tiles; k = k + WG) {
        acc = acc + vec2<f32>(red[d.partials + 2u * k], red[d.partials + 2u * k + 1u]);
    }
    return workgroup_sum(lid, acc);
}

// -------------------------------------------------------------- clipping
// The global gradient norm over every tensor, before any tensor's update:
// clip_partial per tensor (a tile of PARTIAL_TILE elements per workgroup,
// at its global tile number d.clip_base + w), then clip_finish, once,
// adds every tile in order and writes red[1] = min(max_norm/(norm + 1e-6),
// 1) (torch's non-finite cases as shaders/reduce.wgsl has them) and
// red[2] = the norm. The tiles' sums are `clip` (one f32 each).

@group(0) @binding(7) var<storage, read_write> clip: array<f32>;

@compute @workgroup_size(256)
fn clip_partial(@builtin(local_invocation_index) lid: u32,
                @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let tile = partial_tile(wid, nwg);
    if (tile.x >= d.len) { return; }
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = tile.x + lid; i < tile.y; i = i + WG) {
        var g = grad[i];
        if ((d.flags & FLAG_GRAD_SCALE) != 0u) { g = g * d.inv_scale; }
        acc.x = acc.x + g * g;
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) { clip[d.clip_base + flat_workgroup(wid, nwg)] = total.x; }
}

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256)
fn clip_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < d.clip_tiles; k = k + WG) {
        acc.x = acc.x + clip[k];
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        let norm = sqrt(total.x);
        red[2] = norm;
        if (is_finite(norm)) {
            red[1] = min(d.max_norm / (norm + 1e-6), 1.0);
        } else {
            red[1] = select(0.0, norm, is_nan(norm));
        }
    }
}

// ---------------------------------------------------------------- Muon
// s0: momentum, s1: X (first), s2: X (second); scalars s0 = 1 − μ,
// s1 = μ, s2 = 1 − lr·weight_decay, s3 = −adjusted lr, s7 = eps.

// Element i (row r, column c of rows × cols) in X, the transpose of a
// tall tensor.
fn x_index(i: u32) -> u32 {
    if ((d.flags & FLAG_TALL) == 0u) { return i; }
    let r = i / d.cols;
    let c = i % d.cols;
    return c * d.rows + r;
}

// B ← lerp(B, g, 1 − μ); X ← lerp(g, B, μ) (Nesterov) or B.
@compute @workgroup_size(256)
fn muon_momentum(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < d.len; i = i + nwg.x * WG) {
        let g = grad_at(i);
        let b = lerp_torch(s0[i], g, d.s0);
        s0[i] = b;
        var u = b;
        if ((d.flags & FLAG_NESTEROV) != 0u) { u = lerp_torch(g, b, d.s1); }
        s1[x_index(i)] = u;
    }
}

// The squares of X, one tile per workgroup.
@compute @workgroup_size(256)
fn muon_norm_partial(@builtin(local_invocation_index) lid: u32,
                     @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let tile = partial_tile(wid, nwg);
    if (tile.x >= d.len) { return; }
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = tile.x + lid; i < tile.y; i = i + WG) {
        let x = s1[i];
        acc.x = acc.x + x * x;
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) { store_partial(wid, nwg, total); }
}

// red[0] = max(‖X‖_F, eps), by one workgroup.
@compute @workgroup_size(256)
fn muon_norm(@builtin(local_invocation_index) lid: u32) {
    let total = sum_partials(lid);
    if (lid == 0u) {
        red[0] = max(sqrt(total.x), d.s7);
    }
}

// X ← X / max(‖X‖_F, eps).
@compute @workgroup_size(256)
fn muon_scale(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let denom = red[0];
    for (var i = gid.x; i < d.len; i = i + nwg.x * WG) {
        s1[i] = s1[i] / denom;
    }
}

// θ ← θ·(1 − lr·weight_decay) − adjusted_lr·O, O the iteration's output
// (transposed back for a tall tensor).
@compute @workgroup_size(256)
fn muon_apply(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < d.len; i = i + nwg.x * WG) {
        let x = x_index(i);
        var o = s1[x];
        if ((d.flags & FLAG_OUT_IN_X1) != 0u) { o = s2[x]; }
        param[i] = param[i] * d.s2 + d.s3 * o;
    }
}

// ----------------------------------------------------------- Adafactor
// s0: row_var (batch·rows), s1: col_var (batch·cols), s2: variance (a
// vector's); scalars s0 = 1 − β̂2, s1 = ρ, s2 = 1 − lr·weight_decay,
// s3 = eps1, s4 = eps1², s5 = eps2, s6 = d.

// R ← lerp(R, ‖G_row‖²/cols, 1 − β̂2): one workgroup per row.
@compute @workgroup_size(256)
fn adafactor_rows(@builtin(local_invocation_index) lid: u32,
                  @builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = flat_workgroup(wid, nwg);
    if (w >= d.batch * d.rows) { return; }
    var acc = vec2<f32>(0.0, 0.0);
    for (var c = lid; c < d.cols; c = c + WG) {
        let g = grad_at(w * d.cols + c);
        acc.x = acc.x + g * g;
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        // torch: vector_norm(G, dim).square() / size.
        let norm = sqrt(total.x);
        s0[w] = lerp_torch(s0[w], norm * norm / f32(d.cols), d.s0);
    }
}

// C ← lerp(C, ‖G_col‖²/rows, 1 − β̂2): one invocation per column, down
// the rows in order (neighbouring invocations read neighbouring columns).
@compute @workgroup_size(256)
fn adafactor_cols(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var t = gid.x; t < d.batch * d.cols; t = t + nwg.x * WG) {
        let b = t / d.cols;
        let c = t % d.cols;
        let base = b * d.rows * d.cols + c;
        var acc = 0.0;
        for (var r = 0u; r < d.rows; r = r + 1u) {
            let g = grad_at(base + r * d.cols);
            acc = acc + g * g;
        }
        let norm = sqrt(acc);
        s1[t] = lerp_torch(s1[t], norm * norm / f32(d.rows), d.s0);
    }
}

// red[8 + b] = max(mean(R_b), eps1): one workgroup per matrix.
@compute @workgroup_size(256)
fn adafactor_row_mean(@builtin(local_invocation_index) lid: u32,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = flat_workgroup(wid, nwg);
    if (b >= d.batch) { return; }
    var acc = vec2<f32>(0.0, 0.0);
    for (var r = lid; r < d.rows; r = r + WG) {
        acc.x = acc.x + s0[b * d.rows + r];
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        red[8u + b] = max(total.x / f32(d.rows), d.s3);
    }
}

// The gradient as the rule sees it (−G with maximize).
fn adafactor_grad(i: u32) -> f32 {
    let g = grad_at(i);
    if ((d.flags & FLAG_MAXIMIZE) != 0u) { return -g; }
    return g;
}

// U = G / sqrt(max(V, eps1²)), V = R·C/max(mean(R), eps1) for a matrix
// (the row and column statistics moved already), the variance for a vector.
fn adafactor_update(i: u32, g: f32) -> f32 {
    var v: f32;
    if ((d.flags & FLAG_FACTORED) != 0u) {
        let per = d.rows * d.cols;
        let b = i / per;
        let r = (i % per) / d.cols;
        let c = i % d.cols;
        v = s0[b * d.rows + r] * s1[b * d.cols + c] / red[8u + b];
    } else {
        v = s2[i];
    }
    return (1.0 / sqrt(max(v, d.s4))) * g;
}

// One tile per workgroup: moves a vector's variance, sums θ² (before the
// decay) and U².
@compute @workgroup_size(256)
fn adafactor_stats_partial(@builtin(local_invocation_index) lid: u32,
                           @builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>) {
    let tile = partial_tile(wid, nwg);
    if (tile.x >= d.len) { return; }
    var acc = vec2<f32>(0.0, 0.0);
    let factored = (d.flags & FLAG_FACTORED) != 0u;
    for (var i = tile.x + lid; i < tile.y; i = i + WG) {
        let p = param[i];
        let g = adafactor_grad(i);
        if (!factored) {
            s2[i] = lerp_torch(s2[i], g * g, d.s0);
        }
        let u = adafactor_update(i, g);
        acc = acc + vec2<f32>(p * p, u * u);
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) { store_partial(wid, nwg, total); }
}

// One workgroup: the step's factor red[0] = −α/max(1, RMS(U)/d),
// α = max(eps2, RMS(θ))·ρ.
@compute @workgroup_size(256)
fn adafactor_stats(@builtin(local_invocation_index) lid: u32) {
    let total = sum_partials(lid);
    if (lid == 0u) {
        let n = f32(d.len);
        let alpha = max(d.s5, sqrt(total.x / n)) * d.s1;
        let denom = max(sqrt(total.y / n) / d.s6, 1.0);
        red[0] = -alpha / denom;
    }
}

// θ ← θ·(1 − lr·weight_decay) + red[0]·U.
@compute @workgroup_size(256)
fn adafactor_apply(@builtin(global_invocation_id) gid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let step = red[0];
    for (var i = gid.x; i < d.len; i = i + nwg.x * WG) {
        let u = adafactor_update(i, adafactor_grad(i));
        param[i] = param[i] * d.s2 + step * u;
    }
}
