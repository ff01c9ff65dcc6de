//! ZeRO stage 1: optimizer state sharded over ranks.
//!
//! Each of N ranks holds all the parameters but the optimizer state of only
//! a contiguous 1/N of the packed parameters ([`shard_range`]; a boundary
//! may cut through a tensor). A step, on every rank:
//!
//! 1. every rank's full gradient is exchanged (all-to-all) so that each
//!    rank holds every rank's gradient for its shard, and sums them (or
//!    takes their mean, [`GradReduce`]) **in rank order**, in f32:
//!    `((g₀ + g₁) + g₂) …`, then `/ N` for the mean;
//! 2. with clipping or the non-finite skip on, each rank's partial sum of
//!    squares (f64) and count of non-finite elements are all-gathered (one
//!    call, two numbers a rank) and added in rank order, so every rank
//!    takes the same decision;
//! 3. the rank steps its shard with an inner optimizer of any backend
//!    ([`crate::CpuOptimizer`], [`crate::GpuOptimizer`]) built over it;
//! 4. the shards of the parameters are all-gathered.
//!
//! # Determinism, and where it differs from one process
//!
//! The transport only moves data; every sum is formed here, in rank order,
//! so a run is reproducible bit for bit for a given N. It ends bit for bit
//! where one [`crate::CpuOptimizer`] ends when that one is given the same
//! reduced gradients (summed in rank order, as above), for every
//! element-wise rule — except for the gradient norm of clipping: one
//! process adds the squares in chunks of 65,536 elements, the ranks in
//! their shards' pieces of those chunks, so the f64 sums associate
//! differently (a relative difference of order 1e-16), which after rounding
//! to the f32 norm can move it by one ulp (a relative 6e-8) in rare cases,
//! and the clip coefficient with it.
//!
//! LAMB's trust ratio needs the norms of each whole tensor: between its
//! two passes each rank's per-tensor sums of `θ²` and `u²` (f64, two a
//! tensor) are all-gathered and added in rank order
//! ([`Optimizer::step_combining_tensor_sums`], which both backends have;
//! an inner optimizer that cannot, one with its own clipping for example,
//! is refused with [`Error::Unsupported`] when the sharded one is built).
//! On the CPU a tensor that lies in one shard ends bit for bit as in one
//! process. For one cut by a shard boundary the sums are formed in other
//! pieces: inside a block of 256 elements the squares are added in f32
//! lanes of 8 (a relative error below `8·2⁻²⁴` each way), so its norms,
//! and the trust ratio with them, can differ from one process's by about
//! 1e-6 relative, and the update `lr·ratio·u` by as much; the moments
//! never differ (they do not depend on the norms). On the GPU every
//! tensor can differ so: its tiles' f32 sums (up to 4096 squares each) are
//! read back and added on the host in f64, where one GPU process adds
//! them in f32 on the GPU, and a tile's lanes depend on where the tensor
//! starts in the shard; the bound is the same, about 1e-6 relative a
//! step on the update.
//!
//! # Errors
//!
//! Every call that can fail on one rank alone (bad gradient lengths, a
//! failed build or load, an inner step that fails) exchanges a flag with
//! the others, so all ranks return an error together and none waits: the
//! failing rank its own error, the others [`Error::RankMismatch`]. Bad
//! lengths and a refused load change nothing on any rank. An inner step
//! refused by its rule fails alike on every rank (they hold the same
//! hyperparameters) and changes nothing; one that fails on one rank only
//! (a lost GPU device) leaves the other ranks stepped: restore every rank
//! from the last checkpoint.
//! Tensor lengths or rules that differ between ranks are found when the
//! optimizer is built ([`Error::RankMismatch`] on every rank). A rank that
//! dies is the transport's to handle: with MPI (`MpiCollective`, feature
//! `mpi`) the default error handler aborts the whole job, so the other
//! ranks end rather than hang. Without the feature there is no
//! `MpiCollective` at all (a compile error, never a run-time surprise);
//! [`ThreadCollective`] shards over threads of one process.

mod collective;
#[cfg(test)]
mod tests;

#[cfg(feature = "mpi")]
pub use collective::MpiCollective;
pub use collective::{Collective, ThreadCollective};

use crate::checkpoint::Checkpoint;
use crate::clip::{sum_squares, ClipGradNorm};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::optimizer::Optimizer;
use crate::rules::{inverse_grad_scale, Config, RuleKind};
use std::ops::Range;

