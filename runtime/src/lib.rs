//! linrec's runtime: devices, typed device buffers, a module cache and kernel launch.
//!
//! Backends load their vendor library at run time, so this crate builds on any machine and
//! a missing driver is an error value ([`RuntimeError::DriverNotFound`]), never a panic or a
//! link failure:
//!
//! | backend | library | modules |
//! |---|---|---|
//! | [`CudaBackend`] | `libcuda.so.1` (cudarc, `dynamic-loading`) | PTX text or cubin |
//! | [`HipBackend`] | `libamdhip64.so` (own FFI; [`HIP_LIB_ENV`] overrides) | HSACO code objects |
//! | [`LevelZeroBackend`] | `libze_loader.so.1` (own FFI; [`ZE_LIB_ENV`] overrides) | SPIR-V (`zeModuleCreate`) |
//! | [`OpenClBackend`] | `libOpenCL.so.1` (opencl3, `dynamic`) | SPIR-V (`clCreateProgramWithIL`) |
//!
//! [`DeviceKind::Auto`] tries them in that order. CI runs the SPIR-V kernels through
//! [`OpenClBackend`] on Intel's CPU OpenCL runtime (`scripts/setup-opencl.sh`); no AMD or
//! Intel GPU is there, so HIP and Level Zero are tested on their failure paths, their argument
//! packing ([`marshal`]) and end to end against stand-in driver libraries
//! (runtime/tests/mock_drivers).
//!
//! Without its `jit` feature this crate does not depend on `linrec-compiler` and never links
//! LLVM: it loads modules from bytes. [`Kernels`] finds them — in memory, in artifact folders
//! written by `linrec compile` or embedded into the binary ([`embed`]), in the disk cache — and,
//! with `jit`, compiles what is missing in process and caches it on disk.
//!
//! The layers:
//! - [`Backend`]: one opened device of one vendor API, in bytes and opaque handles.
//! - [`Device`]: picks a backend ([`DeviceKind`]), allocates [`DeviceBuffer`]s that carry
//!   dtype, shape and strides, caches modules by a caller-chosen key, and checks launch
//!   arguments against a [`KernelSignature`] so that a wrong argument is an error naming it.
//! - [`Kernels`] ([`kernels`]): the kernel provider; [`op::forward`] and [`op::backward`]
//!   launch what it returns.
//! - [`interop`]: cudarc `CudaSlice`s as [`DeviceBuffer`]s (no copy) and back.
//!
//! ```no_run
//! use linrec_runtime::{Device, DeviceKind};
//! # fn main() -> linrec_runtime::Result<()> {
//! let dev = Device::new(DeviceKind::from_env()?)?;   // LINREC_DEVICE=auto|cuda|hip|level_zero|opencl
//! println!("running on {}", dev.info().label());
//! # Ok(()) }
//! ```

mod backend;
mod backend_common;
mod buffer;
mod cache;
mod cuda;
mod device;
mod dtype;
mod dylib;
pub mod embed;
mod error;
mod hip;
pub mod interop;
pub mod kernels;
mod level_zero;
pub mod marshal;
pub mod op;
mod opencl;
mod signature;

pub use backend::{
    Backend, BackendKind, DeviceId, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleFormat, ModuleHandle, RawBuffer, TensorMapSpec, TimerEvent,
};
pub use buffer::{DeviceBuffer, contiguous_strides};
pub use cache::ModuleCache;
pub use cuda::{CudaBackend, probe_driver as probe_cuda_driver};
pub use device::{Device, DeviceKind, TensorMapArg, enumerate_backend, poison_pattern};
pub use dtype::{DType, Element};
pub use embed::EmbeddedArtifacts;
pub use error::{Result, RuntimeError};
pub use hip::{HIP_LIB_ENV, HipBackend, probe_driver as probe_hip_driver};
pub use interop::CudaElement;
pub use kernels::{Kernel, KernelRequest, KernelSource, Kernels};
pub use level_zero::{LevelZeroBackend, ZE_LIB_ENV, probe_driver as probe_level_zero_driver};
pub use opencl::OpenClBackend;
pub use signature::{Bindings, Dim, KernelArg, KernelSignature, Layout, ParamSpec, ScalarType};

/// The cudarc this crate links ([`interop`] takes its `CudaSlice`s): use it to get the same
/// version.
pub use cudarc;
/// The half-precision types of [`interop`]'s `CudaSlice<half::bf16>` and `<half::f16>`.
pub use half;
