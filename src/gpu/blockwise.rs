//! 8-bit blockwise state on the GPU (bitsandbytes' scheme, as
//! src/precision/blockwise.rs keeps it on the CPU): the plan of each
//! chunk's blocks, the state buffers' layout, the host's packing of state
//! values into codes and back, and the optimizer's constructor. The
//! kernel is the rule's own file behind `shaders/blockwise.wgsl` (kernels.rs
//! `blockwise_body`).
//!
//! Blocks are per tensor, as on the CPU: block `k` of a tensor is its
//! elements `256k .. 256(k + 1)`, the last one shorter when the length is
//! not a multiple. Chunks are cut between blocks only, so a workgroup owns
//! a whole block, and no two workgroups write one word of codes. Each
//! state buffer of a chunk holds, for each block in order, its codes four
//! to a word (`ceil(len / 4)` words) or, for a tensor under
//! [`MIN_8BIT_SIZE`] elements, its f32 values (`len` words); then one
//! absmax word per 8-bit block.

use super::chunks::{check_size, chunk_elements, ChunkRange, Tiling};
use super::kernels::{
    Blockwise, Packed16, Param16, Variant, BW_ENTRIES, BW_F32, BW_HEADER, BW_MAPS,
};
use super::optimizer::{GpuOptimizer, GpuOptions};
use super::precision::GpuPrecision;
use super::readback::read_buffer;
use super::resources::Storage;
use super::GpuContext;
use crate::checkpoint::QuantizedState;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::precision::blockwise::{
    dequantize_blockwise, quantize_blockwise, DynamicMap, BLOCK, MIN_8BIT_SIZE,
};
use crate::precision::store::state_sign;
use crate::precision::{ParamDtype, Precision};
use crate::rules::{Config, KernelShape};

/// Each 8-bit tensor of a state as stored: (tensor, codes, absmax).
pub(super) type Quantized = Vec<(usize, Vec<u8>, Vec<f32>)>;

/// One block of a chunk: the entry of `blocks` the kernel reads, and
/// where it is in its tensor.
#[derive(Clone, Copy, Debug)]
struct Block {
    tensor: usize,
    /// The block's number in its tensor.
    index: usize,
    /// First element, in the chunk.
    start: u32,
    len: u32,
    /// First word of its codes (or f32 values) in each state buffer.
    word: u32,
    /// Its absmax word, or [`BW_F32`].
    absmax: u32,
}

/// The blocks of every chunk of an optimizer with 8-bit state.
pub(super) struct BlockPlan {
    chunks: Vec<Vec<Block>>,
    /// Words of each chunk's state buffers (at least 1).
    pub(super) words: Vec<u64>,
}

/// An 8-bit optimizer's plan and each chunk's `blocks` binding.
pub(super) struct GpuBlocks {
    pub(super) plan: BlockPlan,
    pub(super) tables: Vec<wgpu::Buffer>,
}

impl BlockPlan {
    /// The chunks (runs of whole blocks, at most `cap` elements each) and
    /// their blocks. A cap under one block is [`Error::InvalidOptions`].
    pub(super) fn new(layout: &Layout, cap: u64) -> Result<(Vec<ChunkRange>, BlockPlan)> {
        if cap < BLOCK as u64 {
            return Err(Error::InvalidOptions(format!(
                "max_chunk_elements {cap} with 8-bit state: a chunk holds whole blocks of {BLOCK}"
            )));
        }
        let mut ranges = Vec::new();
        let mut chunks: Vec<Vec<Block>> = Vec::new();
        let mut start = 0u64;
        let mut len = 0u64;
        let mut blocks: Vec<Block> = Vec::new();
        for (t, &n) in layout.lengths().iter().enumerate() {
            let quantized = n >= MIN_8BIT_SIZE;
            for k in 0..n.div_ceil(BLOCK) {
                let bl = (n - k * BLOCK).min(BLOCK) as u64;
                if len + bl > cap {
                    ranges.push(ChunkRange { start, len });
                    chunks.push(std::mem::take(&mut blocks));
                    start += len;
                    len = 0;
                }
                blocks.push(Block {
                    tensor: t,
                    index: k,
                    // Below cap ≤ 2^30 (MAX_CHUNK_ELEMENTS).
                    start: len as u32,
                    len: bl as u32,
                    word: 0,
                    absmax: if quantized { 0 } else { BW_F32 },
                });
                len += bl;
            }
        }
        if len > 0 {
            ranges.push(ChunkRange { start, len });
            chunks.push(blocks);
        }
        let mut words = Vec::with_capacity(chunks.len());
        for blocks in &mut chunks {
            // Words below the chunk's elements (≤ 2^30) plus its blocks.
            let mut at = 0u32;
            for b in blocks.iter_mut() {
                b.word = at;
                at += if b.absmax == BW_F32 {
                    b.len
                } else {
                    b.len.div_ceil(4)
                };
            }
            for b in blocks.iter_mut().filter(|b| b.absmax != BW_F32) {
                b.absmax = at;
                at += 1;
            }
            words.push(u64::from(at.max(1)));
        }
        Ok((ranges, BlockPlan { chunks, words }))
    }

