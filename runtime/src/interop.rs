//! Interop with [cudarc]: use memory a `CudaSlice<T>` holds as a [`DeviceBuffer`] (no copy),
//! and copy a [`DeviceBuffer`] into a new `CudaSlice<T>`.
//!
//! A program that already works with cudarc (its own kernels, cuBLAS, data loaders) hands its
//! tensors to linrec without a round trip through the host:
//!
//! | call | copies | safety |
//! |---|---|---|
//! | [`Device::from_cuda_slice`] | no: linrec takes the slice over and frees it with the last view | safe |
//! | [`Device::view_cuda_slice`] | no: linrec borrows the memory | `unsafe`: the slice must outlive every view |
//! | [`Device::to_cuda_slice`] | yes, on the device, into a slice on the caller's stream | safe |
//! | [`Device::cuda_stream`] | — | the stream linrec enqueues on, to put other work in order with it |
//!
//! Streams: linrec enqueues all its work on its own stream ([`Device::cuda_stream`]). Wrapping
//! a slice makes that stream wait for the work already enqueued on the slice's stream;
//! dropping the last view makes the slice's stream wait for linrec's work, and
//! [`Device::to_cuda_slice`] orders its copy after linrec's work and linrec's later work after
//! the copy. Work the owner enqueues on *other* streams is the owner's to order, as everywhere
//! in CUDA.
//!
//! The slice and the device must share a CUDA context: cudarc's [`CudaContext::new`] and
//! linrec's [`crate::DeviceKind::Cuda`] both use the device's primary context, so a slice made
//! with `CudaContext::new(ordinal)` fits the device opened with the same ordinal. Anything
//! else (another device, a non-primary context, a non-CUDA device) is an error, never a
//! pointer handed to the wrong driver.
//!
//! ```no_run
//! use linrec_runtime::{Device, DeviceKind};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::new(DeviceKind::Cuda)?;
//! let stream = cudarc::driver::CudaContext::new(0)?.default_stream();
//! let q = stream.clone_htod(&vec![half::bf16::ONE; 2 * 64 * 4 * 128])?;
//! let q = device.from_cuda_slice(q, &[2, 64, 4, 128])?;   // no copy; a [B, T, H, K] bf16 tensor
//! // ... run a kernel that writes `o` ...
//! # let o = q.clone();
//! let o: cudarc::driver::CudaSlice<half::bf16> = device.to_cuda_slice(&o, &stream)?;
//! # Ok(()) }
//! ```
//!
//! [`CudaContext::new`]: cudarc::driver::CudaContext::new

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, result};

use crate::buffer::DeviceBuffer;
use crate::cuda::{CudaBackend, Foreign};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Result, RuntimeError};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type of a `CudaSlice` that is a linrec [`DType`]: `half::bf16`, `half::f16`,
/// `f32`, `i32`, `i64`. Sealed: the dtype must describe the bytes exactly.
pub trait CudaElement: DeviceRepr + sealed::Sealed + Send + Sync + 'static {
    /// The dtype of a buffer of these elements.
    const DTYPE: DType;
}

impl CudaElement for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl CudaElement for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl CudaElement for f32 {
    const DTYPE: DType = DType::F32;
}
impl CudaElement for i32 {
    const DTYPE: DType = DType::I32;
}
impl CudaElement for i64 {
    const DTYPE: DType = DType::I64;
}

impl Device {
    /// The CUDA stream this device enqueues all its work on; `None` on other backends.
    ///
    /// Enqueue work that produces linrec's inputs or consumes its outputs on this stream and
    /// no other synchronisation is needed.
    pub fn cuda_stream(&self) -> Option<Arc<CudaStream>> {
        self.cuda_backend().map(|b| Arc::clone(b.stream()))
    }

