//! LAMB on the GPU with its per-tensor sums passed through the host
//! between the kernel that moves the moments and the one that moves the
//! parameters: what the sharded optimizer needs to add the parts of a
//! tensor that other ranks hold before the trust ratios are taken.

use super::chunks::Tiling;
use super::optimizer::{dispatch_per_group, GpuOptimizer};
use super::readback::read_buffer;
use super::uniforms::{ScalarsVia, UNIFORM_RING, UNIFORM_STRIDE};
use crate::error::{Error, Result};
use crate::optimizer::CombineTensorSums;
use crate::rules::{lamb::trust_ratio, Config, Rule};

/// Where the trust ratios start in the `info` buffer (`info[4 + t]` in
/// shaders/lamb.wgsl).
const RATIOS_AT: u64 = 4 * 4;

impl GpuOptimizer {
    /// Whether [`GpuOptimizer::step_combining_tensor_sums`] can step it.
    pub fn combines_tensor_sums(&self) -> bool {
        matches!(self.config, Config::Lamb(_))
            && self.clip.is_none()
            && self.skip.is_none()
            && self.groups.is_none()
            && self.views.is_none()
            && self.precision.is_none()
            && self.matrix.is_none()
    }

    /// A LAMB step whose trust ratios come from per-tensor sums that
    /// `combine` may replace, as [`crate::CpuOptimizer::step_combining_tensor_sums`]:
    /// the moments kernel runs in one submission, each tile's f32 sums of
    /// `θ²` and `u²` are read back and added per tensor in f64 in tile
    /// order, `combine` gets them, the host takes the trust ratios (the
    /// CPU's arithmetic, `lamb_ratio`'s rules) and writes them, and the
    /// apply kernel runs in a second. Two submissions and a read-back of
    /// 8 bytes a tile (4096 elements) a step: the price of a host in the
    /// middle of the step.
    ///
    /// [`Error::Unsupported`], with nothing changed, for what
    /// [`GpuOptimizer::combines_tensor_sums`] refuses: a rule other than
    /// LAMB, clipping or `skip_nonfinite` of the optimizer's own (either
    /// could end the step before `combine`, which other ranks wait on),
    /// views, groups, low-precision storage. When `combine` fails its error
    /// is returned with the moments stepped and the parameters and step
    /// count not: restore a checkpoint.
    pub fn step_combining_tensor_sums(
        &mut self,
        grads: &[&[f32]],
        combine: &mut CombineTensorSums<'_>,
    ) -> Result<()> {
        let Config::Lamb(lamb) = &self.config else {
            return Err(Error::Unsupported(format!(
                "per-tensor sums combined in a step of {} (LAMB only)",
                self.config.kind().name()
            )));
        };
        if !self.combines_tensor_sums() {
            return Err(Error::Unsupported(
                "per-tensor sums combined in a LAMB step with the optimizer's own clipping or \
                 non-finite skip, on views, over groups or in low precision"
                    .into(),
            ));
        }
        let scalars = lamb.scalars(self.counters.buffer_filled);
        self.layout.check(grads)?;
        self.check_train_mode()?;
        self.check_host_writable(&self.grads, "gradient")?;
        // Checked before anything moves: the tiles' spans per tensor.
        let tiling = Tiling::new(&self.layout, &self.chunks)?;
        let ctx = self.ctx.clone();
        ctx.scoped("uploading gradients", || {
            self.write_storage_tensors(&self.grads, grads)
        })?;
        let slot = self.counters.step % UNIFORM_RING;
        let offset = [(slot * UNIFORM_STRIDE) as u32];
        let pass = |pipeline: usize| -> Result<()> {
            ctx.scoped("stepping", || {
                let mut encoder =
                    ctx.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("lamb step, combined sums"),
                        });
                if pipeline == 0 {
                    self.write_step_scalars(
                        &mut encoder,
                        slot,
                        self.counters.step,
                        ScalarsVia::Queue,
                    )?;
                }
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("lamb step, combined sums"),
                        timestamp_writes: None,
                    });
                    dispatch_per_group(
                        &mut pass,
                        &self.kernel.pipelines[pipeline],
                        &self.buffers.tile_groups,
                        &offset,
                    );
                }
                ctx.queue.submit(Some(encoder.finish()));
                Ok(())
            })?
        };
        // lamb_moments (the shader's first entry point).
        pass(0)?;
        let partials = read_buffer(&ctx, &self.buffers.partials, 0, tiling.total as u64 * 8)?;
        let mut sums: Vec<[f64; 2]> = tiling
            .tensors
            .iter()
            .map(|&[first, count]| {
                let tiles = first as usize..(first + count) as usize;
                tiles.fold([0.0; 2], |[p, u], k| {
                    [p + partials[2 * k] as f64, u + partials[2 * k + 1] as f64]
                })
            })
            .collect();
        combine(&mut sums)?;
        let ratios: Vec<f32> = sums
            .iter()
            .map(|[p, u]| trust_ratio(&scalars, *p as f32, *u as f32))
            .collect();
        ctx.scoped("writing the trust ratios", || {
            if !ratios.is_empty() {
                ctx.queue.write_buffer(
                    &self.buffers.info,
                    RATIOS_AT,
                    bytemuck::cast_slice(&ratios),
                );
            }
        })?;
        // lamb_apply (the third; lamb_ratio, the second, is what the host
        // did).
        pass(2)?;
        self.config
            .advance_scalar_state(&mut self.scalar_state, self.counters.step + 1);
        self.counters.advance(&self.config);
        Ok(())
    }
}
