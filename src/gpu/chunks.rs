//! Chunks and limits: how the packed tensors are cut into chunks that one
//! binding (one dispatch) covers, and into the tiles of the reductions;
//! the device limits that chunking and the buffers rely on.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::layout::Layout;

use super::kernels::WORKGROUP_SIZE;
use super::optimizer::GpuOptions;
use super::uniforms::UNIFORM_STRIDE;

/// Chunk boundaries are multiples of this many elements (256 bytes), the
/// largest `min_storage_buffer_offset_alignment` any backend asks for.
pub(super) const CHUNK_ALIGN: u64 = 64;

/// `len` rounded up to a multiple of the vector width: the optimizer's own
/// buffers are allocated (zero-filled) to this length. Only ever called with
/// a chunk's length (at most [`MAX_CHUNK_ELEMENTS`]), so neither the result
/// nor its byte count (`× 4`) can overflow.
pub(super) fn padded(len: u64, width: u32) -> u64 {
    len.div_ceil(width as u64) * width as u64
}

#[derive(Clone, Debug)]
pub(super) struct ChunkRange {
    pub(super) start: u64,
    pub(super) len: u64,
}

/// Elements per tile of the reductions: 256 threads × 16 elements.
const TILE: usize = 4096;

/// The tiles of the reductions: each chunk's part of each tensor cut into
/// pieces of at most [`TILE`] elements at the chunk's multiples of
/// [`TILE`], numbered in flat order, so each
/// tensor's tiles are consecutive. Entry = (start in the chunk, length,
/// tensor, global number).
pub(super) struct Tiling {
    pub(super) per_chunk: Vec<Vec<[u32; 4]>>,
    /// (first tile, number of tiles) of each tensor.
    pub(super) tensors: Vec<[u32; 2]>,
    pub(super) total: usize,
}

impl Tiling {
    /// The tiles, or [`Error::SizeOverflow`] when the tensor indices or the
    /// tile numbers (`u32` in the kernels) would not fit 32 bits; the tensor
    /// count is checked before anything is allocated.
    pub(super) fn new(layout: &Layout, chunks: &[ChunkRange]) -> Result<Self> {
        let n_tensors = kernel_u32(layout.len() as u64, "the number of tensors", || {
            format!("{} tensors", layout.len())
        })?;
        let mut per_chunk = vec![Vec::new(); chunks.len()];
        let mut tensors = Vec::with_capacity(layout.len());
        let mut total = 0u32;
        for t in 0..n_tensors {
            let r = layout.range(t as usize);
            let first = total;
            let mut at = r.start as u64;
            while at < r.end as u64 {
                let ci = chunks.partition_point(|c| c.start + c.len <= at);
                let c = &chunks[ci];
                // Tiles end at multiples of TILE from the chunk's start
                // (a multiple of 64 elements), not from the tensor's: inside
                // a tensor every tile then starts on a whole vec4 (and a
                // 16-byte boundary), whatever the tensor's offset, so the
                // tile kernels' vector loads are aligned; only a tensor's
                // first and last tile have a scalar head or tail.
                let next_boundary = ((at - c.start) / TILE as u64 + 1) * TILE as u64 + c.start;
                let end = (r.end as u64).min(c.start + c.len).min(next_boundary);
                // Within a chunk (at most MAX_CHUNK_ELEMENTS = 2^30
                // elements), and at most TILE long: both fit u32.
                per_chunk[ci].push([(at - c.start) as u32, (end - at) as u32, t, total]);
                total = kernel_u32(u64::from(total) + 1, "the number of tiles", || {
                    format!(
                        "{} elements in {} tensors, in tiles of at most {TILE}",
                        layout.total(),
                        layout.len()
                    )
                })?;
                at = end;
            }
            tensors.push([first, total - first]);
        }
        Ok(Tiling {
            per_chunk,
            tensors,
            total: total as usize,
        })
    }

