//! Low-precision parameters and optimizer state: the formats (bf16, f16,
//! 8-bit blockwise), their rounding, and the options of the CPU optimizer
//! that store its parameters and state in them ([`Precision`],
//! [`crate::CpuOptimizer::with_precision`]).
//!
//! The arithmetic of every step stays f32, the rule's own: each element's
//! parameter and state are widened to f32, updated by the rule exactly as in
//! f32 mode, and rounded (or quantized) once, on store. That is how PyTorch's
//! fused CUDA AdamW treats bf16 moments, how Apex and TransformerEngine
//! keep f32 master weights behind 16-bit parameters, and how bitsandbytes'
//! 8-bit optimizers dequantize, update and requantize each block.
//!
//! | mode | parameters | master | state |
//! |---|---|---|---|
//! | f32 (default) | f32 | none | f32 |
//! | bf16/f16 parameters, master weights | rounded to nearest even from the master after each step | f32 | any |
//! | bf16 parameters, no master | stochastically rounded ([`CounterRng`]) | none | any |
//! | bf16 state | | | each state rounded to nearest even |
//! | 8-bit state (Adam, AdamW, RAdam, NAdam, Lion) | | | `exp_avg` signed, `exp_avg_sq` unsigned dynamic map, blocks of 256 ([`blockwise`]); tensors under 4096 elements in f32 |

pub mod bf16;
pub mod blockwise;
mod maps;
mod rng;
pub(crate) mod store;

pub use rng::{lowbias32, CounterRng};

use crate::error::{Error, Result};

/// The format the parameters are kept in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ParamDtype {
    /// IEEE single precision (the default): no rounding.
    #[default]
    F32,
    /// bfloat16 (8 exponent bits, 7 mantissa bits).
    Bf16,
    /// IEEE half precision (5 exponent bits, 10 mantissa bits; largest
    /// finite 65504).
    F16,
}

/// The format the optimizer's state tensors are kept in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateDtype {
    /// IEEE single precision (the default).
    #[default]
    F32,
    /// bfloat16, rounded to nearest even on every store.
    Bf16,
    /// bitsandbytes' 8-bit blockwise quantization ([`blockwise`]); for the
    /// rules whose state is `exp_avg`/`exp_avg_sq` (Adam, AdamW, RAdam,
    /// NAdam, Lion), tensors under [`blockwise::MIN_8BIT_SIZE`] elements in
    /// f32. The GPU's kernel stores the same codes and absmax
    /// ([`crate::GpuOptimizer::with_precision`]).
    Int8Blockwise,
}

impl ParamDtype {
    /// The name the command line and the bench rows use: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            ParamDtype::F32 => "f32",
            ParamDtype::Bf16 => "bf16",
            ParamDtype::F16 => "f16",
        }
    }

    /// Bytes an element.
    pub fn bytes(self) -> usize {
        match self {
            ParamDtype::F32 => 4,
            ParamDtype::Bf16 | ParamDtype::F16 => 2,
        }
    }

    /// `x` rounded to nearest even in this format, widened back to f32.
    #[inline(always)]
    pub fn round(self, x: f32) -> f32 {
        match self {
            ParamDtype::F32 => x,
            ParamDtype::Bf16 => bf16::bf16_to_f32(bf16::f32_to_bf16(x)),
            ParamDtype::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

impl StateDtype {
    /// The name the command line and the bench rows use: `f32`, `bf16`, `8bit`.
    pub fn name(self) -> &'static str {
        match self {
            StateDtype::F32 => "f32",
            StateDtype::Bf16 => "bf16",
            StateDtype::Int8Blockwise => "8bit",
        }
    }
}

impl std::str::FromStr for ParamDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(ParamDtype::F32),
            "bf16" => Ok(ParamDtype::Bf16),
            "f16" => Ok(ParamDtype::F16),
            _ => Err(Error::InvalidOptions(format!(
                "param_dtype `{s}` (one of f32, bf16, f16)"
            ))),
        }
    }
}

impl std::str::FromStr for StateDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(StateDtype::F32),
            "bf16" => Ok(StateDtype::Bf16),
            "8bit" => Ok(StateDtype::Int8Blockwise),
            _ => Err(Error::InvalidOptions(format!(
                "state_dtype `{s}` (one of f32, bf16, 8bit)"
            ))),
        }
    }
}

/// How an optimizer keeps its parameters and state
/// ([`crate::CpuOptimizer::with_precision`]). The default is all f32.
///
/// ```
/// use wgpu_optim::precision::{ParamDtype, Precision, StateDtype};
/// use wgpu_optim::{AdamW, CpuOptimizer};
/// let p = Precision {
///     param_dtype: ParamDtype::Bf16,
///     master_weights: true,
///     state_dtype: StateDtype::Bf16,
///     ..Precision::default()
/// };
/// let mut opt = CpuOptimizer::with_precision(AdamW::default(), &[&[1.0f32, 2.0]], p)?;
/// opt.step(&[&[0.5, -0.5]])?;
/// // The model's parameters are bf16 values; the master keeps f32.
/// let w = opt.param(0)[0];
/// assert_eq!(w, f32::from_bits(w.to_bits() & 0xffff_0000));
/// assert!((opt.master_params().unwrap()[0] - (1.0 - 1e-3 - 1e-5)).abs() < 1e-6);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Precision {
    /// The parameters' format.
    pub param_dtype: ParamDtype,
    /// The state tensors' format.
    pub state_dtype: StateDtype,
    /// Keep an f32 copy of 16-bit parameters, stepped in f32, the rounded
    /// values written to the parameters after each step. Without it, bf16
    /// parameters are rounded stochastically each step (f16 needs it).
    pub master_weights: bool,
    /// The seed of stochastic rounding ([`CounterRng`]).
    pub seed: u64,
}

impl Precision {
    /// Whether everything is f32 (the optimizer's ordinary mode).
    pub fn is_f32(&self) -> bool {
        self.param_dtype == ParamDtype::F32 && self.state_dtype == StateDtype::F32
    }

    /// Whether the parameters are rounded stochastically (bf16 without a
    /// master copy).
    pub fn stochastic_rounding(&self) -> bool {
        self.param_dtype == ParamDtype::Bf16 && !self.master_weights
    }

    /// Checks the combination: master weights need 16-bit parameters
    /// ([`Error::InvalidOptions`]); f16 parameters need master weights
    /// ([`Error::Unsupported`]: stochastic rounding is bf16's only).
    pub fn validate(&self) -> Result<()> {
        match (self.param_dtype, self.master_weights) {
            (ParamDtype::F32, true) => Err(Error::InvalidOptions(
                "master_weights with param_dtype f32: f32 parameters are their own master".into(),
            )),
            (ParamDtype::F16, false) => Err(Error::Unsupported(
                "param_dtype f16 without master_weights (stochastic rounding is for bf16 only)"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}
