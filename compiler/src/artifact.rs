//! The `artifact` stage: [`compile`] runs plan → schedule → emit → lower for one spec, target
//! and config, and returns the kernel's bytes with the launch metadata the runtime needs
//! ([`KernelInfo`]) and the text of every stage.
//!
//! `LINREC_DUMP_DIR=dir` writes every stage of every compiled kernel to
//! `dir/<entry>.<target>.<config>/`: `00-plan.txt`, `01-schedule.txt`, `02-emit.mlir`,
//! `03-lowered.mlir`, `04-<target>.{ptx,s,spv}` (AMD: also the `.hsaco`; SPIR-V: also the
//! `.spvasm` when `spirv-dis` is installed), and `info.json`-like `05-info.txt` with the
//! launch metadata.
//!
//! `LINREC_TENSOR_CORES=0` (or `off`) compiles NVIDIA and AMD kernels with the portable
//! matmuls, to compare them with the tensor-/matrix-core ones; `LINREC_TENSOR_CORES=emulate`
//! lays bf16/f16 kernels out for tensor cores but emulates them (on any target), to tell a
//! layout bug from a tensor-core one; `emulate-mfma` and `emulate-wmma` do the same for the
//! AMD matrix-core layouts ([`CompileOptions::matmul`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use linrec_spec::Spec;
use linrec_spec::launch::{KernelConfig, KernelInfo, Route};

use crate::emit::{self, EmitError};
use crate::lower::{self, BinaryFormat, LowerError, LowerOptions, Target};
use crate::plan::{self, PlanError};
use crate::schedule::{self, MatmulChoice, MatrixCore, ScheduleError};

/// The environment variable naming the stage-dump directory.
pub const DUMP_DIR_ENV: &str = "LINREC_DUMP_DIR";

/// The environment variable that picks the forward's form: `auto` (the default), `fused`, `split`
/// or `scan` ([`ForwardForm`]).
pub const FORWARD_ENV: &str = "LINREC_FORWARD";

/// The environment variable that turns tensor cores off (`0` or `off`).
pub const TENSOR_CORES_ENV: &str = "LINREC_TENSOR_CORES";

/// One compiled kernel: bytes, launch metadata and every stage's text.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    /// Launch metadata (entry point, parameters in ABI order, grid, block, scratch).
    pub info: KernelInfo,
    /// The kernel: PTX text bytes (NVIDIA), an HSACO code object (AMD), SPIR-V words in
    /// little-endian bytes (SPIR-V).
    pub binary: Vec<u8>,
    /// The plan stage's text.
    pub plan_text: String,
    /// The schedule stage's text.
    pub schedule_text: String,
    /// The emitted MLIR (`gpu.container_module`).
    pub mlir: String,
    /// The module after the target's lowering pipeline, before serialization.
    pub lowered: Option<String>,
    /// Human-readable assembly: the PTX (NVIDIA), the AMDGCN assembly (AMD), the `spirv-dis`
    /// disassembly (SPIR-V, only when `spirv-dis` is on `PATH` or `LINREC_SPIRV_DIS` names it).
    pub asm: Option<String>,
    /// Wall time of plan → schedule → emit → lower (disassembly and dumps excluded).
    pub compile_time: Duration,
}

impl Artifact {
    /// The target the kernel was compiled for.
    pub fn target(&self) -> Result<Target, lower::UnknownTarget> {
        self.info.target.parse()
    }
}

/// Why a kernel could not be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The spec is invalid or uses a form the compiler does not derive yet
    /// (`not yet supported: the diagonal decay ...`).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The config is outside what the kernels support (naming the field and the allowed
    /// values), or the plan cannot be scheduled.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Building the MLIR failed (a bug in linrec).
    #[error(transparent)]
    Emit(#[from] EmitError),
    /// The target's pipeline failed or a tool it needs is missing.
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// `LINREC_DUMP_DIR` is set but a stage could not be written there.
    #[error("LINREC_DUMP_DIR: cannot write `{}`: {source}", path.display())]
    Dump {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Knobs for [`compile_with`]; [`compile`] uses [`CompileOptions::from_env`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompileOptions {
    /// Write every stage under this directory (see the module docs).
    pub dump_dir: Option<PathBuf>,
    /// AMD only: also produce the AMDGCN assembly ([`Artifact::asm`]). It costs a second LLVM
    /// code generation (about half of an AMD compile), which a caller that only needs the code
    /// object (`linrec compile`, a JIT) can skip. Default: on.
    pub amd_assembly: bool,
    /// How matmuls run (see [`crate::schedule`]). Default: [`MatmulChoice::Auto`], tensor
    /// cores where the target has them.
    pub matmul: MatmulChoice,
    /// How a forward is split into kernels. Default: [`ForwardForm::Auto`].
    pub forward: ForwardForm,
}

/// How a forward runs ([`CompileOptions::forward`]; `LINREC_FORWARD=auto|fused|split|scan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ForwardForm {
    /// One kernel: a workgroup walks its sequence's chunks, computing o and the state.
    Fused,
    /// Two kernels of one binary ([`crate::schedule::forward_split`]): the chunk states
    /// sequentially, then o with a workgroup per chunk.
    Split,
    /// The split-scan over T segments, always ([`crate::schedule::forward_scan`]): four
    /// kernels of one binary. For tests and measurements; [`ForwardForm::Auto`] takes it where
    /// it pays.
    Scan,
    /// The fused kernel, and in the same binary the split-scan as
    /// [`linrec_spec::launch::KernelInfo::instead`], which the runtime takes for long
    /// sequences on too few heads to fill the GPU
    /// ([`linrec_spec::launch::KernelInfo::takes_instead`]). Plans without a state update
    /// the split-scan can take compile as [`ForwardForm::Fused`]. The default.
    #[default]
    Auto,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            dump_dir: None,
            amd_assembly: true,
            matmul: MatmulChoice::Auto,
            forward: ForwardForm::Auto,
        }
    }
}

