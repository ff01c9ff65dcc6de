//! Parameter groups on the GPU. The tensors stay packed as on the
//! one-group path; each chunk's tensors are cut into tiles, each tile
//! tagged with its tensor's group, and the grouped kernel
//! (`shaders/groups.wgsl`) steps every tile with its group's scalars and
//! options from a table of per-group entries in the uniforms: every group
//! steps in the same dispatches as one group would.

use super::chunks::{ChunkRange, Tiling};
use super::kernels::{pick_width, rule_options, Variant};
use super::optimizer::{GpuOptimizer, GpuOptions};
use super::resources::Storage;
use super::GpuContext;
use crate::checkpoint::union_names;
use crate::error::{Error, Result};
use crate::groups::{check_fits, check_group_index, check_groups, number_in_order, ParamGroup};
use crate::layout::{Counters, Layout};
use crate::rules::Config;

/// What an optimizer over several parameter groups keeps besides the
/// one-group optimizer's fields. Group 0's configuration and scalar state
/// are also the optimizer's own `config` and `scalar_state`.
pub(super) struct GpuGroups {
    /// Each group's tensors and configuration in force.
    pub(super) groups: Vec<ParamGroup>,
    /// Whether each group's state has a momentum buffer.
    pub(super) momentum_buffer: Vec<bool>,
    /// Each group's scalar state after its own steps.
    pub(super) scalar_state: Vec<Vec<f64>>,
    /// Steps each group has not taken of the optimizer's `counters.step`
    /// (a group added by `add_param_group` starts at 0, as in torch).
    pub(super) behind: Vec<u64>,
    /// SGD: each group's momentum buffer has been filled (without
    /// `skip_nonfinite`; with it the GPU's counters know).
    pub(super) filled: Vec<bool>,
    /// Per chunk: the grouped kernel's tile table, (start in the chunk,
    /// length, group, 0) in units of the vector width.
    pub(super) tables: Vec<wgpu::Buffer>,
    /// Tiles of each chunk's table.
    pub(super) tiles: Vec<u32>,
}

impl GpuGroups {
    /// Group `g`'s (steps, momentum buffer filled) when the optimizer's are
    /// `counters`; `skipping`: the GPU's counters decide the buffer.
    pub(super) fn counters(&self, g: usize, counters: Counters, skipping: bool) -> Counters {
        let fills = self.groups[g].config.fills_buffer_on_first_use();
        Counters {
            step: counters.step - self.behind[g],
            buffer_filled: self.filled[g] || (skipping && counters.buffer_filled && fills),
        }
    }

    /// Whether some group has taken fewer steps than the optimizer.
    pub(super) fn any_behind(&self) -> bool {
        self.behind.iter().any(|&b| b > 0)
    }

    /// Group `g`'s state tensors, as torch names them.
    pub(super) fn state_names(&self, g: usize) -> Vec<&'static str> {
        self.groups[g]
            .config
            .state_names_with(self.momentum_buffer[g])
    }

    /// Group `g`'s option word: bit `k` the value of the rule file's
    /// option `k` ([`rule_options`]) for its configuration.
    pub(super) fn option_bits(&self, g: usize) -> u32 {
        let config = &self.groups[g].config;
        let set = config.overrides(self.momentum_buffer[g]);
        // Checked when the kernel was built (grouped_body).
        let options = rule_options(config.kernel().source).unwrap_or_default();
        options
            .iter()
            .enumerate()
            .map(|(k, (name, default))| {
                let on = set
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(*default, |(_, v)| *v != 0.0);
                (on as u32) << k
            })
            .sum()
    }
}