/// How the ranks' gradients are combined before the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradReduce {
    /// Their sum, in rank order.
    Sum,
    /// Their sum in rank order divided by the rank count, in f32.
    Mean,
}

/// The packed elements `rank` owns of `total` split over `ranks`: contiguous,
/// the first `total % ranks` ranks one element more.
pub fn shard_range(total: usize, ranks: usize, rank: usize) -> Range<usize> {
    let ranks = ranks.max(1);
    let (base, extra) = (total / ranks, total % ranks);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The lengths of the pieces of the tensors (`lengths`, packed) that fall in
/// `range`, in order, empty pieces left out; one empty piece if none. The
/// inner optimizer of a shard is built over these.
pub fn shard_lengths(lengths: &[usize], range: Range<usize>) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for &n in lengths {
        let (a, b) = (at.max(range.start), (at + n).min(range.end));
        if a < b {
            out.push(b - a);
        }
        at += n;
    }
    if out.is_empty() {
        out.push(0);
    }
    out
}

/// The tensor of each piece [`shard_lengths`] gives for `range` (none for
/// the one empty piece of an empty shard).
fn shard_tensors(lengths: &[usize], range: Range<usize>) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for (t, &n) in lengths.iter().enumerate() {
        if at.max(range.start) < (at + n).min(range.end) {
            out.push(t);
        }
        at += n;
    }
    out
}

/// LAMB's per-tensor `[Σθ², Σu²]` of this rank's pieces (`sums`, the
/// pieces' tensors `tensors`) replaced by the whole tensors' sums: every
/// rank's sums all-gathered (two numbers a tensor, zero where a rank holds
/// none of it) and added in rank order.
fn combine_tensor_sums(
    comm: &impl Collective,
    tensors: &[usize],
    n_tensors: usize,
    sums: &mut [[f64; 2]],
) -> Result<()> {
    let mut mine = vec![0.0f64; 2 * n_tensors];
    for (&t, s) in tensors.iter().zip(sums.iter()) {
        mine[2 * t..2 * t + 2].copy_from_slice(s);
    }
    let all = comm.all_gather_f64(&mine)?;
    for (&t, s) in tensors.iter().zip(sums.iter_mut()) {
        let mut total = [0.0f64; 2];
        for rank in all.chunks(2 * n_tensors) {
            total[0] += rank[2 * t];
            total[1] += rank[2 * t + 1];
        }
        *s = total;
    }
    Ok(())
}

/// An optimizer whose state is sharded over the ranks of a [`Collective`]
/// (ZeRO stage 1; see the [module docs](self) for the step, its
/// determinism and its errors). Every rank builds one with the same
/// parameters and calls the same methods in the same order.
///
/// ```
/// use wgpu_optim::sharded::{GradReduce, ShardedOptimizer, ThreadCollective};
/// use wgpu_optim::{Adam, CpuOptimizer};
/// let params = [vec![1.0f32, 2.0, 3.0], vec![4.0f32, 5.0]];
/// let ends: Vec<Vec<f32>> = std::thread::scope(|s| {
///     let handles: Vec<_> = ThreadCollective::group(2)
///         .into_iter()
///         .map(|comm| {
///             let params = &params;
///             s.spawn(move || {
///                 let p: Vec<&[f32]> = params.iter().map(|t| &t[..]).collect();
///                 let mut opt = ShardedOptimizer::new(comm, &p, GradReduce::Mean, |shard| {
///                     CpuOptimizer::new(Adam::default(), shard)
///                 })?;
///                 opt.step(&[&[0.1, 0.2, 0.3], &[0.4, 0.5]])?;
///                 Ok::<_, wgpu_optim::Error>(opt.params_flat().to_vec())
///             })
///         })
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// // Both ranks hold all the parameters, each moved by about lr = 1e-3.
/// assert_eq!(ends[0], ends[1]);
/// assert!((ends[0][4] - (5.0 - 1e-3)).abs() < 1e-6);
/// ```
pub struct ShardedOptimizer<C: Collective, O: Optimizer> {
    comm: C,
    layout: Layout,
    /// Every rank's shard, in rank order.
    ranges: Vec<Range<usize>>,
    /// All the parameters, packed, as every rank holds them.
    params: Vec<f32>,
    inner: O,
    reduce: GradReduce,
    clip: Option<ClipGradNorm>,
    last_grad_norm: Option<f32>,
    skip_nonfinite: bool,
    skipped: u64,
    last_skipped: bool,
    grad_scale: f64,
    inv_scale: f32,
}

