//! [`Device`]: one opened device of some backend, with typed buffers, checked launches and
//! the module cache.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::backend::{
    Backend, BackendKind, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleFormat, ModuleHandle, TensorMapSpec,
};
use crate::buffer::DeviceBuffer;
use crate::cache::ModuleCache;
use crate::cuda::CudaBackend;
use crate::dtype::{DType, Element};
use crate::error::{Result, RuntimeError};
use crate::hip::HipBackend;
use crate::level_zero::LevelZeroBackend;
use crate::opencl::OpenClBackend;
use crate::signature::{Bindings, KernelArg, KernelSignature};

/// Which backend a [`Device`] should use.
///
/// ```
/// use linrec_runtime::DeviceKind;
/// assert_eq!("opencl".parse::<DeviceKind>().unwrap(), DeviceKind::OpenCl);
/// assert_eq!("l0".parse::<DeviceKind>().unwrap(), DeviceKind::LevelZero);
/// assert_eq!(DeviceKind::Auto.candidates().len(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceKind {
    /// The first backend with a usable device, in the order CUDA, HIP, Level Zero, OpenCL
    /// (DESIGN §7): each vendor's native API before the portable one, so an Intel GPU runs
    /// through Level Zero and OpenCL is left for Intel's CPU runtime and other devices.
    #[default]
    Auto,
    /// NVIDIA through the CUDA driver API.
    Cuda,
    /// AMD through HIP.
    Hip,
    /// Intel GPUs through Level Zero.
    LevelZero,
    /// An OpenCL device that takes SPIR-V.
    OpenCl,
}

impl DeviceKind {
    /// The environment variable [`DeviceKind::from_env`] reads.
    pub const ENV_VAR: &'static str = "LINREC_DEVICE";

    /// The kind named by `LINREC_DEVICE` (`auto`, `cuda`, `hip`, `level_zero` or `l0`,
    /// `opencl`); `Auto` when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV_VAR) {
            Ok(v) if !v.trim().is_empty() => v.trim().parse(),
            _ => Ok(DeviceKind::Auto),
        }
    }

    /// The backends this kind tries, in order.
    pub fn candidates(self) -> &'static [BackendKind] {
        match self {
            DeviceKind::Auto => &[
                BackendKind::Cuda,
                BackendKind::Hip,
                BackendKind::LevelZero,
                BackendKind::OpenCl,
            ],
            DeviceKind::Cuda => &[BackendKind::Cuda],
            DeviceKind::Hip => &[BackendKind::Hip],
            DeviceKind::LevelZero => &[BackendKind::LevelZero],
            DeviceKind::OpenCl => &[BackendKind::OpenCl],
        }
    }
}

impl FromStr for DeviceKind {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceKind::Auto),
            "cuda" | "nvidia" => Ok(DeviceKind::Cuda),
            "hip" | "rocm" | "amd" => Ok(DeviceKind::Hip),
            "level_zero" | "level-zero" | "levelzero" | "l0" | "ze" => Ok(DeviceKind::LevelZero),
            "opencl" | "ocl" => Ok(DeviceKind::OpenCl),
            _ => Err(RuntimeError::Parse {
                what: "device kind",
                value: s.to_owned(),
                expected: "auto, cuda, hip, level_zero (or l0) or opencl",
            }),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Auto => "auto",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Hip => "hip",
            DeviceKind::LevelZero => "level_zero",
            DeviceKind::OpenCl => "opencl",
        })
    }
}

/// Lists the usable devices of one backend.
pub fn enumerate_backend(backend: BackendKind) -> Result<Vec<DeviceInfo>> {
    match backend {
        BackendKind::Cuda => CudaBackend::enumerate(),
        BackendKind::Hip => HipBackend::enumerate(),
        BackendKind::LevelZero => LevelZeroBackend::enumerate(),
        BackendKind::OpenCl => OpenClBackend::enumerate(),
    }
}

