//! Step [burn](https://burn.dev) 0.22 models with wgpu-optim's fused
//! optimizer kernels, in place, on burn's own wgpu device.
//!
//! burn's optimizers are chains of tensor operations per parameter. Here a
//! whole model steps in one fused dispatch per pooled buffer: the
//! parameters are updated where burn's memory pool put them (as
//! [`wgpu_optim::TensorView`]s), the optimizer's state lives on the same
//! device, and every rule, global clipping, the non-finite skip and the
//! schedules of wgpu-optim apply.
//!
//! # Two ways in
//!
//! - [`ModelOptimizer`]: a whole-model step for hand-written loops,
//!   `model = opt.step(model, grads)?`, with every parameter of the module
//!   in one optimizer (global clipping over all of them, as torch's
//!   `clip_grad_norm_`; burn's `ParamGroup`s as parameter groups,
//!   [`ModelOptimizer::add_group`]), its state saved and restored as
//!   wgpu-optim's checkpoint ([`ModelOptimizer::checkpoint`]).
//! - [`FusedOptimizer`]: burn's own [`burn::optim::Optimizer`] trait, so a
//!   `ModuleOptimizer` (and through it burn-train's `Learner`) can use it.
//!   burn calls that trait one tensor at a time, so each tensor is its own
//!   fused step, and its state is a burn record (burn's checkpoints keep
//!   working).
//!
//! # The device
//!
//! [`BurnGpu::new`] brings up burn's wgpu runtime and shares its
//! `wgpu::Device` and `wgpu::Queue` with wgpu-optim ([`BurnGpu::context`]);
//! [`BurnGpu::from_setup`] takes a setup the caller already registered with
//! burn. Both sides submit on the one queue: before a step reads the
//! buffers, burn's queued work is flushed, so the step sees the gradients
//! burn computed, and burn's later work sees the stepped parameters.
//!
//! # burn's features
//!
//! burn must be built without its `fusion` feature (burn's default
//! features include it: depend on burn with `default-features = false`
//! and the features you use, as this crate does). With fusion, a tensor is
//! a handle of burn's fusion server rather than a buffer, and this crate
//! does not compile against it. Only `f32` parameters and gradients are
//! stepped; another dtype is [`Error::Unsupported`].
//!
//! # In place, and when not
//!
//! LAMB's tile kernels take no views: for LAMB the parameters are copied
//! into one packed buffer before each step and back into burn's buffers
//! after it (on the GPU, 8 bytes a parameter more). The matrix rules
//! (Adafactor, Muon) step buffers of their own, one a tensor, with burn's
//! shapes of the parameters (a `Linear`'s weight is `[d_input, d_output]`,
//! the transpose of torch's); parameters and gradients are copied in, the
//! parameters back.
//!
//! A parameter whose buffer burn shares with another tensor (a clone of the
//! module kept elsewhere, a graph still holding it) is not written over:
//! it is first copied into a buffer of its own (the step returns the module
//! with the copy; the clone keeps the old values), as burn's own
//! optimizers do when they cannot mutate. The optimizer then rebinds to the
//! new buffers, keeping its state. [`ModelOptimizer::copies`] counts the
//! parameters copied so far.

use burn::module::{Module, ModuleMapper, Param, ParamGroup as BurnParamGroup, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl_wgpu::{AutoCompiler, WgpuServer};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{
    ClipGradNorm, Config, GpuContext, GpuOptimizer, GpuOptions, GroupScheduler, ParamGroup,
    RuleKind, Schedule, Scheduler, Shape, TensorView,
};

mod fused;
pub use fused::{FusedOptimizer, FusedState};

/// What can go wrong here: wgpu-optim's errors, and burn's side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// wgpu-optim refused or failed.
    #[error(transparent)]
    Optim(#[from] wgpu_optim::Error),
    /// burn's wgpu runtime could not be brought up or shared.
    #[error("burn's wgpu runtime: {0}")]
    Init(String),
    /// A tensor is not one this crate can step (its dtype, its backend).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// burn's compute server failed (flushing its work, or handing out a
    /// tensor's buffer).
    #[error("burn's compute server: {0}")]
    Server(String),
    /// The module's parameters are not the ones the optimizer was built
    /// over (a parameter added, removed, or of another length).
    #[error("the module's parameters changed: {0}")]
    ParamsChanged(String),
}

/// A `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// burn's wgpu device and the [`GpuContext`] on the same `wgpu::Device`
/// and queue.
#[derive(Clone)]
pub struct BurnGpu {
    device: Device,
    ctx: GpuContext,
}

impl BurnGpu {
    /// Initializes burn's wgpu runtime on its default adapter and shares
    /// its device and queue. burn allows one initialization of a runtime:
    /// if burn's default wgpu device was already used or initialized, this
    /// is [`Error::Init`]; use [`BurnGpu::from_setup`] instead.
    pub fn new() -> Result<Self> {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| Error::Init(e.to_string()))?;
        Ok(Self::from_setup(device, setup))
    }

    /// burn's `device` and the setup it runs on (as
    /// `Device::wgpu_options().init_with_setup()` returns them, or the
    /// setup the caller registered with `.setup(...)`).
    pub fn from_setup(device: Device, setup: burn::tensor::wgpu::WgpuSetup) -> Self {
        let info = setup.adapter.get_info();
        let ctx = GpuContext::from_device(setup.device, setup.queue, Some(info));
        BurnGpu { device, ctx }
    }

    /// burn's device: make the model and its tensors on it.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// wgpu-optim's context on burn's device and queue.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }
}

