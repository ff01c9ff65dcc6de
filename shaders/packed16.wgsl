// 16-bit storage: bf16 values two to a `u32` (the element of even index
// in the low half), read exactly and stored rounded, as src/precision/bf16.rs
// does on the CPU (the same integer operations, so the same bits). The
// kernel steps pairs: `V` is vec2<f32>, pair i the elements 2i and 2i + 1
// of the bound chunk.

// The bf16 nearest to x (ties to even) in the low 16 bits; NaN stays NaN
// (quiet, sign kept), ±inf stay ±inf, a finite value past bf16's largest
// rounds to ±inf.
fn bf16_nearest(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x0040u; }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

fn pack_bf16(v: vec2<f32>) -> u32 {
    return bf16_nearest(v.x) | (bf16_nearest(v.y) << 16u);
}

fn unpack_bf16(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

// Chris Wellons' lowbias32, as src/precision/rng.rs.
fn lowbias32(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

// x rounded to bf16 stochastically with 16 random bits r: the magnitude's
// bits plus r, truncated (src/precision/bf16.rs, f32_to_bf16_stochastic).
fn bf16_stochastic(x: f32, r: u32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return bf16_nearest(x); }
    return (b + (r & 0xffffu)) >> 16u;
}

// The f16 nearest to x (ties to even) in the low 16 bits, as the `half`
// crate converts on the CPU: NaN quiet with the top of its payload and its
// sign, overflow to ±inf, subnormals rounded at their own precision.
fn f16_nearest(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let exp = (b >> 23u) & 0xffu;
    let man = b & 0x7fffffu;
    if (exp == 0xffu) {
        if (man == 0u) { return sign | 0x7c00u; }
        return sign | 0x7e00u | (man >> 13u);
    }
    let half_exp = i32(exp) - 112;
    if (half_exp >= 31) { return sign | 0x7c00u; }
    if (half_exp <= 0) {
        if (half_exp < -10) { return sign; }
        let m = man | 0x800000u;
        let shift = u32(14 - half_exp);
        let round_bit = 1u << (shift - 1u);
        var h = m >> shift;
        if ((m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u) { h = h + 1u; }
        return sign | h;
    }
    let h = sign | (u32(half_exp) << 10u) | (man >> 13u);
    if ((man & 0x1000u) != 0u && (man & 0x2fffu) != 0u) { return h + 1u; }
    return h;
}

fn pack_f16(v: vec2<f32>) -> u32 {
    return f16_nearest(v.x) | (f16_nearest(v.y) << 16u);
}
