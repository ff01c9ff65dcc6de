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
//! [`ShardedOptimizer::with_shapes`] shards at tensor boundaries instead:
//! every rank owns whole tensors ([`whole_tensor_shards`], contiguous,
//! balanced by elements as nearly as whole tensors allow), which the
//! matrix rules (Adafactor, Muon) need; the step is the same, and it works
//! for every rule. It needs at least one tensor a rank. Its checkpoints
//! carry the shapes, by which [`merge`] and [`split`] know the cut.
//!
//! # Determinism, and where it differs from one process
//!
//! The transport only moves data; every sum is formed here, in rank order,
//! so a run is reproducible bit for bit for a given N. It ends bit for bit
//! where one [`crate::CpuOptimizer`] ends when that one is given the same
//! reduced gradients (summed in rank order, as above), for every
//! element-wise rule, and with whole tensors a rank for every rule (each
//! rank runs one process's code on whole tensors: the matrix rules, and
//! LAMB on the CPU, bit for bit; tested on both backends for the matrix
//! rules) — except for the gradient norm of clipping: one
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
use crate::layout::{Layout, Shape};
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

/// The tensors each of `ranks` ranks owns when shards hold whole tensors
/// ([`ShardedOptimizer::with_shapes`]): contiguous ranges of tensor
/// indices, each rank at least one tensor, each boundary the tensor
/// boundary nearest to where [`shard_range`] would cut (the first of two
/// as near). Refused ([`Error::InvalidOptions`]) with fewer tensors than
/// ranks.
pub fn whole_tensor_shards(lengths: &[usize], ranks: usize) -> Result<Vec<Range<usize>>> {
    let (t, ranks) = (lengths.len(), ranks.max(1));
    if t < ranks {
        return Err(Error::InvalidOptions(format!(
            "{t} tensors cannot be sharded whole over {ranks} ranks: each rank needs one"
        )));
    }
    let mut ends = vec![0usize; t + 1];
    for (i, &n) in lengths.iter().enumerate() {
        ends[i + 1] = ends[i] + n;
    }
    let total = ends[t];
    let mut out = Vec::with_capacity(ranks);
    let mut start = 0;
    for r in 1..ranks {
        let target = shard_range(total, ranks, r).start;
        // At least one tensor for this rank and for each one after it.
        let (lo, hi) = (start + 1, t - (ranks - r));
        let cut = (lo..=hi)
            .min_by_key(|&b| ends[b].abs_diff(target))
            .unwrap_or(lo);
        out.push(start..cut);
        start = cut;
    }
    out.push(start..t);
    Ok(out)
}

/// One rank's shard: its packed elements and, when shards hold whole
/// tensors, its tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shard {
    elements: Range<usize>,
    tensors: Option<Range<usize>>,
}

impl Shard {
    /// The lengths of the tensors (`lengths`, packed) the inner optimizer
    /// of this shard is built over: its whole tensors, empty ones included,
    /// or its pieces ([`shard_lengths`]).
    fn piece_lengths(&self, lengths: &[usize]) -> Vec<usize> {
        match &self.tensors {
            Some(t) => lengths[t.clone()].to_vec(),
            None => shard_lengths(lengths, self.elements.clone()),
        }
    }

    /// The tensor of each of those pieces.
    fn piece_tensors(&self, lengths: &[usize]) -> Vec<usize> {
        match &self.tensors {
            Some(t) => t.clone().collect(),
            None => shard_tensors(lengths, self.elements.clone()),
        }
    }
}

/// Every rank's shard of tensors of `lengths`: cut anywhere
/// ([`shard_range`]) or, with `whole`, at tensor boundaries
/// ([`whole_tensor_shards`]).
fn shards_of(lengths: &[usize], ranks: usize, whole: bool) -> Result<Vec<Shard>> {
    if !whole {
        let total = lengths.iter().sum();
        return Ok((0..ranks)
            .map(|r| Shard {
                elements: shard_range(total, ranks, r),
                tensors: None,
            })
            .collect());
    }
    let layout = Layout::new(lengths)?;
    Ok(whole_tensor_shards(lengths, ranks)?
        .into_iter()
        .map(|t| Shard {
            elements: span(&layout, t.clone()),
            tensors: Some(t),
        })
        .collect())
}

