//! CUDA backend: the driver API through cudarc, with libcuda loaded at run time.
//!
//! Built with cudarc's `dynamic-loading` and the CUDA 13.0 bindings, so it compiles on a
//! machine without CUDA. cudarc panics when libcuda (or one of its symbols) is missing, so
//! every entry point here first probes the library and the symbols this backend calls, and
//! turns their absence into [`RuntimeError::DriverNotFound`].

use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DriverError, LaunchConfig as CuLaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::backend::{
    Backend, BackendKind, DeviceId, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleFormat, ModuleHandle, RawBuffer, TensorMapSpec, TimerEvent, check_copy, check_fill,
};
use crate::backend_common::{nul_in_kernel_name, payload, resolve_args, take_ordinal};
use crate::error::{Result, RuntimeError};
use crate::marshal::ArgValue;

const KIND: BackendKind = BackendKind::Cuda;

const HINT: &str = "Install the NVIDIA driver (it provides libcuda.so.1; a CUDA 13 driver, 580 or \
newer, matches the PTX linrec emits). No CUDA toolkit is needed. On a machine without an \
NVIDIA GPU use DeviceKind::OpenCl or DeviceKind::Auto";

/// The driver entry points this backend reaches through cudarc, by the names cudarc's
/// CUDA 13.0 bindings load. Probing them first turns cudarc's "Missing symbol" panic on an
/// old driver into an error.
const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemsetD8Async",
    "cuMemsetD16Async",
    "cuMemsetD32Async",
    "cuTensorMapEncodeTiled",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
];

fn cu_err(call: &'static str, e: DriverError) -> RuntimeError {
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    RuntimeError::Driver {
        backend: KIND,
        call,
        detail: format!("{:?}: {text}", e.0),
    }
}

/// Checks that libcuda loads and has every symbol we call, without calling any of them.
pub fn probe_driver() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate names; loading libcuda runs no user code
    // beyond its initialisers, which the CUDA driver expects.
    if !unsafe { sys::is_culib_present() } {
        return Err(RuntimeError::DriverNotFound {
            backend: KIND,
            detail: {
                let mut names = cudarc::get_lib_name_candidates("cuda");
                // cudarc's list repeats some names; keep the first of each.
                let mut seen = std::collections::HashSet::new();
                names.retain(|n| seen.insert(n.clone()));
                format!("could not load libcuda (searched {})", names.join(", "))
            },
            hint: HINT,
        });
    }
    // SAFETY: the library is present (checked above), so `culib` does not panic.
    let lib = unsafe { sys::culib() };
    let missing: Vec<&str> = REQUIRED_SYMBOLS
        .iter()
        .copied()
        // SAFETY: looks the symbol up without calling it; the function type is irrelevant.
        .filter(|name| unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err())
        .collect();
    if !missing.is_empty() {
        return Err(RuntimeError::DriverNotFound {
            backend: KIND,
            detail: format!(
                "libcuda lacks {} (the driver is older than this runtime supports)",
                missing.join(", ")
            ),
            hint: HINT,
        });
    }
    Ok(())
}

/// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
fn driver_version() -> Result<i32> {
    let mut v = 0i32;
    // SAFETY: writes one int; the symbol was probed.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| cu_err("cuDriverGetVersion", e))?;
    Ok(v)
}

fn init() -> Result<()> {
    probe_driver()?;
    result::init().map_err(|e| {
        if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            RuntimeError::NoDevice {
                backend: KIND,
                detail: "cuInit: CUDA_ERROR_NO_DEVICE (the driver is installed but sees no GPU)"
                    .into(),
                hint: HINT,
            }
        } else {
            cu_err("cuInit", e)
        }
    })
}

