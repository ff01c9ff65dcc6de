//! Muon, as `torch.optim.Muon` (2.15) computes it, with the Newton–Schulz
//! iteration in f32.

use serde_json::{json, Map, Value};

use super::{
    check_finite, check_non_negative, lerp, object, Config, GradScales, KernelShape, KernelSpec,
    Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Muon (MomentUm Orthogonalized by Newton–Schulz), as `torch.optim.Muon`
/// (PyTorch 2.15) computes it, for 2-D weight matrices. With `B` the
/// momentum (`momentum_buffer`), per step and matrix `θ` of `A × B'`:
///
/// ```text
/// B ← lerp(B, g, 1 − μ)                       (= μ·B + (1 − μ)·g)
/// U ← lerp(g, B, μ)  if nesterov, else B
/// O ← NS_k(U)                                  (below)
/// θ ← θ·(1 − lr·weight_decay)                  (decoupled weight decay)
/// θ ← θ − lr·ratio(A, B')·O
/// ```
///
/// `NS_k` orthogonalises `U` by `k` steps (`ns_steps`) of a quintic
/// Newton–Schulz iteration with coefficients `(a, b, c)`
/// (`ns_coefficients`), on `X = U` (or `Uᵀ` when `A > B'`, so that `X·Xᵀ`
/// is the smaller Gram matrix):
///
/// ```text
/// X ← X / max(‖X‖_F, eps)
/// repeat k times:  G ← X·Xᵀ ;  X ← a·X + (b·G + c·G·G)·X
/// ```
///
/// and `ratio` is `adjust_lr_fn`'s: `sqrt(max(1, A/B'))` for `None` and
/// [`MuonAdjustLr::Original`] (Keller Jordan's), `0.2·sqrt(max(A, B'))` for
/// [`MuonAdjustLr::MatchRmsAdamW`] (Moonshot's, to reuse AdamW's lr and
/// weight decay), `sqrt(A/B')` for [`MuonAdjustLr::SpectralUnclamped`].
/// Defaults (torch's): `lr = 1e-3`, `weight_decay = 0.1`, `momentum =
/// 0.95`, `nesterov = true`, `ns_coefficients = (3.4445, −4.775, 2.0315)`,
/// `eps = 1e-7`, `ns_steps = 5`, `adjust_lr_fn = None`.
///
/// torch runs the iteration in bfloat16; this crate runs it in f32 (the
/// conformance cases run it in the run's own dtype, so f32 is what they
/// check). Every tensor needs a 2-D [`crate::Shape`]
/// (`CpuOptimizer::with_shapes`): torch 2.15 refuses any other, and so does
/// this crate ([`Error::MatrixRequired`]). Biases, norms, embeddings and
/// the head belong to another optimizer (AdamW): see
/// `examples/muon_adamw.rs`. On the GPU (`GpuOptimizer::with_shapes`) the
/// iteration is tiled f32 matrix products in WGSL.
///
/// ```
/// use wgpu_optim::{CpuOptimizer, Muon, Shape};
/// let w = vec![0.5f32; 6];
/// let muon = Muon { lr: 0.02, weight_decay: 0.0, ..Muon::default() };
/// let mut opt = CpuOptimizer::with_shapes(muon, &[&w], &[Shape::matrix(2, 3)])?;
/// opt.step(&[&[1.0, 0.0, 0.0, 0.0, 2.0, 0.0]])?;
/// // The update of a gradient with orthogonal rows has singular values
/// // near 1 (the iteration's fixed points spread over about 0.7 to 1.2).
/// let moved: Vec<f32> = opt.param(0).iter().map(|p| (0.5 - p) / 0.02).collect();
/// assert!(moved[0] > 0.6 && moved[0] < 1.3 && moved[4] > 0.6 && moved[4] < 1.3);
/// assert!(moved[1].abs() < 1e-5);
/// // A tensor without a 2-D shape is refused.
/// assert!(CpuOptimizer::new(Muon::default(), &[&w]).is_err());
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Muon {
    /// Learning rate, default 1e-3 (scaled per matrix by `adjust_lr_fn`).
    pub lr: f64,
    /// Decoupled weight decay (`θ·(1 − lr·weight_decay)`), default 0.1.
    pub weight_decay: f64,
    /// Momentum `μ`, default 0.95.
    pub momentum: f64,
    /// Nesterov momentum (the update is `lerp(g, B, μ)`), default true.
    pub nesterov: bool,
    /// The Newton–Schulz coefficients `(a, b, c)`, default
    /// `(3.4445, −4.775, 2.0315)`.
    pub ns_coefficients: (f64, f64, f64),
    /// The floor of the norm the iteration's input is divided by, default 1e-7.
    pub eps: f64,
    /// Newton–Schulz steps, default 5 (torch refuses 100 or more).
    pub ns_steps: u32,
    /// How the lr is scaled to the matrix's shape; `None` (the default) is
    /// [`MuonAdjustLr::Original`].
    pub adjust_lr_fn: Option<MuonAdjustLr>,
}

/// Muon's `adjust_lr_fn`: the factor its lr is multiplied by for a matrix
/// of `A × B` (torch's `_adjust_lr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MuonAdjustLr {
    /// `"original"`: `sqrt(max(1, A/B))` (Keller Jordan's Muon).
    Original,
    /// `"match_rms_adamw"`: `0.2·sqrt(max(A, B))`, matching the update RMS
    /// of AdamW (Moonshot's "Muon is Scalable for LLM Training").
    MatchRmsAdamW,
    /// `"spectral_unclamped"`: `sqrt(A/B)` (Bernstein's "Deriving Muon").
    SpectralUnclamped,
}

