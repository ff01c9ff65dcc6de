//! The non-finite skip tracker: with `skip_nonfinite` the GPU decides
//! whether each step is applied and keeps the step counters; the host
//! learns them later from read-backs it never waits for unless it must.

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::layout::Counters;
use crate::rules::Config;

use super::optimizer::GpuOptimizer;
use super::readback::{map_counters, read_buffer, Readback};
use super::uniforms::TABLE_LEN;

/// What the host knows of the GPU's step counters while `skip_nonfinite`
/// is on (the design is in the README, "Non-finite gradients", and on
/// [`GpuOptimizer::set_skip_nonfinite`]).
///
/// The GPU decides each step whether it is applied; the host learns it
/// later, from read-backs it never waits for unless it must. The `*_known`
/// fields are the state after host step `host_steps_known` (steps are
/// numbered 1, 2, ... in the order queued); `host_steps_queued` steps have
/// been queued in all. A step's step-dependent scalars (Adam's bias
/// corrections, Adagrad's decayed lr, LAMB's bias corrections) depend on
/// how many steps were applied before it, which is `applied_known + j` for
/// some `j` in `0 ..= host_steps_queued − host_steps_known`: the host sends
/// the scalars of every such count (the table of
/// [`StepTail`](super::uniforms::StepTail)) and the GPU picks. A step can be queued only while that
/// window fits the table ([`TABLE_LEN`]); at its edge the host waits for
/// the read-back of a step already submitted.
///
/// A rule's scalar state (NAdam's `mu_product`, ASGD's `eta` and `mu`) is
/// history: the entry of count `applied_known + j` needs the state after
/// `j` of the window's steps were applied, which depends on which ones
/// when a hyperparameter the state reads changed among them
/// ([`Config::advances_alike`]). The tracker keeps the configuration of
/// every step of the window; while they advance the state alike the host
/// advances the known state `j` times for entry `j`, and otherwise it
/// first waits for the outcomes ([`GpuOptimizer::make_room`]). The GPU
/// shifts each step's outcome into a word of the counters, so a read-back
/// tells which of the (at most [`TABLE_LEN`]) steps it covers were applied,
/// and the known state is advanced over exactly those.
pub(super) struct SkipTracker {
    /// Steps queued in all (the number of the last one).
    pub(super) host_steps_queued: u64,
    /// The last host step whose outcome a read-back has told.
    pub(super) host_steps_known: u64,
    /// Steps applied up to `host_steps_known`.
    pub(super) applied_known: u64,
    /// Steps skipped up to `host_steps_known`.
    pub(super) skipped_known: u64,
    /// SGD's momentum buffer filled after `host_steps_known`.
    pub(super) momentum_filled_known: bool,
    /// Step `host_steps_known` was skipped.
    pub(super) last_skipped_known: bool,
    /// The rule's scalar state after `applied_known` steps.
    pub(super) scalar_state_known: Vec<f64>,
    /// The configuration in force at each step whose outcome is unknown,
    /// host steps `host_steps_known + 1 ..= host_steps_queued` in order.
    pub(super) window: VecDeque<Config>,
    /// Read-backs in flight: the staging buffer and its map result.
    pub(super) pending: Vec<Readback>,
    /// Staging buffers ready for reuse.
    pub(super) free: Vec<wgpu::Buffer>,
}

