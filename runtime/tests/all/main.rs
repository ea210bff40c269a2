//! linrec-runtime's integration tests, in one binary (one link, one process start).
//!
//! - `kernels`: execution checks shared by the backends, on the fixture modules
//!   (tests/fixtures: kernels.spv and kernels.ptx, made from .mlir sources by regen.sh).
//! - `opencl`: those checks on an OpenCL device that takes SPIR-V — Intel's CPU runtime in CI.
//!   Without a runtime they skip with a note, except under `CI=true`, where they fail: CI
//!   must install it (`scripts/setup-opencl.sh`).
//! - `checks`: argument/shape/dtype/stride/device checks, on an in-memory mock backend so
//!   they run everywhere.
//! - `cuda`: the CUDA backend's "driver not found" path on machines without libcuda, and the
//!   shared checks on PTX where a GPU is present (never in CI, which has none).
//! - `hip`, `level_zero`: those backends without an AMD or Intel GPU — a missing library, a
//!   library override (`LINREC_HIP_LIB`, `LINREC_ZE_LIB`, set in a child process: `child`)
//!   pointing at a missing file or at a library that is not theirs, and a runtime that loads
//!   but finds no GPU — each an error with an actionable message; the shared checks where a
//!   GPU is present.
//! - `interop`: cudarc `CudaSlice`s as device buffers and back — signatures and the non-CUDA
//!   path everywhere, the round trips through a kernel where a GPU is present.
//! - `marshal`: how HIP's `kernelParams` and Level Zero's argument calls are packed.
//! - `mock_drivers`: both backends end to end, running every `kernels` check against stand-in
//!   driver libraries (tests/mock_drivers/*.c, compiled with the system C compiler).
//! - `select`: `DeviceKind::Auto` tries CUDA, HIP, Level Zero, OpenCL, and falls back to OpenCL.
//! - `op`: `op::forward`'s argument checks and output allocation, and which launches it makes
//!   (`then`, `narrower`, an `instead` route by size) with which buffers, on the mock backend.
//! - `backward`: `op::backward`'s — direction, `do`, `dht`, the gradients, chunk states and
//!   accumulators the runtime allocates, a missing `dht` passed as zeros, workspaces — on the
//!   mock backend behind a recorder of argument sizes.
//! - `provider`: the kernel provider (`kernels::Kernels`) with a counting fake compiler —
//!   artifact folders, embedded artifacts, misses and version/target mismatches, the disk
//!   cache (atomic writes, corrupt entries, unusable folders), one compile for 8 threads — and
//!   the embedded fixture kernel run on OpenCL against the f64 reference.
//! - `jit` (feature `jit`, links MLIR): the same provider with linrec-compiler in process.

mod backward;
mod checks;
mod child;
mod common;
mod cuda;
mod hip;
mod interop;
#[cfg(feature = "jit")]
mod jit;
mod kernels;
mod level_zero;
mod marshal;
mod mock;
mod mock_drivers;
mod op;
mod opencl;
mod provider;
mod select;
