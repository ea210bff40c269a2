//! OpenCL backend: runs SPIR-V kernels through `clCreateProgramWithIL`.
//!
//! `opencl3` (default feature `dynamic`) dlopens `libOpenCL.so.1` at run time, so this
//! compiles and links without any OpenCL installed; a missing loader or an ICD without an
//! IL-capable device is an error value. In CI it runs the SPIR-V kernels on Intel's CPU
//! OpenCL runtime (`scripts/setup-opencl.sh`); on an Intel GPU machine it is the fallback
//! path after Level Zero (`DeviceKind::Auto` tries Level Zero first), with the same SPIR-V.

use std::ptr;
use std::sync::{Arc, Mutex};

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::device::{
    CL_DEVICE_TYPE_ACCELERATOR, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_GPU,
    Device as ClDevice,
};
use opencl3::error_codes::{
    CL_BUILD_PROGRAM_FAILURE, CL_DEVICE_NOT_FOUND, CL_PLATFORM_NOT_FOUND_KHR, ClError,
    DLOPEN_RUNTIME_LOAD_FAILED,
};
use opencl3::kernel::Kernel;
use opencl3::memory::{Buffer, CL_MEM_READ_WRITE, ClMem};
use opencl3::platform::get_platforms;
use opencl3::program::Program;
use opencl3::types::{CL_BLOCKING, cl_device_id, cl_mem};

use crate::backend::{
    Backend, BackendKind, DeviceId, DeviceInfo, FillPattern, KernelHandle, LaunchArg, LaunchConfig,
    ModuleHandle, RawBuffer, check_copy, check_fill, check_spirv,
};
use crate::backend_common::{
    arg_what, check_arg_count, lock, nul_in_kernel_name, payload, take_ordinal,
};
use crate::error::{Result, RuntimeError};

const KIND: BackendKind = BackendKind::OpenCl;

/// What to do when no OpenCL runtime is usable.
const HINT: &str = "Install an OpenCL runtime that takes SPIR-V: on a CPU-only x86-64 machine run \
`bash scripts/setup-opencl.sh` and then `eval \"$(bash scripts/setup-opencl.sh --print-env)\"` \
(sets OCL_ICD_VENDORS to Intel's CPU runtime); on an Intel GPU machine install the GPU compute \
runtime (intel-opencl-icd)";

fn cl_err(call: &'static str, e: ClError) -> RuntimeError {
    RuntimeError::Driver {
        backend: KIND,
        call,
        detail: format!("{e} ({})", e.0),
    }
}

/// One usable device found during enumeration.
struct Found {
    id: cl_device_id,
    info: DeviceInfo,
    /// The device reports IL only through `cl_khr_il_program` (OpenCL < 2.1), so programs
    /// must be created with `clCreateProgramWithILKHR`.
    il_khr: bool,
    /// Sort key: GPUs 0, accelerators 1, CPUs 2.
    rank: u8,
}

/// Every OpenCL device that can load SPIR-V, GPUs first (so `Auto` prefers an Intel GPU over
/// a CPU runtime when both are installed), then accelerators, then CPUs.
fn usable_devices() -> Result<Vec<Found>> {
    let platforms = match get_platforms() {
        Ok(p) => p,
        Err(e) if e.0 == DLOPEN_RUNTIME_LOAD_FAILED => {
            return Err(RuntimeError::DriverNotFound {
                backend: KIND,
                detail: "could not load libOpenCL.so.1 (the OpenCL ICD loader; Debian package \
                         ocl-icd-libopencl1)"
                    .into(),
                hint: HINT,
            });
        }
        Err(e) if e.0 == CL_PLATFORM_NOT_FOUND_KHR => {
            return Err(RuntimeError::NoDevice {
                backend: KIND,
                detail: format!(
                    "the ICD loader found no OpenCL platform (OCL_ICD_VENDORS={})",
                    std::env::var("OCL_ICD_VENDORS")
                        .unwrap_or_else(|_| "unset, so /etc/OpenCL/vendors".into())
                ),
                hint: HINT,
            });
        }
        Err(e) => return Err(cl_err("clGetPlatformIDs", e)),
    };

    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for platform in &platforms {
        let platform_name = platform.name().unwrap_or_default();
        let ids = match platform.get_devices(CL_DEVICE_TYPE_ALL) {
            Ok(ids) => ids,
            Err(e) if e.0 == CL_DEVICE_NOT_FOUND => Vec::new(),
            Err(e) => {
                skipped.push(format!("{platform_name}: clGetDeviceIDs failed: {e}"));
                continue;
            }
        };
        for id in ids {
            match describe(&platform_name, id) {
                Ok(f) => found.push(f),
                Err(why) => skipped.push(why),
            }
        }
    }
    if found.is_empty() {
        let detail = if skipped.is_empty() {
            format!("{} OpenCL platform(s), no devices", platforms.len())
        } else {
            format!(
                "no device takes SPIR-V (clCreateProgramWithIL): {}",
                skipped.join("; ")
            )
        };
        return Err(RuntimeError::NoDevice {
            backend: KIND,
            detail,
            hint: HINT,
        });
    }
    // Stable sort: within a rank, platform order as the ICD loader gives it.
    found.sort_by_key(|f| f.rank);
    for (ordinal, f) in found.iter_mut().enumerate() {
        f.info.ordinal = ordinal;
    }
    Ok(found)
}