    /// Takes `slice` over as a contiguous buffer of `shape` (its element count must be the
    /// slice's length), without copying. The memory is freed, on the slice's stream, when the
    /// last view of the buffer is dropped — after linrec's work on it.
    ///
    /// Errors: a device that is not CUDA, a slice of another CUDA context, a shape of another
    /// element count.
    pub fn from_cuda_slice<T: CudaElement>(
        &self,
        slice: CudaSlice<T>,
        shape: &[usize],
    ) -> Result<DeviceBuffer> {
        let cuda = self.cuda_for_slice(slice.stream())?;
        check_len(slice.len(), T::DTYPE, shape)?;
        let (ptr, theirs) = wrap(cuda, &slice)?;
        let bytes = slice.num_bytes();
        let raw = cuda.foreign_buffer(
            bytes,
            Foreign {
                ptr,
                ours: Arc::clone(cuda.stream()),
                theirs,
                owned: Some(Box::new(slice)),
            },
        );
        DeviceBuffer::contiguous(raw, T::DTYPE, shape)
    }

    /// A contiguous buffer of `shape` over the memory of `slice`, without copying and without
    /// taking it over (see [`Device::from_cuda_slice`] for the safe way).
    ///
    /// # Safety
    ///
    /// `slice` must stay alive — not dropped, not moved into something that frees it — until
    /// the returned buffer, **every clone of it** and every value holding one are dropped.
    /// That includes the saved-for-backward context of an op that read it (`linrec::ops`'s
    /// `Saved` keeps its inputs). Until then, writes to the slice on its own stream are ordered
    /// before linrec's later work only if they were enqueued before this call; enqueue later
    /// writes on [`Device::cuda_stream`] or synchronise.
    ///
    /// Errors: as [`Device::from_cuda_slice`].
    pub unsafe fn view_cuda_slice<T: CudaElement>(
        &self,
        slice: &CudaSlice<T>,
        shape: &[usize],
    ) -> Result<DeviceBuffer> {
        let cuda = self.cuda_for_slice(slice.stream())?;
        check_len(slice.len(), T::DTYPE, shape)?;
        let (ptr, theirs) = wrap(cuda, slice)?;
        let raw = cuda.foreign_buffer(
            slice.num_bytes(),
            Foreign {
                ptr,
                ours: Arc::clone(cuda.stream()),
                theirs,
                owned: None,
            },
        );
        DeviceBuffer::contiguous(raw, T::DTYPE, shape)
    }

    /// Copies `buffer` (contiguous, dtype `T::DTYPE`) into a new `CudaSlice<T>` allocated on
    /// `stream`. The copy runs on `stream` after the work linrec has enqueued, and linrec's
    /// later work (e.g. reusing or freeing `buffer`) waits for it; the call does not block.
    ///
    /// Errors: a device that is not CUDA, a stream of another context, a buffer of another
    /// device or dtype, a strided view.
    pub fn to_cuda_slice<T: CudaElement>(
        &self,
        buffer: &DeviceBuffer,
        stream: &Arc<CudaStream>,
    ) -> Result<CudaSlice<T>> {
        let cuda = self.cuda_for_slice(stream)?;
        if buffer.dtype() != T::DTYPE {
            return Err(RuntimeError::DType {
                arg: "to_cuda_slice source (the slice's element type)".into(),
                expected: buffer.dtype(),
                found: T::DTYPE,
            });
        }
        if !buffer.is_contiguous() {
            return Err(RuntimeError::Strides {
                arg: "to_cuda_slice source".into(),
                expected: crate::buffer::contiguous_strides(buffer.shape()),
                layout: "contiguous, row-major",
                found: buffer.strides().to_vec(),
            });
        }
        let src = cuda.raw_ptr(buffer.raw(), "to_cuda_slice source")?;
        let n = buffer.numel();
        let err = CudaBackend::driver_error;
        let mut dst = if n == 0 {
            stream.null::<T>().map_err(|e| err("cuMemAllocAsync", e))?
        } else {
            // SAFETY: uninitialised memory of a plain element type, overwritten by the copy
            // below before anyone can read it (the slice is returned only after it is
            // enqueued, and reads on `stream` are ordered after it).
            unsafe { stream.alloc::<T>(n) }.map_err(|e| err("cuMemAllocAsync", e))?
        };
        if n > 0 {
            let ours = cuda.stream();
            let same = ours.cu_stream() == stream.cu_stream();
            if !same {
                // The copy reads what linrec's kernels wrote.
                stream.join(ours).map_err(|e| err("cuStreamWaitEvent", e))?;
            }
            {
                // The guard records the slice's write event (when its context tracks events)
                // once the copy is enqueued.
                let (dst_ptr, _record) = dst.device_ptr_mut(stream);
                // SAFETY: both ranges hold `n` elements of `T` (the buffer's size was checked
                // when it was made; `dst` was allocated with `n`), in the same context, and
                // the copy is ordered on `stream` after linrec's writes.
                unsafe {
                    result::memcpy_dtod_async(
                        dst_ptr,
                        src,
                        n * T::DTYPE.size_bytes(),
                        stream.cu_stream(),
                    )
                }
                .map_err(|e| err("cuMemcpyDtoDAsync", e))?;
            }
            if !same {
                // linrec must not free or overwrite the source before the copy has read it.
                ours.join(stream).map_err(|e| err("cuStreamWaitEvent", e))?;
            }
        }
        Ok(dst)
    }

