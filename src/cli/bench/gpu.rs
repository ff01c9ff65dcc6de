//! The GPU side of `bench`: wall-clock steps, kernel timestamps and the
//! copy rooflines measured on the same device.

use super::*;

pub(super) struct GpuTimes {
    /// Every wall-clock sample, ms per step, in the order taken.
    pub(super) samples_ms: Vec<f64>,
    pub(super) median_ms: f64,
    pub(super) min_ms: f64,
    pub(super) kernel_ms: Option<f64>,
    pub(super) copy_gbps: Option<f64>,
    pub(super) dma_copy_gbps: Option<f64>,
    pub(super) dispatches: usize,
    pub(super) variant: String,
    /// What the optimizer holds ([`GpuOptimizer::resident_bytes`]).
    pub(super) resident_bytes: u64,
}

/// The GPU optimizer of `preset` over `params` laid out as `layout` asks:
/// packed in its own buffers, or scattered over [`POOLS`] pooled parameter
/// and gradient buffers (tensor `i` in pool `i % POOLS`, each at the next
/// multiple of 256 bytes) and stepped through views. The views' kernels
/// pick their own width (vec4 where every length is a multiple of 4) and
/// keep their bounds checks: `--vector-width` and `--unchecked` are left
/// out there.
pub(super) fn gpu_optimizer(
    ctx: &GpuContext,
    preset: Preset,
    layout: BenchLayout,
    params: &[&[f32]],
    options: GpuOptions,
    precision: Precision,
) -> wgpu_optim::Result<GpuOptimizer> {
    if !precision.is_f32() {
        if layout != BenchLayout::Packed {
            return Err(wgpu_optim::Error::Unsupported(
                "--param-dtype, --state-dtype or --master-weights with --layout scattered".into(),
            ));
        }
        // The 16-bit kernels step pairs: their own width.
        let options = GpuOptions {
            vector_width: None,
            ..options
        };
        return GpuOptimizer::with_precision_options(
            ctx,
            preset.config(),
            params,
            precision,
            options,
        );
    }
    if layout == BenchLayout::Packed {
        return GpuOptimizer::with_options(ctx, preset.config(), params, options);
    }
    const ALIGN: u64 = 256;
    let mut ends = [0u64; POOLS];
    let offsets: Vec<u64> = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let end = &mut ends[i % POOLS];
            let at = *end;
            *end = (at + p.len() as u64 * 4).div_ceil(ALIGN) * ALIGN;
            at
        })
        .collect();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let pools = |label: &str| -> wgpu_optim::Result<Vec<wgpu::Buffer>> {
        ends.iter()
            .map(|&size| {
                if size > ctx.limits().max_buffer_size {
                    return Err(wgpu_optim::Error::TooLarge(format!(
                        "a pool of {size} bytes is more than this device's max_buffer_size"
                    )));
                }
                Ok(ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: size.max(ALIGN),
                    usage,
                    mapped_at_creation: false,
                }))
            })
            .collect()
    };
    let (param_pools, grad_pools) = (pools("pooled params")?, pools("pooled grads")?);
    let views = |pools: &[wgpu::Buffer]| -> Vec<TensorView> {
        params
            .iter()
            .zip(&offsets)
            .enumerate()
            .map(|(i, (p, &at))| TensorView::new(pools[i % POOLS].clone(), at, p.len()))
            .collect()
    };
    let options = GpuOptions {
        vector_width: None,
        skip_bounds_checks: false,
        ..options
    };
    let mut opt = GpuOptimizer::from_views_with_options(
        ctx,
        preset.config(),
        views(&param_pools),
        views(&grad_pools),
        options,
    )?;
    opt.write_params(params)?;
    Ok(opt)
}

