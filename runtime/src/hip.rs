//! HIP backend: AMD GPUs through the HIP runtime's module API, with `libamdhip64` loaded at
//! run time.
//!
//! No HIP crate fits (rust-gpu-anchors §4: the `-sys` crates need the SDK at build time, and
//! `cubecl-hip-sys` also insists on hiprtc and panics on a missing symbol), so this module
//! declares the few entry points it calls, `dlopen`s the library and resolves every one of
//! them before the first call. A missing library or symbol is [`RuntimeError::DriverNotFound`],
//! a runtime that loads but sees no GPU is [`RuntimeError::NoDevice`], and nothing panics.
//!
//! Where the library is looked for: `$LINREC_HIP_LIB` alone when set; otherwise
//! `$ROCM_PATH/lib/libamdhip64.so`, then `libamdhip64.so`, `.so.7`, `.so.6`, `.so.5` on the
//! loader's path, then `/opt/rocm/lib/libamdhip64.so`.
//!
//! Modules are HSACO code objects (or clang offload bundles of them) for the device's gfx
//! architecture, loaded with `hipModuleLoadData`; launches go through
//! `hipModuleLaunchKernel` on the null stream, which orders them with the blocking copies.
//!
//! The FFI is deliberately small and avoids the big `hipDeviceProp_t` struct, whose layout
//! changed between ROCm 5 and 6: numbers come from `hipDeviceGetAttribute`, the name from
//! `hipDeviceGetName`, the memory size from `hipDeviceTotalMem`. The one property no
//! attribute gives, the gfx architecture name, is read from the properties struct at an
//! offset pinned per release (see [`ARCH_NAME_OFFSET_R0600`]); on a release where it cannot be
//! pinned `DeviceInfo::arch` is `None`.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Arc, OnceLock};

use crate::backend::{
    Backend, BackendKind, DeviceId, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleFormat, ModuleHandle, RawBuffer, check_copy, check_fill,
};
use crate::backend_common::{
    LoadFailure, nul_in_kernel_name, open_library, payload, resolve_args, take_ordinal,
};
use crate::dylib::{self, dyn_api};
use crate::error::{Result, RuntimeError};
use crate::marshal::HipKernelParams;

const KIND: BackendKind = BackendKind::Hip;

/// The environment variable naming the HIP runtime library to load instead of searching.
pub const HIP_LIB_ENV: &str = "LINREC_HIP_LIB";

/// What to do when the library is missing or unusable.
const HINT: &str = "Install ROCm 5 or newer on a machine with an AMD GPU (it provides \
libamdhip64.so; Debian 12 packages ROCm 5.2's as libamdhip64-5), or set LINREC_HIP_LIB to \
the full path of libamdhip64.so. On a machine without an AMD GPU use DeviceKind::Cuda, \
DeviceKind::LevelZero, DeviceKind::OpenCl or DeviceKind::Auto";

/// What to do when HIP loads but sees no GPU.
const NO_DEVICE_HINT: &str = "Check that the amdgpu kernel driver is loaded, that /dev/kfd and \
/dev/dri/renderD* are readable by this user (groups `render` and `video`), and that \
HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES do not hide the GPU; on a machine without an AMD \
GPU use DeviceKind::Auto, which moves on to the next backend";

// `hipError_t` values used here (hip_runtime_api.h, the same in ROCm 5, 6 and 7).
const HIP_SUCCESS: c_int = 0;
const HIP_ERROR_NO_DEVICE: c_int = 100;
const HIP_ERROR_INVALID_DEVICE: c_int = 101;
const HIP_ERROR_INVALID_IMAGE: c_int = 200;
const HIP_ERROR_NO_BINARY_FOR_GPU: c_int = 209;
const HIP_ERROR_INVALID_KERNEL_FILE: c_int = 218;

// `hipDeviceAttribute_t` values (hip_runtime_api.h). The enum is a plain counter from 0, so a
// value is its position; these were checked by compiling the enum of ROCm/HIP's tags
// rocm-5.0.0, 5.2.3, 5.7.1, 6.0.0, 6.1.0, 6.2.2 and of ROCm 7's header (rocm-systems): every
// one gives 56 and 74. AMD renames removed entries to `hipDeviceAttributeUnusedN` rather
// than renumbering, and appends new ones at the end of the CUDA-compatible block.
/// `hipDeviceAttributeMaxThreadsPerBlock`.
const HIP_ATTR_MAX_THREADS_PER_BLOCK: c_int = 56;
/// `hipDeviceAttributeMaxSharedMemoryPerBlock`.
const HIP_ATTR_MAX_SHARED_MEMORY_PER_BLOCK: c_int = 74;

