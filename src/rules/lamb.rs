//! LAMB: layer-wise adaptive moments, as NVIDIA Apex `FusedLAMB` and optax
//! `lamb` compute it.

use serde_json::{json, Map, Value};

use super::{
    bias_correction, bool_override, check_non_negative, check_unit_interval, object, Config,
    GradScales, KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs, CPU_CHUNK,
};
use crate::clip::{finish_lanes, BLOCK, LANES};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// LAMB (You et al., "Large Batch Optimization for Deep Learning: Training
/// BERT in 76 minutes"), in the form of NVIDIA Apex `FusedLAMB`
/// (`adam_w_mode`, no internal gradient clipping) and optax `lamb`. Per
/// tensor, with `t` the step number:
///
/// ```text
/// m ← β1·m + (1 − β1)·g                         (state `exp_avg`)
/// v ← β2·v + (1 − β2)·g²                        (state `exp_avg_sq`)
/// u = (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + eps) + weight_decay·θ
/// r = ‖θ‖ / ‖u‖   unless a norm is 0, then 1     (the trust ratio, per tensor;
///                                               a NaN norm makes it NaN, as in Apex and optax)
/// θ ← θ − lr·r·u
/// ```
///
/// Options users of the other implementations expect:
/// [`Lamb::trust_ratio_clamp`] bounds `r` to `[min, max]` (DeepSpeed),
/// [`Lamb::unit_ratio_without_decay`] keeps `r = 1` for tensors of a group
/// with no weight decay (Apex without `use_nvlamb`), and
/// [`Lamb::eps_inside_sqrt`] uses `sqrt(v̂ + eps)`.
///
/// Defaults are Apex `FusedLAMB`'s: `lr = 1e-3`, `betas = (0.9, 0.999)`,
/// `eps = 1e-6`, `weight_decay = 0.01`.
///
/// On the GPU the per-tensor norms are computed in the same submission as
/// the update, for all tensors together, by deterministic reductions (a
/// fixed tiling and a fixed summation tree, no atomics). On the CPU the
/// step keeps the update direction `u` between its two passes in a buffer
/// of 4 bytes a parameter, held by the process from the first step on (the
/// largest LAMB model's size, shared by every LAMB optimizer).
///
/// The trust ratio makes each tensor's step `lr·‖θ‖` long whatever the
/// gradient's size: here `‖θ‖ = 5`, so the first step moves θ by 0.5,
/// along `u` (the sign of the gradient, on the first step):
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, Lamb};
/// let lamb = Lamb { lr: 0.1, weight_decay: 0.0, ..Lamb::default() };
/// let mut opt = CpuOptimizer::new(lamb.clone(), &[&[3.0f32, 4.0]])?;
/// opt.step(&[&[0.5, 20.0]])?; // u ≈ (1, 1), r = 5/√2
/// let θ = opt.param(0);
/// let d = 0.5 / 2f32.sqrt();
/// assert!((θ[0] - (3.0 - d)).abs() < 1e-5 && (θ[1] - (4.0 - d)).abs() < 1e-5);
/// // The same step through the GPU kernels (lavapipe will do) gives the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, lamb, &[&[3.0f32, 4.0]])?;
/// gpu.step(&[&[0.5f32, 20.0]])?;
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Lamb {
    /// Learning rate, default 1e-3.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to the denominator, default 1e-6.
    pub eps: f64,
    /// Decoupled weight decay inside the update `u`, default 0.01.
    pub weight_decay: f64,
    /// Clamp the trust ratio to `[min, max]` (DeepSpeed's `min_coeff`,
    /// `max_coeff`; a NaN ratio stays NaN, as `torch.clamp` keeps it);
    /// `None` (default) leaves it unbounded.
    pub trust_ratio_clamp: Option<(f64, f64)>,
    /// Keep the trust ratio at 1 when `weight_decay` is 0, as Apex does
    /// without `use_nvlamb`. Default false: the ratio always applies, as in
    /// the LAMB article and optax.
    pub unit_ratio_without_decay: bool,
    /// Put `eps` inside the square root: `sqrt(v̂ + eps)`.
    pub eps_inside_sqrt: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Lamb {
    fn default() -> Self {
        Lamb {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-6,
            weight_decay: 0.01,
            trust_ratio_clamp: None,
            unit_ratio_without_decay: false,
            eps_inside_sqrt: false,
            maximize: false,
        }
    }
}

/// LAMB's scalars that stay the same from step to step: what the CPU step
/// reads, and the uniforms of LAMB's tile kernels (`struct Scalars` in
/// `shaders/lamb.wgsl`, whose size the kernels' tests check against this
/// one). The bias corrections are the step table's entry
/// ([`Rule::step_entry`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LambScalars {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub clamp_min: f32,
    pub clamp_max: f32,
    /// [`LAMB_CLAMP`], [`LAMB_UNIT_RATIO`].
    pub options: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<LambScalars>() == 48);

