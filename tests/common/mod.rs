//! Helpers the integration tests share; each test binary that needs them
//! declares `mod common;`.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgpu_optim::GpuContext;

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
