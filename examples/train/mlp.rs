//! A small network trained on the GPU: the data, the model's buffers and
//! kernels (`mlp.wgsl`, written here, not in the library), and the training
//! loop that hands the parameter and gradient buffers to
//! [`GpuOptimizer::from_buffers_with_groups`] (the biases in a group without
//! weight decay) and records the library's step after the backward pass in
//! the same command encoder.
//!
//! Shared by the `train` example and `tests/train.rs` (through `#[path]`),
//! so the test runs exactly the code the example runs.

#![allow(dead_code)] // the example and the test each use part of it

use wgpu::util::DeviceExt;
use wgpu_optim::precision::Precision;
use wgpu_optim::schedule::{GroupScheduler, Schedule};
use wgpu_optim::{Config, CpuOptimizer, GpuContext, GpuOptimizer, GpuOptions, ParamGroup};

/// Errors of the example: the library's, wgpu's, the data file's.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The data set: the 1797 handwritten digits of scikit-learn's `load_digits`
/// (UCI "Optical Recognition of Handwritten Digits", test part), 8×8 images
/// of pixel counts 0..=16, one sample per line, the label last
/// (`examples/data/README.md` says where it comes from).
const DIGITS_CSV: &str = include_str!("../data/digits.csv");

/// Inputs per sample (8×8 pixels).
pub const FEATURES: usize = 64;
/// Classes (the digits 0 to 9).
pub const CLASSES: usize = 10;
/// Samples held out for testing (20 %).
pub const TEST_SAMPLES: usize = 360;

/// The digits, scaled to [0, 1], split at random (a fixed seed) into a
/// training and a test set.
pub struct Digits {
    /// `samples × FEATURES` pixel values in [0, 1].
    pub x: Vec<f32>,
    /// The digit of each sample.
    pub labels: Vec<u32>,
    /// Sample numbers of the training set.
    pub train: Vec<u32>,
    /// Sample numbers of the test set.
    pub test: Vec<u32>,
}

impl Digits {
    /// Reads the shipped CSV and splits it (the same split every time).
    pub fn load() -> Result<Self, Error> {
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for (n, line) in DIGITS_CSV.lines().enumerate() {
            let fields: Vec<&str> = line.trim().split(',').collect();
            if fields.len() != FEATURES + 1 {
                return Err(format!(
                    "digits.csv line {}: {} fields, expected {}",
                    n + 1,
                    fields.len(),
                    FEATURES + 1
                )
                .into());
            }
            for f in &fields[..FEATURES] {
                let v: f32 = f.parse()?;
                x.push(v / 16.0);
            }
            let label: u32 = fields[FEATURES].parse()?;
            if label as usize >= CLASSES {
                return Err(format!("digits.csv line {}: label {label}", n + 1).into());
            }
            labels.push(label);
        }
        let mut all: Vec<u32> = (0..labels.len() as u32).collect();
        SplitMix(0xD161_7500).shuffle(&mut all);
        let test = all.split_off(all.len() - TEST_SAMPLES);
        Ok(Digits {
            x,
            labels,
            train: all,
            test,
        })
    }
}

/// SplitMix64: a small seeded generator, enough to shuffle and initialise.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [−1, 1).
    pub fn symmetric(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The network's shape and how it is trained (besides the optimizer).
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    /// Hidden units.
    pub hidden: usize,
    /// Samples per step (the last step of an epoch takes what is left).
    pub batch: usize,
    /// Seeds the initial weights and the order of the samples.
    pub seed: u64,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            hidden: 64,
            batch: 32,
            seed: 1,
        }
    }
}

/// Lengths of the parameter tensors, packed in this order: W1 (inputs ×
/// hidden), b1, W2 (hidden × classes), b2.
pub fn tensor_lengths(hidden: usize) -> [usize; 4] {
    [FEATURES * hidden, hidden, hidden * CLASSES, CLASSES]
}

