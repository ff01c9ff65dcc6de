// 8-bit blockwise state (bitsandbytes' scheme, src/precision/blockwise.rs):
// the entry point of an element-wise rule whose state slots hold 8-bit
// codes, four to a `u32`, with one f32 absmax a block of WORKGROUP_SIZE
// elements. A workgroup owns whole blocks (blocks are per tensor, a
// tensor's last one may be short), so no two workgroups write one word.
// For each block it dequantizes the state (`load_NAME`, written by
// src/gpu/kernels.rs), steps each element with the rule's `update` in f32,
// reduces the block's new absmax in workgroup memory (`bw_store_block`,
// written there too, every slot in one tree), and quantizes to the
// nearest map entry as `DynamicMap::nearest` does on the CPU: one pass over
// memory. Tensors under 4096 elements keep f32 state (their blocks' words
// are f32 bits).
//
// `blocks` holds the two maps (signed at 0, unsigned at WORKGROUP_SIZE,
// f32 bits, ascending), the header at BW_HEADER (number of blocks, a word
// that is always 0), and at BW_ENTRIES + 4b block b's entry: (first element
// in the chunk, length, first word of its codes or f32 values in each state
// buffer, index of its absmax word, or BW_F32 for an f32 block). Every
// state buffer of a chunk has this one layout.

var<workgroup> wg_map: array<f32, BW_MAPS>;
var<workgroup> wg_flag: u32;

// The block being stepped, as `load_NAME` reads it.
var<private> blk_lid: u32;
var<private> blk_word: u32;
var<private> blk_absmax: u32;
// Always 0, but not known to the compiler (`blocks`' header).
var<private> zero_bits: u32;

// `x` as rounded here: the OR keeps a product a value of its own, so that
// it is not fused into a multiply-add (the CPU rounds each product).
fn bw_unfused(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | zero_bits);
}

// The value of code `c` of map `off` in a block of scale `absmax`, as
// `dequantize_blockwise`: one f32 product.
fn bw_dequantize(c: u32, off: u32, absmax: f32) -> f32 {
    return bw_unfused(wg_map[off + c] * absmax);
}

// The code of element `lid` of the block whose codes start at `word`.
fn bw_code(w: u32, lid: u32) -> u32 {
    return (w >> ((lid & 3u) * 8u)) & 0xffu;
}

// 1/m rounded to nearest, as the CPU's `1.0 / m` (IEEE 754), for m ≥ 0:
// WGSL's division may be 2.5 ulp off, so the mantissa's reciprocal is an
// integer long division (2^47 / M, 24 quotient bits, remainder rounding;
// a tie needs M a power of two, whose reciprocal is exact). m whose
// reciprocal would be subnormal or infinite (outside [2^-126, 2^126))
// takes WGSL's division; 0 gives 0 (`quantize_blockwise`'s rule), ∞ 0.
fn bw_reciprocal(m: f32) -> f32 {
    let b = bitcast<u32>(m);
    if (b == 0u) { return 0.0; }
    if (b == 0x7f800000u) { return 0.0; }
    let e = b >> 23u;
    let man = b & 0x7fffffu;
    if (e == 0u || e >= 253u) { return 1.0 / m; }
    if (man == 0u) { return bitcast<f32>((254u - e) << 23u); }
    let big = man | 0x800000u;
    // 2^24 / big is 1 for big in (2^23, 2^24).
    var r = 0x1000000u - big;
    var q = 1u;
    var t = r << 8u;
    q = (q << 8u) | (t / big);
    r = t % big;
    t = r << 8u;
    q = (q << 8u) | (t / big);
    r = t % big;
    t = r << 7u;
    q = (q << 7u) | (t / big);
    r = t % big;
    if (2u * r >= big) { q = q + 1u; }
    return bitcast<f32>(((253u - e) << 23u) | (q & 0x7fffffu));
}

// The first index of map `off` whose value is ≥ s (s ≤ 1, the map's
// last value, so at most 255): `partition_point(|c| c < s)`.
fn bw_lower_bound(s: f32, off: u32) -> u32 {
    var base = 0u;
    for (var step = 128u; step > 0u; step = step >> 1u) {
        if (wg_map[off + base + step - 1u] < s) { base = base + step; }
    }
    return base;
}

// The code of `v` in a block of scale `m` (its largest magnitude), as
// `quantize_blockwise` and `DynamicMap::nearest`: v · (1/m) clamped to
// [-1, 1], the nearest entry, the lower one at a tie; NaN (v, or a block
// holding one) the code of 0.
fn bw_quantize(v: f32, m: f32, inv: f32, off: u32) -> u32 {
    var s = bw_unfused(v * inv);
    if (is_nan(s) || is_nan(m)) { return bw_lower_bound(0.0, off); }
    if (s > 1.0) { s = 1.0; }
    if (s < -1.0) { s = -1.0; }
    let hi = bw_lower_bound(s, off);
    if (hi == 0u) { return 0u; }
    let lo = hi - 1u;
    let below = s - wg_map[off + lo];
    let above = wg_map[off + hi] - s;
    return select(hi, lo, below <= above);
}

fn bw_refused(lid: u32) -> bool {
    if (lid == 0u) {
        wg_flag = select(0u, 1u, refused_by_info());
    }
    return workgroupUniformLoad(&wg_flag) != 0u;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (bw_refused(lid)) { return; }
    begin_step(u.tail.table[table_index()]);
    zero_bits = blocks[BW_HEADER + 1u];
    wg_map[lid] = bitcast<f32>(blocks[lid]);
    wg_map[WORKGROUP_SIZE + lid] = bitcast<f32>(blocks[WORKGROUP_SIZE + lid]);
    workgroupBarrier();
    if (lid == 0u) { wg_flag = blocks[BW_HEADER]; }
    let n_blocks = workgroupUniformLoad(&wg_flag);
    for (var b = wid.x; b < n_blocks; b = b + nwg.x) {
        let e = BW_ENTRIES + 4u * b;
        let start = blocks[e];
        let len = blocks[e + 1u];
        blk_lid = lid;
        blk_word = blocks[e + 2u];
        blk_absmax = blocks[e + 3u];
        if (lid < len) { update(start + lid); }
        bw_store_block(lid, start, len, blk_word, blk_absmax);
    }
}