    fn cuda_backend(&self) -> Option<&CudaBackend> {
        self.backend()
            .as_any()
            .and_then(|a| a.downcast_ref::<CudaBackend>())
    }

    /// The CUDA backend, if `stream` belongs to its context.
    fn cuda_for_slice(&self, stream: &Arc<CudaStream>) -> Result<&CudaBackend> {
        let theirs = stream.context();
        let found = || {
            format!(
                "CUDA device {} (a cudarc context or stream)",
                theirs.ordinal()
            )
        };
        let Some(cuda) = self.cuda_backend() else {
            return Err(RuntimeError::WrongDevice {
                what: "a cudarc slice or stream".into(),
                expected: format!("{} (not a CUDA device)", self.info().label()),
                found: found(),
            });
        };
        // Compares the driver's context handles: the primary context retained twice is the
        // same handle.
        if theirs.cu_ctx() != cuda.context().cu_ctx() {
            return Err(RuntimeError::WrongDevice {
                what: "a cudarc slice or stream".into(),
                expected: format!("{} (its primary context)", self.info().label()),
                found: format!("{}, another context", found()),
            });
        }
        Ok(cuda)
    }
}

/// The slice's element count must be the shape's.
fn check_len(len: usize, dtype: DType, shape: &[usize]) -> Result<()> {
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| RuntimeError::Layout {
            what: format!("{dtype} buffer of shape {shape:?}"),
            detail: "the element count overflows usize".into(),
        })?;
    if numel != len {
        return Err(RuntimeError::Shape {
            arg: "cudarc slice".into(),
            expected: format!("a shape of {len} elements (the slice's length)"),
            found: shape.to_vec(),
        });
    }
    Ok(())
}

/// The slice's pointer, with linrec's stream made to wait for the work enqueued on the slice
/// so far; and the slice's stream.
fn wrap<T>(cuda: &CudaBackend, slice: &CudaSlice<T>) -> Result<(u64, Arc<CudaStream>)> {
    let ours = cuda.stream();
    let theirs = Arc::clone(slice.stream());
    // With event tracking on in the slice's context, this also makes `ours` wait for the
    // slice's last write, wherever it was enqueued.
    let (ptr, _record) = slice.device_ptr(ours);
    if ours.cu_stream() != theirs.cu_stream() {
        ours.join(&theirs)
            .map_err(|e| CudaBackend::driver_error("cuStreamWaitEvent", e))?;
    }
    Ok((ptr, theirs))
}