pub(super) fn bench_gpu(
    plan: &Plan<'_>,
    ctx: &GpuContext,
    preset: Preset,
    layout: BenchLayout,
    params: &[&[f32]],
    grads: &[&[f32]],
) -> wgpu_optim::Result<GpuTimes> {
    let args = plan.args;
    let label = plan.pb.message();
    plan.pb.set_message(format!("{label} (warm-up)"));
    let mut opt = gpu_optimizer(
        ctx,
        preset,
        layout,
        params,
        args.gpu_options(),
        args.precision(),
    )?;
    let unchecked = args.unchecked && layout == BenchLayout::Packed;
    opt.set_clip_grad_norm(preset.clip())?;
    opt.write_grads(grads)?;
    for _ in 0..args.warmup {
        opt.step_device()?;
    }
    ctx.wait()?;
    // Then keep stepping for --warmup-ms: a GPU left idle (while the CPU
    // verified the previous rule, say) runs its first few hundred ms of
    // work at a lower clock. Seen on an H200: 10-step samples at 2.3x the
    // kernel time for ~300 ms, then at it.
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() * 1e3 < args.warmup_ms as f64 {
        for _ in 0..args.batch {
            opt.step_device()?;
        }
        ctx.wait()?;
    }
    plan.pb.set_message(label.clone());
    let mut times = Vec::with_capacity(args.steps as usize);
    for _ in 0..args.steps {
        let t = Instant::now();
        for _ in 0..args.batch {
            opt.step_device()?;
        }
        ctx.wait()?;
        times.push(t.elapsed().as_secs_f64() * 1e3 / args.batch as f64);
        plan.pb.inc(1);
    }
    let samples_ms = times.clone();
    let (median_ms, min_ms) = median_min(times);

    let kernel_ms = if ctx
        .device()
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY)
    {
        plan.pb.set_message(format!("{label} (kernel timestamps)"));
        let count = (args.steps as usize * args.batch as usize)
            .min(wgpu::QUERY_SET_MAX_QUERIES as usize / 2);
        match kernel_times(ctx, &mut opt, count) {
            Ok(t) if !t.is_empty() => Some(median_min(t).0),
            Ok(_) => None,
            Err(e) => {
                plan.pb
                    .suspend(|| eprintln!("wgpu-optim: kernel timestamps failed: {e}"));
                None
            }
        }
    } else {
        None
    };

    // Last, as it overwrites the parameters with the gradients.
    plan.pb.set_message(format!("{label} (copy roofline)"));
    let gbps_of = |ms: f64| 8.0 * opt.layout().total() as f64 / (ms * 1e-3) / 1e9;
    let copy_gbps = match shader_copy_ms(ctx, &opt, args.steps, args.batch) {
        Ok(ms) => Some(gbps_of(ms)),
        Err(e) => {
            plan.pb
                .suspend(|| eprintln!("wgpu-optim: timing shader copies failed: {e}"));
            None
        }
    };
    let dma_copy_gbps = match copy_times(ctx, &opt, args.steps, args.batch) {
        Ok(ms) => Some(gbps_of(ms)),
        Err(e) => {
            plan.pb
                .suspend(|| eprintln!("wgpu-optim: timing buffer copies failed: {e}"));
            None
        }
    };
    Ok(GpuTimes {
        samples_ms,
        median_ms,
        min_ms,
        kernel_ms,
        copy_gbps,
        dma_copy_gbps,
        dispatches: opt.dispatches_per_step(),
        resident_bytes: opt.resident_bytes(),
        variant: format!(
            "{}{}",
            match opt.vector_width() {
                // The 8-bit kernel: a workgroup a block of 256.
                _ if opt.precision().state_dtype == StateDtype::Int8Blockwise => "blocks",
                4 => "vec4",
                2 => "pairs",
                _ => "scalar",
            },
            // The 8-bit kernel keeps its bounds checks.
            if unchecked && opt.precision().state_dtype != StateDtype::Int8Blockwise {
                "+unchecked"
            } else {
                ""
            }
        ),
    })
}

/// Kernel time of `count` steps, in ms each, from timestamps written at the
/// start and end of each step's compute pass.
pub(super) fn kernel_times(
    ctx: &GpuContext,
    opt: &mut GpuOptimizer,
    count: usize,
) -> Result<Vec<f64>, String> {
    timed_passes(ctx, count, |encoder, writes| {
        opt.record_step(encoder, Some(writes))
            .map_err(|e| e.to_string())
    })
}

/// Times `count` compute passes, each recorded by `record` with the
/// timestamp writes it must pass to its compute pass, one submission each;
/// ms per pass.
pub(super) fn timed_passes(
    ctx: &GpuContext,
    count: usize,
    mut record: impl FnMut(
        &mut wgpu::CommandEncoder,
        wgpu::ComputePassTimestampWrites<'_>,
    ) -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let device = ctx.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let queries = 2 * count as u32;
    let bytes = queries as u64 * wgpu::QUERY_SIZE as u64;
    let query_set = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("bench timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: queries,
    });
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench timestamps resolve"),
        size: bytes,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench timestamps readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    for i in 0..count as u32 {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench timed step"),
        });
        record(
            &mut encoder,
            wgpu::ComputePassTimestampWrites {
                query_set: &query_set,
                beginning_of_pass_write_index: Some(2 * i),
                end_of_pass_write_index: Some(2 * i + 1),
            },
        )?;
        ctx.queue().submit(Some(encoder.finish()));
    }
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("bench timestamps resolve"),
    });
    encoder.resolve_query_set(&query_set, 0..queries, &resolve, 0);
    encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
    ctx.queue().submit(Some(encoder.finish()));
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(e.to_string());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    readback.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait().map_err(|e| e.to_string())?;
    rx.recv()
        .map_err(|_| "the map callback never ran".to_string())?
        .map_err(|e| e.to_string())?;
    let ticks: Vec<u64> = {
        let view = readback
            .slice(..)
            .get_mapped_range()
            .map_err(|e| e.to_string())?;
        bytemuck::cast_slice(&view).to_vec()
    };
    readback.unmap();
    let period_ns = ctx.queue().get_timestamp_period() as f64;
    Ok(ticks
        .chunks_exact(2)
        .filter(|t| t[1] > t[0])
        .map(|t| (t[1] - t[0]) as f64 * period_ns * 1e-6)
        .collect())
}