/// Clamp the trust ratio to `(clamp_min, clamp_max)`.
pub(crate) const LAMB_CLAMP: u32 = 1;
/// Trust ratio 1 (`unit_ratio_without_decay` with no weight decay).
pub(crate) const LAMB_UNIT_RATIO: u32 = 2;
/// LAMB's option bits, as the WGSL constants of the same names.
pub(crate) const WGSL_CONSTANTS: [(&str, u32); 2] = [
    ("LAMB_CLAMP", LAMB_CLAMP),
    ("LAMB_UNIT_RATIO", LAMB_UNIT_RATIO),
];

impl Rule for Lamb {
    const NAME: &'static str = "lamb";
    const KERNEL: KernelSpec = KernelSpec {
        name: "lamb",
        source: include_str!("../../shaders/lamb.wgsl"),
        shape: KernelShape::Tiled {
            entry_points: &["lamb_moments", "lamb_ratio", "lamb_apply"],
            constants: &WGSL_CONSTANTS,
        },
    };
    type Scalars = LambScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("betas[0]", self.betas.0)?;
        check_unit_interval("betas[1]", self.betas.1)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        if let Some((lo, hi)) = self.trust_ratio_clamp {
            check_non_negative("trust_ratio_clamp.min", lo)?;
            check_non_negative("trust_ratio_clamp.max", hi)?;
            if lo > hi {
                return Err(Error::InvalidOptions(format!(
                    "trust_ratio_clamp needs min <= max, got ({lo}, {hi})"
                )));
            }
        }
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }

    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        super::set_beta1(&mut self.betas, value)
    }

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("EPS_INSIDE_SQRT", bool_override(self.eps_inside_sqrt)),
        ]
    }

    fn scalars(&self, _buffer_filled: bool) -> LambScalars {
        let (beta1, beta2) = self.betas;
        let (lo, hi) = self.trust_ratio_clamp.unwrap_or((0.0, 0.0));
        let mut options = 0;
        if self.trust_ratio_clamp.is_some() {
            options |= LAMB_CLAMP;
        }
        if self.unit_ratio_without_decay && self.weight_decay == 0.0 {
            options |= LAMB_UNIT_RATIO;
        }
        LambScalars {
            lr: self.lr as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            clamp_min: lo as f32,
            clamp_max: hi as f32,
            options,
            _pad: [0; 2],
        }
    }

    /// `[1 − β1ᵗ, 1 − β2ᵗ]`, computed in f64.
    fn step_entry(&self, step: u64) -> StepEntry {
        let (beta1, beta2) = self.betas;
        [
            bias_correction(beta1, step) as f32,
            bias_correction(beta2, step) as f32,
            0.0,
            0.0,
        ]
    }

    fn cpu_step(
        &self,
        s: &LambScalars,
        entry: StepEntry,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        let bias_corrections = (entry[0], entry[1]);
        let Ok(()) = cpu_step::<std::convert::Infallible>(
            s,
            bias_corrections,
            self,
            layout,
            params,
            grads,
            states,
            scales,
            &mut |_| Ok(()),
        );
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay,
            "trust_ratio_clamp": self.trust_ratio_clamp.map(|(a, b)| vec![a, b]),
            "unit_ratio_without_decay": self.unit_ratio_without_decay,
            "eps_inside_sqrt": self.eps_inside_sqrt, "maximize": self.maximize}),
        )
    }

    /// Apex's keyword arguments; the rest are this crate's.
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Lamb::default();
        Ok(Lamb {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            trust_ratio_clamp: args.own_pair("trust_ratio_clamp")?,
            unit_ratio_without_decay: args
                .own_flag("unit_ratio_without_decay", d.unit_ratio_without_decay)?,
            eps_inside_sqrt: args.own_flag("eps_inside_sqrt", d.eps_inside_sqrt)?,
            maximize: args.own_flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new("lamb", Lamb::default())]
    }
}