/// burn's cubecl tensor behind a float tensor of burn's wgpu backend
/// (autodiff stripped: the caller keeps what it needs to put it back).
fn cube_of<const D: usize>(tensor: Tensor<D>) -> Result<CubeTensor> {
    tensor
        .inner()
        .try_into_primitive::<CubeBackend>()
        .map_err(|e| Error::Unsupported(format!("a tensor not on burn's wgpu backend: {e:?}")))
}

/// The wgpu buffer and byte offset of a cubecl tensor, after burn's queued
/// work on it was executed.
fn resource_of(cube: &CubeTensor) -> Result<(wgpu::Buffer, u64)> {
    let res = cube
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(cube.handle.clone())
        .map_err(|e| Error::Server(format!("{e:?}")))?;
    let r = res.resource();
    Ok((r.buffer.clone(), r.offset))
}

/// Checks what the fused kernels need of a tensor: f32, dense, row-major.
fn check_dense(cube: &CubeTensor, what: &str) -> Result<()> {
    if cube.dtype != DType::F32 {
        return Err(Error::Unsupported(format!(
            "a {what} of dtype {:?} (the fused step takes f32)",
            cube.dtype
        )));
    }
    Ok(())
}

/// The autodiff state of a parameter, taken before its tensor is unwrapped
/// and put back after, as burn's own `ModuleOptimizer` does: `from_inner`
/// alone would drop `require_grad` and the checkpointing strategy.
struct AutodiffContext {
    /// Whether the tensor was an autodiff one at all (burn's per-tensor
    /// trait hands over the inner tensor).
    autodiff: bool,
    require_grad: bool,
    distributed: bool,
    checkpointing: Option<burn::tensor::GradientCheckpointingStrategy>,
}

impl AutodiffContext {
    fn capture<const D: usize>(t: &Tensor<D>) -> Self {
        if !t.is_autodiff() {
            return AutodiffContext {
                autodiff: false,
                require_grad: false,
                distributed: false,
                checkpointing: None,
            };
        }
        AutodiffContext {
            autodiff: true,
            require_grad: t.is_require_grad(),
            distributed: t.is_distributed(),
            checkpointing: t.gradient_checkpointing_strategy(),
        }
    }

    fn restore<const D: usize>(&self, inner: Tensor<D>, id: ParamId) -> Tensor<D> {
        if !self.autodiff {
            return inner;
        }
        let mut t = Tensor::from_inner(inner);
        if let Some(s) = self.checkpointing {
            t = t.with_gradient_checkpointing_strategy(s);
        }
        if self.require_grad {
            t = t.require_grad();
        }
        if self.distributed {
            t = t.set_distributed(id);
        }
        t
    }
}

/// A row-major f32 cubecl tensor of burn's (its handle may be longer than
/// its elements: burn pads small allocations) that may be written in place:
/// the tensor itself when burn holds no other reference to its buffer, a
/// copy otherwise. Returns the tensor and whether it was copied.
fn writable(cube: CubeTensor) -> (CubeTensor, bool) {
    if cube.can_mut() && cube.is_contiguous() {
        (cube, false)
    } else {
        (cube.copy(), true)
    }
}

/// One parameter the optimizer steps.
#[derive(Clone, Debug, PartialEq)]
struct Bound {
    id: ParamId,
    len: usize,
    /// burn's shape of the parameter (the matrix rules' shapes).
    dims: Vec<usize>,
    buffer: wgpu::Buffer,
    offset: u64,
}