/// A copy by a compute shader: `vec4<f32>` loads and stores, a grid-stride
/// loop, the same shape as the rule kernels. It moves 8 bytes per element,
/// the least any kernel that reads one buffer and writes another can: the
/// roofline the steps are measured against.
pub(super) const COPY_WGSL: &str = "
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&dst);
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < n; i = i + stride) {
        dst[i] = src[i];
    }
}
";

/// Median ms of one compute-shader copy of the gradient buffers onto the
/// parameter buffers ([`COPY_WGSL`]): from timestamps where the device has
/// them, else wall clock with `batch` submissions per wait.
pub(super) fn shader_copy_ms(
    ctx: &GpuContext,
    opt: &GpuOptimizer,
    samples: u32,
    batch: u32,
) -> Result<f64, String> {
    let device = ctx.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bench copy"),
        source: wgpu::ShaderSource::Wgsl(COPY_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("bench copy"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let max_groups = device.limits().max_compute_workgroups_per_dimension as u64;
    let groups: Vec<(wgpu::BindGroup, u32)> = opt
        .grad_buffers()
        .into_iter()
        .zip(opt.param_buffers())
        .map(|(src, dst)| {
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("bench copy"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: src.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: dst.as_entire_binding(),
                    },
                ],
            });
            let vec4s = dst.size() / 16;
            (group, vec4s.div_ceil(256).clamp(1, max_groups) as u32)
        })
        .collect();
    let record = |encoder: &mut wgpu::CommandEncoder,
                  writes: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bench copy"),
            timestamp_writes: writes,
        });
        pass.set_pipeline(&pipeline);
        for (group, n) in &groups {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*n, 1, 1);
        }
    };
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(e.to_string());
    }
    if device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        let count = (samples as usize * batch as usize).min(2048);
        let times = timed_passes(ctx, count, |encoder, writes| {
            record(encoder, Some(writes));
            Ok(())
        })?;
        if !times.is_empty() {
            return Ok(median_min(times).0);
        }
    }
    wall_ms_per_submission(ctx, samples, batch, || {
        let mut encoder = device.create_command_encoder(&Default::default());
        record(&mut encoder, None);
        ctx.queue().submit(Some(encoder.finish()));
    })
}

/// Median wall-clock ms of one `submit`: `samples` times, `batch`
/// submissions back to back and one wait, divided by `batch`.
pub(super) fn wall_ms_per_submission(
    ctx: &GpuContext,
    samples: u32,
    batch: u32,
    mut submit: impl FnMut(),
) -> Result<f64, String> {
    let mut times = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..batch {
            submit();
        }
        ctx.wait().map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3 / batch as f64);
    }
    Ok(median_min(times).0)
}

/// Median ms of one copy of the gradient buffers onto the parameter
/// buffers by the copy engine (`copy_buffer_to_buffer`), one submission per
/// copy as a step has, `batch` per wait.
pub(super) fn copy_times(
    ctx: &GpuContext,
    opt: &GpuOptimizer,
    samples: u32,
    batch: u32,
) -> Result<f64, String> {
    let device = ctx.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let pairs: Vec<(&wgpu::Buffer, &wgpu::Buffer)> = opt
        .grad_buffers()
        .into_iter()
        .zip(opt.param_buffers())
        .collect();
    let n_bytes = opt.layout().total() as u64 * 4;
    let copy = || {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench copy"),
        });
        let mut left = n_bytes;
        for (src, dst) in &pairs {
            let size = src.size().min(dst.size()).min(left);
            encoder.copy_buffer_to_buffer(src, 0, dst, 0, size);
            left -= size;
        }
        ctx.queue().submit(Some(encoder.finish()));
    };
    copy();
    ctx.wait().map_err(|e| e.to_string())?;
    let ms = wall_ms_per_submission(ctx, samples, batch, copy)?;
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(e.to_string());
    }
    Ok(ms)
}

/// The outcome of `--verify` for one rule and size.
pub(super) struct Verify {
    pub(super) steps: u32,
    pub(super) max_abs: f64,
    pub(super) max_err: f64,
    pub(super) limit: f64,
    /// With 8-bit state: how the GPU's codes compare with the CPU's.
    pub(super) codes: Option<CodeGap>,
}

