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
    /// Each tensor's shape ([`Layout::with_shapes`]); `None` when none was
    /// given (every tensor a flat vector).
    shapes: Option<Vec<Shape>>,
}

/// The shape of a parameter tensor, as torch's `Tensor.shape` gives it, for
/// the rules that treat a weight matrix as a matrix ([`crate::Adafactor`],
/// [`crate::Muon`]); the element-wise rules ignore it. A tensor's values are
/// packed row-major (C order), as torch stores a contiguous tensor.
///
/// Adafactor factors the last two dimensions, as torch does: a tensor of
/// shape `[d0, .., dk, rows, cols]` is `batch = d0·…·dk` matrices of
/// `rows × cols`, each with its own row and column statistics; a tensor of
/// fewer than two dimensions is a vector (a full `variance`). Muon needs
/// exactly two dimensions, as torch 2.15's `Muon` refuses any other
/// ([`crate::Error::MatrixRequired`]).
///
/// ```
/// use wgpu_optim::Shape;
/// let conv = Shape::new(&[8, 3, 5, 7]);
/// assert_eq!((conv.batch(), conv.rows(), conv.cols()), (24, 5, 7));
/// assert_eq!(Shape::matrix(4, 6).numel(), Some(24));
/// assert!(!Shape::vector(10).is_matrix());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: Vec<usize>,
}

impl Shape {
    /// A shape from its JSON form, a list of dimensions (`[768, 3072]`), as
    /// checkpoints and conformance cases write it; `None` for anything else.
    pub(crate) fn from_json(dims: &serde_json::Value) -> Option<Shape> {
        dims.as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect::<Option<Vec<usize>>>()
            .map(|d| Shape::new(&d))
    }

    /// A shape of these dimensions (torch's `shape`, outermost first).
    pub fn new(dims: &[usize]) -> Shape {
        Shape {
            dims: dims.to_vec(),
        }
    }

    /// A `rows × cols` matrix.
    pub fn matrix(rows: usize, cols: usize) -> Shape {
        Shape::new(&[rows, cols])
    }

    /// A vector of `n` elements.
    pub fn vector(n: usize) -> Shape {
        Shape::new(&[n])
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The element count (the product of the dimensions, 1 for no
    /// dimensions), `None` when it overflows `usize`.
    pub fn numel(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// Whether it has at least two dimensions: a matrix (or a batch of
    /// them) to Adafactor.
    pub fn is_matrix(&self) -> bool {
        self.dims.len() >= 2
    }

    /// The second-to-last dimension (1 for a vector).
    pub fn rows(&self) -> usize {
        match self.dims.len() {
            0 | 1 => 1,
            n => self.dims[n - 2],
        }
    }

    /// The last dimension (the element count of a vector, 1 for no
    /// dimensions).
    pub fn cols(&self) -> usize {
        self.dims.last().copied().unwrap_or(1)
    }

    /// The product of the dimensions before the last two: how many
    /// `rows × cols` matrices the tensor holds (1 for a matrix or a vector).
    pub fn batch(&self) -> usize {
        let n = self.dims.len().saturating_sub(2);
        self.dims[..n].iter().product()
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(usize::to_string).collect();
        write!(f, "[{}]", dims.join(", "))
    }
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
            shapes: None,
        })
    }

    /// This layout with each tensor's [`Shape`], one per tensor, each of as
    /// many elements as its tensor ([`Error::TensorCountMismatch`],
    /// [`Error::ShapeMismatch`]).
    pub fn with_shapes(mut self, shapes: &[Shape]) -> Result<Self> {
        if shapes.len() != self.lengths.len() {
            return Err(Error::TensorCountMismatch {
                expected: self.lengths.len(),
                got: shapes.len(),
            });
        }
        for (i, (shape, &n)) in shapes.iter().zip(&self.lengths).enumerate() {
            if shape.numel() != Some(n) {
                return Err(Error::ShapeMismatch {
                    tensor: i,
                    shape: shape.to_string(),
                    elements: n,
                });
            }
        }
        self.shapes = Some(shapes.to_vec());
        Ok(self)
    }

    /// Each tensor's shape, when the layout has them ([`Layout::with_shapes`]).
    pub fn shapes(&self) -> Option<&[Shape]> {
        self.shapes.as_deref()
    }

    /// Tensor `i`'s shape, when the layout has shapes.
    pub fn shape(&self, i: usize) -> Option<&Shape> {
        self.shapes.as_ref().and_then(|s| s.get(i))
    }

    /// The layout of state tensor `name` of `config` over these tensors:
    /// the parameters' own for the element-wise rules, Adafactor's row and
    /// column statistics for its factored state (see [`Shape`]).
    pub(crate) fn state_layout(&self, config: &crate::Config, name: &str) -> Layout {
        let lengths: Vec<usize> = (0..self.len())
            .map(|i| config.state_len(name, self.shape(i), self.lengths[i]))
            .collect();
        if lengths == self.lengths {
            return self.clone();
        }
        // No longer than the parameters' (a factor of a matrix), so it fits.
        Layout::new(&lengths).unwrap_or_else(|_| self.clone())
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