    /// Blocks of chunk `c`.
    pub(super) fn blocks_in(&self, c: usize) -> usize {
        self.chunks[c].len()
    }

    /// Chunk `c`'s `blocks` binding: the maps, the header, the entries.
    fn table(&self, c: usize) -> Vec<u32> {
        let blocks = &self.chunks[c];
        let mut t = Vec::with_capacity(BW_ENTRIES as usize + 4 * blocks.len());
        t.extend(DynamicMap::signed().values().iter().map(|v| v.to_bits()));
        t.extend(DynamicMap::unsigned().values().iter().map(|v| v.to_bits()));
        debug_assert_eq!(t.len(), BW_MAPS as usize);
        debug_assert_eq!(t.len(), BW_HEADER as usize);
        t.extend([blocks.len() as u32, 0, 0, 0]);
        for b in blocks {
            t.extend([b.start, b.len, b.word, b.absmax]);
        }
        t
    }

    /// The state buffers' words of `values` (packed, one per element):
    /// each tensor of at least [`MIN_8BIT_SIZE`] elements quantized as
    /// `quantize_blockwise` does, or taken as `stored(t)` gives its codes
    /// and absmax; the others as f32.
    pub(super) fn encode<'a>(
        &self,
        layout: &Layout,
        values: &[f32],
        signed: bool,
        stored: impl Fn(usize) -> Option<(&'a [u8], &'a [f32])>,
    ) -> Vec<Vec<u32>> {
        let map = DynamicMap::for_sign(signed);
        let quantized: Vec<Option<(Vec<u8>, Vec<f32>)>> = (0..layout.len())
            .map(|t| {
                let n = layout.lengths()[t];
                if n < MIN_8BIT_SIZE {
                    return None;
                }
                if let Some((c, a)) = stored(t) {
                    return Some((c.to_vec(), a.to_vec()));
                }
                let mut codes = vec![0u8; n];
                let mut absmax = vec![0f32; n.div_ceil(BLOCK)];
                quantize_blockwise(&values[layout.range(t)], map, &mut codes, &mut absmax);
                Some((codes, absmax))
            })
            .collect();
        self.chunks
            .iter()
            .zip(&self.words)
            .map(|(blocks, &words)| {
                let mut w = vec![0u32; words as usize];
                for b in blocks {
                    let first = layout.offsets()[b.tensor] + b.index * BLOCK;
                    let at = b.word as usize;
                    match &quantized[b.tensor] {
                        None => {
                            for (k, v) in values[first..first + b.len as usize].iter().enumerate() {
                                w[at + k] = v.to_bits();
                            }
                        }
                        Some((codes, absmax)) => {
                            let c = &codes[b.index * BLOCK..b.index * BLOCK + b.len as usize];
                            for (k, four) in c.chunks(4).enumerate() {
                                w[at + k] = four
                                    .iter()
                                    .enumerate()
                                    .fold(0, |acc, (j, &q)| acc | (u32::from(q) << (8 * j)));
                            }
                            w[b.absmax as usize] = absmax[b.index].to_bits();
                        }
                    }
                }
                w
            })
            .collect()
    }

    /// The values of state buffers' words, packed, with each 8-bit
    /// tensor's `(tensor, codes, absmax)` in tensor order.
    pub(super) fn decode(
        &self,
        layout: &Layout,
        words: &[Vec<u32>],
        signed: bool,
    ) -> (Vec<f32>, Quantized) {
        let mut values = vec![0f32; layout.total()];
        let mut quantized: Vec<Option<(Vec<u8>, Vec<f32>)>> = layout
            .lengths()
            .iter()
            .map(|&n| (n >= MIN_8BIT_SIZE).then(|| (vec![0u8; n], vec![0f32; n.div_ceil(BLOCK)])))
            .collect();
        for (blocks, w) in self.chunks.iter().zip(words) {
            for b in blocks {
                let at = b.word as usize;
                match &mut quantized[b.tensor] {
                    None => {
                        let first = layout.offsets()[b.tensor] + b.index * BLOCK;
                        for k in 0..b.len as usize {
                            values[first + k] = f32::from_bits(w[at + k]);
                        }
                    }
                    Some((codes, absmax)) => {
                        for k in 0..b.len as usize {
                            codes[b.index * BLOCK + k] = (w[at + k / 4] >> (8 * (k % 4))) as u8;
                        }
                        absmax[b.index] = f32::from_bits(w[b.absmax as usize]);
                    }
                }
            }
        }
        let map = DynamicMap::for_sign(signed);
        let mut out = Vec::new();
        for (t, q) in quantized.into_iter().enumerate() {
            if let Some((codes, absmax)) = q {
                dequantize_blockwise(&codes, &absmax, map, &mut values[layout.range(t)]);
                out.push((t, codes, absmax));
            }
        }
        (values, out)
    }
}

