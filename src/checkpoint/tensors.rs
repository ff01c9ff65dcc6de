//! The safetensors side of checkpoints: the scalar state's tensors and
//! group keys, tensor names, and the file writer.

use super::*;

/// Removes the scalar state torch keeps in the group from `args` (the
/// group's keyword arguments), with its values.
pub(super) fn take_group_scalars(
    spec: &[ScalarState],
    args: &mut Map<String, Value>,
) -> Result<Vec<(&'static str, f64)>> {
    let bad = |m: String| Error::Checkpoint(m);
    let mut out = Vec::new();
    for s in spec.iter().filter(|s| s.home == ScalarHome::Group) {
        let v = args
            .remove(s.name)
            .ok_or_else(|| bad(format!("param_groups[0] has no `{}`", s.name)))?;
        let x = v
            .as_f64()
            .ok_or_else(|| bad(format!("param_groups[0].{}: {v} is not a number", s.name)))?;
        out.push((s.name, x));
    }
    Ok(out)
}

/// The scalar state of `spec`: the group's values (`group`, from
/// [`take_group_scalars`]), or a number in every tensor's state, the same
/// in all.
pub(super) fn read_scalar_state(
    spec: &[ScalarState],
    group: &[(&'static str, f64)],
    st: &SafeTensors<'_>,
    n_tensors: usize,
) -> Result<Vec<(String, f64)>> {
    let bad = |m: String| Error::Checkpoint(m);
    let mut out = Vec::with_capacity(spec.len());
    for s in spec {
        let value = match s.home {
            ScalarHome::Group => group
                .iter()
                .find(|(n, _)| *n == s.name)
                .map(|(_, v)| *v)
                .ok_or_else(|| bad(format!("param_groups[0] has no `{}`", s.name)))?,
            ScalarHome::Tensor => {
                let mut value: Option<f64> = None;
                for i in 0..n_tensors {
                    let name = format!("state.{i}.{}", s.name);
                    let t = st
                        .tensor(&name)
                        .map_err(|_| bad(format!("missing tensor `{name}`")))?;
                    let v = scalar_value(&name, &t)?;
                    match value {
                        Some(x) if x.to_bits() != v.to_bits() => {
                            return Err(bad(format!(
                                "`{name}` = {v}, but another tensor's {} is {x}",
                                s.name
                            )))
                        }
                        _ => value = Some(v),
                    }
                }
                value.ok_or_else(|| bad(format!("no tensor has `{}`", s.name)))?
            }
        };
        out.push((s.name.to_string(), value));
    }
    Ok(out)
}

/// Tensor `i`'s scalar state of `spec` (those torch keeps per tensor), as
/// 0-dimensional tensors of torch's dtype.
pub(super) fn push_scalar_tensors(
    spec: &[ScalarState],
    values: &[(String, f64)],
    i: usize,
    tensors: &mut Vec<Tensor<'_>>,
) {
    for (s, (name, v)) in spec.iter().zip(values) {
        if s.home == ScalarHome::Tensor {
            tensors.push(Tensor {
                name: format!("state.{i}.{name}"),
                shape: vec![],
                data: match s.dtype {
                    ScalarDtype::F32 => Data::Owned(vec![*v as f32]),
                    ScalarDtype::F64 => Data::F64(vec![*v]),
                },
            });
        }
    }
}

/// The scalar state of `spec` that torch keeps in the group, into `group`.
pub(super) fn insert_group_scalars(
    spec: &[ScalarState],
    values: &[(String, f64)],
    group: &mut Map<String, Value>,
) {
    for (s, (name, v)) in spec.iter().zip(values) {
        if s.home == ScalarHome::Group {
            group.insert(name.clone(), Value::from(*v));
        }
    }
}

/// The value of a one-number tensor torch wrote (shape `[]` or `[1]`;
/// F32, F64 or I64).
pub(super) fn scalar_value(name: &str, t: &safetensors::tensor::TensorView<'_>) -> Result<f64> {
    let bad = |m: String| Error::Checkpoint(m);
    if !(t.shape().is_empty() || t.shape() == [1]) {
        return Err(bad(format!(
            "`{name}` has shape {:?}, expected []",
            t.shape()
        )));
    }
    let d = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => f32::from_le_bytes(d[..4].try_into().expect("4 bytes")) as f64,
        Dtype::F64 => f64::from_le_bytes(d[..8].try_into().expect("8 bytes")),
        Dtype::I64 => i64::from_le_bytes(d[..8].try_into().expect("8 bytes")) as f64,
        other => {
            return Err(bad(format!(
                "`{name}` is {other:?}, expected F32, F64 or I64"
            )))
        }
    })
}

pub(super) fn checked_total(lengths: &[usize]) -> Result<usize> {
    const MAX: usize = isize::MAX as usize / 8;
    let total = lengths
        .iter()
        .try_fold(0usize, |a, &b| a.checked_add(b))
        .ok_or_else(|| {
            Error::Checkpoint("the tensor lengths overflow: their sum does not fit usize".into())
        })?;
    if total > MAX {
        return Err(Error::Checkpoint(format!(
            "the tensor lengths overflow: they add up to {total} elements, more than a host \
             vector holds ({MAX})"
        )));
    }
    Ok(total)
}

/// `state.{i}.{what}` → (i, what); `params.{i}` → (i, "params").
pub(super) fn parse_tensor_name(name: &str) -> Option<(usize, &str)> {
    if let Some(rest) = name.strip_prefix("params.") {
        return parse_index(rest).map(|i| (i, "params"));
    }
    if let Some(rest) = name.strip_prefix("master_params.") {
        return parse_index(rest).map(|i| (i, "master_params"));
    }
    let rest = name.strip_prefix("state.")?;
    let (i, what) = rest.split_once('.')?;
    Some((parse_index(i)?, what))
}

