//! Adadelta, as `torch.optim.Adadelta`.

use serde_json::{json, Map, Value};

use super::{
    bool_override, check_finite, check_non_negative, elementwise_step, object, Config, GradScales,
    KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Adadelta, as `torch.optim.Adadelta` (PyTorch 2.15) computes it. With `v`
/// the running average of squared gradients (`square_avg`) and `u` that of
/// squared updates (`acc_delta`), per step:
///
/// ```text
/// g ← −g                          if maximize
/// g ← g + weight_decay·θ          if weight_decay ≠ 0
/// v ← rho·v + (1 − rho)·g²
/// Δ = sqrt(u + eps) / sqrt(v + eps) · g
/// u ← rho·u + (1 − rho)·Δ²
/// θ ← θ − lr·Δ
/// ```
///
/// Defaults: `lr = 1`, `rho = 0.9`, `eps = 1e-6`, `weight_decay = 0`.
///
/// Reference: `torch.optim.Adadelta` (PyTorch 2.15, `foreach=False`); the
/// method of Zeiler, "ADADELTA: An Adaptive Learning Rate Method" (2012),
/// which has no learning rate (`lr = 1`, torch's default, is the paper's
/// update).
///
/// With `u` and `v` starting at 0 the first step is
/// `lr·sqrt(eps)·g / sqrt((1 − rho)·g² + eps)`, about
/// `lr·sqrt(eps/(1 − rho))` ≈ 3.2e-3 whatever the gradient's size:
///
/// ```
/// use wgpu_optim::{Adadelta, CpuOptimizer, GpuContext, GpuOptimizer};
/// let adadelta = Adadelta::default();
/// let mut opt = CpuOptimizer::new(adadelta.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[2.0, -0.5]])?;
/// let first = |g: f64| 1e-3 * g / (0.1 * g * g + 1e-6).sqrt();
/// let θ = opt.param(0);
/// assert!((θ[0] as f64 - (1.0 - first(2.0))).abs() < 1e-6);
/// assert!((θ[1] as f64 - (1.0 - first(-0.5))).abs() < 1e-6);
/// assert!((θ[0] - (1.0 - 3.162e-3)).abs() < 1e-5);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// opt.step(&[&[2.0, -0.5]])?;
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, adadelta, &[&[1.0f32, 1.0]])?;
/// for _ in 0..2 {
///     gpu.step(&[&[2.0f32, -0.5]])?;
/// }
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Adadelta {
    /// Factor of the update, default 1.
    pub lr: f64,
    /// Decay of both running averages, default 0.9 (in `[0, 1]`).
    pub rho: f64,
    /// Added inside both square roots, default 1e-6.
    pub eps: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Adadelta {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/adadelta.wgsl` (`struct Scalars` there; the
/// kernels' tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdadeltaScalars {
    pub lr: f32,
    pub rho: f32,
    pub one_minus_rho: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<AdadeltaScalars>() == 32);

impl Rule for Adadelta {
    const NAME: &'static str = "adadelta";
    const KERNEL: KernelSpec = KernelSpec {
        name: "adadelta",
        source: include_str!("../../shaders/adadelta.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["square_avg", "acc_delta"],
        },
    };
    type Scalars = AdadeltaScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        // torch allows rho = 1 (both averages then never change).
        check_finite("rho", self.rho)?;
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(Error::InvalidHyperparameter {
                name: "rho",
                value: self.rho,
                reason: "must be in [0, 1]",
            });
        }
        check_non_negative("eps", self.eps)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["square_avg", "acc_delta"]
    }

    super::lr_is_the_field!();

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![("MAXIMIZE", bool_override(self.maximize))]
    }

    fn scalars(&self, _buffer_filled: bool) -> AdadeltaScalars {
        AdadeltaScalars {
            lr: self.lr as f32,
            rho: self.rho as f32,
            // torch's `value=1 - rho`, a Python float rounded to f32.
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            _pad: [0; 3],
        }
    }

    fn cpu_step(
        &self,
        s: &AdadeltaScalars,
        _entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, self, p, g, scales, st)
        });
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(json!({"lr": self.lr, "rho": self.rho, "eps": self.eps,
            "weight_decay": self.weight_decay, "foreach": null, "capturable": false,
            "maximize": self.maximize, "differentiable": false}))
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Adadelta::default();
        Ok(Adadelta {
            lr: args.num("lr", d.lr)?,
            rho: args.num("rho", d.rho)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new("adadelta", Adadelta::default())]
    }
}

#[inline(always)]
pub(crate) fn step_element(
    s: &AdadeltaScalars,
    c: &Adadelta,
    param: &mut f32,
    grad: f32,
    square_avg: &mut f32,
    acc_delta: &mut f32,
) {
    // Locals in, one store of each out: the loop then vectorizes. The
    // order is torch's: `addcmul_(g, g, value=1 − rho)` is
    // `v + ((1 − rho)·g)·g`, and `delta.div_(std).mul_(g)` divides first.
    let p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        g += s.weight_decay * p;
    }
    let v = *square_avg * s.rho + s.one_minus_rho * g * g;
    *square_avg = v;
    let std = (v + s.eps).sqrt();
    let acc = *acc_delta;
    let delta = (acc + s.eps).sqrt() / std * g;
    *acc_delta = acc * s.rho + s.one_minus_rho * delta * delta;
    *param = p - s.lr * delta;
}

#[inline(always)]
fn step_slice_impl(
    s: &AdadeltaScalars,
    c: &Adadelta,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!(
        "adadelta",
        params,
        grads,
        scales,
        states,
        |p, g, square_avg, acc_delta| step_element(s, c, p, g, square_avg, acc_delta)
    );
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &AdadeltaScalars,
        c: &Adadelta,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps of the docs' example against torch's float32 run of them
    /// (`torch.optim.Adadelta(foreach=False)` on CPU; two elements, so
    /// torch takes its scalar loop, without fused multiply-adds): bit for
    /// bit.
    #[test]
    fn two_steps_are_torchs_bit_for_bit() {
        let c = Adadelta::default();
        let s = c.scalars(false);
        let mut p = [1.0f32, 1.0];
        let (mut v, mut u) = ([0.0f32; 2], [0.0f32; 2]);
        for _ in 0..2 {
            for (i, g) in [2.0f32, -0.5].into_iter().enumerate() {
                step_element(&s, &c, &mut p[i], g, &mut v[i], &mut u[i]);
            }
        }
        let bits = |x: [f32; 2]| x.map(f32::to_bits);
        assert_eq!(bits(p), [1065245730, 1065406959]);
        assert_eq!(bits(v), [1061326684, 1027772252]);
        assert_eq!(bits(u), [906168799, 906168473]);
    }

    #[test]
    fn rho_one_is_allowed_and_above_refused() {
        let ok = Adadelta {
            rho: 1.0,
            ..Adadelta::default()
        };
        assert!(ok.validate(false).is_ok());
        let bad = Adadelta {
            rho: 1.0 + 1e-9,
            ..Adadelta::default()
        };
        assert!(matches!(
            bad.validate(false),
            Err(Error::InvalidHyperparameter { name: "rho", .. })
        ));
    }
}
