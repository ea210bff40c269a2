//! `lower`: run MLIR pass pipelines in process and extract the target artifact.
//!
//! Input is the textual MLIR of a `gpu.container_module` (what `emit` produces); output is the
//! serialized kernel for one [`Target`]: PTX text (NVIDIA), an HSACO code object plus, on
//! request, its AMDGCN assembly (AMD), or a SPIR-V binary (OpenCL/Kernel flavour, for Level
//! Zero). Everything MLIR-specific stays inside this module: callers hand in a `&str` and get
//! plain bytes back, so no `!Send` melior type leaks out and any thread may call [`lower`].
//!
//! Each vendor's pipeline lives in its own file (`nvidia.rs`, `amd.rs`, `spirv.rs`); this file
//! holds the target list, the result and error types, and the MLIR session they share. Every
//! lowering runs in two steps on one fresh context: the *lowering* pipeline (to the
//! NVVM/ROCDL/SPIR-V dialects), then one *serialization* pipeline (`gpu-module-to-binary`) per
//! requested output, each on its own copy of the lowered module, so AMD's assembly and code
//! object share the first step.

mod amd;
mod nvidia;
mod spirv;

pub use amd::LDS_LIMIT_BYTES;
pub use spirv::SPIRV_MAGIC;

use std::{cell::RefCell, fmt, path::PathBuf, rc::Rc, str::FromStr};

use melior::{
    Context,
    diagnostic::{Diagnostic, DiagnosticSeverity},
    dialect::DialectRegistry,
    ir::{
        Module,
        attribute::{ArrayAttribute, AttributeLike, StringAttribute},
        operation::{OperationLike, WalkOrder, WalkResult},
    },
    pass::PassManager,
    utility::{
        parse_pass_pipeline, register_all_dialects, register_all_llvm_translations,
        register_all_passes,
    },
};

/// A GPU vendor: which family of pipelines, runtimes and artifact formats a [`Target`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    /// NVIDIA GPUs (CUDA driver, PTX).
    Nvidia,
    /// AMD GPUs (HIP runtime, HSACO code objects).
    Amd,
    /// Intel GPUs through Level Zero (and OpenCL runtimes that take SPIR-V, such as Intel's CPU
    /// runtime used in CI).
    Intel,
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nvidia => "NVIDIA",
            Self::Amd => "AMD",
            Self::Intel => "Intel",
        })
    }
}

/// The form of the bytes in [`Lowered::binary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryFormat {
    /// PTX assembly text (UTF-8, no trailing NUL), for `cuModuleLoadData` (the driver JITs it).
    Ptx,
    /// An AMDGPU ELF code object (HSACO), for `hipModuleLoadData`.
    Hsaco,
    /// A SPIR-V module: little-endian 32-bit words starting with the magic `0x07230203`.
    Spirv,
}

impl fmt::Display for BinaryFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ptx => "PTX",
            Self::Hsaco => "HSACO",
            Self::Spirv => "SPIR-V",
        })
    }
}

/// A compilation target: one GPU architecture (or, for SPIR-V, one portable flavour).
///
/// [`Target::name`] is the spelling used everywhere else (CLI, cache keys, artifact metadata);
/// [`FromStr`] parses it back and fails with an [`UnknownTarget`] that lists [`Target::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// NVIDIA Ampere (A100), PTX for `sm_80`.
    Sm80,
    /// NVIDIA Hopper (H100/H200) without the architecture-specific features, PTX for `sm_90`.
    Sm90,
    /// NVIDIA Hopper with wgmma/TMA (`sm_90a`); the PTX runs only on sm_90 devices.
    Sm90a,
    /// AMD CDNA2 (MI200), wave64.
    Gfx90a,
    /// AMD CDNA3 (MI300), wave64.
    Gfx942,
    /// AMD RDNA3 (RX 7900), wave32.
    Gfx1100,
    /// SPIR-V, OpenCL/Kernel flavour with the Physical64 addressing model (Level Zero, OpenCL).
    Spirv,
}

impl Target {
    /// Every target, in the order of the enum (NVIDIA, AMD, SPIR-V).
    pub const ALL: [Target; 7] = [
        Self::Sm80,
        Self::Sm90,
        Self::Sm90a,
        Self::Gfx90a,
        Self::Gfx942,
        Self::Gfx1100,
        Self::Spirv,
    ];