/// Offset of `char gcnArchName[256]` in `hipDeviceProp_tR0600`, the struct
/// `hipGetDevicePropertiesR0600` fills (ROCm 6.0 and later; 1472 bytes). Computed by
/// compiling the struct of ROCm/HIP tags rocm-6.0.0, 6.1.0, 6.2.2 and its 2024 head; ROCm 7
/// keeps the R0600 struct unchanged. The `R0600` suffix is AMD's ABI versioning: a changed
/// layout would get a new symbol name, so finding this symbol pins the layout.
const ARCH_NAME_OFFSET_R0600: usize = 1160;

/// Offset of `gcnArchName` in ROCm 5's `hipDeviceProp_t` (`hipGetDeviceProperties`, 792
/// bytes): the same 396 in every tag from rocm-5.0.0 to rocm-5.7.1. Used only when the
/// runtime reports major version 5, because that unsuffixed symbol's struct changed in ROCm
/// 6 (where it is kept for old binaries) and is not known for ROCm 4 or older.
const ARCH_NAME_OFFSET_ROCM5: usize = 396;

/// Bytes handed to `hipGetDeviceProperties*`: well over both structs (792 and 1472 bytes),
/// so a release that appends fields behind the same name still writes into our buffer.
const PROPS_BUFFER_BYTES: usize = 8192;

type HipDevicePtr = *mut c_void;
type HipModule = *mut c_void;
type HipFunction = *mut c_void;
type HipStream = *mut c_void;

dyn_api! {
    /// The HIP runtime entry points this backend calls, all resolved when the library loads.
    struct HipFns {
        init: fn(c_uint) -> c_int = "hipInit";
        get_error_name: fn(c_int) -> *const c_char = "hipGetErrorName";
        get_error_string: fn(c_int) -> *const c_char = "hipGetErrorString";
        runtime_get_version: fn(*mut c_int) -> c_int = "hipRuntimeGetVersion";
        get_device_count: fn(*mut c_int) -> c_int = "hipGetDeviceCount";
        device_get_attribute: fn(*mut c_int, c_int, c_int) -> c_int = "hipDeviceGetAttribute";
        device_get_name: fn(*mut c_char, c_int, c_int) -> c_int = "hipDeviceGetName";
        device_total_mem: fn(*mut usize, c_int) -> c_int = "hipDeviceTotalMem";
        set_device: fn(c_int) -> c_int = "hipSetDevice";
        malloc: fn(*mut HipDevicePtr, usize) -> c_int = "hipMalloc";
        free: fn(HipDevicePtr) -> c_int = "hipFree";
        memcpy_htod: fn(HipDevicePtr, *mut c_void, usize) -> c_int = "hipMemcpyHtoD";
        memcpy_dtoh: fn(*mut c_void, HipDevicePtr, usize) -> c_int = "hipMemcpyDtoH";
        memset_d8: fn(HipDevicePtr, u8, usize) -> c_int = "hipMemsetD8";
        memset_d16: fn(HipDevicePtr, u16, usize) -> c_int = "hipMemsetD16";
        memset_d32: fn(HipDevicePtr, c_int, usize) -> c_int = "hipMemsetD32";
        module_load_data: fn(*mut HipModule, *const c_void) -> c_int = "hipModuleLoadData";
        module_unload: fn(HipModule) -> c_int = "hipModuleUnload";
        module_get_function: fn(*mut HipFunction, HipModule, *const c_char) -> c_int
            = "hipModuleGetFunction";
        module_launch_kernel: fn(
            HipFunction,
            c_uint, c_uint, c_uint,
            c_uint, c_uint, c_uint,
            c_uint,
            HipStream,
            *mut *mut c_void,
            *mut *mut c_void,
        ) -> c_int = "hipModuleLaunchKernel";
        device_synchronize: fn() -> c_int = "hipDeviceSynchronize";
    }
}

