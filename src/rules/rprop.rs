//! Rprop, as `torch.optim.Rprop`.

use serde_json::{json, Map, Value};

use super::{
    bool_override, check_finite, check_non_negative, clamp, elementwise_step, object, Config,
    GradScales, KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Rprop (resilient backpropagation), as `torch.optim.Rprop` (PyTorch 2.15)
/// computes it. Each element has its own step size `η` (state
/// `step_size`) and remembers its previous gradient `g_prev` (state
/// `prev`); per step:
///
/// ```text
/// g ← −g                          if maximize
/// f = η₊  if g·g_prev > 0,   η₋  if g·g_prev < 0,   1 otherwise (0, or NaN)
/// η ← clamp(η·f, step_size_min, step_size_max)
/// g ← 0                           where f = η₋ (the sign flipped)
/// θ ← θ − sign(g)·η               (sign(NaN) = 0, as torch.sign)
/// g_prev ← g
/// ```
///
/// with `(η₋, η₊) = etas` and `(step_size_min, step_size_max) =
/// step_sizes`. The step sizes start at `lr`, and the learning rate does
/// nothing else: as in torch, whose step sizes are filled with the group's
/// `lr` when its state is created at the first step, the `lr` in force at
/// the first step sets the initial step sizes, and changing it later
/// (`set_lr`, a schedule) has no effect. Until that first step the state
/// `step_size` holds the `lr` the optimizer was built with; the first step
/// starts from the `lr` in force whatever the state holds (a `write_state`
/// of `step_size` before it included).
///
/// A NaN gradient leaves its parameter as it was (its sign is 0) and goes
/// into `prev`, where it makes the next product NaN: the step after it
/// keeps its step size, as for a zero product.
///
/// Defaults: `lr = 1e-2`, `etas = (0.5, 1.2)`, `step_sizes = (1e-6, 50)`.
/// torch checks `lr ≥ 0` and `0 < η₋ < 1 < η₊`; the step sizes must also
/// be finite, `≥ 0` and `min ≤ max` here (torch does not check them).
///
/// Reference: `torch.optim.Rprop` (PyTorch 2.15, `foreach=False`); the
/// method of Riedmiller and Braun, "A Direct Adaptive Method for Faster
/// Backpropagation Learning: The RPROP Algorithm" (ICNN 1993). torch's is
/// not the article's form, which undoes an element's last move when its
/// gradient flips sign (weight backtracking): it is the one Igel and
/// Hüsken call iRprop⁻ ("Improving the Rprop Learning Algorithm", 2000),
/// where a flip zeroes the gradient, so the element stands still for that
/// step and the next step keeps its step size.
///
/// The step sizes grow by 1.2 while a gradient keeps its sign, halve when
/// it flips, and never depend on the gradient's size:
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, Rprop};
/// let rprop = Rprop::default(); // lr 0.01
/// let mut opt = CpuOptimizer::new(rprop.clone(), &[&[1.0f32, 1.0]])?;
/// let grads: [&[f32]; 3] = [&[2.0, -0.5], &[2.0, -0.5], &[-2.0, -0.5]];
/// for g in grads {
///     opt.step(&[g])?;
/// }
/// // Element 0 moved by 0.01, then 0.012, then stopped (its sign flipped:
/// // the step size halves, prev is zeroed); element 1 by 0.01·(1 + 1.2 + 1.44).
/// let θ = opt.param(0);
/// assert!((θ[0] - 0.978).abs() < 1e-6 && (θ[1] - 1.0364).abs() < 1e-6);
/// let η = opt.state("step_size")?[0];
/// assert!((η[0] - 0.006).abs() < 1e-8 && (η[1] - 0.0144).abs() < 1e-8);
/// assert_eq!(opt.state("prev")?[0], &[0.0f32, -0.5]);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, bit for bit: a sign and one product per step.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, rprop, &[&[1.0f32, 1.0]])?;
/// for g in grads {
///     gpu.step(&[g])?;
/// }
/// assert_eq!(gpu.read_params()?[0], opt.param(0));
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Rprop {
    /// The initial step size, default 1e-2 (see above: only the value in
    /// force at the first step matters).
    pub lr: f64,
    /// `(η₋, η₊)`: the factors of a step size when the gradient's sign
    /// flips and when it stays, default `(0.5, 1.2)`; `0 < η₋ < 1 < η₊`.
    pub etas: (f64, f64),
    /// `(min, max)`: the bounds of the step sizes, default `(1e-6, 50)`.
    pub step_sizes: (f64, f64),
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Rprop {
    fn default() -> Self {
        Rprop {
            lr: 1e-2,
            etas: (0.5, 1.2),
            step_sizes: (1e-6, 50.0),
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/rprop.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RpropScalars {
    pub etaplus: f32,
    /// `η₋` in f32: where the factor equals it, torch zeroes the gradient.
    pub etaminus: f32,
    /// The factor of a negative product: `η₋`, or 1 if `η₋` rounds to 0
    /// in f32 (torch writes η₋ and then turns every 0 factor into 1).
    pub etaminus_factor: f32,
    pub step_size_min: f32,
    pub step_size_max: f32,
    pub _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<RpropScalars>() == 32);

impl Rule for Rprop {
    const NAME: &'static str = "rprop";
    const KERNEL: KernelSpec = KernelSpec {
        name: "rprop",
        source: include_str!("../../shaders/rprop.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["prev", "step_size"],
        },
    };
    type Scalars = RpropScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        let (minus, plus) = self.etas;
        check_finite("etas[0]", minus)?;
        if minus <= 0.0 || minus >= 1.0 {
            return Err(Error::InvalidHyperparameter {
                name: "etas[0]",
                value: minus,
                reason: "must be in (0, 1)",
            });
        }
        check_finite("etas[1]", plus)?;
        if plus <= 1.0 {
            return Err(Error::InvalidHyperparameter {
                name: "etas[1]",
                value: plus,
                reason: "must be > 1",
            });
        }
        let (lo, hi) = self.step_sizes;
        check_non_negative("step_sizes[0]", lo)?;
        check_non_negative("step_sizes[1]", hi)?;
        if lo > hi {
            return Err(Error::InvalidOptions(format!(
                "step_sizes needs min <= max, got ({lo}, {hi})"
            )));
        }
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["prev", "step_size"]
    }

    fn state_initial_value(&self, name: &str) -> f32 {
        match name {
            "step_size" => self.lr as f32,
            _ => 0.0,
        }
    }

    super::lr_is_the_field!();

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![("MAXIMIZE", bool_override(self.maximize))]
    }

    fn scalars(&self, _buffer_filled: bool) -> RpropScalars {
        let etaminus = self.etas.0 as f32;
        RpropScalars {
            etaplus: self.etas.1 as f32,
            etaminus,
            etaminus_factor: if etaminus == 0.0 { 1.0 } else { etaminus },
            step_size_min: self.step_sizes.0 as f32,
            step_size_max: self.step_sizes.1 as f32,
            _pad: [0; 3],
        }
    }

    /// `[first, lr]`: on the first step (`first` = 1) the step sizes start
    /// from `lr` in f32, torch's `full_like(grad, lr)`, whatever the state
    /// holds; later entries are `[0, lr]` and the state is read.
    fn step_entry(&self, step: u64) -> StepEntry {
        [(step <= 1) as u32 as f32, self.lr as f32, 0.0, 0.0]
    }

    fn cpu_step(
        &self,
        s: &RpropScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        let initial = (entry[0] != 0.0).then_some(entry[1]);
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, initial, self, p, g, scales, st)
        });
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(json!({"lr": self.lr, "etas": [self.etas.0, self.etas.1],
            "step_sizes": [self.step_sizes.0, self.step_sizes.1], "foreach": null,
            "maximize": self.maximize, "differentiable": false, "capturable": false}))
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Rprop::default();
        Ok(Rprop {
            lr: args.num("lr", d.lr)?,
            etas: args.num_pair("etas", d.etas)?,
            step_sizes: args.num_pair("step_sizes", d.step_sizes)?,
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new("rprop", Rprop::default())]
    }
}