/// `u` of one element, from the already updated moments; the same
/// arithmetic as `lamb_update` in `shaders/lamb.wgsl`.
#[inline(always)]
fn update_direction(s: &LambScalars, bc: (f32, f32), c: &Lamb, p: f32, m: f32, v: f32) -> f32 {
    let m_hat = m / bc.0;
    let denom = if c.eps_inside_sqrt {
        (v / bc.1 + s.eps).sqrt()
    } else {
        (v / bc.1).sqrt() + s.eps
    };
    m_hat / denom + s.weight_decay * p
}

/// The trust ratio from the two squared norms, with the options; the same
/// as `lamb_ratio` in `shaders/lamb.wgsl`.
pub(crate) fn trust_ratio(s: &LambScalars, param_sq: f32, update_sq: f32) -> f32 {
    let (pn, un) = (param_sq.sqrt(), update_sq.sqrt());
    // Apex tests `!= 0` and optax `== 0`: a NaN norm is not zero, so a NaN
    // (or an inf/inf) ratio propagates into the tensor's step.
    let mut r = if pn == 0.0 || un == 0.0 { 1.0 } else { pn / un };
    if s.options & LAMB_UNIT_RATIO != 0 {
        r = 1.0;
    }
    if s.options & LAMB_CLAMP != 0 {
        r = super::clamp(r, s.clamp_min, s.clamp_max);
    }
    r
}

/// Replaces each tensor's `[Σθ², Σu²]` between LAMB's passes.
pub(crate) type SumsHook<'a, E> = dyn FnMut(&mut [[f64; 2]]) -> std::result::Result<(), E> + 'a;