/// `hipGetDeviceProperties*(prop, device)`, with the struct as untyped bytes.
type GetPropsFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;

/// The loaded and initialised runtime.
struct Hip {
    fns: HipFns,
    /// Where the library was found (for messages).
    path: String,
    /// `hipRuntimeGetVersion`: major × 10⁷ + minor × 10⁵ + patch (50221153 is 5.2.21153).
    runtime_version: c_int,
    /// `hipGetDevicePropertiesR0600`, ROCm 6 and later.
    props_r0600: Option<GetPropsFn>,
    /// `hipGetDeviceProperties`, used only on ROCm 5 (see [`ARCH_NAME_OFFSET_ROCM5`]).
    props_rocm5: Option<GetPropsFn>,
}

/// The places to look for the runtime, most specific first.
fn default_candidates() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(root) = std::env::var("ROCM_PATH")
        && !root.trim().is_empty()
    {
        names.push(format!(
            "{}/lib/libamdhip64.so",
            root.trim().trim_end_matches('/')
        ));
    }
    for name in [
        "libamdhip64.so",
        "libamdhip64.so.7",
        "libamdhip64.so.6",
        "libamdhip64.so.5",
        "/opt/rocm/lib/libamdhip64.so",
    ] {
        names.push(name.to_owned());
    }
    names
}

/// Text for a `hipError_t`: `101 (hipErrorInvalidDevice: invalid device ordinal)`.
fn describe(fns: &HipFns, code: c_int) -> String {
    let text = |f: unsafe extern "C" fn(c_int) -> *const c_char| {
        // SAFETY: both functions take any code and return a pointer to a static string
        // (or null, which is checked).
        let p = unsafe { f(code) };
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: non-null, NUL-terminated and static (HIP's error tables).
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let name = text(fns.get_error_name);
    let string = text(fns.get_error_string);
    if string.is_empty() || string == name {
        format!("{code} ({name})")
    } else {
        format!("{code} ({name}: {string})")
    }
}

/// Loads the library, resolves every symbol and runs `hipInit(0)`.
fn load() -> std::result::Result<Hip, LoadFailure> {
    let opened = open_library(
        HIP_LIB_ENV,
        default_candidates,
        "the HIP runtime",
        "libamdhip64",
    )?;
    let path = opened.path;
    let library = opened.library;
    let optional = |name: &str| {
        // SAFETY: only looked up here; called with the signature both releases declare,
        // `hipError_t f(hipDeviceProp_t*, int)`.
        unsafe { library.get::<GetPropsFn>(name) }.ok().map(|s| *s)
    };
    let props_r0600 = optional("hipGetDevicePropertiesR0600");
    let props_rocm5 = optional("hipGetDeviceProperties");
    // SAFETY: the declarations above match hip_runtime_api.h of ROCm 5 to 7 (pointer and
    // integer types only; `hipError_t` and `hipDeviceAttribute_t` are C enums, i.e. int).
    let fns = unsafe { HipFns::resolve(library) }.map_err(|missing| {
        LoadFailure::NotFound(format!(
            "{path} lacks {} (not the HIP runtime, or older than ROCm 5)",
            missing.join(", ")
        ))
    })?;
    // SAFETY: hipInit takes flags (must be 0) and returns a code.
    let code = unsafe { (fns.init)(0) };
    if code != HIP_SUCCESS {
        return Err(LoadFailure::NoDevice(format!(
            "hipInit returned {} ({path} loaded; the HIP runtime found no usable GPU)",
            describe(&fns, code)
        )));
    }
    let mut runtime_version: c_int = 0;
    // SAFETY: writes one int.
    let code = unsafe { (fns.runtime_get_version)(&mut runtime_version) };
    if code != HIP_SUCCESS {
        runtime_version = 0;
    }
    Ok(Hip {
        fns,
        path,
        runtime_version,
        props_r0600,
        props_rocm5,
    })
}

/// The process's HIP runtime, loaded and initialised on first use. The outcome is kept:
/// `hipInit` runs once per process, and a library that is not there is not searched for
/// again on every call.
fn api() -> Result<&'static Hip> {
    static API: OnceLock<std::result::Result<Hip, LoadFailure>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|failure| failure.to_error(KIND, HINT, NO_DEVICE_HINT))
}

