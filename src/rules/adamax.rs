//! Adamax, as `torch.optim.Adamax`.

use serde_json::{json, Map, Value};

use super::{
    bias_correction, bool_override, check_non_negative, check_unit_interval, elementwise_step,
    lerp, maximum, object, Config, GradScales, KernelShape, KernelSpec, Preset, Rule, StepEntry,
    TorchArgs,
};
use crate::error::Result;
use crate::layout::Layout;

/// Adamax, Adam with the infinity norm, as `torch.optim.Adamax` (PyTorch
/// 2.15) computes it. With `t` the step number, `m` (`exp_avg`) and `u`
/// (`exp_inf`), per step:
///
/// ```text
/// g ← −g                          if maximize
/// g ← g + weight_decay·θ          if weight_decay ≠ 0 (L2)
/// m ← lerp(m, g, 1 − β1)          (= β1·m + (1 − β1)·g)
/// u ← max(β2·u, |g| + eps)        (NaN if either is, as torch.maximum)
/// θ ← θ − ((lr / (1 − β1ᵗ))·m) / u
/// ```
///
/// `lr / (1 − β1ᵗ)` is computed on the host in f64 with the `β1` in force
/// at step `t`, as PyTorch does when a schedule cycles it; the last line is
/// torch's `addcdiv` in its order (the scalar times `m`, then divided by
/// `u`).
///
/// Defaults: `lr = 2e-3`, `betas = (0.9, 0.999)`, `eps = 1e-8`,
/// `weight_decay = 0`, `maximize = false`.
///
/// Reference: `torch.optim.Adamax` (PyTorch 2.15, `foreach=False`); the
/// method of Kingma and Ba, "Adam: A Method for Stochastic Optimization"
/// (ICLR 2015), section 7.1. The article has no `eps`; torch adds it to
/// `|g|` inside the maximum.
///
/// With a steady gradient `u = |g| + eps` and every step moves each
/// element by `lr` (to within `eps/|g|`), whatever the gradient's size:
///
/// ```
/// use wgpu_optim::{Adamax, CpuOptimizer, GpuContext, GpuOptimizer};
/// let adamax = Adamax { lr: 0.1, ..Adamax::default() };
/// let mut opt = CpuOptimizer::new(adamax.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// let θ = opt.param(0);
/// assert!((θ[0] - 0.8).abs() < 1e-6 && (θ[1] - 1.2).abs() < 1e-6);
/// // max(β2·u, |g| + eps): eps is below the rounding of 0.5 and of 20.
/// assert_eq!(opt.state("exp_inf")?[0], &[0.5f32, 20.0]);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, adamax, &[&[1.0f32, 1.0]])?;
/// for _ in 0..2 {
///     gpu.step(&[&[0.5f32, -20.0]])?;
/// }
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Adamax {
    /// Learning rate, default 2e-3.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to `|g|` in the infinity norm, default 1e-8.
    pub eps: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Adamax {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/adamax.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdamaxScalars {
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub eps: f32,
    pub weight_decay: f32,
}
const _: () = assert!(std::mem::size_of::<AdamaxScalars>() == 16);

impl Rule for Adamax {
    const NAME: &'static str = "adamax";
    const KERNEL: KernelSpec = KernelSpec {
        name: "adamax",
        source: include_str!("../../shaders/adamax.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["exp_avg", "exp_inf"],
        },
    };
    type Scalars = AdamaxScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("betas[0]", self.betas.0)?;
        check_unit_interval("betas[1]", self.betas.1)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["exp_avg", "exp_inf"]
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }

    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        super::set_beta1(&mut self.betas, value)
    }

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![("MAXIMIZE", bool_override(self.maximize))]
    }

    fn scalars(&self, _buffer_filled: bool) -> AdamaxScalars {
        let (beta1, beta2) = self.betas;
        AdamaxScalars {
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    /// `[lr / (1 − β1ᵗ)]` (torch's `clr`), computed in f64.
    fn step_entry(&self, step: u64) -> StepEntry {
        let clr = self.lr / bias_correction(self.betas.0, step);
        [clr as f32, 0.0, 0.0, 0.0]
    }

    fn cpu_step(
        &self,
        s: &AdamaxScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, entry[0], self, p, g, scales, st)
        });
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay, "foreach": null, "maximize": self.maximize,
            "differentiable": false, "capturable": false}),
        )
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Adamax::default();
        Ok(Adamax {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new("adamax", Adamax::default())]
    }
}

