//! Device buffers with a dtype, a shape and strides.

use std::sync::Arc;

use crate::backend::{DeviceId, RawBuffer};
use crate::dtype::DType;
use crate::error::{Result, RuntimeError};

/// A tensor in device memory: an allocation plus the dtype, shape and strides (in elements)
/// through which kernels read it.
///
/// Cloning, [`DeviceBuffer::reshape`] and [`DeviceBuffer::with_strides`] make views of the
/// same memory (like `torch` views); the memory is freed when the last view is dropped.
/// Buffers are created by [`crate::Device`] (`alloc`, `upload`, ...).
#[derive(Debug, Clone)]
pub struct DeviceBuffer {
    raw: Arc<RawBuffer>,
    dtype: DType,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl DeviceBuffer {
    /// A contiguous (row-major) buffer over `raw`, which must hold `shape`'s elements.
    pub(crate) fn contiguous(raw: RawBuffer, dtype: DType, shape: &[usize]) -> Result<Self> {
        let buf = DeviceBuffer {
            raw: Arc::new(raw),
            dtype,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
        };
        buf.check_fits()?;
        Ok(buf)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The strides in elements (not bytes).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Number of elements in the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the strides are the row-major ones for the shape (what the kernels assume).
    /// Dimensions of size 1 may have any stride, as in PyTorch.
    pub fn is_contiguous(&self) -> bool {
        is_contiguous(&self.shape, &self.strides)
    }

    /// The allocation behind this view.
    pub fn raw(&self) -> &RawBuffer {
        &self.raw
    }

    /// The device that owns the memory.
    pub fn device_id(&self) -> DeviceId {
        self.raw.device_id()
    }

    /// Size of the allocation in bytes.
    pub fn allocation_bytes(&self) -> usize {
        self.raw.len_bytes()
    }

    /// A contiguous view with another shape of the same number of elements.
    ///
    /// ```no_run
    /// # use linrec_runtime::{Device, DeviceKind, DType};
    /// # fn main() -> linrec_runtime::Result<()> {
    /// let dev = Device::new(DeviceKind::Auto)?;
    /// let flat = dev.alloc(DType::F32, &[2 * 8 * 4])?;
    /// let bthd = flat.reshape(&[2, 8, 4])?;
    /// assert_eq!(bthd.strides(), &[32, 4, 1]);
    /// # Ok(()) }
    /// ```
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if !self.is_contiguous() {
            return Err(RuntimeError::Layout {
                what: "reshape".into(),
                detail: format!(
                    "a view with shape {:?} and strides {:?} is not contiguous",
                    self.shape, self.strides
                ),
            });
        }
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(RuntimeError::Layout {
                what: "reshape".into(),
                detail: format!(
                    "shape {shape:?} has {numel} elements, the buffer {:?} has {}",
                    self.shape,
                    self.numel()
                ),
            });
        }
        Ok(DeviceBuffer {
            raw: self.raw.clone(),
            dtype: self.dtype,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
        })
    }

    /// A view with any shape and strides (in elements) that stay inside the allocation,
    /// e.g. a transposed or broadcast view. Kernels that need contiguous inputs reject such
    /// views at launch with [`RuntimeError::Strides`].
    pub fn with_strides(&self, shape: &[usize], strides: &[usize]) -> Result<Self> {
        if shape.len() != strides.len() {
            return Err(RuntimeError::Layout {
                what: "with_strides".into(),
                detail: format!(
                    "shape {shape:?} has rank {} but strides {strides:?} have rank {}",
                    shape.len(),
                    strides.len()
                ),
            });
        }
        let view = DeviceBuffer {
            raw: self.raw.clone(),
            dtype: self.dtype,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        };
        view.check_fits()?;
        Ok(view)
    }

    /// Number of elements from the first to one past the last addressed element (0 for an
    /// empty shape).
    pub fn span_elements(&self) -> Option<usize> {
        span_elements(&self.shape, &self.strides)
    }

    fn check_fits(&self) -> Result<()> {
        let what = || format!("buffer of shape {:?}", self.shape);
        let span = self.span_elements().ok_or_else(|| RuntimeError::Layout {
            what: what(),
            detail: "the element count overflows usize".into(),
        })?;
        let need =
            span.checked_mul(self.dtype.size_bytes())
                .ok_or_else(|| RuntimeError::Layout {
                    what: what(),
                    detail: "the byte size overflows usize".into(),
                })?;
        if need > self.raw.len_bytes() {
            return Err(RuntimeError::Layout {
                what: what(),
                detail: format!(
                    "strides {:?} address {need} bytes of {} but the allocation has {} bytes",
                    self.strides,
                    self.dtype,
                    self.raw.len_bytes()
                ),
            });
        }
        Ok(())
    }
}

/// Row-major strides (in elements) for `shape`.
///
/// ```
/// assert_eq!(linrec_runtime::contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
/// ```
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    strides
}

/// Whether `strides` are row-major for `shape`; size-1 dimensions may have any stride and an
/// empty tensor is contiguous.
pub(crate) fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expect = 1usize;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}

fn span_elements(shape: &[usize], strides: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    let mut last = 0usize;
    for (&d, &s) in shape.iter().zip(strides) {
        last = last.checked_add((d - 1).checked_mul(s)?)?;
    }
    last.checked_add(1)
}
