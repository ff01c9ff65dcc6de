//! Many steps recorded into one command encoder with
//! `GpuOptimizer::record_step`, then one submission, end exactly where the
//! same steps submitted one at a time end: any number of steps without
//! `set_skip_nonfinite` (256, the old ring, and far past it), with clipping
//! and with LAMB; with `set_skip_nonfinite`, up to the 32 steps its table
//! holds, and the first step past that is refused with
//! `Error::UnsubmittedSteps` and changes nothing, and stepping goes on once
//! the encoder is submitted.
//!
//! Every comparison is GPU against GPU, bit for bit: both runs execute the
//! same compiled kernels on the same inputs with the same uniform scalars
//! (computed on the host from the same step numbers), and every kernel is
//! deterministic (fixed reduction order, no atomics), so any difference is
//! a step that ran with another step's scalars or state.
//!
//! Needs a GPU adapter: without one the tests fail with `Error::NoAdapter`'s
//! text, which says what to install.

mod common;
use common::{ctx, Rng};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{Adam, AdamW, ClipGradNorm, Config, Error, GpuOptimizer, GpuOptions, Lamb, Sgd};

/// A few thousand elements in three tensors (LAMB's trust ratios are per
/// tensor): small enough for lavapipe, a multiple of 4 for the vec4 kernels.
const LENGTHS: [usize; 3] = [1000, 3, 3093];
const TOTAL: usize = 4096;
/// The most steps any test records.
const MAX_STEPS: usize = 600;

fn initial() -> Vec<f32> {
    Rng(7).vec(TOTAL)
}

fn split(flat: &[f32]) -> Vec<&[f32]> {
    let mut out = Vec::new();
    let mut at = 0;
    for n in LENGTHS {
        out.push(&flat[at..at + n]);
        at += n;
    }
    out
}

/// The gradients of step `k` (from 0); where `bad(k)`, one element is NaN
/// or infinite.
fn grads(k: usize, bad: fn(usize) -> bool) -> Vec<f32> {
    let mut g = Rng(1000 + k as u64).vec(TOTAL);
    if bad(k) {
        g[(k * 131) % TOTAL] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
    }
    g
}

fn all_finite(_: usize) -> bool {
    false
}

/// Non-finite gradients at irregular steps, runs of them included.
fn some_bad(k: usize) -> bool {
    k % 7 == 3 || (40..45).contains(&k)
}

/// Every step's gradients, one after another in one buffer, so that the
/// encoder can copy step `k`'s into the gradient buffer before recording
/// step `k`.
fn gradient_source(bad: fn(usize) -> bool) -> wgpu::Buffer {
    let all: Vec<f32> = (0..MAX_STEPS).flat_map(|k| grads(k, bad)).collect();
    let b = ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("every step's gradients"),
        size: (all.len() * 4) as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx()
        .queue()
        .write_buffer(&b, 0, bytemuck::cast_slice(&all));
    b
}

fn optimizer(config: &Config, clip: Option<ClipGradNorm>, skip: bool) -> GpuOptimizer {
    let p = initial();
    let mut o = GpuOptimizer::new(ctx(), config.clone(), &split(&p)).unwrap();
    o.set_clip_grad_norm(clip).unwrap();
    o.set_skip_nonfinite(skip).unwrap();
    o
}

/// Copies step `k`'s gradients into `opt`'s gradient buffer and records
/// the step, both into `encoder`.
fn record(
    opt: &mut GpuOptimizer,
    encoder: &mut wgpu::CommandEncoder,
    source: &wgpu::Buffer,
    k: usize,
) -> Result<(), Error> {
    let bytes = (TOTAL * 4) as u64;
    let target = opt.grad_buffers()[0].clone();
    encoder.copy_buffer_to_buffer(source, k as u64 * bytes, &target, 0, bytes);
    opt.record_step(encoder, None)
}

