//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong in `wgpu-optim`, each variant naming what is
/// wrong and the offending value. No public function of the crate panics on
/// bad input; it returns one of these, and a call that returns an error has
/// changed no parameter and no optimizer state.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A hyperparameter is out of its valid range (negative, NaN, infinite, ...).
    #[error("invalid hyperparameter `{name}` = {value}: {reason}")]
    InvalidHyperparameter {
        /// PyTorch's name of the hyperparameter (`lr`, `betas[0]`, `eps`, ...).
        name: &'static str,
        /// The value that was given.
        value: f64,
        /// What the valid range is.
        reason: &'static str,
    },
    /// A combination of options that PyTorch refuses too.
    #[error("invalid option combination: {0}")]
    InvalidOptions(String),
    /// A step of a schedule-free optimizer in eval mode: its parameters are
    /// then the averaged `x`, not the `y` gradients are taken at
    /// (`set_eval(false)` first; the `schedulefree` package raises too).
    #[error("{rule} is in eval mode (its parameters are the averaged x): call set_eval(false) before stepping")]
    EvalMode {
        /// The rule's name.
        rule: &'static str,
    },
    /// An operation that needs a momentum buffer on an optimizer built without one.
    #[error("{rule} was built with momentum = 0, so it has no momentum buffer; build it with momentum > 0 to change the momentum between steps")]
    NoMomentum {
        /// The rule's name.
        rule: &'static str,
    },
    /// The number of gradient tensors differs from the number of parameter tensors.
    #[error("expected {expected} gradient tensors (one per parameter tensor), got {got}")]
    TensorCountMismatch {
        /// Parameter tensors the optimizer holds.
        expected: usize,
        /// Gradient tensors given.
        got: usize,
    },
    /// A gradient (or other per-tensor input) whose length differs from its parameter's.
    #[error("tensor {tensor}: expected {expected} elements, got {got}")]
    LengthMismatch {
        /// Index of the tensor.
        tensor: usize,
        /// Elements the parameter tensor has.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A shape whose element count is not its tensor's.
    #[error("tensor {tensor}: shape {shape} does not hold its {elements} elements")]
    ShapeMismatch {
        /// Index of the tensor.
        tensor: usize,
        /// The shape given.
        shape: String,
        /// Elements the tensor has.
        elements: usize,
    },
    /// A rule that treats a tensor as a matrix ([`crate::Muon`]) over a
    /// tensor given without a 2-D shape ([`crate::Shape`],
    /// `CpuOptimizer::with_shapes`).
    #[error("{rule} needs tensor {tensor} as a 2-D matrix, it has {shape}")]
    MatrixRequired {
        /// The rule.
        rule: &'static str,
        /// Index of the tensor.
        tensor: usize,
        /// Its shape (`no shape` when none was given).
        shape: String,
    },
    /// A state tensor name the rule does not have.
    #[error("rule {rule} has no state named `{name}` (it has: {available})")]
    UnknownState {
        /// The rule.
        rule: &'static str,
        /// The name asked for.
        name: String,
        /// The names it has, comma separated.
        available: String,
    },
    /// No GPU adapter could be found.
    #[error("no GPU adapter found{filter}. Install a Vulkan, Metal or DX12 driver; on a headless Linux machine without a GPU, install Mesa's software Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)")]
    NoAdapter {
        /// The filters that were in force (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`), as text.
        filter: String,
    },
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter `{adapter}`: {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        reason: String,
    },
    /// A buffer handed over by the user is too small for the tensors it must hold.
    #[error("{what} buffer is {actual} bytes, but {required} bytes are needed")]
    BufferTooSmall {
        /// Which buffer (`parameter`, `gradient`).
        what: &'static str,
        /// Bytes needed.
        required: u64,
        /// Bytes it has.
        actual: u64,
    },
    /// A buffer handed over by the user lacks a usage flag the optimizer needs.
    #[error("{what} buffer lacks usage {missing} (it has {has})")]
    BufferUsage {
        /// Which buffer.
        what: &'static str,
        /// The missing usage flags.
        missing: String,
        /// The flags it has.
        has: String,
    },
    /// The model is larger than the device can hold or address.
    #[error("{0}")]
    TooLarge(String),
    /// The device's limits are below what a kernel needs: `limit` is the
    /// field of `wgpu::Limits` that falls short. Returned when the optimizer
    /// is built (for what every step needs) or when the feature that needs
    /// the kernel is turned on (clipping, `skip_nonfinite`); nothing
    /// changed. The README's "Device limits" lists what each kernel needs.
    #[error("{what} needs {limit} = {needed} or better, this device has {available}")]
    DeviceLimit {
        /// The kernel or feature (`the reduction of clipping and skip_nonfinite`, ...).
        what: String,
        /// The name of the `wgpu::Limits` field.
        limit: &'static str,
        /// The worst value that works (the least for a `max_*` limit, the
        /// largest for a `min_*_alignment`).
        needed: u64,
        /// The device's value.
        available: u64,
    },
    /// A size, offset, count or byte count computed from lengths the caller
    /// (or a file) gave does not fit the integer type that must hold it.
    /// Checked before anything is allocated or changed.
    #[error("{what} overflows {ty}: {detail}")]
    SizeOverflow {
        /// What overflowed: `the total length of the tensors`, `the byte
        /// count of the tensors`, `the number of tensors`, `the number of
        /// tiles`.
        what: &'static str,
        /// The type it must fit: `usize`, `u64` (bytes) or `u32` (what the
        /// kernels index with).
        ty: &'static str,
        /// The values that led there.
        detail: String,
    },
    /// wgpu reported a validation error (for example a buffer from another device).
    #[error("wgpu validation error while {during}: {message}")]
    Validation {
        /// What the library was doing.
        during: &'static str,
        /// wgpu's message.
        message: String,
    },
    /// The GPU ran out of memory.
    #[error("out of GPU memory while {during}: {message}")]
    OutOfMemory {
        /// What the library was doing.
        during: &'static str,
        /// wgpu's message.
        message: String,
    },
    /// Mapping a buffer for read-back failed or the device was lost.
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    /// A file (conformance case) could not be read or parsed.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The total gradient norm was NaN or infinite and clipping was asked to
    /// refuse such a step (`error_if_nonfinite`); nothing changed.
    #[error("the total gradient norm is {norm}, not finite: step refused (error_if_nonfinite), nothing changed")]
    NonFiniteGradNorm {
        /// The norm that was computed.
        norm: f64,
    },
    /// An optimizer was given no parameter tensors (`torch.optim` refuses
    /// an empty parameter list too). Tensors of zero elements are fine.
    #[error("empty parameter list: an optimizer needs at least one parameter tensor")]
    EmptyParameterList,
    /// A file could not be read, written, synced or renamed.
    #[error("{path}: {message}")]
    Io {
        /// The file (or folder).
        path: String,
        /// What the operating system said.
        message: String,
    },
    /// A checkpoint file is malformed, truncated, hostile or inconsistent
    /// (a missing tensor, a wrong dtype or shape, a non-finite
    /// hyperparameter, ...). Nothing was changed.
    #[error("invalid checkpoint: {0}")]
    Checkpoint(String),
    /// A valid checkpoint that does not fit this optimizer (another rule,
    /// other options, another tensor count or length). Nothing was changed.
    #[error("checkpoint does not fit this optimizer: {what} is {got} in the checkpoint, {expected} here")]
    CheckpointMismatch {
        /// What differs (`rule`, `options`, `tensor count`, `length of tensor 3`, ...).
        what: String,
        /// This optimizer's value.
        expected: String,
        /// The checkpoint's value.
        got: String,
    },
    /// The GPU device was lost (driver reset, `device.destroy()`, ...). The
    /// optimizer's GPU buffers are gone; the host copies of what the caller
    /// handed over are untouched. Make a new [`crate::GpuContext`] and restore
    /// from the last checkpoint. (After `device.destroy()` WebGPU lets the
    /// work already queued finish first: a step right after it may still
    /// return `Ok`, its work dropped; the next call that waits for the GPU,
    /// and every call after, returns this.)
    #[error("the GPU device was lost while {during}: {reason}")]
    DeviceLost {
        /// What the library was doing.
        during: &'static str,
        /// wgpu's reason and message.
        reason: String,
    },
    /// Steps recorded with `GpuOptimizer::record_step` have not run on the
    /// GPU (the encoder holding them has not been submitted), and the call
    /// needs them to have run: with `set_skip_nonfinite` at most 32 steps
    /// may be queued ahead of what the host has read back, NAdam's and
    /// ASGD's scalar state needs the outcomes of the steps queued since
    /// `betas[0]` or the lr changed, and exact counts (a checkpoint,
    /// `skipped_steps`) need every step run. Nothing was changed; submit
    /// the encoder and call again.
    #[error("{steps} steps recorded with record_step have not run on the GPU, and {needs}: submit the encoder they were recorded into first (nothing was changed)")]
    UnsubmittedSteps {
        /// Steps queued whose outcome the host could not read back.
        steps: u64,
        /// Why the call needs them run.
        needs: &'static str,
    },
    /// A tensor listed in two parameter groups (or twice in one), as
    /// torch refuses it. Nothing was changed.
    #[error("tensor {tensor} is in parameter group {first} and again in group {second}: a tensor must be in exactly one group")]
    TensorInTwoGroups {
        /// Index of the tensor.
        tensor: usize,
        /// The group it is first listed in.
        first: usize,
        /// The group it is listed in again.
        second: usize,
    },
    /// A tensor of the optimizer's list in no parameter group. Nothing was
    /// changed.
    #[error("tensor {tensor} is in no parameter group: a tensor must be in exactly one group")]
    TensorInNoGroup {
        /// Index of the tensor.
        tensor: usize,
    },
    /// A parameter group lists a tensor index beyond the tensors given.
    #[error("parameter group {group} lists tensor {tensor}, but there are {tensors} tensors")]
    NoSuchTensor {
        /// The group.
        group: usize,
        /// The index it lists.
        tensor: usize,
        /// Tensors given.
        tensors: usize,
    },
    /// A parameter group whose configuration is of another rule than the
    /// optimizer's (every group is a configuration of one rule).
    #[error("parameter group {group} is {got}, the optimizer is {expected}: every group must be of the same rule")]
    GroupRuleMismatch {
        /// The group.
        group: usize,
        /// The optimizer's rule (its first group's).
        expected: &'static str,
        /// The group's rule.
        got: &'static str,
    },
    /// A parameter group index beyond the optimizer's groups.
    #[error("no parameter group {group}: the optimizer has {groups}")]
    NoSuchGroup {
        /// The index asked for.
        group: usize,
        /// Groups the optimizer has.
        groups: usize,
    },
    /// Two tensor views (`crate::TensorView`) share bytes of one buffer:
    /// two parameters, two gradients, or a parameter and a gradient.
    /// Nothing was changed.
    #[error("{first} view {first_tensor} and {second} view {second_tensor} overlap in one buffer")]
    ViewOverlap {
        /// `parameter` or `gradient`.
        first: &'static str,
        /// Index of the first view's tensor.
        first_tensor: usize,
        /// `parameter` or `gradient`.
        second: &'static str,
        /// Index of the second view's tensor.
        second_tensor: usize,
    },
    /// A tensor view reaching past its buffer's end (`offset + 4 × len`
    /// bytes beyond the buffer's size). Nothing was changed.
    #[error("{what} view {tensor} ends at byte {end}, past its buffer's {size} bytes")]
    ViewOutOfBounds {
        /// `parameter` or `gradient`.
        what: &'static str,
        /// Index of the tensor.
        tensor: usize,
        /// Where the view ends, in bytes (saturated at `u64::MAX`).
        end: u64,
        /// The buffer's size in bytes.
        size: u64,
    },
    /// A tensor view whose byte offset is not a multiple of 4 (one `f32`).
    /// Nothing was changed.
    #[error("{what} view {tensor} starts at byte {offset}, not a multiple of 4")]
    Misaligned {
        /// `parameter` or `gradient`.
        what: &'static str,
        /// Index of the tensor.
        tensor: usize,
        /// The offset given, in bytes.
        offset: u64,
    },
    /// Something the library does not support yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// The ranks of a [`crate::sharded::ShardedOptimizer`] disagree (tensor
    /// lengths, rule, rank count) or one of them failed a call the others
    /// made: every rank returns this, none waits, nothing changed.
    #[error("the ranks disagree: {0}")]
    RankMismatch(String),
    /// A transport of [`crate::sharded::Collective`] failed.
    #[error("collective failed: {0}")]
    Collective(String),
}

/// `Result` with the crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