    /// The NVIDIA targets (what [`lower_to_ptx`] accepts).
    pub const NVIDIA: [Target; 3] = [Self::Sm80, Self::Sm90, Self::Sm90a];

    /// The canonical name: the chip as MLIR/LLVM spell it (`sm_90a`, `gfx942`), or `spirv`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sm80 => "sm_80",
            Self::Sm90 => "sm_90",
            Self::Sm90a => "sm_90a",
            Self::Gfx90a => "gfx90a",
            Self::Gfx942 => "gfx942",
            Self::Gfx1100 => "gfx1100",
            Self::Spirv => "spirv",
        }
    }

    /// The vendor whose pipeline and runtime this target uses.
    pub const fn vendor(self) -> Vendor {
        match self {
            Self::Sm80 | Self::Sm90 | Self::Sm90a => Vendor::Nvidia,
            Self::Gfx90a | Self::Gfx942 | Self::Gfx1100 => Vendor::Amd,
            Self::Spirv => Vendor::Intel,
        }
    }

    /// The format [`lower`] produces for this target.
    pub const fn format(self) -> BinaryFormat {
        match self.vendor() {
            Vendor::Nvidia => BinaryFormat::Ptx,
            Vendor::Amd => BinaryFormat::Hsaco,
            Vendor::Intel => BinaryFormat::Spirv,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = UnknownTarget;

    /// Parses a [`Target::name`]; ASCII case is ignored (`SM_90A` is `sm_90a`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_target(s, &Self::ALL)
    }
}

/// Finds `name` among `allowed` (ignoring ASCII case).
fn parse_target(name: &str, allowed: &'static [Target]) -> Result<Target, UnknownTarget> {
    allowed
        .iter()
        .copied()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| UnknownTarget {
            name: name.to_owned(),
            expected: allowed,
        })
}

/// A target name that is not one of the expected ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown target `{name}`; expected one of: {}", list_names(expected))]
pub struct UnknownTarget {
    /// The name as given.
    pub name: String,
    /// The targets that would have been accepted here.
    pub expected: &'static [Target],
}

fn list_names(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Knobs for [`lower_with`]. `LowerOptions::default()` is what [`lower`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LowerOptions {
    /// AMD only: also serialize to AMDGCN assembly (`format=isa`), returned by
    /// [`Lowered::assembly`]. It costs a second LLVM code generation, so a JIT that only loads
    /// the HSACO turns it off. Default: on.
    pub amd_assembly: bool,
    /// AMD only: the `ld.lld` to link code objects with. Default: `LINREC_LD_LLD`, then
    /// `$ROCM_PATH/llvm/bin/ld.lld`, then LLVM 22's (`/usr/lib/llvm-22/bin/ld.lld`,
    /// `ld.lld-22` on `PATH`).
    pub ld_lld: Option<PathBuf>,
    /// AMD only: a directory holding ROCm's device-library bitcode (`ocml.bc`, `ockl.bc`), needed
    /// only by kernels that call `__ocml_*`/`__ockl_*` functions. Default:
    /// `$ROCM_PATH/amdgcn/bitcode`, Debian's `rocm-device-libs`, `/opt/rocm/amdgcn/bitcode`.
    pub rocm_device_libs: Option<PathBuf>,
}

impl Default for LowerOptions {
    fn default() -> Self {
        Self {
            amd_assembly: true,
            ld_lld: None,
            rocm_device_libs: None,
        }
    }
}

impl LowerOptions {
    /// Sets [`LowerOptions::amd_assembly`].
    pub fn with_amd_assembly(mut self, on: bool) -> Self {
        self.amd_assembly = on;
        self
    }

    /// Sets [`LowerOptions::ld_lld`].
    pub fn with_ld_lld(mut self, path: impl Into<PathBuf>) -> Self {
        self.ld_lld = Some(path.into());
        self
    }

    /// Sets [`LowerOptions::rocm_device_libs`].
    pub fn with_rocm_device_libs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rocm_device_libs = Some(dir.into());
        self
    }
}

/// A lowered kernel module: the artifact bytes for one target, checked for the expected form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lowered {
    target: Target,
    binary: Vec<u8>,
    /// AMDGCN assembly (AMD only, when requested). PTX is not stored twice: it is `binary`.
    amd_assembly: Option<String>,
    /// The module after the lowering pipeline, before serialization.
    lowered_mlir: String,
    pipeline: String,
}

