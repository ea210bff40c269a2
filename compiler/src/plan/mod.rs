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
//!
//! # How the backward is derived
//!
//! [`backward`] differentiates the forward plan in reverse mode (DESIGN §5: the backward is
//! derived, not written per variant). The backward plan of a chunk recomputes the forward
//! nodes it needs from the same inputs and the state entering the chunk, and takes two more
//! sources, [`Op::GradIn`]: the chunk's `dO` rows and `dh'`, the gradient of the state leaving
//! it. Walking the forward nodes in reverse, each node's gradient is the sum of what its
//! consumers sent it, and its op's adjoint rule sends terms on to its operands:
//!
//! | op | adjoint (`dy` the node's gradient) |
//! |---|---|
//! | `matmul op(a)·op(b)` | two matmuls: `d op(a) = dy·op(b)ᵀ`, `d op(b) = op(a)ᵀ·dy`, transposed back when read transposed |
//! | `mul`, `add`, `sub` | elementwise (`dy ⊙ other`, `±dy`), then a [`Op::RowSum`] or [`Op::SumAll`] over the dims the operand was broadcast across |
//! | `exp2 x` | `dy ⊙ y ⊙ ln 2` |
//! | `mask_causal` | the same mask with fill 0 |
//! | `pair_diff x` | `row_sum(dy) − col_sum(dy)` |
//! | `cumsum` | [`Op::ReverseCumSum`] |
//! | `last` | [`Op::ScatterLast`] (into the last row) |
//! | `l2norm_rows` | [`Op::L2NormRowsVjp`] |
//! | `load role` | a sink, [`Sink::Grad`] of the role |
//! | `state_in` | a sink, [`Sink::StateGrad`]: `dh`, the `dh'` of the previous chunk |
//! | `constant_gate` | the decay rate's gradient, `Σ dy` over [`Op::ValidRows`], when the rate is an input; none for the fixed RetNet schedule |
//! | `param`, `const` | none |
//!
//! Only operands that depend on an input with a gradient receive terms, and recomputed values
//! no gradient needs are dropped, so no dead adjoint (of the scale, of a constant) appears. The
//! reverse scan over chunks is the caller's: [`eval::backward`] sweeps the chunks backwards
//! carrying `dh`, as the kernels will. The gate gradient falls out of the derivation; for a
//! scalar gate it is fla's reverse chunk-local cumsum of `q⊙dq − k⊙dk` plus a last-row state
//! term.

mod ad;
mod backward;
pub mod eval;
mod forward;
mod fuse;
mod print;
mod scan;

pub use backward::backward;
pub use forward::forward;
pub use fuse::{FuseOptions, fuse};
pub use scan::segment_plan;

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
    // Backward plans only: the sources and the adjoints of the ops above.
    /// The gradient arriving at a forward sink: the chunk's `dO` rows (`[C, V]`, zero-padded)
    /// for [`Sink::Output`], `dh'` (`[K, V]`, the gradient of the state leaving the chunk) for
    /// [`Sink::StateOut`].
    GradIn(Sink),
    /// `[C]`: 1 on the chunk's valid rows, 0 on padding (the derivative of [`Op::ConstantGate`]
    /// with respect to the decay rate).
    ValidRows,
    /// Reverse inclusive cumulative sum along C of a `[C]` tile, `y_i = Σ_{j ≥ i} x_j`: the
    /// adjoint of [`Op::CumSum`].
    ReverseCumSum(ValueId),
    /// Sum over the columns of a matrix, `[R, X] → [R]`.
    RowSum(ValueId),
    /// Sum over the rows of a matrix, `[X, R] → [R]`.
    ColSum(ValueId),
    /// Sum of every element (a scalar).
    SumAll(ValueId),
    /// A `[C]` tile that is zero except its last row, which holds the scalar operand: the
    /// adjoint of [`Op::Last`].
    ScatterLast(ValueId),
    /// The vector–Jacobian product of [`Op::L2NormRows`] at `x`:
    /// `dx = r·dy − r³·x·(x·dy)` per row with `r = (‖x‖² + 1e-6)^{-1/2}`.
    L2NormRowsVjp {
        /// The rows that were normalised.
        x: ValueId,
        /// The gradient with respect to the normalised rows.
        dy: ValueId,
    },
    /// Elementwise nodes and the matmuls they alone consume, fused into one node by
    /// [`fuse()`]: the matmuls summed, then an expression evaluated per element. Never built
    /// by the derivations; the kernels run it as one loop (or one matmul epilogue).
    Fused(Box<Fused>),
}