/// `torch.sign` in f32: ±1, and 0 for ±0 and NaN.
#[inline(always)]
pub(crate) fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// One element; `initial` is the first step's `lr` (the step size then
/// starts from it, not from the state).
#[inline(always)]
pub(crate) fn step_element(
    s: &RpropScalars,
    initial: Option<f32>,
    c: &Rprop,
    param: &mut f32,
    grad: f32,
    prev: &mut f32,
    step_size: &mut f32,
) {
    // Locals in, one store of each out: the loop then vectorizes. A NaN
    // product compares false both ways: factor 1, as torch's sign(NaN) = 0.
    let p = *param;
    let g = if c.maximize { -grad } else { grad };
    let product = g * *prev;
    let factor = if product > 0.0 {
        s.etaplus
    } else if product < 0.0 {
        s.etaminus_factor
    } else {
        1.0
    };
    let old = initial.unwrap_or(*step_size);
    let eta = clamp(old * factor, s.step_size_min, s.step_size_max);
    *step_size = eta;
    let g = if factor == s.etaminus { 0.0 } else { g };
    *param = p - sign(g) * eta;
    *prev = g;
}

#[inline(always)]
fn step_slice_impl(
    s: &RpropScalars,
    initial: Option<f32>,
    c: &Rprop,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!(
        "rprop",
        params,
        grads,
        scales,
        states,
        |p, g, prev, step_size| { step_element(s, initial, c, p, g, prev, step_size) }
    );
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &RpropScalars,
        initial: Option<f32>,
        c: &Rprop,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step over the special products against torch's float32 run of
    /// it (`torch.optim.Rprop(lr=0.01, foreach=False)` after a first step
    /// of zero gradients, `prev` then overwritten): positive, negative and
    /// zero products, NaN and infinite ones, a zero and a NaN gradient; and
    /// with an `η₋` that rounds to 0 in f32 (torch's `sign == 0 → 1` then
    /// catches it) and one that rounds to 1 (every factor-1 gradient is
    /// zeroed).
    #[test]
    fn special_products_are_torchs() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let prev = [1.0, 1.0, -1.0, 0.0, nan, inf, -inf, 2.0, 1.0];
        let grad = [2.0, -2.0, -3.0, 5.0, 1.0, 1.0, 1.0, 0.0, nan];
        let (a, b, c) = (0.012f32, 0.01f32, 0.005f32);
        // etas, then torch's parameters, step sizes and prev after the step.
        type Expected = ((f64, f64), [f32; 9], [f32; 9], [f32; 9]);
        #[rustfmt::skip]
        let expected: [Expected; 3] = [
            ((0.5, 1.2),
             [-a, 0.0, a, -b, -b, -a, 0.0, 0.0, 0.0],
             [a, c, a, b, b, a, c, b, b],
             [2.0, 0.0, -3.0, 5.0, 1.0, 1.0, 0.0, 0.0, nan]),
            ((1e-50, 1.2),
             [-a, b, a, -b, -b, -a, -b, 0.0, 0.0],
             [a, b, a, b, b, a, b, b, b],
             [2.0, -2.0, -3.0, 5.0, 1.0, 1.0, 1.0, 0.0, nan]),
            ((1.0 - 1e-10, 1.2),
             [-a, 0.0, a, 0.0, 0.0, -a, 0.0, 0.0, 0.0],
             [a, b, a, b, b, a, b, b, b],
             [2.0, 0.0, -3.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
        ];
        let same = |x: f32, y: f32| x == y || (x.is_nan() && y.is_nan());
        for (etas, params, step_sizes, prevs) in expected {
            let c = Rprop {
                etas,
                ..Rprop::default()
            };
            let s = c.scalars(false);
            for i in 0..9 {
                let (mut p, mut pr, mut eta) = (0.0f32, prev[i], 0.01f32);
                step_element(&s, None, &c, &mut p, grad[i], &mut pr, &mut eta);
                let what = format!("etas {etas:?}, element {i}");
                assert!(same(p, params[i]), "{what}: param {p}, torch {}", params[i]);
                assert_eq!(eta, step_sizes[i], "{what}: step_size");
                assert!(same(pr, prevs[i]), "{what}: prev {pr}, torch {}", prevs[i]);
            }
        }
    }
}