/// The state tensors of all groups, in the order the CPU optimizer keeps
/// them ([`union_names`]).
fn union_state_names(names: &[Vec<&'static str>]) -> Vec<&'static str> {
    union_names(names)
        .iter()
        .filter_map(|n| names.iter().flatten().find(|m| **m == n.as_str()).copied())
        .collect()
}

/// What an optimizer over several groups is built with, worked out from
/// the groups before anything is made.
pub(super) struct GroupPlan {
    momentum_buffer: Vec<bool>,
    /// The union of the groups' state tensors.
    pub(super) state_names: Vec<&'static str>,
    /// The grouped kernel's variant.
    pub(super) variant: Variant,
}

/// What a grouped kernel over packed tensors needs for `vec4` loads.
const PACKED_NEEDS: &str =
    "over parameter groups needs every tensor's length to be a multiple of 4";

/// Whether every tensor of `layout` is a whole number of `vec4`s long.
fn lengths_in_fours(layout: &Layout) -> bool {
    layout.lengths().iter().all(|n| n.is_multiple_of(4))
}

impl GroupPlan {
    /// Refuses what several groups do not take on the GPU, and picks the
    /// vector width: 4 when the tensors are `aligned` (every tile starts
    /// and ends at a whole `vec4`), `needs` saying what that takes.
    pub(super) fn new(
        groups: &[ParamGroup],
        aligned: bool,
        needs: &str,
        options: &GpuOptions,
    ) -> Result<Self> {
        let first = &groups[0].config;
        if first.is_matrix_rule() {
            return Err(Error::Unsupported(format!(
                "{} over several parameter groups on the GPU (the matrix rules take one group)",
                first.kind().name()
            )));
        }
        if first.kernel().is_tiled() {
            return Err(Error::Unsupported(format!(
                "{} over several parameter groups on the GPU (its tile kernels take one group)",
                first.kind().name()
            )));
        }
        let width = pick_width(options.vector_width, aligned, needs)?;
        let momentum_buffer: Vec<bool> = groups
            .iter()
            .map(|g| g.config.builds_momentum_buffer())
            .collect();
        let names: Vec<Vec<&'static str>> = groups
            .iter()
            .zip(&momentum_buffer)
            .map(|(g, &m)| g.config.state_names_with(m))
            .collect();
        let n_groups = u32::try_from(groups.len()).map_err(|_| Error::SizeOverflow {
            what: "the number of parameter groups",
            ty: "u32",
            detail: format!("{} groups", groups.len()),
        })?;
        Ok(GroupPlan {
            momentum_buffer,
            state_names: union_state_names(&names),
            variant: Variant {
                groups: n_groups,
                ..super::kernels::variant(width, options)?
            },
        })
    }
}

impl GpuOptimizer {
    /// An optimizer over parameter groups, as
    /// [`crate::CpuOptimizer::with_groups`] (the same checks, the same
    /// errors): group `g`'s tensors are `groups[g].1`, numbered in group
    /// order.
    pub fn with_groups(
        ctx: &GpuContext,
        groups: &[(Config, &[&[f32]])],
        options: GpuOptions,
    ) -> Result<Self> {
        let (tensors, groups) = number_in_order(groups);
        Self::with_param_groups(ctx, &tensors, &groups, options)
    }

    /// An optimizer over `params` in the groups given by index, as
    /// [`crate::CpuOptimizer::with_param_groups`]: each group with its own
    /// hyperparameters and options of one rule (learning rate, betas,
    /// weight decay, `amsgrad`, `nesterov`, `centered`, ...). Every group
    /// steps in the same dispatches (a tile table tags each piece of
    /// tensor with its group, and the uniforms hold each group's scalars):
    /// [`GpuOptimizer::dispatches_per_step`] does not grow with the
    /// groups. A state that only some groups have (`max_exp_avg_sq` of an
    /// `amsgrad` group) is allocated over every tensor and stays 0 in the
    /// others, as on the CPU.
    ///
    /// Several groups take the element-wise rules on the optimizer's own
    /// packed buffers. Not supported, [`Error::Unsupported`] after the
    /// groups are checked: LAMB (its tile kernels), the matrix rules,
    /// [`GpuOptimizer::add_param_group`] after construction, the
    /// schedule-free eval mode, and `skip_nonfinite` for the rules with
    /// scalar state (NAdam, ASGD, schedule-free). Groups past what one
    /// uniform binding holds (about 110 under WebGPU's default limits) are
    /// [`Error::DeviceLimit`]. The kernels load `vec4<f32>`s when every
    /// tensor's length is a multiple of 4, scalars otherwise.
    pub fn with_param_groups(
        ctx: &GpuContext,
        params: &[&[f32]],
        groups: &[ParamGroup],
        options: GpuOptions,
    ) -> Result<Self> {
        check_groups(groups, params.len())?;
        if groups.len() == 1 {
            return Self::with_options(ctx, groups[0].config.clone(), params, options);
        }
        let layout = Layout::of(params)?;
        let plan = GroupPlan::new(groups, lengths_in_fours(&layout), PACKED_NEEDS, &options)?;
        let mut opt = Self::with_layout(
            ctx,
            groups[0].config.clone(),
            false,
            plan.state_names.clone(),
            params,
            layout,
            plan.variant,
            &options,
        )?;
        opt.attach_groups(groups, plan)?;
        Ok(opt)
    }

    /// As [`GpuOptimizer::from_buffers_with_options`] over parameter
    /// groups, as [`GpuOptimizer::with_param_groups`] has them: the
    /// caller's packed buffers stepped in place, each group with its own
    /// hyperparameters, every group in the same dispatches.
    pub fn from_buffers_with_groups(
        ctx: &GpuContext,
        lengths: &[usize],
        params: wgpu::Buffer,
        grads: wgpu::Buffer,
        groups: &[ParamGroup],
        options: GpuOptions,
    ) -> Result<Self> {
        check_groups(groups, lengths.len())?;
        if groups.len() == 1 {
            let config = groups[0].config.clone();
            return Self::from_buffers_with_options(ctx, config, lengths, params, grads, options);
        }
        let layout = Layout::new(lengths)?;
        let plan = GroupPlan::new(groups, lengths_in_fours(&layout), PACKED_NEEDS, &options)?;
        let mut opt = Self::caller_buffers(
            ctx,
            groups[0].config.clone(),
            false,
            plan.state_names.clone(),
            layout,
            params,
            grads,
            Some(plan.variant),
            &options,
        )?;
        opt.attach_groups(groups, plan)?;
        Ok(opt)
    }

    /// Makes the group tables (on views the view plan has them), keeps the
    /// groups, and binds the grouped kernel; fills each group's initial
    /// state.
    pub(super) fn attach_groups(&mut self, groups: &[ParamGroup], plan: GroupPlan) -> Result<()> {
        let tables = match self.views {
            Some(_) => Vec::new(),
            None => {
                let group_of = group_of(groups, self.layout.len());
                group_tables(&self.layout, &self.chunks, &group_of, plan.variant.width)?
            }
        };
        let ctx = self.ctx.clone();
        let (buffers, tiles) = ctx.scoped("creating the group tile tables", || {
            let mut buffers = Vec::with_capacity(tables.len());
            let mut tiles = Vec::with_capacity(tables.len());
            for table in &tables {
                let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("group tiles"),
                    size: (table.len().max(1) * 16) as u64,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(table));
                buffers.push(b);
                tiles.push(table.len() as u32);
            }
            (buffers, tiles)
        })?;
        self.groups = Some(GpuGroups {
            groups: groups.to_vec(),
            momentum_buffer: plan.momentum_buffer,
            scalar_state: groups
                .iter()
                .map(|g| g.config.scalar_state_initial())
                .collect(),
            behind: vec![0; groups.len()],
            filled: vec![false; groups.len()],
            tables: buffers,
            tiles,
        });
        self.attach_rule_groups()?;
        self.fill_group_initial_state()
    }

    /// Writes each state tensor's initial values where a group's
    /// configuration starts it elsewhere than group 0's (Adagrad's
    /// `initial_accumulator_value`, Rprop's `step_size` from each group's
    /// lr): the buffers were filled with group 0's.
    fn fill_group_initial_state(&mut self) -> Result<()> {
        let Some(groups) = &self.groups else {
            return Ok(());
        };
        let ctx = self.ctx.clone();
        for (i, name) in self.state_names.iter().enumerate() {
            let first = self.config.state_initial_value(name);
            let own = |g: usize| {
                let has = groups.state_names(g).contains(name);
                if has {
                    groups.groups[g].config.state_initial_value(name)
                } else {
                    0.0
                }
            };
            if (0..groups.groups.len()).all(|g| own(g) == first) {
                continue;
            }
            let mut flat = vec![0.0f32; self.layout.total()];
            for (g, group) in groups.groups.iter().enumerate() {
                let v = own(g);
                for &t in &group.params {
                    flat[self.layout.range(t)].fill(v);
                }
            }
            let storage = Storage::Owned(self.buffers.state[i].clone());
            ctx.scoped("filling the groups' initial state", || {
                self.write_storage_tensors(&storage, &self.layout.split_unchecked(&flat))
            })?;
        }
        Ok(())
    }

    /// torch's `add_param_group`: appends a group of new tensors with its
    /// configuration, as [`crate::CpuOptimizer::add_param_group`] does;
    /// they take the next tensor indices and start with fresh state and a
    /// step count of 0 while the other groups go on. Returns the group's
    /// index. The optimizer is rebuilt around the new tensors (its
    /// parameters and state read back and written into new buffers: this
    /// waits for the GPU), so keep the [`GpuOptimizer::param_buffers`]
    /// of before no longer.
    ///
    /// Checked first, nothing changed on error: a configuration of another
    /// rule ([`Error::GroupRuleMismatch`]) or an invalid one; no tensors
    /// ([`Error::EmptyParameterList`]). Not supported
    /// ([`Error::Unsupported`]): an optimizer over the caller's buffers or
    /// views (they cannot grow), LAMB, the matrix rules, with
    /// `skip_nonfinite` on (the GPU's counters are one for all groups) or
    /// in the schedule-free eval mode.
    pub fn add_param_group(
        &mut self,
        config: impl Into<Config>,
        params: &[&[f32]],
    ) -> Result<usize> {
        let config = config.into();
        let first = ParamGroup::new(self.config.clone(), Vec::new());
        let g = self.group_count();
        crate::groups::check_kind(&first, g, &config)?;
        config.validate()?;
        if params.is_empty() {
            return Err(Error::EmptyParameterList);
        }
        let refuse = |why: &str| Err(Error::Unsupported(format!("add_param_group {why}")));
        if !matches!(self.params, Storage::Owned(_)) || self.views.is_some() {
            return refuse("on an optimizer over the caller's buffers (they cannot grow)");
        }
        if self.skip.is_some() {
            return refuse("with skip_nonfinite on (the GPU counts one step for all groups)");
        }
        self.check_train_mode()?;
        let n = self.layout.len();
        let mut groups = self.groups();
        groups.push(ParamGroup::new(config, (n..n + params.len()).collect()));
        let flat = self.read_params_flat()?;
        let mut all: Vec<&[f32]> = self.layout.split_unchecked(&flat);
        all.extend_from_slice(params);
        let options = GpuOptions {
            // Equal chunks but the last: the first one's length is the
            // chunk size this optimizer was built with.
            max_chunk_elements: (self.chunks.len() > 1).then(|| self.chunks[0].len),
            vector_width: None,
            skip_bounds_checks: !self.variant.bounds_checked,
        };
        let mut grown = Self::with_param_groups(&self.ctx, &all, &groups, options)?;
        // The state so far, into the old tensors' places; the new tensors
        // keep their group's initial values.
        let ctx = self.ctx.clone();
        for name in self.state_names.clone() {
            let old = self.read_state_flat(name)?;
            let mut values = grown.read_state_flat(name)?;
            values[..old.len()].copy_from_slice(&old);
            let i = grown
                .state_names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| Error::Unsupported(format!("state {name} lost")))?;
            let storage = Storage::Owned(grown.buffers.state[i].clone());
            ctx.scoped("moving the state to the grown optimizer", || {
                grown.write_storage_tensors(&storage, &grown.layout.split_unchecked(&values))
            })?;
        }
        let counters = self.counters;
        let skipping = self.skip.is_some();
        let grown_groups = grown.groups.as_mut().ok_or_else(|| {
            Error::Unsupported("add_param_group: the grown optimizer has one group".into())
        })?;
        for k in 0..g {
            let (behind, filled, state) = match &self.groups {
                Some(old) => (
                    old.behind[k],
                    old.counters(k, counters, skipping).buffer_filled,
                    old.scalar_state[k].clone(),
                ),
                None => (0, counters.buffer_filled, self.scalar_state.clone()),
            };
            grown_groups.behind[k] = behind;
            grown_groups.filled[k] = filled;
            grown_groups.scalar_state[k] = state;
        }
        grown_groups.behind[g] = counters.step;
        grown.counters = counters;
        grown.scalar_state = grown_groups.scalar_state[0].clone();
        grown.grad_scale = self.grad_scale;
        grown.inv_scale = self.inv_scale;
        grown.skipped_before = self.skipped_before;
        grown.set_clip_grad_norm(self.clip)?;
        *self = grown;
        Ok(g)
    }

    /// Number of parameter groups.
    pub fn group_count(&self) -> usize {
        self.groups.as_ref().map_or(1, |g| g.groups.len())
    }

    /// The parameter groups: each one's tensor indices and configuration in
    /// force.
    pub fn groups(&self) -> Vec<ParamGroup> {
        match &self.groups {
            Some(g) => g.groups.clone(),
            None => vec![ParamGroup::new(
                self.config.clone(),
                (0..self.layout.len()).collect(),
            )],
        }
    }

    /// Group `g`'s configuration in force ([`Error::NoSuchGroup`] past the last).
    pub fn group_config(&self, g: usize) -> Result<&Config> {
        check_group_index(g, self.group_count())?;
        Ok(match &self.groups {
            Some(groups) => &groups.groups[g].config,
            None => &self.config,
        })
    }

    /// Sets group `g`'s learning rate from the next step on.
    pub fn set_group_lr(&mut self, g: usize, lr: f64) -> Result<()> {
        self.set_groups(Some(g), |c, _| c.set_lr(lr))
    }

    /// Sets group `g`'s momentum (or `beta1`) from the next step on.
    pub fn set_group_momentum(&mut self, g: usize, momentum: f64) -> Result<()> {
        self.set_groups(Some(g), |c, has_buffer| {
            c.set_momentum(momentum, has_buffer)
        })
    }

    /// Replaces group `g`'s hyperparameters from the next step on, as
    /// [`crate::CpuOptimizer::set_group_config`]: of the optimizer's rule,
    /// valid, and keeping the group's state tensors, or nothing changes.
    pub fn set_group_config(&mut self, g: usize, config: impl Into<Config>) -> Result<()> {
        let config = config.into();
        check_group_index(g, self.group_count())?;
        let first = ParamGroup::new(self.config.clone(), Vec::new());
        crate::groups::check_kind(&first, g, &config)?;
        let (momentum_buffer, names) = match &self.groups {
            Some(groups) => (groups.momentum_buffer[g], groups.state_names(g)),
            None => (
                self.state_names.contains(&"momentum_buffer"),
                self.state_names.clone(),
            ),
        };
        check_fits(g, &config, momentum_buffer, &names)?;
        self.set_groups(Some(g), |c, _| {
            *c = config.clone();
            Ok(())
        })
    }

    /// `set` on a copy of group `g`'s configuration (every group's with
    /// `None`), then committed at once: a value one group refuses changes
    /// no group. Group 0's is also the optimizer's `config`.
    pub(super) fn set_groups(
        &mut self,
        g: Option<usize>,
        set: impl Fn(&mut Config, bool) -> Result<()>,
    ) -> Result<()> {
        let n = self.group_count();
        if let Some(g) = g {
            check_group_index(g, n)?;
        }
        let which: Vec<usize> = match g {
            Some(g) => vec![g],
            None => (0..n).collect(),
        };
        let mut changed = Vec::with_capacity(which.len());
        for &k in &which {
            let (mut config, has_buffer) = match &self.groups {
                Some(groups) => (groups.groups[k].config.clone(), groups.momentum_buffer[k]),
                None => (
                    self.config.clone(),
                    self.state_names.contains(&"momentum_buffer"),
                ),
            };
            set(&mut config, has_buffer)?;
            changed.push((k, config));
        }
        for (k, config) in changed {
            if k == 0 {
                self.config = config.clone();
            }
            if let Some(groups) = &mut self.groups {
                groups.groups[k].config = config;
            }
        }
        Ok(())
    }

    /// The refusal of what the GPU does not do over several groups yet,
    /// `what` naming it; `Ok` with one group.
    pub(super) fn check_one_group(&self, what: &str) -> Result<()> {
        match self.group_count() {
            1 => Ok(()),
            n => Err(Error::Unsupported(format!(
                "{what} on a GPU optimizer of {n} parameter groups"
            ))),
        }
    }

    /// `skip_nonfinite` over several groups needs a rule without scalar
    /// state (the step table of each count is then each group's own
    /// function of the count) and every group at the optimizer's step
    /// count (the GPU's counters are one for all).
    pub(super) fn check_skip_groups(&self) -> Result<()> {
        if self.groups.as_ref().is_some_and(GpuGroups::any_behind) {
            return self.check_one_group(
                "skip_nonfinite with a group added later (the GPU counts one step for all)",
            );
        }
        if self.group_count() > 1 && !self.config.scalar_state_names().is_empty() {
            return self.check_one_group(&format!(
                "skip_nonfinite with {} (its scalar state)",
                self.config.kind().name()
            ));
        }
        Ok(())
    }
}