impl Lowered {
    /// The target this was lowered for.
    pub fn target(&self) -> Target {
        self.target
    }

    /// The form of [`Lowered::binary`] (the target's [`Target::format`]).
    pub fn format(&self) -> BinaryFormat {
        self.target.format()
    }

    /// The artifact: PTX text bytes, an HSACO ELF, or SPIR-V words in little-endian bytes.
    pub fn binary(&self) -> &[u8] {
        &self.binary
    }

    /// Takes the artifact bytes.
    pub fn into_binary(self) -> Vec<u8> {
        self.binary
    }

    /// The PTX text, for NVIDIA targets.
    pub fn ptx(&self) -> Option<&str> {
        match self.format() {
            // Checked to be UTF-8 when the value was built, so `ok()` never drops anything.
            BinaryFormat::Ptx => std::str::from_utf8(&self.binary).ok(),
            _ => None,
        }
    }

    /// Human-readable assembly: the PTX for NVIDIA, the AMDGCN assembly for AMD (if
    /// [`LowerOptions::amd_assembly`] was on), nothing for SPIR-V (disassemble with `spirv-dis`).
    pub fn assembly(&self) -> Option<&str> {
        self.ptx().or(self.amd_assembly.as_deref())
    }

    /// The SPIR-V module as 32-bit words, for the SPIR-V target.
    pub fn spirv_words(&self) -> Option<Vec<u32>> {
        match self.format() {
            BinaryFormat::Spirv => Some(
                self.binary
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The module after the lowering pipeline and before serialization: the LLVM dialect with
    /// NVVM/ROCDL ops, or the `spirv.module` (what `linrec emit --stage lowered` shows).
    pub fn lowered_mlir(&self) -> &str {
        &self.lowered_mlir
    }

    /// The pass pipeline that produced [`Lowered::binary`], in `mlir-opt --pass-pipeline=` form,
    /// so a failure or a miscompile can be reproduced with `mlir-opt-22` on the dumped input.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }
}

/// MLIR diagnostics collected during one lowering, one rendered message per entry
/// (`<location>: <severity>: <message>`, notes indented on following lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<String>);

impl Diagnostics {
    /// Whether any message contains `needle`.
    pub fn mention(&self, needle: &str) -> bool {
        self.0.iter().any(|d| d.contains(needle))
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(MLIR reported no diagnostics)");
        }
        f.write_str(&self.0.join("\n"))
    }
}

/// Why a lowering failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LowerError {
    /// A target name that is not supported (by [`lower_to_ptx`]: not an NVIDIA target).
    #[error(transparent)]
    UnknownTarget(#[from] UnknownTarget),
    /// The input text is not valid MLIR (syntax error or verifier failure).
    #[error("failed to parse the MLIR input:\n{diagnostics}")]
    Parse {
        /// What MLIR said.
        diagnostics: Diagnostics,
    },
    /// The module uses another vendor's ops. Checked before any pass runs because LLVM's code
    /// generator aborts the whole process (`LLVM ERROR: Cannot select: intrinsic …`) when, say,
    /// an NVVM intrinsic reaches the AMDGPU backend.
    #[error(
        "the module uses ops that {target} ({vendor}) cannot lower:\n  {}",
        ops.join("\n  "),
        vendor = target.vendor()
    )]
    ForeignOps {
        /// The requested target.
        target: Target,
        /// Each offending op as `<op name> at <location>`.
        ops: Vec<String>,
    },
    /// A pass pipeline string was rejected (a bug in this crate, not in the input).
    #[error("invalid pass pipeline `{pipeline}`: {message}")]
    Pipeline {
        /// The textual pipeline.
        pipeline: String,
        /// MLIR's parser message.
        message: String,
    },
    /// A pass failed on the input module.
    #[error("lowering for {target} failed in pass pipeline `{pipeline}`:\n{diagnostics}")]
    Pass {
        /// The requested target.
        target: Target,
        /// The textual pipeline.
        pipeline: String,
        /// What MLIR said.
        diagnostics: Diagnostics,
    },
    /// No `ld.lld` to link an AMD code object with.
    #[error(
        "cannot build an AMD code object (HSACO): ld.lld not found (looked for: {}). Install \
         LLVM 22's linker (`apt-get install lld-22`, or run `bash scripts/setup.sh`), or point \
         `LINREC_LD_LLD` (or `LowerOptions::ld_lld`) at an ld.lld",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MissingLinker {
        /// The paths that were tried, in order.
        searched: Vec<PathBuf>,
    },
    /// The kernel calls ROCm device-library functions but no device libraries were found.
    #[error(
        "the {target} kernel needs ROCm's device libraries (it calls `__ocml_*`/`__ockl_*`, e.g. \
         `gpu.block_dim` becomes `__ockl_get_local_size` and `math.exp2` becomes \
         `__ocml_exp2_f32`), but they were not found or are incomplete. Install them (`apt-get install \
         rocm-device-libs`), set `ROCM_PATH`, or avoid those ops (constant block sizes, \
         `llvm.amdgcn.*` intrinsics). MLIR said:\n{diagnostics}"
    )]
    MissingDeviceLibs {
        /// The requested target.
        target: Target,
        /// What MLIR said.
        diagnostics: Diagnostics,
    },
    /// The folder that stands in for a ROCm installation could not be set up.
    #[error("cannot prepare the ROCm toolkit folder `{}`: {source}", path.display())]
    Toolkit {
        /// The folder (or the link inside it) that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A kernel asks for more workgroup (shared/LDS) memory than the target has. Checked before
    /// lowering for AMD, whose backend would otherwise end the process (see
    /// `LDS_LIMIT_BYTES`); on NVIDIA the limit is enforced by ptxas or the driver.
    #[error(
        "kernel `{kernel}` uses {bytes} bytes of workgroup memory; {target} allows at most {limit}"
    )]
    WorkgroupMemory {
        /// The requested target.
        target: Target,
        /// The kernel's symbol name.
        kernel: String,
        /// Static workgroup memory the kernel can reach (attributions plus workgroup globals).
        bytes: u64,
        /// The per-workgroup limit.
        limit: u64,
    },
    /// The pipeline ran but produced no usable `gpu.binary` object.
    #[error("no {expected} found after lowering: {reason}")]
    MissingBinary {
        /// What was expected (e.g. "PTX assembly").
        expected: &'static str,
        /// What was found instead.
        reason: String,
    },
}