impl MuonAdjustLr {
    /// torch's name.
    pub fn name(self) -> &'static str {
        match self {
            MuonAdjustLr::Original => "original",
            MuonAdjustLr::MatchRmsAdamW => "match_rms_adamw",
            MuonAdjustLr::SpectralUnclamped => "spectral_unclamped",
        }
    }

    /// The function torch names `name`.
    pub fn parse(name: &str) -> Option<MuonAdjustLr> {
        [
            MuonAdjustLr::Original,
            MuonAdjustLr::MatchRmsAdamW,
            MuonAdjustLr::SpectralUnclamped,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }
}

impl Default for Muon {
    fn default() -> Self {
        Muon {
            lr: 1e-3,
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            ns_coefficients: (3.4445, -4.775, 2.0315),
            eps: 1e-7,
            ns_steps: 5,
            adjust_lr_fn: None,
        }
    }
}

impl Muon {
    /// The lr of a matrix of `a × b` (torch's `_adjust_lr`), in f64 as
    /// torch computes it.
    pub(crate) fn adjusted_lr(&self, a: usize, b: usize) -> f64 {
        let (a, b) = (a as f64, b as f64);
        let ratio = match self.adjust_lr_fn {
            None | Some(MuonAdjustLr::Original) => (a / b).max(1.0).sqrt(),
            Some(MuonAdjustLr::MatchRmsAdamW) => 0.2 * a.max(b).sqrt(),
            Some(MuonAdjustLr::SpectralUnclamped) => (a / b).sqrt(),
        };
        self.lr * ratio
    }
}

/// Muon's per-step scalars (the CPU step and the GPU's descriptors,
/// src/gpu/matrix.rs, read these).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MuonScalars {
    /// `1 − μ`, the weight of the gradient in the momentum's `lerp`.
    pub one_minus_momentum: f32,
    /// `μ`, the weight of the momentum in Nesterov's `lerp`.
    pub momentum: f32,
    /// `1 − lr·weight_decay`.
    pub decay_factor: f32,
    pub _pad: u32,
}