/// PyTorch's `nn.Linear` initialisation: weights and biases uniform in
/// `±1/sqrt(fan_in)`.
pub fn initial_params(hidden: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let [w1, b1, w2, b2] = tensor_lengths(hidden);
    let mut out = Vec::with_capacity(w1 + b1 + w2 + b2);
    for (len, fan_in) in [(w1 + b1, FEATURES), (w2 + b2, hidden)] {
        let bound = 1.0 / (fan_in as f64).sqrt();
        out.extend((0..len).map(|_| (rng.symmetric() * bound) as f32));
    }
    out
}

/// The step record the kernels read (`struct Step` in `mlp.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepUniform {
    start: u32,
    size: u32,
    slot: u32,
    _pad: u32,
}

/// Slots of the step-uniform ring are this far apart (the largest
/// `min_uniform_buffer_offset_alignment` a device asks for).
const SLOT: u64 = 256;
/// Steps recorded between two submissions; the optimizer takes up to 256.
const STEPS_PER_SUBMIT: usize = 128;

/// The model on the GPU: data, parameters, gradients, activations, the
/// kernels, and the library's optimizer stepping the parameter buffer.
pub struct Mlp {
    ctx: GpuContext,
    /// The optimizer, built on this model's own parameter and gradient
    /// buffers with [`GpuOptimizer::from_buffers_with_groups`]: the weights
    /// in group 0, the biases in group 1 without weight decay where the
    /// rule has some ([`bias_config`]).
    pub opt: GpuOptimizer,
    hyper: Hyper,
    n_train: usize,
    n_test: usize,
    forward_hidden: wgpu::ComputePipeline,
    forward_output: wgpu::ComputePipeline,
    reduce_loss: wgpu::ComputePipeline,
    backward_output: wgpu::ComputePipeline,
    backward_hidden: wgpu::ComputePipeline,
    backward_input: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    /// The sample numbers, `[training order | test set | probe batch]`.
    order: wgpu::Buffer,
    /// (mean loss, accuracy) per slot: one per training step of an epoch,
    /// then the test set's, then the probe's.
    results: wgpu::Buffer,
    rng: SplitMix,
    train: Vec<u32>,
    /// Steps taken so far.
    steps: u64,
    /// The learning-rate schedule, if any: the lr of each step goes to the
    /// GPU with the step's other scalars (no recompilation).
    scheduler: Option<GroupScheduler>,
    /// With a low-precision mode ([`Mlp::with_precision`]): the optimizer
    /// on the CPU backend in that mode, which steps instead of `opt`; the
    /// GPU's buffers then get its parameters after each step.
    cpu: Option<CpuOptimizer>,
}

/// `config` without weight decay, for the biases' group (as torch recipes
/// leave biases and norms undecayed); `None` where there is no weight
/// decay to take off, or where the GPU takes one group (LAMB's tile
/// kernels): all tensors are then one group.
pub fn bias_config(config: &Config) -> Option<Config> {
    let mut c = config.clone();
    let decay = match &mut c {
        Config::Sgd(r) => &mut r.weight_decay,
        Config::Adagrad(r) => &mut r.weight_decay,
        Config::RmsProp(r) => &mut r.weight_decay,
        Config::Adam(r) => &mut r.weight_decay,
        Config::AdamW(r) => &mut r.weight_decay,
        Config::Adadelta(r) => &mut r.weight_decay,
        Config::Lion(r) => &mut r.weight_decay,
        Config::AdEMAMix(r) => &mut r.weight_decay,
        Config::RAdam(r) => &mut r.weight_decay,
        Config::Adamax(r) => &mut r.weight_decay,
        Config::NAdam(r) => &mut r.weight_decay,
        Config::Asgd(r) => &mut r.weight_decay,
        Config::SgdScheduleFree(r) => &mut r.weight_decay,
        Config::AdamWScheduleFree(r) => &mut r.weight_decay,
        _ => return None,
    };
    if *decay == 0.0 {
        return None;
    }
    *decay = 0.0;
    Some(c)
}