/// Lowers a `gpu.container_module` (MLIR text) for `target` with default [`LowerOptions`].
///
/// Runs entirely in process on a fresh MLIR context, so it may be called from any thread. The
/// module must hold exactly the kernels to compile (one `gpu.module`); the object of its first
/// `gpu.binary` is returned.
pub fn lower(mlir: &str, target: Target) -> Result<Lowered, LowerError> {
    lower_with(mlir, target, &LowerOptions::default())
}

/// [`lower`] with explicit options.
pub fn lower_with(
    mlir: &str,
    target: Target,
    options: &LowerOptions,
) -> Result<Lowered, LowerError> {
    let session = Session::new(target);
    let module = session.parse(mlir)?;
    check_vendor_ops(&module, target)?;
    match target.vendor() {
        Vendor::Nvidia => nvidia::lower(&session, module),
        Vendor::Amd => amd::lower(&session, module, options),
        Vendor::Intel => spirv::lower(&session, module),
    }
}

/// Lowers to PTX for an NVIDIA chip given by name (`sm_80`, `sm_90`, `sm_90a`).
///
/// Shorthand for [`lower`] with one of [`Target::NVIDIA`], for callers that only want the text.
pub fn lower_to_ptx(mlir: &str, chip: &str) -> Result<String, LowerError> {
    let target = parse_target(chip, &Target::NVIDIA)?;
    let lowered = lower(mlir, target)?;
    match lowered.ptx() {
        Some(ptx) => Ok(ptx.to_owned()),
        None => Err(LowerError::MissingBinary {
            expected: "PTX assembly",
            reason: format!("{target} produced {}", lowered.format()),
        }),
    }
}

/// `gpu::CompilationTarget` in MLIR's GPU dialect, as returned by `mlirGPUObjectAttrGetFormat`:
/// `format=isa` gives `Assembly`, `format=bin` gives `Binary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum ObjectFormat {
    Assembly = 2,
    Binary = 3,
}