/// One `matmul op(a)·op(b)` of a [`Fused`] node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulTerm {
    /// Left operand.
    pub a: ValueId,
    /// Right operand.
    pub b: ValueId,
    /// Transpose `a`.
    pub ta: bool,
    /// Transpose `b`.
    pub tb: bool,
}

/// The body of [`Op::Fused`]: `expr`, where [`Expr::Acc`] is the sum of `matmuls`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    /// Matmuls of the node's shape, summed (in registers, on the matmul units); empty when
    /// the node has no matmul.
    pub matmuls: Vec<MatmulTerm>,
    /// The value of each element.
    pub expr: Expr,
}

/// An elementwise expression at one element `(row, col)` of a [`Fused`] node.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// The element of the matmuls' sum.
    Acc,
    /// A plan value at the element: a scalar everywhere, a `[X]` value of a `[X, Y]` node at
    /// the row, a value of the node's shape at the element.
    Value(ValueId),
    /// `x[row] − x[col]` of a `[C]` value (an inlined [`Op::PairDiff`]).
    PairDiff(ValueId),
    /// `2^x`.
    Exp2(Box<Expr>),
    /// `x · y`.
    Mul(Box<Expr>, Box<Expr>),
    /// `x + y`.
    Add(Box<Expr>, Box<Expr>),
    /// `x − y`.
    Sub(Box<Expr>, Box<Expr>),
    /// `x` where `col ≤ row` (`col < row` when `strict`), `fill` elsewhere.
    MaskCausal {
        /// The masked expression.
        x: Box<Expr>,
        /// Exclude the diagonal.
        strict: bool,
        /// Value outside the mask.
        fill: f64,
    },
}

impl Expr {
    /// The plan values the expression reads, in first-use order, each once.
    pub fn values(&self) -> Vec<ValueId> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Value(v) | Expr::PairDiff(v) = e {
                if !out.contains(v) {
                    out.push(*v);
                }
            }
        });
        out
    }

    /// Calls `f` on every sub-expression, parents first.
    pub fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Acc | Expr::Value(_) | Expr::PairDiff(_) => {}
            Expr::Exp2(x) | Expr::MaskCausal { x, .. } => x.visit(f),
            Expr::Mul(x, y) | Expr::Add(x, y) | Expr::Sub(x, y) => {
                x.visit(f);
                y.visit(f);
            }
        }
    }

    /// The same expression reading `f(v)` for each value `v`.
    pub fn map_values(&self, f: &impl Fn(ValueId) -> ValueId) -> Expr {
        let bx = |e: &Expr| Box::new(e.map_values(f));
        match self {
            Expr::Acc => Expr::Acc,
            Expr::Value(v) => Expr::Value(f(*v)),
            Expr::PairDiff(v) => Expr::PairDiff(f(*v)),
            Expr::Exp2(x) => Expr::Exp2(bx(x)),
            Expr::Mul(x, y) => Expr::Mul(bx(x), bx(y)),
            Expr::Add(x, y) => Expr::Add(bx(x), bx(y)),
            Expr::Sub(x, y) => Expr::Sub(bx(x), bx(y)),
            Expr::MaskCausal { x, strict, fill } => Expr::MaskCausal {
                x: bx(x),
                strict: *strict,
                fill: *fill,
            },
        }
    }
}

