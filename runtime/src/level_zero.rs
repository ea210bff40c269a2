//! Level Zero backend: Intel GPUs through oneAPI Level Zero, with `libze_loader.so.1` loaded
//! at run time and SPIR-V modules (the same bytes the OpenCL backend loads).
//!
//! There is no Level Zero crate on crates.io (spirv-cpu §5), so this module declares the
//! structs and entry points it needs, with layouts taken from `ze_api.h` (Debian's libze-dev
//! 1.8.12) and checked at compile time against sizes and offsets measured by compiling that
//! header. The layouts are the core 1.0 ones; later API versions extend structs only through
//! `pNext` chains, so they do not move.
//!
//! Where the loader is looked for: `$LINREC_ZE_LIB` alone when set, else `libze_loader.so.1`
//! and `libze_loader.so` on the loader's path. `zeInit(ZE_INIT_FLAG_GPU_ONLY)` runs once per
//! process; when it fails (the loader found no GPU driver — the case on every machine without
//! an Intel GPU, where it returns `0x78000001`, `ZE_RESULT_ERROR_UNINITIALIZED`) nothing else
//! is called: with Intel's GPU driver installed and no GPU, `zeDriverGet` after a failed
//! `zeInit` crashes the process (spirv-cpu §5).
//!
//! Execution model: one context, one asynchronous immediate command list on a compute queue
//! group, and one host-visible event. Level Zero does not order the commands of a list by
//! itself, so a barrier follows every command (making the list behave like a CUDA stream);
//! `synchronize` appends a barrier that signals the event and waits for it on the host.
//! Host copies go through a host (USM) staging buffer, since the API only promises copies
//! between memory the device can reach, which plain host memory need not be.

use std::ffi::{CString, c_char, c_void};
use std::mem::{offset_of, size_of};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::backend::{
    Backend, BackendKind, DeviceId, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleHandle, RawBuffer, check_copy, check_fill, check_spirv,
};
use crate::backend_common::{
    LoadFailure, check_arg_count, lock, nul_in_kernel_name, open_library, payload, resolve_args,
    take_ordinal,
};
use crate::dylib::{self, dyn_api};
use crate::error::{Result, RuntimeError};
use crate::marshal::ze_arguments;

const KIND: BackendKind = BackendKind::LevelZero;

/// The environment variable naming the Level Zero loader to load instead of searching.
pub const ZE_LIB_ENV: &str = "LINREC_ZE_LIB";

/// What to do when the loader is missing or unusable.
const HINT: &str = "Install the Level Zero loader (Debian/Ubuntu: `apt-get install libze1`) and \
Intel's GPU driver (Debian: intel-opencl-icd, which ships libze_intel_gpu.so.1; Intel's \
packages: intel-level-zero-gpu), or set LINREC_ZE_LIB to the full path of libze_loader.so.1. \
On a machine without an Intel GPU use DeviceKind::OpenCl (Intel's CPU OpenCL runtime runs the \
same SPIR-V) or DeviceKind::Auto";

/// What to do when the loader loads but finds no GPU.
const NO_DEVICE_HINT: &str = "Level Zero has no CPU driver: it needs an Intel GPU and Intel's \
GPU driver (libze_intel_gpu.so.1, Debian package intel-opencl-icd), with /dev/dri/renderD* \
readable by this user (group `render`); ZE_AFFINITY_MASK may also hide devices. On a machine \
without an Intel GPU use DeviceKind::OpenCl or DeviceKind::Auto";

/// `ZE_INIT_FLAG_GPU_ONLY`.
const ZE_INIT_FLAG_GPU_ONLY: u32 = 1;
/// `ZE_RESULT_SUCCESS`.
const ZE_SUCCESS: u32 = 0;

// `ze_structure_type_t` values (ze_api.h).
const STYPE_DRIVER_PROPERTIES: u32 = 0x1;
const STYPE_DEVICE_PROPERTIES: u32 = 0x3;
const STYPE_DEVICE_COMPUTE_PROPERTIES: u32 = 0x4;
const STYPE_DEVICE_MODULE_PROPERTIES: u32 = 0x5;
const STYPE_COMMAND_QUEUE_GROUP_PROPERTIES: u32 = 0x6;
const STYPE_DEVICE_MEMORY_PROPERTIES: u32 = 0x7;
const STYPE_CONTEXT_DESC: u32 = 0xd;
const STYPE_COMMAND_QUEUE_DESC: u32 = 0xe;
const STYPE_EVENT_POOL_DESC: u32 = 0x10;
const STYPE_EVENT_DESC: u32 = 0x11;
const STYPE_DEVICE_MEM_ALLOC_DESC: u32 = 0x15;
const STYPE_HOST_MEM_ALLOC_DESC: u32 = 0x16;
const STYPE_MODULE_DESC: u32 = 0x1b;
const STYPE_KERNEL_DESC: u32 = 0x1d;
const STYPE_KERNEL_PROPERTIES: u32 = 0x1e;

/// `ZE_DEVICE_TYPE_CPU` (`GPU` is 1).
const ZE_DEVICE_TYPE_CPU: u32 = 2;
/// `ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COMPUTE`.
const ZE_QUEUE_GROUP_COMPUTE: u32 = 1;
/// `ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS`.
const ZE_QUEUE_MODE_ASYNCHRONOUS: u32 = 2;
/// `ZE_MODULE_FORMAT_IL_SPIRV`.
const ZE_MODULE_FORMAT_IL_SPIRV: u32 = 0;
/// `ZE_EVENT_POOL_FLAG_HOST_VISIBLE`.
const ZE_EVENT_POOL_FLAG_HOST_VISIBLE: u32 = 1;
/// `ZE_EVENT_SCOPE_FLAG_HOST`: the event's signal is visible to (and waited for by) the host.
const ZE_EVENT_SCOPE_FLAG_HOST: u32 = 4;
/// Intel's PCI vendor id.
const INTEL_VENDOR_ID: u32 = 0x8086;

/// Alignment of device allocations: as CUDA's, more than any vector load needs.
const DEVICE_ALIGNMENT: usize = 256;
/// Largest host staging buffer; bigger copies go through it in pieces.
const STAGING_CHUNK: usize = 32 << 20;

/// An opaque Level Zero handle (`ze_*_handle_t`).
type Handle = *mut c_void;

/// `ze_driver_properties_t`.
#[repr(C)]
struct DriverProperties {
    stype: u32,
    p_next: *mut c_void,
    uuid: [u8; 16],
    driver_version: u32,
}

