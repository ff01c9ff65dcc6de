//! `GpuOptimizer::from_views`: tensors at offsets in the caller's buffers.
//!
//! The view kernels run the same rule text as the packed kernels (the
//! rule's file with its `param[i]` / `grad[i]` rewritten), element by
//! element, so on the same data they must give the same bits as the packed
//! path: every comparison here is exact. The reduction of clipping sums the
//! same tiles in the same order as the packed path when no buffer is
//! windowed (both cut tensors at 4096 elements from their start), so its
//! norm is exact too.

mod common;

use common::{bits, ctx, Rng};
use wgpu_optim::{
    Adam, AdamW, AdamWScheduleFree, ClipGradNorm, Config, Error, GpuOptimizer, GpuOptions, Lamb,
    ParamGroup, RmsProp, Sgd, TensorView,
};

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A value no step writes: bytes between views must keep it.
const SENTINEL: u32 = 0x7fc0_dead;

/// Tensors of mixed lengths: an empty one, one shorter than a vec4, one
/// past a tile (4096).
const LENGTHS: &[usize] = &[300, 0, 5, 63, 4500, 17];

/// Lengths in fours: at offsets that are multiples of 16 bytes the view
/// kernel loads vec4s.
const LENGTHS_IN_FOURS: &[usize] = &[300, 0, 8, 64, 4500, 20];

fn buffer(label: &str, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes,
        usage,
        mapped_at_creation: false,
    })
}

/// `lengths` placed as a pool would: tensor `i` in buffer `i % pools`, each
/// at the next multiple of `align` bytes after a gap of `align` bytes (so
/// no view starts at byte 0 of its buffer), every buffer filled with
/// [`SENTINEL`] first. Returns the buffers and the views.
fn pooled(
    label: &str,
    lengths: &[usize],
    pools: usize,
    align: u64,
) -> (Vec<wgpu::Buffer>, Vec<TensorView>) {
    let mut ends = vec![0u64; pools];
    let offsets: Vec<(usize, u64)> = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let b = i % pools;
            let at = (ends[b] + align).div_ceil(align) * align;
            ends[b] = at + n as u64 * 4;
            (b, at)
        })
        .collect();
    let buffers: Vec<wgpu::Buffer> = ends
        .iter()
        .map(|&end| {
            let size = end + 64;
            let b = buffer(label, size, USAGE);
            let fill = vec![SENTINEL; (size / 4) as usize];
            ctx()
                .queue()
                .write_buffer(&b, 0, bytemuck::cast_slice(&fill));
            b
        })
        .collect();
    let views = offsets
        .iter()
        .zip(lengths)
        .map(|(&(b, at), &n)| TensorView::new(buffers[b].clone(), at, n))
        .collect();
    (buffers, views)
}