impl Fused {
    /// Every value read: the matmuls' operands, then the expression's values (each once).
    pub fn operands(&self) -> Vec<ValueId> {
        let mut out: Vec<ValueId> = Vec::new();
        for m in &self.matmuls {
            for v in [m.a, m.b] {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        for v in self.expr.values() {
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }
}

impl Op {
    /// The values this op reads, in operand order.
    pub fn operands(&self) -> Vec<ValueId> {
        match self {
            Op::Load(_)
            | Op::ConstantGate
            | Op::StateIn
            | Op::Param(_)
            | Op::Const(_)
            | Op::GradIn(_)
            | Op::ValidRows => vec![],
            Op::L2NormRows(x)
            | Op::CumSum(x)
            | Op::Last(x)
            | Op::PairDiff(x)
            | Op::Exp2(x)
            | Op::MaskCausal { x, .. }
            | Op::ReverseCumSum(x)
            | Op::RowSum(x)
            | Op::ColSum(x)
            | Op::SumAll(x)
            | Op::ScatterLast(x) => vec![*x],
            Op::Mul(a, b) | Op::Add(a, b) | Op::Sub(a, b) | Op::Matmul { a, b, .. } => {
                vec![*a, *b]
            }
            Op::L2NormRowsVjp { x, dy } => vec![*x, *dy],
            Op::Fused(f) => f.operands(),
        }
    }

    /// The same op reading `f(v)` for each operand `v`.
    pub fn map_operands(&self, f: impl Fn(ValueId) -> ValueId) -> Op {
        match self {
            Op::Load(_)
            | Op::ConstantGate
            | Op::StateIn
            | Op::Param(_)
            | Op::Const(_)
            | Op::GradIn(_)
            | Op::ValidRows => self.clone(),
            Op::L2NormRows(x) => Op::L2NormRows(f(*x)),
            Op::CumSum(x) => Op::CumSum(f(*x)),
            Op::Last(x) => Op::Last(f(*x)),
            Op::PairDiff(x) => Op::PairDiff(f(*x)),
            Op::Exp2(x) => Op::Exp2(f(*x)),
            Op::MaskCausal { x, strict, fill } => Op::MaskCausal {
                x: f(*x),
                strict: *strict,
                fill: *fill,
            },
            Op::ReverseCumSum(x) => Op::ReverseCumSum(f(*x)),
            Op::RowSum(x) => Op::RowSum(f(*x)),
            Op::ColSum(x) => Op::ColSum(f(*x)),
            Op::SumAll(x) => Op::SumAll(f(*x)),
            Op::ScatterLast(x) => Op::ScatterLast(f(*x)),
            Op::Mul(a, b) => Op::Mul(f(*a), f(*b)),
            Op::Add(a, b) => Op::Add(f(*a), f(*b)),
            Op::Sub(a, b) => Op::Sub(f(*a), f(*b)),
            Op::Matmul { a, b, ta, tb } => Op::Matmul {
                a: f(*a),
                b: f(*b),
                ta: *ta,
                tb: *tb,
            },
            Op::L2NormRowsVjp { x, dy } => Op::L2NormRowsVjp {
                x: f(*x),
                dy: f(*dy),
            },
            Op::Fused(fused) => Op::Fused(Box::new(Fused {
                matmuls: fused
                    .matmuls
                    .iter()
                    .map(|m| MatmulTerm {
                        a: f(m.a),
                        b: f(m.b),
                        ..*m
                    })
                    .collect(),
                expr: fused.expr.map_values(&f),
            })),
        }
    }
}

/// Where a plan's results go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sink {
    /// The chunk's output rows `[C, V]`.
    Output,
    /// The state leaving the chunk `[K, V]`.
    StateOut,
    /// Backward: the chunk's part of the gradient of the input playing this role — its rows
    /// (`[C, K]`, `[C, V]` or `[C]`; padded rows are dropped by the caller) or, for
    /// [`Role::DecayRate`], a scalar summed over the chunk's valid rows. A role without a sink
    /// gets no gradient from this chunk.
    Grad(Role),
    /// Backward: `dh`, the gradient of the state entering the chunk `[K, V]` (the reverse scan
    /// carries it to the previous chunk as its `dh'`).
    StateGrad,
    /// The scalar `d` of a state update `S' = d · S + U` ([`segment_plan`]): the split-scan's
    /// segment kernel multiplies it over its chunks.
    StateDecay,
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
    /// The input gradients and `dh` of one chunk from its inputs, the state entering it, its
    /// `dO` rows and `dh'` (see [`backward`]).
    Backward,
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

    /// The plan with only the sinks `keep` accepts and the nodes they need, renumbered in
    /// order. The backward kernel recomputes the chunk states with the forward plan kept to
    /// [`Sink::StateOut`].
    ///
    /// ```
    /// # let spec = linrec_spec::Spec {
    /// #     name: "la".into(), doc: String::new(),
    /// #     inputs: vec![
    /// #         linrec_spec::Input::new("q", linrec_spec::Role::Query),
    /// #         linrec_spec::Input::new("k", linrec_spec::Role::Key),
    /// #         linrec_spec::Input::new("v", linrec_spec::Role::Value),
    /// #     ],
    /// #     decay: linrec_spec::Decay::None, transition: linrec_spec::Transition::Identity,
    /// #     write: linrec_spec::Write::Outer, read: linrec_spec::Read::Inclusive,
    /// #     scale: linrec_spec::Scale::InvSqrtK, features: Default::default(),
    /// # };
    /// use linrec_compiler::plan::{self, Sink};
    /// let states = plan::forward(&spec)?.keep_sinks(|s| s == Sink::StateOut);
    /// assert!(!states.to_string().contains("load query"));
    /// # Ok::<(), linrec_compiler::plan::PlanError>(())
    /// ```
    pub fn keep_sinks(&self, keep: impl Fn(Sink) -> bool) -> Plan {
        let sinks: Vec<(Sink, ValueId)> = self
            .sinks
            .iter()
            .copied()
            .filter(|(s, _)| keep(*s))
            .collect();
        let mut live = vec![false; self.nodes.len()];
        for (_, v) in &sinks {
            live[v.0] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for v in self.nodes[i].op.operands() {
                    live[v.0] = true;
                }
            }
        }
        let order: Vec<usize> = (0..self.nodes.len()).filter(|i| live[*i]).collect();
        self.rebuild(&order, |i| self.nodes[i].op.clone(), &sinks)
    }

    /// The plan made of the nodes `order` lists (old indices, in their new order, each after
    /// its operands), node `i` computing `op_of(i)` (operands in the old numbering), with
    /// `sinks` (old ids); everything renumbered. The passes that drop, merge or reorder nodes
    /// ([`Plan::keep_sinks`], [`fuse()`], the schedule's ordering) share it.
    pub(crate) fn rebuild(
        &self,
        order: &[usize],
        mut op_of: impl FnMut(usize) -> Op,
        sinks: &[(Sink, ValueId)],
    ) -> Plan {
        let mut renumber = vec![ValueId(usize::MAX); self.nodes.len()];
        for (new, &old) in order.iter().enumerate() {
            renumber[old] = ValueId(new);
        }
        let nodes = order
            .iter()
            .map(|&old| Node {
                op: op_of(old).map_operands(|v| renumber[v.0]),
                shape: self.nodes[old].shape.clone(),
            })
            .collect();
        Plan {
            name: self.name.clone(),
            direction: self.direction,
            nodes,
            sinks: sinks.iter().map(|(s, v)| (*s, renumber[v.0])).collect(),
        }
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
    /// The backward derivation met a plan it cannot differentiate (an op with no adjoint rule,
    /// or operands that do not broadcast): a bug in the pass that built the plan.
    #[error("cannot differentiate the plan of `{spec}`: {why}")]
    Derivation {
        /// The spec's name.
        spec: String,
        /// What went wrong.
        why: String,
    },
}
