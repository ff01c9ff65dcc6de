//! Schedule-free train and eval modes on the GPU: one small kernel
//! (`shaders/schedulefree_mode.wgsl`) that moves the parameters between `y`
//! and `x` in place, chunk by chunk, as `CpuOptimizer::set_eval` does.

use std::num::NonZeroU64;

use wgpu::util::DeviceExt;

use super::optimizer::GpuOptimizer;
use crate::cpu::{eval_beta1, state_index, z_exists};
use crate::error::{Error, Result};
use crate::rules::schedulefree::mode_switch_weight;

const MODE_WGSL: &str = include_str!("../../shaders/schedulefree_mode.wgsl");
/// `@workgroup_size` of the kernel.
const WORKGROUP: u64 = 256;

impl GpuOptimizer {
    /// As [`crate::CpuOptimizer::set_eval`]: switches a schedule-free
    /// optimizer between train mode (`false`, `y`) and eval mode (`true`,
    /// `x = (y − (1 − β1)·z)/β1`) in place on the GPU, with one dispatch
    /// per chunk of the same `lerp` as the CPU's. A step in eval mode
    /// ([`GpuOptimizer::step_device`], [`GpuOptimizer::record_step`]) is
    /// [`Error::EvalMode`]; [`GpuOptimizer::checkpoint`] saves `y` whatever
    /// the mode, and restoring one returns to train mode. With
    /// `skip_nonfinite` it first learns whether any step was applied (the
    /// package creates `z` at the first). Other rules, and optimizers over
    /// views ([`GpuOptimizer::from_views`]): [`Error::Unsupported`].
    pub fn set_eval(&mut self, eval: bool) -> Result<()> {
        let beta1 = eval_beta1(&self.config)?;
        self.check_one_group("the schedule-free eval mode")?;
        if eval == self.eval {
            return Ok(());
        }
        if self.views.is_some() {
            return Err(Error::Unsupported(
                "the schedule-free eval mode on tensor views (from_views)".into(),
            ));
        }
        if z_exists(&self.exact_counts()?.scalar_state) {
            let z = state_index(&self.config, &self.state_names, "z")?;
            self.switch_mode(z, mode_switch_weight(beta1, eval))?;
        }
        self.eval = eval;
        Ok(())
    }

    /// Whether a schedule-free optimizer is in eval mode
    /// ([`GpuOptimizer::set_eval`]).
    pub fn eval_mode(&self) -> bool {
        self.eval
    }

    /// [`Error::EvalMode`] in eval mode.
    pub(super) fn check_train_mode(&self) -> Result<()> {
        if self.eval {
            return Err(Error::EvalMode {
                rule: self.config.kind().name(),
            });
        }
        Ok(())
    }

    /// `θ ← lerp(θ, z, weight)` over every chunk, `z` state slot `z`.
    fn switch_mode(&mut self, z: usize, weight: f32) -> Result<()> {
        let ctx = self.ctx.clone();
        ctx.scoped("switching schedule-free modes", || {
            let device = &ctx.device;
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("schedulefree_mode"),
                source: wgpu::ShaderSource::Wgsl(MODE_WGSL.into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("schedulefree_mode"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            let mut uniform = [0u8; 16];
            uniform[..4].copy_from_slice(&weight.to_le_bytes());
            let mode = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("schedulefree mode weight"),
                contents: &uniform,
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let layout = pipeline.get_bind_group_layout(0);
            let max_groups = device.limits().max_compute_workgroups_per_dimension as u64;
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                for (c, range) in self.chunks.iter().enumerate() {
                    let Some(size) = NonZeroU64::new(range.len * 4) else {
                        continue;
                    };
                    // Views are refused above (set_eval).
                    let Some((param, offset)) = self.params.locate(c, range) else {
                        continue;
                    };
                    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("schedulefree_mode"),
                        layout: &layout,
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: param,
                                    offset,
                                    size: Some(size),
                                }),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: &self.buffers.state[z][c],
                                    offset: 0,
                                    size: Some(size),
                                }),
                            },
                            wgpu::BindGroupEntry {
                                binding: 2,
                                resource: mode.as_entire_binding(),
                            },
                        ],
                    });
                    pass.set_bind_group(0, &group, &[]);
                    let groups = range.len.div_ceil(WORKGROUP).min(max_groups) as u32;
                    pass.dispatch_workgroups(groups, 1, 1);
                }
            }
            ctx.queue.submit([encoder.finish()]);
        })
    }
}