/// Dialects of one vendor's ops, and LLVM intrinsic prefixes, that another vendor's backend
/// cannot take (see [`LowerError::ForeignOps`] for why this is checked up front).
fn foreign_to(vendor: Vendor) -> (&'static [&'static str], &'static [&'static str]) {
    match vendor {
        Vendor::Nvidia => (&["amdgpu", "rocdl"], &["llvm.amdgcn.", "llvm.r600."]),
        Vendor::Amd => (&["nvgpu", "nvvm"], &["llvm.nvvm."]),
        // The SPIR-V conversion fails cleanly on these, but the error is clearer this way.
        Vendor::Intel => (
            &["nvgpu", "nvvm", "amdgpu", "rocdl"],
            &["llvm.nvvm.", "llvm.amdgcn.", "llvm.r600."],
        ),
    }
}

/// Rejects ops that belong to another vendor before any pass sees them.
fn check_vendor_ops(module: &Module, target: Target) -> Result<(), LowerError> {
    let (dialects, intrinsics) = foreign_to(target.vendor());
    let mut ops = Vec::new();
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let name = op.name();
        let Ok(name) = name.as_string_ref().as_str() else {
            return WalkResult::Advance;
        };
        let dialect = name.split('.').next().unwrap_or(name);
        let foreign = if dialects.contains(&dialect) {
            Some(name.to_owned())
        } else if name == "llvm.call_intrinsic" {
            op.attribute("intrin")
                .ok()
                .and_then(|a| StringAttribute::try_from(a).ok())
                .map(|s| s.value().to_owned())
                .filter(|callee| intrinsics.iter().any(|p| callee.starts_with(p)))
                .map(|callee| format!("{name} \"{callee}\""))
        } else {
            None
        };
        if let Some(what) = foreign {
            ops.push(format!("`{what}` at {}", op.location()));
        }
        WalkResult::Advance
    });
    if ops.is_empty() {
        Ok(())
    } else {
        Err(LowerError::ForeignOps { target, ops })
    }
}

/// One MLIR context set up for lowering, plus the diagnostics its handler collects.
struct Session {
    // Field order matters for drop: the context (which owns the handler closure) goes first.
    context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
    target: Target,
}

impl Session {
    fn new(target: Target) -> Self {
        let registry = DialectRegistry::new();
        // Also registers the NVVM/ROCDL/SPIR-V target-attribute interfaces that
        // `gpu-module-to-binary` dispatches on.
        register_all_dialects(&registry);
        // Process-global; melior guards it with a `Once` (repeated calls double-free in MLIR).
        register_all_passes();
        // Threading off: a kernel module is small, a thread pool per context costs more than it
        // saves, and callers parallelise across compile jobs instead.
        let context = Context::new_with_registry(&registry, false);
        // Touching a dialect that is not loaded segfaults instead of erroring (melior#23).
        context.load_all_available_dialects();
        // Needed by `gpu-module-to-binary` to translate to LLVM IR; registered per context.
        register_all_llvm_translations(&context);

        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&diagnostics);
        context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(render(&d));
            true // handled: do not also print to stderr
        });
        Self {
            context,
            diagnostics,
            target,
        }
    }

    fn take_diagnostics(&self) -> Diagnostics {
        Diagnostics(std::mem::take(&mut *self.diagnostics.borrow_mut()))
    }

    fn parse(&self, mlir: &str) -> Result<Module<'_>, LowerError> {
        Module::parse(&self.context, mlir).ok_or_else(|| LowerError::Parse {
            diagnostics: self.take_diagnostics(),
        })
    }

    /// Runs a textual `builtin.module(...)` pipeline on `module` in place.
    fn run(&self, module: &mut Module, pipeline: &str) -> Result<(), LowerError> {
        let pm = PassManager::new(&self.context);
        pm.enable_verifier(true);
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline).map_err(|e| {
            LowerError::Pipeline {
                pipeline: pipeline.to_owned(),
                message: e.to_string(),
            }
        })?;
        // Diagnostics of earlier steps (e.g. remarks) must not be blamed on this one.
        self.take_diagnostics();
        // `run` only says that it failed; the reason arrives through the diagnostic handler.
        pm.run(module).map_err(|_| LowerError::Pass {
            target: self.target,
            pipeline: pipeline.to_owned(),
            diagnostics: self.take_diagnostics(),
        })
    }

    /// Serializes a copy of the lowered `module` with `pipeline` (a `gpu-module-to-binary`
    /// pipeline) and returns the bytes of the object, which must have `format`. The copy keeps
    /// `module` reusable for another serialization.
    fn serialize(
        &self,
        module: &Module,
        pipeline: &str,
        format: ObjectFormat,
        expected: &'static str,
    ) -> Result<Vec<u8>, LowerError> {
        let copy = (*module.as_operation()).clone();
        let mut copy = Module::from_operation(copy).ok_or(LowerError::MissingBinary {
            expected,
            reason: "the lowered module could not be copied".to_owned(),
        })?;
        self.run(&mut copy, pipeline)?;
        first_binary_object(&copy, format, expected)
    }
}