/// The whole of `b`, as u32 bits.
fn read_all(b: &wgpu::Buffer) -> Vec<u32> {
    let staging = buffer(
        "read",
        b.size(),
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    let mut encoder = ctx().device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(b, 0, &staging, 0, b.size());
    ctx().queue().submit(Some(encoder.finish()));
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx().wait().unwrap();
    let out: Vec<u32> = {
        let mapped = staging.slice(..).get_mapped_range().unwrap();
        let bytes: &[u8] = &mapped;
        bytemuck::cast_slice(bytes).to_vec()
    };
    staging.unmap();
    out
}

/// Every word of the buffers outside the views still holds [`SENTINEL`].
fn assert_outside_untouched(buffers: &[wgpu::Buffer], views: &[TensorView]) {
    for b in buffers {
        let words = read_all(b);
        let mut inside = vec![false; words.len()];
        for v in views.iter().filter(|v| &v.buffer == b) {
            let at = (v.offset / 4) as usize;
            inside[at..at + v.len].iter_mut().for_each(|x| *x = true);
        }
        for (k, (w, inside)) in words.iter().zip(inside).enumerate() {
            assert!(
                inside || *w == SENTINEL,
                "word {k} outside the views changed"
            );
        }
    }
}

fn tensors(rng: &mut Rng, lengths: &[usize]) -> Vec<Vec<f32>> {
    lengths.iter().map(|&n| rng.vec(n)).collect()
}

fn refs(t: &[Vec<f32>]) -> Vec<&[f32]> {
    t.iter().map(|t| t.as_slice()).collect()
}

/// Optimizers over views built from `init`, and over packed buffers of
/// their own, stepped alike; every step's parameters and state compared
/// bit for bit. Steps go every way a caller can: `step` (host gradients),
/// `write_grads` + `step_device`, `record_step` into the caller's encoder.
/// `width`: the vector width the view kernel must have picked.
#[allow(clippy::too_many_arguments)]
fn compare_with_packed(
    config: Config,
    options: GpuOptions,
    clip: bool,
    lengths: &[usize],
    pools: usize,
    align: u64,
    width: u32,
) {
    let label = format!("{config:?}");
    compare_built_with_packed(
        &label,
        |p, g| GpuOptimizer::from_views_with_options(ctx(), config.clone(), p, g, options.clone()),
        |init| GpuOptimizer::with_options(ctx(), config.clone(), init, options.clone()),
        clip,
        lengths,
        pools,
        align,
        width,
    );
}

/// As [`compare_with_packed`], the optimizer over views made by `views`
/// from (parameter views, gradient views), the packed one by `packed`
/// from the initial tensors.
#[allow(clippy::too_many_arguments)]
fn compare_built_with_packed(
    label: &str,
    views: impl FnOnce(Vec<TensorView>, Vec<TensorView>) -> Result<GpuOptimizer, Error>,
    packed: impl FnOnce(&[&[f32]]) -> Result<GpuOptimizer, Error>,
    clip: bool,
    lengths: &[usize],
    pools: usize,
    align: u64,
    width: u32,
) {
    let mut rng = Rng(7);
    let init = tensors(&mut rng, lengths);
    let (p_buffers, p_views) = pooled("params", lengths, pools, align);
    // Another arrangement for the gradients: each gradient at another
    // offset than its parameter.
    let (g_buffers, g_views) = pooled("grads", lengths, pools + 1, align);
    let mut views = views(p_views.clone(), g_views.clone()).unwrap();
    assert_eq!(views.vector_width(), width, "{label}");
    views.write_params(&refs(&init)).unwrap();
    let mut packed = packed(&refs(&init)).unwrap();
    if clip {
        // A max_norm below the norm of these gradients: clipping scales.
        for opt in [&mut views, &mut packed] {
            opt.set_clip_grad_norm(Some(ClipGradNorm::new(0.5)))
                .unwrap();
        }
    }
    for step in 0..3 {
        let grads = tensors(&mut rng, lengths);
        for opt in [&mut views, &mut packed] {
            match step {
                0 => opt.step(&refs(&grads)).unwrap(),
                1 => {
                    opt.write_grads(&refs(&grads)).unwrap();
                    opt.step_device().unwrap();
                }
                _ => {
                    opt.write_grads(&refs(&grads)).unwrap();
                    let mut encoder = ctx().device().create_command_encoder(&Default::default());
                    opt.record_step(&mut encoder, None).unwrap();
                    ctx().queue().submit(Some(encoder.finish()));
                }
            }
        }
        let name = format!("{label}, step {step}");
        assert_eq!(
            bits(&views.read_params_flat().unwrap()),
            bits(&packed.read_params_flat().unwrap()),
            "{name}: parameters"
        );
        for state in packed.state_names().to_vec() {
            assert_eq!(
                bits(&views.read_state_flat(state).unwrap()),
                bits(&packed.read_state_flat(state).unwrap()),
                "{name}: {state}"
            );
        }
        if clip {
            assert_eq!(
                views.last_grad_norm().unwrap().map(f32::to_bits),
                packed.last_grad_norm().unwrap().map(f32::to_bits),
                "{name}: the gradient norm"
            );
        }
    }
    // Whatever moved, moved: the steps were not no-ops.
    assert_ne!(views.read_params().unwrap(), init);
    assert_outside_untouched(&p_buffers, &p_views);
    assert_outside_untouched(&g_buffers, &g_views);
}

fn sgd_momentum() -> Config {
    Sgd {
        lr: 0.01,
        momentum: 0.9,
        ..Sgd::default()
    }
    .into()
}

/// Adam, AdamW, SGD with momentum and RMSprop (three state slots: the most
/// bindings a view kernel has) equal the packed path, at 256-byte offsets
/// (burn's pool) in three buffers and at 4-byte offsets in two (scalar
/// loads), and with lengths in fours at 256- and 16-byte offsets (vec4
/// loads).
#[test]
fn views_equal_the_packed_path() {
    let rmsprop: Config = RmsProp {
        momentum: 0.5,
        centered: true,
        ..RmsProp::default()
    }
    .into();
    let configs: [Config; 4] = [
        Adam::default().into(),
        AdamW::default().into(),
        sgd_momentum(),
        rmsprop,
    ];
    for config in configs {
        let o = GpuOptions::default;
        compare_with_packed(config.clone(), o(), false, LENGTHS, 3, 256, 1);
        compare_with_packed(config.clone(), o(), false, LENGTHS, 2, 4, 1);
        compare_with_packed(config.clone(), o(), false, LENGTHS_IN_FOURS, 3, 256, 4);
        compare_with_packed(config, o(), false, LENGTHS_IN_FOURS, 2, 16, 4);
    }
}

/// With clipping on (the reduction reads the gradients through the views)
/// the norm and the steps are the packed path's, bit for bit.
#[test]
fn views_clip_as_the_packed_path() {
    let adam: Config = Adam::default().into();
    compare_with_packed(
        adam.clone(),
        GpuOptions::default(),
        true,
        LENGTHS,
        2,
        256,
        1,
    );
    compare_with_packed(
        adam,
        GpuOptions::default(),
        true,
        LENGTHS_IN_FOURS,
        2,
        256,
        4,
    );
}

/// Buffers larger than a (small) chunk are bound in windows: tensors
/// straddle windows and state chunks of 64 elements, and still step as the
/// packed path with the same chunks.
#[test]
fn windows_of_large_buffers() {
    let options = GpuOptions {
        max_chunk_elements: Some(64),
        ..GpuOptions::default()
    };
    compare_with_packed(
        AdamW::default().into(),
        options.clone(),
        false,
        LENGTHS,
        2,
        4,
        1,
    );
    compare_with_packed(sgd_momentum(), options.clone(), false, LENGTHS, 1, 256, 1);
    compare_with_packed(sgd_momentum(), options, false, LENGTHS_IN_FOURS, 2, 16, 4);
}

/// One dispatch per distinct (parameter buffer, gradient buffer) pair,
/// however many tensors: 12 tensors over the pairs (P0, G0), (P1, G1) and
/// (P0, G1) are three; clipping adds one per pair and one to finish.
#[test]
fn dispatches_grow_with_buffer_pairs_not_tensors() {
    let (p, g) = (
        [buffer("p0", 1 << 16, USAGE), buffer("p1", 1 << 16, USAGE)],
        [buffer("g0", 1 << 16, USAGE), buffer("g1", 1 << 16, USAGE)],
    );
    let pairs = [(0, 0), (1, 1), (0, 1)];
    let mut params = Vec::new();
    let mut grads = Vec::new();
    for t in 0..12u64 {
        let (pi, gi) = pairs[(t % 3) as usize];
        params.push(TensorView::new(p[pi].clone(), t * 1024, 100));
        grads.push(TensorView::new(g[gi].clone(), t * 1024 + 512, 100));
    }
    let mut opt = GpuOptimizer::from_views(ctx(), Adam::default(), params, grads).unwrap();
    assert_eq!(opt.dispatches_per_step(), 3);
    opt.set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))
        .unwrap();
    assert_eq!(opt.dispatches_per_step(), 3 + 3 + 1);
    assert_eq!(opt.param_buffers().len(), 2);
    assert_eq!(opt.grad_buffers().len(), 2);
    opt.step_device().unwrap();
}