/// `ze_device_properties_t`.
#[repr(C)]
struct DeviceProperties {
    stype: u32,
    p_next: *mut c_void,
    device_type: u32,
    vendor_id: u32,
    device_id: u32,
    flags: u32,
    subdevice_id: u32,
    core_clock_rate: u32,
    max_mem_alloc_size: u64,
    max_hardware_contexts: u32,
    max_command_queue_priority: u32,
    num_threads_per_eu: u32,
    physical_eu_simd_width: u32,
    num_eus_per_subslice: u32,
    num_subslices_per_slice: u32,
    num_slices: u32,
    timer_resolution: u64,
    timestamp_valid_bits: u32,
    kernel_timestamp_valid_bits: u32,
    uuid: [u8; 16],
    name: [u8; 256],
}

/// `ze_device_compute_properties_t`.
#[repr(C)]
struct ComputeProperties {
    stype: u32,
    p_next: *mut c_void,
    max_total_group_size: u32,
    max_group_size: [u32; 3],
    max_group_count: [u32; 3],
    max_shared_local_memory: u32,
    num_sub_group_sizes: u32,
    sub_group_sizes: [u32; 8],
}

/// `ze_device_module_properties_t`.
#[repr(C)]
struct ModuleProperties {
    stype: u32,
    p_next: *mut c_void,
    spirv_version_supported: u32,
    flags: u32,
    fp16_flags: u32,
    fp32_flags: u32,
    fp64_flags: u32,
    max_arguments_size: u32,
    printf_buffer_size: u32,
    native_kernel_supported: [u8; 16],
}

/// `ze_device_memory_properties_t`.
#[repr(C)]
struct MemoryProperties {
    stype: u32,
    p_next: *mut c_void,
    flags: u32,
    max_clock_rate: u32,
    max_bus_width: u32,
    total_size: u64,
    name: [u8; 256],
}

/// `ze_command_queue_group_properties_t`.
#[repr(C)]
struct QueueGroupProperties {
    stype: u32,
    p_next: *mut c_void,
    flags: u32,
    max_memory_fill_pattern_size: usize,
    num_queues: u32,
}

/// `ze_context_desc_t`.
#[repr(C)]
struct ContextDesc {
    stype: u32,
    p_next: *const c_void,
    flags: u32,
}

/// `ze_command_queue_desc_t`.
#[repr(C)]
struct CommandQueueDesc {
    stype: u32,
    p_next: *const c_void,
    ordinal: u32,
    index: u32,
    flags: u32,
    mode: u32,
    priority: u32,
}

/// `ze_device_mem_alloc_desc_t`.
#[repr(C)]
struct DeviceMemAllocDesc {
    stype: u32,
    p_next: *const c_void,
    flags: u32,
    ordinal: u32,
}

/// `ze_host_mem_alloc_desc_t`.
#[repr(C)]
struct HostMemAllocDesc {
    stype: u32,
    p_next: *const c_void,
    flags: u32,
}

/// `ze_module_desc_t`.
#[repr(C)]
struct ModuleDesc {
    stype: u32,
    p_next: *const c_void,
    format: u32,
    input_size: usize,
    p_input_module: *const u8,
    p_build_flags: *const c_char,
    p_constants: *const c_void,
}

/// `ze_kernel_desc_t`.
#[repr(C)]
struct KernelDesc {
    stype: u32,
    p_next: *const c_void,
    flags: u32,
    p_kernel_name: *const c_char,
}

/// `ze_kernel_properties_t`.
#[repr(C)]
struct KernelProperties {
    stype: u32,
    p_next: *mut c_void,
    num_kernel_args: u32,
    required_group_size: [u32; 3],
    required_num_sub_groups: u32,
    required_subgroup_size: u32,
    max_subgroup_size: u32,
    max_num_subgroups: u32,
    local_mem_size: u32,
    private_mem_size: u32,
    spill_mem_size: u32,
    uuid: [u8; 32],
}

/// `ze_group_count_t`.
#[repr(C)]
struct GroupCount {
    x: u32,
    y: u32,
    z: u32,
}

/// `ze_event_pool_desc_t`.
#[repr(C)]
struct EventPoolDesc {
    stype: u32,
    p_next: *const c_void,
    flags: u32,
    count: u32,
}

/// `ze_event_desc_t`.
#[repr(C)]
struct EventDesc {
    stype: u32,
    p_next: *const c_void,
    index: u32,
    signal: u32,
    wait: u32,
}

// Sizes and the offsets of the fields read or written, as `sizeof`/`offsetof` give them for
// ze_api.h 1.8.12 on x86-64 (measured with a C program against Debian's libze-dev).
const _: () = {
    assert!(size_of::<DriverProperties>() == 40);
    assert!(offset_of!(DriverProperties, driver_version) == 32);
    assert!(size_of::<DeviceProperties>() == 368);
    assert!(offset_of!(DeviceProperties, device_type) == 16);
    assert!(offset_of!(DeviceProperties, vendor_id) == 20);
    assert!(offset_of!(DeviceProperties, max_mem_alloc_size) == 40);
    assert!(offset_of!(DeviceProperties, timer_resolution) == 80);
    assert!(offset_of!(DeviceProperties, uuid) == 96);
    assert!(offset_of!(DeviceProperties, name) == 112);
    assert!(size_of::<ComputeProperties>() == 88);
    assert!(offset_of!(ComputeProperties, max_total_group_size) == 16);
    assert!(offset_of!(ComputeProperties, max_shared_local_memory) == 44);
    assert!(size_of::<ModuleProperties>() == 64);
    assert!(offset_of!(ModuleProperties, spirv_version_supported) == 16);
    assert!(size_of::<MemoryProperties>() == 296);
    assert!(offset_of!(MemoryProperties, total_size) == 32);
    assert!(size_of::<QueueGroupProperties>() == 40);
    assert!(offset_of!(QueueGroupProperties, max_memory_fill_pattern_size) == 24);
    assert!(offset_of!(QueueGroupProperties, num_queues) == 32);
    assert!(size_of::<ContextDesc>() == 24);
    assert!(size_of::<CommandQueueDesc>() == 40);
    assert!(offset_of!(CommandQueueDesc, ordinal) == 16);
    assert!(offset_of!(CommandQueueDesc, mode) == 28);
    assert!(offset_of!(CommandQueueDesc, priority) == 32);
    assert!(size_of::<DeviceMemAllocDesc>() == 24);
    assert!(size_of::<HostMemAllocDesc>() == 24);
    assert!(size_of::<ModuleDesc>() == 56);
    assert!(offset_of!(ModuleDesc, format) == 16);
    assert!(offset_of!(ModuleDesc, input_size) == 24);
    assert!(offset_of!(ModuleDesc, p_input_module) == 32);
    assert!(offset_of!(ModuleDesc, p_build_flags) == 40);
    assert!(offset_of!(ModuleDesc, p_constants) == 48);
    assert!(size_of::<KernelDesc>() == 32);
    assert!(offset_of!(KernelDesc, p_kernel_name) == 24);
    assert!(size_of::<KernelProperties>() == 96);
    assert!(offset_of!(KernelProperties, num_kernel_args) == 16);
    assert!(size_of::<GroupCount>() == 12);
    assert!(size_of::<EventPoolDesc>() == 24);
    assert!(offset_of!(EventPoolDesc, count) == 20);
    assert!(size_of::<EventDesc>() == 32);
    assert!(offset_of!(EventDesc, wait) == 24);
};

