//! AMD: MLIR → ROCDL/LLVM dialect → HSACO code object (and, on request, AMDGCN assembly).
//!
//! The pass list is `reference/mlir-lowering.md` §1 (AMD). Serialization needs a "ROCm toolkit"
//! folder even without ROCm: `gpu-module-to-binary{format=bin}` links the object by running
//! `<toolkit>/llvm/bin/ld.lld -shared` (there is no option naming the linker itself), and the
//! ROCDL serializer looks for device-library bitcode in `<toolkit>/amdgcn/bitcode` whenever the
//! module calls `__ocml_*`/`__ockl_*` (for `format=isa` too). So this file builds such a folder
//! out of symlinks in linrec's cache directory: `llvm/bin/ld.lld` → LLVM 22's `ld.lld` (Debian
//! `lld-22`), and `amdgcn/bitcode` → the device libraries if any are installed.

use std::{
    hash::Hasher,
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use melior::ir::{
    BlockLike, Module, RegionLike, Type, TypeLike, ValueLike,
    attribute::{IntegerAttribute, TypeAttribute},
    operation::{OperationLike, OperationRef, WalkOrder, WalkResult},
    r#type::{FunctionType, MemRefType},
};

use super::{
    LowerError, LowerOptions, Lowered, ObjectFormat, Session, Target, into_text, joined_pipeline,
};

/// The ELF magic every code object starts with.
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// The most LDS one workgroup may allocate on gfx90a, gfx942 and gfx1100.
pub const LDS_LIMIT_BYTES: u64 = 64 * 1024;

/// Lowers the gpu module to the LLVM dialect with ROCDL ops, ready for serialization.
///
/// The chip appears three times because each pass needs it: the target attribute (code
/// generation), `convert-amdgpu-to-rocdl` (which MFMA/WMMA/LDS-DMA forms exist) and
/// `convert-gpu-to-rocdl` (subgroup and intrinsic lowering). The bare-pointer convention gives
/// one kernel argument per statically shaped memref, the same launch ABI as on NVIDIA.
pub(super) fn lowering_pipeline(target: Target) -> String {
    let chip = target.name();
    format!(
        "builtin.module(rocdl-attach-target{{chip={chip} O=3}}, \
         gpu.module(convert-amdgpu-to-rocdl{{chipset={chip}}}, convert-vector-to-scf, \
         convert-scf-to-cf, expand-strided-metadata, lower-affine, \
         convert-gpu-to-rocdl{{chipset={chip} use-bare-ptr-memref-call-conv=true}}, \
         canonicalize, cse), \
         reconcile-unrealized-casts)"
    )
}

/// Serializes to `format` (`bin`: HSACO, `isa`: AMDGCN assembly) with `toolkit` as the ROCm
/// folder.
fn serialize_pipeline(format: &str, toolkit: &Path) -> Result<String, LowerError> {
    let path = toolkit.to_string_lossy();
    // The pipeline parser takes a double-quoted value with spaces, but no quotes or braces in it.
    if path.contains(['"', '{', '}']) {
        return Err(LowerError::Toolkit {
            path: toolkit.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path contains `\"`, `{` or `}`, which a pass option cannot hold; set \
                 LINREC_CACHE_DIR to a plainer directory",
            ),
        });
    }
    Ok(format!(
        "builtin.module(gpu-module-to-binary{{format={format} toolkit=\"{path}\"}})"
    ))
}

pub(super) fn lower(
    session: &Session,
    mut module: Module,
    options: &LowerOptions,
) -> Result<Lowered, LowerError> {
    let target = session.target;
    check_lds(&module, target)?;
    // Find the linker first: a missing ld.lld should be reported as such, not after a lowering.
    let toolkit = prepare_toolkit(options)?;
    let lowering = lowering_pipeline(target);
    session.run(&mut module, &lowering)?;
    // Printed once here (a few ms) so `--stage lowered` needs no second lowering.
    let lowered_mlir = module.as_operation().to_string();

    let bin = serialize_pipeline("bin", &toolkit)?;
    let hsaco = session
        .serialize(&module, &bin, ObjectFormat::Binary, "HSACO code object")
        .map_err(|e| explain_device_libs(e, target))?;
    if !hsaco.starts_with(ELF_MAGIC) {
        return Err(LowerError::MissingBinary {
            expected: "HSACO code object",
            reason: "the object does not start with the ELF magic".to_owned(),
        });
    }

    let amd_assembly = if options.amd_assembly {
        let isa = serialize_pipeline("isa", &toolkit)?;
        let text = session
            .serialize(&module, &isa, ObjectFormat::Assembly, "AMDGCN assembly")
            .map_err(|e| explain_device_libs(e, target))?;
        Some(into_text(text, "AMDGCN assembly")?)
    } else {
        None
    };

    Ok(Lowered {
        target,
        binary: hsaco,
        amd_assembly,
        lowered_mlir,
        pipeline: joined_pipeline(&lowering, &bin),
    })
}