impl GpuOptimizer {
    /// [`GpuOptimizer::with_precision_options`] with 8-bit state: the
    /// rule's checks done (`check_rule`): f32 parameters, 16-bit ones
    /// behind an f32 master, or bf16 ones rounded stochastically; the
    /// kernel of blockwise.wgsl.
    pub(super) fn with_blockwise(
        ctx: &GpuContext,
        config: Config,
        params: &[&[f32]],
        precision: Precision,
        options: GpuOptions,
    ) -> Result<Self> {
        let param = match (precision.param_dtype, precision.master_weights) {
            (ParamDtype::F32, _) => Param16::F32,
            (ParamDtype::Bf16, true) => Param16::MasterBf16,
            (ParamDtype::F16, true) => Param16::MasterF16,
            // f16 without a master: Precision::validate refused it.
            (_, false) => Param16::StochasticBf16,
        };
        if options.vector_width.is_some_and(|w| w != 1) {
            return Err(Error::InvalidOptions(
                "vector_width with 8-bit state: the kernel steps one element a thread (1)".into(),
            ));
        }
        if params.is_empty() {
            return Err(Error::EmptyParameterList);
        }
        let momentum_buffer = config.builds_momentum_buffer();
        let state_names = config.state_names_with(momentum_buffer);
        let layout = Layout::of(params)?;
        if param == Param16::StochasticBf16 && layout.total() as u64 > u32::MAX as u64 {
            return Err(Error::SizeOverflow {
                what: "the elements of stochastically rounded parameters",
                ty: "u32",
                detail: format!(
                    "{} elements; the kernels count them in 32 bits",
                    layout.total()
                ),
            });
        }
        let (chunks, plan) = BlockPlan::new(&layout, chunk_elements(ctx, &options)?)?;
        let tiling = Tiling::new(&layout, &chunks)?;
        let limits = ctx.limits();
        let tables: Vec<Vec<u32>> = (0..chunks.len()).map(|c| plan.table(c)).collect();
        for (t, &w) in tables.iter().zip(&plan.words) {
            check_size(&limits, "8-bit block table", t.len() as u64 * 4, false)?;
            check_size(&limits, "8-bit state", w * 4, false)?;
        }
        let KernelShape::ElementWise { slots } = config.kernel().shape else {
            return Err(Error::Unsupported(format!(
                "{} with 8-bit state on the GPU",
                config.kind().name()
            )));
        };
        let in_use = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| state_names.contains(s))
            .fold(0u32, |m, (k, _)| m | (1 << k));
        let variant = Variant {
            width: 1,
            // The kernel indexes with offsets from its table: the bounds
            // checks stay on.
            bounds_checked: true,
            views: false,
            groups: 0,
            packed16: (param != Param16::F32).then_some(Packed16 {
                param,
                state_bf16: false,
            }),
            blockwise: Some(Blockwise { in_use }),
        };
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let made = ctx.scoped("allocating parameter buffers", || {
            let make = |label: &str, words: bool| -> Vec<wgpu::Buffer> {
                chunks
                    .iter()
                    .map(|c| {
                        ctx.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some(label),
                            size: match words {
                                true => super::precision::words(c.len) * 4,
                                false => super::chunks::padded(c.len, 4) * 4,
                            },
                            usage,
                            mapped_at_creation: false,
                        })
                    })
                    .collect()
            };
            // Stochastic rounding: each chunk's first element (its
            // counter's base; below 2^32, checked above).
            let bases = super::precision::chunk_bases(ctx, &chunks, param);
            let tables: Vec<wgpu::Buffer> = tables
                .iter()
                .map(|t| {
                    let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("8-bit blocks"),
                        size: t.len() as u64 * 4,
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(t));
                    b
                })
                .collect();
            // The model's 16-bit parameters, a pair a word, behind the
            // f32 master (`params`).
            let model = matches!(param, Param16::MasterBf16 | Param16::MasterF16).then(|| {
                chunks
                    .iter()
                    .map(|c| {
                        ctx.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("16-bit params"),
                            size: super::precision::words(c.len) * 4,
                            usage,
                            mapped_at_creation: false,
                        })
                    })
                    .collect::<Vec<_>>()
            });
            let params = match param {
                Param16::StochasticBf16 => make("bf16 params", true),
                _ => make("params", false),
            };
            (params, make("grads", false), tables, model, bases)
        })?;
        let (param_buffers, grad_buffers, table_buffers, model, chunk_bases) = made;
        let words = plan.words.clone();
        let mut opt = Self::build(
            ctx,
            config,
            momentum_buffer,
            state_names,
            layout,
            chunks,
            tiling,
            Storage::Owned(param_buffers),
            Storage::Owned(grad_buffers),
            variant,
            None,
            Some(&words),
        )?;
        opt.precision = Some(GpuPrecision {
            precision,
            model,
            chunk_bases,
            blocks: Some(GpuBlocks {
                plan,
                tables: table_buffers,
            }),
        });
        opt.attach_rule_groups()?;
        opt.write_params(params)?;
        let ctx = opt.ctx.clone();
        for (i, name) in opt.state_names.clone().iter().enumerate() {
            let flat = vec![opt.config.state_initial_value(name); opt.layout.total()];
            ctx.scoped("filling the 8-bit state", || {
                opt.write_blockwise_state(i, &flat, |_| None)
            })?;
        }
        Ok(opt)
    }

    /// The plan of an optimizer with 8-bit state; `None` otherwise.
    pub(super) fn blocks(&self) -> Option<&GpuBlocks> {
        self.precision.as_ref()?.blocks.as_ref()
    }

    /// Writes state `i` from packed values (or the 8-bit tensors' codes and
    /// absmax, `stored(t)`), quantized as the CPU quantizes them. Nothing
    /// when the state is not 8-bit.
    pub(super) fn write_blockwise_state<'a>(
        &self,
        i: usize,
        flat: &[f32],
        stored: impl Fn(usize) -> Option<(&'a [u8], &'a [f32])>,
    ) {
        let Some(blocks) = self.blocks() else {
            return;
        };
        let signed = state_sign(self.state_names[i]).unwrap_or(true);
        let words = blocks.plan.encode(&self.layout, flat, signed, stored);
        for (b, w) in self.buffers.state[i].iter().zip(&words) {
            self.ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(w));
        }
    }

    /// State `i` read back: its values, packed (the 8-bit tensors
    /// dequantized), and each 8-bit tensor's codes and absmax.
    pub(super) fn read_blockwise_state(&self, i: usize) -> Result<(Vec<f32>, Quantized)> {
        let Some(blocks) = self.blocks() else {
            return Err(Error::Unsupported("no 8-bit state".into()));
        };
        let mut words = Vec::with_capacity(self.chunks.len());
        for (b, &n) in self.buffers.state[i].iter().zip(&blocks.plan.words) {
            let w = read_buffer(&self.ctx, b, 0, n * 4)?;
            words.push(w.into_iter().map(f32::to_bits).collect::<Vec<u32>>());
        }
        let signed = state_sign(self.state_names[i]).unwrap_or(true);
        Ok(blocks.plan.decode(&self.layout, &words, signed))
    }

    /// Every 8-bit state tensor as a checkpoint keeps it, in state then
    /// tensor order, with each state's values.
    pub(super) fn quantized_state(&self) -> Result<(Vec<Vec<f32>>, Vec<QuantizedState>)> {
        let mut values = Vec::new();
        let mut quantized = Vec::new();
        for (i, name) in self.state_names.iter().enumerate() {
            let (v, q) = self.read_blockwise_state(i)?;
            values.push(v);
            quantized.extend(q.into_iter().map(|(tensor, codes, absmax)| QuantizedState {
                state: name.to_string(),
                tensor,
                codes,
                absmax,
            }));
        }
        Ok((values, quantized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks end between blocks, blocks are per tensor (a tensor's last
    /// one short), small tensors' blocks are f32 words, and the packing
    /// round-trips exactly what `quantize_blockwise` stores.
    #[test]
    fn blocks_are_per_tensor_and_round_trip() {
        let lengths = [5000usize, 7, 4096, 300];
        let layout = Layout::new(&lengths).unwrap();
        let (chunks, plan) = BlockPlan::new(&layout, 1024).unwrap();
        assert!(chunks.iter().all(|c| c.len <= 1024));
        assert_eq!(
            chunks.iter().map(|c| c.len).sum::<u64>() as usize,
            layout.total()
        );
        let n_blocks: usize = (0..chunks.len()).map(|c| plan.blocks_in(c)).sum();
        assert_eq!(n_blocks, 20 + 1 + 16 + 2);
        // 5000 = 19·256 + 136: the last block of tensor 0 is short.
        let last = plan
            .chunks
            .iter()
            .flatten()
            .find(|b| b.tensor == 0 && b.index == 19);
        assert_eq!(last.unwrap().len, 136);
        assert!(plan
            .chunks
            .iter()
            .flatten()
            .all(|b| (b.absmax == BW_F32) == (lengths[b.tensor] < MIN_8BIT_SIZE)));
        let values: Vec<f32> = (0..layout.total())
            .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1e-3)
            .collect();
        for signed in [true, false] {
            let v: Vec<f32> = values
                .iter()
                .map(|&x| if signed { x } else { x.abs() })
                .collect();
            let words = plan.encode(&layout, &v, signed, |_| None);
            let (back, q) = plan.decode(&layout, &words, signed);
            assert_eq!(q.len(), 2);
            let map = DynamicMap::for_sign(signed);
            for (t, codes, absmax) in &q {
                let n = lengths[*t];
                let (mut c, mut a) = (vec![0u8; n], vec![0f32; n.div_ceil(BLOCK)]);
                quantize_blockwise(&v[layout.range(*t)], map, &mut c, &mut a);
                assert_eq!(&c, codes);
                assert_eq!(&a, absmax);
            }
            // The small tensors exactly, the others dequantized.
            assert_eq!(&back[layout.range(1)], &v[layout.range(1)]);
            assert_eq!(&back[layout.range(3)], &v[layout.range(3)]);
            // Encoding what was decoded, from the codes, gives the words.
            let again = plan.encode(&layout, &back, signed, |t| {
                q.iter()
                    .find(|(u, _, _)| *u == t)
                    .map(|(_, c, a)| (c.as_slice(), a.as_slice()))
            });
            assert_eq!(again, words);
        }
        assert!(matches!(
            BlockPlan::new(&layout, 128),
            Err(Error::InvalidOptions(_))
        ));
    }
}
