//! Adafactor, as `torch.optim.Adafactor` (2.15) computes it.

use serde_json::{json, Map, Value};

use super::{
    check_finite, check_non_negative, lerp, object, Config, GradScales, KernelShape, KernelSpec,
    Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::{Layout, Shape};

/// Adafactor, as `torch.optim.Adafactor` (PyTorch 2.15, `foreach=False`)
/// computes it: Adam-like steps whose second moment of a matrix is
/// factored into its row and column means, so that a `rows × cols` matrix
/// keeps `rows + cols` numbers of state instead of `rows·cols`. Per step
/// `t` (1 for the first), with `G` the gradient (`−G` if `maximize`):
///
/// ```text
/// β̂2 = 1 − t^beta2_decay ;  ρ = min(lr, 1/√t)
/// α = max(eps2, RMS(θ))·ρ                      (θ before this step's decay)
/// θ ← θ·(1 − lr·weight_decay)
/// matrix:  R ← lerp(R, mean_cols(G²), 1 − β̂2)  (row_var, rows × 1)
///          C ← lerp(C, mean_rows(G²), 1 − β̂2)  (col_var, 1 × cols)
///          V = R·C / max(mean(R), eps1)
/// vector:  V ← lerp(V, G², 1 − β̂2)              (variance)
/// U = G / sqrt(max(V, eps1²))
/// θ ← θ − α·U / max(1, RMS(U)/d)
/// ```
///
/// A tensor whose [`Shape`] has two or more dimensions is factored over
/// its last two (a batch of matrices, each its own `R` and `C`, as torch
/// does); one given without a shape, or with fewer dimensions, is a vector.
/// Defaults (torch's): `lr = 1e-2`, `beta2_decay = −0.8`, `eps = (None,
/// 1e-3)` (`eps1 = None` is the machine epsilon of the parameters' dtype,
/// f32's here), `d = 1`, `weight_decay = 0`, `maximize = false`. Unlike
/// Adam's, the lr is a cap on the relative step size `ρ` and the weight
/// decay's factor; the step itself is relative to the parameters' RMS.
///
/// Reference: `torch.optim.Adafactor` (2.15), which follows Shazeer and
/// Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"
/// (ICML 2018). On the GPU (`GpuOptimizer::with_shapes`) the row and
/// column sums run in the step's own submission, deterministically.
///
/// ```
/// use wgpu_optim::{Adafactor, CpuOptimizer, Shape};
/// let w = vec![1.0f32; 12];
/// let b = vec![0.5f32; 3];
/// let shapes = [Shape::matrix(3, 4), Shape::vector(3)];
/// let mut opt = CpuOptimizer::with_shapes(Adafactor::default(), &[&w, &b], &shapes)?;
/// opt.step(&[&[0.1; 12], &[2.0; 3]])?;
/// // The matrix keeps 3 row and 4 column statistics, the vector its own.
/// assert_eq!(opt.state("row_var")?[0].len(), 3);
/// assert_eq!(opt.state("col_var")?[0].len(), 4);
/// assert_eq!(opt.state("variance")?[1].len(), 3);
/// // A first step moves every element by lr·RMS(θ) against its gradient.
/// assert!((opt.param(0)[0] - (1.0 - 0.01)).abs() < 1e-6);
/// assert!((opt.param(1)[0] - (0.5 - 0.01 * 0.5)).abs() < 1e-6);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Adafactor {
    /// Learning rate: the cap of the relative step size `ρ`, and the
    /// factor of the weight decay; default 1e-2.
    pub lr: f64,
    /// `τ`: the second-moment decay is `1 − t^τ`, `τ <= 0`; default −0.8.
    pub beta2_decay: f64,
    /// `(eps1, eps2)`: the floor of the second moment (`eps1`, squared;
    /// `None` is the machine epsilon of f32) and of the parameters' RMS in
    /// the step size (`eps2`); default `(None, 1e-3)`.
    pub eps: (Option<f64>, f64),
    /// `d >= 1`: the update's RMS is clipped to `d`; default 1.
    pub d: f64,
    /// Decoupled weight decay (`θ·(1 − lr·weight_decay)`), default 0.
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Adafactor {
    fn default() -> Self {
        Adafactor {
            lr: 1e-2,
            beta2_decay: -0.8,
            eps: (None, 1e-3),
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Adafactor {
    /// `eps1` as torch uses it for f32 parameters.
    pub(crate) fn eps1(&self) -> f64 {
        self.eps.0.unwrap_or(f32::EPSILON as f64)
    }
}

/// Adafactor's per-step scalars that stay the same from step to step (the
/// CPU step and the GPU's descriptors, src/gpu/matrix.rs, read these).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdafactorScalars {
    /// `1 − lr·weight_decay` (1 without decay: torch skips the multiply).
    pub decay_factor: f32,
    /// `eps1` (the floor of the row statistics' mean).
    pub eps1: f32,
    /// `eps1²` (the floor of the second moment).
    pub eps1_squared: f32,
    pub _pad: u32,
}

impl Rule for Adafactor {
    const NAME: &'static str = "adafactor";
    const KERNEL: KernelSpec = KernelSpec {
        name: "adafactor",
        source: "",
        shape: KernelShape::None,
    };
    const MATRIX: bool = true;
    type Scalars = AdafactorScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_finite("beta2_decay", self.beta2_decay)?;
        if self.beta2_decay > 0.0 {
            return Err(Error::InvalidHyperparameter {
                name: "beta2_decay",
                value: self.beta2_decay,
                reason: "must be <= 0",
            });
        }
        if let Some(eps1) = self.eps.0 {
            check_non_negative("eps[0]", eps1)?;
        }
        check_non_negative("eps[1]", self.eps.1)?;
        check_finite("d", self.d)?;
        if self.d < 1.0 {
            return Err(Error::InvalidHyperparameter {
                name: "d",
                value: self.d,
                reason: "must be >= 1",
            });
        }
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["row_var", "col_var", "variance"]
    }

    fn state_len(&self, name: &str, shape: Option<&Shape>, len: usize) -> usize {
        match (name, shape.filter(|s| s.is_matrix())) {
            ("row_var", Some(s)) => s.batch() * s.rows(),
            ("col_var", Some(s)) => s.batch() * s.cols(),
            ("variance", None) => len,
            _ => 0,
        }
    }

    fn has_state(&self, name: &str, shape: Option<&Shape>) -> bool {
        let matrix = shape.is_some_and(Shape::is_matrix);
        match name {
            "row_var" | "col_var" => matrix,
            _ => !matrix,
        }
    }

    super::lr_is_the_field!();

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    fn scalars(&self, _buffer_filled: bool) -> AdafactorScalars {
        let eps1 = self.eps1();
        AdafactorScalars {
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            eps1: eps1 as f32,
            eps1_squared: (eps1 * eps1) as f32,
            _pad: 0,
        }
    }

    /// `[1 − β̂2 = t^beta2_decay, ρ = min(lr, 1/√t)]`.
    fn step_entry(&self, step: u64) -> StepEntry {
        let t = step as f64;
        [
            t.powf(self.beta2_decay) as f32,
            self.lr.min(1.0 / t.sqrt()) as f32,
            0.0,
            0.0,
        ]
    }

    fn cpu_step(
        &self,
        s: &AdafactorScalars,
        entry: StepEntry,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        let (weight, rho) = (entry[0], entry[1] as f64);
        let [rows_state, cols_state, var_state] = states else {
            return;
        };
        // Where each tensor's statistics start in the packed state tensors.
        let (mut row_at, mut col_at, mut var_at) = (0, 0, 0);
        for i in 0..layout.len() {
            let shape = layout.shape(i);
            let n = layout.lengths()[i];
            let take = |at: &mut usize, name: &str| {
                let len = self.state_len(name, shape, n);
                *at += len;
                *at - len..*at
            };
            let (row_r, col_r, var_r) = (
                take(&mut row_at, "row_var"),
                take(&mut col_at, "col_var"),
                take(&mut var_at, "variance"),
            );
            let r = layout.range(i);
            let p = &mut params[r.clone()];
            let g: Vec<f32> = grads[r]
                .iter()
                .map(|&g| {
                    let g = scales.apply(g);
                    if self.maximize {
                        -g
                    } else {
                        g
                    }
                })
                .collect();
            // α from θ before the decay, as torch takes it.
            let rms = (sum_squares(p) / p.len().max(1) as f64).sqrt();
            let alpha = self.eps.1.max(rms) * rho;
            if self.weight_decay != 0.0 {
                for p in p.iter_mut() {
                    *p *= s.decay_factor;
                }
            }
            let update = match shape.filter(|sh| sh.is_matrix()) {
                Some(shape) => factored_update(
                    shape,
                    &g,
                    &mut rows_state[row_r],
                    &mut cols_state[col_r],
                    weight,
                    s,
                ),
                None => g
                    .iter()
                    .zip(var_state[var_r].iter_mut())
                    .map(|(&g, v)| {
                        *v = lerp(*v, g * g, weight);
                        rsqrt(v.max(s.eps1_squared)) * g
                    })
                    .collect(),
            };
            let update_rms = (sum_squares(&update) / update.len().max(1) as f64).sqrt();
            let denom = (update_rms / self.d).max(1.0);
            let step = (-alpha / denom) as f32;
            for (p, u) in p.iter_mut().zip(&update) {
                *p += step * u;
            }
        }
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(json!({"lr": self.lr, "beta2_decay": self.beta2_decay,
            "eps": [self.eps.0, self.eps.1], "d": self.d,
            "weight_decay": self.weight_decay, "maximize": self.maximize}))
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Adafactor::default();
        Ok(Adafactor {
            lr: args.num("lr", d.lr)?,
            beta2_decay: args.num("beta2_decay", d.beta2_decay)?,
            eps: args.nullable_first_pair("eps", d.eps)?,
            d: args.num("d", d.d)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        // `bench` runs flat tensors: Adafactor would factor nothing.
        Vec::new()
    }
}

/// torch's `rsqrt` in f32 (`1/sqrt(x)`, the update multiplying it).
#[inline(always)]
fn rsqrt(x: f32) -> f32 {
    1.0 / x.sqrt()
}

/// `Σ x²` in f64 (torch's f32 norms accumulate wider than f32 too).
fn sum_squares(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// A factored tensor's update `G / sqrt(max(V, eps1²))`, moving its row
/// and column statistics (`rows`: batch·rows, `cols`: batch·cols) first.
fn factored_update(
    shape: &Shape,
    g: &[f32],
    rows: &mut [f32],
    cols: &mut [f32],
    weight: f32,
    s: &AdafactorScalars,
) -> Vec<f32> {
    let (nr, nc) = (shape.rows(), shape.cols());
    let mut update = vec![0.0f32; g.len()];
    for b in 0..shape.batch() {
        let gm = &g[b * nr * nc..(b + 1) * nr * nc];
        let rv = &mut rows[b * nr..(b + 1) * nr];
        let cv = &mut cols[b * nc..(b + 1) * nc];
        // torch: vector_norm(G, dim).square() / size: an f32 norm, squared.
        for (r, rv) in rv.iter_mut().enumerate() {
            let norm = sum_squares(&gm[r * nc..(r + 1) * nc]).sqrt() as f32;
            *rv = lerp(*rv, norm * norm / nc as f32, weight);
        }
        let mut col_sums = vec![0.0f64; nc];
        for row in gm.chunks(nc) {
            for (acc, &x) in col_sums.iter_mut().zip(row) {
                *acc += x as f64 * x as f64;
            }
        }
        for (cv, sum) in cv.iter_mut().zip(&col_sums) {
            let norm = sum.sqrt() as f32;
            *cv = lerp(*cv, norm * norm / nr as f32, weight);
        }
        let row_mean = (rv.iter().map(|&x| x as f64).sum::<f64>() / nr.max(1) as f64) as f32;
        let denom = row_mean.max(s.eps1);
        let um = &mut update[b * nr * nc..(b + 1) * nr * nc];
        for (r, &rvr) in rv.iter().enumerate() {
            for c in 0..nc {
                let v = rvr * cv[c] / denom;
                um[r * nc + c] = rsqrt(v.max(s.eps1_squared)) * gm[r * nc + c];
            }
        }
    }
    update
}
