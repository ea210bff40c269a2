//! [`Error`]: what the facade's calls ([`crate::ops`] and the `forward` / `backward` of every
//! variant) can report. Each message names the variant and the argument or option at fault and says what
//! was expected; nothing is launched when a call fails.

use linrec_runtime::RuntimeError;
use linrec_runtime::kernels::KernelError;
use linrec_spec::SpecError;

/// An error of a typed op ([`crate::ops::forward`], [`crate::ops::backward`],
/// `MyVariant::forward`, `MyVariant::backward`).
///
/// ```no_run
/// use linrec::catalogue::{SimpleGla, SimpleGlaInputs};
/// use linrec::runtime::{DType, Device, DeviceKind};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let device = Device::new(DeviceKind::Auto)?;
/// let x = device.alloc(DType::BF16, &[1, 8, 2, 16])?;
/// let g = device.alloc(DType::BF16, &[1, 8, 2])?; // gates are f32
/// let err = SimpleGla::forward(&device, &SimpleGlaInputs { q: &x, k: &x, v: &x, g: &g }, &Default::default())
///     .expect_err("a bf16 gate");
/// assert_eq!(err.argument(), Some("g"));
/// // simple_gla: argument `g`: expected f32 [B, T, HV] = [1, 8, 2], found bf16 [1, 8, 2]
/// eprintln!("{err}");
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec is not valid (only a spec built by hand can be: `recurrence!` validates
    /// when it expands).
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),

    /// An input tensor, `h0` or `cu_seqlens` that does not fit the call: missing, of another
    /// dtype, rank or shape, strided, on another device, or out of range (head dims, heads,
    /// varlen offsets); in a backward, a `do` or `dht` that does not fit the saved forward, a
    /// `dht` the forward has no final state for, another device than the forward's, or a
    /// `saved` of another variant.
    #[error("{variant}: argument `{argument}`: {detail}")]
    Argument {
        /// The spec's name.
        variant: String,
        /// The argument: the input's declared name (`q`, `r`, `beta`, ...), `h0`,
        /// `cu_seqlens`; in a backward `do`, `dht`, `device` or `saved`.
        argument: String,
        /// What is wrong and what was expected.
        detail: String,
    },

    /// A [`crate::ops::ForwardOptions`] field out of range.
    #[error("{variant}: option `{option}`: {detail}")]
    Option {
        /// The spec's name.
        variant: String,
        /// The field (`scale`, `chunk`).
        option: &'static str,
        /// What is wrong and what is allowed.
        detail: String,
    },

    /// A form of the spec that linrec's compiler does not derive kernels for yet (the message
    /// names the form and what is supported).
    #[error("{detail}")]
    NotYetSupported {
        /// The spec's name.
        variant: String,
        /// The compiler's explanation (`spec `gla`: not yet supported: the diagonal decay
        /// ...`).
        detail: String,
    },

    /// The device is one linrec has no kernel target for (e.g. a CUDA GPU older than sm_80).
    #[error("{variant}: no kernels for this device: {detail}")]
    Target {
        /// The spec's name.
        variant: String,
        /// Which device and which targets linrec has.
        detail: String,
    },

    /// The kernel could not be found, loaded or compiled (the message lists where it was
    /// looked for and how to build it). Boxed: it keeps `Result<_, Error>` small.
    #[error(transparent)]
    Kernel(Box<KernelError>),

    /// The runtime refused or failed the launch (argument names are the declared ones).
    #[error("{variant}: {source}")]
    Runtime {
        /// The spec's name.
        variant: String,
        /// The runtime's error.
        source: RuntimeError,
    },
}

impl Error {
    /// The argument or option at fault (`q`, `h0`, `cu_seqlens`, `scale`, `do`, `dht`, ...),
    /// when the error is about one.
    pub fn argument(&self) -> Option<&str> {
        match self {
            Error::Argument { argument, .. } => Some(argument),
            Error::Option { option, .. } => Some(option),
            Error::Runtime {
                source:
                    RuntimeError::DType { arg, .. }
                    | RuntimeError::Shape { arg, .. }
                    | RuntimeError::Strides { arg, .. }
                    | RuntimeError::DimConflict { arg, .. }
                    | RuntimeError::ArgKind { arg, .. },
                ..
            } => Some(arg),
            _ => None,
        }
    }
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Self {
        Error::Kernel(Box::new(e))
    }
}

// Errors cross threads with the work that produced them.
const _: () = {
    const fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Error>();
};
