//! Kernel signatures: what each argument must be, checked before a launch so that a wrong
//! shape, dtype, stride or device is an error naming the argument, not a wrong result or a
//! device fault.

use std::collections::BTreeMap;
use std::fmt;

use crate::buffer::{DeviceBuffer, contiguous_strides, is_contiguous};
use crate::dtype::DType;
use crate::error::{Result, RuntimeError};

/// A kernel argument at the [`crate::Device`] level.
///
/// Built with `From`: `(&buf).into()`, `2.0f32.into()`, `7i32.into()`, ...
#[derive(Debug, Clone, Copy)]
pub enum KernelArg<'a> {
    /// A device buffer (passed to the kernel as a bare pointer).
    Buffer(&'a DeviceBuffer),
    /// `i32` scalar.
    I32(i32),
    /// `u32` scalar.
    U32(u32),
    /// `i64` scalar.
    I64(i64),
    /// `f32` scalar.
    F32(f32),
}

impl KernelArg<'_> {
    /// What the argument is, for messages (`f32 buffer [2, 8]`, `i32 scalar`).
    pub fn describe(&self) -> String {
        match self {
            KernelArg::Buffer(b) => format!("{} buffer {:?}", b.dtype(), b.shape()),
            KernelArg::I32(_) => "i32 scalar".into(),
            KernelArg::U32(_) => "u32 scalar".into(),
            KernelArg::I64(_) => "i64 scalar".into(),
            KernelArg::F32(_) => "f32 scalar".into(),
        }
    }
}

impl<'a> From<&'a DeviceBuffer> for KernelArg<'a> {
    fn from(b: &'a DeviceBuffer) -> Self {
        KernelArg::Buffer(b)
    }
}

macro_rules! scalar_from {
    ($t:ty, $v:ident) => {
        impl From<$t> for KernelArg<'_> {
            fn from(x: $t) -> Self {
                KernelArg::$v(x)
            }
        }
    };
}
scalar_from!(i32, I32);
scalar_from!(u32, U32);
scalar_from!(i64, I64);
scalar_from!(f32, F32);

/// Type of a scalar kernel argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// `i32`.
    I32,
    /// `u32`.
    U32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
}

impl ScalarType {
    fn matches(self, arg: &KernelArg<'_>) -> bool {
        matches!(
            (self, arg),
            (ScalarType::I32, KernelArg::I32(_))
                | (ScalarType::U32, KernelArg::U32(_))
                | (ScalarType::I64, KernelArg::I64(_))
                | (ScalarType::F32, KernelArg::F32(_))
        )
    }
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScalarType::I32 => "i32",
            ScalarType::U32 => "u32",
            ScalarType::I64 => "i64",
            ScalarType::F32 => "f32",
        })
    }
}

/// One dimension of an expected shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// Exactly this size.
    Fixed(usize),
    /// A named size that must be the same wherever the name appears (`B`, `T`, `H`, `K`).
    Sym(String),
    /// Any size.
    Any,
}

impl Dim {
    /// A named dimension.
    pub fn sym(name: impl Into<String>) -> Self {
        Dim::Sym(name.into())
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Self {
        Dim::Sym(s.to_owned())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Any => f.write_str("_"),
        }
    }
}

/// The memory layout a buffer argument must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Row-major with no gaps: what the generated kernels index with.
    #[default]
    Contiguous,
    /// Any strides (the kernel takes its strides as scalar arguments).
    Strided,
}

/// What one kernel parameter must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamSpec {
    /// A device buffer.
    Buffer {
        /// Name used in errors.
        name: String,
        /// Element type.
        dtype: DType,
        /// Expected shape.
        shape: Vec<Dim>,
        /// Expected layout.
        layout: Layout,
    },
    /// A scalar passed by value.
    Scalar {
        /// Name used in errors.
        name: String,
        /// Its type.
        ty: ScalarType,
    },
}

impl ParamSpec {
    /// The parameter's name.
    pub fn name(&self) -> &str {
        match self {
            ParamSpec::Buffer { name, .. } | ParamSpec::Scalar { name, .. } => name,
        }
    }
}

/// The parameters of a kernel, in launch order. The compiler emits one per generated kernel;
/// [`crate::Device::launch_checked`] checks arguments against it.
///
/// ```
/// use linrec_runtime::{DType, KernelSignature, ScalarType};
/// let sig = KernelSignature::new("axpy")
///     .scalar("alpha", ScalarType::F32)
///     .buffer("x", DType::F32, ["N"])
///     .buffer("y", DType::F32, ["N"])
///     .buffer("out", DType::F32, ["N"])
///     .scalar("n", ScalarType::I32);
/// assert_eq!(sig.params().len(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSignature {
    kernel: String,
    params: Vec<ParamSpec>,
}