/// Checks that the HIP runtime loads, has every entry point this backend calls and
/// initialises (`hipInit`), without touching a device.
///
/// Errors: [`RuntimeError::DriverNotFound`] when libamdhip64 is missing or lacks a symbol,
/// [`RuntimeError::NoDevice`] when `hipInit` fails (no GPU, or no access to it).
pub fn probe_driver() -> Result<()> {
    api().map(|_| ())
}

fn check(hip: &Hip, call: &'static str, code: c_int) -> Result<()> {
    if code == HIP_SUCCESS {
        Ok(())
    } else {
        Err(RuntimeError::Driver {
            backend: KIND,
            call,
            detail: describe(&hip.fns, code),
        })
    }
}

fn version_text(v: c_int) -> String {
    format!(
        "HIP {}.{}.{}",
        v / 10_000_000,
        (v / 100_000) % 100,
        v % 100_000
    )
}

/// The gfx architecture name (`gfx90a:sramecc+:xnack-`), or `None` when this release's
/// properties layout is not pinned or the bytes found do not look like a gfx name.
fn arch_name(hip: &Hip, device: c_int) -> Option<String> {
    let (get, offset) = match (hip.props_r0600, hip.props_rocm5) {
        (Some(get), _) => (get, ARCH_NAME_OFFSET_R0600),
        (None, Some(get)) if hip.runtime_version / 10_000_000 == 5 => (get, ARCH_NAME_OFFSET_ROCM5),
        _ => return None,
    };
    // u64 elements: 8-byte aligned, as the struct (it holds size_t and pointers) needs.
    let mut buf = vec![0u64; PROPS_BUFFER_BYTES / 8];
    // SAFETY: the buffer is larger than the struct of either release and suitably aligned;
    // the function writes the struct and nothing else.
    let code = unsafe { get(buf.as_mut_ptr().cast::<c_void>(), device) };
    if code != HIP_SUCCESS {
        return None;
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let field = bytes.get(offset..offset + 256)?;
    let name = dylib::c_chars(field);
    (name.starts_with("gfx") && name.is_ascii()).then_some(name)
}

fn device_info(hip: &Hip, ordinal: usize) -> Result<DeviceInfo> {
    let device = c_int::try_from(ordinal).map_err(|_| RuntimeError::DeviceOrdinal {
        backend: KIND,
        ordinal,
        count: 0,
    })?;
    let attr = |a: c_int, what: &'static str| -> Result<c_int> {
        let mut v: c_int = 0;
        // SAFETY: writes one int; `device` is below hipGetDeviceCount.
        check(hip, what, unsafe {
            (hip.fns.device_get_attribute)(&mut v, a, device)
        })?;
        Ok(v)
    };
    let threads = attr(
        HIP_ATTR_MAX_THREADS_PER_BLOCK,
        "hipDeviceGetAttribute(hipDeviceAttributeMaxThreadsPerBlock)",
    )?;
    let smem = attr(
        HIP_ATTR_MAX_SHARED_MEMORY_PER_BLOCK,
        "hipDeviceGetAttribute(hipDeviceAttributeMaxSharedMemoryPerBlock)",
    )?;
    let mut name = [0u8; 256];
    // SAFETY: HIP writes at most `len` bytes, NUL included.
    check(hip, "hipDeviceGetName", unsafe {
        (hip.fns.device_get_name)(name.as_mut_ptr().cast::<c_char>(), 256, device)
    })?;
    let mut total = 0usize;
    // SAFETY: writes one size_t.
    check(hip, "hipDeviceTotalMem", unsafe {
        (hip.fns.device_total_mem)(&mut total, device)
    })?;
    Ok(DeviceInfo {
        backend: KIND,
        ordinal,
        name: dylib::c_chars(&name),
        vendor: "AMD".into(),
        driver_version: version_text(hip.runtime_version),
        total_memory: total as u64,
        max_threads_per_block: usize::try_from(threads).unwrap_or(0),
        max_shared_memory_per_block: usize::try_from(smem).unwrap_or(0),
        // HIP reports gfx numbers through the "compute capability" attributes (9.0 for
        // gfx90a); they are not CUDA's, so they are left out rather than misread.
        compute_capability: None,
        arch: arch_name(hip, device),
        il_version: None,
        is_cpu: false,
    })
}