/// An FNV-1a hash of the tensor lengths and the rule, to compare ranks.
fn fingerprint(lengths: &[usize], rule: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for &n in lengths {
        (n as u64).to_le_bytes().into_iter().for_each(&mut eat);
    }
    rule.bytes().for_each(&mut eat);
    h
}

/// Every rank learns whether every rank's `local` is `Ok`: the failing
/// ranks return their error, the others [`Error::RankMismatch`].
fn agree<T>(comm: &impl Collective, local: Result<T>) -> Result<T> {
    let flags = comm.all_gather_f64(&[if local.is_ok() { 0.0 } else { 1.0 }])?;
    match local {
        Err(e) => Err(e),
        Ok(v) => match flags.iter().position(|&f| f != 0.0) {
            None => Ok(v),
            Some(r) => Err(Error::RankMismatch(format!(
                "rank {r} refused the call; nothing changed here"
            ))),
        },
    }
}

impl<C: Collective, O: Optimizer> ShardedOptimizer<C, O> {
    /// Shards `params` (every rank's copy, the same on every rank) over the
    /// ranks of `comm`, and builds this rank's inner optimizer with `build`
    /// over its shard's pieces of the tensors ([`shard_lengths`]). Refused
    /// on every rank when any rank's `build` fails, the ranks' tensor
    /// lengths or rules differ ([`Error::RankMismatch`]), or the rule is
    /// LAMB on an inner optimizer that cannot
    /// [`Optimizer::step_combining_tensor_sums`] (its own clipping or skip,
    /// groups, low precision: [`Error::Unsupported`]).
    pub fn new(
        comm: C,
        params: &[&[f32]],
        reduce: GradReduce,
        build: impl FnOnce(&[&[f32]]) -> Result<O>,
    ) -> Result<Self> {
        let (n, rank) = (comm.size(), comm.rank());
        let local = (|| {
            if params.is_empty() {
                return Err(Error::EmptyParameterList);
            }
            let layout = Layout::of(params)?;
            let ranges: Vec<_> = (0..n).map(|r| shard_range(layout.total(), n, r)).collect();
            let flat: Vec<f32> = params.iter().flat_map(|t| t.iter().copied()).collect();
            let mine = &flat[ranges[rank].clone()];
            let pieces = Layout::new(&shard_lengths(layout.lengths(), ranges[rank].clone()))?;
            let inner = build(&pieces.split(mine)?)?;
            if inner.config().is_matrix_rule() {
                return Err(matrix_rule_unsupported(inner.config()));
            }
            if inner.config().kind() == RuleKind::Lamb && !inner.combines_tensor_sums() {
                return Err(Error::Unsupported(
                    "LAMB in a ShardedOptimizer over an inner optimizer that cannot combine its per-tensor norms across ranks (one with its own clipping, non-finite skip, groups or low-precision storage)".into(),
                ));
            }
            if inner.layout().lengths() != pieces.lengths() {
                return Err(Error::Collective(
                    "the inner optimizer was not built over the shard given".into(),
                ));
            }
            Ok((layout, ranges, flat, inner))
        })();
        // One call: each rank's success and what it was built with.
        let mine = match &local {
            Ok((layout, _, _, inner)) => {
                let h = fingerprint(layout.lengths(), inner.config().kind().name());
                [0.0, (h >> 32) as f64, (h & 0xffff_ffff) as f64]
            }
            Err(_) => [1.0, 0.0, 0.0],
        };
        let all = comm.all_gather_f64(&mine)?;
        let (layout, ranges, params, inner) = local?;
        if let Some(r) = all.chunks(3).position(|c| c[0] != 0.0) {
            return Err(Error::RankMismatch(format!(
                "rank {r} failed to build its shard"
            )));
        }
        if let Some(r) = all.chunks(3).position(|c| c[1..] != mine[1..]) {
            return Err(Error::RankMismatch(format!(
                "rank {r} has other tensor lengths or another rule than rank {rank}"
            )));
        }
        Ok(ShardedOptimizer {
            comm,
            layout,
            ranges,
            params,
            inner,
            reduce,
            clip: None,
            last_grad_norm: None,
            skip_nonfinite: false,
            skipped: 0,
            last_skipped: false,
            grad_scale: 1.0,
            inv_scale: 1.0,
        })
    }

