// The per-tensor descriptor the matrix rules' kernels read (`MatrixDesc`
// in src/gpu/matrix.rs), one 256-byte slot per tensor of a uniform buffer
// bound with a dynamic offset. Each tensor has its own parameter,
// gradient and state buffers, so every index starts at 0.
//   len         elements of the tensor;
//   rows, cols  Adafactor: a matrix's last two dimensions; Muon: the shape;
//   batch       Adafactor: the matrices of the tensor (1 for a 2-D one);
//   m, n        Muon: X is m × n with m <= n (the transpose of a tall
//               tensor), so X·Xᵀ is the smaller Gram matrix;
//   flags       the FLAG_* bits below;
//   partials    where the per-tile partial sums start in `red`;
//   inv_scale   1/grad_scale (with FLAG_GRAD_SCALE);
//   s0 .. s7    the rule's scalars (see src/gpu/matrix.rs);
//   clip_base   with FLAG_CLIP: this tensor's first tile among all
//               tensors' tiles of the clipping norm;
//   clip_tiles  those tiles over all tensors;
//   max_norm    clipping's max_norm.
struct Desc {
    len: u32, rows: u32, cols: u32, batch: u32,
    m: u32, n: u32, flags: u32, partials: u32,
    inv_scale: f32, s0: f32, s1: f32, s2: f32,
    s3: f32, s4: f32, s5: f32, s6: f32,
    s7: f32, clip_base: u32, clip_tiles: u32, max_norm: f32,
}

const FLAG_GRAD_SCALE: u32 = 1u;
const FLAG_MAXIMIZE: u32 = 2u;
const FLAG_FACTORED: u32 = 4u;
const FLAG_NESTEROV: u32 = 8u;
const FLAG_TALL: u32 = 16u;
const FLAG_OUT_IN_X1: u32 = 32u;
const FLAG_CLIP: u32 = 64u;