/// Sizes of the named dimensions, as found in the arguments of a checked launch.
pub type Bindings = BTreeMap<String, usize>;

impl KernelSignature {
    /// An empty signature for the kernel named `kernel`.
    pub fn new(kernel: impl Into<String>) -> Self {
        KernelSignature {
            kernel: kernel.into(),
            params: Vec::new(),
        }
    }

    /// Adds a contiguous buffer parameter.
    pub fn buffer<D: Into<Dim>>(
        self,
        name: impl Into<String>,
        dtype: DType,
        shape: impl IntoIterator<Item = D>,
    ) -> Self {
        self.buffer_with_layout(name, dtype, shape, Layout::Contiguous)
    }

    /// Adds a buffer parameter with the given layout requirement.
    pub fn buffer_with_layout<D: Into<Dim>>(
        mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: impl IntoIterator<Item = D>,
        layout: Layout,
    ) -> Self {
        self.params.push(ParamSpec::Buffer {
            name: name.into(),
            dtype,
            shape: shape.into_iter().map(Into::into).collect(),
            layout,
        });
        self
    }

    /// Adds a scalar parameter.
    pub fn scalar(mut self, name: impl Into<String>, ty: ScalarType) -> Self {
        self.params.push(ParamSpec::Scalar {
            name: name.into(),
            ty,
        });
        self
    }

    /// The kernel's name.
    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// The parameters in order.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Checks `args` against the signature and returns the sizes of the named dimensions.
    /// The first mismatch is returned as an error naming the argument.
    pub fn check(&self, args: &[KernelArg<'_>]) -> Result<Bindings> {
        if args.len() != self.params.len() {
            return Err(RuntimeError::ArgCount {
                kernel: self.kernel.clone(),
                expected: self.params.len(),
                found: args.len(),
            });
        }
        let mut bindings = Bindings::new();
        // Which argument fixed each named dimension, for the conflict message.
        let mut bound_by: BTreeMap<String, String> = BTreeMap::new();
        for (param, arg) in self.params.iter().zip(args) {
            match param {
                ParamSpec::Scalar { name, ty } => {
                    if !ty.matches(arg) {
                        return Err(RuntimeError::ArgKind {
                            arg: name.clone(),
                            expected: format!("{ty} scalar"),
                            found: arg.describe(),
                        });
                    }
                }
                ParamSpec::Buffer {
                    name,
                    dtype,
                    shape,
                    layout,
                } => {
                    let KernelArg::Buffer(buf) = arg else {
                        return Err(RuntimeError::ArgKind {
                            arg: name.clone(),
                            expected: format!("{dtype} buffer {}", show_shape(shape)),
                            found: arg.describe(),
                        });
                    };
                    if buf.dtype() != *dtype {
                        return Err(RuntimeError::DType {
                            arg: name.clone(),
                            expected: *dtype,
                            found: buf.dtype(),
                        });
                    }
                    check_shape(name, shape, buf.shape(), &mut bindings, &mut bound_by)?;
                    if *layout == Layout::Contiguous && !is_contiguous(buf.shape(), buf.strides()) {
                        return Err(RuntimeError::Strides {
                            arg: name.clone(),
                            expected: contiguous_strides(buf.shape()),
                            layout: "contiguous, row-major",
                            found: buf.strides().to_vec(),
                        });
                    }
                }
            }
        }
        Ok(bindings)
    }
}

fn show_shape(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn check_shape(
    arg: &str,
    expected: &[Dim],
    found: &[usize],
    bindings: &mut Bindings,
    bound_by: &mut BTreeMap<String, String>,
) -> Result<()> {
    let mismatch = || RuntimeError::Shape {
        arg: arg.to_owned(),
        expected: show_shape(expected),
        found: found.to_vec(),
    };
    if expected.len() != found.len() {
        return Err(mismatch());
    }
    for (dim, &size) in expected.iter().zip(found) {
        match dim {
            Dim::Any => {}
            Dim::Fixed(n) if *n == size => {}
            Dim::Fixed(_) => return Err(mismatch()),
            Dim::Sym(name) => match bindings.get(name) {
                Some(&bound) if bound != size => {
                    return Err(RuntimeError::DimConflict {
                        arg: arg.to_owned(),
                        dim: name.clone(),
                        found: size,
                        bound,
                        bound_by: bound_by.get(name).cloned().unwrap_or_default(),
                    });
                }
                Some(_) => {}
                None => {
                    bindings.insert(name.clone(), size);
                    bound_by.insert(name.clone(), arg.to_owned());
                }
            },
        }
    }
    Ok(())
}
