//! Reading a case file: its tensors by name and its `case` metadata.

use super::*;

/// Where a tensor of a case file goes.
enum TensorName {
    Init(usize),
    Grad(usize, usize),
    ExpectedParam(usize),
    ExpectedState(String, usize),
    TorchParam(usize),
    TorchState(String, usize),
}

fn parse_tensor_name(name: &str) -> Option<TensorName> {
    let index = |s: &str| s.parse::<usize>().ok();
    // `{state}.{t}`: the state name itself has no dot.
    let state = |s: &str| -> Option<(String, usize)> {
        let (n, t) = s.rsplit_once('.')?;
        if n.is_empty() || n.contains('.') {
            return None;
        }
        Some((n.to_string(), index(t)?))
    };
    if let Some(rest) = name.strip_prefix("init.") {
        return index(rest).map(TensorName::Init);
    }
    if let Some(rest) = name.strip_prefix("grad.") {
        let (s, t) = rest.split_once('.')?;
        return Some(TensorName::Grad(index(s)?, index(t)?));
    }
    if let Some(rest) = name.strip_prefix("expected.param.") {
        return index(rest).map(TensorName::ExpectedParam);
    }
    if let Some(rest) = name.strip_prefix("expected.state.") {
        return state(rest).map(|(n, t)| TensorName::ExpectedState(n, t));
    }
    if let Some(rest) = name.strip_prefix("torch_f32.param.") {
        return index(rest).map(TensorName::TorchParam);
    }
    if let Some(rest) = name.strip_prefix("torch_f32.state.") {
        return state(rest).map(|(n, t)| TensorName::TorchState(n, t));
    }
    None
}

fn read_f32(
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<Vec<f32>, String> {
    if view.dtype() != Dtype::F32 {
        return Err(format!(
            "tensor `{name}` is {:?}, expected F32",
            view.dtype()
        ));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn read_f64(
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<Vec<f64>, String> {
    match view.dtype() {
        Dtype::F64 => Ok(view
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect()),
        Dtype::F32 => read_f32(name, view).map(|v| v.into_iter().map(f64::from).collect()),
        other => Err(format!("tensor `{name}` is {other:?}, expected F64")),
    }
}

/// Puts tensor `t` of a `[t]` list, checking its index and length.
/// Puts tensor `t` of `name` in its slot; `scalar` says it is one number
/// per tensor (the rule's scalar state), not one per element.
fn place<T>(
    slots: &mut [Option<Vec<T>>],
    sizes: &[usize],
    name: &str,
    t: usize,
    data: Vec<T>,
    scalar: bool,
) -> std::result::Result<(), String> {
    let Some(&size) = sizes.get(t) else {
        return Err(format!(
            "tensor `{name}`: index {t} out of range (the case has {} tensors)",
            sizes.len()
        ));
    };
    let size = if scalar { 1 } else { size };
    if data.len() != size {
        return Err(format!(
            "tensor `{name}` has {} elements, but sizes[{t}] = {size}",
            data.len()
        ));
    }
    slots[t] = Some(data);
    Ok(())
}

/// All tensors `[t]` present, or the name of the first missing one.
fn complete<T>(slots: Vec<Option<Vec<T>>>, what: &str) -> std::result::Result<Vec<Vec<T>>, String> {
    slots
        .into_iter()
        .enumerate()
        .map(|(t, s)| s.ok_or_else(|| format!("tensor `{what}.{t}` is missing")))
        .collect()
}

fn get_usize(obj: &Map<String, Value>, key: &str) -> std::result::Result<usize, String> {
    let v = obj
        .get(key)
        .ok_or_else(|| format!("case key `{key}` is missing"))?;
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| format!("case key `{key}` must be a non-negative integer, got {v}"))
}

fn get_number(obj: &Map<String, Value>, key: &str) -> std::result::Result<Option<f64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("case key `{key}` must be a number, got {v}")),
    }
}

fn get_numbers(obj: &Map<String, Value>, key: &str) -> std::result::Result<Vec<f64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| format!("case key `{key}` must be a list of numbers, got {v}"))
            })
            .collect(),
        Some(v) => Err(format!(
            "case key `{key}` must be a list of numbers, got {v}"
        )),
    }
}