fn enumerate_with(hip: &Hip) -> Result<Vec<DeviceInfo>> {
    let mut count: c_int = 0;
    // SAFETY: writes one int.
    let code = unsafe { (hip.fns.get_device_count)(&mut count) };
    if code == HIP_ERROR_NO_DEVICE || code == HIP_ERROR_INVALID_DEVICE || count <= 0 {
        return Err(RuntimeError::NoDevice {
            backend: KIND,
            detail: if code == HIP_SUCCESS {
                format!("hipGetDeviceCount returned 0 ({} loaded)", hip.path)
            } else {
                format!("hipGetDeviceCount returned {}", describe(&hip.fns, code))
            },
            hint: NO_DEVICE_HINT,
        });
    }
    check(hip, "hipGetDeviceCount", code)?;
    (0..count as usize).map(|i| device_info(hip, i)).collect()
}

/// Whether `image` is something `hipModuleLoadData` takes: an AMDGPU ELF code object or a
/// clang offload bundle.
fn check_hsaco(image: &[u8]) -> Result<()> {
    /// `e_machine` of AMD GPU code objects (ELF `EM_AMDGPU`).
    const EM_AMDGPU: u16 = 224;
    const BUNDLE_MAGIC: &[u8] = b"__CLANG_OFFLOAD_BUNDLE__";
    if image.starts_with(BUNDLE_MAGIC) {
        return Ok(());
    }
    let invalid = |detail: String| RuntimeError::InvalidModule {
        expected: ModuleFormat::Hsaco,
        detail,
    };
    if !image.starts_with(b"\x7fELF") {
        return Err(invalid(format!(
            "{} bytes that are neither an ELF code object nor a clang offload bundle",
            image.len()
        )));
    }
    // e_machine: the little-endian u16 at offset 18 of both ELF32 and ELF64 headers.
    match image.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]])) {
        Some(EM_AMDGPU) => Ok(()),
        Some(m) => Err(invalid(format!(
            "an ELF for machine {m}, not an AMD GPU code object (EM_AMDGPU = {EM_AMDGPU})"
        ))),
        None => Err(invalid("a truncated ELF header".into())),
    }
}

/// Device memory from `hipMalloc` (at least one byte: empty tensors are legal), freed with
/// `hipFree` on drop.
struct HipBuffer {
    /// The device address (kept as an integer: it is only ever handed back to HIP).
    ptr: u64,
    device: c_int,
    hip: &'static Hip,
}

impl Drop for HipBuffer {
    fn drop(&mut self) {
        // SAFETY: the pointer came from hipMalloc on `device` and is freed once. hipFree
        // waits for the device's pending work first, so a kernel still reading the buffer
        // is not cut short. Errors cannot be reported from drop.
        unsafe {
            (self.hip.fns.set_device)(self.device);
            (self.hip.fns.free)(self.ptr as HipDevicePtr);
        }
    }
}

/// A loaded code object.
struct HipModuleObj {
    handle: usize,
    device: c_int,
    hip: &'static Hip,
    /// A copy of the image, 8-byte aligned, kept for the module's lifetime: HIP is not
    /// documented to copy the bytes, so they must outlive the module.
    _image: Vec<u64>,
}

impl Drop for HipModuleObj {
    fn drop(&mut self) {
        // SAFETY: the handle came from hipModuleLoadData and is unloaded once, after the
        // device's pending launches of its kernels have finished.
        unsafe {
            (self.hip.fns.set_device)(self.device);
            (self.hip.fns.device_synchronize)();
            (self.hip.fns.module_unload)(self.handle as HipModule);
        }
    }
}

/// A kernel entry point; keeps its module loaded.
struct HipKernel {
    function: usize,
    _module: ModuleHandle,
}

/// An opened AMD GPU: HIP's primary context for the device, made current on the calling
/// thread before each call, and the null stream.
pub struct HipBackend {
    id: DeviceId,
    info: DeviceInfo,
    device: c_int,
    hip: &'static Hip,
}

impl std::fmt::Debug for HipBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HipBackend")
            .field("id", &self.id)
            .field("info", &self.info)
            .field("library", &self.hip.path)
            .finish_non_exhaustive()
    }
}