/// A parameter made writable and its gradient, ready for the fused step.
struct Taken<const D: usize> {
    /// The parameter to put back in the module (the one stepped).
    tensor: Tensor<D>,
    bound: Bound,
    grad: (wgpu::Buffer, u64, usize),
    /// Keeps the gradient's buffer from burn's pool until the copy that
    /// reads it is submitted.
    keep: CubeTensor,
    copied: bool,
}

/// Takes a parameter and its gradient apart: checks them, makes the
/// parameter writable (a copy where burn shares its buffer) and finds both
/// buffers. On an error the parameter comes back as it was.
fn take_one<const D: usize>(
    id: ParamId,
    tensor: Tensor<D>,
    grad: Tensor<D>,
) -> std::result::Result<Taken<D>, Box<(Tensor<D>, Error)>> {
    let context = AutodiffContext::capture(&tensor);
    // A clone to give back if the conversion fails (it consumes the
    // tensor); dropped before `can_mut`, which counts references.
    let backup = tensor.clone();
    let cube = match cube_of(tensor) {
        Ok(c) => c,
        Err(e) => return Err(Box::new((backup, e))),
    };
    drop(backup);
    let put_back = |cube: CubeTensor, e: Error| {
        let inner = Tensor::<D>::from_primitive::<CubeBackend>(cube);
        Box::new((context.restore(inner, id), e))
    };
    let checked = check_dense(&cube, "parameter").and_then(|()| {
        let grad = cube_of(grad)?;
        check_dense(&grad, "gradient")?;
        let len = cube.meta.shape().num_elements();
        let glen = grad.meta.shape().num_elements();
        if glen != len {
            return Err(Error::ParamsChanged(format!(
                "parameter {id} has {len} elements and its gradient {glen}"
            )));
        }
        Ok((grad, len))
    });
    let (grad, len) = match checked {
        Ok(v) => v,
        Err(e) => return Err(put_back(cube, e)),
    };
    let dims = cube.meta.shape().to_vec();
    let (cube, copied) = writable(cube);
    let grad = if grad.is_contiguous() {
        grad
    } else {
        grad.copy()
    };
    let found = resource_of(&cube).and_then(|p| Ok((p, resource_of(&grad)?)));
    let ((buffer, offset), (gbuf, goff)) = match found {
        Ok(v) => v,
        Err(e) => return Err(put_back(cube, e)),
    };
    let inner = Tensor::<D>::from_primitive::<CubeBackend>(cube);
    Ok(Taken {
        tensor: context.restore(inner, id),
        bound: Bound {
            id,
            len,
            dims,
            buffer,
            offset,
        },
        grad: (gbuf, goff, len),
        keep: grad,
        copied,
    })
}

/// Collects each parameter that has a gradient (see [`take_one`]), with
/// its module path (burn's: the field names from the module down, joined
/// by dots, as `ParamGroup::matches` takes it).
struct Gather<'a> {
    grads: &'a mut GradientsParams,
    path: Vec<String>,
    paths: Vec<String>,
    params: Vec<Bound>,
    grad_views: Vec<(wgpu::Buffer, u64, usize)>,
    keep: Vec<CubeTensor>,
    copies: usize,
    error: Option<Error>,
}

impl<'a> Gather<'a> {
    fn new(grads: &'a mut GradientsParams) -> Self {
        Gather {
            grads,
            path: Vec::new(),
            paths: Vec::new(),
            params: Vec::new(),
            grad_views: Vec::new(),
            keep: Vec::new(),
            copies: 0,
            error: None,
        }
    }
}