/// The GPU's 8-bit codes against the CPU twin's after `--verify-steps`.
pub(super) struct CodeGap {
    pub(super) total: usize,
    pub(super) differing: usize,
    /// The largest difference of two codes of one element.
    pub(super) max_step: u8,
}

impl CodeGap {
    /// At most one code step, on at most 1 % of the elements: where the
    /// two backends' f32 results of the rule (a few ulps apart) fall on
    /// either side of a midpoint between two map entries
    /// (tests/precision_gpu.rs argues it; on lavapipe none differ).
    fn ok(&self) -> bool {
        self.max_step <= 1 && self.differing * 100 <= self.total
    }
}

impl Verify {
    pub(super) fn ok(&self) -> bool {
        self.max_err <= self.limit && self.codes.as_ref().is_none_or(CodeGap::ok)
    }

    pub(super) fn text(&self) -> String {
        let codes = match &self.codes {
            Some(c) => format!(" codes {}/{} differ", c.differing, c.total),
            None => String::new(),
        };
        format!(
            "{} {:.2}/{:.0}{codes}",
            if self.ok() { "ok" } else { "FAIL" },
            self.max_err,
            self.limit
        )
    }
}

/// Runs `steps` steps on a fresh GPU and a fresh CPU optimizer from the same
/// parameters and gradients and compares the parameters (see the module docs
/// for the bound).
#[allow(clippy::too_many_arguments)]
pub(super) fn verify(
    ctx: &GpuContext,
    preset: Preset,
    layout: BenchLayout,
    options: GpuOptions,
    steps: u32,
    params: &[&[f32]],
    grads: &[&[f32]],
    flat_params: &[f32],
    flat_grads: &[f32],
    precision: Precision,
) -> wgpu_optim::Result<Verify> {
    let int8 = precision.state_dtype == StateDtype::Int8Blockwise;
    let (gpu, gpu_codes) = {
        let mut opt = gpu_optimizer(ctx, preset, layout, params, options, precision)?;
        opt.set_clip_grad_norm(preset.clip())?;
        opt.write_grads(grads)?;
        for _ in 0..steps {
            opt.step_device()?;
        }
        let codes = if int8 {
            opt.checkpoint()?.quantized
        } else {
            Vec::new()
        };
        (opt.read_params_flat()?, codes)
    };
    let mut cpu = CpuOptimizer::with_precision(preset.config(), params, precision)?;
    cpu.set_clip_grad_norm(preset.clip())?;
    for _ in 0..steps {
        cpu.step_flat(flat_grads)?;
    }
    let mut v = compare(&gpu, cpu.params_flat(), flat_params, steps);
    if precision.param_dtype != ParamDtype::F32 || precision.state_dtype != StateDtype::F32 {
        // A stored 16-bit value may differ by one unit of its format (2⁻⁸
        // of it, 2¹⁵ ε) where the two f32 results straddle a rounding
        // boundary, once a step: the bound allows that much more.
        v.limit += 32768.0 * steps as f64;
    }
    if int8 {
        let cpu_codes = cpu.checkpoint().quantized;
        let mut gap = CodeGap {
            total: 0,
            differing: 0,
            max_step: 0,
        };
        for (g, c) in gpu_codes.iter().zip(&cpu_codes) {
            for (&a, &b) in g.codes.iter().zip(&c.codes) {
                gap.total += 1;
                if a != b {
                    gap.differing += 1;
                    gap.max_step = gap.max_step.max(a.abs_diff(b));
                }
            }
        }
        if gpu_codes.len() != cpu_codes.len() {
            gap.max_step = u8::MAX;
        }
        v.codes = Some(gap);
    }
    Ok(v)
}

/// The `--verify` verdict on parameters `gpu` and `cpu` reached from `start`
/// in `steps` steps (see the module docs for the bound).
pub(super) fn compare(gpu: &[f32], cpu: &[f32], start: &[f32], steps: u32) -> Verify {
    let (max_abs, max_err) = gpu
        .par_iter()
        .zip(cpu.par_iter())
        .zip(start.par_iter())
        .map(|((&g, &c), &p0)| {
            let (g, c, p0) = (g as f64, c as f64, p0 as f64);
            let diff = (g - c).abs();
            let scale = p0.abs().max(c.abs()) + (c - p0).abs();
            if diff == 0.0 {
                (0.0, 0.0)
            } else if diff.is_nan() || scale == 0.0 {
                (f64::INFINITY, f64::INFINITY)
            } else {
                (diff, diff / (f32::EPSILON as f64 * scale))
            }
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
    Verify {
        steps,
        max_abs,
        max_err,
        limit: (4.0 * steps as f64).max(8.0),
        codes: None,
    }
}
