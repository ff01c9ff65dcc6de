//! Parameter groups on the GPU: so far one group only. Several groups in
//! one submission (a group index per tensor and a table of per-group
//! scalars) are not written yet, and are refused with
//! [`Error::Unsupported`] rather than stepped with one group's
//! hyperparameters.

use super::{GpuContext, GpuOptimizer, GpuOptions};
use crate::error::{Error, Result};
use crate::groups::{check_group_index, check_groups, number_in_order, ParamGroup};
use crate::rules::Config;

/// The refusal of a second group.
fn several(groups: usize) -> Error {
    Error::Unsupported(format!(
        "a GPU optimizer of {groups} parameter groups (one only, so far; the CPU optimizer takes several)"
    ))
}

impl GpuOptimizer {
    /// An optimizer over parameter groups, as
    /// [`crate::CpuOptimizer::with_groups`] (the same checks, the same
    /// errors). The GPU takes one group only so far: a second is
    /// [`Error::Unsupported`], checked after the groups themselves.
    pub fn with_groups(
        ctx: &GpuContext,
        groups: &[(Config, &[&[f32]])],
        options: GpuOptions,
    ) -> Result<Self> {
        let (tensors, groups) = number_in_order(groups);
        Self::with_param_groups(ctx, &tensors, &groups, options)
    }

    /// An optimizer over `params` in the groups given by index, as
    /// [`crate::CpuOptimizer::with_param_groups`]; one group only so far
    /// (see [`GpuOptimizer::with_groups`]).
    pub fn with_param_groups(
        ctx: &GpuContext,
        params: &[&[f32]],
        groups: &[ParamGroup],
        options: GpuOptions,
    ) -> Result<Self> {
        check_groups(groups, params.len())?;
        if groups.len() > 1 {
            return Err(several(groups.len()));
        }
        Self::with_options(ctx, groups[0].config.clone(), params, options)
    }

    /// torch's `add_param_group`: not supported on the GPU yet
    /// ([`Error::Unsupported`] once the configuration is checked, nothing
    /// changed).
    pub fn add_param_group(
        &mut self,
        config: impl Into<Config>,
        _params: &[&[f32]],
    ) -> Result<usize> {
        let config = config.into();
        let first = ParamGroup::new(self.config.clone(), Vec::new());
        crate::groups::check_kind(&first, 1, &config)?;
        config.validate()?;
        Err(several(2))
    }

    /// Number of parameter groups (1, so far).
    pub fn group_count(&self) -> usize {
        1
    }

    /// The parameter groups: each one's tensor indices and configuration in
    /// force.
    pub fn groups(&self) -> Vec<ParamGroup> {
        vec![ParamGroup::new(
            self.config.clone(),
            (0..self.layout.len()).collect(),
        )]
    }

    /// Group `g`'s configuration in force ([`Error::NoSuchGroup`] past the last).
    pub fn group_config(&self, g: usize) -> Result<&Config> {
        check_group_index(g, 1)?;
        Ok(&self.config)
    }

    /// Sets group `g`'s learning rate from the next step on.
    pub fn set_group_lr(&mut self, g: usize, lr: f64) -> Result<()> {
        check_group_index(g, 1)?;
        self.set_lr(lr)
    }

    /// Sets group `g`'s momentum (or `beta1`) from the next step on.
    pub fn set_group_momentum(&mut self, g: usize, momentum: f64) -> Result<()> {
        check_group_index(g, 1)?;
        self.set_momentum(momentum)
    }
}
