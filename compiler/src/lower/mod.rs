//! `lower`: run MLIR pass pipelines in process and extract the target artifact.
//!
//! Input is the textual MLIR of a `gpu.container_module` (what `emit` will produce); output is
//! the serialized kernel — for NVIDIA, PTX text. Everything MLIR-specific stays inside this
//! module: callers hand in a `&str` and get a `String` back, so no `!Send` melior type leaks out.

use std::{cell::RefCell, fmt, rc::Rc};

use melior::{
    Context,
    diagnostic::{Diagnostic, DiagnosticSeverity},
    dialect::DialectRegistry,
    ir::{
        Module,
        attribute::{ArrayAttribute, AttributeLike},
        operation::{OperationLike, WalkOrder, WalkResult},
    },
    pass::PassManager,
    utility::{
        parse_pass_pipeline, register_all_dialects, register_all_llvm_translations,
        register_all_passes,
    },
};

/// NVIDIA chips [`lower_to_ptx`] accepts, as written in `nvvm-attach-target{chip=…}`.
pub const NVIDIA_CHIPS: &[&str] = &["sm_80", "sm_90"];

/// `gpu::CompilationTarget::Assembly` in MLIR's GPU dialect (`format=isa`), as returned by
/// `mlirGPUObjectAttrGetFormat`.
const GPU_FORMAT_ASSEMBLY: u32 = 2;

/// MLIR diagnostics collected during one lowering, one rendered message per entry
/// (`<location>: <severity>: <message>`, notes indented on following lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<String>);

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
pub enum LowerError {
    /// The `chip` argument is not a chip this lowering supports.
    #[error(
        "invalid argument `chip`: unknown NVIDIA chip `{chip}`; expected one of: {}",
        NVIDIA_CHIPS.join(", ")
    )]
    UnknownChip {
        /// The chip name as given.
        chip: String,
    },
    /// The input text is not valid MLIR (syntax error or verifier failure).
    #[error("failed to parse the MLIR input:\n{diagnostics}")]
    Parse {
        /// What MLIR said.
        diagnostics: Diagnostics,
    },
    /// The pass pipeline string was rejected (a bug in this crate, not in the input).
    #[error("invalid pass pipeline `{pipeline}`: {message}")]
    Pipeline {
        /// The textual pipeline.
        pipeline: String,
        /// MLIR's parser message.
        message: String,
    },
    /// A pass failed on the input module.
    #[error("pass pipeline `{pipeline}` failed:\n{diagnostics}")]
    Pass {
        /// The textual pipeline.
        pipeline: String,
        /// What MLIR said.
        diagnostics: Diagnostics,
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

/// The NVVM pipeline for `chip`: attach the target, lower the GPU module to the NVVM/LLVM
/// dialects, and serialize it to PTX (`format=isa`). The bare-pointer convention makes each
/// statically shaped memref argument one `.param` pointer instead of a 5-field descriptor.
pub fn nvvm_pipeline(chip: &str) -> String {
    format!(
        "builtin.module(nvvm-attach-target{{chip={chip} features=+ptx80 O=3}}, \
         gpu.module(convert-gpu-to-nvvm{{use-bare-ptr-memref-call-conv=true}}), \
         reconcile-unrealized-casts, gpu-module-to-binary{{format=isa}})"
    )
}

/// Lowers a `gpu.container_module` (MLIR text) to PTX for an NVIDIA `chip` (`sm_80`, `sm_90`).
///
/// Runs entirely in process on a fresh MLIR context, so it may be called from any thread.
/// The module must hold exactly the kernels to compile; the PTX of its first `gpu.binary` is
/// returned.
pub fn lower_to_ptx(mlir: &str, chip: &str) -> Result<String, LowerError> {
    if !NVIDIA_CHIPS.contains(&chip) {
        return Err(LowerError::UnknownChip {
            chip: chip.to_owned(),
        });
    }
    let pipeline = nvvm_pipeline(chip);

    let session = Session::new();
    let mut module = Module::parse(&session.context, mlir).ok_or_else(|| LowerError::Parse {
        diagnostics: session.take_diagnostics(),
    })?;

    let pm = PassManager::new(&session.context);
    pm.enable_verifier(true);
    parse_pass_pipeline(pm.as_operation_pass_manager(), &pipeline).map_err(|e| {
        LowerError::Pipeline {
            pipeline: pipeline.clone(),
            message: e.to_string(),
        }
    })?;
    // `run` only says that it failed; the reason arrives through the diagnostic handler.
    pm.run(&mut module).map_err(|_| LowerError::Pass {
        pipeline: pipeline.clone(),
        diagnostics: session.take_diagnostics(),
    })?;

    let ptx = first_binary_object(&module, GPU_FORMAT_ASSEMBLY, "PTX assembly")?;
    // The serializer may hand back a C string; PTX text itself never contains NUL.
    let ptx = ptx.strip_suffix(b"\0").unwrap_or(&ptx);
    String::from_utf8(ptx.to_vec()).map_err(|e| LowerError::MissingBinary {
        expected: "PTX assembly",
        reason: format!("the object is not UTF-8 text ({e})"),
    })
}

/// One MLIR context set up for lowering, plus the diagnostics its handler collects.
struct Session {
    // Field order matters for drop: the context (which owns the handler closure) goes first.
    context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
}

impl Session {
    fn new() -> Self {
        let registry = DialectRegistry::new();
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
        }
    }

    fn take_diagnostics(&self) -> Diagnostics {
        Diagnostics(std::mem::take(&mut *self.diagnostics.borrow_mut()))
    }
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
    format: u32,
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
                    if actual != format {
                        return Err(missing(&format!(
                            "the object has format {actual}, expected {format}"
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