/// Marks the output structs above as plain C data: integers, raw pointers and byte arrays,
/// for which all-zero bytes are a valid value.
///
/// # Safety
/// Only for types whose every field accepts the all-zero bit pattern.
unsafe trait Zeroable: Sized {
    /// An all-zero value with `stype` set, ready to hand to a `zeXxxGetProperties` call.
    fn with_stype(stype: u32) -> Self {
        // SAFETY: the implementor guarantees all-zero is valid; `stype` is the first field
        // of every such struct (an u32 at offset 0, checked for the repr(C) layouts above).
        let mut v: Self = unsafe { std::mem::zeroed() };
        // SAFETY: as above, the first 4 bytes are the u32 `stype`.
        unsafe { ptr::write((&mut v as *mut Self).cast::<u32>(), stype) };
        v
    }
}

// SAFETY (all): integers, raw pointers and byte arrays only; `stype` first.
unsafe impl Zeroable for DriverProperties {}
// SAFETY: as above.
unsafe impl Zeroable for DeviceProperties {}
// SAFETY: as above.
unsafe impl Zeroable for ComputeProperties {}
// SAFETY: as above.
unsafe impl Zeroable for ModuleProperties {}
// SAFETY: as above.
unsafe impl Zeroable for MemoryProperties {}
// SAFETY: as above.
unsafe impl Zeroable for QueueGroupProperties {}
// SAFETY: as above.
unsafe impl Zeroable for KernelProperties {}

dyn_api! {
    /// The Level Zero entry points this backend calls (all core 1.0), resolved when the
    /// loader loads.
    struct ZeFns {
        init: fn(u32) -> u32 = "zeInit";
        driver_get: fn(*mut u32, *mut Handle) -> u32 = "zeDriverGet";
        driver_get_api_version: fn(Handle, *mut u32) -> u32 = "zeDriverGetApiVersion";
        driver_get_properties: fn(Handle, *mut DriverProperties) -> u32
            = "zeDriverGetProperties";
        device_get: fn(Handle, *mut u32, *mut Handle) -> u32 = "zeDeviceGet";
        device_get_properties: fn(Handle, *mut DeviceProperties) -> u32
            = "zeDeviceGetProperties";
        device_get_compute_properties: fn(Handle, *mut ComputeProperties) -> u32
            = "zeDeviceGetComputeProperties";
        device_get_module_properties: fn(Handle, *mut ModuleProperties) -> u32
            = "zeDeviceGetModuleProperties";
        device_get_memory_properties: fn(Handle, *mut u32, *mut MemoryProperties) -> u32
            = "zeDeviceGetMemoryProperties";
        device_get_queue_group_properties: fn(Handle, *mut u32, *mut QueueGroupProperties) -> u32
            = "zeDeviceGetCommandQueueGroupProperties";
        context_create: fn(Handle, *const ContextDesc, *mut Handle) -> u32 = "zeContextCreate";
        context_destroy: fn(Handle) -> u32 = "zeContextDestroy";
        command_list_create_immediate: fn(Handle, Handle, *const CommandQueueDesc, *mut Handle) -> u32
            = "zeCommandListCreateImmediate";
        command_list_destroy: fn(Handle) -> u32 = "zeCommandListDestroy";
        append_barrier: fn(Handle, Handle, u32, *mut Handle) -> u32
            = "zeCommandListAppendBarrier";
        append_memory_copy: fn(Handle, *mut c_void, *const c_void, usize, Handle, u32, *mut Handle) -> u32
            = "zeCommandListAppendMemoryCopy";
        append_memory_fill: fn(Handle, *mut c_void, *const c_void, usize, usize, Handle, u32, *mut Handle) -> u32
            = "zeCommandListAppendMemoryFill";
        append_launch_kernel: fn(Handle, Handle, *const GroupCount, Handle, u32, *mut Handle) -> u32
            = "zeCommandListAppendLaunchKernel";
        event_pool_create: fn(Handle, *const EventPoolDesc, u32, *mut Handle, *mut Handle) -> u32
            = "zeEventPoolCreate";
        event_pool_destroy: fn(Handle) -> u32 = "zeEventPoolDestroy";
        event_create: fn(Handle, *const EventDesc, *mut Handle) -> u32 = "zeEventCreate";
        event_destroy: fn(Handle) -> u32 = "zeEventDestroy";
        event_host_synchronize: fn(Handle, u64) -> u32 = "zeEventHostSynchronize";
        event_host_reset: fn(Handle) -> u32 = "zeEventHostReset";
        mem_alloc_device: fn(Handle, *const DeviceMemAllocDesc, usize, usize, Handle, *mut *mut c_void) -> u32
            = "zeMemAllocDevice";
        mem_alloc_host: fn(Handle, *const HostMemAllocDesc, usize, usize, *mut *mut c_void) -> u32
            = "zeMemAllocHost";
        mem_free: fn(Handle, *mut c_void) -> u32 = "zeMemFree";
        module_create: fn(Handle, Handle, *const ModuleDesc, *mut Handle, *mut Handle) -> u32
            = "zeModuleCreate";
        module_destroy: fn(Handle) -> u32 = "zeModuleDestroy";
        build_log_get_string: fn(Handle, *mut usize, *mut c_char) -> u32
            = "zeModuleBuildLogGetString";
        build_log_destroy: fn(Handle) -> u32 = "zeModuleBuildLogDestroy";
        module_get_kernel_names: fn(Handle, *mut u32, *mut *const c_char) -> u32
            = "zeModuleGetKernelNames";
        kernel_create: fn(Handle, *const KernelDesc, *mut Handle) -> u32 = "zeKernelCreate";
        kernel_destroy: fn(Handle) -> u32 = "zeKernelDestroy";
        kernel_get_properties: fn(Handle, *mut KernelProperties) -> u32
            = "zeKernelGetProperties";
        kernel_set_group_size: fn(Handle, u32, u32, u32) -> u32 = "zeKernelSetGroupSize";
        kernel_set_argument_value: fn(Handle, u32, usize, *const c_void) -> u32
            = "zeKernelSetArgumentValue";
    }
}

/// The loaded and initialised loader.
struct Ze {
    fns: ZeFns,
    /// Where the loader was found (for messages).
    path: String,
}