/// A step with a NaN gradient is skipped on views as on the packed path;
/// a checkpoint of an optimizer over views restores into another over
/// other buffers and both go on alike.
#[test]
fn skip_nonfinite_and_checkpoints_through_views() {
    let mut rng = Rng(11);
    let init = tensors(&mut rng, LENGTHS);
    let (_, p_views) = pooled("params", LENGTHS, 2, 256);
    let (_, g_views) = pooled("grads", LENGTHS, 2, 256);
    let mut opt = GpuOptimizer::from_views(ctx(), Adam::default(), p_views, g_views).unwrap();
    opt.write_params(&refs(&init)).unwrap();
    opt.set_skip_nonfinite(true).unwrap();
    let grads = tensors(&mut rng, LENGTHS);
    opt.step(&refs(&grads)).unwrap();
    assert!(!opt.last_step_skipped().unwrap());
    let before = opt.read_params_flat().unwrap();
    let mut bad = grads.clone();
    bad[4][100] = f32::NAN;
    opt.step(&refs(&bad)).unwrap();
    assert!(opt.last_step_skipped().unwrap());
    assert_eq!(bits(&opt.read_params_flat().unwrap()), bits(&before));
    assert_eq!(opt.step_count(), 1);

    let ckpt = opt.checkpoint().unwrap();
    assert!(ckpt.params.is_some());
    let (_, p2) = pooled("params 2", LENGTHS, 3, 4);
    let (_, g2) = pooled("grads 2", LENGTHS, 1, 256);
    let mut other = GpuOptimizer::from_views(ctx(), Adam::default(), p2, g2).unwrap();
    other.load_checkpoint(&ckpt).unwrap();
    assert_eq!(other.step_count(), 1);
    let grads = tensors(&mut rng, LENGTHS);
    for o in [&mut opt, &mut other] {
        o.set_lr(3e-3).unwrap();
        o.step(&refs(&grads)).unwrap();
    }
    assert_eq!(
        bits(&opt.read_params_flat().unwrap()),
        bits(&other.read_params_flat().unwrap())
    );
    assert_eq!(
        bits(&opt.read_state_flat("exp_avg_sq").unwrap()),
        bits(&other.read_state_flat("exp_avg_sq").unwrap())
    );
}

