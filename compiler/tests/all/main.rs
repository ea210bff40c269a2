//! The one integration-test binary of `linrec-compiler`.
//!
//! Every test here links MLIR statically (a ~250 MB executable), so all of them live in this
//! single binary, split into modules, instead of one binary per file.

mod backward;
mod e2e;
mod emit;
mod errors;
mod lower;
mod matrix_core;
mod mma;
mod plan;
mod specs;
mod stages;
mod targets;
mod tensor_core;