impl CompileOptions {
    /// Options from the environment: `LINREC_DUMP_DIR` (ignored when empty) and
    /// `LINREC_TENSOR_CORES` (`0` or `off`: [`MatmulChoice::Portable`]; `emulate`:
    /// [`MatmulChoice::Emulated`]; `emulate-core-matrices`:
    /// [`MatmulChoice::EmulatedCoreMatrices`]; `mma-sync` / `mma-sync-core-matrices`:
    /// [`MatmulChoice::MmaSync`] / [`MatmulChoice::MmaSyncCoreMatrices`];
    /// `wgmma-without-tma`: [`MatmulChoice::WgmmaWithoutTma`];
    /// `emulate-mfma` / `emulate-wmma`:
    /// [`MatmulChoice::EmulatedMatrixCore`] with the CDNA / RDNA3 layout; anything else:
    /// [`MatmulChoice::Auto`]).
    pub fn from_env() -> Self {
        let matmul = match std::env::var(TENSOR_CORES_ENV).as_deref().map(str::trim) {
            Ok("0" | "off" | "false") => MatmulChoice::Portable,
            Ok("emulate") => MatmulChoice::Emulated,
            Ok("emulate-core-matrices") => MatmulChoice::EmulatedCoreMatrices,
            Ok("mma-sync") => MatmulChoice::MmaSync,
            Ok("mma-sync-core-matrices") => MatmulChoice::MmaSyncCoreMatrices,
            Ok("wgmma-without-tma") => MatmulChoice::WgmmaWithoutTma,
            Ok("emulate-mfma") => MatmulChoice::EmulatedMatrixCore(MatrixCore::Mfma16x16x16),
            Ok("emulate-wmma") => MatmulChoice::EmulatedMatrixCore(MatrixCore::Wmma16x16x16),
            _ => MatmulChoice::Auto,
        };
        let forward = match std::env::var(FORWARD_ENV).as_deref().map(str::trim) {
            Ok("fused") => ForwardForm::Fused,
            Ok("split") => ForwardForm::Split,
            Ok("scan") => ForwardForm::Scan,
            _ => ForwardForm::Auto,
        };
        CompileOptions {
            dump_dir: std::env::var_os(DUMP_DIR_ENV)
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            matmul,
            forward,
            ..CompileOptions::default()
        }
    }

    /// Sets [`CompileOptions::matmul`].
    pub fn with_matmul(mut self, matmul: MatmulChoice) -> Self {
        self.matmul = matmul;
        self
    }

    /// Sets [`CompileOptions::forward`].
    pub fn with_forward(mut self, forward: ForwardForm) -> Self {
        self.forward = forward;
        self
    }

    /// Sets [`CompileOptions::amd_assembly`].
    pub fn with_amd_assembly(mut self, on: bool) -> Self {
        self.amd_assembly = on;
        self
    }

    /// Sets [`CompileOptions::dump_dir`].
    pub fn with_dump_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dump_dir = Some(dir.into());
        self
    }
}

