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
    /// The layout of tensors with these lengths, in this order.
    pub fn new(lengths: &[usize]) -> Self {
        let mut offsets = Vec::with_capacity(lengths.len());
        let mut total = 0usize;
        for &n in lengths {
            offsets.push(total);
            total += n;
        }
        Layout {
            lengths: lengths.to_vec(),
            offsets,
            total,
        }
    }

    /// The layout of these slices.
    pub fn of(tensors: &[&[f32]]) -> Self {
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

    /// The element range of tensor `i`.
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

    /// Splits a flat slice into the tensors of this layout.
    pub fn split<'a>(&self, flat: &'a [f32]) -> Vec<&'a [f32]> {
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
        if let crate::Config::Sgd(c) = config {
            if c.momentum != 0.0 {
                self.buffer_filled = true;
            }
        }
    }
}