/// The `ze_result_t` name of a code (ze_api.h 1.8), or `""` for one this table lacks.
fn result_name(code: u32) -> &'static str {
    match code {
        0 => "ZE_RESULT_SUCCESS",
        1 => "ZE_RESULT_NOT_READY",
        0x7000_0001 => "ZE_RESULT_ERROR_DEVICE_LOST",
        0x7000_0002 => "ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY",
        0x7000_0003 => "ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY",
        0x7000_0004 => "ZE_RESULT_ERROR_MODULE_BUILD_FAILURE",
        0x7000_0005 => "ZE_RESULT_ERROR_MODULE_LINK_FAILURE",
        0x7000_0006 => "ZE_RESULT_ERROR_DEVICE_REQUIRES_RESET",
        0x7000_0007 => "ZE_RESULT_ERROR_DEVICE_IN_LOW_POWER_STATE",
        0x7001_0000 => "ZE_RESULT_ERROR_INSUFFICIENT_PERMISSIONS",
        0x7001_0001 => "ZE_RESULT_ERROR_NOT_AVAILABLE",
        0x7002_0000 => "ZE_RESULT_ERROR_DEPENDENCY_UNAVAILABLE",
        0x7002_0001 => "ZE_RESULT_WARNING_DROPPED_DATA",
        0x7800_0001 => "ZE_RESULT_ERROR_UNINITIALIZED",
        0x7800_0002 => "ZE_RESULT_ERROR_UNSUPPORTED_VERSION",
        0x7800_0003 => "ZE_RESULT_ERROR_UNSUPPORTED_FEATURE",
        0x7800_0004 => "ZE_RESULT_ERROR_INVALID_ARGUMENT",
        0x7800_0005 => "ZE_RESULT_ERROR_INVALID_NULL_HANDLE",
        0x7800_0006 => "ZE_RESULT_ERROR_HANDLE_OBJECT_IN_USE",
        0x7800_0007 => "ZE_RESULT_ERROR_INVALID_NULL_POINTER",
        0x7800_0008 => "ZE_RESULT_ERROR_INVALID_SIZE",
        0x7800_0009 => "ZE_RESULT_ERROR_UNSUPPORTED_SIZE",
        0x7800_000a => "ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT",
        0x7800_000b => "ZE_RESULT_ERROR_INVALID_SYNCHRONIZATION_OBJECT",
        0x7800_000c => "ZE_RESULT_ERROR_INVALID_ENUMERATION",
        0x7800_000d => "ZE_RESULT_ERROR_UNSUPPORTED_ENUMERATION",
        0x7800_000e => "ZE_RESULT_ERROR_UNSUPPORTED_IMAGE_FORMAT",
        0x7800_000f => "ZE_RESULT_ERROR_INVALID_NATIVE_BINARY",
        0x7800_0010 => "ZE_RESULT_ERROR_INVALID_GLOBAL_NAME",
        0x7800_0011 => "ZE_RESULT_ERROR_INVALID_KERNEL_NAME",
        0x7800_0012 => "ZE_RESULT_ERROR_INVALID_FUNCTION_NAME",
        0x7800_0013 => "ZE_RESULT_ERROR_INVALID_GROUP_SIZE_DIMENSION",
        0x7800_0014 => "ZE_RESULT_ERROR_INVALID_GLOBAL_WIDTH_DIMENSION",
        0x7800_0015 => "ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX",
        0x7800_0016 => "ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE",
        0x7800_0017 => "ZE_RESULT_ERROR_INVALID_KERNEL_ATTRIBUTE_VALUE",
        0x7800_0018 => "ZE_RESULT_ERROR_INVALID_MODULE_UNLINKED",
        0x7800_0019 => "ZE_RESULT_ERROR_INVALID_COMMAND_LIST_TYPE",
        0x7800_001a => "ZE_RESULT_ERROR_OVERLAPPING_REGIONS",
        0x7800_001b => "ZE_RESULT_WARNING_ACTION_REQUIRED",
        0x7fff_fffe => "ZE_RESULT_ERROR_UNKNOWN",
        _ => "",
    }
}

/// `0x78000001 (ZE_RESULT_ERROR_UNINITIALIZED)`.
fn describe(code: u32) -> String {
    match result_name(code) {
        "" => format!("{code:#010x}"),
        name => format!("{code:#010x} ({name})"),
    }
}

fn check(call: &'static str, code: u32) -> Result<()> {
    if code == ZE_SUCCESS {
        Ok(())
    } else {
        Err(RuntimeError::Driver {
            backend: KIND,
            call,
            detail: describe(code),
        })
    }
}

/// Loads the loader, resolves every symbol and runs `zeInit(ZE_INIT_FLAG_GPU_ONLY)`.
fn load() -> std::result::Result<Ze, LoadFailure> {
    let opened = open_library(
        ZE_LIB_ENV,
        || vec!["libze_loader.so.1".to_owned(), "libze_loader.so".to_owned()],
        "the Level Zero loader",
        "the Level Zero loader",
    )?;
    let path = opened.path;
    // SAFETY: the declarations above match ze_api.h (C enums are 32-bit ints there, and
    // flags are u32 typedefs).
    let fns = unsafe { ZeFns::resolve(opened.library) }.map_err(|missing| {
        LoadFailure::NotFound(format!(
            "{path} lacks {} (not the Level Zero loader)",
            missing.join(", ")
        ))
    })?;
    // SAFETY: zeInit takes flags and returns a code. Its failure ends the matter: nothing
    // else may be called after it (see the module docs).
    let code = unsafe { (fns.init)(ZE_INIT_FLAG_GPU_ONLY) };
    if code != ZE_SUCCESS {
        return Err(LoadFailure::NoDevice(format!(
            "zeInit(ZE_INIT_FLAG_GPU_ONLY) returned {} ({path} loaded; it found no Level Zero \
             GPU driver or no GPU)",
            describe(code)
        )));
    }
    Ok(Ze { fns, path })
}

/// The process's Level Zero loader, loaded and initialised on first use. The outcome is
/// kept: `zeInit` runs once per process, and after a failed one nothing else is called.
fn api() -> Result<&'static Ze> {
    static API: OnceLock<std::result::Result<Ze, LoadFailure>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|failure| failure.to_error(KIND, HINT, NO_DEVICE_HINT))
}

/// Checks that the Level Zero loader loads, has every entry point this backend calls and
/// initialises for GPUs (`zeInit`), without touching a device.
///
/// Errors: [`RuntimeError::DriverNotFound`] when libze_loader is missing or lacks a symbol,
/// [`RuntimeError::NoDevice`] when `zeInit` fails, with the result code named.
pub fn probe_driver() -> Result<()> {
    api().map(|_| ())
}

/// The two-call pattern of the `zeXxxGet` functions: ask for the count, then fill.
fn get_all<T>(
    call: &'static str,
    mut f: impl FnMut(*mut u32, *mut T) -> u32,
    fresh: impl Fn() -> T,
) -> Result<Vec<T>> {
    let mut count = 0u32;
    check(call, f(&mut count, ptr::null_mut()))?;
    let mut items: Vec<T> = (0..count).map(|_| fresh()).collect();
    check(call, f(&mut count, items.as_mut_ptr()))?;
    items.truncate(count as usize);
    Ok(items)
}

