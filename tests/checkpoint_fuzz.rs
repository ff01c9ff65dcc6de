//! Fuzzes the checkpoint loader with proptest: valid files with bytes
//! flipped, inserted, removed or the file cut short; headers whose JSON
//! values are replaced by random ones (huge lengths and steps, wrong
//! types, NaN spelled out, duplicate and out-of-range indices, other
//! rules' names); random bytes. Every input must give `Ok` or a typed
//! error, never a panic, and no allocation during the load may be larger
//! than a small multiple of the input (a global allocator wrapper records
//! the largest). The test prints how many inputs ran.
//!
//! This binary has one test so that the allocation record is its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{Adagrad, Adam, CpuOptimizer, Error, Lamb, RmsProp, Sgd};

struct Recording;
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LOADED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Recording = Recording;

/// Valid files of every shape of state: with and without parameters, a
/// rule without state, PyTorch's own file.
fn seeds() -> Vec<Vec<u8>> {
    let p: &[&[f32]] = &[&[1.0, 2.0, 3.0], &[4.0], &[0.5, -0.5]];
    let g: &[&[f32]] = &[&[0.1, -0.2, 0.3], &[1.0], &[0.0, 2.0]];
    let mut out = Vec::new();
    let mut adam = CpuOptimizer::new(
        Adam {
            amsgrad: true,
            ..Adam::default()
        },
        p,
    )
    .unwrap();
    adam.step(g).unwrap();
    out.push(adam.checkpoint().to_bytes().unwrap());
    let mut ck = adam.checkpoint();
    ck.params = None;
    ck.set_scheduler(Some(
        &wgpu_optim::Scheduler::for_config(
            wgpu_optim::Schedule::warmup_cosine(0.1, 2, 10, 0.0),
            &ck.config,
        )
        .unwrap(),
    ));
    out.push(ck.to_bytes().unwrap());
    for config in [
        wgpu_optim::Config::from(Sgd::default()),
        Sgd {
            momentum: 0.9,
            ..Sgd::default()
        }
        .into(),
        Adagrad::default().into(),
        RmsProp {
            centered: true,
            momentum: 0.5,
            ..RmsProp::default()
        }
        .into(),
        Lamb {
            trust_ratio_clamp: Some((0.0, 10.0)),
            ..Lamb::default()
        }
        .into(),
    ] {
        let mut o = CpuOptimizer::new(config, p).unwrap();
        o.step(g).unwrap();
        out.push(o.checkpoint().to_bytes().unwrap());
    }
    out.push(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/checkpoint/torch_adam.safetensors"
        ))
        .unwrap(),
    );
    out
}

/// Loads `bytes`; fails the case on a panic or a large allocation.
fn load_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    LARGEST.store(0, Ordering::Relaxed);
    let result = std::panic::catch_unwind(|| Checkpoint::from_bytes(bytes));
    let largest = LARGEST.load(Ordering::Relaxed);
    let Ok(result) = result else {
        return Err(TestCaseError::fail("the loader panicked"));
    };
    // The loader copies tensors out of the file and parses its header:
    // nothing it allocates needs more than a few times the input.
    let bound = 16 * bytes.len() + (64 << 10);
    if largest > bound {
        return Err(TestCaseError::fail(format!(
            "allocated {largest} bytes at once for a {}-byte input",
            bytes.len()
        )));
    }
    match result {
        Ok(c) => {
            LOADED.fetch_add(1, Ordering::Relaxed);
            // Whatever loads is whole: it validates and writes back.
            c.validate()
                .map_err(|e| TestCaseError::fail(format!("loaded but invalid: {e}")))?;
            let again = Checkpoint::from_bytes(&c.to_bytes().unwrap())
                .map_err(|e| TestCaseError::fail(format!("does not reload: {e}")))?;
            // (Compared as bytes: a NaN in a tensor is not == itself.)
            if again.to_bytes().unwrap() != c.to_bytes().unwrap() {
                return Err(TestCaseError::fail("reloads differently"));
            }
        }
        Err(Error::Checkpoint(_)) | Err(Error::InvalidHyperparameter { .. }) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => return Err(TestCaseError::fail(format!("untyped error: {e:?}"))),
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    HeaderLength(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        prop_oneof![any::<u64>(), 0u64..4096].prop_map(Mutation::HeaderLength),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            if !bytes.is_empty() {
                bytes[i % n] ^= b | 1;
            }
        }
        Mutation::Insert(i, v) => {
            let at = i % (bytes.len() + 1);
            bytes.splice(at..at, v.iter().copied());
        }
        Mutation::Remove(i, k) => {
            let at = i % n;
            let end = (at + k).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i % n),
        Mutation::HeaderLength(h) => {
            if bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&h.to_le_bytes());
            }
        }
    }
}

