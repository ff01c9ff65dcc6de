//! The CPU optimizer's low-precision storage and its step: each chunk of a
//! tensor widened to f32, stepped by the rule's own CPU step, stored back
//! rounded.

use super::blockwise::{
    dequantize_blockwise, quantize_blockwise, DynamicMap, BLOCK, MIN_8BIT_SIZE,
};
use super::{bf16, CounterRng, ParamDtype, Precision, StateDtype};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::rules::{Config, GradScales};

/// Elements stepped at a time: a multiple of [`BLOCK`], so that a chunk
/// that starts at a tensor's start (or a multiple of it from there) holds
/// whole quantization blocks.
const SEGMENT: usize = 128 * BLOCK;

/// Whether an 8-bit state takes the signed map, by its name: bitsandbytes'
/// first moment is signed, its second unsigned.
pub(crate) fn state_sign(name: &str) -> Option<bool> {
    match name {
        "exp_avg" => Some(true),
        "exp_avg_sq" => Some(false),
        _ => None,
    }
}

/// Refuses a rule the low-precision step cannot do as asked
/// ([`Error::Unsupported`]): one whose step is not element by element
/// (LAMB's per-tensor norms), a schedule-free rule (its eval switch would
/// need the state in f32), 8-bit state for a state bitsandbytes has no map
/// for (only `exp_avg`, `exp_avg_sq`: Adam, AdamW, RAdam, NAdam).
pub(crate) fn check_rule(
    precision: &Precision,
    config: &Config,
    names: &[&'static str],
) -> Result<()> {
    precision.validate()?;
    if precision.is_f32() {
        return Ok(());
    }
    let rule = config.kind().name();
    if config.kernel().is_tiled() {
        return Err(Error::Unsupported(format!(
            "{rule} with low-precision parameters or state (element-wise rules only)"
        )));
    }
    if config.eval_beta1().is_some() {
        return Err(Error::Unsupported(format!(
            "{rule} with low-precision parameters or state (its eval mode needs f32)"
        )));
    }
    if precision.state_dtype == StateDtype::Int8Blockwise {
        if let Some(n) = names.iter().find(|n| state_sign(n).is_none()) {
            return Err(Error::Unsupported(format!(
                "state_dtype 8bit for {rule}'s state `{n}` (8-bit maps exist for exp_avg and exp_avg_sq only)"
            )));
        }
    }
    Ok(())
}

/// One state tensor of one parameter tensor, in its stored format.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TensorState {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// 8-bit codes and one absmax a block; `signed` picks the map.
    Int8 {
        codes: Vec<u8>,
        absmax: Vec<f32>,
        signed: bool,
    },
}

impl TensorState {
    fn new(dtype: StateDtype, signed: bool, values: &[f32]) -> Self {
        match dtype {
            StateDtype::F32 => TensorState::F32(values.to_vec()),
            StateDtype::Bf16 => {
                TensorState::Bf16(values.iter().map(|&v| bf16::f32_to_bf16(v)).collect())
            }
            StateDtype::Int8Blockwise if values.len() < MIN_8BIT_SIZE => {
                TensorState::F32(values.to_vec())
            }
            StateDtype::Int8Blockwise => {
                let mut codes = vec![0u8; values.len()];
                let mut absmax = vec![0f32; values.len().div_ceil(BLOCK)];
                quantize_blockwise(
                    values,
                    DynamicMap::for_sign(signed),
                    &mut codes,
                    &mut absmax,
                );
                TensorState::Int8 {
                    codes,
                    absmax,
                    signed,
                }
            }
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            TensorState::F32(v) => 4 * v.len(),
            TensorState::Bf16(v) => 2 * v.len(),
            TensorState::Int8 { codes, absmax, .. } => codes.len() + 4 * absmax.len(),
        }
    }

    /// The values, widened to f32.
    pub(crate) fn decode_into(&self, out: &mut Vec<f32>) {
        match self {
            TensorState::F32(v) => out.extend_from_slice(v),
            TensorState::Bf16(v) => out.extend(v.iter().map(|&b| bf16::bf16_to_f32(b))),
            TensorState::Int8 {
                codes,
                absmax,
                signed,
            } => {
                let at = out.len();
                out.resize(at + codes.len(), 0.0);
                dequantize_blockwise(codes, absmax, DynamicMap::for_sign(*signed), &mut out[at..]);
            }
        }
    }

    fn chunks_mut(&mut self) -> Vec<StateChunk<'_>> {
        match self {
            TensorState::F32(v) => v.chunks_mut(SEGMENT).map(StateChunk::F32).collect(),
            TensorState::Bf16(v) => v.chunks_mut(SEGMENT).map(StateChunk::Bf16).collect(),
            TensorState::Int8 {
                codes,
                absmax,
                signed,
            } => {
                let map = DynamicMap::for_sign(*signed);
                codes
                    .chunks_mut(SEGMENT)
                    .zip(absmax.chunks_mut(SEGMENT / BLOCK))
                    .map(|(c, a)| StateChunk::Int8(c, a, map))
                    .collect()
            }
        }
    }
}

