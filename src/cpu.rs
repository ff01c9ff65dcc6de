//! The CPU optimizer: every rule over host slices.

use crate::clip::{total_norm, ClipGradNorm};
use crate::error::{Error, Result};
use crate::layout::{Counters, Layout};
use crate::rules::{cpu_step, lamb, Config, StepScalars};

/// An optimizer whose parameters and state live in host memory.
///
/// It is the test oracle of the GPU kernels (it applies the same per-element
/// functions, written to match each rule's equations) and a backend in its
/// own right: steps run on all cores.
///
/// ```
/// use wgpu_optim::{Adam, CpuOptimizer};
/// let w = vec![1.0f32, -2.0, 3.0];
/// let b = vec![0.5f32];
/// let mut opt = CpuOptimizer::new(Adam::default(), &[&w, &b])?;
/// opt.step(&[&[0.1, 0.2, -0.3], &[1.0]])?;
/// // Adam's first step moves every element by about lr = 1e-3.
/// assert!((opt.param(0)[0] - (1.0 - 1e-3)).abs() < 1e-6);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    config: Config,
    layout: Layout,
    params: Vec<f32>,
    state_names: Vec<&'static str>,
    state: Vec<Vec<f32>>,
    counters: Counters,
    clip: Option<ClipGradNorm>,
    last_grad_norm: Option<f32>,
}

impl CpuOptimizer {
    /// An optimizer over copies of these parameter tensors, with fresh state.
    pub fn new(config: impl Into<Config>, params: &[&[f32]]) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let layout = Layout::of(params);
        let flat: Vec<f32> = params.iter().flat_map(|t| t.iter().copied()).collect();
        let state_names = config.state_names();
        let state = state_names
            .iter()
            .map(|name| vec![config.state_initial_value(name); layout.total()])
            .collect();
        Ok(CpuOptimizer {
            config,
            layout,
            params: flat,
            state_names,
            state,
            counters: Counters::default(),
            clip: None,
            last_grad_norm: None,
        })
    }

    /// One step with one gradient per parameter tensor. Checks every length
    /// first: on error nothing changes.
    pub fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.layout.check(grads)?;
        if grads.len() == 1 {
            return self.step_flat(grads[0]);
        }
        let flat: Vec<f32> = grads.iter().flat_map(|t| t.iter().copied()).collect();
        self.step_flat(&flat)
    }

    /// One step with the gradients packed as the parameters are (see [`Layout`]).
    pub fn step_flat(&mut self, grads: &[f32]) -> Result<()> {
        self.layout.check_flat(grads)?;
        let mut scale = None;
        if let Some(clip) = self.clip {
            let norm = total_norm(grads);
            if clip.error_if_nonfinite && !norm.is_finite() {
                return Err(Error::NonFiniteGradNorm { norm: norm as f64 });
            }
            self.last_grad_norm = Some(norm);
            scale = Some(clip.scale(norm));
        }
        let scalars =
            self.config
                .step_scalars(self.counters.step + 1, self.counters.buffer_filled, 0);
        if let (StepScalars::Lamb(s), Config::Lamb(c)) = (&scalars, &self.config) {
            lamb::cpu_step(
                s,
                c,
                &self.layout,
                &mut self.params,
                grads,
                &mut self.state,
                scale,
            );
        } else {
            // PyTorch multiplies the gradients by the clip coefficient (f32)
            // before the step; the GPU does the same inside its kernel.
            let scaled: Vec<f32>;
            let grads = match scale {
                Some(k) => {
                    use rayon::prelude::*;
                    scaled = grads.par_iter().map(|&g| g * k).collect();
                    &scaled
                }
                None => grads,
            };
            cpu_step(
                &scalars,
                &self.config,
                &mut self.params,
                grads,
                &mut self.state,
            );
        }
        self.counters.advance(&self.config);
        Ok(())
    }

    /// Turns global-norm gradient clipping on (`Some`) or off (`None`) from
    /// the next step on ([`ClipGradNorm`]).
    pub fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
        if let Some(c) = clip {
            c.validate()?;
        }
        self.clip = clip;
        Ok(())
    }

    /// The clipping in force.
    pub fn clip_grad_norm(&self) -> Option<ClipGradNorm> {
        self.clip
    }

    /// The total gradient norm of the last step, before clipping; `None`
    /// while clipping is off.
    pub fn last_grad_norm(&self) -> Option<f32> {
        self.last_grad_norm
    }

    /// The rule and hyperparameters in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How the tensors are packed.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.counters.step
    }

    /// Sets the learning rate used from the next step on.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.config.set_lr(lr)
    }

    /// Sets the momentum (SGD, RMSprop) or `beta1` (Adam, AdamW) used from
    /// the next step on.
    pub fn set_momentum(&mut self, momentum: f64) -> Result<()> {
        let has_buffer = self.state_names.contains(&"momentum_buffer");
        self.config.set_momentum(momentum, has_buffer)
    }

    /// Parameter tensor `i`.
    pub fn param(&self, i: usize) -> &[f32] {
        &self.params[self.layout.range(i)]
    }

    /// All parameters, one slice per tensor.
    pub fn params(&self) -> Vec<&[f32]> {
        self.layout.split(&self.params)
    }

    /// All parameters, packed.
    pub fn params_flat(&self) -> &[f32] {
        &self.params
    }

    /// Names of the state tensors, as PyTorch names them.
    pub fn state_names(&self) -> &[&'static str] {
        &self.state_names
    }

    /// The state tensor `name` (`exp_avg`, `momentum_buffer`, ...), packed as
    /// the parameters are.
    pub fn state_flat(&self, name: &str) -> Result<&[f32]> {
        let i = state_index(&self.config, &self.state_names, name)?;
        Ok(&self.state[i])
    }

    /// The state tensor `name`, one slice per parameter tensor.
    pub fn state(&self, name: &str) -> Result<Vec<&[f32]>> {
        Ok(self.layout.split(self.state_flat(name)?))
    }
}

pub(crate) fn state_index(config: &Config, names: &[&'static str], name: &str) -> Result<usize> {
    names
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| Error::UnknownState {
            rule: config.kind().name(),
            name: name.to_string(),
            available: names.join(", "),
        })
}