impl Mlp {
    /// Uploads the data and the initial parameters ([`initial_params`]),
    /// compiles the kernels and builds `config`'s optimizer on the
    /// parameter and gradient buffers.
    pub fn new(
        ctx: &GpuContext,
        data: &Digits,
        hyper: Hyper,
        config: impl Into<Config>,
    ) -> Result<Self, Error> {
        let device = ctx.device();
        let h = hyper.hidden;
        let n_train = data.train.len();
        let n_test = data.test.len();
        let rows = hyper.batch.max(n_test);
        let steps = n_train.div_ceil(hyper.batch);
        let storage = wgpu::BufferUsages::STORAGE;
        let init = |label: &str, contents: &[u8], usage: wgpu::BufferUsages| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let scratch = |label: &str, floats: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (floats.max(1) * 4) as u64,
                usage: storage,
                mapped_at_creation: false,
            })
        };
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);

        let x = init("digits", bytemuck::cast_slice(&data.x), storage);
        let labels = init("labels", bytemuck::cast_slice(&data.labels), storage);
        let mut order_init = data.train.clone();
        order_init.extend_from_slice(&data.test);
        order_init.resize(n_train + n_test + hyper.batch, 0);
        let order = init(
            "order",
            bytemuck::cast_slice(&order_init),
            storage | wgpu::BufferUsages::COPY_DST,
        );
        // The model's parameters and gradients: the buffers the optimizer steps.
        let params = init(
            "parameters",
            bytemuck::cast_slice(&initial_params(h, hyper.seed)),
            storage | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let grads = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gradients"),
            size: (tensor_lengths(h).iter().sum::<usize>() * 4) as u64,
            usage: storage | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let hidden = scratch("hidden", rows * h);
        let dlogits = scratch("dlogits", rows * CLASSES);
        let dhidden = scratch("dhidden", rows * h);
        let per_sample = scratch("per-sample loss", rows * 2);
        let results = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("results"),
            size: ((steps + 2) * 8) as u64,
            usage: storage | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        // The step records never change: step s of an epoch takes rows
        // s·batch.. of the training order; then the test set, then the probe.
        let mut ring = vec![0u8; (steps + 2) * SLOT as usize];
        let mut put = |slot: usize, start: usize, size: usize| {
            let u = StepUniform {
                start: start as u32,
                size: size as u32,
                slot: slot as u32,
                _pad: 0,
            };
            let at = slot * SLOT as usize;
            ring[at..at + 16].copy_from_slice(bytemuck::bytes_of(&u));
        };
        for s in 0..steps {
            let start = s * hyper.batch;
            put(s, start, hyper.batch.min(n_train - start));
        }
        put(steps, n_train, n_test);
        put(steps + 1, n_train + n_test, hyper.batch);
        let uniforms = init("steps", &ring, wgpu::BufferUsages::UNIFORM);

        let source = format!(
            "const D: u32 = {FEATURES}u;\nconst H: u32 = {h}u;\nconst C: u32 = {CLASSES}u;\n{}",
            include_str!("mlp.wgsl")
        );
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mlp.wgsl"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let entry = |binding: u32, ty: wgpu::BindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty,
            count: None,
        };
        let buffer = |read_only: bool| wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        };
        let mut entries = vec![entry(
            0,
            wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(16),
            },
        )];
        entries.extend((1..=4).map(|b| entry(b, buffer(true))));
        entries.extend((5..=10).map(|b| entry(b, buffer(false))));
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mlp"),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mlp"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |entry_point: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry_point),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry_point),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let bind_group = {
            fn whole(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
                wgpu::BindGroupEntry {
                    binding,
                    resource: buffer.as_entire_binding(),
                }
            }
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("mlp"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniforms,
                            offset: 0,
                            size: wgpu::BufferSize::new(16),
                        }),
                    },
                    whole(1, &x),
                    whole(2, &labels),
                    whole(3, &order),
                    whole(4, &params),
                    whole(5, &grads),
                    whole(6, &hidden),
                    whole(7, &dlogits),
                    whole(8, &dhidden),
                    whole(9, &per_sample),
                    whole(10, &results),
                ],
            })
        };
        let forward_hidden = pipeline("forward_hidden");
        let forward_output = pipeline("forward_output");
        let reduce_loss = pipeline("reduce_loss");
        let backward_output = pipeline("backward_output");
        let backward_hidden = pipeline("backward_hidden");
        let backward_input = pipeline("backward_input");
        if let Some(e) = pollster::block_on(validation.pop()) {
            return Err(format!("building the model: {e}").into());
        }

        // The library steps the model's own buffers in place.
        // Tensors [w1, b1, w2, b2]: the weights in group 0, the biases in
        // group 1 without weight decay.
        let config = config.into();
        let groups = match bias_config(&config) {
            Some(bias) => vec![
                ParamGroup::new(config, vec![0, 2]),
                ParamGroup::new(bias, vec![1, 3]),
            ],
            None => vec![ParamGroup::new(config, vec![0, 1, 2, 3])],
        };
        let lengths = tensor_lengths(h);
        let opt = GpuOptimizer::from_buffers_with_groups(
            ctx,
            &lengths,
            params,
            grads,
            &groups,
            GpuOptions::default(),
        )?;
        Ok(Mlp {
            ctx: ctx.clone(),
            opt,
            hyper,
            n_train,
            n_test,
            forward_hidden,
            forward_output,
            reduce_loss,
            backward_output,
            backward_hidden,
            backward_input,
            bind_group,
            order,
            results,
            rng: SplitMix(hyper.seed ^ 0x0DDE_5EED),
            train: data.train.clone(),
            steps: 0,
            scheduler: None,
            cpu: None,
        })
    }

    /// As [`Mlp::new`], with the optimizer's parameters and state kept as
    /// `precision` says, all tensors one group: the step runs on the CPU
    /// backend ([`CpuOptimizer::with_precision`]; the GPU kernels keep f32
    /// only), its gradients read back and its parameters (16-bit values,
    /// widened) written to the model's buffer each step, so the model
    /// computes with exactly the weights that mode stores.
    pub fn with_precision(
        ctx: &GpuContext,
        data: &Digits,
        hyper: Hyper,
        config: impl Into<Config>,
        precision: Precision,
    ) -> Result<Self, Error> {
        let config = config.into();
        let mut model = Mlp::new(ctx, data, hyper, config.clone())?;
        let init = initial_params(hyper.hidden, hyper.seed);
        let layout = model.opt.layout().clone();
        let cpu = CpuOptimizer::with_precision(config, &layout.split(&init)?, precision)?;
        model.opt.write_params(&cpu.params())?;
        model.cpu = Some(cpu);
        Ok(model)
    }

    /// One step on the CPU optimizer: the gradients the kernels wrote, read
    /// back; the step; its parameters to the model's buffer.
    fn step_on_cpu(&mut self) -> Result<(), Error> {
        let Some(cpu) = &mut self.cpu else {
            return Ok(());
        };
        let total = self.opt.layout().total();
        let grads = read(&self.ctx, self.opt.grad_buffers()[0], 0, total)?;
        if let Some(scheduler) = &mut self.scheduler {
            scheduler.apply(cpu)?;
            scheduler.advance();
        }
        cpu.step(&self.opt.layout().split(&grads)?)?;
        self.opt.write_params(&cpu.params())?;
        Ok(())
    }

    /// Follows `schedule` (positions count training steps, the first 0)
    /// from the next step on, from the optimizer's learning rate as base.
    pub fn set_schedule(&mut self, schedule: Schedule) -> Result<(), Error> {
        let mut scheduler = match &self.cpu {
            Some(cpu) => GroupScheduler::new(schedule, cpu)?,
            None => GroupScheduler::new(schedule, &self.opt)?,
        };
        scheduler.set_position(self.steps);
        self.scheduler = Some(scheduler);
        Ok(())
    }

    /// Training steps in one pass over the training set.
    pub fn steps_per_epoch(&self) -> usize {
        self.n_train.div_ceil(self.hyper.batch)
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// Records the forward pass (and with `backward`, the gradients) of
    /// ring slot `slot`'s rows into `encoder`.
    fn record_model(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        slot: usize,
        rows: usize,
        backward: bool,
    ) {
        let h = self.hyper.hidden;
        let groups = |n: usize| n.div_ceil(64) as u32;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("mlp"),
            timestamp_writes: None,
        });
        pass.set_bind_group(0, &self.bind_group, &[(slot as u64 * SLOT) as u32]);
        let mut run = |pipeline: &wgpu::ComputePipeline, workgroups: u32| {
            pass.set_pipeline(pipeline);
            pass.dispatch_workgroups(workgroups, 1, 1);
        };
        run(&self.forward_hidden, groups(rows * h));
        run(&self.forward_output, groups(rows));
        run(&self.reduce_loss, 1);
        if backward {
            run(&self.backward_output, groups(h * CLASSES + CLASSES));
            run(&self.backward_hidden, groups(rows * h));
            run(&self.backward_input, groups(FEATURES * h + h));
        }
    }

    /// One pass over the training set in a new random order: for each
    /// batch the forward pass, the loss, the gradients and the optimizer's
    /// step, all recorded into one command encoder (a submission every
    /// 128 steps). Nothing but the losses is read back: returns each
    /// step's mean loss over its batch.
    pub fn train_epoch(&mut self) -> Result<Vec<f32>, Error> {
        self.rng.shuffle(&mut self.train);
        let queue = self.ctx.queue();
        queue.write_buffer(&self.order, 0, bytemuck::cast_slice(&self.train));
        let steps = self.steps_per_epoch();
        let device = self.ctx.device();
        if self.cpu.is_some() {
            // One submission a step: the CPU steps between them.
            for s in 0..steps {
                let rows = self.hyper.batch.min(self.n_train - s * self.hyper.batch);
                let mut encoder = self
                    .ctx
                    .device()
                    .create_command_encoder(&Default::default());
                self.record_model(&mut encoder, s, rows, true);
                self.ctx.queue().submit(Some(encoder.finish()));
                self.step_on_cpu()?;
            }
            self.steps += steps as u64;
            let results = self.read_results(0, steps)?;
            return Ok(results.iter().map(|r| r[0]).collect());
        }
        let mut first = 0;
        while first < steps {
            let last = (first + STEPS_PER_SUBMIT).min(steps);
            let mut encoder = device.create_command_encoder(&Default::default());
            for s in first..last {
                let rows = self.hyper.batch.min(self.n_train - s * self.hyper.batch);
                self.record_model(&mut encoder, s, rows, true);
                if let Some(scheduler) = &mut self.scheduler {
                    scheduler.apply(&mut self.opt)?;
                    scheduler.advance();
                }
                // The library's fused update, on the buffers the kernels
                // above just wrote, in the same encoder.
                self.opt.record_step(&mut encoder, None)?;
            }
            queue.submit(Some(encoder.finish()));
            first = last;
        }
        self.steps += steps as u64;
        let results = self.read_results(0, steps)?;
        Ok(results.iter().map(|r| r[0]).collect())
    }

    /// The test set's mean loss and accuracy (forward pass only).
    pub fn evaluate(&mut self) -> Result<(f32, f32), Error> {
        // A schedule-free rule is evaluated at its average x, as the
        // package's `eval()` switches to, and back to y for training.
        let schedule_free = matches!(
            self.opt.config(),
            Config::SgdScheduleFree(_) | Config::AdamWScheduleFree(_)
        );
        if schedule_free {
            self.opt.set_eval(true)?;
        }
        let slot = self.steps_per_epoch();
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        self.record_model(&mut encoder, slot, self.n_test, false);
        self.ctx.queue().submit(Some(encoder.finish()));
        let r = self.read_results(slot, 1)?;
        if schedule_free {
            self.opt.set_eval(false)?;
        }
        Ok((r[0][0], r[0][1]))
    }

    /// The mean loss and the gradients (packed as [`tensor_lengths`]) of
    /// the batch `samples` at the current parameters, without a step:
    /// what the kernels computed, read back for the test to check.
    pub fn probe(&mut self, samples: &[u32]) -> Result<(f32, Vec<f32>), Error> {
        if samples.len() != self.hyper.batch {
            return Err(format!("probe takes a batch of {}", self.hyper.batch).into());
        }
        let slot = self.steps_per_epoch() + 1;
        let at = ((self.n_train + self.n_test) * 4) as u64;
        self.ctx
            .queue()
            .write_buffer(&self.order, at, bytemuck::cast_slice(samples));
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        self.record_model(&mut encoder, slot, samples.len(), true);
        self.ctx.queue().submit(Some(encoder.finish()));
        let loss = self.read_results(slot, 1)?[0][0];
        let grads = read(
            &self.ctx,
            self.opt.grad_buffers()[0],
            0,
            self.opt.layout().total(),
        )?;
        Ok((loss, grads))
    }

    /// (mean loss, accuracy) of `count` slots from `first`.
    fn read_results(&self, first: usize, count: usize) -> Result<Vec<[f32; 2]>, Error> {
        let v = read(&self.ctx, &self.results, first * 2, count * 2)?;
        Ok(v.chunks(2).map(|c| [c[0], c[1]]).collect())
    }
}

