//! The [`Backend`] trait every vendor implements, and the types that cross it.
//!
//! A backend value is one *opened* device (a CUDA context + stream, a HIP device, a Level Zero
//! context + command list, an OpenCL context + queue).
//! It works in bytes and opaque handles; dtype, shape and argument checks live one level up
//! in [`crate::Device`], so each backend stays a thin layer over its driver.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dtype::DType;
use crate::error::{Result, RuntimeError};

/// The vendor APIs linrec can launch through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// NVIDIA, through the CUDA driver API (cudarc, libcuda loaded at run time); loads PTX.
    Cuda,
    /// AMD, through the HIP runtime's module API (libamdhip64 loaded at run time); loads
    /// HSACO code objects.
    Hip,
    /// Intel GPUs, through Level Zero (libze_loader loaded at run time); loads SPIR-V, the
    /// same modules as OpenCL.
    LevelZero,
    /// Any OpenCL 2.1+ device that takes SPIR-V (`clCreateProgramWithIL`): Intel GPUs, and
    /// Intel's CPU runtime, on which CI runs the SPIR-V kernels.
    OpenCl,
}

impl BackendKind {
    /// Lower-case name (`cuda`, `hip`, `level_zero`, `opencl`).
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Cuda => "cuda",
            BackendKind::Hip => "hip",
            BackendKind::LevelZero => "level_zero",
            BackendKind::OpenCl => "opencl",
        }
    }

    /// The module format the backend loads.
    pub const fn module_format(self) -> ModuleFormat {
        match self {
            BackendKind::Cuda => ModuleFormat::Ptx,
            BackendKind::Hip => ModuleFormat::Hsaco,
            BackendKind::LevelZero | BackendKind::OpenCl => ModuleFormat::SpirV,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`Backend::load_module`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleFormat {
    /// PTX text (a cubin ELF image is accepted too).
    Ptx,
    /// A SPIR-V binary module (Kernel capability, OpenCL memory model).
    SpirV,
    /// An AMD GPU code object (HSACO: an ELF for `EM_AMDGPU`, built for the device's gfx
    /// architecture), or a clang offload bundle of them.
    Hsaco,
}

impl fmt::Display for ModuleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleFormat::Ptx => "PTX",
            ModuleFormat::SpirV => "SPIR-V",
            ModuleFormat::Hsaco => "HSACO",
        })
    }
}

/// Process-unique identity of an opened device; buffers, modules and kernels carry it so a
/// launch can refuse handles from another device before the driver sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceId(u64);

impl DeviceId {
    /// A fresh id; backends call this once when they open a device.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        DeviceId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What a backend tells about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The backend.
    pub backend: BackendKind,
    /// Index in the backend's list of usable devices.
    pub ordinal: usize,
    /// Device name (`NVIDIA H100 80GB HBM3`, `Intel(R) Xeon(R) ...`).
    pub name: String,
    /// Vendor or OpenCL platform name.
    pub vendor: String,
    /// Driver version as the driver reports it.
    pub driver_version: String,
    /// Global memory in bytes.
    pub total_memory: u64,
    /// Largest block (work-group) size in threads.
    pub max_threads_per_block: usize,
    /// Shared (local) memory a block may use, in bytes.
    pub max_shared_memory_per_block: usize,
    /// CUDA compute capability (major, minor); `None` elsewhere.
    pub compute_capability: Option<(u32, u32)>,
    /// The GPU architecture as the driver names it, for picking a code object: on HIP the
    /// `gcnArchName` (`gfx90a:sramecc+:xnack-`: the processor, then its target features),
    /// when the HIP release is one whose device-properties layout is known (see hip.rs);
    /// `None` elsewhere (CUDA has [`DeviceInfo::compute_capability`]; SPIR-V is portable).
    pub arch: Option<String>,
    /// IL versions the device takes: OpenCL's list (`SPIR-V_1.0 ... SPIR-V_1.4`), or Level
    /// Zero's highest (`SPIR-V_1.2`); `None` elsewhere.
    pub il_version: Option<String>,
    /// Whether this is a CPU device (Intel's CPU OpenCL runtime): fine for correctness,
    /// meaningless for timings.
    pub is_cpu: bool,
}

impl DeviceInfo {
    /// The format of modules this device loads.
    pub fn module_format(&self) -> ModuleFormat {
        self.backend.module_format()
    }

    /// Short label used in messages: `opencl:0 (Intel(R) OpenCL / AMD EPYC)`.
    pub fn label(&self) -> String {
        if self.vendor.is_empty() {
            format!("{}:{} ({})", self.backend, self.ordinal, self.name)
        } else {
            format!(
                "{}:{} ({} / {})",
                self.backend, self.ordinal, self.vendor, self.name
            )
        }
    }
}

