//! Parameter groups, as torch's `param_groups`: one optimizer over several
//! sets of tensors, each set with its own hyperparameters of the same rule
//! (no weight decay on biases, an lr per layer, ...).

use crate::error::{Error, Result};
use crate::rules::Config;

/// One parameter group: the indices of its tensors in the optimizer's tensor
/// list (the order `step`'s gradients come in) and its hyperparameters, a
/// full [`Config`] of the optimizer's rule. torch's `param_groups[g]` with
/// `params` as indices, as torch's `state_dict` writes them.
///
/// ```
/// use wgpu_optim::{Adam, CpuOptimizer, ParamGroup};
/// let (w, b) = (vec![1.0f32; 3], vec![0.5f32]);
/// let base = Adam { weight_decay: 0.1, ..Adam::default() };
/// let groups = [
///     ParamGroup::new(base.clone(), vec![0]),
///     // No weight decay on the bias.
///     ParamGroup::new(Adam { weight_decay: 0.0, ..base }, vec![1]),
/// ];
/// let opt = CpuOptimizer::with_param_groups(&[&w, &b], &groups)?;
/// assert_eq!(opt.group_count(), 2);
/// assert_eq!(opt.group_config(1)?.lr(), 1e-3);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// The group's hyperparameters.
    pub config: Config,
    /// Indices of the group's tensors in the optimizer's tensor list.
    pub params: Vec<usize>,
}

impl ParamGroup {
    /// A group of the tensors at these indices with this configuration.
    pub fn new(config: impl Into<Config>, params: Vec<usize>) -> Self {
        ParamGroup {
            config: config.into(),
            params,
        }
    }
}

/// Checks groups over `tensors` tensors: at least one group, every group of
/// the first group's rule and valid as torch checks at construction, every
/// index in range, every tensor in exactly one group.
pub(crate) fn check_groups(groups: &[ParamGroup], tensors: usize) -> Result<()> {
    let Some(first) = groups.first() else {
        return Err(Error::EmptyParameterList);
    };
    let mut owner: Vec<Option<usize>> = vec![None; tensors];
    for (g, group) in groups.iter().enumerate() {
        check_kind(first, g, &group.config)?;
        group.config.validate()?;
        for &t in &group.params {
            let Some(slot) = owner.get_mut(t) else {
                return Err(Error::NoSuchTensor {
                    group: g,
                    tensor: t,
                    tensors,
                });
            };
            if let Some(first_group) = *slot {
                return Err(Error::TensorInTwoGroups {
                    tensor: t,
                    first: first_group,
                    second: g,
                });
            }
            *slot = Some(g);
        }
    }
    if let Some(t) = owner.iter().position(Option::is_none) {
        return Err(Error::TensorInNoGroup { tensor: t });
    }
    Ok(())
}

/// [`Error::GroupRuleMismatch`] unless `config` is of `first`'s rule.
pub(crate) fn check_kind(first: &ParamGroup, group: usize, config: &Config) -> Result<()> {
    if config.kind() != first.config.kind() {
        return Err(Error::GroupRuleMismatch {
            group,
            expected: first.config.kind().name(),
            got: config.kind().name(),
        });
    }
    Ok(())
}

/// Checks that `config` is valid for group `group`, whose state tensors are
/// `names` (with or without a `momentum_buffer`): a new configuration of a
/// group must keep the state the group was built with.
pub(crate) fn check_fits(
    group: usize,
    config: &Config,
    momentum_buffer: bool,
    names: &[&'static str],
) -> Result<()> {
    config.validate_with(momentum_buffer)?;
    let own = config.state_names_with(momentum_buffer);
    if own != names {
        return Err(Error::InvalidOptions(format!(
            "group {group} would need the state tensors [{}], it has [{}]: \
             the options that decide the state (amsgrad, ...) are fixed when a group is made",
            own.join(", "),
            names.join(", ")
        )));
    }
    Ok(())
}

/// The groups of the torch form (one tensor list and one configuration per
/// group) as index groups: tensors numbered in group order.
pub(crate) fn number_in_order<'a>(
    groups: &[(Config, &[&'a [f32]])],
) -> (Vec<&'a [f32]>, Vec<ParamGroup>) {
    let mut tensors = Vec::new();
    let mut out = Vec::with_capacity(groups.len());
    for (config, ts) in groups {
        let start = tensors.len();
        tensors.extend_from_slice(ts);
        out.push(ParamGroup {
            config: config.clone(),
            params: (start..tensors.len()).collect(),
        });
    }
    (tensors, out)
}

/// [`Error::NoSuchGroup`] unless `group < count`.
pub(crate) fn check_group_index(group: usize, count: usize) -> Result<()> {
    if group >= count {
        return Err(Error::NoSuchGroup {
            group,
            groups: count,
        });
    }
    Ok(())
}