impl Rule for Muon {
    const NAME: &'static str = "muon";
    // torch's Muon keeps only the momentum buffer, no step count.
    const TORCH_STEP: bool = false;
    const KERNEL: KernelSpec = KernelSpec {
        name: "muon",
        source: "",
        shape: KernelShape::None,
    };
    const MATRIX: bool = true;
    type Scalars = MuonScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("eps", self.eps)?;
        let (a, b, c) = self.ns_coefficients;
        check_finite("ns_coefficients[0]", a)?;
        check_finite("ns_coefficients[1]", b)?;
        check_finite("ns_coefficients[2]", c)?;
        if self.ns_steps >= 100 {
            return Err(Error::InvalidHyperparameter {
                name: "ns_steps",
                value: self.ns_steps as f64,
                reason: "must be less than 100 (torch's limit)",
            });
        }
        Ok(())
    }

    fn check_shapes(&self, layout: &Layout) -> Result<()> {
        for i in 0..layout.len() {
            match layout.shape(i) {
                Some(s) if s.dims().len() == 2 => {}
                other => {
                    return Err(Error::MatrixRequired {
                        rule: Self::NAME,
                        tensor: i,
                        shape: other.map_or_else(|| "no shape".into(), ToString::to_string),
                    })
                }
            }
        }
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["momentum_buffer"]
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.momentum)
    }

    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        check_non_negative("momentum", value)?;
        self.momentum = value;
        Ok(())
    }

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    fn scalars(&self, _buffer_filled: bool) -> MuonScalars {
        MuonScalars {
            one_minus_momentum: (1.0 - self.momentum) as f32,
            momentum: self.momentum as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            _pad: 0,
        }
    }

    fn cpu_step(
        &self,
        s: &MuonScalars,
        _entry: StepEntry,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        let buf = &mut states[0];
        for i in 0..layout.len() {
            // The optimizers checked every shape (check_shapes) when built.
            let Some(&[rows, cols]) = layout.shape(i).map(crate::Shape::dims) else {
                continue;
            };
            let r = layout.range(i);
            let (p, g, b) = (&mut params[r.clone()], &grads[r.clone()], &mut buf[r]);
            let mut update = Vec::with_capacity(g.len());
            for (b, &g) in b.iter_mut().zip(g) {
                let g = scales.apply(g);
                *b = lerp(*b, g, s.one_minus_momentum);
                update.push(if self.nesterov {
                    lerp(g, *b, s.momentum)
                } else {
                    *b
                });
            }
            let o = newton_schulz(&update, rows, cols, self);
            let alpha = -self.adjusted_lr(rows, cols) as f32;
            for (p, o) in p.iter_mut().zip(&o) {
                *p = *p * s.decay_factor + alpha * o;
            }
        }
    }

    fn to_torch(&self) -> Map<String, Value> {
        let (a, b, c) = self.ns_coefficients;
        object(json!({"lr": self.lr, "weight_decay": self.weight_decay,
            "momentum": self.momentum, "nesterov": self.nesterov,
            "ns_coefficients": [a, b, c], "eps": self.eps, "ns_steps": self.ns_steps,
            "adjust_lr_fn": self.adjust_lr_fn.map(MuonAdjustLr::name)}))
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Muon::default();
        let (a, b, c) = d.ns_coefficients;
        let [a, b, c] = args.numbers("ns_coefficients", [a, b, c])?;
        let adjust_lr_fn = match args.nullable_str("adjust_lr_fn", None)? {
            None => None,
            Some(name) => Some(MuonAdjustLr::parse(&name).ok_or_else(|| {
                args.error(format!(
                    "adjust_lr_fn `{name}` of muon is not one of original, match_rms_adamw, spectral_unclamped"
                ))
            })?),
        };
        Ok(Muon {
            lr: args.num("lr", d.lr)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            momentum: args.num("momentum", d.momentum)?,
            nesterov: args.flag("nesterov", d.nesterov)?,
            ns_coefficients: (a, b, c),
            eps: args.num("eps", d.eps)?,
            ns_steps: args.count("ns_steps", d.ns_steps)?,
            adjust_lr_fn,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        // `bench` runs flat tensors, which Muon refuses (it needs shapes).
        Vec::new()
    }
}

/// `c += a·b` of row-major `a` (m × k) and `b` (k × n) in f32, row by row
/// (the inner loop runs along a row of `b` and vectorizes).
fn matmul_add(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    use rayon::prelude::*;
    let row = |(i, c_row): (usize, &mut [f32])| {
        for (kk, &aik) in a[i * k..(i + 1) * k].iter().enumerate() {
            for (c, &bkj) in c_row.iter_mut().zip(&b[kk * n..(kk + 1) * n]) {
                *c += aik * bkj;
            }
        }
    };
    // Threads only pay for themselves on large products.
    if m * k * n >= 1 << 22 {
        c.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        c.chunks_mut(n).enumerate().for_each(row);
    }
}

/// The transpose of row-major `x` (rows × cols).
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = x[i * cols + j];
        }
    }
    t
}

