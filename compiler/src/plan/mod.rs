//! The `plan` stage: a spec becomes a DAG of tile operations over one chunk of C tokens
//! (DESIGN §5). It is the mathematical program every target's kernels implement; the `schedule`
//! stage decides how it is split into kernels and tiles, the `emit` stage turns it into MLIR.
//!
//! Values are tiles whose shapes are symbolic in `C` (chunk length), `K` and `V`. Loads of a
//! partial last chunk are zero-padded, which keeps every op exact: a padded gate is 0, so the
//! chunk-local cumsum stays flat and its last row is the last valid token's.
//!
//! The plan is derived from the spec's forms, never from a variant's name. [`eval`] runs a plan
//! in f64 on the CPU, chunk by chunk, so the derivation is checked against the token-by-token
//! reference before any kernel exists.

pub mod eval;
mod forward;
mod print;

pub use forward::forward;

use linrec_spec::Role;

/// A symbolic tile dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// Tokens of the chunk.
    C,
    /// Key dimension.
    K,
    /// Value dimension.
    V,
}

/// A tile shape: rank 0 (scalar), 1 or 2.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A scalar.
    pub fn scalar() -> Self {
        Shape(vec![])
    }
    /// Rank of the tile.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
}

/// Index of a value in [`Plan::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// A scalar parameter of the kernel, fixed per launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// The output scale (the spec's, or the call's override).
    Scale,
}

/// One tile operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The chunk's rows of a per-token input (`[C, K]`, `[C, V]` or `[C]`), zero-padded.
    Load(Role),
    /// A constant per-head log-decay broadcast to the chunk's valid rows (`[C]`, 0 on padding),
    /// so constant and data scalar decays share the rest of the plan.
    ConstantGate,
    /// The state entering the chunk, `[K, V]`.
    StateIn,
    /// A launch parameter (scalar).
    Param(Param),
    /// A compile-time scalar.
    Const(f64),
    /// `x / sqrt(‖x‖² + 1e-6)` per row.
    L2NormRows(ValueId),
    /// Inclusive cumulative sum along C of a `[C]` tile.
    CumSum(ValueId),
    /// The last row of a `[C]` tile (a scalar).
    Last(ValueId),
    /// `x_i − x_j` of a `[C]` tile: `[C, C]`.
    PairDiff(ValueId),
    /// Keeps the causal part of a `[C, C]` tile (j ≤ i, or j < i when `strict`), `fill` elsewhere.
    MaskCausal {
        /// The tile.
        x: ValueId,
        /// Exclude the diagonal.
        strict: bool,
        /// Value outside the mask (−∞ before an exp2, 0 after).
        fill: f64,
    },
    /// `2^x` elementwise.
    Exp2(ValueId),
    /// Elementwise product; a scalar broadcasts everywhere, a `[C]` tile across the columns of
    /// a `[C, X]` tile.
    Mul(ValueId, ValueId),
    /// Elementwise sum of same-shaped tiles.
    Add(ValueId, ValueId),
    /// Elementwise difference; a scalar broadcasts.
    Sub(ValueId, ValueId),
    /// `op(a) · op(b)` where `op` transposes when the flag is set.
    Matmul {
        /// Left operand.
        a: ValueId,
        /// Right operand.
        b: ValueId,
        /// Transpose `a`.
        ta: bool,
        /// Transpose `b`.
        tb: bool,
    },
}

/// Where a plan's results go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sink {
    /// The chunk's output rows `[C, V]`.
    Output,
    /// The state leaving the chunk `[K, V]`.
    StateOut,
}

/// One node: an op and its result shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Its result shape.
    pub shape: Shape,
}

/// Direction of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// o and the final state from the inputs.
    Forward,
}

/// A per-chunk tile program.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Name of the spec it was derived from (for printing only).
    pub name: String,
    /// Direction.
    pub direction: Direction,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Results and the values they take.
    pub sinks: Vec<(Sink, ValueId)>,
}

impl Plan {
    /// The node of `id`.
    pub fn node(&self, id: ValueId) -> &Node {
        &self.nodes[id.0]
    }
}

/// Why a spec has no plan (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The spec itself is invalid.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// A form the compiler does not derive yet.
    #[error(
        "spec `{spec}`: not yet supported: {form}; the compiler derives kernels for decay none, constant or data scalar with the identity transition and the inclusive read (linear_attn, retention, simple_gla)"
    )]
    NotYetSupported {
        /// The spec's name.
        spec: String,
        /// The form.
        form: &'static str,
    },
}
