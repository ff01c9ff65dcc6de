//! Helpers the integration tests share; each test binary that needs them
//! declares `mod common;`.
#![allow(dead_code)]

pub mod cases;

use std::sync::OnceLock;

use wgpu_optim::{Config, CpuOptimizer, GpuContext, GpuOptimizer, GpuOptions, Optimizer};

/// One context per test binary: the adapter, the device and the kernels
/// compiled on it are paid once. No adapter is a failure, never a skip: the
/// error says what to install.
///
/// In tests/webgpu_limits.rs, which compiles the GPU test files a second
/// time as its modules, the context is a device requested with WebGPU's
/// default limits (`wgpu::Limits::default()`, as wgpu's own examples do)
/// and wrapped with `GpuContext::from_device`: the same tests must pass on
/// it.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        if webgpu_tier() {
            return device_with_limits(|_| wgpu::Limits::default());
        }
        GpuContext::new().unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"))
    })
}

/// Whether this binary is the `Limits::default()` tier (tests/webgpu_limits.rs).
pub fn webgpu_tier() -> bool {
    env!("CARGO_CRATE_NAME") == "webgpu_limits"
}

/// A second device, for tests of buffers handed to the wrong device: on
/// the same `wgpu::Instance` as [`ctx`]'s, the only case wgpu can tell
/// apart (see `make_instance` in src/gpu/context.rs).
pub fn second_context() -> GpuContext {
    if webgpu_tier() {
        return device_with_limits(|_| wgpu::Limits::default());
    }
    GpuContext::new().unwrap_or_else(|e| panic!("a second context: {e}"))
}

/// A device the caller makes, as a user of `GpuContext::from_device` would:
/// on the first adapter of the primary backends, with the limits `limits`
/// picks given the adapter's (the device refuses limits beyond those). All
/// on one instance of the test binary's.
pub fn device_with_limits(limits: impl FnOnce(wgpu::Limits) -> wgpu::Limits) -> GpuContext {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    let instance = INSTANCE.get_or_init(|| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = wgpu::Backends::PRIMARY;
        wgpu::Instance::new(desc)
    });
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"));
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("caller's device"),
        required_limits: limits(adapter.limits()),
        ..Default::default()
    }))
    .unwrap_or_else(|e| panic!("a device on {}: {e}", info.name));
    GpuContext::from_device(device, queue, Some(info))
}

/// Per element of one buffer, over the CPU run: the largest magnitude the
/// element held and the distance it travelled; the larger is the scale of
/// the GPU-against-CPU tolerance `steps·8·ε·scale` argued in
/// tests/gpu_vs_cpu.rs.
pub struct Envelope {
    prev: Vec<f32>,
    max_abs: Vec<f64>,
    path: Vec<f64>,
}

impl Envelope {
    /// Starts at the initial values `x`.
    pub fn new(x: &[f32]) -> Self {
        Envelope {
            prev: x.to_vec(),
            max_abs: x.iter().map(|v| v.abs() as f64).collect(),
            path: vec![0.0; x.len()],
        }
    }

    /// Takes in the values after one more step.
    pub fn update(&mut self, x: &[f32]) {
        for (i, &v) in x.iter().enumerate() {
            self.max_abs[i] = self.max_abs[i].max(v.abs() as f64);
            self.path[i] += (v as f64 - self.prev[i] as f64).abs();
            self.prev[i] = v;
        }
    }

    /// The tolerance scale of element `i`.
    pub fn scale(&self, i: usize) -> f64 {
        self.max_abs[i].max(self.path[i])
    }
}

/// SplitMix64: a tiny deterministic generator, enough for test data.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-1, 1), 24 random bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 23) as f32 - 1.0
    }

    /// The same as [`Rng::uniform`].
    pub fn next(&mut self) -> f32 {
        self.uniform()
    }

    /// `n` uniform values in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }

    /// `n` uniform values in [-scale, scale).
    pub fn vec_scaled(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.uniform()).collect()
    }
}

/// Which backend a test builds an optimizer on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// [`CpuOptimizer`].
    Cpu,
    /// [`GpuOptimizer`] on [`ctx`], with these options.
    Gpu(GpuOptions),
}

impl Backend {
    /// The CPU, and the GPU with `options`.
    pub fn both(options: GpuOptions) -> [Backend; 2] {
        [Backend::Cpu, Backend::Gpu(options)]
    }

    /// `cpu` or `gpu`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu(_) => "gpu",
        }
    }

    /// An optimizer of `config` over `params` on this backend.
    pub fn build(
        &self,
        config: impl Into<Config>,
        params: &[&[f32]],
    ) -> wgpu_optim::Result<Box<dyn Optimizer>> {
        Ok(match self {
            Backend::Cpu => Box::new(CpuOptimizer::new(config, params)?),
            Backend::Gpu(options) => Box::new(GpuOptimizer::with_options(
                ctx(),
                config,
                params,
                options.clone(),
            )?),
        })
    }

    /// An optimizer restored from `ckpt` on this backend.
    pub fn restore(
        &self,
        ckpt: &wgpu_optim::checkpoint::Checkpoint,
    ) -> wgpu_optim::Result<Box<dyn Optimizer>> {
        Ok(match self {
            Backend::Cpu => Box::new(CpuOptimizer::from_checkpoint(ckpt)?),
            Backend::Gpu(options) => {
                Box::new(GpuOptimizer::from_checkpoint(ctx(), ckpt, options.clone())?)
            }
        })
    }
}

/// The parameters of any backend, packed into one vector.
pub fn params_flat(opt: &dyn Optimizer) -> Vec<f32> {
    opt.read_params().unwrap().concat()
}

/// The state tensor `name` of any backend, packed into one vector.
pub fn state_flat(opt: &dyn Optimizer, name: &str) -> Vec<f32> {
    opt.read_state(name).unwrap().concat()
}

/// Everything an optimizer holds, as bit patterns (so that NaN equals NaN):
/// the parameters, each state tensor by name, the step count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The parameters, packed.
    pub params: Vec<u32>,
    /// (name, packed values) of each state tensor, in the optimizer's order.
    pub state: Vec<(String, Vec<u32>)>,
    /// Steps taken.
    pub steps: u64,
}

/// The bit patterns of `v`.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// What `opt` holds now (read back from the GPU).
pub fn snapshot(opt: &dyn Optimizer) -> Snapshot {
    Snapshot {
        params: bits(&params_flat(opt)),
        state: opt
            .state_names()
            .iter()
            .map(|n| (n.to_string(), bits(&state_flat(opt, n))))
            .collect(),
        steps: opt.step_count(),
    }
}

impl Snapshot {
    /// The parameters as values.
    pub fn param_values(&self) -> Vec<f32> {
        self.params.iter().map(|&b| f32::from_bits(b)).collect()
    }

    /// Every state element as values, tensor after tensor.
    pub fn state_values(&self) -> Vec<f32> {
        self.state
            .iter()
            .flat_map(|(_, v)| v.iter().map(|&b| f32::from_bits(b)))
            .collect()
    }
}