/// Rejects kernels whose static workgroup memory exceeds [`LDS_LIMIT_BYTES`].
///
/// The AMDGPU backend reports that as an LLVM error on an `LLVMContext` that MLIR's serializer
/// creates without a diagnostic handler, and LLVM's default then calls `exit(1)`: the whole
/// process would end with only `error: local memory (…) exceeds limit (65536)` on stderr.
/// Counted: every `gpu.func`'s workgroup attributions plus every `memref.global` in workgroup
/// memory (which any kernel may use), at their unpadded sizes, so a layout that only exceeds
/// the limit through alignment padding is not caught.
fn check_lds(module: &Module, target: Target) -> Result<(), LowerError> {
    let mut globals = 0u64;
    let mut kernels: Vec<(String, u64)> = Vec::new();
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        match op.name().as_string_ref().as_str() {
            Ok("memref.global") => {
                let ty = op
                    .attribute("type")
                    .ok()
                    .and_then(|a| TypeAttribute::try_from(a).ok())
                    .map(|a| a.value());
                if let Some(ty) = ty.filter(|t| is_workgroup_memref(*t)) {
                    globals += type_bytes(ty).unwrap_or(0);
                }
            }
            Ok("gpu.func") => {
                let name = op
                    .attribute("sym_name")
                    .map(|a| a.to_string().trim_matches('"').to_owned())
                    .unwrap_or_default();
                kernels.push((name, workgroup_attribution_bytes(&op).unwrap_or(0)));
            }
            _ => {}
        }
        WalkResult::Advance
    });
    match kernels
        .into_iter()
        .map(|(kernel, bytes)| (kernel, bytes + globals))
        .find(|&(_, bytes)| bytes > LDS_LIMIT_BYTES)
    {
        Some((kernel, bytes)) => Err(LowerError::WorkgroupMemory {
            target,
            kernel,
            bytes,
            limit: LDS_LIMIT_BYTES,
        }),
        None => Ok(()),
    }
}

/// Bytes of a `gpu.func`'s workgroup attributions: the entry-block arguments that follow the
/// function's inputs (`workgroup_attributions` of them).
fn workgroup_attribution_bytes(func: &OperationRef) -> Option<u64> {
    let count = IntegerAttribute::try_from(func.attribute("workgroup_attributions").ok()?)
        .ok()?
        .value();
    let inputs = FunctionType::try_from(
        TypeAttribute::try_from(func.attribute("function_type").ok()?)
            .ok()?
            .value(),
    )
    .ok()?
    .input_count();
    let entry = func.region(0).ok()?.first_block()?;
    let mut bytes = 0;
    for i in inputs..inputs + usize::try_from(count).ok()? {
        bytes += type_bytes(entry.argument(i).ok()?.r#type()).unwrap_or(0);
    }
    Some(bytes)
}

fn is_workgroup_memref(ty: Type) -> bool {
    MemRefType::try_from(ty)
        .ok()
        .and_then(|m| m.memory_space())
        .is_some_and(|space| {
            IntegerAttribute::try_from(space).is_ok_and(|i| i.value() == 3)
                || space.to_string().contains("workgroup")
        })
}

/// The storage size of a statically shaped memref/vector of ints/floats/indices, or of such a
/// scalar; `None` for anything else (dynamic shapes are sized at launch, not here).
fn type_bytes(ty: Type) -> Option<u64> {
    let raw = ty.to_raw();
    // SAFETY: `raw` is a live type of the module being checked; every accessor below is only
    // called after the matching `mlirTypeIsA*`/static-shape check.
    unsafe {
        if mlir_sys::mlirTypeIsAShaped(raw) {
            if !mlir_sys::mlirShapedTypeHasStaticShape(raw) {
                return None;
            }
            let mut elements = 1u64;
            let rank = isize::try_from(mlir_sys::mlirShapedTypeGetRank(raw)).ok()?;
            for dim in 0..rank {
                elements = elements.checked_mul(
                    u64::try_from(mlir_sys::mlirShapedTypeGetDimSize(raw, dim)).ok()?,
                )?;
            }
            let element = Type::from_raw(mlir_sys::mlirShapedTypeGetElementType(raw));
            return elements.checked_mul(type_bytes(element)?);
        }
        let bits = if mlir_sys::mlirTypeIsAInteger(raw) {
            mlir_sys::mlirIntegerTypeGetWidth(raw)
        } else if mlir_sys::mlirTypeIsAFloat(raw) {
            mlir_sys::mlirFloatTypeGetWidth(raw)
        } else if mlir_sys::mlirTypeIsAIndex(raw) {
            64
        } else {
            return None;
        };
        Some(u64::from(bits).div_ceil(8))
    }
}

/// Turns the serializer's "no bitcode here" failure into [`LowerError::MissingDeviceLibs`],
/// whose message says what to install; other errors pass through.
fn explain_device_libs(err: LowerError, target: Target) -> LowerError {
    match err {
        LowerError::Pass { diagnostics, .. }
            if diagnostics.mention("amdgcn bitcode path")
                || diagnostics.mention("bitcode library path") =>
        {
            LowerError::MissingDeviceLibs {
                target,
                diagnostics,
            }
        }
        other => other,
    }
}

/// Makes sure the toolkit folder for the linker and device libraries in use exists and points
/// at them; returns its path.
fn prepare_toolkit(options: &LowerOptions) -> Result<PathBuf, LowerError> {
    let ld_lld = find_ld_lld(options)?;
    let device_libs = find_device_libs(options)?;

    // One folder per (linker, device libs) pair, so differently configured processes sharing
    // the cache never rewrite each other's links.
    let mut hasher = Fnv1a::default();
    hasher.write(ld_lld.as_os_str().as_encoded_bytes());
    if let Some(libs) = &device_libs {
        hasher.write(b"\0");
        hasher.write(libs.as_os_str().as_encoded_bytes());
    }
    let dir = cache_root().join(format!("rocdl-toolkit-{:016x}", hasher.finish()));
    let toolkit_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LowerError::Toolkit { path, source }
    };

    let bin = dir.join("llvm").join("bin");
    std::fs::create_dir_all(&bin).map_err(toolkit_err(&bin))?;
    let link = bin.join("ld.lld");
    ensure_symlink(&link, &ld_lld).map_err(toolkit_err(&link))?;
    if let Some(libs) = &device_libs {
        let amdgcn = dir.join("amdgcn");
        std::fs::create_dir_all(&amdgcn).map_err(toolkit_err(&amdgcn))?;
        let link = amdgcn.join("bitcode");
        ensure_symlink(&link, libs).map_err(toolkit_err(&link))?;
    }
    Ok(dir)
}

