//! The `emit` stage: a [`Schedule`] becomes an MLIR `gpu.container_module` holding one
//! `gpu.module @linrec` with one `gpu.func ... kernel`, built in memory with melior's
//! `OperationBuilder` (no MLIR text is formatted by hand), verified, and printed as the
//! deterministic text that [`crate::lower`] takes and the snapshots record.
//!
//! Files: `builder.rs` (the ops, over melior), `target.rs` (every vendor difference),
//! `kernel.rs` (the kernel's frame and chunk loop), `tile.rs` (one plan node's loop),
//! `backward.rs` (the backward's two kernels and their gradient stores), `states.rs` (chunk
//! states and dh per chunk), `copy.rs` (16-byte row copies), `scan.rs` (warp scans), `mma.rs`
//! (tensor cores), `wgmma.rs` (Hopper's warpgroup MMA), `mfma.rs` (AMD matrix cores),
//! `segments.rs` (the split-scan over T), `tma.rs` (token rows by the Tensor Memory
//! Accelerator).

mod backward;
mod builder;
mod copy;
mod kernel;
pub mod mfma;
pub mod mma;
mod scan;
mod segments;
mod states;
mod target;
mod tile;
mod tma;
pub mod wgmma;

use std::{cell::RefCell, rc::Rc};

use melior::{
    Context,
    dialect::DialectRegistry,
    ir::{
        Attribute, Block, BlockLike, Location, Module, Region, RegionLike,
        attribute::StringAttribute,
        operation::{OperationLike, OperationMutLike},
    },
    pass::PassManager,
    utility::{parse_pass_pipeline, register_all_dialects, register_all_passes},
};

use crate::schedule::{BackwardSchedule, ScanForward, Schedule, SplitForward, Widths};

/// Folds constants and common subexpressions of the built module (see [`forward`]).
const TIDY_PIPELINE: &str = "builtin.module(gpu.module(canonicalize, cse))";

/// The `gpu.module`'s symbol.
pub const GPU_MODULE: &str = "linrec";

/// Why a schedule could not be emitted. Every variant is a bug in linrec (the schedule was
/// already checked), reported with MLIR's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// MLIR refused to build an op.
    #[error("emit: could not build {op}: {detail}")]
    Build {
        /// The op or attribute.
        op: String,
        /// What went wrong.
        detail: String,
    },
    /// The schedule and the emitter disagree.
    #[error("emit: inconsistent schedule: {0}")]
    Schedule(String),
    /// The built module does not verify.
    #[error("emit: the generated module does not verify:\n{0}")]
    Verify(String),
}

/// Emits the kernel of `schedule` and returns the module's text.
pub fn forward(schedule: &Schedule) -> Result<String, EmitError> {
    kernels(&[schedule])
}

/// Emits the kernels of a split forward (states, its narrower variants, output) into one
/// module.
pub fn forward_split(split: &SplitForward) -> Result<String, EmitError> {
    let mut all = vec![&split.states];
    all.extend(&split.narrower);
    all.push(&split.output);
    kernels(&all)
}

/// Emits the kernels of a split-scan forward (segments, combine, states, output) into one
/// module, after `first` (the fused kernels of a forward that runs the split-scan only for
/// long sequences; none for the split-scan alone).
pub fn forward_scan(first: &[&Schedule], scan: &ScanForward) -> Result<String, EmitError> {
    let mut all = first.to_vec();
    all.extend([&scan.segments, &scan.combine, &scan.states, &scan.output]);
    kernels(&all)
}

/// Emits the fused forward at its widths (the widest first) into one module.
pub fn forward_widths(widths: &Widths) -> Result<String, EmitError> {
    kernels(&widths.all())
}

/// One module with a kernel per schedule (the dynamic shared memory declared once).
fn kernels(schedules: &[&Schedule]) -> Result<String, EmitError> {
    // One module, one extern array: 1024-byte aligned for every kernel if any swizzles.
    let aligned = schedules.iter().any(|s| s.wgmma);
    module(|ctx, body| {
        let mut declared = false;
        for schedule in schedules {
            let k = kernel::Kernel {
                b: builder::Builder::new(ctx),
                t: target::TargetOps::new(schedule.target)
                    .with_proxy_fence(schedule.wgmma)
                    .with_aligned_smem(aligned),
                s: schedule,
                bwd: None,
            };
            if schedule.matmul == crate::schedule::MatmulPath::TensorCore && !declared {
                k.declare_smem(body)?;
                declared = true;
            }
            k.build(body)?;
        }
        Ok(())
    })
}

/// Emits the backward kernel of `schedule` (see [`crate::schedule::backward`]) and returns
/// the module's text.
pub fn backward(schedule: &BackwardSchedule) -> Result<String, EmitError> {
    module(|ctx, body| backward::build(ctx, schedule, body))
}

/// A verified, tidied `gpu.container_module` whose `gpu.module` body `build` fills.
fn module(
    build: impl for<'c> FnOnce(&'c Context, &Block<'c>) -> Result<(), EmitError>,
) -> Result<String, EmitError> {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let ctx = Context::new_with_registry(&registry, false);
    // Touching a dialect that is not loaded segfaults instead of erroring (melior#23).
    ctx.load_all_available_dialects();
    let diagnostics = Rc::new(RefCell::new(Vec::<String>::new()));
    let sink = Rc::clone(&diagnostics);
    ctx.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(format!("{}: {d}", d.location()));
        true
    });

    let b = builder::Builder::new(&ctx);
    let mut module = Module::new(Location::unknown(&ctx));
    module
        .as_operation_mut()
        .set_attribute("gpu.container_module", Attribute::unit(&ctx));

    let body = Block::new(&[]);
    build(&ctx, &body)?;
    let region = Region::new();
    region.append_block(body);
    let gpu_module = b
        .op("gpu.module")
        .add_attributes(&[b.named("sym_name", StringAttribute::new(&ctx, GPU_MODULE).into())])
        .add_regions([region])
        .build()
        .map_err(|e| EmitError::Build {
            op: "gpu.module".into(),
            detail: e.to_string(),
        })?;
    module.body().append_operation(gpu_module);

    if !module.as_operation().verify() {
        let text = diagnostics.borrow().join("\n");
        return Err(EmitError::Verify(text));
    }
    // Tidy before printing: the builders repeat constants and address arithmetic per loop;
    // folding them once here (the lowering pipelines would anyway) keeps the text that the
    // snapshots and `--stage mlir` show about half as long and easier to read.
    register_all_passes();
    let pm = PassManager::new(&ctx);
    pm.enable_verifier(true);
    parse_pass_pipeline(pm.as_operation_pass_manager(), TIDY_PIPELINE).map_err(|e| {
        EmitError::Build {
            op: format!("pass pipeline `{TIDY_PIPELINE}`"),
            detail: e.to_string(),
        }
    })?;
    pm.run(&mut module).map_err(|_| {
        EmitError::Verify(format!(
            "{TIDY_PIPELINE} failed:\n{}",
            diagnostics.borrow().join("\n")
        ))
    })?;
    Ok(module.as_operation().to_string())
}
