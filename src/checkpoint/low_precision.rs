//! Checkpoints of an optimizer with low-precision parameters or state: the
//! precision in the metadata, every tensor in its stored format, checked
//! against it.

use super::*;
use crate::precision::blockwise::{dequantize_blockwise, DynamicMap, BLOCK};
use crate::precision::store::{state_sign, LowPrecision};
use crate::precision::{bf16, ParamDtype, StateDtype};

/// One state tensor kept in bitsandbytes' 8-bit blockwise format
/// ([`crate::precision::blockwise`]), as stored: restoring these codes and
/// scales gives back the very state, which its dequantized values (in
/// [`Checkpoint::state`]) would not.
///
/// In the file: `state.{tensor}.{state}` is the U8 codes and
/// `state.{tensor}.{state}.absmax` the F32 scale of each block of 256.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedState {
    /// The state's name (`exp_avg`, `exp_avg_sq`).
    pub state: String,
    /// The parameter tensor's index.
    pub tensor: usize,
    /// One code an element.
    pub codes: Vec<u8>,
    /// One scale a block of [`BLOCK`] elements.
    pub absmax: Vec<f32>,
}

/// The suffix of an 8-bit state's block scales in the file.
pub(super) const ABSMAX: &str = ".absmax";

/// Whether `x` is a value of `dtype` (widened to f32): what a 16-bit
/// parameter or state must be. NaN passes: its payload is not kept.
fn representable(dtype: ParamDtype, x: f32) -> bool {
    x.is_nan() || dtype.round(x).to_bits() == x.to_bits()
}

/// Checks the precision against the rest of a checkpoint whose other
/// fields `validate` has checked: a combination the CPU optimizer takes
/// for this rule, master weights exactly when it has them, 16-bit values
/// that are 16-bit, the 8-bit tensors exactly those the format quantizes,
/// each whole and dequantizing to its `state` values.
pub(super) fn validate(ckpt: &Checkpoint, total: usize, names: &[&'static str]) -> Result<()> {
    let bad = |m: String| Error::Checkpoint(m);
    let p = &ckpt.precision;
    p.validate().map_err(|e| bad(format!("precision: {e}")))?;
    crate::precision::store::check_rule(p, &ckpt.config, names)
        .map_err(|e| bad(format!("precision: {e}")))?;
    match (&ckpt.master_params, p.master_weights) {
        (Some(m), true) if m.len() != total => {
            return Err(bad(format!(
                "the master weights have {} elements, the lengths say {total}",
                m.len()
            )))
        }
        (Some(_), true) | (None, false) => {}
        (None, true) => return Err(bad("master_weights without master parameters".into())),
        (Some(_), false) => return Err(bad("master parameters without master_weights".into())),
    }
    if let Some(params) = &ckpt.params {
        if let Some(i) = params
            .iter()
            .position(|&x| !representable(p.param_dtype, x))
        {
            return Err(bad(format!(
                "parameter element {i} = {} is not a {} value",
                params[i],
                p.param_dtype.name()
            )));
        }
    }
    if p.state_dtype == StateDtype::Bf16 {
        for (name, values) in &ckpt.state {
            if let Some(i) = values
                .iter()
                .position(|&x| !representable(ParamDtype::Bf16, x))
            {
                return Err(bad(format!(
                    "state `{name}` element {i} = {} is not a bf16 value",
                    values[i]
                )));
            }
        }
    }
    let mut expected = Vec::new();
    for (name, _) in &ckpt.state {
        for (t, &len) in ckpt.lengths.iter().enumerate() {
            if LowPrecision::is_quantized(p.state_dtype, len) {
                expected.push((name.as_str(), t, len));
            }
        }
    }
    if expected.len() != ckpt.quantized.len() {
        return Err(bad(format!(
            "{} state tensors are kept in 8 bits, the checkpoint has {}",
            expected.len(),
            ckpt.quantized.len()
        )));
    }
    let offsets = crate::Layout::new(&ckpt.lengths)?;
    for ((name, t, len), q) in expected.into_iter().zip(&ckpt.quantized) {
        if q.state != name || q.tensor != t {
            return Err(bad(format!(
                "8-bit state `{}` of tensor {} where `{name}` of tensor {t} belongs",
                q.state, q.tensor
            )));
        }
        if q.codes.len() != len || q.absmax.len() != len.div_ceil(BLOCK) {
            return Err(bad(format!(
                "8-bit state `{name}` of tensor {t}: {} codes and {} scales for {len} elements",
                q.codes.len(),
                q.absmax.len()
            )));
        }
        let signed = state_sign(name).unwrap_or(true);
        let mut widened = vec![0f32; len];
        dequantize_blockwise(
            &q.codes,
            &q.absmax,
            DynamicMap::for_sign(signed),
            &mut widened,
        );
        let given = &ckpt.state_flat(name).expect("the state names were checked")[offsets.range(t)];
        if widened
            .iter()
            .zip(given)
            .any(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()))
        {
            return Err(bad(format!(
                "8-bit state `{name}` of tensor {t}: its values are not its codes dequantized"
            )));
        }
    }
    Ok(())
}