/// One device found by enumeration.
struct Found {
    driver: Handle,
    device: Handle,
    info: DeviceInfo,
}

/// Intel's driver version encoding (major.minor.build, as `sycl-ls` prints it).
fn driver_version_text(v: u32) -> String {
    format!("{}.{}.{}", v >> 24, (v >> 16) & 0xff, v & 0xffff)
}

fn describe_device(
    ze: &Ze,
    ordinal: usize,
    device: Handle,
    api_version: u32,
    driver_version: u32,
) -> Result<DeviceInfo> {
    let f = &ze.fns;
    let mut props = DeviceProperties::with_stype(STYPE_DEVICE_PROPERTIES);
    // SAFETY: `device` came from zeDeviceGet; the struct has the 1.0 layout with stype set.
    check("zeDeviceGetProperties", unsafe {
        (f.device_get_properties)(device, &mut props)
    })?;
    let mut compute = ComputeProperties::with_stype(STYPE_DEVICE_COMPUTE_PROPERTIES);
    // SAFETY: as above.
    check("zeDeviceGetComputeProperties", unsafe {
        (f.device_get_compute_properties)(device, &mut compute)
    })?;
    let mut module = ModuleProperties::with_stype(STYPE_DEVICE_MODULE_PROPERTIES);
    // SAFETY: as above.
    check("zeDeviceGetModuleProperties", unsafe {
        (f.device_get_module_properties)(device, &mut module)
    })?;
    let memories = get_all(
        "zeDeviceGetMemoryProperties",
        // SAFETY: count and array pointers from get_all; each element has stype set.
        |n, out| unsafe { (f.device_get_memory_properties)(device, n, out) },
        || MemoryProperties::with_stype(STYPE_DEVICE_MEMORY_PROPERTIES),
    )?;
    let spirv = module.spirv_version_supported;
    Ok(DeviceInfo {
        backend: KIND,
        ordinal,
        name: dylib::c_chars(&props.name),
        vendor: if props.vendor_id == INTEL_VENDOR_ID {
            "Intel".into()
        } else {
            format!("PCI vendor {:#06x}", props.vendor_id)
        },
        driver_version: format!(
            "Level Zero {}.{}, driver {}",
            api_version >> 16,
            api_version & 0xffff,
            driver_version_text(driver_version)
        ),
        total_memory: memories.iter().map(|m| m.total_size).sum(),
        max_threads_per_block: compute.max_total_group_size as usize,
        max_shared_memory_per_block: compute.max_shared_local_memory as usize,
        compute_capability: None,
        arch: None,
        il_version: Some(format!("SPIR-V_{}.{}", spirv >> 16, spirv & 0xffff)),
        is_cpu: props.device_type == ZE_DEVICE_TYPE_CPU,
    })
}

/// Every device of every driver, in the loader's order.
fn find_devices(ze: &Ze) -> Result<Vec<Found>> {
    let f = &ze.fns;
    let drivers = get_all(
        "zeDriverGet",
        // SAFETY: count and array pointers from get_all; zeInit succeeded (see `load`).
        |n, out| unsafe { (f.driver_get)(n, out) },
        ptr::null_mut,
    )?;
    let mut found = Vec::new();
    for &driver in &drivers {
        let mut api_version = 0u32;
        // SAFETY: `driver` came from zeDriverGet; writes one u32.
        check("zeDriverGetApiVersion", unsafe {
            (f.driver_get_api_version)(driver, &mut api_version)
        })?;
        let mut dprops = DriverProperties::with_stype(STYPE_DRIVER_PROPERTIES);
        // SAFETY: as above; the struct has the 1.0 layout with stype set.
        check("zeDriverGetProperties", unsafe {
            (f.driver_get_properties)(driver, &mut dprops)
        })?;
        let devices = get_all(
            "zeDeviceGet",
            // SAFETY: count and array pointers from get_all.
            |n, out| unsafe { (f.device_get)(driver, n, out) },
            ptr::null_mut,
        )?;
        for device in devices {
            let info =
                describe_device(ze, found.len(), device, api_version, dprops.driver_version)?;
            found.push(Found {
                driver,
                device,
                info,
            });
        }
    }
    if found.is_empty() {
        return Err(RuntimeError::NoDevice {
            backend: KIND,
            detail: format!(
                "{} Level Zero driver(s), no device ({} loaded)",
                drivers.len(),
                ze.path
            ),
            hint: NO_DEVICE_HINT,
        });
    }
    Ok(found)
}

/// The parts of the command list that calls must not use from two threads at once.
struct Queue {
    /// The immediate command list.
    list: Handle,
    /// Host-visible event signalled by `synchronize`'s barrier.
    event: Handle,
    /// Host USM staging buffer for copies (null until the first copy).
    staging: *mut c_void,
    staging_len: usize,
}

/// The context and command list of an opened device, shared by every buffer, module and
/// kernel made from it so that they can wait for pending work before freeing themselves.
struct Shared {
    ze: &'static Ze,
    context: Handle,
    device: Handle,
    event_pool: Handle,
    queue: Mutex<Queue>,
}

// SAFETY: Level Zero handles may be used from any thread, except that a command list (and a
// kernel's argument state) must not be used by two threads at once; the command list, its
// event and the staging buffer sit behind `queue`'s mutex, and kernels behind their own.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Appends a barrier after a command, so that the next command waits for it (Level Zero
    /// does not order a list's commands by itself).
    fn serialize(&self, q: &Queue) -> Result<()> {
        // SAFETY: `list` is this context's immediate list, used under the queue lock.
        check("zeCommandListAppendBarrier", unsafe {
            (self.ze.fns.append_barrier)(q.list, ptr::null_mut(), 0, ptr::null_mut())
        })
    }

    /// Waits until every command appended so far has finished.
    fn wait(&self, q: &Queue) -> Result<()> {
        let f = &self.ze.fns;
        // SAFETY: list and event belong to this context and are used under the queue lock;
        // the barrier signals the event once everything before it is done.
        check("zeCommandListAppendBarrier", unsafe {
            (f.append_barrier)(q.list, q.event, 0, ptr::null_mut())
        })?;
        // SAFETY: as above; waits without a timeout, like cuStreamSynchronize.
        check("zeEventHostSynchronize", unsafe {
            (f.event_host_synchronize)(q.event, u64::MAX)
        })?;
        // SAFETY: the event is signalled and nothing else waits on it.
        check("zeEventHostReset", unsafe { (f.event_host_reset)(q.event) })
    }

    /// The staging buffer, at least `len` bytes. Callers wait for their copies before
    /// returning, so an older, smaller buffer is idle and can be freed.
    fn staging(&self, q: &mut Queue, len: usize) -> Result<*mut c_void> {
        if q.staging_len >= len && !q.staging.is_null() {
            return Ok(q.staging);
        }
        let f = &self.ze.fns;
        if !q.staging.is_null() {
            // SAFETY: allocated below with this context; idle (see above).
            unsafe { (f.mem_free)(self.context, q.staging) };
            q.staging = ptr::null_mut();
            q.staging_len = 0;
        }
        let desc = HostMemAllocDesc {
            stype: STYPE_HOST_MEM_ALLOC_DESC,
            p_next: ptr::null(),
            flags: 0,
        };
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: valid descriptor, non-zero size, power-of-two alignment; writes one pointer.
        check("zeMemAllocHost", unsafe {
            (f.mem_alloc_host)(self.context, &desc, len.max(1), 64, &mut p)
        })?;
        q.staging = p;
        q.staging_len = len.max(1);
        Ok(p)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let f = &self.ze.fns;
        let q = self.queue.get_mut().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: every handle was created for this context and is destroyed once, children
        // first; null ones (a failed `open`) are skipped. Buffers, modules and kernels hold
        // an Arc to this struct, so none is left when it drops. Errors cannot be reported
        // from drop.
        unsafe {
            if !q.list.is_null() && !q.event.is_null() {
                (f.append_barrier)(q.list, q.event, 0, ptr::null_mut());
                (f.event_host_synchronize)(q.event, u64::MAX);
            }
            if !q.staging.is_null() {
                (f.mem_free)(self.context, q.staging);
            }
            if !q.event.is_null() {
                (f.event_destroy)(q.event);
            }
            if !self.event_pool.is_null() {
                (f.event_pool_destroy)(self.event_pool);
            }
            if !q.list.is_null() {
                (f.command_list_destroy)(q.list);
            }
            if !self.context.is_null() {
                (f.context_destroy)(self.context);
            }
        }
    }
}