    /// One step with this rank's gradient of every parameter tensor (the
    /// full tensors, not the shard). Lengths are checked on every rank
    /// first: on error nothing changes on any rank.
    pub fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
        agree(&self.comm, self.layout.check(grads))?;
        let counts: Vec<usize> = self.ranges.iter().map(|r| r.len()).collect();
        let me = self.comm.rank();
        let m = counts[me];
        let flat: Vec<f32> = grads.iter().flat_map(|t| t.iter().copied()).collect();
        let recv = self
            .comm
            .all_to_all_f32(&flat, &counts, &vec![m; counts.len()])?;
        let mut g = recv[..m].to_vec();
        for part in recv[m..].chunks(m.max(1)).take(counts.len() - 1) {
            g.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        if self.reduce == GradReduce::Mean {
            let n = counts.len() as f32;
            g.iter_mut().for_each(|a| *a /= n);
        }
        let (mut norm, mut nonfinite) = (None, false);
        if self.clip.is_some() || self.skip_nonfinite {
            use rayon::prelude::*;
            let chunks: Vec<f64> = g
                .par_chunks(1 << 16)
                .map(|c| sum_squares(c, self.inv_scale))
                .collect();
            let bad = g.par_iter().filter(|x| !x.is_finite()).count();
            let all = self
                .comm
                .all_gather_f64(&[chunks.iter().sum::<f64>(), bad as f64])?;
            let total: f64 = all.chunks(2).map(|c| c[0]).sum();
            nonfinite = all.chunks(2).any(|c| c[1] != 0.0);
            if self.clip.is_some() {
                norm = Some(total.sqrt() as f32);
            }
        }
        // The single-process order: the norm, the skip, then the refusal.
        if self.skip_nonfinite && nonfinite {
            self.last_grad_norm = norm;
            self.skipped += 1;
            self.last_skipped = true;
            return Ok(());
        }
        let mut coef = 1.0f32;
        if let (Some(clip), Some(n)) = (self.clip, norm) {
            if clip.error_if_nonfinite && !n.is_finite() {
                if self.skip_nonfinite {
                    self.skipped += 1;
                    self.last_skipped = true;
                }
                self.last_grad_norm = norm;
                return Err(Error::NonFiniteGradNorm { norm: n as f64 });
            }
            coef = clip.scale(n);
        }
        // As the CPU's GradScales: g · inv_scale · clip (·1 is exact).
        if self.inv_scale != 1.0 || coef != 1.0 {
            let inv = self.inv_scale;
            g.iter_mut().for_each(|a| *a = *a * inv * coef);
        }
        let stepped = if self.inner.config().kind() == RuleKind::Lamb {
            let (comm, inner) = (&self.comm, &mut self.inner);
            let tensors = shard_tensors(self.layout.lengths(), self.ranges[me].clone());
            let n_tensors = self.layout.len();
            let pieces = inner.layout().split(&g);
            pieces.and_then(|pieces| {
                inner.step_combining_tensor_sums(&pieces, &mut |sums| {
                    combine_tensor_sums(comm, &tensors, n_tensors, sums)
                })
            })
        } else {
            self.inner
                .layout()
                .split(&g)
                .and_then(|pieces| self.inner.step(&pieces))
        };
        agree(&self.comm, stepped)?;
        self.last_grad_norm = norm;
        self.last_skipped = false;
        let mine: Vec<f32> = self.inner.read_params()?.concat();
        self.params = self.comm.all_gather_f32(&mine, &counts)?;
        Ok(())
    }

    /// All the parameters, packed, after the last step (the same on every rank).
    pub fn params_flat(&self) -> &[f32] {
        &self.params
    }

    /// Parameter tensor `i` (panics if `i` is out of range, as indexing does).
    pub fn param(&self, i: usize) -> &[f32] {
        &self.params[self.layout.range(i)]
    }

    /// The layout of all the parameters.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The packed elements whose state this rank holds.
    pub fn shard(&self) -> Range<usize> {
        self.ranges[self.comm.rank()].clone()
    }

    /// This rank's optimizer over its shard.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// The transport.
    pub fn collective(&self) -> &C {
        &self.comm
    }

    /// The rule and its hyperparameters in force.
    pub fn config(&self) -> &Config {
        self.inner.config()
    }

    /// Steps applied (skipped steps not counted).
    pub fn step_count(&self) -> u64 {
        self.inner.step_count()
    }