impl HipBackend {
    /// Lists the AMD GPUs HIP sees.
    ///
    /// Errors: [`RuntimeError::DriverNotFound`] without libamdhip64 (or with one that lacks
    /// an entry point), [`RuntimeError::NoDevice`] when HIP initialises without a GPU.
    pub fn enumerate() -> Result<Vec<DeviceInfo>> {
        enumerate_with(api()?)
    }

    /// Opens device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Self> {
        let hip = api()?;
        let info = take_ordinal(KIND, enumerate_with(hip)?, ordinal)?;
        let backend = HipBackend {
            id: DeviceId::fresh(),
            info,
            device: ordinal as c_int,
            hip,
        };
        // Creates the device's primary context now, so a broken device fails here.
        backend.bind()?;
        Ok(backend)
    }

    /// Makes this device current on the calling thread (HIP's current device is per thread).
    fn bind(&self) -> Result<()> {
        // SAFETY: `device` is below hipGetDeviceCount.
        check(self.hip, "hipSetDevice", unsafe {
            (self.hip.fns.set_device)(self.device)
        })
    }

    fn buffer<'a>(&self, raw: &'a RawBuffer, what: &str) -> Result<&'a HipBuffer> {
        payload(self, raw, || what.to_owned())
    }
}

impl Backend for HipBackend {
    fn kind(&self) -> BackendKind {
        KIND
    }

    fn device_id(&self) -> DeviceId {
        self.id
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        enumerate_with(self.hip)
    }

    fn allocate(&self, bytes: usize) -> Result<RawBuffer> {
        self.bind()?;
        let mut ptr: HipDevicePtr = std::ptr::null_mut();
        // SAFETY: writes one pointer. hipMalloc(0) returns null, so at least one byte.
        check(self.hip, "hipMalloc", unsafe {
            (self.hip.fns.malloc)(&mut ptr, bytes.max(1))
        })?;
        Ok(RawBuffer::new(
            self.id,
            bytes,
            Box::new(HipBuffer {
                ptr: ptr as u64,
                device: self.device,
                hip: self.hip,
            }),
        ))
    }

    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> Result<()> {
        check_copy("upload", dst, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let buf = self.buffer(dst, "upload destination")?;
        self.bind()?;
        // SAFETY: `data.len()` bytes fit the allocation (checked). The copy is synchronous
        // for pageable memory, so `data` may be reused on return; HIP only reads `src`
        // although its prototype is not const.
        check(self.hip, "hipMemcpyHtoD", unsafe {
            (self.hip.fns.memcpy_htod)(
                buf.ptr as HipDevicePtr,
                data.as_ptr().cast_mut().cast::<c_void>(),
                data.len(),
            )
        })
    }

    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> Result<()> {
        check_copy("download", src, out.len())?;
        if out.is_empty() {
            return self.synchronize();
        }
        let buf = self.buffer(src, "download source")?;
        self.bind()?;
        // SAFETY: `out` is no larger than the allocation (checked). The copy runs on the
        // null stream, after every launch enqueued before it, and returns when done.
        check(self.hip, "hipMemcpyDtoH", unsafe {
            (self.hip.fns.memcpy_dtoh)(
                out.as_mut_ptr().cast::<c_void>(),
                buf.ptr as HipDevicePtr,
                out.len(),
            )
        })
    }

    fn fill(&self, dst: &RawBuffer, pattern: FillPattern) -> Result<()> {
        check_fill(dst, pattern)?;
        let n = dst.len_bytes();
        if n == 0 {
            return Ok(());
        }
        let buf = self.buffer(dst, "fill destination")?;
        self.bind()?;
        let p = buf.ptr as HipDevicePtr;
        // SAFETY: `n` bytes lie inside the allocation and are a whole number of patterns
        // (checked); counts are in elements. hipMalloc memory is 256-byte aligned, as the
        // 16- and 32-bit fills need.
        let (call, code) = unsafe {
            match pattern {
                FillPattern::U8(v) => ("hipMemsetD8", (self.hip.fns.memset_d8)(p, v, n)),
                FillPattern::U16(v) => ("hipMemsetD16", (self.hip.fns.memset_d16)(p, v, n / 2)),
                FillPattern::U32(v) => (
                    "hipMemsetD32",
                    (self.hip.fns.memset_d32)(p, v as c_int, n / 4),
                ),
            }
        };
        check(self.hip, call, code)
    }

    fn load_module(&self, image: &[u8]) -> Result<ModuleHandle> {
        check_hsaco(image)?;
        self.bind()?;
        let mut copy = vec![0u64; image.len().div_ceil(8)];
        for (word, chunk) in copy.iter_mut().zip(image.chunks(8)) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_ne_bytes(w);
        }
        let mut module: HipModule = std::ptr::null_mut();
        // SAFETY: `copy` holds the whole image (HIP finds its size in the ELF or bundle
        // header, which check_hsaco saw) and lives as long as the module.
        let code =
            unsafe { (self.hip.fns.module_load_data)(&mut module, copy.as_ptr().cast::<c_void>()) };
        if code != HIP_SUCCESS {
            let arch = self.info.arch.as_deref().unwrap_or("unknown");
            let why = match code {
                HIP_ERROR_NO_BINARY_FOR_GPU
                | HIP_ERROR_INVALID_IMAGE
                | HIP_ERROR_INVALID_KERNEL_FILE => {
                    format!("; the code object must be built for this GPU's architecture ({arch})")
                }
                _ => String::new(),
            };
            return Err(RuntimeError::ModuleBuild {
                backend: KIND,
                detail: format!("hipModuleLoadData: {}{why}", describe(&self.hip.fns, code)),
                log: String::new(),
            });
        }
        Ok(ModuleHandle::new(
            self.id,
            Arc::new(HipModuleObj {
                handle: module as usize,
                device: self.device,
                hip: self.hip,
                _image: copy,
            }),
        ))
    }