/// A chunk of a [`TensorState`], whole blocks of it.
enum StateChunk<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [u16]),
    Int8(&'a mut [u8], &'a mut [f32], &'static DynamicMap),
}

impl StateChunk<'_> {
    fn load(&self, out: &mut Vec<f32>) {
        out.clear();
        match self {
            StateChunk::F32(v) => out.extend_from_slice(v),
            StateChunk::Bf16(v) => out.extend(v.iter().map(|&b| bf16::bf16_to_f32(b))),
            StateChunk::Int8(c, a, map) => {
                out.resize(c.len(), 0.0);
                dequantize_blockwise(c, a, map, out);
            }
        }
    }

    fn store(&mut self, values: &[f32]) {
        match self {
            StateChunk::F32(v) => v.copy_from_slice(values),
            StateChunk::Bf16(v) => {
                for (d, &s) in v.iter_mut().zip(values) {
                    *d = bf16::f32_to_bf16(s);
                }
            }
            StateChunk::Int8(c, a, map) => quantize_blockwise(values, map, c, a),
        }
    }
}

/// Parameters and state of a [`crate::CpuOptimizer`] in low precision. The
/// optimizer's own `params` then hold the model's parameters (16-bit values
/// widened to f32, so that they read as `&[f32]`), its `state` nothing.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LowPrecision {
    pub precision: Precision,
    /// The f32 master weights, packed, with `master_weights`.
    pub master: Option<Vec<f32>>,
    /// `states[s][t]`: state `s` of tensor `t`.
    pub states: Vec<Vec<TensorState>>,
}