    /// Sets the learning rate (every rank must set the same).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.inner.set_lr(lr)
    }

    /// Sets the momentum (or `betas[0]`) as
    /// [`crate::CpuOptimizer::set_momentum`] (every rank the same).
    pub fn set_momentum(&mut self, momentum: f64) -> Result<()> {
        self.inner.set_momentum(momentum)
    }

    /// Global-norm clipping over all ranks' shards, as
    /// [`crate::CpuOptimizer::set_clip_grad_norm`].
    pub fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
        if let Some(c) = clip {
            c.validate()?;
        }
        self.clip = clip;
        Ok(())
    }

    /// The global norm of the last step's reduced gradients, with clipping on.
    pub fn last_grad_norm(&self) -> Option<f32> {
        self.last_grad_norm
    }

    /// Skip a step whose reduced gradients hold a NaN or an infinity on any
    /// rank, on every rank.
    pub fn set_skip_nonfinite(&mut self, skip: bool) {
        self.skip_nonfinite = skip;
    }

    /// Steps skipped so far.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Whether the last step was skipped.
    pub fn last_step_skipped(&self) -> bool {
        self.last_skipped
    }

    /// The loss scale the reduced gradients are divided by (1: none).
    pub fn set_grad_scale(&mut self, scale: f64) -> Result<()> {
        self.inv_scale = inverse_grad_scale(scale)?;
        self.grad_scale = scale;
        Ok(())
    }

    /// Bytes this rank sends a step, payload only: its gradient for the
    /// other ranks' shards, and its shard of the parameters to each other
    /// rank (plus 8 bytes a collective for the flags and, with clipping or
    /// the skip, 16 for the partial sums, not counted).
    pub fn bytes_sent_per_step(&self) -> u64 {
        let n = self.ranges.len() as u64;
        let m = self.shard().len() as u64;
        let total = self.layout.total() as u64;
        4 * ((total - m) + m * (n - 1))
    }

    /// This rank's shard as a [`Checkpoint`] over its pieces of the tensors
    /// ([`shard_lengths`]), with the sharded optimizer's clipping, skip and
    /// loss scale; [`merge`] makes one single-file checkpoint of all ranks'.
    pub fn shard_checkpoint(&self) -> Result<Checkpoint> {
        let mut c = self.inner.checkpoint()?;
        c.clip = self.clip;
        c.skip_nonfinite = self.skip_nonfinite;
        c.skipped_steps = self.skipped;
        c.grad_scale = self.grad_scale;
        Ok(c)
    }

    /// The single-file checkpoint of all ranks, on every rank (the shards'
    /// state all-gathered: the whole state's bytes through each rank).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut c = self.shard_checkpoint()?;
        let counts: Vec<usize> = self.ranges.iter().map(|r| r.len()).collect();
        for (_, v) in c.state.iter_mut() {
            *v = self.comm.all_gather_f32(v, &counts)?;
        }
        c.params = Some(self.params.clone());
        c.lengths = self.layout.lengths().to_vec();
        Ok(c)
    }

    /// Restores a single-file checkpoint (of any rank count: each rank takes
    /// its shard of it, [`split`]). Same checks as
    /// [`crate::CpuOptimizer::load_checkpoint`], on every rank: if any rank
    /// refuses, none changes.
    pub fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let (n, rank) = (self.ranges.len(), self.comm.rank());
        let local = (|| {
            if ckpt.lengths != self.layout.lengths() {
                return Err(Error::CheckpointMismatch {
                    what: "tensor lengths".into(),
                    expected: format!("{:?}", self.layout.lengths()),
                    got: format!("{:?}", ckpt.lengths),
                });
            }
            let inv_scale = inverse_grad_scale(ckpt.grad_scale)?;
            if let Some(c) = ckpt.clip {
                c.validate()?;
            }
            let shard = split_one(ckpt, n, rank)?;
            let before = self.inner.checkpoint()?;
            self.inner.load_checkpoint(&shard)?;
            Ok((before, inv_scale))
        })();
        let before = local.as_ref().ok().map(|(b, _)| b.clone());
        match agree(&self.comm, local) {
            Ok((_, inv_scale)) => {
                self.inv_scale = inv_scale;
                self.grad_scale = ckpt.grad_scale;
                self.clip = ckpt.clip;
                self.skip_nonfinite = ckpt.skip_nonfinite;
                self.skipped = ckpt.skipped_steps;
                self.last_grad_norm = None;
                self.last_skipped = false;
                if let Some(p) = &ckpt.params {
                    self.params.copy_from_slice(p);
                }
                Ok(())
            }
            Err(e) => {
                // This rank loaded and another refused: put ours back (a
                // checkpoint it just made, which it accepts).
                if let Some(before) = before {
                    self.inner.load_checkpoint(&before)?;
                }
                Err(e)
            }
        }
    }
}

