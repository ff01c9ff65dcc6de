//! Checkpoints of several parameter groups, in torch's `param_groups` form:
//! each group one entry of `param_groups` (its hyperparameters and the
//! indices of its tensors), each tensor's state under its own index with
//! its group's state names and step.
//!
//! Each group is, on its own, a one-group checkpoint of its tensors: that
//! is how these are written, read and checked ([`Checkpoint::part`]), so
//! that every check of a one-group checkpoint holds for each group.

use super::*;
use crate::groups::check_groups;

/// What a checkpoint of several groups keeps of each group beside its
/// [`crate::ParamGroup`]: its counters, its scalar state and the state
/// tensors it was built with.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupState {
    /// Steps the group has applied.
    pub step: u64,
    /// SGD: the group's momentum buffer has been filled once.
    pub buffer_filled: bool,
    /// The group's scalar state ([`Config::scalar_state_names`]).
    pub scalar_state: Vec<(String, f64)>,
    /// The group's state tensors, torch's for the options it was built
    /// with (one group may have `max_exp_avg_sq`, another not).
    pub state_names: Vec<String>,
}

/// The state names of all groups in one list, in the order the CPU
/// optimizer keeps them: each group's names in its own order, a name new
/// to the list placed after that group's previous name.
pub(crate) fn union_names<S: AsRef<str>>(per_group: &[Vec<S>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for names in per_group {
        let mut prev: Option<usize> = None;
        for name in names {
            let name = name.as_ref();
            let i = match out.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    let at = prev.map_or(0, |p| p + 1);
                    out.insert(at, name.to_string());
                    at
                }
            };
            prev = Some(i);
        }
    }
    out
}

/// One parameter group of an optimizer, as a checkpoint must fit it.
pub(crate) struct GroupFit<'a> {
    pub(crate) group: &'a crate::ParamGroup,
    /// The group's state tensors.
    pub(crate) state_names: Vec<&'a str>,
}