/// Device facts, or why the device cannot be used (no SPIR-V ingestion).
fn describe(platform_name: &str, id: cl_device_id) -> std::result::Result<Found, String> {
    let dev = ClDevice::new(id);
    let name = dev.name().unwrap_or_default();
    let label = format!("{platform_name} / {name}");
    let extensions = dev.extensions().unwrap_or_default();
    let il_khr_ext = extensions
        .split_whitespace()
        .any(|e| e == "cl_khr_il_program");
    // CL_DEVICE_IL_VERSION (2.1+) and CL_DEVICE_IL_VERSION_KHR share one enum value.
    let il_version = dev.il_version().unwrap_or_default();
    if !il_version.contains("SPIR-V") {
        return Err(format!(
            "{label}: IL version {:?} has no SPIR-V",
            il_version.trim()
        ));
    }
    let version = dev.version().unwrap_or_default();
    // "OpenCL 2.1 ..." and later have clCreateProgramWithIL in core.
    let core_il = version
        .strip_prefix("OpenCL ")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| {
            let mut it = v.split('.');
            Some((
                it.next()?.parse::<u32>().ok()?,
                it.next()?.parse::<u32>().ok()?,
            ))
        })
        .is_some_and(|v| v >= (2, 1));
    if !core_il && !il_khr_ext {
        return Err(format!("{label}: {version} without cl_khr_il_program"));
    }
    let dev_type = dev.dev_type().unwrap_or(0);
    let rank = if dev_type & CL_DEVICE_TYPE_GPU != 0 {
        0
    } else if dev_type & CL_DEVICE_TYPE_ACCELERATOR != 0 {
        1
    } else {
        2
    };
    let info = DeviceInfo {
        backend: KIND,
        ordinal: 0,
        name: name.trim().to_owned(),
        vendor: platform_name.trim().to_owned(),
        driver_version: dev.driver_version().unwrap_or_default().trim().to_owned(),
        total_memory: dev.global_mem_size().unwrap_or(0),
        max_threads_per_block: dev.max_work_group_size().unwrap_or(0),
        max_shared_memory_per_block: usize::try_from(dev.local_mem_size().unwrap_or(0))
            .unwrap_or(usize::MAX),
        compute_capability: None,
        arch: None,
        il_version: Some(il_version.trim().to_owned()),
        is_cpu: dev_type & CL_DEVICE_TYPE_CPU != 0,
    };
    Ok(Found {
        id,
        info,
        il_khr: !core_il,
        rank,
    })
}

/// The device memory of one buffer. The mutex is there because opencl3's write and fill
/// calls take `&mut Buffer` while `RawBuffer` hands out shared references.
struct ClBuffer(Mutex<Buffer<u8>>);

/// A built program.
struct ClProgram(Program);

/// A kernel object. `clSetKernelArg` + `clEnqueueNDRangeKernel` must not interleave between
/// threads (OpenCL kernels are not thread-safe), hence the mutex around the pair.
struct ClKernel {
    kernel: Mutex<Kernel>,
    num_args: u32,
    /// Keeps the program alive as long as the kernel.
    _module: ModuleHandle,
}

/// An opened OpenCL device: context + in-order command queue.
pub struct OpenClBackend {
    id: DeviceId,
    info: DeviceInfo,
    device: ClDevice,
    il_khr: bool,
    // Field order is drop order: the queue goes before the context.
    queue: CommandQueue,
    context: Context,
}

