//! Helpers the integration tests share; each test binary that needs them
//! declares `mod common;`.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgpu_optim::GpuContext;

/// One context per test binary: the adapter, the device and the kernels
/// compiled on it are paid once. No adapter is a failure, never a skip: the
/// error says what to install.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        GpuContext::new().unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"))
    })
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