/// Device memory from `zeMemAllocDevice` (at least one byte), freed on drop once the device
/// is idle.
struct ZeBuffer {
    ptr: u64,
    shared: Arc<Shared>,
}

impl Drop for ZeBuffer {
    fn drop(&mut self) {
        let q = lock(&self.shared.queue);
        // Kernels may still read the buffer: zeMemFree does not wait for them.
        let _ = self.shared.wait(&q);
        // SAFETY: allocated with this context, freed once, no command uses it any more.
        unsafe { (self.shared.ze.fns.mem_free)(self.shared.context, self.ptr as *mut c_void) };
    }
}

/// A built module.
struct ZeModuleObj {
    handle: usize,
    shared: Arc<Shared>,
}

impl Drop for ZeModuleObj {
    fn drop(&mut self) {
        let q = lock(&self.shared.queue);
        let _ = self.shared.wait(&q);
        // SAFETY: created by zeModuleCreate, destroyed once; its kernels are gone (each
        // holds the module handle) and no launch is pending.
        unsafe { (self.shared.ze.fns.module_destroy)(self.handle as Handle) };
    }
}

/// A kernel handle behind the mutex that makes "set arguments, then append" atomic.
struct KernelPtr(Handle);

// SAFETY: a kernel handle may move between threads; its argument state is only touched
// under the mutex that holds it.
unsafe impl Send for KernelPtr {}

/// A kernel; keeps its module alive.
struct ZeKernelObj {
    handle: Mutex<KernelPtr>,
    num_args: u32,
    shared: Arc<Shared>,
    // Dropped after `Drop::drop` below has destroyed the kernel.
    _module: ModuleHandle,
}

impl Drop for ZeKernelObj {
    fn drop(&mut self) {
        {
            let q = lock(&self.shared.queue);
            let _ = self.shared.wait(&q);
        }
        let k = self
            .handle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: created by zeKernelCreate, destroyed once, no launch pending.
        unsafe { (self.shared.ze.fns.kernel_destroy)(k.0) };
    }
}

/// An opened Intel GPU: a context, an immediate command list on a compute queue group, and
/// an event to wait on.
pub struct LevelZeroBackend {
    id: DeviceId,
    info: DeviceInfo,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LevelZeroBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LevelZeroBackend")
            .field("id", &self.id)
            .field("info", &self.info)
            .field("loader", &self.shared.ze.path)
            .finish_non_exhaustive()
    }
}

impl LevelZeroBackend {
    /// Lists the devices of every Level Zero GPU driver.
    ///
    /// Errors: [`RuntimeError::DriverNotFound`] without libze_loader (or with one that lacks
    /// an entry point), [`RuntimeError::NoDevice`] when `zeInit` fails (no GPU driver: the
    /// usual case without an Intel GPU) or the drivers have no device.
    pub fn enumerate() -> Result<Vec<DeviceInfo>> {
        Ok(find_devices(api()?)?.into_iter().map(|d| d.info).collect())
    }

    /// Opens device `ordinal` of [`LevelZeroBackend::enumerate`]'s list.
    pub fn open(ordinal: usize) -> Result<Self> {
        let ze = api()?;
        let found = take_ordinal(KIND, find_devices(ze)?, ordinal)?;
        let f = &ze.fns;
        let mut shared = Shared {
            ze,
            context: ptr::null_mut(),
            device: found.device,
            event_pool: ptr::null_mut(),
            queue: Mutex::new(Queue {
                list: ptr::null_mut(),
                event: ptr::null_mut(),
                staging: ptr::null_mut(),
                staging_len: 0,
            }),
        };
        // From here on, `shared`'s Drop destroys whatever was created if a step fails.
        let ctx_desc = ContextDesc {
            stype: STYPE_CONTEXT_DESC,
            p_next: ptr::null(),
            flags: 0,
        };
        // SAFETY: the driver handle came from zeDriverGet; writes one handle.
        check("zeContextCreate", unsafe {
            (f.context_create)(found.driver, &ctx_desc, &mut shared.context)
        })?;
        let groups = get_all(
            "zeDeviceGetCommandQueueGroupProperties",
            // SAFETY: count and array pointers from get_all; each element has stype set.
            |n, out| unsafe { (f.device_get_queue_group_properties)(found.device, n, out) },
            || QueueGroupProperties::with_stype(STYPE_COMMAND_QUEUE_GROUP_PROPERTIES),
        )?;
        let Some(ordinal_of_compute) = groups
            .iter()
            .position(|g| g.flags & ZE_QUEUE_GROUP_COMPUTE != 0 && g.num_queues > 0)
        else {
            return Err(RuntimeError::NoDevice {
                backend: KIND,
                detail: format!(
                    "{} has no compute queue group ({} group(s))",
                    found.info.name,
                    groups.len()
                ),
                hint: NO_DEVICE_HINT,
            });
        };
        let queue_desc = CommandQueueDesc {
            stype: STYPE_COMMAND_QUEUE_DESC,
            p_next: ptr::null(),
            ordinal: ordinal_of_compute as u32,
            index: 0,
            flags: 0,
            mode: ZE_QUEUE_MODE_ASYNCHRONOUS,
            priority: 0,
        };
        let q = shared
            .queue
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        // SAFETY: context and device are valid; writes one handle.
        check("zeCommandListCreateImmediate", unsafe {
            (f.command_list_create_immediate)(
                shared.context,
                found.device,
                &queue_desc,
                &mut q.list,
            )
        })?;
        let pool_desc = EventPoolDesc {
            stype: STYPE_EVENT_POOL_DESC,
            p_next: ptr::null(),
            flags: ZE_EVENT_POOL_FLAG_HOST_VISIBLE,
            count: 1,
        };
        let mut device = found.device;
        // SAFETY: one device handle in a local array; writes one handle.
        check("zeEventPoolCreate", unsafe {
            (f.event_pool_create)(
                shared.context,
                &pool_desc,
                1,
                &mut device,
                &mut shared.event_pool,
            )
        })?;
        let event_desc = EventDesc {
            stype: STYPE_EVENT_DESC,
            p_next: ptr::null(),
            index: 0,
            signal: ZE_EVENT_SCOPE_FLAG_HOST,
            wait: ZE_EVENT_SCOPE_FLAG_HOST,
        };
        // SAFETY: index 0 of a pool of one; writes one handle.
        check("zeEventCreate", unsafe {
            (f.event_create)(shared.event_pool, &event_desc, &mut q.event)
        })?;
        Ok(LevelZeroBackend {
            id: DeviceId::fresh(),
            info: found.info,
            shared: Arc::new(shared),
        })
    }

