//! The runtime's error type. Every variant says what went wrong and, where there is one, what
//! to do about it; a missing driver or library is one of these values, never a panic.

use crate::backend::{BackendKind, ModuleFormat};
use crate::dtype::DType;

/// `Result` with [`RuntimeError`].
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Everything the runtime can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The vendor library (libcuda, libamdhip64, libze_loader, libOpenCL) could not be loaded,
    /// or lacks an entry point the backend calls.
    #[error("{backend} driver not found: {detail}. {hint}")]
    DriverNotFound {
        /// Which backend.
        backend: BackendKind,
        /// What was looked for.
        detail: String,
        /// What to install or set.
        hint: &'static str,
    },

    /// The driver loaded but offers no usable device.
    #[error("no usable {backend} device: {detail}. {hint}")]
    NoDevice {
        /// Which backend.
        backend: BackendKind,
        /// What the driver said.
        detail: String,
        /// What to install or set.
        hint: &'static str,
    },

    /// `DeviceKind::Auto` found nothing; one line per backend tried.
    #[error("no device found on any backend:{}", attempts.iter().map(|(b, e)| format!("\n  {b}: {e}")).collect::<String>())]
    NoBackendAvailable {
        /// Each backend tried, in order, with the reason it was not used.
        attempts: Vec<(BackendKind, String)>,
    },

    /// A device ordinal past the end of the device list.
    #[error("{backend} device {ordinal} does not exist: {count} usable device(s)")]
    DeviceOrdinal {
        /// Which backend.
        backend: BackendKind,
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices there are.
        count: usize,
    },

    /// A driver call failed.
    #[error("{backend} call {call} failed: {detail}")]
    Driver {
        /// Which backend.
        backend: BackendKind,
        /// The API function (e.g. `clEnqueueNDRangeKernel`, `cuLaunchKernel`).
        call: &'static str,
        /// The driver's error code and text.
        detail: String,
    },

    /// The module bytes are not in the format this backend loads.
    #[error("module is not {expected}: {detail}")]
    InvalidModule {
        /// The format the device loads.
        expected: ModuleFormat,
        /// What was wrong with the bytes.
        detail: String,
    },

    /// The driver rejected the module (compile or link error).
    #[error("{backend} could not build the module: {detail}{}", if log.is_empty() { String::new() } else { format!("\nbuild log:\n{log}") })]
    ModuleBuild {
        /// Which backend.
        backend: BackendKind,
        /// The driver's error.
        detail: String,
        /// The build log, when the driver gives one.
        log: String,
    },

    /// No kernel of that name in the module.
    #[error("kernel `{name}` not found in the module ({detail}){}", available.as_ref().map(|a| format!("; the module has: {a}")).unwrap_or_default())]
    KernelNotFound {
        /// The name asked for.
        name: String,
        /// The driver's error.
        detail: String,
        /// The kernels the module does have, when the driver can list them.
        available: Option<String>,
    },

    /// A buffer argument has the wrong element type.
    #[error("argument `{arg}`: expected dtype {expected}, found {found}")]
    DType {
        /// The argument's name.
        arg: String,
        /// What the kernel takes.
        expected: DType,
        /// What was passed.
        found: DType,
    },

    /// A buffer argument has the wrong shape or rank.
    #[error("argument `{arg}`: expected shape {expected}, found {found:?}")]
    Shape {
        /// The argument's name.
        arg: String,
        /// The expected shape, with symbolic dimensions spelled out.
        expected: String,
        /// The shape passed.
        found: Vec<usize>,
    },

    /// A buffer argument has the wrong strides (the kernels index with fixed strides).
    #[error(
        "argument `{arg}`: expected strides {expected:?} ({layout}), found {found:?}; copy it into a contiguous buffer first"
    )]
    Strides {
        /// The argument's name.
        arg: String,
        /// The strides the kernel assumes, in elements.
        expected: Vec<usize>,
        /// The layout those strides describe.
        layout: &'static str,
        /// The strides passed, in elements.
        found: Vec<usize>,
    },

    /// A symbolic dimension takes two different values in two arguments.
    #[error(
        "argument `{arg}`: dimension {dim} is {found} here but {bound} in argument `{bound_by}`"
    )]
    DimConflict {
        /// The argument where the conflict was found.
        arg: String,
        /// The dimension's name (e.g. `T`).
        dim: String,
        /// Its size in this argument.
        found: usize,
        /// Its size where first seen.
        bound: usize,
        /// The argument that fixed it first.
        bound_by: String,
    },

    /// An argument of the wrong kind (a scalar where a buffer is taken, or a scalar of the
    /// wrong type).
    #[error("argument `{arg}`: expected {expected}, found {found}")]
    ArgKind {
        /// The argument's name.
        arg: String,
        /// What the kernel takes.
        expected: String,
        /// What was passed.
        found: String,
    },

    /// Too many or too few arguments.
    #[error("kernel `{kernel}` takes {expected} argument(s), found {found}")]
    ArgCount {
        /// The kernel's name.
        kernel: String,
        /// How many it takes.
        expected: usize,
        /// How many were passed.
        found: usize,
    },

    /// A buffer, module or kernel that belongs to another device.
    #[error(
        "{what} belongs to device {found}, not to {expected}; allocate or load it on the device that launches"
    )]
    WrongDevice {
        /// What was passed (`argument `q``, `kernel `axpy``, ...).
        what: String,
        /// The device in use.
        expected: String,
        /// The device it belongs to.
        found: String,
    },

    /// A buffer layout that does not fit its allocation, or a host slice of the wrong size.
    #[error("{what}: {detail}")]
    Layout {
        /// The buffer or call concerned.
        what: String,
        /// What does not fit.
        detail: String,
    },

    /// A grid/block configuration the device cannot run.
    #[error("invalid launch of `{kernel}`: {detail}")]
    Launch {
        /// The kernel's name.
        kernel: String,
        /// What is wrong.
        detail: String,
    },

    /// A kernel could not be found, loaded or compiled ([`crate::kernels::Kernels`]). Boxed:
    /// its messages are long and every other `Result` of this crate stays small.
    #[error(transparent)]
    Kernel(Box<crate::kernels::KernelError>),

    /// A string that does not name a device kind, dtype, ...
    #[error("cannot parse {what} from {value:?}: expected {expected}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The input.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
}

impl From<crate::kernels::KernelError> for RuntimeError {
    fn from(e: crate::kernels::KernelError) -> Self {
        RuntimeError::Kernel(Box::new(e))
    }
}
