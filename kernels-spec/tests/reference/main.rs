//! Tests of the f64 reference (DESIGN §4): exact gradients against finite differences, known
//! identities, varlen against per-sequence runs, and typed errors (never a panic).

#![allow(clippy::unwrap_used)]

mod common;
mod errors;
mod finite_diff;
mod identities;
mod varlen;
