//! burn's per-tensor [`Optimizer`] trait over the fused kernels: the way
//! into burn's `ModuleOptimizer` and burn-train's `Learner`.

use std::sync::{Arc, Mutex};

use burn::module::ParamId;
use burn::optim::{LearningRate, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor, TensorData};
use burn_pack::Scalar;
use wgpu_optim::{
    Checkpoint, ClipGradNorm, Config, GpuContext, GpuOptimizer, GpuOptions, RuleKind,
};

use crate::{take_one, BurnGpu, Error, Stepper};

/// One of wgpu-optim's rules as burn's [`Optimizer`]: burn's
/// `ModuleOptimizer` calls it once a tensor, each call one fused step of
/// that tensor in place (its state on the GPU), at the learning rate burn
/// passes.
///
/// ```no_run
/// use burn::optim::ModuleOptimizer;
/// use wgpu_optim::AdamW;
/// use wgpu_optim_burn::{BurnGpu, FusedOptimizer};
///
/// let gpu = BurnGpu::new()?;
/// let fused = FusedOptimizer::new(&gpu, AdamW::default());
/// // What burn-train's `Learner` takes, and `optim.step(lr, model, grads)`.
/// let optim: ModuleOptimizer = fused.clone().into();
/// # Ok::<(), wgpu_optim_burn::Error>(())
/// ```
///
/// burn's trait has no way to return an error: a tensor whose step fails
/// comes back unchanged, its state too, and the error is kept for
/// [`FusedOptimizer::take_errors`] (check it after a step: a step that
/// changed nothing is not silently `Ok`). Global clipping is per tensor
/// here, as burn's own `GradientClipping` is (burn hands the trait one
/// tensor at a time); for a norm over the whole model use
/// [`crate::ModelOptimizer`].
#[derive(Clone)]
pub struct FusedOptimizer {
    ctx: GpuContext,
    config: Config,
    options: GpuOptions,
    clip: Option<ClipGradNorm>,
    skip_nonfinite: bool,
    errors: Arc<Mutex<Vec<Error>>>,
}

impl FusedOptimizer {
    /// `config`'s rule on `gpu`'s device (its `lr` is replaced by the
    /// learning rate burn passes each step).
    pub fn new(gpu: &BurnGpu, config: impl Into<Config>) -> Self {
        Self::with_options(gpu, config, GpuOptions::default())
    }

    /// As [`FusedOptimizer::new`], with wgpu-optim's [`GpuOptions`].
    pub fn with_options(gpu: &BurnGpu, config: impl Into<Config>, options: GpuOptions) -> Self {
        FusedOptimizer {
            ctx: gpu.context().clone(),
            config: config.into(),
            options,
            clip: None,
            skip_nonfinite: false,
            errors: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Clipping of each tensor's gradient to a norm (per tensor: see the
    /// type's docs).
    pub fn with_clip_grad_norm(mut self, clip: Option<ClipGradNorm>) -> crate::Result<Self> {
        if let Some(c) = &clip {
            c.validate()?;
        }
        self.clip = clip;
        Ok(self)
    }

    /// Skip a tensor's step when its gradient holds a NaN or an infinity.
    pub fn with_skip_nonfinite(mut self, skip: bool) -> Self {
        self.skip_nonfinite = skip;
        self
    }

    /// The errors of the steps that failed since the last call, oldest
    /// first (each failed tensor was left unchanged).
    pub fn take_errors(&self) -> Vec<Error> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn record(&self, e: Error) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }

    fn new_stepper(&self) -> crate::Result<Stepper> {
        let mut s = Stepper::new(self.ctx.clone(), self.config.clone(), self.options.clone());
        s.set_clip_grad_norm(self.clip)?;
        s.set_skip_nonfinite(self.skip_nonfinite)?;
        Ok(s)
    }
}

/// A tensor's optimizer state, shared by clones of it (a clone of burn's
/// `ModuleOptimizer` steps the same state).
#[derive(Clone)]
pub struct FusedState {
    inner: Arc<Mutex<TensorState>>,
}

enum TensorState {
    /// Not stepped yet since it was read from a record: applied when the
    /// next step builds the tensor's optimizer.
    Restored(Restored),
    Live(Box<Stepper>),
}

#[derive(Clone, Debug, Default)]
struct Restored {
    step: u64,
    buffer_filled: bool,
    state: Vec<(String, Vec<f32>)>,
    scalar_state: Vec<(String, f64)>,
}

impl FusedState {
    /// Steps applied to this tensor.
    pub fn step_count(&self) -> u64 {
        match &*self.lock() {
            TensorState::Restored(r) => r.step,
            TensorState::Live(s) => s.built.as_ref().map_or(0, |b| b.opt.step_count()),
        }
    }