/// Compiles the forward kernel of `spec` for `target`, specialised for `config`, with the
/// options of the environment (`LINREC_DUMP_DIR`).
///
/// ```no_run
/// use linrec_compiler::{compile, Target};
/// use linrec_spec::launch::{ElementType, KernelConfig};
/// # fn spec() -> linrec_spec::Spec { panic!("a spec, e.g. linrec::catalogue::SimpleGla::spec()") }
/// let config = KernelConfig {
///     dtype: ElementType::Bf16, key_dim: 64, value_dim: 64, chunk: 64,
///     initial_state: true, final_state: true, varlen: false,
/// };
/// let artifact = compile(&spec(), Target::Sm90, &config)?;
/// println!("{} in {:?}", artifact.info.entry, artifact.compile_time);
/// # Ok::<(), linrec_compiler::CompileError>(())
/// ```
pub fn compile(
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
) -> Result<Artifact, CompileError> {
    compile_with(spec, target, config, &CompileOptions::from_env())
}

/// [`compile`] with explicit options.
pub fn compile_with(
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    options: &CompileOptions,
) -> Result<Artifact, CompileError> {
    let start = Instant::now();
    let plan = plan::forward(spec)?;
    let (info, schedule_text, mlir) = match options.forward {
        ForwardForm::Fused => {
            let w = schedule::forward_widths(&plan, spec, target, config, options.matmul)?;
            (w.kernel_info(), widths_text(&w), emit::forward_widths(&w)?)
        }
        ForwardForm::Split => {
            let s = schedule::forward_split(&plan, spec, target, config, options.matmul)?;
            let mut text = with_narrower(format!("{}\n", s.states), &s.narrower);
            text.push_str(&format!("\n{}", s.output));
            (s.kernel_info(), text, emit::forward_split(&s)?)
        }
        ForwardForm::Scan => {
            let s = schedule::forward_scan(&plan, spec, target, config, options.matmul)?;
            (s.kernel_info(), scan_text(&s), emit::forward_scan(&[], &s)?)
        }
        ForwardForm::Auto => {
            let fused = schedule::forward_widths(&plan, spec, target, config, options.matmul)?;
            match plan::segment_plan(&plan) {
                Some(_) => {
                    let s = schedule::forward_scan(&plan, spec, target, config, options.matmul)?;
                    let mut info = fused.kernel_info();
                    info.instead = Some(Box::new(Route {
                        launches: s.launches(),
                        needs_chunk_states: false,
                    }));
                    let text = format!(
                        "{}\ninstead, for long sequences on few heads (KernelInfo::takes_instead: fewer than {} workgroups even in the narrowest blocks and more than {} chunks a sequence), the split-scan:\n\n{}",
                        widths_text(&fused),
                        linrec_spec::launch::ENOUGH_WORKGROUPS,
                        linrec_spec::launch::SEGMENT_CHUNKS,
                        scan_text(&s)
                    );
                    (info, text, emit::forward_scan(&fused.all(), &s)?)
                }
                None => (
                    fused.kernel_info(),
                    widths_text(&fused),
                    emit::forward_widths(&fused)?,
                ),
            }
        }
    };
    let stages = Stages {
        info,
        plan_text: plan.to_string(),
        schedule_text,
        mlir,
    };
    finish(stages, target, options, start)
}

/// The schedule text of a fused forward at its widths: the widest, then a line per narrower.
fn widths_text(w: &schedule::Widths) -> String {
    with_narrower(w.first.to_string(), &w.narrower)
}

/// `text` (a kernel's schedule) and a line per narrower variant of it.
fn with_narrower(mut text: String, narrower: &[schedule::Schedule]) -> String {
    for n in narrower {
        text.push_str(&format!(
            "narrower @{}: the same with blocks of {} value columns, the runtime launches the widest kernel with at least {} workgroups (else the narrowest)\n",
            n.entry,
            n.block_v,
            linrec_spec::launch::ENOUGH_WORKGROUPS
        ));
    }
    text
}

/// The schedule text of a split-scan forward: its four kernels in launch order.
fn scan_text(s: &schedule::ScanForward) -> String {
    format!("{}\n{}\n{}\n{}", s.segments, s.combine, s.states, s.output)
}

/// Compiles the backward kernel of `spec` for `target` and `config` (the forward's config:
/// `initial_state` makes it read `h0` and write `dh0`, `final_state` makes it read `dht`),
/// with the options of the environment. See [`crate::schedule::backward`] for its layout.
pub fn compile_backward(
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
) -> Result<Artifact, CompileError> {
    compile_backward_with(spec, target, config, &CompileOptions::from_env())
}

/// [`compile_backward`] with explicit options.
pub fn compile_backward_with(
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    options: &CompileOptions,
) -> Result<Artifact, CompileError> {
    let start = Instant::now();
    let fwd = plan::forward(spec)?;
    let bwd = plan::backward(spec)?;
    let schedule = schedule::backward(&fwd, &bwd, spec, target, config, options.matmul)?;
    let stages = Stages {
        info: schedule.kernel_info(),
        plan_text: bwd.to_string(),
        schedule_text: schedule.to_string(),
        mlir: emit::backward(&schedule)?,
    };
    finish(stages, target, options, start)
}

