//! linrec's kernel compiler: spec → plan → kernels → MLIR → PTX / HSACO / SPIR-V.
//!
//! This is the only crate in the workspace that links LLVM/MLIR (through melior). Stages are
//! modules named after themselves:
//!
//! | stage | what it produces |
//! |---|---|
//! | [`plan`] | the per-chunk tile program (with an f64 evaluator) |
//! | [`schedule`] | kernels, grid and block, scratch layout, barriers per target |
//! | [`emit`] | an MLIR `gpu.module`, built with melior's builders |
//! | [`lower`] | MLIR pass pipelines in process → PTX / HSACO / SPIR-V bytes |
//! | [`artifact`] | all of the above in one call ([`compile`]): bytes + launch metadata |
//!
//! melior's `Context` is not `Send`; every entry point creates its own context, so the public
//! API is text in, text/bytes out and can be called from any thread.

pub mod artifact;
pub mod emit;
pub mod lower;
pub mod plan;
pub mod schedule;

pub use artifact::{
    Artifact, CompileError, CompileOptions, ForwardForm, compile, compile_backward,
    compile_backward_with, compile_with, fingerprint,
};
pub use lower::{BinaryFormat, LowerError, Lowered, Target, lower, lower_to_ptx};