/// Grid and block sizes (CUDA terms) and dynamic shared memory of a launch.
///
/// HIP takes them as CUDA does. OpenCL gets global size = grid × block and local size = block;
/// Level Zero gets group count = grid and group size = block. On OpenCL and Level Zero,
/// `shared_mem_bytes > 0` adds one trailing `__local` pointer argument of that size (the way
/// SPIR-V from MLIR's LLVM-dialect route takes workgroup memory); kernels from the SPIR-V
/// dialect route declare workgroup memory statically and must launch with 0.
///
/// ```
/// use linrec_runtime::LaunchConfig;
/// let cfg = LaunchConfig::linear(1000, 64);
/// assert_eq!(cfg.grid, [16, 1, 1]);
/// assert_eq!(cfg.block, [64, 1, 1]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks per grid in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub shared_mem_bytes: u32,
}

impl LaunchConfig {
    /// One-dimensional launch with enough blocks of `block` threads to cover `n` threads.
    pub fn linear(n: u32, block: u32) -> Self {
        let block = block.max(1);
        LaunchConfig {
            grid: [n.div_ceil(block), 1, 1],
            block: [block, 1, 1],
            shared_mem_bytes: 0,
        }
    }

    /// Total threads per block.
    pub fn threads_per_block(&self) -> u64 {
        self.block.iter().map(|&b| u64::from(b)).product()
    }

    /// Whether the grid is empty (some dimension is 0): such a launch does nothing, which
    /// is how an empty sequence (T = 0) goes through without a special case in the caller.
    pub fn is_empty(&self) -> bool {
        self.grid.contains(&0)
    }
}

/// A kernel argument as a backend sees it: a buffer pointer or a scalar by value.
#[derive(Debug, Clone, Copy)]
pub enum LaunchArg<'a> {
    /// A device buffer, passed as a bare pointer (`cl_mem` on OpenCL).
    Buffer(&'a RawBuffer),
    /// `i32` scalar.
    I32(i32),
    /// `u32` scalar.
    U32(u32),
    /// `i64` scalar.
    I64(i64),
    /// `f32` scalar.
    F32(f32),
}

impl LaunchArg<'_> {
    /// Short description for messages (`buffer`, `i32`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            LaunchArg::Buffer(_) => "buffer",
            LaunchArg::I32(_) => "i32",
            LaunchArg::U32(_) => "u32",
            LaunchArg::I64(_) => "i64",
            LaunchArg::F32(_) => "f32",
        }
    }
}

/// A repeating pattern for [`Backend::fill`]; the buffer's byte length must be a multiple of
/// the pattern's size. Fills run on the device (`clEnqueueFillBuffer`, `cuMemsetD*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillPattern {
    /// One byte repeated.
    U8(u8),
    /// Two bytes repeated (little-endian), e.g. an f16/bf16 NaN.
    U16(u16),
    /// Four bytes repeated (little-endian), e.g. an f32 NaN.
    U32(u32),
}

impl FillPattern {
    /// Size of one repetition in bytes.
    pub const fn size_bytes(self) -> usize {
        match self {
            FillPattern::U8(_) => 1,
            FillPattern::U16(_) => 2,
            FillPattern::U32(_) => 4,
        }
    }
}

/// Device memory owned by a backend; freed when dropped.
///
/// The payload is the backend's own type (an OpenCL buffer, a `CudaSlice<u8>`), reached with
/// [`RawBuffer::downcast`].
pub struct RawBuffer {
    device: DeviceId,
    bytes: usize,
    inner: Box<dyn Any + Send + Sync>,
}

impl RawBuffer {
    /// Wraps a backend allocation of `bytes` bytes on `device`.
    pub fn new(device: DeviceId, bytes: usize, inner: Box<dyn Any + Send + Sync>) -> Self {
        RawBuffer {
            device,
            bytes,
            inner,
        }
    }

    /// Usable size in bytes (what was asked for; the allocation may be larger).
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// The device that owns the memory.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// The backend payload, if it has type `T`.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref::<T>()
    }
}

impl fmt::Debug for RawBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawBuffer")
            .field("device", &self.device)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// A loaded module (CUDA module, OpenCL program). Cheap to clone; unloaded when the last
/// clone and every kernel taken from it are dropped.
#[derive(Clone)]
pub struct ModuleHandle {
    device: DeviceId,
    inner: Arc<dyn Any + Send + Sync>,
}