fn open_backend(backend: BackendKind, ordinal: usize) -> Result<Box<dyn Backend>> {
    Ok(match backend {
        BackendKind::Cuda => Box::new(CudaBackend::open(ordinal)?),
        BackendKind::Hip => Box::new(HipBackend::open(ordinal)?),
        BackendKind::LevelZero => Box::new(LevelZeroBackend::open(ordinal)?),
        BackendKind::OpenCl => Box::new(OpenClBackend::open(ordinal)?),
    })
}

/// The bytes that mark never-written memory: NaN for float types, so a kernel that skips an
/// output element shows up as NaN in a comparison; `0xA5` bytes for integers.
pub fn poison_pattern(dtype: DType) -> FillPattern {
    match dtype {
        DType::F32 => FillPattern::U32(0x7FC0_0000),
        DType::F16 => FillPattern::U16(0x7E00),
        DType::BF16 => FillPattern::U16(0x7FC0),
        DType::I32 | DType::I64 => FillPattern::U8(0xA5),
    }
}

struct Inner {
    backend: Box<dyn Backend>,
    modules: ModuleCache,
    /// Encoded TMA maps in device memory, by (tensor address, geometry): a map depends on
    /// nothing else, so a relaunch over the same tensors reuses it.
    tensor_maps: Mutex<HashMap<(u64, TensorMapSpec), DeviceBuffer>>,
}

/// Tensor maps kept per device before the cache starts over (each holds 128 bytes of device
/// memory).
const TENSOR_MAPS_KEPT: usize = 1024;

/// A TMA map for one launch ([`Device::tensor_map`]): the map, and the aligned copy of the
/// tensor it maps when the tensor itself was not 16-byte aligned (kept until the launch is
/// enqueued; the copy and the kernel run in stream order).
#[derive(Debug)]
pub struct TensorMapArg {
    /// `CUtensorMap` as 16 i64 words in device memory.
    pub map: DeviceBuffer,
    /// The tensor's aligned copy, if one was made.
    pub copy: Option<DeviceBuffer>,
}

/// An opened device: allocate typed buffers, load modules (cached), launch kernels.
///
/// Cheap to clone (clones share the device and its module cache).
///
/// ```no_run
/// use linrec_runtime::{Device, DeviceKind, KernelSignature, LaunchConfig, DType, ScalarType};
/// # fn main() -> linrec_runtime::Result<()> {
/// let dev = Device::new(DeviceKind::Auto)?;            // CUDA, HIP, Level Zero, else OpenCL
/// let x = dev.upload(&[1.0f32, 2.0, 3.0], &[3])?;
/// let y = dev.upload(&[10.0f32, 20.0, 30.0], &[3])?;
/// let out = dev.alloc_poisoned(DType::F32, &[3])?;     // NaN until written
/// let spirv: &[u8] = &[/* from linrec-compiler or an artifact */];
/// let module = dev.module("axpy-v1", || Ok(spirv.to_vec()))?;
/// let axpy = dev.kernel(&module, "axpy")?;
/// let sig = KernelSignature::new("axpy")
///     .scalar("alpha", ScalarType::F32)
///     .buffer("x", DType::F32, ["N"])
///     .buffer("y", DType::F32, ["N"])
///     .buffer("out", DType::F32, ["N"])
///     .scalar("n", ScalarType::I32);
/// dev.launch_checked(&axpy, &sig, &LaunchConfig::linear(3, 64),
///     &[2.0f32.into(), (&x).into(), (&y).into(), (&out).into(), 3i32.into()])?;
/// assert_eq!(dev.download::<f32>(&out)?, vec![12.0, 24.0, 36.0]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("device", &self.info().label())
            .field("cached_modules", &self.inner.modules.len())
            .finish()
    }
}

impl Device {
    /// Opens the first device of `kind` (for `Auto`: the first backend that has one).
    pub fn new(kind: DeviceKind) -> Result<Self> {
        Self::open(kind, 0)
    }