/// torch's `_zeropower_via_newtonschulz` in f32 over row-major `u`
/// (rows × cols): the orthogonalised update, row-major, of the same shape.
pub(crate) fn newton_schulz(u: &[f32], rows: usize, cols: usize, muon: &Muon) -> Vec<f32> {
    let wide = rows <= cols;
    // X is m × n with m <= n: the Gram matrix is the smaller one.
    let (m, n, mut x) = if wide {
        (rows, cols, u.to_vec())
    } else {
        (cols, rows, transpose(u, rows, cols))
    };
    // The norm's sum in f64: torch's f32 norm sums in a wider accumulator
    // too (and one rounding of the result is all f32 holds).
    let norm = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32;
    let denom = norm.max(muon.eps as f32);
    for v in &mut x {
        *v /= denom;
    }
    let (a, b, c) = muon.ns_coefficients;
    let (a, b, c) = (a as f32, b as f32, c as f32);
    for _ in 0..muon.ns_steps {
        let xt = transpose(&x, m, n);
        let mut gram = vec![0.0f32; m * m];
        matmul_add(&mut gram, &x, &xt, m, n, m);
        // addmm(G, G, G, beta=b, alpha=c) = b·G + c·(G·G)
        let mut gg = vec![0.0f32; m * m];
        matmul_add(&mut gg, &gram, &gram, m, m, m);
        let h: Vec<f32> = gram.iter().zip(&gg).map(|(g, q)| b * g + c * q).collect();
        // addmm(X, H, X, beta=a) = a·X + H·X
        let mut next: Vec<f32> = x.iter().map(|v| a * v).collect();
        matmul_add(&mut next, &h, &x, m, m, n);
        x = next;
    }
    if wide {
        x
    } else {
        transpose(&x, m, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The iteration drives every singular value of its input into the
    /// band its coefficients converge to: for a diagonal input the output
    /// is diagonal, each entry the scalar iteration of its singular value.
    #[test]
    fn newton_schulz_of_a_diagonal_matrix_is_the_scalar_iteration() {
        let muon = Muon::default();
        let u = [3.0f32, 0.0, 0.0, 0.0, 0.5, 0.0];
        let o = newton_schulz(&u, 2, 3, &muon);
        let norm = (9.0f64 + 0.25).sqrt();
        for (k, s) in [(0usize, 3.0f64), (4, 0.5)] {
            let mut x = s / norm;
            for _ in 0..5 {
                x = 3.4445 * x - 4.775 * x.powi(3) + 2.0315 * x.powi(5);
            }
            // f32 arithmetic over five steps: a few units in the last place.
            assert!((o[k] as f64 - x).abs() < 1e-5, "{} vs {x}", o[k]);
        }
        for k in [1, 2, 3, 5] {
            assert_eq!(o[k], 0.0);
        }
        // A tall matrix is its transpose's transpose.
        let t = newton_schulz(&transpose(&u, 2, 3), 3, 2, &muon);
        assert_eq!(t, transpose(&o, 2, 3));
    }

    #[test]
    fn adjusted_lr_is_torchs() {
        let mut m = Muon {
            lr: 1.0,
            ..Muon::default()
        };
        assert_eq!(m.adjusted_lr(16, 4), 2.0);
        assert_eq!(m.adjusted_lr(4, 16), 1.0);
        m.adjust_lr_fn = Some(MuonAdjustLr::MatchRmsAdamW);
        assert!((m.adjusted_lr(4, 100) - 2.0).abs() < 1e-15);
        m.adjust_lr_fn = Some(MuonAdjustLr::SpectralUnclamped);
        assert_eq!(m.adjusted_lr(4, 16), 0.5);
    }
}