/// The packed elements of tensors `tensors` of `layout`.
fn span(layout: &Layout, tensors: Range<usize>) -> Range<usize> {
    let at = |i: usize| layout.offsets().get(i).copied().unwrap_or(layout.total());
    at(tensors.start)..at(tensors.end)
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
    shards: Vec<Shard>,
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

/// An FNV-1a hash of the tensor lengths, their shapes if any, and the
/// rule, to compare ranks.
fn fingerprint(layout: &Layout, rule: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for &n in layout.lengths() {
        (n as u64).to_le_bytes().into_iter().for_each(&mut eat);
    }
    for shape in layout.shapes().unwrap_or_default() {
        // A separator, so that [2, 3] [4] and [2] [3, 4] differ.
        eat(0xff);
        for &d in shape.dims() {
            (d as u64).to_le_bytes().into_iter().for_each(&mut eat);
        }
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
    /// lengths or rules differ ([`Error::RankMismatch`]), the rule is a
    /// matrix rule (a shard cuts its matrices: build it with
    /// [`ShardedOptimizer::with_shapes`]), or the rule is LAMB on an inner
    /// optimizer that cannot [`Optimizer::step_combining_tensor_sums`] (its
    /// own clipping or skip, groups, low precision: [`Error::Unsupported`]).
    pub fn new(
        comm: C,
        params: &[&[f32]],
        reduce: GradReduce,
        build: impl FnOnce(&[&[f32]]) -> Result<O>,
    ) -> Result<Self> {
        Self::build(comm, params, None, reduce, |pieces, _| build(pieces))
    }

    /// As [`ShardedOptimizer::new`], with each tensor's [`Shape`], for any
    /// rule, the matrix rules (Adafactor, Muon) included: shards hold whole
    /// tensors ([`whole_tensor_shards`]), and `build` gets this rank's
    /// tensors and their shapes, to build its inner optimizer with
    /// ([`crate::CpuOptimizer::with_shapes`],
    /// [`crate::GpuOptimizer::with_shapes`]). Shards are balanced by
    /// elements as nearly as whole tensors allow: a model whose largest
    /// tensor is most of it puts most of the state on one rank. Besides
    /// `new`'s refusals: shapes that do not hold their tensors
    /// ([`Error::ShapeMismatch`]), fewer tensors than ranks
    /// ([`Error::InvalidOptions`]), ranks whose shapes differ
    /// ([`Error::RankMismatch`]), and a matrix rule's inner optimizer built
    /// over other shapes than its shard's ([`Error::InvalidOptions`]).
    ///
    /// ```
    /// use wgpu_optim::sharded::{GradReduce, ShardedOptimizer, ThreadCollective};
    /// use wgpu_optim::{CpuOptimizer, Muon, Shape};
    /// let (w1, w2) = (vec![0.5f32; 6], vec![-0.5f32; 4]);
    /// let shapes = [Shape::matrix(2, 3), Shape::matrix(2, 2)];
    /// let owned: Vec<usize> = std::thread::scope(|s| {
    ///     let handles: Vec<_> = ThreadCollective::group(2)
    ///         .into_iter()
    ///         .map(|comm| {
    ///             let (w1, w2, shapes) = (&w1, &w2, &shapes);
    ///             s.spawn(move || {
    ///                 let mut opt = ShardedOptimizer::with_shapes(
    ///                     comm, &[w1, w2], shapes, GradReduce::Mean,
    ///                     |tensors, shapes| CpuOptimizer::with_shapes(Muon::default(), tensors, shapes),
    ///                 )?;
    ///                 opt.step(&[&[0.1; 6], &[0.2; 4]])?;
    ///                 Ok::<_, wgpu_optim::Error>(opt.shard().len())
    ///             })
    ///         })
    ///         .collect();
    ///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    /// });
    /// // Rank 0 owns the 2×3 matrix, rank 1 the 2×2.
    /// assert_eq!(owned, vec![6, 4]);
    /// ```
    pub fn with_shapes(
        comm: C,
        params: &[&[f32]],
        shapes: &[Shape],
        reduce: GradReduce,
        build: impl FnOnce(&[&[f32]], &[Shape]) -> Result<O>,
    ) -> Result<Self> {
        Self::build(comm, params, Some(shapes), reduce, build)
    }

    /// `new` (no shapes: shards cut anywhere) or `with_shapes` (whole
    /// tensors).
    fn build(
        comm: C,
        params: &[&[f32]],
        shapes: Option<&[Shape]>,
        reduce: GradReduce,
        build: impl FnOnce(&[&[f32]], &[Shape]) -> Result<O>,
    ) -> Result<Self> {
        let (n, rank) = (comm.size(), comm.rank());
        let local = (|| {
            if params.is_empty() {
                return Err(Error::EmptyParameterList);
            }
            let mut layout = Layout::of(params)?;
            if let Some(shapes) = shapes {
                layout = layout.with_shapes(shapes)?;
            }
            let shards = shards_of(layout.lengths(), n, shapes.is_some())?;
            let flat: Vec<f32> = params.iter().flat_map(|t| t.iter().copied()).collect();
            let me = &shards[rank];
            let mine = &flat[me.elements.clone()];
            let pieces = Layout::new(&me.piece_lengths(layout.lengths()))?;
            let my_shapes = match (&me.tensors, shapes) {
                (Some(t), Some(s)) => s[t.clone()].to_vec(),
                _ => Vec::new(),
            };
            let inner = build(&pieces.split(mine)?, &my_shapes)?;
            let config = inner.config();
            if config.is_matrix_rule() && shapes.is_none() {
                return Err(matrix_rule_unsupported(config));
            }
            if config.is_matrix_rule() && inner.layout().shapes() != Some(&my_shapes[..]) {
                return Err(Error::InvalidOptions(format!(
                    "{} in a ShardedOptimizer: the inner optimizer was not built over its shard's shapes",
                    config.kind()
                )));
            }
            if config.kind() == RuleKind::Lamb && !inner.combines_tensor_sums() {
                return Err(Error::Unsupported(
                    "LAMB in a ShardedOptimizer over an inner optimizer that cannot combine its per-tensor norms across ranks (one with its own clipping, non-finite skip, groups or low-precision storage)".into(),
                ));
            }
            if inner.layout().lengths() != pieces.lengths() {
                return Err(Error::Collective(
                    "the inner optimizer was not built over the shard given".into(),
                ));
            }
            Ok((layout, shards, flat, inner))
        })();
        // One call: each rank's success and what it was built with.
        let mine = match &local {
            Ok((layout, _, _, inner)) => {
                let h = fingerprint(layout, inner.config().kind().name());
                [0.0, (h >> 32) as f64, (h & 0xffff_ffff) as f64]
            }
            Err(_) => [1.0, 0.0, 0.0],
        };
        let all = comm.all_gather_f64(&mine)?;
        let (layout, shards, params, inner) = local?;
        if let Some(r) = all.chunks(3).position(|c| c[0] != 0.0) {
            return Err(Error::RankMismatch(format!(
                "rank {r} failed to build its shard"
            )));
        }
        if let Some(r) = all.chunks(3).position(|c| c[1..] != mine[1..]) {
            return Err(Error::RankMismatch(format!(
                "rank {r} has other tensor lengths, shapes or another rule than rank {rank}"
            )));
        }
        Ok(ShardedOptimizer {
            comm,
            layout,
            shards,
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
        let counts: Vec<usize> = self.shards.iter().map(|s| s.elements.len()).collect();
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
            let tensors = self.shards[me].piece_tensors(self.layout.lengths());
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
        self.shards[self.comm.rank()].elements.clone()
    }

    /// The tensors whose state this rank holds, when shards hold whole
    /// tensors ([`ShardedOptimizer::with_shapes`]); `None` when they cut
    /// anywhere.
    pub fn shard_tensors(&self) -> Option<Range<usize>> {
        self.shards[self.comm.rank()].tensors.clone()
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
        let n = self.shards.len() as u64;
        let m = self.shard().len() as u64;
        let total = self.layout.total() as u64;
        4 * ((total - m) + m * (n - 1))
    }

    /// This rank's shard as a [`Checkpoint`] over its pieces of the tensors
    /// ([`shard_lengths`]), with the sharded optimizer's clipping, skip and
    /// loss scale; [`merge`] makes one single-file checkpoint of all ranks'.
    pub fn shard_checkpoint(&self) -> Result<Checkpoint> {
        let mut c = self.inner.checkpoint()?;
        // The shard's own shapes with whole tensors (so that `merge` and
        // `split` know the cut), none for pieces.
        c.shapes = match (self.shard_tensors(), self.layout.shapes()) {
            (Some(t), Some(s)) => s[t].to_vec(),
            _ => Vec::new(),
        };
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
        for (name, v) in c.state.iter_mut() {
            // A state tensor's shard: the shard's elements, or (Adafactor's
            // factored state) the state of the shard's whole tensors.
            let state = self.layout.state_layout(self.inner.config(), name);
            let counts: Vec<usize> = self
                .shards
                .iter()
                .map(|s| state_span(&state, s).len())
                .collect();
            *v = self.comm.all_gather_f32(v, &counts)?;
        }
        c.params = Some(self.params.clone());
        c.lengths = self.layout.lengths().to_vec();
        c.shapes = self.layout.shapes().unwrap_or_default().to_vec();
        Ok(c)
    }

    /// Restores a single-file checkpoint (of any rank count: each rank takes
    /// its shard of it, [`split`]). Same checks as
    /// [`crate::CpuOptimizer::load_checkpoint`], on every rank: if any rank
    /// refuses, none changes.
    pub fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let rank = self.comm.rank();
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
            let shard = split_one(ckpt, &self.shards[rank])?;
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

/// The packed elements of a state tensor (laid out as `state`, from
/// [`Layout::state_layout`]) that `shard` holds: its elements, or with whole
/// tensors the state of its tensors.
fn state_span(state: &Layout, shard: &Shard) -> Range<usize> {
    match &shard.tensors {
        Some(t) => span(state, t.clone()),
        None => shard.elements.clone(),
    }
}

/// One rank's shard of a single-file checkpoint.
fn split_one(full: &Checkpoint, shard: &Shard) -> Result<Checkpoint> {
    let layout = full.layout()?;
    let mut c = full.clone();
    c.lengths = shard.piece_lengths(&full.lengths);
    c.shapes = match &shard.tensors {
        Some(t) => full.shapes.get(t.clone()).unwrap_or_default().to_vec(),
        None => Vec::new(),
    };
    for (name, v) in c.state.iter_mut() {
        let range = state_span(&layout.state_layout(&full.config, name), shard);
        *v = v
            .get(range)
            .ok_or_else(|| Error::Checkpoint("a state tensor is shorter than the tensors".into()))?
            .to_vec();
    }
    if let Some(p) = &mut c.params {
        *p = p
            .get(shard.elements.clone())
            .ok_or_else(|| Error::Checkpoint("the parameters are shorter than the tensors".into()))?
            .to_vec();
    }
    c.scheduler = None;
    Ok(c)
}

/// Without shapes a shard cuts tensors at any element: a matrix rule
/// (Adafactor, Muon) needs each matrix whole.
fn matrix_rule_unsupported(config: &crate::Config) -> Error {
    Error::Unsupported(format!(
        "{} in ShardedOptimizer::new, whose shards cut matrices: build it with ShardedOptimizer::with_shapes (whole tensors a rank)",
        config.kind()
    ))
}

/// The single-file checkpoint over `lengths` of the ranks' shard
/// checkpoints ([`ShardedOptimizer::shard_checkpoint`]), in rank order:
/// their state, parameters and shapes concatenated. Shards with shapes are
/// whole tensors ([`whole_tensor_shards`]), the others pieces
/// ([`shard_range`]). They must agree on everything else (rule, step,
/// scalar state, options) and their shards must add up to `lengths`
/// ([`Error::CheckpointMismatch`]).
pub fn merge(shards: &[Checkpoint], lengths: &[usize]) -> Result<Checkpoint> {
    let Some(first) = shards.first() else {
        return Err(Error::Checkpoint("no shard checkpoints to merge".into()));
    };
    let whole = !first.shapes.is_empty();
    let cuts = shards_of(lengths, shards.len(), whole)?;
    for (r, (s, cut)) in shards.iter().zip(&cuts).enumerate() {
        s.validate()?;
        let want = cut.piece_lengths(lengths);
        let same = s.config == first.config
            && s.step == first.step
            && s.buffer_filled == first.buffer_filled
            && s.scalar_state == first.scalar_state
            && s.clip == first.clip
            && s.skip_nonfinite == first.skip_nonfinite
            && s.skipped_steps == first.skipped_steps
            && s.grad_scale == first.grad_scale
            && s.params.is_some() == first.params.is_some()
            && s.shapes.is_empty() != whole
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
    if first.config.is_matrix_rule() && !whole {
        return Err(matrix_rule_unsupported(&first.config));
    }
    let mut c = first.clone();
    c.lengths = lengths.to_vec();
    c.shapes = shards
        .iter()
        .flat_map(|s| s.shapes.iter().cloned())
        .collect();
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
/// save per rank: whole tensors a rank ([`whole_tensor_shards`], as
/// [`ShardedOptimizer::with_shapes`] cuts) when the checkpoint has shapes,
/// pieces ([`shard_range`], as [`ShardedOptimizer::new`]) otherwise.
pub fn split(full: &Checkpoint, ranks: usize) -> Result<Vec<Checkpoint>> {
    full.validate()?;
    if ranks == 0 {
        return Err(Error::Checkpoint("split into 0 ranks".into()));
    }
    let whole = !full.shapes.is_empty();
    if full.config.is_matrix_rule() && !whole {
        return Err(matrix_rule_unsupported(&full.config));
    }
    shards_of(&full.lengths, ranks, whole)?
        .iter()
        .map(|s| split_one(full, s))
        .collect()
}
