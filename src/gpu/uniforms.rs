//! Uniforms: the ring of per-step scalars, the tail every kernel's
//! uniforms begin with, the flags, and each step's writes into the ring (by
//! the queue for a step submitted alone, by a copy inside the encoder for a
//! recorded one).
//!
//! A slot of the rule ring holds `[StepTail][the rule's scalars]` (the
//! element-wise kernels' `Uniforms`), a slot of the tile ring `[StepTail]
//! [TileHeader][LAMB's scalars]` (the tile kernels'; the reduction reads
//! the first two). The WGSL of both structs is written from the Rust
//! definitions below ([`gpu_struct!`]).

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

use super::optimizer::GpuOptimizer;

/// Slots of the uniform ring: each step writes its scalars to the next slot
/// (a queue write for a step submitted alone, a copy inside the encoder for
/// a recorded one; see [`ScalarsVia`]).
pub(crate) const UNIFORM_RING: u64 = 256;

/// Stride of the ring: a multiple of the largest
/// `min_uniform_buffer_offset_alignment` any backend asks for (256), large
/// enough for the [`StepTail`], the [`TileHeader`] and the largest rule's
/// scalars (64 bytes).
pub(super) const UNIFORM_STRIDE: u64 = 768;

/// Entries of the table of [`StepTail`]: with `skip_nonfinite`, the host
/// may queue at most this many steps past the last step whose outcome
/// (applied or skipped) it has read back.
pub(crate) const TABLE_LEN: usize = 32;

/// Clip the gradients by `info[1]` (global-norm clipping is on).
pub(super) const FLAG_CLIP: u32 = 1;
/// Refuse the step when the gradient norm is not finite (clipping's
/// `error_if_nonfinite`).
pub(super) const FLAG_ERROR_IF_NONFINITE: u32 = 2;
/// Multiply the gradients by `1/grad_scale` (loss scaling).
pub(super) const FLAG_GRAD_SCALE: u32 = 16;
/// Skip the step when a gradient is NaN or infinite (`skip_nonfinite`):
/// the GPU keeps the step counters and picks the step-dependent scalars
/// from the table.
pub(super) const FLAG_SKIP_NONFINITE: u32 = 32;
/// SGD uses its momentum buffer this step: an applied step leaves it
/// filled (the GPU's flag, with `FLAG_SKIP_NONFINITE`).
pub(super) const FLAG_SGD_MOMENTUM: u32 = 64;

/// The host's flags, as the WGSL constants of the same names.
pub(super) const FLAGS: [(&str, u32); 5] = [
    ("FLAG_CLIP", FLAG_CLIP),
    ("FLAG_ERROR_IF_NONFINITE", FLAG_ERROR_IF_NONFINITE),
    ("FLAG_GRAD_SCALE", FLAG_GRAD_SCALE),
    ("FLAG_SKIP_NONFINITE", FLAG_SKIP_NONFINITE),
    ("FLAG_SGD_MOMENTUM", FLAG_SGD_MOMENTUM),
];

