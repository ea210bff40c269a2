//! linrec's kernel compiler: spec → plan → kernels → MLIR → PTX / HSACO / SPIR-V.
//!
//! This is the only crate in the workspace that links LLVM/MLIR (through melior). Stages are
//! modules named after themselves; so far [`plan`] (the per-chunk tile program, with an f64 evaluator)
//! and [`lower`] (MLIR pass pipelines in process, handing back the serialized kernel as plain
//! data) exist.
//!
//! melior's `Context` is not `Send`; every entry point creates its own context, so the public
//! API is text in, text/bytes out and can be called from any thread.

pub mod lower;
pub mod plan;

pub use lower::{BinaryFormat, LowerError, Lowered, Target, lower, lower_to_ptx};