fn check_tolerance(what: &str, v: f64) -> std::result::Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{what} must be a finite number >= 0, got {v}"))
    }
}

pub(super) fn parse_case(bytes: &[u8], path: &Path) -> std::result::Result<Case, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("case"))
        .ok_or("no `case` key in the safetensors metadata")?;
    let meta: Value =
        serde_json::from_str(json).map_err(|e| format!("metadata `case` is not JSON: {e}"))?;
    let Value::Object(meta) = meta else {
        return Err("metadata `case` is not a JSON object".into());
    };

    // The case description.
    const KEYS: [&str; 14] = [
        "name",
        "shapes",
        "groups",
        "lr_per_step_by_group",
        "rule",
        "hyper",
        "sizes",
        "steps",
        "schedule",
        "clip_grad_norm",
        "lr_per_step",
        "momentum_per_step",
        "atol_param",
        "atol_state",
    ];
    if let Some(k) = meta
        .keys()
        .find(|k| !KEYS.contains(&k.as_str()) && !INFORMATIONAL_KEYS.contains(&k.as_str()))
    {
        return Err(format!("unknown case key `{k}`"));
    }
    let name = match meta.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(v) => {
            return Err(format!(
                "case key `name` must be a non-empty string, got {v}"
            ))
        }
        None => return Err("case key `name` is missing".into()),
    };
    let rule = match meta.get("rule") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(format!("case key `rule` must be a string, got {v}")),
        None => return Err("case key `rule` is missing".into()),
    };
    let hyper = match meta.get("hyper") {
        Some(Value::Object(h)) => h.clone(),
        None => Map::new(),
        Some(v) => return Err(format!("case key `hyper` must be an object, got {v}")),
    };
    // The reference ran with every float hyperparameter rounded to f32.
    let config = hyper_to_config(&rule, &hyper, true)?;
    let groups = parse_groups(&rule, &hyper, meta.get("groups"))?;
    let sizes: Vec<usize> = match meta.get("sizes") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| {
                        format!("case key `sizes` must be non-negative integers, got {v}")
                    })
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(v) => return Err(format!("case key `sizes` must be a list, got {v}")),
        None => return Err("case key `sizes` is missing".into()),
    };
    let shapes: Vec<crate::Shape> = match meta.get("shapes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            let shapes = a
                .iter()
                .map(|dims| {
                    crate::Shape::from_json(dims)
                        .ok_or_else(|| format!("case key `shapes`: {dims} is not a shape"))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if shapes.len() != sizes.len()
                || shapes
                    .iter()
                    .zip(&sizes)
                    .any(|(s, &n)| s.numel() != Some(n))
            {
                return Err(format!(
                    "case key `shapes` does not match `sizes` {sizes:?} (element counts, one shape per tensor)"
                ));
            }
            shapes
        }
        Some(v) => return Err(format!("case key `shapes` must be a list, got {v}")),
    };
    let steps = get_usize(&meta, "steps")?;
    let seed = meta.get("seed").and_then(Value::as_u64);
    let schedule = match meta.get("schedule") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => {
            if !matches!(s.get("kind"), Some(Value::String(_))) {
                return Err("case key `schedule` has no string `kind`".into());
            }
            Some(s.clone())
        }
        Some(v) => return Err(format!("case key `schedule` must be an object, got {v}")),
    };
    let metrics = match &schedule {
        Some(s) if s.get("kind").and_then(Value::as_str) == Some("plateau") => {
            let m = get_numbers(s, "metrics")?;
            if m.len() != steps {
                return Err(format!(
                    "schedule `plateau` has {} metrics for {steps} steps (one per step)",
                    m.len()
                ));
            }
            m
        }
        _ => Vec::new(),
    };
    let clip_grad_norm = get_number(&meta, "clip_grad_norm")?;
    let lr_per_step = get_numbers(&meta, "lr_per_step")?;
    let momentum_per_step = get_numbers(&meta, "momentum_per_step")?;
    for (key, v) in [
        ("lr_per_step", &lr_per_step),
        ("momentum_per_step", &momentum_per_step),
    ] {
        if !v.is_empty() && v.len() != steps {
            return Err(format!(
                "case key `{key}` has {} values for {steps} steps",
                v.len()
            ));
        }
    }
    let atol_param = check_tolerance(
        "case key `atol_param`",
        get_number(&meta, "atol_param")?.ok_or("case key `atol_param` is missing")?,
    )?;
    let atol_state = match meta.get("atol_state") {
        None | Some(Value::Null) => StateTolerance::PerState(BTreeMap::new()),
        Some(Value::Number(n)) => StateTolerance::All(check_tolerance(
            "case key `atol_state`",
            n.as_f64().unwrap_or(f64::NAN),
        )?),
        Some(Value::Object(m)) => StateTolerance::PerState(
            m.iter()
                .map(|(k, v)| {
                    let x = v.as_f64().ok_or_else(|| {
                        format!("case key `atol_state.{k}` must be a number, got {v}")
                    })?;
                    Ok((k.clone(), check_tolerance(&format!("`atol_state.{k}`"), x)?))
                })
                .collect::<std::result::Result<_, String>>()?,
        ),
        Some(v) => {
            return Err(format!(
                "case key `atol_state` must be a number or an object, got {v}"
            ))
        }
    };

    // The tensors. Every (step, tensor) slot below must be filled by a
    // tensor of the file, so a `steps` or `sizes` the file cannot back is
    // refused before the slots are allocated.
    let n = sizes.len();
    if n == 0 {
        return Err("case key `sizes` is empty: a case needs at least one tensor".into());
    }
    if steps.checked_mul(n).is_none_or(|slots| slots > st.len()) {
        return Err(format!(
            "case key `steps` = {steps} with {n} tensors needs {steps}·{n} gradient tensors, \
             the file has {} tensors in all",
            st.len()
        ));
    }
    let mut init: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut grads: Vec<Vec<Option<Vec<f32>>>> = vec![vec![None; n]; steps];
    let mut expected_params: Vec<Option<Vec<f64>>> = vec![None; n];
    let mut expected_state: BTreeMap<String, Vec<Option<Vec<f64>>>> = BTreeMap::new();
    let mut torch_params: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut any_torch_param = false;
    let mut torch_state: BTreeMap<String, Vec<Option<Vec<f32>>>> = BTreeMap::new();
    // NAdam's `mu_product`, ASGD's `eta` and `mu`: one number per tensor.
    let scalar_names = config
        .as_ref()
        .map_or_else(Vec::new, Config::scalar_state_names);
    let scalar = |s: &str| scalar_names.contains(&s);
    // Each state's element counts: the parameters', but for a matrix
    // rule's factored state (Adafactor's `row_var` and `col_var`).
    let state_sizes = |name: &str| -> Vec<usize> {
        match &config {
            Some(c) if c.is_matrix_rule() => sizes
                .iter()
                .enumerate()
                .map(|(t, &n)| c.state_len(name, shapes.get(t), n))
                .collect(),
            _ => sizes.clone(),
        }
    };
    let matrix_rule = config.as_ref().is_some_and(Config::is_matrix_rule);
    for (tname, view) in st.iter() {
        let kind =
            parse_tensor_name(tname).ok_or_else(|| format!("unexpected tensor `{tname}`"))?;
        match kind {
            TensorName::Init(t) => {
                place(&mut init, &sizes, tname, t, read_f32(tname, &view)?, false)?
            }
            TensorName::Grad(s, t) => {
                let step = grads.get_mut(s).ok_or_else(|| {
                    format!("tensor `{tname}`: step {s} out of range (the case has {steps} steps)")
                })?;
                place(step, &sizes, tname, t, read_f32(tname, &view)?, false)?
            }
            TensorName::ExpectedParam(t) => place(
                &mut expected_params,
                &sizes,
                tname,
                t,
                read_f64(tname, &view)?,
                false,
            )?,
            TensorName::ExpectedState(s, t) => {
                let one = scalar(&s);
                let sizes = state_sizes(&s);
                let slots = expected_state.entry(s).or_insert_with(|| vec![None; n]);
                place(slots, &sizes, tname, t, read_f64(tname, &view)?, one)?
            }
            TensorName::TorchParam(t) => {
                any_torch_param = true;
                place(
                    &mut torch_params,
                    &sizes,
                    tname,
                    t,
                    read_f32(tname, &view)?,
                    false,
                )?
            }
            TensorName::TorchState(s, t) => {
                let one = scalar(&s);
                let sizes = state_sizes(&s);
                let slots = torch_state.entry(s).or_insert_with(|| vec![None; n]);
                place(slots, &sizes, tname, t, read_f32(tname, &view)?, one)?
            }
        }
    }
    let init = complete(init, "init")?;
    let grads = grads
        .into_iter()
        .enumerate()
        .map(|(s, step)| complete(step, &format!("grad.{s}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let expected_params = complete(expected_params, "expected.param")?;
    // With groups, a state only some groups have (Adam's amsgrad in one)
    // is absent for the other groups' tensors: empty there; so is a state
    // of a matrix rule that torch keeps for only some tensors (Adafactor's
    // factors of a matrix, its variance of a vector).
    let complete_state = |v: Vec<Option<Vec<_>>>, what: &str| {
        if groups.is_empty() && !matrix_rule {
            complete(v, what)
        } else {
            Ok(v.into_iter().map(Option::unwrap_or_default).collect())
        }
    };
    let expected_state = expected_state
        .into_iter()
        .map(|(k, v)| {
            let v = complete_state(v, &format!("expected.state.{k}"))?;
            if atol_state.get(&k).is_none() {
                return Err(format!("`atol_state` has no tolerance for state `{k}`"));
            }
            Ok((k, v))
        })
        .collect::<std::result::Result<BTreeMap<_, _>, String>>()?;
    let torch_f32_params = if any_torch_param {
        Some(complete(torch_params, "torch_f32.param")?)
    } else {
        None
    };
    let torch_f32_state = torch_state
        .into_iter()
        .map(|(k, v)| {
            let v = if groups.is_empty() && !matrix_rule {
                complete(v, &format!("torch_f32.state.{k}"))?
            } else {
                v.into_iter().map(Option::unwrap_or_default).collect()
            };
            Ok((k.clone(), v))
        })
        .collect::<std::result::Result<BTreeMap<_, _>, String>>()?;

    Ok(Case {
        path: path.to_path_buf(),
        name,
        rule,
        hyper,
        config,
        sizes,
        shapes,
        steps,
        seed,
        schedule,
        metrics,
        clip_grad_norm,
        lr_per_step,
        momentum_per_step,
        atol_param,
        atol_state,
        init,
        grads,
        expected_params,
        expected_state,
        torch_f32_params,
        torch_f32_state,
        groups,
    })
}

/// The `groups` key: each group's `tensors` and the hyperparameters that
/// override `hyper` for them, as configurations (rounded to f32 as `hyper`
/// is). Absent: no groups. Whether every tensor is in exactly one group is
/// the optimizers' check.
fn parse_groups(
    rule: &str,
    hyper: &Map<String, Value>,
    groups: Option<&Value>,
) -> std::result::Result<Vec<ParamGroup>, String> {
    let groups = match groups {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(format!("case key `groups` must be a list, got {v}")),
    };
    groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let Value::Object(group) = group else {
                return Err(format!(
                    "case key `groups[{g}]` must be an object, got {group}"
                ));
            };
            let tensors = match group.get("tensors") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .and_then(|x| usize::try_from(x).ok())
                            .ok_or_else(|| format!("`groups[{g}].tensors` holds {v}"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?,
                _ => return Err(format!("`groups[{g}]` has no `tensors` list")),
            };
            let mut merged = hyper.clone();
            for (k, v) in group.iter().filter(|(k, _)| *k != "tensors") {
                merged.insert(k.clone(), v.clone());
            }
            let config = hyper_to_config(rule, &merged, true)
                .map_err(|e| format!("`groups[{g}]`: {e}"))?
                .ok_or_else(|| format!("rule `{rule}`"))?;
            Ok(ParamGroup::new(config, tensors))
        })
        .collect()
}