/// Defines a `#[repr(C)]` struct of the uniforms and, as its `WGSL`, the
/// WGSL struct of the same name and fields (each field's WGSL type given
/// after `=>`), so the two cannot drift apart.
macro_rules! gpu_struct {
    ($(#[$meta:meta])* struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident: $rty:ty => $wty:literal,)*
    }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        pub(super) struct $name {
            $($(#[$fmeta])* pub(super) $field: $rty,)*
        }
        impl $name {
            /// The WGSL declaration of this struct.
            pub(super) const WGSL: &'static str = concat!(
                "struct ", stringify!($name), " {\n",
                $("    ", stringify!($field), ": ", $wty, ",\n",)*
                "}\n"
            );
        }
    };
}

gpu_struct! {
    /// The per-step part every kernel's uniforms begin with (`u.tail`).
    struct StepTail {
        /// `FLAG_*` of this step.
        flags: u32 => "u32",
        /// `1/grad_scale` rounded to f32 (used with `FLAG_GRAD_SCALE`).
        inv_scale: f32 => "f32",
        /// Low 32 bits of the applied-step count the host last read back.
        base: u32 => "u32",
        /// Low 32 bits of this step's number among the steps the host queued.
        host_step: u32 => "u32",
        /// Stochastic rounding: this step's part of each element's random
        /// bits (`shaders/packed16.wgsl`); 0 otherwise.
        sr_key: u32 => "u32",
        _pad0: u32 => "u32",
        _pad1: u32 => "u32",
        _pad2: u32 => "u32",
        /// Entry j: the step-dependent scalars of step `base + 1 + j`.
        table: [[f32; 4]; TABLE_LEN] => "array<vec4<f32>, TABLE_LEN>",
    }
}

gpu_struct! {
    /// What the tile kernels need besides the tail (`u.tiles`).
    struct TileHeader {
        /// `clip_grad_norm_`'s `max_norm`.
        max_norm: f32 => "f32",
        /// Tiles over all chunks.
        n_tiles: u32 => "u32",
        /// Tensors of the optimizer.
        n_tensors: u32 => "u32",
        _pad: u32 => "u32",
    }
}

/// Bytes of the tail and the header: where the rule's scalars start in a
/// slot of each ring. Multiples of 16, as WGSL places a struct member.
pub(super) const TAIL_BYTES: usize = std::mem::size_of::<StepTail>();
pub(super) const TILE_HEADER_BYTES: usize = std::mem::size_of::<TileHeader>();
const _: () = assert!(TAIL_BYTES.is_multiple_of(16) && TILE_HEADER_BYTES.is_multiple_of(16));
/// The largest rule's scalars (LAMB's 48 bytes, Adam's 48) fit with both.
pub(super) const MAX_RULE_BYTES: usize = 64;
const _: () = assert!(TAIL_BYTES + TILE_HEADER_BYTES + MAX_RULE_BYTES <= UNIFORM_STRIDE as usize);

/// How [`GpuOptimizer::write_step_scalars`] gets a step's scalars into its
/// uniform slot. Queue writes land at the next submission, before every
/// command in it: right for a step submitted alone, wrong for steps
/// recorded into one encoder, where a later step that reuses a slot would
/// overwrite it before the earlier one ran.
#[derive(Clone, Copy)]
pub(super) enum ScalarsVia {
    /// `queue.write_buffer` (the step is submitted right after).
    Queue,
    /// A copy recorded into the encoder before the step's dispatches.
    Encoder,
}

/// Bytes of one group's `GroupEntry` in a grouped kernel's uniforms (see
/// `GROUP_ENTRY_WGSL` in kernels.rs): its step table, its rule scalars
/// (`rule_bytes`) rounded up to 16 bytes as WGSL places a struct member of
/// struct type, and its option word in a `vec4<u32>`.
pub(crate) fn group_entry_bytes(rule_bytes: usize) -> usize {
    TABLE_LEN * 16 + rule_bytes.next_multiple_of(16) + 16
}

/// The stride of the rule ring of a grouped kernel of `groups` groups of
/// `config`'s rule: the tail and every group's entry, rounded up to the
/// largest uniform offset alignment (256); [`Error::DeviceLimit`] past the
/// device's `max_uniform_buffer_binding_size`.
pub(super) fn grouped_stride(
    ctx: &super::GpuContext,
    config: &crate::rules::Config,
    groups: u32,
) -> Result<u64> {
    let rule_bytes = config.step_scalars(false).bytes().len();
    let bytes = (TAIL_BYTES as u64 + groups as u64 * group_entry_bytes(rule_bytes) as u64)
        .next_multiple_of(256);
    let available = ctx.limits().max_uniform_buffer_binding_size;
    if bytes > available {
        return Err(Error::DeviceLimit {
            what: format!("the step scalars of {groups} parameter groups"),
            limit: "max_uniform_buffer_binding_size",
            needed: bytes,
            available,
        });
    }
    Ok(bytes)
}

impl GpuOptimizer {
    /// Appends group `g`'s `GroupEntry` to `out`: the step table of every
    /// count the GPU may be at (from the applied-step count `base` the
    /// host knows), its rule scalars, its option bits.
    fn push_group_entry(
        &self,
        out: &mut Vec<u8>,
        groups: &super::groups::GpuGroups,
        g: usize,
        base: u64,
    ) {
        let config = &groups.groups[g].config;
        let state = &groups.scalar_state[g];
        let own = groups.counters(g, self.counters, self.skip.is_some());
        // The group's own count: `base` less the steps it has not taken
        // (none while skipping: check_skip_groups).
        let base = base - groups.behind[g];
        let mut table = [[0.0f32; 4]; TABLE_LEN];
        match &self.skip {
            // A rule without scalar state (check_skip_groups): each count's
            // entry is the group's function of the count.
            Some(t) => t.for_each_count(|j, _| {
                table[j as usize] = config.step_entry(base + j + 1, state);
            }),
            None => table[0] = config.step_entry(base + 1, state),
        }
        out.extend_from_slice(bytemuck::cast_slice(&table));
        let scalars = config.step_scalars(own.buffer_filled);
        let rule = scalars.bytes();
        out.extend_from_slice(rule);
        out.resize(out.len() + rule.len().next_multiple_of(16) - rule.len(), 0);
        out.extend_from_slice(bytemuck::bytes_of(&[groups.option_bits(g), 0, 0, 0]));
    }

    /// The flags of the next step.
    fn step_flags(&self) -> u32 {
        let mut flags = 0;
        if let Some(clip) = self.clip {
            flags |= FLAG_CLIP;
            if clip.error_if_nonfinite {
                flags |= FLAG_ERROR_IF_NONFINITE;
            }
        }
        if self.inv_scale != 1.0 {
            flags |= FLAG_GRAD_SCALE;
        }
        if self.skip.is_some() {
            flags |= FLAG_SKIP_NONFINITE;
        }
        let fills = match &self.groups {
            Some(g) => g
                .groups
                .iter()
                .any(|g| g.config.fills_buffer_on_first_use()),
            None => self.config.fills_buffer_on_first_use(),
        };
        if fills {
            flags |= FLAG_SGD_MOMENTUM;
        }
        flags
    }

    /// Writes the next step's scalars into ring slot `slot` of both rings:
    /// the tail (flags, loss scale, the step table), the tile header and the
    /// rule's scalars. On error nothing was recorded.
    pub(super) fn write_step_scalars(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        slot: u64,
        host_step: u64,
        via: ScalarsVia,
    ) -> Result<()> {
        // The applied-step count before this step: known exactly without
        // skipping; with it, one of `applied_known ..= applied_known + unknown`,
        // the rule's scalar state before it known for each (make_room saw
        // to that).
        let base = match &self.skip {
            Some(t) => t.applied_known,
            None => self.counters.step,
        };
        let mut tail = StepTail {
            flags: self.step_flags(),
            inv_scale: self.inv_scale,
            base: base as u32,
            host_step: (host_step + 1) as u32,
            sr_key: self.stochastic_rounding_key(base + 1),
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
            table: [[0.0; 4]; TABLE_LEN],
        };
        match &self.skip {
            Some(t) if !t.window_advances_alike() => {
                return Err(Error::UnsubmittedSteps {
                    steps: t.outcomes_unknown(),
                    needs: "the next step's scalar state needs their outcomes",
                })
            }
            Some(t) => t.for_each_count(|j, state| {
                tail.table[j as usize] = self.config.step_entry(base + j + 1, state);
            }),
            None => tail.table[0] = self.config.step_entry(base + 1, &self.scalar_state),
        }
        let scalars = self.config.step_scalars(self.counters.buffer_filled);
        let header = TileHeader {
            max_norm: self.clip.map_or(0.0, |c| c.max_norm as f32),
            // Both below 2^32: Tiling::new refused more.
            n_tiles: self.tile_count as u32,
            n_tensors: self.layout.len() as u32,
            _pad: 0,
        };
        let rule = scalars.bytes();
        let is_lamb = self.config.kernel().is_tiled();
        // The tile ring's slot, then (element-wise rules) the rule ring's.
        let tail_bytes = bytemuck::bytes_of(&tail);
        let mut tile_slot = [tail_bytes, bytemuck::bytes_of(&header)].concat();
        let mut rule_slot = Vec::new();
        if is_lamb {
            tile_slot.extend_from_slice(rule);
        } else {
            rule_slot.extend_from_slice(tail_bytes);
            match &self.groups {
                None => rule_slot.extend_from_slice(rule),
                Some(groups) => {
                    for g in 0..groups.groups.len() {
                        self.push_group_entry(&mut rule_slot, groups, g, base);
                    }
                }
            }
        }
        let b = &self.buffers;
        let tile_at = slot * UNIFORM_STRIDE;
        let rule_at = slot * b.rule_stride;
        match via {
            ScalarsVia::Queue => {
                let queue = &self.ctx.queue;
                queue.write_buffer(&b.tile_uniforms, tile_at, &tile_slot);
                if !rule_slot.is_empty() {
                    queue.write_buffer(&b.rule_uniforms, rule_at, &rule_slot);
                }
            }
            ScalarsVia::Encoder => {
                // A buffer of this step's own, copied into the slots by the
                // encoder: ordered with the dispatches, whatever else the
                // encoder holds or the queue runs before it.
                let tile_len = tile_slot.len() as u64;
                let rule_len = rule_slot.len() as u64;
                tile_slot.extend_from_slice(&rule_slot);
                let device = &self.ctx.device;
                let source = self.ctx.scoped("recording a step's scalars", || {
                    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("one step's scalars"),
                        contents: &tile_slot,
                        usage: wgpu::BufferUsages::COPY_SRC,
                    })
                })?;
                encoder.copy_buffer_to_buffer(&source, 0, &b.tile_uniforms, tile_at, tile_len);
                if rule_len > 0 {
                    encoder.copy_buffer_to_buffer(
                        &source,
                        tile_len,
                        &b.rule_uniforms,
                        rule_at,
                        rule_len,
                    );
                }
            }
        }
        Ok(())
    }
}