/// One LAMB step on the CPU over the packed tensors of `layout`, with the
/// bias corrections `bc` (`1 − β1ᵗ`, `1 − β2ᵗ`); `scales` multiply every
/// gradient first (loss scale, global-norm clipping).
///
/// On all cores, in two passes over chunks of [`CPU_CHUNK`] elements, each
/// chunk within one tensor: the first updates the moments, stores `u` (in
/// [`UpdateScratch`]) and sums `θ²` and `u²` of its chunk in f64 (the
/// order of [`crate::clip::sum_squares`]); the chunks' sums of each tensor
/// are then added in order, so the trust ratio does not depend on the
/// number of threads; the second, over the chunks in reverse order,
/// applies `θ ← θ − lr·ratio·u` from the stored `u`.
///
/// Between the passes, `combine` may replace each tensor's `[Σθ², Σu²]`
/// (the sharded optimizer adds the other ranks' parts of a tensor there);
/// when it fails, the moments have moved and the parameters have not.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cpu_step<E>(
    s: &LambScalars,
    bc: (f32, f32),
    c: &Lamb,
    layout: &Layout,
    params: &mut [f32],
    grads: &[f32],
    states: &mut [Vec<f32>],
    scales: GradScales,
    combine: &mut SumsHook<'_, E>,
) -> std::result::Result<(), E> {
    use rayon::prelude::*;
    let [exp_avg, exp_avg_sq] = states else {
        unreachable!("lamb has two state tensors")
    };
    let mut scratch = UpdateScratch::take(params.len());
    // (tensor, parameters, gradients, exp_avg, exp_avg_sq, u) of each chunk.
    type Chunk<'a> = (
        usize,
        &'a mut [f32],
        &'a [f32],
        &'a mut [f32],
        &'a mut [f32],
        &'a mut [f32],
    );
    let mut chunks: Vec<Chunk<'_>> = Vec::new();
    let (mut p_rest, mut g_rest) = (&mut params[..], grads);
    let (mut m_rest, mut v_rest) = (&mut exp_avg[..], &mut exp_avg_sq[..]);
    let mut u_rest = &mut scratch.0[..];
    for (t, &len) in layout.lengths().iter().enumerate() {
        let (p, pr) = std::mem::take(&mut p_rest).split_at_mut(len);
        let (g, gr) = g_rest.split_at(len);
        let (m, mr) = std::mem::take(&mut m_rest).split_at_mut(len);
        let (v, vr) = std::mem::take(&mut v_rest).split_at_mut(len);
        let (u, ur) = std::mem::take(&mut u_rest).split_at_mut(len);
        (p_rest, g_rest, m_rest, v_rest, u_rest) = (pr, gr, mr, vr, ur);
        for (((p, g), (m, v)), u) in p
            .chunks_mut(CPU_CHUNK)
            .zip(g.chunks(CPU_CHUNK))
            .zip(m.chunks_mut(CPU_CHUNK).zip(v.chunks_mut(CPU_CHUNK)))
            .zip(u.chunks_mut(CPU_CHUNK))
        {
            chunks.push((t, p, g, m, v, u));
        }
    }
    let parallel = layout.total() >= 4 * CPU_CHUNK;
    let moments = |(_, p, g, m, v, u): &mut Chunk<'_>| {
        let mut sums = [0.0; 2];
        moments_slice(s, bc, c, scales, p, g, m, v, u, &mut sums);
        sums
    };
    let sums: Vec<[f64; 2]> = if parallel {
        chunks.par_iter_mut().map(moments).collect()
    } else {
        chunks.iter_mut().map(moments).collect()
    };
    let mut norms = vec![[0.0f64; 2]; layout.len()];
    for ((t, ..), [ps, us]) in chunks.iter().zip(&sums) {
        norms[*t][0] += ps;
        norms[*t][1] += us;
    }
    if let Err(e) = combine(&mut norms) {
        scratch.give_back();
        return Err(e);
    }
    let steps: Vec<f32> = norms
        .iter()
        .map(|[ps, us]| s.lr * trust_ratio(s, *ps as f32, *us as f32))
        .collect();
    let apply = |(t, p, _, _, _, u): &mut Chunk<'_>| apply_slice(steps[*t], p, u);
    // The second pass runs backwards: the chunks the first pass wrote last
    // may still be in the cache. Each element's update is independent of
    // the others', so the order changes no bit.
    if parallel {
        chunks.par_iter_mut().rev().for_each(apply);
    } else {
        chunks.iter_mut().rev().for_each(apply);
    }
    drop(chunks);
    scratch.give_back();
    Ok(())
}