/// The group of each of `tensors` tensors (checked: each in one group).
pub(super) fn group_of(groups: &[ParamGroup], tensors: usize) -> Vec<u32> {
    let mut of = vec![0u32; tensors];
    for (g, group) in groups.iter().enumerate() {
        for &t in &group.params {
            of[t] = g as u32;
        }
    }
    of
}

/// Each chunk's grouped tile table: the reductions' tiles of the chunk
/// (at most 4096 elements of one tensor each), each with its tensor's
/// group, offsets and lengths in units of `width` (every tensor a
/// multiple of `width` long, so every tile is).
fn group_tables(
    layout: &Layout,
    chunks: &[ChunkRange],
    group_of: &[u32],
    width: u32,
) -> Result<Vec<Vec<[u32; 4]>>> {
    let tiling = Tiling::new(layout, chunks)?;
    Ok(tiling
        .per_chunk
        .iter()
        .map(|tiles| {
            tiles
                .iter()
                .map(|&[start, len, tensor, _]| {
                    [start / width, len / width, group_of[tensor as usize], 0]
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::union_state_names;

    /// The union keeps the rule's order whichever group brings a name.
    #[test]
    fn union_of_state_names_keeps_the_rules_order() {
        let plain = vec!["exp_avg", "exp_avg_sq"];
        let ams = vec!["exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
        assert_eq!(
            union_state_names(&[plain.clone(), ams.clone()]),
            ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        );
        let rms = vec!["square_avg"];
        let centered = vec!["square_avg", "momentum_buffer", "grad_avg"];
        assert_eq!(
            union_state_names(&[rms, centered]),
            ["square_avg", "momentum_buffer", "grad_avg"]
        );
        assert_eq!(
            union_state_names(&[vec![], vec!["momentum_buffer"]]),
            ["momentum_buffer"]
        );
    }
}