impl SkipTracker {
    /// Takes in a read-back of the counters: the GPU's numbers are the low
    /// 32 bits of counts that only grow, and lie between what the host
    /// knew and what it queued, so the host puts the high bits back.
    ///
    /// The newly known steps leave the window, and the scalar state is
    /// advanced over those the outcome bits say were applied (bit 0 is step
    /// `h`, bit 1 the one before; the window never holds more than the 32
    /// bits tell).
    fn learn(&mut self, w: CounterWords) {
        let h =
            self.host_steps_known + (w.host_step.wrapping_sub(self.host_steps_known as u32)) as u64;
        if h < self.host_steps_known || h > self.host_steps_queued {
            return;
        }
        let newly = h - self.host_steps_known;
        let mut applied = self.applied_known;
        for back in (0..newly).rev() {
            let Some(config) = self.window.pop_front() else {
                break;
            };
            if back < 32 && (w.outcomes >> back) & 1 == 1 {
                applied += 1;
                config.advance_scalar_state(&mut self.scalar_state_known, applied);
            }
        }
        self.applied_known += w.applied.wrapping_sub(self.applied_known as u32) as u64;
        debug_assert_eq!(applied, self.applied_known, "outcome bits against counts");
        self.skipped_known += w.skipped.wrapping_sub(self.skipped_known as u32) as u64;
        self.host_steps_known = h;
        self.momentum_filled_known = w.filled != 0;
        self.last_skipped_known = w.last_skipped != 0;
    }

    /// Steps queued whose outcome the host does not know yet.
    pub(super) fn outcomes_unknown(&self) -> u64 {
        self.host_steps_queued - self.host_steps_known
    }

    /// Whether the steps of the window advance the scalar state alike,
    /// so that the state after any `j` of them is known without knowing
    /// which.
    pub(super) fn window_advances_alike(&self) -> bool {
        let mut w = self.window.iter();
        match w.next() {
            None => true,
            Some(first) => w.all(|c| first.advances_alike(c)),
        }
    }

    /// Calls `f(j, state)` for each step count the next step may run at,
    /// `j = 0 ..= window`, with the scalar state after `applied_known + j`
    /// steps. Only while [`SkipTracker::window_advances_alike`].
    pub(super) fn for_each_count(&self, mut f: impl FnMut(u64, &[f64])) {
        let mut state = self.scalar_state_known.clone();
        f(0, &state);
        if let Some(config) = self.window.front() {
            for j in 1..=self.window.len() as u64 {
                config.advance_scalar_state(&mut state, self.applied_known + j);
                f(j, &state);
            }
        }
    }
}

/// The counters as read back (low 32 bits).
#[derive(Clone, Copy, Debug)]
struct CounterWords {
    applied: u32,
    host_step: u32,
    skipped: u32,
    filled: u32,
    last_skipped: u32,
    outcomes: u32,
}

impl CounterWords {
    fn of(words: &[u32]) -> Self {
        CounterWords {
            applied: words[0],
            host_step: words[1],
            skipped: words[2],
            filled: words[3],
            last_skipped: words[5],
            outcomes: words[6],
        }
    }
}

/// Words of the step-counter buffer (`counters` in tiles.wgsl): [0] steps
/// applied, [1] host step number last processed, [2] steps skipped, [3]
/// SGD buffer filled, [4] filled before the current step, [5] current step
/// skipped, [6] the outcomes of the last 32 steps (bit 0 the last, 1 when
/// applied); the counts their low 32 bits.
pub(super) const COUNTER_WORDS: u64 = 8;

