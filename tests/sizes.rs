//! Sizes from the caller: every entry point that takes tensor lengths —
//! [`Layout`], [`GpuOptimizer::from_buffers`], [`Checkpoint::new`], the
//! checkpoint and conformance-case loaders — driven by proptest over random
//! length lists with the extremes in (0, 1, `u32::MAX`, `u32::MAX + 1`,
//! `usize::MAX`, sums that wrap `usize`, byte counts that wrap `u64`,
//! thousands of tensors). Each call must return `Ok` or the typed error the
//! arithmetic predicts (computed here in `u128`), the error naming what
//! overflowed; never a panic or an abort. A global allocator wrapper
//! records the largest allocation made: no call may allocate from a length
//! it has not checked against real memory.

mod common;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use serde_json::{json, Value};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::conformance::Case;
use wgpu_optim::{Adam, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, Lamb, Layout, Sgd};

use common::ctx;

struct Recording;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// Records only allocations that succeeded: a refused request (as
// `try_reserve` makes for a checkpoint the host cannot hold) allocates
// nothing.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Recording = Recording;

/// The largest allocation any of these tests may make: far above what the
/// small inputs here need (a few MiB of lavapipe-side buffers and the
/// lists themselves), far below what an unchecked length would ask for.
const ALLOCATION_BOUND: usize = 256 << 20;

#[track_caller]
fn assert_allocations_bounded() {
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= ALLOCATION_BOUND,
        "an allocation of {largest} bytes was made"
    );
}

/// Largest total a checkpoint accepts (its host vectors of f32 must be
/// addressable with room to spare).
const CHECKPOINT_MAX: u128 = isize::MAX as u128 / 8;

/// One length: the extremes, or small and random.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(u32::MAX as usize),
        Just((u32::MAX as usize).saturating_add(1)),
        Just(usize::MAX),
        Just(usize::MAX - 1),
        Just(usize::MAX / 2 + 1),
        // Just below and just above the 4-byte count wrapping u64.
        Just(usize::MAX / 4),
        Just(usize::MAX / 4 + 1),
        Just(CHECKPOINT_MAX as usize),
        Just(CHECKPOINT_MAX as usize + 1),
        0usize..100,
        any::<usize>(),
    ]
}

/// A list of lengths: a few extremes; thousands of small tensors (mostly
/// empty, so that some fit a small buffer); thousands with one extreme
/// somewhere among them.
fn lengths() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        4 => prop::collection::vec(length(), 0..8),
        1 => prop::collection::vec(prop_oneof![30 => Just(0usize), 1 => Just(1)], 0..5000),
        1 => (
            prop::collection::vec(0usize..3, 1..3000),
            length(),
            any::<prop::sample::Index>()
        )
            .prop_map(|(mut v, x, at)| {
                let i = at.index(v.len());
                v[i] = x;
                v
            }),
    ]
}

/// What [`Layout::new`] must say about `lengths`, from exact arithmetic.
#[derive(Debug, PartialEq)]
enum Expect {
    /// The total length, which fits `usize` with its byte count `u64`.
    Fits(u128),
    /// The `(what, ty)` of the [`Error::SizeOverflow`].
    Overflow(&'static str, &'static str),
}

fn expect(lengths: &[usize]) -> Expect {
    let total: u128 = lengths.iter().map(|&n| n as u128).sum();
    if total > usize::MAX as u128 {
        Expect::Overflow("the total length of the tensors", "usize")
    } else if total * 4 > u64::MAX as u128 {
        Expect::Overflow("the byte count of the tensors", "u64")
    } else {
        Expect::Fits(total)
    }
}