fn encoder() -> wgpu::CommandEncoder {
    ctx().device().create_command_encoder(&Default::default())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Parameters, every state tensor, steps applied, SGD's buffer flag and
/// steps skipped, as bits.
type Snap = (Vec<u32>, Vec<Vec<u32>>, u64, bool, u64);

fn snap(c: &Checkpoint) -> Snap {
    (
        bits(c.params.as_ref().unwrap()),
        c.state.iter().map(|(_, v)| bits(v)).collect(),
        c.step,
        c.buffer_filled,
        c.skipped_steps,
    )
}

/// Where `steps` steps submitted one at a time end.
fn one_at_a_time(
    config: &Config,
    clip: Option<ClipGradNorm>,
    skip: bool,
    bad: fn(usize) -> bool,
    steps: usize,
) -> Snap {
    let mut o = optimizer(config, clip, skip);
    for k in 0..steps {
        o.step(&split(&grads(k, bad))).unwrap();
    }
    snap(&o.checkpoint().unwrap())
}

fn cases() -> Vec<(&'static str, Config, Option<ClipGradNorm>)> {
    vec![
        (
            "adam",
            Adam {
                lr: 1e-2,
                ..Adam::default()
            }
            .into(),
            None,
        ),
        (
            "adamw clip",
            AdamW {
                lr: 1e-2,
                ..AdamW::default()
            }
            .into(),
            Some(ClipGradNorm::new(5.0)),
        ),
        (
            "sgd momentum clip",
            Sgd {
                lr: 1e-2,
                momentum: 0.9,
                ..Sgd::default()
            }
            .into(),
            Some(ClipGradNorm::new(5.0)),
        ),
        (
            "lamb",
            Lamb {
                lr: 1e-2,
                ..Lamb::default()
            }
            .into(),
            None,
        ),
        (
            "lamb clip",
            Lamb {
                lr: 1e-2,
                ..Lamb::default()
            }
            .into(),
            Some(ClipGradNorm::new(5.0)),
        ),
    ]
}

/// Without `skip_nonfinite` any number of steps may be recorded into one
/// encoder: at the old ring's 256, one past it and far past it.
#[test]
fn any_number_of_steps_in_one_encoder() {
    let source = gradient_source(all_finite);
    for (what, config, clip) in cases() {
        // Every case at 257 and 600; Adam at each count.
        let counts: &[usize] = if what == "adam" {
            &[1, 255, 256, 257, 300, 600]
        } else {
            &[257, 600]
        };
        for &n in counts {
            let mut o = optimizer(&config, clip, false);
            let mut e = encoder();
            for k in 0..n {
                record(&mut o, &mut e, &source, k).unwrap();
            }
            assert_eq!(o.step_count(), n as u64, "{what} {n}");
            ctx().queue().submit(Some(e.finish()));
            // Bit for bit: same kernels, same scalars, deterministic
            // kernels (see the file's comment).
            assert!(
                snap(&o.checkpoint().unwrap())
                    == one_at_a_time(&config, clip, false, all_finite, n),
                "{what}: {n} steps recorded into one encoder are not the same steps one at a time"
            );
        }
    }
}

/// Recorded steps and `step_device` steps mixed, each encoder submitted
/// before the next `step_device`, the counts crossing the ring's size on
/// both paths: the same as every step one at a time.
#[test]
fn recorded_and_submitted_steps_mixed() {
    let source = gradient_source(all_finite);
    for (what, config, clip) in cases() {
        let mut o = optimizer(&config, clip, false);
        let mut k = 0;
        for (recorded, submitted) in [(200, 60), (300, 10), (3, 27)] {
            let mut e = encoder();
            for _ in 0..recorded {
                record(&mut o, &mut e, &source, k).unwrap();
                k += 1;
            }
            ctx().queue().submit(Some(e.finish()));
            for _ in 0..submitted {
                o.step(&split(&grads(k, all_finite))).unwrap();
                k += 1;
            }
        }
        assert_eq!(k, MAX_STEPS);
        // Bit for bit, as above.
        assert!(
            snap(&o.checkpoint().unwrap()) == one_at_a_time(&config, clip, false, all_finite, k),
            "{what}: recorded and submitted steps mixed"
        );
    }
}

/// What a refused call must leave as it was, read without waiting for the
/// unsubmitted encoder: the step count, the parameters and every state
/// tensor as the GPU holds them.
fn visible(o: &GpuOptimizer) -> (u64, Vec<u32>, Vec<Vec<u32>>) {
    (
        o.step_count(),
        bits(&o.read_params_flat().unwrap()),
        o.state_names()
            .iter()
            .map(|n| bits(&o.read_state_flat(n).unwrap()))
            .collect(),
    )
}

/// With `skip_nonfinite`, 32 steps recorded into one encoder are fine; the
/// 33rd (and every one after it, far past) is refused with
/// `UnsubmittedSteps` and changes nothing; once the encoder is submitted,
/// recording goes on, and the run is the one that stepped one at a time
/// (skipped steps, counters and all).
#[test]
fn skip_nonfinite_window_in_one_encoder() {
    let source = gradient_source(some_bad);
    for (what, config, clip) in cases() {
        let mut o = optimizer(&config, clip, true);
        let mut k = 0;
        for round in 0..3 {
            let mut e = encoder();
            for _ in 0..32 {
                record(&mut o, &mut e, &source, k).unwrap();
                k += 1;
            }
            let before = visible(&o);
            // One past the window, then far past it.
            for attempt in 0..40 {
                let mut extra = encoder();
                let err = record(&mut o, &mut extra, &source, k).unwrap_err();
                assert!(
                    matches!(err, Error::UnsubmittedSteps { .. }),
                    "{what} round {round} attempt {attempt}: {err:?}"
                );
                // The extra encoder is dropped unsubmitted: had the refused
                // step been counted, the steps after it would run with
                // another count's scalars, and the comparison below fails.
            }
            // `step_device` is refused the same way.
            let err = o.step_device().unwrap_err();
            assert!(
                matches!(err, Error::UnsubmittedSteps { .. }),
                "{what}: {err:?}"
            );
            // So are the calls that need every step run.
            for err in [o.skipped_steps().unwrap_err(), o.checkpoint().unwrap_err()] {
                assert!(
                    matches!(err, Error::UnsubmittedSteps { .. }),
                    "{what}: {err:?}"
                );
            }
            assert!(
                visible(&o) == before,
                "{what} round {round}: a refused call changed something"
            );
            ctx().queue().submit(Some(e.finish()));
            if round == 1 {
                // And one at a time in between.
                for _ in 0..5 {
                    o.step(&split(&grads(k, some_bad))).unwrap();
                    k += 1;
                }
            }
        }
        let reference = one_at_a_time(&config, clip, true, some_bad, k);
        assert!(reference.4 > 0, "{what}: the test skips no step");
        // Bit for bit, as above.
        assert!(
            snap(&o.checkpoint().unwrap()) == reference,
            "{what}: {k} steps recorded 32 to an encoder are not the same steps one at a time"
        );
        assert_eq!(o.skipped_steps().unwrap(), reference.4, "{what}");
    }
}

/// With `skip_nonfinite`, any number of steps recorded 32 to an encoder,
/// each encoder submitted before the next is started, never waiting in
/// between: the same as one at a time.
#[test]
fn skip_nonfinite_many_encoders() {
    let source = gradient_source(some_bad);
    for (what, config, clip) in cases() {
        let mut o = optimizer(&config, clip, true);
        for batch in 0..MAX_STEPS / 32 {
            let mut e = encoder();
            for k in batch * 32..(batch + 1) * 32 {
                record(&mut o, &mut e, &source, k).unwrap();
            }
            ctx().queue().submit(Some(e.finish()));
        }
        let n = MAX_STEPS / 32 * 32;
        // Bit for bit, as above.
        assert!(
            snap(&o.checkpoint().unwrap()) == one_at_a_time(&config, clip, true, some_bad, n),
            "{what}: {n} steps recorded 32 to an encoder"
        );
    }
}

/// `error_if_nonfinite` cannot be reported by a recorded step: refused with
/// nothing changed, however many steps the encoder already holds; the
/// steps recorded before are unaffected.
#[test]
fn error_if_nonfinite_refused_after_many_recorded() {
    let source = gradient_source(all_finite);
    let config: Config = Adam::default().into();
    let clip = ClipGradNorm::new(5.0);
    let mut o = optimizer(&config, Some(clip), false);
    let mut e = encoder();
    for k in 0..300 {
        record(&mut o, &mut e, &source, k).unwrap();
    }
    o.set_clip_grad_norm(Some(ClipGradNorm {
        error_if_nonfinite: true,
        ..clip
    }))
    .unwrap();
    let before = visible(&o);
    let err = record(&mut o, &mut e, &source, 300).unwrap_err();
    assert!(matches!(err, Error::InvalidOptions(_)), "{err:?}");
    assert!(
        visible(&o) == before,
        "a refused record_step changed something"
    );
    o.set_clip_grad_norm(Some(clip)).unwrap();
    // The encoder now also holds the refused call's gradient copy (the
    // caller's command, not the optimizer's): step 300's gradients sit in
    // the buffer, which the next recorded step overwrites with its own.
    record(&mut o, &mut e, &source, 300).unwrap();
    ctx().queue().submit(Some(e.finish()));
    // Bit for bit, as above.
    assert!(
        snap(&o.checkpoint().unwrap())
            == one_at_a_time(&config, Some(clip), false, all_finite, 301),
        "steps around a refused record_step"
    );
}

/// Options that are not hyperparameters still apply per recorded step: a
/// scalar vector width and several chunks.
#[test]
fn many_steps_in_one_encoder_scalar_kernels_and_chunks() {
    let source = gradient_source(all_finite);
    let config: Config = Adam::default().into();
    let build = || {
        let p = initial();
        GpuOptimizer::with_options(
            ctx(),
            config.clone(),
            &split(&p),
            GpuOptions {
                max_chunk_elements: Some(1024),
                vector_width: Some(1),
                ..GpuOptions::default()
            },
        )
        .unwrap()
    };
    let mut recorded = build();
    let bytes = (TOTAL * 4) as u64;
    let mut e = encoder();
    for k in 0..300 {
        // Each chunk has a gradient buffer of its own.
        let targets: Vec<wgpu::Buffer> = recorded.grad_buffers().into_iter().cloned().collect();
        let mut at = 0;
        for t in &targets {
            e.copy_buffer_to_buffer(&source, k as u64 * bytes + at, t, 0, t.size());
            at += t.size();
        }
        recorded.record_step(&mut e, None).unwrap();
    }
    ctx().queue().submit(Some(e.finish()));
    let mut one = build();
    for k in 0..300 {
        one.step(&split(&grads(k, all_finite))).unwrap();
    }
    // Bit for bit, as above.
    assert!(
        snap(&recorded.checkpoint().unwrap()) == snap(&one.checkpoint().unwrap()),
        "300 recorded steps with scalar kernels over 4 chunks"
    );
}
