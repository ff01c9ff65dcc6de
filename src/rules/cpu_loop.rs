//! The CPU step's loops: the gradient scales, the chunked, threaded loop
//! of the element-wise rules, the multi-versioned builds, and torch's
//! element functions (`lerp`, `maximum`, `clamp`) in f32.

/// The factors the gradients are multiplied by before the update, in this
/// order, each in f32 as torch does: `1/grad_scale` (`GradScaler.unscale_`)
/// and the clip coefficient (`clip_grad_norm_`). 1 is none: `g · 1 = g`
/// exactly, NaN and −0 included.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GradScales {
    pub inv_scale: f32,
    pub clip: f32,
}

impl Default for GradScales {
    fn default() -> Self {
        GradScales {
            inv_scale: 1.0,
            clip: 1.0,
        }
    }
}

impl GradScales {
    /// The gradient as the update sees it.
    #[inline(always)]
    pub(crate) fn apply(self, g: f32) -> f32 {
        g * self.inv_scale * self.clip
    }
}

/// Elements a CPU step works on at a time (rayon's unit of work).
pub(crate) const CPU_CHUNK: usize = 1 << 15;

/// One step of an element-wise rule on all cores (rayon), over independent
/// chunks: `step_slice` gets the same chunk of the parameters, the raw
/// gradients and each state tensor, and multiplies each gradient by the
/// step's [`GradScales`] inside its element loop ([`for_each_element!`]),
/// so the gradients are read once and never copied. The arithmetic of each
/// element does not depend on the chunking.
pub(crate) fn elementwise_step(
    params: &mut [f32],
    grads: &[f32],
    states: &mut [Vec<f32>],
    step_slice: impl Fn(&mut [f32], &[f32], &mut [&mut [f32]]) + Sync,
) {
    use rayon::prelude::*;
    let n = params.len();
    if n == 0 {
        return;
    }
    let mut state_chunks: Vec<std::slice::ChunksMut<'_, f32>> =
        states.iter_mut().map(|s| s.chunks_mut(CPU_CHUNK)).collect();
    type Work<'a> = (&'a mut [f32], &'a [f32], Vec<&'a mut [f32]>);
    let mut work: Vec<Work<'_>> = Vec::new();
    for (p, g) in params.chunks_mut(CPU_CHUNK).zip(grads.chunks(CPU_CHUNK)) {
        let st: Vec<&mut [f32]> = state_chunks
            .iter_mut()
            .map(|it| it.next().expect("state lengths equal the parameters'"))
            .collect();
        work.push((p, g, st));
    }
    let run = |(p, g, mut st): Work<'_>| step_slice(p, g, &mut st);
    if n >= 4 * CPU_CHUNK {
        work.into_par_iter().for_each(run);
    } else {
        work.into_iter().for_each(run);
    }
}

/// Defines `$name` as `$imp` compiled three times: for AVX-512, for AVX2
/// and for the baseline, choosing at run time (one binary runs everywhere).
/// `$imp` and the element function it calls are `#[inline(always)]`, so
/// they are compiled inside the functions with the wider target features
/// and their loops vectorize. The results are bit-for-bit those of the
/// baseline: vector `+ − × ÷ sqrt` round exactly as the scalar ones,
/// compares and selects are exact, and Rust never contracts `a·b + c` into
/// a fused multiply-add.
macro_rules! multiversion {
    ($(#[$doc:meta])* $name:ident = $imp:ident($($arg:ident : $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the processor has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `torch.lerp(start, end, weight)` in f32, as PyTorch's CPU kernel computes
/// it (the two-sided form that is exact at both ends). The WGSL kernels
/// contain the same function.
#[inline(always)]
pub(crate) fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// `torch.maximum(a, b)` in f32: NaN when either is NaN, else the larger
/// (`a` when they are equal). `f32::max` would return the other operand of
/// a NaN. Two compares and a select, so loops over it vectorize, and every
/// build (AVX-512, AVX2, baseline) picks the same operand bit for bit.
#[inline(always)]
pub(crate) fn maximum(a: f32, b: f32) -> f32 {
    if (b > a) | b.is_nan() {
        b
    } else {
        a
    }
}

/// `torch.clamp(x, min, max)` in f32 for `min <= max`: NaN stays NaN
/// (`f32::max`/`f32::min` would turn it into a bound).
#[inline(always)]
pub(crate) fn clamp(x: f32, min: f32, max: f32) -> f32 {
    let x = if x < min { min } else { x };
    if x > max {
        max
    } else {
        x
    }
}

/// The loop of an element-wise rule: `$body` once per element, with `$p`
/// the parameter (`&mut f32`), `$g` the gradient multiplied by `$scales`
/// (an `f32`, [`GradScales::apply`]) and each state
/// tensor of `$states` (a `&mut [&mut [f32]]` in the rule's state order)
/// named as its element (`&mut f32`), all in lockstep. Iterators, not
/// indices: no bounds checks in the loop, so it vectorizes. `$rule` names
/// the rule in the message of a state count the optimizer cannot have.
macro_rules! for_each_element {
    ($rule:literal, $params:expr, $grads:expr, $scales:expr, $states:expr,
     |$p:ident, $g:ident $(, $s:ident)*| $body:expr) => {{
        let [$($s),*] = $states else {
            unreachable!(concat!($rule, ": not the state tensors it was built with"))
        };
        let scales: $crate::rules::GradScales = $scales;
        let elements = $params
            .iter_mut()
            .zip($grads.iter().map(|&g| scales.apply(g))) $(.zip($s.iter_mut()))*;
        $crate::rules::for_each_element!(@for elements, ($p, $g), [$($s)*], $body)
    }};
    (@for $iter:ident, ($($pat:tt)*), [$first:ident $($rest:ident)*], $body:expr) => {
        $crate::rules::for_each_element!(@for $iter, (($($pat)*), $first), [$($rest)*], $body)
    };
    (@for $iter:ident, ($($pat:tt)*), [], $body:expr) => {
        for ($($pat)*) in $iter {
            $body;
        }
    };
}
pub(crate) use for_each_element;
