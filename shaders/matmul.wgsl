// Muon's Newton–Schulz products as tiled matrix products in f32, after
// matrix_desc.wgsl. With X of m × n (m <= n), G = X·Xᵀ and H of m × m:
//   muon_gram:   out = X·Xᵀ              (A = X, B = X read transposed)
//   muon_poly:   out = c·(G·G) + b·G     (A = B = C = G)
//   muon_next:   out = H·X + a·X          (A = H, B = C = X)
// (a, b, c) = d.s4, d.s5, d.s6. A workgroup of 16 × 16 threads computes
// a 64 × 64 tile of `out`, each thread a 4 × 4 block of it (rows
// ty + 16i, columns tx + 16j), over the shared dimension in steps of 16:
// a 64 × 16 tile of A and a 16 × 64 tile of B in workgroup memory (8 KiB
// of WebGPU's default 16 KiB). Each output's sum runs over k in order.

@group(0) @binding(0) var<storage, read> ma: array<f32>;
@group(0) @binding(1) var<storage, read> mb: array<f32>;
@group(0) @binding(2) var<storage, read> mc: array<f32>;
@group(0) @binding(3) var<storage, read_write> mo: array<f32>;
@group(0) @binding(4) var<uniform> d: Desc;

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> ta: array<f32, 1024>; // [row][k], 64 × 16
var<workgroup> tb: array<f32, 1024>; // [k][col], 16 × 64

const GRAM: u32 = 0u;
const POLY: u32 = 1u;
const NEXT: u32 = 2u;

fn product(mode: u32, lid: u32, wid: vec3<u32>) {
    // out is rows_out × cols_out; the shared dimension is k_len.
    var rows_out = d.m;
    var cols_out = d.m;
    var k_len = d.n;
    if (mode == POLY) { k_len = d.m; }
    if (mode == NEXT) { cols_out = d.n; k_len = d.m; }
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) { acc[i] = vec4<f32>(0.0); }
    for (var k0 = 0u; k0 < k_len; k0 = k0 + TK) {
        for (var q = 0u; q < 4u; q = q + 1u) {
            let e = lid + q * 256u;
            // A(i, k) is row-major with k_len columns in every mode.
            let ar = row0 + e / TK;
            let ak = k0 + e % TK;
            var av = 0.0;
            if (ar < rows_out && ak < k_len) { av = ma[ar * k_len + ak]; }
            ta[e] = av;
            var bv = 0.0;
            if (mode == GRAM) {
                // B(k, j) = X(j, k): read along k.
                let bj = col0 + e / TK;
                let bk = k0 + e % TK;
                if (bj < cols_out && bk < k_len) { bv = mb[bj * k_len + bk]; }
                tb[(e % TK) * TILE + e / TK] = bv;
            } else {
                let bj = col0 + e % TILE;
                let bk = k0 + e / TILE;
                if (bj < cols_out && bk < k_len) { bv = mb[bk * cols_out + bj]; }
                tb[e] = bv;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let b = vec4<f32>(tb[kk * TILE + tx], tb[kk * TILE + tx + 16u],
                              tb[kk * TILE + tx + 32u], tb[kk * TILE + tx + 48u]);
            for (var i = 0u; i < 4u; i = i + 1u) {
                acc[i] = acc[i] + ta[(ty + 16u * i) * TK + kk] * b;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + ty + 16u * i;
        if (r >= rows_out) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let c = col0 + tx + 16u * j;
            if (c >= cols_out) { continue; }
            let at = r * cols_out + c;
            let sum = acc[i][j];
            if (mode == GRAM) {
                mo[at] = sum;
            } else if (mode == POLY) {
                // addmm(G, G, G, beta=b, alpha=c)
                mo[at] = d.s5 * mc[at] + d.s6 * sum;
            } else {
                // addmm(X, H, X, beta=a)
                mo[at] = d.s4 * mc[at] + sum;
            }
        }
    }
}

@compute @workgroup_size(256)
fn muon_gram(@builtin(local_invocation_index) lid: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    product(GRAM, lid, wid);
}

@compute @workgroup_size(256)
fn muon_poly(@builtin(local_invocation_index) lid: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    product(POLY, lid, wid);
}

@compute @workgroup_size(256)
fn muon_next(@builtin(local_invocation_index) lid: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    product(NEXT, lid, wid);
}