/// What the stages before the lowering produced.
struct Stages {
    info: KernelInfo,
    plan_text: String,
    schedule_text: String,
    mlir: String,
}

/// Lowers the emitted module for `target` and assembles the artifact (dumped when asked).
fn finish(
    stages: Stages,
    target: Target,
    options: &CompileOptions,
    start: Instant,
) -> Result<Artifact, CompileError> {
    let lowered = lower::lower_with(
        &stages.mlir,
        target,
        &LowerOptions::default().with_amd_assembly(options.amd_assembly),
    )?;
    let compile_time = start.elapsed();
    let asm = match lowered.format() {
        BinaryFormat::Ptx | BinaryFormat::Hsaco => lowered.assembly().map(str::to_owned),
        BinaryFormat::Spirv => spirv_dis(lowered.binary()),
    };
    let artifact = Artifact {
        info: stages.info,
        plan_text: stages.plan_text,
        schedule_text: stages.schedule_text,
        mlir: stages.mlir,
        lowered: Some(lowered.lowered_mlir().to_owned()),
        asm,
        binary: lowered.into_binary(),
        compile_time,
    };
    if let Some(dir) = &options.dump_dir {
        dump(dir, target, &artifact)?;
    }
    Ok(artifact)
}

/// A short, file-name-safe description of a config ([`KernelConfig::tag`]).
pub fn config_tag(config: &KernelConfig) -> String {
    config.tag()
}

/// Who compiles: this crate's version, a hash of its sources (and of the launch ABI in
/// linrec-spec) and the LLVM it links, e.g. `linrec-compiler 0.1.0+1f2e3d4c5b6a7988 (LLVM
/// 22.1.8)`. Kernel caches key on it, so a changed compiler or a new LLVM never reuses kernels
/// another one wrote; artifact manifests record it.
///
/// ```
/// let fp = linrec_compiler::fingerprint();
/// assert!(fp.starts_with("linrec-compiler ") && fp.contains("(LLVM 22."), "{fp}");
/// ```
pub fn fingerprint() -> String {
    let (major, minor, patch) = llvm_version();
    format!(
        "linrec-compiler {}+{} (LLVM {major}.{minor}.{patch})",
        env!("CARGO_PKG_VERSION"),
        env!("LINREC_COMPILER_SOURCE_HASH")
    )
}

/// The version of the LLVM linked into this binary (major, minor, patch), asked of LLVM
/// itself rather than taken from the build, so it is right however LLVM was found.
pub fn llvm_version() -> (u32, u32, u32) {
    let (mut major, mut minor, mut patch) = (0, 0, 0);
    // SAFETY: LLVMGetVersion only writes one unsigned int through each pointer it is given.
    unsafe { mlir_sys::LLVMGetVersion(&mut major, &mut minor, &mut patch) };
    (major, minor, patch)
}

fn dump(root: &Path, target: Target, a: &Artifact) -> Result<(), CompileError> {
    let dir = root.join(format!(
        "{}.{}.{}",
        a.info.entry,
        target.name(),
        config_tag(&a.info.config)
    ));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CompileError::Dump { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let write = |name: String, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    };
    write("00-plan.txt".into(), a.plan_text.as_bytes())?;
    write("01-schedule.txt".into(), a.schedule_text.as_bytes())?;
    write("02-emit.mlir".into(), a.mlir.as_bytes())?;
    if let Some(lowered) = &a.lowered {
        write("03-lowered.mlir".into(), lowered.as_bytes())?;
    }
    let t = target.name();
    match target.format() {
        BinaryFormat::Ptx => write(format!("04-{t}.ptx"), &a.binary)?,
        BinaryFormat::Hsaco => {
            write(format!("04-{t}.hsaco"), &a.binary)?;
            if let Some(asm) = &a.asm {
                write(format!("04-{t}.s"), asm.as_bytes())?;
            }
        }
        BinaryFormat::Spirv => {
            write(format!("04-{t}.spv"), &a.binary)?;
            if let Some(asm) = &a.asm {
                write(format!("04-{t}.spvasm"), asm.as_bytes())?;
            }
        }
    }
    write("05-info.txt".into(), format!("{:#?}\n", a.info).as_bytes())
}

/// The SPIR-V disassembly from `spirv-dis`, if it is installed (`LINREC_SPIRV_DIS`, else
/// `PATH`); `None` otherwise. The tool reads the module from stdin.
fn spirv_dis(binary: &[u8]) -> Option<String> {
    use std::io::Write;
    let exe = std::env::var_os("LINREC_SPIRV_DIS")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("spirv-dis"))
                .find(|p| p.is_file())
        })?;
    let mut child = Command::new(exe)
        .args(["--no-color", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(binary).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