impl Checkpoint {
    /// Checks that this checkpoint fits an optimizer of these groups over
    /// tensors of `lengths` with the state tensors `state_names` (their
    /// union) in `precision`: as many groups, each of the same tensors and
    /// fitting as one group's checkpoint does. A checkpoint of one group
    /// counts as one group of every tensor.
    pub(crate) fn check_fits_groups(
        &self,
        groups: &[GroupFit<'_>],
        state_names: &[&str],
        lengths: &[usize],
        precision: &crate::precision::Precision,
    ) -> Result<()> {
        let mismatch = |what: String, expected: String, got: String| Error::CheckpointMismatch {
            what,
            expected,
            got,
        };
        if groups.len() != self.groups.len() {
            return Err(mismatch(
                "parameter groups".into(),
                groups.len().to_string(),
                self.groups.len().max(1).to_string(),
            ));
        }
        if lengths != self.lengths.as_slice() {
            return Err(mismatch(
                "tensor lengths".into(),
                format!("{lengths:?}"),
                format!("{:?}", self.lengths),
            ));
        }
        for (g, (fit, saved)) in groups.iter().zip(&self.groups).enumerate() {
            if fit.group.params != saved.params {
                return Err(mismatch(
                    format!("group {g}'s tensors"),
                    format!("{:?}", fit.group.params),
                    format!("{:?}", saved.params),
                ));
            }
            let group_lengths: Vec<usize> = fit.group.params.iter().map(|&t| lengths[t]).collect();
            self.part(g)?
                .check_fits(
                    &fit.group.config,
                    &fit.state_names,
                    &group_lengths,
                    precision,
                )
                .map_err(|e| match e {
                    Error::CheckpointMismatch {
                        what,
                        expected,
                        got,
                    } => mismatch(format!("group {g}'s {what}"), expected, got),
                    e => e,
                })?;
        }
        let names: Vec<&str> = self.state.iter().map(|(n, _)| n.as_str()).collect();
        if names != state_names {
            return Err(mismatch(
                "state tensors".into(),
                state_names.join(", "),
                names.join(", "),
            ));
        }
        Ok(())
    }

    /// Group `g` as a one-group checkpoint of its own tensors (numbered in
    /// the group's order), with the checkpoint's global options.
    pub(crate) fn part(&self, g: usize) -> Result<Checkpoint> {
        let group = &self.groups[g];
        let counters = &self.group_state[g];
        let layout = crate::Layout::new(&self.lengths)?;
        let gather = |flat: &[f32]| -> Vec<f32> {
            group
                .params
                .iter()
                .flat_map(|&t| flat[layout.range(t)].iter().copied())
                .collect()
        };
        let state = counters
            .state_names
            .iter()
            .map(|n| {
                let flat = self.state_flat(n).ok_or_else(|| {
                    Error::Checkpoint(format!("group {g}'s state `{n}` is not in the checkpoint"))
                })?;
                Ok((n.clone(), gather(flat)))
            })
            .collect::<Result<_>>()?;
        Ok(Checkpoint {
            config: group.config.clone(),
            lengths: group.params.iter().map(|&t| self.lengths[t]).collect(),
            step: counters.step,
            buffer_filled: counters.buffer_filled,
            state,
            scalar_state: counters.scalar_state.clone(),
            params: self.params.as_deref().map(gather),
            clip: self.clip,
            skip_nonfinite: self.skip_nonfinite,
            skipped_steps: self.skipped_steps,
            grad_scale: self.grad_scale,
            scheduler: self.scheduler.clone(),
            groups: Vec::new(),
            group_state: Vec::new(),
            shapes: Vec::new(),
            precision: self.precision,
            master_params: None,
            quantized: Vec::new(),
        })
    }
}

/// [`Checkpoint::validate`] for several groups: the groups a partition of
/// the tensors, of one rule; the state the union of the groups' (0 where a
/// tensor's group has no such state: the file cannot keep a value there);
/// the first group's values at the top; each group valid as a checkpoint
/// of its own.
pub(super) fn validate(ckpt: &Checkpoint) -> Result<()> {
    let bad = |m: String| Error::Checkpoint(m);
    if ckpt.group_state.len() != ckpt.groups.len() {
        return Err(bad(format!(
            "{} parameter groups and {} group states",
            ckpt.groups.len(),
            ckpt.group_state.len()
        )));
    }
    if !ckpt.precision.is_f32() || ckpt.master_params.is_some() || !ckpt.quantized.is_empty() {
        return Err(bad(
            "several parameter groups with low-precision parameters or state".into(),
        ));
    }
    if !ckpt.shapes.is_empty() {
        return Err(bad("several parameter groups with tensor shapes".into()));
    }
    let total = checked_total(&ckpt.lengths)?;
    check_groups(&ckpt.groups, ckpt.lengths.len()).map_err(|e| bad(format!("groups: {e}")))?;
    let first = &ckpt.group_state[0];
    if ckpt.config != ckpt.groups[0].config
        || ckpt.step != first.step
        || ckpt.buffer_filled != first.buffer_filled
        || ckpt.scalar_state != first.scalar_state
    {
        return Err(bad(
            "config, step, buffer_filled and scalar_state must be the first group's".into(),
        ));
    }
    let union = union_names(
        &ckpt
            .group_state
            .iter()
            .map(|s| s.state_names.clone())
            .collect::<Vec<_>>(),
    );
    let have: Vec<&str> = ckpt.state.iter().map(|(n, _)| n.as_str()).collect();
    if have != union {
        return Err(bad(format!(
            "the groups have state [{}], the checkpoint [{}]",
            union.join(", "),
            have.join(", ")
        )));
    }
    for (name, values) in &ckpt.state {
        if values.len() != total {
            return Err(bad(format!(
                "state `{name}` has {} elements, the tensors {total}",
                values.len()
            )));
        }
    }
    let layout = crate::Layout::new(&ckpt.lengths)?;
    for (group, counters) in ckpt.groups.iter().zip(&ckpt.group_state) {
        for (name, values) in &ckpt.state {
            if counters.state_names.contains(name) {
                continue;
            }
            for &t in &group.params {
                if values[layout.range(t)].iter().any(|v| v.to_bits() != 0) {
                    return Err(bad(format!(
                        "state `{name}` of tensor {t}, whose group has no such state, is not 0"
                    )));
                }
            }
        }
    }
    if let Some(p) = &ckpt.params {
        if p.len() != total {
            return Err(bad(format!(
                "the parameters have {} elements, the lengths say {total}",
                p.len()
            )));
        }
    }
    for g in 0..ckpt.groups.len() {
        ckpt.part(g)?.validate().map_err(|e| match e {
            Error::Checkpoint(m) => bad(format!("param_groups[{g}]: {m}")),
            e => e,
        })?;
    }
    Ok(())
}

/// The file's name of tensor `i`'s `what` (as [`parse_tensor_name`]
/// reads it back).
fn tensor_name(i: usize, what: &str) -> String {
    match what {
        "params" | "master_params" => format!("{what}.{i}"),
        _ => format!("state.{i}.{what}"),
    }
}

/// Renames a one-group tensor name to the global index of its tensor.
fn global_name(name: &str, params: &[usize]) -> Option<String> {
    let (j, what) = parse_tensor_name(name)?;
    Some(tensor_name(*params.get(j)?, what))
}

/// The file of several groups: each group's tensors as its one-group file
/// has them, under the tensors' global indices; `param_groups` every
/// group's entry; `wgpu_optim` the first group's with the global lengths
/// and each group's `step` and `buffer_filled` in `groups`.
pub(super) fn to_tensors(
    ckpt: &Checkpoint,
) -> Result<(Vec<Tensor<'static>>, HashMap<String, String>)> {
    let mut tensors = Vec::new();
    let mut param_groups = Vec::new();
    let mut metadata = HashMap::new();
    for (g, group) in ckpt.groups.iter().enumerate() {
        let part = ckpt.part(g)?;
        let (ts, meta) = part.to_tensors();
        for t in ts {
            let name = global_name(&t.name, &group.params).expect("a one-group tensor name");
            tensors.push(t.into_owned(name));
        }
        let mut entry: Value = serde_json::from_str(&meta["param_groups"]).expect("our JSON");
        entry[0]["params"] = Value::from(group.params.clone());
        param_groups.push(entry[0].take());
        if g == 0 {
            metadata = meta;
        }
    }
    let mut extra: Value = serde_json::from_str(&metadata["wgpu_optim"]).expect("our JSON");
    extra["lengths"] = Value::from(ckpt.lengths.clone());
    extra["groups"] = Value::Array(
        ckpt.group_state
            .iter()
            .map(|s| json!({"step": s.step, "buffer_filled": s.buffer_filled}))
            .collect(),
    );
    metadata.insert("wgpu_optim".into(), extra.to_string());
    metadata.insert(
        "param_groups".into(),
        Value::Array(param_groups).to_string(),
    );
    Ok((tensors, metadata))
}

/// Reads a file of several groups (`param_groups` with more than one
/// entry): each group's tensors taken out as a one-group file of their
/// own and read as one, then put together.
pub(super) fn from_bytes(
    st: &SafeTensors<'_>,
    meta: &HashMap<String, String>,
    groups: &[Value],
) -> Result<Checkpoint> {
    let bad = |m: String| Error::Checkpoint(m);
    let mut params: Vec<Vec<usize>> = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let list = group
            .get("params")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("param_groups[{g}].params is missing or not a list")))?;
        params.push(
            list.iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| usize::try_from(x).ok())
                        .ok_or_else(|| {
                            bad(format!(
                                "param_groups[{g}].params: {v} is not a tensor index"
                            ))
                        })
                })
                .collect::<Result<_>>()?,
        );
    }
    let n_tensors: usize = params.iter().map(Vec::len).sum();
    let mut owner = vec![None; n_tensors];
    for (g, list) in params.iter().enumerate() {
        for &i in list {
            match owner.get_mut(i) {
                None => {
                    return Err(bad(format!(
                        "param_groups[{g}].params: index {i} out of range for {n_tensors} tensors"
                    )))
                }
                Some(Some(other)) => {
                    return Err(bad(format!(
                        "tensor {i} is in param_groups[{other}] and param_groups[{g}]"
                    )))
                }
                Some(slot) => *slot = Some(g),
            }
        }
    }
    let extra = wgpu_optim_metadata(meta)?;
    let counters = match extra.as_ref().and_then(|m| m.get("groups")) {
        None => None,
        Some(Value::Array(a)) if a.len() == groups.len() => Some(a.clone()),
        Some(v) => {
            return Err(bad(format!(
                "wgpu_optim.groups: {v} is not a list of {} groups",
                groups.len()
            )))
        }
    };
    let lengths = match extra.as_ref().and_then(|m| m.get("lengths")) {
        None => None,
        Some(Value::Array(a)) if a.len() == n_tensors => Some(a.clone()),
        Some(v) => {
            return Err(bad(format!(
                "wgpu_optim.lengths: {v} is not a list of {n_tensors} lengths"
            )))
        }
    };
    // Every tensor belongs to one group's file.
    let mut by_group: Vec<Vec<(String, safetensors::tensor::TensorView<'_>)>> =
        vec![Vec::new(); groups.len()];
    let mut local = vec![0usize; n_tensors];
    for list in &params {
        for (j, &i) in list.iter().enumerate() {
            local[i] = j;
        }
    }
    for (name, t) in st.tensors() {
        let Some((i, what)) = parse_tensor_name(&name).filter(|(i, _)| *i < n_tensors) else {
            return Err(bad(format!(
                "unexpected tensor `{name}` ({n_tensors} tensors in the groups)"
            )));
        };
        let renamed = tensor_name(local[i], what);
        by_group[owner[i].expect("every index is owned")].push((renamed, t));
    }
    let mut parts = Vec::with_capacity(groups.len());
    for (g, tensors) in by_group.into_iter().enumerate() {
        let mut entry = groups[g].clone();
        entry["params"] = Value::from((0..params[g].len()).collect::<Vec<_>>());
        let mut sub_meta = HashMap::from([
            (
                "param_groups".to_string(),
                Value::Array(vec![entry]).to_string(),
            ),
            (
                "rule".to_string(),
                meta.get("rule").cloned().unwrap_or_default(),
            ),
        ]);
        if let Some(f) = meta.get("format") {
            sub_meta.insert("format".into(), f.clone());
        }
        if let Some(extra) = &extra {
            let mut e = extra.clone();
            e.remove("groups");
            e.remove("step");
            e.remove("buffer_filled");
            if let Some(l) = &lengths {
                e.insert(
                    "lengths".into(),
                    Value::Array(params[g].iter().map(|&i| l[i].clone()).collect()),
                );
            }
            if let Some(c) = &counters {
                for key in ["step", "buffer_filled"] {
                    if let Some(v) = c[g].get(key) {
                        e.insert(key.into(), v.clone());
                    }
                }
            }
            sub_meta.insert("wgpu_optim".into(), Value::Object(e).to_string());
        }
        let tensors: Vec<Tensor<'_>> = tensors
            .into_iter()
            .map(|(name, t)| Tensor {
                name,
                shape: t.shape().to_vec(),
                data: Data::Raw(dtype_name(t.dtype()), t.data().to_vec()),
            })
            .collect();
        let mut bytes = Vec::new();
        write_safetensors(&mut bytes, &tensors, sub_meta)
            .map_err(|e| bad(format!("param_groups[{g}]: {e}")))?;
        let part = Checkpoint::from_bytes(&bytes).map_err(|e| match e {
            Error::Checkpoint(m) => bad(format!("param_groups[{g}]: {m}")),
            e => e,
        })?;
        parts.push(part);
    }
    assemble(params, parts)
}

