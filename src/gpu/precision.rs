//! Low-precision parameters and state on the GPU: bf16 parameters behind
//! an f32 master or rounded stochastically, bf16 state, in the rule's own
//! kernel rewritten for 16-bit storage (`shaders/packed16.wgsl`, kernels.rs
//! `packed16_body`): each invocation steps a pair of elements, each pair
//! of bf16 one `u32`, the arithmetic the rule's f32, each value rounded
//! once, when stored, with the integer operations of the CPU's twin
//! (src/precision/bf16.rs), so that the GPU stores what the CPU stores.

use super::chunks::{chunk_elements, padded, split_chunks, ChunkRange, Tiling};
use super::kernels::{Packed16, Param16, Variant};
use super::optimizer::{GpuOptimizer, GpuOptions};
use super::readback::read_buffer;
use super::resources::Storage;
use super::GpuContext;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::precision::bf16::{bf16_to_f32, f32_to_bf16, pack2, unpack2};
use crate::precision::{CounterRng, ParamDtype, Precision, StateDtype};
use crate::rules::Config;

/// What an optimizer with 16-bit storage keeps besides the f32 one's.
pub(super) struct GpuPrecision {
    pub(super) precision: Precision,
    /// With master weights: the model's bf16 parameters, one buffer a
    /// chunk (the optimizer's `params` are the f32 master).
    pub(super) model: Option<Vec<wgpu::Buffer>>,
    /// Stochastic rounding: each chunk's first element's index (the
    /// kernels' `chunk_base`).
    pub(super) chunk_bases: Vec<wgpu::Buffer>,
    /// With 8-bit state: each chunk's blocks and their table.
    pub(super) blocks: Option<super::blockwise::GpuBlocks>,
}

/// Words of a chunk of `len` elements in 16-bit storage (the chunk's
/// buffers hold `padded(len, 4)` elements, as the f32 ones do).
pub(super) fn words(len: u64) -> u64 {
    padded(len, 4) / 2
}