impl ModuleMapper for Gather<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        if self.error.is_some() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let tensor = match take_one(id, tensor, grad) {
            Ok(t) => {
                self.paths.push(self.path.join("."));
                self.params.push(t.bound);
                self.grad_views.push(t.grad);
                self.keep.push(t.keep);
                self.copies += t.copied as usize;
                t.tensor
            }
            Err(failed) => {
                let (tensor, e) = *failed;
                self.error = Some(e);
                tensor
            }
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// A step that failed: the error, and the module as it was (its values
/// unchanged; a parameter may now be a copy of its old tensor).
pub struct StepError<M> {
    /// The module, to keep training or to save.
    pub module: M,
    /// Why the step failed.
    pub error: Error,
}

impl<M> std::fmt::Debug for StepError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<M> std::fmt::Display for StepError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<M> std::error::Error for StepError<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The optimizer over the parameters, and where burn's tensors are copied
/// to for it.
struct Built {
    opt: GpuOptimizer,
    params: Vec<Bound>,
    /// Where each step copies each tensor's gradient: (buffer, byte
    /// offset). A staging buffer of the gradients packed as the
    /// parameters (burn's pool may hold a gradient in the buffer of a
    /// parameter, which one dispatch cannot bind both read-write and
    /// read-only; and the gradients move every step), or the matrix rules'
    /// own gradient buffers.
    grad_dst: Vec<(wgpu::Buffer, u64)>,
    /// Where each tensor's parameters are copied before a step and back
    /// from after it when the optimizer steps buffers of its own: LAMB
    /// (its tile kernels index parameters and state alike: they take no
    /// views) and the matrix rules (a buffer a tensor). `None`: burn's
    /// buffers are stepped in place.
    param_dst: Option<Vec<(wgpu::Buffer, u64)>>,
}

/// Settings given before the first step, applied when the optimizer is
/// built over the module's parameters.
#[derive(Clone, Default)]
struct Settings {
    clip: Option<ClipGradNorm>,
    skip_nonfinite: bool,
    lr: Option<f64>,
}

/// Checks a learning rate as the rules do (finite, not negative).
fn check_lr(lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(wgpu_optim::Error::InvalidHyperparameter {
            name: "lr",
            value: lr,
            reason: "must be finite and >= 0",
        }
        .into())
    }
}

/// The fused step over gathered parameters: builds the optimizer over
/// their buffers at the first step, rebinds it (keeping its state) when
/// burn moved one, copies the gradients in and steps.
struct Stepper {
    ctx: GpuContext,
    config: Config,
    options: GpuOptions,
    /// burn's parameter groups and their configurations, in the order
    /// added: wgpu-optim's groups 1, 2, ...; group 0 is `config` over the
    /// parameters no group matches.
    groups: Vec<(BurnParamGroup, Config)>,
    settings: Settings,
    /// A checkpoint to load into the optimizer when it is built (its
    /// parameters stripped: they are the module's).
    pending: Option<Checkpoint>,
    built: Option<Built>,
}

impl Stepper {
    fn new(ctx: GpuContext, config: Config, options: GpuOptions) -> Self {
        Stepper {
            ctx,
            config,
            options,
            groups: Vec::new(),
            settings: Settings::default(),
            pending: None,
            built: None,
        }
    }

    /// wgpu-optim's groups over `params` (with their module `paths`): each
    /// parameter in the last of `groups` that matches it, as burn's
    /// `ModuleOptimizer::with_group` has it, or in group 0.
    fn param_groups(&self, params: &[Bound], paths: &[String]) -> Vec<ParamGroup> {
        let mut out = vec![ParamGroup::new(self.config.clone(), Vec::new())];
        out.extend(
            self.groups
                .iter()
                .map(|(_, c)| ParamGroup::new(c.clone(), Vec::new())),
        );
        for (t, (p, path)) in params.iter().zip(paths).enumerate() {
            let g = self
                .groups
                .iter()
                .rposition(|(group, _)| group.matches(&p.id, Some(path)))
                .map_or(0, |k| k + 1);
            out[g].params.push(t);
        }
        out
    }

    fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
        if let Some(c) = &clip {
            c.validate()?;
        }
        if let Some(b) = &mut self.built {
            b.opt.set_clip_grad_norm(clip)?;
        }
        self.settings.clip = clip;
        Ok(())
    }

    fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()> {
        if let Some(b) = &mut self.built {
            b.opt.set_skip_nonfinite(skip)?;
        }
        self.settings.skip_nonfinite = skip;
        Ok(())
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr(lr)?;
        if let Some(b) = &mut self.built {
            b.opt.set_lr(lr)?;
        }
        self.settings.lr = Some(lr);
        Ok(())
    }

    /// Steps the gathered tensors; `before` runs on the bound optimizer
    /// first (the schedule's values).
    fn step(
        &mut self,
        params: Vec<Bound>,
        paths: Vec<String>,
        grad_views: Vec<(wgpu::Buffer, u64, usize)>,
        keep: Vec<CubeTensor>,
        before: impl FnOnce(&mut GpuOptimizer) -> Result<()>,
    ) -> Result<()> {
        if params.is_empty() {
            return Err(Error::ParamsChanged(
                "no parameter of the module has a gradient".into(),
            ));
        }
        // burn's work (the backward pass, the copies made here) reaches
        // the queue before the step's.
        if let Some(g) = keep.first() {
            g.client
                .flush()
                .map_err(|e| Error::Server(format!("{e:?}")))?;
        }
        let (device, queue) = (self.ctx.device().clone(), self.ctx.queue().clone());
        let b = self.bind(&params, &paths)?;
        before(&mut b.opt)?;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wgpu-optim-burn: gradients to staging"),
        });
        // Empty tensors copy nothing (their destination is a placeholder).
        for ((buf, off, len), (dst, at)) in grad_views.iter().zip(&b.grad_dst) {
            if *len > 0 {
                encoder.copy_buffer_to_buffer(buf, *off, dst, *at, 4 * *len as u64);
            }
        }
        let copied = || {
            b.params
                .iter()
                .zip(b.param_dst.iter().flatten())
                .filter(|(p, _)| p.len > 0)
        };
        for (p, (dst, at)) in copied() {
            encoder.copy_buffer_to_buffer(&p.buffer, p.offset, dst, *at, 4 * p.len as u64);
        }
        queue.submit([encoder.finish()]);
        drop(keep);
        b.opt.step_device()?;
        if b.param_dst.is_some() {
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim-burn: stepped parameters back"),
            });
            for (p, (src, at)) in copied() {
                encoder.copy_buffer_to_buffer(src, *at, &p.buffer, p.offset, 4 * p.len as u64);
            }
            queue.submit([encoder.finish()]);
        }
        Ok(())
    }

    /// Builds the optimizer over `params` at the first step, and rebuilds
    /// it, keeping its state, when burn moved a parameter (a copy).
    fn bind(&mut self, params: &[Bound], paths: &[String]) -> Result<&mut Built> {
        if let Some(b) = &self.built {
            if b.params.len() != params.len()
                || b.params
                    .iter()
                    .zip(params)
                    .any(|(a, p)| a.id != p.id || a.len != p.len)
            {
                return Err(Error::ParamsChanged(format!(
                    "the optimizer steps {} parameters and the module has {} with gradients (or other ones)",
                    b.params.len(),
                    params.len()
                )));
            }
            if b.params == params {
                return Ok(self.built.as_mut().expect("checked just above"));
            }
        }
        let built = self.build(params, paths)?;
        self.pending = None;
        Ok(self.built.insert(built))
    }

    fn build(&self, params: &[Bound], paths: &[String]) -> Result<Built> {
        let lengths: Vec<usize> = params.iter().map(|p| p.len).collect();
        let mut offsets = Vec::with_capacity(lengths.len());
        let mut total = 0u64;
        for &len in &lengths {
            offsets.push(total);
            total += 4 * len as u64;
        }
        let lamb = self.config.kind() == RuleKind::Lamb;
        let matrix = self.config.is_matrix_rule();
        // The matrix rules' gradients go to their own buffers: the staging
        // buffer is only a placeholder for empty tensors there.
        let staging = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim-burn: gradients"),
            size: if matrix { 4 } else { total.max(4) },
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let options = self.options.clone();
        let at_offsets = |buffer: &wgpu::Buffer| -> Vec<(wgpu::Buffer, u64)> {
            offsets.iter().map(|&o| (buffer.clone(), o)).collect()
        };
        let (mut opt, grad_dst, param_dst) = if matrix {
            let opt = self.matrix_optimizer(params, options)?;
            // One buffer a non-empty tensor, in order, from byte 0.
            let place = |buffers: Vec<&wgpu::Buffer>| -> Vec<(wgpu::Buffer, u64)> {
                let mut own = buffers.into_iter();
                params
                    .iter()
                    .map(|p| match p.len {
                        0 => (staging.clone(), 0),
                        _ => (own.next().unwrap_or(&staging).clone(), 0),
                    })
                    .collect()
            };
            let (grads, params) = (place(opt.grad_buffers()), place(opt.param_buffers()));
            (opt, grads, Some(params))
        } else if lamb {
            let packed = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim-burn: parameters (LAMB)"),
                size: total.max(4),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let opt = GpuOptimizer::from_buffers_with_options(
                &self.ctx,
                self.config.clone(),
                &lengths,
                packed.clone(),
                staging.clone(),
                options,
            )?;
            (opt, at_offsets(&staging), Some(at_offsets(&packed)))
        } else {
            let param_views: Vec<TensorView> = params
                .iter()
                .map(|p| TensorView::new(p.buffer.clone(), p.offset, p.len))
                .collect();
            let grad_views: Vec<TensorView> = offsets
                .iter()
                .zip(&lengths)
                .map(|(&o, &len)| TensorView::new(staging.clone(), o, len))
                .collect();
            let opt = match self.groups.is_empty() {
                true => GpuOptimizer::from_views_with_options(
                    &self.ctx,
                    self.config.clone(),
                    param_views,
                    grad_views,
                    options,
                )?,
                false => {
                    let groups = self.param_groups(params, paths);
                    GpuOptimizer::from_views_with_groups(
                        &self.ctx,
                        param_views,
                        grad_views,
                        &groups,
                        options,
                    )?
                }
            };
            (opt, at_offsets(&staging), None)
        };
        match &self.built {
            Some(old) => {
                // The state, step count and settings move over; the
                // parameters are the new buffers' (the same values).
                let mut ckpt = old.opt.checkpoint()?;
                ckpt.params = None;
                opt.load_checkpoint(&ckpt)?;
            }
            None => {
                // The settings were made the checkpoint's when it was
                // given, and changed by every call since: applied after it.
                if let Some(ckpt) = &self.pending {
                    opt.load_checkpoint(ckpt)?;
                }
                opt.set_clip_grad_norm(self.settings.clip)?;
                opt.set_skip_nonfinite(self.settings.skip_nonfinite)?;
                if let Some(lr) = self.settings.lr {
                    opt.set_lr(lr)?;
                }
            }
        }
        Ok(Built {
            opt,
            params: params.to_vec(),
            grad_dst,
            param_dst,
        })
    }

    /// A matrix rule's optimizer over burn's shapes of `params`, on buffers
    /// of its own (their values are copied in before each step). The
    /// matrix rules take no [`GpuOptions`]: wgpu-optim refuses a
    /// non-default one.
    fn matrix_optimizer(&self, params: &[Bound], options: GpuOptions) -> Result<GpuOptimizer> {
        let shapes: Vec<Shape> = params.iter().map(|p| Shape::new(&p.dims)).collect();
        let zeros: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len]).collect();
        let refs: Vec<&[f32]> = zeros.iter().map(Vec::as_slice).collect();
        Ok(GpuOptimizer::with_shapes_and_options(
            &self.ctx,
            self.config.clone(),
            &refs,
            &shapes,
            options,
        )?)
    }
}