    /// Each chunk's table as tiles.wgsl reads it (`tables`): a header
    /// (index of the chunk's first tile, its number of tiles); in the first
    /// chunk's table only, the tensors' (first tile, tile count), two to an
    /// entry (lamb_ratio runs once, on the first chunk's bind group); then
    /// the tiles. One binding for both tables keeps the tile kernels within
    /// 8 storage buffers.
    pub(super) fn tables(&self) -> Vec<Vec<[u32; 4]>> {
        self.per_chunk
            .iter()
            .enumerate()
            .map(|(ci, tiles)| {
                let spans: Vec<[u32; 4]> = if ci == 0 {
                    self.tensors
                        .chunks(2)
                        .map(|p| {
                            let b = p.get(1).copied().unwrap_or([0, 0]);
                            [p[0][0], p[0][1], b[0], b[1]]
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                // At most 2^31 spans (u32::MAX tensors, Tiling::new) and
                // 2^30 tiles (one chunk's elements): the table's indices
                // fit u32.
                let mut table = Vec::with_capacity(1 + spans.len() + tiles.len());
                table.push([1 + spans.len() as u32, tiles.len() as u32, 0, 0]);
                table.extend(spans);
                table.extend_from_slice(tiles);
                table
            })
            .collect()
    }
}

/// `n` as the `u32` the kernels hold it in, or [`Error::SizeOverflow`]
/// naming `what` (a count the kernels index with).
fn kernel_u32(n: u64, what: &'static str, detail: impl FnOnce() -> String) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::SizeOverflow {
        what,
        ty: "u32",
        detail: format!("{}; the kernels index it in 32 bits", detail()),
    })
}

/// The most elements of one chunk, whatever the device: 2^30, so that a
/// chunk's byte size fits in 32 bits.
///
/// # 32-bit indices are safe by construction
///
/// Every kernel indexes a chunk's binding with a `u32` `i` (an element, or
/// a `vec4` of them). A chunk holds at most `MAX_CHUNK_ELEMENTS` = 2^30
/// elements (and never more bytes than `max_storage_buffer_binding_size`),
/// so `i < 2^30`. The element kernels' grid-stride loop computes
/// `i + stride` with `stride = workgroups × 256 ≤ 65 535 × 256 < 2^24`
/// (`max_compute_workgroups_per_dimension` is at most 65 535 on every
/// backend, and the dispatch is clamped to it): at most
/// `2^30 − 1 + 2^24 < 2^32`, so the sum never wraps and the loop ends. The
/// tile kernels index `tile.x + k` with `tile.x + tile.y ≤` the chunk's
/// length and step `k` by 256 below `tile.y ≤ 4096`; tile numbers and
/// tensor indices are `u32` too, and a model with more than 2^32 − 1 tiles
/// or tensors is refused ([`Error::SizeOverflow`], from `Tiling::new`).
/// Offsets into the packed tensors (which can exceed 2^32 elements in all)
/// are `u64` on the host and never reach a kernel: each chunk is bound at
/// its own offset.
pub(crate) const MAX_CHUNK_ELEMENTS: u64 = 1 << 30;
const _: () = assert!(MAX_CHUNK_ELEMENTS - 1 + 65_535 * WORKGROUP_SIZE < 1 << 32);

/// Elements per chunk on `ctx`'s device, after checking that its
/// alignments and binding sizes allow chunks at all.
pub(super) fn chunk_elements(ctx: &GpuContext, options: &GpuOptions) -> Result<u64> {
    let limits = ctx.limits();
    check_chunk_limits(&limits)?;
    Ok(chunk_elements_for(&limits, options))
}

/// The limits that chunking and the uniform ring rely on: chunks start at
/// multiples of 256 bytes and hold at least [`CHUNK_ALIGN`] elements, ring
/// slots start at multiples of [`UNIFORM_STRIDE`].
fn check_chunk_limits(limits: &wgpu::Limits) -> Result<()> {
    let what = "chunking the packed tensors";
    let chunk_bytes = CHUNK_ALIGN * 4;
    let storage_align = limits.min_storage_buffer_offset_alignment as u64;
    if storage_align > chunk_bytes || !chunk_bytes.is_multiple_of(storage_align.max(1)) {
        return Err(Error::DeviceLimit {
            what: what.into(),
            limit: "min_storage_buffer_offset_alignment",
            needed: chunk_bytes,
            available: storage_align,
        });
    }
    let uniform_align = limits.min_uniform_buffer_offset_alignment as u64;
    if uniform_align > 256 || !UNIFORM_STRIDE.is_multiple_of(uniform_align.max(1)) {
        return Err(Error::DeviceLimit {
            what: "the ring of step scalars".into(),
            limit: "min_uniform_buffer_offset_alignment",
            needed: 256,
            available: uniform_align,
        });
    }
    for (limit, available) in [
        (
            "max_storage_buffer_binding_size",
            limits.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", limits.max_buffer_size),
    ] {
        if available < chunk_bytes {
            return Err(Error::DeviceLimit {
                what: what.into(),
                limit,
                needed: chunk_bytes,
                available,
            });
        }
    }
    Ok(())
}

/// Elements per chunk for a device with these limits.
pub(crate) fn chunk_elements_for(limits: &wgpu::Limits, options: &GpuOptions) -> u64 {
    let by_device = (limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        / 4)
    .min(MAX_CHUNK_ELEMENTS);
    let max = options
        .max_chunk_elements
        .unwrap_or(by_device)
        .min(by_device);
    (max / CHUNK_ALIGN * CHUNK_ALIGN).max(CHUNK_ALIGN)
}

/// Refuses a buffer the device cannot make: the library never asks wgpu
/// for a buffer larger than `max_buffer_size` (nor a uniform binding
/// larger than `max_uniform_buffer_binding_size`), it says so first.
pub(super) fn check_size(
    limits: &wgpu::Limits,
    what: &str,
    bytes: u64,
    uniform: bool,
) -> Result<()> {
    if bytes > limits.max_buffer_size {
        return Err(Error::TooLarge(format!(
            "the {what} buffer needs {bytes} bytes, more than this device's max_buffer_size \
             ({}): the model has too many tensors or elements for this device",
            limits.max_buffer_size
        )));
    }
    // Every storage buffer checked here is bound whole.
    if !uniform && bytes > limits.max_storage_buffer_binding_size {
        return Err(Error::TooLarge(format!(
            "the {what} buffer needs {bytes} bytes, more than this device's \
             max_storage_buffer_binding_size ({}): the model has too many tensors or elements \
             for this device",
            limits.max_storage_buffer_binding_size
        )));
    }
    if uniform && UNIFORM_STRIDE > limits.max_uniform_buffer_binding_size {
        return Err(Error::TooLarge(format!(
            "the step scalars need a {UNIFORM_STRIDE}-byte uniform binding, more than this \
             device's max_uniform_buffer_binding_size ({})",
            limits.max_uniform_buffer_binding_size
        )));
    }
    Ok(())
}

pub(super) fn split_chunks(total: u64, per_chunk: u64) -> Vec<ChunkRange> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < total {
        let len = per_chunk.min(total - start);
        out.push(ChunkRange { start, len });
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count the kernels hold in 32 bits is refused past u32::MAX, never
    /// truncated (a model of 2^32 tensors or tiles is too big to build in a
    /// test, so the check itself is tested).
    #[test]
    fn kernel_counts_past_u32_are_refused() {
        assert_eq!(kernel_u32(u32::MAX as u64, "x", String::new), Ok(u32::MAX));
        for n in [u32::MAX as u64 + 1, u64::MAX] {
            match kernel_u32(n, "the number of tiles", || "detail".into()) {
                Err(Error::SizeOverflow { what, ty, detail }) => {
                    assert_eq!((what, ty), ("the number of tiles", "u32"));
                    assert!(detail.contains("detail"), "{detail}");
                }
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    /// Whatever a device claims, a chunk stays below 2^30 elements (its
    /// byte size and every index into it fit in 32 bits).
    #[test]
    fn chunks_keep_indices_32_bit() {
        let huge = wgpu::Limits {
            max_storage_buffer_binding_size: u64::MAX,
            max_buffer_size: u64::MAX,
            ..wgpu::Limits::default()
        };
        assert_eq!(
            chunk_elements_for(&huge, &GpuOptions::default()),
            MAX_CHUNK_ELEMENTS
        );
        let asked = GpuOptions {
            max_chunk_elements: Some(u64::MAX),
            ..GpuOptions::default()
        };
        assert_eq!(chunk_elements_for(&huge, &asked), MAX_CHUNK_ELEMENTS);
        // A 2^33-element model is 8 chunks, each bound at its own offset.
        let chunks = split_chunks(1 << 33, MAX_CHUNK_ELEMENTS);
        assert_eq!(chunks.len(), 8);
        assert!(chunks.iter().all(|c| c.len <= MAX_CHUNK_ELEMENTS));
        // The grid-stride loop's last index plus the largest stride.
        let last = (MAX_CHUNK_ELEMENTS - 1) as u32;
        assert!(last.checked_add(65_535 * WORKGROUP_SIZE as u32).is_some());
    }
}