/// The moments of one chunk, and the sums of `θ²` and `u²` over it (`u`
/// the update direction before θ moves) into `sums`, the gradients
/// multiplied by `scales` first. The squares are summed as
/// [`crate::clip::sum_squares`] sums them (per block of [`BLOCK`]
/// elements, [`LANES`] lanes of f32, added in f64), inside the same loop:
/// the chunk is read once and `u` is never stored. f32 only inside a
/// block, so the loop vectorizes as Adam's does.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn moments_slice_impl(
    s: &LambScalars,
    bc: (f32, f32),
    c: &Lamb,
    scales: GradScales,
    p: &[f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    u: &mut [f32],
    sums: &mut [f64; 2],
) {
    let element = |p: f32, g: f32, m: &mut f32, v: &mut f32| {
        let g = scales.apply(g);
        let g = if c.maximize { -g } else { g };
        let mi = s.beta1 * *m + s.one_minus_beta1 * g;
        let vi = s.beta2 * *v + s.one_minus_beta2 * (g * g);
        *m = mi;
        *v = vi;
        update_direction(s, bc, c, p, mi, vi)
    };
    let (mut wide_p, mut wide_u) = ([0.0f64; LANES], [0.0f64; LANES]);
    let blocks = p
        .chunks_exact(BLOCK)
        .zip(g.chunks_exact(BLOCK))
        .zip(m.chunks_exact_mut(BLOCK).zip(v.chunks_exact_mut(BLOCK)))
        .zip(u.chunks_exact_mut(BLOCK));
    for (((pb, gb), (mb, vb)), ub) in blocks {
        let (mut narrow_p, mut narrow_u) = ([0.0f32; LANES], [0.0f32; LANES]);
        let rows = pb
            .chunks_exact(LANES)
            .zip(gb.chunks_exact(LANES))
            .zip(mb.chunks_exact_mut(LANES).zip(vb.chunks_exact_mut(LANES)))
            .zip(ub.chunks_exact_mut(LANES));
        for (((pr, gr), (mr, vr)), ur) in rows {
            let lanes = narrow_p.iter_mut().zip(narrow_u.iter_mut());
            let elements = pr
                .iter()
                .zip(gr)
                .zip(mr.iter_mut().zip(vr.iter_mut()))
                .zip(ur.iter_mut());
            for ((np, nu), (((&p, &g), (m, v)), u)) in lanes.zip(elements) {
                let d = element(p, g, m, v);
                *u = d;
                *np += p * p;
                *nu += d * d;
            }
        }
        for k in 0..LANES {
            wide_p[k] += narrow_p[k] as f64;
            wide_u[k] += narrow_u[k] as f64;
        }
    }
    let full = p.len() / BLOCK * BLOCK;
    let tail = p[full..].iter().zip(&g[full..]);
    for ((u, (&p, &g)), (m, v)) in u[full..]
        .iter_mut()
        .zip(tail)
        .zip(m[full..].iter_mut().zip(v[full..].iter_mut()))
    {
        *u = element(p, g, m, v);
    }
    sums[0] = finish_lanes(wide_p, &p[full..], 1.0);
    sums[1] = finish_lanes(wide_u, &u[full..], 1.0);
}