/// A whole-model optimizer for burn: one fused step over every parameter
/// of a module that has a gradient, updated in place in burn's buffers.
///
/// The parameters are taken at the first [`step`](ModelOptimizer::step),
/// in the module's visiting order (its fields' order); later steps expect
/// the same parameters with gradients (a parameter that had a gradient and
/// has none is [`Error::ParamsChanged`]: one fused step cannot leave one
/// tensor's state untouched, where torch skips it).
///
/// ```no_run
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::GradientsParams;
/// use burn::tensor::Tensor;
/// use wgpu_optim::AdamW;
/// use wgpu_optim_burn::{BurnGpu, ModelOptimizer};
///
/// let gpu = BurnGpu::new()?;
/// let device = gpu.device().clone().autodiff();
/// let mut model: Linear = LinearConfig::new(4, 2).init(&device);
/// let mut opt = ModelOptimizer::new(&gpu, AdamW::default());
/// for _ in 0..10 {
///     let x = Tensor::<2>::ones([8, 4], &device);
///     let loss = model.forward(x).powi_scalar(2).mean();
///     let grads = GradientsParams::from_grads(loss.backward(), &model);
///     model = opt.step(model, grads).map_err(|e| e.error)?;
/// }
/// # Ok::<(), wgpu_optim_burn::Error>(())
/// ```
pub struct ModelOptimizer {
    stepper: Stepper,
    scheduler: Option<Scheduler>,
    /// The schedule of every group, and its scheduler once the optimizer
    /// was built (each group from its own lr then).
    group_schedule: Option<(Schedule, Option<GroupScheduler>)>,
    copies: usize,
}

impl ModelOptimizer {
    /// An optimizer of `config`'s rule on `gpu`'s device. Nothing is made
    /// until the first step.
    pub fn new(gpu: &BurnGpu, config: impl Into<Config>) -> Self {
        Self::with_options(gpu, config, GpuOptions::default())
    }

    /// As [`ModelOptimizer::new`], with wgpu-optim's [`GpuOptions`].
    pub fn with_options(gpu: &BurnGpu, config: impl Into<Config>, options: GpuOptions) -> Self {
        ModelOptimizer {
            stepper: Stepper::new(gpu.ctx.clone(), config.into(), options),
            scheduler: None,
            group_schedule: None,
            copies: 0,
        }
    }