/// Values a hostile header may hold.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1u64 << 62)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|x| serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        Just(Value::from(-1.0)),
        Just(Value::from(1.0)),
        Just(Value::from(0)),
        prop_oneof![
            Just("NaN"),
            Just("inf"),
            Just("adam"),
            Just("sgd"),
            Just("lamb"),
            Just("F64"),
            Just("I64"),
            Just("U8"),
            Just("F32"),
            Just(""),
            Just("state.0.exp_avg"),
            Just("params.0"),
            Just("wgpu-optim/checkpoint/2"),
        ]
        .prop_map(Value::from),
        proptest::collection::vec(0u64..5, 0..5).prop_map(Value::from),
        Just(serde_json::json!([0, 0])),
        Just(serde_json::json!([1u64 << 40])),
        Just(serde_json::json!({})),
        Just(serde_json::json!([{}, {}])),
    ]
}

/// Every path to a value inside a JSON tree (object keys and array indices).
fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                here.push(Value::from(k.clone()));
                paths(x, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                here.push(Value::from(i as u64));
                paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut at = v;
    for p in path {
        at = match p {
            Value::String(k) => at.get_mut(k.as_str())?,
            Value::Number(i) => at.get_mut(i.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(at)
}

/// The header as JSON with the metadata strings parsed too, so that a
/// replacement can land deep inside `param_groups` or `wgpu_optim`.
fn split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    if let Some(Value::Object(meta)) = header.get_mut("__metadata__") {
        for (_, v) in meta.iter_mut() {
            if let Value::String(s) = v {
                if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                    if parsed.is_object() || parsed.is_array() {
                        *v = serde_json::json!({"__json__": parsed});
                    }
                }
            }
        }
    }
    (header, bytes[8 + n..].to_vec())
}

fn join(mut header: Value, data: &[u8]) -> Vec<u8> {
    if let Some(Value::Object(meta)) = header.get_mut("__metadata__") {
        for (_, v) in meta.iter_mut() {
            if let Some(inner) = v.get("__json__") {
                *v = Value::String(inner.to_string());
            }
        }
    }
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

/// A fixed seed by default, so that CI runs the same inputs every time;
/// `WGPU_OPTIM_FUZZ_SEED=<n>` explores others and `WGPU_OPTIM_FUZZ_SCALE=<k>`
/// runs k times as many.
fn runner(cases: u32, salt: u64) -> TestRunner {
    let seed: u64 = std::env::var("WGPU_OPTIM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&salt.to_le_bytes());
    TestRunner::new_with_rng(
        PtConfig {
            cases,
            failure_persistence: None,
            ..PtConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

fn scale() -> u32 {
    std::env::var("WGPU_OPTIM_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

#[test]
fn fuzz_the_loader() {
    // A loader that hangs on some input fails the test instead of CI.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(120 * scale() as u64));
        eprintln!("the checkpoint fuzz ran past its time limit: some input hangs the loader");
        std::process::abort();
    });
    let seeds = seeds();
    for s in &seeds {
        Checkpoint::from_bytes(s).expect("every seed is valid");
    }
    let k = scale();
    let mut total = 0u64;

    // 1. Byte-level mutations of valid files.
    let mut r = runner(6000 * k, 1);
    r.run(
        &(0..seeds.len(), proptest::collection::vec(mutation(), 1..4)),
        |(s, muts)| {
            let mut bytes = seeds[s].clone();
            for m in &muts {
                apply(&mut bytes, m);
            }
            load_checked(&bytes)
        },
    )
    .unwrap();
    total += 6000 * k as u64;

    // 2. Header values replaced: every field of the safetensors header and
    //    of the metadata JSON, with hostile values; the header length kept
    //    right so the loader gets past the framing.
    let mut r = runner(8000 * k, 2);
    r.run(
        &(
            0..seeds.len(),
            proptest::collection::vec((any::<prop::sample::Index>(), json_value()), 1..4),
        ),
        |(s, edits)| {
            let (mut header, data) = split(&seeds[s]);
            for (index, value) in edits {
                let mut all = Vec::new();
                paths(&header, &mut Vec::new(), &mut all);
                let path = index.get(&all).clone();
                if let Some(slot) = get_mut(&mut header, &path) {
                    *slot = value;
                }
            }
            load_checked(&join(header, &data))
        },
    )
    .unwrap();
    total += 8000 * k as u64;

    // 3. Random bytes, some behind a plausible header length.
    let mut r = runner(3000 * k, 3);
    r.run(
        &(
            proptest::collection::vec(any::<u8>(), 0..512),
            0u64..600,
            any::<bool>(),
        ),
        |(mut bytes, n, framed)| {
            if framed && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&n.to_le_bytes());
                if bytes.len() > 8 {
                    bytes[8] = b'{';
                }
            }
            load_checked(&bytes)
        },
    )
    .unwrap();
    total += 3000 * k as u64;

    // 4. Every truncation of one file.
    for s in &seeds[..2] {
        for len in 0..s.len() {
            load_checked(&s[..len]).unwrap_or_else(|e| panic!("truncated to {len}: {e}"));
            total += 1;
        }
    }
    println!(
        "checkpoint loader fuzzed with {total} inputs ({} loaded, {} refused with a typed error): \
         no panic, no allocation beyond 16x the input + 64 KiB",
        LOADED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed)
    );
}