/// Reads `len` floats from element `first` of `buffer` (which has
/// `COPY_SRC`), waiting for the GPU.
fn read(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    first: usize,
    len: usize,
) -> Result<Vec<f32>, Error> {
    let device = ctx.device();
    let size = (len * 4) as u64;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, (first * 4) as u64, &staging, 0, size);
    ctx.queue().submit(Some(encoder.finish()));
    let (tx, rx) = std::sync::mpsc::channel();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
    ctx.wait()?;
    rx.recv()??;
    let out = bytemuck::cast_slice(&staging.slice(..).get_mapped_range()?).to_vec();
    staging.unmap();
    Ok(out)
}

/// The same network's mean loss and gradients on the CPU, in `f64`: the
/// reference the test holds the WGSL kernels to.
pub fn cpu_loss_and_grads(
    data: &Digits,
    hidden: usize,
    params: &[f32],
    samples: &[u32],
) -> (f64, Vec<f64>) {
    let h = hidden;
    let [w1_len, b1_len, w2_len, _] = tensor_lengths(h);
    let p: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let (w1, rest) = p.split_at(w1_len);
    let (b1, rest) = rest.split_at(b1_len);
    let (w2, b2) = rest.split_at(w2_len);
    let mut g = vec![0.0; p.len()];
    let (gw1, grest) = g.split_at_mut(w1_len);
    let (gb1, grest) = grest.split_at_mut(b1_len);
    let (gw2, gb2) = grest.split_at_mut(w2_len);
    let n = samples.len() as f64;
    let mut loss = 0.0;
    for &s in samples {
        let x = &data.x[s as usize * FEATURES..][..FEATURES];
        let label = data.labels[s as usize] as usize;
        let act: Vec<f64> = (0..h)
            .map(|j| {
                let pre = b1[j]
                    + (0..FEATURES)
                        .map(|k| x[k] as f64 * w1[k * h + j])
                        .sum::<f64>();
                pre.max(0.0)
            })
            .collect();
        let z: Vec<f64> = (0..CLASSES)
            .map(|c| b2[c] + (0..h).map(|j| act[j] * w2[j * CLASSES + c]).sum::<f64>())
            .collect();
        let top = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = z.iter().map(|v| (v - top).exp()).sum();
        loss += total.ln() - (z[label] - top);
        let dz: Vec<f64> = (0..CLASSES)
            .map(|c| ((z[c] - top).exp() / total - if c == label { 1.0 } else { 0.0 }) / n)
            .collect();
        for j in 0..h {
            for c in 0..CLASSES {
                gw2[j * CLASSES + c] += act[j] * dz[c];
            }
        }
        for c in 0..CLASSES {
            gb2[c] += dz[c];
        }
        for j in 0..h {
            if act[j] > 0.0 {
                let dh: f64 = (0..CLASSES).map(|c| dz[c] * w2[j * CLASSES + c]).sum();
                for k in 0..FEATURES {
                    gw1[k * h + j] += x[k] as f64 * dh;
                }
                gb1[j] += dh;
            }
        }
    }
    (loss / n, g)
}