impl std::fmt::Debug for OpenClBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenClBackend")
            .field("id", &self.id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl OpenClBackend {
    /// Lists the OpenCL devices that take SPIR-V (GPUs first).
    ///
    /// Errors: [`RuntimeError::DriverNotFound`] without `libOpenCL.so.1`,
    /// [`RuntimeError::NoDevice`] when no platform or no IL-capable device is registered.
    pub fn enumerate() -> Result<Vec<DeviceInfo>> {
        Ok(usable_devices()?.into_iter().map(|f| f.info).collect())
    }

    /// Opens device `ordinal` of [`OpenClBackend::enumerate`]'s list.
    pub fn open(ordinal: usize) -> Result<Self> {
        let found = take_ordinal(KIND, usable_devices()?, ordinal)?;
        let dev = ClDevice::new(found.id);
        let context = Context::from_device(&dev).map_err(|e| cl_err("clCreateContext", e))?;
        // In-order queue without profiling: every command sees the previous one's results,
        // which is what the synchronous upload/download contract needs.
        let queue = CommandQueue::create_default_with_properties(&context, 0, 0)
            .map_err(|e| cl_err("clCreateCommandQueueWithProperties", e))?;
        Ok(OpenClBackend {
            id: DeviceId::fresh(),
            info: found.info,
            device: dev,
            il_khr: found.il_khr,
            queue,
            context,
        })
    }

    fn buffer<'a>(&self, raw: &'a RawBuffer, what: &str) -> Result<&'a ClBuffer> {
        payload(self, raw, || what.to_owned())
    }

    fn build_log(&self, program: &Program) -> String {
        program
            .get_build_log(self.device.id())
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Backend for OpenClBackend {
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
        // OpenCL rejects 0-byte buffers; empty tensors (T = 0) are legal, so allocate one
        // byte and report the size asked for.
        let alloc = bytes.max(1);
        // SAFETY: no host pointer is passed, so the driver owns the allocation.
        let buf = unsafe {
            Buffer::<u8>::create(&self.context, CL_MEM_READ_WRITE, alloc, ptr::null_mut())
        }
        .map_err(|e| cl_err("clCreateBuffer", e))?;
        Ok(RawBuffer::new(
            self.id,
            bytes,
            Box::new(ClBuffer(Mutex::new(buf))),
        ))
    }

    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> Result<()> {
        check_copy("upload", dst, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let buf = self.buffer(dst, "upload destination")?;
        let mut guard = lock(&buf.0);
        // SAFETY: blocking write of `data.len()` bytes, which fit the buffer (checked above);
        // `data` outlives the call.
        unsafe {
            self.queue
                .enqueue_write_buffer(&mut guard, CL_BLOCKING, 0, data, &[])
        }
        .map_err(|e| cl_err("clEnqueueWriteBuffer", e))?;
        Ok(())
    }

    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> Result<()> {
        check_copy("download", src, out.len())?;
        if out.is_empty() {
            return self.synchronize();
        }
        let buf = self.buffer(src, "download source")?;
        let guard = lock(&buf.0);
        // SAFETY: blocking read into `out`, which is no larger than the buffer. The queue
        // is in order, so the read sees every kernel enqueued before it.
        unsafe {
            self.queue
                .enqueue_read_buffer(&guard, CL_BLOCKING, 0, out, &[])
        }
        .map_err(|e| cl_err("clEnqueueReadBuffer", e))?;
        Ok(())
    }

    fn fill(&self, dst: &RawBuffer, pattern: FillPattern) -> Result<()> {
        check_fill(dst, pattern)?;
        if dst.len_bytes() == 0 {
            return Ok(());
        }
        let buf = self.buffer(dst, "fill destination")?;
        let mut guard = lock(&buf.0);
        let (b8, b16, b32);
        let bytes: &[u8] = match pattern {
            FillPattern::U8(v) => {
                b8 = [v];
                &b8
            }
            FillPattern::U16(v) => {
                b16 = v.to_le_bytes();
                &b16
            }
            FillPattern::U32(v) => {
                b32 = v.to_le_bytes();
                &b32
            }
        };
        // SAFETY: size is a multiple of the pattern size and within the buffer (checked);
        // the driver copies the pattern before returning.
        unsafe {
            self.queue
                .enqueue_fill_buffer(&mut guard, bytes, 0, dst.len_bytes(), &[])
        }
        .map_err(|e| cl_err("clEnqueueFillBuffer", e))?;
        Ok(())
    }

    fn load_module(&self, image: &[u8]) -> Result<ModuleHandle> {
        check_spirv(image)?;
        let created = if self.il_khr {
            Program::create_from_il_khr(&self.context, image)
        } else {
            Program::create_from_il(&self.context, image)
        };
        let mut program = created.map_err(|e| RuntimeError::ModuleBuild {
            backend: KIND,
            detail: format!("clCreateProgramWithIL: {e} ({})", e.0),
            log: String::new(),
        })?;
        if let Err(e) = program.build(&[self.device.id()], "") {
            let log = if e.0 == CL_BUILD_PROGRAM_FAILURE {
                self.build_log(&program)
            } else {
                String::new()
            };
            return Err(RuntimeError::ModuleBuild {
                backend: KIND,
                detail: format!("clBuildProgram: {e} ({})", e.0),
                log,
            });
        }
        Ok(ModuleHandle::new(self.id, Arc::new(ClProgram(program))))
    }

    fn kernel(&self, module: &ModuleHandle, name: &str) -> Result<KernelHandle> {
        let program: &ClProgram = payload(self, module, || "module".into())?;
        let available = || Some(program.0.kernel_names().replace(';', ", "));
        if name.contains('\0') {
            // opencl3 would panic building the C string.
            return Err(nul_in_kernel_name(name, available()));
        }
        let kernel =
            Kernel::create(&program.0, name).map_err(|e| RuntimeError::KernelNotFound {
                name: name.to_owned(),
                detail: format!("clCreateKernel: {e}"),
                available: available(),
            })?;
        let num_args = kernel
            .num_args()
            .map_err(|e| cl_err("clGetKernelInfo(CL_KERNEL_NUM_ARGS)", e))?;
        Ok(KernelHandle::new(
            self.id,
            name,
            Arc::new(ClKernel {
                kernel: Mutex::new(kernel),
                num_args,
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
        let k: &ClKernel = payload(self, kernel, || format!("kernel `{kname}`"))?;
        check_arg_count(kname, k.num_args, args.len(), config)?;
        let mut global = [0usize; 3];
        let mut local = [0usize; 3];
        for d in 0..3 {
            let g = u64::from(config.grid[d]) * u64::from(config.block[d]);
            global[d] = usize::try_from(g).map_err(|_| RuntimeError::Launch {
                kernel: kname.to_owned(),
                detail: format!("global size {g} in dimension {d} overflows usize"),
            })?;
            local[d] = config.block[d] as usize;
        }
        if config.is_empty() {
            return Ok(());
        }

        let guard = lock(&k.kernel);
        for (i, arg) in args.iter().enumerate() {
            let index = i as u32;
            // SAFETY (all arms): the index is below CL_KERNEL_NUM_ARGS (checked above) and
            // each value has the size of the kernel parameter it stands for; the driver
            // copies the bytes before clSetKernelArg returns.
            let set = match arg {
                LaunchArg::Buffer(raw) => {
                    let buf = self.buffer(raw, &arg_what(i, kname))?;
                    let mem: cl_mem = lock(&buf.0).get();
                    unsafe { guard.set_arg(index, &mem) }
                }
                LaunchArg::I32(v) => unsafe { guard.set_arg(index, v) },
                LaunchArg::U32(v) => unsafe { guard.set_arg(index, v) },
                LaunchArg::I64(v) => unsafe { guard.set_arg(index, v) },
                LaunchArg::F32(v) => unsafe { guard.set_arg(index, v) },
            };
            set.map_err(|e| RuntimeError::ArgKind {
                arg: format!("#{i} of `{kname}`"),
                expected: "what the kernel declares".into(),
                found: format!("{} (clSetKernelArg: {e})", arg.kind_name()),
            })?;
        }
        if config.shared_mem_bytes > 0 {
            // SAFETY: a __local pointer argument takes a size and no value.
            unsafe {
                guard.set_arg_local_buffer(args.len() as u32, config.shared_mem_bytes as usize)
            }
            .map_err(|e| RuntimeError::Launch {
                kernel: kname.to_owned(),
                detail: format!(
                    "{} bytes of dynamic local memory as the last argument: {e}",
                    config.shared_mem_bytes
                ),
            })?;
        }
        // SAFETY: the work sizes are 3-element arrays that outlive the call; every argument
        // is set. The returned event is released when dropped.
        unsafe {
            self.queue.enqueue_nd_range_kernel(
                guard.get(),
                3,
                ptr::null(),
                global.as_ptr(),
                local.as_ptr(),
                &[],
            )
        }
        .map_err(|e| RuntimeError::Launch {
            kernel: kname.to_owned(),
            detail: format!(
                "clEnqueueNDRangeKernel (grid {:?}, block {:?}): {e} ({})",
                config.grid, config.block, e.0
            ),
        })?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.queue.finish().map_err(|e| cl_err("clFinish", e))
    }
}