/// safetensors' name of a dtype, as its header spells it.
fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// One checkpoint of the groups' one-group checkpoints (`parts[g]` over
/// the tensors `params[g]`, in that order), checked.
pub(super) fn assemble(params: Vec<Vec<usize>>, parts: Vec<Checkpoint>) -> Result<Checkpoint> {
    let bad = |m: String| Error::Checkpoint(m);
    let n_tensors: usize = params.iter().map(Vec::len).sum();
    let mut lengths = vec![0usize; n_tensors];
    for (list, part) in params.iter().zip(&parts) {
        for (&i, &len) in list.iter().zip(&part.lengths) {
            lengths[i] = len;
        }
    }
    let layout = crate::Layout::new(&lengths)?;
    let names = union_names(
        &parts
            .iter()
            .map(|p| p.state.iter().map(|(n, _)| n.clone()).collect())
            .collect::<Vec<Vec<String>>>(),
    );
    let total = layout.total();
    let mut state: Vec<(String, Vec<f32>)> = names
        .iter()
        .map(|n| (n.clone(), vec![0.0; total]))
        .collect();
    let with_params = parts.iter().filter(|p| p.params.is_some()).count();
    if with_params != 0 && with_params != parts.len() {
        return Err(bad(
            "some groups carry their parameters and some do not".into()
        ));
    }
    let mut flat_params = (with_params != 0).then(|| vec![0.0; total]);
    for (list, part) in params.iter().zip(&parts) {
        let part_layout = crate::Layout::new(&part.lengths)?;
        for (j, &i) in list.iter().enumerate() {
            for (name, values) in &part.state {
                let (_, dst) = state
                    .iter_mut()
                    .find(|(n, _)| n == name)
                    .expect("the union has every name");
                dst[layout.range(i)].copy_from_slice(&values[part_layout.range(j)]);
            }
            if let (Some(dst), Some(src)) = (&mut flat_params, &part.params) {
                dst[layout.range(i)].copy_from_slice(&src[part_layout.range(j)]);
            }
        }
    }
    let first = &parts[0];
    let ckpt = Checkpoint {
        config: first.config.clone(),
        lengths,
        step: first.step,
        buffer_filled: first.buffer_filled,
        state,
        scalar_state: first.scalar_state.clone(),
        params: flat_params,
        clip: first.clip,
        skip_nonfinite: first.skip_nonfinite,
        skipped_steps: first.skipped_steps,
        grad_scale: first.grad_scale,
        scheduler: first.scheduler.clone(),
        groups: params
            .iter()
            .zip(&parts)
            .map(|(list, p)| crate::ParamGroup::new(p.config.clone(), list.clone()))
            .collect(),
        group_state: parts
            .iter()
            .map(|p| GroupState {
                step: p.step,
                buffer_filled: p.buffer_filled,
                scalar_state: p.scalar_state.clone(),
                state_names: p.state.iter().map(|(n, _)| n.clone()).collect(),
            })
            .collect(),
        shapes: Vec::new(),
        precision: first.precision,
        master_params: None,
        quantized: Vec::new(),
    };
    ckpt.validate()?;
    Ok(ckpt)
}