    /// Opens device `ordinal` of `kind`.
    ///
    /// `Auto` goes on to the next backend only when one has no driver or no device
    /// ([`RuntimeError::DriverNotFound`], [`RuntimeError::NoDevice`]); a GPU that is present
    /// but fails to open is reported, not silently replaced by a CPU runtime. When no backend
    /// has a device the error lists why for each one.
    pub fn open(kind: DeviceKind, ordinal: usize) -> Result<Self> {
        let mut attempts = Vec::new();
        for &backend in kind.candidates() {
            match open_backend(backend, ordinal) {
                Ok(b) => return Ok(Self::from_backend(b)),
                Err(e) if kind != DeviceKind::Auto => return Err(e),
                Err(e @ (RuntimeError::DriverNotFound { .. } | RuntimeError::NoDevice { .. })) => {
                    attempts.push((backend, e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        Err(RuntimeError::NoBackendAvailable { attempts })
    }

    /// Wraps an already opened backend (for backends outside this crate, and tests).
    pub fn from_backend(backend: Box<dyn Backend>) -> Self {
        Device {
            inner: Arc::new(Inner {
                backend,
                modules: ModuleCache::new(),
                tensor_maps: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The usable devices of every backend `kind` covers, or why a backend has none.
    pub fn enumerate(kind: DeviceKind) -> Vec<(BackendKind, Result<Vec<DeviceInfo>>)> {
        kind.candidates()
            .iter()
            .map(|&b| (b, enumerate_backend(b)))
            .collect()
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        self.inner.backend.kind()
    }

    /// Facts about the device.
    pub fn info(&self) -> &DeviceInfo {
        self.inner.backend.info()
    }

    /// The module format this device loads (PTX, HSACO or SPIR-V).
    pub fn module_format(&self) -> ModuleFormat {
        self.kind().module_format()
    }

    /// The backend, for calls this wrapper does not cover.
    pub fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    // ---- memory -------------------------------------------------------------------------

    /// Allocates a contiguous buffer; its contents are unspecified.
    pub fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<DeviceBuffer> {
        let bytes = byte_size(dtype, shape)?;
        let raw = self.backend().allocate(bytes)?;
        DeviceBuffer::contiguous(raw, dtype, shape)
    }

    /// Allocates a contiguous buffer filled with [`poison_pattern`] (NaN for floats), so
    /// an output element that a kernel forgets to write fails the comparison.
    pub fn alloc_poisoned(&self, dtype: DType, shape: &[usize]) -> Result<DeviceBuffer> {
        let buf = self.alloc(dtype, shape)?;
        self.poison(&buf)?;
        Ok(buf)
    }

    /// Copies host data into a new contiguous buffer of `shape`.
    pub fn upload<T: Element>(&self, data: &[T], shape: &[usize]) -> Result<DeviceBuffer> {
        let mut bytes = Vec::new();
        T::write_le(data, &mut bytes);
        self.upload_bytes(T::DTYPE, shape, &bytes)
    }

    /// Copies little-endian element bytes into a new contiguous buffer (the way in for bf16
    /// and f16 data).
    pub fn upload_bytes(
        &self,
        dtype: DType,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<DeviceBuffer> {
        let buf = self.alloc(dtype, shape)?;
        self.write_bytes(&buf, bytes)?;
        Ok(buf)
    }

    /// Overwrites a contiguous buffer with host data of the same element count.
    pub fn write<T: Element>(&self, dst: &DeviceBuffer, data: &[T]) -> Result<()> {
        check_dtype("write destination", T::DTYPE, dst)?;
        let mut bytes = Vec::new();
        T::write_le(data, &mut bytes);
        self.write_bytes(dst, &bytes)
    }

    /// Overwrites a contiguous buffer with exactly `numel × size` bytes.
    pub fn write_bytes(&self, dst: &DeviceBuffer, bytes: &[u8]) -> Result<()> {
        self.check_own("write destination", dst)?;
        let need = whole_contiguous("write destination", dst)?;
        if bytes.len() != need {
            return Err(RuntimeError::Layout {
                what: "write".into(),
                detail: format!(
                    "{} bytes given for a {} buffer of shape {:?} ({need} bytes)",
                    bytes.len(),
                    dst.dtype(),
                    dst.shape()
                ),
            });
        }
        self.backend().upload(dst.raw(), bytes)
    }

    /// Copies a contiguous buffer back to the host, after all enqueued work.
    pub fn download<T: Element>(&self, src: &DeviceBuffer) -> Result<Vec<T>> {
        check_dtype("download source", T::DTYPE, src)?;
        Ok(T::read_le(&self.download_bytes(src)?))
    }

    /// Copies a contiguous buffer's bytes back to the host, after all enqueued work.
    pub fn download_bytes(&self, src: &DeviceBuffer) -> Result<Vec<u8>> {
        self.check_own("download source", src)?;
        let n = whole_contiguous("download source", src)?;
        let mut out = vec![0u8; n];
        self.backend().download(src.raw(), &mut out)?;
        Ok(out)
    }

    /// Fills the whole allocation behind `dst` with a pattern, on the device.
    pub fn fill(&self, dst: &DeviceBuffer, pattern: FillPattern) -> Result<()> {
        self.check_own("fill destination", dst)?;
        self.backend().fill(dst.raw(), pattern)
    }

    /// Fills the allocation behind `dst` with [`poison_pattern`] for its dtype.
    pub fn poison(&self, dst: &DeviceBuffer) -> Result<()> {
        self.fill(dst, poison_pattern(dst.dtype()))
    }

    // ---- modules and kernels ------------------------------------------------------------

    /// Loads a module without caching it.
    pub fn load_module(&self, image: &[u8]) -> Result<ModuleHandle> {
        self.backend().load_module(image)
    }

    /// The module cached under `key`, loading it from the bytes `image` produces on a miss.
    ///
    /// `key` identifies the module's content (a content hash, or spec hash + direction +
    /// target + tile config + compiler fingerprint); `image` runs only on a miss, so a JIT
    /// compile there costs nothing on later calls. Two threads missing at once may both
    /// load; the cache keeps the first.
    pub fn module(
        &self,
        key: &str,
        image: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<ModuleHandle> {
        if let Some(m) = self.inner.modules.get(key) {
            return Ok(m);
        }
        let bytes = image()?;
        let module = self.backend().load_module(&bytes)?;
        Ok(self.inner.modules.insert(key, module))
    }

    /// The module cached under `key`, if loaded.
    pub fn cached_module(&self, key: &str) -> Option<ModuleHandle> {
        self.inner.modules.get(key)
    }

    /// This device's module cache.
    pub fn module_cache(&self) -> &ModuleCache {
        &self.inner.modules
    }

    /// Looks up a kernel in a module loaded on this device.
    pub fn kernel(&self, module: &ModuleHandle, name: &str) -> Result<KernelHandle> {
        self.backend().kernel(module, name)
    }

    /// Launches `kernel` without a signature: only the device of each buffer and the launch
    /// limits are checked. Prefer [`Device::launch_checked`].
    pub fn launch(
        &self,
        kernel: &KernelHandle,
        config: &LaunchConfig,
        args: &[KernelArg<'_>],
    ) -> Result<()> {
        let names: Vec<String> = (0..args.len()).map(|i| format!("#{i}")).collect();
        self.launch_inner(kernel, config, args, &names)
    }

    /// Checks `args` against `signature` (count, kinds, dtypes, shapes with named dimensions
    /// agreeing across arguments, strides, device), then launches. Returns the sizes of the
    /// named dimensions. Nothing reaches the device when a check fails.
    pub fn launch_checked(
        &self,
        kernel: &KernelHandle,
        signature: &KernelSignature,
        config: &LaunchConfig,
        args: &[KernelArg<'_>],
    ) -> Result<Bindings> {
        if signature.kernel() != kernel.name() {
            return Err(RuntimeError::Launch {
                kernel: kernel.name().to_owned(),
                detail: format!("the signature given is for `{}`", signature.kernel()),
            });
        }
        let bindings = signature.check(args)?;
        let names: Vec<String> = signature
            .params()
            .iter()
            .map(|p| p.name().to_owned())
            .collect();
        self.launch_inner(kernel, config, args, &names)?;
        Ok(bindings)
    }

    /// Waits for all enqueued work.
    pub fn synchronize(&self) -> Result<()> {
        self.backend().synchronize()
    }

    /// Enqueues a device timing event; `None` where the backend has no device timer
    /// (see [`Backend::record_timer`]).
    pub fn record_timer(&self) -> Result<Option<crate::backend::TimerEvent>> {
        self.backend().record_timer()
    }

    /// Device milliseconds between two events of [`Device::record_timer`].
    pub fn timer_elapsed_ms(
        &self,
        start: &crate::backend::TimerEvent,
        end: &crate::backend::TimerEvent,
    ) -> Result<f64> {
        self.backend().timer_elapsed_ms(start, end)
    }

    /// A Tensor Memory Accelerator map of `tensor` with geometry `spec` (its address is
    /// the tensor's), in device memory, for a kernel's [`KernelParam`] `TensorMap`: cached per
    /// (address, geometry). TMA reads only 16-byte aligned tensors: a misaligned one is first
    /// copied (enqueued) into an aligned buffer, which the map then covers. CUDA only.
    ///
    /// [`KernelParam`]: linrec_spec::launch::KernelParam
    pub fn tensor_map(&self, tensor: &DeviceBuffer, spec: &TensorMapSpec) -> Result<TensorMapArg> {
        self.check_own("tensor map source", tensor)?;
        if !tensor.is_contiguous() {
            return Err(RuntimeError::Layout {
                what: "tensor map source".into(),
                detail: format!(
                    "a strided view (shape {:?}, strides {:?}): TMA maps cover contiguous \
                     tensors; pass a contiguous copy",
                    tensor.shape(),
                    tensor.strides()
                ),
            });
        }
        let address = |buf: &DeviceBuffer| {
            self.backend()
                .device_address(buf.raw())
                .ok_or_else(|| RuntimeError::Driver {
                    backend: self.kind(),
                    call: "tensor_map",
                    detail: "TMA tensor maps exist on CUDA only (sm_90a kernels)".into(),
                })
        };
        let mut at = address(tensor)?;
        let copy = if at % 16 != 0 {
            let bytes = tensor.numel() * tensor.dtype().size_bytes();
            let aligned = self.alloc(tensor.dtype(), tensor.shape())?;
            if !self.copy_bytes(&aligned, tensor, bytes)? {
                return Err(RuntimeError::Driver {
                    backend: self.kind(),
                    call: "tensor_map",
                    detail: "a misaligned tensor and no device copy to align it".into(),
                });
            }
            at = address(&aligned)?;
            Some(aligned)
        } else {
            None
        };
        let key = (at, *spec);
        let mut maps = self
            .inner
            .tensor_maps
            .lock()
            .map_err(|_| RuntimeError::Driver {
                backend: self.kind(),
                call: "tensor_map",
                detail: "the tensor-map cache's lock was poisoned by a panic".into(),
            })?;
        if let Some(map) = maps.get(&key) {
            return Ok(TensorMapArg {
                map: map.clone(),
                copy,
            });
        }
        let bytes = self.backend().encode_tensor_map(at, spec)?;
        let map = self.upload_bytes(DType::I64, &[16], &bytes)?;
        if maps.len() >= TENSOR_MAPS_KEPT {
            maps.clear();
        }
        maps.insert(key, map.clone());
        Ok(TensorMapArg { map, copy })
    }

    /// Enqueues a device-to-device copy of `bytes` bytes from `src` to `dst`; `Ok(false)`
    /// where the backend has no copy (see [`Backend::copy`]).
    pub fn copy_bytes(&self, dst: &DeviceBuffer, src: &DeviceBuffer, bytes: usize) -> Result<bool> {
        self.backend().copy(dst.raw(), src.raw(), bytes)
    }

    fn launch_inner(
        &self,
        kernel: &KernelHandle,
        config: &LaunchConfig,
        args: &[KernelArg<'_>],
        names: &[String],
    ) -> Result<()> {
        let kname = kernel.name();
        if kernel.device_id() != self.backend().device_id() {
            return Err(RuntimeError::WrongDevice {
                what: format!("kernel `{kname}`"),
                expected: self.info().label(),
                found: "another device".into(),
            });
        }
        self.check_config(kname, config)?;
        let mut raw = Vec::with_capacity(args.len());
        for (arg, name) in args.iter().zip(names) {
            raw.push(match arg {
                KernelArg::Buffer(b) => {
                    self.check_own(&format!("argument `{name}`"), b)?;
                    LaunchArg::Buffer(b.raw())
                }
                KernelArg::I32(v) => LaunchArg::I32(*v),
                KernelArg::U32(v) => LaunchArg::U32(*v),
                KernelArg::I64(v) => LaunchArg::I64(*v),
                KernelArg::F32(v) => LaunchArg::F32(*v),
            });
        }
        self.backend().launch(kernel, config, &raw)
    }

    fn check_config(&self, kernel: &str, config: &LaunchConfig) -> Result<()> {
        let err = |detail: String| RuntimeError::Launch {
            kernel: kernel.to_owned(),
            detail,
        };
        if config.block.contains(&0) {
            return Err(err(format!(
                "block {:?} has a zero dimension",
                config.block
            )));
        }
        let info = self.info();
        let threads = config.threads_per_block();
        if info.max_threads_per_block > 0 && threads > info.max_threads_per_block as u64 {
            return Err(err(format!(
                "block {:?} has {threads} threads; {} allows at most {}",
                config.block,
                info.label(),
                info.max_threads_per_block
            )));
        }
        let smem = config.shared_mem_bytes as usize;
        if info.max_shared_memory_per_block > 0 && smem > info.max_shared_memory_per_block {
            return Err(err(format!(
                "{smem} bytes of dynamic shared memory; {} allows at most {}",
                info.label(),
                info.max_shared_memory_per_block
            )));
        }
        Ok(())
    }

    fn check_own(&self, what: &str, buf: &DeviceBuffer) -> Result<()> {
        if buf.device_id() == self.backend().device_id() {
            Ok(())
        } else {
            Err(RuntimeError::WrongDevice {
                what: what.to_owned(),
                expected: self.info().label(),
                found: "another device".into(),
            })
        }
    }
}

fn byte_size(dtype: DType, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| RuntimeError::Layout {
            what: format!("{dtype} buffer of shape {shape:?}"),
            detail: "the byte size overflows usize".into(),
        })
}

fn check_dtype(what: &str, host: DType, buf: &DeviceBuffer) -> Result<()> {
    if buf.dtype() == host {
        Ok(())
    } else {
        // The buffer's dtype is fixed; what is wrong is the host element type asked for.
        Err(RuntimeError::DType {
            arg: format!("{what} (host element type)"),
            expected: buf.dtype(),
            found: host,
        })
    }
}

/// Byte size of a buffer that host copies may use as one block: contiguous views only
/// (views have no offset, so a contiguous one is a prefix of its allocation).
fn whole_contiguous(what: &str, buf: &DeviceBuffer) -> Result<usize> {
    if !buf.is_contiguous() {
        return Err(RuntimeError::Strides {
            arg: what.to_owned(),
            expected: crate::buffer::contiguous_strides(buf.shape()),
            layout: "contiguous, row-major",
            found: buf.strides().to_vec(),
        });
    }
    byte_size(buf.dtype(), buf.shape())
}