/// One rank's shard of a single-file checkpoint.
fn split_one(full: &Checkpoint, ranks: usize, rank: usize) -> Result<Checkpoint> {
    let range = shard_range(full.lengths.iter().sum(), ranks, rank);
    let mut c = full.clone();
    c.lengths = shard_lengths(&full.lengths, range.clone());
    for (_, v) in c.state.iter_mut() {
        *v = v
            .get(range.clone())
            .ok_or_else(|| Error::Checkpoint("a state tensor is shorter than the tensors".into()))?
            .to_vec();
    }
    if let Some(p) = &mut c.params {
        *p = p
            .get(range)
            .ok_or_else(|| Error::Checkpoint("the parameters are shorter than the tensors".into()))?
            .to_vec();
    }
    c.scheduler = None;
    Ok(c)
}

/// A shard cuts tensors at any element: a matrix rule (Adafactor, Muon)
/// needs each matrix whole.
fn matrix_rule_unsupported(config: &crate::Config) -> Error {
    Error::Unsupported(format!(
        "{} in a ShardedOptimizer (a shard cuts its matrices)",
        config.kind()
    ))
}

/// The single-file checkpoint over `lengths` of the ranks' shard
/// checkpoints ([`ShardedOptimizer::shard_checkpoint`]), in rank order:
/// their state and parameters concatenated. They must agree on everything
/// else (rule, step, scalar state, options) and their shards must add up
/// to `lengths` ([`Error::CheckpointMismatch`]).
pub fn merge(shards: &[Checkpoint], lengths: &[usize]) -> Result<Checkpoint> {
    let Some(first) = shards.first() else {
        return Err(Error::Checkpoint("no shard checkpoints to merge".into()));
    };
    let total: usize = lengths.iter().sum();
    if first.config.is_matrix_rule() {
        return Err(matrix_rule_unsupported(&first.config));
    }
    for (r, s) in shards.iter().enumerate() {
        s.validate()?;
        let range = shard_range(total, shards.len(), r);
        let want = shard_lengths(lengths, range);
        let same = s.config == first.config
            && s.step == first.step
            && s.buffer_filled == first.buffer_filled
            && s.scalar_state == first.scalar_state
            && s.clip == first.clip
            && s.skip_nonfinite == first.skip_nonfinite
            && s.skipped_steps == first.skipped_steps
            && s.grad_scale == first.grad_scale
            && s.params.is_some() == first.params.is_some()
            && s.state
                .iter()
                .map(|(n, _)| n)
                .eq(first.state.iter().map(|(n, _)| n));
        if !same || s.lengths != want {
            return Err(Error::CheckpointMismatch {
                what: format!("shard {r} of {}", shards.len()),
                expected: format!("the options of shard 0 and lengths {want:?}"),
                got: format!("lengths {:?}", s.lengths),
            });
        }
    }
    let mut c = first.clone();
    c.lengths = lengths.to_vec();
    for (i, (_, v)) in c.state.iter_mut().enumerate() {
        *v = shards
            .iter()
            .flat_map(|s| s.state[i].1.iter().copied())
            .collect();
    }
    if c.params.is_some() {
        c.params = Some(
            shards
                .iter()
                .flat_map(|s| s.params.iter().flatten().copied())
                .collect(),
        );
    }
    c.validate()?;
    Ok(c)
}

/// A single-file checkpoint cut into the shard checkpoints of `ranks`
/// ranks (the inverse of [`merge`]), to load with
/// [`Optimizer::load_checkpoint`] into each rank's inner optimizer, or to
/// save per rank.
pub fn split(full: &Checkpoint, ranks: usize) -> Result<Vec<Checkpoint>> {
    full.validate()?;
    if full.config.is_matrix_rule() {
        return Err(matrix_rule_unsupported(&full.config));
    }
    if ranks == 0 {
        return Err(Error::Checkpoint("split into 0 ranks".into()));
    }
    (0..ranks).map(|r| split_one(full, ranks, r)).collect()
}