impl ModuleHandle {
    /// Wraps a backend module.
    pub fn new(device: DeviceId, inner: Arc<dyn Any + Send + Sync>) -> Self {
        ModuleHandle { device, inner }
    }

    /// The device the module was loaded on.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// The backend payload, if it has type `T`.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref::<T>()
    }
}

impl fmt::Debug for ModuleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleHandle")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A kernel entry point of a loaded module. Cheap to clone.
#[derive(Clone)]
pub struct KernelHandle {
    device: DeviceId,
    name: Arc<str>,
    inner: Arc<dyn Any + Send + Sync>,
}

impl KernelHandle {
    /// Wraps a backend kernel.
    pub fn new(device: DeviceId, name: &str, inner: Arc<dyn Any + Send + Sync>) -> Self {
        KernelHandle {
            device,
            name: name.into(),
            inner,
        }
    }

    /// The kernel's name in the module.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device the kernel was loaded on.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// The backend payload, if it has type `T`.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref::<T>()
    }
}

impl fmt::Debug for KernelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelHandle")
            .field("device", &self.device)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One opened device of one vendor API.
///
/// Calls are synchronous with respect to host memory: `upload` may return before the copy
/// lands on the device but the host slice is free to reuse, and `download` returns with the
/// data in `out`. Launches are asynchronous; `synchronize` waits for them. Every call returns
/// an error value on failure, never panics.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which vendor API.
    fn kind(&self) -> BackendKind;

    /// Lower-case backend name (`cuda`, `hip`, `level_zero`, `opencl`).
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The backend as `Any`, for vendor interop that needs the concrete type (the CUDA
    /// backend's context and stream for cudarc slices, `crate::interop`). `None` by default:
    /// a backend without interop need not say what it is.
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }

    /// This device's identity (stamped on every handle it creates).
    fn device_id(&self) -> DeviceId;

    /// Facts about the opened device.
    fn info(&self) -> &DeviceInfo;

    /// Every usable device this backend's driver sees (the opened one among them).
    fn devices(&self) -> Result<Vec<DeviceInfo>>;

    /// Allocates `bytes` bytes of device memory; 0 is allowed (empty tensors are legal).
    /// The contents are unspecified: poison them with [`Backend::fill`] in tests.
    fn allocate(&self, bytes: usize) -> Result<RawBuffer>;

    /// Copies `data` to the start of `dst` (`data.len() <= dst.len_bytes()`).
    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> Result<()>;

    /// Copies the first `out.len()` bytes of `src` into `out`, waiting for pending work.
    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> Result<()>;

    /// Fills all of `dst` with `pattern` on the device.
    fn fill(&self, dst: &RawBuffer, pattern: FillPattern) -> Result<()>;

    /// Loads a module: PTX text (or cubin) on CUDA, a code object (HSACO) on HIP, a SPIR-V
    /// binary on Level Zero and OpenCL.
    fn load_module(&self, image: &[u8]) -> Result<ModuleHandle>;

    /// Looks up a kernel entry point in a loaded module.
    fn kernel(&self, module: &ModuleHandle, name: &str) -> Result<KernelHandle>;

    /// Enqueues a kernel. Arguments are passed in order: buffers as bare device pointers,
    /// scalars by value.
    fn launch(
        &self,
        kernel: &KernelHandle,
        config: &LaunchConfig,
        args: &[LaunchArg<'_>],
    ) -> Result<()>;

    /// Waits until all enqueued work on this device has finished.
    fn synchronize(&self) -> Result<()>;

    /// Enqueues a timing event on this device's queue (CUDA: a `CUevent` with timing). `None`
    /// when the backend has no device-side timer; callers then time with the wall clock around
    /// [`Backend::synchronize`] (what `linrec bench` does on OpenCL, labelled as such).
    fn record_timer(&self) -> Result<Option<TimerEvent>> {
        Ok(None)
    }

    /// Milliseconds of device time between two events of [`Backend::record_timer`], waiting
    /// for both to complete.
    fn timer_elapsed_ms(&self, start: &TimerEvent, end: &TimerEvent) -> Result<f64> {
        let _ = (start, end);
        Err(RuntimeError::Driver {
            backend: self.kind(),
            call: "timer_elapsed_ms",
            detail: "this backend has no device timer".into(),
        })
    }

    /// The device address of a buffer of this backend, where the API has one (CUDA).
    fn device_address(&self, raw: &RawBuffer) -> Option<u64> {
        let _ = raw;
        None
    }

    /// Encodes a Tensor Memory Accelerator map (`CUtensorMap`, 128 bytes) of the tensor at
    /// device address `address` ([`TensorMapSpec`]). CUDA only (sm_90 and newer).
    fn encode_tensor_map(&self, address: u64, spec: &TensorMapSpec) -> Result<[u8; 128]> {
        let _ = (address, spec);
        Err(RuntimeError::Driver {
            backend: self.kind(),
            call: "encode_tensor_map",
            detail: "TMA tensor maps exist on CUDA only (sm_90a kernels)".into(),
        })
    }

    /// Enqueues a device-to-device copy of the first `bytes` bytes of `src` into `dst`.
    /// `Ok(false)` when the backend does not implement it (the caller measures bandwidth
    /// another way).
    fn copy(&self, dst: &RawBuffer, src: &RawBuffer, bytes: usize) -> Result<bool> {
        let _ = (dst, src, bytes);
        Ok(false)
    }
}