    fn buffer<'a>(&self, raw: &'a RawBuffer, what: &str) -> Result<&'a ZeBuffer> {
        payload(self, raw, || what.to_owned())
    }

    fn fns(&self) -> &'static ZeFns {
        &self.shared.ze.fns
    }

    /// The names of the kernels in `module`, for "kernel not found" messages.
    fn kernel_names(&self, module: Handle) -> Option<String> {
        let f = self.fns();
        let names = get_all(
            "zeModuleGetKernelNames",
            // SAFETY: count and array pointers from get_all; the names are owned by the
            // module, which outlives this call.
            |n, out| unsafe { (f.module_get_kernel_names)(module, n, out) },
            ptr::null,
        )
        .ok()?;
        let names: Vec<String> = names
            .into_iter()
            .filter(|p| !p.is_null())
            // SAFETY: non-null NUL-terminated strings owned by the module.
            .map(|p| {
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        Some(names.join(", "))
    }
}

/// The text of a module build log, destroying the log.
fn take_build_log(f: &ZeFns, log: Handle) -> String {
    if log.is_null() {
        return String::new();
    }
    let mut size = 0usize;
    // SAFETY: `log` came from zeModuleCreate; the first call reports the size.
    let mut text = String::new();
    if unsafe { (f.build_log_get_string)(log, &mut size, ptr::null_mut()) } == ZE_SUCCESS
        && size > 0
    {
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has the size the driver asked for.
        if unsafe { (f.build_log_get_string)(log, &mut size, buf.as_mut_ptr().cast::<c_char>()) }
            == ZE_SUCCESS
        {
            text = dylib::c_chars(&buf);
        }
    }
    // SAFETY: destroyed once, after its last use.
    unsafe { (f.build_log_destroy)(log) };
    text
}

impl Backend for LevelZeroBackend {
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
        Self::enumerate()
    }

    fn allocate(&self, bytes: usize) -> Result<RawBuffer> {
        let desc = DeviceMemAllocDesc {
            stype: STYPE_DEVICE_MEM_ALLOC_DESC,
            p_next: ptr::null(),
            flags: 0,
            ordinal: 0,
        };
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: valid descriptor; Level Zero rejects 0-byte allocations, so at least one
        // byte; power-of-two alignment; writes one pointer.
        check("zeMemAllocDevice", unsafe {
            (self.fns().mem_alloc_device)(
                self.shared.context,
                &desc,
                bytes.max(1),
                DEVICE_ALIGNMENT,
                self.shared.device,
                &mut p,
            )
        })?;
        Ok(RawBuffer::new(
            self.id,
            bytes,
            Box::new(ZeBuffer {
                ptr: p as u64,
                shared: self.shared.clone(),
            }),
        ))
    }

    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> Result<()> {
        check_copy("upload", dst, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let buf = self.buffer(dst, "upload destination")?;
        let mut q = lock(&self.shared.queue);
        let staging = self.shared.staging(&mut q, data.len().min(STAGING_CHUNK))?;
        for (k, part) in data.chunks(STAGING_CHUNK).enumerate() {
            let offset = (k * STAGING_CHUNK) as u64;
            // SAFETY: the staging buffer holds at least STAGING_CHUNK (or data.len()) bytes
            // and is idle (every copy through it is waited for).
            unsafe { ptr::copy_nonoverlapping(part.as_ptr(), staging.cast::<u8>(), part.len()) };
            // SAFETY: the destination range lies inside the allocation (checked); the
            // source is host USM, which the device reads.
            check("zeCommandListAppendMemoryCopy", unsafe {
                (self.fns().append_memory_copy)(
                    q.list,
                    (buf.ptr + offset) as *mut c_void,
                    staging,
                    part.len(),
                    ptr::null_mut(),
                    0,
                    ptr::null_mut(),
                )
            })?;
            self.shared.wait(&q)?;
        }
        Ok(())
    }

    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> Result<()> {
        check_copy("download", src, out.len())?;
        if out.is_empty() {
            return self.synchronize();
        }
        let buf = self.buffer(src, "download source")?;
        let mut q = lock(&self.shared.queue);
        let staging = self.shared.staging(&mut q, out.len().min(STAGING_CHUNK))?;
        for (k, part) in out.chunks_mut(STAGING_CHUNK).enumerate() {
            let offset = (k * STAGING_CHUNK) as u64;
            // SAFETY: the source range lies inside the allocation (checked); the copy waits
            // for every earlier command (each is followed by a barrier).
            check("zeCommandListAppendMemoryCopy", unsafe {
                (self.fns().append_memory_copy)(
                    q.list,
                    staging,
                    (buf.ptr + offset) as *const c_void,
                    part.len(),
                    ptr::null_mut(),
                    0,
                    ptr::null_mut(),
                )
            })?;
            self.shared.wait(&q)?;
            // SAFETY: the copy has landed in the staging buffer (waited for above).
            unsafe {
                ptr::copy_nonoverlapping(staging.cast::<u8>(), part.as_mut_ptr(), part.len())
            };
        }
        Ok(())
    }

    fn fill(&self, dst: &RawBuffer, pattern: FillPattern) -> Result<()> {
        check_fill(dst, pattern)?;
        let n = dst.len_bytes();
        if n == 0 {
            return Ok(());
        }
        let buf = self.buffer(dst, "fill destination")?;
        let bytes: [u8; 4] = match pattern {
            FillPattern::U8(v) => [v, 0, 0, 0],
            FillPattern::U16(v) => {
                let b = v.to_le_bytes();
                [b[0], b[1], 0, 0]
            }
            FillPattern::U32(v) => v.to_le_bytes(),
        };
        let q = lock(&self.shared.queue);
        // SAFETY: `n` bytes inside the allocation, a whole number of patterns (checked);
        // the pattern lives on this stack frame, and the fill is waited for before return.
        check("zeCommandListAppendMemoryFill", unsafe {
            (self.fns().append_memory_fill)(
                q.list,
                buf.ptr as *mut c_void,
                bytes.as_ptr().cast::<c_void>(),
                pattern.size_bytes(),
                n,
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            )
        })?;
        self.shared.wait(&q)
    }

    fn load_module(&self, image: &[u8]) -> Result<ModuleHandle> {
        check_spirv(image)?;
        let f = self.fns();
        let desc = ModuleDesc {
            stype: STYPE_MODULE_DESC,
            p_next: ptr::null(),
            format: ZE_MODULE_FORMAT_IL_SPIRV,
            input_size: image.len(),
            p_input_module: image.as_ptr(),
            p_build_flags: ptr::null(),
            p_constants: ptr::null(),
        };
        let mut module: Handle = ptr::null_mut();
        let mut log: Handle = ptr::null_mut();
        // SAFETY: the descriptor points at `image`, alive for the call (the driver compiles
        // it before returning); writes two handles.
        let code = unsafe {
            (f.module_create)(
                self.shared.context,
                self.shared.device,
                &desc,
                &mut module,
                &mut log,
            )
        };
        let log = take_build_log(f, log);
        if code != ZE_SUCCESS {
            if !module.is_null() {
                // SAFETY: a handle the failed call left behind, destroyed once.
                unsafe { (f.module_destroy)(module) };
            }
            return Err(RuntimeError::ModuleBuild {
                backend: KIND,
                detail: format!("zeModuleCreate: {}", describe(code)),
                log,
            });
        }
        Ok(ModuleHandle::new(
            self.id,
            Arc::new(ZeModuleObj {
                handle: module as usize,
                shared: self.shared.clone(),
            }),
        ))
    }

    fn kernel(&self, module: &ModuleHandle, name: &str) -> Result<KernelHandle> {
        let m: &ZeModuleObj = payload(self, module, || "module".into())?;
        let mh = m.handle as Handle;
        let Ok(cname) = CString::new(name) else {
            return Err(nul_in_kernel_name(name, self.kernel_names(mh)));
        };
        let f = self.fns();
        let desc = KernelDesc {
            stype: STYPE_KERNEL_DESC,
            p_next: ptr::null(),
            flags: 0,
            p_kernel_name: cname.as_ptr(),
        };
        let mut k: Handle = ptr::null_mut();
        // SAFETY: the module is alive (the handle keeps it); writes one handle.
        let code = unsafe { (f.kernel_create)(mh, &desc, &mut k) };
        if code != ZE_SUCCESS {
            return Err(RuntimeError::KernelNotFound {
                name: name.to_owned(),
                detail: format!("zeKernelCreate: {}", describe(code)),
                available: self.kernel_names(mh),
            });
        }
        let mut props = KernelProperties::with_stype(STYPE_KERNEL_PROPERTIES);
        // SAFETY: `k` was just created; the struct has the 1.0 layout with stype set.
        let code = unsafe { (f.kernel_get_properties)(k, &mut props) };
        if code != ZE_SUCCESS {
            // SAFETY: destroyed once; never handed out.
            unsafe { (f.kernel_destroy)(k) };
            return Err(RuntimeError::Driver {
                backend: KIND,
                call: "zeKernelGetProperties",
                detail: describe(code),
            });
        }
        Ok(KernelHandle::new(
            self.id,
            name,
            Arc::new(ZeKernelObj {
                handle: Mutex::new(KernelPtr(k)),
                num_args: props.num_kernel_args,
                shared: self.shared.clone(),
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
        let k: &ZeKernelObj = payload(self, kernel, || format!("kernel `{kname}`"))?;
        check_arg_count(kname, k.num_args, args.len(), config)?;
        let values = resolve_args(kname, args, |raw, what| Ok(self.buffer(raw, what)?.ptr))?;
        if config.is_empty() {
            return Ok(());
        }
        let f = self.fns();
        let kh = lock(&k.handle);
        let [bx, by, bz] = config.block;
        // SAFETY: the kernel is alive and its argument state is ours (lock held).
        let code = unsafe { (f.kernel_set_group_size)(kh.0, bx, by, bz) };
        if code != ZE_SUCCESS {
            return Err(RuntimeError::Launch {
                kernel: kname.to_owned(),
                detail: format!(
                    "zeKernelSetGroupSize (block {:?}): {}",
                    config.block,
                    describe(code)
                ),
            });
        }
        for arg in ze_arguments(&values, config.shared_mem_bytes) {
            let value = arg
                .bytes()
                .map_or(ptr::null(), |b| b.as_ptr().cast::<c_void>());
            // SAFETY: index below the kernel's argument count (checked); `value` points at
            // `size` bytes (or is null for local memory); the driver copies them now.
            let code = unsafe { (f.kernel_set_argument_value)(kh.0, arg.index, arg.size, value) };
            if code != ZE_SUCCESS {
                let i = arg.index as usize;
                return Err(match values.get(i) {
                    Some(v) => RuntimeError::ArgKind {
                        arg: format!("#{i} of `{kname}`"),
                        expected: "what the kernel declares".into(),
                        found: format!(
                            "{} of {} bytes (zeKernelSetArgumentValue: {})",
                            args.get(i).map_or("value", LaunchArg::kind_name),
                            v.size(),
                            describe(code)
                        ),
                    },
                    None => RuntimeError::Launch {
                        kernel: kname.to_owned(),
                        detail: format!(
                            "{} bytes of dynamic local memory as the last argument: {}",
                            config.shared_mem_bytes,
                            describe(code)
                        ),
                    },
                });
            }
        }
        let groups = GroupCount {
            x: config.grid[0],
            y: config.grid[1],
            z: config.grid[2],
        };
        let q = lock(&self.shared.queue);
        // SAFETY: every argument and the group size are set; the driver captures them and
        // the group count at append time.
        let code = unsafe {
            (f.append_launch_kernel)(q.list, kh.0, &groups, ptr::null_mut(), 0, ptr::null_mut())
        };
        if code != ZE_SUCCESS {
            return Err(RuntimeError::Launch {
                kernel: kname.to_owned(),
                detail: format!(
                    "zeCommandListAppendLaunchKernel (grid {:?}, block {:?}): {}",
                    config.grid,
                    config.block,
                    describe(code)
                ),
            });
        }
        self.shared.serialize(&q)
    }

    fn synchronize(&self) -> Result<()> {
        let q = lock(&self.shared.queue);
        self.shared.wait(&q)
    }
}