impl LowPrecision {
    /// Storage for `params` (f32, as given) and the state tensors `names`,
    /// each starting from `initial[s]`; rounds `params` in place to the
    /// parameter format (nearest even).
    pub(crate) fn new(
        precision: Precision,
        layout: &Layout,
        params: &mut [f32],
        names: &[&'static str],
        initial: &[f32],
    ) -> Self {
        let master = precision.master_weights.then(|| params.to_vec());
        for p in params.iter_mut() {
            *p = precision.param_dtype.round(*p);
        }
        let states = names
            .iter()
            .zip(initial)
            .map(|(name, &v)| {
                let signed = state_sign(name).unwrap_or(true);
                layout
                    .lengths()
                    .iter()
                    .map(|&n| TensorState::new(precision.state_dtype, signed, &vec![v; n]))
                    .collect()
            })
            .collect();
        LowPrecision {
            precision,
            master,
            states,
        }
    }

    /// Replaces state `s` with these packed values, stored in its format.
    pub(crate) fn write_state(
        &mut self,
        s: usize,
        names: &[&'static str],
        layout: &Layout,
        flat: &[f32],
    ) {
        let signed = state_sign(names[s]).unwrap_or(true);
        self.states[s] = (0..layout.len())
            .map(|t| TensorState::new(self.precision.state_dtype, signed, &flat[layout.range(t)]))
            .collect();
    }

    /// State `s`, packed, widened to f32.
    pub(crate) fn read_state(&self, s: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for t in &self.states[s] {
            t.decode_into(&mut out);
        }
        out
    }

    /// Every 8-bit state tensor as stored, in state then tensor order:
    /// `(state, tensor, codes, absmax)`.
    pub(crate) fn quantized(&self) -> Vec<(usize, usize, &[u8], &[f32])> {
        let mut out = Vec::new();
        for (s, tensors) in self.states.iter().enumerate() {
            for (t, state) in tensors.iter().enumerate() {
                if let TensorState::Int8 { codes, absmax, .. } = state {
                    out.push((s, t, codes.as_slice(), absmax.as_slice()));
                }
            }
        }
        out
    }

    /// Whether tensor `len` long is stored in 8 bits under `dtype`.
    pub(crate) fn is_quantized(dtype: StateDtype, len: usize) -> bool {
        dtype == StateDtype::Int8Blockwise && len >= MIN_8BIT_SIZE
    }

    /// Restores the state exactly as a checkpoint keeps it: `state[s]`
    /// packed and widened to f32 (exact for f32 and bf16), the 8-bit
    /// tensors from their own codes and absmax (`quantized(s, t)`), and
    /// the master weights. The caller has checked every length.
    pub(crate) fn restore<'a>(
        &mut self,
        names: &[&'static str],
        layout: &Layout,
        state: &[Vec<f32>],
        quantized: impl Fn(usize, usize) -> Option<(&'a [u8], &'a [f32])>,
        master: Option<&[f32]>,
    ) {
        let dtype = self.precision.state_dtype;
        for (s, values) in state.iter().enumerate() {
            let signed = state_sign(names[s]).unwrap_or(true);
            self.states[s] = (0..layout.len())
                .map(|t| match quantized(s, t) {
                    Some((codes, absmax)) => TensorState::Int8 {
                        codes: codes.to_vec(),
                        absmax: absmax.to_vec(),
                        signed,
                    },
                    None => TensorState::new(dtype, signed, &values[layout.range(t)]),
                })
                .collect();
        }
        if let (Some(m), Some(src)) = (&mut self.master, master) {
            m.copy_from_slice(src);
        }
    }

    /// Replaces the parameters: the master takes them as given, the
    /// model's `params` rounded to nearest even.
    pub(crate) fn write_params(&mut self, params: &mut [f32], new: &[f32]) {
        if let Some(m) = &mut self.master {
            m.copy_from_slice(new);
        }
        for (d, &s) in params.iter_mut().zip(new) {
            *d = self.precision.param_dtype.round(s);
        }
    }

    /// Bytes of the master weights and the state tensors, in their formats.
    pub(crate) fn optimizer_bytes(&self) -> usize {
        self.master.as_ref().map_or(0, |m| 4 * m.len())
            + self
                .states
                .iter()
                .flatten()
                .map(TensorState::bytes)
                .sum::<usize>()
    }

    /// Step `step` of `config` over every tensor: each chunk's parameters
    /// (the master's, with master weights) and state widened to f32,
    /// stepped by the rule's CPU step, the parameters stored rounded
    /// (nearest even from the master, or stochastically) and the state in
    /// its format.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &mut self,
        config: &Config,
        step: u64,
        buffer_filled: bool,
        scalar_state: &[f64],
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
    ) {
        use rayon::prelude::*;
        let precision = self.precision;
        let rng = CounterRng::new(precision.seed, step);
        type Work<'a> = (
            usize,
            &'a mut [f32],
            Option<&'a mut [f32]>,
            &'a [f32],
            Vec<StateChunk<'a>>,
        );
        let mut work: Vec<Work<'_>> = Vec::new();
        // Per state, per tensor, the chunk iterators.
        let mut state_chunks: Vec<Vec<std::vec::IntoIter<StateChunk<'_>>>> = self
            .states
            .iter_mut()
            .map(|per_tensor| {
                per_tensor
                    .iter_mut()
                    .map(|t| t.chunks_mut().into_iter())
                    .collect()
            })
            .collect();
        let mut p_rest: &mut [f32] = params;
        let mut m_rest: Option<&mut [f32]> = self.master.as_deref_mut();
        let mut offset = 0;
        for t in 0..layout.len() {
            let n = layout.lengths()[t];
            let (p_t, rest) = std::mem::take(&mut p_rest).split_at_mut(n);
            p_rest = rest;
            let m_t = match m_rest.take() {
                Some(m) => {
                    let (a, b) = m.split_at_mut(n);
                    m_rest = Some(b);
                    Some(a)
                }
                None => None,
            };
            let g_t = &grads[offset..offset + n];
            let mut m_chunks = m_t.map(|m| m.chunks_mut(SEGMENT));
            for (k, (p, g)) in p_t.chunks_mut(SEGMENT).zip(g_t.chunks(SEGMENT)).enumerate() {
                let m = m_chunks.as_mut().and_then(Iterator::next);
                let st = state_chunks
                    .iter_mut()
                    .map(|per_tensor| {
                        per_tensor[t]
                            .next()
                            .expect("state chunks match the parameters'")
                    })
                    .collect();
                work.push((offset + k * SEGMENT, p, m, g, st));
            }
            offset += n;
        }
        work.into_par_iter().for_each(|(first, p, m, g, mut st)| {
            let n = p.len();
            let Ok(sub) = Layout::new(&[n]) else {
                return;
            };
            let mut values: Vec<f32> = match &m {
                Some(m) => m.to_vec(),
                None => p.to_vec(),
            };
            let mut states: Vec<Vec<f32>> = st
                .iter()
                .map(|c| {
                    let mut v = Vec::with_capacity(n);
                    c.load(&mut v);
                    v
                })
                .collect();
            config.cpu_step(
                step,
                buffer_filled,
                scalar_state,
                &sub,
                &mut values,
                g,
                &mut states,
                scales,
            );
            match (m, precision.param_dtype) {
                (Some(m), dtype) => {
                    m.copy_from_slice(&values);
                    for (d, &s) in p.iter_mut().zip(&values) {
                        *d = dtype.round(s);
                    }
                }
                (None, ParamDtype::Bf16) => {
                    bf16::round_stochastic_in_place(&mut values, &rng, first as u64);
                    p.copy_from_slice(&values);
                }
                (None, _) => p.copy_from_slice(&values),
            }
            for (c, v) in st.iter_mut().zip(&states) {
                c.store(v);
            }
        });
    }
}