/// `e` is the size overflow `expected` names, and its message says so.
fn check_overflow(e: &Error, expected: (&'static str, &'static str)) -> Result<(), TestCaseError> {
    match e {
        Error::SizeOverflow { what, ty, .. } => {
            prop_assert_eq!((*what, *ty), expected);
            let text = e.to_string();
            prop_assert!(
                text.contains(expected.0) && text.contains("overflows"),
                "{}",
                text
            );
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "expected SizeOverflow {expected:?}, got {other:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `Layout::new` is `Ok` exactly when the total fits `usize` and its
    /// bytes `u64`, with offsets the prefix sums; otherwise the overflow
    /// error naming which. `split` and `check` refuse a wrong length or
    /// count with their typed errors.
    #[test]
    fn layout_checks_its_arithmetic(lengths in lengths()) {
        match (Layout::new(&lengths), expect(&lengths)) {
            (Ok(layout), Expect::Fits(total)) => {
                prop_assert_eq!(layout.total() as u128, total);
                prop_assert_eq!(layout.bytes() as u128, total * 4);
                prop_assert_eq!(layout.lengths(), &lengths[..]);
                let mut at = 0usize;
                for (i, &n) in lengths.iter().enumerate() {
                    prop_assert_eq!(layout.offsets()[i], at);
                    prop_assert_eq!(layout.range(i), at..at + n);
                    at += n;
                }
                // A flat slice one element short (or any slice when the
                // total is beyond memory) is refused, not indexed.
                let short = vec![0.0f32; (total as usize).saturating_sub(1).min(1 << 16)];
                if total > 0 {
                    let refused = matches!(
                        layout.split(&short),
                        Err(Error::LengthMismatch { .. })
                    );
                    prop_assert!(refused);
                }
                if total <= 1 << 16 {
                    let flat = vec![0.0f32; total as usize];
                    let parts = layout.split(&flat).unwrap();
                    prop_assert_eq!(parts.len(), lengths.len());
                    prop_assert!(layout.check(&parts).is_ok());
                    let refused = matches!(
                        layout.check(&parts[..parts.len().saturating_sub(1)]),
                        Err(Error::TensorCountMismatch { .. })
                    );
                    prop_assert!(lengths.is_empty() || refused);
                }
            }
            (Err(e), Expect::Overflow(what, ty)) => check_overflow(&e, (what, ty))?,
            (got, want) => {
                return Err(TestCaseError::fail(format!("got {got:?}, expected {want:?}")));
            }
        }
    }

    /// `Checkpoint::new` with the caller's lengths: the overflow error, the
    /// checkpoint's own bound, or a checkpoint whose state is that long.
    #[test]
    fn checkpoint_new_checks_its_arithmetic(lengths in lengths()) {
        let total: u128 = lengths.iter().map(|&n| n as u128).sum();
        // Totals between these need real memory: whether the host has it
        // is not this test's question.
        if total > 1 << 16 && total <= CHECKPOINT_MAX {
            return Ok(());
        }
        match (Checkpoint::new(Adam::default(), &lengths), expect(&lengths)) {
            (Err(e), Expect::Overflow(what, ty)) => check_overflow(&e, (what, ty))?,
            (Err(Error::Checkpoint(m)), Expect::Fits(t)) if t > CHECKPOINT_MAX => {
                prop_assert!(m.contains("the tensor lengths overflow"), "{}", m);
            }
            (Ok(c), Expect::Fits(t)) => {
                prop_assert_eq!(c.state_flat("exp_avg").unwrap().len() as u128, t);
            }
            (got, want) => {
                return Err(TestCaseError::fail(format!("got {got:?}, expected {want:?}")));
            }
        }
    }
}

/// A checkpoint the host cannot allocate is an error, not an abort: 2^57
/// elements are 2^59 bytes, beyond any 64-bit address space.
#[test]
fn checkpoint_new_beyond_memory_is_refused() {
    match Checkpoint::new(Adam::default(), &[1 << 56, 1 << 56]) {
        Err(Error::TooLarge(m)) => assert!(m.contains("could not allocate"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_allocations_bounded();
}

// ------------------------------------------------------------------ GPU

/// A small real buffer of the caller's, as `from_buffers` takes it.
fn user_buffer(bytes: u64) -> wgpu::Buffer {
    ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's buffer"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Bytes of each of the caller's buffers: 1024 elements.
const BUFFER_BYTES: u64 = 4096;

fn rule(i: u8) -> Config {
    match i % 3 {
        0 => Sgd::default().into(),
        1 => Adam::default().into(),
        _ => Lamb::default().into(),
    }
}

fn chunk_option(i: u8) -> Option<u64> {
    [None, Some(0), Some(1), Some(64), Some(u64::MAX)][i as usize % 5]
}

proptest! {
    // Each accepted case builds an optimizer on lavapipe: a few dozen
    // cases keep this test to seconds on two cores.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// `from_buffers` with small real buffers: the overflow error, or
    /// `BufferTooSmall` with the exact byte count, or an optimizer that
    /// holds exactly the tensors asked for. Never a panic.
    #[test]
    fn from_buffers_checks_its_arithmetic(
        lengths in lengths(),
        rule_i in any::<u8>(),
        chunk_i in any::<u8>(),
    ) {
        let (params, grads) = (user_buffer(BUFFER_BYTES), user_buffer(BUFFER_BYTES));
        let options = GpuOptions {
            max_chunk_elements: chunk_option(chunk_i),
            ..GpuOptions::default()
        };
        let got = GpuOptimizer::from_buffers_with_options(
            ctx(),
            rule(rule_i),
            &lengths,
            params,
            grads,
            options,
        );
        match (got, expect(&lengths)) {
            (Err(Error::EmptyParameterList), _) => prop_assert!(lengths.is_empty()),
            (Err(e), Expect::Overflow(what, ty)) => check_overflow(&e, (what, ty))?,
            (Err(Error::BufferTooSmall { what, required, actual }), Expect::Fits(t)) => {
                prop_assert_eq!(what, "parameter");
                prop_assert_eq!(required as u128, t * 4);
                prop_assert_eq!(actual, BUFFER_BYTES);
                prop_assert!(required > BUFFER_BYTES);
            }
            (Ok(mut opt), Expect::Fits(t)) => {
                prop_assert!(t * 4 <= BUFFER_BYTES as u128);
                let flat = opt.read_params_flat().unwrap();
                prop_assert_eq!(flat.len() as u128, t);
                let per_tensor = opt.read_params().unwrap();
                let lens: Vec<usize> = per_tensor.iter().map(Vec::len).collect();
                prop_assert_eq!(lens, lengths.clone());
                let g: Vec<Vec<f32>> = lengths.iter().map(|&n| vec![0.5; n]).collect();
                let g: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
                opt.step(&g).unwrap();
            }
            (got, want) => {
                return Err(TestCaseError::fail(format!("got {got:?}, expected {want:?}")));
            }
        }
    }
}

/// The issue's own inputs: a sum that wraps `usize` (it panicked), a byte
/// count beyond `u64` (it wrapped to a small size, passed the buffer check
/// and aborted allocating), one just past `u32::MAX` elements (a plain
/// `BufferTooSmall` with the exact count).
#[test]
fn from_buffers_issue_inputs() {
    let b = || user_buffer(BUFFER_BYTES);
    let run =
        |lengths: &[usize]| GpuOptimizer::from_buffers(ctx(), Adam::default(), lengths, b(), b());
    match run(&[usize::MAX, 1]) {
        Err(Error::SizeOverflow { what, ty, detail }) => {
            assert_eq!((what, ty), ("the total length of the tensors", "usize"));
            assert!(detail.contains("tensor 1"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    for lengths in [
        &[1usize << 62][..],
        &[usize::MAX / 4 + 1],
        &[1 << 61, 1 << 61, 5],
    ] {
        match run(lengths) {
            Err(Error::SizeOverflow { what, ty, .. }) => {
                assert_eq!((what, ty), ("the byte count of the tensors", "u64"))
            }
            other => panic!("{lengths:?}: {other:?}"),
        }
    }
    match run(&[u32::MAX as usize + 1]) {
        Err(Error::BufferTooSmall { required, .. }) => assert_eq!(required, 1 << 34),
        other => panic!("{other:?}"),
    }
    assert_allocations_bounded();
}

// ------------------------------------------------------- file loaders

/// The tensors and metadata of a safetensors file, to write back edited.
struct Raw {
    tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
}

impl Raw {
    fn read(bytes: &[u8]) -> Raw {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let tensors = st
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.dtype(),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                )
            })
            .collect();
        let (_, m) = SafeTensors::read_metadata(bytes).unwrap();
        Raw {
            tensors,
            meta: m.metadata().clone().unwrap_or_default(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, Some(self.meta.clone())).unwrap()
    }

    /// Edits the JSON object kept as the string value of `key`.
    fn edit_json(&mut self, key: &str, f: impl FnOnce(&mut Value)) {
        let mut v: Value = serde_json::from_str(&self.meta[key]).unwrap();
        f(&mut v);
        self.meta.insert(key.into(), v.to_string());
    }
}

/// A checkpoint file whose header claims `lengths` (param_groups listing
/// as many tensors), its tensors those of `base`.
fn claiming(base: &[u8], lengths: &[usize]) -> Vec<u8> {
    let mut raw = Raw::read(base);
    raw.edit_json("param_groups", |g| {
        g[0]["params"] = json!((0..lengths.len()).collect::<Vec<_>>());
    });
    raw.edit_json("wgpu_optim", |w| w["lengths"] = json!(lengths));
    raw.bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Checkpoint files whose headers claim random lengths: a rule with
    /// state (Adam, whose tensors are [3, 1, 2] long) and one without (SGD,
    /// no parameters saved, so nothing in the file bounds the lengths).
    /// Always `Ok` or `Error::Checkpoint`; totals past the checkpoint's
    /// bound are refused naming the overflow; Adam's file loads only with
    /// its own lengths, SGD's with any that fit, and such a checkpoint then
    /// fits no optimizer of other lengths.
    #[test]
    fn checkpoint_headers_with_any_lengths(lengths in lengths()) {
        let real = [3usize, 1, 2];
        let p: [&[f32]; 3] = [&[1.0, 2.0, 3.0], &[4.0], &[0.5, -0.5]];
        let adam = CpuOptimizer::new(Adam::default(), &p).unwrap();
        let sgd = CpuOptimizer::new(Sgd::default(), &p).unwrap();
        let mut sgd_ck = sgd.checkpoint();
        sgd_ck.params = None;
        let total: u128 = lengths.iter().map(|&n| n as u128).sum();
        for (name, base, stateful) in [
            ("adam", adam.checkpoint().to_bytes().unwrap(), true),
            ("sgd", sgd_ck.to_bytes().unwrap(), false),
        ] {
            let bytes = claiming(&base, &lengths);
            match Checkpoint::from_bytes(&bytes) {
                Ok(ck) => {
                    prop_assert!(!lengths.is_empty() && total <= CHECKPOINT_MAX, "{}", name);
                    prop_assert_eq!(&ck.lengths, &lengths);
                    if stateful {
                        prop_assert_eq!(&lengths[..], &real[..]);
                    }
                    // No parameters in it: nothing to build from.
                    if ck.params.is_none() {
                        let refused = matches!(
                            CpuOptimizer::from_checkpoint(&ck),
                            Err(Error::Checkpoint(_))
                        );
                        prop_assert!(refused);
                    }
                    let mut target = CpuOptimizer::new(ck.config.clone(), &p).unwrap();
                    let loaded = target.load_checkpoint(&ck);
                    if lengths[..] == real[..] {
                        prop_assert!(loaded.is_ok(), "{:?}", loaded);
                    } else {
                        let refused = matches!(loaded, Err(Error::CheckpointMismatch { .. }));
                        prop_assert!(refused, "{:?}", loaded);
                    }
                }
                Err(Error::Checkpoint(m)) => {
                    // Adam's file holds tensors 0..3: with fewer claimed, a
                    // tensor name is refused before the lengths are read.
                    if total > CHECKPOINT_MAX && (!stateful || lengths.len() >= real.len()) {
                        prop_assert!(m.contains("the tensor lengths overflow"), "{}", m);
                    }
                    prop_assert!(stateful || total > CHECKPOINT_MAX || lengths.is_empty(), "{}", m);
                }
                Err(e) => return Err(TestCaseError::fail(format!("{name}: {e:?}"))),
            }
        }
        assert_allocations_bounded();
    }

    /// Conformance cases whose `sizes` and `steps` are anything: always a
    /// format error or the case, never an allocation of `steps` slots the
    /// file has no tensors for.
    #[test]
    fn case_files_with_any_sizes_and_steps(
        sizes in lengths(),
        steps in prop_oneof![Just(0u64), Just(1), Just(40), Just(u32::MAX as u64),
                             Just(1 << 40), Just(usize::MAX as u64), any::<u64>()],
        keep_sizes in any::<bool>(),
    ) {
        let base = std::fs::read("tests/data/golden/cases/adam_default.safetensors").unwrap();
        let mut raw = Raw::read(&base);
        raw.edit_json("case", |c| {
            let m = c.as_object_mut().unwrap();
            // Per-step lists would be refused first for another length.
            m.remove("lr_per_step");
            m.remove("momentum_per_step");
            m["steps"] = json!(steps);
            if !keep_sizes {
                m["sizes"] = json!(sizes);
            }
        });
        let got = Case::from_bytes(&raw.bytes(), "edited.safetensors");
        match got {
            Ok(case) => {
                prop_assert!(keep_sizes && steps == 40, "steps {}, sizes {:?}", steps, case.sizes);
            }
            Err(Error::Format { message, .. }) => {
                if keep_sizes && steps > 40 {
                    prop_assert!(message.contains("gradient tensors"), "{}", message);
                }
                if !keep_sizes && sizes.is_empty() {
                    prop_assert!(message.contains("`sizes` is empty"), "{}", message);
                }
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
        }
        assert_allocations_bounded();
    }
}

/// Thousands of host tensors, many empty: `new` and a step are fine.
#[test]
fn many_host_tensors() {
    let data: Vec<Vec<f32>> = (0..20_000).map(|i| vec![1.0; i % 3]).collect();
    let p: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
    let mut cpu = CpuOptimizer::new(Adam::default(), &p).unwrap();
    cpu.step(&p).unwrap();
    assert_eq!(cpu.params().len(), 20_000);
    let mut gpu = GpuOptimizer::new(ctx(), Adam::default(), &p).unwrap();
    gpu.step(&p).unwrap();
    let on_gpu = gpu.read_params().unwrap();
    assert_eq!(on_gpu.len(), 20_000);
    for (g, c) in on_gpu.iter().zip(cpu.params()) {
        assert_eq!(g.len(), c.len());
        // One Adam step from 1.0 lands near 0.999; the two backends may
        // round its few operations differently, by a few ulps of 1 (1.2e-7
        // each), far below a misplaced tensor's 1e-3.
        assert!(
            g.iter().zip(c).all(|(a, b)| (a - b).abs() <= 1e-6),
            "{g:?} {c:?}"
        );
    }
    assert_allocations_bounded();
}

/// A step count read from a checkpoint is bounded (`MAX_STEP_COUNT`, 2^63),
/// so the `+ 1` of the next step can never overflow: `u64::MAX` used to load
/// and then panic in the next `step()`. Refused by `load_checkpoint` and
/// `from_checkpoint` on both backends, with nothing changed; the bound
/// itself loads and steps.
#[test]
fn step_counts_beyond_the_bound_are_refused() {
    use wgpu_optim::checkpoint::MAX_STEP_COUNT;
    let p = [1.0f32, -2.0, 3.0];
    let g = [0.5f32, 0.25, -1.0];
    let mut cpu = CpuOptimizer::new(Adam::default(), &[&p]).unwrap();
    cpu.step(&[&g]).unwrap();
    let good = cpu.checkpoint();
    for (field, value) in [
        ("step", u64::MAX),
        ("step", MAX_STEP_COUNT + 1),
        ("skipped_steps", u64::MAX),
    ] {
        let mut bad = good.clone();
        match field {
            "step" => bad.step = value,
            _ => bad.skipped_steps = value,
        }
        let before = cpu.checkpoint();
        let e = cpu.load_checkpoint(&bad).unwrap_err();
        assert!(
            matches!(&e, Error::Checkpoint(m) if m.contains(field)),
            "{field} = {value}: {e:?}"
        );
        assert_eq!(
            cpu.checkpoint(),
            before,
            "a refused load changed the optimizer"
        );
        assert!(CpuOptimizer::from_checkpoint(&bad).is_err());
        let mut gpu = GpuOptimizer::new(ctx(), Adam::default(), &[&p]).unwrap();
        assert!(matches!(
            gpu.load_checkpoint(&bad),
            Err(Error::Checkpoint(_))
        ));
        assert_eq!(gpu.step_count(), 0);
    }
    let mut at_bound = good.clone();
    at_bound.step = MAX_STEP_COUNT;
    let mut opt = CpuOptimizer::from_checkpoint(&at_bound).unwrap();
    opt.step(&[&g]).unwrap();
    assert_eq!(opt.step_count(), MAX_STEP_COUNT + 1);
}
