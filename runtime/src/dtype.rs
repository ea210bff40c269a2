//! Element types of device buffers.

use std::fmt;
use std::str::FromStr;

use crate::error::RuntimeError;

/// The element type of a device buffer.
///
/// linrec's kernels take inputs in bf16, f16 or f32, keep states and all accumulation in f32,
/// and index with i32/i64 (`cu_seqlens`, offsets).
///
/// ```
/// use linrec_runtime::DType;
/// assert_eq!(DType::BF16.size_bytes(), 2);
/// assert_eq!(DType::I64.size_bytes(), 8);
/// assert_eq!("f32".parse::<DType>().unwrap(), DType::F32);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
    BF16,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
}

impl DType {
    /// Every dtype, in a fixed order (for tests and listings).
    pub const ALL: [DType; 5] = [DType::BF16, DType::F16, DType::F32, DType::I32, DType::I64];

    /// Size of one element in bytes.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }

    /// The lower-case name used in messages and on the command line (`bf16`, `f32`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| RuntimeError::Parse {
                what: "dtype",
                value: s.to_owned(),
                expected: "one of bf16, f16, f32, i32, i64",
            })
    }
}

/// A host element type that can be copied to and from a device buffer of a given [`DType`].
///
/// Implemented for `f32`, `i32` and `i64`. bf16 and f16 data goes through the byte-level
/// calls ([`crate::Device::upload_bytes`], [`crate::Device::download_bytes`]) so this crate
/// needs no half-precision dependency.
pub trait Element: Copy + Send + Sync + 'static {
    /// The device dtype with this host representation.
    const DTYPE: DType;

    /// Appends the little-endian bytes of `values` (device byte order on every target we
    /// support: x86-64 hosts, NVIDIA, AMD and Intel GPUs).
    fn write_le(values: &[Self], out: &mut Vec<u8>);

    /// Decodes little-endian bytes; `bytes.len()` is a multiple of the element size.
    fn read_le(bytes: &[u8]) -> Vec<Self>;
}

macro_rules! impl_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;

            fn write_le(values: &[Self], out: &mut Vec<u8>) {
                out.reserve(values.len() * std::mem::size_of::<$t>());
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }

            fn read_le(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| {
                        let mut a = [0u8; std::mem::size_of::<$t>()];
                        a.copy_from_slice(c);
                        <$t>::from_le_bytes(a)
                    })
                    .collect()
            }
        }
    };
}

impl_element!(f32, DType::F32);
impl_element!(i32, DType::I32);
impl_element!(i64, DType::I64);
