//! Lion, as lion-pytorch's `Lion` computes it.

use serde_json::{json, Map, Value};

use super::{
    bool_override, check_closed_unit_interval, check_finite, check_non_negative, elementwise_step,
    object, Config, GradScales, KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::Result;
use crate::layout::Layout;

/// Lion (EvoLved Sign Momentum), as `lion_pytorch.Lion` (lion-pytorch
/// 0.2.5) computes it. With `m` the momentum (`exp_avg`), per step:
///
/// ```text
/// g ← −g                              if maximize (this crate's option)
/// θ ← θ·(1 − lr·weight_decay)         (decoupled weight decay)
/// θ ← θ − lr·sign(β1·m + (1 − β1)·g)  (sign(0) = 0, and sign(NaN) = 0 as torch.sign)
/// m ← β2·m + (1 − β2)·g
/// ```
///
/// Every element moves by exactly `lr` (or not at all) per step besides
/// the decay, whatever the gradient's size. Two betas: `β1` interpolates
/// the update's direction, `β2` (closer to 1) is the memory of the
/// momentum itself. Nothing depends on the step count.
/// Defaults (lion-pytorch's): `lr = 1e-4`, `betas = (0.9, 0.99)`,
/// `weight_decay = 0`. The paper advises an lr 3 to 10 times smaller
/// than AdamW's and a weight decay as many times larger, since the
/// decay is multiplied by `lr`.
///
/// Reference: `lion_pytorch.Lion` (lion-pytorch 0.2.5, `use_triton=False`,
/// `decoupled_weight_decay=False`); the method of Chen et al., "Symbolic
/// Discovery of Optimization Algorithms" (NeurIPS 2023), whose Program 1
/// it follows. lion-pytorch asserts `lr > 0` and both betas in `[0, 1]`
/// and does not check `weight_decay`; this crate takes `lr = 0` too (a
/// schedule reaches it, and a checkpoint taken then must load) and
/// refuses a weight decay that is not finite.
///
/// The sign of `β1·m + (1 − β1)·g` is read by comparing the two rounded
/// products (`β1·m` against `−(1 − β1)·g`), which gives the sign of their
/// rounded sum exactly: a GPU that fuses the addition into a multiply-add
/// cannot take another sign than the CPU.
///
/// With a steady gradient each step moves every element by `lr`, here 0.1,
/// against the gradient's sign, whatever its size:
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, Lion};
/// let lion = Lion { lr: 0.1, ..Lion::default() };
/// let mut opt = CpuOptimizer::new(lion.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// let θ = opt.param(0);
/// assert!((θ[0] - 0.8).abs() < 1e-6 && (θ[1] - 1.2).abs() < 1e-6);
/// // m after two steps: (1 − β2)·g·(1 + β2)
/// assert!((opt.state("exp_avg")?[0][0] - 0.01 * 0.5 * 1.99).abs() < 1e-7);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, lion, &[&[1.0f32, 1.0]])?;
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
pub struct Lion {
    /// Learning rate: the size of every step, default 1e-4.
    pub lr: f64,
    /// `(β1, β2)`: the update's interpolation and the momentum's decay,
    /// each in `[0, 1]`, default `(0.9, 0.99)`.
    pub betas: (f64, f64),
    /// Decoupled weight decay (`θ·(1 − lr·weight_decay)`), default 0.
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it (this crate's
    /// option; lion-pytorch has none).
    pub maximize: bool,
}

impl Default for Lion {
    fn default() -> Self {
        Lion {
            lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/lion.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LionScalars {
    pub lr: f32,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 − lr·weight_decay`, 1 without decay (an exact no-op, as torch's
    /// `mul_(1.0)`).
    pub decay_factor: f32,
    /// Always 0: the kernel ORs it into the momentum's products, so that
    /// no compiler can fuse them into a multiply-add (see `shaders/lion.wgsl`).
    pub zero: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<LionScalars>() == 32);

impl Rule for Lion {
    const NAME: &'static str = "lion";
    // lion-pytorch keeps no step count (nothing depends on it).
    const TORCH_STEP: bool = false;
    const KERNEL: KernelSpec = KernelSpec {
        name: "lion",
        source: include_str!("../../shaders/lion.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["exp_avg"],
        },
    };
    type Scalars = LionScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_closed_unit_interval("betas[0]", self.betas.0)?;
        check_closed_unit_interval("betas[1]", self.betas.1)?;
        check_finite("weight_decay", self.weight_decay)?;
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["exp_avg"]
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }

    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        check_closed_unit_interval("betas[0]", value)?;
        self.betas.0 = value;
        Ok(())
    }

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![("MAXIMIZE", bool_override(self.maximize))]
    }

    fn scalars(&self, _buffer_filled: bool) -> LionScalars {
        let (beta1, beta2) = self.betas;
        LionScalars {
            lr: self.lr as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            zero: 0,
            _pad: 0,
        }
    }

    fn cpu_step(
        &self,
        s: &LionScalars,
        _entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, self.maximize, p, g, scales, st)
        });
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1],
            "weight_decay": self.weight_decay, "maximize": self.maximize}))
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Lion::default();
        Ok(Lion {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            maximize: args.own_flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new("lion", Lion::default())]
    }
}

/// `sign(a + b)` of two `f32`s as torch's `sign` takes it of their rounded
/// sum (0 for ±0 and NaN), by comparing `a` with `−b`: the rounded sum of
/// two floats is 0 only when they cancel exactly, and otherwise has the
/// exact sum's sign. The same as `sign_of_sum` in `shaders/lion.wgsl`.
#[inline(always)]
fn sign_of_sum(a: f32, b: f32) -> f32 {
    let nb = -b;
    if a > nb {
        1.0
    } else if a < nb {
        -1.0
    } else {
        0.0
    }
}

#[inline(always)]
fn step_element(s: &LionScalars, maximize: bool, param: &mut f32, grad: f32, exp_avg: &mut f32) {
    // Locals in, one store of each out: the loop then vectorizes.
    let g = if maximize { -grad } else { grad };
    let m = *exp_avg;
    let p = *param * s.decay_factor;
    let direction = sign_of_sum(m * s.beta1, s.one_minus_beta1 * g);
    *param = p - s.lr * direction;
    *exp_avg = m * s.beta2 + s.one_minus_beta2 * g;
}

#[inline(always)]
fn step_slice_impl(
    s: &LionScalars,
    maximize: bool,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!("lion", params, grads, scales, states, |p, g, exp_avg| {
        step_element(s, maximize, p, g, exp_avg)
    });
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &LionScalars,
        maximize: bool,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_bits(x: f32) -> u32 {
        if x.is_nan() {
            f32::NAN.to_bits()
        } else {
            x.to_bits()
        }
    }

    /// torch.sign of the rounded sum: 0 for an exact cancellation, for ±0
    /// and for NaN; ±1 otherwise, infinities included (inf − inf is NaN,
    /// so 0).
    #[test]
    fn sign_of_sum_is_torch_sign_of_the_rounded_sum() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-45,
            -1e-45,
            3.0e38,
            -3.0e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.1,
            -0.1f32,
        ];
        for &a in &values {
            for &b in &values {
                let sum = a + b;
                let torch: f32 = if sum > 0.0 {
                    1.0
                } else if sum < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                assert_eq!(sign_of_sum(a, b).to_bits(), torch.to_bits(), "{a} + {b}");
            }
        }
    }

    /// The dispatched (AVX-512 or AVX2) build and the baseline one give the
    /// same bits, infinities and signed zeros included, and NaN in the same
    /// places (which of two NaN operands an instruction passes on, and so
    /// the NaN's sign, depends on the operand order the compiler picks).
    #[test]
    fn dispatched_equals_baseline_bit_for_bit() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e-3,
            -2.0,
        ];
        let n = 1003;
        let pick = |i: usize, k: usize| specials[(i * k + i / 7) % specials.len()];
        let grads: Vec<f32> = (0..n).map(|i| pick(i, 3)).collect();
        let lion = Lion {
            weight_decay: 0.1,
            maximize: true,
            ..Lion::default()
        };
        let s = lion.scalars(false);
        let run = |dispatched: bool| {
            let mut p: Vec<f32> = (0..n).map(|i| pick(i, 13)).collect();
            let mut m: Vec<f32> = (0..n).map(|i| pick(i, 5)).collect();
            let mut views: Vec<&mut [f32]> = vec![m.as_mut_slice()];
            let step = if dispatched {
                step_slice
            } else {
                step_slice_impl
            };
            step(&s, true, &mut p, &grads, GradScales::default(), &mut views);
            let mut bits: Vec<u32> = p.iter().map(|x| canonical_bits(*x)).collect();
            bits.extend(m.iter().map(|x| canonical_bits(*x)));
            bits
        };
        assert_eq!(run(true), run(false));
    }
}
