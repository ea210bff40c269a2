//! Typed errors of the spec crate. Every message names the offending part and what is allowed.

use crate::forms::Role;

/// Why a [`crate::Spec`] is not valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The variant name is not a snake_case identifier.
    #[error(
        "spec name `{name}` is not valid: use a snake_case identifier (lowercase ASCII letters, digits and `_`, starting with a letter), e.g. `gated_delta_net`"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// An input name is not an identifier or is reserved.
    #[error(
        "spec `{spec}`: input name `{name}` is not allowed: {why}; use an ASCII identifier other than {reserved}"
    )]
    InvalidInputName {
        /// The spec's name.
        spec: String,
        /// The input name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
        /// The reserved names, listed.
        reserved: String,
    },
    /// Two inputs share a name.
    #[error("spec `{spec}`: input name `{name}` is declared twice; give each input its own name")]
    DuplicateName {
        /// The spec's name.
        spec: String,
        /// The repeated name.
        name: String,
    },
    /// Two inputs play the same role.
    #[error(
        "spec `{spec}`: inputs `{first}` and `{second}` both play the role `{role}`; a spec has at most one input per role"
    )]
    DuplicateRole {
        /// The spec's name.
        spec: String,
        /// The shared role.
        role: Role,
        /// The first input with it.
        first: String,
        /// The second input with it.
        second: String,
    },
    /// A form needs an input that is not declared.
    #[error(
        "spec `{spec}`: {needed_by} needs an input with role `{role}` (shape {shape}), but none is declared; add one"
    )]
    MissingInput {
        /// The spec's name.
        spec: String,
        /// The missing role.
        role: Role,
        /// Which form needs it.
        needed_by: &'static str,
        /// Its shape in B, T, H, HV, K, V.
        shape: &'static str,
    },
    /// An input is declared that no form uses.
    #[error("spec `{spec}`: input `{name}` (role `{role}`) is not used: {why}")]
    UnusedInput {
        /// The spec's name.
        spec: String,
        /// The input's name.
        name: String,
        /// Its role.
        role: Role,
        /// Which form would use it.
        why: &'static str,
    },
    /// A combination of forms the compiler cannot derive.
    #[error("spec `{spec}`: unsupported combination: {what}; supported: {supported}")]
    Unsupported {
        /// The spec's name.
        spec: String,
        /// The combination.
        what: &'static str,
        /// What is supported instead.
        supported: &'static str,
    },
    /// The fixed scale is not a positive finite number.
    #[error(
        "spec `{spec}`: scale {value} is not allowed; use a positive finite number or the default K^-1/2"
    )]
    BadScale {
        /// The spec's name.
        spec: String,
        /// The value given.
        value: f64,
    },
}

/// Why a problem's dimensions, sequences or tensors do not fit a spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    /// A dimension is out of its range.
    #[error("dimension {name} = {value} is not allowed: {allowed}")]
    BadDim {
        /// Symbol of the dimension (`H`, `K`, ...).
        name: &'static str,
        /// The value given.
        value: usize,
        /// The allowed range.
        allowed: &'static str,
    },
    /// HV is not a multiple of H.
    #[error(
        "value heads HV = {hv} is not a multiple of query/key heads H = {h}; GVA needs HV % H == 0 (HV = H when values have as many heads as keys)"
    )]
    HeadsNotMultiple {
        /// Query/key heads.
        h: usize,
        /// Value heads.
        hv: usize,
    },
    /// cu_seqlens is malformed.
    #[error(
        "cu_seqlens {found:?} is malformed: {why}; it must start at 0, never decrease and end at T = {t}"
    )]
    BadCuSeqlens {
        /// The offsets given.
        found: Vec<i64>,
        /// What is wrong.
        why: &'static str,
        /// The total length T.
        t: usize,
    },
    /// Varlen needs B = 1.
    #[error(
        "varlen (cu_seqlens given) needs batch B = 1 with the sequences packed along T; got B = {b}"
    )]
    VarlenBatch {
        /// The batch given.
        b: usize,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?} ({symbolic})")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// Its shape.
        found: Vec<usize>,
        /// The shape expected.
        expected: Vec<usize>,
        /// The symbolic shape.
        symbolic: String,
    },
    /// A tensor the spec needs is missing.
    #[error(
        "tensor `{name}` ({role}, shape {symbolic}) is required by this spec but was not given"
    )]
    MissingTensor {
        /// The tensor's name.
        name: String,
        /// Its role.
        role: String,
        /// Its symbolic shape.
        symbolic: String,
    },
    /// A tensor was given that the spec does not use.
    #[error("tensor `{name}` was given but this spec has no such input; its inputs are: {known}")]
    UnexpectedTensor {
        /// The tensor's name.
        name: String,
        /// The spec's inputs.
        known: String,
    },
}