/// linrec's on-disk cache (`LINREC_CACHE_DIR`, else the XDG cache directory), made absolute
/// because MLIR runs the linker by this path.
fn cache_root() -> PathBuf {
    let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let root = env_dir("LINREC_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| env_dir("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("linrec")))
        .or_else(|| env_dir("HOME").map(|d| PathBuf::from(d).join(".cache").join("linrec")))
        .unwrap_or_else(|| std::env::temp_dir().join("linrec-cache"));
    std::path::absolute(&root).unwrap_or(root)
}

/// The `ld.lld` to link code objects with: the explicit choice if any (which must exist), else
/// the first one found among ROCm's and LLVM 22's.
fn find_ld_lld(options: &LowerOptions) -> Result<PathBuf, LowerError> {
    let explicit = options
        .ld_lld
        .clone()
        .or_else(|| std::env::var_os("LINREC_LD_LLD").map(PathBuf::from));
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path],
        None => {
            let mut c = Vec::new();
            if let Some(rocm) = std::env::var_os("ROCM_PATH") {
                c.push(Path::new(&rocm).join("llvm/bin/ld.lld"));
            }
            // Debian's lld-22 puts the real binary here and `ld.lld-22` on PATH; both are the
            // LLVM that melior links, so the linker understands what its AMDGPU backend emits.
            c.push(PathBuf::from("/usr/lib/llvm-22/bin/ld.lld"));
            if let Some(path) = std::env::var_os("PATH") {
                c.extend(std::env::split_paths(&path).map(|d| d.join("ld.lld-22")));
            }
            c
        }
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .ok_or(LowerError::MissingLinker {
            searched: candidates,
        })
}

/// The ROCm device-library bitcode folder, if one is installed (or explicitly chosen, in which
/// case it must hold `ockl.bc`).
fn find_device_libs(options: &LowerOptions) -> Result<Option<PathBuf>, LowerError> {
    let usable = |dir: &Path| dir.join("ockl.bc").is_file();
    if let Some(dir) = &options.rocm_device_libs {
        return if usable(dir) {
            Ok(Some(
                std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            ))
        } else {
            Err(LowerError::Toolkit {
                path: dir.clone(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "the chosen ROCm device-library folder has no ockl.bc",
                ),
            })
        };
    }
    let mut candidates = Vec::new();
    if let Some(rocm) = std::env::var_os("ROCM_PATH") {
        candidates.push(Path::new(&rocm).join("amdgcn/bitcode"));
    }
    // Debian's `rocm-device-libs` installs under the multiarch library directory.
    candidates.push(PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/amdgcn/bitcode",
        std::env::consts::ARCH
    )));
    candidates.push(PathBuf::from("/opt/rocm/amdgcn/bitcode"));
    Ok(candidates.into_iter().find(|d| usable(d)))
}

/// Makes `link` a symlink to `target`, replacing whatever link is there. The new link is made
/// under a unique name and renamed into place, so concurrent lowerings (threads or processes)
/// never see a missing or half-made link.
fn ensure_symlink(link: &Path, target: &Path) -> io::Result<()> {
    if std::fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(
        ".{name}.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// ROCm's toolkit layout is a Linux affair; elsewhere AMD code objects are not supported.
#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "building AMD code objects needs symlinks (Linux)",
    ))
}

/// FNV-1a: a hash that is stable across processes and Rust versions (unlike `DefaultHasher`),
/// so every process picks the same toolkit folder for the same configuration.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