/// The geometry of a Tensor Memory Accelerator map ([`Backend::encode_tensor_map`]): a
/// tiled map of a 16-bit tensor with 128-byte swizzle, zeros out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorMapSpec {
    /// [`DType::BF16`] or [`DType::F16`].
    pub dtype: DType,
    /// Elements along each dimension, innermost (contiguous) first.
    pub dims: [u64; 3],
    /// Bytes from one index of dimension 1 (then 2) to the next (multiples of 16).
    pub strides: [u64; 2],
    /// The box one copy moves, innermost first (its first dimension at most 128 bytes).
    pub boxes: [u32; 3],
}

/// A recorded device timing event (backend-specific), see [`Backend::record_timer`].
pub struct TimerEvent {
    device: DeviceId,
    inner: Box<dyn Any + Send + Sync>,
}

impl TimerEvent {
    /// Wraps a backend's event.
    pub fn new(device: DeviceId, inner: Box<dyn Any + Send + Sync>) -> Self {
        TimerEvent { device, inner }
    }

    /// The device that recorded it.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// The backend's event.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }
}

impl fmt::Debug for TimerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerEvent")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Rejects handles from another device, before they reach a driver that would crash on them.
pub(crate) fn check_same_device(
    backend: &dyn Backend,
    what: impl FnOnce() -> String,
    found: DeviceId,
) -> Result<()> {
    if found == backend.device_id() {
        Ok(())
    } else {
        Err(RuntimeError::WrongDevice {
            what: what(),
            expected: backend.info().label(),
            found: format!("#{}", found.0),
        })
    }
}

/// Checks a fill request against the buffer size (shared by every backend).
pub(crate) fn check_fill(buffer: &RawBuffer, pattern: FillPattern) -> Result<()> {
    if buffer.len_bytes() % pattern.size_bytes() != 0 {
        return Err(RuntimeError::Layout {
            what: "fill".into(),
            detail: format!(
                "buffer of {} bytes is not a whole number of {}-byte patterns",
                buffer.len_bytes(),
                pattern.size_bytes()
            ),
        });
    }
    Ok(())
}

/// The SPIR-V magic number as the first word of a little-endian module.
const SPIRV_MAGIC: u32 = 0x0723_0203;

/// Checks that `image` looks like a little-endian SPIR-V module before a driver parses it
/// (shared by the OpenCL and Level Zero backends, which load the same bytes).
pub(crate) fn check_spirv(image: &[u8]) -> Result<()> {
    let magic = image
        .get(..4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    if magic != Some(SPIRV_MAGIC) {
        let detail = if magic == Some(SPIRV_MAGIC.swap_bytes()) {
            "big-endian SPIR-V; the devices we target are little-endian".to_owned()
        } else {
            format!(
                "{} bytes that do not start with the SPIR-V magic number 0x07230203",
                image.len()
            )
        };
        return Err(RuntimeError::InvalidModule {
            expected: ModuleFormat::SpirV,
            detail,
        });
    }
    if image.len() % 4 != 0 {
        return Err(RuntimeError::InvalidModule {
            expected: ModuleFormat::SpirV,
            detail: format!("{} bytes is not a whole number of words", image.len()),
        });
    }
    Ok(())
}

/// Checks a copy size against the buffer size (shared by every backend).
pub(crate) fn check_copy(what: &str, buffer: &RawBuffer, host_len: usize) -> Result<()> {
    if host_len > buffer.len_bytes() {
        return Err(RuntimeError::Layout {
            what: what.into(),
            detail: format!(
                "{host_len} host bytes do not fit a device buffer of {} bytes",
                buffer.len_bytes()
            ),
        });
    }
    Ok(())
}