    /// Steps the parameters that burn's `group` matches with `config`, as
    /// burn's `ModuleOptimizer::with_group` does (by parameter id or module
    /// path: `ParamGroup::from_predicate("fc1")`, `from_ids`, ...): a
    /// parameter several groups match takes the last one added, and the
    /// parameters no group matches take the configuration of
    /// [`ModelOptimizer::new`]. Every group steps in the one fused step
    /// (wgpu-optim's [`GpuOptimizer::from_views_with_groups`]; global
    /// clipping and the non-finite skip over all of them). Returns the
    /// group's index in wgpu-optim's optimizer: 1 for the first group
    /// added (group 0 is the rest), as
    /// [`GpuOptimizer::set_group_lr`] and the checkpoints number them.
    ///
    /// Before the first step only ([`Error::Unsupported`] after it: the
    /// optimizer's tensors are grouped when it is built), and not for LAMB
    /// or the matrix rules ([`Error::Unsupported`]: they step a copy of
    /// the parameters in one group). A configuration
    /// of another rule than the optimizer's is wgpu-optim's
    /// `GroupRuleMismatch`, an invalid one its error; nothing changes on
    /// error.
    pub fn add_group(&mut self, group: BurnParamGroup, config: impl Into<Config>) -> Result<usize> {
        if self.stepper.built.is_some() {
            return Err(Error::Unsupported(
                "a parameter group added after the first step".into(),
            ));
        }
        let config = config.into();
        let index = self.stepper.groups.len() + 1;
        let first = &self.stepper.config;
        // Their optimizers step a copy over one group (`Stepper::build`).
        if first.kind() == RuleKind::Lamb || first.is_matrix_rule() {
            return Err(Error::Unsupported(format!(
                "{} over parameter groups",
                first.kind()
            )));
        }
        if config.kind() != first.kind() {
            return Err(wgpu_optim::Error::GroupRuleMismatch {
                group: index,
                expected: first.kind().name(),
                got: config.kind().name(),
            }
            .into());
        }
        config.validate()?;
        self.stepper.groups.push((group, config));
        Ok(index)
    }

    /// Groups of parameters: 1 and one a [`ModelOptimizer::add_group`].
    pub fn group_count(&self) -> usize {
        self.stepper.groups.len() + 1
    }

