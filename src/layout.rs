//! How an optimizer's tensors are packed: back to back in one flat range.

use crate::error::{Error, Result};

/// The tensors of one optimizer, packed back to back in one flat range of
/// `f32`: tensor `i` holds elements `offsets[i] .. offsets[i] + lengths[i]`.
/// Every rule in this crate is element-wise, so a step is one pass over the
/// flat range whatever the number of tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    lengths: Vec<usize>,
    offsets: Vec<usize>,
    total: usize,
}

impl Layout {
    /// The layout of tensors with these lengths, in this order. The total
    /// length must fit `usize` and its byte count (4 bytes an element)
    /// `u64`, or [`Error::SizeOverflow`] says which did not; nothing is
    /// allocated before that is checked.
    pub fn new(lengths: &[usize]) -> Result<Self> {
        let total = lengths.iter().enumerate().try_fold(0usize, |at, (i, &n)| {
            at.checked_add(n).ok_or_else(|| Error::SizeOverflow {
                what: "the total length of the tensors",
                ty: "usize",
                detail: format!("tensor {i} has {n} elements, after {at} in tensors 0..{i}"),
            })
        })?;
        // On a 64-bit target a total below usize::MAX can still be more
        // than u64::MAX bytes.
        if u64::try_from(total)
            .ok()
            .and_then(|t| t.checked_mul(4))
            .is_none()
        {
            return Err(Error::SizeOverflow {
                what: "the byte count of the tensors",
                ty: "u64",
                detail: format!("{total} elements of 4 bytes"),
            });
        }
        let mut offsets = Vec::with_capacity(lengths.len());
        let mut at = 0;
        for &n in lengths {
            offsets.push(at);
            at += n;
        }
        Ok(Layout {
            lengths: lengths.to_vec(),
            offsets,
            total,
        })
    }

    /// The layout of these slices (see [`Layout::new`]).
    pub fn of(tensors: &[&[f32]]) -> Result<Self> {
        Layout::new(&tensors.iter().map(|t| t.len()).collect::<Vec<_>>())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Elements of each tensor.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Offset of each tensor in the flat range, in elements.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Elements in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes in all (4 an element); [`Layout::new`] checked that it fits.
    pub fn bytes(&self) -> u64 {
        self.total as u64 * 4
    }

    /// The element range of tensor `i`. Panics when `i >= self.len()`, as
    /// indexing a slice does.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i] + self.lengths[i]
    }

    /// Checks that `tensors` match this layout tensor for tensor.
    pub fn check(&self, tensors: &[&[f32]]) -> Result<()> {
        if tensors.len() != self.lengths.len() {
            return Err(Error::TensorCountMismatch {
                expected: self.lengths.len(),
                got: tensors.len(),
            });
        }
        for (i, (t, &n)) in tensors.iter().zip(&self.lengths).enumerate() {
            if t.len() != n {
                return Err(Error::LengthMismatch {
                    tensor: i,
                    expected: n,
                    got: t.len(),
                });
            }
        }
        Ok(())
    }

    /// Checks a flat slice against the total length.
    pub fn check_flat(&self, flat: &[f32]) -> Result<()> {
        if flat.len() != self.total {
            return Err(Error::LengthMismatch {
                tensor: usize::MAX,
                expected: self.total,
                got: flat.len(),
            });
        }
        Ok(())
    }

    /// Splits a flat slice into the tensors of this layout; the slice must
    /// hold exactly [`Layout::total`] elements ([`Error::LengthMismatch`]).
    pub fn split<'a>(&self, flat: &'a [f32]) -> Result<Vec<&'a [f32]>> {
        self.check_flat(flat)?;
        Ok(self.split_unchecked(flat))
    }

    /// [`Layout::split`] of a slice known to hold [`Layout::total`]
    /// elements (an optimizer's own packed values).
    pub(crate) fn split_unchecked<'a>(&self, flat: &'a [f32]) -> Vec<&'a [f32]> {
        (0..self.len()).map(|i| &flat[self.range(i)]).collect()
    }
}

/// The step counters every optimizer keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Steps taken so far.
    pub step: u64,
    /// SGD: the momentum buffer has been filled (PyTorch fills it with the
    /// gradient the first time it is used).
    pub buffer_filled: bool,
}

impl Counters {
    pub(crate) fn advance(&mut self, config: &crate::Config) {
        self.step += 1;
        if config.fills_buffer_on_first_use() {
            self.buffer_filled = true;
        }
    }
}