/// Joins a lowering and a serialization pipeline (both `builtin.module(...)`) into the single
/// pipeline they are equivalent to, for [`Lowered::pipeline`].
fn joined_pipeline(lowering: &str, serialize: &str) -> String {
    let inner = |s: &'_ str| -> String {
        s.strip_prefix("builtin.module(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or(s)
            .to_owned()
    };
    format!("builtin.module({}, {})", inner(lowering), inner(serialize))
}

/// Turns the serialized object into UTF-8 text (PTX, AMDGCN assembly).
fn into_text(bytes: Vec<u8>, expected: &'static str) -> Result<String, LowerError> {
    let mut bytes = bytes;
    // The serializer may hand back a C string; assembly text itself never contains NUL.
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8(bytes).map_err(|e| LowerError::MissingBinary {
        expected,
        reason: format!("the object is not UTF-8 text ({e})"),
    })
}

/// Renders a diagnostic with its location, severity and notes.
fn render(d: &Diagnostic) -> String {
    let severity = match d.severity() {
        DiagnosticSeverity::Error => "error",
        DiagnosticSeverity::Warning => "warning",
        DiagnosticSeverity::Note => "note",
        DiagnosticSeverity::Remark => "remark",
    };
    let mut out = format!("{}: {severity}: {d}", d.location());
    for note in (0..d.note_count()).filter_map(|i| d.note(i).ok()) {
        out.push_str(&format!("\n  {}: note: {note}", note.location()));
    }
    out
}

/// Returns the bytes of the first object of the first `gpu.binary` op in `module`, checking
/// that it has the expected serialization `format`.
fn first_binary_object(
    module: &Module,
    format: ObjectFormat,
    expected: &'static str,
) -> Result<Vec<u8>, LowerError> {
    let missing = |reason: &str| LowerError::MissingBinary {
        expected,
        reason: reason.to_owned(),
    };
    let mut found = Err(missing("the module has no `gpu.binary` op"));
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        if op.name().as_string_ref().as_str() != Ok("gpu.binary") {
            return WalkResult::Advance;
        }
        found = op
            .attribute("objects")
            .ok()
            .and_then(|a| ArrayAttribute::try_from(a).ok())
            .ok_or_else(|| missing("`gpu.binary` has no `objects` array"))
            .and_then(|objects| {
                objects
                    .element(0)
                    .map_err(|_| missing("`gpu.binary` has an empty `objects` array"))
            })
            .and_then(|object| {
                let raw = object.to_raw();
                // SAFETY: `raw` is a live attribute of `module`, which outlives this call; the
                // object accessors are only called after the type check, and the returned
                // string ref points into the attribute's storage, copied out immediately.
                unsafe {
                    if !mlir_sys::mlirAttributeIsAGPUObjectAttr(raw) {
                        return Err(missing("the `objects` element is not a `#gpu.object`"));
                    }
                    let actual = mlir_sys::mlirGPUObjectAttrGetFormat(raw);
                    if actual != format as u32 {
                        return Err(missing(&format!(
                            "the object has format {actual}, expected {format:?} ({})",
                            format as u32
                        )));
                    }
                    let s = mlir_sys::mlirGPUObjectAttrGetObject(raw);
                    if s.data.is_null() || s.length == 0 {
                        return Err(missing("the object is empty"));
                    }
                    Ok(std::slice::from_raw_parts(s.data.cast::<u8>(), s.length).to_vec())
                }
            });
        WalkResult::Interrupt
    });
    found
}