    /// Global-norm clipping over every parameter (torch's
    /// `clip_grad_norm_`), or none.
    pub fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
        self.stepper.set_clip_grad_norm(clip)
    }

    /// Skip a step whose gradients hold a NaN or an infinity (nothing
    /// changes; wgpu-optim's `set_skip_nonfinite`).
    pub fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()> {
        self.stepper.set_skip_nonfinite(skip)
    }

    /// The learning rate from the next step on.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.stepper.set_lr(lr)
    }

    /// A learning-rate (and momentum) schedule, advanced once a step: the
    /// step uses the schedule's current values, then moves it on. It sets
    /// one lr: with parameter groups a step refuses it
    /// ([`Error::Unsupported`]); give the groups
    /// [`ModelOptimizer::set_group_schedule`].
    pub fn set_scheduler(&mut self, scheduler: Option<Scheduler>) {
        self.scheduler = scheduler;
    }

    /// `schedule` for every parameter group, each from its own lr and
    /// momentum (torch's one scheduler over all of `param_groups`,
    /// wgpu-optim's [`GroupScheduler`]): made when the optimizer is built,
    /// at the first step (or now, from the lrs in force, when it was),
    /// advanced once a step.
    pub fn set_group_schedule(&mut self, schedule: Option<Schedule>) -> Result<()> {
        self.group_schedule = match (schedule, self.stepper.built.as_ref()) {
            (None, _) => None,
            (Some(s), None) => Some((s, None)),
            (Some(s), Some(b)) => {
                let sched = GroupScheduler::new(s.clone(), &b.opt)?;
                Some((s, Some(sched)))
            }
        };
        Ok(())
    }

    /// The schedule in force.
    pub fn scheduler(&self) -> Option<&Scheduler> {
        self.scheduler.as_ref()
    }

    /// wgpu-optim's optimizer, once the first step built it: its state,
    /// checkpoints, gradient norm and the rest of its API.
    pub fn optimizer(&self) -> Option<&GpuOptimizer> {
        self.stepper.built.as_ref().map(|b| &b.opt)
    }

    /// As [`ModelOptimizer::optimizer`], mutable.
    pub fn optimizer_mut(&mut self) -> Option<&mut GpuOptimizer> {
        self.stepper.built.as_mut().map(|b| &mut b.opt)
    }

    /// The parameters stepped, in order (the order of the optimizer's
    /// tensors and of its checkpoints).
    pub fn param_ids(&self) -> Vec<ParamId> {
        self.stepper
            .built
            .as_ref()
            .map(|b| b.params.iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }

    /// The optimizer's state as wgpu-optim's [`Checkpoint`] (save it with
    /// `Checkpoint::save`): counters, state tensors, settings, groups, and
    /// the [`ModelOptimizer::set_scheduler`] schedule's position; not the
    /// parameters (they are the module's: burn's records keep them). Waits
    /// for the GPU. [`Error::Unsupported`] before the first step (nothing
    /// to save: a fresh optimizer is the state) and with a
    /// [`ModelOptimizer::set_group_schedule`] (its per-group positions are
    /// not in a checkpoint).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        if self.group_schedule.is_some() {
            return Err(Error::Unsupported(
                "a checkpoint with a group schedule (its positions are not saved)".into(),
            ));
        }
        let Some(b) = &self.stepper.built else {
            return Err(Error::Unsupported(
                "a checkpoint before the first step".into(),
            ));
        };
        let mut ckpt = b.opt.checkpoint()?;
        ckpt.params = None;
        ckpt.set_scheduler(self.scheduler.as_ref());
        Ok(ckpt)
    }

    /// Restores a [`ModelOptimizer::checkpoint`]: the state goes on
    /// exactly as saved, over the same module's parameters (the same
    /// parameters with gradients, in the same order; build this optimizer
    /// with the same [`ModelOptimizer::add_group`]s). The schedule saved
    /// with it replaces [`ModelOptimizer::set_scheduler`]'s. Once the
    /// optimizer was built it is loaded now (nothing changes on error);
    /// before the first step it is kept and loaded when the first step
    /// builds the optimizer, where a checkpoint that does not fit the
    /// module is that step's error (the module unchanged, the checkpoint
    /// kept). Parameters in the checkpoint are not loaded.
    pub fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let scheduler = ckpt.scheduler()?;
        let mut ckpt = ckpt.clone();
        ckpt.params = None;
        match &mut self.stepper.built {
            Some(b) => b.opt.load_checkpoint(&ckpt)?,
            None => {
                self.stepper.settings = Settings {
                    clip: ckpt.clip,
                    skip_nonfinite: ckpt.skip_nonfinite,
                    lr: None,
                };
                self.stepper.pending = Some(ckpt);
            }
        }
        self.scheduler = scheduler;
        Ok(())
    }

    /// Parameters copied so far because burn shared their buffers (see
    /// the crate's docs, "In place, and when not").
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// One step over every parameter of `module` that has a gradient in
    /// `grads`; returns the module with its parameters updated (in place
    /// where burn let them be). On an error nothing changed: the error
    /// carries the module back (boxed: a module is large).
    pub fn step<M: Module>(
        &mut self,
        module: M,
        mut grads: GradientsParams,
    ) -> std::result::Result<M, Box<StepError<M>>> {
        let mut gather = Gather::new(&mut grads);
        let module = module.map(&mut gather);
        let Gather {
            params,
            paths,
            grad_views,
            keep,
            copies,
            error,
            ..
        } = gather;
        self.copies += copies;
        if let Some(error) = error {
            return Err(Box::new(StepError { module, error }));
        }
        let scheduler = &self.scheduler;
        let group_schedule = &mut self.group_schedule;
        let result = self.stepper.step(params, paths, grad_views, keep, |opt| {
            if let Some(s) = scheduler {
                if opt.group_count() > 1 {
                    return Err(Error::Unsupported(
                        "one lr schedule over parameter groups (set_scheduler): give the \
                         groups set_group_schedule"
                            .into(),
                    ));
                }
                opt.set_lr(s.lr())?;
                if let Some(m) = s.momentum() {
                    opt.set_momentum(m)?;
                }
            }
            if let Some((schedule, sched)) = group_schedule {
                let sched = match sched {
                    Some(s) => s,
                    None => sched.insert(GroupScheduler::new(schedule.clone(), &*opt)?),
                };
                sched.apply(opt)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                if let Some(s) = &mut self.scheduler {
                    s.advance();
                }
                if let Some((_, Some(s))) = &mut self.group_schedule {
                    s.advance();
                }
                Ok(module)
            }
            Err(error) => Err(Box::new(StepError { module, error })),
        }
    }
}