    fn kernel(&self, module: &ModuleHandle, name: &str) -> Result<KernelHandle> {
        let m: &HipModuleObj = payload(self, module, || "module".into())?;
        let Ok(cname) = CString::new(name) else {
            return Err(nul_in_kernel_name(name, None));
        };
        self.bind()?;
        let mut function: HipFunction = std::ptr::null_mut();
        // SAFETY: the module is loaded (the handle keeps it so) and the name is a C string.
        let code = unsafe {
            (self.hip.fns.module_get_function)(&mut function, m.handle as HipModule, cname.as_ptr())
        };
        if code != HIP_SUCCESS {
            return Err(RuntimeError::KernelNotFound {
                name: name.to_owned(),
                detail: format!("hipModuleGetFunction: {}", describe(&self.hip.fns, code)),
                available: None,
            });
        }
        Ok(KernelHandle::new(
            self.id,
            name,
            Arc::new(HipKernel {
                function: function as usize,
                _module: module.clone(),
            }),
        ))
    }

    fn launch(
        &self,
        kernel: &KernelHandle,
        config: &LaunchConfig,
        args: &[LaunchArg<'_>],
    ) -> Result<()> {
        let kname = kernel.name();
        let k: &HipKernel = payload(self, kernel, || format!("kernel `{kname}`"))?;
        let values = resolve_args(kname, args, |raw, what| Ok(self.buffer(raw, what)?.ptr))?;
        if config.is_empty() {
            return Ok(());
        }
        self.bind()?;
        let mut params = HipKernelParams::new(&values);
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        // SAFETY: `params` holds one pointer per argument, each to a value of the argument's
        // size, and outlives the call (HIP copies the values before returning). The argument
        // list matches the kernel as far as the caller's signature says
        // (Device::launch_checked checks it). Null stream, no `extra`.
        let code = unsafe {
            (self.hip.fns.module_launch_kernel)(
                k.function as HipFunction,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                config.shared_mem_bytes,
                std::ptr::null_mut(),
                params.as_kernel_params(),
                std::ptr::null_mut(),
            )
        };
        if code != HIP_SUCCESS {
            return Err(RuntimeError::Launch {
                kernel: kname.to_owned(),
                detail: format!(
                    "hipModuleLaunchKernel (grid {:?}, block {:?}, {} bytes shared): {}",
                    config.grid,
                    config.block,
                    config.shared_mem_bytes,
                    describe(&self.hip.fns, code)
                ),
            });
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: no arguments.
        check(self.hip, "hipDeviceSynchronize", unsafe {
            (self.hip.fns.device_synchronize)()
        })
    }
}