    /// A state tensor of the rule (torch's name), read back.
    pub fn state_values(&self, name: &str) -> crate::Result<Vec<f32>> {
        match &*self.lock() {
            TensorState::Restored(r) => r
                .state
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| Error::Unsupported(format!("no state `{name}`"))),
            TensorState::Live(s) => match &s.built {
                Some(b) => Ok(b.opt.read_state_flat(name)?),
                None => Err(Error::Unsupported(format!("no state `{name}` yet"))),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TensorState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every state name a rule of wgpu-optim can have (a record names its
/// tensors; reading one back must know which names to look for).
fn all_state_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = RuleKind::ALL
        .iter()
        .flat_map(|k| k.default_config().state_names())
        .collect();
    names.push("momentum_buffer");
    names.sort_unstable();
    names.dedup();
    names
}

fn all_scalar_state_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = RuleKind::ALL
        .iter()
        .flat_map(|k| k.default_config().scalar_state_names())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

impl RecordState for FusedState {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        let restored = match &*self.lock() {
            TensorState::Restored(r) => r.clone(),
            TensorState::Live(s) => match s.built.as_ref().map(|b| b.opt.checkpoint()) {
                Some(Ok(c)) => Restored {
                    step: c.step,
                    buffer_filled: c.buffer_filled,
                    state: c.state,
                    scalar_state: c.scalar_state,
                },
                // A readback that failed leaves the record without this
                // tensor's state: burn then starts it afresh, as for a
                // parameter its record does not hold.
                _ => return,
            },
        };
        for (name, values) in restored.state {
            let n = values.len();
            out.push_tensor(prefix, &name, TensorData::new(values, [n]));
        }
        for (name, v) in restored.scalar_state {
            out.push_scalar(prefix, &name, Scalar::Float(v));
        }
        out.push_scalar(prefix, "step", Scalar::UInt(restored.step));
        out.push_scalar(
            prefix,
            "buffer_filled",
            Scalar::Bool(restored.buffer_filled),
        );
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, _device: &Device) -> Option<Self> {
        let step = match src.take_scalar(prefix, "step")? {
            Scalar::UInt(s) => s,
            _ => return None,
        };
        let buffer_filled = matches!(
            src.take_scalar(prefix, "buffer_filled"),
            Some(Scalar::Bool(true))
        );
        let mut state = Vec::new();
        for name in all_state_names() {
            if let Some(data) = src.take_tensor(prefix, name) {
                state.push((
                    name.to_string(),
                    data.convert::<f32>().try_to_vec::<f32>().ok()?,
                ));
            }
        }
        let mut scalar_state = Vec::new();
        for name in all_scalar_state_names() {
            if let Some(Scalar::Float(v)) = src.take_scalar(prefix, name) {
                scalar_state.push((name.to_string(), v));
            }
        }
        Some(FusedState {
            inner: Arc::new(Mutex::new(TensorState::Restored(Restored {
                step,
                buffer_filled,
                state,
                scalar_state,
            }))),
        })
    }
}

/// Loads a restored state into a freshly built optimizer: its own
/// checkpoint with the record's state and counters in it, so that every
/// name and length is checked as a checkpoint's are.
fn apply_restored(opt: &mut GpuOptimizer, r: &Restored) -> crate::Result<()> {
    let mut ckpt: Checkpoint = opt.checkpoint()?;
    ckpt.params = None;
    ckpt.step = r.step;
    ckpt.buffer_filled = r.buffer_filled;
    ckpt.state = r.state.clone();
    if !r.scalar_state.is_empty() {
        ckpt.scalar_state = r.scalar_state.clone();
    }
    opt.load_checkpoint(&ckpt)?;
    Ok(())
}

impl Optimizer for FusedOptimizer {
    type State<const D: usize> = FusedState;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<FusedState>,
    ) -> (Tensor<D>, Option<FusedState>) {
        // burn's trait does not pass the parameter's id; the state is the
        // tensor's own, so any id serves the helpers.
        let id = ParamId::from(0u64);
        let taken = match take_one(id, tensor, grad) {
            Ok(t) => t,
            Err(failed) => {
                let (tensor, e) = *failed;
                self.record(e);
                return (tensor, state);
            }
        };
        let state = match state {
            Some(s) => s,
            None => match self.new_stepper() {
                Ok(s) => FusedState {
                    inner: Arc::new(Mutex::new(TensorState::Live(Box::new(s)))),
                },
                Err(e) => {
                    self.record(e);
                    return (taken.tensor, None);
                }
            },
        };
        let mut guard = state.lock();
        let restored = match &*guard {
            TensorState::Restored(r) => Some(r.clone()),
            TensorState::Live(_) => None,
        };
        let mut stepper =
            match std::mem::replace(&mut *guard, TensorState::Restored(Restored::default())) {
                TensorState::Live(s) => s,
                TensorState::Restored(r) => match self.new_stepper() {
                    Ok(s) => Box::new(s),
                    Err(e) => {
                        *guard = TensorState::Restored(r);
                        drop(guard);
                        self.record(e);
                        return (taken.tensor, Some(state));
                    }
                },
            };
        let result = stepper.step(
            vec![taken.bound],
            vec![String::new()],
            vec![taken.grad],
            vec![taken.keep],
            |opt| {
                if let Some(r) = &restored {
                    apply_restored(opt, r)?;
                }
                opt.set_lr(lr)?;
                Ok(())
            },
        );
        *guard = match (&result, restored) {
            // A restored state that could not be applied stays as read.
            (Err(_), Some(r)) => TensorState::Restored(r),
            _ => TensorState::Live(stepper),
        };
        drop(guard);
        if let Err(e) = result {
            self.record(e);
        }
        (taken.tensor, Some(state))
    }

    fn to_device<const D: usize>(state: FusedState, _device: &Device) -> FusedState {
        // The state lives on the device its tensor's optimizer was built
        // on; burn moves states only when a parameter changes device,
        // which the fused step refuses (its buffers are that device's).
        state
    }
}
