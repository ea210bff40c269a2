//! The adjoint rule of every tile op (reverse mode): given a node `y = op(x…)` and the
//! gradient `dy` flowing into it, the terms it adds to the gradient of each operand.
//!
//! Broadcasting is undone by reductions: an operand that was broadcast across the columns of
//! a matrix receives the row sums of its term, a scalar receives the sum of every element.

use super::{Dim, Node, Op, Shape, ValueId};

/// A plan under construction. Identical nodes are shared (every op is pure), so recomputing a
/// forward value or building the same constant twice costs nothing.
pub(super) struct Builder {
    pub(super) nodes: Vec<Node>,
}

impl Builder {
    pub(super) fn new() -> Self {
        Builder { nodes: Vec::new() }
    }

    pub(super) fn push(&mut self, op: Op, shape: Vec<Dim>) -> ValueId {
        let node = Node {
            op,
            shape: Shape(shape),
        };
        if let Some(i) = self.nodes.iter().position(|n| *n == node) {
            return ValueId(i);
        }
        self.nodes.push(node);
        ValueId(self.nodes.len() - 1)
    }

    pub(super) fn shape(&self, v: ValueId) -> Vec<Dim> {
        self.nodes[v.0].shape.0.clone()
    }

    /// Elementwise product; the result has the larger operand's shape.
    fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let shape = if sa.len() >= sb.len() { sa } else { sb };
        self.push(Op::Mul(a, b), shape)
    }

    fn matmul(&mut self, a: ValueId, b: ValueId, ta: bool, tb: bool) -> ValueId {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let m = if ta { sa[1] } else { sa[0] };
        let n = if tb { sb[0] } else { sb[1] };
        self.push(Op::Matmul { a, b, ta, tb }, vec![m, n])
    }

    /// Sums `v` down to `target`, undoing the broadcast that took a `target`-shaped operand to
    /// `v`'s shape.
    pub(super) fn reduce_to(&mut self, v: ValueId, target: &[Dim]) -> Result<ValueId, String> {
        let shape = self.shape(v);
        if shape == target {
            Ok(v)
        } else if target.is_empty() {
            Ok(self.push(Op::SumAll(v), vec![]))
        } else if target.len() == 1 && shape.len() == 2 && shape[0] == target[0] {
            Ok(self.push(Op::RowSum(v), target.to_vec()))
        } else {
            Err(format!(
                "a {} operand does not broadcast to {}",
                Shape(target.to_vec()),
                Shape(shape)
            ))
        }
    }
}

/// One term of an operand's gradient.
pub(super) struct Term {
    /// The operand it belongs to.
    pub(super) to: ValueId,
    /// Its value (already reduced to the operand's shape).
    pub(super) value: ValueId,
    /// Subtract it instead of adding it (keeps `Sub` free of a negation node).
    pub(super) negate: bool,
}

/// The gradient terms of `y = op(…)` for its operands, given `dy`. `op` reads values of `b`;
/// `active(x)` says whether operand `x` depends on anything with a gradient, so no term is
/// built for constants and parameters (their adjoints would be dead code).
///
/// Sources (loads, the state, constants) have no operands and return no terms: the backward
/// pass turns their gradients into sinks.
pub(super) fn adjoint(
    b: &mut Builder,
    op: &Op,
    y: ValueId,
    dy: ValueId,
    active: &dyn Fn(ValueId) -> bool,
) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    let mut add =
        |to: ValueId, value: ValueId, negate: bool| terms.push(Term { to, value, negate });
    match op {
        Op::Load(_)
        | Op::ConstantGate
        | Op::StateIn
        | Op::Param(_)
        | Op::Const(_)
        | Op::GradIn(_)
        | Op::ValidRows => {}
        Op::L2NormRows(x) => {
            let dx = b.push(Op::L2NormRowsVjp { x: *x, dy }, b.shape(*x));
            add(*x, dx, false);
        }
        Op::CumSum(x) => {
            // y_i = Σ_{j ≤ i} x_j, so dx_j = Σ_{i ≥ j} dy_i.
            let dx = b.push(Op::ReverseCumSum(dy), b.shape(*x));
            add(*x, dx, false);
        }
        Op::ReverseCumSum(x) => {
            let dx = b.push(Op::CumSum(dy), b.shape(*x));
            add(*x, dx, false);
        }
        Op::Last(x) => {
            let dx = b.push(Op::ScatterLast(dy), b.shape(*x));
            add(*x, dx, false);
        }
        Op::ScatterLast(x) => {
            let dx = b.push(Op::Last(dy), b.shape(*x));
            add(*x, dx, false);
        }
        Op::PairDiff(x) => {
            // y_ij = x_i − x_j: x_i gets row i of dy, and loses column i.
            let rows = b.push(Op::RowSum(dy), b.shape(*x));
            let cols = b.push(Op::ColSum(dy), b.shape(*x));
            add(*x, rows, false);
            add(*x, cols, true);
        }
        Op::MaskCausal { x, strict, .. } => {
            // Masked entries do not depend on x (the fill is a constant).
            let dx = b.push(
                Op::MaskCausal {
                    x: dy,
                    strict: *strict,
                    fill: 0.0,
                },
                b.shape(*x),
            );
            add(*x, dx, false);
        }
        Op::Exp2(x) => {
            // d 2^x = 2^x · ln 2 · dx; y is 0 where x was −∞, so masked entries stay 0.
            let dyy = b.mul(dy, y);
            let ln2 = b.push(Op::Const(std::f64::consts::LN_2), vec![]);
            let dx = b.mul(dyy, ln2);
            add(*x, dx, false);
        }
        Op::Mul(l, r) => {
            for (x, other) in [(*l, *r), (*r, *l)] {
                if active(x) {
                    let t = b.mul(dy, other);
                    let dx = b.reduce_to(t, &b.shape(x))?;
                    add(x, dx, false);
                }
            }
        }
        Op::Add(l, r) | Op::Sub(l, r) => {
            let negate_r = matches!(op, Op::Sub(..));
            for (x, negate) in [(*l, false), (*r, negate_r)] {
                if active(x) {
                    let dx = b.reduce_to(dy, &b.shape(x))?;
                    add(x, dx, negate);
                }
            }
        }
        Op::Matmul { a, b: r, ta, tb } => {
            let (a, r, ta, tb) = (*a, *r, *ta, *tb);
            // Y = op(A) op(B): d op(A) = dY op(B)ᵀ and d op(B) = op(A)ᵀ dY, transposed back
            // when the operand was read transposed.
            if active(a) {
                let da = if ta {
                    b.matmul(r, dy, tb, true)
                } else {
                    b.matmul(dy, r, false, !tb)
                };
                add(a, da, false);
            }
            if active(r) {
                let dr = if tb {
                    b.matmul(dy, a, true, ta)
                } else {
                    b.matmul(a, dy, !ta, false)
                };
                add(r, dr, false);
            }
        }
        Op::RowSum(_) | Op::ColSum(_) | Op::SumAll(_) | Op::L2NormRowsVjp { .. } => {
            return Err(format!(
                "`{op}` only appears in backward plans; it has no adjoint rule (second-order \
                 derivatives are not derived)"
            ));
        }
        Op::Fused(_) => {
            return Err(format!(
                "`{op}` comes from the fusion pass, which runs after the derivation; \
                 differentiate the unfused plan"
            ));
        }
    }
    Ok(terms)
}