/// With stochastic rounding, a buffer a chunk holding the chunk's first
/// element (its counter's base; the caller checked it is below 2^32);
/// none otherwise.
pub(super) fn chunk_bases(
    ctx: &GpuContext,
    chunks: &[ChunkRange],
    param: Param16,
) -> Vec<wgpu::Buffer> {
    if param != Param16::StochasticBf16 {
        return Vec::new();
    }
    chunks
        .iter()
        .map(|c| {
            let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("chunk base"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue
                .write_buffer(&b, 0, bytemuck::cast_slice(&[c.start as u32, 0, 0, 0]));
            b
        })
        .collect()
}

/// `values` as bf16 (with `f16`, f16) words, rounded to nearest even,
/// two to a word.
fn to_words(values: &[f32], f16: bool) -> Vec<u32> {
    let round = |x: f32| match f16 {
        true => half::f16::from_f32(x).to_bits(),
        false => f32_to_bf16(x),
    };
    values
        .chunks(2)
        .map(|p| pack2(round(p[0]), p.get(1).map_or(0, |&x| round(x))))
        .collect()
}

impl GpuOptimizer {
    /// As [`GpuOptimizer::new`], with the parameters and state kept as
    /// `precision` says, as [`crate::CpuOptimizer::with_precision`] keeps
    /// them: the arithmetic stays the rule's f32, each value rounded once,
    /// when stored, with the same integer operations, so that both
    /// backends store the same bits wherever their f32 arithmetic agrees
    /// (see the README, "Low-precision parameters and state"). The
    /// parameters given are rounded to bf16 (nearest even); with
    /// `master_weights` they are also kept as given, in f32, and stepped
    /// there ([`GpuOptimizer::master_params`]).
    /// [`GpuOptimizer::read_params`] reads the model's parameters, bf16
    /// values widened to f32; the gradients stay f32.
    ///
    /// On the GPU so far: bf16 parameters (with master weights, or rounded
    /// stochastically), f16 parameters with master weights, and bf16
    /// state, for the element-wise rules; 8-bit blockwise state (with any
    /// of those parameters, or f32 ones) for the rules the CPU keeps in 8
    /// bits (`exp_avg`, `exp_avg_sq`: Adam, AdamW, RAdam, NAdam, Lion), one
    /// fused kernel a step (`shaders/blockwise.wgsl`: a workgroup a block
    /// of 256, the codes and absmax as the CPU stores them). Refused
    /// ([`Error::Unsupported`]) as on the CPU for LAMB and the
    /// schedule-free rules, and on the GPU for `skip_nonfinite` with
    /// stochastic rounding, parameter groups and views; with 8-bit state
    /// `vector_width` must be 1 (or `None`) and `max_chunk_elements` at
    /// least 256 ([`Error::InvalidOptions`]).
    pub fn with_precision(
        ctx: &GpuContext,
        config: impl Into<Config>,
        params: &[&[f32]],
        precision: Precision,
    ) -> Result<Self> {
        Self::with_precision_options(ctx, config, params, precision, GpuOptions::default())
    }

    /// As [`GpuOptimizer::with_precision`], with [`GpuOptions`]
    /// (`vector_width` is 2 here, a pair of elements an invocation).
    pub fn with_precision_options(
        ctx: &GpuContext,
        config: impl Into<Config>,
        params: &[&[f32]],
        precision: Precision,
        options: GpuOptions,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if precision.is_f32() {
            return Self::with_options(ctx, config, params, options);
        }
        if config.is_matrix_rule() {
            return Err(Error::Unsupported(format!(
                "{} with low-precision storage on the GPU (the matrix rules keep f32)",
                config.kind().name()
            )));
        }
        let momentum_buffer = config.builds_momentum_buffer();
        let state_names = config.state_names_with(momentum_buffer);
        crate::precision::store::check_rule(&precision, &config, &state_names)?;
        if precision.state_dtype == StateDtype::Int8Blockwise {
            return Self::with_blockwise(ctx, config, params, precision, options);
        }
        if options.vector_width.is_some_and(|w| w != 2) {
            return Err(Error::InvalidOptions(
                "vector_width with 16-bit storage: the kernels step pairs (2)".into(),
            ));
        }
        if params.is_empty() {
            return Err(Error::EmptyParameterList);
        }
        let layout = Layout::of(params)?;
        let param = match (precision.param_dtype, precision.master_weights) {
            (ParamDtype::Bf16, true) => Param16::MasterBf16,
            (ParamDtype::Bf16, false) => Param16::StochasticBf16,
            // f16 without a master: Precision::validate refused it.
            (ParamDtype::F16, _) => Param16::MasterF16,
            _ => Param16::F32,
        };
        if param == Param16::StochasticBf16 && layout.total() as u64 > u32::MAX as u64 {
            return Err(Error::SizeOverflow {
                what: "the elements of stochastically rounded parameters",
                ty: "u32",
                detail: format!(
                    "{} elements; the kernels count them in 32 bits",
                    layout.total()
                ),
            });
        }
        let chunks = split_chunks(layout.total() as u64, chunk_elements(ctx, &options)?);
        let tiling = Tiling::new(&layout, &chunks)?;
        let variant = Variant {
            width: 2,
            bounds_checked: !options.skip_bounds_checks,
            views: false,
            groups: 0,
            packed16: Some(Packed16 {
                param,
                state_bf16: precision.state_dtype == StateDtype::Bf16,
            }),
            blockwise: None,
        };
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let made = ctx.scoped("allocating parameter buffers", || {
            let make = |label: &str, bytes: &dyn Fn(u64) -> u64| -> Vec<wgpu::Buffer> {
                chunks
                    .iter()
                    .map(|c| {
                        ctx.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some(label),
                            size: bytes(c.len),
                            usage,
                            mapped_at_creation: false,
                        })
                    })
                    .collect()
            };
            let f32_bytes = |n: u64| padded(n, 4) * 4;
            let word_bytes = |n: u64| words(n) * 4;
            let params = match param {
                Param16::StochasticBf16 => make("bf16 params", &word_bytes),
                _ => make("params", &f32_bytes),
            };
            let model = matches!(param, Param16::MasterBf16 | Param16::MasterF16)
                .then(|| make("16-bit params", &word_bytes));
            // Below 2^32: checked above.
            let bases = chunk_bases(ctx, &chunks, param);
            (params, make("grads", &f32_bytes), model, bases)
        })?;
        let (param_buffers, grad_buffers, model, chunk_bases) = made;
        let mut opt = Self::build(
            ctx,
            config,
            momentum_buffer,
            state_names,
            layout,
            chunks,
            tiling,
            Storage::Owned(param_buffers),
            Storage::Owned(grad_buffers),
            variant,
            None,
            None,
        )?;
        opt.precision = Some(GpuPrecision {
            precision,
            model,
            chunk_bases,
            blocks: None,
        });
        opt.attach_rule_groups()?;
        opt.write_params(params)?;
        opt.fill_bf16_state()?;
        Ok(opt)
    }

    /// Bytes the optimizer holds on the GPU for the model: its own
    /// parameter buffers (the 16-bit parameters, the f32 master; none
    /// when the parameters are the caller's) and state, each in its
    /// format, chunks padded to 4 elements. The gradients are not counted,
    /// as [`crate::CpuOptimizer::resident_bytes`] does not.
    pub fn resident_bytes(&self) -> u64 {
        let sum = |b: &[wgpu::Buffer]| b.iter().map(wgpu::Buffer::size).sum::<u64>();
        let params = match &self.params {
            Storage::Owned(b) => sum(b),
            _ => 0,
        };
        let model = self
            .precision
            .as_ref()
            .and_then(|p| p.model.as_deref())
            .map_or(0, sum);
        let state: u64 = self.buffers.state.iter().map(|s| sum(s)).sum();
        params + model + state
    }

    /// The precision the parameters and state are kept in.
    pub fn precision(&self) -> Precision {
        self.precision
            .as_ref()
            .map_or_else(Precision::default, |p| p.precision)
    }

    /// With master weights: the f32 master copy, packed (read back: waits
    /// for the GPU); `None` otherwise.
    pub fn master_params(&self) -> Result<Option<Vec<f32>>> {
        match &self.precision {
            Some(p) if p.model.is_some() => Ok(Some(self.read_storage(&self.params)?)),
            _ => Ok(None),
        }
    }

    /// Whether state tensors are bf16 words.
    pub(super) fn state_is_bf16(&self) -> bool {
        self.precision().state_dtype == StateDtype::Bf16
    }

    /// The buffers holding the model's 16-bit parameters (`None`: f32).
    pub(super) fn model16(&self) -> Option<&[wgpu::Buffer]> {
        let p = self.precision.as_ref()?;
        if p.precision.param_dtype == ParamDtype::F32 {
            return None;
        }
        match (&p.model, &self.params) {
            (Some(model), _) => Some(model),
            (None, Storage::Owned(b)) => Some(b),
            _ => None,
        }
    }

    /// The values of 16-bit `buffers` (one a chunk, bf16 or with `f16`
    /// f16), widened, packed.
    pub(super) fn read_words(&self, buffers: &[wgpu::Buffer], f16: bool) -> Result<Vec<f32>> {
        let widen = |h: u16| match f16 {
            true => half::f16::from_bits(h).to_f32(),
            false => bf16_to_f32(h),
        };
        let mut out = Vec::with_capacity(self.layout.total());
        for (range, b) in self.chunks.iter().zip(buffers) {
            let w = read_buffer(&self.ctx, b, 0, range.len.div_ceil(2) * 4)?;
            for (k, word) in w.iter().enumerate() {
                let (lo, hi) = unpack2(word.to_bits());
                out.push(widen(lo));
                if (2 * k + 1) < range.len as usize {
                    out.push(widen(hi));
                }
            }
        }
        Ok(out)
    }

    /// Writes `flat` (every element, packed) into 16-bit `buffers` rounded
    /// to nearest even (bf16, or with `f16` f16).
    pub(super) fn write_words(&self, buffers: &[wgpu::Buffer], flat: &[f32], f16: bool) {
        for (range, b) in self.chunks.iter().zip(buffers) {
            let values = &flat[range.start as usize..(range.start + range.len) as usize];
            let words = to_words(values, f16);
            self.ctx
                .queue
                .write_buffer(b, 0, bytemuck::cast_slice(&words));
        }
    }

    /// Whether the model's 16-bit parameters are f16.
    pub(super) fn params_f16(&self) -> bool {
        self.precision().param_dtype == ParamDtype::F16
    }

    /// Writes the parameters: with master weights the master takes them as
    /// given and the model's parameters rounded, as on the CPU.
    pub(super) fn write_params16(&self, flat: &[f32]) -> Option<()> {
        let model = self.model16()?;
        if self.precision.as_ref()?.model.is_some() {
            self.write_storage_tensors(&self.params, &self.layout.split_unchecked(flat));
        }
        self.write_words(model, flat, self.params_f16());
        Some(())
    }

    /// bf16 state starts from each state's initial value, packed.
    fn fill_bf16_state(&self) -> Result<()> {
        if !self.state_is_bf16() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        for (i, name) in self.state_names.iter().enumerate() {
            let init = self.config.state_initial_value(name);
            let flat = vec![init; self.layout.total()];
            ctx.scoped("filling the bf16 state", || {
                self.write_words(&self.buffers.state[i], &flat, false)
            })?;
        }
        Ok(())
    }

    /// Stochastic rounding's part of this step's random bits for step
    /// `step` (1 for the first): lowbias32 of the step's key (see
    /// [`CounterRng`]); 0 without it.
    pub(super) fn stochastic_rounding_key(&self, step: u64) -> u32 {
        match &self.precision {
            Some(p) if p.precision.stochastic_rounding() => {
                CounterRng::new(p.precision.seed, step).gpu_key()
            }
            _ => 0,
        }
    }
}