pub(super) fn parse_index(s: &str) -> Option<usize> {
    // Canonical decimal only: `01` or `+1` would name the same tensor twice.
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// The group's `params`: exactly `0, 1, ..., n-1`, each once.
pub(super) fn group_params(group: &Map<String, Value>) -> Result<usize> {
    let bad = |m: String| Error::Checkpoint(m);
    let list = group
        .get("params")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("param_groups[0].params is missing or not a list".into()))?;
    if list.is_empty() {
        return Err(bad("param_groups[0].params is empty".into()));
    }
    let mut seen = vec![false; list.len()];
    for v in list {
        let i = v
            .as_u64()
            .ok_or_else(|| bad(format!("param_groups[0].params: {v} is not an index")))?;
        let slot = usize::try_from(i)
            .ok()
            .and_then(|i| seen.get_mut(i))
            .ok_or_else(|| {
                bad(format!(
                    "param_groups[0].params: index {i} out of range for {} tensors",
                    list.len()
                ))
            })?;
        if *slot {
            return Err(bad(format!(
                "param_groups[0].params lists tensor {i} twice"
            )));
        }
        *slot = true;
    }
    Ok(list.len())
}

pub(super) enum Data<'a> {
    Borrowed(&'a [f32]),
    Owned(Vec<f32>),
    /// Scalar state torch keeps in float64.
    F64(Vec<f64>),
    /// 16-bit values: BF16 or F16 bit patterns.
    U16(&'static str, Vec<u16>),
    /// 8-bit state codes.
    U8(Vec<u8>),
    /// Bytes copied from a file, with their dtype's name.
    Raw(String, Vec<u8>),
}

pub(super) struct Tensor<'a> {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
    pub(super) data: Data<'a>,
}

impl Tensor<'_> {
    /// The tensor, renamed, owning its data.
    pub(super) fn into_owned(self, name: String) -> Tensor<'static> {
        Tensor {
            name,
            shape: self.shape,
            data: match self.data {
                Data::Borrowed(v) => Data::Owned(v.to_vec()),
                Data::Owned(v) => Data::Owned(v),
                Data::F64(v) => Data::F64(v),
                Data::U16(d, v) => Data::U16(d, v),
                Data::U8(v) => Data::U8(v),
                Data::Raw(d, v) => Data::Raw(d, v),
            },
        }
    }

    fn dtype(&self) -> &str {
        match &self.data {
            Data::Borrowed(_) | Data::Owned(_) => "F32",
            Data::F64(_) => "F64",
            Data::U16(dtype, _) => dtype,
            Data::U8(_) => "U8",
            Data::Raw(dtype, _) => dtype,
        }
    }

    fn byte_len(&self) -> usize {
        match &self.data {
            Data::Borrowed(v) => v.len() * 4,
            Data::Owned(v) => v.len() * 4,
            Data::F64(v) => v.len() * 8,
            Data::U16(_, v) => v.len() * 2,
            Data::U8(v) | Data::Raw(_, v) => v.len(),
        }
    }

    /// The values, little-endian.
    fn write_le(&self, w: &mut impl Write) -> std::io::Result<()> {
        fn all<T: bytemuck::Pod, const N: usize>(
            w: &mut impl Write,
            v: &[T],
            le: fn(&T) -> [u8; N],
        ) -> std::io::Result<()> {
            if cfg!(target_endian = "little") {
                return w.write_all(bytemuck::cast_slice(v));
            }
            v.iter().try_for_each(|x| w.write_all(&le(x)))
        }
        match &self.data {
            Data::Borrowed(v) => all(w, v, |x| x.to_le_bytes()),
            Data::Owned(v) => all(w, v, |x| x.to_le_bytes()),
            Data::F64(v) => all(w, v, |x| x.to_le_bytes()),
            Data::U16(_, v) => all(w, v, |x| x.to_le_bytes()),
            Data::U8(v) | Data::Raw(_, v) => w.write_all(v),
        }
    }
}

/// Streams a safetensors file: the header (tensors sorted by name, as the
/// safetensors crate orders tensors of one dtype; padded with spaces to a
/// multiple of 8 bytes) then each tensor's little-endian bytes, never the
/// whole file in memory at once.
pub(super) fn write_safetensors(
    w: &mut impl Write,
    tensors: &[Tensor<'_>],
    metadata: HashMap<String, String>,
) -> std::io::Result<()> {
    let mut order: Vec<&Tensor<'_>> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = Map::new();
    header.insert(
        "__metadata__".into(),
        Value::Object(
            metadata
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    );
    let mut offset = 0usize;
    for t in &order {
        let len = t.byte_len();
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype(), "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut bytes = Value::Object(header).to_string().into_bytes();
    while !bytes.len().is_multiple_of(8) {
        bytes.push(b' ');
    }
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(&bytes)?;
    for t in &order {
        t.write_le(w)?;
    }
    w.flush()
}

/// `fsync`s a folder, so that a rename in it is on disk.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The metadata's `wgpu_optim` object, if the file has one.
pub(super) fn wgpu_optim_metadata(
    meta: &HashMap<String, String>,
) -> Result<Option<Map<String, Value>>> {
    let bad = |m: String| Error::Checkpoint(m);
    meta.get("wgpu_optim")
        .map(|s| {
            serde_json::from_str::<Value>(s)
                .map_err(|e| bad(format!("wgpu_optim: {e}")))?
                .as_object()
                .cloned()
                .ok_or_else(|| bad("wgpu_optim is not an object".into()))
        })
        .transpose()
}