fn device_info(ordinal: usize, version: i32) -> Result<DeviceInfo> {
    let dev = result::device::get(ordinal as i32).map_err(|e| cu_err("cuDeviceGet", e))?;
    let attr = |a: sys::CUdevice_attribute| {
        // SAFETY: `dev` came from cuDeviceGet.
        unsafe { result::device::get_attribute(dev, a) }
            .map_err(|e| cu_err("cuDeviceGetAttribute", e))
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let threads = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?;
    // The opt-in limit (e.g. 227 KiB on H100): kernels above 48 KiB get the attribute set
    // at launch.
    let smem =
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
    // SAFETY: `dev` came from cuDeviceGet.
    let total =
        unsafe { result::device::total_mem(dev) }.map_err(|e| cu_err("cuDeviceTotalMem", e))?;
    Ok(DeviceInfo {
        backend: KIND,
        ordinal,
        name: result::device::get_name(dev).map_err(|e| cu_err("cuDeviceGetName", e))?,
        vendor: "NVIDIA".into(),
        driver_version: format!("CUDA {}.{}", version / 1000, (version % 1000) / 10),
        total_memory: total as u64,
        max_threads_per_block: usize::try_from(threads).unwrap_or(0),
        max_shared_memory_per_block: usize::try_from(smem).unwrap_or(0),
        compute_capability: Some((
            u32::try_from(major).unwrap_or(0),
            u32::try_from(minor).unwrap_or(0),
        )),
        arch: None,
        il_version: None,
        is_cpu: false,
    })
}

/// Device memory behind a [`RawBuffer`] of this backend.
pub(crate) enum CuBuffer {
    /// Allocated by this backend on its stream: a `CudaSlice<u8>` of at least one byte (CUDA
    /// refuses 0-byte allocations).
    Owned(CudaSlice<u8>),
    /// Memory of a `CudaSlice` made outside linrec (see `crate::interop`).
    Foreign(Foreign),
}

/// Memory of a `CudaSlice` made outside linrec, used in place. Its owner orders its own work on
/// `theirs`; linrec works on `ours`. On creation `ours` waits for what `theirs` had enqueued
/// (`interop` does that); when the last view is dropped `theirs` waits for what `ours` has
/// enqueued, so the owner's later writes or free never race a linrec kernel still reading.
pub(crate) struct Foreign {
    /// The device pointer.
    pub(crate) ptr: u64,
    /// linrec's stream.
    pub(crate) ours: Arc<CudaStream>,
    /// The stream the memory belongs to.
    pub(crate) theirs: Arc<CudaStream>,
    /// The slice itself when linrec took it over (dropped, and so freed on `theirs`, after
    /// the wait above); `None` for a borrowed view, whose owner frees it.
    #[allow(dead_code, reason = "held, never read: dropping it frees the slice")]
    pub(crate) owned: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Drop for Foreign {
    fn drop(&mut self) {
        if self.ours.cu_stream() == self.theirs.cu_stream() {
            return;
        }
        // Drop cannot report an error; if the event-based wait fails, block until linrec's
        // work is done instead, which orders just as well.
        if self.theirs.join(&self.ours).is_err() {
            let _ = self.ours.synchronize();
        }
    }
}

/// A loaded module.
struct CuModule(Arc<CudaModule>);

/// A kernel entry point (keeps its module loaded).
struct CuKernel(CudaFunction);

/// An opened CUDA device: the primary context and one stream.
pub struct CudaBackend {
    id: DeviceId,
    info: DeviceInfo,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("id", &self.id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Lists the CUDA devices.
    ///
    /// Errors: [`RuntimeError::DriverNotFound`] without libcuda (the case on CPU-only
    /// machines), [`RuntimeError::NoDevice`] when the driver sees no GPU.
    pub fn enumerate() -> Result<Vec<DeviceInfo>> {
        init()?;
        let version = driver_version()?;
        let count = result::device::get_count().map_err(|e| cu_err("cuDeviceGetCount", e))?;
        if count <= 0 {
            return Err(RuntimeError::NoDevice {
                backend: KIND,
                detail: "cuDeviceGetCount returned 0".into(),
                hint: HINT,
            });
        }
        (0..count as usize)
            .map(|i| device_info(i, version))
            .collect()
    }

    /// Opens device `ordinal`: retains its primary context and creates a stream.
    pub fn open(ordinal: usize) -> Result<Self> {
        let info = take_ordinal(KIND, Self::enumerate()?, ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| cu_err("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: this backend issues all work on the one stream below, so cudarc's
        // per-slice events (two cuEventCreate per allocation) order nothing that the stream
        // does not already order.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| cu_err("cuStreamCreate", e))?;
        Ok(CudaBackend {
            id: DeviceId::fresh(),
            info,
            stream,
            ctx,
        })
    }

    fn buffer<'a>(&self, raw: &'a RawBuffer, what: &str) -> Result<&'a CuBuffer> {
        payload(self, raw, || what.to_owned())
    }

    fn ptr(&self, buf: &CuBuffer) -> u64 {
        match buf {
            CuBuffer::Owned(slice) => {
                // With event tracking off the returned guard records nothing; the pointer
                // stays valid as long as `buf` lives.
                let (p, _guard) = slice.device_ptr(&self.stream);
                p
            }
            CuBuffer::Foreign(f) => f.ptr,
        }
    }

    /// The device pointer of a buffer of this backend (for `crate::interop`).
    pub(crate) fn raw_ptr(&self, raw: &RawBuffer, what: &str) -> Result<u64> {
        Ok(self.ptr(self.buffer(raw, what)?))
    }

    /// The context every buffer and module of this backend lives in.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream this backend enqueues all its work on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A buffer of this backend over memory made elsewhere in the same context.
    pub(crate) fn foreign_buffer(&self, bytes: usize, foreign: Foreign) -> RawBuffer {
        RawBuffer::new(self.id, bytes, Box::new(CuBuffer::Foreign(foreign)))
    }

    /// Maps a driver error of an interop call.
    pub(crate) fn driver_error(call: &'static str, e: DriverError) -> RuntimeError {
        cu_err(call, e)
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cu_err("cuCtxSetCurrent", e))
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        KIND
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn device_id(&self) -> DeviceId {
        self.id
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Self::enumerate()
    }

    fn allocate(&self, bytes: usize) -> Result<RawBuffer> {
        self.bind()?;
        // SAFETY: uninitialised device memory is fine for bytes; callers poison or write it.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }
            .map_err(|e| cu_err("cuMemAlloc", e))?;
        Ok(RawBuffer::new(
            self.id,
            bytes,
            Box::new(CuBuffer::Owned(slice)),
        ))
    }

    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> Result<()> {
        check_copy("upload", dst, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let buf = self.buffer(dst, "upload destination")?;
        self.bind()?;
        // SAFETY: `data` fits the allocation (checked). From pageable memory the driver
        // stages the bytes before returning, and we synchronise anyway so `data` may be
        // reused at once.
        unsafe { result::memcpy_htod_async(self.ptr(buf), data, self.stream.cu_stream()) }
            .map_err(|e| cu_err("cuMemcpyHtoDAsync", e))?;
        self.synchronize()
    }

    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> Result<()> {
        check_copy("download", src, out.len())?;
        if out.is_empty() {
            return self.synchronize();
        }
        let buf = self.buffer(src, "download source")?;
        self.bind()?;
        // SAFETY: `out` is no larger than the allocation (checked); we wait for the copy
        // before returning, so `out` is not touched afterwards.
        unsafe { result::memcpy_dtoh_async(out, self.ptr(buf), self.stream.cu_stream()) }
            .map_err(|e| cu_err("cuMemcpyDtoHAsync", e))?;
        self.synchronize()
    }

    fn fill(&self, dst: &RawBuffer, pattern: FillPattern) -> Result<()> {
        check_fill(dst, pattern)?;
        let n = dst.len_bytes();
        if n == 0 {
            return Ok(());
        }
        let buf = self.buffer(dst, "fill destination")?;
        self.bind()?;
        let p = self.ptr(buf);
        let s = self.stream.cu_stream();
        // SAFETY: `n` bytes lie inside the allocation and are a whole number of patterns
        // (checked). Allocations are 256-byte aligned, as D16/D32 need.
        let r = unsafe {
            match pattern {
                FillPattern::U8(v) => sys::cuMemsetD8Async(p, v, n, s),
                FillPattern::U16(v) => sys::cuMemsetD16Async(p, v, n / 2, s),
                FillPattern::U32(v) => sys::cuMemsetD32Async(p, v, n / 4, s),
            }
        };
        r.result().map_err(|e| cu_err("cuMemsetAsync", e))
    }

    fn load_module(&self, image: &[u8]) -> Result<ModuleHandle> {
        let ptx = if image.starts_with(b"\x7fELF") {
            // A cubin: cuModuleLoadData reads the ELF header for its size.
            Ptx::from_binary(image.to_vec())
        } else {
            let text = std::str::from_utf8(image).map_err(|e| RuntimeError::InvalidModule {
                expected: ModuleFormat::Ptx,
                detail: format!("neither a cubin (ELF) nor UTF-8 PTX text: {e}"),
            })?;
            // cudarc builds a C string from the text and would panic on an interior NUL; a
            // trailing one (C-style buffers) is harmless and dropped here.
            let text = text.trim_end_matches('\0');
            if text.contains('\0') {
                return Err(RuntimeError::InvalidModule {
                    expected: ModuleFormat::Ptx,
                    detail: "PTX text with a NUL byte inside".into(),
                });
            }
            if !text.contains(".version") || !text.contains(".target") {
                return Err(RuntimeError::InvalidModule {
                    expected: ModuleFormat::Ptx,
                    detail: "text without `.version` and `.target` directives".into(),
                });
            }
            Ptx::from_src(text)
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(|e| RuntimeError::ModuleBuild {
                backend: KIND,
                detail: format!("cuModuleLoadData: {:?}", e.0),
                log: String::new(),
            })?;
        Ok(ModuleHandle::new(self.id, Arc::new(CuModule(module))))
    }

    fn kernel(&self, module: &ModuleHandle, name: &str) -> Result<KernelHandle> {
        let m: &CuModule = payload(self, module, || "module".into())?;
        if name.contains('\0') {
            // cudarc would panic building the C string.
            return Err(nul_in_kernel_name(name, None));
        }
        let f =
            m.0.load_function(name)
                .map_err(|e| RuntimeError::KernelNotFound {
                    name: name.to_owned(),
                    detail: format!("cuModuleGetFunction: {:?}", e.0),
                    available: None,
                })?;
        Ok(KernelHandle::new(self.id, name, Arc::new(CuKernel(f))))
    }

    fn launch(
        &self,
        kernel: &KernelHandle,
        config: &LaunchConfig,
        args: &[LaunchArg<'_>],
    ) -> Result<()> {
        let kname = kernel.name();
        let f: &CuKernel = payload(self, kernel, || format!("kernel `{kname}`"))?;
        // The values live in `values` until `cuLaunchKernel` has read them through the
        // builder's pointers.
        let values = resolve_args(kname, args, |raw, what| self.raw_ptr(raw, what))?;
        if config.is_empty() {
            return Ok(());
        }
        self.bind()?;
        if config.shared_mem_bytes > 48 * 1024 {
            // Above 48 KiB of dynamic shared memory a kernel must opt in.
            f.0.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                i32::try_from(config.shared_mem_bytes).unwrap_or(i32::MAX),
            )
            .map_err(|e| RuntimeError::Launch {
                kernel: kname.to_owned(),
                detail: format!(
                    "cannot allow {} bytes of dynamic shared memory: {:?}",
                    config.shared_mem_bytes, e.0
                ),
            })?;
        }
        let mut builder = self.stream.launch_builder(&f.0);
        for v in &values {
            match v {
                ArgValue::Pointer(p) => builder.arg(p),
                ArgValue::I32(x) => builder.arg(x),
                ArgValue::U32(x) => builder.arg(x),
                ArgValue::I64(x) => builder.arg(x),
                ArgValue::F32(x) => builder.arg(x),
            };
        }
        let cfg = CuLaunchConfig {
            grid_dim: (config.grid[0], config.grid[1], config.grid[2]),
            block_dim: (config.block[0], config.block[1], config.block[2]),
            shared_mem_bytes: config.shared_mem_bytes,
        };
        // SAFETY: the argument list matches the kernel's parameters as far as the caller's
        // signature says (Device::launch_checked checks it); buffers stay alive until their
        // stream-ordered free, which runs after this launch.
        unsafe { builder.launch(cfg) }.map_err(|e| RuntimeError::Launch {
            kernel: kname.to_owned(),
            detail: format!(
                "cuLaunchKernel (grid {:?}, block {:?}, {} bytes shared): {:?}",
                config.grid, config.block, config.shared_mem_bytes, e.0
            ),
        })?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cu_err("cuStreamSynchronize", e))
    }

    fn record_timer(&self) -> Result<Option<TimerEvent>> {
        // A default-flag event (timing enabled), recorded on the one stream all work goes to.
        let event = self
            .stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| cu_err("cuEventRecord", e))?;
        Ok(Some(TimerEvent::new(self.id, Box::new(event))))
    }

    fn timer_elapsed_ms(&self, start: &TimerEvent, end: &TimerEvent) -> Result<f64> {
        fn get<'e>(me: &CudaBackend, e: &'e TimerEvent) -> Result<&'e CudaEvent> {
            payload(me, e, || "timer event".into())
        }
        let (a, b) = (get(self, start)?, get(self, end)?);
        a.elapsed_ms(b)
            .map(f64::from)
            .map_err(|e| cu_err("cuEventElapsedTime", e))
    }

    fn device_address(&self, raw: &RawBuffer) -> Option<u64> {
        self.raw_ptr(raw, "tensor").ok()
    }

    fn encode_tensor_map(&self, address: u64, spec: &TensorMapSpec) -> Result<[u8; 128]> {
        use sys::{
            CUtensorMapDataType as D, CUtensorMapFloatOOBfill as Fill,
            CUtensorMapInterleave as Interleave, CUtensorMapL2promotion as L2,
            CUtensorMapSwizzle as Swizzle,
        };
        let dtype = match spec.dtype {
            crate::DType::BF16 => D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            crate::DType::F16 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            other => {
                return Err(RuntimeError::Driver {
                    backend: KIND,
                    call: "cuTensorMapEncodeTiled",
                    detail: format!("a tensor map of {other} elements (bf16 or f16 only)"),
                });
            }
        };
        self.bind()?;
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        let unit = [1u32; 3];
        // SAFETY: every pointer is to a live local of the length the rank (3) implies; the
        // driver only reads them and writes `map`.
        let status = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                dtype,
                3,
                address as *mut std::ffi::c_void,
                spec.dims.as_ptr(),
                spec.strides.as_ptr(),
                spec.boxes.as_ptr(),
                unit.as_ptr(),
                Interleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                Swizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        status
            .result()
            .map_err(|e| cu_err("cuTensorMapEncodeTiled", e))?;
        let mut bytes = [0u8; 128];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(map.opaque) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(bytes)
    }

    fn copy(&self, dst: &RawBuffer, src: &RawBuffer, bytes: usize) -> Result<bool> {
        let (d, s) = (
            self.buffer(dst, "copy destination")?,
            self.buffer(src, "copy source")?,
        );
        if bytes > dst.len_bytes() || bytes > src.len_bytes() {
            return Err(RuntimeError::Launch {
                kernel: "copy".into(),
                detail: format!(
                    "{bytes} bytes do not fit (source {}, destination {})",
                    src.len_bytes(),
                    dst.len_bytes()
                ),
            });
        }
        if bytes == 0 {
            return Ok(true);
        }
        self.bind()?;
        // SAFETY: both ranges lie inside live allocations of this context (checked above).
        unsafe {
            result::memcpy_dtod_async(self.ptr(d), self.ptr(s), bytes, self.stream.cu_stream())
        }
        .map_err(|e| cu_err("cuMemcpyDtoDAsync", e))?;
        Ok(true)
    }
}