/// The format a state tensor that is not quantized has in the file: bf16
/// state as BF16, the rest (8-bit state's small tensors too) F32.
pub(super) fn state_format(dtype: StateDtype) -> ParamDtype {
    match dtype {
        StateDtype::Bf16 => ParamDtype::Bf16,
        StateDtype::F32 | StateDtype::Int8Blockwise => ParamDtype::F32,
    }
}

/// The file's tensor of `values` in `dtype`.
fn param_data(dtype: ParamDtype, values: &[f32]) -> Data<'_> {
    match dtype {
        ParamDtype::F32 => Data::Borrowed(values),
        ParamDtype::Bf16 => Data::U16(
            "BF16",
            values.iter().map(|&x| bf16::f32_to_bf16(x)).collect(),
        ),
        ParamDtype::F16 => Data::U16(
            "F16",
            values
                .iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect(),
        ),
    }
}

/// Tensor `i`'s state `name` (its `values`) in the file: F32, BF16, or the
/// 8-bit codes and their scales.
pub(super) fn push_state<'a>(
    ckpt: &'a Checkpoint,
    i: usize,
    name: &str,
    values: &'a [f32],
    tensors: &mut Vec<Tensor<'a>>,
) {
    let shape = vec![values.len()];
    if let Some(q) = ckpt
        .quantized
        .iter()
        .find(|q| q.tensor == i && q.state == name)
    {
        tensors.push(Tensor {
            name: format!("state.{i}.{name}"),
            shape,
            data: Data::U8(q.codes.clone()),
        });
        tensors.push(Tensor {
            name: format!("state.{i}.{name}{ABSMAX}"),
            shape: vec![q.absmax.len()],
            data: Data::Borrowed(&q.absmax),
        });
        return;
    }
    tensors.push(Tensor {
        name: format!("state.{i}.{name}"),
        shape,
        data: param_data(state_format(ckpt.precision.state_dtype), values),
    });
}

/// Tensor `i`'s parameters (`params.{i}`, in the parameters' format) and
/// master weights (`master_params.{i}`, F32).
pub(super) fn push_params<'a>(
    ckpt: &'a Checkpoint,
    i: usize,
    range: std::ops::Range<usize>,
    tensors: &mut Vec<Tensor<'a>>,
) {
    if let Some(p) = &ckpt.params {
        tensors.push(Tensor {
            name: format!("params.{i}"),
            shape: vec![range.len()],
            data: param_data(ckpt.precision.param_dtype, &p[range.clone()]),
        });
    }
    if let Some(m) = &ckpt.master_params {
        tensors.push(Tensor {
            name: format!("master_params.{i}"),
            shape: vec![range.len()],
            data: Data::Borrowed(&m[range]),
        });
    }
}

/// The metadata's `precision` object (absent for all-f32).
pub(super) fn to_json(p: &Precision) -> Option<Value> {
    (!p.is_f32()).then(|| {
        json!({
            "param_dtype": p.param_dtype.name(),
            "state_dtype": p.state_dtype.name(),
            "master_weights": p.master_weights,
            "seed": p.seed,
        })
    })
}

/// Reads the metadata's `precision` object.
pub(super) fn from_json(v: Option<&Value>) -> Result<Precision> {
    let bad = |m: String| Error::Checkpoint(m);
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Precision::default());
    };
    let o = v
        .as_object()
        .ok_or_else(|| bad(format!("wgpu_optim.precision: {v} is not an object")))?;
    let text = |k: &str| {
        o.get(k).and_then(Value::as_str).ok_or_else(|| {
            bad(format!(
                "wgpu_optim.precision.{k} is missing or not a string"
            ))
        })
    };
    let param_dtype: ParamDtype = text("param_dtype")?
        .parse()
        .map_err(|e| bad(format!("wgpu_optim.precision: {e}")))?;
    let state_dtype: StateDtype = text("state_dtype")?
        .parse()
        .map_err(|e| bad(format!("wgpu_optim.precision: {e}")))?;
    let master_weights = o
        .get("master_weights")
        .and_then(Value::as_bool)
        .ok_or_else(|| bad("wgpu_optim.precision.master_weights is not a boolean".into()))?;
    let seed = o
        .get("seed")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("wgpu_optim.precision.seed is not a count".into()))?;
    Ok(Precision {
        param_dtype,
        state_dtype,
        master_weights,
        seed,
    })
}

/// The dtype a tensor of values kept in `dtype` has in the file, and its
/// values widened to f32.
pub(super) fn widen(
    name: &str,
    t: &safetensors::tensor::TensorView<'_>,
    dtype: ParamDtype,
) -> Result<Vec<f32>> {
    let (want, size) = match dtype {
        ParamDtype::F32 => (Dtype::F32, 4),
        ParamDtype::Bf16 => (Dtype::BF16, 2),
        ParamDtype::F16 => (Dtype::F16, 2),
    };
    if t.dtype() != want {
        return Err(Error::Checkpoint(format!(
            "`{name}` is {:?}, expected {want:?}",
            t.dtype()
        )));
    }
    Ok(t.data()
        .chunks_exact(size)
        .map(|b| match dtype {
            ParamDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            ParamDtype::Bf16 => bf16::bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            ParamDtype::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        })
        .collect())
}