impl GpuOptimizer {
    /// Skip steps whose gradients hold a NaN or an infinity (PyTorch's
    /// `GradScaler` `found_inf`, optax's `apply_if_finite`): the whole step
    /// is skipped, parameters, state and step count untouched, and counted
    /// ([`GpuOptimizer::skipped_steps`]). Off by default: a NaN then
    /// propagates, as in PyTorch.
    ///
    /// The GPU checks the gradients in the same submission as the update
    /// (the reduction of `shaders/reduce.wgsl` counts the non-finite
    /// elements) and decides alone: nothing is read back for the step, so
    /// stepping never waits. What the host cannot know is how many of the
    /// steps it queued were applied, and Adam's bias corrections (Adagrad's
    /// decayed lr, LAMB's) depend on that count, computed on the host in
    /// f64. So the GPU keeps the count, and each step carries the scalars of
    /// every count it may be at — at most 32, one per step queued since
    /// the host last learned the count — and the kernel picks the entry of
    /// the count it has. The host learns the count from small read-backs it
    /// maps asynchronously and collects when they are done, never waiting
    /// unless 32 steps are queued ahead of what it knows. The scalars are
    /// those of the same f64 formula as without skipping, so a run with
    /// skipped steps is bit for bit the run that never saw those gradients.
    ///
    /// A rule's scalar state (NAdam's `mu_product`, ASGD's `eta` and `mu`)
    /// is history, kept on the host, and the entry of each count is
    /// computed from the state after that many of the queued steps. That
    /// needs no waiting while the queued steps whose outcome is unknown
    /// were taken with the same value of what the state depends on
    /// (NAdam's `betas[0]`, ASGD's lr). Where that changed among them, the
    /// state depends on which were applied, so the next step first waits
    /// for their outcomes (the read-back of each step is already in
    /// flight): a step after each such change waits for the GPU, and a
    /// schedule that changes it every step (a `CyclicLr` cycling NAdam's
    /// `β1`, any lr schedule with ASGD) makes every step wait for the one
    /// before, as it would without skipping if the host read each step
    /// back. With [`GpuOptimizer::record_step`] the steps waited for must
    /// have been submitted ([`Error::UnsubmittedSteps`] otherwise).
    ///
    /// Turning it off waits for the queued steps (to learn the count).
    /// Toggle it between submissions, not between steps recorded into one
    /// encoder. Turning it on builds the reduction kernel the first time:
    /// [`Error::DeviceLimit`] on a device whose limits cannot host it, with
    /// nothing changed.
    pub fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()> {
        match (skip, self.skip.is_some()) {
            (true, false) => {
                self.check_skip_groups()?;
                if self.precision().stochastic_rounding() {
                    // The random bits follow the applied step, which the
                    // host no longer knows when queuing.
                    return Err(Error::Unsupported(
                        "skip_nonfinite with stochastic rounding on the GPU".into(),
                    ));
                }
                self.ensure_reduction()?;
                self.start_skipping()
            }
            (false, true) => {
                self.sync()?;
                if let Some(t) = self.skip.take() {
                    self.skipped_before += t.skipped_known;
                }
                // The GPU knew whether the momentum buffers were filled;
                // each group's flag takes it over.
                let counters = self.counters;
                if let Some(groups) = &mut self.groups {
                    for g in 0..groups.groups.len() {
                        groups.filled[g] = groups.counters(g, counters, true).buffer_filled;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Starts the skip tracker at the host's (exact) counts, and the GPU's
    /// counters with it.
    pub(super) fn start_skipping(&mut self) -> Result<()> {
        let c = self.counters;
        let words: [u32; COUNTER_WORDS as usize] = [
            c.step as u32,
            c.step as u32,
            0,
            c.buffer_filled as u32,
            c.buffer_filled as u32,
            0,
            0,
            0,
        ];
        let scalar_state_known = self.scalar_state.clone();
        let ctx = self.ctx.clone();
        ctx.scoped("starting the step counters", || {
            ctx.queue
                .write_buffer(&self.buffers.counters, 0, bytemuck::cast_slice(&words))
        })?;
        self.skip = Some(SkipTracker {
            host_steps_queued: c.step,
            host_steps_known: c.step,
            applied_known: c.step,
            skipped_known: 0,
            momentum_filled_known: c.buffer_filled,
            last_skipped_known: false,
            scalar_state_known,
            window: VecDeque::new(),
            pending: Vec::new(),
            free: Vec::new(),
        });
        Ok(())
    }

    /// Whether steps with non-finite gradients are skipped.
    pub fn skip_nonfinite(&self) -> bool {
        self.skip.is_some()
    }

    /// Steps skipped so far because a gradient was NaN or infinite (and,
    /// with `skip_nonfinite` on, steps refused by `error_if_nonfinite`).
    /// Waits for the queued steps: ask when you log, not every step.
    pub fn skipped_steps(&mut self) -> Result<u64> {
        self.sync()?;
        Ok(self.skipped_before + self.skip.as_ref().map_or(0, |t| t.skipped_known))
    }

    /// Whether the last step was skipped (`skip_nonfinite`). Waits for the
    /// queued steps: ask when you need to know, for example to lower the
    /// loss scale as `GradScaler.update` does.
    pub fn last_step_skipped(&mut self) -> Result<bool> {
        self.sync()?;
        Ok(self.skip.as_ref().is_some_and(|t| t.last_skipped_known))
    }

    /// With `skip_nonfinite`, makes sure the next step's window of possible
    /// step counts fits the table: takes in finished read-backs (without
    /// waiting), and waits for one only when the window is full, or when
    /// the window's steps do not advance the rule's scalar state alike (the
    /// state before the next step then depends on which were applied).
    pub(super) fn make_room(&mut self) -> Result<()> {
        if self.skip.is_none() {
            return Ok(());
        }
        self.collect_readbacks(false)?;
        let mixed = |t: &SkipTracker| !t.window_advances_alike();
        if self.skip.as_ref().is_some_and(mixed) {
            self.collect_readbacks(true)?;
            if self.skip.as_ref().is_some_and(mixed) {
                self.request_counters()?;
                self.collect_readbacks(true)?;
            }
            if let Some(t) = self.skip.as_ref().filter(|t| mixed(t)) {
                return Err(Error::UnsubmittedSteps {
                    steps: t.outcomes_unknown(),
                    needs: "the next step's scalar state needs their outcomes (the betas[0] or \
                            lr it depends on changed among them)",
                });
            }
        }
        let full = |t: &SkipTracker| t.outcomes_unknown() + 1 > TABLE_LEN as u64;
        if self.skip.as_ref().is_some_and(full) {
            self.collect_readbacks(true)?;
        }
        if self.skip.as_ref().is_some_and(full) {
            // Nothing in flight covered the steps queued: read now.
            self.request_counters()?;
            self.collect_readbacks(true)?;
        }
        if let Some(t) = self.skip.as_ref().filter(|t| full(t)) {
            return Err(Error::UnsubmittedSteps {
                steps: t.outcomes_unknown(),
                needs:
                    "with skip_nonfinite at most 32 steps may be host_steps_queued ahead of the GPU",
            });
        }
        const _: () = assert!(TABLE_LEN == 32, "the message above says 32");
        Ok(())
    }

    /// Submits a copy of the counters to a staging buffer and maps it.
    pub(super) fn request_counters(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        let Some(t) = self.skip.as_mut() else {
            return Ok(());
        };
        let staging = t.free.pop().unwrap_or_else(|| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step counters readback"),
                size: COUNTER_WORDS * 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let counters = &self.buffers.counters;
        ctx.scoped("reading the step counters", || {
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step counters"),
                });
            encoder.copy_buffer_to_buffer(counters, 0, &staging, 0, COUNTER_WORDS * 4);
            ctx.queue.submit(Some(encoder.finish()));
        })?;
        t.pending.push(map_counters(staging));
        Ok(())
    }

    /// Takes in the read-backs that have finished; with `wait`, waits for
    /// all those in flight first.
    pub(super) fn collect_readbacks(&mut self, wait: bool) -> Result<()> {
        let Some(t) = self.skip.as_mut() else {
            return Ok(());
        };
        if t.pending.is_empty() {
            return Ok(());
        }
        if wait {
            self.ctx.wait()?;
            // Another thread polling the same device may have taken our map
            // callbacks and not run them yet when our wait returns: give
            // them a bounded while.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while t
                .pending
                .iter()
                .any(|r| r.done.lock().is_ok_and(|d| d.is_none()))
            {
                if std::time::Instant::now() > deadline {
                    return Err(Error::Readback(
                        "the step-counter read-back did not complete in 30 s".into(),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
                let _ = self.ctx.device.poll(wgpu::PollType::Poll);
            }
        } else {
            let _ = self.ctx.device.poll(wgpu::PollType::Poll);
        }
        if let Some(lost) = self.ctx.lost() {
            return Err(Error::DeviceLost {
                during: "reading the step counters",
                reason: lost,
            });
        }
        let mut still = Vec::new();
        for r in std::mem::take(&mut t.pending) {
            let state = *r
                .done
                .lock()
                .map_err(|_| Error::Readback("poisoned".into()))?;
            match state {
                None => still.push(r),
                Some(false) => {
                    return Err(Error::Readback("mapping the step counters failed".into()))
                }
                Some(true) => {
                    let words: Vec<u32> = {
                        let view = r
                            .buffer
                            .slice(..)
                            .get_mapped_range()
                            .map_err(|e| Error::Readback(e.to_string()))?;
                        bytemuck::cast_slice(&view).to_vec()
                    };
                    r.buffer.unmap();
                    t.learn(CounterWords::of(&words));
                    t.free.push(r.buffer);
                }
            }
        }
        t.pending = still;
        self.counters.step = t.applied_known + t.outcomes_unknown();
        Ok(())
    }

    /// Waits for every queued step and learns the exact step count,
    /// skips and SGD's buffer flag (with `skip_nonfinite`; a no-op
    /// otherwise).
    pub(super) fn sync(&mut self) -> Result<()> {
        if self.skip.is_none() {
            return Ok(());
        }
        self.request_counters()?;
        self.collect_readbacks(true)?;
        if let Some(t) = &self.skip {
            if t.outcomes_unknown() != 0 {
                return Err(Error::UnsubmittedSteps {
                    steps: t.outcomes_unknown(),
                    needs: "the exact step count needs every step run",
                });
            }
            self.counters = Counters {
                step: t.applied_known,
                buffer_filled: t.momentum_filled_known,
            };
            self.scalar_state = t.scalar_state_known.clone();
        }
        Ok(())
    }

    /// The exact (steps applied, SGD buffer filled, steps skipped, scalar
    /// state), reading the GPU's counters back with `skip_nonfinite`
    /// (waits).
    pub(super) fn exact_counts(&self) -> Result<ExactCounts> {
        let Some(t) = &self.skip else {
            return Ok(ExactCounts {
                step: self.counters.step,
                buffer_filled: self.counters.buffer_filled,
                skipped: self.skipped_before,
                scalar_state: self.scalar_state.clone(),
            });
        };
        let words: Vec<u32> = read_buffer(&self.ctx, &self.buffers.counters, 0, COUNTER_WORDS * 4)?
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let mut copy = SkipTracker {
            host_steps_queued: t.host_steps_queued,
            host_steps_known: t.host_steps_known,
            applied_known: t.applied_known,
            skipped_known: t.skipped_known,
            momentum_filled_known: t.momentum_filled_known,
            last_skipped_known: t.last_skipped_known,
            scalar_state_known: t.scalar_state_known.clone(),
            window: t.window.clone(),
            pending: Vec::new(),
            free: Vec::new(),
        };
        copy.learn(CounterWords::of(&words));
        if copy.outcomes_unknown() != 0 {
            return Err(Error::UnsubmittedSteps {
                steps: copy.outcomes_unknown(),
                needs: "the exact step count needs every step run",
            });
        }
        Ok(ExactCounts {
            step: copy.applied_known,
            buffer_filled: copy.momentum_filled_known,
            skipped: self.skipped_before + copy.skipped_known,
            scalar_state: copy.scalar_state_known,
        })
    }
}

/// What [`GpuOptimizer::exact_counts`] reads.
pub(super) struct ExactCounts {
    /// Steps applied.
    pub(super) step: u64,
    /// SGD's momentum buffer filled.
    pub(super) buffer_filled: bool,
    /// Steps skipped.
    pub(super) skipped: u64,
    /// The rule's scalar state after `step` steps.
    pub(super) scalar_state: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NAdam, Sgd};

    fn tracker(start: u64, window: Vec<Config>, scalar_state: Vec<f64>) -> SkipTracker {
        SkipTracker {
            host_steps_queued: start + window.len() as u64,
            host_steps_known: start,
            applied_known: start,
            skipped_known: 0,
            momentum_filled_known: false,
            last_skipped_known: false,
            scalar_state_known: scalar_state,
            window: window.into(),
            pending: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The low 32 bits the GPU keeps are put back into full counts, past
    /// 2^32 too.
    #[test]
    fn counters_past_32_bits() {
        let start = (1u64 << 32) - 2;
        let mut t = tracker(start, vec![Sgd::default().into(); 5], Vec::new());
        t.learn(CounterWords {
            applied: (start + 3) as u32,
            host_step: (start + 4) as u32,
            skipped: 1,
            filled: 1,
            last_skipped: 0,
            outcomes: 0b1101,
        });
        assert_eq!(
            (t.host_steps_known, t.applied_known, t.skipped_known),
            (start + 4, start + 3, 1)
        );
        // An older read-back arriving late is ignored.
        t.learn(CounterWords {
            applied: (start + 1) as u32,
            host_step: (start + 1) as u32,
            skipped: 0,
            filled: 0,
            last_skipped: 0,
            outcomes: 0b1,
        });
        assert_eq!(
            (t.host_steps_known, t.applied_known),
            (start + 4, start + 3)
        );
        assert_eq!((t.outcomes_unknown(), t.window.len()), (1, 1));
    }

    /// The scalar state is advanced over exactly the applied steps, each
    /// with the configuration it was queued with: here NAdam's β1 changed
    /// among four queued steps, of which the second was skipped.
    #[test]
    fn scalar_state_follows_the_applied_steps() {
        let beta = |b1| -> Config {
            NAdam {
                betas: (b1, 0.999),
                ..NAdam::default()
            }
            .into()
        };
        let window = vec![beta(0.9), beta(0.5), beta(0.5), beta(0.7)];
        let start = 10;
        let mut t = tracker(start, window.clone(), vec![0.25]);
        assert!(!t.window_advances_alike());
        // Bit 0 is the last step: applied, applied, skipped, applied.
        t.learn(CounterWords {
            applied: (start + 3) as u32,
            host_step: (start + 4) as u32,
            skipped: 1,
            filled: 0,
            last_skipped: 0,
            outcomes: 0b1011,
        });
        let mut by_hand = vec![0.25];
        for (n, k) in [0usize, 2, 3].into_iter().enumerate() {
            window[k].advance_scalar_state(&mut by_hand, start + 1 + n as u64);
        }
        assert_eq!(t.scalar_state_known, by_hand);
        assert_ne!(by_hand, vec![0.25]);
        assert!(t.window.is_empty() && t.window_advances_alike());

        // A window that advances alike: entry j is the state after j steps.
        let t = tracker(start, vec![beta(0.8); 3], vec![0.25]);
        assert!(t.window_advances_alike());
        let mut ahead = Vec::new();
        t.for_each_count(|j, s| ahead.push((j, s.to_vec())));
        let mut state = vec![0.25];
        for j in 0..4u64 {
            assert_eq!(ahead[j as usize], (j, state.clone()), "entry {j}");
            beta(0.8).advance_scalar_state(&mut state, start + 1 + j);
        }
        assert_eq!(ahead.len(), 4);
        // A new lr does not change NAdam's state: still alike.
        let mut lr = t.window.clone();
        if let Some(Config::NAdam(c)) = lr.back_mut() {
            c.lr = 1.0;
        }
        assert!(tracker(start, lr.into(), vec![0.25]).window_advances_alike());
    }
}