#[inline(always)]
pub(crate) fn step_element(
    s: &AdamaxScalars,
    clr: f32,
    c: &Adamax,
    param: &mut f32,
    grad: f32,
    exp_avg: &mut f32,
    exp_inf: &mut f32,
) {
    // Locals in, one store of each out: the loop then vectorizes.
    let p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        g += s.weight_decay * p;
    }
    let m = lerp(*exp_avg, g, s.one_minus_beta1);
    let u = maximum(*exp_inf * s.beta2, g.abs() + s.eps);
    *exp_avg = m;
    *exp_inf = u;
    // torch: p + ((−clr)·m)/u; negation is exact, so this is the same.
    *param = p - clr * m / u;
}

#[inline(always)]
fn step_slice_impl(
    s: &AdamaxScalars,
    clr: f32,
    c: &Adamax,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!("adamax", params, grads, scales, states, |p, g, m, u| {
        step_element(s, clr, c, p, g, m, u)
    });
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &AdamaxScalars,
        clr: f32,
        c: &Adamax,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The infinity norm's NaN-propagating maximum gives the same bits in
    /// the build this processor dispatches to (AVX-512 or AVX2 here) as in
    /// the baseline one, NaN, ±inf and ±0 included, over vector bodies and
    /// tails; `exp_inf` is NaN wherever torch.maximum makes it NaN.
    #[test]
    fn dispatched_equals_baseline_bit_for_bit() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e-3,
            2.0,
        ];
        let n = 1003;
        let pick = |i: usize, k: usize| specials[(i * k + i / 7) % specials.len()];
        let grads: Vec<f32> = (0..n).map(|i| pick(i, 3)).collect();
        let init: Vec<Vec<f32>> = vec![
            (0..n).map(|i| pick(i, 5)).collect(),
            (0..n).map(|i| pick(i, 2).abs()).collect(),
        ];
        let adamax = Adamax {
            weight_decay: 0.1,
            ..Adamax::default()
        };
        let (s, entry) = (adamax.scalars(false), adamax.step_entry(3));
        let run = |dispatched: bool| {
            let mut p: Vec<f32> = (0..n).map(|i| pick(i, 13)).collect();
            let mut st = init.clone();
            let mut views: Vec<&mut [f32]> = st.iter_mut().map(|v| v.as_mut_slice()).collect();
            let step = if dispatched {
                step_slice
            } else {
                step_slice_impl
            };
            step(
                &s,
                entry[0],
                &adamax,
                &mut p,
                &grads,
                GradScales::default(),
                &mut views,
            );
            let mut bits: Vec<u32> = p.iter().map(|x| x.to_bits()).collect();
            for v in &st {
                bits.extend(v.iter().map(|x| x.to_bits()));
            }
            (bits, p, st[1].clone())
        };
        let (fast, p0, exp_inf) = run(true);
        assert_eq!(fast, run(false).0);
        for i in 0..n {
            let g = grads[i] + 0.1 * pick(i, 13);
            if init[1][i].is_nan() || g.is_nan() {
                assert!(exp_inf[i].is_nan(), "{i}: exp_inf {}", exp_inf[i]);
            } else {
                assert_eq!(exp_inf[i], (init[1][i] * 0.999).max(g.abs() + 1e-8), "{i}");
            }
        }
        assert!(p0.iter().any(|x| x.is_finite()));
    }
}