/// Each bad input is its typed error, checked before anything is made.
#[test]
fn bad_views_are_typed_errors() {
    let a = buffer("a", 4096, USAGE);
    let b = buffer("b", 4096, USAGE);
    let c = buffer("c", 4096, USAGE);
    let v = |buf: &wgpu::Buffer, offset, len| TensorView::new(buf.clone(), offset, len);
    let build = |params: Vec<TensorView>, grads: Vec<TensorView>| {
        GpuOptimizer::from_views(ctx(), Adam::default(), params, grads).map(|_| ())
    };
    assert_eq!(build(vec![], vec![]), Err(Error::EmptyParameterList));
    assert_eq!(
        build(vec![v(&a, 0, 4)], vec![]),
        Err(Error::TensorCountMismatch {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(
        build(vec![v(&a, 0, 4)], vec![v(&b, 0, 5)]),
        Err(Error::LengthMismatch {
            tensor: 0,
            expected: 4,
            got: 5
        })
    );
    assert_eq!(
        build(
            vec![v(&a, 0, 4), v(&a, 18, 4)],
            vec![v(&b, 0, 4), v(&b, 16, 4)]
        ),
        Err(Error::Misaligned {
            what: "parameter",
            tensor: 1,
            offset: 18
        })
    );
    assert_eq!(
        build(vec![v(&a, 0, 4)], vec![v(&b, 4088, 4)]),
        Err(Error::ViewOutOfBounds {
            what: "gradient",
            tensor: 0,
            end: 4104,
            size: 4096
        })
    );
    // One element past the end; and a length whose byte count overflows.
    assert!(matches!(
        build(vec![v(&a, 4092, 2)], vec![v(&b, 0, 2)]),
        Err(Error::ViewOutOfBounds { end: 4100, .. })
    ));
    assert!(matches!(
        build(vec![v(&a, 0, usize::MAX)], vec![v(&b, 0, usize::MAX)]),
        Err(Error::ViewOutOfBounds { end: u64::MAX, .. })
    ));
    // Exactly up to the end is fine.
    build(vec![v(&a, 4092, 1)], vec![v(&b, 4092, 1)]).unwrap();
    let no_storage = buffer(
        "no storage",
        4096,
        wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
    );
    assert!(matches!(
        build(vec![v(&a, 0, 4)], vec![v(&no_storage, 0, 4)]),
        Err(Error::BufferUsage { what: "gradient", ref missing, .. }) if missing == "STORAGE"
    ));
    // Overlaps: two parameters, two gradients, a parameter and a gradient
    // (that last before the refusal of a shared buffer).
    assert_eq!(
        build(
            vec![v(&a, 0, 8), v(&a, 28, 4)],
            vec![v(&b, 0, 8), v(&b, 32, 4)]
        ),
        Err(Error::ViewOverlap {
            first: "parameter",
            first_tensor: 0,
            second: "parameter",
            second_tensor: 1
        })
    );
    assert_eq!(
        build(
            vec![v(&a, 0, 8), v(&a, 32, 4), v(&a, 64, 4)],
            vec![v(&b, 0, 8), v(&b, 16, 4), v(&c, 0, 4)]
        ),
        Err(Error::ViewOverlap {
            first: "gradient",
            first_tensor: 0,
            second: "gradient",
            second_tensor: 1
        })
    );
    // Overlaps are found whatever the order the views are given in.
    assert!(matches!(
        build(
            vec![v(&a, 400, 8), v(&a, 0, 101)],
            vec![v(&b, 0, 8), v(&b, 64, 101)]
        ),
        Err(Error::ViewOverlap { .. })
    ));
    assert_eq!(
        build(vec![v(&a, 0, 8)], vec![v(&a, 16, 8)]),
        Err(Error::ViewOverlap {
            first: "parameter",
            first_tensor: 0,
            second: "gradient",
            second_tensor: 0
        })
    );
    // Adjacent views and empty views at any place do not overlap; a
    // gradient in a parameters' buffer is refused (wgpu's binding rule).
    build(
        vec![v(&a, 0, 8), v(&a, 32, 4), v(&a, 8, 0)],
        vec![v(&b, 0, 8), v(&b, 32, 4), v(&b, 4, 0)],
    )
    .unwrap();
    assert!(matches!(
        build(vec![v(&a, 0, 8)], vec![v(&a, 32, 8)]),
        Err(Error::Unsupported(_))
    ));
}

/// Views of zero elements only: a model with nothing to step builds,
/// steps (no dispatch) and reads back empty, as the packed path does.
#[test]
fn empty_views_step() {
    let a = buffer("a", 256, USAGE);
    let b = buffer("b", 256, USAGE);
    let mut opt = GpuOptimizer::from_views(
        ctx(),
        Adam::default(),
        vec![TensorView::new(a.clone(), 0, 0), TensorView::new(a, 256, 0)],
        vec![TensorView::new(b.clone(), 4, 0), TensorView::new(b, 8, 0)],
    )
    .unwrap();
    assert_eq!(opt.dispatches_per_step(), 0);
    opt.set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))
        .unwrap();
    opt.step(&[&[], &[]]).unwrap();
    assert_eq!(opt.step_count(), 1);
    assert_eq!(opt.read_params().unwrap(), vec![Vec::<f32>::new(); 2]);
}

/// What views do not support is refused, never stepped wrong: LAMB, the
/// schedule-free eval mode; vector_width 4 on views that do not allow it
/// is an invalid option, 1 is taken where 4 would be. `skip_bounds_checks`
/// is taken and ignored.
#[test]
fn unsupported_on_views() {
    let a = buffer("a", 4096, USAGE);
    let b = buffer("b", 4096, USAGE);
    let params = vec![TensorView::new(a.clone(), 4, 10)];
    let grads = vec![TensorView::new(b.clone(), 8, 10)];
    let lamb = GpuOptimizer::from_views(ctx(), Lamb::default(), params.clone(), grads.clone());
    assert!(matches!(lamb, Err(Error::Unsupported(_))), "{lamb:?}");
    let wide = GpuOptions {
        vector_width: Some(4),
        ..GpuOptions::default()
    };
    let e = GpuOptimizer::from_views_with_options(
        ctx(),
        Adam::default(),
        params.clone(),
        grads.clone(),
        wide,
    );
    assert!(matches!(e, Err(Error::InvalidOptions(_))), "{e:?}");
    let aligned = |buf: &wgpu::Buffer, at| vec![TensorView::new(buf.clone(), at, 8)];
    let scalar = GpuOptions {
        vector_width: Some(1),
        ..GpuOptions::default()
    };
    for (options, width) in [(GpuOptions::default(), 4), (scalar, 1)] {
        let opt = GpuOptimizer::from_views_with_options(
            ctx(),
            Adam::default(),
            aligned(&a, 256),
            aligned(&b, 16),
            options,
        )
        .unwrap();
        assert_eq!(opt.vector_width(), width);
    }
    let mut sf = GpuOptimizer::from_views(
        ctx(),
        AdamWScheduleFree::default(),
        params.clone(),
        grads.clone(),
    )
    .unwrap();
    sf.step_device().unwrap();
    assert!(matches!(sf.set_eval(true), Err(Error::Unsupported(_))));
    assert!(!sf.eval_mode());
    sf.step_device().unwrap();
    let unchecked = GpuOptions {
        skip_bounds_checks: true,
        ..GpuOptions::default()
    };
    let mut opt =
        GpuOptimizer::from_views_with_options(ctx(), Adam::default(), params, grads, unchecked)
            .unwrap();
    opt.step_device().unwrap();
    assert_eq!(opt.vector_width(), 1);
}

/// Host uploads need `COPY_DST` on every gradient buffer, read-backs
/// `COPY_SRC` on every parameter buffer; refused with nothing changed.
#[test]
fn usages_of_host_transfers() {
    let a = buffer("a", 4096, USAGE);
    let storage_only = buffer("storage only", 4096, wgpu::BufferUsages::STORAGE);
    let g = buffer("g", 4096, USAGE);
    let params = vec![
        TensorView::new(a.clone(), 0, 10),
        TensorView::new(storage_only.clone(), 256, 10),
    ];
    let grads = vec![
        TensorView::new(g.clone(), 0, 10),
        TensorView::new(g.clone(), 256, 10),
    ];
    let mut opt = GpuOptimizer::from_views(ctx(), Adam::default(), params, grads).unwrap();
    assert!(matches!(
        opt.read_params(),
        Err(Error::BufferUsage { ref missing, .. }) if missing == "COPY_SRC"
    ));
    assert!(matches!(
        opt.write_params(&[&[0.0; 10], &[0.0; 10]]),
        Err(Error::BufferUsage { ref missing, .. }) if missing == "COPY_DST"
    ));
    // The parameters cannot be read: the checkpoint leaves them to the caller.
    assert!(opt.checkpoint().unwrap().params.is_none());
    opt.step(&[&[1.0; 10], &[1.0; 10]]).unwrap();
    assert_eq!(opt.step_count(), 1);
    assert!(matches!(
        opt.step(&[&[1.0; 10], &[1.0; 9]]),
        Err(Error::LengthMismatch { tensor: 1, .. })
    ));
    assert_eq!(opt.step_count(), 1);
}

// ------------------------------------------------------ README example

/// Parameter groups on views step as parameter groups on the packed path,
/// bit for bit (the same rule text, the same per-group scalars and options
/// selected per tile, the same tiles for the norm): Adam with `amsgrad` in
/// one group only (a state slot of one group's, zero in the others) and
/// its lr halved after the first step, SGD with and without Nesterov
/// momentum and with its own weight decay, with and without clipping, at
/// scalar and vec4 widths, with tensors straddling windows and chunks.
#[test]
fn groups_on_views_equal_groups_on_the_packed_path() {
    let adam_groups = vec![
        ParamGroup::new(Adam::default(), vec![0, 2, 4]),
        ParamGroup::new(
            Adam {
                lr: 3e-3,
                amsgrad: true,
                ..Adam::default()
            },
            vec![1, 3, 5],
        ),
    ];
    let nesterov = Sgd {
        lr: 0.01,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.1,
        ..Sgd::default()
    };
    let sgd_groups = vec![
        ParamGroup::new(sgd_momentum(), vec![5, 0]),
        ParamGroup::new(nesterov, vec![1, 2, 3]),
        ParamGroup::new(Sgd::default(), vec![4]),
    ];
    let small = GpuOptions {
        max_chunk_elements: Some(64),
        ..GpuOptions::default()
    };
    for groups in [adam_groups, sgd_groups] {
        for (options, clip, lengths, pools, align, width) in [
            (GpuOptions::default(), false, LENGTHS, 3, 256, 1),
            (GpuOptions::default(), true, LENGTHS, 2, 4, 1),
            (GpuOptions::default(), true, LENGTHS_IN_FOURS, 3, 256, 4),
            (small.clone(), false, LENGTHS_IN_FOURS, 2, 16, 4),
            (small.clone(), true, LENGTHS, 1, 4, 1),
        ] {
            let label = format!("{groups:?}, clip {clip}, width {width}");
            let halve = |opt: &mut GpuOptimizer| -> Result<(), Error> {
                let lr = opt.group_config(1)?.lr();
                opt.set_group_lr(1, lr * 0.5)
            };
            compare_built_with_packed(
                &label,
                |p, g| {
                    let mut opt = GpuOptimizer::from_views_with_groups(
                        ctx(),
                        p,
                        g,
                        &groups,
                        options.clone(),
                    )?;
                    assert_eq!(opt.group_count(), groups.len());
                    halve(&mut opt)?;
                    Ok(opt)
                },
                |init| {
                    let mut opt =
                        GpuOptimizer::with_param_groups(ctx(), init, &groups, options.clone())?;
                    halve(&mut opt)?;
                    Ok(opt)
                },
                clip,
                lengths,
                pools,
                align,
                width,
            );
        }
    }
}

/// What groups on views refuse, as the packed groups and the views do:
/// checked groups, LAMB, vec4 loads the views do not allow; the views are
/// checked first; one group is the one-group view optimizer.
#[test]
fn groups_on_views_refusals() {
    let a = buffer("a", 4096, USAGE);
    let b = buffer("b", 4096, USAGE);
    let params = || {
        vec![
            TensorView::new(a.clone(), 4, 10),
            TensorView::new(a.clone(), 256, 8),
        ]
    };
    let grads = || {
        vec![
            TensorView::new(b.clone(), 8, 10),
            TensorView::new(b.clone(), 512, 8),
        ]
    };
    let two = |config: Config| {
        vec![
            ParamGroup::new(config.clone(), vec![0]),
            ParamGroup::new(config, vec![1]),
        ]
    };
    let build = |p, g, groups: &[ParamGroup], options| {
        GpuOptimizer::from_views_with_groups(ctx(), p, g, groups, options)
    };
    let o = GpuOptions::default;
    let e = build(params(), grads(), &two(Lamb::default().into()), o());
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    let e = build(
        params(),
        grads(),
        &[ParamGroup::new(Adam::default(), vec![0])],
        o(),
    );
    assert!(
        matches!(e, Err(Error::TensorInNoGroup { tensor: 1 })),
        "{e:?}"
    );
    let mixed = vec![
        ParamGroup::new(Adam::default(), vec![0]),
        ParamGroup::new(Sgd::default(), vec![1]),
    ];
    let e = build(params(), grads(), &mixed, o());
    assert!(matches!(e, Err(Error::GroupRuleMismatch { .. })), "{e:?}");
    let wide = GpuOptions {
        vector_width: Some(4),
        ..GpuOptions::default()
    };
    let e = build(params(), grads(), &two(Adam::default().into()), wide);
    assert!(matches!(e, Err(Error::InvalidOptions(_))), "{e:?}");
    // A bad view before the groups: the views' error.
    let short = vec![TensorView::new(b.clone(), 8, 10)];
    let e = build(params(), short, &mixed, o());
    assert!(matches!(e, Err(Error::TensorCountMismatch { .. })), "{e:?}");
    let one = build(
        params(),
        grads(),
        &[ParamGroup::new(Adam::default(), vec![0, 1])],
        o(),
    )
    .unwrap();
    assert_eq!(one.group_count(), 1);
    let mut opt = build(params(), grads(), &two(Adam::default().into()), o()).unwrap();
    let e = opt.add_param_group(Adam::default(), &[&[1.0; 4]]);
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    assert_eq!(opt.group_count(), 2);
    opt.step_device().unwrap();
}

/// The code block of the README's "Tensors in your own buffers", compiled
/// and run; [`readme_block_is_this`] checks that the README holds the same
/// text.
#[rustfmt::skip]
mod readme {
    use wgpu_optim::Error;

    #[test]
    fn readme_views() -> Result<(), Error> {
        // README: views
        use wgpu_optim::{Adam, GpuContext, GpuOptimizer, TensorView};

        let ctx = GpuContext::new()?;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let pool = |size| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: false })
        };
        let (weights, grads) = (pool(1 << 16), pool(1 << 16));
        // Where your framework's pool put each tensor: (buffer, byte offset, length).
        let params = vec![TensorView::new(weights.clone(), 0, 4096), TensorView::new(weights.clone(), 16640, 64)];
        let grad_views = vec![TensorView::new(grads.clone(), 256, 4096), TensorView::new(grads.clone(), 20480, 64)];
        let mut opt = GpuOptimizer::from_views(&ctx, Adam::default(), params, grad_views)?;
        assert_eq!(opt.dispatches_per_step(), 1); // one (weights, grads) pair, whatever the tensors
        // ... your backward pass writes the gradients into `grads` ...
        opt.step_device()?; // steps the tensors in `weights` in place
        let w = opt.read_params()?; // read through the views (COPY_SRC)
        assert_eq!(w[1].len(), 64);
        // END README
        Ok(())
    }
}

/// The README's block is the one [`readme::readme_views`] runs.
#[test]
fn readme_block_is_this() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/views.rs")).unwrap();
    let marker = "// README: views";
    let at = readme
        .find("## Tensors in your own buffers")
        .expect("README lacks its views section");
    let start = readme[at..].find("```rust\n").unwrap() + at + 8;
    let end = readme[start..].find("```").unwrap() + start;
    let from = source.find(marker).unwrap() + marker.len() + 1;
    let to = source[from..].find("        // END README").unwrap() + from;
    let code: String = source[from..to]
        .lines()
        .map(|l| l.strip_prefix("        ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        &readme[start..end],
        code,
        "README block of the views section"
    );
}