super::multiversion! {
    /// [`moments_slice_impl`], vectorized for the processor at hand.
    moments_slice = moments_slice_impl(
        s: &LambScalars,
        bc: (f32, f32),
        c: &Lamb,
        scales: GradScales,
        p: &[f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        u: &mut [f32],
        sums: &mut [f64; 2],
    )
}

/// `θ ← θ − step·u` over one chunk, `u` as the first pass stored it (the
/// same bits as recomputing it from the new moments: θ has not moved).
#[inline(always)]
fn apply_slice_impl(step: f32, p: &mut [f32], u: &mut [f32]) {
    for (p, &u) in p.iter_mut().zip(u.iter()) {
        *p -= step * u;
    }
}

super::multiversion! {
    /// [`apply_slice_impl`], vectorized for the processor at hand.
    apply_slice = apply_slice_impl(step: f32, p: &mut [f32], u: &mut [f32])
}

/// The buffer LAMB's first pass stores each element's update direction
/// `u` in, for the second: the divisions and square root of `u` cost
/// more than reading it back (the step is compute-bound on a CPU without
/// it). One buffer for the process, kept between steps (a fresh 4 bytes a
/// parameter every step would cost its page faults); it grows to the
/// largest LAMB model stepped and is shared by all LAMB optimizers, a
/// step that finds it in use taking a buffer of its own.
struct UpdateScratch(Vec<f32>);

static UPDATE_SCRATCH: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

impl UpdateScratch {
    /// The process's buffer (or a new one), `n` long.
    fn take(n: usize) -> Self {
        let mut buffer = UPDATE_SCRATCH
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        // Every element is written by the first pass before the second
        // reads it; the zeros are only written when it grows.
        if buffer.len() < n {
            buffer.resize(n, 0.0);
        }
        UpdateScratch(buffer)
    }

    /// Keeps the larger of this buffer and the one kept.
    fn give_back(self) {
        if let Ok(mut kept) = UPDATE_SCRATCH.lock() {
            if kept.len() < self.0.len() {
                *kept = self.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step as written before it was threaded: one element after the
    /// other, the norms summed in f64 in element order.
    fn sequential(
        s: &LambScalars,
        bc: (f32, f32),
        c: &Lamb,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
    ) {
        let [m, v] = states else { unreachable!() };
        for t in 0..layout.len() {
            let r = layout.range(t);
            let (mut ps, mut us) = (0.0f64, 0.0f64);
            for i in r.clone() {
                let g = if c.maximize { -grads[i] } else { grads[i] };
                m[i] = s.beta1 * m[i] + s.one_minus_beta1 * g;
                v[i] = s.beta2 * v[i] + s.one_minus_beta2 * (g * g);
                let u = update_direction(s, bc, c, params[i], m[i], v[i]);
                ps += (params[i] as f64).powi(2);
                us += (u as f64).powi(2);
            }
            let step = s.lr * trust_ratio(s, ps as f32, us as f32);
            for i in r {
                params[i] -= step * update_direction(s, bc, c, params[i], m[i], v[i]);
            }
        }
    }

    /// Over tensors that span several chunks (and end inside one), the
    /// threaded step gives the same bits on one thread as on two, and the
    /// parameters of the sequential step to within one unit in the last
    /// place: only the f64 sums are added in another order, and they reach
    /// the ratio rounded to f32.
    #[test]
    fn threaded_step_is_deterministic_and_matches_the_sequential_one() {
        let layout = Layout::new(&[3 * CPU_CHUNK + 5, 17, 2 * CPU_CHUNK - 3, 0]).unwrap();
        let n = layout.total();
        let value = |i: usize, k: u32| ((i as f32 * 0.618 + k as f32).sin()) * 0.5;
        let init: Vec<f32> = (0..n).map(|i| value(i, 1)).collect();
        let grads: Vec<f32> = (0..n).map(|i| value(i, 2)).collect();
        let lamb = Lamb {
            weight_decay: 0.01,
            ..Lamb::default()
        };
        let (s, entry) = (lamb.scalars(false), lamb.step_entry(3));
        let bc = (entry[0], entry[1]);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut p, mut st) = (init.clone(), vec![vec![0.01f32; n], vec![0.02f32; n]]);
            pool.install(|| {
                for _ in 0..2 {
                    let Ok(()) = cpu_step::<std::convert::Infallible>(
                        &s,
                        bc,
                        &lamb,
                        &layout,
                        &mut p,
                        &grads,
                        &mut st,
                        GradScales::default(),
                        &mut |_| Ok(()),
                    );
                }
            });
            (p, st)
        };
        let (one, one_state) = run(1);
        let (two, two_state) = run(2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one), bits(&two));
        assert_eq!(one_state, two_state);

        let (mut p, mut st) = (init.clone(), vec![vec![0.01f32; n], vec![0.02f32; n]]);
        for _ in 0..2 {
            sequential(&s, bc, &lamb, &layout, &mut p, &grads, &mut st);
        }
        assert_eq!(st, one_state, "the moments do not depend on the sums");
        for (i, (a, b)) in one.iter().zip(&p).enumerate() {
            let ulp = f32::EPSILON * b.abs().max(f32::MIN_POSITIVE);
            assert!((a - b).abs() <= 2.0 * ulp, "{i}: {a} vs {b}");
        }
    }
}
